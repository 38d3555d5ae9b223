//! JSON Schema: validation of the document's shape and compatibility as Confluent defines it
//! for the common cases. A reader is compatible with a writer when every document the
//! writer's schema accepts is accepted by the reader's, checked structurally:
//!
//! - `type`: widening (`integer` → `number`, a type added) is compatible, narrowing is not
//!   (`TYPE_NARROWED`);
//! - properties under the **content model**: `additionalProperties: false` is closed, absent or
//!   `true` is open, a schema is partially open. A property added to the reader is compatible
//!   when the writer was closed (its data cannot have it) or its `additionalProperties` schema
//!   fits the new property; added to an open writer it is not
//!   (`PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL`). A property removed from the reader is compatible
//!   when the reader is open, not when it is closed (`PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL`);
//! - `required`: a property the reader requires and the writer did not is incompatible unless
//!   it has a `default` (`REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL`);
//! - `additionalProperties` narrowed (open → closed) is incompatible;
//! - `enum` narrowed, `maxLength`/`maxItems`/`maximum` decreased or added,
//!   `minLength`/`minItems`/`minimum` increased or added, `pattern` added or changed: incompatible;
//! - `items`, property schemas, `additionalProperties` schemas: compared recursively;
//!   `anyOf`/`oneOf`: each writer branch must fit a reader branch;
//! - local `$ref`s (`#/definitions/…`, `#/$defs/…`) are followed, and a `$ref` naming a
//!   registry reference resolves to that schema.
//!
//! Not covered (compared as equal or ignored): `not`, `if`/`then`/`else`,
//! `patternProperties`, `dependencies`, `const`, `multipleOf`, formats.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::schema::{Problem, Resolved};

/// A parsed JSON Schema document, with the documents its references name.
#[derive(Debug)]
pub struct Parsed {
    root: Value,
    references: Vec<(String, Value)>,
}

impl Parsed {
    /// Parses a document (an object or a boolean).
    pub fn parse(text: &str, references: &[Resolved]) -> Result<Parsed, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        check_shape(&root, "#")?;
        let references = references
            .iter()
            .map(|r| {
                serde_json::from_str(&r.schema)
                    .map(|v| (r.name.clone(), v))
                    .map_err(|e| format!("reference {}: not JSON: {e}", r.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Parsed { root, references })
    }

    /// The root `title`.
    pub fn title(&self) -> Option<&str> {
        self.root.get("title").and_then(Value::as_str)
    }

    /// Follows `$ref`s (local pointers, registry references) to a schema.
    fn deref<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let target = if let Some(pointer) = r.strip_prefix('#') {
                self.root.pointer(pointer)
            } else {
                let (doc, pointer) = r.split_once('#').unwrap_or((r, ""));
                self.references
                    .iter()
                    .find(|(name, _)| name == doc)
                    .and_then(|(_, d)| d.pointer(pointer))
            };
            match target {
                Some(t) => v = t,
                None => return v,
            }
        }
        v
    }
}

/// The keywords whose values must be schemas, objects of schemas or arrays of schemas: enough
/// to refuse documents that are not JSON Schema (42201).
fn check_shape(v: &Value, path: &str) -> Result<(), String> {
    let map = match v {
        Value::Bool(_) => return Ok(()),
        Value::Object(m) => m,
        _ => return Err(format!("{path}: a schema is an object or a boolean")),
    };
    if let Some(t) = map.get("type") {
        let ok = match t {
            Value::String(s) => is_type(s),
            Value::Array(a) => a.iter().all(|x| x.as_str().is_some_and(is_type)),
            _ => false,
        };
        if !ok {
            return Err(format!("{path}/type: {t} is not a JSON Schema type"));
        }
    }
    for key in ["properties", "definitions", "$defs", "patternProperties"] {
        if let Some(p) = map.get(key) {
            let p = p
                .as_object()
                .ok_or_else(|| format!("{path}/{key}: must be an object"))?;
            for (name, s) in p {
                check_shape(s, &format!("{path}/{key}/{name}"))?;
            }
        }
    }
    for key in ["items", "additionalProperties", "not", "additionalItems"] {
        if let Some(s) = map.get(key) {
            if !s.is_array() {
                check_shape(s, &format!("{path}/{key}"))?;
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(a) = map.get(key) {
            let a = a
                .as_array()
                .ok_or_else(|| format!("{path}/{key}: must be an array"))?;
            for (i, s) in a.iter().enumerate() {
                check_shape(s, &format!("{path}/{key}/{i}"))?;
            }
        }
    }
    if let Some(r) = map.get("required") {
        if !r.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err(format!("{path}/required: must be an array of names"));
        }
    }
    Ok(())
}

fn is_type(s: &str) -> bool {
    matches!(
        s,
        "null" | "boolean" | "object" | "array" | "number" | "integer" | "string"
    )
}

struct Checker<'a> {
    writer: &'a Parsed,
    reader: &'a Parsed,
    writer_is: &'a str,
    reader_is: &'a str,
    out: Vec<Problem>,
    seen: HashSet<(*const Value, *const Value)>,
}

/// Whether `reader` accepts every document `writer` accepts; every problem found.
pub fn can_read(
    writer: &Parsed,
    reader: &Parsed,
    writer_is: &str,
    reader_is: &str,
) -> Vec<Problem> {
    let mut c = Checker {
        writer,
        reader,
        writer_is,
        reader_is,
        out: Vec::new(),
        seen: HashSet::new(),
    };
    c.check(&writer.root, &reader.root, "#");
    c.out
}

fn types(m: &Map<String, Value>) -> Option<Vec<&str>> {
    match m.get("type")? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Open (`true`), closed (`false`) or partially open (a schema).
enum Model<'a> {
    Open,
    Closed,
    Partial(&'a Value),
}

fn model(m: &Map<String, Value>) -> Model<'_> {
    match m.get("additionalProperties") {
        None | Some(Value::Bool(true)) => Model::Open,
        Some(Value::Bool(false)) => Model::Closed,
        Some(s) if s.as_object().is_some_and(|o| o.is_empty()) => Model::Open,
        Some(s) => Model::Partial(s),
    }
}

fn accepts_anything(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| {
            matches!(
                k.as_str(),
                "title" | "description" | "default" | "$comment" | "examples"
            )
        }),
        _ => false,
    }
}

fn num(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

fn names(m: &Map<String, Value>, k: &str) -> Vec<String> {
    m.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Checker<'_> {
    fn fail(&mut self, kind: &str, path: &str, description: String) {
        self.out.push(Problem {
            kind: kind.to_string(),
            description,
            info: path.to_string(),
        });
    }

    /// Whether the pair fits without recording anything.
    fn fits(&mut self, w: &Value, r: &Value) -> bool {
        let n = self.out.len();
        let seen = self.seen.clone();
        self.check(w, r, "#");
        let ok = self.out.len() == n;
        self.out.truncate(n);
        self.seen = seen;
        ok
    }

    fn check(&mut self, w: &Value, r: &Value, path: &str) {
        let (w, r) = (self.writer.deref(w), self.reader.deref(r));
        if !self.seen.insert((w as *const Value, r as *const Value)) {
            return; // a recursive schema already being compared
        }
        if accepts_anything(r) || w == &Value::Bool(false) {
            return;
        }
        let (Some(wm), Some(rm)) = (w.as_object(), r.as_object()) else {
            let (wi, ri) = (self.writer_is, self.reader_is);
            self.fail(
                "TYPE_NARROWED",
                path,
                format!("The {ri} at '{path}' accepts less than the {wi} ({r} vs {w})"),
            );
            return;
        };
        let (wi, ri) = (self.writer_is.to_string(), self.reader_is.to_string());

        // allOf in the reader: every branch must accept the writer's documents; in the writer:
        // one branch that fits is enough (the writer accepts less than any of its branches).
        if let Some(branches) = rm.get("allOf").and_then(Value::as_array) {
            for (i, b) in branches.iter().enumerate() {
                self.check(w, b, &format!("{path}/allOf/{i}"));
            }
        }
        if let Some(branches) = wm.get("allOf").and_then(Value::as_array) {
            let mut rest = rm.clone();
            rest.remove("allOf");
            let rest = Value::Object(rest);
            if !branches.iter().any(|b| self.fits(b, &rest)) && !branches.is_empty() {
                self.fail(
                    "COMBINED_TYPE_SUBSCHEMAS_CHANGED",
                    path,
                    format!("No part of the {wi}'s allOf at '{path}' fits the {ri}"),
                );
            }
            if !wm.contains_key("type") && !wm.contains_key("properties") {
                return;
            }
        }
        // anyOf/oneOf: each writer alternative must fit some reader alternative.
        let r_alts = rm
            .get("anyOf")
            .or_else(|| rm.get("oneOf"))
            .and_then(Value::as_array);
        let w_alts = wm
            .get("anyOf")
            .or_else(|| wm.get("oneOf"))
            .and_then(Value::as_array);
        match (w_alts, r_alts) {
            (Some(wa), Some(ra)) => {
                for (i, b) in wa.iter().enumerate() {
                    if !ra.iter().any(|x| self.fits(b, x)) {
                        self.fail(
                            "COMBINED_TYPE_SUBSCHEMAS_CHANGED",
                            &format!("{path}/anyOf/{i}"),
                            format!("The {wi}'s alternative {i} at '{path}' fits no alternative of the {ri}"),
                        );
                    }
                }
                return;
            }
            (Some(wa), None) => {
                for (i, b) in wa.iter().enumerate() {
                    self.check(b, r, &format!("{path}/anyOf/{i}"));
                }
                return;
            }
            (None, Some(ra)) => {
                if !ra.iter().any(|x| self.fits(w, x)) {
                    self.fail(
                        "SUM_TYPE_NARROWED",
                        path,
                        format!("The {wi}'s schema at '{path}' fits no alternative of the {ri}"),
                    );
                }
                return;
            }
            (None, None) => {}
        }

        // Types.
        let wt = types(wm);
        if let Some(rt) = types(rm) {
            let covered = |t: &str| rt.contains(&t) || (t == "integer" && rt.contains(&"number"));
            let narrowed = match &wt {
                None => true,
                Some(wt) => !wt.iter().all(|t| covered(t)),
            };
            if narrowed {
                self.fail(
                    "TYPE_NARROWED",
                    &format!("{path}/type"),
                    format!(
                        "The type at '{path}' is narrowed from {} in the {wi} to {} in the {ri}",
                        wm.get("type").map_or("any".to_string(), Value::to_string),
                        rm["type"]
                    ),
                );
                return;
            }
        }
        let has = |t: &str| {
            wt.as_ref().is_none_or(|wt| wt.contains(&t))
                || (t == "number" && wt.as_ref().is_some_and(|wt| wt.contains(&"integer")))
        };

        // enum
        if let Some(re) = rm.get("enum").and_then(Value::as_array) {
            let ok = wm
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|we| we.iter().all(|x| re.contains(x)));
            if !ok {
                self.fail(
                    "ENUM_ARRAY_NARROWED",
                    &format!("{path}/enum"),
                    format!(
                        "The {ri}'s enum at '{path}' does not hold every value the {wi} allows"
                    ),
                );
            }
        }

        // Bounds: the reader may not be stricter.
        let upper = [
            ("maxLength", "string"),
            ("maxItems", "array"),
            ("maximum", "number"),
            ("exclusiveMaximum", "number"),
            ("maxProperties", "object"),
        ];
        for (k, t) in upper {
            if let Some(rv) = num(rm, k) {
                if has(t) && num(wm, k).is_none_or(|wv| rv < wv) {
                    let kind = format!(
                        "{}_{}",
                        camel_to_upper(k),
                        if wm.contains_key(k) {
                            "DECREASED"
                        } else {
                            "ADDED"
                        }
                    );
                    self.fail(
                        &kind,
                        &format!("{path}/{k}"),
                        format!("{k} at '{path}' is stricter in the {ri} than in the {wi}"),
                    );
                }
            }
        }
        let lower = [
            ("minLength", "string"),
            ("minItems", "array"),
            ("minimum", "number"),
            ("exclusiveMinimum", "number"),
            ("minProperties", "object"),
        ];
        for (k, t) in lower {
            if let Some(rv) = num(rm, k) {
                if has(t) && num(wm, k).is_none_or(|wv| rv > wv) {
                    let kind = format!(
                        "{}_{}",
                        camel_to_upper(k),
                        if wm.contains_key(k) {
                            "INCREASED"
                        } else {
                            "ADDED"
                        }
                    );
                    self.fail(
                        &kind,
                        &format!("{path}/{k}"),
                        format!("{k} at '{path}' is stricter in the {ri} than in the {wi}"),
                    );
                }
            }
        }
        if let Some(rp) = rm.get("pattern") {
            if has("string") && wm.get("pattern") != Some(rp) {
                let kind = if wm.contains_key("pattern") {
                    "PATTERN_CHANGED"
                } else {
                    "PATTERN_ADDED"
                };
                self.fail(kind, &format!("{path}/pattern"), format!("The {ri} constrains the strings at '{path}' with a pattern the {wi} did not have"));
            }
        }

        // Arrays.
        if let Some(ri_) = rm.get("items").filter(|i| !i.is_array()) {
            if has("array") {
                let wi_ = wm.get("items").cloned().unwrap_or(Value::Bool(true));
                let wi_ = if wi_.is_array() {
                    Value::Bool(true)
                } else {
                    wi_
                };
                // `wi_` may be a temporary: compare without recursion tracking by pointer.
                let w_items = wm.get("items").filter(|i| !i.is_array());
                match w_items {
                    Some(w_items) => self.check(w_items, ri_, &format!("{path}/items")),
                    None => {
                        if !accepts_anything(ri_) && !self.fits(&wi_, ri_) {
                            self.fail(
                                "ITEMS_NARROWED",
                                &format!("{path}/items"),
                                format!(
                                    "The {ri} constrains the items at '{path}', the {wi} did not"
                                ),
                            );
                        }
                    }
                }
            }
        }

        // Objects.
        let is_object =
            has("object") || wm.contains_key("properties") || rm.contains_key("properties");
        if !is_object {
            return;
        }
        let empty = Map::new();
        let wp = wm
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let rp = rm
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let (w_req, r_req) = (names(wm, "required"), names(rm, "required"));
        let (w_model, r_model) = (model(wm), model(rm));
        for (name, r_schema) in rp {
            let p = format!("{path}/properties/{name}");
            match wp.get(name) {
                Some(w_schema) => self.check(w_schema, r_schema, &p),
                None => match w_model {
                    Model::Closed => {}
                    Model::Partial(w_add) => {
                        if !self.fits(w_add, r_schema) {
                            self.fail(
                                "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
                                &p,
                                format!("The property '{name}' added in the {ri} does not accept what the {wi}'s additionalProperties allowed"),
                            );
                        }
                    }
                    Model::Open => {
                        if !accepts_anything(r_schema) {
                            self.fail(
                                "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
                                &p,
                                format!("The property '{name}' is added in the {ri}, but the {wi} had an open content model: its data may hold '{name}' of any type"),
                            );
                        }
                    }
                },
            }
        }
        for name in &r_req {
            if !w_req.contains(name) {
                let has_default = rp.get(name).is_some_and(|s| s.get("default").is_some());
                if !has_default {
                    self.fail(
                        "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
                        &format!("{path}/required"),
                        format!(
                            "The property '{name}' is required in the {ri} but not in the {wi}"
                        ),
                    );
                }
            }
        }
        for (name, w_schema) in wp {
            if rp.contains_key(name) {
                continue;
            }
            let p = format!("{path}/properties/{name}");
            match r_model {
                Model::Open => {}
                Model::Closed => self.fail(
                    "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
                    &p,
                    format!("The property '{name}' of the {wi} is removed from the {ri}, whose content model is closed"),
                ),
                Model::Partial(r_add) => {
                    if !self.fits(w_schema, r_add) {
                        self.fail(
                            "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
                            &p,
                            format!("The property '{name}' of the {wi} is removed from the {ri} and its additionalProperties do not accept it"),
                        );
                    }
                }
            }
        }
        match (&w_model, &r_model) {
            (_, Model::Open) | (Model::Closed, _) => {}
            (Model::Open, _) => self.fail(
                "ADDITIONAL_PROPERTIES_NARROWED",
                &format!("{path}/additionalProperties"),
                format!(
                    "The {wi} allowed additional properties at '{path}', the {ri} restricts them"
                ),
            ),
            (Model::Partial(wa), Model::Partial(ra)) => {
                let (wa, ra) = (*wa, *ra);
                self.check(wa, ra, &format!("{path}/additionalProperties"));
            }
            (Model::Partial(_), Model::Closed) => self.fail(
                "ADDITIONAL_PROPERTIES_NARROWED",
                &format!("{path}/additionalProperties"),
                format!("The {wi} allowed some additional properties at '{path}', the {ri} none"),
            ),
        }
    }
}

fn camel_to_upper(k: &str) -> String {
    let mut out = String::new();
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(old: Value, new: Value) -> Vec<String> {
        let p = |v: Value| Parsed::parse(&v.to_string(), &[]).unwrap();
        can_read(&p(old), &p(new), "old schema", "new schema")
            .into_iter()
            .map(|p| p.kind)
            .collect()
    }

    fn obj(props: Value, required: &[&str], additional: Option<bool>) -> Value {
        let mut v =
            serde_json::json!({"type": "object", "properties": props, "required": required});
        if let Some(a) = additional {
            v["additionalProperties"] = Value::Bool(a);
        }
        v
    }

    #[test]
    fn content_models_decide_added_and_removed_properties() {
        use serde_json::json;
        let a = json!({"a": {"type": "string"}});
        let ab = json!({"a": {"type": "string"}, "b": {"type": "integer"}});
        // Added to a closed model: old data cannot have it. To an open one: it may, any type.
        assert!(kinds(
            obj(a.clone(), &[], Some(false)),
            obj(ab.clone(), &[], Some(false))
        )
        .is_empty());
        assert_eq!(
            kinds(obj(a.clone(), &[], None), obj(ab.clone(), &[], None)),
            ["PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"]
        );
        // Removed: fine when the new model is open, not when it is closed.
        assert!(kinds(obj(ab.clone(), &[], None), obj(a.clone(), &[], None)).is_empty());
        assert_eq!(
            kinds(
                obj(ab.clone(), &[], Some(false)),
                obj(a.clone(), &[], Some(false))
            ),
            ["PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"]
        );
        // A partially open model covers what its additionalProperties allow.
        let partial = |p: Value| json!({"type": "object", "properties": p, "additionalProperties": {"type": "integer"}});
        assert!(kinds(partial(a.clone()), partial(ab.clone())).is_empty());
        assert!(kinds(partial(ab.clone()), partial(a.clone())).is_empty());
        let ab_str = json!({"a": {"type": "string"}, "b": {"type": "string"}});
        assert_eq!(
            kinds(partial(a.clone()), partial(ab_str)),
            ["PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"]
        );
        // Open → closed narrows.
        assert_eq!(
            kinds(obj(a.clone(), &[], None), obj(a.clone(), &[], Some(false))),
            ["ADDITIONAL_PROPERTIES_NARROWED"]
        );
        assert!(kinds(obj(a.clone(), &[], Some(false)), obj(a.clone(), &[], None)).is_empty());
    }

    #[test]
    fn required_types_enums_and_bounds() {
        use serde_json::json;
        let ab = json!({"a": {"type": "string"}, "b": {"type": "integer"}});
        assert_eq!(
            kinds(
                obj(ab.clone(), &["a"], Some(false)),
                obj(ab.clone(), &["a", "b"], Some(false))
            ),
            ["REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"]
        );
        assert!(kinds(
            obj(ab.clone(), &["a", "b"], Some(false)),
            obj(ab.clone(), &["a"], Some(false))
        )
        .is_empty());
        let with_default = json!({"a": {"type": "string"}, "b": {"type": "integer", "default": 0}});
        assert!(kinds(
            obj(ab.clone(), &["a"], Some(false)),
            obj(with_default, &["a", "b"], Some(false))
        )
        .is_empty());
        // integer → number widens; number → integer narrows; a type added widens.
        assert!(kinds(json!({"type": "integer"}), json!({"type": "number"})).is_empty());
        assert_eq!(
            kinds(json!({"type": "number"}), json!({"type": "integer"})),
            ["TYPE_NARROWED"]
        );
        assert!(kinds(
            json!({"type": "string"}),
            json!({"type": ["string", "null"]})
        )
        .is_empty());
        assert_eq!(
            kinds(
                json!({"type": ["string", "null"]}),
                json!({"type": "string"})
            ),
            ["TYPE_NARROWED"]
        );
        assert!(kinds(
            json!({"enum": ["a", "b"]}),
            json!({"enum": ["a", "b", "c"]})
        )
        .is_empty());
        assert_eq!(
            kinds(json!({"enum": ["a", "b"]}), json!({"enum": ["a"]})),
            ["ENUM_ARRAY_NARROWED"]
        );
        assert_eq!(
            kinds(
                json!({"type": "string", "maxLength": 10}),
                json!({"type": "string", "maxLength": 5})
            ),
            ["MAX_LENGTH_DECREASED"]
        );
        assert!(kinds(
            json!({"type": "string", "maxLength": 5}),
            json!({"type": "string", "maxLength": 10})
        )
        .is_empty());
        assert_eq!(
            kinds(
                json!({"type": "integer"}),
                json!({"type": "integer", "minimum": 0})
            ),
            ["MINIMUM_ADDED"]
        );
        // Nested and through local refs.
        let nested = |t: &str| json!({"type": "object", "properties": {"x": {"$ref": "#/definitions/X"}}, "definitions": {"X": {"type": "array", "items": {"type": t}}}});
        assert!(kinds(nested("integer"), nested("number")).is_empty());
        assert_eq!(
            kinds(nested("number"), nested("integer")),
            ["TYPE_NARROWED"]
        );
        // Alternatives.
        assert!(kinds(
            json!({"type": "string"}),
            json!({"anyOf": [{"type": "string"}, {"type": "null"}]})
        )
        .is_empty());
        assert_eq!(
            kinds(
                json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
                json!({"type": "string"})
            ),
            ["TYPE_NARROWED"]
        );
    }

    #[test]
    fn documents_that_are_not_schemas_are_refused() {
        for bad in [
            "[1]",
            "3",
            r#"{"type":"strng"}"#,
            r#"{"properties":[]}"#,
            r#"{"required":"a"}"#,
            "not json",
        ] {
            assert!(Parsed::parse(bad, &[]).is_err(), "{bad}");
        }
        assert!(Parsed::parse("true", &[]).is_ok());
    }
}
