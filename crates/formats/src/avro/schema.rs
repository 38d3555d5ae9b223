//! Avro schemas as the codec needs them: parsed with their logical types, derived from an
//! Arrow schema (the sink), and turned into an Arrow schema (the source).

use std::collections::HashMap;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use serde_json::{json, Map, Value};

/// An Avro type, with the logical types the codec maps to Arrow types.
#[derive(Clone, Debug, PartialEq)]
pub enum AvroType {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int`
    Int,
    /// `long`
    Long,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `bytes`
    Bytes,
    /// `string`
    String,
    /// `int` with logicalType `date` (days since 1970-01-01).
    Date,
    /// `int` with logicalType `time-millis`.
    TimeMillis,
    /// `long` with logicalType `time-micros`.
    TimeMicros,
    /// `long` with logicalType `timestamp-*` (`utc`) or `local-timestamp-*` (not `utc`).
    Timestamp {
        /// Milli, micro or nanoseconds.
        unit: TimeUnit,
        /// An instant (`timestamp-*`) rather than a wall-clock time (`local-timestamp-*`).
        utc: bool,
    },
    /// `bytes` or `fixed` with logicalType `decimal`: a big-endian two's-complement unscaled
    /// integer.
    Decimal {
        /// Digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
        /// The `fixed` size, when it is a fixed.
        fixed: Option<usize>,
    },
    /// `string` with logicalType `uuid`.
    Uuid,
    /// `fixed`: exactly `size` bytes.
    Fixed {
        /// Full name.
        name: String,
        /// Bytes.
        size: usize,
    },
    /// `enum`.
    Enum {
        /// Full name.
        name: String,
        /// Symbols in order.
        symbols: Vec<String>,
    },
    /// `array` of items.
    Array(Box<AvroType>),
    /// `map` (string keys) of values.
    Map(Box<AvroType>),
    /// `record`.
    Record(Record),
    /// A union of branches.
    Union(Vec<AvroType>),
}

/// A record type.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Full name.
    pub name: String,
    /// Fields in order.
    pub fields: Vec<AvroField>,
}

/// A record field.
#[derive(Clone, Debug, PartialEq)]
pub struct AvroField {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: AvroType,
    /// Default value (JSON, as in the schema).
    pub default: Option<Value>,
}

impl AvroType {
    /// `["null", T]` (either order): T.
    pub fn nullable_branch(&self) -> Option<(usize, &AvroType)> {
        match self {
            AvroType::Union(b) if b.len() == 2 => match (&b[0], &b[1]) {
                (AvroType::Null, t) if *t != AvroType::Null => Some((0, t)),
                (t, AvroType::Null) if *t != AvroType::Null => Some((1, t)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The Arrow type values of this type decode to (nullability: see [`to_arrow`]).
    ///
    /// Unions other than `["null", T]` become text holding the value as JSON.
    pub fn arrow_type(&self) -> Result<DataType, String> {
        Ok(match self {
            AvroType::Null => DataType::Null,
            AvroType::Boolean => DataType::Boolean,
            AvroType::Int => DataType::Int32,
            AvroType::Long => DataType::Int64,
            AvroType::Float => DataType::Float32,
            AvroType::Double => DataType::Float64,
            AvroType::Bytes => DataType::Binary,
            AvroType::String | AvroType::Uuid | AvroType::Enum { .. } => DataType::Utf8,
            AvroType::Date => DataType::Date32,
            AvroType::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
            AvroType::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
            AvroType::Timestamp { unit, utc } => {
                DataType::Timestamp(*unit, utc.then(|| "UTC".into()))
            }
            AvroType::Decimal {
                precision, scale, ..
            } => {
                if *precision > 38 {
                    return Err(format!(
                        "decimal({precision}, {scale}) has more than 38 digits (not supported)"
                    ));
                }
                DataType::Decimal128(*precision, *scale)
            }
            AvroType::Fixed { size, .. } => DataType::FixedSizeBinary(*size as i32),
            AvroType::Array(items) => {
                DataType::List(Field::new("item", items.value_type()?, true).into())
            }
            AvroType::Map(values) => DataType::Map(
                Field::new(
                    "entries",
                    DataType::Struct(
                        vec![
                            Field::new("key", DataType::Utf8, false),
                            Field::new("value", values.value_type()?, true),
                        ]
                        .into(),
                    ),
                    false,
                )
                .into(),
                false,
            ),
            AvroType::Record(r) => DataType::Struct(r.arrow_fields()?),
            AvroType::Union(_) => match self.nullable_branch() {
                Some((_, t)) => t.arrow_type()?,
                None => DataType::Utf8,
            },
        })
    }

    /// The Arrow type of a value in a container (a union's null branch removed).
    fn value_type(&self) -> Result<DataType, String> {
        self.arrow_type()
    }
}

impl Record {
    /// Arrow fields, every one nullable (a later writer schema may leave any field out).
    pub fn arrow_fields(&self) -> Result<Fields, String> {
        self.fields
            .iter()
            .map(|f| {
                f.ty.arrow_type()
                    .map(|t| Field::new(&f.name, t, true))
                    .map_err(|e| format!("field {}: {e}", f.name))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Fields::from)
    }
}

/// The Arrow schema records of `root` (a record) decode to.
pub fn to_arrow(root: &AvroType) -> Result<Schema, String> {
    match root {
        AvroType::Record(r) => Ok(Schema::new(r.arrow_fields()?)),
        other => Err(format!(
            "the schema's root is {}, not a record: only records become rows",
            describe(other)
        )),
    }
}

fn describe(t: &AvroType) -> String {
    match t {
        AvroType::Record(r) => format!("record {}", r.name),
        AvroType::Union(_) => "a union".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses an Avro schema (JSON text) with its logical types. Named types may be referred to
/// by name after their definition; recursive types are refused (they have no Arrow type).
pub fn parse(text: &str) -> Result<AvroType, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    Parser::default().parse(&value, None)
}

#[derive(Default)]
struct Parser {
    named: HashMap<String, Option<AvroType>>,
}

fn full_name(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !ns.is_empty() && !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

impl Parser {
    fn parse(&mut self, v: &Value, ns: Option<&str>) -> Result<AvroType, String> {
        match v {
            Value::String(s) => self.by_name(s, ns),
            Value::Array(branches) => Ok(AvroType::Union(
                branches
                    .iter()
                    .map(|b| self.parse(b, ns))
                    .collect::<Result<_, _>>()?,
            )),
            Value::Object(m) => self.parse_object(m, ns),
            other => Err(format!("{other} is not a schema")),
        }
    }

    fn by_name(&mut self, s: &str, ns: Option<&str>) -> Result<AvroType, String> {
        Ok(match s {
            "null" => AvroType::Null,
            "boolean" => AvroType::Boolean,
            "int" => AvroType::Int,
            "long" => AvroType::Long,
            "float" => AvroType::Float,
            "double" => AvroType::Double,
            "bytes" => AvroType::Bytes,
            "string" => AvroType::String,
            name => {
                let found = self
                    .named
                    .get(&full_name(name, ns))
                    .or_else(|| self.named.get(name));
                match found {
                    Some(Some(t)) => t.clone(),
                    Some(None) => {
                        return Err(format!(
                            "the type {name} refers to itself (recursive types have no Arrow type)"
                        ))
                    }
                    None => return Err(format!("unknown type {name:?}")),
                }
            }
        })
    }

    fn parse_object(
        &mut self,
        m: &Map<String, Value>,
        ns: Option<&str>,
    ) -> Result<AvroType, String> {
        let ty = m.get("type").ok_or("a schema object has no \"type\"")?;
        let logical = m.get("logicalType").and_then(Value::as_str);
        let Value::String(ty) = ty else {
            return self.parse(ty, ns);
        };
        let base = match ty.as_str() {
            "record" | "error" | "enum" | "fixed" => return self.parse_named(ty, m, ns, logical),
            "array" => AvroType::Array(Box::new(
                self.parse(m.get("items").ok_or("an array has no \"items\"")?, ns)?,
            )),
            "map" => AvroType::Map(Box::new(
                self.parse(m.get("values").ok_or("a map has no \"values\"")?, ns)?,
            )),
            other => self.by_name(other, ns)?,
        };
        // Unknown or misplaced logical types are ignored, as the specification says.
        Ok(match (logical, &base) {
            (Some("date"), AvroType::Int) => AvroType::Date,
            (Some("time-millis"), AvroType::Int) => AvroType::TimeMillis,
            (Some("time-micros"), AvroType::Long) => AvroType::TimeMicros,
            (Some(l), AvroType::Long) if timestamp(l).is_some() => {
                let (unit, utc) = timestamp(l).expect("checked");
                AvroType::Timestamp { unit, utc }
            }
            (Some("uuid"), AvroType::String) => AvroType::Uuid,
            (Some("decimal"), AvroType::Bytes) => decimal(m, None).unwrap_or(base),
            _ => base,
        })
    }

    fn parse_named(
        &mut self,
        kind: &str,
        m: &Map<String, Value>,
        ns: Option<&str>,
        logical: Option<&str>,
    ) -> Result<AvroType, String> {
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a {kind} has no name"))?;
        let ns = match m.get("namespace").and_then(Value::as_str) {
            Some(n) => Some(n),
            None => ns,
        };
        let full = full_name(name, ns);
        let inner_ns = full.rsplit_once('.').map(|(n, _)| n.to_string());
        self.named.insert(full.clone(), None);
        let t = match kind {
            "record" | "error" => {
                let fields = m
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("record {full} has no fields"))?;
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    let fname = f
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("record {full}: a field has no name"))?;
                    let ty = self
                        .parse(
                            f.get("type").ok_or_else(|| {
                                format!("record {full}: field {fname} has no type")
                            })?,
                            inner_ns.as_deref(),
                        )
                        .map_err(|e| format!("{full}.{fname}: {e}"))?;
                    out.push(AvroField {
                        name: fname.to_string(),
                        ty,
                        default: f.get("default").cloned(),
                    });
                }
                AvroType::Record(Record {
                    name: full.clone(),
                    fields: out,
                })
            }
            "enum" => AvroType::Enum {
                name: full.clone(),
                symbols: m
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("enum {full} has no symbols"))?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or("a symbol is not a string")
                    })
                    .collect::<Result<_, _>>()?,
            },
            _ => {
                let size = m
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("fixed {full} has no size"))?
                    as usize;
                match logical {
                    Some("decimal") => decimal(m, Some(size)).unwrap_or(AvroType::Fixed {
                        name: full.clone(),
                        size,
                    }),
                    _ => AvroType::Fixed {
                        name: full.clone(),
                        size,
                    },
                }
            }
        };
        self.named.insert(full, Some(t.clone()));
        Ok(t)
    }
}

fn timestamp(logical: &str) -> Option<(TimeUnit, bool)> {
    Some(match logical {
        "timestamp-millis" => (TimeUnit::Millisecond, true),
        "timestamp-micros" => (TimeUnit::Microsecond, true),
        "timestamp-nanos" => (TimeUnit::Nanosecond, true),
        "local-timestamp-millis" => (TimeUnit::Millisecond, false),
        "local-timestamp-micros" => (TimeUnit::Microsecond, false),
        "local-timestamp-nanos" => (TimeUnit::Nanosecond, false),
        _ => return None,
    })
}

fn decimal(m: &Map<String, Value>, fixed: Option<usize>) -> Option<AvroType> {
    let precision = m.get("precision")?.as_u64()?;
    let scale = m.get("scale").and_then(Value::as_u64).unwrap_or(0);
    ((1..=76).contains(&precision) && scale <= precision).then_some(AvroType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
        fixed,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The Avro schema (JSON) of rows of an Arrow schema: a record named `name` (a full name,
/// `shop.Order`), one field per column in order. Nullable columns become `["null", T]` with
/// default `null` (so adding one is a compatible change under every level); timestamps
/// `timestamp-millis|micros|nanos` (with a time zone: instants) or `local-timestamp-*`
/// (without); decimals `bytes` with logicalType `decimal`; lists arrays; structs records
/// (named `<parent>_<field>`); maps with text keys maps; dates `date`; times `time-millis` /
/// `time-micros`.
pub fn from_arrow(schema: &Schema, name: &str) -> Result<Value, String> {
    for part in name.split('.') {
        if !valid_name(part) {
            return Err(format!("{name:?} is not a valid Avro record name"));
        }
    }
    let (namespace, short) = match name.rsplit_once('.') {
        Some((ns, s)) => (Some(ns), s),
        None => (None, name),
    };
    let mut record = record_json(schema.fields(), short)?;
    if let Some(ns) = namespace {
        record["namespace"] = json!(ns);
    }
    Ok(record)
}

fn record_json(fields: &Fields, name: &str) -> Result<Value, String> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        if !valid_name(f.name()) {
            return Err(format!(
                "column {:?} is not a valid Avro field name (letters, digits and _, not \
                 starting with a digit): rename it, or give the sink a schema",
                f.name()
            ));
        }
        let ty = type_json(f.data_type(), &format!("{name}_{}", f.name()))
            .map_err(|e| format!("column {:?}: {e}", f.name()))?;
        if f.is_nullable() && *f.data_type() != DataType::Null {
            out.push(json!({"name": f.name(), "type": ["null", ty], "default": null}));
        } else {
            out.push(json!({"name": f.name(), "type": ty}));
        }
    }
    Ok(json!({"type": "record", "name": name, "fields": out}))
}

fn type_json(dt: &DataType, name: &str) -> Result<Value, String> {
    use DataType::*;
    let logical = |base: &str, l: &str| json!({"type": base, "logicalType": l});
    Ok(match dt {
        Null => json!("null"),
        Boolean => json!("boolean"),
        Int8 | Int16 | Int32 | UInt8 | UInt16 => json!("int"),
        Int64 | UInt32 | UInt64 => json!("long"),
        Float16 | Float32 => json!("float"),
        Float64 => json!("double"),
        Utf8 | LargeUtf8 | Utf8View => json!("string"),
        Binary | LargeBinary | BinaryView => json!("bytes"),
        FixedSizeBinary(n) => json!({"type": "fixed", "name": name, "size": n}),
        Date32 | Date64 => logical("int", "date"),
        Time32(_) => logical("int", "time-millis"),
        Time64(_) => logical("long", "time-micros"),
        Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second | TimeUnit::Millisecond => "millis",
                TimeUnit::Microsecond => "micros",
                TimeUnit::Nanosecond => "nanos",
            };
            let local = if tz.is_some() { "" } else { "local-" };
            logical("long", &format!("{local}timestamp-{unit}"))
        }
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
        }
        List(item)
        | LargeList(item)
        | ListView(item)
        | LargeListView(item)
        | FixedSizeList(item, _) => {
            let t = type_json(item.data_type(), &format!("{name}_item"))?;
            let t = if item.is_nullable() {
                json!(["null", t])
            } else {
                t
            };
            json!({"type": "array", "items": t})
        }
        Struct(fields) => record_json(fields, name)?,
        Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err("a map without key/value entries".into());
            };
            if !matches!(kv[0].data_type(), Utf8 | LargeUtf8 | Utf8View) {
                return Err(format!(
                    "map keys are {}, Avro maps have text keys",
                    kv[0].data_type()
                ));
            }
            let t = type_json(kv[1].data_type(), &format!("{name}_value"))?;
            let t = if kv[1].is_nullable() {
                json!(["null", t])
            } else {
                t
            };
            json!({"type": "map", "values": t})
        }
        Dictionary(_, v) => type_json(v, name)?,
        other => return Err(format!("{other} has no Avro type here")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_schemas_derive_avro_schemas_that_parse_back() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new(
                "tags",
                DataType::List(Field::new("item", DataType::Utf8, true).into()),
                true,
            ),
            Field::new(
                "address",
                DataType::Struct(vec![Field::new("city", DataType::Utf8, false)].into()),
                true,
            ),
        ]);
        let avro = from_arrow(&schema, "shop.Order").unwrap();
        assert_eq!(avro["name"], "Order");
        assert_eq!(avro["namespace"], "shop");
        assert_eq!(avro["fields"][1]["type"], json!(["null", "string"]));
        assert_eq!(avro["fields"][1]["default"], Value::Null);
        let parsed = parse(&avro.to_string()).unwrap();
        let back = to_arrow(&parsed).unwrap();
        let types: Vec<_> = back
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types[0], DataType::Int64);
        assert_eq!(
            types[2],
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(types[3], DataType::Decimal128(10, 2));
        assert!(matches!(&types[5], DataType::Struct(f) if f[0].name() == "city"));
        assert!(from_arrow(
            &Schema::new(vec![Field::new("a-b", DataType::Int64, true)]),
            "R"
        )
        .unwrap_err()
        .contains("\"a-b\""));
    }

    #[test]
    fn named_types_are_reused_by_name_and_recursion_is_refused() {
        let t = parse(
            r#"{"type":"record","name":"A","namespace":"n","fields":[
                {"name":"x","type":{"type":"fixed","name":"F","size":4}},
                {"name":"y","type":"F"}]}"#,
        )
        .unwrap();
        let AvroType::Record(r) = t else { panic!() };
        assert_eq!(r.fields[0].ty, r.fields[1].ty);
        assert!(parse(
            r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#
        )
        .unwrap_err()
        .contains("refers to itself"));
    }
}
