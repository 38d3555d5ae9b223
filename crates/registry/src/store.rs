//! Where the registry keeps its state: behind [`RegistryStore`], a log of puts and deletes of
//! schema versions and configs, replayed into memory at start ([`RegistryStore::load`]).
//!
//! The shape is the one Confluent's own registry keeps in its compacted `_schemas` topic (a
//! key per subject version and per config, the latest value wins, a deleted key is a
//! tombstone), so a compacted-Kafka-topic store fits the same trait: `load` reads the topic to
//! its end, each write produces one record and waits for its acknowledgement.
//! [`SqliteRegistryStore`] is the embedded default.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use crate::types::{Compatibility, Reference, SchemaRecord, SchemaType};

/// A store failure. The registry answers 50001 and keeps its memory unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("registry store {path}: cannot open: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A read or write failed.
    #[error("registry store {path}: {message}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A store outside this process (a Kafka topic) failed or refused.
    #[error("registry store {location}: {message}")]
    Remote {
        /// Where (`kafka topic _schemas at 127.0.0.1:9092`).
        location: String,
        /// What failed.
        message: String,
    },
}

/// Everything a store holds, as replayed at start.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every stored schema version (soft-deleted ones included).
    pub schemas: Vec<SchemaRecord>,
    /// The global compatibility level, if set.
    pub global: Option<Compatibility>,
    /// Subject-level compatibility levels.
    pub subjects: Vec<(String, Compatibility)>,
    /// The lowest id never given out (ids of permanently deleted schemas are not reused for
    /// other content).
    pub next_id: u32,
}

/// Durable registry state. Each call is durable when it returns.
pub trait RegistryStore: Send + Sync {
    /// Reads everything (once, at start).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Stores a schema version (new, or its `deleted` flag changed).
    fn put_schema(&self, record: &SchemaRecord) -> Result<(), StoreError>;
    /// Removes a schema version for good (a permanent delete).
    fn remove_schema(&self, subject: &str, version: u32) -> Result<(), StoreError>;
    /// Sets (`Some`) or clears (`None`) the compatibility level of a subject, or the global
    /// one when `subject` is `None`.
    fn put_config(
        &self,
        subject: Option<&str>,
        level: Option<Compatibility>,
    ) -> Result<(), StoreError>;
    /// Everything again when other processes changed the store since the last `load` or
    /// `refresh` (a store shared through a Kafka topic); `None` when nothing changed, always
    /// for a store only this process writes (the default).
    fn refresh(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }
    /// The URL of the process that writes the store, when it is not this one (this one
    /// follows: changes are forwarded there); `None` when this process writes (the default).
    fn forward_to(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// A store that forgets everything when dropped (tests, `--state` not given).
#[derive(Default)]
pub struct MemoryStore;

impl RegistryStore for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn put_schema(&self, _: &SchemaRecord) -> Result<(), StoreError> {
        Ok(())
    }
    fn remove_schema(&self, _: &str, _: u32) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_config(&self, _: Option<&str>, _: Option<Compatibility>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The embedded store: one SQLite file (WAL, `synchronous=FULL`, like the pipelines' state
/// store), so ids, versions and configs survive restarts and power cuts.
pub struct SqliteRegistryStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registry_schemas (
    subject     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    id          INTEGER NOT NULL,
    schema_type TEXT NOT NULL,
    schema      TEXT NOT NULL,
    refs        TEXT NOT NULL,
    deleted     INTEGER NOT NULL,
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS registry_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- subject '' is the global level.
CREATE TABLE IF NOT EXISTS registry_config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
";

impl SqliteRegistryStore {
    /// Opens (creating the file and its folder if needed) a registry database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(&path).map_err(|e| err(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| err(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(&e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| err(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| err(&e))?;
        Ok(SqliteRegistryStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RegistryStore for SqliteRegistryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn();
        let mut snapshot = Snapshot::default();
        let mut stmt = conn
            .prepare(
                "SELECT subject, version, id, schema_type, schema, refs, deleted
                 FROM registry_schemas ORDER BY subject, version",
            )
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, bool>(6)?,
                ))
            })
            .map_err(|e| self.io(e))?;
        for row in rows {
            let (subject, version, id, ty, schema, refs, deleted) = row.map_err(|e| self.io(e))?;
            let schema_type: SchemaType = ty.parse().map_err(|e| self.io(e))?;
            let references: Vec<Reference> = serde_json::from_str(&refs)
                .map_err(|e| self.io(format!("{subject} v{version}: corrupt references: {e}")))?;
            snapshot.schemas.push(SchemaRecord {
                subject,
                version,
                id,
                schema_type,
                schema,
                references,
                deleted,
            });
        }
        snapshot.next_id = conn
            .query_row(
                "SELECT value FROM registry_meta WHERE key = 'next_id'",
                [],
                |row| row.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(1),
                e => Err(e),
            })
            .map_err(|e| self.io(e))?;
        let mut stmt = conn
            .prepare("SELECT subject, compatibility FROM registry_config")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.io(e))?;
        for row in rows {
            let (subject, level) = row.map_err(|e| self.io(e))?;
            let level: Compatibility = level.parse().map_err(|e| self.io(e))?;
            if subject.is_empty() {
                snapshot.global = Some(level);
            } else {
                snapshot.subjects.push((subject, level));
            }
        }
        Ok(snapshot)
    }

    fn put_schema(&self, r: &SchemaRecord) -> Result<(), StoreError> {
        let refs = serde_json::to_string(&r.references).expect("references serialize");
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        tx.execute(
                "INSERT INTO registry_schemas (subject, version, id, schema_type, schema, refs, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (subject, version) DO UPDATE SET deleted = excluded.deleted",
                params![
                    r.subject,
                    r.version,
                    r.id,
                    r.schema_type.as_str(),
                    r.schema,
                    refs,
                    r.deleted
                ],
            )
            .map_err(|e| self.io(e))?;
        tx.execute(
            "INSERT INTO registry_meta (key, value) VALUES ('next_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            params![r.id + 1],
        )
        .map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))?;
        Ok(())
    }

    fn remove_schema(&self, subject: &str, version: u32) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "DELETE FROM registry_schemas WHERE subject = ?1 AND version = ?2",
                params![subject, version],
            )
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    fn put_config(
        &self,
        subject: Option<&str>,
        level: Option<Compatibility>,
    ) -> Result<(), StoreError> {
        let subject = subject.unwrap_or("");
        let conn = self.conn();
        match level {
            Some(level) => conn.execute(
                "INSERT INTO registry_config (subject, compatibility) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
                params![subject, level.as_str()],
            ),
            None => conn.execute(
                "DELETE FROM registry_config WHERE subject = ?1",
                params![subject],
            ),
        }
        .map_err(|e| self.io(e))?;
        Ok(())
    }
}
