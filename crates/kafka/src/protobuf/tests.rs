use super::*;
use arrow_array::builder::{Int64Builder, ListBuilder, MapBuilder, StringBuilder};
use arrow_array::{
    BinaryArray, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow_schema::Field;
use serde_json::json;

fn parse(text: &str) -> File {
    File::parse(text, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn varints_zigzag_and_message_indexes_follow_the_wire_format() {
    // The protobuf documentation's example: field 1 = 150 is 08 96 01.
    let file = parse("syntax = \"proto3\"; message Test1 { int64 a = 1; }");
    let schema = Schema::new(vec![Field::new("a", DataType::Int64, false)]);
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![Arc::new(Int64Array::from(vec![150]))],
    )
    .unwrap();
    let enc = ProtoEncoder::new(&file, None, &schema).unwrap();
    let rows = enc.prepare(&batch).unwrap();
    let mut out = Vec::new();
    enc.encode_row(&rows, 0, &mut out).unwrap();
    assert_eq!(out, [0x08, 0x96, 0x01]);
    assert_eq!(enc.path(), [0]);

    for v in [0i64, -1, 1, i64::MIN, i64::MAX, -64, 63] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
    assert_eq!(zigzag(-1), 1);
    assert_eq!(zigzag(1), 2);
    let mut b = Vec::new();
    write_indexes(&[0], &mut b);
    assert_eq!(b, [0]);
    b.clear();
    write_indexes(&[1, 0], &mut b);
    assert_eq!(b, [4, 2, 0]);
    let mut r: &[u8] = &b;
    assert_eq!(read_indexes(&mut r).unwrap(), [1, 0]);
    assert!(r.is_empty());
    let mut r: &[u8] = &[0, 9];
    assert_eq!(read_indexes(&mut r).unwrap(), [0]);
    assert_eq!(r, [9]);
    assert!(read_indexes(&mut &[0x80u8][..])
        .unwrap_err()
        .contains("truncated"));
}

/// Orders with every shape: nullable scalars, a timestamp, a date, a nested message with a
/// nullable field, a list, a map.
fn orders() -> RecordBatch {
    let address_fields = Fields::from(vec![
        Field::new("city", DataType::Utf8, false),
        Field::new("zip", DataType::Int32, true),
    ]);
    let address = StructArray::new(
        address_fields.clone(),
        vec![
            Arc::new(StringArray::from(vec!["Oslo", "Lima", "Kyiv"])),
            Arc::new(Int32Array::from(vec![Some(150), None, Some(-3)])),
        ],
        Some(vec![true, true, false].into()),
    );
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.append_value([Some("a"), Some("b")]);
    tags.append_value([] as [Option<&str>; 0]);
    tags.append(false);
    let mut scores = ListBuilder::new(Int64Builder::new());
    scores.append_value([Some(-1), Some(300)]);
    scores.append_value([Some(7)]);
    scores.append_value([] as [Option<i64>; 0]);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    attrs.keys().append_value("k");
    attrs.values().append_value("v");
    attrs.append(true).unwrap();
    attrs.append(true).unwrap();
    attrs.keys().append_value("x");
    attrs.values().append_value("y");
    attrs.keys().append_value("z");
    attrs.values().append_value("");
    attrs.append(true).unwrap();
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
        Field::new("paid", DataType::Boolean, false),
        Field::new("blob", DataType::Binary, true),
        Field::new("address", DataType::Struct(address_fields), true),
        Field::new(
            "tags",
            DataType::List(Field::new("item", DataType::Utf8, true).into()),
            true,
        ),
        Field::new(
            "scores",
            DataType::List(Field::new("item", DataType::Int64, true).into()),
            false,
        ),
        Field::new("attrs", attrs.finish().data_type().clone(), false),
        Field::new("odd-name", DataType::Int32, true),
    ]);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    attrs.keys().append_value("k");
    attrs.values().append_value("v");
    attrs.append(true).unwrap();
    attrs.append(true).unwrap();
    attrs.keys().append_value("x");
    attrs.values().append_value("y");
    attrs.keys().append_value("z");
    attrs.values().append_value("");
    attrs.append(true).unwrap();
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1, -2, 3_000_000_000_000])),
            Arc::new(StringArray::from(vec![Some("ann"), None, Some("")])),
            Arc::new(Float64Array::from(vec![1.5, -0.25, 0.0])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None, Some(-1)])
                    .with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from(vec![Some(19723), None, Some(0)])),
            Arc::new(BooleanArray::from(vec![true, false, false])),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(&b""[..]),
            ])),
            Arc::new(address),
            Arc::new(tags.finish()),
            Arc::new(scores.finish()),
            Arc::new(attrs.finish()),
            Arc::new(Int32Array::from(vec![Some(-7), None, Some(0)])),
        ],
    )
    .unwrap()
}

#[test]
fn a_derived_proto_parses_and_rows_read_back_through_the_decoder() {
    let batch = orders();
    let text = proto_of(&batch.schema(), "shop.Order").unwrap();
    for line in [
        "package shop;",
        "import \"google/protobuf/timestamp.proto\";",
        "int64 id = 1;",
        "optional string customer = 2;",
        "double amount = 3;",
        "google.protobuf.Timestamp at = 4;",
        "optional string day = 5;",
        "optional bytes blob = 7;",
        "Address address = 8;",
        "optional int32 zip = 2;",
        "repeated string tags = 9;",
        "repeated int64 scores = 10;",
        "map<string, string> attrs = 11;",
        "optional int32 odd_name = 12;",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let file = parse(&text);
    let enc = ProtoEncoder::new(&file, None, &batch.schema()).unwrap();
    let rows = enc.prepare(&batch).unwrap();
    let dec = ProtoDecoder::new(file);
    let mut got = Vec::new();
    for row in 0..batch.num_rows() {
        let mut framed = Vec::new();
        write_indexes(enc.path(), &mut framed);
        enc.encode_row(&rows, row, &mut framed).unwrap();
        got.push(dec.decode(&framed).unwrap());
    }
    assert_eq!(
        got[0],
        json!({"id": 1, "customer": "ann", "amount": 1.5, "at": "2023-11-14T22:13:20.123456Z",
               "day": "2024-01-01", "paid": true, "blob": "AP8=",
               "address": {"city": "Oslo", "zip": 150}, "tags": ["a", "b"], "scores": [-1, 300],
               "attrs": {"k": "v"}, "odd_name": -7})
    );
    // Nulls: absent fields with presence; an empty list and a null list both read as [].
    assert_eq!(
        got[1],
        json!({"id": -2, "customer": null, "amount": -0.25, "at": null, "day": null,
               "paid": false, "blob": null, "address": {"city": "Lima", "zip": null},
               "tags": [], "scores": [7], "attrs": {}, "odd_name": null})
    );
    assert_eq!(
        got[2],
        json!({"id": 3_000_000_000_000i64, "customer": "", "amount": 0.0,
               "at": "1969-12-31T23:59:59.999999Z", "day": "1970-01-01", "paid": false,
               "blob": "", "address": null, "tags": [], "scores": [],
               "attrs": {"x": "y", "z": ""}, "odd_name": 0})
    );
}

#[test]
fn configured_protos_match_columns_by_name_and_refuse_rows_they_cannot_hold() {
    let file = parse(
        r#"syntax = "proto3";
        package p;
        message Other { string x = 1; }
        message Row {
            enum Status { NEW = 0; PAID = 5; }
            sint32 small = 3;
            Status status = 1;
            repeated fixed64 big = 2;
            uint32 unused = 9;
        }"#,
    );
    let schema = Schema::new(vec![
        Field::new("status", DataType::Utf8, false),
        Field::new("small", DataType::Int64, false),
        Field::new(
            "big",
            DataType::List(Field::new("item", DataType::Int64, true).into()),
            false,
        ),
    ]);
    let mut big = ListBuilder::new(Int64Builder::new());
    big.append_value([Some(1), Some(2)]);
    big.append_value([Some(3), None]);
    big.append_value([Some(-4)]);
    big.append_value([] as [Option<i64>; 0]);
    big.append_value([] as [Option<i64>; 0]);
    let batch = RecordBatch::try_new(
        Arc::new(schema.clone()),
        vec![
            Arc::new(StringArray::from(vec!["PAID", "NEW", "NEW", "LOST", "NEW"])),
            Arc::new(Int64Array::from(vec![-1, 2, 3, 4, 1 << 40])),
            Arc::new(big.finish()),
        ],
    )
    .unwrap();
    let enc = ProtoEncoder::new(&file, Some("p.Row"), &schema).unwrap();
    assert_eq!(enc.path(), [1]);
    let rows = enc.prepare(&batch).unwrap();
    let mut out = Vec::new();
    enc.encode_row(&rows, 0, &mut out).unwrap();
    // In column order: status = 5 (field 1, varint), small = zigzag(-1) = 1 (field 3), big
    // packed (field 2: two fixed64).
    let mut expected = vec![0x08, 5, 0x18, 1, 0x12, 16];
    expected.extend_from_slice(&1u64.to_le_bytes());
    expected.extend_from_slice(&2u64.to_le_bytes());
    assert_eq!(out, expected);
    let err = |row| {
        let mut out = Vec::new();
        enc.encode_row(&rows, row, &mut out).unwrap_err()
    };
    assert!(
        err(1).contains("field big: list element 1 is null"),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("field big") && err(2).contains("out of range"),
        "{}",
        err(2)
    );
    assert!(err(3).contains("\"LOST\" is not a symbol"), "{}", err(3));
    assert!(
        err(4).contains("field small") && err(4).contains("out of range"),
        "{}",
        err(4)
    );

    // The decoder: the enum by name, the implicit field's default, indexes [1].
    let dec = ProtoDecoder::new(file.clone());
    let mut framed = Vec::new();
    write_indexes(&[1], &mut framed);
    enc.encode_row(&rows, 0, &mut framed).unwrap();
    assert_eq!(
        dec.decode(&framed).unwrap(),
        json!({"status": "PAID", "big": [1, 2], "small": -1, "unused": 0})
    );

    // A column without a field, or of a type its field cannot hold, is refused up front.
    let extra = Schema::new(vec![Field::new("nope", DataType::Utf8, false)]);
    let e = ProtoEncoder::new(&file, Some("p.Row"), &extra).unwrap_err();
    assert!(
        e.contains("column \"nope\" has no field in message p.Row"),
        "{e}"
    );
    let wrong = Schema::new(vec![Field::new("small", DataType::Utf8, false)]);
    let e = ProtoEncoder::new(&file, Some("p.Row"), &wrong).unwrap_err();
    assert!(e.contains("column \"small\" → field small"), "{e}");
}

#[test]
fn the_decoder_reads_unpacked_repeated_fields_skips_unknown_ones_and_names_bad_input() {
    let file = parse(
        "syntax = \"proto2\"; message M { repeated int32 xs = 1; optional string s = 2; required int64 n = 3; }",
    );
    let dec = ProtoDecoder::new(file);
    // [0] indexes; xs unpacked 1, 2; an unknown field 7 (varint); n = 5; s absent (proto2: null).
    let body = [0u8, 0x08, 1, 0x08, 2, 0x38, 9, 0x18, 5];
    assert_eq!(
        dec.decode(&body).unwrap(),
        json!({"xs": [1, 2], "s": null, "n": 5})
    );
    let truncated = [0u8, 0x12, 5, b'a'];
    let e = dec.decode(&truncated).unwrap_err();
    assert!(e.contains("length 5 runs past the end"), "{e}");
    let wrong_type = [0u8, 0x11, 0, 0, 0, 0, 0, 0, 0, 0];
    let e = dec.decode(&wrong_type).unwrap_err();
    assert!(
        e.contains("field s: a string value with the wrong wire type"),
        "{e}"
    );
    let e = dec.decode(&[2, 6, 0]).unwrap_err();
    assert!(e.contains("no message at indexes [3]"), "{e}");
}
