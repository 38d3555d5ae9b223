//! Schema-registry formats (`format: avro`, `format: json_schema`) against real components:
//! the tansu broker (`scripts/services`, `TRIBUTARY_KAFKA_BROKERS`), the built-in registry
//! started here on a free loopback port, and Confluent's own Python client
//! (`confluent-kafka` with fastavro, in the services venv: `TRIBUTARY_PYTHON`) running
//! `tests/python/schema_registry_kafka.py` on the other end. A missing service fails these
//! tests.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array,
    Int64Array, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use common::*;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::error::ConnectorError;
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};
use tributary_kafka::config::{RegistryConfig, ValueFormat};
use tributary_kafka::{KafkaSink, KafkaSinkConfig, KafkaSourceConfig};
use tributary_registry::{
    serve, MemoryStore, Registry, RegistryClient, RegistryClientConfig, ServerAuth,
};

/// The built-in registry on a free loopback port (memory store), stopped on drop.
struct RegistryServer {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start_registry() -> RegistryServer {
    start_registry_on(Box::new(MemoryStore)).await
}

/// The built-in registry on a free loopback port, with its state in `store`.
async fn start_registry_on(store: Box<dyn tributary_registry::RegistryStore>) -> RegistryServer {
    let registry = Arc::new(Registry::open(store).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve(
        listener,
        registry,
        ServerAuth::default(),
        async move {
            let _ = rx.await;
        },
    ));
    RegistryServer { url, _stop: tx }
}

fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        panic!("TRIBUTARY_PYTHON is not set: install the venv with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

/// Runs the Python side; its stdout.
async fn run_python(args: Vec<String>) -> String {
    let python = python();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/schema_registry_kafka.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "schema_registry_kafka.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Reads `n` messages of `topic` with Confluent's deserializer (`avro` or `json`): one
/// `{schema_id, value}` per message, in partition order.
async fn python_consume(kind: &str, registry: &str, topic: &str, n: usize) -> Vec<Value> {
    let out = run_python(vec![
        "consume".into(),
        kind.into(),
        brokers(),
        registry.into(),
        topic.into(),
        n.to_string(),
    ])
    .await;
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Produces `payloads` to `topic` as they are (no key), and waits until they are delivered.
fn send_raw(topic: &str, payloads: &[Vec<u8>]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for p in payloads {
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).payload(p))
            .unwrap();
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
}

/// A source that emits the given batches (one stream), then stops.
struct Batches(Vec<RecordBatch>);

#[async_trait::async_trait]
impl Source for Batches {
    fn describe(&self) -> String {
        "batches".into()
    }
    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        Ok(vec![])
    }
    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let pos = |n: usize| Position::encode(&json!({ "batch": n })).unwrap();
        for (i, data) in std::mem::take(&mut self.0).into_iter().enumerate() {
            let meta = BatchMeta::new("orders".into(), pos(i), pos(i + 1), 0);
            if ctx.emit(Batch { data, meta }).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn sink_config(topic: &str, format: ValueFormat, registry: &str) -> KafkaSinkConfig {
    let mut c = KafkaSinkConfig::new(brokers(), topic);
    c.format = format;
    let mut r = RegistryConfig::new(registry);
    r.record_name = Some("shop.Order".into());
    c.registry = Some(Box::new(r));
    c
}

fn source_config(topic: &str, registry: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(brokers(), vec![topic.to_string()]);
    c.group = Some(unique("avro-group"));
    c.stop_at_end = true;
    c.batch_wait = std::time::Duration::from_millis(50);
    c.format = ValueFormat::Avro;
    c.registry = Some(Box::new(RegistryConfig::new(registry)));
    c
}

async fn write(
    dir: &std::path::Path,
    name: &str,
    config: KafkaSinkConfig,
    batches: Vec<RecordBatch>,
) {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    produce(dir, name, Box::new(Batches(batches)), config, rows as u64).await;
}

async fn read(dir: &std::path::Path, name: &str, config: KafkaSourceConfig) -> RecordBatch {
    let out = consume(dir, name, config).await;
    let batches: Vec<RecordBatch> = out.lock().unwrap().iter().map(|b| b.data.clone()).collect();
    let schema = batches.last().expect("some batches").schema();
    // Earlier batches may have an older (narrower) schema: line them up by name.
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let cols: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| match b.column_by_name(f.name()) {
                    Some(c) => c.clone(),
                    None => arrow_array::new_null_array(f.data_type(), b.num_rows()),
                })
                .collect();
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        })
        .collect();
    arrow_select::concat::concat_batches(&schema, &aligned).unwrap()
}

// ---- (1) Confluent's AvroSerializer → the Kafka source ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_from_confluents_python_serializer_decodes_exactly_with_nulls_timestamps_and_nested_records(
) {
    const N: i64 = 60;
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("avro-in");
    create_topic(&topic, 1).await;
    run_python(vec![
        "produce-avro".into(),
        brokers(),
        registry.url.clone(),
        topic.clone(),
        N.to_string(),
    ])
    .await;

    let b = read(dir.path(), "avro-in", source_config(&topic, &registry.url)).await;
    assert_eq!(b.num_rows(), N as usize);
    let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
    let ids = col("id").as_primitive::<Int64Type>();
    let customer = col("customer").as_string::<i32>();
    let amount = col("amount").as_primitive::<Float64Type>();
    let at = col("at").as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        col("at").data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    let day = col("day").as_primitive::<Date32Type>();
    let price = col("price").as_primitive::<Decimal128Type>();
    assert_eq!(col("price").data_type(), &DataType::Decimal128(10, 2));
    let paid = col("paid").as_boolean();
    let address = col("address").as_struct();
    let city = address.column_by_name("city").unwrap().as_string::<i32>();
    let zip = address
        .column_by_name("zip")
        .unwrap()
        .as_primitive::<Int32Type>();
    let tags = col("tags").as_list::<i32>();
    let status = col("status").as_string::<i32>();
    for row in 0..b.num_rows() {
        let i = ids.value(row);
        assert_eq!(i, row as i64, "in order");
        assert_eq!(customer.is_null(row), i % 5 == 0, "customer {i}");
        if i % 5 != 0 {
            assert_eq!(customer.value(row), format!("customer-{i}"));
        }
        assert_eq!(amount.value(row), i as f64 * 1.5);
        assert_eq!(at.value(row), 1_700_000_000_000 + i * 1001);
        // 2024-01-01 is day 19723.
        assert_eq!(day.is_null(row), i % 4 == 0, "day {i}");
        if i % 4 != 0 {
            assert_eq!(day.value(row), 19723 + i as i32);
        }
        assert_eq!(price.value(row), (i * 101 - 500) as i128);
        assert_eq!(paid.value(row), i % 2 == 0);
        assert_eq!(address.is_null(row), i % 7 == 0, "address {i}");
        if i % 7 != 0 {
            assert_eq!(city.value(row), format!("city-{}", i % 3));
            assert_eq!(zip.is_null(row), i % 3 == 0);
            if i % 3 != 0 {
                assert_eq!(zip.value(row), 1000 + i as i32);
            }
        }
        let t = tags.value(row);
        let t = t.as_string::<i32>();
        let expected: Vec<String> = (0..i % 3).map(|j| format!("t{j}")).collect();
        assert_eq!(
            t.iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(status.value(row), ["NEW", "PAID", "SENT"][(i % 3) as usize]);
    }
}

// ---- (2) the Kafka sink → Confluent's deserializers ----

fn orders(from: i64, to: i64) -> RecordBatch {
    let ids: Vec<i64> = (from..to).collect();
    let address_fields = Fields::from(vec![
        Field::new("city", DataType::Utf8, false),
        Field::new("zip", DataType::Int32, true),
    ]);
    let mut tags = ListBuilder::new(StringBuilder::new());
    for i in &ids {
        for j in 0..i % 3 {
            tags.values().append_value(format!("t{j}"));
        }
        tags.append(true);
    }
    let address = StructArray::new(
        address_fields.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("city-{}", i % 3)),
            )),
            Arc::new(Int32Array::from_iter(
                ids.iter().map(|i| (i % 3 != 0).then_some(1000 + *i as i32)),
            )),
        ],
        Some(ids.iter().map(|i| i % 7 != 0).collect::<Vec<_>>().into()),
    );
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("day", DataType::Date32, true),
        Field::new("price", DataType::Decimal128(12, 3), false),
        Field::new("paid", DataType::Boolean, false),
        Field::new("address", DataType::Struct(address_fields), true),
        Field::new(
            "tags",
            DataType::List(Field::new("item", DataType::Utf8, true).into()),
            false,
        ),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter(
                ids.iter()
                    .map(|i| (i % 5 != 0).then(|| format!("customer-{i}"))),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 * 1.5),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    ids.iter()
                        .map(|i| (i % 6 != 0).then_some(1_700_000_000_000_123 + i * 1_000_001)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from_iter(
                ids.iter()
                    .map(|i| (i % 4 != 0).then_some(19723 + *i as i32)),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(ids.iter().map(|i| (*i as i128) * 1001 - 7000))
                    .with_precision_and_scale(12, 3)
                    .unwrap(),
            ),
            Arc::new(BooleanArray::from_iter(
                ids.iter().map(|i| Some(i % 2 == 0)),
            )),
            Arc::new(address),
            Arc::new(tags.finish()),
        ],
    )
    .unwrap()
}

/// Order `i` as the Python side prints it (`canon`): timestamps in µs, dates in days,
/// decimals as text.
fn expected_order(i: i64, json_schema: bool) -> Value {
    let price = (i as i128) * 1001 - 7000;
    let sign = if price < 0 { "-" } else { "" };
    let price = format!("{sign}{}.{:03}", price.abs() / 1000, price.abs() % 1000);
    let mut v = json!({
        "id": i,
        "customer": (i % 5 != 0).then(|| format!("customer-{i}")),
        "amount": i as f64 * 1.5,
        "paid": i % 2 == 0,
        "address": (i % 7 != 0).then(|| json!({
            "city": format!("city-{}", i % 3),
            "zip": (i % 3 != 0).then_some(1000 + i),
        })),
        "tags": (0..i % 3).map(|j| format!("t{j}")).collect::<Vec<_>>(),
    });
    if json_schema {
        // JSON leaves nulls out (explicit_nulls: false); the rest as arrow-json writes it.
        let o = v.as_object_mut().unwrap();
        o.retain(|_, x| !x.is_null());
        if let Some(a) = o.get_mut("address").and_then(Value::as_object_mut) {
            a.retain(|_, x| !x.is_null());
        }
    } else {
        v["at"] = json!((i % 6 != 0).then_some(1_700_000_000_000_123 + i * 1_000_001));
        v["day"] = json!((i % 4 != 0).then_some(19723 + i));
        v["price"] = json!(price);
    }
    v
}

/// Writes `n` orders (in two batches) with the sink in `format` to a new topic and reads them
/// back with Confluent's `kind` deserializer: the registry, the state folder, the topic and
/// what Python printed.
async fn orders_through_python(
    format: ValueFormat,
    kind: &str,
    n: i64,
) -> (RegistryServer, tempfile::TempDir, String, Vec<Value>) {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique(&format!("{kind}-out"));
    create_topic(&topic, 1).await;
    let config = sink_config(&topic, format, &registry.url);
    write(
        dir.path(),
        "orders-out",
        config,
        vec![orders(0, n / 2), orders(n / 2, n)],
    )
    .await;
    let got = python_consume(kind, &registry.url, &topic, n as usize).await;
    assert_eq!(got.len(), n as usize);
    (registry, dir, topic, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_avro_reads_back_exactly_with_confluents_python_avro_deserializer() {
    let (registry, _dir, topic, got) = orders_through_python(ValueFormat::Avro, "avro", 50).await;
    let id = got[0]["schema_id"].clone();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g["schema_id"], id, "one schema for one Arrow schema");
        assert_eq!(g["value"], expected_order(i as i64, false), "order {i}");
    }
    let client = RegistryClient::new(RegistryClientConfig::new(&registry.url)).unwrap();
    assert_eq!(
        client.versions(&format!("{topic}-value")).await.unwrap(),
        vec![1]
    );
    let schema = client
        .schema_by_id(id.as_u64().unwrap() as u32)
        .await
        .unwrap();
    let avsc: Value = serde_json::from_str(&schema.schema).unwrap();
    assert_eq!(avsc["name"], "Order");
    assert_eq!(avsc["namespace"], "shop");
    assert_eq!(avsc["fields"][1]["type"], json!(["null", "string"]));
    assert_eq!(
        avsc["fields"][3]["type"],
        json!(["null", {"type": "long", "logicalType": "timestamp-micros"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_json_schema_reads_back_exactly_with_confluents_python_json_deserializer() {
    const N: i64 = 30;
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("json-out");
    create_topic(&topic, 1).await;
    // Columns JSON carries as they are (timestamps and decimals are text in arrow-json).
    let batch = orders(0, N);
    let keep = ["id", "customer", "amount", "paid", "address", "tags"];
    let indexes: Vec<usize> = keep
        .iter()
        .map(|k| batch.schema().index_of(k).unwrap())
        .collect();
    let batch = batch.project(&indexes).unwrap();
    let config = sink_config(&topic, ValueFormat::JsonSchema, &registry.url);
    write(dir.path(), "json-out", config, vec![batch]).await;

    let got = python_consume("json", &registry.url, &topic, N as usize).await;
    assert_eq!(got.len(), N as usize);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g["value"], expected_order(i as i64, true), "order {i}");
    }
    let client = RegistryClient::new(RegistryClientConfig::new(&registry.url)).unwrap();
    let id = got[0]["schema_id"].as_u64().unwrap() as u32;
    let schema = client.schema_by_id(id).await.unwrap();
    assert_eq!(schema.schema_type.as_str(), "JSON");
}

// ---- (3) schema evolution ----

fn people(ids: &[i64], note: Option<&str>, id_as_text: bool) -> RecordBatch {
    let mut fields = vec![
        if id_as_text {
            Field::new("id", DataType::Utf8, false)
        } else {
            Field::new("id", DataType::Int64, false)
        },
        Field::new("name", DataType::Utf8, true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        if id_as_text {
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| i.to_string()),
            ))
        } else {
            Arc::new(Int64Array::from(ids.to_vec()))
        },
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|i| format!("p{i}")),
        )),
    ];
    if let Some(n) = note {
        fields.push(Field::new("note", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(vec![Some(n); ids.len()])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_nullable_column_registers_version_2_and_an_incompatible_change_stops_with_the_registrys_reason(
) {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("avro-evolve");
    create_topic(&topic, 1).await;
    let config = || sink_config(&topic, ValueFormat::Avro, &registry.url);
    write(
        dir.path(),
        "v1",
        config(),
        vec![people(&[1, 2, 3], None, false)],
    )
    .await;
    write(
        dir.path(),
        "v2",
        config(),
        vec![people(&[4, 5], Some("new"), false)],
    )
    .await;

    let client = RegistryClient::new(RegistryClientConfig::new(&registry.url)).unwrap();
    let subject = format!("{topic}-value");
    assert_eq!(client.versions(&subject).await.unwrap(), vec![1, 2]);

    // Confluent's deserializer reads both versions, each with its writer schema.
    let got = python_consume("avro", &registry.url, &topic, 5).await;
    let ids: Vec<u64> = got
        .iter()
        .map(|g| g["schema_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert_eq!(ids[3], ids[4]);
    assert_eq!(got[0]["value"], json!({"id": 1, "name": "p1"}));
    assert_eq!(
        got[4]["value"],
        json!({"id": 5, "name": "p5", "note": "new"})
    );

    // Tributary's source follows the ids: the stream gains `note` (evolve), null before.
    let b = read(
        dir.path(),
        "read-evolved",
        source_config(&topic, &registry.url),
    )
    .await;
    assert_eq!(b.num_rows(), 5);
    let note = b.column_by_name("note").unwrap().as_string::<i32>();
    assert_eq!(
        note.iter().collect::<Vec<_>>(),
        vec![None, None, None, Some("new"), Some("new")]
    );
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![1, 2, 3, 4, 5]
    );

    // id long → string is refused under BACKWARD (the default): the run stops, saying why.
    let failure = pipeline(
        dir.path(),
        "v3",
        Box::new(Batches(vec![people(&[6], Some("x"), true)])),
        Box::new(KafkaSink::new(config()).unwrap()),
        |_| {},
    )
    .run()
    .await
    .unwrap_err();
    let message = failure.to_string();
    assert!(
        message.contains("refused the new value schema"),
        "{message}"
    );
    assert!(message.contains(&subject), "{message}");
    assert!(message.contains("TYPE_MISMATCH"), "{message}");
    assert!(message.contains("BACKWARD"), "{message}");
    assert_eq!(client.versions(&subject).await.unwrap(), vec![1, 2]);
    assert_eq!(failure.summary.rows_out, 0);
}

// ---- (4) undecodable records ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_avro_records_are_dead_lettered_with_the_reason_and_their_offset() {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("avro-bad");
    create_topic(&topic, 1).await;
    let config = sink_config(&topic, ValueFormat::Avro, &registry.url);
    write(
        dir.path(),
        "good",
        config,
        vec![people(&[1, 2], None, false)],
    )
    .await;
    let good = read_all(&topic, 1);
    let good_message = good[0].3.clone();

    // Offsets 2.. : bad magic byte, unknown id, truncated payload, empty, then a good one.
    let mut truncated = good_message.clone();
    truncated.truncate(good_message.len() - 2);
    let mut unknown_id = vec![0, 0, 0, 0x7f, 0x7f];
    unknown_id.extend_from_slice(&good_message[5..]);
    let bad: Vec<Vec<u8>> = vec![
        br#"{"id": 3}"#.to_vec(),
        unknown_id,
        truncated,
        vec![0, 0],
        good_message.clone(),
    ];
    send_raw(&topic, &bad);

    let b = read(dir.path(), "bad", source_config(&topic, &registry.url)).await;
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![1, 2, 1]
    );
    let dead = NdjsonDeadLetter::read_all(dir.path().join("bad.dlq.ndjson")).unwrap();
    let got: Vec<(String, String)> = dead
        .iter()
        .map(|d| (d.location.clone().unwrap(), d.message.clone()))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    for (k, (offset, reason)) in [
        (2, "bad magic byte 123"),
        (3, "schema id 32639 is unknown to the schema registry"),
        (4, "truncated"),
        (5, "truncated header"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(got[k].0, format!("{topic}/0@{offset}"));
        assert!(
            got[k].1.contains(reason),
            "{:?} should say {reason}",
            got[k]
        );
        assert!(
            got[k].1.starts_with(&format!("{topic}/0@{offset}: ")),
            "{:?}",
            got[k]
        );
    }
    assert_eq!(dead[0].raw.as_deref(), Some(r#"{"id": 3}"#));
    // The original bytes travel with the dead letter (as text when they are UTF-8).
    let raw = |d: &tributary_core::dead_letter::DeadLetterRecord| match (&d.raw, &d.raw_hex) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(h)) => (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect(),
        _ => Vec::new(),
    };
    for (d, original) in dead.iter().zip(&bad) {
        assert_eq!(&raw(d), original);
    }
}

// ---- (5) Protobuf ----

/// The i-th order of `proto_order(i)` in schema_registry_kafka.py.
struct ProtoOrder {
    id: i64,
    customer: Option<String>,
    amount: f64,
    at_micros: Option<i64>,
    paid: bool,
    address: Option<(String, Option<i32>)>,
    tags: Vec<String>,
    status: &'static str,
    counts: Vec<(String, i32)>,
    delta: i32,
    blob: [u8; 2],
    scores: Vec<i64>,
}

fn proto_order(i: i64) -> ProtoOrder {
    ProtoOrder {
        id: i * 1_000_000_007 - 3,
        customer: (i % 5 != 0).then(|| format!("customer-{i}")),
        amount: i as f64 * 0.5,
        at_micros: (i % 6 != 0).then_some(1_700_000_000_000_000 + i * 1_000_001),
        paid: i % 2 == 1,
        address: (i % 7 != 0).then(|| {
            (
                format!("city-{}", i % 3),
                (i % 2 == 1).then_some(1000 + i as i32),
            )
        }),
        tags: (0..i % 4).map(|j| format!("t{j}")).collect(),
        status: ["NEW", "PAID", "SENT"][(i % 3) as usize],
        counts: (0..i % 3)
            .map(|j| (format!("k{j}"), (j * i) as i32))
            .collect(),
        delta: -(i as i32),
        blob: [(i % 256) as u8, (255 - i % 256) as u8],
        scores: [i, -i, (1 << 40) + i][..(i % 4) as usize].to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_from_confluents_python_serializer_decodes_every_field_typed() {
    use arrow_array::types::{Float64Type, TimestampNanosecondType};
    const N: i64 = 40;
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("proto-in");
    create_topic(&topic, 1).await;
    run_python(vec![
        "produce-protobuf".into(),
        brokers(),
        registry.url.clone(),
        topic.clone(),
        N.to_string(),
    ])
    .await;

    let mut config = source_config(&topic, &registry.url);
    config.format = ValueFormat::Protobuf;
    let b = read(dir.path(), "proto-in", config).await;
    assert_eq!(b.num_rows(), N as usize);
    let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
    assert_eq!(
        col("at").data_type(),
        &DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
    );
    assert!(
        matches!(col("counts").data_type(), DataType::Map(..)),
        "{}",
        col("counts").data_type()
    );
    // Absent plain proto3 scalars read as their defaults (0, false, the enum's zero value).
    for implicit in ["id", "amount", "paid", "status", "delta", "blob"] {
        assert_eq!(col(implicit).null_count(), 0, "{implicit}");
    }
    let id = col("id").as_primitive::<Int64Type>();
    let customer = col("customer").as_string::<i32>();
    let amount = col("amount").as_primitive::<Float64Type>();
    let at = col("at").as_primitive::<TimestampNanosecondType>();
    let paid = col("paid").as_boolean();
    let address = col("address").as_struct();
    let city = address.column_by_name("city").unwrap().as_string::<i32>();
    let zip = address
        .column_by_name("zip")
        .unwrap()
        .as_primitive::<Int32Type>();
    let tags = col("tags").as_list::<i32>();
    let status = col("status").as_string::<i32>();
    let counts = col("counts").as_map();
    let delta = col("delta").as_primitive::<Int32Type>();
    let blob = col("blob").as_string::<i32>();
    let scores = col("scores").as_list::<i32>();
    for row in 0..b.num_rows() {
        let o = proto_order(row as i64);
        assert_eq!(id.value(row), o.id, "row {row}");
        assert_eq!(
            customer.is_null(row),
            o.customer.is_none(),
            "customer {row}"
        );
        if let Some(c) = &o.customer {
            assert_eq!(customer.value(row), c);
        }
        assert_eq!(amount.value(row), o.amount);
        assert_eq!(at.is_null(row), o.at_micros.is_none(), "at {row}");
        if let Some(us) = o.at_micros {
            assert_eq!(at.value(row), us * 1000);
        }
        assert_eq!(paid.value(row), o.paid);
        assert_eq!(address.is_null(row), o.address.is_none(), "address {row}");
        if let Some((c, z)) = &o.address {
            assert_eq!(city.value(row), c);
            assert_eq!(zip.is_null(row), z.is_none(), "zip {row}");
            if let Some(z) = z {
                assert_eq!(zip.value(row), *z);
            }
        }
        let t = tags.value(row);
        let t: Vec<&str> = t.as_string::<i32>().iter().map(Option::unwrap).collect();
        assert_eq!(t, o.tags);
        assert_eq!(status.value(row), o.status);
        let m = counts.value(row);
        let keys = m.column(0).as_string::<i32>();
        let values = m.column(1).as_primitive::<Int32Type>();
        let mut got: Vec<(String, i32)> = (0..m.len())
            .map(|k| (keys.value(k).to_string(), values.value(k)))
            .collect();
        got.sort();
        assert_eq!(got, o.counts, "counts {row}");
        assert_eq!(delta.value(row), o.delta);
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(blob.value(row))
                .unwrap(),
            o.blob
        );
        let s = scores.value(row);
        assert_eq!(s.as_primitive::<Int64Type>().values().to_vec(), o.scores);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_protobuf_reads_back_exactly_with_confluents_python_protobuf_deserializer() {
    const N: i64 = 40;
    let (registry, dir, topic, got) =
        orders_through_python(ValueFormat::Protobuf, "protobuf", N).await;
    for (i, g) in got.iter().enumerate() {
        let i = i as i64;
        let mut want = expected_order(i, false);
        // Dates and decimals are text in the derived .proto.
        want["day"] = json!((i % 4 != 0).then(|| date_text(19723 + i)));
        assert_eq!(g["value"], want, "order {i}");
    }
    let client = RegistryClient::new(RegistryClientConfig::new(&registry.url)).unwrap();
    let subject = format!("{topic}-value");
    assert_eq!(client.versions(&subject).await.unwrap(), vec![1]);
    let id = got[0]["schema_id"].as_u64().unwrap() as u32;
    let schema = client.schema_by_id(id).await.unwrap();
    assert_eq!(schema.schema_type.as_str(), "PROTOBUF");
    for line in [
        "package shop;",
        "message Order {",
        "optional string customer = 2;",
        "google.protobuf.Timestamp at = 4;",
        "repeated string tags = 9;",
    ] {
        assert!(schema.schema.contains(line), "{line} in\n{}", schema.schema);
    }

    // And Tributary's own source reads the same messages back.
    let mut source = source_config(&topic, &registry.url);
    source.format = ValueFormat::Protobuf;
    let b = read(dir.path(), "proto-back", source).await;
    assert_eq!(b.num_rows(), N as usize);
    let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    assert_eq!(ids.values().to_vec(), (0..N).collect::<Vec<_>>());
}

/// Days since the epoch as `YYYY-MM-DD`.
fn date_text(days: i64) -> String {
    arrow_array::temporal_conversions::date32_to_datetime(days as i32)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_records_are_dead_lettered_and_the_rest_flow() {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("proto-bad");
    create_topic(&topic, 1).await;
    let config = sink_config(&topic, ValueFormat::Protobuf, &registry.url);
    write(
        dir.path(),
        "good",
        config,
        vec![people(&[1, 2], None, false)],
    )
    .await;
    let good = read_all(&topic, 1)[1].3.clone();

    // Offsets 2.. : the message cut short, message indexes naming no message, then a good one.
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 1);
    let mut bad_index = good[..5].to_vec();
    bad_index.extend_from_slice(&[2, 8]);
    bad_index.extend_from_slice(&good[6..]);
    send_raw(&topic, &[truncated, bad_index, good]);

    let mut source = source_config(&topic, &registry.url);
    source.format = ValueFormat::Protobuf;
    let b = read(dir.path(), "bad", source).await;
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![1, 2, 2]
    );
    let dead = NdjsonDeadLetter::read_all(dir.path().join("bad.dlq.ndjson")).unwrap();
    let got: Vec<(String, String)> = dead
        .iter()
        .map(|d| (d.location.clone().unwrap(), d.message.clone()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, format!("{topic}/0@2"));
    assert!(
        got[0].1.contains("not a Protobuf message of schema id"),
        "{got:?}"
    );
    assert!(got[0].1.contains("runs past the end"), "{got:?}");
    assert_eq!(got[1].0, format!("{topic}/0@3"));
    assert!(got[1].1.contains("no message at indexes [4]"), "{got:?}");
}

// ---- (6) JSON Schema validation ----

/// Rows that break the configured JSON Schema are dead-lettered by the sink (the rest go
/// out and Confluent's JSONDeserializer, which validates too, reads them); records that break
/// their writer schema are dead-lettered by the source, with the JSON pointer and the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_payloads_are_validated_on_write_and_on_read() {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("json-valid");
    create_topic(&topic, 1).await;
    let schema_file = dir.path().join("person.json");
    std::fs::write(
        &schema_file,
        r#"{"$schema": "http://json-schema.org/draft-07/schema#", "title": "Person",
            "type": "object", "required": ["id"], "additionalProperties": false,
            "properties": {"id": {"type": "integer", "minimum": 2},
                           "name": {"type": "string", "pattern": "^p[0-9]+$"}}}"#,
    )
    .unwrap();
    let mut config = sink_config(&topic, ValueFormat::JsonSchema, &registry.url);
    config.registry.as_mut().unwrap().schema = Some(schema_file);
    let summary = pipeline(
        dir.path(),
        "json-valid",
        Box::new(Batches(vec![people(&[1, 2, 3], None, false)])),
        Box::new(KafkaSink::new(config).unwrap()),
        |_| {},
    )
    .run()
    .await
    .unwrap();
    assert_eq!((summary.rows_out, summary.dead_lettered), (2, 1));
    let dead = NdjsonDeadLetter::read_all(dir.path().join("json-valid.dlq.ndjson")).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .message
            .contains("does not match the JSON Schema (id 1): /id: 1 is less than the minimum 2"),
        "{}",
        dead[0].message
    );
    let got = python_consume("json", &registry.url, &topic, 2).await;
    assert_eq!(got[0]["value"], json!({"id": 2, "name": "p2"}));
    assert_eq!(got[1]["value"], json!({"id": 3, "name": "p3"}));

    // Records framed with that schema's id that break it, between good ones.
    let good = read_all(&topic, 1)[0].3.clone();
    let framed = |json: &str| {
        let mut m = good[..5].to_vec();
        m.extend_from_slice(json.as_bytes());
        m
    };
    send_raw(
        &topic,
        &[
            framed(r#"{"id": "7"}"#),
            framed(r#"{"id": 8, "extra": true}"#),
            framed(r#"{"id": 9, "name": "q9"}"#),
            good.clone(),
        ],
    );
    let mut source = source_config(&topic, &registry.url);
    source.format = ValueFormat::JsonSchema;
    let b = read(dir.path(), "json-read", source).await;
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![2, 3, 2]
    );
    let dead = NdjsonDeadLetter::read_all(dir.path().join("json-read.dlq.ndjson")).unwrap();
    let reasons: Vec<&str> = dead.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for (k, why) in [
        "/id: expected integer, found a string",
        "/extra: a property the schema does not allow",
        "/name: \"q9\" does not match the pattern",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            reasons[k].starts_with(&format!("{topic}/0@{}: ", k + 2))
                && reasons[k].contains("does not match its JSON Schema (schema id 1)")
                && reasons[k].contains(why),
            "{:?} should say {why}",
            reasons[k]
        );
    }
}

// ---- (7) the registry's state on a Kafka topic ----

fn avro_record(name: &str, fields: &str) -> tributary_registry::NewSchema {
    tributary_registry::NewSchema {
        schema: format!(r#"{{"type":"record","name":"{name}","fields":[{fields}]}}"#),
        ..Default::default()
    }
}

/// A registry whose state is a compacted Kafka topic gives the same ids, versions and levels
/// after a restart, never gives a permanently deleted schema's id to other content, and a
/// process that another one took the topic over from no longer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_a_kafka_topic_keeps_ids_versions_and_levels_across_restarts() {
    use tributary_kafka::registry_store::{KafkaRegistryStore, Role};
    use tributary_registry::Compatibility;
    let topic = unique("_schemas");
    let open = || {
        let topic = topic.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                KafkaRegistryStore::open(&brokers(), &topic, Role::Writer { url: None })
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    let a = avro_record("A", r#"{"name":"x","type":"long"}"#);
    let a2 = avro_record(
        "A",
        r#"{"name":"x","type":"long"},{"name":"y","type":"string","default":""}"#,
    );
    let b = avro_record("B", r#"{"name":"z","type":"int"}"#);
    let c = avro_record("C", r#"{"name":"w","type":"double"}"#);

    let first = start_registry_on(Box::new(open().await)).await;
    let client = RegistryClient::new(RegistryClientConfig::new(&first.url)).unwrap();
    assert_eq!(client.register("s1", &a).await.unwrap(), 1);
    assert_eq!(client.register("s1", &a2).await.unwrap(), 2);
    assert_eq!(client.register("s2", &b).await.unwrap(), 3);
    client
        .set_compatibility(Some("s1"), Compatibility::Full)
        .await
        .unwrap();
    client
        .set_compatibility(None, Compatibility::Forward)
        .await
        .unwrap();
    client.delete_subject("s2", false).await.unwrap();
    client.delete_subject("s2", true).await.unwrap();
    drop(first);

    // A new process on the same topic.
    let second = start_registry_on(Box::new(open().await)).await;
    let client = RegistryClient::new(RegistryClientConfig::new(&second.url)).unwrap();
    assert_eq!(client.subjects(true).await.unwrap(), vec!["s1".to_string()]);
    assert_eq!(client.versions("s1").await.unwrap(), vec![1, 2]);
    let found = client.lookup("s1", &a2).await.unwrap();
    assert_eq!((found.id, found.version), (2, 2));
    assert_eq!(
        client.compatibility(Some("s1")).await.unwrap(),
        Compatibility::Full
    );
    assert_eq!(
        client.compatibility(None).await.unwrap(),
        Compatibility::Forward
    );
    // Id 3 went to B, deleted for good: new content gets 4; known content keeps its id.
    assert_eq!(client.register("s3", &c).await.unwrap(), 4);
    assert_eq!(client.register("s4", &a).await.unwrap(), 1);

    // Another process takes the topic over: this one no longer writes; it would forward
    // changes to the new writer, which announced no URL here, so it says so (a 500, which
    // clients retry: once is enough here).
    let _third = open().await;
    let mut once = RegistryClientConfig::new(&second.url);
    once.retry.max_attempts = 1;
    let refused = RegistryClient::new(once)
        .unwrap()
        .register("s5", &avro_record("D", r#"{"name":"v","type":"long"}"#))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("announced no URL to forward changes to"),
        "{refused}"
    );
    assert_eq!(client.versions("s3").await.unwrap(), vec![1]);
}

/// A registry process on the topic: the writer (announcing its URL) or a follower.
async fn start_kafka_registry(topic: &str, follow: bool) -> RegistryServer {
    use tributary_kafka::registry_store::{KafkaRegistryStore, Role};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let role = if follow {
        Role::Follower
    } else {
        Role::Writer {
            url: Some(url.clone()),
        }
    };
    let topic = topic.to_string();
    let store =
        tokio::task::spawn_blocking(move || KafkaRegistryStore::open(&brokers(), &topic, role))
            .await
            .unwrap()
            .unwrap();
    let registry = Arc::new(Registry::open(Box::new(store)).unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve(
        listener,
        registry,
        ServerAuth::default(),
        async move {
            let _ = rx.await;
        },
    ));
    RegistryServer { url, _stop: tx }
}

/// Several processes share one registry through the topic: a follower answers reads with what
/// the writer wrote, forwards changes (and the writer's refusals) to it, and follows a new
/// writer when the old one is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_answer_reads_from_the_topic_and_forward_changes_to_the_writer() {
    use tributary_registry::Compatibility;
    let topic = unique("_schemas_shared");
    let writer = start_kafka_registry(&topic, false).await;
    let follower = start_kafka_registry(&topic, true).await;
    let w = RegistryClient::new(RegistryClientConfig::new(&writer.url)).unwrap();
    let mut once = RegistryClientConfig::new(&follower.url);
    once.retry.max_attempts = 1;
    let f = RegistryClient::new(once).unwrap();
    let a = avro_record("A", r#"{"name":"x","type":"long"}"#);
    let b = avro_record("B", r#"{"name":"z","type":"int"}"#);

    assert_eq!(f.register("s1", &a).await.unwrap(), 1, "forwarded");
    assert_eq!(w.versions("s1").await.unwrap(), vec![1]);
    assert_eq!(w.register("s2", &b).await.unwrap(), 2);
    assert_eq!(
        f.versions("s2").await.unwrap(),
        vec![1],
        "read from the topic"
    );
    let got: Value = serde_json::from_str(&f.schema_by_id(2).await.unwrap().schema).unwrap();
    assert_eq!(got, serde_json::from_str::<Value>(&b.schema).unwrap());
    f.set_compatibility(Some("s1"), Compatibility::Full)
        .await
        .unwrap();
    assert_eq!(
        w.compatibility(Some("s1")).await.unwrap(),
        Compatibility::Full
    );
    // The writer's refusal comes back through the follower as it is.
    let refused = f
        .register("s1", &avro_record("A", r#"{"name":"x","type":"string"}"#))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("409"), "{refused}");

    // The writer is replaced: the follower forwards to the new one.
    drop(writer);
    let _writer2 = start_kafka_registry(&topic, false).await;
    let c = avro_record("C", r#"{"name":"w","type":"double"}"#);
    assert_eq!(f.register("s3", &c).await.unwrap(), 3);
    assert_eq!(f.subjects(false).await.unwrap(), vec!["s1", "s2", "s3"]);
}

/// Protobuf evolution: a new nullable column registers version 2 of the `.proto` (a field
/// added: compatible under BACKWARD), and the source follows the ids, the stream gaining the
/// column (null for the earlier records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_schema_versions_are_registered_and_followed_by_the_source() {
    let registry = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("proto-evolve");
    create_topic(&topic, 1).await;
    let config = || sink_config(&topic, ValueFormat::Protobuf, &registry.url);
    write(
        dir.path(),
        "v1",
        config(),
        vec![people(&[1, 2], None, false)],
    )
    .await;
    write(
        dir.path(),
        "v2",
        config(),
        vec![people(&[3], Some("new"), false)],
    )
    .await;
    let client = RegistryClient::new(RegistryClientConfig::new(&registry.url)).unwrap();
    assert_eq!(
        client.versions(&format!("{topic}-value")).await.unwrap(),
        vec![1, 2]
    );
    let mut source = source_config(&topic, &registry.url);
    source.format = ValueFormat::Protobuf;
    let b = read(dir.path(), "read", source).await;
    let note = b.column_by_name("note").unwrap().as_string::<i32>();
    assert_eq!(
        note.iter().collect::<Vec<_>>(),
        vec![None, None, Some("new")]
    );
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec(),
        vec![1, 2, 3]
    );
}
