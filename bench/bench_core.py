#!/usr/bin/env python3
"""Protocol core (no sockets) against the bare crypto floor, measured in one run.

For 64 B, 1 KiB and 16 KiB payloads, in both signing modes, this measures messages per second for

* the **floor**: exactly the primitive calls the core makes per message, with nothing around them --
  publisher: XChaCha20-Poly1305 encrypt, BLAKE2b-256 message hash, Ed25519 sign of the 32-byte digest;
  receiver: the same hash, Ed25519 verify, AEAD decrypt.  In amortized mode the sign/verify happens once per
  ``checkpoint_every`` messages (plus the checkpoint's own hash);
* the **core**: ``AuthorCore.publish`` + ``data_to_send`` + ``take_changes`` on the author, and
  ``SubscriberCore.receive`` + ``take_changes`` on a subscriber, wired in memory;

for publish only, receive only and the publish+receive pipeline.  Floor and core runs are interleaved and the
reported ratio is the median of the per-repetition ratios (core msgs/s / floor msgs/s), so slow phases of a
shared machine hit both sides alike.  It also measures the core's retained memory per idle branch with
tracemalloc.

Targets (from the issue): signed-each >= 0.75x floor, amortized >= 0.5x floor, <= 2 KiB per idle branch.
These are reported, never asserted: timing thresholds do not belong in tests.

Run: ``PYTHONPATH=. python bench/bench_core.py [--quick] [--out DIR]``.  Writes ``core.json`` and ``core.png``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import nacl  # noqa: E402
import nacl.bindings as nb  # noqa: E402

from streams import _crypto  # noqa: E402
from streams.core import AuthorCore, CoreConfig, SubscriberCore  # noqa: E402
from streams.events import Granted  # noqa: E402
from streams.identity import Identity, PublicIdentity  # noqa: E402
from streams.policy import AllowList  # noqa: E402
from streams.wire import VERSION, Checkpoint, Kind, Packet, SigningMode, encode_head  # noqa: E402

SIZES = (64, 1024, 16384)
MODES = ("each", "amortized")
DIRECTIONS = ("publish", "receive", "pipeline")
TARGETS = {"each": 0.75, "amortized": 0.5}
MEMORY_TARGET = 2048  # bytes per idle branch
CHECKPOINT_EVERY = 32
P_MSG = b"streams.v1.msg"
NOW = 1_700_000_000_000

# The same AEAD calls as the core makes (``streams._crypto``: libsodium through PyNaCl's cffi module, without
# the public wrappers' Python).
_enc = _crypto.aead_encrypt
_dec = _crypto.aead_decrypt
_sign = nb.crypto_sign
_open = nb.crypto_sign_open
_blake2b = hashlib.blake2b


# --- the floor -------------------------------------------------------------------------------------------------


@dataclass
class Floor:
    """The bare primitive calls, with inputs shaped like the core's (same AAD and hash-input sizes)."""

    payload: bytes
    every: int  # 1: a signature per message; k: one per k messages
    key: bytes = field(default_factory=lambda: os.urandom(32))
    nonce: bytes = field(default_factory=lambda: os.urandom(24))
    seed: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        self.pk, self.sk = nb.crypto_sign_seed_keypair(self.seed)
        z32, z16 = b"\x11" * 32, b"\x22" * 16
        # A realistic head: the AAD and hash prefix are ``[version, kind] || head`` exactly as the core builds them.
        self.aad = bytes((VERSION, Kind.PACKET)) + encode_head(Packet(z32, z16, 0, 123_456, z32, 0, self.nonce))
        self.cp = bytes((VERSION, Kind.CHECKPOINT)) + encode_head(Checkpoint(z32, z16, 0, 123_457, z32, 0))

    def publish(self, n: int) -> list[tuple[bytes, bytes]]:
        """n messages: encrypt, hash, and sign (each, or the checkpoint every ``every``)."""
        key, nonce, aad, payload, sk, every, cp = self.key, self.nonce, self.aad, self.payload, self.sk, self.every, \
            self.cp
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        if every == 1:
            for _ in range(n):
                ct = _enc(key, nonce, aad, payload)
                h = _blake2b(aad, digest_size=32, person=P_MSG)
                h.update(ct)
                append((ct, _sign(h.digest(), sk)))
        else:
            for i in range(1, n + 1):
                ct = _enc(key, nonce, aad, payload)
                h = _blake2b(aad, digest_size=32, person=P_MSG)
                h.update(ct)
                h.digest()
                append((ct, b""))
                if i % every == 0:
                    append((b"", _sign(_blake2b(cp, digest_size=32, person=P_MSG).digest(), sk)))
        return out

    def receive(self, msgs: list[tuple[bytes, bytes]]) -> int:
        key, nonce, aad, pk, cp = self.key, self.nonce, self.aad, self.pk, self.cp
        n = 0
        for ct, sm in msgs:
            if ct:
                h = _blake2b(aad, digest_size=32, person=P_MSG)
                h.update(ct)
                h.digest()
                if sm:
                    _open(sm, pk)
                _dec(key, nonce, aad, ct)
                n += 1
            else:
                _blake2b(cp, digest_size=32, person=P_MSG).digest()
                _open(sm, pk)
        return n

    def pipeline(self, n: int) -> None:
        key, nonce, aad, payload, sk, pk, every, cp = self.key, self.nonce, self.aad, self.payload, self.sk, \
            self.pk, self.every, self.cp
        for i in range(1, n + 1):
            ct = _enc(key, nonce, aad, payload)
            h = _blake2b(aad, digest_size=32, person=P_MSG)
            h.update(ct)
            d = h.digest()
            sm = _sign(d, sk) if every == 1 else b""
            h = _blake2b(aad, digest_size=32, person=P_MSG)
            h.update(ct)
            h.digest()
            if sm:
                _open(sm, pk)
            _dec(key, nonce, aad, ct)
            if every != 1 and i % every == 0:
                _open(_sign(_blake2b(cp, digest_size=32, person=P_MSG).digest(), sk), pk)
                _blake2b(cp, digest_size=32, person=P_MSG).digest()


# --- the subject: two cores wired in memory ----------------------------------------------------------------------


class Pair:
    """An author core and one subscriber core, handshaken in memory; publishes on the granted branch."""

    def __init__(self, payload: bytes, mode: str) -> None:
        signing = SigningMode.EACH if mode == "each" else SigningMode.AMORTIZED
        cfg = CoreConfig(signing=signing, checkpoint_every=CHECKPOINT_EVERY)
        self.payload = payload
        author_id = Identity.from_seed(b"\x01" * 32)
        sub_id = Identity.from_seed(b"\x02" * 32)
        self.author = AuthorCore(author_id, "bench", AllowList.of([sub_id.did]), config=cfg)
        self.sub = SubscriberCore(sub_id, author_id.did, self.author.channel, config=cfg)
        self.sub.hello()
        granted: list[Granted] = []
        for _ in range(10):  # HELLO -> ANNOUNCE + CHALLENGE -> SUBSCRIBE -> GRANT
            for o in self.sub.data_to_send():
                self.author.receive(o.data, NOW, "sub")
            self.sub.take_changes()
            self.author.take_changes()
            for o in self.author.data_to_send():
                granted += [e for e in self.sub.receive(o.data, NOW) if isinstance(e, Granted)]
        if len(granted) != 1:
            raise RuntimeError(f"handshake failed: {granted}")
        self.branch = granted[0].branch
        self.sub.take_changes()

    def publish(self, n: int) -> list[bytes]:
        author, branch, payload = self.author, self.branch, self.payload
        publish, data_to_send, take_changes = author.publish, author.data_to_send, author.take_changes
        frames: list[bytes] = []
        extend = frames.extend
        for _ in range(n):
            publish(branch, payload, NOW)
            extend([o.data for o in data_to_send()])
            take_changes()
        return frames

    def receive(self, frames: list[bytes]) -> None:
        receive, take_changes = self.sub.receive, self.sub.take_changes
        for f in frames:
            receive(f, NOW)
            take_changes()

    def pipeline(self, n: int) -> None:
        author, branch, payload = self.author, self.branch, self.payload
        publish, data_to_send, take_changes = author.publish, author.data_to_send, author.take_changes
        receive, sub_take = self.sub.receive, self.sub.take_changes
        for _ in range(n):
            publish(branch, payload, NOW)
            for o in data_to_send():
                receive(o.data, NOW)
            take_changes()
            sub_take()

    def check(self) -> None:
        """Every message was accepted: the subscriber's cursor is the author's (rejections would not advance)."""
        a = self.author.chain_head(self.branch, 0)
        s = self.sub.chain_head(self.branch, 0)
        if a[:2] != s[:2]:
            raise RuntimeError(f"subscriber fell behind: author {a[0]} subscriber {s[0]}")


# --- timing ------------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def _rates(n: int, target: Floor | Pair) -> dict[str, float]:
    """msgs/s for publish, receive and pipeline on one side."""
    t_pub, msgs = _timed(lambda: target.publish(n))
    t_rcv, _ = _timed(lambda: target.receive(msgs))
    t_pipe, _ = _timed(lambda: target.pipeline(n))
    if isinstance(target, Pair):
        target.check()
    return {"publish": n / t_pub, "receive": n / t_rcv, "pipeline": n / t_pipe}


@dataclass
class Case:
    size: int
    mode: str
    n: int
    floor: Floor
    pair: Pair
    floor_runs: dict[str, list[float]] = field(default_factory=lambda: {d: [] for d in DIRECTIONS})
    core_runs: dict[str, list[float]] = field(default_factory=lambda: {d: [] for d in DIRECTIONS})


def run_throughput(quick: bool, reps: int) -> list[dict[str, Any]]:
    cases: list[Case] = []
    for size in SIZES:
        payload = os.urandom(size)
        for mode in MODES:
            floor = Floor(payload, 1 if mode == "each" else CHECKPOINT_EVERY)
            pair = Pair(payload, mode)
            if quick:
                n = 2 * CHECKPOINT_EVERY
            else:  # calibrate: about 0.12 s per timed phase for the core pipeline
                _rates(CHECKPOINT_EVERY, floor)
                _rates(CHECKPOINT_EVERY, pair)
                per_msg, _ = _timed(lambda pair=pair: pair.pipeline(4 * CHECKPOINT_EVERY))  # type: ignore[misc]
                n = max(CHECKPOINT_EVERY, int(0.12 / (per_msg / (4 * CHECKPOINT_EVERY))))
                n -= n % CHECKPOINT_EVERY
            cases.append(Case(size, mode, n, floor, pair))
    for rep in range(reps):
        for c in cases:
            # Alternate which side goes first so drift on a shared machine does not favour one.
            order: list[tuple[Floor | Pair, dict[str, list[float]]]] = [(c.floor, c.floor_runs), (c.pair, c.core_runs)]
            if rep % 2:
                order.reverse()
            for target, runs in order:
                for d, v in _rates(c.n, target).items():
                    runs[d].append(v)
        print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr)
    rows = []
    for c in cases:
        for d in DIRECTIONS:
            ratios = [s / f for s, f in zip(c.core_runs[d], c.floor_runs[d], strict=True)]
            ratio = statistics.median(ratios)
            rows.append({
                "size": c.size,
                "mode": c.mode,
                "direction": d,
                "messages_per_repetition": c.n,
                "floor_msgs_per_s": statistics.median(c.floor_runs[d]),
                "core_msgs_per_s": statistics.median(c.core_runs[d]),
                "floor_us_per_msg": 1e6 / statistics.median(c.floor_runs[d]),
                "core_us_per_msg": 1e6 / statistics.median(c.core_runs[d]),
                "ratio": ratio,
                "target": TARGETS[c.mode],
                "met": ratio >= TARGETS[c.mode],
                "floor_runs": c.floor_runs[d],
                "core_runs": c.core_runs[d],
                "ratios": ratios,
            })
    return rows


# --- memory ------------------------------------------------------------------------------------------------------


def _public(i: int) -> PublicIdentity:
    pk, _ = nb.crypto_sign_seed_keypair(i.to_bytes(32, "big"))
    return PublicIdentity.from_sign_public(bytes(pk))


def _top_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[dict[str, Any]]:
    stats = after.compare_to(before, "lineno")
    return [
        {"site": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}", "bytes_per_branch": s.size_diff / n,
         "blocks": s.count_diff}
        for s in stats[:8]
    ]


def memory_author(n: int) -> dict[str, Any]:
    """Retained growth of an AuthorCore opening n per-subscriber branches (grants drained, not counted)."""
    author = AuthorCore(Identity.from_seed(b"\x01" * 32), "bench", AllowList.of([]))
    # As under the asyncio driver: grant frames and evidence are read back from the store when needed
    # (streams.api installs Store.branch_extras), so the core does not keep them once taken.
    author.extras_lookup = lambda _branch: None
    author.data_to_send()
    author.take_changes()
    subs = [_public(i + 1000) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    m0 = tracemalloc.get_traced_memory()[0]
    for pub in subs:
        author.open_branch(pub)
        author.data_to_send()
        author.take_changes()
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(author.branch_ids()) == n
    return {"branches": n, "bytes_total": m1 - m0, "bytes_per_branch": (m1 - m0) / n,
            "target": MEMORY_TARGET, "met": (m1 - m0) / n <= MEMORY_TARGET,
            "top_sites": _top_sites(before, after, n)}


def memory_subscriber(n: int) -> dict[str, Any]:
    """Retained growth of a SubscriberCore accepting n grants (one-member group branches from one author)."""
    author_id, sub_id = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    author = AuthorCore(author_id, "bench", AllowList.of([]))
    sub = SubscriberCore(sub_id, author_id.did, author.channel)
    sub.extras_lookup = lambda _branch: None  # as under the driver (see memory_author)
    sub.receive(author.announcement, NOW)
    sub.take_changes()
    grants: list[bytes] = []
    for _ in range(n):
        author.open_group([sub_id.public])
        grants += [o.data for o in author.data_to_send()]
        author.take_changes()
    del author
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    m0 = tracemalloc.get_traced_memory()[0]
    for g in grants:
        # A fresh copy, as off the network: the core's retained grant bytes are counted.
        sub.receive(bytes(bytearray(g)), NOW)
        sub.take_changes()
        sub.data_to_send()
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(sub.branch_ids()) == n
    return {"branches": n, "bytes_total": m1 - m0, "bytes_per_branch": (m1 - m0) / n,
            "target": MEMORY_TARGET, "met": (m1 - m0) / n <= MEMORY_TARGET,
            "top_sites": _top_sites(before, after, n)}


# --- output ------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    import msgpack

    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "pynacl": nacl.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "git_commit": commit,
    }


def print_table(rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]]) -> None:
    hdr = f"{'size':>6} {'mode':<9} {'direction':<9} {'floor msg/s':>12} {'core msg/s':>11} {'ratio':>6} " \
          f"{'target':>6}  met?"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        size = f"{r['size'] // 1024} KiB" if r["size"] >= 1024 else f"{r['size']} B"
        print(f"{size:>6} {r['mode']:<9} {r['direction']:<9} {r['floor_msgs_per_s']:>12,.0f} "
              f"{r['core_msgs_per_s']:>11,.0f} {r['ratio']:>6.2f} {r['target']:>6.2f}  {'yes' if r['met'] else 'NO'}")
    print()
    for who, m in memory.items():
        print(f"memory per idle branch ({who}, {m['branches']} branches): {m['bytes_per_branch']:,.0f} B "
              f"(target <= {m['target']} B: {'yes' if m['met'] else 'NO'})")


def plot(rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 3, 1.3]})
    for ax, mode in zip(axes[:2], MODES, strict=True):
        sub = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['size']} B\n{r['direction']}" if r["size"] < 1024 else f"{r['size'] // 1024} KiB\n"
                  f"{r['direction']}" for r in sub]
        colors = ["tab:green" if r["met"] else "tab:red" for r in sub]
        bars = ax.bar(range(len(sub)), [r["ratio"] for r in sub], color=colors)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.axhline(TARGETS[mode], color="black", linestyle="--", label=f"target {TARGETS[mode]}x")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(sub)), labels, fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("core msgs/s / floor msgs/s")
        ax.set_title(f"{mode}: protocol core vs crypto floor")
        ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    names = list(memory)
    vals = [memory[k]["bytes_per_branch"] for k in names]
    bars = ax.bar(names, vals, color=["tab:green" if memory[k]["met"] else "tab:red" for k in names])
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(MEMORY_TARGET, color="black", linestyle="--", label=f"target {MEMORY_TARGET} B")
    ax.set_ylim(0, max([*vals, MEMORY_TARGET]) * 1.25)
    ax.set_ylabel("bytes per idle branch")
    ax.set_title("memory")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smoke run: few iterations, 1000 branches")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output directory")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 9, quick 2)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 9)
    n_branches = 1000 if args.quick else 10_000
    args.out.mkdir(parents=True, exist_ok=True)

    info = machine_info()
    print(f"streams core benchmark: python {info['python']}, {info['cpu']} x{info['cpu_count']}, "
          f"{'quick' if args.quick else 'full'} run, {reps} repetitions", file=sys.stderr)
    rows = run_throughput(args.quick, reps)
    memory = {"author": memory_author(n_branches), "subscriber": memory_subscriber(n_branches)}
    result = {
        "benchmark": "core",
        "quick": args.quick,
        "repetitions": reps,
        "machine": info,
        "method": {
            "floor": "bare nacl.bindings/hashlib calls: publish = AEAD encrypt + BLAKE2b-256 + Ed25519 sign of the "
                     "digest; receive = BLAKE2b-256 + Ed25519 verify + AEAD decrypt; amortized: sign/verify (and "
                     "the checkpoint hash) once per checkpoint_every messages",
            "core": "AuthorCore.publish + data_to_send + take_changes; SubscriberCore.receive + take_changes; "
                    "in memory, default rng (os.urandom nonces)",
            "ratio": "median over repetitions of (core msgs/s / floor msgs/s), floor and core interleaved",
            "memory": "tracemalloc growth of the core after opening N branches, outgoing frames and changes "
                      "drained, divided by N; subscriber: grants fed as fresh copies (the bench_core.py site in "
                      "top_sites is the grant frame the core retains)",
            "checkpoint_every": CHECKPOINT_EVERY,
        },
        "throughput": rows,
        "memory": memory,
        "all_met": all(r["met"] for r in rows) and all(m["met"] for m in memory.values()),
    }
    (args.out / "core.json").write_text(json.dumps(result, indent=1) + "\n")
    print_table(rows, memory)
    if not args.no_plot:
        plot(rows, memory, args.out / "core.png")
    print(f"\nwrote {args.out / 'core.json'}" + ("" if args.no_plot else f" and {args.out / 'core.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
