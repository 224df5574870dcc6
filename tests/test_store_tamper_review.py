"""Second-round attack review of the store's authenticated state (THREATS "Parties"): an attacker who can write the
store file with ``sqlite3`` but does not know the passphrase.  Real SQLite files, real PyNaCl."""

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
from tests.test_store_tamper import make_older

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


def _rows(path: Path) -> tuple[dict[str, bytes], dict[bytes, bytes]]:
    with sqlite3.connect(path) as c:
        meta = dict(c.execute("SELECT k, v FROM meta"))
        branches = dict(c.execute("SELECT id, rec FROM branches"))
    c.close()
    return meta, branches


def _upgraded_with_a_copy_from_before(tmp_path: Path) -> tuple[Path, BranchRecord, dict[str, bytes],
                                                                dict[bytes, bytes]]:
    """A store written by the older code, of which the attacker kept a copy (an old backup, say), then opened --
    and upgraded -- by this one."""
    path = tmp_path / "s.db"
    s, b = _store_with_branch(path)
    s.commit(Changes(branches=[BranchRecord(b"c" * 16, 0, 1, b"h" * 32, b"", 0, [(0, s.identity.sign_public, 3)],
                                            [(0, 0, b"j" * 32)])]))
    s.close()
    make_older(path, PW)
    old_meta, old_branches = _rows(path)
    Store.open(path, PW, durable=False).close()  # the upgrade: trust on first open, once
    assert _rows(path)[0]["seed"] != old_meta["seed"]
    return path, b, old_meta, old_branches


def test_an_older_layout_record_put_back_into_an_upgraded_store_is_refused(tmp_path: Path) -> None:
    path, b, _, old_branches = _upgraded_with_a_copy_from_before(tmp_path)
    v = msgpack.unpackb(old_branches[b.id], raw=False)
    v[6][1][1] = Identity.generate().sign_public  # (the older layout bound none of it)
    _sql(path, "UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), b.id))
    s = Store.open(path, PW, durable=False)
    try:
        with pytest.raises(StorageError, match=f"branch record {b.id.hex()}.*altered"):
            s.load_branches()
    finally:
        s.close()


@pytest.mark.parametrize("drop_check", [False, True])
def test_the_seed_rolled_back_to_before_the_upgrade_does_not_upgrade_the_store_again(
        tmp_path: Path, drop_check: bool) -> None:
    """Trust on first open happens once: putting back the seed row of a copy from before the upgrade (and
    deleting the check row, which marks the upgrade) must not make the store trust what the attacker then
    writes -- its author_did, an older-layout record with the attacker's key among a group's members."""
    path, b, old_meta, old_branches = _upgraded_with_a_copy_from_before(tmp_path)
    attacker = Identity.generate()
    _sql(path, "UPDATE meta SET v = ? WHERE k = 'seed'", (old_meta["seed"],))
    if drop_check:
        _sql(path, "DELETE FROM meta WHERE k = 'check'", ())
    _sql(path, "UPDATE meta SET v = ? WHERE k = 'author_did'", (msgpack.packb(attacker.did),))
    v = msgpack.unpackb(old_branches[b.id], raw=False)
    v[6][1][1] = attacker.sign_public
    _sql(path, "UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), b.id))
    before = _rows(path)
    opened = None
    try:
        with pytest.raises(StorageError, match="rolled back"):
            opened = Store.open(path, PW, durable=False)
    finally:
        if opened is not None:
            assert opened.meta("author_did") != attacker.did, "the store trusts the attacker as its author"
            opened.close()
    assert _rows(path) == before  # (nothing written)


def test_branch_records_swapped_between_branches_or_stores_of_one_identity_and_passphrase_are_refused(
        tmp_path: Path) -> None:
    """(Regression.) A record's id is in its associated data, and each store's key has its own salt: a record
    moved to another branch's row, or into another store of the same identity and passphrase, does not open."""
    me = Identity.generate()
    stores = []
    for name in ("a.db", "b.db"):
        s = Store.create(tmp_path / name, me, PW, role="subscriber", channel=b"c" * 32, author_did=me.did,
                         name="a", durable=False, opslimit=1, memlimit=8192)
        s.commit(Changes(branches=[BranchRecord(bid, 0, 1, b"h" * 32, b"", 0, [(0, b"a" * 32, 3),
                                                                               (1, me.sign_public, 3)],
                                                [(0, 0, bid * 2)]) for bid in (b"x" * 16, b"y" * 16)]))
        s.close()
        stores.append(tmp_path / name)
    a_rows, b_rows = _rows(stores[0])[1], _rows(stores[1])[1]
    _sql(stores[0], "UPDATE branches SET rec = ? WHERE id = ?", (a_rows[b"y" * 16], b"x" * 16))
    _sql(stores[1], "UPDATE branches SET rec = ? WHERE id = ?", (a_rows[b"y" * 16], b"y" * 16))
    assert b_rows[b"y" * 16] != a_rows[b"y" * 16]
    for path, bid in ((stores[0], b"x" * 16), (stores[1], b"y" * 16)):
        s = Store.open(path, PW, durable=False)
        try:
            with pytest.raises(StorageError, match=f"branch record {bid.hex()}"):
                s.load_branches()
        finally:
            s.close()


def test_an_older_store_is_not_upgraded_under_a_party_that_runs_on_it(tmp_path: Path) -> None:
    """A party of the earlier version still runs on the store (it holds the store's lock, as every version
    does) when this version opens it -- ``streams status``/``audit``, or a second party that then finds the lock
    taken.  Upgrading then would brick the store: the running party goes on sealing records the older way, which
    this version refuses as altered, and the earlier version cannot open the upgraded seed (a wrong passphrase)."""
    import subprocess
    import sys

    path = tmp_path / "s.db"
    s, _ = _store_with_branch(path)
    s.close()
    make_older(path, PW)
    before = _rows(path)
    holder = subprocess.Popen(  # (the earlier version's party: an exclusive flock on <store>-lock, as lock() takes)
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", f"{path}-lock"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        opened = None
        try:
            with pytest.raises(StorageError, match="in use"):
                opened = Store.open(path, PW, durable=False)
        finally:
            if opened is not None:
                opened.close()
        assert _rows(path) == before  # (nothing upgraded beneath the running party)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    s = Store.open(path, PW, durable=False)  # (once it stopped, the upgrade happens)
    try:
        assert len(s.load_branches()) == 1
    finally:
        s.close()
    assert _rows(path)[0]["seed"] != before[0]["seed"]


def test_metadata_edited_with_the_check_row_deleted_is_still_altered_not_a_wrong_passphrase(tmp_path: Path) -> None:
    """The check row is what tells an edit from a wrong passphrase; the attacker deletes it along with the edit.
    A branch record sealed under the store key tells it as well: the user must not be sent hunting for a
    passphrase that is right."""
    from streams.errors import BadPassphrase

    path = tmp_path / "s.db"
    s, _ = _store_with_branch(path)
    s.close()
    _sql(path, "DELETE FROM meta WHERE k = 'check'", ())
    _sql(path, "UPDATE meta SET v = ? WHERE k = 'author_did'", (msgpack.packb(Identity.generate().did),))
    with pytest.raises(StorageError, match=r"metadata.*altered"):
        Store.open(path, PW, durable=False)
    with pytest.raises(BadPassphrase):
        Store.open(path, PW + "x", durable=False)



def test_metadata_edited_with_the_check_row_deleted_in_a_store_with_no_record_is_altered_not_a_wrong_passphrase(
        tmp_path: Path) -> None:
    """As above, in a store that holds no branch record yet (an author before its first subscriber, a member
    before its first grant): no record tells the passphrase is right, and the open said wrong passphrase -- the
    user hunting for another.  The ``stops`` row (a sealed empty secret every store has had since its publishing
    stops were bound) tells it too.  With every row sealed under the passphrase deleted, nothing can tell."""
    from streams.errors import BadPassphrase

    path = tmp_path / "s.db"
    Store.create(path, Identity.generate(), PW, role="author", channel=os.urandom(32),
                 author_did=Identity.generate().did, durable=False, opslimit=1, memlimit=8192).close()
    _sql(path, "DELETE FROM meta WHERE k = 'check'", ())
    _sql(path, "UPDATE meta SET v = ? WHERE k = 'name'", (msgpack.packb("edited"),))
    with pytest.raises(StorageError, match=r"metadata.*altered"):
        Store.open(path, PW, durable=False)
    with pytest.raises(BadPassphrase):
        Store.open(path, PW + "x", durable=False)


def test_a_new_layout_seal_cannot_pass_as_an_older_record_under_another_id(tmp_path: Path) -> None:
    """The older associated data is ``streams.store.keys`` + id; the new one ``streams.store.keys.2`` + id +
    the record's fields.  With the seed put back from a pre-upgrade copy (the check row deleted), an attacker who
    moves a current record's sealed keys to the id ``b".2" + id + fields`` makes them open as an older record's
    -- under fields of its choosing (its own key among the members), which the re-upgrade would then seal as
    genuine.  A branch id is 16 bytes: a longer one is no record."""
    path, _b, old_meta, _ = _upgraded_with_a_copy_from_before(tmp_path)
    attacker = Identity.generate()
    _, current = _rows(path)
    _sql(path, "UPDATE meta SET v = ? WHERE k = 'seed'", (old_meta["seed"],))
    _sql(path, "DELETE FROM meta WHERE k = 'check'", ())
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM branches")
        for bid, rec in current.items():
            v = msgpack.unpackb(rec, raw=False)
            fake = b".2" + bid + msgpack.packb(v[:4] + v[5:7] + v[8:11] + v[12:], use_bin_type=True)
            v[0] = fake
            v[6] = [*v[6], [len(v[6]), attacker.sign_public, 3]]
            c.execute("INSERT INTO branches (id, rec) VALUES (?, ?)", (fake, msgpack.packb(v, use_bin_type=True)))
    c.close()
    opened = None
    try:
        with pytest.raises(StorageError, match="branch record"):
            opened = Store.open(path, PW, durable=False)
    finally:
        if opened is not None:
            trusted = [r for r in opened.load_branches() if any(m[1] == attacker.sign_public for m in r.members)]
            opened.close()
            assert not trusted, "the attacker's key was sealed into a record holding a branch's keys"
