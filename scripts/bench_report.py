#!/usr/bin/env python3
"""Turns the harness's summary.jsonl into a table with ratios against DuckDB and writes it into
docs/benchmarks.md (replacing that bench's section).

usage: bench_report.py b1|b2 SUMMARY.jsonl CHECK.json DOCS.md COMMAND [PEER_CHECK.json]

The bench runs every tool once per round (--runs 1 each), so summary.jsonl holds one line per
tool, variant and round. Lines of one tool and variant are merged: the wall time is their
median, peak RSS their maximum (and the median is kept for the memory comparison); the ratio
to DuckDB is the median of the ratios within each round, which cancels the host's drift
between rounds.
"""
import json
import re
import statistics
import sys

TITLES = {"b1": "B1: CSV (orders, 12 columns) → one zstd Parquet",
          "b2": "B2: nested NDJSON (events; `amount` widens int → float) → zstd Parquet"}


def main():
    bench, summary, check, docs, command = sys.argv[1:6]
    peer_check = json.load(open(sys.argv[6])) if len(sys.argv) > 6 else None
    lines_in = [json.loads(line) for line in open(summary)]
    lines_in = [r for r in lines_in if r["bench"].lower() == bench]
    rows = merge(lines_in)
    chk = json.load(open(check))
    # The reference: DuckDB as users run it (its default variant when it has several).
    duck = next((r for r in rows if r["tool"] == "duckdb" and not r.get("failed")
                 and r.get("variant", "") in ("", "default_sample")), None)
    rounds = max((len(r["walls"]) for r in rows), default=0)
    lines = [f"## {TITLES[bench]}", "", f"Command: `{command}`: {rounds} rounds, each tool once per round; "
             "wall = median of the rounds, ratio = median of the per-round ratios to DuckDB "
             "(the host drifts by tens of percent between minutes; a round's runs are adjacent); "
             "peak RSS = the largest of the rounds. 2 cores; warm page cache.", "",
             "| tool | variant | rows | wall s (median) | vs DuckDB | peak RSS MB | rows/s | output rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['tool']} {r['version']} | {r['variant']} | {r['rows']:,} | failed | | | | |")
            continue
        ratio = ""
        if duck and r["rows"] == duck["rows"]:
            paired = [w / d for w, d in zip(r["walls"], duck["walls"])]
            ratio = f"{statistics.median(paired):.2f}×"
        out_rows = sum((r.get("verify") or {}).get("rows", {}).values()) if isinstance((r.get("verify") or {}).get("rows"), dict) else ""
        lines.append(f"| {r['tool']} {r['version']} | {r['variant']} | {r['rows']:,} | {r['median_wall_s']:.2f} | {ratio} | "
                     f"{r['peak_maxrss_mb']:.0f} | {r['rows_per_s']:,} | {out_rows:,} |" if out_rows != "" else
                     f"| {r['tool']} {r['version']} | {r['variant']} | {r['rows']:,} | {r['median_wall_s']:.2f} | {ratio} | "
                     f"{r['peak_maxrss_mb']:.0f} | {r['rows_per_s']:,} | |")
    tri = {r["variant"]: r for r in rows if r["tool"] == "tributary" and not r.get("failed")}
    lines.append("")
    lines.append(f"Correctness of Tributary's output (per-column sums, counts and hashes against the input read "
                 f"with declared types by DuckDB): **{'exact' if chk['ok'] else 'MISMATCH'}**, "
                 f"types {'as declared' if chk['types_ok'] else 'DIFFER'}, {chk['rows']:,} rows.")
    if peer_check is not None:
        lines.append(f"The same check of DuckDB's default output: **{'exact' if peer_check['ok'] else 'MISMATCH'}** "
                     f"(amount is {peer_check['schema'].get('amount')}).")
    # The memory check: peak RSS at 1×, 4× and (when run) 16× the quarter's rows, each step 4×.
    steps = [v for v in ("quarter", "full", "x4") if v in tri]
    if len(steps) >= 2:
        med = {v: statistics.median(tri[v]["rss"]) for v in steps}
        parts = [f"{tri[a]['rows']:,} → {tri[b]['rows']:,} rows: {med[a]:.0f} → {med[b]:.0f} MB "
                 f"({med[b] / med[a] - 1:+.0%})" for a, b in zip(steps, steps[1:])]
        spread = ", ".join(f"{v} {min(tri[v]['rss']):.0f}-{max(tri[v]['rss']):.0f}" for v in steps)
        lines.append("Memory vs input size, each step 4× the rows (peak RSS, median of the rounds): "
                     + "; ".join(parts) + f". Range over the rounds (MB): {spread}.")
    section = "\n".join(lines) + "\n"
    print(section)
    try:
        text = open(docs).read()
    except FileNotFoundError:
        text = "# Benchmarks\n\nEach section is written by the command it names; peers run on the same data in the same run.\n\n"
    pattern = re.compile(r"^## " + re.escape(TITLES[bench]) + r".*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    open(docs, "w").write(text)


def merge(lines):
    """One row per tool and variant, in first-seen order, with every round's wall and RSS."""
    merged = {}
    for r in lines:
        key = (r["tool"], r.get("variant", ""), r["rows"])
        m = merged.get(key)
        if m is None:
            m = merged[key] = dict(r, walls=[], rss=[])
        if r.get("failed"):
            m["failed"] = True
            continue
        m["walls"].append(r["median_wall_s"])
        m["rss"].append(r["peak_maxrss_mb"])
    for m in merged.values():
        if m["walls"]:  # a tool that failed in any round stays failed
            m["median_wall_s"] = statistics.median(m["walls"])
            m["peak_maxrss_mb"] = max(m["rss"])
            m["rows_per_s"] = int(m["rows"] / m["median_wall_s"])
    return list(merged.values())


if __name__ == "__main__":
    main()
