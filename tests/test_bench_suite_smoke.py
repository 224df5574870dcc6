"""Smoke test of the benchmark suite's one command (``bench/run.py --quick``): every module runs in its own
processes and writes complete results and a summary.  No timing thresholds: targets are reported by the suite,
never asserted by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

E2E_ROW = ("msgs_per_s", "mb_per_s", "count", "delivered_fraction")
LAT_ROW = ("rate", "p50_us", "p99_us", "p99_9_us", "samples")
SCALE_ROW = ("branches", "publish_msgs_per_s", "tracemalloc_bytes_per_branch", "rss_bytes", "grant_us", "revoke_us")
ALWAYS = ("zmq_raw", "zmq_curve", "min_each", "min_amortized", "ours_each", "ours_amortized")


def test_run_quick_writes_every_result(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[suite 1/" in proc.stderr and "eta" in proc.stderr  # the progress display

    e2e = json.loads((tmp_path / "e2e.json").read_text())
    for key in ("benchmark", "quick", "machine", "method", "peers", "throughput", "latency", "rtt", "crypto_us",
                "targets"):
        assert key in e2e, key
    assert e2e["quick"] is True
    ran = {p for p, i in e2e["peers"].items() if i["available"]}
    for p in ALWAYS:  # NATS may be skipped (no nats-server); these need only pyzmq and the project
        assert p in ran, (p, e2e["peers"][p])
    for p, i in e2e["peers"].items():
        assert i["available"] or i["reason"], p  # a skipped peer says why
    rows = {(r["peer"], r["size"]): r for r in e2e["throughput"]}
    lat = {(r["peer"], r["size"]): r for r in e2e["latency"]}
    for p in ran:
        for size in (64, 1024, 16384):
            for key in E2E_ROW:
                assert rows[p, size][key] > 0, (p, size, key)
            assert rows[p, size]["delivered_fraction"] <= 1.0
            for key in LAT_ROW:
                assert lat[p, size][key] > 0, (p, size, key)
            assert lat[p, size]["p50_us"] <= lat[p, size]["p99_us"] <= lat[p, size]["p99_9_us"]
    assert e2e["rtt"]["p50_us"] > 0 and e2e["rtt_paced"]["p50_us"] > 0
    for t in e2e["targets"]:
        assert t["ratio"] is None or t["ratio"] > 0
        assert t["met"] in (True, False, None)
    assert (tmp_path / "e2e.png").stat().st_size > 0

    scale = json.loads((tmp_path / "scale.json").read_text())
    assert scale["errors"] == []
    assert [r["branches"] for r in scale["branches"]] == [1, 10, 100]
    for r in scale["branches"]:
        for key in SCALE_ROW:
            assert r[key] > 0, key
    assert [r["missed"] for r in scale["catchup"]] == [1000]
    assert scale["catchup"][0]["seconds"] > 0
    assert scale["anchoring"] and all(r["seconds"] > 0 for r in scale["anchoring"])
    assert {t["target"].split()[0] for t in scale["targets"]} >= {"100", "<=", "grant", "revoke"}
    assert (tmp_path / "scale.png").stat().st_size > 0

    assert json.loads((tmp_path / "core.json").read_text())["throughput"]

    lat_path = json.loads((tmp_path / "latency.json").read_text())
    assert [(r["mode"], r["rate"]) for r in lat_path["rows"]] == [
        (m, r) for m in ("ours_each", "ours_amortized") for r in (300.0, 3000.0, 8000.0)] + [
        ("ours_each_per_msg", 1500.0), ("ours_amortized_per_msg", 1500.0)] + [
        (f"{m}_nojournal", r) for m in ("ours_each", "ours_amortized") for r in (3000.0, 8000.0)] + [
        ("ours_each_nojournal_per_msg", 1500.0), ("ours_amortized_nojournal_per_msg", 1500.0)]
    for r in lat_path["rows"]:
        assert r["messages"] == 150  # every frame stamped at every stage, joined one to one
        assert list(r["stages"]) == ["queued", "author", "wire", "to driver", "subscriber", "to app"]
        assert r["p50_us"] > 0
        if r["mode"].endswith("_per_msg"):  # one Author.publish per message
            assert r["calls"]["author core publish"]["items_per_call"] == 1
            assert "author core publish_many" not in r["calls"]
        else:
            assert r["calls"]["author core publish_many"]["items_per_call"] >= 1
    md = (tmp_path / "SUMMARY.md").read_text()
    for heading in ("# Benchmark summary", "## End to end", "## Scaling", "## Where the latency goes", "## Targets"):
        assert heading in md, heading
    assert "ours_amortized" in md and ("met" in md)


def test_e2e_latency_at_a_fixed_rate_without_throughput_runs(tmp_path: Path) -> None:
    """``--reps 0 --latency-rate R`` (for A/B comparisons): latency only, every row at the rate asked for."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--quick", "--only", "min_amortized", "--reps", "0",
           "--latency-rate", "700", "--out", str(tmp_path), "--no-plot"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert e2e["throughput"] == []
    assert sorted(r["size"] for r in e2e["latency"]) == [64, 1024, 16384]
    for r in e2e["latency"]:
        assert r["rate"] == 700 and r["samples"] > 0 and r["p50_us"] > 0
        assert r["paced_precisely"] is sys.platform.startswith("linux")
    assert e2e["pacing"] == "timer" and "timerfd" in e2e["method"]["latency"]
    refused = subprocess.run([*cmd[:-5], "--out", str(tmp_path), "--no-plot"], capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    assert refused.returncode != 0 and "--reps 0 needs --latency-rate" in refused.stderr
    zero = subprocess.run([*cmd[:-4], "0", "--out", str(tmp_path), "--no-plot"], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert zero.returncode != 0 and "--latency-rate must be a positive rate" in zero.stderr


PACER_CHECK = """
import asyncio, json, os, sys, time
from _common import Pacer

async def main():
    out = {}
    for precise in (True, False):
        with Pacer(precise) as pacer:
            fd = pacer._fd
            early = 0
            t0 = time.monotonic_ns() + 2_000_000
            for i in range(300):
                due = t0 + i * 150_000  # 6,667/s: a rate asyncio.sleep can only reach in bursts
                await pacer.until(due)
                early += time.monotonic_ns() < due
            t = time.monotonic_ns()
            await pacer.until(t - 1_000_000_000)  # long past: at once, no hang
            out[str(precise)] = {"precise": pacer.precise, "early": early}
        if fd >= 0:
            try:
                os.fstat(fd)
                out[str(precise)]["fd_left_open"] = True
            except OSError:
                out[str(precise)]["fd_left_open"] = False
    with Pacer() as pacer:  # a wait cancelled, and a new one begun before the first has unwound
        first = asyncio.ensure_future(pacer.until(time.monotonic_ns() + 50_000_000))
        await asyncio.sleep(0.002)
        first.cancel()
        try:
            await asyncio.wait_for(pacer.until(time.monotonic_ns() + 2_000_000), 2)
            out["wait_after_cancel"] = "woke"
        except asyncio.TimeoutError:
            out["wait_after_cancel"] = "hung"
        await asyncio.wait_for(pacer.until(0), 1)  # (an it_value of 0 would disarm the timer: no wake-up)
        await asyncio.wait_for(pacer.until(-5), 1)
    print(json.dumps(out))

asyncio.run(asyncio.wait_for(main(), 30))
"""


def test_pacer_never_wakes_before_a_due_time_and_closes_its_timer(tmp_path: Path) -> None:
    """The latency rows' pacer (``bench/_common.Pacer``): on Linux a timerfd, else asyncio.sleep; either way no
    message may leave before its due time (the rate would be above the one reported), a due time long past (or 0,
    or negative) returns at once, a cancelled wait does not leave the next one without its wake-up, and closing
    it closes the timerfd."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", PACER_CHECK], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["False"] == {"precise": False, "early": 0}
    assert out["True"]["early"] == 0
    assert out["wait_after_cancel"] == "woke"
    if sys.platform.startswith("linux"):
        assert out["True"]["precise"] is True and out["True"]["fd_left_open"] is False


def test_the_summary_says_which_rows_have_fewer_runs_than_the_others(tmp_path: Path) -> None:
    """A peer that failed part way keeps the runs it made: its rows must not pass for medians of every run."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "bench"))
    row = {"size": 64, "msgs_per_s": 1000.0, "mb_per_s": 0.1, "delivered_fraction": 1.0}
    e2e = {"repetitions": 3, "pacing": "timer", "latency": [], "rtt": {}, "peers": {}, "targets": [],
           "throughput": [{**row, "peer": "zmq_raw", "runs_msgs_per_s": [1.0, 2.0, 3.0]},
                          {**row, "peer": "nats_js", "runs_msgs_per_s": [1.0]}]}
    (tmp_path / "e2e.json").write_text(json.dumps(e2e))
    text = run.summary(tmp_path, {"e2e": "ok"})
    assert "| nats_js (1 of 3 runs) | 64 B |" in text
    assert "| zmq_raw | 64 B |" in text
