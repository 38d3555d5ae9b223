use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Schema, SchemaRef};
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::schema::SchemaPolicy;
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};

use crate::input::{announce, completion, FileError, FileSet, InputFile, Planned};
use tributary_core::state::FileRecord;

use super::config::{ColumnType, CsvSourceConfig};
use super::infer::{column_names, infer_schema, parse_field, Cell, ColumnGuess};

/// Where the CSV source is in its file (the shared [`crate::TextPosition`]).
pub type CsvPosition = crate::TextPosition;

/// Errors of the CSV source. Each names the file and, where it applies, the line.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// Listing, opening or positioning a file failed (shared with the other file sources).
    #[error(transparent)]
    File(#[from] FileError),
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
}

impl Classify for CsvError {
    fn class(&self) -> ErrorClass {
        match self {
            CsvError::File(e) => e.class(),
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
        match e {
            CsvError::File(e) => e.into(),
            e => ConnectorError::classified(e),
        }
    }
}

/// Reads the CSV files of one stream. See the [module docs](super).
pub struct CsvSource {
    config: CsvSourceConfig,
    files: FileSet,
    stream: String,
    nulls: Vec<Vec<u8>>,
    empty_is_null: bool,
    encoding: Option<&'static encoding_rs::Encoding>,
}

/// What the top of a file says: column names, where data starts.
pub(super) struct Head {
    names: Vec<String>,
    data_start: CsvPosition,
}

/// How one file's records map onto the stream's schema.
pub(super) struct Layout {
    /// Fields per record in this file.
    width: usize,
    /// For each schema column, the record field that holds it (`None`: absent, null).
    map: Vec<Option<usize>>,
    /// Record fields the schema has no column for, with their names.
    extra: Vec<(usize, String)>,
    /// What to do with a value in an extra column or of the wrong type.
    policy: SchemaPolicy,
}

impl Layout {
    fn new(names: &[String], schema: &Schema, policy: SchemaPolicy) -> Self {
        let map = schema
            .fields()
            .iter()
            .map(|f| names.iter().position(|n| n == f.name()))
            .collect();
        let extra = names
            .iter()
            .enumerate()
            .filter(|(_, n)| schema.field_with_name(n).is_err())
            .map(|(i, n)| (i, n.clone()))
            .collect();
        Layout {
            width: names.len(),
            map,
            extra,
            policy,
        }
    }

    fn field<'r>(&self, record: &'r csv::ByteRecord, column: usize) -> Option<&'r [u8]> {
        self.map[column].and_then(|i| record.get(i))
    }
}

/// One file being read: what positions, messages and parsing need.
pub(super) struct Reading<'a> {
    pub(super) file: &'a InputFile,
    pub(super) schema: SchemaRef,
    pub(super) layout: Layout,
    /// The end position of the last batch handed to the runtime, and rows handed so far.
    last_end: std::sync::Mutex<(Option<Position>, u64)>,
}

impl Reading<'_> {
    /// Hands one item to the runtime, remembering where the last batch ended; `false` when
    /// the run is stopping.
    pub(super) fn emit(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        item: Item,
    ) -> bool {
        if let Item::Batch(b) = &item {
            let mut last = self.last_end.lock().unwrap_or_else(|p| p.into_inner());
            *last = (Some(b.meta.end.clone()), last.1 + b.num_rows() as u64);
        }
        emit(ctx, rt, item)
    }
}

/// Why a row was not turned into a row of the batch.
enum RowProblem {
    /// Broken (wrong width, bad value): rejected, the `on_error` policy applies.
    Reject(String),
    /// Does not fit the schema under `discard_rows`: counted as skipped.
    Discard,
}

impl CsvSource {
    /// Builds the source; `base_dir` anchors a relative `path` (the pipeline file's folder).
    pub fn new(config: CsvSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        config.validate()?;
        let (files, stream) = FileSet::for_source(
            base_dir,
            &config.path,
            config.compression,
            config.s3.as_ref(),
            config.identify_by,
            config.stream.as_ref(),
        )?;
        let nulls = config
            .null_values
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        Ok(CsvSource {
            empty_is_null: config.null_values.iter().any(|n| n.is_empty()),
            encoding: config.text_encoding()?,
            config,
            files,
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

    /// The file's text as UTF-8 from (decoded) byte `offset`: decompressed, re-encoded when
    /// the file is not UTF-8. At offset 0 a UTF-8 byte-order mark is skipped; the second value
    /// says how many bytes that was (positions count them).
    fn input(
        &self,
        file: &InputFile,
        offset: u64,
    ) -> Result<(Box<dyn Read + Send>, u64), CsvError> {
        match self.encoding {
            None => {
                let input = file.open_at(offset)?;
                if offset == 0 {
                    return strip_bom(input)
                        .map_err(|source| FileError::Io {
                            path: file.path.clone(),
                            source,
                        })
                        .map_err(CsvError::from);
                }
                Ok((input, 0))
            }
            Some(encoding) => {
                let decoded = encoding_rs_io::DecodeReaderBytesBuilder::new()
                    .encoding(Some(encoding))
                    .build(file.open()?);
                let mut input: Box<dyn Read + Send> = Box::new(decoded);
                let skipped = std::io::copy(&mut (&mut input).take(offset), &mut std::io::sink())
                    .map_err(|source| FileError::Io {
                    path: file.path.clone(),
                    source,
                })?;
                if skipped < offset {
                    return Err(FileError::Truncated {
                        path: file.path.clone(),
                        len: skipped,
                        offset,
                    }
                    .into());
                }
                Ok((input, 0))
            }
        }
    }

    fn read_err<'p>(&self, path: &'p Path, line: u64) -> impl Fn(csv::Error) -> CsvError + 'p {
        move |source| CsvError::Read {
            path: path.to_path_buf(),
            line,
            source,
        }
    }

    /// Reads a file's header (or first record, for its width) and infers column types from up
    /// to `infer_rows` records; `columns:` overrides apply.
    pub(super) fn head_and_schema(
        &self,
        file: &InputFile,
        known: Option<&Schema>,
    ) -> Result<(Head, Schema), CsvError> {
        let path = file.path.as_path();
        let (input, bom) = self.input(file, 0)?;
        let mut rdr = self.reader(input);
        let mut first = csv::ByteRecord::new();
        let has_first = rdr
            .read_byte_record(&mut first)
            .map_err(self.read_err(path, 1))?;
        let (names, data_start, mut pending) = if !has_first {
            (
                Vec::new(),
                CsvPosition {
                    offset: bom,
                    line: 1,
                },
                None,
            )
        } else if self.config.has_header {
            let p = rdr.position();
            (
                column_names(Some(&first), first.len()),
                CsvPosition {
                    offset: bom + p.byte(),
                    line: p.line(),
                },
                None,
            )
        } else {
            (
                column_names(None, first.len()),
                CsvPosition {
                    offset: bom,
                    line: 1,
                },
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
                        .map_err(self.read_err(path, line))?
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
                // Another file of the stream may have it; a name no file has is a mistake.
                if known.is_some_and(|k| k.field_with_name(column).is_ok()) {
                    continue;
                }
                return Err(CsvError::UnknownColumn {
                    path: file.path.clone(),
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

    /// Reads every record of `input` (which starts at `start` of `r.file`), handing rejected
    /// records and cut batches to `out` in order. `out` returns `false` to stop early.
    pub(super) fn assemble<R: std::io::Read>(
        &self,
        r: &Reading<'_>,
        input: R,
        start: CsvPosition,
        mut out: impl FnMut(Item) -> bool,
    ) -> Result<(), CsvError> {
        let schema = &r.schema;
        let path = r.file.path.as_path();
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
        let mut discarded = 0u64;
        let stream: Arc<str> = self.stream.as_str().into();

        loop {
            let before = at(&rdr);
            let more = rdr
                .read_byte_record(&mut record)
                .map_err(self.read_err(path, before.line))?;
            if more {
                let line = record
                    .position()
                    .map_or(before.line, |p| start.line + p.line() - 1);
                // Typed parsing on the bytes; text columns are checked for UTF-8 one by one.
                let parsed = self.parse_row(&record, &types, r, &mut cells);
                if parsed.is_ok() {
                    columns.append(&record, &cells, &r.layout);
                }
                match parsed {
                    Ok(()) => {}
                    Err(RowProblem::Discard) => discarded += 1,
                    Err(RowProblem::Reject(message)) => {
                        let rejected = Rejected {
                            stream: self.stream.clone(),
                            position: Some(r.file.position(before)),
                            message: format!("line {line}: {message}"),
                            location: Some(format!("{}:{line}", path.display())),
                            raw: self.raw_record(&record),
                            headers: Vec::new(),
                        };
                        if !out(Item::Rejected(rejected)) {
                            return Ok(());
                        }
                    }
                }
            }
            let end = at(&rdr);
            if columns.len() >= batch_size || (!more && (columns.len() > 0 || end != batch_start)) {
                let data = RecordBatch::try_new(schema.clone(), columns.finish())
                    .expect("columns are built from the schema");
                let mut meta = BatchMeta::new(
                    stream.clone(),
                    r.file.position(batch_start),
                    r.file.position(end),
                    end.offset - batch_start.offset,
                );
                meta.discarded = std::mem::take(&mut discarded);
                if !out(Item::Batch(Batch { data, meta })) {
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

    /// The blocking read of one file: parallel over chunks when the format allows, else one
    /// stream.
    fn read_file(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        r: &Reading<'_>,
        start: CsvPosition,
    ) -> Result<(), CsvError> {
        let (input, bom) = self.input(r.file, start.offset)?;
        let start = CsvPosition {
            offset: start.offset + bom,
            ..start
        };
        // Parsing and Parquet encoding share the CPUs: by default half of them parse (on two
        // cores one parser thread keeps the encoder busy; more threads only cost memory).
        let threads = self.config.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            |n| n.get(),
        );
        if self.splittable() && threads > 1 {
            return super::parallel::read(self, ctx, rt, r, input, start, threads);
        }
        self.assemble(r, input, start, |item| r.emit(ctx, rt, item))
    }

    /// Reads the planned files in order: each with the stream's schema fitted to its header
    /// under the schema policy, then a last empty batch that completes it in the ledger.
    fn read_all(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        planned: Vec<Planned<CsvPosition>>,
        current: &mut Option<Schema>,
    ) -> Result<Vec<FileRecord>, CsvError> {
        let policy = ctx.schema_policy();
        let mut completed = Vec::new();
        for Planned { file, resume } in planned {
            let (head, inferred) = self.head_and_schema(&file, current.as_ref())?;
            if head.names.is_empty() && resume.is_none() {
                tracing::info!(file = %file.path.display(), "empty file");
            }
            let fitted = if head.names.is_empty() {
                // An empty file has no columns: nothing to fit.
                tributary_core::schema::reconcile(current.as_ref(), &Schema::empty(), policy)
            } else {
                tributary_core::schema::reconcile(current.as_ref(), &inferred, policy)
            };
            if fitted.changed() {
                tracing::info!(file = %file.path.display(), stream = %self.stream, change = %fitted.describe(), "schema evolved");
            }
            if !fitted.unknown.is_empty() {
                tracing::warn!(file = %file.path.display(), columns = %fitted.unknown.join(", "), policy = policy.as_str(), "columns not in the stream's schema");
            }
            let start = resume.unwrap_or(head.data_start);
            tracing::info!(file = %file.path.display(), offset = start.offset, line = start.line, "reading CSV");
            let schema = Arc::new(fitted.schema);
            let reading = Reading {
                file: &file,
                layout: Layout::new(&head.names, &schema, policy),
                schema: schema.clone(),
                last_end: std::sync::Mutex::new((None, 0)),
            };
            self.read_file(ctx, rt, &reading, start)?;
            if ctx.is_stopping() {
                return Ok(completed);
            }
            let (end, rows) = reading
                .last_end
                .into_inner()
                .unwrap_or_else(|p| p.into_inner());
            let end = end.unwrap_or_else(|| file.position(start));
            let done = completion(&self.stream, &file, &schema, end);
            completed.extend(done.meta.completes.iter().cloned());
            if !emit(ctx, rt, Item::Batch(done)) {
                return Ok(completed);
            }
            // A file without rows (empty, header only, all rejected) says nothing about types:
            // its all-string guesses must not widen the next file's columns.
            if rows > 0 {
                *current = Some(schema.as_ref().clone());
            }
        }
        Ok(completed)
    }

    /// Parses one record into `cells`, or says what is wrong with it. Fields of text columns
    /// must be UTF-8; other fields are parsed from their bytes (a field that parses as a
    /// number, boolean or date is ASCII).
    fn parse_row(
        &self,
        record: &csv::ByteRecord,
        types: &[ColumnType],
        r: &Reading<'_>,
        cells: &mut [Option<Cell>],
    ) -> Result<(), RowProblem> {
        let layout = &r.layout;
        if record.len() != layout.width {
            return Err(RowProblem::Reject(format!(
                "expected {} fields, found {}",
                layout.width,
                record.len()
            )));
        }
        let discard = layout.policy == SchemaPolicy::DiscardRows;
        for (i, ty) in types.iter().enumerate() {
            let bytes = match layout.field(record, i) {
                Some(bytes) if !self.is_null(bytes) => bytes,
                _ => {
                    cells[i] = None;
                    continue;
                }
            };
            let cell = match ty {
                // ASCII first: inlined, and most text is.
                ColumnType::String if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() => {
                    Some(Cell::Str)
                }
                ColumnType::String => {
                    return Err(RowProblem::Reject(not_utf8(r.schema.field(i).name())))
                }
                _ => parse_field(*ty, bytes),
            };
            match cell {
                Some(cell) => cells[i] = Some(cell),
                None if discard => return Err(RowProblem::Discard),
                None => {
                    let Ok(text) = std::str::from_utf8(bytes) else {
                        return Err(RowProblem::Reject(not_utf8(r.schema.field(i).name())));
                    };
                    return Err(RowProblem::Reject(format!(
                        "field `{}`: expected {}, found {:?}",
                        r.schema.field(i).name(),
                        ty.name(),
                        truncate(text, 80)
                    )));
                }
            }
        }
        if matches!(
            layout.policy,
            SchemaPolicy::Freeze | SchemaPolicy::DiscardRows
        ) {
            for (i, name) in &layout.extra {
                let value = record.get(*i).unwrap_or_default();
                if self.is_null(value) {
                    continue;
                }
                if discard {
                    return Err(RowProblem::Discard);
                }
                return Err(RowProblem::Reject(format!(
                    "field `{name}` is not in the stream's schema (schema_policy: freeze), found {:?}",
                    truncate(&String::from_utf8_lossy(value), 80)
                )));
            }
        }
        Ok(())
    }
}

/// Drops a UTF-8 byte-order mark at the start of `input`; says how many bytes it dropped.
fn strip_bom(mut input: Box<dyn Read + Send>) -> std::io::Result<(Box<dyn Read + Send>, u64)> {
    let mut head = Vec::with_capacity(3);
    (&mut input).take(3).read_to_end(&mut head)?;
    if head == [0xEF, 0xBB, 0xBF] {
        return Ok((input, 3));
    }
    Ok((Box::new(std::io::Cursor::new(head).chain(input)), 0))
}

/// A field that is not valid UTF-8, with what to do about it.
fn not_utf8(name: &str) -> String {
    format!(
        "field `{name}` is not valid UTF-8 (set `encoding:` if the file is Latin-1 or another \
         encoding)"
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One Arrow builder per column. Text is gathered as bytes (checked field by field in
/// `parse_row`) and checked again in bulk, one call per batch, when the array is built.
enum Column {
    Str(BinaryBuilder),
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
                    Column::Str(BinaryBuilder::with_capacity(capacity, capacity * 16))
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

    /// Appends a row that [`CsvSource::parse_row`] accepted (its text fields are UTF-8).
    fn append(&mut self, record: &csv::ByteRecord, cells: &[Option<Cell>], layout: &Layout) {
        for (i, (column, cell)) in self.columns.iter_mut().zip(cells).enumerate() {
            match (column, cell) {
                (Column::Str(b), Some(Cell::Str)) => {
                    b.append_value(layout.field(record, i).unwrap_or_default())
                }
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
                    Column::Str(b) => Arc::new(
                        StringArray::try_from_binary(b.finish())
                            .expect("parse_row lets only UTF-8 text through"),
                    ),
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
pub(crate) fn emit(ctx: &SourceContext, rt: &tokio::runtime::Handle, item: Item) -> bool {
    let sent = match item {
        Item::Rejected(r) => rt.block_on(ctx.reject(r)).is_ok(),
        Item::Batch(b) => rt.block_on(ctx.emit(b)).is_ok(),
    };
    sent && !ctx.is_stopping()
}

impl CsvSource {
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

    /// The files of the stream, or an error when there are none at all.
    fn list(&self) -> Result<Vec<InputFile>, CsvError> {
        Ok(self.files.list_for_run(self.config.follow.is_some())?)
    }

    fn clone_for_thread(&self) -> CsvSource {
        CsvSource {
            config: self.config.clone(),
            files: self.files.clone(),
            stream: self.stream.clone(),
            nulls: self.nulls.clone(),
            empty_is_null: self.empty_is_null,
            encoding: self.encoding,
        }
    }
}

#[async_trait::async_trait]
impl Source for CsvSource {
    fn describe(&self) -> String {
        format!("csv {}", self.files.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        for file in self.list()? {
            file.open()?;
        }
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        const MAX_FILES: usize = 20;
        let files = self.list()?;
        let mut schema: Option<Schema> = None;
        for file in files.iter().take(MAX_FILES) {
            let (head, inferred) = self.head_and_schema(file, schema.as_ref())?;
            if head.names.is_empty() {
                continue;
            }
            schema = Some(
                tributary_core::schema::reconcile(schema.as_ref(), &inferred, SchemaPolicy::Evolve)
                    .schema,
            );
        }
        let bytes: u64 = files.iter().map(|f| f.record.size).sum();
        let sample = match self.config.infer_rows {
            0 => "all rows".to_string(),
            n => format!("the first {n} rows"),
        };
        let what = match files.len() {
            1 => format!("{} ({bytes} bytes)", files[0].path.display()),
            n if n <= MAX_FILES => format!("{n} files, {bytes} bytes"),
            n => format!("{n} files, {bytes} bytes; schema from the first {MAX_FILES}"),
        };
        Ok(vec![StreamInfo {
            name: self.stream.clone(),
            schema: Some(Arc::new(schema.unwrap_or_else(Schema::empty))),
            detail: Some(format!("{what}, types inferred from {sample} of each file")),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let current = ctx.stored_schema(&self.stream)?;
        if let Some(f) = current.as_ref().and_then(|s| {
            s.fields()
                .iter()
                .find(|f| ColumnType::from_data_type(f.data_type()).is_none())
                .cloned()
        }) {
            return Err(CsvError::from(FileError::BadState {
                stream: self.stream.clone(),
                position: "(schema)".into(),
                message: format!(
                    "stored column `{}` has type {}, which CSV does not produce",
                    f.name(),
                    f.data_type()
                ),
            })
            .into());
        }
        let rt = tokio::runtime::Handle::current();
        let this = self.clone_for_thread();
        tokio::task::spawn_blocking(move || {
            let mut current = current;
            crate::input::run_files::<CsvPosition>(
                &ctx,
                &rt,
                &this.stream,
                this.config.follow.as_ref(),
                || Ok(this.list()?),
                |planned| {
                    announce(&ctx, &planned, |p| p.offset, this.encoding.is_none());
                    Ok(this.read_all(&ctx, &rt, planned, &mut current)?)
                },
            )
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("CSV reader thread: {e}")))?
    }
}
