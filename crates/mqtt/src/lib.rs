//! # tributary-mqtt: MQTT subscriptions into batches, with no message lost across restarts
//!
//! [`MqttSource`] subscribes to topic filters on an MQTT 3.1.1 or 5 broker and turns messages
//! into Arrow batches: JSON payloads into inferred, evolving columns (under the pipeline's
//! `schema_policy`), or UTF-8 text, or raw bytes; topic levels into columns by a template
//! (`sensors/{site}/{device}/{metric}`); topic, receive time, QoS, retain flag and MQTT 5 user
//! properties as metadata columns. A message that cannot become a row (not JSON, not UTF-8,
//! topic not matching the template) goes to the dead-letter destination with its topic and
//! the reason.
//!
//! ```yaml
//! source:
//!   kind: mqtt
//!   broker: 127.0.0.1:1883
//!   topics: [sensors/#]               # or $share/ingest/sensors/# across processes
//!   client_id: ingest-1
//!   topic_template: "sensors/{site}/{device}/{metric}"
//! ```
//!
//! Over TLS, with a password kept out of the file:
//!
//! ```yaml
//! source:
//!   kind: mqtt
//!   broker: mqtts://broker.example:8883
//!   tls: { ca_file: /etc/ssl/broker-ca.pem }   # default: the system's roots
//!   username: ingest
//!   password: ${MQTT_PASSWORD}
//!   topics: [sensors/#]
//! ```
//!
//! A broker whose certificate does not verify, and refused credentials, stop the pipeline at
//! once with the reason (retrying cannot fix them); the password never appears in messages.
//!
//! - [`config`]: the typed, documented configuration.
//! - [`source`]: batching, acknowledgement on commit, the position.
//! - `client` (private): rumqttc's event loop on its own task, connection epochs.
//! - `rows` (private): messages → Arrow.
//! - [`topic`]: filter validation and topic templates.
//! - `tls` (private): the rustls configuration for `mqtts://` brokers.
//!
//! ## What is guaranteed
//!
//! **No loss with QoS 1 and 2.** The source sets rumqttc's manual acknowledgements and sends
//! PUBACK (QoS 1) or PUBREC (QoS 2) for a message only after the runtime has committed a
//! position past it, that is after the sink made it durable and the dead letters before it
//! were flushed. A crash at any point before that leaves the message unacknowledged in the
//! broker's session, which redelivers it on the next connection. Sessions persist by default
//! (`clean_start: false`; MQTT 5 `session_expiry`, default one day), so messages published
//! while Tributary is stopped are queued by the broker and delivered when it returns. The
//! broker bounds that queue (Mosquitto: `max_queued_messages`, default 1000 per client; raise
//! it for long outages): what it drops was never ours to lose.
//!
//! **At least once, duplicates only in a narrow window.** The position is a local sequence
//! number (`{client_id, seq}`): the broker holds the real state, so the sequence only orders
//! batches and names output. After a crash the next run continues from the committed sequence
//! and the redelivered messages come first, so a file sink's first file has the name of the
//! crashed run's uncommitted file and replaces it. Duplicates remain possible when the process
//! dies between the commit and the broker receiving the acknowledgements, and when the
//! connection drops with messages in flight (they are written and also redelivered; see
//! below). QoS 0 messages are never acknowledged and can be lost in a crash, as QoS 0 allows.
//!
//! **Acks never cross connections.** Packet identifiers are per connection: an ack for a
//! message of a lost connection is dropped, never sent on the next one, where the same
//! identifier may name another, not yet durable, message.
//!
//! **The in-flight window.** A broker sends at most a window of unacknowledged QoS 1/2
//! messages (MQTT 5 Receive Maximum, set from `max_inflight`; for 3.1.1 the broker's own
//! setting, Mosquitto's `max_inflight_messages`, default 20). Because acks wait for durability,
//! a batch larger than the window would never fill: the broker would stop, and only the
//! `commit_interval` timer would move things on. So the source counts unacknowledged messages
//! and, each time half a window has arrived since the last request, emits its batch with
//! `commit_now` set: the runtime flushes and commits at once, the acks go out, and the broker
//! keeps sending while the next half arrives. Batches are therefore cut by `batch_size`, by
//! `batch_timeout` (bounded latency for a trickle) and by the window.
//!
//! **Graceful stop.** On SIGINT/SIGTERM the source emits what it holds, lets the runtime make
//! its final commit, acknowledges what it covers, and disconnects normally (the MQTT 5 session
//! and its queue stay for `session_expiry`).
//!
//! ## Why rumqttc
//!
//! It is the maintained pure-Rust MQTT client on tokio with both protocol versions, manual
//! acknowledgements and persistent sessions, and it builds without TLS (`default-features =
//! false` drops rustls) in a few seconds. paho-mqtt wraps the C library (a C build and
//! OpenSSL); mqtt-async-client and others are unmaintained. Two of its behaviours are handled
//! here: its 10 KiB default packet limit (raised to MQTT's maximum, or a large message would
//! disconnect and be redelivered forever), and a resent PUBREL of an earlier connection, which
//! it reports as an error on every reconnect (see `client`).

mod client;
pub mod config;
mod rows;
pub mod source;
mod tls;
pub mod topic;

pub use config::{MetadataColumns, MqttSourceConfig, PayloadFormat, Protocol};
pub use source::{MqttPosition, MqttSource};

use tributary_core::error::{Classify, ErrorClass};
use tributary_core::ConnectorError;

/// What can go wrong reading from MQTT. Each names the broker or the column.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker refused the connection (credentials, client id, protocol version).
    #[error("MQTT broker {broker} refused the connection: {reason} (check username/password, client_id and protocol)")]
    Refused {
        /// The broker address.
        broker: String,
        /// The CONNACK reason.
        reason: String,
    },
    /// The TLS handshake with the broker failed for good.
    #[error("MQTT broker {broker}: TLS handshake failed: {reason} (check tls.ca_file, the host name in the broker address and the broker's certificate)")]
    Tls {
        /// The broker address.
        broker: String,
        /// What rustls reported.
        reason: String,
    },
    /// The broker could not be reached.
    #[error("MQTT broker {broker} is unreachable: {error}")]
    Unreachable {
        /// The broker address.
        broker: String,
        /// The last error.
        error: String,
    },
    /// No connection within the reconnect budget.
    #[error("MQTT broker {broker}: no connection after {attempts} attempts (last error: {last}); the session keeps unacknowledged messages, run again once the broker is back")]
    GaveUp {
        /// The broker address.
        broker: String,
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The broker refused a subscription.
    #[error("MQTT broker {broker} refused the subscription to {filter:?}: {reason} (check the filter and the broker's ACL; shared subscriptions need MQTT 5 or a broker that supports them)")]
    SubscribeRefused {
        /// The broker address.
        broker: String,
        /// The topic filter.
        filter: String,
        /// The SUBACK reason.
        reason: String,
    },
    /// A payload field has the name of a column the source adds.
    #[error("payload field `{column}` has the name of a topic-template or metadata column: rename that column in `topic_template` or `metadata`")]
    ColumnClash {
        /// The column name.
        column: String,
    },
    /// The connection task ended unexpectedly.
    #[error("MQTT connection closed: {0}")]
    Closed(String),
    /// A bug: please report it.
    #[error("internal error in the MQTT source: {0}")]
    Internal(String),
}

impl Classify for MqttError {
    fn class(&self) -> ErrorClass {
        match self {
            MqttError::Unreachable { .. } | MqttError::GaveUp { .. } | MqttError::Closed(_) => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<MqttError> for ConnectorError {
    fn from(e: MqttError) -> Self {
        ConnectorError::classified(e)
    }
}
