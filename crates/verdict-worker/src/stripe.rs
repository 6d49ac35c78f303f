//! Stripe Connect transfers (docs/delivery.md).
//!
//! One payout, one transfer, whatever fails on the way: the request carries
//! `Idempotency-Key` = the payout id, so a retry after a timeout returns
//! the transfer already made. When Stripe replays a saved 5xx for that key
//! (`Idempotent-Replayed: true`), the key is spent: we look the transfer up
//! by `transfer_group` (the session id) and either record it or retry with
//! a fresh key `<payout id>:<n>`, never creating a second transfer.

use std::fmt;

use serde_json::{Value, json};
use verdict_store::{
    CONFIGURATION_FAULT, OutboxItem, OutboxOutcome, PayoutProvider, PayoutState, Store,
};

use crate::Delivery;
use crate::webhook::without_url;

#[derive(Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or a local fake in tests.
    pub api_base: String,
    pub secret_key: String,
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"***")
            .finish()
    }
}

pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &StripeConfig,
    store: &dyn Store,
    item: &OutboxItem,
) -> Delivery {
    let Some(payout_id) = item.payload["payout_id"].as_str() else {
        return Delivery::Undeliverable("payout row without payout_id".into());
    };
    let payout = match store.payout(payout_id).await {
        Ok(Some(payout)) => payout,
        Ok(None) => return Delivery::Undeliverable(format!("payout {payout_id} does not exist")),
        Err(error) => return Delivery::Failed { error: error.to_string(), payload: None },
    };
    if payout.reversed_at.is_some() {
        // Reversed before it was recorded paid: nothing may leave now. An
        // earlier attempt may have made the transfer and lost the answer,
        // though: Stripe is asked, and a transfer found is recorded (its
        // reversal then undoes it at Stripe).
        if payout.state != PayoutState::Pending || payout.transfer_id.is_some() {
            return Delivery::Done(OutboxOutcome::Delivered);
        }
        return match find_transfer(http, config, &payout.session_id, &payout.id).await {
            Ok(Some(transfer_id)) => Delivery::Done(OutboxOutcome::PayoutPaid {
                payout_id: payout.id.clone(),
                transfer_id,
            }),
            Ok(None) => Delivery::Done(OutboxOutcome::Delivered),
            Err(error) => Delivery::failed(error, None),
        };
    }
    if payout.state != PayoutState::Pending {
        // Settled by an earlier attempt whose bookkeeping was recorded.
        return Delivery::Done(OutboxOutcome::Delivered);
    }
    let failed = |reason: String| {
        Delivery::Done(OutboxOutcome::PayoutFailed { payout_id: payout.id.clone(), reason })
    };
    let Some(destination) = &payout.destination else {
        return failed(
            "no Stripe account for the provider (provider_account or stripe_account)".into(),
        );
    };
    if payout.amount.0 == 0 {
        // Nothing to move; Stripe refuses zero transfers.
        return Delivery::Done(OutboxOutcome::PayoutPaid {
            payout_id: payout.id.clone(),
            transfer_id: "none:zero-amount".into(),
        });
    }
    // Which key generation this attempt starts with (0: the payout id
    // itself). A key burnt on a saved failure is replaced within the same
    // attempt, once: the new generation goes back with any failure, so a
    // later attempt replays that key rather than risk a second transfer.
    let mut generation = item.payload["key_generation"].as_u64().unwrap_or(0);
    let mut renewed: Option<Value> = None;
    if item.payload["look_up_first"] == true {
        // Queued again by an operator after a refusal or a dead delivery:
        // a transfer Stripe already has is recorded; only when it provably
        // has none does this attempt take a new idempotency key.
        match find_transfer(http, config, &payout.session_id, &payout.id).await {
            Ok(Some(transfer_id)) => {
                return Delivery::Done(OutboxOutcome::PayoutPaid {
                    payout_id: payout.id.clone(),
                    transfer_id,
                });
            }
            Ok(None) => {
                generation += 1;
                let mut payload = item.payload.clone();
                payload["key_generation"] = json!(generation);
                if let Some(fields) = payload.as_object_mut() {
                    fields.remove("look_up_first");
                }
                renewed = Some(payload);
            }
            Err(error) => return Delivery::failed(error, None),
        }
    }
    let form = [
        ("amount", payout.amount.0.to_string()),
        ("currency", payout.currency.clone()),
        ("destination", destination.clone()),
        ("transfer_group", payout.session_id.clone()),
        ("metadata[session_id]", payout.session_id.clone()),
        ("metadata[payout_id]", payout.id.clone()),
    ];
    loop {
        let key =
            if generation == 0 { payout.id.clone() } else { format!("{}:{generation}", payout.id) };
        let retry = |error: String| Delivery::failed(error, renewed.clone());
        let response = http
            .post(format!("{}/v1/transfers", config.api_base.trim_end_matches('/')))
            .bearer_auth(&config.secret_key)
            .header("Idempotency-Key", &key)
            .form(&form)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return retry(format!("Stripe: {}", without_url(&error))),
        };
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return match body["id"].as_str() {
                Some(transfer_id) => Delivery::Done(OutboxOutcome::PayoutPaid {
                    payout_id: payout.id.clone(),
                    transfer_id: transfer_id.to_owned(),
                }),
                None => retry("Stripe answered 2xx without a transfer id".into()),
            };
        }
        let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
        if status.is_server_error() && replayed {
            // The key is burnt on a saved failure. Did a transfer happen anyway?
            match find_transfer(http, config, &payout.session_id, &payout.id).await {
                Ok(Some(transfer_id)) => {
                    return Delivery::Done(OutboxOutcome::PayoutPaid {
                        payout_id: payout.id.clone(),
                        transfer_id,
                    });
                }
                Ok(None) if renewed.is_none() => {
                    generation += 1;
                    let mut payload = item.payload.clone();
                    payload["key_generation"] = json!(generation);
                    renewed = Some(payload);
                    continue;
                }
                Ok(None) => {
                    return retry(format!("Stripe replayed HTTP {}: {message}", status.as_u16()));
                }
                Err(error) => return retry(error),
            }
        }
        return match status.as_u16() {
            409 | 429 => retry(format!("Stripe HTTP {status}: {message}")),
            // Our key or our base URL, not this payout: never `failed`.
            401 | 403 => retry(format!(
                "{CONFIGURATION_FAULT}Stripe refused our credentials (HTTP {}): {message}",
                status.as_u16()
            )),
            400..=499 => {
                failed(format!("Stripe refused the transfer (HTTP {}): {message}", status.as_u16()))
            }
            _ => retry(format!("Stripe HTTP {}: {message}", status.as_u16())),
        };
    }
}

/// The transfer for this payout in its group, if Stripe has one.
async fn find_transfer(
    http: &reqwest::Client,
    config: &StripeConfig,
    transfer_group: &str,
    payout_id: &str,
) -> Result<Option<String>, String> {
    let response = http
        .get(format!("{}/v1/transfers", config.api_base.trim_end_matches('/')))
        .bearer_auth(&config.secret_key)
        .query(&[("transfer_group", transfer_group), ("limit", "100")])
        .send()
        .await
        .map_err(|error| format!("Stripe lookup: {}", without_url(&error)))?;
    let status = response.status().as_u16();
    if matches!(status, 401 | 403) {
        return Err(format!(
            "{CONFIGURATION_FAULT}Stripe lookup refused our credentials (HTTP {status})"
        ));
    }
    if !response.status().is_success() {
        return Err(format!("Stripe lookup: HTTP {status}"));
    }
    let body: Value =
        response.json().await.map_err(|_| "Stripe lookup: unreadable body".to_owned())?;
    let found = body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|transfer| transfer["metadata"]["payout_id"].as_str() == Some(payout_id));
    Ok(found.and_then(|transfer| transfer["id"].as_str().map(str::to_owned)))
}

/// Reverses a wrongly paid payout at Stripe (`POST
/// /v1/transfers/{id}/reversals`, `Idempotency-Key: rev_<payout id>`),
/// judged on the payout as it is now, not as it was when the repair queued
/// this row: a transfer in flight then, or made and answered too late, is
/// reversed too. A payout with no transfer recorded is looked up at Stripe
/// first; a payout Stripe never paid has nothing to reverse there (the
/// reversal posting in the ledger is the whole of it).
pub(crate) async fn reverse(
    http: &reqwest::Client,
    config: Option<&StripeConfig>,
    store: &dyn Store,
    item: &OutboxItem,
) -> Delivery {
    let Some(payout_id) = item.payload["payout_id"].as_str() else {
        return Delivery::Undeliverable("reversal row without payout_id".into());
    };
    let payout = match store.payout(payout_id).await {
        Ok(Some(payout)) => payout,
        Ok(None) => return Delivery::Undeliverable(format!("payout {payout_id} does not exist")),
        Err(error) => return Delivery::Failed { error: error.to_string(), payload: None },
    };
    let settled = |transfer_id: Option<String>, reversal_id: Option<String>| {
        Delivery::Done(OutboxOutcome::PayoutReversed {
            payout_id: payout.id.clone(),
            transfer_id,
            reversal_id,
        })
    };
    if payout.reversal_id.is_some() {
        // Reversed at Stripe already (an earlier delivery).
        return Delivery::Done(OutboxOutcome::Delivered);
    }
    if payout.provider == PayoutProvider::Manual {
        return settled(None, None);
    }
    let Some(config) = config else {
        return Delivery::Failed {
            error: "no Stripe key configured: this reversal must be made manually".into(),
            payload: None,
        };
    };
    let (transfer_id, found) = match &payout.transfer_id {
        Some(transfer_id) if transfer_id.starts_with("none:") => return settled(None, None),
        Some(transfer_id) => (transfer_id.clone(), None),
        None => match find_transfer(http, config, &payout.session_id, &payout.id).await {
            Ok(Some(transfer_id)) => (transfer_id.clone(), Some(transfer_id)),
            Ok(None) => return settled(None, None),
            Err(error) => return Delivery::failed(error, None),
        },
    };
    let amount = payout.amount.0.to_string();
    let response = http
        .post(format!(
            "{}/v1/transfers/{transfer_id}/reversals",
            config.api_base.trim_end_matches('/')
        ))
        .bearer_auth(&config.secret_key)
        .header("Idempotency-Key", format!("rev_{}", payout.id))
        .form(&[("amount", amount.as_str()), ("metadata[payout_id]", payout.id.as_str())])
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            return Delivery::Failed {
                error: format!("Stripe: {}", without_url(&error)),
                payload: None,
            };
        }
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200..=299 => match body["id"].as_str() {
            Some(reversal_id) => settled(found, Some(reversal_id.to_owned())),
            None => Delivery::Failed {
                error: "Stripe answered 2xx without a reversal id".into(),
                payload: None,
            },
        },
        409 | 429 | 500..=599 => {
            Delivery::Failed { error: format!("Stripe reversal HTTP {status}"), payload: None }
        }
        401 | 403 => Delivery::ConfigFault {
            error: format!("Stripe refused our credentials for a reversal (HTTP {status})"),
            payload: None,
        },
        _ => Delivery::Undeliverable(format!("Stripe refused the reversal (HTTP {status})")),
    }
}
