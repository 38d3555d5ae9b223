//! The HTTP source's configuration (`kind: http` in a pipeline file).
//!
//! ```yaml
//! source:
//!   kind: http
//!   url: https://api.example.com/v1/orders
//!   params: { status: open, updated_since: "{cursor}" }
//!   records: /data                # JSON pointer; default: the top-level array or the single array
//!   paginator: { type: link_header }
//!   auth: { type: bearer, token: "${API_TOKEN}" }
//!   rate_limit: { rps: 10, burst: 20 }
//!   incremental: { cursor_path: updated_at, initial_value: "2026-01-01T00:00:00Z", lookback: 1h }
//!   children:                     # dependent resources: one request (and its pages) per record
//!     - stream: order_lines
//!       path: /v1/orders/{id}/lines
//!       parent_fields: { id: order_id }
//! ```

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::config::{duration, ConfigError, VarStr};
use tributary_core::retry::RetryPolicy;

/// Where to read, how to page, how to authenticate, how fast to go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// The first request's URL (`${ENV}` templates allowed). Credentials are only ever sent to
    /// this URL's scheme, host and port.
    pub url: VarStr,
    /// HTTP method (`GET` or `POST`; default `GET`).
    #[serde(default)]
    pub method: Method,
    /// A JSON body for `POST` requests.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Extra request headers. Sent only to the configured host, like credentials (they often
    /// carry keys).
    #[serde(default)]
    pub headers: BTreeMap<String, VarStr>,
    /// Query parameters of the first request. A value `{cursor}` (or containing it) takes the
    /// incremental cursor's start value. A value with a `${ENV}`/`${file:…}` template is a
    /// secret: sent only to the configured origin (on every page, next links included), never
    /// stored in positions, redacted in messages.
    #[serde(default)]
    pub params: BTreeMap<String, VarStr>,
    /// The stream name (state key, output folder); default: the URL's last path segment.
    #[serde(default)]
    pub stream: Option<String>,
    /// JSON pointer (RFC 6901) to the records array in a response, e.g. `/data/items`;
    /// default: the body itself when it is an array, else its only array-valued field.
    #[serde(default)]
    pub records: Option<String>,
    /// How to get from one page to the next; default `none` (one request).
    #[serde(default)]
    pub paginator: Paginator,
    /// When to stop besides the paginator's own end (no next link, no cursor).
    #[serde(default)]
    pub stop: StopConditions,
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Requests per second and burst per host; default: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Requests in flight at once (pages fetched in parallel when addressable up front).
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroU32,
    /// Per-request timeout, connect to last byte (`30s`).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Responses larger than this are refused (dead-lettered): `64MiB`.
    #[serde(default = "default_max_response", deserialize_with = "byte_size")]
    pub max_response_bytes: u64,
    /// Retries of 429, 503, other 5xx, timeouts and connection errors (exponential backoff
    /// with full jitter; `Retry-After` is a floor).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Redirects followed per request (`10`). Credentials never follow one to another host.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// Incremental loads: only records past the last run's cursor.
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// Rows per emitted batch (pages are gathered up to this; `10000`).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Dependent resources: for each record of this endpoint, the records of a child
    /// endpoint built from its fields (`/users/{id}/orders`), as their own streams.
    #[serde(default)]
    pub children: Vec<ChildConfig>,
}

/// A dependent resource: for every record of the parent endpoint, one request to `path`
/// with the record's fields filled in, followed through the child's own pages. Its records
/// form their own stream, each with the `parent_fields` copied in.
///
/// The child uses the parent's client: the same credentials (sent only to the parent's
/// origin), rate limit, concurrency, timeouts and retries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildConfig {
    /// The child stream's name (state key, output folder). Must differ from the parent's.
    pub stream: String,
    /// URL of the child endpoint, absolute or relative to the parent's URL; `{field}` (a
    /// top-level field) or `{/json/pointer}` takes the parent record's value, percent-encoded:
    /// `/users/{id}/orders`.
    pub path: String,
    /// Query parameters; `{field}` placeholders as in `path` (`{ userId: "{id}" }`). Keys
    /// belong in the parent's `auth` or `params` (sent to every request to its origin).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// JSON pointer to the records array in a child response (default as for the parent).
    #[serde(default)]
    pub records: Option<String>,
    /// How the child's pages follow one another; default `none` (one request per parent
    /// record). Child pages are read one after the other.
    #[serde(default)]
    pub paginator: Paginator,
    /// When to stop reading one parent record's child pages.
    #[serde(default)]
    pub stop: StopConditions,
    /// Parent fields copied into every child record: parent field (or JSON pointer) → child
    /// column, e.g. `{ id: user_id }`.
    #[serde(default)]
    pub parent_fields: BTreeMap<String, String>,
}

impl ChildConfig {
    /// The parent's config with this child's endpoint, paging and stream: what the child
    /// pages are read with.
    pub fn derive(&self, parent: &HttpSourceConfig) -> HttpSourceConfig {
        let mut c = parent.clone();
        c.url = VarStr::new(self.path.clone());
        c.params = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), VarStr::new(v.clone())))
            .collect();
        c.stream = Some(self.stream.clone());
        c.records = self.records.clone();
        c.paginator = self.paginator.clone();
        c.stop = self.stop.clone();
        c.incremental = None;
        c.children = Vec::new();
        c
    }
}

fn default_concurrency() -> NonZeroU32 {
    NonZeroU32::new(4).expect("non-zero")
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_response() -> u64 {
    64 << 20
}
fn default_max_redirects() -> u32 {
    10
}
fn default_batch_rows() -> usize {
    10_000
}

fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    tributary_core::config::byte_size_option::deserialize(d)
        .map(|v| v.map_or(default_max_response(), |n| n.get()))
}

/// HTTP method of the page requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET` (default).
    #[default]
    Get,
    /// `POST` with [`HttpSourceConfig::body`].
    Post,
}

/// How pages follow one another.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Paginator {
    /// One request, no pages.
    None {},
    /// `?offset=0&limit=100`, then `offset=100`, ... Pages are fetched in parallel when the
    /// total is known (`total_path` or `total_header`).
    Offset {
        /// Query parameter of the offset (`offset`).
        #[serde(default = "offset_param")]
        offset_param: String,
        /// Query parameter of the page size (`limit`). With `end_param` instead, the request
        /// carries `offset + limit` there (json-server's `_start`/`_end`).
        #[serde(default = "limit_param")]
        limit_param: String,
        /// Query parameter taking the exclusive end (`offset + limit`) instead of `limit_param`.
        #[serde(default)]
        end_param: Option<String>,
        /// Records per page.
        limit: u64,
        /// The first offset (`0`).
        #[serde(default)]
        start: u64,
        /// JSON pointer to the total number of records in a response.
        #[serde(default)]
        total_path: Option<String>,
        /// Response header with the total number of records (`X-Total-Count`).
        #[serde(default)]
        total_header: Option<String>,
    },
    /// `?page=1`, `page=2`, ... Parallel when the total is known.
    PageNumber {
        /// Query parameter of the page number (`page`).
        #[serde(default = "page_param")]
        page_param: String,
        /// The first page (`1`).
        #[serde(default = "one")]
        start: u64,
        /// Query parameter of the page size, with `size`.
        #[serde(default)]
        size_param: Option<String>,
        /// Records per page, sent as `size_param`; also the page size for `total_path`.
        #[serde(default)]
        size: Option<u64>,
        /// JSON pointer to the number of pages.
        #[serde(default)]
        total_pages_path: Option<String>,
        /// JSON pointer to the number of records (needs `size`).
        #[serde(default)]
        total_path: Option<String>,
        /// Response header with the number of records (needs `size`), e.g. `X-Total-Count`.
        #[serde(default)]
        total_header: Option<String>,
    },
    /// The next page's cursor is in the body; sent back as a query parameter.
    Cursor {
        /// JSON pointer to the cursor (`/next_cursor`); absent, null or empty ends.
        cursor_path: String,
        /// Query parameter for the cursor (`cursor`).
        #[serde(default = "cursor_param")]
        cursor_param: String,
    },
    /// The next page's cursor is in a response header.
    HeaderCursor {
        /// The header (`X-Next-Cursor`).
        header: String,
        /// Query parameter for the cursor (`cursor`).
        #[serde(default = "cursor_param")]
        cursor_param: String,
    },
    /// The body holds the next page's URL (absolute or relative).
    NextUrl {
        /// JSON pointer to it (`/next`).
        next_url_path: String,
    },
    /// RFC 8288 `Link: <…>; rel="next"` headers (GitHub, json-server).
    LinkHeader {},
}

impl Default for Paginator {
    fn default() -> Self {
        Paginator::None {}
    }
}

fn offset_param() -> String {
    "offset".into()
}
fn limit_param() -> String {
    "limit".into()
}
fn page_param() -> String {
    "page".into()
}
fn cursor_param() -> String {
    "cursor".into()
}
fn one() -> u64 {
    1
}

/// Stop conditions every paginator honours.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StopConditions {
    /// A page without records ends the pass (`true`).
    pub empty_page: bool,
    /// JSON pointer to a boolean; `false` ends the pass (`/has_more`).
    pub has_more_path: Option<String>,
    /// JSON pointer to the total number of records; reaching it ends the pass.
    pub total_path: Option<String>,
    /// At most this many pages per run.
    pub max_pages: Option<u64>,
}

impl Default for StopConditions {
    fn default() -> Self {
        StopConditions {
            empty_page: true,
            has_more_path: None,
            total_path: None,
            max_pages: None,
        }
    }
}

/// Credentials, resolved from `${ENV}`/`${file:…}` templates when the source is built.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: VarStr,
    },
    /// `Authorization: Basic …`.
    Basic {
        /// User name.
        username: VarStr,
        /// Password.
        password: VarStr,
    },
    /// A key in a header or a query parameter.
    ApiKey {
        /// Header or parameter name (`X-API-Key`, `api_key`).
        name: String,
        /// The key.
        value: VarStr,
        /// `header` (default) or `query`.
        #[serde(default)]
        location: KeyLocation,
    },
    /// OAuth 2.0 client credentials grant (RFC 6749 §4.4); the token is fetched again
    /// `refresh_before` its expiry, and once more after a 401.
    Oauth2ClientCredentials {
        /// The token endpoint (the client secret is sent there and nowhere else).
        token_url: VarStr,
        /// Client id.
        client_id: VarStr,
        /// Client secret.
        client_secret: VarStr,
        /// Space-separated scopes.
        #[serde(default)]
        scope: Option<String>,
        /// Extra form fields of the token request (`audience`, ...).
        #[serde(default)]
        extra: BTreeMap<String, String>,
        /// Refresh this long before the token expires (`60s`).
        #[serde(default = "refresh_before", with = "duration")]
        refresh_before: Duration,
    },
}

fn refresh_before() -> Duration {
    Duration::from_secs(60)
}

/// Where an API key goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    /// A request header.
    #[default]
    Header,
    /// A query parameter (redacted in logs, dead letters and stored positions).
    Query,
}

/// A token bucket per host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub rps: NonZeroU32,
    /// Requests allowed at once after a quiet time (default: `rps`).
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
}

/// Incremental loads: each run asks only for records past the previous run's cursor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The record field holding the cursor (`updated_at`, or a JSON pointer `/meta/updated`).
    pub cursor_path: String,
    /// The cursor of the first run.
    pub initial_value: serde_json::Value,
    /// Ask again for this much before the last cursor (RFC 3339 or Unix-seconds cursors), to
    /// catch records that appear late. Records in the window come again (dedupe downstream).
    #[serde(default, with = "duration")]
    pub lookback: Duration,
}

impl HttpSourceConfig {
    /// Checks everything that can be checked without I/O, reporting every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| problems.push(format!("{field}: {message}"));
        for (field, pointer) in self.pointers() {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                bad(
                    field,
                    format!("{pointer:?} is not a JSON pointer (write e.g. /data/items)"),
                );
            }
        }
        if let Paginator::Offset { limit: 0, .. } = self.paginator {
            bad("paginator.limit", "must be at least 1".into());
        }
        if let Paginator::PageNumber {
            size: None,
            total_path: Some(_),
            ..
        }
        | Paginator::PageNumber {
            size: None,
            total_header: Some(_),
            ..
        } = self.paginator
        {
            bad(
                "paginator.size",
                "a record total needs the page size to count pages".into(),
            );
        }
        if let Some(inc) = &self.incremental {
            if !self
                .params
                .values()
                .any(|v| v.template().contains("{cursor}"))
            {
                bad(
                    "incremental",
                    "no query parameter uses {cursor}: add one, e.g. `params: { since: \"{cursor}\" }`".into(),
                );
            }
            if inc.cursor_path.is_empty() {
                bad("incremental.cursor_path", "must name a field".into());
            }
        }
        let endless = match &self.paginator {
            Paginator::Offset {
                total_path,
                total_header,
                ..
            } => total_path.is_none() && total_header.is_none(),
            Paginator::PageNumber {
                total_pages_path,
                total_path,
                total_header,
                ..
            } => total_pages_path.is_none() && total_path.is_none() && total_header.is_none(),
            _ => false,
        };
        let s = &self.stop;
        if endless
            && !s.empty_page
            && s.has_more_path.is_none()
            && s.total_path.is_none()
            && s.max_pages.is_none()
        {
            bad(
                "stop",
                "these pages never end: keep `empty_page: true`, or give a total, `has_more_path` or `max_pages`".into(),
            );
        }
        if self.batch_rows == 0 {
            bad("batch_rows", "must be at least 1".into());
        }
        if self.body.is_some() && self.method == Method::Get {
            bad("body", "a body needs `method: POST`".into());
        }
        let mut streams: Vec<&str> = self.stream.as_deref().into_iter().collect();
        for (i, child) in self.children.iter().enumerate() {
            let field = format!("children[{i}]");
            if child.stream.is_empty() || streams.contains(&child.stream.as_str()) {
                bad(
                    &format!("{field}.stream"),
                    format!("{:?}: each child needs its own stream name, not the parent's or another child's", child.stream),
                );
            }
            streams.push(&child.stream);
            for (k, v) in &child.params {
                if v.contains("${") {
                    bad(
                        &format!("{field}.params.{k}"),
                        "secrets belong in the parent's `auth` or `params` (sent to every request to its origin)".into(),
                    );
                }
            }
            for placeholder in child_placeholders(&child.path)
                .into_iter()
                .chain(child.params.values().flat_map(|v| child_placeholders(v)))
            {
                if placeholder.is_empty() {
                    bad(&field, "an empty `{}` placeholder: write `{field}`".into());
                }
            }
            if let Err(ConfigError::Value { message, .. }) = child.derive(self).validate() {
                bad(&field, message);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Value {
                field: "source".into(),
                message: problems.join("; "),
            })
        }
    }

    fn pointers(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(p) = &self.records {
            out.push(("records", p.as_str()));
        }
        match &self.paginator {
            Paginator::Offset { total_path, .. } => {
                out.extend(total_path.as_deref().map(|p| ("paginator.total_path", p)))
            }
            Paginator::PageNumber {
                total_pages_path,
                total_path,
                ..
            } => {
                out.extend(
                    total_pages_path
                        .as_deref()
                        .map(|p| ("paginator.total_pages_path", p)),
                );
                out.extend(total_path.as_deref().map(|p| ("paginator.total_path", p)));
            }
            Paginator::Cursor { cursor_path, .. } => {
                out.push(("paginator.cursor_path", cursor_path.as_str()))
            }
            Paginator::NextUrl { next_url_path } => {
                out.push(("paginator.next_url_path", next_url_path.as_str()))
            }
            _ => {}
        }
        out.extend(
            self.stop
                .has_more_path
                .as_deref()
                .map(|p| ("stop.has_more_path", p)),
        );
        out.extend(
            self.stop
                .total_path
                .as_deref()
                .map(|p| ("stop.total_path", p)),
        );
        out
    }

    /// A minimal config for `url` (tests and programmatic use).
    pub fn new(url: impl Into<String>) -> Self {
        HttpSourceConfig {
            url: VarStr::new(url.into()),
            method: Method::Get,
            body: None,
            headers: BTreeMap::new(),
            params: BTreeMap::new(),
            stream: None,
            records: None,
            paginator: Paginator::None {},
            stop: StopConditions::default(),
            auth: None,
            rate_limit: None,
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            max_response_bytes: default_max_response(),
            retry: RetryPolicy::default(),
            max_redirects: default_max_redirects(),
            incremental: None,
            batch_rows: default_batch_rows(),
            children: Vec::new(),
        }
    }
}

/// The `{…}` placeholders of a child's path or parameter, in order (`{cursor}` included).
pub(crate) fn child_placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}
