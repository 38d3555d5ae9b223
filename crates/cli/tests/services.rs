//! The test services started by `scripts/services up` answer their protocols. A missing
//! service fails these tests (it never skips them): run the suite with `scripts/test`.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the services")
    })
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn postgres_runs_with_logical_replication() {
    let url = env("TRIBUTARY_PG_URL");
    let out = output(Command::new("psql").args([
        &url,
        "-Atc",
        "select current_setting('wal_level'), version()",
    ]));
    assert!(out.starts_with("logical|PostgreSQL 15"), "{out}");
}

#[test]
fn mosquitto_delivers_a_retained_message() {
    let addr = env("TRIBUTARY_MQTT_ADDR");
    let (host, port) = addr.split_once(':').unwrap();
    let topic = format!("tributary/smoke/{}", nonce());
    let payload = nonce();
    output(Command::new("mosquitto_pub").args([
        "-h", host, "-p", port, "-q", "1", "-r", "-t", &topic, "-m", &payload,
    ]));
    let got = output(Command::new("mosquitto_sub").args([
        "-h", host, "-p", port, "-q", "1", "-t", &topic, "-C", "1", "-W", "10",
    ]));
    assert_eq!(got.trim(), payload);
}

#[test]
fn coap_server_stores_and_returns_a_resource() {
    let base = env("TRIBUTARY_COAP_URL");
    let uri = format!("{base}/smoke-{}", nonce());
    let payload = nonce();
    output(Command::new("coap-client-notls").args(["-m", "put", "-e", &payload, &uri]));
    let got = output(Command::new("coap-client-notls").args(["-m", "get", &uri]));
    assert_eq!(got.trim(), payload);
}

#[test]
fn kafka_broker_answers_api_versions() {
    let brokers = env("TRIBUTARY_KAFKA_BROKERS");
    let mut conn = std::net::TcpStream::connect(brokers.split(',').next().unwrap()).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // ApiVersions v0: api_key 18, version 0, correlation id 42, client id "tributary-smoke".
    let client = b"tributary-smoke";
    let mut body = Vec::new();
    body.extend(18i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(42i32.to_be_bytes());
    body.extend((client.len() as i16).to_be_bytes());
    body.extend(client);
    conn.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    conn.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    conn.read_exact(&mut resp).unwrap();
    assert_eq!(
        i32::from_be_bytes(resp[0..4].try_into().unwrap()),
        42,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(resp[4..6].try_into().unwrap()),
        0,
        "error code"
    );
    let apis = i32::from_be_bytes(resp[6..10].try_into().unwrap());
    let keys: Vec<i16> = (0..apis as usize)
        .map(|i| i16::from_be_bytes(resp[10 + i * 6..12 + i * 6].try_into().unwrap()))
        .collect();
    for key in [0i16, 1, 3, 18] {
        assert!(
            keys.contains(&key),
            "Produce/Fetch/Metadata/ApiVersions supported: {keys:?}"
        );
    }
}
