//! `verdict demo` beside everything else: a database of its own, and a
//! taken port said as such, with the way out.

use crate::support::{SECRET, serve_process};

fn demo_command(dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
    command
        .arg("demo")
        .current_dir(dir)
        .env_remove("VERDICT_DATABASE_URL")
        .env_remove("VERDICT_BIND")
        .env("VERDICT_CONFIG", dir.join("verdict.toml"))
        .env("VERDICT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    command
}

/// Unless told otherwise the demo keeps `verdict-data/demo.db`, never the
/// `verdict.db` that `verdict serve` opens by default, and says how to
/// reset it.
#[tokio::test]
async fn the_demo_keeps_a_database_of_its_own() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut command = demo_command(dir.path());
    command.args(["--bind", "127.0.0.1:0"]);
    let (mut child, base) = serve_process(&mut command).await;
    let rooms = reqwest::get(format!("{base}/demo")).await.unwrap();
    assert_eq!(rooms.status(), 200);
    child.kill().await.unwrap();
    assert!(dir.path().join("verdict-data/demo.db").exists());
    assert!(!dir.path().join("verdict-data/verdict.db").exists(), "serve's database untouched");

    // Chosen explicitly, the database is the one chosen.
    let chosen = format!("sqlite://{}/mine.db", dir.path().display());
    let mut command = demo_command(dir.path());
    command.args(["--bind", "127.0.0.1:0", "--database-url", &chosen]);
    let (mut child, _) = serve_process(&mut command).await;
    child.kill().await.unwrap();
    assert!(dir.path().join("mine.db").exists());
}

#[tokio::test]
async fn a_taken_port_is_named_with_the_way_to_choose_another() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = demo_command(dir.path()).args(["--bind", &address]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "a configuration error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {address}")), "{stderr}");
    assert!(stderr.contains("in use") && stderr.contains("--bind"), "{stderr}");
}

/// The README's walk-through, as written (only its port moved to a free
/// one, and `cargo build` to the binary under test), run twice in a row
/// in the same folder as a running demo: every answer as the README
/// shows it, and the demo's sessions untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_runs_beside_the_demo_twice_in_a_row() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("A walk-through beside the demo").expect("the walk-through");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let script = &block[..block.find("```").unwrap()];
    assert!(
        script.contains("8081")
            && script.contains("cargo build -q && verdict=target/debug/verdict")
    );

    let dir = tempfile::tempdir().unwrap();
    let mut demo = demo_command(dir.path());
    demo.args(["--bind", "127.0.0.1:0"]);
    let (mut demo, _) = serve_process(&mut demo).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = script
        .replace(
            "cargo build -q && verdict=target/debug/verdict",
            &format!("verdict={}", env!("CARGO_BIN_EXE_verdict")),
        )
        .replace("8081", &port.to_string());
    for run in 1..=2 {
        let output = tokio::process::Command::new("bash")
            .args(["-euc", &script])
            .current_dir(dir.path())
            .env_remove("VERDICT_CONFIG")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run {run}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answers: Vec<serde_json::Value> = stdout
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(answers.len(), 6, "run {run}: {stdout}");
        assert_eq!(answers[0]["status"], "waiting", "run {run}: {stdout}");
        assert_eq!(answers[2]["status"], "live", "run {run}: {stdout}");
        assert_eq!(answers[4]["outcome"]["status"], "completed", "run {run}: {stdout}");
        assert_eq!(answers[4]["outcome"]["billable_seconds"], 300, "run {run}: {stdout}");
        let ended = &answers[5]["items"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(ended["data"]["claimed"]["status"], "cancelled", "run {run}: {stdout}");
    }
    // Each kept apart: the walk-through's two sessions in its own
    // database, none of them in the demo's, none of the demo's in its.
    let ids = |file: &'static str| {
        let path = dir.path().join("verdict-data").join(file);
        async move {
            let url = format!("sqlite://{}?mode=ro", path.display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let ids: Vec<(String,)> =
                sqlx::query_as("SELECT id FROM sessions").fetch_all(&pool).await.unwrap();
            ids.into_iter().map(|(id,)| id).collect::<Vec<_>>()
        }
    };
    let walked = ids("walkthrough.db").await;
    assert_eq!(walked.len(), 2, "{walked:?}");
    assert!(walked.iter().all(|id| id.starts_with("walk-")), "{walked:?}");
    let demoed = ids("demo.db").await;
    assert!(!demoed.is_empty() && demoed.iter().all(|id| !id.starts_with("walk-")));
    demo.kill().await.unwrap();
}
