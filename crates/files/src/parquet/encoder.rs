//! Parquet encoding on several threads.
//!
//! `ArrowWriter` encodes a row group's columns one after the other, on the caller's thread.
//! Encoding (dictionary, levels, zstd) is most of a CSV → Parquet run's CPU, so this writer
//! buffers one row group of batches, spreads its column chunks over `threads` scoped threads
//! with the parquet crate's own `ArrowColumnWriter`s, and appends the finished chunks in
//! column order. The file is byte-for-byte what the parquet crate would write for the same row
//! groups; only who does the work changes.

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
        for batch in self.pending.drain(..) {
            let mut leaf = 0;
            for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
                for l in compute_leaves(field, column)? {
                    leaves[leaf].push(l);
                    leaf += 1;
                }
            }
        }
        let mut groups: Vec<Vec<(usize, ArrowColumnWriter, Vec<ArrowLeafColumn>)>> =
            (0..self.threads).map(|_| Vec::new()).collect();
        for (i, (writer, columns)) in writers.into_iter().zip(leaves).enumerate() {
            groups[i % self.threads].push((i, writer, columns));
        }
        let mut chunks: Vec<Option<ArrowColumnChunk>> = (0..groups.iter().map(Vec::len).sum())
            .map(|_| None)
            .collect();
        std::thread::scope(|scope| -> Result<(), ParquetError> {
            let handles: Vec<_> = groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(|group| {
                    scope.spawn(
                        move || -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
                            let mut out = Vec::with_capacity(group.len());
                            for (i, mut writer, columns) in group {
                                for column in &columns {
                                    writer.write(column)?;
                                }
                                out.push((i, writer.close()?));
                            }
                            Ok(out)
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
