"""Confluent's Python client (confluent-kafka with fastavro) on the other end of Tributary's
Kafka connectors, through a real broker (tansu) and the built-in schema registry.

Run by crates/kafka/tests/registry.rs:

    python schema_registry_kafka.py produce-avro BROKERS REGISTRY TOPIC N
        Produces N orders with AvroSerializer (topic name strategy): nulls, timestamps,
        dates, decimals, nested records, arrays. The values follow order(i) below, which the
        Rust test checks row by row.
    python schema_registry_kafka.py consume avro|json BROKERS REGISTRY TOPIC N
        Reads N messages with AvroDeserializer / JSONDeserializer (writer schema by id from
        the registry) and prints each value as one canonical JSON line: timestamps as
        microseconds since the epoch, dates as days, decimals as text, bytes as hex.

Any failure raises: the process exits non-zero with the traceback.
"""

import datetime as dt
import decimal
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

ORDER_SCHEMA = json.dumps({
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": ["null", "string"], "default": None},
        {"name": "amount", "type": "double"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": None},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "paid", "type": "boolean"},
        {"name": "address", "type": ["null", {
            "type": "record", "name": "Address",
            "fields": [
                {"name": "city", "type": "string"},
                {"name": "zip", "type": ["null", "int"], "default": None},
            ]}], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SENT"]}},
    ],
})

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def order(i):
    """The i-th order (the Rust test computes the same values)."""
    return {
        "id": i,
        "customer": None if i % 5 == 0 else f"customer-{i}",
        "amount": i * 1.5,
        "at": EPOCH + dt.timedelta(milliseconds=1_700_000_000_000 + i * 1001),
        "day": None if i % 4 == 0 else dt.date(2024, 1, 1) + dt.timedelta(days=i),
        "price": decimal.Decimal(i * 101 - 500) / 100,
        "paid": i % 2 == 0,
        "address": None if i % 7 == 0 else {
            "city": f"city-{i % 3}",
            "zip": None if i % 3 == 0 else 1000 + i,
        },
        "tags": [f"t{j}" for j in range(i % 3)],
        "status": ["NEW", "PAID", "SENT"][i % 3],
    }


def produce_avro(brokers, registry, topic, n):
    from confluent_kafka.schema_registry.avro import AvroSerializer

    sr = SchemaRegistryClient({"url": registry})
    ser = AvroSerializer(sr, ORDER_SCHEMA)
    ctx = SerializationContext(topic, MessageField.VALUE)
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    failures = []
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=ser(order(i), ctx),
                  on_delivery=lambda err, msg: err and failures.append(err))
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not failures, failures
    print(f"produced {n}")


def canon(v):
    if isinstance(v, dt.datetime):
        epoch = EPOCH if v.tzinfo else EPOCH.replace(tzinfo=None)
        return (v - epoch) // dt.timedelta(microseconds=1)
    if isinstance(v, dt.date):
        return (v - dt.date(1970, 1, 1)).days
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: canon(x) for k, x in v.items()}
    if isinstance(v, list):
        return [canon(x) for x in v]
    return v


def consume(kind, brokers, registry, topic, n):
    sr = SchemaRegistryClient({"url": registry})
    if kind == "avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        des = AvroDeserializer(sr)
    else:
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer
        # The writer schema comes from the registry by id; payloads are validated against it.
        des = JSONDeserializer(None, schema_registry_client=sr)
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"py-{topic}-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    ctx = SerializationContext(topic, MessageField.VALUE)
    got = []
    deadline = time.monotonic() + 90
    try:
        while len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} messages arrived"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(m.error())
            schema_id = int.from_bytes(m.value()[1:5], "big")
            got.append({"schema_id": schema_id, "value": canon(des(m.value(), ctx))})
    finally:
        c.close()
    for g in got:
        print(json.dumps(g, sort_keys=True))


def main():
    mode = sys.argv[1]
    if mode == "produce-avro":
        produce_avro(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
