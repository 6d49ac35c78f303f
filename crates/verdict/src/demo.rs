//! `verdict demo`: the server on the embedded default with a marketplace
//! running against it in real time — completions, no-shows, too-short and
//! abandoned sessions, a request/accept flow — and a day of legacy history
//! imported with the old system's wrong statuses, so the dashboard has
//! something to show (and to find) from the first minute.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use verdict_core::{Kind, Role};
use verdict_http::JwtKeys;
use verdict_store::clock::{Clock, SystemClock};

use crate::config::Config;
use crate::{Application, BoxError};

/// The demo's own database unless one is configured: apart from
/// `verdict serve`'s default, so the two never mix.
pub const DATABASE_URL: &str = "sqlite://verdict-data/demo.db";

/// Legacy sessions imported at start (ids are stable: a second run skips them).
const LEGACY_SESSIONS: u64 = 300;
/// Live sessions in flight at once.
const IN_FLIGHT_MAX: usize = 40;
/// Rooms open for the browser at start (`/demo`), chat and video.
const ROOMS_AT_START: usize = 4;

pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let (secret, _) = crate::secret_or_random(config);
    let app = Application::build(config, &secret).await?;
    let address = app.local_addr();
    let store = app.state().store.clone();

    let mut history = Vec::new();
    crate::generate::history(&mut history, LEGACY_SESSIONS, 1, 1, SystemClock.now())?;
    let mut importer = verdict_http::import::Importer::new(store.as_ref(), SystemClock.now());
    for (index, line) in String::from_utf8_lossy(&history).lines().enumerate() {
        importer.line(index as u64 + 1, line).await?;
    }
    let summary = importer.finish().await?;

    let keys = Arc::new(crate::jwt_keys(config, &secret));
    let rooms = verdict_http::demo_room::DemoRooms::new(keys.clone());
    for n in 0..ROOMS_AT_START {
        let kind = if n % 2 == 0 { Kind::Chat } else { Kind::Video };
        rooms.open(app.state(), kind).await.map_err(|error| format!("demo room: {error}"))?;
    }
    let app = app.with_demo_rooms(rooms);
    let token = keys.mint(Role::Admin, "demo", crate::simulate::unix_now() + 24 * 3600);
    println!("verdict listening on http://{address}");
    println!("verdict demo on {}", verdict_store::redact_url(&config.database_url));
    if let Some(file) = config.database_url.strip_prefix("sqlite://") {
        println!("  (its own database: stop the demo and delete {file} to start afresh)");
    }
    println!(
        "  legacy history: {} sessions imported ({} already there), about 10 % recorded wrong",
        summary.imported, summary.skipped
    );
    println!("  a marketplace is running against it in real time; Ctrl-C stops everything");
    println!();
    println!("  dashboard:   http://{address}/admin/sessions/session-health");
    println!("  demo rooms:  http://{address}/demo  (join a session as customer and provider)");
    println!("  admin token: {token}");
    println!("  (paste the token on the sign-in page; it is valid for 24 h)");

    let base = format!("http://{address}");
    let market = tokio::spawn(marketplace(base, keys));
    let result = app.run_until_stopped(shutdown).await;
    market.abort();
    result
}

/// Starts a new marketplace session every second or two, forever.
async fn marketplace(base: String, keys: Arc<JwtKeys>) {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else {
        return;
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let mut n = 0u64;
    loop {
        let pause = rand::rng().random_range(700..2_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        n += 1;
        let market = Market { client: client.clone(), base: base.clone(), keys: keys.clone() };
        tokio::spawn(async move {
            // A failed call ends this session's story; the next one starts.
            let _ = market.one(n).await;
            drop(permit);
        });
    }
}

struct Market {
    client: reqwest::Client,
    base: String,
    keys: Arc<JwtKeys>,
}

impl Market {
    fn token(&self, role: Role, sub: &str) -> String {
        self.keys.mint(role, sub, crate::simulate::unix_now() + 3600)
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, BoxError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{path}: {status} {body}").into());
        }
        Ok(body)
    }

    async fn presence(
        &self,
        id: &str,
        role: Role,
        sub: &str,
        action: &str,
    ) -> Result<(), BoxError> {
        self.post(&format!("/v1/sessions/{id}/{action}"), &self.token(role, sub), json!({}))
            .await
            .map(drop)
    }

    async fn wait(seconds: std::ops::Range<u64>) {
        let seconds = rand::rng().random_range(seconds);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }

    async fn one(&self, n: u64) -> Result<(), BoxError> {
        let customer = format!("demo-c{}", rand::rng().random_range(0..200));
        let provider = format!("demo-p{}", rand::rng().random_range(0..20));
        let roll = rand::rng().random_range(0..100);
        let service = self.token(Role::Service, "demo");
        let id = if roll < 15 {
            // A customer asks two providers; the first to accept gets it.
            let other = format!("demo-p{}", rand::rng().random_range(20..40));
            let request = self
                .post(
                    "/v1/requests",
                    &self.token(Role::Customer, &customer),
                    json!({"customer_id": customer, "kind": "chat",
                           "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"},
                           "candidate_provider_ids": [provider, other]}),
                )
                .await?;
            let request_id = request["id"].as_str().unwrap_or_default().to_owned();
            Self::wait(3..10).await;
            let session = self
                .post(
                    &format!("/v1/requests/{request_id}/accept"),
                    &self.token(Role::Provider, &provider),
                    json!({}),
                )
                .await?;
            session["id"].as_str().unwrap_or_default().to_owned()
        } else {
            let id = format!("demo-{}-{n}", crate::simulate::unix_now());
            self.post(
                "/v1/sessions",
                &service,
                json!({"id": id, "kind": "video", "customer_id": customer, "provider_id": provider,
                       "price": {"mode": "per_minute", "amount_cents": 150, "currency": "usd"}}),
            )
            .await?;
            id
        };
        self.presence(&id, Role::Customer, &customer, "join").await?;
        match roll {
            // Completed: together for a minute or two.
            0..60 => {
                Self::wait(2..8).await;
                self.presence(&id, Role::Provider, &provider, "join").await?;
                Self::wait(65..120).await;
                self.presence(&id, Role::Provider, &provider, "leave").await?;
                self.presence(&id, Role::Customer, &customer, "leave").await?;
            }
            // Too short.
            60..75 => {
                self.presence(&id, Role::Provider, &provider, "join").await?;
                Self::wait(10..40).await;
            }
            // The provider never comes.
            75..90 => Self::wait(30..60).await,
            // Abandoned: both leave and nobody ends it; the sweeper will.
            _ => {
                self.presence(&id, Role::Provider, &provider, "join").await?;
                Self::wait(20..40).await;
                self.presence(&id, Role::Provider, &provider, "leave").await?;
                self.presence(&id, Role::Customer, &customer, "leave").await?;
                return Ok(());
            }
        }
        self.post(
            &format!("/v1/sessions/{id}/end"),
            &self.token(Role::Customer, &customer),
            json!({}),
        )
        .await
        .map(drop)
    }
}
