//! One face for the three schema kinds: canonical text (identity), parsing with references
//! (validation, 42201), and compatibility between two versions (messages in Confluent's
//! verbose form).

use crate::types::{Compatibility, SchemaType};
use crate::{avro, json_schema, protobuf};

/// A schema parsed for validation and compatibility checks.
#[derive(Debug)]
pub enum Parsed {
    /// Avro.
    Avro(avro::Parsed),
    /// JSON Schema.
    Json(json_schema::Parsed),
    /// Protobuf.
    Protobuf(protobuf::File),
}

/// A referenced schema, resolved: the name the referring schema uses and its text.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The reference's name (Avro full name, `.proto` import path, JSON Schema `$ref`).
    pub name: String,
    /// Its kind.
    pub schema_type: SchemaType,
    /// Its (canonical) text.
    pub schema: String,
}

/// The text stored and compared for identity. Avro and JSON: compact JSON with sorted keys.
/// Protobuf: the text with surrounding whitespace trimmed (descriptors in base64 as given).
pub fn canonical(ty: SchemaType, text: &str) -> Result<String, String> {
    match ty {
        SchemaType::Avro | SchemaType::Json => avro::canonical(text),
        SchemaType::Protobuf => Ok(text.trim().to_string()),
    }
}

/// Parses and validates a schema. `references` holds every schema it depends on,
/// transitively, dependencies before dependants.
pub fn parse(ty: SchemaType, text: &str, references: &[Resolved]) -> Result<Parsed, String> {
    match ty {
        SchemaType::Avro => {
            let refs: Vec<String> = references.iter().map(|r| r.schema.clone()).collect();
            avro::Parsed::parse(text, &refs).map(Parsed::Avro)
        }
        SchemaType::Json => json_schema::Parsed::parse(text, references).map(Parsed::Json),
        SchemaType::Protobuf => protobuf::File::parse(text, references).map(Parsed::Protobuf),
    }
}

/// The full name of a schema's record/message/title, for the record name strategies.
pub fn record_name(parsed: &Parsed) -> Option<String> {
    match parsed {
        Parsed::Avro(p) => p.root_name().map(str::to_string),
        Parsed::Json(p) => p.title().map(str::to_string),
        Parsed::Protobuf(f) => f.first_message(),
    }
}

/// One incompatibility: its type (`READER_FIELD_MISSING_DEFAULT_VALUE`, `TYPE_NARROWED`,
/// `FIELD_KIND_CHANGED`, …), a description, and extra information.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The type of problem, as Confluent names it.
    pub kind: String,
    /// What is wrong, naming the new and the old schema.
    pub description: String,
    /// Where (a path in the schema).
    pub info: String,
}

impl Problem {
    /// Confluent's verbose message form.
    pub fn message(&self) -> String {
        format!(
            "{{errorType:'{}', description:'{}', additionalInfo:'{}'}}",
            self.kind, self.description, self.info
        )
    }
}

/// Checks one direction of compatibility: can a consumer holding `reader` read data
/// produced with `writer`? `reader_is`/`writer_is` name them in messages.
fn can_read(writer: &Parsed, reader: &Parsed, writer_is: &str, reader_is: &str) -> Vec<Problem> {
    match (writer, reader) {
        (Parsed::Avro(w), Parsed::Avro(r)) => avro::can_read(w, r, writer_is, reader_is)
            .into_iter()
            .map(|i| Problem {
                kind: i.kind.to_string(),
                description: i.description,
                info: i.path,
            })
            .collect(),
        (Parsed::Json(w), Parsed::Json(r)) => json_schema::can_read(w, r, writer_is, reader_is),
        (Parsed::Protobuf(w), Parsed::Protobuf(r)) => {
            protobuf::can_read(w, r, writer_is, reader_is)
        }
        _ => vec![Problem {
            kind: "SCHEMA_TYPE_CHANGED".into(),
            description: format!(
                "The {reader_is} and the {writer_is} are of different schema types"
            ),
            info: String::new(),
        }],
    }
}

/// The problems that make `new` incompatible with `old` under `level` (one pair; the caller
/// picks which old versions the level covers).
pub fn check(new: &Parsed, old: &Parsed, level: Compatibility) -> Vec<Problem> {
    let mut out = Vec::new();
    if level.backward() {
        out.extend(can_read(old, new, "old schema", "new schema"));
    }
    if level.forward() {
        out.extend(can_read(new, old, "new schema", "old schema"));
    }
    out
}
