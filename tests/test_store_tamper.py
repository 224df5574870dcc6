"""THREATS "Parties" ("a store" may alter or inject) against the store's plaintext state: someone who can write a
party's store file but does not know its passphrase edits it with ``sqlite3`` -- the subscriber's idea of its author and
channel, a group's member keys, a branch's state, peer, grant or mode -- and the party must refuse the file
(:class:`StorageError` naming what was altered) instead of acting on it.  A store written before this state was
authenticated opens once, trusted as it is, and is authenticated from then on.

Real SQLite files, real PyNaCl; the attacker uses only ``sqlite3`` and public keys."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgpack
import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.errors import KeystoreError, StorageError, VerificationError
from streams.identity import Identity
from streams.keystore import open_secret, seal_secret
from streams.policy import AllowList
from streams.store import Store
from streams.wire import decode_frame, decode_grant_body

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "tamper passphrase 9a"


def subscriber_store(path: Path, author_did: str) -> Store:
    return Store.create(path, Identity.generate(), PW, role="subscriber", channel=os.urandom(32),
                        author_did=author_did, name="sub", durable=False, opslimit=1, memlimit=8192)


def set_meta(path: Path, key: str, value: object) -> None:
    """The attacker: rewrite one metadata row (no passphrase)."""
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET v = ? WHERE k = ?", (msgpack.packb(value, use_bin_type=True), key))
    c.close()


def edit_branch(path: Path, branch: bytes, index: int, value: object) -> None:
    """The attacker: rewrite one plaintext field of a branch record (no passphrase)."""
    with sqlite3.connect(path) as c:
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (branch,)).fetchone()
        v = msgpack.unpackb(rec, raw=False)
        v[index] = value
        c.execute("UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), branch))
    c.close()


@pytest.mark.parametrize("field", ["author_did", "channel", "name", "did", "role"])
def test_a_rewritten_metadata_field_makes_the_store_refuse_to_open(tmp_path: Path, field: str) -> None:
    """The review's case: a subscriber whose ``author_did`` is rewritten to the attacker's would trust the
    attacker's ANNOUNCE, GRANTs and messages as its author's."""
    author, attacker = Identity.generate(), Identity.generate()
    path = tmp_path / "s.db"
    subscriber_store(path, author.did).close()
    forged: object = {"author_did": attacker.did, "channel": os.urandom(32), "name": "evil",
                      "did": attacker.did, "role": "author"}[field]
    set_meta(path, field, forged)
    with pytest.raises(StorageError, match="altered") as caught:
        Store.open(path, PW, durable=False)
    assert "metadata" in str(caught.value)
    set_meta(path, field, {"author_did": author.did}.get(field, forged))  # (only the genuine value opens again)
    if field == "author_did":
        s = Store.open(path, PW, durable=False)
        assert s.meta("author_did") == author.did
        s.close()


async def _group(tmp_path: Path) -> tuple[MemoryHub, Author, list[Subscriber], list[Identity], bytes]:
    hub = MemoryHub()
    members = [Identity.generate() for _ in range(3)]
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([m.did for m in members]), store_options=FAST)
    subs = [await Subscriber.create(tmp_path / f"m{i}.db", m, author.did, author.channel, PW,
                                    hub.subscriber_endpoint(f"m{i}"), store_options=FAST)
            for i, m in enumerate(members)]
    for s in subs:
        await s.subscribe(timeout=10)
    group = await author.open_group([m.did for m in members])
    return hub, author, subs, members, group


def _unsealed_by(identity: Identity, grant: bytes) -> bool:
    _, entries = decode_grant_body(decode_frame(grant).body)
    for e in entries:
        try:
            identity.unseal(e.sealed)
        except VerificationError:  # not this identity's entry
            continue
        return True
    return False


async def test_a_swapped_member_key_is_refused_before_a_re_key_seals_the_group_key_to_it(tmp_path: Path) -> None:
    """The group's record lists its members' public keys in plaintext: the attacker puts its own in place of a
    member's, and the author's next re-key would seal the new group key to the attacker."""
    hub, author, subs, members, group = await _group(tmp_path)
    attacker = Identity.generate()
    path = author.store.path
    await author.close()
    with sqlite3.connect(path) as c:
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (group,)).fetchone()
    c.close()
    v = msgpack.unpackb(rec, raw=False)
    seat = next(m for m in v[6] if m[1] == members[1].sign_public)
    seat[1] = attacker.sign_public
    edit_branch(path, group, 6, v[6])
    policy = AllowList.of([m.did for m in members])
    try:
        refused = ""
        try:
            reopened = await Author.open(path, PW, hub.author_endpoint(), policy, store_options=FAST)
        except StorageError as exc:
            refused = str(exc)
        if refused:
            assert f"branch record {group.hex()}" in refused and "altered" in refused
        else:  # (the code before the fix: the re-key seals the group key to the attacker)
            try:
                await reopened.remove_member(group, members[2].did)
                extras = reopened.store.branch_extras(group)
                assert extras is not None
                assert not _unsealed_by(attacker, extras[0]), "the re-key sealed the group key to the attacker"
            finally:
                await reopened.close()
            pytest.fail("a store whose group lists the attacker's key opened")
    finally:
        for s in subs:
            await s.close()


@pytest.mark.parametrize(("index", "value"), [(1, 7), (2, 2), (3, b"\x01" * 32), (8, "closed"), (9, "did:x"),
                                              (5, 2), (13, 3), (10, b"forged evidence"), (12, [[2, b"k" * 32, 1, 0]]),
                                              (14, b"\x02" * 32)])
async def test_an_edited_field_of_a_branch_record_makes_the_branch_refused(tmp_path: Path, index: int,
                                                                          value: object) -> None:
    """epoch, mode, grant_hash, state, peer_did, me, tail, tail hash: each edited alone is refused where it is
    read."""
    hub = MemoryHub()
    member = Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "m.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    await author.close()
    await sub.close()
    for path in (tmp_path / "a.db", tmp_path / "m.db"):
        edit_branch(path, branch, index, value)
        s = Store.open(path, PW, durable=False)
        try:
            with pytest.raises(StorageError, match=f"branch record {branch.hex()}.*altered"):
                s.load_branches()
        finally:
            s.close()


def make_older(path: Path, passphrase: str = PW) -> None:
    """Rewrite a store as the code before authenticated state wrote it: the seed sealed with its name alone as
    associated data, a branch record's keys with ``streams.store.keys`` and its id, no passphrase check, no
    ``stops`` row (its publishing stops unbound).  (Done with the passphrase: this plays the older version, not
    the attacker.)"""
    s = Store.open(path, passphrase, durable=False)
    key, seed = s._key, s.identity.export_seed()
    records = s.load_branches()
    s.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET v = ? WHERE k = 'seed'",
                  (msgpack.packb(seal_secret(key, seed, b"streams.store.identity"), use_bin_type=True),))
        c.execute("DELETE FROM meta WHERE k IN ('check', 'stops')")
        for b in records:
            (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (b.id,)).fetchone()
            v = msgpack.unpackb(rec, raw=False)
            v[7] = seal_secret(key, msgpack.packb([list(k) for k in b.keys], use_bin_type=True),
                               b"streams.store.keys" + b.id)
            c.execute("UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), b.id))
    c.close()


async def test_an_older_store_opens_once_as_found_and_is_authenticated_from_then_on(tmp_path: Path) -> None:
    hub, author, subs, members, group = await _group(tmp_path)
    await author.publish(group, b"before")
    paths = [author.store.path, *(s.store.path for s in subs)]
    await author.close()
    for s in subs:
        await s.close()
    for path in paths:
        make_older(path)
        with sqlite3.connect(path) as c:
            (sealed,) = c.execute("SELECT v FROM meta WHERE k = 'seed'").fetchone()
        c.close()
        s = Store.open(path, PW, durable=False)  # (the older layout opens, and is rewritten in that open)
        try:
            records = s.load_branches()
            assert group in {b.id for b in records}
            with pytest.raises(KeystoreError):  # the seed is no longer sealed the old way
                open_secret(s._key, msgpack.unpackb(s._conn.execute(
                    "SELECT v FROM meta WHERE k = 'seed'").fetchone()[0]), b"streams.store.identity")
            assert msgpack.unpackb(sealed) != s._meta["seed"]
        finally:
            s.close()
    # The parties run on the upgraded files ...
    reopened = await Author.open(paths[0], PW, hub.author_endpoint(), AllowList.of([m.did for m in members]),
                                 store_options=FAST)
    try:
        await reopened.publish(group, b"after the upgrade")
    finally:
        await reopened.close()
    # ... and an edit now is refused.
    set_meta(paths[1], "author_did", Identity.generate().did)
    with pytest.raises(StorageError, match="altered"):
        Store.open(paths[1], PW, durable=False)
    s = Store.open(paths[2], PW, durable=False)
    s.close()
    edit_branch(paths[2], group, 8, "closed")
    s = Store.open(paths[2], PW, durable=False)
    try:
        with pytest.raises(StorageError, match=f"branch record {group.hex()}.*altered"):
            s.load_branches()
    finally:
        s.close()


def test_a_wrong_passphrase_is_still_bad_passphrase_on_new_and_older_stores(tmp_path: Path) -> None:
    from streams.errors import BadPassphrase

    path = tmp_path / "s.db"
    subscriber_store(path, Identity.generate().did).close()
    with pytest.raises(BadPassphrase):
        Store.open(path, PW + "x", durable=False)
    make_older(path)
    with pytest.raises(BadPassphrase):
        Store.open(path, PW + "x", durable=False)
    Store.open(path, PW, durable=False).close()


def test_an_older_store_whose_branch_record_does_not_open_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    from streams.core import BranchRecord, Changes

    path = tmp_path / "s.db"
    s = subscriber_store(path, Identity.generate().did)
    rec = BranchRecord(b"b" * 16, 0, 1, b"h" * 32, b"", 1, [(0, b"a" * 32, 3), (1, s.identity.sign_public, 3)],
                       [(0, 0, b"k" * 32)])
    s.commit(Changes(branches=[rec]))
    s.close()
    make_older(path)
    edit_branch(path, rec.id, 7, b"\x00" * 60)  # its sealed keys damaged
    with pytest.raises(StorageError, match=f"branch record {rec.id.hex()} .*corrupted"):
        Store.open(path, PW, durable=False)
    with sqlite3.connect(path) as c:  # (the upgrade's transaction did not happen)
        assert c.execute("SELECT COUNT(*) FROM meta WHERE k = 'check'").fetchone() == (0,)
    c.close()


async def test_a_forged_announcement_in_a_subscriber_store_is_refused(tmp_path: Path) -> None:
    """The subscriber keeps the author's ANNOUNCE (meta ``announce``); a group's first GRANT must link to its
    hash.  Put a forged one there (the right author's fields, another name, not the author's signature) and the
    subscriber, restarted, would refuse every new group of its author as "does not link to the announcement"."""
    from streams.wire import Announce, encode_frame

    hub = MemoryHub()
    member, attacker = Identity.generate(), Identity.generate()
    author_id = Identity.generate()
    author = await Author.create(tmp_path / "a.db", author_id, "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "m.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=FAST)
    await sub.subscribe(timeout=10)
    await sub.close()
    forged = encode_frame(Announce(author.channel, author_id.sign_public, author_id.kx_public, "other"), b"",
                          attacker.sign).raw
    set_meta(tmp_path / "m.db", "announce", forged)
    refused = ""
    try:
        try:
            sub = await Subscriber.open(tmp_path / "m.db", PW, hub.subscriber_endpoint("m"), store_options=FAST)
        except StorageError as exc:
            refused = str(exc)
        if refused:
            assert "announcement" in refused and "altered" in refused
        else:  # (the code before the fix: the author's new group never reaches the member)
            try:
                group = await author.open_group([member.did])
                await author.publish(group, b"to the group")
                got = await sub.next_message(timeout=5)
                assert got is not None
            finally:
                await sub.close()
            pytest.fail("a store holding a forged announcement opened")
    finally:
        await author.close()


@pytest.mark.xfail(strict=True, reason="cursors (delivered, chains) are not authenticated: a row rolled back to an "
                   "earlier genuine value hands out (or accepts) messages again; a per-row MAC would not stop an "
                   "older genuine row either (rollback is out of scope)")
async def test_a_rolled_back_delivery_cursor_does_not_hand_out_taken_messages_again(tmp_path: Path) -> None:
    hub = MemoryHub()
    member = Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "m.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)
        for n in range(4):
            await author.publish(branch, b"m%d" % n)
        for _ in range(4):  # the fourth call marks the first three delivered
            await sub.next_message(timeout=10)
        await sub.close()
        with sqlite3.connect(tmp_path / "m.db") as c:  # the attacker: the application's cursor back to 0
            assert c.execute("UPDATE delivered SET seq = 0").rowcount == 1
        c.close()
        sub = await Subscriber.open(tmp_path / "m.db", PW, hub.subscriber_endpoint("m"), store_options=FAST)
        await author.publish(branch, b"m4")
        assert (await sub.next_message(timeout=10)).seq >= 4  # (at least once: the fourth may come again)
    finally:
        await sub.close()
        await author.close()
