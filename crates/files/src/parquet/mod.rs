//! The Parquet sink: one folder per stream, files written atomically and named after the
//! source position of their first row.
//!
//! A file is written to `.<name>.tmp`, closed, fsynced, renamed to `part-<key>.parquet` and the
//! folder fsynced; only then does [`Sink::flush`] return (and the runtime commit the source
//! position). `<key>` is a stable hash of (pipeline, stream, start position): after a crash
//! between the rename and the commit, the replayed batches start from the same position and
//! the rewritten file replaces the old one, so nothing is duplicated. A file is cut when it
//! reaches `file_rows` rows, when the schema changes, and at every flush (the end of the run,
//! the pipeline's `commit_interval`). [`Sink::open`] removes temporary files a crash left.
//!
//! One output folder belongs to one pipeline.

use std::fs::File;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

mod encoder;

use arrow_schema::SchemaRef;
use encoder::ParallelWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::{Batch, Sink, WriteOutcome};

/// Configuration of the Parquet sink (`sink: { kind: parquet, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output folder; each stream gets a subfolder. Relative paths are relative to the
    /// pipeline file's folder.
    pub path: VarStr,
    /// `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Rows per row group (default 131072).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: NonZeroUsize,
    /// Rows per file before a new one is started (default 5000000).
    #[serde(default = "default_file_rows")]
    pub file_rows: NonZeroU64,
    /// Threads encoding a row group's columns (default: the number of CPUs).
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
}

/// Parquet compression codec.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard level 3: small files, fast enough to write.
    #[default]
    Zstd,
    /// Snappy: faster, larger.
    Snappy,
    /// No compression.
    None,
}

fn default_row_group_rows() -> NonZeroUsize {
    NonZeroUsize::new(131_072).expect("non-zero")
}
fn default_file_rows() -> NonZeroU64 {
    NonZeroU64::new(5_000_000).expect("non-zero")
}

impl ParquetSinkConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSinkConfig {
            path: VarStr::new(path.into()),
            compression: Compression::default(),
            row_group_rows: default_row_group_rows(),
            file_rows: default_file_rows(),
            threads: None,
        }
    }
}

/// Errors of the Parquet sink; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ParquetSinkError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Parquet encoder failed.
    #[error("{path}: cannot write Parquet: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        source: parquet::errors::ParquetError,
    },
}

impl Classify for ParquetSinkError {
    fn class(&self) -> ErrorClass {
        match self {
            ParquetSinkError::Io { source, .. } => classify_io(source),
            ParquetSinkError::Encode { .. } => ErrorClass::Fatal,
        }
    }
}

impl From<ParquetSinkError> for ConnectorError {
    fn from(e: ParquetSinkError) -> Self {
        ConnectorError::classified(e)
    }
}

struct OpenFile {
    writer: ParallelWriter,
    tmp: PathBuf,
    target: PathBuf,
    schema: SchemaRef,
    rows: u64,
}

/// Writes Parquet files. See the [module docs](self).
pub struct ParquetSink {
    config: ParquetSinkConfig,
    dir: PathBuf,
    pipeline: String,
    current: Option<OpenFile>,
    files_written: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ParquetSinkError + '_ {
    move |source| ParquetSinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a folder so a rename inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), ParquetSinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl ParquetSink {
    /// Builds the sink; `base_dir` anchors a relative `path`.
    pub fn new(config: ParquetSinkConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let dir = base_dir.join(config.path.resolve("sink.path")?);
        Ok(ParquetSink {
            config,
            dir,
            pipeline: String::new(),
            current: None,
            files_written: 0,
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files completed so far.
    pub fn files_written(&self) -> u64 {
        self.files_written
    }

    fn properties(&self, first: &arrow_array::RecordBatch) -> WriterProperties {
        let compression = match self.config.compression {
            Compression::Zstd => PqCompression::ZSTD(ZstdLevel::try_new(3).expect("valid level")),
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        let mut builder = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.config.row_group_rows.get()))
            .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")));
        // Dictionary encoding pays for repetitive columns and costs a hash per value for
        // unique ones (ids, timestamps, free text), which then fall back to plain anyway.
        // Decide per column from the file's first batch.
        for (field, column) in first.schema().fields().iter().zip(first.columns()) {
            if mostly_unique(column.as_ref()) {
                builder = builder.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(field.name().as_str()),
                    false,
                );
            }
        }
        builder.build()
    }

    fn start_file(&mut self, batch: &Batch) -> Result<(), ParquetSinkError> {
        let stream_dir = self.dir.join(stream_folder(&batch.meta.stream));
        std::fs::create_dir_all(&stream_dir).map_err(io_err(&stream_dir))?;
        let key = batch
            .meta
            .start
            .stable_key(&format!("{}/{}", self.pipeline, batch.meta.stream));
        let name = format!("part-{key}.parquet");
        let target = stream_dir.join(&name);
        let tmp = stream_dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let schema = batch.data.schema();
        let threads = self.config.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let writer = ParallelWriter::try_new(
            file,
            schema.clone(),
            self.properties(&batch.data),
            self.config.row_group_rows.get(),
            threads,
        )
        .map_err(|source| ParquetSinkError::Encode {
            path: tmp.clone(),
            source,
        })?;
        self.current = Some(OpenFile {
            writer,
            tmp,
            target,
            schema,
            rows: 0,
        });
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), ParquetSinkError> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let file = open
            .writer
            .finish()
            .map_err(|source| ParquetSinkError::Encode {
                path: open.tmp.clone(),
                source,
            })?;
        file.sync_all().map_err(io_err(&open.tmp))?;
        drop(file);
        std::fs::rename(&open.tmp, &open.target).map_err(io_err(&open.target))?;
        if let Some(dir) = open.target.parent() {
            sync_dir(dir)?;
        }
        self.files_written += 1;
        tracing::debug!(file = %open.target.display(), rows = open.rows, "parquet file committed");
        Ok(())
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome, ParquetSinkError> {
        if batch.num_rows() == 0 {
            return Ok(WriteOutcome::Buffered);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|f| f.schema != batch.data.schema())
        {
            // A new schema starts a new file; the closed one is durable but this batch is not.
            self.finish_file()?;
        }
        if self.current.is_none() {
            self.start_file(batch)?;
        }
        let open = self.current.as_mut().expect("started above");
        open.writer
            .write(&batch.data)
            .map_err(|source| ParquetSinkError::Encode {
                path: open.tmp.clone(),
                source,
            })?;
        open.rows += batch.num_rows() as u64;
        if open.rows >= self.config.file_rows.get() {
            self.finish_file()?;
            return Ok(WriteOutcome::Durable);
        }
        Ok(WriteOutcome::Buffered)
    }
}

/// Whether more than half of the first 4096 values of a flat column are distinct.
fn mostly_unique(column: &dyn arrow_array::Array) -> bool {
    use std::collections::HashSet;
    const SAMPLE: usize = 4096;
    let n = column.len().min(SAMPLE);
    if n < 64 {
        return false;
    }
    let distinct = if let Some(strings) = column.as_any().downcast_ref::<arrow_array::StringArray>()
    {
        (0..n)
            .map(|i| strings.value(i))
            .collect::<HashSet<_>>()
            .len()
    } else if let Some(width) = column.data_type().primitive_width() {
        let data = column.to_data();
        let Some(values) = data.buffers().first() else {
            return false;
        };
        let start = data.offset() * width;
        values.as_slice()[start..start + n * width]
            .chunks_exact(width)
            .collect::<HashSet<_>>()
            .len()
    } else {
        return false;
    };
    distinct * 2 > n
}

/// A stream name as a folder name: path separators and dots-only names are replaced.
fn stream_folder(stream: &str) -> String {
    let cleaned: String = stream
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}

#[async_trait::async_trait]
impl Sink for ParquetSink {
    fn describe(&self) -> String {
        format!("parquet {}", self.dir.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let probe = self.dir.join(".tributary-write-check");
        std::fs::write(&probe, b"ok").map_err(io_err(&probe))?;
        std::fs::remove_file(&probe).map_err(io_err(&probe))?;
        Ok(())
    }

    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        self.pipeline = pipeline.to_string();
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        // Remove temporary files left by a crash: their rows were never committed and will
        // be written again from the committed position.
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries.flatten() {
            let sub = entry.path();
            if !sub.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&sub).map_err(io_err(&sub))?.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".part-") && name.ends_with(".parquet.tmp") {
                    tracing::info!(file = %file.path().display(), "removing a temporary file left by an interrupted run");
                    std::fs::remove_file(file.path()).map_err(io_err(&file.path()))?;
                }
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        Ok(self.write_batch(batch)?)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(self.finish_file()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_columns_skip_the_dictionary() {
        use arrow_array::{Int64Array, StringArray};
        let ids = Int64Array::from((0..1000).collect::<Vec<i64>>());
        let few = Int64Array::from((0..1000).map(|i| i % 7).collect::<Vec<i64>>());
        let names = StringArray::from((0..1000).map(|i| format!("n{i}")).collect::<Vec<_>>());
        let countries =
            StringArray::from((0..1000).map(|i| ["DE", "FR"][i % 2]).collect::<Vec<_>>());
        assert!(mostly_unique(&ids));
        assert!(!mostly_unique(&few));
        assert!(mostly_unique(&names));
        assert!(!mostly_unique(&countries));
        assert!(
            !mostly_unique(&Int64Array::from(vec![1, 2, 3])),
            "too few rows to judge"
        );
    }

    #[test]
    fn stream_names_become_safe_folder_names() {
        assert_eq!(stream_folder("orders"), "orders");
        assert_eq!(stream_folder("public/orders"), "public_orders");
        assert_eq!(stream_folder(".."), "_..");
        assert_eq!(stream_folder(""), "_");
    }
}
