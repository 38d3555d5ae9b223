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
    run_ok_with(args, cwd, &[])
}

/// [`run_ok`] with environment variables set (the examples' `${SHOP_URL}` and the like).
pub fn run_ok_with(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let out = tributary()
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .unwrap();
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

/// Drops a replication slot once its walsender has gone: the pipeline's process has exited,
/// but the server ends its replication backend a moment later, and dropping an active slot
/// fails ("is active for PID ..."). After 30 s the drop is tried anyway.
pub fn pg_drop_slot(url: &str, slot: &str) {
    psql(
        url,
        &format!(
            "DO $$ BEGIN FOR i IN 1..600 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM \
             pg_replication_slots WHERE slot_name = '{slot}' AND active); \
             PERFORM pg_sleep(0.05); END LOOP; PERFORM pg_drop_replication_slot('{slot}'); END $$"
        ),
    );
}

pub fn pg_count(url: &str, sql: &str) -> i64 {
    psql(url, sql).trim().parse().unwrap()
}

/// Starts `tributary registry serve` on a free port; the child and its URL.
pub fn registry_serve(state: &Path) -> (std::process::Child, String) {
    registry_serve_with(&["--state".as_ref(), state.as_os_str()])
}

/// `tributary registry serve --listen 127.0.0.1:0` with `args` (the storage); the child and
/// the URL it printed.
pub fn registry_serve_with(args: &[&std::ffi::OsStr]) -> (std::process::Child, String) {
    let mut child = tributary()
        .args(["registry", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
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

// json-server (TRIBUTARY_JSON_SERVER, from `scripts/services env`): a private instance per test.

/// A private json-server on a free loopback port, killed on drop.
pub struct JsonServer {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its request log (json-server's stdout), when it was started with one.
    pub log: Option<PathBuf>,
}

impl JsonServer {
    /// Serves `db` (writable, quiet) with every response delayed by `delay_ms`.
    pub fn start(db: &Path, delay_ms: u64) -> Self {
        let delay = delay_ms.to_string();
        Self::spawn(
            db.parent().unwrap(),
            &[db.to_str().unwrap(), "--quiet", "--delay", &delay],
            false,
        )
    }

    /// Runs json-server in `cwd` with `args` (the database file first: `--middlewares` takes
    /// every word after it) on a free port. With `log`, json-server's request log (stdout, one
    /// line per request that reaches its router) goes to a file, read by [`JsonServer::requests`].
    pub fn spawn(cwd: &Path, args: &[&str], log: bool) -> Self {
        let bin = std::env::var("TRIBUTARY_JSON_SERVER").unwrap_or_else(|_| {
            panic!("TRIBUTARY_JSON_SERVER is not set: eval \"$(scripts/services env)\"")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = log.then(|| cwd.join(format!("json-server-{port}.log")));
        let stdout = match &log_path {
            Some(p) => std::process::Stdio::from(File::create(p).unwrap()),
            None => std::process::Stdio::null(),
        };
        let child = Command::new(bin)
            .args(args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(cwd)
            .stdout(stdout)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        poll("json-server to listen", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        JsonServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log_path,
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The `GET` requests answered so far (path and query), in the order they were answered.
    /// A log line is written as its response finishes, which may trail the client by a moment:
    /// this sends a marker request and reads the log once the marker is in it.
    pub fn requests(&self) -> Vec<String> {
        let log = self.log.as_ref().expect("started with a log");
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("/__log_marker_{n}");
        http_request("GET", &format!("{}{marker}", self.url), None);
        poll("the marker in json-server's log", 10, || {
            let text = std::fs::read_to_string(log).unwrap();
            let requests: Vec<String> = text
                .lines()
                .map(strip_ansi)
                .filter_map(|l| {
                    l.strip_prefix("GET ")
                        .map(|r| r.split(' ').next().unwrap().to_string())
                })
                .collect();
            let at = requests.iter().position(|r| r == &marker)?;
            Some(
                requests[..at]
                    .iter()
                    .filter(|r| !r.starts_with("/__log_marker_"))
                    .cloned()
                    .collect(),
            )
        })
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a plain HTTP/1.1 request (keeps the tests free of HTTP crates); the status and body.
pub fn http_request(method: &str, url: &str, body: Option<&serde_json::Value>) -> (u16, String) {
    use std::io::Read;
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// POSTs a JSON document, asserting 201 Created.
pub fn post_json(url: &str, body: &serde_json::Value) {
    let (status, text) = http_request("POST", url, Some(body));
    assert_eq!(status, 201, "POST {url}: {text}");
}

/// Copies the folder `from` into `to`, leaving out what a local run left behind (`output`,
/// `.tributary`).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let file_name = entry.file_name();
        if file_name == "output" || file_name == ".tributary" {
            continue;
        }
        let target = to.join(&file_name);
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Replaces `from` with `to` in the file at `path`, which must hold `from` exactly `count`
/// times (an example's pipeline, slot and publication names made unique for a test).
pub fn rename_in_file(path: &Path, from: &str, count: usize, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.matches(from).count(), count, "{from:?} in {path:?}");
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// A replication slot (and publication) name no other test uses: slots are per cluster.
pub fn unique_slot(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        t.as_micros() % 1_000_000_000
    )
}

/// SIGTERM to a running pipeline, which must exit 0.
pub fn stop_gracefully(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "a graceful stop exits 0");
}

/// Waits (`secs` at most) until each of `tables` exists in `dst` with the same rows as in
/// `src` (compared as text, in `id` order), while `child`, the pipeline, keeps running.
pub fn wait_tables_equal(
    src: &str,
    dst: &str,
    tables: &[&str],
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) {
    let dump =
        |url: &str, table: &str| psql(url, &format!("SELECT t::text FROM {table} t ORDER BY id"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while tables.iter().any(|t| {
        let exists = psql(
            dst,
            &format!("SELECT to_regclass('public.{t}') IS NOT NULL"),
        );
        exists.trim() != "t" || dump(src, t) != dump(dst, t)
    }) {
        assert!(
            Instant::now() < deadline,
            "{what}: the target never became equal to the source"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the run stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
