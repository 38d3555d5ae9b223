//! The Excel source: `.xlsx`, `.xlsm`, `.xlsb`, `.xls` and `.ods` workbooks, one sheet (or
//! every sheet) into Arrow batches.
//!
//! ```yaml
//! source:
//!   kind: excel
//!   path: reports/2024-*.xlsx   # a file, a folder or a glob, like every file source
//!   sheet: Orders               # or an index from 0 (default: the first sheet)
//!   skip_rows: 3                # a title block above the table
//!   header_row: 1               # counted after skip_rows; 0: no header, columns column_1..
//!   columns: { zip: string }    # optional type overrides
//! ```
//!
//! ## The pattern
//! A sheet is read into memory whole (calamine decodes a worksheet at once), its table is
//! found, and its rows are emitted in batches of `batch_size`:
//! - **Where the table is.** `skip_rows` rows are skipped, then the `header_row`-th row holds
//!   the column names (an empty header cell is named `column_N` after its sheet column, A = 1;
//!   duplicates get `_2`, `_3`). A column with neither a name nor any value is left out.
//!   Empty rows are skipped. Rows and columns are counted as Excel shows them, from the top
//!   left corner of the sheet, whatever the first used cell.
//! - **Types come from the cells, not from text.** Excel cells are typed: numbers, booleans,
//!   text, dates (numbers with a date format), errors. Each column's type is inferred from
//!   every data row of the sheet: only whole numbers → `int64`; whole and fractional numbers →
//!   `float64` (no value changes); booleans → `boolean`; dates and date-times →
//!   `timestamp[µs]`; durations and times of day → `duration[µs]`; text → `string`; any other
//!   mix → `string` holding each value's text (`7`, `2.5`, `true`, `2024-03-01`,
//!   `2024-03-01T09:30:00`). A number stored *as text* stays text: a column of them is a string
//!   column unless `columns:` gives it a type, in which case the text is parsed and a value
//!   that does not parse rejects its row. Empty cells (and empty text) are nulls.
//! - **Schema across files and runs.** Each sheet's schema is fitted to the stream's with
//!   `tributary_core::schema::reconcile` under the pipeline's `schema_policy`, as the CSV and
//!   JSON sources do: new columns are added, types widened, and under `freeze`/`discard_*` the
//!   rows that do not fit are rejected or dropped.
//! - **Streams.** One stream (`stream`, default the file or folder name) reads one sheet of
//!   every file: `sheet: Orders` by name or `sheet: 0` by index (default the first sheet); a
//!   file without it is an error that names the sheets it has. `sheets: all` reads every
//!   worksheet (chart sheets left out, hidden sheets included) as its own stream named
//!   `<stream>.<sheet name>` (`book.Orders`, `book.Returns`), so that two workbooks with a
//!   sheet of the same name feed the same stream and each stream has its own schema, ledger
//!   and position; a file without one of the sheets just completes that stream. Each such
//!   stream's Arrow schema carries the sheet name in its metadata (`excel.sheet`).
//! - **Positions.** A stream's position is a [`crate::input::FilePosition`] of
//!   [`ExcelPosition`]: the file, the sheet and the next 1-based sheet row to read. A resumed
//!   run reads the sheet again and skips the rows above that row; each finished file goes to
//!   the file ledger (its last, empty batch completes it), so a second run reads nothing and a
//!   changed file is read again.
//! - **Bad rows.** A row with an error cell (`#DIV/0!`, `#N/A`, `#REF!`, ...) in one of its
//!   columns is rejected, never turned into a null: it goes to the dead-letter destination
//!   (under the default `on_error`) with the location `<file>:<sheet>!<row>` (as in
//!   `data/book.xlsx:Orders!12`), a message naming the column and the error, and the row's
//!   cells as JSON in `raw`. The rest of the sheet is read.
//!
//! ## Excel pitfalls, and what this source does about them
//! - **Dates are numbers.** A date is a serial number of days (the fraction is the time of
//!   day) shown with a date format; calamine uses the format to tell dates from numbers. Day 1
//!   is 1900-01-01 in the 1900 date system and 1904-01-02 in the 1904 system that old Mac
//!   workbooks use (the `date1904` flag of the workbook). The 1900 system also counts a
//!   29 February 1900 that never was (a Lotus 1-2-3 bug kept for compatibility), so serials
//!   before 61 are one day off from a plain count. calamine's `dates` feature handles both
//!   epochs and the leap-year bug; values keep Excel's millisecond precision and have no time
//!   zone, so they become `timestamp[µs]` without one. A date-only cell is a timestamp at
//!   midnight: Excel does not tell a date from a date-time at midnight (both are whole
//!   serials), so a `date32` column would depend on the values; `columns: { day: date }` asks
//!   for one (a value with a time of day then rejects its row). A serial below 1 (no day) is
//!   a time of day and becomes a duration since midnight, as `.ods` time cells do.
//! - **Merged cells.** Only the top-left cell of a merged range holds the value; the other
//!   cells read as empty. A label merged over three rows is a value in the first row and
//!   nulls in the next two; a header merged over two columns names the first one, and the
//!   second is `column_N`. Nothing is filled in: fill the gaps downstream when that is what
//!   the merged cells meant.
//! - **Typed cells vs text.** A cell that *shows* `00123` may be the number 123 with a
//!   format or the text `"00123"`; the source keeps what is stored (123, or the text), never
//!   the display format. Formulas are read as their last calculated value, as Excel saved it
//!   (a workbook written by a library that does not calculate has no value: the cell is
//!   empty).
//! - **Numbers are floats.** `.xlsx` and `.ods` store every number as a 64-bit float, so a
//!   whole number is an integer here: a column of `1, 2, 3` is `int64`, while one value `2.5`
//!   makes it `float64` with every value exact.
//!
//! ## Why calamine
//! calamine is a pure Rust reader for every format asked for (`.xlsx`/`.xlsm`/`.xlsb`,
//! legacy `.xls`, `.ods`), maintained and widely used. It reads typed cells (including error
//! cells and dates with the workbook's epoch) rather than display text. It is built without
//! default features and with `dates` only, whose one dependency (chrono) Arrow already
//! brings.

mod cells;
mod config;
mod sheet;
mod source;

pub use config::{AllSheets, ExcelSourceConfig, SheetRef};
pub use source::{ExcelError, ExcelPosition, ExcelSource};
