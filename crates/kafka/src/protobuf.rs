//! `format: protobuf`: Arrow rows ⇄ Protobuf messages in Confluent's wire format.
//!
//! - [`proto_of`] derives a proto3 `.proto` file from an Arrow schema (one field per column,
//!   numbered in column order; nullable scalars `optional`; structs nested messages; lists
//!   `repeated`; maps `map<K, V>`; timestamps `google.protobuf.Timestamp`; dates, times,
//!   decimals, durations and anything else as their text).
//! - [`ProtoEncoder`] writes rows of a batch as messages of one message type: columns matched
//!   to fields by name, so a configured `.proto` works as well as a derived one. A value the
//!   field cannot hold (out of range, a null list element, an unknown enum symbol) fails its
//!   row only.
//! - [`ProtoDecoder`] reads a message into JSON (every declared field; absent implicit-presence
//!   scalars as their default, absent fields with presence as `null`; enums by name; bytes
//!   base64; timestamps RFC 3339), which the source then decodes like any JSON payload under
//!   the pipeline's schema policy.
//! - [`write_indexes`] / [`read_indexes`]: Confluent's message indexes, between the schema id
//!   and the payload (`[0]`, the first message of the file, is the single byte `0`).
//!
//! The schema model is the registry's own `.proto` / `FileDescriptorProto` reader
//! ([`tributary_registry::protobuf::File`]). Why not `prost-reflect` (whose
//! `DynamicMessage` the issue suggests): it needs a descriptor pool, so `.proto` text would
//! need a compiler front end too (`protox`, with `logos` and `miette`), and each row would be
//! built as a dynamic message before being encoded; the wire format itself is a page of code
//! (varints, zigzag, fixed widths, length-delimited fields) and the registry already parses both
//! schema forms. Confluent's Python serializer and deserializer check the result in
//! `tests/registry.rs`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Fields, Schema, TimeUnit};
use base64::Engine;
use serde_json::{Map, Value};
use tributary_registry::protobuf::{
    read_varint as get_varint, wire_fields as raw_fields, FieldType, File, Label, WireValue as Raw,
};

const TIMESTAMP: &str = "google.protobuf.Timestamp";

// ---- wire format -------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_tag(out: &mut Vec<u8>, number: u32, wire: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire));
}

fn put_len_delimited(out: &mut Vec<u8>, number: u32, body: &[u8]) {
    put_tag(out, number, 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Writes Confluent's message indexes of the message at `path` in its file.
pub fn write_indexes(path: &[i64], out: &mut Vec<u8>) {
    if path == [0] {
        out.push(0);
        return;
    }
    put_varint(out, zigzag(path.len() as i64));
    for i in path {
        put_varint(out, zigzag(*i));
    }
}

/// Reads Confluent's message indexes from the front of `b`.
pub fn read_indexes(b: &mut &[u8]) -> Result<Vec<i64>, String> {
    let n = unzigzag(get_varint(b).map_err(|e| format!("message indexes: {e}"))?);
    if n == 0 {
        return Ok(vec![0]);
    }
    if !(1..=100).contains(&n) {
        return Err(format!("message indexes: bad count {n}"));
    }
    (0..n)
        .map(|_| {
            get_varint(b)
                .map(unzigzag)
                .map_err(|e| format!("message indexes: {e}"))
        })
        .collect()
}

// ---- Arrow → .proto ------------------------------------------------------------------------

/// A name Protobuf accepts for a field: characters other than letters, digits and `_`
/// become `_`; a leading digit gets a `_` before it.
pub fn proto_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn camel(name: &str) -> String {
    let mut out = tributary_registry::protobuf::camel_case(&proto_name(name));
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'M');
    }
    out
}

/// The proto type of a scalar Arrow type: `None` for structs, lists and maps.
fn scalar_type(dt: &DataType) -> Option<&'static str> {
    use DataType::*;
    Some(match dt {
        Boolean => "bool",
        Int8 | Int16 | Int32 => "int32",
        Int64 => "int64",
        UInt8 | UInt16 | UInt32 => "uint32",
        UInt64 => "uint64",
        Float16 | Float32 => "float",
        Float64 => "double",
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "bytes",
        Timestamp(..) => TIMESTAMP,
        Dictionary(_, v) => return scalar_type(v),
        Struct(_) | List(_) | LargeList(_) | FixedSizeList(..) | ListView(_) | LargeListView(_)
        | Map(..) => return None,
        // Text, and everything that has a text form (dates, times, decimals, durations).
        _ => "string",
    })
}

struct ProtoWriter {
    text: String,
    timestamp: bool,
}

impl ProtoWriter {
    /// The body of a message for `fields`, indented by `depth`.
    fn message(&mut self, name: &str, fields: &Fields, depth: usize) -> Result<(), String> {
        let pad = "  ".repeat(depth);
        writeln!(self.text, "{pad}message {name} {{").unwrap();
        let mut nested: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, f) in fields.iter().enumerate() {
            let number = i + 1;
            let fname = proto_name(f.name());
            if !seen.insert(fname.clone()) {
                return Err(format!(
                    "columns {:?} and another become the same Protobuf field name {fname}",
                    f.name()
                ));
            }
            let mut nested_name = || {
                let mut n = camel(f.name());
                while nested.contains(&n) || n == name {
                    n.push('_');
                }
                nested.push(n.clone());
                n
            };
            let line = match f.data_type() {
                DataType::Struct(children) => {
                    let n = nested_name();
                    self.message(&n, children, depth + 1)?;
                    format!("{n} {fname} = {number};")
                }
                DataType::List(item)
                | DataType::LargeList(item)
                | DataType::FixedSizeList(item, _)
                | DataType::ListView(item)
                | DataType::LargeListView(item) => {
                    let t = match item.data_type() {
                        DataType::Struct(children) => {
                            let n = nested_name();
                            self.message(&n, children, depth + 1)?;
                            n
                        }
                        dt => self.scalar(dt).ok_or_else(|| {
                            format!(
                                "column {:?}: a list of {dt} has no Protobuf form (lists of lists and maps need a message in between)",
                                f.name()
                            )
                        })?,
                    };
                    format!("repeated {t} {fname} = {number};")
                }
                DataType::Map(entries, _) => {
                    let DataType::Struct(kv) = entries.data_type() else {
                        return Err(format!("column {:?}: a malformed map", f.name()));
                    };
                    let k = match kv[0].data_type() {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
                        dt => match scalar_type(dt) {
                            Some(t @ ("int32" | "int64" | "uint32" | "uint64" | "bool")) => t,
                            _ => {
                                return Err(format!(
                                    "column {:?}: map keys of {dt} have no Protobuf form",
                                    f.name()
                                ))
                            }
                        },
                    };
                    let v = match kv[1].data_type() {
                        DataType::Struct(children) => {
                            let n = nested_name();
                            self.message(&n, children, depth + 1)?;
                            n
                        }
                        dt => self.scalar(dt).ok_or_else(|| {
                            format!(
                                "column {:?}: map values of {dt} have no Protobuf form",
                                f.name()
                            )
                        })?,
                    };
                    format!("map<{k}, {v}> {fname} = {number};")
                }
                dt => {
                    let t = self.scalar(dt).expect("not nested");
                    // Messages have presence already; scalars need `optional` for null.
                    if f.is_nullable() && t != TIMESTAMP {
                        format!("optional {t} {fname} = {number};")
                    } else {
                        format!("{t} {fname} = {number};")
                    }
                }
            };
            writeln!(self.text, "{pad}  {line}").unwrap();
        }
        writeln!(self.text, "{pad}}}").unwrap();
        Ok(())
    }

    fn scalar(&mut self, dt: &DataType) -> Option<String> {
        let t = scalar_type(dt)?;
        if t == TIMESTAMP {
            self.timestamp = true;
        }
        Some(t.to_string())
    }
}

/// A proto3 file with one message, `full_name` (`shop.Order`: package `shop`), for rows of
/// `schema`.
pub fn proto_of(schema: &Schema, full_name: &str) -> Result<String, String> {
    let (package, name) = match full_name.rsplit_once('.') {
        Some((p, n)) => (Some(p), n),
        None => (None, full_name),
    };
    let mut w = ProtoWriter {
        text: String::new(),
        timestamp: false,
    };
    w.message(&camel(name), schema.fields(), 0)?;
    let mut head = String::from("syntax = \"proto3\";\n");
    if let Some(p) = package {
        let p: Vec<String> = p.split('.').map(proto_name).collect();
        writeln!(head, "package {};", p.join(".")).unwrap();
    }
    if w.timestamp {
        head.push_str("import \"google/protobuf/timestamp.proto\";\n");
    }
    head.push('\n');
    Ok(head + &w.text)
}

// ---- encoding ------------------------------------------------------------------------------

/// How one value is written.
#[derive(Clone, Debug)]
enum Kind {
    /// int32, int64, uint32, uint64, bool: a varint (`bits` limits the range).
    Varint {
        signed: bool,
        bits: u32,
    },
    /// sint32, sint64.
    ZigZag {
        bits: u32,
    },
    /// fixed32/sfixed32 (`wide` false) and fixed64/sfixed64.
    Fixed {
        signed: bool,
        wide: bool,
    },
    Float,
    Double,
    Bool,
    String,
    Bytes,
    /// Symbol → number.
    Enum(Arc<HashMap<String, i64>>),
    Message(Arc<MessagePlan>),
    Timestamp,
}

impl Kind {
    fn wire(&self) -> u8 {
        match self {
            Kind::Varint { .. } | Kind::ZigZag { .. } | Kind::Bool | Kind::Enum(_) => 0,
            Kind::Fixed { wide: true, .. } | Kind::Double => 1,
            Kind::Fixed { wide: false, .. } | Kind::Float => 5,
            Kind::String | Kind::Bytes | Kind::Message(_) | Kind::Timestamp => 2,
        }
    }

    /// The proto type's name, for messages.
    fn describe(&self) -> &'static str {
        match self {
            Kind::Varint {
                signed: true,
                bits: 32,
            } => "int32",
            Kind::Varint { signed: true, .. } => "int64",
            Kind::Varint { bits: 32, .. } => "uint32",
            Kind::Varint { .. } => "uint64",
            Kind::ZigZag { bits: 32 } => "sint32",
            Kind::ZigZag { .. } => "sint64",
            Kind::Fixed {
                signed: true,
                wide: false,
            } => "sfixed32",
            Kind::Fixed {
                signed: true,
                wide: true,
            } => "sfixed64",
            Kind::Fixed { wide: false, .. } => "fixed32",
            Kind::Fixed { .. } => "fixed64",
            Kind::Float => "float",
            Kind::Double => "double",
            Kind::Bool => "bool",
            Kind::String => "string",
            Kind::Bytes => "bytes",
            Kind::Enum(_) => "an enum",
            Kind::Message(_) => "a message",
            Kind::Timestamp => TIMESTAMP,
        }
    }

    fn packable(&self) -> bool {
        self.wire() != 2
    }

    fn of(file: &File, field: &tributary_registry::protobuf::Field) -> Result<Kind, String> {
        Ok(match &field.ty {
            FieldType::Scalar(s) => match s.as_str() {
                "int32" => Kind::Varint {
                    signed: true,
                    bits: 32,
                },
                "int64" => Kind::Varint {
                    signed: true,
                    bits: 64,
                },
                "uint32" => Kind::Varint {
                    signed: false,
                    bits: 32,
                },
                "uint64" => Kind::Varint {
                    signed: false,
                    bits: 64,
                },
                "sint32" => Kind::ZigZag { bits: 32 },
                "sint64" => Kind::ZigZag { bits: 64 },
                "fixed32" => Kind::Fixed {
                    signed: false,
                    wide: false,
                },
                "fixed64" => Kind::Fixed {
                    signed: false,
                    wide: true,
                },
                "sfixed32" => Kind::Fixed {
                    signed: true,
                    wide: false,
                },
                "sfixed64" => Kind::Fixed {
                    signed: true,
                    wide: true,
                },
                "float" => Kind::Float,
                "double" => Kind::Double,
                "bool" => Kind::Bool,
                "string" => Kind::String,
                "bytes" => Kind::Bytes,
                other => return Err(format!("unknown scalar type {other}")),
            },
            FieldType::Named(n) if n == TIMESTAMP => Kind::Timestamp,
            FieldType::Named(n) => {
                if let Some(values) = file.enums.get(n) {
                    Kind::Enum(Arc::new(values.iter().cloned().collect()))
                } else if file.messages.contains_key(n) {
                    // Filled in by the caller (it knows the Arrow side).
                    Kind::Message(Arc::new(MessagePlan::default()))
                } else {
                    return Err(format!("type {n} is not defined in the schema"));
                }
            }
        })
    }
}

/// How a column (or a struct's child) becomes a field.
#[derive(Clone, Debug)]
struct FieldPlan {
    number: u32,
    name: String,
    shape: Shape,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Shape {
    Single,
    Repeated,
    /// A map field: the entry's key kind (the value kind is the plan's `kind`).
    Map(Kind),
}

/// The fields of one message, matched to the children of an Arrow struct (or a batch).
#[derive(Clone, Debug, Default)]
struct MessagePlan {
    /// Per Arrow child, in order.
    fields: Vec<FieldPlan>,
}

fn plan_message(file: &File, message: &str, arrow: &Fields) -> Result<MessagePlan, String> {
    let msg = file
        .messages
        .get(message)
        .ok_or_else(|| format!("message {message} is not in the schema"))?;
    let mut fields = Vec::with_capacity(arrow.len());
    for af in arrow {
        let wanted = proto_name(af.name());
        let (number, pf) = msg
            .fields
            .iter()
            .find(|(_, f)| f.name == *af.name())
            .or_else(|| msg.fields.iter().find(|(_, f)| f.name == wanted))
            .ok_or_else(|| {
                format!(
                    "column {:?} has no field in message {message} (fields: {})",
                    af.name(),
                    msg.fields
                        .values()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let at = |m: String| format!("column {:?} → field {}: {m}", af.name(), pf.name);
        let entry = match &pf.ty {
            FieldType::Named(n) => file.messages.get(n).filter(|m| m.map_entry),
            FieldType::Scalar(_) => None,
        };
        let (shape, item_type, kind) = match (af.data_type(), pf.label, entry) {
            (DataType::Map(entries, _), Label::Repeated, Some(e)) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return Err(at("a malformed map".into()));
                };
                let (Some(k), Some(v)) = (e.fields.get(&1), e.fields.get(&2)) else {
                    return Err(at("a map entry without key and value".into()));
                };
                let key = Kind::of(file, k).map_err(at)?;
                check_leaf(&key, kv[0].data_type()).map_err(at)?;
                let value = complete(file, Kind::of(file, v).map_err(at)?, v, kv[1].data_type())
                    .map_err(at)?;
                (Shape::Map(key), kv[1].data_type().clone(), value)
            }
            (DataType::Map(..), ..) => return Err(at("a map column needs a map field".into())),
            (_, Label::Repeated, Some(_)) => {
                return Err(at("a map field needs a map column".into()))
            }
            (
                DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _),
                Label::Repeated,
                None,
            ) => {
                let kind = complete(file, Kind::of(file, pf).map_err(at)?, pf, item.data_type())
                    .map_err(at)?;
                (Shape::Repeated, item.data_type().clone(), kind)
            }
            (_, Label::Repeated, None) => {
                return Err(at("a repeated field needs a list column".into()))
            }
            (DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..), ..) => {
                return Err(at("a list column needs a repeated field".into()))
            }
            (dt, ..) => {
                let kind = complete(file, Kind::of(file, pf).map_err(at)?, pf, dt).map_err(at)?;
                (Shape::Single, dt.clone(), kind)
            }
        };
        check_leaf(&kind, &item_type).map_err(at)?;
        fields.push(FieldPlan {
            number: u32::try_from(*number).map_err(|_| at("bad field number".into()))?,
            name: pf.name.clone(),
            shape,
            kind,
        });
    }
    Ok(MessagePlan { fields })
}

/// Plans a message kind's fields against the Arrow struct it is written from.
fn complete(
    file: &File,
    kind: Kind,
    field: &tributary_registry::protobuf::Field,
    dt: &DataType,
) -> Result<Kind, String> {
    match (kind, &field.ty) {
        (Kind::Message(_), FieldType::Named(n)) => match dt {
            DataType::Struct(children) => {
                Ok(Kind::Message(Arc::new(plan_message(file, n, children)?)))
            }
            dt => Err(format!("message {n} needs a struct column, not {dt}")),
        },
        (k, _) => Ok(k),
    }
}

/// Whether values of `dt` can be written as `kind`.
fn check_leaf(kind: &Kind, dt: &DataType) -> Result<(), String> {
    let dt = match dt {
        DataType::Dictionary(_, v) => v.as_ref(),
        d => d,
    };
    let ok = match kind {
        Kind::Message(_) => matches!(dt, DataType::Struct(_)),
        Kind::Timestamp => matches!(dt, DataType::Timestamp(..)),
        Kind::Varint { .. } | Kind::ZigZag { .. } | Kind::Fixed { .. } => dt.is_integer(),
        Kind::Float | Kind::Double => dt.is_numeric(),
        Kind::Bool => matches!(dt, DataType::Boolean),
        Kind::Bytes => matches!(
            dt,
            DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        ),
        Kind::Enum(_) => {
            dt.is_integer()
                || matches!(
                    dt,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
        Kind::String => !matches!(
            dt,
            DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) | DataType::Map(..)
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{dt} values cannot be written as {}",
            kind.describe()
        ))
    }
}

/// A column prepared for writing: leaves cast to one Arrow type per kind.
enum Col {
    /// Cast values, and the original validity (a null that was not null before is a value
    /// out of the cast's range).
    Leaf {
        values: ArrayRef,
        before: NullBuffer,
    },
    Struct {
        nulls: Option<NullBuffer>,
        children: Vec<Col>,
    },
    List {
        nulls: Option<NullBuffer>,
        offsets: OffsetBuffer<i32>,
        values: Box<Col>,
    },
    Map {
        nulls: Option<NullBuffer>,
        offsets: OffsetBuffer<i32>,
        keys: Box<Col>,
        values: Box<Col>,
    },
}

impl Col {
    fn is_null(&self, i: usize) -> bool {
        match self {
            Col::Leaf { before, .. } => before.is_null(i),
            Col::Struct { nulls, .. } | Col::List { nulls, .. } | Col::Map { nulls, .. } => {
                nulls.as_ref().is_some_and(|n| n.is_null(i))
            }
        }
    }
}

fn leaf_target(kind: &Kind, dt: &DataType) -> DataType {
    match kind {
        Kind::Varint { signed: false, .. } | Kind::Fixed { signed: false, .. } => DataType::UInt64,
        Kind::Varint { .. } | Kind::ZigZag { .. } | Kind::Fixed { .. } => DataType::Int64,
        Kind::Float | Kind::Double => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::String => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Enum(_) if dt.is_integer() => DataType::Int64,
        Kind::Enum(_) => DataType::Utf8,
        Kind::Timestamp => match dt {
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
            _ => DataType::Timestamp(TimeUnit::Nanosecond, None),
        },
        Kind::Message(_) => dt.clone(),
    }
}

fn prepare(array: &ArrayRef, kind: &Kind) -> Result<Col, String> {
    if let Kind::Message(plan) = kind {
        let s = array
            .as_struct_opt()
            .ok_or_else(|| format!("a message needs a struct column, not {}", array.data_type()))?;
        let children = plan
            .fields
            .iter()
            .zip(s.columns())
            .map(|(f, c)| prepare_field(c, f))
            .collect::<Result<_, _>>()?;
        return Ok(Col::Struct {
            nulls: s.nulls().cloned(),
            children,
        });
    }
    let target = leaf_target(kind, array.data_type());
    let values = if array.data_type() == &target {
        array.clone()
    } else {
        arrow_cast::cast::cast(array, &target)
            .map_err(|e| format!("cannot write {} as {target}: {e}", array.data_type()))?
    };
    let before = array
        .logical_nulls()
        .unwrap_or_else(|| NullBuffer::new_valid(array.len()));
    Ok(Col::Leaf { values, before })
}

fn prepare_field(array: &ArrayRef, f: &FieldPlan) -> Result<Col, String> {
    match &f.shape {
        Shape::Single => prepare(array, &f.kind),
        Shape::Repeated => {
            let (offsets, values, nulls) = list_parts(array)?;
            Ok(Col::List {
                nulls,
                offsets,
                values: Box::new(prepare(&values, &f.kind)?),
            })
        }
        Shape::Map(key) => {
            let m = array.as_map_opt().ok_or("a map field needs a map column")?;
            Ok(Col::Map {
                nulls: m.nulls().cloned(),
                offsets: m.offsets().clone(),
                keys: Box::new(prepare(m.keys(), key)?),
                values: Box::new(prepare(m.values(), &f.kind)?),
            })
        }
    }
}

/// A list column as (i32 offsets, values, nulls).
fn list_parts(
    array: &ArrayRef,
) -> Result<(OffsetBuffer<i32>, ArrayRef, Option<NullBuffer>), String> {
    let list = match array.data_type() {
        DataType::List(_) => array.clone(),
        DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            arrow_cast::cast::cast(array, &DataType::List(item.clone()))
                .map_err(|e| format!("cannot read the list column: {e}"))?
        }
        dt => return Err(format!("a repeated field needs a list column, not {dt}")),
    };
    let l = list.as_list::<i32>();
    Ok((l.offsets().clone(), l.values().clone(), l.nulls().cloned()))
}

/// Writes rows of one Arrow schema as messages of one message type.
#[derive(Clone, Debug)]
pub struct ProtoEncoder {
    plan: Arc<MessagePlan>,
    path: Vec<i64>,
}

/// A batch prepared by [`ProtoEncoder::prepare`].
pub struct PreparedRows {
    columns: Vec<Col>,
}

impl ProtoEncoder {
    /// An encoder of rows of `schema` as message `message` of `file` (the first message when
    /// `None`); fails when a column has no field or a type that field cannot hold.
    pub fn new(file: &File, message: Option<&str>, schema: &Schema) -> Result<Self, String> {
        let message = match message {
            Some(m) => m.to_string(),
            None => file
                .first_message()
                .ok_or("the .proto file has no message")?,
        };
        let path = file
            .message_path(&message)
            .ok_or_else(|| format!("message {message} is not in the .proto file"))?;
        let plan = plan_message(file, &message, schema.fields())?;
        Ok(ProtoEncoder {
            plan: Arc::new(plan),
            path,
        })
    }

    /// The message indexes of the message written.
    pub fn path(&self) -> &[i64] {
        &self.path
    }

    /// Casts a batch's columns for writing.
    pub fn prepare(&self, batch: &RecordBatch) -> Result<PreparedRows, String> {
        let columns = self
            .plan
            .fields
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| prepare_field(c, f).map_err(|e| format!("column {}: {e}", f.name)))
            .collect::<Result<_, _>>()?;
        Ok(PreparedRows { columns })
    }

    /// Appends row `row` as one message (no header).
    pub fn encode_row(
        &self,
        rows: &PreparedRows,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        write_message(&self.plan, &rows.columns, row, out)
    }
}

fn write_message(
    plan: &MessagePlan,
    columns: &[Col],
    i: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    for (f, col) in plan.fields.iter().zip(columns) {
        if col.is_null(i) {
            continue;
        }
        write_field(f, col, i, out).map_err(|e| match e.strip_prefix("field ") {
            Some(inner) => format!("field {}.{inner}", f.name),
            None => format!("field {}: {e}", f.name),
        })?;
    }
    Ok(())
}

fn write_field(f: &FieldPlan, col: &Col, i: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match (col, &f.shape) {
        (
            Col::List {
                offsets, values, ..
            },
            Shape::Repeated,
        ) => {
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            if f.kind.packable() {
                let mut packed = Vec::new();
                for j in start..end {
                    if values.is_null(j) {
                        return Err(format!("list element {} is null", j - start));
                    }
                    write_value(&f.kind, values, j, &mut packed)?;
                }
                if !packed.is_empty() {
                    put_len_delimited(out, f.number, &packed);
                }
            } else {
                for j in start..end {
                    if values.is_null(j) {
                        return Err(format!("list element {} is null", j - start));
                    }
                    put_tag(out, f.number, f.kind.wire());
                    write_value(&f.kind, values, j, out)?;
                }
            }
            Ok(())
        }
        (
            Col::Map {
                offsets,
                keys,
                values,
                ..
            },
            Shape::Map(key_kind),
        ) => {
            let mut entry = Vec::new();
            for j in offsets[i] as usize..offsets[i + 1] as usize {
                entry.clear();
                put_tag(&mut entry, 1, key_kind.wire());
                write_value(key_kind, keys, j, &mut entry)?;
                if values.is_null(j) {
                    return Err("a map value is null".into());
                }
                put_tag(&mut entry, 2, f.kind.wire());
                write_value(&f.kind, values, j, &mut entry)?;
                put_len_delimited(out, f.number, &entry);
            }
            Ok(())
        }
        (col, Shape::Single) => {
            put_tag(out, f.number, f.kind.wire());
            write_value(&f.kind, col, i, out)
        }
        _ => Err("the column does not match the field's shape".into()),
    }
}

/// Writes one value (after its tag; length-prefixed where the wire type says so).
fn write_value(kind: &Kind, col: &Col, i: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if let (Kind::Message(plan), Col::Struct { children, .. }) = (kind, col) {
        let mut body = Vec::new();
        write_message(plan, children, i, &mut body)?;
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
        return Ok(());
    }
    let Col::Leaf { values, before } = col else {
        return Err("a nested column where a value was expected".into());
    };
    if values.is_null(i) {
        return Err(if before.is_valid(i) {
            format!("the value is out of range for {}", kind.describe())
        } else {
            "a null where a value is needed".into()
        });
    }
    let range = |v: i128, lo: i128, hi: i128| -> Result<(), String> {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{v} is out of range for {}", kind.describe()))
        }
    };
    let int = |values: &ArrayRef| -> i128 {
        match values.data_type() {
            DataType::UInt64 => i128::from(values.as_primitive::<UInt64Type>().value(i)),
            _ => i128::from(values.as_primitive::<Int64Type>().value(i)),
        }
    };
    match kind {
        Kind::Varint { signed, bits } => {
            let v = int(values);
            match (signed, bits) {
                (true, 32) => range(v, i32::MIN.into(), i32::MAX.into())?,
                (true, _) => range(v, i64::MIN.into(), i64::MAX.into())?,
                (false, 32) => range(v, 0, u32::MAX.into())?,
                (false, _) => range(v, 0, u64::MAX.into())?,
            }
            // Negative int32s are sign-extended to 10 bytes, as protobuf does.
            put_varint(out, if v < 0 { v as i64 as u64 } else { v as u64 });
        }
        Kind::ZigZag { bits } => {
            let v = int(values);
            if *bits == 32 {
                range(v, i32::MIN.into(), i32::MAX.into())?;
            } else {
                range(v, i64::MIN.into(), i64::MAX.into())?;
            }
            put_varint(out, zigzag(v as i64));
        }
        Kind::Fixed { signed, wide } => {
            let v = int(values);
            match (signed, wide) {
                (true, false) => {
                    range(v, i32::MIN.into(), i32::MAX.into())?;
                    out.extend_from_slice(&(v as i32).to_le_bytes());
                }
                (false, false) => {
                    range(v, 0, u32::MAX.into())?;
                    out.extend_from_slice(&(v as u32).to_le_bytes());
                }
                (true, true) => {
                    range(v, i64::MIN.into(), i64::MAX.into())?;
                    out.extend_from_slice(&(v as i64).to_le_bytes());
                }
                (false, true) => {
                    range(v, 0, u64::MAX.into())?;
                    out.extend_from_slice(&(v as u64).to_le_bytes());
                }
            }
        }
        Kind::Float => {
            let v = values.as_primitive::<Float64Type>().value(i);
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        Kind::Double => {
            let v = values.as_primitive::<Float64Type>().value(i);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Kind::Bool => put_varint(out, u64::from(values.as_boolean().value(i))),
        Kind::String => {
            let v = values.as_string::<i32>().value(i);
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        Kind::Bytes => {
            let v = values.as_binary::<i32>().value(i);
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
        Kind::Enum(symbols) => {
            let n = match values.data_type() {
                DataType::Int64 => values.as_primitive::<Int64Type>().value(i),
                _ => {
                    let s = values.as_string::<i32>().value(i);
                    *symbols
                        .get(s)
                        .ok_or_else(|| format!("{s:?} is not a symbol of the enum"))?
                }
            };
            range(n.into(), i32::MIN.into(), i32::MAX.into())?;
            put_varint(out, n as u64);
        }
        Kind::Timestamp => {
            let nanos = values
                .as_primitive::<arrow_array::types::TimestampNanosecondType>()
                .value(i);
            let (secs, sub) = (
                nanos.div_euclid(1_000_000_000),
                nanos.rem_euclid(1_000_000_000),
            );
            let mut body = Vec::with_capacity(16);
            if secs != 0 {
                put_tag(&mut body, 1, 0);
                put_varint(&mut body, secs as u64);
            }
            if sub != 0 {
                put_tag(&mut body, 2, 0);
                put_varint(&mut body, sub as u64);
            }
            put_varint(out, body.len() as u64);
            out.extend_from_slice(&body);
        }
        Kind::Message(_) => unreachable!("handled above"),
    }
    Ok(())
}

// ---- decoding ------------------------------------------------------------------------------

/// Reads messages of one schema into JSON values.
#[derive(Clone, Debug)]
pub struct ProtoDecoder {
    file: Arc<File>,
}

impl ProtoDecoder {
    /// A decoder for messages of `file`.
    pub fn new(file: File) -> Self {
        ProtoDecoder {
            file: Arc::new(file),
        }
    }

    /// Decodes `body` (after the wire-format header) into a JSON object: the message at the
    /// leading message indexes.
    pub fn decode(&self, mut body: &[u8]) -> Result<Value, String> {
        let path = read_indexes(&mut body)?;
        let message = self
            .file
            .message_at(&path)
            .ok_or_else(|| format!("no message at indexes {path:?} in the schema"))?;
        self.message(message, body, 0)
    }

    /// The Arrow schema of the JSON [`ProtoDecoder::decode`] makes of `body`'s message type
    /// (`None` when `body` has no valid message indexes): every column nullable; 32-bit
    /// integers `Int32`/`UInt32`, 64-bit `Int64`/`UInt64`; enums and `bytes` (base64) text;
    /// Timestamps `Timestamp(ns, UTC)`; messages structs; repeated fields lists; maps maps with
    /// text keys.
    pub fn arrow_schema(&self, mut body: &[u8]) -> Option<Schema> {
        let path = read_indexes(&mut body).ok()?;
        let name = self.file.message_at(&path)?;
        Some(Schema::new(self.arrow_fields(name, 0)?))
    }

    fn arrow_fields(&self, name: &str, depth: usize) -> Option<Fields> {
        if depth > 32 {
            return None;
        }
        let msg = self.file.messages.get(name)?;
        let mut out = Vec::with_capacity(msg.fields.len());
        for f in msg.fields.values() {
            let entry = match &f.ty {
                FieldType::Named(n) => self.file.messages.get(n).filter(|m| m.map_entry),
                FieldType::Scalar(_) => None,
            };
            let dt = if let Some(e) = entry {
                let value = self.arrow_type(&e.fields.get(&2)?.ty, depth)?;
                let entries = Fields::from(vec![
                    arrow_schema::Field::new("key", DataType::Utf8, false),
                    arrow_schema::Field::new("value", value, true),
                ]);
                DataType::Map(
                    Arc::new(arrow_schema::Field::new(
                        "entries",
                        DataType::Struct(entries),
                        false,
                    )),
                    false,
                )
            } else if f.label == Label::Repeated {
                DataType::List(Arc::new(arrow_schema::Field::new(
                    "item",
                    self.arrow_type(&f.ty, depth)?,
                    true,
                )))
            } else {
                self.arrow_type(&f.ty, depth)?
            };
            out.push(arrow_schema::Field::new(&f.name, dt, true));
        }
        Some(out.into())
    }

    fn arrow_type(&self, ty: &FieldType, depth: usize) -> Option<DataType> {
        Some(match ty {
            FieldType::Scalar(s) => match s.as_str() {
                "int32" | "sint32" | "sfixed32" => DataType::Int32,
                "int64" | "sint64" | "sfixed64" => DataType::Int64,
                "uint32" | "fixed32" => DataType::UInt32,
                "uint64" | "fixed64" => DataType::UInt64,
                "float" => DataType::Float32,
                "double" => DataType::Float64,
                "bool" => DataType::Boolean,
                _ => DataType::Utf8,
            },
            // UTC as an offset: arrow-json reads named zones only with chrono-tz.
            FieldType::Named(n) if n == TIMESTAMP => {
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
            }
            FieldType::Named(n) if self.file.enums.contains_key(n) => DataType::Utf8,
            FieldType::Named(n) => DataType::Struct(self.arrow_fields(n, depth + 1)?),
        })
    }

    fn message(&self, name: &str, body: &[u8], depth: usize) -> Result<Value, String> {
        if depth > 64 {
            return Err("messages nested more than 64 deep".into());
        }
        let msg = self
            .file
            .messages
            .get(name)
            .ok_or_else(|| format!("message {name} is not in the schema"))?;
        let raws = raw_fields(body)?;
        let mut out = Map::new();
        for (number, f) in &msg.fields {
            let mut occurrences = raws.iter().filter(|(n, _)| i64::from(*n) == *number);
            let at = |e: String| format!("field {}: {e}", f.name);
            let entry = match &f.ty {
                FieldType::Named(n) => self.file.messages.get(n).filter(|m| m.map_entry),
                FieldType::Scalar(_) => None,
            };
            let value = if let Some(e) = entry {
                let mut map = Map::new();
                for (_, raw) in occurrences {
                    let Raw::Bytes(b) = raw else {
                        return Err(at("a map entry that is not a message".into()));
                    };
                    let mut key = Value::Null;
                    let mut value = Value::Null;
                    for (k, r) in raw_fields(b).map_err(at)? {
                        match (k, e.fields.get(&i64::from(k))) {
                            (1, Some(kf)) => key = self.scalar(&kf.ty, &r, depth).map_err(at)?,
                            (2, Some(vf)) => value = self.scalar(&vf.ty, &r, depth).map_err(at)?,
                            _ => {}
                        }
                    }
                    let key = match key {
                        Value::String(s) => s,
                        Value::Null => match e.fields.get(&1).map(|k| &k.ty) {
                            Some(FieldType::Scalar(s)) if s == "string" => String::new(),
                            Some(FieldType::Scalar(s)) if s == "bool" => "false".into(),
                            _ => "0".into(),
                        },
                        other => other.to_string(),
                    };
                    if value.is_null() {
                        if let Some(vf) = e.fields.get(&2) {
                            value = self.default(&vf.ty);
                        }
                    }
                    map.insert(key, value);
                }
                Value::Object(map)
            } else if f.label == Label::Repeated {
                let mut items = Vec::new();
                for (_, raw) in occurrences {
                    match (raw, &f.ty) {
                        // Packed scalars: several values in one length-delimited field.
                        (Raw::Bytes(b), FieldType::Scalar(s)) if s != "string" && s != "bytes" => {
                            let mut b: &[u8] = b;
                            while !b.is_empty() {
                                let r = match s.as_str() {
                                    "double" | "fixed64" | "sfixed64" => {
                                        let (v, rest) = b
                                            .split_first_chunk::<8>()
                                            .ok_or_else(|| at("truncated packed field".into()))?;
                                        b = rest;
                                        Raw::Fixed64(*v)
                                    }
                                    "float" | "fixed32" | "sfixed32" => {
                                        let (v, rest) = b
                                            .split_first_chunk::<4>()
                                            .ok_or_else(|| at("truncated packed field".into()))?;
                                        b = rest;
                                        Raw::Fixed32(*v)
                                    }
                                    _ => Raw::Varint(get_varint(&mut b).map_err(at)?),
                                };
                                items.push(self.scalar(&f.ty, &r, depth).map_err(at)?);
                            }
                        }
                        (Raw::Bytes(b), FieldType::Named(n)) if self.file.enums.contains_key(n) => {
                            let mut b: &[u8] = b;
                            while !b.is_empty() {
                                let r = Raw::Varint(get_varint(&mut b).map_err(at)?);
                                items.push(self.scalar(&f.ty, &r, depth).map_err(at)?);
                            }
                        }
                        (raw, ty) => items.push(self.scalar(ty, raw, depth).map_err(at)?),
                    }
                }
                Value::Array(items)
            } else {
                match occurrences.next_back() {
                    Some((_, raw)) => self.scalar(&f.ty, raw, depth).map_err(at)?,
                    None if f.presence || self.is_message(&f.ty) => Value::Null,
                    None => self.default(&f.ty),
                }
            };
            out.insert(f.name.clone(), value);
        }
        Ok(Value::Object(out))
    }

    fn is_message(&self, ty: &FieldType) -> bool {
        matches!(ty, FieldType::Named(n) if n == TIMESTAMP || self.file.messages.contains_key(n))
    }

    /// The value of an absent implicit-presence field.
    fn default(&self, ty: &FieldType) -> Value {
        match ty {
            FieldType::Scalar(s) => match s.as_str() {
                "string" | "bytes" => Value::String(String::new()),
                "bool" => Value::Bool(false),
                "float" | "double" => serde_json::json!(0.0),
                _ => serde_json::json!(0),
            },
            FieldType::Named(n) => match self.file.enums.get(n) {
                Some(values) => values
                    .iter()
                    .find(|(_, v)| *v == 0)
                    .or(values.first())
                    .map_or(serde_json::json!(0), |(s, _)| Value::String(s.clone())),
                None => Value::Null,
            },
        }
    }

    fn scalar(&self, ty: &FieldType, raw: &Raw<'_>, depth: usize) -> Result<Value, String> {
        let wrong = |t: &str| format!("a {t} value with the wrong wire type");
        Ok(match ty {
            FieldType::Scalar(s) => match (s.as_str(), raw) {
                ("int32", Raw::Varint(v)) => Value::from(*v as i32),
                ("int64", Raw::Varint(v)) => Value::from(*v as i64),
                ("uint32", Raw::Varint(v)) => Value::from(*v as u32),
                ("uint64", Raw::Varint(v)) => Value::from(*v),
                ("sint32", Raw::Varint(v)) => Value::from(unzigzag(*v) as i32),
                ("sint64", Raw::Varint(v)) => Value::from(unzigzag(*v)),
                ("bool", Raw::Varint(v)) => Value::Bool(*v != 0),
                ("fixed32", Raw::Fixed32(b)) => Value::from(u32::from_le_bytes(*b)),
                ("sfixed32", Raw::Fixed32(b)) => Value::from(i32::from_le_bytes(*b)),
                ("fixed64", Raw::Fixed64(b)) => Value::from(u64::from_le_bytes(*b)),
                ("sfixed64", Raw::Fixed64(b)) => Value::from(i64::from_le_bytes(*b)),
                ("float", Raw::Fixed32(b)) => float(f64::from(f32::from_le_bytes(*b))),
                ("double", Raw::Fixed64(b)) => float(f64::from_le_bytes(*b)),
                ("string", Raw::Bytes(b)) => Value::String(
                    std::str::from_utf8(b)
                        .map_err(|_| "a string that is not UTF-8".to_string())?
                        .to_string(),
                ),
                ("bytes", Raw::Bytes(b)) => {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
                }
                (t, _) => return Err(wrong(t)),
            },
            FieldType::Named(n) if n == TIMESTAMP => {
                let Raw::Bytes(b) = raw else {
                    return Err(wrong("Timestamp"));
                };
                let (mut secs, mut nanos) = (0i64, 0i64);
                for (k, r) in raw_fields(b)? {
                    match (k, r) {
                        (1, Raw::Varint(v)) => secs = v as i64,
                        (2, Raw::Varint(v)) => nanos = i64::from(v as i32),
                        _ => {}
                    }
                }
                Value::String(rfc3339(secs, nanos)?)
            }
            FieldType::Named(n) => {
                if let Some(values) = self.file.enums.get(n) {
                    let Raw::Varint(v) = raw else {
                        return Err(wrong("enum"));
                    };
                    let v = i64::from(*v as i32);
                    match values.iter().find(|(_, x)| *x == v) {
                        Some((s, _)) => Value::String(s.clone()),
                        // An open enum keeps numbers it does not know.
                        None => Value::from(v),
                    }
                } else {
                    let Raw::Bytes(b) = raw else {
                        return Err(wrong("message"));
                    };
                    self.message(n, b, depth + 1)?
                }
            }
        })
    }
}

/// JSON has no NaN or infinities: they travel as text.
fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

/// `seconds` + `nanos` since the epoch as RFC 3339 in UTC (`2024-01-02T03:04:05.123456789Z`).
fn rfc3339(seconds: i64, nanos: i64) -> Result<String, String> {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let ns = i64::try_from(total).map_err(|_| "a Timestamp out of range".to_string())?;
    let dt = arrow_array::temporal_conversions::timestamp_ns_to_datetime(ns)
        .ok_or("a Timestamp out of range")?;
    Ok(dt.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
}

#[cfg(test)]
mod tests;
