//! `{field}` templates for topics, keys and headers, filled from the columns of a row.
//!
//! `cdc.{table}` → `cdc.orders` for a row whose `table` column holds `orders`. Any column type
//! works (its text form, as Arrow displays it). `{stream}` falls back to the batch's stream name
//! when no column has that name. `{{` and `}}` stand for literal braces.

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType;

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A template that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{template:?}: {message}")]
pub struct TemplateError {
    /// The template as written.
    pub template: String,
    /// What is wrong.
    pub message: String,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let err = |message: &str| TemplateError {
            template: text.to_string(),
            message: message.to_string(),
        };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(err("`{` inside a placeholder")),
                            Some(c) => name.push(c),
                            None => {
                                return Err(err("a `{` is not closed (write `{{` for a brace)"))
                            }
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(err("empty placeholder `{}`"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(err("a `}` without `{` (write `}}` for a brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// Whether the template names no field (the same text for every row).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The text of a constant template.
    pub fn constant(&self) -> Option<String> {
        self.is_constant().then(|| {
            self.parts
                .iter()
                .map(|p| match p {
                    Part::Literal(l) => l.as_str(),
                    Part::Field(_) => "",
                })
                .collect()
        })
    }

    /// Binds the template to a batch's columns.
    pub fn bind<'a>(&self, batch: &'a RecordBatch, stream: &str) -> Result<Bound<'a>, String> {
        let mut parts = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            parts.push(match p {
                Part::Literal(l) => BoundPart::Literal(l.clone()),
                Part::Field(name) => match batch.column_by_name(name) {
                    Some(col) => BoundPart::Field(name.clone(), ColumnText::new(col)?),
                    None if name == "stream" => BoundPart::Literal(stream.to_string()),
                    None => {
                        return Err(format!(
                            "no column `{name}` (columns: {})",
                            column_names(batch)
                        ))
                    }
                },
            });
        }
        Ok(Bound { parts })
    }
}

pub(crate) fn column_names(batch: &RecordBatch) -> String {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column rendered as bytes, row by row.
pub(crate) struct ColumnText<'a> {
    array: &'a ArrayRef,
    kind: TextKind<'a>,
}

enum TextKind<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Binary(&'a arrow_array::BinaryArray),
    LargeBinary(&'a arrow_array::LargeBinaryArray),
    Other(ArrayFormatter<'a>),
}

impl<'a> ColumnText<'a> {
    pub(crate) fn new(array: &'a ArrayRef) -> Result<Self, String> {
        use arrow_array::cast::AsArray;
        let kind = match array.data_type() {
            DataType::Utf8 => TextKind::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => TextKind::LargeUtf8(array.as_string::<i64>()),
            DataType::Binary => TextKind::Binary(array.as_binary::<i32>()),
            DataType::LargeBinary => TextKind::LargeBinary(array.as_binary::<i64>()),
            _ => TextKind::Other(
                ArrayFormatter::try_new(array.as_ref(), &FORMAT).map_err(|e| e.to_string())?,
            ),
        };
        Ok(ColumnText { array, kind })
    }

    pub(crate) fn is_null(&self, row: usize) -> bool {
        self.array.is_null(row)
    }

    /// Whether JSON needs the value quoted (text, dates) rather than written bare (numbers,
    /// booleans).
    pub(crate) fn is_bare_json(&self) -> bool {
        self.array.data_type().is_numeric() || *self.array.data_type() == DataType::Boolean
    }

    /// Appends the row's value (nothing for null).
    pub(crate) fn write(&self, row: usize, out: &mut Vec<u8>) {
        if self.array.is_null(row) {
            return;
        }
        match &self.kind {
            TextKind::Utf8(a) => out.extend_from_slice(a.value(row).as_bytes()),
            TextKind::LargeUtf8(a) => out.extend_from_slice(a.value(row).as_bytes()),
            TextKind::Binary(a) => out.extend_from_slice(a.value(row)),
            TextKind::LargeBinary(a) => out.extend_from_slice(a.value(row)),
            TextKind::Other(f) => {
                use std::io::Write;
                let _ = write!(out, "{}", f.value(row));
            }
        }
    }
}

const FORMAT: FormatOptions<'static> = FormatOptions::new();

enum BoundPart<'a> {
    Literal(String),
    Field(String, ColumnText<'a>),
}

/// A template bound to one batch.
pub struct Bound<'a> {
    parts: Vec<BoundPart<'a>>,
}

impl Bound<'_> {
    /// Renders row `row` into `out` (cleared first). Errors name the null field.
    pub fn render(&self, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        for p in &self.parts {
            match p {
                BoundPart::Literal(l) => out.extend_from_slice(l.as_bytes()),
                BoundPart::Field(name, col) => {
                    if col.is_null(row) {
                        return Err(format!("field `{name}` is null"));
                    }
                    col.write(row, out);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("table", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("orders"), None])),
                Arc::new(Int64Array::from(vec![7, 8])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn renders_fields_stream_and_escaped_braces() {
        let b = batch();
        let t = Template::parse("cdc.{table}.{{{id}}}.{stream}").unwrap();
        let bound = t.bind(&b, "s1").unwrap();
        let mut out = Vec::new();
        bound.render(0, &mut out).unwrap();
        assert_eq!(out, b"cdc.orders.{7}.s1");
        assert_eq!(
            bound.render(1, &mut out).unwrap_err(),
            "field `table` is null"
        );
        assert!(!t.is_constant());
        assert_eq!(
            Template::parse("plain").unwrap().constant().as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn bad_templates_and_unknown_columns_are_named() {
        assert!(Template::parse("a{b")
            .unwrap_err()
            .message
            .contains("not closed"));
        assert!(Template::parse("a}b")
            .unwrap_err()
            .message
            .contains("without"));
        assert!(Template::parse("{}").unwrap_err().message.contains("empty"));
        let e = Template::parse("{nope}")
            .unwrap()
            .bind(&batch(), "s")
            .err()
            .unwrap();
        assert_eq!(e, "no column `nope` (columns: table, id)");
    }
}
