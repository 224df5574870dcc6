#!/usr/bin/env python3
"""Scaling curves of ``streams``: what grows with the channel, and what must not.

* **Branches.**  An :class:`streams.api.Author` (real SQLite store, WAL ``synchronous=NORMAL``, its timer and
  receive tasks running) with N per-subscriber branches (1, 10, 100, 1k, 10k; quick: up to 100), one active and
  the rest idle.  Per N, in a fresh process: author publish throughput on the active branch (msgs/s, 1 KiB,
  frames handed to a transport that discards them: the author's own cost), RSS growth per idle branch (measured
  without tracemalloc, whose own traces would count), tracemalloc growth per idle branch (over a second author),
  and the cost of a grant (``open_branch`` for a new DID) and of a revoke at that channel size (median of
  ``--ops`` operations).  Targets: 10k-branch throughput >= 0.9x 1-branch; <= 2 KiB per idle branch; grant and
  revoke flat within 1.5x from 10 to 10k branches.
* **Catch-up.**  Two processes over the real ZeroMQ endpoints: a subscriber subscribes, goes offline, the author
  publishes M messages (1k, 10k, 100k; quick: 1k), the subscriber reopens its store; time from ``Subscriber.open``
  to the M-th message handed to the application.
* **Anchoring.**  :func:`streams.anchor.build_epoch` over 10k and 100k chain heads (quick: 1k): blinded leaves,
  the RFC 9162 tree, the signed checkpoint and every inclusion proof.

Run: ``python bench/bench_scale.py [--quick] [--out DIR]``.  Writes ``scale.json`` and ``scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Worker, WorkerError, emit, exit_on_sigterm, machine_info, rss_bytes

PW = "bench passphrase"
NAME = "bench-scale"
AUTHOR_SEED = b"\x01" * 32
SUB_SEED = b"\x02" * 32
MEMORY_TARGET = 2048
FLAT_TARGET = 1.5
THROUGHPUT_TARGET = 0.9


def _store_options(durable: bool = False) -> Any:
    from streams.api import StoreOptions

    return StoreOptions(durable=durable, opslimit=1, memlimit=8192)


def _dids(n: int, offset: int) -> list[str]:
    import nacl.bindings as nb

    from streams.identity import PublicIdentity

    out = []
    for i in range(n):
        pk, _ = nb.crypto_sign_seed_keypair((offset + i).to_bytes(32, "big"))
        out.append(PublicIdentity.from_sign_public(bytes(pk)).did)
    return out


class _Discard:
    """A transport that drops every frame: the author's cost alone, without a receiver in the measurement."""

    def __init__(self) -> None:
        self.sent = 0
        self._never: asyncio.Event = asyncio.Event()

    async def send(self, out: Any) -> None:
        self.sent += 1

    async def recv(self) -> list[tuple[bytes, object]]:
        await self._never.wait()
        return []

    async def close(self) -> None:
        self._never.set()


# --- branches: one process per N ---------------------------------------------------------------------------------


async def branches_worker(n: int, msgs: int, ops: int, tmp: Path) -> dict[str, Any]:
    from streams.api import Author
    from streams.identity import Identity
    from streams.policy import AllowList

    dids = _dids(n + 2 * ops, 10_000)
    author = await Author.create(tmp / "author.db", Identity.from_seed(AUTHOR_SEED), NAME, PW, _Discard(),
                                 AllowList.of([]), store_options=_store_options())
    payload = os.urandom(1024)
    # RSS without tracemalloc: its own per-allocation traces would be counted (3.4 KiB against 1.9 KiB per idle
    # branch at 10k).  The tracemalloc pass comes last, over a second author of its own.
    gc.collect()
    rss0 = rss_bytes()
    branches = [await author.open_branch(d) for d in dids[:n]]
    gc.collect()
    rss1 = rss_bytes()
    active = branches[0]
    for _ in range(200):  # warm-up
        await author.publish(active, payload)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(msgs):
            await author.publish(active, payload)
        runs.append(msgs / (time.perf_counter() - t0))
        await asyncio.sleep(0.6)  # let the timer's heartbeat sweep (HEAD notices over every branch) run between runs
    grant, revoke = [], []
    for d in dids[n:n + ops]:
        t0 = time.perf_counter()
        b = await author.open_branch(d)
        grant.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await author.revoke(b)
        revoke.append(time.perf_counter() - t0)
    await author.close()
    traced = await Author.create(tmp / "traced.db", Identity.from_seed(AUTHOR_SEED), NAME, PW, _Discard(),
                                 AllowList.of([]), store_options=_store_options())
    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    kept = [await traced.open_branch(d) for d in dids[:n]]
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await traced.close()
    del kept
    return {"branches": n, "publish_msgs_per_s": statistics.median(runs), "runs_msgs_per_s": runs,
            "tracemalloc_bytes_per_branch": (m1 - m0) / n, "rss_bytes_per_branch": (rss1 - rss0) / n,
            "rss_bytes": rss1, "grant_us": statistics.median(grant) * 1e6, "revoke_us": statistics.median(revoke) * 1e6,
            "grant_p90_us": sorted(grant)[int(0.9 * len(grant))] * 1e6,
            "revoke_p90_us": sorted(revoke)[int(0.9 * len(revoke))] * 1e6}


# --- catch-up: author process + subscriber process over the real endpoints ---------------------------------------


async def catchup_author(tmp: Path) -> None:
    from _common import emit as _emit

    from brokerless import AuthorEndpoint
    from streams.api import Author
    from streams.identity import Identity
    from streams.policy import AllowList

    sub_did = Identity.from_seed(SUB_SEED).did
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp / "author.db", Identity.from_seed(AUTHOR_SEED), NAME, PW, ep,
                                 AllowList.of([sub_did]), store_options=_store_options())
    _emit({"ready": ep.addresses[0]})
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "stop":
                return
            if cmd["cmd"] == "fill":
                branch = author.branch_of(sub_did)
                if branch is None:
                    _emit({"error": "no branch for the subscriber"})
                    continue
                payload = os.urandom(cmd["size"])
                t0 = time.perf_counter()
                # Filling the log is set-up, not the measurement: the core publishes, one commit per 256.
                for i in range(cmd["count"]):
                    author._core.publish(branch, payload, author._clock())
                    if i % 256 == 255:
                        await author._flush()
                await author._flush()
                _emit({"filled": cmd["count"], "seconds": time.perf_counter() - t0})
    finally:
        await author.close()


async def catchup_subscriber(addr: str, tmp: Path, mode: str, expect: int) -> dict[str, Any]:
    from brokerless import SubscriberEndpoint
    from streams.api import Subscriber
    from streams.core import channel_id
    from streams.identity import Identity

    path = tmp / "sub.db"
    if mode == "subscribe":
        author = Identity.from_seed(AUTHOR_SEED)
        sub = await Subscriber.create(path, Identity.from_seed(SUB_SEED), author.did,
                                      channel_id(author.sign_public, NAME), PW, SubscriberEndpoint(addr),
                                      store_options=_store_options())
        branch = await sub.subscribe(timeout=30)
        await sub.close()
        return {"branch": branch.hex()}
    t0 = time.perf_counter()
    sub = await Subscriber.open(path, PW, SubscriberEndpoint(addr), store_options=_store_options())
    n = 0
    try:
        while n < expect:
            await sub.next_message(timeout=60)
            n += 1
        dt = time.perf_counter() - t0
    finally:
        await sub.close()
    return {"messages": n, "seconds": dt, "msgs_per_s": n / dt}


def run_catchup(m: int, size: int, tmp: Path) -> dict[str, Any]:
    d = tmp / f"catchup-{m}"
    d.mkdir()
    me = str(Path(__file__).resolve())
    author = Worker([me, "worker", "catchup-author", "--tmp", str(d)], f"catchup-author-{m}")
    try:
        addr = author.read(60)["ready"]

        def sub(mode: str, expect: int = 0) -> dict[str, Any]:
            w = Worker([me, "worker", "catchup-sub", "--tmp", str(d), "--addr", addr, "--mode", mode,
                        "--expect", str(expect)], f"catchup-sub-{mode}")
            try:
                return w.read(600)
            finally:
                w.kill()

        sub("subscribe")
        filled = author.call({"cmd": "fill", "count": m, "size": size}, 900)
        got = sub("catchup", m)
        return {"missed": m, "size": size, "seconds": got["seconds"], "msgs_per_s": got["msgs_per_s"],
                "fill_seconds": filled["seconds"]}
    finally:
        author.kill()


# --- anchoring -----------------------------------------------------------------------------------------------------


def run_anchor(n: int) -> dict[str, Any]:
    from streams.anchor import ChainHead, build_epoch
    from streams.identity import Identity

    ident = Identity.from_seed(AUTHOR_SEED)
    heads = [ChainHead(os.urandom(16), 0, 1 + i, os.urandom(32), os.urandom(32)) for i in range(n)]
    channel = os.urandom(32)
    times = []
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        ep = build_epoch(channel, heads, None, 1_700_000_000_000, ident.sign)
        times.append(time.perf_counter() - t0)
    del ep
    return {"heads": n, "seconds": statistics.median(times), "runs_seconds": times,
            "us_per_head": statistics.median(times) / n * 1e6}


# --- orchestration ---------------------------------------------------------------------------------------------


def _progress(k: int, total: int, t0: float, what: str) -> None:
    el = time.monotonic() - t0
    print(f"[scale {k}/{total}] {what}  elapsed {el:5.0f}s  eta {el / k * (total - k):4.0f}s", file=sys.stderr,
          flush=True)


def orchestrate(quick: bool, ops: int | None) -> dict[str, Any]:
    counts = [1, 10, 100] if quick else [1, 10, 100, 1000, 10_000]
    missed = [1000] if quick else [1000, 10_000, 100_000]
    anchor_sizes = [1000] if quick else [10_000, 100_000]
    msgs = 300 if quick else 3000
    nops = ops or (10 if quick else 50)
    total = len(counts) + len(missed) + len(anchor_sizes)
    k, t0 = 0, time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    me = str(Path(__file__).resolve())
    branch_rows: list[dict[str, Any]] = []
    catchup_rows: list[dict[str, Any]] = []
    anchor_rows: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for n in counts:
            d = tmp / f"branches-{n}"
            d.mkdir()
            w = Worker([me, "worker", "branches", "--n", str(n), "--msgs", str(msgs), "--ops", str(nops),
                        "--tmp", str(d)], f"branches-{n}")
            try:
                branch_rows.append(w.read(900))
            except WorkerError as exc:
                errors.append(str(exc)[:400])
            finally:
                w.kill()
            k += 1
            _progress(k, total, t0, f"{n} branches")
        for m in missed:
            try:
                catchup_rows.append(run_catchup(m, 1024, tmp))
            except WorkerError as exc:
                errors.append(str(exc)[:400])
            k += 1
            _progress(k, total, t0, f"catch-up of {m} messages")
        for n in anchor_sizes:
            anchor_rows.append(run_anchor(n))
            k += 1
            _progress(k, total, t0, f"anchoring epoch over {n} heads")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"branches": branch_rows, "catchup": catchup_rows, "anchoring": anchor_rows, "errors": errors,
            "targets": targets(branch_rows), "ops_per_point": nops, "publish_msgs_per_run": msgs}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["branches"]: r for r in rows}
    top = max(by) if by else None
    out: list[dict[str, Any]] = []
    if 1 in by and top:
        ratio = by[top]["publish_msgs_per_s"] / by[1]["publish_msgs_per_s"]
        out.append({"target": f"{top} branches throughput >= {THROUGHPUT_TARGET}x 1 branch", "ratio": ratio,
                    "want": THROUGHPUT_TARGET, "met": ratio >= THROUGHPUT_TARGET})
    if top and top > 1:
        per = by[top]["tracemalloc_bytes_per_branch"]
        out.append({"target": f"<= {MEMORY_TARGET} B per idle branch (tracemalloc, {top} branches)", "value": per,
                    "want": MEMORY_TARGET, "met": per <= MEMORY_TARGET, "ratio": per / MEMORY_TARGET})
        rss = by[top]["rss_bytes_per_branch"]
        out.append({"target": f"<= {MEMORY_TARGET} B per idle branch (RSS, {top} branches)", "value": rss,
                    "want": MEMORY_TARGET, "met": rss <= MEMORY_TARGET, "ratio": rss / MEMORY_TARGET})
    if 10 in by and top and top > 10:
        for op in ("grant", "revoke"):
            ratio = by[top][f"{op}_us"] / by[10][f"{op}_us"]
            out.append({"target": f"{op} cost flat within {FLAT_TARGET}x from 10 to {top} branches",
                        "ratio": ratio, "want": FLAT_TARGET, "met": ratio <= FLAT_TARGET})
    return out


def print_tables(res: dict[str, Any]) -> None:
    print(f"{'branches':>8} {'publish msg/s':>13} {'B/branch tm':>11} {'B/branch RSS':>12} {'grant us':>9} "
          f"{'revoke us':>9}")
    for r in res["branches"]:
        print(f"{r['branches']:>8} {r['publish_msgs_per_s']:>13,.0f} {r['tracemalloc_bytes_per_branch']:>11,.0f} "
              f"{r['rss_bytes_per_branch']:>12,.0f} {r['grant_us']:>9,.0f} {r['revoke_us']:>9,.0f}")
    print()
    for r in res["catchup"]:
        print(f"catch-up of {r['missed']:>7,} missed messages: {r['seconds']:7.2f} s ({r['msgs_per_s']:,.0f} msg/s)")
    for r in res["anchoring"]:
        print(f"anchoring epoch over {r['heads']:>7,} heads: {r['seconds'] * 1000:8.1f} ms "
              f"({r['us_per_head']:.1f} us/head)")
    for e in res["errors"]:
        print("error:", e)
    print()
    for t in res["targets"]:
        print(f"{t['target']:<60} ratio {t['ratio']:6.2f}  {'met' if t['met'] else 'NOT met'}")


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    rows = res["branches"]
    xs = [r["branches"] for r in rows]
    ax = axes[0]
    ax.plot(xs, [r["publish_msgs_per_s"] for r in rows], "o-")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("author publish msgs/s vs branches (1 KiB)")
    ax.set_xlabel("branches")
    ax = axes[1]
    ax.plot(xs[1:], [r["tracemalloc_bytes_per_branch"] for r in rows][1:], "o-", label="tracemalloc")
    ax.plot(xs[1:], [r["rss_bytes_per_branch"] for r in rows][1:], "s--", label="RSS")
    ax.axhline(MEMORY_TARGET, color="black", linestyle="--", label="target")
    ax.set_xscale("log")
    ax.set_title("author bytes per idle branch")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(xs, [r["grant_us"] for r in rows], "o-", label="grant (open_branch)")
    ax.plot(xs, [r["revoke_us"] for r in rows], "s-", label="revoke")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("grant / revoke cost, us (median)")
    ax.legend(fontsize=8)
    ax = axes[3]
    if res["catchup"]:
        ax.plot([r["missed"] for r in res["catchup"]], [r["seconds"] for r in res["catchup"]], "o-",
                label="catch-up (s)")
    if res["anchoring"]:
        ax.plot([r["heads"] for r in res["anchoring"]], [r["seconds"] for r in res["anchoring"]], "s-",
                label="anchoring epoch (s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("catch-up and anchoring time")
    ax.set_xlabel("missed messages / heads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("_w")
        ap.add_argument("role", choices=["branches", "catchup-author", "catchup-sub"])
        ap.add_argument("--tmp", type=Path, required=True)
        ap.add_argument("--n", type=int, default=1)
        ap.add_argument("--msgs", type=int, default=1000)
        ap.add_argument("--ops", type=int, default=20)
        ap.add_argument("--addr", default="")
        ap.add_argument("--mode", default="catchup")
        ap.add_argument("--expect", type=int, default=0)
        a = ap.parse_args(argv)
        try:
            if a.role == "branches":
                emit(asyncio.run(branches_worker(a.n, a.msgs, a.ops, a.tmp)))
            elif a.role == "catchup-author":
                asyncio.run(catchup_author(a.tmp))
            else:
                emit(asyncio.run(catchup_subscriber(a.addr, a.tmp, a.mode, a.expect)))
        except Exception as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smoke run: up to 100 branches, 1k missed messages")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--ops", type=int, default=None, help="grants/revokes timed per point (default 50, quick 10)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    res = orchestrate(args.quick, args.ops)
    out = {"benchmark": "scale", "quick": args.quick, "machine": machine_info(),
           "wall_seconds": time.monotonic() - t0,
           "method": {
               "branches": "fresh process per N; Author with a real SQLite store (WAL, synchronous=NORMAL) and its "
                           "tasks running, frames to a discarding transport; N open_branch calls, then publish "
                           "throughput (1 KiB, median of 3 runs), then grant+revoke of new DIDs timed one by one",
               "memory": "RSS growth over the N open_branch calls / N (allocator arenas, SQLite's page cache: "
                         "the process's cost), measured without tracemalloc; then tracemalloc growth / N over "
                         "the same N calls on a second author (the driver's Python objects: core, store "
                         "objects, transport)",
               "catchup": "author and subscriber processes over brokerless tcp endpoints; the subscriber "
                          "subscribes, closes; the author publishes M x 1 KiB; time from Subscriber.open to the "
                          "M-th message handed to the application",
               "anchoring": "streams.anchor.build_epoch over N random heads, median of 3",
           }, **res}
    (args.out / "scale.json").write_text(json.dumps(out, indent=1) + "\n")
    print_tables(out)
    if not args.no_plot:
        plot(out, args.out / "scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
