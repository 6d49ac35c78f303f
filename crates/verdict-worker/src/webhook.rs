//! Signed webhooks (Standard Webhooks): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use verdict_store::{OutboxItem, OutboxOutcome};

use crate::Delivery;

/// The signing keys from `whsec_<base64>`, several separated by spaces
/// while one replaces another: each signs every message. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<Vec<u8>>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the spec), or
    /// several of them separated by spaces (rotation).
    pub fn parse(text: &str) -> Option<WebhookSecret> {
        let keys = text
            .split_ascii_whitespace()
            .map(|one| {
                let encoded = one.strip_prefix("whsec_").unwrap_or(one);
                STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
            })
            .collect::<Option<Vec<_>>>()?;
        (!keys.is_empty()).then_some(WebhookSecret(keys))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[derive(Clone, Default)]
pub struct WebhookConfig {
    /// Every endpoint gets every event, each its own delivery; none
    /// configured: nothing to send.
    pub urls: Vec<String>,
    pub secret: Option<WebhookSecret>,
}

/// Shows each endpoint by its label: a URL may carry credentials.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self.urls.iter().map(|url| endpoint_label(url)).collect();
        f.debug_struct("WebhookConfig")
            .field("urls", &labels)
            .field("secret", &self.secret)
            .finish()
    }
}

/// The `webhook-signature` value for one message: `v1,<base64>` per key,
/// separated by spaces (Standard Webhooks: a receiver accepts a message if
/// any signature checks with the key it knows).
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let signed = format!("{id}.{timestamp}.{body}");
    let signatures: Vec<String> = secret
        .0
        .iter()
        .map(|key| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(signed.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect();
    signatures.join(" ")
}

/// The payload field naming a copy's endpoint ([`endpoint_key`]).
const ENDPOINT: &str = "webhook_endpoint";

/// Delivers a webhook row. A message as queued is fanned out: one copy per
/// configured endpoint, each delivered, retried and dead-lettered on its
/// own, so a failing receiver never holds up, nor duplicates to, the
/// others. A copy is posted to its one endpoint.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &WebhookConfig,
    item: &OutboxItem,
    event: &str,
) -> Delivery {
    let Some(key) = item.payload.get(ENDPOINT).and_then(|key| key.as_str()) else {
        // The id is the message row's: every endpoint and every retry get
        // the same `webhook-id`, so receivers dedupe.
        let id = format!("msg_{}", item.id);
        let copies = config
            .urls
            .iter()
            .map(|url| {
                let key = endpoint_key(url);
                let payload = json!({ENDPOINT: key, "webhook_id": id, "message": item.payload});
                (key, payload)
            })
            .collect();
        return Delivery::Done(OutboxOutcome::FanOut { copies });
    };
    let Some(url) = config.urls.iter().find(|url| endpoint_key(url) == key) else {
        return Delivery::Undeliverable(
            "this webhook endpoint is no longer configured (webhook_urls)".into(),
        );
    };
    let id = item.payload["webhook_id"].as_str().unwrap_or_default().to_owned();
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut data = item.payload["message"].clone();
    if let Some(object) = data.as_object_mut() {
        object.remove("event");
    }
    let body = json!({
        "type": event,
        "timestamp": time::OffsetDateTime::from_unix_timestamp(item.created_at.0 / 1000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "data": data,
    })
    .to_string();
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .body(body.clone());
    if let Some(secret) = &config.secret {
        request = request.header("webhook-signature", sign(secret, &id, timestamp, &body));
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Delivery::Done(OutboxOutcome::Delivered),
        Ok(response) => Delivery::Failed {
            error: format!("{}: HTTP {}", endpoint_label(url), response.status().as_u16()),
            payload: None,
        },
        Err(error) => Delivery::Failed {
            error: format!("{}: {}", endpoint_label(url), without_url(&error)),
            payload: None,
        },
    }
}

/// An endpoint's stable name in the outbox (its channel and copies): the
/// first 16 hex digits of the URL's SHA-256, so that no part of the URL is
/// stored, and a restart with the same URLs finds its copies again.
pub fn endpoint_key(url: &str) -> String {
    use sha2::Digest;
    let digest = Sha256::digest(url.as_bytes());
    digest[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A transport error's kind, without the URL (which may carry secrets).
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "unreadable response body"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// An endpoint as logs and `last_error` show it: scheme, host, port and
/// path, never the user-info or the query (either may carry a secret).
pub fn endpoint_label(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("?");
            match parsed.port() {
                Some(port) => format!("{}://{host}:{port}{}", parsed.scheme(), parsed.path()),
                None => format!("{}://{host}{}", parsed.scheme(), parsed.path()),
            }
        }
        Err(_) => "an unparsable URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{WebhookConfig, endpoint_label};

    #[test]
    fn an_endpoint_label_keeps_no_credentials() {
        assert_eq!(
            endpoint_label("https://user:pa55@hooks.example.com:8443/in?token=s3cret#x"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(endpoint_label("http://127.0.0.1/hook"), "http://127.0.0.1/hook");
        let config = WebhookConfig {
            urls: vec!["https://u:pa55@h.example/in?token=s3cret".into()],
            secret: None,
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("pa55") && !printed.contains("s3cret"), "{printed}");
    }
}
