//! Schema-registry formats (`format: avro`, `format: json_schema`): what the sink and the
//! source share with the registry.
//!
//! - **Sink** (`SinkSchemas`): per topic and Arrow schema of the batches, the value schema
//!   (derived from the Arrow schema with [`tributary_formats::avro::schema::from_arrow`] or
//!   [`json_schema_of`], or read from `registry.schema`) is registered under the subject the
//!   strategy names, once: the id is cached. A pipeline whose schema changes (a new nullable
//!   column, a widened type) registers the new schema, which becomes a new version when the
//!   subject's compatibility level allows it; when the registry refuses it (HTTP 409), the run
//!   stops with the registry's verbose reasons and what changed in the stream.
//! - **Source** (`SourceSchemas`): the writer schema of each id met, fetched once and
//!   parsed once. An id the registry does not know, or a schema of another type, is a record
//!   error (dead letter), not a failure of the run.
//!
//! The Avro codec is `tributary_formats::avro` (see there for why not `arrow-avro`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Schema, SchemaRef};
use serde_json::{json, Value};
use tributary_core::config::ConfigError;
use tributary_core::error::ConnectorError;
use tributary_formats::avro::{self, Encoder, Writer};
use tributary_registry::protobuf::File as ProtoFile;
use tributary_registry::validate::Validator;
use tributary_registry::{
    ClientAuth, ClientError, NewSchema, RegistryClient, RegistryClientConfig, SchemaType,
    SubjectNameStrategy,
};

use crate::config::{RegistryConfig, SubjectStrategy, ValueFormat};
use crate::protobuf::{ProtoDecoder, ProtoEncoder};

/// Builds the registry client of a connector (`field`: `sink.registry` or `source.registry`).
pub(crate) fn client(
    config: &RegistryConfig,
    field: &str,
) -> Result<Arc<RegistryClient>, ConfigError> {
    let url = config.url.resolve(&format!("{field}.url"))?;
    let mut c = RegistryClientConfig::new(url);
    c.timeout = config.timeout;
    c.auth = match (&config.user, &config.password, &config.token) {
        (Some(u), Some(p), _) => ClientAuth::Basic {
            user: u.resolve(&format!("{field}.user"))?,
            password: p.resolve_secret(&format!("{field}.password"))?,
        },
        (_, _, Some(t)) => ClientAuth::Bearer(t.resolve_secret(&format!("{field}.token"))?),
        _ => ClientAuth::None,
    };
    RegistryClient::new(c)
        .map(Arc::new)
        .map_err(|e| ConfigError::Value {
            field: format!("{field}.url"),
            message: e.to_string(),
        })
}

/// A name Avro accepts: characters other than letters, digits, `_` and the namespace dots
/// become `_`; a leading digit gets a `_` before it.
pub fn avro_name(text: &str) -> String {
    // Each dotted part by the same rules as a Protobuf identifier.
    let parts: Vec<String> = text
        .split('.')
        .filter(|p| !p.is_empty())
        .map(crate::protobuf::proto_name)
        .collect();
    if parts.is_empty() {
        "Record".into()
    } else {
        parts.join(".")
    }
}

/// The JSON Schema of rows of `schema` as the JSON encoding writes them (`encode_rows`):
/// a closed object (`additionalProperties: false`, so adding an optional property later is
/// a compatible change), non-nullable columns required, nullable ones also accepting `null`.
pub fn json_schema_of(schema: &Schema, title: &str) -> Value {
    let mut s = object_schema(schema.fields());
    s["$schema"] = json!("http://json-schema.org/draft-07/schema#");
    s["title"] = json!(title);
    s
}

fn object_schema(fields: &arrow_schema::Fields) -> Value {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for f in fields {
        let t = json_type(f.data_type());
        let t = if f.is_nullable() {
            json!({"oneOf": [{"type": "null"}, t]})
        } else {
            required.push(json!(f.name()));
            t
        };
        properties.insert(f.name().clone(), t);
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn json_type(dt: &DataType) -> Value {
    use DataType::*;
    match dt {
        Null => json!({"type": "null"}),
        Boolean => json!({"type": "boolean"}),
        d if d.is_integer() => json!({"type": "integer"}),
        d if d.is_floating() => json!({"type": "number"}),
        Utf8 | LargeUtf8 | Utf8View => json!({"type": "string"}),
        Timestamp(..) => json!({"type": "string", "format": "date-time"}),
        Date32 | Date64 => json!({"type": "string", "format": "date"}),
        Time32(_) | Time64(_) => json!({"type": "string", "format": "time"}),
        Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => {
            json!({"type": ["number", "string"]})
        }
        List(i) | LargeList(i) | FixedSizeList(i, _) => {
            let t = json_type(i.data_type());
            let t = if i.is_nullable() {
                json!({"oneOf": [{"type": "null"}, t]})
            } else {
                t
            };
            json!({"type": "array", "items": t})
        }
        Struct(fields) => object_schema(fields),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) => {
                json!({"type": "object", "additionalProperties": json_type(kv[1].data_type())})
            }
            _ => json!({"type": "object"}),
        },
        Dictionary(_, v) => json_type(v),
        // Binary and the rest: whatever the JSON encoding writes (hex text for binary).
        _ => json!({}),
    }
}

/// A value schema registered for a topic: its id and, for Avro and Protobuf, the encoder.
pub(crate) struct Registered {
    pub id: u32,
    pub encoder: Option<Encoder>,
    pub proto: Option<ProtoEncoder>,
    /// JSON Schema: each row is checked against the registered schema before it is written.
    pub validator: Option<Validator>,
}

/// What `registry.schema` holds, parsed.
#[derive(Clone)]
enum Configured {
    Avro(Encoder),
    Json,
    Protobuf(Arc<ProtoFile>),
}

/// The sink's registered value schemas.
pub(crate) struct SinkSchemas {
    client: Arc<RegistryClient>,
    format: ValueFormat,
    strategy: SubjectNameStrategy,
    record_name: Option<String>,
    /// `registry.schema`: the text, parsed.
    configured: Option<(String, Configured)>,
    registered: HashMap<(String, SchemaRef), Arc<Registered>>,
    /// Per topic: the Arrow schema last registered (to say what changed when one is refused).
    last: HashMap<String, SchemaRef>,
}

impl SinkSchemas {
    pub fn new(format: ValueFormat, config: &RegistryConfig) -> Result<Self, ConfigError> {
        let client = client(config, "sink.registry")?;
        let configured = match &config.schema {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Value {
                    field: "sink.registry.schema".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                let bad = |message: String| ConfigError::Value {
                    field: "sink.registry.schema".into(),
                    message: format!("{}: {message}", path.display()),
                };
                let parsed = match format {
                    ValueFormat::Avro => Configured::Avro(
                        avro::schema::parse(&text)
                            .and_then(Encoder::new)
                            .map_err(bad)?,
                    ),
                    ValueFormat::Protobuf => {
                        Configured::Protobuf(Arc::new(ProtoFile::parse(&text, &[]).map_err(bad)?))
                    }
                    _ => {
                        Validator::new(&text).map_err(bad)?;
                        Configured::Json
                    }
                };
                Some((text, parsed))
            }
        };
        Ok(SinkSchemas {
            client,
            format,
            strategy: match config.subject_strategy {
                SubjectStrategy::TopicName => SubjectNameStrategy::TopicName,
                SubjectStrategy::RecordName => SubjectNameStrategy::RecordName,
                SubjectStrategy::TopicRecordName => SubjectNameStrategy::TopicRecordName,
            },
            record_name: config.record_name.clone(),
            configured,
            registered: HashMap::new(),
            last: HashMap::new(),
        })
    }

    /// The registered schema of rows of `schema` in `topic` (after [`SinkSchemas::ensure`]).
    pub fn get(&self, topic: &str, schema: &SchemaRef) -> Option<&Arc<Registered>> {
        self.registered.get(&(topic.to_string(), schema.clone()))
    }

    /// Registers (or finds) the value schema of rows of `schema` written to `topic`.
    pub async fn ensure(
        &mut self,
        topic: &str,
        stream: &str,
        schema: &SchemaRef,
    ) -> Result<(), ConnectorError> {
        let key = (topic.to_string(), schema.clone());
        if self.registered.contains_key(&key) {
            return Ok(());
        }
        let name = self
            .record_name
            .clone()
            .unwrap_or_else(|| avro_name(if topic.is_empty() { stream } else { topic }));
        let fail =
            |m: String| ConnectorError::fatal(format!("stream {stream}, topic {topic}: {m}"));
        let misfit = |m: String| {
            fail(format!("the rows do not fit registry.schema: {m}"))
                .with_hint("rename or cast the columns, or change the schema file")
        };
        let mut proto = None;
        let (text, encoder, schema_type) = match (&self.configured, self.format) {
            (Some((text, Configured::Avro(e))), _) => {
                e.check(schema).map_err(misfit)?;
                (text.clone(), Some(e.clone()), SchemaType::Avro)
            }
            (Some((text, Configured::Protobuf(file))), _) => {
                let message = self.record_name.as_deref();
                proto = Some(ProtoEncoder::new(file, message, schema).map_err(misfit)?);
                (text.clone(), None, SchemaType::Protobuf)
            }
            (Some((text, Configured::Json)), _) => (text.clone(), None, SchemaType::Json),
            (None, ValueFormat::Protobuf) => {
                let text = crate::protobuf::proto_of(schema, &name).map_err(|m| {
                    fail(format!("cannot derive a Protobuf schema: {m}")).with_hint(
                        "set registry.record_name, or give the sink a .proto file (registry.schema)",
                    )
                })?;
                let file = ProtoFile::parse(&text, &[])
                    .map_err(|m| fail(format!("the derived .proto does not parse: {m}\n{text}")))?;
                proto = Some(
                    ProtoEncoder::new(&file, None, schema)
                        .map_err(|m| fail(format!("the derived .proto does not fit: {m}")))?,
                );
                (text, None, SchemaType::Protobuf)
            }
            (None, ValueFormat::Avro) => {
                let v = avro::schema::from_arrow(schema, &name).map_err(|m| {
                    fail(format!("cannot derive an Avro schema: {m}"))
                        .with_hint("set registry.record_name, or give the sink a schema file (registry.schema)")
                })?;
                let text = v.to_string();
                let encoder = avro::schema::parse(&text)
                    .and_then(Encoder::new)
                    .map_err(|m| fail(format!("the derived Avro schema does not parse: {m}")))?;
                (text, Some(encoder), SchemaType::Avro)
            }
            (None, _) => (
                json_schema_of(schema, &name).to_string(),
                None,
                SchemaType::Json,
            ),
        };
        let new = NewSchema {
            schema: text,
            schema_type,
            references: Vec::new(),
        };
        let subject = self
            .strategy
            .subject(topic, false, &new)
            .map_err(|e| fail(e.to_string()))?;
        let id = match self.client.register(&subject, &new).await {
            Ok(id) => id,
            Err(e) => return Err(self.refused(topic, stream, &subject, schema, e)),
        };
        tracing::info!(topic, subject, id, "value schema registered");
        self.last.insert(topic.to_string(), schema.clone());
        let validator = match new.schema_type {
            SchemaType::Json => Some(
                Validator::new(&new.schema)
                    .map_err(|m| fail(format!("the JSON Schema cannot be checked: {m}")))?,
            ),
            _ => None,
        };
        self.registered.insert(
            key,
            Arc::new(Registered {
                id,
                encoder,
                proto,
                validator,
            }),
        );
        Ok(())
    }

    fn refused(
        &self,
        topic: &str,
        stream: &str,
        subject: &str,
        schema: &SchemaRef,
        e: ClientError,
    ) -> ConnectorError {
        match &e {
            ClientError::Api {
                status: 409,
                message,
                ..
            } => {
                let changed = self
                    .last
                    .get(topic)
                    .map(|old| tributary_core::schema::diff(old, schema))
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" The stream's schema changed: {d}."))
                    .unwrap_or_default();
                ConnectorError::fatal(format!(
                    "stream {stream}: the schema registry refused the new value schema of \
                     subject {subject} (topic {topic}) as incompatible with its earlier \
                     versions.{changed} The registry says: {message}"
                ))
                .with_hint(
                    "make the change compatible under the subject's level (add columns as \
                     nullable: they get the default null; widen rather than narrow types), or \
                     change the level for the subject (PUT /config/<subject>), or write to a \
                     new subject",
                )
            }
            ClientError::Api { status: 422, .. } => ConnectorError::fatal(format!(
                "stream {stream}, subject {subject}: the schema registry refused the schema: {e}"
            )),
            _ => ConnectorError::classified(e)
                .with_hint("is the schema registry running and `registry.url` right?"),
        }
    }
}

fn unknown(id: u32) -> String {
    format!("schema id {id} is unknown to the schema registry")
}

/// The source's writer schemas, by id.
pub(crate) struct SourceSchemas {
    client: Arc<RegistryClient>,
    format: ValueFormat,
    /// Parsed writer schemas (Avro), or why an id cannot be used (unknown, another type).
    writers: HashMap<u32, Result<Arc<Writer>, String>>,
    /// Protobuf decoders by id, or why an id cannot be used.
    protos: HashMap<u32, Result<Arc<ProtoDecoder>, String>>,
    /// JSON Schema validators by id, or why an id cannot be used.
    validators: HashMap<u32, Result<Arc<Validator>, String>>,
}

impl SourceSchemas {
    pub fn new(format: ValueFormat, config: &RegistryConfig) -> Result<Self, ConfigError> {
        Ok(SourceSchemas {
            client: client(config, "source.registry")?,
            format,
            writers: HashMap::new(),
            protos: HashMap::new(),
            validators: HashMap::new(),
        })
    }

    /// The schema of id `id` if it is of type `want`: `Ok(Some(Err(reason)))` when it is of
    /// another type, `Ok(None)` when the registry does not know the id (both record errors;
    /// the callers cache the first only: an id can come to exist, never go); `Err` when the
    /// registry cannot be asked.
    async fn fetch(
        &self,
        id: u32,
        want: SchemaType,
    ) -> Result<Option<Result<tributary_registry::NewSchema, String>>, ConnectorError> {
        let fetched = match self.client.schema_by_id(id).await {
            Ok(s) => s,
            Err(e) if matches!(e.code(), Some(40403)) => return Ok(None),
            Err(e) => {
                return Err(ConnectorError::classified(e)
                    .with_hint("is the schema registry running and `registry.url` right?"))
            }
        };
        Ok(Some(if fetched.schema_type == want {
            Ok(fetched)
        } else {
            Err(format!(
                "schema id {id} is a {} schema, not {} (format: {})",
                fetched.schema_type.as_str(),
                want.as_str(),
                self.format.as_str()
            ))
        }))
    }

    /// The JSON Schema validator of id `id` (see [`SourceSchemas::writer`]).
    pub async fn validator(
        &mut self,
        id: u32,
    ) -> Result<Result<Arc<Validator>, String>, ConnectorError> {
        if let Some(v) = self.validators.get(&id) {
            return Ok(v.clone());
        }
        let Some(fetched) = self.fetch(id, SchemaType::Json).await? else {
            return Ok(Err(unknown(id)));
        };
        let v = fetched.and_then(|s| {
            Validator::new(&s.schema)
                .map(Arc::new)
                .map_err(|e| format!("schema id {id} cannot be checked: {e}"))
        });
        self.validators.insert(id, v.clone());
        Ok(v)
    }

    /// The Protobuf decoder of id `id` (see [`SourceSchemas::writer`]).
    pub async fn proto(
        &mut self,
        id: u32,
    ) -> Result<Result<Arc<ProtoDecoder>, String>, ConnectorError> {
        if let Some(d) = self.protos.get(&id) {
            return Ok(d.clone());
        }
        // Types from referenced files other than the well-known ones are not supported (the
        // parse names the unknown type).
        let Some(fetched) = self.fetch(id, SchemaType::Protobuf).await? else {
            return Ok(Err(unknown(id)));
        };
        let d = fetched.and_then(|s| {
            ProtoFile::parse(&s.schema, &[])
                .map(|f| Arc::new(ProtoDecoder::new(f)))
                .map_err(|e| format!("schema id {id}: {e}"))
        });
        self.protos.insert(id, d.clone());
        Ok(d)
    }

    /// The writer schema of id `id`: `Ok(Err(reason))` when records with it cannot be read
    /// (a record error); `Err` when the registry cannot be asked.
    pub async fn writer(&mut self, id: u32) -> Result<Result<Arc<Writer>, String>, ConnectorError> {
        if let Some(w) = self.writers.get(&id) {
            return Ok(w.clone());
        }
        let want = match self.format {
            ValueFormat::Avro => SchemaType::Avro,
            _ => SchemaType::Json,
        };
        let Some(fetched) = self.fetch(id, want).await? else {
            return Ok(Err(unknown(id)));
        };
        let w = fetched.and_then(|fetched| {
            if want == SchemaType::Avro {
                Writer::parse(&fetched.schema)
                    .map(Arc::new)
                    .map_err(|e| format!("schema id {id}: {e}"))
            } else {
                // JSON Schema: the payload is JSON, decoded under the schema policy; the
                // schema itself only proves the id. An empty record stands for it.
                Ok(Arc::new(Writer {
                    record: avro::schema::Record {
                        name: String::new(),
                        fields: Vec::new(),
                    },
                    arrow: Arc::new(Schema::empty()),
                }))
            }
        });
        self.writers.insert(id, w.clone());
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;

    #[test]
    fn names_are_made_valid_for_avro() {
        assert_eq!(avro_name("orders.v1-eu"), "orders.v1_eu");
        assert_eq!(avro_name("2024-orders"), "_2024_orders");
        assert_eq!(avro_name(""), "Record");
    }

    #[test]
    fn json_schemas_are_closed_and_accept_nulls_where_columns_are_nullable() {
        let s = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]);
        let j = json_schema_of(&s, "Order");
        assert_eq!(j["additionalProperties"], json!(false));
        assert_eq!(j["required"], json!(["id"]));
        assert_eq!(j["properties"]["id"], json!({"type": "integer"}));
        assert_eq!(
            j["properties"]["note"],
            json!({"oneOf": [{"type": "null"}, {"type": "string"}]})
        );
    }
}
