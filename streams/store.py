"""Durable state in one SQLite file (WAL): identity, channel, branches, cursors, the retained log.

What the core changed is written in one transaction (:meth:`Store.commit`) *before* the driver acknowledges a
publish or hands an event to the application (THREATS 4): a ``kill -9`` at any point loses nothing that was
acknowledged, and a restart resumes from the cursors, so old messages are still rejected (THREATS 3).

Secrets at rest (the identity seed and every branch key) are encrypted with XChaCha20-Poly1305 under a key
derived from the passphrase with Argon2id (THREATS 9).  Messages are kept as received: payloads stay encrypted
under their branch keys.

Every ``sqlite3`` error is translated to :class:`~streams.errors.StorageError` where it enters.  A failed commit
leaves the file as it was before the transaction; the driver must then close (the in-memory core is ahead of the
disk) and reopen.

Schema (version 1)::

    meta(k TEXT PRIMARY KEY, v BLOB)
    branches(id BLOB PRIMARY KEY, rec BLOB)                      -- msgpack, keys sealed
    chains(branch, publisher, next_seq, head, covered)           -- cursors
    log(branch, publisher, seq, hash, frame)                     -- retained messages
    nonces(nonce BLOB PRIMARY KEY, expires_ms INTEGER)          -- used challenge nonces (author)
    delivered(branch, publisher, seq)                            -- application cursor
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import nacl.pwhash

from .core import BranchRecord, ChainRecord, Changes
from .errors import BadPassphrase, KeystoreError, LocalProtocolError, StorageError
from .identity import Identity
from .keystore import derive_key, open_secret, seal_secret

__all__ = ["MEMLIMIT", "OPSLIMIT", "Store"]

#: Argon2id cost for the store's passphrase key: libsodium's "interactive" (about 50 ms here), paid at each open.
OPSLIMIT: int = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT: int = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS branches (id BLOB PRIMARY KEY, rec BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chains (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, next_seq INTEGER NOT NULL, head BLOB NOT NULL,
    covered INTEGER NOT NULL, PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    frame BLOB NOT NULL, PRIMARY KEY (branch, publisher, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivered (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
"""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


class Store:
    """One party's durable state.  Create with :meth:`create`, reopen with :meth:`open`.  Not thread-safe: use
    it from one thread (the event loop's)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, key: bytes, identity: Identity) -> None:
        self._conn = conn
        self.path = path
        self._key = key
        self.identity = identity
        self._closed = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, did={self.identity.did!r})"

    # -- opening -----------------------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path, durable: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        return conn

    @classmethod
    def create(cls, path: str | os.PathLike[str], identity: Identity, passphrase: str | bytes, *,
               role: str, channel: bytes, author_did: str, name: str = "", durable: bool = True,
               opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT) -> Store:
        """Create a new store.  Raises :class:`LocalProtocolError` if ``path`` already holds a store."""
        p = Path(path)
        if p.exists() and p.stat().st_size > 0:
            raise LocalProtocolError(f"{p} already exists; open it instead")
        conn = cls._connect(p, durable)
        salt = os.urandom(16)
        key = derive_key(passphrase, salt, opslimit, memlimit)
        sealed_seed = seal_secret(key, identity.export_seed(), b"streams.store.identity")
        meta = {
            "schema": SCHEMA_VERSION, "role": role, "channel": channel, "author_did": author_did, "name": name,
            "salt": salt, "opslimit": opslimit, "memlimit": memlimit, "seed": sealed_seed, "did": identity.did,
        }
        try:
            with _tx(conn):
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, _pack(v)) for k, v in meta.items()])
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot initialise store {p}: {exc}") from exc
        os.chmod(p, 0o600)
        return cls(conn, p, key, identity)

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, *, durable: bool = True) -> Store:
        """Open an existing store.  Raises :class:`BadPassphrase` for a wrong passphrase, :class:`StorageError`
        if the file is missing or not a store."""
        p = Path(path)
        if not p.exists():
            raise StorageError(f"no store at {p}")
        conn = cls._connect(p, durable)
        try:
            meta = {k: msgpack.unpackb(v, raw=False) for k, v in conn.execute("SELECT k, v FROM meta")}
        except (sqlite3.Error, ValueError) as exc:
            conn.close()
            raise StorageError(f"{p} is not a readable store") from exc
        if meta.get("schema") != SCHEMA_VERSION:
            conn.close()
            raise StorageError(f"{p}: unsupported store schema {meta.get('schema')!r}")
        key = derive_key(passphrase, meta["salt"], meta["opslimit"], meta["memlimit"])
        try:
            seed = open_secret(key, meta["seed"], b"streams.store.identity")
        except KeystoreError as exc:
            conn.close()
            raise BadPassphrase("wrong passphrase for this store (or the store was altered)") from exc
        store = cls(conn, p, key, Identity.from_seed(seed))
        store._meta = meta
        return store

    def meta(self, key: str) -> Any:
        """A metadata value: role, channel, author_did, name, did, announce."""
        row = self._q("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0], raw=False)

    # -- writing -------------------------------------------------------------------------------------------------

    def commit(self, changes: Changes, delivered: dict[tuple[bytes, int], int] | None = None) -> None:
        """Persist what the core changed (and application cursors) in one transaction."""
        self._check_open()
        if not changes and not delivered:
            return
        chains: dict[tuple[bytes, int], ChainRecord] = {(c.branch, c.publisher): c for c in changes.chains}
        try:
            with _tx(self._conn):
                c = self._conn
                if changes.announce is not None:
                    c.execute("INSERT OR REPLACE INTO meta VALUES ('announce', ?)", (_pack(changes.announce),))
                if changes.branches:
                    c.executemany("INSERT OR REPLACE INTO branches VALUES (?, ?)",
                                  [(b.id, self._seal_branch(b)) for b in changes.branches])
                if chains:
                    c.executemany("INSERT OR REPLACE INTO chains VALUES (?, ?, ?, ?, ?)",
                                  [(r.branch, r.publisher, r.next_seq, r.head, r.covered) for r in chains.values()])
                if changes.log:
                    # OR IGNORE: the first message stored at a position stays (fork evidence is kept elsewhere).
                    c.executemany("INSERT OR IGNORE INTO log VALUES (?, ?, ?, ?, ?)",
                                  [(r.branch, r.publisher, r.seq, r.hash, r.frame) for r in changes.log])
                if changes.nonces:
                    c.executemany("INSERT OR REPLACE INTO nonces VALUES (?, ?)", changes.nonces)
                if delivered:
                    c.executemany("INSERT OR REPLACE INTO delivered VALUES (?, ?, ?)",
                                  [(b, p, s) for (b, p), s in delivered.items()])
        except sqlite3.Error as exc:
            raise StorageError(f"commit to {self.path} failed: {exc}") from exc

    def prune_nonces(self, now_ms: int) -> None:
        self._q("DELETE FROM nonces WHERE expires_ms < ?", (now_ms,))

    # -- reading -------------------------------------------------------------------------------------------------

    def load_branches(self) -> list[BranchRecord]:
        return [self._open_branch(bid, rec) for bid, rec in self._q("SELECT id, rec FROM branches")]

    def load_chains(self) -> list[ChainRecord]:
        return [ChainRecord(*row) for row in self._q("SELECT branch, publisher, next_seq, head, covered FROM chains")]

    def load_nonces(self, now_ms: int) -> list[tuple[bytes, int]]:
        return list(self._q("SELECT nonce, expires_ms FROM nonces WHERE expires_ms >= ?", (now_ms,)))

    def log_range(self, branch: bytes, publisher: int, lo: int, hi: int) -> list[bytes]:
        """Retained frames of a chain with ``lo <= seq <= hi``, in order."""
        rows = self._q("SELECT frame FROM log WHERE branch = ? AND publisher = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                       (branch, publisher, lo, hi))
        return [r[0] for r in rows]

    def log_entry(self, branch: bytes, publisher: int, seq: int) -> tuple[bytes, bytes] | None:
        """(hash, frame) stored at a position, or None."""
        row = self._q("SELECT hash, frame FROM log WHERE branch = ? AND publisher = ? AND seq = ?",
                      (branch, publisher, seq)).fetchone()
        return None if row is None else (row[0], row[1])

    def log_count(self) -> int:
        return int(self._q("SELECT count(*) FROM log").fetchone()[0])

    def delivered(self) -> dict[tuple[bytes, int], int]:
        return {(b, p): s for b, p, s in self._q("SELECT branch, publisher, seq FROM delivered")}

    def undelivered(self, me_by_branch: dict[bytes, int]) -> Iterator[tuple[bytes, int, int, bytes]]:
        """Accepted but not yet handed to the application, in (branch, publisher, seq) order: redelivered after a
        restart (at-least-once to the application; exactly-once acceptance by the protocol)."""
        cursors = self.delivered()
        rows = self._q("SELECT branch, publisher, seq, frame FROM log ORDER BY branch, publisher, seq").fetchall()
        for branch, publisher, seq, frame in rows:
            if me_by_branch.get(branch) == publisher:
                continue
            if seq > cursors.get((branch, publisher), 0):
                yield branch, publisher, seq, frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - close errors are not actionable
                raise StorageError(f"closing {self.path}: {exc}") from exc

    # -- internals -----------------------------------------------------------------------------------------------

    _meta: dict[str, Any]

    def _check_open(self) -> None:
        if self._closed:
            from .errors import ClosedResourceError

            raise ClosedResourceError("store is closed")

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        self._check_open()
        try:
            return self._conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"query on {self.path} failed: {exc}") from exc

    def _seal_branch(self, b: BranchRecord) -> bytes:
        keys = seal_secret(self._key, _pack([list(k) for k in b.keys]), b"streams.store.keys" + b.id)
        return _pack([b.id, b.epoch, b.mode, b.grant_hash, b.grant_frame, b.me, [list(m) for m in b.members], keys,
                      b.state, b.peer_did, b.evidence])

    def _open_branch(self, bid: bytes, rec: bytes) -> BranchRecord:
        try:
            v = msgpack.unpackb(rec, raw=False)
            keys = msgpack.unpackb(open_secret(self._key, v[7], b"streams.store.keys" + bid), raw=False)
            return BranchRecord(v[0], v[1], v[2], v[3], v[4], v[5], [tuple(m) for m in v[6]],
                                [tuple(k) for k in keys], v[8], v[9], v[10])
        except (ValueError, IndexError, TypeError, KeystoreError) as exc:
            raise StorageError(f"branch record {bid.hex()} in {self.path} is corrupted") from exc


@contextmanager
def _tx(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                conn.execute("ROLLBACK")
        raise
