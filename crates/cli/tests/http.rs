//! `kind: http` end to end: a private json-server (`TRIBUTARY_JSON_SERVER`, from
//! `scripts/services env`) that answers slowly, `tributary run` killed with SIGKILL mid-pass,
//! re-run to the end, then an incremental run after new records: every record exactly once
//! in the Parquet output.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tributary_core::state::{SqliteStateStore, StateStore};

fn item(i: i64) -> serde_json::Value {
    // Ten records per second of `updated_at` (0..600 within the first minute): several share
    // each value, so the boundary of an incremental run holds ten records.
    serde_json::json!({"id": i, "name": format!("item-{i}"), "updated_at": format!("2026-01-01T00:{:02}:{:02}Z", i / 600, (i / 10) % 60)})
}

/// The committed position of the pipeline's only stream.
fn position(db: &Path) -> Option<serde_json::Value> {
    if !db.exists() {
        return None;
    }
    let store = SqliteStateStore::open(db).ok()?;
    let p = store.positions("api").ok()?;
    Some(p.first()?.position.as_json().clone())
}

#[test]
fn kill_dash_9_mid_pass_then_incremental_reruns_yield_every_record_once() {
    const ITEMS: i64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let db_json = dir.path().join("db.json");
    let items: Vec<_> = (0..ITEMS).map(item).collect();
    std::fs::write(&db_json, serde_json::json!({ "items": items }).to_string()).unwrap();
    let server = JsonServer::start(&db_json, 15);
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        format!(
            r#"pipeline: api
commit_interval: 100ms
source:
  kind: http
  url: {}/items
  params: {{ updated_at_gte: "{{cursor}}", _sort: "updated_at,id", _page: "1", _limit: "4" }}
  paginator: {{ type: link_header }}
  batch_rows: 8
  incremental: {{ cursor_path: updated_at, initial_value: "2026-01-01T00:00:00Z" }}
sink:
  kind: parquet
  path: out
"#,
            server.url
        ),
    )
    .unwrap();
    let state = dir.path().join(".tributary/state.db");
    let out = dir.path().join("out");

    // Kill twice, each time after a commit further into the pass.
    let mut last_pages = 0;
    for _ in 0..2 {
        let mut child = tributary()
            .args(["run", "pipeline.yaml", "--no-progress"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = last_pages;
        let p = poll("a commit further into the pass", 120, || {
            position(&state).filter(|p| p["pages"].as_u64().unwrap_or(0) >= before + 10)
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill: slow the server more"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_ne!(p["next"]["at"], "done", "killed mid-pass");
        last_pages = position(&state).unwrap()["pages"].as_u64().unwrap();
    }

    let started = Instant::now();
    let done = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_exact_ids(&int_column(&out, "id"), ITEMS);
    let p = position(&state).unwrap();
    assert_eq!(p["next"]["at"], "done");
    assert_eq!(p["max_cursor"], "2026-01-01T00:00:59Z");

    // New records (two at the last cursor value, which the >= filter sends again with the
    // ten already read), then an incremental run: only the new ones arrive.
    for i in ITEMS..ITEMS + 12 {
        let mut record = item(i);
        if i < ITEMS + 2 {
            record["updated_at"] = "2026-01-01T00:00:59Z".into();
        }
        post_json(&format!("{}/items", server.url), &record);
    }
    let again = run_ok(&["run", "pipeline.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["rows_out"], 12, "{summary}");
    assert_exact_ids(&int_column(&out, "id"), ITEMS + 12);
}
