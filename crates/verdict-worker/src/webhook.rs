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

/// The signing key from `whsec_<base64>`; never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the spec).
    pub fn parse(text: &str) -> Option<WebhookSecret> {
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        STANDARD.decode(encoded).ok().filter(|key| !key.is_empty()).map(WebhookSecret)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[derive(Clone, Debug, Default)]
pub struct WebhookConfig {
    /// Every endpoint gets every event; none configured: nothing to send.
    pub urls: Vec<String>,
    pub secret: Option<WebhookSecret>,
}

/// The `webhook-signature` value for one message.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &WebhookConfig,
    item: &OutboxItem,
    event: &str,
) -> Delivery {
    if config.urls.is_empty() {
        return Delivery::Done(OutboxOutcome::Delivered);
    }
    // The id is the row's: retries carry the same id, so receivers dedupe.
    let id = format!("msg_{}", item.id);
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut data = item.payload.clone();
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
    let mut failures = Vec::new();
    for url in &config.urls {
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
            Ok(response) if response.status().is_success() => {}
            Ok(response) => failures.push(format!(
                "{}: HTTP {}",
                endpoint_label(url),
                response.status().as_u16()
            )),
            Err(error) => {
                failures.push(format!("{}: {}", endpoint_label(url), without_url(&error)))
            }
        }
    }
    if failures.is_empty() {
        Delivery::Done(OutboxOutcome::Delivered)
    } else {
        Delivery::Failed { error: failures.join("; "), payload: None }
    }
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
    use super::endpoint_label;

    #[test]
    fn an_endpoint_label_keeps_no_credentials() {
        assert_eq!(
            endpoint_label("https://user:pa55@hooks.example.com:8443/in?token=s3cret#x"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(endpoint_label("http://127.0.0.1/hook"), "http://127.0.0.1/hook");
    }
}
