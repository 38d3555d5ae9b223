//! The MQTT source's configuration (`source: { kind: mqtt, ... }`).
//!
//! ```yaml
//! source:
//!   kind: mqtt
//!   broker: 127.0.0.1:1883
//!   topics: [sensors/+/+/+]
//!   qos: 1
//!   client_id: ingest-1            # keys the broker session: one per process
//!   topic_template: "sensors/{site}/{device}/{metric}"
//! ```

use std::num::{NonZeroU16, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::config::{duration, ConfigError, VarStr};
use tributary_core::retry::RetryPolicy;

use crate::topic::TopicTemplate;
pub use tributary_formats::payload::PayloadFormat;

/// Configuration of the MQTT source. Every field is documented here: this is the reference.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// The broker: `host:port`, `mqtt://host:port` (port 1883 when left out) or, over TLS,
    /// `mqtts://host:port` (port 8883 when left out; see `tls`). `${ENV}` templates allowed.
    pub broker: VarStr,
    /// TLS settings for an `mqtts://` broker: the CA to trust (default: the system's roots)
    /// and an optional client certificate. An `mqtts://` broker needs no `tls:` block when
    /// its certificate chains to a system root.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `v5` (default) or `v3.1.1`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Topic filters, with `+` (one level) and `#` (the rest) wildcards. A filter written
    /// `$share/GROUP/filter` is a shared subscription: the broker spreads its messages over
    /// the processes subscribed with the same GROUP (give each its own `client_id`).
    pub topics: Vec<String>,
    /// The subscription's maximum QoS: 0 (at most once: nothing is acknowledged, a crash loses
    /// what was not written), 1 (default: at least once) or 2 (exactly once between broker and
    /// Tributary). With 1 and 2 the source acknowledges a message only after it is durable.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The client identifier, which keys the broker's session (default `tributary-<pipeline>`).
    /// Two processes must never share one: the broker would disconnect one for the other.
    #[serde(default)]
    pub client_id: Option<VarStr>,
    /// User name, if the broker asks for one.
    #[serde(default)]
    pub username: Option<VarStr>,
    /// Password (write `${ENV_VAR}` or `${file:/run/secrets/mqtt}`, never the value).
    #[serde(default)]
    pub password: Option<VarStr>,
    /// Start a new session, dropping what the broker kept for this client id (default
    /// `false`: the session persists, so messages published while Tributary is stopped are
    /// delivered when it comes back).
    #[serde(default)]
    pub clean_start: bool,
    /// MQTT 5: how long the broker keeps the session (and queues messages for it) after a
    /// disconnect (default `1d`). MQTT 3.1.1 sessions last until the broker expires them
    /// (Mosquitto: `persistent_client_expiration`).
    #[serde(default = "default_session_expiry", with = "duration")]
    pub session_expiry: Duration,
    /// Keep-alive interval (default `30s`).
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
    /// QoS 1/2 messages the broker may have sent without an acknowledgement. MQTT 5: sent to
    /// the broker as Receive Maximum (default 1000). MQTT 3.1.1 cannot negotiate it: set the
    /// broker's own limit here (default 20, Mosquitto's `max_inflight_messages`). Since a
    /// message is acknowledged only once durable, the source asks for a flush and commit when
    /// half of this window is waiting, instead of stalling until `commit_interval`.
    #[serde(default)]
    pub max_inflight: Option<NonZeroU16>,
    /// Most messages per batch (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Longest a received message waits for its batch to fill (default `1s`). The pipeline's
    /// `commit_interval` then bounds the time until it is durable.
    #[serde(default = "default_batch_timeout", with = "duration")]
    pub batch_timeout: Duration,
    /// What payloads hold: `json` (default: one object per message, columns inferred and
    /// evolved under the pipeline's `schema_policy`), `text` (UTF-8, one `payload` column) or
    /// `bytes` (one binary `payload` column).
    #[serde(default)]
    pub format: PayloadFormat,
    /// Topic levels as columns: `sensors/{site}/{device}/{metric}` adds string columns `site`,
    /// `device` and `metric`; `+` skips a level, a final `#` accepts any rest. A message whose
    /// topic does not match goes to the dead-letter destination.
    #[serde(default)]
    pub topic_template: Option<String>,
    /// Ingest retained messages the broker sends when the subscription is made (default
    /// `false`: they are acknowledged and skipped; only messages published live are read).
    #[serde(default)]
    pub retained: bool,
    /// The stream name: state key and output folder (default `mqtt`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Metadata columns added to every row.
    #[serde(default)]
    pub metadata: MetadataColumns,
    /// Reconnecting after the connection is lost or refused (default: delays from 200ms up
    /// to 30s, give up after an hour without a connection). Refused credentials stop at once.
    #[serde(default = "default_reconnect")]
    pub reconnect: RetryPolicy,
}

/// TLS settings (`source.tls`). Paths are PEM files, relative to the working directory.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate authorities to trust for the broker's certificate (default: the system's
    /// root certificates).
    #[serde(default)]
    pub ca_file: Option<VarStr>,
    /// Certificate chain presented to the broker (mutual TLS); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<VarStr>,
    /// Private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<VarStr>,
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5: session expiry, receive maximum, user properties.
    #[default]
    #[serde(rename = "v5")]
    V5,
    /// MQTT 3.1.1.
    #[serde(rename = "v3.1.1", alias = "v311")]
    V311,
}

/// Names of the metadata columns; `null` leaves a column out.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataColumns {
    /// The topic the message was published to (default `_topic`).
    pub topic: Option<String>,
    /// When Tributary received it, UTC milliseconds (default `_received_at`).
    pub received_at: Option<String>,
    /// The QoS it was delivered with (default: left out).
    pub qos: Option<String>,
    /// Whether it was a retained message (default: left out).
    pub retain: Option<String>,
    /// MQTT 5 user properties as a string → string map (default `_properties`; always
    /// empty under MQTT 3.1.1).
    pub user_properties: Option<String>,
}

impl Default for MetadataColumns {
    fn default() -> Self {
        MetadataColumns {
            topic: Some("_topic".into()),
            received_at: Some("_received_at".into()),
            qos: None,
            retain: None,
            user_properties: Some("_properties".into()),
        }
    }
}

impl MetadataColumns {
    /// The configured column names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [
            &self.topic,
            &self.received_at,
            &self.qos,
            &self.retain,
            &self.user_properties,
        ]
        .into_iter()
        .filter_map(|n| n.as_deref())
    }
}

fn default_qos() -> u8 {
    1
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_stream() -> String {
    "mqtt".into()
}
fn default_reconnect() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        max_elapsed: Duration::from_secs(3600),
        ..RetryPolicy::default()
    }
}

impl MqttSourceConfig {
    /// A config with defaults for `broker` and `topics`.
    pub fn new(broker: impl Into<String>, topics: &[&str]) -> Self {
        MqttSourceConfig {
            broker: VarStr::new(broker.into()),
            tls: None,
            protocol: Protocol::default(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            qos: default_qos(),
            client_id: None,
            username: None,
            password: None,
            clean_start: false,
            session_expiry: default_session_expiry(),
            keep_alive: default_keep_alive(),
            max_inflight: None,
            batch_size: default_batch_size(),
            batch_timeout: default_batch_timeout(),
            format: PayloadFormat::default(),
            topic_template: None,
            retained: false,
            stream: default_stream(),
            metadata: MetadataColumns::default(),
            reconnect: default_reconnect(),
        }
    }

    /// The in-flight window in effect.
    pub fn window(&self) -> u16 {
        match (self.max_inflight, self.protocol) {
            (Some(n), _) => n.get(),
            (None, Protocol::V5) => 1000,
            (None, Protocol::V311) => 20,
        }
    }

    /// Checks what serde cannot; returns the parsed topic template.
    pub fn validate(&self) -> Result<Option<TopicTemplate>, ConfigError> {
        let bad = |field: &str, message: String| ConfigError::Value {
            field: format!("source.{field}"),
            message,
        };
        if self.topics.is_empty() {
            return Err(bad("topics", "give at least one topic filter".into()));
        }
        for t in &self.topics {
            crate::topic::validate_filter(t).map_err(|m| bad("topics", format!("{t:?}: {m}")))?;
        }
        if self.qos > 2 {
            return Err(bad("qos", format!("{} is not 0, 1 or 2", self.qos)));
        }
        if self.batch_timeout.is_zero() {
            return Err(bad("batch_timeout", "must be longer than zero".into()));
        }
        if self.stream.is_empty() {
            return Err(bad("stream", "must not be empty".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(bad("password", "a password needs a username".into()));
        }
        if self.session_expiry.as_secs() > u64::from(u32::MAX) {
            return Err(bad("session_expiry", "at most 136 years".into()));
        }
        let template = match &self.topic_template {
            Some(t) => Some(
                TopicTemplate::parse(t)
                    .map_err(|m| bad("topic_template", format!("{t:?}: {m}")))?,
            ),
            None => None,
        };
        let mut names: Vec<&str> = self.metadata.names().collect();
        if let Some(t) = &template {
            names.extend(t.columns());
        }
        if self.format != PayloadFormat::Json {
            names.push("payload");
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &names {
            if n.is_empty() {
                return Err(bad("metadata", "column names must not be empty".into()));
            }
            if !seen.insert(*n) {
                return Err(bad(
                    "metadata",
                    format!("column `{n}` is named twice (topic template, metadata or payload)"),
                ));
            }
        }
        Ok(template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<MqttSourceConfig, ConfigError> {
        tributary_core::config::parse_yaml(std::path::Path::new("p.yaml"), yaml)
    }

    #[test]
    fn defaults_and_versions_parse() {
        let c = parse("broker: 127.0.0.1:1883\ntopics: [a/#]\n").unwrap();
        assert_eq!((c.protocol, c.qos, c.window()), (Protocol::V5, 1, 1000));
        assert_eq!(c.metadata.topic.as_deref(), Some("_topic"));
        let c = parse(
            "broker: b:1\ntopics: [a]\nprotocol: v3.1.1\nmetadata: { topic: null, qos: q }\n",
        )
        .unwrap();
        assert_eq!((c.protocol, c.window()), (Protocol::V311, 20));
        assert_eq!(c.metadata.topic, None);
        assert_eq!(c.metadata.qos.as_deref(), Some("q"));
        assert_eq!(c.metadata.received_at.as_deref(), Some("_received_at"));
    }

    #[test]
    fn bad_values_are_named() {
        let c = parse("broker: b:1\ntopics: [a]\nqos: 3\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("source.qos: 3"));
        let c = parse("broker: b:1\ntopics: [a/#/b]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("source.topics") && e.contains('#'), "{e}");
        let c = parse("broker: b:1\ntopics: [a]\ntopic_template: \"{x}/{_topic}\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`_topic` is named twice"), "{e}");
        let e = parse("broker: b:1\ntopics: [a]\nqoss: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `qoss`"), "{e}");
    }
}
