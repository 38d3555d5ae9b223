//! Parquet in and out: [`ParquetSource`] streams files by row group with column projection
//! (see its module docs); the Parquet sink writes zstd (or snappy) Parquet files, one folder per stream (and per
//! partition), written atomically and named after source positions (see [`crate::sink`] for
//! the rules every file sink follows).
//!
//! ```yaml
//! sink:
//!   kind: parquet
//!   path: output/
//!   compression: zstd        # snappy, none
//!   partition_by: [country]  # output/<stream>/country=DE/part-….parquet
//!   file_rows: 5000000       # cut files by rows…
//!   file_bytes: 256MiB       # …or by approximate size
//! ```
//!
//! Row groups are encoded on several threads (`threads`, default the number of CPUs): see
//! `encoder.rs`. Dictionary encoding is switched off for columns whose first batch is mostly
//! unique values (ids, timestamps, free text), where it costs a hash per value and then falls
//! back to plain encoding anyway.

use std::fs::File;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;

mod encoder;
mod source;

pub use source::{ParquetPosition, ParquetSource, ParquetSourceConfig, ParquetSourceError};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use encoder::ParallelWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tributary_core::config::{ConfigError, VarStr};

use crate::sink::{FileSink, FileSinkError, Format, FormatWriter, Layout};

/// Configuration of the Parquet sink (`sink: { kind: parquet, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output folder; each stream gets a subfolder. Relative paths are relative to the
    /// pipeline file's folder.
    pub path: VarStr,
    /// `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// The zstd level, 1 (fastest) to 22 (smallest); default 3.
    #[serde(default)]
    pub compression_level: Option<ZstdLevelConfig>,
    /// Rows per row group (default 131072).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: NonZeroUsize,
    /// Rows per file before a new one is started (default 5000000).
    #[serde(default = "default_file_rows")]
    pub file_rows: NonZeroU64,
    /// Approximate bytes per file before a new one is started (`128MiB`, `1GB`; default: no
    /// limit). Checked after each row group, so files end a little above it.
    #[serde(default, with = "tributary_core::config::byte_size_option")]
    pub file_bytes: Option<NonZeroU64>,
    /// Hive-style partition folders by these columns (`[country, day]` →
    /// `country=DE/day=2024-03-01/`); the columns are left out of the files.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Files open at once across streams and partitions (default 64); past that the least
    /// recently written is finished early.
    #[serde(default = "crate::sink::default_max_open_files")]
    pub max_open_files: NonZeroUsize,
    /// Threads encoding a row group's columns (default: the number of CPUs).
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
}

/// Parquet compression codec.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard level 3: small files, fast enough to write.
    #[default]
    Zstd,
    /// Snappy: faster, larger.
    Snappy,
    /// No compression.
    None,
}

/// A zstd level, checked when the config is read (1 to 22).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct ZstdLevelConfig(pub i32);

impl<'de> Deserialize<'de> for ZstdLevelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let level = i32::deserialize(d)?;
        if (1..=22).contains(&level) {
            Ok(ZstdLevelConfig(level))
        } else {
            Err(serde::de::Error::custom(format!(
                "compression_level {level} is out of range: zstd levels go from 1 (fastest) to 22 (smallest)"
            )))
        }
    }
}

fn default_row_group_rows() -> NonZeroUsize {
    NonZeroUsize::new(131_072).expect("non-zero")
}
fn default_file_rows() -> NonZeroU64 {
    NonZeroU64::new(5_000_000).expect("non-zero")
}

impl ParquetSinkConfig {
    /// A config with defaults for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        ParquetSinkConfig {
            path: VarStr::new(path.into()),
            compression: Compression::default(),
            compression_level: None,
            row_group_rows: default_row_group_rows(),
            file_rows: default_file_rows(),
            file_bytes: None,
            partition_by: Vec::new(),
            max_open_files: crate::sink::default_max_open_files(),
            threads: None,
        }
    }
}

/// The Parquet [`Format`].
pub struct ParquetFormat {
    config: ParquetSinkConfig,
}

/// Writes Parquet files. See the [module docs](self).
pub type ParquetSink = FileSink<ParquetFormat>;

impl FileSink<ParquetFormat> {
    /// Builds the sink; `base_dir` anchors a relative `path`.
    pub fn new(config: ParquetSinkConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        if config.compression_level.is_some() && config.compression != Compression::Zstd {
            return Err(ConfigError::Value {
                field: "sink.compression_level".into(),
                message: "a level applies to zstd only (`compression: zstd`)".into(),
            });
        }
        let layout = Layout {
            dir: base_dir.join(config.path.resolve("sink.path")?),
            file_rows: config.file_rows,
            file_bytes: config.file_bytes,
            partition_by: config.partition_by.clone(),
            max_open_files: config.max_open_files.get(),
        };
        Ok(FileSink::with_format(ParquetFormat { config }, layout))
    }
}

impl ParquetFormat {
    fn properties(&self, first: &RecordBatch) -> WriterProperties {
        let compression = match self.config.compression {
            Compression::Zstd => PqCompression::ZSTD(
                ZstdLevel::try_new(self.config.compression_level.map_or(3, |l| l.0))
                    .expect("checked when the config was read"),
            ),
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        let mut builder = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.config.row_group_rows.get()))
            .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")));
        // Dictionary encoding pays for repetitive columns and costs a hash per value for
        // unique ones (ids, timestamps, free text), which then fall back to plain anyway.
        // Decide per leaf column from the file's first batch, inside structs too.
        let mut unique = Vec::new();
        for (field, column) in first.schema().fields().iter().zip(first.columns()) {
            unique_leaves(vec![field.name().clone()], column.as_ref(), &mut unique);
        }
        for path in unique {
            builder = builder.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::new(path),
                false,
            );
        }
        builder.build()
    }
}

impl Format for ParquetFormat {
    type Writer = ParquetWriter;

    fn extension(&self) -> String {
        "parquet".into()
    }

    fn create(
        &self,
        file: File,
        path: &Path,
        schema: &SchemaRef,
        first: &RecordBatch,
    ) -> Result<ParquetWriter, FileSinkError> {
        let threads = self.config.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let writer = ParallelWriter::try_new(
            file,
            schema.clone(),
            self.properties(first),
            self.config.row_group_rows.get(),
            threads,
        )
        .map_err(encode_err(path))?;
        Ok(ParquetWriter {
            writer,
            path: path.to_path_buf(),
        })
    }
}

fn encode_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> FileSinkError + '_ {
    move |e| FileSinkError::Encode {
        path: path.to_path_buf(),
        format: "Parquet",
        message: e.to_string(),
    }
}

/// One Parquet file being written.
pub struct ParquetWriter {
    writer: ParallelWriter,
    path: std::path::PathBuf,
}

impl FormatWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), FileSinkError> {
        self.writer.write(batch).map_err(encode_err(&self.path))
    }

    fn bytes(&self) -> u64 {
        self.writer.bytes()
    }

    fn finish(self) -> Result<File, FileSinkError> {
        self.writer.finish().map_err(encode_err(&self.path))
    }
}

/// Adds the Parquet paths of the mostly unique leaf columns under `path` (a flat column, or
/// a struct's fields, which are Parquet groups of the same names) to `out`. Lists are left
/// alone: their leaves are repeated values whose paths follow the writer's own naming.
fn unique_leaves(path: Vec<String>, column: &dyn arrow_array::Array, out: &mut Vec<Vec<String>>) {
    if let Some(fields) = column.as_any().downcast_ref::<arrow_array::StructArray>() {
        for (field, child) in fields.fields().iter().zip(fields.columns()) {
            let mut child_path = path.clone();
            child_path.push(field.name().clone());
            unique_leaves(child_path, child.as_ref(), out);
        }
    } else if mostly_unique(column) {
        out.push(path);
    }
}

/// Whether more than half of the first 4096 values of a flat column are distinct.
fn mostly_unique(column: &dyn arrow_array::Array) -> bool {
    use std::collections::HashSet;
    const SAMPLE: usize = 4096;
    let n = column.len().min(SAMPLE);
    if n < 64 {
        return false;
    }
    let distinct = if let Some(strings) = column.as_any().downcast_ref::<arrow_array::StringArray>()
    {
        (0..n)
            .map(|i| strings.value(i))
            .collect::<HashSet<_>>()
            .len()
    } else if let Some(width) = column.data_type().primitive_width() {
        let data = column.to_data();
        let Some(values) = data.buffers().first() else {
            return false;
        };
        let start = data.offset() * width;
        values.as_slice()[start..start + n * width]
            .chunks_exact(width)
            .collect::<HashSet<_>>()
            .len()
    } else {
        return false;
    };
    distinct * 2 > n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_columns_skip_the_dictionary() {
        use arrow_array::{Int64Array, StringArray};
        let ids = Int64Array::from((0..1000).collect::<Vec<i64>>());
        let few = Int64Array::from((0..1000).map(|i| i % 7).collect::<Vec<i64>>());
        let names = StringArray::from((0..1000).map(|i| format!("n{i}")).collect::<Vec<_>>());
        let countries =
            StringArray::from((0..1000).map(|i| ["DE", "FR"][i % 2]).collect::<Vec<_>>());
        assert!(mostly_unique(&ids));
        assert!(!mostly_unique(&few));
        assert!(mostly_unique(&names));
        assert!(!mostly_unique(&countries));
        assert!(
            !mostly_unique(&Int64Array::from(vec![1, 2, 3])),
            "too few rows to judge"
        );
    }

    #[test]
    fn unique_leaves_inside_structs_skip_the_dictionary_too() {
        use arrow_array::{ArrayRef, Int64Array, StringArray, StructArray};
        use arrow_schema::{DataType, Field, Fields, Schema};
        use parquet::schema::types::ColumnPath;
        use std::sync::Arc;
        let rows = 1000i64;
        let geo = Fields::from(vec![
            Field::new("lat", DataType::Int64, false),
            Field::new("zone", DataType::Utf8, false),
        ]);
        let user = Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("geo", DataType::Struct(geo.clone()), false),
        ]);
        let geo_array = StructArray::new(
            geo,
            vec![
                Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i * 7))) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| ["n", "s"][(i % 2) as usize]),
                )),
            ],
            None,
        );
        let user_array = StructArray::new(
            user.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| ["a", "b", "c"][(i % 3) as usize]),
                )),
                Arc::new(geo_array),
            ],
            None,
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Struct(user), false),
            Field::new("seq", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(user_array),
                Arc::new(Int64Array::from_iter_values(0..rows)),
            ],
        )
        .expect("batch");
        let props = ParquetFormat {
            config: ParquetSinkConfig::new("unused"),
        }
        .properties(&batch);
        let path = |p: &[&str]| ColumnPath::new(p.iter().map(|s| s.to_string()).collect());
        for (leaf, dictionary) in [
            (&["user", "id"][..], false),
            (&["user", "kind"][..], true),
            (&["user", "geo", "lat"][..], false),
            (&["user", "geo", "zone"][..], true),
            (&["seq"][..], false),
        ] {
            assert_eq!(
                props.dictionary_enabled(&path(leaf)),
                dictionary,
                "{leaf:?}"
            );
        }
        // The paths are the writer's own: the file has dictionary pages exactly there.
        let mut file = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut file, schema, Some(props)).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(bytes::Bytes::from(file))
                .expect("reader");
        use parquet::file::reader::FileReader;
        let group = reader.metadata().row_group(0);
        let with_dictionary: Vec<String> = group
            .columns()
            .iter()
            .filter(|c| c.dictionary_page_offset().is_some())
            .map(|c| c.column_path().string())
            .collect();
        assert_eq!(with_dictionary, ["user.kind", "user.geo.zone"]);
    }
}
