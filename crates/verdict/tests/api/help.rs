//! Help that stands alone: every subcommand's `--help` describes each of
//! its arguments and cites only what ships with verdict.

fn help(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(args)
        .env_remove("VERDICT_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The subcommands `verdict --help` lists.
fn subcommands() -> Vec<String> {
    let top = help(&["--help"]);
    let listed = top.split("Commands:").nth(1).unwrap().split("\n\n").next().unwrap();
    listed
        .lines()
        // A name is indented two; a wrapped description, deeper.
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "help")
        .collect()
}

/// The arguments of a help text that have no description: none after two
/// spaces on their line, nor on a line indented deeper just below (clap's
/// long layout).
fn undescribed(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut missing = Vec::new();
    let mut section = "";
    for (at, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        if section != "Options:" && section != "Arguments:" {
            continue;
        }
        let entry = line.trim_start();
        let is_argument = indent(line) <= 6 && ["-", "<", "["].iter().any(|s| entry.starts_with(s));
        let below = lines.get(at + 1).filter(|next| !next.trim().is_empty());
        let described =
            entry.contains("  ") || below.is_some_and(|next| indent(next) > indent(line) + 2);
        if is_argument && !described {
            missing.push(entry.to_owned());
        }
    }
    missing
}

#[test]
fn every_subcommand_describes_every_argument_and_cites_no_outside_document() {
    let commands = subcommands();
    assert!(commands.len() >= 13 && commands.contains(&"import".to_owned()), "{commands:?}");
    for command in &commands {
        let text = help(&[command, "--help"]);
        assert!(!text.contains("SPEC"), "verdict {command} --help cites SPEC:\n{text}");
        assert_eq!(undescribed(&text), Vec::<String>::new(), "verdict {command} --help:\n{text}");
    }
    assert!(!help(&["--help"]).contains("SPEC"));
    // Defaults that the file and the environment may override are said in
    // words, with their variable: not clap defaults, which would win.
    let serve = help(&["serve", "--help"]);
    for said in ["[default: 127.0.0.1:8080]", "[env: VERDICT_BIND]", "[env: VERDICT_DATABASE_URL]"]
    {
        assert!(serve.contains(said), "{said} in\n{serve}");
    }
}

#[test]
fn an_argument_without_a_description_is_found() {
    let text = "Usage: x\n\nArguments:\n  <FILE>\n\nOptions:\n      --sessions <SESSIONS>  \
                [default: 1000]\n      --seed <SEED>\n  -h, --help  Print help\n";
    assert_eq!(undescribed(text), ["<FILE>", "--seed <SEED>"]);
    let long = "Options:\n      --url <URL>\n          The server\n      --json\n  -h, --help\n          Print help\n";
    assert_eq!(undescribed(long), ["--json"]);
}

/// The doc comments that become `/openapi.json` cite the repository's own
/// pages too.
#[tokio::test]
async fn the_openapi_document_cites_no_outside_document() {
    let app = crate::support::TestApp::spawn(crate::support::Backend::Sqlite, |_| {}).await;
    let reply = app.get("/openapi.json", &app.admin()).await;
    let text = reply.body.to_string();
    assert!(text.contains("docs/verification.md"), "the verify route cites its page");
    assert!(!text.contains("SPEC"), "{text}");
}
