//! Cell values: what calamine hands over, how a column's type is inferred from them, and how
//! each value is converted to its column's Arrow type.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, DurationMicrosecondBuilder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::temporal_conversions::{timestamp_us_to_datetime, MICROSECONDS_IN_DAY};
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::ArrayRef;
use arrow_cast::parse::Parser;
use arrow_schema::{DataType, TimeUnit};
use calamine::{Data, DataType as _};

/// Integers up to 2^53 are exact as `f64`.
const EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

/// One cell, as the source sees it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value<'a> {
    /// No value (also an empty text cell).
    Empty,
    /// An integer (`.xls` RK cells; never from `.xlsx`, where every number is a float).
    Int(i64),
    /// A number.
    Float(f64),
    /// `TRUE`/`FALSE`.
    Bool(bool),
    /// A text cell.
    Text(&'a str),
    /// A date or date and time, microseconds since 1970-01-01 (no time zone).
    Timestamp(i64),
    /// A duration (`[h]:mm` format, ODS time values) or a time of day without a date,
    /// in microseconds.
    Duration(i64),
    /// An error cell, with its text (`#DIV/0!`, `#N/A`).
    Error(String),
    /// A date serial outside the range of a timestamp.
    BadDate(f64),
}

impl<'a> Value<'a> {
    /// Reads a calamine cell.
    pub(super) fn of(cell: &'a Data) -> Value<'a> {
        match cell {
            Data::Empty => Value::Empty,
            Data::Int(i) => Value::Int(*i),
            Data::Float(f) => Value::Float(*f),
            Data::Bool(b) => Value::Bool(*b),
            Data::String(s) if s.is_empty() => Value::Empty,
            Data::String(s) => Value::Text(s),
            Data::DateTime(dt) if dt.is_duration() || (0.0..1.0).contains(&dt.as_f64()) => {
                // Serial values below 1 have no date part: a time of day ("12:30").
                let us = (dt.as_f64() * MICROSECONDS_IN_DAY as f64 / 1000.0).round() as i64;
                Value::Duration(us.saturating_mul(1000))
            }
            Data::DateTime(dt) => match dt.as_datetime() {
                Some(t) => Value::Timestamp(t.and_utc().timestamp_micros()),
                None => Value::BadDate(dt.as_f64()),
            },
            Data::DateTimeIso(s) => match iso_timestamp(cell, s) {
                Some(us) => Value::Timestamp(us),
                None => Value::Text(s),
            },
            Data::DurationIso(s) => match iso_duration(s) {
                Some(us) => Value::Duration(us),
                None => Value::Text(s),
            },
            Data::Error(e) => Value::Error(e.to_string()),
        }
    }

    /// Whether the cell holds nothing.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Value::Empty)
    }

    /// The value as text: what a string column holds for it. `None` for an empty cell.
    pub(super) fn text(&self) -> Option<Cow<'a, str>> {
        Some(match self {
            Value::Empty => return None,
            Value::Int(i) => i.to_string().into(),
            Value::Float(f) => float_text(*f).into(),
            Value::Bool(b) => (if *b { "true" } else { "false" }).into(),
            Value::Text(s) => Cow::Borrowed(*s),
            Value::Timestamp(us) => timestamp_text(*us).into(),
            Value::Duration(us) => duration_text(*us).into(),
            Value::Error(e) => e.clone().into(),
            Value::BadDate(f) => float_text(*f).into(),
        })
    }
}

/// A whole float prints without `.0` (`.xlsx` stores every number as a float).
fn float_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < EXACT_F64_INT {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// `2024-03-01` at midnight, else `2024-03-01T09:30:00` (with `.250` when there are
/// fractions of a second).
pub(super) fn timestamp_text(us: i64) -> String {
    match timestamp_us_to_datetime(us) {
        Some(t) if us.rem_euclid(MICROSECONDS_IN_DAY) == 0 => t.format("%Y-%m-%d").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        None => us.to_string(),
    }
}

/// `36:15:00` (hours can pass 24), with `.250` when there are fractions of a second.
fn duration_text(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let us = us.unsigned_abs();
    let (secs, frac) = (us / 1_000_000, us % 1_000_000);
    let mut text = format!(
        "{sign}{}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text
}

/// An ISO 8601 date or date-time cell (`.ods` dates, `.xlsx` cells of type `d`) in
/// microseconds: a date alone is midnight, an offset is converted to UTC.
fn iso_timestamp(cell: &Data, s: &str) -> Option<i64> {
    cell.as_datetime()
        .or_else(|| cell.as_date().and_then(|d| d.and_hms_opt(0, 0, 0)))
        .map(|t| t.and_utc().timestamp_micros())
        .or_else(|| TimestampMicrosecondType::parse(s.trim()))
}

/// An ISO 8601 duration as `.ods` writes them (`PT36H15M00S`, `P1DT2H`, `-PT0.5S`), in
/// microseconds. Years and months (no fixed length) are not accepted.
pub(super) fn iso_duration(s: &str) -> Option<i64> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let rest = rest.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total: f64 = 0.0;
    if !days.is_empty() {
        total += days.strip_suffix('D')?.parse::<f64>().ok()? * 86_400.0;
    }
    let mut number = String::new();
    let mut any = !days.is_empty();
    for c in time.chars() {
        let unit = match c {
            'H' => 3_600.0,
            'M' => 60.0,
            'S' => 1.0,
            c if c.is_ascii_digit() || c == '.' || c == ',' => {
                number.push(if c == ',' { '.' } else { c });
                continue;
            }
            _ => return None,
        };
        total += std::mem::take(&mut number).parse::<f64>().ok()? * unit;
        any = true;
    }
    if !number.is_empty() || !any {
        return None;
    }
    let us = (total * 1e6).round() as i64;
    Some(if negative { -us } else { us })
}

/// What inference saw in a column.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Guess {
    bools: bool,
    ints: bool,
    /// An integer too large to be exact as a float.
    big_ints: bool,
    floats: bool,
    timestamps: bool,
    durations: bool,
    texts: bool,
}

impl Guess {
    /// Takes one value into account (empty cells and error cells say nothing).
    pub(super) fn observe(&mut self, value: &Value<'_>) {
        match value {
            Value::Empty | Value::Error(_) | Value::BadDate(_) => {}
            Value::Bool(_) => self.bools = true,
            Value::Int(i) => {
                self.ints = true;
                self.big_ints |= (*i as f64).abs() > EXACT_F64_INT;
            }
            // A whole number in an `.xlsx` file is still a float: it counts as an integer.
            Value::Float(f) if f.fract() == 0.0 && f.abs() <= EXACT_F64_INT => self.ints = true,
            Value::Float(_) => self.floats = true,
            Value::Timestamp(_) => self.timestamps = true,
            Value::Duration(_) => self.durations = true,
            Value::Text(_) => self.texts = true,
        }
    }

    /// The column's type: one kind of value keeps its type, integers and floats make
    /// `float64`, any other mix (or no value at all) makes a string column.
    pub(super) fn data_type(&self) -> DataType {
        let numbers = self.ints || self.floats;
        let kinds = [
            self.bools,
            numbers,
            self.timestamps,
            self.durations,
            self.texts,
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds != 1 {
            return DataType::Utf8;
        }
        if self.bools {
            DataType::Boolean
        } else if self.ints && !self.floats {
            DataType::Int64
        } else if numbers && !self.big_ints {
            DataType::Float64
        } else if self.timestamps {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        } else if self.durations {
            DataType::Duration(TimeUnit::Microsecond)
        } else {
            DataType::Utf8
        }
    }
}

/// Whether this source can write a column of this type (stored schemas are checked).
pub(super) fn supported(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8
            | DataType::Int64
            | DataType::Float64
            | DataType::Boolean
            | DataType::Date32
            | DataType::Timestamp(TimeUnit::Microsecond, None)
            | DataType::Duration(TimeUnit::Microsecond)
    )
}

/// A converted, non-null value, ready for its column's builder.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i32),
    Ts(i64),
    Dur(i64),
}

/// Why a value does not go into its column.
#[derive(Debug, PartialEq)]
pub(super) enum Mismatch {
    /// An error cell: the row is rejected whatever the schema policy.
    ErrorCell(String),
    /// A value of another type: rejected, or dropped under `discard_rows`.
    Type(String),
}

/// Converts a non-empty value to a column of type `dt`.
pub(super) fn convert<'a>(value: &Value<'a>, dt: &DataType) -> Result<Scalar<'a>, Mismatch> {
    match value {
        Value::Error(e) => return Err(Mismatch::ErrorCell(format!("error cell {e}"))),
        Value::BadDate(f) => {
            return Err(Mismatch::ErrorCell(format!(
                "date serial {f} is out of range"
            )))
        }
        _ => {}
    }
    let converted = match (dt, value) {
        (DataType::Utf8, v) => v.text().map(Scalar::Str),
        (DataType::Int64, Value::Int(i)) => Some(Scalar::I64(*i)),
        (DataType::Int64, Value::Float(f))
            if f.fract() == 0.0
                && *f >= -9.223_372_036_854_775e18
                && *f < 9.223_372_036_854_775e18 =>
        {
            Some(Scalar::I64(*f as i64))
        }
        (DataType::Int64, Value::Text(s)) => Int64Type::parse(s.trim()).map(Scalar::I64),
        (DataType::Float64, Value::Float(f)) => Some(Scalar::F64(*f)),
        (DataType::Float64, Value::Int(i)) if (*i as f64).abs() <= EXACT_F64_INT => {
            Some(Scalar::F64(*i as f64))
        }
        (DataType::Float64, Value::Text(s)) => Float64Type::parse(s.trim()).map(Scalar::F64),
        (DataType::Boolean, Value::Bool(b)) => Some(Scalar::Bool(*b)),
        (DataType::Boolean, Value::Text(s)) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("true") {
                Some(Scalar::Bool(true))
            } else if s.eq_ignore_ascii_case("false") {
                Some(Scalar::Bool(false))
            } else {
                None
            }
        }
        (DataType::Timestamp(..), Value::Timestamp(us)) => Some(Scalar::Ts(*us)),
        (DataType::Timestamp(..), Value::Text(s)) => {
            TimestampMicrosecondType::parse(s.trim()).map(Scalar::Ts)
        }
        (DataType::Date32, Value::Timestamp(us)) if us.rem_euclid(MICROSECONDS_IN_DAY) == 0 => {
            i32::try_from(us.div_euclid(MICROSECONDS_IN_DAY))
                .ok()
                .map(Scalar::Date)
        }
        (DataType::Date32, Value::Text(s)) => Date32Type::parse(s.trim())
            .filter(|_| s.trim().len() == 10)
            .map(Scalar::Date),
        (DataType::Duration(_), Value::Duration(us)) => Some(Scalar::Dur(*us)),
        (DataType::Duration(_), Value::Text(s)) => iso_duration(s.trim()).map(Scalar::Dur),
        _ => None,
    };
    converted.ok_or_else(|| {
        let shown = value.text().unwrap_or_default();
        let shown: String = shown.chars().take(80).collect();
        Mismatch::Type(format!("expected {}, found {shown:?}", type_name(dt)))
    })
}

/// The name of a column type in messages (the `columns:` vocabulary).
pub(super) fn type_name(dt: &DataType) -> &'static str {
    match dt {
        DataType::Utf8 => "string",
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Boolean => "boolean",
        DataType::Date32 => "date",
        DataType::Timestamp(..) => "timestamp",
        DataType::Duration(_) => "duration",
        _ => "an unsupported type",
    }
}

/// One Arrow builder per column.
enum Builder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
    Dur(DurationMicrosecondBuilder),
}

/// The columns of the batch being built.
pub(super) struct Columns {
    builders: Vec<Builder>,
    rows: usize,
}

impl Columns {
    /// Builders for `types` (each one [`supported`]).
    pub(super) fn new(types: &[DataType], capacity: usize) -> Self {
        let builders = types
            .iter()
            .map(|t| match t {
                DataType::Int64 => Builder::I64(Int64Builder::with_capacity(capacity)),
                DataType::Float64 => Builder::F64(Float64Builder::with_capacity(capacity)),
                DataType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
                DataType::Date32 => Builder::Date(Date32Builder::with_capacity(capacity)),
                DataType::Timestamp(..) => {
                    Builder::Ts(TimestampMicrosecondBuilder::with_capacity(capacity))
                }
                DataType::Duration(_) => {
                    Builder::Dur(DurationMicrosecondBuilder::with_capacity(capacity))
                }
                _ => Builder::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
            })
            .collect();
        Columns { builders, rows: 0 }
    }

    /// Appends one row: one converted value (or null) per column.
    pub(super) fn append(&mut self, row: &[Option<Scalar<'_>>]) {
        for (builder, value) in self.builders.iter_mut().zip(row) {
            match (builder, value) {
                (Builder::Str(b), Some(Scalar::Str(s))) => b.append_value(s),
                (Builder::I64(b), Some(Scalar::I64(v))) => b.append_value(*v),
                (Builder::F64(b), Some(Scalar::F64(v))) => b.append_value(*v),
                (Builder::Bool(b), Some(Scalar::Bool(v))) => b.append_value(*v),
                (Builder::Date(b), Some(Scalar::Date(v))) => b.append_value(*v),
                (Builder::Ts(b), Some(Scalar::Ts(v))) => b.append_value(*v),
                (Builder::Dur(b), Some(Scalar::Dur(v))) => b.append_value(*v),
                (Builder::Str(b), _) => b.append_null(),
                (Builder::I64(b), _) => b.append_null(),
                (Builder::F64(b), _) => b.append_null(),
                (Builder::Bool(b), _) => b.append_null(),
                (Builder::Date(b), _) => b.append_null(),
                (Builder::Ts(b), _) => b.append_null(),
                (Builder::Dur(b), _) => b.append_null(),
            }
        }
        self.rows += 1;
    }

    /// The arrays of the rows appended so far; the builders start over.
    pub(super) fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(b) => Arc::new(b.finish()),
                    Builder::I64(b) => Arc::new(b.finish()),
                    Builder::F64(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::Date(b) => Arc::new(b.finish()),
                    Builder::Ts(b) => Arc::new(b.finish()),
                    Builder::Dur(b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{ExcelDateTime, ExcelDateTimeType};

    fn infer(values: &[Value<'_>]) -> DataType {
        let mut g = Guess::default();
        for v in values {
            g.observe(v);
        }
        g.data_type()
    }

    #[test]
    fn whole_floats_are_integers_and_a_mix_widens_or_becomes_text() {
        use Value::*;
        assert_eq!(infer(&[Float(1.0), Float(2.0), Empty]), DataType::Int64);
        assert_eq!(infer(&[Float(1.0), Float(2.5)]), DataType::Float64);
        assert_eq!(infer(&[Int(1), Float(2.5)]), DataType::Float64);
        assert_eq!(infer(&[Int(i64::MAX), Float(2.5)]), DataType::Utf8);
        assert_eq!(infer(&[Bool(true), Float(1.0)]), DataType::Utf8);
        assert_eq!(infer(&[Text("a"), Float(1.0)]), DataType::Utf8);
        assert_eq!(infer(&[Empty, Error("#N/A".into())]), DataType::Utf8);
        assert_eq!(
            infer(&[Timestamp(0), Empty]),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(
            infer(&[Duration(5)]),
            DataType::Duration(TimeUnit::Microsecond)
        );
    }

    #[test]
    fn serial_dates_use_the_workbook_epoch_and_times_alone_are_durations() {
        let day = |v: f64, is_1904: bool, expected: Value<'_>| {
            let cell = Data::DateTime(ExcelDateTime::new(v, ExcelDateTimeType::DateTime, is_1904));
            assert_eq!(Value::of(&cell), expected, "serial {v}, 1904: {is_1904}");
        };
        // 2024-03-01 06:00 is 45352.25 in the 1900 system and 43890.25 in the 1904 one.
        day(45352.25, false, Value::Timestamp(1_709_272_800_000_000));
        day(43890.25, true, Value::Timestamp(1_709_272_800_000_000));
        // Before 1900-03-01 Excel counts a 29 February 1900 that never was.
        day(1.0, false, Value::Timestamp(-2_208_988_800_000_000));
        day(0.5, false, Value::Duration(43_200_000_000));
        let span = Data::DateTime(ExcelDateTime::new(1.5, ExcelDateTimeType::TimeDelta, false));
        assert_eq!(Value::of(&span), Value::Duration(129_600_000_000));
        assert_eq!(duration_text(129_600_250_000), "36:00:00.25");
    }

    #[test]
    fn iso_cells_parse_and_text_forms_are_what_a_person_sees() {
        let date = Data::DateTimeIso("2024-03-01".into());
        assert_eq!(Value::of(&date), Value::Timestamp(1_709_251_200_000_000));
        let dt = Data::DateTimeIso("2024-03-01T12:00:00".into());
        assert_eq!(Value::of(&dt), Value::Timestamp(1_709_294_400_000_000));
        assert_eq!(iso_duration("PT36H15M00S"), Some(130_500_000_000));
        assert_eq!(iso_duration("P1DT0.5S"), Some(86_400_500_000));
        assert_eq!(iso_duration("PT"), None);
        assert_eq!(iso_duration("P1Y"), None);
        assert_eq!(timestamp_text(1_709_251_200_000_000), "2024-03-01");
        assert_eq!(
            timestamp_text(1_709_294_400_250_000),
            "2024-03-01T12:00:00.250"
        );
        assert_eq!(Value::Float(7.0).text().unwrap(), "7");
        assert_eq!(Value::Float(2.5).text().unwrap(), "2.5");
        assert_eq!(Value::Bool(true).text().unwrap(), "true");
    }

    #[test]
    fn conversion_never_changes_a_value_silently() {
        assert_eq!(
            convert(&Value::Float(3.0), &DataType::Int64),
            Ok(Scalar::I64(3))
        );
        assert_eq!(
            convert(&Value::Float(2.5), &DataType::Int64),
            Err(Mismatch::Type("expected int64, found \"2.5\"".into()))
        );
        assert_eq!(
            convert(&Value::Int(i64::MAX), &DataType::Float64),
            Err(Mismatch::Type(format!(
                "expected float64, found \"{}\"",
                i64::MAX
            )))
        );
        assert_eq!(
            convert(&Value::Text("02134"), &DataType::Utf8),
            Ok(Scalar::Str("02134".into()))
        );
        assert_eq!(
            convert(&Value::Text("12"), &DataType::Int64),
            Ok(Scalar::I64(12))
        );
        assert_eq!(
            convert(&Value::Error("#N/A".into()), &DataType::Utf8),
            Err(Mismatch::ErrorCell("error cell #N/A".into()))
        );
        assert_eq!(
            convert(&Value::Timestamp(86_400_000_000), &DataType::Date32),
            Ok(Scalar::Date(1))
        );
    }
}
