//! The pipeline runner.
//!
//! ```text
//!  source task ──emit──▶ bounded channel ──▶ sink loop ──write/flush──▶ sink
//!      ▲                 (backpressure)          │
//!      └──── committed positions (watch) ◀── ack tracker ──▶ dead letters flushed,
//!                                                            then positions committed
//! ```
//!
//! The life of a batch: the source emits it; the sink loop registers it with the
//! [`AckTracker`](crate::ack::AckTracker) and writes it (retrying transient errors with
//! [`crate::retry`]); when the sink reports the data durable (on its own, on the
//! `commit_interval` timer, or at the end) the loop flushes the dead-letter destination and
//! then commits, in one state-store transaction, the end position of the durable prefix.
//!
//! Stopping: cancelling the [`CancellationToken`] (the CLI does it on SIGINT/SIGTERM) asks the
//! source to return; the loop drains what was emitted, flushes, commits and returns a summary.
//! A source or sink error stops the run the same way, committing only what is durable, and
//! is returned together with the summary of what was done.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::batch::{Batch, Position};
use crate::dead_letter::{DeadLetterError, DeadLetterRecord, DeadLetterSink, Rejected};
use crate::error::{Classify, ConnectorError, ErrorClass};
use crate::metrics::{ErrorLabels, Metrics, OperationLabels, PipelineLabels};
use crate::policy::{BudgetExceeded, ErrorBudget, OnError};
use crate::retry::{Backoff, RetryError, RetryPolicy};
use crate::sink::{Sink, WriteOutcome};
use crate::source::{Committed, Message, Progress, Source, SourceContext};
use crate::state::{checkpoints, StateError, StateStore};

/// How a pipeline runs (the engine-level part of its config).
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    /// The pipeline name: the state store key and a metrics label.
    pub name: String,
    /// What to do with bad records.
    pub on_error: OnError,
    /// The share of bad records that stops the run.
    pub error_budget: ErrorBudget,
    /// Longest time written data waits for a flush and commit.
    pub commit_interval: Duration,
    /// Batches in flight between source and sink.
    pub channel_capacity: usize,
    /// Retries of transient sink errors.
    pub retry: RetryPolicy,
    /// What sources do when data stops matching a stream's schema.
    pub schema_policy: crate::schema::SchemaPolicy,
}

impl PipelineSettings {
    /// Defaults for a pipeline called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        PipelineSettings {
            name: name.into(),
            on_error: OnError::default(),
            error_budget: ErrorBudget::default(),
            commit_interval: Duration::from_secs(10),
            channel_capacity: 4,
            retry: RetryPolicy::default(),
            schema_policy: crate::schema::SchemaPolicy::default(),
        }
    }
}

/// A schema version a run recorded.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SchemaChange {
    /// The stream.
    pub stream: String,
    /// The new version (1 for the first schema of a stream).
    pub version: u32,
    /// What changed from the previous version (empty for the first).
    pub change: String,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The source ended and everything was committed.
    Completed,
    /// Stopped on request; everything read was committed.
    Stopped,
    /// Stopped by an error; everything durable before it was committed.
    Failed,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// The pipeline.
    pub pipeline: String,
    /// How it ended.
    pub status: RunStatus,
    /// Rows received from the source.
    pub rows_in: u64,
    /// Rows made durable in the sink and committed.
    pub rows_out: u64,
    /// Source bytes consumed.
    pub bytes_in: u64,
    /// Arrow bytes of the rows made durable.
    pub bytes_out: u64,
    /// Batches received.
    pub batches: u64,
    /// Position commits.
    pub commits: u64,
    /// Records sent to the dead-letter destination.
    pub dead_lettered: u64,
    /// Records dropped on purpose: bad records under `on_error: skip`, rows that do not fit the
    /// schema under `schema_policy: discard_rows`.
    pub skipped: u64,
    /// Files recorded in the file ledger as ingested completely.
    pub files_completed: u64,
    /// Transient failures retried.
    pub retries: u64,
    /// Where dead letters went, if any were written.
    pub dead_letter_destination: Option<String>,
    /// Schema versions recorded during the run.
    pub schema_changes: Vec<SchemaChange>,
    /// Last committed position per stream.
    pub positions: BTreeMap<String, Position>,
    /// Wall time.
    pub duration_secs: f64,
    /// rows_out / duration.
    pub rows_per_sec: f64,
    /// bytes_in / duration, in MB (10^6) per second.
    pub mb_per_sec: f64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed.
    #[error("source {source_name}: {error}")]
    Source {
        /// The source's description.
        source_name: String,
        /// What happened.
        error: ConnectorError,
    },
    /// The sink failed (after retries, for transient errors).
    #[error("sink {sink}: {operation} failed: {error}")]
    Sink {
        /// The sink's description.
        sink: String,
        /// `write` or `flush`.
        operation: &'static str,
        /// What happened.
        error: RetryError<ConnectorError>,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The dead-letter destination failed.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// A bad record under `on_error: fail`.
    #[error("{location}: {message} (on_error is `fail`; use `dead_letter` to set bad records aside and go on)")]
    RecordFailed {
        /// Where (file:line, topic@offset) or the stream.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// Too many bad records.
    #[error(transparent)]
    Budget(#[from] BudgetExceeded),
    /// A task panicked (a bug: please report it).
    #[error("internal error: {0}")]
    Panicked(String),
}

/// A failed run: the error, and what was done (committed) before it.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {}: {error}", summary.pipeline)]
pub struct PipelineFailure {
    /// What went wrong.
    pub error: PipelineError,
    /// What was done before it.
    pub summary: Box<RunSummary>,
}

/// A pipeline ready to run.
pub struct Pipeline {
    settings: PipelineSettings,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    dead_letter: Box<dyn DeadLetterSink>,
    state: Arc<dyn StateStore>,
    metrics: Metrics,
    stop: CancellationToken,
    progress: Arc<Progress>,
}

impl Pipeline {
    /// Assembles a pipeline.
    pub fn new(
        settings: PipelineSettings,
        source: Box<dyn Source>,
        sink: Box<dyn Sink>,
        dead_letter: Box<dyn DeadLetterSink>,
        state: Arc<dyn StateStore>,
    ) -> Self {
        Pipeline {
            settings,
            source,
            sink,
            dead_letter,
            state,
            metrics: Metrics::new(),
            stop: CancellationToken::new(),
            progress: Arc::new(Progress::default()),
        }
    }

    /// Uses a shared metrics registry (one per process).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Uses a token that stops the run when cancelled.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Progress counters, for a progress bar.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Runs until the source ends, the run is stopped, or an error stops it.
    pub async fn run(self) -> Result<RunSummary, PipelineFailure> {
        let Pipeline {
            settings,
            mut source,
            sink,
            dead_letter,
            state,
            metrics,
            stop,
            progress,
        } = self;
        let name: Arc<str> = settings.name.as_str().into();
        let started = Instant::now();
        let mut run = SinkLoop {
            settings: settings.clone(),
            name: name.clone(),
            sink,
            sink_name: String::new(),
            sink_refused: 0,
            dead_letter,
            dead_letter_used: false,
            state: state.clone(),
            metrics,
            tracker: AckTracker::new(),
            unflushed: Vec::new(),
            unflushed_since: None,
            schemas: HashMap::new(),
            positions: BTreeMap::new(),
            committed_tx: None,
            source_retries: Arc::default(),
            summary: RunSummary {
                pipeline: settings.name.clone(),
                status: RunStatus::Completed,
                rows_in: 0,
                rows_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                batches: 0,
                commits: 0,
                dead_lettered: 0,
                skipped: 0,
                files_completed: 0,
                retries: 0,
                dead_letter_destination: None,
                schema_changes: Vec::new(),
                positions: BTreeMap::new(),
                duration_secs: 0.0,
                rows_per_sec: 0.0,
                mb_per_sec: 0.0,
            },
        };
        run.sink_name = run.sink.describe();

        let start_positions = match state.positions(&settings.name) {
            Ok(p) => Arc::new(checkpoints(p)),
            Err(e) => return Err(run.finish(started, Some(e.into()))),
        };
        run.positions = (*start_positions).clone();
        let (committed_tx, committed_rx) = watch::channel::<Committed>(start_positions.clone());
        run.committed_tx = Some(committed_tx);

        if let Err(error) = run.sink.open(&settings.name).await {
            let e = PipelineError::Sink {
                sink: run.sink_name.clone(),
                operation: "open",
                error: RetryError {
                    error,
                    attempts: 1,
                    exhausted: false,
                },
            };
            return Err(run.finish(started, Some(e)));
        }
        // A transactional sink's own positions win over the state store's: they were written
        // with the data, so they are never behind it (see `Sink::stored_positions`).
        let start_positions = match run.sink.stored_positions(&settings.name).await {
            Ok(stored) if stored.is_empty() => start_positions,
            Ok(stored) => {
                for (stream, position) in stored {
                    if run.positions.get(&stream) != Some(&position) {
                        tracing::info!(pipeline = %name, stream = %stream, position = %position, "resuming from the position the sink stored with the data");
                    }
                    run.positions.insert(stream, position);
                }
                let merged: Committed = Arc::new(run.positions.clone());
                if let Some(tx) = &run.committed_tx {
                    tx.send_replace(merged.clone());
                }
                merged
            }
            Err(error) => {
                let e = PipelineError::Sink {
                    sink: run.sink_name.clone(),
                    operation: "stored_positions",
                    error: RetryError {
                        error,
                        attempts: 1,
                        exhausted: false,
                    },
                };
                return Err(run.finish(started, Some(e)));
            }
        };

        let (tx, mut rx) = mpsc::channel(settings.channel_capacity.max(1));
        let commit_requested = Arc::new(tokio::sync::Notify::new());
        let ctx = SourceContext {
            commit_requested: commit_requested.clone(),
            pipeline: name.clone(),
            tx,
            checkpoints: start_positions,
            stop: stop.clone(),
            progress: progress.clone(),
            state,
            committed: committed_rx,
            schema_policy: settings.schema_policy,
            wants_row_meta: run.sink.wants_row_meta(),
            metrics: run.metrics.clone(),
            retries: run.source_retries.clone(),
        };
        let source_name = source.describe();
        tracing::info!(pipeline = %name, source = %source_name, sink = %run.sink_name, "pipeline starting");
        let source_task = tokio::spawn(async move { source.run(ctx).await });

        let mut error: Option<PipelineError> = None;
        loop {
            let deadline = run
                .unflushed_since
                .map(|since| since + settings.commit_interval);
            let message = tokio::select! {
                message = rx.recv() => message,
                _ = commit_requested.notified() => {
                    if let Err(e) = run.flush_and_commit().await {
                        error = Some(e);
                        break;
                    }
                    continue;
                }
                _ = sleep_until_opt(deadline) => {
                    if let Err(e) = run.flush_and_commit().await {
                        error = Some(e);
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            let outcome = match message {
                Message::Batch(batch) => {
                    progress.advance(batch.meta.source_bytes, batch.num_rows() as u64);
                    run.handle_batch(batch).await
                }
                Message::Rejected(rejected) => run.handle_rejected(rejected).await,
            };
            if let Err(e) = outcome {
                error = Some(e);
                break;
            }
        }

        if error.is_some() {
            // Stop the source; it sees a closed channel or the token. What is already durable
            // was committed as it became durable; nothing after the failure is.
            stop.cancel();
            drop(rx);
            // No commit follows: close the committed channel so a source waiting for one
            // returns.
            run.committed_tx = None;
            let _ = source_task.await;
            return Err(run.finish(started, error));
        }

        // The source is done (channel closed): flush and commit everything it produced.
        let final_commit = run.flush_and_commit().await;
        // The last commit is published: closing the channel tells a source that acknowledges
        // upstream (MQTT, Kafka) that it has seen every commit it will get and may return.
        run.committed_tx = None;
        let source_result = source_task.await;
        let error = match (final_commit, source_result) {
            (Err(e), _) => Some(e),
            (Ok(()), Ok(Ok(()))) => None,
            (Ok(()), Ok(Err(e))) => {
                record_error(&run.metrics, &name, "", e.class());
                Some(PipelineError::Source {
                    source_name,
                    error: e,
                })
            }
            (Ok(()), Err(join)) => Some(PipelineError::Panicked(format!("source task: {join}"))),
        };
        if error.is_none() && stop.is_cancelled() {
            run.summary.status = RunStatus::Stopped;
        }
        match error {
            None => Ok(run.finish_ok(started)),
            Some(e) => Err(run.finish(started, Some(e))),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn record_error(metrics: &Metrics, pipeline: &str, stream: &str, class: ErrorClass) {
    metrics
        .errors
        .get_or_create(&ErrorLabels {
            pipeline: pipeline.to_string(),
            stream: stream.to_string(),
            class: class.as_str().to_string(),
        })
        .inc();
}

/// The sink side of a run: owns the sink, the tracker and the summary.
struct SinkLoop {
    settings: PipelineSettings,
    name: Arc<str>,
    sink: Box<dyn Sink>,
    sink_name: String,
    /// Rows the sink received but refused for good (they count as bad records, not good ones).
    sink_refused: u64,
    dead_letter: Box<dyn DeadLetterSink>,
    dead_letter_used: bool,
    state: Arc<dyn StateStore>,
    metrics: Metrics,
    tracker: AckTracker,
    /// Written but not yet durable: (stream, rows, Arrow bytes, emit time).
    unflushed: Vec<(Arc<str>, u64, u64, Instant)>,
    unflushed_since: Option<Instant>,
    schemas: HashMap<Arc<str>, SchemaRef>,
    positions: BTreeMap<String, Position>,
    committed_tx: Option<watch::Sender<Committed>>,
    /// Transient failures the source retried itself ([`SourceContext::retried`]).
    source_retries: Arc<std::sync::atomic::AtomicU64>,
    summary: RunSummary,
}

impl SinkLoop {
    async fn handle_batch(&mut self, batch: Batch) -> Result<(), PipelineError> {
        let stream = batch.meta.stream.clone();
        let rows = batch.num_rows() as u64;
        let labels = Metrics::stream(&self.name, &stream);
        self.metrics.records_in.get_or_create(&labels).inc_by(rows);
        self.metrics
            .bytes_in
            .get_or_create(&labels)
            .inc_by(batch.meta.source_bytes);
        self.summary.rows_in += rows;
        self.summary.bytes_in += batch.meta.source_bytes;
        self.summary.batches += 1;
        if rows > 0 {
            self.track_schema(&stream, batch.data.schema())?;
        }

        if batch.meta.discarded > 0 {
            self.metrics
                .skipped
                .get_or_create(&labels)
                .inc_by(batch.meta.discarded);
            self.summary.skipped += batch.meta.discarded;
        }
        let id = self.tracker.register_with_files(
            stream.clone(),
            batch.meta.end.clone(),
            batch.meta.completes.clone(),
        );
        let arrow_bytes = batch.data.get_array_memory_size() as u64;
        self.unflushed
            .push((stream.clone(), rows, arrow_bytes, Instant::now()));
        self.unflushed_since.get_or_insert_with(Instant::now);

        let mut backoff = Backoff::new(self.settings.retry.clone());
        let outcome = loop {
            match self.sink.write(&batch).await {
                Ok(outcome) => break Ok(outcome),
                Err(e) => match backoff.after_failure(e) {
                    Ok((e, delay)) => {
                        self.on_retry(&stream, "sink.write", &e, backoff.attempts(), delay);
                        tokio::time::sleep(delay).await;
                    }
                    Err(gave_up) => break Err(gave_up),
                },
            }
        };
        match outcome {
            Ok(WriteOutcome::Durable) => self.mark_durable_and_commit().await,
            Ok(WriteOutcome::Buffered) if batch.meta.commit_now => self.flush_and_commit().await,
            Ok(WriteOutcome::Buffered) => Ok(()),
            Err(error) => {
                let _ = self.tracker.fail(id);
                record_error(&self.metrics, &self.name, &stream, error.error.class());
                Err(PipelineError::Sink {
                    sink: self.sink_name.clone(),
                    operation: "write",
                    error,
                })
            }
        }
    }

    fn track_schema(&mut self, stream: &Arc<str>, schema: SchemaRef) -> Result<(), PipelineError> {
        if self.schemas.get(stream).is_some_and(|s| *s == schema) {
            return Ok(());
        }
        let json = serde_json::to_value(schema.as_ref())
            .map_err(|e| PipelineError::Panicked(format!("schema to JSON: {e}")))?;
        let previous = match self.schemas.get(stream) {
            Some(s) => Some(s.as_ref().clone()),
            None => self
                .state
                .schema_history(&self.name, stream)?
                .last()
                .and_then(|v| {
                    serde_json::from_value::<arrow_schema::Schema>(v.schema.clone()).ok()
                }),
        };
        let (version, added) = self.state.record_schema(&self.name, stream, &json)?;
        if added {
            let change = previous
                .map(|p| crate::schema::diff(&p, &schema))
                .unwrap_or_default();
            tracing::info!(pipeline = %self.name, stream = %stream, version = version.version, change = %change, "new schema version");
            self.summary.schema_changes.push(SchemaChange {
                stream: stream.to_string(),
                version: version.version,
                change,
            });
        }
        self.schemas.insert(stream.clone(), schema);
        Ok(())
    }

    async fn handle_rejected(&mut self, rejected: Rejected) -> Result<(), PipelineError> {
        let labels = Metrics::stream(&self.name, &rejected.stream);
        record_error(
            &self.metrics,
            &self.name,
            &rejected.stream,
            ErrorClass::Record,
        );
        match self.settings.on_error {
            OnError::Fail => {
                return Err(PipelineError::RecordFailed {
                    location: rejected
                        .location
                        .clone()
                        .unwrap_or_else(|| rejected.stream.clone()),
                    message: rejected.message,
                });
            }
            OnError::Skip => {
                tracing::debug!(pipeline = %self.name, stream = %rejected.stream, reason = %rejected.message, "record skipped");
                self.metrics.skipped.get_or_create(&labels).inc();
                self.summary.skipped += 1;
            }
            OnError::DeadLetter => {
                tracing::warn!(pipeline = %self.name, location = rejected.location.as_deref().unwrap_or(""), reason = %rejected.message, "record dead-lettered");
                let record = DeadLetterRecord::new(&self.name, ErrorClass::Record, rejected);
                self.dead_letter.write(&record).await?;
                self.dead_letter_used = true;
                self.metrics.dead_lettered.get_or_create(&labels).inc();
                self.summary.dead_lettered += 1;
            }
        }
        let failed = self.summary.dead_lettered + self.summary.skipped;
        self.settings
            .error_budget
            .check(self.summary.rows_in - self.sink_refused, failed)?;
        Ok(())
    }

    async fn flush_and_commit(&mut self) -> Result<(), PipelineError> {
        if self.tracker.in_flight() == 0 {
            self.unflushed_since = None;
            return Ok(());
        }
        let mut backoff = Backoff::new(self.settings.retry.clone());
        let flushed = loop {
            match self.sink.flush().await {
                Ok(()) => break Ok(()),
                Err(e) => match backoff.after_failure(e) {
                    Ok((e, delay)) => {
                        self.on_retry("", "sink.flush", &e, backoff.attempts(), delay);
                        tokio::time::sleep(delay).await;
                    }
                    Err(gave_up) => break Err(gave_up),
                },
            }
        };
        if let Err(error) = flushed {
            record_error(&self.metrics, &self.name, "", error.error.class());
            return Err(PipelineError::Sink {
                sink: self.sink_name.clone(),
                operation: "flush",
                error,
            });
        }
        self.mark_durable_and_commit().await
    }

    /// Everything written so far is durable: flush dead letters, then commit positions.
    async fn mark_durable_and_commit(&mut self) -> Result<(), PipelineError> {
        // Records the sink refused for good go through the on_error policy first: they must be
        // dead-lettered (durably, below) before a position past them is committed.
        let mut refused: HashMap<String, u64> = HashMap::new();
        for rejected in self.sink.take_rejected() {
            *refused.entry(rejected.stream.clone()).or_default() += 1;
            self.sink_refused += 1;
            self.handle_rejected(rejected).await?;
        }
        self.tracker.complete_all();
        let released = self.tracker.take_committable_with_files();
        // Dead letters first: a committed position must never be past an undurable dead letter.
        self.dead_letter.flush().await?;
        let committable = released.positions;
        if !committable.is_empty() {
            let refs: Vec<(&str, &Position)> =
                committable.iter().map(|(s, p)| (s.as_ref(), p)).collect();
            let files: Vec<(&str, &crate::state::FileRecord)> = released
                .files
                .iter()
                .map(|(s, f)| (s.as_ref(), f))
                .collect();
            self.state.commit_positions(&self.name, &refs, &files)?;
            self.summary.files_completed += files.len() as u64;
            self.metrics
                .commits
                .get_or_create(&PipelineLabels {
                    pipeline: self.name.to_string(),
                })
                .inc();
            self.summary.commits += 1;
            for (stream, position) in committable {
                self.positions.insert(stream.to_string(), position);
            }
            if let Some(tx) = &self.committed_tx {
                tx.send_replace(Arc::new(self.positions.clone()));
            }
        }
        let latency = self.metrics.batch_latency.get_or_create(&PipelineLabels {
            pipeline: self.name.to_string(),
        });
        for (stream, rows, arrow_bytes, emitted) in self.unflushed.drain(..) {
            latency.observe(emitted.elapsed().as_secs_f64());
            // Rows the sink refused were dead-lettered (or skipped), not written.
            let not_written = refused.get_mut(&*stream).map_or(0, |r| {
                let n = (*r).min(rows);
                *r -= n;
                n
            });
            let rows = rows - not_written;
            let labels = Metrics::stream(&self.name, &stream);
            self.metrics.records_out.get_or_create(&labels).inc_by(rows);
            self.metrics
                .bytes_out
                .get_or_create(&labels)
                .inc_by(arrow_bytes);
            self.summary.rows_out += rows;
            self.summary.bytes_out += arrow_bytes;
        }
        self.unflushed_since = None;
        Ok(())
    }

    fn on_retry(
        &mut self,
        stream: &str,
        operation: &str,
        error: &ConnectorError,
        attempt: u32,
        delay: Duration,
    ) {
        self.summary.retries += 1;
        record_error(&self.metrics, &self.name, stream, ErrorClass::Transient);
        self.metrics
            .retries
            .get_or_create(&OperationLabels {
                pipeline: self.name.to_string(),
                operation: operation.to_string(),
            })
            .inc();
        tracing::warn!(pipeline = %self.name, operation, attempt, delay_ms = delay.as_millis() as u64, error = %error, "transient failure, retrying");
    }

    fn finish_ok(mut self, started: Instant) -> RunSummary {
        self.fill_summary(started);
        self.summary
    }

    fn finish(mut self, started: Instant, error: Option<PipelineError>) -> PipelineFailure {
        self.summary.status = RunStatus::Failed;
        self.fill_summary(started);
        PipelineFailure {
            error: error
                .unwrap_or_else(|| PipelineError::Panicked("failure without an error".into())),
            summary: Box::new(self.summary),
        }
    }

    fn fill_summary(&mut self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        let s = &mut self.summary;
        s.retries += self
            .source_retries
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        s.duration_secs = secs;
        if secs > 0.0 {
            s.rows_per_sec = s.rows_out as f64 / secs;
            s.mb_per_sec = s.bytes_in as f64 / 1e6 / secs;
        }
        s.positions = self.positions.clone();
        if self.dead_letter_used {
            s.dead_letter_destination = Some(self.dead_letter.describe());
        }
    }
}

#[cfg(test)]
mod tests;
