//! # tributary-coap: CoAP resources and devices into batches
//!
//! Two sources for constrained devices speaking CoAP (RFC 7252) over UDP:
//!
//! - [`CoapSource`] (`kind: coap`) reads one remote resource, either by **observing** it
//!   (RFC 7641: one registration, then a notification per change; the registration is renewed
//!   when notifications stop for `reregister_after` or the Max-Age, and made anew on every
//!   start, since servers forget observers) or by **polling** it with GET every `interval`.
//!   Confirmable requests are retransmitted with RFC 7252's backoff; representations larger
//!   than a datagram are fetched block by block (RFC 7959 Block2).
//! - [`CoapEndpoint`] (`kind: coap_endpoint`) listens on UDP for devices that POST or PUT
//!   their readings, and answers a request **only once its reading is durable**, so a device
//!   that gets no answer retransmits instead of losing data; a retransmission (same message
//!   id) is written once. Large readings arrive block-wise (Block1).
//!
//! Payloads are JSON (columns inferred and evolved under the pipeline's `schema_policy`),
//! UTF-8 text or bytes ([`tributary_formats::payload`]); every row also gets `_path`,
//! `_source` (the peer's address) and `_received_at`. A payload that cannot be read goes to the
//! dead-letter destination, and a device that sent it gets 4.00 Bad Request with the reason.
//!
//! ## What is guaranteed
//! Observe and poll read the *current state* of a resource: CoAP servers keep no history, so
//! what changes while Tributary is stopped is not replayed (the first notification after a
//! restart carries the state at that time). The endpoint's answer is the device's receipt:
//! at least once, exactly once for retransmissions seen by one process.
//!
//! ## Why coap-lite on tokio UDP
//! coap-lite is a maintained, dependency-light codec for CoAP messages, options, Observe and
//! block values, and nothing more: the exchanges (retransmission, observe registration, when to
//! answer) are written here in a few hundred lines, because the one thing that matters for no
//! loss, answering a request only after the data is durable, is exactly what full CoAP
//! frameworks decide for you (the `coap` crate's server answers when its handler returns).
//!
//! Modules: [`config`], [`observe`] (the observe/poll source), [`endpoint`] (the receiving
//! endpoint), [`proto`] (URL and message helpers), [`rows`] (readings → batches, positions).

pub mod config;
pub mod endpoint;
pub mod observe;
pub mod proto;
pub mod rows;

pub use config::{CoapEndpointConfig, CoapSourceConfig, Mode};
pub use endpoint::CoapEndpoint;
pub use observe::CoapSource;
pub use rows::CoapPosition;

use tributary_core::error::{Classify, ErrorClass};

/// What can go wrong with CoAP.
#[derive(Debug, thiserror::Error)]
pub enum CoapError {
    /// A socket operation failed.
    #[error("CoAP {peer}: {error}")]
    Io {
        /// The peer or local address.
        peer: String,
        /// What happened.
        error: String,
    },
    /// A payload field has the name of a column the source adds.
    #[error("payload field `{column}` has the name of a column the CoAP source adds (_path, _source, _received_at)")]
    ColumnClash {
        /// The column name.
        column: String,
    },
    /// A bug: please report it.
    #[error("internal error in the CoAP source: {0}")]
    Internal(String),
}

impl Classify for CoapError {
    fn class(&self) -> ErrorClass {
        match self {
            CoapError::Io { .. } => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        }
    }
}
