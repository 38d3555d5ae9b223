//! # tributary-files: file sources and sinks
//!
//! - [`csv::CsvSource`]: reads one CSV file into Arrow batches with an inferred (or declared)
//!   schema. Its position is the byte offset of the next record, so a run resumes mid-file
//!   exactly where the last commit left it. Bad rows (wrong field count, a value that does not
//!   parse as its column's type, invalid UTF-8) are rejected with file, line and field, and go
//!   to the dead-letter destination.
//! - [`parquet::ParquetSink`]: writes Parquet files atomically (temporary file, fsync, rename,
//!   directory fsync) and names each file after the source position of its first row, so a
//!   batch replayed after a crash overwrites its earlier copy instead of duplicating it.
//!
//! ```yaml
//! source: { kind: csv, path: data/orders.csv }
//! sink:   { kind: parquet, path: output/ }
//! ```
//!
//! Each connector has a `config` struct (typed, `deny_unknown_fields`, documented fields) and
//! the connector itself; tests against real files live in `tests/`.

pub mod csv;
pub mod parquet;
