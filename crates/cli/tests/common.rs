//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn tributary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tributary"));
    c.env_remove("RUST_LOG").env_remove("TRIBUTARY_LOG");
    c
}

pub fn run_ok(args: &[&str], cwd: &Path) -> Output {
    let out = tributary().args(args).current_dir(cwd).output().unwrap();
    assert!(
        out.status.success(),
        "tributary {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs tributary and returns (exit code, stdout, stderr).
pub fn run_any(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let out = tributary().args(args).current_dir(cwd).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Completed Parquet files under `dir` (temporary files are reported separately).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for p in std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
}

/// Every value of an int64 column across the Parquet files under `dir`.
pub fn int_column(dir: &Path, column: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name(column).unwrap();
            let ints = col.as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(ints.null_count(), 0);
            out.extend(ints.values().iter().copied());
        }
    }
    out
}

/// Asserts the ids are exactly 0..n, each once.
pub fn assert_exact_ids(ids: &[i64], n: i64) {
    assert_eq!(ids.len() as i64, n, "row count (duplicates or loss)");
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len() as i64, n, "duplicate ids");
    assert_eq!(unique.first().copied(), Some(0));
    assert_eq!(unique.last().copied(), Some(n - 1));
}

/// Writes `rows` CSV rows `id,name,amount,at` to `path`.
pub fn write_csv(path: &Path, rows: i64) {
    let mut w = std::io::BufWriter::new(File::create(path).unwrap());
    writeln!(w, "id,name,amount,at").unwrap();
    for i in 0..rows {
        writeln!(
            w,
            "{i},name-{i},{}.25,2026-01-{:02}T10:00:00Z",
            i % 1000,
            i % 28 + 1
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// Polls `f` until it returns Some, or panics after `secs` seconds.
pub fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Committed CSV byte offset of a pipeline's stream, read from its state database.
pub fn committed_offset(db: &Path, pipeline: &str) -> Option<u64> {
    use tributary_core::state::{SqliteStateStore, StateStore};
    if !db.exists() {
        return None;
    }
    let store = SqliteStateStore::open(db).ok()?;
    let states = store.positions(pipeline).ok()?;
    states.first()?.position.as_json()["offset"].as_u64()
}

/// Files in the ledger of a pipeline's stream, read from its state database.
pub fn ledger_files(db: &Path, pipeline: &str, stream: &str) -> usize {
    use tributary_core::state::{SqliteStateStore, StateStore};
    if !db.exists() {
        return 0;
    }
    SqliteStateStore::open(db)
        .ok()
        .and_then(|s| s.files(pipeline, stream).ok())
        .map_or(0, |f| f.len())
}

// PostgreSQL (TRIBUTARY_PG_URL, started by scripts/services), inspected with psql.

pub fn pg_base_url() -> String {
    std::env::var("TRIBUTARY_PG_URL").unwrap_or_else(|_| {
        panic!("TRIBUTARY_PG_URL is not set: run the tests with scripts/test, which starts the services")
    })
}

pub fn pg_url_of(db: &str) -> String {
    let base = pg_base_url();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{db}")
}

/// Runs SQL with psql and returns its unaligned, tuples-only output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql (postgresql-client) is installed by scripts/services");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn pg_create_db(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        t.as_nanos() % 1_000_000_000_000
    );
    psql(&pg_base_url(), &format!("CREATE DATABASE {name}"));
    pg_url_of(&name)
}

pub fn pg_count(url: &str, sql: &str) -> i64 {
    psql(url, sql).trim().parse().unwrap()
}

/// Starts `tributary registry serve` on a free port; the child and its URL.
pub fn registry_serve(state: &Path) -> (std::process::Child, String) {
    let mut child = tributary()
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}
