//! One response body → its records (slices of the body, never re-serialised) and the values
//! pagination needs (cursors, next URLs, totals, `has_more`), found by JSON pointer.
//!
//! The body is parsed once at the top level into borrowed raw values; a pointer descends
//! from there, parsing only the objects and arrays on its way. The records array is split
//! into one raw slice per record, which the Arrow decoder reads as they are.
//!
//! [`Body::page`] does not run a JSON parser over the records array: that array is most of a
//! page, and the Arrow decoder parses every record anyway (a record that is not valid JSON
//! is rejected there, with its reason, and dead-lettered). The split checks the array's
//! structure (strings closed, brackets matched, one comma between items), so a truncated
//! or garbled page is still refused as a whole; every other value is parsed in full.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::IgnoredAny;

/// A parsed response body: an object's top-level fields or an array's items, found in one
/// pass that also validates the whole text (the records array by its structure only, for
/// [`Body::page`]).
pub(crate) struct Body<'a> {
    bytes: &'a str,
    top: Option<HashMap<Cow<'a, str>, &'a str>>,
    items: Option<Vec<&'a str>>,
    /// The records array of [`Body::page`] (a top-level field's value), split as it was
    /// checked.
    split: Option<(&'a str, Vec<&'a str>)>,
}

impl<'a> Body<'a> {
    /// Parses `bytes` as JSON (the whole text is validated here).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        Self::parse_with(bytes, Records::None)
    }

    /// Parses a page whose records `records()` will be asked for with `pointer`: as
    /// [`Body::parse`], except that the records array (the body, a top-level field, or the
    /// only top-level array) is checked by its structure when it is split; the decoder
    /// parses its records.
    pub fn page(bytes: &'a [u8], pointer: Option<&str>) -> Result<Self, String> {
        let records = match pointer {
            None => Records::Auto,
            Some(p) => match p.strip_prefix('/') {
                Some(key) if !key.contains(['/', '~']) => Records::Field(key),
                _ => Records::None,
            },
        };
        Self::parse_with(bytes, records)
    }

    fn parse_with(bytes: &'a [u8], records: Records<'_>) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let mut split = None;
        let (top, items) = match trimmed.as_bytes().first() {
            Some(b'{') if records != Records::None => {
                let (map, arrays) = top_level(trimmed, records)?;
                // One array or the named one is the records array; any other was split by
                // its structure only, and is now parsed in full.
                let records_key = match records {
                    Records::Field(k) => Some(k),
                    _ if arrays.len() == 1 => Some(arrays[0].0),
                    _ => None,
                };
                for (key, value, items) in arrays {
                    if Some(key) == records_key {
                        split = Some((value, items));
                    } else {
                        serde_json::from_str::<IgnoredAny>(value).map_err(|e| e.to_string())?;
                    }
                }
                (Some(map), None)
            }
            Some(b'[') if records == Records::Auto => {
                let (items, end) = split_items(trimmed, 0)?;
                if end != trimmed.len() {
                    return Err(format!("trailing characters at byte {end}"));
                }
                (None, Some(items))
            }
            Some(b'{') => {
                let map: HashMap<Cow<'a, str>, &'a serde_json::value::RawValue> =
                    serde_json::from_str(text).map_err(|e| e.to_string())?;
                (
                    Some(map.into_iter().map(|(k, v)| (k, v.get())).collect()),
                    None,
                )
            }
            Some(b'[') => {
                let items: Vec<&'a serde_json::value::RawValue> =
                    serde_json::from_str(text).map_err(|e| e.to_string())?;
                (None, Some(items.into_iter().map(|v| v.get()).collect()))
            }
            _ => {
                serde_json::from_str::<IgnoredAny>(text).map_err(|e| e.to_string())?;
                (None, None)
            }
        };
        Ok(Body {
            bytes: trimmed,
            top,
            items,
            split,
        })
    }

    /// The raw value at a JSON pointer (`""` is the whole body).
    pub fn pointer(&self, pointer: &str) -> Option<&'a str> {
        if pointer.is_empty() {
            return Some(self.bytes);
        }
        let mut segments = pointer.strip_prefix('/')?.split('/').map(unescape);
        let first = segments.next()?;
        let mut current = match (&self.top, &self.items) {
            (Some(map), _) => *map.get(first.as_ref())?,
            (_, Some(items)) => *items.get(first.parse::<usize>().ok()?)?,
            _ => return None,
        };
        for seg in segments {
            current = child(current, &seg)?;
        }
        Some(current)
    }

    /// The value at a pointer as JSON (`None` when absent or `null`).
    pub fn value(&self, pointer: &str) -> Option<serde_json::Value> {
        let raw = self.pointer(pointer)?;
        match serde_json::from_str(raw) {
            Ok(serde_json::Value::Null) | Err(_) => None,
            Ok(v) => Some(v),
        }
    }

    /// The value at a pointer as text: strings as they are, numbers as written; `None` for
    /// absent, null or empty.
    pub fn text(&self, pointer: &str) -> Option<String> {
        match self.value(pointer)? {
            serde_json::Value::String(s) if s.is_empty() => None,
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The value at a pointer as a count (a number, or a string holding one).
    pub fn count(&self, pointer: &str) -> Option<u64> {
        match self.value(pointer)? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The records' texts: the array at `pointer`, or the body when it is an array, or the
    /// body's only array-valued field, or (an object with no array) the body as one record.
    pub fn records(&self, pointer: Option<&str>) -> Result<Vec<&'a str>, String> {
        let array = match pointer {
            Some(p) => match self.pointer(p) {
                Some("null") => return Ok(Vec::new()),
                Some(v) => v,
                None => return Err(format!("no value at the records pointer {p}")),
            },
            None if self.items.is_some() => {
                return Ok(self.items.iter().flatten().copied().collect());
            }
            None => {
                let top = self
                    .top
                    .as_ref()
                    .ok_or("the response is neither an object nor an array")?;
                let mut arrays: Vec<(&str, &str)> = top
                    .iter()
                    .filter(|(_, v)| v.starts_with('['))
                    .map(|(k, v)| (k.as_ref(), *v))
                    .collect();
                match arrays.len() {
                    0 => return Ok(vec![self.bytes]),
                    1 => arrays.pop().expect("one").1,
                    _ => {
                        let mut names: Vec<&str> = arrays.iter().map(|a| a.0).collect();
                        names.sort_unstable();
                        return Err(format!(
                            "the response has several arrays ({}): set `records` to the pointer of the records, e.g. /{}",
                            names.join(", "),
                            names[0]
                        ));
                    }
                }
            }
        };
        if !array.starts_with('[') {
            return Err(format!(
                "the records are not an array (found `{}`)",
                excerpt(array.as_bytes(), 40)
            ));
        }
        if let Some((value, items)) = &self.split {
            if std::ptr::eq(*value, array) {
                return Ok(items.clone());
            }
        }
        // Parsed in full already: split without checking again.
        split_items(array, 0)
            .map(|(items, _)| items)
            .map_err(|e| format!("the records array is not valid JSON: {e}"))
    }
}

/// Which value of a page holds the records (checked by structure, not parsed).
#[derive(Clone, Copy, PartialEq)]
enum Records<'p> {
    /// None: parse everything.
    None,
    /// The body when it is an array, else the only top-level array.
    Auto,
    /// This top-level field.
    Field(&'p str),
}

/// The index of the `"` closing the string whose opening `"` is at `open`. Eight bytes at a
/// time: most strings of an API's records are short, where `memchr`'s set-up costs more than
/// it saves.
fn string_end(b: &[u8], open: usize) -> Result<usize, String> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each zero byte of `x` (bits above the first may be wrong; the first is
    // right, which is all that is read).
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = open + 1;
    loop {
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let hits = zeros(w ^ (ONES * u64::from(b'"'))) | zeros(w ^ (ONES * u64::from(b'\\')));
            if hits != 0 {
                i += (hits.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match b.get(i) {
            Some(b'"') => return Ok(i),
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
            None => return Err(format!("a string opened at byte {open} is not closed")),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// A top-level array field of [`top_level`]: its name, its text and its items.
type ArrayField<'t> = (&'t str, &'t str, Vec<&'t str>);

/// The fields of a top-level object (trimmed text starting with `{`): keys unescaped, values
/// as raw text. Values are parsed in full, but arrays that may be the records array (the
/// named field, or any under [`Records::Auto`]), which are split and checked by structure
/// and also returned with their items (the raw key, for [`Records::Field`] names a key
/// without escapes).
#[allow(clippy::type_complexity)]
fn top_level<'t>(
    text: &'t str,
    records: Records<'_>,
) -> Result<(HashMap<Cow<'t, str>, &'t str>, Vec<ArrayField<'t>>), String> {
    let b = text.as_bytes();
    let mut fields = HashMap::new();
    let mut arrays = Vec::new();
    let mut i = skip_ws(b, 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(format!("expected a field name at byte {i}"));
            }
            let end = string_end(b, i)?;
            let raw_key = &text[i + 1..end];
            let key: Cow<'t, str> =
                serde_json::from_str(&text[i..=end]).map_err(|e| e.to_string())?;
            i = skip_ws(b, end + 1);
            if b.get(i) != Some(&b':') {
                return Err(format!("expected `:` at byte {i}"));
            }
            i = skip_ws(b, i + 1);
            let lazy = b.get(i) == Some(&b'[')
                && match records {
                    Records::Field(k) => k == raw_key,
                    Records::Auto => true,
                    Records::None => false,
                };
            let end = if lazy {
                let (items, end) = split_items(text, i)?;
                arrays.push((raw_key, &text[i..end], items));
                end
            } else {
                // The value's end is where serde stops reading (a number ends at
                // the delimiter after it).
                let mut values =
                    serde_json::Deserializer::from_str(&text[i..]).into_iter::<IgnoredAny>();
                match values.next() {
                    Some(Ok(_)) => i + values.byte_offset(),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the text ends before a value (truncated?)".into()),
                }
            };
            fields.insert(key, &text[i..end]);
            i = skip_ws(b, end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected `,` or `}}` at byte {i} (truncated?)")),
            }
        }
    }
    if i != b.len() {
        return Err(format!("trailing characters at byte {i}"));
    }
    Ok((fields, arrays))
}

/// The items of the JSON array opening at `open` in `text`, trimmed, and the end of the array
/// (just past its `]`): one scan for the commas between the items, skipping strings and
/// nested values, that checks the structure (strings closed, brackets matched, one comma
/// between items) without parsing the items.
fn split_items(text: &str, open: usize) -> Result<(Vec<&str>, usize), String> {
    let b = text.as_bytes();
    let mut items = Vec::new();
    // The closers of the containers open inside the current item.
    let mut stack: Vec<u8> = Vec::with_capacity(8);
    // Where the current item starts; whether it is complete (more than whitespace after a
    // complete value is an error); whether a comma wants an item after it.
    let mut start: Option<usize> = None;
    let mut complete = false;
    let mut want_item = false;
    let mut i = open + 1;
    while i < b.len() {
        let c = b[i];
        if !stack.is_empty() {
            match c {
                b'"' => i = string_end(b, i)?,
                b'[' => stack.push(b']'),
                b'{' => stack.push(b'}'),
                b']' | b'}' => {
                    if stack.pop() != Some(c) {
                        return Err(format!("unexpected `{}` at byte {i}", c as char));
                    }
                    complete = stack.is_empty();
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b',' | b']' => {
                match start.take() {
                    Some(s) => items.push(text[s..i].trim_end()),
                    None if c == b',' || want_item => {
                        return Err(format!("expected a value at byte {i}"))
                    }
                    None => {}
                }
                if c == b']' {
                    return Ok((items, i + 1));
                }
                want_item = true;
                complete = false;
            }
            c if c.is_ascii_whitespace() => complete = start.is_some(),
            _ if complete => {
                return Err(format!("expected `,` or `]` at byte {i}"));
            }
            b'}' => return Err(format!("unexpected `}}` at byte {i}")),
            _ => {
                if start.is_none() {
                    start = Some(i);
                    want_item = false;
                }
                match c {
                    b'"' => {
                        i = string_end(b, i)?;
                        complete = true;
                    }
                    b'[' => stack.push(b']'),
                    b'{' => stack.push(b'}'),
                    _ => {}
                }
            }
        }
        i += 1;
    }
    Err("the text ends inside an array (truncated?)".into())
}

fn unescape(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn child<'a>(value: &'a str, segment: &str) -> Option<&'a str> {
    use serde_json::value::RawValue;
    if value.starts_with('{') {
        let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(value).ok()?;
        map.get(segment).map(|v| v.get())
    } else if value.starts_with('[') {
        let i: usize = segment.parse().ok()?;
        let items: Vec<&'a RawValue> = serde_json::from_str(value).ok()?;
        items.get(i).map(|v| v.get())
    } else {
        None
    }
}

/// The first `max` bytes of a body as text, for messages.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > max {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_auto_detected_records() {
        let text = br#"{"data":{"items":[{"id":1},{"id":2, "a/b": [5]}]},"meta":{"next":"c2","total":"7","more":true},"x~y":1}"#;
        let b = Body::parse(text).unwrap();
        let recs = b.records(Some("/data/items")).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1], r#"{"id":2, "a/b": [5]}"#);
        // Strings with brackets, commas and escaped quotes; scalars; nesting; whitespace.
        let strange =
            Body::parse(br#"{"r": [ {"s":"a,]}\"[{","n":[1,[2,{}]]} , 7,"x\\" ,null,[ ] ,{} ]}"#)
                .unwrap();
        assert_eq!(
            strange.records(Some("/r")).unwrap(),
            [
                r#"{"s":"a,]}\"[{","n":[1,[2,{}]]}"#,
                "7",
                r#""x\\""#,
                "null",
                "[ ]",
                "{}"
            ]
        );
        assert!(Body::parse(br#"{"r": []}"#)
            .unwrap()
            .records(Some("/r"))
            .unwrap()
            .is_empty());
        assert!(Body::parse(br#"{"r": [ ]}"#)
            .unwrap()
            .records(Some("/r"))
            .unwrap()
            .is_empty());
        assert_eq!(b.text("/meta/next").as_deref(), Some("c2"));
        assert_eq!(b.count("/meta/total"), Some(7));
        assert_eq!(b.value("/meta/more"), Some(serde_json::json!(true)));
        assert_eq!(b.count("/data/items/1/a~1b/0"), Some(5));
        assert_eq!(b.count("/x~0y"), Some(1));
        assert!(b.pointer("/nope").is_none());
        // One array somewhere at the top: found without a pointer.
        let b = Body::parse(br#"{"results":[{"a":1}],"next":null}"#).unwrap();
        assert_eq!(b.records(None).unwrap().len(), 1);
        assert_eq!(b.text("/next"), None);
        let b = Body::parse(br#"[{"a":1},{"a":2},{"a":3}]"#).unwrap();
        assert_eq!(b.records(None).unwrap().len(), 3);
        let err = Body::parse(br#"{"a":[],"b":[]}"#)
            .unwrap()
            .records(None)
            .unwrap_err();
        assert!(err.contains("several arrays (a, b)"), "{err}");
        assert!(Body::parse(br#"{"a":[1,2"#).is_err(), "truncated JSON");
    }

    #[test]
    fn string_ends_are_found_across_word_boundaries_and_escapes() {
        // Every string of up to 20 characters drawn from `a`, `\\`, `"` (escaped as JSON
        // needs), at every alignment: the end found is the closing quote's.
        let alphabet = ['a', '\\', '"', 'é'];
        for len in 0..20usize {
            for seed in 0..64u64 {
                let mut body = String::new();
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64;
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match alphabet[(x % 4) as usize] {
                        c @ ('\\' | '"') => {
                            body.push('\\');
                            body.push(c);
                        }
                        c => body.push(c),
                    }
                }
                for pad in 0..9 {
                    let text = format!("{}\"{body}\"xx", " ".repeat(pad));
                    let end = string_end(text.as_bytes(), pad).unwrap();
                    assert_eq!(end, text.len() - 3, "{text}");
                    let unclosed = format!("{}\"{body}", " ".repeat(pad));
                    assert!(string_end(unclosed.as_bytes(), pad).is_err(), "{unclosed}");
                }
            }
        }
    }

    #[test]
    fn pages_check_the_records_array_by_structure_and_the_rest_in_full() {
        fn records<'a>(text: &'a str, pointer: Option<&str>) -> Result<Vec<&'a str>, String> {
            Body::page(text.as_bytes(), pointer).and_then(|b| b.records(pointer))
        }
        let page =
            r#"  {"data" : [ {"a":1} , {"a":"x,]}\"["} ] , "next": "n2", "meta": {"n": [1]} }  "#;
        let b = Body::page(page.as_bytes(), Some("/data")).unwrap();
        assert_eq!(
            b.records(Some("/data")).unwrap(),
            [r#"{"a":1}"#, r#"{"a":"x,]}\"["}"#]
        );
        assert_eq!(b.text("/next").as_deref(), Some("n2"));
        assert_eq!(b.count("/meta/n/0"), Some(1));
        // The only array, found without a pointer; an array body; an escaped key.
        assert_eq!(
            records(r#"{"rows":[1,2],"n":null}"#, None).unwrap(),
            ["1", "2"]
        );
        assert_eq!(records(r#"[{"a":1}, {"a":2}]"#, None).unwrap().len(), 2);
        assert_eq!(
            records(r#"{"d\u0061ta":[3]}"#, Some("/data")).unwrap(),
            ["3"]
        );
        assert!(records(r#"{"data":[ ]}"#, Some("/data"))
            .unwrap()
            .is_empty());
        // A record that is not JSON is left to the decoder, which rejects that record.
        assert_eq!(
            records(r#"{"data":[{"a":tru},{"a":2}]}"#, Some("/data")).unwrap(),
            [r#"{"a":tru}"#, r#"{"a":2}"#]
        );
        // Truncated or garbled pages are refused whole.
        for bad in [
            r#"{"data":[{"a":1},{"a":2"#,
            r#"{"data":[{"a":1},{"a":2}]"#,
            r#"{"data":[{"a":1]}]}"#,
            r#"{"data":[{"a":"x}]}"#,
            r#"{"data":[1,,2]}"#,
            r#"{"data":[1,2,]}"#,
            r#"{"data":[1 2]}"#,
            r#"{"data":[1],"next":tru}"#,
            r#"{"data":[1],"other":[1,}"#,
            r#"{"data":[1]} x"#,
            r#"{"data" [1]}"#,
            r#"{data:[1]}"#,
            r#"[{"a":1},"#,
            r#"[{"a":1}] ]"#,
        ] {
            assert!(records(bad, Some("/data")).is_err(), "{bad} is refused");
        }
        assert!(records(r#"[{"a":1},"#, None).is_err());
        assert!(
            records(r#"{"a":[1],"b":[2,}"#, None).is_err(),
            "two arrays: parsed in full"
        );
    }
}
