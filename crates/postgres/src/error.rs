//! Errors of the PostgreSQL connectors, classified once, from the SQLSTATE the server sent.
//!
//! - **transient**: the connection broke (class `08`), the server is shutting down or
//!   starting (`57P01`-`57P03`), out of resources (class `53`), a serialization failure or
//!   deadlock (`40001`, `40P01`), or an I/O error without a SQLSTATE.
//! - **fatal**: everything else (authentication, a missing database or table, a syntax or
//!   type error, a constraint violated by a whole batch): nothing works until a person acts.

use tokio_postgres::error::SqlState;
use tributary_core::error::{Classify, ConnectorError, ErrorClass};

/// What went wrong in the PostgreSQL source or sink.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A statement or the connection failed; `what` says which operation, on which table.
    #[error("{what}: {}", describe(source))]
    Query {
        /// The operation: `connect to …`, `COPY public.orders`.
        what: String,
        /// The driver's error (with the server's message, detail and hint).
        source: tokio_postgres::Error,
    },
    /// The replication connection failed, or the server refused a replication command.
    #[error("{what}: {message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Replication {
        /// The operation.
        what: String,
        /// The SQLSTATE, when the server sent an error (none for I/O errors).
        code: Option<String>,
        /// What happened.
        message: String,
    },
    /// The configuration or a stored position cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The data cannot be read or written as it is (a COPY stream that does not parse, a
    /// column type the sink cannot write).
    #[error("{0}")]
    Data(String),
}

/// The driver's message plus the server's detail and hint, which `Display` leaves out.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}

impl PgError {
    /// Wraps a driver error with what was being done.
    pub fn query(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        PgError::Query {
            what: what.into(),
            source,
        }
    }
}

/// The class of a driver error.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        None => {
            if e.is_closed() || std::error::Error::source(e).is_some() {
                ErrorClass::Transient
            } else {
                ErrorClass::Fatal
            }
        }
        Some(code) => {
            let c = code.code();
            if c.starts_with("08")
                || c.starts_with("53")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Fatal
            }
        }
    }
}

impl Classify for PgError {
    fn class(&self) -> ErrorClass {
        match self {
            PgError::Query { source, .. } => classify(source),
            PgError::Replication { code: None, .. } => ErrorClass::Transient,
            PgError::Replication { code: Some(c), .. } => {
                if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Fatal
                }
            }
            PgError::Invalid(_) | PgError::Data(_) => ErrorClass::Fatal,
        }
    }
}

impl From<PgError> for ConnectorError {
    fn from(e: PgError) -> Self {
        ConnectorError::classified(e)
    }
}
