//! One response body → its records (slices of the body, never re-serialised) and the values
//! pagination needs (cursors, next URLs, totals, `has_more`), found by JSON pointer.
//!
//! The body is parsed once at the top level into borrowed raw values; a pointer descends
//! from there, parsing only the objects and arrays on its way. The records array is split
//! into one raw slice per record, which the Arrow decoder reads as they are.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

/// A parsed response body: an object's top-level fields or an array's items, found in one
/// pass that also validates the whole text.
pub(crate) struct Body<'a> {
    bytes: &'a [u8],
    top: Option<HashMap<Cow<'a, str>, &'a RawValue>>,
    items: Option<Vec<&'a RawValue>>,
}

impl<'a> Body<'a> {
    /// Parses `bytes` as JSON (the whole text is validated here).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let (top, items) = match first {
            Some(b'{') => (
                Some(serde_json::from_slice(bytes).map_err(|e| e.to_string())?),
                None,
            ),
            Some(b'[') => (
                None,
                Some(serde_json::from_slice(bytes).map_err(|e| e.to_string())?),
            ),
            _ => {
                serde_json::from_slice::<&RawValue>(bytes).map_err(|e| e.to_string())?;
                (None, None)
            }
        };
        Ok(Body { bytes, top, items })
    }

    /// The whole body as one value (already validated).
    fn whole(&self) -> Option<&'a RawValue> {
        serde_json::from_slice(self.bytes).ok()
    }

    /// The raw value at a JSON pointer (`""` is the whole body).
    pub fn pointer(&self, pointer: &str) -> Option<&'a RawValue> {
        if pointer.is_empty() {
            return self.whole();
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
        match serde_json::from_str(raw.get()) {
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
                Some(v) if v.get() == "null" => return Ok(Vec::new()),
                Some(v) => v,
                None => return Err(format!("no value at the records pointer {p}")),
            },
            None if self.items.is_some() => {
                return Ok(self.items.iter().flatten().map(|r| r.get()).collect());
            }
            None => {
                let top = self
                    .top
                    .as_ref()
                    .ok_or("the response is neither an object nor an array")?;
                let mut arrays: Vec<(&str, &RawValue)> = top
                    .iter()
                    .filter(|(_, v)| v.get().starts_with('['))
                    .map(|(k, v)| (k.as_ref(), *v))
                    .collect();
                match arrays.len() {
                    0 => return Ok(self.whole().into_iter().map(|r| r.get()).collect()),
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
        if !array.get().starts_with('[') {
            return Err(format!(
                "the records are not an array (found `{}`)",
                excerpt(array.get().as_bytes(), 40)
            ));
        }
        // The text was validated when the body was parsed: split it without parsing again.
        Ok(split_array(array.get()))
    }
}

/// The items of a JSON array's text (valid JSON, starting with `[`), trimmed: a scan for the
/// commas between them, skipping strings and nested values, without parsing anything.
fn split_array(array: &str) -> Vec<&str> {
    let b = array.as_bytes();
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
                // To the closing quote: the next `"` not escaped.
                i += 1;
                while let Some(k) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    if b[i + k] == b'\\' {
                        i += k + 2;
                    } else {
                        i += k;
                        break;
                    }
                }
            }
            b'[' | b'{' => {
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    if let Some(s) = start.take() {
                        items.push(array[s..i].trim_end());
                    }
                    break;
                }
            }
            b',' if depth == 1 => {
                if let Some(s) = start.take() {
                    items.push(array[s..i].trim_end());
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => {
                if depth == 1 && start.is_none() {
                    start = Some(i);
                }
            }
        }
        i += 1;
    }
    items
}

fn unescape(segment: &str) -> Cow<'_, str> {
    if segment.contains('~') {
        Cow::Owned(segment.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(segment)
    }
}

fn child<'a>(value: &'a RawValue, segment: &str) -> Option<&'a RawValue> {
    if value.get().starts_with('{') {
        let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(value.get()).ok()?;
        map.get(segment).copied()
    } else {
        index(value, segment)
    }
}

fn index<'a>(value: &'a RawValue, segment: &str) -> Option<&'a RawValue> {
    if !value.get().starts_with('[') {
        return None;
    }
    let i: usize = segment.parse().ok()?;
    let items: Vec<&'a RawValue> = serde_json::from_str(value.get()).ok()?;
    items.get(i).copied()
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
}
