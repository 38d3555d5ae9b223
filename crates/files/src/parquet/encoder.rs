//! Parquet encoding on several threads.
//!
//! `ArrowWriter` encodes a row group's columns one after the other, on the caller's thread.
//! Encoding (dictionary, levels, zstd) is most of a CSV → Parquet run's CPU, so this writer
//! buffers one row group of batches, has `threads` scoped threads encode its column chunks
//! with the parquet crate's own `ArrowColumnWriter`s (the largest first, each thread taking
//! the next when free), and appends the finished chunks in column order. The file is
//! byte-for-byte what `ArrowWriter` writes for the same row groups (tested); only who does
//! the work changes.

use std::fs::File;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn,
    ArrowRowGroupWriterFactory,
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
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_group_rows: usize,
    row_groups: usize,
    threads: usize,
    /// Rows of the row groups written so far (for the size estimate).
    rows_written: u64,
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
        Ok(ParallelWriter {
            writer,
            factory,
            schema,
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
        let writers = self.factory.create_column_writers(self.row_groups)?;
        self.rows_written += self.pending_rows as u64;
        let mut leaves: Vec<Vec<ArrowLeafColumn>> =
            (0..writers.len()).map(|_| Vec::new()).collect();
        // What each leaf column weighs in memory: the encoding work roughly follows it.
        let mut weights = vec![0u64; writers.len()];
        for batch in self.pending.drain(..) {
            let mut leaf = 0;
            for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
                let computed = compute_leaves(field, column)?;
                let bytes = column.to_data().get_slice_memory_size().unwrap_or(0) as u64;
                let share = bytes / computed.len().max(1) as u64;
                for l in computed {
                    leaves[leaf].push(l);
                    weights[leaf] += share;
                    leaf += 1;
                }
            }
        }
        // Largest column first, each thread taking the next one when it is free: a static
        // split leaves one thread with the long text columns while the other idles.
        let mut jobs: Vec<(usize, u64, ArrowColumnWriter, Vec<ArrowLeafColumn>)> = writers
            .into_iter()
            .zip(leaves)
            .zip(weights)
            .enumerate()
            .map(|(i, ((writer, columns), weight))| (i, weight, writer, columns))
            .collect();
        jobs.sort_by_key(|job| std::cmp::Reverse(job.1));
        let count = jobs.len();
        let queue = std::sync::Mutex::new(jobs.into_iter());
        let mut chunks: Vec<Option<ArrowColumnChunk>> = (0..count).map(|_| None).collect();
        std::thread::scope(|scope| -> Result<(), ParquetError> {
            let handles: Vec<_> = (0..self.threads.min(count))
                .map(|_| {
                    let queue = &queue;
                    scope.spawn(
                        move || -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
                            let mut out = Vec::new();
                            loop {
                                let next = queue.lock().map_or(None, |mut q| q.next());
                                let Some((i, _, mut writer, columns)) = next else {
                                    return Ok(out);
                                };
                                for column in &columns {
                                    writer.write(column)?;
                                }
                                out.push((i, writer.close()?));
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
    use arrow_array::{ArrayRef, Int64Array, ListArray, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::io::{Read, Seek};
    use std::sync::Arc;

    #[test]
    fn the_file_is_what_the_arrow_writer_writes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("short", DataType::Utf8, true),
            Field::new("long", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                true,
            ),
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
