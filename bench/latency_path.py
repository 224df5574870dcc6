#!/usr/bin/env python3
"""Where the end-to-end latency goes: per-message stage times of ``streams`` over ``brokerless``, two processes.

The publisher and subscriber run as in ``bench_e2e.py`` (the same ``OursPub``/``OursRecv`` classes, SQLite WAL
stores on both sides, tcp loopback), paced with the same loop, 1 KiB payloads.  Each worker wraps a few of its
own functions with timers (this script's instrumentation, not the library's) and stamps every data frame with
``time.monotonic_ns`` (CLOCK_MONOTONIC is shared by both processes) at each stage:

* ``queued``: send time stamped in the payload -> ``Author.publish_many`` (or ``publish``) called (the pacing loop);
* ``author``: that call -> the frame handed to ZeroMQ (sealing, signing, the commit, the send);
* ``wire``: handed to ZeroMQ -> read from the subscriber's socket (ZeroMQ's I/O threads, tcp, wake-ups);
* ``to driver``: read -> taken by the subscriber's receive loop (one event-loop hop);
* ``subscriber``: taken -> committed (checks, decryption, the commit);
* ``to app``: committed -> handed to the application (one event-loop hop).

Per call it also reports the mean time of the author's ``publish_many`` core work, each commit, each
``send_many`` and the subscriber's ``receive_many``, plus the raw DEALER/ROUTER round trip measured in the same
run (the latency target is p50 <= 2x that round trip + the crypto cost).  Rates, each a constant rate (the
timerfd pacing of ``bench_e2e.py``): isolated messages (300/s), 3,000/s, and 8,000/s, about half of the
signed-each streaming peak at 1 KiB on a busy 2-vCPU VM (0.4x of it on a quiet one, 20k/s), where each
``publish_many`` carries what fell due while the last one ran (the "items per call" column).  Then the
``*_per_msg`` modes (one awaited ``Author.publish`` per message, async-for delivery, as in ``bench_e2e.py``'s rows
of that name) at 1,500/s (about half of their peak on the busy VM; an eighth to a tenth on the quiet one,
11-14k/s).  Then the 3,000 / 8,000 msgs/s and per-message rows again with the stores' commit journal off
(``StoreOptions(journal=False)``: a SQLite transaction per commit, not an append to the journal, the default).

Run: ``python bench/latency_path.py [--quick] [--out DIR]``; writes ``latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, exit_on_sigterm, machine_info

SIZE = 1024
STAGES = ("queued", "author", "wire", "to driver", "subscriber", "to app")
_now = time.monotonic_ns


def _logged(args: Any) -> int:
    """Messages a ``Store.commit(changes, ...)`` call logs (commits of cursors alone are not counted)."""
    return len(args[1].log)


def _seq_of(data: bytes) -> int | None:
    """The sequence number of a PACKET frame (``[version, 7, head, body, sig]``, head ``[.., .., .., seq, ..]``),
    or None for anything else.  Two msgpack decodes: a couple of microseconds, paid inside the stage it stamps."""
    try:
        outer = msgpack.unpackb(data)
        if outer[1] != 7:
            return None
        seq = msgpack.unpackb(outer[2])[3]
    except Exception:  # not a frame of ours: not stamped
        return None
    return seq if isinstance(seq, int) else None


class _Stamps:
    """Stage stamps keyed by sequence number (the first time each is seen: gap-fill copies do not count) and
    per-call durations, of one worker process."""

    def __init__(self) -> None:
        self.stamps: dict[str, dict[int, int]] = {}
        self.calls: dict[str, list[int]] = {}  # name -> [total ns, calls, items]
        self.on = False

    def stamp(self, key: str, seq: int | None, t: int) -> None:
        if self.on and seq is not None:
            self.stamps.setdefault(key, {}).setdefault(seq, t)

    def timed(self, owner: Any, name: str, label: str, items: Any = None) -> None:
        """Wrap ``owner.name`` (a plain function attribute) with a timer; ``items(args)`` counts its items (calls
        with none are not counted)."""
        orig = getattr(owner, name)
        me = self

        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter_ns()
            try:
                return orig(*a, **kw)
            finally:
                if me.on and (items is None or items(a)):
                    c = me.calls.setdefault(label, [0, 0, 0])
                    c[0] += time.perf_counter_ns() - t
                    c[1] += 1
                    c[2] += items(a) if items is not None else 1

        setattr(owner, name, wrapper)


async def _pub(tmp: Path, mode: str, n: int, rate: float) -> None:
    import bench_e2e as e2e

    import brokerless.endpoints as ep
    import streams.api as api
    import streams.core as core
    import streams.store as store

    st = _Stamps()
    index_to_seq: dict[int, int] = {}
    send_many = ep.AuthorEndpoint.send_many

    def stamped_send(self: Any, outs: Any) -> None:
        send_many(self, outs)
        t = _now()
        for o in outs:
            st.stamp("sent", _seq_of(o.data), t)

    ep.AuthorEndpoint.send_many = stamped_send  # type: ignore[method-assign]
    publish_many = api.Author.publish_many

    async def stamped_publish(self: Any, branch: bytes, payloads: Any) -> list[int]:
        payloads = list(payloads)
        t = _now()
        seqs = await publish_many(self, branch, payloads)
        for payload, seq in zip(payloads, seqs, strict=True):
            st.stamp("called", seq, t)
            if st.on:
                index_to_seq[e2e.HDR.unpack_from(payload)[2]] = seq
        return seqs

    api.Author.publish_many = stamped_publish  # type: ignore[method-assign]
    publish = api.Author.publish

    async def stamped_publish_one(self: Any, branch: bytes, payload: bytes) -> int:
        t = _now()
        seq = await publish(self, branch, payload)
        st.stamp("called", seq, t)
        if st.on:
            index_to_seq[e2e.HDR.unpack_from(payload)[2]] = seq
        return seq

    api.Author.publish = stamped_publish_one  # type: ignore[method-assign]
    st.timed(core.AuthorCore, "publish_many", "author core publish_many", lambda a: len(a[2]))
    st.timed(core.AuthorCore, "publish", "author core publish")
    st.timed(store.Store, "commit", "author commit (messages logged)", _logged)
    st.timed(ep.AuthorEndpoint, "send_many", "author send_many")
    pub = e2e.OursPub(mode)
    print(json.dumps({"addr": await pub.setup(tmp)}), flush=True)
    await pub.wait_peer()
    await asyncio.sleep(0.5)
    st.on = True
    await e2e._publish(pub, {"run_id": 1, "count": n, "size": SIZE, "rate": rate})
    st.on = False
    await asyncio.sleep(0.5)
    print(json.dumps({"stamps": st.stamps, "calls": st.calls, "index_to_seq": index_to_seq}), flush=True)
    await pub.close()


async def _sub(tmp: Path, mode: str, addr: str, n: int) -> None:
    import bench_e2e as e2e

    import brokerless.endpoints as ep
    import streams.core as core
    import streams.store as store

    st = _Stamps()
    due: dict[int, int] = {}
    app: dict[int, int] = {}
    on_frame = ep.SubscriberEndpoint._on_frame

    def stamped_frame(self: Any, data: bytes) -> None:
        t = _now()
        for f in (ep._unbundle(data) or []) if data[:1] == ep.BUNDLE else [data]:  # each frame of a BUNDLE
            st.stamp("read", _seq_of(f), t)
        on_frame(self, data)

    ep.SubscriberEndpoint._on_frame = stamped_frame  # type: ignore[method-assign]
    recv = ep.SubscriberEndpoint.recv

    async def stamped_recv(self: Any) -> list[tuple[bytes, object]]:
        batch = await recv(self)
        t = _now()
        for d, _ in batch:
            st.stamp("taken", _seq_of(d), t)
        return batch

    ep.SubscriberEndpoint.recv = stamped_recv  # type: ignore[method-assign]
    commit = store.Store.commit

    def stamped_commit(self: Any, changes: Any, delivered: Any = None, **kw: Any) -> None:
        commit(self, changes, delivered, **kw)
        t = _now()
        for r in changes.log:
            st.stamp("committed", r.seq, t)

    store.Store.commit = stamped_commit  # type: ignore[method-assign]
    st.timed(store.Store, "commit", "subscriber commit (messages logged)", _logged)
    st.timed(core.SubscriberCore, "receive_many", "subscriber core receive_many", lambda a: len(a[1]))
    r = e2e.OursRecv(mode)

    def on_msg(payload: bytes) -> None:
        if st.on:
            _, ts, i = e2e.HDR.unpack_from(payload)
            app.setdefault(i, _now())
            due.setdefault(i, ts)

    r.on_msg = on_msg
    await r.setup(addr, tmp)
    st.on = True
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + 120
    while len(app) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    st.on = False
    print(json.dumps({"stamps": st.stamps, "calls": st.calls, "due": due, "app": app}), flush=True)
    await r.close()


def _pair(mode: str, n: int, rate: float) -> dict[str, Any]:
    """One paced run: both workers, their stamps joined by sequence number."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    me = [sys.executable, str(Path(__file__).resolve())]
    procs: list[subprocess.Popen[str]] = []
    try:
        (tmp / "p").mkdir()
        (tmp / "s").mkdir()
        pub = subprocess.Popen([*me, "worker-pub", str(tmp / "p"), mode, str(n), str(rate)], env=env,
                               stdout=subprocess.PIPE, text=True)
        procs.append(pub)
        assert pub.stdout is not None
        addr = json.loads(pub.stdout.readline())["addr"]
        sub = subprocess.Popen([*me, "worker-sub", str(tmp / "s"), mode, addr, str(n)], env=env,
                               stdout=subprocess.PIPE, text=True)
        procs.append(sub)
        assert sub.stdout is not None
        json.loads(sub.stdout.readline())
        p = json.loads(pub.stdout.readline())
        s = json.loads(sub.stdout.readline())
        for w in procs:
            w.wait(60)
    finally:
        for w in procs:
            if w.poll() is None:
                w.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    ps, ss = p["stamps"], s["stamps"]  # JSON object keys are strings
    series = [s["due"], ps.get("called", {}), ps.get("sent", {}), ss.get("read", {}), ss.get("taken", {}),
              ss.get("committed", {}), s["app"]]
    rows = []
    for i, seq in p["index_to_seq"].items():
        keys = [i, str(seq), str(seq), str(seq), str(seq), str(seq), i]
        ts = [src.get(k) for src, k in zip(series, keys, strict=True)]
        if None not in ts:
            rows.append(ts)
    stages = {}
    for k, name in enumerate(STAGES):
        d = [(r[k + 1] - r[k]) / 1000 for r in rows]
        stages[name] = {"p50_us": statistics.median(d), "mean_us": statistics.fmean(d)} if d else {}
    total = [(r[-1] - r[0]) / 1000 for r in rows]
    calls = {k: {"us_per_call": v[0] / v[1] / 1000, "items_per_call": v[2] / v[1], "calls": v[1]}
             for k, v in {**p["calls"], **s["calls"]}.items() if v[1]}
    return {"mode": mode, "rate": rate, "messages": len(rows), "p50_us": statistics.median(total) if total else None,
            "stages": stages, "calls": calls}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker-pub"]:
        asyncio.run(_pub(Path(argv[1]), argv[2], int(argv[3]), float(argv[4])))
        return 0
    if argv[:1] == ["worker-sub"]:
        asyncio.run(_sub(Path(argv[1]), argv[2], argv[3], int(argv[4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smoke run: few messages")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    import bench_e2e as e2e

    plan = [(mode, rate) for mode in ("ours_each", "ours_amortized") for rate in (300.0, 3000.0, 8000.0)]
    plan += [(f"{mode}_per_msg", 1500.0) for mode in ("ours_each", "ours_amortized")]
    # The same with the stores' commit journal off (StoreOptions(journal=False)).
    plan += [(f"{mode}_nojournal", rate) for mode in ("ours_each", "ours_amortized") for rate in (3000.0, 8000.0)]
    plan += [(f"{mode}_nojournal_per_msg", 1500.0) for mode in ("ours_each", "ours_amortized")]
    rows = []
    for k, (mode, rate) in enumerate(plan):
        n = 150 if args.quick else int(rate * 4)
        sys.stderr.write(f"[latency {k + 1}/{len(plan) + 1}] {mode} at {rate:,.0f} msgs/s ({n} messages)\n")
        rows.append(_pair(mode, n, rate))
    sys.stderr.write(f"[latency {len(plan) + 1}/{len(plan) + 1}] raw DEALER/ROUTER round trip\n")
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-rtt-"))
    try:
        raw = e2e.Pair("zmq_raw", tmp, {})
        try:
            rtt = raw.rtt(300 if args.quick else 3000)
        finally:
            raw.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    crypto = {"each": e2e.crypto_cost_us(SIZE, 1), "amortized": e2e.crypto_cost_us(SIZE, e2e.CHECKPOINT_EVERY)}
    out = {"benchmark": "latency", "quick": args.quick, "machine": machine_info(), "size": SIZE, "rows": rows,
           "rtt": {k: v for k, v in rtt.items() if k != "cdf_us"}, "crypto_us": crypto}
    (args.out / "latency.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"raw round trip p50 {rtt['p50_us']:.0f} us; crypto each {crypto['each']:.0f} us, "
          f"amortized {crypto['amortized']:.0f} us")
    for r in rows:
        parts = "  ".join(f"{k} {v.get('p50_us', 0):,.0f}" for k, v in r["stages"].items())
        print(f"{r['mode']:15s} {r['rate']:6,.0f}/s  p50 {r['p50_us'] or 0:6,.0f} us = {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
