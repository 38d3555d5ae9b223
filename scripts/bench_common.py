"""Helpers shared by the `scripts/bench` Python scripts: timing a command, removing and
finding outputs, and writing their section of docs/benchmarks.md."""

import os
import re
import shutil
import subprocess
import time


def timed(cmd, **kw):
    """Wall seconds of `cmd` (which must succeed; its stdout is dropped)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def rm(*paths):
    """Removes files and folders; missing ones are fine."""
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)


def parquet_files(path):
    """`path` if it is a file, else every Parquet file under it, sorted."""
    if os.path.isfile(path):
        return [path]
    out = []
    for d, _, fs in os.walk(path):
        out += [os.path.join(d, f) for f in fs if f.endswith(".parquet")]
    return sorted(out)


def write_section(root, heading, section):
    """Replaces the section whose `## ` heading starts with `heading` (up to the next `## `)
    with `section`, or appends it; then prints it."""
    path = os.path.join(root, "docs/benchmarks.md")
    docs = open(path).read()
    pat = re.compile(r"## " + re.escape(heading) + r"[^\n]*\n.*?(?=\n## |\Z)", re.S)
    body = section.rstrip("\n") + "\n"
    # A function, not a template: the section's backslashes (`\copy`) stay as they are.
    docs = pat.sub(lambda _: body, docs) if pat.search(docs) else docs.rstrip("\n") + "\n\n" + section
    open(path, "w").write(docs)
    print(section)
