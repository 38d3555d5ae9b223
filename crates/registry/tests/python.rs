//! Confluent's Python client (`confluent-kafka`: `SchemaRegistryClient`, the Avro, JSON Schema
//! and Protobuf serializers and deserializers) against the built-in registry, started here on
//! a free loopback port. The checks are in `python/confluent_client.py`; the interpreter is
//! the venv `scripts/services` installs (`TRIBUTARY_PYTHON`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Dir, Server};

fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        panic!("TRIBUTARY_PYTHON is not set: install the venv with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

async fn run(mode: &'static str) {
    let python = python();
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = server.url.clone();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/confluent_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(mode)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
    })
    .await
    .unwrap();
    server.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "confluent_client.py {mode} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("{mode}: ok")),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_avro_serializer_registers_evolves_and_reads_back() {
    run("avro").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_json_serializer_registers_evolves_and_reads_back() {
    run("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_protobuf_serializer_registers_evolves_and_reads_back() {
    run("protobuf").await;
}
