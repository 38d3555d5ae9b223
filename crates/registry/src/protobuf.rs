//! Protobuf schemas: `.proto` text (proto2 and proto3) or a base64 `FileDescriptorProto` (what
//! Confluent's Python and Go serializers register), reduced to what compatibility needs:
//! package, messages (nested ones by full name), their fields by number (name, label, type,
//! oneof) and enums.
//!
//! Both forms are read by small parsers here rather than `protobuf-parse` (a full compiler
//! front end with its own `protobuf` runtime) or `protox` + `prost-reflect` (`prost`,
//! `prost-types`, `protox-parse` with `logos` and `miette`, proc-macro derives):
//! compatibility only needs declarations, not options, services or a descriptor pool, and
//! the descriptor's wire format is a few dozen lines.
//!
//! Compatibility follows Confluent's Protobuf rules: compatible are fields and messages added,
//! fields removed (proto readers skip unknown numbers and default missing ones), renames,
//! enum constants added or removed, and scalar changes within a wire-compatible group
//! (`int32`/`uint32`/`int64`/`uint64`/`bool`/enums, `sint32`/`sint64`, `fixed32`/`sfixed32`,
//! `fixed64`/`sfixed64`, `string`/`bytes`). Incompatible: `PACKAGE_CHANGED`, `MESSAGE_REMOVED`,
//! `FIELD_KIND_CHANGED` (scalar ↔ message/enum), `FIELD_SCALAR_KIND_CHANGED` (across groups,
//! e.g. a field number reused with another type), `FIELD_NAMED_TYPE_CHANGED`,
//! `FIELD_LABEL_CHANGED` (repeated ↔ singular), `REQUIRED_FIELD_ADDED`,
//! `REQUIRED_FIELD_REMOVED`, `ONEOF_FIELD_REMOVED`, `MULTIPLE_FIELDS_MOVED_TO_ONEOF`.
//! A `.proto` text and a descriptor of the same file are compared by content, but they are
//! different texts, so they get different ids (Confluent normalizes both to text).

use std::collections::{BTreeMap, HashSet};

use base64::Engine;

use crate::schema::{Problem, Resolved};

/// A field's cardinality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// Singular (proto3 implicit, or `optional`).
    Optional,
    /// proto2 `required`.
    Required,
    /// `repeated` (maps too).
    Repeated,
}

/// A field's type: a scalar keyword or a named message/enum (full name, no leading dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// `int32`, `string`, …
    Scalar(String),
    /// A message or enum.
    Named(String),
}

/// A field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Its label.
    pub label: Label,
    /// Its type.
    pub ty: FieldType,
    /// The oneof it belongs to.
    pub oneof: Option<String>,
    /// Explicit presence: an absent value is distinguishable from the default (proto2
    /// singular fields, proto3 `optional`, oneof members). Without it (proto3 plain scalars)
    /// an absent value reads as the type's default.
    pub presence: bool,
}

/// A message: fields by number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Fields by number.
    pub fields: BTreeMap<i64, Field>,
    /// Nested messages' full names in declaration order (map entries included, where their
    /// map field is), for Confluent's message indexes.
    pub nested: Vec<String>,
    /// A map field's entry message (`key = 1`, `value = 2`).
    pub map_entry: bool,
}

/// A parsed file.
#[derive(Clone, Debug, Default)]
pub struct File {
    /// `package`.
    pub package: String,
    /// Messages by full name (`pkg.Outer.Inner`), nested ones included.
    pub messages: BTreeMap<String, Message>,
    /// Enums by full name, with their constants.
    pub enums: BTreeMap<String, Vec<(String, i64)>>,
    /// Top-level messages in declaration order.
    order: Vec<String>,
}

const SCALARS: [&str; 15] = [
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
    "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
];

/// Reads a base-128 varint (the wire format's integers, tags and lengths) from the front of
/// `b`, advancing it.
pub fn read_varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// One field occurrence of an encoded message: the wire format's four kinds of value.
pub enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1, little-endian.
    Fixed64([u8; 8]),
    /// Wire type 5, little-endian.
    Fixed32([u8; 4]),
    /// Wire type 2: a string, bytes, a message or packed scalars.
    Bytes(&'a [u8]),
}

/// The (field number, value) pairs of an encoded message, in order (groups are refused).
pub fn wire_fields(mut b: &[u8]) -> Result<Vec<(u32, WireValue<'_>)>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let number = u32::try_from(key >> 3).map_err(|_| "bad field number")?;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match key & 7 {
            0 => WireValue::Varint(read_varint(&mut b)?),
            1 => {
                let (v, rest) = b
                    .split_first_chunk::<8>()
                    .ok_or("truncated fixed64 field")?;
                b = rest;
                WireValue::Fixed64(*v)
            }
            5 => {
                let (v, rest) = b
                    .split_first_chunk::<4>()
                    .ok_or("truncated fixed32 field")?;
                b = rest;
                WireValue::Fixed32(*v)
            }
            2 => {
                let len = usize::try_from(read_varint(&mut b)?).map_err(|_| "bad length")?;
                if b.len() < len {
                    return Err(format!(
                        "field {number}: length {len} runs past the end of the message"
                    ));
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                WireValue::Bytes(v)
            }
            w => return Err(format!("field {number}: unsupported wire type {w}")),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// `snake_case` → `CamelCase`, as protoc names the entry message of a map field
/// (`tag_counts` → `TagCountsEntry`) and as the Kafka codec names messages after fields.
pub fn camel_case(s: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

impl File {
    /// Parses `.proto` text, or a base64 `FileDescriptorProto` (when the text is valid base64
    /// and decodes as one). `references` are the imported files.
    pub fn parse(text: &str, references: &[Resolved]) -> Result<File, String> {
        let mut file = parse_any(text)?;
        let mut known: HashSet<String> = file
            .messages
            .keys()
            .chain(file.enums.keys())
            .cloned()
            .collect();
        for r in references {
            if let Ok(dep) = parse_any(&r.schema) {
                known.extend(dep.messages.keys().cloned());
                known.extend(dep.enums.keys().cloned());
            }
        }
        file.resolve(&known)?;
        Ok(file)
    }

    /// The first top-level message's full name.
    pub fn first_message(&self) -> Option<String> {
        self.order.first().cloned()
    }

    /// The message at Confluent's message-index path: `[i]` is the i-th top-level message,
    /// `[i, j]` the j-th message nested in it, and so on.
    pub fn message_at(&self, path: &[i64]) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        let mut name = self.order.get(usize::try_from(*first).ok()?)?;
        for i in rest {
            name = self
                .messages
                .get(name)?
                .nested
                .get(usize::try_from(*i).ok()?)?;
        }
        Some(name)
    }

    /// The message-index path of message `name` (the inverse of [`File::message_at`]).
    pub fn message_path(&self, name: &str) -> Option<Vec<i64>> {
        fn find(file: &File, names: &[String], name: &str, path: &mut Vec<i64>) -> bool {
            for (i, n) in names.iter().enumerate() {
                path.push(i as i64);
                if n == name {
                    return true;
                }
                if let Some(m) = file.messages.get(n) {
                    if find(file, &m.nested, name, path) {
                        return true;
                    }
                }
                path.pop();
            }
            false
        }
        let mut path = Vec::new();
        find(self, &self.order, name, &mut path).then_some(path)
    }

    /// Resolves relative type names with protobuf's scoping rules (innermost scope first).
    fn resolve(&mut self, known: &HashSet<String>) -> Result<(), String> {
        let names: Vec<String> = self.messages.keys().cloned().collect();
        for msg in names {
            let fields: Vec<i64> = self.messages[&msg].fields.keys().copied().collect();
            for n in fields {
                let FieldType::Named(t) = &self.messages[&msg].fields[&n].ty else {
                    continue;
                };
                let resolved = if let Some(abs) = t.strip_prefix('.') {
                    abs.to_string()
                } else {
                    let mut scope = msg.clone();
                    loop {
                        let candidate = join(&scope, t);
                        if known.contains(&candidate) {
                            break candidate;
                        }
                        // Well-known types (google/protobuf/*.proto) are known without a
                        // reference, as in Confluent's registry.
                        if scope.is_empty() && t.starts_with("google.protobuf.") {
                            break t.clone();
                        }
                        if scope.is_empty() {
                            return Err(format!(
                                "message {msg}: field {n} has unknown type {t:?} (missing import reference?)"
                            ));
                        }
                        scope = scope
                            .rsplit_once('.')
                            .map_or(String::new(), |(s, _)| s.to_string());
                    }
                };
                if let Some(f) = self
                    .messages
                    .get_mut(&msg)
                    .and_then(|m| m.fields.get_mut(&n))
                {
                    f.ty = FieldType::Named(resolved);
                }
            }
        }
        Ok(())
    }
}

fn parse_any(text: &str) -> Result<File, String> {
    let trimmed = text.trim();
    let looks_base64 = !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if looks_base64 {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(trimmed) {
            if let Ok(file) = descriptor::file(&bytes) {
                return Ok(file);
            }
        }
    }
    text::parse(text)
}

/// The `.proto` text parser.
mod text {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    enum Tok {
        Ident(String),
        Str(String),
        Num(String),
        Sym(char),
    }

    fn tokens(src: &str) -> Result<Vec<Tok>, String> {
        let b = src.as_bytes();
        let mut i = 0;
        let mut out = Vec::new();
        while i < b.len() {
            let c = b[i] as char;
            if c.is_whitespace() {
                i += 1;
            } else if src[i..].starts_with("//") {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else if src[i..].starts_with("/*") {
                let end = src[i + 2..].find("*/").ok_or("unterminated comment")?;
                i += end + 4;
            } else if c == '"' || c == '\'' {
                let mut j = i + 1;
                let mut s = String::new();
                while j < b.len() && b[j] as char != c {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    s.push(b[j] as char);
                    j += 1;
                }
                if j >= b.len() {
                    return Err("unterminated string".into());
                }
                out.push(Tok::Str(s));
                i = j + 1;
            } else if c.is_ascii_alphabetic()
                || c == '_'
                || c == '.' && b.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic())
            {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                out.push(Tok::Ident(src[start..i].to_string()));
            } else if c.is_ascii_digit()
                || (c == '-' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Tok::Num(src[start..i].to_string()));
            } else if "{}[]()<>;=,:-+".contains(c) {
                out.push(Tok::Sym(c));
                i += 1;
            } else {
                return Err(format!("unexpected character {c:?}"));
            }
        }
        Ok(out)
    }

    struct P {
        toks: Vec<Tok>,
        at: usize,
        file: File,
        /// Singular fields have explicit presence (proto2, editions; not proto3).
        explicit: bool,
    }

    impl P {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.at)
        }
        fn next(&mut self) -> Result<Tok, String> {
            let t = self
                .toks
                .get(self.at)
                .cloned()
                .ok_or("unexpected end of file")?;
            self.at += 1;
            Ok(t)
        }
        fn ident(&mut self) -> Result<String, String> {
            match self.next()? {
                Tok::Ident(s) => Ok(s),
                t => Err(format!("expected a name, found {t:?}")),
            }
        }
        fn sym(&mut self, c: char) -> Result<(), String> {
            match self.next()? {
                Tok::Sym(s) if s == c => Ok(()),
                t => Err(format!("expected {c:?}, found {t:?}")),
            }
        }
        fn number(&mut self) -> Result<i64, String> {
            match self.next()? {
                Tok::Num(n) => {
                    let (neg, digits) = n
                        .strip_prefix('-')
                        .map_or((false, n.as_str()), |d| (true, d));
                    let v = if let Some(h) = digits
                        .strip_prefix("0x")
                        .or_else(|| digits.strip_prefix("0X"))
                    {
                        i64::from_str_radix(h, 16)
                    } else {
                        digits.parse()
                    }
                    .map_err(|_| format!("bad number {n}"))?;
                    Ok(if neg { -v } else { v })
                }
                t => Err(format!("expected a number, found {t:?}")),
            }
        }
        fn is_sym(&self, c: char) -> bool {
            matches!(self.peek(), Some(Tok::Sym(s)) if *s == c)
        }
        /// Skips to the end of a statement (`;`) or over a balanced `{…}` block.
        fn skip_statement(&mut self) -> Result<(), String> {
            let mut depth = 0usize;
            loop {
                match self.next()? {
                    Tok::Sym('{') => depth += 1,
                    Tok::Sym('}') => {
                        depth = depth.checked_sub(1).ok_or("unbalanced '}'")?;
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    Tok::Sym(';') if depth == 0 => return Ok(()),
                    _ => {}
                }
            }
        }
        /// Skips `[ … ]` field options.
        fn skip_options(&mut self) -> Result<(), String> {
            if !self.is_sym('[') {
                return Ok(());
            }
            let mut depth = 0usize;
            loop {
                match self.next()? {
                    Tok::Sym('[') => depth += 1,
                    Tok::Sym(']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }

        fn file(&mut self) -> Result<(), String> {
            let mut saw_package = false;
            while let Some(t) = self.peek().cloned() {
                match t {
                    Tok::Sym(';') => {
                        self.at += 1;
                    }
                    Tok::Ident(kw) => match kw.as_str() {
                        "syntax" | "edition" => {
                            self.at += 1;
                            self.sym('=')?;
                            match self.next()? {
                                Tok::Str(s)
                                    if ["proto2", "proto3"].contains(&s.as_str())
                                        || kw == "edition" =>
                                {
                                    // proto2 and editions: singular fields have presence.
                                    self.explicit = s != "proto3";
                                }
                                t => return Err(format!("unknown syntax {t:?}")),
                            }
                            self.sym(';')?;
                        }
                        "package" => {
                            if saw_package {
                                return Err("two package statements".into());
                            }
                            saw_package = true;
                            self.at += 1;
                            self.file.package = self.ident()?;
                            self.sym(';')?;
                        }
                        "message" => {
                            self.at += 1;
                            let scope = self.file.package.clone();
                            let name = self.message(&scope)?;
                            self.file.order.push(name);
                        }
                        "enum" => {
                            self.at += 1;
                            let scope = self.file.package.clone();
                            self.enumeration(&scope)?;
                        }
                        "import" | "option" | "service" | "extend" => self.skip_statement()?,
                        other => return Err(format!("unexpected {other:?} at the top level")),
                    },
                    t => return Err(format!("unexpected {t:?} at the top level")),
                }
            }
            Ok(())
        }

        fn enumeration(&mut self, scope: &str) -> Result<(), String> {
            let name = join(scope, &self.ident()?);
            self.sym('{')?;
            let mut values = Vec::new();
            loop {
                match self.next()? {
                    Tok::Sym('}') => break,
                    Tok::Sym(';') => {}
                    Tok::Ident(k) if k == "option" || k == "reserved" => {
                        self.at -= 1;
                        self.skip_statement()?;
                    }
                    Tok::Ident(v) => {
                        self.sym('=')?;
                        let n = self.number()?;
                        self.skip_options()?;
                        self.sym(';')?;
                        values.push((v, n));
                    }
                    t => return Err(format!("enum {name}: unexpected {t:?}")),
                }
            }
            if self.file.enums.insert(name.clone(), values).is_some() {
                return Err(format!("{name} is defined twice"));
            }
            Ok(())
        }

        fn message(&mut self, scope: &str) -> Result<String, String> {
            let name = join(scope, &self.ident()?);
            self.sym('{')?;
            let mut msg = Message::default();
            self.body(&name, &mut msg, None)?;
            if self.file.messages.insert(name.clone(), msg).is_some()
                || self.file.enums.contains_key(&name)
            {
                return Err(format!("{name} is defined twice"));
            }
            Ok(name)
        }

        /// A message body up to its `}` (also a oneof's, with `oneof` set).
        fn body(
            &mut self,
            name: &str,
            msg: &mut Message,
            oneof: Option<&str>,
        ) -> Result<(), String> {
            loop {
                let t = self.next()?;
                let kw = match t {
                    Tok::Sym('}') => return Ok(()),
                    Tok::Sym(';') => continue,
                    Tok::Ident(k) => k,
                    t => return Err(format!("message {name}: unexpected {t:?}")),
                };
                match kw.as_str() {
                    "message" if oneof.is_none() => {
                        let nested = self.message(name)?;
                        msg.nested.push(nested);
                    }
                    "enum" if oneof.is_none() => self.enumeration(name)?,
                    "oneof" if oneof.is_none() => {
                        let o = self.ident()?;
                        self.sym('{')?;
                        self.body(name, msg, Some(&o))?;
                    }
                    "option" | "reserved" | "extensions" | "extend" => {
                        self.at -= 1;
                        self.skip_statement()?;
                    }
                    "map" if self.is_sym('<') => {
                        self.sym('<')?;
                        let k = self.ident()?;
                        self.sym(',')?;
                        let v = self.ident()?;
                        self.sym('>')?;
                        let field = self.ident()?;
                        self.sym('=')?;
                        let number = self.number()?;
                        self.skip_options()?;
                        self.sym(';')?;
                        // As protoc does: a nested `<Field>Entry` message with key = 1, value = 2.
                        let entry = join(name, &format!("{}Entry", super::camel_case(&field)));
                        let mut e = Message {
                            map_entry: true,
                            ..Message::default()
                        };
                        for (n, f, t) in [(1, "key", k), (2, "value", v)] {
                            e.fields.insert(
                                n,
                                Field {
                                    name: f.into(),
                                    label: Label::Optional,
                                    ty: field_type(&t),
                                    oneof: None,
                                    presence: false,
                                },
                            );
                        }
                        self.file.messages.insert(entry.clone(), e);
                        msg.nested.push(entry.clone());
                        self.add(
                            name,
                            msg,
                            number,
                            Field {
                                name: field,
                                label: Label::Repeated,
                                ty: FieldType::Named(entry),
                                oneof: None,
                                presence: false,
                            },
                        )?;
                    }
                    _ => {
                        let (label, ty, presence) = match kw.as_str() {
                            "optional" => (Label::Optional, self.ident()?, true),
                            "required" => (Label::Required, self.ident()?, true),
                            "repeated" => (Label::Repeated, self.ident()?, false),
                            _ => (Label::Optional, kw, self.explicit || oneof.is_some()),
                        };
                        let field = self.ident()?;
                        self.sym('=')?;
                        let number = self.number()?;
                        self.skip_options()?;
                        if ty == "group" {
                            return Err(format!("message {name}: proto2 groups are not supported"));
                        }
                        self.sym(';')?;
                        self.add(
                            name,
                            msg,
                            number,
                            Field {
                                name: field,
                                label,
                                ty: field_type(&ty),
                                oneof: oneof.map(str::to_string),
                                presence,
                            },
                        )?;
                    }
                }
            }
        }

        fn add(
            &mut self,
            name: &str,
            msg: &mut Message,
            number: i64,
            field: Field,
        ) -> Result<(), String> {
            if !(1..=536_870_911).contains(&number) {
                return Err(format!(
                    "message {name}: field number {number} is out of range"
                ));
            }
            if let Some(other) = msg.fields.insert(number, field) {
                return Err(format!(
                    "message {name}: field number {number} is used twice ({})",
                    other.name
                ));
            }
            Ok(())
        }
    }

    fn field_type(t: &str) -> FieldType {
        if SCALARS.contains(&t) {
            FieldType::Scalar(t.to_string())
        } else {
            FieldType::Named(t.to_string())
        }
    }

    pub fn parse(src: &str) -> Result<File, String> {
        let toks = tokens(src)?;
        if toks.is_empty() {
            return Err("an empty .proto file".into());
        }
        let mut p = P {
            toks,
            at: 0,
            file: File::default(),
            explicit: false,
        };
        p.file()?;
        Ok(p.file)
    }
}

/// The `FileDescriptorProto` wire-format reader (the fields compatibility needs).
mod descriptor {
    use super::*;

    use super::{wire_fields as fields, WireValue as Value};

    fn string(v: &Value<'_>) -> Result<String, String> {
        match v {
            Value::Bytes(b) => {
                String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".into())
            }
            _ => Err("expected a string".into()),
        }
    }

    // FieldDescriptorProto.Type numbers → scalar names (11 message, 14 enum, 10 group).
    fn scalar(t: u64) -> Option<&'static str> {
        Some(match t {
            1 => "double",
            2 => "float",
            3 => "int64",
            4 => "uint64",
            5 => "int32",
            6 => "fixed64",
            7 => "fixed32",
            8 => "bool",
            9 => "string",
            12 => "bytes",
            13 => "uint32",
            15 => "sfixed32",
            16 => "sfixed64",
            17 => "sint32",
            18 => "sint64",
            _ => return None,
        })
    }

    /// `explicit`: singular fields have presence (proto2 files).
    fn message(b: &[u8], scope: &str, explicit: bool, file: &mut File) -> Result<String, String> {
        let fs = fields(b)?;
        let mut name = String::new();
        for (n, v) in &fs {
            if *n == 1 {
                name = join(scope, &string(v)?);
            }
        }
        if name.is_empty() {
            return Err("a message without a name".into());
        }
        let mut oneofs = Vec::new();
        for (n, v) in &fs {
            if let (8, Value::Bytes(o)) = (n, v) {
                let mut oname = String::new();
                for (k, x) in fields(o)? {
                    if k == 1 {
                        oname = string(&x)?;
                    }
                }
                oneofs.push(oname);
            }
        }
        let mut msg = Message::default();
        for (n, v) in &fs {
            match (n, v) {
                (2, Value::Bytes(f)) => {
                    let (
                        mut fname,
                        mut number,
                        mut label,
                        mut ty,
                        mut type_name,
                        mut oneof,
                        mut synthetic,
                    ) = (String::new(), 0i64, 1u64, 0u64, String::new(), None, false);
                    for (k, x) in fields(f)? {
                        match (k, &x) {
                            (1, _) => fname = string(&x)?,
                            (3, Value::Varint(v)) => number = *v as i64,
                            (4, Value::Varint(v)) => label = *v,
                            (5, Value::Varint(v)) => ty = *v,
                            (6, _) => type_name = string(&x)?,
                            (9, Value::Varint(v)) => oneof = Some(*v as usize),
                            (17, Value::Varint(v)) => synthetic = *v != 0,
                            _ => {}
                        }
                    }
                    let ty = match scalar(ty) {
                        Some(s) => FieldType::Scalar(s.to_string()),
                        None if !type_name.is_empty() => FieldType::Named(type_name),
                        None => return Err(format!("field {fname}: unknown type {ty}")),
                    };
                    let label = match label {
                        2 => Label::Required,
                        3 => Label::Repeated,
                        _ => Label::Optional,
                    };
                    let presence = match label {
                        Label::Required => true,
                        Label::Repeated => false,
                        Label::Optional => explicit || synthetic || oneof.is_some(),
                    };
                    // proto3 `optional` lives in a synthetic oneof: not a real oneof.
                    let oneof = oneof
                        .filter(|_| !synthetic)
                        .and_then(|i| oneofs.get(i).cloned());
                    msg.fields.insert(
                        number,
                        Field {
                            name: fname,
                            label,
                            ty,
                            oneof,
                            presence,
                        },
                    );
                }
                (3, Value::Bytes(nested)) => {
                    let nested = message(nested, &name, explicit, file)?;
                    msg.nested.push(nested);
                }
                // MessageOptions: map_entry is its field 7.
                (7, Value::Bytes(options)) => {
                    for (k, x) in fields(options)? {
                        if let (7, Value::Varint(v)) = (k, x) {
                            msg.map_entry = v != 0;
                        }
                    }
                }
                (4, Value::Bytes(e)) => enumeration(e, &name, file)?,
                _ => {}
            }
        }
        file.messages.insert(name.clone(), msg);
        Ok(name)
    }

    fn enumeration(b: &[u8], scope: &str, file: &mut File) -> Result<(), String> {
        let mut name = String::new();
        let mut values = Vec::new();
        for (n, v) in fields(b)? {
            match (n, &v) {
                (1, _) => name = join(scope, &string(&v)?),
                (2, Value::Bytes(ev)) => {
                    let (mut vn, mut num) = (String::new(), 0i64);
                    for (k, x) in fields(ev)? {
                        match (k, &x) {
                            (1, _) => vn = string(&x)?,
                            (2, Value::Varint(v)) => num = *v as i32 as i64,
                            _ => {}
                        }
                    }
                    values.push((vn, num));
                }
                _ => {}
            }
        }
        file.enums.insert(name, values);
        Ok(())
    }

    pub fn file(b: &[u8]) -> Result<File, String> {
        let fs = fields(b)?;
        let mut file = File::default();
        let mut named = false;
        // `syntax` (field 12) is absent for proto2.
        let mut explicit = true;
        for (n, v) in &fs {
            match n {
                1 => named = !string(v)?.is_empty(),
                2 => file.package = string(v)?,
                12 => explicit = string(v)? != "proto3",
                _ => {}
            }
        }
        if !named {
            return Err("not a FileDescriptorProto (no file name)".into());
        }
        let package = file.package.clone();
        for (n, v) in &fs {
            match (n, v) {
                (4, Value::Bytes(m)) => {
                    let name = message(m, &package, explicit, &mut file)?;
                    file.order.push(name);
                }
                (5, Value::Bytes(e)) => enumeration(e, &package, &mut file)?,
                _ => {}
            }
        }
        // Descriptor type names are absolute (`.pkg.Msg`).
        for m in file.messages.values_mut() {
            for f in m.fields.values_mut() {
                if let FieldType::Named(t) = &mut f.ty {
                    if !t.starts_with('.') {
                        *t = format!(".{t}");
                    }
                }
            }
        }
        Ok(file)
    }
}

fn group(t: &str) -> &str {
    match t {
        "int32" | "uint32" | "int64" | "uint64" | "bool" => "varint",
        "sint32" | "sint64" => "zigzag",
        "fixed32" | "sfixed32" => "fixed32",
        "fixed64" | "sfixed64" => "fixed64",
        "string" | "bytes" => "bytes",
        other => other,
    }
}

/// Whether a consumer holding `reader` reads data produced with `writer`: every problem.
pub fn can_read(writer: &File, reader: &File, writer_is: &str, reader_is: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut fail = |kind: &str, info: String, description: String| {
        out.push(Problem {
            kind: kind.into(),
            description,
            info,
        })
    };
    if writer.package != reader.package {
        fail(
            "PACKAGE_CHANGED",
            "#/package".into(),
            format!(
                "The package is '{}' in the {writer_is} and '{}' in the {reader_is}",
                writer.package, reader.package
            ),
        );
        return out;
    }
    let is_enum = |f: &File, t: &str| f.enums.contains_key(t);
    for (mname, wm) in &writer.messages {
        let Some(rm) = reader.messages.get(mname) else {
            fail(
                "MESSAGE_REMOVED",
                format!("#/{mname}"),
                format!("The message {mname} of the {writer_is} is missing from the {reader_is}"),
            );
            continue;
        };
        for (n, wf) in &wm.fields {
            let at = format!("#/{mname}/{n}");
            let Some(rf) = rm.fields.get(n) else {
                if wf.label == Label::Required {
                    fail("REQUIRED_FIELD_REMOVED", at, format!("The required field {n} ('{}') of {mname} is removed in the {reader_is}", wf.name));
                } else if wf.oneof.is_some() {
                    fail("ONEOF_FIELD_REMOVED", at, format!("The field {n} ('{}') of a oneof in {mname} is removed in the {reader_is}", wf.name));
                }
                continue;
            };
            if (wf.label == Label::Repeated) != (rf.label == Label::Repeated) {
                fail("FIELD_LABEL_CHANGED", at.clone(), format!("The field {n} of {mname} is repeated in one schema and singular in the other"));
            }
            if wf.label != Label::Required && rf.label == Label::Required {
                fail(
                    "REQUIRED_FIELD_ADDED",
                    at.clone(),
                    format!(
                        "The field {n} ('{}') of {mname} becomes required in the {reader_is}",
                        rf.name
                    ),
                );
            }
            match (&wf.ty, &rf.ty) {
                (FieldType::Scalar(a), FieldType::Scalar(b)) => {
                    if group(a) != group(b) {
                        fail("FIELD_SCALAR_KIND_CHANGED", at, format!("The field {n} of {mname} is {a} in the {writer_is} and {b} in the {reader_is}: the wire types differ"));
                    }
                }
                (FieldType::Named(a), FieldType::Named(b)) => {
                    let (a, b) = (a.trim_start_matches('.'), b.trim_start_matches('.'));
                    if a != b {
                        fail("FIELD_NAMED_TYPE_CHANGED", at, format!("The field {n} of {mname} is of type {a} in the {writer_is} and {b} in the {reader_is}"));
                    }
                }
                (FieldType::Named(e), FieldType::Scalar(s))
                | (FieldType::Scalar(s), FieldType::Named(e))
                    if (is_enum(writer, e.trim_start_matches('.'))
                        || is_enum(reader, e.trim_start_matches('.')))
                        && group(s) == "varint" => {}
                _ => fail(
                    "FIELD_KIND_CHANGED",
                    at,
                    format!(
                        "The field {n} of {mname} changes between a scalar and a message or enum"
                    ),
                ),
            }
        }
        for (n, rf) in &rm.fields {
            if !wm.fields.contains_key(n) && rf.label == Label::Required {
                fail(
                    "REQUIRED_FIELD_ADDED",
                    format!("#/{mname}/{n}"),
                    format!(
                        "The required field {n} ('{}') is added to {mname} in the {reader_is}",
                        rf.name
                    ),
                );
            }
        }
        // Several existing fields moved into one oneof: data setting more than one of them no
        // longer reads.
        let mut moved: BTreeMap<&str, usize> = BTreeMap::new();
        for (n, rf) in &rm.fields {
            if let (Some(o), Some(wf)) = (&rf.oneof, wm.fields.get(n)) {
                if wf.oneof.is_none() {
                    *moved.entry(o.as_str()).or_default() += 1;
                }
            }
        }
        for (o, count) in moved {
            if count > 1 {
                fail("MULTIPLE_FIELDS_MOVED_TO_ONEOF", format!("#/{mname}/{o}"), format!("{count} existing fields of {mname} move into the oneof '{o}' in the {reader_is}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(old: &str, new: &str) -> Vec<String> {
        let (o, n) = (
            File::parse(old, &[]).unwrap(),
            File::parse(new, &[]).unwrap(),
        );
        can_read(&o, &n, "old schema", "new schema")
            .into_iter()
            .map(|p| p.kind)
            .collect()
    }

    const V1: &str = r#"
        syntax = "proto3";
        package shop; // comment
        import "google/protobuf/timestamp.proto";
        option java_package = "x.y";
        /* block
           comment */
        message Order {
            int64 id = 1;
            string item = 2 [deprecated = true];
            repeated Line lines = 3;
            map<string, int32> tags = 4;
            message Line { string sku = 1; Status status = 2; }
            enum Status { UNKNOWN = 0; OK = 1; }
            oneof payment { string card = 5; string iban = 6; }
            reserved 9, 10 to 12;
        }
    "#;

    #[test]
    fn text_declarations_are_read_with_scopes_and_maps() {
        let f = File::parse(V1, &[]).unwrap();
        assert_eq!(f.package, "shop");
        assert_eq!(f.first_message().as_deref(), Some("shop.Order"));
        let o = &f.messages["shop.Order"];
        assert_eq!(o.fields[&3].ty, FieldType::Named("shop.Order.Line".into()));
        assert_eq!(
            o.fields[&4].ty,
            FieldType::Named("shop.Order.TagsEntry".into())
        );
        assert_eq!(o.fields[&5].oneof.as_deref(), Some("payment"));
        assert_eq!(
            f.messages["shop.Order.Line"].fields[&2].ty,
            FieldType::Named("shop.Order.Status".into())
        );
        assert!(f.enums.contains_key("shop.Order.Status"));
        for bad in [
            "message A { int32 a = 1; string b = 1; }",
            "message A { Unknown a = 1; }",
            "message A {",
            "syntax = \"proto9\";",
        ] {
            assert!(File::parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn confluent_rules() {
        let base = "syntax = \"proto3\"; package p; message M { int64 id = 1; string name = 2; }";
        // Added and removed fields, renames, compatible scalar groups: fine.
        assert!(kinds(base, "syntax = \"proto3\"; package p; message M { int64 id = 1; string name = 2; double t = 3; }").is_empty());
        assert!(kinds(
            base,
            "syntax = \"proto3\"; package p; message M { int64 id = 1; }"
        )
        .is_empty());
        assert!(kinds(
            base,
            "syntax = \"proto3\"; package p; message M { int64 key = 1; bytes name = 2; }"
        )
        .is_empty());
        assert!(kinds(
            base,
            "syntax = \"proto3\"; package p; message M { int32 id = 1; string name = 2; }"
        )
        .is_empty());
        // A field number reused with another wire type.
        assert_eq!(
            kinds(
                base,
                "syntax = \"proto3\"; package p; message M { int64 id = 1; double name = 2; }"
            ),
            ["FIELD_SCALAR_KIND_CHANGED"]
        );
        assert_eq!(kinds(base, "syntax = \"proto3\"; package p; message M { int64 id = 1; N name = 2; } message N {}"), ["FIELD_KIND_CHANGED"]);
        assert_eq!(kinds(base, "syntax = \"proto3\"; package p; message M { int64 id = 1; repeated string name = 2; }"), ["FIELD_LABEL_CHANGED"]);
        assert_eq!(
            kinds(
                base,
                "syntax = \"proto3\"; package p; message X { int64 id = 1; }"
            ),
            ["MESSAGE_REMOVED"]
        );
        assert_eq!(
            kinds(
                base,
                "syntax = \"proto3\"; package q; message M { int64 id = 1; }"
            ),
            ["PACKAGE_CHANGED"]
        );
        assert_eq!(kinds(base, "syntax = \"proto3\"; package p; message M { oneof o { int64 id = 1; string name = 2; } }"), ["MULTIPLE_FIELDS_MOVED_TO_ONEOF"]);
        let p2 = "syntax = \"proto2\"; package p; message M { required int64 id = 1; optional string name = 2; }";
        assert_eq!(
            kinds(
                p2,
                "syntax = \"proto2\"; package p; message M { optional string name = 2; }"
            ),
            ["REQUIRED_FIELD_REMOVED"]
        );
        assert_eq!(kinds(p2, "syntax = \"proto2\"; package p; message M { required int64 id = 1; optional string name = 2; required int32 x = 3; }"), ["REQUIRED_FIELD_ADDED"]);
    }

    #[test]
    fn a_base64_descriptor_reads_like_its_text() {
        // FileDescriptorProto { name: "r.proto", package: "p", message_type: [M { field: [
        //   { name: "id", number: 1, label: OPTIONAL, type: INT64 },
        //   { name: "name", number: 2, label: OPTIONAL, type: STRING } ] }], syntax: "proto3" }
        let field = |name: &str, number: u8, ty: u8| {
            let mut f = vec![0x0a, name.len() as u8];
            f.extend(name.as_bytes());
            f.extend([0x18, number, 0x20, 1, 0x28, ty]);
            f
        };
        let mut msg = vec![0x0a, 1, b'M'];
        for f in [field("id", 1, 3), field("name", 2, 9)] {
            msg.push(0x12);
            msg.push(f.len() as u8);
            msg.extend(f);
        }
        let mut file = vec![0x0a, 7];
        file.extend(b"r.proto");
        file.extend([0x12, 1, b'p', 0x22, msg.len() as u8]);
        file.extend(&msg);
        file.extend([0x62, 6]);
        file.extend(b"proto3");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
        let from_descriptor = File::parse(&b64, &[]).unwrap();
        let from_text = File::parse(
            "syntax = \"proto3\"; package p; message M { int64 id = 1; string name = 2; }",
            &[],
        )
        .unwrap();
        assert_eq!(from_descriptor.messages, from_text.messages);
        assert!(can_read(&from_descriptor, &from_text, "a", "b").is_empty());
    }
}
