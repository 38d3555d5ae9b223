"""`scripts/bench postgres`: table → Parquet and CDC → Parquet, Tributary beside the peers, one run.

Snapshot: the peers' `orders` table (../shared/bench/peers/pg_orders.sql: PG_ROWS rows, 12
columns; 10M rows is about 1.5 GB) in a database of its own. Floor: psql `\\copy (binary) to
/dev/null` (PostgreSQL's own export, nothing parsed or written). Tributary: `kind: postgres`
snapshot (binary COPY) → zstd Parquet, in one key range and in PG_PARALLEL (default 4) ranges
at once (`parallel:`). Peers: Sling (`sling-linux-amd64` from PyPI, its native
Parquet writer: SLING_DUCKDB_COMPUTE=false) and dlt (`sql_table`, pyarrow backend) → Parquet.
Each output is checked: row count and the sums of order_id and quantity.

CDC: CDC_CHANGES inserts in 1000-row transactions into a table published for logical
replication, made while nothing reads the slots, so each reader drains the same backlog. Floor:
`pg_recvlogical` (pgoutput) to /dev/null until the WAL position after the last insert.
Tributary: `mode: cdc` → Parquet (Debezium-style envelopes), timed from start until every
change is in committed Parquet files (polled from their footers), then stopped. Checked: the
count and the sum of `after.id`.

usage: bench_postgres.py ROOT BENCH_DIR PEERS  (TRIBUTARY_PG_URL; PG_ROWS, PG_PARALLEL, CDC_CHANGES, PG_PEERS)
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from bench_common import parquet_files, rm, timed, write_section
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT, B, PEERS = sys.argv[1], sys.argv[2], sys.argv[3]
ROWS = int(os.environ.get("PG_ROWS", "10000000"))
PARALLEL = int(os.environ.get("PG_PARALLEL", "4"))
CHANGES = int(os.environ.get("CDC_CHANGES", "1000000"))
RUN_PEERS = os.environ.get("PG_PEERS", "sling,dlt")
TRIBUTARY = os.path.join(ROOT, "target/release/tributary")
PG_BIN = "/usr/lib/postgresql/15/bin"
PY = sys.executable
base = os.environ["TRIBUTARY_PG_URL"]
parts = urlsplit(base)
URL = urlunsplit(parts._replace(path="/tributary_bench"))
work = os.path.join(B, "postgres")
os.makedirs(work, exist_ok=True)


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def psql(sql, url=URL, quiet=True):
    out = subprocess.run([f"{PG_BIN}/psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()





def sums(path, columns):
    """(rows, sum of each column) over every Parquet file under path."""
    rows, totals = 0, [0] * len(columns)
    for f in parquet_files(path):
        t = pq.read_table(f, columns=columns)
        rows += t.num_rows
        for i, c in enumerate(columns):
            totals[i] += pc.sum(t.column(c)).as_py() or 0
    return rows, totals


def pipeline(dir, name, source, extra=""):
    os.makedirs(dir, exist_ok=True)
    rm(os.path.join(dir, "out"), os.path.join(dir, ".tributary"))
    open(os.path.join(dir, "pipeline.yaml"), "w").write(
        f"pipeline: {name}\nsource: {source}\nsink: {{ kind: parquet, path: out, compression: zstd }}\n{extra}")


# --- database --------------------------------------------------------------------------------
if psql("select 1 from pg_database where datname = 'tributary_bench'", base) != "1":
    psql("create database tributary_bench", base)
results = {}

# --- snapshot ----------------------------------------------------------------------------------
have = psql("select coalesce((select count(*) from pg_class where relname = 'orders' and relkind = 'r'), 0)")
if have != "1" or psql("select count(*) from orders") != str(ROWS):
    log(f"creating orders ({ROWS} rows; 10M take about a minute)")
    sql = open(os.path.join(PEERS, "pg_orders.sql")).read().replace("10000000::bigint", f"{ROWS}::bigint")
    subprocess.run([f"{PG_BIN}/psql", URL, "-v", "ON_ERROR_STOP=1", "-q"], input=sql, text=True, check=True)
    psql("vacuum analyze orders")
size = int(psql("select pg_total_relation_size('orders')"))
expected = tuple(int(x) for x in psql("select count(*), sum(order_id), sum(quantity) from orders").split("|"))
expected = (expected[0], [expected[1], expected[2]])
psql("select count(*) from orders")  # warm the buffer cache

log("snapshot floor: \\copy (format binary) to /dev/null")
floor = timed([f"{PG_BIN}/psql", URL, "-qc", "\\copy orders to '/dev/null' (format binary)"])

log("snapshot: tributary")
d = os.path.join(work, "snapshot")
pipeline(d, "bench_pg_snapshot", f"{{ kind: postgres, url: '{URL}', tables: [public.orders] }}")
tr = timed([TRIBUTARY, "run", "pipeline.yaml", "--no-progress", "--log", "warn"], cwd=d)
got = sums(os.path.join(d, "out"), ["order_id", "quantity"])
assert got == expected, f"tributary's snapshot {got} != {expected}"

tr_par = None
if PARALLEL > 1:
    log(f"snapshot: tributary, parallel: {PARALLEL}")
    pipeline(d, "bench_pg_snapshot", f"{{ kind: postgres, url: '{URL}', tables: [public.orders], parallel: {PARALLEL} }}")
    tr_par = timed([TRIBUTARY, "run", "pipeline.yaml", "--no-progress", "--log", "warn"], cwd=d)
    got = sums(os.path.join(d, "out"), ["order_id", "quantity"])
    assert got == expected, f"tributary's parallel snapshot {got} != {expected}"

peers = {}
if "sling" in RUN_PEERS:
    sling = os.path.join(B, "venv/lib/python3.11/site-packages/sling_linux_amd64/bin/sling-linux-amd64")
    if not os.path.exists(sling):
        subprocess.run([os.path.join(B, "venv/bin/pip"), "install", "-q", "sling-linux-amd64"], check=True)
        os.chmod(sling, 0o755)
    out = os.path.join(work, "sling")
    rm(out)
    os.makedirs(out)
    log("snapshot: sling (native Parquet writer; about 2.5 min for 10M rows here)")
    env = dict(os.environ, PG=URL + "?sslmode=disable", SLING_DUCKDB_COMPUTE="false",
               SLING_DISABLE_TELEMETRY="true", SLING_HOME_DIR=os.path.join(B, "slinghome"))
    peers["Sling (native writer)"] = timed(
        [sling, "run", "--src-conn", "PG", "--src-stream", "public.orders",
         "--tgt-object", f"file://{out}/orders.parquet", "--tgt-options", '{"format": "parquet"}'], env=env)
    got = sums(out, ["order_id", "quantity"])
    assert got == expected, f"sling's snapshot {got} != {expected}"
if "dlt" in RUN_PEERS:
    try:
        import sqlalchemy, psycopg2  # noqa: F401
    except ImportError:
        subprocess.run([os.path.join(B, "venv/bin/pip"), "install", "-q", "dlt[sql_database,parquet,filesystem]",
                        "psycopg2-binary"], check=True)
    out = os.path.join(work, "dlt")
    rm(out, out + "_pipelines")
    log("snapshot: dlt sql_table (pyarrow backend)")
    script = f"""
import dlt
from dlt.destinations import filesystem
from dlt.sources.sql_database import sql_table
t = sql_table(credentials={URL!r}.replace("postgres://", "postgresql+psycopg2://"), table="orders", backend="pyarrow", chunk_size=100000)
p = dlt.pipeline(pipeline_name="pgbench", destination=filesystem(bucket_url="file://{out}"),
                 dataset_name="ds", pipelines_dir="{out}_pipelines")
p.run(t, loader_file_format="parquet")
"""
    env = dict(os.environ, RUNTIME__DLTHUB_TELEMETRY="false", RUNTIME__LOG_LEVEL="WARNING",
               DATA_WRITER__COMPRESSION="zstd")
    peers["dlt sql_table (pyarrow)"] = timed([PY, "-c", script], env=env)
    got = sums(os.path.join(out, "ds", "orders"), ["order_id", "quantity"])
    assert got == expected, f"dlt's snapshot {got} != {expected}"

# --- CDC ---------------------------------------------------------------------------------------
log(f"CDC: {CHANGES} inserts in 1000-row transactions, drained from a backlog")
psql("drop table if exists cdc_events; create table cdc_events (id bigint primary key, device text, "
     "reading float8, at timestamptz default now())")
for slot in ("tributary_bench_pg_cdc", "bench_floor"):
    psql(f"select pg_drop_replication_slot('{slot}') from pg_replication_slots where slot_name = '{slot}'")
psql("drop publication if exists tributary_bench_pg_cdc")
d = os.path.join(work, "cdc")
# A streaming pipeline commits (and so lands files) every commit_interval: 1 s here, not the
# 10 s default, or the drain time would mostly be the wait for the last commit.
pipeline(d, "bench_pg_cdc", f"{{ kind: postgres, url: '{URL}', tables: [public.cdc_events], mode: cdc }}",
         "commit_interval: 1s\n")


def start_cdc(dir=d):
    return subprocess.Popen([TRIBUTARY, "run", "pipeline.yaml", "--no-progress", "--log", "warn"], cwd=dir,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir, "run.log"), "a"))


def written():
    n = 0
    for f in parquet_files(os.path.join(d, "out")):
        try:
            n += pq.ParquetFile(f).metadata.num_rows
        except Exception:
            pass  # being renamed into place
    return n


def prime(dir, slot):
    """A first start: creates the slot (and publication) and takes the (empty) snapshot; stops
    once that is committed, so the backlog made next waits in the slot."""
    p = start_cdc(dir)
    deadline = time.time() + 60
    while psql(f"select count(*) from pg_replication_slots where slot_name = '{slot}'") != "1":
        assert time.time() < deadline and p.poll() is None, f"the CDC pipeline did not create its slot: {dir}/run.log"
        time.sleep(0.2)
    while "no committed positions" in subprocess.run([TRIBUTARY, "state", "show", "pipeline.yaml"], cwd=dir,
                                                     capture_output=True, text=True).stdout:
        assert time.time() < deadline and p.poll() is None, f"the CDC pipeline committed nothing: {dir}/run.log"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0, f"the CDC pipeline did not stop cleanly: {dir}/run.log"


def slot_reached(slot, lsn):
    return psql(f"select confirmed_flush_lsn >= '{lsn}'::pg_lsn from pg_replication_slots "
                f"where slot_name = '{slot}'") == "t"


prime(d, "tributary_bench_pg_cdc")
# CDC → Kafka (when scripts/services runs a broker): its own slot on the same publication.
KAFKA = os.environ.get("TRIBUTARY_KAFKA_BROKERS")
KSLOT = "tributary_bench_pg_cdc_kafka"
if KAFKA:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
    psql(f"select pg_drop_replication_slot('{KSLOT}') from pg_replication_slots where slot_name = '{KSLOT}'")
    ktopic = f"bench-pg-cdc-{os.getpid()}-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": KAFKA})  # kept: the futures need a live handle
    admin.create_topics([NewTopic(ktopic, 3, 1)])[ktopic].result(30)
    dk = os.path.join(work, "cdc-kafka")
    os.makedirs(dk, exist_ok=True)
    rm(os.path.join(dk, ".tributary"))
    open(os.path.join(dk, "pipeline.yaml"), "w").write(
        f"pipeline: bench_pg_cdc_kafka\ncommit_interval: 1s\n"
        f"source: {{ kind: postgres, url: '{URL}', tables: [public.cdc_events], mode: cdc, "
        f"slot: {KSLOT}, publication: tributary_bench_pg_cdc, batch_wait: 50ms }}\n"
        f"sink: {{ kind: kafka, brokers: '{KAFKA}', topic: {ktopic}, key: primary_key }}\n")
    prime(dk, KSLOT)
subprocess.run([f"{PG_BIN}/pg_recvlogical", "-d", URL, "--slot", "bench_floor", "--create-slot", "-P", "pgoutput"],
               check=True, stderr=subprocess.DEVNULL)
psql(f"""do $$ begin
  for b in 0..{CHANGES // 1000 - 1} loop
    insert into cdc_events (id, device, reading)
      select g, 'dev-' || (g % 500), (g % 1000) / 10.0 from generate_series(b * 1000 + 1, b * 1000 + 1000) g;
    commit;
  end loop;
end $$""")
end_lsn = psql("select pg_current_wal_lsn()")
log("CDC floor: pg_recvlogical (pgoutput) → /dev/null")
cdc_floor = timed([f"{PG_BIN}/pg_recvlogical", "-d", URL, "--slot", "bench_floor", "--start", "-f", "/dev/null",
                   "-o", "proto_version=1", "-o", "publication_names=tributary_bench_pg_cdc",
                   "--endpos", end_lsn, "--no-loop"])
psql("select pg_drop_replication_slot('bench_floor')")
log("CDC: tributary → Parquet")
before = written()
t0 = time.perf_counter()
p = start_cdc()
while written() - before < CHANGES:
    assert p.poll() is None, f"the CDC pipeline stopped: {d}/run.log"
    assert time.perf_counter() - t0 < 600, "the CDC pipeline did not drain the backlog in 10 minutes"
    time.sleep(0.05)
cdc = time.perf_counter() - t0
p.send_signal(signal.SIGTERM)
p.wait(60)
rows = 0
ids = 0
for f in parquet_files(os.path.join(d, "out")):
    t = pq.read_table(f)
    rows += t.num_rows
    after = pc.struct_field(t.column("after"), "id")  # CDC values are text for now
    ids += pc.sum(pc.cast(after, pa.int64())).as_py() or 0
assert rows == CHANGES and ids == CHANGES * (CHANGES + 1) // 2, f"CDC output: {rows} changes, sum of ids {ids}"
psql("select pg_drop_replication_slot('tributary_bench_pg_cdc')")

cdc_kafka = None
latency = None
if KAFKA:
    log("CDC: tributary → Kafka (the same backlog)")
    t0 = time.perf_counter()
    p = start_cdc(dk)
    # Drained when the slot is confirmed past the backlog: Tributary confirms a position only
    # after Kafka acknowledged every event before it and the position is committed.
    while not slot_reached(KSLOT, end_lsn):
        assert p.poll() is None, f"the CDC → Kafka pipeline stopped: {dk}/run.log"
        assert time.perf_counter() - t0 < 600, "the CDC → Kafka pipeline did not drain the backlog in 10 minutes"
        time.sleep(0.05)
    cdc_kafka = time.perf_counter() - t0

    def consumer():
        return Consumer({"bootstrap.servers": KAFKA, "group.id": f"bench-{os.getpid()}-{time.time()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10, "enable.partition.eof": False})

    c = consumer()
    c.assign([TopicPartition(ktopic, i, 0) for i in range(3)])
    got, id_sum, keys_ok, idle = 0, 0, True, time.time()
    while got < CHANGES and time.time() - idle < 30:
        for m in c.consume(10000, 1.0):
            if m.error():
                continue
            v = json.loads(m.value())
            got += 1
            id_sum += int(v["after"]["id"])
            keys_ok &= m.key() == v["after"]["id"].encode()
            idle = time.time()
    c.close()
    assert got == CHANGES and id_sum == CHANGES * (CHANGES + 1) // 2 and keys_ok, \
        f"CDC → Kafka output: {got} events, sum of ids {id_sum}, keys by id: {keys_ok}"

    # Latency: LAT_RATE changes/s for LAT_SECONDS while the pipeline runs, in transactions of
    # LAT_RATE/100 rows every 10 ms; each change's latency is the time a consumer receives it
    # minus its transaction's start (`at` defaults to now()), on the one clock of this machine.
    rate, secs = int(os.environ.get("LAT_RATE", "10000")), int(os.environ.get("LAT_SECONDS", "20"))
    per_txn, total = rate // 100, rate * secs
    log(f"CDC → Kafka latency: {rate} changes/s for {secs} s")
    import psycopg2
    import threading
    lat = []
    seen = set()

    def receive():
        c = consumer()
        c.assign([TopicPartition(ktopic, i, -1) for i in range(3)])  # from the end
        deadline = time.time() + secs + 60
        while len(lat) < total and time.time() < deadline:
            for m in c.consume(1000, 0.1):
                if m.error():
                    continue
                now = time.time()
                # librdkafka on tansu hands some messages out again (same partition and
                # offset): the first receipt counts.
                if (m.partition(), m.offset()) in seen:
                    continue
                seen.add((m.partition(), m.offset()))
                v = json.loads(m.value())
                if int(v["after"]["id"]) <= CHANGES:
                    continue  # the backlog's (tansu's end offset can fall inside its last batch)
                at = v["after"]["at"]
                at = at + ":00" if at[-3] in "+-" else at
                lat.append(now - datetime.datetime.fromisoformat(at).timestamp())
        c.close()

    rx = threading.Thread(target=receive)
    rx.start()
    time.sleep(2)  # the consumer's assignment takes effect before the first change
    conn = psycopg2.connect(URL)
    cur = conn.cursor()
    start = time.perf_counter()
    next_id = CHANGES + 1
    for i in range(total // per_txn):
        cur.execute("insert into cdc_events (id, device, reading) select g, 'lat', 0 "
                    "from generate_series(%s, %s) g", (next_id, next_id + per_txn - 1))
        conn.commit()
        next_id += per_txn
        pause = start + (i + 1) * 0.01 - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    offered = total / (time.perf_counter() - start)
    rx.join()
    conn.close()
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    assert len(lat) == total, f"the latency consumer received {len(lat)} of {total} changes"
    lat.sort()
    latency = {"rate": offered, "n": total, "per_txn": per_txn, "p50": lat[total // 2],
               "p99": lat[int(total * 0.99)], "max": lat[-1]}
    psql(f"select pg_drop_replication_slot('{KSLOT}')")

N = ROWS
lines = [
    "## PostgreSQL: table → Parquet and CDC → Parquet and Kafka", "",
    f"Command: `scripts/bench postgres` (PG_ROWS={ROWS} PG_PARALLEL={PARALLEL} CDC_CHANGES={CHANGES}; 2 cores; PostgreSQL 15 from "
    "`scripts/services` on loopback, the same machine). Snapshot: the peers' `orders` table "
    f"(../shared/bench/peers/pg_orders.sql, 12 columns, {size / 1e9:.2f} GB with its index) → zstd Parquet; "
    "the floor is psql `\\copy orders to '/dev/null' (format binary)`. CDC: the backlog of "
    f"{CHANGES:,} inserts in 1000-row transactions, drained by `pg_recvlogical` (pgoutput) to /dev/null (the "
    "floor) and by Tributary's `mode: cdc` into Parquet (Debezium-style envelopes, `commit_interval: 1s`), "
    "timed from its start until every change is in committed files, and into Kafka (tansu from `scripts/services`, "
    "3 partitions, keyed by primary key), timed until the slot is confirmed past the backlog (Tributary confirms "
    "only what Kafka acknowledged and the pipeline committed). Every output checked (count and sums "
    "of ids).", "",
    "| what | tool | rows | seconds | rows/s | Tributary vs it |",
    "|---|---|---|---|---|---|",
    f"| snapshot | `\\copy` binary to /dev/null (floor) | {N:,} | {floor:.2f} | {N / floor:,.0f} | {tr / floor:.2f}× the floor's time |",
]
for name, secs in peers.items():
    lines.append(f"| snapshot | {name} | {N:,} | {secs:.2f} | {N / secs:,.0f} | {tr / secs:.3f}× its time |")
lines += [
    f"| snapshot | tributary | {N:,} | {tr:.2f} | {N / tr:,.0f} | |",
]
if tr_par:
    lines.append(f"| snapshot | tributary, `parallel: {PARALLEL}` | {N:,} | {tr_par:.2f} | {N / tr_par:,.0f} | "
                 f"{tr_par / tr:.2f}× one range's time |")
lines += [
    f"| CDC | pg_recvlogical to /dev/null (floor) | {CHANGES:,} | {cdc_floor:.2f} | {CHANGES / cdc_floor:,.0f} | {CHANGES / cdc / (CHANGES / cdc_floor):.2f}× its rate |",
    f"| CDC → Parquet | tributary | {CHANGES:,} | {cdc:.2f} | {CHANGES / cdc:,.0f} | |",
]
if cdc_kafka:
    lines.append(f"| CDC → Kafka | tributary | {CHANGES:,} | {cdc_kafka:.2f} | {CHANGES / cdc_kafka:,.0f} | "
                 f"{CHANGES / cdc_kafka / (CHANGES / cdc_floor):.2f}× the floor's rate |")
lines += [
    "",
    "Targets (issue 8): snapshot ≤ 2× the floor's time and ≤ 0.1× Sling's; CDC ≥ 100,000 changes/s; "
    "p99 end-to-end latency < 1 s at 10,000 changes/s.",
]
if latency:
    lines += [
        "",
        f"CDC → Kafka latency (tansu on loopback, 3 partitions, `key: primary_key`, `batch_wait: 50ms`): "
        f"{latency['n']:,} inserts offered at {latency['rate']:,.0f} changes/s (transactions of "
        f"{latency['per_txn']} rows every 10 ms) while the "
        "pipeline streams; latency = a confluent-kafka consumer's receive time − the change's transaction "
        f"start (`now()`): **p50 {latency['p50'] * 1000:.0f} ms, p99 {latency['p99'] * 1000:.0f} ms, max "
        f"{latency['max'] * 1000:.0f} ms**.",
    ]
section = "\n".join(lines) + "\n"
write_section(ROOT, "PostgreSQL: table → Parquet", section)
