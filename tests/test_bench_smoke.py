"""Smoke test of bench/bench_core.py: it runs and writes complete results.  No timing thresholds here: the
benchmark reports ratios against a floor measured in the same run; tests only check that it works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROW_NUMBERS = ("floor_msgs_per_s", "core_msgs_per_s", "floor_us_per_msg", "core_us_per_msg", "ratio", "target",
               "messages_per_repetition")
MEMORY_NUMBERS = ("branches", "bytes_total", "bytes_per_branch", "target")


def test_bench_core_quick_writes_complete_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_core.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout
    data = json.loads((tmp_path / "core.json").read_text())
    assert (tmp_path / "core.png").stat().st_size > 0
    for key in ("benchmark", "quick", "repetitions", "machine", "method", "throughput", "memory", "all_met"):
        assert key in data
    assert data["quick"] is True
    for key in ("timestamp", "python", "platform", "cpu", "cpu_count"):
        assert key in data["machine"]
    rows = data["throughput"]
    combos = {(r["size"], r["mode"], r["direction"]) for r in rows}
    assert combos == {(s, m, d) for s in (64, 1024, 16384) for m in ("each", "amortized")
                      for d in ("publish", "receive", "pipeline")}
    for r in rows:
        for key in ROW_NUMBERS:
            assert r[key] > 0, (key, r)
        assert isinstance(r["met"], bool)
        for key in ("floor_runs", "core_runs", "ratios"):
            assert len(r[key]) == data["repetitions"]
            assert all(v > 0 for v in r[key])
    for who in ("author", "subscriber"):
        m = data["memory"][who]
        for key in MEMORY_NUMBERS:
            assert m[key] > 0, (who, key)
        assert isinstance(m["met"], bool)
