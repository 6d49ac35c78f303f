//! Configuration (docs/configuration.md): defaults, overridden by `verdict.toml`, by
//! `VERDICT_*` environment variables, then by command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use verdict_core::{BillingBasis, Kind, Policy, PolicySet};

mod sources;
pub use sources::{Explained, Origin, SECRET_KEYS, TOOL_VARIABLES, keys, render, render_json};

/// A configuration value that must never be printed.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClockKind {
    System,
    Manual,
}

impl ClockKind {
    /// The word of the configuration (`system`, `manual`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClockKind::System => "system",
            ClockKind::Manual => "manual",
        }
    }
}

/// The shortest JWT secret `serve` and `worker` accept: 256 bits, HS256's
/// own key size (RFC 7518 §3.2).
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// Policy values that a `[policy.<kind>]` table may override.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub min_billable_seconds: Option<i64>,
    pub billing_basis: Option<String>,
    pub join_grace_seconds: Option<i64>,
    pub abandon_after_seconds: Option<i64>,
    pub max_duration_seconds: Option<i64>,
    pub presence_timeout_seconds: Option<i64>,
    pub reconnect_grace_seconds: Option<i64>,
    pub platform_fee_bps: Option<i64>,
    /// `platform` or `any`, for sessions of this kind created with a room.
    pub presence_source: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bind: String,
    pub database_url: String,
    pub jwt_secret: Option<Secret>,
    pub clock: ClockKind,
    pub min_billable_seconds: i64,
    pub billing_basis: String,
    pub join_grace_seconds: i64,
    pub abandon_after_seconds: i64,
    pub max_duration_seconds: i64,
    pub presence_timeout_seconds: i64,
    pub reconnect_grace_seconds: i64,
    pub platform_fee_bps: i64,
    pub stripe_api_base: String,
    pub stripe_secret_key: Option<Secret>,
    pub webhook_urls: Option<String>,
    pub webhook_secret: Option<Secret>,
    pub smtp_url: Option<String>,
    pub mail_dir: String,
    #[serde(deserialize_with = "on_off")]
    pub worker: bool,
    pub dashboard_refresh_seconds: u64,
    /// Sender of e-mail receipts.
    pub mail_from: String,
    /// Delivery attempts before an outbox row is `dead`.
    pub max_attempts: i64,
    /// Timeout of every outbound call (Stripe, SMTP, webhooks).
    pub outbound_timeout_seconds: u64,
    /// How long a worker's claim on an outbox row lasts.
    pub outbox_lease_seconds: u64,
    /// How long after its end a session with a video platform room may
    /// still be re-decided by late platform presence.
    pub finalize_after_seconds: i64,
    /// LiveKit API key and secret: `POST /v1/presence/livekit` checks the
    /// webhook's token with them (the route is off without both).
    pub livekit_api_key: Option<String>,
    pub livekit_api_secret: Option<Secret>,
    /// Daily's webhook HMAC secret, base64 as Daily gives it.
    pub daily_webhook_secret: Option<Secret>,
    /// Twilio auth token, for `X-Twilio-Signature`.
    pub twilio_auth_token: Option<Secret>,
    /// This service's URL as the platforms call it (e.g.
    /// `https://verdict.example.com`): Twilio signs the full URL.
    pub public_url: Option<String>,
    /// `[policy.video]`, `[policy.chat]`, `[policy.diagnostic]`.
    pub policy: BTreeMap<String, PolicyOverride>,
    /// When set, every token must carry this `iss` (and minted ones do).
    pub jwt_issuer: Option<String>,
    /// When set, every token must carry this `aud` (and minted ones do).
    pub jwt_audience: Option<String>,
    /// A party's own joins and leaves kept per session (docs/limits.md).
    pub max_presence_events_per_session: i64,
    /// After this long a pending request is `expired` by the sweeper.
    pub request_ttl_seconds: i64,
    /// Pending requests one customer may have at once.
    pub max_open_requests_per_customer: i64,
    /// Writes a second allowed per customer or provider, in this process.
    pub rate_limit_per_second: u32,
    /// Writes at once allowed per customer or provider after a quiet spell.
    pub rate_limit_burst: u32,
    /// Whose presence counts for a session created with a room: `platform`
    /// (its webhooks only) or `any` (the union with the parties' own calls).
    pub presence_source: String,
    /// Where `verdict worker` serves its `/metrics` and `/healthz` (a
    /// worker inside `verdict serve` is measured on `bind`).
    pub worker_bind: String,
    /// Browsers' origins allowed to call `/v1/*` (CORS): a list, or in
    /// the environment a comma-separated string. Empty: no CORS headers.
    #[serde(deserialize_with = "list_or_commas")]
    pub cors_allowed_origins: Vec<String>,
    /// Who may frame the dashboard pages (CSP `frame-ancestors`):
    /// `'none'` (the default, with `X-Frame-Options: DENY`), or the
    /// platform's admin shell, e.g. `'self' https://admin.example.com`.
    pub dashboard_frame_ancestors: String,
    /// `[alerts]`: thresholds on the last 24 h's rates per kind and per
    /// provider (docs/alerts.md).
    pub alerts: AlertsConfig,
}

/// The `[alerts]` table: when a scope's rates raise a threshold alert.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub completion_rate_below: f64,
    pub no_show_rate_above: f64,
    pub too_short_rate_above: f64,
    /// Scopes with fewer ended sessions in the window are not judged.
    pub min_sessions: i64,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        let thresholds = verdict_store::insight::Thresholds::default();
        AlertsConfig {
            completion_rate_below: thresholds.completion_rate_below,
            no_show_rate_above: thresholds.no_show_rate_above,
            too_short_rate_above: thresholds.too_short_rate_above,
            min_sessions: thresholds.min_sessions,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        let policy = Policy::default();
        let limits = verdict_store::Limits::default();
        let rate_limit = verdict_http::rate_limit::RateLimit::default();
        Config {
            bind: "127.0.0.1:8080".into(),
            database_url: "sqlite://verdict-data/verdict.db".into(),
            jwt_secret: None,
            clock: ClockKind::System,
            min_billable_seconds: policy.min_billable_seconds,
            billing_basis: policy.billing_basis.as_str().into(),
            join_grace_seconds: policy.join_grace_seconds,
            abandon_after_seconds: policy.abandon_after_seconds,
            max_duration_seconds: policy.max_duration_seconds,
            presence_timeout_seconds: policy.presence_timeout_seconds,
            reconnect_grace_seconds: policy.reconnect_grace_seconds,
            platform_fee_bps: policy.platform_fee_bps,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_secret_key: None,
            webhook_urls: None,
            webhook_secret: None,
            smtp_url: None,
            mail_dir: "verdict-data/mail".into(),
            worker: true,
            dashboard_refresh_seconds: 300,
            mail_from: "verdict <receipts@verdict.invalid>".into(),
            max_attempts: 12,
            outbound_timeout_seconds: 10,
            outbox_lease_seconds: 120,
            finalize_after_seconds: verdict_store::FINALIZE_AFTER_SECONDS,
            livekit_api_key: None,
            livekit_api_secret: None,
            daily_webhook_secret: None,
            twilio_auth_token: None,
            public_url: None,
            policy: BTreeMap::new(),
            jwt_issuer: None,
            jwt_audience: None,
            max_presence_events_per_session: limits.max_presence_events_per_session,
            request_ttl_seconds: limits.request_ttl_seconds,
            max_open_requests_per_customer: limits.max_open_requests_per_customer,
            rate_limit_per_second: rate_limit.per_second.get(),
            rate_limit_burst: rate_limit.burst.get(),
            presence_source: "platform".into(),
            worker_bind: "127.0.0.1:8081".into(),
            cors_allowed_origins: Vec::new(),
            alerts: AlertsConfig::default(),
            dashboard_frame_ancestors: verdict_http::framing::FRAME_ANCESTORS_DEFAULT.into(),
        }
    }
}

/// `on`/`off`, `true`/`false`, as the environment spells booleans.
fn on_off<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Toggle {
        Bool(bool),
        Text(String),
    }
    match Toggle::deserialize(deserializer)? {
        Toggle::Bool(value) => Ok(value),
        Toggle::Text(text) => match text.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(serde::de::Error::custom(format!("expected on or off, got {text:?}"))),
        },
    }
}

/// A list, or a comma-separated string as the environment gives one.
fn list_or_commas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Items::deserialize(deserializer)? {
        Items::List(items) => items,
        Items::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Flags given on the command line: the last layer.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layers. `file` is read if it exists; a key in it that
    /// is not a key of the configuration is refused, naming it.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Ok(Config::explain(file, overrides)?.config)
    }

    /// [`Config::load`], with where each value came from and the
    /// `VERDICT_*` variables that are not keys (to warn about).
    pub fn explain(file: &Path, overrides: &Overrides) -> Result<Explained, ConfigError> {
        let explained = sources::load(file, overrides)?;
        explained.config.check_database_url()?;
        Ok(explained)
    }

    /// A URL no backend serves, or whose TLS files cannot be read, is a
    /// configuration error, not an outage.
    fn check_database_url(&self) -> Result<(), ConfigError> {
        verdict_store::check_url(&self.database_url)
            .map_err(|error| ConfigError::Invalid(format!("database_url: {error}")))
    }

    /// The CORS origins, checked (exit 2 on one that is not an origin).
    pub fn cors(&self) -> Result<Option<verdict_http::cors::Cors>, ConfigError> {
        verdict_http::cors::Cors::new(&self.cors_allowed_origins).map_err(ConfigError::Invalid)
    }

    /// Who may frame the dashboard, checked (exit 2 on a value that is
    /// not a `frame-ancestors` source list).
    pub fn frame_ancestors(&self) -> Result<verdict_http::framing::FrameAncestors, ConfigError> {
        verdict_http::framing::FrameAncestors::parse(&self.dashboard_frame_ancestors)
            .map_err(ConfigError::Invalid)
    }

    /// The secrets `serve` and `worker` refuse to start with: a JWT secret
    /// under [`JWT_SECRET_BYTES_MIN`] bytes, a video platform's secret
    /// set but empty, an empty `jwt_issuer` or `jwt_audience`. (An empty
    /// Stripe key still means manual payouts.)
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < JWT_SECRET_BYTES_MIN
        {
            return Err(ConfigError::Invalid(format!(
                "jwt_secret (VERDICT_JWT_SECRET) is {} bytes; it must be at least \
                 {JWT_SECRET_BYTES_MIN} (e.g. `openssl rand -base64 32`)",
                secret.expose().len()
            )));
        }
        let platform = [
            ("livekit_api_secret", "VERDICT_LIVEKIT_API_SECRET", &self.livekit_api_secret),
            ("daily_webhook_secret", "VERDICT_DAILY_WEBHOOK_SECRET", &self.daily_webhook_secret),
            ("twilio_auth_token", "VERDICT_TWILIO_AUTH_TOKEN", &self.twilio_auth_token),
        ];
        for (key, variable, secret) in platform {
            if secret.as_ref().is_some_and(|secret| secret.expose().trim().is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} ({variable}) is set but empty: give the platform's secret or unset it"
                )));
            }
        }
        let claims = [
            ("jwt_issuer", "VERDICT_JWT_ISSUER", &self.jwt_issuer),
            ("jwt_audience", "VERDICT_JWT_AUDIENCE", &self.jwt_audience),
        ];
        for (key, variable, value) in claims {
            if value.as_ref().is_some_and(|value| value.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} ({variable}) is set but empty: give a value or unset it"
                )));
            }
        }
        Ok(())
    }

    /// Stripe pays providers when a secret key is configured; otherwise
    /// payouts stay `pending` for an operator (`manual`).
    /// What the store needs to decide and settle.
    pub fn settings(&self) -> Result<verdict_store::Settings, ConfigError> {
        if self.finalize_after_seconds < 0 {
            return Err(ConfigError::Invalid("finalize_after_seconds must be 0 or more".into()));
        }
        Ok(verdict_store::Settings {
            policies: self.policies()?,
            payout_provider: self.payout_provider(),
            finalize_after_seconds: self.finalize_after_seconds,
            limits: self.limits()?,
            alerts: self.alerts()?,
        })
    }

    /// The `[alerts]` thresholds: rates between 0 and 1, `min_sessions` 1
    /// or more.
    pub fn alerts(&self) -> Result<verdict_store::insight::Thresholds, ConfigError> {
        let alerts = &self.alerts;
        let rates = [
            ("completion_rate_below", alerts.completion_rate_below),
            ("no_show_rate_above", alerts.no_show_rate_above),
            ("too_short_rate_above", alerts.too_short_rate_above),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, rate)| !(0.0..=1.0).contains(rate)) {
            return Err(ConfigError::Invalid(format!("[alerts] {name} must be between 0 and 1")));
        }
        if alerts.min_sessions < 1 {
            return Err(ConfigError::Invalid("[alerts] min_sessions must be 1 or more".into()));
        }
        Ok(verdict_store::insight::Thresholds {
            completion_rate_below: alerts.completion_rate_below,
            no_show_rate_above: alerts.no_show_rate_above,
            too_short_rate_above: alerts.too_short_rate_above,
            min_sessions: alerts.min_sessions,
        })
    }

    /// The `presence_source` policy per kind: the top-level value,
    /// overridden per kind.
    pub fn presence_sources(&self) -> Result<verdict_store::PresenceSources, ConfigError> {
        let parse = |text: &str| {
            verdict_store::PresenceSource::parse(text).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "presence_source must be platform or any, got {text:?}"
                ))
            })
        };
        let base = parse(&self.presence_source)?;
        let for_kind = |kind: Kind| match self
            .policy
            .get(kind.as_str())
            .and_then(|o| o.presence_source.as_deref())
        {
            Some(text) => parse(text),
            None => Ok(base),
        };
        Ok(verdict_store::PresenceSources {
            video: for_kind(Kind::Video)?,
            chat: for_kind(Kind::Chat)?,
            diagnostic: for_kind(Kind::Diagnostic)?,
        })
    }

    /// Writes allowed per caller (docs/limits.md).
    pub fn rate_limit(&self) -> Result<verdict_http::rate_limit::RateLimit, ConfigError> {
        use std::num::NonZeroU32;
        let positive = |name: &str, value: u32| {
            NonZeroU32::new(value)
                .ok_or_else(|| ConfigError::Invalid(format!("{name} must be 1 or more")))
        };
        Ok(verdict_http::rate_limit::RateLimit {
            per_second: positive("rate_limit_per_second", self.rate_limit_per_second)?,
            burst: positive("rate_limit_burst", self.rate_limit_burst)?,
        })
    }

    /// The abuse limits (docs/limits.md).
    pub fn limits(&self) -> Result<verdict_store::Limits, ConfigError> {
        let checks = [
            ("max_presence_events_per_session", self.max_presence_events_per_session),
            ("request_ttl_seconds", self.request_ttl_seconds),
            ("max_open_requests_per_customer", self.max_open_requests_per_customer),
        ];
        if let Some((name, _)) = checks.iter().find(|(_, value)| *value < 1) {
            return Err(ConfigError::Invalid(format!("{name} must be 1 or more")));
        }
        Ok(verdict_store::Limits {
            max_presence_events_per_session: self.max_presence_events_per_session,
            request_ttl_seconds: self.request_ttl_seconds,
            max_open_requests_per_customer: self.max_open_requests_per_customer,
        })
    }

    /// The video platforms' webhook credentials.
    pub fn presence_hooks(&self) -> Result<verdict_http::PresenceHooks, ConfigError> {
        let livekit = match (&self.livekit_api_key, &self.livekit_api_secret) {
            (Some(api_key), Some(api_secret)) => Some(verdict_http::providers::LiveKitKeys {
                api_key: api_key.clone(),
                api_secret: api_secret.expose().to_owned(),
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "livekit_api_key and livekit_api_secret go together".into(),
                ));
            }
        };
        if let Some(secret) = &self.daily_webhook_secret
            && !verdict_http::providers::daily_secret_is_valid(secret.expose())
        {
            return Err(ConfigError::Invalid(
                "daily_webhook_secret must be base64, as Daily gives it".into(),
            ));
        }
        Ok(verdict_http::PresenceHooks {
            livekit,
            daily_secret: self.daily_webhook_secret.as_ref().map(|s| s.expose().to_owned()),
            twilio_auth_token: self.twilio_auth_token.as_ref().map(|s| s.expose().to_owned()),
            public_url: self.public_url.as_ref().map(|url| url.trim_end_matches('/').to_owned()),
        })
    }

    pub fn payout_provider(&self) -> verdict_store::PayoutProvider {
        match &self.stripe_secret_key {
            Some(key) if !key.expose().is_empty() => verdict_store::PayoutProvider::Stripe,
            _ => verdict_store::PayoutProvider::Manual,
        }
    }

    /// How the outbox worker delivers.
    pub fn worker_config(&self) -> Result<verdict_worker::WorkerConfig, ConfigError> {
        use std::time::Duration;
        use verdict_worker::{
            MailConfig, StripeConfig, WebhookConfig, WebhookSecret, WorkerConfig,
        };
        let stripe = match &self.stripe_secret_key {
            Some(key) if !key.expose().is_empty() => Some(StripeConfig {
                api_base: self.stripe_api_base.clone(),
                secret_key: key.expose().to_owned(),
            }),
            _ => None,
        };
        let urls: Vec<String> = self
            .webhook_urls
            .iter()
            .flat_map(|urls| urls.split(','))
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        for (index, url) in urls.iter().enumerate() {
            // Not echoed: a URL may carry credentials.
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "webhook_urls: entry {} is not an http(s) URL",
                    index + 1
                )));
            }
        }
        let secret = match &self.webhook_secret {
            Some(secret) => Some(WebhookSecret::parse(secret.expose()).ok_or_else(|| {
                ConfigError::Invalid(
                    "webhook_secret must be whsec_<base64>, or several separated by spaces".into(),
                )
            })?),
            None => None,
        };
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::Invalid("max_attempts must be between 1 and 100".into()));
        }
        let outbound_timeout = Duration::from_secs(self.outbound_timeout_seconds.clamp(1, 300));
        Ok(WorkerConfig {
            stripe,
            webhooks: WebhookConfig { urls, secret },
            mail: MailConfig {
                smtp_url: self.smtp_url.clone().filter(|url| !url.is_empty()),
                mail_dir: self.mail_dir.clone().into(),
                from: self.mail_from.clone(),
            },
            outbound_timeout,
            attempts_max: self.max_attempts,
            lease: Duration::from_secs(self.outbox_lease_seconds).max(outbound_timeout * 3),
            ..WorkerConfig::default()
        })
    }

    /// The policy per kind: the top-level values, overridden per kind.
    pub fn policies(&self) -> Result<PolicySet, ConfigError> {
        let base = Policy {
            min_billable_seconds: self.min_billable_seconds,
            billing_basis: parse_basis(&self.billing_basis)?,
            join_grace_seconds: self.join_grace_seconds,
            abandon_after_seconds: self.abandon_after_seconds,
            max_duration_seconds: self.max_duration_seconds,
            presence_timeout_seconds: self.presence_timeout_seconds,
            reconnect_grace_seconds: self.reconnect_grace_seconds,
            platform_fee_bps: self.platform_fee_bps,
        };
        for name in self.policy.keys() {
            name.parse::<Kind>()
                .map_err(|error| ConfigError::Invalid(format!("[policy.{name}]: {error}")))?;
        }
        let for_kind = |kind: Kind| -> Result<Policy, ConfigError> {
            let Some(o) = self.policy.get(kind.as_str()) else {
                return validate(kind, base);
            };
            let policy = Policy {
                min_billable_seconds: o.min_billable_seconds.unwrap_or(base.min_billable_seconds),
                billing_basis: match &o.billing_basis {
                    Some(text) => parse_basis(text)?,
                    None => base.billing_basis,
                },
                join_grace_seconds: o.join_grace_seconds.unwrap_or(base.join_grace_seconds),
                abandon_after_seconds: o
                    .abandon_after_seconds
                    .unwrap_or(base.abandon_after_seconds),
                max_duration_seconds: o.max_duration_seconds.unwrap_or(base.max_duration_seconds),
                presence_timeout_seconds: o
                    .presence_timeout_seconds
                    .unwrap_or(base.presence_timeout_seconds),
                reconnect_grace_seconds: o
                    .reconnect_grace_seconds
                    .unwrap_or(base.reconnect_grace_seconds),
                platform_fee_bps: o.platform_fee_bps.unwrap_or(base.platform_fee_bps),
            };
            validate(kind, policy)
        };
        Ok(PolicySet {
            video: for_kind(Kind::Video)?,
            chat: for_kind(Kind::Chat)?,
            diagnostic: for_kind(Kind::Diagnostic)?,
        })
    }
}

fn parse_basis(text: &str) -> Result<BillingBasis, ConfigError> {
    BillingBasis::parse(text).ok_or_else(|| {
        ConfigError::Invalid(format!("billing_basis must be overlap or wall_clock, got {text:?}"))
    })
}

fn validate(kind: Kind, policy: Policy) -> Result<Policy, ConfigError> {
    let checks = [
        ("min_billable_seconds", policy.min_billable_seconds >= 0),
        ("join_grace_seconds", policy.join_grace_seconds >= 0),
        ("abandon_after_seconds", policy.abandon_after_seconds > 0),
        ("max_duration_seconds", policy.max_duration_seconds > 0),
        ("presence_timeout_seconds", policy.presence_timeout_seconds > 0),
        // A reconnect is a leave and a rejoin; a grace longer than the
        // heartbeat timeout would also bridge lapsed heartbeats.
        (
            "reconnect_grace_seconds",
            (0..=policy.presence_timeout_seconds).contains(&policy.reconnect_grace_seconds),
        ),
        ("platform_fee_bps", (0..=10_000).contains(&policy.platform_fee_bps)),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((name, _)) => {
            Err(ConfigError::Invalid(format!("policy for {kind}: {name} is out of range")))
        }
        None => Ok(policy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn the_file_then_the_environment_then_flags_decide() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "verdict.toml",
                "bind = \"127.0.0.1:9000\"\nmin_billable_seconds = 90\n\
                 [policy.chat]\nmin_billable_seconds = 30\nbilling_basis = \"wall_clock\"\n",
            )?;
            jail.set_env("VERDICT_MIN_BILLABLE_SECONDS", "120");
            jail.set_env("VERDICT_WORKER", "off");
            let overrides =
                Overrides { bind: Some("127.0.0.1:9001".into()), ..Overrides::default() };
            let config = Config::load(Path::new("verdict.toml"), &overrides).expect("loads");
            assert_eq!(config.bind, "127.0.0.1:9001");
            assert!(!config.worker);
            let policies = config.policies().expect("valid");
            assert_eq!(policies.video.min_billable_seconds, 120);
            assert_eq!(policies.chat.min_billable_seconds, 30);
            assert_eq!(policies.chat.billing_basis, BillingBasis::WallClock);
            Ok(())
        });
    }

    #[test]
    fn an_unknown_kind_or_an_out_of_range_value_is_refused() {
        let mut config = Config::default();
        config.policy.insert("phone".into(), PolicyOverride::default());
        assert!(config.policies().is_err());
        let config = Config { platform_fee_bps: 20_000, ..Config::default() };
        assert!(config.policies().is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn the_abuse_limits_load_from_the_environment_and_refuse_zero() {
        figment::Jail::expect_with(|jail| {
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            let limits = config.limits().expect("the defaults are valid");
            assert_eq!(limits, verdict_store::Limits::default());
            assert_eq!(
                (limits.max_presence_events_per_session, limits.request_ttl_seconds),
                (500, 900)
            );
            assert_eq!(limits.max_open_requests_per_customer, 5);
            let rate = config.rate_limit().expect("valid");
            assert_eq!((rate.per_second.get(), rate.burst.get()), (20, 40));
            assert_eq!(
                config.presence_sources().expect("valid"),
                verdict_store::PresenceSources::default()
            );
            jail.set_env("VERDICT_MAX_PRESENCE_EVENTS_PER_SESSION", "7");
            jail.set_env("VERDICT_REQUEST_TTL_SECONDS", "60");
            jail.set_env("VERDICT_MAX_OPEN_REQUESTS_PER_CUSTOMER", "2");
            jail.set_env("VERDICT_RATE_LIMIT_PER_SECOND", "3");
            jail.set_env("VERDICT_RATE_LIMIT_BURST", "4");
            jail.set_env("VERDICT_PRESENCE_SOURCE", "any");
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            let limits = config.limits().expect("valid");
            assert_eq!(
                (
                    limits.max_presence_events_per_session,
                    limits.request_ttl_seconds,
                    limits.max_open_requests_per_customer
                ),
                (7, 60, 2)
            );
            let rate = config.rate_limit().expect("valid");
            assert_eq!((rate.per_second.get(), rate.burst.get()), (3, 4));
            let sources = config.presence_sources().expect("valid");
            assert_eq!(sources.video, verdict_store::PresenceSource::Any);
            for (name, bad, good) in [
                ("VERDICT_MAX_OPEN_REQUESTS_PER_CUSTOMER", "0", "2"),
                ("VERDICT_RATE_LIMIT_BURST", "0", "4"),
                ("VERDICT_PRESENCE_SOURCE", "client", "any"),
            ] {
                jail.set_env(name, bad);
                let config =
                    Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
                let refused = config
                    .settings()
                    .err()
                    .or(config.rate_limit().err())
                    .or(config.presence_sources().err());
                assert!(refused.is_some(), "{name}={bad} accepted");
                jail.set_env(name, good);
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn the_example_file_holds_every_key_at_its_default() {
        // In a Jail: the other tests' variables are set only under its lock.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../verdict.example.toml");
            let text = std::fs::read_to_string(&path).expect("verdict.example.toml is readable");
            let explained =
                sources::load(&path, &Overrides::default()).expect("the example parses");
            let defaults = serde_json::to_value(Config::default()).expect("serializes");
            let mut loaded = serde_json::to_value(&explained.config).expect("serializes");
            // The environment of the test run may set keys: compare the rest.
            for (key, origin) in &explained.origins {
                if matches!(origin, Origin::Environment { .. }) {
                    loaded[key.as_str()] = defaults[key.as_str()].clone();
                }
            }
            assert_eq!(loaded, defaults, "the example's values are not the defaults");
            for key in keys() {
                let set = text.lines().any(|line| {
                    let line = line.trim_start_matches("# ");
                    line.split_once(" = ").is_some_and(|(name, _)| name == key)
                        || line.starts_with(&format!("[{key}."))
                        || line == format!("[{key}]")
                });
                assert!(set, "verdict.example.toml does not mention `{key}`");
                assert!(
                    explained.origins[&key] != Origin::Default
                        || defaults[key.as_str()].is_null()
                        || defaults[key.as_str()] == serde_json::json!({}),
                    "`{key}` has a default but the example leaves it out"
                );
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn an_unknown_key_in_the_file_is_refused_and_an_unknown_variable_only_noted() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "verdict.toml",
                "bind = \"127.0.0.1:9000\"\nrate_limit_per_secnod = 5\n",
            )?;
            let error = Config::load(Path::new("verdict.toml"), &Overrides::default())
                .expect_err("a misspelled key is refused")
                .to_string();
            assert!(error.contains("`rate_limit_per_secnod`"), "{error}");
            assert!(error.contains("did you mean `rate_limit_per_second`"), "{error}");
            jail.create_file("verdict.toml", "[policy.chat]\nmin_billable_secs = 5\n")?;
            let error = Config::load(Path::new("verdict.toml"), &Overrides::default())
                .expect_err("a misspelled policy key is refused")
                .to_string();
            assert!(error.contains("min_billable_secs"), "{error}");
            jail.create_file("verdict.toml", "bind = \"127.0.0.1:9000\"\n")?;
            jail.set_env("VERDICT_BIDN", "127.0.0.1:1");
            jail.set_env("VERDICT_SIM_SEED", "7");
            jail.set_env("VERDICT_RATE_LIMIT_BURST", "9");
            let explained = Config::explain(Path::new("verdict.toml"), &Overrides::default())
                .expect("an unknown variable does not stop loading");
            assert_eq!(explained.unknown_variables, vec!["VERDICT_BIDN".to_owned()]);
            assert_eq!(explained.config.bind, "127.0.0.1:9000");
            assert_eq!(explained.config.rate_limit_burst, 9);
            assert_eq!(explained.origins["bind"], Origin::File { path: "verdict.toml".into() });
            assert_eq!(
                explained.origins["rate_limit_burst"],
                Origin::Environment { variable: "VERDICT_RATE_LIMIT_BURST".into() }
            );
            assert_eq!(explained.origins["mail_dir"], Origin::Default);
            jail.set_env("VERDICT_DATABASE_URL", "mysql://db/verdict");
            let error = Config::load(Path::new("verdict.toml"), &Overrides::default())
                .expect_err("no backend serves mysql");
            assert!(error.to_string().contains("database_url"), "{error}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn cors_origins_are_a_list_in_the_file_and_commas_in_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("verdict.toml", "cors_allowed_origins = [\"https://a.example\"]\n")?;
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            assert_eq!(config.cors_allowed_origins, vec!["https://a.example".to_owned()]);
            assert!(config.cors().expect("valid").is_some());
            jail.set_env(
                "VERDICT_CORS_ALLOWED_ORIGINS",
                "https://b.example, http://localhost:5173",
            );
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            assert_eq!(config.cors_allowed_origins, ["https://b.example", "http://localhost:5173"]);
            jail.set_env("VERDICT_CORS_ALLOWED_ORIGINS", "https://b.example/app");
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            assert!(config.cors().is_err(), "a path is not an origin");
            assert!(Config::default().cors().expect("valid").is_none(), "no origin: no CORS");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's type
    fn the_alerts_table_loads_partly_and_refuses_bad_values() {
        figment::Jail::expect_with(|jail| {
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            assert_eq!(
                config.settings().expect("valid").alerts,
                verdict_store::insight::Thresholds::default()
            );
            jail.create_file(
                "verdict.toml",
                "[alerts]
min_sessions = 5
",
            )?;
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            let alerts = config.settings().expect("valid").alerts;
            assert_eq!((alerts.min_sessions, alerts.completion_rate_below), (5, 0.5));
            jail.create_file(
                "verdict.toml",
                "[alerts]
no_show_rate_above = 1.5
",
            )?;
            let config =
                Config::load(Path::new("verdict.toml"), &Overrides::default()).expect("loads");
            let error = config.settings().expect_err("a rate above 1").to_string();
            assert!(error.contains("no_show_rate_above"), "{error}");
            jail.create_file(
                "verdict.toml",
                "[alerts]
min_sesions = 5
",
            )?;
            let error = Config::load(Path::new("verdict.toml"), &Overrides::default())
                .expect_err("a misspelled alerts key is refused")
                .to_string();
            assert!(error.contains("min_sesions"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = Config { jwt_secret: Some(Secret::new("hunter2")), ..Config::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
