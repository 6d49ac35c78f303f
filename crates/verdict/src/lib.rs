//! The `verdict` binary as a library: configuration, wiring and the
//! application entry point, so black-box tests start exactly what
//! `verdict serve` starts.

pub mod abuse;
pub mod config;
pub mod demo;
pub mod generate;
pub mod healthcheck;
pub mod simulate;
pub mod verify_text;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use rand::RngCore;
use tokio::net::TcpListener;
use verdict_http::{AppState, JwtKeys, JwtSecret};
use verdict_store::clock::{Clock, ManualClock, SystemClock};
use verdict_worker::Worker;

use crate::config::{ClockKind, Config};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The process's exit code for a command that failed with `error`
/// (README, "Exit codes"): 3 when the database could not be reached, 2
/// for everything else a command refuses (usage, configuration, input).
/// 1 is kept for `verify` finding anomalies.
pub fn exit_code(error: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(verdict_store::StoreError::Unavailable(_)) = error.downcast_ref() {
            return 3;
        }
        cause = error.source();
    }
    2
}

/// A bound, wired server, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// The outbox worker, when this process runs one.
    worker: Option<Worker>,
    /// The demo room's pages (`verdict demo` only).
    demo_rooms: Option<Arc<verdict_http::demo_room::DemoRooms>>,
}

impl Application {
    /// Opens and migrates the database, binds the listener (port 0 picks a
    /// free port) and wires the routes.
    pub async fn build(config: &Config, secret: &JwtSecret) -> Result<Application, BoxError> {
        let settings = config.settings()?;
        let presence = Arc::new(config.presence_hooks()?);
        let dashboard_frame_ancestors = config.frame_ancestors()?;
        let store = verdict_store::open(&config.database_url).await?;
        let clock: Arc<dyn Clock> = match config.clock {
            ClockKind::System => Arc::new(SystemClock),
            ClockKind::Manual => Arc::new(ManualClock::starting_at(SystemClock.now())),
        };
        let listener = TcpListener::bind(&config.bind)
            .await
            .map_err(|error| cannot_listen(Listen::Api, &config.bind, &error))?;
        let state = AppState {
            store,
            clock,
            settings,
            jwt: Arc::new(jwt_keys(config, secret)),
            presence,
            dashboard_refresh_seconds: config.dashboard_refresh_seconds,
            rate_limit: config.rate_limit()?,
            presence_sources: config.presence_sources()?,
            cors: config.cors()?,
            dashboard_frame_ancestors,
        };
        let worker = if config.worker {
            let worker = Worker::new(
                state.store.clone(),
                state.clock.clone(),
                state.settings,
                config.worker_config()?,
            )?;
            Some(worker)
        } else {
            None
        };
        Ok(Application { listener, state, worker, demo_rooms: None })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves the demo room's pages too (`verdict demo`).
    pub fn with_demo_rooms(mut self, rooms: Arc<verdict_http::demo_room::DemoRooms>) -> Self {
        self.demo_rooms = Some(rooms);
        self
    }

    /// Serves (and runs the worker) until `shutdown` completes, then
    /// finishes in-flight requests and deliveries.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let worker = self.worker.map(|worker| {
            let mut stopped = stopped.clone();
            tokio::spawn(worker.run_until_stopped(async move {
                let _ = stopped.changed().await;
            }))
        });
        let router = verdict_http::router_with_demo(self.state, self.demo_rooms);
        let served = axum::serve(self.listener, router).with_graceful_shutdown(shutdown).await;
        let _ = stop.send(true);
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        served?;
        Ok(())
    }
}

/// Which listener could not bind, and how its address is chosen.
#[derive(Clone, Copy)]
enum Listen {
    /// The API (`serve`, `demo`): `bind`.
    Api,
    /// `verdict worker`'s `/metrics` and `/healthz`: `worker_bind`.
    Worker,
}

/// Why the listener could not bind, and what to do about a taken port.
fn cannot_listen(listen: Listen, bind: &str, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::AddrInUse {
        return format!("cannot listen on {bind}: {error}");
    }
    let (running, choose) = match listen {
        Listen::Api => {
            ("another verdict, or the demo", "--bind 127.0.0.1:8090 or `bind` in verdict.toml")
        }
        Listen::Worker => (
            "another verdict worker, or a verdict serving on it",
            "VERDICT_WORKER_BIND=127.0.0.1:8091 or `worker_bind` in verdict.toml",
        ),
    };
    format!(
        "cannot listen on {bind}: the address is in use ({running} already running?); \
         choose another with {choose}"
    )
}

/// Runs only the outbox worker and sweeper until `shutdown` (`verdict
/// worker`), serving `/metrics` and `/healthz` on `worker_bind` (port 0
/// picks a free port; the address is printed).
pub async fn run_worker(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    config.check_secrets()?;
    let store = verdict_store::open(&config.database_url).await?;
    let clock: Arc<dyn Clock> = match config.clock {
        ClockKind::System => Arc::new(SystemClock),
        ClockKind::Manual => return Err("the worker alone cannot run on a manual clock".into()),
    };
    let settings = config.settings()?;
    let listener = TcpListener::bind(&config.worker_bind)
        .await
        .map_err(|error| cannot_listen(Listen::Worker, &config.worker_bind, &error))?;
    let address = listener.local_addr()?;
    let endpoints = verdict_http::metrics::worker_router(store.clone(), clock.clone());
    let worker = Worker::new(store, clock, settings, config.worker_config()?)?;
    println!("verdict worker {} started", worker.owner());
    println!("verdict worker listening on http://{address}");
    tracing::info!(%address, "worker endpoints (/metrics, /healthz) listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = {
        let mut stopped = stopped.clone();
        tokio::spawn(
            axum::serve(listener, endpoints)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .into_future(),
        )
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut stopped_worker = stopped;
    worker
        .run_until_stopped(async move {
            let _ = stopped_worker.wait_for(|stop| *stop).await;
        })
        .await;
    serving.await??;
    Ok(())
}

/// `verdict verify`: prints the report (a table, or JSON) and returns
/// whether it is clean. A progress bar shows on a terminal.
pub async fn verify(config: &Config, json: bool) -> Result<bool, BoxError> {
    let store = verdict_store::open(&config.database_url).await?;
    let settings = config.settings()?;
    let bar = spinner("verifying {pos} sessions ({per_sec}) {elapsed}");
    let now = SystemClock.now();
    let report =
        verdict_store::monitor::verify(&store, &settings, now, |seen| bar.set_position(seen))
            .await?;
    bar.finish_and_clear();
    if json {
        let sections: Vec<serde_json::Value> = report
            .sections
            .iter()
            .map(|section| {
                serde_json::json!({
                    "name": section.name, "ok": section.ok, "count": section.count,
                    "severity": section.severity, "sample": section.sample, "detail": section.detail,
                })
            })
            .collect();
        let document =
            serde_json::json!({"ok": report.ok, "sessions": report.sessions, "sections": sections});
        print_document(&document)?;
    } else {
        use std::fmt::Write;
        let mut text = verify_text::table(&report)?;
        let by_kind = report
            .sections
            .iter()
            .find(|section| section.name == verdict_store::insight::VERIFY_BY_KIND)
            .and_then(|section| section.detail.as_ref());
        if let Some(detail) = by_kind {
            let kinds: Vec<String> = verdict_core::Kind::ALL
                .iter()
                .map(|kind| {
                    let counts = &detail[kind.as_str()];
                    format!(
                        "{kind} {} ({} with findings)",
                        counts["sessions"], counts["with_findings"]
                    )
                })
                .collect();
            writeln!(text, "per kind: {}", kinds.join(", "))?;
        }
        writeln!(
            text,
            "{} sessions verified: {}",
            report.sessions,
            if report.ok { "clean" } else { "ANOMALIES FOUND" }
        )?;
        print_text(&text)?;
    }
    Ok(report.ok)
}

/// How `verdict import` stores the lines.
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    /// Lines a transaction.
    pub batch_lines: usize,
    /// All in one transaction.
    pub bulk: bool,
    /// Keep unknown fields in `metadata` (`--keep-unknown-fields`).
    pub keep_unknown_fields: bool,
}

/// `verdict import FILE` (or `-` for stdin): streams the lines through the
/// importer, `batch_lines` a transaction (or all in one, `bulk`), and
/// prints the summary as JSON; a progress bar on a terminal.
pub async fn import(
    config: &Config,
    file: &std::path::Path,
    options: ImportOptions,
) -> Result<(), BoxError> {
    use std::io::BufRead;
    let ImportOptions { batch_lines, bulk, keep_unknown_fields } = options;
    let store = verdict_store::open(&config.database_url).await?;
    let reader: Box<dyn BufRead + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(|error| format!("{}: {error}", file.display()))?,
        ))
    };
    let bar = spinner("importing line {pos} ({per_sec}) {elapsed}");
    // Lines are read and parsed on a thread of their own, a chunk at a
    // time, while this one stores the previous chunks.
    // Nearly every line is `Parsed`: a box each would be an allocation a
    // line for nothing (they travel in chunks of 1,000, by `Vec`).
    #[allow(clippy::large_enum_variant)]
    enum Read {
        Parsed(Result<verdict_store::ImportSession, String>),
        Unreadable(&'static str),
    }
    let (chunks, mut parsed) = tokio::sync::mpsc::channel::<std::io::Result<Vec<(u64, Read)>>>(8);
    let reading = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(1_000);
        for (index, line) in reader.split(b'\n').enumerate() {
            let number = index as u64 + 1;
            let bytes = match line {
                Ok(bytes) => bytes,
                Err(error) => {
                    let _ = chunks.blocking_send(Err(error));
                    return;
                }
            };
            let read = if bytes.len() > verdict_http::import::LINE_BYTES_MAX {
                Some(Read::Unreadable("line longer than 1 MiB"))
            } else {
                match std::str::from_utf8(&bytes) {
                    Ok(text) => {
                        verdict_http::import::parse(text, keep_unknown_fields).map(Read::Parsed)
                    }
                    Err(_) => Some(Read::Unreadable("not UTF-8")),
                }
            };
            if let Some(read) = read {
                chunk.push((number, read));
            }
            if chunk.len() == 1_000 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(1_000));
                if chunks.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
        let _ = chunks.blocking_send(Ok(chunk));
    });
    let mut importer = if bulk {
        verdict_http::import::Importer::bulk(store.as_ref(), SystemClock.now(), batch_lines).await?
    } else {
        verdict_http::import::Importer::with_batch(store.as_ref(), SystemClock.now(), batch_lines)
    };
    let mut lines = 0;
    while let Some(chunk) = parsed.recv().await {
        for (number, read) in chunk? {
            lines = number;
            match read {
                Read::Parsed(result) => importer.parsed(number, result).await?,
                Read::Unreadable(why) => importer.unreadable(number, why),
            }
            if number.is_multiple_of(1000) {
                bar.set_position(number);
            }
        }
    }
    let _ = reading.join();
    if bulk {
        // The last batches are stored, SQLite's deferred indexes built and
        // the transaction committed now: seconds for a large file, with no
        // more lines to count.
        bar.set_position(lines);
        bar.set_style(spinner_style(
            "{pos} lines read; finishing the load (last batches, indexes, commit) {elapsed}",
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    let summary = importer.finish().await?;
    bar.finish_and_clear();
    let rejected: Vec<serde_json::Value> = summary
        .rejected
        .iter()
        .map(|(line, error)| serde_json::json!({"line": line, "error": error}))
        .collect();
    let document = serde_json::json!({
        "imported": summary.imported, "skipped": summary.skipped,
        "rejected": rejected, "rejected_total": summary.rejected_total,
    });
    print_document(&document)
}

/// Writes a command's output. A reader that went away (`verdict verify |
/// head`) ends it quietly: `println!` would panic on the broken pipe.
pub fn print_text(text: &str) -> Result<(), BoxError> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// A JSON document as a command's output (see [`print_text`]).
pub fn print_document(document: &serde_json::Value) -> Result<(), BoxError> {
    let mut text = serde_json::to_string_pretty(document)?;
    text.push('\n');
    print_text(&text)
}

/// `verdict repair`: the planned (or applied) corrections, as a table or
/// JSON.
pub async fn repair(
    config: &Config,
    options: verdict_store::monitor::RepairOptions,
    since: Option<&str>,
    until: Option<&str>,
    json: bool,
) -> Result<(), BoxError> {
    let store = verdict_store::open(&config.database_url).await?;
    let settings = config.settings()?;
    let bound = |flag: &str,
                 text: Option<&str>,
                 default: i64|
     -> Result<verdict_core::UnixMillis, BoxError> {
        match text {
            None => Ok(verdict_core::UnixMillis(default)),
            Some(text) => verdict_http::wire::parse_instant(text)
                .ok_or_else(|| format!("--{flag} must be an RFC 3339 timestamp").into()),
        }
    };
    let (since, until) = (bound("since", since, 0)?, bound("until", until, i64::MAX)?);
    let now = SystemClock.now();
    let apply = options.apply;
    let corrections =
        verdict_store::monitor::repair_with(&store, &settings, now, since, until, options).await?;
    let change = |c: &verdict_store::Correction| {
        serde_json::json!({
            "session_id": c.session_id,
            "from": {"status": c.from.0.as_str(), "reason": c.from.1.map(|r| r.as_str())},
            "to": {"status": c.to.0.as_str(), "reason": c.to.1.as_str()},
            "money_effect_cents": c.money_effect,
        })
    };
    let (held, corrections): (Vec<_>, Vec<_>) =
        corrections.into_iter().partition(|c| c.needs_review);
    if json {
        let changes: Vec<serde_json::Value> = corrections.iter().map(change).collect();
        let needs_review: Vec<serde_json::Value> = held.iter().map(change).collect();
        print_document(&serde_json::json!({
            "dry_run": !apply,
            "changes": changes,
            "needs_review": needs_review,
        }))?;
    } else {
        use std::fmt::Write;
        let mut text = String::new();
        for (c, note) in
            corrections.iter().map(|c| (c, "")).chain(held.iter().map(|c| {
                (c, "  needs review (only missing join events; --include-missing-evidence)")
            }))
        {
            writeln!(
                text,
                "{}  {}/{} -> {}/{}  {:+} cents{note}",
                c.session_id,
                c.from.0,
                c.from.1.map_or("-", |reason| reason.as_str()),
                c.to.0,
                c.to.1,
                c.money_effect
            )?;
        }
        let verb =
            if apply { "corrected" } else { "would be corrected (dry run; --apply to correct)" };
        writeln!(text, "{} sessions {verb}", corrections.len())?;
        print_text(&text)?;
    }
    Ok(())
}

/// The configured JWT secret, or a random one for this process.
pub fn secret_or_random(config: &Config) -> (JwtSecret, bool) {
    match &config.jwt_secret {
        Some(secret) => (JwtSecret::new(secret.expose().as_bytes().to_vec()), false),
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            (JwtSecret::new(bytes.to_vec()), true)
        }
    }
}

/// The keys signing and checking tokens with `secret`, and the configured
/// `jwt_issuer` and `jwt_audience`.
pub fn jwt_keys(config: &Config, secret: &JwtSecret) -> JwtKeys {
    JwtKeys::new(secret).with_claims(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref())
}

/// A spinner with a count on a terminal (`what` follows the spinner in an
/// indicatif template), hidden otherwise.
pub fn spinner(what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(spinner_style(what));
    bar
}

fn spinner_style(what: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(&format!("{{spinner}} {what}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}
