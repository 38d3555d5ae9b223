#!/usr/bin/env python3
"""Correctness check for benchmark output: Tributary's Parquet against the input, value by value
in aggregate (row count, per-column sums / lengths / null counts), with DuckDB reading the input
with declared, correct types (never inferred by sampling).

usage: bench_check.py b1 INPUT.csv OUTPUT_DIR          → prints JSON {"ok": bool, "input": ..., "output": ..., "schema": ...}
       bench_check.py b2 INPUT.ndjson OUTPUT_DIR|FILE   (nested events; amount must be float64, exact)
"""
import os
import json
import sys

import duckdb

B1_TYPES = {
    "order_id": "BIGINT", "created_at": "TIMESTAMP", "shipped_at": "TIMESTAMP",
    "customer_id": "BIGINT", "country": "VARCHAR", "status": "VARCHAR", "price": "DOUBLE",
    "quantity": "BIGINT", "discount": "DOUBLE", "is_gift": "BOOLEAN", "comment": "VARCHAR",
    "weight_kg": "DOUBLE",
}
B1_AGG = """count(*), sum(order_id), sum(customer_id), sum(quantity),
  sum(epoch_us(created_at)), sum(epoch_us(shipped_at)), count(shipped_at),
  sum(price), sum(discount), count(discount), sum(is_gift::INT), count(comment),
  sum(length(comment)), sum(hash(comment)) , sum(length(country)), sum(hash(status)), sum(weight_kg)"""


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


B2_COLUMNS = """{'event_id': 'BIGINT', 'ts': 'VARCHAR', 'type': 'VARCHAR',
  'user': 'STRUCT(id BIGINT, name VARCHAR, geo STRUCT(lat DOUBLE, lon DOUBLE))',
  'tags': 'VARCHAR[]', 'amount': 'DOUBLE', 'ok': 'BOOLEAN', 'session': 'VARCHAR',
  'device': 'STRUCT(os VARCHAR, version VARCHAR)',
  'props': 'STRUCT(ref VARCHAR, score BIGINT, campaign VARCHAR)'}"""
# Exact where it can be: amounts in cents as integers, floats of the geo as their text.
B2_AGG = """count(*), sum(event_id), sum(hash(ts)), sum(hash(type)), sum("user".id),
  sum(hash("user".name)), sum(hash("user".geo.lat::VARCHAR)), sum(hash("user".geo.lon::VARCHAR)),
  sum(len(tags)), sum(hash(tags::VARCHAR)), sum(round(amount * 100)::HUGEINT),
  count(*) FILTER (WHERE amount <> round(amount)), sum(ok::INT), count(session),
  sum(hash(session)), count(device), sum(hash(device.os)), sum(hash(device.version)),
  count(props), sum(props.score), sum(hash(props.ref)), sum(hash(props.campaign))"""


def check_b2(src, out):
    pattern = f"{out}/**/*.parquet" if os.path.isdir(out) else out
    want = duckdb.sql(f"SELECT {B2_AGG} FROM read_json('{src}', format='newline_delimited', "
                      f"columns={B2_COLUMNS})").fetchall()[0]
    got = duckdb.sql(f"SELECT {B2_AGG} FROM read_parquet('{pattern}')").fetchall()[0]
    schema = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{pattern}')").fetchall()}
    types_ok = schema.get("amount") == "DOUBLE" and schema.get("event_id") == "BIGINT"
    ok = types_ok and all(a == b for a, b in zip(want, got))
    print(json.dumps({"ok": ok, "types_ok": types_ok, "rows": got[0], "input": [str(v) for v in want],
                      "output": [str(v) for v in got], "schema": schema}))
    sys.exit(0 if ok else 1)


def main():
    kind, src, out = sys.argv[1:4]
    if kind == "b2":
        return check_b2(src, out)
    assert kind == "b1", kind
    cols = "{" + ", ".join(f"'{k}': '{v}'" for k, v in B1_TYPES.items()) + "}"
    want = duckdb.sql(f"SELECT {B1_AGG} FROM read_csv('{src}', header=true, columns={cols})").fetchall()[0]
    got = duckdb.sql(f"SELECT {B1_AGG} FROM read_parquet('{out}/**/*.parquet')").fetchall()[0]
    schema = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{out}/**/*.parquet')").fetchall()}
    types_ok = all(schema.get(k, "").startswith(v) for k, v in B1_TYPES.items())
    ok = types_ok and all(close(a, b) for a, b in zip(want, got))
    print(json.dumps({"ok": ok, "types_ok": types_ok, "rows": got[0], "input": [str(v) for v in want],
                      "output": [str(v) for v in got], "schema": schema}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
