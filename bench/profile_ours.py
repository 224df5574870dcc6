#!/usr/bin/env python3
"""Where our time goes: pyinstrument over the publish and receive paths of ``streams``, per signing mode.

Two processes as in ``bench_e2e.py`` would need two profilers; instead each side is profiled in its own process
run: the **author** publishes over a real :class:`brokerless.AuthorEndpoint` to a subscriber process (from
``bench_e2e.py``'s workers) and the **subscriber** side is profiled receiving from an author process.  Both use
SQLite WAL ``synchronous=NORMAL`` stores, 1 KiB payloads.  Self time is summed per function over the whole call
tree and the top entries are written to ``profile.json``.

Run: ``python bench/profile_ours.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Worker, emit, exit_on_sigterm

TOP = 15


def _aggregate(session: Any, total: float) -> list[dict[str, Any]]:
    """Self time per function over the whole tree.  pyinstrument keeps a frame's own time in a synthetic
    ``[self]`` child: it is credited to the parent."""
    acc: dict[tuple[str, str], float] = {}
    root = session.root_frame()
    stack: list[tuple[Any, tuple[str, str]]] = [(root, ("?", "?"))] if root is not None else []
    while stack:
        f, parent = stack.pop()
        key = (f.function or "?", f"{Path(f.file_path or '?').name}:{f.line_no or 0}")
        if f.is_synthetic:
            key = parent
        if not f.children:
            acc[key] = acc.get(key, 0.0) + f.time
        stack.extend((c, key) for c in f.children)
    rows = sorted(acc.items(), key=lambda kv: -kv[1])[:TOP]
    return [{"function": fn, "where": where, "self_s": t, "share": t / total if total else 0.0}
            for (fn, where), t in rows]


async def _profile_author(peer: str, n: int, tmp: Path) -> dict[str, Any]:
    """Author side in this process; the subscriber is a bench_e2e receiver worker."""
    import bench_e2e as e
    from pyinstrument import Profiler

    pub = e.OursPub(peer)
    addr = await pub.setup(tmp)
    recv = Worker([str(Path(e.__file__).resolve()), "worker", "recv", peer, "--tmp", str(tmp), "--addr", addr],
                  f"{peer}/recv")
    try:
        await asyncio.get_running_loop().run_in_executor(None, recv.read, 60)
        await pub.wait_peer()
        await asyncio.get_running_loop().run_in_executor(
            None, recv.call, {"cmd": "expect", "run_id": 1, "count": n, "timeout": 120, "idle": 120}, 30)
        payload = os.urandom(1024 - e.HDR.size)
        prof = Profiler(interval=0.0005, async_mode="disabled")
        prof.start()
        t0 = time.perf_counter()
        for i in range(n):
            await pub.send(e.HDR.pack(1, time.monotonic_ns(), i) + payload)
        await pub.flush()
        dt = time.perf_counter() - t0
        prof.stop()
        got = await asyncio.get_running_loop().run_in_executor(None, recv.read, 150)
    finally:
        recv.kill()
        await pub.close()
    assert prof.last_session is not None
    return {"side": "author (publish)", "peer": peer, "messages": n, "seconds": dt, "msgs_per_s": n / dt,
            "delivered": got["received"], "top": _aggregate(prof.last_session, prof.last_session.duration)}


def profile_subscriber_worker(peer: str, addr: str, n: int, tmp: Path) -> dict[str, Any]:
    """Subscriber side in this (worker) process, profiled; the author is the orchestrating process's worker."""
    import bench_e2e as e
    from pyinstrument import Profiler

    async def go() -> dict[str, Any]:
        r = e.OursRecv(peer)
        count = 0
        done = asyncio.Event()

        def on_msg(p: bytes) -> None:
            nonlocal count
            count += 1
            if count >= n:
                done.set()

        r.on_msg = on_msg
        await r.setup(addr, tmp)
        emit({"ready": True})
        prof = Profiler(interval=0.0005, async_mode="disabled")
        prof.start()
        t0 = time.perf_counter()
        await asyncio.wait_for(done.wait(), 300)
        dt = time.perf_counter() - t0
        prof.stop()
        await r.close()
        assert prof.last_session is not None
        return {"side": "subscriber (receive)", "peer": peer, "messages": n, "seconds": dt, "msgs_per_s": n / dt,
                "top": _aggregate(prof.last_session, prof.last_session.duration)}

    return asyncio.run(go())


def _profile_subscriber(peer: str, n: int, tmp: Path) -> dict[str, Any]:
    import bench_e2e as e

    me = str(Path(__file__).resolve())
    pub = Worker([str(Path(e.__file__).resolve()), "worker", "pub", peer, "--tmp", str(tmp)], f"{peer}/pub")
    try:
        addr = pub.read(60)["ready"]
        sub = Worker([me, "worker", "--peer", peer, "--addr", addr, "--n", str(n), "--tmp", str(tmp)],
                     f"{peer}/profiled-sub")
        try:
            sub.read(60)
            pub.call({"cmd": "run", "run_id": 1, "count": n, "size": 1024, "rate": 0}, 300)
            return sub.read(300)
        finally:
            sub.kill()
    finally:
        pub.kill()


def run(quick: bool) -> list[dict[str, Any]]:
    n = 300 if quick else 4000
    out = []
    for peer in ("ours_each", "ours_amortized"):
        for side in ("author", "subscriber"):
            tmp = Path(tempfile.mkdtemp(prefix="bench-prof-"))
            try:
                if side == "author":
                    out.append(asyncio.run(_profile_author(peer, n, tmp)))
                else:
                    out.append(_profile_subscriber(peer, n, tmp))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"[profile] {peer} {side} done", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("_w")
        ap.add_argument("--peer", required=True)
        ap.add_argument("--addr", required=True)
        ap.add_argument("--n", type=int, required=True)
        ap.add_argument("--tmp", type=Path, required=True)
        a = ap.parse_args(argv)
        emit(profile_subscriber_worker(a.peer, a.addr, a.n, a.tmp))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "profile", "quick": args.quick, "tool": "pyinstrument", "profiles": run(args.quick)}
    (args.out / "profile.json").write_text(json.dumps(res, indent=1) + "\n")
    for p in res["profiles"]:
        print(f"\n{p['peer']} {p['side']}: {p['msgs_per_s']:,.0f} msg/s")
        for t in p["top"][:10]:
            print(f"  {t['share'] * 100:5.1f}%  {t['function']:<32} {t['where']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
