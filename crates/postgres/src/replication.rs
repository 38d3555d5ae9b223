//! A minimal client for PostgreSQL's streaming replication protocol (logical, `pgoutput`).
//!
//! `tokio-postgres` 0.7 cannot open a replication connection (`replication=database`) nor
//! speak the `CopyBoth` sub-protocol, and its backend message parser does not know
//! `CopyBothResponse`. This module does the little that logical replication needs on a plain
//! tokio TCP stream, with `postgres-protocol` (already in the tree through tokio-postgres) for
//! the frontend messages and the MD5/SCRAM authentication: startup, simple queries
//! (`CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT`), `START_REPLICATION`, `XLogData` and
//! keepalive messages in, standby status updates out. [`pgoutput`] decodes the change
//! messages.
//!
//! Reads are cancel-safe (partial messages stay in the connection's buffer), so the source
//! can `select!` between the server, the commit channel and a timer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;

use crate::error::PgError;

/// An error the server sent: SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// SQLSTATE (`42704`).
    pub code: String,
    /// The message.
    pub message: String,
}

/// One message from the server in replication mode.
pub enum ReplicationMessage {
    /// WAL data: the start LSN of the data and a `pgoutput` message.
    XLogData {
        /// Where this message starts in the WAL.
        start: u64,
        /// The end of the server's WAL when it sent this message.
        wal_end: u64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// The server is alive; `reply` asks for a status update now.
    Keepalive {
        /// The server's current WAL end.
        wal_end: u64,
        /// Answer at once.
        reply: bool,
    },
}

/// A replication connection.
pub struct ReplicationConnection {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

fn io_err(what: &str, e: std::io::Error) -> PgError {
    PgError::Replication {
        what: what.to_string(),
        code: None,
        message: e.to_string(),
    }
}

impl ReplicationConnection {
    /// Connects to the database of `url` with `replication=database`.
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| PgError::query("parse the connection string", e))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(_) => {
                return Err(PgError::Invalid(
                    "change data capture needs a TCP host (not a Unix socket)".into(),
                ))
            }
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let db = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        let password = config.get_password().map(<[u8]>::to_vec);
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| io_err("connect for replication", e))?;
        stream.set_nodelay(true).ok();
        let mut conn = ReplicationConnection {
            stream,
            buf: BytesMut::with_capacity(1 << 16),
            out: BytesMut::new(),
        };
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("database", db.as_str()),
                ("replication", "database"),
                ("client_encoding", "UTF8"),
                ("application_name", "tributary"),
            ],
            &mut conn.out,
        )
        .map_err(|e| io_err("startup", e))?;
        conn.send().await?;
        conn.authenticate(&user, password.as_deref()).await?;
        Ok(conn)
    }

    async fn send(&mut self) -> Result<(), PgError> {
        let out = self.out.split();
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| io_err("send to the server", e))
    }

    /// The next whole message in the buffer, if there is one.
    fn parse(&mut self) -> Option<(u8, Bytes)> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if self.buf.len() < 1 + len {
            return None;
        }
        let tag = self.buf[0];
        self.buf.advance(5);
        Some((tag, self.buf.split_to(len - 4).freeze()))
    }

    /// Reads the next message (cancel-safe).
    async fn next(&mut self) -> Result<(u8, Bytes), PgError> {
        loop {
            if let Some(m) = self.parse() {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_err("read from the server", e))?;
            if n == 0 {
                return Err(io_err(
                    "read from the server",
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
        }
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), PgError> {
        let need_password =
            || PgError::Invalid("the server asks for a password; put it in the URL".into());
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.next().await?;
            match tag {
                b'R' => {
                    let code = body.get_i32();
                    match code {
                        0 => {}
                        3 => {
                            frontend::password_message(
                                password.ok_or_else(need_password)?,
                                &mut self.out,
                            )
                            .map_err(|e| io_err("password", e))?;
                            self.send().await?;
                        }
                        5 => {
                            let salt: [u8; 4] = body[..4].try_into().unwrap();
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.ok_or_else(need_password)?,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.out)
                                .map_err(|e| io_err("password", e))?;
                            self.send().await?;
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.ok_or_else(need_password)?,
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut self.out,
                            )
                            .map_err(|e| io_err("SASL", e))?;
                            self.send().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                PgError::Data("SASL continue without a start".into())
                            })?;
                            s.update(&body).map_err(|e| io_err("SCRAM", e))?;
                            frontend::sasl_response(s.message(), &mut self.out)
                                .map_err(|e| io_err("SASL", e))?;
                            self.send().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                PgError::Data("SASL final without a start".into())
                            })?;
                            s.finish(&body).map_err(|e| io_err("SCRAM", e))?;
                        }
                        other => {
                            return Err(PgError::Invalid(format!(
                                "unsupported authentication method {other} for replication"
                            )))
                        }
                    }
                }
                b'E' => return Err(server_error("authenticate", &body)),
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    /// Runs a replication command or query; returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        frontend::query(sql, &mut self.out).map_err(|e| io_err("query", e))?;
        self.send().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, mut body) = self.next().await?;
            match tag {
                b'D' => {
                    let n = body.get_i16();
                    let mut row = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let len = body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = body.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(sql, &body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION …` and waits for the server to switch to CopyBoth.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.out).map_err(|e| io_err("query", e))?;
        self.send().await?;
        loop {
            let (tag, body) = self.next().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(sql, &body)),
                _ => {}
            }
        }
    }

    /// The next replication message (cancel-safe).
    pub async fn recv(&mut self) -> Result<ReplicationMessage, PgError> {
        loop {
            let (tag, mut body) = self.next().await?;
            match tag {
                b'd' => {
                    if body.is_empty() {
                        continue;
                    }
                    match body.get_u8() {
                        b'w' => {
                            let start = body.get_u64();
                            let wal_end = body.get_u64();
                            let _clock = body.get_i64();
                            return Ok(ReplicationMessage::XLogData {
                                start,
                                wal_end,
                                data: body,
                            });
                        }
                        b'k' => {
                            let wal_end = body.get_u64();
                            let _clock = body.get_i64();
                            let reply = body.get_u8() != 0;
                            return Ok(ReplicationMessage::Keepalive { wal_end, reply });
                        }
                        _ => continue,
                    }
                }
                b'E' => return Err(server_error("replication stream", &body)),
                b'c' => {
                    return Err(PgError::Replication {
                        what: "replication stream".into(),
                        code: None,
                        message: "the server ended the stream".into(),
                    })
                }
                _ => {}
            }
        }
    }

    /// Tells the server that everything up to `flushed` is durable (it may free the WAL).
    pub async fn send_status(&mut self, flushed: u64) -> Result<(), PgError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(flushed);
        msg.put_u64(flushed);
        msg.put_u64(flushed);
        msg.put_i64(pg_now_micros());
        msg.put_u8(0);
        self.out.put_u8(b'd');
        self.out.put_i32(4 + msg.len() as i32);
        self.out.put_slice(&msg);
        self.send().await
    }
}

/// Microseconds since 2000-01-01 (the replication protocol's clock).
fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64;
    unix - 946_684_800_000_000
}

fn server_error(what: &str, body: &[u8]) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    PgError::Replication {
        what: what.to_string(),
        code: Some(code),
        message,
    }
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// `pgoutput` messages (protocol version 1), the ones change data capture needs.
pub mod pgoutput {
    use bytes::{Buf, Bytes};

    /// A column of a relation.
    #[derive(Clone, Debug)]
    pub struct RelColumn {
        /// Part of the replica identity (the key).
        pub key: bool,
        /// Its name.
        pub name: String,
        /// Its type's OID.
        pub type_oid: u32,
        /// Its type modifier.
        pub typmod: i32,
    }

    /// A relation (table) description, sent before its first change in a session and after
    /// its columns change.
    #[derive(Clone, Debug)]
    pub struct Relation {
        /// Its OID.
        pub oid: u32,
        /// Its schema.
        pub schema: String,
        /// Its name.
        pub name: String,
        /// `d` default, `f` full, `i` index, `n` nothing.
        pub replica_identity: u8,
        /// Its columns.
        pub columns: Vec<RelColumn>,
    }

    /// One value in a tuple.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        /// SQL null.
        Null,
        /// A TOASTed value that did not change (not sent).
        Unchanged,
        /// The value's text.
        Text(String),
    }

    /// A decoded message.
    #[derive(Debug)]
    pub enum Message {
        /// A transaction begins.
        Begin {
            /// Its commit LSN.
            final_lsn: u64,
            /// Commit time, µs since 2000-01-01.
            ts: i64,
            /// Transaction id.
            xid: u32,
        },
        /// A transaction committed.
        Commit {
            /// The LSN just past the commit record (where to resume after it).
            end_lsn: u64,
        },
        /// A relation description.
        Relation(Relation),
        /// An insert.
        Insert {
            /// The relation.
            oid: u32,
            /// The new row.
            new: Vec<Value>,
        },
        /// An update; `old` is the old key (key changed) or whole row (`REPLICA IDENTITY
        /// FULL`).
        Update {
            /// The relation.
            oid: u32,
            /// The old key or row, when sent.
            old: Option<Vec<Value>>,
            /// The new row.
            new: Vec<Value>,
        },
        /// A delete: the old key (or whole row with `FULL`).
        Delete {
            /// The relation.
            oid: u32,
            /// The old key or row.
            old: Vec<Value>,
        },
        /// Tables truncated.
        Truncate {
            /// The relations.
            oids: Vec<u32>,
        },
        /// Anything else (types, origins, logical messages).
        Other,
    }

    fn cstr(b: &mut Bytes) -> Result<String, String> {
        let end = b
            .iter()
            .position(|c| *c == 0)
            .ok_or("unterminated string")?;
        let s = String::from_utf8_lossy(&b[..end]).into_owned();
        b.advance(end + 1);
        Ok(s)
    }

    fn need(b: &Bytes, n: usize) -> Result<(), String> {
        if b.remaining() < n {
            Err("truncated pgoutput message".into())
        } else {
            Ok(())
        }
    }

    fn tuple(b: &mut Bytes) -> Result<Vec<Value>, String> {
        need(b, 2)?;
        let n = b.get_i16();
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            need(b, 1)?;
            match b.get_u8() {
                b'n' => out.push(Value::Null),
                b'u' => out.push(Value::Unchanged),
                b't' | b'b' => {
                    need(b, 4)?;
                    let len = b.get_i32() as usize;
                    need(b, len)?;
                    let v = b.split_to(len);
                    out.push(Value::Text(String::from_utf8_lossy(&v).into_owned()));
                }
                other => return Err(format!("unknown tuple value kind {other}")),
            }
        }
        Ok(out)
    }

    /// Decodes one pgoutput message.
    pub fn decode(mut b: Bytes) -> Result<Message, String> {
        need(&b, 1)?;
        let tag = b.get_u8();
        Ok(match tag {
            b'B' => {
                need(&b, 20)?;
                Message::Begin {
                    final_lsn: b.get_u64(),
                    ts: b.get_i64(),
                    xid: b.get_u32(),
                }
            }
            b'C' => {
                need(&b, 25)?;
                let _flags = b.get_u8();
                let _commit_lsn = b.get_u64();
                let end_lsn = b.get_u64();
                Message::Commit { end_lsn }
            }
            b'R' => {
                need(&b, 4)?;
                let oid = b.get_u32();
                let schema = cstr(&mut b)?;
                let name = cstr(&mut b)?;
                need(&b, 3)?;
                let replica_identity = b.get_u8();
                let n = b.get_i16();
                let mut columns = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    need(&b, 1)?;
                    let flags = b.get_u8();
                    let name = cstr(&mut b)?;
                    need(&b, 8)?;
                    columns.push(RelColumn {
                        key: flags & 1 == 1,
                        name,
                        type_oid: b.get_u32(),
                        typmod: b.get_i32(),
                    });
                }
                Message::Relation(Relation {
                    oid,
                    schema,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'I' => {
                need(&b, 5)?;
                let oid = b.get_u32();
                let _n = b.get_u8();
                Message::Insert {
                    oid,
                    new: tuple(&mut b)?,
                }
            }
            b'U' => {
                need(&b, 5)?;
                let oid = b.get_u32();
                let mut kind = b.get_u8();
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    old = Some(tuple(&mut b)?);
                    need(&b, 1)?;
                    kind = b.get_u8();
                }
                if kind != b'N' {
                    return Err("update without a new tuple".into());
                }
                Message::Update {
                    oid,
                    old,
                    new: tuple(&mut b)?,
                }
            }
            b'D' => {
                need(&b, 5)?;
                let oid = b.get_u32();
                let _kind = b.get_u8();
                Message::Delete {
                    oid,
                    old: tuple(&mut b)?,
                }
            }
            b'T' => {
                need(&b, 5)?;
                let n = b.get_u32();
                let _options = b.get_u8();
                let mut oids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    need(&b, 4)?;
                    oids.push(b.get_u32());
                }
                Message::Truncate { oids }
            }
            _ => Message::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
    }
}
