//! The HTTP source against real servers on loopback, through the real runtime, the Parquet
//! sink and the SQLite state store:
//! - json-server 0.17 (`scripts/services up`; `TRIBUTARY_HTTP_URL`, and `TRIBUTARY_JSON_SERVER`
//!   for a private writable instance): `Link` headers, `_page`/`_limit`, `_start`/`_end`,
//!   `updated_at_gte` for incremental loads;
//! - fault-injecting axum servers written here: 429 with `Retry-After`, 503 bursts, slow
//!   responses, malformed and truncated JSON, 4xx, redirects and next links to another host
//!   (what the other host received is asserted), an OAuth2 token endpoint expiring tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_core::dead_letter::{DeadLetterRecord, NdjsonDeadLetter};
use tributary_core::runtime::{Pipeline, PipelineSettings, RunStatus, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};
use tributary_files::parquet::{ParquetSink, ParquetSinkConfig};
use tributary_http::config::Method;
use tributary_http::{
    AuthConfig, HttpPosition, HttpSource, HttpSourceConfig, Incremental, KeyLocation, Next,
    Paginator, RateLimit,
};

// ---------------------------------------------------------------------------------------------
// Harness

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn db(&self) -> PathBuf {
        self.path().join("state.db")
    }
    fn dlq(&self) -> PathBuf {
        self.path().join("dlq.ndjson")
    }

    async fn run(&self, config: HttpSourceConfig) -> Result<RunSummary, String> {
        let source = HttpSource::new(config).map_err(|e| e.to_string())?;
        let mut settings = PipelineSettings::new("api");
        settings.commit_interval = Duration::from_millis(200);
        let sink = ParquetSink::new(ParquetSinkConfig::new("out"), self.path()).unwrap();
        let state = Arc::new(SqliteStateStore::open(self.db()).unwrap());
        Pipeline::new(
            settings,
            Box::new(source),
            Box::new(sink),
            Box::new(NdjsonDeadLetter::new(self.dlq())),
            state,
        )
        .run()
        .await
        .map_err(|f| format!("{} (summary: {:?})", f.error, f.summary.status))
    }

    async fn run_ok(&self, config: HttpSourceConfig) -> RunSummary {
        let s = self.run(config).await.unwrap();
        assert_eq!(s.status, RunStatus::Completed);
        s
    }

    /// Every `id` in the output, files in name order (a hash of their start position, not the
    /// order they were written): for set comparisons.
    fn ids(&self) -> Vec<i64> {
        let mut files = Vec::new();
        walk(&self.path().join("out"), &mut files);
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ids = b
                    .column_by_name("id")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                assert_eq!(ids.null_count(), 0);
                out.extend(ids.values().iter().copied());
            }
        }
        out
    }

    /// Every `id` in the output with page order checked: the sink names files by a hash of
    /// their start position, so files are put in the order of their first id, and each file
    /// must hold a run of ids in the order they were read. The result equals `1..=n` only if
    /// every file is in page order and no two files overlap.
    fn ids_in_page_order(&self) -> Vec<i64> {
        let mut files = Vec::new();
        walk(&self.path().join("out"), &mut files);
        let mut runs: Vec<Vec<i64>> = files
            .iter()
            .map(|f| {
                let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
                let mut ids = Vec::new();
                for b in reader {
                    let b = b.unwrap();
                    let col = b
                        .column_by_name("id")
                        .unwrap()
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap();
                    ids.extend(col.values().iter().copied());
                }
                ids
            })
            .filter(|ids| !ids.is_empty())
            .collect();
        runs.sort_by_key(|ids| ids[0]);
        runs.concat()
    }

    /// `column` of every row of one stream's files (`out/<stream>`), as text (`null` for
    /// nulls).
    fn column(&self, stream: &str, column: &str) -> Vec<String> {
        let mut files = Vec::new();
        walk(&self.path().join("out").join(stream), &mut files);
        let mut out = Vec::new();
        for f in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let col = b
                    .column_by_name(column)
                    .unwrap_or_else(|| panic!("no column {column} in {}", f.display()));
                let col = arrow_cast::cast(col, &arrow_schema::DataType::Utf8).unwrap();
                let strings = col
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap();
                for i in 0..strings.len() {
                    out.push(if strings.is_null(i) {
                        "null".to_string()
                    } else {
                        strings.value(i).to_string()
                    });
                }
            }
        }
        out
    }

    fn dead_letters(&self) -> Vec<DeadLetterRecord> {
        NdjsonDeadLetter::read_all(self.dlq()).unwrap()
    }

    fn position(&self) -> HttpPosition {
        let store = SqliteStateStore::open(self.db()).unwrap();
        let p = store.positions("api").unwrap();
        assert_eq!(p.len(), 1);
        p[0].position.decode().unwrap()
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

fn assert_ids(ids: &[i64], expected: impl IntoIterator<Item = i64>) {
    let expected: Vec<i64> = expected.into_iter().collect();
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates in the output");
    assert_eq!(sorted, expected, "the output differs from the input");
}

fn json_server_url() -> String {
    std::env::var("TRIBUTARY_HTTP_URL").unwrap_or_else(|_| {
        panic!("TRIBUTARY_HTTP_URL is not set: start json-server with scripts/services up and eval \"$(scripts/services env)\"")
    })
}

/// `?page=1, 2, …` until an empty page.
fn pages_from_one() -> Paginator {
    Paginator::PageNumber {
        page_param: "page".into(),
        start: 1,
        size_param: None,
        size: None,
        total_pages_path: None,
        total_path: None,
        total_header: None,
    }
}

fn fast_retry(c: &mut HttpSourceConfig) {
    c.retry.initial_delay = Duration::from_millis(20);
    c.retry.max_delay = Duration::from_millis(200);
    c.retry.max_attempts = 8;
}

// ---------------------------------------------------------------------------------------------
// json-server

#[tokio::test]
async fn json_server_link_header_pages_every_item_once_in_order() {
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{}/items", json_server_url()));
    c.params.insert("_page".into(), "1".into());
    c.params.insert("_limit".into(), "7".into());
    c.paginator = Paginator::LinkHeader {};
    c.batch_rows = 50;
    let s = dir.run_ok(c).await;
    let ids = dir.ids_in_page_order();
    assert_eq!(
        ids,
        (1..=250).collect::<Vec<_>>(),
        "every item once, in page order"
    );
    assert_eq!(s.rows_out, 250);
    let p = dir.position();
    assert_eq!(p.next, Next::Done);
    assert_eq!(
        p.pages, 36,
        "250 / 7 rounded up; the last page has no rel=next"
    );
}

#[tokio::test]
async fn json_server_start_end_offsets_in_parallel_keep_page_order() {
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{}/items", json_server_url()));
    c.paginator = Paginator::Offset {
        offset_param: "_start".into(),
        limit_param: "_limit".into(),
        end_param: Some("_end".into()),
        limit: 20,
        start: 0,
        total_path: None,
        total_header: Some("X-Total-Count".into()),
    };
    c.concurrency = 4.try_into().unwrap();
    let started = Instant::now();
    dir.run_ok(c).await;
    assert_eq!(dir.ids_in_page_order(), (1..=250).collect::<Vec<_>>());
    let p = dir.position();
    assert_eq!(
        (p.next, p.pages),
        (Next::Done, 13),
        "no request past the total ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn json_server_page_numbers_with_a_total_header() {
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{}/items", json_server_url()));
    c.paginator = Paginator::PageNumber {
        page_param: "_page".into(),
        start: 1,
        size_param: Some("_limit".into()),
        size: Some(30),
        total_pages_path: None,
        total_path: None,
        total_header: Some("X-Total-Count".into()),
    };
    c.stop.max_pages = Some(5);
    dir.run_ok(c).await;
    assert_eq!(
        dir.ids_in_page_order(),
        (1..=150).collect::<Vec<_>>(),
        "max_pages = 5 pages of 30"
    );
}

/// A private json-server on a free port serving `db`, killed on drop.
struct JsonServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl JsonServer {
    fn start(db: serde_json::Value, delay_ms: u64) -> Self {
        let bin = std::env::var("TRIBUTARY_JSON_SERVER").unwrap_or_else(|_| {
            panic!("TRIBUTARY_JSON_SERVER is not set: eval \"$(scripts/services env)\"")
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.json");
        std::fs::write(&file, serde_json::to_vec(&db).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--quiet",
        ]);
        if delay_ms > 0 {
            cmd.args(["--delay", &delay_ms.to_string()]);
        }
        let child = cmd
            .arg(&file)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "json-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        JsonServer {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn item(i: i64, minute: i64) -> serde_json::Value {
    serde_json::json!({"id": i, "name": format!("item-{i}"), "updated_at": format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60)})
}

#[tokio::test]
async fn json_server_incremental_loads_take_only_new_records_once() {
    let items: Vec<_> = (1..=120).map(|i| item(i, i)).collect();
    let server = JsonServer::start(serde_json::json!({ "items": items }), 0);
    let config = || {
        let mut c = HttpSourceConfig::new(format!("{}/items", server.url));
        c.params.insert("updated_at_gte".into(), "{cursor}".into());
        c.params.insert("_sort".into(), "updated_at".into());
        c.params.insert("_page".into(), "1".into());
        c.params.insert("_limit".into(), "25".into());
        c.paginator = Paginator::LinkHeader {};
        c.incremental = Some(Incremental {
            cursor_path: "updated_at".into(),
            initial_value: "2026-01-01T00:30:00Z".into(),
            lookback: Duration::ZERO,
        });
        c
    };
    let dir = Dir::new();
    let s = dir.run_ok(config()).await;
    assert_ids(&dir.ids(), 30..=120);
    assert_eq!(s.rows_out, 91);
    let p = dir.position();
    assert_eq!(p.max_cursor, Some("2026-01-01T02:00:00Z".into()));

    // Nothing new: the record at the boundary (updated_at >= the last cursor) is not taken again.
    let s = dir.run_ok(config()).await;
    assert_eq!((s.rows_out, s.skipped), (0, 1));

    // New records, one of them at the same instant as the last cursor.
    let client = reqwest::Client::new();
    for (id, minute) in [(500, 120), (501, 121), (502, 200)] {
        let r = client
            .post(format!("{}/items", server.url))
            .header("content-type", "application/json")
            .body(item(id, minute).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // And one updated in place.
    let r = client
        .patch(format!("{}/items/7", server.url))
        .header("content-type", "application/json")
        .body(r#"{"updated_at": "2026-01-01T03:00:00Z"}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let s = dir.run_ok(config()).await;
    assert_eq!(s.rows_out, 4);
    let mut expected: Vec<i64> = (30..=120).chain([7, 500, 501, 502]).collect();
    expected.sort_unstable();
    assert_ids(&dir.ids(), expected);
    assert_eq!(
        dir.position().max_cursor,
        Some("2026-01-01T03:20:00Z".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting servers

#[derive(Clone, Default)]
struct Seen {
    /// (path with query, headers) of every request.
    requests: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Seen {
    fn push(&self, uri: &axum::http::Uri, headers: &HeaderMap) {
        self.requests
            .lock()
            .unwrap()
            .push((uri.to_string(), headers.clone()));
    }
    fn all(&self) -> Vec<(String, HeaderMap)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn records(range: std::ops::Range<i64>) -> serde_json::Value {
    serde_json::Value::Array(
        range
            .map(|i| serde_json::json!({"id": i, "v": format!("r{i}")}))
            .collect(),
    )
}

type Params = Query<BTreeMap<String, String>>;
/// Requests so far, and when the first one succeeded.
type Counted = (Arc<AtomicUsize>, Arc<Mutex<Option<Instant>>>);

fn json(value: serde_json::Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

fn page_of(q: &BTreeMap<String, String>) -> i64 {
    q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1)
}

#[tokio::test]
async fn retry_after_429_and_503_bursts_are_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_ok = Arc::new(Mutex::new(None::<Instant>));
    let started = Instant::now();
    let router = Router::new()
        .route(
            "/items",
            get(|State((calls, first_ok)): State<Counted>, Query(q): Params| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                match n {
                    0 => return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
                    1..=3 => return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
                    _ => {}
                }
                first_ok.lock().unwrap().get_or_insert_with(Instant::now);
                let page = page_of(&q);
                let body = serde_json::json!({"data": if page <= 3 { records((page - 1) * 10..page * 10) } else { records(0..0) }, "page": page});
                json(body).into_response()
            }),
        )
        .with_state((calls.clone(), first_ok.clone()));
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/items"));
    c.paginator = pages_from_one();
    c.records = Some("/data".into());
    fast_retry(&mut c);
    let summary = dir.run_ok(c).await;
    assert_eq!(
        summary.retries, 4,
        "the 429 and the three 503s, in the run's count"
    );
    assert_ids(&dir.ids(), 0..30);
    let waited = first_ok.lock().unwrap().unwrap() - started;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was a floor ({waited:?})"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4 + 4,
        "one 429, three 503, three pages and the empty one"
    );
}

#[tokio::test]
async fn slow_responses_past_the_timeout_are_retried_then_fail_the_run_clearly() {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/slow",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                json(records(0..5))
            }),
        )
        .route(
            "/never",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                json(records(0..5))
            }),
        )
        .with_state(calls.clone());
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/slow"));
    c.timeout = Duration::from_millis(300);
    fast_retry(&mut c);
    dir.run_ok(c).await;
    assert_ids(&dir.ids(), 0..5);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two timeouts, then an answer"
    );

    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/never"));
    c.timeout = Duration::from_millis(200);
    fast_retry(&mut c);
    c.retry.max_attempts = 3;
    let err = dir.run(c).await.unwrap_err();
    assert!(err.contains("/never: no response within 200ms"), "{err}");
}

#[tokio::test]
async fn malformed_truncated_and_oversized_pages_and_4xx_are_dead_lettered_with_redacted_urls() {
    let router = Router::new().route(
        "/items",
        get(|Query(q): Params| async move {
            let offset: i64 = q["offset"].parse().unwrap();
            match offset {
                10 => (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    "[{\"id\": 10}, {\"id\": 11".to_string(),
                )
                    .into_response(),
                20 => (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    "<html>oops</html>".to_string(),
                )
                    .into_response(),
                30 => (StatusCode::NOT_FOUND, "{\"error\": \"no such page\"}").into_response(),
                40 => json(serde_json::Value::Array(
                    (40..50)
                        .map(|i| serde_json::json!({"id": i, "pad": "x".repeat(400)}))
                        .collect(),
                ))
                .into_response(),
                // JSON but for one record: that record alone is dead-lettered.
                50 => {
                    let items: Vec<String> = (50..60)
                        .map(|i| match i {
                            53 => r#"{"id": 53, "name": tru}"#.to_string(),
                            i => format!(r#"{{"id": {i}, "name": "n{i}"}}"#),
                        })
                        .collect();
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        format!("[{}]", items.join(", ")),
                    )
                        .into_response()
                }
                o if o < 60 => json(records(o..o + 10)).into_response(),
                _ => json(records(0..0)).into_response(),
            }
        }),
    );
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/items"));
    c.paginator = Paginator::Offset {
        offset_param: "offset".into(),
        limit_param: "limit".into(),
        end_param: None,
        limit: 10,
        start: 0,
        total_path: None,
        total_header: None,
    };
    c.auth = Some(AuthConfig::ApiKey {
        name: "api_key".into(),
        value: "TOPSECRET".into(),
        location: KeyLocation::Query,
    });
    c.max_response_bytes = 4000;
    let s = dir.run_ok(c).await;
    // Addressable pages go on after a bad one: pages 0 and 50 are the good ones, but for
    // record 53, which is not JSON.
    assert_ids(&dir.ids(), (0..10).chain(50..53).chain(54..60));
    let dl = dir.dead_letters();
    assert_eq!(s.dead_lettered, 5, "{dl:#?}");
    let text = serde_json::to_string(&dl).unwrap();
    assert!(
        !text.contains("TOPSECRET"),
        "the API key never reaches a dead letter: {text}"
    );
    let find = |needle: &str| {
        dl.iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter with {needle:?}: {dl:#?}"))
    };
    let truncated = find("offset=10");
    assert!(
        truncated.message.contains("not valid JSON"),
        "{}",
        truncated.message
    );
    assert!(find("offset=20").message.contains("not valid JSON"));
    let not_found = find("HTTP 404");
    assert!(
        not_found.message.contains("offset=30") && not_found.message.contains("no such page"),
        "{}",
        not_found.message
    );
    assert_eq!(
        not_found.raw.as_deref(),
        Some("{\"error\": \"no such page\"}")
    );
    assert!(find("larger than max_response_bytes")
        .message
        .contains("offset=40"));
    let broken = dl
        .iter()
        .find(|d| d.raw.as_deref() == Some(r#"{"id": 53, "name": tru}"#))
        .unwrap_or_else(|| panic!("record 53 is dead-lettered alone: {dl:#?}"));
    let at = broken.location.as_deref().unwrap_or_default();
    assert!(at.contains("offset=50") && at.ends_with("record 3"), "{at}");
}

#[tokio::test]
async fn credentials_never_follow_a_next_link_or_redirect_to_another_host() {
    let other_seen = Seen::default();
    let other = serve(
        Router::new()
            .route(
                "/elsewhere",
                get(|State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap| async move {
                    seen.push(&uri, &headers);
                    json(serde_json::json!({"data": records(100..105), "next": null}))
                }),
            )
            .route(
                "/moved",
                get(|State(seen): State<Seen>, uri: axum::http::Uri, headers: HeaderMap| async move {
                    seen.push(&uri, &headers);
                    json(serde_json::json!({"data": records(200..202), "next": null}))
                }),
            )
            .with_state(other_seen.clone()),
    )
    .await;
    let home_seen = Seen::default();
    let home = serve(
        Router::new()
            .route(
                "/items",
                get(|State((seen, other)): State<(Seen, String)>, uri: axum::http::Uri, headers: HeaderMap| async move {
                    seen.push(&uri, &headers);
                    json(serde_json::json!({"data": records(0..5), "next": format!("{other}/elsewhere?k=1")}))
                }),
            )
            .route(
                "/redirecting",
                get(|State((seen, other)): State<(Seen, String)>, uri: axum::http::Uri, headers: HeaderMap| async move {
                    seen.push(&uri, &headers);
                    (StatusCode::TEMPORARY_REDIRECT, [("location", format!("{other}/moved"))]).into_response()
                }),
            )
            .with_state((home_seen.clone(), other.clone())),
    )
    .await;
    for (path, expected) in [
        ("items", (0..5).chain(100..105).collect::<Vec<_>>()),
        ("redirecting", (200..202).collect()),
    ] {
        let dir = Dir::new();
        let mut c = HttpSourceConfig::new(format!("{home}/{path}"));
        c.records = Some("/data".into());
        c.paginator = Paginator::NextUrl {
            next_url_path: "/next".into(),
        };
        c.auth = Some(AuthConfig::Bearer {
            token: "BEARER-SECRET".into(),
        });
        c.headers.insert("X-Api-Key".into(), "HEADER-SECRET".into());
        std::env::set_var("TRIBUTARY_HTTP_TEST_QUERY_SECRET", "QUERY-SECRET");
        c.params
            .insert("sig".into(), "${TRIBUTARY_HTTP_TEST_QUERY_SECRET}".into());
        dir.run_ok(c).await;
        assert_ids(&dir.ids(), expected);
    }
    let home_requests = home_seen.all();
    assert_eq!(home_requests.len(), 2);
    for (_, h) in &home_requests {
        assert_eq!(
            h.get("authorization").unwrap(),
            "Bearer BEARER-SECRET",
            "the configured host gets the credentials"
        );
        assert_eq!(h.get("x-api-key").unwrap(), "HEADER-SECRET");
    }
    assert!(
        home_requests
            .iter()
            .all(|r| r.0.ends_with("?sig=QUERY-SECRET")),
        "{home_requests:?}"
    );
    let other_requests = other_seen.all();
    assert_eq!(
        other_requests
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["/elsewhere?k=1", "/moved"]
    );
    for (uri, h) in &other_requests {
        assert!(
            h.get("authorization").is_none(),
            "{uri}: Authorization leaked to another host"
        );
        assert!(
            h.get("x-api-key").is_none(),
            "{uri}: a configured header leaked to another host"
        );
        let all = format!("{h:?}");
        assert!(!all.contains("SECRET"), "{uri}: {all}");
    }
}

#[derive(Default)]
struct Tokens {
    issued: AtomicUsize,
    /// The token that is valid now.
    valid: Mutex<String>,
    form: Mutex<Vec<String>>,
    used: Mutex<Vec<String>>,
}

#[tokio::test]
async fn oauth2_tokens_are_refreshed_before_expiry_and_after_a_401() {
    let tokens = Arc::new(Tokens::default());
    let router = Router::new()
        .route(
            "/token",
            post(|State(t): State<Arc<Tokens>>, body: String| async move {
                let n = t.issued.fetch_add(1, Ordering::SeqCst) + 1;
                t.form.lock().unwrap().push(body);
                let token = format!("tok-{n}");
                *t.valid.lock().unwrap() = token.clone();
                json(serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 6}))
            }),
        )
        .route(
            "/data",
            get(|State(t): State<Arc<Tokens>>, headers: HeaderMap, Query(q): Params| async move {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                t.used.lock().unwrap().push(auth.clone());
                let page = page_of(&q);
                // Page 3: the server revokes the token (a 401 although it has not expired).
                if page == 3 && t.issued.load(Ordering::SeqCst) == 2 {
                    *t.valid.lock().unwrap() = "revoked".into();
                }
                if auth != format!("Bearer {}", t.valid.lock().unwrap()) {
                    return (StatusCode::UNAUTHORIZED, "bad token").into_response();
                }
                if page == 2 {
                    // Long enough for the 6 s token to be within refresh_before (4.5 s) of expiry.
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                }
                let data = if page <= 4 { records((page - 1) * 3..page * 3) } else { records(0..0) };
                json(serde_json::json!({ "data": data })).into_response()
            }),
        )
        .with_state(tokens.clone());
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/data"));
    c.paginator = pages_from_one();
    c.auth = Some(AuthConfig::Oauth2ClientCredentials {
        token_url: format!("{url}/token").as_str().into(),
        client_id: "me".into(),
        client_secret: "CLIENT-SECRET".into(),
        scope: Some("read".into()),
        extra: BTreeMap::new(),
        refresh_before: Duration::from_millis(4500),
    });
    fast_retry(&mut c);
    dir.run_ok(c).await;
    assert_ids(&dir.ids(), 0..12);
    let used = tokens.used.lock().unwrap().clone();
    // Page 1 with tok-1; page 2 with tok-1 (2 s); page 3: tok-1 now expires within 4.5 s →
    // tok-2 fetched first; page 3 revokes it → 401 → tok-3; page 4 and the empty page 5.
    assert_eq!(
        used,
        [
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-3",
            "Bearer tok-3",
            "Bearer tok-3"
        ],
        "{used:?}"
    );
    let forms = tokens.form.lock().unwrap().clone();
    assert_eq!(forms.len(), 3);
    assert!(
        forms[0].contains("grant_type=client_credentials")
            && forms[0].contains("client_secret=CLIENT-SECRET")
            && forms[0].contains("scope=read"),
        "{forms:?}"
    );
}

#[tokio::test]
async fn the_token_bucket_paces_requests_per_host() {
    let calls = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let router = Router::new()
        .route(
            "/items",
            get(
                |State(calls): State<Arc<Mutex<Vec<Instant>>>>, Query(q): Params| async move {
                    calls.lock().unwrap().push(Instant::now());
                    let page = page_of(&q);
                    json(if page <= 10 {
                        records(page * 10..page * 10 + 10)
                    } else {
                        records(0..0)
                    })
                },
            ),
        )
        .with_state(calls.clone());
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/items"));
    c.paginator = pages_from_one();
    c.rate_limit = Some(RateLimit {
        rps: 10.try_into().unwrap(),
        burst: Some(2.try_into().unwrap()),
    });
    dir.run_ok(c).await;
    assert_ids(&dir.ids(), 10..110);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 11);
    // A burst of 2, then one per 100 ms: 9 more requests take at least 0.9 s.
    let span = calls[10] - calls[0];
    assert!(span >= Duration::from_millis(850), "{span:?}");
    assert!(span < Duration::from_secs(3), "{span:?}");
}

#[tokio::test]
async fn a_killed_run_resumes_at_the_next_page_with_a_cursor_from_the_body() {
    // Cursor pagination, POST with a body, has_more: the source stops at page 3 (a failing
    // server: 401 ends the run), and a re-run resumes there without repeating pages 1-2.
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Seen::default();
    let router = Router::new()
        .route(
            "/search",
            post(|State((fail, seen)): State<(Arc<std::sync::atomic::AtomicBool>, Seen)>, uri: axum::http::Uri, headers: HeaderMap, Query(q): Params, body: String| async move {
                seen.push(&uri, &headers);
                assert_eq!(body, r#"{"q":"all"}"#);
                let c: i64 = q.get("cursor").map_or(0, |c| c.trim_start_matches('c').parse().unwrap());
                if c == 2 && fail.load(Ordering::SeqCst) {
                    return (StatusCode::UNAUTHORIZED, "expired").into_response();
                }
                json(serde_json::json!({"items": records(c * 4..c * 4 + 4), "meta": {"cursor": format!("c{}", c + 1), "has_more": c < 4}})).into_response()
            }),
        )
        .with_state((fail.clone(), seen.clone()));
    let url = serve(router).await;
    let dir = Dir::new();
    let config = || {
        let mut c = HttpSourceConfig::new(format!("{url}/search"));
        c.method = Method::Post;
        c.body = Some(serde_json::json!({"q": "all"}));
        c.records = Some("/items".into());
        c.paginator = Paginator::Cursor {
            cursor_path: "/meta/cursor".into(),
            cursor_param: "cursor".into(),
        };
        c.stop.has_more_path = Some("/meta/has_more".into());
        c.batch_rows = 4;
        c
    };
    let err = dir.run(config()).await.unwrap_err();
    assert!(
        err.contains("HTTP 401") && err.contains("check the credentials"),
        "{err}"
    );
    assert_ids(&dir.ids(), 0..8);
    assert_eq!(
        dir.position().next,
        Next::Cursor {
            cursor: "c2".into()
        }
    );
    fail.store(false, Ordering::SeqCst);
    dir.run_ok(config()).await;
    assert_ids(&dir.ids(), 0..20);
    let uris: Vec<String> = seen.all().into_iter().map(|r| r.0).collect();
    assert_eq!(
        uris,
        [
            "/search",
            "/search?cursor=c1",
            "/search?cursor=c2",
            "/search?cursor=c2",
            "/search?cursor=c3",
            "/search?cursor=c4"
        ]
    );
}

#[tokio::test]
async fn gzip_responses_are_decompressed_and_bounded_after_decompression() {
    // Pages sent gzip-compressed when the client asks for it; page 2 inflates past
    // `max_response_bytes` (a few KiB on the wire): dead-lettered as too large, page 3 read.
    use std::io::Write;
    let seen = Seen::default();
    let router = Router::new()
        .route(
            "/items",
            get(
                |State(seen): State<Seen>,
                 uri: axum::http::Uri,
                 headers: HeaderMap,
                 Query(q): Params| async move {
                    seen.push(&uri, &headers);
                    let page = page_of(&q);
                    let body = match page {
                        1 | 3 => serde_json::json!({"data": records((page - 1) * 10..page * 10)})
                            .to_string(),
                        2 => format!("{{\"data\": [], \"pad\": \"{}\"}}", " ".repeat(1 << 20)),
                        _ => serde_json::json!({"data": []}).to_string(),
                    };
                    let gzip = headers
                        .get("accept-encoding")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("gzip"));
                    if !gzip {
                        return json(serde_json::from_str(&body).unwrap());
                    }
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    enc.write_all(body.as_bytes()).unwrap();
                    let zipped = enc.finish().unwrap();
                    assert!(zipped.len() < 64 << 10);
                    (
                        [
                            ("content-type", "application/json"),
                            ("content-encoding", "gzip"),
                        ],
                        zipped,
                    )
                        .into_response()
                },
            ),
        )
        .with_state(seen.clone());
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/items"));
    c.paginator = pages_from_one();
    c.records = Some("/data".into());
    c.max_response_bytes = 512 << 10;
    c.stop.max_pages = Some(3);
    dir.run_ok(c).await;
    assert_ids(&dir.ids(), (0..10).chain(20..30));
    for (uri, headers) in seen.all() {
        let ae = headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ae.contains("gzip"), "{uri}: accept-encoding {ae:?}");
    }
    let letters = dir.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].message.contains("page=2"), "{:?}", letters[0]);
    assert!(
        letters[0].message.to_lowercase().contains("larger than"),
        "{:?}",
        letters[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Dependent resources

#[tokio::test]
async fn json_server_children_read_each_users_orders_with_the_users_id() {
    // json-server's nested route /users/{id}/orders (orders carry userId): 40 users, 3
    // orders each. Every order lands once, with the user id copied in as `user_id`.
    let mut c = HttpSourceConfig::new(format!("{}/users", json_server_url()));
    c.params.insert("_page".into(), "1".into());
    c.params.insert("_limit".into(), "7".into());
    c.paginator = Paginator::LinkHeader {};
    c.children = vec![tributary_core::config::parse_yaml(
        Path::new("child.yaml"),
        "{ stream: orders, path: '/users/{id}/orders', parent_fields: { id: user_id, name: user_name } }",
    )
    .unwrap()];
    let dir = Dir::new();
    dir.run_ok(c).await;
    let users = dir.column("users", "id");
    assert_eq!(users.len(), 40);
    let ids = dir.column("orders", "id");
    let user_ids = dir.column("orders", "user_id");
    let user_names = dir.column("orders", "user_name");
    let json_user_ids = dir.column("orders", "userId");
    let mut seen = BTreeSet::new();
    for i in 0..ids.len() {
        assert!(seen.insert(ids[i].clone()), "order {} twice", ids[i]);
        assert_eq!(user_ids[i], json_user_ids[i], "order {}", ids[i]);
        assert_eq!(user_names[i], format!("user-{}", user_ids[i]));
    }
    assert_eq!(seen.len(), 120);
}

#[tokio::test]
async fn children_resume_after_a_failure_without_repeating_durable_children() {
    // 20 users in pages of 5; each has 3 orders served 2 per page (a body cursor). User 7's
    // second order page fails (503, retries run out) in the first run; user 13 is gone (404:
    // dead-lettered, the run goes on). The second run must bring every other order exactly
    // once: the children of users 6 and before (on the failed parent page too) are not
    // asked for again, and user 7's first order page is not asked for again either.
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Seen::default();
    let router = Router::new()
        .route(
            "/users",
            get(
                |State((_, seen)): State<(Arc<std::sync::atomic::AtomicBool>, Seen)>,
                 uri: axum::http::Uri,
                 headers: HeaderMap,
                 Query(q): Params| async move {
                    seen.push(&uri, &headers);
                    let p = page_of(&q);
                    let users: Vec<_> = ((p - 1) * 5 + 1..=(p * 5).min(20))
                        .map(|u| serde_json::json!({"id": u, "login": format!("u{u}")}))
                        .collect();
                    json(serde_json::Value::Array(users))
                },
            ),
        )
        .route(
            "/users/{id}/orders",
            get(
                |State((fail, seen)): State<(Arc<std::sync::atomic::AtomicBool>, Seen)>,
                 axum::extract::Path(id): axum::extract::Path<i64>,
                 uri: axum::http::Uri,
                 headers: HeaderMap,
                 Query(q): Params| async move {
                    seen.push(&uri, &headers);
                    if id == 13 {
                        return (StatusCode::NOT_FOUND, "no such user").into_response();
                    }
                    let from: i64 = q.get("after").map_or(0, |a| a.parse().unwrap());
                    if id == 7 && from == 2 && fail.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                    }
                    let orders: Vec<_> = (from..(from + 2).min(3))
                        .map(|k| serde_json::json!({"id": id * 10 + k, "amount": k + 1}))
                        .collect();
                    let next = if from + 2 < 3 {
                        serde_json::json!(from + 2)
                    } else {
                        serde_json::Value::Null
                    };
                    json(serde_json::json!({"orders": orders, "next": next})).into_response()
                },
            ),
        )
        .with_state((fail.clone(), seen.clone()));
    let url = serve(router).await;
    let config = || {
        let mut c = HttpSourceConfig::new(format!("{url}/users"));
        c.paginator = pages_from_one();
        c.batch_rows = 5;
        fast_retry(&mut c);
        c.retry.max_attempts = 2;
        c.children = vec![tributary_core::config::parse_yaml(
            Path::new("child.yaml"),
            "{ stream: orders, path: 'users/{id}/orders', records: /orders, parent_fields: { id: user_id }, paginator: { type: cursor, cursor_path: /next, cursor_param: after } }",
        )
        .unwrap()];
        c
    };
    let dir = Dir::new();
    let err = dir.run(config()).await.unwrap_err();
    assert!(err.contains("503"), "{err}");
    let first: Vec<String> = seen.all().into_iter().map(|r| r.0).collect();
    assert!(first.contains(&"/users/7/orders?after=2".to_string()));
    assert!(
        !first.iter().any(|u| u.starts_with("/users/8/")),
        "{first:?}"
    );
    fail.store(false, Ordering::SeqCst);
    let before = seen.all().len();
    dir.run_ok(config()).await;
    let second: Vec<String> = seen.all()[before..].iter().map(|r| r.0.clone()).collect();
    // Page 2 of the users again (it was not durable), then straight to user 7's second page.
    assert_eq!(second[0], "/users?page=2");
    assert_eq!(second[1], "/users/7/orders?after=2");
    let users: Vec<i64> = dir
        .column("users", "id")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_ids(&users, 1..=20);
    let orders: Vec<i64> = dir
        .column("orders", "id")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let expected = (1..=20)
        .filter(|u| *u != 13)
        .flat_map(|u| (0..3).map(move |k| u * 10 + k));
    assert_ids(&orders, expected);
    let owners = dir.column("orders", "user_id");
    for (o, u) in orders.iter().zip(&owners) {
        assert_eq!(u.parse::<i64>().unwrap(), o / 10);
    }
    let letters = dir.dead_letters();
    let gone: Vec<_> = letters
        .iter()
        .filter(|l| l.message.contains("404"))
        .collect();
    assert_eq!(gone.len(), 1, "{letters:?}");
    assert_eq!(gone[0].stream, "orders");
    assert!(
        gone[0]
            .location
            .as_deref()
            .unwrap_or("")
            .contains("/users/13/orders"),
        "{:?}",
        gone[0]
    );
    // The pass is complete: the next run is a new pass (numbered in the positions) that reads
    // every child again, and fails the same way; the run after it resumes that new pass's
    // children where they stopped.
    fail.store(true, Ordering::SeqCst);
    let before = seen.all().len();
    assert!(dir.run(config()).await.unwrap_err().contains("503"));
    let third: Vec<String> = seen.all()[before..].iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        &third[..2],
        ["/users?page=1", "/users/1/orders"],
        "{third:?}"
    );
    fail.store(false, Ordering::SeqCst);
    let before = seen.all().len();
    dir.run_ok(config()).await;
    let fourth: Vec<String> = seen.all()[before..].iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        &fourth[..2],
        ["/users?page=2", "/users/7/orders?after=2"],
        "{fourth:?}"
    );
}

#[test]
fn children_config_is_checked() {
    let yaml = "url: http://127.0.0.1:1/users\nstream: users\nchildren:\n  - { stream: users, path: '/users/{id}/x' }\n  - { stream: b, path: '/b/{id}', params: { key: '${KEY}' } }\n  - { stream: c, path: '/c/{}', paginator: { type: offset, limit: 0 } }\n";
    let c: HttpSourceConfig =
        tributary_core::config::parse_yaml(Path::new("p.yaml"), yaml).unwrap();
    let err = HttpSource::new(c).err().unwrap().to_string();
    assert!(err.contains("children[0].stream"), "{err}");
    assert!(err.contains("children[1].params.key"), "{err}");
    assert!(err.contains("empty `{}` placeholder"), "{err}");
    assert!(err.contains("paginator.limit"), "{err}");
    let bad: Result<HttpSourceConfig, _> = tributary_core::config::parse_yaml(
        Path::new("p.yaml"),
        "url: http://x/users\nchildren:\n  - { stream: a, path: /a, parent_field: { id: x } }\n",
    );
    assert!(bad.unwrap_err().to_string().contains("parent_field"));
}

#[test]
fn config_is_documented_yaml_with_unknown_keys_refused() {
    let yaml = r#"
url: "http://x/items"
paginator: { type: offset, limit: 50, total_header: X-Total-Count }
auth: { type: api_key, name: key, value: "${NOPE}", location: query }
rate_limit: { rps: 5 }
max_response_bytes: 1MiB
timeout: 5s
incremental: { cursor_path: updated_at, initial_value: 0, lookback: 1h }
params: { since: "{cursor}" }
"#;
    let c: HttpSourceConfig =
        tributary_core::config::parse_yaml(Path::new("p.yaml"), yaml).unwrap();
    assert_eq!(c.max_response_bytes, 1 << 20);
    assert!(c.validate().is_ok());
    let err = HttpSource::new(c).err().unwrap().to_string();
    assert!(
        err.contains("NOPE is not set"),
        "secrets resolve when the source is built: {err}"
    );
    let bad: Result<HttpSourceConfig, _> = tributary_core::config::parse_yaml(
        Path::new("p.yaml"),
        "url: x\npaginator: { type: link_header, limit: 3 }\n",
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("unknown field `limit`"));
    let mut c = HttpSourceConfig::new("http://x/");
    c.incremental = Some(Incremental {
        cursor_path: "u".into(),
        initial_value: 0.into(),
        lookback: Duration::ZERO,
    });
    c.records = Some("data".into());
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("records: \"data\" is not a JSON pointer")
            && err.contains("no query parameter uses {cursor}"),
        "{err}"
    );
}

/// A figure, not a check: 200 pages × 1000 records from memory over loopback into Parquet,
/// following next links (`cargo test -p tributary-http --test http -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn throughput_figure_next_links_into_parquet() {
    const PAGES: i64 = 200;
    const PER_PAGE: i64 = 1000;
    let pages: Arc<Vec<String>> = Arc::new(
        (0..PAGES)
            .map(|p| {
                let data: Vec<_> = (p * PER_PAGE..(p + 1) * PER_PAGE)
                    .map(|i| serde_json::json!({"id": i, "name": format!("name-{i}"), "amount": i as f64 * 0.25, "at": "2026-01-01T10:00:00Z"}))
                    .collect();
                let next = if p + 1 < PAGES { serde_json::json!(format!("/pages?p={}", p + 1)) } else { serde_json::Value::Null };
                serde_json::json!({"data": data, "next": next}).to_string()
            })
            .collect(),
    );
    let router = Router::new()
        .route(
            "/pages",
            get(
                |State(pages): State<Arc<Vec<String>>>, Query(q): Params| async move {
                    let p: usize = q.get("p").map_or(0, |p| p.parse().unwrap());
                    ([("content-type", "application/json")], pages[p].clone()).into_response()
                },
            ),
        )
        .with_state(pages.clone());
    let url = serve(router).await;
    let dir = Dir::new();
    let mut c = HttpSourceConfig::new(format!("{url}/pages"));
    c.records = Some("/data".into());
    c.paginator = Paginator::NextUrl {
        next_url_path: "/next".into(),
    };
    let bytes: usize = pages.iter().map(|p| p.len()).sum();
    let started = Instant::now();
    let s = dir.run_ok(c).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(s.rows_out, (PAGES * PER_PAGE) as u64);
    assert_eq!(dir.ids().len() as i64, PAGES * PER_PAGE);
    println!(
        "{} rows, {:.1} MB of JSON in {secs:.2} s: {:.0} rows/s, {:.1} MB/s",
        s.rows_out,
        bytes as f64 / 1e6,
        s.rows_out as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
}
