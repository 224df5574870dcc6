"""Run the coverage-guided fuzz harnesses of :mod:`fuzz.targets` with atheris (libFuzzer).

    PYTHONPATH=. python fuzz/run.py --target decode_frame --runs 100000
    PYTHONPATH=. python fuzz/run.py --all --runs 150000          # one target after the other, one process at a time
    PYTHONPATH=. python fuzz/run.py --all --runs 2000 --no-save  # a quick look, results.json untouched
    PYTHONPATH=. python fuzz/run.py --all --runs 2000 --jobs 2   # two targets at a time (one per core)

Each target runs in its own child process (libFuzzer exits the process when it is done), instrumented for
coverage over ``streams`` (and the pure-Python ``base58`` it parses DIDs with).  The child starts from the
committed seeds in ``fuzz/corpus/<target>/`` plus whatever earlier runs found in ``fuzz/work/<target>/``
(not committed), writes new interesting inputs to the latter, and saves any crashing, failing or hanging
input (libFuzzer ``-timeout``) as ``fuzz/artifacts/<target>-crash-...``.

For each target it prints inputs/s, total inputs, libFuzzer's coverage (``cov``: instrumented edges,
``ft``: features) and the corpus size, and merges the figures into ``fuzz/results.json`` with the total
over all targets.  The exit status is 1 if any target found a crash.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
#: Longest input libFuzzer generates, bytes.  Frames and secrets seen in the scenario are under 2 KiB; a
#: presentation with two credentials is about 3 KiB.
MAX_LEN = {"presentation": 8192}
DEFAULT_MAX_LEN = 4096
#: Seconds one input may take before libFuzzer calls it a hang.
TIMEOUT_S = 10


def _worker(name: str, libfuzzer_args: list[str]) -> None:
    """Child process: instrument, then hand control to libFuzzer (never returns)."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["streams", "base58"]):
        from fuzz.targets import TARGETS

    target = TARGETS[name]
    for seed in target.seeds():  # build the scenario now, and fail fast if a seed itself breaks the invariant
        target.check(seed)
    atheris.Setup([sys.argv[0], *libfuzzer_args], target.check)
    atheris.Fuzz()


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run_target(name: str, runs: int, workdir: Path = HERE, seed_timeout: float = 3600) -> dict[str, Any]:
    """Fuzz one target for ``runs`` inputs in a child process; return its figures.  New corpus units and
    crash artifacts go under ``workdir`` (``work/<target>``, ``artifacts/``)."""
    seeds = HERE / "corpus" / name
    work = workdir / "work" / name
    artifacts = workdir / "artifacts"
    for d in (seeds, work, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    args = [
        f"-runs={runs}",
        f"-timeout={TIMEOUT_S}",
        f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{name}-",
        str(work),
        str(seeds),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--", *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=seed_timeout, check=False)
    elapsed = time.monotonic() - start
    stats: dict[str, int] = {}
    cov = ft = corp = 0
    for line in proc.stdout.splitlines():
        if m := _STAT.match(line):
            stats[m.group(1)] = int(m.group(2))
        elif m := _PROGRESS.match(line):
            cov, ft, corp = int(m.group(3)), int(m.group(4)), int(m.group(5))
    crashed = proc.returncode != 0
    if crashed:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        print(f"--- {name}: libFuzzer exited with {proc.returncode}\n{tail}", file=sys.stderr)
    executed = stats.get("number_of_executed_units", 0)
    return {
        "target": name,
        "runs_requested": runs,
        "inputs": executed,
        "seconds": round(elapsed, 1),
        "inputs_per_s": stats.get("average_exec_per_sec", round(executed / elapsed) if elapsed else 0),
        "coverage_edges": cov,
        "features": ft,
        "corpus_units": corp,
        "new_units": stats.get("new_units_added", 0),
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "crashed": crashed,
        "exit_code": proc.returncode,
    }


def _atheris_version() -> str:
    try:
        from importlib.metadata import version

        return version("atheris")
    except Exception:
        return "missing"


def save(results: list[dict[str, Any]], path: Path = RESULTS) -> dict[str, Any]:
    """Merge ``results`` into ``path`` (one entry per target, the latest run) and recompute the totals."""
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    targets = {t["target"]: t for t in doc.get("targets", [])}
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for r in results:
        targets[r["target"]] = {**r, "finished": stamp}
    ordered = sorted(targets.values(), key=lambda t: t["target"])
    doc = {
        "tool": f"atheris {_atheris_version()} (libFuzzer), coverage over streams/ and base58",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "invariants": "see fuzz/targets.py",
        "total_inputs": sum(t["inputs"] for t in ordered),
        "total_seconds": round(sum(t["seconds"] for t in ordered), 1),
        "crashes": sum(1 for t in ordered if t["crashed"]),
        "targets": ordered,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[3:])
        return 0  # pragma: no cover - atheris.Fuzz exits the process
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", action="append", help="a target name (repeatable)")
    which.add_argument("--all", action="store_true", help="every target, one after the other (see --jobs)")
    which.add_argument("--list", action="store_true", help="list the targets")
    p.add_argument("--runs", type=int, default=100_000, help="inputs per target (default 100000)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="targets fuzzed at once, each in its own process (default 1; at most one per core makes "
                        "sense: libFuzzer is single-threaded)")
    p.add_argument("--no-save", action="store_true", help="do not update the results file")
    p.add_argument("--results", type=Path, default=RESULTS, help="results file (default fuzz/results.json)")
    p.add_argument("--workdir", type=Path, default=HERE, help="where work/ and artifacts/ go (default fuzz/)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fuzz.targets import TARGETS

    if a.list:
        for t in TARGETS.values():
            print(f"{t.name:18} {t.doc}")
        return 0
    if _atheris_version() == "missing":
        print("atheris is not installed: pip install atheris (tests/test_fuzz_smoke.py runs without it)",
              file=sys.stderr)
        return 2
    names = list(TARGETS) if a.all else a.target
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {unknown}; --list shows them")
    print(f"{'target':18} {'inputs':>10} {'s':>7} {'inputs/s':>9} {'cov':>6} {'ft':>6} {'corpus':>7}  result")
    if a.jobs < 1:
        p.error("--jobs must be at least 1")

    def report(r: dict[str, Any]) -> None:
        print(f"{r['target']:18} {r['inputs']:>10} {r['seconds']:>7} {r['inputs_per_s']:>9} {r['coverage_edges']:>6} "
              f"{r['features']:>6} {r['corpus_units']:>7}  {'CRASH' if r['crashed'] else 'ok'}", flush=True)
        if not a.no_save:
            save([r], a.results)  # (from this thread only: the workers below just run the child processes)

    results = []
    # Each target is a child process of its own (run_target waits for it): threads only wait, and the lines and
    # the results file are written here, as each target finishes.
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = [pool.submit(run_target, name, a.runs, a.workdir) for name in names]
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            report(r)
    total = sum(r["inputs"] for r in results)
    secs = sum(r["seconds"] for r in results)
    print(f"{'total':18} {total:>10} {round(secs, 1):>7} {round(total / secs) if secs else 0:>9}")
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
