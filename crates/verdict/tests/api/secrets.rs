//! Secrets at start-up (issue 24, item 10): `serve` and `worker` refuse,
//! with exit code 2 and one line saying why, a JWT secret under 32 bytes,
//! a video platform secret set but empty, and (`serve` without a terminal)
//! no JWT secret at all; tokens carry the configured issuer and audience.

use std::process::Output;

use reqwest::StatusCode;
use tokio::process::Command;
use verdict_core::Role;
use verdict_http::{JwtKeys, JwtSecret};

use crate::support::{Backend, SECRET, TestApp, serve_process};

/// 31 bytes: one short of the minimum.
const SHORT_SECRET: &str = "0123456789abcdef0123456789abcde";

/// `verdict <args>` in a fresh directory, without a terminal, with `env`
/// (and no JWT secret unless `env` gives one).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_verdict"));
    command
        .args(args)
        .current_dir(dir.path())
        .env_remove("VERDICT_JWT_SECRET")
        .env("VERDICT_DATABASE_URL", format!("sqlite://{}/verdict.db", dir.path().display()))
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("a refusal is immediate")
        .expect("verdict runs")
}

/// Asserts exit code 2 and one line on stderr containing each of `words`.
#[track_caller]
fn refused(output: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line, got: {stderr}");
    for word in words {
        assert!(lines[0].contains(word), "{word:?} missing from {:?}", lines[0]);
    }
}

#[tokio::test]
async fn serve_and_worker_refuse_a_jwt_secret_under_32_bytes() {
    assert_eq!(SHORT_SECRET.len(), 31);
    for command in ["serve", "worker"] {
        let output = run(&[command], &[("VERDICT_JWT_SECRET", SHORT_SECRET)]).await;
        refused(&output, &["VERDICT_JWT_SECRET", "31 bytes", "32"]);
    }
}

#[tokio::test]
async fn serve_and_worker_refuse_a_platform_secret_set_but_empty() {
    let cases: [&[(&str, &str)]; 3] = [
        &[("VERDICT_LIVEKIT_API_KEY", "APIkey"), ("VERDICT_LIVEKIT_API_SECRET", "")],
        &[("VERDICT_DAILY_WEBHOOK_SECRET", "")],
        &[("VERDICT_TWILIO_AUTH_TOKEN", "")],
    ];
    for env in cases {
        let variable = env.last().unwrap().0;
        for command in ["serve", "worker"] {
            let mut env = env.to_vec();
            env.push(("VERDICT_JWT_SECRET", SECRET));
            let output = run(&[command], &env).await;
            refused(&output, &[variable, "empty"]);
        }
    }
}

#[tokio::test]
async fn serve_without_a_secret_or_a_terminal_refuses_and_names_the_variable() {
    let output = run(&["serve", "--bind", "127.0.0.1:0"], &[]).await;
    refused(&output, &["VERDICT_JWT_SECRET", "32 bytes"]);
}

#[tokio::test]
async fn an_empty_jwt_issuer_is_refused() {
    let output =
        run(&["serve"], &[("VERDICT_JWT_SECRET", SECRET), ("VERDICT_JWT_ISSUER", "")]).await;
    refused(&output, &["VERDICT_JWT_ISSUER"]);
}

#[tokio::test]
async fn an_empty_stripe_key_still_starts_with_manual_payouts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_process(
        Command::new(env!("CARGO_BIN_EXE_verdict"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .env("VERDICT_DATABASE_URL", format!("sqlite://{}/verdict.db", dir.path().display()))
            .env("VERDICT_JWT_SECRET", SECRET)
            .env("VERDICT_STRIPE_SECRET_KEY", "")
            .env("VERDICT_WORKER", "off")
            .env("RUST_LOG", "error"),
    )
    .await;
    verdict_worker::install_crypto();
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_must_carry_the_configured_issuer_and_audience() {
    let app = TestApp::spawn(Backend::Sqlite, |config| {
        config.jwt_issuer = Some("https://auth.example.com".into());
        config.jwt_audience = Some("verdict".into());
    })
    .await;
    let secret = JwtSecret::new(SECRET.as_bytes().to_vec());
    let in_an_hour = |keys: &JwtKeys| keys.mint(Role::Admin, "ops", i64::from(u32::MAX));
    let right =
        JwtKeys::new(&secret).with_claims(Some("https://auth.example.com"), Some("verdict"));
    app.get("/v1/admin/review", &in_an_hour(&right)).await.ok();
    let wrong_issuer =
        JwtKeys::new(&secret).with_claims(Some("https://evil.example.com"), Some("verdict"));
    let detail = app.get("/v1/admin/review", &in_an_hour(&wrong_issuer)).await.problem(401);
    assert!(detail.contains("iss"), "{detail}");
    let wrong_audience =
        JwtKeys::new(&secret).with_claims(Some("https://auth.example.com"), Some("other"));
    let detail = app.get("/v1/admin/review", &in_an_hour(&wrong_audience)).await.problem(401);
    assert!(detail.contains("aud"), "{detail}");
    // Neither claim: the token is not for this service.
    app.get("/v1/admin/review", &in_an_hour(&JwtKeys::new(&secret))).await.problem(401);
}
