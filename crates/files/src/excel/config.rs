use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};

use crate::csv::ColumnType;

/// Configuration of the Excel source (`source: { kind: excel, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExcelSourceConfig {
    /// Workbooks (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, `.ods`): a file, a folder (every file under
    /// it) or a glob (`reports/2024-*.xlsx`). Relative paths start at the pipeline file's
    /// folder. Files are read in name order; each is ingested once (the file ledger), a changed
    /// file again.
    pub path: VarStr,
    /// Stream name (default: the file name without extension, or the folder's name). With
    /// `sheets: all` each sheet is the stream `<stream>.<sheet name>`.
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
    /// The sheet to read: a name (`Orders`) or a 0-based index in workbook order (`0`).
    /// Default: the first sheet. Every file of `path` must have it.
    #[serde(default)]
    pub sheet: Option<SheetRef>,
    /// `all`: read every worksheet of every file, one stream per sheet name (chart sheets are
    /// left out; hidden sheets are read). Cannot be combined with `sheet`.
    #[serde(default)]
    pub sheets: Option<AllSheets>,
    /// The sheet row (1-based, counted after `skip_rows`) that holds the column names
    /// (default 1). `0`: no header; the columns are `column_1`, `column_2`, ... after the sheet
    /// column (A = 1), and data starts right after `skip_rows`.
    #[serde(default = "default_header_row")]
    pub header_row: u32,
    /// Sheet rows to skip before the header (or before the data, with `header_row: 0`):
    /// titles, notes, blank lines above a table (default 0).
    #[serde(default)]
    pub skip_rows: u32,
    /// Column types that override inference: `{ zip: string, amount: float64 }`. Text cells
    /// are parsed as the type (`"12"` → 12); a value that does not convert rejects its row.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    /// Rows per batch (default 8192).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
}

/// A sheet, by name or by 0-based index.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SheetRef {
    /// The n-th sheet in workbook order, from 0.
    Index(usize),
    /// The sheet with this name (exact, case-sensitive).
    Name(String),
}

impl fmt::Display for SheetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SheetRef::Index(i) => write!(f, "sheet {i}"),
            SheetRef::Name(n) => write!(f, "sheet `{n}`"),
        }
    }
}

/// The value of `sheets:`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AllSheets {
    /// Every worksheet, one stream each.
    All,
}

fn default_header_row() -> u32 {
    1
}
fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(8192).expect("non-zero")
}

impl ExcelSourceConfig {
    /// A config with defaults for `path`: the first sheet, column names on its first row.
    pub fn new(path: impl Into<String>) -> Self {
        ExcelSourceConfig {
            path: VarStr::new(path.into()),
            stream: None,
            s3: None,
            identify_by: crate::input::Identity::Metadata,
            sheet: None,
            sheets: None,
            header_row: default_header_row(),
            skip_rows: 0,
            columns: BTreeMap::new(),
            batch_size: default_batch_size(),
        }
    }

    /// Checks what serde cannot: `sheet` and `sheets` exclude each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let (Some(sheet), Some(_)) = (&self.sheet, &self.sheets) {
            return Err(ConfigError::Value {
                field: "source.sheets".into(),
                message: format!(
                    "`sheets: all` reads every sheet, so `sheet` ({sheet}) cannot be set too"
                ),
            });
        }
        Ok(())
    }
}
