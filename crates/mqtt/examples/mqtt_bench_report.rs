//! The measuring half of `scripts/bench iot`: reads what the floor (`mosquitto_sub -F '%U %p'`)
//! printed and what Tributary wrote (Parquet files with `id` and `sent_ns`), checks that every
//! id arrived exactly once, and prints one JSON line per tool: messages/s from the first send
//! to the last receipt (floor) or to the last durable file (Tributary: a file's modification
//! time, taken just before its fsync and rename), and latency percentiles per message.
//!
//! With START_NS for both (backlog mode: the messages were queued before the subscriber
//! started), throughput runs from that start instead, and latency is left out.
//!
//! With `kafka:FILE` instead of PARQUET_DIR, Tributary wrote to Kafka and FILE is what
//! `kafka_bench_tail read` printed (receipt time and value per message, read back by a
//! consumer tailing the topic): a message counts as done when that consumer has it.
//!
//! usage: mqtt_bench_report N SUB_OUTPUT PARQUET_DIR|kafka:FILE [FLOOR_START_NS TRIBUTARY_START_NS]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::UNIX_EPOCH;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

struct Stats {
    count: usize,
    distinct: usize,
    first_sent: u128,
    last_done: u128,
    latencies_ms: Vec<f64>,
}

impl Stats {
    fn json(&self, tool: &str, n: usize, start: Option<u128>) -> String {
        let mut l = self.latencies_ms.clone();
        l.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let secs = (self
            .last_done
            .saturating_sub(start.unwrap_or(self.first_sent))) as f64
            / 1e9;
        let pct = |p: f64| if start.is_some() { f64::NAN } else { pct(p) };
        format!(
            r#"{{"tool":"{tool}","messages":{},"distinct":{},"exact":{},"seconds":{secs:.3},"msgs_per_s":{:.0},"p50_ms":{:.1},"p99_ms":{:.1},"max_ms":{:.1}}}"#,
            self.count,
            self.distinct,
            self.count == n && self.distinct == n,
            self.count as f64 / secs,
            pct(0.50),
            pct(0.99),
            if start.is_some() { f64::NAN } else { l.last().copied().unwrap_or(f64::NAN) },
        )
        .replace("NaN", "null")
    }
}

/// A JSON number field of a flat payload, written `"name": v` (publisher) or `"name":v`
/// (Tributary's Kafka sink).
fn field(payload: &str, name: &str) -> Option<u128> {
    let key = format!("\"{name}\":");
    let rest = &payload[payload.find(&key)? + key.len()..];
    rest.split([',', '}']).next()?.trim().parse().ok()
}

fn floor(path: &Path) -> Stats {
    let text = std::fs::read_to_string(path).expect("the floor's output");
    let mut ids = BTreeSet::new();
    let (mut count, mut first_sent, mut last_done, mut lat) = (0, u128::MAX, 0u128, Vec::new());
    for line in text.lines() {
        let Some((ts, payload)) = line.split_once(' ') else {
            continue;
        };
        let Some((s, ns)) = ts.split_once('.') else {
            continue;
        };
        let (Ok(s), Ok(ns)) = (s.parse::<u128>(), ns.parse::<u128>()) else {
            continue;
        };
        let (Some(id), Some(sent)) = (field(payload, "id"), field(payload, "sent_ns")) else {
            continue;
        };
        let recv = s * 1_000_000_000 + ns;
        count += 1;
        ids.insert(id);
        first_sent = first_sent.min(sent);
        last_done = last_done.max(recv);
        lat.push(recv.saturating_sub(sent) as f64 / 1e6);
    }
    Stats {
        count,
        distinct: ids.len(),
        first_sent,
        last_done,
        latencies_ms: lat,
    }
}

fn tributary(dir: &Path) -> Stats {
    let mut ids = BTreeSet::new();
    let (mut count, mut first_sent, mut last_done, mut lat) = (0, u128::MAX, 0u128, Vec::new());
    for entry in std::fs::read_dir(dir)
        .expect("the Parquet folder")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let done = entry
            .metadata()
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let id = batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>();
            let sent = batch
                .column_by_name("sent_ns")
                .unwrap()
                .as_primitive::<Int64Type>();
            for (i, s) in id.values().iter().zip(sent.values()) {
                if *i < 0 {
                    continue; // readiness probes
                }
                let s = *s as u128;
                count += 1;
                ids.insert(*i);
                first_sent = first_sent.min(s);
                last_done = last_done.max(done);
                lat.push(done.saturating_sub(s) as f64 / 1e6);
            }
        }
    }
    Stats {
        count,
        distinct: ids.len(),
        first_sent,
        last_done,
        latencies_ms: lat,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (n, sub, dir, starts) = match &args[..] {
        [_, n, sub, dir] => (n, sub, dir, None),
        [_, n, sub, dir, a, b] => (n, sub, dir, Some((a.parse().unwrap(), b.parse().unwrap()))),
        _ => {
            eprintln!("usage: mqtt_bench_report N SUB_OUTPUT PARQUET_DIR|kafka:FILE [FLOOR_START_NS TRIBUTARY_START_NS]");
            std::process::exit(2);
        }
    };
    let n: usize = n.parse().unwrap();
    println!(
        "{}",
        floor(Path::new(sub)).json("mosquitto_sub", n, starts.map(|s: (u128, u128)| s.0))
    );
    let (tool, stats) = match dir.strip_prefix("kafka:") {
        Some(file) => ("tributary → kafka", floor(Path::new(file))),
        None => ("tributary", tributary(Path::new(dir))),
    };
    println!("{}", stats.json(tool, n, starts.map(|s| s.1)));
}
