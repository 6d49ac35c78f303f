//! TLS to PostgreSQL: a throwaway cluster with `ssl = on` serving a
//! certificate for `localhost` signed by a certificate authority made here,
//! reached through `sslmode` and `sslrootcert` in the database URL, by the
//! app over HTTP and by `verdict migrate`, whose refusals must say what is
//! wrong.

use std::path::Path;
use std::process::Output;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::StatusCode;
use sqlx::Connection;
use verdict_store::StoreError;
use verdict_testing::Cluster;

use crate::support::{Backend, TestApp};

/// A certificate authority of the test's own.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A server certificate for `names` signed by `issuer`: (chain PEM, key PEM).
fn server_certificate(
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("server parameters");
    params.distinguished_name.push(DnType::CommonName, "verdict test server");
    let key = KeyPair::generate().expect("server key");
    let certificate = params.signed_by(&key, &**issuer).expect("server certificate");
    (certificate.pem(), key.serialize_pem())
}

/// `verdict migrate` on `url`, as an operator runs it.
fn migrate(url: &str, folder: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["migrate", "--database-url", url])
        .env_remove("VERDICT_DATABASE_URL")
        .current_dir(folder)
        .output()
        .expect("run verdict migrate")
}

/// Asserts `verdict migrate` on `url` fails, printing `words`; returns what
/// it printed.
#[track_caller]
fn migrate_is_refused(url: &str, folder: &Path, words: &str) -> String {
    let output = migrate(url, folder);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // A handshake refused is the database unavailable: exit 3 (README).
    assert_eq!(output.status.code(), Some(3), "{url} must be refused; it printed {stderr}");
    assert!(stderr.contains(words), "{url}: expected {words:?} in {stderr:?}");
    stderr
}

/// Whether a connection through `url` is encrypted, by the server's word.
async fn encrypted(url: &str) -> bool {
    let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut connection)
        .await
        .expect("read pg_stat_ssl");
    let _ = connection.close().await;
    ssl
}

#[track_caller]
fn unavailable(result: Result<std::sync::Arc<dyn verdict_store::Store>, StoreError>) -> String {
    match result {
        Err(StoreError::Unavailable(detail)) => detail,
        Err(other) => panic!("expected the database to be unavailable, got {other}"),
        Ok(_) => panic!("expected the connection to be refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_connects_verified_and_refuses_what_it_cannot_trust() {
    let folder = tempfile::tempdir().expect("temp dir");
    let authority_made_here = authority("verdict test CA");
    let other_authority = authority("some other CA");
    let ca = folder.path().join("ca.pem");
    let wrong_ca = folder.path().join("wrong-ca.pem");
    std::fs::write(&ca, authority_made_here.pem()).unwrap();
    std::fs::write(&wrong_ca, other_authority.pem()).unwrap();
    // For `localhost` only: 127.0.0.1 is the same server under a name the
    // certificate does not list.
    let (chain, key) = server_certificate(&["localhost"], &authority_made_here);
    let cluster = Cluster::start_with_tls(&chain, &key);
    let port = cluster.port();
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    let ca = ca.display();
    let verified = at("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));

    // verify-full with the CA that signed the server's certificate: the
    // schema is made, and the app serves a write and its read over it.
    let output = migrate(&verified, folder.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("sslmode=verify-full&sslrootcert={ca}")), "{stdout}");
    assert!(stdout.contains("schema up to date"), "{stdout}");
    assert!(encrypted(&verified).await, "verify-full is TLS");
    let app =
        TestApp::spawn(Backend::Postgres, |config| config.database_url = verified.clone()).await;
    app.create_session("tls-1").await;
    let session = app.get("/v1/sessions/tls-1", &app.admin()).await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.body["id"], "tls-1");
    drop(app);

    // The default mode, prefer, now negotiates TLS where the server offers
    // it (it used to connect in clear); require encrypts without verifying.
    assert!(encrypted(&at("localhost", "sslmode=prefer")).await, "prefer negotiates TLS");
    assert!(encrypted(&at("127.0.0.1", "sslmode=require")).await, "require is TLS");

    // A certificate authority that did not sign the server's certificate.
    let detail = migrate_is_refused(
        &at("localhost", &format!("sslmode=verify-full&sslrootcert={}", wrong_ca.display())),
        folder.path(),
        "certificate is not trusted",
    );
    assert!(detail.contains("database unavailable"), "{detail}");
    let refused = verdict_store::open(&at(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", wrong_ca.display()),
    ))
    .await;
    assert!(unavailable(refused).contains("not trusted"));

    // The right authority, but a host name the certificate does not list;
    // verify-ca, which checks the signature only, accepts that host.
    let detail = migrate_is_refused(
        &at("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")),
        folder.path(),
        "does not name the host in the URL (host name mismatch)",
    );
    assert!(detail.contains("\"127.0.0.1\""), "the host is named: {detail}");
    assert!(encrypted(&at("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);

    // A certificate file that is not there is named before any connection:
    // the configuration is wrong (exit 2), the database is not down.
    let output = migrate(
        &at("localhost", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        folder.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the sslrootcert file of the database URL cannot be read"), "{stderr}");

    // A server without TLS: require is refused, disable still works.
    let shared = verdict_testing::shared_server();
    let own_plain_cluster;
    let (plain, _database) = if shared.is_managed() {
        // The harness's cluster runs with ssl off.
        let database = shared.create_database().await;
        (database.url.clone(), Some(database))
    } else {
        own_plain_cluster = Cluster::start();
        (own_plain_cluster.url("postgres"), None)
    };
    let refused = verdict_store::open(&format!("{plain}?sslmode=require")).await;
    assert!(unavailable(refused).contains("does not support TLS"));
    migrate_is_refused(
        &format!("{plain}?sslmode=require"),
        folder.path(),
        "the database server does not support TLS",
    );
    let output = migrate(&format!("{plain}?sslmode=disable"), folder.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!encrypted(&format!("{plain}?sslmode=prefer")).await, "prefer falls back to clear");
}
