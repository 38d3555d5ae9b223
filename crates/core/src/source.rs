//! The [`Source`] trait and the [`SourceContext`] the runtime hands it.
//!
//! A source reads its input and calls [`SourceContext::emit`] for each batch. `emit` waits
//! while the channel to the sink is full: that wait *is* backpressure. Records it cannot turn
//! into rows go to [`SourceContext::reject`] with the reason; the runtime applies the
//! pipeline's `on_error` policy. On start a source resumes from
//! [`SourceContext::checkpoint`]; it must produce the same batches from the same position
//! (sinks name their output after batch positions, which makes replays overwrite, not
//! duplicate). It should return soon after [`SourceContext::is_stopping`] turns true.
//!
//! Sources that must acknowledge upstream (Kafka offsets, MQTT PUBACK, a replication slot)
//! watch [`SourceContext::committed`], which carries every position the runtime has made
//! durable, and may ask for an early commit with [`SourceContext::request_commit`] (or, for a
//! commit right after one particular batch, set [`crate::BatchMeta::commit_now`]). To
//! acknowledge the last batches on a graceful stop, such a source may also keep that receiver,
//! drop its `SourceContext` (which closes the channel to the sink, so the runtime makes the
//! final flush and commit) and read commits until the receiver reports the channel closed: the
//! runtime closes it right after its final commit, or when the run fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_schema::Schema;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Position};
use crate::dead_letter::Rejected;
use crate::error::ConnectorError;
use crate::state::StateStore;

/// A stream a source offers, with its schema where known.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// Stream name (the state store key).
    pub name: String,
    /// The Arrow schema, when the source knows or inferred it.
    pub schema: Option<Arc<Schema>>,
    /// Anything a person should know (file size, row estimate, inference sample).
    pub detail: Option<String>,
}

/// What travels from the source task to the sink task.
#[derive(Debug)]
pub enum Message {
    /// Rows to write.
    Batch(Batch),
    /// A record the source could not read.
    Rejected(Rejected),
}

/// The pipeline is stopping (the sink failed or the run was cancelled): return from `run`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pipeline is stopping")]
pub struct Stopped;

/// Progress of bounded work, for progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    rows: AtomicU64,
}

impl Progress {
    /// Announces how many source bytes the run will read (0 = unknown / unbounded).
    pub fn set_total_bytes(&self, bytes: u64) {
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }
    /// Source bytes to read in all (0 when unknown).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }
    /// Source bytes read so far.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes.load(Ordering::Relaxed)
    }
    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
    pub(crate) fn advance(&self, bytes: u64, rows: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Latest committed position per stream.
pub type Committed = Arc<BTreeMap<String, Position>>;

/// Everything a running source can ask of the runtime.
#[derive(Clone)]
pub struct SourceContext {
    pub(crate) pipeline: Arc<str>,
    pub(crate) tx: mpsc::Sender<Message>,
    pub(crate) checkpoints: Committed,
    pub(crate) stop: CancellationToken,
    pub(crate) progress: Arc<Progress>,
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) committed: watch::Receiver<Committed>,
    pub(crate) schema_policy: crate::schema::SchemaPolicy,
    pub(crate) commit_requested: Arc<tokio::sync::Notify>,
    pub(crate) wants_row_meta: bool,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) retries: Arc<AtomicU64>,
}

impl SourceContext {
    /// The pipeline name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Sends a batch to the sink, waiting while the channel is full (backpressure).
    pub async fn emit(&self, batch: Batch) -> Result<(), Stopped> {
        self.tx
            .send(Message::Batch(batch))
            .await
            .map_err(|_| Stopped)
    }

    /// Hands a bad record to the runtime, which applies the `on_error` policy.
    pub async fn reject(&self, rejected: Rejected) -> Result<(), Stopped> {
        self.tx
            .send(Message::Rejected(rejected))
            .await
            .map_err(|_| Stopped)
    }

    /// Counts `n` transient failures the source retried by itself (HTTP 503s asked again,
    /// broker reconnects): the run summary's `retries` and the `tributary_retries_total`
    /// metric with `operation` as its label (e.g. `http.get`).
    pub fn retried(&self, operation: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.retries.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .retries
            .get_or_create(&crate::metrics::OperationLabels {
                pipeline: self.pipeline.to_string(),
                operation: operation.to_string(),
            })
            .inc_by(n);
    }

    /// Reports how far a change-data-capture source is behind: the WAL bytes its server
    /// holds for `slot` beyond the position the pipeline confirmed (the
    /// `tributary_cdc_lag_bytes` gauge).
    pub fn cdc_lag(&self, slot: &str, bytes: u64) {
        self.metrics
            .cdc_lag
            .get_or_create(&crate::metrics::SlotLabels {
                pipeline: self.pipeline.to_string(),
                slot: slot.to_string(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Whether the sink can refuse single rows ([`crate::Sink::wants_row_meta`]): a source
    /// that can say where each row came from should then fill [`crate::BatchMeta::rows`]
    /// (with [`crate::RowMeta::origin`]), so a refused row is dead-lettered with its origin.
    /// Otherwise it can spare the per-row work.
    pub fn wants_row_meta(&self) -> bool {
        self.wants_row_meta
    }

    /// The committed position of a stream at start, if any.
    pub fn checkpoint(&self, stream: &str) -> Option<&Position> {
        self.checkpoints.get(stream)
    }

    /// Every stream's committed position at start.
    pub fn checkpoints(&self) -> &BTreeMap<String, Position> {
        &self.checkpoints
    }

    /// Whether the run was asked to stop (signal, or the sink failed).
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled() || self.tx.is_closed()
    }

    /// Whether the sink side is gone (it failed or finished): nothing emitted now will be
    /// written, and no further position will be committed.
    pub fn sink_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the run is asked to stop.
    pub async fn stopping(&self) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.tx.closed() => {}
        }
    }

    /// Progress counters (set the total when the work is bounded).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Positions as they are committed. The channel closes once the run has made its last
    /// commit (or failed): nothing received after that is durable.
    pub fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.clone()
    }

    /// Asks the runtime to flush the sink and commit what is durable now, instead of at the
    /// next `commit_interval` tick. Sources that ack upstream call it before they give work
    /// away (a Kafka partition revoked, a graceful stop) and then watch
    /// [`SourceContext::committed`]. Batches still in the channel are written first only if
    /// they arrive before the request is served: call again until the positions are covered.
    pub fn request_commit(&self) {
        self.commit_requested.notify_one();
    }

    /// The pipeline's schema evolution policy.
    pub fn schema_policy(&self) -> crate::schema::SchemaPolicy {
        self.schema_policy
    }

    /// The file ledger of a stream: files ingested completely by earlier runs.
    pub fn ledger(&self, stream: &str) -> Result<Vec<crate::state::FileRecord>, ConnectorError> {
        self.state
            .files(&self.pipeline, stream)
            .map_err(ConnectorError::fatal)
    }

    /// The latest schema recorded for a stream, so a resumed source reads with the schema it
    /// started with instead of inferring again from a different sample.
    pub fn stored_schema(&self, stream: &str) -> Result<Option<Schema>, ConnectorError> {
        let history = self
            .state
            .schema_history(&self.pipeline, stream)
            .map_err(ConnectorError::fatal)?;
        match history.last() {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.schema.clone())
                .map(Some)
                .map_err(|e| ConnectorError::fatal(format!("stored schema of {stream}: {e}"))),
        }
    }
}

/// Reads data and emits batches. Implemented by every source connector.
#[async_trait::async_trait]
pub trait Source: Send {
    /// A short description for logs (no secrets).
    fn describe(&self) -> String;

    /// Checks that the source can be read (file exists, server answers, credentials work).
    async fn check(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Lists the streams and their schemas where known.
    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError>;

    /// Reads until the input ends (bounded sources) or the run is stopped.
    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError>;
}
