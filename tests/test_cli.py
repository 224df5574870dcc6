"""The CLI entry points, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_and_all_checks_pass() -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--in-process", "--json", "--events", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True
    names = {c["check"] for c in out["checks"]}
    assert {"replayed payment event rejected", "unlisted DID refused"} <= names
    assert all(c["ok"] for c in out["checks"])


def test_help_for_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "demo" in r.stdout
