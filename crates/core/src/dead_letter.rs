//! Dead letters: records that can never be written, kept with the reason.
//!
//! A source (or the runtime) turns a bad record into a [`Rejected`] value; the runtime stamps
//! it with the pipeline, error class and time, and writes it to the pipeline's
//! [`DeadLetterSink`] **before** committing any position after it, so a dead letter is never
//! lost either. The default destination is [`NdjsonDeadLetter`]: one JSON object per line:
//!
//! ```json
//! {"pipeline":"orders","stream":"orders","position":{"offset":1042},"error_class":"record",
//!  "message":"line 17: expected 4 fields, found 3","location":"orders.csv:17",
//!  "raw":"17,alice,3.5","timestamp":"2026-11-25T10:00:00.000Z"}
//! ```
//!
//! After a crash, records dead-lettered after the last commit are written again on replay
//! (at-least-once): dedupe on `(stream, position)` if that matters.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::batch::Position;
use crate::error::ErrorClass;

/// A record a source could not turn into a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The stream it belongs to.
    pub stream: String,
    /// The source position of the record, where known.
    pub position: Option<Position>,
    /// What is wrong with it, for a person (names the field and the value).
    pub message: String,
    /// Where it is, for a person: `orders.csv:17`, `topic/3@1042`.
    pub location: Option<String>,
    /// The record's bytes, as received.
    pub raw: Vec<u8>,
    /// The record's headers as received, where it had any: a record coming back from a retry
    /// topic carries `tributary.attempts`, `tributary.first_failed_at` and
    /// `tributary.original.*`, which [`DeadLetterRecord::new`] continues.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Rejected {
    /// A row a sink refused, with what the source said about it: its origin, location and
    /// headers when the batch carried [`crate::RowMeta`].
    pub fn row(
        stream: &str,
        meta: Option<&crate::RowMeta>,
        message: String,
        raw: Vec<u8>,
    ) -> Rejected {
        let location = meta.and_then(|m| m.location.clone());
        let message = match &location {
            Some(l) => format!("{l}: {message}"),
            None => message,
        };
        Rejected {
            stream: stream.to_string(),
            position: meta.and_then(|m| m.origin.clone()),
            message,
            location,
            raw,
            headers: meta.map(|m| m.headers.clone()).unwrap_or_default(),
        }
    }
}

/// The header a retried record carries with its attempt count.
pub const ATTEMPTS_HEADER: &str = "tributary.attempts";
/// The header with the time of a record's first failure (RFC 3339).
pub const FIRST_FAILED_HEADER: &str = "tributary.first_failed_at";
/// The prefix of the headers naming where a retried record first came from.
pub const ORIGINAL_PREFIX: &str = "tributary.original.";

/// One line of a dead-letter destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The stream.
    pub stream: String,
    /// The record's source position, where known.
    pub position: Option<Position>,
    /// Why it failed, by class.
    pub error_class: ErrorClass,
    /// What is wrong.
    pub message: String,
    /// Where it is (file and line, topic/partition@offset).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<String>,
    /// The payload as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw: Option<String>,
    /// The payload as hex when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_hex: Option<String>,
    /// When it was dead-lettered (RFC 3339, UTC).
    pub timestamp: String,
    /// How many times the record has failed, this time included (1 unless it came back from
    /// a retry topic).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub attempts: u32,
    /// When it first failed (RFC 3339, UTC): `timestamp` unless it was retried.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_failed_at: Option<String>,
    /// Where a retried record first came from: the `tributary.original.*` headers it carried
    /// (`topic`, `partition`, `offset`), by name without the prefix.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub original: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl DeadLetterRecord {
    /// Stamps a rejected record.
    pub fn new(pipeline: &str, class: ErrorClass, rejected: Rejected) -> Self {
        let header = |name: &str| {
            rejected
                .headers
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        };
        let attempts = header(ATTEMPTS_HEADER)
            .and_then(|a| a.trim().parse::<u32>().ok())
            .map_or(1, |a| a.saturating_add(1));
        let first_failed_at = header(FIRST_FAILED_HEADER);
        let original: BTreeMap<String, String> = rejected
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(ORIGINAL_PREFIX)?;
                Some((name.to_string(), String::from_utf8(v.clone()).ok()?))
            })
            .collect();
        let (raw, raw_hex) = match String::from_utf8(rejected.raw) {
            Ok(text) => (Some(text), None),
            Err(bytes) => (
                None,
                Some(
                    bytes
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                ),
            ),
        };
        DeadLetterRecord {
            pipeline: pipeline.to_string(),
            stream: rejected.stream,
            position: rejected.position,
            error_class: class,
            message: rejected.message,
            location: rejected.location,
            raw,
            raw_hex,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            attempts,
            first_failed_at,
            original,
        }
    }
}

/// A dead-letter destination failed; always fatal (we will not drop the record).
#[derive(Debug, thiserror::Error)]
#[error("dead-letter destination {destination}: {message}")]
pub struct DeadLetterError {
    /// The destination (a path, a topic).
    pub destination: String,
    /// What went wrong.
    pub message: String,
}

/// Where dead letters go.
#[async_trait::async_trait]
pub trait DeadLetterSink: Send {
    /// Appends one record (may buffer).
    async fn write(&mut self, record: &DeadLetterRecord) -> Result<(), DeadLetterError>;
    /// Makes every record written so far durable.
    async fn flush(&mut self) -> Result<(), DeadLetterError>;
    /// A short description for logs and the run summary.
    fn describe(&self) -> String;
}

/// The default destination: an NDJSON file, appended to, created on the first record.
pub struct NdjsonDeadLetter {
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl NdjsonDeadLetter {
    /// A destination at `path` (not created until a record arrives).
    pub fn new(path: impl AsRef<Path>) -> Self {
        NdjsonDeadLetter {
            path: path.as_ref().to_path_buf(),
            file: None,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> DeadLetterError {
        DeadLetterError {
            destination: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Reads every record of an NDJSON dead-letter file (for tests and `dlq` tooling).
    pub fn read_all(path: impl AsRef<Path>) -> std::io::Result<Vec<DeadLetterRecord>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines()
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for NdjsonDeadLetter {
    async fn write(&mut self, record: &DeadLetterRecord) -> Result<(), DeadLetterError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.err(e))?;
            self.file = Some(BufWriter::new(file));
        }
        let mut line = serde_json::to_vec(record).map_err(|e| self.err(e))?;
        line.push(b'\n');
        let file = self.file.as_mut().expect("opened above");
        file.write_all(&line).map_err(|e| DeadLetterError {
            destination: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    async fn flush(&mut self) -> Result<(), DeadLetterError> {
        if let Some(file) = self.file.as_mut() {
            let result = file.flush().and_then(|_| file.get_ref().sync_data());
            result.map_err(|e| DeadLetterError {
                destination: self.path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_with_reason_position_and_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq/p.ndjson");
        let mut dlq = NdjsonDeadLetter::new(&path);
        dlq.flush().await.unwrap();
        assert!(!path.exists(), "no file until there is a dead letter");
        let pos = Position::encode(&serde_json::json!({"offset": 7})).unwrap();
        for raw in [b"1,a,b".to_vec(), vec![0xff, 0x00]] {
            let rejected = Rejected {
                stream: "orders".into(),
                position: Some(pos.clone()),
                message: "line 3: expected 2 fields, found 3".into(),
                location: Some("orders.csv:3".into()),
                raw,
                headers: Vec::new(),
            };
            dlq.write(&DeadLetterRecord::new("p", ErrorClass::Record, rejected))
                .await
                .unwrap();
        }
        dlq.flush().await.unwrap();
        let back = NdjsonDeadLetter::read_all(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].raw.as_deref(), Some("1,a,b"));
        assert_eq!(back[0].position, Some(pos));
        assert_eq!(back[0].location.as_deref(), Some("orders.csv:3"));
        assert_eq!(back[1].raw, None);
        assert_eq!(back[1].raw_hex.as_deref(), Some("ff00"));
        assert_eq!(back[1].error_class, ErrorClass::Record);
    }
}
