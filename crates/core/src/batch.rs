//! Batches and positions.
//!
//! A [`Batch`] is an Arrow [`RecordBatch`] for one stream plus [`BatchMeta`]: the stream name,
//! the source position range it covers and, where the source has it, per-row metadata.
//!
//! A [`Position`] is opaque to the runtime: each source serialises its own position type
//! (byte offset, LSN, partition→offset map, API cursor) into it and decodes it back on resume.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An opaque, serialisable source position.
///
/// The runtime stores it, compares it for equality and hashes it into deterministic names; only
/// the source that made it knows what is inside.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(serde_json::Value);

impl Position {
    /// Wraps a source's own position type.
    pub fn encode<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_value(value).map(Position)
    }

    /// Reads the source's own position type back.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.0)
    }

    /// The position as JSON (for `state show` and dead-letter records).
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }

    /// Parses a position stored as JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text).map(Position)
    }

    /// Compact JSON text, as stored in the state store.
    pub fn to_json_string(&self) -> String {
        self.0.to_string()
    }

    /// A stable 64-bit key (FNV-1a of the compact JSON and the given scope), as 16 hex digits.
    ///
    /// Sinks use it to name output deterministically, so that a batch replayed after a crash
    /// overwrites its earlier copy instead of duplicating it. FNV-1a is written here (eight lines)
    /// rather than pulled in as a crate because its output must never change between versions.
    pub fn stable_key(&self, scope: &str) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in scope
            .as_bytes()
            .iter()
            .chain(std::iter::once(&0u8))
            .chain(self.to_json_string().as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.0)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Per-row metadata for sources that have it (Kafka key/headers/timestamp, CDC op, MQTT topic).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowMeta {
    /// Message key, where the source has one.
    pub key: Option<Vec<u8>>,
    /// Message headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Anything else the source knows about the row (topic, QoS, CDC op, LSN, ...).
    pub attributes: BTreeMap<String, String>,
    /// The row's own source position, where the source has one per row (Kafka:
    /// `{"topic", "partition", "offset"}`): a sink that refuses this one row dead-letters it
    /// with its exact origin.
    pub origin: Option<Position>,
    /// Where the row is, for a person (`orders/3@1042`).
    pub location: Option<String>,
}

/// What a batch covers and where it came from.
#[derive(Clone, Debug)]
pub struct BatchMeta {
    /// The stream (file set, table, endpoint, topic) the rows belong to.
    pub stream: Arc<str>,
    /// Position before the first row: resuming here reproduces this batch.
    pub start: Position,
    /// Position after the last row: committed once the batch is durable.
    pub end: Position,
    /// Bytes the source consumed to produce this batch (for throughput and progress).
    pub source_bytes: u64,
    /// Per-row metadata, one entry per row, where the source has it.
    pub rows: Option<Vec<RowMeta>>,
    /// Files this batch completes: recorded in the file ledger in the same transaction that
    /// commits `end`, so a file is marked ingested exactly when its last row is durable.
    pub completes: Vec<crate::state::FileRecord>,
    /// Source records covered by this batch that the schema policy discarded
    /// (`discard_rows`): counted as skipped in the run summary and metrics.
    pub discarded: u64,
    /// Flush the sink and commit as soon as this batch is written, without waiting for the
    /// `commit_interval`. For sources that cannot receive more until they acknowledge what
    /// they have (an MQTT broker stops sending once its in-flight window of unacknowledged
    /// messages is full): without it they would stall until the timer fires.
    pub commit_now: bool,
}

impl BatchMeta {
    /// Metadata with no per-row data, no completed files and nothing discarded.
    pub fn new(stream: Arc<str>, start: Position, end: Position, source_bytes: u64) -> Self {
        BatchMeta {
            stream,
            start,
            end,
            source_bytes,
            rows: None,
            completes: Vec::new(),
            discarded: 0,
            commit_now: false,
        }
    }
}

/// One Arrow record batch of one stream, with its metadata.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The rows.
    pub data: RecordBatch,
    /// Stream, position range and per-row metadata.
    pub meta: BatchMeta,
}

impl Batch {
    /// Number of rows in the batch.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Offset {
        offset: u64,
    }

    #[test]
    fn position_round_trips_and_keys_are_stable() {
        let p = Position::encode(&Offset { offset: 42 }).unwrap();
        assert_eq!(p.decode::<Offset>().unwrap(), Offset { offset: 42 });
        let again = Position::from_json_str(&p.to_json_string()).unwrap();
        assert_eq!(p, again);
        // The key is part of on-disk names: it must never change.
        assert_eq!(p.stable_key("s"), again.stable_key("s"));
        assert_ne!(p.stable_key("s"), p.stable_key("t"));
        assert_eq!(p.stable_key("s").len(), 16);
        assert_eq!(p.stable_key("orders"), "666ea491a7464a5b");
    }
}
