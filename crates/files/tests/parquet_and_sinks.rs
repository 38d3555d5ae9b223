//! The Parquet source (row groups, projection, resume, schemas across files) and the file
//! sinks (Hive partitions, NDJSON, CSV, compression, size cuts, replays), through the real
//! runtime on real files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tributary_core::dead_letter::{DeadLetterRecord, NdjsonDeadLetter};
use tributary_core::runtime::{Pipeline, PipelineSettings, RunSummary};
use tributary_core::schema::SchemaPolicy;
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::{Sink, Source};
use tributary_files::parquet::{
    ParquetPosition, ParquetSink, ParquetSinkConfig, ParquetSource, ParquetSourceConfig,
};
use tributary_files::sink::{
    CsvSink, CsvSinkConfig, NdjsonSink, NdjsonSinkConfig, TextCompression,
};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn run_with(
        &self,
        source: Box<dyn Source>,
        sink: Box<dyn Sink>,
        policy: SchemaPolicy,
    ) -> RunSummary {
        let mut settings = PipelineSettings::new("t");
        settings.schema_policy = policy;
        Pipeline::new(
            settings,
            source,
            sink,
            Box::new(NdjsonDeadLetter::new(self.path("dlq.ndjson"))),
            Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap()),
        )
        .run()
        .await
        .unwrap()
    }

    fn parquet_source(&self, config: ParquetSourceConfig) -> Box<dyn Source> {
        Box::new(ParquetSource::new(config, self.dir.path()).unwrap())
    }

    fn parquet_sink(&self) -> Box<dyn Sink> {
        Box::new(ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap())
    }

    fn dead(&self) -> Vec<DeadLetterRecord> {
        NdjsonDeadLetter::read_all(self.path("dlq.ndjson")).unwrap_or_default()
    }
}

/// Writes a Parquet file with the given batches and rows per row group.
fn write_parquet(path: &Path, batches: &[RecordBatch], row_group_rows: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(path).unwrap(),
        batches[0].schema(),
        Some(props),
    )
    .unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Every file under `dir` (recursively) with its path relative to `dir`, sorted.
fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(column)
                .unwrap()
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

fn orders(ids: std::ops::Range<i64>) -> RecordBatch {
    let n = ids.end - ids.start;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("qty", DataType::Int32, false),
            Field::new("country", DataType::Utf8, true),
            Field::new("note", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int32Array::from_iter_values(
                ids.clone().map(|i| (i % 5) as i32),
            )),
            Arc::new(StringArray::from_iter(ids.clone().map(|i| {
                (i % 7 != 6).then(|| ["DE", "FR", "a/b"][(i % 3) as usize])
            }))),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("note {i}")),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn parquet_streams_row_groups_with_projection_and_resumes_mid_group() {
    let f = Fixture::new();
    // 1000 rows in row groups of 128, read 100 rows per batch.
    write_parquet(&f.path("in/orders.parquet"), &[orders(0..1000)], 128);
    let mut config = ParquetSourceConfig::new("in/orders.parquet");
    config.columns = Some(vec!["qty".into(), "id".into()]);
    config.batch_size = 100.try_into().unwrap();

    // What an earlier run that stopped at row 300 (inside the third row group) committed.
    let at = tributary_files::input::FileSet::new(
        f.dir.path(),
        "in/orders.parquet",
        tributary_files::input::Compression::None,
    )
    .list()
    .unwrap()[0]
        .position(ParquetPosition { row: 300 });
    SqliteStateStore::open(f.path("state.db"))
        .unwrap()
        .commit_positions("t", &[("orders", &at)], &[])
        .unwrap();

    let mut source = ParquetSource::new(config.clone(), f.dir.path()).unwrap();
    let info = source.discover().await.unwrap();
    assert!(
        info[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("1000 rows in 8 row groups"),
        "{:?}",
        info[0].detail
    );
    let names: Vec<&str> = info[0]
        .schema
        .as_ref()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        ["id", "qty"],
        "projection keeps the file's column order"
    );

    let s = f
        .run_with(
            f.parquet_source(config.clone()),
            f.parquet_sink(),
            SchemaPolicy::Evolve,
        )
        .await;
    assert_eq!((s.rows_out, s.files_completed), (700, 1), "{s:?}");
    let out: Vec<RecordBatch> = files_under(&f.path("out/orders"))
        .iter()
        .flat_map(|(_, p)| read_parquet(p))
        .collect();
    assert_eq!(out[0].num_columns(), 2);
    assert_eq!(ints(&out, "id"), (300..1000).collect::<Vec<_>>());
    let qty: i32 = out
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.unwrap())
                .sum::<i32>()
        })
        .sum();
    assert_eq!(qty, (300..1000).map(|i| i % 5).sum::<i32>());

    // The file is in the ledger now.
    let again = f
        .run_with(
            f.parquet_source(config),
            f.parquet_sink(),
            SchemaPolicy::Evolve,
        )
        .await;
    assert_eq!(again.rows_out, 0);
}

#[tokio::test]
async fn parquet_schemas_evolve_across_files_or_reject_rows_that_do_not_fit() {
    let schema_a = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("amount", DataType::Int32, true),
    ]));
    let a = RecordBatch::try_new(
        schema_a,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(Int32Array::from(vec![Some(10), None])),
        ],
    )
    .unwrap();
    // The second file: amount became a float, and a struct column appeared (null in the
    // second row).
    let inner = Arc::new(
        StructArray::try_new(
            vec![Field::new("city", DataType::Utf8, true)].into(),
            vec![Arc::new(StringArray::from(vec![Some("Lyon"), None])) as ArrayRef],
            Some(vec![true, false].into()),
        )
        .unwrap(),
    );
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("address", inner.data_type().clone(), true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![3, 4])),
            Arc::new(Float64Array::from(vec![2.5, 7.0])),
            inner,
        ],
    )
    .unwrap();

    let evolve = Fixture::new();
    write_parquet(&evolve.path("in/a.parquet"), std::slice::from_ref(&a), 10);
    write_parquet(&evolve.path("in/b.parquet"), std::slice::from_ref(&b), 10);
    let s = evolve
        .run_with(
            evolve.parquet_source(ParquetSourceConfig::new("in")),
            evolve.parquet_sink(),
            SchemaPolicy::Evolve,
        )
        .await;
    assert_eq!((s.rows_out, s.files_completed), (4, 2), "{s:?}");
    assert_eq!(
        s.schema_changes[1].change,
        "added address; amount Int32 → Float64"
    );
    let out: Vec<RecordBatch> = files_under(&evolve.path("out/in"))
        .iter()
        .flat_map(|(_, p)| read_parquet(p))
        .collect();
    let mut amounts: Vec<(i64, Option<f64>)> = out
        .iter()
        .flat_map(|b| {
            let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            let amount = b.column_by_name("amount").unwrap();
            let amount: Vec<Option<f64>> = match amount.data_type() {
                DataType::Float64 => amount.as_primitive::<Float64Type>().iter().collect(),
                DataType::Int32 => amount
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map(f64::from))
                    .collect(),
                other => panic!("amount is {other}"),
            };
            ids.values().iter().copied().zip(amount).collect::<Vec<_>>()
        })
        .collect();
    amounts.sort_by_key(|(id, _)| *id);
    assert_eq!(
        amounts,
        [(1, Some(10.0)), (2, None), (3, Some(2.5)), (4, Some(7.0))]
    );

    // Frozen: the second file's rows with an address are rejected, naming file and row; the
    // float amounts do not fit Int32 (2.5 would change), so they are rejected too.
    let frozen = Fixture::new();
    write_parquet(&frozen.path("in/a.parquet"), &[a], 10);
    write_parquet(&frozen.path("in/b.parquet"), &[b], 10);
    let s = frozen
        .run_with(
            frozen.parquet_source(ParquetSourceConfig::new("in")),
            frozen.parquet_sink(),
            SchemaPolicy::Freeze,
        )
        .await;
    assert_eq!((s.rows_out, s.dead_lettered), (3, 1), "{s:?}");
    let dead = frozen.dead();
    assert_eq!(
        dead[0].message,
        "row 0: column `amount`: Float64 value does not fit the stream's type Int32"
    );
    assert!(
        dead[0]
            .location
            .as_deref()
            .unwrap()
            .ends_with("in/b.parquet:row 0"),
        "{:?}",
        dead[0].location
    );
    let raw: serde_json::Value = serde_json::from_str(dead[0].raw.as_deref().unwrap()).unwrap();
    assert_eq!(raw["address"]["city"], "Lyon");
}

/// Writes `orders` to a Parquet file and runs it into `sink`.
async fn orders_into(f: &Fixture, rows: std::ops::Range<i64>, sink: Box<dyn Sink>) -> RunSummary {
    write_parquet(&f.path("in/orders.parquet"), &[orders(rows)], 64);
    run_orders(f, sink).await
}

/// Runs the Parquet file of `orders` into `sink`.
async fn run_orders(f: &Fixture, sink: Box<dyn Sink>) -> RunSummary {
    let mut c = ParquetSourceConfig::new("in/orders.parquet");
    c.batch_size = 50.try_into().unwrap();
    f.run_with(f.parquet_source(c), sink, SchemaPolicy::Evolve)
        .await
}

#[tokio::test]
async fn hive_partitions_hold_every_row_once_without_the_partition_column() {
    let f = Fixture::new();
    let mut c = ParquetSinkConfig::new("out");
    c.partition_by = vec!["country".into()];
    c.file_rows = 40.try_into().unwrap();
    let s = orders_into(
        &f,
        0..300,
        Box::new(ParquetSink::new(c, f.dir.path()).unwrap()),
    )
    .await;
    assert_eq!(s.rows_out, 300);

    let files = files_under(&f.path("out/orders"));
    let mut by_partition: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (rel, path) in &files {
        assert!(rel.ends_with(".parquet") && !rel.contains(".tmp"), "{rel}");
        let (partition, _) = rel.split_once('/').unwrap();
        let batches = read_parquet(path);
        assert!(batches[0].column_by_name("country").is_none(), "{rel}");
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(n <= 40, "{rel} has {n} rows, more than file_rows");
        assert!(n == 40 || rel.split('/').nth(1).is_some(), "{rel}");
        by_partition
            .entry(partition.to_string())
            .or_default()
            .extend(ints(&batches, "id"));
    }
    let expected = |country: Option<&str>| -> Vec<i64> {
        (0..300)
            .filter(|i| match country {
                None => i % 7 == 6,
                Some(c) => i % 7 != 6 && ["DE", "FR", "a/b"][(i % 3) as usize] == c,
            })
            .collect()
    };
    let mut got: Vec<(String, Vec<i64>)> = by_partition
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("country=DE".to_string(), expected(Some("DE"))),
            ("country=FR".to_string(), expected(Some("FR"))),
            (
                "country=__HIVE_DEFAULT_PARTITION__".to_string(),
                expected(None)
            ),
            ("country=a%2Fb".to_string(), expected(Some("a/b"))),
        ]
    );
}

#[tokio::test]
async fn a_missing_partition_column_stops_the_run_naming_it() {
    let f = Fixture::new();
    write_parquet(&f.path("in/orders.parquet"), &[orders(0..10)], 64);
    let mut c = ParquetSinkConfig::new("out");
    c.partition_by = vec!["region".into()];
    let mut settings = PipelineSettings::new("t");
    settings.schema_policy = SchemaPolicy::Evolve;
    let err = Pipeline::new(
        settings,
        f.parquet_source(ParquetSourceConfig::new("in/orders.parquet")),
        Box::new(ParquetSink::new(c, f.dir.path()).unwrap()),
        Box::new(NdjsonDeadLetter::new(f.path("dlq.ndjson"))),
        Arc::new(SqliteStateStore::open(f.path("state.db")).unwrap()),
    )
    .run()
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot partition by `region`: the stream has no such column (columns: id, qty, country, note)"),
        "{text}"
    );
}

#[tokio::test]
async fn ndjson_and_csv_sinks_write_every_row_exactly() {
    let f = Fixture::new();
    let mut nd = NdjsonSinkConfig::new("nd");
    nd.compression = TextCompression::Gzip;
    nd.file_rows = 70.try_into().unwrap();
    let s = orders_into(
        &f,
        0..200,
        Box::new(NdjsonSink::new(nd, f.dir.path()).unwrap()),
    )
    .await;
    assert_eq!(s.rows_out, 200);
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let files = files_under(&f.path("nd/orders"));
    assert_eq!(files.len(), 3, "200 rows at 70 per file");
    for (rel, path) in files {
        assert!(rel.ends_with(".ndjson.gz"), "{rel}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        rows.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    rows.sort_by_key(|r| r["id"].as_i64().unwrap());
    assert_eq!(rows.len(), 200);
    assert_eq!(
        rows[6],
        serde_json::json!({"id": 6, "qty": 1, "note": "note 6"}),
        "a null country is left out"
    );
    assert_eq!(rows[7]["country"], "FR");

    let mut csv = CsvSinkConfig::new("csv");
    csv.delimiter = ';';
    csv.null = "NULL".into();
    let g = Fixture::new();
    orders_into(
        &g,
        0..10,
        Box::new(CsvSink::new(csv, g.dir.path()).unwrap()),
    )
    .await;
    let files = files_under(&g.path("csv/orders"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0].1).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id;qty;country;note");
    assert_eq!(lines[1], "0;0;DE;note 0");
    assert_eq!(lines[3], "2;2;a/b;note 2");
    assert_eq!(lines[7], "6;1;NULL;note 6");
    assert_eq!(lines.len(), 11);
}

#[tokio::test]
async fn csv_refuses_nested_columns_with_a_clear_error() {
    let f = Fixture::new();
    let inner = Arc::new(StructArray::from(vec![(
        Arc::new(Field::new("city", DataType::Utf8, true)),
        Arc::new(StringArray::from(vec![Some("Lyon")])) as ArrayRef,
    )]));
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "address",
            inner.data_type().clone(),
            true,
        )])),
        vec![inner],
    )
    .unwrap();
    write_parquet(&f.path("in/nested.parquet"), &[batch], 10);
    let mut settings = PipelineSettings::new("t");
    settings.schema_policy = SchemaPolicy::Evolve;
    let err = Pipeline::new(
        settings,
        f.parquet_source(ParquetSourceConfig::new("in/nested.parquet")),
        Box::new(CsvSink::new(CsvSinkConfig::new("csv"), f.dir.path()).unwrap()),
        Box::new(NdjsonDeadLetter::new(f.path("dlq.ndjson"))),
        Arc::new(SqliteStateStore::open(f.path("state.db")).unwrap()),
    )
    .run()
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("column `address` is nested") && text.contains("NDJSON or Parquet"),
        "{text}"
    );
}

#[tokio::test]
async fn file_bytes_cuts_files_by_size() {
    let f = Fixture::new();
    let mut nd = NdjsonSinkConfig::new("nd");
    nd.file_bytes = Some(4096.try_into().unwrap());
    orders_into(
        &f,
        0..1000,
        Box::new(NdjsonSink::new(nd, f.dir.path()).unwrap()),
    )
    .await;
    let files = files_under(&f.path("nd/orders"));
    let sizes: Vec<u64> = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .collect();
    // A file is cut after the batch that crosses the limit: every file but the last is at
    // least the limit, and at most one batch (50 rows of about 50 bytes) above it.
    assert!(files.len() > 5, "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&s| s < 4096).count() <= 1,
        "{sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s < 4096 + 50 * 60), "{sizes:?}");
    let lines: usize = files
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    assert_eq!(lines, 1000);
}

#[tokio::test]
async fn a_replay_after_a_reset_rewrites_the_same_files_instead_of_adding_copies() {
    let f = Fixture::new();
    let sink = || {
        let mut c = ParquetSinkConfig::new("out");
        c.partition_by = vec!["country".into()];
        c.file_rows = 30.try_into().unwrap();
        Box::new(ParquetSink::new(c, f.dir.path()).unwrap()) as Box<dyn Sink>
    };
    orders_into(&f, 0..200, sink()).await;
    let first = files_under(&f.path("out/orders"));
    // Forget the state (as `tributary state reset` does) and run again: the same batches
    // start at the same positions and land in files of the same names.
    std::fs::remove_file(f.path("state.db")).unwrap();
    let s = run_orders(&f, sink()).await;
    assert_eq!(s.rows_out, 200);
    let second = files_under(&f.path("out/orders"));
    let names = |v: &[(String, PathBuf)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), names(&second));
    let all: Vec<RecordBatch> = second.iter().flat_map(|(_, p)| read_parquet(p)).collect();
    assert_eq!(ints(&all, "id"), (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_zstd_level_is_the_configured_one_and_checked() {
    // The same rows at level 1 and 19: both exact, the higher level smaller.
    let mut sizes = Vec::new();
    for level in [1, 19] {
        let f = Fixture::new();
        let config: ParquetSinkConfig = tributary_core::config::parse_yaml(
            Path::new("pipeline.yaml"),
            &format!("path: out\ncompression_level: {level}\n"),
        )
        .unwrap();
        let sink = ParquetSink::new(config, f.dir.path()).unwrap();
        orders_into(&f, 0..20_000, Box::new(sink)).await;
        let files = files_under(&f.path("out/orders"));
        assert_eq!(files.len(), 1);
        let batches = read_parquet(&files[0].1);
        assert_eq!(ints(&batches, "id"), (0..20_000).collect::<Vec<_>>());
        sizes.push(std::fs::metadata(&files[0].1).unwrap().len());
    }
    assert!(
        sizes[1] < sizes[0],
        "level 19 {} vs level 1 {}",
        sizes[1],
        sizes[0]
    );

    let err = tributary_core::config::parse_yaml::<ParquetSinkConfig>(
        Path::new("pipeline.yaml"),
        "path: out\ncompression_level: 23\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pipeline.yaml:2") && err.contains("1 (fastest) to 22"),
        "{err}"
    );
    let snappy: ParquetSinkConfig = tributary_core::config::parse_yaml(
        Path::new("pipeline.yaml"),
        "path: out\ncompression: snappy\ncompression_level: 3\n",
    )
    .unwrap();
    let err = ParquetSink::new(snappy, Path::new("/tmp"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("compression_level") && err.contains("zstd only"),
        "{err}"
    );
}
