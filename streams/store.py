"""Durable state in one SQLite file (WAL): identity, channel, branches, cursors, the retained log.

What the core changed is written in one transaction (:meth:`Store.commit`) *before* the driver acknowledges a
publish or hands an event to the application (THREATS 4): a ``kill -9`` at any point loses nothing that was
acknowledged, and a restart resumes from the cursors, so old messages are still rejected (THREATS 3).

Secrets at rest (the identity seed and every branch key) are encrypted with XChaCha20-Poly1305 under a key
derived from the passphrase with Argon2id (THREATS 9).  Messages are kept as received: payloads stay encrypted
under their branch keys.

WAL checkpoints run in one background thread per process, with a connection of its own per store (PASSIVE,
shortly after commits that logged messages), so copying the log back into the database file and its fsyncs stay
off the event loop; the writer's automatic checkpoint (64 MiB) is the fallback.  Durability never depends on
checkpoints.

The file is untrusted (THREATS "Parties": a store may alter or inject): the state a party acts on is authenticated under
the passphrase's key, so that whoever can write the file without the passphrase cannot change it unnoticed.  The
metadata ``role``, ``channel``, ``author_did``, ``name`` and ``did`` are the associated data of the sealed seed
(an edit: :class:`StorageError` at the open; a ``check`` row, an empty secret, or a record, tells it from a
wrong passphrase);
a branch record's fields but for its grant frames (signed by the author, checked against the bound ``grant_hash``
and epoch where used), and the branch's publishing stops (its ``chain_conflicts`` rows, below), are the associated
data of its sealed keys (an edit: :class:`StorageError` where the record is loaded, or read back while the party
runs -- :meth:`Store.branch_extras` -- naming it).  The author's
ANNOUNCE a subscriber keeps (``announce``) is a signed frame: its signature by the bound ``author_did``, for the
bound ``channel``, is checked where it is read (:meth:`Store.meta`).  These cost nothing per message: the seed at
the open, a record when it is written (a grant, a re-key, a close) or read back (a re-check, a re-subscription).
A store written before this opens with the old associated data and is upgraded in that open, in one transaction -- trust
on first open: an edit made before the upgrade cannot be told apart -- and older versions of this code cannot
open it afterwards (as a wrong passphrase).  That happens once: an upgraded store whose seed row is put back from
a copy from before the upgrade is refused (the ``check`` row, or any record sealed the new way, shows the
upgrade); a whole older copy, edited, still opens as an older store would.  Not authenticated: cursors, the log
(signed frames), and the other tables but ``chain_conflicts``; nor is replacing the file, or rows of it, with an
older genuine copy (rollback) detected.

Every ``sqlite3`` error is translated to :class:`~streams.errors.StorageError` where it enters.  A failed commit
leaves the file as it was before the transaction; the driver must then close (the in-memory core is ahead of the
disk) and reopen.

Schema (version 1)::

    meta(k TEXT PRIMARY KEY, v BLOB)
    branches(id BLOB PRIMARY KEY, rec BLOB)                      -- msgpack, keys sealed
    chains(branch, publisher, next_seq, head, covered)           -- cursors
    log(branch, publisher, seq, hash, frame)                     -- retained messages
    nonces(nonce BLOB PRIMARY KEY, expires_ms INTEGER)          -- used challenge nonces (author; see below)
    delivered(branch, publisher, seq)                            -- application cursor
    anchors(epoch, checkpoint, heads, leaves, anchor_id, state)  -- author: one row per anchor epoch
    anchor_heads(branch, publisher, seq, hash, ...)              -- latest confirmed anchored head per chain
    anchor_restores(branch, publisher, seq, hash, ...)           -- member: restore proofs a chain restarted at
    forks(branch, publisher, seq, frame_a, frame_b)              -- fork evidence
    chain_conflicts(branch, publisher, seq)                      -- member: our chain conflicts (ChainConflict)
    grants(branch, epoch, frame)                                 -- author: the grants a re-key replaced

``log`` is a rowid table (its primary key a unique index): its rows hold whole frames, and a ``WITHOUT ROWID``
b-tree spills rows over about 1 KB into overflow pages (about 2.5x the write cost per 1 KiB message, measured).
Stores created before keep their ``WITHOUT ROWID`` log: same columns, same key, same statements.

Frames of :data:`FRAME_FILE_MIN` bytes or more (in a durable store, of :data:`DURABLE_FILE_MIN` or more unless the
commit holds :data:`DURABLE_FILE_BATCH` of them: a sync of its own per commit; with the commit journal, below, a
small commit's reach it at the journal's apply) are not kept in their ``log`` row but appended to the store's frame
file, ``<store>-frames`` (mode 0600, beside the database and its ``-wal``); the
row's ``frame`` column then holds a 13-byte reference: ``0xC1`` (a byte msgpack never uses, so no frame starts with
it), then the offset and length (little-endian u64, u32). A frame read back through a reference is decoded and its
message hash compared with the row's ``hash`` (a check on the rare read, catch-up or audit, instead of a checksum
computed on every write); a frame kept in its row is checked so where it is served to a member that catches up or
redelivered after a restart (:meth:`Store.log_range`, :meth:`Store.log_page`). A large frame in SQLite is written
twice (WAL, then the checkpoint into the database) through several page-sized writes each; in the frame file it is
written once, one ``writev`` per commit: about a third of the CPU per 16 KiB message (bench). Ordering keeps
``kill -9`` safe: the frames are written inside the commit's write transaction, before ``COMMIT`` (and ``fdatasync``-ed
first when the store is durable), so a row never names bytes that were not written; a crash in between leaves
unreferenced bytes at the file's end, which are harmless (the next commit appends after them). A reference whose
bytes are missing or altered reads as :class:`StorageError` -- never as another frame. With ``durable=False`` a
power loss (not a process crash) may lose the newest commits, as SQLite's ``synchronous=NORMAL`` itself may; the
background checkpointer ``fdatasync``-s the frame file before each checkpoint so that what reaches the database
file has its frame bytes on disk (the ``-wal`` itself may reach the disk before them: a power loss can then leave
rows naming frame bytes that were never written, which read as that :class:`StorageError`), and then drops all
but the file's last :data:`FRAMES_CACHED` bytes from the page cache (:meth:`Store.settle_frames`). Nothing is ever
removed from the log, so the file only grows, like the table did.  A frame redelivered after a restart must also
name its row's position (a row edited to hold another row's frame and hash is not handed out again).

A store is thus two files (plus SQLite's ``-wal`` and ``-shm``, and ``-lock``, whose ``flock`` the running party
holds: :meth:`Store.lock`), all mode 0600 (the database is created 0600 before SQLite opens it, and SQLite gives
its ``-wal`` and ``-shm`` the database's mode; a ``-frames`` or ``-lock`` that :meth:`Store.create` finds left at
the path is made 0600 as it is taken over): :func:`backup` copies both consistently while the party runs
(``streams backup``); ``cp`` of a live store does not.

Commit journal (``journal=True``: on in :class:`streams.api.StoreOptions` by default, which the parties use; off in
:meth:`Store.create` and :meth:`Store.open` unless asked for).  A *hot* commit -- chain cursors, log rows, log cuts
and drops, used nonces, delivery cursors: what a publish or a received batch changes, no branch record, stop,
announcement or anchor -- is one record appended to ``<file>-commits`` with one ``write`` (and an ``fdatasync`` if
``durable``), not a SQLite transaction: acknowledged once appended, durable as a commit is (the page cache survives
``kill -9``; ``durable`` survives power loss).  The ``fdatasync`` may be left to the caller (``commit(...,
defer_sync=True)``; :mod:`streams._syncer` runs it on a thread while the party goes on, and acknowledges nothing
of the commit before it ended: :meth:`Store.begin_sync`, :meth:`Store.end_sync`, which takes back the records of a
failed one).  The records reach the database in one transaction per
:data:`J_APPLY_RECORDS` records, before any other use of the connection (every read and other write goes through
it), at :meth:`Store.apply_journal` (the asyncio parties call it from :data:`J_APPLY_SOON` records on,
after a publish's frames went out or a received batch was handed over, so that a commit seldom applies inside
itself, and once per heartbeat: a party gone quiet is in the
database within about half a second) and at close; that transaction also stores the last record's sequence number
(table ``journal``, made at the first apply), and the file is then emptied.  A party killed with records in it gets
them applied when it opens the store again (:meth:`Store.lock`, before anything is loaded), skipping those the
database holds (a crash between that transaction and the emptying), whether or not it journals itself.  A commit
whose frames for the frame file come to at most :data:`J_INLINE_MAX` bytes (:data:`J_INLINE_MAX_FAST` without
``durable``) carries them in its record's log rows (one append, and one sync if durable, not one of each for the
frame file as well); the apply writes them to the frame file, one write for its batch, before its transaction, and a
replay leaves them in their rows (as a short frame is kept).  A record is its payload's length, its sequence number
and a BLAKE2b-128 of the three, then msgpack ``[[statement, rows], ...]``, ``statement`` an index into a fixed list
(the file holds no SQL); the first record cut short, altered or naming no statement of the list ends the journal
(logged), as a bad frame ends a WAL, and records that skip a sequence number are refused (:class:`StorageError`).
The digest is a checksum, not a MAC: the rows it carries are of tables the database does not authenticate either.
Readers that do not lock the store (``streams status``, ``audit``) see records once applied; :func:`backup` reads
the journal before its snapshot and applies to the copy what the snapshot lacks (and refuses a destination with a
journal beside it; :meth:`Store.open` refuses a journal beside a copy never opened, as it does a ``-wal``).  An
apply that fails is logged, and the next hot commit tries it first and fails with it: nothing more is acknowledged,
and the journal stays about a batch long.  An append that fails, or an emptying that fails, stops the journal until
the store is opened again (what the file holds after it is not known).  With ``durable=False`` nothing of this is
synced (as at ``synchronous=NORMAL``): a power loss may take the database's newest commits and keep the journal's
later records.  So every write transaction of a party that journals takes a journal sequence number too (recorded in
it: ``Store._wtx``), and so does its :meth:`Store.lock`, which covers what was written before it journaled (by a
party without the journal, an older version): such a loss always shows as a hole before the journal's first record.
The open of a store without ``durable`` then drops the journal's records, logged (those commits are lost, as
``synchronous=NORMAL`` loses its newest), and records their numbers as used (the same journal found again is behind
the database); a durable store's open refuses the hole (no power loss makes one there), and any open refuses a hole
between two of the journal's records (one file's records follow each other: damage).  60-170 us less per message end
to end here, one awaited publish at a time (README, Benchmarks).

:meth:`Store.open` writes nothing to a file before it knows it is a store (its ``meta`` rows, read through a
connection that neither creates the file nor changes its journal mode) and the passphrase opens it: only then
does it switch to WAL mode and add the tables of later versions.  Metadata and rows of the wrong type or range (a
damaged or edited file that passes SQLite's check) are :class:`StorageError` where they are read.

The anchoring tables were added after version 1 without a version bump: they are only ever *added*
(``CREATE TABLE IF NOT EXISTS`` at every open), so a version-1 file written before them opens unchanged and
gains them, and no older reader reads them.

``nonces`` (author side) holds the challenge nonces used, until they expire.  Nothing relies on it any more: the
author's challenge key is drawn anew at every start (SPEC 8.3), so a challenge of an earlier run fails its MAC, and
the running core keeps the nonces used in its run in memory.  (Before, the key outlived a restart and these rows
were all that refused a copied SUBSCRIBE replayed after one -- rows that are not authenticated, which whoever can
write the file can delete.)  They are still written, so that the file stays what older versions of this code expect
(for them the rows still refuse such a copy), deleted once expired (the author's timer, once a challenge lifetime,
a bounded batch a tick, against the handshake's clock, SPEC 8.3, whose times the expiries are -- with any row of an
expiry no challenge of the run can have: nobody needs an expired one, and the file must not grow by a row per
subscription for good), and
no longer read back at an open: they could never match a challenge of the new run, and they filled the core's
bounded table (``CoreConfig.max_nonces``) -- newcomers were refused until they expired, or for good where rows were
written with a far expiry.

``chain_conflicts`` (member side) keeps, for our own chain of a branch, the seq at which the author's signed
ACK showed it to conflict with the author's copy (SPEC 12: the store is older than the chain), so that the stop
on publishing there outlives the process.  It is the :attr:`~streams.core.ChainRecord.conflict` of the chain's
record, kept out of ``chains`` because it is rare: a row is written or deleted only in a commit whose chain record
changes it.  It was added as the tables above were: a store written before has none, and opens without a
conflict.

The stops are bound to their branch's record (THREATS "Parties": whoever deletes the row without the passphrase would
have the next run sign a fork at a position the author holds -- evidence against the honest member; a MAC per row
could not show a deletion): the record's keys are sealed under its fields *and* its branch's stops
(:func:`_record_ad`; a record with no stop exactly as before), and a commit that sets, changes or lifts a stop seals
the record again in the same transaction (rare: one record). A stop row deleted, edited or added is then
:class:`StorageError` "branch record ... was altered" where the record is loaded (the party's open, ``streams
status``, ``streams audit``'s finding), never a silent publish. A stop of a branch that has no record is bound to
nothing (nothing reads it). The metadata row ``stops`` (a sealed empty secret) says the store binds them, and so does
its ``check`` row, sealed under its own associated data since (``_CHECK_STOPS_AD``); a store written before has
neither (its ``check`` is sealed the earlier way): its records were sealed without their stops, so there a record that
opens only so is taken as found and bound in the open (:meth:`Store._bind_stops`, which writes both rows; trust on
first open, under the store's lock: not while a party of the earlier version runs, which would go on writing stops
unbound; that open reads it as found). Deleting the ``stops`` row does not make a store look written before (its
``check`` says otherwise), and deleting both is refused at the open: so a stop row added is refused, never bound as
genuine. Residual: rollback, as above -- the ``check`` row put back from a copy of the same store from before its
binding (then a stop row added is bound at the next open), or a branch's record row put back from a copy from before
its stop was set, with the stop row deleted: setting a stop changes none of the record's fields, so any earlier copy
of the row does (such as the stale copy whose restore made the conflict), and the next run may sign a fork before the
author's ACK stops it again, as after that copy restored whole. An older version of this code (downgrades are not
supported) refuses the record of a branch whose stop was bound as altered (so does not open the store), and writes
a stop it sets unbound (so this version then refuses that record as altered).

``grants`` (author side) is a branch's grant history: each grant a re-key replaced, by epoch, written once in
the commit that makes the re-key durable, and read back only to answer a member that missed re-keys (SPEC 9.5).
It was added the same way.  The history used to be a list inside the branch record, rewritten with the record at
every change of the branch: quadratic in re-keys, and in members for a group, whose grant was O(members^2)
bytes in the first grant layout (SPEC 8.5).  A record written then keeps its list, read as the newest part of
the history (:meth:`Store.grants_between` reads the older part), until the branch is next written and the list
moves into the table.  An older version of this code opening a store written since would not see the table's history
(downgrades are not supported).

An ``anchors`` row goes ``built`` (signed checkpoint, durable before the ledger is called) -> ``written``
(ledger id known) -> ``confirmed`` (the ledger confirmed it and read it back).  Rows not ``confirmed`` are the
durable queue that survives ledger outages and crashes (THREATS 7).

``anchor_restores`` keeps every *restore* proof a member applied (SPEC 13.5: it lost its state and restarted
a chain at an anchored head), same columns as ``anchor_heads``.  ``anchor_heads`` only keeps the latest head per
chain, so the next epoch's proof replaces the restore row; this table is the lasting, verifiable record of
where the member's log of that chain legitimately starts (:mod:`streams.audit`).  At every open, a restore
row still in ``anchor_heads`` (written before this table existed) is copied into it.

``restore_marks`` holds the member's signature over each restore proof it restarted a chain at while its log held
nothing of that chain at or below the head (:func:`streams.anchor.restore_mark_digest`): the audit takes a
restore row as the start of a log only with its mark, because the rows themselves are whatever the file holds --
whoever can write it could otherwise delete everything of a chain below an anchored head and flag that head
restored.  It was added as the tables above were: a restore row written before has no mark, and the audit reads
the chain from its genesis there (SPEC 13.5).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import itertools
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.pwhash

from ._state import BranchState
from .core import AnchorRecord, BranchRecord, ChainRecord, Changes, LogRecord
from .errors import BadPassphrase, DecodeError, KeystoreError, LocalProtocolError, StorageError, VerificationError
from .identity import Identity, PublicIdentity, public_key_from_did
from .keystore import _passphrase_bytes, _warn_if_exposed, derive_key, open_secret, seal_secret
from .wire import Announce, Grant, Kind, Permission, SigningMode, decode_frame

__all__ = ["FRAME_FILE_MIN", "MEMLIMIT", "OPSLIMIT", "AnchorRow", "BackupResult", "Store", "backup"]

log = logging.getLogger("streams.store")

#: Argon2id cost for the store's passphrase key: libsodium's "interactive" (about 50 ms here), paid at each open.
OPSLIMIT: int = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT: int = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

SCHEMA_VERSION = 1

#: Bytes at the end of the frame file left in the page cache (for catch-up reads of recent frames); older bytes
#: are dropped once on disk (:meth:`Store.settle_frames`).
FRAMES_CACHED: int = 8 << 20
#: Frames at least this long go to the frame file (see the module doc).  Measured (256 frames per commit, CPU of
#: the process with its checkpointer): in SQLite a frame costs about as much as in the file up to about 900
#: bytes, then twice as much -- 17 against 9 us at 1.1 KiB, 29 against 12 at 2 KiB -- and less below (a
#: 400-byte frame: 9.7 against 11.4 us).
FRAME_FILE_MIN: int = 1024
#: A durable store ``fdatasync``-s the frame file in every commit that writes it, on top of SQLite's own sync: a
#: commit of one 1.2 KB frame took 1.0 ms instead of 0.6.  So there, frames under this size go to the file only
#: in a commit that holds at least :data:`DURABLE_FILE_BATCH` of them (a batch pays the sync once).
DURABLE_FILE_MIN: int = 4096
DURABLE_FILE_BATCH: int = 8
_REF = struct.Struct("<BQI")  # 0xC1, offset, length
_REF_TAG = 0xC1
_IOV_MAX = 512  # frames per writev call (Linux allows 1024)

#: The commit journal (module doc, "Commit journal"): a record is its head -- payload length, journal sequence number,
#: BLAKE2b-128 of the two and the payload -- then the payload, msgpack ``[[statement, rows], ...]`` where
#: ``statement`` indexes :data:`_J_OPS`: the file names statements, it holds no SQL.
_J_SUFFIX = "-commits"
_J_HEAD = struct.Struct("<IQ16s")
_J_PERSON = b"streams-commits1"
_J_OPS = (
    "INSERT OR REPLACE INTO chains VALUES (?, ?, ?, ?, ?)",
    "DELETE FROM log WHERE branch = ? AND publisher = ? AND seq > ?",
    "DELETE FROM log WHERE branch = ? AND publisher = ? AND seq <= ?",
    # OR IGNORE: the first message stored at a position stays (fork evidence is kept elsewhere).
    "INSERT OR IGNORE INTO log VALUES (?, ?, ?, ?, ?)",
    "INSERT OR REPLACE INTO nonces VALUES (?, ?)",
    "INSERT OR REPLACE INTO delivered VALUES (?, ?, ?)",
)
_J_CHAIN = 0  #: the index of the chain cursors' REPLACE in _J_OPS
_J_CUT, _J_DROP = 1, 2  #: the indices of the log's two DELETEs in _J_OPS (beyond a seq, up to one)
_J_LOG = 3  #: the index of the log's INSERT in _J_OPS
_J_NONCE, _J_SEEN = 4, 5  #: the indices of the nonces' and the delivery cursors' REPLACEs in _J_OPS
#: The REPLACEs of _J_OPS, each with its row's width and how many of its first columns make its table's key (the
#: table's only unique constraint): of several rows of one key that an apply runs together, only the last is written
#: (:func:`_j_merged`; per message, each commit of the per-message API replaces its chain's cursor).
_J_REPLACE_KEYS: dict[int, tuple[int, int]] = {_J_CHAIN: (5, 2), _J_NONCE: (2, 1), _J_SEEN: (3, 2)}
#: SQLite's integers are 64-bit: one beyond (msgpack carries up to 2**64 - 1) fails its statement.
_I64 = 1 << 63
#: Rows an INSERT of _J_OPS writes per statement where a commit or an apply has that many (:func:`_j_run`).
_J_BATCH = 64
#: What a row of _J_OPS may be where _J_BATCH of them go into one statement (a tuple from a commit, a list from a
#: journal's msgpack).
_ROW_TYPES = frozenset((tuple, list))
#: Each INSERT of _J_OPS written for _J_BATCH rows, and its columns.
_J_MANY: dict[int, tuple[str, int]] = {
    op: (sql.replace(values, ", ".join([values] * _J_BATCH)), values.count("?"))
    for op, sql in enumerate(_J_OPS) if sql.startswith("INSERT")
    for values in [sql[sql.index("VALUES ") + 7:]]
}
#: The journal's last applied sequence number, kept in the database (made at the first apply: a store that never
#: journaled has no such table).
_J_TABLE = "CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL)"
#: The greatest journal sequence number (an SQLite integer, with room: a record past it ends the journal).
_J_MAX_SEQ = 2**62
#: The largest journal a replay or a backup reads (it holds J_APPLY_RECORDS records between applies: more only
#: while applies fail); a larger one is refused, not read into memory.
_J_MAX_BYTES = 1 << 31
#: Journal records held before they are applied to SQLite in one transaction (also applied before any other use of
#: the database, and at close).
J_APPLY_RECORDS = 64
#: Records from which an asyncio party applies the journal once the frames of the commit that reached it are out
#: or its received messages handed over (streams.api): in the loop's next turn, usually between messages, rather
#: than inside the commit that reaches J_APPLY_RECORDS, whose messages would wait for it.
J_APPLY_SOON = J_APPLY_RECORDS - 8
#: A journaled commit of a durable store whose frames for the frame file come to at most this many bytes carries
#: them in its record (one append and one sync, instead of one of each for the frame file too); the apply writes
#: them there, one write and one sync for its batch.  The frames of 1 KiB or more that pending records hold in
#: memory stay under J_APPLY_RECORDS times this (8 MiB).  128 KiB: a streaming producer's publish_many of 64
#: messages of 1 KiB (and a subscriber's batch of them) is one append and one sync, which streams._syncer can run
#: off the loop -- the frame file's sync is made in the commit (measured, two processes, durable stores, 1 KiB
#: amortized: 32-34k msgs/s with 32 KiB here, 39-44k with 128 KiB and the syncer).
J_INLINE_MAX = 128 << 10
#: The same without ``durable``, where no sync is saved: the record's checksum over the frames (about 1 us a KiB)
#: and their second write at the apply cost more than the frame file's ``writev`` above a few KiB (measured: a
#: commit of one 16 KiB frame took 30 us at p50 that way, 21 with the ``writev``; one of 1 KiB 9 against 12).
J_INLINE_MAX_FAST = 4 << 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS branches (id BLOB PRIMARY KEY, rec BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chains (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, next_seq INTEGER NOT NULL, head BLOB NOT NULL,
    covered INTEGER NOT NULL, PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    frame BLOB NOT NULL, PRIMARY KEY (branch, publisher, seq));
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivered (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anchors (
    epoch INTEGER PRIMARY KEY, checkpoint BLOB NOT NULL, heads BLOB NOT NULL, leaves BLOB NOT NULL,
    anchor_id TEXT, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS anchor_heads (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    key_epoch INTEGER NOT NULL, epoch INTEGER NOT NULL, anchor_id TEXT NOT NULL, checkpoint BLOB NOT NULL,
    idx INTEGER NOT NULL, tree_size INTEGER NOT NULL, path BLOB NOT NULL, ledger_verified INTEGER NOT NULL,
    restored INTEGER NOT NULL, PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anchor_restores (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    key_epoch INTEGER NOT NULL, epoch INTEGER NOT NULL, anchor_id TEXT NOT NULL, checkpoint BLOB NOT NULL,
    idx INTEGER NOT NULL, tree_size INTEGER NOT NULL, path BLOB NOT NULL, ledger_verified INTEGER NOT NULL,
    restored INTEGER NOT NULL, PRIMARY KEY (branch, publisher, seq)) WITHOUT ROWID;
INSERT OR IGNORE INTO anchor_restores SELECT branch, publisher, seq, hash, key_epoch, epoch, anchor_id, checkpoint,
    idx, tree_size, path, ledger_verified, restored FROM anchor_heads WHERE restored = 1;
CREATE TABLE IF NOT EXISTS grants (
    branch BLOB NOT NULL, epoch INTEGER NOT NULL, frame BLOB NOT NULL, PRIMARY KEY (branch, epoch));
CREATE TABLE IF NOT EXISTS forks (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, frame_a BLOB NOT NULL,
    frame_b BLOB NOT NULL, PRIMARY KEY (branch, publisher, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain_conflicts (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (branch, publisher)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restore_marks (
    branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, mark BLOB NOT NULL,
    PRIMARY KEY (branch, publisher, seq)) WITHOUT ROWID;
"""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# Associated data of the store's sealed values (THREATS "Parties": the file is untrusted; see the module doc).  The
# seed's binds the metadata a party acts on, a branch record's keys bind the record's plaintext fields, so an edit
# of either without the passphrase no longer opens.  The ``_OLD`` ones are those of stores written before.
_SEED_AD_OLD = b"streams.store.identity"
_KEYS_AD_OLD = b"streams.store.keys"
_BRANCH_ID_SIZE = 16  #: (wire.py: a branch id on the wire; the core makes 16 random bytes)
#: (an upgraded store whose seed row is that of a copy from before the upgrade)
_ROLLED_BACK = ("{} was altered: its seed is sealed the older way but the store was upgraded (its seed rolled back "
                "to a copy from before the upgrade); restore a backup")
_CHECK_AD = b"streams.store.check"  #: an empty secret: the passphrase is right (tells altered metadata apart)
#: The ``check`` row as written since publishing stops were bound: the passphrase is right, *and* this store's
#: records bind their stops.  A ``check`` under :data:`_CHECK_AD` is a store of the version before (bound at its
#: first open, :meth:`Store._bind_stops`); so the ``stops`` row below deleted does not make a store look older.
_CHECK_STOPS_AD = b"streams.store.check.stops"
#: An empty secret, the ``stops`` metadata row: this store's branch records bind their publishing stops
#: (:func:`_record_ad`); written at the create, or at the first open of a store written before.  Like ``check``, it
#: also tells a right passphrase (altered metadata) from a wrong one (:meth:`Store._read_meta`).
_STOPS_AD = b"streams.store.stops"
#: The metadata the seed's sealing binds (the values :meth:`Store.meta` returns are those checked at the open).
_BOUND = ("role", "channel", "author_did", "name", "did")


def _markers(key: bytes) -> dict[str, bytes]:
    """The metadata rows this version writes beside the seed (at the create, the authentication upgrade and the
    binding of stops): ``check`` and ``stops``, empty secrets sealed under ``key``."""
    return {"check": seal_secret(key, b"", _CHECK_STOPS_AD), "stops": seal_secret(key, b"", _STOPS_AD)}


def _opens(key: bytes, sealed: object, ad: bytes) -> bool:
    """Whether the metadata row ``sealed`` (an empty secret; anything but bytes if missing or damaged) opens under
    ``key`` and ``ad``."""
    if not isinstance(sealed, bytes):
        return False
    try:
        open_secret(key, sealed, ad)
    except KeystoreError:
        return False
    return True


def _seed_ad(meta: dict[str, Any]) -> bytes:
    return b"streams.store.identity.2" + _pack([meta.get(k) for k in _BOUND])


def _keys_ad(bid: bytes, v: list[Any]) -> bytes:
    """A branch record's fields as written (msgpack packs a value one way only, so the decoded record packs back
    to the same bytes), but for its sealed keys (``v[7]``) and its grant frames: the current grant (``v[4]``) and
    the history an older record holds (``v[11]``) are frames the author signed, checked where they are used --
    against the record's ``grant_hash`` and epoch, which are bound -- so that a damaged one is left out or issued
    again, as for a damaged ``grants`` row, instead of refusing the whole record.  Computed only when a record is
    written (a grant, a re-key, a close: not per message) or loaded."""
    return b"streams.store.keys.2" + bid + _pack(v[:4] + v[5:7] + v[8:11] + v[12:])


def _record_ad(bid: bytes, v: list[Any], stops: list[list[int]]) -> bytes:
    """The associated data a branch record's keys are sealed under: :func:`_keys_ad`, and the branch's publishing
    stops (its ``chain_conflicts`` rows, ``[publisher, seq]`` in order) if it has any (SPEC 12; THREATS "Parties": a row
    deleted, edited or added without the passphrase no longer matches the record, and a deletion is what a MAC of
    its own could not show).  A record with no stop is sealed exactly as before stops were bound.  msgpack is
    prefix-free: the fields packed are a whole value, so no other record's fields can run into the stops."""
    ad = _keys_ad(bid, v)
    return ad + _pack(["chain_conflicts", stops]) if stops else ad


def _stops_of(conflicts: dict[tuple[bytes, int], int], bid: bytes) -> list[list[int]]:
    """The publishing stops of branch ``bid`` in ``conflicts`` ((branch, publisher) -> seq), as bound."""
    return sorted([p, s] for (b, p), s in conflicts.items() if b == bid)


@dataclass(frozen=True, slots=True)
class AnchorRow:
    """One anchor epoch of the author (table ``anchors``).  ``heads[i]`` is the head whose blinded leaf is
    ``leaves[i]`` (sorted leaf order, so ``i`` is its leaf index): ``(branch, publisher, seq, hash,
    key_epoch)``."""

    epoch: int
    checkpoint: bytes  #: encoded, signed :class:`~streams.anchor.EpochCheckpoint`
    heads: list[tuple[bytes, int, int, bytes, int]]
    leaves: list[bytes]
    anchor_id: str | None
    state: str  #: "built", "written" or "confirmed"

    def __repr__(self) -> str:
        return f"AnchorRow(epoch={self.epoch}, heads={len(self.heads)}, anchor_id={self.anchor_id}, {self.state})"


_AH_INSERT = ("INSERT OR REPLACE INTO anchor_heads (branch, publisher, seq, hash, key_epoch, epoch, anchor_id, "
              "checkpoint, idx, tree_size, path, ledger_verified, restored) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_AH_SELECT = ("SELECT branch, publisher, seq, hash, key_epoch, epoch, anchor_id, checkpoint, idx, tree_size, path, "
              "ledger_verified, restored FROM anchor_heads")
_AR_INSERT = ("INSERT OR IGNORE INTO anchor_restores (branch, publisher, seq, hash, key_epoch, epoch, anchor_id, "
              "checkpoint, idx, tree_size, path, ledger_verified, restored) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_AR_SELECT = ("SELECT branch, publisher, seq, hash, key_epoch, epoch, anchor_id, checkpoint, idx, tree_size, path, "
              "ledger_verified, restored FROM anchor_restores ORDER BY branch, publisher, seq")


def _ah_row(r: AnchorRecord) -> tuple[Any, ...]:
    return (r.branch, r.publisher, r.seq, r.hash, r.key_epoch, r.epoch, r.anchor_id, r.checkpoint, r.index,
            r.tree_size, b"".join(r.path), int(r.ledger_verified), int(r.restored))


def _ah_record(r: tuple[Any, ...]) -> AnchorRecord:
    """An ``anchor_heads`` or ``anchor_restores`` row's record.  Raises ValueError for a column of the wrong type
    or form (SQLite keeps whatever a damaged or edited row holds)."""
    if not (_count(r[1]) and _count(r[2]) and _count(r[4]) and _count(r[5]) and _count(r[8]) and _count(r[9])
            and all(type(r[i]) is bytes for i in (0, 3, 7, 10)) and len(r[10]) % 32 == 0 and type(r[6]) is str
            and type(r[11]) is int and type(r[12]) is int):
        raise ValueError("a column of an anchored head")
    path = bytes(r[10])
    return AnchorRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                        tuple(path[i:i + 32] for i in range(0, len(path), 32)), bool(r[11]), bool(r[12]))


#: The suffixes of a store's side files: SQLite's (``-journal`` is SQLite's rollback journal, not ours), the frame
#: file, the lock file, the commit journal -- what a failed create removes, and the CLI's clean-up of a first run
#: that got no grant (``streams subscribe``).
_SIDE_FILES = ("-wal", "-shm", "-journal", "-frames", "-lock", _J_SUFFIX)

#: (device, inode) of each database file a :class:`Store` of this process has open, and how many have it.  A
#: descriptor of such a file opened and closed outside SQLite drops every POSIX lock the process holds on it, its
#: connections' included (SQLite's "how to corrupt", 2.2): another process's connection then takes itself for the
#: last one when it closes, checkpoints and deletes the live ``-wal`` and ``-shm``, and the party's next commits go
#: to a deleted file (lost by a ``kill -9``: THREATS 4).  So no such file is opened here (:func:`_check_wal`,
#: :func:`_new_database`).  Stores open and close on any thread: every use holds :data:`_OPEN_LOCK`.  A store that is
#: garbage-collected unclosed (its SQLite connection goes with it) is uncounted too, through a finalizer that only
#: queues its file in :data:`_OPEN_DROPPED`: a finalizer may run inside any allocation, also on a thread that holds
#: the lock, so it must not take it; the queue is applied under the lock at the registry's next use.
_OPEN_FILES: Counter[tuple[int, int]] = Counter()
_OPEN_LOCK = threading.Lock()
_OPEN_DROPPED: list[tuple[int, int]] = []


def _open_files() -> Counter[tuple[int, int]]:
    """:data:`_OPEN_FILES` with the files of stores dropped unclosed uncounted; call with :data:`_OPEN_LOCK` held."""
    while _OPEN_DROPPED:
        _uncount(_OPEN_DROPPED.pop())
    return _OPEN_FILES


def _uncount(file: tuple[int, int]) -> None:
    _OPEN_FILES[file] -= 1
    if _OPEN_FILES[file] <= 0:
        del _OPEN_FILES[file]


def _is_open(file: tuple[int, int] | None) -> bool:
    """Whether a store of this process has the database file ``file`` open."""
    with _OPEN_LOCK:
        return file in _open_files()


def _dropped(file: tuple[int, int] | None, fds: list[int]) -> None:
    """The finalizer of a :class:`Store` garbage-collected unclosed (its SQLite connections go with it): close the
    descriptors it held, and queue its file to be uncounted (:data:`_OPEN_FILES`; not under the lock here)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    if file is not None:
        _OPEN_DROPPED.append(file)


def _file_id(p: Path) -> tuple[int, int] | None:
    """``p``'s (device, inode), or None if it cannot be stat-ed."""
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Store:
    """One party's durable state.  Create with :meth:`create`, reopen with :meth:`open`.  Not thread-safe: use
    it from one thread (the event loop's)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, key: bytes, identity: Identity, *,
                 durable: bool = True, journal: bool = False) -> None:
        self._db = conn
        self.path = path
        self._key = key
        self.identity = identity
        self._durable = durable
        self._closed = False
        #: The database file's own path, absolute and through any symlinks (as SQLite finds its ``-wal``): its side
        #: files and the checkpointer's connection stay beside it if the process changes its working directory, and
        #: a store opened through a link to the file shares them -- its ``-lock`` above all (one party per store).
        self._abs_path = path.resolve()
        self._frames_path = Path(f"{self._abs_path}-frames")
        self._frames_fd: int | None = None  #: opened at the first large frame written or read
        #: The commit journal (module doc): on if ``journal``; a party's lock() replays one left either way.
        self._journal = journal
        self._j_path = Path(f"{self._abs_path}{_J_SUFFIX}")
        self._j_fd: int | None = None  #: opened by lock() (replay) or the first journaled commit
        self._j_seq = 0  #: the last record written or applied
        self._j_size = 0  #: the journal file's length (what a failed append is cut back to)
        self._j_pending: list[tuple[int, list[Any]]] = []  #: written and not yet applied, in order
        self._j_records = 0  #: records in _j_pending
        self._j_carries = False  #: whether a record in _j_pending carries frames for the frame file
        #: An append failed: what it left in the file is unknown (a cut-back can fail too), so no record is
        #: appended after it -- every later hot commit fails; the next open's replay ends at the damage.
        self._j_failed: str | None = None
        #: A commit made with ``defer_sync`` was written since the last begin_sync (commit()).
        self._j_unsynced = False
        #: The journal as the last sync (or apply, or a commit synced in place) left it durable: its length, the
        #: ops of _j_pending and the records they come from, its last sequence number.  A failed sync cuts the
        #: journal back to it (end_sync): what was written after it was never acknowledged.
        self._j_durable: tuple[int, int, int, int] = (0, 0, 0, 0)
        #: The same, as the running sync will leave it (begin_sync); None once an apply made it durable already.
        self._j_round: tuple[int, int, int, int] | None = None
        #: Records taken back after a failed sync are still in the file (the cut failed too): close marks the
        #: database past them if no apply does.
        self._j_uncut = False
        self._lock_fd: int | None = None  #: held by the party that runs on this store (see lock)
        self._frames_unsynced = False  #: written since the last fdatasync (durable=False only)
        self._frames_dropped = 0  #: the frame file's bytes before this were dropped from the page cache
        self._settling = threading.Lock()
        #: Transactions committed by :meth:`commit` since this store was opened (group commit is observable).
        self.commits = 0
        self._ck_kicked = False  #: a checkpoint is queued with the process's checkpointer
        #: The rows of ``chain_conflicts`` (read at the first use): (branch, publisher) -> seq.
        self._conflicts: dict[tuple[bytes, int], int] | None = None
        #: The checkpointer's connection to this file (used on its thread only; closed by close, or with the store
        #: if it is dropped unclosed).
        self._ck_conn: sqlite3.Connection | None = None
        self._file = _file_id(path)  #: counted in _OPEN_FILES while open
        #: The lock's and the frame file's descriptors while open: what :func:`_dropped` closes.
        self._fds: list[int] = []
        if self._file is not None:
            with _OPEN_LOCK:
                _open_files()[self._file] += 1
        #: If this store is garbage-collected unclosed, its descriptors are closed (the lock above all: else every
        #: later lock of the store in this process is refused) and its file uncounted.  Close detaches it.
        self._dropped = weakref.finalize(self, _dropped, self._file, self._fds)
        self._dropped.atexit = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, did={self.identity.did!r})"

    @property
    def _conn(self) -> sqlite3.Connection:
        """The database connection, with every journaled commit applied first: whatever reads or writes through it
        sees what was acknowledged (the hot path writes the journal only)."""
        if self._j_pending:
            self._j_apply()
        return self._db

    # -- opening -----------------------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path, durable: bool) -> sqlite3.Connection:
        """A connection to the existing file ``path`` (never created here), with this store's settings; nothing is
        written to the file (see :meth:`_prepare`)."""
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            # WAL checkpoints (copying the log back into the database, with fsyncs even at synchronous=NORMAL)
            # run in a background thread (Store._checkpointer), off the event loop.  This connection's own
            # automatic checkpoint stays as a safety net, at 16000 pages (64 MiB with 4 KiB pages).
            conn.execute("PRAGMA wal_autocheckpoint=16000")
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        return conn

    @staticmethod
    def _prepare(conn: sqlite3.Connection, path: Path) -> None:
        """The first writes of an open: WAL mode and the schema (tables added since version 1).  Only for a file
        known to be a store (or one :meth:`create` just made): opening anything else must leave it as it was."""
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc

    @classmethod
    def create(cls, path: str | os.PathLike[str], identity: Identity, passphrase: str | bytes, *,
               role: str, channel: bytes, author_did: str, name: str = "", durable: bool = True,
               opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT, journal: bool = False) -> Store:
        """Create a new store.  Raises :class:`LocalProtocolError` if ``path`` already holds something (an empty
        file is taken), if ``<path>-frames`` or ``<path>-lock`` is there but not a regular file (a symlink), or for
        a bad argument (an empty passphrase is one), :class:`StorageError` if the disk fails, or ("in use") if the
        store's lock is held: a party runs there, or another process creates the same path at the same time.  The
        lock (:meth:`lock`) is taken before the file is made, and the new store keeps it.  A create that fails
        leaves nothing behind: the arguments are checked and the key derived before the disk is touched, and the
        files it made are removed (an empty file it took is left empty)."""
        p = Path(path)
        try:  # the store keeps the seed, and open() rebuilds the identity from it: they must agree
            same = Identity.from_seed(identity.export_seed()).did == identity.did
        except Exception:
            same = False
        if not same:
            raise LocalProtocolError("a store's identity is an Identity (its DID the one its seed gives)")
        try:
            _check_meta({"role": role, "channel": channel, "author_did": author_did, "name": name})
        except ValueError as exc:
            raise LocalProtocolError(f"cannot create a store: its {exc} is not valid") from None
        if isinstance(passphrase, str | bytes | bytearray) and not passphrase:
            # As a keystore: secrets sealed under no secret are not encrypted at rest (THREATS 9).
            raise LocalProtocolError("refusing to create a store under an empty passphrase")
        salt = os.urandom(16)
        key = derive_key(passphrase, salt, opslimit, memlimit)
        meta: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "role": role, "channel": channel, "author_did": author_did, "name": name,
            "salt": salt, "opslimit": opslimit, "memlimit": memlimit, "did": identity.did,
        }
        meta["seed"] = seal_secret(key, identity.export_seed(), _seed_ad(meta))
        meta.update(_markers(key))
        _check_side_file(Path(f"{p}-frames"))  # create truncates it: never a link's target
        _check_side_file(Path(f"{p}-lock"))  # taken below (never through a link: _take_lock)
        _check_side_file(Path(f"{p}{_J_SUFFIX}"))  # truncated below: never a link's target
        _check_new(p)  # (before the lock: a store that runs is "already exists", not "in use")
        there = {s for s in _SIDE_FILES if os.path.lexists(f"{p}{s}")}  # a dangling link is there too
        # The store's lock first, held from here on (the new store keeps it): a second creator of the same path
        # in another process would otherwise take this one's still-empty file as an empty file to create over,
        # initialise it alongside, fail, and truncate or remove it in its clean-up.
        lock_fd = _take_lock(p.resolve(), p, creating=True)
        try:
            if _J_SUFFIX in there:  # another store's records: emptied before this one exists (a crash between
                _empty_side_file(Path(f"{p}{_J_SUFFIX}"))  # the two must not leave them to its first open)
            made = _new_database(p)
        except BaseException:
            if "-lock" not in there:  # (nothing else was made)
                with contextlib.suppress(OSError):
                    os.unlink(f"{p.resolve()}-lock")
            os.close(lock_fd)
            raise
        conn: sqlite3.Connection | None = None
        try:
            conn = cls._connect(p, durable)
            cls._prepare(conn, p)
            try:
                with _tx(conn):
                    conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, _pack(v)) for k, v in meta.items()])
            except sqlite3.Error as exc:
                raise StorageError(f"cannot initialise store {p}: {exc}") from exc
            try:
                os.chmod(p, 0o600)  # created 0600 (_new_database): a belt
                # A frame or lock file left by an earlier store of this name (or made by anyone): taken over, so
                # made private as the files created here are (O_CREAT's mode applies only to a new file); nothing
                # refers to the frames (not a link's target).
                os.fchmod(lock_fd, 0o600)
                _empty_side_file(Path(f"{p}-frames"))
            except OSError as exc:
                raise StorageError(f"cannot initialise store {p}: {_reason(exc)}") from exc
        except BaseException:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            _unmake(p, made, there)
            os.close(lock_fd)  # (after the clean-up: no other creator starts before it is done)
            raise
        store = cls(conn, p, key, identity, durable=durable, journal=journal)
        store._meta = meta
        store._stops_bound = True
        store._created = (made, there)
        store._lock_fd = lock_fd
        store._fds.append(lock_fd)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, *, durable: bool = True,
             journal: bool = False) -> Store:
        """Open an existing store.  Raises :class:`BadPassphrase` for a wrong passphrase (:class:`LocalProtocolError`
        for one that is not ``str``/``bytes``, or a ``str`` UTF-8 cannot encode), :class:`StorageError`
        if the file is missing, not a store, altered (it holds SQL triggers or views, or its metadata was edited
        without the passphrase), or damaged (SQLite's
        ``quick_check`` runs first: it reads the whole file, about 80 ms for 140 MB here, so that a damaged page
        is found now, not when a fetch reaches it).
        Nothing is written to a file before it is known to be a store and the passphrase opens it; a store
        written before its state was authenticated is upgraded in this open (see the module doc)."""
        p = Path(path)
        mode = _check_regular(p)
        _check_wal(p)
        conn = cls._connect(p, durable)
        try:
            key, seed, meta, older = cls._read_meta(conn, p, passphrase)
            cls._prepare(conn, p)
        except BaseException:
            conn.close()
            raise
        store = cls(conn, p, key, Identity.from_seed(seed), durable=durable, journal=journal)
        store._meta = meta
        try:
            if older:
                store._upgrade(seed)
            else:
                store._stops_bound = store._stops_marker()
                if not store._stops_bound:
                    store._bind_stops()
        except BaseException:
            store.close()
            raise
        _warn_if_exposed(log, "store", str(p), mode)  # (create makes its files 0600)
        return store

    def _stops_marker(self) -> bool:
        """Whether the store's branch records bind their publishing stops: its ``stops`` row, or -- that row
        deleted -- its ``check`` row as this version writes it (:data:`_CHECK_STOPS_AD`).  False only for a store
        the version before wrote (``check`` under :data:`_CHECK_AD`, no ``stops``).  Raises :class:`StorageError`
        if a row does not open, or both are missing (every store since metadata was authenticated has a
        ``check``): without that, deleting them would make the store look written before, and a stop row added
        with it be bound as genuine."""
        marker = self._meta.get("stops")
        if marker is not None:
            if not _opens(self._key, marker, _STOPS_AD):
                raise StorageError(f"{self.path}: its metadata row 'stops' was altered (it does not open under "
                                   "the passphrase)")
            return True
        check = self._meta.get("check")
        if _opens(self._key, check, _CHECK_STOPS_AD):
            return True
        if _opens(self._key, check, _CHECK_AD):
            return False
        raise StorageError(f"{self.path}: its metadata rows 'check' and 'stops' were altered or deleted (the "
                           "passphrase sealed them)")

    def _bind_stops(self) -> None:
        """Bind the publishing stops of a store written before they were bound (no ``stops`` row, its ``check``
        sealed the earlier way), in one transaction: seal each record that has a ``chain_conflicts`` row again
        with its stops, add the ``stops`` row and seal ``check`` anew (:data:`_CHECK_STOPS_AD`); from then on a
        stop row deleted, edited or added is refused.  Trust on first open, as :meth:`_upgrade`: a row deleted or
        added before cannot be told from the genuine state.  Skipped (the store is read as
        found, and bound at a later open) while another party holds the store's lock -- a party of the earlier
        version would go on writing stops unbound -- or if a record does not open (the load reports it)."""
        try:
            fd = _take_lock(self._abs_path, self.path)
        except StorageError:
            return
        try:
            try:
                conflicts = self._chain_conflicts()
            except StorageError:
                return  # (a damaged row: StorageError where it is read, as before)
            rows = []
            for bid in sorted({b for b, _ in conflicts}):
                found = self._q("SELECT rec FROM branches WHERE id = ?", (bid,))
                if not found:
                    continue  # (no record to bind it to: nothing reads that stop)
                try:
                    v, keys = self._unseal_branch(bid, found[0][0])
                except (StorageError, ValueError, LookupError, TypeError):
                    return
                v[7] = seal_secret(self._key, keys, _record_ad(bid, v, _stops_of(conflicts, bid)))
                rows.append((_pack(v), bid))
            markers = _markers(self._key)
            try:
                with _tx(self._conn):
                    self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                           [(k, _pack(v)) for k, v in markers.items()])
                    self._conn.executemany("UPDATE branches SET rec = ? WHERE id = ?", rows)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot upgrade store {self.path}: {exc}") from exc
            self._meta = {**self._meta, **markers}
            self._stops_bound = True
        finally:
            os.close(fd)

    def _upgrade(self, seed: bytes) -> None:
        """:meth:`_authenticate`, under the store's lock: a party of the earlier version that still runs on the
        store holds it, and would go on sealing records the older way in the upgraded file -- records this
        version then refuses as altered, in a store the earlier version cannot open: bricked.  The lock is let
        go after (the party that opens the store takes it again: :meth:`lock`).  Raises :class:`StorageError`
        ("in use"), nothing written, if it is held."""
        try:
            fd = _take_lock(self._abs_path, self.path)
        except StorageError as exc:
            raise StorageError(f"{self.path} was written by an earlier version and is in use (another party runs "
                               "on it): stop that party before this version opens the store, which upgrades it "
                               "(README, Compatibility)") from exc
        try:
            self._authenticate(seed)
        finally:
            os.close(fd)

    @staticmethod
    def _read_meta(conn: sqlite3.Connection, p: Path,
                   passphrase: str | bytes) -> tuple[bytes, bytes, dict[str, Any], bool]:
        """(key, identity seed, metadata, whether the store is older than authenticated state) of the store on
        ``conn``, read without writing; raises as :meth:`open`."""
        try:
            meta = {k: msgpack.unpackb(v, raw=False) for k, v in conn.execute("SELECT k, v FROM meta")}
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StorageError(f"{p} is not a readable store") from exc
        if meta.get("schema") != SCHEMA_VERSION:
            raise StorageError(f"{p}: unsupported store schema {meta.get('schema')!r}")
        try:
            check = conn.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"{p} is damaged: {exc}") from exc
        if check != ("ok",):
            raise StorageError(f"{p} is damaged (SQLite's check: {check[0] if check else 'no answer'})")
        # This module makes no trigger or view.  One added to the file would run inside the party's own commits
        # (delete what was just logged, freeze a cursor) where SQLite's check does not look.
        try:
            extra = conn.execute("SELECT type FROM sqlite_master WHERE type IN ('trigger', 'view') LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"{p} is damaged: {exc}") from exc
        if extra is not None:
            raise StorageError(f"{p} holds an SQL {extra[0]}, which no store has: the file was altered")
        # A damaged or edited file must give StorageError, never a KeyError, a "bad argument" error or a decoding
        # error (the peer's fault) later: check the rows before using them.
        try:
            _check_meta(meta)
        except ValueError as exc:
            raise StorageError(f"{p}: store metadata {exc} is missing or damaged") from None
        salt, ops, mem, sealed = (meta.get(k) for k in ("salt", "opslimit", "memlimit", "seed"))
        if not (isinstance(salt, bytes) and type(ops) is int and type(mem) is int and isinstance(sealed, bytes)):
            raise StorageError(f"{p}: store metadata is missing or damaged")
        pw = _passphrase_bytes(passphrase)  # (LocalProtocolError: the caller's argument, not the file)
        try:
            key = derive_key(pw, salt, ops, mem)
        except LocalProtocolError as exc:
            raise StorageError(f"{p}: store metadata is missing or damaged") from exc
        try:
            return key, open_secret(key, sealed, _seed_ad(meta)), meta, False
        except KeystoreError:
            pass
        try:  # a store written before its metadata was bound to the seed: trusted as found (see _authenticate)
            seed = open_secret(key, sealed, _SEED_AD_OLD)
        except KeystoreError as exc:
            # Rows sealed under the key alone (empty secrets) tell the passphrase is right: ``check``, and
            # ``stops`` -- either can be deleted with the edit, so a branch record sealed under the key tells it too
            # (a store with none yet: the ``stops`` row alone).
            known = any(_opens(key, meta.get(row), ad)
                        for row, ad in (("check", _CHECK_STOPS_AD), ("check", _CHECK_AD), ("stops", _STOPS_AD)))
            known = known or _a_record_opens(conn, key)
            if known:  # the passphrase is right: what the seed's associated data binds was changed
                raise StorageError(f"{p}: store metadata (role, channel, author_did, name or did) was altered: "
                                   "it no longer matches what the passphrase sealed") from None
            raise BadPassphrase("wrong passphrase for this store (or the store was altered)") from exc
        if "check" in meta:  # only the upgrade writes it: the seed row was put back from a copy from before it
            raise StorageError(_ROLLED_BACK.format(p))
        return key, seed, meta, True

    def _authenticate(self, seed: bytes) -> None:
        """Upgrade a store written before its plaintext state was authenticated, in one transaction: seal the
        seed again with the metadata as associated data, add the passphrase check, and seal every branch record's
        keys again with the record's plaintext fields as associated data.  What the file holds now is trusted
        (trust on first open after the upgrade): an edit made before cannot be told from the genuine state.
        Raises :class:`StorageError` (nothing written) if a branch record does not open or the disk fails."""
        meta = dict(self._meta)
        meta["seed"] = seal_secret(self._key, seed, _seed_ad(meta))
        meta.update(_markers(self._key))
        conflicts = self._chain_conflicts()
        rows = []
        for bid, rec in self._q("SELECT id, rec FROM branches"):
            try:
                v = msgpack.unpackb(rec, raw=False)
                # Only the older layout is upgraded: a record already sealed the new way means the store was
                # upgraded before and its seed row put back from a copy from before that (then the attacker's
                # edits of it, and of older-layout records from that copy, would be trusted -- trust on first
                # open must happen once).
                # A branch id is 16 bytes (SPEC: wire's branch field), so the older associated data is 34 bytes
                # and never that of a record sealed the new way (``..keys.2`` + id + fields) moved to the id
                # ``.2`` + id + fields -- whose fields, unbound the older way, the attacker would choose.
                if type(bid) is not bytes or len(bid) != _BRANCH_ID_SIZE:
                    raise ValueError("a branch id is 16 bytes")
                keys = open_secret(self._key, v[7], _KEYS_AD_OLD + bid)
                v[7] = seal_secret(self._key, keys, _record_ad(bid, v, _stops_of(conflicts, bid)))
            except (ValueError, LookupError, TypeError, KeystoreError) as exc:
                raise StorageError(f"branch record {bid.hex() if isinstance(bid, bytes) else '?'} in {self.path} "
                                   "is corrupted, or " + _ROLLED_BACK.format("the store")) from exc
            rows.append((bid, _pack(v)))
        try:
            with _tx(self._conn):
                self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                       [(k, _pack(meta[k])) for k in ("seed", "check", "stops")])
                self._conn.executemany("UPDATE branches SET rec = ? WHERE id = ?", [(r, b) for b, r in rows])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot upgrade store {self.path}: {exc}") from exc
        self._meta = meta
        self._stops_bound = True
        log.warning("store %s was written before its metadata and branch records were authenticated: they are "
                    "now, trusted as found", self.path)

    def meta(self, key: str) -> Any:
        """A metadata value: role, channel, author_did, name, did, announce.  Raises :class:`StorageError` if
        the stored value is damaged.  Those the seed's sealing binds are the values checked at the open."""
        if key in _BOUND:
            return self._meta.get(key)
        rows = self._q("SELECT v FROM meta WHERE k = ?", (key,))
        if not rows:
            return None
        try:
            value = msgpack.unpackb(rows[0][0], raw=False)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"metadata {key!r} in {self.path} is damaged") from exc
        if key == "announce" and value is not None and not _is_announce_of(value, self._meta):
            # A subscriber takes it as verified (the first grant of a group must link to its hash): the author's
            # signature is checked here, as when it came from the network (THREATS "Parties").
            raise StorageError(f"the author's announcement in {self.path} was altered (not the store's author's, "
                               "signed, for its channel)")
        return value

    # -- writing -------------------------------------------------------------------------------------------------

    def commit(self, changes: Changes, delivered: dict[tuple[bytes, int], int] | None = None, *,
               defer_sync: bool = False) -> None:
        """Persist what the core changed (and application cursors) in one transaction.

        ``defer_sync``: a journaled commit of a durable store (a hot one: see the module doc) is written without
        its ``fdatasync``: :attr:`sync_owed` is then true, and it is durable once a sync begun after it (:meth:`
        begin_sync`, :meth:`end_sync`) has ended -- the caller acknowledges and sends nothing of it before.  Other
        commits are durable when this returns, whatever ``defer_sync`` says."""
        self._check_open()
        if not changes and not delivered:
            return
        chains: dict[tuple[bytes, int], ChainRecord] = {(c.branch, c.publisher): c for c in changes.chains}
        known = self._chain_conflicts() if chains or changes.branches else {}
        conflicts = [r for r in chains.values() if r.conflict != known.get((r.branch, r.publisher), 0)]
        after = known  # the stops once this commit is durable (read only: a copy where a stop changes)
        resealed: list[tuple[bytes, bytes]] = []
        if conflicts:  # (rare: nothing of this on the per-message path)
            after = dict(known)
            for r in conflicts:
                if r.conflict:
                    after[(r.branch, r.publisher)] = r.conflict
                else:
                    after.pop((r.branch, r.publisher), None)
            resealed = self._reseal_stops({r.branch for r in conflicts} - {b.id for b in changes.branches}, known,
                                          after)
        if (self._journal and self._lock_fd is not None and not conflicts and changes.announce is None
                and not changes.branches and not changes.anchored):
            self._j_commit(changes, chains, delivered, defer_sync)
            return
        try:
            with self._wtx():
                c = self._conn
                if changes.announce is not None:
                    c.execute("INSERT OR REPLACE INTO meta VALUES ('announce', ?)", (_pack(changes.announce),))
                if changes.branches:
                    c.executemany("INSERT OR REPLACE INTO branches VALUES (?, ?)",
                                  [(b.id, self._seal_branch(b, _stops_of(after, b.id))) for b in changes.branches])
                    # The grants a re-key replaced join the branch's grant history, one row each (written once,
                    # not with every later rewrite of the record).
                    history = _history_rows(changes.branches)
                    if history:
                        c.executemany("INSERT OR IGNORE INTO grants VALUES (?, ?, ?)", history)
                if conflicts:
                    # A stop set, changed or lifted is bound into its branch's record in the same transaction
                    # (_record_ad): rare, one record sealed again.
                    c.executemany("UPDATE branches SET rec = ? WHERE id = ?", resealed)
                    c.executemany("INSERT OR REPLACE INTO chain_conflicts VALUES (?, ?, ?)",
                                  [(r.branch, r.publisher, r.conflict) for r in conflicts if r.conflict])
                    c.executemany("DELETE FROM chain_conflicts WHERE branch = ? AND publisher = ?",
                                  [(r.branch, r.publisher) for r in conflicts if not r.conflict])
                # The statements a hot commit journals (_J_OPS), here in this transaction.
                for op, rows in _hot_ops(changes, chains, self._log_rows(changes.log) if changes.log else [],
                                         delivered):
                    _j_run(c, op, rows)
                if changes.anchored:
                    c.executemany(_AH_INSERT, [_ah_row(r) for r in changes.anchored])
                    # A restore proof is also kept for good: the next epoch's proof replaces it above.
                    c.executemany(_AR_INSERT, [_ah_row(r) for r in changes.anchored if r.restored])
                    c.executemany("INSERT OR IGNORE INTO restore_marks VALUES (?, ?, ?, ?)",
                                  [(r.branch, r.publisher, r.seq, r.mark) for r in changes.anchored if r.mark])
        except sqlite3.Error as exc:
            raise StorageError(f"commit to {self.path} failed: {exc}") from exc
        except OSError as exc:  # the frame file (the transaction was rolled back)
            raise StorageError(f"commit to {self.path} failed: writing {self._frames_path}: {_reason(exc)}"
                               ) from exc
        self.commits += 1
        if conflicts:  # (only once the transaction holds them)
            self._conflicts = after
        if changes.log and not self._ck_kicked:
            self._ck_kicked = True
            _CHECKPOINTER.kick(self)

    # -- the commit journal (module doc) -----------------------------------------------------------------------

    def _j_commit(self, changes: Changes, chains: dict[tuple[bytes, int], ChainRecord],
                  delivered: dict[tuple[bytes, int], int] | None, defer_sync: bool = False) -> None:
        """A hot commit (cursors, log rows, nonces, delivery cursors: no record, no stop, no anchor) as one journal
        record, one append (and an fdatasync if durable, unless ``defer_sync``: see :meth:`commit`): durable when
        this returns, applied to SQLite later."""
        failed = self.journal_error()
        if failed is not None:
            raise failed
        if self._j_records >= J_APPLY_RECORDS:
            # The last apply failed (logged): this commit fails with it, before anything is acknowledged -- the
            # journal and what it holds in memory stay bounded, and the party closes as on any failed commit.
            self._j_apply()
        try:
            log_rows = self._j_log_rows(changes.log) if changes.log else []
        except OSError as exc:
            raise StorageError(f"commit to {self.path} failed: writing {self._frames_path}: {_reason(exc)}"
                               ) from exc
        try:
            ops = _hot_ops(changes, chains, log_rows, delivered)
            fd = self._j_open()
            seq = self._j_seq + 1
            record = _j_record(seq, _pack(ops))
            try:
                _write_all(fd, record)
                if self._durable and defer_sync:
                    self._j_unsynced = True
                elif self._durable:
                    _datasync(fd)  # (and every deferred one before it)
            except BaseException as exc:
                self._j_failed = _reason(exc) if isinstance(exc, OSError) else type(exc).__name__
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._j_size)  # (a record cut short would end the journal at the replay)
                raise
        except OSError as exc:
            raise StorageError(f"commit to {self.path} failed: writing {self._j_path}: {_reason(exc)}") from exc
        self._j_size += len(record)
        self._j_seq = seq
        self._j_pending.extend(ops)
        self._j_records += 1
        if self._durable and not defer_sync:
            # (its fdatasync covered every record before it: a sync under way has nothing more to make durable)
            self._j_durable, self._j_round = self._j_now(), None
        self.commits += 1
        if changes.log and not self._ck_kicked:
            self._ck_kicked = True
            _CHECKPOINTER.kick(self)
        if self._j_records >= J_APPLY_RECORDS:
            try:
                self._j_apply()
            except StorageError as exc:  # (this commit is durable in the journal; the next one retries first)
                log.warning("%s", exc)

    @property
    def defers_syncs(self) -> bool:
        """Whether commits made with ``defer_sync`` may owe a sync (a durable store that journals)."""
        return self._durable and self._journal

    @property
    def written_seq(self) -> int:
        """The number of the journal's last record written (or of the last transaction that took one)."""
        return self._j_seq

    @property
    def durable_seq(self) -> int:
        """The number of the last record known durable: synced, applied into SQLite, or of a transaction."""
        return self._j_durable[3]

    @property
    def sync_owed(self) -> bool:
        """Whether a commit made with ``defer_sync`` was written since the last :meth:`begin_sync`."""
        return self._j_unsynced

    def begin_sync(self) -> int:
        """Begin the sync that makes every commit written so far durable: returns the journal's descriptor, for
        the caller to ``fdatasync`` (:func:`sync_fd`, on a thread of its own: the event loop runs on meanwhile;
        the descriptor stays open until :meth:`close`, which the caller calls only once the sync has ended),
        then to report with :meth:`end_sync`.  Raises :class:`StorageError` if nothing is owed."""
        self._check_open()
        if not self._j_unsynced or self._j_fd is None:
            raise StorageError(f"no sync of {self._j_path} is owed")
        self._j_unsynced = False
        self._j_round = self._j_now()
        return self._j_fd

    def end_sync(self, exc: BaseException | None) -> StorageError | None:
        """Report the sync begun by :meth:`begin_sync`: ``exc`` what it raised (None: the commits written before
        it are durable), and return the :class:`StorageError` to raise for a failed one.  A failed sync stops the
        journal as a failed append does (no later commit is made) and takes back every record written since the
        last sync that ended well (or apply): they leave the journal and are not applied at close -- nothing of
        them was acknowledged, and nothing of them is found when the store is opened again (the file is cut back
        to that point; where that cut fails too, the database is marked past them, by the next apply or at close,
        so that the next open's replay skips them).  What an apply into SQLite made durable meanwhile stays
        (:attr:`durable_seq`: the caller answers those commits' waiters as durable)."""
        if exc is None:
            if self._j_round is not None:
                self._j_durable, self._j_round = self._j_round, None
            return None
        # (Records an apply into SQLite, or a commit synced in place, made durable while it ran are not taken
        # back: _j_durable moved past them; durable_seq tells the caller which commits those are.)
        self._j_round, self._j_unsynced = None, False
        reason = _reason(exc) if isinstance(exc, OSError) else type(exc).__name__
        if self._j_failed is None:
            self._j_failed = f"syncing it: {reason}"
        size, ops, records, _ = self._j_durable
        del self._j_pending[ops:]
        # (_j_seq stays at the last number used: whatever marks the database next -- the apply at close, a write
        # transaction -- marks it past the records taken back, so that a replay skips them even where the cut
        # below fails and they stay in the file.)
        self._j_records = records
        if self._j_fd is not None and self._j_size > size:
            try:
                os.ftruncate(self._j_fd, size)
                self._j_size = size
            except OSError as cut:
                self._j_uncut = True
                log.warning("cannot cut %s back after a failed sync: %s", self._j_path, _reason(cut))
        return self.journal_error()

    def journal_error(self) -> StorageError | None:
        """Why the journal stopped (a failed append, emptying or sync: no hot commit is made after it), or None."""
        if self._j_failed is None:
            return None
        return StorageError(f"commit to {self.path} failed: an earlier write of {self._j_path} failed "
                            f"({self._j_failed}); close and open the store again")

    def _j_now(self) -> tuple[int, int, int, int]:
        return self._j_size, len(self._j_pending), self._j_records, self._j_seq

    @property
    def journal_pending(self) -> int:
        """Commit journal records not yet applied to the database."""
        return self._j_records

    def apply_journal(self) -> None:
        """Apply what the commit journal holds to the database now (it is applied by itself every
        :data:`J_APPLY_RECORDS` records, before any other use of the database, and at close): for a party going
        idle, so that readers that do not lock the store (``streams status``, ``audit``, ``backup``) see it.
        Raises :class:`StorageError` if the write fails (the records stay in the journal)."""
        self._check_open()
        if self._j_pending:
            self._j_apply()

    def _j_open(self) -> int:
        """The journal's descriptor, opened (created 0600, never through a link) at the first append."""
        if self._j_fd is None:  # (the party's lock() replayed the journal and set _j_seq first)
            # (its name survives a power loss too, as SQLite's -wal's does)
            fd = _open_regular(self._j_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, sync_dir=self._durable)
            try:
                size = os.fstat(fd).st_size
            except OSError:
                os.close(fd)
                raise
            self._j_fd = fd
            self._fds.append(fd)
            self._j_size = size
        return self._j_fd

    def _j_apply(self) -> None:
        """Apply the pending records in one transaction that also records the last one's sequence number (a crash
        before the truncate below replays none of them twice), then empty the journal."""
        try:
            # The frames the records carry go to the frame file first, one write for the batch (kept spilled: a
            # retry after a failure below does not write them again).
            self._j_pending = self._j_spill(self._j_pending)
            self._j_carries = False
            _j_exec(self._db, self._j_pending, self._j_seq)
        except OSError as exc:
            raise StorageError(f"commit to {self.path} failed: writing {self._frames_path}: {_reason(exc)}"
                               ) from exc
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            raise StorageError(f"commit to {self.path} failed: applying {self._j_path}: {exc}") from exc
        self._j_pending = []
        self._j_records = 0
        if self._j_fd is not None:
            try:
                os.ftruncate(self._j_fd, 0)
                self._j_size = 0
            except OSError as exc:  # (the replay skips what the database holds; the file must not grow on)
                self._j_failed = f"emptying it: {_reason(exc)}"
                log.warning("cannot empty %s: %s", self._j_path, _reason(exc))
        self._j_durable, self._j_round = self._j_now(), None  # (in SQLite, synced)

    def _j_spill(self, ops: list[tuple[int, list[Any]]]) -> list[tuple[int, list[Any]]]:
        """``ops`` with the frames their log rows carry for the frame file written there (:meth:`_spill`, all of
        them at once).  Raises OSError."""
        if not self._j_carries:  # (no record since the last apply carries one: no rows to look through)
            return ops
        at = [i for i, (op, rows) in enumerate(ops)
              if op == _J_LOG and any(len(r[4]) >= FRAME_FILE_MIN for r in rows)]
        if not at:
            return ops
        spilled = self._spill([r for i in at for r in ops[i][1]])
        out = list(ops)
        k = 0
        for i in at:
            n = len(ops[i][1])
            out[i] = (_J_LOG, spilled[k:k + n])
            k += n
        return out

    @contextlib.contextmanager
    def _wtx(self) -> Iterator[None]:
        """A write transaction of the party (what the journal holds applied first, as for any use of the
        database).  While it journals, the transaction also takes the journal's next sequence number: a commit
        that a power loss takes from the database then shows as a hole before the journal's later records (module
        doc), never records that follow it unnoticed.  (``prune_nonces`` deletes outside it: rows nothing relies
        on.)"""
        c = self._conn
        mark = self._journal and self._lock_fd is not None
        with _tx(c):
            yield
            if mark:
                _j_mark(c, self._j_seq + 1)
        if mark:
            self._j_seq += 1
            if not self._j_pending:  # (applied first, in _conn: the journal holds nothing the database lacks)
                self._j_durable, self._j_round = self._j_now(), None

    def _j_applied(self) -> int:
        try:
            return _j_applied(self._db)
        except sqlite3.Error as exc:
            raise StorageError(f"query on {self.path} failed: {exc}") from exc
        except ValueError:
            raise StorageError(f"the row of table journal in {self.path} is damaged") from None

    def _j_replay(self) -> None:
        """Under the store's lock: apply the records a party that stopped without closing (a crash, ``kill -9``)
        left in the journal, those the database does not hold yet, then empty it; note where writing resumes."""
        applied = self._j_applied()
        try:
            fd = _open_regular(self._j_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            self._j_seq, self._j_size = applied, 0
            self._j_durable = self._j_now()
            return
        except OSError as exc:
            raise StorageError(f"cannot open {self._j_path}: {_reason(exc)}") from exc
        keep = False
        try:
            try:
                data = _read_all(fd)
            except OSError as exc:
                raise StorageError(f"cannot read {self._j_path}: {_reason(exc)}") from exc
            last, done, used = _j_apply_new(self._db, data, applied, self._j_path, lossy=not self._durable)
            if used < len(data):
                log.warning("%s: %d bytes after its last whole record were dropped (an append cut short by a crash, "
                            "or damage)", self._j_path, len(data) - used)
            if done:
                log.info("%s: %d journaled commits applied", self.path, done)
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                raise StorageError(f"cannot empty {self._j_path}: {_reason(exc)}") from exc
            self._j_seq, self._j_size = max(last, applied), 0
            self._j_durable = self._j_now()
            keep = self._journal
            if keep:
                self._j_fd = fd
                self._fds.append(fd)
        finally:
            if not keep:
                os.close(fd)

    # -- anchoring (THREATS 7) -----------------------------------------------------------------------------------

    def anchor_add(self, row: AnchorRow) -> None:
        """Queue a built (signed) epoch durably, before the ledger is called."""
        heads = _pack([list(h) for h in row.heads])
        self._write("INSERT INTO anchors VALUES (?, ?, ?, ?, ?, ?)",
                    (row.epoch, row.checkpoint, heads, b"".join(row.leaves), row.anchor_id, row.state))

    def anchor_written(self, epoch: int, anchor_id: str) -> None:
        """Record the ledger id of an epoch's write (not yet confirmed)."""
        self._write("UPDATE anchors SET anchor_id = ?, state = 'written' WHERE epoch = ?", (anchor_id, epoch))

    def anchor_confirmed(self, epoch: int, heads: list[AnchorRecord]) -> None:
        """Mark an epoch confirmed and make its heads the latest anchored heads, in one transaction."""
        self._check_open()
        try:
            with self._wtx():
                self._conn.execute("UPDATE anchors SET state = 'confirmed' WHERE epoch = ?", (epoch,))
                self._conn.executemany(_AH_INSERT, [_ah_row(r) for r in heads])
        except sqlite3.Error as exc:
            raise StorageError(f"commit to {self.path} failed: {exc}") from exc

    def anchors(self, pending_only: bool = False) -> list[AnchorRow]:
        """Anchor epochs in order; ``pending_only``: those not confirmed yet (the durable queue)."""
        sql = "SELECT epoch, checkpoint, heads, leaves, anchor_id, state FROM anchors"
        if pending_only:
            sql += " WHERE state != 'confirmed'"
        return [self._anchor_row(r) for r in self._q(sql + " ORDER BY epoch")]

    def anchor(self, epoch: int) -> AnchorRow | None:
        rows = self._q("SELECT epoch, checkpoint, heads, leaves, anchor_id, state FROM anchors WHERE epoch = ?",
                       (epoch,))
        row = rows[0] if rows else None
        return None if row is None else self._anchor_row(row)

    def anchor_last(self, confirmed: bool = False) -> AnchorRow | None:
        """The latest anchor epoch, whatever its state: the ``prev`` of the next checkpoint (``confirmed``: the
        latest confirmed one)."""
        sql = "SELECT epoch, checkpoint, heads, leaves, anchor_id, state FROM anchors"
        if confirmed:
            sql += " WHERE state = 'confirmed'"
        rows = self._q(sql + " ORDER BY epoch DESC LIMIT 1")
        row = rows[0] if rows else None
        return None if row is None else self._anchor_row(row)

    def anchor_checkpoints(self, since: int = 0) -> dict[int, bytes]:
        """Encoded checkpoints of the anchor epochs from ``since`` on, whatever their state (without the heads)."""
        return {e: bytes(c) for e, c in self._q("SELECT epoch, checkpoint FROM anchors WHERE epoch >= ?", (since,))}

    def anchored_heads(self) -> list[AnchorRecord]:
        """The latest confirmed anchored head of every chain.  Raises :class:`StorageError` for a damaged row."""
        return self._ah_records("anchor_heads", _AH_SELECT)

    def anchor_restores(self) -> list[AnchorRecord]:
        """Every restore proof this member applied (where it restarted a chain after losing its state), in
        (branch, publisher, seq) order; kept when later proofs replace the chain's latest anchored head.  Raises
        :class:`StorageError` for a damaged row."""
        return self._ah_records("anchor_restores", _AR_SELECT)

    def restore_marks(self) -> dict[tuple[bytes, int, int], bytes]:
        """This member's restore marks, ``(branch, publisher, seq) -> signature`` (see ``restore_marks`` in the
        module docstring): unchecked, as stored.  Raises :class:`StorageError` for a row of the wrong types."""
        rows = self._q("SELECT branch, publisher, seq, mark FROM restore_marks")
        if not all(type(b) is bytes and _count(p) and _count(s) and type(m) is bytes for b, p, s, m in rows):
            raise StorageError(f"a row of table restore_marks in {self.path} is damaged")
        return {(b, p, s): m for b, p, s, m in rows}

    def _ah_records(self, table: str, sql: str) -> list[AnchorRecord]:
        try:
            return [_ah_record(r) for r in self._q(sql)]
        except ValueError:
            raise StorageError(f"a row of table {table} in {self.path} is damaged") from None

    def fork_add(self, branch: bytes, publisher: int, seq: int, frame_a: bytes, frame_b: bytes, *,
                 replace: bool = False) -> bool:
        """Keep fork evidence; False if this position already had some (unless ``replace``: the caller found the
        row there not to verify -- the table is not authenticated -- and this evidence takes its place)."""
        self._check_open()
        try:
            with self._wtx():
                sql = "INSERT OR REPLACE INTO forks" if replace else "INSERT OR IGNORE INTO forks"
                cur = self._conn.execute(sql + " VALUES (?, ?, ?, ?, ?)", (branch, publisher, seq, frame_a, frame_b))
                return cur.rowcount == 1
        except sqlite3.Error as exc:
            raise StorageError(f"commit to {self.path} failed: {exc}") from exc

    def forks(self) -> list[tuple[bytes, int, int, bytes, bytes]]:
        """Every fork evidence kept: (branch, publisher, seq, frame_a, frame_b)."""
        return [tuple(r) for r in self._q("SELECT branch, publisher, seq, frame_a, frame_b FROM forks")]

    def _anchor_row(self, r: tuple[Any, ...]) -> AnchorRow:
        """An ``anchors`` row.  Raises :class:`StorageError` for a column of the wrong type or form."""
        if not (_count(r[0]) and type(r[1]) is bytes and type(r[3]) is bytes and len(r[3]) % 32 == 0
                and (r[4] is None or type(r[4]) is str) and r[5] in ("built", "written", "confirmed")):
            raise StorageError(f"a row of table anchors in {self.path} is damaged (epoch {r[0]!r})")
        # (The heads column is plain msgpack, not sealed: an edited one must fail here, typed, not as an unpacking
        # error in whoever reads the heads -- the audit, the anchoring service's start.)
        bad = StorageError(f"anchor row {r[0]} in {self.path} is corrupted (its heads column)")
        try:
            heads = [tuple(h) for h in msgpack.unpackb(r[2], raw=False)] if type(r[2]) is bytes else None
        except (ValueError, TypeError) as exc:
            raise bad from exc
        if heads is None or not all(_anchor_head(h) for h in heads):
            raise bad
        leaves = bytes(r[3])
        return AnchorRow(r[0], bytes(r[1]), heads,
                         [leaves[i:i + 32] for i in range(0, len(leaves), 32)], r[4], r[5])

    def _reseal_stops(self, branches: set[bytes], before: dict[tuple[bytes, int], int],
                      after: dict[tuple[bytes, int], int]) -> list[tuple[bytes, bytes]]:
        """``(rec, id)`` of the stored records of ``branches`` sealed again under the stops ``after`` (they open
        under those ``before``): for a commit that changes a branch's stops without writing its record.  A branch
        with no record is left out (nothing to bind the stop to: no record, nothing reads it).  Raises
        :class:`StorageError` if a record was altered or is corrupted: the commit must not seal it as genuine."""
        out = []
        for bid in sorted(branches):
            found = self._q("SELECT rec FROM branches WHERE id = ?", (bid,))
            if not found:
                continue
            try:
                v, keys = self._unseal_branch(bid, found[0][0], _stops_of(before, bid))
            except (ValueError, LookupError, TypeError) as exc:
                raise StorageError(f"branch record {bid.hex()} in {self.path} is corrupted") from exc
            v[7] = seal_secret(self._key, keys, _record_ad(bid, v, _stops_of(after, bid)))
            out.append((_pack(v), bid))
        return out

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        self._check_open()
        try:
            with self._wtx():
                self._conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"commit to {self.path} failed: {exc}") from exc

    def prune_nonces(self, now_ms: int, latest_ms: int | None = None, limit: int | None = None) -> bool:
        """Delete the used-nonce rows expired before ``now_ms`` and, with ``latest_ms``, those expiring after it
        (none the running author can have written: rows of an earlier run's clock, or of whoever edited the file).
        Both are times of the author's handshake clock (:meth:`AuthorCore.handshake_time`).  With ``limit``, at
        most that many rows, so that the caller's event loop is not held for the whole table at once (a store an
        older version of this code wrote holds a row per subscription it ever admitted: millions); returns True if
        rows to delete may remain (``limit`` of them were deleted: call again), else False.  Raises
        :class:`StorageError` if the write fails."""
        self._check_open()
        try:
            # (> NULL, without latest_ms, holds for no row; LIMIT -1: no limit)
            cur = self._conn.execute("DELETE FROM nonces WHERE nonce IN (SELECT nonce FROM nonces "
                                     "WHERE expires_ms < ? OR expires_ms > ? LIMIT ?)",
                                     (now_ms, latest_ms, -1 if limit is None else limit))
        except sqlite3.Error as exc:
            raise StorageError(f"deleting expired nonces in {self.path} failed: {exc}") from exc
        return limit is not None and cur.rowcount >= limit

    # -- reading -------------------------------------------------------------------------------------------------

    def load_branches(self) -> list[BranchRecord]:
        return [self._open_branch(bid, rec) for bid, rec in self._q("SELECT id, rec FROM branches")]

    def load_chains(self) -> list[ChainRecord]:
        """Every chain's cursor (and conflict).  Raises :class:`StorageError` for a row of the wrong types (a
        damaged file)."""
        rows = self._q("SELECT branch, publisher, next_seq, head, covered FROM chains")
        for b, p, n, h, c in rows:
            if not (type(b) is bytes and _count(p) and _count(n) and type(h) is bytes and _count(c)):
                raise StorageError(f"a row of table chains in {self.path} is damaged (branch "
                                   f"{b.hex() if type(b) is bytes else '?'}, publisher {p!r})")
        conflicts = self._chain_conflicts()
        return [ChainRecord(b, p, n, h, c, conflicts.get((b, p), 0)) for b, p, n, h, c in rows]

    def _chain_conflicts(self) -> dict[tuple[bytes, int], int]:
        """The rows of ``chain_conflicts``, read once.  Raises :class:`StorageError` for a damaged row."""
        if self._conflicts is None:
            rows = self._q("SELECT branch, publisher, seq FROM chain_conflicts")
            for b, p, s in rows:
                if not (type(b) is bytes and _count(p) and _count(s) and s > 0):
                    raise StorageError(f"a row of table chain_conflicts in {self.path} is damaged (branch "
                                       f"{b.hex() if type(b) is bytes else '?'}, publisher {p!r})")
            self._conflicts = {(b, p): s for b, p, s in rows}
        return self._conflicts

    def load_nonces(self, now_ms: int) -> list[tuple[bytes, int]]:
        return list(self._q("SELECT nonce, expires_ms FROM nonces WHERE expires_ms >= ?", (now_ms,)))

    def log_range(self, branch: bytes, publisher: int, lo: int, hi: int, *,
                  on_damage: Callable[[StorageError], None] | None = None) -> list[bytes]:
        """Retained frames of a chain with ``lo <= seq <= hi``, in order: what the author serves a member that
        catches up.  Every frame is checked against its row's hash, those kept in their rows too (as
        :meth:`log_page` does): a damaged frame is never handed out as the message at its position, and raises
        :class:`StorageError` naming the position -- or, given ``on_damage``, is handed to it, and the frames
        before it are returned (none after it: a chain is read in order)."""
        rows = self._q("SELECT seq, frame, hash FROM log WHERE branch = ? AND publisher = ? AND seq BETWEEN ? AND ? "
                       "ORDER BY seq", (branch, publisher, lo, hi))
        out = []
        for s, f, h in rows:
            try:
                out.append(self._frame(f, h, check=True))
            except StorageError as exc:
                err = StorageError(f"the logged message at branch {branch.hex()} publisher {publisher} seq {s}: "
                                   f"{exc}")
                if on_damage is None:
                    raise err from exc
                on_damage(err)
                break
        return out

    def log_page(self, branch: bytes, publisher: int, lo: int, hi: int, limit: int) -> list[tuple[int, bytes]]:
        """At most ``limit`` retained ``(seq, frame)`` of a chain with ``lo <= seq <= hi``, in order: a bounded
        read, however sparse the range (a chain's log may start far above 1: a member that joined late).  Every
        frame is checked against its row's hash, those kept in their rows too: this is the redelivery read, and
        a damaged frame would otherwise be skipped there as one we cannot read (:class:`StorageError`)."""
        rows = self._q("SELECT seq, frame, hash FROM log WHERE branch = ? AND publisher = ? AND seq BETWEEN ? AND ? "
                       "ORDER BY seq LIMIT ?", (branch, publisher, lo, hi, limit))
        return [(s, self._frame(f, h, check=True)) for s, f, h in rows]

    def log_hole(self, branch: bytes, publisher: int, below: int) -> tuple[int, bytes, int, bytes | None] | None:
        """The first hole in a chain's log below ``below`` (a member taking up the fetch of its own messages again,
        SPEC 13.5): ``(lo, prev, hi, final)`` -- the rows at ``lo..hi`` are missing, ``prev`` is the hash of the
        row at ``lo - 1`` (b"": none, the hole is at the chain's start) and ``final`` the hash the row at ``hi + 1``
        links to (None: no row there, the hole runs to ``below``).  The chain starts at 1, or after the latest
        restore mark kept for it (a member that lost its state starts its log there).  None if there is none, or
        if the row after it is damaged.  Raises :class:`StorageError` for a row of the wrong types."""
        marked = self._q("SELECT MAX(seq) FROM restore_marks WHERE branch = ? AND publisher = ? AND seq < ?",
                         (branch, publisher, below))
        first = 1 + (marked[0][0] if marked and _count(marked[0][0]) else 0)
        span = self._q("SELECT MIN(seq), MAX(seq), COUNT(*) FROM log WHERE branch = ? AND publisher = ? AND "
                       "seq >= ? AND seq < ?", (branch, publisher, first, below))
        lo_, hi_, n_ = span[0] if span else (None, None, 0)
        if first >= below or (n_ and hi_ == below - 1 and lo_ == first and n_ == hi_ - lo_ + 1):
            return None  # (the common case, whole: one count over the index, not a search for the gap)
        if n_ and lo_ == first:
            rows = self._q("SELECT seq, hash FROM log AS l WHERE branch = ? AND publisher = ? AND seq >= ? AND "
                           "seq < ? AND NOT EXISTS (SELECT 1 FROM log WHERE branch = l.branch AND "
                           "publisher = l.publisher AND seq = l.seq + 1) ORDER BY seq LIMIT 1",
                           (branch, publisher, first, below - 1))
            if not rows:
                return None
            s, h = rows[0]
            if not (_count(s) and type(h) is bytes):
                raise StorageError(f"a row of table log in {self.path} is damaged")
        else:
            s, h = first - 1, b""  # nothing at the chain's start
        nxt = self._q("SELECT seq, frame, hash FROM log WHERE branch = ? AND publisher = ? AND seq > ? AND seq < ? "
                      "ORDER BY seq LIMIT 1", (branch, publisher, s, below))
        if not nxt:
            return s + 1, h, below - 1, None
        n, f, nh = nxt[0]
        try:
            head = decode_frame(self._frame(f, nh, check=True)).head
        except (DecodeError, StorageError):
            # The row after the hole is damaged: what the hole must end in is unknown, so it is not fetched (the
            # party opens all the same; the audit reports the row).
            return None
        prev = getattr(head, "prev", None)
        return (s + 1, h, n - 1, prev) if _count(n) and type(prev) is bytes else None

    def log_entry(self, branch: bytes, publisher: int, seq: int) -> tuple[bytes, bytes] | None:
        """(hash, frame) stored at a position, or None."""
        rows = self._q("SELECT hash, frame FROM log WHERE branch = ? AND publisher = ? AND seq = ?",
                       (branch, publisher, seq))
        return None if not rows else (rows[0][0], self._frame(rows[0][1], rows[0][0]))

    def log_hash(self, branch: bytes, publisher: int, seq: int) -> bytes | None:
        """The message hash stored at a position, or None (without reading the frame)."""
        rows = self._q("SELECT hash FROM log WHERE branch = ? AND publisher = ? AND seq = ?", (branch, publisher, seq))
        return None if not rows else bytes(rows[0][0])

    def grants_between(self, branch: bytes, lo: int, hi: int) -> list[bytes]:
        """The grant history of ``branch`` for epochs ``lo..hi``, oldest first: as far back from ``hi`` as it goes
        without a hole (empty if ``hi`` is missing).  A record written before the ``grants`` table existed still
        holds its history itself (:meth:`branch_extras`), until the branch is next written."""
        rows = self._q("SELECT epoch, frame FROM grants WHERE branch = ? AND epoch BETWEEN ? AND ? ORDER BY epoch",
                       (branch, lo, hi))
        out: list[bytes] = []
        want = hi
        for epoch, frame in reversed(rows):
            if epoch != want:
                break
            out.append(bytes(frame))
            want -= 1
        out.reverse()
        return out

    def branch_extras(self, branch: bytes) -> tuple[bytes, bytes, list[bytes]] | None:
        """(grant frame, admission evidence, earlier grants held in the record) of a stored branch, or None --
        keeping none of its keys (the core keeps none of them in memory once stored).  The earlier grants are
        empty but in records written before the ``grants`` table existed: see :meth:`grants_between`.  Raises
        :class:`StorageError` if the record was altered since the open checked it: the evidence is what the
        author's revocation re-checks judge, and what it writes into the record again."""
        rows = self._q("SELECT rec FROM branches WHERE id = ?", (branch,))
        if not rows:
            return None
        try:
            # The record is read again from the file long after the open checked it (THREATS "Parties": the file is
            # untrusted while the party runs too): its binding is checked again.  One AEAD open of a small value,
            # on a re-check or a record write, never per message.
            v, _ = self._unseal_branch(branch, rows[0][0])
            return bytes(v[4]), bytes(v[10]), _grants(v)
        except (ValueError, LookupError, TypeError) as exc:
            raise StorageError(f"branch record {branch.hex()} in {self.path} is corrupted") from exc

    def iter_log(self) -> Iterator[tuple[bytes, int, int, bytes, bytes]]:
        """Every retained row as stored, ``(branch, publisher, seq, hash, frame)``, in position order (audit)."""
        rows = self._q("SELECT branch, publisher, seq, hash, frame FROM log ORDER BY branch, publisher, seq")
        for b, p, s, h, f in rows:
            yield b, p, s, h, self._frame(f, h)

    def log_count(self) -> int:
        return int(self._q("SELECT count(*) FROM log")[0][0])

    def delivered(self) -> dict[tuple[bytes, int], int]:
        """The application's cursor of each chain.  Raises :class:`StorageError` for a damaged row."""
        out = {}
        for b, p, s in self._q("SELECT branch, publisher, seq FROM delivered"):
            if not (type(b) is bytes and _count(p) and _count(s)):
                raise StorageError(f"a row of table delivered in {self.path} is damaged (branch "
                                   f"{b.hex() if type(b) is bytes else '?'}, publisher {p!r})")
            out[(b, p)] = s
        return out

    def lock(self) -> None:
        """Claim the store for the party that runs on it: an exclusive ``flock`` on ``<file>-lock`` beside it, held
        until :meth:`close` (the kernel drops it if the process dies).  A second party on the same store -- another
        process, or this one -- would sign the same sequence numbers twice (forks).  Readers that do not lock
        (``streams status``, ``audit``, ``backup``) still work.  A file of its own, never the database: closing
        any descriptor of the database file would drop SQLite's POSIX locks held by this process (SQLite's "how
        to corrupt", 2.2).  Raises :class:`StorageError` if it is taken."""
        self._check_open()
        if self._lock_fd is not None:
            return
        fd = self._lock_fd = _take_lock(self._abs_path, self.path)
        try:
            self._j_replay()
            if self._journal:
                # A mark of its own (_wtx): what was written before this party journaled -- by a party without
                # the journal, an older version, the open's own upgrades -- is then covered too: a power loss that
                # takes it takes the mark, and leaves a hole before this party's records.
                try:
                    with self._wtx():
                        pass
                except sqlite3.Error as exc:
                    raise StorageError(f"commit to {self.path} failed: {exc}") from exc
        except BaseException:
            # Not claimed: a second lock() must replay and mark again, not find the lock held.
            self._lock_fd = None
            os.close(fd)
            jfd = self._j_fd
            if jfd is not None:  # (the replay kept it for this party's appends)
                self._j_fd = None
                self._fds.remove(jfd)
                os.close(jfd)
            raise
        self._fds.append(fd)

    def discard(self) -> None:
        """Close a store :meth:`create` just made and remove the files it made (its caller failed after the
        create, which must then leave nothing behind): the database (an empty file it took is left empty), its
        ``-wal``, ``-shm``, ``-frames`` and ``-lock``, unless they were there before.  A store from :meth:`open`
        is only closed.  The lock is held until the files are gone, as in a failed create: let go first, it could
        be taken by another process creating the same path, on the ``-lock`` file about to be removed."""
        held = None
        if self._created is not None and not self._closed:
            held, self._lock_fd = self._lock_fd, None  # (close would let it go before the removal)
        try:
            self.close()
            if self._created is None:
                return
            # Beside the absolute path, as the side files were made: the process may have changed its working
            # directory since, and a relative ``path`` would then name another store's files.
            _unmake(self._abs_path, *self._created)
        finally:
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held)

    def close(self) -> None:
        if not self._closed:
            if self._j_pending:
                try:
                    self._j_apply()
                except Exception as exc:  # (in the journal: the next open applies them)
                    log.warning("%s", exc)
            if self._j_unsynced and self._j_fd is not None and self._j_failed is None:
                with contextlib.suppress(OSError):  # (the apply above made them durable in SQLite already)
                    _datasync(self._j_fd)
                self._j_unsynced = False
            if self._j_uncut and not self._j_pending:
                # Records taken back after a failed sync that could not be cut from the file: the database is
                # marked past them, so that the next open's replay skips them (what was durable is applied).
                try:
                    with _tx(self._db):
                        _j_mark(self._db, self._j_seq)
                except sqlite3.Error as exc:
                    log.warning("cannot mark %s past the records taken back from %s: %s", self.path, self._j_path,
                                exc)
            self._closed = True
            self._dropped.detach()
            self._fds.clear()  # (closed below)
            _CHECKPOINTER.release(self)
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None
            if self._frames_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._frames_fd)
                self._frames_fd = None
            if self._j_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._j_fd)
                self._j_fd = None
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - close errors are not actionable
                raise StorageError(f"closing {self.path}: {exc}") from exc
            finally:
                if self._file is not None:
                    with _OPEN_LOCK:
                        _open_files()
                        _uncount(self._file)

    # -- internals -----------------------------------------------------------------------------------------------

    _meta: dict[str, Any]
    #: The branch records bind their publishing stops (the ``stops`` row opens): one that does not is refused.
    #: Else (a store written before) a record may be sealed without its stops, as then, until _bind_stops.
    _stops_bound = False
    #: (database made, suffixes of the side files there before): from create
    _created: tuple[bool, set[str]] | None = None

    def _check_open(self) -> None:
        if self._closed:
            from .errors import ClosedResourceError

            raise ClosedResourceError("store is closed")

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement and fetch every row inside the ``try``: SQLite reads (and finds a damaged page)
        while stepping through the rows, not only in ``execute``."""
        self._check_open()
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"query on {self.path} failed: {exc}") from exc

    def _frames(self, create: bool) -> int:
        """The frame file's descriptor (append-only writes, positional reads).  Never through a symlink (ELOOP):
        frames must not be appended to a file elsewhere."""
        if self._frames_fd is None:
            # (never a FIFO either: it would take a commit's frames and keep none)
            # (Its name survives a power loss too, where a durable store's rows will refer to it, as the journal's.)
            fd = _open_regular(self._frames_path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0),
                               sync_dir=create and self._durable)
            self._frames_fd = fd
            self._fds.append(fd)
        return self._frames_fd

    def _log_rows(self, records: list[LogRecord]) -> list[tuple[bytes, int, int, bytes, bytes]]:
        """``log`` rows for ``records``, their large frames in the frame file (:meth:`_spill`).  Raises OSError
        (the caller rolls back)."""
        return self._spill(_frame_rows(records))

    def _j_log_rows(self, records: list[LogRecord]) -> list[tuple[bytes, int, int, bytes, bytes]]:
        """``log`` rows for a journaled commit: its frames in the rows, so in the record (one append), if those
        that go to the frame file come to at most :data:`J_INLINE_MAX` bytes (:data:`J_INLINE_MAX_FAST` without
        ``durable``; the apply moves them there, one write for the batch); else as :meth:`_log_rows`."""
        rows = _frame_rows(records)
        carried = sum(n for n in (len(r[4]) for r in rows) if n >= FRAME_FILE_MIN)
        if carried:
            # (Also where the frames are spilled now: a durable store's spill of fewer than DURABLE_FILE_BATCH
            # leaves those under DURABLE_FILE_MIN in the record, for the apply's batch.)
            self._j_carries = True
        if carried > (J_INLINE_MAX if self._durable else J_INLINE_MAX_FAST):
            return self._spill(rows)
        return rows

    def _spill(self, rows: list[tuple[bytes, int, int, bytes, bytes]]) -> list[tuple[bytes, int, int, bytes, bytes]]:
        """``rows`` with frames of FRAME_FILE_MIN bytes or more (DURABLE_FILE_MIN in a durable store's commit of
        fewer than DURABLE_FILE_BATCH such frames) appended to the frame file (synced if durable) and replaced by
        references.  Called inside the write transaction, or by the journal's apply before its own: no other
        writer of this store appends meanwhile.  Raises OSError."""
        out: list[tuple[bytes, int, int, bytes, bytes]] = []
        big: list[bytes] = []
        off = -1
        least = FRAME_FILE_MIN
        if self._durable and sum(1 for r in rows if len(r[4]) >= least) < DURABLE_FILE_BATCH:
            least = DURABLE_FILE_MIN
        for row in rows:
            frame = row[4]
            if len(frame) < least:
                out.append(row)
                continue
            if off < 0:
                off = os.fstat(self._frames(create=True)).st_size  # after any bytes a crash left unreferenced
            out.append((row[0], row[1], row[2], row[3], _REF.pack(_REF_TAG, off, len(frame))))
            big.append(frame)
            off += len(frame)
        if big:
            fd = self._frames(create=True)
            for i in range(0, len(big), _IOV_MAX):
                _writev_all(fd, big[i:i + _IOV_MAX])
            if self._durable:
                _datasync(fd)
            else:
                self._frames_unsynced = True
        return out

    def _frame(self, stored: bytes, h: bytes, *, check: bool = False) -> bytes:
        """A ``log`` row's frame: itself (checked against the row's hash ``h`` too if ``check``), or read from the
        frame file and checked against ``h``."""
        ref = _frame_ref(stored, self.path)
        if ref is None:
            if check and not _frame_matches(stored, h):
                raise StorageError(f"a logged frame in {self.path} does not match its hash: the store is damaged")
            return stored
        off, n = ref
        try:
            data = os.pread(self._frames(create=False), n, off)
        except OSError as exc:
            raise StorageError(f"cannot read {self._frames_path}: {_reason(exc)}") from exc
        if len(data) != n:
            raise StorageError(f"{self._frames_path} is damaged: the frame at offset {off} is missing")
        if not _frame_matches(data, h):
            raise StorageError(f"{self._frames_path} is damaged: the frame at offset {off} is altered")
        return data

    def settle_frames(self) -> None:
        """From the checkpointer's thread, before a checkpoint: ``fdatasync`` the frame file if it was written
        since the last sync (``durable=False``; durable stores sync in the commit), then drop what lies more
        than :data:`FRAMES_CACHED` bytes before its end from the page cache.  The retained log is written once
        and read rarely (catch-up, audit); left cached it only grows the page cache, and on a VM that returns
        free memory to its host (as this one does) every page of new cache costs a fault on the host: 16 KiB
        messages went from 13k to 9k msgs/s after a gigabyte (bench).  Dropped pages are clean: only synced
        bytes are dropped."""
        fd = self._frames_fd
        if fd is None:
            return
        with self._settling:  # one caller at a time: the second must not drop what the first is still syncing
            end = os.fstat(fd).st_size
            if self._frames_unsynced:
                self._frames_unsynced = False  # before the sync: a write racing it sets the flag again
                _datasync(fd)
            drop_to = (end - FRAMES_CACHED) & ~0xFFF
            if drop_to > self._frames_dropped:
                if hasattr(os, "posix_fadvise"):  # (not on macOS)
                    os.posix_fadvise(fd, self._frames_dropped, drop_to - self._frames_dropped,
                                     os.POSIX_FADV_DONTNEED)
                self._frames_dropped = drop_to

    def _seal_branch(self, b: BranchRecord, stops: list[list[int]]) -> bytes:
        """The stored form of ``b``, its keys sealed under its fields and its publishing ``stops``
        (:func:`_record_ad`: those it has once the commit that writes it is durable)."""
        # The record keeps no grant history: its earlier grants go to the ``grants`` table (commit).
        v: list[Any] = [b.id, b.epoch, b.mode, b.grant_hash, b.grant_frame, b.me, [list(m) for m in b.members],
                        None, b.state, b.peer_did, b.evidence, [], [list(f) for f in b.former], b.tail,
                        b.tail_hash]
        v[7] = seal_secret(self._key, _pack([list(k) for k in b.keys]), _record_ad(b.id, v, stops))
        return _pack(v)

    def _unseal_branch(self, bid: bytes, rec: bytes,
                       stops: list[list[int]] | None = None) -> tuple[list[Any], bytes]:
        """A stored branch record, decoded, and its keys unsealed under its binding (:func:`_record_ad`; its
        ``stops`` are the store's ``chain_conflicts`` rows of the branch unless given): :class:`StorageError`
        "was altered" if its fields or its stops no longer match its sealed keys; ValueError, LookupError or
        TypeError for one that is not a branch record at all (the caller's "corrupted").  The id column and
        the record are untrusted: a map, or an id of another type, is never a KeyError or AttributeError."""
        v = msgpack.unpackb(rec, raw=False)
        if type(bid) is not bytes or len(bid) != 16 or not isinstance(v, list):
            # (16 bytes: the binding names the id, and a longer one would run into the fields after it)
            raise ValueError("not a branch record")
        if stops is None:
            stops = _stops_of(self._chain_conflicts(), bid)
        try:
            return v, open_secret(self._key, v[7], _record_ad(bid, v, stops))
        except KeystoreError:
            if stops and not self._stops_bound:
                # A store written before stops were bound (no ``stops`` row): its records were sealed without
                # them.  (With the row, an added stop row is refused here: a stop nobody set.)
                with contextlib.suppress(KeystoreError):
                    return v, open_secret(self._key, v[7], _keys_ad(bid, v))
            raise StorageError(f"branch record {bid.hex()} in {self.path} was altered (its fields, such as its "
                               "members' keys, state, peer or evidence, or the publishing stops bound to it -- "
                               "its rows of table chain_conflicts -- no longer match its sealed keys)") from None

    def _open_branch(self, bid: bytes, rec: bytes) -> BranchRecord:
        name = bid.hex() if type(bid) is bytes else "?"
        try:
            v, sealed = self._unseal_branch(bid, rec)
            keys = msgpack.unpackb(sealed, raw=False)
            _check_branch(bid, v, keys)
            return BranchRecord(v[0], v[1], v[2], v[3], v[4], v[5], [tuple(m) for m in v[6]],
                                [tuple(k) for k in keys], v[8], v[9], v[10], _grants(v), _former(v), _tail(v),
                                _tail_hash(v))
        except (ValueError, LookupError, TypeError, KeystoreError) as exc:
            raise StorageError(f"branch record {name} in {self.path} is corrupted") from exc


@dataclass(frozen=True)
class BackupResult:
    """What :func:`backup` copied: the database (bytes), its ``log`` rows, the frame file's bytes, and how many
    frames were read back and checked against their rows' hashes (``verify``; else 0)."""

    path: Path
    db_bytes: int
    log_rows: int
    frames_bytes: int
    frames_checked: int


def backup(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, verify: bool = False,
           progress: Callable[[str, int, int], None] | None = None) -> BackupResult:
    """Copy the store at ``src`` to ``dest`` (and ``<dest>-frames``), consistently, while its party runs.

    A store is two files, and copying them with ``cp`` while a party writes is unsafe: SQLite's ``-wal`` may be
    mid-checkpoint, and the frame file may be read at a length that misses frames the copied rows name.  Here
    the database is copied as one snapshot (SQLite's online backup, in one step: a read transaction, so the
    writer is never blocked), and only then the frame file, up to its length at that moment: every row of the
    snapshot was committed after its frame bytes were written (the module doc), so they all lie within it.
    Bytes after them are unreferenced and harmless.  The commit journal (``<src>-commits``, module doc) is read
    before the snapshot, and its records the snapshot does not hold are applied to the copy: the copy has no
    journal.  Both copies are written to temporary names, synced, then
    renamed, the frame file first: an interrupted backup leaves no ``dest`` that looks whole.  No passphrase is
    needed; the copy keeps the secrets encrypted as they are.

    To restore, open the copy where it is, or, with the party stopped, delete ``<store>-wal``, ``<store>-shm`` and
    ``<store>-commits``, then move the copy to ``<store>`` and ``<dest>-frames`` to ``<store>-frames``: after a
    crash the old ``-wal`` (and journal) hold what was written after the snapshot, and would be replayed over the
    copy (:meth:`Store.open`
    refuses a copy never opened yet beside a ``-wal``, which cannot be its own; not one opened before).

    Restoring from the copy goes back to the snapshot: everything the party did after it is lost (messages,
    cursors, anchor epochs).  A party restored from a copy older than what it already sent must not publish: it
    would sign different messages at sequence numbers it already used -- forks, which every member records as
    evidence against it -- and an author's anchoring would sign a second history of the channel
    (``Author.open`` with the ledger refuses such a store with :class:`~streams.errors.LedgerConflict`, the
    anchoring service refuses once the ledger is ahead of the store, and ``streams audit --ledger`` of such a
    store fails).  Restore a copy only if the party published nothing after
    it (a copy taken once the party stopped); otherwise a member starts over with a new, empty store and
    re-subscribes (it restarts at its chains' latest anchored heads: wait for them before publishing), and an
    author's channel cannot be continued from a stale copy (keep it for audit; open a new channel).

    ``verify``: also read every logged frame of the copy back and check it against its row's hash (catch-up
    would find a damaged one only when asked for it).  ``progress(phase, done, total)`` is called as the frame
    file is copied (``"copy"``, bytes), then while verifying (``"verify"``, frames of the log's rows).

    Raises :class:`LocalProtocolError` if ``dest``, ``<dest>-frames`` or ``<dest>-commits`` exists, or a file where
    the copy is staged (``<dest>.tmp-backup``, ``<dest>-frames.tmp-backup``: never reused or deleted),
    :class:`StorageError` if
    ``src`` is not a readable store, or if the copy fails (no space, say) or does not verify -- a failed backup
    leaves nothing at ``dest``."""
    s, d = Path(src), Path(dest)
    _check_regular(s)
    d_frames = Path(f"{d}-frames")
    for target in (d, d_frames, Path(f"{d}{_J_SUFFIX}")):  # (a journal there would be replayed into the copy)
        if target.exists():
            raise LocalProtocolError(f"{target} already exists; back up to a new path")
    tmp_db, tmp_frames = Path(f"{d}.tmp-backup"), Path(f"{d}-frames.tmp-backup")
    for staged in (tmp_db, tmp_frames):
        # Not ours to reuse, nor to delete below: another backup's, one that was killed, or a file of the user's.
        if os.path.lexists(staged):
            raise LocalProtocolError(f"{staged} exists: a backup to {d} runs or was killed, or the file is "
                                     "someone else's; remove it if it is a leftover")
    made: list[Path] = []  # the staged files this call created: the only ones it removes
    try:
        # New files of mode 0600 at the temporary names, never through a link (O_EXCL: one that appeared since the
        # check above is not ours).  SQLite writes the copy into the file it finds, which it would otherwise create
        # with the umask's mode, or follow a link to.
        for t in (tmp_db, tmp_frames):
            os.close(os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            made.append(t)
        # The commit journal before the snapshot: its records that the snapshot does not hold are applied to the
        # copy (a record the party applies meanwhile is in both; the snapshot's sequence number says which).
        journal = _read_journal(Path(f"{s.resolve()}{_J_SUFFIX}"))
        try:
            source = sqlite3.connect(f"{s.resolve().as_uri()}?mode=ro", uri=True)
            try:
                source.execute("PRAGMA busy_timeout=5000")
                if source.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone() is None:
                    raise StorageError(f"{s} is not a store")
                with contextlib.closing(sqlite3.connect(tmp_db)) as copy:
                    source.backup(copy)  # one step: one consistent snapshot
                    _apply_journal_copy(copy, journal, s)
                    # One self-contained file (no -wal, -shm); the store's open turns WAL back on.
                    copy.execute("PRAGMA journal_mode=DELETE").fetchall()
            finally:
                source.close()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot back up {s}: {exc}") from exc
        total = _copy_prefix(Path(f"{s}-frames"), tmp_frames, progress)
        _fsync_path(tmp_db)
        rows, checked = _check_copy(tmp_db, tmp_frames, total, verify, progress)
        os.replace(tmp_frames, d_frames)  # the frames first: a database copy never names a missing frame file
        made.remove(tmp_frames)  # (moved: what is at that name from now on is not ours)
        os.replace(tmp_db, d)
        made.remove(tmp_db)
        _fsync_path(d.parent)
    except OSError as exc:
        raise StorageError(f"backup of {s} to {d} failed: {_reason(exc)}") from exc
    finally:
        for t in made:
            with contextlib.suppress(OSError):
                t.unlink()
    return BackupResult(d, d.stat().st_size, rows, total, checked)


_COPY_CHUNK = 8 << 20


def _open_regular(path: Path, flags: int, *, sync_dir: bool = False) -> int:
    """``os.open(path, flags)``, never through a symlink (ELOOP), created 0600 with ``O_CREAT``; raises
    :class:`StorageError` if it is not a regular file (the descriptor closed), OSError if the open fails.
    ``sync_dir``: its directory is synced too, so that its name survives a power loss (a durable store's side
    files, which acknowledged commits rely on); if that fails, the descriptor is closed and OSError raised (the
    caller keeps none, and its next commit tries again)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"{path} is not a regular file")
        if sync_dir:
            _fsync_path(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _empty_side_file(path: Path) -> None:
    """Empty (and make 0600) a side file left at a new store's path; never through a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot create store beside {path}: {_reason(exc)}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
    except OSError as exc:
        raise StorageError(f"cannot create store beside {path}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def _read_journal(path: Path) -> bytes:
    """A store's commit journal as it is now (b"" if there is none)."""
    try:
        fd = _open_regular(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return b""
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


def _apply_journal_copy(copy: sqlite3.Connection, journal: bytes, src: Path) -> None:
    """Apply to a backup's copy the journal's records it does not hold (as :meth:`Store._j_replay`)."""
    try:
        applied = _j_applied(copy)
    except ValueError:
        raise StorageError(f"the row of table journal in {src} is damaged") from None
    _j_apply_new(copy, journal, applied, Path(f"{src}{_J_SUFFIX}"))


def _j_applied(conn: sqlite3.Connection) -> int:
    """The last journal record the database holds (0 if it never applied one).  Raises ValueError for a damaged
    row, sqlite3.Error if the query fails."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'").fetchone() is None:
        return 0
    row = conn.execute("SELECT seq FROM journal WHERE id = 0").fetchone()
    if row is None:
        return 0
    if not _count(row[0]) or row[0] > _J_MAX_SEQ:
        raise ValueError("journal row")
    return int(row[0])


def _j_exec(conn: sqlite3.Connection, ops: list[tuple[int, list[Any]]], last: int) -> None:
    """Run journaled statements and record ``last`` as applied, in one transaction (sqlite3.Error if it fails)."""
    with _tx(conn):
        for op, rows in _j_merged(ops):
            _j_run(conn, op, rows)
        _j_mark(conn, last)


def _j_run(conn: sqlite3.Connection, op: int, rows: list[Any]) -> None:
    """Run statement ``op`` of :data:`_J_OPS` for each of ``rows``, in order.  An INSERT takes :data:`_J_BATCH`
    rows at a time as one statement of that many rows (the sqlite3 module's ``executemany`` costs about 0.8 us a
    row more: 2.0 against 1.2 for a log row), the rest one by one; only if every row is a tuple or list of the
    statement's columns (a journal's rows are untrusted: a row of another length, or a map, must fail as it would
    alone -- not shift its neighbours' columns, not bind a map's keys)."""
    many = _J_MANY.get(op)
    if many is not None and len(rows) >= _J_BATCH:
        sql, width = many
        if all(map(width.__eq__, map(len, rows))) and all(map(_ROW_TYPES.__contains__, map(type, rows))):
            whole = len(rows) - len(rows) % _J_BATCH
            flat = list(itertools.chain.from_iterable(rows[:whole] if whole < len(rows) else rows))
            step = _J_BATCH * width
            for i in range(0, len(flat), step):
                conn.execute(sql, flat[i:i + step])
            rows = rows[whole:]
    if rows:
        conn.executemany(_J_OPS[op], rows)


def _j_merged(ops: list[tuple[int, list[Any]]]) -> list[tuple[int, list[Any]]]:
    """``ops`` with the rows of each statement run together (one :func:`_j_run`), in their order (an apply of 64
    records made some 200 calls), where that changes nothing: no statement cuts or drops log rows (the only ones that
    share a table with another, the log's INSERT); every other statement writes a table of its own, and within
    each the rows keep their order (the last REPLACE and the first IGNORE of a key still win; of a REPLACE's rows
    of one key only the last is written: :func:`_j_last_of_key`)."""
    if len(ops) < 2 or any(op in (_J_CUT, _J_DROP) for op, _ in ops):
        return ops
    merged: dict[int, list[Any]] = {}
    for op, rows in ops:
        into = merged.get(op)
        if into is None:
            merged[op] = list(rows)
        else:
            into.extend(rows)
    for op, (width, key) in _J_REPLACE_KEYS.items():
        replaced = merged.get(op)
        if replaced is not None and len(replaced) > 1:
            merged[op] = _j_last_of_key(replaced, width, key)
    return list(merged.items())


def _j_last_of_key(rows: list[Any], width: int, key: int) -> list[Any]:
    """A REPLACE's ``rows`` with only the last of each key (its first ``key`` columns), which is what the table
    holds after all of them (each replaces the one before; no other unique constraint): an apply of 64 commits of the
    per-message API wrote the same chain's cursor 64 times, 1.4 us each.  Only if every row is a tuple or list of
    ``width`` values of the types the statement writes (a journal's rows are untrusted: one the database would
    refuse must still fail the apply, not vanish behind a later row of its key: bytes, and integers SQLite stores);
    else ``rows`` as they are."""
    last: dict[tuple[Any, ...], Any] = {}
    for r in rows:
        if type(r) not in _ROW_TYPES or len(r) != width:
            return rows
        for v in r:
            if type(v) is not bytes and (type(v) is not int or not -_I64 <= v < _I64):
                return rows
        last[tuple(r[:key])] = r
    return list(last.values()) if len(last) < len(rows) else rows


def _j_mark(conn: sqlite3.Connection, seq: int) -> None:
    """Record ``seq`` as the journal's last applied (or taken) sequence number, inside the caller's transaction."""
    conn.execute(_J_TABLE)
    conn.execute("INSERT OR REPLACE INTO journal VALUES (0, ?)", (seq,))


def _j_apply_new(conn: sqlite3.Connection, data: bytes, applied: int, path: Path, lossy: bool = False
                 ) -> tuple[int, int, int]:
    """Apply the whole records of a journal's bytes ``data`` after sequence number ``applied`` in one transaction
    that records the last one's; returns (last sequence number, records applied, bytes of whole records).  Raises
    :class:`StorageError` if the records after ``applied`` do not follow each other, or do not apply.  ``lossy``
    (a store without ``durable``): a hole before the first of them is what a power loss leaves when it takes the
    database's newest commits (module doc): logged, and the records are dropped with them -- their sequence
    numbers recorded as applied all the same, so that no later commit takes one of them again."""
    records, used = _j_parse(data)
    todo = [(seq, ops) for seq, ops in records if seq > applied]
    last = applied
    if lossy and todo and todo[0][0] != applied + 1 and all(
            b[0] == a[0] + 1 for a, b in itertools.pairwise(records)):  # (one file's records follow each other)
        log.warning("%s: record %d follows %d: the database lost its newest commits (a power loss, with "
                    "durable=False); the %d journaled commit(s) after them are dropped with them", path,
                    todo[0][0], applied, len(todo))
        todo, last = [], todo[-1][0]  # (none applied; the last one's number recorded)
    for seq, _ops in todo:
        if seq != last + 1:
            raise StorageError(
                f"{path} is damaged: record {seq} follows {last} (the database lacks the commits between: a "
                "journal of another copy of the store, or a power loss with durable=False; moving the journal "
                "aside opens the store as the database holds it, without its last commits: treat it as a stale "
                "copy, SPEC 12)")
        last = seq
    if last != applied:
        try:
            _j_exec(conn, [o for _seq, ops in todo for o in ops], last)
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            raise StorageError(f"cannot apply {path}: {exc}") from exc
    return last, len(todo), used


def _copy_prefix(src: Path, dest: Path, progress: Callable[[str, int, int], None] | None) -> int:
    """Copy ``src``'s bytes as of now (an empty file if there is none) to ``dest`` (the empty file :func:`backup`
    made), synced; their count."""
    fd_out = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fd_in = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (a FIFO: refused, not waited on)
        except FileNotFoundError:  # no frame of FRAME_FILE_MIN bytes or more was ever logged
            os.fsync(fd_out)
            return 0
        try:
            st = os.fstat(fd_in)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"{src} is not a regular file")
            total = st.st_size  # the length now: after every frame the snapshot's rows name
            done = 0
            in_kernel = hasattr(os, "copy_file_range")
            while done < total:
                n = -1
                if in_kernel:  # no copy through Python; not across file systems on every kernel
                    try:
                        n = os.copy_file_range(fd_in, fd_out, min(_COPY_CHUNK, total - done), done, done)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                        in_kernel = False
                if not in_kernel:
                    n = _copy_chunk(fd_in, fd_out, done, total)
                if n <= 0:
                    raise StorageError(f"{src} shrank while it was copied")
                done += n
                if progress is not None:
                    progress("copy", done, total)
        finally:
            os.close(fd_in)
        os.fsync(fd_out)
        return total
    finally:
        os.close(fd_out)


def _copy_chunk(fd_in: int, fd_out: int, off: int, total: int) -> int:
    """One chunk of ``_copy_prefix`` through Python (no ``copy_file_range``, or not between these files)."""
    data = memoryview(os.pread(fd_in, min(_COPY_CHUNK, total - off), off))
    done = 0
    while done < len(data):  # a short write is retried, and the retry raises the real errno (no space)
        done += os.pwrite(fd_out, data[done:], off + done)
    return len(data)


def _check_copy(db: Path, frames: Path, size: int, verify: bool,
                progress: Callable[[str, int, int], None] | None) -> tuple[int, int]:
    """(log rows, frames checked) of a copied store: SQLite's quick check passes and every frame reference lies
    within the copied frame file; with ``verify``, every frame decodes to its row's hash.  Raises StorageError."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            if conn.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise StorageError(f"the copy of the database at {db} does not pass SQLite's check")
            rows = conn.execute("SELECT count(*) FROM log").fetchone()[0]
            checked = 0
            fd = os.open(frames, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for h, stored in conn.execute("SELECT hash, frame FROM log"):
                    ref = _frame_ref(stored, db)
                    if ref is not None and ref[0] + ref[1] > size:
                        raise StorageError(f"a frame reference beyond the copied frame file ({sum(ref)} > {size})")
                    if not verify:
                        continue
                    data = stored if ref is None else os.pread(fd, ref[1], ref[0])
                    if not _frame_matches(data, h):
                        raise StorageError("a logged frame does not match its hash: the store is damaged")
                    checked += 1
                    if progress is not None and checked % 1024 == 0:
                        progress("verify", checked, rows)
            finally:
                os.close(fd)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot check the copy at {db}: {exc}") from exc
    return rows, checked


def _frame_ref(stored: bytes, where: Path) -> tuple[int, int] | None:
    """(offset, length) of a ``log`` row's frame reference, or None if the row holds the frame itself.  Raises
    StorageError for a value that is not a blob (SQLite keeps whatever a damaged or edited row holds), or a
    reference of the wrong length or beyond any file (an offset ``pread`` refuses with OverflowError)."""
    if type(stored) is not bytes:
        raise StorageError(f"damaged frame in the log of {where}")
    if stored[:1] != b"\xc1":
        return None
    if len(stored) != _REF.size:
        raise StorageError(f"damaged frame reference in {where}")
    _tag, off, n = _REF.unpack(stored)
    if off >= 1 << 63:
        raise StorageError(f"damaged frame reference in {where}")
    return off, n


def _frame_matches(data: bytes, h: bytes) -> bool:
    """Whether ``data`` decodes as a frame whose message hash is ``h`` (a frame read back from storage)."""
    try:
        return decode_frame(data, max_frame=max(len(data), 1)).hash == h
    except DecodeError:
        return False


def _history_rows(records: list[BranchRecord]) -> list[tuple[bytes, int, bytes]]:
    """``grants`` rows for the earlier grants the records carry, each at the epoch its own signed head names (a
    record's epoch need not be its grant's plus one: in stores written before 2026-11-27, a group emptied by
    ``remove_member`` was revoked at the next epoch without a grant of it)."""
    rows = []
    for b in records:
        for g in b.grants:
            try:
                head = decode_frame(g).head
            except DecodeError as exc:
                raise LocalProtocolError("a grant history entry that is not a frame") from exc
            if not isinstance(head, Grant) or head.branch != b.id:
                raise LocalProtocolError("a grant history entry that is not a grant of its branch")
            rows.append((b.id, head.epoch, g))
    return rows


def _anchor_head(h: tuple[Any, ...]) -> bool:
    """An anchor row's head of the form ``(branch, publisher, seq, hash, key_epoch)`` names (AnchorRow)."""
    return (len(h) == 5 and type(h[0]) is bytes and _count(h[1]) and _count(h[2]) and type(h[3]) is bytes
            and _count(h[4]))


def _count(v: Any) -> bool:
    """An integer >= 0 (not a bool, not text: SQLite keeps whatever a damaged or edited row holds)."""
    return type(v) is int and v >= 0


_MODES = frozenset(int(m) for m in SigningMode)
_PERMISSIONS = frozenset(int(p) for p in Permission)
_STATES = frozenset(st.value for st in BranchState)


def _check_branch(bid: bytes, v: Any, keys: Any) -> None:
    """Raise ValueError if a stored branch record (``v``, its unsealed ``keys``) holds a value of the wrong type
    or range, which the core would otherwise fail on later (an enum, a tuple to unpack)."""
    if not (isinstance(v, list) and len(v) >= 11 and v[0] == bid and _count(v[1]) and v[2] in _MODES
            and type(v[3]) is bytes and type(v[4]) is bytes and _count(v[5]) and v[8] in _STATES
            and type(v[9]) is str and type(v[10]) is bytes):
        raise ValueError("a field of the branch record")
    if not (isinstance(v[6], list) and all(
            isinstance(m, list) and len(m) == 3 and _count(m[0]) and type(m[1]) is bytes and m[2] in _PERMISSIONS
            for m in v[6])):
        raise ValueError("the members of the branch record")
    if not (isinstance(keys, list) and all(
            isinstance(k, list) and len(k) == 3 and _count(k[0]) and _count(k[1]) and type(k[2]) is bytes
            for k in keys)):
        raise ValueError("the keys of the branch record")


def _former(v: list[Any]) -> list[tuple[int, bytes, int, int]]:
    """A stored group's removed members (absent in records written before they were kept; without the author
    chain's head at the removal in those written before it was kept: 0, nothing served to them)."""
    if len(v) <= 12:
        return []
    out = [(*f, 0) if isinstance(f, list) and len(f) == 3 else tuple(f) for f in v[12]]
    if not all(len(f) == 4 and type(f[0]) is int and type(f[1]) is bytes and type(f[2]) is int and _count(f[3])
               for f in out):
        raise TypeError("former members must be (index, key, epoch, head seq)")
    return out


def _tail(v: list[Any]) -> int:
    """A closed branch's pending tail (BranchRecord.tail; absent in records written before it was kept)."""
    if len(v) <= 13:
        return 0
    if type(v[13]) is not int or v[13] < 0:
        raise TypeError("a branch's tail is a sequence number")
    return int(v[13])


def _tail_hash(v: list[Any]) -> bytes:
    """The hash a closed branch's pending tail must end with (BranchRecord.tail_hash; absent in records written
    before it was kept: b"", not checked)."""
    if len(v) <= 14:
        return b""
    if type(v[14]) is not bytes or len(v[14]) not in (0, 32):
        raise TypeError("a branch's tail hash is 32 bytes")
    return v[14]


def _grants(v: list[Any]) -> list[bytes]:
    """The earlier grants a stored branch record holds itself: only records written after grant history was kept
    and before the ``grants`` table existed (absent before, empty after).  An entry that no longer decodes as a
    grant of the branch (damaged on disk) is left out, with a warning: kept, it would fail the next commit of the
    record (:func:`_history_rows`) as the caller's error; it is a past grant, needed only by a member that is
    behind, so the party carries on without it, as for a damaged row of the ``grants`` table (its signature is
    checked where it is served)."""
    if len(v) <= 11:
        return []
    if not isinstance(v[11], list) or not all(isinstance(g, bytes) for g in v[11]):
        raise TypeError("grants must be a list of frames")
    kept = []
    for n, g in enumerate(v[11]):
        try:
            head = decode_frame(g, max_frame=max(len(g), 1)).head
        except DecodeError:
            head = None
        if isinstance(head, Grant) and head.branch == v[0]:
            kept.append(g)
        else:
            log.warning("branch record %s: its grant history entry %d is damaged (not a grant of the branch); "
                        "left out", bytes(v[0]).hex() if isinstance(v[0], bytes) else "?", n)
    return kept


def _new_database(p: Path) -> bool:
    """Make the file for a new store at ``p``, mode 0600 before SQLite opens it, so that the ``-wal`` and ``-shm``
    SQLite creates beside it get that mode too (it copies the database's): True.  An existing empty file is taken
    instead (made 0600): False.  Raises :class:`LocalProtocolError` if ``p`` holds anything else,
    :class:`StorageError` if it cannot be created."""
    made = True
    try:
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            made = False
            # Not opened unless empty: a store this process runs on must not be (see _OPEN_FILES).
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_size > 0:
                raise LocalProtocolError(f"{p} already exists; open it instead") from None
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                raise LocalProtocolError(f"{p} already exists; open it instead") from None
        try:
            st = os.fstat(fd)
            if not made and (not stat.S_ISREG(st.st_mode) or st.st_size > 0):
                raise LocalProtocolError(f"{p} already exists; open it instead")
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        if made:
            with contextlib.suppress(OSError):
                p.unlink()
        raise StorageError(f"cannot create store {p}: {_reason(exc)}") from exc
    return made


def _take_lock(abs_path: Path, shown: Path, *, creating: bool = False) -> int:
    """A descriptor of ``<abs_path>-lock`` holding its exclusive ``flock`` (see :meth:`Store.lock`).  Raises
    :class:`StorageError` ("in use") if another holder has it, or if it cannot be taken.  The lock file may have
    been removed since it was opened (a failed create's clean-up removes the one it made): a lock taken on a file
    no longer at that name locks nothing anyone else sees, so it counts as in use."""
    lock_path = f"{abs_path}-lock"
    busy = f"{shown} is in use: another party (process) runs on this store" + (" or creates it" if creating else "")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot lock {shown}: {_reason(exc)}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(busy) from None
            raise StorageError(f"cannot lock {shown}: {_reason(exc)}") from exc
        try:
            held, named = os.fstat(fd), os.lstat(lock_path)
        except FileNotFoundError:
            raise StorageError(busy) from None
        except OSError as exc:
            raise StorageError(f"cannot lock {shown}: {_reason(exc)}") from exc
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise StorageError(busy)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_new(p: Path) -> None:
    """Raise :class:`LocalProtocolError` if ``p`` holds anything but an empty regular file (what
    :func:`_new_database` refuses), :class:`StorageError` if it cannot be examined."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot create store {p}: {_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode) or st.st_size > 0:
        raise LocalProtocolError(f"{p} already exists; open it instead")


def _unmake(p: Path, made: bool, there: set[str]) -> None:
    """Undo :meth:`Store.create` at ``p``: remove the side files that were not ``there`` before it, and the database
    if it ``made`` it (an empty file it took is left empty).  Errors are dropped: the caller reports its own.  The
    caller holds the store's lock, whose ``-lock`` goes last: until then no other creator can take it, and one that
    takes it afterwards makes a lock file of its own."""
    for s in _SIDE_FILES:
        if s not in there and s != "-lock":
            with contextlib.suppress(OSError):
                Path(f"{p}{s}").unlink()
    with contextlib.suppress(OSError):
        if made:
            p.unlink()
        else:
            os.truncate(p, 0)
    if "-lock" not in there:
        with contextlib.suppress(OSError):
            Path(f"{p}-lock").unlink()


def _check_regular(p: Path) -> int:
    """Raise :class:`StorageError` unless ``p`` is a regular file (through a symlink): "no store" if there is
    nothing, "not a store" for a FIFO, a device or a directory -- SQLite, or the header read, would wait forever
    on a FIFO for a writer.  Returns its mode."""
    try:
        st = os.stat(p)
    except (FileNotFoundError, ValueError):  # ValueError: a path with a NUL byte, which names no file
        raise StorageError(f"no store at {p}") from None
    except OSError as exc:
        raise StorageError(f"cannot open store {p}: {_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"{p} is not a store (not a regular file)")
    return st.st_mode


def _check_side_file(p: Path) -> None:
    """Raise :class:`LocalProtocolError` if ``p`` (a store's ``-frames``, ``-lock`` or ``-commits``) exists and is not
    a regular file -- a symlink, whose target a create would truncate, or which the lock refuses -- and
    :class:`StorageError` if it cannot be examined."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot create store beside {p}: {_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise LocalProtocolError(f"{p} is not a regular file (a symlink?); remove it first")


def _check_wal(p: Path) -> None:
    """Refuse a ``<p>-wal`` that belongs to another database: a copy made by :func:`backup` (a self-contained file
    whose header still says rollback journal) moved over a store whose party crashed, leaving its WAL.  SQLite
    would replay that WAL's pages over the copy -- rows written after the snapshot, or a mix of the two files.
    Every store this module opened is in WAL mode (header bytes 18-19 are 2), so a WAL beside a file in rollback
    mode is never the file's own.  A file a store of this process has open is in WAL mode, and is not read here
    (:data:`_OPEN_FILES`)."""
    if _is_open(_file_id(p)):
        return
    try:
        with open(p, "rb") as f:
            head = f.read(20)
        sizes = []
        for side in ("-wal", _J_SUFFIX):
            try:
                sizes.append(os.stat(f"{p}{side}").st_size)
            except FileNotFoundError:
                sizes.append(0)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot open store {p}: {_reason(exc)}") from exc
    if head[:16] == b"SQLite format 3\x00" and head[18:20] == b"\x01\x01" and any(sizes):
        # (its commit journal likewise: the copy holds none, so records beside it are another file's)
        side = "-wal" if sizes[0] else _J_SUFFIX
        raise StorageError(f"{p}{side} is not this database's (a copy restored over a store whose {side} was "
                           f"left); if {p} is the copy to restore, delete {p}-wal, {p}-shm and {p}{_J_SUFFIX}, "
                           "then open it")


_ROLES = ("author", "subscriber")


def _check_meta(meta: dict[str, Any]) -> None:
    """Raise ValueError naming the first of the metadata fields role, name, channel, author_did (and announce,
    which may be absent) that is missing or holds a value of the wrong type or form; its text is only the
    field's name, quoted (never the value: the caller says what to do)."""
    checks: dict[str, Callable[[Any], bool]] = {
        "role": lambda v: isinstance(v, str) and v in _ROLES,
        "name": lambda v: isinstance(v, str),
        "channel": lambda v: isinstance(v, bytes) and len(v) == 32,
        "author_did": _is_did,
        "announce": lambda v: v is None or (isinstance(v, bytes) and _is_frame(v, Kind.ANNOUNCE)),
    }
    for field, ok in checks.items():
        if not ok(meta.get(field)):
            raise ValueError(repr(field))


def _is_did(v: Any) -> bool:
    try:
        public_key_from_did(v)
    except DecodeError:
        return False
    return True


def _a_record_opens(conn: sqlite3.Connection, key: bytes) -> bool:
    """Whether one of the first few branch records' sealed keys opens under ``key`` (either layout): then the
    passphrase is right.  Anything unreadable counts as no."""
    try:
        rows = conn.execute("SELECT id, rec FROM branches LIMIT 8").fetchall()
    except sqlite3.Error:
        return False
    for bid, rec in rows:
        try:
            try:  # (a record with publishing stops binds them: _record_ad; the table is absent in older stores)
                stops = sorted([p, s] for p, s in conn.execute(
                    "SELECT publisher, seq FROM chain_conflicts WHERE branch = ?", (bid,)))
            except sqlite3.Error:
                stops = []
            v = msgpack.unpackb(rec, raw=False)
            for ad in (_keys_ad(bid, v), _record_ad(bid, v, stops), _KEYS_AD_OLD + bid):
                try:
                    open_secret(key, v[7], ad)
                    return True
                except KeystoreError:
                    pass
        except (ValueError, LookupError, TypeError):
            continue
    return False


def _is_announce_of(data: Any, meta: dict[str, Any]) -> bool:
    """``data`` is an ANNOUNCE of the channel and author DID in ``meta`` (both bound to the seed), signed by
    that author."""
    try:
        author = PublicIdentity.from_did(meta["author_did"])
        frame = decode_frame(data, max_frame=max(len(data), 1))
        a = frame.head
        if not (isinstance(a, Announce) and a.channel == meta["channel"] and a.author_sign == author.sign_public):
            return False
        author.verify(frame.hash, frame.sig)
    except (DecodeError, VerificationError, KeyError, TypeError):
        return False
    return True


def _is_frame(data: bytes, kind: Kind) -> bool:
    try:
        return decode_frame(data, max_frame=max(len(data), 1)).kind is kind
    except DecodeError:
        return False


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Checkpointer:
    """Background WAL checkpoints for every store of the process, on one thread (PASSIVE: never blocks a writer).

    One thread rather than one per store: a host running hundreds of parties had hundreds of checkpointer
    threads, each waking after its store's commits and contending for the GIL with the event loop
    (chaos/flood.py: host event loops seconds behind).  After a store's first commit that logged messages it is
    queued; the thread waits ``DELAY`` so that one checkpoint covers the commits meanwhile, then checkpoints each
    queued store through a connection of its own (sqlite3 releases the GIL while SQLite copies the WAL back and
    fsyncs, so event loops keep running).  Durability does not depend on it: a commit is durable once in the WAL
    (THREATS 4).  Errors (a full disk, say) are logged and the store is checkpointed again at its next kick; each
    writer's automatic checkpoint (64 MiB) remains the fallback."""

    #: Seconds between a kick and the checkpoint.  (Measured against kicking every 1 MiB or 4 MiB of logged
    #: messages: small, frequent checkpoints keep the WAL short and hot in the page cache, and did best for 16 KiB
    #: messages.  Then against 20 ms, interleaved two-process runs: 100 ms gave +2-4% signed-each at 1 KiB and
    #: 16 KiB, the same amortized and at 64 B -- a fifth of the syncs (each a journal commit in the kernel, on the
    #: CPUs both parties share); 250 ms gained nothing more.)
    DELAY = 0.1

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queued: dict[int, Store] = {}
        self._busy: int | None = None  #: id of the store being checkpointed
        self._thread: threading.Thread | None = None

    def kick(self, store: Store) -> None:
        with self._cond:
            self._queued[id(store)] = store
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="streams-store-checkpoint", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self, store: Store) -> None:
        """Forget a closing store: wait for a checkpoint of it in progress, close its checkpoint connection."""
        key = id(store)
        with self._cond:
            self._queued.pop(key, None)
            while self._busy == key:
                self._cond.wait()
            conn, store._ck_conn = store._ck_conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _after_fork(self) -> None:
        """In a forked child: the thread is the parent's (gone here), and so may be the condition's lock, held
        at the fork -- every kick and close would wait for it for ever.  A fresh state; the child's first kick
        starts a thread of its own.  The parent's queued stores are not the child's to checkpoint."""
        self._cond = threading.Condition(threading.Lock())
        self._queued = {}
        self._busy = None
        self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued:
                    self._cond.wait()
            time.sleep(self.DELAY)
            self._run_batch()

    def _run_batch(self) -> None:
        """Checkpoint the stores queued now.  A frame of its own: no reference to a store outlives it while the
        thread waits for the next kick (a store dropped unclosed must be collectable, its connections with it)."""
        with self._cond:
            batch, self._queued = self._queued, {}
        for key, store in batch.items():
            with self._cond:
                if store._closed:
                    continue
                self._busy = key
                store._ck_kicked = False  # commits from now on queue it again
            try:
                self._checkpoint(store)
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _checkpoint(self, store: Store) -> None:
        conn = store._ck_conn
        try:
            if conn is None:
                conn = sqlite3.connect(f"{store._abs_path.as_uri()}?mode=rw", uri=True, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=1000")
                store._ck_conn = conn
            try:
                store.settle_frames()  # what the checkpoint copies into the database refers only to bytes on disk
            except OSError as exc:
                # Not a retry-later: after a failed fdatasync the kernel may have given up on those pages.  Say
                # so, and leave the rows in the WAL (no checkpoint this round).
                log.warning("syncing %s failed: %s; frames written since its last sync may not be on disk",
                            store._frames_path, _reason(exc))
                return
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("background checkpoint of %s failed: %s", store.path, exc)


_CHECKPOINTER = _Checkpointer()


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: a lock another thread held at the fork (opening or
    closing a store: :data:`_OPEN_LOCK`; the checkpointer's) would stay held in it for good, and its first store
    call wait for ever.  Fresh ones (as :mod:`streams._parallel` does for its pools)."""
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    _CHECKPOINTER._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _hot_ops(changes: Changes, chains: dict[tuple[bytes, int], ChainRecord], log_rows: list[Any],
             delivered: dict[tuple[bytes, int], int] | None) -> list[tuple[int, list[Any]]]:
    """A commit's statements of :data:`_J_OPS` (index, rows), in order: what a hot commit journals and what any
    other commit runs in its transaction."""
    ops: list[tuple[int, list[Any]]] = []
    if chains:
        ops.append((_J_CHAIN, [(r.branch, r.publisher, r.next_seq, r.head, r.covered) for r in chains.values()]))
    if changes.log_cut:
        ops.append((_J_CUT, [tuple(r) for r in changes.log_cut]))
    if changes.log_drop:
        ops.append((_J_DROP, [tuple(r) for r in changes.log_drop]))
    if log_rows:
        ops.append((_J_LOG, log_rows))
    if changes.nonces:
        ops.append((_J_NONCE, [tuple(r) for r in changes.nonces]))
    if delivered:
        ops.append((_J_SEEN, [(b, p, s) for (b, p), s in delivered.items()]))
    return ops


def _frame_rows(records: list[LogRecord]) -> list[tuple[bytes, int, int, bytes, bytes]]:
    """``log`` rows for ``records``, each with its frame.  (Plain tuples: the sqlite3 module binds a named tuple's
    columns about 0.35 us a row slower than a tuple's, more than building the tuple costs.)"""
    rows = []
    for r in records:
        if r.frame[:1] == b"\xc1":  # a reference's tag: no frame starts with it (msgpack never uses 0xC1)
            raise LocalProtocolError("a log record that is not a frame")
        rows.append((r.branch, r.publisher, r.seq, r.hash, r.frame))
    return rows


def _j_digest(length: int, seq: int, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=_J_PERSON)
    h.update(length.to_bytes(4, "little") + seq.to_bytes(8, "little"))
    h.update(payload)
    return h.digest()


def _j_record(seq: int, payload: bytes) -> bytes:
    return _J_HEAD.pack(len(payload), seq, _j_digest(len(payload), seq, payload)) + payload


def _j_parse(data: bytes) -> tuple[list[tuple[int, list[tuple[int, list[Any]]]]], int]:
    """The whole records at the start of a journal's bytes and the bytes they take: the first record that is cut
    short, does not match its digest or is not a list of (statement index, rows) ends the journal, as a WAL's."""
    out: list[tuple[int, list[tuple[int, list[Any]]]]] = []
    pos, n = 0, len(data)
    while pos + _J_HEAD.size <= n:
        length, seq, digest = _J_HEAD.unpack_from(data, pos)
        end = pos + _J_HEAD.size + length
        if end > n or not 0 < seq <= _J_MAX_SEQ:
            break
        payload = data[pos + _J_HEAD.size:end]
        if not hmac.compare_digest(digest, _j_digest(length, seq, payload)):
            break
        try:
            ops = msgpack.unpackb(payload, raw=False)
        except (ValueError, TypeError):
            break
        if not (type(ops) is list and all(type(o) is list and len(o) == 2 and type(o[0]) is int
                                          and 0 <= o[0] < len(_J_OPS) and type(o[1]) is list for o in ops)):
            break
        out.append((seq, [(o[0], o[1]) for o in ops]))
        pos = end
    return out, pos


def _read_all(fd: int) -> bytes:
    if os.fstat(fd).st_size > _J_MAX_BYTES:
        raise StorageError(f"a commit journal of more than {_J_MAX_BYTES} bytes is not read")
    chunks: list[bytes] = []
    off = 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        off += len(b)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a short write is retried, and the retry raises the real errno (no space)
        view = view[os.write(fd, view):]


def _writev_all(fd: int, bufs: list[bytes]) -> None:
    """Write every buffer, in order; raise OSError (the real errno: a short write is retried, and the retry
    reports why -- no space, a file size limit)."""
    left = sum(map(len, bufs))
    while left > 0:
        done = os.writev(fd, bufs)
        left -= done
        if left > 0:  # a short write: the rest, from where it stopped
            i = 0
            while done >= len(bufs[i]):
                done -= len(bufs[i])
                i += 1
            bufs = [bufs[i][done:], *bufs[i + 1:]]


def sync_fd(fd: int) -> None:
    """``fdatasync`` a descriptor :meth:`Store.begin_sync` returned (safe on any thread)."""
    _datasync(fd)


def _datasync(fd: int) -> None:
    """``fdatasync`` (``fsync`` where there is none: macOS)."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - not Linux
        os.fsync(fd)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return os.strerror(exc.errno) if exc.errno else str(exc)


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
