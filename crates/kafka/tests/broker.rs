//! The Kafka sink and source against a real broker (tansu on loopback, started by
//! `scripts/services up`; `TRIBUTARY_KAFKA_BROKERS` says where). A missing broker fails these
//! tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::Array;
use common::*;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::RunStatus;
use tributary_kafka::config::{
    Compression, Delivery, KeyConfig, MetadataColumn, StartFrom, ValueFormat,
};
use tributary_kafka::{KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig};

fn sink_config(topic: &str) -> KafkaSinkConfig {
    let mut c = KafkaSinkConfig::new(brokers(), topic);
    c.key = Some(KeyConfig::Fields(vec!["id".into()]));
    c.headers.insert("region".into(), "{region}".into());
    c.headers.insert("origin".into(), "tributary-test".into());
    c
}

fn source_config(topics: &[&str], group: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(brokers(), topics.iter().map(|t| t.to_string()).collect());
    c.group = Some(group.to_string());
    c.stop_at_end = true;
    c.batch_wait = Duration::from_millis(50);
    c.metadata = vec![
        MetadataColumn::Topic,
        MetadataColumn::Partition,
        MetadataColumn::Offset,
        MetadataColumn::Key,
        MetadataColumn::Headers,
    ];
    c
}

/// Produces `n` generated rows to `topic` through the Kafka sink.
async fn produce_rows(dir: &std::path::Path, name: &str, config: KafkaSinkConfig, n: i64) {
    let source = RowSource {
        total: n,
        batch: 10_000,
        huge: vec![],
    };
    produce(dir, name, Box::new(source), config, n as u64).await;
}

struct Row {
    id: i64,
    amount: f64,
    region: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

fn collected_rows(c: &Collected) -> Vec<Row> {
    let mut out = Vec::new();
    for b in c.lock().unwrap().iter() {
        let d = &b.data;
        let col = |n: &str| d.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
        let ids = col("id").as_primitive::<Int64Type>();
        let amounts = col("amount").as_primitive::<Float64Type>();
        let regions = col("region").as_string::<i32>();
        let parts = col("kafka_partition").as_primitive::<Int32Type>();
        let offsets = col("kafka_offset").as_primitive::<Int64Type>();
        let keys = col("kafka_key").as_binary::<i32>();
        let headers = col("kafka_headers").as_list::<i32>();
        for i in 0..d.num_rows() {
            let h = headers.value(i);
            let h = h.as_struct();
            let hk = h.column(0).as_string::<i32>();
            let hv = h.column(1).as_binary::<i32>();
            out.push(Row {
                id: ids.value(i),
                amount: amounts.value(i),
                region: regions.value(i).to_string(),
                partition: parts.value(i),
                offset: offsets.value(i),
                key: keys.value(i).to_vec(),
                headers: (0..h.len())
                    .map(|j| (hk.value(j).to_string(), hv.value(j).to_vec()))
                    .collect(),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_records_round_trip_with_keys_headers_and_zstd() {
    const N: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("million");
    create_topic(&topic, 4).await;

    let started = Instant::now();
    produce_rows(dir.path(), "produce", sink_config(&topic), N).await;
    let produce_secs = started.elapsed().as_secs_f64();

    let group = unique("million-group");
    let started = Instant::now();
    let out = consume(dir.path(), "consume", source_config(&[&topic], &group)).await;
    let consume_secs = started.elapsed().as_secs_f64();

    eprintln!(
        "1M records: produced in {produce_secs:.2}s ({:.0}/s), consumed in {consume_secs:.2}s ({:.0}/s)",
        N as f64 / produce_secs,
        N as f64 / consume_secs
    );

    let rows = collected_rows(&out);
    assert_eq!(rows.len() as i64, N, "count");
    let ids: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids.len() as i64, N, "every id once");
    assert_eq!((ids.first(), ids.last()), (Some(&0), Some(&(N - 1))));
    // Checksums over values that went through JSON both ways.
    let id_sum: i64 = rows.iter().map(|r| r.id).sum();
    assert_eq!(id_sum, N * (N - 1) / 2);
    let amount_sum: f64 = rows.iter().map(|r| r.amount).sum();
    let expected: f64 = (0..N).map(|i| (i % 1000) as f64 + 0.25).sum();
    assert!(
        (amount_sum - expected).abs() < 1e-3,
        "{amount_sum} vs {expected}"
    );
    // Keys and headers came through; one key, one partition; offsets dense per partition.
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.key, r.id.to_string().into_bytes(), "key of {}", r.id);
        assert_eq!(r.region, region(r.id));
        assert_eq!(
            r.headers,
            vec![
                ("origin".to_string(), b"tributary-test".to_vec()),
                ("region".to_string(), region(r.id).as_bytes().to_vec()),
            ]
        );
        per_partition.entry(r.partition).or_default().push(r.offset);
    }
    assert_eq!(per_partition.len(), 4, "keys spread over every partition");
    let mut ends = BTreeMap::new();
    for (p, mut offsets) in per_partition {
        offsets.sort_unstable();
        let n = offsets.len() as i64;
        assert_eq!(
            offsets,
            (0..n).collect::<Vec<_>>(),
            "partition {p}: dense, no duplicates"
        );
        ends.insert(p, n);
    }
    // The group's offsets were committed after the data was durable: all of it.
    assert_eq!(group_offsets(&group, &topic, 4), ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for codec in [
        Compression::Lz4,
        Compression::Snappy,
        Compression::Gzip,
        Compression::None,
    ] {
        let topic = unique(codec.as_str());
        create_topic(&topic, 1).await;
        let mut c = sink_config(&topic);
        c.compression = codec;
        produce_rows(dir.path(), &format!("p-{}", codec.as_str()), c, 5_000).await;
        let out = consume(
            dir.path(),
            &format!("c-{}", codec.as_str()),
            source_config(&[&topic], &unique("codec")),
        )
        .await;
        let rows = collected_rows(&out);
        let ids: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
        assert_eq!((rows.len(), ids.len()), (5_000, 5_000), "{codec:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_key_templates_route_rows() {
    let dir = tempfile::tempdir().unwrap();
    let base = unique("routed");
    for r in ["eu", "us", "apac"] {
        create_topic(&format!("{base}.{r}"), 2).await;
    }
    let mut c = sink_config(&format!("{base}.{{region}}"));
    c.key = Some(KeyConfig::Template("{region}:{id}".into()));
    produce_rows(dir.path(), "routed", c, 3_000).await;
    let topics: Vec<String> = ["eu", "us", "apac"]
        .iter()
        .map(|r| format!("{base}.{r}"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let out = consume(
        dir.path(),
        "read-routed",
        source_config(&names, &unique("routed")),
    )
    .await;
    let batches = out.lock().unwrap();
    let mut seen = 0;
    for b in batches.iter() {
        let topic = b
            .data
            .column_by_name("kafka_topic")
            .unwrap()
            .as_string::<i32>();
        let regions = b.data.column_by_name("region").unwrap().as_string::<i32>();
        let ids = b
            .data
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let keys = b
            .data
            .column_by_name("kafka_key")
            .unwrap()
            .as_binary::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(topic.value(i), format!("{base}.{}", regions.value(i)));
            assert_eq!(&*b.meta.stream, topic.value(i), "one stream per topic");
            assert_eq!(
                keys.value(i),
                format!("{}:{}", regions.value(i), ids.value(i)).as_bytes()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_dead_lettered_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("oversized");
    create_topic(&topic, 1).await;
    let mut c = sink_config(&topic);
    c.options.insert(
        "message.max.bytes".into(),
        tributary_core::config::VarStr::new("20000".to_string()),
    );
    let source = RowSource {
        total: 1_000,
        batch: 100,
        huge: vec![417],
    };
    let summary = pipeline(
        dir.path(),
        "oversized",
        Box::new(source),
        Box::new(KafkaSink::new(c).unwrap()),
        |_| {},
    )
    .run()
    .await
    .unwrap();
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(
        summary.rows_out, 999,
        "the refused row is not counted as written"
    );
    let dead = NdjsonDeadLetter::read_all(dir.path().join("oversized.dlq.ndjson")).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].message.contains("too large"),
        "the reason is kept: {}",
        dead[0].message
    );
    assert!(dead[0].raw.as_deref().unwrap().contains("\"id\":417"));
    assert_eq!(
        dead[0].position.as_ref().unwrap().as_json()["row"],
        400,
        "the batch's start position"
    );
    assert_eq!(end_offsets(&topic, 1)[&0], 999, "every other row delivered");
}

/// A raw producer for messages the sink would never write. One record per batch: tansu
/// (memory storage) skips the rest of a record batch when a fetch starts inside it, and this
/// test starts at offset 2 (see docs/kafka.md).
fn raw_producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap()
}

fn send_all(topic: &str, payloads: &[&[u8]]) {
    let p = raw_producer();
    for (i, v) in payloads.iter().enumerate() {
        let key = i.to_string();
        p.send(
            BaseRecord::to(topic)
                .partition(0)
                .key(&key)
                .payload(*v)
                .headers(OwnedHeaders::new()),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_with_topic_partition_offset() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("mixed");
    create_topic(&topic, 1).await;
    send_all(
        &topic,
        &[
            br#"{"id":1,"v":"a"}"#,
            b"not json",
            br#"{"id":3,"v":"c"}"#,
            b"[1,2]",
            br#"{"id":5,"v":"e","extra":true}"#,
        ],
    );
    let mut c = source_config(&[&topic], &unique("mixed"));
    c.metadata = vec![MetadataColumn::Offset];
    let out = consume(dir.path(), "mixed", c).await;
    let batches = out.lock().unwrap();

    let mut got = Vec::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let ids = b
            .data
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let offs = b
            .data
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.push((ids.value(i), offs.value(i)));
        }
    }
    // `evolve` widened the schema for `extra`; the metadata stayed lined up with the rows.
    assert_eq!(got, vec![(1, 0), (3, 2), (5, 4)]);
    let dead = NdjsonDeadLetter::read_all(dir.path().join("mixed.dlq.ndjson")).unwrap();
    let locations: Vec<&str> = dead
        .iter()
        .map(|d| d.location.as_deref().unwrap())
        .collect();
    assert_eq!(
        locations,
        [format!("{topic}/0@1"), format!("{topic}/0@3")]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(dead[0].raw.as_deref(), Some("not json"));
    assert_eq!(dead[0].position.as_ref().unwrap().as_json()["offset"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_and_raw_values_and_explicit_start_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("text");
    create_topic(&topic, 1).await;
    send_all(&topic, &[b"zero", b"one", b"two", &[0xff, 0xfe], b"four"]);

    let mut c = source_config(&[&topic], &unique("text"));
    c.format = ValueFormat::String;
    c.metadata = vec![MetadataColumn::Offset];
    c.start = StartFrom::Offsets(BTreeMap::from([(topic.clone(), BTreeMap::from([(0, 2)]))]));
    let out = consume(dir.path(), "text", c).await;
    let mut got = Vec::new();
    for b in out.lock().unwrap().iter() {
        let v = b.data.column_by_name("value").unwrap().as_string::<i32>();
        got.extend((0..b.num_rows()).map(|i| v.value(i).to_string()));
    }
    assert_eq!(
        got,
        ["two", "four"],
        "starts at offset 2; invalid UTF-8 refused"
    );
    let dead = NdjsonDeadLetter::read_all(dir.path().join("text.dlq.ndjson")).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].message.contains("not UTF-8"), "{}", dead[0].message);
    assert_eq!(dead[0].raw_hex.as_deref(), Some("fffe"));

    let mut c = source_config(&[&topic], &unique("raw"));
    c.format = ValueFormat::Raw;
    c.metadata = vec![];
    let out = consume(dir.path(), "raw", c).await;
    let mut got = Vec::new();
    for b in out.lock().unwrap().iter() {
        let v = b.data.column_by_name("value").unwrap().as_binary::<i32>();
        got.extend((0..b.num_rows()).map(|i| v.value(i).to_vec()));
    }
    assert_eq!(got.len(), 5);
    assert_eq!(got[3], vec![0xff, 0xfe]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_move_only_with_durable_batches() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ack");
    create_topic(&topic, 1).await;
    // One record per batch: the second run resumes at offset 300, and tansu (memory storage)
    // skips the rest of a record batch when a fetch starts inside it (see docs/kafka.md).
    let mut c = sink_config(&topic);
    c.batch_messages = std::num::NonZeroUsize::new(1).unwrap();
    produce_rows(dir.path(), "ack-produce", c, 1_000).await;
    let group = unique("ack");

    // Durable after every batch of 100; the fourth write fails: 300 are durable.
    let mut c = source_config(&[&topic], &group);
    c.batch_size = std::num::NonZeroUsize::new(100).unwrap();
    let out = Collected::default();
    let mut sink = CollectSink::new(out.clone());
    sink.durable_each = true;
    sink.fail_at = Some(3);
    let failure = pipeline(
        dir.path(),
        "ack-1",
        Box::new(KafkaSource::new(c.clone()).unwrap()),
        Box::new(sink),
        |_| {},
    )
    .run()
    .await
    .unwrap_err();
    assert!(
        failure.to_string().contains("the test sink fails here"),
        "{failure}"
    );
    assert_eq!(total_rows(&out), 300);
    assert_eq!(
        group_offsets(&group, &topic, 1)[&0],
        300,
        "only the durable prefix"
    );

    // The next run starts at the group's offset and reads the rest once.
    let out = consume(dir.path(), "ack-2", c).await;
    let rows = collected_rows(&out);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 700);
    assert_eq!(rows.iter().map(|r| r.offset).min(), Some(300));
    assert_eq!(group_offsets(&group, &topic, 1)[&0], 1_000);
}

/// Emits rows `0..first`, waits for the gate, then emits `first..total`.
struct GatedSource {
    first: i64,
    total: i64,
    gate: std::sync::Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl tributary_core::Source for GatedSource {
    fn describe(&self) -> String {
        "gated rows".into()
    }
    async fn discover(
        &mut self,
    ) -> Result<Vec<tributary_core::StreamInfo>, tributary_core::ConnectorError> {
        Ok(vec![])
    }
    async fn run(
        &mut self,
        ctx: tributary_core::SourceContext,
    ) -> Result<(), tributary_core::ConnectorError> {
        let pos =
            |n: i64| tributary_core::Position::encode(&serde_json::json!({ "row": n })).unwrap();
        for (from, to) in [(0, self.first), (self.first, self.total)] {
            if from > 0 {
                self.gate.notified().await;
            }
            let meta = tributary_core::BatchMeta::new("rows".into(), pos(from), pos(to), 0);
            let batch = tributary_core::Batch {
                data: rows(from, to),
                meta,
            };
            if ctx.emit(batch).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_retries_through_a_broker_outage_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = PrivateBroker::start();
    let topic = unique("outage");
    create_topic_on(&broker.address(), &topic, 1).await;
    let mut c = sink_config(&topic);
    c.brokers = tributary_core::config::VarStr::new(broker.address());
    c.delivery_timeout = Duration::from_secs(2);
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let source = GatedSource {
        first: 1_000,
        total: 3_000,
        gate: gate.clone(),
    };
    let metrics = tributary_core::metrics::Metrics::new();
    let run = pipeline(
        dir.path(),
        "outage",
        Box::new(source),
        Box::new(KafkaSink::new(c).unwrap()),
        |s| s.commit_interval = Duration::from_millis(300),
    )
    .with_metrics(metrics.clone());
    let task = tokio::spawn(run.run());
    let state = tributary_core::state::SqliteStateStore::open(dir.path().join("state.db")).unwrap();
    let committed = move || {
        use tributary_core::StateStore;
        state
            .positions("outage")
            .ok()?
            .first()
            .and_then(|s| s.position.as_json()["row"].as_i64())
    };
    poll_until("the first half committed", 60, || {
        committed().filter(|r| *r == 1_000)
    });

    // The broker goes away; the second half is produced into the void.
    broker.kill();
    gate.notify_one();
    let flush_retries = metrics
        .retries
        .get_or_create(&tributary_core::metrics::OperationLabels {
            pipeline: "outage".into(),
            operation: "sink.flush".into(),
        });
    poll_until("a flush retried after undelivered messages", 60, || {
        (flush_retries.get() >= 1).then_some(())
    });
    assert_eq!(
        committed(),
        Some(1_000),
        "nothing past the outage is committed"
    );

    // The broker comes back (empty: memory storage, so it has also forgotten the idempotent
    // producer's id); the sink delivers without help.
    broker.restart();
    create_topic_on(&broker.address(), &topic, 1).await;
    let summary = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("the pipeline recovered by itself")
        .unwrap()
        .unwrap();
    assert_eq!(summary.status, RunStatus::Completed);
    assert!(summary.retries >= 1);
    assert_eq!(committed(), Some(3_000));
    let ids: BTreeSet<i64> = read_all_on(&broker.address(), &topic, 1)
        .iter()
        .map(|(_, _, _, v)| {
            serde_json::from_slice::<serde_json::Value>(v).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (1_000..3_000).collect(),
        "the second half, produced after the outage"
    );
}

fn exactly_once_config(topic: &str, positions: &str) -> KafkaSinkConfig {
    let mut c = sink_config(topic);
    c.delivery = Delivery::ExactlyOnce;
    c.positions_topic = positions.to_string();
    c
}

/// tansu 0.6 takes InitProducerId (so a second producer with the same transactional id
/// fences the first) but has no EndTxn: no transaction can commit. The exactly-once sink finds
/// out at open, with one probing transaction, and says what to do instead of failing at its
/// first commit. (Against a broker with transactions this test fails: the probe commits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_broker_without_transactions_stops_at_open_saying_so() {
    use tributary_core::Sink;
    let topic = unique("eos");
    create_topic(&topic, 1).await;
    let mut sink = KafkaSink::new(exactly_once_config(&topic, &unique("eos-positions"))).unwrap();
    let err = sink
        .open(&unique("eos"))
        .await
        .expect_err("tansu cannot commit a transaction")
        .to_string();
    assert!(
        err.contains("does not support Kafka transactions") && err.contains("at_least_once"),
        "{err}"
    );
}

/// The positions topic is read to its end: the newest position of each stream of this
/// pipeline wins, other pipelines' records and a deleted stream's tombstone are respected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_positions_topic_gives_the_newest_position_per_stream_and_forgets_a_pipelines() {
    use tributary_kafka::positions;
    let topic = unique("positions");
    let broker = brokers();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || positions::ensure_topic(&broker, &t).unwrap())
        .await
        .unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let send = |pipeline: &str, stream: &str, value: Option<&str>| {
        let key = positions::key(pipeline, stream);
        let mut r = BaseRecord::<[u8], str>::to(&topic).key(key.as_slice());
        if let Some(v) = value {
            r = r.payload(v);
        }
        p.send(r).unwrap();
    };
    send("a", "orders", Some(r#"{"row":10}"#));
    send("a", "users", Some(r#"{"row":3}"#));
    send("b", "orders", Some(r#"{"row":99}"#));
    send("a", "orders", Some(r#"{"row":20}"#));
    send("a", "gone", Some(r#"{"row":1}"#));
    send("a", "gone", None);
    p.flush(Duration::from_secs(30)).unwrap();
    let broker = brokers();
    let (read, forgotten, after, other) = tokio::task::spawn_blocking(move || {
        let read = positions::read(&broker, &topic, "a").unwrap();
        // `tributary state reset`: tombstones for pipeline a's streams, b's stay.
        let forgotten = positions::forget(&broker, &topic, "a").unwrap();
        let after = positions::read(&broker, &topic, "a").unwrap();
        let other = positions::read(&broker, &topic, "b").unwrap();
        (read, forgotten, after, other)
    })
    .await
    .unwrap();
    let pos = |v: serde_json::Value| tributary_core::Position::encode(&v).unwrap();
    assert_eq!(
        read,
        vec![
            ("orders".to_string(), pos(serde_json::json!({"row": 20}))),
            ("users".to_string(), pos(serde_json::json!({"row": 3}))),
        ]
    );
    assert_eq!(forgotten, 2);
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(
        other,
        vec![("orders".to_string(), pos(serde_json::json!({"row": 99})))]
    );
}

/// The pipeline's own position (its state store, or a transactional sink's) wins when it is
/// ahead of the group's committed offset: the data up to it is durable, and a group commit
/// lost to a crash must not make the next run read it again. (Simulated here by moving the
/// group's offset back after a complete run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_ahead_of_the_groups_offset_is_where_reading_resumes() {
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("own");
    create_topic(&topic, 1).await;
    let mut c = sink_config(&topic);
    c.batch_messages = std::num::NonZeroUsize::new(1).unwrap();
    produce_rows(dir.path(), "own-produce", c.clone(), 200).await;
    let group = unique("own");
    let source = source_config(&[&topic], &group);
    let first = consume(dir.path(), "own", source.clone()).await;
    assert_eq!(total_rows(&first), 200);
    assert_eq!(group_offsets(&group, &topic, 1)[&0], 200);

    // The group's commit is "lost": back to 50.
    let rewind = consumer(&group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(50))
        .unwrap();
    rewind.commit(&tpl, CommitMode::Sync).unwrap();
    drop(rewind);
    assert_eq!(group_offsets(&group, &topic, 1)[&0], 50);

    // Ids 0..200 came from a source whose rows restart at 0 per run: tell runs apart by
    // offset instead.
    let dir2 = tempfile::tempdir().unwrap();
    produce_rows(dir2.path(), "own-produce", c, 30).await;
    let second = consume(dir.path(), "own", source).await;
    let offsets: Vec<i64> = collected_rows(&second).iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (200..230).collect::<Vec<_>>(),
        "only the new records: the state store's position (200) is ahead of the group's (50)"
    );
    assert_eq!(group_offsets(&group, &topic, 1)[&0], 230);
}

/// A consuming pipeline while its broker restarts (tansu on S3 storage, so the topic, its
/// records and the group's offsets survive): it reconnects by itself, reads what was produced
/// after the restart, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consuming_pipeline_rides_out_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = PrivateBroker::start_on_s3();
    let topic = unique("restart");
    let address = broker.address();
    create_topic_on(&address, &topic, 1).await;
    let produce = |total: i64| {
        let mut c = sink_config(&topic);
        c.brokers = tributary_core::config::VarStr::new(address.clone());
        c.batch_messages = std::num::NonZeroUsize::new(1).unwrap();
        let source = RowSource {
            total,
            batch: 100,
            huge: vec![],
        };
        pipeline(
            dir.path(),
            "restart-produce",
            Box::new(source),
            Box::new(KafkaSink::new(c).unwrap()),
            |_| {},
        )
    };
    produce(300).run().await.unwrap();

    let mut c = source_config(&[&topic], &unique("restart"));
    c.brokers = tributary_core::config::VarStr::new(address.clone());
    c.stop_at_end = false;
    std::fs::create_dir_all(dir.path().join("consume")).unwrap();
    let out = Collected::default();
    let mut sink = CollectSink::new(out.clone());
    sink.durable_each = true;
    let stop = tokio_util::sync::CancellationToken::new();
    let consuming = pipeline(
        &dir.path().join("consume"),
        "restart-consume",
        Box::new(KafkaSource::new(c).unwrap()),
        Box::new(sink),
        |s| s.commit_interval = Duration::from_millis(200),
    )
    .with_stop(stop.clone());
    let task = tokio::spawn(consuming.run());
    let ids = || -> BTreeSet<i64> { collected_rows(&out).iter().map(|r| r.id).collect() };
    poll_until("the first 300", 60, || (ids().len() == 300).then_some(()));

    broker.kill();
    broker.restart();
    // The producer resumes at row 300 from its own state: ids 300..600.
    produce(600).run().await.unwrap();
    poll_until("the 300 produced after the restart", 120, || {
        (ids().len() == 600).then_some(())
    });
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap();
    assert_eq!(summary.status, RunStatus::Stopped);
    assert_eq!(ids(), (0..600).collect::<BTreeSet<_>>(), "nothing lost");
    assert_eq!(
        read_all_on(&address, &topic, 1).len(),
        600,
        "the broker kept the records from before its restart (S3 storage)"
    );
    let rows = collected_rows(&out).len();
    assert!(
        rows <= 600 + 100,
        "{rows} rows: duplicates beyond one uncommitted batch"
    );
}
