//! Where pipelines remember how far they got.
//!
//! The [`StateStore`] keeps, per (pipeline, stream), the last committed source [`Position`],
//! the stream's schema history, and (for file sources) a ledger of ingested files.
//!
//! Contract: the runtime calls [`StateStore::commit_positions`] only after the data up to those
//! positions is durable in the sink, and always with positions later than the stored ones, so
//! stored progress never moves backward. A commit of several streams is atomic.
//!
//! [`SqliteStateStore`] is the embedded default: one SQLite file (`.tributary/state.db` next to
//! the pipeline file), WAL journal, `synchronous=FULL` so a committed position survives a
//! power cut. SQLite is bundled (compiled from source by `rusqlite`) so the binary has no
//! system dependency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::batch::Position;

/// A state store failure. Always fatal: without state we cannot promise anything.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or created.
    #[error("state store {path}: cannot open: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("state store {path}: {source}")]
    Query {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored value is not valid JSON (the file was edited by hand or is corrupt).
    #[error("state store {path}: corrupt value for {pipeline}/{stream}: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Pipeline.
        pipeline: String,
        /// Stream.
        stream: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The committed position of one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamState {
    /// The stream.
    pub stream: String,
    /// The last committed position.
    pub position: Position,
    /// When it was committed (seconds since the Unix epoch).
    pub updated_at: i64,
}

/// One version of a stream's schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaVersion {
    /// 1 for the first schema seen, then one more per change.
    pub version: u32,
    /// The schema as JSON (Arrow's serde form).
    pub schema: serde_json::Value,
    /// When it was recorded (seconds since the Unix epoch).
    pub recorded_at: i64,
}

/// One file in the ledger: ingested completely, identified by its size and modification time
/// (or object-store ETag) and, when asked for, a hash of its content.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// The file's name within its source (relative path or object key).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch, where the store has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Object-store ETag, where the store has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A fingerprint of the content: file sources store a hash of its first and last 64 KiB,
    /// which tells an append (same fingerprint over the old length) from a rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The source position after the file's last record, so an appended file resumes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Position>,
    /// A hash of the whole content (`xxh3:…`), when the source identifies files by content:
    /// a file whose metadata changed but whose content did not is not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
}

impl FileRecord {
    /// Whether `other` is the same version of the same file: same name, size, modification
    /// time and ETag.
    pub fn same_version(&self, other: &FileRecord) -> bool {
        self.path == other.path
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.etag == other.etag
    }
}

/// Positions, schema history and file ledger for pipelines.
pub trait StateStore: Send + Sync {
    /// The committed position of every stream of a pipeline.
    fn positions(&self, pipeline: &str) -> Result<Vec<StreamState>, StateError>;
    /// Atomically stores the positions of several streams and marks `files` (stream, file) as
    /// ingested in the ledger, in one transaction.
    fn commit_positions(
        &self,
        pipeline: &str,
        positions: &[(&str, &Position)],
        files: &[(&str, &FileRecord)],
    ) -> Result<(), StateError>;
    /// The file ledger of a stream: every file ingested completely.
    fn files(&self, pipeline: &str, stream: &str) -> Result<Vec<FileRecord>, StateError>;
    /// Forgets everything about a pipeline; returns how many rows were removed.
    fn reset(&self, pipeline: &str) -> Result<usize, StateError>;
    /// Records a stream's schema if it differs from the latest version; returns the latest
    /// version and whether this call added it.
    fn record_schema(
        &self,
        pipeline: &str,
        stream: &str,
        schema: &serde_json::Value,
    ) -> Result<(SchemaVersion, bool), StateError>;
    /// Every schema version of a stream, oldest first.
    fn schema_history(
        &self,
        pipeline: &str,
        stream: &str,
    ) -> Result<Vec<SchemaVersion>, StateError>;
}

/// The embedded SQLite state store.
pub struct SqliteStateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS positions (
    pipeline   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    position   TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, stream)
);
CREATE TABLE IF NOT EXISTS schemas (
    pipeline    TEXT NOT NULL,
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    schema      TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, stream, version)
);
-- The file ledger: each file a file source has seen, so a re-run ingests only new or changed
-- files. Filled by the file connectors.
CREATE TABLE IF NOT EXISTS files (
    pipeline   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    path       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER,
    etag       TEXT,
    hash       TEXT,
    end_position TEXT,
    content_hash TEXT,
    status     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, stream, path)
);
";

impl SqliteStateStore {
    /// Opens (creating the file and its folder if needed) a state database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    dir.display()
                ))))
            })?;
        }
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        // Databases from before `content_hash` existed get the column.
        let has_content_hash = conn
            .prepare("SELECT 1 FROM pragma_table_info('files') WHERE name = 'content_hash'")
            .and_then(|mut s| s.exists([]))
            .map_err(open_err)?;
        if !has_content_hash {
            conn.execute_batch("ALTER TABLE files ADD COLUMN content_hash TEXT")
                .map_err(open_err)?;
        }
        Ok(SqliteStateStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn query_err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError::Query {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for SqliteStateStore {
    fn positions(&self, pipeline: &str) -> Result<Vec<StreamState>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stream, position, updated_at FROM positions WHERE pipeline = ?1 ORDER BY stream",
            )
            .map_err(self.query_err())?;
        let rows = stmt
            .query_map([pipeline], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })
            .map_err(self.query_err())?;
        let mut out = Vec::new();
        for row in rows {
            let (stream, text, updated_at) = row.map_err(self.query_err())?;
            let position =
                Position::from_json_str(&text).map_err(|source| StateError::Corrupt {
                    path: self.path.clone(),
                    pipeline: pipeline.to_string(),
                    stream: stream.clone(),
                    source,
                })?;
            out.push(StreamState {
                stream,
                position,
                updated_at,
            });
        }
        Ok(out)
    }

    fn commit_positions(
        &self,
        pipeline: &str,
        positions: &[(&str, &Position)],
        files: &[(&str, &FileRecord)],
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.query_err())?;
        if !files.is_empty() {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO files (pipeline, stream, path, size, mtime_ns, etag, hash, end_position, content_hash, status, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, 'done', ?9)
                     ON CONFLICT (pipeline, stream, path) DO UPDATE SET size = excluded.size,
                     mtime_ns = excluded.mtime_ns, etag = excluded.etag, hash = excluded.hash,
                     end_position = excluded.end_position, content_hash = excluded.content_hash,
                     status = excluded.status, updated_at = excluded.updated_at",
                )
                .map_err(self.query_err())?;
            let ts = now();
            for (stream, f) in files {
                stmt.execute(params![
                    pipeline,
                    stream,
                    f.path,
                    f.size as i64,
                    f.mtime_ns,
                    f.etag,
                    f.hash,
                    f.end.as_ref().map(Position::to_json_string),
                    ts,
                    f.content_hash,
                ])
                .map_err(self.query_err())?;
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO positions (pipeline, stream, position, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline, stream) DO UPDATE SET position = excluded.position,
                     updated_at = excluded.updated_at",
                )
                .map_err(self.query_err())?;
            let ts = now();
            for (stream, position) in positions {
                stmt.execute(params![pipeline, stream, position.to_json_string(), ts])
                    .map_err(self.query_err())?;
            }
        }
        tx.commit().map_err(self.query_err())
    }

    fn files(&self, pipeline: &str, stream: &str) -> Result<Vec<FileRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT path, size, mtime_ns, etag, hash, end_position, content_hash FROM files
                 WHERE pipeline = ?1 AND stream = ?2 AND status = 'done' ORDER BY path",
            )
            .map_err(self.query_err())?;
        let rows = stmt
            .query_map([pipeline, stream], |r| {
                Ok(FileRecord {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    etag: r.get(3)?,
                    hash: r.get(4)?,
                    end: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|t| Position::from_json_str(&t).ok()),
                    content_hash: r.get(6)?,
                })
            })
            .map_err(self.query_err())?;
        rows.collect::<Result<_, _>>().map_err(self.query_err())
    }

    fn reset(&self, pipeline: &str) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.query_err())?;
        let mut n = 0;
        for table in ["positions", "schemas", "files"] {
            n += tx
                .execute(
                    &format!("DELETE FROM {table} WHERE pipeline = ?1"),
                    [pipeline],
                )
                .map_err(self.query_err())?;
        }
        tx.commit().map_err(self.query_err())?;
        Ok(n)
    }

    fn record_schema(
        &self,
        pipeline: &str,
        stream: &str,
        schema: &serde_json::Value,
    ) -> Result<(SchemaVersion, bool), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.query_err())?;
        let latest: Option<(u32, String, i64)> = tx
            .query_row(
                "SELECT version, schema, recorded_at FROM schemas WHERE pipeline = ?1 AND stream = ?2
                 ORDER BY version DESC LIMIT 1",
                [pipeline, stream],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.query_err())?;
        let corrupt = |source| StateError::Corrupt {
            path: self.path.clone(),
            pipeline: pipeline.to_string(),
            stream: stream.to_string(),
            source,
        };
        if let Some((version, text, recorded_at)) = &latest {
            let stored: serde_json::Value = serde_json::from_str(text).map_err(corrupt)?;
            if &stored == schema {
                return Ok((
                    SchemaVersion {
                        version: *version,
                        schema: stored,
                        recorded_at: *recorded_at,
                    },
                    false,
                ));
            }
        }
        let version = latest.map_or(1, |l| l.0 + 1);
        let ts = now();
        tx.execute(
            "INSERT INTO schemas (pipeline, stream, version, schema, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![pipeline, stream, version, schema.to_string(), ts],
        )
        .map_err(self.query_err())?;
        tx.commit().map_err(self.query_err())?;
        Ok((
            SchemaVersion {
                version,
                schema: schema.clone(),
                recorded_at: ts,
            },
            true,
        ))
    }

    fn schema_history(
        &self,
        pipeline: &str,
        stream: &str,
    ) -> Result<Vec<SchemaVersion>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, schema, recorded_at FROM schemas WHERE pipeline = ?1 AND stream = ?2 ORDER BY version",
            )
            .map_err(self.query_err())?;
        let rows = stmt
            .query_map([pipeline, stream], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.query_err())?;
        let mut out = Vec::new();
        for row in rows {
            let (version, text, recorded_at) = row.map_err(self.query_err())?;
            let schema = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                pipeline: pipeline.to_string(),
                stream: stream.to_string(),
                source,
            })?;
            out.push(SchemaVersion {
                version,
                schema,
                recorded_at,
            });
        }
        Ok(out)
    }
}

/// Positions keyed by stream, as handed to a source on start.
pub fn checkpoints(states: Vec<StreamState>) -> BTreeMap<String, Position> {
    states.into_iter().map(|s| (s.stream, s.position)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_reopen_and_reset_clears_one_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");
        let p1 = Position::encode(&serde_json::json!({"offset": 10})).unwrap();
        let p2 = Position::encode(&serde_json::json!({"offset": 20})).unwrap();
        {
            let store = SqliteStateStore::open(&path).unwrap();
            store
                .commit_positions("a", &[("s1", &p1), ("s2", &p1)], &[])
                .unwrap();
            store.commit_positions("a", &[("s1", &p2)], &[]).unwrap();
            store.commit_positions("b", &[("s1", &p1)], &[]).unwrap();
        }
        let store = SqliteStateStore::open(&path).unwrap();
        let got = checkpoints(store.positions("a").unwrap());
        assert_eq!(got.get("s1"), Some(&p2));
        assert_eq!(got.get("s2"), Some(&p1));
        assert_eq!(store.reset("a").unwrap(), 2);
        assert!(store.positions("a").unwrap().is_empty());
        assert_eq!(store.positions("b").unwrap().len(), 1);
    }

    #[test]
    fn the_ledger_is_written_with_positions_and_updated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(dir.path().join("s.db")).unwrap();
        let p = Position::encode(&serde_json::json!({"offset": 1})).unwrap();
        let v1 = FileRecord {
            path: "in/a.csv".into(),
            size: 10,
            mtime_ns: Some(5),
            etag: None,
            hash: Some("fp".into()),
            end: Some(p.clone()),
            content_hash: None,
        };
        store
            .commit_positions("p", &[("s", &p)], &[("s", &v1)])
            .unwrap();
        assert_eq!(store.files("p", "s").unwrap(), vec![v1.clone()]);
        assert!(store.files("p", "other").unwrap().is_empty());
        let v2 = FileRecord {
            size: 20,
            content_hash: Some("xxh3:1".into()),
            ..v1.clone()
        };
        assert!(!v1.same_version(&v2));
        store.commit_positions("p", &[], &[("s", &v2)]).unwrap();
        assert_eq!(store.files("p", "s").unwrap(), vec![v2]);
        assert_eq!(store.reset("p").unwrap(), 2);
        assert!(store.files("p", "s").unwrap().is_empty());
    }

    #[test]
    fn schema_versions_only_grow_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(dir.path().join("s.db")).unwrap();
        let v1 = serde_json::json!({"fields": ["a"]});
        let v2 = serde_json::json!({"fields": ["a", "b"]});
        assert_eq!(store.record_schema("p", "s", &v1).unwrap().0.version, 1);
        let (again, added) = store.record_schema("p", "s", &v1).unwrap();
        assert_eq!((again.version, added), (1, false));
        let (next, added) = store.record_schema("p", "s", &v2).unwrap();
        assert_eq!((next.version, added), (2, true));
        let history = store.schema_history("p", "s").unwrap();
        assert_eq!(
            history.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(history[1].schema, v2);
    }
}
