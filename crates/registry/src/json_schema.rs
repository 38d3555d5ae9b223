//! JSON Schema (placeholder: identical schemas only).

use serde_json::Value;

use crate::schema::{Problem, Resolved};

/// A parsed JSON Schema document.
#[derive(Debug)]
pub struct Parsed {
    root: Value,
}

impl Parsed {
    /// Parses a document.
    pub fn parse(text: &str, _references: &[Resolved]) -> Result<Parsed, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if !root.is_object() && !root.is_boolean() {
            return Err("a JSON Schema is an object or a boolean".into());
        }
        Ok(Parsed { root })
    }

    /// The root `title`.
    pub fn title(&self) -> Option<&str> {
        self.root.get("title").and_then(Value::as_str)
    }
}

/// Whether `reader` accepts everything `writer` accepts.
pub fn can_read(writer: &Parsed, reader: &Parsed, _w: &str, _r: &str) -> Vec<Problem> {
    if writer.root == reader.root {
        return Vec::new();
    }
    vec![Problem {
        kind: "UNSUPPORTED".into(),
        description: "JSON Schema compatibility is not checked yet".into(),
        info: String::new(),
    }]
}
