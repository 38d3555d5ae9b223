//! JSON → Parquet through the real runtime, on real files.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunSummary};
use tributary_core::state::SqliteStateStore;
use tributary_files::json::{JsonSource, JsonSourceConfig};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};

struct Fixture {
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Fixture {
    fn new(name: &'static str, text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
        Fixture { dir, name }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    async fn run_with(&self, config: JsonSourceConfig) -> RunSummary {
        let source = JsonSource::new(config, self.dir.path()).unwrap();
        let sink = ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap();
        Pipeline::new(
            PipelineSettings::new("j"),
            Box::new(source),
            Box::new(sink),
            Box::new(NdjsonDeadLetter::new(self.path("dlq.ndjson"))),
            Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap()),
        )
        .run()
        .await
        .unwrap()
    }
    async fn run(&self) -> RunSummary {
        self.run_with(JsonSourceConfig::new(self.name)).await
    }
    fn output(&self) -> Vec<RecordBatch> {
        let stem = self.name.split('.').next().unwrap();
        let mut files: Vec<_> = std::fs::read_dir(self.path(&format!("out/{stem}")))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
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
                    .collect::<Vec<_>>()
            })
            .collect()
    }
    fn dead(&self) -> Vec<String> {
        NdjsonDeadLetter::read_all(self.path("dlq.ndjson"))
            .unwrap()
            .into_iter()
            .map(|d| d.message)
            .collect()
    }
}

const EVENTS: &str = r#"{"id": 1, "amount": 10, "user": {"name": "ann", "tags": ["a", "b"]}, "code": 7}
{"id": 2, "amount": 11, "user": {"name": "bob", "tags": []}, "code": "x7"}

{"id": 3, "amount": 12.75, "user": {"name": "cy"}, "note": "late field"}
{"id": 4, "amount": oops}
{"id": 5, "amount": 1e3, "user": null}
"#;

#[tokio::test]
async fn ndjson_nests_widens_and_dead_letters_bad_lines() {
    let f = Fixture::new("events.ndjson", EVENTS);
    let s = f.run().await;
    assert_eq!((s.rows_out, s.dead_lettered), (4, 1), "{s:?}");
    assert_eq!(
        f.dead(),
        ["line 5: Encountered unexpected 'o' whilst parsing value"]
    );

    let out = f.output();
    let schema = out[0].schema();
    assert_eq!(
        schema.field_with_name("amount").unwrap().data_type(),
        &DataType::Float64,
        "int then float widens"
    );
    assert_eq!(
        schema.field_with_name("code").unwrap().data_type(),
        &DataType::Utf8,
        "number and string mix to string"
    );
    assert!(matches!(
        schema.field_with_name("user").unwrap().data_type(),
        DataType::Struct(_)
    ));
    let batch = arrow_select::concat::concat_batches(&schema, &out).unwrap();
    let amounts: Vec<f64> = batch
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    assert_eq!(
        amounts,
        [10.0, 11.0, 12.75, 1000.0],
        "no value changed by widening"
    );
    let ids: Vec<i64> = batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, [1, 2, 3, 5]);
    let codes = batch.column_by_name("code").unwrap().as_string::<i32>();
    assert_eq!((codes.value(0), codes.value(1)), ("7", "x7"));
    let user = batch.column_by_name("user").unwrap().as_struct();
    assert_eq!(
        user.column_by_name("name")
            .unwrap()
            .as_string::<i32>()
            .value(2),
        "cy"
    );
    assert!(user.is_null(3), "user: null");
    let notes = batch.column_by_name("note").unwrap();
    assert_eq!(
        (notes.null_count(), notes.as_string::<i32>().value(2)),
        (3, "late field")
    );

    // A re-run adds nothing; appended lines are read from the committed offset.
    assert_eq!(f.run().await.rows_out, 0);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(f.path("events.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"id\": 6, \"amount\": 2.5}\n").unwrap();
    assert_eq!(f.run().await.rows_out, 1);
}

#[tokio::test]
async fn sampled_inference_dead_letters_what_does_not_fit_instead_of_rounding() {
    let f = Fixture::new("s.ndjson", "{\"v\": 1}\n{\"v\": 2}\n{\"v\": 2.5}\n");
    let mut c = JsonSourceConfig::new("s.ndjson");
    c.infer_rows = 2;
    let s = f.run_with(c).await;
    assert_eq!((s.rows_out, s.dead_lettered), (2, 1));
    let dead = f.dead();
    assert!(
        dead[0].starts_with("line 3: ") && dead[0].contains("2.5"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_json_array_is_read_element_by_element() {
    let f = Fixture::new(
        "arr.json",
        "[\n  {\"id\": 1, \"x\": [1, 2]},\n  {\"id\": 2, \"x\": \"not a list\"},\n  {\"id\": 3}\n]\n",
    );
    let mut c = JsonSourceConfig::new("arr.json");
    c.infer_rows = 1;
    let s = f.run_with(c).await;
    assert_eq!((s.rows_out, s.dead_lettered), (2, 1), "{s:?}");
    assert!(f.dead()[0].starts_with("line 3: "), "{:?}", f.dead());
    let out = f.output();
    let batch = arrow_select::concat::concat_batches(&out[0].schema(), &out).unwrap();
    let ids: Vec<i64> = batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, [1, 3]);
    assert_eq!(
        f.run_with(JsonSourceConfig::new("arr.json")).await.rows_out,
        0,
        "resumes at the end"
    );
}

#[tokio::test]
async fn a_large_file_is_inferred_on_several_threads_and_late_changes_still_widen() {
    // About 9 MB, so that inference splits the file: the changes are in the last part.
    let rows = 150_000;
    let mut text = String::with_capacity(rows * 64);
    for i in 0..rows {
        match i {
            // A float in the last rows (an integer field must widen)…
            i if i == rows - 3 => text.push_str(&format!(
                "{{\"id\": {i}, \"n\": 2.5, \"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}}\n"
            )),
            // …a new nested field in the middle of the second half, and a broken line.
            i if i == rows * 3 / 4 => text.push_str(&format!(
                "{{\"id\": {i}, \"n\": {i}, \"pad\": \"x\", \"geo\": {{\"lat\": 1}}}}\n"
            )),
            i if i == rows / 2 => text.push_str("{\"id\": \"broken\n"),
            i => text.push_str(&format!(
                "{{\"id\": {i}, \"n\": {i}, \"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}}\n"
            )),
        }
    }
    assert!(text.len() > 8 << 20);
    let f = Fixture::new("big.ndjson", &text);
    let s = f.run().await;
    assert_eq!((s.rows_out, s.dead_lettered), (rows as u64 - 1, 1), "{s:?}");
    let out = f.output();
    let schema = out[0].schema();
    assert_eq!(
        schema.field_with_name("n").unwrap().data_type(),
        &DataType::Float64
    );
    assert!(matches!(
        schema.field_with_name("geo").unwrap().data_type(),
        DataType::Struct(_)
    ));
    let mut sum = 0.0;
    for b in &out {
        sum += b
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .sum::<f64>();
    }
    let expected: f64 = (0..rows)
        .filter(|&i| i != rows / 2 && i != rows - 3)
        .map(|i| i as f64)
        .sum::<f64>()
        + 2.5;
    assert_eq!(sum, expected);
}

#[tokio::test]
async fn parallel_decoding_gives_the_rows_and_dead_letters_of_a_serial_read() {
    let mut text = String::new();
    for i in 0..500 {
        if i % 61 == 7 {
            text.push_str(&format!("{{\"id\": {i}, broken\n"));
        } else if i % 83 == 5 {
            text.push_str("\n   \n");
        } else {
            text.push_str(&format!(
                "{{\"id\": {i}, \"v\": {{\"x\": \"{}\"}}}}\n",
                i * 3
            ));
        }
    }
    let mut results = Vec::new();
    for threads in [1, 3] {
        let f = Fixture::new("par.ndjson", &text);
        let mut c = JsonSourceConfig::new("par.ndjson");
        c.batch_size = 7.try_into().unwrap();
        c.threads = std::num::NonZeroUsize::new(threads);
        let s = f.run_with(c).await;
        let mut ids: Vec<i64> = f
            .output()
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
        let at = s.positions["par"].as_json();
        let end = (at["offset"].clone(), at["line"].clone());
        results.push((s.rows_out, s.batches, end, ids, f.dead()));
    }
    assert_eq!(results[0], results[1]);
    let (rows, _, _, ids, dead) = &results[0];
    assert_eq!(*rows as usize, ids.len());
    assert_eq!(dead.len(), (0..500).filter(|i| i % 61 == 7).count());
    // Line 9: the row of id 5 was replaced by two blank lines.
    assert!(dead[0].starts_with("line 9: "), "{dead:?}");
}

#[tokio::test]
async fn declared_columns_override_inference_and_misfits_are_dead_lettered() {
    let text = r#"{"id": 1, "zip": 2134, "ts": "2024-03-01T09:30:00Z", "user": {"id": 7}}
{"id": 2, "zip": "02139", "ts": "2024-03-01T10:00:00+01:00", "user": {"id": 8.5}}
{"id": 3, "zip": 10001, "ts": "not a time", "user": {"id": 9}}
"#;
    let f = Fixture::new("decl.ndjson", text);
    let mut c = JsonSourceConfig::new("decl.ndjson");
    c.columns = [
        ("zip".to_string(), tributary_files::csv::ColumnType::String),
        (
            "ts".to_string(),
            tributary_files::csv::ColumnType::Timestamp,
        ),
        (
            "user.id".to_string(),
            tributary_files::csv::ColumnType::Int64,
        ),
        (
            "extra".to_string(),
            tributary_files::csv::ColumnType::Boolean,
        ),
    ]
    .into_iter()
    .collect();
    let s = f.run_with(c).await;
    assert_eq!((s.rows_out, s.dead_lettered), (1, 2), "{s:?}");
    let out = f.output();
    let schema = out[0].schema();
    let types: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(types[1], ("zip".to_string(), DataType::Utf8));
    assert_eq!(
        types[2].1,
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None)
    );
    assert_eq!(types[4], ("extra".to_string(), DataType::Boolean));
    let zip = out[0].column_by_name("zip").unwrap().as_string::<i32>();
    assert_eq!(zip.value(0), "2134");
    let ts = out[0]
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_709_285_400_000_000);
    let dead = f.dead();
    assert!(
        dead[0].starts_with("line 2: field `user.id`: expected Int64, found 8.5"),
        "{dead:?}"
    );
    assert!(dead[1].starts_with("line 3: "), "{dead:?}");
}
