//! Avro binary → values → Arrow arrays.
//!
//! Each record is decoded on its own into an [`AvroValue`] tree first, so a record that is
//! truncated or does not match its writer schema is refused alone (dead letter) and the
//! others of the batch become rows; the columns are then built from the values at once.

use std::sync::Arc;

use arrow_array::builder::{BooleanBufferBuilder, StringBuilder};
use arrow_array::*;
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, TimeUnit};
use serde_json::{json, Value};

use super::schema::{AvroType, Record};

/// One decoded Avro value, as the writer schema had it.
#[derive(Clone, Debug, PartialEq)]
pub enum AvroValue {
    /// `null`
    Null,
    /// `boolean`
    Boolean(bool),
    /// `int` (and `date`, `time-millis`)
    Int(i32),
    /// `long` (and times, timestamps)
    Long(i64),
    /// `float`
    Float(f32),
    /// `double`
    Double(f64),
    /// `bytes`, `fixed`, decimals
    Bytes(Vec<u8>),
    /// `string`, `uuid`
    String(String),
    /// An enum symbol's index.
    Enum(usize),
    /// `array`
    Array(Vec<AvroValue>),
    /// `map`
    Map(Vec<(String, AvroValue)>),
    /// `record`: the fields in schema order.
    Record(Vec<AvroValue>),
    /// A union: the branch and its value.
    Union(usize, Box<AvroValue>),
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err(format!(
                "truncated: {n} byte(s) needed at byte {} of {}",
                self.at,
                self.b.len()
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.take(1)?.first().expect("one byte");
            if shift >= 64 {
                return Err(format!("a varint longer than 10 bytes at byte {}", self.at));
            }
            n |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        if n < 0 || n as usize > self.b.len() - self.at {
            return Err(format!(
                "truncated: a length of {n} at byte {} runs past the end ({} bytes)",
                self.at,
                self.b.len()
            ));
        }
        Ok(n as usize)
    }

    /// A block count (negative: followed by the block's size in bytes, which is skipped).
    fn block(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        if n < 0 {
            self.long()?;
            return Ok(n.unsigned_abs() as usize);
        }
        // Every item takes at least one byte, except nulls and empty records: bound it.
        if n as usize > (self.b.len() - self.at).max(1) * 8 + 1024 {
            return Err(format!(
                "a block of {n} items at byte {} is not credible",
                self.at
            ));
        }
        Ok(n as usize)
    }
}

/// Decodes one record body (no framing) written with `ty`; every byte must be used.
pub fn decode(ty: &AvroType, bytes: &[u8]) -> Result<AvroValue, String> {
    let mut r = Reader { b: bytes, at: 0 };
    let v = value(ty, &mut r)?;
    if r.at != bytes.len() {
        return Err(format!(
            "{} byte(s) left over after the record (the payload does not match its schema)",
            bytes.len() - r.at
        ));
    }
    Ok(v)
}

fn value(t: &AvroType, r: &mut Reader<'_>) -> Result<AvroValue, String> {
    Ok(match t {
        AvroType::Null => AvroValue::Null,
        AvroType::Boolean => match r.take(1)?[0] {
            0 => AvroValue::Boolean(false),
            1 => AvroValue::Boolean(true),
            b => return Err(format!("{b} is not a boolean")),
        },
        AvroType::Int | AvroType::Date | AvroType::TimeMillis => {
            let v = r.long()?;
            AvroValue::Int(i32::try_from(v).map_err(|_| format!("{v} does not fit an int"))?)
        }
        AvroType::Long | AvroType::TimeMicros | AvroType::Timestamp { .. } => {
            AvroValue::Long(r.long()?)
        }
        AvroType::Float => {
            AvroValue::Float(f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")))
        }
        AvroType::Double => {
            AvroValue::Double(f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")))
        }
        AvroType::Bytes | AvroType::Decimal { fixed: None, .. } => {
            let n = r.len()?;
            AvroValue::Bytes(r.take(n)?.to_vec())
        }
        AvroType::Fixed { size, .. }
        | AvroType::Decimal {
            fixed: Some(size), ..
        } => AvroValue::Bytes(r.take(*size)?.to_vec()),
        AvroType::String | AvroType::Uuid => {
            let n = r.len()?;
            let at = r.at;
            let s = std::str::from_utf8(r.take(n)?)
                .map_err(|e| format!("a string at byte {at} is not UTF-8: {e}"))?;
            AvroValue::String(s.to_string())
        }
        AvroType::Enum { symbols, name } => {
            let i = r.long()?;
            if i < 0 || i as usize >= symbols.len() {
                return Err(format!("{i} is not a symbol index of enum {name}"));
            }
            AvroValue::Enum(i as usize)
        }
        AvroType::Array(items) => {
            let mut out = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    out.push(value(items, r)?);
                }
            }
            AvroValue::Array(out)
        }
        AvroType::Map(values) => {
            let mut out = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let k = match value(&AvroType::String, r)? {
                        AvroValue::String(s) => s,
                        _ => unreachable!("strings decode to strings"),
                    };
                    out.push((k, value(values, r)?));
                }
            }
            AvroValue::Map(out)
        }
        AvroType::Record(rec) => AvroValue::Record(
            rec.fields
                .iter()
                .map(|f| value(&f.ty, r).map_err(|e| format!("field {}: {e}", f.name)))
                .collect::<Result<_, _>>()?,
        ),
        AvroType::Union(branches) => {
            let i = r.long()?;
            let b = usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| format!("{i} is not a branch of the union"))?;
            AvroValue::Union(i as usize, Box::new(value(b, r)?))
        }
    })
}

/// The rows of values of record type `root` as a struct array (one row per value).
pub fn build_records(root: &Record, values: &[&AvroValue]) -> Result<StructArray, String> {
    let vals: Vec<Option<&AvroValue>> = values.iter().map(|v| Some(*v)).collect();
    let a = build(&AvroType::Record(root.clone()), &vals)?;
    Ok(a.as_any()
        .downcast_ref::<StructArray>()
        .expect("records build structs")
        .clone())
}

fn nulls(vals: &[Option<&AvroValue>]) -> Option<NullBuffer> {
    if vals.iter().all(Option::is_some) {
        return None;
    }
    let mut b = BooleanBufferBuilder::new(vals.len());
    for v in vals {
        b.append(v.is_some());
    }
    Some(NullBuffer::new(b.finish()))
}

fn int(v: &AvroValue) -> i32 {
    match v {
        AvroValue::Int(i) => *i,
        _ => 0,
    }
}
fn long(v: &AvroValue) -> i64 {
    match v {
        AvroValue::Long(i) => *i,
        _ => 0,
    }
}
fn bytes(v: &AvroValue) -> &[u8] {
    match v {
        AvroValue::Bytes(b) => b,
        _ => &[],
    }
}

/// A big-endian two's-complement integer (any length up to 16 bytes) as an i128.
fn be_i128(b: &[u8]) -> Result<i128, String> {
    if b.len() > 16 {
        let (head, tail) = b.split_at(b.len() - 16);
        let fill = if tail[0] & 0x80 != 0 { 0xff } else { 0 };
        if head.iter().any(|x| *x != fill) {
            return Err("a decimal larger than 38 digits".into());
        }
        return be_i128(tail);
    }
    if b.is_empty() {
        return Ok(0);
    }
    let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - b.len()..].copy_from_slice(b);
    Ok(i128::from_be_bytes(buf))
}

/// Builds the array of values of type `t` (`None`: null).
pub fn build(t: &AvroType, vals: &[Option<&AvroValue>]) -> Result<ArrayRef, String> {
    let dt = t.arrow_type()?;
    Ok(match t {
        AvroType::Union(branches) => match t.nullable_branch() {
            Some((null_index, inner)) => {
                let inner_vals: Vec<Option<&AvroValue>> = vals
                    .iter()
                    .map(|v| match v {
                        Some(AvroValue::Union(i, v)) if *i != null_index => Some(v.as_ref()),
                        _ => None,
                    })
                    .collect();
                build(inner, &inner_vals)?
            }
            None => {
                // A general union: the value as JSON text.
                let mut b = StringBuilder::new();
                for v in vals {
                    match v {
                        Some(AvroValue::Union(i, inner)) if branches[*i] != AvroType::Null => {
                            b.append_value(to_json(&branches[*i], inner).to_string())
                        }
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        },
        AvroType::Null => Arc::new(NullArray::new(vals.len())),
        AvroType::Boolean => Arc::new(BooleanArray::from(
            vals.iter()
                .map(|v| v.map(|v| matches!(v, AvroValue::Boolean(true))))
                .collect::<Vec<_>>(),
        )),
        AvroType::Int => Arc::new(Int32Array::from(
            vals.iter().map(|v| v.map(int)).collect::<Vec<_>>(),
        )),
        AvroType::Date => Arc::new(Date32Array::from(
            vals.iter().map(|v| v.map(int)).collect::<Vec<_>>(),
        )),
        AvroType::TimeMillis => Arc::new(Time32MillisecondArray::from(
            vals.iter().map(|v| v.map(int)).collect::<Vec<_>>(),
        )),
        AvroType::Long => Arc::new(Int64Array::from(
            vals.iter().map(|v| v.map(long)).collect::<Vec<_>>(),
        )),
        AvroType::TimeMicros => Arc::new(Time64MicrosecondArray::from(
            vals.iter().map(|v| v.map(long)).collect::<Vec<_>>(),
        )),
        AvroType::Timestamp { unit, .. } => {
            let v: Vec<Option<i64>> = vals.iter().map(|v| v.map(long)).collect();
            let tz = match &dt {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            match unit {
                TimeUnit::Millisecond => {
                    Arc::new(TimestampMillisecondArray::from(v).with_timezone_opt(tz))
                }
                TimeUnit::Microsecond => {
                    Arc::new(TimestampMicrosecondArray::from(v).with_timezone_opt(tz))
                }
                _ => Arc::new(TimestampNanosecondArray::from(v).with_timezone_opt(tz)),
            }
        }
        AvroType::Float => Arc::new(Float32Array::from(
            vals.iter()
                .map(|v| {
                    v.map(|v| match v {
                        AvroValue::Float(f) => *f,
                        _ => 0.0,
                    })
                })
                .collect::<Vec<_>>(),
        )),
        AvroType::Double => Arc::new(Float64Array::from(
            vals.iter()
                .map(|v| {
                    v.map(|v| match v {
                        AvroValue::Double(f) => *f,
                        _ => 0.0,
                    })
                })
                .collect::<Vec<_>>(),
        )),
        AvroType::Bytes => Arc::new(BinaryArray::from(
            vals.iter().map(|v| v.map(bytes)).collect::<Vec<_>>(),
        )),
        AvroType::Fixed { size, .. } => Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                vals.iter().map(|v| v.map(bytes)),
                *size as i32,
            )
            .map_err(|e| e.to_string())?,
        ),
        AvroType::String | AvroType::Uuid => Arc::new(StringArray::from(
            vals.iter()
                .map(|v| {
                    v.map(|v| match v {
                        AvroValue::String(s) => s.as_str(),
                        _ => "",
                    })
                })
                .collect::<Vec<_>>(),
        )),
        AvroType::Enum { symbols, .. } => Arc::new(StringArray::from(
            vals.iter()
                .map(|v| {
                    v.map(|v| match v {
                        AvroValue::Enum(i) => symbols[*i].as_str(),
                        _ => "",
                    })
                })
                .collect::<Vec<_>>(),
        )),
        AvroType::Decimal {
            precision, scale, ..
        } => {
            let v = vals
                .iter()
                .map(|v| v.map(|v| be_i128(bytes(v))).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(
                Decimal128Array::from(v)
                    .with_precision_and_scale(*precision, *scale)
                    .map_err(|e| e.to_string())?,
            )
        }
        AvroType::Array(items) => {
            let mut offsets = Vec::with_capacity(vals.len() + 1);
            offsets.push(0i32);
            let mut children: Vec<Option<&AvroValue>> = Vec::new();
            for v in vals {
                if let Some(AvroValue::Array(a)) = v {
                    children.extend(a.iter().map(Some));
                }
                offsets.push(children.len() as i32);
            }
            let child = build(items, &children)?;
            let DataType::List(field) = dt else {
                unreachable!("arrays are lists")
            };
            Arc::new(
                ListArray::try_new(field, OffsetBuffer::new(offsets.into()), child, nulls(vals))
                    .map_err(|e| e.to_string())?,
            )
        }
        AvroType::Map(values) => {
            let mut offsets = Vec::with_capacity(vals.len() + 1);
            offsets.push(0i32);
            let mut keys = StringBuilder::new();
            let mut children: Vec<Option<&AvroValue>> = Vec::new();
            for v in vals {
                if let Some(AvroValue::Map(m)) = v {
                    for (k, v) in m {
                        keys.append_value(k);
                        children.push(Some(v));
                    }
                }
                offsets.push(children.len() as i32);
            }
            let DataType::Map(entries, _) = &dt else {
                unreachable!("maps are maps")
            };
            let DataType::Struct(kv) = entries.data_type() else {
                unreachable!("map entries are structs")
            };
            let entries_array = StructArray::try_new(
                kv.clone(),
                vec![Arc::new(keys.finish()), build(values, &children)?],
                None,
            )
            .map_err(|e| e.to_string())?;
            Arc::new(
                MapArray::try_new(
                    entries.clone(),
                    OffsetBuffer::new(offsets.into()),
                    entries_array,
                    nulls(vals),
                    false,
                )
                .map_err(|e| e.to_string())?,
            )
        }
        AvroType::Record(rec) => {
            let DataType::Struct(fields) = &dt else {
                unreachable!("records are structs")
            };
            let mut columns = Vec::with_capacity(rec.fields.len());
            for (j, f) in rec.fields.iter().enumerate() {
                let child: Vec<Option<&AvroValue>> = vals
                    .iter()
                    .map(|v| match v {
                        Some(AvroValue::Record(fs)) => fs.get(j),
                        _ => None,
                    })
                    .collect();
                columns.push(build(&f.ty, &child).map_err(|e| format!("field {}: {e}", f.name))?);
            }
            Arc::new(
                StructArray::try_new_with_length(fields.clone(), columns, nulls(vals), vals.len())
                    .map_err(|e| e.to_string())?,
            )
        }
    })
}

/// A value as Avro's JSON encoding would show it (for general unions).
fn to_json(t: &AvroType, v: &AvroValue) -> Value {
    match (t, v) {
        (AvroType::Enum { symbols, .. }, AvroValue::Enum(i)) => json!(symbols[*i]),
        (AvroType::Array(items), AvroValue::Array(a)) => {
            Value::Array(a.iter().map(|v| to_json(items, v)).collect())
        }
        (AvroType::Map(values), AvroValue::Map(m)) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), to_json(values, v)))
                .collect(),
        ),
        (AvroType::Record(r), AvroValue::Record(fs)) => Value::Object(
            r.fields
                .iter()
                .zip(fs)
                .map(|(f, v)| (f.name.clone(), to_json(&f.ty, v)))
                .collect(),
        ),
        (AvroType::Union(b), AvroValue::Union(i, v)) => match &b[*i] {
            AvroType::Null => Value::Null,
            bt => to_json(bt, v),
        },
        (_, AvroValue::Null) => Value::Null,
        (_, AvroValue::Boolean(b)) => json!(b),
        (_, AvroValue::Int(i)) => json!(i),
        (_, AvroValue::Long(i)) => json!(i),
        (_, AvroValue::Float(f)) => json!(f),
        (_, AvroValue::Double(f)) => json!(f),
        (_, AvroValue::String(s)) => json!(s),
        (_, AvroValue::Bytes(b)) => json!(b.iter().map(|c| *c as char).collect::<String>()),
        (_, other) => json!(format!("{other:?}")),
    }
}

/// The Arrow field for a column decoded from `t` (nullable).
pub fn field(name: &str, t: &AvroType) -> Result<Field, String> {
    Ok(Field::new(name, t.arrow_type()?, true))
}
