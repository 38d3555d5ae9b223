use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use arrow_schema::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};
use tributary_core::config::VarStr;

/// Configuration of the CSV source (`source: { kind: csv, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceConfig {
    /// A file, a folder (all files under it) or a glob (`data/*.csv`, `in/**/*.csv.gz`).
    /// Relative paths are relative to the pipeline file's folder. Files are read in name
    /// order; each is ingested once (the file ledger), a changed file again.
    pub path: VarStr,
    /// Stream name, the state-store key and output folder (default: the file name without
    /// extension, or the folder's name).
    #[serde(default)]
    pub stream: Option<String>,
    /// Object-storage connection for `s3://` paths (default: the `AWS_*` environment).
    #[serde(default)]
    pub s3: Option<crate::object::S3Options>,
    /// How the file ledger recognises a file it has ingested: `metadata` (default: name, size,
    /// modification time or ETag) or `content` (also a hash of the content, so a copied or
    /// touched file with the same bytes is not read again).
    #[serde(default)]
    pub identify_by: crate::input::Identity,
    /// Keep watching `path` after reading what is there: `follow: true` (list again every
    /// 5 s, read files once unmodified for 2 s) or `follow: { poll_interval: 10s, settle: 0s }`.
    /// The run then ends on Ctrl-C / SIGTERM.
    #[serde(default)]
    pub follow: Option<crate::input::Follow>,
    /// `auto` (default: `.gz` and `.zst` by extension), `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: crate::input::Compression,
    /// Text encoding of the files: `utf-8` (default), `latin1`, `windows-1252`, or any
    /// WHATWG label (`iso-8859-2`, `shift_jis`, `utf-16le`, ...). Non-UTF-8 input is converted
    /// to UTF-8 as it is read.
    #[serde(default)]
    pub encoding: Option<String>,
    /// Field delimiter (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Quote character (default `"`); a doubled quote inside quotes is a literal quote.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// Escape character inside quoted fields, when the file uses one instead of doubling.
    #[serde(default)]
    pub escape: Option<char>,
    /// Whether the first record holds column names (default `true`).
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// Lines starting with this character are skipped.
    #[serde(default)]
    pub comment: Option<char>,
    /// Field values read as null (default: the empty field).
    #[serde(default = "default_nulls")]
    pub null_values: Vec<String>,
    /// Rows per batch (default 32768). Up to four batches wait between the reader and the
    /// sink: with 65536 rows of a 12-column file (~8.5 MB of Arrow each) whether that queue
    /// happened to be full at the sink's busiest moment decided the peak memory (76-100 MB
    /// over five runs of the same 5M-row file); with 32768 it stays within a few MB, at the
    /// same speed.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Rows read to infer column types (default 10000; 0 reads the whole file).
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
    /// Column types that override inference: `{ zip: string, amount: float64 }`.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    /// Parser threads (default: half the CPUs, at least one; the other half encode the
    /// output). Files with an `escape` character or `comment` lines are read by one thread.
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
    /// Bytes per chunk handed to a parser thread (default 4 MiB).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: NonZeroUsize,
}

/// A column type that can be declared in config.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// `true`/`false` (any case).
    Boolean,
    /// `YYYY-MM-DD`.
    Date,
    /// ISO 8601 / RFC 3339 timestamps, with or without an offset, stored in microseconds
    /// (values with an offset are converted to UTC).
    Timestamp,
}

impl ColumnType {
    /// The Arrow type a column of this type becomes.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }

    /// The column type of an Arrow type this source produces.
    pub fn from_data_type(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Utf8 => ColumnType::String,
            DataType::Int64 => ColumnType::Int64,
            DataType::Float64 => ColumnType::Float64,
            DataType::Boolean => ColumnType::Boolean,
            DataType::Date32 => ColumnType::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => ColumnType::Timestamp,
            _ => return None,
        })
    }

    /// The name used in config and messages.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_true() -> bool {
    true
}
fn default_nulls() -> Vec<String> {
    vec![String::new()]
}
fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(32_768).expect("non-zero")
}
fn default_chunk_bytes() -> NonZeroUsize {
    NonZeroUsize::new(4 << 20).expect("non-zero")
}
fn default_infer_rows() -> usize {
    10_000
}

impl CsvSourceConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        CsvSourceConfig {
            path: VarStr::new(path.into()),
            stream: None,
            s3: None,
            identify_by: crate::input::Identity::Metadata,
            follow: None,
            compression: crate::input::Compression::Auto,
            encoding: None,
            delimiter: default_delimiter(),
            quote: default_quote(),
            escape: None,
            has_header: true,
            comment: None,
            null_values: default_nulls(),
            batch_size: default_batch_size(),
            infer_rows: default_infer_rows(),
            columns: BTreeMap::new(),
            threads: None,
            chunk_bytes: default_chunk_bytes(),
        }
    }

    /// The input encoding when it is not UTF-8 (`None` for UTF-8).
    pub fn text_encoding(
        &self,
    ) -> Result<Option<&'static encoding_rs::Encoding>, tributary_core::config::ConfigError> {
        let Some(label) = &self.encoding else {
            return Ok(None);
        };
        // `latin1` is the WHATWG label for windows-1252, a superset of ISO-8859-1 for text.
        let encoding =
            encoding_rs::Encoding::for_label(label.trim().as_bytes()).ok_or_else(|| {
                tributary_core::config::ConfigError::Value {
                    field: "source.encoding".into(),
                    message: format!(
                        "{label:?} is not a known encoding (try utf-8, latin1, windows-1252, \
                     iso-8859-15, utf-16le)"
                    ),
                }
            })?;
        Ok((encoding != encoding_rs::UTF_8).then_some(encoding))
    }

    /// Checks single-byte characters (the reader works on bytes) and the encoding.
    pub fn validate(&self) -> Result<(), tributary_core::config::ConfigError> {
        self.text_encoding()?;
        let mut chars = vec![("delimiter", self.delimiter), ("quote", self.quote)];
        chars.extend(self.escape.map(|c| ("escape", c)));
        chars.extend(self.comment.map(|c| ("comment", c)));
        for (field, c) in chars {
            if !c.is_ascii() {
                return Err(tributary_core::config::ConfigError::Value {
                    field: format!("source.{field}"),
                    message: format!("{c:?} is not a single-byte (ASCII) character"),
                });
            }
        }
        Ok(())
    }
}
