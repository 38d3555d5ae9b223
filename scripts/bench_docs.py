"""One section of docs/benchmarks.md, replaced or appended by the `scripts/bench` scripts."""

import os
import re


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
