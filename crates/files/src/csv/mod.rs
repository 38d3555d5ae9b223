//! The CSV source: one file, read by a blocking reader thread, emitted as Arrow batches.
//!
//! Position: [`CsvPosition`] (byte offset and line number of the next record). On resume the
//! reader seeks to the offset; the header is read from the top of the file for the column
//! names, and the schema comes from the state store (the one recorded on the first run), so a
//! resumed run reads exactly like the first one.

mod config;
mod infer;
mod parallel;
mod source;

pub use config::{ColumnType, CsvSourceConfig};
pub use infer::infer_schema;
pub use source::{CsvError, CsvPosition, CsvSource};
