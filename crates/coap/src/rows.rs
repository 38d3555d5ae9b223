//! Readings → batches, shared by both connectors: payload columns through
//! [`tributary_formats::payload`], plus `_path`, `_source` and `_received_at`; bad payloads
//! to the dead-letter destination; positions as a local sequence number.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{Field, Schema};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tributary_core::dead_letter::Rejected;
use tributary_core::{Batch, BatchMeta, ConnectorError, Position, SourceContext};
use tributary_formats::payload::{PayloadDecoder, PayloadFormat};

use crate::CoapError;

/// Columns every row gets, after the payload's.
pub const OWN_COLUMNS: [&str; 3] = ["_path", "_source", "_received_at"];

/// The position of a CoAP stream: readings received before this point, counted locally (a
/// CoAP server keeps no history to resume from: what matters is that a replayed batch gets
/// the same position, so that a file sink overwrites instead of duplicating).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoapPosition {
    /// Readings received before this point.
    pub seq: u64,
}

pub(crate) fn position(seq: u64) -> Position {
    Position::encode(&CoapPosition { seq }).expect("a position serialises")
}

/// One reading: a notification, a poll response or a device's request.
pub(crate) struct Reading {
    pub seq: u64,
    pub path: String,
    pub source: String,
    pub payload: Vec<u8>,
    pub received_at_ms: i64,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Collects readings and emits them as batches.
pub(crate) struct Batcher {
    stream: Arc<str>,
    decoder: PayloadDecoder,
    pending: Vec<Reading>,
    start: u64,
    next: u64,
    bytes: u64,
    deadline: Option<Instant>,
    batch_size: usize,
    timeout: Duration,
}

impl Batcher {
    /// A batcher resuming at the committed position of `stream`.
    pub fn new(
        ctx: &SourceContext,
        stream: &str,
        format: PayloadFormat,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        let start = match ctx.checkpoint(stream) {
            Some(p) => {
                p.decode::<CoapPosition>()
                    .map_err(|e| {
                        ConnectorError::fatal(format!(
                    "stream {stream}: the committed position {p} is not a CoAP position: {e}"
                ))
                        .with_hint("run `tributary state reset <pipeline file>` or change `stream`")
                    })?
                    .seq
            }
            None => 0,
        };
        let stored = ctx.stored_schema(stream)?;
        Ok(Batcher {
            stream: stream.into(),
            decoder: PayloadDecoder::new(
                format,
                ctx.schema_policy(),
                stored.as_ref(),
                &OWN_COLUMNS,
            ),
            pending: Vec::new(),
            start,
            next: start,
            bytes: 0,
            deadline: None,
            batch_size,
            timeout,
        })
    }

    /// Adds a reading; returns its sequence number.
    pub fn push(&mut self, path: String, source: String, payload: Vec<u8>) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.bytes += payload.len() as u64;
        self.pending.push(Reading {
            seq,
            path,
            source,
            payload,
            received_at_ms: now_ms(),
        });
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.timeout);
        seq
    }

    /// Whether the batch is full.
    pub fn full(&self) -> bool {
        self.pending.len() >= self.batch_size
    }

    /// When the batch must be emitted.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Emits the pending readings (rejected ones to the dead-letter destination). Returns the
    /// reason for each rejected reading, by sequence number.
    pub async fn emit(
        &mut self,
        ctx: &SourceContext,
        commit_now: bool,
    ) -> Result<Vec<(u64, String)>, ConnectorError> {
        self.deadline = None;
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let readings = std::mem::take(&mut self.pending);
        let (start, end) = (self.start, self.next);
        self.start = end;
        let bytes = std::mem::take(&mut self.bytes);
        let payloads: Vec<&[u8]> = readings.iter().map(|r| &r.payload[..]).collect();
        let decoded = self
            .decoder
            .decode(&payloads)
            .map_err(|e| ConnectorError::classified(CoapError::Internal(e.to_string())))?;
        let mut rejected_out = Vec::new();
        for r in decoded.rejected {
            let reading = &readings[r.index];
            rejected_out.push((reading.seq, r.message.clone()));
            let rejected = Rejected {
                stream: self.stream.to_string(),
                position: Some(position(reading.seq)),
                message: r.message,
                location: Some(format!(
                    "{}{} (reading {})",
                    reading.source, reading.path, reading.seq
                )),
                raw: reading.payload.clone(),
                headers: Vec::new(),
            };
            if ctx.reject(rejected).await.is_err() {
                return Ok(rejected_out);
            }
        }
        let data = if decoded.kept.is_empty() {
            RecordBatch::new_empty(Arc::new(Schema::empty()))
        } else {
            let kept: Vec<&Reading> = decoded.kept.iter().map(|&i| &readings[i]).collect();
            let payload = decoded.batch;
            let mut fields: Vec<Arc<Field>> = payload.schema().fields().iter().cloned().collect();
            let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
            let own: [ArrayRef; 3] = [
                Arc::new(StringArray::from_iter_values(kept.iter().map(|r| &r.path))),
                Arc::new(StringArray::from_iter_values(
                    kept.iter().map(|r| &r.source),
                )),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        kept.iter().map(|r| r.received_at_ms),
                    )
                    .with_timezone("UTC"),
                ),
            ];
            for (name, col) in OWN_COLUMNS.iter().zip(own) {
                if fields.iter().any(|f| f.name() == name) {
                    return Err(ConnectorError::classified(CoapError::ColumnClash {
                        column: name.to_string(),
                    }));
                }
                fields.push(Arc::new(Field::new(*name, col.data_type().clone(), false)));
                columns.push(col);
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| ConnectorError::classified(CoapError::Internal(e.to_string())))?
        };
        let mut meta = BatchMeta::new(self.stream.clone(), position(start), position(end), bytes);
        meta.discarded = decoded.discarded;
        meta.commit_now = commit_now;
        let _ = ctx.emit(Batch { data, meta }).await;
        Ok(rejected_out)
    }
}

/// The committed sequence of `stream` in a committed-positions map.
pub(crate) fn committed_seq(
    committed: &tributary_core::source::Committed,
    stream: &str,
) -> Option<u64> {
    committed
        .get(stream)
        .and_then(|p| p.decode::<CoapPosition>().ok())
        .map(|p| p.seq)
}
