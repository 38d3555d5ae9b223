//! Dead letters into a Kafka topic (`dead_letter: { kind: kafka, topic: orders.dlq }`).
//!
//! Each dead letter becomes one message: the **value is the record's original bytes**, so a
//! consumer of the dead-letter topic (or `tributary dlq replay`) sees exactly what failed, and
//! the reason travels in headers:
//!
//! | header | value |
//! |---|---|
//! | `tributary.pipeline` | the pipeline |
//! | `tributary.stream` | the stream (for a Kafka source: the topic) |
//! | `tributary.error.class` | `record`, `transient` or `fatal` |
//! | `tributary.error.message` | what is wrong (names the field and value) |
//! | `tributary.location` | `file.csv:17`, `topic/3@1042` (when known) |
//! | `tributary.position` | the source position as JSON (when known) |
//! | `tributary.original.topic`, `.partition`, `.offset` | for records read from Kafka |
//! | `tributary.attempts` | how many times the record has failed (1: the first time) |
//! | `tributary.failed_at` | when it was dead-lettered (RFC 3339, UTC) |
//! | `tributary.first_failed_at` | when it first failed (RFC 3339, UTC) |
//! | `tributary.retry.not_before` | on a retry topic: when to try again (ms since the epoch) |
//!
//! ## Retry topics: non-blocking retries
//!
//! ```yaml
//! dead_letter:
//!   kind: kafka
//!   brokers: localhost:9092
//!   topic: orders.dlq
//!   retry:
//!     - { topic: orders.retry.1, delay: 1s }
//!     - { topic: orders.retry.2, delay: 30s }
//! ```
//!
//! With `retry`, a record's n-th failure goes to the n-th retry topic, stamped with
//! `tributary.retry.not_before` (now + its delay), and only a failure after the last retry
//! topic goes to `topic`, the dead-letter topic. A pipeline that reads the retry topics beside
//! its own (`topics: [orders, orders.retry.1, orders.retry.2]`) tries each record again once
//! its time has come: the Kafka source pauses a retry topic's partition until then, so the
//! main topic keeps flowing and a poison record never stalls its partition. The attempt
//! count, the first failure's time and the original topic, partition and offset travel with
//! the record in its headers, so the dead letter at the end still says where it came from.
//! This suits failures that may pass (a row referring to one not written yet, a constraint a
//! later fix relaxes); records that can never decode are the same on every attempt.
//!
//! The key is the stream name, so one stream's dead letters keep their order on one
//! partition. The producer is idempotent with `acks=all`; [`DeadLetterSink::flush`] waits for
//! every delivery report, and the runtime flushes dead letters before it commits a position
//! after them, so a dead letter is never lost either.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::dead_letter::{
    DeadLetterError, DeadLetterRecord, DeadLetterSink, Rejected, ATTEMPTS_HEADER,
    FIRST_FAILED_HEADER, ORIGINAL_PREFIX,
};
use tributary_core::error::ErrorClass;
use tributary_core::Position;

/// Configuration of a Kafka dead-letter topic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (may use `${ENV}`).
    pub brokers: VarStr,
    /// The dead-letter topic (must exist unless the broker creates topics on first use).
    pub topic: String,
    /// Retry topics, in order: the n-th failure of a record goes to the n-th, to be tried
    /// again after its delay; a failure after the last goes to `topic`. Empty: every failure
    /// goes to `topic` at once.
    #[serde(default)]
    pub retry: Vec<RetryTopic>,
    /// Raw librdkafka producer properties, applied last.
    #[serde(default)]
    pub options: BTreeMap<String, VarStr>,
}

/// One retry tier: a topic and how long a record waits there.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryTopic {
    /// The retry topic (must exist unless the broker creates topics on first use).
    pub topic: String,
    /// How long after its failure a record is tried again (`1s`, `30s`, `5m`).
    #[serde(with = "tributary_core::config::duration")]
    pub delay: Duration,
}

/// The header with the time a retried record may be tried again, in milliseconds since the
/// Unix epoch.
pub const NOT_BEFORE_HEADER: &str = "tributary.retry.not_before";

/// Writes dead letters to a Kafka topic. See the [module docs](self).
pub struct KafkaDeadLetter {
    config: KafkaDeadLetterConfig,
    brokers: String,
    producer: Option<FutureProducer>,
    pending: Vec<DeliveryFuture>,
}

impl KafkaDeadLetter {
    /// Builds the destination (the producer connects on the first record).
    pub fn new(config: KafkaDeadLetterConfig) -> Result<Self, ConfigError> {
        let brokers = config.brokers.resolve("dead_letter.brokers")?;
        if config.topic.is_empty() {
            return Err(ConfigError::Value {
                field: "dead_letter.topic".into(),
                message: "must not be empty".into(),
            });
        }
        for (i, r) in config.retry.iter().enumerate() {
            if r.topic.is_empty() || r.topic == config.topic {
                return Err(ConfigError::Value {
                    field: format!("dead_letter.retry[{i}].topic"),
                    message: "must be set, and differ from the dead-letter topic".into(),
                });
            }
        }
        Ok(KafkaDeadLetter {
            config,
            brokers,
            producer: None,
            pending: Vec::new(),
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> DeadLetterError {
        DeadLetterError {
            destination: format!("kafka topic {}", self.config.topic),
            message: message.to_string(),
        }
    }

    fn producer(&mut self) -> Result<&FutureProducer, DeadLetterError> {
        if self.producer.is_none() {
            let mut cc = ClientConfig::new();
            cc.set("bootstrap.servers", &self.brokers)
                .set("client.id", "tributary-dead-letter")
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5");
            for (k, v) in &self.config.options {
                let value = v
                    .resolve(&format!("dead_letter.options.{k}"))
                    .map_err(|e| self.err(e))?;
                cc.set(k, value);
            }
            let producer: FutureProducer = cc.create().map_err(|e| self.err(e))?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("created above"))
    }
}

/// The record's original bytes (text or hex as stored in the record).
fn raw_bytes(record: &DeadLetterRecord) -> Vec<u8> {
    if let Some(text) = &record.raw {
        return text.clone().into_bytes();
    }
    let Some(hex) = &record.raw_hex else {
        return Vec::new();
    };
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Where a record that failed `attempts` times goes: a retry topic and its delay, or the
/// dead-letter topic.
fn destination(config: &KafkaDeadLetterConfig, attempts: u32) -> (&str, Option<Duration>) {
    match config.retry.get(attempts.saturating_sub(1) as usize) {
        Some(r) => (&r.topic, Some(r.delay)),
        None => (&config.topic, None),
    }
}

/// The headers of a dead letter (see the module docs).
pub fn headers(record: &DeadLetterRecord) -> Vec<(String, String)> {
    let mut h = vec![
        ("tributary.pipeline".to_string(), record.pipeline.clone()),
        ("tributary.stream".to_string(), record.stream.clone()),
        (
            "tributary.error.class".to_string(),
            record.error_class.as_str().to_string(),
        ),
        (
            "tributary.error.message".to_string(),
            record.message.clone(),
        ),
    ];
    if let Some(l) = &record.location {
        h.push(("tributary.location".into(), l.clone()));
    }
    if !record.original.is_empty() {
        for (k, v) in &record.original {
            h.push((format!("tributary.original.{k}"), v.clone()));
        }
    }
    if let Some(p) = &record.position {
        h.push(("tributary.position".into(), p.to_json_string()));
        let json = p.as_json();
        if let (true, Some(t), Some(part), Some(off)) = (
            record.original.is_empty(),
            json.get("topic").and_then(|v| v.as_str()),
            json.get("partition").and_then(|v| v.as_i64()),
            json.get("offset").and_then(|v| v.as_i64()),
        ) {
            h.push(("tributary.original.topic".into(), t.to_string()));
            h.push(("tributary.original.partition".into(), part.to_string()));
            h.push(("tributary.original.offset".into(), off.to_string()));
        }
    }
    h.push(("tributary.attempts".into(), record.attempts.to_string()));
    h.push(("tributary.failed_at".into(), record.timestamp.clone()));
    h.push((
        "tributary.first_failed_at".into(),
        record
            .first_failed_at
            .clone()
            .unwrap_or_else(|| record.timestamp.clone()),
    ));
    h
}

#[async_trait::async_trait]
impl DeadLetterSink for KafkaDeadLetter {
    async fn write(&mut self, record: &DeadLetterRecord) -> Result<(), DeadLetterError> {
        let value = raw_bytes(record);
        let (topic, delay) = destination(&self.config, record.attempts);
        let topic = topic.to_string();
        let mut all = headers(record);
        if let Some(delay) = delay {
            let not_before = SystemTime::now() + delay;
            let ms = not_before
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            all.push((NOT_BEFORE_HEADER.into(), ms.to_string()));
        }
        let mut owned = OwnedHeaders::new();
        for (k, v) in all {
            owned = owned.insert(Header {
                key: &k,
                value: Some(v.as_bytes()),
            });
        }
        loop {
            let producer = self.producer()?;
            let rec = FutureRecord::to(&topic)
                .payload(&value)
                .key(record.stream.as_bytes())
                .headers(owned.clone());
            match producer.send_result(rec) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    return Ok(());
                }
                Err((e, _)) if is_queue_full(&e) => {
                    // librdkafka's queue is full: wait for what is in flight, then try again.
                    self.flush().await?;
                }
                Err((e, _)) => return Err(self.err(e)),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), DeadLetterError> {
        for delivery in std::mem::take(&mut self.pending) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(self.err(format!("delivery failed: {e}"))),
                Err(_) => return Err(self.err("the producer was dropped before delivering")),
            }
        }
        if let Some(p) = &self.producer {
            p.flush(Duration::from_secs(30)).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.config.topic)
    }
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e,
        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
    )
}

/// A dead letter read back from a dead-letter topic, with where it is there.
#[derive(Clone, Debug)]
pub struct StoredDeadLetter {
    /// The partition of the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The record, rebuilt from the message: the value as `raw`/`raw_hex`, the rest from the
    /// `tributary.*` headers.
    pub record: DeadLetterRecord,
    /// The message's `tributary.*` headers, to carry into a replay (attempts, first failure,
    /// original topic/partition/offset).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads a dead-letter topic from its start to its end as it is now (every partition to the
/// end-of-partition event), keeping the dead letters of `pipeline` (and of its replays) and, where `after` names
/// one for a stream, only those past that offset of that partition. Dead letters written
/// while or after this runs are left for the next read. The whole topic passes through
/// memory once: dead-letter topics are meant to stay small.
pub fn read_topic(
    config: &KafkaDeadLetterConfig,
    pipeline: &str,
    after: &dyn Fn(&str) -> Option<(i32, i64)>,
) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let topic = &config.topic;
    let err = |message: String| DeadLetterError {
        destination: format!("kafka topic {topic}"),
        message,
    };
    let brokers = config
        .brokers
        .resolve("dead_letter.brokers")
        .map_err(|e| err(e.to_string()))?;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &brokers)
        .set("group.id", format!("tributary-dlq-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = cc.create().map_err(|e| err(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| err(format!("metadata: {e}")))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(err("the topic does not exist".into()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| err(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions.len() {
        if std::time::Instant::now() > deadline {
            return Err(err("reading did not reach the end within 120 s".into()));
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(Err(e)) => return Err(err(e.to_string())),
            None => continue,
        };
        at_end.remove(&m.partition());
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .filter(|h| h.key.starts_with("tributary."))
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        // A replay (`<pipeline>.replay`) dead-letters for its pipeline.
        let of = header("tributary.pipeline").unwrap_or_default();
        if of != pipeline && of.strip_suffix(".replay") != Some(pipeline) {
            continue;
        }
        let stream = header("tributary.stream").unwrap_or_default();
        if let Some((partition, offset)) = after(&stream) {
            if partition == m.partition() && m.offset() < offset {
                continue;
            }
        }
        let class = match header("tributary.error.class").as_deref() {
            Some("transient") => ErrorClass::Transient,
            Some("fatal") => ErrorClass::Fatal,
            _ => ErrorClass::Record,
        };
        let rejected = Rejected {
            stream,
            position: header("tributary.position").and_then(|p| Position::from_json_str(&p).ok()),
            message: header("tributary.error.message").unwrap_or_default(),
            location: header("tributary.location"),
            raw: m.payload().unwrap_or_default().to_vec(),
            headers: Vec::new(),
        };
        let mut record = DeadLetterRecord::new(pipeline, class, rejected);
        record.timestamp = header("tributary.failed_at").unwrap_or(record.timestamp);
        record.attempts = header(ATTEMPTS_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        record.first_failed_at = header(FIRST_FAILED_HEADER);
        record.original = headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix(ORIGINAL_PREFIX)?.to_string(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            })
            .collect();
        out.push(StoredDeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            record,
            headers,
        });
    }
    Ok(out)
}
