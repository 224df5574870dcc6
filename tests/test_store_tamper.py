"""THREATS 1 ("a store" may alter or inject) against the store's plaintext state: someone who can write a party's
store file but does not know its passphrase edits it with ``sqlite3`` -- the subscriber's idea of its author and
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

from streams.errors import KeystoreError, StorageError
from streams.identity import Identity
from streams.keystore import open_secret, seal_secret
from streams.store import Store

PW = "tamper passphrase 9a"


def subscriber_store(path: Path, author_did: str) -> Store:
    return Store.create(path, Identity.generate(), PW, role="subscriber", channel=os.urandom(32),
                        author_did=author_did, name="sub", durable=False, opslimit=1, memlimit=8192)


def set_meta(path: Path, key: str, value: object) -> None:
    """The attacker: rewrite one metadata row (no passphrase)."""
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET v = ? WHERE k = ?", (msgpack.packb(value, use_bin_type=True), key))
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


def make_older(path: Path) -> None:
    """Rewrite a store as the code before authenticated state wrote it: the seed sealed with its name alone as
    associated data, no passphrase check.  (Done
    with the passphrase: this plays the older version, not the attacker.)"""
    s = Store.open(path, PW, durable=False)
    key, seed = s._key, s.identity.export_seed()
    s.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET v = ? WHERE k = 'seed'",
                  (msgpack.packb(seal_secret(key, seed, b"streams.store.identity"), use_bin_type=True),))
        c.execute("DELETE FROM meta WHERE k = 'check'")
    c.close()


def test_an_older_store_opens_once_as_found_and_is_authenticated_from_then_on(tmp_path: Path) -> None:
    author = Identity.generate()
    path = tmp_path / "s.db"
    subscriber_store(path, author.did).close()
    make_older(path)
    s = Store.open(path, PW, durable=False)  # (the older layout opens, and is rewritten in that open)
    try:
        assert s.meta("author_did") == author.did
        with pytest.raises(KeystoreError):  # the seed is no longer sealed the old way
            open_secret(s._key, s._meta["seed"], b"streams.store.identity")
    finally:
        s.close()
    Store.open(path, PW, durable=False).close()
    set_meta(path, "author_did", Identity.generate().did)  # an edit now is refused
    with pytest.raises(StorageError, match="altered"):
        Store.open(path, PW, durable=False)


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
