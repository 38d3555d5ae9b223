use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};

use crate::TextPosition;

/// Configuration of the JSON source (`source: { kind: json, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSourceConfig {
    /// The file: NDJSON, or one JSON array of objects. Relative paths start at the pipeline
    /// file's folder.
    pub path: VarStr,
    /// Stream name (default: the file name without extension).
    #[serde(default)]
    pub stream: Option<String>,
    /// Rows read to infer the schema (default 0: every row, so that late type changes widen
    /// instead of being dead-lettered).
    #[serde(default)]
    pub infer_rows: usize,
    /// Rows per batch (default 8192).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(8192).expect("non-zero")
}

impl JsonSourceConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        JsonSourceConfig {
            path: VarStr::new(path.into()),
            stream: None,
            infer_rows: 0,
            batch_size: default_batch_size(),
        }
    }
}

/// Errors of the JSON source; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The file cannot be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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
    /// The file is shorter than the committed position.
    #[error("{path} is {len} bytes, shorter than the committed position (byte {offset}): the file was replaced or truncated since the last run")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length now.
        len: u64,
        /// The committed offset.
        offset: u64,
    },
    /// The state store holds something this source did not write.
    #[error("{path}: stored state is not usable: {message}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Classify for JsonError {
    fn class(&self) -> ErrorClass {
        match self {
            JsonError::Io { source, .. } => classify_io(source),
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<JsonError> for ConnectorError {
    fn from(e: JsonError) -> Self {
        let hint = matches!(e, JsonError::Truncated { .. } | JsonError::BadState { .. }).then_some(
            "to ingest the file again from the start, run `tributary state reset <pipeline file>`",
        );
        let err = ConnectorError::classified(e);
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

/// One JSON value to decode, and where it is.
struct Record {
    at: TextPosition,
    range: std::ops::Range<usize>,
}

/// Reads one JSON file. See the [module docs](super).
pub struct JsonSource {
    config: JsonSourceConfig,
    path: PathBuf,
    stream: String,
}

impl JsonSource {
    /// Builds the source; `base_dir` anchors a relative `path`.
    pub fn new(config: JsonSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let path = base_dir.join(config.path.resolve("source.path")?);
        let stream = config.stream.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "json".to_string())
        });
        Ok(JsonSource {
            config,
            path,
            stream,
        })
    }

    fn io(&self) -> impl Fn(std::io::Error) -> JsonError + '_ {
        |source| JsonError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether the file is one JSON array (first non-blank byte is `[`).
    fn is_array(&self) -> Result<bool, JsonError> {
        let mut reader = BufReader::new(File::open(&self.path).map_err(self.io())?);
        loop {
            let buf = reader.fill_buf().map_err(self.io())?;
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

    /// Every record of an array file: the element's byte range and line.
    fn array_records(&self, bytes: &[u8]) -> Result<Vec<Record>, JsonError> {
        let elements: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(bytes).map_err(|source| JsonError::Array {
                path: self.path.clone(),
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

    /// Infers the schema from up to `infer_rows` values (all when 0), skipping invalid ones.
    fn infer(&self) -> Result<Schema, JsonError> {
        let limit = match self.config.infer_rows {
            0 => usize::MAX,
            n => n,
        };
        let schema = if self.is_array()? {
            let bytes = std::fs::read(&self.path).map_err(self.io())?;
            let records = self.array_records(&bytes)?;
            let values = records
                .iter()
                .take(limit)
                .filter_map(|r| {
                    serde_json::from_slice::<serde_json::Value>(&bytes[r.range.clone()]).ok()
                })
                .map(Ok::<_, arrow_schema::ArrowError>);
            arrow_json::reader::infer_json_schema_from_iterator(values)
        } else {
            let reader =
                BufReader::with_capacity(1 << 20, File::open(&self.path).map_err(self.io())?);
            let values = reader
                .split(b'\n')
                .map_while(Result::ok)
                .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                .take(limit)
                .filter_map(|l| serde_json::from_slice::<serde_json::Value>(&l).ok())
                .map(Ok::<_, arrow_schema::ArrowError>);
            arrow_json::reader::infer_json_schema_from_iterator(values)
        };
        schema.map_err(|e| JsonError::Schema {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    fn position(p: TextPosition) -> Position {
        Position::encode(&p).expect("a struct of two integers serialises")
    }

    /// Decodes `records` (all inside `bytes`) into one batch; bad records are returned as
    /// rejections with their line and the decoder's message.
    fn decode(
        &self,
        schema: &SchemaRef,
        bytes: &[u8],
        records: &[Record],
    ) -> (Option<RecordBatch>, Vec<Rejected>) {
        let builder = || {
            ReaderBuilder::new(schema.clone())
                .with_batch_size(records.len().max(1))
                .with_coerce_primitive(true)
                .build_decoder()
        };
        // arrow-json truncates a float read into an integer column (2.5 → 2) without an
        // error. Where that could happen, check those records first and reject the offenders.
        let mut checked: Vec<Record>;
        let mut rejected = Vec::new();
        let mut records = records;
        if has_integer_field(schema) {
            let span = records
                .first()
                .zip(records.last())
                .map_or(&[][..], |(a, b)| &bytes[a.range.start..b.range.end]);
            if has_non_integer_number(span) {
                checked = Vec::with_capacity(records.len());
                for r in records {
                    let raw = &bytes[r.range.clone()];
                    match serde_json::from_slice::<serde_json::Value>(raw) {
                        Ok(value) => match integer_conflict(&value, schema.fields()) {
                            Some(message) => rejected.push(self.reject(r, raw, message)),
                            None => checked.push(Record {
                                at: r.at,
                                range: r.range.clone(),
                            }),
                        },
                        // Invalid JSON: the decoder below reports it.
                        Err(_) => checked.push(Record {
                            at: r.at,
                            range: r.range.clone(),
                        }),
                    }
                }
                records = &checked;
            }
        }
        // Fast path: one decoder for all records (one call for the whole span when only
        // whitespace separates them, as in NDJSON; one call per element otherwise).
        if let (Some(first), Some(last), Ok(mut decoder)) =
            (records.first(), records.last(), builder())
        {
            let contiguous = records.windows(2).all(|w| {
                bytes[w[0].range.end..w[1].range.start]
                    .iter()
                    .all(u8::is_ascii_whitespace)
            });
            let fed = if contiguous {
                decoder
                    .decode(&bytes[first.range.start..last.range.end])
                    .is_ok()
            } else {
                records
                    .iter()
                    .all(|r| decoder.decode(&bytes[r.range.clone()]).is_ok())
            };
            if fed {
                if let Ok(Some(batch)) = decoder.flush() {
                    if batch.num_rows() == records.len() {
                        return (Some(batch), rejected);
                    }
                }
            }
        }
        // Slow path: one record at a time, to find the bad ones.
        let mut good = Vec::new();
        for r in records {
            let raw = &bytes[r.range.clone()];
            let result = builder().and_then(|mut d| {
                d.decode(raw)?;
                d.flush()
            });
            match result {
                Ok(Some(batch)) if batch.num_rows() == 1 => good.push(batch),
                Ok(other) => rejected.push(self.reject(
                    r,
                    raw,
                    format!(
                        "expected one JSON object, found {} values",
                        other.map_or(0, |b| b.num_rows())
                    ),
                )),
                Err(e) => rejected.push(self.reject(r, raw, e.to_string())),
            }
        }
        let batch = (!good.is_empty())
            .then(|| arrow_select::concat::concat_batches(schema, &good).ok())
            .flatten();
        (batch, rejected)
    }

    fn reject(&self, r: &Record, raw: &[u8], message: String) -> Rejected {
        let message = message
            .strip_prefix("Json error: ")
            .unwrap_or(&message)
            .to_string();
        Rejected {
            stream: self.stream.clone(),
            position: Some(Self::position(r.at)),
            message: format!("line {}: {message}", r.at.line),
            location: Some(format!("{}:{}", self.path.display(), r.at.line)),
            raw: raw.to_vec(),
        }
    }

    /// Decodes and emits one batch of records; `false` when the run is stopping.
    fn flush_records(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        schema: &SchemaRef,
        bytes: &[u8],
        records: &[Record],
        (start, end): (TextPosition, TextPosition),
    ) -> bool {
        let (batch, rejected) = self.decode(schema, bytes, records);
        for r in rejected {
            if rt.block_on(ctx.reject(r)).is_err() {
                return false;
            }
        }
        let data = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        let batch = Batch {
            data,
            meta: BatchMeta {
                stream: self.stream.as_str().into(),
                start: Self::position(start),
                end: Self::position(end),
                source_bytes: end.offset - start.offset,
                rows: None,
            },
        };
        rt.block_on(ctx.emit(batch)).is_ok() && !ctx.is_stopping()
    }

    fn read_ndjson(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        schema: &SchemaRef,
        start: TextPosition,
    ) -> Result<(), JsonError> {
        let file =
            crate::open_at(&self.path, start.offset, ctx.progress()).map_err(|e| match e {
                crate::OpenAtError::Io(source) => JsonError::Io {
                    path: self.path.clone(),
                    source,
                },
                crate::OpenAtError::Truncated { len } => JsonError::Truncated {
                    path: self.path.clone(),
                    len,
                    offset: start.offset,
                },
            })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let batch_size = self.config.batch_size.get();
        let mut bytes: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut records: Vec<Record> = Vec::with_capacity(batch_size);
        let mut at = start;
        let mut batch_start = start;
        loop {
            let line_start = bytes.len();
            let n = reader.read_until(b'\n', &mut bytes).map_err(self.io())?;
            if n > 0 {
                let line = &bytes[line_start..];
                let content_end = line_start
                    + line
                        .iter()
                        .rposition(|b| !b.is_ascii_whitespace())
                        .map_or(0, |i| i + 1);
                if content_end > line_start {
                    records.push(Record {
                        at,
                        range: line_start..content_end,
                    });
                }
                at = TextPosition {
                    offset: at.offset + n as u64,
                    line: at.line + u64::from(bytes.last() == Some(&b'\n')),
                };
            }
            if records.len() >= batch_size || (n == 0 && at != batch_start) {
                if !self.flush_records(ctx, rt, schema, &bytes, &records, (batch_start, at)) {
                    return Ok(());
                }
                records.clear();
                bytes.clear();
                batch_start = at;
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn read_array(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        schema: &SchemaRef,
        start: Option<TextPosition>,
    ) -> Result<(), JsonError> {
        let mut bytes = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(self.io())?;
        let records = self.array_records(&bytes)?;
        let end_of_file = TextPosition {
            offset: bytes.len() as u64,
            line: 1 + memchr::memchr_iter(b'\n', &bytes).count() as u64,
        };
        let skip = start.map_or(0, |s| records.partition_point(|r| r.at.offset < s.offset));
        let remaining = &records[skip..];
        let mut batch_start = start.unwrap_or(TextPosition { offset: 0, line: 1 });
        if start.is_some_and(|s| s.offset >= end_of_file.offset) {
            return Ok(());
        }
        ctx.progress()
            .set_total_bytes(end_of_file.offset - batch_start.offset);
        let chunks: Vec<&[Record]> = remaining.chunks(self.config.batch_size.get()).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = chunks.get(i + 1).map_or(end_of_file, |next| next[0].at);
            if !self.flush_records(ctx, rt, schema, &bytes, chunk, (batch_start, end)) {
                return Ok(());
            }
            batch_start = end;
        }
        if chunks.is_empty() && batch_start != end_of_file {
            self.flush_records(ctx, rt, schema, &bytes, &[], (batch_start, end_of_file));
        }
        Ok(())
    }
}

fn is_integer(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn type_has_integer(dt: &DataType) -> bool {
    match dt {
        DataType::Struct(fields) => fields.iter().any(|f| type_has_integer(f.data_type())),
        DataType::List(f) | DataType::LargeList(f) => type_has_integer(f.data_type()),
        other => is_integer(other),
    }
}

fn has_integer_field(schema: &Schema) -> bool {
    schema
        .fields()
        .iter()
        .any(|f| type_has_integer(f.data_type()))
}

/// Whether a JSON text holds, outside strings, a number with a fraction or an exponent.
fn has_non_integer_number(bytes: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut prev_digit = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'.' | b'e' | b'E' if prev_digit => return true,
            _ => {}
        }
        prev_digit = b.is_ascii_digit();
    }
    false
}

/// The first integer field of `fields` whose value in `value` is not an integer.
fn integer_conflict(value: &serde_json::Value, fields: &arrow_schema::Fields) -> Option<String> {
    fn walk(value: &serde_json::Value, dt: &DataType, path: &str) -> Option<String> {
        match (value, dt) {
            (serde_json::Value::Number(n), dt) if is_integer(dt) && !(n.is_i64() || n.is_u64()) => {
                Some(format!("field `{path}`: expected {dt}, found {n} (set the column's type, or let inference see this row)"))
            }
            (serde_json::Value::Object(map), DataType::Struct(fields)) => fields
                .iter()
                .find_map(|f| map.get(f.name()).and_then(|v| walk(v, f.data_type(), &format!("{path}.{}", f.name())))),
            (serde_json::Value::Array(items), DataType::List(f) | DataType::LargeList(f)) => {
                items.iter().find_map(|v| walk(v, f.data_type(), &format!("{path}[]")))
            }
            _ => None,
        }
    }
    let map = value.as_object()?;
    fields.iter().find_map(|f| {
        map.get(f.name())
            .and_then(|v| walk(v, f.data_type(), f.name()))
    })
}

#[async_trait::async_trait]
impl Source for JsonSource {
    fn describe(&self) -> String {
        format!("json {}", self.path.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        File::open(&self.path).map_err(self.io())?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let schema = self.infer()?;
        let sample = match self.config.infer_rows {
            0 => "all rows".to_string(),
            n => format!("the first {n} rows"),
        };
        Ok(vec![StreamInfo {
            name: self.stream.clone(),
            schema: Some(Arc::new(schema)),
            detail: Some(format!(
                "{} ({}), types inferred from {sample}",
                self.path.display(),
                if self.is_array()? {
                    "JSON array"
                } else {
                    "NDJSON"
                }
            )),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let schema: SchemaRef = match ctx.stored_schema(&self.stream)? {
            Some(stored) => Arc::new(stored),
            None => Arc::new(self.infer()?),
        };
        let start = match ctx.checkpoint(&self.stream) {
            Some(p) => Some(p.decode::<TextPosition>().map_err(|e| {
                ConnectorError::from(JsonError::BadState {
                    path: self.path.clone(),
                    message: format!("committed position {p} is not a file position: {e}"),
                })
            })?),
            None => None,
        };
        let array = self.is_array()?;
        let rt = tokio::runtime::Handle::current();
        let this = JsonSource {
            config: self.config.clone(),
            path: self.path.clone(),
            stream: self.stream.clone(),
        };
        tokio::task::spawn_blocking(move || {
            if array {
                this.read_array(&ctx, &rt, &schema, start)
            } else {
                let start = start.unwrap_or(TextPosition { offset: 0, line: 1 });
                this.read_ndjson(&ctx, &rt, &schema, start)
            }
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("JSON reader thread: {e}")))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_integer_numbers_are_found_outside_strings_only() {
        assert!(has_non_integer_number(br#"{"a": 2.5}"#));
        assert!(has_non_integer_number(br#"{"a": 1e3}"#));
        assert!(!has_non_integer_number(
            br#"{"a": 25, "b": "2.5", "c": "x\"1.5"}"#
        ));
        assert!(!has_non_integer_number(br#"{"e": 1, "ver.2": 3}"#));
    }

    #[test]
    fn integer_conflicts_name_the_nested_field() {
        let schema = Schema::new(vec![arrow_schema::Field::new(
            "u",
            DataType::Struct(vec![arrow_schema::Field::new("n", DataType::Int64, true)].into()),
            true,
        )]);
        let v: serde_json::Value = serde_json::from_str(r#"{"u": {"n": 2.5}}"#).unwrap();
        let msg = integer_conflict(&v, schema.fields()).unwrap();
        assert!(
            msg.starts_with("field `u.n`: expected Int64, found 2.5"),
            "{msg}"
        );
        let ok: serde_json::Value = serde_json::from_str(r#"{"u": {"n": 2}}"#).unwrap();
        assert_eq!(integer_conflict(&ok, schema.fields()), None);
    }
}
