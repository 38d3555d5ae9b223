"""Confluent's Python client (confluent-kafka with fastavro) on the other end of Tributary's
Kafka connectors, through a real broker (tansu) and the built-in schema registry.

Run by crates/kafka/tests/registry.rs:

    python schema_registry_kafka.py produce-avro BROKERS REGISTRY TOPIC N
        Produces N orders with AvroSerializer (topic name strategy): nulls, timestamps,
        dates, decimals, nested records, arrays. The values follow order(i) below, which the
        Rust test checks row by row.
    python schema_registry_kafka.py produce-protobuf BROKERS REGISTRY TOPIC N
        Produces N orders with ProtobufSerializer from ORDER_PROTO (compiled here with
        grpcio-tools' protoc): optional and implicit fields, a Timestamp, a nested message,
        an enum, repeated and packed fields, a map, sint32 and bytes; values follow
        proto_order(i).
    python schema_registry_kafka.py consume avro|json|protobuf BROKERS REGISTRY TOPIC N
        Reads N messages with AvroDeserializer / JSONDeserializer (writer schema by id from
        the registry) / ProtobufDeserializer (its message class compiled from the .proto the
        subject TOPIC-value holds, as registered by Tributary) and prints each value as one
        canonical JSON line: timestamps as microseconds since the epoch, dates as days,
        decimals as text, bytes as hex; Protobuf fields with presence that are absent as null.

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


ORDER_PROTO = """
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";

message Order {
  int64 id = 1;
  optional string customer = 2;
  double amount = 3;
  google.protobuf.Timestamp at = 4;
  bool paid = 5;
  Address address = 6;
  repeated string tags = 7;
  Status status = 8;
  map<string, int32> counts = 9;
  sint32 delta = 10;
  bytes blob = 11;
  repeated int64 scores = 12;

  message Address {
    string city = 1;
    optional int32 zip = 2;
  }
  enum Status {
    NEW = 0;
    PAID = 1;
    SENT = 2;
  }
}
"""


def compile_proto(text, name):
    """Compiles .proto text with protoc (grpcio-tools) and imports the generated module."""
    import importlib
    import os
    import tempfile

    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    with open(os.path.join(out, f"{name}.proto"), "w") as f:
        f.write(text)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{out}", f"-I{well_known}", f"--python_out={out}",
                      os.path.join(out, f"{name}.proto")])
    assert rc == 0, f"protoc failed on:\n{text}"
    sys.path.insert(0, out)
    return importlib.import_module(f"{name}_pb2")


def proto_order(i):
    """The i-th Protobuf order as keyword arguments (the Rust test computes the same)."""
    v = {
        "id": i * 1_000_000_007 - 3,
        "amount": i * 0.5,
        "paid": i % 2 == 1,
        "tags": [f"t{j}" for j in range(i % 4)],
        "status": i % 3,
        "counts": {f"k{j}": j * i for j in range(i % 3)},
        "delta": -i,
        "blob": bytes([i % 256, 255 - i % 256]),
        "scores": [i, -i, 2 ** 40 + i][: i % 4],
    }
    if i % 5 != 0:
        v["customer"] = f"customer-{i}"
    if i % 6 != 0:
        v["at"] = 1_700_000_000_000_000 + i * 1_000_001  # µs
    if i % 7 != 0:
        v["address"] = {"city": f"city-{i % 3}", "zip": 1000 + i} if i % 2 else {"city": f"city-{i % 3}"}
    return v


def produce_protobuf(brokers, registry, topic, n):
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    pb = compile_proto(ORDER_PROTO, "order_in")
    sr = SchemaRegistryClient({"url": registry})
    ser = ProtobufSerializer(pb.Order, sr, {"use.deprecated.format": False})
    ctx = SerializationContext(topic, MessageField.VALUE)
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    failures = []
    for i in range(n):
        v = proto_order(i)
        m = pb.Order()
        for k in ("id", "customer", "amount", "paid", "status", "delta", "blob"):
            if k in v:
                setattr(m, k, v[k])
        if "at" in v:
            m.at.FromMicroseconds(v["at"])
        if "address" in v:
            m.address.city = v["address"]["city"]
            if "zip" in v["address"]:
                m.address.zip = v["address"]["zip"]
        m.tags.extend(v["tags"])
        m.scores.extend(v["scores"])
        for k, x in v["counts"].items():
            m.counts[k] = x
        p.produce(topic, key=str(i).encode(), value=ser(m, ctx),
                  on_delivery=lambda err, msg: err and failures.append(err))
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not failures, failures
    print(f"produced {n}")


def message_to_canon(m):
    """Every declared field of a Protobuf message: absent fields with presence as None."""
    out = {}
    for f in m.DESCRIPTOR.fields:
        v = getattr(m, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            out[f.name] = {str(k): canon_proto(x) for k, x in v.items()}
        elif (f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED):
            out[f.name] = [canon_proto(x) for x in v]
        elif f.has_presence and not m.HasField(f.name):
            out[f.name] = None
        elif f.enum_type is not None:
            out[f.name] = f.enum_type.values_by_number[v].name
        else:
            out[f.name] = canon_proto(v)
    return out


def canon_proto(v):
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

    if isinstance(v, Timestamp):
        return v.ToMicroseconds()
    if isinstance(v, Message):
        return message_to_canon(v)
    if isinstance(v, bytes):
        return v.hex()
    return v


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
    elif kind == "protobuf":
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        registered = sr.get_latest_version(f"{topic}-value").schema
        assert registered.schema_type == "PROTOBUF", registered.schema_type
        pb = compile_proto(registered.schema_str, "registered")
        first = pb.DESCRIPTOR.message_types_by_name[next(iter(pb.DESCRIPTOR.message_types_by_name))]
        proto_des = ProtobufDeserializer(getattr(pb, first.name), {"use.deprecated.format": False})
        des = lambda value, ctx: message_to_canon(proto_des(value, ctx))  # noqa: E731
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
    elif mode == "produce-protobuf":
        produce_protobuf(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
