//! The guide's REST API examples (`examples/api_ingestion/`) run against a private json-server
//! each (`TRIBUTARY_JSON_SERVER`, from `scripts/services env`) with the results their READMEs
//! promise. Each test copies its example folder, starts json-server there on a free port, points
//! the pipeline at it (the examples say `localhost:3000`, json-server's default) and runs
//! `tributary run`.

mod common;

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

/// The host and port the examples' pipelines name.
const EXAMPLE_ADDR: &str = "localhost:3000";

/// Copies `examples/api_ingestion/<name>` (without output or state from a local run) into `to`.
fn copy_example(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/api_ingestion")
        .join(name);
    copy_tree(&from, to);
}

/// Points `pipeline` at `server`, replacing further `(from, to)` pairs (each must occur).
fn point_at(pipeline: &Path, server: &JsonServer, replace: &[(&str, &str)]) {
    let mut pairs = vec![(EXAMPLE_ADDR, server.addr())];
    pairs.extend_from_slice(replace);
    replace_in(pipeline, &pairs);
}

/// Replaces each `(from, to)` pair (each must occur) in the file at `path`.
fn replace_in(path: &Path, replace: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (a, b) in replace {
        assert!(text.contains(a), "{a:?} not in {path:?}");
        text = text.replace(a, b);
    }
    std::fs::write(path, text).unwrap();
}

/// `tributary run <pipeline> --report json` in `dir`, which must succeed; its summary.
fn run(dir: &Path, pipeline: &str) -> Value {
    let out = run_ok(&["run", pipeline, "--no-progress", "--report", "json"], dir);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed", "{summary}");
    summary
}

/// The ids in the Parquet output under `dir`, sorted (duplicates kept).
fn ids(dir: &Path) -> Vec<i64> {
    let mut ids = int_column(dir, "id");
    ids.sort_unstable();
    ids
}

fn strings(dir: &Path, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name(column).unwrap().as_string::<i32>();
            out.extend(col.iter().map(|v| v.unwrap().to_string()));
        }
    }
    out
}

fn one_to(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

#[test]
fn basic_rest_takes_the_records_out_of_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("basic_rest", dir.path());
    let server = JsonServer::spawn(dir.path(), &["db.json", "--ro"], true);
    point_at(&dir.path().join("pipeline.yaml"), &server, &[]);

    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&6.into(), &0.into()),
        "{s}"
    );
    let out = dir.path().join("output/products");
    assert_eq!(ids(&out), one_to(6));
    let mut skus = strings(&out, "sku");
    skus.sort();
    assert_eq!(
        skus,
        ["SKU-001", "SKU-002", "SKU-003", "SKU-004", "SKU-005", "SKU-006"]
    );
    assert_eq!(server.requests(), ["/catalog"]);
    // Arrays become lists.
    let file = std::fs::File::open(&parquet_files(&out)[0]).unwrap();
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    let tags = schema.field_with_name("tags").unwrap().data_type().clone();
    assert!(
        matches!(&tags, arrow_schema::DataType::List(f) if f.data_type() == &arrow_schema::DataType::Utf8),
        "{tags:?}"
    );

    // A full load: the next run reads the whole resource again, from the same position, so
    // its file has the same name and replaces the first run's.
    let files = parquet_files(&out);
    assert_eq!(files.len(), 1);
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 6, "{s}");
    assert_eq!(parquet_files(&out), files);
    assert_eq!(ids(&out), one_to(6));
    assert_eq!(server.requests(), ["/catalog", "/catalog"]);
}

/// Runs `pagination/<style>/pipeline.yaml` against the pagination folder's server; the server.
fn pagination(style: &str, dir: &Path) -> JsonServer {
    copy_example("pagination", dir);
    let server = JsonServer::spawn(
        dir,
        &[
            "db.json",
            "--ro",
            "--static",
            "static",
            "--middlewares",
            "cursor.js",
        ],
        true,
    );
    point_at(&dir.join(style).join("pipeline.yaml"), &server, &[]);
    let s = run(dir, &format!("{style}/pipeline.yaml"));
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&23.into(), &0.into()),
        "{s}"
    );
    server
}

/// The 23 orders, each once, in `<style>/output/<stream>`.
fn assert_all_orders(dir: &Path, style: &str, stream: &str) {
    let out: PathBuf = dir.join(style).join("output").join(stream);
    assert_eq!(ids(&out), one_to(23));
}

#[test]
fn pagination_link_header_follows_next_links_to_the_last_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = pagination("link_header", dir.path());
    assert_all_orders(dir.path(), "link_header", "orders");
    let requests = server.requests();
    let expected: Vec<String> = (1..=5)
        .map(|p| format!("/orders?_limit=5&_page={p}"))
        .collect();
    assert_eq!(
        requests, expected,
        "the last page has no next link: no 6th request"
    );
}

#[test]
fn pagination_offset_plans_the_pages_from_the_total_and_asks_for_none_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = pagination("offset", dir.path());
    assert_all_orders(dir.path(), "offset", "orders");
    let mut requests = server.requests();
    requests.sort();
    let mut expected: Vec<String> = (0..5)
        .map(|i| format!("/orders?_sort=id&_start={}&_limit=5", i * 5))
        .collect();
    expected.sort();
    assert_eq!(requests, expected, "no empty page asked for at _start=25");
}

#[test]
fn pagination_page_number_plans_the_pages_from_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let server = pagination("page_number", dir.path());
    assert_all_orders(dir.path(), "page_number", "orders");
    let mut requests = server.requests();
    requests.sort();
    let expected: Vec<String> = (1..=5)
        .map(|p| format!("/orders?_sort=id&_page={p}&_limit=5"))
        .collect();
    assert_eq!(requests, expected);
}

#[test]
fn pagination_next_url_follows_relative_links_in_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = pagination("next_url", dir.path());
    // Three static pages: 10 + 10 + 3 (static files are not in json-server's request log).
    assert_all_orders(dir.path(), "next_url", "orders");
    assert!(server.requests().is_empty());
}

#[test]
fn pagination_cursor_sends_the_opaque_cursor_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = pagination("cursor", dir.path());
    assert_all_orders(dir.path(), "cursor", "orders-feed");
    let requests = server.requests();
    assert_eq!(
        requests,
        [
            "/orders-feed?limit=10",
            "/orders-feed?limit=10&cursor=b2Q6MTA", // "od:10"
            "/orders-feed?limit=10&cursor=b2Q6MjA", // "od:20"; its next_cursor is null
        ]
    );
}

/// GET /_stats from the rate-limit example's middleware.
fn limit_stats(server: &JsonServer) -> Value {
    let (status, body) = http_request("GET", &format!("{}/_stats", server.url), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn rate_limit_backoff_stays_under_the_quota_and_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("rate_limit_backoff", dir.path());
    let server = JsonServer::spawn(
        dir.path(),
        &["db.json", "--ro", "--quiet", "--middlewares", "limits.js"],
        false,
    );
    point_at(&dir.path().join("pipeline.yaml"), &server, &[]);
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(ids(&dir.path().join("output/orders")), one_to(60));
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&60.into(), &0.into()),
        "{s}"
    );

    let stats = limit_stats(&server);
    println!("{stats}");
    // 12 pages; pages 3 and 9 throttled once, page 6 unavailable twice: 4 retries.
    assert_eq!(stats["throttled"], 2, "{stats}");
    assert_eq!(stats["unavailable"], 2, "{stats}");
    assert_eq!(stats["ok"], 12, "{stats}");
    assert_eq!(stats["requests"], 16, "{stats}");
    assert_eq!(s["retries"], 4, "the run summary counts them: {s}");
    // Our rate limit kept us under the server's quota, and no throttled page came back early.
    assert_eq!(stats["over_quota"], 0, "{stats}");
    assert_eq!(stats["too_early"], 0, "{stats}");
    let gaps: Vec<u64> = stats["retry_gaps_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert_eq!(gaps.len(), 2, "{stats}");
    assert!(
        gaps.iter().all(|g| *g >= 1000),
        "Retry-After: 1 is a floor: {gaps:?}"
    );
}

#[test]
fn rate_limit_backoff_without_the_rate_limit_hits_the_quota_and_still_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("rate_limit_backoff", dir.path());
    // Only the quota: no scheduled 429s or 503s holding the first pages back.
    replace_in(
        &dir.path().join("limits.js"),
        &[
            ("const THROTTLE = { 3: 1, 9: 1 };", "const THROTTLE = {};"),
            ("const UNAVAILABLE = { 6: 2 };", "const UNAVAILABLE = {};"),
        ],
    );
    let server = JsonServer::spawn(
        dir.path(),
        &["db.json", "--ro", "--quiet", "--middlewares", "limits.js"],
        false,
    );
    point_at(
        &dir.path().join("pipeline.yaml"),
        &server,
        &[
            ("  rate_limit: { rps: 4, burst: 2 }", "  # no rate_limit"),
            ("  concurrency: 2", "  concurrency: 4"),
        ],
    );
    run(dir.path(), "pipeline.yaml");
    assert_eq!(ids(&dir.path().join("output/orders")), one_to(60));
    let stats = limit_stats(&server);
    println!("{stats}");
    // 12 pages, 4 at a time, in well under a second: past the 8th request the quota refuses.
    assert!(stats["over_quota"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["too_early"], 0, "{stats}");
    assert_eq!(stats["ok"], 12, "every page served once: {stats}");
}

/// The rate-limit example in `dir` against its own server (with `replace` in the pipeline).
fn strict_api(dir: &Path, replace: &[(&str, &str)]) -> JsonServer {
    copy_example("rate_limit_backoff", dir);
    let server = JsonServer::spawn(
        dir,
        &["db.json", "--ro", "--quiet", "--middlewares", "limits.js"],
        false,
    );
    point_at(&dir.join("pipeline.yaml"), &server, replace);
    server
}

fn outage(server: &JsonServer, query: &str) {
    let (status, body) = http_request("GET", &format!("{}/_outage{query}", server.url), None);
    assert_eq!(status, 200, "{body}");
}

/// The committed position of the rate-limit example's stream.
fn strict_api_position(dir: &Path) -> Value {
    use tributary_core::state::{SqliteStateStore, StateStore};
    let store = SqliteStateStore::open(dir.join(".tributary/state.db")).unwrap();
    let positions = store.positions("orders_strict_api").unwrap();
    positions[0].position.as_json().clone()
}

#[test]
fn rate_limit_backoff_a_page_down_past_the_retries_fails_the_run_and_the_next_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = strict_api(dir.path(), &[("max_attempts: 6", "max_attempts: 3")]);
    outage(&server, "?page=7");
    let (code, stdout, stderr) = run_any(&["run", "pipeline.yaml", "--no-progress"], dir.path());
    assert_ne!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    // Pages 1-6 are written and committed; the position points at page 7.
    assert_eq!(ids(&dir.path().join("output/orders")), one_to(30));
    let p = strict_api_position(dir.path());
    assert_eq!(p["next"], json!({"at": "page", "page": 7}), "{p}");
    assert_eq!(
        limit_stats(&server)["outage"],
        3,
        "three attempts at page 7"
    );

    outage(&server, "");
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 30, "only pages 7-12: {s}");
    assert_eq!(ids(&dir.path().join("output/orders")), one_to(60));
    let stats = limit_stats(&server);
    assert_eq!(stats["too_early"], 0, "{stats}");
}

#[test]
fn rate_limit_backoff_a_missing_page_is_dead_lettered_and_the_pass_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = strict_api(dir.path(), &[]);
    outage(&server, "?page=7&status=404");
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(
        (&s["rows_out"], &s["dead_lettered"]),
        (&55.into(), &1.into()),
        "{s}"
    );
    let mut expected = one_to(30);
    expected.extend(36..=60);
    assert_eq!(ids(&dir.path().join("output/orders")), expected);
    assert_eq!(limit_stats(&server)["outage"], 1, "a 404 is not retried");
    let dead = std::fs::read_to_string(
        dir.path()
            .join(".tributary/dead_letter/orders_strict_api.ndjson"),
    )
    .unwrap();
    let dead: Value = serde_json::from_str(dead.trim()).unwrap();
    assert!(
        dead["location"].as_str().unwrap().contains("_page=7"),
        "{dead}"
    );
    assert!(
        dead["message"].as_str().unwrap().contains("HTTP 404"),
        "{dead}"
    );

    // A full load: the next pass asks for page 7 again and, starting where the first did,
    // replaces its file.
    outage(&server, "");
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 60, "{s}");
    assert_eq!(ids(&dir.path().join("output/orders")), one_to(60));
}

/// The incremental example's server (writable: the test adds and changes orders).
fn incremental_server(dir: &Path, replace: &[(&str, &str)]) -> JsonServer {
    copy_example("incremental", dir);
    let server = JsonServer::spawn(dir, &["db.json", "--quiet"], false);
    point_at(&dir.join("pipeline.yaml"), &server, replace);
    server
}

fn order(id: i64, updated_at: &str) -> Value {
    json!({"id": id, "customer": "ada", "status": "open", "amount_cents": 700 + 53 * id, "updated_at": updated_at})
}

/// `(id, updated_at)` of every row in the output, sorted.
fn versions(dir: &Path) -> Vec<(i64, String)> {
    let out = dir.join("output/orders");
    let mut rows: Vec<(i64, String)> = int_column(&out, "id")
        .into_iter()
        .zip(strings(&out, "updated_at"))
        .collect();
    rows.sort();
    rows
}

/// Orders 1-12 as the example's db.json has them.
fn initial_versions() -> Vec<(i64, String)> {
    let db: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/api_ingestion/incremental/db.json"),
        )
        .unwrap(),
    )
    .unwrap();
    db["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_i64().unwrap(),
                o["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// New orders after the first run: 13 at the first run's highest `updated_at` (beside 11 and
/// 12, which were read), 14 later, order 4 changed, and 15 written late: with an `updated_at`
/// five minutes before the first run's highest.
fn change_orders(server: &JsonServer) {
    let orders = format!("{}/orders", server.url);
    post_json(&orders, &order(13, "2026-01-10T12:00:00Z"));
    post_json(&orders, &order(14, "2026-01-10T12:30:00Z"));
    let (status, body) = http_request(
        "PATCH",
        &format!("{orders}/4"),
        Some(&json!({"status": "paid", "updated_at": "2026-01-10T12:10:00Z"})),
    );
    assert_eq!(status, 200, "{body}");
    post_json(&orders, &order(15, "2026-01-10T11:55:00Z"));
}

#[test]
fn incremental_second_run_brings_only_new_and_changed_orders() {
    let dir = tempfile::tempdir().unwrap();
    let server = incremental_server(dir.path(), &[]);
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 12, "{s}");
    assert_eq!(versions(dir.path()), initial_versions());

    change_orders(&server);
    let s = run(dir.path(), "pipeline.yaml");
    // 11 and 12 come again (the filter is >=) and are recognised; 15 is older than the cursor
    // and is missed: that is what `lookback` is for.
    assert_eq!(s["rows_out"], 3, "{s}");
    let mut expected = initial_versions();
    expected.extend([
        (4, "2026-01-10T12:10:00Z".to_string()),
        (13, "2026-01-10T12:00:00Z".to_string()),
        (14, "2026-01-10T12:30:00Z".to_string()),
    ]);
    expected.sort();
    assert_eq!(versions(dir.path()), expected);

    // Nothing new: nothing written.
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 0, "{s}");
}

#[test]
fn incremental_lookback_catches_late_writes_and_reads_its_window_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = incremental_server(
        dir.path(),
        &[("    # lookback: 10m", "    lookback: 10m  ")],
    );
    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 12, "{s}");

    change_orders(&server);
    let s = run(dir.path(), "pipeline.yaml");
    // From 11:50: order 10 (11:52) again, the late 15 (11:55), 13, 4 and 14; 11 and 12 are the
    // boundary already read.
    assert_eq!(s["rows_out"], 5, "{s}");
    let mut expected = initial_versions();
    expected.extend([
        (4, "2026-01-10T12:10:00Z".to_string()),
        (10, "2026-01-10T11:52:00Z".to_string()),
        (13, "2026-01-10T12:00:00Z".to_string()),
        (14, "2026-01-10T12:30:00Z".to_string()),
        (15, "2026-01-10T11:55:00Z".to_string()),
    ]);
    expected.sort();
    assert_eq!(versions(dir.path()), expected);
}

// ---------------------------------------------------------------------------------------------
// dependent_resources

#[test]
fn dependent_resources_reads_each_customers_orders_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("dependent_resources", dir.path());
    let server = JsonServer::spawn(dir.path(), &["db.json", "--ro"], true);
    point_at(&dir.path().join("pipeline.yaml"), &server, &[]);

    let s = run(dir.path(), "pipeline.yaml");
    assert_eq!(s["rows_out"], 10 + 17, "{s}");
    assert_eq!(ids(&dir.path().join("output/customers")), one_to(10));
    let orders = dir.path().join("output/orders");
    assert_eq!(ids(&orders), (101..=117).collect::<Vec<_>>());
    // Each order names its customer, copied from the parent record.
    let mut pairs: Vec<(i64, i64)> = int_column(&orders, "customer_id")
        .into_iter()
        .zip(int_column(&orders, "customerId"))
        .collect();
    pairs.sort();
    assert!(pairs.iter().all(|(a, b)| a == b), "{pairs:?}");
    assert!(
        !pairs.iter().any(|(c, _)| *c == 5),
        "customer 5 has no orders"
    );
    let names = strings(&orders, "customer_name");
    assert!(
        names.iter().all(|n| n.starts_with("Customer ")),
        "{names:?}"
    );
    let requests = server.requests();
    let children: Vec<&String> = requests.iter().filter(|r| r.contains("/orders")).collect();
    assert_eq!(children.len(), 10, "one request per customer: {requests:?}");
    assert_eq!(requests.len(), 3 + 10, "{requests:?}");
}

/// The committed position of each stream of the dependent-resources example.
fn committed(dir: &Path) -> std::collections::BTreeMap<String, Value> {
    use tributary_core::state::{SqliteStateStore, StateStore};
    let db = dir.join(".tributary/state.db");
    if !db.exists() {
        return Default::default();
    }
    let Ok(store) = SqliteStateStore::open(db) else {
        return Default::default();
    };
    store
        .positions("customers_and_orders")
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.stream, s.position.as_json().clone()))
        .collect()
}

#[test]
fn dependent_resources_after_kill_dash_9_every_order_lands_once() {
    // Slow answers and one batch per page of customers (4), so commits happen mid-run; the
    // run is killed once the orders' position is committed ahead of the customers' (orders
    // are read and written before their customers). The next run asks for the customers'
    // page again but not for the orders already committed, and the output holds every
    // customer and every order once.
    let dir = tempfile::tempdir().unwrap();
    copy_example("dependent_resources", dir.path());
    let server = JsonServer::spawn(dir.path(), &["db.json", "--ro", "--delay", "100"], true);
    let pipeline = dir.path().join("pipeline.yaml");
    point_at(
        &pipeline,
        &server,
        &[(
            "  stream: customers\n",
            "  stream: customers\n  batch_rows: 2\n",
        )],
    );
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text.push_str("commit_interval: 10ms\n");
    std::fs::write(&pipeline, text).unwrap();
    let mut child = tributary()
        .args(["run", "pipeline.yaml", "--no-progress", "--log", "warn"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Customers done = pages before `page` (4 each) and records up to `record` on it.
    let done_orders = poll(
        "orders committed ahead of their customers' page",
        30,
        || {
            let c = committed(dir.path());
            let o = c.get("orders")?;
            let page = o["page"].as_i64()?;
            let record = o["record"].as_i64()?;
            let whole = o["at"]["next"]["at"] == "done";
            let through = page * 4 + record + if whole { 1 } else { 0 };
            (through > 0).then_some(through)
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What is committed now (a commit may have landed between the poll and the kill).
    let c = committed(dir.path());
    let o = &c["orders"];
    let done_orders = done_orders.max(
        o["page"].as_i64().unwrap() * 4
            + o["record"].as_i64().unwrap()
            + if o["at"]["next"]["at"] == "done" {
                1
            } else {
                0
            },
    );
    let first = server.requests();
    assert!(
        !first.iter().any(|r| r == "/customers/10/orders"),
        "killed too late to test anything: {first:?}"
    );

    run(dir.path(), "pipeline.yaml");
    assert_eq!(ids(&dir.path().join("output/customers")), one_to(10));
    assert_eq!(
        ids(&dir.path().join("output/orders")),
        (101..=117).collect::<Vec<_>>(),
        "every order once"
    );
    let second = &server.requests()[first.len()..];
    for customer in 1..=done_orders {
        let path = format!("/customers/{customer}/orders");
        assert!(
            !second.contains(&path),
            "customer {customer}'s orders were committed but asked for again: {second:?}"
        );
    }
    assert!(
        second.iter().any(|r| r.starts_with("/customers?")),
        "the customers' page was read again: {second:?}"
    );
}
