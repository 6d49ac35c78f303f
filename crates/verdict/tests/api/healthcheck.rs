//! `verdict healthcheck`, the real binary, as a container's HEALTHCHECK
//! runs it: 0 when `/healthz` answers 200, 1 otherwise, one line printed.

use std::process::Output;

use crate::support::{Backend, TestApp};

/// `verdict healthcheck ARGS…` with `env`, in an empty directory (no
/// verdict.toml), nothing of the test's own `VERDICT_*` environment
/// leaking in but what `env` sets.
async fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Output {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
    command.arg("healthcheck").args(args).current_dir(directory.path()).env("RUST_LOG", "error");
    for (name, _) in std::env::vars() {
        if name.starts_with("VERDICT_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().await.expect("verdict healthcheck runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An address on loopback nothing listens on: port 1 (tcpmux), which no
/// test binds (they take ports from the ephemeral range by binding `:0`),
/// so no server started beside this test can take it meanwhile.
fn unused_address() -> String {
    "127.0.0.1:1".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_against_a_running_server_at_its_configured_bind() {
    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let output = healthcheck(&[], &[("VERDICT_BIND", &address)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    assert!(stdout.contains(&format!("http://{address}/healthz")), "{stdout}");
    assert!(stdout.contains("200"), "{stdout}");

    // The same server asked by URL, and as a worker would be (on
    // worker_bind), answers the same.
    let url = format!("{}/healthz", app.base);
    let output = healthcheck(&["--url", &url], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = healthcheck(&["--worker"], &[("VERDICT_WORKER_BIND", &address)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_when_nothing_listens() {
    let address = unused_address();
    let output = healthcheck(&[], &[("VERDICT_BIND", &address)]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("unhealthy: "), "{stderr}");
    assert!(stderr.contains(&format!("http://{address}/healthz")), "{stderr}");

    // The worker's address is worker_bind, not bind.
    let output = healthcheck(&["--worker"], &[("VERDICT_WORKER_BIND", &address)]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_on_an_answer_other_than_200() {
    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    let url = format!("{}/no-such-page", app.base);
    let output = healthcheck(&["--url", &url], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("404"), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_when_the_server_does_not_answer_in_time() {
    // Accepts connections (the kernel's backlog) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/healthz", listener.local_addr().expect("address"));
    let output = healthcheck(&["--url", &url, "--timeout-seconds", "1"], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("did not answer within 1 s"), "{}", text(&output));
    drop(listener);
}
