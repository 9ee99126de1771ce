"""Regenerate the demo corpus in data/demo/ (deterministic from the seed).

    python data/generate.py [--seed 7]

The generator itself is spamtl.demo_corpus (so `spamtl demo` also works from
an installed package); see its docstring for what the corpus contains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spamtl.demo_corpus import write_corpus

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    folder = write_corpus(Path(__file__).resolve().parent / "demo", seed=args.seed)
    print(f"wrote {folder}")
