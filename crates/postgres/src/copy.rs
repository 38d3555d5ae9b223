//! Binary `COPY … TO STDOUT` streams read as Arrow columns, one batch at a time.
//!
//! Shared by snapshots, incremental loads, parallel key ranges and the CDC source's initial
//! snapshot: [`CopyBatches`] checks the binary COPY header, decodes whole tuples with
//! [`RowDecoder`] as the server's chunks arrive, and hands out a [`Chunk`] every
//! `batch_rows` rows and at the trailer. A stream that ends without its trailer is an error,
//! never a short table.

use std::pin::Pin;

use arrow_array::ArrayRef;
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use crate::error::PgError;
use crate::types::{ColumnKind, RowDecoder, Tuple, COPY_HEADER};

/// One batch of decoded rows.
pub(crate) struct Chunk {
    /// The data columns.
    pub(crate) arrays: Vec<ArrayRef>,
    /// Rows with a value Arrow cannot hold: (row index, reason).
    pub(crate) bad: Vec<(usize, String)>,
    /// The last row's key columns, as PostgreSQL text.
    pub(crate) last_key: Vec<Option<String>>,
    /// Bytes received from the server for these rows (about).
    pub(crate) bytes: u64,
}

/// Reads a binary COPY stream a batch at a time.
pub(crate) struct CopyBatches {
    copy: Pin<Box<CopyOutStream>>,
    decoder: RowDecoder,
    buf: BytesMut,
    header_seen: bool,
    ended: bool,
    bytes: u64,
    batch_rows: usize,
    /// What is read (`public.orders`), for errors.
    what: String,
}

impl CopyBatches {
    /// Starts `sql` (a `COPY … TO STDOUT (FORMAT binary)` whose tuples are columns of `kinds`
    /// followed by `key_columns` text columns) on `client`.
    pub(crate) async fn start(
        client: &Client,
        sql: &str,
        what: &str,
        kinds: Vec<ColumnKind>,
        key_columns: usize,
        batch_rows: usize,
    ) -> Result<Self, PgError> {
        tracing::debug!(stream = %what, sql = %sql, "reading");
        let copy = client
            .copy_out(sql)
            .await
            .map_err(|e| PgError::query(format!("COPY {what}"), e))?;
        Ok(CopyBatches {
            copy: Box::pin(copy),
            decoder: RowDecoder::new(kinds, key_columns, batch_rows),
            buf: BytesMut::new(),
            header_seen: false,
            ended: false,
            bytes: 0,
            batch_rows,
            what: what.to_string(),
        })
    }

    /// The next batch: `batch_rows` rows, or what is left at the end; `None` once the
    /// trailer was read and every row handed out.
    pub(crate) async fn next(&mut self) -> Result<Option<Chunk>, PgError> {
        loop {
            if self.header_seen {
                while !self.ended && self.decoder.rows() < self.batch_rows {
                    match self
                        .decoder
                        .decode_tuple(&self.buf)
                        .map_err(|e| PgError::Data(format!("{}: {e}", self.what)))?
                    {
                        None => break,
                        Some((used, Tuple::End)) => {
                            self.buf.advance(used);
                            self.ended = true;
                        }
                        Some((used, Tuple::Row)) => self.buf.advance(used),
                    }
                }
                let rows = self.decoder.rows();
                if rows >= self.batch_rows || (self.ended && rows > 0) {
                    let (arrays, bad) = self.decoder.finish();
                    return Ok(Some(Chunk {
                        arrays,
                        bad,
                        last_key: self.decoder.last_key().to_vec(),
                        bytes: std::mem::take(&mut self.bytes),
                    }));
                }
                if self.ended {
                    return Ok(None);
                }
            }
            let Some(chunk) = self.copy.next().await else {
                return Err(PgError::Data(format!(
                    "{}: the COPY stream ended before its trailer",
                    self.what
                )));
            };
            let chunk = chunk.map_err(|e| PgError::query(format!("COPY {}", self.what), e))?;
            self.bytes += chunk.len() as u64;
            self.buf.extend_from_slice(&chunk);
            if !self.header_seen {
                self.read_header()?;
            }
        }
    }

    /// Skips the header (signature, flags, extension area) once it is buffered whole.
    fn read_header(&mut self) -> Result<(), PgError> {
        if self.buf.len() < COPY_HEADER.len() {
            return Ok(());
        }
        if self.buf[..11] != COPY_HEADER[..11] {
            return Err(PgError::Data(format!(
                "{}: not a binary COPY stream",
                self.what
            )));
        }
        let ext = u32::from_be_bytes(self.buf[15..19].try_into().expect("4 bytes")) as usize;
        if self.buf.len() < 19 + ext {
            return Ok(());
        }
        self.buf.advance(19 + ext);
        self.header_seen = true;
        Ok(())
    }
}
