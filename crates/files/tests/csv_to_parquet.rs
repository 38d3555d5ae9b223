//! CSV → Parquet through the real runtime, on real files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_files::csv::{CsvSource, CsvSourceConfig};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(csv: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.csv"), csv).unwrap();
        Fixture { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn dlq(&self) -> PathBuf {
        self.path("dlq.ndjson")
    }
    fn state(&self) -> Arc<SqliteStateStore> {
        Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap())
    }
    async fn run_with(
        &self,
        config: CsvSourceConfig,
    ) -> Result<RunSummary, tributary_core::runtime::PipelineFailure> {
        let source = CsvSource::new(config, self.dir.path()).unwrap();
        let sink = ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap();
        Pipeline::new(
            PipelineSettings::new("t"),
            Box::new(source),
            Box::new(sink),
            Box::new(NdjsonDeadLetter::new(self.dlq())),
            self.state(),
        )
        .run()
        .await
    }
    async fn run(&self) -> RunSummary {
        self.run_with(CsvSourceConfig::new("in.csv")).await.unwrap()
    }
    fn output(&self) -> Vec<RecordBatch> {
        read_parquet_dir(&self.path("out/in"))
    }
}

fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "stray file {name}"
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        out.extend(reader.map(|b| b.unwrap()));
    }
    out
}

fn column<'a, T: 'static>(batches: &'a [RecordBatch], name: &str) -> Vec<&'a T> {
    batches
        .iter()
        .map(|b| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<T>()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn typed_columns_arrive_exactly() {
    let f = Fixture::new("id,name,amount,paid,day\n1,alice,3.5,true,2024-01-31\n2,\"bob, jr\",,false,2024-02-01\n3,\"multi\nline\",-0.25,TRUE,\n");
    let s = f.run().await;
    assert_eq!((s.rows_in, s.rows_out, s.dead_lettered), (3, 3, 0));
    let out = f.output();
    let schema = out[0].schema();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(types, ["Int64", "Utf8", "Float64", "Boolean", "Date32"]);
    let ids: Vec<i64> = column::<Int64Array>(&out, "id")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let names = column::<StringArray>(&out, "name");
    assert_eq!(names[0].value(1), "bob, jr");
    assert_eq!(names[0].value(2), "multi\nline");
    let amounts = column::<Float64Array>(&out, "amount");
    assert!(amounts[0].is_null(1));
    assert_eq!(amounts[0].value(2), -0.25);
}

#[tokio::test]
async fn bad_rows_are_dead_lettered_with_file_line_and_field() {
    // Line 4 is inside a quoted newline record (lines 3-4), so the bad rows are on lines 5 and 6.
    let f =
        Fixture::new("id,note,amount\n1,a,2.5\n2,\"multi\nline\",3\n4,b,x\n5,c,1,extra\n6,d,7\n");
    let mut c = CsvSourceConfig::new("in.csv");
    c.columns
        .insert("amount".into(), tributary_files::csv::ColumnType::Float64);
    let s = f.run_with(c).await.unwrap();
    assert_eq!((s.rows_out, s.dead_lettered), (3, 2), "{s:?}");
    let dead = NdjsonDeadLetter::read_all(f.dlq()).unwrap();
    let messages: Vec<&str> = dead.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "line 5: field `amount`: expected float64, found \"x\"",
            "line 6: expected 3 fields, found 4",
        ]
    );
    let in_csv = f.path("in.csv").display().to_string();
    assert_eq!(
        dead[0].location.as_deref(),
        Some(format!("{in_csv}:5").as_str())
    );
    assert_eq!(dead[1].raw.as_deref(), Some("5,c,1,extra"));
    assert!(dead[0].position.is_some());
    let ids: Vec<i64> = column::<Int64Array>(&f.output(), "id")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    assert_eq!(ids, [1, 2, 6]);
}

#[tokio::test]
async fn reruns_ingest_only_what_was_appended() {
    let f = Fixture::new("id,v\n1,a\n2,b\n");
    assert_eq!(f.run().await.rows_out, 2);
    assert_eq!(f.run().await.rows_out, 0, "a re-run writes nothing");
    let mut csv = std::fs::OpenOptions::new()
        .append(true)
        .open(f.path("in.csv"))
        .unwrap();
    std::io::Write::write_all(&mut csv, b"3,c\n").unwrap();
    let s = f.run().await;
    assert_eq!(s.rows_out, 1);
    let ids: Vec<i64> = column::<Int64Array>(&f.output(), "id")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
}

#[tokio::test]
async fn a_header_only_file_yields_no_rows_and_no_error() {
    let f = Fixture::new("id,name\n");
    let s = f.run().await;
    assert_eq!((s.rows_in, s.dead_lettered), (0, 0));
    assert!(f.output().is_empty());
}

#[tokio::test]
async fn a_rewritten_file_is_read_again_and_one_changed_mid_read_stops_with_a_hint() {
    let f = Fixture::new("id\n1\n2\n3\n");
    assert_eq!(f.run().await.rows_out, 3);
    // Rewritten after it was ingested (shorter, different content): a new version, read again.
    std::fs::write(f.path("in.csv"), "id\n9\n").unwrap();
    let s = f.run().await;
    assert_eq!((s.rows_out, s.files_completed), (1, 1));

    // A committed position inside a file (as a crash leaves it), then the file changes: the
    // rows already written came from the old content, so the run refuses to guess.
    let file = &tributary_files::input::FileSet::new(
        f.dir.path(),
        "in.csv",
        tributary_files::input::Compression::Auto,
    )
    .list()
    .unwrap()[0];
    let mid = file.position(tributary_files::csv::CsvPosition { offset: 3, line: 2 });
    let state = Arc::new(SqliteStateStore::open(f.path("state2.db")).unwrap());
    state.commit_positions("t", &[("in", &mid)], &[]).unwrap();
    std::fs::write(f.path("in.csv"), "id\n1\n2\n3\n4\n").unwrap();
    let source = CsvSource::new(CsvSourceConfig::new("in.csv"), f.dir.path()).unwrap();
    let sink = ParquetSink::new(ParquetSinkConfig::new("out"), f.dir.path()).unwrap();
    let err = Pipeline::new(
        PipelineSettings::new("t"),
        Box::new(source),
        Box::new(sink),
        Box::new(NdjsonDeadLetter::new(f.dlq())),
        state,
    )
    .run()
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("changed since an earlier run read part of it"),
        "{msg}"
    );
    assert!(msg.contains("tributary state reset"), "{msg}");
}

#[tokio::test]
async fn a_resumed_run_reuses_the_stored_schema_and_continues_mid_file() {
    // Small batches and a tiny file size make several committed files; then the state is
    // rewound to the middle by hand (as a crash would leave it) and the run replays from there.
    let rows: String = (0..100).map(|i| format!("{i},{}\n", i * 2)).collect();
    let f = Fixture::new(&format!("id,v\n{rows}"));
    let mut c = CsvSourceConfig::new("in.csv");
    c.batch_size = std::num::NonZeroUsize::new(10).unwrap();
    let source = CsvSource::new(c.clone(), f.dir.path()).unwrap();
    let mut sink_cfg = ParquetSinkConfig::new("out");
    sink_cfg.file_rows = std::num::NonZeroU64::new(30).unwrap();
    let sink = ParquetSink::new(sink_cfg.clone(), f.dir.path()).unwrap();
    let state = f.state();
    let settings = PipelineSettings::new("t");
    Pipeline::new(
        settings.clone(),
        Box::new(source),
        Box::new(sink),
        Box::new(NdjsonDeadLetter::new(f.dlq())),
        state.clone(),
    )
    .run()
    .await
    .unwrap();
    let files_before = std::fs::read_dir(f.path("out/in")).unwrap().count();
    assert_eq!(files_before, 4, "30+30+30+10 rows");

    // Rewind to the end of the first file (row 30), as if the commits after it were lost.
    let header_len = "id,v\n".len() as u64;
    let offset = header_len
        + (0..30)
            .map(|i: i64| format!("{i},{}\n", i * 2).len() as u64)
            .sum::<u64>();
    let file = &tributary_files::input::FileSet::new(
        f.dir.path(),
        "in.csv",
        tributary_files::input::Compression::Auto,
    )
    .list()
    .unwrap()[0];
    let pos = file.position(tributary_files::csv::CsvPosition { offset, line: 32 });
    // A fresh state with the first run's schema and that position, but no ledger entry.
    let state = Arc::new(SqliteStateStore::open(f.path("state2.db")).unwrap());
    for v in f.state().schema_history("t", "in").unwrap() {
        state.record_schema("t", "in", &v.schema).unwrap();
    }
    state.commit_positions("t", &[("in", &pos)], &[]).unwrap();
    let source = CsvSource::new(c, f.dir.path()).unwrap();
    let sink = ParquetSink::new(sink_cfg, f.dir.path()).unwrap();
    let s = Pipeline::new(
        settings,
        Box::new(source),
        Box::new(sink),
        Box::new(NdjsonDeadLetter::new(f.dlq())),
        state,
    )
    .run()
    .await
    .unwrap();
    assert_eq!(s.rows_out, 70);
    assert!(s.schema_changes.is_empty(), "the stored schema was reused");
    // Replayed files overwrote their earlier copies: still 4 files, each id exactly once.
    assert_eq!(
        std::fs::read_dir(f.path("out/in")).unwrap().count(),
        files_before
    );
    let mut ids: Vec<i64> = column::<Int64Array>(&f.output(), "id")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
}

/// A file with quoted newlines, doubled quotes and bad rows scattered through it.
fn tricky_csv(rows: usize, stray_quote_at: Option<usize>) -> String {
    let mut s = String::from("id,note,amount\n");
    for i in 0..rows {
        let note = match i % 7 {
            0 => "\"two\nlines\"".to_string(),
            1 => "\"say \"\"hi\"\"\"".to_string(),
            2 => String::new(),
            _ if Some(i) == stray_quote_at => "5\" screen".to_string(),
            _ => format!("n{i}"),
        };
        let amount = if i % 101 == 0 {
            "oops".to_string()
        } else {
            format!("{}.5", i)
        };
        if i % 211 == 0 {
            s.push_str(&format!("{i},{note},{amount},extra\n"));
        } else {
            s.push_str(&format!("{i},{note},{amount}\n"));
        }
    }
    s
}

async fn run_threads(
    f: &Fixture,
    threads: usize,
    chunk: usize,
) -> (RunSummary, Vec<i64>, Vec<String>, Vec<String>) {
    for p in [
        "out",
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "dlq.ndjson",
    ] {
        let _ = std::fs::remove_dir_all(f.path(p));
        let _ = std::fs::remove_file(f.path(p));
    }
    let mut c = CsvSourceConfig::new("in.csv");
    c.threads = std::num::NonZeroUsize::new(threads);
    c.chunk_bytes = std::num::NonZeroUsize::new(chunk).unwrap();
    c.batch_size = std::num::NonZeroUsize::new(97).unwrap();
    c.columns
        .insert("amount".into(), tributary_files::csv::ColumnType::Float64);
    let s = f.run_with(c).await.unwrap();
    let out = f.output();
    let ids: Vec<i64> = column::<Int64Array>(&out, "id")
        .iter()
        .flat_map(|a| a.values().to_vec())
        .collect();
    let notes: Vec<String> = column::<StringArray>(&out, "note")
        .iter()
        .flat_map(|a| {
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        "<null>".to_string()
                    } else {
                        a.value(i).to_string()
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let dead = NdjsonDeadLetter::read_all(f.dlq())
        .unwrap()
        .into_iter()
        .map(|d| d.message)
        .collect();
    (s, ids, notes, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_chunks_read_exactly_like_one_thread() {
    let f = Fixture::new(&tricky_csv(3000, None));
    let (serial, ids1, notes1, dead1) = run_threads(&f, 1, 1 << 20).await;
    for chunk in [64, 257, 4096] {
        let (parallel, ids, notes, dead) = run_threads(&f, 3, chunk).await;
        assert_eq!(parallel.rows_out, serial.rows_out, "chunk {chunk}");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ids1.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(ids, ids1, "rows keep file order, chunk {chunk}");
        assert_eq!(notes, notes1, "chunk {chunk}");
        assert_eq!(
            dead, dead1,
            "same dead letters with the same line numbers, chunk {chunk}"
        );
        assert_eq!(parallel.positions, serial.positions);
    }
    assert!(dead1
        .iter()
        .any(|m| m.starts_with("line ") && m.contains("expected float64, found \"oops\"")));
    assert!(dead1
        .iter()
        .any(|m| m.contains("expected 3 fields, found 4")));
    assert!(
        notes1.contains(&"two\nlines".to_string()) && notes1.contains(&"say \"hi\"".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_quote_falls_back_to_one_thread_without_losing_rows() {
    let f = Fixture::new(&tricky_csv(2000, Some(1503)));
    let (serial, ids1, notes1, dead1) = run_threads(&f, 1, 1 << 20).await;
    let (parallel, ids, notes, dead) = run_threads(&f, 2, 300).await;
    assert_eq!(parallel.rows_out, serial.rows_out);
    assert_eq!((ids, notes, dead), (ids1, notes1.clone(), dead1));
    assert!(
        notes1.contains(&"5\" screen".to_string()),
        "the csv reader keeps a stray quote as text"
    );
}

#[tokio::test]
async fn escape_and_comment_files_are_read_by_one_thread() {
    let f = Fixture::new(
        "# exported by a tool\nid,note\n1,\"a \\\"quoted\\\" word\"\n# a comment line\n2,plain\n",
    );
    let mut c = CsvSourceConfig::new("in.csv");
    c.escape = Some('\\');
    c.comment = Some('#');
    let s = f.run_with(c).await.unwrap();
    assert_eq!(s.rows_out, 2);
    let out = f.output();
    assert_eq!(
        column::<StringArray>(&out, "note")[0].value(0),
        "a \"quoted\" word"
    );
}
