//! The test harness: the real application on 127.0.0.1:0 with a fresh
//! database and a manual clock, spoken to over real HTTP.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use verdict::Application;
use verdict::config::{ClockKind, Config};
use verdict_core::Role;
use verdict_http::{AppState, JwtKeys, JwtSecret};

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Generates one `#[tokio::test]` per backend for each scenario
/// `async fn name(app: TestApp)`, so every test runs on every database.
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::TestApp::spawn($crate::support::Backend::Sqlite, |_| {}).await;
                    super::$name(app).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::TestApp::spawn($crate::support::Backend::Postgres, |_| {}).await;
                    super::$name(app).await;
                }
            )+
        }
    };
}
pub(crate) use on_every_backend;

/// Like [`on_every_backend`], for scenarios that start their own app with a
/// configuration of their own: `async fn name(backend: Backend)`.
macro_rules! for_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await;
                }
            )+
        }
    };
}
pub(crate) use for_every_backend;

pub struct TestApp {
    pub base: String,
    /// The database, for tests that plant data behind the API's back.
    pub database_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub backend: Backend,
    keys: JwtKeys,
    _data: TempDir,
    _postgres: Option<verdict_testing::TestDatabase>,
    _stop: oneshot::Sender<()>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The status, headers and body (JSON, else the text; `null` when
    /// empty) of a response.
    pub async fn of(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, headers, body }
    }

    /// Asserts a problem+json answer with this status and returns its detail.
    #[track_caller]
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let content_type = self.headers.get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("application/problem+json"), "body: {}", self.body);
        assert_eq!(self.body["status"], status);
        assert!(self.body["type"].as_str().unwrap().starts_with("urn:verdict:problem:"));
        self.body["detail"].as_str().expect("a problem has a detail").to_owned()
    }

    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert!(self.status.is_success(), "{}: {}", self.status, self.body);
        &self.body
    }
}

impl TestApp {
    /// Refuses, in the database, to end session `bad` (as a corrupt row or a
    /// bug would): the sweeper's end of it fails every time.
    pub async fn refuse_to_end_bad(&self) {
        if self.database_url.starts_with("sqlite:") {
            self.sql(
                "CREATE TRIGGER refuse_bad BEFORE UPDATE OF status ON sessions \
                 WHEN NEW.id = 'bad' AND NEW.status <> OLD.status \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .await;
        } else {
            self.sql(
                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.id = 'bad' AND NEW.status <> OLD.status THEN \
                 RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$; \
                 CREATE TRIGGER refuse_bad BEFORE UPDATE ON sessions \
                 FOR EACH ROW EXECUTE FUNCTION refuse_bad()",
            )
            .await;
        }
    }

    /// Starts the application; `configure` may change the configuration.
    pub async fn spawn(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
        verdict_worker::install_crypto();
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            bind: "127.0.0.1:0".into(),
            clock: ClockKind::Manual,
            worker: false,
            ..Config::default()
        };
        let postgres = match backend {
            Backend::Sqlite => {
                config.database_url = format!("sqlite://{}/verdict.db", data.path().display());
                None
            }
            Backend::Postgres => {
                let database = verdict_testing::shared_server().create_database().await;
                config.database_url = database.url.clone();
                Some(database)
            }
        };
        configure(&mut config);
        let secret = JwtSecret::new(SECRET.as_bytes().to_vec());
        let app = Application::build(&config, &secret).await.expect("the app builds");
        let base = format!("http://{}", app.local_addr());
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        TestApp {
            base,
            database_url: config.database_url.clone(),
            client: reqwest::Client::new(),
            state,
            backend,
            keys: JwtKeys::new(&secret),
            _data: data,
            _postgres: postgres,
            _stop: stop,
        }
    }

    pub fn token(&self, role: Role, sub: &str) -> String {
        let in_an_hour =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 3600;
        self.keys.mint(role, sub, in_an_hour)
    }

    pub fn service(&self) -> String {
        self.token(Role::Service, "platform")
    }

    pub fn admin(&self) -> String {
        self.token(Role::Admin, "ops")
    }

    pub fn customer(&self) -> String {
        self.token(Role::Customer, "cust-1")
    }

    pub fn provider(&self) -> String {
        self.token(Role::Provider, "prov-1")
    }

    /// Sends a request; `body` is sent as raw bytes with a JSON content type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        Reply::of(request.send().await.expect("the server answers")).await
    }

    /// `GET /v1/admin/verify`, as an admin: the report.
    pub async fn verify(&self) -> Value {
        self.get("/v1/admin/verify", &self.admin()).await.ok().clone()
    }

    /// `GET /v1/admin/health{query}`, as an admin: the report.
    pub async fn health(&self, query: &str) -> Value {
        self.get(&format!("/v1/admin/health{query}"), &self.admin()).await.ok().clone()
    }

    /// `POST /v1/admin/import{query}` of `lines` as NDJSON, as an admin.
    pub async fn import(&self, query: &str, lines: &[String]) -> Reply {
        let request = self
            .client
            .post(format!("{}/v1/admin/import{query}", self.base))
            .bearer_auth(self.admin())
            .header("content-type", "application/x-ndjson")
            .body(lines.join("\n"));
        Reply::of(request.send().await.expect("the server answers")).await
    }

    /// A chat session made through a request (customer `cust-1`, accepted
    /// by `prov-1`) and ended by the service: `(request id, session id)`.
    pub async fn session_through_a_request(&self) -> (String, String) {
        let body = serde_json::json!({"customer_id": "cust-1", "kind": "chat",
            "candidate_provider_ids": ["prov-1"],
            "price": {"mode": "flat", "amount_cents": 100, "currency": "usd"}});
        let request = self.post("/v1/requests", &self.service(), body).await.ok()["id"]
            .as_str()
            .expect("a request id")
            .to_owned();
        let accept = format!("/v1/requests/{request}/accept");
        let accepted = self.post(&accept, &self.provider(), serde_json::json!({})).await;
        let session = accepted.body["id"].as_str().expect("a session id").to_owned();
        self.end(&session, &self.service(), None).await.ok();
        (request, session)
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(&body.to_string())).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    /// Creates session `id` between `cust-1` and `prov-1` at a flat $25.
    pub async fn create_session(&self, id: &str) -> Value {
        let reply = self
            .post(
                "/v1/sessions",
                &self.service(),
                json!({
                    "id": id, "kind": "video", "customer_id": "cust-1", "provider_id": "prov-1",
                    "price": {"mode": "flat", "amount_cents": 2500, "currency": "usd"}
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    pub async fn join(&self, id: &str, token: &str) -> Reply {
        self.send(Method::POST, &format!("/v1/sessions/{id}/join"), Some(token), None).await
    }

    pub async fn leave(&self, id: &str, token: &str) -> Reply {
        self.send(Method::POST, &format!("/v1/sessions/{id}/leave"), Some(token), None).await
    }

    pub async fn heartbeat(&self, id: &str, token: &str) -> Reply {
        self.send(Method::POST, &format!("/v1/sessions/{id}/heartbeat"), Some(token), None).await
    }

    pub async fn end(&self, id: &str, token: &str, body: Option<Value>) -> Reply {
        let body = body.map(|body| body.to_string());
        self.send(Method::POST, &format!("/v1/sessions/{id}/end"), Some(token), body.as_deref())
            .await
    }

    pub async fn advance(&self, seconds: i64) {
        self.post("/v1/test-clock/advance", &self.admin(), json!({"seconds": seconds})).await.ok();
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let reply = self.get(&format!("/v1/sessions/{id}/events?limit=500"), &self.admin()).await;
        reply.ok()["items"].as_array().expect("items").clone()
    }

    /// Runs raw SQL on the app's database, as a buggy writer or an old
    /// system would.
    pub async fn sql(&self, statement: &str) {
        use sqlx::Connection;
        let statement = sqlx::AssertSqlSafe(statement.to_owned());
        if self.database_url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.database_url).await.unwrap();
            sqlx::raw_sql(statement).execute(&mut connection).await.unwrap();
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.database_url).await.unwrap();
            sqlx::raw_sql(statement).execute(&mut connection).await.unwrap();
        }
    }

    /// One number from the database, behind the API's back.
    pub async fn sql_count(&self, query: &str) -> i64 {
        use sqlx::Connection;
        let query = sqlx::AssertSqlSafe(query.to_owned());
        if self.database_url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.database_url).await.unwrap();
            sqlx::query_scalar::<_, i64>(query).fetch_one(&mut connection).await.unwrap()
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.database_url).await.unwrap();
            sqlx::query_scalar::<_, i64>(query).fetch_one(&mut connection).await.unwrap()
        }
    }

    /// A worker on this app's database and clock.
    pub fn worker(
        &self,
        configure: impl FnOnce(&mut verdict_worker::WorkerConfig),
    ) -> verdict_worker::Worker {
        let mut config = verdict_worker::WorkerConfig::default();
        config.mail.mail_dir = self._data.path().join("mail");
        configure(&mut config);
        verdict_worker::Worker::new(
            self.state.store.clone(),
            self.state.clock.clone(),
            self.state.settings,
            config,
        )
        .expect("a valid worker configuration")
    }

    /// Runs worker steps until nothing is due (bounded).
    pub async fn drain(&self, worker: &verdict_worker::Worker) {
        for _ in 0..100 {
            if worker.try_deliver_batch().await.expect("a worker step")
                == verdict_worker::Step::EmptyQueue
            {
                return;
            }
        }
        panic!("the outbox did not drain in 100 steps");
    }

    /// Drains, moves the clock an hour, and again, until `done` holds.
    pub async fn deliver_until(
        &self,
        worker: &verdict_worker::Worker,
        rounds: usize,
        mut done: impl AsyncFnMut() -> bool,
    ) {
        for _ in 0..rounds {
            self.drain(worker).await;
            if done().await {
                return;
            }
            self.advance(3600).await;
        }
        panic!("not done after {rounds} rounds of delivery");
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    pub async fn counts(&self) -> BTreeMap<&'static str, i64> {
        self.state.store.table_counts().await.expect("counts")
    }
}

/// `(status, reason, billable_seconds)` of an end reply.
pub fn outcome(reply: &Reply) -> (String, String, i64) {
    let outcome = &reply.ok()["outcome"];
    (
        outcome["status"].as_str().unwrap().to_owned(),
        outcome["reason"].as_str().unwrap().to_owned(),
        outcome["billable_seconds"].as_i64().unwrap(),
    )
}

pub fn expect(status: &str, reason: &str, billable_seconds: i64) -> (String, String, i64) {
    (status.to_owned(), reason.to_owned(), billable_seconds)
}

/// Starts `verdict serve` as configured in `command` (stdout piped) and
/// waits for its listening address; its output is drained from then on.
/// `verdict serve` on a free loopback port, in `dir`, on `database_url`,
/// signing with [`SECRET`], its outbox worker off; callers add the rest.
pub fn serve_command(dir: &std::path::Path, database_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_verdict"));
    command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .current_dir(dir)
        .env("VERDICT_DATABASE_URL", database_url)
        .env("VERDICT_JWT_SECRET", SECRET)
        .env("VERDICT_WORKER", "off");
    command
}

pub async fn serve_process(
    command: &mut tokio::process::Command,
) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start verdict serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(address) = line.strip_prefix("verdict listening on ") {
                return address.trim().to_owned();
            }
        }
        panic!("verdict serve exited before listening");
    })
    .await
    .expect("verdict serve starts within a minute");
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// The verification report's section `name`.
pub fn section<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|section| section["name"] == name)
        .unwrap_or_else(|| panic!("no section {name} in {report}"))
}
