//! Excel (`.xlsx`, `.xls`, `.ods`) → Parquet through the real runtime, on real workbooks.
//!
//! The workbooks are in `tests/data/excel/`, written by `make_fixtures.py` there; the values
//! asserted below are the ones that script puts in them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::dead_letter::{DeadLetterRecord, NdjsonDeadLetter};
use tributary_core::runtime::{Pipeline, PipelineFailure, PipelineSettings, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::Source;
use tributary_files::csv::ColumnType;
use tributary_files::excel::{AllSheets, ExcelPosition, ExcelSource, ExcelSourceConfig, SheetRef};
use tributary_files::input::{Compression, FileSet};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/excel");

/// Microseconds since 1970-01-01 of the fixtures' dates (computed apart from the source).
const JAN_15: i64 = 1_705_276_800_000_000; // 2024-01-15
const FEB_29: i64 = 1_709_164_800_000_000; // 2024-02-29
const JUN_01: i64 = 1_717_200_000_000_000; // 2024-06-01
const JAN_15_0930: i64 = 1_705_311_000_000_000; // 2024-01-15 09:30:00
const MAR_01_174530_250: i64 = 1_709_315_130_250_000; // 2024-03-01 17:45:30.250
const JUN_01_235959: i64 = 1_717_286_399_000_000; // 2024-06-01 23:59:59
const MAR_01: i64 = 1_709_251_200_000_000; // 2024-03-01
const MAR_01_0600: i64 = 1_709_272_800_000_000; // 2024-03-01 06:00
const MAR_02_1200: i64 = 1_709_380_800_000_000; // 2024-03-02 12:00
const DAY_US: i64 = 86_400_000_000;

/// A folder with copies of some fixture workbooks, a state store and an output folder.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(files: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::copy(Path::new(DATA).join(f), dir.path().join(f)).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn pipeline(&self, config: ExcelSourceConfig) -> Pipeline {
        let source = ExcelSource::new(config, self.dir.path()).unwrap();
        let sink = ParquetSink::new(ParquetSinkConfig::new("out"), self.dir.path()).unwrap();
        Pipeline::new(
            PipelineSettings::new("x"),
            Box::new(source),
            Box::new(sink),
            Box::new(NdjsonDeadLetter::new(self.path("dlq.ndjson"))),
            Arc::new(SqliteStateStore::open(self.path("state.db")).unwrap()),
        )
    }

    async fn try_run(&self, config: ExcelSourceConfig) -> Result<RunSummary, PipelineFailure> {
        self.pipeline(config).run().await
    }

    async fn run(&self, config: ExcelSourceConfig) -> RunSummary {
        self.try_run(config).await.unwrap()
    }

    /// Every row written for `stream`, in one batch (parts in name order).
    fn output(&self, stream: &str) -> RecordBatch {
        let mut files: Vec<_> = std::fs::read_dir(self.path(&format!("out/{stream}")))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut schema = None;
        let batches: Vec<RecordBatch> = files
            .iter()
            .flat_map(|f| {
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap()).unwrap();
                // The file's schema, with its metadata (the reader's batches drop it).
                schema.get_or_insert_with(|| builder.schema().clone());
                builder
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        arrow_select::concat::concat_batches(&schema.unwrap(), &batches).unwrap()
    }

    fn dead(&self) -> Vec<DeadLetterRecord> {
        NdjsonDeadLetter::read_all(self.path("dlq.ndjson")).unwrap_or_default()
    }
}

fn config(path: &str, edit: impl FnOnce(&mut ExcelSourceConfig)) -> ExcelSourceConfig {
    let mut c = ExcelSourceConfig::new(path);
    edit(&mut c);
    c
}

fn ints(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

fn floats(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    b.column_by_name(col)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn bools(b: &RecordBatch, col: &str) -> Vec<Option<bool>> {
    b.column_by_name(col).unwrap().as_boolean().iter().collect()
}

fn timestamps(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test]
async fn typed_cells_dates_a_merged_cell_and_an_error_cell() {
    let f = Fixture::new(&["book.xlsx"]);
    let summary = f.run(ExcelSourceConfig::new("book.xlsx")).await;
    // Rows 2, 3 and 6 are written; row 4 has #DIV/0!; row 5 is empty and skipped.
    assert_eq!(
        (
            summary.rows_out,
            summary.dead_lettered,
            summary.files_completed
        ),
        (3, 1, 1),
        "{summary:?}"
    );

    let out = f.output("book");
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let types: Vec<(&str, &DataType)> = out
        .schema_ref()
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            ("id", &DataType::Int64),
            ("customer", &DataType::Utf8),
            ("amount", &DataType::Float64),
            ("paid", &DataType::Boolean),
            ("qty", &DataType::Float64),
            ("order_date", &ts),
            ("shipped_at", &ts),
            ("region", &DataType::Utf8),
            ("code", &DataType::Utf8),
            ("ratio", &DataType::Float64),
        ]
    );
    assert_eq!(ints(&out, "id"), [Some(1), Some(2), Some(4)]);
    assert_eq!(strings(&out, "customer"), [s("ann"), s("bob"), s("dee")]);
    assert_eq!(floats(&out, "amount"), [Some(10.5), Some(20.0), Some(-3.0)]);
    assert_eq!(bools(&out, "paid"), [Some(true), Some(false), Some(false)]);
    // Integers and one fraction: float64, every value exact.
    assert_eq!(floats(&out, "qty"), [Some(3.0), Some(2.5), Some(5.0)]);
    assert_eq!(
        timestamps(&out, "order_date"),
        [Some(JAN_15), Some(FEB_29), Some(JUN_01)]
    );
    assert_eq!(
        timestamps(&out, "shipped_at"),
        [
            Some(JAN_15_0930),
            Some(MAR_01_174530_250),
            Some(JUN_01_235959)
        ]
    );
    // H2:H3 is merged: the value is in the top-left cell only.
    assert_eq!(strings(&out, "region"), [s("North"), None, None]);
    // Text, a number and a boolean: a string column with each value's text.
    assert_eq!(strings(&out, "code"), [s("A1"), s("7"), s("true")]);
    assert_eq!(floats(&out, "ratio"), [Some(0.5), Some(1.0), Some(2.0)]);

    let dead = f.dead();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.message, "row 4: column `ratio`: error cell #DIV/0!");
    assert_eq!(
        d.location.as_deref(),
        Some(format!("{}:Orders!4", f.path("book.xlsx").display()).as_str())
    );
    let raw: serde_json::Value = serde_json::from_str(d.raw.as_deref().unwrap()).unwrap();
    assert_eq!(raw["customer"], "cy");
    assert_eq!(raw["ratio"], "#DIV/0!");
    let at: ExcelPosition = d.position.as_ref().unwrap().decode().unwrap();
    assert_eq!(
        at,
        ExcelPosition {
            sheet: "Orders".into(),
            row: 4
        }
    );

    // The file is in the ledger: a second run reads nothing.
    let again = f.run(ExcelSourceConfig::new("book.xlsx")).await;
    assert_eq!((again.rows_out, again.dead_lettered), (0, 0), "{again:?}");
    assert_eq!(f.dead().len(), 1);
}

#[tokio::test]
async fn a_resumed_run_skips_the_rows_already_committed() {
    let f = Fixture::new(&["book.xlsx"]);
    // What an earlier run that stopped after sheet row 2 committed.
    let file = &FileSet::new(f.dir.path(), "book.xlsx", Compression::None)
        .list()
        .unwrap()[0];
    let at = file.position(ExcelPosition {
        sheet: "Orders".into(),
        row: 3,
    });
    SqliteStateStore::open(f.path("state.db"))
        .unwrap()
        .commit_positions("x", &[("book", &at)], &[])
        .unwrap();

    // One row per batch, to cross batch boundaries too.
    let c = config("book.xlsx", |c| c.batch_size = 1.try_into().unwrap());
    let summary = f.run(c.clone()).await;
    assert_eq!(
        (summary.rows_out, summary.dead_lettered),
        (2, 1),
        "{summary:?}"
    );
    let out = f.output("book");
    let mut ids = ints(&out, "id");
    ids.sort();
    assert_eq!(ids, [Some(2), Some(4)]);
    assert_eq!(f.run(c).await.rows_out, 0);
}

#[tokio::test]
async fn skip_rows_and_header_row_find_a_table_below_a_title() {
    let f = Fixture::new(&["book.xlsx"]);
    let report = |stream: &str, skip_rows: u32, header_row: u32| {
        config("book.xlsx", |c| {
            c.sheet = Some(SheetRef::Name("Report".into()));
            c.stream = Some(stream.into());
            c.skip_rows = skip_rows;
            c.header_row = header_row;
        })
    };
    // Three title rows skipped, then the header; or the header named by its row.
    for (stream, skip, header) in [("skipped", 3, 1), ("header4", 0, 4)] {
        let summary = f.run(report(stream, skip, header)).await;
        assert_eq!(
            (summary.rows_out, summary.dead_lettered),
            (2, 0),
            "{stream}"
        );
        let out = f.output(stream);
        assert_eq!(strings(&out, "sku"), [s("X-1"), s("X-2")], "{stream}");
        assert_eq!(ints(&out, "units"), [Some(12), Some(30)], "{stream}");
    }
    // No header: the columns are named after their sheet columns.
    f.run(report("plain", 4, 0)).await;
    let out = f.output("plain");
    let names: Vec<&str> = out
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["column_1", "column_2"]);
    assert_eq!(strings(&out, "column_1"), [s("X-1"), s("X-2")]);
    assert_eq!(ints(&out, "column_2"), [Some(12), Some(30)]);
}

#[tokio::test]
async fn a_sheet_by_name_or_by_index() {
    let f = Fixture::new(&["book.xlsx"]);
    for (stream, sheet) in [
        ("by_name", SheetRef::Name("Returns".into())),
        ("by_index", SheetRef::Index(1)),
    ] {
        let c = config("book.xlsx", |c| {
            c.sheet = Some(sheet);
            c.stream = Some(stream.into());
        });
        assert_eq!(f.run(c).await.rows_out, 2, "{stream}");
        let out = f.output(stream);
        assert_eq!(ints(&out, "order_id"), [Some(2), Some(4)]);
        assert_eq!(strings(&out, "reason"), [s("damaged"), s("late")]);
    }
}

#[tokio::test]
async fn sheets_all_makes_one_stream_per_sheet() {
    let f = Fixture::new(&["regions.xlsx"]);
    let c = config("regions.xlsx", |c| c.sheets = Some(AllSheets::All));
    let mut source = ExcelSource::new(c.clone(), f.dir.path()).unwrap();
    let streams = source.discover().await.unwrap();
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["regions.North", "regions.South"]);
    assert!(
        streams[0].detail.as_deref().unwrap().contains("2 rows"),
        "{:?}",
        streams[0].detail
    );

    let summary = f.run(c.clone()).await;
    assert_eq!(
        (summary.rows_out, summary.files_completed),
        (3, 2),
        "{summary:?}"
    );
    // Same columns in both sheets, yet each sheet has its own output.
    let north = f.output("regions.North");
    assert_eq!(ints(&north, "id"), [Some(1), Some(2)]);
    assert_eq!(ints(&north, "amount"), [Some(100), Some(150)]);
    let south = f.output("regions.South");
    assert_eq!(ints(&south, "id"), [Some(3)]);
    assert_eq!(ints(&south, "amount"), [Some(70)]);
    assert_eq!(
        south
            .schema_ref()
            .metadata()
            .get("excel.sheet")
            .map(String::as_str),
        Some("South")
    );
    assert_eq!(f.run(c).await.rows_out, 0, "both streams are in the ledger");
}

#[tokio::test]
async fn xls_and_ods_give_the_same_rows_as_xlsx() {
    let f = Fixture::new(&["simple.xlsx", "simple.xls", "simple.ods"]);
    let mut outputs = Vec::new();
    for (stream, file) in [
        ("xlsx", "simple.xlsx"),
        ("xls", "simple.xls"),
        ("ods", "simple.ods"),
    ] {
        let c = config(file, |c| c.stream = Some(stream.into()));
        let summary = f.run(c).await;
        assert_eq!((summary.rows_out, summary.dead_lettered), (3, 0), "{file}");
        let out = f.output(stream);
        assert_eq!(ints(&out, "id"), [Some(1), Some(2), Some(3)], "{file}");
        assert_eq!(
            strings(&out, "name"),
            [s("alpha"), s("beta"), s("gamma")],
            "{file}"
        );
        assert_eq!(
            floats(&out, "price"),
            [Some(1.5), Some(2.0), None],
            "{file}"
        );
        assert_eq!(
            bools(&out, "active"),
            [Some(true), Some(false), Some(true)],
            "{file}"
        );
        assert_eq!(
            timestamps(&out, "day"),
            [Some(MAR_01), Some(MAR_02_1200), None],
            "{file}"
        );
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1], "xlsx and xls");
    assert_eq!(outputs[0], outputs[2], "xlsx and ods");
}

#[tokio::test]
async fn dates_of_a_1904_workbook_are_the_same_dates() {
    let f = Fixture::new(&["mac1904.xlsx"]);
    f.run(ExcelSourceConfig::new("mac1904.xlsx")).await;
    assert_eq!(timestamps(&f.output("mac1904"), "day"), [Some(MAR_01_0600)]);
}

#[tokio::test]
async fn column_overrides_set_types_and_must_name_a_column() {
    let f = Fixture::new(&["book.xlsx"]);
    let c = config("book.xlsx", |c| {
        c.columns = [
            ("id".to_string(), ColumnType::String),
            ("order_date".to_string(), ColumnType::Date),
        ]
        .into();
    });
    assert_eq!(f.run(c).await.rows_out, 3);
    let out = f.output("book");
    assert_eq!(strings(&out, "id"), [s("1"), s("2"), s("4")]);
    let days: Vec<Option<i32>> = out
        .column_by_name("order_date")
        .unwrap()
        .as_primitive::<Date32Type>()
        .iter()
        .collect();
    let day = |us: i64| Some((us / DAY_US) as i32);
    assert_eq!(days, [day(JAN_15), day(FEB_29), day(JUN_01)]);

    let typo = config("book.xlsx", |c| {
        c.stream = Some("typo".into());
        c.columns = [("idd".to_string(), ColumnType::String)].into();
    });
    let err = f.try_run(typo).await.unwrap_err().to_string();
    assert!(
        err.contains("sheet `Orders`: `columns.idd` matches no column (columns: id, customer,"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_sheet_is_an_error_that_names_the_sheets() {
    let f = Fixture::new(&["book.xlsx"]);
    let book = f.path("book.xlsx");
    let named = config("book.xlsx", |c| {
        c.sheet = Some(SheetRef::Name("Ordres".into()))
    });
    let err = f.try_run(named.clone()).await.unwrap_err().to_string();
    let expected = format!(
        "{}: no sheet named `Ordres` (sheets: Orders, Returns, Report)",
        book.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("hint: set `source.sheet`"), "{err}");

    // `check` finds it before a run.
    let mut source = ExcelSource::new(named, f.dir.path()).unwrap();
    let err = source.check().await.unwrap_err().to_string();
    assert!(err.contains(&expected), "{err}");

    let indexed = config("book.xlsx", |c| c.sheet = Some(SheetRef::Index(3)));
    let mut source = ExcelSource::new(indexed, f.dir.path()).unwrap();
    let err = source.check().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: no sheet at index 3 (indexes start at 0) (sheets: Orders, Returns, Report)",
            book.display()
        )),
        "{err}"
    );
}

#[test]
fn the_config_takes_a_sheet_name_an_index_or_all() {
    let parse = |yaml: &str| {
        tributary_core::config::parse_yaml::<ExcelSourceConfig>(Path::new("p.yaml"), yaml)
    };
    let by_name = parse("path: book.xlsx\nsheet: Orders\nheader_row: 2\nskip_rows: 1\n").unwrap();
    assert_eq!(by_name.sheet, Some(SheetRef::Name("Orders".into())));
    assert_eq!((by_name.header_row, by_name.skip_rows), (2, 1));
    let by_index = parse("path: book.xlsx\nsheet: 0\n").unwrap();
    assert_eq!(by_index.sheet, Some(SheetRef::Index(0)));
    let all = parse("path: book.xlsx\nsheets: all\ncolumns: { zip: string }\n").unwrap();
    assert_eq!(all.sheets, Some(AllSheets::All));
    assert_eq!(all.columns.get("zip"), Some(&ColumnType::String));
    let defaults = parse("path: book.xlsx\n").unwrap();
    assert_eq!(defaults, ExcelSourceConfig::new("book.xlsx"));
    assert!(parse("path: book.xlsx\nsheet_name: Orders\n").is_err());
    let both = parse("path: book.xlsx\nsheet: 0\nsheets: all\n").unwrap();
    let err = ExcelSource::new(both, Path::new("."))
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("source.sheets: "), "{err}");
}
