//! Helpers for the tests against the real broker (tansu, started by `scripts/services`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::error::ConnectorError;
use tributary_core::runtime::{Pipeline, PipelineSettings};
use tributary_core::state::SqliteStateStore;
use tributary_core::{
    Batch, BatchMeta, Position, Sink, Source, SourceContext, StreamInfo, WriteOutcome,
};

/// The broker address; a missing service fails the test (it never skips).
pub fn brokers() -> String {
    std::env::var("TRIBUTARY_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("TRIBUTARY_KAFKA_BROKERS is not set: run the tests with scripts/test, which starts the services")
    })
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{prefix}-{}-{}", std::process::id(), t.as_nanos())
}

/// Creates a topic and waits until its metadata shows every partition.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&brokers(), name, partitions).await
}

/// Creates a topic on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    poll_until(&format!("topic {name} metadata"), 30, || {
        let md = consumer
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()?;
        let t = md.topics().iter().find(|t| t.name() == name)?;
        (t.error().is_none() && t.partitions().len() == partitions as usize).then_some(())
    });
}

pub fn consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

/// (partition, offset, key, value) of a message.
pub type RawMessage = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// Every message of a topic as (partition, offset, key, value), read to the end of every
/// partition with a plain consumer (not tributary).
///
/// The end is librdkafka's end-of-partition event, which follows the Fetch responses' high
/// watermark. ListOffsets is not used: tansu answers ListOffsets(latest) with the base
/// offset of the newest record batch plus one, short of the real end.
pub fn read_all(topic: &str, partitions: i32) -> Vec<RawMessage> {
    read_all_on(&brokers(), topic, partitions)
}

/// [`read_all`] on the broker at `brokers`.
pub fn read_all_on(brokers: &str, topic: &str, partitions: i32) -> Vec<RawMessage> {
    use rdkafka::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("read-all"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end timed out"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Messages per partition (offsets start at 0 in these fresh topics).
pub fn end_offsets(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    for (p, o, _, _) in read_all(topic, partitions) {
        let e = ends.get_mut(&p).unwrap();
        *e = (*e).max(o + 1);
    }
    ends
}

/// A group's committed offset per partition (-1 where none).
pub fn group_offsets(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), o)
        })
        .collect()
}

/// Polls `f` until it returns Some, or panics after `secs` seconds.
pub fn poll_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `id, name, region, amount` rows `from..to`.
pub fn rows(from: i64, to: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    let ids: Vec<i64> = (from..to).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("name-{i}")),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| region(*i)),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| (*i % 1000) as f64 + 0.25),
            )),
        ],
    )
    .unwrap()
}

pub fn region(id: i64) -> &'static str {
    ["eu", "us", "apac"][(id % 3) as usize]
}

/// A bounded source of generated rows, resumable from its position (`{"row": n}`).
pub struct RowSource {
    pub total: i64,
    pub batch: i64,
    /// Replace these rows' `name` with a long text (for size-limit tests).
    pub huge: Vec<i64>,
}

#[async_trait::async_trait]
impl Source for RowSource {
    fn describe(&self) -> String {
        "generated rows".into()
    }
    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        Ok(vec![])
    }
    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let pos = |n: i64| Position::encode(&serde_json::json!({ "row": n })).unwrap();
        let mut at = ctx
            .checkpoint("rows")
            .map(|p| p.as_json()["row"].as_i64().unwrap())
            .unwrap_or(0);
        while at < self.total && !ctx.is_stopping() {
            let to = (at + self.batch).min(self.total);
            let mut data = rows(at, to);
            if self.huge.iter().any(|h| (at..to).contains(h)) {
                let names: Vec<String> = (at..to)
                    .map(|i| {
                        if self.huge.contains(&i) {
                            "x".repeat(50_000)
                        } else {
                            format!("name-{i}")
                        }
                    })
                    .collect();
                let mut cols = data.columns().to_vec();
                cols[1] = Arc::new(StringArray::from(names));
                data = RecordBatch::try_new(data.schema(), cols).unwrap();
            }
            let meta = BatchMeta::new("rows".into(), pos(at), pos(to), 0);
            if ctx.emit(Batch { data, meta }).await.is_err() {
                break;
            }
            at = to;
        }
        Ok(())
    }
}

/// What a [`CollectSink`] kept: the batches made durable, in order.
pub type Collected = Arc<Mutex<Vec<Batch>>>;

/// A sink that keeps batches in memory (the tests' observer). `fail_at`: the write call
/// (0-based) that fails fatally; `durable_each`: report every write durable.
pub struct CollectSink {
    pub out: Collected,
    pub buffered: Vec<Batch>,
    pub writes: usize,
    pub fail_at: Option<usize>,
    pub durable_each: bool,
}

impl CollectSink {
    pub fn new(out: Collected) -> Self {
        CollectSink {
            out,
            buffered: Vec::new(),
            writes: 0,
            fail_at: None,
            durable_each: false,
        }
    }
}

#[async_trait::async_trait]
impl Sink for CollectSink {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        let call = self.writes;
        self.writes += 1;
        if self.fail_at == Some(call) {
            return Err(ConnectorError::fatal("the test sink fails here"));
        }
        self.buffered.push(batch.clone());
        if self.durable_each {
            self.flush().await?;
            return Ok(WriteOutcome::Durable);
        }
        Ok(WriteOutcome::Buffered)
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        self.out.lock().unwrap().append(&mut self.buffered);
        Ok(())
    }
}

/// A pipeline with its own state and dead-letter file in `dir`.
pub fn pipeline(
    dir: &std::path::Path,
    name: &str,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    tweak: impl FnOnce(&mut PipelineSettings),
) -> Pipeline {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut settings = PipelineSettings::new(name);
    settings.retry.initial_delay = Duration::from_millis(50);
    tweak(&mut settings);
    Pipeline::new(
        settings,
        source,
        sink,
        Box::new(NdjsonDeadLetter::new(
            dir.join(format!("{name}.dlq.ndjson")),
        )),
        Arc::new(SqliteStateStore::open(dir.join("state.db")).unwrap()),
    )
}

/// Rows of collected batches, as (column name → values) accessors.
pub fn total_rows(c: &Collected) -> usize {
    c.lock().unwrap().iter().map(|b| b.num_rows()).sum()
}

/// A tansu broker of the test's own (memory storage, or S3 storage on the moto server that
/// survives a restart), so a test can stop and start it.
/// `scripts/services` installs the binary at `$TRIBUTARY_CACHE/tansu/bin/tansu`
/// (default `~/.cache/tributary`); `TRIBUTARY_TANSU` overrides the path.
pub struct PrivateBroker {
    pub port: u16,
    child: Option<std::process::Child>,
    storage: String,
}

impl PrivateBroker {
    pub fn start() -> Self {
        Self::start_with("memory://tansu/".into())
    }

    fn start_with(storage: String) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = PrivateBroker {
            port,
            child: None,
            storage,
        };
        b.restart();
        b
    }

    /// A broker storing everything in a fresh bucket of the S3 server that
    /// `scripts/services` runs (moto, `TRIBUTARY_S3_ENDPOINT`): its topics, records and group
    /// offsets survive a restart. (tansu's `postgres://` storage needs a schema that its
    /// crates do not ship.)
    pub fn start_on_s3() -> Self {
        let endpoint = std::env::var("TRIBUTARY_S3_ENDPOINT").unwrap_or_else(|_| {
            panic!("TRIBUTARY_S3_ENDPOINT is not set: run the tests with scripts/test, which starts the services")
        });
        let bucket = unique("tansu").to_lowercase();
        create_bucket(&endpoint, &bucket);
        Self::start_with(format!("s3://{bucket}/"))
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn binary() -> std::path::PathBuf {
        if let Ok(p) = std::env::var("TRIBUTARY_TANSU") {
            return p.into();
        }
        let cache = std::env::var("TRIBUTARY_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/tributary")
            });
        let bin = cache.join("tansu/bin/tansu");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/services up",
            bin.display()
        );
        bin
    }

    /// Starts the broker (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(Self::binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .env("AWS_ACCESS_KEY_ID", "tributary")
            .env("AWS_SECRET_ACCESS_KEY", "tributary")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .env(
                "AWS_ENDPOINT",
                std::env::var("TRIBUTARY_S3_ENDPOINT").unwrap_or_default(),
            )
            .env("AWS_ALLOW_HTTP", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.address();
        poll_until("the private broker to listen", 30, || {
            std::net::TcpStream::connect(&addr).ok().map(drop)
        });
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates a bucket on the S3 server at `endpoint` (`http://host:port`; moto takes unsigned
/// requests).
fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket {bucket}: {answer}"
    );
}

/// Runs `source` into the Kafka sink and checks that all `rows` were written, none refused.
pub async fn produce(
    dir: &std::path::Path,
    name: &str,
    source: Box<dyn Source>,
    config: tributary_kafka::KafkaSinkConfig,
    rows: u64,
) {
    let summary = pipeline(
        dir,
        name,
        source,
        Box::new(tributary_kafka::KafkaSink::new(config).unwrap()),
        |_| {},
    )
    .run()
    .await
    .unwrap();
    assert_eq!(summary.rows_out, rows);
    assert_eq!(summary.dead_lettered, 0);
}

/// Reads topics to their end through the Kafka source.
pub async fn consume(
    dir: &std::path::Path,
    name: &str,
    config: tributary_kafka::KafkaSourceConfig,
) -> Collected {
    let out = Collected::default();
    let summary = pipeline(
        dir,
        name,
        Box::new(tributary_kafka::KafkaSource::new(config).unwrap()),
        Box::new(CollectSink::new(out.clone())),
        |_| {},
    )
    .run()
    .await
    .unwrap();
    assert_eq!(
        summary.status,
        tributary_core::runtime::RunStatus::Completed
    );
    out
}
