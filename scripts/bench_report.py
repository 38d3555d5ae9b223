#!/usr/bin/env python3
"""Turns the harness's summary.jsonl into a table with ratios against DuckDB and writes it into
docs/benchmarks.md (replacing that bench's section).

usage: bench_report.py b1|b2 SUMMARY.jsonl CHECK.json DOCS.md COMMAND [PEER_CHECK.json]
"""
import json
import re
import sys

TITLES = {"b1": "B1: CSV (orders, 12 columns) → one zstd Parquet",
          "b2": "B2: nested NDJSON (events; `amount` widens int → float) → zstd Parquet"}


def main():
    bench, summary, check, docs, command = sys.argv[1:6]
    peer_check = json.load(open(sys.argv[6])) if len(sys.argv) > 6 else None
    rows = [json.loads(line) for line in open(summary)]
    rows = [r for r in rows if r["bench"].lower() == bench]
    chk = json.load(open(check))
    # The reference: DuckDB as users run it (its default variant when it has several).
    duck = next((r for r in rows if r["tool"] == "duckdb" and not r.get("failed")
                 and r.get("variant", "") in ("", "default_sample")), None)
    lines = [f"## {TITLES[bench]}", "", f"Command: `{command}` (median of the runs; 2 cores; warm page cache). "
             "Run-to-run spread on this machine is about ±5 %: compare ratios within one run.", "",
             "| tool | variant | rows | wall s (median) | vs DuckDB | peak RSS MB | rows/s | output rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['tool']} {r['version']} | {r['variant']} | {r['rows']:,} | failed | | | | |")
            continue
        ratio = f"{r['median_wall_s'] / duck['median_wall_s']:.2f}×" if duck and r["rows"] == duck["rows"] else ""
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
    if "full" in tri and "quarter" in tri:
        growth = tri["full"]["peak_maxrss_mb"] / tri["quarter"]["peak_maxrss_mb"] - 1
        lines.append(f"Memory vs input size: 4× the rows → peak RSS {tri['quarter']['peak_maxrss_mb']:.0f} → "
                     f"{tri['full']['peak_maxrss_mb']:.0f} MB ({growth:+.0%}).")
    section = "\n".join(lines) + "\n"
    print(section)
    try:
        text = open(docs).read()
    except FileNotFoundError:
        text = "# Benchmarks\n\nEach section is written by the command it names; peers run on the same data in the same run.\n\n"
    pattern = re.compile(r"^## " + re.escape(TITLES[bench]) + r".*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    open(docs, "w").write(text)


if __name__ == "__main__":
    main()
