//! Presence webhooks of the video platforms (LiveKit, Daily, Twilio Video):
//! authenticity checks and parsing into [`ProviderEvent`]s.
//!
//! Pure functions over the raw request parts: no I/O, no clock except the
//! LiveKit token's expiry (checked against real time). The signature is
//! always checked before the body is parsed, so a forged request is
//! [`HookError::Unauthorized`] whatever its body. The `sign_*` helpers do
//! what the platforms do, for tests and the docs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verdict_core::{PresenceKind, UnixMillis};

/// Which platform sent a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    LiveKit,
    Daily,
    Twilio,
}

impl Source {
    /// `livekit`, `daily` or `twilio`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::LiveKit => "livekit",
            Source::Daily => "daily",
            Source::Twilio => "twilio",
        }
    }
}

/// One participant joining or leaving, as the platform reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEvent {
    pub source: Source,
    /// The platform's id of this event: duplicates (retried deliveries) carry the same id.
    pub event_id: String,
    /// Room name (the name the platform's room was created with).
    pub room: String,
    /// Participant identity (LiveKit `participant.identity`, Daily `payload.user_id`,
    /// Twilio `ParticipantIdentity`).
    pub identity: String,
    /// One connection of that participant (LiveKit `participant.sid`, Daily
    /// `payload.session_id`, Twilio `ParticipantSid`): a reconnect is a new connection.
    pub connection: String,
    /// Only [`PresenceKind::Joined`] or [`PresenceKind::Left`].
    pub kind: PresenceKind,
    /// The platform's timestamp of the event, in ms since the epoch.
    pub at: UnixMillis,
}

/// What an authentic webhook says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A participant joined or left.
    Presence(ProviderEvent),
    /// A well-formed, authentic event that is not a participant join/leave
    /// (room_started, track_published, meeting.ended, room-ended, ...).
    Ignored { event_type: String },
}

/// Why a webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// Missing, malformed or wrong signature / token / sha256 claim; expired LiveKit token.
    #[error("{0}")]
    Unauthorized(String),
    /// Authentic but unparseable: bad JSON/form, missing field, bad timestamp. Precise message naming the field.
    #[error("{0}")]
    BadPayload(String),
}

/// The LiveKit API key and secret that sign webhooks (no `Debug`: the
/// secret never reaches a log).
#[derive(Clone)]
pub struct LiveKitKeys {
    pub api_key: String,
    pub api_secret: String,
}

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

fn unauthorized(why: impl Into<String>) -> HookError {
    HookError::Unauthorized(why.into())
}

fn bad(why: impl Into<String>) -> HookError {
    HookError::BadPayload(why.into())
}

// ---------------------------------------------------------------- LiveKit

/// How long a token minted by [`sign_livekit`] is valid, in seconds.
const LIVEKIT_TOKEN_SECONDS: i64 = 600;

#[derive(Serialize, Deserialize)]
struct LiveKitClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

fn body_sha256(body: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(body))
}

/// Checks a LiveKit webhook (`Authorization` header: an HS256 JWT with
/// `iss` = API key, `exp`, and `sha256` = base64 SHA-256 of the body; a
/// `Bearer ` prefix is accepted) and parses its body.
pub fn livekit(
    keys: &LiveKitKeys,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Parsed, HookError> {
    let header = authorization.ok_or_else(|| unauthorized("missing Authorization header"))?;
    let header = header.trim();
    let token = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if header.eq_ignore_ascii_case("bearer") => "",
        _ => header,
    };
    if token.is_empty() {
        return Err(unauthorized("empty Authorization header"));
    }
    crate::jwt_crypto::install();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<LiveKitClaims>(
        token,
        &DecodingKey::from_secret(keys.api_secret.as_bytes()),
        &validation,
    )
    .map_err(|error| {
        unauthorized(match error.kind() {
            ErrorKind::ExpiredSignature => "the LiveKit token has expired",
            ErrorKind::ImmatureSignature => "the LiveKit token is not valid yet",
            ErrorKind::InvalidSignature => "the LiveKit token signature is invalid",
            ErrorKind::MissingRequiredClaim(_) => "the LiveKit token lacks `exp`",
            _ => "the LiveKit token is malformed or not HS256",
        })
    })?;
    match data.claims.iss.as_deref() {
        Some(iss) if iss == keys.api_key => {}
        Some(_) => return Err(unauthorized("the LiveKit token's issuer is not our API key")),
        None => return Err(unauthorized("the LiveKit token lacks `iss`")),
    }
    let claimed =
        data.claims.sha256.ok_or_else(|| unauthorized("the LiveKit token lacks `sha256`"))?;
    if claimed != body_sha256(body) {
        return Err(unauthorized("the LiveKit token's sha256 does not match the body"));
    }
    parse_livekit(body)
}

fn parse_livekit(body: &[u8]) -> Result<Parsed, HookError> {
    let root = parse_json(body)?;
    let event = json_str(&root, &["event"])?;
    let kind = match event {
        "participant_joined" => PresenceKind::Joined,
        "participant_left" | "participant_connection_aborted" => PresenceKind::Left,
        other => return Ok(Parsed::Ignored { event_type: other.to_owned() }),
    };
    let joined_at_ms = json_int_opt(&root, &["participant", "joinedAtMs"])?.filter(|ms| *ms > 0);
    let created_at = json_int(&root, &["createdAt"])?
        .checked_mul(1000)
        .ok_or_else(|| bad("field `createdAt` is out of range"))?;
    // `createdAt` counts whole seconds: a join is dated by its millisecond
    // `joinedAtMs`, and a leave never before that join (a connection
    // shorter than a second would otherwise leave before it joined).
    let at = match (kind, joined_at_ms) {
        (PresenceKind::Joined, Some(ms)) => ms,
        (_, Some(ms)) => created_at.max(ms),
        (_, None) => created_at,
    };
    Ok(Parsed::Presence(ProviderEvent {
        source: Source::LiveKit,
        event_id: json_str(&root, &["id"])?.to_owned(),
        room: json_str(&root, &["room", "name"])?.to_owned(),
        identity: json_str(&root, &["participant", "identity"])?.to_owned(),
        connection: json_str(&root, &["participant", "sid"])?.to_owned(),
        kind,
        at: UnixMillis(at),
    }))
}

/// The `Authorization` header value LiveKit would send with `body` (without
/// `Bearer `): an HS256 JWT with `iss`, `nbf` = now − 5 s, `exp` = now + 600 s
/// and `sha256`.
pub fn sign_livekit(keys: &LiveKitKeys, body: &[u8], now_unix_seconds: i64) -> String {
    let claims = LiveKitClaims {
        iss: Some(keys.api_key.clone()),
        sha256: Some(body_sha256(body)),
        exp: Some(now_unix_seconds + LIVEKIT_TOKEN_SECONDS),
        nbf: Some(now_unix_seconds - 5),
    };
    crate::jwt_crypto::install();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(keys.api_secret.as_bytes()),
    )
    .expect("HS256 signing of a small claim set cannot fail")
}

// ------------------------------------------------------------------ Daily

/// The HMAC key of a Daily webhook secret (base64, as Daily gives it).
fn daily_key(secret_base64: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret_base64.trim()).ok()
}

fn daily_mac(secret_base64: &str, timestamp: &str, body: &[u8]) -> Result<HmacSha256, HookError> {
    let key = daily_key(secret_base64)
        .ok_or_else(|| unauthorized("the configured Daily webhook secret is not base64"))?;
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// Checks a Daily webhook (`X-Webhook-Signature` = base64 HMAC-SHA256 keyed
/// with the base64-decoded secret over `timestamp.body`, with
/// `X-Webhook-Timestamp`) and parses its body.
pub fn daily(
    secret_base64: &str,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
) -> Result<Parsed, HookError> {
    let signature = signature.ok_or_else(|| unauthorized("missing X-Webhook-Signature header"))?;
    let timestamp = timestamp.ok_or_else(|| unauthorized("missing X-Webhook-Timestamp header"))?;
    let tag = STANDARD
        .decode(signature.trim())
        .map_err(|_| unauthorized("X-Webhook-Signature is not base64"))?;
    daily_mac(secret_base64, timestamp.trim(), body)?
        .verify_slice(&tag)
        .map_err(|_| unauthorized("X-Webhook-Signature does not match"))?;
    parse_daily(body)
}

fn parse_daily(body: &[u8]) -> Result<Parsed, HookError> {
    let root = parse_json(body)?;
    let event = json_str(&root, &["type"])?;
    let kind = match event {
        "participant.joined" => PresenceKind::Joined,
        "participant.left" => PresenceKind::Left,
        other => return Ok(Parsed::Ignored { event_type: other.to_owned() }),
    };
    let seconds = match lookup(&root, &["event_ts"]) {
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(_) => None,
        None => return Err(missing(&["event_ts"])),
    };
    let millis = seconds
        .map(|seconds| (seconds * 1000.0).round())
        .filter(|millis| millis.is_finite() && *millis >= 0.0 && *millis < 1e15)
        .ok_or_else(|| bad("field `event_ts` is not a time in seconds since the epoch"))?;
    Ok(Parsed::Presence(ProviderEvent {
        source: Source::Daily,
        event_id: json_str(&root, &["id"])?.to_owned(),
        room: json_str(&root, &["payload", "room"])?.to_owned(),
        identity: json_str(&root, &["payload", "user_id"])?.to_owned(),
        connection: json_str(&root, &["payload", "session_id"])?.to_owned(),
        kind,
        // In range: checked above.
        at: UnixMillis(millis as i64),
    }))
}

/// Whether a Daily webhook secret is usable (base64, as Daily gives it).
pub fn daily_secret_is_valid(secret_base64: &str) -> bool {
    daily_key(secret_base64).is_some()
}

/// The `X-Webhook-Signature` value Daily would send with `timestamp` and `body`.
///
/// Panics if `secret_base64` is not base64.
pub fn sign_daily(secret_base64: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = daily_mac(secret_base64, timestamp, body).expect("the Daily secret must be base64");
    STANDARD.encode(mac.finalize().into_bytes())
}

// ----------------------------------------------------------------- Twilio

/// The form's pairs, percent-decoded, in body order.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// HMAC-SHA1 keyed with the auth token over the URL followed by each
/// parameter's name and value, sorted by name.
fn twilio_mac(auth_token: &str, url: &str, pairs: &[(String, String)]) -> HmacSha1 {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Checks a Twilio Video status callback (`X-Twilio-Signature` = base64
/// HMAC-SHA1 keyed with the auth token over `url` and the sorted, decoded
/// form parameters; `url` must be exactly the URL Twilio requested,
/// query string included) and parses its form body.
pub fn twilio(
    auth_token: &str,
    signature: Option<&str>,
    url: &str,
    body: &[u8],
) -> Result<Parsed, HookError> {
    let signature = signature.ok_or_else(|| unauthorized("missing X-Twilio-Signature header"))?;
    let tag = STANDARD
        .decode(signature.trim())
        .map_err(|_| unauthorized("X-Twilio-Signature is not base64"))?;
    let pairs = form_pairs(body);
    twilio_mac(auth_token, url, &pairs)
        .verify_slice(&tag)
        .map_err(|_| unauthorized("X-Twilio-Signature does not match"))?;
    parse_twilio(&pairs)
}

fn parse_twilio(pairs: &[(String, String)]) -> Result<Parsed, HookError> {
    let field = |name: &str| -> Result<&str, HookError> {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| bad(format!("missing form field `{name}`")))
    };
    let event = field("StatusCallbackEvent")?;
    let kind = match event {
        "participant-connected" => PresenceKind::Joined,
        "participant-disconnected" => PresenceKind::Left,
        other => return Ok(Parsed::Ignored { event_type: other.to_owned() }),
    };
    let timestamp = field("Timestamp")?;
    let at = OffsetDateTime::parse(timestamp, &Rfc3339)
        .ok()
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok())
        .ok_or_else(|| bad(format!("form field `Timestamp` is not RFC 3339: {timestamp:?}")))?;
    let participant = field("ParticipantSid")?;
    Ok(Parsed::Presence(ProviderEvent {
        source: Source::Twilio,
        event_id: format!("{participant}:{event}"),
        room: field("RoomName")?.to_owned(),
        identity: field("ParticipantIdentity")?.to_owned(),
        connection: participant.to_owned(),
        kind,
        at: UnixMillis(at),
    }))
}

/// The `X-Twilio-Signature` value Twilio would send when posting the form
/// `body` to `url`.
pub fn sign_twilio(auth_token: &str, url: &str, body: &[u8]) -> String {
    STANDARD.encode(twilio_mac(auth_token, url, &form_pairs(body)).finalize().into_bytes())
}

// ------------------------------------------------------------------- JSON

fn parse_json(body: &[u8]) -> Result<Value, HookError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| bad(format!("the body is not JSON: {error}")))?;
    if value.is_object() { Ok(value) } else { Err(bad("the body is not a JSON object")) }
}

fn lookup<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |value, key| value.get(key)).filter(|value| !value.is_null())
}

fn missing(path: &[&str]) -> HookError {
    bad(format!("missing field `{}`", path.join(".")))
}

/// A non-empty string field.
fn json_str<'a>(root: &'a Value, path: &[&str]) -> Result<&'a str, HookError> {
    match lookup(root, path) {
        None => Err(missing(path)),
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        Some(Value::String(_)) => Err(bad(format!("field `{}` is empty", path.join(".")))),
        Some(_) => Err(bad(format!("field `{}` is not a string", path.join(".")))),
    }
}

/// A protobuf-JSON int64 (a string or a number), if present.
fn json_int_opt(root: &Value, path: &[&str]) -> Result<Option<i64>, HookError> {
    let parsed = match lookup(root, path) {
        None => return Ok(None),
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    parsed.map(Some).ok_or_else(|| bad(format!("field `{}` is not an integer", path.join("."))))
}

fn json_int(root: &Value, path: &[&str]) -> Result<i64, HookError> {
    json_int_opt(root, path)?.ok_or_else(|| missing(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    // ------------------------------------------------------------ LiveKit

    fn lk_keys() -> LiveKitKeys {
        LiveKitKeys {
            api_key: "APIq7sLzN2kCdXw".into(),
            api_secret: "lk-secret-5b3c0f9e1d7a4c2b8e6f0a1d3c5e7f9b".into(),
        }
    }

    /// A `participant_joined` as LiveKit sends it (int64s as strings).
    const LK_JOINED: &str = r#"{"event":"participant_joined","room":{"sid":"RM_hycBMAjmt6Ub","name":"room-1","emptyTimeout":300,"creationTime":"1692985548","enabledCodecs":[{"mime":"audio/opus"},{"mime":"video/VP8"}],"numParticipants":1},"participant":{"sid":"PA_8Gc6MaXwDmzu","identity":"alice","state":"ACTIVE","joinedAt":"1692985556","joinedAtMs":"1692985556123","name":"Alice","version":2,"permission":{"canSubscribe":true,"canPublish":true,"canPublishData":true},"kind":"STANDARD"},"id":"EV_3HqP9F5fDp4S","createdAt":"1692985557"}"#;

    /// A `participant_left`, with `createdAt` as a JSON number.
    const LK_LEFT: &str = r#"{
        "event": "participant_left",
        "room": {"sid": "RM_hycBMAjmt6Ub", "name": "room-1", "emptyTimeout": 300,
                 "creationTime": "1692985548", "numParticipants": 0},
        "participant": {"sid": "PA_8Gc6MaXwDmzu", "identity": "alice", "state": "DISCONNECTED",
                        "joinedAt": "1692985556", "joinedAtMs": "1692985556123", "name": "Alice",
                        "version": 5, "disconnectReason": "CLIENT_INITIATED", "kind": "STANDARD"},
        "id": "EV_pQ2mT8vXcA9d",
        "createdAt": 1692987356
    }"#;

    const LK_TRACK_PUBLISHED: &str = r#"{
        "event": "track_published",
        "room": {"sid": "RM_hycBMAjmt6Ub", "name": "room-1"},
        "participant": {"sid": "PA_8Gc6MaXwDmzu", "identity": "alice"},
        "track": {"sid": "TR_VCk8xgH6HsGm", "type": "VIDEO", "source": "CAMERA",
                  "width": 1280, "height": 720, "mimeType": "video/VP8"},
        "id": "EV_Fj3kLm9sQw2e",
        "createdAt": "1692985560"
    }"#;

    fn lk_signed(body: &str) -> Result<Parsed, HookError> {
        let keys = lk_keys();
        let token = sign_livekit(&keys, body.as_bytes(), now());
        livekit(&keys, Some(&token), body.as_bytes())
    }

    #[test]
    fn livekit_join_prefers_joined_at_ms() {
        assert_eq!(
            lk_signed(LK_JOINED),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::LiveKit,
                event_id: "EV_3HqP9F5fDp4S".into(),
                room: "room-1".into(),
                identity: "alice".into(),
                connection: "PA_8Gc6MaXwDmzu".into(),
                kind: PresenceKind::Joined,
                at: UnixMillis(1_692_985_556_123),
            }))
        );
    }

    #[test]
    fn livekit_leave_uses_created_at_as_number() {
        assert_eq!(
            lk_signed(LK_LEFT),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::LiveKit,
                event_id: "EV_pQ2mT8vXcA9d".into(),
                room: "room-1".into(),
                identity: "alice".into(),
                connection: "PA_8Gc6MaXwDmzu".into(),
                kind: PresenceKind::Left,
                at: UnixMillis(1_692_987_356_000),
            }))
        );
    }

    #[test]
    fn livekit_join_without_joined_at_ms_uses_created_at() {
        let body = LK_JOINED.replace(r#""joinedAtMs":"1692985556123","#, "");
        let Ok(Parsed::Presence(event)) = lk_signed(&body) else { panic!("not a presence") };
        assert_eq!(event.at, UnixMillis(1_692_985_557_000));
    }

    #[test]
    fn a_livekit_leave_is_never_dated_before_its_join() {
        // Joined at …556.700, aborted within the same second: `createdAt`
        // says …556, which would put the leave before the join.
        let body = serde_json::json!({"event": "participant_connection_aborted",
            "room": {"sid": "RM_1", "name": "room-1"},
            "participant": {"sid": "PA_1", "identity": "alice", "state": "DISCONNECTED",
                "joinedAt": "1692985556", "joinedAtMs": "1692985556700"},
            "id": "EV_abort", "createdAt": "1692985556"})
        .to_string();
        let Ok(Parsed::Presence(event)) = lk_signed(&body) else { panic!("not a presence") };
        assert_eq!((event.kind, event.at), (PresenceKind::Left, UnixMillis(1_692_985_556_700)));
    }

    #[test]
    fn livekit_connection_aborted_is_a_leave() {
        let body = LK_LEFT.replace("participant_left", "participant_connection_aborted");
        let Ok(Parsed::Presence(event)) = lk_signed(&body) else { panic!("not a presence") };
        assert_eq!(event.kind, PresenceKind::Left);
    }

    #[test]
    fn livekit_other_events_are_ignored() {
        assert_eq!(
            lk_signed(LK_TRACK_PUBLISHED),
            Ok(Parsed::Ignored { event_type: "track_published".into() })
        );
    }

    #[test]
    fn livekit_accepts_bearer_prefix() {
        let keys = lk_keys();
        let token = sign_livekit(&keys, LK_JOINED.as_bytes(), now());
        let parsed = livekit(&keys, Some(&format!("Bearer {token}")), LK_JOINED.as_bytes());
        assert!(matches!(parsed, Ok(Parsed::Presence(_))));
    }

    /// A token built with python3 `hmac`/`hashlib` (exp in 2100), so the
    /// verifier is not only checked against our own signer.
    #[test]
    fn livekit_accepts_independently_computed_token() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjQxMDI0NDQ4MDAsImlzcyI6IkFQSXE3c0x6TjJrQ2RYdyIsIm5iZiI6MTY5Mjk4NTU1MCwic2hhMjU2IjoiUlpmNGRYN1VwNWxkd01sTExVM2N6U1piNUtEZitacEhiSWFSUnFPejB6cz0ifQ.oE7bePkcS9UWLodFXhcmr-n1oGzPOx9nJgAcyicbOpU";
        let parsed = livekit(&lk_keys(), Some(token), LK_JOINED.as_bytes());
        assert!(matches!(parsed, Ok(Parsed::Presence(_))), "{parsed:?}");
    }

    fn assert_unauthorized(result: Result<Parsed, HookError>, needle: &str) {
        match result {
            Err(HookError::Unauthorized(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected Unauthorized({needle}), got {other:?}"),
        }
    }

    #[test]
    fn livekit_rejects_wrong_secret() {
        let forger = LiveKitKeys { api_key: lk_keys().api_key, api_secret: "guess".into() };
        let token = sign_livekit(&forger, LK_JOINED.as_bytes(), now());
        assert_unauthorized(livekit(&lk_keys(), Some(&token), LK_JOINED.as_bytes()), "signature");
    }

    #[test]
    fn livekit_rejects_body_altered_after_signing() {
        let keys = lk_keys();
        let token = sign_livekit(&keys, LK_JOINED.as_bytes(), now());
        let altered = LK_JOINED.replace("alice", "mallory");
        assert_unauthorized(livekit(&keys, Some(&token), altered.as_bytes()), "sha256");
    }

    #[test]
    fn livekit_rejects_sha256_mismatch_even_with_garbage_body() {
        let keys = lk_keys();
        let token = sign_livekit(&keys, LK_JOINED.as_bytes(), now());
        assert_unauthorized(livekit(&keys, Some(&token), b"not json"), "sha256");
    }

    #[test]
    fn livekit_rejects_missing_or_empty_header() {
        assert_unauthorized(livekit(&lk_keys(), None, LK_JOINED.as_bytes()), "missing");
        assert_unauthorized(livekit(&lk_keys(), Some("Bearer "), LK_JOINED.as_bytes()), "empty");
        assert_unauthorized(
            livekit(&lk_keys(), Some("abc.def"), LK_JOINED.as_bytes()),
            "malformed",
        );
    }

    #[test]
    fn livekit_rejects_wrong_issuer() {
        let other = LiveKitKeys { api_key: "APIotherKey".into(), api_secret: lk_keys().api_secret };
        let token = sign_livekit(&other, LK_JOINED.as_bytes(), now());
        assert_unauthorized(livekit(&lk_keys(), Some(&token), LK_JOINED.as_bytes()), "issuer");
    }

    #[test]
    fn livekit_rejects_expired_token() {
        let keys = lk_keys();
        let token = sign_livekit(&keys, LK_JOINED.as_bytes(), now() - 3600);
        assert_unauthorized(livekit(&keys, Some(&token), LK_JOINED.as_bytes()), "expired");
    }

    #[test]
    fn livekit_rejects_token_without_sha256() {
        let keys = lk_keys();
        let claims = LiveKitClaims {
            iss: Some(keys.api_key.clone()),
            sha256: None,
            exp: Some(now() + 600),
            nbf: None,
        };
        crate::jwt_crypto::install();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(keys.api_secret.as_bytes()),
        )
        .unwrap();
        assert_unauthorized(livekit(&keys, Some(&token), LK_JOINED.as_bytes()), "sha256");
    }

    #[test]
    fn livekit_bad_payload_names_the_field() {
        let body = LK_JOINED.replace(r#""identity":"alice","#, "");
        assert_eq!(
            lk_signed(&body),
            Err(HookError::BadPayload("missing field `participant.identity`".into()))
        );
        let body = LK_LEFT.replace("1692987356", "\"soon\"");
        assert_eq!(
            lk_signed(&body),
            Err(HookError::BadPayload("field `createdAt` is not an integer".into()))
        );
        assert!(
            matches!(lk_signed("{\"event\":"), Err(HookError::BadPayload(why)) if why.contains("not JSON"))
        );
    }

    // -------------------------------------------------------------- Daily

    const DAILY_SECRET: &str = "dmVyZGljdC1kYWlseS13ZWJob29rLXNlY3JldC0wMDAx";
    const DAILY_TS: &str = "1708972280";

    /// A `participant.joined` as documented by Daily.
    const DAILY_JOINED: &str = r#"{"version":"1.0.0","type":"participant.joined","id":"ptcpt-join-6497c79b-f326-4942-aef8-c36a29140ad1-1708972279961","payload":{"room":"room-1","user_id":"alice","user_name":"Alice","session_id":"6497c79b-f326-4942-aef8-c36a29140ad1","joined_at":1708972279.96,"will_eject_at":null,"owner":false,"permissions":{"hasPresence":true,"canSend":true,"canReceive":{"base":true},"canAdmin":false}},"event_ts":1708972279.961}"#;

    const DAILY_LEFT: &str = r#"{
        "version": "1.0.0",
        "type": "participant.left",
        "id": "ptcpt-left-6497c79b-f326-4942-aef8-c36a29140ad1-1708973479527",
        "payload": {
            "room": "room-1",
            "user_id": "alice",
            "user_name": "Alice",
            "session_id": "6497c79b-f326-4942-aef8-c36a29140ad1",
            "joined_at": 1708972279.96,
            "will_eject_at": null,
            "owner": false,
            "permissions": {"hasPresence": true, "canSend": true,
                            "canReceive": {"base": true}, "canAdmin": false},
            "duration": 1199.567
        },
        "event_ts": 1708973479.5276
    }"#;

    const DAILY_MEETING_ENDED: &str = r#"{
        "version": "1.0.0",
        "type": "meeting.ended",
        "id": "meet-end-2d4b7d4e-6f0f-4a46-b1e2-7d8b0c3a5f11-1708973480",
        "payload": {"start_ts": 1708972279.0, "end_ts": 1708973480.0,
                    "meeting_id": "2d4b7d4e-6f0f-4a46-b1e2-7d8b0c3a5f11", "room": "room-1"},
        "event_ts": 1708973480.123
    }"#;

    fn daily_signed(body: &str) -> Result<Parsed, HookError> {
        let signature = sign_daily(DAILY_SECRET, DAILY_TS, body.as_bytes());
        daily(DAILY_SECRET, Some(&signature), Some(DAILY_TS), body.as_bytes())
    }

    #[test]
    fn daily_join_parses() {
        assert_eq!(
            daily_signed(DAILY_JOINED),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::Daily,
                event_id: "ptcpt-join-6497c79b-f326-4942-aef8-c36a29140ad1-1708972279961".into(),
                room: "room-1".into(),
                identity: "alice".into(),
                connection: "6497c79b-f326-4942-aef8-c36a29140ad1".into(),
                kind: PresenceKind::Joined,
                at: UnixMillis(1_708_972_279_961),
            }))
        );
    }

    #[test]
    fn daily_leave_parses_and_rounds() {
        assert_eq!(
            daily_signed(DAILY_LEFT),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::Daily,
                event_id: "ptcpt-left-6497c79b-f326-4942-aef8-c36a29140ad1-1708973479527".into(),
                room: "room-1".into(),
                identity: "alice".into(),
                connection: "6497c79b-f326-4942-aef8-c36a29140ad1".into(),
                kind: PresenceKind::Left,
                at: UnixMillis(1_708_973_479_528),
            }))
        );
    }

    #[test]
    fn daily_other_events_are_ignored() {
        assert_eq!(
            daily_signed(DAILY_MEETING_ENDED),
            Ok(Parsed::Ignored { event_type: "meeting.ended".into() })
        );
    }

    /// Computed with python3 `hmac`/`hashlib`/`base64`.
    #[test]
    fn daily_known_vector() {
        let expected = "77JkF6jDYZfTXZJd2Lhm9vVOIeO3yEMHoP+RGPqtEdU=";
        assert_eq!(sign_daily(DAILY_SECRET, DAILY_TS, DAILY_JOINED.as_bytes()), expected);
        let parsed = daily(DAILY_SECRET, Some(expected), Some(DAILY_TS), DAILY_JOINED.as_bytes());
        assert!(matches!(parsed, Ok(Parsed::Presence(_))));
    }

    #[test]
    fn daily_rejects_forgeries() {
        let body = DAILY_JOINED.as_bytes();
        let good = sign_daily(DAILY_SECRET, DAILY_TS, body);
        let wrong_secret = sign_daily("b3RoZXItc2VjcmV0", DAILY_TS, body);
        assert_unauthorized(
            daily(DAILY_SECRET, Some(&wrong_secret), Some(DAILY_TS), body),
            "match",
        );
        let altered = DAILY_JOINED.replace("alice", "mallory");
        assert_unauthorized(
            daily(DAILY_SECRET, Some(&good), Some(DAILY_TS), altered.as_bytes()),
            "match",
        );
        assert_unauthorized(daily(DAILY_SECRET, Some(&good), Some("1708972281"), body), "match");
        assert_unauthorized(daily(DAILY_SECRET, None, Some(DAILY_TS), body), "X-Webhook-Signature");
        assert_unauthorized(daily(DAILY_SECRET, Some(&good), None, body), "X-Webhook-Timestamp");
        assert_unauthorized(daily(DAILY_SECRET, Some("%%%"), Some(DAILY_TS), body), "base64");
        assert_unauthorized(daily(DAILY_SECRET, Some(&good), Some(DAILY_TS), b"garbage"), "match");
    }

    #[test]
    fn daily_bad_payload_names_the_field() {
        let body =
            DAILY_JOINED.replace(r#""session_id":"6497c79b-f326-4942-aef8-c36a29140ad1","#, "");
        assert_eq!(
            daily_signed(&body),
            Err(HookError::BadPayload("missing field `payload.session_id`".into()))
        );
        let body = DAILY_JOINED.replace(r#""event_ts":1708972279.961"#, r#""event_ts":true"#);
        assert_eq!(
            daily_signed(&body),
            Err(HookError::BadPayload(
                "field `event_ts` is not a time in seconds since the epoch".into()
            ))
        );
    }

    // ------------------------------------------------------------- Twilio

    const TWILIO_TOKEN: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    const TWILIO_URL: &str = "https://hooks.verdict.example/v1/hooks/twilio?tenant=acme";

    /// A `participant-connected` status callback (form fields in Twilio's order).
    const TWILIO_CONNECTED: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&RoomName=room-1&RoomSid=RM0123456789abcdef0123456789abcdef&RoomStatus=in-progress&RoomType=group&StatusCallbackEvent=participant-connected&Timestamp=2026-11-30T12%3A00%3A05.123Z&ParticipantSid=PA0123456789abcdef0123456789abcdef&ParticipantStatus=connected&ParticipantIdentity=alice%40example.com&SequenceNumber=1";

    const TWILIO_DISCONNECTED: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&RoomName=room-1&RoomSid=RM0123456789abcdef0123456789abcdef&RoomStatus=in-progress&RoomType=group&StatusCallbackEvent=participant-disconnected&Timestamp=2026-11-30T12%3A20%3A05Z&ParticipantSid=PA0123456789abcdef0123456789abcdef&ParticipantStatus=disconnected&ParticipantIdentity=alice%40example.com&ParticipantDuration=1200&SequenceNumber=4";

    const TWILIO_ROOM_ENDED: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&RoomName=room-1&RoomSid=RM0123456789abcdef0123456789abcdef&RoomStatus=completed&RoomType=group&StatusCallbackEvent=room-ended&Timestamp=2026-11-30T12%3A25%3A00.000Z&RoomDuration=1500&SequenceNumber=6";

    fn twilio_signed(body: &str) -> Result<Parsed, HookError> {
        let signature = sign_twilio(TWILIO_TOKEN, TWILIO_URL, body.as_bytes());
        twilio(TWILIO_TOKEN, Some(&signature), TWILIO_URL, body.as_bytes())
    }

    #[test]
    fn twilio_connect_parses() {
        assert_eq!(
            twilio_signed(TWILIO_CONNECTED),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::Twilio,
                event_id: "PA0123456789abcdef0123456789abcdef:participant-connected".into(),
                room: "room-1".into(),
                identity: "alice@example.com".into(),
                connection: "PA0123456789abcdef0123456789abcdef".into(),
                kind: PresenceKind::Joined,
                at: UnixMillis(1_796_040_005_123),
            }))
        );
    }

    #[test]
    fn twilio_disconnect_parses_without_fraction() {
        assert_eq!(
            twilio_signed(TWILIO_DISCONNECTED),
            Ok(Parsed::Presence(ProviderEvent {
                source: Source::Twilio,
                event_id: "PA0123456789abcdef0123456789abcdef:participant-disconnected".into(),
                room: "room-1".into(),
                identity: "alice@example.com".into(),
                connection: "PA0123456789abcdef0123456789abcdef".into(),
                kind: PresenceKind::Left,
                at: UnixMillis(1_796_041_205_000),
            }))
        );
    }

    #[test]
    fn twilio_other_events_are_ignored() {
        assert_eq!(
            twilio_signed(TWILIO_ROOM_ENDED),
            Ok(Parsed::Ignored { event_type: "room-ended".into() })
        );
    }

    /// Computed with python3 `hmac`/`hashlib`/`urllib.parse.parse_qsl`.
    #[test]
    fn twilio_known_vector() {
        let expected = "GQdzN+WeSOP7vOIaGaNAGr9HR1s=";
        assert_eq!(sign_twilio(TWILIO_TOKEN, TWILIO_URL, TWILIO_CONNECTED.as_bytes()), expected);
        let parsed = twilio(TWILIO_TOKEN, Some(expected), TWILIO_URL, TWILIO_CONNECTED.as_bytes());
        assert!(matches!(parsed, Ok(Parsed::Presence(_))));
    }

    /// The example of Twilio's webhook security documentation.
    #[test]
    fn twilio_documented_vector() {
        let body = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(sign_twilio("12345", url, body.as_bytes()), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn twilio_rejects_forgeries() {
        let body = TWILIO_CONNECTED.as_bytes();
        let good = sign_twilio(TWILIO_TOKEN, TWILIO_URL, body);
        let wrong_token = sign_twilio("0000000000000000", TWILIO_URL, body);
        assert_unauthorized(twilio(TWILIO_TOKEN, Some(&wrong_token), TWILIO_URL, body), "match");
        let altered = TWILIO_CONNECTED.replace("alice", "mallory");
        assert_unauthorized(
            twilio(TWILIO_TOKEN, Some(&good), TWILIO_URL, altered.as_bytes()),
            "match",
        );
        let other_url = "https://hooks.verdict.example/v1/hooks/twilio?tenant=evil";
        assert_unauthorized(twilio(TWILIO_TOKEN, Some(&good), other_url, body), "match");
        assert_unauthorized(twilio(TWILIO_TOKEN, None, TWILIO_URL, body), "X-Twilio-Signature");
        assert_unauthorized(twilio(TWILIO_TOKEN, Some(&good), TWILIO_URL, b"garbage"), "match");
    }

    #[test]
    fn twilio_bad_payload_names_the_field() {
        let body = TWILIO_CONNECTED.replace("&ParticipantIdentity=alice%40example.com", "");
        assert_eq!(
            twilio_signed(&body),
            Err(HookError::BadPayload("missing form field `ParticipantIdentity`".into()))
        );
        let body = TWILIO_CONNECTED.replace("2026-11-30T12%3A00%3A05.123Z", "yesterday");
        assert_eq!(
            twilio_signed(&body),
            Err(HookError::BadPayload(
                "form field `Timestamp` is not RFC 3339: \"yesterday\"".into()
            ))
        );
    }

    #[test]
    fn source_names() {
        assert_eq!(Source::LiveKit.as_str(), "livekit");
        assert_eq!(Source::Daily.as_str(), "daily");
        assert_eq!(Source::Twilio.as_str(), "twilio");
    }
}
