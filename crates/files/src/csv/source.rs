use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};

use super::config::{ColumnType, CsvSourceConfig};
use super::infer::{column_names, infer_schema, parse_cell, Cell, ColumnGuess};

/// Where the CSV source is in its file (the shared [`crate::TextPosition`]).
pub type CsvPosition = crate::TextPosition;

/// Errors of the CSV source. Each names the file and, where it applies, the line.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file cannot be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading failed mid-file.
    #[error("{path}:{line}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The line being read.
        line: u64,
        /// The reader's error.
        source: csv::Error,
    },
    /// The file is shorter than the committed position: it was replaced or truncated.
    #[error(
        "{path} is {len} bytes, shorter than the committed position (byte {offset}): the file was \
         replaced or truncated since the last run"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length now.
        len: u64,
        /// The committed offset.
        offset: u64,
    },
    /// A `columns:` override names no column of the file.
    #[error("{path}: `columns.{column}` matches no column of the file (columns: {known})")]
    UnknownColumn {
        /// The file.
        path: PathBuf,
        /// The override's key.
        column: String,
        /// The file's columns.
        known: String,
    },
    /// A parser thread stopped unexpectedly (a bug: please report it).
    #[error("{0}: a CSV parser thread stopped unexpectedly")]
    Worker(PathBuf),
    /// The state store holds something this source did not write.
    #[error("{path}: stored state is not usable: {message}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Classify for CsvError {
    fn class(&self) -> ErrorClass {
        match self {
            CsvError::Open { source, .. } => classify_io(source),
            CsvError::Read { source, .. } => match source.kind() {
                csv::ErrorKind::Io(e) => classify_io(e),
                _ => ErrorClass::Fatal,
            },
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<CsvError> for ConnectorError {
    fn from(e: CsvError) -> Self {
        let hint = match &e {
            CsvError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Some(
                "check `source.path` (relative paths start at the pipeline file's folder)"
                    .to_string(),
            ),
            CsvError::Truncated { .. } | CsvError::BadState { .. } => {
                Some(crate::RESET_HINT.to_string())
            }
            _ => None,
        };
        let err = ConnectorError::classified(e);
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

/// Reads one CSV file. See the [module docs](super).
pub struct CsvSource {
    config: CsvSourceConfig,
    path: PathBuf,
    stream: String,
    nulls: Vec<Vec<u8>>,
    empty_is_null: bool,
}

/// What the top of the file says: column names, where data starts.
struct Head {
    names: Vec<String>,
    data_start: CsvPosition,
}

impl CsvSource {
    /// Builds the source; `base_dir` anchors a relative `path` (the pipeline file's folder).
    pub fn new(config: CsvSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        config.validate()?;
        let path = base_dir.join(config.path.resolve("source.path")?);
        let stream = config.stream.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "csv".to_string())
        });
        let nulls = config
            .null_values
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        Ok(CsvSource {
            empty_is_null: config.null_values.iter().any(|n| n.is_empty()),
            config,
            path,
            stream,
            nulls,
        })
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn reader<R: std::io::Read>(&self, input: R) -> csv::Reader<R> {
        let c = &self.config;
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(c.delimiter as u8)
            .quote(c.quote as u8)
            .escape(c.escape.map(|e| e as u8))
            .double_quote(c.escape.is_none())
            .comment(c.comment.map(|e| e as u8))
            .buffer_capacity(1 << 20)
            .from_reader(input)
    }

    fn open(&self) -> Result<File, CsvError> {
        File::open(&self.path).map_err(|source| CsvError::Open {
            path: self.path.clone(),
            source,
        })
    }

    fn read_err(&self, line: u64) -> impl Fn(csv::Error) -> CsvError + '_ {
        move |source| CsvError::Read {
            path: self.path.clone(),
            line,
            source,
        }
    }

    /// Reads the header (or the first record, for its width) and, when `sample` is set,
    /// infers column types from up to `infer_rows` records.
    fn head_and_schema(&self) -> Result<(Head, Schema), CsvError> {
        let mut rdr = self.reader(self.open()?);
        let mut first = csv::ByteRecord::new();
        let has_first = rdr.read_byte_record(&mut first).map_err(self.read_err(1))?;
        let (names, data_start, mut pending) = if !has_first {
            (Vec::new(), CsvPosition { offset: 0, line: 1 }, None)
        } else if self.config.has_header {
            let p = rdr.position();
            (
                column_names(Some(&first), first.len()),
                CsvPosition {
                    offset: p.byte(),
                    line: p.line(),
                },
                None,
            )
        } else {
            (
                column_names(None, first.len()),
                CsvPosition { offset: 0, line: 1 },
                Some(first),
            )
        };
        let width = names.len();
        let mut guesses = vec![ColumnGuess::default(); width];
        let limit = if self.config.infer_rows == 0 {
            usize::MAX
        } else {
            self.config.infer_rows
        };
        let mut record = csv::ByteRecord::new();
        let mut seen = 0;
        while seen < limit {
            let rec = match pending.take() {
                Some(r) => r,
                None => {
                    let line = rdr.position().line();
                    if !rdr
                        .read_byte_record(&mut record)
                        .map_err(self.read_err(line))?
                    {
                        break;
                    }
                    record.clone()
                }
            };
            seen += 1;
            if rec.len() != width {
                continue;
            }
            for (guess, field) in guesses.iter_mut().zip(rec.iter()) {
                if self.is_null(field) {
                    continue;
                }
                match std::str::from_utf8(field) {
                    Ok(s) => guess.observe(s),
                    Err(_) => guess.observe("\u{fffd}not utf-8"),
                }
            }
        }
        let mut types: Vec<ColumnType> = guesses.iter().map(ColumnGuess::result).collect();
        for (column, ty) in &self.config.columns {
            let Some(i) = names.iter().position(|n| n == column) else {
                return Err(CsvError::UnknownColumn {
                    path: self.path.clone(),
                    column: column.clone(),
                    known: names.join(", "),
                });
            };
            types[i] = *ty;
        }
        let schema = infer_schema(&names, &types);
        Ok((Head { names, data_start }, schema))
    }

    fn is_null(&self, field: &[u8]) -> bool {
        // The empty token is the common case: no comparison at all for it.
        if field.is_empty() {
            return self.empty_is_null;
        }
        self.nulls
            .iter()
            .any(|n| n.len() == field.len() && n.as_slice() == field)
    }

    fn raw_record(&self, record: &csv::ByteRecord) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new()
            .delimiter(self.config.delimiter as u8)
            .quote(self.config.quote as u8)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let _ = w.write_byte_record(record);
        let mut bytes = w.into_inner().unwrap_or_default();
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        bytes
    }

    fn position(p: CsvPosition) -> Position {
        Position::encode(&p).expect("a struct of two integers serialises")
    }

    /// Opens the file at `start`, checking it was not truncated, and announces the work.
    pub(super) fn open_at(
        &self,
        ctx: &SourceContext,
        start: CsvPosition,
    ) -> Result<File, CsvError> {
        crate::open_at(&self.path, start.offset, ctx.progress()).map_err(|e| match e {
            crate::OpenAtError::Io(source) => CsvError::Open {
                path: self.path.clone(),
                source,
            },
            crate::OpenAtError::Truncated { len } => CsvError::Truncated {
                path: self.path.clone(),
                len,
                offset: start.offset,
            },
        })
    }

    /// Reads every record of `input` (which starts at `start`), handing rejected records and
    /// cut batches to `out` in order. `out` returns `false` to stop early.
    pub(super) fn assemble<R: std::io::Read>(
        &self,
        input: R,
        start: CsvPosition,
        schema: &SchemaRef,
        mut out: impl FnMut(Item) -> bool,
    ) -> Result<(), CsvError> {
        let mut rdr = self.reader(input);
        let at = |rdr: &csv::Reader<R>| {
            let p = rdr.position();
            CsvPosition {
                offset: start.offset + p.byte(),
                line: start.line + p.line() - 1,
            }
        };
        let types: Vec<ColumnType> = schema
            .fields()
            .iter()
            .map(|f| ColumnType::from_data_type(f.data_type()).unwrap_or(ColumnType::String))
            .collect();
        let batch_size = self.config.batch_size.get();
        let mut columns = Columns::new(&types, batch_size);
        let mut record = csv::ByteRecord::new();
        let mut cells: Vec<Option<Cell>> = vec![None; types.len()];
        let mut batch_start = start;
        let stream: Arc<str> = self.stream.as_str().into();

        loop {
            let before = at(&rdr);
            let more = rdr
                .read_byte_record(&mut record)
                .map_err(self.read_err(before.line))?;
            if more {
                let line = record
                    .position()
                    .map_or(before.line, |p| start.line + p.line() - 1);
                // One UTF-8 check per record (not per field), then typed parsing on &str.
                let parsed = match csv::StringRecord::from_byte_record(std::mem::take(&mut record))
                {
                    Ok(text) => {
                        let parsed = self.parse_row(&text, &types, schema, &mut cells);
                        if parsed.is_ok() {
                            columns.append(&text, &cells);
                        }
                        record = text.into_byte_record();
                        parsed
                    }
                    Err(e) => {
                        record = e.into_byte_record();
                        Err(utf8_problem(&record, schema))
                    }
                };
                if let Err(message) = parsed {
                    let rejected = Rejected {
                        stream: self.stream.clone(),
                        position: Some(Self::position(before)),
                        message: format!("line {line}: {message}"),
                        location: Some(format!("{}:{line}", self.path.display())),
                        raw: self.raw_record(&record),
                    };
                    if !out(Item::Rejected(rejected)) {
                        return Ok(());
                    }
                }
            }
            let end = at(&rdr);
            if columns.len() >= batch_size || (!more && (columns.len() > 0 || end != batch_start)) {
                let data = RecordBatch::try_new(schema.clone(), columns.finish())
                    .expect("columns are built from the schema");
                let batch = Batch {
                    data,
                    meta: BatchMeta {
                        stream: stream.clone(),
                        start: Self::position(batch_start),
                        end: Self::position(end),
                        source_bytes: end.offset - batch_start.offset,
                        rows: None,
                    },
                };
                if !out(Item::Batch(batch)) {
                    return Ok(());
                }
                batch_start = end;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Whether records can be split by quote parity (no escape character, no comment lines,
    /// where a quote would not toggle the quoted state).
    fn splittable(&self) -> bool {
        self.config.escape.is_none() && self.config.comment.is_none()
    }

    /// The blocking read: parallel over chunks when the format allows, else one stream.
    fn read_loop(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        schema: SchemaRef,
        start: CsvPosition,
    ) -> Result<(), CsvError> {
        let file = self.open_at(ctx, start)?;
        // Parsing and Parquet encoding share the CPUs: by default half of them parse (on two
        // cores one parser thread keeps the encoder busy; more threads only cost memory).
        let threads = self.config.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            |n| n.get(),
        );
        if self.splittable() && threads > 1 {
            return super::parallel::read(self, ctx, rt, &schema, file, start, threads);
        }
        self.assemble(file, start, &schema, |item| emit(ctx, rt, item))
    }

    /// Parses one record into `cells`, or says what is wrong with it.
    fn parse_row(
        &self,
        record: &csv::StringRecord,
        types: &[ColumnType],
        schema: &Schema,
        cells: &mut [Option<Cell>],
    ) -> Result<(), String> {
        if record.len() != types.len() {
            return Err(format!(
                "expected {} fields, found {}",
                types.len(),
                record.len()
            ));
        }
        for (i, (text, ty)) in record.iter().zip(types).enumerate() {
            if self.is_null(text.as_bytes()) {
                cells[i] = None;
                continue;
            }
            cells[i] = Some(parse_cell(*ty, text).ok_or_else(|| {
                format!(
                    "field `{}`: expected {}, found {:?}",
                    schema.field(i).name(),
                    ty.name(),
                    truncate(text, 80)
                )
            })?);
        }
        Ok(())
    }
}

/// Names the first field of a record that is not valid UTF-8.
fn utf8_problem(record: &csv::ByteRecord, schema: &Schema) -> String {
    let index = record
        .iter()
        .position(|f| std::str::from_utf8(f).is_err())
        .unwrap_or(0);
    match schema.fields().get(index) {
        Some(field) => format!("field `{}` is not valid UTF-8", field.name()),
        None => format!("field {} is not valid UTF-8", index + 1),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One Arrow builder per column.
enum Column {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
}

struct Columns {
    columns: Vec<Column>,
    rows: usize,
}

impl Columns {
    fn new(types: &[ColumnType], capacity: usize) -> Self {
        let columns = types
            .iter()
            .map(|t| match t {
                ColumnType::String => {
                    Column::Str(StringBuilder::with_capacity(capacity, capacity * 16))
                }
                ColumnType::Int64 => Column::I64(Int64Builder::with_capacity(capacity)),
                ColumnType::Float64 => Column::F64(Float64Builder::with_capacity(capacity)),
                ColumnType::Boolean => Column::Bool(BooleanBuilder::with_capacity(capacity)),
                ColumnType::Date => Column::Date(Date32Builder::with_capacity(capacity)),
                ColumnType::Timestamp => {
                    Column::Ts(TimestampMicrosecondBuilder::with_capacity(capacity))
                }
            })
            .collect();
        Columns { columns, rows: 0 }
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn append(&mut self, record: &csv::StringRecord, cells: &[Option<Cell>]) {
        for ((column, cell), field) in self.columns.iter_mut().zip(cells).zip(record.iter()) {
            match (column, cell) {
                (Column::Str(b), Some(Cell::Str)) => b.append_value(field),
                (Column::Str(b), _) => b.append_null(),
                (Column::I64(b), c) => b.append_option(match c {
                    Some(Cell::I64(v)) => Some(*v),
                    _ => None,
                }),
                (Column::F64(b), c) => b.append_option(match c {
                    Some(Cell::F64(v)) => Some(*v),
                    _ => None,
                }),
                (Column::Bool(b), c) => b.append_option(match c {
                    Some(Cell::Bool(v)) => Some(*v),
                    _ => None,
                }),
                (Column::Date(b), c) => b.append_option(match c {
                    Some(Cell::Date(v)) => Some(*v),
                    _ => None,
                }),
                (Column::Ts(b), c) => b.append_option(match c {
                    Some(Cell::Ts(v)) => Some(*v),
                    _ => None,
                }),
            }
        }
        self.rows += 1;
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Str(b) => Arc::new(b.finish()),
                    Column::I64(b) => Arc::new(b.finish()),
                    Column::F64(b) => Arc::new(b.finish()),
                    Column::Bool(b) => Arc::new(b.finish()),
                    Column::Date(b) => Arc::new(b.finish()),
                    Column::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

/// What reading produces, in order.
pub(super) enum Item {
    /// A bad record.
    Rejected(Rejected),
    /// Rows.
    Batch(Batch),
}

/// Hands one item to the runtime; `false` when the run is stopping.
pub(super) fn emit(ctx: &SourceContext, rt: &tokio::runtime::Handle, item: Item) -> bool {
    let sent = match item {
        Item::Rejected(r) => rt.block_on(ctx.reject(r)).is_ok(),
        Item::Batch(b) => rt.block_on(ctx.emit(b)).is_ok(),
    };
    sent && !ctx.is_stopping()
}

impl CsvSource {
    /// The path being read.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The quote byte.
    pub(super) fn quote(&self) -> u8 {
        self.config.quote as u8
    }

    /// The delimiter byte.
    pub(super) fn delimiter(&self) -> u8 {
        self.config.delimiter as u8
    }

    /// Bytes per chunk for parallel parsing.
    pub(super) fn chunk_bytes(&self) -> usize {
        self.config.chunk_bytes.get()
    }

    /// The schema to read with: the one stored by an earlier run, or a fresh inference.
    fn schema_for_run(&self, ctx: &SourceContext) -> Result<(Head, SchemaRef), ConnectorError> {
        let (head, inferred) = self.head_and_schema()?;
        let stored = ctx.stored_schema(&self.stream)?;
        let schema = match stored {
            Some(stored) => {
                let stored_names: Vec<&String> = stored.fields().iter().map(|f| f.name()).collect();
                let head_names: Vec<&String> = head.names.iter().collect();
                if stored_names != head_names {
                    return Err(CsvError::BadState {
                        path: self.path.clone(),
                        message: format!(
                            "the columns changed since the stored schema (stored: {}; file: {})",
                            stored_names
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            head.names.join(", ")
                        ),
                    }
                    .into());
                }
                if let Some(f) = stored
                    .fields()
                    .iter()
                    .find(|f| ColumnType::from_data_type(f.data_type()).is_none())
                {
                    return Err(CsvError::BadState {
                        path: self.path.clone(),
                        message: format!("stored column `{}` has type {}", f.name(), f.data_type()),
                    }
                    .into());
                }
                // Declared overrides win over the stored schema (a user fixing a type).
                if self.config.columns.is_empty() {
                    stored
                } else {
                    inferred
                }
            }
            None => inferred,
        };
        Ok((head, Arc::new(schema)))
    }
}

#[async_trait::async_trait]
impl Source for CsvSource {
    fn describe(&self) -> String {
        format!("csv {}", self.path.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        self.open()?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let (_, schema) = self.head_and_schema()?;
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let sample = match self.config.infer_rows {
            0 => "all rows".to_string(),
            n => format!("the first {n} rows"),
        };
        Ok(vec![StreamInfo {
            name: self.stream.clone(),
            schema: Some(Arc::new(schema)),
            detail: Some(format!(
                "{} ({size} bytes), types inferred from {sample}",
                self.path.display()
            )),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let (head, schema) = self.schema_for_run(&ctx)?;
        let start = match ctx.checkpoint(&self.stream) {
            Some(p) => p.decode::<CsvPosition>().map_err(|e| {
                ConnectorError::from(CsvError::BadState {
                    path: self.path.clone(),
                    message: format!("committed position {p} is not a CSV position: {e}"),
                })
            })?,
            None => head.data_start,
        };
        tracing::info!(file = %self.path.display(), offset = start.offset, line = start.line, "reading CSV");
        let rt = tokio::runtime::Handle::current();
        let this = CsvSource {
            config: self.config.clone(),
            path: self.path.clone(),
            stream: self.stream.clone(),
            nulls: self.nulls.clone(),
            empty_is_null: self.empty_is_null,
        };
        tokio::task::spawn_blocking(move || this.read_loop(&ctx, &rt, schema, start))
            .await
            .map_err(|e| ConnectorError::fatal(format!("CSV reader thread: {e}")))??;
        Ok(())
    }
}
