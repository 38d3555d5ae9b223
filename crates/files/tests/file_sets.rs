//! Folders, globs, compressed files, encodings, the file ledger and schema policies, on the
//! real files in `tests/data/`, through the real runtime into Parquet.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunSummary};
use tributary_core::schema::SchemaPolicy;
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::Source;
use tributary_files::csv::{CsvSource, CsvSourceConfig};
use tributary_files::json::{JsonSource, JsonSourceConfig};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};

/// A temporary copy of `tests/data` with a state store, output folder and dead-letter file.
struct Fixture {
    dir: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
            &dir.path().join("data"),
        );
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn run(&self, source: Box<dyn Source>, policy: SchemaPolicy) -> RunSummary {
        let sink = ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap();
        let mut settings = PipelineSettings::new("t");
        settings.schema_policy = policy;
        Pipeline::new(
            settings,
            source,
            Box::new(sink),
            Box::new(NdjsonDeadLetter::new(self.path("dlq.ndjson"))),
            Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap()),
        )
        .run()
        .await
        .unwrap()
    }

    fn csv(&self, config: CsvSourceConfig) -> Box<dyn Source> {
        Box::new(CsvSource::new(config, self.dir.path()).unwrap())
    }

    async fn run_csv(&self, path: &str, policy: SchemaPolicy) -> RunSummary {
        self.run(self.csv(CsvSourceConfig::new(path)), policy).await
    }

    /// Every output row of a stream (committed files only, not a file being written).
    fn output(&self, stream: &str) -> Vec<RecordBatch> {
        let mut files: Vec<_> = std::fs::read_dir(self.path("out").join(stream))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap())
            })
            .collect()
    }

    /// (location, message) of every dead letter.
    fn dead(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path("dlq.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["location"].as_str().unwrap_or("").to_string(),
                    v["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// The values of an integer column across batches, sorted.
fn ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(name)
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    v.sort();
    v
}

/// (order_id, amount as f64, country, discount) of every row, sorted by id, whatever the
/// batch's schema version (v1 has int64 amounts and no discount).
fn orders(batches: &[RecordBatch]) -> Vec<(i64, f64, String, Option<f64>)> {
    let mut rows = Vec::new();
    for b in batches {
        let ids = b
            .column_by_name("order_id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let amount = b.column_by_name("amount").unwrap();
        let country = b.column_by_name("country").unwrap().as_string::<i32>();
        let discount = b.column_by_name("discount");
        for i in 0..b.num_rows() {
            let a = match amount.data_type() {
                DataType::Int64 => amount.as_primitive::<Int64Type>().value(i) as f64,
                _ => amount.as_primitive::<Float64Type>().value(i),
            };
            let d = discount.and_then(|d| {
                let d = d.as_primitive::<Float64Type>();
                d.is_valid(i).then(|| d.value(i))
            });
            rows.push((ids.value(i), a, country.value(i).to_string(), d));
        }
    }
    rows.sort_by_key(|r| r.0);
    rows
}

#[tokio::test]
async fn a_folder_evolves_its_schema_and_the_ledger_reads_each_file_once() {
    let f = Fixture::new();
    let s = f.run_csv("data/csv/monthly", SchemaPolicy::Evolve).await;
    assert_eq!(
        (s.rows_out, s.dead_lettered, s.files_completed),
        (7, 0, 3),
        "{s:?}"
    );
    // v1 from January; February adds `discount` and widens `amount`; the gzipped March file
    // (columns in another order) fits v2.
    let changes: Vec<(u32, &str)> = s
        .schema_changes
        .iter()
        .map(|c| (c.version, c.change.as_str()))
        .collect();
    assert_eq!(
        changes,
        [(1, ""), (2, "added discount; amount Int64 → Float64")]
    );
    assert_eq!(
        orders(&f.output("monthly")),
        [
            (1, 10.0, "DE".into(), None),
            (2, 20.0, "FR".into(), None),
            (3, 30.5, "DE".into(), Some(0.1)),
            (4, 40.0, "US".into(), None),
            (5, 50.0, "DE".into(), None),
            (6, 60.25, "IT".into(), None),
            (7, 70.0, "DE".into(), Some(0.2)),
        ]
    );

    // A re-run reads nothing; a new file is read alone; a rewritten one again.
    let again = f.run_csv("data/csv/monthly", SchemaPolicy::Evolve).await;
    assert_eq!((again.rows_out, again.files_completed), (0, 0));
    std::fs::write(
        f.path("data/csv/monthly/2024-04.csv"),
        "order_id,amount,country\n8,80,NL\n",
    )
    .unwrap();
    std::fs::write(
        f.path("data/csv/monthly/2024-01.csv"),
        "order_id,amount,country\n1,11,DE\n",
    )
    .unwrap();
    let next = f.run_csv("data/csv/monthly", SchemaPolicy::Evolve).await;
    assert_eq!((next.rows_out, next.files_completed), (2, 2), "{next:?}");
    let state = SqliteStateStore::open(f.path("state.db")).unwrap();
    let ledger: Vec<String> = state
        .files("t", "monthly")
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        ledger,
        [
            "data/csv/monthly/2024-01.csv",
            "data/csv/monthly/2024-02.csv",
            "data/csv/monthly/2024-03.csv.gz",
            "data/csv/monthly/2024-04.csv"
        ]
    );
}

#[tokio::test]
async fn freeze_rejects_what_does_not_fit_and_discard_policies_drop_it() {
    // Under freeze and the discard policies the schema stays at January's (amount int64):
    // 30.5 and 60.25 do not fit; row 7 has a value in the unknown `discount` column.
    let f = Fixture::new();
    let s = f.run_csv("data/csv/monthly", SchemaPolicy::Freeze).await;
    assert_eq!((s.rows_out, s.dead_lettered, s.skipped), (4, 3, 0), "{s:?}");
    assert_eq!(ints(&f.output("monthly"), "order_id"), [1, 2, 4, 5]);
    let dead = f.dead();
    assert!(
        dead[0].0.ends_with("data/csv/monthly/2024-02.csv:2"),
        "{dead:?}"
    );
    assert_eq!(
        dead[0].1,
        "line 2: field `amount`: expected int64, found \"30.5\""
    );
    assert_eq!(
        dead[1].1,
        "line 4: field `discount` is not in the stream's schema (schema_policy: freeze), found \"0.2\""
    );
    assert!(
        dead[2].0.ends_with("data/csv/monthly/2024-03.csv.gz:3"),
        "{dead:?}"
    );
    assert_eq!(s.schema_changes.len(), 1, "one version only");

    let f = Fixture::new();
    let s = f
        .run_csv("data/csv/monthly", SchemaPolicy::DiscardRows)
        .await;
    assert_eq!((s.rows_out, s.dead_lettered, s.skipped), (4, 0, 3), "{s:?}");
    assert_eq!(ints(&f.output("monthly"), "order_id"), [1, 2, 4, 5]);

    let f = Fixture::new();
    let s = f
        .run_csv("data/csv/monthly", SchemaPolicy::DiscardColumns)
        .await;
    assert_eq!((s.rows_out, s.dead_lettered, s.skipped), (5, 2, 0), "{s:?}");
    let out = f.output("monthly");
    assert_eq!(ints(&out, "order_id"), [1, 2, 4, 5, 7]);
    assert!(out.iter().all(|b| b.column_by_name("discount").is_none()));
}

/// The one string column of a single-stream output, in order.
fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).unwrap().as_string::<i32>();
            (0..b.num_rows())
                .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn encodings_bom_and_quoted_newlines_come_out_exact() {
    let f = Fixture::new();
    // Without `encoding:` a Latin-1 file is not valid UTF-8: every row says so and where.
    let s = f.run_csv("data/csv/latin1.csv", SchemaPolicy::Evolve).await;
    assert_eq!((s.rows_out, s.dead_lettered), (0, 3));
    assert!(
        f.dead()[0]
            .1
            .contains("field `name` is not valid UTF-8 (set `encoding:`"),
        "{:?}",
        f.dead()
    );

    let f = Fixture::new();
    let mut c = CsvSourceConfig::new("data/csv/latin1.csv");
    c.encoding = Some("latin1".into());
    assert_eq!(f.run(f.csv(c), SchemaPolicy::Evolve).await.rows_out, 3);
    assert_eq!(
        strings(&f.output("latin1"), "name"),
        [
            Some("Müller".into()),
            Some("Françoise".into()),
            Some("Øster".into())
        ]
    );
    // The same file compressed with zstd, read as its own stream.
    let mut c = CsvSourceConfig::new("data/csv/latin1.csv.zst");
    c.encoding = Some("iso-8859-1".into());
    c.stream = Some("latin1_zst".into());
    assert_eq!(f.run(f.csv(c), SchemaPolicy::Evolve).await.rows_out, 3);
    assert_eq!(
        strings(&f.output("latin1_zst"), "city"),
        [
            Some("Köln".into()),
            Some("Besançon".into()),
            Some("Århus".into())
        ]
    );
    let mut c = CsvSourceConfig::new("data/csv/cp1252.csv");
    c.encoding = Some("windows-1252".into());
    f.run(f.csv(c), SchemaPolicy::Evolve).await;
    assert_eq!(
        strings(&f.output("cp1252"), "label"),
        [Some("€ 5".into()), Some("“quoted”".into())]
    );

    // A UTF-8 byte-order mark is not part of the first column's name; quoted newlines and
    // doubled quotes survive; \r\n line ends are not part of values.
    let s = f
        .run_csv("data/csv/bom_quoted.csv", SchemaPolicy::Evolve)
        .await;
    assert_eq!((s.rows_out, s.dead_lettered), (3, 0), "{:?}", f.dead());
    let out = f.output("bom_quoted");
    assert_eq!(ints(&out, "id"), [1, 2, 3]);
    assert_eq!(
        strings(&out, "note"),
        [Some("two\nlines".into()), Some("say \"hi\"".into()), None]
    );
    let amounts = out[0]
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(
        (amounts.value(0), amounts.value(1), amounts.is_null(2)),
        (1.5, 2.0, true)
    );
}

#[tokio::test]
async fn ragged_empty_and_header_only_files_are_handled_without_losing_rows() {
    let f = Fixture::new();
    let mut c = CsvSourceConfig::new("data/csv/*.csv");
    c.stream = Some("mixed".into());
    // empty.csv, header_only.csv, ragged.csv.
    c.path = tributary_core::config::VarStr::new("data/csv/[ehr]*.csv");
    let s = f.run(f.csv(c), SchemaPolicy::Evolve).await;
    // empty.csv and header_only.csv add nothing; ragged.csv has two bad rows.
    assert_eq!(
        (s.rows_out, s.dead_lettered, s.files_completed),
        (2, 2, 3),
        "{s:?}"
    );
    let dead = f.dead();
    assert!(dead[0].0.ends_with("data/csv/ragged.csv:3"), "{dead:?}");
    assert_eq!(dead[0].1, "line 3: expected 3 fields, found 2");
    assert_eq!(dead[1].1, "line 4: expected 3 fields, found 4");
    assert_eq!(ints(&f.output("mixed"), "id"), [1, 4]);
}

#[tokio::test]
async fn json_files_in_a_folder_nest_and_widen_across_files() {
    let f = Fixture::new();
    let source = JsonSource::new(JsonSourceConfig::new("data/json/events"), f.dir.path()).unwrap();
    let s = f.run(Box::new(source), SchemaPolicy::Evolve).await;
    assert_eq!(
        (s.rows_out, s.dead_lettered, s.files_completed),
        (4, 0, 2),
        "{s:?}"
    );
    let change = &s.schema_changes[1].change;
    assert!(
        change.contains("added source") && change.contains("amount Int64 → Float64"),
        "{change}"
    );
    let out = f.output("events");
    // Output files are named by position hash: find b.ndjson's rows by their schema.
    let last = out
        .iter()
        .find(|b| b.column_by_name("source").is_some())
        .unwrap();
    let user = last.column_by_name("user").unwrap().as_struct();
    let address = user.column_by_name("address").unwrap().as_struct();
    let geo = address.column_by_name("geo").unwrap().as_struct();
    assert_eq!(
        geo.column_by_name("lat")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        59.9
    );
    assert!(user.is_null(1), "user: null stays null");
    assert_eq!(ints(&out, "id"), [1, 2, 3, 4]);

    // Freeze keeps the first file's schema: the unknown field and the float are rejected.
    let f = Fixture::new();
    let source = JsonSource::new(JsonSourceConfig::new("data/json/events"), f.dir.path()).unwrap();
    let s = f.run(Box::new(source), SchemaPolicy::Freeze).await;
    assert_eq!((s.rows_out, s.dead_lettered), (2, 2), "{s:?}");
    let dead = f.dead();
    assert!(
        dead.iter()
            .all(|(loc, _)| loc.contains("data/json/events/b.ndjson:")),
        "{dead:?}"
    );
}

/// Polls `check` every 20 ms until it holds or 20 s pass.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_reads_files_as_they_land_until_stopped() {
    let f = Fixture::new();
    let landing = f.path("landing");
    std::fs::create_dir_all(&landing).unwrap();
    // Files land the safe way: written under a temporary name, renamed into place.
    let land = |name: &str, text: &str| {
        let tmp = landing.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, landing.join(name)).unwrap();
    };
    land("a.ndjson", "{\"id\": 1}\n{\"id\": 2}\n");
    let mut config = JsonSourceConfig::new("landing");
    config.follow = Some(tributary_files::input::Follow {
        poll_interval: std::time::Duration::from_millis(50),
        settle: std::time::Duration::ZERO,
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut settings = PipelineSettings::new("t");
    // Commit (and so make the output durable) quickly, so the test sees it.
    settings.commit_interval = std::time::Duration::from_millis(50);
    let pipeline = Pipeline::new(
        settings,
        Box::new(JsonSource::new(config, f.dir.path()).unwrap()),
        Box::new(ParquetSink::new(ParquetSinkConfig::new("out"), f.dir.path()).unwrap()),
        Box::new(NdjsonDeadLetter::new(f.path("dlq.ndjson"))),
        Arc::new(SqliteStateStore::open(f.path("state.db")).unwrap()),
    )
    .with_stop(stop.clone());
    let run = tokio::spawn(pipeline.run());
    let ids = |f: &Fixture| {
        let mut ids: Vec<i64> = f
            .output("landing")
            .iter()
            .flat_map(|b| {
                b.column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        ids.sort();
        ids
    };
    eventually("the first file", || ids(&f) == [1, 2]).await;
    land("b.ndjson", "{\"id\": 3}\n");
    eventually("a file that landed later", || ids(&f) == [1, 2, 3]).await;
    // A file that grows after it was read continues where it stopped: nothing twice.
    let mut grow = std::fs::OpenOptions::new()
        .append(true)
        .open(landing.join("b.ndjson"))
        .unwrap();
    use std::io::Write;
    grow.write_all(b"{\"id\": 4}\n").unwrap();
    drop(grow);
    eventually("the appended line", || ids(&f) == [1, 2, 3, 4]).await;
    assert!(!run.is_finished(), "follow mode keeps running");
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        (summary.rows_out, summary.files_completed),
        (4, 3),
        "{summary:?}"
    );
}

#[tokio::test]
async fn identify_by_content_skips_a_touched_copy_but_reads_a_changed_file() {
    let f = Fixture::new();
    let landing = f.path("drop");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::write(landing.join("a.csv"), "id,v\n1,x\n2,y\n").unwrap();
    std::fs::write(landing.join("b.csv"), "id,v\n3,z\n").unwrap();
    let config = |by: tributary_files::input::Identity| {
        let mut c = CsvSourceConfig::new("drop");
        c.identify_by = by;
        c
    };
    use tributary_files::input::Identity;
    let first = f
        .run(f.csv(config(Identity::Content)), SchemaPolicy::Evolve)
        .await;
    assert_eq!((first.rows_out, first.files_completed), (3, 2));
    let ledger = SqliteStateStore::open(f.path("state.db"))
        .unwrap()
        .files("t", "drop")
        .unwrap();
    assert!(
        ledger.iter().all(|r| r
            .content_hash
            .as_deref()
            .is_some_and(|h| h.starts_with("xxh3:"))),
        "{ledger:?}"
    );

    // The same bytes written again (new modification time): skipped by content…
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::write(landing.join("a.csv"), "id,v\n1,x\n2,y\n").unwrap();
    File::options()
        .write(true)
        .open(landing.join("a.csv"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    // …while a file with one byte changed and the same size is read again.
    std::fs::write(landing.join("b.csv"), "id,v\n4,z\n").unwrap();
    File::options()
        .write(true)
        .open(landing.join("b.csv"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = f
        .run(f.csv(config(Identity::Content)), SchemaPolicy::Evolve)
        .await;
    assert_eq!(
        (second.rows_out, second.files_completed),
        (1, 1),
        "{second:?}"
    );

    // By metadata (the default), the touched copy is read again.
    let g = Fixture::new();
    std::fs::create_dir_all(g.path("drop")).unwrap();
    std::fs::write(g.path("drop/a.csv"), "id,v\n1,x\n").unwrap();
    g.run(g.csv(config(Identity::Metadata)), SchemaPolicy::Evolve)
        .await;
    File::options()
        .write(true)
        .open(g.path("drop/a.csv"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let again = g
        .run(g.csv(config(Identity::Metadata)), SchemaPolicy::Evolve)
        .await;
    assert_eq!(again.rows_out, 1);
}

#[tokio::test]
async fn deeply_nested_json_comes_out_exact() {
    let f = Fixture::new();
    let s = f
        .run(
            Box::new(
                JsonSource::new(JsonSourceConfig::new("data/json/deep"), f.dir.path()).unwrap(),
            ),
            SchemaPolicy::Evolve,
        )
        .await;
    assert_eq!((s.rows_out, s.dead_lettered), (3, 0), "{s:?}");
    let batches = f.output("deep");
    let text = arrow_cast::display::ArrayFormatter::try_new(
        batches[0].column_by_name("order").unwrap().as_ref(),
        &Default::default(),
    )
    .map(|fmt| (0..3).map(|i| fmt.value(i).to_string()).collect::<Vec<_>>())
    .unwrap();
    assert_eq!(
        text[0],
        "{id: 1, customer: {name: Zoë Ångström, address: {geo: {lat: 59.33, lon: 18.07, tags: [se, hq]}}}, lines: [{sku: A-1, qty: 2, options: [{k: size, v: L}, {k: color, v: red}]}, {sku: B-7, qty: 1, options: []}]}"
    );
    assert_eq!(
        text[1],
        "{id: 2, customer: {name: tab\there \"quoted\", address: }, lines: [{sku: C-3, qty: 5, options: [{k: note, v: line\nbreak}]}]}"
    );
    assert_eq!(
        text[2],
        "{id: 3, customer: {name: Bob, address: {geo: {lat: -33.9, lon: 151.2, tags: []}}}, lines: []}"
    );
    let meta = batches[0].column_by_name("meta").unwrap();
    assert!(meta.is_null(2));
    let order_type = batches[0]
        .schema()
        .field_with_name("order")
        .unwrap()
        .data_type()
        .to_string();
    assert!(
        order_type.contains("lines") && order_type.contains("List(Struct"),
        "{order_type}"
    );
}
