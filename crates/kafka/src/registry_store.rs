//! The schema registry's state on a compacted Kafka topic (`_schemas`-style), for
//! `tributary registry serve --kafka-store`: ids, versions and compatibility levels survive
//! restarts of the process and of the machine it runs on, as Confluent's registry keeps them.
//!
//! One partition; one record per change, its key naming what changed (JSON:
//! `{"kind":"schema","subject":…,"version":…}`, `{"kind":"config","subject":…}` (`null`: the
//! global level), `{"kind":"next_id"}`, `{"kind":"writer"}`), its value the new state (a
//! schema version, `{"compatibility":…}`, `{"next_id":…}`, the writer's identity) or a
//! tombstone for a permanent delete or a removed level. Replaying the topic and keeping the
//! last value per key gives the state back, so compaction loses nothing. Each change is
//! durable when its produce is acknowledged (`acks=all`, idempotent producer): only then does
//! the registry apply it in memory and answer.
//!
//! **One writer, any number of followers.** A writer announces itself (a `writer` record with
//! its id and URL) when it opens the store, and before each change reads the topic to its end:
//! if another process announced itself since, this one refuses to write (the registry answers
//! 50001, saying which process took over) and from then on follows it. A follower
//! ([`Role::Follower`]) never writes: before each request the server reads the topic to its
//! end ([`RegistryStore::refresh`]) and answers reads from that, and forwards changes to the
//! announced writer's URL ([`RegistryStore::forward_to`]), as Confluent's followers forward to
//! their leader. The writer's check and its write are not atomic: two writers started in the
//! same instant are not caught; run one writer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use serde_json::{json, Value};
use tributary_registry::store::{Snapshot, StoreError};
use tributary_registry::{Compatibility, RegistryStore, SchemaRecord};

/// Delivery failures of the store's producer, collected for the write waiting on them.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }
    }
}

/// What the topic says, replayed.
#[derive(Default)]
struct Replayed {
    schemas: BTreeMap<(String, u32), SchemaRecord>,
    configs: BTreeMap<Option<String>, Compatibility>,
    next_id: u32,
    /// The last writer announced: its id and URL.
    writer: Option<(String, Option<String>)>,
    /// Records applied, to tell whether anything changed since the last look.
    applied: u64,
}

/// What a process does with the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes changes; announces itself with the URL followers forward changes to.
    Writer {
        /// This process's URL as other processes reach it (`http://10.0.0.5:8081`).
        url: Option<String>,
    },
    /// Reads the topic and forwards changes to the writer.
    Follower,
}

/// The registry's state on a Kafka topic.
pub struct KafkaRegistryStore {
    topic: String,
    location: String,
    /// This process's identity.
    me: String,
    role: Role,
    /// `Replayed::applied` when the registry last took the state.
    seen: Mutex<u64>,
    producer: ThreadedProducer<Deliveries>,
    consumer: Mutex<BaseConsumer>,
    replayed: Mutex<Replayed>,
    timeout: Duration,
}

impl KafkaRegistryStore {
    /// Opens the store on `topic` at `brokers` (creating the compacted topic when absent) and
    /// replays it; a writer announces itself.
    pub fn open(brokers: &str, topic: &str, role: Role) -> Result<Self, StoreError> {
        let location = format!("kafka topic {topic} at {brokers}");
        let remote = |message: String| StoreError::Remote {
            location: location.clone(),
            message,
        };
        crate::positions::ensure_compacted_topic(brokers, topic, "the schema registry topic")
            .map_err(|e| remote(e.to_string()))?;
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create_with_context(Deliveries::default())
            .map_err(|e| remote(format!("create a producer: {e}")))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let me = format!(
            "{}@{} pid {} {nanos:x}",
            whoami(),
            hostname(),
            std::process::id()
        );
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("tributary-registry-{nanos:x}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Catching up after each write waits for the fetch of the record just written:
            // keep the broker's long poll short (the default holds it for 500 ms).
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| remote(format!("create a consumer: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| remote(format!("assign partition 0: {e}")))?;
        consumer
            .assign(&tpl)
            .map_err(|e| remote(format!("assign partition 0: {e}")))?;
        let store = KafkaRegistryStore {
            topic: topic.to_string(),
            location,
            me,
            role: role.clone(),
            seen: Mutex::new(0),
            producer,
            consumer: Mutex::new(consumer),
            replayed: Mutex::new(Replayed {
                next_id: 1,
                ..Replayed::default()
            }),
            timeout: Duration::from_secs(30),
        };
        store.catch_up()?;
        if let Role::Writer { url } = &role {
            store.produce(
                json!({"kind": "writer"}),
                Some(json!({"writer": store.me, "url": url})),
            )?;
            store.catch_up()?;
        }
        tracing::info!(topic, process = %store.me, ?role, "schema registry state on Kafka");
        Ok(store)
    }

    fn remote(&self, message: String) -> StoreError {
        StoreError::Remote {
            location: self.location.clone(),
            message,
        }
    }

    /// Reads the topic to its current end, applying every record.
    fn catch_up(&self) -> Result<(), StoreError> {
        let consumer = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        let (_, high) = consumer
            .fetch_watermarks(&self.topic, 0, self.timeout)
            .map_err(|e| self.remote(format!("read the end of the topic: {e}")))?;
        let position = |c: &BaseConsumer| -> i64 {
            let Ok(tpl) = c.position() else {
                return 0;
            };
            match tpl.find_partition(&self.topic, 0).map(|p| p.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut replayed = self.replayed.lock().unwrap_or_else(|p| p.into_inner());
        while position(&consumer) < high {
            if Instant::now() > deadline {
                return Err(self.remote(format!(
                    "reading the topic did not reach its end (offset {high}) within {:?}",
                    self.timeout
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    apply(&mut replayed, m.key(), m.payload())
                        .map_err(|e| self.remote(format!("offset {}: {e}", m.offset())))?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => return Err(self.remote(format!("read the topic: {e}"))),
            }
        }
        Ok(())
    }

    /// Produces one record and waits for its acknowledgement.
    fn produce(&self, key: Value, value: Option<Value>) -> Result<(), StoreError> {
        let key = key.to_string();
        let payload = value.map(|v| v.to_string());
        let mut record = BaseRecord::<str, str>::to(&self.topic)
            .key(&key)
            .partition(0);
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| self.remote(format!("produce: {e}")))?;
        self.producer
            .flush(self.timeout)
            .map_err(|e| self.remote(format!("produce: {e}")))?;
        let failed = std::mem::take(
            &mut *self
                .producer
                .context()
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if let Some(e) = failed.first() {
            return Err(self.remote(format!("produce: {e}")));
        }
        Ok(())
    }

    /// Writes a change once the topic says this process is still its writer.
    fn write(&self, changes: Vec<(Value, Option<Value>)>) -> Result<(), StoreError> {
        self.catch_up()?;
        let writer = self
            .replayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writer
            .clone()
            .map(|(id, _)| id);
        if self.role == Role::Follower {
            return Err(self.remote(format!(
                "this registry process ({}) follows the topic and does not write to it",
                self.me
            )));
        }
        if writer.as_deref() != Some(self.me.as_str()) {
            return Err(self.remote(format!(
                "another registry process writes to this topic now ({}); this one ({}) \
                 stopped writing so that ids stay unique: restart it to take over again",
                writer.unwrap_or_default(),
                self.me
            )));
        }
        for (k, v) in changes {
            self.produce(k, v)?;
        }
        self.catch_up()?;
        // The registry applies its own change in memory: nothing to refresh for it.
        let r = self.replayed.lock().unwrap_or_else(|p| p.into_inner());
        if r.writer.as_ref().is_some_and(|(id, _)| *id == self.me) {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = r.applied;
        }
        Ok(())
    }
}

/// Applies one record to the replayed state.
fn apply(r: &mut Replayed, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), String> {
    let key: Value = serde_json::from_slice(key.ok_or("a record without a key")?)
        .map_err(|e| format!("a key that is not JSON: {e}"))?;
    let value: Option<Value> = value
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|e| format!("a value that is not JSON: {e}"))?;
    r.applied += 1;
    match key["kind"].as_str() {
        Some("schema") => {
            let subject = key["subject"]
                .as_str()
                .ok_or("a schema key without subject")?;
            let version = key["version"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or("a schema key without version")?;
            match value {
                Some(v) => {
                    let record: SchemaRecord = serde_json::from_value(v)
                        .map_err(|e| format!("a schema version that does not parse: {e}"))?;
                    r.next_id = r.next_id.max(record.id + 1);
                    r.schemas.insert((subject.to_string(), version), record);
                }
                None => {
                    r.schemas.remove(&(subject.to_string(), version));
                }
            }
        }
        Some("config") => {
            let subject = key["subject"].as_str().map(str::to_string);
            match value {
                Some(v) => {
                    let level: Compatibility = v["compatibility"]
                        .as_str()
                        .ok_or("a config without compatibility")?
                        .parse()?;
                    r.configs.insert(subject, level);
                }
                None => {
                    r.configs.remove(&subject);
                }
            }
        }
        Some("next_id") => {
            if let Some(n) = value.as_ref().and_then(|v| v["next_id"].as_u64()) {
                r.next_id = r.next_id.max(u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        Some("writer") => {
            r.writer = value.and_then(|v| {
                let id = v["writer"].as_str()?.to_string();
                Some((id, v["url"].as_str().map(str::to_string)))
            });
        }
        // Records of kinds a later version writes: skipped.
        _ => {}
    }
    Ok(())
}

fn schema_key(subject: &str, version: u32) -> Value {
    json!({"kind": "schema", "subject": subject, "version": version})
}

impl KafkaRegistryStore {
    fn snapshot(&self) -> Snapshot {
        let r = self.replayed.lock().unwrap_or_else(|p| p.into_inner());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = r.applied;
        Snapshot {
            schemas: r.schemas.values().cloned().collect(),
            global: r.configs.get(&None).copied(),
            subjects: r
                .configs
                .iter()
                .filter_map(|(s, l)| s.clone().map(|s| (s, *l)))
                .collect(),
            next_id: r.next_id,
        }
    }
}

impl RegistryStore for KafkaRegistryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.catch_up()?;
        Ok(self.snapshot())
    }

    fn refresh(&self) -> Result<Option<Snapshot>, StoreError> {
        self.catch_up()?;
        let applied = self
            .replayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .applied;
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok((applied != seen).then(|| self.snapshot()))
    }

    fn forward_to(&self) -> Result<Option<String>, StoreError> {
        let writer = self
            .replayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writer
            .clone();
        match writer {
            Some((id, _)) if id == self.me => Ok(None),
            Some((_, Some(url))) => Ok(Some(url)),
            Some((id, None)) => Err(self.remote(format!(
                "the registry process that writes this topic ({id}) announced no URL to \
                 forward changes to"
            ))),
            None => Err(self.remote(
                "no registry process writes this topic yet: start one that is not a follower"
                    .into(),
            )),
        }
    }

    fn put_schema(&self, record: &SchemaRecord) -> Result<(), StoreError> {
        let value = serde_json::to_value(record).expect("a schema record serializes");
        let next = {
            let r = self.replayed.lock().unwrap_or_else(|p| p.into_inner());
            r.next_id.max(record.id + 1)
        };
        self.write(vec![
            (schema_key(&record.subject, record.version), Some(value)),
            // Ids are never given to other content, even once this version is deleted.
            (json!({"kind": "next_id"}), Some(json!({"next_id": next}))),
        ])
    }

    fn remove_schema(&self, subject: &str, version: u32) -> Result<(), StoreError> {
        self.write(vec![(schema_key(subject, version), None)])
    }

    fn put_config(
        &self,
        subject: Option<&str>,
        level: Option<Compatibility>,
    ) -> Result<(), StoreError> {
        self.write(vec![(
            json!({"kind": "config", "subject": subject}),
            level.map(|l| json!({"compatibility": l.as_str()})),
        )])
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}
