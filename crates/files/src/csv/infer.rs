//! Type inference for CSV columns, and the value parsers shared with the reader.
//!
//! Each column starts as "could be anything" and loses candidate types as values fail to parse
//! as them; the narrowest survivor wins, in the order boolean, int64, float64, date, timestamp,
//! string. Null fields say nothing; a column of only nulls is a string column. Rows past the
//! sample that do not fit are not silently coerced: the reader rejects them with the column,
//! the value and the type, and they go to the dead-letter destination.

use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_cast::parse::Parser;
use arrow_schema::{Field, Schema};

use super::config::ColumnType;

/// A parsed, non-null field value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Cell {
    Str,
    I64(i64),
    F64(f64),
    Bool(bool),
    Date(i32),
    Ts(i64),
}

impl Cell {
    /// The value's bits as its Arrow column stores them (`f64` bits, `true` as 1, dates as
    /// days); text is in the record, so 0.
    #[inline]
    pub(crate) fn bits(self) -> u64 {
        match self {
            Cell::Str => 0,
            Cell::I64(v) | Cell::Ts(v) => v as u64,
            Cell::F64(v) => v.to_bits(),
            Cell::Bool(v) => u64::from(v),
            Cell::Date(v) => v as u64,
        }
    }
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Parses a non-null field as `ty`.
pub(crate) fn parse_cell(ty: ColumnType, s: &str) -> Option<Cell> {
    match ty {
        ColumnType::String => Some(Cell::Str),
        ColumnType::Int64 => Int64Type::parse(s).map(Cell::I64),
        ColumnType::Float64 => Float64Type::parse(s).map(Cell::F64),
        ColumnType::Boolean => parse_bool(s).map(Cell::Bool),
        ColumnType::Date => Date32Type::parse(s)
            .filter(|_| s.len() == 10)
            .map(Cell::Date),
        ColumnType::Timestamp => fast_timestamp(s.as_bytes())
            .or_else(|| TimestampMicrosecondType::parse(s))
            .map(Cell::Ts),
    }
}

/// Parses a non-null field of a non-text column from its bytes. The common shapes (plain
/// integers, floats, `true`/`false`, `YYYY-MM-DDTHH:MM:SSZ`) are read from the bytes directly
/// by the first step of arrow-cast's own parsers, with no UTF-8 check (a field they accept is
/// ASCII); anything else goes through [`parse_cell`] (trimmed numbers, other timestamp
/// shapes), so the result is always `parse_cell`'s.
pub(crate) fn parse_field(ty: ColumnType, b: &[u8]) -> Option<Cell> {
    let fast = match ty {
        // arrow-cast: the last byte is a digit and atoi reads the whole field.
        ColumnType::Int64 if b.last().is_some_and(u8::is_ascii_digit) => match short_int(b) {
            Some(n) => Some(Cell::I64(n)),
            None => match atoi::FromRadix10SignedChecked::from_radix_10_signed_checked(b) {
                (Some(n), used) if used == b.len() => Some(Cell::I64(n)),
                _ => None,
            },
        },
        // arrow-cast: lexical-core on the untrimmed bytes first.
        ColumnType::Float64 => lexical_core::parse::<f64>(b).ok().map(Cell::F64),
        ColumnType::Boolean => {
            return if b.eq_ignore_ascii_case(b"true") {
                Some(Cell::Bool(true))
            } else if b.eq_ignore_ascii_case(b"false") {
                Some(Cell::Bool(false))
            } else {
                None
            };
        }
        ColumnType::Timestamp => fast_timestamp(b).map(Cell::Ts),
        _ => None,
    };
    fast.or_else(|| parse_cell(ty, std::str::from_utf8(b).ok()?))
}

/// An optional sign and 1 to 18 digits: too short to overflow, so without atoi's check per
/// digit (the same value as atoi's where it answers; longer numbers go to atoi).
#[inline]
fn short_int(b: &[u8]) -> Option<i64> {
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let n = self::digits(digits)?;
    Some(if negative { -n } else { n })
}

/// `YYYY-MM-DDTHH:MM:SS` with `T` or a space, optionally ending in `Z`: the most common
/// timestamp in exported data, parsed without the general parser (which handles fractions,
/// offsets and other shapes, and is three times slower). Returns microseconds since the epoch.
/// Unlike arrow-cast's parser, which goes through nanoseconds, it accepts years outside
/// 1677-2262 (`9999-12-31 23:59:59` sentinels, historical dates).
fn fast_timestamp(b: &[u8]) -> Option<i64> {
    if !(b.len() == 19 || (b.len() == 20 && b[19] == b'Z')) {
        return None;
    }
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hh, mm, ss) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m)
        || d < 1
        || d > month_days[(m - 1) as usize]
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000_000 + ss * 1_000_000)
}

/// The number a run of ASCII digits spells, or `None` for any other byte. Inlined: its
/// callers pass fixed-length slices, so the loop unrolls (as a closure it was a call per field,
/// 1.5% of a CSV → Parquet run).
#[inline(always)]
fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(v)
}

const CANDIDATES: [ColumnType; 5] = [
    ColumnType::Boolean,
    ColumnType::Int64,
    ColumnType::Float64,
    ColumnType::Date,
    ColumnType::Timestamp,
];

/// The surviving candidate types of one column during inference.
#[derive(Clone, Debug)]
pub(crate) struct ColumnGuess {
    possible: [bool; 5],
    seen: bool,
}

impl Default for ColumnGuess {
    fn default() -> Self {
        ColumnGuess {
            possible: [true; 5],
            seen: false,
        }
    }
}

impl ColumnGuess {
    pub(crate) fn observe(&mut self, value: &str) {
        self.seen = true;
        for (i, ty) in CANDIDATES.iter().enumerate() {
            if self.possible[i] && parse_cell(*ty, value).is_none() {
                self.possible[i] = false;
            }
        }
    }

    pub(crate) fn result(&self) -> ColumnType {
        if !self.seen {
            return ColumnType::String;
        }
        CANDIDATES
            .iter()
            .zip(self.possible)
            .find(|(_, ok)| *ok)
            .map_or(ColumnType::String, |(ty, _)| *ty)
    }
}

/// Column names from a header record: empty names become `column_N`, duplicates get `_2`, `_3`.
pub(crate) fn column_names(header: Option<&csv::ByteRecord>, width: usize) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(width);
    for i in 0..width {
        let raw = header
            .and_then(|h| h.get(i))
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("column_{}", i + 1));
        let mut name = raw.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{raw}_{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

/// Builds the schema from names and inferred types. All columns are nullable.
pub fn infer_schema(names: &[String], types: &[ColumnType]) -> Schema {
    Schema::new(
        names
            .iter()
            .zip(types)
            .map(|(n, t)| Field::new(n, t.data_type(), true))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guess(values: &[&str]) -> ColumnType {
        let mut g = ColumnGuess::default();
        for v in values {
            g.observe(v);
        }
        g.result()
    }

    #[test]
    fn narrowest_type_that_fits_every_value_wins() {
        assert_eq!(guess(&["1", "-2", "30"]), ColumnType::Int64);
        assert_eq!(
            guess(&["1", "2.5"]),
            ColumnType::Float64,
            "an int column that sees a float widens"
        );
        assert_eq!(guess(&["true", "FALSE"]), ColumnType::Boolean);
        assert_eq!(guess(&["2024-01-31", "1999-12-01"]), ColumnType::Date);
        assert_eq!(
            guess(&["2024-01-31T10:00:00Z", "2024-01-31 10:00:00.123"]),
            ColumnType::Timestamp
        );
        assert_eq!(
            guess(&["2024-01-31", "2024-01-31T10:00:00Z"]),
            ColumnType::Timestamp
        );
        assert_eq!(guess(&["1", "x"]), ColumnType::String);
        assert_eq!(guess(&[]), ColumnType::String, "only nulls");
        assert_eq!(guess(&["00501", "12345"]), ColumnType::Int64);
    }

    #[test]
    fn the_timestamp_fast_path_agrees_with_the_general_parser() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..20_000 {
            let s = format!(
                "{:04}-{:02}-{:02}{}{:02}:{:02}:{:02}{}",
                1 + next(2999),
                next(14),
                next(33),
                if next(2) == 0 { 'T' } else { ' ' },
                next(26),
                next(62),
                next(62),
                if next(2) == 0 { "Z" } else { "" }
            );
            let general = TimestampMicrosecondType::parse(&s);
            if let Some(fast) = fast_timestamp(s.as_bytes()) {
                let year: i64 = s[..4].parse().unwrap();
                if (1678..=2261).contains(&year) {
                    assert_eq!(Some(fast), general, "{s}");
                } else if !(1677..=2262).contains(&year) {
                    // arrow-cast parses through nanoseconds and rejects years outside
                    // 1677-2262; microseconds hold them, and so does the fast path.
                    assert_eq!(general, None, "{s}");
                }
            } else {
                // The fast path declines; the general parser decides (both reject or it parses).
                assert_eq!(
                    parse_cell(ColumnType::Timestamp, &s),
                    general.map(Cell::Ts),
                    "{s}"
                );
            }
        }
        assert_eq!(fast_timestamp(b"1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(
            fast_timestamp(b"2024-02-29 12:00:00"),
            Some(1_709_208_000_000_000)
        );
        assert_eq!(fast_timestamp(b"2023-02-29 12:00:00"), None);
        assert_eq!(
            fast_timestamp(b"2023-01-01T00:00:00+01:00"),
            None,
            "offsets go to the general parser"
        );
        assert_eq!(
            fast_timestamp(b"9999-12-31 23:59:59"),
            Some(253_402_300_799_000_000),
            "sentinel dates survive"
        );
    }

    #[test]
    fn parsing_from_bytes_equals_parsing_the_text() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut fields: Vec<Vec<u8>> = [
            "0",
            "-0",
            "+7",
            "-",
            "+",
            "",
            " 12",
            "12 ",
            "1_000",
            "00042",
            "1e3",
            "1.",
            ".5",
            "-.5e-3",
            "NaN",
            "nan",
            "inf",
            "-Infinity",
            "1,5",
            "0x10",
            "TRUE",
            "False",
            "t",
            "yes",
            "9223372036854775807",
            "-9223372036854775808",
            "999999999999999999",
            "-999999999999999999",
            "1000000000000000000",
            "+-5",
            "-+5",
            "--5",
            "12345678901",
            "9223372036854775808",
            "1.7976931348623157e308",
            "1e400",
            "4.9e-324",
            "2024-02-29",
            "2024-02-30",
            "2024-01-31T10:00:00Z",
            "2024-01-31 10:00:00.5",
            "2024-01-31T10:00:00+02:00",
            "\u{a0}12",
            "12\u{a0}",
            "\u{2003}1.5",
            "１２",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let alphabet = b"0123456789+-.eE \tinfaNtrueFALS:TZ";
        for _ in 0..50_000 {
            let len = 1 + next(22) as usize;
            fields.push(
                (0..len)
                    .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for _ in 0..2_000 {
            // Digits around bytes that are not UTF-8.
            let mut f = next(1_000_000).to_string().into_bytes();
            f.insert(
                next(f.len() as u64 + 1) as usize,
                [0xff, 0xc3, 0x80][next(3) as usize],
            );
            fields.push(f);
        }
        let types = [
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Boolean,
            ColumnType::Date,
            ColumnType::Timestamp,
        ];
        for f in &fields {
            for ty in types {
                let expected = std::str::from_utf8(f).ok().and_then(|s| parse_cell(ty, s));
                let got = parse_field(ty, f);
                // NaN != NaN: compare floats by their bits.
                let same = match (got, expected) {
                    (Some(Cell::F64(a)), Some(Cell::F64(b))) => a.to_bits() == b.to_bits(),
                    (a, b) => a == b,
                };
                assert!(
                    same,
                    "{ty:?} {:?}: {got:?} vs {expected:?}",
                    String::from_utf8_lossy(f)
                );
            }
        }
    }

    #[test]
    fn header_names_are_made_unique_and_non_empty() {
        let h = csv::ByteRecord::from(vec!["id", "", "id", " name "]);
        assert_eq!(
            column_names(Some(&h), 4),
            vec!["id", "column_2", "id_2", "name"]
        );
        assert_eq!(column_names(None, 2), vec!["column_1", "column_2"]);
    }
}
