//! # tributary-http: REST APIs as a source
//!
//! [`HttpSource`] reads a JSON API page by page into Arrow batches (schema inferred and
//! evolved by `tributary_formats::json::StreamDecoder` under the pipeline's policy) and keeps
//! a resumable position per stream: killed at any point, the next run asks for the page after
//! the last durable batch.
//!
//! - [`config`]: the `kind: http` configuration: URL, params, records pointer, paginators
//!   (offset/limit, page number, body cursor, header cursor, next URL, RFC 8288 `Link`), stop
//!   conditions, auth, rate limits, retries, incremental cursors.
//! - [`client`]: requests: credentials only to the configured origin (redirects are
//!   followed by hand so this holds for them too), a token bucket per host (`governor`),
//!   `Retry-After` and `X-RateLimit-*`, backoff with full jitter (the core's
//!   [`tributary_core::retry::Backoff`]), timeouts, bounded bodies.
//! - `page`: records and pagination values found by JSON pointer, as slices of the body.
//! - [`source`]: passes, positions, incremental bookkeeping, parallel pages, dependent
//!   resources (child endpoints per parent record, as their own streams).
//!
//! Errors: 429, 503, other 5xx, 408, timeouts and broken connections are retried; a 401
//! stops the run (check the credentials); any other 4xx, a body that is not JSON, or one over
//! `max_response_bytes` goes to the dead-letter destination with the URL (secrets redacted),
//! the status and the start of the body. Addressable pages (offsets, page numbers) go on
//! after a dead-lettered page; the other paginators end the run there, and the next run asks
//! for that page again.

pub mod client;
pub mod config;
mod page;
pub mod source;

pub use client::HttpError;
pub use config::{
    AuthConfig, ChildConfig, HttpSourceConfig, Incremental, KeyLocation, Paginator, RateLimit,
    StopConditions,
};
pub use source::{HttpPosition, HttpSource, Next};
