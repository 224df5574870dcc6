"""Store.log_hole: where a member's fetch of its own messages back is taken up again at its next start (SPEC 13.5).
Real SQLite files and real frames: a hole between rows, at the tail, at the chain's start, after a restore mark,
and a damaged row after the hole (no fetch, and the store still opens)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streams.core import ChainRecord, Changes, LogRecord
from streams.identity import Identity
from streams.store import Store
from streams.wire import Packet, encode_frame

ME = Identity.from_seed(b"\x08" * 32)
BRANCH = b"\xbc" * 16


def _store(tmp: Path, seqs: list[int]) -> tuple[Store, dict[int, bytes]]:
    """A store whose log of chain (BRANCH, 1) holds ``seqs``, each message linked to the one before."""
    store = Store.create(tmp / "s.db", ME, "pw", role="author", channel=b"c" * 32, author_did=ME.did, durable=False,
                         opslimit=1, memlimit=8192)
    hashes: dict[int, bytes] = {0: b"\x00" * 32}
    log = []
    for s in range(1, max(seqs) + 1):
        f = encode_frame(Packet(b"c" * 32, BRANCH, 1, s, hashes[s - 1], 0, bytes(24)), b"x" * 20)
        hashes[s] = f.hash
        if s in seqs:
            log.append(LogRecord(BRANCH, 1, s, f.hash, f.raw))
    store.commit(Changes(chains=[ChainRecord(BRANCH, 1, max(seqs) + 1, hashes[max(seqs)], 0)], log=log))
    return store, hashes


def test_holes_between_rows_at_the_tail_and_at_the_start(tmp_path: Path) -> None:
    store, h = _store(tmp_path, [1, 2, 3, 7, 8])
    try:
        assert store.log_hole(BRANCH, 1, 9) == (4, h[3], 6, h[6])  # ends in what row 7 links to
        assert store.log_hole(BRANCH, 1, 12) == (4, h[3], 6, h[6])  # the first hole
        assert store.log_hole(BRANCH, 1, 4) is None  # whole below 4
        assert store.log_hole(BRANCH, 1, 6) == (4, h[3], 5, None)  # runs to the cursor
        assert store.log_hole(BRANCH, 2, 9) == (1, b"", 8, None)  # a chain with no row: from its start
        db = sqlite3.connect(tmp_path / "s.db")
        db.execute("DELETE FROM log WHERE seq <= 2")
        db.commit()
        db.close()
        assert store.log_hole(BRANCH, 1, 9) == (1, b"", 2, h[2])  # its first rows gone
    finally:
        store.close()


def test_a_restore_mark_is_the_chains_start_and_a_damaged_row_after_a_hole_fetches_nothing(tmp_path: Path) -> None:
    store, h = _store(tmp_path, [4, 5, 6])
    try:
        assert store.log_hole(BRANCH, 1, 7) == (1, b"", 3, h[3])
        db = sqlite3.connect(tmp_path / "s.db")
        db.execute("INSERT INTO restore_marks VALUES (?, 1, 3, ?)", (BRANCH, b"m" * 64))
        db.commit()
        assert store.log_hole(BRANCH, 1, 7) is None  # (the log starts after the mark: whole)
        db.execute("DELETE FROM restore_marks")
        db.execute("UPDATE log SET frame = ? WHERE seq = 4", (b"\x95garbage",))
        db.commit()
        db.close()
        assert store.log_hole(BRANCH, 1, 7) is None
    finally:
        store.close()
