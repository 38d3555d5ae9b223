//! Avro schemas: parsing (with named types from references), the canonical text used for
//! identity, and schema resolution (can a reader schema read what a writer schema wrote?).
//!
//! Written here rather than taken from `apache-avro` (0.21): its `SchemaCompatibility::can_read`
//! compares a named type used by reference (`"type": "Address"`) only with another reference
//! (a reader that defines the type inline where the writer referred to it, or the other way
//! round, is reported incompatible), ignores an enum's `default` (Avro 1.9+: a reader with a
//! default reads unknown symbols), and returns only the first problem where Confluent's verbose
//! mode lists all of them. The crate also pulls `bon`, `strum`, `bigdecimal`, `num-bigint`,
//! `uuid`, `regex-lite`, `digest` and a deflate codec (plus optional codecs) into a build that
//! only needs the schema half, on 2 cores. The rules
//! below are the Avro specification's "Schema Resolution" section, as Java's
//! `SchemaCompatibility` (which Confluent runs) applies them.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// An Avro type within a [`Parsed`] schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int` (32-bit)
    Int,
    /// `long` (64-bit)
    Long,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `bytes`
    Bytes,
    /// `string`
    String,
    /// `array` of items.
    Array(Box<Type>),
    /// `map` of values (string keys).
    Map(Box<Type>),
    /// A union of branches.
    Union(Vec<Type>),
    /// A named type (record, enum, fixed): an index into [`Parsed::named`].
    Named(usize),
}

/// A record field.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Other names it answers to (reader side).
    pub aliases: Vec<String>,
    /// Its type.
    pub ty: Type,
    /// Its default value.
    pub default: Option<Value>,
}

/// What a named type is.
#[derive(Clone, Debug, PartialEq)]
pub enum NamedKind {
    /// A record (or error) with its fields.
    Record(Vec<Field>),
    /// An enum with its symbols and default symbol.
    Enum {
        /// Symbols in order.
        symbols: Vec<String>,
        /// The symbol read for writer symbols the reader does not know.
        default: Option<String>,
    },
    /// Fixed-size bytes.
    Fixed(u64),
}

/// A named type.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    /// Full name (`namespace.name`).
    pub fullname: String,
    /// Aliases, as full names.
    pub aliases: Vec<String>,
    /// Record, enum or fixed.
    pub kind: NamedKind,
}

impl Named {
    fn short(&self) -> &str {
        self.fullname.rsplit('.').next().unwrap_or(&self.fullname)
    }
}

/// A parsed schema: its named types (those of its references first) and its root type.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// Every named type, in definition order.
    pub named: Vec<Named>,
    by_name: HashMap<String, usize>,
    /// The root type (`None` until a schema is parsed).
    pub root: Option<Type>,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn primitive(name: &str) -> Option<Type> {
    Some(match name {
        "null" => Type::Null,
        "boolean" => Type::Boolean,
        "int" => Type::Int,
        "long" => Type::Long,
        "float" => Type::Float,
        "double" => Type::Double,
        "bytes" => Type::Bytes,
        "string" => Type::String,
        _ => return None,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

impl Parsed {
    /// Parses `text` after the schemas it references (`references`, each already a JSON
    /// schema text, dependencies first): their named types can be used by name.
    pub fn parse(text: &str, references: &[String]) -> Result<Parsed, String> {
        let mut parsed = Parsed::default();
        for r in references {
            let value: Value = serde_json::from_str(r)
                .map_err(|e| format!("a referenced schema is not JSON: {e}"))?;
            parsed.parse_type(&value, None)?;
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON document: {e}"))?;
        let root = parsed.parse_type(&value, None)?;
        parsed.root = Some(root);
        Ok(parsed)
    }

    /// The root type.
    pub fn root(&self) -> &Type {
        self.root.as_ref().expect("parsed schemas have a root")
    }

    /// The full name of the root type when it is named (record name strategies).
    pub fn root_name(&self) -> Option<&str> {
        match self.root() {
            Type::Named(i) => Some(&self.named[*i].fullname),
            _ => None,
        }
    }

    fn lookup(&self, name: &str, namespace: Option<&str>) -> Option<usize> {
        self.by_name
            .get(&full_name(name, namespace))
            .or_else(|| self.by_name.get(name))
            .copied()
    }

    fn parse_type(&mut self, value: &Value, namespace: Option<&str>) -> Result<Type, String> {
        match value {
            Value::String(name) => {
                if let Some(t) = primitive(name) {
                    return Ok(t);
                }
                self.lookup(name, namespace)
                    .map(Type::Named)
                    .ok_or_else(|| format!("unknown type {name:?}"))
            }
            Value::Array(branches) => {
                let mut out = Vec::with_capacity(branches.len());
                let mut seen = HashSet::new();
                for b in branches {
                    let t = self.parse_type(b, namespace)?;
                    let key = match &t {
                        Type::Union(_) => return Err("a union cannot contain a union".into()),
                        Type::Named(i) => self.named[*i].fullname.clone(),
                        Type::Array(_) => "array".into(),
                        Type::Map(_) => "map".into(),
                        other => format!("{other:?}"),
                    };
                    if !seen.insert(key.clone()) {
                        return Err(format!("a union has two branches of type {key}"));
                    }
                    out.push(t);
                }
                Ok(Type::Union(out))
            }
            Value::Object(map) => {
                let ty = map
                    .get("type")
                    .ok_or_else(|| "a schema object has no \"type\"".to_string())?;
                let ty_name = match ty {
                    Value::String(s) => s.as_str(),
                    // {"type": {...}} or {"type": [...]}: a wrapped type.
                    other => return self.parse_type(other, namespace),
                };
                match ty_name {
                    "record" | "error" | "enum" | "fixed" => self.parse_named(map, namespace),
                    "array" => {
                        let items = map
                            .get("items")
                            .ok_or_else(|| "an array has no \"items\"".to_string())?;
                        Ok(Type::Array(Box::new(self.parse_type(items, namespace)?)))
                    }
                    "map" => {
                        let values = map
                            .get("values")
                            .ok_or_else(|| "a map has no \"values\"".to_string())?;
                        Ok(Type::Map(Box::new(self.parse_type(values, namespace)?)))
                    }
                    // A primitive with attributes (logicalType and friends: the underlying
                    // type decides resolution) or a reference by name.
                    other => self.parse_type(&Value::String(other.to_string()), namespace),
                }
            }
            other => Err(format!("{other} is not a schema")),
        }
    }

    fn parse_named(
        &mut self,
        map: &serde_json::Map<String, Value>,
        namespace: Option<&str>,
    ) -> Result<Type, String> {
        let kind = map["type"].as_str().unwrap_or_default().to_string();
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a {kind} has no \"name\""))?;
        let ns = match map.get("namespace") {
            Some(Value::String(ns)) => Some(ns.as_str()),
            Some(Value::Null) | None => namespace,
            Some(other) => return Err(format!("namespace {other} is not a string")),
        };
        let fullname = full_name(name, ns);
        for part in fullname.split('.') {
            if !valid_name(part) {
                return Err(format!("invalid name {fullname:?}"));
            }
        }
        if PRIMITIVES.contains(&fullname.as_str()) {
            return Err(format!("{fullname:?} is a primitive type name"));
        }
        if self.by_name.contains_key(&fullname) {
            return Err(format!("the type {fullname:?} is defined twice"));
        }
        // Names inside take the namespace of the type's full name.
        let inner_ns = fullname.rsplit_once('.').map(|(ns, _)| ns.to_string());
        let aliases = match map.get("aliases") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| full_name(s, inner_ns.as_deref()))
                        .ok_or_else(|| format!("{fullname}: aliases must be strings"))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
            Some(_) => return Err(format!("{fullname}: aliases must be an array")),
        };
        // Registered before the fields are parsed, so a record can refer to itself.
        let index = self.named.len();
        self.named.push(Named {
            fullname: fullname.clone(),
            aliases,
            kind: NamedKind::Fixed(0),
        });
        self.by_name.insert(fullname.clone(), index);
        let kind = match kind.as_str() {
            "record" | "error" => {
                let fields = map
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("record {fullname} has no \"fields\" array"))?;
                let mut out: Vec<Field> = Vec::with_capacity(fields.len());
                for f in fields {
                    let f = f
                        .as_object()
                        .ok_or_else(|| format!("record {fullname}: a field is not an object"))?;
                    let fname = f
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("record {fullname}: a field has no name"))?;
                    if !valid_name(fname) {
                        return Err(format!("record {fullname}: invalid field name {fname:?}"));
                    }
                    if out.iter().any(|o| o.name == fname) {
                        return Err(format!("record {fullname}: field {fname:?} appears twice"));
                    }
                    let fty = f
                        .get("type")
                        .ok_or_else(|| format!("record {fullname}: field {fname} has no type"))?;
                    let ty = self.parse_type(fty, inner_ns.as_deref())?;
                    let default = f.get("default").cloned();
                    if let Some(d) = &default {
                        if !self.default_fits(&ty, d) {
                            return Err(format!(
                                "record {fullname}: the default {d} of field {fname:?} does not match its type"
                            ));
                        }
                    }
                    let aliases = match f.get("aliases") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    };
                    out.push(Field {
                        name: fname.to_string(),
                        aliases,
                        ty,
                        default,
                    });
                }
                NamedKind::Record(out)
            }
            "enum" => {
                let symbols: Vec<String> = map
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("enum {fullname} has no \"symbols\" array"))?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .filter(|s| valid_name(s))
                            .map(str::to_string)
                            .ok_or_else(|| format!("enum {fullname}: invalid symbol {s}"))
                    })
                    .collect::<Result<_, _>>()?;
                let unique: HashSet<_> = symbols.iter().collect();
                if unique.len() != symbols.len() {
                    return Err(format!("enum {fullname} has a symbol twice"));
                }
                let default = match map.get("default") {
                    None => None,
                    Some(Value::String(d)) if symbols.contains(d) => Some(d.clone()),
                    Some(d) => return Err(format!("enum {fullname}: default {d} is not a symbol")),
                };
                NamedKind::Enum { symbols, default }
            }
            _ => {
                let size = map
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("fixed {fullname} has no valid \"size\""))?;
                NamedKind::Fixed(size)
            }
        };
        self.named[index].kind = kind;
        Ok(Type::Named(index))
    }

    /// Whether a default value is valid for a type (a union's default matches its first branch).
    fn default_fits(&self, ty: &Type, d: &Value) -> bool {
        match (ty, d) {
            (Type::Null, Value::Null) => true,
            (Type::Boolean, Value::Bool(_)) => true,
            (Type::Int | Type::Long, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Type::Float | Type::Double, Value::Number(_)) => true,
            (Type::Bytes | Type::String, Value::String(_)) => true,
            (Type::Array(items), Value::Array(a)) => a.iter().all(|v| self.default_fits(items, v)),
            (Type::Map(values), Value::Object(m)) => {
                m.values().all(|v| self.default_fits(values, v))
            }
            (Type::Union(branches), d) => branches.first().is_some_and(|b| self.default_fits(b, d)),
            (Type::Named(i), d) => match (&self.named[*i].kind, d) {
                (NamedKind::Record(fields), Value::Object(m)) => {
                    fields.iter().all(|f| match m.get(&f.name) {
                        Some(v) => self.default_fits(&f.ty, v),
                        None => f.default.is_some(),
                    })
                }
                (NamedKind::Enum { symbols, .. }, Value::String(s)) => symbols.contains(s),
                (NamedKind::Fixed(_), Value::String(_)) => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// The text stored and compared for identity: the schema's JSON without insignificant
/// whitespace and with object keys sorted, so two spellings of one schema get one id.
pub fn canonical(text: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(serde_json::to_string(&sorted(value)).expect("JSON values serialize"))
}

/// A JSON value with its object keys sorted (whatever map type serde_json was built with).
pub fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, self::sorted(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// One reason a reader cannot read a writer's data, in Confluent's verbose-message terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Incompatibility {
    /// Avro's `SchemaIncompatibilityType` name (`READER_FIELD_MISSING_DEFAULT_VALUE`, …).
    pub kind: &'static str,
    /// Where, as a JSON-pointer-like path in the reader schema (`/fields/1/type`).
    pub path: String,
    /// What is wrong.
    pub description: String,
}

struct Resolver<'a> {
    writer: &'a Parsed,
    reader: &'a Parsed,
    /// Named pairs already being compared (recursive types).
    seen: HashSet<(usize, usize)>,
    out: Vec<Incompatibility>,
    /// How the reader and the writer are called in messages ("new"/"old" depend on the
    /// direction of the check).
    reader_is: &'a str,
    writer_is: &'a str,
}

fn type_name(p: &Parsed, t: &Type) -> String {
    match t {
        Type::Null => "null".into(),
        Type::Boolean => "boolean".into(),
        Type::Int => "int".into(),
        Type::Long => "long".into(),
        Type::Float => "float".into(),
        Type::Double => "double".into(),
        Type::Bytes => "bytes".into(),
        Type::String => "string".into(),
        Type::Array(_) => "array".into(),
        Type::Map(_) => "map".into(),
        Type::Union(_) => "union".into(),
        Type::Named(i) => match p.named[*i].kind {
            NamedKind::Record(_) => format!("record {}", p.named[*i].fullname),
            NamedKind::Enum { .. } => format!("enum {}", p.named[*i].fullname),
            NamedKind::Fixed(_) => format!("fixed {}", p.named[*i].fullname),
        },
    }
}

/// Whether `reader` can read data written with `writer`. Returns every problem found (empty:
/// compatible). `reader_is`/`writer_is` name the two in messages ("new schema", "old schema").
pub fn can_read(
    writer: &Parsed,
    reader: &Parsed,
    writer_is: &str,
    reader_is: &str,
) -> Vec<Incompatibility> {
    let mut r = Resolver {
        writer,
        reader,
        seen: HashSet::new(),
        out: Vec::new(),
        reader_is,
        writer_is,
    };
    r.check(writer.root(), reader.root(), "");
    r.out
}

impl Resolver<'_> {
    fn fail(&mut self, kind: &'static str, path: &str, description: String) {
        self.out.push(Incompatibility {
            kind,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            description,
        });
    }

    /// Whether the pair matches without recording anything (union branch selection).
    fn matches(&mut self, w: &Type, r: &Type) -> bool {
        let saved = self.out.len();
        let seen = self.seen.clone();
        self.check(w, r, "");
        let ok = self.out.len() == saved;
        self.out.truncate(saved);
        self.seen = seen;
        ok
    }

    fn check(&mut self, w: &Type, r: &Type, path: &str) {
        use Type::*;
        match (w, r) {
            // A writer union: each branch the writer may have used must be readable.
            (Union(wb), _) => {
                for (i, b) in wb.iter().enumerate() {
                    if let Union(_) = r {
                        self.check(b, r, path);
                    } else if !self.matches(b, r) {
                        let (wn, rn) = (type_name(self.writer, b), type_name(self.reader, r));
                        self.fail(
                            "MISSING_UNION_BRANCH",
                            path,
                            format!(
                                "The {} has a union whose branch {i} ({wn}) cannot be read as the {}'s {rn}",
                                self.writer_is, self.reader_is
                            ),
                        );
                    }
                }
            }
            // A reader union: the first branch that matches reads the writer's value.
            (_, Union(rb)) => {
                if !rb.iter().any(|b| self.matches(w, b)) {
                    let wn = type_name(self.writer, w);
                    self.fail(
                        "MISSING_UNION_BRANCH",
                        path,
                        format!(
                            "The {}'s type {wn} is missing from the union in the {}",
                            self.writer_is, self.reader_is
                        ),
                    );
                }
            }
            (Null, Null)
            | (Boolean, Boolean)
            | (Int, Int)
            | (Long, Long)
            | (Float, Float)
            | (Double, Double)
            | (Bytes, Bytes)
            | (String, String) => {}
            // Promotions.
            (Int, Long | Float | Double) | (Long, Float | Double) | (Float, Double) => {}
            (String, Bytes) | (Bytes, String) => {}
            (Array(wi), Array(ri)) => self.check(wi, ri, &format!("{path}/items")),
            (Map(wv), Map(rv)) => self.check(wv, rv, &format!("{path}/values")),
            (Named(wi), Named(ri)) => self.named(*wi, *ri, path),
            _ => {
                let (wn, rn) = (type_name(self.writer, w), type_name(self.reader, r));
                self.fail(
                    "TYPE_MISMATCH",
                    path,
                    format!(
                        "The type at path '{}' in the {} ({rn}) does not match the {}'s ({wn})",
                        if path.is_empty() { "/" } else { path },
                        self.reader_is,
                        self.writer_is
                    ),
                );
            }
        }
    }

    fn named(&mut self, wi: usize, ri: usize, path: &str) {
        if !self.seen.insert((wi, ri)) {
            return; // already being compared (a recursive type)
        }
        let (w, r) = (&self.writer.named[wi], &self.reader.named[ri]);
        let name_ok = w.short() == r.short()
            || w.fullname == r.fullname
            || r.aliases
                .iter()
                .any(|a| a == &w.fullname || a.rsplit('.').next() == Some(w.short()));
        if !name_ok {
            self.fail(
                "NAME_MISMATCH",
                &format!("{path}/name"),
                format!(
                    "The name of the {}'s {} does not match the {}'s ({})",
                    self.reader_is, r.fullname, self.writer_is, w.fullname
                ),
            );
            return;
        }
        match (&w.kind, &r.kind) {
            (NamedKind::Fixed(ws), NamedKind::Fixed(rs)) => {
                if ws != rs {
                    self.fail(
                        "FIXED_SIZE_MISMATCH",
                        &format!("{path}/size"),
                        format!(
                            "The size of fixed {} is {rs} in the {} and {ws} in the {}",
                            r.fullname, self.reader_is, self.writer_is
                        ),
                    );
                }
            }
            (
                NamedKind::Enum {
                    symbols: ws,
                    default: _,
                },
                NamedKind::Enum {
                    symbols: rs,
                    default: rd,
                },
            ) => {
                let missing: Vec<&String> = ws.iter().filter(|s| !rs.contains(s)).collect();
                if !missing.is_empty() && rd.is_none() {
                    let list = missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.fail(
                        "MISSING_ENUM_SYMBOLS",
                        &format!("{path}/symbols"),
                        format!(
                            "The {} is missing enum symbols '[{list}]' at path '{path}/symbols' in the {}",
                            self.reader_is, self.writer_is
                        ),
                    );
                }
            }
            (NamedKind::Record(wf), NamedKind::Record(rf)) => {
                let (wf, rf) = (wf.clone(), rf.clone());
                for (i, field) in rf.iter().enumerate() {
                    let fpath = format!("{path}/fields/{i}");
                    // By name, then by the reader field's aliases (the writer's play no part).
                    let found = wf
                        .iter()
                        .find(|f| f.name == field.name)
                        .or_else(|| wf.iter().find(|f| field.aliases.contains(&f.name)));
                    match found {
                        Some(wfield) => self.check(&wfield.ty, &field.ty, &format!("{fpath}/type")),
                        None if field.default.is_some() => {}
                        None => self.fail(
                            "READER_FIELD_MISSING_DEFAULT_VALUE",
                            &fpath,
                            format!(
                                "The field '{}' at path '{fpath}' in the {} has no default value and is missing in the {}",
                                field.name, self.reader_is, self.writer_is
                            ),
                        ),
                    }
                }
            }
            _ => {
                let (wn, rn) = (
                    type_name(self.writer, &Type::Named(wi)),
                    type_name(self.reader, &Type::Named(ri)),
                );
                self.fail(
                    "TYPE_MISMATCH",
                    path,
                    format!(
                        "The type at path '{path}' in the {} ({rn}) does not match the {}'s ({wn})",
                        self.reader_is, self.writer_is
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Parsed {
        Parsed::parse(s, &[]).unwrap()
    }
    fn backward(old: &str, new: &str) -> Vec<&'static str> {
        can_read(&p(old), &p(new), "old schema", "new schema")
            .into_iter()
            .map(|i| i.kind)
            .collect()
    }
    const V1: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[
        {"name":"id","type":"int"},{"name":"name","type":"string"}]}"#;

    #[test]
    fn the_cases_confluent_documents() {
        // Added field without default: the new reader cannot fill it from old data.
        let added = r#"{"type":"record","name":"User","namespace":"t","fields":[
            {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;
        assert_eq!(backward(V1, added), ["READER_FIELD_MISSING_DEFAULT_VALUE"]);
        // With a default it can.
        let added_default = r#"{"type":"record","name":"User","namespace":"t","fields":[
            {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
        assert!(backward(V1, added_default).is_empty());
        // A removed field is skipped by the reader: backward compatible, not forward.
        let removed = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"id","type":"int"}]}"#;
        assert!(backward(V1, removed).is_empty());
        assert_eq!(
            backward(removed, V1),
            ["READER_FIELD_MISSING_DEFAULT_VALUE"]
        );
        // int → long promotion, not the other way.
        let long = r#"{"type":"record","name":"User","namespace":"t","fields":[
            {"name":"id","type":"long"},{"name":"name","type":"string"}]}"#;
        assert!(backward(V1, long).is_empty());
        assert_eq!(backward(long, V1), ["TYPE_MISMATCH"]);
        // Enum symbol added: a new reader reads old data; an old reader cannot read the new
        // symbol unless it has a default.
        let e1 = r#"{"type":"enum","name":"C","symbols":["A","B"]}"#;
        let e2 = r#"{"type":"enum","name":"C","symbols":["A","B","D"]}"#;
        let e1d = r#"{"type":"enum","name":"C","symbols":["A","B"],"default":"A"}"#;
        assert!(backward(e1, e2).is_empty());
        assert_eq!(backward(e2, e1), ["MISSING_ENUM_SYMBOLS"]);
        assert!(backward(e2, e1d).is_empty());
        // Unions: widening a type to a union is readable, narrowing a union is not.
        assert!(backward(r#""string""#, r#"["null","string"]"#).is_empty());
        assert_eq!(
            backward(r#"["null","string"]"#, r#""string""#),
            ["MISSING_UNION_BRANCH"]
        );
        assert!(backward(r#"["int","string"]"#, r#"["string","long"]"#).is_empty());
        assert_eq!(
            backward(r#"["int","boolean"]"#, r#"["string","long"]"#),
            ["MISSING_UNION_BRANCH"]
        );
    }

    #[test]
    fn named_types_by_reference_or_inline_are_the_same_type() {
        // apache-avro 0.21 reports this pair incompatible (Ref vs inline definition).
        let w = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
            {"name":"b","type":"P"}]}"#;
        let r = r#"{"type":"record","name":"R","fields":[
            {"name":"b","type":{"type":"record","name":"P","fields":[{"name":"x","type":"long"}]}}]}"#;
        assert!(backward(w, r).is_empty());
        // Recursive types terminate.
        let list = r#"{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","L"]}]}"#;
        assert!(backward(list, list).is_empty());
    }

    #[test]
    fn invalid_schemas_are_refused() {
        for bad in [
            r#"{"type":"record","name":"R"}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#,
            r#"["int","int"]"#,
            r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
            r#"{"type":"recrd","name":"R","fields":[]}"#,
            "not json",
        ] {
            assert!(Parsed::parse(bad, &[]).is_err(), "{bad}");
        }
        // A referenced type is known by name.
        let dep = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"}]}"#;
        let main = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"home","type":"Address"}]}"#;
        assert!(Parsed::parse(main, &[]).is_err());
        let p = Parsed::parse(main, &[dep.to_string()]).unwrap();
        assert_eq!(p.root_name(), Some("t.User"));
    }

    #[test]
    fn canonical_text_ignores_spacing_and_key_order() {
        assert_eq!(
            canonical(r#"{ "type": "record", "name":"R", "fields": [] }"#).unwrap(),
            canonical(r#"{"name":"R","fields":[],"type":"record"}"#).unwrap()
        );
    }
}
