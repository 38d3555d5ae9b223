//! A client for Confluent-compatible schema registries (the built-in one and others).
//!
//! - Subjects from topics and record names: [`SubjectNameStrategy`].
//! - Ids cached per (subject, schema) and schemas per id: a producer registers once, a
//!   consumer fetches each writer schema once.
//! - Basic auth (also from `https://user:password@host` URLs, moved out of the URL) or a bearer
//!   token. Credentials are [`SecretString`]s, sent as sensitive headers, and never part of an
//!   error message, a log line or `Debug` output.
//! - Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried with the
//!   core's [`Backoff`] (full jitter, attempt and time budgets, `Retry-After` as a floor), as
//!   the HTTP source does.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tributary_core::error::{Classify, ErrorClass};
use tributary_core::retry::{Backoff, RetryPolicy};

use crate::registry::{CompatibilityReport, NewSchema, VersionSpec};
use crate::schema;
use crate::server::CONTENT_TYPE as REGISTRY_JSON;
use crate::types::{Compatibility, Reference, SchemaType};

/// A failed registry call. URLs in it carry no credentials.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry answered with an error.
    #[error("schema registry {url}: HTTP {status}, error {code}: {message}")]
    Api {
        /// The request (no credentials, no query).
        url: String,
        /// HTTP status.
        status: u16,
        /// Confluent error code (40401, 409, …; the status when the body has none).
        code: u32,
        /// The registry's message.
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// No connection, or it broke.
    #[error("schema registry {url}: {message}")]
    Network {
        /// The request.
        url: String,
        /// What happened.
        message: String,
    },
    /// The response is not what the API returns.
    #[error("schema registry {url}: unexpected response: {message}")]
    Decode {
        /// The request.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The client configuration is wrong.
    #[error("schema registry client: {0}")]
    Config(String),
}

impl ClientError {
    /// The Confluent error code, for API errors.
    pub fn code(&self) -> Option<u32> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl Classify for ClientError {
    fn class(&self) -> ErrorClass {
        match self {
            ClientError::Network { .. } => ErrorClass::Transient,
            ClientError::Api { status, .. } => match *status {
                408 | 429 | 500..=599 => ErrorClass::Transient,
                // The schema itself is refused: the records written with it are at fault.
                409 | 422 => ErrorClass::Record,
                _ => ErrorClass::Fatal,
            },
            ClientError::Decode { .. } | ClientError::Config(_) => ErrorClass::Fatal,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// How the client authenticates.
#[derive(Clone, Default)]
pub enum ClientAuth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: SecretString,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::None => f.write_str("None"),
            ClientAuth::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            ClientAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct RegistryClientConfig {
    /// The registry's base URL (`http://127.0.0.1:8081`); `user:password@` is taken as basic
    /// auth.
    pub url: String,
    /// Credentials.
    pub auth: ClientAuth,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl RegistryClientConfig {
    /// Defaults for `url`: no auth, 30 s per request, the core's default retry policy.
    pub fn new(url: impl Into<String>) -> Self {
        RegistryClientConfig {
            url: url.into(),
            auth: ClientAuth::None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// How a topic's records map to a subject (Confluent's `*SubjectNameStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubjectNameStrategy {
    /// `<topic>-key` / `<topic>-value`: one schema lineage per topic.
    #[default]
    TopicName,
    /// The record's full name: one lineage per record type, across topics.
    RecordName,
    /// `<topic>-<record full name>`: several record types per topic.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject for a topic's keys or values with schema `schema` (whose record name the
    /// record strategies need: Avro record full name, JSON Schema `title`, first Protobuf
    /// message).
    pub fn subject(
        self,
        topic: &str,
        is_key: bool,
        schema: &NewSchema,
    ) -> Result<String, ClientError> {
        let record = || -> Result<String, ClientError> {
            let parsed = schema::parse(schema.schema_type, &schema.schema, &[])
                .map_err(|e| ClientError::Config(format!("cannot read the record name: {e}")))?;
            schema::record_name(&parsed).ok_or_else(|| {
                ClientError::Config(
                    "the record name strategies need a named schema (an Avro record, a JSON Schema title, a Protobuf message)"
                        .into(),
                )
            })
        };
        Ok(match self {
            SubjectNameStrategy::TopicName => {
                format!("{topic}-{}", if is_key { "key" } else { "value" })
            }
            SubjectNameStrategy::RecordName => record()?,
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{}", record()?),
        })
    }
}

/// A version of a subject, as the registry returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredSchema {
    /// Subject.
    pub subject: String,
    /// Version within the subject.
    pub version: u32,
    /// Global id.
    pub id: u32,
    /// The schema.
    pub schema: NewSchema,
}

type CacheKey = (String, SchemaType, String, Vec<Reference>);

#[derive(Default)]
struct Cache {
    ids: HashMap<CacheKey, u32>,
    schemas: HashMap<u32, NewSchema>,
}

/// A schema registry client. Cheap to share (`Arc`) between tasks.
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    auth: Option<HeaderValue>,
    retry: RetryPolicy,
    cache: Mutex<Cache>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish()
    }
}

fn secret_header(value: String) -> Result<HeaderValue, ClientError> {
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| ClientError::Config("credentials are not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn basic(user: &str, password: &str) -> Result<HeaderValue, ClientError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    secret_header(format!("Basic {encoded}"))
}

impl RegistryClient {
    /// Builds a client.
    pub fn new(config: RegistryClientConfig) -> Result<Self, ClientError> {
        let mut base = Url::parse(config.url.trim()).map_err(|e| {
            // The URL may hold a password: say what is wrong, not what it is.
            ClientError::Config(format!("the registry URL is not valid: {e}"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Config(
                "the registry URL must be http:// or https://".into(),
            ));
        }
        let mut auth = match &config.auth {
            ClientAuth::None => None,
            ClientAuth::Basic { user, password } => Some(basic(user, password.expose_secret())?),
            ClientAuth::Bearer(token) => {
                Some(secret_header(format!("Bearer {}", token.expose_secret()))?)
            }
        };
        if !base.username().is_empty() || base.password().is_some() {
            let user = percent_decode(base.username());
            let password = percent_decode(base.password().unwrap_or(""));
            if auth.is_none() {
                auth = Some(basic(&user, &password)?);
            }
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            http,
            base,
            auth,
            retry: config.retry,
            cache: Mutex::new(Cache::default()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have paths");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// One request with retries; the JSON body of the success.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = self.url(segments, query);
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            u.to_string()
        };
        let mut backoff = Backoff::new(self.retry.clone());
        loop {
            let error = match self.once(method.clone(), &url, &shown, body).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match backoff.after_failure(error) {
                Ok((error, delay)) => {
                    tracing::warn!(attempt = backoff.attempts(), ?delay, "{error}; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        url: &Url,
        shown: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .request(method, url.clone())
            .header(ACCEPT, REGISTRY_JSON);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, REGISTRY_JSON)
                .body(body.to_string());
        }
        let network = |e: reqwest::Error| ClientError::Network {
            url: shown.to_string(),
            // reqwest's message names the URL, which has no credentials (they are headers).
            message: if e.is_timeout() {
                "no response before the timeout".to_string()
            } else {
                chain(&e.without_url())
            },
        };
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(network)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url: shown.to_string(),
                message: e.to_string(),
            });
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let code = parsed
            .as_ref()
            .and_then(|v| v.get("error_code"))
            .and_then(Value::as_u64)
            .map_or(status.as_u16() as u32, |c| c as u32);
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
            });
        Err(ClientError::Api {
            url: shown.to_string(),
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    fn schema_json(s: &NewSchema) -> Value {
        let mut body = json!({"schema": s.schema});
        if !s.schema_type.is_avro() {
            body["schemaType"] = json!(s.schema_type.as_str());
        }
        if !s.references.is_empty() {
            body["references"] = json!(s.references);
        }
        body
    }

    fn key(subject: &str, s: &NewSchema) -> CacheKey {
        let text = schema::canonical(s.schema_type, &s.schema).unwrap_or_else(|_| s.schema.clone());
        (
            subject.to_string(),
            s.schema_type,
            text,
            s.references.clone(),
        )
    }

    fn decode_schema(v: &Value, url: &str) -> Result<NewSchema, ClientError> {
        let bad = |m: &str| ClientError::Decode {
            url: url.to_string(),
            message: m.to_string(),
        };
        let schema = v
            .get("schema")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"schema\""))?
            .to_string();
        let schema_type = match v.get("schemaType").and_then(Value::as_str) {
            None => SchemaType::Avro,
            Some(t) => t.parse().map_err(|e: String| bad(&e))?,
        };
        let references = match v.get("references") {
            None | Some(Value::Null) => Vec::new(),
            Some(r) => serde_json::from_value(r.clone()).map_err(|e| bad(&e.to_string()))?,
        };
        Ok(NewSchema {
            schema,
            schema_type,
            references,
        })
    }

    fn decode_registered(v: &Value, url: &str) -> Result<RegisteredSchema, ClientError> {
        let bad = |m: &str| ClientError::Decode {
            url: url.to_string(),
            message: m.to_string(),
        };
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|n| n as u32)
                .ok_or_else(|| bad(&format!("no \"{k}\"")))
        };
        Ok(RegisteredSchema {
            subject: v
                .get("subject")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no \"subject\""))?
                .to_string(),
            version: num("version")?,
            id: num("id")?,
            schema: Self::decode_schema(v, url)?,
        })
    }

    /// Registers `schema` under `subject` (or finds it there); returns its global id. Cached:
    /// the registry is asked once per (subject, schema).
    pub async fn register(&self, subject: &str, schema: &NewSchema) -> Result<u32, ClientError> {
        let key = Self::key(subject, schema);
        if let Some(id) = self.cache().ids.get(&key) {
            return Ok(*id);
        }
        let v = self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                &[],
                Some(&Self::schema_json(schema)),
            )
            .await?;
        let id = v
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::Decode {
                url: subject.to_string(),
                message: "no \"id\" in the register response".into(),
            })? as u32;
        let mut cache = self.cache();
        cache.ids.insert(key, id);
        cache.schemas.entry(id).or_insert_with(|| schema.clone());
        Ok(id)
    }

    /// The version of `subject` holding `schema` (40401 / 40403 when there is none).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &NewSchema,
    ) -> Result<RegisteredSchema, ClientError> {
        let v = self
            .call(
                Method::POST,
                &["subjects", subject],
                &[],
                Some(&Self::schema_json(schema)),
            )
            .await?;
        let r = Self::decode_registered(&v, subject)?;
        self.cache().ids.insert(Self::key(subject, schema), r.id);
        Ok(r)
    }

    /// The schema with a global id (cached: ids never change meaning).
    pub async fn schema_by_id(&self, id: u32) -> Result<NewSchema, ClientError> {
        if let Some(s) = self.cache().schemas.get(&id) {
            return Ok(s.clone());
        }
        let v = self
            .call(Method::GET, &["schemas", "ids", &id.to_string()], &[], None)
            .await?;
        let s = Self::decode_schema(&v, "schemas/ids")?;
        self.cache().schemas.insert(id, s.clone());
        Ok(s)
    }

    /// One version of a subject (`VersionSpec::Latest` for the newest).
    pub async fn version(
        &self,
        subject: &str,
        version: VersionSpec,
    ) -> Result<RegisteredSchema, ClientError> {
        let v = match version {
            VersionSpec::Latest => "latest".to_string(),
            VersionSpec::Number(n) => n.to_string(),
        };
        let body = self
            .call(
                Method::GET,
                &["subjects", subject, "versions", &v],
                &[],
                None,
            )
            .await?;
        Self::decode_registered(&body, subject)
    }

    /// Every subject (with `deleted`, soft-deleted ones too).
    pub async fn subjects(&self, deleted: bool) -> Result<Vec<String>, ClientError> {
        let q: &[(&str, &str)] = if deleted { &[("deleted", "true")] } else { &[] };
        let v = self.call(Method::GET, &["subjects"], q, None).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode {
            url: "subjects".into(),
            message: e.to_string(),
        })
    }

    /// A subject's versions.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, ClientError> {
        let v = self
            .call(Method::GET, &["subjects", subject, "versions"], &[], None)
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode {
            url: subject.into(),
            message: e.to_string(),
        })
    }

    /// Deletes a subject (soft, or `permanent` after a soft delete); the versions deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, ClientError> {
        let q: &[(&str, &str)] = if permanent {
            &[("permanent", "true")]
        } else {
            &[]
        };
        let v = self
            .call(Method::DELETE, &["subjects", subject], q, None)
            .await?;
        self.cache().ids.retain(|k, _| k.0 != subject);
        serde_json::from_value(v).map_err(|e| ClientError::Decode {
            url: subject.into(),
            message: e.to_string(),
        })
    }

    /// The level that applies to a subject (its own, else the global one), or the global
    /// level with `None`.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, ClientError> {
        let v = match subject {
            Some(s) => {
                self.call(
                    Method::GET,
                    &["config", s],
                    &[("defaultToGlobal", "true")],
                    None,
                )
                .await?
            }
            None => self.call(Method::GET, &["config"], &[], None).await?,
        };
        v.get("compatibilityLevel")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Decode {
                url: "config".into(),
                message: "no valid \"compatibilityLevel\"".into(),
            })
    }

    /// Sets a subject's level, or the global one with `None`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), ClientError> {
        let body = json!({"compatibility": level.as_str()});
        match subject {
            Some(s) => {
                self.call(Method::PUT, &["config", s], &[], Some(&body))
                    .await?
            }
            None => {
                self.call(Method::PUT, &["config"], &[], Some(&body))
                    .await?
            }
        };
        Ok(())
    }

    /// Tests `schema` against a version of `subject` (or, with `None`, against the versions
    /// its level covers) with verbose messages.
    pub async fn test_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        schema: &NewSchema,
    ) -> Result<CompatibilityReport, ClientError> {
        let v;
        let mut segments = vec!["compatibility", "subjects", subject, "versions"];
        if let Some(version) = version {
            v = match version {
                VersionSpec::Latest => "latest".to_string(),
                VersionSpec::Number(n) => n.to_string(),
            };
            segments.push(&v);
        }
        let body = self
            .call(
                Method::POST,
                &segments,
                &[("verbose", "true")],
                Some(&Self::schema_json(schema)),
            )
            .await?;
        Ok(CompatibilityReport {
            is_compatible: body
                .get("is_compatible")
                .and_then(Value::as_bool)
                .ok_or_else(|| ClientError::Decode {
                    url: subject.into(),
                    message: "no \"is_compatible\"".into(),
                })?,
            messages: body
                .get("messages")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
        })
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is only the outermost).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `%XX` escapes decoded (URL user info, JSON pointers in `$ref`); invalid ones kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_move_to_a_header_and_never_show() {
        let c = RegistryClient::new(RegistryClientConfig::new(
            "http://alice:s%40cret@127.0.0.1:1/base",
        ))
        .unwrap();
        assert_eq!(c.base.as_str(), "http://127.0.0.1:1/base/");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s@cret")
        );
        assert_eq!(c.auth.as_ref().unwrap().to_str().unwrap(), expected);
        assert!(c.auth.as_ref().unwrap().is_sensitive());
        assert!(!format!("{c:?}").contains("cret"));
        assert_eq!(
            c.url(&["subjects", "a/b", "versions"], &[]).as_str(),
            "http://127.0.0.1:1/base/subjects/a%2Fb/versions"
        );
    }

    #[test]
    fn subject_name_strategies() {
        let s = NewSchema {
            schema: r#"{"type":"record","name":"Order","namespace":"shop","fields":[]}"#.into(),
            ..NewSchema::default()
        };
        let t = |st: SubjectNameStrategy, key| st.subject("orders", key, &s).unwrap();
        assert_eq!(t(SubjectNameStrategy::TopicName, false), "orders-value");
        assert_eq!(t(SubjectNameStrategy::TopicName, true), "orders-key");
        assert_eq!(t(SubjectNameStrategy::RecordName, false), "shop.Order");
        assert_eq!(
            t(SubjectNameStrategy::TopicRecordName, false),
            "orders-shop.Order"
        );
        let unnamed = NewSchema {
            schema: r#""string""#.into(),
            ..NewSchema::default()
        };
        assert!(SubjectNameStrategy::RecordName
            .subject("orders", false, &unnamed)
            .is_err());
    }
}
