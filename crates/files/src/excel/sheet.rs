//! One sheet in memory: its columns (from the header row), its data rows and their types.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_schema::{Field, Schema};
use calamine::{open_workbook_auto, Data, Range, Reader, SheetType, Sheets};

use super::cells::{Guess, Value};
use super::config::SheetRef;
use super::source::ExcelError;
use crate::csv::ColumnType;
use crate::input::InputFile;

/// An open workbook.
pub(super) struct Workbook {
    sheets: Sheets<std::io::BufReader<std::fs::File>>,
}

impl Workbook {
    /// Opens `.xlsx`/`.xlsm`/`.xlsb`/`.xls`/`.ods` (by extension, else by content).
    /// An object in object storage is downloaded first (calamine needs random access); the
    /// open workbook keeps reading the downloaded copy after its name is removed.
    pub(super) fn open(file: &InputFile) -> Result<Self, ExcelError> {
        let local = file.local()?;
        let sheets = open_workbook_auto(local.path()).map_err(|source| ExcelError::Workbook {
            path: file.path.clone(),
            source,
        })?;
        Ok(Workbook { sheets })
    }

    /// Every sheet name, in workbook order.
    pub(super) fn names(&self) -> Vec<String> {
        self.sheets.sheet_names()
    }

    /// The worksheets (chart sheets, dialog and macro sheets left out), in workbook order.
    pub(super) fn worksheets(&self) -> Vec<String> {
        self.sheets
            .sheets_metadata()
            .iter()
            .filter(|s| s.typ == SheetType::WorkSheet)
            .map(|s| s.name.clone())
            .collect()
    }

    /// The name of the sheet `which` refers to; `Ok(None)` for a missing name when
    /// `optional`, an error naming the sheets there are otherwise.
    pub(super) fn resolve(
        &self,
        path: &Path,
        which: &SheetRef,
        optional: bool,
    ) -> Result<Option<String>, ExcelError> {
        let names = self.names();
        let found = match which {
            SheetRef::Name(n) => names.iter().find(|s| *s == n).cloned(),
            SheetRef::Index(i) => names.get(*i).cloned(),
        };
        match found {
            Some(name) => Ok(Some(name)),
            None if optional => Ok(None),
            None => Err(ExcelError::NoSheet {
                path: path.to_path_buf(),
                sheet: which.clone(),
                known: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            }),
        }
    }

    /// The cells of one sheet.
    pub(super) fn range(&mut self, path: &Path, sheet: &str) -> Result<Range<Data>, ExcelError> {
        self.sheets
            .worksheet_range(sheet)
            .map_err(|source| ExcelError::Sheet {
                path: path.to_path_buf(),
                sheet: sheet.to_string(),
                source,
            })
    }
}

/// Where the table is in a sheet.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// 0-based sheet row of the header, if there is one.
    pub(super) header: Option<u32>,
    /// 0-based sheet row where data may start.
    pub(super) data_start: u32,
}

impl Layout {
    /// From `skip_rows` and `header_row` (1-based, counted after the skipped rows; 0: none).
    pub(super) fn new(skip_rows: u32, header_row: u32) -> Self {
        match header_row {
            0 => Layout {
                header: None,
                data_start: skip_rows,
            },
            n => Layout {
                header: Some(skip_rows.saturating_add(n - 1)),
                data_start: skip_rows.saturating_add(n),
            },
        }
    }
}

/// A sheet read into memory, with its table found.
pub(super) struct Sheet {
    /// The sheet's name.
    pub(super) name: String,
    /// The cells.
    range: Range<Data>,
    /// Column names, made unique.
    pub(super) names: Vec<String>,
    /// The 0-based sheet column of each column.
    pub(super) columns: Vec<u32>,
    /// The 0-based sheet rows that hold data (empty rows left out), ascending.
    pub(super) rows: Vec<u32>,
    /// The 1-based sheet row where data starts.
    pub(super) first_row: u64,
    /// The 1-based sheet row just past the last row of the sheet: the position at its end.
    pub(super) end_row: u64,
}

impl Sheet {
    /// Finds the table in `range`: the header (or `column_N` names), the columns that have a
    /// name or a value, and the rows below that have a value.
    pub(super) fn new(name: String, range: Range<Data>, layout: Layout) -> Self {
        let first_row = u64::from(layout.data_start) + 1;
        let (Some(start), Some(end)) = (range.start(), range.end()) else {
            return Sheet {
                name,
                range,
                names: Vec::new(),
                columns: Vec::new(),
                rows: Vec::new(),
                first_row,
                end_row: first_row,
            };
        };
        let cell = |row: u32, col: u32| range.get_value((row, col)).map_or(Value::Empty, Value::of);
        let data_rows = layout.data_start.max(start.0)..=end.0;
        let mut columns = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for col in start.1..=end.1 {
            let header = layout
                .header
                .and_then(|h| cell(h, col).text().map(|t| t.trim().to_string()))
                .filter(|t| !t.is_empty());
            let has_data = data_rows.clone().any(|r| !cell(r, col).is_empty());
            if header.is_none() && !has_data {
                continue;
            }
            let raw = header.unwrap_or_else(|| format!("column_{}", u64::from(col) + 1));
            let mut unique = raw.clone();
            let mut n = 2;
            while names.contains(&unique) {
                unique = format!("{raw}_{n}");
                n += 1;
            }
            names.push(unique);
            columns.push(col);
        }
        let rows = data_rows
            .filter(|&r| columns.iter().any(|&c| !cell(r, c).is_empty()))
            .collect();
        Sheet {
            name,
            names,
            columns,
            rows,
            first_row,
            end_row: (u64::from(end.0) + 2).max(first_row),
            range,
        }
    }

    /// The value of column `i` in sheet row `row` (0-based).
    pub(super) fn value(&self, row: u32, i: usize) -> Value<'_> {
        self.range
            .get_value((row, self.columns[i]))
            .map_or(Value::Empty, Value::of)
    }

    /// The schema from every data row: each column's type inferred (see
    /// [`Guess::data_type`]) unless `overrides` names it. An override that names no column is
    /// an error when `strict`.
    pub(super) fn infer(
        &self,
        path: &Path,
        overrides: &BTreeMap<String, ColumnType>,
        strict: bool,
    ) -> Result<Schema, ExcelError> {
        if strict {
            if let Some(unknown) = overrides.keys().find(|k| !self.names.contains(k)) {
                return Err(ExcelError::UnknownColumn {
                    path: path.to_path_buf(),
                    sheet: self.name.clone(),
                    column: unknown.clone(),
                    known: self.names.join(", "),
                });
            }
        }
        let fields: Vec<Field> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let dt = match overrides.get(name) {
                    Some(ty) => ty.data_type(),
                    None => {
                        let mut guess = Guess::default();
                        for &row in &self.rows {
                            guess.observe(&self.value(row, i));
                        }
                        guess.data_type()
                    }
                };
                Field::new(name, dt, true)
            })
            .collect();
        Ok(Schema::new(fields))
    }

    /// The row's cells as a JSON object of texts, for dead letters.
    pub(super) fn raw(&self, row: u32) -> Vec<u8> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let text = self.value(row, i).text().map(|t| t.into_owned());
                (
                    name.clone(),
                    text.map_or(serde_json::Value::Null, Into::into),
                )
            })
            .collect();
        serde_json::to_vec(&map).unwrap_or_default()
    }
}
