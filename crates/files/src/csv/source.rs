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

    fn field<'r>(&self, record: &'r impl Fields, column: usize) -> Option<&'r [u8]> {
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
        let path = r.file.path.as_path();
        let mut rdr = self.reader(input);
        let at = |rdr: &csv::Reader<R>| {
            let p = rdr.position();
            CsvPosition {
                offset: start.offset + p.byte(),
                line: start.line + p.line() - 1,
            }
        };
        let mut asm = Assembler::new(self, r, start, self.config.batch_size.get());
        let mut record = csv::ByteRecord::new();
        loop {
            let before = at(&rdr);
            let more = rdr
                .read_byte_record(&mut record)
                .map_err(self.read_err(path, before.line))?;
            if more {
                let line = record
                    .position()
                    .map_or(before.line, |p| start.line + p.line() - 1);
                if !asm.row(&record, before, line, &mut out) {
                    return Ok(());
                }
            }
            if !asm.cut(at(&rdr), !more, &mut out) || !more {
                return Ok(());
            }
        }
    }

    /// [`Self::assemble`] for a chunk of whole records in memory, faster. Exported data
    /// mostly has records without quotes: such a record is a line, its fields what lies
    /// between delimiters, found by this function itself (`field_starts`), with no copy into
    /// a `ByteRecord`. A record that has a quote byte before its line ends is split by
    /// [`Quoted::split`] when its quoting is regular, else by `csv_core`'s state machine (the
    /// CSV reader's own), one record at a time. Chunks with carriage returns, escapes or
    /// comments take [`Self::assemble`]. Both give the same rows,
    /// dead letters and positions (test `chunks_read_as_the_csv_reader_reads_them`).
    /// `line_breaks`: how many `\n` bytes the chunk holds (the splitter has counted them).
    pub(super) fn assemble_chunk(
        &self,
        r: &Reading<'_>,
        bytes: &[u8],
        start: CsvPosition,
        line_breaks: usize,
        mut out: impl FnMut(Item) -> bool,
    ) -> Result<(), CsvError> {
        if !self.splittable() || memchr::memchr(b'\r', bytes).is_some() {
            return self.assemble(r, bytes, start, out);
        }
        let (delimiter, quote) = (self.delimiter(), self.quote());
        let mut core = csv_core::ReaderBuilder::new()
            .delimiter(delimiter)
            .quote(quote)
            .double_quote(true)
            .build();
        // Small buffers, grown to fit by the first records (the tests go through that).
        let mut quoted = Quoted {
            text: vec![0; 16],
            ends: vec![0; 1],
            split_text: Vec::new(),
            split_ends: Vec::new(),
        };
        // A chunk holds fewer records than a batch: room for its lines, not for a batch (the
        // arrays keep their capacity while in flight).
        let capacity = (line_breaks + 1).min(self.config.batch_size.get());
        let mut asm = Assembler::new(self, r, start, capacity);
        let mut starts = Vec::with_capacity(r.layout.width + 1);
        let (mut pos, mut line) = (0usize, start.line);
        // The position after the last record, as the CSV reader reports a record's position
        // and line: an empty line is no record, and is skipped as part of the next one.
        let mut before = start;
        while pos < bytes.len() {
            if bytes[pos] == b'\n' {
                pos += 1;
                line += 1;
                continue;
            }
            let rest = &bytes[pos..];
            let accepted = match memchr::memchr2(b'\n', quote, rest) {
                Some(i) if rest[i] == quote => {
                    let (used, fields) = match quoted.split(rest, delimiter, quote) {
                        Some(used) => (used, quoted.split_fields()),
                        None => quoted.read(&mut core, rest),
                    };
                    pos += used;
                    line += memchr::memchr_iter(b'\n', &rest[..used]).count() as u64;
                    asm.row(&fields, before, before.line, &mut out)
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    field_starts(&rest[..end], delimiter, &mut starts);
                    let fields = Line {
                        bytes: &rest[..end],
                        starts: &starts,
                    };
                    pos += (end + 1).min(rest.len());
                    line += u64::from(found.is_some());
                    asm.row(&fields, before, before.line, &mut out)
                }
            };
            let after = CsvPosition {
                offset: start.offset + pos as u64,
                line,
            };
            if !accepted || !asm.cut(after, false, &mut out) {
                return Ok(());
            }
            before = after;
        }
        let end = CsvPosition {
            offset: start.offset + bytes.len() as u64,
            line,
        };
        asm.cut(end, true, &mut out);
        Ok(())
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
        // Parsing and Parquet encoding share the CPUs: by default half of them parse. On two
        // cores two parsers were faster on B1 (0.85× DuckDB's wall against 0.88×) but their
        // peak memory grew with the input (+30 % for 4× the rows), so one it is.
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

    /// Parses one record into `values`, or says what is wrong with it. Fields of text columns
    /// must be UTF-8; other fields are parsed from their bytes (a field that parses as a
    /// number, boolean or date is ASCII).
    fn parse_row(
        &self,
        record: &impl Fields,
        types: &[ColumnType],
        r: &Reading<'_>,
        values: &mut Values,
    ) -> Result<(), RowProblem> {
        let layout = &r.layout;
        if record.count() != layout.width {
            return Err(RowProblem::Reject(format!(
                "expected {} fields, found {}",
                layout.width,
                record.count()
            )));
        }
        let discard = layout.policy == SchemaPolicy::DiscardRows;
        for (i, ty) in types.iter().enumerate() {
            let bytes = match layout.field(record, i) {
                Some(bytes) if !self.is_null(bytes) => bytes,
                _ => {
                    values.present[i] = false;
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
                Some(cell) => {
                    values.bits[i] = cell.bits();
                    values.present[i] = true;
                }
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

/// The fields of one record, however it was split.
pub(super) trait Fields {
    /// How many fields the record has.
    fn count(&self) -> usize;
    /// Field `i`'s bytes (unquoted).
    fn get(&self, i: usize) -> Option<&[u8]>;
    /// The record as a line of the file, for a dead letter.
    fn raw(&self, src: &CsvSource) -> Vec<u8>;
}

impl Fields for csv::ByteRecord {
    fn count(&self) -> usize {
        self.len()
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        csv::ByteRecord::get(self, i)
    }
    fn raw(&self, src: &CsvSource) -> Vec<u8> {
        src.raw_record(self)
    }
}

/// A record of quote-free input: its bytes, and where each field starts, with one more entry
/// one byte past the end (so field `i` is `bytes[starts[i]..starts[i + 1] - 1]`).
struct Line<'a> {
    bytes: &'a [u8],
    starts: &'a [usize],
}

impl Fields for Line<'_> {
    fn count(&self) -> usize {
        self.starts.len() - 1
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.starts.get(i + 1)?;
        Some(&self.bytes[self.starts[i]..end - 1])
    }
    fn raw(&self, _: &CsvSource) -> Vec<u8> {
        // Without quotes, delimiters inside fields or line breaks, the record is its line.
        self.bytes.to_vec()
    }
}

/// Buffers for the records of the fast path that have quotes: split by [`Quoted::split`]
/// when their quoting is regular, else read by `csv_core`.
struct Quoted {
    /// The unquoted text of the fields, one after the other (`csv_core`'s output).
    text: Vec<u8>,
    /// Where each field ends in `text`.
    ends: Vec<usize>,
    /// The same for [`Quoted::split`], which appends rather than fills.
    split_text: Vec<u8>,
    split_ends: Vec<usize>,
}

impl Quoted {
    /// Splits the record at the start of `input` when each of its fields is either unquoted
    /// and free of quotes, or quoted from its first byte to a closing quote followed by a
    /// delimiter, a line break or the end (with `""` for a quote inside): what regular CSV
    /// writers produce, and read here exactly as `csv_core` reads it. Says how many bytes the
    /// record took, terminator included; `None` (with nothing decided) for any other shape,
    /// which `csv_core` then reads. Its fields are in [`Quoted::split_fields`].
    fn split(&mut self, input: &[u8], delimiter: u8, quote: u8) -> Option<usize> {
        self.split_text.clear();
        self.split_ends.clear();
        let mut i = 0;
        loop {
            if input.get(i) == Some(&quote) {
                i += 1;
                loop {
                    let j = i + memchr::memchr(quote, &input[i..])?;
                    self.split_text.extend_from_slice(&input[i..j]);
                    match input.get(j + 1) {
                        Some(&c) if c == quote => {
                            self.split_text.push(quote);
                            i = j + 2;
                        }
                        Some(&c) if c == delimiter => {
                            self.split_ends.push(self.split_text.len());
                            i = j + 2;
                            break;
                        }
                        Some(b'\n') => {
                            self.split_ends.push(self.split_text.len());
                            return Some(j + 2);
                        }
                        None => {
                            self.split_ends.push(self.split_text.len());
                            return Some(j + 1);
                        }
                        Some(_) => return None,
                    }
                }
            } else {
                let rest = &input[i..];
                match memchr::memchr3(delimiter, b'\n', quote, rest) {
                    Some(k) if rest[k] == quote => return None,
                    Some(k) => {
                        self.split_text.extend_from_slice(&rest[..k]);
                        self.split_ends.push(self.split_text.len());
                        if rest[k] == b'\n' {
                            return Some(i + k + 1);
                        }
                        i += k + 1;
                    }
                    None => {
                        self.split_text.extend_from_slice(rest);
                        self.split_ends.push(self.split_text.len());
                        return Some(input.len());
                    }
                }
            }
        }
    }

    /// The fields [`Quoted::split`] found.
    fn split_fields(&self) -> Unquoted<'_> {
        Unquoted {
            text: &self.split_text,
            ends: &self.split_ends,
        }
    }

    /// Reads the record at the start of `input` (a record starts there, and the input holds
    /// it whole); says how many bytes it took, terminator included, and its fields.
    fn read(&mut self, core: &mut csv_core::Reader, input: &[u8]) -> (usize, Unquoted<'_>) {
        use csv_core::ReadRecordResult as R;
        let (mut used, mut written, mut fields) = (0, 0, 0);
        loop {
            let (result, i, o, e) = core.read_record(
                &input[used..],
                &mut self.text[written..],
                &mut self.ends[fields..],
            );
            used += i;
            written += o;
            fields += e;
            match result {
                // At the end of `input` the record ends with it: an empty read says so.
                R::InputEmpty => {}
                R::OutputFull => self.text.resize(self.text.len() * 2, 0),
                R::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                R::Record | R::End => break,
            }
        }
        (
            used,
            Unquoted {
                text: &self.text[..written],
                ends: &self.ends[..fields],
            },
        )
    }
}

/// A record `csv_core` read: its unquoted text and where each field ends.
struct Unquoted<'a> {
    text: &'a [u8],
    ends: &'a [usize],
}

impl Fields for Unquoted<'_> {
    fn count(&self) -> usize {
        self.ends.len()
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }
    fn raw(&self, src: &CsvSource) -> Vec<u8> {
        let fields: Vec<&[u8]> = (0..self.count()).filter_map(|i| self.get(i)).collect();
        src.raw_record(&csv::ByteRecord::from(fields))
    }
}

/// Fills `starts` with where each of `line`'s fields starts, plus one past the end. The
/// delimiters are found eight bytes at a time: the word is XORed with the delimiter repeated,
/// and the high bit of each zero byte of the result marks a delimiter (exactly: the low seven
/// bits are added with no carry between bytes). Fields are ~10 bytes, too short for `memchr`
/// to pay for its call each.
fn field_starts(line: &[u8], delimiter: u8, starts: &mut Vec<usize>) {
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let pattern = u64::from_le_bytes([delimiter; 8]);
    starts.clear();
    starts.push(0);
    let mut words = line.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes")) ^ pattern;
        let mut zeros = !(((x & LOW) + LOW) | x | LOW);
        while zeros != 0 {
            starts.push(base + (zeros.trailing_zeros() / 8) as usize + 1);
            zeros &= zeros - 1;
        }
        base += 8;
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        if b == delimiter {
            starts.push(base + i + 1);
        }
    }
    starts.push(line.len() + 1);
}

/// Turns records into batches and dead letters, however the records were split: the rows of
/// one chunk or stream, the batch being filled, and where it started.
struct Assembler<'s, 'r, 'f> {
    src: &'s CsvSource,
    r: &'r Reading<'f>,
    types: Vec<ColumnType>,
    columns: Columns,
    values: Values,
    batch_start: CsvPosition,
    discarded: u64,
    stream: Arc<str>,
}

impl<'s, 'r, 'f> Assembler<'s, 'r, 'f> {
    /// Starts at `start`, with builders sized for `capacity` rows.
    fn new(src: &'s CsvSource, r: &'r Reading<'f>, start: CsvPosition, capacity: usize) -> Self {
        let types: Vec<ColumnType> = r
            .schema
            .fields()
            .iter()
            .map(|f| ColumnType::from_data_type(f.data_type()).unwrap_or(ColumnType::String))
            .collect();
        Assembler {
            columns: Columns::new(&types, capacity),
            values: Values {
                bits: vec![0; types.len()],
                present: vec![false; types.len()],
            },
            types,
            src,
            r,
            batch_start: start,
            discarded: 0,
            stream: src.stream.as_str().into(),
        }
    }

    /// Adds one record, which starts at `before` on `line`: a row, a discard or a dead
    /// letter. `false` when `out` says stop.
    fn row(
        &mut self,
        record: &impl Fields,
        before: CsvPosition,
        line: u64,
        out: &mut impl FnMut(Item) -> bool,
    ) -> bool {
        // Typed parsing on the bytes; text columns are checked for UTF-8 one by one.
        match self
            .src
            .parse_row(record, &self.types, self.r, &mut self.values)
        {
            Ok(()) => {
                self.columns.append(record, &self.values, &self.r.layout);
                true
            }
            Err(RowProblem::Discard) => {
                self.discarded += 1;
                true
            }
            Err(RowProblem::Reject(message)) => {
                let path = self.r.file.path.as_path();
                out(Item::Rejected(Rejected {
                    stream: self.src.stream.clone(),
                    position: Some(self.r.file.position(before)),
                    message: format!("line {line}: {message}"),
                    location: Some(format!("{}:{line}", path.display())),
                    raw: record.raw(self.src),
                    headers: Vec::new(),
                }))
            }
        }
    }

    /// Hands over the batch ending at `end` when it is full, or at the `last` record when it
    /// has rows or covers any bytes. `false` when `out` says stop.
    fn cut(&mut self, end: CsvPosition, last: bool, out: &mut impl FnMut(Item) -> bool) -> bool {
        let full = self.columns.len() >= self.src.config.batch_size.get();
        if !(full || (last && (self.columns.len() > 0 || end != self.batch_start))) {
            return true;
        }
        let data = RecordBatch::try_new(self.r.schema.clone(), self.columns.finish())
            .expect("columns are built from the schema");
        let mut meta = BatchMeta::new(
            self.stream.clone(),
            self.r.file.position(self.batch_start),
            self.r.file.position(end),
            end.offset - self.batch_start.offset,
        );
        meta.discarded = std::mem::take(&mut self.discarded);
        self.batch_start = end;
        out(Item::Batch(Batch { data, meta }))
    }
}

/// One record's parsed values, column by column: each as the bits of its Arrow value
/// ([`Cell::bits`]), with whether it is there (not null). Whole words, not an enum per
/// cell: writing an enum's tag and value apart and reading them back as one costs a
/// store-forwarding stall per field.
struct Values {
    bits: Vec<u64>,
    present: Vec<bool>,
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
    fn append(&mut self, record: &impl Fields, values: &Values, layout: &Layout) {
        for (i, column) in self.columns.iter_mut().enumerate() {
            let (bits, present) = (values.bits[i], values.present[i]);
            if !present {
                match column {
                    Column::Str(b) => b.append_null(),
                    Column::I64(b) => b.append_null(),
                    Column::F64(b) => b.append_null(),
                    Column::Bool(b) => b.append_null(),
                    Column::Date(b) => b.append_null(),
                    Column::Ts(b) => b.append_null(),
                }
                continue;
            }
            match column {
                Column::Str(b) => b.append_value(layout.field(record, i).unwrap_or_default()),
                Column::I64(b) => b.append_value(bits as i64),
                Column::F64(b) => b.append_value(f64::from_bits(bits)),
                Column::Bool(b) => b.append_value(bits != 0),
                Column::Date(b) => b.append_value(bits as i32),
                Column::Ts(b) => b.append_value(bits as i64),
            }
        }
        self.rows += 1;
    }

    /// The batch so far, as arrays. The builders start the next batch with room for as
    /// many rows and as much text as this one had: a finished builder is left with no
    /// capacity, and growing it again by doubling costs a copy and fresh pages each time.
    fn finish(&mut self) -> Vec<ArrayRef> {
        let rows = std::mem::take(&mut self.rows).max(1);
        self.columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Str(b) => {
                        let text = StringArray::try_from_binary(b.finish())
                            .expect("parse_row lets only UTF-8 text through");
                        let bytes = text.values().len();
                        *b = BinaryBuilder::with_capacity(rows, bytes + bytes / 8);
                        Arc::new(text)
                    }
                    Column::I64(b) => Arc::new(refill(b, rows)),
                    Column::F64(b) => Arc::new(refill(b, rows)),
                    Column::Bool(b) => {
                        let done = b.finish();
                        *b = BooleanBuilder::with_capacity(rows);
                        Arc::new(done)
                    }
                    Column::Date(b) => Arc::new(refill(b, rows)),
                    Column::Ts(b) => Arc::new(refill(b, rows)),
                }
            })
            .collect()
    }
}

/// Finishes a primitive builder and leaves it with room for `rows`.
fn refill<T: arrow_array::ArrowPrimitiveType>(
    b: &mut arrow_array::builder::PrimitiveBuilder<T>,
    rows: usize,
) -> arrow_array::PrimitiveArray<T> {
    let done = b.finish();
    let data_type = arrow_array::Array::data_type(&done).clone();
    *b = arrow_array::builder::PrimitiveBuilder::<T>::with_capacity(rows).with_data_type(data_type);
    done
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    /// Everything an item says, as text: batches with their rows and positions, dead letters
    /// with their messages, positions and raw bytes.
    fn describe(item: &Item) -> String {
        match item {
            Item::Batch(b) => format!(
                "batch {} → {} ({} bytes, {} discarded)\n{:?}",
                b.meta.start.as_json(),
                b.meta.end.as_json(),
                b.meta.source_bytes,
                b.meta.discarded,
                b.data
            ),
            Item::Rejected(r) => format!(
                "rejected at {:?}: {} [{:?}] {:?}",
                r.position.as_ref().map(Position::as_json),
                r.message,
                r.location,
                String::from_utf8_lossy(&r.raw)
            ),
        }
    }

    /// A small deterministic generator (xorshift), so failures are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Text with the troubles real files have: empty fields, values of the wrong type, too
    /// few and too many fields, blank lines, bytes that are not UTF-8, fields that straddle an
    /// eight-byte word, quoted fields (with delimiters, doubled quotes, line breaks, quotes
    /// where they do not belong, one left open at the end), and sometimes no final line break.
    fn messy_csv(rng: &mut Rng, rows: usize) -> Vec<u8> {
        let ids: &[&[u8]] = &[
            b"1",
            b"-42",
            b"9223372036854775807",
            b"",
            b"x7",
            b"12345678901",
        ];
        let amounts: &[&[u8]] = &[b"1.5", b"-0", b"1e3", b"", b"NaN", b"abc", b"42"];
        let flags: &[&[u8]] = &[b"true", b"FALSE", b"", b"yes"];
        let times: &[&[u8]] = &[
            b"2023-01-01T00:00:05Z",
            b"2023-01-01 11:37:39",
            b"",
            b"2023-13-01T00:00:00Z",
            b"2024-02-29T23:59:59.123+02:00",
        ];
        let texts: &[&[u8]] = &[
            b"plain",
            b"",
            b"caf\xc3\xa9 au lait",
            b"bad \xff byte",
            b"  spaced  ",
            b"\"a, b\"",
            b"\"say \"\"hi\"\"\"",
            b"\"two\nlines\"",
            b"\"\"",
            b"5\" screen",
            b"\"closed\"then",
            b"\"12\"",
            b"\"a long quoted field, longer than the first buffer\"",
        ];
        let mut out = Vec::new();
        for _ in 0..rows {
            if rng.next(12) == 0 {
                out.push(b'\n');
                continue;
            }
            let mut fields: Vec<&[u8]> = vec![
                ids[rng.next(ids.len())],
                amounts[rng.next(amounts.len())],
                flags[rng.next(flags.len())],
                times[rng.next(times.len())],
                texts[rng.next(texts.len())],
                texts[rng.next(texts.len())],
            ];
            match rng.next(15) {
                0 => {
                    fields.pop();
                }
                1 => fields.push(b"surplus"),
                _ => {}
            }
            out.extend_from_slice(&fields.join(&b','));
            out.push(b'\n');
        }
        match rng.next(4) {
            0 => {
                out.pop();
            }
            1 => out.extend_from_slice(b"9,1,true,,\"left open"),
            _ => {}
        }
        out
    }

    #[test]
    fn chunks_read_as_the_csv_reader_reads_them() {
        let names: Vec<String> = ["id", "amount", "flag", "at", "note", "extra"]
            .map(String::from)
            .into();
        let schema = Arc::new(super::super::infer::infer_schema(
            &names[..5],
            &[
                ColumnType::Int64,
                ColumnType::Float64,
                ColumnType::Boolean,
                ColumnType::Timestamp,
                ColumnType::String,
            ],
        ));
        let file = InputFile::for_test("/data/in.csv", 0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        for policy in [
            SchemaPolicy::Evolve,
            SchemaPolicy::Freeze,
            SchemaPolicy::DiscardRows,
        ] {
            for batch_size in [1, 3, 1000] {
                let mut config = CsvSourceConfig::new("in.csv");
                config.batch_size = NonZeroUsize::new(batch_size).expect("non-zero");
                let src = CsvSource::new(config, Path::new("/")).expect("valid config");
                let reading = Reading {
                    file: &file,
                    schema: schema.clone(),
                    layout: Layout::new(&names, &schema, policy),
                    last_end: std::sync::Mutex::new((None, 0)),
                };
                for _ in 0..20 {
                    let rows = 1 + rng.next(40);
                    let text = messy_csv(&mut rng, rows);
                    let start = CsvPosition {
                        offset: 100,
                        line: 7,
                    };
                    let (mut by_reader, mut by_lines) = (Vec::new(), Vec::new());
                    src.assemble(&reading, text.as_slice(), start, |item| {
                        by_reader.push(describe(&item));
                        true
                    })
                    .expect("in memory");
                    let line_breaks = memchr::memchr_iter(b'\n', &text).count();
                    src.assemble_chunk(&reading, &text, start, line_breaks, |item| {
                        by_lines.push(describe(&item));
                        true
                    })
                    .expect("in memory");
                    let first_difference = (0..by_reader.len().max(by_lines.len()))
                        .find(|&i| by_reader.get(i) != by_lines.get(i));
                    if let Some(i) = first_difference {
                        panic!(
                            "{policy:?}, batches of {batch_size}: item {i} differs\n\
                             csv reader: {:?}\nquote-free: {:?}\ninput:\n{}",
                            by_reader.get(i),
                            by_lines.get(i),
                            String::from_utf8_lossy(&text)
                        );
                    }
                    compared += by_reader.len();
                }
            }
        }
        assert!(compared > 500, "only {compared} items compared");
    }

    #[test]
    fn fields_are_found_across_word_boundaries() {
        let mut starts = Vec::new();
        for line in [
            &b"a"[..],
            b",",
            b"abcdefg,hijklmn,,opqrstuvwxyz0123,",
            b",,,,,,,,,,,,,,,,,",
            b"\xff\x7f\x80,\xac,",
        ] {
            field_starts(line, b',', &mut starts);
            let split: Vec<&[u8]> = line.split(|b| *b == b',').collect();
            let fields = Line {
                bytes: line,
                starts: &starts,
            };
            let found: Vec<&[u8]> = (0..fields.count())
                .map(|i| fields.get(i).expect("in range"))
                .collect();
            assert_eq!(found, split, "{line:?}");
        }
    }
}
