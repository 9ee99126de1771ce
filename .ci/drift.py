"""Print the releases a fresh install would take today that differ from constraints.txt.

usage: python .ci/drift.py REPORT.json constraints.txt
REPORT.json is what ``pip install --dry-run --ignore-installed --report`` wrote.
"""

import json
import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(report: str, constraints: str) -> None:
    pinned = {}
    with open(constraints) as fh:
        for line in fh:
            if "==" in line and not line.startswith("#"):
                name, version = line.strip().split("==", 1)
                pinned[canonical(name)] = version
    with open(report) as fh:
        resolved = [item["metadata"] for item in json.load(fh)["install"]]
    newer = [f"  {m['name']} {pinned.get(canonical(m['name']), '(not pinned)')} -> {m['version']}"
             for m in resolved
             if canonical(m["name"]) != "spamtl" and pinned.get(canonical(m["name"])) != m["version"]]
    print("releases newer than constraints.txt:", *(newer or ["  (none)"]), sep="\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
