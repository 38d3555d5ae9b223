//! `tributary run` with PostgreSQL on both sides, against the real server (PostgreSQL 15 on
//! loopback, started by `scripts/services up`; `TRIBUTARY_PG_URL` says where): a snapshot
//! killed with `kill -9` and run again ends equal to the source, without duplicates.
//! Databases are inspected with `psql`, not with tributary's own code.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn write_pipeline(dir: &Path, src: &str, dst: &str) {
    std::fs::write(
        dir.join("copy.yaml"),
        format!(
            "pipeline: copy\nsource:\n  kind: postgres\n  url: {src}\n  tables: [public.orders]\n  batch_rows: 1000\nsink:\n  kind: postgres\n  url: {dst}\n"
        ),
    )
    .unwrap();
}

/// Writes `cdc.yaml`: change data capture of `table` from `src` into `dst`.
fn write_cdc_pipeline(
    dir: &Path,
    name: &str,
    src: &str,
    dst: &str,
    table: &str,
    slot: &str,
    batch_rows: usize,
) {
    std::fs::write(
        dir.join("cdc.yaml"),
        format!(
            "pipeline: {name}\ncommit_interval: 1s\nsource:\n  kind: postgres\n  url: {src}\n  tables: [{table}]\n  mode: cdc\n  slot: {slot}\n  publication: {slot}\n  batch_rows: {batch_rows}\n  batch_wait: 20ms\nsink:\n  kind: postgres\n  url: {dst}\n"
        ),
    )
    .unwrap();
}

/// Starts `tributary run <file>` in `dir`, its output discarded.
fn spawn_run(dir: &Path, file: &str) -> std::process::Child {
    tributary()
        .args(["run", file, "--no-progress"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (two minutes at most) until `table` exists in `url` with at least `rows` rows.
fn wait_rows(url: &str, table: &str, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no rows reached the target");
        let exists = psql(
            url,
            &format!("SELECT to_regclass('public.{table}') IS NOT NULL"),
        );
        if exists.trim() == "t" && pg_count(url, &format!("SELECT count(*) FROM {table}")) >= rows {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_dash_9_during_a_snapshot_then_rerun_gives_an_equal_table_without_duplicates() {
    const ROWS: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let src = pg_create_db("cli_src");
    let dst = pg_create_db("cli_dst");
    psql(
        &src,
        &format!(
            "CREATE TABLE orders (id int8 PRIMARY KEY, region text NOT NULL, amount numeric(12,2), \
             created_at timestamptz, note text); \
             INSERT INTO orders SELECT i, 'r' || (i % 17), i * 0.37, \
             TIMESTAMPTZ '2026-01-01Z' + i * INTERVAL '1 second', \
             CASE WHEN i % 10 = 0 THEN NULL ELSE md5(i::text) END FROM generate_series(1, {ROWS}) i"
        ),
    );
    write_pipeline(dir.path(), &src, &dst);

    let mut child = spawn_run(dir.path(), "copy.yaml");
    // Wait until some batches are in the target, then kill mid-snapshot.
    wait_rows(&dst, "orders", 20_000);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed: make the table larger"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = pg_count(&dst, "SELECT count(*) FROM orders");
    assert!(at_kill < ROWS, "killed mid-snapshot");

    let out = run_ok(&["run", "copy.yaml", "--report", "json"], dir.path());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(
        summary["rows_in"].as_i64().unwrap(),
        ROWS - at_kill,
        "resumed exactly after the rows the target holds"
    );
    assert_eq!(
        pg_count(&dst, "SELECT count(*) - count(DISTINCT id) FROM orders"),
        0,
        "no duplicates"
    );
    let rows = |url: &str| psql(url, "SELECT t::text FROM orders t ORDER BY id");
    let (a, b) = (rows(&src), rows(&dst));
    assert_eq!(a.lines().count() as i64, ROWS);
    assert!(a == b, "target differs from source");
    eprintln!("kill -9 mid-snapshot: {at_kill} of {ROWS} rows were in the target at the kill");
}

/// One transaction of changes: an insert, an update, a delete, a key change.
fn churn_once(url: &str, i: i64) {
    psql(
        url,
        &format!(
            "BEGIN; INSERT INTO accounts (id, owner, balance) VALUES ({}, 'late {i}', {i}); \
             UPDATE accounts SET balance = balance + 1 WHERE id = {}; \
             DELETE FROM accounts WHERE id = {}; \
             UPDATE accounts SET id = id + 10000000 WHERE id = {}; COMMIT;",
            1_000_000 + i,
            (i * 7) % 20_000 + 1,
            (i * 13) % 20_000 + 1,
            (i * 17) % 20_000 + 1,
        ),
    );
}

#[test]
fn kill_dash_9_during_cdc_streaming_then_rerun_gives_an_equal_table() {
    let dir = tempfile::tempdir().unwrap();
    let src = pg_create_db("cli_cdc_src");
    let dst = pg_create_db("cli_cdc_dst");
    let slot = unique_slot("cli_slot");
    psql(
        &src,
        "CREATE TABLE accounts (id int8 PRIMARY KEY, owner text, balance numeric(12,2)); \
         INSERT INTO accounts SELECT i, 'owner ' || i, i * 0.5 FROM generate_series(1, 20000) i",
    );
    write_cdc_pipeline(dir.path(), "cdc", &src, &dst, "accounts", &slot, 500);
    let spawn = || spawn_run(dir.path(), "cdc.yaml");
    let mut child = spawn();
    // Changes flow while it runs; kill -9 once streamed changes are in the target.
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "no streamed change reached the target"
        );
        churn_once(&src, i);
        i += 1;
        let streamed = psql(
            &dst,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'accounts'",
        );
        if streamed.trim() == "1"
            && pg_count(
                &dst,
                "SELECT count(*) FROM accounts WHERE owner LIKE 'late%'",
            ) >= 20
        {
            break;
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the CDC run ended by itself"
    );
    child.kill().unwrap(); // SIGKILL mid-stream
    child.wait().unwrap();
    for j in i..i + 30 {
        churn_once(&src, j);
    }

    let mut child = spawn();
    wait_tables_equal(&src, &dst, &["accounts"], &mut child, 60, "the resumed run");
    stop_gracefully(&mut child);
    pg_drop_slot(&src, &slot);
}

/// `tributary state reset` of a pipeline with a PostgreSQL target forgets the positions the
/// sink stored with the data as well as the state store's: the next run loads everything
/// again (without that, it resumes from the target's positions and reads nothing).
#[test]
fn state_reset_also_forgets_the_positions_stored_in_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let src = pg_create_db("cli_reset_src");
    let dst = pg_create_db("cli_reset_dst");
    psql(
        &src,
        "CREATE TABLE orders (id int8 PRIMARY KEY, amount int8);
         INSERT INTO orders SELECT i, i * 2 FROM generate_series(1, 2500) i",
    );
    write_pipeline(dir.path(), &src, &dst);
    let rows_in = |out: std::process::Output| -> i64 {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["rows_in"].as_i64().unwrap()
    };
    let run = || run_ok(&["run", "copy.yaml", "--report", "json"], dir.path());
    assert_eq!(rows_in(run()), 2500);
    assert_eq!(rows_in(run()), 0, "a rerun resumes at the end");

    let reset = run_ok(&["state", "reset", "copy.yaml"], dir.path());
    let text = String::from_utf8_lossy(&reset.stdout);
    assert!(
        text.contains("forgot the positions of 1 streams stored in postgres"),
        "{text}"
    );
    assert_eq!(
        pg_count(
            &dst,
            "SELECT count(*) FROM tributary_positions WHERE pipeline = 'copy'"
        ),
        0
    );
    psql(&dst, "TRUNCATE orders");
    assert_eq!(rows_in(run()), 2500, "everything again after the reset");
    assert_eq!(pg_count(&dst, "SELECT count(*) FROM orders"), 2500);
}

/// `kill -9` during the initial snapshot of change data capture: the exported snapshot dies
/// with the run, so the next run takes it again from a new slot, each table's rows after a
/// truncate event; rows the first attempt wrote and the source deleted since are gone from
/// the target, and it ends equal to the source.
#[test]
fn kill_dash_9_during_a_cdc_snapshot_then_rerun_takes_it_again_and_ends_equal() {
    const ROWS: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let src = pg_create_db("cli_cdc_snap_src");
    let dst = pg_create_db("cli_cdc_snap_dst");
    let slot = unique_slot("cli_snap");
    psql(
        &src,
        &format!(
            "CREATE TABLE orders (id int8 PRIMARY KEY, region text NOT NULL, amount numeric(12,2), \
             note text); \
             INSERT INTO orders SELECT i, 'r' || (i % 17), i * 0.37, md5(i::text) \
             FROM generate_series(1, {ROWS}) i"
        ),
    );
    write_cdc_pipeline(dir.path(), "cdc_snap", &src, &dst, "orders", &slot, 1000);
    let spawn = || spawn_run(dir.path(), "cdc.yaml");
    let mut child = spawn();
    wait_rows(&dst, "orders", 20_000);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL mid-snapshot
    child.wait().unwrap();
    let at_kill = pg_count(&dst, "SELECT count(*) FROM orders");
    assert!(at_kill < ROWS, "killed mid-snapshot: {at_kill} rows");
    // Rows the first attempt wrote change or go away before the second.
    let written_before = pg_count(&dst, "SELECT count(*) FROM orders WHERE id <= 100");
    assert!(written_before > 0, "the first attempt wrote the first rows");
    psql(
        &src,
        "DELETE FROM orders WHERE id <= 50; UPDATE orders SET note = 'changed' WHERE id BETWEEN 51 AND 60",
    );

    let mut child = spawn();
    wait_tables_equal(
        &src,
        &dst,
        &["orders"],
        &mut child,
        180,
        "the second run (it should take the snapshot again)",
    );
    // And it streams on from the new slot.
    psql(&src, "INSERT INTO orders VALUES (0, 'r0', 1.5, 'streamed')");
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_count(&dst, "SELECT count(*) FROM orders WHERE id = 0") != 1 {
        assert!(
            Instant::now() < deadline,
            "no streaming after the new snapshot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_gracefully(&mut child);
    pg_drop_slot(&src, &slot);
}
