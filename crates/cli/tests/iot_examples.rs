//! The guide's IoT examples (`examples/iot_ingestion/`) run against Mosquitto and libcoap
//! (from `scripts/services`) with the results their READMEs promise. Each test copies the
//! example and makes its names unique (topic prefix, client id, resource) so runs never share
//! a broker session.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the services")
    })
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// Copies `examples/iot_ingestion/<name>/pipeline.yaml`, replacing `from` with `to` pairs.
fn copy_example(name: &str, dir: &Path, replace: &[(&str, &str)]) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/iot_ingestion")
        .join(name);
    let mut text = std::fs::read_to_string(from.join("pipeline.yaml")).unwrap();
    for (a, b) in replace {
        assert!(text.contains(a), "{a:?} not in the example");
        text = text.replace(a, b);
    }
    std::fs::write(dir.join("pipeline.yaml"), text).unwrap();
}

fn spawn(dir: &Path, envs: &[(&str, String)]) -> Child {
    let mut cmd = tributary();
    cmd.args(["run", "pipeline.yaml", "--no-progress", "--report", "json"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || for _ in stderr.lines().map_while(Result::ok) {});
    child
}

fn stop(child: Child) -> serde_json::Value {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "graceful stop exits 0");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn batches(dir: &Path) -> Vec<RecordBatch> {
    parquet_files(dir)
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

fn strings(dir: &Path, column: &str) -> Vec<String> {
    batches(dir)
        .iter()
        .flat_map(|b| {
            b.column_by_name(column)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn mosquitto_pub(topic: &str, payload: &str) {
    let addr = env("TRIBUTARY_MQTT_ADDR");
    let (host, port) = addr.split_once(':').unwrap();
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", port, "-q", "1", "-t", topic, "-m", payload,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn mqtt_telemetry_lands_with_topic_columns_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = nonce();
    let prefix = format!("sensors-{n}");
    copy_example(
        "mqtt_telemetry",
        dir.path(),
        &[
            ("sensors/", &format!("{prefix}/")),
            ("telemetry-ingest-1", &format!("telemetry-{n}")),
        ],
    );
    let envs = [("TRIBUTARY_MQTT_ADDR", env("TRIBUTARY_MQTT_ADDR"))];
    let out = dir.path().join("output/mqtt");
    let child = spawn(dir.path(), &envs);
    // The subscription is in place once a probe lands.
    poll("a probe row", 60, || {
        mosquitto_pub(&format!("{prefix}/probe/probe/probe"), r#"{"value": 0}"#);
        std::thread::sleep(std::time::Duration::from_millis(300));
        (!parquet_files(&out).is_empty()).then_some(())
    });
    mosquitto_pub(&format!("{prefix}/berlin/d7/temp"), r#"{"value": 21.5}"#);
    mosquitto_pub(&format!("{prefix}/berlin/d7/temp"), "not json");
    let s = stop(child);
    assert_eq!(s["status"], "stopped");

    // Published while stopped: the session keeps it.
    mosquitto_pub(&format!("{prefix}/paris/d9/humidity"), r#"{"value": 40}"#);
    let child = spawn(dir.path(), &envs);
    poll("the reading published while stopped", 60, || {
        strings(&out, "site")
            .contains(&"paris".to_string())
            .then_some(())
    });
    stop(child);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for b in batches(&out) {
        let site = b.column_by_name("site").unwrap().as_string::<i32>();
        let device = b.column_by_name("device").unwrap().as_string::<i32>();
        let metric = b.column_by_name("metric").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            if site.value(i) != "probe" {
                rows.push((
                    site.value(i).into(),
                    device.value(i).into(),
                    metric.value(i).into(),
                ));
            }
        }
    }
    rows.sort();
    assert_eq!(
        rows,
        [
            ("berlin".into(), "d7".into(), "temp".into()),
            ("paris".into(), "d9".into(), "humidity".into())
        ]
    );
    let dead = std::fs::read_to_string(dir.path().join(".tributary/dead_letter/telemetry.ndjson"))
        .unwrap();
    assert!(
        dead.contains("berlin/d7/temp") && dead.contains("not json"),
        "{dead}"
    );
}

#[test]
fn coap_observe_writes_a_row_per_change() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("coap_observe", dir.path(), &[]);
    let uri = format!("{}/greenhouse-{}", env("TRIBUTARY_COAP_URL"), nonce());
    let put = |body: &str| {
        let ok = Command::new("coap-client-notls")
            .args(["-m", "put", "-e", body, &uri])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    put(r#"{"temp": 21.5}"#);
    let out = dir.path().join("output/coap");
    let child = spawn(dir.path(), &[("COAP_RESOURCE", uri.clone())]);
    let temps = |out: &Path| -> Vec<f64> {
        batches(out)
            .iter()
            .flat_map(|b| {
                b.column_by_name("temp")
                    .unwrap()
                    .as_primitive::<arrow_array::types::Float64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    };
    poll("the state at registration", 60, || {
        (temps(&out).len() == 1).then_some(())
    });
    put(r#"{"temp": 22.0}"#);
    poll("the notification", 60, || {
        (temps(&out).len() == 2).then_some(())
    });
    stop(child);
    assert_eq!(temps(&out), [21.5, 22.0]);
}

#[test]
fn coap_device_push_answers_only_durable_readings() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("coap_device_push", dir.path(), &[]);
    // A free UDP port for the endpoint.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let db = dir.path().join(".tributary/state.db");
    let child = spawn(dir.path(), &[("COAP_LISTEN", listen.clone())]);
    let post = |path: &str, body: &str| -> String {
        let out = Command::new("coap-client-notls")
            .args([
                "-m",
                "post",
                "-B",
                "10",
                "-e",
                body,
                &format!("coap://{listen}{path}"),
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    poll("the endpoint to listen", 60, || {
        std::net::UdpSocket::bind(&listen).is_err().then_some(())
    });
    post("/meters/m1", r#"{"kwh": 1.5}"#);
    assert_eq!(
        committed_offset_seq(&db),
        Some(1),
        "the answer came after the reading was committed"
    );
    let answer = post("/meters/m2", "oops");
    assert!(answer.contains("4.00"), "the device is told: {answer}");
    let answer = post("/elsewhere", r#"{"kwh": 1}"#);
    assert!(answer.contains("4.04"), "{answer}");
    let s = stop(child);
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&1.into(), &1.into()),
        "{s}"
    );
    let paths = strings(&dir.path().join("output/coap"), "_path");
    assert_eq!(paths, ["/meters/m1"]);
}

/// The committed `seq` of the first stream of the pipeline in `db`.
fn committed_offset_seq(db: &Path) -> Option<u64> {
    use tributary_core::state::{SqliteStateStore, StateStore};
    let store = SqliteStateStore::open(db).ok()?;
    let p = store.positions("meters").ok()?;
    p.first()?.position.as_json()["seq"].as_u64()
}
