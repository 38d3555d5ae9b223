//! `tributary run` with Kafka on either side, against the real broker (tansu on loopback,
//! started by `scripts/services up`): file → Kafka → Parquet, `kill -9` of a producing and of
//! a consuming pipeline, and two consumer processes sharing a group while one is killed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Int32Array, Int64Array};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

fn brokers() -> String {
    std::env::var("TRIBUTARY_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("TRIBUTARY_KAFKA_BROKERS is not set: run the tests with scripts/test, which starts the services")
    })
}

fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{prefix}-{}-{}", std::process::id(), t.as_nanos())
}

fn consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

fn create_topic(name: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let c = consumer(&unique("meta"));
    poll("topic metadata", 30, || {
        let md = c.fetch_metadata(Some(name), Duration::from_secs(5)).ok()?;
        let t = md.topics().iter().find(|t| t.name() == name)?;
        (t.error().is_none() && t.partitions().len() == partitions as usize).then_some(())
    });
}

/// A message read back: partition, offset, key, value and headers.
struct Read {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Every message of a topic as (partition, offset, value), read to the end of every partition
/// with a plain consumer (not tributary).
fn read_all(topic: &str, partitions: i32) -> Vec<(i32, i64, Vec<u8>)> {
    read_messages(topic, partitions)
        .into_iter()
        .map(|m| (m.partition, m.offset, m.value))
        .collect()
}

/// Every message of a topic, read to the end of every partition with a plain consumer. The
/// end is librdkafka's end-of-partition event (from the Fetch responses' high watermark):
/// tansu answers ListOffsets(latest) with the base offset of the newest record batch plus
/// one, short of the real end.
fn read_messages(topic: &str, partitions: i32) -> Vec<Read> {
    use rdkafka::message::Headers;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
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
    let mut at_end = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
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
fn end_offsets(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    for (p, o, _) in read_all(topic, partitions) {
        let e = ends.get_mut(&p).unwrap();
        *e = (*e).max(o + 1);
    }
    ends
}

fn group_offsets(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c = consumer(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            _ => (e.partition(), 0),
        })
        .collect()
}

/// Every `id` in the JSON values of a topic.
fn topic_ids(topic: &str, partitions: i32) -> Vec<i64> {
    read_all(topic, partitions)
        .iter()
        .map(|(_, _, v)| {
            let v: serde_json::Value = serde_json::from_slice(v).unwrap();
            v["id"].as_i64().unwrap()
        })
        .collect()
}

/// Produces JSON `{"id": i}` for ids `from..to`, keyed by id, one record per batch: consumers
/// in these tests resume at committed offsets, and tansu (memory storage) skips the rest of a
/// record batch when a fetch starts inside it (see docs/kafka.md). About 4000 records/s.
fn produce_ids(topic: &str, from: i64, to: i64) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for i in from..to {
        let key = i.to_string();
        let value = format!("{{\"id\":{i}}}");
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// (partition, offset, id) of every row in the Parquet files of `dir`.
fn parquet_rows(dir: &Path) -> Vec<(i32, i64, i64)> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let p = col("kafka_partition");
            let p = p.as_any().downcast_ref::<Int32Array>().unwrap();
            let o = col("kafka_offset");
            let o = o.as_any().downcast_ref::<Int64Array>().unwrap();
            let id = col("id");
            let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                out.push((p.value(i), o.value(i), id.value(i)));
            }
        }
    }
    out
}

fn consume_yaml(dir: &Path, topic: &str, group: &str, stop_at_end: bool) {
    std::fs::write(
        dir.join("consume.yaml"),
        format!(
            "pipeline: consume\ncommit_interval: 1s\nsource:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topics: [{topic}]\n  group: {group}\n  stop_at_end: {stop_at_end}\n  session_timeout: 6s\n  batch_size: 1000\n  metadata: [partition, offset]\nsink:\n  kind: parquet\n  path: out\n  file_rows: 4000\n"
        ),
    )
    .unwrap();
}

fn spawn(dir: &Path, file: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = tributary()
        .args(["run", file, "--no-progress", "--log", "info"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

#[test]
fn csv_to_kafka_then_kafka_to_parquet_with_tributary_run() {
    const ROWS: i64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("orders");
    create_topic(&topic, 4);
    write_csv(&dir.path().join("orders.csv"), ROWS);
    std::fs::write(
        dir.path().join("produce.yaml"),
        format!(
            "pipeline: produce\nsource:\n  kind: csv\n  path: orders.csv\nsink:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topic: {topic}\n  key: [id]\n  headers: {{ name: \"{{name}}\" }}\n  compression: lz4\n"
        ),
    )
    .unwrap();
    let out = run_ok(&["run", "produce.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows_out"], ROWS);
    assert_eq!(end_offsets(&topic, 4).values().sum::<i64>(), ROWS);

    let group = unique("orders-group");
    consume_yaml(dir.path(), &topic, &group, true);
    let out = run_ok(&["run", "consume.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["rows_out"], ROWS);
    assert_exact_ids(
        &int_column(&dir.path().join("out").join(&topic), "id"),
        ROWS,
    );
    assert_eq!(group_offsets(&group, &topic, 4), end_offsets(&topic, 4));

    // A rerun finds the group's offsets at the end: nothing new.
    let out = run_ok(&["run", "consume.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows_out"], 0);
}

#[test]
fn kill_dash_9_of_a_kafka_producing_pipeline_then_rerun_loses_nothing() {
    const ROWS: i64 = 400_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("crash-produce");
    create_topic(&topic, 2);
    write_csv(&dir.path().join("big.csv"), ROWS);
    std::fs::write(
        dir.path().join("produce.yaml"),
        format!(
            "pipeline: produce\nsource:\n  kind: csv\n  path: big.csv\n  batch_size: 2000\nsink:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topic: {topic}\n  key: [id]\n  max_unacked: 20000\n"
        ),
    )
    .unwrap();
    let db = dir.path().join(".tributary/state.db");
    let (mut child, _log) = spawn(dir.path(), "produce.yaml");
    poll("a first commit", 120, || committed_offset(&db, "produce"));
    // Kill while messages beyond the committed position are on the broker (produced, maybe
    // acknowledged, not committed). ListOffsets is a lower bound on tansu (see read_all).
    let committed_line = |db: &Path| {
        use tributary_core::state::{SqliteStateStore, StateStore};
        let store = SqliteStateStore::open(db).unwrap();
        store.positions("produce").unwrap()[0].position.as_json()["line"]
            .as_i64()
            .unwrap()
    };
    let lister = consumer(&unique("wm"));
    poll("messages produced past the committed position", 120, || {
        let committed_rows = committed_line(&db) - 2;
        let at_least: i64 = (0..2)
            .map(|p| {
                lister
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .unwrap()
                    .1
            })
            .sum();
        (at_least > committed_rows + 2_000).then_some(())
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed: make the input larger"
    );
    child.kill().unwrap(); // SIGKILL, between a write and its commit
    child.wait().unwrap();
    let committed_rows = committed_line(&db) - 2; // `line` is the 1-based next line; line 1 is the header
    let on_broker_at_kill: i64 = end_offsets(&topic, 2).values().sum();
    assert!(committed_rows < ROWS, "killed mid-file");

    run_ok(&["run", "produce.yaml"], dir.path());
    let ids = topic_ids(&topic, 2);
    let unique_ids: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique_ids.len() as i64, ROWS, "every row reached Kafka");
    assert_eq!(unique_ids.last(), Some(&(ROWS - 1)));
    let duplicates = ids.len() as i64 - ROWS;
    assert!(
        duplicates <= on_broker_at_kill - committed_rows,
        "duplicates ({duplicates}) only from what was produced but not committed ({} - {committed_rows})",
        on_broker_at_kill
    );
    assert!(
        on_broker_at_kill > committed_rows,
        "killed between a write and its commit"
    );
    eprintln!(
        "kill -9 producer: {duplicates} duplicates, window {}",
        on_broker_at_kill - committed_rows
    );
}

#[test]
fn kill_dash_9_of_a_kafka_consuming_pipeline_then_rerun_loses_nothing() {
    const ROWS: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("crash-consume");
    create_topic(&topic, 3);
    let group = unique("crash-consume");
    // Records keep arriving while the consumer runs, so it is always mid-stream when killed.
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || produce_ids(&topic, 0, ROWS))
    };
    consume_yaml(dir.path(), &topic, &group, false);
    let (mut child, _log) = spawn(dir.path(), "consume.yaml");
    poll("a first group commit", 120, || {
        let sum: i64 = group_offsets(&group, &topic, 3).values().sum();
        (sum > 0).then_some(())
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the consumer exited early"
    );
    child.kill().unwrap(); // SIGKILL: written, maybe not committed
    child.wait().unwrap();
    let committed = group_offsets(&group, &topic, 3);
    let out = dir.path().join("out").join(&topic);
    let durable_at_kill = parquet_rows(&out).len() as i64;
    let committed_total: i64 = committed.values().sum();
    producer.join().unwrap();
    assert!(committed_total < ROWS, "killed mid-topic");

    consume_yaml(dir.path(), &topic, &group, true);
    // Restarted at once, as a supervisor would: the killed member is still in the group (its
    // session has not expired). tansu then tends to form the group with nothing assigned to
    // the new member; the source notices it is the group's only member without partitions
    // and joins again (`OrphanGuard` in the Kafka source). Without that the rerun waits
    // forever (seen in CI: three restarts in a row never got a partition).
    let (mut rerun, log) = spawn(dir.path(), "consume.yaml");
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut lines = Vec::new();
    let status = loop {
        lines.extend(log.try_iter());
        if let Some(status) = rerun.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            rerun.kill().unwrap();
            rerun.wait().unwrap();
            lines.extend(log.iter());
            panic!(
                "the rerun did not finish in 150 s; its log:\n{}",
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    lines.extend(log.iter()); // to the end of its stderr
    assert!(
        status.success(),
        "the rerun failed: {status}\n{}",
        lines.join("\n")
    );
    let rejoined = lines
        .iter()
        .filter(|l| l.contains("joining it again"))
        .count();
    eprintln!("kill -9 consumer: the rerun rejoined an orphaned group {rejoined} time(s)");
    let rows = parquet_rows(&out);
    let ids: BTreeSet<i64> = rows.iter().map(|r| r.2).collect();
    if ids.len() as i64 != ROWS {
        let ends = end_offsets(&topic, 3);
        for p in 0..3 {
            let offs: BTreeSet<i64> = rows.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
            let missing: Vec<i64> = (0..ends[&p]).filter(|o| !offs.contains(o)).collect();
            eprintln!("partition {p}: end {} committed-at-kill {} present {} missing {} first missing {:?} last missing {:?}", ends[&p], committed[&p], offs.len(), missing.len(), missing.first(), missing.last());
        }
        let files: Vec<_> = parquet_files(&out);
        eprintln!("output files {files:?}");
    }
    assert_eq!(ids.len() as i64, ROWS, "every record landed");
    let mut seen = BTreeSet::new();
    for (p, o, _) in &rows {
        if !seen.insert((*p, *o)) {
            assert!(
                *o >= committed[p],
                "only uncommitted records are read twice ({p}@{o}, committed {})",
                committed[p]
            );
        }
    }
    let duplicates = rows.len() as i64 - ROWS;
    assert!(
        duplicates <= durable_at_kill - committed_total,
        "{duplicates} duplicates, more than the {} rows durable but not committed at the kill",
        durable_at_kill - committed_total
    );
    eprintln!("kill -9 consumer: {duplicates} duplicates");
    assert_eq!(group_offsets(&group, &topic, 3), end_offsets(&topic, 3));
}

#[test]
fn two_consumers_share_a_group_and_the_survivor_takes_over_after_kill_dash_9() {
    const ROWS: i64 = 30_000;
    let topic = unique("shared");
    create_topic(&topic, 4);
    let group = unique("shared");
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    consume_yaml(a_dir.path(), &topic, &group, false);
    consume_yaml(b_dir.path(), &topic, &group, false);
    // An assignment that names at least one partition of the topic (a member can be
    // handed an empty list while the group settles).
    let owned = format!("{topic}/");
    let assigned = |log: &mpsc::Receiver<String>, seen: &mut bool| {
        while let Ok(line) = log.try_recv() {
            if line.contains("partitions assigned") && line.contains(&owned) {
                *seen = true;
            }
        }
    };
    let a_out = a_dir.path().join("out").join(&topic);
    let b_out = b_dir.path().join("out").join(&topic);
    // A alone, records flowing.
    let (mut a, a_log) = spawn(a_dir.path(), "consume.yaml");
    let mut a_has = false;
    poll("A assigned", 120, || {
        assigned(&a_log, &mut a_has);
        a_has.then_some(())
    });
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || produce_ids(&topic, 0, ROWS / 2))
    };
    poll("A wrote data", 120, || {
        (!parquet_rows(&a_out).is_empty()).then_some(())
    });
    // B joins mid-stream: A's revoked partitions are drained and committed before B gets them.
    let (mut b, b_log) = spawn(b_dir.path(), "consume.yaml");
    let mut b_has = false;
    poll("B assigned", 120, || {
        assigned(&b_log, &mut b_has);
        b_has.then_some(())
    });
    producer.join().unwrap();
    // A may have read every record before the rebalance handed B its share, so records
    // keep coming (a few hundred at a time) until both members have written some.
    let mut produced = ROWS / 2;
    let mut last_batch = Instant::now() - Duration::from_secs(1);
    poll("both members wrote data", 120, || {
        if last_batch.elapsed() >= Duration::from_millis(500) {
            produce_ids(&topic, produced, produced + 200);
            produced += 200;
            last_batch = Instant::now();
        }
        (!parquet_rows(&a_out).is_empty() && !parquet_rows(&b_out).is_empty()).then_some(())
    });
    let total = produced + ROWS / 2;
    a.kill().unwrap(); // SIGKILL: no revoke, no last commit
    a.wait().unwrap();
    let committed_at_kill = group_offsets(&group, &topic, 4);
    let a_rows = parquet_rows(&a_out);
    let a_partitions: BTreeSet<i32> = a_rows.iter().map(|r| r.0).collect();
    produce_ids(&topic, produced, total);

    // The survivor takes A's partitions after the session timeout and reads everything.
    poll("every record in A's or B's output", 180, || {
        let ids: BTreeSet<i64> = a_rows
            .iter()
            .chain(parquet_rows(&b_out).iter())
            .map(|r| r.2)
            .collect();
        (ids.len() as i64 == total).then_some(())
    });
    let exit = sigterm(&mut b);
    assert_eq!(exit.code(), Some(0), "graceful stop of the survivor");
    let b_rows = parquet_rows(&b_out);
    let b_partitions: BTreeSet<i32> = b_rows.iter().map(|r| r.0).collect();
    assert_eq!(
        b_partitions.len(),
        4,
        "B took over A's partitions {a_partitions:?}"
    );
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for (p, o, _) in a_rows.iter().chain(b_rows.iter()) {
        if !seen.insert((*p, *o)) {
            duplicates += 1;
            assert!(
                a_partitions.contains(p) && *o >= committed_at_kill[p],
                "only A's records not committed at the kill are read twice ({p}@{o}); a \
                 partition handed over at B's join was drained and committed first"
            );
        }
    }
    assert_eq!(seen.len() as i64, total);
    eprintln!("two consumers: {duplicates} duplicates after kill -9 of one");
    assert_eq!(group_offsets(&group, &topic, 4), end_offsets(&topic, 4));
}

/// Creates a topic unless it exists (the example's topic has a fixed name).
fn ensure_topic(name: &str, partitions: i32) {
    let c = consumer(&unique("meta"));
    let exists = c
        .fetch_metadata(Some(name), Duration::from_secs(10))
        .ok()
        .and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == name)
                .map(|t| t.error().is_none() && !t.partitions().is_empty())
        })
        .unwrap_or(false);
    if !exists {
        create_topic(name, partitions);
    }
}

#[test]
fn the_kafka_ingestion_example_runs_as_its_readme_says() {
    const TOPIC: &str = "tributary-example-orders";
    const GROUP: &str = "tributary-example";
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka_ingestion");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for f in ["produce.yaml", "consume.yaml", "data/orders.ndjson"] {
        std::fs::copy(from.join(f), dir.path().join(f)).unwrap();
    }
    ensure_topic(TOPIC, 3);
    // The topic and group outlive a test run on a long-lived broker: expect what is new.
    let before: i64 = end_offsets(TOPIC, 3).values().sum();
    let committed: i64 = group_offsets(GROUP, TOPIC, 3).values().sum();
    let run = |file: &str| {
        let out = tributary()
            .args(["run", file, "--report", "json"])
            .env("KAFKA_BROKERS", brokers())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let produced = run("produce.yaml");
    assert_eq!(
        (&produced["rows_out"], &produced["dead_lettered"]),
        (&1000.into(), &1.into()),
        "{produced}"
    );
    let consumed = run("consume.yaml");
    assert_eq!(
        consumed["rows_out"],
        before - committed + 1000,
        "{consumed}"
    );
    let ids: BTreeSet<i64> = int_column(&dir.path().join("output").join(TOPIC), "id")
        .into_iter()
        .collect();
    assert_eq!(ids, (1..=1000).collect(), "every order of this run landed");
}

fn mosquitto_pub_lines(topic: &str, lines: &[String]) {
    use std::io::Write;
    let addr = std::env::var("TRIBUTARY_MQTT_ADDR")
        .expect("TRIBUTARY_MQTT_ADDR is not set: run the tests with scripts/test");
    let (host, port) = addr.split_once(':').unwrap();
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", host, "-p", port, "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// The IoT guide's MQTT → Kafka bridge (`examples/iot_ingestion/mqtt_to_kafka`): every
/// reading reaches Kafka keyed by its device, with the MQTT topic as a header; one device's
/// readings sit on one partition in the order they were published; readings published while
/// the bridge is down arrive after it restarts (its MQTT session kept them).
#[test]
fn the_iot_bridge_keys_by_device_and_keeps_each_devices_order() {
    const PARTITIONS: i32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let n = unique("bridge");
    let prefix = format!("sensors-{n}");
    let topic = format!("iot-{n}");
    create_topic(&topic, PARTITIONS);
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/iot_ingestion/mqtt_to_kafka/pipeline.yaml");
    let mut text = std::fs::read_to_string(from).unwrap();
    for (a, b) in [
        ("sensors/", format!("{prefix}/")),
        ("kafka-bridge-1", format!("bridge-{n}")),
        ("iot.telemetry", topic.clone()),
    ] {
        assert!(text.contains(a), "{a:?} not in the example");
        text = text.replace(a, &b);
    }
    std::fs::write(dir.path().join("pipeline.yaml"), text).unwrap();
    let readings = |site: &str, device: &str, seqs: std::ops::Range<i64>| {
        let lines: Vec<String> = seqs
            .map(|s| format!(r#"{{"seq": {s}, "value": {}.5}}"#, s % 30))
            .collect();
        mosquitto_pub_lines(&format!("{prefix}/{site}/{device}/temp"), &lines);
    };

    let (mut bridge, log) = spawn(dir.path(), "pipeline.yaml");
    let stopped = |bridge: &mut Child, log: &mpsc::Receiver<String>| {
        let code = sigterm(bridge).code();
        let lines: Vec<String> = log.try_iter().collect();
        assert_eq!(code, Some(0), "graceful stop; log:\n{}", lines.join("\n"));
    };
    // The subscription is in place once a probe reaches Kafka.
    poll("a probe in Kafka", 60, || {
        readings("probe", "probe", 0..1);
        std::thread::sleep(Duration::from_millis(300));
        (!read_messages(&topic, PARTITIONS).is_empty()).then_some(())
    });
    let devices = ["d1", "d2", "d3", "d4", "d5", "d6"];
    for (i, d) in devices.iter().enumerate() {
        readings(if i % 2 == 0 { "berlin" } else { "paris" }, d, 0..50);
    }
    mosquitto_pub_lines(
        &format!("{prefix}/berlin/d1/temp"),
        &["not json".to_string()],
    );
    stopped(&mut bridge, &log);
    // Down: the broker keeps these for the bridge's session.
    for d in devices {
        readings("berlin", d, 50..80);
    }
    let (mut bridge, log) = spawn(dir.path(), "pipeline.yaml");
    poll("every reading in Kafka", 120, || {
        let n = read_messages(&topic, PARTITIONS)
            .iter()
            .filter(|m| m.key.as_deref() != Some(b"probe"))
            .count();
        (n >= devices.len() * 80).then_some(())
    });
    stopped(&mut bridge, &log);

    let mut per_device: BTreeMap<String, Vec<(i32, i64, i64)>> = BTreeMap::new();
    for m in read_messages(&topic, PARTITIONS) {
        let key = String::from_utf8(m.key.clone().expect("every message has a key")).unwrap();
        if key == "probe" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        assert_eq!(v["device"], key.as_str(), "the key is the device");
        let header = m
            .headers
            .iter()
            .find(|(k, _)| k == "mqtt_topic")
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap());
        assert_eq!(
            header.as_deref(),
            Some(format!("{prefix}/{}/{key}/temp", v["site"].as_str().unwrap()).as_str()),
            "the MQTT topic travels as a header"
        );
        per_device.entry(key).or_default().push((
            m.partition,
            m.offset,
            v["seq"].as_i64().unwrap(),
        ));
    }
    assert_eq!(per_device.len(), devices.len());
    let mut partitions_used = BTreeSet::new();
    for (device, mut rows) in per_device {
        rows.sort();
        let parts: BTreeSet<i32> = rows.iter().map(|r| r.0).collect();
        assert_eq!(parts.len(), 1, "{device} on one partition: {parts:?}");
        partitions_used.extend(parts);
        // In offset order, the first time each reading appears follows publication order
        // (a redelivered reading may repeat later: at least once).
        let mut firsts = Vec::new();
        let mut seen = BTreeSet::new();
        for (_, _, seq) in &rows {
            if seen.insert(*seq) {
                firsts.push(*seq);
            }
        }
        assert_eq!(
            firsts,
            (0..80).collect::<Vec<_>>(),
            "{device}: every reading, in order"
        );
    }
    assert!(partitions_used.len() > 1, "devices spread over partitions");
    let dead =
        std::fs::read_to_string(dir.path().join(".tributary/dead_letter/mqtt-bridge.ndjson"))
            .unwrap();
    assert!(dead.contains("not json"), "{dead}");
}

/// Dead letters into a Kafka topic: a message that is not JSON lands in the dead-letter topic
/// with its original bytes as the value and the reason and origin in headers, and the good
/// messages around it reach the sink.
#[test]
fn undecodable_messages_land_in_a_kafka_dead_letter_topic_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("dlq-in");
    let dlq = unique("dlq-out");
    create_topic(&topic, 1);
    create_topic(&dlq, 1);
    {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        for v in [r#"{"id":1}"#, "not json {", r#"{"id":3}"#] {
            p.send(BaseRecord::<(), str>::to(&topic).payload(v))
                .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "pipeline: dlq-topic\nsource:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topics: [{topic}]\n  group: {topic}\n  stop_at_end: true\nsink:\n  kind: parquet\n  path: out\ndead_letter:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topic: {dlq}\n"
        ),
    )
    .unwrap();
    let out = tributary()
        .args(["run", "p.yaml", "--report", "json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["rows_out"], &report["dead_lettered"]),
        (&2.into(), &1.into()),
        "{report}"
    );
    let mut ids = int_column(&dir.path().join("out").join(&topic), "id");
    ids.sort();
    assert_eq!(ids, [1, 3]);

    let letters = read_messages(&dlq, 1);
    assert_eq!(letters.len(), 1);
    let m = &letters[0];
    assert_eq!(m.value, b"not json {", "the original bytes");
    let header = |k: &str| {
        m.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .unwrap_or_else(|| panic!("no header {k}: {:?}", m.headers))
    };
    assert_eq!(header("tributary.pipeline"), "dlq-topic");
    assert_eq!(header("tributary.stream"), topic);
    assert_eq!(header("tributary.error.class"), "record");
    assert_eq!(header("tributary.original.topic"), topic);
    assert_eq!(header("tributary.original.partition"), "0");
    assert_eq!(header("tributary.original.offset"), "1");
    assert_eq!(header("tributary.location"), format!("{topic}/0@1"));
    assert_eq!(header("tributary.attempts"), "1");
    assert!(!header("tributary.error.message").is_empty());
    assert!(header("tributary.failed_at").ends_with('Z'));
    assert_eq!(m.key.as_deref(), Some(topic.as_bytes()));
}

/// The retry-topics example (examples/kafka_ingestion/retry_topics).
fn retry_example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka_ingestion/retry_topics")
}

/// A fresh database with the example's tables: customers 1..=5, orders referring to them.
fn shop_db(prefix: &str) -> String {
    let db = pg_create_db(prefix);
    psql(
        &db,
        &std::fs::read_to_string(retry_example().join("setup.sql")).unwrap(),
    );
    db
}

/// Orders `0..n` as JSON keyed by id: `{"id", "customer_id": customer(id), "amount": 10·id}`.
fn shop_orders(n: i64, customer: impl Fn(i64) -> i64) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                i.to_string(),
                format!(
                    r#"{{"id":{i},"customer_id":{},"amount":{}}}"#,
                    customer(i),
                    i * 10
                ),
            )
        })
        .collect()
}

/// Produces each `(key, value)` as its own record batch (see `produce_ids`).
fn produce_values(topic: &str, records: &[(String, String)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for (key, value) in records {
        p.send(BaseRecord::to(topic).key(key).payload(value))
            .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn header(m: &Read, name: &str) -> String {
    m.headers
        .iter()
        .find(|(h, _)| h == name)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .unwrap_or_else(|| panic!("no header {name}: {:?}", m.headers))
}

fn json_id(value: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    v["id"].as_i64().unwrap()
}

/// Kafka → PostgreSQL where some orders refer to customers the target does not have: those
/// rows go to a first retry topic, wait there (its partition paused) while every healthy order
/// is written, and are tried again; orders of a customer added meanwhile then land, the others
/// go on to the second retry topic and at last to the dead-letter topic, with the attempt
/// count and their original topic, partition and offset in the headers.
#[test]
fn refused_rows_go_through_retry_topics_to_the_dead_letter_topic_while_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let main = unique("retry");
    let (retry1, retry2, dlq) = (
        format!("{main}.retry.1"),
        format!("{main}.retry.2"),
        format!("{main}.dlq"),
    );
    create_topic(&main, 2);
    for t in [&retry1, &retry2, &dlq] {
        create_topic(t, 1);
    }
    let db = shop_db("retry");
    let example = retry_example();
    // Customer 7 arrives late; customer 9 never does.
    let customer = |i: i64| match i % 40 {
        7 => 7,
        9 => 9,
        _ => i % 5 + 1,
    };
    produce_values(&main, &shop_orders(200, customer));
    let late: Vec<i64> = (0..200).filter(|i| customer(*i) == 7).collect();
    let never: Vec<i64> = (0..200).filter(|i| customer(*i) == 9).collect();
    let healthy = 200 - late.len() - never.len();

    // The example's pipeline, on this run's own topics and group.
    let yaml = std::fs::read_to_string(example.join("pipeline.yaml"))
        .unwrap()
        .replace("shop.orders", &main)
        .replace("shop-orders-to-postgres", &main)
        .replace("${DATABASE_URL}", &db)
        .replace("${KAFKA_BROKERS}", "${TRIBUTARY_KAFKA_BROKERS}");
    std::fs::write(dir.path().join("retry.yaml"), yaml).unwrap();
    let (mut child, logs) = spawn(dir.path(), "retry.yaml");
    let orders_in_table = || pg_count(&db, "SELECT count(*) FROM orders") as usize;
    poll("every healthy order written", 60, || {
        (orders_in_table() >= healthy).then_some(())
    });
    let first_retries = poll("the refused orders in the first retry topic", 30, || {
        let m = read_messages(&retry1, 1);
        (m.len() >= late.len() + never.len()).then_some(m)
    });
    // Customer 7 arrives while its orders wait for their retry.
    psql(&db, "INSERT INTO customers VALUES (7)");
    assert_eq!(
        orders_in_table(),
        healthy,
        "the refused orders are not written before customer 7 exists"
    );
    poll("the late customer's orders written", 60, || {
        (orders_in_table() == healthy + late.len()).then_some(())
    });
    let letters = poll("the dead-letter topic", 60, || {
        let m = read_messages(&dlq, 1);
        (m.len() >= never.len()).then_some(m)
    });
    let status = sigterm(&mut child);
    let logs: Vec<String> = logs.try_iter().collect();
    assert!(status.success(), "{}", logs.join("\n"));

    let mut ids: Vec<i64> = psql(&db, "SELECT id FROM orders ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    ids.sort();
    let expected: Vec<i64> = (0..200).filter(|i| customer(*i) != 9).collect();
    assert_eq!(ids, expected, "every order but customer 9's, once");

    // Where each order was first: its original partition and offset.
    let origin: BTreeMap<i64, (i32, i64)> = read_messages(&main, 2)
        .iter()
        .map(|m| (json_id(&m.value), (m.partition, m.offset)))
        .collect();
    let mut first: Vec<i64> = first_retries.iter().map(|m| json_id(&m.value)).collect();
    first.sort();
    let mut refused: Vec<i64> = late.iter().chain(&never).copied().collect();
    refused.sort();
    assert_eq!(
        first, refused,
        "each refused order once in the first retry topic"
    );
    for m in &first_retries {
        assert_eq!(header(m, "tributary.attempts"), "1");
        assert_eq!(header(m, "tributary.stream"), main);
        assert!(header(m, "tributary.retry.not_before")
            .parse::<u64>()
            .is_ok());
    }
    let mut dead: Vec<i64> = letters.iter().map(|m| json_id(&m.value)).collect();
    dead.sort();
    assert_eq!(dead, never, "only customer 9's orders are dead letters");
    for m in &letters {
        let id = json_id(&m.value);
        let (partition, offset) = origin[&id];
        assert_eq!(header(m, "tributary.attempts"), "3", "{id}");
        assert_eq!(header(m, "tributary.stream"), retry2);
        assert_eq!(header(m, "tributary.original.topic"), main);
        assert_eq!(
            header(m, "tributary.original.partition"),
            partition.to_string()
        );
        assert_eq!(header(m, "tributary.original.offset"), offset.to_string());
        assert!(
            header(m, "tributary.error.message").contains("orders_customer_id_fkey"),
            "{}",
            header(m, "tributary.error.message")
        );
        assert!(header(m, "tributary.first_failed_at") < header(m, "tributary.failed_at"));
        assert!(m
            .headers
            .iter()
            .all(|(k, _)| k != "tributary.retry.not_before"));
    }
}

/// Dead letters in a Kafka topic, looked at with `dlq show` and sent through the pipeline
/// again with `dlq replay` once the cause is fixed: the fixed ones land, the others go back to
/// the topic with their attempt count raised, and a replay never replays a record twice.
#[test]
fn dlq_show_and_replay_read_a_kafka_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let main = unique("replay");
    let dlq = format!("{main}.dlq");
    create_topic(&main, 1);
    create_topic(&dlq, 1);
    let db = shop_db("replay");
    let customer = |i: i64| match i % 10 {
        7 => 7,
        9 => 9,
        _ => i % 5 + 1,
    };
    produce_values(&main, &shop_orders(50, customer));
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "pipeline: replay\nsource:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topics: [{main}]\n  group: {main}\n  stop_at_end: true\nsink:\n  kind: postgres\n  url: {db}\n  schema: public\n  table: orders\ndead_letter:\n  kind: kafka\n  brokers: ${{TRIBUTARY_KAFKA_BROKERS}}\n  topic: {dlq}\n"
        ),
    )
    .unwrap();
    let report = |args: &[&str]| -> serde_json::Value {
        let out = run_ok(args, dir.path());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = report(&["run", "p.yaml", "--report", "json"]);
    assert_eq!(
        (&first["rows_out"], &first["dead_lettered"]),
        (&40.into(), &10.into()),
        "{first}"
    );

    let show = run_ok(&["dlq", "show", "p.yaml"], dir.path());
    let show = String::from_utf8(show.stdout).unwrap();
    assert!(
        show.contains("10 dead letters") && show.contains(&format!("stream {main}: 10")),
        "{show}"
    );
    assert!(
        show.lines().any(|l| l.trim_start().starts_with("10 ")
            && l.contains("public.orders refused the row")
            && l.contains("orders_customer_id_fkey")),
        "alike failures grouped under one reason: {show}"
    );

    // Customer 7 arrives; customer 9 does not.
    psql(&db, "INSERT INTO customers VALUES (7)");
    let replay = report(&["dlq", "replay", "p.yaml", "--report", "json"]);
    assert_eq!(
        (
            &replay["rows_in"],
            &replay["rows_out"],
            &replay["dead_lettered"]
        ),
        (&10.into(), &5.into(), &5.into()),
        "{replay}"
    );
    let ids: Vec<i64> = psql(&db, "SELECT id FROM orders ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids, (0..50).filter(|i| i % 10 != 9).collect::<Vec<_>>());
    let letters = read_messages(&dlq, 1);
    assert_eq!(letters.len(), 15);
    let again: Vec<&Read> = letters[10..].iter().collect();
    for m in &again {
        let id = json_id(&m.value);
        assert_eq!(id % 10, 9);
        assert_eq!(header(m, "tributary.attempts"), "2");
        assert_eq!(header(m, "tributary.original.topic"), main);
        assert_eq!(header(m, "tributary.original.offset"), id.to_string());
        assert!(header(m, "tributary.error.message").contains("orders_customer_id_fkey"));
    }

    // The next replay takes only what the last one dead-lettered again.
    let replay = report(&["dlq", "replay", "p.yaml", "--report", "json"]);
    assert_eq!(
        (&replay["rows_in"], &replay["dead_lettered"]),
        (&5.into(), &5.into()),
        "{replay}"
    );
    let letters = read_messages(&dlq, 1);
    assert_eq!(letters.len(), 20);
    assert!(letters[15..]
        .iter()
        .all(|m| header(m, "tributary.attempts") == "3"));
}

/// The schema-registry guide (`examples/kafka_ingestion/schema_registry`) as its README runs
/// it: orders produced as Avro (version 1), then with a new optional column (version 2), an
/// incompatible change refused with the registry's reason, and everything read back into
/// Parquet with the evolved schema.
#[test]
fn the_schema_registry_example_runs_as_its_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/kafka_ingestion/schema_registry");
    let topic = unique("example-orders-avro");
    let group = unique("example-avro");
    let proto_topic = unique("example-orders-protobuf");
    let proto_group = unique("example-protobuf");
    let json_topic = unique("example-orders-json");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for f in [
        "produce.yaml",
        "produce_v2.yaml",
        "produce_bad.yaml",
        "consume.yaml",
        "produce_protobuf.yaml",
        "consume_protobuf.yaml",
        "produce_json_schema.yaml",
        "order.schema.json",
    ] {
        let text = std::fs::read_to_string(from.join(f))
            .unwrap()
            .replace("tributary-example-orders-avro", &topic)
            .replace("group: tributary-example-avro", &format!("group: {group}"))
            .replace("tributary-example-orders-protobuf", &proto_topic)
            .replace(
                "group: tributary-example-protobuf",
                &format!("group: {proto_group}"),
            )
            .replace("tributary-example-orders-json", &json_topic);
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    for f in [
        "orders.ndjson",
        "orders_v2.ndjson",
        "orders_bad.ndjson",
        "orders_mixed.ndjson",
    ] {
        std::fs::copy(from.join("data").join(f), dir.path().join("data").join(f)).unwrap();
    }
    create_topic(&topic, 1);
    create_topic(&proto_topic, 1);
    create_topic(&json_topic, 1);
    let (mut registry, url) = registry_serve(&dir.path().join("registry.db"));
    let run = |file: &str| {
        tributary()
            .args(["run", file, "--report", "json"])
            .env("KAFKA_BROKERS", brokers())
            .env("REGISTRY_URL", &url)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let ok = |file: &str| {
        let out = run(file);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(ok("produce.yaml")["rows_out"], 20);
    assert_eq!(ok("produce_v2.yaml")["rows_out"], 10);
    let bad = run("produce_bad.yaml");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("refused the new value schema"), "{stderr}");
    assert!(stderr.contains("MISSING_UNION_BRANCH"), "{stderr}");
    let consumed = ok("consume.yaml");
    assert_eq!(consumed["rows_out"], 30, "{consumed}");
    // The same orders as Protobuf, and back.
    assert_eq!(ok("produce_protobuf.yaml")["rows_out"], 20);
    assert_eq!(ok("consume_protobuf.yaml")["rows_out"], 20);
    let mut proto_ids = int_column(&dir.path().join("output_protobuf").join(&proto_topic), "id");
    proto_ids.sort_unstable();
    assert_eq!(proto_ids, (1..=20).collect::<Vec<_>>());
    // JSON checked against order.schema.json: two of eight rows break it.
    let json = ok("produce_json_schema.yaml");
    assert_eq!(
        (&json["rows_out"], &json["dead_lettered"]),
        (&serde_json::json!(6), &serde_json::json!(2)),
        "{json}"
    );
    let dead = std::fs::read_to_string(
        dir.path()
            .join(".tributary/dead_letter/orders_to_kafka_json_schema.ndjson"),
    )
    .unwrap();
    assert!(
        dead.contains("/amount: -5 is not more than the exclusive minimum 0"),
        "{dead}"
    );
    assert!(
        dead.contains("/region: \\\"mars\\\" is not one of"),
        "{dead}"
    );
    let _ = registry.kill();
    let _ = registry.wait();

    let out = dir.path().join("output").join(&topic);
    let mut ids = int_column(&out, "id");
    ids.sort_unstable();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());
    // Version 1's rows have no coupon; version 2's odd ids have one.
    let mut coupons = Vec::new();
    for f in std::fs::read_dir(&out).unwrap() {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(File::open(f.unwrap().path()).unwrap())
                .unwrap()
                .build()
                .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            if let Some(c) = b.column_by_name("coupon") {
                let c = arrow_cast::cast(c, &arrow_schema::DataType::Utf8).unwrap();
                let c = c
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap();
                for i in 0..b.num_rows() {
                    coupons.push((ids.value(i), c.is_valid(i).then(|| c.value(i).to_string())));
                }
            } else {
                coupons.extend(ids.values().iter().map(|i| (*i, None)));
            }
        }
    }
    coupons.sort();
    let expected: Vec<(i64, Option<String>)> = (1..=30)
        .map(|i| (i, (i > 20 && i % 2 == 1).then(|| format!("SPRING{i}"))))
        .collect();
    assert_eq!(coupons, expected);
}

/// The CDC → Kafka example (examples/database_ingestion/cdc_to_kafka): the shop's snapshot and
/// then its changes as change events on one topic per table, each keyed by the row's primary
/// key (a delete's from `before`), so one row's events share a partition in commit order.
#[test]
fn the_cdc_to_kafka_example_keys_change_events_by_primary_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/database_ingestion");
    let shop = pg_create_db("ex_cdc_kafka");
    psql(
        &shop,
        &std::fs::read_to_string(example.join("setup.sql")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example.join("cdc_to_kafka"), dir.path());
    // Fresh slot and topics for this run (slots are per cluster, topics outlive a run).
    let slot = unique("ex_changes").replace('-', "_");
    let prefix = unique("shop");
    // pipeline, slot and publication; the topics
    let yaml = dir.path().join("pipeline.yaml");
    rename_in_file(&yaml, "shop_changes", 3, &slot);
    rename_in_file(
        &yaml,
        "\"shop.{stream}\"",
        1,
        &format!("\"{prefix}.{{stream}}\""),
    );
    let orders = format!("{prefix}.public.orders");
    create_topic(&orders, 3);
    create_topic(&format!("{prefix}.public.customers"), 3);
    let mut child = tributary()
        .args(["run", "pipeline.yaml", "--no-progress"])
        .env("SHOP_URL", &shop)
        .env("KAFKA_BROKERS", brokers())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |n: usize, child: &mut Child| {
        poll(&format!("{n} events on {orders}"), 90, || {
            assert!(child.try_wait().unwrap().is_none(), "the CDC run stopped");
            let got = read_messages(&orders, 3);
            (got.len() >= n).then_some(got)
        })
    };
    wait_for(1000, &mut child);
    psql(
        &shop,
        "UPDATE orders SET status = 'paid' WHERE id = 7; DELETE FROM orders WHERE id = 8",
    );
    let events = wait_for(1002, &mut child);
    assert!(sigterm(&mut child).success(), "a graceful stop exits 0");
    pg_drop_slot(&shop, &slot);

    assert_eq!(events.len(), 1002, "each change once");
    let parsed: Vec<(&Read, serde_json::Value)> = events
        .iter()
        .map(|m| (m, serde_json::from_slice(&m.value).unwrap()))
        .collect();
    let mut ops = BTreeMap::new();
    for (m, v) in &parsed {
        *ops.entry(v["op"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        // The key is the row's id, from `after`, or from `before` for a delete.
        let row = if v["op"] == "d" {
            &v["before"]
        } else {
            &v["after"]
        };
        let id = row["id"].as_str().unwrap();
        assert_eq!(m.key.as_deref(), Some(id.as_bytes()), "{v}");
    }
    assert_eq!(
        ops,
        [
            ("d".to_string(), 1),
            ("r".to_string(), 1000),
            ("u".to_string(), 1)
        ]
        .into()
    );
    let of = |id: &[u8]| -> Vec<(i32, i64, String)> {
        let mut v: Vec<_> = parsed
            .iter()
            .filter(|(m, _)| m.key.as_deref() == Some(id))
            .map(|(m, v)| (m.partition, m.offset, v["op"].as_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let seven = of(b"7");
    assert_eq!(seven.len(), 2);
    assert_eq!(seven[0].0, seven[1].0, "one row, one partition");
    assert_eq!(
        (seven[0].2.as_str(), seven[1].2.as_str()),
        ("r", "u"),
        "in commit order"
    );
    let eight = of(b"8");
    assert_eq!(eight.len(), 2);
    assert_eq!(eight[0].0, eight[1].0);
    assert_eq!((eight[0].2.as_str(), eight[1].2.as_str()), ("r", "d"));
    // Rows spread over the partitions by key.
    let partitions: BTreeSet<i32> = events.iter().map(|m| m.partition).collect();
    assert_eq!(partitions.len(), 3);
}

/// Confluent's Python `AvroSerializer` (crates/kafka/tests/python/schema_registry_kafka.py)
/// produces orders with nulls, timestamps, dates, decimals, a nested record, arrays and an
/// enum; `tributary run` reads them from the topic into Parquet, and the Parquet files hold
/// the input exactly (the values `order(i)` of the script).
#[test]
fn avro_from_confluents_python_serializer_lands_in_parquet_exactly() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Decimal128Type, Float64Type, TimestampMillisecondType};
    const N: i64 = 40;
    let python = std::env::var("TRIBUTARY_PYTHON")
        .expect("TRIBUTARY_PYTHON is not set: scripts/services up and its env");
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("py-avro-parquet");
    create_topic(&topic, 1);
    let (mut registry, url) = registry_serve(&dir.path().join("registry.db"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kafka/tests/python/schema_registry_kafka.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["produce-avro", &brokers(), &url, &topic, &N.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        format!(
            "pipeline: py_avro\n\
             source: {{ kind: kafka, brokers: '{}', topics: [{topic}], group: {}, format: avro,\n\
             \x20 registry: {{ url: '{url}' }}, stop_at_end: true }}\n\
             sink: {{ kind: parquet, path: out }}\n",
            brokers(),
            unique("py-avro")
        ),
    )
    .unwrap();
    run_ok(&["run", "pipeline.yaml"], dir.path());
    let _ = registry.kill();
    let _ = registry.wait();

    let mut rows = 0;
    for f in parquet_files(&dir.path().join("out").join(&topic)) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
            let ids = col("id").as_primitive::<arrow_array::types::Int64Type>();
            let customer = col("customer").as_string::<i32>();
            let amount = col("amount").as_primitive::<Float64Type>();
            let at = col("at").as_primitive::<TimestampMillisecondType>();
            let day = col("day").as_primitive::<Date32Type>();
            let price = col("price").as_primitive::<Decimal128Type>();
            let address = col("address").as_struct();
            let tags = col("tags").as_list::<i32>();
            let status = col("status").as_string::<i32>();
            for r in 0..b.num_rows() {
                let i = ids.value(r);
                assert_eq!(customer.is_null(r), i % 5 == 0, "customer {i}");
                if i % 5 != 0 {
                    assert_eq!(customer.value(r), format!("customer-{i}"));
                }
                assert_eq!(amount.value(r), i as f64 * 1.5);
                assert_eq!(at.value(r), 1_700_000_000_000 + i * 1001);
                assert_eq!(day.is_null(r), i % 4 == 0, "day {i}");
                if i % 4 != 0 {
                    assert_eq!(day.value(r), 19723 + i as i32);
                }
                assert_eq!(price.value(r), (i * 101 - 500) as i128);
                assert_eq!(address.is_null(r), i % 7 == 0, "address {i}");
                assert_eq!(tags.value(r).len() as i64, i % 3);
                assert_eq!(status.value(r), ["NEW", "PAID", "SENT"][(i % 3) as usize]);
                rows += 1;
            }
        }
    }
    assert_eq!(rows, N);
    let mut ids = int_column(&dir.path().join("out").join(&topic), "id");
    ids.sort_unstable();
    assert_eq!(ids, (0..N).collect::<Vec<_>>());
}
