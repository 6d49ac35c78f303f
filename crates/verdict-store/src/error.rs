//! Storage errors. No `sqlx::Error` escapes the store: every failure is
//! classified here into what the caller can act on.

/// What went wrong in the store, in terms a caller can answer to.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// The change contradicts the stored state (ended session, duplicate id).
    #[error("{0}")]
    Conflict(String),
    /// The request contradicts an earlier one (an idempotency key reused
    /// with another body).
    #[error("{0}")]
    Unprocessable(String),
    /// A bound on what one caller may make the store keep is reached
    /// (`Limits`): nothing was written.
    #[error("{0}")]
    LimitReached(String),
    /// The database cannot be reached or is too busy right now: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored value that cannot be what the schema says it is.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else: a bug or an unexpected database answer.
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn not_found(entity: &'static str, id: &str) -> StoreError {
        StoreError::NotFound { entity, id: id.to_owned() }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        match &error {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(tls_failure(&error).unwrap_or_else(|| error.to_string()))
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Database(database) => {
                let code = database.code().unwrap_or_default();
                if database.is_unique_violation() {
                    // The database's words (table, constraint, values) are
                    // for the log; a caller learns only what it can act on.
                    tracing::info!(
                        constraint = database.constraint().unwrap_or_default(),
                        message = database.message(),
                        "a write met a unique constraint"
                    );
                    StoreError::Conflict(CONFLICT_DETAIL.to_owned())
                } else if is_transient(&code) {
                    StoreError::Unavailable(database.message().to_owned())
                } else {
                    StoreError::Internal(error.to_string())
                }
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(error.to_string())
            }
            _ => StoreError::Internal(error.to_string()),
        }
    }
}

/// A TLS failure told as an operator acts on it (trust, host name,
/// validity, a server without TLS), rustls' own words kept in parentheses;
/// `None` if `error` is not one.
///
/// sqlx reports a refused certificate as an I/O error around rustls'
/// error (the handshake runs inside rustls' I/O), and a server that
/// answers "no TLS" as its own TLS error.
fn tls_failure(error: &sqlx::Error) -> Option<String> {
    let tls_error = match error {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        sqlx::Error::Tls(inner) => match inner.downcast_ref::<rustls::Error>() {
            Some(tls_error) => tls_error,
            None if inner.to_string() == "server does not support TLS" => {
                return Some(NO_TLS_DETAIL.to_owned());
            }
            None => return Some(format!("TLS to the database server cannot start: {inner}")),
        },
        _ => return None,
    };
    use rustls::CertificateError as Certificate;
    let explanation = match tls_error {
        rustls::Error::InvalidCertificate(
            Certificate::UnknownIssuer
            | Certificate::BadSignature
            | Certificate::UnhandledCriticalExtension,
        ) => {
            "the database server's TLS certificate is not trusted: no certificate authority \
             verdict trusts (the URL's sslrootcert, the system's roots) signed it"
        }
        rustls::Error::InvalidCertificate(
            Certificate::NotValidForName | Certificate::NotValidForNameContext { .. },
        ) => {
            "the database server's TLS certificate does not name the host in the URL (host name \
             mismatch): connect by a name the certificate lists"
        }
        rustls::Error::InvalidCertificate(
            Certificate::Expired
            | Certificate::ExpiredContext { .. }
            | Certificate::NotValidYet
            | Certificate::NotValidYetContext { .. },
        ) => "the database server's TLS certificate is expired or not yet valid",
        rustls::Error::InvalidCertificate(_) => "the database server's TLS certificate is refused",
        _ => "the TLS handshake with the database server failed",
    };
    Some(format!("{explanation} ({tls_error})"))
}

/// What a caller is told when the URL demands TLS of a server without it.
const NO_TLS_DETAIL: &str = "the database server does not support TLS, and the URL's sslmode \
     (require, verify-ca or verify-full) demands it: turn ssl on at the server, or choose \
     another sslmode";

/// What a caller is told of a unique violation: never the database's text.
pub const CONFLICT_DETAIL: &str = "the change conflicts with a record already stored (perhaps written at the same time); \
     nothing was changed";

/// Database error codes that mean "not now" rather than "never".
fn is_transient(code: &str) -> bool {
    // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
    let sqlite_busy = code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
    // PostgreSQL: connection exceptions (08…), operator intervention (57…),
    // insufficient resources (53…), lock not available (55P03).
    let postgres_down = code.starts_with("08")
        || code.starts_with("57")
        || code.starts_with("53")
        || code == "55P03"
        // Deadlock detected, serialization failure: this transaction lost,
        // a retry will not.
        || code == "40P01"
        || code == "40001";
    sqlite_busy || postgres_down
}
