"""The embedded ledger: an append-only, hash-chained log in one SQLite file, shared by processes on a host.

Each row is ``(position, tag, data, timestamp_ms, prev_hash, entry_hash)`` with positions ``1, 2, 3, ...``
and::

    entry_hash = BLAKE2b-256(person="streams.v1.ledg",
                             u64be(position) || u32be(len tag) || tag || u64be(len data) || data
                             || u64be(timestamp_ms) || prev_hash)

``prev_hash`` is the previous row's ``entry_hash`` (32 zero bytes for position 1).  The length prefixes make
the encoding injective, so no two different rows hash alike.  :meth:`EmbeddedLedger.verify` walks the
whole chain and names the first position where it breaks: an edited field, a deleted or inserted row, a
renumbered row or a timestamp running backwards.  Removing rows at the *end* leaves a shorter valid chain;
an auditor detects that by passing a head it remembered (``verify(expected=...)``), e.g. the position of
the last anchored checkpoint.

Concurrency: WAL mode, every append is one ``BEGIN IMMEDIATE`` transaction (the writer lock is taken before
reading the tail, so two processes never write the same position), ``busy_timeout`` waits for the lock, and
``synchronous=FULL`` makes a committed row survive power loss -- so a row is *confirmed* as soon as
:meth:`EmbeddedLedger.append` returns.  Triggers refuse ``UPDATE`` and ``DELETE`` through SQLite, which stops
accidents; the hash chain is what catches deliberate edits of the file.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .. import _crypto
from ..errors import ClosedResourceError, LedgerError, LocalProtocolError
from .base import AnchorStatus, DamagedEntry, UnknownAnchor

__all__ = ["P_LEDGER", "EmbeddedLedger", "VerifyReport", "entry_hash"]

P_LEDGER: Final = b"streams.v1.ledg"
_ZERO: Final = bytes(32)
_MAX_POSITION: Final = (1 << 63) - 1  #: the largest INTEGER PRIMARY KEY SQLite holds
_MAX_TAG: Final = 255
_MAX_DATA: Final = 1 << 20

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    position     INTEGER PRIMARY KEY,
    tag          BLOB    NOT NULL,
    data         BLOB    NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    prev_hash    BLOB    NOT NULL,
    entry_hash   BLOB    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


def entry_hash(position: int, tag: bytes, data: bytes, timestamp_ms: int, prev_hash: bytes) -> bytes:
    """The chained hash of one row (see the module docstring for the exact layout)."""
    return _crypto.hash32(
        P_LEDGER,
        struct.pack(">QI", position, len(tag)), tag,
        struct.pack(">Q", len(data)), data,
        struct.pack(">Q", timestamp_ms), prev_hash,
    )


def _tail(row: tuple[object, object, object]) -> tuple[int, int, bytes]:
    """``(position, timestamp_ms, entry_hash)`` of the last row, checked as :meth:`EmbeddedLedger.read` checks
    a row: one added to the file by hand (a negative or too large position, fields of the wrong types -- an
    INTEGER hash would make ``bytes()`` allocate that many bytes) is :class:`DamagedEntry`, never another
    error, which would end the callers that handle ledger failures (the anchoring service, status lists)."""
    position, ts, entry = row
    if not (type(position) is int and 0 < position < _MAX_POSITION and type(ts) is int
            and isinstance(entry, bytes) and len(entry) == len(_ZERO)):
        raise DamagedEntry("the ledger's last entry is damaged (added to the file by hand): nothing can follow it")
    return position, ts, entry


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :meth:`EmbeddedLedger.verify`."""

    ok: bool
    size: int  #: rows checked (all of them when ``ok``)
    head: bytes  #: ``entry_hash`` of the last good row (32 zero bytes for an empty ledger)
    bad_position: int | None = None  #: first position where the chain breaks, when not ``ok``
    reason: str | None = None  #: what is wrong there


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EmbeddedLedger:
    """The default :class:`~streams.ledger.base.Ledger`: a hash-chained SQLite file.

    Open one instance per process (or thread pool); any number of processes may append to the same file.
    ``clock`` returns milliseconds since the Unix epoch (default: the system clock); a row's timestamp is
    never earlier than its predecessor's.  Anchor ids are the decimal position.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], int] = _now_ms,
                 busy_timeout_ms: int = 10_000) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        try:
            # autocommit mode: we issue BEGIN IMMEDIATE ourselves
            self._db: sqlite3.Connection | None = sqlite3.connect(
                os.fspath(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
            )
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the embedded ledger: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedResourceError("the ledger is closed")
        return self._db

    def append(self, tag: bytes, data: bytes) -> str:
        """Append one row; it is durable (confirmed) when this returns.  Raises
        :class:`~streams.errors.LocalProtocolError` for oversized input, :class:`~streams.errors.LedgerError`
        if SQLite fails (the row was not written)."""
        if not isinstance(tag, bytes) or not isinstance(data, bytes):
            raise LocalProtocolError("tag and data must be bytes")
        if len(tag) > _MAX_TAG or len(data) > _MAX_DATA:
            raise LocalProtocolError("tag or data too large for the ledger")
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")  # take the write lock before reading the tail
                try:
                    row = db.execute(
                        "SELECT position, timestamp_ms, entry_hash FROM entries"
                        " ORDER BY position DESC LIMIT 1"
                    ).fetchone()
                    if row is None:
                        position, prev_ts, prev = 1, 0, _ZERO
                    else:
                        last, prev_ts, prev = _tail(row)
                        position = last + 1
                    ts = max(self._clock(), prev_ts)
                    h = entry_hash(position, tag, data, ts, prev)
                    db.execute(
                        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", (position, tag, data, ts, prev, h)
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OverflowError) as exc:  # (Overflow: a row at the last position, put there by hand)
                raise LedgerError(f"embedded ledger append failed: {exc}") from exc
        return str(position)

    def _row(self, anchor_id: str) -> tuple[bytes, bytes, int, int]:
        try:
            position = int(anchor_id)
        except (TypeError, ValueError):
            raise UnknownAnchor(f"not an embedded-ledger anchor id: {anchor_id!r}") from None
        with self._lock:
            db = self._conn()
            try:
                row = db.execute(
                    "SELECT tag, data, timestamp_ms, position FROM entries WHERE position = ?", (position,)
                ).fetchone()
            except (sqlite3.Error, OverflowError) as exc:
                raise LedgerError(f"embedded ledger read failed: {exc}") from exc
        if row is None:
            raise UnknownAnchor(f"no ledger entry at position {position}")
        tag, data, ts, pos = row
        if not (isinstance(tag, bytes) and isinstance(data, bytes) and type(ts) is int and type(pos) is int):
            # Written into the file by hand (append stores blobs and integers only): never coerce it (bytes() of an
            # INTEGER column would allocate that many bytes).
            raise DamagedEntry(f"the ledger entry at position {position} is damaged: a field has the wrong type")
        return tag, data, ts, pos

    def status(self, anchor_id: str) -> AnchorStatus:
        """A committed row is confirmed at once: ``ref`` is its position, ``timestamp_ms`` its time."""
        _, _, ts, position = self._row(anchor_id)
        return AnchorStatus(True, ts, position)

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        """``(tag, data)`` of the row.  This does not check the chain: call :meth:`verify` for that."""
        tag, data, _, _ = self._row(anchor_id)
        return tag, data

    def size(self) -> int:
        """Number of rows."""
        with self._lock:
            try:
                return int(self._conn().execute("SELECT count(*) FROM entries").fetchone()[0])
            except sqlite3.Error as exc:
                raise LedgerError(f"embedded ledger read failed: {exc}") from exc

    def scan(self, tag: bytes, start: int = 1, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """``(anchor_id, data)`` of at most ``limit`` rows with ``tag`` from position ``start`` on, in order (to
        look for every anchor of a channel: :func:`streams.ledger.anchoring.channel_checkpoints`).  A row whose
        data is not a blob (inserted into the file by hand: :meth:`append` writes bytes only) is nobody's record
        and is passed over.  Nothing lies beyond the last position SQLite can hold (a scan resuming after a row
        put there by hand finds nothing, rather than failing)."""
        if start > _MAX_POSITION:
            return []
        with self._lock:
            try:
                rows = self._conn().execute(
                    "SELECT position, data FROM entries WHERE position >= ? AND tag = ? AND typeof(data) = 'blob'"
                    " ORDER BY position LIMIT ?",
                    (start, tag, limit)).fetchall()
            except (sqlite3.Error, OverflowError) as exc:
                raise LedgerError(f"embedded ledger read failed: {exc}") from exc
        return [(str(p), bytes(d)) for p, d in rows]

    def verify(self, expected: tuple[int, bytes] | None = None) -> VerifyReport:
        """Walk the whole chain from position 1 and report the first break.

        ``expected = (position, entry_hash)`` is a head the caller trusts (e.g. remembered when it anchored):
        the chain must contain exactly that row, which also detects truncation of the tail.  Raises
        :class:`~streams.errors.LedgerError` only if the file cannot be read; a corrupt chain is a report.
        """
        with self._lock:
            db = self._conn()
            try:
                # One read transaction: a consistent snapshot even while other processes append.
                db.execute("BEGIN")
                try:
                    report = self._walk(db, expected)
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"embedded ledger read failed: {exc}") from exc
        return report

    @staticmethod
    def _walk(db: sqlite3.Connection, expected: tuple[int, bytes] | None) -> VerifyReport:
        prev, prev_ts, n = _ZERO, 0, 0
        cursor = db.execute(
            "SELECT position, tag, data, timestamp_ms, prev_hash, entry_hash FROM entries ORDER BY position"
        )
        for position, tag, data, ts, prev_hash, stored in cursor:
            want = n + 1

            def bad(reason: str, at: int = want, size: int = n, head: bytes = prev) -> VerifyReport:
                return VerifyReport(False, size, head, at, reason)

            if type(position) is not int or position != want:
                return bad(f"expected position {want}, found {position!r}: a row was deleted or inserted")
            if not all(isinstance(x, bytes) for x in (tag, data, prev_hash, stored)) or type(ts) is not int:
                return bad("a field has the wrong type")
            if prev_hash != prev:
                return bad("prev_hash does not match the previous row's entry_hash")
            if ts < prev_ts or ts < 0:
                return bad("timestamp runs backwards")
            if entry_hash(position, tag, data, ts, prev_hash) != stored:
                return bad("entry_hash does not match the row's contents")
            prev, prev_ts, n = stored, ts, want
        if expected is not None:
            pos, head = expected
            if pos == 0:  # the empty prefix (``head()`` of an empty ledger): its head is 32 zero bytes
                if not _crypto.ct_equal(head, _ZERO):
                    return VerifyReport(False, n, prev, 0, "the row differs from the expected head")
                return VerifyReport(True, n, prev)
            if pos > n:
                reason = f"the chain ends at {n}, before the expected head {pos}"
                return VerifyReport(False, n, prev, n + 1, reason)
            row = db.execute("SELECT entry_hash FROM entries WHERE position = ?", (pos,)).fetchone()
            if row is None or not _crypto.ct_equal(bytes(row[0]), head):
                return VerifyReport(False, n, prev, pos, "the row differs from the expected head")
        return VerifyReport(True, n, prev)

    def head(self) -> tuple[int, bytes]:
        """``(position, entry_hash)`` of the last row, ``(0, zeros)`` if empty: remember it to detect
        truncation later with ``verify(expected=...)``."""
        with self._lock:
            try:
                row = self._conn().execute(
                    "SELECT position, timestamp_ms, entry_hash FROM entries ORDER BY position DESC LIMIT 1"
                ).fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"embedded ledger read failed: {exc}") from exc
        if row is None:
            return 0, _ZERO
        position, _, entry = _tail(row)
        return position, entry

    def close(self) -> None:
        """Close the database.  Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> EmbeddedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
