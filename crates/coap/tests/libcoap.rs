//! The CoAP connectors against libcoap: `coap-server-notls -d` (started by
//! `scripts/services up`, address in `TRIBUTARY_COAP_URL`) serves resources that
//! `coap-client-notls` PUTs; `coap-client-notls` also POSTs to Tributary's endpoint. A missing
//! server fails these tests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::RecordBatch;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::task::JoinHandle;
use tributary_coap::{CoapEndpoint, CoapEndpointConfig, CoapSource, CoapSourceConfig, Mode};
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::runtime::{Pipeline, PipelineFailure, PipelineSettings, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_core::Source;
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};
use tributary_formats::payload::PayloadFormat;

type Stop = tokio_util::sync::CancellationToken;
type Task = JoinHandle<Result<RunSummary, PipelineFailure>>;

fn server() -> String {
    std::env::var("TRIBUTARY_COAP_URL").unwrap_or_else(|_| {
        panic!("TRIBUTARY_COAP_URL is not set: start libcoap with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

fn coap_client(args: &[&str]) -> std::process::Output {
    Command::new("coap-client-notls")
        .args(args)
        .output()
        .expect("coap-client-notls (Debian libcoap3-bin) is installed by scripts/services")
}

fn put(uri: &str, body: &str) {
    let out = coap_client(&["-m", "put", "-e", body, uri]);
    assert!(
        out.status.success(),
        "PUT {uri}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    fn db(&self) -> PathBuf {
        self.path.join("state.db")
    }
}

fn start(dir: &Dir, source: Box<dyn Source>) -> (Stop, Task) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut settings = PipelineSettings::new("coap");
    settings.commit_interval = Duration::from_millis(200);
    let sink = ParquetSink::new(ParquetSinkConfig::new("out"), &dir.path).unwrap();
    let state = Arc::new(SqliteStateStore::open(dir.db()).unwrap());
    let dlq = NdjsonDeadLetter::new(dir.path.join("dlq.ndjson"));
    let stop = Stop::new();
    let p = Pipeline::new(settings, source, Box::new(sink), Box::new(dlq), state)
        .with_stop(stop.clone());
    (stop, tokio::spawn(p.run()))
}

async fn stop_and_wait(stop: Stop, task: Task) -> RunSummary {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the pipeline stops within 30 s")
        .unwrap()
        .unwrap_or_else(|f| panic!("{f}"))
}

fn committed_seq(db: &Path) -> Option<u64> {
    let store = SqliteStateStore::open(db).ok()?;
    store.positions("coap").ok()?.first()?.position.as_json()["seq"].as_u64()
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
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("out/coap"))
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

fn ints(dir: &Path, column: &str) -> Vec<i64> {
    batches(dir)
        .iter()
        .flat_map(|b| {
            b.column_by_name(column)
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_resource_delivers_every_put_and_a_restart_registers_again() {
    let dir = Dir::new();
    let uri = format!("{}/obs-{}", server(), nonce());
    put(&uri, r#"{"reading": 0}"#);
    let mut c = CoapSourceConfig::new(&uri);
    c.batch_timeout = Duration::from_millis(50);
    let (stop, task) = start(&dir, Box::new(CoapSource::new(c.clone()).unwrap()));
    // The registration's response carries the current state.
    wait_for("the first notification", 30, || {
        committed_seq(&dir.db()) == Some(1)
    })
    .await;
    for i in 1..=5 {
        put(&uri, &format!(r#"{{"reading": {i}}}"#));
        // One change at a time: observe may skip intermediate states of a fast-changing resource.
        wait_for("the notification", 30, || {
            committed_seq(&dir.db()) == Some(i + 1)
        })
        .await;
    }
    stop_and_wait(stop, task).await;
    assert_eq!(ints(&dir.path, "reading"), (0..=5).collect::<Vec<_>>());

    // Changed while stopped: the new registration delivers the current state.
    put(&uri, r#"{"reading": 6}"#);
    let (stop, task) = start(&dir, Box::new(CoapSource::new(c).unwrap()));
    wait_for("the state after the restart", 30, || {
        committed_seq(&dir.db()) == Some(7)
    })
    .await;
    put(&uri, r#"{"reading": 7}"#);
    wait_for("a notification after the restart", 30, || {
        committed_seq(&dir.db()) == Some(8)
    })
    .await;
    stop_and_wait(stop, task).await;
    assert_eq!(ints(&dir.path, "reading"), (0..=7).collect::<Vec<_>>());
    let b = &batches(&dir.path)[0];
    let path = b.column_by_name("_path").unwrap().as_string::<i32>();
    assert!(uri.ends_with(path.value(0)), "{} vs {uri}", path.value(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_fetches_a_large_representation_block_by_block() {
    let dir = Dir::new();
    let uri = format!("{}/big-{}", server(), nonce());
    let body: String = (0..300).map(|i| format!("{i:04}-abcdef\n")).collect();
    assert!(body.len() > 3000);
    let file = dir.path.join("body.txt");
    std::fs::write(&file, &body).unwrap();
    let out = coap_client(&["-m", "put", "-b", "64", "-f", file.to_str().unwrap(), &uri]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = CoapSourceConfig::new(&uri);
    c.mode = Mode::Poll;
    c.interval = Duration::from_millis(300);
    c.block_size = 64;
    c.format = PayloadFormat::Text;
    c.batch_timeout = Duration::from_millis(50);
    let (stop, task) = start(&dir, Box::new(CoapSource::new(c).unwrap()));
    wait_for("two polls", 30, || {
        committed_seq(&dir.db()).is_some_and(|s| s >= 2)
    })
    .await;
    stop_and_wait(stop, task).await;
    let all = batches(&dir.path);
    let payloads: Vec<String> = all
        .iter()
        .flat_map(|b| {
            let p = b.column_by_name("payload").unwrap().as_string::<i32>();
            p.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert!(payloads.len() >= 2);
    for p in payloads {
        assert_eq!(
            p,
            body,
            "reassembled from {} blocks",
            body.len().div_ceil(64)
        );
    }
}

/// Sends `packet` from `socket` to `to` and returns the first answer for its message id.
async fn exchange(socket: &tokio::net::UdpSocket, to: SocketAddr, packet: &Packet) -> Packet {
    socket
        .send_to(&packet.to_bytes().unwrap(), to)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let p = Packet::from_bytes(&buf[..n]).unwrap();
        if p.header.message_id == packet.header.message_id {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_post_readings_answered_once_durable_and_retransmissions_are_written_once() {
    let dir = Dir::new();
    let mut cfg = CoapEndpointConfig::new("127.0.0.1:0");
    cfg.paths = vec!["/readings".into(), "/devices/".into()];
    let endpoint = CoapEndpoint::new(cfg).unwrap();
    let bound = endpoint.bound_address();
    let (stop, task) = start(&dir, Box::new(endpoint));
    let mut addr = None;
    wait_for("the endpoint to listen", 10, || {
        addr = *bound.lock().unwrap();
        addr.is_some()
    })
    .await;
    let addr = addr.unwrap();

    // coap-client waits for each answer: when it returns, the reading is committed.
    for i in 0..20 {
        let uri = format!("coap://{addr}/readings");
        let out = coap_client(&["-m", "post", "-e", &format!(r#"{{"n": {i}}}"#), &uri]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            committed_seq(&dir.db()).is_some_and(|s| s > i as u64),
            "answered before durable"
        );
    }
    // Block-wise POST of a large reading: one row.
    let big = format!(r#"{{"n": 100, "blob": "{}"}}"#, "x".repeat(2000));
    let file = dir.path.join("big.json");
    std::fs::write(&file, &big).unwrap();
    let out = coap_client(&[
        "-m",
        "post",
        "-b",
        "64",
        "-f",
        file.to_str().unwrap(),
        &format!("coap://{addr}/devices/d1"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Non-confirmable, and a path that is not accepted.
    let out = coap_client(&[
        "-N",
        "-m",
        "put",
        "-e",
        r#"{"n": 101}"#,
        &format!("coap://{addr}/devices/d2"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = coap_client(&[
        "-m",
        "post",
        "-e",
        r#"{"n": 999}"#,
        &format!("coap://{addr}/elsewhere"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4.04")
            || String::from_utf8_lossy(&out.stderr).contains("4.04"),
        "{out:?}"
    );

    // A device that gets no answer retransmits the same message: written once.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = Packet::new();
    req.header.set_type(MessageType::Confirmable);
    req.header.code = MessageClass::Request(RequestType::Post);
    req.header.message_id = 4242;
    req.set_token(vec![1, 2, 3]);
    req.add_option(CoapOption::UriPath, b"readings".to_vec());
    req.payload = br#"{"n": 200}"#.to_vec();
    let bytes = req.to_bytes().unwrap();
    socket.send_to(&bytes, addr).await.unwrap();
    socket.send_to(&bytes, addr).await.unwrap();
    let answer = exchange(&socket, addr, &req).await;
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    assert_eq!(answer.get_token(), [1, 2, 3]);
    // The answer was lost, say: the device sends once more and gets the same answer.
    let again = exchange(&socket, addr, &req).await;
    assert_eq!(
        again.header.code,
        MessageClass::Response(ResponseType::Created)
    );

    // A payload that is not JSON: dead-lettered, and the device is told why.
    let mut bad = req.clone();
    bad.header.message_id = 4243;
    bad.payload = b"{oops".to_vec();
    let answer = exchange(&socket, addr, &bad).await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    assert!(!answer.payload.is_empty());

    stop_and_wait(stop, task).await;
    let mut ns = ints(&dir.path, "n");
    ns.sort();
    let mut expected: Vec<i64> = (0..20).collect();
    expected.extend([100, 101, 200]);
    assert_eq!(ns, expected, "every reading once");
    let unique: BTreeSet<i64> = ns.iter().copied().collect();
    assert_eq!(unique.len(), ns.len());
    let blob_len: usize = batches(&dir.path)
        .iter()
        .filter_map(|b| {
            b.column_by_name("blob").map(|c| {
                c.as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::len)
                    .sum::<usize>()
            })
        })
        .sum();
    assert_eq!(blob_len, 2000, "the block-wise reading arrived whole");
    let dead = std::fs::read_to_string(dir.path.join("dlq.ndjson")).unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(dead.contains("{oops"));
}
