//! # tributary-files: file sources and sinks
//!
//! - [`input`]: what every file source shares: files, folders and globs, `.gz`/`.zst`, the
//!   file ledger, positions that name the file.
//! - [`csv::CsvSource`]: reads CSV files into Arrow batches with an inferred (or declared)
//!   schema. Its position is the byte offset of the next record, so a run resumes mid-file
//!   exactly where the last commit left it. Bad rows (wrong field count, a value that does not
//!   parse as its column's type, invalid UTF-8) are rejected with file, line and field, and go
//!   to the dead-letter destination.
//! - [`json::JsonSource`]: NDJSON or a JSON array, nested values as structs and lists, types
//!   inferred over every row (integers that turn into floats widen), bad lines dead-lettered.
//! - [`excel::ExcelSource`]: `.xlsx`, `.xls` and `.ods` workbooks through calamine, a sheet
//!   by name or index (or every sheet, one stream each), typed cells to Arrow types inferred
//!   over the whole sheet, dates to timestamps, rows with error cells dead-lettered with
//!   file, sheet and row.
//! - [`parquet::ParquetSource`]: Parquet files streamed row group by row group, with column
//!   projection and row-exact resume.
//! - [`sink`]: the file sinks, [`parquet::ParquetSink`] (zstd/snappy, parallel encoding),
//!   [`sink::NdjsonSink`] and [`sink::CsvSink`] (optionally gzip/zstd): one folder per stream,
//!   Hive-style partition folders (`partition_by`), files cut by rows or bytes, written
//!   atomically (temporary file, fsync, rename, folder fsync) and named after the source
//!   position of their first row, so a batch replayed after a crash overwrites its earlier
//!   copy instead of duplicating it.
//!
//! ```yaml
//! source: { kind: csv, path: data/orders.csv }
//! sink:   { kind: parquet, path: output/ }
//! ```
//!
//! Each connector has a `config` struct (typed, `deny_unknown_fields`, documented fields) and
//! the connector itself; tests against real files live in `tests/`.

pub mod csv;
pub mod excel;
pub mod input;
pub mod json;
pub mod object;
pub mod parquet;
pub mod sink;

use serde::{Deserialize, Serialize};

/// Where a line-oriented file source is: the next record starts at byte `offset`, on `line`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPosition {
    /// Byte offset of the next record.
    pub offset: u64,
    /// 1-based line number of the next record.
    pub line: u64,
}

/// The hint for a file that no longer matches the state committed for it.
pub(crate) const RESET_HINT: &str =
    "to ingest the file again from the start, run `tributary state reset <pipeline file>`";
