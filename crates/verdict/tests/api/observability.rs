//! What an operator sees: the Grafana dashboard and the alert rules query
//! only series `/metrics` exports; a lone `verdict worker` serves
//! `/metrics` and `/healthz` and counts its sweeper's ends; every request
//! has an `x-request-id`, echoed, in each of its log lines (the store's
//! included) and in its 5xx problem bodies.

use saphyr::{LoadableYamlNode, Yaml};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use verdict_core::{Cents, Kind, Price, PriceMode, Role, UnixMillis};
use verdict_store::clock::{Clock, SystemClock};
use verdict_store::{Actor, NewSession};

use crate::support::{Backend, SECRET, TestApp, on_every_backend};

on_every_backend!(
    a_given_request_id_is_echoed_and_a_bad_one_replaced_by_a_uuid_v7,
    a_5xx_problem_carries_the_request_id_of_its_answer,
);

fn repository_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// PromQL words that are not metric names: keywords, operators spelled as
/// words, constants, and aggregation operators (whose `by (…)` clause may
/// come before their parenthesis).
const PROMQL_WORDS: [&str; 29] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
];

/// The metric names a PromQL expression reads. Skipped: label matchers
/// (`{…}`), range and subquery durations (`[…]`), string literals, numbers
/// and durations, function and aggregation names (a word followed by
/// `(`), the label lists of `by`/`without`/`on`/`ignoring`/`group_left`/
/// `group_right`, PromQL keywords and Grafana variables (`$job`,
/// `$__rate_interval`, `${datasource}`).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let characters: Vec<char> = expression.chars().collect();
    let is_word_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut index = 0;
    // Set after a keyword whose next parenthesis holds label names.
    let mut labels_follow = false;
    while index < characters.len() {
        let c = characters[index];
        match c {
            '"' | '\'' | '`' => {
                index += 1;
                while index < characters.len() && characters[index] != c {
                    index += if characters[index] == '\\' { 2 } else { 1 };
                }
                index += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Grafana's `${name}` is a variable, skipped the same way.
                while index < characters.len() && characters[index] != close {
                    if characters[index] == '"' {
                        index += 1;
                        while index < characters.len() && characters[index] != '"' {
                            index += if characters[index] == '\\' { 2 } else { 1 };
                        }
                    }
                    index += 1;
                }
                index += 1;
            }
            '$' => {
                index += 1;
                while index < characters.len() && is_word(characters[index]) {
                    index += 1;
                }
            }
            '(' if labels_follow => {
                labels_follow = false;
                while index < characters.len() && characters[index] != ')' {
                    index += 1;
                }
                index += 1;
            }
            c if c.is_ascii_digit() || (c == '.' && index + 1 < characters.len()) => {
                // A number or a duration (`5m`, `1h30m`, `1e3`).
                while index < characters.len()
                    && (characters[index].is_ascii_alphanumeric() || characters[index] == '.')
                {
                    index += 1;
                }
            }
            c if is_word_start(c) => {
                let start = index;
                while index < characters.len() && is_word(characters[index]) {
                    index += 1;
                }
                let word: String = characters[start..index].iter().collect();
                let mut next = index;
                while next < characters.len() && characters[next].is_whitespace() {
                    next += 1;
                }
                let called = characters.get(next) == Some(&'(');
                let lowered = word.to_ascii_lowercase();
                if ["by", "without", "on", "ignoring", "group_left", "group_right"]
                    .contains(&lowered.as_str())
                {
                    labels_follow = called;
                } else if !called && !PROMQL_WORDS.contains(&lowered.as_str()) {
                    names.insert(word);
                }
            }
            _ => index += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_only_the_series_a_query_reads() {
    let check = |expression: &str, expected: &[&str]| {
        let expected: BTreeSet<String> = expected.iter().map(|name| name.to_string()).collect();
        assert_eq!(metric_names(expression), expected, "{expression}");
    };
    check(
        r#"histogram_quantile(0.95, sum by (route, le) (rate(verdict_http_request_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))"#,
        &["verdict_http_request_duration_seconds_bucket"],
    );
    check(
        r#"sum by (job) (rate(a_total{status=~"5.."}[5m])) / sum by (job) (rate(b_total[5m])) > 0.01"#,
        &["a_total", "b_total"],
    );
    check("max by (job) (deriv(x[5m])) > 0 and on (job) y offset 1h30m unless z", &["x", "y", "z"]);
    check("sum without (instance) (p) * on (job) group_left (route) q > bool 1e3", &["p", "q"]);
    check("max(verdict_health_score{job=~\"${datasource}\"}) < 85", &["verdict_health_score"]);
    check("max_over_time(m[1h:5m]) or vector(0)", &["m"]);
    check("topk without (le) (3, count_values(\"v\", n))", &["n"]);
}

/// The exporter's series in a Prometheus text scrape, by name, each with
/// its `# TYPE`; a histogram's `_bucket`, `_sum` and `_count` are its own.
fn exported(scrape: &str) -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    let mut series = BTreeMap::new();
    for line in scrape.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| {
                types.get(*base).is_some_and(|kind| kind == "histogram" || kind == "summary")
            })
            .unwrap_or(&name)
            .to_owned();
        let kind = types.get(&base).cloned().unwrap_or_else(|| "untyped".into());
        series.insert(name, kind);
    }
    series
}

/// The queried names missing from a scrape's series.
fn missing(queried: &BTreeSet<String>, series: &BTreeMap<String, String>) -> Vec<String> {
    queried.iter().filter(|name| !series.contains_key(*name)).cloned().collect()
}

/// Every PromQL expression of the dashboard (panels' targets, and the
/// metrics of its `label_values` variables), with where it is.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut expressions = Vec::new();
    let panels = dashboard["panels"].as_array().expect("the dashboard has panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel has a title");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: panels use the datasource variable, so it provisions on any uid"
        );
        let targets = panel["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "{title} has no targets");
        for target in targets {
            let expression = target["expr"].as_str().expect("a target has an expr");
            assert!(!expression.trim().is_empty(), "{title}: empty expr");
            expressions.push((title.to_owned(), expression.to_owned()));
        }
    }
    let variables = dashboard["templating"]["list"].as_array().expect("templating variables");
    let datasource = variables.iter().find(|variable| variable["type"] == "datasource");
    assert_eq!(datasource.map(|variable| &variable["query"]), Some(&json!("prometheus")));
    for variable in variables.iter().filter(|variable| variable["type"] == "query") {
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap();
        // Grafana's `label_values(metric, label)`: its first argument is
        // a series selector, the second a label name.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map_or(query, |(selector, _)| selector);
        expressions.push((format!("variable {}", variable["name"]), inner.to_owned()));
    }
    expressions
}

fn alert_expressions(alerts: &Yaml<'_>) -> Vec<(String, String)> {
    let field = |node: &'_ Yaml<'_>, key: &str| {
        node.as_mapping_get(key).and_then(Yaml::as_str).map(str::to_owned)
    };
    let mut expressions = Vec::new();
    let groups = alerts.as_mapping_get("groups").and_then(Yaml::as_sequence).expect("rule groups");
    for group in groups {
        for rule in group.as_mapping_get("rules").and_then(Yaml::as_sequence).expect("rules") {
            let name = field(rule, "alert").or(field(rule, "record")).expect("a rule name");
            let expression = field(rule, "expr").expect("a rule has an expr");
            expressions.push((name.to_owned(), expression.to_owned()));
        }
    }
    expressions
}

/// The dashboard and the alert rules, checked against a real scrape of an
/// app that has done the work they chart: ends by the API and by the
/// sweeper, outbox rows delivered, requests answered, health computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_query_only_series_that_metrics_exports() {
    let dashboard: Value = serde_json::from_str(&repository_file("deploy/grafana/verdict.json"))
        .expect("deploy/grafana/verdict.json is valid JSON");
    let source = repository_file("deploy/prometheus/alerts.yml");
    let mut documents =
        Yaml::load_from_str(&source).expect("deploy/prometheus/alerts.yml is valid YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    let alerts = documents.remove(0);
    let mut expressions = dashboard_expressions(&dashboard);
    let alert_rules = alert_expressions(&alerts);
    assert_eq!(alert_rules.len(), 5, "health, dead delivery, backlog, 5xx, stuck");
    expressions.extend(alert_rules);

    let app = TestApp::spawn(Backend::Sqlite, |_| {}).await;
    app.create_session("ended-by-api").await;
    app.join("ended-by-api", &app.customer()).await.ok();
    app.join("ended-by-api", &app.provider()).await.ok();
    app.advance(120).await;
    app.end("ended-by-api", &app.service(), None).await.ok();
    app.create_session("ended-by-sweeper").await;
    app.advance(2_000).await;
    let worker = app.worker(|_| {});
    let swept = worker.try_sweep().await.unwrap();
    assert_eq!(swept.ended.len(), 1);
    app.drain(&worker).await;
    app.get("/v1/admin/health", &app.admin()).await.ok();
    let scrape = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let series = exported(&scrape.text().await.unwrap());

    let mut queried = BTreeSet::new();
    for (place, expression) in &expressions {
        let names = metric_names(expression);
        assert!(!names.is_empty(), "{place}: no metric read by {expression}");
        let absent = missing(&names, &series);
        assert!(absent.is_empty(), "{place}: {absent:?} not in /metrics (queried by {expression})");
        queried.extend(names);
    }
    for wanted in [
        "verdict_health_score",
        "verdict_sessions_ended_total",
        "verdict_outbox_pending",
        "verdict_outbox_dead",
        "verdict_http_request_duration_seconds_bucket",
        "verdict_sweeper_runs_total",
        "verdict_sweeper_failures_total",
        "verdict_sessions_stuck",
        "verdict_http_requests_total",
    ] {
        assert!(queried.contains(wanted), "nothing charts or alerts on {wanted}");
    }
    // The check is not vacuous: a misspelled series is caught.
    let misspelled = metric_names("max(verdict_outbox_pendng) > 0");
    assert_eq!(missing(&misspelled, &series), ["verdict_outbox_pendng"]);
    assert_eq!(
        missing(&metric_names("rate(verdict_http_request_duration_second_bucket[5m])"), &series),
        ["verdict_http_request_duration_second_bucket"]
    );
}

/// Polls `url` until `ready` holds for its body (bounded: a real server
/// started by the test, on real time).
async fn poll_until(url: &str, mut ready: impl FnMut(&str) -> bool) -> String {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(response) = client.get(url).send().await
            && let Ok(body) = response.text().await
            && ready(&body)
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not get there in 30 s");
}

fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = scrape.lines().map(|line| Ok(line.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == name && labels.iter().all(|(key, value)| s.labels.get(key) == Some(value))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            _ => f64::NAN,
        })
}

/// `verdict worker` on a system clock: its sweeper ends a session left
/// open past its join deadline, and the worker's own `/metrics` (on
/// `worker_bind`) counts that end with its status and reason; `/healthz`
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_worker_serves_metrics_and_healthz_and_counts_its_sweepers_ends() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/worker.db", dir.path().display());
    let store = verdict_store::open(&database_url).await.unwrap();
    let two_hours_ago = UnixMillis(SystemClock.now().0 - 2 * 3_600_000);
    let new = video_session("forgotten");
    let service = Actor { role: Role::Service, id: "platform".into() };
    store.create_session(new, &service, None, two_hours_ago).await.unwrap();
    drop(store);

    let mut child = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .arg("worker")
        .current_dir(dir.path())
        .env("VERDICT_DATABASE_URL", &database_url)
        .env("VERDICT_JWT_SECRET", SECRET)
        .env("VERDICT_WORKER_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start verdict worker");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(address) = line.strip_prefix("verdict worker listening on ") {
                return address.trim().to_owned();
            }
        }
        panic!("verdict worker exited before listening");
    })
    .await
    .expect("the worker listens within a minute");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let health = poll_until(&format!("{base}/healthz"), |_| true).await;
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap(),
        json!({"status": "ok", "database": "sqlite"})
    );
    let ended = [("status", "expired"), ("reason", "no_show_both")];
    let scrape = poll_until(&format!("{base}/metrics"), |text| {
        sample(text, "verdict_sessions_ended_total", &ended).is_some()
    })
    .await;
    assert_eq!(sample(&scrape, "verdict_sessions_ended_total", &ended), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "verdict_sweeper_ended_total", &[]), Some(1.0), "{scrape}");
    assert!(sample(&scrape, "verdict_sweeper_runs_total", &[]).is_some_and(|runs| runs >= 1.0));
    assert_eq!(sample(&scrape, "verdict_sweeper_failures_total", &[]), Some(0.0));
    assert!(sample(&scrape, "verdict_outbox_pending", &[]).is_some(), "{scrape}");
    let store = verdict_store::open(&database_url).await.unwrap();
    let session = store.session("forgotten").await.unwrap().unwrap();
    assert_eq!(session.status.as_str(), "expired");
    let unknown = reqwest::get(format!("{base}/nowhere")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    child.kill().await.unwrap();
}

async fn a_given_request_id_is_echoed_and_a_bad_one_replaced_by_a_uuid_v7(app: TestApp) {
    let get = |id: Option<&str>| {
        let mut request =
            app.client.get(format!("{}/v1/sessions/none", app.base)).bearer_auth(app.service());
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let given = "req-2026.12.07:abc_DEF-1";
    let answer = get(Some(given)).await.unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.headers()["x-request-id"], given);

    let too_long = "a".repeat(129);
    for bad in [None, Some("has space"), Some("quote\"d"), Some(too_long.as_str()), Some("")] {
        let answer = get(bad).await.unwrap();
        let made = answer.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(Some(made.as_str()), bad);
        let made = uuid::Uuid::parse_str(&made).expect("a made request id is a UUID");
        assert_eq!(made.get_version_num(), 7, "{bad:?}");
    }
    let longest = "b".repeat(128);
    let answer = get(Some(&longest)).await.unwrap();
    assert_eq!(answer.headers()["x-request-id"], longest.as_str());
}

/// A store fault (the database refuses the end, as in the sweeper's
/// tests) is a 500 whose problem body names the request id it was
/// answered with, and no 4xx body carries one.
async fn a_5xx_problem_carries_the_request_id_of_its_answer(app: TestApp) {
    app.create_session("bad").await;
    app.refuse_to_end_bad().await;
    for given in [Some("fault-1"), None] {
        let mut request =
            app.client.post(format!("{}/v1/sessions/bad/end", app.base)).bearer_auth(app.service());
        if let Some(given) = given {
            request = request.header("x-request-id", given);
        }
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_server_error(), "{}", answer.status());
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
        let id = answer.headers()["x-request-id"].to_str().unwrap().to_owned();
        if let Some(given) = given {
            assert_eq!(id, given);
        }
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["request_id"], id.as_str(), "{body}");
        assert!(
            !body["detail"].as_str().unwrap().contains("refused by the test"),
            "no cause leaks"
        );
    }
    let not_found = app.get("/v1/sessions/none", &app.service()).await;
    not_found.problem(404);
    assert_eq!(not_found.body.get("request_id"), None);
}

/// The log lines `verdict serve` writes (JSON, `VERDICT_LOG_FORMAT`) while
/// answering requests: each line names its request's id, the store's
/// lines for the request's write included, and the access line has the
/// method, route template, status, latency and role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_names_its_request_id_as_its_answer_does() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/logs.db", dir.path().display());
    let mut command = crate::support::serve_command(dir.path(), &database_url);
    command
        .env("VERDICT_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,verdict_store=debug,sqlx=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start verdict serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let line: Value = serde_json::from_str(&line).expect("a JSON log line");
            if line["fields"]["message"] == "verdict listening" {
                return line["fields"]["address"].as_str().unwrap().to_owned();
            }
        }
        panic!("verdict serve exited before listening");
    })
    .await
    .expect("verdict serve listens within a minute");
    let base = format!("http://{address}");

    let keys =
        verdict_http::JwtKeys::new(&verdict_http::JwtSecret::new(SECRET.as_bytes().to_vec()));
    let token = keys.mint(Role::Service, "platform", i64::MAX / 4);
    let client = reqwest::Client::new();
    let create = |id: &'static str, request_id: Option<&'static str>| {
        let mut request =
            client.post(format!("{base}/v1/sessions")).bearer_auth(&token).json(&json!({
                "id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
                "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}
            }));
        if let Some(request_id) = request_id {
            request = request.header("x-request-id", request_id);
        }
        request.send()
    };
    // Two writes at once (they may share a group commit) and one whose id
    // the server makes.
    let (first, second, made) = tokio::join!(
        create("s-1", Some("log-test-a")),
        create("s-2", Some("log-test-b")),
        create("s-3", None)
    );
    let mut ids = Vec::new();
    for answer in [first.unwrap(), second.unwrap(), made.unwrap()] {
        assert_eq!(answer.status(), 201);
        ids.push(answer.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    assert_eq!(&ids[..2], ["log-test-a", "log-test-b"]);
    let made = uuid::Uuid::parse_str(&ids[2]).expect("a made id is a UUID");
    assert_eq!(made.get_version_num(), 7);

    // Every line from here on is one of these requests' (the worker is
    // off; nothing else logs at info): read until each has its answer.
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while by_id
            .values()
            .filter(|lines| lines.iter().any(|line| line["fields"]["message"] == "answered"))
            .count()
            < 3
        {
            let Some(text) = lines.next_line().await.unwrap() else { panic!("the server stopped") };
            assert!(!text.contains('\u{1b}'), "no colour off a terminal: {text}");
            let line: Value = serde_json::from_str(&text).expect("a JSON log line");
            let id = line["span"]["request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a line without a request id: {text}"));
            let named: Vec<&String> =
                ids.iter().filter(|known| text.contains(known.as_str())).collect();
            assert_eq!(named, [id], "{text}");
            by_id.entry(id.to_owned()).or_default().push(line);
        }
    })
    .await
    .expect("each request's lines within 30 s");
    let _ = child.kill().await;

    assert_eq!(by_id.keys().collect::<BTreeSet<_>>(), ids.iter().collect::<BTreeSet<_>>());
    for (id, lines) in &by_id {
        let store_lines = lines
            .iter()
            .filter(|line| line["target"].as_str().unwrap().starts_with("verdict_store"))
            .count();
        assert!(store_lines >= 1, "{id}: the store's line for its write: {lines:#?}");
        let answered: Vec<&Value> =
            lines.iter().filter(|line| line["fields"]["message"] == "answered").collect();
        assert_eq!(answered.len(), 1, "{id}: one access line");
        let access = answered[0];
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["fields"]["status"], 201);
        assert!(access["fields"]["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{access}");
        let span = &access["span"];
        assert_eq!(
            (&span["method"], &span["route"], &span["role"]),
            (&json!("POST"), &json!("/v1/sessions"), &json!("service")),
            "{access}"
        );
    }
}

/// Text logs (the default) written to a pipe: no colour codes, and the
/// access line names the request's id, route, status and latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_are_plain_and_name_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::support::serve_command(
        dir.path(),
        &format!("sqlite://{}/text.db", dir.path().display()),
    )
    .env_remove("VERDICT_LOG_FORMAT")
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("start verdict serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let access = tokio::time::timeout(Duration::from_secs(60), async {
        let mut base = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(!line.contains('\u{1b}'), "no colour off a terminal: {line:?}");
            if base.is_none()
                && let Some((_, address)) = line.split_once("address=")
            {
                let address = address.split_whitespace().next().unwrap().to_owned();
                let answer = reqwest::Client::new()
                    .get(format!("http://{address}/healthz"))
                    .header("x-request-id", "text-log-1")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.headers()["x-request-id"], "text-log-1");
                base = Some(address);
            } else if line.contains("answered") {
                return line;
            }
        }
        panic!("verdict serve stopped before answering");
    })
    .await
    .expect("the access line within a minute");
    let _ = child.kill().await;
    for part in [
        "INFO",
        "request_id=text-log-1",
        "method=GET",
        "route=/healthz",
        "status=200",
        "latency_ms=",
    ] {
        assert!(access.contains(part), "{part} in {access:?}");
    }
}

/// A session left open past its join deadline, with no sweeper running,
/// is counted by `verdict_sessions_stuck` of a server of its own (the
/// gauge is computed with the health score when the server starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_session_shows_in_the_stuck_sessions_gauge() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/stuck.db", dir.path().display());
    let store = verdict_store::open(&database_url).await.unwrap();
    let two_hours_ago = UnixMillis(SystemClock.now().0 - 2 * 3_600_000);
    let service = Actor { role: Role::Service, id: "platform".into() };
    for id in ["stuck-1", "stuck-2"] {
        let new = video_session(id);
        store.create_session(new, &service, None, two_hours_ago).await.unwrap();
    }
    drop(store);
    let mut command = crate::support::serve_command(dir.path(), &database_url);
    command.env("RUST_LOG", "warn");
    let (mut child, base) = crate::support::serve_process(&mut command).await;
    let scrape = poll_until(&format!("{base}/metrics"), |text| {
        sample(text, "verdict_sessions_stuck", &[]).is_some()
    })
    .await;
    assert_eq!(sample(&scrape, "verdict_sessions_stuck", &[]), Some(2.0), "{scrape}");
    child.kill().await.unwrap();
}

/// A flat-priced video session between the test's parties, for writing
/// straight into a store at an instant of the test's choosing.
fn video_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Kind::Video,
        customer_id: "cust-1".into(),
        provider_id: "prov-1".into(),
        provider_account: None,
        scheduled_start: None,
        price: Price { mode: PriceMode::Flat, amount: Cents(2500), currency: "usd".into() },
        request_id: None,
        metadata: None,
        room: None,
    }
}

/// Logs written to a file, as an operator's unit or a redirect keeps them:
/// no escape character in them (never colour off a terminal, and never
/// with `NO_COLOR`), and the sweeper's end in the API's words
/// (`reason=no_show_both`, not a debug `Some(NoShowBoth)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_file_are_plain_and_speak_the_wire_words() {
    verdict_worker::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/file-log.db", dir.path().display());
    let store = verdict_store::open(&database_url).await.unwrap();
    let two_hours_ago = UnixMillis(SystemClock.now().0 - 2 * 3_600_000);
    let service = Actor { role: Role::Service, id: "platform".into() };
    store
        .create_session(video_session("nobody-came"), &service, None, two_hours_ago)
        .await
        .unwrap();
    drop(store);
    let log = dir.path().join("verdict.log");
    let mut command = crate::support::serve_command(dir.path(), &database_url);
    command
        .env("VERDICT_WORKER", "on")
        .env("NO_COLOR", "1")
        .env_remove("VERDICT_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut child, _base) = crate::support::serve_process(&mut command).await;
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("sweeper ended a session") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    let ended = text.lines().find(|line| line.contains("sweeper ended a session"));
    let ended = ended.unwrap_or_else(|| panic!("no sweeper line in {text}"));
    assert!(!text.contains('\u{1b}'), "an escape character in the log file: {text:?}");
    for part in ["session=nobody-came", "status=expired", "reason=no_show_both"] {
        assert!(ended.contains(part), "{part} in {ended:?}");
    }
    assert!(!text.contains("Some("), "debug text in the log: {text}");
    assert!(text.contains("clock=system"), "the clock in its config word: {text}");
}

/// A worker whose `worker_bind` is taken stops with a configuration error
/// (exit 2) that names the address and how to choose another, as `serve`
/// does for `bind`.
#[tokio::test]
async fn a_worker_on_a_taken_port_names_it_and_the_way_to_choose_another() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .arg("worker")
        .current_dir(dir.path())
        .env("VERDICT_DATABASE_URL", format!("sqlite://{}/worker.db", dir.path().display()))
        .env("VERDICT_JWT_SECRET", SECRET)
        .env("VERDICT_WORKER_BIND", &address)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a configuration error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {address}")), "{stderr}");
    assert!(stderr.contains("in use") && stderr.contains("VERDICT_WORKER_BIND"), "{stderr}");
    assert!(stderr.contains("`worker_bind` in verdict.toml"), "{stderr}");
}
