//! Test support: a real PostgreSQL server for the test suite.
//!
//! By default the first test that needs one starts a throwaway cluster
//! (`initdb` + `pg_ctl` into a temporary folder, on a free loopback port,
//! durability off for speed) shared by the whole test process; a watchdog
//! process stops it and deletes its folder when the test process exits,
//! however it exits. With `VERDICT_TEST_DATABASE_URL` set, that server is used
//! instead. Either way each test gets a database of its own, dropped after.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// A PostgreSQL server tests may create databases on.
pub struct PgServer {
    /// URL of the `postgres` maintenance database, as a superuser.
    admin_url: String,
    /// The cluster we started, if we started one.
    cluster: Option<Cluster>,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The server shared by this test process.
pub fn shared_server() -> &'static PgServer {
    SHARED.get_or_init(|| match std::env::var("VERDICT_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => PgServer { admin_url: url, cluster: None },
        _ => {
            let cluster = Cluster::start();
            PgServer { admin_url: cluster.url("postgres"), cluster: Some(cluster) }
        }
    })
}

impl PgServer {
    /// Creates an empty database and returns it; it is dropped with the
    /// returned value.
    pub async fn create_database(&self) -> TestDatabase {
        let name =
            format!("verdict_t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to the test PostgreSQL server");
        // The name is generated above from digits and letters only. The
        // collation is a linguistic one, as on many production servers
        // (en_US): it orders text otherwise than bytes ('Z9' after 'z-1'),
        // so a query whose order the service relies on is tested under it.
        // (ICU, so that it needs no operating-system locale.)
        let create = format!(
            "CREATE DATABASE {name} TEMPLATE template0 \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        TestDatabase {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
        }
    }

    pub fn is_managed(&self) -> bool {
        self.cluster.is_some()
    }
}

/// A database of one test. Dropping it drops the database.
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        // Drop runs inside the test's runtime: do the async work on a thread
        // of its own.
        let _ = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await.ok()?;
                admin.close().await.ok()
            })
        })
        .join();
    }
}

/// Replaces the database name of a `postgres://…/db?…` URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// A PostgreSQL cluster of our own in a temporary folder.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Cluster {
    /// Initialises and starts a new cluster on a free loopback port.
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// Like [`Cluster::start`], with `ssl = on`, serving this certificate
    /// chain and key (PEM). The server's files are its own (the `postgres`
    /// user's when we are root) and the key is mode 0600, as PostgreSQL
    /// demands.
    pub fn start_with_tls(certificate_pem: &str, private_key_pem: &str) -> Cluster {
        Cluster::start_with(Some((certificate_pem, private_key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Cluster {
        let bin = postgres_bin_dir();
        let as_postgres_user = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "verdict-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster folder");
        let cluster = Cluster { dir, bin, port: free_port(), as_postgres_user };
        if as_postgres_user {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&cluster.dir));
        }
        let data = cluster.data_dir();
        run(cluster.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]));
        if let Some((certificate_pem, private_key_pem)) = tls {
            cluster.install_tls(certificate_pem, private_key_pem);
        }
        cluster.watch_for_exit();
        cluster.resume();
        cluster
    }

    /// Writes `server.crt` and `server.key` into the data folder (where
    /// `ssl_cert_file` and `ssl_key_file` look by default) and turns `ssl`
    /// on in `postgresql.conf`.
    fn install_tls(&self, certificate_pem: &str, private_key_pem: &str) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let key = data.join("server.key");
        std::fs::write(data.join("server.crt"), certificate_pem).expect("write server.crt");
        std::fs::write(&key, private_key_pem).expect("write server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("make server.key private");
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut file| file.write_all(b"\nssl = on\n"))
            .expect("turn ssl on in postgresql.conf");
        if self.as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join("server.crt"))
                .arg(&key));
        }
    }

    /// The port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A command from PostgreSQL's bin folder, run as `postgres` when we are
    /// root (PostgreSQL refuses to run as root).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts (or restarts) the server and waits until it accepts
    /// connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]));
    }

    /// Stops the server as an operator would (`-m fast`: sessions are
    /// terminated, committed work is flushed first; the cluster runs with
    /// asynchronous commit, which an immediate stop would cut short).
    pub fn stop(&self) {
        let args = ["-m", "fast", "-w", "stop"];
        run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args(args));
    }

    /// A detached shell that stops the cluster and deletes its folder once
    /// this process is gone, even if it panicked or was killed.
    fn watch_for_exit(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres_user {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data_dir().display()
            )
        } else {
            format!("{} -D {} -m immediate stop", pg_ctl.display(), self.data_dir().display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        // Never waited for on purpose: it must outlive this process.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster watchdog");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Where `initdb` and `pg_ctl` are: `PG_BIN`, the PATH, or Debian's folder.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(path) = std::env::var("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file())
    {
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.filter_map(|entry| entry.ok().map(|e| e.path().join("bin"))).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|dir| dir.join("initdb").is_file())
        .expect("PostgreSQL's initdb not found: install postgresql, set PG_BIN, or set VERDICT_TEST_DATABASE_URL")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("an address").port()
}

/// Waits until `check` holds, polling, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(with_database("postgres://u@h:1/postgres", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
