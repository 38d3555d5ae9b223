use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::schema::{reconcile, SchemaPolicy};
use tributary_core::{Batch, BatchMeta, Source, SourceContext, StreamInfo};

use super::cells::{convert, supported, Columns, Mismatch, Scalar, Value};
use super::config::{ExcelSourceConfig, SheetRef};
use super::sheet::{Layout, Sheet, Workbook};
use crate::input::{announce, completion, plan, Compression, FileError, FileSet, InputFile};

/// Schema metadata key naming the sheet of a stream under `sheets: all`.
const SHEET_METADATA: &str = "excel.sheet";

/// Where the Excel source is in a file: the sheet and the next data row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcelPosition {
    /// The sheet's name.
    pub sheet: String,
    /// 1-based sheet row of the next data row: every row above it is done.
    pub row: u64,
}

/// Errors of the Excel source. Each names the file and, where it applies, the sheet.
#[derive(Debug, thiserror::Error)]
pub enum ExcelError {
    /// Listing, opening or positioning a file failed (shared with the other file sources).
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not a workbook calamine can read, or is damaged.
    #[error("{path}: cannot read the workbook: {source}")]
    Workbook {
        /// The file.
        path: PathBuf,
        /// calamine's error.
        source: calamine::Error,
    },
    /// The configured sheet is not in the workbook.
    #[error("{path}: no {} (sheets: {known})", no_sheet(.sheet))]
    NoSheet {
        /// The file.
        path: PathBuf,
        /// The sheet asked for.
        sheet: SheetRef,
        /// The workbook's sheets, in order.
        known: String,
    },
    /// A sheet cannot be read.
    #[error("{path}: sheet `{sheet}`: cannot read it: {source}")]
    Sheet {
        /// The file.
        path: PathBuf,
        /// The sheet.
        sheet: String,
        /// calamine's error.
        source: calamine::Error,
    },
    /// A `columns:` override names no column of the sheet.
    #[error("{path}: sheet `{sheet}`: `columns.{column}` matches no column (columns: {known})")]
    UnknownColumn {
        /// The file.
        path: PathBuf,
        /// The sheet.
        sheet: String,
        /// The override's key.
        column: String,
        /// The sheet's columns.
        known: String,
    },
}

fn no_sheet(sheet: &SheetRef) -> String {
    match sheet {
        SheetRef::Name(n) => format!("sheet named `{n}`"),
        SheetRef::Index(i) => format!("sheet at index {i} (indexes start at 0)"),
    }
}

impl Classify for ExcelError {
    fn class(&self) -> ErrorClass {
        match self {
            ExcelError::File(e) => e.class(),
            ExcelError::Workbook { source, .. } | ExcelError::Sheet { source, .. } => {
                match source {
                    calamine::Error::Io(e) => classify_io(e),
                    _ => ErrorClass::Fatal,
                }
            }
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<ExcelError> for ConnectorError {
    fn from(e: ExcelError) -> Self {
        match e {
            ExcelError::File(e) => e.into(),
            e @ ExcelError::NoSheet { .. } => ConnectorError::classified(e).with_hint(
                "set `source.sheet` to one of the sheet names or a 0-based index, or use \
                 `sheets: all`",
            ),
            e => ConnectorError::classified(e),
        }
    }
}

/// One stream of the source: one sheet, read from every file.
#[derive(Clone, Debug)]
struct Target {
    stream: String,
    sheet: SheetRef,
    /// Under `sheets: all`: a file without the sheet has nothing for this stream.
    all: bool,
}

/// Why a row did not become a row of the batch.
enum RowProblem {
    /// Rejected (error cell, a value of another type): the `on_error` policy applies.
    Reject(String),
    /// Does not fit the schema under `discard_rows`: counted as skipped.
    Discard,
}

/// One sheet of one file being read.
struct Reading<'a> {
    file: &'a InputFile,
    sheet: &'a Sheet,
    schema: SchemaRef,
    /// For each schema column, the sheet column that holds it.
    map: Vec<Option<usize>>,
    /// Sheet columns the schema has no column for.
    extra: Vec<usize>,
    policy: SchemaPolicy,
    /// Source bytes attributed to the sheet (shared out over its rows).
    bytes: u64,
}

impl Reading<'_> {
    fn position(&self, row: u64) -> tributary_core::Position {
        self.file.position(ExcelPosition {
            sheet: self.sheet.name.clone(),
            row,
        })
    }

    /// The row's values, converted to the schema's types, or what is wrong with it.
    fn row(&self, row: u32) -> Result<Vec<Option<Scalar<'_>>>, RowProblem> {
        let discard = self.policy == SchemaPolicy::DiscardRows;
        let mut out = Vec::with_capacity(self.map.len());
        for (field, column) in self.schema.fields().iter().zip(&self.map) {
            let value = column.map_or(Value::Empty, |c| self.sheet.value(row, c));
            if value.is_empty() {
                out.push(None);
                continue;
            }
            match convert(&value, field.data_type()) {
                Ok(v) => out.push(Some(v)),
                Err(Mismatch::Type(_)) if discard => return Err(RowProblem::Discard),
                Err(Mismatch::Type(m) | Mismatch::ErrorCell(m)) => {
                    return Err(RowProblem::Reject(format!(
                        "column `{}`: {m}",
                        field.name()
                    )))
                }
            }
        }
        if matches!(
            self.policy,
            SchemaPolicy::Freeze | SchemaPolicy::DiscardRows
        ) {
            for &c in &self.extra {
                let value = self.sheet.value(row, c);
                if value.is_empty() {
                    continue;
                }
                if discard {
                    return Err(RowProblem::Discard);
                }
                return Err(RowProblem::Reject(format!(
                    "column `{}` is not in the stream's schema (schema_policy: {}), found {:?}",
                    self.sheet.names[c],
                    self.policy.as_str(),
                    value.text().unwrap_or_default()
                )));
            }
        }
        Ok(out)
    }
}

/// Reads Excel and OpenDocument workbooks. See the [module docs](super).
pub struct ExcelSource {
    config: ExcelSourceConfig,
    files: FileSet,
    stream: String,
}

impl ExcelSource {
    /// Builds the source; `base_dir` anchors a relative `path` (the pipeline file's folder).
    pub fn new(config: ExcelSourceConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        config.validate()?;
        // Workbooks are zip or OLE containers: a compression setting does not apply.
        let (files, stream) = FileSet::for_source(
            base_dir,
            &config.path,
            Compression::None,
            config.s3.as_ref(),
            config.identify_by,
            config.stream.as_ref(),
        )?;
        Ok(ExcelSource {
            config,
            files,
            stream,
        })
    }

    /// The stream name (under `sheets: all`, the prefix of each sheet's stream).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn clone_for_thread(&self) -> ExcelSource {
        ExcelSource {
            config: self.config.clone(),
            files: self.files.clone(),
            stream: self.stream.clone(),
        }
    }

    /// The workbooks, without Excel's `~$name.xlsx` lock files; an error when there are none.
    fn list(&self) -> Result<Vec<InputFile>, ExcelError> {
        let files: Vec<InputFile> = self
            .files
            .list()?
            .into_iter()
            .filter(|f| {
                !f.path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("~$"))
            })
            .collect();
        if files.is_empty() {
            return Err(FileError::NoFiles {
                pattern: self.files.display(),
            }
            .into());
        }
        Ok(files)
    }

    /// The streams: the configured sheet, or one per worksheet name found in any file.
    fn targets(&self, files: &[InputFile]) -> Result<Vec<Target>, ExcelError> {
        if self.config.sheets.is_none() {
            return Ok(vec![Target {
                stream: self.stream.clone(),
                sheet: self.config.sheet.clone().unwrap_or(SheetRef::Index(0)),
                all: false,
            }]);
        }
        let mut names: Vec<String> = Vec::new();
        for file in files {
            for name in Workbook::open(file)?.worksheets() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names
            .into_iter()
            .map(|name| Target {
                stream: format!("{}.{name}", self.stream),
                sheet: SheetRef::Name(name),
                all: true,
            })
            .collect())
    }

    /// Reads the target's sheet of `file` into memory; `None` when an optional sheet is not
    /// there. Also returns how many worksheets the workbook has.
    fn load(&self, file: &InputFile, target: &Target) -> Result<Option<(Sheet, u64)>, ExcelError> {
        let mut workbook = Workbook::open(file)?;
        let Some(name) = workbook.resolve(&file.path, &target.sheet, target.all)? else {
            return Ok(None);
        };
        let range = workbook.range(&file.path, &name)?;
        let layout = Layout::new(self.config.skip_rows, self.config.header_row);
        let sheets = workbook.worksheets().len().max(1) as u64;
        Ok(Some((Sheet::new(name, range, layout), sheets)))
    }

    /// The sheet's own schema: inferred from every row, `columns:` applied, and under
    /// `sheets: all` the sheet's name in the metadata.
    fn schema_of(
        &self,
        file: &InputFile,
        sheet: &Sheet,
        target: &Target,
    ) -> Result<Schema, ExcelError> {
        let schema = sheet.infer(&file.path, &self.config.columns, !target.all)?;
        Ok(if target.all {
            // Each stream's schema names its sheet, which tells readers of the output where
            // the rows came from.
            schema.with_metadata([(SHEET_METADATA.to_string(), sheet.name.clone())])
        } else {
            schema
        })
    }

    /// Reads the planned files of one stream in order, fitting the stream's schema to each
    /// sheet under the schema policy, and completes each file in the ledger with a last empty
    /// batch.
    fn read_all(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        target: &Target,
        planned: Vec<crate::input::Planned<ExcelPosition>>,
        mut current: Option<Schema>,
    ) -> Result<(), ExcelError> {
        let policy = ctx.schema_policy();
        for crate::input::Planned { file, resume } in planned {
            let Some((sheet, sheets)) = self.load(&file, target)? else {
                tracing::info!(file = %file.path.display(), sheet = %target.sheet, stream = %target.stream, "the workbook has no such sheet: nothing to read");
                let name = match &target.sheet {
                    SheetRef::Name(n) => n.clone(),
                    SheetRef::Index(i) => i.to_string(),
                };
                let schema = Arc::new(current.clone().unwrap_or_else(Schema::empty));
                let end = file.position(ExcelPosition {
                    sheet: name,
                    row: 1,
                });
                if !emit(ctx, rt, completion(&target.stream, &file, &schema, end)) {
                    return Ok(());
                }
                continue;
            };
            if let Some(r) = resume.as_ref().filter(|r| r.sheet != sheet.name) {
                return Err(FileError::BadState {
                    stream: target.stream.clone(),
                    position: file.position(r.clone()).to_string(),
                    message: format!(
                        "it is in sheet `{}`, but the source now reads sheet `{}` of the file",
                        r.sheet, sheet.name
                    ),
                }
                .into());
            }
            let fitted = if sheet.names.is_empty() {
                tracing::info!(file = %file.path.display(), sheet = %sheet.name, "empty sheet");
                reconcile(current.as_ref(), &Schema::empty(), policy)
            } else {
                reconcile(
                    current.as_ref(),
                    &self.schema_of(&file, &sheet, target)?,
                    policy,
                )
            };
            if fitted.changed() {
                tracing::info!(file = %file.path.display(), stream = %target.stream, change = %fitted.describe(), "schema evolved");
            }
            if !fitted.unknown.is_empty() {
                tracing::warn!(file = %file.path.display(), sheet = %sheet.name, columns = %fitted.unknown.join(", "), policy = policy.as_str(), "columns not in the stream's schema");
            }
            let schema = Arc::new(fitted.schema);
            let map = schema
                .fields()
                .iter()
                .map(|f| sheet.names.iter().position(|n| n == f.name()))
                .collect();
            let extra = (0..sheet.names.len())
                .filter(|&i| schema.field_with_name(&sheet.names[i]).is_err())
                .collect();
            let reading = Reading {
                file: &file,
                sheet: &sheet,
                schema: schema.clone(),
                map,
                extra,
                policy,
                bytes: file.record.size / if target.all { sheets } else { 1 },
            };
            let start = resume.map_or(sheet.first_row, |r| r.row);
            tracing::info!(file = %file.path.display(), sheet = %sheet.name, row = start, "reading sheet");
            let Some(end) = self.read_sheet(ctx, rt, &target.stream, &reading, start) else {
                return Ok(());
            };
            if !emit(
                ctx,
                rt,
                completion(&target.stream, &file, &schema, reading.position(end)),
            ) {
                return Ok(());
            }
            current = Some(schema.as_ref().clone());
        }
        Ok(())
    }

    /// Emits the sheet's rows from 1-based sheet row `start` in batches, rejecting rows with
    /// error cells or values that do not fit; returns the row after the sheet's last one, or
    /// `None` when the run is stopping.
    fn read_sheet(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
        stream: &str,
        r: &Reading<'_>,
        start: u64,
    ) -> Option<u64> {
        let sheet = r.sheet;
        let skip = sheet
            .rows
            .partition_point(|&row| u64::from(row) + 1 < start);
        let total = sheet.rows.len().max(1) as u128;
        let share = |rows: usize| (u128::from(r.bytes) * rows as u128 / total) as u64;
        let types: Vec<_> = r
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let batch_size = self.config.batch_size.get();
        let chunks: Vec<&[u32]> = sheet.rows[skip..].chunks(batch_size).collect();
        let mut batch_start = start;
        let mut done = skip;
        for (i, chunk) in chunks.iter().enumerate() {
            let end = chunks
                .get(i + 1)
                .map_or(sheet.end_row.max(start), |next| u64::from(next[0]) + 1);
            let mut columns = Columns::new(&types, chunk.len());
            let mut discarded = 0;
            for &row in *chunk {
                match r.row(row) {
                    Ok(values) => columns.append(&values),
                    Err(RowProblem::Discard) => discarded += 1,
                    Err(RowProblem::Reject(message)) => {
                        let line = u64::from(row) + 1;
                        let rejected = Rejected {
                            stream: stream.to_string(),
                            position: Some(r.position(line)),
                            message: format!("row {line}: {message}"),
                            location: Some(format!(
                                "{}:{}!{line}",
                                r.file.path.display(),
                                sheet.name
                            )),
                            raw: sheet.raw(row),
                            headers: Vec::new(),
                        };
                        if rt.block_on(ctx.reject(rejected)).is_err() || ctx.is_stopping() {
                            return None;
                        }
                    }
                }
            }
            let data = RecordBatch::try_new(r.schema.clone(), columns.finish())
                .expect("columns are built from the schema");
            let mut meta = BatchMeta::new(
                stream.into(),
                r.position(batch_start),
                r.position(end),
                share(done + chunk.len()) - share(done),
            );
            meta.discarded = discarded;
            if !emit(ctx, rt, Batch { data, meta }) {
                return None;
            }
            done += chunk.len();
            batch_start = end;
        }
        Some(sheet.end_row.max(start))
    }

    /// Checks that a schema stored by an earlier run holds only types this source writes.
    fn check_stored(stream: &str, schema: Option<&Schema>) -> Result<(), ExcelError> {
        match schema.and_then(|s| s.fields().iter().find(|f| !supported(f.data_type()))) {
            Some(f) => Err(FileError::BadState {
                stream: stream.to_string(),
                position: "(schema)".into(),
                message: format!(
                    "stored column `{}` has type {}, which the Excel source does not produce",
                    f.name(),
                    f.data_type()
                ),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The blocking part of a run: every stream, one after the other.
    fn run_blocking(
        &self,
        ctx: &SourceContext,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), ConnectorError> {
        let files = self.list()?;
        let targets = self.targets(&files)?;
        for target in &targets {
            let ledger = ctx.ledger(&target.stream)?;
            let planned = plan::<ExcelPosition>(
                &target.stream,
                files.clone(),
                &ledger,
                ctx.checkpoint(&target.stream),
            )
            .map_err(ExcelError::from)?;
            if planned.is_empty() {
                tracing::info!(stream = %target.stream, "every file is in the ledger: nothing new to read");
                continue;
            }
            // Sheets are read whole: progress is counted in rows, not announced in bytes.
            announce(ctx, &planned, |_| 0, false);
            let current = ctx.stored_schema(&target.stream)?;
            Self::check_stored(&target.stream, current.as_ref())?;
            self.read_all(ctx, rt, target, planned, current)?;
            if ctx.is_stopping() {
                break;
            }
        }
        Ok(())
    }
}

/// Hands a batch to the runtime; `false` when the run is stopping.
fn emit(ctx: &SourceContext, rt: &tokio::runtime::Handle, batch: Batch) -> bool {
    rt.block_on(ctx.emit(batch)).is_ok() && !ctx.is_stopping()
}

#[async_trait::async_trait]
impl Source for ExcelSource {
    fn describe(&self) -> String {
        format!("excel {}", self.files.display())
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let this = self.clone_for_thread();
        tokio::task::spawn_blocking(move || -> Result<(), ExcelError> {
            for file in this.list()? {
                let workbook = Workbook::open(&file)?;
                if this.config.sheets.is_none() {
                    let sheet = this.config.sheet.clone().unwrap_or(SheetRef::Index(0));
                    workbook.resolve(&file.path, &sheet, false)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Excel reader thread: {e}")))??;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        const MAX_FILES: usize = 20;
        let this = self.clone_for_thread();
        let streams = tokio::task::spawn_blocking(move || -> Result<_, ExcelError> {
            let files = this.list()?;
            let mut out = Vec::new();
            for target in this.targets(&files)? {
                let mut schema: Option<Schema> = None;
                let (mut rows, mut with_sheet) = (0usize, 0usize);
                for file in files.iter().take(MAX_FILES) {
                    let Some((sheet, _)) = this.load(file, &target)? else {
                        continue;
                    };
                    with_sheet += 1;
                    rows += sheet.rows.len();
                    if sheet.names.is_empty() {
                        continue;
                    }
                    let inferred = this.schema_of(file, &sheet, &target)?;
                    schema =
                        Some(reconcile(schema.as_ref(), &inferred, SchemaPolicy::Evolve).schema);
                }
                let what = match files.len() {
                    1 => files[0].path.display().to_string(),
                    n if n <= MAX_FILES => format!("{n} files ({with_sheet} with the sheet)"),
                    n => format!("{n} files; schema from the first {MAX_FILES}"),
                };
                out.push(StreamInfo {
                    name: target.stream.clone(),
                    schema: Some(Arc::new(schema.unwrap_or_else(Schema::empty))),
                    detail: Some(format!(
                        "{what}, {}, {rows} rows, types inferred from every row",
                        target.sheet
                    )),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Excel reader thread: {e}")))??;
        Ok(streams)
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let rt = tokio::runtime::Handle::current();
        let this = self.clone_for_thread();
        tokio::task::spawn_blocking(move || this.run_blocking(&ctx, &rt))
            .await
            .map_err(|e| ConnectorError::fatal(format!("Excel reader thread: {e}")))?
    }
}
