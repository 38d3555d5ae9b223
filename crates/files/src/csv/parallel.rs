//! Parallel CSV parsing.
//!
//! One thread (the caller) reads the file in chunks of `chunk_bytes`, cut at the last record
//! boundary it can prove; parser threads turn chunks into batches; the caller emits the results
//! in file order, so positions, line numbers and dead letters are exactly those of a serial read.
//!
//! Finding record boundaries without parsing every field: a newline outside quotes ends a
//! record. Tracking "inside quotes" by counting quote characters is only right for well-formed
//! quoting, so the scan also checks each quote's neighbours: an opening quote must start a field
//! (after a delimiter or a newline, or at the start), a closing quote must end one (before a
//! delimiter, `\r`, `\n` or the end of the file), and `""` inside quotes is a literal quote. A
//! quote anywhere else (`5" screen` in an unquoted field) means the file cannot be split safely:
//! the rest of the file, from the last proven boundary, is read by one thread instead.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{mpsc, Mutex};

use memchr::memchr2;
use tributary_core::SourceContext;

use super::source::{CsvError, CsvPosition, CsvSource, Item, Reading};

/// A chunk of whole records and where it starts.
struct Chunk {
    bytes: Vec<u8>,
    start: CsvPosition,
    /// Line breaks in `bytes` (counted once, here, to place the next chunk).
    line_breaks: usize,
}

/// What the splitter found next.
enum Next {
    Chunk(Chunk),
    /// The quoting is irregular: read `rest` (from `start`) and the remaining file serially.
    Unsplittable {
        rest: Vec<u8>,
        start: CsvPosition,
    },
    End,
}

/// Cuts the file into chunks of whole records.
struct Splitter {
    file: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// Position of `buf[0]` (always a record boundary).
    start: CsvPosition,
    /// Scanning state over `buf`: next byte to look at, inside quotes, last boundary found.
    scanned: usize,
    in_quotes: bool,
    boundary: Option<usize>,
    quote: u8,
    delimiter: u8,
    block: usize,
    eof: bool,
}

enum Scan {
    Done,
    NeedMore,
    Irregular,
}

impl Splitter {
    fn new(
        file: Box<dyn Read + Send>,
        start: CsvPosition,
        quote: u8,
        delimiter: u8,
        block: usize,
    ) -> Self {
        Splitter {
            file,
            buf: Vec::with_capacity(block + block / 4),
            start,
            scanned: 0,
            in_quotes: false,
            boundary: None,
            quote,
            delimiter,
            block,
            eof: false,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let want = self
            .block
            .saturating_sub(self.buf.len())
            .max(self.block / 4)
            .max(1) as u64;
        let n = (&mut self.file).take(want).read_to_end(&mut self.buf)?;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Scans `buf[scanned..]`, updating the quote state and the last boundary.
    fn scan(&mut self) -> Scan {
        let (q, d, buf) = (self.quote, self.delimiter, &self.buf);
        let mut i = self.scanned;
        while let Some(off) = memchr2(q, b'\n', &buf[i..]) {
            let j = i + off;
            if buf[j] == b'\n' {
                if !self.in_quotes {
                    self.boundary = Some(j);
                }
                i = j + 1;
            } else if !self.in_quotes {
                if j > 0 && buf[j - 1] != d && buf[j - 1] != b'\n' {
                    return Scan::Irregular;
                }
                self.in_quotes = true;
                i = j + 1;
            } else {
                match buf.get(j + 1) {
                    Some(&c) if c == q => i = j + 2,
                    Some(&c) if c == d || c == b'\n' || c == b'\r' => {
                        self.in_quotes = false;
                        i = j + 1;
                    }
                    Some(_) => return Scan::Irregular,
                    None if self.eof => {
                        self.in_quotes = false;
                        i = j + 1;
                    }
                    None => {
                        // A quote at the end of what was read: decide once more bytes arrive.
                        self.scanned = j;
                        return Scan::NeedMore;
                    }
                }
            }
        }
        self.scanned = buf.len();
        Scan::Done
    }

    fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if self.buf.len() < self.block && !self.eof {
                self.fill()?;
            }
            match self.scan() {
                Scan::Irregular => {
                    return Ok(Next::Unsplittable {
                        rest: std::mem::take(&mut self.buf),
                        start: self.start,
                    })
                }
                Scan::NeedMore if !self.eof => {
                    self.fill()?;
                    continue;
                }
                _ => {}
            }
            if self.buf.is_empty() {
                return Ok(Next::End);
            }
            let cut = if self.eof {
                self.buf.len()
            } else if let Some(b) = self.boundary {
                b + 1
            } else {
                // No boundary yet (one record longer than a block): read more.
                self.fill()?;
                continue;
            };
            let rest = self.buf.split_off(cut);
            let bytes = std::mem::replace(&mut self.buf, rest);
            let start = self.start;
            let line_breaks = memchr::memchr_iter(b'\n', &bytes).count();
            self.start = CsvPosition {
                offset: start.offset + bytes.len() as u64,
                line: start.line + line_breaks as u64,
            };
            self.scanned = 0;
            self.in_quotes = false;
            self.boundary = None;
            return Ok(Next::Chunk(Chunk {
                bytes,
                start,
                line_breaks,
            }));
        }
    }
}

type Parsed = Result<Vec<Item>, CsvError>;

/// Reads `file` (positioned at `start`) with `threads` parser threads, emitting in order.
pub(super) fn read(
    src: &CsvSource,
    ctx: &SourceContext,
    rt: &tokio::runtime::Handle,
    r: &Reading<'_>,
    file: Box<dyn Read + Send>,
    start: CsvPosition,
    threads: usize,
) -> Result<(), CsvError> {
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Chunk)>(threads);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::channel::<(u64, Parsed)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            scope.spawn(move || loop {
                let job = work_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((seq, chunk))) = job else { return };
                let mut items = Vec::new();
                let parsed = src
                    .assemble_chunk(r, &chunk.bytes, chunk.start, chunk.line_breaks, |item| {
                        items.push(item);
                        true
                    })
                    .map(|()| items);
                if done_tx.send((seq, parsed)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let splitter = Splitter::new(file, start, src.quote(), src.delimiter(), src.chunk_bytes());
        orchestrate(
            src,
            ctx,
            rt,
            r,
            splitter,
            work_tx,
            done_rx,
            threads as u64 * 2,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn orchestrate(
    src: &CsvSource,
    ctx: &SourceContext,
    rt: &tokio::runtime::Handle,
    r: &Reading<'_>,
    mut splitter: Splitter,
    work_tx: mpsc::SyncSender<(u64, Chunk)>,
    done_rx: mpsc::Receiver<(u64, Parsed)>,
    max_in_flight: u64,
) -> Result<(), CsvError> {
    let path = r.file.path.as_path();
    let io_err = |source| {
        CsvError::File(crate::input::FileError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let (mut next_seq, mut next_emit) = (0u64, 0u64);
    let mut pending: BTreeMap<u64, Parsed> = BTreeMap::new();
    let mut serial_tail: Option<(Vec<u8>, CsvPosition)> = None;
    let mut done_reading = false;
    loop {
        if !done_reading && next_seq - next_emit < max_in_flight {
            match splitter.next().map_err(io_err)? {
                Next::Chunk(chunk) => {
                    if work_tx.send((next_seq, chunk)).is_err() {
                        return Err(CsvError::Worker(path.to_path_buf()));
                    }
                    next_seq += 1;
                    continue;
                }
                Next::Unsplittable { rest, start } => {
                    tracing::info!(file = %path.display(), offset = start.offset,
                        "irregular quoting: reading the rest of the file with one thread");
                    serial_tail = Some((rest, start));
                    done_reading = true;
                }
                Next::End => done_reading = true,
            }
        }
        if next_emit == next_seq {
            break;
        }
        let (seq, parsed) = done_rx
            .recv()
            .map_err(|_| CsvError::Worker(path.to_path_buf()))?;
        pending.insert(seq, parsed);
        while let Some(parsed) = pending.remove(&next_emit) {
            for item in parsed? {
                if !r.emit(ctx, rt, item) {
                    return Ok(());
                }
            }
            next_emit += 1;
        }
    }
    drop(work_tx);
    if let Some((rest, start)) = serial_tail {
        let input = std::io::Cursor::new(rest).chain(splitter.file);
        src.assemble(r, input, start, |item| r.emit(ctx, rt, item))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chunks(text: &[u8], block: usize) -> (Vec<(Vec<u8>, CsvPosition)>, bool) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text).unwrap();
        use std::io::Seek;
        f.rewind().unwrap();
        let mut s = Splitter::new(
            Box::new(f),
            CsvPosition { offset: 0, line: 1 },
            b'"',
            b',',
            block,
        );
        let mut out = Vec::new();
        loop {
            match s.next().unwrap() {
                Next::Chunk(c) => out.push((c.bytes, c.start)),
                Next::Unsplittable { .. } => return (out, true),
                Next::End => return (out, false),
            }
        }
    }

    #[test]
    fn chunks_end_on_record_boundaries_outside_quotes() {
        let text = b"1,\"a\nb\",x\n2,\"c\"\"d\",y\n3,e,z\n4,\"\",w";
        for block in 1..text.len() + 2 {
            let (out, irregular) = chunks(text, block);
            assert!(!irregular);
            let joined: Vec<u8> = out.iter().flat_map(|(b, _)| b.clone()).collect();
            assert_eq!(joined, text.to_vec(), "block {block}");
            for (bytes, start) in &out {
                // Each chunk holds whole records: it never ends inside the quoted newline.
                assert!(
                    !bytes.ends_with(b"\"a\n"),
                    "block {block}: cut inside quotes"
                );
                let expected_line = 1 + text[..start.offset as usize]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64;
                assert_eq!(start.line, expected_line);
            }
        }
    }

    #[test]
    fn a_stray_quote_makes_the_file_unsplittable() {
        let (_, irregular) = chunks(b"1,5\" screen,x\n2,b,y\n", 4);
        assert!(irregular);
        let (_, irregular) = chunks(b"1,\"a\"b,x\n", 4);
        assert!(irregular, "text after a closing quote");
    }
}
