//! Background work: the outbox worker.
//!
//! Side effects leave verdict only through the outbox (docs/delivery.md). The worker
//! leases due rows, delivers them — Stripe transfers, e-mail receipts,
//! signed webhooks — and records each outcome in one transaction with its
//! effects. Delivery is at least once; receivers deduplicate by the ids we
//! send (Stripe's `Idempotency-Key`, `webhook-id`, the e-mail `Message-ID`).
//!
//! [`Worker::try_deliver_batch`] is one step that tests drive directly;
//! [`Worker::run_until_stopped`] loops over it. It also judges the
//! threshold alerts once a minute ([`Worker::try_evaluate_alerts`]).

mod mail;
mod stripe;
mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use serde_json::Value;
use verdict_core::{Topic, UnixMillis};
use verdict_store::clock::Clock;
use verdict_store::{OutboxItem, OutboxOutcome, Settings, Store, StoreError, SweepReport};

pub use mail::{MailConfig, Mailer, receipt};
pub use stripe::StripeConfig;
pub use webhook::{WebhookConfig, WebhookSecret, sign as sign_webhook};

/// How the worker delivers.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `None`: payout rows wait (and eventually die) — payouts are manual.
    pub stripe: Option<StripeConfig>,
    pub webhooks: WebhookConfig,
    pub mail: MailConfig,
    /// Every outbound call gives up after this.
    pub outbound_timeout: Duration,
    /// Rows claimed per step.
    pub batch_max: i64,
    /// Attempts before a row is `dead`.
    pub attempts_max: i64,
    /// How long a claim is ours. Longer than any delivery can take, so a
    /// live worker never loses a row it is still delivering.
    pub lease: Duration,
    /// First retry delay; doubles per attempt, with ±20 % jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long an idle worker waits before looking again (real time).
    pub idle_poll: Duration,
    /// Sessions the sweeper looks at per step.
    pub sweep_batch_max: i64,
    /// How often the sweeper runs (real time).
    pub sweep_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            stripe: None,
            webhooks: WebhookConfig::default(),
            mail: MailConfig::default(),
            outbound_timeout: Duration::from_secs(10),
            batch_max: 32,
            attempts_max: 12,
            lease: Duration::from_secs(120),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            idle_poll: Duration::from_millis(500),
            sweep_batch_max: 200,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// How often a running worker judges the threshold alerts (real time; the
/// window itself is on the service clock).
pub const ALERT_INTERVAL: Duration = Duration::from_secs(60);

/// `verdict_completion_rate{kind}` and `verdict_no_show_rate{kind}` over
/// the last 24 h.
pub fn record_rates(
    by_kind: &std::collections::BTreeMap<verdict_core::Kind, verdict_store::insight::Counts>,
) {
    for (kind, counts) in by_kind {
        verdict_store::insight::set_rate_gauges(
            *kind,
            counts.ended,
            counts.completion_rate(),
            counts.no_show_rate(),
        );
    }
}

/// Chooses rustls' crypto (ring) for the process; every HTTP or SMTP
/// client built afterwards uses it. Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This many rows were claimed and attempted.
    Attempted(usize),
    EmptyQueue,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("worker configuration: {0}")]
    Config(String),
}

pub struct Worker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The policies the sweeper decides with, and the payout provider.
    settings: Settings,
    config: WorkerConfig,
    /// This worker's lease owner name: unique per process and start.
    owner: String,
    http: reqwest::Client,
    mailer: Mailer,
}

/// How a delivery went, before the retry policy is applied.
pub(crate) enum Delivery {
    Done(OutboxOutcome),
    /// Worth retrying; optionally with a replacement payload.
    Failed {
        error: String,
        payload: Option<Value>,
    },
    /// Never deliverable.
    Undeliverable(String),
    /// Not this row's fault but the configuration's (Stripe answered
    /// 401/403): retried with backoff however many attempts it took, and
    /// raised as an alert; optionally with a replacement payload.
    ConfigFault {
        error: String,
        payload: Option<Value>,
    },
}

impl Delivery {
    /// A retryable failure, or a configuration fault when `error` says so.
    pub(crate) fn failed(error: String, payload: Option<Value>) -> Delivery {
        match error.strip_prefix(verdict_store::CONFIGURATION_FAULT) {
            Some(error) => Delivery::ConfigFault { error: error.to_owned(), payload },
            None => Delivery::Failed { error, payload },
        }
    }
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        config: WorkerConfig,
    ) -> Result<Worker, WorkerError> {
        install_crypto();
        let http = reqwest::Client::builder()
            .timeout(config.outbound_timeout)
            .connect_timeout(config.outbound_timeout)
            .user_agent(concat!("verdict/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| WorkerError::Config(format!("HTTP client: {error}")))?;
        let mailer = Mailer::new(&config.mail, config.outbound_timeout)?;
        if config.lease <= config.outbound_timeout * 2 {
            return Err(WorkerError::Config("the lease must outlast two outbound timeouts".into()));
        }
        Ok(Worker {
            store,
            clock,
            settings,
            config,
            owner: format!("worker-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            http,
            mailer,
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims one batch of due rows and delivers it: sessions in parallel,
    /// each session's rows in order (a claim holds at most one row per
    /// session and channel).
    pub async fn try_deliver_batch(&self) -> Result<Step, WorkerError> {
        let now = self.clock.now();
        let lease_until = UnixMillis(now.0 + self.config.lease.as_millis() as i64);
        let items =
            self.store.claim_outbox(&self.owner, self.config.batch_max, lease_until, now).await?;
        if items.is_empty() {
            return Ok(Step::EmptyQueue);
        }
        let count = items.len();
        let deliveries = items.into_iter().map(|item| self.deliver_and_record(item));
        for result in join_all(deliveries).await {
            result?;
        }
        Ok(Step::Attempted(count))
    }

    /// Judges the threshold alerts of the last 24 h on the service clock,
    /// records their states (each change queues its `alert.raised` or
    /// `alert.resolved` webhook once, however many workers evaluate at
    /// once) and sets the per-kind rate gauges.
    pub async fn try_evaluate_alerts(
        &self,
    ) -> Result<verdict_store::insight::Evaluation, WorkerError> {
        let evaluation =
            verdict_store::insight::evaluate(&self.store, &self.settings, self.clock.now()).await?;
        record_rates(&evaluation.by_kind);
        for transition in &evaluation.transitions {
            tracing::info!(
                event = transition.event(),
                alert = transition.rule.as_str(),
                scope = %format!("{}={}", transition.scope.field(), transition.scope.value()),
                value = transition.value,
                threshold = transition.threshold,
                "threshold alert changed state"
            );
        }
        Ok(evaluation)
    }

    /// One sweep: ends the sessions nobody ended that are due now.
    pub async fn try_sweep(&self) -> Result<SweepReport, WorkerError> {
        let report =
            self.store.sweep(&self.settings, self.clock.now(), self.config.sweep_batch_max).await?;
        metrics::counter!("verdict_sweeper_runs_total").increment(1);
        for (session, error) in &report.failed {
            metrics::counter!("verdict_sweeper_failures_total").increment(1);
            tracing::warn!(%session, %error, "the sweeper could not end or finalize a session");
        }
        for session in &report.ended {
            metrics::counter!("verdict_sweeper_ended_total").increment(1);
            metrics::counter!(
                "verdict_sessions_ended_total",
                "status" => session.status.as_str(),
                "reason" => session.reason().map_or("none", |reason| reason.as_str())
            )
            .increment(1);
            tracing::info!(
                session = %session.id,
                status = %session.status,
                reason = %session.reason().map_or("none", |reason| reason.as_str()),
                "sweeper ended a session"
            );
        }
        Ok(report)
    }

    async fn deliver_and_record(&self, item: OutboxItem) -> Result<(), WorkerError> {
        let delivery = self.deliver(&item).await;
        let now = self.clock.now();
        let attempts = item.attempts + 1;
        let outcome = match delivery {
            Delivery::Done(outcome) => outcome,
            Delivery::Undeliverable(error) => OutboxOutcome::Dead { error },
            Delivery::ConfigFault { error, payload } => {
                metrics::counter!("verdict_stripe_configuration_faults_total").increment(1);
                tracing::error!(id = item.id, topic = %item.topic, attempts, %error,
                    "Stripe refused our credentials: a configuration fault, retried with backoff");
                let due_at = UnixMillis(now.0 + self.backoff(attempts).as_millis() as i64);
                let error = format!("{}{error}", verdict_store::CONFIGURATION_FAULT);
                OutboxOutcome::Retry { due_at, error, payload }
            }
            Delivery::Failed { error, .. } if attempts >= self.config.attempts_max => {
                tracing::warn!(id = item.id, topic = %item.topic, %error, "outbox row is dead");
                OutboxOutcome::Dead { error }
            }
            Delivery::Failed { error, payload } => {
                tracing::info!(id = item.id, topic = %item.topic, attempts, %error, "delivery failed; will retry");
                let due_at = UnixMillis(now.0 + self.backoff(attempts).as_millis() as i64);
                OutboxOutcome::Retry { due_at, error, payload }
            }
        };
        let label = match &outcome {
            OutboxOutcome::Retry { .. } => "retry",
            OutboxOutcome::Dead { .. } => "dead",
            OutboxOutcome::FanOut { .. } => "fanned_out",
            _ => "delivered",
        };
        metrics::counter!("verdict_outbox_attempts_total", "outcome" => label).increment(1);
        if !self.store.finish_outbox(item.id, &self.owner, outcome, now).await? {
            tracing::warn!(id = item.id, "lease lost before the outcome was recorded");
        }
        Ok(())
    }

    async fn deliver(&self, item: &OutboxItem) -> Delivery {
        let Some(topic) = Topic::parse(&item.topic) else {
            return Delivery::Undeliverable(format!("unknown outbox topic {:?}", item.topic));
        };
        if let Some(event) = topic.webhook_event() {
            return webhook::deliver(&self.http, &self.config.webhooks, item, event).await;
        }
        match topic {
            Topic::Receipt(_) => {
                mail::deliver(&self.mailer, &self.config.mail.from, self.store.as_ref(), item).await
            }
            Topic::Payout => match &self.config.stripe {
                Some(stripe) => {
                    stripe::deliver(&self.http, stripe, self.store.as_ref(), item).await
                }
                None => Delivery::Failed {
                    error: "no Stripe key configured: this payout must be paid manually".into(),
                    payload: None,
                },
            },
            Topic::PayoutReversal => {
                stripe::reverse(&self.http, self.config.stripe.as_ref(), self.store.as_ref(), item)
                    .await
            }
            _ => Delivery::Undeliverable(format!("no delivery for outbox topic {:?}", item.topic)),
        }
    }

    /// `base × 2^(attempts-1)`, capped, ±20 % jitter so that retries of a
    /// burst spread out.
    fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(0);
        let raw = self.config.backoff_base.saturating_mul(2u32.saturating_pow(exponent));
        let capped = raw.min(self.config.backoff_max);
        let jitter = rand::rng().random_range(0.8..1.2);
        capped.mul_f64(jitter)
    }

    /// Loops over [`Worker::try_deliver_batch`] until `shutdown` completes.
    /// A batch in flight is finished, never abandoned; leases still held
    /// at the end are given back.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(owner = %self.owner, "outbox worker and sweeper started");
        let mut last_sweep: Option<tokio::time::Instant> = None;
        let mut last_alerts: Option<tokio::time::Instant> = None;
        loop {
            if last_alerts.is_none_or(|at| at.elapsed() >= ALERT_INTERVAL) {
                last_alerts = Some(tokio::time::Instant::now());
                if let Err(error) = self.try_evaluate_alerts().await {
                    tracing::warn!(%error, "threshold alerts could not be evaluated");
                }
            }
            if last_sweep.is_none_or(|at| at.elapsed() >= self.config.sweep_interval) {
                last_sweep = Some(tokio::time::Instant::now());
                if let Err(error) = self.try_sweep().await {
                    tracing::warn!(%error, "sweep failed");
                }
            }
            let pause = match self.try_deliver_batch().await {
                Ok(Step::Attempted(_)) => Duration::ZERO,
                Ok(Step::EmptyQueue) => self.config.idle_poll.min(self.config.sweep_interval),
                Err(error) => {
                    tracing::warn!(%error, "outbox step failed");
                    self.config.idle_poll * 4
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        match self.store.release_outbox(&self.owner).await {
            Ok(released) => tracing::info!(released, "outbox worker stopped"),
            Err(error) => {
                tracing::warn!(%error, "outbox worker stopped; leases expire by themselves")
            }
        }
    }
}
