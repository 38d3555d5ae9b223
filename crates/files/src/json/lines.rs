//! Lines of a reader, read in large blocks and handed out as slices of the block (no copy per
//! line, one `memchr` per line).

use std::io::Read;

const BLOCK: usize = 4 << 20;

/// A line-by-line view of a reader.
pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the next line in `buf`.
    start: usize,
    /// Bytes of `buf` that hold data.
    end: usize,
    /// `buf[start..searched]` has no newline (so a long line is not searched again).
    searched: usize,
    eof: bool,
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Lines {
            reader,
            buf: vec![0; BLOCK],
            start: 0,
            end: 0,
            searched: 0,
            eof: false,
        }
    }

    /// The next line (without its `\n`) and the bytes it took (with it); `None` at the end.
    pub(crate) fn next_line(&mut self) -> std::io::Result<Option<(&[u8], usize)>> {
        loop {
            let from = self.searched.max(self.start);
            if let Some(i) = memchr::memchr(b'\n', &self.buf[from..self.end]) {
                let line = self.start..from + i;
                let taken = from + i + 1 - self.start;
                self.start = from + i + 1;
                return Ok(Some((&self.buf[line], taken)));
            }
            self.searched = self.end;
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let line = self.start..self.end;
                self.start = self.end;
                return Ok(Some((&self.buf[line.clone()], line.len())));
            }
            // Move the partial line to the front, grow if one line fills the buffer, read.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.searched = self.end;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.reader.read(&mut self.buf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_span_blocks_and_the_last_may_lack_a_newline() {
        // A reader that hands out a few bytes at a time.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(1000).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let long = "x".repeat(BLOCK + 10);
        let text = format!("a\n\nbcd\n{long}\nlast");
        let mut lines = Lines::new(Slow(text.as_bytes()));
        let mut got = Vec::new();
        while let Some((line, n)) = lines.next_line().unwrap() {
            got.push((String::from_utf8(line.to_vec()).unwrap(), n));
        }
        assert_eq!(
            got,
            [
                ("a".to_string(), 2),
                (String::new(), 1),
                ("bcd".to_string(), 4),
                (long.clone(), long.len() + 1),
                ("last".to_string(), 4)
            ]
        );
    }
}
