"""Write the seed corpora: ``fuzz/corpus/<target>/<hash>``, valid inputs of every kind the cores produce.

    PYTHONPATH=. python fuzz/make_corpus.py

Each run replaces the directories: sealed boxes (SUBSCRIBE and GRANT bodies) are freshly randomised, so the
file names of those seeds change from run to run while what they exercise does not.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_corpus(root: Path = HERE / "corpus") -> dict[str, int]:
    """Write every target's seeds under ``root``; return how many files each target has."""
    from fuzz.targets import TARGETS

    counts = {}
    for name, target in TARGETS.items():
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        seeds = target.seeds()
        for data in seeds:
            (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)  # noqa: S324 - a file name, not security
        counts[name] = len(seeds)
    return counts


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    for name, n in write_corpus().items():
        print(f"{name:18} {n} seeds")
