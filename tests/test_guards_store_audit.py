"""Guards of the store (seed roll-back, commit journal, lock file) and of the audit that no other test exercised
(mutation testing: each test here fails when its guard is weakened).

Real SQLite files, real PyNaCl signatures and AEAD, real stores; the journal tests kill a real party (kill -9)."""

from __future__ import annotations

import fcntl as real_fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import streams.store as store_module
from streams.api import MemoryHub
from streams.audit import AuditReport, audit_store
from streams.errors import StorageError
from streams.identity import Identity
from streams.store import _J_HEAD, _J_MAX_BYTES, Store
from streams.wire import decode_frame, encode_frame
from tests.test_anchoring_integration import P1, PW, make_author, make_sub
from tests.test_commit_journal import PW as J_PW
from tests.test_commit_journal import N, _killed_after, _new_store, _party_view
from tests.test_mutation_audit import rewrite_message
from tests.test_store_tamper import PW as T_PW
from tests.test_store_tamper import make_older
from tests.test_store_tamper_round3 import PW as R3_PW
from tests.test_store_tamper_round3 import _forked_position

# -- store ---------------------------------------------------------------------------------------------------------


def test_an_upgraded_store_with_no_branch_record_whose_seed_row_is_rolled_back_is_refused(tmp_path: Path) -> None:
    """Attack: an upgraded subscriber store with no branch record yet (before its first subscription).  Someone who
    can write the file, without the passphrase, puts back the seed row of a copy from before the upgrade and sets
    ``author_did`` to his own DID.  With no branch record there is nothing else that fails to re-upgrade.
    Guard: a seed sealed the older way in a store that holds the upgrade's ``check`` row is "rolled back"."""
    path = tmp_path / "s.db"
    Store.create(path, Identity.generate(), T_PW, role="subscriber", channel=os.urandom(32),
                 author_did=Identity.generate().did, name="a", durable=False, opslimit=1, memlimit=8192).close()
    make_older(path, T_PW)
    with sqlite3.connect(path) as c:
        old_seed = dict(c.execute("SELECT k, v FROM meta"))["seed"]
    c.close()
    Store.open(path, T_PW, durable=False).close()  # the upgrade: trusted as found, once
    attacker = Identity.generate()
    with sqlite3.connect(path) as c:  # no passphrase needed
        c.execute("UPDATE meta SET v = ? WHERE k = 'seed'", (old_seed,))
        c.execute("UPDATE meta SET v = ? WHERE k = 'author_did'", (msgpack.packb(attacker.did),))
    c.close()
    with pytest.raises(StorageError, match="rolled back"):
        Store.open(path, T_PW, durable=False).close()


def _records(data: bytes) -> Iterator[int]:
    """The offsets of a journal's records (walked by their length fields alone)."""
    pos = 0
    while pos < len(data):
        yield pos
        pos += _J_HEAD.size + _J_HEAD.unpack_from(data, pos)[0]


def test_a_byte_flipped_inside_a_journal_records_payload_ends_the_journal_there(tmp_path: Path) -> None:
    """Damage: the LAST byte of the 5th commit-journal record's payload is flipped -- inside a row value, so the
    payload still decodes as msgpack (unlike a flipped array header).  Guard: a record whose payload does not match
    its digest ends the journal: records 1..4 are applied, the damaged one and all after it are not."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    data = bytearray(journal.read_bytes())
    pos = list(_records(bytes(data)))[4]  # the 5th record
    length = _J_HEAD.unpack_from(data, pos)[0]
    payload = bytes(data[pos + _J_HEAD.size:pos + _J_HEAD.size + length])
    data[pos + _J_HEAD.size + length - 1] ^= 0x01
    damaged = bytes(data[pos + _J_HEAD.size:pos + _J_HEAD.size + length])
    assert msgpack.unpackb(damaged, raw=False) != msgpack.unpackb(payload, raw=False)  # still decodes, differently
    journal.write_bytes(bytes(data))
    assert sum(1 for _ in _records(bytes(data))) == N  # one record per acknowledged publish
    assert _party_view(db) == ([1, 2, 3, 4], 5)


def test_a_lock_file_replaced_between_open_and_flock_counts_as_in_use(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Race (replayed deterministically): between ``_take_lock``'s open() and its flock(), the ``-lock`` file is
    removed (a failed create's clean-up does that) and another party makes a new one and locks it.  A lock on the
    orphaned inode locks nothing anyone sees.  Guard: the locked descriptor's inode must still be the one at the
    lock file's name, else the store is "in use" -- never two parties on one store."""
    db = tmp_path / "s.db"
    lock = f"{db}-lock"
    other: list[int] = []

    class RacingFcntl:
        LOCK_EX, LOCK_NB = real_fcntl.LOCK_EX, real_fcntl.LOCK_NB

        def flock(self, fd: int, op: int) -> None:
            if not other:  # the window between open and flock
                os.unlink(lock)
                monkeypatch.setattr(store_module, "fcntl", real_fcntl)
                other.append(store_module._take_lock(db, db))  # the other party: a new lock file, locked
                monkeypatch.setattr(store_module, "fcntl", self)
            real_fcntl.flock(fd, op)

    monkeypatch.setattr(store_module, "fcntl", RacingFcntl())
    try:
        with pytest.raises(StorageError, match="in use"):
            store_module._take_lock(db, db)
        assert other, "the race was not replayed"
    finally:
        for fd in other:
            os.close(fd)


def test_a_sparse_journal_over_the_size_cap_is_refused_without_being_read(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: anyone who can write beside the store makes its ``-commits`` file a sparse file of 2 GiB + 1 bytes
    (free on disk), so that opening the store reads it all into memory.  Guard: a journal over ``_J_MAX_BYTES`` is
    refused (StorageError) before any read.  (The reads are recorded and, for the huge file, answered with
    end-of-file, so that a store without the guard fails this test without allocating 2 GiB.)"""
    db = tmp_path / "a.db"
    _new_store(db, durable=False).close()
    journal = Path(f"{db}-commits")
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, _J_MAX_BYTES + 1)
    finally:
        os.close(fd)
    st = journal.stat()
    assert st.st_size == _J_MAX_BYTES + 1 and st.st_blocks * 512 < 1 << 20  # sparse: nothing allocated
    huge_reads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        if os.fstat(fd).st_size > _J_MAX_BYTES:
            huge_reads.append(n)
            return b""
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    store = Store.open(db, J_PW)
    try:
        with pytest.raises(StorageError, match="is not read"):
            store.lock()
    finally:
        store.close()
    assert huge_reads == []


# -- audit ---------------------------------------------------------------------------------------------------------


async def _member_with_six_messages(tmp: Path) -> tuple[Path, bytes, bytes, bytes]:
    """A member store (p1.db, closed) whose own chain holds six acknowledged messages on a signed-each branch.
    Returns (its path, the branch, the channel, the member's own chain key -- what it holds anyway)."""
    hub = MemoryHub()
    author = await make_author(tmp, hub, None)
    s = await make_sub(tmp / "p1.db", hub, P1, "p1", author)
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"own %d" % i for i in range(6)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        key = s._core._branches[branch].keys[(0, 1)]
        channel = author.channel
    finally:
        await s.close()
        await author.close()
    path = tmp / "p1.db"
    assert audit_store(path, PW, None).ok
    return path, branch, channel, key


def _errors(rep: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.seq, f.reason) for f in rep.findings if f.severity == "error"]


async def test_audit_finds_a_member_that_rewrote_its_last_message(tmp_path: Path) -> None:
    """Attack: the member replaces the LAST message (seq 6) of its own chain, in its store, by another one it signs
    and encrypts properly, linked to seq 5, and fixes the row's hash.  Every per-row check passes and no later
    message links to it.  Guard: the audit compares the chain's last logged message with the cursor's head."""
    path, branch, channel, key = await _member_with_six_messages(tmp_path)
    rewrite_message(path, channel, branch, key, 6)
    rep = audit_store(path, PW, None)
    assert not rep.ok, rep.summary()
    assert [(seq, "head is not its last message" in reason) for seq, reason in _errors(rep)] == [(6, True)], \
        rep.summary()


async def test_audit_reports_an_unsigned_packet_on_a_signed_each_branch_as_an_error(tmp_path: Path) -> None:
    """Attack: a logged packet of a signed-each branch is stored again without its signature (same message hash:
    the signature is not part of it).  An unsigned packet is authenticated only by the branch's AEAD key, which other
    members hold too, so on a signed-each branch it is a forgery.  Guard: the audit reports it as an error (not as
    a tail "not covered by a signed checkpoint yet" warning)."""
    path, branch, _channel, _key = await _member_with_six_messages(tmp_path)
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT frame FROM log WHERE branch = ? AND publisher = 1 AND seq = 6", (branch,)).fetchone()
    f = decode_frame(bytes(raw))
    assert f.sig, "expected a signed-each branch"
    unsigned = encode_frame(f.head, f.body)
    assert unsigned.hash == f.hash and not unsigned.sig
    db.execute("UPDATE log SET frame = ? WHERE branch = ? AND publisher = 1 AND seq = 6", (unsigned.raw, branch))
    db.commit()
    db.close()
    rep = audit_store(path, PW, None)
    assert not rep.ok, rep.summary()
    assert _errors(rep) == [(6, "unsigned packet on a signed-each branch (forged)")], rep.summary()


async def test_a_forks_row_holding_genuine_evidence_of_another_position_is_reported_as_altered(
        tmp_path: Path) -> None:
    """Attack: the ``forks`` table is not authenticated.  Someone who can write the file copies GENUINE fork
    evidence (two messages the author signed at seq 2) into a row naming seq 3, accusing the author of a fork at a
    position where it signed one message.  Guard: the audit reports a row as a fork only if its evidence is of the
    row's own (channel, branch, publisher, seq); this one is reported as an altered row."""
    _hub, author, sub, branch, sent, other = await _forked_position(tmp_path)
    path = sub.store.path
    await sub.close()
    await author.close()
    assert decode_frame(sent[1]).head.seq == 2 and decode_frame(other).head.seq == 2
    with sqlite3.connect(path) as c:  # the attacker
        c.execute("INSERT INTO forks VALUES (?, 0, 3, ?, ?)", (branch, sent[1], other))
    c.close()
    report = audit_store(path, R3_PW, None)
    assert not any("signed two different messages" in f.reason for f in report.findings), report.summary()
    assert [(f.seq, "another position" in f.reason) for f in report.findings if "forks row" in f.reason] == \
        [(3, True)], report.summary()
