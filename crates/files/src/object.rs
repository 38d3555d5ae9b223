//! S3-compatible object storage for the file sources: `path: s3://bucket/prefix/*.csv`.
//!
//! ```yaml
//! source:
//!   kind: csv
//!   path: s3://landing/orders/2024-*.csv.gz
//!   s3:                                   # optional: AWS_* environment variables otherwise
//!     endpoint: http://127.0.0.1:9000     # MinIO, Ceph, moto, R2, ...
//!     region: us-east-1
//!     access_key_id: ${S3_KEY}
//!     secret_access_key: ${file:/run/secrets/s3}
//! ```
//!
//! - **Listing.** A path names a bucket and a key prefix, optionally ending in a glob
//!   (`*`, `?`, `[...]`, `**`) matched against the whole key. A path ending in `/` (or naming
//!   a prefix with no glob and no object of exactly that key) lists everything under it.
//!   Objects are read in key order.
//! - **Ledger.** An object's ledger entry is its URL, size, last-modified time and ETag. S3
//!   objects are replaced whole, never appended to: an object whose ETag changed is read
//!   again from the start.
//! - **Reading.** CSV and NDJSON stream the object through ranged GETs (a resumed file
//!   starts with a `Range: bytes=offset-` request), with a few MiB read ahead by a
//!   background task. Parquet and Excel need random access: the object is downloaded to a
//!   temporary file first, which is removed when the file is done.
//! - **Errors.** Network errors and 5xx answers are transient (the runtime retries the run
//!   step); a missing bucket, bad credentials or a denied request stop the run with the
//!   store's message.
//!
//! All object-store I/O runs on one small dedicated tokio runtime, so the blocking readers
//! of the file sources (which run on `spawn_blocking` threads) can wait for it without
//! borrowing the pipeline's runtime.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};

/// Connection settings for S3-compatible storage. Anything left out comes from the standard
/// `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT`, ...).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible service (`http://127.0.0.1:9000`); default: AWS.
    /// Requests use path-style addressing when an endpoint is set.
    #[serde(default)]
    pub endpoint: Option<VarStr>,
    /// Region (default `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id (a secret: use `${ENV}` or `${file:...}`).
    #[serde(default)]
    pub access_key_id: Option<VarStr>,
    /// Secret access key (a secret: use `${ENV}` or `${file:...}`).
    #[serde(default)]
    pub secret_access_key: Option<VarStr>,
    /// Allow plain `http://` endpoints (default: only when the endpoint is `http://`).
    #[serde(default)]
    pub allow_http: Option<bool>,
}

/// Where the objects of a file set are: a store (one bucket), a key prefix and an optional
/// glob over whole keys.
#[derive(Clone, Debug)]
pub struct ObjectLocation {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for URLs in messages and the ledger.
    base_url: String,
    /// The literal part of the key pattern.
    prefix: String,
    /// The whole key pattern, when it has glob characters.
    glob: Option<glob::Pattern>,
}

/// A listed object: the object, its size, last-modified time (ns) and ETag.
pub type Listed = (ObjectFile, u64, Option<i64>, Option<String>);

/// One object: the store and its key.
#[derive(Clone, Debug)]
pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    url: String,
}

impl PartialEq for ObjectFile {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

/// Errors of object storage; each names the URL.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {source}")]
pub struct ObjectError {
    /// The object or prefix.
    pub url: String,
    /// The store's error.
    pub source: object_store::Error,
}

impl ObjectError {
    /// Whether retrying may help (network trouble, throttling, server errors).
    pub fn is_transient(&self) -> bool {
        match &self.source {
            object_store::Error::Generic { source, .. } => {
                let text = source.to_string();
                !(text.contains("403")
                    || text.contains("401")
                    || text.contains("NoSuchBucket")
                    || text.contains("AccessDenied")
                    || text.contains("InvalidAccessKeyId")
                    || text.contains("SignatureDoesNotMatch"))
            }
            object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. } => false,
            _ => false,
        }
    }

    /// An I/O error carrying this one, for readers.
    pub fn into_io(self) -> std::io::Error {
        // Not `Interrupted`: readers retry that one in place, and the GET behind this reader
        // has ended.
        let kind = if self.is_transient() {
            std::io::ErrorKind::ConnectionAborted
        } else {
            std::io::ErrorKind::Other
        };
        std::io::Error::new(kind, self.to_string())
    }
}

/// Whether a configured path is an object-store URL.
pub fn is_object_url(path: &str) -> bool {
    path.starts_with("s3://")
}

fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tributary-objects")
            .enable_all()
            .build()
            .expect("the object-store runtime starts")
    })
}

/// Runs `fut` on the object-store runtime and waits for it from any thread.
fn wait<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    io_runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the object-store task answers")
}

impl ObjectLocation {
    /// Parses `s3://bucket/key-pattern` and builds the store.
    pub fn parse(url: &str, options: Option<&S3Options>) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Value {
            field: "source.path".into(),
            message,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, pattern) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!(
                "`{url}` names no bucket (s3://BUCKET/prefix)"
            )));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let options = options.cloned().unwrap_or_default();
        if let Some(endpoint) = &options.endpoint {
            let endpoint = endpoint.resolve("source.s3.endpoint")?;
            let http = endpoint.starts_with("http://");
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(options.allow_http.unwrap_or(http));
        } else if let Some(allow) = options.allow_http {
            builder = builder.with_allow_http(allow);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        } else if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key.resolve("source.s3.access_key_id")?);
        }
        if let Some(secret) = &options.secret_access_key {
            use secrecy::ExposeSecret;
            let secret = secret.resolve_secret("source.s3.secret_access_key")?;
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let store = builder
            .build()
            .map_err(|e| invalid(format!("cannot use `{url}`: {e}")))?;
        let glob_at = pattern.find(['*', '?', '[']);
        let (prefix, glob) = match glob_at {
            Some(i) => {
                let literal = &pattern[..i];
                let prefix = match literal.rfind('/') {
                    Some(slash) => literal[..=slash].to_string(),
                    None => String::new(),
                };
                let glob = glob::Pattern::new(pattern)
                    .map_err(|e| invalid(format!("`{url}` is not a valid glob: {e}")))?;
                (prefix, Some(glob))
            }
            None => (pattern.to_string(), None),
        };
        Ok(ObjectLocation {
            store: Arc::new(store),
            base_url: format!("s3://{bucket}"),
            prefix,
            glob,
        })
    }

    /// The URL as configured.
    pub fn display(&self) -> String {
        match &self.glob {
            Some(g) => format!("{}/{}", self.base_url, g.as_str()),
            None => format!("{}/{}", self.base_url, self.prefix),
        }
    }

    /// The objects, in key order, with size, last-modified time (ns) and ETag.
    pub fn list(&self) -> Result<Vec<Listed>, ObjectError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listed = wait(async move {
            // object_store lists the objects *under* a prefix folder: list the folder the
            // pattern is in, and let the filter below pick the object or the sub-folder.
            let folder = match prefix.trim_end_matches('/').rfind('/') {
                _ if prefix.ends_with('/') => prefix.trim_end_matches('/').to_string(),
                Some(slash) => prefix[..slash].to_string(),
                None => String::new(),
            };
            let key_prefix = (!folder.is_empty()).then(|| ObjectPath::from(folder.as_str()));
            store
                .list(key_prefix.as_ref())
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|source| ObjectError {
            url: self.display(),
            source,
        })?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let mut out: Vec<_> = listed
            .into_iter()
            .filter(|m| {
                let key = m.location.as_ref();
                let name = key.rsplit('/').next().unwrap_or(key);
                if name.starts_with('.') || name.ends_with(".tmp") {
                    return false;
                }
                match &self.glob {
                    Some(g) => g.matches_with(key, options),
                    // A plain prefix: the object itself, or everything under it as a folder.
                    None => {
                        self.prefix.is_empty()
                            || key == self.prefix
                            || key.starts_with(&format!("{}/", self.prefix.trim_end_matches('/')))
                    }
                }
            })
            .map(|m| {
                let url = format!("{}/{}", self.base_url, m.location);
                let mtime = m.last_modified.timestamp_nanos_opt();
                (
                    ObjectFile {
                        store: self.store.clone(),
                        key: m.location,
                        url,
                    },
                    m.size,
                    mtime,
                    m.e_tag,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.url.cmp(&b.0.url));
        Ok(out)
    }
}

impl ObjectFile {
    /// The object's URL (`s3://bucket/key`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A reader of the object from byte `offset`, fed by ranged GETs with read-ahead. Read it
    /// from a blocking thread (the file sources' reader threads).
    pub fn reader(&self, offset: u64) -> Box<dyn Read + Send> {
        // A std channel, so the reader can wait from any thread, async or not; the GET task
        // waits for room with `block_in_place` (the object-store runtime is multi-threaded).
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Bytes>>(8);
        let store = self.store.clone();
        let key = self.key.clone();
        let url = self.url.clone();
        io_runtime().spawn(async move {
            let options = GetOptions {
                range: (offset > 0).then_some(GetRange::Offset(offset)),
                ..Default::default()
            };
            let result = match store.get_opts(&key, options).await {
                Ok(r) => r,
                Err(source) => {
                    let _ = tx.send(Err(ObjectError { url, source }.into_io()));
                    return;
                }
            };
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| {
                    ObjectError {
                        url: url.clone(),
                        source,
                    }
                    .into_io()
                });
                let failed = chunk.is_err();
                if tokio::task::block_in_place(|| tx.send(chunk)).is_err() || failed {
                    return;
                }
            }
        });
        Box::new(ObjectReader {
            rx,
            current: Bytes::new(),
            done: false,
        })
    }

    /// Downloads the object to a temporary file (for formats that need random access).
    pub fn download(&self) -> Result<tempfile::TempPath, std::io::Error> {
        // Keep the extension: readers that pick a format by it (calamine) see the same name.
        let name = self.url.rsplit('/').next().unwrap_or_default();
        let suffix = name.find('.').map_or("", |i| &name[i..]);
        let mut file = tempfile::Builder::new()
            .prefix(".tributary-object-")
            .suffix(suffix)
            .tempfile()?;
        std::io::copy(&mut self.reader(0), file.as_file_mut())?;
        Ok(file.into_temp_path())
    }
}

/// A blocking `Read` over the chunks a GET task sends.
struct ObjectReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk?,
                Err(_) => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A local path to read a file from: the file itself, or a downloaded copy of an object
/// (removed on drop).
pub struct LocalFile {
    path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

impl LocalFile {
    /// A local file as it is.
    pub fn local(path: PathBuf) -> Self {
        LocalFile { path, _temp: None }
    }

    /// A downloaded copy.
    pub fn downloaded(temp: tempfile::TempPath) -> Self {
        LocalFile {
            path: temp.to_path_buf(),
            _temp: Some(temp),
        }
    }

    /// Where to read it.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
