//! Arrow rows → Avro binary, one record per row, straight from the Arrow arrays.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_schema::{DataType, TimeUnit};
use serde_json::Value;

use super::schema::{AvroType, Record};

/// Appends `v` as an Avro `long` (zig-zag varint).
pub fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// Encodes rows of batches with one Avro record schema. Columns are matched to the record's
/// fields by name; a field without a column is written with its default.
#[derive(Clone, Debug)]
pub struct Encoder {
    record: Record,
}

impl Encoder {
    /// An encoder for records of `root` (a record type).
    pub fn new(root: AvroType) -> Result<Self, String> {
        match root {
            AvroType::Record(record) => Ok(Encoder { record }),
            _ => Err("the schema's root must be a record (one record per row)".into()),
        }
    }

    /// Checks that a batch's columns fit the record (before encoding anything): every field
    /// has a column of a type it can be written as, or a default.
    pub fn check(&self, schema: &arrow_schema::Schema) -> Result<(), String> {
        check_record(&self.record, schema.fields())
    }

    /// Appends row `row` of `batch` to `out`. An error names the field and leaves `out` with a
    /// partial record: truncate it.
    pub fn encode_row(
        &self,
        batch: &StructArray,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        record(&self.record, batch, row, out)
    }

    /// A batch as the struct array [`Encoder::encode_row`] takes (no copy).
    pub fn rows(batch: &RecordBatch) -> StructArray {
        StructArray::from(batch.clone())
    }
}

fn check_record(r: &Record, fields: &arrow_schema::Fields) -> Result<(), String> {
    for f in &r.fields {
        match fields.iter().find(|c| c.name() == &f.name) {
            Some(c) => {
                if !fits(&f.ty, c.data_type()) {
                    return Err(format!(
                        "column {:?} is {} and cannot be written as the schema's field {} ({})",
                        f.name,
                        c.data_type(),
                        f.name,
                        short(&f.ty)
                    ));
                }
            }
            None if f.default.is_some() => {}
            None => {
                return Err(format!(
                    "the schema's field {} (record {}) has no column and no default",
                    f.name, r.name
                ))
            }
        }
    }
    Ok(())
}

fn short(t: &AvroType) -> String {
    match t {
        AvroType::Record(r) => format!("record {}", r.name),
        AvroType::Union(b) => format!(
            "union [{}]",
            b.iter().map(short).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Whether values of Arrow type `dt` can be written as `t`.
fn fits(t: &AvroType, dt: &DataType) -> bool {
    use DataType as D;
    if let D::Dictionary(_, v) = dt {
        return fits(t, v);
    }
    match t {
        AvroType::Null => *dt == D::Null,
        AvroType::Union(branches) => *dt == D::Null || branches.iter().any(|b| fits(b, dt)),
        _ if *dt == D::Null => false,
        AvroType::Boolean => *dt == D::Boolean,
        AvroType::Int => matches!(dt, D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16),
        AvroType::Long => dt.is_integer(),
        AvroType::Float => matches!(dt, D::Float16 | D::Float32),
        AvroType::Double => dt.is_floating() || dt.is_integer(),
        AvroType::String | AvroType::Uuid | AvroType::Enum { .. } => {
            matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View)
        }
        AvroType::Bytes => matches!(
            dt,
            D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_)
        ),
        AvroType::Fixed { size, .. } => *dt == D::FixedSizeBinary(*size as i32),
        AvroType::Date => matches!(dt, D::Date32 | D::Date64),
        AvroType::TimeMillis => matches!(dt, D::Time32(_)),
        AvroType::TimeMicros => matches!(dt, D::Time64(_) | D::Time32(_)),
        AvroType::Timestamp { .. } => matches!(dt, D::Timestamp(..)),
        AvroType::Decimal { scale, .. } => match dt {
            D::Decimal32(_, s) | D::Decimal64(_, s) | D::Decimal128(_, s) => s <= scale,
            _ => false,
        },
        AvroType::Array(items) => match dt {
            D::List(f) | D::LargeList(f) | D::FixedSizeList(f, _) => fits(items, f.data_type()),
            _ => false,
        },
        AvroType::Map(values) => match dt {
            D::Map(e, _) => match e.data_type() {
                D::Struct(kv) => {
                    matches!(kv[0].data_type(), D::Utf8 | D::LargeUtf8 | D::Utf8View)
                        && fits(values, kv[1].data_type())
                }
                _ => false,
            },
            _ => false,
        },
        AvroType::Record(r) => match dt {
            D::Struct(fields) => check_record(r, fields).is_ok(),
            _ => false,
        },
    }
}

fn is_null(a: &dyn Array, row: usize) -> bool {
    if *a.data_type() == DataType::Null {
        return true;
    }
    match a.data_type() {
        DataType::Dictionary(..) => a.logical_nulls().is_some_and(|n| n.is_null(row)),
        _ => a.is_null(row),
    }
}

fn record(r: &Record, a: &StructArray, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    for f in &r.fields {
        match a.column_by_name(&f.name) {
            Some(c) => value(&f.ty, c.as_ref(), row, out).map_err(|e| {
                if let Some(inner) = e.strip_prefix("field ") {
                    format!("field {}.{inner}", f.name)
                } else {
                    format!("field {}: {e}", f.name)
                }
            })?,
            None => default(&f.ty, f.default.as_ref().unwrap_or(&Value::Null), out)
                .map_err(|e| format!("field {}: default: {e}", f.name))?,
        }
    }
    Ok(())
}

fn value(t: &AvroType, a: &dyn Array, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if let DataType::Dictionary(..) = a.data_type() {
        let d = a.as_any_dictionary();
        if is_null(a, row) {
            return null(t, out);
        }
        let key = d.normalized_keys()[row];
        return value(t, d.values().as_ref(), key, out);
    }
    if is_null(a, row) {
        return null(t, out);
    }
    match t {
        AvroType::Union(branches) => {
            let (i, b) = branches
                .iter()
                .enumerate()
                .find(|(_, b)| **b != AvroType::Null && fits(b, a.data_type()))
                .ok_or_else(|| format!("no branch of the union takes {}", a.data_type()))?;
            write_long(i as i64, out);
            value(b, a, row, out)
        }
        AvroType::Null => Ok(()),
        AvroType::Boolean => {
            out.push(a.as_boolean().value(row) as u8);
            Ok(())
        }
        AvroType::Int | AvroType::Long => {
            write_long(integer(a, row)?, out);
            Ok(())
        }
        AvroType::Float => {
            let v = match a.data_type() {
                DataType::Float16 => a.as_primitive::<Float16Type>().value(row).to_f32(),
                _ => a.as_primitive::<Float32Type>().value(row),
            };
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        AvroType::Double => {
            let v = match a.data_type() {
                DataType::Float16 => a.as_primitive::<Float16Type>().value(row).to_f64(),
                DataType::Float32 => a.as_primitive::<Float32Type>().value(row) as f64,
                DataType::Float64 => a.as_primitive::<Float64Type>().value(row),
                _ => integer(a, row)? as f64,
            };
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        AvroType::String | AvroType::Uuid => {
            write_bytes(text(a, row).as_bytes(), out);
            Ok(())
        }
        AvroType::Enum { symbols, name } => {
            let s = text(a, row);
            let i = symbols
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("{s:?} is not a symbol of enum {name}"))?;
            write_long(i as i64, out);
            Ok(())
        }
        AvroType::Bytes => {
            write_bytes(binary(a, row), out);
            Ok(())
        }
        AvroType::Fixed { .. } => {
            out.extend_from_slice(binary(a, row));
            Ok(())
        }
        AvroType::Date => {
            let days = match a.data_type() {
                DataType::Date64 => a
                    .as_primitive::<Date64Type>()
                    .value(row)
                    .div_euclid(86_400_000),
                _ => a.as_primitive::<Date32Type>().value(row) as i64,
            };
            write_long(days, out);
            Ok(())
        }
        AvroType::TimeMillis => {
            let ms = match a.data_type() {
                DataType::Time32(TimeUnit::Second) => {
                    a.as_primitive::<Time32SecondType>().value(row) as i64 * 1000
                }
                _ => a.as_primitive::<Time32MillisecondType>().value(row) as i64,
            };
            write_long(ms, out);
            Ok(())
        }
        AvroType::TimeMicros => {
            let us = match a.data_type() {
                DataType::Time32(TimeUnit::Second) => {
                    a.as_primitive::<Time32SecondType>().value(row) as i64 * 1_000_000
                }
                DataType::Time32(_) => {
                    a.as_primitive::<Time32MillisecondType>().value(row) as i64 * 1000
                }
                DataType::Time64(TimeUnit::Nanosecond) => {
                    a.as_primitive::<Time64NanosecondType>().value(row) / 1000
                }
                _ => a.as_primitive::<Time64MicrosecondType>().value(row),
            };
            write_long(us, out);
            Ok(())
        }
        AvroType::Timestamp { unit, .. } => {
            let DataType::Timestamp(from, _) = a.data_type() else {
                return Err(format!("{} is not a timestamp", a.data_type()));
            };
            let v = match from {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(row),
            };
            write_long(rescale_time(v, *from, *unit)?, out);
            Ok(())
        }
        AvroType::Decimal {
            precision,
            scale,
            fixed,
        } => {
            let (v, s) = match a.data_type() {
                DataType::Decimal32(_, s) => {
                    (a.as_primitive::<Decimal32Type>().value(row) as i128, *s)
                }
                DataType::Decimal64(_, s) => {
                    (a.as_primitive::<Decimal64Type>().value(row) as i128, *s)
                }
                DataType::Decimal128(_, s) => (a.as_primitive::<Decimal128Type>().value(row), *s),
                other => return Err(format!("{other} is not a decimal")),
            };
            let v = 10i128
                .checked_pow((*scale - s) as u32)
                .and_then(|f| v.checked_mul(f))
                .filter(|v| v.unsigned_abs() < 10u128.pow((*precision).min(38) as u32))
                .ok_or_else(|| format!("the value does not fit decimal({precision}, {scale})"))?;
            let be = v.to_be_bytes();
            match fixed {
                Some(size) => {
                    if *size >= 16 {
                        let fill = if v < 0 { 0xff } else { 0 };
                        out.extend(std::iter::repeat_n(fill, size - 16));
                        out.extend_from_slice(&be);
                    } else {
                        out.extend_from_slice(&be[16 - size..]);
                    }
                }
                None => {
                    let mut i = 0;
                    while i < 15
                        && ((be[i] == 0 && be[i + 1] & 0x80 == 0)
                            || (be[i] == 0xff && be[i + 1] & 0x80 != 0))
                    {
                        i += 1;
                    }
                    write_bytes(&be[i..], out);
                }
            }
            Ok(())
        }
        AvroType::Array(items) => {
            let (values, start, end) = match a.data_type() {
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    let o = l.value_offsets();
                    (l.values(), o[row] as usize, o[row + 1] as usize)
                }
                DataType::LargeList(_) => {
                    let l = a.as_list::<i64>();
                    let o = l.value_offsets();
                    (l.values(), o[row] as usize, o[row + 1] as usize)
                }
                DataType::FixedSizeList(_, n) => {
                    let l = a.as_fixed_size_list();
                    let n = *n as usize;
                    (l.values(), row * n, row * n + n)
                }
                other => return Err(format!("{other} is not a list")),
            };
            if end > start {
                write_long((end - start) as i64, out);
                for i in start..end {
                    value(items, values.as_ref(), i, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        AvroType::Map(values) => {
            let m = a.as_map();
            let o = m.value_offsets();
            let (start, end) = (o[row] as usize, o[row + 1] as usize);
            if end > start {
                write_long((end - start) as i64, out);
                for i in start..end {
                    write_bytes(text(m.keys().as_ref(), i).as_bytes(), out);
                    value(values, m.values().as_ref(), i, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        AvroType::Record(r) => record(r, a.as_struct(), row, out),
    }
}

fn null(t: &AvroType, out: &mut Vec<u8>) -> Result<(), String> {
    match t {
        AvroType::Null => Ok(()),
        AvroType::Union(b) => {
            let i = b
                .iter()
                .position(|b| *b == AvroType::Null)
                .ok_or("null, and the union has no null branch")?;
            write_long(i as i64, out);
            Ok(())
        }
        _ => Err("null, and the schema's type is not nullable".into()),
    }
}

fn rescale_time(v: i64, from: TimeUnit, to: TimeUnit) -> Result<i64, String> {
    let exp = |u: TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    let (f, t) = (exp(from), exp(to));
    if t >= f {
        v.checked_mul(10i64.pow(t - f))
            .ok_or_else(|| "the timestamp is out of range".to_string())
    } else {
        Ok(v.div_euclid(10i64.pow(f - t)))
    }
}

fn integer(a: &dyn Array, row: usize) -> Result<i64, String> {
    Ok(match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(row) as i64,
        DataType::Int16 => a.as_primitive::<Int16Type>().value(row) as i64,
        DataType::Int32 => a.as_primitive::<Int32Type>().value(row) as i64,
        DataType::Int64 => a.as_primitive::<Int64Type>().value(row),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(row) as i64,
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(row) as i64,
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(row) as i64,
        DataType::UInt64 => {
            let v = a.as_primitive::<UInt64Type>().value(row);
            i64::try_from(v).map_err(|_| format!("{v} does not fit an Avro long"))?
        }
        other => return Err(format!("{other} is not an integer")),
    })
}

fn text(a: &dyn Array, row: usize) -> &str {
    match a.data_type() {
        DataType::LargeUtf8 => a.as_string::<i64>().value(row),
        DataType::Utf8View => a.as_string_view().value(row),
        _ => a.as_string::<i32>().value(row),
    }
}

fn binary(a: &dyn Array, row: usize) -> &[u8] {
    match a.data_type() {
        DataType::LargeBinary => a.as_binary::<i64>().value(row),
        DataType::BinaryView => a.as_binary_view().value(row),
        DataType::FixedSizeBinary(_) => a.as_fixed_size_binary().value(row),
        _ => a.as_binary::<i32>().value(row),
    }
}

/// Writes a field's default (JSON, as the schema gives it) in binary.
fn default(t: &AvroType, d: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let bad = || format!("{d} does not fit {}", short(t));
    match (t, d) {
        (AvroType::Null, Value::Null) => Ok(()),
        (AvroType::Union(b), d) => {
            // A union's default is of its first branch.
            write_long(0, out);
            default(b.first().ok_or_else(bad)?, d, out)
        }
        (AvroType::Boolean, Value::Bool(v)) => {
            out.push(*v as u8);
            Ok(())
        }
        (
            AvroType::Int
            | AvroType::Long
            | AvroType::Date
            | AvroType::TimeMillis
            | AvroType::TimeMicros
            | AvroType::Timestamp { .. },
            Value::Number(n),
        ) => {
            write_long(n.as_i64().ok_or_else(bad)?, out);
            Ok(())
        }
        (AvroType::Float, Value::Number(n)) => {
            out.extend_from_slice(&(n.as_f64().ok_or_else(bad)? as f32).to_le_bytes());
            Ok(())
        }
        (AvroType::Double, Value::Number(n)) => {
            out.extend_from_slice(&n.as_f64().ok_or_else(bad)?.to_le_bytes());
            Ok(())
        }
        (AvroType::String | AvroType::Uuid, Value::String(s)) => {
            write_bytes(s.as_bytes(), out);
            Ok(())
        }
        // Bytes defaults are strings of code points 0-255, one per byte.
        (AvroType::Bytes | AvroType::Decimal { fixed: None, .. }, Value::String(s)) => {
            let b: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
            write_bytes(&b, out);
            Ok(())
        }
        (AvroType::Fixed { .. } | AvroType::Decimal { .. }, Value::String(s)) => {
            out.extend(s.chars().map(|c| c as u32 as u8));
            Ok(())
        }
        (AvroType::Enum { symbols, .. }, Value::String(s)) => {
            write_long(
                symbols.iter().position(|x| x == s).ok_or_else(bad)? as i64,
                out,
            );
            Ok(())
        }
        (AvroType::Array(items), Value::Array(a)) => {
            if !a.is_empty() {
                write_long(a.len() as i64, out);
                for v in a {
                    default(items, v, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (AvroType::Map(values), Value::Object(m)) => {
            if !m.is_empty() {
                write_long(m.len() as i64, out);
                for (k, v) in m {
                    write_bytes(k.as_bytes(), out);
                    default(values, v, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (AvroType::Record(r), Value::Object(m)) => {
            for f in &r.fields {
                let v = m.get(&f.name).or(f.default.as_ref()).ok_or_else(bad)?;
                default(&f.ty, v, out)?;
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}
