use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{mpsc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{Classify, ConnectorError, ErrorClass};
use tributary_core::schema::SchemaPolicy;
use tributary_core::{Batch, BatchMeta, Source, SourceContext, StreamInfo};

use crate::input::{FileError, FileSet, InputFile, Planned};
use crate::TextPosition;
use tributary_core::state::FileRecord;
use tributary_formats::json::Inference;

use super::lines::Lines;

/// Configuration of the JSON source (`source: { kind: json, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSourceConfig {
    /// NDJSON or JSON-array files: a file, a folder or a glob (`events/*.ndjson.gz`).
    /// Relative paths start at the pipeline file's folder. Each file is ingested once.
    pub path: VarStr,
    /// Stream name (default: the file name without extension, or the folder's name).
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
    /// Rows read to infer the schema (default 0: every row, so that late type changes widen
    /// instead of being dead-lettered).
    #[serde(default)]
    pub infer_rows: usize,
    /// Field types that override inference, top-level or nested by dots:
    /// `{ zip: string, user.id: int64, ts: timestamp }`. A value that does not convert is
    /// dead-lettered with the reason; a declared field no record has is still a column.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, crate::csv::ColumnType>,
    /// Rows per batch (default 4096).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Threads decoding NDJSON batches (default: the number of CPUs). The file is still
    /// read and emitted in order by one thread.
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero")
}

impl JsonSourceConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        JsonSourceConfig {
            path: VarStr::new(path.into()),
            stream: None,
            s3: None,
            identify_by: crate::input::Identity::Metadata,
            follow: None,
            compression: crate::input::Compression::Auto,
            infer_rows: 0,
            columns: Default::default(),
            batch_size: default_batch_size(),
            threads: None,
        }
    }
}

/// Errors of the JSON source; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Listing, opening, reading or positioning a file failed (shared with the other file
    /// sources).
    #[error(transparent)]
    File(#[from] FileError),
    /// A JSON array file is not a valid array.
    #[error("{path}: not a valid JSON array: {source}")]
    Array {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// No schema could be inferred (no valid object in the sample).
    #[error("{path}: cannot infer a schema: {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl Classify for JsonError {
    fn class(&self) -> ErrorClass {
        match self {
            JsonError::File(e) => e.class(),
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<JsonError> for ConnectorError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::File(e) => e.into(),
            e => ConnectorError::classified(e),
        }
    }
}

/// `schema` with the declared types (`a.b` reaches into structs); declared fields it lacks
/// are added.
fn declare(
    schema: &Schema,
    columns: &std::collections::BTreeMap<String, crate::csv::ColumnType>,
) -> Schema {
    use arrow_schema::{DataType, Field, Fields};
    fn set(fields: &Fields, path: &[&str], to: &DataType) -> Fields {
        let (name, rest) = (path[0], &path[1..]);
        let mut out: Vec<Field> = fields.iter().map(|f| f.as_ref().clone()).collect();
        let slot = match out.iter().position(|f| f.name() == name) {
            Some(i) => i,
            None => {
                let dt = if rest.is_empty() {
                    to.clone()
                } else {
                    DataType::Struct(Fields::empty())
                };
                out.push(Field::new(name, dt, true));
                out.len() - 1
            }
        };
        let field = &out[slot];
        let dt = if rest.is_empty() {
            to.clone()
        } else {
            let inner = match field.data_type() {
                DataType::Struct(f) => f.clone(),
                _ => Fields::empty(),
            };
            DataType::Struct(set(&inner, rest, to))
        };
        out[slot] = field.clone().with_data_type(dt).with_nullable(true);
        out.into()
    }
    let mut fields = schema.fields().clone();
    for (path, ty) in columns {
        let parts: Vec<&str> = path.split('.').collect();
        fields = set(&fields, &parts, &ty.data_type());
    }
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// What a decoder thread made of a batch of records: rows, rejections, discarded count.
type Decoded = (Option<RecordBatch>, Vec<Rejected>, u64);
/// The positions a batch of records starts and ends at.
type Span = (TextPosition, TextPosition);

/// Results of decoder threads, emitted in the order the batches were read.
struct InOrder {
    pending: BTreeMap<u64, (Decoded, Span)>,
    /// The next batch to emit.
    next: u64,
    done: mpsc::Receiver<(u64, Decoded, Span)>,
}

impl InOrder {
    /// Emits every batch that is done and next in order (waiting for none unless `wait`);
    /// `false` when the run is stopping.
    fn deliver(&mut self, emit: &mut impl FnMut(Decoded, Span) -> bool, wait: bool) -> bool {
        while let Ok((seq, decoded, span)) = self.done.try_recv() {
            self.pending.insert(seq, (decoded, span));
        }
        if wait && !self.pending.contains_key(&self.next) {
            match self.done.recv() {
                Ok((seq, decoded, span)) => {
                    self.pending.insert(seq, (decoded, span));
                }
                Err(_) => return false,
            }
        }
        while let Some((decoded, span)) = self.pending.remove(&self.next) {
            if !emit(decoded, span) {
                return false;
            }
            self.next += 1;
        }
        true
    }

    /// Waits until at least the next batch is emitted; `false` when the run is stopping.
    fn deliver_one(&mut self, emit: &mut impl FnMut(Decoded, Span) -> bool) -> bool {
        let before = self.next;
        while self.next == before {
            if !self.deliver(emit, true) {
                return false;
            }
        }
        true
    }
}

/// Ends the line that starts at `*line_start` and has its content up to `end` (the next line
/// starts at `next`; `next > end` when a `\n` ends it): records it unless it is blank, and
/// moves `at` past it.
fn cut(
    buf: &[u8],
    line_start: &mut usize,
    (end, next): (usize, usize),
    records: &mut Vec<Record>,
    at: &mut TextPosition,
) {
    let start = *line_start;
    let content_end = start
        + buf[start..end]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
    if content_end > start {
        records.push(Record {
            at: *at,
            range: start..content_end,
        });
    }
    *at = TextPosition {
        offset: at.offset + (next - start) as u64,
        line: at.line + u64::from(next > end),
    };
    *line_start = next;
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One JSON value to decode, and where it is.
struct Record {
    at: TextPosition,
    range: std::ops::Range<usize>,
}

/// Reads the JSON files of one stream. See the [module docs](super).
pub struct JsonSource {
    config: JsonSourceConfig,
    files: FileSet,
    stream: String,
}

/// One file being read, with the schema fitted to it.
struct Reading<'a> {
    file: &'a InputFile,
    schema: SchemaRef,
    policy: SchemaPolicy,
}

impl JsonSource {
    /// Builds the source; `base_dir` anchors a relative `path`.
    pub fn new(config: JsonSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let (files, stream) = FileSet::for_source(
            base_dir,
            &config.path,
            config.compression,
            config.s3.as_ref(),
            config.identify_by,
            config.stream.as_ref(),
        )?;
        Ok(JsonSource {
            config,
            files,
            stream,
        })
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> JsonError + '_ {
        move |source| {
            JsonError::File(FileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }

    /// The files of the stream, or an error when there are none at all.
    fn list(&self) -> Result<Vec<InputFile>, JsonError> {
        Ok(self.files.list_for_run(self.config.follow.is_some())?)
    }

    /// Whether the file is one JSON array (first non-blank byte is `[`).
    fn is_array(&self, file: &InputFile) -> Result<bool, JsonError> {
        let mut reader = BufReader::new(file.open()?);
        loop {
            let buf = reader.fill_buf().map_err(Self::io(&file.path))?;
            let Some(&first) = buf.iter().find(|b| !b.is_ascii_whitespace()) else {
                if buf.is_empty() {
                    return Ok(false);
                }
                let n = buf.len();
                reader.consume(n);
                continue;
            };
            return Ok(first == b'[');
        }
    }

    fn read_whole(file: &InputFile) -> Result<Vec<u8>, JsonError> {
        let mut bytes = Vec::new();
        file.open()?
            .read_to_end(&mut bytes)
            .map_err(Self::io(&file.path))?;
        Ok(bytes)
    }

    /// Every record of an array file: the element's byte range and line.
    fn array_records(path: &Path, bytes: &[u8]) -> Result<Vec<Record>, JsonError> {
        let elements: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(bytes).map_err(|source| JsonError::Array {
                path: path.to_path_buf(),
                source,
            })?;
        let base = bytes.as_ptr() as usize;
        let mut line = 1u64;
        let mut counted = 0usize;
        let mut out = Vec::with_capacity(elements.len());
        for e in elements {
            let start = e.get().as_ptr() as usize - base;
            line += memchr::memchr_iter(b'\n', &bytes[counted..start]).count() as u64;
            counted = start;
            out.push(Record {
                at: TextPosition {
                    offset: start as u64,
                    line,
                },
                range: start..start + e.get().len(),
            });
        }
        Ok(out)
    }

    /// Infers a file's schema from up to `infer_rows` values (all when 0), skipping invalid
    /// ones. `None` for a file without a single valid value. A whole plain NDJSON file is
    /// scanned on several threads, each over its own part of the file.
    fn infer(&self, file: &InputFile) -> Result<Option<Schema>, JsonError> {
        let inferred = self.infer_raw(file)?;
        if self.config.columns.is_empty() {
            return Ok(inferred);
        }
        let base = inferred.unwrap_or_else(Schema::empty);
        Ok(Some(declare(&base, &self.config.columns)))
    }

    fn infer_raw(&self, file: &InputFile) -> Result<Option<Schema>, JsonError> {
        let limit = match self.config.infer_rows {
            0 => usize::MAX,
            n => n,
        };
        let mut inference = Inference::new();
        if self.is_array(file)? {
            let bytes = Self::read_whole(file)?;
            for r in Self::array_records(&file.path, &bytes)?.iter().take(limit) {
                inference.add(&bytes[r.range.clone()]);
            }
            return Ok(inference.schema());
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        const PARALLEL_FROM: u64 = 8 << 20;
        if limit == usize::MAX
            && threads > 1
            && file.seekable()
            && file.object.is_none()
            && file.record.size >= PARALLEL_FROM
        {
            return self.infer_parallel(file, threads);
        }
        let mut lines = Lines::new(file.open()?);
        let mut seen = 0usize;
        while seen < limit {
            let Some((line, _)) = lines.next_line().map_err(Self::io(&file.path))? else {
                break;
            };
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                inference.add(line);
                seen += 1;
            }
        }
        Ok(inference.schema())
    }

    /// Scans `threads` parts of a plain NDJSON file at once (each part starts after a line
    /// break) and merges what they saw, in file order.
    fn infer_parallel(
        &self,
        file: &InputFile,
        threads: usize,
    ) -> Result<Option<Schema>, JsonError> {
        use std::io::{Seek, SeekFrom};
        let size = file.record.size;
        let part = size / threads as u64 + 1;
        let results: Vec<Result<Inference, JsonError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|i| {
                    scope.spawn(move || -> Result<Inference, JsonError> {
                        let io = Self::io(&file.path);
                        let mut f = std::fs::File::open(&file.path).map_err(&io)?;
                        let from = i * part;
                        let to = ((i + 1) * part).min(size);
                        f.seek(SeekFrom::Start(from.saturating_sub(1)))
                            .map_err(&io)?;
                        let mut lines = Lines::new(f);
                        let mut at = from.saturating_sub(1);
                        // A part starts at the first line that starts inside it.
                        if from > 0 {
                            if let Some((_, n)) = lines.next_line().map_err(&io)? {
                                at += n as u64;
                            }
                        }
                        let mut inference = Inference::new();
                        while at < to {
                            let Some((line, n)) = lines.next_line().map_err(&io)? else {
                                break;
                            };
                            at += n as u64;
                            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                                inference.add(line);
                            }
                        }
                        Ok(inference)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("inference thread"))
                .collect()
        });
        let mut whole = Inference::new();
        for r in results {
            whole.merge(r?);
        }
        Ok(whole.schema())
    }

    /// Decodes `records` (all inside `bytes`) into one batch; bad records are returned as
    /// rejections with their line and the decoder's message.
    fn decode(
        &self,
        rd: &Reading<'_>,
        bytes: &[u8],
        records: &[Record],
    ) -> (Option<RecordBatch>, Vec<Rejected>, u64) {
        let ranges: Vec<_> = records.iter().map(|r| r.range.clone()).collect();
        let decoded = tributary_formats::json::decode(&rd.schema, rd.policy, bytes, &ranges);
        let rejected = decoded
            .rejected
            .into_iter()
            .map(|r| {
                let record = &records[r.index];
                self.reject(rd, record, &bytes[record.range.clone()], r.message)
            })
            .collect();
        let batch = (decoded.batch.num_rows() > 0).then_some(decoded.batch);
        (batch, rejected, decoded.discarded)
    }

    fn reject(&self, rd: &Reading<'_>, r: &Record, raw: &[u8], message: String) -> Rejected {
        Rejected {
            stream: self.stream.clone(),
            position: Some(rd.file.position(r.at)),
            message: format!("line {}: {message}", r.at.line),
            location: Some(format!("{}:{}", rd.file.path.display(), r.at.line)),
            raw: raw.to_vec(),
            headers: Vec::new(),
        }
    }

    /// Decodes and emits one batch of records; `false` when the run is stopping.
    #[allow(clippy::too_many_arguments)]
    fn flush_records(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        rd: &Reading<'_>,
        bytes: &[u8],
        records: &[Record],
        span: (TextPosition, TextPosition),
    ) -> bool {
        let decoded = self.decode(rd, bytes, records);
        self.emit_decoded(ctx, rt, rd, decoded, span)
    }

    /// Hands a decoded batch and its rejections to the runtime; `false` when the run is
    /// stopping.
    fn emit_decoded(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        rd: &Reading<'_>,
        (batch, rejected, discarded): (Option<RecordBatch>, Vec<Rejected>, u64),
        (start, end): (TextPosition, TextPosition),
    ) -> bool {
        for r in rejected {
            if rt.block_on(ctx.reject(r)).is_err() {
                return false;
            }
        }
        let data = batch.unwrap_or_else(|| RecordBatch::new_empty(rd.schema.clone()));
        let mut meta = BatchMeta::new(
            self.stream.as_str().into(),
            rd.file.position(start),
            rd.file.position(end),
            end.offset - start.offset,
        );
        meta.discarded = discarded;
        rt.block_on(ctx.emit(Batch { data, meta })).is_ok() && !ctx.is_stopping()
    }

    /// Streams an NDJSON file from `start` with `threads` decoder threads (the caller reads
    /// and emits in file order, so positions and dead letters are those of a serial read);
    /// returns where it ended.
    fn read_ndjson(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        rd: &Reading<'_>,
        start: TextPosition,
    ) -> Result<TextPosition, JsonError> {
        let threads = self.config.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        if threads <= 1 {
            return self.scan_ndjson(rd, start, |bytes, records, span| {
                self.flush_records(ctx, rt, rd, bytes, records, span)
            });
        }
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>, Vec<Record>, Span)>(threads);
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::channel::<(u64, Decoded, Span)>();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let done_tx = done_tx.clone();
                let job_rx = &job_rx;
                scope.spawn(move || loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((seq, bytes, records, span))) = job else {
                        return;
                    };
                    let decoded = self.decode(rd, &bytes, &records);
                    if done_tx.send((seq, decoded, span)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            let max_in_flight = 2 * threads as u64;
            let mut next_seq = 0u64;
            let mut order = InOrder {
                pending: BTreeMap::new(),
                next: 0,
                done: done_rx,
            };
            let mut emit = |decoded, span| self.emit_decoded(ctx, rt, rd, decoded, span);
            let mut stopped = false;
            let end = self.scan_ndjson(rd, start, |bytes, records, span| {
                let (from, to) = match (records.first(), records.last()) {
                    (Some(a), Some(b)) => (a.range.start, b.range.end),
                    _ => (0, 0),
                };
                let rebased = records
                    .iter()
                    .map(|r| Record {
                        at: r.at,
                        range: r.range.start - from..r.range.end - from,
                    })
                    .collect();
                if job_tx
                    .send((next_seq, bytes[from..to].to_vec(), rebased, span))
                    .is_err()
                {
                    stopped = true;
                    return false;
                }
                next_seq += 1;
                // Emit what is done; wait when too much is in flight.
                let keep_going = order.deliver(&mut emit, false)
                    && (next_seq - order.next < max_in_flight || order.deliver_one(&mut emit));
                stopped = !keep_going;
                keep_going
            });
            drop(job_tx);
            let end = end?;
            while !stopped && order.next < next_seq {
                stopped = !order.deliver_one(&mut emit);
            }
            Ok(end)
        })
    }

    /// Splits an NDJSON file from `start` into batches of records and hands each to
    /// `submit` (which returns `false` to stop); returns where it ended. The file is read in
    /// large blocks into one buffer; a batch's records are ranges of it (no copy per line).
    fn scan_ndjson(
        &self,
        rd: &Reading<'_>,
        start: TextPosition,
        mut submit: impl FnMut(&[u8], &[Record], (TextPosition, TextPosition)) -> bool,
    ) -> Result<TextPosition, JsonError> {
        // 1 MiB reads: as fast as 4 MiB ones on the bench file, and the buffer (a block plus
        // the unsent part of a batch) stays small.
        const BLOCK: usize = 1 << 20;
        let mut input = rd.file.open_at(start.offset)?;
        let batch_size = self.config.batch_size.get();
        let mut buf: Vec<u8> = Vec::with_capacity(2 * BLOCK);
        // Bytes of `buf` already split into lines.
        let mut scanned = 0usize;
        let mut records: Vec<Record> = Vec::with_capacity(batch_size);
        let mut at = start;
        let mut batch_start = start;
        loop {
            let old = buf.len();
            buf.resize(old + BLOCK, 0);
            let n = read_full(&mut input, &mut buf[old..]).map_err(Self::io(&rd.file.path))?;
            buf.truncate(old + n);
            let eof = n == 0;
            let mut line_start = scanned;
            let mut flushed_to = None;
            for nl in memchr::memchr_iter(b'\n', &buf[scanned..]) {
                let end = scanned + nl;
                cut(&buf, &mut line_start, (end, end + 1), &mut records, &mut at);
                if records.len() >= batch_size {
                    if !submit(&buf, &records, (batch_start, at)) {
                        return Ok(at);
                    }
                    records.clear();
                    batch_start = at;
                    flushed_to = Some(end + 1);
                }
            }
            if eof {
                if line_start < buf.len() {
                    let end = buf.len();
                    cut(&buf, &mut line_start, (end, end), &mut records, &mut at);
                }
                if at != batch_start && !submit(&buf, &records, (batch_start, at)) {
                    return Ok(at);
                }
                return Ok(at);
            }
            scanned = line_start;
            // Drop what no pending record needs; keep the partial last line.
            let keep_from = records
                .first()
                .map_or(scanned, |r| r.range.start)
                .min(scanned)
                .max(flushed_to.unwrap_or(0).min(scanned));
            if keep_from > 0 {
                buf.drain(..keep_from);
                scanned -= keep_from;
                for r in &mut records {
                    r.range = r.range.start - keep_from..r.range.end - keep_from;
                }
            }
        }
    }

    /// Reads a JSON array file (in memory) from `start`; returns where it ended.
    fn read_array(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        rd: &Reading<'_>,
        start: Option<TextPosition>,
    ) -> Result<TextPosition, JsonError> {
        let bytes = Self::read_whole(rd.file)?;
        let records = Self::array_records(&rd.file.path, &bytes)?;
        let end_of_file = TextPosition {
            offset: bytes.len() as u64,
            line: 1 + memchr::memchr_iter(b'\n', &bytes).count() as u64,
        };
        let skip = start.map_or(0, |s| records.partition_point(|r| r.at.offset < s.offset));
        let remaining = &records[skip..];
        let mut batch_start = start.unwrap_or(TextPosition { offset: 0, line: 1 });
        if start.is_some_and(|s| s.offset >= end_of_file.offset) {
            return Ok(batch_start);
        }
        let chunks: Vec<&[Record]> = remaining.chunks(self.config.batch_size.get()).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = chunks.get(i + 1).map_or(end_of_file, |next| next[0].at);
            if !self.flush_records(ctx, rt, rd, &bytes, chunk, (batch_start, end)) {
                return Ok(end);
            }
            batch_start = end;
        }
        if chunks.is_empty() && batch_start != end_of_file {
            self.flush_records(ctx, rt, rd, &bytes, &[], (batch_start, end_of_file));
        }
        Ok(end_of_file)
    }

    /// Reads the planned files in order, fitting the stream's schema to each under the
    /// schema policy, and completes each in the ledger with a last empty batch.
    fn read_all(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        planned: Vec<Planned<TextPosition>>,
        current: &mut Option<Schema>,
    ) -> Result<Vec<FileRecord>, JsonError> {
        let policy = ctx.schema_policy();
        let mut completed = Vec::new();
        for Planned { file, resume } in planned {
            // A resumed file is read with the schema it started with (stored by the runtime).
            let inferred = match (&resume, &current) {
                (Some(_), Some(_)) => None,
                _ => self.infer(&file)?,
            };
            let fitted = match &inferred {
                Some(inferred) => {
                    tributary_core::schema::reconcile(current.as_ref(), inferred, policy)
                }
                None => tributary_core::schema::reconcile(
                    current.as_ref(),
                    current.as_ref().unwrap_or(&Schema::empty()),
                    policy,
                ),
            };
            if fitted.changed() {
                tracing::info!(file = %file.path.display(), stream = %self.stream, change = %fitted.describe(), "schema evolved");
            }
            if !fitted.unknown.is_empty() {
                tracing::warn!(file = %file.path.display(), fields = %fitted.unknown.join(", "), policy = policy.as_str(), "fields not in the stream's schema");
            }
            let rd = Reading {
                file: &file,
                schema: Arc::new(fitted.schema),
                policy,
            };
            tracing::info!(file = %file.path.display(), offset = resume.map_or(0, |r| r.offset), "reading JSON");
            let end = if self.is_array(&file)? {
                self.read_array(ctx, rt, &rd, resume)?
            } else {
                self.read_ndjson(
                    ctx,
                    rt,
                    &rd,
                    resume.unwrap_or(TextPosition { offset: 0, line: 1 }),
                )?
            };
            if ctx.is_stopping() {
                return Ok(completed);
            }
            let done =
                crate::input::completion(&self.stream, &file, &rd.schema, file.position(end));
            completed.extend(done.meta.completes.iter().cloned());
            if rt.block_on(ctx.emit(done)).is_err() || ctx.is_stopping() {
                return Ok(completed);
            }
            *current = Some(rd.schema.as_ref().clone());
        }
        Ok(completed)
    }
}

#[async_trait::async_trait]
impl Source for JsonSource {
    fn describe(&self) -> String {
        format!("json {}", self.files.display())
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
            if let Some(inferred) = self.infer(file)? {
                schema = Some(
                    tributary_core::schema::reconcile(
                        schema.as_ref(),
                        &inferred,
                        SchemaPolicy::Evolve,
                    )
                    .schema,
                );
            }
        }
        let sample = match self.config.infer_rows {
            0 => "all rows".to_string(),
            n => format!("the first {n} rows"),
        };
        let what = match files.len() {
            1 => format!(
                "{} ({})",
                files[0].path.display(),
                if self.is_array(&files[0])? {
                    "JSON array"
                } else {
                    "NDJSON"
                }
            ),
            n if n <= MAX_FILES => format!("{n} files"),
            n => format!("{n} files; schema from the first {MAX_FILES}"),
        };
        Ok(vec![StreamInfo {
            name: self.stream.clone(),
            schema: Some(Arc::new(schema.unwrap_or_else(Schema::empty))),
            detail: Some(format!("{what}, types inferred from {sample} of each file")),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let rt = tokio::runtime::Handle::current();
        let this = JsonSource {
            config: self.config.clone(),
            files: self.files.clone(),
            stream: self.stream.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut current = ctx.stored_schema(&this.stream)?;
            crate::input::run_files::<TextPosition>(
                &ctx,
                &rt,
                &this.stream,
                this.config.follow.as_ref(),
                || Ok(this.list()?),
                |planned| {
                    crate::input::announce(&ctx, &planned, |p| p.offset, true);
                    Ok(this.read_all(&ctx, &rt, planned, &mut current)?)
                },
            )
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("JSON reader thread: {e}")))?
    }
}
