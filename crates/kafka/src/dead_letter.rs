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
//! | `tributary.attempts` | how many times the record was tried (1: dead-lettered at once) |
//! | `tributary.failed_at` | when it was dead-lettered (RFC 3339, UTC) |
//!
//! The key is the stream name, so one stream's dead letters keep their order on one
//! partition. The producer is idempotent with `acks=all`; [`DeadLetterSink::flush`] waits for
//! every delivery report, and the runtime flushes dead letters before it commits a position
//! after them, so a dead letter is never lost either.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::dead_letter::{DeadLetterError, DeadLetterRecord, DeadLetterSink};

/// Configuration of a Kafka dead-letter topic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (may use `${ENV}`).
    pub brokers: VarStr,
    /// The dead-letter topic (must exist unless the broker creates topics on first use).
    pub topic: String,
    /// Raw librdkafka producer properties, applied last.
    #[serde(default)]
    pub options: BTreeMap<String, VarStr>,
}

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

/// The headers of a dead letter (see the module docs).
pub fn headers(record: &DeadLetterRecord, attempts: u32) -> Vec<(String, String)> {
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
    if let Some(p) = &record.position {
        h.push(("tributary.position".into(), p.to_json_string()));
        let json = p.as_json();
        if let (Some(t), Some(part), Some(off)) = (
            json.get("topic").and_then(|v| v.as_str()),
            json.get("partition").and_then(|v| v.as_i64()),
            json.get("offset").and_then(|v| v.as_i64()),
        ) {
            h.push(("tributary.original.topic".into(), t.to_string()));
            h.push(("tributary.original.partition".into(), part.to_string()));
            h.push(("tributary.original.offset".into(), off.to_string()));
        }
    }
    h.push(("tributary.attempts".into(), attempts.to_string()));
    h.push(("tributary.failed_at".into(), record.timestamp.clone()));
    h
}

#[async_trait::async_trait]
impl DeadLetterSink for KafkaDeadLetter {
    async fn write(&mut self, record: &DeadLetterRecord) -> Result<(), DeadLetterError> {
        let value = raw_bytes(record);
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers(record, 1) {
            owned = owned.insert(Header {
                key: &k,
                value: Some(v.as_bytes()),
            });
        }
        let topic = self.config.topic.clone();
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
