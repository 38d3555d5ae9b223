//! The text file sinks: NDJSON (one JSON object per line) and CSV, optionally gzip or zstd
//! compressed, with the layout rules of every file sink ([`super`]).
//!
//! ```yaml
//! sink: { kind: ndjson, path: out/, compression: gzip }      # out/<stream>/part-….ndjson.gz
//! sink: { kind: csv, path: out/, delimiter: ";", header: true }
//! ```
//!
//! NDJSON keeps nested values (structs as objects, lists as arrays); CSV holds flat columns
//! only, and a stream with a nested column stops with an error that names it (write it as
//! NDJSON or Parquet instead). Timestamps are written as RFC 3339 text, nulls as an absent
//! field (NDJSON; `explicit_nulls: true` writes `null`) or the `null` text (CSV, default
//! empty).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};

use super::{Counting, FileSink, FileSinkError, Format, FormatWriter, Layout};

/// Compression of a text output file.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TextCompression {
    /// Plain text (the default).
    #[default]
    None,
    /// gzip (`.gz`), level 6.
    Gzip,
    /// Zstandard (`.zst`), level 3.
    Zstd,
}

impl TextCompression {
    fn suffix(self) -> &'static str {
        match self {
            TextCompression::None => "",
            TextCompression::Gzip => ".gz",
            TextCompression::Zstd => ".zst",
        }
    }
}

/// Configuration of the NDJSON sink (`sink: { kind: ndjson, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NdjsonSinkConfig {
    /// Output folder; each stream gets a subfolder. Relative paths are relative to the
    /// pipeline file's folder.
    pub path: VarStr,
    /// `none` (default), `gzip` or `zstd`.
    #[serde(default)]
    pub compression: TextCompression,
    /// Write null fields as `null` instead of leaving them out (default `false`).
    #[serde(default)]
    pub explicit_nulls: bool,
    /// Rows per file before a new one is started (default 1000000).
    #[serde(default = "default_file_rows")]
    pub file_rows: NonZeroU64,
    /// Approximate bytes per file (`128MiB`; default: no limit).
    #[serde(default, with = "tributary_core::config::byte_size_option")]
    pub file_bytes: Option<NonZeroU64>,
    /// Hive-style partition folders by these columns; the columns are left out of the rows.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Files open at once (default 64).
    #[serde(default = "super::default_max_open_files")]
    pub max_open_files: NonZeroUsize,
}

/// Configuration of the CSV sink (`sink: { kind: csv, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// Output folder; each stream gets a subfolder. Relative paths are relative to the
    /// pipeline file's folder.
    pub path: VarStr,
    /// `none` (default), `gzip` or `zstd`.
    #[serde(default)]
    pub compression: TextCompression,
    /// Field delimiter (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Write a header line with the column names (default `true`).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Text written for a null (default: the empty field).
    #[serde(default)]
    pub null: String,
    /// Rows per file before a new one is started (default 1000000).
    #[serde(default = "default_file_rows")]
    pub file_rows: NonZeroU64,
    /// Approximate bytes per file (`128MiB`; default: no limit).
    #[serde(default, with = "tributary_core::config::byte_size_option")]
    pub file_bytes: Option<NonZeroU64>,
    /// Hive-style partition folders by these columns; the columns are left out of the rows.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Files open at once (default 64).
    #[serde(default = "super::default_max_open_files")]
    pub max_open_files: NonZeroUsize,
}

fn default_file_rows() -> NonZeroU64 {
    NonZeroU64::new(1_000_000).expect("non-zero")
}
fn default_delimiter() -> char {
    ','
}
fn default_true() -> bool {
    true
}

impl NdjsonSinkConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        NdjsonSinkConfig {
            path: VarStr::new(path.into()),
            compression: TextCompression::None,
            explicit_nulls: false,
            file_rows: default_file_rows(),
            file_bytes: None,
            partition_by: Vec::new(),
            max_open_files: super::default_max_open_files(),
        }
    }
}

impl CsvSinkConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        CsvSinkConfig {
            path: VarStr::new(path.into()),
            compression: TextCompression::None,
            delimiter: default_delimiter(),
            header: true,
            null: String::new(),
            file_rows: default_file_rows(),
            file_bytes: None,
            partition_by: Vec::new(),
            max_open_files: super::default_max_open_files(),
        }
    }
}

/// The byte stream of a text file: plain or compressed. The count is of bytes handed to the
/// file's buffer (after compression), so it lags what the compressor still holds (up to a
/// block) but not what the buffer holds.
pub(crate) enum TextOut {
    /// Plain.
    Plain(Counting<BufWriter<File>>),
    /// gzip.
    Gzip(flate2::write::GzEncoder<Counting<BufWriter<File>>>),
    /// Zstandard.
    Zstd(zstd::stream::write::Encoder<'static, Counting<BufWriter<File>>>),
}

impl TextOut {
    fn new(
        file: File,
        compression: TextCompression,
        count: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let inner = Counting {
            inner: BufWriter::with_capacity(1 << 20, file),
            count,
        };
        Ok(match compression {
            TextCompression::None => TextOut::Plain(inner),
            TextCompression::Gzip => TextOut::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::default(),
            )),
            TextCompression::Zstd => TextOut::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    /// Ends the compressed stream and flushes; returns the file.
    fn finish(self) -> std::io::Result<File> {
        let counting = match self {
            TextOut::Plain(w) => w,
            TextOut::Gzip(w) => w.finish()?,
            TextOut::Zstd(w) => w.finish()?,
        };
        counting.inner.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for TextOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            TextOut::Plain(w) => w.write(buf),
            TextOut::Gzip(w) => w.write(buf),
            TextOut::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            TextOut::Plain(w) => w.flush(),
            TextOut::Gzip(w) => w.flush(),
            TextOut::Zstd(w) => w.flush(),
        }
    }
}

fn layout(
    path: &VarStr,
    base_dir: &Path,
    file_rows: NonZeroU64,
    file_bytes: Option<NonZeroU64>,
    partition_by: &[String],
    max_open_files: NonZeroUsize,
) -> Result<Layout, ConfigError> {
    Ok(Layout {
        dir: base_dir.join(path.resolve("sink.path")?),
        file_rows,
        file_bytes,
        partition_by: partition_by.to_vec(),
        max_open_files: max_open_files.get(),
    })
}

/// The NDJSON [`Format`].
pub struct NdjsonFormat {
    config: NdjsonSinkConfig,
}

/// Writes NDJSON files. See the [module docs](self).
pub type NdjsonSink = FileSink<NdjsonFormat>;

impl FileSink<NdjsonFormat> {
    /// Builds the sink; `base_dir` anchors a relative `path`.
    pub fn new(config: NdjsonSinkConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let layout = layout(
            &config.path,
            base_dir,
            config.file_rows,
            config.file_bytes,
            &config.partition_by,
            config.max_open_files,
        )?;
        Ok(FileSink::with_format(NdjsonFormat { config }, layout))
    }
}

fn encode_err(path: &Path, format: &'static str, message: String) -> FileSinkError {
    FileSinkError::Encode {
        path: path.to_path_buf(),
        format,
        message,
    }
}

/// One NDJSON file being written.
pub struct NdjsonWriter {
    writer: arrow_json::Writer<TextOut, arrow_json::writer::LineDelimited>,
    count: Arc<AtomicU64>,
    path: PathBuf,
}

impl Format for NdjsonFormat {
    type Writer = NdjsonWriter;

    fn extension(&self) -> String {
        format!("ndjson{}", self.config.compression.suffix())
    }

    fn create(
        &self,
        file: File,
        path: &Path,
        _schema: &SchemaRef,
        _first: &RecordBatch,
    ) -> Result<NdjsonWriter, FileSinkError> {
        let count = Arc::new(AtomicU64::new(0));
        let out = TextOut::new(file, self.config.compression, count.clone())
            .map_err(super::io_err(path))?;
        let writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(self.config.explicit_nulls)
            .build::<_, arrow_json::writer::LineDelimited>(out);
        Ok(NdjsonWriter {
            writer,
            count,
            path: path.to_path_buf(),
        })
    }
}

impl FormatWriter for NdjsonWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FileSinkError> {
        let batch = tributary_formats::json::utc_as_offset(batch)
            .map_err(|e| encode_err(&self.path, "NDJSON", e.to_string()))?;
        self.writer
            .write(&batch)
            .map_err(|e| encode_err(&self.path, "NDJSON", e.to_string()))
    }

    fn bytes(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Result<File, FileSinkError> {
        self.writer
            .finish()
            .map_err(|e| encode_err(&self.path, "NDJSON", e.to_string()))?;
        self.writer
            .into_inner()
            .finish()
            .map_err(super::io_err(&self.path))
    }
}

/// The CSV [`Format`].
pub struct CsvFormat {
    config: CsvSinkConfig,
}

/// Writes CSV files. See the [module docs](self).
pub type CsvSink = FileSink<CsvFormat>;

impl FileSink<CsvFormat> {
    /// Builds the sink; `base_dir` anchors a relative `path`.
    pub fn new(config: CsvSinkConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        if !config.delimiter.is_ascii() {
            return Err(ConfigError::Value {
                field: "sink.delimiter".into(),
                message: format!("{:?} is not a single-byte character", config.delimiter),
            });
        }
        let layout = layout(
            &config.path,
            base_dir,
            config.file_rows,
            config.file_bytes,
            &config.partition_by,
            config.max_open_files,
        )?;
        Ok(FileSink::with_format(CsvFormat { config }, layout))
    }
}

/// One CSV file being written.
pub struct CsvWriter {
    writer: arrow_csv::Writer<TextOut>,
    count: Arc<AtomicU64>,
    path: PathBuf,
}

impl Format for CsvFormat {
    type Writer = CsvWriter;

    fn extension(&self) -> String {
        format!("csv{}", self.config.compression.suffix())
    }

    fn check_schema(&self, stream: &str, schema: &Schema) -> Result<(), FileSinkError> {
        match schema.fields().iter().find(|f| f.data_type().is_nested()) {
            Some(f) => Err(FileSinkError::Unsupported {
                stream: stream.to_string(),
                message: format!(
                    "column `{}` is nested ({}), which CSV cannot hold: write the stream as \
                     NDJSON or Parquet",
                    f.name(),
                    f.data_type()
                ),
            }),
            None => Ok(()),
        }
    }

    fn create(
        &self,
        file: File,
        path: &Path,
        _schema: &SchemaRef,
        _first: &RecordBatch,
    ) -> Result<CsvWriter, FileSinkError> {
        let count = Arc::new(AtomicU64::new(0));
        let out = TextOut::new(file, self.config.compression, count.clone())
            .map_err(super::io_err(path))?;
        let writer = arrow_csv::WriterBuilder::new()
            .with_header(self.config.header)
            .with_delimiter(self.config.delimiter as u8)
            .with_null(self.config.null.clone())
            .build(out);
        Ok(CsvWriter {
            writer,
            count,
            path: path.to_path_buf(),
        })
    }
}

impl FormatWriter for CsvWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FileSinkError> {
        self.writer
            .write(batch)
            .map_err(|e| encode_err(&self.path, "CSV", e.to_string()))
    }

    fn bytes(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn finish(self) -> Result<File, FileSinkError> {
        self.writer
            .into_inner()
            .finish()
            .map_err(super::io_err(&self.path))
    }
}
