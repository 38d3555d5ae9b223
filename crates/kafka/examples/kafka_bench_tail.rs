//! The Kafka half of `scripts/bench iot` (MQTT → Kafka): creates the bench topic, and tails it
//! from the beginning, printing each message as `<receipt unix time s.ns> <value>` (the format
//! of `mosquitto_sub -F '%U %p'`, so `mqtt_bench_report` measures both the same way) until N
//! messages with a non-negative `"id"` have arrived.
//!
//! usage: kafka_bench_tail create BROKERS TOPIC PARTITIONS
//!        kafka_bench_tail read BROKERS TOPIC PARTITIONS N

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

fn create(brokers: &str, topic: &str, partitions: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

fn read(brokers: &str, topic: &str, partitions: i32, n: usize) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-tail-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        // As the Kafka source does: librdkafka's 1 s default idles a reader whose prefetch
        // queue filled up (docs/kafka.md).
        .set("fetch.queue.backoff.ms", "20")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seen = 0;
    while seen < n {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
        if !value.contains("\"id\":-") && !value.contains("\"id\": -") {
            seen += 1;
        }
        writeln!(out, "{}.{:09} {value}", now.as_secs(), now.subsec_nanos()).unwrap();
    }
    out.flush().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match &args[1..] {
        [cmd, brokers, topic, parts] if cmd == "create" => {
            create(brokers, topic, parts.parse().unwrap())
        }
        [cmd, brokers, topic, parts, n] if cmd == "read" => {
            read(brokers, topic, parts.parse().unwrap(), n.parse().unwrap())
        }
        _ => {
            eprintln!("usage: kafka_bench_tail create BROKERS TOPIC PARTITIONS | read BROKERS TOPIC PARTITIONS N");
            std::process::exit(2);
        }
    }
}
