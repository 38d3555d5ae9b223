//! `tributary dlq show|replay`: look at the dead letters (the NDJSON file, or the Kafka
//! dead-letter topic), and send them through the pipeline's sink again once the cause is fixed
//! (a wider schema, a repaired downstream, an `on_error` that was too strict).
//!
//! ## How a replay works
//! The replay is a pipeline of its own, named `<pipeline>.replay`, so its positions and its
//! output file names never collide with the main pipeline's. Its source reads the dead-letter
//! file as it is when the replay starts; each record goes back to its stream:
//! - a payload that is a JSON object (JSON, Kafka, MQTT, API records; Excel and Parquet rows,
//!   which are dead-lettered as JSON) is decoded against the stream's latest schema under the
//!   pipeline's `schema_policy` (so `evolve` widens for it);
//! - any other payload of a CSV pipeline is parsed as one CSV record with the source's
//!   delimiter and quote against the stream's schema.
//!
//! A record that fails again is dead-lettered again, with the new reason, at the end of the
//! same file (or topic, its attempt count carried on); the next replay tries it once more.
//! Replayed records are not replayed twice: the replay commits, per stream, the offset in the
//! dead-letter file (or partition and offset in the topic) it has made durable, and a rerun
//! skips records below it. (The original lines stay: the file and the topic are logs, and
//! nothing rewrites them.) A Kafka dead-letter topic is read from its start to its end as it
//! is when the replay starts (its dead letters of this pipeline, in memory), so the replay's
//! own failures, appended behind, wait for the next one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::dead_letter::{DeadLetterRecord, Rejected};
use tributary_core::error::ConnectorError;
use tributary_core::schema::SchemaPolicy;
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};
use tributary_formats::json::StreamDecoder;

/// Records per replayed batch.
const BATCH: usize = 1000;

/// Where a replay is in the dead letters of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqPosition {
    /// Byte offset of the next dead letter to replay in the file, or its offset in the
    /// topic's partition.
    pub offset: u64,
    /// The partition of the dead-letter topic holding the stream's dead letters (a Kafka
    /// dead-letter topic keys them by stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
}

impl DlqPosition {
    fn in_file(offset: u64) -> Self {
        DlqPosition {
            offset,
            partition: None,
        }
    }
}

/// Where the dead letters are.
#[derive(Clone, Debug)]
pub enum DlqInput {
    /// An NDJSON file.
    File(PathBuf),
    /// A Kafka dead-letter topic.
    Kafka(tributary_kafka::dead_letter::KafkaDeadLetterConfig),
}

impl DlqInput {
    /// For messages: the file or the topic.
    pub fn describe(&self) -> String {
        match self {
            DlqInput::File(f) => f.display().to_string(),
            DlqInput::Kafka(k) => format!("Kafka topic {}", k.topic),
        }
    }

    /// Every dead letter of `pipeline` (for `dlq show`).
    pub fn read_all(&self, pipeline: &str) -> Result<Vec<DeadLetterRecord>, ConnectorError> {
        match self {
            DlqInput::File(f) => tributary_core::dead_letter::NdjsonDeadLetter::read_all(f)
                .map_err(|e| ConnectorError::fatal(format!("{}: {e}", f.display()))),
            DlqInput::Kafka(k) => {
                tributary_kafka::dead_letter::read_topic(k, pipeline, &|_: &str| None)
                    .map(|d| d.into_iter().map(|d| d.record).collect())
                    .map_err(ConnectorError::fatal)
            }
        }
    }
}

/// How records that are not JSON objects are parsed: as one CSV record.
#[derive(Clone, Debug)]
pub struct CsvRecords {
    /// Field delimiter.
    pub delimiter: u8,
    /// Quote character.
    pub quote: u8,
    /// Values read as null.
    pub nulls: Vec<String>,
}

/// The source of a replay: the dead letters of `pipeline`.
pub struct DlqSource {
    input: DlqInput,
    pipeline: String,
    state: Arc<SqliteStateStore>,
    csv: Option<CsvRecords>,
}

impl DlqSource {
    /// Replays `input`, the dead letters of `pipeline` (whose schemas are in `state`).
    pub fn new(
        input: DlqInput,
        pipeline: &str,
        state: Arc<SqliteStateStore>,
        csv: Option<CsvRecords>,
    ) -> Self {
        DlqSource {
            input,
            pipeline: pipeline.to_string(),
            state,
            csv,
        }
    }

    fn stored_schema(&self, stream: &str) -> Result<Option<Schema>, ConnectorError> {
        let history = self
            .state
            .schema_history(&self.pipeline, stream)
            .map_err(ConnectorError::fatal)?;
        Ok(history
            .last()
            .and_then(|v| serde_json::from_value(v.schema.clone()).ok()))
    }
}

/// One dead letter to replay, the position after it, and the headers it carries on.
struct Entry {
    record: DeadLetterRecord,
    end: DlqPosition,
    headers: Vec<(String, Vec<u8>)>,
}

/// The records of one stream waiting to be replayed.
struct Pending {
    entries: Vec<Entry>,
    decoder: Option<StreamDecoder>,
    schema: Option<Schema>,
    start: DlqPosition,
}

#[async_trait::async_trait]
impl Source for DlqSource {
    fn describe(&self) -> String {
        format!("dead letters in {}", self.input.describe())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let input = self.input.clone();
        let pipeline = self.pipeline.clone();
        let records = tokio::task::spawn_blocking(move || input.read_all(&pipeline))
            .await
            .map_err(|e| ConnectorError::fatal(e.to_string()))??;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in records {
            *counts.entry(r.stream).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(name, n)| StreamInfo {
                schema: self.stored_schema(&name).ok().flatten().map(Arc::new),
                detail: Some(format!("{n} dead letters")),
                name,
            })
            .collect())
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        match self.input.clone() {
            DlqInput::File(file) => self.run_file(&ctx, &file).await,
            DlqInput::Kafka(config) => self.run_kafka(&ctx, config).await,
        }
    }
}

impl DlqSource {
    /// A stream's pending records, created with its schema on first use.
    fn pending<'a>(
        &self,
        pending: &'a mut BTreeMap<String, Pending>,
        stream: &str,
        start: DlqPosition,
    ) -> Result<&'a mut Pending, ConnectorError> {
        if !pending.contains_key(stream) {
            let schema = self.stored_schema(stream)?;
            pending.insert(
                stream.to_string(),
                Pending {
                    entries: Vec::new(),
                    decoder: None,
                    schema,
                    start,
                },
            );
        }
        let p = pending.get_mut(stream).expect("inserted above");
        if p.entries.is_empty() {
            p.start = start;
        }
        Ok(p)
    }

    /// Replays a Kafka dead-letter topic as it is now.
    async fn run_kafka(
        &self,
        ctx: &SourceContext,
        config: tributary_kafka::dead_letter::KafkaDeadLetterConfig,
    ) -> Result<(), ConnectorError> {
        let done: BTreeMap<String, (i32, i64)> = ctx
            .checkpoints()
            .iter()
            .filter_map(|(stream, p)| {
                let p = p.decode::<DlqPosition>().ok()?;
                Some((stream.clone(), (p.partition?, p.offset as i64)))
            })
            .collect();
        let pipeline = self.pipeline.clone();
        let topic = config.topic.clone();
        let letters = tokio::task::spawn_blocking(move || {
            tributary_kafka::dead_letter::read_topic(&config, &pipeline, &|s: &str| {
                done.get(s).copied()
            })
        })
        .await
        .map_err(|e| ConnectorError::fatal(e.to_string()))?
        .map_err(ConnectorError::fatal)?;
        let policy = ctx.schema_policy();
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let replayed = letters.len();
        for d in letters {
            let stream = d.record.stream.clone();
            let at = |offset: i64| DlqPosition {
                offset: offset as u64,
                partition: Some(d.partition),
            };
            let p = self.pending(&mut pending, &stream, at(d.offset))?;
            p.entries.push(Entry {
                end: at(d.offset + 1),
                record: d.record,
                headers: d.headers,
            });
            if p.entries.len() >= BATCH {
                self.flush(ctx, &stream, p, policy).await?;
            }
        }
        for (stream, p) in pending.iter_mut() {
            if !p.entries.is_empty() {
                self.flush(ctx, stream, p, policy).await?;
            }
        }
        tracing::info!(topic = %topic, records = replayed, "dead letters replayed");
        Ok(())
    }

    /// Replays an NDJSON dead-letter file as it is now.
    async fn run_file(
        &self,
        ctx: &SourceContext,
        path: &std::path::Path,
    ) -> Result<(), ConnectorError> {
        let io = |e: std::io::Error| ConnectorError::fatal(format!("{}: {e}", path.display()));
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(file = %path.display(), "no dead letters: nothing to replay");
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        };
        // Only what is there now: failures of this replay are appended behind it.
        let snapshot = file.metadata().map_err(io)?.len();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader = BufReader::new(file);
        let done_up_to = |stream: &str| -> u64 {
            ctx.checkpoint(stream)
                .and_then(|p| p.decode::<DlqPosition>().ok())
                .map_or(0, |p| p.offset)
        };
        let policy = ctx.schema_policy();
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let mut offset = 0u64;
        let mut line = String::new();
        let mut replayed = 0u64;
        while offset < snapshot {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)? as u64;
            if n == 0 {
                break;
            }
            let start = offset;
            offset += n;
            if line.trim().is_empty() {
                continue;
            }
            let record: DeadLetterRecord = serde_json::from_str(line.trim_end()).map_err(|e| {
                ConnectorError::fatal(format!(
                    "{} at byte {start}: not a dead-letter record: {e}",
                    path.display()
                ))
            })?;
            if start < done_up_to(&record.stream) {
                continue;
            }
            let stream = record.stream.clone();
            let p = self.pending(&mut pending, &stream, DlqPosition::in_file(start))?;
            p.entries.push(Entry {
                record,
                end: DlqPosition::in_file(offset),
                headers: Vec::new(),
            });
            replayed += 1;
            if p.entries.len() >= BATCH {
                self.flush(ctx, &stream, p, policy).await?;
            }
        }
        for (stream, p) in pending.iter_mut() {
            if !p.entries.is_empty() {
                self.flush(ctx, stream, p, policy).await?;
            }
        }
        tracing::info!(file = %path.display(), records = replayed, "dead letters replayed");
        Ok(())
    }
    /// Decodes a stream's pending records and emits them as one batch; records that fail
    /// again are dead-lettered again.
    async fn flush(
        &self,
        ctx: &SourceContext,
        stream: &str,
        p: &mut Pending,
        policy: SchemaPolicy,
    ) -> Result<(), ConnectorError> {
        let entries = std::mem::take(&mut p.entries);
        let end = entries.last().map_or(p.start, |e| e.end);
        let position = |at: DlqPosition| Position::encode(&at).expect("positions serialise");
        let mut json: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut csv: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut again: Vec<(usize, String)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(raw) = &e.record.raw else {
                again.push((
                    i,
                    "the payload is not UTF-8 text: it cannot be replayed".into(),
                ));
                continue;
            };
            let is_object = raw.trim_start().starts_with('{')
                && serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok();
            if is_object {
                json.push((i, raw.clone().into_bytes()));
            } else if self.csv.is_some() {
                csv.push((i, raw.clone().into_bytes()));
            } else {
                again.push((i, "the payload is not a JSON object".into()));
            }
        }
        // Each batch with the entries its rows came from, in order.
        let mut batches: Vec<(RecordBatch, Vec<usize>)> = Vec::new();
        if !json.is_empty() {
            let decoder = p
                .decoder
                .get_or_insert_with(|| StreamDecoder::new(p.schema.clone(), policy));
            let decoded = decoder.decode(json.iter().map(|(_, b)| b.as_slice()));
            let mut gone = vec![false; json.len()];
            for r in decoded.decoded.rejected {
                gone[r.index] = true;
                again.push((json[r.index].0, r.message));
            }
            for i in decoded.decoded.discarded_indexes {
                gone[i] = true;
            }
            if decoded.decoded.batch.num_rows() > 0 {
                let kept = (0..json.len())
                    .filter(|i| !gone[*i])
                    .map(|i| json[i].0)
                    .collect();
                batches.push((decoded.decoded.batch, kept));
            }
        }
        if !csv.is_empty() {
            let (rows, bad) = self.parse_csv(p.schema.as_ref(), &csv);
            let failed: std::collections::BTreeSet<usize> = bad.iter().map(|(i, _)| *i).collect();
            let kept: Vec<usize> = csv
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| !failed.contains(i))
                .collect();
            again.extend(bad);
            batches.extend(rows.into_iter().map(|b| (b, kept.clone())));
        }
        again.sort_by_key(|(i, _)| *i);
        for (i, message) in again {
            let e = &entries[i];
            let rejected = Rejected {
                stream: stream.to_string(),
                position: Some(position(e.end)),
                message: format!("replay: {message} (first failure: {})", e.record.message),
                location: e.record.location.clone(),
                raw: e.record.raw.clone().unwrap_or_default().into_bytes(),
                headers: e.headers.clone(),
            };
            ctx.reject(rejected)
                .await
                .map_err(|_| ConnectorError::fatal("the pipeline is stopping"))?;
        }
        // One batch per schema the records came out with; the last one carries the end.
        let mut start = p.start;
        let count = batches.len();
        for (i, (data, kept)) in batches.into_iter().enumerate() {
            let stop = if i + 1 == count { end } else { start };
            let mut meta = BatchMeta::new(stream.into(), position(start), position(stop), 0);
            if ctx.wants_row_meta() && kept.len() == data.num_rows() {
                // A row the sink refuses again keeps its place and carries its attempts on.
                meta.rows = Some(
                    kept.iter()
                        .map(|i| {
                            let e = &entries[*i];
                            tributary_core::RowMeta {
                                headers: e.headers.clone(),
                                origin: e.record.position.clone(),
                                location: e.record.location.clone(),
                                ..Default::default()
                            }
                        })
                        .collect(),
                );
            }
            ctx.emit(Batch { data, meta })
                .await
                .map_err(|_| ConnectorError::fatal("the pipeline is stopping"))?;
            start = stop;
        }
        if count == 0 {
            let schema: SchemaRef = Arc::new(p.schema.clone().unwrap_or_else(Schema::empty));
            let meta = BatchMeta::new(stream.into(), position(p.start), position(end), 0);
            ctx.emit(Batch {
                data: RecordBatch::new_empty(schema),
                meta,
            })
            .await
            .map_err(|_| ConnectorError::fatal("the pipeline is stopping"))?;
        }
        p.start = end;
        Ok(())
    }

    /// Parses CSV records against the stream's schema, each on its own.
    fn parse_csv(
        &self,
        schema: Option<&Schema>,
        records: &[(usize, Vec<u8>)],
    ) -> (Vec<RecordBatch>, Vec<(usize, String)>) {
        let csv = self.csv.as_ref().expect("a CSV pipeline");
        let Some(schema) = schema else {
            let why = "the stream has no recorded schema to parse the CSV record with";
            return (
                Vec::new(),
                records.iter().map(|(i, _)| (*i, why.to_string())).collect(),
            );
        };
        let schema = Arc::new(schema.clone());
        let nulls = csv
            .nulls
            .iter()
            .map(|n| regex_escape(n))
            .collect::<Vec<_>>()
            .join("|");
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, raw) in records {
            let mut builder = arrow_csv::ReaderBuilder::new(schema.clone())
                .with_header(false)
                .with_delimiter(csv.delimiter)
                .with_quote(csv.quote);
            if let Ok(re) = regex_lite_null(&nulls) {
                builder = builder.with_null_regex(re);
            }
            let parsed = builder
                .build(std::io::Cursor::new(raw.clone()))
                .map_err(|e| e.to_string())
                .and_then(|mut r| match r.next() {
                    Some(Ok(b)) if b.num_rows() == 1 => Ok(b),
                    Some(Ok(b)) => Err(format!("expected one record, found {}", b.num_rows())),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("empty record".to_string()),
                });
            match parsed {
                Ok(b) => good.push(b),
                Err(message) => bad.push((*i, message)),
            }
        }
        let batch = arrow_select::concat::concat_batches(&schema, &good).ok();
        (batch.into_iter().collect(), bad)
    }
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The null regex for arrow-csv: the whole field equals one of the null tokens (or is empty).
fn regex_lite_null(alternatives: &str) -> Result<regex::Regex, regex::Error> {
    if alternatives.is_empty() {
        regex::Regex::new("^$")
    } else {
        regex::Regex::new(&format!("^(?:{alternatives})$"))
    }
}
