//! Runtime tests with in-memory sources and sinks (they test the runtime's own logic; the
//! connectors are tested against real files and servers in their crates).

use std::sync::{Arc, Mutex};

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use super::*;
use crate::batch::BatchMeta;
use crate::dead_letter::NdjsonDeadLetter;
use crate::state::SqliteStateStore;

fn pos(n: u64) -> Position {
    Position::encode(&serde_json::json!({ "n": n })).unwrap()
}

fn batch(stream: &str, from: u64, to: u64) -> Batch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let ids: Vec<i64> = (from as i64..to as i64).collect();
    Batch {
        data: RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids))]).unwrap(),
        meta: BatchMeta::new(stream.into(), pos(from), pos(to), (to - from) * 10),
    }
}

enum Step {
    Emit(u64, u64),
    /// Emit with `commit_now`.
    EmitNow(u64, u64),
    Reject(u64),
    Fail(ErrorClass),
    WaitForStop,
    /// Ask for a commit, then wait until position `n` is committed.
    RequestCommitUntil(u64),
}

struct ScriptSource(Vec<Step>);

#[async_trait::async_trait]
impl Source for ScriptSource {
    fn describe(&self) -> String {
        "script".into()
    }
    async fn discover(&mut self) -> Result<Vec<crate::StreamInfo>, ConnectorError> {
        Ok(vec![])
    }
    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let start = ctx.checkpoint("s").map(|p| {
            p.decode::<serde_json::Value>().unwrap()["n"]
                .as_u64()
                .unwrap()
        });
        for step in self.0.drain(..) {
            match step {
                Step::Emit(a, b) => {
                    if start.is_some_and(|s| b <= s) {
                        continue;
                    }
                    if ctx.emit(batch("s", a, b)).await.is_err() {
                        return Ok(());
                    }
                }
                Step::EmitNow(a, b) => {
                    let mut batch = batch("s", a, b);
                    batch.meta.commit_now = true;
                    if ctx.emit(batch).await.is_err() {
                        return Ok(());
                    }
                }
                Step::Reject(n) => {
                    let _ = ctx
                        .reject(Rejected {
                            stream: "s".into(),
                            position: Some(pos(n)),
                            message: format!("row {n} is bad"),
                            location: Some(format!("input:{n}")),
                            raw: format!("raw-{n}").into_bytes(),
                            headers: Vec::new(),
                        })
                        .await;
                }
                Step::Fail(class) => return Err(ConnectorError::new(class, "source broke")),
                Step::WaitForStop => ctx.stopping().await,
                Step::RequestCommitUntil(n) => {
                    // As documented: a request may be served before the batch is written, so
                    // ask again until the position is covered.
                    let mut committed = ctx.committed();
                    let covered = |c: &crate::source::Committed| {
                        c.get("s")
                            .is_some_and(|p| p.as_json()["n"].as_u64() >= Some(n))
                    };
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !covered(&committed.borrow_and_update()) {
                        assert!(Instant::now() < deadline, "the requested commit never came");
                        ctx.request_commit();
                        let _ =
                            tokio::time::timeout(Duration::from_millis(100), committed.changed())
                                .await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the fake sink saw, shared with the test.
#[derive(Default)]
struct SinkLog {
    buffered: Vec<u64>,
    durable: Vec<u64>,
    flushes: usize,
    writes: usize,
    /// From this write call on (0-based), fail `times` times with `class`.
    fail: Option<(usize, ErrorClass, usize)>,
    /// Ids the sink refuses for good (handed back through `take_rejected`).
    refuse: Vec<u64>,
    refused: Vec<Rejected>,
    /// Positions the sink reports it stored with its data.
    stored: Vec<(String, Position)>,
}

struct MemorySink {
    log: Arc<Mutex<SinkLog>>,
    durable_every: Option<usize>,
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        let mut log = self.log.lock().unwrap();
        let call = log.writes;
        log.writes += 1;
        if let Some((from, class, times)) = log.fail {
            if call >= from && times > 0 {
                log.fail = Some((from, class, times - 1));
                return Err(ConnectorError::new(class, "sink hiccup"));
            }
        }
        let ids = batch
            .data
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for id in ids.values().iter().map(|v| *v as u64) {
            if log.refuse.contains(&id) {
                log.refused.push(Rejected {
                    stream: "s".into(),
                    position: Some(pos(id)),
                    message: format!("row {id} is too large"),
                    location: None,
                    raw: format!("raw-{id}").into_bytes(),
                    headers: Vec::new(),
                });
            } else {
                log.buffered.push(id);
            }
        }
        if self.durable_every.is_some_and(|n| log.buffered.len() >= n) {
            let b = std::mem::take(&mut log.buffered);
            log.durable.extend(b);
            return Ok(WriteOutcome::Durable);
        }
        Ok(WriteOutcome::Buffered)
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let mut log = self.log.lock().unwrap();
        let b = std::mem::take(&mut log.buffered);
        log.durable.extend(b);
        log.flushes += 1;
        Ok(())
    }
    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.log.lock().unwrap().refused)
    }
    async fn stored_positions(
        &mut self,
        _pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        Ok(self.log.lock().unwrap().stored.clone())
    }
}

/// A state store that checks, at every commit, that the sink holds the committed rows durably.
struct CheckingStore {
    inner: SqliteStateStore,
    log: Arc<Mutex<SinkLog>>,
    commits: Mutex<Vec<u64>>,
}

impl StateStore for CheckingStore {
    fn positions(&self, p: &str) -> Result<Vec<crate::state::StreamState>, StateError> {
        self.inner.positions(p)
    }
    fn commit_positions(
        &self,
        p: &str,
        positions: &[(&str, &Position)],
        files: &[(&str, &crate::state::FileRecord)],
    ) -> Result<(), StateError> {
        for (_, position) in positions {
            let n = position.as_json()["n"].as_u64().unwrap();
            let log = self.log.lock().unwrap();
            assert!(
                !log.buffered.iter().any(|id| *id < n),
                "position {n} committed while rows below it were not durable"
            );
            self.commits.lock().unwrap().push(n);
        }
        self.inner.commit_positions(p, positions, files)
    }
    fn files(&self, p: &str, s: &str) -> Result<Vec<crate::state::FileRecord>, StateError> {
        self.inner.files(p, s)
    }
    fn reset(&self, p: &str) -> Result<usize, StateError> {
        self.inner.reset(p)
    }
    fn record_schema(
        &self,
        p: &str,
        s: &str,
        schema: &serde_json::Value,
    ) -> Result<(crate::state::SchemaVersion, bool), StateError> {
        self.inner.record_schema(p, s, schema)
    }
    fn schema_history(
        &self,
        p: &str,
        s: &str,
    ) -> Result<Vec<crate::state::SchemaVersion>, StateError> {
        self.inner.schema_history(p, s)
    }
}

struct Harness {
    dir: tempfile::TempDir,
    log: Arc<Mutex<SinkLog>>,
    store: Arc<CheckingStore>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(SinkLog::default()));
        let store = Arc::new(CheckingStore {
            inner: SqliteStateStore::open(dir.path().join("state.db")).unwrap(),
            log: log.clone(),
            commits: Mutex::new(Vec::new()),
        });
        Harness { dir, log, store }
    }

    fn dlq_path(&self) -> std::path::PathBuf {
        self.dir.path().join("dlq.ndjson")
    }

    fn pipeline(
        &self,
        settings: PipelineSettings,
        steps: Vec<Step>,
        durable_every: Option<usize>,
    ) -> Pipeline {
        Pipeline::new(
            settings,
            Box::new(ScriptSource(steps)),
            Box::new(MemorySink {
                log: self.log.clone(),
                durable_every,
            }),
            Box::new(NdjsonDeadLetter::new(self.dlq_path())),
            self.store.clone(),
        )
    }

    fn committed(&self) -> Option<u64> {
        let states = self.store.inner.positions("p").unwrap();
        states
            .first()
            .map(|s| s.position.as_json()["n"].as_u64().unwrap())
    }
}

fn settings() -> PipelineSettings {
    let mut s = PipelineSettings::new("p");
    s.retry.initial_delay = Duration::from_millis(1);
    s
}

#[tokio::test]
async fn positions_are_committed_only_after_the_sink_made_data_durable() {
    let h = Harness::new();
    let steps = vec![
        Step::Emit(0, 10),
        Step::Emit(10, 20),
        Step::Emit(20, 25),
        Step::Emit(25, 30),
    ];
    let summary = h.pipeline(settings(), steps, Some(20)).run().await.unwrap();
    assert_eq!(summary.status, RunStatus::Completed);
    assert_eq!(
        (summary.rows_in, summary.rows_out, summary.batches),
        (30, 30, 4)
    );
    // Sink went durable by itself after 20 rows, then the final flush covered the rest.
    assert_eq!(*h.store.commits.lock().unwrap(), vec![20, 30]);
    assert_eq!(h.committed(), Some(30));
    assert_eq!(
        summary.schema_changes,
        vec![SchemaChange {
            stream: "s".into(),
            version: 1,
            change: String::new(),
        }]
    );

    // A second run resumes at the end: nothing new is written.
    let steps = vec![
        Step::Emit(0, 10),
        Step::Emit(10, 20),
        Step::Emit(20, 25),
        Step::Emit(25, 30),
    ];
    let again = h.pipeline(settings(), steps, Some(20)).run().await.unwrap();
    assert_eq!(again.rows_out, 0);
    assert!(
        again.schema_changes.is_empty(),
        "same schema, no new version"
    );
    assert_eq!(h.log.lock().unwrap().durable.len(), 30);
}

#[tokio::test(start_paused = true)]
async fn the_commit_interval_flushes_a_slow_stream() {
    let h = Harness::new();
    let mut s = settings();
    s.commit_interval = Duration::from_secs(5);
    let steps = vec![Step::Emit(0, 10), Step::WaitForStop];
    let stop = CancellationToken::new();
    let pipeline = h.pipeline(s, steps, None).with_stop(stop.clone());
    let task = tokio::spawn(pipeline.run());
    // Virtual time: the runtime's own timer must fire after 5 s with the source idle.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.committed().is_none() {
        assert!(Instant::now() < deadline, "commit_interval never flushed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.committed(), Some(10));
    stop.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Stopped);
    assert_eq!(summary.rows_out, 10);
}

#[tokio::test]
async fn transient_sink_errors_are_retried() {
    let h = Harness::new();
    h.log.lock().unwrap().fail = Some((0, ErrorClass::Transient, 2));
    let summary = h
        .pipeline(settings(), vec![Step::Emit(0, 5)], None)
        .run()
        .await
        .unwrap();
    assert_eq!(summary.retries, 2);
    assert_eq!(summary.rows_out, 5);
    assert_eq!(h.committed(), Some(5));
}

#[tokio::test]
async fn a_fatal_sink_error_stops_and_commits_only_the_durable_prefix() {
    let h = Harness::new();
    let steps = vec![Step::Emit(0, 10), Step::Emit(10, 20), Step::Emit(20, 30)];
    // Durable after every batch; the third write fails fatally.
    h.log.lock().unwrap().fail = Some((2, ErrorClass::Fatal, usize::MAX));
    let failure = h
        .pipeline(settings(), steps, Some(1))
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(
            failure.error,
            PipelineError::Sink {
                operation: "write",
                ..
            }
        ),
        "{failure}"
    );
    assert_eq!(failure.summary.status, RunStatus::Failed);
    assert_eq!(
        h.log.lock().unwrap().writes,
        3,
        "a fatal error is not retried"
    );
    assert_eq!(h.committed(), Some(20));
    assert_eq!(failure.summary.rows_out, 20);
    assert!(failure.to_string().contains("sink hiccup"), "{failure}");
}

#[tokio::test]
async fn bad_records_are_dead_lettered_before_the_position_after_them_commits() {
    let h = Harness::new();
    let steps = vec![Step::Emit(0, 3), Step::Reject(3), Step::Emit(4, 6)];
    let summary = h.pipeline(settings(), steps, None).run().await.unwrap();
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(h.committed(), Some(6));
    let dead = NdjsonDeadLetter::read_all(h.dlq_path()).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, "row 3 is bad");
    assert_eq!(dead[0].location.as_deref(), Some("input:3"));
    assert_eq!(dead[0].raw.as_deref(), Some("raw-3"));
    assert_eq!(dead[0].pipeline, "p");
    assert_eq!(
        summary.dead_letter_destination,
        Some(h.dlq_path().display().to_string())
    );
}

#[tokio::test]
async fn records_the_sink_refuses_are_dead_lettered_before_the_commit() {
    let h = Harness::new();
    h.log.lock().unwrap().refuse = vec![4, 12];
    let steps = vec![Step::Emit(0, 10), Step::Emit(10, 20)];
    let summary = h.pipeline(settings(), steps, Some(10)).run().await.unwrap();
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(h.committed(), Some(20));
    let dead = NdjsonDeadLetter::read_all(h.dlq_path()).unwrap();
    let messages: Vec<&str> = dead.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages, ["row 4 is too large", "row 12 is too large"]);

    // Under `on_error: fail` a refused record stops the run before its position commits.
    let h = Harness::new();
    h.log.lock().unwrap().refuse = vec![4];
    let mut s = settings();
    s.on_error = OnError::Fail;
    let failure = h
        .pipeline(s, vec![Step::Emit(0, 10)], Some(1))
        .run()
        .await
        .unwrap_err();
    assert!(
        failure.to_string().contains("row 4 is too large"),
        "{failure}"
    );
    assert_eq!(h.committed(), None);
}

#[tokio::test]
async fn a_source_can_ask_for_an_early_commit() {
    let h = Harness::new();
    let mut s = settings();
    s.commit_interval = Duration::from_secs(3600);
    let steps = vec![
        Step::Emit(0, 10),
        Step::RequestCommitUntil(10),
        Step::Emit(10, 15),
        Step::RequestCommitUntil(15),
    ];
    let summary = h.pipeline(s, steps, None).run().await.unwrap();
    assert_eq!(*h.store.commits.lock().unwrap(), vec![10, 15]);
    assert_eq!(summary.rows_out, 15);
}

#[tokio::test]
async fn on_error_fail_stops_at_the_bad_record_and_skip_counts_it() {
    let h = Harness::new();
    let mut s = settings();
    s.on_error = OnError::Fail;
    let steps = vec![Step::Emit(0, 3), Step::Reject(3), Step::Emit(4, 6)];
    let failure = h.pipeline(s, steps, None).run().await.unwrap_err();
    let msg = failure.to_string();
    assert!(msg.contains("input:3: row 3 is bad"), "{msg}");
    assert_eq!(
        h.committed(),
        None,
        "nothing was durable before the bad record"
    );

    let h = Harness::new();
    let mut s = settings();
    s.on_error = OnError::Skip;
    let steps = vec![Step::Emit(0, 3), Step::Reject(3), Step::Emit(4, 6)];
    let summary = h.pipeline(s, steps, None).run().await.unwrap();
    assert_eq!(
        (summary.skipped, summary.dead_lettered, summary.rows_out),
        (1, 0, 5)
    );
    assert!(NdjsonDeadLetter::read_all(h.dlq_path()).unwrap().is_empty());
}

#[tokio::test]
async fn a_mostly_failing_run_is_stopped_by_the_error_budget() {
    let h = Harness::new();
    let mut s = settings();
    s.error_budget = ErrorBudget {
        max_error_rate: 0.2,
        min_records: 10,
    };
    let mut steps = vec![Step::Emit(0, 5)];
    steps.extend((5..20).map(Step::Reject));
    let failure = h.pipeline(s, steps, None).run().await.unwrap_err();
    assert!(
        matches!(failure.error, PipelineError::Budget(_)),
        "{failure}"
    );
    // Dead letters written before the stop are kept.
    assert!(!NdjsonDeadLetter::read_all(h.dlq_path()).unwrap().is_empty());
}

#[tokio::test]
async fn a_source_error_commits_what_came_before_it() {
    let h = Harness::new();
    let steps = vec![Step::Emit(0, 10), Step::Fail(ErrorClass::Fatal)];
    let failure = h.pipeline(settings(), steps, None).run().await.unwrap_err();
    assert!(
        matches!(failure.error, PipelineError::Source { .. }),
        "{failure}"
    );
    assert_eq!(h.committed(), Some(10));
    assert_eq!(failure.summary.rows_out, 10);
}

#[tokio::test(start_paused = true)]
async fn commit_now_flushes_and_commits_without_waiting_for_the_interval() {
    let h = Harness::new();
    let mut s = settings();
    s.commit_interval = Duration::from_secs(3600);
    let steps = vec![
        Step::Emit(0, 10),
        Step::EmitNow(10, 20),
        Step::Emit(20, 30),
        Step::WaitForStop,
    ];
    let stop = CancellationToken::new();
    let task = tokio::spawn(h.pipeline(s, steps, None).with_stop(stop.clone()).run());
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.committed().is_none() {
        assert!(Instant::now() < deadline, "commit_now did not commit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Long before the hour-long interval: the batch that asked, and everything before it.
    assert_eq!(h.committed(), Some(20));
    assert_eq!(h.log.lock().unwrap().flushes, 1);
    stop.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.rows_out, 30);
    assert_eq!(*h.store.commits.lock().unwrap(), vec![20, 30]);
}

/// Emits two batches, drops its context on stop and records every commit it sees until the
/// runtime closes the channel (as a source that acknowledges upstream does).
struct AckingSource(Arc<Mutex<Vec<u64>>>);

#[async_trait::async_trait]
impl Source for AckingSource {
    fn describe(&self) -> String {
        "acking".into()
    }
    async fn discover(&mut self) -> Result<Vec<crate::StreamInfo>, ConnectorError> {
        Ok(vec![])
    }
    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let mut committed = ctx.committed();
        let _ = ctx.emit(batch("s", 0, 10)).await;
        let _ = ctx.emit(batch("s", 10, 20)).await;
        ctx.stopping().await;
        drop(ctx);
        loop {
            let n = committed
                .borrow_and_update()
                .get("s")
                .map(|p| p.as_json()["n"].as_u64().unwrap());
            if let Some(n) = n {
                let mut seen = self.0.lock().unwrap();
                if seen.last() != Some(&n) {
                    seen.push(n);
                }
            }
            if committed.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

#[tokio::test]
async fn a_source_sees_the_final_commit_and_then_the_channel_closes() {
    let h = Harness::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let pipeline = Pipeline::new(
        settings(),
        Box::new(AckingSource(seen.clone())),
        Box::new(MemorySink {
            log: h.log.clone(),
            durable_every: None,
        }),
        Box::new(NdjsonDeadLetter::new(h.dlq_path())),
        h.store.clone(),
    )
    .with_stop(stop.clone());
    let task = tokio::spawn(pipeline.run());
    stop.cancel();
    // The run only ends if the source returns, which it does when the channel closes.
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the committed channel closed")
        .unwrap()
        .unwrap();
    assert_eq!(summary.rows_out, 20);
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&20),
        "saw the final commit"
    );
}

#[tokio::test]
async fn a_sink_that_stores_positions_with_its_data_is_resumed_from_them() {
    let h = Harness::new();
    h.pipeline(settings(), vec![Step::Emit(0, 10)], None)
        .run()
        .await
        .unwrap();
    assert_eq!(h.committed(), Some(10));
    // The sink's transaction for rows 10..20 committed, the state store's commit did not.
    h.log.lock().unwrap().stored = vec![("s".into(), pos(20))];
    let steps = vec![Step::Emit(0, 10), Step::Emit(10, 20), Step::Emit(20, 30)];
    let summary = h.pipeline(settings(), steps, None).run().await.unwrap();
    assert_eq!(
        summary.rows_in, 10,
        "resumed at the sink's position, not the store's"
    );
    assert_eq!(h.committed(), Some(30));
    assert_eq!(summary.positions.get("s"), Some(&pos(30)));
}
