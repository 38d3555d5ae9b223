"""`scripts/bench api`: a paginated REST API → Parquet, Tributary beside the peers, one run.

The API: ../shared/bench/peers/gen/gen_api_pages.py's static pages (PAGES × PER_PAGE
"customer" records, each page `{"data": [...], "next": url | null}`) served by nginx on
127.0.0.1:18080 (the peers' nginx.conf.in). Every tool starts at page 1 and follows the `next` links (one
page after the other: no tool can know page n+1 before reading page n) into zstd Parquet.

Peers (../shared/bench/peers/tools): dlt's `rest_api` source with its JSONLinkPaginator (what a
dlt user writes), and Python requests + orjson + pyarrow (a hand-written loader, the fastest
plain Python); the floor is curl fetching every page to /dev/null (no parsing at all).

Every output is checked, not only counted: the rows of Tributary's Parquet, sorted by id, must
equal the Python loader's (every column, the nested `address` and the `labels` list included),
and dlt's must have the right count and sum of ids. A run that does not match does not count.

usage: bench_api.py ROOT BENCH_DIR PEERS RUNS  (PAGES, PER environment; PY is this python)
"""

import json
import os
import statistics
import subprocess
import sys
import time

from bench_common import parquet_files, rm, timed, write_section
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT, B, PEERS, RUNS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
PAGES, PER = int(os.environ.get("PAGES", "1000")), int(os.environ.get("PER", "1000"))
N = PAGES * PER
TRIBUTARY = os.path.join(ROOT, "target/release/tributary")
PY = sys.executable
FIRST = "http://127.0.0.1:18080/page-1.json"
work = os.path.join(B, "api")
os.makedirs(work, exist_ok=True)


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)



def best_of(runs, prepare, cmd, **kw):
    """Median wall time of `runs` runs, `prepare()` before each."""
    walls = []
    for _ in range(runs):
        prepare()
        walls.append(timed(cmd, **kw))
    return statistics.median(walls), walls




def read(path, columns=None):
    import pyarrow as pa
    tables = [pq.read_table(f, columns=columns) for f in parquet_files(path)]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def rows_by_id(table):
    """Rows as canonical JSON text, in id order (nulls explicit; timestamps as text)."""
    table = table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")]))
    cols = ["id", "email", "plan", "created_at", "mrr", "active", "address", "seats", "labels", "note"]
    data = {c: table.column(c).to_pylist() for c in cols}
    out = []
    for i in range(table.num_rows):
        row = {c: data[c][i] for c in cols}
        out.append(json.dumps(row, sort_keys=True, default=str))
    return out


# --- the server --------------------------------------------------------------------------------
api_dir = os.path.join(B, "data", "api")
stamp = os.path.join(api_dir, ".made")
if not os.path.exists(stamp) or open(stamp).read() != f"{PAGES} {PER}":
    log(f"generating {PAGES} pages × {PER} records into {api_dir}")
    rm(api_dir)
    subprocess.run(["python3", os.path.join(PEERS, "gen/gen_api_pages.py"), str(PAGES), str(PER),
                    api_dir, "18080"], check=True)
    open(stamp, "w").write(f"{PAGES} {PER}")
# nginx with the peers' config (../shared/bench/peers/nginx/nginx.conf.in); when run as root,
# its workers run as root too, since the pages live under a home folder others cannot enter.
ng = os.path.join(B, "nginx-api")
for sub in ("logs", "tmp"):
    os.makedirs(os.path.join(ng, sub), exist_ok=True)
conf = open(os.path.join(PEERS, "nginx/nginx.conf.in")).read().replace("@B@/nginx", ng).replace(
    "@B@", B)
if os.geteuid() == 0:
    conf = "user root root;\n" + conf
open(os.path.join(ng, "nginx.conf"), "w").write(conf)
nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", os.path.join(ng, "nginx.conf"), "-p", ng + "/"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.time() + 10
while subprocess.run(["curl", "-sf", "-o", "/dev/null", FIRST]).returncode != 0:
    if time.time() > deadline or nginx.poll() is not None:
        raise SystemExit(f"nginx did not serve {FIRST}: see {ng}/logs/error.log")
    time.sleep(0.1)
try:
    api_bytes = sum(os.path.getsize(os.path.join(api_dir, f)) for f in os.listdir(api_dir)
                    if f.endswith(".json"))
    # Warm nginx and the page cache, as the peers' reference figures were taken.
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:18080/page-[1-{PAGES}].json"],
                   check=True)

    log(f"floor: curl, {PAGES} pages")
    floor, _ = best_of(RUNS, lambda: None,
                       ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:18080/page-[1-{PAGES}].json"])

    log("tributary: next links → Parquet")
    d = os.path.join(work, "tributary")
    os.makedirs(d, exist_ok=True)
    tr_out = os.path.join(d, "out")
    open(os.path.join(d, "api.yaml"), "w").write(f"""pipeline: bench_api
source:
  kind: http
  url: {FIRST}
  stream: customers
  records: /data
  paginator: {{ type: next_url, next_url_path: /next }}
sink: {{ kind: parquet, path: out, compression: zstd }}
""")
    tr, tr_walls = best_of(RUNS, lambda: rm(tr_out, os.path.join(d, ".tributary")),
                           [TRIBUTARY, "run", "api.yaml", "--no-progress", "--log", "warn"], cwd=d)

    log("requests + orjson + pyarrow")
    req_out = os.path.join(work, "requests.parquet")
    req, req_walls = best_of(RUNS, lambda: rm(req_out),
                             [PY, os.path.join(PEERS, "tools/b3_requests_orjson_pyarrow.py"), FIRST, req_out,
                              "zstd"])

    dlt_runs = int(os.environ.get("DLT_RUNS", "1"))
    log(f"dlt rest_api ({dlt_runs} run(s); about a minute each here)")
    dlt_out = os.path.join(work, "dlt")
    dlt, dlt_walls = best_of(dlt_runs, lambda: rm(dlt_out, dlt_out + "_pipelines"),
                             [PY, os.path.join(PEERS, "tools/b3_dlt.py"), "http://127.0.0.1:18080/", dlt_out],
                             env=dict(os.environ, RUNTIME__DLTHUB_TELEMETRY="false",
                                      RUNTIME__LOG_LEVEL="WARNING", DATA_WRITER__COMPRESSION="zstd"))
finally:
    nginx.terminate()
    nginx.wait()

log("checking the outputs")
tr_table = read(tr_out)
assert tr_table is not None and tr_table.num_rows == N, f"tributary wrote {tr_table and tr_table.num_rows} rows, not {N}"
tr_rows = rows_by_id(tr_table)
req_rows = rows_by_id(read(req_out))
assert len(req_rows) == N, "the Python loader's output is short"
diff = [i for i in range(N) if tr_rows[i] != req_rows[i]]
assert not diff, f"{len(diff)} rows differ, first:\n  tributary {tr_rows[diff[0]]}\n  python    {req_rows[diff[0]]}"
dlt_ids = read(os.path.join(dlt_out, "ds", "customers"), columns=["id"])  # its lists go to customers__labels
assert dlt_ids.num_rows == N and pc.sum(dlt_ids.column("id")).as_py() == N * (N + 1) // 2, "dlt's output does not match"

rate = lambda s: N / s
fmt = lambda ws: ", ".join(f"{w:.2f}" for w in ws)
lines = [
    "## REST API: paginated JSON → Parquet", "",
    f"Command: `scripts/bench api` (PAGES={PAGES} PER={PER} RUNS={RUNS}; 2 cores; nginx on loopback serving "
    f"{PAGES} static pages of {PER} records, {api_bytes / 1e6:.0f} MB, from "
    "../shared/bench/peers/gen/gen_api_pages.py). Every tool follows the body's `next` link page after page into "
    "zstd Parquet. Tributary: the `http` source (`paginator: next_url`, `records: /data`) and the Parquet sink, "
    "types inferred (`address` a struct, `labels` a list). Peers: dlt `rest_api` with JSONLinkPaginator, and "
    "requests + orjson + pyarrow (../shared/bench/peers/tools). Floor: curl fetching every page to /dev/null. "
    "Median wall time of the runs shown. Checked: Tributary's rows, sorted by id, equal the Python loader's in "
    "every column; dlt's count and sum of ids match.", "",
    "| tool | records | seconds (runs) | records/s | Tributary is faster by |",
    "|---|---|---|---|---|",
    f"| curl, pages to /dev/null (floor) | | {floor:.2f} | | {floor / tr:.2f}× (of the floor's time) |",
    f"| dlt rest_api | {N:,} | {dlt:.2f} ({fmt(dlt_walls)}) | {rate(dlt):,.0f} | {dlt / tr:.1f}× |",
    f"| requests + orjson + pyarrow | {N:,} | {req:.2f} ({fmt(req_walls)}) | {rate(req):,.0f} | {req / tr:.2f}× |",
    f"| tributary | {N:,} | {tr:.2f} ({fmt(tr_walls)}) | {rate(tr):,.0f} | |",
    "",
    "Targets (issue 5): ≥ 10× dlt, ≥ 3× the Python loader.",
]
section = "\n".join(lines) + "\n"
write_section(ROOT, "REST API: paginated JSON", section)
