//! The positions topic of the exactly-once Kafka sink (`__tributary_positions` by default).
//!
//! A compacted topic. Each record's key is `["<pipeline>", "<stream>"]` (JSON) and its value
//! the stream's source position (JSON), produced in the same transaction as the messages that
//! reach that position: after a crash the newest committed value per key says where the
//! output ends. On start the sink reads the topic to its end with `isolation.level =
//! read_committed` and keeps the last value per stream of its pipeline.
//!
//! Compaction keeps at least the newest value per key, so the topic stays small however long
//! the pipeline runs. Several pipelines can share one topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary_core::Position;

use crate::error::{client, KafkaConnectorError};

/// The key of a stream's position record.
pub fn key(pipeline: &str, stream: &str) -> Vec<u8> {
    serde_json::to_vec(&[pipeline, stream]).expect("two strings encode")
}

/// Creates the compacted positions topic when it does not exist (one partition; the
/// broker's default replication, else 1 where the broker has no default).
pub fn ensure_topic(brokers: &str, topic: &str) -> Result<(), KafkaConnectorError> {
    ensure_compacted_topic(brokers, topic, "the positions topic")
}

/// Creates a compacted topic of one partition when it does not exist (`what` names it in
/// errors: "the positions topic").
pub fn ensure_compacted_topic(
    brokers: &str,
    topic: &str,
    what: &str,
) -> Result<(), KafkaConnectorError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(client("create a Kafka admin client"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(client("create a Kafka consumer"))?;
    let exists = |c: &BaseConsumer| -> Result<bool, KafkaConnectorError> {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(client(format!("read the metadata of {topic}")))?;
        Ok(md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    };
    if exists(&consumer)? {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            KafkaConnectorError::Invalid(format!("a runtime for the admin client: {e}"))
        })?;
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact");
        let results = rt
            .block_on(admin.create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .map_err(client(format!("create {what} {topic}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => break,
            Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) if replication == -1 => {}
            Some(Err((_, code))) => {
                return Err(KafkaConnectorError::Client {
                    what: format!("create {what} {topic}"),
                    source: KafkaError::AdminOp(code),
                })
            }
            None => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exists(&consumer)? {
        if Instant::now() > deadline {
            return Err(KafkaConnectorError::Invalid(format!(
                "{what} {topic} was created but does not appear in the metadata"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The committed positions of `pipeline`'s streams: the topic read to its end
/// (`read_committed`), the newest value per stream.
pub fn read(
    brokers: &str,
    topic: &str,
    pipeline: &str,
) -> Result<Vec<(String, Position)>, KafkaConnectorError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("tributary-positions-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(client("create a Kafka consumer"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(client(format!("read the metadata of {topic}")))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(client("assign the positions topic"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(client("assign the positions topic"))?;
    let wanted = serde_json::Value::String(pipeline.to_string());
    let mut out: BTreeMap<String, Position> = BTreeMap::new();
    let mut at_end = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(KafkaConnectorError::Invalid(format!(
                "reading the positions topic {topic} did not reach its end within 60 s"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let Some(Ok(serde_json::Value::Array(k))) =
                    m.key().map(serde_json::from_slice::<serde_json::Value>)
                else {
                    continue;
                };
                if k.len() != 2 || k[0] != wanted {
                    continue;
                }
                let Some(stream) = k[1].as_str() else {
                    continue;
                };
                match m.payload().map(std::str::from_utf8) {
                    Some(Ok(text)) => {
                        let position = Position::from_json_str(text).map_err(|e| {
                            KafkaConnectorError::Invalid(format!(
                                "{topic} partition {} offset {}: the position of {stream} is not JSON: {e}",
                                m.partition(),
                                m.offset()
                            ))
                        })?;
                        out.insert(stream.to_string(), position);
                    }
                    // A tombstone: the stream's position was deleted.
                    None => {
                        out.remove(stream);
                    }
                    Some(Err(_)) => {}
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => {
                return Err(KafkaConnectorError::Client {
                    what: format!("read the positions topic {topic}"),
                    source: e,
                })
            }
            None => {}
        }
    }
    Ok(out.into_iter().collect())
}

/// Deletes `pipeline`'s positions: a tombstone for each stream it has one for (compaction
/// then drops them). Returns how many.
pub fn forget(brokers: &str, topic: &str, pipeline: &str) -> Result<u64, KafkaConnectorError> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let streams = match read(brokers, topic, pipeline) {
        Ok(s) => s,
        // No positions topic: nothing stored.
        Err(KafkaConnectorError::Client { source, .. })
            if source.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) =>
        {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    if streams.is_empty() {
        return Ok(0);
    }
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .map_err(client("create a Kafka producer"))?;
    for (stream, _) in &streams {
        let k = key(pipeline, stream);
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).key(&k))
            .map_err(|(e, _)| KafkaConnectorError::Client {
                what: format!("delete the position of {stream}"),
                source: e,
            })?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(client(format!("delete positions in {topic}")))?;
    Ok(streams.len() as u64)
}
