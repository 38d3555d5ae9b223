//! `tributary registry serve`: the built-in schema registry as a process: the URL it prints
//! for `--listen 127.0.0.1:0`, a schema registered over HTTP, SIGTERM exits 0, and a restart
//! on the same `--state` (or `--kafka-store` topic) keeps ids and versions. (The API itself is tested in
//! crates/registry/tests.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use common::registry_serve_with;

/// Starts the registry with `args` (its storage); returns the child and its `host:port`.
fn serve(args: &[&std::ffi::OsStr]) -> (Child, String) {
    let (child, url) = registry_serve_with(args);
    (
        child,
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
    )
}

/// One HTTP/1.1 request; (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn stop(mut child: Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "registry exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "registry did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn registry_serve_prints_its_url_stops_on_sigterm_and_keeps_ids_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("reg").join("registry.db");
    restarts_keep_ids(&["--state".as_ref(), state.as_os_str()]);
}

/// The same with the state on a Kafka topic (tansu from `scripts/services`).
#[test]
fn registry_serve_on_a_kafka_topic_keeps_ids_across_restarts() {
    let brokers = std::env::var("TRIBUTARY_KAFKA_BROKERS")
        .expect("TRIBUTARY_KAFKA_BROKERS is not set: scripts/services up and its env");
    let topic = format!(
        "_schemas_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    restarts_keep_ids(&[
        "--kafka-store".as_ref(),
        brokers.as_ref(),
        "--kafka-topic".as_ref(),
        topic.as_ref(),
    ]);
}

/// Registers, restarts the registry on the same storage, and reads the same ids back.
fn restarts_keep_ids(storage: &[&std::ffi::OsStr]) {
    let schema = r#"{"schema": "{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\"}]}"}"#;

    let (child, addr) = serve(storage);
    assert_eq!(
        request(
            &addr,
            "POST",
            "/subjects/s-value/versions",
            "{\"schema\": \"\\\"string\\\"\"}"
        ),
        (200, r#"{"id":1}"#.into())
    );
    assert_eq!(
        request(&addr, "POST", "/subjects/t-value/versions", schema),
        (200, r#"{"id":2}"#.into())
    );
    let (status, body) = request(&addr, "GET", "/subjects/nope/versions", "");
    assert_eq!(status, 404);
    assert!(body.contains("40401"), "{body}");
    stop(child);

    let (child, addr) = serve(storage);
    assert_eq!(
        request(&addr, "GET", "/subjects", ""),
        (200, r#"["s-value","t-value"]"#.into())
    );
    assert_eq!(
        request(&addr, "POST", "/subjects/u-value/versions", schema),
        (200, r#"{"id":2}"#.into())
    );
    let (status, body) = request(&addr, "GET", "/subjects/t-value/versions/latest", "");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""id":2"#) && body.contains(r#""version":1"#),
        "{body}"
    );
    stop(child);
}

/// `--follow`: a second process on the same topic answers reads and forwards changes to the
/// writer, which announced the URL it listens on.
#[test]
fn registry_serve_follow_forwards_changes_to_the_writer() {
    let brokers = std::env::var("TRIBUTARY_KAFKA_BROKERS")
        .expect("TRIBUTARY_KAFKA_BROKERS is not set: scripts/services up and its env");
    let topic = format!(
        "_schemas_follow_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let kafka = ["--kafka-store", &brokers, "--kafka-topic", &topic];
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        kafka.iter().chain(extra).map(|a| a.into()).collect()
    };
    let writer_args = args(&[]);
    let follower_args = args(&["--follow"]);
    let writer_os: Vec<&std::ffi::OsStr> = writer_args.iter().map(|a| a.as_os_str()).collect();
    let follower_os: Vec<&std::ffi::OsStr> = follower_args.iter().map(|a| a.as_os_str()).collect();
    let (writer, w) = serve(&writer_os);
    let (follower, f) = serve(&follower_os);
    assert_eq!(
        request(
            &f,
            "POST",
            "/subjects/s-value/versions",
            "{\"schema\": \"\\\"string\\\"\"}"
        ),
        (200, r#"{"id":1}"#.into())
    );
    assert_eq!(
        request(&w, "GET", "/subjects", ""),
        (200, r#"["s-value"]"#.into())
    );
    assert_eq!(
        request(&f, "GET", "/schemas/ids/1", "").0,
        200,
        "the follower reads it from the topic"
    );
    stop(follower);
    stop(writer);
}
