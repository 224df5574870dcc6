"""Anchoring cost: per-epoch build time, ledger writes per epoch, proof size and verification time, and publish
throughput through the core with anchoring on versus off.

    PYTHONPATH=. python bench/bench_anchor.py [--quick]

Writes bench/results/anchor.json and bench/results/anchor.png.  ``--quick`` skips the 100k-head epoch and runs
shorter throughput rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streams.anchor import ANCHOR_TAG, ChainHead, EpochCheckpoint, InclusionProof, build_epoch, verify_inclusion
from streams.anchoring_service import AnchorConfig, _build
from streams.core import AuthorCore, CoreConfig
from streams.identity import Identity
from streams.ledger import EmbeddedLedger
from streams.ledger.anchoring import confirm, publish
from streams.policy import AllowList
from streams.wire import AnchorProof, encode_anchor_body, encode_frame

RESULTS = Path(__file__).resolve().parent / "results"
AUTHOR = Identity.from_seed(bytes([1]) * 32)
CHANNEL = bytes(range(32))


class CountingLedger:
    """An embedded ledger that counts appends: the figure that must be 1 per epoch."""

    def __init__(self, path: Path) -> None:
        self.inner = EmbeddedLedger(path)
        self.appends = 0

    def append(self, tag: bytes, data: bytes) -> str:
        self.appends += 1
        return self.inner.append(tag, data)

    def status(self, anchor_id: str) -> Any:
        return self.inner.status(anchor_id)

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        return self.inner.read(anchor_id)

    def close(self) -> None:
        self.inner.close()


def heads(n: int) -> list[ChainHead]:
    return [ChainHead(os.urandom(16), i % 3, 1 + i, os.urandom(32), os.urandom(32)) for i in range(n)]


def epoch_bench(n: int, tmp: Path) -> dict[str, Any]:
    hs = heads(n)
    runs = 5 if n <= 10_000 else 1
    times = []
    epoch = None
    for _ in range(runs):
        t0 = time.perf_counter()
        epoch = build_epoch(CHANNEL, hs, None, 1, AUTHOR.sign)
        times.append(time.perf_counter() - t0)
    assert epoch is not None
    ledger = CountingLedger(tmp / f"ledger-{n}.db")
    t0 = time.perf_counter()
    receipt = confirm(ledger, publish(ledger, epoch))
    write_s = time.perf_counter() - t0
    assert receipt is not None
    writes = ledger.appends
    ledger.close()
    sample = hs[:: max(1, n // 200)]
    vt = []
    path_lens = []
    for h in sample:
        p = epoch.proofs[(h.branch, h.publisher)]
        path_lens.append(len(p.path))
        t0 = time.perf_counter()
        verify_inclusion(h, p, epoch.checkpoint, AUTHOR.sign_public)
        vt.append(time.perf_counter() - t0)
    h = hs[0]
    p = epoch.proofs[(h.branch, h.publisher)]
    frame = encode_frame(AnchorProof(CHANNEL, h.branch, h.publisher, h.seq, h.hash, 0, 0, "0x" + "ab" * 32, p.index,
                                     p.tree_size, 0), encode_anchor_body(epoch.payload, p.path), AUTHOR.sign)
    return {
        "heads": n,
        "build_ms_median": statistics.median(times) * 1e3,
        "ledger_write_confirm_ms": write_s * 1e3,
        "ledger_writes_per_epoch": writes,
        "ledger_payload_bytes": len(epoch.payload),
        "proof_path_nodes_max": max(path_lens),
        "proof_path_bytes_max": 32 * max(path_lens),
        "anchor_proof_frame_bytes": len(frame.raw),
        "verify_us_median": statistics.median(vt) * 1e6,
    }


def throughput(branches: int, msgs: int, rounds: int, interval_s: float, tmp: Path) -> dict[str, Any]:
    """Publish through the core (commit and send collected as a driver would, minus I/O), interleaving rounds
    with anchoring off and on.  "On" does what the Author driver does on its own thread: note moved chains on
    every commit, and every epoch interval cut an epoch (heads, build, ledger write, proofs)."""
    subs = [Identity.from_seed(i.to_bytes(2, "big") * 16) for i in range(branches)]
    core = AuthorCore(AUTHOR, "bench", AllowList.of([s.did for s in subs]), CoreConfig())
    bids = [core.open_branch(s.public) for s in subs]
    core.take_changes()
    core.data_to_send()
    ledger = EmbeddedLedger(tmp / "tp-ledger.db")
    payload = os.urandom(256)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    epochs = 0
    prev = None
    for r in range(rounds * 2):
        mode = "off" if r % 2 == 0 else "on"
        moved: dict[tuple[bytes, int], None] = {}
        next_cut = time.perf_counter() + interval_s
        t0 = time.perf_counter()
        for i in range(msgs):
            core.publish(bids[i % branches], payload, 1)
            ch = core.take_changes()
            core.data_to_send()
            if mode == "on":
                for c in ch.chains:
                    moved[(c.branch, c.publisher)] = None
                if time.perf_counter() >= next_cut and moved:
                    hs = core.anchor_heads(list(moved))
                    moved.clear()
                    row, tree = _build(core, hs, prev, 1)
                    prev = EpochCheckpoint.decode(row.checkpoint)
                    aid = ledger.append(ANCHOR_TAG, row.checkpoint)
                    for j, (b, p, s, hh, ke) in enumerate(row.heads):
                        proof = InclusionProof(prev.epoch, j, len(row.leaves), tuple(tree.inclusion_proof(j)))
                        core.anchor_proof(b, p, s, hh, ke, prev, aid, proof)
                    core.data_to_send()
                    epochs += 1
                    next_cut = time.perf_counter() + interval_s
        rates[mode].append(msgs / (time.perf_counter() - t0))
    ledger.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"branches": branches, "msgs_per_round": msgs, "rounds_each": rounds, "payload_bytes": 256,
            "epoch_interval_ms": interval_s * 1e3, "epochs_cut": epochs, "off_msg_s": off, "on_msg_s": on,
            "ratio_on_off": on / off, "off_all": rates["off"], "on_all": rates["on"]}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = res["epochs"]
    n = [e["heads"] for e in ep]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].loglog(n, [e["build_ms_median"] for e in ep], "o-", label="build epoch")
    ax[0].loglog(n, [e["ledger_write_confirm_ms"] for e in ep], "s--", label="ledger write + confirm")
    ax[0].set(xlabel="branch heads per epoch", ylabel="ms", title="Time per epoch (1 ledger write each)")
    ax[0].legend()
    ax[1].semilogx(n, [e["anchor_proof_frame_bytes"] for e in ep], "o-", label="ANCHOR_PROOF frame")
    ax[1].semilogx(n, [e["proof_path_bytes_max"] for e in ep], "s--", label="inclusion path")
    ax[1].set(xlabel="branch heads per epoch", ylabel="bytes", title="Proof size")
    ax[1].legend()
    ax[1].twinx().semilogx(n, [e["verify_us_median"] for e in ep], "r^:", label="verify (µs)")
    tp = res["throughput"]
    ax[2].bar(["anchoring off", "anchoring on"], [tp["off_msg_s"], tp["on_msg_s"]])
    ax[2].set(ylabel="msg/s (core publish)", title=f"Publish throughput, ratio {tp['ratio_on_off']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="skip 100k heads, shorter throughput rounds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for anchor.json and anchor.png")
    args = ap.parse_args()
    out: Path = args.out
    sizes = [1, 100, 10_000] + ([] if args.quick else [100_000])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        epochs = []
        for n in sizes:
            e = epoch_bench(n, tmp)
            epochs.append(e)
            print(f"{n:>7} heads: build {e['build_ms_median']:9.2f} ms, ledger writes {e['ledger_writes_per_epoch']}, "
                  f"write+confirm {e['ledger_write_confirm_ms']:6.2f} ms, path {e['proof_path_bytes_max']:4d} B, "
                  f"proof frame {e['anchor_proof_frame_bytes']:4d} B, verify {e['verify_us_median']:6.1f} µs")
        # The default epoch interval (AnchorConfig, 1 s); --quick uses 100 ms so its short rounds still cut epochs.
        if args.quick:
            tp = throughput(100, 7_000, 3, 0.1, tmp)
        else:
            tp = throughput(100, 70_000, 3, AnchorConfig().epoch_interval_ms / 1000, tmp)
        print(f"publish throughput (core, 100 branches, 256 B): off {tp['off_msg_s']:.0f} msg/s, on "
              f"{tp['on_msg_s']:.0f} msg/s, ratio {tp['ratio_on_off']:.3f} ({tp['epochs_cut']} epochs cut)")
    res = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                       "cpus": os.cpu_count()}, "quick": args.quick, "epochs": epochs, "throughput": tp}
    (out / "anchor.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "anchor.png")
    print(f"wrote {out / 'anchor.json'} and {out / 'anchor.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
