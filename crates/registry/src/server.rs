//! The Confluent REST API over a [`Registry`] (axum).
//!
//! Requests may use `application/vnd.schemaregistry.v1+json`, `application/json` or no
//! content type; responses are `application/vnd.schemaregistry.v1+json`. Errors are
//! `{"error_code": …, "message": …}` with Confluent's codes. Handlers call the registry
//! directly: its work is in memory, plus one small SQLite transaction per change.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::registry::{ApiError, NewSchema, Registry, VersionSpec};
use crate::types::{Compatibility, Reference, SchemaRecord, SchemaType};

/// The content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Credentials the server asks for (none by default: it listens on loopback).
#[derive(Clone, Default)]
pub struct ServerAuth {
    /// HTTP basic: user and password.
    pub basic: Option<(String, SecretString)>,
    /// A bearer token.
    pub bearer: Option<SecretString>,
}

impl ServerAuth {
    fn required(&self) -> bool {
        self.basic.is_some() || self.bearer.is_some()
    }

    fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if let (Some(token), Some(given)) = (&self.bearer, value.strip_prefix("Bearer ")) {
            if constant_eq(token.expose_secret().as_bytes(), given.trim().as_bytes()) {
                return true;
            }
        }
        if let (Some((user, password)), Some(given)) = (&self.basic, value.strip_prefix("Basic ")) {
            let expected = format!("{user}:{}", password.expose_secret());
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(given.trim()) {
                return constant_eq(expected.as_bytes(), &decoded);
            }
        }
        false
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct App {
    registry: Arc<Registry>,
    auth: Arc<ServerAuth>,
    /// Forwards changes to the writer when this process follows a shared store.
    http: reqwest::Client,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        reply(
            status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

type Params = Query<HashMap<String, String>>;

fn flag(q: &Params, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The body of a register, lookup or compatibility request.
#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Reference>>,
}

fn schema_body(body: &Bytes) -> Result<NewSchema, ApiError> {
    let b: SchemaBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::unprocessable(format!(
            "Unrecognized request body (expected {{\"schema\": …}}): {e}"
        ))
    })?;
    let schema_type = match b.schema_type.as_deref() {
        None | Some("") => SchemaType::Avro,
        Some(t) => t.parse().map_err(ApiError::invalid_schema)?,
    };
    Ok(NewSchema {
        schema: b.schema,
        schema_type,
        references: b.references.unwrap_or_default(),
    })
}

/// Type and references in the response forms Confluent uses (type left out for Avro,
/// references only when there are some).
fn describe(r: &SchemaRecord, mut base: serde_json::Map<String, Value>) -> Value {
    if !r.schema_type.is_avro() {
        base.insert("schemaType".into(), json!(r.schema_type.as_str()));
    }
    if !r.references.is_empty() {
        base.insert("references".into(), json!(r.references));
    }
    Value::Object(base)
}

fn version_body(r: &SchemaRecord) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("subject".into(), json!(r.subject));
    m.insert("version".into(), json!(r.version));
    m.insert("id".into(), json!(r.id));
    m.insert("schema".into(), json!(r.schema));
    describe(r, m)
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| ApiError::schema_not_found(id))
}

fn level_body(body: &Bytes) -> Result<Compatibility, ApiError> {
    #[derive(Deserialize)]
    struct ConfigBody {
        compatibility: Option<String>,
        #[serde(rename = "compatibilityLevel")]
        compatibility_level: Option<String>,
    }
    let b: ConfigBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("Unrecognized config body: {e}")))?;
    let level = b
        .compatibility
        .or(b.compatibility_level)
        .ok_or_else(|| ApiError::invalid_compatibility(""))?;
    level
        .parse()
        .map_err(|_| ApiError::invalid_compatibility(&level))
}

async fn root() -> Response {
    ok(json!({}))
}

async fn schema_types() -> Response {
    ok(json!(["JSON", "PROTOBUF", "AVRO"]))
}

async fn mode() -> Response {
    ok(json!({"mode": "READWRITE"}))
}

async fn subjects(State(app): State<App>, q: Params) -> Response {
    let prefix = q.get("subjectPrefix").cloned().unwrap_or_default();
    let list: Vec<String> = app
        .registry
        .subjects(flag(&q, "deleted"))
        .into_iter()
        .filter(|s| s.starts_with(&prefix))
        .collect();
    ok(json!(list))
}

async fn register(
    State(app): State<App>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new = schema_body(&body)?;
    let (id, _) = app.registry.register(&subject, &new)?;
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    State(app): State<App>,
    Path(subject): Path<String>,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new = schema_body(&body)?;
    let r = app.registry.lookup(&subject, &new, flag(&q, "deleted"))?;
    Ok(ok(version_body(&r)))
}

async fn list_versions(
    State(app): State<App>,
    Path(subject): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    Ok(ok(json!(app
        .registry
        .versions(&subject, flag(&q, "deleted"))?)))
}

async fn get_version(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let r = app.registry.version(&subject, spec, flag(&q, "deleted"))?;
    Ok(ok(version_body(&r)))
}

async fn get_version_schema(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let r = app.registry.version(&subject, spec, flag(&q, "deleted"))?;
    Ok(raw_schema(&r))
}

/// `…/schema` endpoints answer with the schema itself (JSON for Avro and JSON Schema, a JSON
/// string for Protobuf text).
fn raw_schema(r: &SchemaRecord) -> Response {
    let body = match r.schema_type {
        SchemaType::Protobuf => json!(r.schema),
        _ => serde_json::from_str(&r.schema).unwrap_or_else(|_| json!(r.schema)),
    };
    ok(body)
}

async fn referenced_by(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    Ok(ok(json!(app.registry.referenced_by(&subject, spec)?)))
}

async fn delete_subject(
    State(app): State<App>,
    Path(subject): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    Ok(ok(json!(app
        .registry
        .delete_subject(&subject, flag(&q, "permanent"))?)))
}

async fn delete_version(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    Ok(ok(json!(app.registry.delete_version(
        &subject,
        spec,
        flag(&q, "permanent")
    )?)))
}

async fn schema_by_id(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = app.registry.schema_by_id(parse_id(&id)?)?;
    let mut m = serde_json::Map::new();
    m.insert("schema".into(), json!(r.schema));
    Ok(ok(describe(&r, m)))
}

async fn schema_by_id_raw(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(raw_schema(&app.registry.schema_by_id(parse_id(&id)?)?))
}

async fn id_subjects(
    State(app): State<App>,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let mut subjects: Vec<String> = app
        .registry
        .id_versions(parse_id(&id)?, flag(&q, "deleted"))?
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| q.get("subject").is_none_or(|want| want == s))
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

async fn id_versions(
    State(app): State<App>,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let list: Vec<Value> = app
        .registry
        .id_versions(parse_id(&id)?, flag(&q, "deleted"))?
        .into_iter()
        .filter(|(s, _)| q.get("subject").is_none_or(|want| want == s))
        .map(|(s, v)| json!({"subject": s, "version": v}))
        .collect();
    Ok(ok(json!(list)))
}

async fn get_global_config(State(app): State<App>) -> Response {
    ok(json!({"compatibilityLevel": app.registry.global_compatibility().as_str()}))
}

async fn put_global_config(State(app): State<App>, body: Bytes) -> Result<Response, ApiError> {
    let level = level_body(&body)?;
    app.registry.set_global_compatibility(Some(level))?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_global_config(State(app): State<App>) -> Result<Response, ApiError> {
    let old = app.registry.set_global_compatibility(None)?;
    Ok(ok(json!({"compatibilityLevel": old.as_str()})))
}

async fn get_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    match app.registry.subject_compatibility(&subject) {
        Some(level) => Ok(ok(json!({"compatibilityLevel": level.as_str()}))),
        None if flag(&q, "defaultToGlobal") => Ok(ok(json!({
            "compatibilityLevel": app.registry.global_compatibility().as_str()
        }))),
        None => Err(ApiError {
            status: 404,
            code: 40408,
            message: format!(
                "Subject '{subject}' does not have subject-level compatibility configured"
            ),
        }),
    }
}

async fn put_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let level = level_body(&body)?;
    app.registry
        .set_subject_compatibility(&subject, Some(level))?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(
    State(app): State<App>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    match app.registry.set_subject_compatibility(&subject, None)? {
        Some(old) => Ok(ok(json!({"compatibilityLevel": old.as_str()}))),
        None => Err(ApiError::subject_not_found(&subject)),
    }
}

async fn compatibility(
    app: App,
    subject: String,
    version: Option<String>,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec = version.as_deref().map(VersionSpec::parse).transpose()?;
    let new = schema_body(&body)?;
    let report = app.registry.test_compatibility(&subject, spec, &new)?;
    let mut out = json!({"is_compatible": report.is_compatible});
    if flag(&q, "verbose") {
        out["messages"] = json!(report.messages);
    }
    Ok(ok(out))
}

async fn compatibility_version(
    State(app): State<App>,
    Path((subject, version)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    compatibility(app, subject, Some(version), q, body).await
}

async fn compatibility_all(
    State(app): State<App>,
    Path(subject): Path<String>,
    q: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    compatibility(app, subject, None, q, body).await
}

async fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
    )
}

async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.auth.required() && !app.auth.accepts(request.headers()) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error_code": 401, "message": "Unauthorized"}),
        );
    }
    next.run(request).await
}

/// Whether a request changes the registry (and goes to the writer from a follower): PUT,
/// DELETE, and POST except lookups (`POST /subjects/{s}`) and compatibility tests.
fn is_change(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    match *method {
        Method::PUT | Method::DELETE => true,
        Method::POST => {
            path.starts_with("/subjects/") && path.trim_end_matches('/').ends_with("/versions")
        }
        _ => false,
    }
}

/// Before each request: take in what other processes changed in a shared store; a change
/// arriving at a follower is forwarded to the writer and its answer returned as it is.
async fn follow(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Err(e) = app.registry.refresh() {
        return e.into_response();
    }
    if !is_change(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    match app.registry.forward_to() {
        Ok(Some(url)) => forward(&app, &url, request).await,
        Ok(None) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn forward(app: &App, writer: &str, request: Request) -> Response {
    let failed = |e: String| {
        ApiError::new(
            500,
            50003,
            format!("Error while forwarding the request to the writer {writer}: {e}"),
        )
        .into_response()
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = request.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => return failed(format!("reading the request: {e}")),
    };
    let url = format!("{}{path}", writer.trim_end_matches('/'));
    let answer = app
        .http
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return failed(e.to_string()),
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => failed(e.to_string()),
    }
}

/// The routes of the Confluent REST API over `registry`.
pub fn router(registry: Arc<Registry>, auth: ServerAuth) -> Router {
    let app = App {
        registry,
        auth: Arc::new(auth),
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("an HTTP client with default TLS settings builds"),
    };
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_by_id_raw))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), follow))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ))
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    auth: ServerAuth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "schema registry listening");
    axum::serve(listener, router(registry, auth))
        .with_graceful_shutdown(shutdown)
        .await
}
