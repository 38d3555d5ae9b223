//! The guide's examples (`examples/file_ingestion/`) run as the README says, with the results
//! the README promises.

mod common;

use std::path::Path;

use common::{copy_tree, int_column, run_ok};

/// Copies an example folder (without output or state from a local run) into `to`.
fn copy_example(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/file_ingestion")
        .join(name);
    copy_tree(&from, to);
}

fn summary(dir: &Path) -> serde_json::Value {
    let out = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dead_letters(dir: &Path, pipeline: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!(".tributary/dead_letter/{pipeline}.ndjson")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn csv_landing_folder_evolves_and_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("csv", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&7.into(), &1.into(), &3.into()),
        "{s}"
    );
    assert_eq!(
        s["schema_changes"][1]["change"],
        "added coupon; amount Int64 → Float64"
    );
    let dead = dead_letters(dir.path(), "orders_landing");
    assert!(
        dead[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data/landing/orders-2024-02.csv:3"),
        "{dead:?}"
    );
    assert_eq!(dead[0]["message"], "line 3: expected 6 fields, found 4");
    let mut ids = int_column(&dir.path().join("output/orders"), "order_id");
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 6, 7, 8]);

    let discover = run_ok(&["discover", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(discover.stdout).unwrap();
    assert!(text.contains("3 files"), "{text}");
    assert!(
        text.contains("schema v2 recorded")
            && text.contains(": added coupon; amount Int64 → Float64"),
        "{text}"
    );
    let show = run_ok(&["state", "show", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(show.stdout).unwrap();
    assert!(text.contains("files ingested: 3"), "{text}");

    let again = summary(dir.path());
    assert_eq!(
        (&again["rows_out"], &again["files_completed"]),
        (&0.into(), &0.into())
    );
}

#[test]
fn json_event_files_nest_widen_and_dead_letter_the_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("json", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&4.into(), &1.into(), &2.into()),
        "{s}"
    );
    let change = s["schema_changes"][1]["change"].as_str().unwrap();
    assert!(change.contains("props Struct"), "{change}");
    let dead = dead_letters(dir.path(), "events");
    assert!(
        dead[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data/events/2024-05-02.ndjson:3"),
        "{dead:?}"
    );
    let mut ids = int_column(&dir.path().join("output/events"), "id");
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
}

#[test]
fn parquet_exports_are_projected_widened_and_partitioned_by_country() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("parquet", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&100.into(), &0.into(), &2.into()),
        "{s}"
    );
    assert_eq!(
        s["schema_changes"][1]["change"],
        "added discount; quantity Int32 → Int64"
    );
    let out = dir.path().join("output/orders");
    let mut partitions: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    partitions.sort();
    assert_eq!(
        partitions,
        [
            "country=DE",
            "country=FR",
            "country=NL",
            "country=__HIVE_DEFAULT_PARTITION__"
        ]
    );
    // Every order once, each in its country's folder; the projected-away column is gone.
    let mut ids = int_column(&out, "order_id");
    ids.sort();
    assert_eq!(ids, (1..=100).collect::<Vec<i64>>());
    let de = int_column(&out.join("country=DE"), "order_id");
    assert!(de.len() == 25 && de.iter().all(|id| id % 4 == 0), "{de:?}");
    for f in common::parquet_files(&out) {
        let schema = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap()
        .schema()
        .clone();
        assert!(schema.field_with_name("internal_note").is_err(), "{f:?}");
        assert!(schema.field_with_name("country").is_err(), "{f:?}");
    }

    let discover = run_ok(&["discover", "pipeline.yaml"], dir.path());
    let text = String::from_utf8(discover.stdout).unwrap();
    assert!(text.contains("100 rows in 5 row groups"), "{text}");
}

#[test]
fn an_excel_report_skips_its_title_and_dead_letters_the_error_cell() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("excel", dir.path());
    let s = summary(dir.path());
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"], &s["files_completed"]),
        (&3.into(), &1.into(), &1.into()),
        "{s}"
    );
    let dead = dead_letters(dir.path(), "sales_reports");
    assert_eq!(
        dead[0]["message"],
        "row 7: column `margin`: error cell #DIV/0!"
    );
    assert!(
        dead[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("data/reports/sales-2024-Q2.xlsx:Sales!7"),
        "{dead:?}"
    );
    let files = common::parquet_files(&dir.path().join("output/sales"));
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&files[0]).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    let text = arrow_cast::pretty::pretty_format_batches(&[batch])
        .unwrap()
        .to_string();
    let expected = "\
+--------+-------+---------------------+-------+------------+--------+
| region | sku   | sold_on             | units | unit_price | margin |
+--------+-------+---------------------+-------+------------+--------+
| North  | 00123 | 2024-04-02T00:00:00 | 12    | 9.5        | 0.25   |
|        | 00124 | 2024-04-03T00:00:00 | 7     | 12.0       | 0.3    |
| South  | 00126 | 2024-06-30T00:00:00 | 25    | 1.25       | 0.1    |
+--------+-------+---------------------+-------+------------+--------+";
    assert_eq!(text, expected);
}
