//! The HTTP client under the source: credentials that never leave the configured origin,
//! redirects followed by hand (so that rule holds for them too), a token bucket and a
//! `not before` time per host, a concurrency limit, bounded bodies, and retries.
//!
//! Retries use the core's [`Backoff`] (exponential, full jitter, attempt and elapsed budgets)
//! rather than `backon`: it already takes a server delay as a floor, which is exactly what
//! `Retry-After` needs, and the rest of Tributary retries the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, LOCATION};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tributary_core::config::ConfigError;
use tributary_core::error::{Classify, ErrorClass};
use tributary_core::retry::{Backoff, RetryPolicy};

use crate::config::{AuthConfig, HttpSourceConfig, KeyLocation, Method};
use crate::page::excerpt;

type Bytes = Vec<u8>;

/// Bytes of a response body kept in error messages and dead letters.
const EXCERPT: usize = 512;

/// What went wrong with a request. URLs in it are redacted.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No response within the request timeout.
    #[error("{url}: no response within {timeout:?}")]
    Timeout {
        /// The request (redacted).
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Connection refused or reset, or the body broke off.
    #[error("{url}: {message}")]
    Network {
        /// The request (redacted).
        url: String,
        /// What happened.
        message: String,
    },
    /// A status that is not success.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The request (redacted).
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
        /// The delay the server asked for (`Retry-After`, `X-RateLimit-Reset`).
        retry_after: Option<Duration>,
    },
    /// The body is larger than `max_response_bytes`.
    #[error("{url}: the response is larger than max_response_bytes ({limit} bytes)")]
    TooLarge {
        /// The request (redacted).
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A redirect loop, or a redirect without a usable `Location`.
    #[error("{url}: {message}")]
    Redirect {
        /// The request (redacted).
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The OAuth2 token endpoint refused or failed.
    #[error("OAuth2 token endpoint {url}: {message}")]
    Token {
        /// The token endpoint.
        url: String,
        /// What it said.
        message: String,
        /// Whether trying again may help (5xx, network).
        transient: bool,
    },
}

impl HttpError {
    /// The status, for status errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        match self {
            HttpError::Timeout { .. } | HttpError::Network { .. } => ErrorClass::Transient,
            HttpError::Status { status, .. } => match *status {
                408 | 429 | 500..=599 => ErrorClass::Transient,
                401 => ErrorClass::Fatal,
                _ => ErrorClass::Record,
            },
            HttpError::TooLarge { .. } | HttpError::Redirect { .. } => ErrorClass::Record,
            HttpError::Token { transient, .. } => {
                if *transient {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Fatal
                }
            }
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A successful response, read whole.
#[derive(Debug)]
pub struct Response {
    /// The URL that answered (after redirects).
    pub url: Url,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

enum Auth {
    None,
    Header(HeaderValue),
    OAuth2(Box<OAuth2>),
}

struct OAuth2 {
    token_url: Url,
    form: SecretString,
    refresh_before: Duration,
    token: tokio::sync::Mutex<Option<(HeaderValue, Option<Instant>)>>,
}

#[derive(Default)]
struct Host {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    not_before: Option<Instant>,
}

/// An HTTP client bound to one configured origin.
pub struct Client {
    http: reqwest::Client,
    origin: url::Origin,
    auth: Auth,
    headers: HeaderMap,
    quota: Option<Quota>,
    hosts: Mutex<HashMap<String, Host>>,
    permits: Semaphore,
    retry: RetryPolicy,
    timeout: Duration,
    max_bytes: u64,
    max_redirects: u32,
    method: Method,
    body: Option<Vec<u8>>,
    /// Query parameters holding secrets (an API key, values from `${…}` templates): added to
    /// each request to the configured origin, removed from stored URLs, redacted in messages.
    secret_query: Vec<(String, SecretString)>,
    /// Their names.
    secret_params: Vec<String>,
    /// Failed attempts retried since [`Client::take_retries`] last asked.
    retries: std::sync::atomic::AtomicU64,
}

fn build_err(field: &str, message: impl ToString) -> ConfigError {
    ConfigError::Value {
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn secret_header(value: &str, field: &str) -> Result<HeaderValue, ConfigError> {
    let mut v =
        HeaderValue::from_str(value).map_err(|_| build_err(field, "not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

impl Client {
    /// Resolves templates and secrets and builds the client for `base`, the first URL.
    pub fn new(config: &HttpSourceConfig, base: &Url) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| build_err("source", e))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let field = format!("headers.{name}");
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| build_err(&field, "not a valid header name"))?;
            let v = value.resolve(&field)?;
            headers.insert(n, secret_header(&v, &field)?);
        }
        // Parameters filled from `${…}` templates may be keys too: treated like an API key.
        let mut secret_query = Vec::new();
        for (k, v) in config
            .params
            .iter()
            .filter(|(_, v)| v.template().contains("${"))
        {
            secret_query.push((k.clone(), v.resolve_secret(&format!("params.{k}"))?));
        }
        let auth = match &config.auth {
            None => Auth::None,
            Some(AuthConfig::Bearer { token }) => {
                let t = token.resolve_secret("auth.token")?;
                Auth::Header(secret_header(
                    &format!("Bearer {}", t.expose_secret()),
                    "auth.token",
                )?)
            }
            Some(AuthConfig::Basic { username, password }) => {
                let u = username.resolve_secret("auth.username")?;
                let p = password.resolve_secret("auth.password")?;
                let pair = format!("{}:{}", u.expose_secret(), p.expose_secret());
                Auth::Header(secret_header(
                    &format!("Basic {}", base64(pair.as_bytes())),
                    "auth.password",
                )?)
            }
            Some(AuthConfig::ApiKey {
                name,
                value,
                location,
            }) => {
                let v = value.resolve_secret("auth.value")?;
                match location {
                    KeyLocation::Header => {
                        let n = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| build_err("auth.name", "not a valid header name"))?;
                        headers.insert(n, secret_header(v.expose_secret(), "auth.value")?);
                        Auth::None
                    }
                    KeyLocation::Query => {
                        secret_query.push((name.clone(), v));
                        Auth::None
                    }
                }
            }
            Some(AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                extra,
                refresh_before,
            }) => {
                let text = token_url.resolve("auth.token_url")?;
                let token_url = Url::parse(&text).map_err(|e| build_err("auth.token_url", e))?;
                let id = client_id.resolve_secret("auth.client_id")?;
                let secret = client_secret.resolve_secret("auth.client_secret")?;
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                form.append_pair("client_id", id.expose_secret());
                form.append_pair("client_secret", secret.expose_secret());
                if let Some(s) = scope {
                    form.append_pair("scope", s);
                }
                for (k, v) in extra {
                    form.append_pair(k, v);
                }
                Auth::OAuth2(Box::new(OAuth2 {
                    token_url,
                    form: SecretString::from(form.finish()),
                    refresh_before: *refresh_before,
                    token: tokio::sync::Mutex::new(None),
                }))
            }
        };
        let quota = config
            .rate_limit
            .as_ref()
            .map(|r| Quota::per_second(r.rps).allow_burst(r.burst.unwrap_or(r.rps)));
        let body = config
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).expect("a JSON value serialises"));
        Ok(Client {
            http,
            origin: base.origin(),
            auth,
            headers,
            quota,
            hosts: Mutex::new(HashMap::new()),
            permits: Semaphore::new(config.concurrency.get() as usize),
            retry: config.retry.clone(),
            timeout: config.timeout,
            max_bytes: config.max_response_bytes,
            max_redirects: config.max_redirects,
            method: config.method,
            body,
            secret_params: secret_query.iter().map(|(k, _)| k.clone()).collect(),
            secret_query,
            retries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Failed attempts retried since the last call (for the run's retry count and metric).
    pub fn take_retries(&self) -> u64 {
        self.retries.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// `url` with secret query parameters replaced by `REDACTED` and no user info: for logs,
    /// errors and dead letters.
    pub fn redact(&self, url: &Url) -> String {
        let mut u = url.clone();
        let _ = u.set_password(None);
        if !u.username().is_empty() {
            let _ = u.set_username("REDACTED");
        }
        if u.query().is_some() && !self.secret_params.is_empty() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = self.secret_params.iter().any(|s| s == &k);
                    (
                        k.into_owned(),
                        if secret {
                            "REDACTED".into()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }

    /// `url` without secret query parameters: what positions store (they are added back to
    /// each request to the configured origin).
    pub fn strip_secrets(&self, url: &Url) -> Url {
        let mut u = url.clone();
        if u.query().is_some() && !self.secret_params.is_empty() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| !self.secret_params.iter().any(|s| s == k))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
        }
        u
    }

    /// Fetches `url`, retrying transient failures under the retry policy.
    pub async fn get(&self, url: &Url) -> Result<Response, HttpError> {
        let mut backoff = Backoff::new(self.retry.clone());
        let mut refreshed = false;
        loop {
            let error = match self.attempt(url).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            // An expired or revoked OAuth2 token: fetch a new one once, at once.
            if error.status() == Some(401) && matches!(self.auth, Auth::OAuth2(_)) && !refreshed {
                refreshed = true;
                if let Auth::OAuth2(o) = &self.auth {
                    *o.token.lock().await = None;
                }
                continue;
            }
            match backoff.after_failure(error) {
                Ok((error, delay)) => {
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %error, attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "HTTP request failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    if e.exhausted {
                        tracing::warn!(attempts = e.attempts, "HTTP retries exhausted");
                    }
                    return Err(e.error);
                }
            }
        }
    }

    async fn attempt(&self, url: &Url) -> Result<Response, HttpError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let mut current = url.clone();
        let mut method = self.method;
        for _ in 0..=self.max_redirects {
            self.wait_for_host(&current).await;
            let trusted = current.origin() == self.origin;
            let mut target = current.clone();
            let mut headers = HeaderMap::new();
            if trusted {
                headers.extend(self.headers.clone());
                match &self.auth {
                    Auth::None => {}
                    Auth::Header(v) => {
                        headers.insert(AUTHORIZATION, v.clone());
                    }
                    Auth::OAuth2(o) => {
                        headers.insert(AUTHORIZATION, self.oauth2_token(o).await?);
                    }
                }
            }
            if trusted && !self.secret_query.is_empty() {
                target = self.strip_secrets(&target);
                let mut q = target.query_pairs_mut();
                for (name, value) in &self.secret_query {
                    q.append_pair(name, value.expose_secret());
                }
            }
            let redacted = self.redact(&current);
            let request = match method {
                Method::Get => self.http.get(target),
                Method::Post => {
                    let r = self
                        .http
                        .post(target)
                        .header("content-type", "application/json");
                    r.body(self.body.clone().unwrap_or_default())
                }
            };
            let mut response = request
                .headers(headers)
                .send()
                .await
                .map_err(|e| self.network_error(&redacted, e))?;
            let status = response.status();
            self.note_rate_headers(&current, response.headers());
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| current.join(l).ok())
                    .ok_or_else(|| HttpError::Redirect {
                        url: redacted.clone(),
                        message: format!("HTTP {status} without a usable Location header"),
                    })?;
                if status == StatusCode::SEE_OTHER {
                    method = Method::Get;
                }
                if location.origin() != self.origin {
                    tracing::debug!(from = %redacted, to = %self.redact(&location), "redirect to another origin: credentials stay behind");
                }
                current = location;
                continue;
            }
            let body = self.read_body(&mut response, &redacted).await?;
            if status.is_success() {
                return Ok(Response {
                    url: current,
                    headers: response.headers().clone(),
                    body,
                });
            }
            return Err(HttpError::Status {
                url: redacted,
                status: status.as_u16(),
                body: excerpt(&body, EXCERPT),
                retry_after: retry_after(response.headers()),
            });
        }
        Err(HttpError::Redirect {
            url: self.redact(url),
            message: format!("more than {} redirects", self.max_redirects),
        })
    }

    fn network_error(&self, url: &str, e: reqwest::Error) -> HttpError {
        if e.is_timeout() {
            HttpError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            }
        } else {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            HttpError::Network {
                url: url.to_string(),
                message,
            }
        }
    }

    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        url: &str,
    ) -> Result<Bytes, HttpError> {
        let too_large = || HttpError::TooLarge {
            url: url.to_string(),
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(
            response
                .content_length()
                .unwrap_or(16 << 10)
                .min(self.max_bytes) as usize,
        );
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.network_error(url, e))?
        {
            if body.len() as u64 + chunk.len() as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn oauth2_token(&self, o: &OAuth2) -> Result<HeaderValue, HttpError> {
        let mut token = o.token.lock().await;
        if let Some((value, expiry)) = token.as_ref() {
            if expiry.is_none_or(|e| Instant::now() + o.refresh_before < e) {
                return Ok(value.clone());
            }
        }
        let url = o.token_url.to_string();
        let err = |message: String, transient: bool| HttpError::Token {
            url: url.clone(),
            message,
            transient,
        };
        let response = self
            .http
            .post(o.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(o.form.expose_secret().to_string())
            .send()
            .await
            .map_err(|e| err(e.to_string(), true))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| err(e.to_string(), true))?;
        if !status.is_success() {
            return Err(err(
                format!("HTTP {status}: {}", excerpt(&body, EXCERPT)),
                status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| err(format!("not a token response: {e}"), false))?;
        let value = secret_header(&format!("Bearer {}", t.access_token), "auth")
            .map_err(|_| err("the access token is not a valid header value".into(), false))?;
        let expiry = t
            .expires_in
            .map(|s| Instant::now() + Duration::from_secs(s));
        tracing::debug!(expires_in = ?t.expires_in, "OAuth2 token fetched");
        *token = Some((value.clone(), expiry));
        Ok(value)
    }

    fn host_key(url: &Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        )
    }

    async fn wait_for_host(&self, url: &Url) {
        let key = Self::host_key(url);
        let (limiter, not_before) = {
            let mut hosts = self.hosts.lock().expect("not poisoned");
            let host = hosts.entry(key).or_default();
            if host.limiter.is_none() {
                host.limiter = self.quota.map(|q| Arc::new(RateLimiter::direct(q)));
            }
            (host.limiter.clone(), host.not_before)
        };
        if let Some(t) = not_before {
            tokio::time::sleep_until(t).await;
        }
        if let Some(l) = limiter {
            l.until_ready().await;
        }
    }

    /// `X-RateLimit-Remaining: 0` with a reset time: no request to that host before it.
    fn note_rate_headers(&self, url: &Url, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-ratelimit-remaining");
        if remaining != Some(0) {
            return;
        }
        if let Some(delay) = rate_limit_reset(headers) {
            let mut hosts = self.hosts.lock().expect("not poisoned");
            hosts.entry(Self::host_key(url)).or_default().not_before = Some(Instant::now() + delay);
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `X-RateLimit-Reset`: seconds from now, or a Unix time (GitHub) when it is that large.
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    let v = header_u64(headers, "x-ratelimit-reset")?;
    if v > 1_000_000_000 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(Duration::from_secs(v.saturating_sub(now)))
    } else {
        Some(Duration::from_secs(v))
    }
}

/// `Retry-After` as seconds or an HTTP date, else `X-RateLimit-Reset`.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(v) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(when) = httpdate::parse_http_date(v) {
            return Some(
                when.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    rate_limit_reset(headers)
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }

    #[test]
    fn secrets_are_redacted_and_stripped() {
        let mut c = HttpSourceConfig::new("http://api.local/items");
        c.auth = Some(AuthConfig::ApiKey {
            name: "api_key".into(),
            value: "s3cr3t".into(),
            location: KeyLocation::Query,
        });
        let base = Url::parse("http://api.local/items").unwrap();
        let client = Client::new(&c, &base).unwrap();
        let u = Url::parse("http://user:pw@api.local/items?page=2&api_key=s3cr3t").unwrap();
        let r = client.redact(&u);
        assert!(!r.contains("s3cr3t") && !r.contains("pw"), "{r}");
        assert!(
            r.contains("api_key=REDACTED") && r.contains("page=2"),
            "{r}"
        );
        assert_eq!(client.strip_secrets(&u).query(), Some("page=2"));
    }
}
