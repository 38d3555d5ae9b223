use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, MapBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::*;
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use tributary_core::schema::SchemaPolicy;

use super::*;

fn sample() -> RecordBatch {
    let address = Fields::from(vec![
        Field::new("city", DataType::Utf8, false),
        Field::new("zip", DataType::Int32, true),
    ]);
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("a");
    tags.values().append_null();
    tags.append(true);
    tags.append(false);
    tags.append(true);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    attrs.keys().append_value("k");
    attrs.values().append_value(7);
    attrs.append(true).unwrap();
    attrs.append(false).unwrap();
    attrs.append(true).unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "local",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("day", DataType::Date32, true),
        Field::new("price", DataType::Decimal128(12, 3), true),
        Field::new("blob", DataType::Binary, true),
        Field::new("tags", tags_type(), true),
        Field::new("address", DataType::Struct(address.clone()), true),
        Field::new("attrs", attrs_type(), true),
        Field::new("small", DataType::Int16, true),
    ]);
    let address = StructArray::new(
        address,
        vec![
            Arc::new(StringArray::from(vec!["Oslo", "", "Lima"])),
            Arc::new(Int32Array::from(vec![Some(150), None, Some(-1)])),
        ],
        Some(vec![true, false, true].into()),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1, -2, i64::MAX])),
            Arc::new(StringArray::from(vec![Some("ä"), None, Some("")])),
            Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None, Some(-5)])
                    .with_timezone("UTC"),
            ),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(1),
                None,
                Some(2),
            ])),
            Arc::new(Date32Array::from(vec![Some(19_000), None, Some(-1)])),
            Arc::new(
                Decimal128Array::from(vec![Some(123_456), None, Some(-1)])
                    .with_precision_and_scale(12, 3)
                    .unwrap(),
            ),
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xff"[..]),
                None,
                Some(b""),
            ])),
            Arc::new(tags.finish()),
            Arc::new(address),
            Arc::new(attrs.finish()),
            Arc::new(Int16Array::from(vec![Some(3), None, Some(-3)])),
        ],
    )
    .unwrap()
}

fn tags_type() -> DataType {
    DataType::List(Field::new("item", DataType::Utf8, true).into())
}

fn attrs_type() -> DataType {
    DataType::Map(
        Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Int64, true),
                ]
                .into(),
            ),
            false,
        )
        .into(),
        false,
    )
}

fn encode_all(batch: &RecordBatch, avro: &str) -> Vec<Vec<u8>> {
    let encoder = Encoder::new(schema::parse(avro).unwrap()).unwrap();
    encoder.check(&batch.schema()).unwrap();
    let rows = Encoder::rows(batch);
    (0..batch.num_rows())
        .map(|r| {
            let mut out = Vec::new();
            encoder.encode_row(&rows, r, &mut out).unwrap();
            out
        })
        .collect()
}

#[test]
fn rows_round_trip_through_avro_binary() {
    let batch = sample();
    let avro = schema::from_arrow(&batch.schema(), "t.Row")
        .unwrap()
        .to_string();
    let encoded = encode_all(&batch, &avro);
    let writer = Arc::new(Writer::parse(&avro).unwrap());
    let records: Vec<Framed<'_>> = encoded
        .iter()
        .map(|e| Ok((&writer, e.as_slice())))
        .collect();
    let mut d = StreamDecoder::new(None, SchemaPolicy::Evolve);
    let out = d.decode(&records);
    assert!(
        out.decoded.rejected.is_empty(),
        "{:?}",
        out.decoded.rejected
    );
    let got = out.decoded.batch;
    assert_eq!(got.num_rows(), 3);
    // Same values; types as the table in the module docs say (Int16 comes back as Int32,
    // map entry names are Avro's).
    for name in [
        "id", "name", "score", "ok", "at", "local", "day", "price", "blob", "tags",
    ] {
        let a = batch.column_by_name(name).unwrap();
        let b = got.column_by_name(name).unwrap();
        assert_eq!(a.to_data(), b.to_data(), "column {name}");
    }
    let addr = got.column_by_name("address").unwrap().as_struct();
    assert!(addr.is_null(1));
    assert_eq!(addr.column(0).as_string::<i32>().value(2), "Lima");
    assert_eq!(
        addr.column(1)
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(0),
        150
    );
    assert!(addr.column(1).is_null(1) || addr.is_null(1));
    let attrs = got.column_by_name("attrs").unwrap().as_map();
    assert!(attrs.is_null(1));
    assert_eq!(attrs.keys().as_string::<i32>().value(0), "k");
    let small = got.column_by_name("small").unwrap();
    assert_eq!(small.data_type(), &DataType::Int32);
    assert_eq!(
        small
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(2),
        -3
    );
}

#[test]
fn bad_records_are_rejected_alone_and_a_new_writer_evolves_the_stream() {
    let v1 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"long"}]}"#;
    let v2 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"long"},
        {"name":"note","type":["null","string"],"default":null}]}"#;
    let w1 = Arc::new(Writer::parse(v1).unwrap());
    let w2 = Arc::new(Writer::parse(v2).unwrap());
    let one = [2u8]; // id 1
    let two = [4u8, 2, 4, b'h', b'i']; // id 2, note "hi"
    let truncated = [4u8, 2, 10, b'h'];
    let records: Vec<Framed<'_>> = vec![
        Ok((&w1, &one)),
        Err("bad magic byte 123".into()),
        Ok((&w2, &two)),
        Ok((&w2, &truncated)),
        Ok((&w1, &[2u8, 0][..])),
    ];
    let mut d = StreamDecoder::new(None, SchemaPolicy::Evolve);
    let out = d.decode(&records);
    let r = &out.decoded.rejected;
    assert_eq!(r.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert!(
        r[1].message.contains("truncated") || r[1].message.contains("runs past"),
        "{}",
        r[1].message
    );
    assert!(r[2].message.contains("left over"), "{}", r[2].message);
    let b = &out.decoded.batch;
    assert_eq!(b.num_rows(), 2);
    assert_eq!(out.change.unwrap().added, vec!["note".to_string()]);
    let note = b.column_by_name("note").unwrap().as_string::<i32>();
    assert!(note.is_null(0));
    assert_eq!(note.value(1), "hi");

    // Under freeze a stream started at v1 refuses records that use the new field.
    let mut d = StreamDecoder::new(Some((*w1.arrow).clone()), SchemaPolicy::Freeze);
    let none = [4u8, 0];
    let out = d.decode(&[Ok((&w2, &two[..])), Ok((&w2, &none[..]))]);
    assert_eq!(out.decoded.rejected.len(), 1);
    assert!(out.decoded.rejected[0]
        .message
        .contains("field note is not in the stream's schema"));
    assert_eq!(out.decoded.batch.num_rows(), 1);
    assert_eq!(out.decoded.batch.num_columns(), 1);
}

#[test]
fn a_configured_schema_fills_defaults_and_refuses_what_does_not_fit() {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("kind", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![Some(1), None])),
            Arc::new(StringArray::from(vec!["A", "Z"])),
        ],
    )
    .unwrap();
    let avro = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"long"},
        {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]}},
        {"name":"n","type":"int","default":42}]}"#;
    let encoder = Encoder::new(schema::parse(avro).unwrap()).unwrap();
    encoder.check(&batch.schema()).unwrap();
    let rows = Encoder::rows(&batch);
    let mut out = Vec::new();
    encoder.encode_row(&rows, 0, &mut out).unwrap();
    assert_eq!(out, vec![2, 0, 84]);
    let e = encoder.encode_row(&rows, 1, &mut Vec::new()).unwrap_err();
    assert!(e.contains("field id") && e.contains("not nullable"), "{e}");
    let wrong = Schema::new(vec![Field::new("id", DataType::Utf8, true)]);
    let e = encoder.check(&wrong).unwrap_err();
    assert!(e.contains("column \"id\" is Utf8"), "{e}");
}
