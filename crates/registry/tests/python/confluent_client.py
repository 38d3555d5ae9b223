"""Confluent's own Python client against Tributary's built-in schema registry.

Run by crates/registry/tests/python.rs as `python confluent_client.py <avro|json|protobuf> URL`
with the server started by the test. Serializes and deserializes without Kafka (a
SerializationContext is all the serializers need), registers, evolves (compatible and
incompatible changes) and reads data back. Any failed check raises, and the process exits
non-zero with the traceback.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def expect_error(code, fn, *args):
    """Calls fn and checks that the registry refused with this error code."""
    try:
        fn(*args)
    except SchemaRegistryError as e:
        assert e.error_code == code, f"expected error {code}, got {e.error_code}: {e}"
        return e
    raise AssertionError(f"expected error {code}, the call succeeded")


def schema_id(data):
    """The id in Confluent's wire format: magic byte 0, then a big-endian 32-bit id."""
    assert data[0] == 0, f"magic byte {data[0]}"
    return int.from_bytes(data[1:5], "big")


def avro(url):
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

    sr = SchemaRegistryClient({"url": url})
    ctx = SerializationContext("orders", MessageField.VALUE)

    def order(*extra):
        return json.dumps({
            "type": "record", "name": "Order", "namespace": "shop",
            "fields": [{"name": "id", "type": "long"}, {"name": "item", "type": "string"}, *extra],
        })

    v1 = order()
    data1 = AvroSerializer(sr, v1)({"id": 1, "item": "apple"}, ctx)
    id1 = schema_id(data1)
    assert sr.get_subjects() == ["orders-value"], sr.get_subjects()
    latest = sr.get_latest_version("orders-value")
    assert (latest.version, latest.schema_id) == (1, id1), latest
    # The writer schema comes from the registry by id.
    assert AvroDeserializer(sr)(data1, ctx) == {"id": 1, "item": "apple"}

    # Compatible (BACKWARD): a field with a default. A new id, version 2; old data read with
    # the new schema gets the default.
    v2 = order({"name": "qty", "type": "int", "default": 1})
    data2 = AvroSerializer(sr, v2)({"id": 2, "item": "pear", "qty": 3}, ctx)
    id2 = schema_id(data2)
    assert id2 != id1
    assert sr.get_versions("orders-value") == [1, 2]
    assert AvroDeserializer(sr)(data2, ctx) == {"id": 2, "item": "pear", "qty": 3}
    assert AvroDeserializer(sr, v2)(data1, ctx) == {"id": 1, "item": "apple", "qty": 1}

    # Incompatible: a field without a default.
    v3 = order({"name": "price", "type": "double"})
    assert sr.test_compatibility("orders-value", Schema(v3, "AVRO")) is False
    e = expect_error(409, AvroSerializer(sr, v3), {"id": 3, "item": "fig", "price": 1.5}, ctx)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in str(e), str(e)
    # Type narrowed (long → int): incompatible too.
    narrowed = json.dumps({
        "type": "record", "name": "Order", "namespace": "shop",
        "fields": [{"name": "id", "type": "int"}, {"name": "item", "type": "string"}],
    })
    expect_error(409, sr.register_schema, "orders-value", Schema(narrowed, "AVRO"))

    # The same schema under another subject keeps its id.
    assert sr.register_schema("archive-value", Schema(v1, "AVRO")) == id1
    # Subject-level config lets the incompatible change in.
    sr.set_compatibility("orders-value", "NONE")
    assert sr.get_compatibility("orders-value") == "NONE"
    data3 = AvroSerializer(sr, v3)({"id": 3, "item": "fig", "price": 1.5}, ctx)
    assert AvroDeserializer(sr)(data3, ctx)["price"] == 1.5
    assert sr.lookup_schema("orders-value", Schema(v2, "AVRO")).version == 2

    # Deletes.
    assert sr.delete_version("orders-value", 3) == 3
    assert sr.get_versions("orders-value") == [1, 2]
    assert sorted(sr.delete_subject("orders-value")) == [1, 2]
    assert sr.get_subjects() == ["archive-value"], sr.get_subjects()
    # A fresh client (no cache): the soft-deleted subject is gone.
    expect_error(40401, SchemaRegistryClient({"url": url}).get_latest_version, "orders-value")
    assert sorted(sr.delete_subject("orders-value", permanent=True)) == [1, 2, 3]
    assert sr.get_subjects() == ["archive-value"]
    # Fetch by id of a schema that still has a subject.
    assert json.loads(sr.get_schema(id1).schema_str)["name"] == "Order"


def json_schema(url):
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
    from confluent_kafka.serialization import SerializationError

    sr = SchemaRegistryClient({"url": url})
    ctx = SerializationContext("readings", MessageField.VALUE)

    def reading(properties, required=("id",), additional=None):
        s = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Reading",
            "type": "object",
            "properties": properties,
            "required": list(required),
        }
        if additional is not None:
            s["additionalProperties"] = additional
        return json.dumps(s)

    base = {"id": {"type": "integer"}, "temp": {"type": "number"}}
    v1 = reading(base, additional=False)
    data1 = JSONSerializer(v1, sr)({"id": 1, "temp": 20.5}, ctx)
    id1 = schema_id(data1)
    assert JSONDeserializer(None, schema_registry_client=sr)(data1, ctx) == {"id": 1, "temp": 20.5}
    # Validation happens client-side against the schema.
    try:
        JSONSerializer(v1, sr)({"id": "one"}, ctx)
        raise AssertionError("an invalid record was serialized")
    except SerializationError:
        pass

    # Compatible (BACKWARD): an optional property added to a closed content model (old data
    # cannot have had it), and a type widened (integer → number).
    v2 = reading({**base, "unit": {"type": "string"}, "id": {"type": "number"}}, additional=False)
    data2 = JSONSerializer(v2, sr)({"id": 2, "temp": 19.0, "unit": "C"}, ctx)
    assert schema_id(data2) != id1
    assert sr.get_versions("readings-value") == [1, 2]
    assert JSONDeserializer(None, schema_registry_client=sr)(data2, ctx)["unit"] == "C"

    # Incompatible: a new required property; a type narrowed (number → integer); a property
    # removed from a closed content model.
    for bad in [
        reading({**base, "unit": {"type": "string"}, "id": {"type": "number"}}, required=("id", "unit"), additional=False),
        reading({**base, "unit": {"type": "string"}, "id": {"type": "integer"}}, additional=False),
        reading({"id": {"type": "number"}, "unit": {"type": "string"}}, additional=False),
    ]:
        assert sr.test_compatibility("readings-value", Schema(bad, "JSON")) is False, bad
        expect_error(409, sr.register_schema, "readings-value", Schema(bad, "JSON"))
    assert sr.get_versions("readings-value") == [1, 2]


def protobuf(url):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer

    F = descriptor_pb2.FieldDescriptorProto

    def message_class(fields):
        """A `test.Reading` message class built from (name, number, type) without protoc."""
        fdp = descriptor_pb2.FileDescriptorProto(name="reading.proto", package="test", syntax="proto3")
        m = fdp.message_type.add(name="Reading")
        for name, number, ty in fields:
            m.field.add(name=name, number=number, type=ty, label=F.LABEL_OPTIONAL)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("test.Reading"))

    sr = SchemaRegistryClient({"url": url})
    ctx = SerializationContext("devices", MessageField.VALUE)
    conf = {"use.deprecated.format": False}

    V1 = message_class([("id", 1, F.TYPE_INT64), ("name", 2, F.TYPE_STRING)])
    data1 = ProtobufSerializer(V1, sr, conf)(V1(id=7, name="pump"), ctx)
    id1 = schema_id(data1)
    registered = sr.get_latest_version("devices-value")
    assert (registered.version, registered.schema_id, registered.schema.schema_type) == (1, id1, "PROTOBUF")
    back = ProtobufDeserializer(V1, conf)(data1, ctx)
    assert (back.id, back.name) == (7, "pump")

    # Compatible: a field added.
    V2 = message_class([("id", 1, F.TYPE_INT64), ("name", 2, F.TYPE_STRING), ("temp", 3, F.TYPE_DOUBLE)])
    data2 = ProtobufSerializer(V2, sr, conf)(V2(id=8, name="fan", temp=21.5), ctx)
    assert schema_id(data2) != id1
    assert sr.get_versions("devices-value") == [1, 2]
    # Old readers skip the new field.
    old = ProtobufDeserializer(V1, conf)(data2, ctx)
    assert (old.id, old.name) == (8, "fan")

    # Incompatible: field 2 reused with another type.
    V3 = message_class([("id", 1, F.TYPE_INT64), ("name", 2, F.TYPE_INT32), ("temp", 3, F.TYPE_DOUBLE)])
    e = expect_error(409, ProtobufSerializer(V3, sr, conf), V3(id=9, name=1), ctx)
    assert "FIELD" in str(e), str(e)
    assert sr.get_versions("devices-value") == [1, 2]


if __name__ == "__main__":
    {"avro": avro, "json": json_schema, "protobuf": protobuf}[sys.argv[1]](sys.argv[2])
    print(f"{sys.argv[1]}: ok")
