//! Protobuf (placeholder: identical schemas only).

use crate::schema::{Problem, Resolved};

/// A parsed `.proto` file.
#[derive(Debug)]
pub struct File {
    text: String,
}

impl File {
    /// Parses a file.
    pub fn parse(text: &str, _references: &[Resolved]) -> Result<File, String> {
        Ok(File {
            text: text.trim().to_string(),
        })
    }

    /// The first message's full name.
    pub fn first_message(&self) -> Option<String> {
        None
    }
}

/// Whether `reader` reads what `writer` wrote.
pub fn can_read(writer: &File, reader: &File, _w: &str, _r: &str) -> Vec<Problem> {
    if writer.text == reader.text {
        return Vec::new();
    }
    vec![Problem {
        kind: "UNSUPPORTED".into(),
        description: "Protobuf compatibility is not checked yet".into(),
        info: String::new(),
    }]
}
