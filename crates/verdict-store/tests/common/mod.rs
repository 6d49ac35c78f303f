//! What the store's integration tests share: a store on a real database of
//! each backend (a temporary SQLite file; a PostgreSQL database of its own),
//! and `on_both!`, which runs a test body once on each.

// Each test crate uses what it needs of this module.
#![allow(dead_code)]

use std::sync::Arc;

use sqlx::Connection;
use verdict_store::Store;

pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<verdict_testing::TestDatabase>,
}

pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db", dir.path().display());
    Fixture {
        store: verdict_store::open(&url).await.unwrap(),
        url,
        _sqlite: Some(dir),
        _postgres: None,
    }
}

pub async fn postgres() -> Fixture {
    let database = verdict_testing::shared_server().create_database().await;
    let store = verdict_store::open(&database.url).await.unwrap();
    Fixture { store, url: database.url.clone(), _sqlite: None, _postgres: Some(database) }
}

/// Each named `async fn(Fixture)` as a test on SQLite and on PostgreSQL
/// (`…::sqlite::name`, `…::postgres::name`).
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::sqlite().await).await })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::postgres().await).await })+
        }
    };
}

impl Fixture {
    /// Runs a statement with one text parameter behind the store's back.
    pub async fn execute(&self, statement: &'static str, parameter: &str) {
        if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(statement).bind(parameter).execute(&mut connection).await.unwrap();
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(statement).bind(parameter).execute(&mut connection).await.unwrap();
        }
    }
}
