//! Configuration of the CoAP connectors.
//!
//! ```yaml
//! source: { kind: coap, url: "coap://10.0.0.7/sensors/temp", mode: observe }
//! source: { kind: coap, url: "coap://10.0.0.7/meter", mode: poll, interval: 30s }
//! source: { kind: coap_endpoint, listen: "0.0.0.0:5683" }
//! ```

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::config::{duration, ConfigError, VarStr};
pub use tributary_formats::payload::PayloadFormat;

/// Observing or polling one remote resource (`source: { kind: coap, ... }`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoapSourceConfig {
    /// The resource: `coap://host[:port]/path[?query]` (port 5683 when left out).
    pub url: VarStr,
    /// `observe` (default: register with RFC 7641 Observe and receive a notification per
    /// change) or `poll` (GET every `interval`).
    #[serde(default)]
    pub mode: Mode,
    /// Poll interval; in `observe` mode, how long to wait before registering again after a
    /// failed registration (default `10s`).
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Observe: register again when no notification came for this long (default `60s`, and at
    /// least the notification's Max-Age): servers forget observers, and a lost registration is
    /// silent.
    #[serde(default = "default_reregister", with = "duration")]
    pub reregister_after: Duration,
    /// Send requests as confirmable messages, retransmitted until acknowledged (default
    /// `true`); `false` sends non-confirmable ones.
    #[serde(default = "default_true")]
    pub confirmable: bool,
    /// Block size asked for in block-wise (RFC 7959) transfers of large representations: 16
    /// to 1024 bytes, a power of two (default 1024).
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// What payloads hold: `json` (default), `text` or `bytes`.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Most readings per batch (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Longest a reading waits for its batch to fill (default `1s`).
    #[serde(default = "default_batch_timeout", with = "duration")]
    pub batch_timeout: Duration,
    /// The stream name (default `coap`).
    #[serde(default = "default_stream")]
    pub stream: String,
}

/// How a resource is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// RFC 7641 Observe.
    #[default]
    Observe,
    /// GET on an interval.
    Poll,
}

/// A UDP endpoint devices POST/PUT readings to (`source: { kind: coap_endpoint, ... }`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoapEndpointConfig {
    /// Address to listen on (default `0.0.0.0:5683`).
    #[serde(default = "default_listen")]
    pub listen: VarStr,
    /// Accept only these paths (`/readings`, or a prefix ending in `/`: `/devices/`); empty
    /// (default) accepts any. Others get 4.04 Not Found.
    #[serde(default)]
    pub paths: Vec<String>,
    /// What payloads hold: `json` (default), `text` or `bytes`.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Most readings per batch (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Longest a reading waits for its batch (default `100ms`). A batch with requests waiting
    /// for their answer is flushed and committed at once, so a device's answer comes this long
    /// after the durable write, well inside its first retransmission timeout (2 to 3 s).
    #[serde(default = "default_endpoint_batch_timeout", with = "duration")]
    pub batch_timeout: Duration,
    /// How long a request's message id is remembered to recognise retransmissions (default
    /// `247s`, RFC 7252's EXCHANGE_LIFETIME).
    #[serde(default = "default_exchange_lifetime", with = "duration")]
    pub exchange_lifetime: Duration,
    /// The stream name (default `coap`).
    #[serde(default = "default_stream")]
    pub stream: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_reregister() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_block_size() -> usize {
    1024
}
fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_endpoint_batch_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_exchange_lifetime() -> Duration {
    Duration::from_secs(247)
}
fn default_stream() -> String {
    "coap".into()
}
fn default_listen() -> VarStr {
    VarStr::new("0.0.0.0:5683")
}

fn bad(field: &str, message: String) -> ConfigError {
    ConfigError::Value {
        field: format!("source.{field}"),
        message,
    }
}

impl CoapSourceConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        CoapSourceConfig {
            url: VarStr::new(url.into()),
            mode: Mode::default(),
            interval: default_interval(),
            reregister_after: default_reregister(),
            confirmable: true,
            block_size: default_block_size(),
            format: PayloadFormat::default(),
            batch_size: default_batch_size(),
            batch_timeout: default_batch_timeout(),
            stream: default_stream(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(16..=1024).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(bad(
                "block_size",
                format!("{} is not a power of two from 16 to 1024", self.block_size),
            ));
        }
        for (field, d) in [
            ("interval", self.interval),
            ("batch_timeout", self.batch_timeout),
            ("reregister_after", self.reregister_after),
        ] {
            if d.is_zero() {
                return Err(bad(field, "must be longer than zero".into()));
            }
        }
        if self.stream.is_empty() {
            return Err(bad("stream", "must not be empty".into()));
        }
        Ok(())
    }
}

impl CoapEndpointConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: impl Into<String>) -> Self {
        CoapEndpointConfig {
            listen: VarStr::new(listen.into()),
            paths: Vec::new(),
            format: PayloadFormat::default(),
            batch_size: default_batch_size(),
            batch_timeout: default_endpoint_batch_timeout(),
            exchange_lifetime: default_exchange_lifetime(),
            stream: default_stream(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = self.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(bad("paths", format!("{p:?} must start with `/`")));
        }
        if self.batch_timeout.is_zero() {
            return Err(bad("batch_timeout", "must be longer than zero".into()));
        }
        if self.stream.is_empty() {
            return Err(bad("stream", "must not be empty".into()));
        }
        Ok(())
    }

    /// Whether requests to `path` are accepted.
    pub fn accepts(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|p| p == path || (p.ends_with('/') && path.starts_with(p.as_str())))
    }
}
