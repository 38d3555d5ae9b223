#!/usr/bin/env python3
"""Writes the example's Parquet exports (checked in next to this script) with pyarrow, the way
a warehouse export job would. Run it only to change them:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install pyarrow
    /tmp/v/bin/python examples/file_ingestion/parquet/data/make_exports.py
"""
import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exports")
COUNTRIES = ["DE", "FR", "NL", None]


def day(n):
    return dt.datetime(2024, 5, 1) + dt.timedelta(hours=7 * n)


def export(name, ids, with_discount):
    cols = {
        "order_id": pa.array(ids, pa.int64()),
        "customer": pa.array([f"c{i % 97:03d}" for i in ids]),
        "country": pa.array([COUNTRIES[i % 4] for i in ids]),
        # int32 in the first export; the second one exports it as int64: a type that widens.
        "quantity": pa.array([1 + i % 5 for i in ids], pa.int32() if not with_discount else pa.int64()),
        "amount": pa.array([round(9.99 * (1 + i % 7), 2) for i in ids]),
        "ordered_at": pa.array([day(i) for i in ids], pa.timestamp("us")),
        "internal_note": pa.array(["do not export" for _ in ids]),
    }
    if with_discount:
        cols["discount"] = pa.array([0.1 if i % 3 == 0 else None for i in ids])
    table = pa.table(cols)
    # Small row groups, so the source visibly streams group by group.
    pq.write_table(table, os.path.join(HERE, name), row_group_size=25, compression="snappy")


os.makedirs(HERE, exist_ok=True)
export("orders-2024-05-01.parquet", list(range(1, 61)), False)
export("orders-2024-05-02.parquet", list(range(61, 101)), True)
