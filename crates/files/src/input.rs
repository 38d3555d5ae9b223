//! Which files a file source reads, in what order, and how each one is opened.
//!
//! `path:` in a file source is a file, a folder (every file under it, recursively, hidden
//! files and `*.tmp` skipped) or a glob (`data/2024-*.csv`, `logs/**/*.ndjson`). The files are
//! read in name order. A `.gz` or `.zst` file is decompressed on the fly (`compression: auto`,
//! the default, goes by the extension).
//!
//! ## The ledger and positions
//! A stream's position is a [`FilePosition`]: the file being read (its name, size and
//! modification time) and the format's own place in it (byte offset and line for text). When a
//! file is done the source emits a last, empty batch whose metadata *completes* the file: the
//! runtime writes the file to the ledger in the same transaction that commits that position,
//! after everything before it is durable. On the next run [`plan`] skips files the ledger has
//! (same size and mtime), resumes the file the committed position is in, and reads new or
//! changed files from the start. A file that changed while it was half-read is an error: its
//! first half is already written from the old content.
//!
//! Offsets in a compressed (or re-encoded) file count decompressed bytes; resuming one
//! decompresses from the start and skips to the offset, since such streams cannot seek.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tributary_core::error::{classify_io, Classify, ConnectorError, ErrorClass};
use tributary_core::state::FileRecord;
use tributary_core::Position;

/// How input files are compressed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// By extension: `.gz` is gzip, `.zst` is zstd, anything else is read as it is.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip (also concatenated members, as `cat a.gz b.gz` makes).
    Gzip,
    /// Zstandard.
    Zstd,
}

/// How the file ledger tells whether a file was already ingested (`identify_by:`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// Name, size and modification time (or ETag): cheap; a `touch` or a copy is read again.
    #[default]
    Metadata,
    /// Also a hash of the whole content: a file whose metadata changed but whose content did
    /// not is skipped. Costs a read of every new or changed file (and of each file read).
    Content,
}

/// The codec of one file, after `auto` was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Plain bytes: seekable.
    Plain,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn codec_for(self, path: &Path) -> Codec {
        match self {
            Compression::None => Codec::Plain,
            Compression::Gzip => Codec::Gzip,
            Compression::Zstd => Codec::Zstd,
            Compression::Auto => match path.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("gz") => Codec::Gzip,
                Some(e) if e.eq_ignore_ascii_case("zst") || e.eq_ignore_ascii_case("zstd") => {
                    Codec::Zstd
                }
                _ => Codec::Plain,
            },
        }
    }
}

/// Errors shared by the file sources. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Listing or reading object storage failed.
    #[error(transparent)]
    Object(#[from] crate::object::ObjectError),
    /// A file cannot be opened, read or listed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `path` is not a valid glob pattern.
    #[error("`{pattern}` is not a valid glob pattern: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        message: String,
    },
    /// Nothing matches `path`.
    #[error("no file matches `{pattern}`")]
    NoFiles {
        /// The pattern.
        pattern: String,
    },
    /// The file is shorter than the committed position: it was replaced or truncated.
    #[error(
        "{path} ends at byte {len}, before the committed position (byte {offset}): the file was \
         replaced or truncated since the last run"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes it has now (decompressed, for a compressed file).
        len: u64,
        /// The committed offset.
        offset: u64,
    },
    /// A file that was half-read by an earlier run changed since.
    #[error(
        "{path} changed since an earlier run read part of it (then {then_size} bytes, now \
         {now_size}): the rows already written came from the old content"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when the earlier run read it.
        then_size: u64,
        /// Its size now.
        now_size: u64,
    },
    /// The state store holds something this source did not write.
    #[error(
        "{stream}: the committed position {position} is not one this source writes: {message}"
    )]
    BadState {
        /// The stream.
        stream: String,
        /// The stored position.
        position: String,
        /// What is wrong.
        message: String,
    },
}

impl Classify for FileError {
    fn class(&self) -> ErrorClass {
        match self {
            FileError::Io { source, .. } => classify_io(source),
            FileError::Object(e) if e.is_transient() => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        }
    }
}

impl From<FileError> for ConnectorError {
    fn from(e: FileError) -> Self {
        let hint = match &e {
            FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some("check `source.path` (relative paths start at the pipeline file's folder)")
            }
            FileError::NoFiles { .. } => Some(
                "check `source.path`: a file, a folder or a glob such as `data/*.csv`, relative \
                 to the pipeline file's folder, or `s3://bucket/prefix/*.csv`",
            ),
            FileError::Object(_) => Some(
                "check `source.path` and `source.s3` (endpoint, region, credentials; or the \
                 AWS_* environment variables)",
            ),
            FileError::Truncated { .. }
            | FileError::Changed { .. }
            | FileError::BadState { .. } => Some(crate::RESET_HINT),
            _ => None,
        };
        let err = ConnectorError::classified(e);
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

/// One file to read.
#[derive(Clone, Debug, PartialEq)]
pub struct InputFile {
    /// Where it is, for opening and messages.
    pub path: PathBuf,
    /// Its ledger entry: name (relative to the pipeline folder), size, modification time.
    pub record: FileRecord,
    /// How it is compressed.
    pub codec: Codec,
    /// The object, when the file is in object storage (`path` is then its URL).
    pub object: Option<crate::object::ObjectFile>,
    /// Whether the ledger identifies this file by its content hash too (`identify_by: content`).
    pub by_content: bool,
}

impl InputFile {
    /// Whether offsets can be reached by seeking (plain files).
    pub fn seekable(&self) -> bool {
        self.codec == Codec::Plain
    }

    /// A position in this file.
    pub fn position<P: Serialize>(&self, at: P) -> Position {
        Position::encode(&FilePosition {
            file: self.record.path.clone(),
            size: self.record.size,
            mtime_ns: self.record.mtime_ns,
            etag: self.record.etag.clone(),
            at,
        })
        .expect("file positions serialise")
    }

    /// Opens the file and moves to byte `offset` of its (decompressed) content; `len` of a
    /// plain file is checked first, a compressed one is decompressed up to the offset.
    pub fn open_at(&self, offset: u64) -> Result<Box<dyn Read + Send>, FileError> {
        let io = |source| FileError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(object) = &self.object {
            if self.codec == Codec::Plain && offset > self.record.size {
                return Err(FileError::Truncated {
                    path: self.path.clone(),
                    len: self.record.size,
                    offset,
                });
            }
            let (reader, at) = match self.codec {
                Codec::Plain => (object.reader(offset), offset),
                Codec::Gzip => (
                    Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                        1 << 16,
                        object.reader(0),
                    ))) as Box<dyn Read + Send>,
                    0,
                ),
                Codec::Zstd => (
                    Box::new(zstd::stream::read::Decoder::new(object.reader(0)).map_err(io)?)
                        as Box<dyn Read + Send>,
                    0,
                ),
            };
            let mut reader = reader;
            if at < offset {
                skip(&mut reader, offset).map_err(|e| match e {
                    Skip::Io(source) => io(source),
                    Skip::Short(len) => FileError::Truncated {
                        path: self.path.clone(),
                        len,
                        offset,
                    },
                })?;
            }
            return Ok(reader);
        }
        let mut file = File::open(&self.path).map_err(io)?;
        let mut reader: Box<dyn Read + Send> = match self.codec {
            Codec::Plain => {
                let len = file.metadata().map_err(io)?.len();
                if offset > len {
                    return Err(FileError::Truncated {
                        path: self.path.clone(),
                        len,
                        offset,
                    });
                }
                file.seek(SeekFrom::Start(offset)).map_err(io)?;
                return Ok(Box::new(file));
            }
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                1 << 16,
                file,
            ))),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(io)?),
        };
        skip(&mut reader, offset).map_err(|e| match e {
            Skip::Io(source) => io(source),
            Skip::Short(len) => FileError::Truncated {
                path: self.path.clone(),
                len,
                offset,
            },
        })?;
        Ok(reader)
    }

    /// Opens the file from the start, decompressed.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, FileError> {
        self.open_at(0)
    }

    /// A local path to the file, for formats that need random access: the file itself, or
    /// a temporary copy of an object (removed when the returned value is dropped).
    pub fn local(&self) -> Result<crate::object::LocalFile, FileError> {
        match &self.object {
            None => Ok(crate::object::LocalFile::local(self.path.clone())),
            Some(object) => {
                tracing::debug!(object = object.url(), "downloading for random access");
                object
                    .download()
                    .map(crate::object::LocalFile::downloaded)
                    .map_err(|source| FileError::Io {
                        path: self.path.clone(),
                        source,
                    })
            }
        }
    }

    /// A hash of the whole (stored, not decompressed) content: `xxh3:<hex>`.
    pub fn content_hash(&self) -> Result<String, FileError> {
        let io = |source| FileError::Io {
            path: self.path.clone(),
            source,
        };
        let mut reader: Box<dyn Read + Send> = match &self.object {
            Some(o) => o.reader(0),
            None => Box::new(File::open(&self.path).map_err(io)?),
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("xxh3:{:032x}", hasher.digest128()))
    }

    /// A fingerprint of the file's first `len` bytes (`None` for objects, which are
    /// replaced whole and identified by their ETag).
    pub fn fingerprint(&self, len: u64) -> Option<String> {
        if self.object.is_some() {
            return None;
        }
        fingerprint(&self.path, len).ok()
    }
}

enum Skip {
    Io(std::io::Error),
    Short(u64),
}

fn skip(reader: &mut dyn Read, offset: u64) -> Result<(), Skip> {
    let skipped =
        std::io::copy(&mut reader.take(offset), &mut std::io::sink()).map_err(Skip::Io)?;
    if skipped < offset {
        return Err(Skip::Short(skipped));
    }
    Ok(())
}

/// Where a file source is: which file (with the size and mtime it had) and where in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition<P> {
    /// The file's name (relative to the pipeline folder).
    pub file: String,
    /// Its size when read.
    pub size: u64,
    /// Its modification time when read (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Its ETag when read (objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The format's place in the file.
    #[serde(flatten)]
    pub at: P,
}

impl<P> FilePosition<P> {
    fn record(&self) -> FileRecord {
        FileRecord {
            path: self.file.clone(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            etag: self.etag.clone(),
            hash: None,
            end: None,
            content_hash: None,
        }
    }
}

/// Bytes hashed at each end of a file for its fingerprint.
const FINGERPRINT_BYTES: u64 = 64 << 10;

/// A hash of the first and last 64 KiB of the first `len` bytes of a file: equal for a file
/// that was only appended to since, different (in practice) for one that was rewritten.
pub fn fingerprint(path: &Path, len: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let head_len = len.min(FINGERPRINT_BYTES);
    let mut buf = Vec::with_capacity(head_len as usize);
    (&mut file).take(head_len).read_to_end(&mut buf)?;
    feed(&buf);
    if len > head_len {
        let tail_start = (len - FINGERPRINT_BYTES).max(head_len);
        file.seek(SeekFrom::Start(tail_start))?;
        buf.clear();
        (&mut file).take(len - tail_start).read_to_end(&mut buf)?;
        feed(&buf);
    }
    if (buf.len() as u64) < len.min(FINGERPRINT_BYTES) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shorter than expected",
        ));
    }
    Ok(format!("{len}:{hash:016x}"))
}

/// The files behind a source's `path:`.
#[derive(Clone, Debug)]
pub struct FileSet {
    base_dir: PathBuf,
    pattern: String,
    compression: Compression,
    object: Option<crate::object::ObjectLocation>,
    by_content: bool,
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

fn hidden_or_temporary(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name.ends_with(".tmp")
}

impl FileSet {
    /// The files matching `pattern` (a file, folder or glob), relative to `base_dir`.
    pub fn new(base_dir: &Path, pattern: &str, compression: Compression) -> Self {
        FileSet {
            base_dir: base_dir.to_path_buf(),
            pattern: pattern.to_string(),
            compression,
            object: None,
            by_content: false,
        }
    }

    /// The file set of a file source's settings: `path` (a file, folder, glob or `s3://`
    /// URL, relative to `base_dir`), its compression, S3 settings and ledger identity; and
    /// the stream name (`stream`, or one derived from the path).
    pub fn for_source(
        base_dir: &Path,
        path: &tributary_core::config::VarStr,
        compression: Compression,
        s3: Option<&crate::object::S3Options>,
        identify_by: Identity,
        stream: Option<&String>,
    ) -> Result<(Self, String), tributary_core::config::ConfigError> {
        let set = FileSet::configure(base_dir, &path.resolve("source.path")?, compression, s3)?
            .identify_by_content(identify_by == Identity::Content);
        let stream = stream.cloned().unwrap_or_else(|| set.default_stream());
        Ok((set, stream))
    }

    /// [`FileSet::list`], with no file at all an error unless the source follows the path
    /// (then files may come later).
    pub fn list_for_run(&self, follow: bool) -> Result<Vec<InputFile>, FileError> {
        let files = self.list()?;
        if files.is_empty() && !follow {
            return Err(FileError::NoFiles {
                pattern: self.display(),
            });
        }
        Ok(files)
    }

    /// Identifies files by the hash of their content as well as by their metadata: a file
    /// whose size or modification time changed but whose content did not is not read again
    /// (a copy, a `touch`, a re-upload). Costs a read of each changed or new file.
    pub fn identify_by_content(mut self, on: bool) -> Self {
        self.by_content = on;
        self
    }

    /// Like [`FileSet::new`], and an `s3://bucket/prefix` pattern reads object storage
    /// with `s3` settings (see [`crate::object`]).
    pub fn configure(
        base_dir: &Path,
        pattern: &str,
        compression: Compression,
        s3: Option<&crate::object::S3Options>,
    ) -> Result<Self, tributary_core::config::ConfigError> {
        let mut set = FileSet::new(base_dir, pattern, compression);
        if crate::object::is_object_url(pattern) {
            set.object = Some(crate::object::ObjectLocation::parse(pattern, s3)?);
        } else if s3.is_some() {
            return Err(tributary_core::config::ConfigError::Value {
                field: "source.s3".into(),
                message: format!(
                    "`s3` settings apply to `s3://` paths only, and `path` is `{pattern}`"
                ),
            });
        }
        Ok(set)
    }

    /// The pattern as configured, joined to the pipeline folder.
    pub fn display(&self) -> String {
        match &self.object {
            Some(o) => o.display(),
            None => self.base_dir.join(&self.pattern).display().to_string(),
        }
    }

    /// A default stream name: the file name without extensions for one file, the folder's
    /// name for a folder, the last literal path part for a glob.
    pub fn default_stream(&self) -> String {
        if self.object.is_some() {
            // `s3://bucket/orders/2024-*.csv` → `2024`... is unhelpful; use the same rules on
            // the key pattern, where a trailing `/` names a folder.
            let key = self.pattern.trim_start_matches("s3://");
            let key = key.split_once('/').map_or("", |(_, k)| k);
            let folder = key.ends_with('/') || key.is_empty();
            let trimmed = key.trim_end_matches('/');
            let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
            if is_glob(last) {
                if let Some(stem) = last
                    .split(['*', '?', '['])
                    .next()
                    .map(|s| s.trim_end_matches(['-', '_', '.']))
                    .filter(|s| !s.is_empty())
                {
                    return stem.to_string();
                }
                let parent = trimmed.rsplit('/').nth(1).unwrap_or("objects");
                return parent.to_string();
            }
            if folder {
                return if last.is_empty() {
                    "objects".into()
                } else {
                    last.to_string()
                };
            }
            return last.split('.').next().unwrap_or(last).to_string();
        }
        let full = self.base_dir.join(&self.pattern);
        let literal: PathBuf = full
            .components()
            .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
            .collect();
        let last_part = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "files".into())
        };
        if is_glob(&self.pattern) || full.is_dir() {
            let name = last_part(&literal);
            if is_glob(&self.pattern) {
                // `data/orders-*.csv` → `orders`; `data/*.csv` → `data`.
                let file_part = full.file_name().map(|f| f.to_string_lossy().into_owned());
                if let Some(stem) = file_part
                    .as_deref()
                    .and_then(|f| f.split(['*', '?', '[']).next())
                    .map(|s| s.trim_end_matches(['-', '_', '.']))
                    .filter(|s| !s.is_empty())
                {
                    return stem.to_string();
                }
            }
            return name;
        }
        let name = last_part(&full);
        name.split('.').next().unwrap_or(&name).to_string()
    }

    /// Lists the files, sorted by name. A missing single file is an error (`NotFound`); a
    /// folder or glob with no file is an empty list.
    pub fn list(&self) -> Result<Vec<InputFile>, FileError> {
        if let Some(location) = &self.object {
            return Ok(location
                .list()?
                .into_iter()
                .map(|(object, size, mtime_ns, etag)| InputFile {
                    path: PathBuf::from(object.url()),
                    codec: self.compression.codec_for(Path::new(object.url())),
                    record: FileRecord {
                        path: object.url().to_string(),
                        size,
                        mtime_ns,
                        etag,
                        hash: None,
                        end: None,
                        content_hash: None,
                    },
                    object: Some(object),
                    by_content: self.by_content,
                })
                .collect());
        }
        let full = self.base_dir.join(&self.pattern);
        let mut paths = Vec::new();
        if is_glob(&self.pattern) {
            let pattern = full.to_string_lossy().into_owned();
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let entries = glob::glob_with(&pattern, options).map_err(|e| FileError::Pattern {
                pattern: self.pattern.clone(),
                message: e.to_string(),
            })?;
            for entry in entries {
                let path = entry.map_err(|e| FileError::Io {
                    path: e.path().to_path_buf(),
                    source: std::io::Error::new(e.error().kind(), e.error().to_string()),
                })?;
                if path.is_file() && !path.file_name().is_some_and(hidden_or_temporary) {
                    paths.push(path);
                }
            }
        } else if full.is_dir() {
            walk(&full, &mut paths)?;
        } else {
            paths.push(full);
        }
        let mut files = paths
            .into_iter()
            .map(|p| self.describe_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        files.sort_by(|a, b| a.record.path.cmp(&b.record.path));
        Ok(files)
    }

    fn describe_file(&self, path: PathBuf) -> Result<InputFile, FileError> {
        let meta = std::fs::metadata(&path).map_err(|source| FileError::Io {
            path: path.clone(),
            source,
        })?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64);
        let name = path
            .strip_prefix(&self.base_dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        Ok(InputFile {
            codec: self.compression.codec_for(&path),
            record: FileRecord {
                path: name,
                size: meta.len(),
                mtime_ns,
                etag: None,
                hash: None,
                end: None,
                content_hash: None,
            },
            path,
            object: None,
            by_content: self.by_content,
        })
    }
}

/// Every regular file under `dir`, skipping hidden and temporary entries.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if hidden_or_temporary(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// One file of a run's plan and where to start in it (`None`: the beginning).
#[derive(Debug)]
pub struct Planned<P> {
    /// The file.
    pub file: InputFile,
    /// The committed place to resume from.
    pub resume: Option<P>,
}

/// Decides what a run reads: files not in the ledger (or changed since), the interrupted file
/// first, the others in name order.
pub fn plan<P: DeserializeOwned>(
    stream: &str,
    files: Vec<InputFile>,
    ledger: &[FileRecord],
    checkpoint: Option<&Position>,
) -> Result<Vec<Planned<P>>, FileError> {
    let checkpoint: Option<FilePosition<P>> = checkpoint
        .map(|p| {
            p.decode().map_err(|e| FileError::BadState {
                stream: stream.to_string(),
                position: p.to_string(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let done = |f: &FileRecord| ledger.iter().any(|l| l.same_version(f));
    let mut out = Vec::new();
    let mut resumed = None;
    for file in files {
        if done(&file.record) {
            continue;
        }
        // Same content as the ingested version under new metadata (a copy, a touch): done.
        if file.by_content {
            if let Some(known) = ledger
                .iter()
                .find(|l| l.path == file.record.path && l.size == file.record.size)
                .and_then(|l| l.content_hash.as_deref())
            {
                if file.content_hash()? == known {
                    tracing::info!(file = %file.path.display(), "content unchanged since it was ingested: skipped");
                    continue;
                }
            }
        }
        // A finished file that only grew (same fingerprint over its old length) continues
        // where the last run stopped; any other change is read again from the start.
        if let Some(appended) = ledger
            .iter()
            .find(|l| l.path == file.record.path)
            .filter(|l| l.size < file.record.size && l.end.is_some())
            .filter(|l| {
                l.hash.is_some() && file.fingerprint(l.size).as_deref() == l.hash.as_deref()
            })
        {
            let end = appended.end.as_ref().expect("filtered above");
            let at: FilePosition<P> = end.decode().map_err(|e| FileError::BadState {
                stream: stream.to_string(),
                position: end.to_string(),
                message: e.to_string(),
            })?;
            tracing::info!(file = %file.path.display(), from = appended.size, to = file.record.size, "file grew since it was ingested: reading the new part");
            out.push(Planned {
                file,
                resume: Some(at.at),
            });
            continue;
        }
        match &checkpoint {
            Some(cp) if cp.file == file.record.path => {
                let then = cp.record();
                if then.same_version(&file.record) {
                    resumed = Some(out.len());
                    out.push(Planned { file, resume: None });
                } else if done(&then) {
                    // The version we finished changed again: read the new one from the start.
                    out.push(Planned { file, resume: None });
                } else {
                    return Err(FileError::Changed {
                        path: file.path,
                        then_size: then.size,
                        now_size: file.record.size,
                    });
                }
            }
            _ => out.push(Planned { file, resume: None }),
        }
    }
    if let (Some(i), Some(cp)) = (resumed, checkpoint) {
        let mut planned = out.remove(i);
        planned.resume = Some(cp.at);
        out.insert(0, planned);
    }
    Ok(out)
}

/// The empty batch that ends a file: its position is the file's end, and it completes the
/// file in the ledger once everything before it is durable.
pub fn completion(
    stream: &str,
    file: &InputFile,
    schema: &arrow_schema::SchemaRef,
    position: Position,
) -> tributary_core::Batch {
    let record = FileRecord {
        // Without a fingerprint the file is read again from the start if it grows.
        hash: file.fingerprint(file.record.size),
        end: Some(position.clone()),
        content_hash: if file.by_content {
            match file.content_hash() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(file = %file.path.display(), error = %e, "cannot hash the file: the ledger keeps its metadata only");
                    None
                }
            }
        } else {
            None
        },
        ..file.record.clone()
    };
    let mut meta = tributary_core::BatchMeta::new(stream.into(), position.clone(), position, 0);
    meta.completes = vec![record];
    tributary_core::Batch {
        data: arrow_array::RecordBatch::new_empty(schema.clone()),
        meta,
    }
}

/// Follow mode (`follow:` in a file source): after reading what is there, keep listing the
/// path every `poll_interval` and read files that appear or grow, until the run is stopped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Follow {
    /// How often to list the path again (default `5s`).
    pub poll_interval: std::time::Duration,
    /// A file is read once it has not been modified for this long (default `2s`), so a file
    /// still being written is not read half-way. Writers that rename finished files into
    /// place (the safe way to land files) can set `0s`.
    pub settle: std::time::Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            poll_interval: std::time::Duration::from_secs(5),
            settle: std::time::Duration::from_secs(2),
        }
    }
}

impl<'de> Deserialize<'de> for Follow {
    /// `follow: true`, or `follow: { poll_interval: 10s, settle: 0s }`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            #[serde(default, with = "opt_duration")]
            poll_interval: Option<std::time::Duration>,
            #[serde(default, with = "opt_duration")]
            settle: Option<std::time::Duration>,
        }
        mod opt_duration {
            use serde::Deserializer;
            pub fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<std::time::Duration>, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                tributary_core::config::parse_duration(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom)
            }
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            On(bool),
            Settings(Settings),
        }
        match Raw::deserialize(d)? {
            Raw::On(true) => Ok(Follow::default()),
            Raw::On(false) => Err(serde::de::Error::custom(
                "leave `follow` out to read what is there once; `follow: true` keeps watching",
            )),
            Raw::Settings(s) => {
                let default = Follow::default();
                Ok(Follow {
                    poll_interval: s.poll_interval.unwrap_or(default.poll_interval),
                    settle: s.settle.unwrap_or(default.settle),
                })
            }
        }
    }
}

/// Runs a file source: lists, plans against the ledger and the committed position, and
/// reads. With `follow`, repeats every `poll_interval` (files completed earlier in this run
/// count as ingested, even before their commit) until the run is stopped. `read` returns the
/// ledger records of the files it completed.
pub fn run_files<P: DeserializeOwned>(
    ctx: &tributary_core::SourceContext,
    rt: &tokio::runtime::Handle,
    stream: &str,
    follow: Option<&Follow>,
    list: impl Fn() -> Result<Vec<InputFile>, ConnectorError>,
    mut read: impl FnMut(Vec<Planned<P>>) -> Result<Vec<FileRecord>, ConnectorError>,
) -> Result<(), ConnectorError> {
    let mut seen: Vec<FileRecord> = Vec::new();
    let mut first = true;
    loop {
        let mut ledger = ctx.ledger(stream)?;
        ledger.extend(seen.iter().cloned());
        let mut files = list()?;
        if let Some(f) = follow {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let settle = f.settle.as_nanos() as i64;
            files.retain(|file| file.record.mtime_ns.is_none_or(|m| now - m >= settle));
        }
        let checkpoint = if first { ctx.checkpoint(stream) } else { None };
        let planned = plan::<P>(stream, files, &ledger, checkpoint)?;
        if planned.is_empty() {
            if first {
                tracing::info!(stream, "every file is in the ledger: nothing new to read");
            }
        } else {
            seen.extend(read(planned)?);
        }
        first = false;
        let Some(f) = follow else {
            return Ok(());
        };
        if ctx.is_stopping() {
            return Ok(());
        }
        let stopped = rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(f.poll_interval) => false,
                _ = ctx.stopping() => true,
            }
        });
        if stopped {
            return Ok(());
        }
    }
}

/// Announces the bytes a run will read, when they can be known up front (plain UTF-8 files).
pub fn announce<P>(
    ctx: &tributary_core::SourceContext,
    planned: &[Planned<P>],
    offset: impl Fn(&P) -> u64,
    exact: bool,
) {
    if !exact || planned.iter().any(|p| !p.file.seekable()) {
        return;
    }
    let total: u64 = planned
        .iter()
        .map(|p| p.file.record.size - p.resume.as_ref().map_or(0, &offset).min(p.file.record.size))
        .sum();
    ctx.progress().set_total_bytes(total);
}

#[cfg(test)]
impl InputFile {
    /// A plain local file at `name` with a made-up ledger entry (modification time 1), for
    /// tests.
    pub(crate) fn for_test(name: &str, size: u64) -> InputFile {
        InputFile {
            path: PathBuf::from(name),
            record: FileRecord {
                path: name.into(),
                size,
                mtime_ns: Some(1),
                etag: None,
                hash: None,
                end: None,
                content_hash: None,
            },
            codec: Codec::Plain,
            object: None,
            by_content: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
    struct At {
        offset: u64,
    }

    fn file(name: &str, size: u64) -> InputFile {
        InputFile::for_test(name, size)
    }

    #[test]
    fn the_plan_skips_ledger_files_and_resumes_the_interrupted_one_first() {
        let files = vec![file("a", 10), file("b", 20), file("c", 30), file("d", 40)];
        let ledger = vec![file("a", 10).record, file("c", 29).record];
        let cp = file("b", 20).position(At { offset: 7 });
        let planned = plan::<At>("s", files.clone(), &ledger, Some(&cp)).unwrap();
        let order: Vec<(&str, Option<At>)> = planned
            .iter()
            .map(|p| (p.file.record.path.as_str(), p.resume))
            .collect();
        // c changed since the ledger entry: read again; b resumes at its offset, first.
        assert_eq!(
            order,
            vec![("b", Some(At { offset: 7 })), ("c", None), ("d", None)]
        );

        // b changed while half-read: an error, not a silent restart.
        let grown = vec![file("b", 25)];
        let err = plan::<At>("s", grown, &ledger, Some(&cp)).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::Changed {
                    then_size: 20,
                    now_size: 25,
                    ..
                }
            ),
            "{err}"
        );

        // A position from another source is reported, not misread.
        let foreign = Position::encode(&serde_json::json!({"lsn": 5})).unwrap();
        assert!(matches!(
            plan::<At>("s", vec![file("a", 1)], &[], Some(&foreign)),
            Err(FileError::BadState { .. })
        ));
    }

    #[test]
    fn folders_and_globs_list_files_in_name_order_without_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("in/2024")).unwrap();
        for name in [
            "in/b.csv",
            "in/a.csv",
            "in/2024/c.csv",
            "in/.hidden.csv",
            "in/x.csv.tmp",
            "in/z.csv.gz",
        ] {
            std::fs::write(d.join(name), "x\n").unwrap();
        }
        let names = |set: FileSet| -> Vec<String> {
            set.list()
                .unwrap()
                .into_iter()
                .map(|f| f.record.path)
                .collect()
        };
        assert_eq!(
            names(FileSet::new(d, "in", Compression::Auto)),
            vec!["in/2024/c.csv", "in/a.csv", "in/b.csv", "in/z.csv.gz"]
        );
        assert_eq!(
            names(FileSet::new(d, "in/*.csv", Compression::Auto)),
            vec!["in/a.csv", "in/b.csv"]
        );
        assert_eq!(
            names(FileSet::new(d, "in/**/*.csv", Compression::Auto)),
            vec!["in/2024/c.csv", "in/a.csv", "in/b.csv"]
        );
        assert!(names(FileSet::new(d, "none/*.csv", Compression::Auto)).is_empty());
        let gz = FileSet::new(d, "in/z.csv.gz", Compression::Auto)
            .list()
            .unwrap();
        assert_eq!(gz[0].codec, Codec::Gzip);
        assert_eq!(
            FileSet::new(d, "in/z.csv.gz", Compression::Auto).default_stream(),
            "z"
        );
        assert_eq!(
            FileSet::new(d, "in", Compression::Auto).default_stream(),
            "in"
        );
        assert_eq!(
            FileSet::new(d, "in/orders-*.csv", Compression::Auto).default_stream(),
            "orders"
        );
        assert_eq!(
            FileSet::new(d, "in/*.csv", Compression::Auto).default_stream(),
            "in"
        );
    }

    #[test]
    fn compressed_files_open_at_a_decompressed_offset() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let text = b"id\n1\n2\n3\n";
        let gz = dir.path().join("t.csv.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("t.csv.zst");
        std::fs::write(&zst, zstd::encode_all(&text[..], 3).unwrap()).unwrap();
        for name in ["t.csv.gz", "t.csv.zst"] {
            let f = &FileSet::new(dir.path(), name, Compression::Auto)
                .list()
                .unwrap()[0];
            let mut rest = String::new();
            f.open_at(5).unwrap().read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "2\n3\n", "{name}");
            assert!(matches!(
                f.open_at(100),
                Err(FileError::Truncated {
                    len: 9,
                    offset: 100,
                    ..
                })
            ));
        }
    }
}
