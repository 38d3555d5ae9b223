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
        ColumnType::Timestamp => TimestampMicrosecondType::parse(s).map(Cell::Ts),
    }
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
    fn header_names_are_made_unique_and_non_empty() {
        let h = csv::ByteRecord::from(vec!["id", "", "id", " name "]);
        assert_eq!(
            column_names(Some(&h), 4),
            vec!["id", "column_2", "id_2", "name"]
        );
        assert_eq!(column_names(None, 2), vec!["column_1", "column_2"]);
    }
}
