//! What ships beside the binary, checked against the binary: the
//! Dockerfile, deploy/compose.yaml, the systemd units and LICENSE. No
//! container engine runs here, so what these files name is checked
//! instead: every `verdict` subcommand and flag they use is in the real
//! binary's `--help`, every image is verdict's own build or a pinned public
//! image, every file they mount or copy exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use saphyr::{LoadableYamlNode, Yaml};

/// Public images the compose file may use: repository names, each pinned
/// to a tag in the file (never `latest`).
const PUBLIC_IMAGES: &[&str] = &["postgres", "nginx", "prom/prometheus", "grafana/grafana"];

/// The image every verdict service runs, built from the Dockerfile.
const VERDICT_IMAGE: &str = "verdict:local";

/// Files the compose file must mount: the proxy's configuration,
/// Prometheus's configuration and rules, Grafana's dashboard and
/// provisioning.
const MOUNTED_FILES: &[&str] = &[
    "deploy/nginx.conf",
    "deploy/prometheus/prometheus.yml",
    "deploy/prometheus/alerts.yml",
    "deploy/grafana/verdict.json",
    "deploy/grafana/provisioning",
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn read(path: &str) -> String {
    let path = repository().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The real binary's `--help` (of a subcommand when `args` names one).
fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(args)
        .arg("--help")
        .output()
        .expect("verdict --help runs");
    assert!(output.status.success(), "verdict {args:?} --help fails");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// The subcommands `verdict --help` lists.
fn subcommands() -> BTreeSet<String> {
    let text = help(&[]);
    let listed: BTreeSet<String> = text
        .lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(listed.contains("serve"), "the help lists subcommands: {text}");
    listed
}

/// Checks a `verdict` command line (without the program): its first word is
/// a subcommand of the binary and each `--flag` is in that subcommand's help.
#[track_caller]
fn check_verdict_arguments(known: &BTreeSet<String>, arguments: &[String], context: &str) {
    let subcommand = arguments.first().unwrap_or_else(|| panic!("{context}: no subcommand"));
    assert!(
        known.contains(subcommand),
        "{context}: `verdict {subcommand}` is not a subcommand (verdict --help lists {known:?})"
    );
    let help = help(&[subcommand]);
    for flag in arguments.iter().filter(|word| word.starts_with("--")) {
        let flag = flag.split('=').next().unwrap_or(flag);
        assert!(help.contains(flag), "{context}: `verdict {subcommand}` has no {flag}: {help}");
    }
}

fn strings(node: &Yaml, context: &str) -> Vec<String> {
    node.as_sequence()
        .unwrap_or_else(|| panic!("{context}: expected a list of strings (exec form)"))
        .iter()
        .map(|item| item.as_str().unwrap_or_else(|| panic!("{context}: not a string")).to_owned())
        .collect()
}

fn text<'a>(node: &'a Yaml<'_>, key: &str) -> Option<&'a str> {
    node.as_mapping_get(key).and_then(Yaml::as_str)
}

/// deploy/compose.yaml, parsed.
fn compose(source: &str) -> Yaml<'_> {
    let mut documents = Yaml::load_from_str(source).expect("deploy/compose.yaml is YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    documents.remove(0)
}

/// The compose file's services, by name.
fn services<'a>(document: &'a Yaml<'a>) -> BTreeMap<&'a str, &'a Yaml<'a>> {
    document
        .as_mapping_get("services")
        .and_then(Yaml::as_mapping)
        .expect("compose.yaml has a services mapping")
        .iter()
        .map(|(name, service)| (name.as_str().expect("service names are strings"), service))
        .collect()
}

/// Whether a service runs verdict: it builds the repository's image or
/// runs it.
fn runs_verdict(service: &Yaml<'_>) -> bool {
    service.as_mapping_get("build").is_some()
        || text(service, "image").is_some_and(|image| image.starts_with("verdict"))
}

// ------------------------------------------------------------- Dockerfile

/// The Dockerfile's instructions, `(KEYWORD, arguments)`, continuation
/// lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let source = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in source.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, arguments) = pending.split_once(' ').unwrap_or((&pending, ""));
        instructions.push((keyword.to_ascii_uppercase(), arguments.trim().to_owned()));
        pending.clear();
    }
    instructions
}

/// The arguments of the last `keyword` instruction.
fn last(instructions: &[(String, String)], keyword: &str) -> String {
    instructions
        .iter()
        .rev()
        .find(|(found, _)| found == keyword)
        .map(|(_, arguments)| arguments.clone())
        .unwrap_or_else(|| panic!("the Dockerfile has no {keyword}"))
}

/// An exec-form (JSON array) argument list.
fn exec_form(arguments: &str, context: &str) -> Vec<String> {
    serde_json::from_str(arguments)
        .unwrap_or_else(|error| panic!("{context}: {arguments} is not exec form: {error}"))
}

fn dockerfile_entrypoint() -> Vec<String> {
    exec_form(&last(&dockerfile(), "ENTRYPOINT"), "ENTRYPOINT")
}

fn dockerfile_cmd() -> Vec<String> {
    exec_form(&last(&dockerfile(), "CMD"), "CMD")
}

/// The workspace's `rust-version`.
fn rust_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("the workspace has a rust-version")
}

#[test]
fn the_dockerfile_runs_and_checks_existing_subcommands() {
    let known = subcommands();
    let instructions = dockerfile();
    let entrypoint = dockerfile_entrypoint();
    assert_eq!(entrypoint, ["verdict"], "ENTRYPOINT is the binary alone");
    let cmd = dockerfile_cmd();
    check_verdict_arguments(&known, &cmd, "Dockerfile CMD");
    assert_eq!(cmd, ["serve"]);

    let healthcheck = last(&instructions, "HEALTHCHECK");
    let (_options, command) = healthcheck.split_once("CMD ").expect("HEALTHCHECK … CMD [...]");
    let command = exec_form(command, "HEALTHCHECK");
    assert_eq!(command.first().map(String::as_str), Some("verdict"), "{command:?}");
    check_verdict_arguments(&known, &command[1..], "Dockerfile HEALTHCHECK");
    assert_eq!(command[1], "healthcheck", "the image needs no curl");
}

#[test]
fn the_image_is_built_as_ci_builds_with_the_workspace_toolchain_and_runs_unprivileged() {
    let instructions = dockerfile();
    let argument = |name: &str| {
        instructions
            .iter()
            .filter(|(keyword, _)| keyword == "ARG")
            .find_map(|(_, arguments)| arguments.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("ARG {name}=… in the Dockerfile"))
    };
    assert_eq!(argument("RUST_VERSION"), rust_version(), "the builder's toolchain");
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "FROM")
        .map(|(_, arguments)| arguments.as_str())
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert!(stages[0].starts_with("rust:${RUST_VERSION}-"), "{stages:?}");
    assert!(stages[1].starts_with("debian:") && stages[1].contains("-slim"), "{stages:?}");

    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "RUN")
        .map(|(_, arguments)| arguments.as_str())
        .collect();
    assert!(
        runs.iter().any(|run| run.contains("cargo build --release --locked --bin verdict")),
        "CI's --locked build: {runs:?}"
    );
    assert!(runs.iter().any(|run| run.contains("ca-certificates")), "CA certificates");
    let user = last(&instructions, "USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(!name.is_empty() && name != "root" && name != "0", "USER {user}");
    assert_eq!(last(&instructions, "WORKDIR"), "/var/lib/verdict");
    let environment = last(&instructions, "ENV");
    assert!(environment.contains("VERDICT_BIND=0.0.0.0:8080"), "{environment}");
    assert!(last(&instructions, "EXPOSE").split_whitespace().any(|port| port == "8080"));

    // Every file the build copies from the context exists, and
    // .dockerignore keeps none of them out.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for (_, arguments) in instructions.iter().filter(|(keyword, _)| keyword == "COPY") {
        if arguments.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = arguments.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(repository().join(source).exists(), "COPY {source}: no such file");
            assert!(
                !ignored.iter().any(|pattern| pattern == source),
                ".dockerignore drops {source}"
            );
        }
    }
    for must_be_ignored in ["target", ".git"] {
        assert!(ignored.iter().any(|pattern| pattern == must_be_ignored), "{must_be_ignored}");
    }
}

// ---------------------------------------------------------------- compose

#[test]
fn the_compose_file_names_only_images_and_subcommands_that_exist() {
    let known = subcommands();
    let source = read("deploy/compose.yaml");
    let document = compose(&source);
    let services = services(&document);
    let deploy = repository().join("deploy");
    let mut verdict_services = Vec::new();
    for (name, service) in &services {
        let context = format!("compose service {name}");
        if !runs_verdict(service) {
            let image = text(service, "image").unwrap_or_else(|| panic!("{context}: no image"));
            let (repository, tag) =
                image.rsplit_once(':').unwrap_or_else(|| panic!("{context}: {image} has no tag"));
            assert!(PUBLIC_IMAGES.contains(&repository), "{context}: unknown image {image}");
            assert!(!tag.is_empty() && tag != "latest", "{context}: pin {image} to a tag");
            continue;
        }
        verdict_services.push(*name);
        let build = service.as_mapping_get("build").unwrap_or_else(|| panic!("{context}: build"));
        let build_context = text(build, "context").unwrap_or_else(|| panic!("{context}: context"));
        assert_eq!(
            deploy.join(build_context).canonicalize().expect("build context"),
            repository(),
            "{context}: built from the repository"
        );
        assert_eq!(text(build, "dockerfile").unwrap_or("Dockerfile"), "Dockerfile", "{context}");
        assert_eq!(text(service, "image"), Some(VERDICT_IMAGE), "{context}: one image");

        let mut argv = match service.as_mapping_get("entrypoint") {
            Some(entrypoint) => strings(entrypoint, &context),
            None => dockerfile_entrypoint(),
        };
        assert_eq!(argv.first().map(String::as_str), Some("verdict"), "{context}: {argv:?}");
        argv.extend(match service.as_mapping_get("command") {
            Some(command) => strings(command, &context),
            None => dockerfile_cmd(),
        });
        check_verdict_arguments(&known, &argv[1..], &format!("{context} command"));

        let Some(healthcheck) = service.as_mapping_get("healthcheck") else {
            continue; // the image's own HEALTHCHECK, checked above
        };
        if healthcheck.as_mapping_get("disable").and_then(Yaml::as_bool) == Some(true) {
            continue;
        }
        let test = strings(
            healthcheck.as_mapping_get("test").unwrap_or_else(|| panic!("{context}: test")),
            &context,
        );
        assert_eq!(test.first().map(String::as_str), Some("CMD"), "{context}: {test:?}");
        assert_eq!(test.get(1).map(String::as_str), Some("verdict"), "{context}: {test:?}");
        check_verdict_arguments(&known, &test[2..], &format!("{context} healthcheck"));
    }
    assert_eq!(verdict_services, ["migrate", "verdict-a", "verdict-b", "worker"]);
    for name in ["postgres", "proxy", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "compose service {name}");
    }
}

#[test]
fn the_compose_scale_out_shares_one_database_and_secret_and_one_worker_delivers() {
    let source = read("deploy/compose.yaml");
    let document = compose(&source);
    let services = services(&document);
    let environment = |name: &str, key: &str| -> Option<String> {
        services[name]
            .as_mapping_get("environment")
            .and_then(|env| text(env, key))
            .map(str::to_owned)
    };
    let argv =
        |name: &str| strings(services[name].as_mapping_get("command").expect("command"), name);
    let database = environment("migrate", "VERDICT_DATABASE_URL").expect("a database URL");
    assert!(database.starts_with("postgres://") && database.contains("@postgres:"), "{database}");
    let secret = environment("migrate", "VERDICT_JWT_SECRET").expect("a JWT secret");
    for name in ["verdict-a", "verdict-b", "worker"] {
        assert_eq!(environment(name, "VERDICT_DATABASE_URL").as_ref(), Some(&database), "{name}");
        assert_eq!(environment(name, "VERDICT_JWT_SECRET").as_ref(), Some(&secret), "{name}");
        let depends = services[name].as_mapping_get("depends_on").expect("depends_on");
        let migrate = depends.as_mapping_get("migrate").expect("waits for migrate");
        assert_eq!(text(migrate, "condition"), Some("service_completed_successfully"), "{name}");
    }
    assert_eq!(argv("migrate"), ["migrate"]);
    for name in ["verdict-a", "verdict-b"] {
        assert_eq!(argv(name), ["serve"]);
        assert_eq!(environment(name, "VERDICT_WORKER").as_deref(), Some("off"), "{name}");
        assert_eq!(environment(name, "VERDICT_BIND").as_deref(), Some("0.0.0.0:8080"), "{name}");
    }
    assert_eq!(argv("worker"), ["worker"]);
    assert_eq!(environment("worker", "VERDICT_WORKER_BIND").as_deref(), Some("0.0.0.0:8081"));
    let worker_check = services["worker"].as_mapping_get("healthcheck").expect("healthcheck");
    let worker_check = strings(worker_check.as_mapping_get("test").expect("test"), "worker");
    assert!(worker_check.contains(&"--worker".to_owned()), "asks worker_bind: {worker_check:?}");
    let postgres = services["postgres"].as_mapping_get("healthcheck").expect("healthcheck");
    assert!(postgres.as_mapping_get("test").is_some());

    // The proxy's round robin is over exactly the two serve instances.
    let nginx = read("deploy/nginx.conf");
    let upstream: Vec<&str> = nginx
        .lines()
        .skip_while(|line| !line.starts_with("upstream "))
        .take_while(|line| !line.starts_with('}'))
        .filter_map(|line| line.trim().strip_prefix("server "))
        .map(|server| server.trim_end_matches(';').trim())
        .collect();
    assert_eq!(upstream, ["verdict-a:8080", "verdict-b:8080"]);
}

#[test]
fn every_file_the_compose_file_mounts_exists() {
    let source = read("deploy/compose.yaml");
    let document = compose(&source);
    let repository = repository();
    let declared_volumes: BTreeSet<&str> = document
        .as_mapping_get("volumes")
        .and_then(Yaml::as_mapping)
        .map(|volumes| volumes.keys().filter_map(Yaml::as_str).collect())
        .unwrap_or_default();
    let mut mounted = BTreeSet::new();
    for (name, service) in services(&document) {
        let Some(volumes) = service.as_mapping_get("volumes") else { continue };
        for volume in strings(volumes, name) {
            let source = volume.split(':').next().unwrap_or_default();
            if !(source.starts_with('.') || source.starts_with('/')) {
                assert!(declared_volumes.contains(source), "{name}: undeclared volume {source}");
                continue;
            }
            assert!(!source.starts_with('/'), "{name}: {source} is outside the repository");
            let path = normalize(&Path::new("deploy").join(source));
            assert!(path.starts_with("deploy"), "{name}: mounts {path} outside deploy/");
            mounted.insert(path.clone());
            assert!(repository.join(&path).exists(), "{name} mounts {path}: missing");
        }
    }
    for path in MOUNTED_FILES {
        assert!(mounted.contains(*path), "{path} is mounted");
    }
}

/// `a/./b/../c` as `a/c`, with `/` separators.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop();
            }
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    parts.join("/")
}

// ---------------------------------------------------------------- systemd

/// A unit file's `Key=value` lines (repeated keys kept in order).
fn unit(path: &str) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn the_systemd_units_run_existing_subcommands_sandboxed() {
    let known = subcommands();
    let sandbox = [
        ("Type", "simple"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "verdict"),
        ("WorkingDirectory", "/var/lib/verdict"),
        ("EnvironmentFile", "-/etc/verdict/verdict.env"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
    ];
    for (path, subcommand) in [
        ("deploy/systemd/verdict.service", "serve"),
        ("deploy/systemd/verdict-worker.service", "worker"),
    ] {
        let lines = unit(path);
        for (key, value) in sandbox {
            assert!(
                lines.iter().any(|(k, v)| k == key && v == value),
                "{path}: {key}={value} is missing"
            );
        }
        assert!(lines.iter().any(|(key, _)| key == "TimeoutStopSec"), "{path}: TimeoutStopSec");
        let exec: Vec<&str> = lines
            .iter()
            .find(|(key, _)| key == "ExecStart")
            .map(|(_, value)| value.split_whitespace().collect())
            .expect("ExecStart");
        assert_eq!(exec[0], "/usr/local/bin/verdict", "{path}");
        let arguments: Vec<String> = exec[1..].iter().map(|word| (*word).to_owned()).collect();
        check_verdict_arguments(&known, &arguments, path);
        assert_eq!(arguments[0], subcommand, "{path}");
    }
}

/// RestartPreventExitStatus=2 relies on this: a configuration error exits 2,
/// so systemd does not restart a service that cannot start.
#[test]
fn a_configuration_error_exits_2() {
    let directory = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .arg("serve")
        .current_dir(directory.path())
        .env("VERDICT_JWT_SECRET", "too-short")
        .env("VERDICT_DATABASE_URL", format!("sqlite://{}/v.db", directory.path().display()))
        .env("RUST_LOG", "error")
        .output()
        .expect("verdict serve runs");
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `systemd-analyze verify` of both units, their ExecStart pointed at the
/// binary under test (this machine has systemd's tools; where it has none
/// the directive checks above still run).
#[test]
fn systemd_analyze_verifies_the_units() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed: units checked by their directives only");
        return;
    }
    let directory = tempfile::tempdir().expect("temp dir");
    let mut names = Vec::new();
    for name in ["verdict.service", "verdict-worker.service"] {
        let text = read(&format!("deploy/systemd/{name}"))
            .replace("/usr/local/bin/verdict", env!("CARGO_BIN_EXE_verdict"));
        std::fs::write(directory.path().join(name), text).expect("write the unit");
        names.push(format!("./{name}"));
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(directory.path())
        .output()
        .expect("systemd-analyze runs");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------- license

#[test]
fn the_license_file_matches_the_manifests() {
    let manifest = read("Cargo.toml");
    assert!(manifest.lines().any(|line| line == r#"license = "Apache-2.0""#), "workspace license");
    for entry in std::fs::read_dir(repository().join("crates")).expect("crates/") {
        let crate_manifest = entry.expect("entry").path().join("Cargo.toml");
        let text = std::fs::read_to_string(&crate_manifest).expect("a crate manifest");
        assert!(
            text.lines().any(|line| line == "license.workspace = true"),
            "{}: license.workspace = true",
            crate_manifest.display()
        );
    }
    let license = read("LICENSE");
    let words: Vec<&str> = license.split_whitespace().take(5).collect();
    assert_eq!(words, ["Apache", "License", "Version", "2.0,", "January"]);
    assert!(license.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"), "the full text");
    assert!(license.contains("APPENDIX: How to apply the Apache License to your work."));
    let label = last(&dockerfile(), "LABEL");
    assert!(label.contains(r#"org.opencontainers.image.licenses="Apache-2.0""#), "{label}");
}
