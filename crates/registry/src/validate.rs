//! JSON Schema validation of documents: what Confluent's `JSONSerializer` and
//! `JSONDeserializer` do with a payload and its schema, for Tributary's Kafka sink (each row
//! before it is written) and source (each record of `format: json_schema`).
//!
//! The keywords of draft-07 and 2020-12 that constrain documents: `type` (`integer` is a
//! number without a fraction), `enum`, `const`; `minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum` (numbers, or draft-04's booleans), `multipleOf`; `minLength`,
//! `maxLength` (in characters), `pattern`; `items` (one schema, or draft-07's tuple with
//! `additionalItems`), `prefixItems`, `minItems`, `maxItems`, `uniqueItems`, `contains`
//! (`minContains`, `maxContains`); `properties`, `required`, `additionalProperties`,
//! `patternProperties`, `propertyNames`, `minProperties`, `maxProperties`, `dependencies`,
//! `dependentRequired`, `dependentSchemas`; `allOf`, `anyOf`, `oneOf`, `not`,
//! `if`/`then`/`else`; and local `$ref`s (`#`, `#/definitions/…`, `#/$defs/…`, any JSON
//! pointer into the document). `format` is an annotation (not asserted), as the
//! specification's default is. Numbers compare by value (`1` equals `1.0`).
//!
//! Written here rather than with the `jsonschema` crate, which brings its own regex engine
//! (`fancy-regex`), URL and IDN handling, an HTTP resolver and dozens of format checkers: the
//! keywords above are a few hundred lines on `serde_json` values, and patterns use the
//! `regex` crate the workspace already builds. A pattern `regex` cannot compile (look-around,
//! backreferences) and a `$ref` to another document are refused when the schema is loaded,
//! with the reason, never skipped silently.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use crate::client::percent_decode;

/// A compiled JSON Schema.
#[derive(Debug)]
pub struct Validator {
    root: Value,
    patterns: HashMap<String, Regex>,
}

impl Validator {
    /// Compiles a schema from its text: fails on invalid JSON, a pattern the `regex` crate
    /// cannot compile, or a `$ref` that is not a pointer into the document.
    pub fn new(text: &str) -> Result<Validator, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        Validator::from_value(root)
    }

    /// Compiles a parsed schema.
    pub fn from_value(root: Value) -> Result<Validator, String> {
        let mut v = Validator {
            root,
            patterns: HashMap::new(),
        };
        let mut patterns = Vec::new();
        let mut refs = Vec::new();
        collect(&v.root, &mut patterns, &mut refs);
        for p in patterns {
            let re =
                Regex::new(&p).map_err(|e| format!("pattern {p:?} is not supported here: {e}"))?;
            v.patterns.insert(p, re);
        }
        for r in refs {
            if v.resolve(&r).is_none() {
                return Err(format!(
                    "$ref {r:?} does not point into the schema (references to other \
                     documents are not supported)"
                ));
            }
        }
        Ok(v)
    }

    /// Checks a document: `Err` says where (a JSON pointer) and why, for the first problem.
    pub fn validate(&self, doc: &Value) -> Result<(), String> {
        let mut path = String::new();
        self.check(&self.root, doc, &mut path, 0)
            .map_err(|(at, why)| {
                if at.is_empty() {
                    why
                } else {
                    format!("{at}: {why}")
                }
            })
    }

    fn resolve(&self, r: &str) -> Option<&Value> {
        let pointer = r.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(&self.root);
        }
        let decoded = percent_decode(pointer);
        self.root.pointer(&decoded)
    }

    fn check(
        &self,
        schema: &Value,
        doc: &Value,
        path: &mut String,
        depth: usize,
    ) -> Result<(), (String, String)> {
        let fail = |path: &str, why: String| Err((path.to_string(), why));
        if depth > 64 {
            return fail(path, "schema references nest more than 64 deep".into());
        }
        let s = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return fail(path, "no value is allowed here".into()),
            Value::Object(s) => s,
            _ => return Ok(()),
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = self
                .resolve(r)
                .ok_or_else(|| (path.clone(), format!("$ref {r:?} does not resolve")))?;
            self.check(target, doc, path, depth + 1)?;
        }
        if let Some(t) = s.get("type") {
            let ok = match t {
                Value::String(t) => is_type(doc, t),
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| is_type(doc, t)),
                _ => true,
            };
            if !ok {
                return fail(
                    path,
                    format!("expected {}, found {}", type_text(t), kind(doc)),
                );
            }
        }
        if let Some(Value::Array(values)) = s.get("enum") {
            if !values.iter().any(|v| equal(v, doc)) {
                return fail(
                    path,
                    format!("{} is not one of {}", short(doc), short(&s["enum"])),
                );
            }
        }
        if let Some(c) = s.get("const") {
            if !equal(c, doc) {
                return fail(path, format!("{} is not {}", short(doc), short(c)));
            }
        }
        match doc {
            Value::Number(n) => self.number(s, n.as_f64().unwrap_or(f64::NAN), path)?,
            Value::String(text) => self.string(s, text, path)?,
            Value::Array(items) => self.array(s, items, path, depth)?,
            Value::Object(fields) => self.object(s, fields, path, depth)?,
            _ => {}
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for sub in all {
                self.check(sub, doc, path, depth + 1)?;
            }
        }
        if let Some(Value::Array(any)) = s.get("anyOf") {
            let mut first = None;
            if !any
                .iter()
                .any(|sub| match self.check(sub, doc, path, depth + 1) {
                    Ok(()) => true,
                    Err(e) => {
                        first.get_or_insert(e);
                        false
                    }
                })
            {
                let (at, why) = first.unwrap_or_default();
                return fail(path, format!("matches none of anyOf (first: {at} {why})"));
            }
        }
        if let Some(Value::Array(one)) = s.get("oneOf") {
            let n = one
                .iter()
                .filter(|sub| self.check(sub, doc, path, depth + 1).is_ok())
                .count();
            if n != 1 {
                return fail(
                    path,
                    format!("matches {n} of oneOf's schemas, not exactly one"),
                );
            }
        }
        if let Some(not) = s.get("not") {
            if self.check(not, doc, path, depth + 1).is_ok() {
                return fail(path, "matches the schema under `not`".into());
            }
        }
        if let Some(cond) = s.get("if") {
            let branch = if self.check(cond, doc, path, depth + 1).is_ok() {
                s.get("then")
            } else {
                s.get("else")
            };
            if let Some(b) = branch {
                self.check(b, doc, path, depth + 1)?;
            }
        }
        Ok(())
    }

    fn number(&self, s: &Map<String, Value>, x: f64, path: &str) -> Result<(), (String, String)> {
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
        let out = |why: String| Err((path.to_string(), why));
        if let Some(min) = num("minimum") {
            // draft-04: exclusiveMinimum is a boolean that makes `minimum` exclusive.
            if x < min || (flag("exclusiveMinimum") && x == min) {
                return out(format!("{x} is less than the minimum {min}"));
            }
        }
        if let Some(max) = num("maximum") {
            if x > max || (flag("exclusiveMaximum") && x == max) {
                return out(format!("{x} is more than the maximum {max}"));
            }
        }
        if let Some(min) = num("exclusiveMinimum") {
            if x <= min {
                return out(format!("{x} is not more than the exclusive minimum {min}"));
            }
        }
        if let Some(max) = num("exclusiveMaximum") {
            if x >= max {
                return out(format!("{x} is not less than the exclusive maximum {max}"));
            }
        }
        if let Some(m) = num("multipleOf").filter(|m| *m > 0.0) {
            let q = x / m;
            if (q - q.round()).abs() > 1e-9 * q.abs().max(1.0) {
                return out(format!("{x} is not a multiple of {m}"));
            }
        }
        Ok(())
    }

    fn string(
        &self,
        s: &Map<String, Value>,
        text: &str,
        path: &str,
    ) -> Result<(), (String, String)> {
        let len = || text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if len() < min {
                return Err((path.to_string(), format!("shorter than minLength {min}")));
            }
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if len() > max {
                return Err((path.to_string(), format!("longer than maxLength {max}")));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if !self.patterns[p].is_match(text) {
                return Err((
                    path.to_string(),
                    format!(
                        "{} does not match the pattern {p:?}",
                        short(&Value::String(text.into()))
                    ),
                ));
            }
        }
        Ok(())
    }

    fn array(
        &self,
        s: &Map<String, Value>,
        items: &[Value],
        path: &mut String,
        depth: usize,
    ) -> Result<(), (String, String)> {
        let n = items.len() as u64;
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if n < min {
                return Err((
                    path.clone(),
                    format!("{n} items, fewer than minItems {min}"),
                ));
            }
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if n > max {
                return Err((path.clone(), format!("{n} items, more than maxItems {max}")));
            }
        }
        if s.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            for (i, a) in items.iter().enumerate() {
                if let Some(j) = items[..i].iter().position(|b| equal(a, b)) {
                    return Err((
                        path.clone(),
                        format!("items {j} and {i} are equal (uniqueItems)"),
                    ));
                }
            }
        }
        // Positional schemas: 2020-12's prefixItems, or draft-07's array form of items.
        let (prefix, rest) = match (s.get("prefixItems"), s.get("items")) {
            (Some(Value::Array(p)), rest) => (p.as_slice(), rest),
            (None, Some(Value::Array(p))) => (p.as_slice(), s.get("additionalItems")),
            (_, rest) => (&[][..], rest),
        };
        for (i, item) in items.iter().enumerate() {
            let sub = match prefix.get(i) {
                Some(sub) => Some(sub),
                None => rest,
            };
            if let Some(sub) = sub {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let r = self.check(sub, item, path, depth + 1);
                path.truncate(len);
                r?;
            }
        }
        if let Some(c) = s.get("contains") {
            let found = items
                .iter()
                .filter(|item| self.check(c, item, &mut path.clone(), depth + 1).is_ok())
                .count() as u64;
            let min = s.get("minContains").and_then(Value::as_u64).unwrap_or(1);
            if found < min {
                return Err((
                    path.clone(),
                    format!("{found} items match `contains`, fewer than {min}"),
                ));
            }
            if let Some(max) = s.get("maxContains").and_then(Value::as_u64) {
                if found > max {
                    return Err((
                        path.clone(),
                        format!("{found} items match `contains`, more than {max}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn object(
        &self,
        s: &Map<String, Value>,
        fields: &Map<String, Value>,
        path: &mut String,
        depth: usize,
    ) -> Result<(), (String, String)> {
        let n = fields.len() as u64;
        if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
            if n < min {
                return Err((
                    path.clone(),
                    format!("{n} properties, fewer than minProperties {min}"),
                ));
            }
        }
        if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
            if n > max {
                return Err((
                    path.clone(),
                    format!("{n} properties, more than maxProperties {max}"),
                ));
            }
        }
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(r) {
                    return Err((
                        path.clone(),
                        format!("the required property {r:?} is missing"),
                    ));
                }
            }
        }
        let properties = s.get("properties").and_then(Value::as_object);
        let patterns: Vec<(&Regex, &Value)> = s
            .get("patternProperties")
            .and_then(Value::as_object)
            .map(|p| p.iter().map(|(k, v)| (&self.patterns[k], v)).collect())
            .unwrap_or_default();
        let additional = s.get("additionalProperties");
        for (name, value) in fields {
            let len = path.len();
            path.push('/');
            path.push_str(&name.replace('~', "~0").replace('/', "~1"));
            let mut known = false;
            let mut r = Ok(());
            if let Some(sub) = properties.and_then(|p| p.get(name)) {
                known = true;
                r = self.check(sub, value, path, depth + 1);
            }
            for (re, sub) in &patterns {
                if r.is_ok() && re.is_match(name) {
                    known = true;
                    r = self.check(sub, value, path, depth + 1);
                }
            }
            if r.is_ok() && !known {
                if let Some(a) = additional {
                    r = match a {
                        Value::Bool(false) => Err((
                            path.clone(),
                            "a property the schema does not allow (additionalProperties: false)"
                                .to_string(),
                        )),
                        a => self.check(a, value, path, depth + 1),
                    };
                }
            }
            if r.is_ok() {
                if let Some(names) = s.get("propertyNames") {
                    r = self
                        .check(names, &Value::String(name.clone()), path, depth + 1)
                        .map_err(|(at, why)| (at, format!("the property name: {why}")));
                }
            }
            path.truncate(len);
            r?;
        }
        // dependencies (draft-07) and its 2019 split: dependentRequired, dependentSchemas.
        for key in ["dependencies", "dependentRequired", "dependentSchemas"] {
            let Some(Value::Object(deps)) = s.get(key) else {
                continue;
            };
            for (name, dep) in deps {
                if !fields.contains_key(name) {
                    continue;
                }
                match dep {
                    Value::Array(needed) => {
                        for r in needed.iter().filter_map(Value::as_str) {
                            if !fields.contains_key(r) {
                                return Err((
                                    path.clone(),
                                    format!("property {name:?} needs {r:?}, which is missing"),
                                ));
                            }
                        }
                    }
                    sub => self.check(sub, &Value::Object(fields.clone()), path, depth + 1)?,
                }
            }
        }
        Ok(())
    }
}

/// Every `pattern` / `patternProperties` key and every `$ref` in a schema.
fn collect(v: &Value, patterns: &mut Vec<String>, refs: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("pattern", Value::String(p)) => patterns.push(p.clone()),
                    ("$ref", Value::String(r)) => refs.push(r.clone()),
                    ("patternProperties", Value::Object(p)) => {
                        patterns.extend(p.keys().cloned());
                    }
                    // Values that are data, not schemas.
                    ("enum" | "const" | "default" | "examples", _) => continue,
                    _ => {}
                }
                collect(x, patterns, refs);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, patterns, refs)),
        _ => {}
    }
}

fn is_type(doc: &Value, t: &str) -> bool {
    match t {
        "null" => doc.is_null(),
        "boolean" => doc.is_boolean(),
        "object" => doc.is_object(),
        "array" => doc.is_array(),
        "string" => doc.is_string(),
        "number" => doc.is_number(),
        "integer" => match doc {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        _ => true,
    }
}

fn type_text(t: &Value) -> String {
    match t {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a valid type".into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON equality with numbers compared by value.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// A value for a message, cut to 60 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, doc: Value) -> Result<(), String> {
        Validator::from_value(schema).unwrap().validate(&doc)
    }

    #[test]
    fn types_numbers_strings_and_enums() {
        let s = json!({"type": "object", "properties": {
            "id": {"type": "integer", "minimum": 1},
            "price": {"type": ["number", "string"], "exclusiveMaximum": 100, "multipleOf": 0.01},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$", "maxLength": 3},
            "status": {"enum": ["NEW", "PAID", 3]},
            "v": {"const": 1}
        }});
        assert_eq!(
            check(
                s.clone(),
                json!({"id": 2, "price": 9.99, "code": "ABC", "status": 3.0, "v": 1.0})
            ),
            Ok(())
        );
        assert_eq!(
            check(s.clone(), json!({"id": 2.0})),
            Ok(()),
            "2.0 is an integer"
        );
        assert_eq!(
            check(s.clone(), json!({"id": 2.5})).unwrap_err(),
            "/id: expected integer, found a number"
        );
        assert_eq!(
            check(s.clone(), json!({"id": 0})).unwrap_err(),
            "/id: 0 is less than the minimum 1"
        );
        assert!(check(s.clone(), json!({"price": 100}))
            .unwrap_err()
            .contains("exclusive maximum 100"));
        assert!(check(s.clone(), json!({"price": 1.005}))
            .unwrap_err()
            .contains("not a multiple of 0.01"));
        assert!(check(s.clone(), json!({"code": "abc"}))
            .unwrap_err()
            .contains("does not match the pattern"));
        assert!(check(s.clone(), json!({"status": "LOST"}))
            .unwrap_err()
            .starts_with("/status: \"LOST\" is not one of"));
        assert!(check(s.clone(), json!({"v": 2})).is_err());
        assert!(check(s, json!([1]))
            .unwrap_err()
            .contains("expected object, found an array"));
    }

    #[test]
    fn objects_arrays_combinators_and_references() {
        let s = json!({
            "$defs": {"addr": {"type": "object", "required": ["city"],
                                "properties": {"city": {"type": "string", "minLength": 1}},
                                "additionalProperties": false}},
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "integer"},
                "address": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/addr"}]},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "maxItems": 3},
                "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "additionalItems": false}
            },
            "patternProperties": {"^x_": {"type": "boolean"}},
            "additionalProperties": false,
            "dependencies": {"tags": ["id"]},
            "if": {"properties": {"id": {"const": 0}}},
            "then": {"required": ["address"]}
        });
        let ok = json!({"id": 1, "address": {"city": "Oslo"}, "tags": ["a"], "pair": [1, "x"], "x_flag": true});
        assert_eq!(check(s.clone(), ok), Ok(()));
        let err = |d: Value| check(s.clone(), d).unwrap_err();
        assert_eq!(err(json!({})), "the required property \"id\" is missing");
        assert_eq!(
            err(json!({"id": 1, "other": 1})),
            "/other: a property the schema does not allow (additionalProperties: false)"
        );
        assert_eq!(
            err(json!({"id": 1, "x_flag": 1})),
            "/x_flag: expected boolean, found an integer"
        );
        assert!(err(json!({"id": 1, "address": {"city": ""}})).contains("matches 0 of oneOf"));
        assert!(err(json!({"id": 1, "tags": ["a", "a"]})).contains("items 0 and 1 are equal"));
        assert_eq!(
            err(json!({"id": 1, "tags": ["a", 2]})),
            "/tags/1: expected string, found an integer"
        );
        assert!(
            err(json!({"id": 1, "pair": [1, "x", 3]})).starts_with("/pair/2: no value is allowed")
        );
        assert_eq!(
            err(json!({"id": 0})),
            "the required property \"address\" is missing"
        );
        assert_eq!(check(s, json!({"id": 0, "address": null})), Ok(()));
        assert_eq!(check(json!({"not": {"type": "string"}}), json!(1)), Ok(()));
        assert!(check(
            json!({"anyOf": [{"type": "string"}, {"minimum": 5}]}),
            json!(3)
        )
        .unwrap_err()
        .contains("matches none of anyOf"));
        assert!(check(
            json!({"contains": {"const": 2}, "maxContains": 1}),
            json!([2, 2])
        )
        .is_err());
        assert_eq!(check(json!(true), json!({"anything": 1})), Ok(()));
    }

    #[test]
    fn schemas_it_cannot_honour_are_refused_when_loaded() {
        let e = Validator::new(r#"{"pattern": "(?<=a)b"}"#).unwrap_err();
        assert!(e.contains("is not supported here"), "{e}");
        let e = Validator::new(r#"{"$ref": "other.json#/x"}"#).unwrap_err();
        assert!(e.contains("does not point into the schema"), "{e}");
        let e = Validator::new(r##"{"$ref": "#/definitions/missing"}"##).unwrap_err();
        assert!(e.contains("does not point into the schema"), "{e}");
        assert!(Validator::new("{").unwrap_err().starts_with("not JSON"));
        // Patterns inside enum values are data, not patterns.
        Validator::new(r#"{"enum": [{"pattern": "(?<=a)"}]}"#).unwrap();
    }
}
