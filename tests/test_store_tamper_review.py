"""Second-round attack review of the store's authenticated state (THREATS 1): an attacker who can write the store
file with ``sqlite3`` but does not know the passphrase.  Real SQLite files, real PyNaCl."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgpack
import pytest

from streams.core import BranchRecord, Changes
from streams.errors import StorageError
from streams.identity import Identity
from streams.store import Store

PW = "review passphrase 4c"


def _store_with_branch(path: Path) -> tuple[Store, BranchRecord]:
    s = Store.create(path, Identity.generate(), PW, role="subscriber", channel=os.urandom(32),
                     author_did=Identity.generate().did,
                     name="a", durable=False, opslimit=1, memlimit=8192)
    rec = BranchRecord(b"b" * 16, 0, 1, b"h" * 32, b"", 0, [(0, s.identity.sign_public, 3), (1, b"a" * 32, 3)],
                       [(0, 0, b"k" * 32)], evidence=b"genuine credential")
    s.commit(Changes(branches=[rec]))
    return s, rec


def _sql(path: Path, statement: str, args: tuple[object, ...]) -> None:
    """The attacker: one SQL statement on the file, no passphrase."""
    with sqlite3.connect(path) as c:
        c.execute(statement, args)
    c.close()


@pytest.mark.parametrize("rec", [msgpack.packb({"a": 1}), msgpack.packb({"a": 1, "b": [1, 2]})])
def test_a_branch_record_rewritten_as_a_map_is_storage_error_not_a_crash(tmp_path: Path, rec: bytes) -> None:
    path = tmp_path / "s.db"
    s, b = _store_with_branch(path)
    s.close()
    _sql(path, "UPDATE branches SET rec = ? WHERE id = ?", (rec, b.id))
    s = Store.open(path, PW, durable=False)
    try:
        with pytest.raises(StorageError, match=f"branch record {b.id.hex()}"):
            s.load_branches()
        with pytest.raises(StorageError, match=f"branch record {b.id.hex()}"):
            s.branch_extras(b.id)
    finally:
        s.close()


@pytest.mark.parametrize("bid", ["text id", 7])
def test_a_branch_id_rewritten_to_another_type_is_storage_error_not_a_crash(tmp_path: Path, bid: object) -> None:
    path = tmp_path / "s.db"
    s, b = _store_with_branch(path)
    s.close()
    _sql(path, "UPDATE branches SET id = ? WHERE id = ?", (bid, b.id))
    s = Store.open(path, PW, durable=False)
    try:
        with pytest.raises(StorageError, match="branch record"):
            s.load_branches()
    finally:
        s.close()


def test_evidence_edited_while_the_party_runs_is_refused_where_it_is_read_back(tmp_path: Path) -> None:
    """The core drops a stored branch's admission evidence from memory and reads it back through
    ``branch_extras`` for each revocation re-check (and for every record it writes again): the attacker swaps a
    revoked credential for another one after the open's check, and the re-check would judge the swapped one --
    and the next write of the record would seal it as genuine."""
    path = tmp_path / "s.db"
    s, b = _store_with_branch(path)
    try:
        assert [r.evidence for r in s.load_branches()] == [b"genuine credential"]  # (the open's check passed)
        assert s.branch_extras(b.id) == (b"", b"genuine credential", [])
        with sqlite3.connect(path) as c:  # the attacker, while the party runs
            (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (b.id,)).fetchone()
            v = msgpack.unpackb(rec, raw=False)
            v[10] = b"another, unrevoked credential"
            c.execute("UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), b.id))
        c.close()
        with pytest.raises(StorageError, match=f"branch record {b.id.hex()}.*altered"):
            s.branch_extras(b.id)
    finally:
        s.close()
