//! Typed, documented configuration of the Kafka sink and source (the reference docs of
//! `sink: { kind: kafka }` and `source: { kind: kafka }`).
//!
//! Both build a librdkafka configuration from their typed fields and then apply `options`,
//! a map of raw librdkafka properties for anything not covered here. Options that would break
//! the delivery guarantees (`enable.auto.commit`, `enable.auto.offset.store` on the source)
//! are refused.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::config::{duration, ConfigError, VarStr};

/// How message values are written or read.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// One JSON object per message (default). The sink encodes each row; the source decodes
    /// payloads under the pipeline's `schema_policy`.
    #[default]
    Json,
    /// The value is text: one column (`value_field` / `value_column`) of UTF-8.
    String,
    /// The value is bytes, as they are: one binary column.
    Raw,
    /// Avro binary in Confluent's wire format (magic byte 0, the 4-byte schema id, the
    /// record), with a schema registry (`registry:`). The sink derives the record schema from
    /// the rows (or takes `registry.schema`) and registers it; the source fetches each
    /// writer schema by id. See docs/kafka.md.
    Avro,
    /// JSON in Confluent's wire format, its JSON Schema in the registry (`registry:`).
    JsonSchema,
    /// Protobuf in Confluent's wire format (with its message indexes), the `.proto` in the
    /// registry (`registry:`): derived from the rows or given as `registry.schema`.
    Protobuf,
}

impl ValueFormat {
    /// Whether the format needs a schema registry.
    pub fn uses_registry(self) -> bool {
        matches!(
            self,
            ValueFormat::Avro | ValueFormat::JsonSchema | ValueFormat::Protobuf
        )
    }

    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueFormat::Json => "json",
            ValueFormat::String => "string",
            ValueFormat::Raw => "raw",
            ValueFormat::Avro => "avro",
            ValueFormat::JsonSchema => "json_schema",
            ValueFormat::Protobuf => "protobuf",
        }
    }
}

/// How a topic's records map to a registry subject.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (default): one schema lineage per topic.
    #[default]
    TopicName,
    /// The record's full name (`shop.Order`): one lineage per record type, across topics.
    RecordName,
    /// `<topic>-<record full name>`: several record types in one topic.
    TopicRecordName,
}

/// A schema registry (Confluent-compatible: the built-in `tributary registry serve`, or
/// another), for `format: avro`, `format: json_schema` and `format: protobuf`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, `http://127.0.0.1:8081` (may use `${ENV}`; `user:password@` is basic auth).
    pub url: VarStr,
    /// HTTP basic user (with `password`).
    #[serde(default)]
    pub user: Option<VarStr>,
    /// HTTP basic password (`${ENV}` or `${file:…}` keeps it out of the file).
    #[serde(default)]
    pub password: Option<VarStr>,
    /// Bearer token, instead of basic auth.
    #[serde(default)]
    pub token: Option<VarStr>,
    /// Timeout of one registry request (default `30s`; transient failures are retried).
    #[serde(default = "default_registry_timeout", with = "duration")]
    pub timeout: Duration,
    /// Sink: `topic_name` (default), `record_name` or `topic_record_name`.
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// Sink: the full name of the derived Avro record or Protobuf message (`shop.Order`:
    /// package `shop`), or the JSON Schema `title`; with a `.proto` in `schema`, the message
    /// to write (default: its first). Default: the topic (or the stream, for topic
    /// templates), with characters Avro names cannot hold replaced by `_`.
    #[serde(default)]
    pub record_name: Option<String>,
    /// Sink: a schema file (`order.avsc`, a JSON Schema for `json_schema`, an `order.proto`
    /// without imports other than `google/protobuf/timestamp.proto` for `protobuf`) to write
    /// with, instead of deriving one from the rows. Columns are matched to fields by name; a
    /// field without a column is written with its default.
    #[serde(default)]
    pub schema: Option<std::path::PathBuf>,
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(30)
}

impl RegistryConfig {
    /// A config for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            url: VarStr::new(url.into()),
            user: None,
            password: None,
            token: None,
            timeout: default_registry_timeout(),
            subject_strategy: SubjectStrategy::default(),
            record_name: None,
            schema: None,
        }
    }

    fn problems(&self, sink: bool, problems: &mut Vec<String>) {
        if self.user.is_some() != self.password.is_some() {
            problems.push("registry: `user` and `password` go together".into());
        }
        if self.token.is_some() && self.user.is_some() {
            problems.push("registry: give `token` or `user`/`password`, not both".into());
        }
        if !sink {
            for (set, name) in [
                (
                    self.subject_strategy != SubjectStrategy::default(),
                    "subject_strategy",
                ),
                (self.record_name.is_some(), "record_name"),
                (self.schema.is_some(), "schema"),
            ] {
                if set {
                    problems.push(format!(
                        "registry.{name}: only for the sink (the source reads each record's \
                         writer schema by its id)"
                    ));
                }
            }
        }
    }
}

/// Compression of produced message batches.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard (default): the best ratio at a low CPU cost; needs brokers ≥ 2.1.
    #[default]
    Zstd,
    /// LZ4: the fastest.
    Lz4,
    /// Snappy.
    Snappy,
    /// Gzip: the most compatible, the slowest.
    Gzip,
    /// No compression.
    None,
}

impl Compression {
    /// The librdkafka `compression.codec` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// Which partition a keyed message goes to.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// murmur2 of the key, as the Java client does (default): a key lands on the same partition
    /// whichever client wrote it. Messages without a key are spread at random.
    #[default]
    Murmur2Random,
    /// CRC32 of the key, librdkafka's own default.
    ConsistentRandom,
    /// FNV-1a of the key, as Sarama (Go) does.
    Fnv1aRandom,
    /// Random, ignoring the key.
    Random,
}

impl Partitioner {
    /// The librdkafka `partitioner` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Random => "random",
        }
    }
}

/// The message key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum KeyConfig {
    /// A template, e.g. `"{region}-{id}"` (see the `topic` field for the syntax); or
    /// `primary_key`: the stream's primary key as its database source reports it (for change
    /// events, taken from `after`, and from `before` for deletes), as [`KeyConfig::Fields`]
    /// would write those columns.
    Template(String),
    /// Fields: one field's value as text (bytes for a binary column), or several as a JSON
    /// object `{"a":1,"b":"x"}` in the order given.
    Fields(Vec<String>),
}

/// Configuration of the Kafka sink (`sink: { kind: kafka, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (may use `${ENV}`).
    pub brokers: VarStr,
    /// Topic, or a template filled from each row: `cdc.{table}`, `iot.{device}`. `{name}` is
    /// the value of column `name` (as text); `{stream}` is the batch's stream when no column
    /// has that name. `{{` and `}}` are literal braces. A row whose placeholder is null is
    /// refused (dead letter).
    pub topic: String,
    /// Message key: a template string or a list of fields (default: no key). Keys decide the
    /// partition, so messages with one key keep their order.
    #[serde(default)]
    pub key: Option<KeyConfig>,
    /// Headers: name → template (`{ source: "{table}", version: "2" }`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `json` (default: each row as one JSON object), `string` or `raw` (one column, given by
    /// `value_field`).
    #[serde(default)]
    pub format: ValueFormat,
    /// The column holding the value for `string` and `raw` (default `value`).
    #[serde(default = "default_value_column")]
    pub value_field: String,
    /// The schema registry, for `format: avro` and `format: json_schema`.
    #[serde(default)]
    pub registry: Option<Box<RegistryConfig>>,
    /// With `json`: write null fields as `null` instead of leaving them out (default false).
    #[serde(default)]
    pub explicit_nulls: bool,
    /// `zstd` (default), `lz4`, `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// The codec's level (librdkafka `compression.level`): zstd 1-12, lz4 0-12, gzip 0-9;
    /// default: the codec's own (zstd 3). Lower is cheaper: NDJSON → Kafka measured about
    /// 8 % faster with zstd at 1 than at 3 on two cores, where compression is a sixth of the CPU.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Idempotent producer (default true): `acks=all`, no duplicates or reordering from the
    /// producer's own retries. Turning it off also allows `acks` other than `all`.
    #[serde(default = "default_true")]
    pub idempotence: bool,
    /// Acknowledgements the leader waits for: `all` (default), `1` or `0`. Anything but
    /// `all` can lose acknowledged records when a leader fails; requires `idempotence: false`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// Time a message may wait for more to fill its batch (librdkafka `linger.ms`, default
    /// `5ms`): longer means bigger batches and better compression, later delivery.
    #[serde(default = "default_linger", with = "duration")]
    pub linger: Duration,
    /// Largest message batch in bytes per partition request (default 1 MiB).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: NonZeroUsize,
    /// Largest number of messages in one batch (default 10000).
    #[serde(default = "default_batch_messages")]
    pub batch_messages: NonZeroUsize,
    /// How long librdkafka keeps retrying one message before reporting it failed
    /// (`message.timeout.ms`, default `60s`). A timed-out message is produced again at the
    /// next flush, under the pipeline's `retry` policy.
    #[serde(default = "default_delivery_timeout", with = "duration")]
    pub delivery_timeout: Duration,
    /// Messages produced but not yet acknowledged that make a write wait for every delivery
    /// report, report the data durable and let the runtime commit (default 200000). The
    /// pipeline's `commit_interval` commits smaller amounts.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: NonZeroUsize,
    /// `murmur2_random` (default, Java-compatible), `consistent_random`, `fnv1a_random` or
    /// `random`.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// `at_least_once` (default) or `exactly_once`: a transactional producer that commits
    /// the messages of each flush together with the source positions they reach (written to
    /// `positions_topic` in the same transaction, and read back on start). See docs/kafka.md.
    #[serde(default)]
    pub delivery: Delivery,
    /// With `exactly_once`: the producer's `transactional.id` (default
    /// `tributary-<pipeline>`). Stable across restarts: a new process with the same id fences
    /// the old one (a zombie cannot commit after its successor started).
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// With `exactly_once`: the compacted topic holding the positions (default
    /// `__tributary_positions`; created when missing).
    #[serde(default = "default_positions_topic")]
    pub positions_topic: String,
    /// With `exactly_once`: how long a transaction may stay open on the broker before it
    /// aborts it (`transaction.timeout.ms`, default `60s`); longer than `commit_interval`.
    #[serde(default = "default_transaction_timeout", with = "duration")]
    pub transaction_timeout: Duration,
    /// Raw librdkafka producer properties, applied last (`{ "queue.buffering.max.kbytes":
    /// "1048576" }`).
    #[serde(default)]
    pub options: BTreeMap<String, VarStr>,
}

/// The Kafka sink's delivery guarantee.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Idempotent producer, positions committed after the delivery reports: a crash repeats
    /// what was produced since the last commit.
    #[default]
    AtLeastOnce,
    /// Transactions: the messages of a flush and the positions they reach commit together.
    ExactlyOnce,
}

fn default_positions_topic() -> String {
    "__tributary_positions".into()
}
fn default_transaction_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_value_column() -> String {
    "value".into()
}
fn default_true() -> bool {
    true
}
fn default_acks() -> String {
    "all".into()
}
fn default_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_batch_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).expect("non-zero")
}
fn default_batch_messages() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_unacked() -> NonZeroUsize {
    NonZeroUsize::new(200_000).expect("non-zero")
}

impl KafkaSinkConfig {
    /// A config with defaults for `brokers` and `topic`.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaSinkConfig {
            brokers: VarStr::new(brokers.into()),
            topic: topic.into(),
            key: None,
            headers: BTreeMap::new(),
            format: ValueFormat::Json,
            value_field: default_value_column(),
            registry: None,
            explicit_nulls: false,
            compression: Compression::default(),
            compression_level: None,
            idempotence: true,
            acks: default_acks(),
            linger: default_linger(),
            batch_bytes: default_batch_bytes(),
            batch_messages: default_batch_messages(),
            delivery_timeout: default_delivery_timeout(),
            max_unacked: default_max_unacked(),
            partitioner: Partitioner::default(),
            delivery: Delivery::default(),
            transactional_id: None,
            positions_topic: default_positions_topic(),
            transaction_timeout: default_transaction_timeout(),
            options: BTreeMap::new(),
        }
    }

    /// Checks what serde cannot; collects every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::template::Template::parse(&self.topic) {
            problems.push(format!("topic: {e}"));
        }
        if let Some(KeyConfig::Template(t)) = &self.key {
            if let Err(e) = crate::template::Template::parse(t) {
                problems.push(format!("key: {e}"));
            }
        }
        if let Some(KeyConfig::Fields(f)) = &self.key {
            if f.is_empty() {
                problems.push("key: the field list is empty (leave `key` out for no key)".into());
            }
        }
        for (name, t) in &self.headers {
            if let Err(e) = crate::template::Template::parse(t) {
                problems.push(format!("headers.{name}: {e}"));
            }
        }
        registry_problems(self.format, self.registry.as_deref(), true, &mut problems);
        if !matches!(self.acks.as_str(), "all" | "-1" | "1" | "0") {
            problems.push(format!("acks: {:?} is not all, 1 or 0", self.acks));
        }
        if self.idempotence && !matches!(self.acks.as_str(), "all" | "-1") {
            problems.push(format!(
                "acks: {:?} needs `idempotence: false` (an idempotent producer uses acks=all)",
                self.acks
            ));
        }
        if self.delivery == Delivery::ExactlyOnce && !self.idempotence {
            problems.push("delivery: exactly_once needs `idempotence: true`".into());
        }
        if self.delivery == Delivery::ExactlyOnce && self.positions_topic.is_empty() {
            problems.push("positions_topic: must not be empty".into());
        }
        if self.delivery_timeout < Duration::from_secs(1) {
            problems.push("delivery_timeout: must be at least 1s".into());
        }
        if let Some(level) = self.compression_level {
            let range = match self.compression {
                Compression::Zstd => Some(1..=12),
                Compression::Lz4 => Some(0..=12),
                Compression::Gzip => Some(0..=9),
                Compression::Snappy | Compression::None => None,
            };
            let codec = self.compression.as_str();
            match range {
                None => problems.push(format!(
                    "compression_level: {codec} has no levels (zstd, lz4 and gzip do)"
                )),
                Some(r) if !r.contains(&level) => problems.push(format!(
                    "compression_level: {level} is out of range for {codec} ({} to {})",
                    r.start(),
                    r.end()
                )),
                Some(_) => {}
            }
        }
        problems_to_error("sink", problems)
    }
}

/// Where a partition starts when the consumer group has no committed offset for it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained message (default).
    #[default]
    Earliest,
    /// Only messages produced after the consumer joins.
    Latest,
    /// The first message at or after this time (RFC 3339, `2026-01-01T00:00:00Z`).
    Timestamp(String),
    /// Explicit offsets: topic → partition → offset. Partitions not listed start at the
    /// earliest message.
    Offsets(BTreeMap<String, BTreeMap<i32, i64>>),
}

/// Kafka metadata a source can add as columns.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MetadataColumn {
    /// `kafka_topic` (Utf8).
    Topic,
    /// `kafka_partition` (Int32).
    Partition,
    /// `kafka_offset` (Int64).
    Offset,
    /// `kafka_timestamp` (Timestamp(ms, UTC)), null when the message has none.
    Timestamp,
    /// `kafka_key` (Binary), null for messages without a key.
    Key,
    /// `kafka_headers` (List of Struct{key: Utf8, value: Binary}), in order.
    Headers,
}

impl MetadataColumn {
    /// The column name.
    pub fn column(self) -> &'static str {
        match self {
            MetadataColumn::Topic => "kafka_topic",
            MetadataColumn::Partition => "kafka_partition",
            MetadataColumn::Offset => "kafka_offset",
            MetadataColumn::Timestamp => "kafka_timestamp",
            MetadataColumn::Key => "kafka_key",
            MetadataColumn::Headers => "kafka_headers",
        }
    }
}

/// Configuration of the Kafka source (`source: { kind: kafka, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (may use `${ENV}`).
    pub brokers: VarStr,
    /// Topics to read; each topic is one stream.
    pub topics: Vec<String>,
    /// Consumer group (default: the pipeline name). Processes in one group share the
    /// partitions; offsets are committed to the group only after the data is durable.
    #[serde(default)]
    pub group: Option<String>,
    /// Where a partition without a committed offset starts: `earliest` (default), `latest`,
    /// `{ timestamp: 2026-01-01T00:00:00Z }` or `{ offsets: { topic: { 0: 42 } } }`.
    #[serde(default)]
    pub start: StartFrom,
    /// `json` (default, decoded under the pipeline's `schema_policy`), `string` or `raw`.
    #[serde(default)]
    pub format: ValueFormat,
    /// The column that holds the value for `string` and `raw` (default `value`).
    #[serde(default = "default_value_column")]
    pub value_column: String,
    /// The schema registry, for `format: avro` and `format: json_schema`.
    #[serde(default)]
    pub registry: Option<Box<RegistryConfig>>,
    /// Kafka metadata to add as columns: any of `topic`, `partition`, `offset`, `timestamp`,
    /// `key`, `headers` (columns `kafka_topic`, ...).
    #[serde(default)]
    pub metadata: Vec<MetadataColumn>,
    /// Most messages in one batch (default 10000).
    #[serde(default = "default_batch_messages")]
    pub batch_size: NonZeroUsize,
    /// Longest time the first message of a batch waits for more (default `200ms`).
    #[serde(default = "default_batch_wait", with = "duration")]
    pub batch_wait: Duration,
    /// Stop once every assigned partition is read to its end (default false: run until
    /// stopped). For backfills and tests.
    #[serde(default)]
    pub stop_at_end: bool,
    /// How long a revoked partition (or a stopping run) waits for its emitted batches to be
    /// durable before the offsets are committed and the partition let go (default `30s`).
    /// What is not durable by then is read again by the next owner (at-least-once).
    #[serde(default = "default_drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// Consumer-group session timeout (default `10s`): how soon a dead member's partitions
    /// move to another.
    #[serde(default = "default_session_timeout", with = "duration")]
    pub session_timeout: Duration,
    /// Longest time the broker may hold a fetch request open waiting for data (default
    /// `100ms`; librdkafka's `fetch.wait.max.ms`, whose own default is 500 ms). With data
    /// waiting, Apache Kafka answers at once whatever this says; it bounds how long an idle
    /// consumer's fetch is parked. tansu 0.6 holds every fetch for all of it (half of it from
    /// 250 ms up) even with data ready (docs/kafka.md), so it paces reading there.
    #[serde(default = "default_fetch_wait", with = "duration")]
    pub fetch_wait: Duration,
    /// How long librdkafka postpones the next fetch for a partition whose prefetch queue is
    /// full (`queued.min.messages`, 100,000 messages, or `queued.max.messages.kbytes`)
    /// (default `20ms`; librdkafka's `fetch.queue.backoff.ms`, whose own default is 1 s).
    /// A pipeline that drains the queue in well under a second otherwise idles until the
    /// second is up: reading 2M records from tansu took 9.1 s with 1 s and 3.3 s with 20 ms,
    /// same memory. 0 busy-polls (twice the CPU).
    #[serde(default = "default_fetch_queue_backoff", with = "duration")]
    pub fetch_queue_backoff: Duration,
    /// Raw librdkafka consumer properties, applied last.
    #[serde(default)]
    pub options: BTreeMap<String, VarStr>,
}

fn default_batch_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_wait() -> Duration {
    Duration::from_millis(100)
}
fn default_fetch_queue_backoff() -> Duration {
    Duration::from_millis(20)
}

impl KafkaSourceConfig {
    /// A config with defaults for `brokers` and `topics`.
    pub fn new(brokers: impl Into<String>, topics: Vec<String>) -> Self {
        KafkaSourceConfig {
            brokers: VarStr::new(brokers.into()),
            topics,
            group: None,
            start: StartFrom::default(),
            format: ValueFormat::Json,
            value_column: default_value_column(),
            registry: None,
            metadata: Vec::new(),
            batch_size: default_batch_messages(),
            batch_wait: default_batch_wait(),
            stop_at_end: false,
            drain_timeout: default_drain_timeout(),
            session_timeout: default_session_timeout(),
            fetch_wait: default_fetch_wait(),
            fetch_queue_backoff: default_fetch_queue_backoff(),
            options: BTreeMap::new(),
        }
    }

    /// Checks what serde cannot; collects every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.topics.is_empty() {
            problems.push("topics: name at least one topic".to_string());
        }
        if let StartFrom::Timestamp(t) = &self.start {
            if humantime::parse_rfc3339_weak(t).is_err() {
                problems.push(format!(
                    "start.timestamp: {t:?} is not an RFC 3339 time like 2026-01-01T00:00:00Z"
                ));
            }
        }
        for key in self.options.keys() {
            if matches!(
                key.as_str(),
                "enable.auto.commit" | "enable.auto.offset.store" | "group.id"
            ) {
                problems.push(format!(
                    "options.{key}: set by tributary (offsets are committed after the data is \
                     durable; the group is `group`)"
                ));
            }
        }
        for (key, value) in [
            ("fetch_wait", self.fetch_wait),
            ("fetch_queue_backoff", self.fetch_queue_backoff),
        ] {
            if value > Duration::from_secs(300) {
                problems.push(format!(
                    "{key}: {} is over librdkafka's limit of 300s",
                    humantime::format_duration(value)
                ));
            }
        }
        registry_problems(self.format, self.registry.as_deref(), false, &mut problems);
        if matches!(self.format, ValueFormat::String | ValueFormat::Raw)
            && self
                .metadata
                .iter()
                .any(|m| m.column() == self.value_column)
        {
            problems.push(format!(
                "value_column: {:?} is also a metadata column",
                self.value_column
            ));
        }
        problems_to_error("source", problems)
    }
}

fn registry_problems(
    format: ValueFormat,
    registry: Option<&RegistryConfig>,
    sink: bool,
    problems: &mut Vec<String>,
) {
    match (format.uses_registry(), registry) {
        (true, None) => problems.push(format!(
            "format: {} needs `registry: {{ url: … }}` (a Confluent-compatible schema registry, \
             e.g. `tributary registry serve`)",
            format.as_str()
        )),
        (false, Some(_)) => problems.push(format!(
            "registry: only used with `format: avro`, `json_schema` or `protobuf` (format is {})",
            format.as_str()
        )),
        (true, Some(r)) => r.problems(sink, problems),
        (false, None) => {}
    }
}

fn problems_to_error(what: &str, problems: Vec<String>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Value {
        field: what.to_string(),
        message: problems.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_validation_collects_every_problem() {
        let mut c = KafkaSinkConfig::new("b:9092", "cdc.{table");
        c.acks = "1".into();
        c.key = Some(KeyConfig::Fields(vec![]));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("topic: "), "{e}");
        assert!(e.contains("key: the field list is empty"), "{e}");
        assert!(e.contains("needs `idempotence: false`"), "{e}");
        c.topic = "cdc.{table}".into();
        c.key = Some(KeyConfig::Template("{id}".into()));
        c.idempotence = false;
        c.validate().unwrap();
    }

    #[test]
    fn compression_levels_are_checked_per_codec() {
        let mut c = KafkaSinkConfig::new("b:9092", "t");
        for (codec, level, problem) in [
            (Compression::Zstd, 1, None),
            (Compression::Zstd, 12, None),
            (
                Compression::Zstd,
                0,
                Some("0 is out of range for zstd (1 to 12)"),
            ),
            (
                Compression::Zstd,
                13,
                Some("13 is out of range for zstd (1 to 12)"),
            ),
            (Compression::Lz4, 0, None),
            (Compression::Gzip, 9, None),
            (
                Compression::Gzip,
                10,
                Some("10 is out of range for gzip (0 to 9)"),
            ),
            (Compression::Snappy, 1, Some("snappy has no levels")),
            (Compression::None, 1, Some("none has no levels")),
        ] {
            c.compression = codec;
            c.compression_level = Some(level);
            match (c.validate(), problem) {
                (Ok(()), None) => {}
                (Err(e), Some(p)) => assert!(e.to_string().contains(p), "{codec:?} {level}: {e}"),
                (got, want) => panic!("{codec:?} {level}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn source_refuses_options_that_break_commit_after_ack() {
        let mut c = KafkaSourceConfig::new("b:9092", vec!["t".into()]);
        c.options
            .insert("enable.auto.commit".into(), VarStr::new("true".to_string()));
        c.start = StartFrom::Timestamp("yesterday".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("options.enable.auto.commit"), "{e}");
        assert!(e.contains("start.timestamp"), "{e}");
    }

    #[test]
    fn source_fetch_waits_are_bounded_by_librdkafkas_limit() {
        let mut c = KafkaSourceConfig::new("b:9092", vec!["t".into()]);
        assert_eq!(c.fetch_wait, Duration::from_millis(100));
        assert_eq!(c.fetch_queue_backoff, Duration::from_millis(20));
        c.fetch_wait = Duration::from_secs(300);
        c.fetch_queue_backoff = Duration::from_secs(300);
        c.validate().unwrap();
        c.fetch_wait = Duration::from_millis(300_001);
        c.fetch_queue_backoff = Duration::from_secs(301);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("fetch_wait: 5m 1ms is over librdkafka's limit of 300s"),
            "{e}"
        );
        assert!(
            e.contains("fetch_queue_backoff: 5m 1s is over librdkafka's limit of 300s"),
            "{e}"
        );
    }
}
