//! The command line as an operator meets it: configuration refused with
//! the key named, the effective configuration printed, completions, and
//! exit codes (README, "Exit codes").

use std::path::Path;
use std::process::{Command, Output};

/// Runs the real binary in `dir` with only the given environment (the
/// test run's own `VERDICT_*` variables must not leak in).
fn verdict(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_misspelled_key_stops_serve_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("verdict.toml"), "bind = \"127.0.0.1:0\"\nworkr = false\n")
        .unwrap();
    for command in [&["serve"][..], &["worker"], &["verify"], &["config"]] {
        let output = verdict(dir.path(), command, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(stderr.contains("unknown key `workr`"), "{command:?}: {stderr}");
        assert!(stderr.contains("did you mean `worker`"), "{command:?}: {stderr}");
    }
    // A container's health check knows 0 and 1 only: the same mistake is 1.
    let output = verdict(dir.path(), &["healthcheck"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("unknown key `workr`"));
    // Nothing was started or created: no database beside the file.
    assert!(!dir.path().join("verdict-data").exists());
}

#[test]
fn config_prints_every_key_once_with_its_origin_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("verdict.toml"),
        "rate_limit_burst = 80\nstripe_secret_key = \"sk_test_file_secret\"\n",
    )
    .unwrap();
    let env = [
        ("VERDICT_JWT_SECRET", "an-environment-secret-of-32-bytes!!"),
        ("VERDICT_DATABASE_URL", "postgres://verdict:db-password@db.internal/verdict"),
        ("VERDICT_UNHEARD_OF", "1"),
    ];
    let output = verdict(dir.path(), &["config", "--database-url", "sqlite://flag.db"], &env);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for secret in ["sk_test_file_secret", "an-environment-secret", "db-password"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed");
    }
    let line = |key: &str| {
        let found: Vec<&str> = stdout
            .lines()
            .filter(|line| {
                line.trim_start_matches("# ").split_once(" = ").is_some_and(|(k, _)| k == key)
            })
            .collect();
        assert_eq!(found.len(), 1, "{key}: {found:?} in\n{stdout}");
        found[0].to_owned()
    };
    assert_eq!(line("rate_limit_burst"), "rate_limit_burst = 80  # file verdict.toml");
    assert_eq!(line("stripe_secret_key"), "stripe_secret_key = \"***\"  # file verdict.toml");
    assert_eq!(line("jwt_secret"), "jwt_secret = \"***\"  # environment VERDICT_JWT_SECRET");
    assert_eq!(line("database_url"), "database_url = \"sqlite://flag.db\"  # command line");
    assert_eq!(line("bind"), "bind = \"127.0.0.1:8080\"  # default");
    assert_eq!(line("smtp_url"), "# smtp_url = (unset)  # default");
    assert!(stderr.contains("VERDICT_UNHEARD_OF"), "an unknown variable is warned about: {stderr}");

    let output = verdict(dir.path(), &["config", "--json"], &env);
    assert_eq!(output.status.code(), Some(0));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        document["config"]["database_url"],
        serde_json::json!({"from": "environment", "variable": "VERDICT_DATABASE_URL",
                           "value": "postgres://verdict:***@db.internal/verdict"})
    );
    assert_eq!(document["unknown_variables"], serde_json::json!(["VERDICT_UNHEARD_OF"]));
}

#[test]
fn completions_name_every_subcommand_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    // Completions need no configuration, not even a valid one.
    std::fs::write(dir.path().join("verdict.toml"), "not a key = [").unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = verdict(dir.path(), &["completions", shell], &[]);
        let script = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{shell}: {}", text(&output.stderr));
        for subcommand in ["serve", "worker", "verify", "repair", "config", "completions"] {
            assert!(script.contains(subcommand), "{shell} completion lacks {subcommand}");
        }
    }
    let output = verdict(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(output.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn an_unreachable_database_exits_3_and_a_wrong_url_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1: nothing listens there, and no test binds it.
    let url = "postgres://verdict@127.0.0.1:1/verdict".to_owned();
    for command in ["migrate", "verify"] {
        let output = verdict(dir.path(), &[command, "--database-url", &url], &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{command}: {stderr}");
        assert!(stderr.contains("database unavailable"), "{command}: {stderr}");
    }
    let output = verdict(dir.path(), &["migrate", "--database-url", "mysql://db/verdict"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let output = verdict(dir.path(), &["verify", "--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn only_the_named_file_is_read_never_one_in_a_parent_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("verdict.toml"), "rate_limit_burst = 77\n").unwrap();
    let below = dir.path().join("below");
    std::fs::create_dir(&below).unwrap();
    let output = verdict(&below, &["config"], &[]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("rate_limit_burst = 40  # default"), "{stdout}");
}
