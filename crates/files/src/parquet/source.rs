//! The Parquet source; see [`ParquetSource`].

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::{DataType, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{Classify, ConnectorError, ErrorClass};
use tributary_core::schema::{reconcile, SchemaPolicy};
use tributary_core::state::FileRecord;
use tributary_core::{Batch, BatchMeta, Source, SourceContext, StreamInfo};

use crate::input::{
    announce, completion, run_files, Compression, FileError, FileSet, InputFile, Planned,
};

/// Configuration of the Parquet source (`source: { kind: parquet, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// Parquet files: a file, a folder or a glob (`exports/**/*.parquet`). Relative paths
    /// start at the pipeline file's folder. Each file is ingested once.
    pub path: VarStr,
    /// Stream name (default: the file name without extension, or the folder's name).
    #[serde(default)]
    pub stream: Option<String>,
    /// Object-storage connection for `s3://` paths (default: the `AWS_*` environment).
    #[serde(default)]
    pub s3: Option<crate::object::S3Options>,
    /// How the file ledger recognises a file it has ingested: `metadata` (default: name, size,
    /// modification time or ETag) or `content` (also a hash of the content, so a copied or
    /// touched file with the same bytes is not read again).
    #[serde(default)]
    pub identify_by: crate::input::Identity,
    /// Keep watching `path` after reading what is there: `follow: true` (list again every
    /// 5 s, read files once unmodified for 2 s) or `follow: { poll_interval: 10s, settle: 0s }`.
    /// The run then ends on Ctrl-C / SIGTERM.
    #[serde(default)]
    pub follow: Option<crate::input::Follow>,
    /// Top-level columns to read (default: all). Only their pages are read from disk.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Rows per batch (default 65536).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(65_536).expect("non-zero")
}

impl ParquetSourceConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSourceConfig {
            path: VarStr::new(path.into()),
            stream: None,
            s3: None,
            identify_by: crate::input::Identity::Metadata,
            follow: None,
            columns: None,
            batch_size: default_batch_size(),
        }
    }
}

/// Where the Parquet source is in a file: the next row, counted from 0 across row groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetPosition {
    /// Rows before it are done.
    pub row: u64,
}

/// Errors of the Parquet source; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ParquetSourceError {
    /// Listing, opening or positioning a file failed (shared with the other file sources).
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not Parquet, or is damaged.
    #[error("{path}: cannot read Parquet: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        source: parquet::errors::ParquetError,
    },
    /// A projected column is in none of the files.
    #[error("{path}: `columns` names `{column}`, which no file has (columns: {known})")]
    UnknownColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The file's columns.
        known: String,
    },
    /// A batch could not be fitted to the stream's schema.
    #[error("{path}: column `{column}`: cannot convert {from} to {to}: {message}")]
    Convert {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The file's type.
        from: DataType,
        /// The stream's type.
        to: DataType,
        /// Why.
        message: String,
    },
}

impl Classify for ParquetSourceError {
    fn class(&self) -> ErrorClass {
        match self {
            ParquetSourceError::File(e) => e.class(),
            ParquetSourceError::Read {
                source: parquet::errors::ParquetError::External(_),
                ..
            } => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<ParquetSourceError> for ConnectorError {
    fn from(e: ParquetSourceError) -> Self {
        match e {
            ParquetSourceError::File(e) => e.into(),
            e @ ParquetSourceError::UnknownColumn { .. } => ConnectorError::classified(e)
                .with_hint("fix `source.columns`; `tributary discover` lists the columns"),
            e => ConnectorError::classified(e),
        }
    }
}

/// The Parquet source: Parquet files streamed row group by row group, with column projection.
///
/// ```yaml
/// source:
///   kind: parquet
///   path: exports/*.parquet
///   columns: [id, amount, created_at]   # read only these (default: every column)
/// ```
///
/// - **Streaming.** A file is never loaded whole: the reader decodes one row group at a time
///   (only the projected columns' pages are read) and emits batches of `batch_size` rows.
///   Memory is bounded by a row group of the projected columns.
/// - **Positions.** A position is the file and the next row (0-based, across row groups). A
///   resumed run skips whole row groups before it and the rows before it within its group,
///   without decoding them.
/// - **Schemas.** The schema is the file's own (Parquet files are typed; nothing is
///   inferred). Across files it is fitted with the pipeline's `schema_policy`: under `evolve`
///   a column a later file adds is added (null for the earlier rows), a type that widens is
///   widened (`int32` → `int64`, `int64` → `float64`, anything → string) and the batches are
///   cast to it; a column a later file lacks is null. Under `freeze` / `discard_columns` /
///   `discard_rows` the schema stays: a row with a value in a column the stream does not
///   have, or a value that does not convert to the stream's type, is rejected (dead-lettered
///   with file and row), dropped with its column (`discard_columns`) or skipped
///   (`discard_rows`).
pub struct ParquetSource {
    config: ParquetSourceConfig,
    files: FileSet,
    stream: String,
}

impl ParquetSource {
    /// Builds the source; `base_dir` anchors a relative `path`.
    pub fn new(config: ParquetSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let (files, stream) = FileSet::for_source(
            base_dir,
            &config.path,
            Compression::None,
            config.s3.as_ref(),
            config.identify_by,
            config.stream.as_ref(),
        )?;
        Ok(ParquetSource {
            config,
            files,
            stream,
        })
    }

    fn clone_for_thread(&self) -> ParquetSource {
        ParquetSource {
            config: self.config.clone(),
            files: self.files.clone(),
            stream: self.stream.clone(),
        }
    }

    fn list(&self) -> Result<Vec<InputFile>, ParquetSourceError> {
        Ok(self.files.list_for_run(self.config.follow.is_some())?)
    }

    /// Opens a file's reader builder.
    fn builder(
        file: &InputFile,
    ) -> Result<ParquetRecordBatchReaderBuilder<File>, ParquetSourceError> {
        // Objects are downloaded first (the reader needs random access); the open handle
        // keeps reading the copy after its name is removed.
        let local = file.local()?;
        let f = File::open(local.path()).map_err(|source| FileError::Io {
            path: file.path.clone(),
            source,
        })?;
        ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| ParquetSourceError::Read {
            path: file.path.clone(),
            source,
        })
    }

    /// The projection mask and the file's schema after projection. A projected column the
    /// file does not have is left out (files of one stream may differ; the schema policy
    /// decides), and returned in the last element.
    fn projection(
        &self,
        file: &InputFile,
        builder: &ParquetRecordBatchReaderBuilder<File>,
    ) -> Result<(ProjectionMask, Schema, Vec<String>), ParquetSourceError> {
        let schema = builder.schema();
        let Some(columns) = &self.config.columns else {
            return Ok((ProjectionMask::all(), schema.as_ref().clone(), Vec::new()));
        };
        let mut indices = Vec::with_capacity(columns.len());
        let mut missing = Vec::new();
        for c in columns {
            match schema.index_of(c) {
                Ok(i) => indices.push(i),
                Err(_) => missing.push(c.clone()),
            }
        }
        indices.sort_unstable();
        let projected = schema
            .project(&indices)
            .map_err(|e| ParquetSourceError::Read {
                path: file.path.clone(),
                source: parquet::errors::ParquetError::ArrowError(e.to_string()),
            })?;
        Ok((
            ProjectionMask::roots(builder.parquet_schema(), indices),
            projected,
            missing,
        ))
    }

    /// Checks that every projected column is in at least one of `files` (a typo in
    /// `columns` is an error, a column only some files have is not).
    fn check_projection(&self, files: &[InputFile]) -> Result<(), ParquetSourceError> {
        let Some(columns) = &self.config.columns else {
            return Ok(());
        };
        let mut unseen: Vec<String> = columns.clone();
        let mut known: Vec<String> = Vec::new();
        for file in files {
            let builder = Self::builder(file)?;
            for f in builder.schema().fields() {
                if !known.contains(f.name()) {
                    known.push(f.name().clone());
                }
            }
            let (_, _, missing) = self.projection(file, &builder)?;
            unseen.retain(|c| missing.contains(c));
            if unseen.is_empty() {
                return Ok(());
            }
        }
        match (unseen.first(), files.first()) {
            (Some(column), Some(file)) => Err(ParquetSourceError::UnknownColumn {
                path: file.path.clone(),
                column: column.clone(),
                known: known.join(", "),
            }),
            _ => Ok(()),
        }
    }

    /// Reads one file from `start`, emitting batches fitted to `schema`; returns the row
    /// after the file's last, or `None` when the run is stopping.
    #[allow(clippy::too_many_arguments)]
    fn read_file(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        file: &InputFile,
        builder: ParquetRecordBatchReaderBuilder<File>,
        mask: ProjectionMask,
        fit: &Fit,
        start: u64,
    ) -> Result<Option<u64>, ParquetSourceError> {
        let read_err = |source| ParquetSourceError::Read {
            path: file.path.clone(),
            source,
        };
        let total_rows: u64 = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as u64)
            .sum();
        if start > total_rows {
            return Err(FileError::Truncated {
                path: file.path.clone(),
                len: total_rows,
                offset: start,
            }
            .into());
        }
        // Whole row groups before `start` are not read at all; rows before it within its
        // group are skipped by a row selection (their pages are still decoded).
        let mut groups = Vec::new();
        let mut first_row = 0u64;
        let mut row_at = 0u64;
        for (i, g) in builder.metadata().row_groups().iter().enumerate() {
            let n = g.num_rows() as u64;
            if row_at + n > start {
                if groups.is_empty() {
                    first_row = row_at;
                }
                groups.push(i);
            }
            row_at += n;
        }
        let skip = (start - first_row) as usize;
        let remaining = (total_rows - start) as usize;
        let mut builder = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_batch_size(self.config.batch_size.get());
        if skip > 0 {
            builder = builder.with_row_selection(RowSelection::from(vec![
                RowSelector::skip(skip),
                RowSelector::select(remaining),
            ]));
        }
        let reader = builder.build().map_err(read_err)?;
        let bytes_per_row = file.record.size as f64 / total_rows.max(1) as f64;
        let mut row = start;
        for batch in reader {
            let batch = batch.map_err(|e| read_err(parquet::errors::ParquetError::from(e)))?;
            let n = batch.num_rows() as u64;
            let fitted = fit.apply(&file.path, &batch)?;
            for bad in &fitted.rejected {
                let at = row + bad.row as u64;
                let raw = tributary_formats::json::encode_rows(&batch.slice(bad.row, 1), true)
                    .map(|(bytes, _)| bytes)
                    .unwrap_or_default();
                let rejected = Rejected {
                    stream: self.stream.clone(),
                    position: Some(file.position(ParquetPosition { row: at })),
                    message: format!("row {at}: {}", bad.message),
                    location: Some(format!("{}:row {at}", file.path.display())),
                    raw: trim_newline(raw),
                    headers: Vec::new(),
                };
                if rt.block_on(ctx.reject(rejected)).is_err() {
                    return Ok(None);
                }
            }
            let mut meta = BatchMeta::new(
                self.stream.as_str().into(),
                file.position(ParquetPosition { row }),
                file.position(ParquetPosition { row: row + n }),
                (n as f64 * bytes_per_row) as u64,
            );
            meta.discarded = fitted.discarded;
            row += n;
            if rt
                .block_on(ctx.emit(Batch {
                    data: fitted.batch,
                    meta,
                }))
                .is_err()
                || ctx.is_stopping()
            {
                return Ok(None);
            }
        }
        Ok(Some(row))
    }

    fn read_all(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        planned: Vec<Planned<ParquetPosition>>,
        current: &mut Option<Schema>,
    ) -> Result<Vec<FileRecord>, ParquetSourceError> {
        let policy = ctx.schema_policy();
        let mut completed = Vec::new();
        for Planned { file, resume } in planned {
            let builder = Self::builder(&file)?;
            let (mask, file_schema, missing) = self.projection(&file, &builder)?;
            if !missing.is_empty() {
                tracing::info!(file = %file.path.display(), columns = %missing.join(", "), "projected columns not in this file");
            }
            let fitted = reconcile(current.as_ref(), &file_schema, policy);
            let file = &file;
            if fitted.changed() {
                tracing::info!(file = %file.path.display(), stream = %self.stream, change = %fitted.describe(), "schema evolved");
            }
            if !fitted.unknown.is_empty() {
                tracing::warn!(file = %file.path.display(), columns = %fitted.unknown.join(", "), policy = policy.as_str(), "columns not in the stream's schema");
            }
            let schema = Arc::new(fitted.schema);
            let fit = Fit {
                schema: schema.clone(),
                policy,
            };
            let start = resume.map_or(0, |r| r.row);
            tracing::info!(file = %file.path.display(), row = start, "reading Parquet");
            let Some(end) = self.read_file(ctx, rt, file, builder, mask, &fit, start)? else {
                return Ok(completed);
            };
            let done = completion(
                &self.stream,
                file,
                &schema,
                file.position(ParquetPosition { row: end }),
            );
            completed.extend(done.meta.completes.iter().cloned());
            if rt.block_on(ctx.emit(done)).is_err() || ctx.is_stopping() {
                return Ok(completed);
            }
            *current = Some(schema.as_ref().clone());
        }
        Ok(completed)
    }
}

fn trim_newline(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    raw
}

/// A row of a file's batch that does not fit the stream's schema.
struct BadRow {
    row: usize,
    message: String,
}

/// A file batch fitted to the stream's schema.
struct Fitted {
    batch: RecordBatch,
    rejected: Vec<BadRow>,
    discarded: u64,
}

/// Fits a file's batches to the stream's schema under the policy.
struct Fit {
    schema: SchemaRef,
    policy: SchemaPolicy,
}

impl Fit {
    fn apply(&self, path: &Path, batch: &RecordBatch) -> Result<Fitted, ParquetSourceError> {
        if batch.schema().fields() == self.schema.fields() {
            return Ok(Fitted {
                batch: RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
                    .expect("same fields"),
                rejected: Vec::new(),
                discarded: 0,
            });
        }
        let rows = batch.num_rows();
        // Rows that do not fit, with the first reason found.
        let mut bad: Vec<Option<String>> = vec![None; rows];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let Some(column) = batch.column_by_name(field.name()) else {
                columns.push(arrow_array::new_null_array(field.data_type(), rows));
                continue;
            };
            if column.data_type() == field.data_type() {
                columns.push(column.clone());
                continue;
            }
            let safe = CastOptions {
                safe: true,
                ..Default::default()
            };
            let cast = cast_with_options(column, field.data_type(), &safe).map_err(|e| {
                ParquetSourceError::Convert {
                    path: path.to_path_buf(),
                    column: field.name().clone(),
                    from: column.data_type().clone(),
                    to: field.data_type().clone(),
                    message: e.to_string(),
                }
            })?;
            // A value that does not convert becomes null; one that converts with a loss
            // (2.5 → 2) does not come back the same. Both make the row not fit.
            let back = cast_with_options(&cast, column.data_type(), &safe).ok();
            let same = back
                .as_ref()
                .and_then(|b| arrow_ord::cmp::not_distinct(column, b).ok());
            for (i, slot) in bad.iter_mut().enumerate() {
                let lost = same.as_ref().is_none_or(|s| !s.value(i));
                if slot.is_none() && !column.is_null(i) && (cast.is_null(i) || lost) {
                    *slot = Some(format!(
                        "column `{}`: {} value does not fit the stream's type {}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ));
                }
            }
            columns.push(cast);
        }
        if self.policy != SchemaPolicy::DiscardColumns {
            for (i, f) in batch.schema().fields().iter().enumerate() {
                if self.schema.field_with_name(f.name()).is_ok() {
                    continue;
                }
                let column = batch.column(i);
                for (row, slot) in bad.iter_mut().enumerate() {
                    if slot.is_none() && !column.is_null(row) {
                        *slot = Some(format!(
                            "column `{}` is not in the stream's schema (schema_policy: {})",
                            f.name(),
                            self.policy.as_str()
                        ));
                    }
                }
            }
        }
        let fitted = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| {
            ParquetSourceError::Convert {
                path: path.to_path_buf(),
                column: String::new(),
                from: DataType::Null,
                to: DataType::Null,
                message: e.to_string(),
            }
        })?;
        if bad.iter().all(Option::is_none) {
            return Ok(Fitted {
                batch: fitted,
                rejected: Vec::new(),
                discarded: 0,
            });
        }
        let keep = BooleanArray::from(bad.iter().map(|b| b.is_none()).collect::<Vec<_>>());
        let batch = arrow_select::filter::filter_record_batch(&fitted, &keep).map_err(|e| {
            ParquetSourceError::Convert {
                path: path.to_path_buf(),
                column: String::new(),
                from: DataType::Null,
                to: DataType::Null,
                message: e.to_string(),
            }
        })?;
        let discard = self.policy == SchemaPolicy::DiscardRows;
        let mut rejected = Vec::new();
        let mut discarded = 0;
        for (row, b) in bad.into_iter().enumerate() {
            match b {
                Some(_) if discard => discarded += 1,
                Some(message) => rejected.push(BadRow { row, message }),
                None => {}
            }
        }
        Ok(Fitted {
            batch,
            rejected,
            discarded,
        })
    }
}

#[async_trait::async_trait]
impl Source for ParquetSource {
    fn describe(&self) -> String {
        format!("parquet {}", self.files.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let this = self.clone_for_thread();
        tokio::task::spawn_blocking(move || -> Result<(), ParquetSourceError> {
            this.check_projection(&this.list()?)
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Parquet reader thread: {e}")))??;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        const MAX_FILES: usize = 50;
        let this = self.clone_for_thread();
        let info =
            tokio::task::spawn_blocking(move || -> Result<StreamInfo, ParquetSourceError> {
                let files = this.list()?;
                let mut schema: Option<Schema> = None;
                let mut rows = 0u64;
                let mut groups = 0usize;
                this.check_projection(&files[..files.len().min(MAX_FILES)])?;
                for file in files.iter().take(MAX_FILES) {
                    let builder = Self::builder(file)?;
                    let (_, s, _) = this.projection(file, &builder)?;
                    rows += builder
                        .metadata()
                        .row_groups()
                        .iter()
                        .map(|g| g.num_rows() as u64)
                        .sum::<u64>();
                    groups += builder.metadata().num_row_groups();
                    schema = Some(reconcile(schema.as_ref(), &s, SchemaPolicy::Evolve).schema);
                }
                let what = match files.len() {
                    1 => files[0].path.display().to_string(),
                    n if n <= MAX_FILES => format!("{n} files"),
                    n => format!("{n} files; schema and counts from the first {MAX_FILES}"),
                };
                Ok(StreamInfo {
                    name: this.stream.clone(),
                    schema: Some(Arc::new(schema.unwrap_or_else(Schema::empty))),
                    detail: Some(format!("{what}, {rows} rows in {groups} row groups")),
                })
            })
            .await
            .map_err(|e| ConnectorError::fatal(format!("Parquet reader thread: {e}")))??;
        Ok(vec![info])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let rt = tokio::runtime::Handle::current();
        let this = self.clone_for_thread();
        tokio::task::spawn_blocking(move || {
            let mut current = ctx.stored_schema(&this.stream)?;
            run_files::<ParquetPosition>(
                &ctx,
                &rt,
                &this.stream,
                this.config.follow.as_ref(),
                || Ok(this.list()?),
                |planned| {
                    // Bytes are attributed to rows evenly, so progress is exact in total only.
                    announce(&ctx, &planned, |_| 0, true);
                    Ok(this.read_all(&ctx, &rt, planned, &mut current)?)
                },
            )
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Parquet reader thread: {e}")))?
    }
}
