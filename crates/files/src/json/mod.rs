//! The JSON source: NDJSON (one value per line) or one JSON array, into Arrow batches.
//!
//! - Nested objects become Arrow structs, arrays become lists, missing fields are nulls.
//! - The schema is inferred from every row by default (`infer_rows: 0`): a field that is an
//!   integer in the first rows and a float later becomes `float64` with no value changed, and a
//!   field mixing numbers and strings becomes a string (numbers are kept as their JSON text).
//!   Sampling (`infer_rows: N`) is faster; rows that then do not fit are dead-lettered with the
//!   reason, never coerced silently. `columns: { zip: string, user.id: int64 }` declares types
//!   (nested fields by dots) over what inference says.
//! - A line that is not valid JSON, or does not fit the schema, goes to the dead-letter
//!   destination with its line number; the rest of its batch is written.
//! - Position: byte offset and line of the next record, so a run resumes mid-file. The schema
//!   recorded on the first run is reused on resume.
//!
//! A JSON array file is read into memory whole (its elements are then handled like lines);
//! NDJSON is streamed.

mod lines;
mod source;

pub use source::{JsonError, JsonSource, JsonSourceConfig};
