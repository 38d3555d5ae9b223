//! Parquet encoding on several threads.
//!
//! `ArrowWriter` encodes a row group's columns one after the other, on the caller's thread.
//! Encoding (dictionary, levels, zstd) is most of a CSV → Parquet run's CPU, so this writer
//! buffers one row group of batches, has `threads` scoped threads encode its column chunks
//! with the parquet crate's own `ArrowColumnWriter`s, a top-level field at a time (the
//! largest first, each thread taking the next when free), and appends the finished chunks in
//! column order. The file is
//! byte-for-byte what `ArrowWriter` writes for the same row groups (tested); only who does
//! the work changes.

use std::fs::File;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// Writes one Parquet file, encoding each row group's columns in parallel.
pub(crate) struct ParallelWriter {
    writer: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Parquet leaf columns per top-level field, from the file's schema (fixed per file).
    leaves: Vec<usize>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_group_rows: usize,
    row_groups: usize,
    threads: usize,
    /// Rows of the row groups written so far (for the size estimate).
    rows_written: u64,
}

/// A row group's share of work for one top-level field.
struct FieldJob {
    /// Index of the field's first leaf column in the file.
    first_leaf: usize,
    weight: u64,
    field: arrow_schema::FieldRef,
    /// One writer per leaf column of the field, in order.
    writers: Vec<ArrowColumnWriter>,
    /// The field's array in each pending batch.
    columns: Vec<arrow_array::ArrayRef>,
}

impl FieldJob {
    /// Encodes the field's leaf column chunks; returns them with their leaf index.
    fn encode(self) -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
        let FieldJob {
            first_leaf,
            field,
            mut writers,
            columns,
            ..
        } = self;
        for column in columns {
            let leaves = compute_leaves(&field, &column)?;
            if leaves.len() != writers.len() {
                return Err(ParquetError::General(format!(
                    "field {}: {} leaf columns, {} writers",
                    field.name(),
                    leaves.len(),
                    writers.len()
                )));
            }
            for (writer, leaf) in writers.iter_mut().zip(&leaves) {
                writer.write(leaf)?;
            }
        }
        writers
            .into_iter()
            .enumerate()
            .map(|(k, writer)| Ok((first_leaf + k, writer.close()?)))
            .collect()
    }
}

/// How many Parquet leaf columns each of the first `fields` top-level fields became, read
/// from the file's own schema (the root each leaf belongs to), so the split always agrees with
/// the column writers the parquet crate hands out.
fn leaves_per_field(
    schema: &parquet::schema::types::SchemaDescriptor,
    fields: usize,
) -> Vec<usize> {
    let mut counts = vec![0; fields];
    for leaf in 0..schema.num_columns() {
        if let Some(count) = counts.get_mut(schema.get_column_root_idx(leaf)) {
            *count += 1;
        }
    }
    counts
}

impl ParallelWriter {
    /// Starts a file with the given schema and properties.
    pub(crate) fn try_new(
        file: File,
        schema: SchemaRef,
        props: WriterProperties,
        row_group_rows: usize,
        threads: usize,
    ) -> Result<Self, ParquetError> {
        let (writer, factory) =
            ArrowWriter::try_new(file, schema.clone(), Some(props))?.into_serialized_writer()?;
        let leaves = leaves_per_field(writer.schema_descr(), schema.fields().len());
        Ok(ParallelWriter {
            writer,
            factory,
            schema,
            leaves,
            pending: Vec::new(),
            pending_rows: 0,
            row_group_rows: row_group_rows.max(1),
            row_groups: 0,
            threads: threads.max(1),
            rows_written: 0,
        })
    }

    /// Adds rows; full row groups are encoded and written at once.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (self.row_group_rows - self.pending_rows).min(batch.num_rows() - offset);
            self.pending.push(batch.slice(offset, take));
            self.pending_rows += take;
            offset += take;
            if self.pending_rows == self.row_group_rows {
                self.flush_row_group()?;
            }
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), ParquetError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut writers = self
            .factory
            .create_column_writers(self.row_groups)?
            .into_iter();
        self.rows_written += self.pending_rows as u64;
        let batches = std::mem::take(&mut self.pending);
        // One job per top-level field: its leaf writers and its arrays. The leaves (levels and
        // non-null indices, about 10 bytes a row for each nullable column) are computed inside
        // the job, a batch at a time, and dropped once written. Computing them all up front
        // held them for the whole row group: peak RSS fell from 75-80 to 68-74 MB on B1's
        // 5M-row CSV and from 107-109 to 95 MB on B2's NDJSON, at the same speed.
        let mut jobs: Vec<FieldJob> = Vec::with_capacity(self.schema.fields().len());
        let mut first_leaf = 0;
        for (i, (field, &leaves)) in self.schema.fields().iter().zip(&self.leaves).enumerate() {
            let columns: Vec<_> = batches.iter().map(|b| b.column(i).clone()).collect();
            // What the field weighs in memory: the encoding work roughly follows it.
            let weight = columns
                .iter()
                .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
                .sum();
            jobs.push(FieldJob {
                first_leaf,
                weight,
                field: field.clone(),
                writers: writers.by_ref().take(leaves).collect(),
                columns,
            });
            first_leaf += leaves;
        }
        drop(batches);
        if writers.next().is_some() || jobs.iter().any(|j| j.writers.is_empty()) {
            return Err(ParquetError::General(
                "the Parquet schema's leaves do not match the Arrow schema's fields".into(),
            ));
        }
        // Largest field first, each thread taking the next one when it is free: a static
        // split leaves one thread with the long text columns while the other idles.
        jobs.sort_by_key(|job| std::cmp::Reverse(job.weight));
        let count = first_leaf;
        let threads = self.threads.min(jobs.len());
        let queue = std::sync::Mutex::new(jobs.into_iter());
        let mut chunks: Vec<Option<ArrowColumnChunk>> = (0..count).map(|_| None).collect();
        std::thread::scope(|scope| -> Result<(), ParquetError> {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let queue = &queue;
                    scope.spawn(
                        move || -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
                            let mut out = Vec::new();
                            loop {
                                let next = queue.lock().map_or(None, |mut q| q.next());
                                let Some(job) = next else {
                                    return Ok(out);
                                };
                                out.extend(job.encode()?);
                            }
                        },
                    )
                })
                .collect();
            for handle in handles {
                let encoded = handle.join().map_err(|_| {
                    ParquetError::General("a Parquet encoder thread panicked".into())
                })??;
                for (i, chunk) in encoded {
                    chunks[i] = Some(chunk);
                }
            }
            Ok(())
        })?;
        let mut row_group = self.writer.next_row_group()?;
        for chunk in chunks {
            chunk
                .ok_or_else(|| ParquetError::General("a column chunk was not encoded".into()))?
                .append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.pending_rows = 0;
        self.row_groups += 1;
        Ok(())
    }

    /// About how large the file would be if finished now: the bytes written, plus the
    /// buffered rows at the bytes per row of the row groups so far (nothing before the first
    /// row group is written, so a size limit is checked at row-group granularity).
    pub(crate) fn bytes(&self) -> u64 {
        let written = self.writer.bytes_written() as u64;
        if self.rows_written == 0 {
            return written;
        }
        written + written * self.pending_rows as u64 / self.rows_written
    }

    /// Writes the last row group and the footer; returns the file for syncing.
    pub(crate) fn finish(mut self) -> Result<File, ParquetError> {
        self.flush_row_group()?;
        // `into_inner` writes the footer.
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray, StructArray,
    };
    use arrow_schema::{DataType, Field, Fields, Schema};
    use std::io::{Read, Seek};
    use std::sync::Arc;

    #[test]
    fn the_file_is_what_the_arrow_writer_writes() {
        let point_fields = Fields::from(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("label", DataType::Utf8, true),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("short", DataType::Utf8, true),
            Field::new("long", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                true,
            ),
            // Two leaf columns from one field, between single-leaf ones.
            Field::new("point", DataType::Struct(point_fields.clone()), true),
            Field::new("last", DataType::Float64, true),
        ]));
        let batch = |from: i64, rows: i64| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(from..from + rows)),
                Arc::new(StringArray::from_iter(
                    (from..from + rows).map(|i| (i % 7 != 0).then(|| format!("s{}", i % 13))),
                )),
                Arc::new(StringArray::from_iter_values(
                    (from..from + rows).map(|i| "long text ".repeat((i % 50) as usize)),
                )),
                Arc::new(ListArray::from_iter_primitive::<
                    arrow_array::types::Int64Type,
                    _,
                    _,
                >(
                    (from..from + rows).map(|i| (i % 3 != 0).then(|| vec![Some(i), None])),
                )),
                arrow_select::nullif::nullif(
                    &StructArray::new(
                        point_fields.clone(),
                        vec![
                            Arc::new(Int64Array::from_iter_values(
                                (from..from + rows).map(|i| i * 2),
                            )),
                            Arc::new(StringArray::from_iter(
                                (from..from + rows).map(|i| (i % 5 != 0).then(|| format!("p{i}"))),
                            )),
                        ],
                        None,
                    ),
                    &BooleanArray::from_iter((from..from + rows).map(|i| Some(i % 11 == 0))),
                )
                .expect("nullif"),
                Arc::new(Float64Array::from_iter(
                    (from..from + rows).map(|i| (i % 4 != 0).then_some(i as f64 / 3.0)),
                )),
            ];
            RecordBatch::try_new(schema.clone(), columns).expect("valid batch")
        };
        let batches: Vec<RecordBatch> = (0..7).map(|k| batch(k * 300, 300)).collect();
        let props = || {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(500))
                .set_created_by("test".into())
                .build()
        };
        let mut expected = tempfile::tempfile().expect("temp file");
        let mut writer = ArrowWriter::try_new(
            expected.try_clone().expect("clone"),
            schema.clone(),
            Some(props()),
        )
        .expect("writer");
        for b in &batches {
            writer.write(b).expect("write");
        }
        writer.close().expect("close");
        for threads in [1, 2, 3, 8] {
            let file = tempfile::tempfile().expect("temp file");
            let mut parallel = ParallelWriter::try_new(file, schema.clone(), props(), 500, threads)
                .expect("writer");
            // The struct field (two leaves) and the list (one) split as the schema says.
            assert_eq!(
                leaves_per_field(parallel.writer.schema_descr(), schema.fields().len()),
                [1, 1, 1, 1, 2, 1]
            );
            for b in &batches {
                parallel.write(b).expect("write");
            }
            let mut file = parallel.finish().expect("finish");
            let (mut got, mut want) = (Vec::new(), Vec::new());
            file.rewind().expect("rewind");
            file.read_to_end(&mut got).expect("read");
            expected.rewind().expect("rewind");
            expected.read_to_end(&mut want).expect("read");
            assert!(got == want, "{threads} threads: the files differ");
        }
    }
}
