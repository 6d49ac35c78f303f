//! `verdict`: the command line. Thin: parse, configure, call the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use verdict::config::{ClockKind, Config, Origin, Overrides};
use verdict::{Application, BoxError, secret_or_random};
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};
use verdict_store::clock::Clock;

#[derive(Parser)]
#[command(
    name = "verdict",
    version,
    about = "Server-authoritative session end and settlement",
    after_help = "Exit codes: 0 success; 1 anomalies found (verify); 2 usage, configuration or \
                  input error; 3 database unavailable."
)]
struct Cli {
    /// Configuration file (read if it exists).
    #[arg(long, global = true, env = "VERDICT_CONFIG", default_value = "verdict.toml")]
    config: PathBuf,
    /// Database URL: sqlite://path (embedded) or postgres://user:pass@host/db
    /// [default: sqlite://verdict-data/verdict.db; `demo`: sqlite://verdict-data/demo.db]
    /// [env: VERDICT_DATABASE_URL] [file: database_url]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Log format (on stderr; colours only when stderr is a terminal).
    #[arg(long, global = true, value_enum, env = "VERDICT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Customer,
    Provider,
    Service,
    Admin,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (and, unless `worker = false`, the outbox worker
    /// and the sweeper).
    Serve {
        /// Listen address [default: 127.0.0.1:8080] [env: VERDICT_BIND] [file: bind]
        #[arg(long, value_name = "ADDRESS")]
        bind: Option<String>,
        /// `manual` makes time move only by POST /v1/test-clock/advance
        /// [default: system] [env: VERDICT_CLOCK] [file: clock]
        #[arg(long, value_parser = ["system", "manual"])]
        clock: Option<String>,
    },
    /// The server on the embedded default with a simulated marketplace
    /// and some legacy history: prints the dashboard URL, the demo rooms
    /// (/demo) and an admin token.
    Demo {
        /// Listen address [default: 127.0.0.1:8080] [env: VERDICT_BIND] [file: bind]
        #[arg(long, value_name = "ADDRESS")]
        bind: Option<String>,
    },
    /// Drive a running server over HTTP with marketplace traffic; prints
    /// throughput and latency percentiles per operation.
    Simulate {
        /// The server, e.g. http://127.0.0.1:8080
        #[arg(long)]
        url: String,
        /// Sessions to run through create, joins and end.
        #[arg(long, default_value_t = 1000)]
        sessions: u64,
        /// Sessions in flight at once (honest clients with --abuse).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Scenario weights: together, customer-only, provider-only, nobody.
        #[arg(long, default_value = "together=70,customer-only=15,provider-only=10,nobody=5")]
        mix: verdict::simulate::Mix,
        /// Ends sent again per session after the first (idempotent answers).
        #[arg(long, default_value_t = 0)]
        repeat_ends: u32,
        /// Create and join every session first, then end them all, then
        /// (with --repeat-ends) end them all again: each kind of end is
        /// measured alone.
        #[arg(long)]
        ends_apart: bool,
        /// Report the CPU time of these processes (and their children)
        /// over each pass, in clock ticks: e.g. the server's pid (Linux).
        #[arg(long, value_delimiter = ',')]
        cpu_pids: Vec<u32>,
        /// Instead of sessions: for --duration-seconds, --hostile customers
        /// flood joins, leaves, requests and made-up methods while
        /// --concurrency honest clients run ordinary sessions; prints the
        /// honest latencies, what the hostile callers got and stored, the
        /// server's memory (--rss-pid) and verification (JSON).
        #[arg(long)]
        abuse: bool,
        /// Hostile customers of --abuse (0: the baseline).
        #[arg(long, default_value_t = 8)]
        hostile: usize,
        /// How long --abuse runs.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        duration_seconds: u64,
        /// The server's pid, whose resident memory --abuse samples (Linux).
        #[arg(long)]
        rss_pid: Option<u32>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run only the outbox worker (deliveries), no HTTP.
    Worker,
    /// Verify every session and the books, one row per check (each
    /// explained in docs/verification.md); exit 1 on any anomaly.
    Verify {
        /// The report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import the old system's history: one session per NDJSON line (the
    /// format: docs/import.md); ids already there are skipped.
    Import {
        /// The NDJSON file, or `-` for stdin.
        file: PathBuf,
        /// Accepted lines stored per transaction. Larger is faster for a
        /// bulk load (50,000: x1.3-1.5 on SQLite) but holds the write
        /// lock longer and keeps more lines in memory.
        #[arg(long, default_value_t = verdict_http::import::BATCH as u64,
              value_parser = clap::value_parser!(u64).range(1..=verdict_http::import::BATCH_MAX as u64))]
        batch_lines: u64,
        /// One transaction for the whole file, committed at its end; on
        /// SQLite the indexes written in random order are built once then.
        /// For a first load: the write lock is held throughout (stop the
        /// server first; its writes give up after 30 s).
        #[arg(long)]
        bulk: bool,
        /// Keep a line's fields verdict does not know in the session's
        /// `metadata` (the old system's own columns) instead of rejecting
        /// the line.
        #[arg(long)]
        keep_unknown_fields: bool,
    },
    /// Re-derive every ended session and list (or, with --apply, make)
    /// the corrections.
    Repair {
        /// Make the corrections (default: a dry run that changes nothing).
        #[arg(long)]
        apply: bool,
        /// Only sessions ended at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// Only sessions ended before this RFC 3339 instant.
        #[arg(long)]
        until: Option<String>,
        /// The corrections as JSON.
        #[arg(long)]
        json: bool,
        /// Also apply corrections whose only evidence is missing join
        /// events (listed as needing review otherwise).
        #[arg(long)]
        include_missing_evidence: bool,
    },
    /// Write a seeded, realistic history as NDJSON to stdout (for
    /// benchmarks and demos): mostly right, ~10 % recorded wrong.
    Generate {
        /// Sessions to write.
        #[arg(long, default_value_t = 1000)]
        sessions: u64,
        /// Spread the sessions' ends over this many days before now.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// The random seed: the same seed writes the same history.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Mint a JWT for development (needs VERDICT_JWT_SECRET).
    Token {
        /// The caller's role: what the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The caller's id (`sub`): a customer's or provider's own id, for
        /// the parties.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
    },
    /// Print the effective configuration: every key, its value (secrets
    /// as "***", passwords in URLs hidden) and where it came from.
    Config {
        /// As JSON instead of TOML-like lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    /// `verdict completions bash > /etc/bash_completion.d/verdict`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Ask a running server's /healthz (liveness, never /readyz): exit 0
    /// when it answers 200, 1 otherwise. For a container's HEALTHCHECK.
    Healthcheck {
        /// The URL to ask (default: http://<bind>/healthz, an unspecified
        /// bind such as 0.0.0.0 asked at loopback).
        #[arg(long)]
        url: Option<String>,
        /// Ask `verdict worker`, on worker_bind, instead of `verdict serve`.
        #[arg(long, conflicts_with = "url")]
        worker: bool,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = verdict::healthcheck::TIMEOUT_SECONDS_DEFAULT,
              value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout_seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    verdict_worker::install_crypto();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("verdict: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A container's health check knows 0 and 1 only (Docker reserves 2):
    // whatever stops `healthcheck`, a broken configuration included, is 1.
    let healthcheck = matches!(cli.command, Command::Healthcheck { .. });
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("verdict: {error}");
            if healthcheck {
                ExitCode::FAILURE
            } else {
                ExitCode::from(verdict::exit_code(error.as_ref()))
            }
        }
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    let refused = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    std::io::stderr().is_terminal() && !refused
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    match format {
        LogFormat::Text => builder.init(),
        // Each line one object; the request's span (its id, route, role)
        // flattened into it by `with_current_span`.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let mut overrides =
        Overrides { database_url: cli.database_url.clone(), ..Overrides::default() };
    if let Command::Demo { bind } = &cli.command {
        overrides.bind = bind.clone();
    }
    if let Command::Serve { bind, clock } = &cli.command {
        overrides.bind = bind.clone();
        overrides.clock = clock.as_deref().map(|text| match text {
            "manual" => ClockKind::Manual,
            _ => ClockKind::System,
        });
    }
    if let Command::Completions { shell } = cli.command {
        // Needs no configuration: works beside a broken verdict.toml.
        let mut out = std::io::stdout().lock();
        clap_complete::generate(shell, &mut Cli::command(), "verdict", &mut out);
        return Ok(());
    }
    let explained = Config::explain(&cli.config, &overrides)?;
    for variable in &explained.unknown_variables {
        tracing::warn!(%variable, "not a configuration key: ignored");
    }
    let config = explained.config.clone();
    match cli.command {
        Command::Config { json } => {
            if json {
                verdict::print_document(&verdict::config::render_json(&explained))
            } else {
                verdict::print_text(&verdict::config::render(&explained))
            }
        }
        Command::Completions { .. } => Ok(()),
        Command::Serve { .. } => serve(config).await,
        Command::Worker => verdict::run_worker(&config, shutdown_signal()).await,
        Command::Demo { .. } => {
            // The demo keeps a database of its own unless one is chosen,
            // so that it never mixes with what `verdict serve` keeps.
            let mut config = config;
            if explained.origins.get("database_url") == Some(&Origin::Default) {
                config.database_url = verdict::demo::DATABASE_URL.to_owned();
            }
            verdict::demo::run(&config, shutdown_signal()).await
        }
        Command::Simulate {
            url,
            sessions,
            concurrency,
            mix,
            repeat_ends,
            ends_apart,
            cpu_pids,
            abuse,
            hostile,
            duration_seconds,
            rss_pid,
            json,
        } => {
            let keys = configured_keys(
                &config,
                "to the server's secret: simulate mints the parties' tokens",
            )?;
            if abuse {
                let options = verdict::abuse::AbuseOptions {
                    url,
                    duration: std::time::Duration::from_secs(duration_seconds),
                    honest: concurrency,
                    hostile,
                    rss_pid,
                    keys: std::sync::Arc::new(keys),
                };
                return verdict::print_document(&verdict::abuse::run(options).await?);
            }
            let options = verdict::simulate::Options {
                url,
                sessions,
                concurrency,
                mix,
                repeat_ends,
                ends_apart,
                cpu_pids,
                keys: std::sync::Arc::new(keys),
            };
            simulate(options, json).await
        }
        Command::Generate { sessions, days, seed } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let now = verdict_store::clock::SystemClock.now();
            verdict::generate::history(&mut out, sessions, days, seed, now)?;
            Ok(())
        }
        Command::Import { file, batch_lines, bulk, keep_unknown_fields } => {
            let options = verdict::ImportOptions {
                batch_lines: batch_lines as usize,
                bulk,
                keep_unknown_fields,
            };
            verdict::import(&config, &file, options).await
        }
        Command::Repair { apply, since, until, json, include_missing_evidence } => {
            let options = verdict_store::monitor::RepairOptions { apply, include_missing_evidence };
            verdict::repair(&config, options, since.as_deref(), until.as_deref(), json).await
        }
        Command::Verify { json } => {
            if verdict::verify(&config, json).await? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
        Command::Migrate => {
            let store = verdict_store::open(&config.database_url).await?;
            store.ping().await?;
            verdict::print_text(&format!(
                "{}: schema up to date\n",
                verdict_store::redact_url(&config.database_url)
            ))
        }
        Command::Token { role, sub, ttl_seconds } => {
            let keys = configured_keys(&config, "to mint tokens")?;
            if !verdict_core::is_valid_id(&sub) {
                return Err("--sub must be 1 to 128 characters from [A-Za-z0-9_.:-]".into());
            }
            verdict::print_text(&format!(
                "{}\n",
                keys.mint(role_of(role), &sub, unix_now() + ttl_seconds.max(1))
            ))
        }
        Command::Healthcheck { url, worker, timeout_seconds } => {
            let url = url.unwrap_or_else(|| {
                verdict::healthcheck::healthz_url(if worker {
                    &config.worker_bind
                } else {
                    &config.bind
                })
            });
            let timeout = std::time::Duration::from_secs(timeout_seconds);
            match verdict::healthcheck::check(&url, timeout).await {
                Ok(line) => verdict::print_text(&format!("healthy: {line}\n")),
                Err(unhealthy) => {
                    eprintln!("unhealthy: {unhealthy}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// The signing keys of the configured secret; `purpose` ends the error
/// when none is configured.
fn configured_keys(config: &Config, purpose: &str) -> Result<JwtKeys, BoxError> {
    let secret = config.jwt_secret.as_ref().ok_or_else(|| {
        format!("set VERDICT_JWT_SECRET (or jwt_secret in verdict.toml) {purpose}")
    })?;
    Ok(verdict::jwt_keys(config, &JwtSecret::new(secret.expose().as_bytes().to_vec())))
}

async fn simulate(options: verdict::simulate::Options, json: bool) -> Result<(), BoxError> {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(options.sessions)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let shown = bar.clone();
    let report = verdict::simulate::run(options, move |done| shown.set_position(done)).await?;
    bar.finish_and_clear();
    let document = &report.document;
    if json {
        return verdict::print_document(document);
    }
    use std::fmt::Write;
    let mut text = String::new();
    writeln!(
        text,
        "{} sessions in {} s against {}, {} at once",
        document["sessions"], document["elapsed_seconds"], document["url"], document["concurrency"]
    )?;
    writeln!(text, "outcomes: {}", document["outcomes"])?;
    writeln!(
        text,
        "{:<10} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation", "count", "errors", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    )?;
    if let Some(operations) = document["operations"].as_object() {
        for (name, stats) in operations {
            writeln!(
                text,
                "{:<10} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                stats["count"],
                stats["errors"],
                stats["per_second"],
                stats["p50_ms"],
                stats["p90_ms"],
                stats["p99_ms"],
                stats["max_ms"]
            )?;
        }
    }
    verdict::print_text(&text)
}

fn role_of(role: RoleArg) -> Role {
    match role {
        RoleArg::Customer => Role::Customer,
        RoleArg::Provider => Role::Provider,
        RoleArg::Service => Role::Service,
        RoleArg::Admin => Role::Admin,
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn serve(config: Config) -> Result<(), BoxError> {
    use std::io::IsTerminal;
    config.check_secrets()?;
    // A random secret (and a printed admin token) is for a person trying
    // verdict at a terminal; a service started by a supervisor would
    // invalidate every token at each restart.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if config.jwt_secret.is_none() && !interactive {
        return Err(format!(
            "configuration: no JWT secret: set VERDICT_JWT_SECRET (or jwt_secret in verdict.toml) \
             to {} bytes or more, e.g. `openssl rand -base64 32`",
            verdict::config::JWT_SECRET_BYTES_MIN
        )
        .into());
    }
    let (secret, random) = secret_or_random(&config);
    let app = Application::build(&config, &secret).await?;
    tracing::info!(
        address = %app.local_addr(),
        database = %verdict_store::redact_url(&config.database_url),
        clock = %config.clock.as_str(),
        "verdict listening"
    );
    if random {
        // Printed, not logged: a token is for the person at the terminal.
        let token =
            verdict::jwt_keys(&config, &secret).mint(Role::Admin, "admin", unix_now() + 24 * 3600);
        println!("No VERDICT_JWT_SECRET set: this run signs tokens with a random secret.");
        println!("Admin token (24 h): {token}");
    }
    println!("verdict listening on http://{}", app.local_addr());
    app.run_until_stopped(shutdown_signal()).await
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
