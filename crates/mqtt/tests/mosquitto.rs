//! The MQTT source against a real Mosquitto broker (started by `scripts/services up`; the
//! address comes from `TRIBUTARY_MQTT_ADDR`). A missing broker fails these tests.
//!
//! Each test runs the real runtime with the Parquet sink and the SQLite state store, publishes
//! with `mosquitto_pub`, and checks the output file by file: every id exactly once.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tributary_core::config::VarStr;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunStatus, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};
use tributary_mqtt::config::TlsConfig;
use tributary_mqtt::{MqttSource, MqttSourceConfig, Protocol};

type Stop = tokio_util::sync::CancellationToken;

fn broker() -> String {
    std::env::var("TRIBUTARY_MQTT_ADDR").unwrap_or_else(|_| {
        panic!("TRIBUTARY_MQTT_ADDR is not set: start the broker with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// Publishes one message per line with `mosquitto_pub -l` (waits for the broker's acks).
fn publish(protocol: Protocol, topic: &str, qos: u8, lines: &[String], extra: &[&str]) {
    let addr = broker();
    let (host, port) = addr.split_once(':').unwrap();
    let version = match protocol {
        Protocol::V5 => "mqttv5",
        Protocol::V311 => "mqttv311",
    };
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-V",
            version,
            "-q",
            &qos.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian mosquitto-clients) is installed by scripts/services");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_lines(ids: std::ops::Range<i64>) -> Vec<String> {
    ids.map(|i| format!(r#"{{"id": {i}, "temp": {}.5}}"#, i % 40))
        .collect()
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        Dir { _tmp: tmp, path }
    }
    fn out(&self, stream: &str) -> PathBuf {
        self.path.join("out").join(stream)
    }
    fn db(&self) -> PathBuf {
        self.path.join("state.db")
    }
}

fn settings(pipeline: &str) -> PipelineSettings {
    // Logs with RUST_LOG=debug when a test needs looking into.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut s = PipelineSettings::new(pipeline);
    s.commit_interval = Duration::from_millis(300);
    s
}

/// Starts a pipeline in the background; returns its stop token and task.
fn start(
    dir: &Dir,
    pipeline: &str,
    config: MqttSourceConfig,
    settings: PipelineSettings,
) -> (
    Stop,
    JoinHandle<Result<RunSummary, tributary_core::runtime::PipelineFailure>>,
) {
    let source = MqttSource::new(config, pipeline).unwrap();
    let sink = ParquetSink::new(ParquetSinkConfig::new("out"), &dir.path).unwrap();
    let state = Arc::new(SqliteStateStore::open(dir.db()).unwrap());
    let dlq = NdjsonDeadLetter::new(dir.path.join("dlq.ndjson"));
    let stop = Stop::new();
    let p = Pipeline::new(
        settings,
        Box::new(source),
        Box::new(sink),
        Box::new(dlq),
        state,
    )
    .with_stop(stop.clone());
    (stop, tokio::spawn(p.run()))
}

async fn stop_and_wait(
    stop: Stop,
    task: JoinHandle<Result<RunSummary, tributary_core::runtime::PipelineFailure>>,
) -> RunSummary {
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the pipeline stops within 30 s")
        .unwrap()
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(summary.status, RunStatus::Stopped);
    summary
}

/// The committed sequence of a pipeline's stream.
fn committed_seq(db: &Path, pipeline: &str) -> Option<u64> {
    let store = SqliteStateStore::open(db).ok()?;
    let states = store.positions(pipeline).ok()?;
    states.first()?.position.as_json()["seq"].as_u64()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn batches(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ids(dir: &Path) -> Vec<i64> {
    batches(dir)
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn assert_exactly(ids: &[i64], expected: std::ops::Range<i64>) {
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates in the output");
    assert_eq!(
        unique,
        expected.collect::<BTreeSet<_>>(),
        "lost or unexpected ids"
    );
}

fn config(protocol: Protocol, topic: &str, client_id: &str) -> MqttSourceConfig {
    let mut c = MqttSourceConfig::new(broker(), &[topic]);
    c.protocol = protocol;
    c.client_id = Some(client_id.into());
    c.session_expiry = Duration::from_secs(300);
    c.batch_timeout = Duration::from_millis(100);
    c
}

/// Runs the pipeline until the subscription is in place (a probe message is committed), then
/// stops it: the broker now holds a session for `client_id`.
async fn establish_session(dir: &Dir, pipeline: &str, c: &MqttSourceConfig, topic: &str) {
    let (stop, task) = start(dir, pipeline, c.clone(), settings(pipeline));
    let probe = [r#"{"id": -1, "temp": 0.5}"#.to_string()];
    let deadline = Instant::now() + Duration::from_secs(30);
    // Published until it arrives: the subscription may not be in place for the first ones.
    while committed_seq(&dir.db(), pipeline).is_none() {
        assert!(Instant::now() < deadline, "the probe never arrived");
        publish(c.protocol, topic, 1, &probe, &[]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_and_wait(stop, task).await;
}

async fn published_while_stopped_arrive_after_start(protocol: Protocol) {
    let dir = Dir::new();
    let n = nonce();
    let topic = format!("tributary/test/{n}/stopped");
    let c = config(protocol, &topic, &format!("t-stopped-{n}"));
    establish_session(&dir, "stopped", &c, &topic).await;
    let probes = ids(&dir.out("mqtt")).len() as i64;

    // Tributary is down: the broker queues these for the session.
    publish(protocol, &topic, 1, &json_lines(0..300), &[]);

    let before = committed_seq(&dir.db(), "stopped").unwrap();
    let (stop, task) = start(&dir, "stopped", c, settings("stopped"));
    wait_for("the queued messages", 30, || {
        committed_seq(&dir.db(), "stopped").is_some_and(|s| s >= before + 300)
    })
    .await;
    let summary = stop_and_wait(stop, task).await;
    assert_eq!(summary.rows_out, 300);
    let mut got = ids(&dir.out("mqtt"));
    got.retain(|i| *i >= 0);
    assert_exactly(&got, 0..300);
    assert!(probes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos1_messages_published_while_stopped_arrive_after_start() {
    published_while_stopped_arrive_after_start(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos1_messages_published_while_stopped_arrive_after_start() {
    published_while_stopped_arrive_after_start(Protocol::V311).await;
}

/// With a commit interval of an hour, only the window rule can move a batch that is larger
/// than the broker's in-flight window: without it the broker stops after the window and the
/// pipeline stalls.
async fn a_batch_larger_than_the_window_does_not_stall(protocol: Protocol, window: Option<u16>) {
    let dir = Dir::new();
    let n = nonce();
    let topic = format!("tributary/test/{n}/window");
    let mut c = config(protocol, &topic, &format!("t-window-{n}"));
    c.max_inflight = window.and_then(std::num::NonZeroU16::new);
    c.batch_size = std::num::NonZeroUsize::new(100_000).unwrap();
    c.batch_timeout = Duration::from_secs(3600);
    let mut s = settings("window");
    s.commit_interval = Duration::from_secs(3600);
    establish_session_with(&dir, "window", &c, &topic, s.clone()).await;

    publish(protocol, &topic, 1, &json_lines(0..2000), &[]);
    let before = committed_seq(&dir.db(), "window").unwrap();
    let (stop, task) = start(&dir, "window", c, s);
    wait_for("2000 messages through a small window", 60, || {
        committed_seq(&dir.db(), "window").is_some_and(|s| s >= before + 2000)
    })
    .await;
    stop_and_wait(stop, task).await;
    let mut got = ids(&dir.out("mqtt"));
    got.retain(|i| *i >= 0);
    assert_exactly(&got, 0..2000);
}

/// [`establish_session`] with given settings: with `batch_timeout` and `commit_interval` at an
/// hour, the probe is committed by the window rule (window 1 → every message) or not at all,
/// so the probe is published until the window's half is reached.
async fn establish_session_with(
    dir: &Dir,
    pipeline: &str,
    c: &MqttSourceConfig,
    topic: &str,
    s: PipelineSettings,
) {
    let (stop, task) = start(dir, pipeline, c.clone(), s);
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = vec![r#"{"id": -1, "temp": 0.5}"#.to_string(); usize::from(c.window() / 2).max(1)];
    while committed_seq(&dir.db(), pipeline).is_none() {
        assert!(Instant::now() < deadline, "the probe never arrived");
        publish(c.protocol, topic, 1, &probe, &[]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_and_wait(stop, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_a_batch_larger_than_mosquittos_inflight_window_does_not_stall() {
    // Mosquitto's default max_inflight_messages is 20, which is also the 3.1.1 default here.
    a_batch_larger_than_the_window_does_not_stall(Protocol::V311, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_batch_larger_than_the_receive_maximum_does_not_stall() {
    a_batch_larger_than_the_window_does_not_stall(Protocol::V5, Some(16)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_acknowledges_what_it_committed() {
    // After a stop, a restart receives nothing again: the final commit's messages were acked.
    let dir = Dir::new();
    let n = nonce();
    let topic = format!("tributary/test/{n}/acked");
    let c = config(Protocol::V5, &topic, &format!("t-acked-{n}"));
    let (stop, task) = start(&dir, "acked", c.clone(), settings("acked"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = 0i64;
    while committed_seq(&dir.db(), "acked").is_none() {
        assert!(Instant::now() < deadline, "nothing arrived");
        publish(
            Protocol::V5,
            &topic,
            1,
            &json_lines(published..published + 1),
            &[],
        );
        published += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = committed_seq(&dir.db(), "acked").unwrap();
    publish(
        Protocol::V5,
        &topic,
        1,
        &json_lines(published..published + 500),
        &[],
    );
    published += 500;
    wait_for("the 500", 30, || {
        committed_seq(&dir.db(), "acked").is_some_and(|c| c >= s + 500)
    })
    .await;
    stop_and_wait(stop, task).await;
    let first = ids(&dir.out("mqtt"));

    let (stop, task) = start(&dir, "acked", c, settings("acked"));
    // A marker published now arrives after anything the broker would redeliver.
    publish(
        Protocol::V5,
        &topic,
        1,
        &json_lines(published..published + 1),
        &[],
    );
    let seq = committed_seq(&dir.db(), "acked").unwrap();
    wait_for("the marker", 30, || {
        committed_seq(&dir.db(), "acked").is_some_and(|c| c > seq)
    })
    .await;
    let summary = stop_and_wait(stop, task).await;
    assert_eq!(
        summary.rows_out, 1,
        "only the marker: nothing was redelivered"
    );
    let mut all = ids(&dir.out("mqtt"));
    all.sort();
    let mut expected = first;
    expected.push(published);
    expected.sort();
    assert_eq!(all, expected);
}

/// A TCP proxy to the broker that forwards everything except the broker's PUBREL packets,
/// which it counts and drops. A client behind it has answered a QoS 2 PUBLISH with PUBREC
/// (the data is durable) but never sees the PUBREL, so the broker keeps waiting for PUBCOMP
/// and resends the PUBREL when the session comes back.
async fn pubrel_dropping_proxy(broker: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dropped = Arc::new(AtomicUsize::new(0));
    let count = dropped.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(&broker).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_broker, mut to_broker) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
            });
            let count = count.clone();
            tokio::spawn(async move {
                // One MQTT packet at a time: fixed header byte, variable-length remaining
                // length, body.
                loop {
                    let mut header = vec![0u8];
                    if from_broker.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let (mut len, mut shift) = (0usize, 0);
                    loop {
                        let mut b = [0u8];
                        if from_broker.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        header.push(b[0]);
                        len |= usize::from(b[0] & 0x7f) << shift;
                        shift += 7;
                        if b[0] & 0x80 == 0 {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if from_broker.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if header[0] >> 4 == 6 {
                        count.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    if to_client.write_all(&header).await.is_err()
                        || to_client.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, dropped)
}

/// QoS 2 messages written and answered with PUBREC, whose PUBREL never reached the process
/// (a proxy drops them), then a new process on the same session: the broker resends the
/// PUBRELs, which the new process must complete (rumqttc alone would call them unsolicited
/// and reconnect forever); the session then delivers new messages, and nothing is written
/// twice.
async fn pubrels_resent_to_a_new_process_are_completed(protocol: Protocol) {
    let dir = Dir::new();
    let n = nonce();
    let topic = format!("tributary/test/{n}/pubrel");
    let mut c = config(protocol, &topic, &format!("t-pubrel-{n}"));
    c.qos = 2;
    let (proxy, dropped) = pubrel_dropping_proxy(broker()).await;
    let mut via_proxy = c.clone();
    via_proxy.broker = VarStr::new(proxy);
    let (stop, task) = start(&dir, "pubrel", via_proxy, settings("pubrel"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_seq(&dir.db(), "pubrel").is_none() {
        assert!(Instant::now() < deadline, "the probe never arrived");
        publish(protocol, &topic, 1, &[r#"{"id": -1}"#.into()], &[]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = committed_seq(&dir.db(), "pubrel").unwrap();
    // Fewer than Mosquitto's 20 in-flight messages: the held-back ones never complete here.
    publish(protocol, &topic, 2, &json_lines(0..10), &[]);
    wait_for(
        "10 QoS 2 messages written and their PUBRELs dropped",
        30,
        || {
            committed_seq(&dir.db(), "pubrel").is_some_and(|s| s >= before + 10)
                && dropped.load(Ordering::SeqCst) >= 10
        },
    )
    .await;
    stop_and_wait(stop, task).await;

    // Straight to the broker now: it resends the 10 PUBRELs first.
    let (stop, task) = start(&dir, "pubrel", c, settings("pubrel"));
    let seq = committed_seq(&dir.db(), "pubrel").unwrap();
    publish(protocol, &topic, 2, &json_lines(10..20), &[]);
    wait_for("10 new QoS 2 messages after the resent PUBRELs", 30, || {
        committed_seq(&dir.db(), "pubrel").is_some_and(|s| s >= seq + 10)
    })
    .await;
    let summary = stop_and_wait(stop, task).await;
    assert_eq!(
        summary.rows_out, 10,
        "only the new messages: a resent PUBREL carries no data"
    );
    let mut got = ids(&dir.out("mqtt"));
    got.retain(|i| *i >= 0);
    assert_exactly(&got, 0..20);
}

#[tokio::test]
async fn v5_pubrels_resent_to_a_new_process_are_completed() {
    pubrels_resent_to_a_new_process_are_completed(Protocol::V5).await;
}

#[tokio::test]
async fn v311_pubrels_resent_to_a_new_process_are_completed() {
    pubrels_resent_to_a_new_process_are_completed(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_a_shared_subscription_split_the_load_and_miss_nothing() {
    let n = nonce();
    let topic = format!("tributary/test/{n}/shared");
    let filter = format!("$share/g{n}/{topic}");
    let (a, b) = (Dir::new(), Dir::new());
    let ca = config(Protocol::V5, &filter, &format!("t-share-a-{n}"));
    let cb = config(Protocol::V5, &filter, &format!("t-share-b-{n}"));
    let (stop_a, task_a) = start(&a, "shared", ca, settings("shared"));
    let (stop_b, task_b) = start(&b, "shared", cb, settings("shared"));
    // Both subscriptions must be in place before the load: probe until each got one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_seq(&a.db(), "shared").is_none() || committed_seq(&b.db(), "shared").is_none() {
        assert!(Instant::now() < deadline, "a subscriber never got a probe");
        publish(
            Protocol::V5,
            &topic,
            1,
            &vec![r#"{"id": -1}"#.to_string(); 4],
            &[],
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sa, sb) = (
        committed_seq(&a.db(), "shared").unwrap(),
        committed_seq(&b.db(), "shared").unwrap(),
    );
    publish(Protocol::V5, &topic, 1, &json_lines(0..1000), &[]);
    wait_for("1000 messages between the two", 30, || {
        committed_seq(&a.db(), "shared").unwrap() + committed_seq(&b.db(), "shared").unwrap()
            >= sa + sb + 1000
    })
    .await;
    stop_and_wait(stop_a, task_a).await;
    stop_and_wait(stop_b, task_b).await;
    let mut got_a = ids(&a.out("mqtt"));
    let mut got_b = ids(&b.out("mqtt"));
    got_a.retain(|i| *i >= 0);
    got_b.retain(|i| *i >= 0);
    assert!(
        got_a.len() > 100 && got_b.len() > 100,
        "the load is split: {} and {}",
        got_a.len(),
        got_b.len()
    );
    let mut all = got_a;
    all.extend(got_b);
    assert_exactly(&all, 0..1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_properties_retained_qos2_and_dead_letters() {
    let dir = Dir::new();
    let n = nonce();
    let base = format!("tributary/test/{n}");
    // A retained message that exists before we subscribe: skipped unless `retained: true`.
    publish(
        Protocol::V5,
        &format!("{base}/s1/d0/temp"),
        1,
        &[r#"{"id": 999}"#.into()],
        &["-r"],
    );
    let mut c = config(Protocol::V5, &format!("{base}/#"), &format!("t-shape-{n}"));
    c.qos = 2;
    c.topic_template = Some(format!("{base}/{{site}}/{{device}}/#"));
    let (stop, task) = start(&dir, "shape", c.clone(), settings("shape"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_seq(&dir.db(), "shape").is_none() {
        assert!(Instant::now() < deadline, "nothing arrived");
        publish(
            Protocol::V5,
            &format!("{base}/s0/d0/probe"),
            2,
            &[r#"{"id": -1}"#.into()],
            &[],
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seq = committed_seq(&dir.db(), "shape").unwrap();
    publish(
        Protocol::V5,
        &format!("{base}/berlin/dev-7/temp"),
        2,
        &json_lines(0..5),
        &["-D", "publish", "user-property", "unit", "celsius"],
    );
    publish(
        Protocol::V5,
        &format!("{base}/berlin/dev-8/temp"),
        2,
        &["{not json".into()],
        &[],
    );
    publish(
        Protocol::V5,
        &format!("{base}/too-short"),
        2,
        &[r#"{"id": 100}"#.into()],
        &[],
    );
    wait_for("7 messages", 30, || {
        committed_seq(&dir.db(), "shape").is_some_and(|c| c >= seq + 7)
    })
    .await;
    stop_and_wait(stop, task).await;

    let all = batches(&dir.out("mqtt"));
    let mut rows = Vec::new();
    for b in &all {
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let site = b.column_by_name("site").unwrap().as_string::<i32>();
        let device = b.column_by_name("device").unwrap().as_string::<i32>();
        let topic = b.column_by_name("_topic").unwrap().as_string::<i32>();
        let props = b.column_by_name("_properties").unwrap().as_map();
        for r in 0..b.num_rows() {
            let entries = props.value(r);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            let p: Vec<(String, String)> = (0..entries.len())
                .map(|i| (keys.value(i).to_string(), values.value(i).to_string()))
                .collect();
            rows.push((
                id.value(r),
                site.value(r).to_string(),
                device.value(r).to_string(),
                topic.value(r).to_string(),
                p,
            ));
        }
    }
    let berlin: Vec<_> = rows.iter().filter(|r| r.0 >= 0).collect();
    assert_eq!(berlin.len(), 5, "{rows:?}");
    for r in &berlin {
        assert_eq!((r.1.as_str(), r.2.as_str()), ("berlin", "dev-7"));
        assert_eq!(r.3, format!("{base}/berlin/dev-7/temp"));
        assert_eq!(r.4, vec![("unit".to_string(), "celsius".to_string())]);
    }
    assert!(
        !rows.iter().any(|r| r.0 == 999),
        "the retained message was skipped"
    );

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(dir.path.join("dlq.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead[0]["location"]
        .as_str()
        .unwrap()
        .contains("berlin/dev-8/temp"));
    assert_eq!(dead[0]["raw"], "{not json");
    assert!(dead[1]["message"]
        .as_str()
        .unwrap()
        .contains("does not match the topic template"));
    assert!(dead[1]["position"]["seq"].is_u64());
    // Clear the retained message.
    publish(
        Protocol::V5,
        &format!("{base}/s1/d0/temp"),
        1,
        &[String::new()],
        &["-r"],
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the broker with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

/// The broker's TLS listener (user name and password required), trusting `ca_file`.
fn tls_config(protocol: Protocol, topic: &str, client_id: &str, ca_file: &str) -> MqttSourceConfig {
    let mut c = config(protocol, topic, client_id);
    c.broker = format!("mqtts://{}", env("TRIBUTARY_MQTTS_ADDR"))
        .as_str()
        .into();
    c.tls = Some(TlsConfig {
        ca_file: Some(ca_file.into()),
        ..TlsConfig::default()
    });
    c.username = Some("${TRIBUTARY_MQTT_USER}".into());
    c.password = Some("${TRIBUTARY_MQTT_PASSWORD}".into());
    c
}

/// Over TLS with a password, QoS 1 messages published while the pipeline is down arrive.
/// (They are published on the plain listener: both listeners share the broker's topics.)
async fn tls_session_delivers_everything(protocol: Protocol) {
    let dir = Dir::new();
    let n = nonce();
    let topic = format!("tributary/test/{n}/tls");
    let c = tls_config(
        protocol,
        &topic,
        &format!("t-tls-{n}"),
        &env("TRIBUTARY_MQTT_CA"),
    );
    establish_session(&dir, "tls", &c, &topic).await;
    publish(protocol, &topic, 1, &json_lines(0..200), &[]);
    let before = committed_seq(&dir.db(), "tls").unwrap();
    let (stop, task) = start(&dir, "tls", c, settings("tls"));
    wait_for("200 messages over TLS", 30, || {
        committed_seq(&dir.db(), "tls").is_some_and(|s| s >= before + 200)
    })
    .await;
    stop_and_wait(stop, task).await;
    let mut got = ids(&dir.out("mqtt"));
    got.retain(|i| *i >= 0);
    assert_exactly(&got, 0..200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_over_tls_with_a_password_delivers_everything() {
    tls_session_delivers_everything(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_over_tls_with_a_password_delivers_everything() {
    tls_session_delivers_everything(Protocol::V311).await;
}

/// Runs a pipeline expected to fail at connection time; returns its error message.
async fn connection_failure(c: MqttSourceConfig) -> String {
    let dir = Dir::new();
    let (_stop, task) = start(&dir, "fails", c, settings("fails"));
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("a refused connection stops the pipeline instead of retrying")
        .unwrap();
    match result {
        Ok(summary) => panic!("the pipeline ran: {summary:?}"),
        Err(failure) => failure.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_with_a_refusal_that_does_not_show_it() {
    let n = nonce();
    let topic = format!("tributary/test/{n}/badpw");
    let mut c = tls_config(
        Protocol::V5,
        &topic,
        &format!("t-badpw-{n}"),
        &env("TRIBUTARY_MQTT_CA"),
    );
    c.password = Some("not-the-password-0451".into());
    let message = connection_failure(c).await;
    assert!(message.contains("refused the connection"), "{message}");
    assert!(!message.contains("0451"), "the password leaked: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_stops_with_a_tls_error() {
    let n = nonce();
    let topic = format!("tributary/test/{n}/untrusted");
    // The server's own certificate as the only root: it is not a CA, so nothing chains.
    let ca = env("TRIBUTARY_MQTT_CA");
    let wrong = Path::new(&ca).with_file_name("server.pem");
    let c = tls_config(
        Protocol::V5,
        &topic,
        &format!("t-untrusted-{n}"),
        wrong.to_str().unwrap(),
    );
    let message = connection_failure(c).await;
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert!(message.contains("certificate"), "{message}");
}

#[test]
fn tls_settings_on_a_plain_broker_are_refused_at_start() {
    let mut c = config(Protocol::V5, "t/#", "t-plain-tls");
    c.tls = Some(TlsConfig::default());
    let err = MqttSource::new(c, "p")
        .err()
        .expect("tls on mqtt:// is an error");
    assert!(err.to_string().contains("mqtts://"), "{err}");
}
