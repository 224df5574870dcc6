"""How every chaos harness hands over its figures: optionally a JSON file, then JSON or aligned lines on stdout,
and an exit status that says whether every check held."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(fig: dict[str, Any], out: Path | None, as_json: bool, width: int,
         mark: Callable[[str, Any], str] | None = None) -> int:
    """Write ``fig`` to ``out`` (if given), print it (JSON, or one ``key value`` line each, ``mark(key, value)``
    appended), and return 0 if ``fig["ok"]`` else 1."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(fig, indent=2) + "\n")
    if as_json:
        print(json.dumps(fig, indent=2))
    else:
        for k, v in fig.items():
            print(f"{k:{width}} {v}{mark(k, v) if mark is not None else ''}")
    return 0 if fig["ok"] else 1
