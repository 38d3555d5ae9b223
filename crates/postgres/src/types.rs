//! PostgreSQL types ⇄ Arrow, and the binary `COPY` row format both ways.
//!
//! | PostgreSQL                         | Arrow                                   |
//! |------------------------------------|-----------------------------------------|
//! | `int2` / `int4` / `int8`           | `Int16` / `Int32` / `Int64`             |
//! | `float4` / `float8`                | `Float32` / `Float64`                   |
//! | `numeric(p, s)`, p ≤ 38            | `Decimal128(p, s)`                      |
//! | `numeric` (no precision), p > 38   | `Utf8` (the exact text, e.g. `"1.50"`)  |
//! | `text`, `varchar`, `bpchar`, `name`| `Utf8`                                  |
//! | `json`, `jsonb`                    | `Utf8` (the JSON text)                  |
//! | `uuid`                             | `Utf8` (`8-4-4-4-12` hex)               |
//! | `bool`                             | `Boolean`                               |
//! | `date`                             | `Date32`                                |
//! | `timestamp` / `timestamptz`        | `Timestamp(µs)` / `Timestamp(µs, "UTC")`|
//! | `bytea`                            | `Binary`                                |
//! | anything else (arrays, `interval`, `inet`, enums, ...) | `Utf8`: the column is read as `col::text` |
//!
//! **numeric**: a column declared with a precision (`numeric(12,2)`) has one scale for every
//! value, so `Decimal128(p, s)` holds each value exactly and Parquet writes it as a decimal.
//! An unconstrained `numeric` has no common scale (each value keeps its own, up to 16383
//! fraction digits and 131072 integer digits) and may hold `NaN` and `±Infinity`: any fixed
//! decimal type would round or refuse values, so it is read as its exact text. A `NaN` in a
//! `numeric(p, s)` column (allowed by PostgreSQL) cannot be a decimal: the row is rejected
//! (dead letter) with the reason, as are `±infinity` dates and timestamps.
//!
//! `uuid`, `json` and `jsonb` columns carry the field metadata `tributary.pg_type` so the
//! PostgreSQL sink creates them with their own type again.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field, TimeUnit};
use bytes::{BufMut, BytesMut};

/// Field metadata key naming the PostgreSQL type a `Utf8` column came from (`uuid`, `json`,
/// `jsonb`), so a PostgreSQL sink can create the same type.
pub const PG_TYPE_KEY: &str = "tributary.pg_type";
pub use tributary_core::schema::PRIMARY_KEY_KEY;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The binary COPY header: signature, flags, header extension length.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// How a source column is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// `int2`.
    Int16,
    /// `int4`.
    Int32,
    /// `int8`.
    Int64,
    /// `float4`.
    Float32,
    /// `float8`.
    Float64,
    /// `numeric(p, s)` with p ≤ 38.
    Decimal(u8, i8),
    /// `bool`.
    Bool,
    /// UTF-8 text as sent (`text`, `varchar`, `bpchar`, `name`, `json`, and `::text` casts).
    Text,
    /// `jsonb` (a version byte, then the JSON text).
    Jsonb,
    /// `uuid` (16 bytes).
    Uuid,
    /// `date`.
    Date,
    /// `timestamp`.
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `bytea`.
    Bytea,
}

impl ColumnKind {
    /// How a column of PostgreSQL type `typname` (with `typmod`) is read; `None`: read it as
    /// `::text`.
    pub fn for_type(typname: &str, typmod: i32) -> Option<ColumnKind> {
        Some(match typname {
            "int2" => ColumnKind::Int16,
            "int4" => ColumnKind::Int32,
            "int8" => ColumnKind::Int64,
            "float4" => ColumnKind::Float32,
            "float8" => ColumnKind::Float64,
            "numeric" => {
                // typmod = ((precision << 16) | scale) + 4; -1 when unconstrained.
                if typmod < 4 {
                    return None;
                }
                let precision = ((typmod - 4) >> 16) & 0xffff;
                let scale = ((typmod - 4) & 0xffff) as i16;
                if precision > 38 || !(0..=38).contains(&scale) {
                    return None;
                }
                ColumnKind::Decimal(precision as u8, scale as i8)
            }
            "bool" => ColumnKind::Bool,
            "text" | "varchar" | "bpchar" | "name" | "json" => ColumnKind::Text,
            "jsonb" => ColumnKind::Jsonb,
            "uuid" => ColumnKind::Uuid,
            "date" => ColumnKind::Date,
            "timestamp" => ColumnKind::Timestamp,
            "timestamptz" => ColumnKind::TimestampTz,
            "bytea" => ColumnKind::Bytea,
            _ => return None,
        })
    }

    /// The Arrow field of a column of this kind.
    pub fn field(&self, name: &str, nullable: bool, typname: &str) -> Field {
        let data_type = match self {
            ColumnKind::Int16 => DataType::Int16,
            ColumnKind::Int32 => DataType::Int32,
            ColumnKind::Int64 => DataType::Int64,
            ColumnKind::Float32 => DataType::Float32,
            ColumnKind::Float64 => DataType::Float64,
            ColumnKind::Decimal(p, s) => DataType::Decimal128(*p, *s),
            ColumnKind::Bool => DataType::Boolean,
            ColumnKind::Text | ColumnKind::Jsonb | ColumnKind::Uuid => DataType::Utf8,
            ColumnKind::Date => DataType::Date32,
            ColumnKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnKind::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
            }
            ColumnKind::Bytea => DataType::Binary,
        };
        let field = Field::new(name, data_type, nullable);
        match typname {
            "uuid" | "json" | "jsonb" => field.with_metadata(HashMap::from([(
                PG_TYPE_KEY.to_string(),
                typname.to_string(),
            )])),
            _ => field,
        }
    }
}

/// One column's Arrow builder.
enum Builder {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Bool(BooleanBuilder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Bytea(BinaryBuilder),
}

impl Builder {
    fn new(kind: &ColumnKind, capacity: usize) -> Builder {
        match kind {
            ColumnKind::Int16 => Builder::Int16(Int16Builder::with_capacity(capacity)),
            ColumnKind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
            ColumnKind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnKind::Float32 => Builder::Float32(Float32Builder::with_capacity(capacity)),
            ColumnKind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnKind::Decimal(p, s) => {
                Builder::Decimal(Decimal128Builder::with_capacity(capacity), *p, *s)
            }
            ColumnKind::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Text => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 8)),
            ColumnKind::Jsonb => {
                Builder::Jsonb(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnKind::Uuid => {
                Builder::Uuid(StringBuilder::with_capacity(capacity, capacity * 36))
            }
            ColumnKind::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            ColumnKind::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), false)
            }
            ColumnKind::TimestampTz => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), true)
            }
            ColumnKind::Bytea => {
                Builder::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 8))
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Int16(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b, ..) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timestamp(b, _) => b.append_null(),
            Builder::Bytea(b) => b.append_null(),
        }
    }

    /// Appends one binary value; on a value Arrow cannot hold, appends null and says why.
    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        let fixed = |n: usize| -> Result<(), String> {
            if v.len() == n {
                Ok(())
            } else {
                Err(format!("expected {n} bytes, got {}", v.len()))
            }
        };
        match self {
            Builder::Int16(b) => {
                fixed(2)?;
                b.append_value(i16::from_be_bytes([v[0], v[1]]))
            }
            Builder::Int32(b) => {
                fixed(4)?;
                b.append_value(i32::from_be_bytes(v.try_into().unwrap()))
            }
            Builder::Int64(b) => {
                fixed(8)?;
                b.append_value(i64::from_be_bytes(v.try_into().unwrap()))
            }
            Builder::Float32(b) => {
                fixed(4)?;
                b.append_value(f32::from_be_bytes(v.try_into().unwrap()))
            }
            Builder::Float64(b) => {
                fixed(8)?;
                b.append_value(f64::from_be_bytes(v.try_into().unwrap()))
            }
            Builder::Decimal(b, _, s) => match numeric_to_i128(v, *s) {
                Ok(x) => b.append_value(x),
                Err(e) => {
                    b.append_null();
                    return Err(e);
                }
            },
            Builder::Bool(b) => {
                fixed(1)?;
                b.append_value(v[0] != 0)
            }
            Builder::Text(b) => match std::str::from_utf8(v) {
                Ok(s) => b.append_value(s),
                Err(e) => {
                    b.append_null();
                    return Err(format!("invalid UTF-8: {e}"));
                }
            },
            Builder::Jsonb(b) => match v.split_first() {
                Some((1, rest)) => match std::str::from_utf8(rest) {
                    Ok(s) => b.append_value(s),
                    Err(e) => {
                        b.append_null();
                        return Err(format!("invalid UTF-8 in jsonb: {e}"));
                    }
                },
                _ => {
                    b.append_null();
                    return Err("unknown jsonb binary version".into());
                }
            },
            Builder::Uuid(b) => {
                fixed(16)?;
                b.append_value(format_uuid(v))
            }
            Builder::Date(b) => {
                fixed(4)?;
                let days = i32::from_be_bytes(v.try_into().unwrap());
                if days == i32::MAX || days == i32::MIN {
                    b.append_null();
                    return Err("date is ±infinity, which Arrow cannot hold".into());
                }
                b.append_value(days + PG_EPOCH_DAYS)
            }
            Builder::Timestamp(b, _) => {
                fixed(8)?;
                let us = i64::from_be_bytes(v.try_into().unwrap());
                if us == i64::MAX || us == i64::MIN {
                    b.append_null();
                    return Err("timestamp is ±infinity, which Arrow cannot hold".into());
                }
                b.append_value(us + PG_EPOCH_US)
            }
            Builder::Bytea(b) => b.append_value(v),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int16(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision ≤ 38 checked in ColumnKind::for_type"),
            ),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Text(b) | Builder::Jsonb(b) | Builder::Uuid(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b, tz) => {
                let a = b.finish();
                if *tz {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
            Builder::Bytea(b) => Arc::new(b.finish()),
        }
    }
}

fn format_uuid(v: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in v.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

/// A `numeric` in PostgreSQL's binary form as an integer scaled by `10^scale`.
pub fn numeric_to_i128(v: &[u8], scale: i8) -> Result<i128, String> {
    if v.len() < 8 {
        return Err("numeric value too short".into());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN cannot be a decimal".into()),
        _ => return Err("numeric ±Infinity cannot be a decimal".into()),
    }
    if v.len() != 8 + 2 * ndigits {
        return Err("numeric value has a wrong length".into());
    }
    let overflow = || "numeric value does not fit the column's precision".to_string();
    // Digit i is worth d × 10^(4 × (weight − i)); scaled by 10^scale.
    let mut acc: i128 = 0;
    for i in 0..ndigits {
        let d = i16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]) as i128;
        let exp = 4 * (weight - i as i32) + scale as i32;
        let term = if exp >= 0 {
            10i128
                .checked_pow(exp as u32)
                .and_then(|p| p.checked_mul(d))
                .ok_or_else(overflow)?
        } else {
            let div = 10i128.pow((-exp).min(8) as u32);
            if (-exp) > 4 || d % div != 0 {
                if d == 0 {
                    0
                } else {
                    return Err("numeric value has more fraction digits than the scale".into());
                }
            } else {
                d / div
            }
        };
        acc = acc.checked_add(term).ok_or_else(overflow)?;
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// Encodes an integer scaled by `10^scale` as a binary `numeric`.
pub fn i128_to_numeric(value: i128, scale: i8, out: &mut BytesMut) {
    let negative = value < 0;
    let mut abs = value.unsigned_abs();
    let scale = scale.max(0) as u32;
    // Pad the fraction to whole base-10000 digits.
    let frac_groups = scale.div_ceil(4);
    let pad = frac_groups * 4 - scale;
    let mut digits: Vec<i16> = Vec::new();
    // abs × 10^pad may overflow u128 for huge values; split integer and fraction first.
    let divisor = 10u128.pow(scale);
    let int_part = abs / divisor;
    let frac = (abs % divisor) * 10u128.pow(pad);
    let mut frac_digits = Vec::with_capacity(frac_groups as usize);
    let mut f = frac;
    for _ in 0..frac_groups {
        frac_digits.push((f % 10_000) as i16);
        f /= 10_000;
    }
    frac_digits.reverse();
    let mut int_digits = Vec::new();
    abs = int_part;
    while abs > 0 {
        int_digits.push((abs % 10_000) as i16);
        abs /= 10_000;
    }
    int_digits.reverse();
    let weight = int_digits.len() as i16 - 1;
    digits.extend(int_digits);
    digits.extend(frac_digits);
    out.put_i32(8 + 2 * digits.len() as i32);
    out.put_i16(digits.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative { 0x4000 } else { 0 });
    out.put_i16(scale as i16);
    for d in digits {
        out.put_i16(d);
    }
}

/// Decodes binary COPY tuples into Arrow columns, `batch_rows` rows at a time.
pub struct RowDecoder {
    kinds: Vec<ColumnKind>,
    builders: Vec<Builder>,
    /// Text columns after the data columns (the ordering key as `::text`): only the last
    /// row's values are kept, for the position.
    key_columns: usize,
    last_key: Vec<Option<String>>,
    rows: usize,
    /// Rows with a value Arrow cannot hold: (row index in the batch, reason).
    bad_rows: Vec<(usize, String)>,
    capacity: usize,
}

/// What one tuple was.
pub enum Tuple {
    /// A row was decoded (it may be marked bad).
    Row,
    /// The trailer: the COPY is complete.
    End,
}

impl RowDecoder {
    /// A decoder for data columns of `kinds` followed by `key_columns` text key columns.
    pub fn new(kinds: Vec<ColumnKind>, key_columns: usize, capacity: usize) -> Self {
        let builders = kinds.iter().map(|k| Builder::new(k, capacity)).collect();
        RowDecoder {
            kinds,
            builders,
            key_columns,
            last_key: vec![None; key_columns],
            rows: 0,
            bad_rows: Vec::new(),
            capacity,
        }
    }

    /// Rows decoded since the last [`RowDecoder::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The key values (as PostgreSQL text) of the last row decoded.
    pub fn last_key(&self) -> &[Option<String>] {
        &self.last_key
    }

    /// Decodes one tuple from the front of `buf` (which must hold the whole tuple). Returns
    /// the bytes used, or `None` if `buf` does not hold a whole tuple yet.
    pub fn decode_tuple(&mut self, buf: &[u8]) -> Result<Option<(usize, Tuple)>, String> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([buf[0], buf[1]]);
        if fields == -1 {
            return Ok(Some((2, Tuple::End)));
        }
        let expected = self.kinds.len() + self.key_columns;
        if fields as usize != expected {
            return Err(format!(
                "COPY tuple has {fields} fields, expected {expected}"
            ));
        }
        // First find the tuple's extent, so a partial tuple appends nothing.
        let mut at = 2usize;
        for _ in 0..expected {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
            at += 4;
            if len > 0 {
                at += len as usize;
            }
            if buf.len() < at {
                return Ok(None);
            }
        }
        let mut p = 2usize;
        let row = self.rows;
        let mut bad: Option<String> = None;
        for i in 0..expected {
            let len = i32::from_be_bytes(buf[p..p + 4].try_into().unwrap());
            p += 4;
            let value = if len < 0 {
                None
            } else {
                let v = &buf[p..p + len as usize];
                p += len as usize;
                Some(v)
            };
            if i < self.kinds.len() {
                let b = &mut self.builders[i];
                match value {
                    None => b.append_null(),
                    Some(v) => {
                        if let Err(e) = b.append(v) {
                            bad.get_or_insert(e);
                        }
                    }
                }
            } else {
                self.last_key[i - self.kinds.len()] =
                    value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
        }
        if let Some(reason) = bad {
            self.bad_rows.push((row, reason));
        }
        self.rows += 1;
        Ok(Some((at, Tuple::Row)))
    }

    /// The columns decoded so far, and the rows among them that must be rejected.
    pub fn finish(&mut self) -> (Vec<ArrayRef>, Vec<(usize, String)>) {
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        self.builders = self
            .kinds
            .iter()
            .map(|k| Builder::new(k, self.capacity))
            .collect();
        self.rows = 0;
        (arrays, std::mem::take(&mut self.bad_rows))
    }
}

/// How an Arrow column is written into a PostgreSQL column of a given type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `numeric`.
    Numeric,
    /// `bool`.
    Bool,
    /// `text`, `varchar`, `bpchar`, `name`, `json`.
    Text,
    /// `jsonb`.
    Jsonb,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `timestamp`.
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `bytea`.
    Bytea,
}

impl TargetType {
    /// The writer for a target column of type `typname`, if there is one.
    pub fn for_type(typname: &str) -> Option<TargetType> {
        Some(match typname {
            "int2" => TargetType::Int2,
            "int4" => TargetType::Int4,
            "int8" => TargetType::Int8,
            "float4" => TargetType::Float4,
            "float8" => TargetType::Float8,
            "numeric" => TargetType::Numeric,
            "bool" => TargetType::Bool,
            "text" | "varchar" | "bpchar" | "name" | "json" => TargetType::Text,
            "jsonb" => TargetType::Jsonb,
            "uuid" => TargetType::Uuid,
            "date" => TargetType::Date,
            "timestamp" => TargetType::Timestamp,
            "timestamptz" => TargetType::TimestampTz,
            "bytea" => TargetType::Bytea,
            _ => return None,
        })
    }
}

/// The PostgreSQL type a new column for an Arrow field gets.
pub fn pg_type_for(field: &Field) -> Option<String> {
    if let Some(t) = field.metadata().get(crate::cdc::PG_SQL_TYPE_KEY) {
        return Some(t.clone());
    }
    if let Some(t) = field.metadata().get(PG_TYPE_KEY) {
        if matches!(t.as_str(), "uuid" | "json" | "jsonb") && field.data_type() == &DataType::Utf8 {
            return Some(t.clone());
        }
    }
    Some(match field.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "int2".into(),
        DataType::Int32 | DataType::UInt16 => "int4".into(),
        DataType::Int64 | DataType::UInt32 => "int8".into(),
        DataType::Float16 | DataType::Float32 => "float4".into(),
        DataType::Float64 => "float8".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Boolean => "bool".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        _ => return None,
    })
}

/// Writes one column of one row as a binary COPY field (length + bytes, or -1 for null).
pub struct ColumnEncoder {
    array: ArrayRef,
    target: TargetType,
    name: String,
}

impl ColumnEncoder {
    /// An encoder of `array` into a column of `target` type; `None` when the types do not go
    /// together.
    pub fn new(name: &str, array: ArrayRef, target: TargetType) -> Result<Self, String> {
        use TargetType as T;
        let ok = matches!(
            (array.data_type(), target),
            (
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64,
                T::Int2 | T::Int4 | T::Int8 | T::Numeric | T::Float8,
            ) | (
                DataType::UInt8 | DataType::UInt16 | DataType::UInt32,
                T::Int2 | T::Int4 | T::Int8,
            ) | (DataType::Float32 | DataType::Float64, T::Float4 | T::Float8)
                | (DataType::Decimal128(..), T::Numeric)
                | (DataType::Boolean, T::Bool)
                | (
                    DataType::Utf8 | DataType::LargeUtf8,
                    T::Text | T::Jsonb | T::Uuid
                )
                | (DataType::Binary | DataType::LargeBinary, T::Bytea)
                | (DataType::Date32, T::Date)
                | (DataType::Timestamp(..), T::Timestamp | T::TimestampTz)
        );
        if !ok {
            return Err(format!(
                "column {name}: cannot write Arrow {} into a PostgreSQL {target:?} column",
                array.data_type()
            ));
        }
        Ok(ColumnEncoder {
            array,
            target,
            name: name.to_string(),
        })
    }

    /// Appends row `i` to `out`.
    pub fn encode(&self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        use TargetType as T;
        let a = &self.array;
        if a.is_null(i) {
            out.put_i32(-1);
            return Ok(());
        }
        let int_value = || -> i64 {
            match a.data_type() {
                DataType::Int8 => a.as_primitive::<Int8Type>().value(i) as i64,
                DataType::Int16 => a.as_primitive::<Int16Type>().value(i) as i64,
                DataType::Int32 => a.as_primitive::<Int32Type>().value(i) as i64,
                DataType::Int64 => a.as_primitive::<Int64Type>().value(i),
                DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i) as i64,
                DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i) as i64,
                DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i) as i64,
                _ => unreachable!("checked in new"),
            }
        };
        let range = |what: &str| format!("column {}: value out of range for {what}", self.name);
        match (a.data_type(), self.target) {
            (DataType::Float32 | DataType::Float64, t) => {
                let v = match a.data_type() {
                    DataType::Float32 => a.as_primitive::<Float32Type>().value(i) as f64,
                    _ => a.as_primitive::<Float64Type>().value(i),
                };
                if t == T::Float4 {
                    out.put_i32(4);
                    out.put_f32(v as f32);
                } else {
                    out.put_i32(8);
                    out.put_f64(v);
                }
            }
            (_, T::Int2) => {
                let v = i16::try_from(int_value()).map_err(|_| range("int2"))?;
                out.put_i32(2);
                out.put_i16(v);
            }
            (_, T::Int4) => {
                let v = i32::try_from(int_value()).map_err(|_| range("int4"))?;
                out.put_i32(4);
                out.put_i32(v);
            }
            (_, T::Int8) => {
                out.put_i32(8);
                out.put_i64(int_value());
            }
            (DataType::Decimal128(_, s), T::Numeric) => {
                let v = a.as_primitive::<Decimal128Type>().value(i);
                i128_to_numeric(v, *s, out);
            }
            (_, T::Numeric) => i128_to_numeric(int_value() as i128, 0, out),
            (_, T::Float8) => {
                out.put_i32(8);
                out.put_f64(int_value() as f64);
            }
            (_, T::Bool) => {
                out.put_i32(1);
                out.put_u8(a.as_boolean().value(i) as u8);
            }
            (DataType::Utf8 | DataType::LargeUtf8, t) => {
                let s = match a.data_type() {
                    DataType::Utf8 => a.as_string::<i32>().value(i),
                    _ => a.as_string::<i64>().value(i),
                };
                match t {
                    T::Jsonb => {
                        out.put_i32(s.len() as i32 + 1);
                        out.put_u8(1);
                        out.put_slice(s.as_bytes());
                    }
                    T::Uuid => {
                        let bytes = parse_uuid(s)
                            .ok_or_else(|| format!("column {}: {s:?} is not a UUID", self.name))?;
                        out.put_i32(16);
                        out.put_slice(&bytes);
                    }
                    _ => {
                        out.put_i32(s.len() as i32);
                        out.put_slice(s.as_bytes());
                    }
                }
            }
            (DataType::Binary | DataType::LargeBinary, _) => {
                let v = match a.data_type() {
                    DataType::Binary => a.as_binary::<i32>().value(i),
                    _ => a.as_binary::<i64>().value(i),
                };
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            (DataType::Date32, _) => {
                out.put_i32(4);
                out.put_i32(a.as_primitive::<Date32Type>().value(i) - PG_EPOCH_DAYS);
            }
            (DataType::Timestamp(unit, _), _) => {
                let us = match unit {
                    TimeUnit::Second => a
                        .as_primitive::<TimestampSecondType>()
                        .value(i)
                        .checked_mul(1_000_000),
                    TimeUnit::Millisecond => a
                        .as_primitive::<TimestampMillisecondType>()
                        .value(i)
                        .checked_mul(1_000),
                    TimeUnit::Microsecond => {
                        Some(a.as_primitive::<TimestampMicrosecondType>().value(i))
                    }
                    TimeUnit::Nanosecond => {
                        Some(a.as_primitive::<TimestampNanosecondType>().value(i) / 1_000)
                    }
                }
                .ok_or_else(|| range("timestamp"))?;
                out.put_i32(8);
                out.put_i64(us - PG_EPOCH_US);
            }
            _ => unreachable!("checked in new"),
        }
        Ok(())
    }
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let h = (pair[0] as char).to_digit(16)?;
        let l = (pair[1] as char).to_digit(16)?;
        out[i] = (h * 16 + l) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(value: i128, scale: i8) -> i128 {
        let mut buf = BytesMut::new();
        i128_to_numeric(value, scale, &mut buf);
        numeric_to_i128(&buf[4..], scale).unwrap()
    }

    #[test]
    fn numeric_round_trips() {
        for (v, s) in [
            (0i128, 2i8),
            (150, 2),
            (-150, 2),
            (123_456_789, 3),
            (1, 0),
            (9_999_999_999_999_999_999_999_999_999_999_999_999, 10),
            (-5, 5),
            (10_000, 0),
            (7, 4),
        ] {
            assert_eq!(roundtrip(v, s), v, "{v} scale {s}");
        }
    }

    #[test]
    fn numeric_from_postgres_bytes() {
        // 1.5 as PostgreSQL sends it: ndigits 2, weight 0, sign 0, dscale 1, digits 1, 5000.
        let v = [0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(numeric_to_i128(&v, 2).unwrap(), 150);
        // NaN
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert!(numeric_to_i128(&nan, 2).is_err());
    }

    #[test]
    fn uuid_round_trips() {
        let s = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(format_uuid(&parse_uuid(s).unwrap()), s);
        assert!(parse_uuid("nope").is_none());
    }
}
