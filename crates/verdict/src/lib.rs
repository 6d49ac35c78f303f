//! The `verdict` binary as a library: configuration, wiring and the
//! application entry point, so black-box tests start exactly what
//! `verdict serve` starts.

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rand::RngCore;
use tokio::net::TcpListener;
use verdict_http::{AppState, JwtKeys, JwtSecret};
use verdict_store::Settings;
use verdict_store::clock::{Clock, ManualClock, SystemClock};

use crate::config::{ClockKind, Config};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A bound, wired server, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens and migrates the database, binds the listener (port 0 picks a
    /// free port) and wires the routes.
    pub async fn build(config: &Config, secret: &JwtSecret) -> Result<Application, BoxError> {
        let policies = config.policies()?;
        let store = verdict_store::open(&config.database_url).await?;
        let clock: Arc<dyn Clock> = match config.clock {
            ClockKind::System => Arc::new(SystemClock),
            ClockKind::Manual => Arc::new(ManualClock::starting_at(SystemClock.now())),
        };
        let listener = TcpListener::bind(&config.bind)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", config.bind))?;
        let state = AppState {
            store,
            clock,
            settings: Settings {
                policies,
                payout_provider: config.payout_provider(),
            },
            jwt: Arc::new(JwtKeys::new(secret)),
        };
        Ok(Application { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let router = verdict_http::router(self.state);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// The configured JWT secret, or a random one for this process.
pub fn secret_or_random(config: &Config) -> (JwtSecret, bool) {
    match &config.jwt_secret {
        Some(secret) => (JwtSecret::new(secret.expose().as_bytes().to_vec()), false),
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            (JwtSecret::new(bytes.to_vec()), true)
        }
    }
}
