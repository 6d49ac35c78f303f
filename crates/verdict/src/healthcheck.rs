//! `verdict healthcheck`: asks a running `verdict serve` (or `verdict
//! worker`) for its `/healthz`, so a container's `HEALTHCHECK` needs no
//! curl in the image.
//!
//! Liveness only: `/healthz` answers 200 while the process runs, even when
//! the database is down (the service rides an outage out and answers 503
//! meanwhile); `/readyz` is never asked, so a supervisor never restarts a
//! process for the database's sake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long the whole request may take by default: a live process answers
/// `/healthz` without touching the database, in milliseconds.
pub const TIMEOUT_SECONDS_DEFAULT: u64 = 3;

/// The `/healthz` URL of a process listening on `bind`. An unspecified
/// address (`0.0.0.0`, `[::]`) listens on every interface but is not an
/// address to connect to: it is asked at the loopback of its family.
pub fn healthz_url(bind: &str) -> String {
    let host = match bind.parse::<SocketAddr>() {
        Ok(address) => {
            let ip = match address.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            SocketAddr::new(ip, address.port()).to_string()
        }
        // A host name and port (`localhost:8080`), asked as written.
        Err(_) => bind.to_owned(),
    };
    format!("http://{host}/healthz")
}

/// Why a check failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("{url} answered {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("{url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// GETs `url`; `Ok` with its status line when it answers 200 within
/// `timeout`. No proxy (the process asked is local) and no redirect.
pub async fn check(url: &str, timeout: Duration) -> Result<String, Unhealthy> {
    let unreachable = |reason: String| Unhealthy::Unreachable { url: url.to_owned(), reason };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| unreachable(error.to_string()))?;
    let response = client.get(url).send().await.map_err(|error| {
        if error.is_timeout() {
            Unhealthy::Timeout { url: url.to_owned(), seconds: timeout.as_secs() }
        } else {
            unreachable(error_chain(&error))
        }
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        Ok(format!("{url} answered {status}"))
    } else {
        Err(Unhealthy::Status { url: url.to_owned(), status })
    }
}

/// Why a request failed: reqwest's error names the URL again, its sources
/// say why (`client error (Connect): tcp connect error: Connection
/// refused`), `: `-separated.
fn error_chain(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() { error.to_string() } else { causes.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::healthz_url;

    #[test]
    fn an_unspecified_bind_is_asked_at_its_loopback() {
        assert_eq!(healthz_url("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(healthz_url("[::]:8081"), "http://[::1]:8081/healthz");
    }

    #[test]
    fn a_specific_bind_is_asked_as_it_is() {
        assert_eq!(healthz_url("127.0.0.1:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(healthz_url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
        assert_eq!(healthz_url("[::1]:8080"), "http://[::1]:8080/healthz");
        assert_eq!(healthz_url("localhost:8080"), "http://localhost:8080/healthz");
    }
}
