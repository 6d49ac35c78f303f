//! The only cryptography jsonwebtoken gets in this process: HMAC-SHA256
//! (HS256), from the `hmac` and `sha2` crates verdict already uses.
//!
//! jsonwebtoken's `rust_crypto` feature would bring every JWS algorithm,
//! and with RSA the `rsa` crate (RUSTSEC-2023-0071, a timing side channel
//! with no fixed release). verdict's tokens and LiveKit's webhooks are HS256
//! only, so jsonwebtoken is built without a crypto feature and this
//! provider is installed instead: any other algorithm is refused here, on
//! top of the `Validation` that already admits HS256 alone.
//!
//! [`install`] is called by every path into jsonwebtoken (`JwtKeys::new`,
//! the LiveKit webhook check and signer), so no caller can forget it.

use std::sync::Once;

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HS256 only; JWK helpers are left unimplemented (verdict reads no JWKs).
static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`HS256_ONLY`] the process's jsonwebtoken provider; idempotent.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Refused only if the process chose a provider first: another
        // one installed by hand (it keeps its place), or jsonwebtoken's
        // feature-less default, taken by a call that bypassed every
        // install path here, which panics at its first use: loudly,
        // never silently weaker.
        let _ = HS256_ONLY.install_default();
    });
}

/// An HMAC-SHA256 keyed with a token secret.
struct Hs256(HmacSha256);

impl Hs256 {
    fn new(family: AlgorithmFamily, secret: &[u8]) -> Result<Hs256, Error> {
        if family != AlgorithmFamily::Hmac {
            return Err(ErrorKind::InvalidKeyFormat.into());
        }
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(secret)
            .map(Hs256)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, message: &[u8], tag: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        // Constant-time comparison.
        mac.verify_slice(tag).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.family(), key.as_bytes())?)),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.family(), key.try_get_as_bytes()?)?)),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use verdict_core::Role;

    use super::*;
    use crate::auth::{JwtKeys, JwtSecret};

    const SECRET: &[u8] = b"a-secret-of-thirty-two-bytes-or-more!";

    fn keys() -> JwtKeys {
        JwtKeys::new(&JwtSecret::new(SECRET))
    }

    /// `header.claims.signature`, the signature an HMAC-SHA256 of the rest
    /// with the right secret: only the header's `alg` is wrong.
    fn token_with_header(header: &str) -> String {
        let claims = r#"{"sub":"cust-1","role":"customer","exp":4102444800}"#;
        let message =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let mut mac = HmacSha256::new_from_slice(SECRET).expect("any key length");
        mac.update(message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn an_hs256_token_round_trips() {
        let keys = keys();
        let token = keys.mint(Role::Customer, "cust-1", 4_102_444_800);
        let caller = keys.verify(&token).expect("a minted token verifies");
        assert_eq!((caller.role, caller.id.as_str()), (Role::Customer, "cust-1"));
        // The hand-made token with an HS256 header is the same thing.
        let same = token_with_header(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(keys.verify(&same).is_ok(), "the test's own HS256 token verifies");
    }

    #[test]
    fn a_token_with_another_algorithm_is_refused() {
        let keys = keys();
        for alg in ["RS256", "HS384", "HS512", "ES256", "EdDSA", "none", "None", ""] {
            let token = token_with_header(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            assert!(keys.verify(&token).is_err(), "a token with alg {alg:?} is refused");
        }
        // Without its signature, an `alg: none` token is refused too.
        let unsigned = token_with_header(r#"{"alg":"none"}"#);
        let unsigned = &unsigned[..=unsigned.rfind('.').expect("three parts")];
        assert!(keys.verify(unsigned).is_err());
    }

    #[test]
    fn the_provider_signs_and_verifies_hs256_alone() {
        install();
        let secret = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(b"message", &secret, Algorithm::HS256).expect("HS256 signs");
        let decoding = DecodingKey::from_secret(SECRET);
        assert_eq!(
            jsonwebtoken::crypto::verify(&signature, b"message", &decoding, Algorithm::HS256).ok(),
            Some(true)
        );
        assert_eq!(
            jsonwebtoken::crypto::verify(&signature, b"massage", &decoding, Algorithm::HS256).ok(),
            Some(false)
        );
        for algorithm in [Algorithm::HS384, Algorithm::HS512, Algorithm::RS256, Algorithm::ES256] {
            let signed = jsonwebtoken::crypto::sign(b"message", &secret, algorithm);
            assert!(signed.is_err(), "{algorithm:?} is refused, not signed");
            let checked =
                jsonwebtoken::crypto::verify(&signature, b"message", &decoding, algorithm);
            assert!(checked.is_err(), "{algorithm:?} is refused, not checked");
        }
    }
}
