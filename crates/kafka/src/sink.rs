//! The Kafka sink: rows → messages, acknowledged by delivery reports.
//!
//! Each row becomes one message: the value from the row (`json`, `string` or `raw`), the key
//! and the headers from templates or fields, the topic from a template (`cdc.{table}`).
//! Messages go to a librdkafka [`ThreadedProducer`] (idempotent by default: `acks=all`, no
//! duplicates or reordering from its own retries); its polling thread runs the delivery
//! callback, which counts outstanding messages down and keeps the failures.
//!
//! **Durability.** A write enqueues and returns `Buffered`; [`Sink::flush`] (the runtime's
//! `commit_interval`, the end of the run) waits until every message produced so far has a
//! delivery report, and only then does the runtime commit the source position. When
//! `max_unacked` messages are outstanding, a write waits the same way and reports `Durable`.
//! A crash before that replays the batches from the last commit: at-least-once, duplicates
//! bounded by what was produced since the last commit.
//!
//! **Failures** come back from the delivery reports and are sorted by class
//! ([`crate::error`]): a record-level failure (message too large, invalid topic name) is handed
//! to the runtime through [`Sink::take_rejected`] and dead-lettered with the reason before the
//! position after it commits; a transient one (delivery timed out while a broker was away) is
//! produced again and `flush` reports a transient error, so the runtime's retry policy paces
//! and bounds the retries; a fatal one (fenced, authorization, lost idempotent sequence)
//! stops the run.
//!
//! **Exactly-once** (`delivery: exactly_once`). The producer is transactional
//! (`transactional.id`, default `tributary-<pipeline>`; `init_transactions` on open fences a
//! zombie with the same id). Writes open a transaction; [`Sink::flush`] produces, into the same
//! transaction, each stream's end position to the positions topic ([`crate::positions`]) and
//! commits: the messages and the positions they reach become visible together or not at all.
//! On open the sink reads the positions back ([`Sink::stored_positions`]) and the runtime
//! resumes from them, so a crash between the commit and the runtime's own state store repeats
//! nothing. A transaction that must abort (a delivery failed) is aborted and its batches,
//! kept until the commit, are produced again in a new one, without the rows a delivery refused
//! for good (dead letters); the flush reports a transient error so the runtime's retry policy
//! paces it. A fenced producer stops the run. Consumers see the guarantee only with
//! `isolation.level=read_committed` (tansu does not filter aborted records: docs/kafka.md).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{ConnectorError, ErrorClass};
use tributary_core::{Batch, Position, Sink, WriteOutcome};

use crate::config::{Delivery, KafkaSinkConfig, KeyConfig, ValueFormat};
use crate::error::{classify_code, client, KafkaConnectorError};
use crate::template::{column_names, Bound, ColumnText, Template};

/// A message kept for a retry or a dead letter (copied out of a failed delivery report).
#[derive(Clone, Debug)]
struct OwnedRecord {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    opaque: usize,
}

#[derive(Debug)]
struct Failure {
    error: KafkaError,
    record: OwnedRecord,
}

/// Shared between the sink and librdkafka's polling thread.
#[derive(Default)]
struct Deliveries {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    idle: Notify,
}

impl Deliveries {
    fn done(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// The producer's context: logs client errors, records delivery reports.
struct DeliveryContext {
    deliveries: Arc<Deliveries>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka producer");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_to_tracing(level, fac, log_message);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let Err((error, message)) = result {
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            let record = OwnedRecord {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
                opaque,
            };
            let mut failures = self
                .deliveries
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            failures.push(Failure {
                error: error.clone(),
                record,
            });
        }
        self.deliveries.done();
    }
}

/// How the key is made.
enum KeySpec {
    Template(Template),
    Fields(Vec<String>),
    /// `key: primary_key`: the columns the batch's schema names as its primary key.
    PrimaryKey,
}

/// One column of a key.
struct KeyField<'a> {
    name: String,
    col: ColumnText<'a>,
    /// In a change envelope, the `after` struct (null for a delete) and the key column in
    /// `before`, which the key is taken from when `after` is null.
    before: Option<(&'a ArrayRef, ColumnText<'a>)>,
}

impl KeyField<'_> {
    fn at(&self, row: usize) -> &ColumnText<'_> {
        match &self.before {
            Some((after, before)) if after.is_null(row) => before,
            _ => &self.col,
        }
    }
}

/// A batch whose messages may still fail: its stream and start position name dead letters.
struct InFlightBatch {
    seq: u32,
    stream: Arc<str>,
    start: Position,
}

/// The opaque of a position record (exactly-once): not a row of any batch.
const POSITION_OPAQUE: usize = usize::MAX;

/// The open transaction of an exactly-once sink.
#[derive(Default)]
struct Txn {
    /// A transaction is open on the producer.
    open: bool,
    /// The batches produced in it, with their sequence numbers: produced again if it aborts.
    batches: Vec<(u32, Batch)>,
    /// Per stream: the end position of its last batch in the transaction.
    ends: BTreeMap<String, Position>,
    /// Rows refused for good while it was open (opaques): left out when produced again.
    skip: HashSet<usize>,
    /// The positions are produced into the open transaction.
    positions_produced: bool,
}

/// Writes rows to Kafka topics. See the [module docs](self).
pub struct KafkaSink {
    config: KafkaSinkConfig,
    brokers: String,
    topic: Template,
    key: Option<KeySpec>,
    headers: Vec<(String, Template)>,
    producer: Option<ThreadedProducer<DeliveryContext>>,
    deliveries: Arc<Deliveries>,
    /// Messages produced since everything was last acknowledged.
    unacked: usize,
    batches: VecDeque<InFlightBatch>,
    next_seq: u32,
    /// Messages whose delivery failed with a transient error: produced again.
    retry: Vec<OwnedRecord>,
    /// The last transient delivery failure, for the error message.
    retry_reason: String,
    /// Flushes in a row that ended with undelivered messages.
    stalled_flushes: u32,
    rejected: Vec<Rejected>,
    pipeline: String,
    /// `Some` with `delivery: exactly_once`.
    txn: Option<Txn>,
    /// The positions read from the positions topic on open (exactly-once).
    stored: Vec<(String, Position)>,
    /// `format: avro | json_schema`: the value schemas registered per topic.
    schemas: Option<crate::registry::SinkSchemas>,
}

impl KafkaSink {
    /// Builds the sink (no connection yet: that happens in `check` or `open`).
    pub fn new(config: KafkaSinkConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let brokers = config.brokers.resolve("sink.brokers")?;
        let parse = |field: &str, t: &str| {
            Template::parse(t).map_err(|e| ConfigError::Value {
                field: field.to_string(),
                message: e.to_string(),
            })
        };
        let topic = parse("sink.topic", &config.topic)?;
        let key = match &config.key {
            None => None,
            Some(KeyConfig::Template(t)) if t == "primary_key" => Some(KeySpec::PrimaryKey),
            Some(KeyConfig::Template(t)) => {
                let t = parse("sink.key", t)?;
                if t.is_constant() {
                    return Err(ConfigError::Value {
                        field: "sink.key".into(),
                        message: format!(
                            "{:?} names no field: write `key: [{}]` for a column, or a \
                             template like \"{{id}}\"",
                            config.key_template_text(),
                            config.key_template_text()
                        ),
                    });
                }
                Some(KeySpec::Template(t))
            }
            Some(KeyConfig::Fields(f)) => Some(KeySpec::Fields(f.clone())),
        };
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), parse(&format!("sink.headers.{k}"), v)?)))
            .collect::<Result<_, ConfigError>>()?;
        let exactly_once = config.delivery == Delivery::ExactlyOnce;
        let schemas = match (&config.registry, config.format.uses_registry()) {
            (Some(r), true) => Some(crate::registry::SinkSchemas::new(config.format, r)?),
            _ => None,
        };
        Ok(KafkaSink {
            config,
            brokers,
            topic,
            key,
            headers,
            producer: None,
            deliveries: Arc::new(Deliveries::default()),
            unacked: 0,
            batches: VecDeque::new(),
            next_seq: 0,
            retry: Vec::new(),
            retry_reason: String::new(),
            stalled_flushes: 0,
            rejected: Vec::new(),
            pipeline: String::new(),
            txn: exactly_once.then(Txn::default),
            stored: Vec::new(),
            schemas,
        })
    }

    fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let c = &self.config;
        let mut cc = ClientConfig::new();
        let client_id = if self.pipeline.is_empty() {
            "tributary".to_string()
        } else {
            format!("tributary-{}", self.pipeline)
        };
        cc.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("enable.idempotence", c.idempotence.to_string())
            .set("acks", &c.acks)
            .set("compression.codec", c.compression.as_str())
            .set("linger.ms", c.linger.as_millis().to_string())
            .set("batch.size", c.batch_bytes.to_string())
            .set("batch.num.messages", c.batch_messages.to_string())
            .set(
                "message.timeout.ms",
                c.delivery_timeout.as_millis().to_string(),
            )
            .set("partitioner", c.partitioner.as_str());
        if let Some(level) = c.compression_level {
            cc.set("compression.level", level.to_string());
        }
        if c.delivery == Delivery::ExactlyOnce {
            cc.set("transactional.id", self.transactional_id()).set(
                "transaction.timeout.ms",
                c.transaction_timeout.as_millis().to_string(),
            );
        }
        for (k, v) in &c.options {
            cc.set(k, v.resolve(&format!("sink.options.{k}"))?);
        }
        Ok(cc)
    }

    /// The producer's `transactional.id` (exactly-once).
    fn transactional_id(&self) -> String {
        self.config
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("tributary-{}", self.pipeline))
    }

    /// Creates the producer and asks the brokers for metadata, so that a wrong address fails
    /// at once with a clear message instead of after `delivery_timeout`.
    async fn create_producer(&self) -> Result<ThreadedProducer<DeliveryContext>, ConnectorError> {
        let cc = self
            .client_config()
            .map_err(|e| ConnectorError::fatal(e.to_string()))?;
        let context = DeliveryContext {
            deliveries: self.deliveries.clone(),
        };
        let topic = self.topic.constant();
        let brokers = self.brokers.clone();
        let transactional = (self.txn.is_some()).then(|| self.transactional_id());
        let init_timeout = self.config.transaction_timeout;
        tokio::task::spawn_blocking(move || {
            let producer: ThreadedProducer<DeliveryContext> = cc
                .create_with_context(context)
                .map_err(client("create the Kafka producer"))?;
            producer
                .client()
                .fetch_metadata(topic.as_deref(), Duration::from_secs(10))
                .map_err(client(format!("reach the Kafka brokers {brokers}")))?;
            if let Some(id) = transactional {
                // Fences any earlier producer with this id and aborts its open transaction.
                producer
                    .init_transactions(init_timeout)
                    .map_err(client(format!(
                        "initialise transactions (transactional.id {id})"
                    )))?;
            }
            Ok::<_, KafkaConnectorError>(producer)
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Kafka producer thread: {e}")))?
        .map_err(|e| {
            ConnectorError::from(e).with_hint("is the broker running and `brokers` right?")
        })
    }

    /// Makes sure a producer exists, replacing one that stopped delivering.
    ///
    /// After two flushes in a row ended with undelivered messages, the producer is dropped and
    /// created again. A broker that lost its idempotent-producer state (tansu with memory
    /// storage after a restart; any broker whose producer-state was deleted) never accepts the
    /// old producer id again: librdkafka retries until the messages time out, forever. A new
    /// producer gets a new id. The messages are produced again in their original order
    /// (at-least-once: some may have been written before the outage).
    async fn ensure_producer(&mut self) -> Result<(), ConnectorError> {
        // A transactional producer is not replaced: an aborted transaction is produced again
        // on the same producer instead (see the module docs).
        if self.stalled_flushes >= 2 && self.producer.is_some() && self.txn.is_none() {
            tracing::warn!(
                flushes = self.stalled_flushes,
                "the Kafka producer delivered nothing in two flushes: creating it again"
            );
            let old = self.producer.take();
            // Dropping joins librdkafka's threads; nothing is queued (every message has its
            // report), so this is quick.
            blocking(move || drop(old));
            self.stalled_flushes = 0;
        }
        if self.producer.is_none() {
            self.producer = Some(self.create_producer().await?);
        }
        Ok(())
    }

    fn producer(&self) -> &ThreadedProducer<DeliveryContext> {
        self.producer.as_ref().expect("open() creates the producer")
    }

    fn check_fatal(&self) -> Result<(), ConnectorError> {
        if let Some((code, reason)) = self.producer().client().fatal_error() {
            return Err(KafkaConnectorError::Fatal { code, reason }.into());
        }
        Ok(())
    }

    /// Enqueues one message, waiting while librdkafka's queue is full (this blocks: writes run
    /// in [`blocking`]). `Ok(Err(reason))`: the record can never be produced (dead letter).
    fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        opaque: usize,
    ) -> Result<Result<(), String>, ConnectorError> {
        loop {
            let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, opaque);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (name, value) in headers {
                    h = h.insert(Header {
                        key: name,
                        value: Some(*value),
                    });
                }
                record = record.headers(h);
            }
            self.deliveries.outstanding.fetch_add(1, Ordering::AcqRel);
            let error = match self.producer().send(record) {
                Ok(()) => return Ok(Ok(())),
                Err((error, _)) => error,
            };
            self.deliveries.done();
            match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's queue is full: serve delivery reports until it drains.
                    self.producer().poll(Duration::from_millis(10));
                    continue;
                }
                Some(code) if classify_code(code) == ErrorClass::Record => {
                    return Ok(Err(format!("topic {topic}: {error}")));
                }
                _ => {
                    return Err(KafkaConnectorError::Client {
                        what: format!("produce to topic {topic}"),
                        source: error,
                    }
                    .into())
                }
            }
        }
    }

    fn reject(&mut self, opaque: usize, message: String, raw: Option<Vec<u8>>) {
        let seq = (opaque >> 32) as u32;
        let row = opaque & 0xffff_ffff;
        let (stream, position) = match self.batches.iter().find(|b| b.seq == seq) {
            Some(b) => (b.stream.to_string(), Some(b.start.clone())),
            None => (String::new(), None),
        };
        self.rejected.push(Rejected {
            location: Some(format!("{stream} batch row {row}")),
            stream,
            position,
            message,
            raw: raw.unwrap_or_default(),
            headers: Vec::new(),
        });
    }

    /// Waits until every produced message has a delivery report (or a fatal error).
    async fn wait_idle(&self) -> Result<(), ConnectorError> {
        loop {
            let idle = self.deliveries.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.deliveries.outstanding.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = &mut idle => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => self.check_fatal()?,
            }
        }
    }

    /// The failed deliveries reported so far (taken).
    fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(
            &mut *self
                .deliveries
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Sorts the failed deliveries: dead letters, retries, or a fatal error.
    fn collect_failures(&mut self) -> Result<(), ConnectorError> {
        let failures = self.take_failures();
        for Failure { error, record } in failures {
            let class = error
                .rdkafka_error_code()
                .map_or(ErrorClass::Transient, classify_code);
            match class {
                ErrorClass::Record => {
                    let message = format!("topic {}: {error}", record.topic);
                    self.reject(record.opaque, message, record.payload);
                }
                ErrorClass::Transient => {
                    tracing::debug!(topic = %record.topic, error = %error, "delivery failed; will produce again");
                    self.retry_reason = format!("topic {}: {error}", record.topic);
                    self.retry.push(record);
                }
                ErrorClass::Fatal => {
                    return Err(KafkaConnectorError::Client {
                        what: format!("deliver to topic {}", record.topic),
                        source: error,
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    /// Produces the messages that failed transiently again, in their original order.
    fn produce_retries(&mut self) -> Result<(), ConnectorError> {
        if self.retry.is_empty() {
            return Ok(());
        }
        let mut retry = std::mem::take(&mut self.retry);
        retry.sort_by_key(|r| r.opaque);
        tracing::info!(
            messages = retry.len(),
            "producing undelivered messages again"
        );
        for r in retry {
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let produced = self.produce(
                &r.topic,
                r.key.as_deref(),
                r.payload.as_deref(),
                &headers,
                r.opaque,
            )?;
            if let Err(reason) = produced {
                self.reject(r.opaque, reason, r.payload.clone());
            }
        }
        Ok(())
    }

    /// Waits for every delivery report. `Ok(true)`: everything produced so far is durable
    /// (or refused and handed back as a dead letter); `Ok(false)`: some messages must be
    /// produced again.
    async fn settle(&mut self) -> Result<bool, ConnectorError> {
        self.ensure_producer().await?;
        blocking(|| self.produce_retries())?;
        self.wait_idle().await?;
        self.check_fatal()?;
        self.collect_failures()?;
        if !self.retry.is_empty() {
            return Ok(false);
        }
        self.batches.clear();
        self.unacked = 0;
        Ok(true)
    }

    /// Turns a batch into messages and enqueues them (blocking while the queue is full).
    fn produce_batch(&mut self, batch: &Batch, seq: u32) -> Result<(), ConnectorError> {
        self.produce_retries()?;
        if batch.num_rows() == 0 {
            // Nothing to produce, and maybe no columns to key by (an MQTT batch of skipped
            // retained messages, a CDC batch of only a commit): its position moves with the
            // next settle like any other.
            return Ok(());
        }
        let stream = batch.meta.stream.clone();
        let encoded = self
            .encode(&batch.data, &stream)
            .map_err(|m| Self::encode_error(&stream, m))?;
        let constant_topic = self.topic.constant();
        let mut s = Scratch::default();
        let mut refused = Vec::new();
        let skip = self
            .txn
            .as_ref()
            .map(|t| t.skip.clone())
            .unwrap_or_default();
        for row in 0..batch.num_rows() {
            let opaque = ((seq as usize) << 32) | row;
            if skip.contains(&opaque) {
                continue;
            }
            let (has_key, has_value) = match encoded.row(row, &mut s) {
                Ok(v) => v,
                Err(reason) => {
                    let raw = match &encoded.values {
                        Values::Json { bytes, ranges } => bytes[ranges[row].clone()].to_vec(),
                        Values::Framed { bytes, ranges } => match &ranges[row] {
                            Ok(r) => bytes[r.clone()].to_vec(),
                            Err(_) => Vec::new(),
                        },
                        Values::Column(_) => s.value.clone(),
                    };
                    refused.push((opaque, reason, raw));
                    continue;
                }
            };
            let topic = match &constant_topic {
                Some(t) => t.as_str(),
                None => match std::str::from_utf8(&s.topic) {
                    Ok(t) => t,
                    Err(_) => {
                        refused.push((opaque, "topic: not UTF-8".to_string(), Vec::new()));
                        continue;
                    }
                },
            };
            let value: Option<&[u8]> = match &encoded.values {
                Values::Json { bytes, ranges } => Some(&bytes[ranges[row].clone()]),
                Values::Framed { bytes, ranges } => {
                    ranges[row].as_ref().ok().map(|r| &bytes[r.clone()])
                }
                Values::Column(_) => has_value.then_some(s.value.as_slice()),
            };
            let headers: Vec<(&str, &[u8])> = encoded
                .headers
                .iter()
                .zip(&s.headers)
                .filter(|(_, v)| !v.is_empty())
                .map(|((name, _), v)| (*name, v.as_slice()))
                .collect();
            let key = has_key.then_some(s.key.as_slice());
            if let Err(reason) = self.produce(topic, key, value, &headers, opaque)? {
                refused.push((
                    opaque,
                    reason,
                    value.map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
        }
        drop(encoded);
        for (opaque, reason, raw) in refused {
            self.reject(opaque, reason, Some(raw));
        }
        Ok(())
    }

    /// Commits one small transaction (a tombstone for a key no stream uses) so that a broker
    /// without transactions fails the run at start, with a message saying so, rather than
    /// at its first commit.
    async fn probe_transactions(&mut self) -> Result<(), ConnectorError> {
        self.begin()?;
        let topic = self.config.positions_topic.clone();
        let key = crate::positions::key(&self.pipeline, "");
        blocking(|| self.produce(&topic, Some(&key), None, &[], POSITION_OPAQUE))?
            .map_err(|reason| ConnectorError::fatal(format!("{topic}: {reason}")))?;
        let timeout = self.config.transaction_timeout;
        let committed = blocking(|| self.producer().commit_transaction(timeout));
        self.txn.as_mut().expect("exactly-once").open = false;
        committed.map_err(|e| {
            let unsupported = e.to_string().contains("not supported by broker");
            let error = self.transaction_error("commit a first transaction", e);
            if unsupported {
                error.with_hint(
                    "the broker does not support Kafka transactions (tansu 0.6 has no EndTxn): \
                     use `delivery: at_least_once`, or a broker with transactions (Kafka ≥ 0.11, \
                     Redpanda)",
                )
            } else {
                error
            }
        })?;
        self.wait_idle().await?;
        self.take_failures();
        Ok(())
    }

    /// Opens a transaction unless one is open (exactly-once).
    fn begin(&mut self) -> Result<(), ConnectorError> {
        if self.txn.as_ref().is_none_or(|t| t.open) {
            return Ok(());
        }
        self.producer()
            .begin_transaction()
            .map_err(|e| self.transaction_error("begin a transaction", e))?;
        self.txn.as_mut().expect("exactly-once").open = true;
        Ok(())
    }

    fn transaction_error(&self, what: &str, e: KafkaError) -> ConnectorError {
        let fenced = matches!(&e, KafkaError::Transaction(r) if r.is_fatal())
            || self.producer().client().fatal_error().is_some();
        let error = ConnectorError::from(KafkaConnectorError::Client {
            what: what.to_string(),
            source: e,
        });
        if fenced {
            error.with_hint(format!(
                "another producer with transactional.id {} took over (a second process of this \
                 pipeline?); this one stops",
                self.transactional_id()
            ))
        } else {
            error
        }
    }

    /// Produces the positions the open transaction reaches and commits it (exactly-once).
    async fn commit(&mut self) -> Result<(), ConnectorError> {
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        if !txn.open {
            return Ok(());
        }
        if !txn.positions_produced {
            let topic = self.config.positions_topic.clone();
            let records: Vec<(Vec<u8>, String)> = txn
                .ends
                .iter()
                .map(|(stream, p)| {
                    (
                        crate::positions::key(&self.pipeline, stream),
                        p.to_json_string(),
                    )
                })
                .collect();
            for (key, value) in records {
                let produced = blocking(|| {
                    self.produce(
                        &topic,
                        Some(&key),
                        Some(value.as_bytes()),
                        &[],
                        POSITION_OPAQUE,
                    )
                })?;
                if let Err(reason) = produced {
                    return Err(ConnectorError::fatal(format!(
                        "the positions topic {topic} refused a position: {reason}"
                    )));
                }
            }
            self.txn.as_mut().expect("exactly-once").positions_produced = true;
        }
        let timeout = self.config.transaction_timeout;
        match blocking(|| self.producer().commit_transaction(timeout)) {
            Ok(()) => {
                self.wait_idle().await?;
                self.take_failures();
                let txn = self.txn.as_mut().expect("exactly-once");
                txn.open = false;
                txn.positions_produced = false;
                txn.batches.clear();
                txn.ends.clear();
                txn.skip.clear();
                self.batches.clear();
                self.unacked = 0;
                Ok(())
            }
            Err(e) => self.after_failed_commit(e).await,
        }
    }

    /// A commit failed: a fatal error stops the run, a retriable one is retried by the
    /// runtime, anything else aborts the transaction and produces its batches again in a new
    /// one (without the rows a delivery refused for good).
    async fn after_failed_commit(&mut self, e: KafkaError) -> Result<(), ConnectorError> {
        let (fatal, retriable) = match &e {
            KafkaError::Transaction(r) => (r.is_fatal(), r.is_retriable()),
            _ => (false, false),
        };
        if fatal || self.producer().client().fatal_error().is_some() {
            return Err(self.transaction_error("commit the transaction", e));
        }
        if retriable {
            return Err(ConnectorError::transient(format!(
                "commit the Kafka transaction: {e} (tried again)"
            )));
        }
        let timeout = self.config.transaction_timeout;
        blocking(|| self.producer().abort_transaction(timeout))
            .map_err(|e| self.transaction_error("abort the transaction", e))?;
        self.wait_idle().await?;
        let failures = self.take_failures();
        for Failure { error, record } in failures {
            let class = error
                .rdkafka_error_code()
                .map_or(ErrorClass::Transient, classify_code);
            if class == ErrorClass::Record && record.opaque != POSITION_OPAQUE {
                self.txn
                    .as_mut()
                    .expect("exactly-once")
                    .skip
                    .insert(record.opaque);
                let message = format!("topic {}: {error}", record.topic);
                self.reject(record.opaque, message, record.payload);
            }
        }
        let txn = self.txn.as_mut().expect("exactly-once");
        txn.open = false;
        txn.positions_produced = false;
        let batches = std::mem::take(&mut txn.batches);
        tracing::warn!(error = %e, batches = batches.len(), "the Kafka transaction aborted: producing its batches again in a new one");
        self.begin()?;
        for (seq, batch) in &batches {
            blocking(|| self.produce_batch(batch, *seq))?;
        }
        self.txn.as_mut().expect("exactly-once").batches = batches;
        Err(ConnectorError::transient(format!(
            "the Kafka transaction aborted ({e}); its messages were produced again in a new one"
        )))
    }

    /// Registers (or finds) the value schema of the batch's rows for every topic they go to
    /// (`format: avro | json_schema`), so that encoding only reads the cache.
    async fn register_schemas(&mut self, batch: &Batch) -> Result<(), ConnectorError> {
        if self.schemas.is_none() || batch.num_rows() == 0 {
            return Ok(());
        }
        let stream = batch.meta.stream.to_string();
        let topics: Vec<String> = match self.topic.constant() {
            Some(t) => vec![t],
            None => {
                let bound = self
                    .topic
                    .bind(&batch.data, &stream)
                    .map_err(|m| Self::encode_error(&stream, format!("topic: {m}")))?;
                let mut seen = std::collections::BTreeSet::new();
                let mut buf = Vec::new();
                for row in 0..batch.num_rows() {
                    // A row whose topic does not render is refused when it is produced.
                    if bound.render(row, &mut buf).is_ok() {
                        if let Ok(t) = std::str::from_utf8(&buf) {
                            if !seen.contains(t) {
                                seen.insert(t.to_string());
                            }
                        }
                    }
                }
                seen.into_iter().collect()
            }
        };
        let schema = batch.data.schema();
        let schemas = self.schemas.as_mut().expect("checked above");
        for topic in topics {
            schemas.ensure(&topic, &stream, &schema).await?;
        }
        Ok(())
    }

    fn encode_error(stream: &str, message: String) -> ConnectorError {
        KafkaConnectorError::Encode {
            stream: stream.to_string(),
            message,
        }
        .into()
    }
}

impl KafkaSinkConfig {
    fn key_template_text(&self) -> String {
        match &self.key {
            Some(KeyConfig::Template(t)) => t.clone(),
            _ => String::new(),
        }
    }
}

/// The value of every row of a batch.
enum Values<'a> {
    Json {
        bytes: Vec<u8>,
        ranges: Vec<std::ops::Range<usize>>,
    },
    /// Schema-registry formats: each row's message (header and payload), or why the row
    /// cannot be written (a dead letter).
    Framed {
        bytes: Vec<u8>,
        ranges: Vec<Result<std::ops::Range<usize>, String>>,
    },
    Column(ColumnText<'a>),
}

/// Everything a batch needs to become messages.
struct Encoded<'a> {
    values: Values<'a>,
    topic: Option<Bound<'a>>,
    key_template: Option<Bound<'a>>,
    key_fields: Vec<KeyField<'a>>,
    headers: Vec<(&'a str, Bound<'a>)>,
}

impl KafkaSink {
    /// Each row in Confluent's wire format with the schema registered for its topic.
    fn encode_framed<'a>(&self, batch: &RecordBatch, stream: &str) -> Result<Values<'a>, String> {
        use tributary_formats::{avro::Encoder, confluent};
        let schemas = self
            .schemas
            .as_ref()
            .expect("registry formats have a registry");
        let schema = batch.schema();
        let constant = self.topic.constant();
        let bound = match &constant {
            Some(_) => None,
            None => Some(
                self.topic
                    .bind(batch, stream)
                    .map_err(|e| format!("topic: {e}"))?,
            ),
        };
        let json = match self.config.format {
            ValueFormat::JsonSchema => Some(
                tributary_formats::json::encode_rows(batch, self.config.explicit_nulls)
                    .map_err(|e| format!("cannot encode rows as JSON: {e}"))?,
            ),
            _ => None,
        };
        let rows = (self.config.format == ValueFormat::Avro).then(|| Encoder::rows(batch));
        // Protobuf: the batch's columns cast once per registered encoder (one per topic).
        let mut prepared: Vec<(
            Arc<crate::registry::Registered>,
            crate::protobuf::PreparedRows,
        )> = Vec::new();
        let mut bytes = Vec::with_capacity(batch.get_array_memory_size() / 2 + 64);
        let mut ranges = Vec::with_capacity(batch.num_rows());
        let mut topic_buf = Vec::new();
        for row in 0..batch.num_rows() {
            let topic = match (&constant, &bound) {
                (Some(t), _) => t.as_str(),
                (None, Some(b)) => {
                    if let Err(e) = b.render(row, &mut topic_buf) {
                        ranges.push(Err(format!("topic: {e}")));
                        continue;
                    }
                    match std::str::from_utf8(&topic_buf) {
                        Ok(t) => t,
                        Err(_) => {
                            ranges.push(Err("topic: not UTF-8".into()));
                            continue;
                        }
                    }
                }
                (None, None) => unreachable!("a template is constant or bound"),
            };
            let Some(registered) = schemas.get(topic, &schema) else {
                ranges.push(Err(format!("topic {topic}: no value schema registered")));
                continue;
            };
            let start = bytes.len();
            confluent::write_header(registered.id, &mut bytes);
            match (&json, &rows, &registered.encoder, &registered.proto) {
                (Some((j, r)), ..) => {
                    let text = &j[r[row].clone()];
                    if let Some(v) = &registered.validator {
                        let checked = serde_json::from_slice::<serde_json::Value>(text)
                            .map_err(|e| e.to_string())
                            .and_then(|doc| v.validate(&doc));
                        if let Err(e) = checked {
                            bytes.truncate(start);
                            ranges.push(Err(format!(
                                "the row does not match the JSON Schema (id {}): {e}",
                                registered.id
                            )));
                            continue;
                        }
                    }
                    bytes.extend_from_slice(text);
                }
                (None, Some(rows), Some(encoder), _) => {
                    if let Err(e) = encoder.encode_row(rows, row, &mut bytes) {
                        bytes.truncate(start);
                        ranges.push(Err(format!("cannot encode the row as Avro: {e}")));
                        continue;
                    }
                }
                (None, None, _, Some(proto)) => {
                    let at = match prepared
                        .iter()
                        .position(|(r, _)| Arc::ptr_eq(r, registered))
                    {
                        Some(at) => at,
                        None => {
                            prepared.push((
                                registered.clone(),
                                proto
                                    .prepare(batch)
                                    .map_err(|e| format!("cannot encode rows as Protobuf: {e}"))?,
                            ));
                            prepared.len() - 1
                        }
                    };
                    crate::protobuf::write_indexes(proto.path(), &mut bytes);
                    if let Err(e) = proto.encode_row(&prepared[at].1, row, &mut bytes) {
                        bytes.truncate(start);
                        ranges.push(Err(format!("cannot encode the row as Protobuf: {e}")));
                        continue;
                    }
                }
                _ => unreachable!("Avro and Protobuf schemas have an encoder"),
            }
            ranges.push(Ok(start..bytes.len()));
        }
        Ok(Values::Framed { bytes, ranges })
    }

    fn encode<'a>(&'a self, batch: &'a RecordBatch, stream: &str) -> Result<Encoded<'a>, String> {
        let values = match self.config.format {
            ValueFormat::Json => {
                let (bytes, ranges) =
                    tributary_formats::json::encode_rows(batch, self.config.explicit_nulls)
                        .map_err(|e| format!("cannot encode rows as JSON: {e}"))?;
                Values::Json { bytes, ranges }
            }
            ValueFormat::Avro | ValueFormat::JsonSchema | ValueFormat::Protobuf => {
                self.encode_framed(batch, stream)?
            }
            ValueFormat::String | ValueFormat::Raw => {
                let name = &self.config.value_field;
                let col = batch.column_by_name(name).ok_or_else(|| {
                    format!(
                        "no column `{name}` for the message value (value_field; columns: {})",
                        column_names(batch)
                    )
                })?;
                Values::Column(ColumnText::new(col)?)
            }
        };
        let topic = if self.topic.is_constant() {
            None
        } else {
            Some(
                self.topic
                    .bind(batch, stream)
                    .map_err(|e| format!("topic: {e}"))?,
            )
        };
        let mut key_template = None;
        let mut key_fields = Vec::new();
        match &self.key {
            None => {}
            Some(KeySpec::Template(t)) => {
                key_template = Some(t.bind(batch, stream).map_err(|e| format!("key: {e}"))?)
            }
            Some(KeySpec::Fields(fields)) => {
                for f in fields {
                    let col = batch.column_by_name(f).ok_or_else(|| {
                        format!("key: no column `{f}` (columns: {})", column_names(batch))
                    })?;
                    key_fields.push(KeyField {
                        name: f.clone(),
                        col: ColumnText::new(col)?,
                        before: None,
                    });
                }
            }
            Some(KeySpec::PrimaryKey) => key_fields = primary_key_fields(batch, stream)?,
        }
        let headers = self
            .headers
            .iter()
            .map(|(name, t)| {
                t.bind(batch, stream)
                    .map(|b| (name.as_str(), b))
                    .map_err(|e| format!("headers.{name}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Encoded {
            values,
            topic,
            key_template,
            key_fields,
            headers,
        })
    }
}

/// The key columns of `key: primary_key`: those the schema's `tributary.primary_key`
/// metadata names, at the top level, or in a change envelope (`op`, `before`, `after`) from
/// `after`, and from `before` for a delete.
fn primary_key_fields<'a>(
    batch: &'a RecordBatch,
    stream: &str,
) -> Result<Vec<KeyField<'a>>, String> {
    use arrow_array::cast::AsArray;
    let schema = batch.schema_ref();
    let names = schema
        .metadata()
        .get(tributary_core::schema::PRIMARY_KEY_KEY)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            format!(
                "key: primary_key, but stream {stream} has no primary key (only database \
                 sources know one; name the key columns instead: `key: [id]`)"
            )
        })?;
    let envelope = match (
        batch.column_by_name("after"),
        batch.column_by_name("before"),
    ) {
        (Some(a), Some(b))
            if matches!(a.data_type(), DataType::Struct(_))
                && matches!(b.data_type(), DataType::Struct(_)) =>
        {
            Some((a, b))
        }
        _ => None,
    };
    let mut fields = Vec::new();
    for name in names.split(',') {
        let missing = || format!("key: primary key column `{name}` is not in stream {stream}");
        let field = match envelope {
            Some((after, before)) => {
                let in_after = after.as_struct().column_by_name(name).ok_or_else(missing)?;
                let in_before = before
                    .as_struct()
                    .column_by_name(name)
                    .ok_or_else(missing)?;
                KeyField {
                    name: name.to_string(),
                    col: ColumnText::new(in_after)?,
                    before: Some((after, ColumnText::new(in_before)?)),
                }
            }
            None => KeyField {
                name: name.to_string(),
                col: ColumnText::new(batch.column_by_name(name).ok_or_else(missing)?)?,
                before: None,
            },
        };
        fields.push(field);
    }
    Ok(fields)
}

/// Per-row scratch buffers, reused across rows.
#[derive(Default)]
struct Scratch {
    topic: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<Vec<u8>>,
}

impl Encoded<'_> {
    /// Fills `s` for row `row`. Returns (has key, has value) or why the row cannot be sent.
    fn row(&self, row: usize, s: &mut Scratch) -> Result<(bool, bool), String> {
        if let Values::Framed { ranges, .. } = &self.values {
            if let Err(reason) = &ranges[row] {
                return Err(reason.clone());
            }
        }
        if let Some(t) = &self.topic {
            t.render(row, &mut s.topic)
                .map_err(|e| format!("topic: {e}"))?;
        }
        let has_key = if let Some(t) = &self.key_template {
            t.render(row, &mut s.key).map_err(|e| format!("key: {e}"))?;
            true
        } else if let [field] = self.key_fields.as_slice() {
            let col = field.at(row);
            s.key.clear();
            col.write(row, &mut s.key);
            !col.is_null(row)
        } else if !self.key_fields.is_empty() {
            s.key.clear();
            s.key.push(b'{');
            for (i, field) in self.key_fields.iter().enumerate() {
                let (name, col) = (&field.name, field.at(row));
                if i > 0 {
                    s.key.push(b',');
                }
                serde_json::to_writer(&mut s.key, name).expect("writing to a Vec");
                s.key.push(b':');
                if col.is_null(row) {
                    s.key.extend_from_slice(b"null");
                } else if col.is_bare_json() {
                    col.write(row, &mut s.key);
                } else {
                    let start = s.key.len();
                    col.write(row, &mut s.key);
                    let text = String::from_utf8_lossy(&s.key[start..]).into_owned();
                    s.key.truncate(start);
                    serde_json::to_writer(&mut s.key, &text).expect("writing to a Vec");
                }
            }
            s.key.push(b'}');
            true
        } else {
            false
        };
        s.headers.resize_with(self.headers.len(), Vec::new);
        for ((_, t), out) in self.headers.iter().zip(s.headers.iter_mut()) {
            if t.render(row, out).is_err() {
                // A null field leaves the header out.
                out.clear();
            }
        }
        let has_value = match &self.values {
            Values::Json { .. } | Values::Framed { .. } => true,
            Values::Column(col) => {
                s.value.clear();
                col.write(row, &mut s.value);
                !col.is_null(row)
            }
        };
        Ok((has_key, has_value))
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka {} topic {}", self.brokers, self.config.topic)
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        self.create_producer().await.map(drop)
    }

    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        self.pipeline = pipeline.to_string();
        self.producer = Some(self.create_producer().await?);
        if self.txn.is_some() {
            // After init_transactions: no zombie can commit a position after this read.
            let brokers = self.brokers.clone();
            let topic = self.config.positions_topic.clone();
            let pipeline = pipeline.to_string();
            self.stored = tokio::task::spawn_blocking(move || {
                crate::positions::ensure_topic(&brokers, &topic)?;
                crate::positions::read(&brokers, &topic, &pipeline)
            })
            .await
            .map_err(|e| ConnectorError::fatal(format!("Kafka positions thread: {e}")))??;
            self.probe_transactions().await?;
        }
        Ok(())
    }

    async fn stored_positions(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        debug_assert!(self.stored.is_empty() || pipeline == self.pipeline);
        Ok(self.stored.clone())
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        self.ensure_producer().await?;
        self.check_fatal()?;
        let stream = batch.meta.stream.clone();
        self.register_schemas(batch).await?;
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.batches.push_back(InFlightBatch {
            seq,
            stream: stream.clone(),
            start: batch.meta.start.clone(),
        });
        if self.txn.is_some() {
            self.begin()?;
            blocking(|| self.produce_batch(batch, seq))?;
            let txn = self.txn.as_mut().expect("exactly-once");
            txn.batches.push((seq, batch.clone()));
            txn.ends.insert(stream.to_string(), batch.meta.end.clone());
            self.unacked += batch.num_rows();
            if self.unacked >= self.config.max_unacked.get() {
                self.commit().await?;
                return Ok(WriteOutcome::Durable);
            }
            return Ok(WriteOutcome::Buffered);
        }
        blocking(|| self.produce_batch(batch, seq))?;
        self.unacked += batch.num_rows();
        if self.unacked >= self.config.max_unacked.get() && self.settle().await? {
            return Ok(WriteOutcome::Durable);
        }
        Ok(WriteOutcome::Buffered)
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.txn.is_some() {
            return self.commit().await;
        }
        if self.producer.is_none() && self.retry.is_empty() {
            return Ok(());
        }
        if self.settle().await? {
            self.stalled_flushes = 0;
            return Ok(());
        }
        self.stalled_flushes += 1;
        Err(KafkaConnectorError::Undelivered {
            count: self.retry.len(),
            first: self.retry_reason.clone(),
        }
        .into())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn forget_positions(&mut self, pipeline: &str) -> Result<u64, ConnectorError> {
        if self.txn.is_none() {
            return Ok(0);
        }
        let brokers = self.brokers.clone();
        let topic = self.config.positions_topic.clone();
        let pipeline = pipeline.to_string();
        tokio::task::spawn_blocking(move || crate::positions::forget(&brokers, &topic, &pipeline))
            .await
            .map_err(|e| ConnectorError::fatal(format!("Kafka positions thread: {e}")))?
            .map_err(ConnectorError::from)
    }
}

/// Runs CPU-bound or briefly blocking work (encoding, enqueueing while librdkafka's queue is
/// full) without stalling other tasks on a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_gets_the_typed_settings() {
        let mut config = KafkaSinkConfig::new("127.0.0.1:9", "t");
        let sink = KafkaSink::new(config.clone()).expect("valid");
        let cc = sink.client_config().expect("valid");
        assert_eq!(cc.get("compression.codec"), Some("zstd"));
        assert_eq!(cc.get("compression.level"), None, "the codec's own default");
        config.compression = crate::config::Compression::Lz4;
        config.compression_level = Some(7);
        let sink = KafkaSink::new(config).expect("valid");
        let cc = sink.client_config().expect("valid");
        assert_eq!(cc.get("compression.codec"), Some("lz4"));
        assert_eq!(cc.get("compression.level"), Some("7"));
    }
}
