//! The guide's database examples (`examples/database_ingestion/`) against the real PostgreSQL
//! 15 of `scripts/services` (`TRIBUTARY_PG_URL`): each test loads `setup.sql` into a fresh
//! database, copies the example folder, and runs `tributary run` as its README says, with
//! `SHOP_URL`/`TARGET_URL` pointing at the test's databases. Results are read with psql and
//! from the Parquet files, not through Tributary. (The CDC → Kafka example is in `kafka.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/database_ingestion")
        .join(name)
}

/// A fresh database with the example shop in it.
fn shop_db(prefix: &str) -> String {
    let url = pg_create_db(prefix);
    psql(
        &url,
        &std::fs::read_to_string(example("setup.sql")).unwrap(),
    );
    url
}

/// `tributary run pipeline.yaml --report json` in `dir` with `SHOP_URL`: its summary.
fn run(dir: &Path, shop: &str) -> Value {
    let out = run_ok_with(
        &["run", "pipeline.yaml", "--no-progress", "--report", "json"],
        dir,
        &[("SHOP_URL", shop)],
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed", "{summary}");
    summary
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

#[test]
fn the_snapshot_example_copies_both_tables_once() {
    let shop = shop_db("ex_snapshot");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("snapshot"), dir.path());
    let s = run(dir.path(), &shop);
    assert_eq!(s["rows_out"], 1200, "{s}");
    let out = dir.path().join("output");
    assert_eq!(
        sorted(int_column(&out.join("public.customers"), "id")),
        (1..=200).collect::<Vec<_>>()
    );
    assert_eq!(
        sorted(int_column(&out.join("public.orders"), "id")),
        (1..=1000).collect::<Vec<_>>()
    );
    // Done tables are skipped by the next run.
    psql(
        &shop,
        "INSERT INTO customers (id, name) VALUES (201, 'late')",
    );
    let again = run(dir.path(), &shop);
    assert_eq!(again["rows_out"], 0, "{again}");
}

#[test]
fn the_incremental_example_reads_only_what_changed_since_the_last_run() {
    let shop = shop_db("ex_incremental");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("incremental"), dir.path());
    let first = run(dir.path(), &shop);
    assert_eq!(first["rows_out"], 1000, "{first}");
    let out = dir.path().join("output/public.orders");
    assert_eq!(
        sorted(int_column(&out, "id")),
        (1..=1000).collect::<Vec<_>>()
    );
    // The README's change: five orders paid, three new ones.
    psql(
        &shop,
        "UPDATE orders SET status = 'paid', updated_at = now() WHERE id <= 5; \
         INSERT INTO orders (id, customer_id, amount) VALUES (1001, 1, 9.5), (1002, 2, 19.5), (1003, 3, 29.5)",
    );
    let second = run(dir.path(), &shop);
    assert_eq!(second["rows_out"], 8, "{second}");
    let mut expected: Vec<i64> = (1..=1003).collect();
    expected.extend(1..=5);
    assert_eq!(sorted(int_column(&out, "id")), sorted(expected));
    let third = run(dir.path(), &shop);
    assert_eq!(third["rows_out"], 0, "nothing changed: {third}");
}

/// The example's tables.
const TABLES: &[&str] = &["customers", "orders"];

#[test]
fn the_cdc_to_postgres_example_keeps_a_replica_equal_through_a_restart() {
    let shop = shop_db("ex_cdc_src");
    let target = pg_create_db("ex_cdc_dst");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("cdc_to_postgres"), dir.path());
    let slot = unique_slot("ex_replica");
    // pipeline, slot and publication
    rename_in_file(&dir.path().join("pipeline.yaml"), "shop_replica", 3, &slot);
    let spawn = || {
        tributary()
            .args(["run", "pipeline.yaml", "--no-progress"])
            .env("SHOP_URL", &shop)
            .env("TARGET_URL", &target)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    wait_tables_equal(&shop, &target, TABLES, &mut child, 60, "snapshot");
    psql(
        &shop,
        "INSERT INTO customers (id, name) VALUES (201, 'new customer'); \
         UPDATE orders SET status = 'shipped', amount = amount + 1 WHERE id % 7 = 0; \
         DELETE FROM orders WHERE id > 990",
    );
    wait_tables_equal(&shop, &target, TABLES, &mut child, 60, "changes");
    stop_gracefully(&mut child);
    // Changes while it is down arrive after the restart, from the positions in the target.
    psql(
        &shop,
        "UPDATE customers SET tier = 'team' WHERE id <= 3; \
         INSERT INTO orders (id, customer_id, amount) VALUES (2000, 201, 5.25)",
    );
    let mut child = spawn();
    wait_tables_equal(&shop, &target, TABLES, &mut child, 60, "restart");
    stop_gracefully(&mut child);
    assert_eq!(pg_count(&target, "SELECT count(*) FROM orders"), 991);
    pg_drop_slot(&shop, &slot);
}
