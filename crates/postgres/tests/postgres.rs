//! The PostgreSQL source and sink against a real server (PostgreSQL 15 on loopback, started
//! by `scripts/services up`; `TRIBUTARY_PG_URL` says where). Each test makes its own source
//! and target databases. A missing server fails these tests.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};
use tributary_core::dead_letter::NdjsonDeadLetter;
use tributary_core::error::ConnectorError;
use tributary_core::runtime::{Pipeline, PipelineSettings, RunStatus, RunSummary};
use tributary_core::schema::SchemaPolicy;
use tributary_core::state::SqliteStateStore;
use tributary_core::{Batch, Position, Sink, Source, WriteOutcome};
use tributary_postgres::config::{SinkMode, SourceMode};
use tributary_postgres::{PostgresSink, PostgresSinkConfig, PostgresSource, PostgresSourceConfig};

fn base_url() -> String {
    std::env::var("TRIBUTARY_PG_URL").unwrap_or_else(|_| {
        panic!("TRIBUTARY_PG_URL is not set: run the tests with scripts/test, which starts the services")
    })
}

/// The URL of database `db` on the test server.
fn url_of(db: &str) -> String {
    let base = base_url();
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{db}")
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Creates a fresh database and returns its URL.
async fn create_db(prefix: &str) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        t.as_nanos() % 1_000_000_000_000
    );
    let admin = connect(&base_url()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    url_of(&name)
}

/// Every row of `table` as PostgreSQL's row text, sorted (a multiset: `EXCEPT ALL` both ways
/// is empty exactly when two of these are equal).
async fn rows_of(client: &Client, table: &str) -> Vec<String> {
    let rows = client
        .query(&format!("SELECT t::text FROM {table} t"), &[])
        .await
        .unwrap();
    let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    out.sort();
    out
}

/// SQL that drops a replication slot once its walsender has gone: a stopped source has closed
/// its replication connection, but the server ends that backend a moment later, and dropping
/// an active slot fails ("is active for PID ..."; seen once in a full run). After 30 s the
/// drop is tried anyway, and fails the test with PostgreSQL's message.
fn drop_slot_sql(slot: &str) -> String {
    format!(
        "DO $$ BEGIN FOR i IN 1..600 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM \
         pg_replication_slots WHERE slot_name = '{slot}' AND active); PERFORM pg_sleep(0.05); \
         END LOOP; PERFORM pg_drop_replication_slot('{slot}'); END $$"
    )
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn pipeline(dir: &Path, name: &str, source: Box<dyn Source>, sink: Box<dyn Sink>) -> Pipeline {
    let state = Arc::new(SqliteStateStore::open(dir.join("state.db")).unwrap());
    let dlq = Box::new(NdjsonDeadLetter::new(dir.join("dlq.ndjson")));
    let mut settings = PipelineSettings::new(name);
    settings.retry.max_attempts = 2;
    Pipeline::new(settings, source, sink, dlq, state)
}

/// A suffix for replication slot and publication names no other test uses (slots are per
/// cluster, not per database).
fn unique_tag() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}_{}", std::process::id(), t.as_micros() % 1_000_000_000)
}

/// A change-data-capture source config for `tables` of `url`, its slot and publication named
/// `<prefix>_slot_<tag>` and `<prefix>_pub_<tag>` (unique); the slot's name comes back too.
fn cdc_config(
    url: &str,
    tables: &[&str],
    prefix: &str,
    batch_rows: usize,
    batch_wait_ms: u64,
) -> (PostgresSourceConfig, String) {
    let tag = unique_tag();
    let slot = format!("{prefix}_slot_{tag}");
    let mut config = PostgresSourceConfig::new(url, tables.iter().map(|t| t.to_string()).collect());
    config.mode = SourceMode::Cdc;
    config.slot = Some(slot.clone());
    config.publication = Some(format!("{prefix}_pub_{tag}"));
    config.batch_rows = batch_rows.try_into().unwrap();
    config.batch_wait = std::time::Duration::from_millis(batch_wait_ms);
    (config, slot)
}

/// A sink that fails for good on its `fail_at`-th write: a crash between batches.
struct CrashingSink {
    inner: PostgresSink,
    writes: Arc<AtomicUsize>,
    fail_at: usize,
}

#[async_trait::async_trait]
impl Sink for CrashingSink {
    fn describe(&self) -> String {
        "crashing".into()
    }
    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        self.inner.open(pipeline).await
    }
    async fn stored_positions(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        self.inner.stored_positions(pipeline).await
    }
    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(ConnectorError::fatal("simulated crash"));
        }
        self.inner.write(batch).await
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        self.inner.flush().await
    }
}

const ALL_TYPES: &str = r#"
CREATE TABLE items (
    id int8 PRIMARY KEY,
    small int2, medium int4, f4 float4, f8 float8,
    price numeric(12,2), anynum numeric,
    name text, code varchar(20), flag bool,
    day date, at timestamp, at_tz timestamptz,
    uid uuid, doc json, docb jsonb, blob bytea,
    span interval, tags int4[]
);
INSERT INTO items
SELECT i, (i % 30000)::int2, i::int4 * 3, i / 7.0, i / 3.0,
       (i * 1.25)::numeric(12,2), CASE WHEN i % 5 = 0 THEN 'NaN'::numeric ELSE i / 9.0 END,
       'name ' || i || CASE WHEN i % 11 = 0 THEN ' ünï''"\' ELSE '' END, 'c' || (i % 100),
       i % 2 = 0,
       DATE '2020-01-01' + (i % 2000), TIMESTAMP '2021-03-04 05:06:07.123456' + i * INTERVAL '1 minute',
       TIMESTAMPTZ '2022-01-01 00:00:00+02' + i * INTERVAL '1 second',
       md5(i::text)::uuid, json_build_object('i', i, 'tag', 'x'), jsonb_build_object('i', i, 'nested', jsonb_build_array(1, 'two', NULL)),
       decode(md5(i::text), 'hex'),
       i * INTERVAL '1 hour', ARRAY[i::int4, 2]
FROM generate_series(1, 5000) i;
UPDATE items SET name = NULL, price = NULL, day = NULL, uid = NULL, docb = NULL, blob = NULL WHERE id % 13 = 0;
CREATE TABLE item_notes (note_id int4 PRIMARY KEY, body text);
INSERT INTO item_notes SELECT i, 'note ' || i FROM generate_series(1, 1234) i;
CREATE TABLE unrelated (x int4);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_every_type_to_a_postgres_target_equals_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("snap_src").await;
    let dst_url = create_db("snap_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(ALL_TYPES).await.unwrap();

    let mut config = PostgresSourceConfig::new(&src_url, vec!["public.item*".into()]);
    config.batch_rows = 700.try_into().unwrap();
    let summary = pipeline(
        dir.path(),
        "snap",
        Box::new(PostgresSource::new(config.clone()).unwrap()),
        Box::new(
            PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap(),
        ),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(summary.status, RunStatus::Completed);
    assert_eq!(summary.rows_out, 5000 + 1234);
    assert_eq!(summary.dead_lettered, 0);

    let dst = connect(&dst_url).await;
    for table in ["items", "item_notes"] {
        let (a, b) = (rows_of(&src, table).await, rows_of(&dst, table).await);
        assert_eq!(a.len(), b.len(), "{table}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{table}");
        }
    }
    // Types came across, not only text: the key, a decimal, uuid and jsonb.
    let types: Vec<(String, String)> = dst
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name = 'items' AND column_name IN ('id', 'price', 'uid', 'docb', 'at_tz', 'anynum')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (c, t) in [
        ("id", "bigint"),
        ("price", "numeric"),
        ("uid", "uuid"),
        ("docb", "jsonb"),
        ("at_tz", "timestamp with time zone"),
        ("anynum", "text"),
    ] {
        assert!(
            types.contains(&(c.to_string(), t.to_string())),
            "{c} {t}: {types:?}"
        );
    }
    assert_eq!(
        count(
            &dst,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND indisprimary"
        )
        .await,
        1
    );
    let stored: String = dst
        .query_one(
            "SELECT position->>'complete' FROM tributary_positions WHERE pipeline = 'snap' AND stream = 'public.items'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "true");

    // A completed snapshot is not taken again.
    let again = pipeline(
        dir.path(),
        "snap",
        Box::new(PostgresSource::new(config).unwrap()),
        Box::new(
            PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap(),
        ),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(again.rows_in, 0);
    assert_eq!(count(&dst, "SELECT count(*) FROM items").await, 5000);
}

async fn run_to(
    dir: &Path,
    name: &str,
    source: PostgresSourceConfig,
    sink: Box<dyn Sink>,
) -> Result<RunSummary, tributary_core::runtime::PipelineFailure> {
    pipeline(
        dir,
        name,
        Box::new(PostgresSource::new(source).unwrap()),
        sink,
    )
    .run()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_snapshot_resumes_from_the_position_stored_with_the_data() {
    let src_url = create_db("crash_src").await;
    let dst_url = create_db("crash_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE orders (region text, id int4, amount float8, PRIMARY KEY (region, id));
         INSERT INTO orders SELECT 'r' || (i % 7), i, i * 0.5 FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    let mut config = PostgresSourceConfig::new(&src_url, vec!["orders".into()]);
    config.batch_rows = 1000.try_into().unwrap();
    let sink =
        || PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap();

    // First run: the 6th write fails, 5 batches are in the target with their position.
    let state1 = tempfile::tempdir().unwrap();
    let failed = run_to(
        state1.path(),
        "crash",
        config.clone(),
        Box::new(CrashingSink {
            inner: sink(),
            writes: Arc::new(AtomicUsize::new(0)),
            fail_at: 6,
        }),
    )
    .await
    .unwrap_err();
    assert!(
        failed.error.to_string().contains("simulated crash"),
        "{}",
        failed.error
    );
    let dst = connect(&dst_url).await;
    assert_eq!(count(&dst, "SELECT count(*) FROM orders").await, 5000);

    // Second run with an empty state store (its commit never happened): the sink's stored
    // position wins, so nothing is written twice even though the target has no key check.
    dst.batch_execute("ALTER TABLE orders DROP CONSTRAINT orders_pkey")
        .await
        .unwrap();
    let state2 = tempfile::tempdir().unwrap();
    let summary = run_to(state2.path(), "crash", config, Box::new(sink()))
        .await
        .unwrap();
    assert_eq!(summary.rows_in, 15000, "resumed after the 5000 rows stored");
    assert_eq!(rows_of(&src, "orders").await, rows_of(&dst, "orders").await);
    assert_eq!(
        count(&dst, "SELECT count(*) FROM (SELECT region, id FROM orders GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0
    );
}

/// `parallel: 4` reads a table in four key ranges at once; a crash leaves each range at its
/// own committed key, and the rerun (its state store lost: the positions stored with the data
/// win) reads every range on from there, plus rows added past the old largest key, with no
/// duplicate. A table whose key is not one integer column is read in one range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_parallel_key_ranges_equals_the_source_and_resumes_each_range() {
    let src_url = create_db("par_src").await;
    let dst_url = create_db("par_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE events (id int8 PRIMARY KEY, body text);
         INSERT INTO events SELECT i, 'event ' || i FROM generate_series(-3000, 40000) i WHERE i % 3 <> 0;
         CREATE TABLE labels (code text PRIMARY KEY, n int4);
         INSERT INTO labels SELECT 'l' || i, i FROM generate_series(1, 2000) i;",
    )
    .await
    .unwrap();
    let total = count(&src, "SELECT count(*) FROM events").await;
    let mut config = PostgresSourceConfig::new(&src_url, vec!["events".into(), "labels".into()]);
    config.batch_rows = 300.try_into().unwrap();
    config.parallel = 4.try_into().unwrap();
    let sink =
        || PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap();

    // The 25th write fails: 24 full batches of `events` are in the target with their position.
    let state1 = tempfile::tempdir().unwrap();
    let failed = run_to(
        state1.path(),
        "par",
        config.clone(),
        Box::new(CrashingSink {
            inner: sink(),
            writes: Arc::new(AtomicUsize::new(0)),
            fail_at: 25,
        }),
    )
    .await
    .unwrap_err();
    assert!(failed.error.to_string().contains("simulated crash"));
    let dst = connect(&dst_url).await;
    assert_eq!(count(&dst, "SELECT count(*) FROM events").await, 24 * 300);
    let stored: serde_json::Value = dst
        .query_one(
            "SELECT position::text FROM tributary_positions WHERE pipeline = 'par' AND stream = 'public.events'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let ranges = stored["ranges"].as_array().expect("ranges in the position");
    assert_eq!(ranges.len(), 4, "{stored}");
    assert_eq!(ranges[0]["from"], serde_json::Value::Null);
    assert_eq!(ranges[3]["to"], serde_json::Value::Null);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "contiguous: {stored}");
    }
    let started = ranges.iter().filter(|r| !r["after"].is_null()).count();
    assert!(started >= 2, "ranges were read concurrently: {stored}");

    // Rows past the old largest key (the last range is unbounded), then the rerun with an
    // empty state store. (A row added below a range's committed key is not seen: a resumed
    // snapshot is not one consistent snapshot, in one range or in many.)
    src.batch_execute("INSERT INTO events VALUES (90000, 'above'), (90001, 'above too')")
        .await
        .unwrap();
    dst.batch_execute("ALTER TABLE events DROP CONSTRAINT events_pkey")
        .await
        .unwrap();
    let state2 = tempfile::tempdir().unwrap();
    let summary = run_to(state2.path(), "par", config, Box::new(sink()))
        .await
        .unwrap();
    for table in ["events", "labels"] {
        let (x, y) = (rows_of(&src, table).await, rows_of(&dst, table).await);
        assert_eq!(x.len(), y.len(), "{table}");
        assert_eq!(x, y, "{table}");
    }
    assert_eq!(summary.rows_in, (total + 2 - 24 * 300 + 2000) as u64);
    assert_eq!(
        count(
            &dst,
            "SELECT count(*) FROM (SELECT id FROM events GROUP BY 1 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    let done: String = dst
        .query_one(
            "SELECT position::text FROM tributary_positions WHERE pipeline = 'par' AND stream = 'public.events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let done: serde_json::Value = done.parse().unwrap();
    assert_eq!(done["complete"], true, "{done}");
    assert!(
        done["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["done"] == true),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_by_cursor_handles_ties_updates_and_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("inc_src").await;
    let dst_url = create_db("inc_dst").await;
    let src = connect(&src_url).await;
    // 10 rows share one cursor value after 4 older ones; batches of 3 end inside the tie.
    src.batch_execute(
        "CREATE TABLE events (id int4 PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
         INSERT INTO events SELECT i, TIMESTAMPTZ '2026-01-01 00:00:00Z', 'v' || i FROM generate_series(1, 10) i;
         INSERT INTO events SELECT i, TIMESTAMPTZ '2025-12-31 00:00:00Z', 'old' || i FROM generate_series(11, 14) i;",
    )
    .await
    .unwrap();
    let mut config = PostgresSourceConfig::new(&src_url, vec!["events".into()]);
    config.mode = SourceMode::Incremental;
    config.cursor = Some("updated_at".into());
    config.batch_rows = 3.try_into().unwrap();
    let mut sink_config = PostgresSinkConfig::new(&dst_url);
    sink_config.mode = SinkMode::Upsert;
    let sink = || Box::new(PostgresSink::new(sink_config.clone(), SchemaPolicy::Evolve).unwrap());
    let dst = connect(&dst_url).await;

    // A crash after two batches (6 rows, inside the tie), then a clean run.
    let failed = run_to(
        dir.path(),
        "inc",
        config.clone(),
        Box::new(CrashingSink {
            inner: *sink(),
            writes: Arc::new(AtomicUsize::new(0)),
            fail_at: 3,
        }),
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(count(&dst, "SELECT count(*) FROM events").await, 6);
    let s = run_to(dir.path(), "inc", config.clone(), sink())
        .await
        .unwrap();
    assert_eq!(s.rows_in, 8, "the rest of the tie and nothing before it");
    assert_eq!(rows_of(&src, "events").await, rows_of(&dst, "events").await);

    // New rows at the same cursor value (higher keys), an update, a new column.
    src.batch_execute(
        "INSERT INTO events SELECT i, TIMESTAMPTZ '2026-01-01 00:00:00Z', 'tie' || i FROM generate_series(15, 18) i;
         UPDATE events SET v = 'changed', updated_at = TIMESTAMPTZ '2026-01-02 00:00:00Z' WHERE id IN (3, 12);
         ALTER TABLE events ADD COLUMN note text;
         INSERT INTO events VALUES (19, TIMESTAMPTZ '2026-01-03 00:00:00Z', 'new', 'with a note');",
    )
    .await
    .unwrap();
    let s = run_to(dir.path(), "inc", config.clone(), sink())
        .await
        .unwrap();
    assert_eq!(s.rows_in, 4 + 2 + 1);
    assert_eq!(rows_of(&src, "events").await, rows_of(&dst, "events").await);

    // Nothing new: nothing read.
    let s = run_to(dir.path(), "inc", config, sink()).await.unwrap();
    assert_eq!(s.rows_in, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_arrow_cannot_hold_are_dead_lettered_and_keyless_tables_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("odd_src").await;
    let dst_url = create_db("odd_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE prices (id int4 PRIMARY KEY, price numeric(10,3), day date);
         INSERT INTO prices SELECT i, i * 1.5, DATE '2026-01-01' + i FROM generate_series(1, 100) i;
         UPDATE prices SET price = 'NaN' WHERE id = 7;
         UPDATE prices SET day = 'infinity' WHERE id = 42;
         CREATE TABLE log_lines (line text, at timestamptz);
         INSERT INTO log_lines SELECT 'line ' || i, TIMESTAMPTZ '2026-01-01Z' + i * INTERVAL '1 s' FROM generate_series(1, 250) i;",
    )
    .await
    .unwrap();
    let mut config = PostgresSourceConfig::new(&src_url, vec!["prices".into(), "log_lines".into()]);
    config.batch_rows = 40.try_into().unwrap();
    let summary = pipeline(
        dir.path(),
        "odd",
        Box::new(PostgresSource::new(config).unwrap()),
        Box::new(
            PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap(),
        ),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(summary.rows_out, 98 + 250);
    let dead = std::fs::read_to_string(dir.path().join("dlq.ndjson")).unwrap();
    assert!(dead.contains("NaN"), "{dead}");
    assert!(dead.contains("infinity"), "{dead}");
    let dst = connect(&dst_url).await;
    let ids: Vec<i32> = dst
        .query("SELECT id FROM prices ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        (1..=100)
            .filter(|i| *i != 7 && *i != 42)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(
            &dst,
            "SELECT count(*) FROM prices p WHERE price <> id * 1.5"
        )
        .await,
        0
    );
    // The keyless table arrived whole, without a key, and is marked complete.
    assert_eq!(
        rows_of(&src, "log_lines").await,
        rows_of(&dst, "log_lines").await
    );
    let position: String = dst
        .query_one(
            "SELECT position::text FROM tributary_positions WHERE stream = 'public.log_lines'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        position,
        r#"{"after": null, "order": [], "complete": true}"#
    );
}

/// Runs `count` small transactions of inserts, updates (one changing a key) and deletes.
async fn churn(url: String, from: i64, count: i64) {
    let c = connect(&url).await;
    for i in from..from + count {
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO accounts (id, owner, balance) VALUES ({new}, 'owner {i}', {i}.25);
             UPDATE accounts SET balance = balance + 1, owner = owner || '+' WHERE id = {upd};
             DELETE FROM accounts WHERE id = {del};
             UPDATE accounts SET id = id + 1000000 WHERE id = {moved};
             INSERT INTO items (id, payload) VALUES ({i}, jsonb_build_object('i', {i}));
             COMMIT;",
            new = 100_000 + i,
            upd = (i * 7) % 2000 + 1,
            del = (i * 13) % 2000 + 1,
            moved = (i * 17) % 2000 + 1,
        ))
        .await
        .unwrap();
    }
}

/// Polls until `table` is equal in both databases.
async fn wait_equal(src: &Client, dst: &Client, table: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let exists: bool = dst
            .query_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[])
            .await
            .unwrap()
            .get(0);
        if exists && rows_of(src, table).await == rows_of(dst, table).await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table} never became equal to the source"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_snapshot_then_changes_under_concurrent_writes_equals_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("cdc_src").await;
    let dst_url = create_db("cdc_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE accounts (id int8 PRIMARY KEY, owner text, balance numeric(12,2), note text);
         ALTER TABLE accounts ALTER COLUMN note SET STORAGE EXTERNAL;
         INSERT INTO accounts SELECT i, 'owner ' || i, i * 1.5, CASE WHEN i % 100 = 0 THEN repeat(md5(i::text), 400) END FROM generate_series(1, 2000) i;
         CREATE TABLE items (id int8 PRIMARY KEY, payload jsonb);",
    )
    .await
    .unwrap();
    let (mut config, slot) = cdc_config(&src_url, &["accounts", "items"], "t", 500, 50);
    // The initial snapshot in three key ranges (in the slot's exported snapshot, so racing
    // writes are still neither lost nor doubled); `items` starts empty: one range.
    config.parallel = 3.try_into().unwrap();
    let sink_config = PostgresSinkConfig::new(&dst_url);
    let metrics = tributary_core::metrics::Metrics::new();
    let run = |config: PostgresSourceConfig| {
        let stop = tokio_util::sync::CancellationToken::new();
        let p = pipeline(
            dir.path(),
            "cdc",
            Box::new(PostgresSource::new(config).unwrap()),
            Box::new(PostgresSink::new(sink_config.clone(), SchemaPolicy::Evolve).unwrap()),
        )
        .with_stop(stop.clone())
        .with_metrics(metrics.clone());
        (tokio::spawn(p.run()), stop)
    };
    let lag_line = format!("tributary_cdc_lag_bytes{{pipeline=\"cdc\",slot=\"{slot}\"}}");
    let lag = || -> Option<i64> {
        let text = metrics.encode();
        let line = text.lines().find(|l| l.starts_with(&lag_line))?;
        line.rsplit(' ').next()?.parse().ok()
    };

    // Writes race with the snapshot and go on after it.
    let writer = tokio::spawn(churn(src_url.clone(), 0, 200));
    let (task, stop) = run(config.clone());
    writer.await.unwrap();
    let dst = connect(&dst_url).await;
    wait_equal(&src, &dst, "accounts", 60).await;
    wait_equal(&src, &dst, "items", 60).await;
    // Once the last changes are committed, the slot's confirmed position reaches them.
    let lsn_now: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let behind: bool = src
            .query_one(
                "SELECT confirmed_flush_lsn < $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&lsn_now, &slot],
            )
            .await
            .unwrap()
            .get(0);
        if !behind {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the confirmed flush LSN never reached {lsn_now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Caught up and idle: the slot-lag gauge comes down to nothing held back (it is set on
    // the server's keepalives and on each confirmation).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lag() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{lag_line} never reached 0: {:?}",
            lag()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Stopped);

    // A second run resumes from the stored positions: a new column mid-stream, TOASTed values
    // an update leaves alone, more churn.
    src.batch_execute(
        "ALTER TABLE accounts ADD COLUMN tier text;
         UPDATE accounts SET tier = 'gold', balance = balance * 2 WHERE id % 100 = 0;",
    )
    .await
    .unwrap();
    let (task, stop) = run(config.clone());
    churn(src_url.clone(), 200, 100).await;
    wait_equal(&src, &dst, "accounts", 60).await;
    wait_equal(&src, &dst, "items", 60).await;
    stop.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Stopped);
    assert!(
        summary.rows_in < 2000,
        "resumed, no new snapshot: {} rows",
        summary.rows_in
    );
    let toasted = count(
        &dst,
        "SELECT count(*) FROM accounts WHERE length(note) = 12800 AND tier = 'gold'",
    )
    .await;
    assert!(toasted > 0, "unchanged TOAST values kept");

    // A dropped slot is a clear error, not a silent gap.
    src.batch_execute(&drop_slot_sql(&slot)).await.unwrap();
    let (task, _stop) = run(config);
    let failed = task.await.unwrap().unwrap_err();
    assert!(
        failed.error.to_string().contains("does not exist"),
        "{}",
        failed.error
    );
}

/// A PostgreSQL cluster of one test's own, for a setting the shared server must not have
/// (initdb and pg_ctl as the `postgres` user, as scripts/services does; `TRIBUTARY_PG_BIN`
/// or Debian's PostgreSQL 15); stopped when dropped.
struct OwnCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl OwnCluster {
    fn start(settings: &str) -> Self {
        let bin: std::path::PathBuf = std::env::var("TRIBUTARY_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
            .into();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = |program: &str, args: &[&str]| {
            let out = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join(program))
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let chown = std::process::Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        as_postgres(
            "initdb",
            &["-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c wal_level=logical -c fsync=off {settings}",
            dir.path().display()
        );
        let log = dir.path().join("log");
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
                "-o",
                &options,
            ],
        );
        OwnCluster { dir, bin, port }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A slot the server invalidated (it fell more than `max_slot_wal_keep_size` behind while the
/// pipeline was stopped, and the WAL it held was removed) stops the next run with an error
/// that says so and what to do, instead of streaming from wherever the server can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_for_removed_wal_is_a_clear_error() {
    let cluster = OwnCluster::start("-c max_slot_wal_keep_size=1MB -c min_wal_size=32MB");
    let src_url = cluster.url("postgres");
    let src = connect(&src_url).await;
    src.batch_execute("CREATE DATABASE target").await.unwrap();
    src.batch_execute(
        "CREATE TABLE ticks (id int8 PRIMARY KEY, body text);
         INSERT INTO ticks SELECT i, 'tick ' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let dst_url = cluster.url("target");
    let (config, slot) = cdc_config(&src_url, &["ticks"], "lost", 1000, 20);
    let state = tempfile::tempdir().unwrap();
    let run = || {
        let stop = tokio_util::sync::CancellationToken::new();
        let p = pipeline(
            state.path(),
            "lost",
            Box::new(PostgresSource::new(config.clone()).unwrap()),
            Box::new(
                PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap(),
            ),
        )
        .with_stop(stop.clone());
        (tokio::spawn(p.run()), stop)
    };
    let (task, stop) = run();
    let dst = connect(&dst_url).await;
    wait_equal(&src, &dst, "ticks", 60).await;
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap().status, RunStatus::Stopped);

    // While nothing reads the slot: WAL segments written, switched and checkpointed away.
    let mut status = String::new();
    for round in 0..10 {
        src.batch_execute(&format!(
            "INSERT INTO ticks SELECT i, repeat('x', 200) FROM generate_series({0} * 20000 + 1000, {0} * 20000 + 20999) i;
             SELECT pg_switch_wal(); CHECKPOINT;",
            round
        ))
        .await
        .unwrap();
        status = src
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the server never invalidated the slot");

    let (task, _stop) = run();
    let failed = task.await.unwrap().unwrap_err();
    let message = failed.error.to_string();
    assert!(
        message.contains(&format!("replication slot {slot} was invalidated")),
        "{message}"
    );
    let tributary_core::runtime::PipelineError::Source { error, .. } = &failed.error else {
        panic!("not a source error: {message}");
    };
    let hint = error.hint().unwrap_or_default();
    assert!(
        hint.contains("pg_drop_replication_slot") && hint.contains("state reset lost"),
        "{hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_resumes_after_a_crash_mid_stream_from_the_positions_stored_with_the_data() {
    let src_url = create_db("cdcx_src").await;
    let dst_url = create_db("cdcx_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE accounts (id int8 PRIMARY KEY, owner text, balance numeric(12,2), note text);
         INSERT INTO accounts SELECT i, 'owner ' || i, i * 1.5, NULL FROM generate_series(1, 2000) i;
         CREATE TABLE items (id int8 PRIMARY KEY, payload jsonb);",
    )
    .await
    .unwrap();
    let (config, slot) = cdc_config(&src_url, &["accounts", "items"], "tx", 500, 20);
    let sink =
        || PostgresSink::new(PostgresSinkConfig::new(&dst_url), SchemaPolicy::Evolve).unwrap();

    // First run: the snapshot takes 6 writes (4 batches and 2 end markers); the 12th write,
    // mid-stream, fails for good.
    let state1 = tempfile::tempdir().unwrap();
    let first = tokio::spawn(
        pipeline(
            state1.path(),
            "cdcx",
            Box::new(PostgresSource::new(config.clone()).unwrap()),
            Box::new(CrashingSink {
                inner: sink(),
                writes: Arc::new(AtomicUsize::new(0)),
                fail_at: 12,
            }),
        )
        .run(),
    );
    let c = connect(&src_url).await;
    let mut i = 0;
    while !first.is_finished() {
        assert!(i < 5000, "the first run never reached its crash");
        c.batch_execute(&format!(
            "INSERT INTO accounts (id, owner) VALUES ({}, 'late');
             UPDATE accounts SET balance = balance + 1 WHERE id = {};
             DELETE FROM accounts WHERE id = {};
             INSERT INTO items VALUES ({i}, '{{}}');",
            100_000 + i,
            i % 2000 + 1,
            (i * 3) % 2000 + 1
        ))
        .await
        .unwrap();
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let failed = first.await.unwrap().unwrap_err();
    assert!(
        failed.error.to_string().contains("simulated crash"),
        "{}",
        failed.error
    );
    // More changes while nothing runs.
    churn(src_url.clone(), 10_000, 50).await;

    // Second run with an empty state store: it resumes from the sink's positions, through the
    // slot, without a new snapshot.
    let state2 = tempfile::tempdir().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(
        pipeline(
            state2.path(),
            "cdcx",
            Box::new(PostgresSource::new(config).unwrap()),
            Box::new(sink()),
        )
        .with_stop(stop.clone())
        .run(),
    );
    let dst = connect(&dst_url).await;
    wait_equal(&src, &dst, "accounts", 60).await;
    wait_equal(&src, &dst, "items", 60).await;
    stop.cancel();
    let summary = second.await.unwrap().unwrap();
    assert!(
        summary.rows_in < 2000,
        "no new snapshot: {} rows",
        summary.rows_in
    );
    src.batch_execute(&drop_slot_sql(&slot)).await.unwrap();
}

/// Rows the target refuses for their content (a foreign key to a customer not there, a CHECK
/// constraint) are dead-lettered one by one, naming the constraint, with the row as JSON;
/// every other row of their batches is written, in both modes.
async fn refused_rows(mode: SinkMode) {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("refuse_src").await;
    let dst_url = create_db("refuse_dst").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE orders (id int8 PRIMARY KEY, customer_id int8, amount int8);
         INSERT INTO orders SELECT i, CASE WHEN i % 97 = 0 THEN 999 ELSE i % 10 END,
                CASE WHEN i % 211 = 0 THEN -1 ELSE i END
         FROM generate_series(1, 3000) i;
         CREATE VIEW good_orders AS SELECT * FROM orders WHERE id % 97 <> 0 AND id % 211 <> 0;",
    )
    .await
    .unwrap();
    let dst = connect(&dst_url).await;
    dst.batch_execute(
        "CREATE TABLE customers (id int8 PRIMARY KEY);
         INSERT INTO customers SELECT generate_series(0, 9);
         CREATE TABLE orders (id int8 PRIMARY KEY, customer_id int8 REFERENCES customers,
                              amount int8 CONSTRAINT amount_not_negative CHECK (amount >= 0));",
    )
    .await
    .unwrap();
    let mut source = PostgresSourceConfig::new(&src_url, vec!["orders".into()]);
    source.batch_rows = 1000.try_into().unwrap();
    let mut sink = PostgresSinkConfig::new(&dst_url);
    sink.mode = mode;
    let summary = run_to(
        dir.path(),
        "refuse",
        source,
        Box::new(PostgresSink::new(sink, SchemaPolicy::Evolve).unwrap()),
    )
    .await
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(summary.status, RunStatus::Completed);
    let bad_fk: Vec<i64> = (1..=3000).filter(|i| i % 97 == 0).collect();
    let bad_check: Vec<i64> = (1..=3000).filter(|i| i % 211 == 0 && i % 97 != 0).collect();
    let bad = bad_fk.len() + bad_check.len();
    assert_eq!(summary.dead_lettered as usize, bad);
    assert_eq!(summary.rows_out as usize + bad, 3000);
    assert_eq!(
        rows_of(&dst, "orders").await,
        rows_of(&src, "good_orders").await,
        "every row the target accepts is written"
    );
    let letters = NdjsonDeadLetter::read_all(dir.path().join("dlq.ndjson")).unwrap();
    let mut ids = Vec::new();
    for l in &letters {
        let row: serde_json::Value = serde_json::from_str(l.raw.as_deref().unwrap()).unwrap();
        let id = row["id"].as_i64().unwrap();
        let expected = if id % 97 == 0 {
            "orders_customer_id_fkey"
        } else {
            "amount_not_negative"
        };
        assert!(
            l.message.contains(expected),
            "{id}: {} names {expected}",
            l.message
        );
        assert_eq!(l.stream, "public.orders");
        ids.push(id);
    }
    ids.sort();
    let mut expected: Vec<i64> = bad_fk.into_iter().chain(bad_check).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_target_refuses_are_dead_lettered_and_the_rest_written_append() {
    refused_rows(SinkMode::Append).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_target_refuses_are_dead_lettered_and_the_rest_written_upsert() {
    refused_rows(SinkMode::Upsert).await;
}

/// What a [`RecordingSink`] made durable: each change's `(stream, op, id)` and, like a sink that
/// stores positions with its data, each stream's last position; the size of every batch.
#[derive(Default)]
struct Recorded {
    changes: Vec<(String, String, i64)>,
    positions: std::collections::HashMap<String, Position>,
    batch_rows: Vec<usize>,
}

/// An exactly-once sink in memory (rows and position stored together on each write) that
/// fails for good on its `fail_at`-th write, once.
struct RecordingSink {
    recorded: Arc<std::sync::Mutex<Recorded>>,
    writes: Arc<AtomicUsize>,
    fail_at: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Sink for RecordingSink {
    fn describe(&self) -> String {
        "recording".into()
    }
    async fn stored_positions(
        &mut self,
        _pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        let r = self.recorded.lock().unwrap();
        Ok(r.positions
            .iter()
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect())
    }
    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        use arrow_array::cast::AsArray;
        use arrow_array::Array;
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at.load(Ordering::SeqCst) {
            return Err(ConnectorError::fatal("simulated crash"));
        }
        let data = &batch.data;
        let op = data.column_by_name("op").unwrap().as_string::<i32>();
        let after = data.column_by_name("after").unwrap().as_struct();
        let before = data.column_by_name("before").unwrap().as_struct();
        let ids = |s: &arrow_array::StructArray, row: usize| -> Option<i64> {
            let col = s.column_by_name("id")?.as_string::<i32>();
            (!s.is_null(row) && !col.is_null(row)).then(|| col.value(row).parse().unwrap())
        };
        let mut r = self.recorded.lock().unwrap();
        for row in 0..data.num_rows() {
            let id = ids(after, row).or_else(|| ids(before, row)).unwrap();
            r.changes
                .push((batch.meta.stream.to_string(), op.value(row).to_string(), id));
        }
        r.batch_rows.push(data.num_rows());
        r.positions
            .insert(batch.meta.stream.to_string(), batch.meta.end.clone());
        Ok(WriteOutcome::Durable)
    }
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A transaction of a million rows (and more changes to two tables) is emitted in parts of
/// at most `batch_rows` changes (so memory stays bounded), and a crash between two parts
/// resumes inside the transaction: every change lands exactly once in a sink that stores
/// positions with its data. (About 15 s in a debug build.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_a_batch_is_split_and_resumes_inside_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = create_db("cdc_big_txn").await;
    let src = connect(&src_url).await;
    src.batch_execute(
        "CREATE TABLE big (id int8 PRIMARY KEY, v text);
         CREATE TABLE side (id int8 PRIMARY KEY, v text);",
    )
    .await
    .unwrap();
    let (config, slot) = cdc_config(&src_url, &["big", "side"], "t_big", 1000, 20);
    let recorded = Arc::new(std::sync::Mutex::new(Recorded::default()));
    let writes = Arc::new(AtomicUsize::new(0));
    let fail_at = Arc::new(AtomicUsize::new(usize::MAX));
    let run = |config: PostgresSourceConfig| {
        let stop = tokio_util::sync::CancellationToken::new();
        let sink = RecordingSink {
            recorded: recorded.clone(),
            writes: writes.clone(),
            fail_at: fail_at.clone(),
        };
        let p = pipeline(
            dir.path(),
            "big",
            Box::new(PostgresSource::new(config).unwrap()),
            Box::new(sink),
        )
        .with_stop(stop.clone());
        (tokio::spawn(p.run()), stop)
    };
    let wait_for = |n: usize, what: &'static str| {
        let recorded = recorded.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while recorded.lock().unwrap().changes.len() < n {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };

    // The (empty) snapshot, then a crash at the 8th write from here: inside the big transaction.
    let (task, _stop) = run(config.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while recorded.lock().unwrap().positions.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no snapshot position");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    fail_at.store(writes.load(Ordering::SeqCst) + 8, Ordering::SeqCst);
    src.batch_execute(
        "INSERT INTO side VALUES (1, 'before');
         BEGIN;
         INSERT INTO big SELECT i, 'v' || i FROM generate_series(1, 1000000) i;
         INSERT INTO side VALUES (2, 'inside');
         UPDATE big SET v = 'changed' WHERE id <= 700;
         DELETE FROM big WHERE id > 999900;
         COMMIT;
         INSERT INTO side VALUES (3, 'after');",
    )
    .await
    .unwrap();
    let failed = tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("the run never reached the crash: was the transaction one batch?")
        .unwrap()
        .unwrap_err();
    assert!(
        failed.error.to_string().contains("simulated crash"),
        "{}",
        failed.error
    );
    let at_crash = recorded.lock().unwrap().changes.len();
    assert!(
        at_crash > 1 && at_crash < 1_000_803,
        "crashed inside the transaction: {at_crash} changes were durable"
    );
    let stored = recorded.lock().unwrap().positions["public.big"].to_string();
    assert!(
        stored.contains("\"txn\""),
        "a position inside the transaction: {stored}"
    );

    // The restart resumes inside the transaction: the rest, once.
    let (task, stop) = run(config.clone());
    wait_for(1 + 1_000_000 + 1 + 700 + 100 + 1, "the rest never came").await;
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap().status, RunStatus::Stopped);
    {
        let r = recorded.lock().unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for (_, op, _) in &r.changes {
            *counts.entry(op.as_str()).or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            [("c", 1_000_000 + 3), ("d", 100), ("u", 700)].into(),
            "every change once"
        );
        let mut seen = std::collections::HashSet::new();
        for change in &r.changes {
            assert!(seen.insert(change.clone()), "{change:?} twice");
        }
        assert!(
            r.batch_rows.iter().all(|n| *n <= 1000),
            "no batch above batch_rows: {:?}",
            r.batch_rows
        );
    }

    // A crash after one table's last batch of a split transaction and before the other's:
    // the restart reads the transaction again, and the table that had it all skips it whole
    // (its parts come before the commit that the old check skipped at).
    let before = recorded.lock().unwrap().changes.len();
    let (task, _stop) = run(config.clone());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        recorded.lock().unwrap().changes.len(),
        before,
        "nothing new yet"
    );
    // Parts big 1000 + big 1000, then at the commit big's (empty) last batch and side's: fail there.
    fail_at.store(writes.load(Ordering::SeqCst) + 4, Ordering::SeqCst);
    src.batch_execute(
        "BEGIN;
         INSERT INTO big SELECT i, 'second' FROM generate_series(2000001, 2002000) i;
         INSERT INTO side VALUES (4, 'second');
         COMMIT;",
    )
    .await
    .unwrap();
    let failed = tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("the run never reached the crash")
        .unwrap()
        .unwrap_err();
    assert!(failed.error.to_string().contains("simulated crash"));
    assert_eq!(
        recorded.lock().unwrap().changes.len(),
        before + 2000,
        "big's parts durable, side's not"
    );
    let (task, stop) = run(config);
    wait_for(before + 2001, "side's change never came").await;
    // Anything repeated would have come with it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap().status, RunStatus::Stopped);
    {
        let r = recorded.lock().unwrap();
        assert_eq!(
            r.changes.len(),
            before + 2001,
            "big's second transaction once"
        );
        let mut seen = std::collections::HashSet::new();
        for change in &r.changes {
            assert!(seen.insert(change.clone()), "{change:?} twice");
        }
    }
    src.batch_execute(&drop_slot_sql(&slot)).await.unwrap();
}
