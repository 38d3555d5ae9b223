//! The registry's rules, independent of HTTP: ids and versions, identity, soft and hard
//! deletes, references, configs, compatibility. State lives in memory (rebuilt from the
//! [`RegistryStore`] at start) and every change is written to the store before it is
//! applied in memory, so a store failure leaves both as they were.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::schema::{self, Parsed, Problem, Resolved};
use crate::store::{RegistryStore, StoreError};
use crate::types::{Compatibility, Reference, SchemaRecord, SchemaType};

/// A refusal, with Confluent's HTTP status and error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error {code})")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Confluent error code (40401, 42201, …).
    pub code: u32,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 40401.
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    /// 40402.
    pub fn version_not_found(subject: &str, version: impl std::fmt::Display) -> Self {
        Self::new(
            404,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }
    /// 40403.
    pub fn schema_not_found(what: impl std::fmt::Display) -> Self {
        Self::new(404, 40403, format!("Schema {what} not found."))
    }
    /// 42201.
    pub fn invalid_schema(message: impl std::fmt::Display) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {message}"))
    }
    /// 42202.
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    /// 42203.
    pub fn invalid_compatibility(level: &str) -> Self {
        Self::new(
            422,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive (got '{level}')"
            ),
        )
    }
    /// 422 for a request body that is not what the endpoint takes.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, 422, message)
    }
    /// 50001.
    pub fn store(error: StoreError) -> Self {
        Self::new(
            500,
            50001,
            format!("Error in the backend data store: {error}"),
        )
    }
}

/// Which version of a subject a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    /// The newest one (`latest` or `-1`).
    Latest,
    /// A number.
    Number(u32),
}

impl VersionSpec {
    /// Parses a path segment; 42202 when it is neither a positive 32-bit number nor `latest`.
    pub fn parse(s: &str) -> Result<VersionSpec, ApiError> {
        if s == "latest" || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<i64>() {
            Ok(n) if (1..=i32::MAX as i64).contains(&n) => Ok(VersionSpec::Number(n as u32)),
            _ => Err(ApiError::invalid_version(s)),
        }
    }
}

/// A schema as a request gives it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewSchema {
    /// The schema text.
    pub schema: String,
    /// Its kind.
    pub schema_type: SchemaType,
    /// What it refers to.
    pub references: Vec<Reference>,
}

/// The outcome of a compatibility test.
#[derive(Clone, Debug, PartialEq)]
pub struct CompatibilityReport {
    /// Whether the schema may be registered.
    pub is_compatible: bool,
    /// Confluent's verbose messages (problems, then the old version, the old schema and the
    /// level), empty when compatible.
    pub messages: Vec<String>,
}

#[derive(Default)]
struct State {
    /// subject → version → record (soft-deleted ones included).
    subjects: BTreeMap<String, BTreeMap<u32, SchemaRecord>>,
    /// Content → id, for every schema ever registered (ids are reused for the same content,
    /// across subjects and after deletes).
    ids: HashMap<(SchemaType, String, Vec<Reference>), u32>,
    next_id: u32,
    global: Option<Compatibility>,
    configs: HashMap<String, Compatibility>,
}

/// The schema registry.
pub struct Registry {
    state: Mutex<State>,
    store: Box<dyn RegistryStore>,
}

impl Registry {
    /// Rebuilds the registry from its store.
    pub fn open(store: Box<dyn RegistryStore>) -> Result<Registry, StoreError> {
        let snapshot = store.load()?;
        Ok(Registry {
            state: Mutex::new(Self::state_from(snapshot)),
            store,
        })
    }

    /// Takes in what other processes changed in a shared store (a Kafka topic) since the
    /// last look: a no-op for a store only this process writes.
    pub fn refresh(&self) -> Result<(), ApiError> {
        let mut st = self.state();
        if let Some(snapshot) = self.store.refresh().map_err(ApiError::store)? {
            *st = Self::state_from(snapshot);
        }
        Ok(())
    }

    /// Where changes must be sent when another process writes the shared store (its URL):
    /// `None` when this process writes.
    pub fn forward_to(&self) -> Result<Option<String>, ApiError> {
        self.store.forward_to().map_err(ApiError::store)
    }

    fn state_from(snapshot: crate::store::Snapshot) -> State {
        let mut state = State {
            next_id: 1,
            global: snapshot.global,
            configs: snapshot.subjects.into_iter().collect(),
            ..State::default()
        };
        for r in snapshot.schemas {
            state.next_id = state.next_id.max(r.id + 1);
            state.ids.insert(
                (r.schema_type, r.schema.clone(), r.references.clone()),
                r.id,
            );
            state
                .subjects
                .entry(r.subject.clone())
                .or_default()
                .insert(r.version, r);
        }
        state.next_id = state.next_id.max(snapshot.next_id);
        state
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The global compatibility level.
    pub fn global_compatibility(&self) -> Compatibility {
        self.state().global.unwrap_or_default()
    }

    /// A subject's own level (`None`: it follows the global one).
    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.state().configs.get(subject).copied()
    }

    /// Sets the global level (`None` resets it to the default); returns the previous one.
    pub fn set_global_compatibility(
        &self,
        level: Option<Compatibility>,
    ) -> Result<Compatibility, ApiError> {
        let mut st = self.state();
        self.store
            .put_config(None, level)
            .map_err(ApiError::store)?;
        let old = st.global.unwrap_or_default();
        st.global = level;
        Ok(old)
    }

    /// Sets (or with `None` removes) a subject's level; returns the previous one.
    pub fn set_subject_compatibility(
        &self,
        subject: &str,
        level: Option<Compatibility>,
    ) -> Result<Option<Compatibility>, ApiError> {
        let mut st = self.state();
        self.store
            .put_config(Some(subject), level)
            .map_err(ApiError::store)?;
        Ok(match level {
            Some(l) => st.configs.insert(subject.to_string(), l),
            None => st.configs.remove(subject),
        })
    }

    /// Subjects with at least one live version (or any version, with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.state()
            .subjects
            .iter()
            .filter(|(_, v)| v.values().any(|r| deleted || !r.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A subject's version numbers.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, ApiError> {
        let st = self.state();
        let versions: Vec<u32> = st
            .subjects
            .get(subject)
            .map(|v| {
                v.values()
                    .filter(|r| deleted || !r.deleted)
                    .map(|r| r.version)
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        version: VersionSpec,
        deleted: bool,
    ) -> Result<SchemaRecord, ApiError> {
        Self::find_version(&self.state(), subject, version, deleted)
    }

    fn find_version(
        st: &State,
        subject: &str,
        version: VersionSpec,
        deleted: bool,
    ) -> Result<SchemaRecord, ApiError> {
        let versions = st
            .subjects
            .get(subject)
            .filter(|v| v.values().any(|r| deleted || !r.deleted))
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let found = match version {
            VersionSpec::Latest => versions.values().rev().find(|r| deleted || !r.deleted),
            VersionSpec::Number(n) => versions.get(&n).filter(|r| deleted || !r.deleted),
        };
        found.cloned().ok_or_else(|| {
            ApiError::version_not_found(
                subject,
                match version {
                    VersionSpec::Latest => "latest".to_string(),
                    VersionSpec::Number(n) => n.to_string(),
                },
            )
        })
    }

    /// The schema with a global id: any version holding it (its type, text and references).
    pub fn schema_by_id(&self, id: u32) -> Result<SchemaRecord, ApiError> {
        self.state()
            .subjects
            .values()
            .flat_map(|v| v.values())
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| ApiError::schema_not_found(id))
    }

    /// The (subject, version) pairs holding an id.
    pub fn id_versions(&self, id: u32, deleted: bool) -> Result<Vec<(String, u32)>, ApiError> {
        let st = self.state();
        let all: Vec<&SchemaRecord> = st
            .subjects
            .values()
            .flat_map(|v| v.values())
            .filter(|r| r.id == id)
            .collect();
        if all.is_empty() {
            return Err(ApiError::schema_not_found(id));
        }
        Ok(all
            .into_iter()
            .filter(|r| deleted || !r.deleted)
            .map(|r| (r.subject.clone(), r.version))
            .collect())
    }

    /// Ids of the schemas that refer to a subject's version.
    pub fn referenced_by(&self, subject: &str, version: VersionSpec) -> Result<Vec<u32>, ApiError> {
        let st = self.state();
        let target = Self::find_version(&st, subject, version, false)?;
        Ok(Self::referrers(&st, &target)
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    fn referrers<'a>(st: &'a State, target: &SchemaRecord) -> Vec<&'a SchemaRecord> {
        let latest = st
            .subjects
            .get(&target.subject)
            .and_then(|v| v.values().rev().find(|r| !r.deleted))
            .map(|r| r.version);
        st.subjects
            .values()
            .flat_map(|v| v.values())
            .filter(|r| !r.deleted)
            .filter(|r| {
                r.references.iter().any(|x| {
                    x.subject == target.subject
                        && (x.version == target.version as i64
                            || (x.version == -1 && latest == Some(target.version)))
                })
            })
            .collect()
    }

    /// Resolves references transitively, dependencies first.
    fn resolve(
        st: &State,
        refs: &[Reference],
        out: &mut Vec<Resolved>,
        depth: usize,
    ) -> Result<(), ApiError> {
        if depth > 32 {
            return Err(ApiError::invalid_schema("references nest deeper than 32"));
        }
        for r in refs {
            let spec = if r.version == -1 {
                VersionSpec::Latest
            } else {
                u32::try_from(r.version)
                    .ok()
                    .filter(|v| *v >= 1)
                    .map(VersionSpec::Number)
                    .ok_or_else(|| ApiError::invalid_version(&r.version.to_string()))?
            };
            let target = Self::find_version(st, &r.subject, spec, false).map_err(|_| {
                ApiError::invalid_schema(format!(
                    "reference {:?} to subject '{}' version {} not found",
                    r.name, r.subject, r.version
                ))
            })?;
            Self::resolve(st, &target.references, out, depth + 1)?;
            if !out
                .iter()
                .any(|x| x.name == r.name && x.schema == target.schema)
            {
                out.push(Resolved {
                    name: r.name.clone(),
                    schema_type: target.schema_type,
                    schema: target.schema.clone(),
                });
            }
        }
        Ok(())
    }

    fn parse_record(st: &State, r: &SchemaRecord) -> Result<Parsed, ApiError> {
        let mut refs = Vec::new();
        Self::resolve(st, &r.references, &mut refs, 0)?;
        schema::parse(r.schema_type, &r.schema, &refs).map_err(ApiError::invalid_schema)
    }

    /// Canonical text and parsed form of a request's schema (42201 when invalid).
    fn prepare(st: &State, new: &NewSchema) -> Result<(String, Parsed), ApiError> {
        let text = schema::canonical(new.schema_type, &new.schema).map_err(|e| {
            ApiError::invalid_schema(format!("{} schema: {e}", new.schema_type.as_str()))
        })?;
        let mut refs = Vec::new();
        Self::resolve(st, &new.references, &mut refs, 0)?;
        let parsed = schema::parse(new.schema_type, &text, &refs).map_err(|e| {
            ApiError::invalid_schema(format!("{} schema: {e}", new.schema_type.as_str()))
        })?;
        Ok((text, parsed))
    }

    /// Parses a schema as the registry would (validation only).
    pub fn validate(&self, new: &NewSchema) -> Result<Parsed, ApiError> {
        Self::prepare(&self.state(), new).map(|(_, p)| p)
    }

    fn level_of(st: &State, subject: &str) -> Compatibility {
        st.configs
            .get(subject)
            .copied()
            .or(st.global)
            .unwrap_or_default()
    }

    /// The problems of `parsed` against the live versions the subject's level covers.
    fn problems(
        st: &State,
        subject: &str,
        parsed: &Parsed,
        against: Option<u32>,
        level: Compatibility,
    ) -> Result<CompatibilityReport, ApiError> {
        if level == Compatibility::None {
            return Ok(CompatibilityReport {
                is_compatible: true,
                messages: Vec::new(),
            });
        }
        let live: Vec<&SchemaRecord> = st
            .subjects
            .get(subject)
            .map(|v| v.values().filter(|r| !r.deleted).collect())
            .unwrap_or_default();
        let olds: Vec<&SchemaRecord> = match against {
            Some(v) => live.into_iter().filter(|r| r.version == v).collect(),
            None if level.transitive() => live.into_iter().rev().collect(),
            None => live.into_iter().last().into_iter().collect(),
        };
        let mut messages = Vec::new();
        for old in olds {
            let old_parsed = Self::parse_record(st, old)?;
            let problems: Vec<Problem> = schema::check(parsed, &old_parsed, level);
            if !problems.is_empty() {
                messages.extend(problems.iter().map(Problem::message));
                messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
                messages.push(format!("{{oldSchema: '{}'}}", old.schema));
                messages.push(format!("{{compatibility: '{}'}}", level.as_str()));
                // Like Confluent: the first incompatible version ends the check.
                break;
            }
        }
        Ok(CompatibilityReport {
            is_compatible: messages.is_empty(),
            messages,
        })
    }

    /// Registers a schema under a subject; returns its id and version. The same schema again
    /// returns the existing version; the same schema under another subject gets the same id.
    pub fn register(&self, subject: &str, new: &NewSchema) -> Result<(u32, u32), ApiError> {
        if subject.is_empty() || subject.chars().any(char::is_control) {
            return Err(ApiError::unprocessable(format!(
                "Invalid subject name {subject:?}"
            )));
        }
        let mut st = self.state();
        let (text, parsed) = Self::prepare(&st, new)?;
        let key = (new.schema_type, text.clone(), new.references.clone());
        if let Some(existing) = st.subjects.get(subject).and_then(|v| {
            v.values().find(|r| {
                !r.deleted && r.schema_type == key.0 && r.schema == key.1 && r.references == key.2
            })
        }) {
            return Ok((existing.id, existing.version));
        }
        let level = Self::level_of(&st, subject);
        let report = Self::problems(&st, subject, &parsed, None, level)?;
        if !report.is_compatible {
            return Err(ApiError::new(
                409,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                    report.messages.join(", ")
                ),
            ));
        }
        let version = st
            .subjects
            .get(subject)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1);
        let id = st.ids.get(&key).copied().unwrap_or(st.next_id);
        let record = SchemaRecord {
            subject: subject.to_string(),
            version,
            id,
            schema_type: new.schema_type,
            schema: text,
            references: new.references.clone(),
            deleted: false,
        };
        self.store.put_schema(&record).map_err(ApiError::store)?;
        if id == st.next_id {
            st.next_id += 1;
        }
        st.ids.insert(key, id);
        st.subjects
            .entry(subject.to_string())
            .or_default()
            .insert(version, record);
        Ok((id, version))
    }

    /// The version of a subject that holds this schema (`deleted`: soft-deleted ones too).
    pub fn lookup(
        &self,
        subject: &str,
        new: &NewSchema,
        deleted: bool,
    ) -> Result<SchemaRecord, ApiError> {
        let st = self.state();
        let versions = st
            .subjects
            .get(subject)
            .filter(|v| v.values().any(|r| deleted || !r.deleted))
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let (text, _) = Self::prepare(&st, new)?;
        versions
            .values()
            .rev()
            .find(|r| {
                (deleted || !r.deleted)
                    && r.schema_type == new.schema_type
                    && r.schema == text
                    && r.references == new.references
            })
            .cloned()
            .ok_or_else(|| ApiError::schema_not_found(format!("for subject '{subject}'")))
    }

    /// Tests a schema against one version (or, with `None`, the versions the level covers).
    pub fn test_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        new: &NewSchema,
    ) -> Result<CompatibilityReport, ApiError> {
        let st = self.state();
        let (_, parsed) = Self::prepare(&st, new)?;
        let level = Self::level_of(&st, subject);
        let against = match version {
            None => None,
            Some(spec) => match Self::find_version(&st, subject, spec, false) {
                Ok(r) => Some(r.version),
                // Against the latest of a subject with no versions: nothing to break.
                Err(e) if spec == VersionSpec::Latest && e.code == 40401 => {
                    return Ok(CompatibilityReport {
                        is_compatible: true,
                        messages: Vec::new(),
                    })
                }
                Err(e) => return Err(e),
            },
        };
        Self::problems(&st, subject, &parsed, against, level)
    }

    /// Deletes a subject: soft (its versions are hidden, ids stay) or, after a soft delete,
    /// permanent. Returns the versions deleted.
    pub fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>, ApiError> {
        let mut st = self.state();
        let versions = st
            .subjects
            .get(subject)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::subject_not_found(subject))?
            .clone();
        let live: Vec<&SchemaRecord> = versions.values().filter(|r| !r.deleted).collect();
        if permanent && !live.is_empty() {
            return Err(ApiError::new(
                404,
                40405,
                format!(
                    "Subject '{subject}' was not deleted first before being permanently deleted"
                ),
            ));
        }
        if !permanent && live.is_empty() {
            return Err(ApiError::new(
                404,
                40404,
                format!(
                    "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
                ),
            ));
        }
        for r in versions.values() {
            if let Some(by) = Self::referrers(&st, r).first() {
                return Err(ApiError::new(
                    422,
                    42206,
                    format!(
                        "One or more references exist to the schema {{subject={subject},version={}}} (from {} version {})",
                        r.version, by.subject, by.version
                    ),
                ));
            }
        }
        let mut done = Vec::new();
        for r in versions.values() {
            if permanent {
                self.store
                    .remove_schema(subject, r.version)
                    .map_err(ApiError::store)?;
                done.push(r.version);
            } else if !r.deleted {
                let mut soft = r.clone();
                soft.deleted = true;
                self.store.put_schema(&soft).map_err(ApiError::store)?;
                done.push(r.version);
            }
        }
        if permanent {
            st.subjects.remove(subject);
            if st.configs.contains_key(subject) {
                self.store
                    .put_config(Some(subject), None)
                    .map_err(ApiError::store)?;
                st.configs.remove(subject);
            }
        } else if let Some(v) = st.subjects.get_mut(subject) {
            for r in v.values_mut() {
                r.deleted = true;
            }
        }
        Ok(done)
    }

    /// Deletes one version: soft, or after a soft delete, permanent.
    pub fn delete_version(
        &self,
        subject: &str,
        version: VersionSpec,
        permanent: bool,
    ) -> Result<u32, ApiError> {
        let mut st = self.state();
        if let VersionSpec::Number(n) = version {
            let soft = st
                .subjects
                .get(subject)
                .and_then(|v| v.get(&n))
                .is_some_and(|r| r.deleted);
            if soft && !permanent {
                return Err(ApiError::new(
                    404,
                    40406,
                    format!("Subject '{subject}' Version {n} was soft deleted.Set permanent=true to delete permanently"),
                ));
            }
        }
        // Permanent deletes address soft-deleted versions.
        let record = Self::find_version(&st, subject, version, permanent)?;
        if permanent && !record.deleted {
            return Err(ApiError::new(
                404,
                40407,
                format!(
                    "Subject '{subject}' Version {} was not deleted first before being permanently deleted",
                    record.version
                ),
            ));
        }
        if let Some(by) = Self::referrers(&st, &record).first() {
            return Err(ApiError::new(
                422,
                42206,
                format!(
                    "One or more references exist to the schema {{subject={subject},version={}}} (from {} version {})",
                    record.version, by.subject, by.version
                ),
            ));
        }
        if permanent {
            self.store
                .remove_schema(subject, record.version)
                .map_err(ApiError::store)?;
            if let Some(v) = st.subjects.get_mut(subject) {
                v.remove(&record.version);
                if v.is_empty() {
                    st.subjects.remove(subject);
                }
            }
        } else {
            let mut soft = record.clone();
            soft.deleted = true;
            self.store.put_schema(&soft).map_err(ApiError::store)?;
            if let Some(r) = st
                .subjects
                .get_mut(subject)
                .and_then(|v| v.get_mut(&record.version))
            {
                r.deleted = true;
            }
        }
        Ok(record.version)
    }
}
