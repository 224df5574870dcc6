#!/usr/bin/env python3
"""The whole benchmark suite in one command, with a progress display, JSON results, PNG plots and a summary.

``python bench/run.py [--quick] [--only NAME ...] [--out DIR]``

Runs each benchmark module in its own subprocess (``core``: protocol core vs crypto floor; ``e2e``: two-process
throughput/latency against raw pyzmq, CurveZMQ, NATS core/JetStream and the minimal secure pipelines;
``scale``: branches, grant/revoke, catch-up, anchoring; ``anchor``: ``bench/bench_anchor.py`` when present;
``profile``: pyinstrument over our publish and receive paths, full runs only or when named; ``latency``: the
per-stage latency path, ``bench/latency_path.py``), streams their
progress lines to stderr with the suite's elapsed time and ETA, and writes ``DIR/<name>.json``, ``DIR/<name>.png``
and ``DIR/SUMMARY.md`` (tables, targets met or not, top profile costs where a target is missed).

``--quick`` is a smoke run (a test uses it; no thresholds anywhere).  Exit status: 0 if every module ran, 1 if
one failed (the summary still lists what ran).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MODULES = ("core", "e2e", "scale", "anchor", "profile", "latency")
SCRIPTS = {"core": "bench_core.py", "e2e": "bench_e2e.py", "scale": "bench_scale.py", "anchor": "bench_anchor.py",
           "profile": "profile_ours.py", "latency": "latency_path.py"}
#: Rough durations (s) for the ETA before a module has run: quick, full.
EXPECTED = {"core": (8, 150), "e2e": (30, 900), "scale": (12, 400), "anchor": (10, 120), "profile": (10, 60),
            "latency": (20, 60)}


def _fmt(s: float) -> str:
    return f"{int(s) // 60:d}m{int(s) % 60:02d}s"


def run_module(name: str, args: argparse.Namespace, t_suite: float, eta_after: float) -> tuple[int, float]:
    """Run one module, relaying its stderr progress prefixed with the suite's elapsed time and ETA."""
    cmd = [sys.executable, str(BENCH / SCRIPTS[name]), "--out", str(args.out)]
    if args.quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    t0 = time.monotonic()
    expected = EXPECTED[name][0 if args.quick else 1]
    log = (args.out / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            el = time.monotonic() - t0
            left = max(0.0, expected - el) + eta_after
            sys.stderr.write(f"  {_fmt(time.monotonic() - t_suite)} (suite eta ~{_fmt(left)}) {name}: "
                             f"{line.rstrip()}\n")
            sys.stderr.flush()
            log.write(line)

    th = threading.Thread(target=relay, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # (the modules clean up their workers and nats-server on SIGTERM: exit_on_sigterm)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        sys.stderr.write(f"  {name}: stopped after {args.timeout} s\n")
        rc = rc or 1
    th.join(5)
    log.close()
    return rc, time.monotonic() - t0


# --- summary -----------------------------------------------------------------------------------------------------


def _size(s: int) -> str:
    return f"{s // 1024} KiB" if s >= 1024 else f"{s} B"


def _met(m: bool | None) -> str:
    return {True: "met", False: "**NOT met**", None: "n/a"}[m]


def _load(out: Path, name: str) -> dict[str, Any] | None:
    p = out / f"{name}.json"
    if not p.exists():
        return None
    data: dict[str, Any] = json.loads(p.read_text())
    return data


def summary(out: Path, statuses: dict[str, str]) -> str:
    core, e2e, scale, anchor, prof, lat_path = (_load(out, n) for n in MODULES)
    lines = ["# Benchmark summary", ""]
    machine = next((d["machine"] for d in (e2e, scale, core) if d and "machine" in d), None)
    if machine:
        lines += [f"Machine: {machine.get('cpu')} x{machine.get('cpu_count')}, Python {machine.get('python')}, "
                  f"{machine.get('platform')}; load at start {machine.get('loadavg_at_start')}; commit "
                  f"`{str(machine.get('git_commit'))[:10]}`; {machine.get('timestamp')}.", ""]
    lines += ["Modules: " + ", ".join(f"{k}: {v}" for k, v in statuses.items()), ""]
    # Each module's results may come from a different run (``--only``): say which commit and when, per module.
    runs = [(n, d.get("machine") if isinstance(d.get("machine"), dict) else {})
            for n, d in zip(MODULES, (core, e2e, scale, anchor, prof, lat_path), strict=True) if d]
    if runs:
        lines += ["Results measured at: " + "; ".join(
            f"{n} `{str(m['git_commit'])[:10]}` {m.get('timestamp')}" if m.get("git_commit") else
            f"{n} (commit and time not recorded)" for n, m in runs) + ".", ""]
    targets: list[tuple[str, str, bool | None, str]] = []  # (target, where, met, detail)
    if e2e:
        lines += ["## End to end (two processes, tcp loopback)", "",
                  f"Throughput: median of {e2e.get('repetitions')} interleaved runs; a message counts when the "
                  "receiving application has it. Latency: one run per row, after the throughput runs, at about "
                  "half of each peer's peak, from when the application had each message (its due time, or the "
                  "pacer's wake-up where the timer woke late; a send held up by an earlier one counts its wait), "
                  + ("paced at a constant rate (timerfd)." if e2e.get("pacing", "tick") == "timer" else
                     "paced with asyncio.sleep (1 ms ticks: bursts of up to rate/1000 messages).")
                  + (f" The timerfd could not be made for {fell} of the latency rows: those were paced with "
                     "asyncio.sleep." if (fell := sum(r.get("paced_precisely") is False for r in e2e["latency"]))
                     and e2e.get("pacing") == "timer" else ""), "",
                  "| peer | size | msgs/s | MB/s | delivered | p50 µs | p99 µs | p99.9 µs |",
                  "|---|---|---|---|---|---|---|---|"]
        lat = {(r["peer"], r["size"]): r for r in e2e["latency"]}
        for r in e2e["throughput"]:
            la = lat.get((r["peer"], r["size"]), {})
            runs, reps = len(r.get("runs_msgs_per_s") or ()), e2e.get("repetitions") or 0
            short = f" ({runs} of {reps} runs)" if runs < reps else ""  # (a peer that failed part way)
            lines.append(f"| {r['peer']}{short} | {_size(r['size'])} | {r['msgs_per_s']:,.0f} | {r['mb_per_s']:,.1f} | "
                         f"{r['delivered_fraction']:.3f} | {la.get('p50_us', 0):,.0f} | {la.get('p99_us', 0):,.0f} | "
                         f"{la.get('p99_9_us', 0):,.0f} |")
        rtt = e2e.get("rtt", {})
        if rtt.get("p50_us"):
            lines += ["", f"Raw DEALER/ROUTER asyncio round trip at the run's end: p50 {rtt['p50_us']:.0f} µs, "
                          f"p99 {rtt['p99_us']:.0f} µs back to back."]
            adjacent = [la["rtt_adjacent_p50_us"] for la in e2e["latency"] if la.get("rtt_adjacent_p50_us")]
            if adjacent:
                lines += [f"Each latency row's target bound uses the same round trip measured just before that row "
                          f"(p50 {min(adjacent):.0f}-{max(adjacent):.0f} µs in this run; the targets table gives "
                          "the ratio against the end-of-run one in brackets)."]
            else:
                lines += ["The latency targets' bound uses this p50."]
            paced = e2e.get("rtt_paced", {})
            if paced.get("p50_us"):
                lines += [f"The same, each ping {e2e.get('rtt_paced_gap_ms')} ms after the last reply (both sides "
                          f"idle between, as between paced messages at a low rate): p50 {paced['p50_us']:.0f} µs, "
                          f"p99 {paced['p99_us']:.0f} µs."]
        skipped = [(p, i["reason"]) for p, i in e2e["peers"].items() if not i["available"]]
        for p, why in skipped:
            lines.append(f"- skipped **{p}**: {why}")
        lines += ["", "Peers:", ""] + [f"- `{p}`: {i['description']}" for p, i in e2e["peers"].items()]
        lines.append("")
        for t in e2e["targets"]:
            ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
            if t.get("ratio_end_of_run") is not None and t.get("rtt_us") != (e2e.get("rtt") or {}).get("p50_us"):
                ratio += f" ({t['ratio_end_of_run']:.2f})"
            targets.append((t["target"], f"e2e {_size(t['size'])}", t["met"], ratio))
    if scale:
        lines += ["## Scaling", "", "| branches | author publish msgs/s | B/idle branch (tracemalloc) | "
                  "B/idle branch (RSS) | grant µs | revoke µs |", "|---|---|---|---|---|---|"]
        for r in scale["branches"]:
            lines.append(f"| {r['branches']:,} | {r['publish_msgs_per_s']:,.0f} | "
                         f"{r['tracemalloc_bytes_per_branch']:,.0f} | {r['rss_bytes_per_branch']:,.0f} | "
                         f"{r['grant_us']:,.0f} | {r['revoke_us']:,.0f} |")
        lines.append("")
        if scale["catchup"]:
            lines += ["| missed messages (1 KiB) | catch-up s | msgs/s |", "|---|---|---|"]
            lines += [f"| {r['missed']:,} | {r['seconds']:.2f} | {r['msgs_per_s']:,.0f} |" for r in scale["catchup"]]
            lines.append("")
        if scale["anchoring"]:
            lines += ["| heads per epoch | build_epoch ms | µs/head |", "|---|---|---|"]
            lines += [f"| {r['heads']:,} | {r['seconds'] * 1000:,.1f} | {r['us_per_head']:.1f} |"
                      for r in scale["anchoring"]]
            lines.append("")
        for e in scale.get("errors", []):
            lines.append(f"- error: {e}")
        for t in scale["targets"]:
            targets.append((t["target"], "scale", t["met"], f"{t['ratio']:.2f}"))
    if core:
        lines += ["## Protocol core vs crypto floor (one process, no I/O)", "",
                  "| size | mode | direction | floor msgs/s | core msgs/s | ratio |", "|---|---|---|---|---|---|"]
        for r in core["throughput"]:
            lines.append(f"| {_size(r['size'])} | {r['mode']} | {r['direction']} | {r['floor_msgs_per_s']:,.0f} | "
                         f"{r['core_msgs_per_s']:,.0f} | {r['ratio']:.2f} |")
            if r["direction"] == "pipeline":
                targets.append((f"core {r['mode']} >= {r['target']}x crypto floor", f"core {_size(r['size'])}",
                                r["met"], f"{r['ratio']:.2f}"))
        for who, m in core["memory"].items():
            targets.append((f"core <= {m['target']} B per idle branch ({who})", "core", m["met"],
                            f"{m['bytes_per_branch']:,.0f} B"))
        lines.append("")
    if lat_path:
        rtt = lat_path["rtt"]
        lines += ["## Where the latency goes (bench/latency_path.py, 1 KiB, p50 per stage)", "",
                  f"Raw DEALER/ROUTER round trip p50 {rtt.get('p50_us', 0):.0f} µs; crypto per message "
                  f"{lat_path['crypto_us']['each']:.0f} µs signed-each, {lat_path['crypto_us']['amortized']:.0f} µs "
                  "amortized (both sides).", "",
                  "| mode | msgs/s | p50 µs | " + " | ".join(lat_path["rows"][0]["stages"]) + " |",
                  "|---|---|---|" + "---|" * len(lat_path["rows"][0]["stages"])]
        for r in lat_path["rows"]:
            lines.append(f"| {r['mode']} | {r['rate']:,.0f} | {r['p50_us'] or 0:,.0f} | "
                         + " | ".join(f"{v.get('p50_us', 0):,.0f}" for v in r["stages"].values()) + " |")
        lines += ["", "| mode | msgs/s | call | µs per call | items per call |", "|---|---|---|---|---|"]
        for r in lat_path["rows"]:
            for name, c in r["calls"].items():
                lines.append(f"| {r['mode']} | {r['rate']:,.0f} | {name} | {c['us_per_call']:,.0f} | "
                             f"{c['items_per_call']:.1f} |")
        lines.append("")
    if anchor:
        lines += ["## Anchoring (bench_anchor.py)", "", "```", json.dumps(anchor, indent=1)[:3000], "```", ""]
    lines += ["## Targets", "", "| target | where | ratio / value | met |", "|---|---|---|---|"]
    lines += [f"| {t} | {w} | {d} | {_met(m)} |" for t, w, m, d in targets]
    lines.append("")
    missed = [t for t in targets if t[2] is False]
    if missed and prof:
        lines += ["## Top costs where targets are missed (pyinstrument, self time)", ""]
        for p in prof["profiles"]:
            lines += [f"**{p['peer']}, {p['side']}** ({p['msgs_per_s']:,.0f} msgs/s while profiled):", "",
                      "| share | function | where |", "|---|---|---|"]
            lines += [f"| {t['share'] * 100:.1f}% | `{t['function']}` | {t['where']} |" for t in p["top"][:10]]
            lines.append("")
    elif missed:
        lines += ["Targets were missed; run `python bench/run.py --only profile` for the top costs.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smoke run (no profile unless named)")
    ap.add_argument("--only", nargs="*", choices=MODULES, help="modules to run (default: all available)")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per module before it is killed")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(args.only or [m for m in MODULES if not (m == "profile" and args.quick)])
    statuses: dict[str, str] = {}
    runnable = []
    for n in names:
        if not (BENCH / SCRIPTS[n]).exists():
            statuses[n] = f"skipped ({SCRIPTS[n]} not present on this branch)"
        else:
            runnable.append(n)
    t_suite = time.monotonic()
    failed = False
    for i, n in enumerate(runnable):
        # A module's results from an earlier run are not this run's: set aside (``<name>.previous.json``), so a
        # module that fails leaves no numbers that would pass for current ones in the summary.
        old = args.out / f"{n}.json"
        if old.exists():
            old.replace(args.out / f"{n}.previous.json")
        rest = sum(EXPECTED[m][0 if args.quick else 1] for m in runnable[i + 1:])
        sys.stderr.write(f"[suite {i + 1}/{len(runnable)}] {n} starting at {_fmt(time.monotonic() - t_suite)}\n")
        rc, dt = run_module(n, args, t_suite, rest)
        statuses[n] = f"ok ({dt:.0f} s)" if rc == 0 else f"FAILED (exit {rc}, see {n}.log)"
        failed |= rc != 0
        sys.stderr.write(f"[suite {i + 1}/{len(runnable)}] {n} {statuses[n]}\n")
    (args.out / "SUMMARY.md").write_text(summary(args.out, statuses))
    sys.stderr.write(f"wrote {args.out / 'SUMMARY.md'} in {_fmt(time.monotonic() - t_suite)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
