//! Fast schema inference for JSON records, without building a `serde_json::Value` per record.
//!
//! [`Inference::add`] scans one record's bytes once into a small list of events (object
//! start, key, scalar type, ...) kept in a reused buffer; only when the whole record is valid
//! JSON are the events folded into the running type tree, so a broken line never shapes the
//! schema. Trees of several threads [`Inference::merge`] into one. The rules are arrow-json's
//! own (the decoder that reads the data must agree with them), with two differences that
//! keep values exact: an integer too large for `int64` makes its field a string (arrow-json
//! would make it a lossy `float64`), and a field holding both objects and scalars (which
//! arrow-json's inference refuses) becomes a string, whose non-text values are then
//! rejected by the decoder with the reason.
//!
//! | values seen                   | type          |
//! |-------------------------------|---------------|
//! | only `null`                   | `null`        |
//! | `true`/`false`                | `boolean`     |
//! | integers                      | `int64`       |
//! | integers and fractions        | `float64`     |
//! | text, or any other mix        | `string`      |
//! | objects                       | `struct` of the union of their fields, first-seen order |
//! | arrays (and scalars with them)| `list` of the elements' type |

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};

use super::columnar::{whole, Names, Parser, MAX_DEPTH as COLUMNAR_DEPTH};

const BOOL: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 4;
const TEXT: u8 = 8;

/// Deepest nesting scanned; deeper records are treated as invalid.
const MAX_DEPTH: usize = 128;

#[derive(Clone, Copy, Debug)]
enum Event {
    ObjStart,
    /// A key: byte range in the record, and whether it has escapes.
    Key(u32, u32, bool),
    ObjEnd,
    ArrStart,
    ArrEnd,
    Scalar(u8),
    Null,
}

#[derive(Clone, Debug, Default)]
enum Node {
    /// Only nulls (or nothing) seen.
    #[default]
    Any,
    Scalar(u8),
    Array(Box<Node>),
    Object(Vec<(String, Node)>),
    /// Objects mixed with scalars or arrays: a string column.
    Mixed,
}

/// A running schema inference over JSON records.
#[derive(Clone, Debug, Default)]
pub struct Inference {
    root: Node,
    valid: u64,
    invalid: u64,
    events: Vec<Event>,
    key: Vec<u8>,
    /// 128-bit signatures of record shapes (keys, nesting, scalar types) already folded into
    /// the tree: most records repeat a few shapes, and folding one again changes nothing.
    shapes: std::collections::HashSet<u128>,
    /// The tree as a check: a record that passes it is valid and changes nothing.
    fit: Option<Fit>,
    /// The tree grew since `fit` was made (an older check is still sound: the tree only
    /// widens, so a record that fits the old one fits the new one).
    stale: bool,
    /// Records since the tree last took a new shape (the check is remade only once the
    /// shapes settle, so a stream of ever-new keys does not remake it per record).
    settled: u32,
}

/// Records without a new shape before the check is remade.
const SETTLE: u32 = 256;

/// Shapes remembered at most (past that, new shapes are folded every time).
const MAX_SHAPES: usize = 1 << 14;

impl Inference {
    /// An empty inference.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one record into account. Returns `false` (and records nothing) when it is not
    /// valid JSON or not a JSON object.
    pub fn add(&mut self, record: &[u8]) -> bool {
        // Most records fit what was seen already: one pass that only checks them.
        if let Some(fit) = &self.fit {
            if fit.record(record) {
                self.valid += 1;
                self.settle();
                return true;
            }
        }
        self.scan(record)
    }

    /// [`Inference::add`] without the fit check: scans the record into events and folds them
    /// into the tree unless their shape was folded before.
    fn scan(&mut self, record: &[u8]) -> bool {
        self.events.clear();
        let mut scanner = Scanner {
            bytes: record,
            at: 0,
            events: &mut self.events,
        };
        let ok = scanner.value(0).is_some() && {
            scanner.skip_ws();
            scanner.at == record.len()
        };
        if !ok || !matches!(self.events.first(), Some(Event::ObjStart)) {
            self.invalid += 1;
            return false;
        }
        self.valid += 1;
        let shape = signature(&self.events, record);
        if self.shapes.contains(&shape) {
            self.settle();
            return true;
        }
        self.stale = true;
        self.settled = 0;
        let mut i = 0;
        let events = std::mem::take(&mut self.events);
        apply(&mut self.root, &events, &mut i, record, &mut self.key);
        self.events = events;
        if self.shapes.len() < MAX_SHAPES {
            self.shapes.insert(shape);
        }
        true
    }

    /// Counts a record that changed nothing; remakes the check once the shapes settle.
    fn settle(&mut self) {
        self.settled = self.settled.saturating_add(1);
        if (self.stale || self.fit.is_none()) && self.settled >= SETTLE {
            self.fit = Fit::of(&self.root);
            self.stale = false;
        }
    }

    /// Valid records seen.
    pub fn records(&self) -> u64 {
        self.valid
    }

    /// Records skipped as invalid.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// Folds another inference (of later records) into this one.
    pub fn merge(&mut self, other: Inference) {
        merge(&mut self.root, other.root);
        self.stale = true;
        self.valid += other.valid;
        self.invalid += other.invalid;
    }

    /// The schema, or `None` before the first valid record.
    pub fn schema(&self) -> Option<Schema> {
        match &self.root {
            Node::Object(fields) => Some(Schema::new(to_fields(fields))),
            _ => None,
        }
    }
}

/// What a value must be to change nothing in the tree it was made from: `null` always fits;
/// integers fit integer and number columns (as long as they fit an `int64`, else inference
/// makes the field text); numbers with fractions fit number columns; any scalar fits a text
/// column; objects fit with the fields known (a missing one too), arrays with their elements
/// (and a scalar that fits the elements, as inference folds it into them).
/// Checked as strictly as the scanner checks JSON (see [`Inference::add`]).
#[derive(Clone, Debug)]
enum Fit {
    Null,
    Bool,
    Int,
    Float,
    Text,
    List(Box<Fit>),
    Object(Names, Vec<Fit>),
    /// A field of objects mixed with other values (a text column): any value.
    Any,
}

impl Fit {
    /// The check for records (objects) of a tree; `None` before the first object.
    fn of(root: &Node) -> Option<Fit> {
        matches!(root, Node::Object(_)).then(|| Fit::node(root))
    }

    fn node(node: &Node) -> Fit {
        match node {
            Node::Any => Fit::Null,
            Node::Mixed => Fit::Any,
            Node::Scalar(_) => match data_type(node) {
                DataType::Boolean => Fit::Bool,
                DataType::Int64 => Fit::Int,
                DataType::Float64 => Fit::Float,
                _ => Fit::Text,
            },
            Node::Array(element) => Fit::List(Box::new(Fit::node(element))),
            Node::Object(fields) => Fit::Object(
                Names::new(fields.iter().map(|(name, _)| name.as_bytes())),
                fields.iter().map(|(_, node)| Fit::node(node)).collect(),
            ),
        }
    }

    /// A key without escapes or raw control characters (the scanner refuses those).
    fn key<'a>(p: &mut Parser<'a>) -> Option<&'a [u8]> {
        p.ws();
        if p.peek()? != b'"' {
            return None;
        }
        let key = p.key()?;
        key.iter().all(|&b| b >= 0x20).then_some(key)
    }

    /// Whether a whole record fits.
    fn record(&self, record: &[u8]) -> bool {
        let mut p = Parser { b: record, i: 0 };
        p.ws();
        p.peek() == Some(b'{') && self.value(&mut p, 0).is_some() && {
            p.ws();
            p.i == record.len()
        }
    }

    fn value(&self, p: &mut Parser<'_>, depth: usize) -> Option<()> {
        p.ws();
        let first = p.peek()?;
        if first == b'n' {
            return p.literal(b"null");
        }
        match self {
            Fit::Null => None,
            Fit::Bool => match first {
                b't' => p.literal(b"true"),
                b'f' => p.literal(b"false"),
                _ => None,
            },
            Fit::Int => p.integer().map(drop),
            Fit::Float => {
                let text = p.number()?;
                if text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    Some(())
                } else {
                    whole(text).map(drop)
                }
            }
            Fit::Text => match first {
                b'"' => p.skip_string(),
                b't' => p.literal(b"true"),
                b'f' => p.literal(b"false"),
                _ => p.number().map(drop),
            },
            Fit::List(element) => {
                if depth >= COLUMNAR_DEPTH {
                    return None;
                }
                // A scalar beside arrays counts as one of their elements; an object there
                // makes the field mixed.
                match first {
                    b'[' => {}
                    b'{' => return None,
                    _ => return element.value(p, depth + 1),
                }
                p.i += 1;
                p.ws();
                if p.peek()? == b']' {
                    p.i += 1;
                    return Some(());
                }
                loop {
                    element.value(p, depth + 1)?;
                    match p.next_token()? {
                        b',' => {}
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            Fit::Object(names, fields) => {
                if first != b'{' || depth >= COLUMNAR_DEPTH {
                    return None;
                }
                p.i += 1;
                p.ws();
                if p.peek()? == b'}' {
                    p.i += 1;
                    return Some(());
                }
                let mut hint = 0;
                loop {
                    p.ws();
                    if p.peek()? != b'"' {
                        return None;
                    }
                    // A key the scanner refuses (raw control characters) matches no name.
                    let slot = names.find(p, hint)?.ok()?;
                    hint = slot + 1;
                    if p.next_token()? != b':' {
                        return None;
                    }
                    fields[slot].value(p, depth + 1)?;
                    match p.next_token()? {
                        b',' => {}
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            Fit::Any => {
                if depth >= COLUMNAR_DEPTH {
                    return None;
                }
                match first {
                    b'"' => p.skip_string(),
                    b't' => p.literal(b"true"),
                    b'f' => p.literal(b"false"),
                    b'[' | b'{' => {
                        let close = if first == b'[' { b']' } else { b'}' };
                        p.i += 1;
                        p.ws();
                        if p.peek()? == close {
                            p.i += 1;
                            return Some(());
                        }
                        loop {
                            if close == b'}' {
                                Fit::key(p)?;
                                if p.next_token()? != b':' {
                                    return None;
                                }
                            }
                            Fit::Any.value(p, depth + 1)?;
                            match p.next_token()? {
                                b',' => {}
                                c if c == close => return Some(()),
                                _ => return None,
                            }
                        }
                    }
                    _ => p.number().map(drop),
                }
            }
        }
    }
}

/// A 128-bit hash of a record's events and key bytes: equal for records of the same shape.
fn signature(events: &[Event], text: &[u8]) -> u128 {
    let mut a: u64 = 0x243f_6a88_85a3_08d3;
    let mut b: u64 = 0x1319_8a2e_0370_7344;
    let mut mix = |x: u64| {
        a = (a.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
        b = (b.rotate_left(7) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    };
    for e in events {
        match *e {
            Event::ObjStart => mix(1),
            Event::ObjEnd => mix(2),
            Event::ArrStart => mix(3),
            Event::ArrEnd => mix(4),
            Event::Null => mix(5),
            Event::Scalar(f) => mix(16 + u64::from(f)),
            Event::Key(start, end, escaped) => {
                let key = &text[start as usize..end as usize];
                mix(64 + ((key.len() as u64) << 1) + u64::from(escaped));
                let mut chunks = key.chunks_exact(8);
                for c in &mut chunks {
                    mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
                }
                let mut last = [0u8; 8];
                let rest = chunks.remainder();
                last[..rest.len()].copy_from_slice(rest);
                mix(u64::from_le_bytes(last));
            }
        }
    }
    (u128::from(a) << 64) | u128::from(b)
}

fn to_fields(fields: &[(String, Node)]) -> Fields {
    fields
        .iter()
        .map(|(name, node)| Field::new(name, data_type(node), true))
        .collect()
}

fn data_type(node: &Node) -> DataType {
    match node {
        Node::Any => DataType::Null,
        Node::Scalar(f) => match *f {
            BOOL => DataType::Boolean,
            INT => DataType::Int64,
            FLOAT | 6 => DataType::Float64,
            _ => DataType::Utf8,
        },
        Node::Array(e) => DataType::List(Arc::new(Field::new_list_field(data_type(e), true))),
        Node::Object(fields) => DataType::Struct(to_fields(fields)),
        Node::Mixed => DataType::Utf8,
    }
}

fn merge_scalar(node: &mut Node, flag: u8) {
    match node {
        Node::Any => *node = Node::Scalar(flag),
        Node::Scalar(f) => *f |= flag,
        Node::Array(e) => merge_scalar(e, flag),
        Node::Object(_) => *node = Node::Mixed,
        Node::Mixed => {}
    }
}

fn merge(into: &mut Node, other: Node) {
    match (into, other) {
        (_, Node::Any) => {}
        (slot @ Node::Any, o) => *slot = o,
        (Node::Mixed, _) => {}
        (slot, Node::Mixed) => *slot = Node::Mixed,
        (Node::Scalar(a), Node::Scalar(b)) => *a |= b,
        (Node::Array(a), Node::Array(b)) => merge(a, *b),
        (Node::Array(a), Node::Scalar(f)) => merge_scalar(a, f),
        (slot @ Node::Scalar(_), Node::Array(mut b)) => {
            let Node::Scalar(f) = *slot else {
                unreachable!()
            };
            merge_scalar(&mut b, f);
            *slot = Node::Array(b);
        }
        (Node::Object(a), Node::Object(b)) => {
            for (name, node) in b {
                match a.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, existing)) => merge(existing, node),
                    None => a.push((name, node)),
                }
            }
        }
        (slot, _) => *slot = Node::Mixed,
    }
}

/// Skips one value's events.
fn skip(events: &[Event], i: &mut usize) {
    let mut depth = 0usize;
    loop {
        match events[*i] {
            Event::ObjStart | Event::ArrStart => depth += 1,
            Event::ObjEnd | Event::ArrEnd => depth -= 1,
            _ => {}
        }
        *i += 1;
        if depth == 0 {
            return;
        }
    }
}

/// Folds one value's events (starting at `events[*i]`) into `node`.
fn apply(node: &mut Node, events: &[Event], i: &mut usize, text: &[u8], key: &mut Vec<u8>) {
    match events[*i] {
        Event::Null => *i += 1,
        Event::Scalar(f) => {
            merge_scalar(node, f);
            *i += 1;
        }
        Event::ObjStart => {
            match node {
                Node::Any => *node = Node::Object(Vec::new()),
                Node::Object(_) => {}
                Node::Mixed => return skip(events, i),
                _ => {
                    *node = Node::Mixed;
                    return skip(events, i);
                }
            }
            let Node::Object(fields) = node else {
                unreachable!()
            };
            *i += 1;
            // Records usually repeat their keys in the same order: try the field after the
            // last one found before searching.
            let mut hint = 0usize;
            loop {
                match events[*i] {
                    Event::ObjEnd => {
                        *i += 1;
                        return;
                    }
                    Event::Key(start, end, escaped) => {
                        *i += 1;
                        let raw = &text[start as usize..end as usize];
                        let name: &[u8] = if escaped {
                            unescape(raw, key);
                            key
                        } else {
                            raw
                        };
                        let slot = if fields.get(hint).is_some_and(|(n, _)| n.as_bytes() == name) {
                            hint
                        } else {
                            match fields.iter().position(|(n, _)| n.as_bytes() == name) {
                                Some(p) => p,
                                None => {
                                    fields.push((
                                        String::from_utf8_lossy(name).into_owned(),
                                        Node::Any,
                                    ));
                                    fields.len() - 1
                                }
                            }
                        };
                        hint = slot + 1;
                        apply(&mut fields[slot].1, events, i, text, key);
                    }
                    _ => unreachable!("the scanner emits keys inside objects"),
                }
            }
        }
        Event::ArrStart => {
            match node {
                Node::Any => *node = Node::Array(Box::new(Node::Any)),
                Node::Scalar(f) => *node = Node::Array(Box::new(Node::Scalar(*f))),
                Node::Array(_) => {}
                Node::Mixed => return skip(events, i),
                Node::Object(_) => {
                    *node = Node::Mixed;
                    return skip(events, i);
                }
            }
            let Node::Array(element) = node else {
                unreachable!()
            };
            *i += 1;
            while !matches!(events[*i], Event::ArrEnd) {
                apply(element, events, i, text, key);
            }
            *i += 1;
        }
        Event::ObjEnd | Event::ArrEnd | Event::Key(..) => unreachable!("balanced events"),
    }
}

/// Decodes a key with escapes into `out` (lossy for invalid escapes: the record is valid
/// JSON, so they do not occur).
fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    match serde_json::from_slice::<String>(&quoted) {
        Ok(s) => out.extend_from_slice(s.as_bytes()),
        Err(_) => out.extend_from_slice(raw),
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    events: &'a mut Vec<Event>,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while let Some(b) = self.bytes.get(self.at) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                self.string()?;
                self.events.push(Event::Scalar(TEXT));
                Some(())
            }
            b't' => self.literal(b"true", Event::Scalar(BOOL)),
            b'f' => self.literal(b"false", Event::Scalar(BOOL)),
            b'n' => self.literal(b"null", Event::Null),
            b'-' | b'0'..=b'9' => {
                let flag = self.number()?;
                self.events.push(Event::Scalar(flag));
                Some(())
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], event: Event) -> Option<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            self.events.push(event);
            Some(())
        } else {
            None
        }
    }

    /// Scans a string from its opening quote; returns its content range and whether it has
    /// escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.bytes[self.at..];
            let i = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            match rest[i] {
                b'"' => {
                    let end = self.at + i;
                    self.at = end + 1;
                    return Some((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    let esc = *rest.get(i + 1)?;
                    self.at += i + 2;
                    match esc {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 4;
                        }
                        _ => return None,
                    }
                }
                // A raw control character is not valid JSON.
                _ => return None,
            }
        }
    }

    /// Scans a number; returns its type flag.
    fn number(&mut self) -> Option<u8> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
            }
            _ => return None,
        }
        let int_digits = self.at - digits_start;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let frac = self.at;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.at += 1;
            }
            if self.at == frac {
                return None;
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            let exp = self.at;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.at += 1;
            }
            if self.at == exp {
                return None;
            }
            float = true;
        }
        if float {
            return Some(FLOAT);
        }
        if int_digits <= 18 {
            return Some(INT);
        }
        // 19 digits or more: exact as int64 only within its range; else text (exact).
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        Some(if text.parse::<i64>().is_ok() {
            INT
        } else {
            TEXT
        })
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.at += 1;
        self.events.push(Event::ObjStart);
        self.skip_ws();
        if self.peek()? == b'}' {
            self.at += 1;
            self.events.push(Event::ObjEnd);
            return Some(());
        }
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return None;
            }
            let (start, end, escaped) = self.string()?;
            self.events
                .push(Event::Key(start as u32, end as u32, escaped));
            self.skip_ws();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    self.events.push(Event::ObjEnd);
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.at += 1;
        self.events.push(Event::ArrStart);
        self.skip_ws();
        if self.peek()? == b']' {
            self.at += 1;
            self.events.push(Event::ArrEnd);
            return Some(());
        }
        loop {
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    self.events.push(Event::ArrEnd);
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(lines: &[&str]) -> Option<Schema> {
        let mut inf = Inference::new();
        for l in lines {
            inf.add(l.as_bytes());
        }
        inf.schema()
    }

    fn arrow_infer(lines: &[&str]) -> Schema {
        let values = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(Ok::<_, arrow_schema::ArrowError>);
        arrow_json::reader::infer_json_schema_from_iterator(values).unwrap()
    }

    #[test]
    fn agrees_with_arrow_json_where_arrow_json_is_exact() {
        let cases: &[&[&str]] = &[
            &[
                r#"{"a": 1, "b": "x", "c": true, "d": null}"#,
                r#"{"a": 2.5, "e": [1, 2]}"#,
            ],
            &[
                r#"{"u": {"id": 1, "geo": {"lat": 1.5}}, "tags": ["a"]}"#,
                r#"{"u": {"name": "n"}, "tags": []}"#,
            ],
            &[
                r#"{"x": 1}"#,
                r#"{"x": "one"}"#,
                r#"{"y": [1, "a"]}"#,
                r#"{"z": true, "w": 1}"#,
                r#"{"z": 2}"#,
            ],
            &[
                r#"{"l": [[1], [2.5]]}"#,
                r#"{"l": [[3]]}"#,
                r#"{"s": 1}"#,
                r#"{"s": [2]}"#,
            ],
            &[
                r#"{"e": [], "o": {}}"#,
                r#"{"k\"ey": 1, "\u00e9": 2}"#,
                r#"{"n": -0.5e-3, "m": -12}"#,
            ],
        ];
        // arrow-json (through serde_json's map) orders fields by name; this inference keeps
        // the order they first appear in. Compare sorted.
        fn sorted(fields: &Fields) -> Vec<Field> {
            let mut out: Vec<Field> = fields
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Struct(inner) => f
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Struct(sorted(inner).into())),
                    _ => f.as_ref().clone(),
                })
                .collect();
            out.sort_by(|a, b| a.name().cmp(b.name()));
            out
        }
        for lines in cases {
            assert_eq!(
                sorted(infer(lines).unwrap().fields()),
                sorted(arrow_infer(lines).fields()),
                "{lines:?}"
            );
        }
        let first_seen = infer(&[r#"{"b": 1, "a": {"z": 1, "y": 2}}"#]).unwrap();
        let names: Vec<&str> = first_seen
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn broken_records_shape_nothing() {
        let mut inf = Inference::new();
        assert!(!inf.add(br#"{"a": 1.5, "b": "#));
        assert!(!inf.add(br#"{"a": 01}"#));
        assert!(!inf.add(br#"{"a": "x\q"}"#));
        assert!(!inf.add(b"{\"a\": \"tab\tin string\"}"));
        assert!(!inf.add(br#"[1, 2]"#), "not an object");
        assert!(!inf.add(br#"{"a": 1} {"#));
        assert!(inf.add(br#"  {"a": 1}  "#));
        assert_eq!(inf.schema().unwrap(), arrow_infer(&[r#"{"a": 1}"#]));
        assert_eq!((inf.records(), inf.invalid()), (1, 6));
    }

    #[test]
    fn values_stay_exact_where_arrow_json_would_round_or_refuse() {
        let big = infer(&[
            r#"{"id": 9223372036854775807}"#,
            r#"{"id": 18446744073709551615}"#,
        ])
        .unwrap();
        assert_eq!(big.field(0).data_type(), &DataType::Utf8);
        let fits = infer(&[r#"{"id": -9223372036854775808}"#]).unwrap();
        assert_eq!(fits.field(0).data_type(), &DataType::Int64);
        let mixed = infer(&[r#"{"p": {"a": 1}}"#, r#"{"p": 3}"#]).unwrap();
        assert_eq!(mixed.field(0).data_type(), &DataType::Utf8);
    }

    #[test]
    fn merged_parts_equal_one_pass() {
        let lines = [
            r#"{"a": 1, "n": {"x": 1}}"#,
            r#"{"b": [1]}"#,
            r#"{"a": 2.5, "n": {"y": "t"}}"#,
            r#"{"c": null, "b": 7}"#,
        ];
        let whole = infer(&lines).unwrap();
        let mut first = Inference::new();
        let mut second = Inference::new();
        for l in &lines[..2] {
            first.add(l.as_bytes());
        }
        for l in &lines[2..] {
            second.add(l.as_bytes());
        }
        first.merge(second);
        assert_eq!(first.schema().unwrap(), whole);
        assert_eq!(first.records(), 4);
    }

    #[test]
    fn the_fit_check_changes_no_schema_and_no_count() {
        // Regular records (so the check is made), with rare records that widen a type, add a
        // field, break a rule of JSON or fit only loosely, at random places.
        let regular = [
            r#"{"id": 1, "x": 2, "s": "a", "b": true, "n": {"k": 3, "l": ["p", "q"]}, "z": null}"#,
            r#"{"id": -7, "x": 0.5, "s": "\"q\" \u00e9", "b": false, "n": {"l": []}}"#,
            r#" { "x" : 1e3 , "id" : 9223372036854775807 , "n" : null } "#,
            r#"{"s": 12, "n": {"k": -0, "l": [null, "r"]}, "z": null, "b": null}"#,
        ];
        let rare = [
            r#"{"id": 2.5}"#,
            r#"{"x": 123456789012345678901}"#,
            r#"{"id": true}"#,
            r#"{"b": "yes"}"#,
            r#"{"n": {"k": 1, "new": {"deep": [1, 2]}}}"#,
            r#"{"n": [1]}"#,
            r#"{"s": {"o": 1}}"#,
            r#"{"s": [1]}"#,
            r#"{"z": 4}"#,
            r#"{"esc\u0061ped": 1}"#,
            "{\"s\": \"raw\ttab\"}",
            r#"{"s": "bad \x escape"}"#,
            r#"{"s": "bad \u12 escape"}"#,
            r#"{"id": 1,}"#,
            r#"{"id": 01}"#,
            r#"{"id": 1} trailing"#,
            r#"[{"id": 1}]"#,
            r#"{"id": 1, "id": "text"}"#,
            r#"{"n": {"l": [1.5]}}"#,
            r#"{"x": -1E-2, "n": {"l": [true]}}"#,
        ];
        // Several seeds: the rare records come first in different orders (the first one to
        // reach a field decides how it widens).
        for seed in 1..=12u64 {
            let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut with_fit = Inference::new();
            let mut scan_only = Inference::new();
            let mut fitted = 0;
            for i in 0..8_000 {
                let line = if i > 300 && next() % 200 == 0 {
                    rare[(next() % rare.len() as u64) as usize]
                } else {
                    regular[(next() % regular.len() as u64) as usize]
                };
                if with_fit
                    .fit
                    .as_ref()
                    .is_some_and(|f| f.record(line.as_bytes()))
                {
                    fitted += 1;
                }
                assert_eq!(
                    with_fit.add(line.as_bytes()),
                    scan_only.scan(line.as_bytes()),
                    "{line}"
                );
                assert_eq!(with_fit.schema(), scan_only.schema(), "seed {seed}, {line}");
            }
            assert_eq!(with_fit.records(), scan_only.records());
            assert_eq!(with_fit.invalid(), scan_only.invalid());
            assert!(fitted > 6_000, "the check passed {fitted} records");
            assert!(with_fit.invalid() > 0);
        }
    }
}
