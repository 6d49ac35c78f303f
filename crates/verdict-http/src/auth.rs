//! Who is calling: HS256 JWTs with `sub`, `role` and `exp` (docs/api.md).
//!
//! A request with a bad token is rejected (401), never treated as anonymous.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use verdict_core::{Role, is_valid_id};
use verdict_store::Actor;

use crate::AppState;
use crate::problem::ApiError;

/// The HS256 secret, wrapped so that it is never printed by accident.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> JwtSecret {
        JwtSecret(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// Signs and checks tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// `iss` minted into tokens and required of them, when configured.
    issuer: Option<String>,
    /// `aud` minted into tokens and required of them, when configured.
    audience: Option<String>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

/// What a token says; `iss` and `aud` are checked by the validation.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: i64,
}

/// What a minted token says.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    role: &'a str,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl JwtKeys {
    pub fn new(secret: &JwtSecret) -> JwtKeys {
        // jsonwebtoken's HS256 crypto: every signer and verifier is made here.
        crate::jwt_crypto::install();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is exact: a token is dead the second its `exp` passes.
        validation.leeway = 0;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            issuer: None,
            audience: None,
        }
    }

    /// Requires `iss` and `aud` of every token, when given (`jwt_issuer`,
    /// `jwt_audience`), and mints them into tokens.
    pub fn with_claims(mut self, issuer: Option<&str>, audience: Option<&str>) -> JwtKeys {
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        // Without an audience, a token naming one is refused, as before
        // (RFC 7519 §4.1.3): it was meant for another service.
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self.issuer = issuer.map(str::to_owned);
        self.audience = audience.map(str::to_owned);
        self
    }

    /// Mints a token (for `verdict token`, `demo` and tests). `expires_at` is
    /// Unix seconds by real time.
    pub fn mint(&self, role: Role, sub: &str, expires_at: i64) -> String {
        let claims = MintedClaims {
            sub,
            role: role.as_str(),
            exp: expires_at,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a small claim set cannot fail")
    }

    /// Checks a token and returns the caller it names.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        self.verify_with_expiry(token).map(|(caller, _)| caller)
    }

    /// [`JwtKeys::verify`], with the token's expiry (Unix seconds).
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Caller, i64), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    ErrorKind::InvalidIssuer => "the token issuer (iss) is not this service's",
                    ErrorKind::InvalidAudience => "the token audience (aud) is not this service",
                    _ => "the token is malformed or not HS256",
                };
                ApiError::Unauthorized(why.to_owned())
            })?;
        let role = match data.claims.role.parse::<Role>() {
            Ok(Role::System) | Err(_) => {
                return Err(ApiError::Unauthorized(format!(
                    "the token role {:?} is not one of customer, provider, service, admin",
                    data.claims.role
                )));
            }
            Ok(role) => role,
        };
        if !is_valid_id(&data.claims.sub) {
            return Err(ApiError::Unauthorized("the token subject is not a valid id".into()));
        }
        Ok((Caller { role, id: data.claims.sub }, data.claims.exp))
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub id: String,
}

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor { role: self.role, id: self.id.clone() }
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            Err(ApiError::Forbidden(format!(
                "role {} may not do this (allowed: {})",
                self.role,
                allowed.join(", ")
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Verified already by the write limiter (only it inserts one).
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <token>".into())
        })??;
        let caller = state.jwt.verify(token)?;
        crate::access::record_role(caller.role);
        Ok(caller)
    }
}

/// The bearer token of a request: `None` without an Authorization header,
/// an error when the header is not `Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let header = headers.get(header::AUTHORIZATION)?;
    Some(
        header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be Bearer <token>".into())
            }),
    )
}
