//! `tributary run` with an MQTT source (Mosquitto from `scripts/services`) into Parquet: a
//! `kill -9` after the messages were received but before they were durable loses nothing (the
//! broker redelivers), and SIGTERM drains, commits, acknowledges and exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

fn broker() -> String {
    std::env::var("TRIBUTARY_MQTT_ADDR").unwrap_or_else(|_| {
        panic!("TRIBUTARY_MQTT_ADDR is not set: run the tests with scripts/test, which starts Mosquitto")
    })
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// Publishes `{"id": i}` for each id, QoS 1, with `mosquitto_pub -l`.
fn publish(topic: &str, ids: std::ops::Range<i64>) {
    let addr = broker();
    let (host, port) = addr.split_once(':').unwrap();
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", port, "-V", "mqttv5", "-q", "1", "-t", topic, "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed by scripts/services");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in ids {
            writeln!(stdin, r#"{{"id": {i}, "reading": {}.25}}"#, i % 100).unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// A pipeline file; `window` is the MQTT 5 receive maximum (`max_inflight`).
fn write_pipeline(
    dir: &Path,
    name: &str,
    topic: &str,
    client: &str,
    commit_interval: &str,
    window: u16,
) {
    std::fs::write(
        dir.join("pipeline.yaml"),
        format!(
            "pipeline: {name}\n\
             commit_interval: {commit_interval}\n\
             source:\n  kind: mqtt\n  broker: ${{TRIBUTARY_MQTT_ADDR}}\n  topics: [\"{topic}\"]\n  \
             client_id: {client}\n  session_expiry: 10m\n  batch_timeout: 50ms\n  max_inflight: {window}\n\
             sink:\n  kind: parquet\n  path: out\n"
        ),
    )
    .unwrap();
}

/// Starts `tributary run` with a metrics endpoint; returns the child, its metrics address and
/// its stderr lines.
fn spawn(dir: &Path) -> (Child, String, Receiver<String>) {
    let mut child = tributary()
        .args([
            "run",
            "pipeline.yaml",
            "--no-progress",
            "--report",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = poll("the metrics address in the log", 60, || {
        let line = rx.try_recv().ok()?;
        let rest = line.split("http://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    });
    (child, addr, rx)
}

/// A counter from the Prometheus endpoint (0 when not exported yet).
fn metric(addr: &str, name: &str) -> u64 {
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until the subscription is in place: publishes probes (id -1) until one is received.
fn wait_subscribed(addr: &str, topic: &str) {
    poll("the subscription (a probe received)", 60, || {
        publish(topic, -1..0);
        std::thread::sleep(std::time::Duration::from_millis(100));
        (metric(addr, "tributary_records_in_total") > 0).then_some(())
    });
}

fn ids_without_probes(out: &Path) -> Vec<i64> {
    let mut ids = int_column(out, "id");
    ids.retain(|i| *i >= 0);
    ids.sort();
    ids
}

#[test]
fn kill_dash_9_after_receipt_before_the_sink_write_loses_nothing() {
    const N: i64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let n = nonce();
    let topic = format!("tributary/cli/{n}/kill");
    // An hour between commits and a window larger than the load: what is received stays
    // unacknowledged and not durable.
    write_pipeline(
        dir.path(),
        "mqtt_kill",
        &topic,
        &format!("cli-kill-{n}"),
        "1h",
        60000,
    );
    let (mut child, addr, _log) = spawn(dir.path());
    wait_subscribed(&addr, &topic);
    let probes = metric(&addr, "tributary_records_in_total");
    publish(&topic, 0..N);
    // Every message reached the sink loop (written to the open Parquet file, not durable)...
    poll("all messages received", 60, || {
        (metric(&addr, "tributary_records_in_total") >= probes + N as u64).then_some(())
    });
    assert_eq!(
        metric(&addr, "tributary_commits_total"),
        0,
        "nothing committed yet"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = dir.path().join("out/mqtt");
    assert!(ids_without_probes(&out).is_empty(), "nothing was durable");

    // ...and the broker redelivers all of it to the next run.
    write_pipeline(
        dir.path(),
        "mqtt_kill",
        &topic,
        &format!("cli-kill-{n}"),
        "200ms",
        1000,
    );
    let (mut child, addr, _log) = spawn(dir.path());
    poll("the redelivered messages committed", 60, || {
        (ids_without_probes(&out).len() as i64 >= N).then_some(())
    });
    let _ = addr;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let ids = ids_without_probes(&out);
    assert_eq!(
        ids,
        (0..N).collect::<Vec<_>>(),
        "every message exactly once"
    );
    let leftovers = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0, "the crashed run's temporary file was removed");
}

#[test]
fn sigterm_commits_acknowledges_and_exits_zero_and_the_session_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let n = nonce();
    let topic = format!("tributary/cli/{n}/term");
    write_pipeline(
        dir.path(),
        "mqtt_term",
        &topic,
        &format!("cli-term-{n}"),
        "1h",
        60000,
    );
    let (mut child, addr, _log) = spawn(dir.path());
    wait_subscribed(&addr, &topic);
    let probes = metric(&addr, "tributary_records_in_total");
    publish(&topic, 0..500);
    poll("500 messages received", 60, || {
        (metric(&addr, "tributary_records_in_total") >= probes + 500).then_some(())
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "graceful stop exits 0"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["status"], "stopped");
    let out = dir.path().join("out/mqtt");
    assert_eq!(ids_without_probes(&out), (0..500).collect::<Vec<_>>());

    // Published while stopped: queued by the broker for the session.
    publish(&topic, 500..700);
    write_pipeline(
        dir.path(),
        "mqtt_term",
        &topic,
        &format!("cli-term-{n}"),
        "200ms",
        1000,
    );
    let (mut child, _addr, _log) = spawn(dir.path());
    poll("the queued messages", 60, || {
        (ids_without_probes(&out).len() >= 700).then_some(())
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // The first run acknowledged what it committed on stop: nothing came twice.
    assert_eq!(ids_without_probes(&out), (0..700).collect::<Vec<_>>());
}
