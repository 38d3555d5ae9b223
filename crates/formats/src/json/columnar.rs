//! A direct JSON → Arrow decoder for the common case: every record fits the schema.
//!
//! arrow-json's decoder first turns the text into a tape of tokens and then walks the tape
//! once per column; profiles of nested NDJSON → Parquet put that at about a third of the
//! run, after our own inference scan has already tokenized the same bytes once. This decoder
//! reads each record once, straight into the column buffers (a record's fields are looked up
//! by guessing that they come in the order of the previous record, as they do in files written
//! by a program).
//!
//! It is a fast path only, never the judge of a record: it handles the types inference
//! produces (`null`, `boolean`, `int64`, `float64`, `utf8`, structs and lists of them) and gives
//! up on the whole batch (`None`) at anything it does not read exactly as arrow-json would:
//! another type, a value of the wrong JSON type for its column (a string in a number column, a
//! fraction in an integer column), a key with an escape, a repeated key, invalid JSON or UTF-8.
//! [`super::decode`] then decodes the batch with arrow-json, which finds the bad records and
//! says why. So for a batch it accepts, its rows equal arrow-json's with this crate's settings
//! (`coerce_primitive`: numbers and booleans in a text column keep their JSON text; strict
//! mode unless the policy drops unknown columns), a property the tests check on generated
//! records.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, NullArray, RecordBatch,
    RecordBatchOptions, StringArray, StructArray,
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, FieldRef, Fields, SchemaRef};

/// Deepest nesting read; deeper records go to arrow-json.
pub(super) const MAX_DEPTH: usize = 64;

/// Whether this decoder reads every column of `schema`.
pub(super) fn supports(schema: &SchemaRef) -> bool {
    fn ty(dt: &DataType) -> bool {
        match dt {
            DataType::Null
            | DataType::Boolean
            | DataType::Int64
            | DataType::Float64
            | DataType::Utf8 => true,
            DataType::List(f) => ty(f.data_type()),
            DataType::Struct(fields) => {
                !fields.is_empty() && fields.iter().all(|f| ty(f.data_type()))
            }
            _ => false,
        }
    }
    !schema.fields().is_empty() && schema.fields().iter().all(|f| ty(f.data_type()))
}

/// Decodes the records at `ranges` of `bytes` (one JSON object each) into one batch of
/// `schema`, or `None` when any record is not a plain fit (see the module docs). `strict`:
/// a key the schema does not have fails the batch; otherwise its value is skipped.
pub(super) fn decode(
    schema: &SchemaRef,
    strict: bool,
    bytes: &[u8],
    ranges: &[Range<usize>],
) -> Option<RecordBatch> {
    if !supports(schema) {
        return None;
    }
    let mut root = StructCol::new(schema.fields(), ranges.len(), strict);
    for range in ranges {
        // UTF-8 is checked where text is kept: text columns by arrow when they are built,
        // skipped strings here; a key is compared with the schema's names, which are UTF-8.
        let record = bytes.get(range.clone())?;
        let mut p = Parser { b: record, i: 0 };
        p.ws();
        root.object(&mut p, 0)?;
        p.ws();
        if p.i != record.len() {
            return None;
        }
    }
    let columns = root
        .cols
        .into_iter()
        .map(Col::finish)
        .collect::<Option<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(ranges.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).ok()
}

/// Field names looked up by key. The name expected next is compared with the record's bytes
/// in place (one 8-byte word for names of up to 7 bytes, closing quote included), without
/// first scanning for the key's end: records of one program repeat their keys in order.
#[derive(Clone, Debug)]
pub(super) struct Names {
    names: Vec<Box<[u8]>>,
    /// Per name: the word and mask of `name"` when it fits 8 bytes and has no byte a raw key
    /// could not hold as it is (quote, backslash, control characters).
    quick: Vec<Option<(u64, u64)>>,
    /// Per name: whether it has no such byte (then it may be compared in place at any length).
    plain: Vec<bool>,
}

impl Names {
    pub(super) fn new<'n>(names: impl IntoIterator<Item = &'n [u8]>) -> Names {
        let names: Vec<Box<[u8]>> = names.into_iter().map(Box::from).collect();
        let plain: Vec<bool> = names
            .iter()
            .map(|n| n.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'))
            .collect();
        let quick = names
            .iter()
            .zip(&plain)
            .map(|(n, &plain)| {
                (plain && n.len() < 8).then(|| {
                    let mut word = [0u8; 8];
                    word[..n.len()].copy_from_slice(n);
                    word[n.len()] = b'"';
                    let mask = u64::MAX >> (8 * (7 - n.len()));
                    (u64::from_le_bytes(word), mask)
                })
            })
            .collect();
        Names {
            names,
            quick,
            plain,
        }
    }

    /// Reads the key at the cursor (on its opening quote): `Ok(index)` of its name, trying
    /// `hint` first, or `Err(key)` for a name not here; `None` for a key with an escape or a
    /// raw control character (invalid JSON that arrow-json lets through; inference's fit check
    /// must refuse it).
    #[inline]
    pub(super) fn find<'a>(
        &self,
        p: &mut Parser<'a>,
        hint: usize,
    ) -> Option<Result<usize, &'a [u8]>> {
        let start = p.i + 1;
        if let Some(name) = self.names.get(hint) {
            let end = start + name.len();
            let found = match self.quick[hint] {
                Some((word, mask)) => p.b.get(start..start + 8).is_some_and(|chunk| {
                    u64::from_le_bytes(chunk.try_into().expect("8 bytes")) & mask == word
                }),
                None => false,
            } || (self.plain[hint]
                && p.b.get(start..end) == Some(&name[..])
                && p.b.get(end) == Some(&b'"'));
            if found {
                p.i = end + 1;
                return Some(Ok(hint));
            }
        }
        let key = p.key()?;
        if key.iter().any(|&b| b < 0x20) {
            return None;
        }
        Some(self.names.iter().position(|n| **n == *key).ok_or(key))
    }
}

/// Bytes that end a run of plain string text: quote, backslash, control characters.
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stop[b] = true;
        b += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// A cursor over one record (shared with inference's fit check).
pub(super) struct Parser<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte after whitespace, consumed.
    #[inline]
    pub(super) fn next_token(&mut self) -> Option<u8> {
        self.ws();
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    #[inline]
    pub(super) fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A JSON number's text (the grammar checked), from the current byte.
    #[inline]
    pub(super) fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        i = match b.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(b, i)?,
            _ => return None,
        };
        if b.get(i) == Some(&b'.') {
            i = digits(b, i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = digits(b, i)?;
        }
        self.i = i;
        Some(&b[start..i])
    }

    /// A whole number that fits an `i64`; `None` for a fraction, an exponent or overflow.
    #[inline]
    pub(super) fn integer(&mut self) -> Option<i64> {
        whole(self.number()?)
    }

    /// A key's bytes, the cursor on its opening quote; `None` for a key with an escape.
    #[inline]
    pub(super) fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.i + 1;
        let len = memchr::memchr2(b'"', b'\\', self.b.get(start..)?)?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        Some(&self.b[start..start + len])
    }

    /// A string's text, unescaped, appended to `out`; the cursor on its opening quote.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.i += 1;
        loop {
            let rest = self.b.get(self.i..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            out.extend_from_slice(&rest[..at]);
            self.i += at + 1;
            if rest[at] == b'"' {
                return Some(());
            }
            let escaped = *self.b.get(self.i)?;
            self.i += 1;
            let byte = match escaped {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let high = self.hex4()?;
                    let code = match high {
                        0xD800..=0xDBFF => {
                            self.literal(b"\\u")?;
                            let low = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return None;
                            }
                            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                        }
                        0xDC00..=0xDFFF => return None,
                        c => c,
                    };
                    let c = char::from_u32(code)?;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    continue;
                }
                _ => return None,
            };
            out.push(byte);
        }
    }

    /// Checks and skips a string, the cursor on its opening quote, as strictly as
    /// inference's scanner: raw control characters and malformed escapes fail.
    pub(super) fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            let rest = self.b.get(self.i..)?;
            let at = rest.iter().position(|&b| STRING_STOP[usize::from(b)])?;
            self.i += at + 1;
            match rest[at] {
                b'"' => return Some(()),
                b'\\' => match *self.b.get(self.i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                    b'u' => {
                        self.i += 1;
                        self.hex4()?;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v << 4 | (d as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// Checks a string (a value or a key of a skipped object) like a kept one (escapes,
    /// UTF-8), then drops it.
    fn skip_checked_string(&mut self) -> Option<()> {
        let mut scratch = Vec::new();
        self.string_into(&mut scratch)?;
        std::str::from_utf8(&scratch).ok().map(drop)
    }

    /// Checks and skips one value (of a key the schema does not have).
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.skip_checked_string(),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    match self.next_token()? {
                        b',' => {}
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                if self.next_token()? == b'}' {
                    return Some(());
                }
                self.i -= 1;
                loop {
                    self.ws();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    self.skip_checked_string()?;
                    if self.next_token()? != b':' {
                        return None;
                    }
                    self.skip(depth + 1)?;
                    match self.next_token()? {
                        b',' => {}
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => self.number().map(|_| ()),
        }
    }
}

/// The end of the run of digits that starts at `i`; `None` when there is none.
#[inline]
fn digits(b: &[u8], mut i: usize) -> Option<usize> {
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    (i > start).then_some(i)
}

/// The `i64` a number's text (grammar checked) holds; `None` for a fraction, an exponent or
/// overflow.
#[inline]
pub(super) fn whole(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    }
}

/// One column being built.
enum Col {
    /// Only nulls fit: their count.
    Null(usize),
    Bool(BooleanBufferBuilder, NullBufferBuilder),
    Int(Vec<i64>, NullBufferBuilder),
    Float(Vec<f64>, NullBufferBuilder),
    Str {
        offsets: Vec<i32>,
        data: Vec<u8>,
        nulls: NullBufferBuilder,
    },
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: Box<Col>,
    },
    Struct(Box<StructCol>),
}

impl Col {
    fn new(dt: &DataType, rows: usize, strict: bool) -> Col {
        match dt {
            DataType::Boolean => Col::Bool(
                BooleanBufferBuilder::new(rows),
                NullBufferBuilder::new(rows),
            ),
            DataType::Int64 => Col::Int(Vec::with_capacity(rows), NullBufferBuilder::new(rows)),
            DataType::Float64 => Col::Float(Vec::with_capacity(rows), NullBufferBuilder::new(rows)),
            DataType::Utf8 => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Col::Str {
                    offsets,
                    data: Vec::with_capacity(rows * 8),
                    nulls: NullBufferBuilder::new(rows),
                }
            }
            DataType::List(field) => Col::List {
                field: field.clone(),
                offsets: {
                    let mut o = Vec::with_capacity(rows + 1);
                    o.push(0);
                    o
                },
                nulls: NullBufferBuilder::new(rows),
                item: Box::new(Col::new(field.data_type(), rows, strict)),
            },
            DataType::Struct(fields) => Col::Struct(Box::new(StructCol::new(fields, rows, strict))),
            // `supports` lets only the types above through; `Null` is the rest.
            _ => Col::Null(0),
        }
    }

    fn push_null(&mut self) {
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(values, nulls) => {
                values.append(false);
                nulls.append_null();
            }
            Col::Int(values, nulls) => {
                values.push(0);
                nulls.append_null();
            }
            Col::Float(values, nulls) => {
                values.push(0.0);
                nulls.append_null();
            }
            Col::Str {
                offsets,
                nulls,
                data: _,
            } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
                nulls.append_null();
            }
            Col::List { offsets, nulls, .. } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
                nulls.append_null();
            }
            Col::Struct(s) => s.push_null(),
        }
    }

    /// Reads one value into the column; `None` when it does not fit exactly.
    fn value(&mut self, p: &mut Parser<'_>, depth: usize) -> Option<()> {
        p.ws();
        let first = p.peek()?;
        if first == b'n' {
            p.literal(b"null")?;
            self.push_null();
            return Some(());
        }
        match self {
            Col::Null(_) => return None,
            Col::Bool(values, nulls) => {
                match first {
                    b't' => {
                        p.literal(b"true")?;
                        values.append(true);
                    }
                    b'f' => {
                        p.literal(b"false")?;
                        values.append(false);
                    }
                    _ => return None,
                }
                nulls.append_non_null();
            }
            Col::Int(values, nulls) => {
                values.push(p.integer()?);
                nulls.append_non_null();
            }
            Col::Float(values, nulls) => {
                let text = p.number()?;
                // The grammar is checked: ASCII, and a number `str::parse` rounds exactly as
                // arrow-json's parser (both correctly rounded).
                let text = std::str::from_utf8(text).ok()?;
                values.push(text.parse().ok()?);
                nulls.append_non_null();
            }
            Col::Str {
                offsets,
                data,
                nulls,
            } => {
                match first {
                    b'"' => p.string_into(data)?,
                    // arrow-json's `coerce_primitive`: a number or a boolean keeps its text.
                    b't' => {
                        p.literal(b"true")?;
                        data.extend_from_slice(b"true");
                    }
                    b'f' => {
                        p.literal(b"false")?;
                        data.extend_from_slice(b"false");
                    }
                    b'-' | b'0'..=b'9' => data.extend_from_slice(p.number()?),
                    _ => return None,
                }
                offsets.push(i32::try_from(data.len()).ok()?);
                nulls.append_non_null();
            }
            Col::List {
                offsets,
                nulls,
                item,
                ..
            } => {
                if first != b'[' || depth >= MAX_DEPTH {
                    return None;
                }
                p.i += 1;
                let mut count = 0i32;
                p.ws();
                if p.peek()? == b']' {
                    p.i += 1;
                } else {
                    loop {
                        item.value(p, depth + 1)?;
                        count += 1;
                        match p.next_token()? {
                            b',' => {}
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last.checked_add(count)?);
                nulls.append_non_null();
            }
            Col::Struct(s) => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                s.object(p, depth + 1)?;
            }
        }
        Some(())
    }

    /// The finished array; `None` when arrow refuses it (a null in a non-nullable field).
    fn finish(self) -> Option<ArrayRef> {
        Some(match self {
            Col::Null(n) => Arc::new(NullArray::new(n)),
            Col::Bool(mut values, mut nulls) => {
                Arc::new(BooleanArray::new(values.finish(), nulls.finish()))
            }
            Col::Int(values, mut nulls) => Arc::new(Int64Array::new(values.into(), nulls.finish())),
            Col::Float(values, mut nulls) => {
                Arc::new(Float64Array::new(values.into(), nulls.finish()))
            }
            Col::Str {
                offsets,
                data,
                mut nulls,
            } => Arc::new(
                StringArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from_vec(data),
                    nulls.finish(),
                )
                .ok()?,
            ),
            Col::List {
                field,
                offsets,
                mut nulls,
                item,
            } => Arc::new(
                ListArray::try_new(
                    field,
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    item.finish()?,
                    nulls.finish(),
                )
                .ok()?,
            ),
            Col::Struct(s) => {
                let s = *s;
                let mut nulls = s.nulls;
                let children = s
                    .cols
                    .into_iter()
                    .map(Col::finish)
                    .collect::<Option<Vec<_>>>()?;
                Arc::new(StructArray::try_new(s.fields, children, nulls.finish()).ok()?)
            }
        })
    }
}

/// A struct column (or the record itself): its fields' columns, and which of them the
/// current object has set.
struct StructCol {
    fields: Fields,
    names: Names,
    cols: Vec<Col>,
    /// `seen[i] == stamp`: field `i` is set in the current object.
    seen: Vec<u32>,
    stamp: u32,
    /// The field expected next (the one after the last found).
    hint: usize,
    strict: bool,
    nulls: NullBufferBuilder,
}

impl StructCol {
    fn new(fields: &Fields, rows: usize, strict: bool) -> StructCol {
        StructCol {
            fields: fields.clone(),
            names: Names::new(fields.iter().map(|f| f.name().as_bytes())),
            cols: fields
                .iter()
                .map(|f| Col::new(f.data_type(), rows, strict))
                .collect(),
            seen: vec![0; fields.len()],
            stamp: 0,
            hint: 0,
            strict,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    fn push_null(&mut self) {
        for c in &mut self.cols {
            c.push_null();
        }
        self.nulls.append_null();
    }

    /// Reads one object (the cursor before its `{`) as a row.
    fn object(&mut self, p: &mut Parser<'_>, depth: usize) -> Option<()> {
        if p.next_token()? != b'{' {
            return None;
        }
        self.stamp = match self.stamp.checked_add(1) {
            Some(s) => s,
            None => {
                self.seen.fill(0);
                1
            }
        };
        self.hint = 0;
        let mut set = 0usize;
        p.ws();
        if p.peek()? == b'}' {
            p.i += 1;
        } else {
            loop {
                p.ws();
                if p.peek()? != b'"' {
                    return None;
                }
                match self.names.find(p, self.hint)? {
                    Ok(i) => {
                        self.hint = i + 1;
                        if p.next_token()? != b':' || self.seen[i] == self.stamp {
                            return None;
                        }
                        self.seen[i] = self.stamp;
                        set += 1;
                        self.cols[i].value(p, depth)?;
                    }
                    Err(_) if self.strict => return None,
                    Err(_) => {
                        if p.next_token()? != b':' {
                            return None;
                        }
                        p.skip(depth)?;
                    }
                }
                match p.next_token()? {
                    b',' => {}
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        if set < self.cols.len() {
            for (c, seen) in self.cols.iter_mut().zip(&self.seen) {
                if *seen != self.stamp {
                    c.push_null();
                }
            }
        }
        self.nulls.append_non_null();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_json::ReaderBuilder;
    use arrow_schema::{Field, Schema};

    /// xorshift64*: deterministic records without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    fn schema() -> SchemaRef {
        let item = |dt| Arc::new(Field::new("item", dt, true));
        let inner = Fields::from(vec![
            Field::new("z", DataType::Float64, true),
            Field::new("w", DataType::Utf8, true),
        ]);
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Float64, true),
            Field::new("c", DataType::Utf8, true),
            Field::new("d_boolean_values", DataType::Boolean, true),
            Field::new("e", DataType::Null, true),
            Field::new("f", DataType::List(item(DataType::Utf8)), true),
            Field::new(
                "g",
                DataType::Struct(Fields::from(vec![
                    Field::new("x", DataType::Int64, true),
                    Field::new("y", DataType::List(item(DataType::Struct(inner))), true),
                ])),
                true,
            ),
            Field::new(
                "h",
                DataType::List(item(DataType::List(item(DataType::Int64)))),
                true,
            ),
        ]))
    }

    const INTS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-42",
        "9223372036854775807",
        "-9223372036854775808",
    ];
    const FLOATS: &[&str] = &[
        "0",
        "-0.0",
        "1.5",
        "1e5",
        "-2.5E-3",
        "0.1",
        "3517",
        "1E+2",
        "123456789012345678901234567890",
        "4.9406564584124654e-324",
        "1.7976931348623157e308",
    ];
    const STRINGS: &[&str] = &[
        r#""""#,
        r#""plain""#,
        r#""a \"quoted\" \\ word""#,
        r#""line\nbreak\ttab\r\b\f\/""#,
        r#""\u00e9t\u00C9""#,
        r#""\ud83d\ude00 smile""#,
        "\"raw é 日本\"",
        r#""\u0000""#,
    ];
    /// Values that must not decode plainly in some column (or at all).
    const BAD: &[(&str, &str)] = &[
        ("a", "2.5"),
        ("a", "1e3"),
        ("a", "9223372036854775808"),
        ("a", "\"12\""),
        ("b", "\"1.5\""),
        ("b", "01"),
        ("b", "1."),
        ("b", "-"),
        ("b", ".5"),
        ("d_boolean_values", "1"),
        ("c", r#""\ud83d alone""#),
        ("c", r#""\x""#),
        ("c", "[1]"),
        ("c", "{}"),
        ("e", "1"),
        ("f", "\"x\""),
        ("g", "[]"),
        ("a", "tru"),
        ("d_boolean_values", "truex"),
    ];

    fn ws(rng: &mut Rng) -> &'static str {
        rng.pick(&["", "", "", " ", "\t", " \n "])
    }

    fn value(rng: &mut Rng, name: &str) -> String {
        if rng.below(10) == 0 {
            return "null".into();
        }
        let w = ws(rng);
        match name {
            "a" | "x" => rng.pick(INTS).into(),
            "b" | "z" => rng.pick(FLOATS).into(),
            // Text columns also take numbers and booleans (coerced to their text).
            "c" | "w" => {
                let (text, number) = (rng.pick(STRINGS), rng.pick(FLOATS));
                rng.pick(&[text, text, number, "true", "false"]).into()
            }
            "d_boolean_values" => rng.pick(&["true", "false"]).into(),
            "e" => "null".into(),
            "f" => {
                let n = rng.below(4);
                let items: Vec<_> = (0..n).map(|_| value(rng, "c")).collect();
                format!("[{w}{}{w}]", items.join(&format!("{w},")))
            }
            "g" => {
                let names = ["x", "y"];
                object(rng, &names)
            }
            "y" => {
                let n = rng.below(3);
                let items: Vec<_> = (0..n).map(|_| object(rng, &["z", "w"])).collect();
                format!("[{}]", items.join(","))
            }
            "h" => {
                let n = rng.below(3);
                let lists: Vec<_> = (0..n)
                    .map(|_| {
                        let m = rng.below(3);
                        let v: Vec<_> = (0..m).map(|_| value(rng, "a")).collect();
                        format!("[{}]", v.join(", "))
                    })
                    .collect();
                format!("[{}]", lists.join(","))
            }
            other => unreachable!("{other}"),
        }
    }

    /// An object with each of `names` present (in order, or rotated) or missing.
    fn object(rng: &mut Rng, names: &[&str]) -> String {
        let mut names = names.to_vec();
        let turn = rng.below(names.len() as u64) as usize;
        if rng.below(4) == 0 {
            names.rotate_left(turn);
        }
        let mut parts = Vec::new();
        for n in names {
            if rng.below(5) != 0 {
                let w = ws(rng);
                parts.push(format!("{w}\"{n}\"{w}:{w}{}{w}", value(rng, n)));
            }
        }
        format!("{{{}}}", parts.join(","))
    }

    /// arrow-json's decoding with this crate's settings: the rows, or why not.
    fn reference(
        schema: &SchemaRef,
        strict: bool,
        records: &[String],
    ) -> Result<RecordBatch, String> {
        let mut d = ReaderBuilder::new(schema.clone())
            .with_batch_size(records.len().max(1))
            .with_coerce_primitive(true)
            .with_strict_mode(strict)
            .with_decoder_factory(Arc::new(super::super::WholeIntegers))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for r in records {
            d.decode(r.as_bytes()).map_err(|e| e.to_string())?;
        }
        let batch = d.flush().map_err(|e| e.to_string())?.ok_or("no rows")?;
        if batch.num_rows() != records.len() {
            return Err(format!(
                "{} rows for {} records",
                batch.num_rows(),
                records.len()
            ));
        }
        Ok(batch)
    }

    fn columnar(schema: &SchemaRef, strict: bool, records: &[String]) -> Option<RecordBatch> {
        let mut bytes = Vec::new();
        let mut ranges = Vec::new();
        for r in records {
            let start = bytes.len();
            bytes.extend_from_slice(r.as_bytes());
            ranges.push(start..bytes.len());
            bytes.push(b'\n');
        }
        decode(schema, strict, &bytes, &ranges)
    }

    #[test]
    fn generated_records_decode_exactly_as_arrow_json_decodes_them() {
        let schema = schema();
        let names = ["a", "b", "c", "d_boolean_values", "e", "f", "g", "h"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut plain, mut bad_refused) = (0, 0);
        for round in 0..3000 {
            let strict = round % 3 != 0;
            let n = 1 + rng.below(12) as usize;
            let mut records: Vec<String> = (0..n).map(|_| object(&mut rng, &names)).collect();
            // A third of the batches get one flaw: a value that does not fit, a key the
            // schema lacks, a repeated key, trailing text.
            let flawed = round % 3 == 1;
            if flawed {
                let at = rng.below(n as u64) as usize;
                let record = &mut records[at];
                record.pop();
                let sep = if record.len() > 1 { "," } else { "" };
                match rng.below(4) {
                    0 => {
                        let (k, v) = BAD[rng.below(BAD.len() as u64) as usize];
                        // A repeated key when the record had it; both fail plainly.
                        record.push_str(&format!("{sep}\"{k}\":{v}}}"));
                    }
                    1 => record.push_str(&format!("{sep}\"unknown\":{{\"k\":[1,\"x\",null]}}}}")),
                    2 => record.push_str(&format!("{sep}\"a\":1,\"a\":2}}")),
                    _ => record.push_str("} x"),
                }
            }
            let expected = reference(&schema, strict, &records);
            let got = columnar(&schema, strict, &records);
            match (&expected, &got) {
                (Ok(e), Some(g)) => assert_eq!(e, g, "records: {records:#?}"),
                (Err(why), Some(_)) => {
                    panic!("accepted what arrow-json refuses ({why}): {records:#?}")
                }
                (_, None) if !flawed => panic!("refused plain records: {records:#?}"),
                (Err(_), None) => bad_refused += 1,
                (Ok(_), None) => {}
            }
            if !flawed {
                plain += 1;
            }
        }
        assert_eq!(plain, 2000);
        assert!(bad_refused > 500, "{bad_refused}");
    }

    #[test]
    fn unknown_keys_are_skipped_only_when_not_strict_and_must_still_be_json() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let ok = vec![r#"{"x": {"y": [1, 2.5e3, "s\"", true, null, {}]}, "a": 3}"#.to_string()];
        assert!(columnar(&schema, true, &ok).is_none());
        let batch = columnar(&schema, false, &ok).expect("skipped");
        assert_eq!(batch, reference(&schema, false, &ok).unwrap());
        for broken in [
            r#"{"x": [1,], "a": 3}"#,
            r#"{"x": {"y" 1}, "a": 3}"#,
            r#"{"x": 01}"#,
        ] {
            assert!(
                columnar(&schema, false, &[broken.to_string()]).is_none(),
                "{broken}"
            );
        }
    }

    #[test]
    fn keys_compared_in_place_are_whole_keys() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("identifier", DataType::Int64, true),
            Field::new("q\"k", DataType::Int64, true),
        ]));
        // `id` is expected first: a key it only begins must not be taken for it.
        let records = [
            r#"{"identifier": 1, "id": 2}"#,
            r#"{"id":3,"identifier":4}"#,
        ];
        let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        let got = columnar(&schema, true, &records).expect("plain records");
        assert_eq!(got, reference(&schema, true, &records).unwrap());
        // A key with an escape goes to arrow-json.
        assert!(columnar(&schema, true, &[r#"{"q\"k": 1}"#.into()]).is_none());
        assert!(reference(&schema, true, &[r#"{"q\"k": 1}"#.into()]).is_ok());
    }

    #[test]
    fn other_types_and_non_nullable_misses_go_to_arrow_json() {
        let ts = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None),
            true,
        )]));
        assert!(!supports(&ts));
        let required = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        assert!(columnar(&required, true, &[r#"{"a": 1}"#.into()]).is_some());
        assert!(columnar(&required, true, &[r#"{}"#.into()]).is_none());
    }
}
