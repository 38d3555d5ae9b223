//! Error classes and the error type connectors hand to the runtime.
//!
//! Every error is classified once, where it is created:
//! - [`ErrorClass::Transient`]: the same call may succeed later (network, 5xx, 429, broker or
//!   leader unavailable). The runtime retries it with backoff ([`crate::retry`]).
//! - [`ErrorClass::Record`]: one record can never be written (parse error, schema violation,
//!   encode failure). It goes to the dead-letter destination and the run goes on, as the
//!   pipeline's `on_error` policy says ([`crate::policy`]).
//! - [`ErrorClass::Fatal`]: nothing will work until a person changes something (bad config,
//!   auth failure, missing file). The run stops with a message that says what to fix.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the runtime must react to an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Retry with backoff.
    Transient,
    /// Dead-letter the record and go on.
    Record,
    /// Stop and tell the user what to fix.
    Fatal,
}

impl ErrorClass {
    /// The lower-case name used in logs, metrics labels and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Record => "record",
            ErrorClass::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anything that knows its own error class (implemented by every connector's error enum).
pub trait Classify {
    /// The class, decided where the error was made.
    fn class(&self) -> ErrorClass;
    /// A delay the server asked for (HTTP `Retry-After`, Kafka throttle time), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The error a connector returns to the runtime: a class, an optional server-given delay, an
/// optional hint for the operator, and the connector's own error as the cause.
#[derive(Debug, thiserror::Error)]
#[error("{source}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
pub struct ConnectorError {
    class: ErrorClass,
    retry_after: Option<Duration>,
    hint: Option<String>,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl ConnectorError {
    /// Wraps a connector error with the given class.
    pub fn new(
        class: ErrorClass,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ConnectorError {
            class,
            retry_after: None,
            hint: None,
            source: source.into(),
        }
    }

    /// Shorthand for a fatal error.
    pub fn fatal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Fatal, source)
    }

    /// Shorthand for a transient error.
    pub fn transient(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Transient, source)
    }

    /// Classifies a connector's own error through its [`Classify`] implementation.
    pub fn classified<E>(error: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        let class = error.class();
        let retry_after = error.retry_after();
        ConnectorError {
            class,
            retry_after,
            hint: None,
            source: Box::new(error),
        }
    }

    /// Adds a hint that tells the operator what to do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a server-given delay before the next retry.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The operator hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl Classify for ConnectorError {
    fn class(&self) -> ErrorClass {
        self.class
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Classifies an I/O error: interruptions and timeouts are transient, the rest fatal.
pub fn classify_io(error: &std::io::Error) -> ErrorClass {
    use std::io::ErrorKind::*;
    match error.kind() {
        Interrupted | TimedOut | WouldBlock | ConnectionReset | ConnectionAborted
        | ConnectionRefused | BrokenPipe => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_carries_the_hint() {
        let e =
            ConnectorError::fatal("orders.csv: permission denied").with_hint("chmod +r orders.csv");
        assert_eq!(
            e.to_string(),
            "orders.csv: permission denied (hint: chmod +r orders.csv)"
        );
        assert_eq!(e.class(), ErrorClass::Fatal);
    }

    #[test]
    fn io_errors_are_classified() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(classify_io(&refused), ErrorClass::Transient);
        assert_eq!(classify_io(&missing), ErrorClass::Fatal);
    }
}
