//! What every file sink shares: folders per stream (and per partition), files written
//! atomically and named after source positions, cut by rows, bytes, schema changes and
//! flushes. The formats ([`crate::parquet`], [`text`] for NDJSON and CSV) only encode.
//!
//! ## Atomic, replay-safe files
//! A file is written to `.part-<key>.<ext>.tmp`, finished, fsynced, renamed to
//! `part-<key>.<ext>` and its folder fsynced; only then does [`Sink::flush`] return (and the
//! runtime commit the source position). `<key>` is a stable hash of (pipeline, stream, the
//! start position of the file's first batch), followed by `-<n>` when the file starts at row
//! `n` of that batch (a batch that fills one file continues in the next). After a crash
//! between the rename and the
//! commit, the source replays from the committed position, the same batches come again, and
//! each rewritten file replaces the old one under the same name, so nothing is duplicated.
//! [`Sink::open`] removes temporary files a crash left.
//!
//! ## Partitions
//! `partition_by: [country, day]` writes Hive-style folders,
//! `<stream>/country=DE/day=2024-03-01/part-<key>.parquet`, the layout DuckDB, Polars,
//! pyarrow, Spark and Athena read back as columns. The partition columns are left out of the
//! files (their values are in the path). Values are written as text, with the characters
//! Hive escapes (`/`, `=`, `:`, `%`, ...) as `%XX`; a null is `__HIVE_DEFAULT_PARTITION__`.
//! Each (stream, partition) has its own open file; the name rule above still holds per
//! folder, because a replay sends the same rows to the same partitions in the same order. At
//! most `max_open_files` files are open at once: past that, the least recently written one is
//! finished early.
//!
//! ## When a file is cut
//! When it reaches `file_rows` rows (exactly: a batch is split across files) or about
//! `file_bytes` bytes (after the write that crosses it), when its stream's schema
//! changes, and at every flush (the end of the run, the pipeline's `commit_interval`).

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{Schema, SchemaRef};
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::{Batch, Position, Sink, WriteOutcome};

pub mod text;

pub use text::{CsvSink, CsvSinkConfig, NdjsonSink, NdjsonSinkConfig, TextCompression};

/// Errors of the file sinks; each names the file or the column.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The encoder failed.
    #[error("{path}: cannot write {format}: {message}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// `Parquet`, `NDJSON`, `CSV`.
        format: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// A partition column is missing or cannot name a folder.
    #[error("stream `{stream}`: cannot partition by `{column}`: {message}")]
    Partition {
        /// The stream.
        stream: String,
        /// The partition column.
        column: String,
        /// Why.
        message: String,
    },
    /// The stream's data cannot be written in this format (a nested column in CSV).
    #[error("stream `{stream}`: {message}")]
    Unsupported {
        /// The stream.
        stream: String,
        /// What does not fit.
        message: String,
    },
}

impl Classify for FileSinkError {
    fn class(&self) -> ErrorClass {
        match self {
            FileSinkError::Io { source, .. } => classify_io(source),
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<FileSinkError> for ConnectorError {
    fn from(e: FileSinkError) -> Self {
        match e {
            e @ FileSinkError::Partition { .. } => ConnectorError::classified(e).with_hint(
                "`partition_by` takes columns of the stream's schema with flat values (text, \
                 numbers, dates, booleans); `tributary discover` shows the columns",
            ),
            e => ConnectorError::classified(e),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FileSinkError + '_ {
    move |source| FileSinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An output format: how to start a file.
pub trait Format: Send {
    /// The writer of one file.
    type Writer: FormatWriter;
    /// The file extension, without the dot (`parquet`, `ndjson.gz`).
    fn extension(&self) -> String;
    /// Checks that batches of `schema` can be written (before any file is made).
    fn check_schema(&self, stream: &str, schema: &Schema) -> Result<(), FileSinkError> {
        let _ = (stream, schema);
        Ok(())
    }
    /// Starts a file at `path` (the temporary file) for batches of `schema`; `first` is the
    /// file's first batch, for formats that tune themselves to the data.
    fn create(
        &self,
        file: File,
        path: &Path,
        schema: &SchemaRef,
        first: &RecordBatch,
    ) -> Result<Self::Writer, FileSinkError>;
}

/// Writes one file of a [`Format`].
pub trait FormatWriter: Send {
    /// Appends rows.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FileSinkError>;
    /// About how many bytes the file will have if finished now.
    fn bytes(&self) -> u64;
    /// Writes what is buffered and the footer; returns the file for syncing.
    fn finish(self) -> Result<File, FileSinkError>;
}

/// Where and how files are laid out: the settings every file sink has.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Output folder; each stream gets a subfolder.
    pub dir: PathBuf,
    /// Rows per file.
    pub file_rows: NonZeroU64,
    /// Approximate bytes per file.
    pub file_bytes: Option<NonZeroU64>,
    /// Hive-style partition columns.
    pub partition_by: Vec<String>,
    /// Files open at once.
    pub max_open_files: usize,
}

struct OpenFile<W> {
    writer: W,
    tmp: PathBuf,
    target: PathBuf,
    rows: u64,
    /// Write counter when the file was last written (for closing the least recent).
    last_write: u64,
}

/// A sink that writes one [`Format`] into folders of files. See the [module docs](self).
pub struct FileSink<F: Format> {
    format: F,
    layout: Layout,
    pipeline: String,
    /// Open files by (stream, partition path).
    open: HashMap<(String, String), OpenFile<F::Writer>>,
    /// The schema each stream's open files were started with.
    schemas: HashMap<String, SchemaRef>,
    writes: u64,
    files_written: u64,
}

impl<F: Format> FileSink<F> {
    /// A sink writing `format` with `layout`.
    pub fn with_format(format: F, layout: Layout) -> Self {
        FileSink {
            format,
            layout,
            pipeline: String::new(),
            open: HashMap::new(),
            schemas: HashMap::new(),
            writes: 0,
            files_written: 0,
        }
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Files completed so far.
    pub fn files_written(&self) -> u64 {
        self.files_written
    }

    fn start_file(
        &mut self,
        stream: &str,
        partition: &str,
        start: &Position,
        offset: usize,
        data: &RecordBatch,
    ) -> Result<OpenFile<F::Writer>, FileSinkError> {
        let mut folder = self.layout.dir.join(stream_folder(stream));
        if !partition.is_empty() {
            folder.push(partition);
        }
        std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
        let key = start.stable_key(&format!("{}/{stream}", self.pipeline));
        let name = match offset {
            0 => format!("part-{key}.{}", self.format.extension()),
            n => format!("part-{key}-{n}.{}", self.format.extension()),
        };
        let target = folder.join(&name);
        let tmp = folder.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let writer = self.format.create(file, &tmp, &data.schema(), data)?;
        Ok(OpenFile {
            writer,
            tmp,
            target,
            rows: 0,
            last_write: self.writes,
        })
    }

    fn finish(&mut self, key: &(String, String)) -> Result<(), FileSinkError> {
        let Some(open) = self.open.remove(key) else {
            return Ok(());
        };
        let file = open.writer.finish()?;
        file.sync_all().map_err(io_err(&open.tmp))?;
        drop(file);
        std::fs::rename(&open.tmp, &open.target).map_err(io_err(&open.target))?;
        if let Some(dir) = open.target.parent() {
            sync_dir(dir)?;
        }
        self.files_written += 1;
        tracing::debug!(file = %open.target.display(), rows = open.rows, "file committed");
        Ok(())
    }

    fn finish_stream(&mut self, stream: &str) -> Result<(), FileSinkError> {
        let keys: Vec<_> = self
            .open
            .keys()
            .filter(|(s, _)| s == stream)
            .cloned()
            .collect();
        for key in keys {
            self.finish(&key)?;
        }
        Ok(())
    }

    fn finish_all(&mut self) -> Result<(), FileSinkError> {
        let mut keys: Vec<_> = self.open.keys().cloned().collect();
        keys.sort();
        for key in keys {
            self.finish(&key)?;
        }
        Ok(())
    }

    fn write_part(
        &mut self,
        stream: &str,
        partition: String,
        start: &Position,
        data: RecordBatch,
    ) -> Result<(), FileSinkError> {
        let key = (stream.to_string(), partition);
        // Row offset in this batch's rows for this partition: a batch that fills a file
        // continues in a new one named after the same start position and this offset.
        let mut offset = 0usize;
        while offset < data.num_rows() {
            if !self.open.contains_key(&key) {
                if self.open.len() >= self.layout.max_open_files.max(1) {
                    let oldest = self
                        .open
                        .iter()
                        .min_by_key(|(_, f)| f.last_write)
                        .map(|(k, _)| k.clone())
                        .expect("at least one file is open");
                    self.finish(&oldest)?;
                }
                let file = self.start_file(stream, &key.1, start, offset, &data)?;
                self.open.insert(key.clone(), file);
            }
            self.writes += 1;
            let file_rows = self.layout.file_rows.get();
            let open = self.open.get_mut(&key).expect("opened above");
            let room = (file_rows - open.rows.min(file_rows)).max(1) as usize;
            let take = room.min(data.num_rows() - offset);
            let part = if offset == 0 && take == data.num_rows() {
                data.clone()
            } else {
                data.slice(offset, take)
            };
            open.writer.write(&part)?;
            open.rows += take as u64;
            open.last_write = self.writes;
            offset += take;
            let full = open.rows >= file_rows
                || self
                    .layout
                    .file_bytes
                    .is_some_and(|limit| open.writer.bytes() >= limit.get());
            if full {
                self.finish(&key)?;
            }
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<WriteOutcome, FileSinkError> {
        if batch.num_rows() == 0 {
            return Ok(self.outcome());
        }
        let stream = batch.meta.stream.as_ref();
        let schema = batch.data.schema();
        if self.schemas.get(stream) != Some(&schema) {
            // A new schema starts new files; the closed ones are durable, this batch is not.
            self.finish_stream(stream)?;
            let written = self.written_schema(stream, &schema)?;
            self.format.check_schema(stream, &written)?;
            self.schemas.insert(stream.to_string(), schema.clone());
        }
        if self.layout.partition_by.is_empty() {
            self.write_part(stream, String::new(), &batch.meta.start, batch.data.clone())?;
        } else {
            for (partition, rows) in split(stream, &batch.data, &self.layout.partition_by)? {
                self.write_part(stream, partition, &batch.meta.start, rows)?;
            }
        }
        Ok(self.outcome())
    }

    /// The schema of the files: the stream's minus the partition columns.
    fn written_schema(&self, stream: &str, schema: &SchemaRef) -> Result<Schema, FileSinkError> {
        for column in &self.layout.partition_by {
            let field = schema
                .field_with_name(column)
                .map_err(|_| FileSinkError::Partition {
                    stream: stream.to_string(),
                    column: column.clone(),
                    message: format!(
                        "the stream has no such column (columns: {})",
                        column_names(schema)
                    ),
                })?;
            if field.data_type().is_nested() {
                return Err(FileSinkError::Partition {
                    stream: stream.to_string(),
                    column: column.clone(),
                    message: format!("its type {} is nested", field.data_type()),
                });
            }
        }
        Ok(Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .filter(|f| !self.layout.partition_by.contains(f.name()))
                .cloned()
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        ))
    }

    fn outcome(&self) -> WriteOutcome {
        if self.open.is_empty() {
            WriteOutcome::Durable
        } else {
            WriteOutcome::Buffered
        }
    }
}

fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a batch into one batch per partition (rows in their order), without the partition
/// columns; partitions in order of their first row.
fn split(
    stream: &str,
    data: &RecordBatch,
    columns: &[String],
) -> Result<Vec<(String, RecordBatch)>, FileSinkError> {
    let schema = data.schema();
    let options = FormatOptions::default().with_null("");
    let mut arrays = Vec::with_capacity(columns.len());
    let mut formatters = Vec::with_capacity(columns.len());
    for column in columns {
        let index = schema
            .index_of(column)
            .map_err(|_| FileSinkError::Partition {
                stream: stream.to_string(),
                column: column.clone(),
                message: format!(
                    "the stream has no such column (columns: {})",
                    column_names(&schema)
                ),
            })?;
        arrays.push(data.column(index).clone());
    }
    for array in &arrays {
        formatters.push(
            ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| {
                FileSinkError::Partition {
                    stream: stream.to_string(),
                    column: columns[formatters.len()].clone(),
                    message: e.to_string(),
                }
            })?,
        );
    }
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !columns.contains(schema.field(i).name()))
        .collect();
    let projected = data
        .project(&keep)
        .map_err(|e| FileSinkError::Unsupported {
            stream: stream.to_string(),
            message: e.to_string(),
        })?;
    let mut order: Vec<String> = Vec::new();
    let mut rows: HashMap<String, Vec<u32>> = HashMap::new();
    let mut path = String::new();
    for row in 0..data.num_rows() {
        path.clear();
        for (i, (column, f)) in columns.iter().zip(&formatters).enumerate() {
            if i > 0 {
                path.push('/');
            }
            path.push_str(&escape(column));
            path.push('=');
            if arrays[i].is_null(row) {
                path.push_str(HIVE_NULL);
            } else {
                let value = f.value(row).to_string();
                if value.is_empty() {
                    path.push_str(HIVE_NULL);
                } else {
                    path.push_str(&escape(&value));
                }
            }
        }
        match rows.get_mut(&path) {
            Some(r) => r.push(row as u32),
            None => {
                order.push(path.clone());
                rows.insert(path.clone(), vec![row as u32]);
            }
        }
    }
    if order.len() == 1 {
        return Ok(vec![(order.pop().expect("one"), projected)]);
    }
    order
        .into_iter()
        .map(|p| {
            let indices = UInt32Array::from(rows.remove(&p).expect("recorded"));
            let part =
                arrow_select::take::take_record_batch(&projected, &indices).map_err(|e| {
                    FileSinkError::Unsupported {
                        stream: stream.to_string(),
                        message: e.to_string(),
                    }
                })?;
            Ok((p, part))
        })
        .collect()
}

/// The folder name Hive and its readers use for a null partition value.
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Escapes a partition name or value the way Hive does: control characters and
/// `"#%'*/:=?\^{[]` (and DEL) become `%XX`.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\^{[]\u{7f}".contains(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Default of `max_open_files`.
pub(crate) fn default_max_open_files() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(64).expect("non-zero")
}

/// Fsyncs a folder so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FileSinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
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

/// Removes `.part-*.tmp` files under `dir` (any depth): rows a crash left unfinished, which
/// the source sends again from the committed position.
fn remove_temporaries(dir: &Path) -> Result<(), FileSinkError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            remove_temporaries(&path)?;
        } else if name.starts_with(".part-") && name.ends_with(".tmp") {
            tracing::info!(file = %path.display(), "removing a temporary file left by an interrupted run");
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl<F: Format> Sink for FileSink<F> {
    fn describe(&self) -> String {
        format!(
            "{} files in {}",
            self.format.extension(),
            self.layout.dir.display()
        )
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let dir = &self.layout.dir;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let probe = dir.join(".tributary-write-check");
        std::fs::write(&probe, b"ok").map_err(io_err(&probe))?;
        std::fs::remove_file(&probe).map_err(io_err(&probe))?;
        Ok(())
    }

    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        self.pipeline = pipeline.to_string();
        let dir = &self.layout.dir;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        remove_temporaries(dir)?;
        Ok(())
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        Ok(self.write_batch(batch)?)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(self.finish_all()?)
    }
}

/// Counts bytes written through it (for `file_bytes` of text formats).
pub(crate) struct Counting<W> {
    pub(crate) inner: W,
    pub(crate) count: Arc<std::sync::atomic::AtomicU64>,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};

    #[test]
    fn partition_values_are_escaped_like_hive() {
        assert_eq!(escape("DE"), "DE");
        assert_eq!(escape("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape("2024-03-01T09:30:00"), "2024-03-01T09%3A30%3A00");
        assert_eq!(escape("50%"), "50%25");
        assert_eq!(escape("ü ok"), "ü ok");
    }

    #[test]
    fn a_batch_splits_by_partition_in_first_row_order_without_the_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("country", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("FR"),
                    Some("DE"),
                    None,
                    Some("FR"),
                ])),
            ],
        )
        .unwrap();
        let parts = split("s", &batch, &["country".to_string()]).unwrap();
        let got: Vec<(&str, Vec<i64>)> = parts
            .iter()
            .map(|(p, b)| {
                assert_eq!(b.num_columns(), 1);
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (p.as_str(), ids.values().to_vec())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("country=FR", vec![1, 4]),
                ("country=DE", vec![2]),
                ("country=__HIVE_DEFAULT_PARTITION__", vec![3]),
            ]
        );
        let missing = split("s", &batch, &["region".to_string()]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "stream `s`: cannot partition by `region`: the stream has no such column (columns: id, country)"
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
