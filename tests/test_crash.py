"""kill -9 of a publishing author: nothing acknowledged is lost, the chain resumes without a hole or a fork -- with
the store's commit journal on too (the killed party's journaled commits are applied when it opens the store
again)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.store import Store
from streams.wire import decode_frame

HERE = Path(__file__).resolve().parent


def _run_until_killed(db: Path, min_acks: int, batch: int = 1, journal: bool = False) -> int:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), CRASH_JOURNAL="1" if journal else "0")
    p = subprocess.Popen([sys.executable, str(HERE / "crash_party.py"), str(db), "1000000", str(batch)],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    last = 0
    target = min_acks + random.randint(0, 50)
    deadline = time.monotonic() + 60
    try:
        for line in p.stdout:
            if line.startswith("ACK"):
                last = int(line.split()[1])
                if last >= target:
                    break
            assert time.monotonic() < deadline, "child too slow"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
    return last


JOURNAL = pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])


@JOURNAL
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, journal: bool) -> None:
    _kill_rounds(tmp_path / "author.db", 1, journal)


@JOURNAL
def test_kill_9_loses_nothing_publish_many_returned(tmp_path: Path, journal: bool) -> None:
    """publish_many returns only after its one commit: a kill -9 right after the return loses none of it."""
    _kill_rounds(tmp_path / "author.db", 16, journal)


def _kill_rounds(db: Path, batch: int, journal: bool) -> None:
    acked: list[int] = []
    for round_ in range(3):
        acked.append(_run_until_killed(db, 20 * batch * (round_ + 1) + max(acked, default=0), batch, journal))
    store = Store.open(db, "pw")
    store.lock()  # as a party opens it: the journal left by the killed one is applied
    try:
        [branch] = [b.id for b in store.load_branches()]
        [chain] = [c for c in store.load_chains() if c.publisher == 0]
        frames = store.log_range(branch, 0, 1, 10**9)
        # every acknowledged message is on disk, the log has no hole, and the cursor matches the log
        assert len(frames) >= max(acked)
        seqs = [decode_frame(f).head.seq for f in frames]
        assert seqs == list(range(1, len(frames) + 1))
        assert chain.next_seq == len(frames) + 1
        # the hash links are intact across the crashes: each message links to the previous one
        prev = None
        for f in frames:
            d = decode_frame(f)
            if prev is not None:
                assert d.head.prev == prev
            prev = d.hash
        assert chain.head == prev
    finally:
        store.close()
