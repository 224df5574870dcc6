"""``streams serve|subscribe|publish|tail|status|backup``: run a channel over ZeroMQ from the command line.

* ``serve`` -- the author: opens its store (or creates it from a keystore identity the first time), binds,
  admits subscribers by a TOML policy file and prints one line per event until SIGINT/SIGTERM, then closes
  cleanly (cursors persisted).  ``--publish-stdin`` publishes JSON lines ``{"to": DID or branch hex,
  "data": "..."}`` read from stdin -- how a monitor sends alerts -- and acts on ``{"revoke": ...}``,
  ``{"group": [DID, ...]}`` and ``{"remove": DID, "from": group}`` lines.
* ``subscribe`` -- a subscriber: creates its store from a keystore identity the first time, runs the
  handshake and prints the granted branch; exit status 1 if the author refuses.
* ``publish`` -- publishes one message as the subscriber and (by default) waits for the author's signed,
  durable acknowledgement.
* ``tail`` -- prints messages received (catch-up from the author's retained log happens on open).
* ``status`` -- offline: role, DID, channel, branches, chain cursors and the retained log of a store.
* ``backup`` -- a consistent copy of a store and its frame file, also while its party runs (no passphrase).

Streaming commands (``serve``, ``tail``) print one line per event; with ``--json`` one JSON object per line,
``{"event": ..., ...}`` (JSON Lines), flushed at once so scripts can follow them.  Payloads are printed as
``"data"`` (UTF-8 text) if they decode, else as ``"data_b64"``.

One passphrase (``--passphrase-env``/``--passphrase-file``) opens both the keystore (first run) and the store,
which is encrypted under it (THREATS 9).  Neither is ever printed.

``--curve`` (all four network commands) runs CurveZMQ on the connection (SPEC 14.5, defence in depth): the
endpoints' keys are the parties' X25519 keys, derived from their DIDs, so the party's identity must be known
before its endpoint is built -- from the keystore on a first run, else read from the store
(:func:`author_keys`, :func:`subscriber_keys`), which the party then opens (and locks) as usual.

The logic of each command is in small functions (:func:`open_author`, :func:`open_subscriber`,
:func:`message_doc`, :func:`event_doc`, ...) that the multi-process demo (:mod:`streams._demo_proc`) reuses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import credentials as vc
from .. import keystore
from ..anchoring_service import AnchorConfig
from ..api import ANCHOR_WAIT, Author, BranchInfo, Subscriber, Transport
from ..audit import open_ledger
from ..errors import (
    AdmissionRefused,
    BrokenResourceError,
    ChainConflictError,
    ClosedResourceError,
    DecodeError,
    LocalProtocolError,
    StorageError,
    StreamsError,
    StreamsTimeoutError,
)
from ..events import (
    Acknowledged,
    Anchored,
    BranchClosed,
    ChainConflict,
    EpochAnchored,
    Event,
    ForkDetected,
    GapDetected,
    Granted,
    LedgerStatus,
    MemberLeft,
    MessageReceived,
    PermissionRestricted,
    Refused,
    Rejected,
    SubscriberAdmitted,
    SubscriberRefused,
)
from ..identity import Identity, did_from_public_key, public_key_from_did
from ..ledger.base import Ledger
from ..policy import common_permission
from ..policy_file import PERMISSIONS, load_policy, permission_name
from ..store import _SIDE_FILES, Store, backup
from ..wire import MAX_FRAME, Permission
from ._common import (
    CheckFailed,
    Result,
    UsageError,
    add_command,
    add_passphrase_options,
    encodable,
    now,
    printable,
    read_json_file,
    read_passphrase,
    read_passphrase_first,
    utf8_arg,
)
from ._transport import CurveKeys, SubscriberTransport, load_zmq

__all__ = [
    "LinePrinter",
    "StdinLines",
    "author_keys",
    "event_doc",
    "message_doc",
    "open_author",
    "open_subscriber",
    "parse_branch",
    "payload_doc",
    "register",
    "status_doc",
    "subscriber_keys",
    "unheard_hint",
    "writable_branch",
]

_log = logging.getLogger("streams.cli.channel")

#: Longest stdin line ``serve --publish-stdin`` accepts; a payload never exceeds a frame (THREATS 8).
MAX_STDIN_LINE = 2 * MAX_FRAME


# --- output --------------------------------------------------------------------------------------------------


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a long-running command's tasks and wait for them; their cancellation and the library's own errors
    (already reported as they happened) are not re-raised here."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, StreamsError):
            await t


class LinePrinter:
    """Prints one line per document: JSON (``--json``) or ``event key=value ...`` for people; flushed at once.

    A closed stdout (the reader went away) is not an error of the command: later lines are dropped (``tail``
    stops there, see :meth:`emit`)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._broken = False

    @property
    def broken(self) -> bool:
        """The reader went away: nothing more is printed."""
        return self._broken

    def emit(self, doc: dict[str, Any]) -> bool:
        """Print ``doc`` (which has an ``"event"`` key) as one line; False if it was not printed (the reader went
        away, now or before)."""
        if self._broken:
            return False
        line = json.dumps(doc, ensure_ascii=False) if self.as_json else _text_line(doc)
        try:
            try:
                print(line, flush=True)
            except UnicodeEncodeError:
                # A locale whose encoding lacks a character of the line (a peer's payload, "10 €" in ASCII):
                # escaped, as \u20ac (valid JSON), not a dead printing task that shows no message again.
                print(json.dumps(doc) if self.as_json else encodable(line), flush=True)
        except BrokenPipeError:
            self._broken = True
            # stdout to devnull, so that its flush at exit does not fail again (as print_out does)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            print("streams: note: stdout was closed by its reader: later lines are not printed", file=sys.stderr)
            return False
        return True


def _short(value: object) -> str:
    if isinstance(value, list):
        return ",".join(printable(str(v)) for v in value)
    return printable(str(value))


def _text_line(doc: dict[str, Any]) -> str:
    parts = [str(doc.get("event", "?"))]
    for k, v in doc.items():
        if k == "event" or v is None:
            continue
        if k in ("data", "data_b64"):
            continue  # the payload goes last, unquoted
        parts.append(f"{k}={_short(v)}")
    if "data" in doc:
        parts.append(f": {printable(doc['data'])}")
    elif "data_b64" in doc:
        parts.append(f": (base64) {doc['data_b64']}")
    return " ".join(parts)


def payload_doc(payload: bytes) -> dict[str, str]:
    """``{"data": text}`` if ``payload`` is valid UTF-8, else ``{"data_b64": base64}``."""
    try:
        return {"data": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(payload).decode("ascii")}


def message_doc(m: MessageReceived) -> dict[str, Any]:
    """The printed form of an accepted message."""
    return {"event": "message", "branch": m.branch.hex(), "publisher": m.publisher_did, "index": m.publisher,
            "seq": m.seq, "signed": m.signed, **payload_doc(m.payload)}


def event_doc(ev: Event) -> dict[str, Any] | None:
    """The printed form of a non-message event, or None for events only the driver cares about."""
    if isinstance(ev, SubscriberAdmitted):
        return {"event": "admitted", "did": ev.did, "branch": ev.branch.hex(),
                "permission": permission_name(ev.permission), "reason": ev.reason}
    if isinstance(ev, SubscriberRefused):
        return {"event": "refused", "did": ev.did, "reason": ev.reason}
    if isinstance(ev, Rejected):
        return {"event": "rejected", "reason": ev.reason.name, "detail": ev.detail,
                "branch": ev.branch.hex() if ev.branch is not None else None, "index": ev.publisher, "seq": ev.seq}
    if isinstance(ev, GapDetected):
        return {"event": "gap", "branch": ev.branch.hex(), "index": ev.publisher, "expected_seq": ev.expected_seq,
                "received_seq": ev.received_seq, "missing": [ev.expected_seq, ev.received_seq - 1]}
    if isinstance(ev, BranchClosed):
        closed = {"event": "closed", "branch": ev.branch.hex(), "by": ev.by}
        if ev.reason:
            closed["reason"] = ev.reason
        return closed
    if isinstance(ev, Acknowledged):
        return {"event": "acknowledged", "branch": ev.branch.hex(), "through_seq": ev.through_seq, "by": ev.by_did}
    if isinstance(ev, Granted):
        return {"event": "granted", "branch": ev.branch.hex(), "epoch": ev.epoch,
                "permission": permission_name(ev.permission), "members": list(ev.members)}
    if isinstance(ev, Refused):
        return {"event": "refused", "reason": ev.reason.name}
    if isinstance(ev, EpochAnchored):
        return {"event": "epoch", "epoch": ev.epoch, "anchor_id": ev.anchor_id, "heads": ev.heads}
    if isinstance(ev, LedgerStatus):
        doc: dict[str, Any] = {"event": "ledger", "available": ev.available, "queued": ev.queued}
        if not ev.available:
            doc["error"] = ev.error
        return doc
    if isinstance(ev, MemberLeft):
        return {"event": "left", "branch": ev.branch.hex(), "did": ev.did}
    if isinstance(ev, PermissionRestricted):
        return {"event": "restricted", "branch": ev.branch.hex(), "did": ev.did,
                "permission": permission_name(ev.permission)}
    if isinstance(ev, Anchored):
        return {"event": "anchored", "branch": ev.branch.hex(), "index": ev.publisher, "seq": ev.seq,
                "epoch": ev.epoch, "anchor_id": ev.anchor_id, "ledger_verified": ev.ledger_verified,
                "restored": ev.restored}
    if isinstance(ev, ForkDetected):
        return {"event": "fork", "branch": ev.branch.hex(), "index": ev.publisher, "seq": ev.seq}
    if isinstance(ev, ChainConflict):  # a store older than its own chain: publishing would fork it (SPEC 13.5)
        return {"event": "conflict", "branch": ev.branch.hex(), "index": ev.publisher, "ours": ev.ours,
                "theirs": ev.theirs}
    return None  # Covered, FetchRequested, Announced, Subscribed (``subscribe`` prints its own): bookkeeping


def branch_doc(b: BranchInfo) -> dict[str, Any]:
    """The printed form of a branch a party knows."""
    return {"branch": b.id.hex(), "epoch": b.epoch, "permission": permission_name(b.permission),
            "open": b.open, "members": list(b.members)}


# --- arguments -----------------------------------------------------------------------------------------------


def parse_branch(value: str, what: str = "--branch") -> bytes:
    """A branch id from hex (16 bytes).  Raises :class:`UsageError`."""
    try:
        b = bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{what}: not hex: {value!r}") from None
    if len(b) != 16:
        raise UsageError(f"{what}: a branch id is 16 bytes (32 hex digits)")
    return b


def _parse_channel(value: str) -> bytes:
    try:
        c = bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"--channel: not hex: {value!r}") from None
    if len(c) != 32:
        raise UsageError("--channel: a channel id is 32 bytes (64 hex digits)")
    return c


def _keystore_identity(path: str, passphrase: str, expected_did: str | None = None) -> Identity:
    identity = keystore.load_identity(path, passphrase)
    if expected_did is not None and identity.did != expected_did:
        raise UsageError(f"{path} holds {identity.did}, not the store's {expected_did}")
    return identity


# --- opening parties -----------------------------------------------------------------------------------------


def _first_run_author(store: str, keystore_path: str | None, name: str | None) -> tuple[str, str]:
    """The keystore and channel name that create the author's store ``store``.  Raises :class:`UsageError`."""
    if keystore_path is None or not name:
        raise UsageError(f"no store at {store}: give --keystore and --name to create the channel")
    utf8_arg(name, "--name")  # (the channel id hashes it as UTF-8)
    return keystore_path, name


def _first_run_subscriber(store: str, keystore_path: str | None, author_did: str | None,
                          channel: str | None) -> tuple[str, str, bytes]:
    """The keystore, author DID and channel id that create the subscriber's store ``store``.  Raises
    :class:`UsageError`."""
    if keystore_path is None or author_did is None or channel is None:
        raise UsageError(f"no store at {store}: give --keystore, --author and --channel to create it")
    try:
        public_key_from_did(author_did)
    except DecodeError as exc:
        raise UsageError(f"--author: {exc}") from None
    return keystore_path, author_did, _parse_channel(channel)


def _stored_keys(store: str, passphrase: str, role: str) -> CurveKeys:
    """The identity held by the existing store ``store`` (of a party of ``role``) and its author's DID.

    The store is opened without its lock -- as ``streams status`` does -- and closed before this returns, so the
    party's own open takes the lock as usual (and fails as usual if another process runs on the store).  It costs
    one more passphrase derivation and integrity check of the store (tens of milliseconds)."""
    s = Store.open(store, passphrase)
    try:
        if s.meta("role") != role:
            raise UsageError(f"{store} is not {'an author' if role == 'author' else 'a subscriber'}'s store")
        author_did = s.meta("author_did")
        if not isinstance(author_did, str):
            raise StorageError(f"{store}: store metadata is missing or damaged")
        return CurveKeys(s.identity, author_did)
    finally:
        s.close()


def author_keys(store: str, passphrase: str, *, keystore_path: str | None = None,
                name: str | None = None) -> CurveKeys:
    """The author's CurveZMQ keys (its identity), before its endpoint is built and its store opened: read from the
    store at ``store`` if it exists, else (first run) from the keystore at ``keystore_path``.  Pass the identity on
    to :func:`open_author` so that a first run reads the keystore once.

    Raises :class:`UsageError` as :func:`open_author` does (and for a subscriber's store);
    :class:`~streams.errors.BadPassphrase`; :class:`~streams.errors.StorageError`;
    :class:`~streams.errors.KeystoreError`."""
    if Path(store).exists():
        return _stored_keys(store, passphrase, "author")
    keystore_path, _ = _first_run_author(store, keystore_path, name)
    identity = keystore.load_identity(keystore_path, passphrase)
    return CurveKeys(identity, identity.did)


def subscriber_keys(store: str, passphrase: str, *, keystore_path: str | None = None, author_did: str | None = None,
                    channel: str | None = None) -> CurveKeys:
    """The subscriber's CurveZMQ keys (its identity and the author's DID), before its endpoint is built and its store
    opened: read from the store at ``store`` if it exists, else (first run) the identity in ``keystore_path`` and
    ``author_did``.  Pass the identity on to :func:`open_subscriber` so that a first run reads the keystore once.

    Raises :class:`UsageError` as :func:`open_subscriber` does (and for an author's store);
    :class:`~streams.errors.BadPassphrase`; :class:`~streams.errors.StorageError`;
    :class:`~streams.errors.KeystoreError`."""
    if Path(store).exists():
        return _stored_keys(store, passphrase, "subscriber")
    keystore_path, author_did, _ = _first_run_subscriber(store, keystore_path, author_did, channel)
    return CurveKeys(keystore.load_identity(keystore_path, passphrase), author_did)


async def open_author(store: str, passphrase: str, transport: Transport, policy_file: str, *,
                      keystore_path: str | None = None, name: str | None = None, identity: Identity | None = None,
                      ledger: Ledger | None = None, anchor_interval_ms: int = 1000) -> Author:
    """Reopen the author's store at ``store``, or create it (first run) from the identity in ``keystore_path``
    with channel name ``name``.  ``identity``: that keystore's identity if the caller has loaded it already
    (:func:`author_keys`); not used when the store exists.

    Raises :class:`UsageError` if the store does not exist and ``keystore_path``/``name`` are missing,
    :class:`~streams.policy_file.PolicyFileError` for a bad policy, :class:`~streams.errors.BadPassphrase`,
    :class:`~streams.errors.StorageError`, :class:`~streams.errors.LocalProtocolError` for an
    ``anchor_interval_ms`` above ``2**63 - 1`` (:class:`AnchorConfig`).  ``transport`` is closed if opening fails
    (``Author.create/open`` close it themselves when they fail)."""
    try:
        anchor_config = AnchorConfig(epoch_interval_ms=anchor_interval_ms)  # (out of range: refused, transport closed)
        policy = load_policy(policy_file)
        exists = Path(store).exists()
        if exists:
            if keystore_path is not None:
                _log.info("store %s exists: --keystore and --name are ignored", store)
        else:
            keystore_path, channel_name = _first_run_author(store, keystore_path, name)
            owner = identity if identity is not None else keystore.load_identity(keystore_path, passphrase)
    except BaseException:
        await transport.close()
        raise
    if exists:
        return await Author.open(store, passphrase, transport, policy, ledger=ledger, anchor_config=anchor_config)
    return await Author.create(store, owner, channel_name, passphrase, transport, policy, ledger=ledger,
                               anchor_config=anchor_config)


async def open_subscriber(store: str, passphrase: str, transport: Transport, *, keystore_path: str | None = None,
                          author_did: str | None = None, channel: str | None = None, identity: Identity | None = None,
                          ledger: Ledger | None = None, anchor_wait: float = ANCHOR_WAIT) -> Subscriber:
    """Reopen the subscriber's store at ``store`` (catch-up runs at once), or create it (first run) from the
    identity in ``keystore_path`` for the channel ``channel`` (hex) of ``author_did``.  ``identity``: that
    keystore's identity if the caller has loaded it already (:func:`subscriber_keys`); not used when the store
    exists.  ``ledger`` and ``anchor_wait``: as for :meth:`Subscriber.create`.

    Raises :class:`UsageError` if the store does not exist and an argument is missing, or a keystore holds
    another DID than the store; :class:`~streams.errors.BadPassphrase`; :class:`~streams.errors.StorageError`.
    ``transport`` is closed if opening fails (``Subscriber.create/open`` close it themselves when they fail)."""
    if Path(store).exists():
        sub = await Subscriber.open(store, passphrase, transport, ledger=ledger, anchor_wait=anchor_wait)
        try:
            if keystore_path is not None and keystore.read_public(keystore_path) != sub.did:
                raise UsageError(f"{keystore_path} holds another identity than the store {store}")
            # --author and --channel only create a store; given again, they must name the store's own channel
            # (a silently ignored correction would leave the user where the first run left them).
            theirs = sub.store.meta("author_did")
            if (author_did is not None and author_did != theirs) or (
                    channel is not None and _parse_channel(channel) != sub.channel):
                raise UsageError(f"{store} belongs to channel {sub.channel.hex()} of {theirs}; --author/--channel "
                                 "name another: give another --store to subscribe to another channel")
        except BaseException:
            await sub.close()  # closes the transport
            raise
        return sub
    try:
        keystore_path, author, chan = _first_run_subscriber(store, keystore_path, author_did, channel)
        me = identity if identity is not None else keystore.load_identity(keystore_path, passphrase)
    except BaseException:
        await transport.close()
        raise
    return await Subscriber.create(store, me, author, chan, passphrase, transport, ledger=ledger,
                                   anchor_wait=anchor_wait)


def unheard_hint(transport: SubscriberTransport, curve: bool) -> str:
    """A hint for a subscriber command that got no answer, if nothing at all came from the author's endpoint:
    the connection never came up.  Most often the address is wrong or the author is not running; a CurveZMQ
    mismatch looks exactly like that too -- a CURVE handshake with a plain endpoint, or one the author's ZAP
    refuses, fails without a word -- so the hint names the address, then ``--curve``.  Empty if the author's
    endpoint was heard (then neither was the problem)."""
    if transport.author_instance is not None:
        return ""
    unheard = "; nothing at all came from the author's endpoint: check that the author runs at that address; "
    if curve:
        return unheard + ("with --curve, the author must serve with --curve too and know this DID (its policy "
                          "allows it, or it is a member)")
    return unheard + "if the author serves with --curve, give --curve too"


def writable_branch(sub: Subscriber, branch: str | None) -> bytes:
    """The branch to publish on: ``branch`` (hex) if given, else the subscriber's only open writable branch.

    Raises :class:`UsageError` if there is none, or several and ``branch`` was not given; :class:`CheckFailed`
    (``not_permitted``) if the author took the write permission away (``closed`` if it revoked the branch)."""
    branches = sub.branches()
    if branch is not None:
        named = parse_branch(branch)
        info = next((b for b in branches if b.id == named), None)
        if info is not None and info.open and not info.permission.can_write and len(info.members) == 2:
            raise _not_permitted(named)
        return named
    writable = [b.id for b in branches if b.open and b.permission.can_write]
    if not writable:
        closed = [b.id for b in branches if not b.open and b.permission.can_write]
        if closed:
            raise _closed(closed[-1])
        own = [b.id for b in branches if b.open and len(b.members) == 2]
        if own:
            raise _not_permitted(own[-1])
    if len(writable) != 1:
        raise UsageError(f"{len(writable)} writable branches: run `streams subscribe` first, or give --branch")
    return writable[0]


#: What a provider whose store is older than its own chain (ChainConflictError) should do.
_STALE_STORE = ("Do not publish from this store: restore a copy no older than the chain, or start over with a new "
                "store (`streams subscribe --store NEW ...`)")


def _not_permitted(branch: bytes) -> CheckFailed:
    """The answer when our own branch is open but read-only: the author narrowed our permission (a policy
    re-check), or granted it so."""
    return CheckFailed(f"branch {branch.hex()} is read-only for this provider: the author allows it to read only "
                       "(its policy), so nothing is published", "not_permitted")


def _closed(branch: bytes) -> CheckFailed:
    """The answer when the branch to publish on is closed: the author revoked it (or we left it)."""
    return CheckFailed(f"branch {branch.hex()} is closed: the author revoked it (or this member left it); nothing "
                       "more can be published on it", "closed")


def _install_stop(stop: asyncio.Event, heard: list[int] | None = None) -> None:
    """SIGINT and SIGTERM set ``stop`` (and are appended to ``heard``, if given)."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        if heard is not None:
            heard.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


# --- serve ---------------------------------------------------------------------------------------------------


class StdinLines:
    """Stdin's lines for the running event loop, read on a daemon thread: a thread, because stdin may be a
    regular file, which the event loop cannot watch; a daemon, so it never holds up the exit.  It reads the file
    descriptor with ``os.read``, not ``sys.stdin``: a daemon thread blocked inside the buffered reader holds its
    lock, and the interpreter aborts at shutdown when it finds that lock taken.

    At most ``capacity`` lines wait to be taken; past that the thread stops reading until one is, so a faster
    writer waits (back-pressure through the pipe) and no line is dropped.  :meth:`close` (a stop) ends the
    reading: the lines read before it stay to be taken (:attr:`drained` says when all were), and those of a read
    that returns after it are counted in :attr:`dropped`, never queued."""

    def __init__(self, capacity: int = 1000) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # (bounded by _room)
        self._room = threading.Semaphore(capacity)
        self._lock = threading.Lock()
        self._pending = 0  #: items read from stdin (EOF's None included) and not yet taken
        self._pending_lines = 0  #: of which lines
        self._closed = False
        self.dropped = 0  #: lines read but never queued (after close) or given up (:meth:`abandon`)
        threading.Thread(target=self._run, daemon=True, name="stdin").start()

    @property
    def drained(self) -> bool:
        """No item read from stdin waits to be taken."""
        with self._lock:
            return self._pending == 0

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Read no more: what a read returns from now on is dropped (and counted)."""
        with self._lock:
            self._closed = True

    def abandon(self) -> int:
        """Close, and give up the lines still waiting; returns how many lines were never taken (:attr:`dropped`)."""
        with self._lock:
            self._closed = True
            self.dropped += self._pending_lines
            self._pending = self._pending_lines = 0
            return self.dropped

    async def get(self) -> bytes | None:
        """The next line (with its newline), :data:`_TOO_LONG` for one over :data:`MAX_STDIN_LINE` bytes, None at
        EOF."""
        item = await self._queue.get()
        self._room.release()
        with self._lock:
            if self._pending:  # (0 once abandoned)
                self._pending -= 1
                self._pending_lines -= item is not None
        return item

    def _put(self, items: list[bytes | None]) -> None:
        lines = sum(item is not None for item in items)
        with self._lock:  # counted at once: no moment where some lines read are neither queued nor counted
            if self._closed:
                self.dropped += lines
                raise _StdinClosed
            self._pending += len(items)
            self._pending_lines += lines
        for item in items:
            self._room.acquire()
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        with contextlib.suppress(RuntimeError, _StdinClosed):  # (RuntimeError: the loop closed, we are exiting)
            _read_lines(self._put, lambda: self._closed)


class _StdinClosed(Exception):
    """:meth:`StdinLines.close` was called: the reading thread ends."""


def _read_lines(put: Callable[[list[bytes | None]], None], closed: Callable[[], bool]) -> None:
    """Read fd 0 to its end, handing ``put`` each chunk's complete lines, then the rest and None; once
    ``closed()``, read no more (what stays in the pipe was not read)."""
    buf = b""
    skipping = False  # inside an oversized line: drop bytes up to its newline (THREATS 8: bounded buffer)
    while not closed():
        try:
            chunk = os.read(0, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        lines: list[bytes | None] = []
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[: nl + 1], buf[nl + 1 :]
            if skipping:
                skipping = False
                continue
            lines.append(line if len(line) <= MAX_STDIN_LINE + 1 else _TOO_LONG)
        if len(buf) > MAX_STDIN_LINE:
            if not skipping:
                lines.append(_TOO_LONG)
            skipping, buf = True, b""
        if lines:
            put(lines)
    put([buf, None] if buf and not skipping else [None])


class _StdinWorker:
    """Hands each stdin line to ``handle``, in order, until EOF (then calls ``at_eof``) or :meth:`finish`.  A
    line ``handle`` fails on (a bug of ours) is logged and the next one is read: the writer may be waiting on
    the pipe for us."""

    def __init__(self, handle: Callable[[bytes], Awaitable[None]], at_eof: Callable[[], None] = lambda: None) -> None:
        self.lines = StdinLines()
        self._handle, self._at_eof = handle, at_eof
        self._halt = False
        self.at_end = False  #: stdin's EOF was reached, every line before it handled
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        lines = self.lines
        while not self._halt and not (lines.closed and lines.drained):
            try:
                line = await asyncio.wait_for(lines.get(), 0.25)
            except TimeoutError:
                continue
            if line is None:
                self.at_end = True
                self._at_eof()
                return
            try:
                await self._handle(line)
            except Exception:
                _log.exception("a stdin line could not be handled")

    async def finish(self, limit: float = 60) -> None:
        """Stop reading stdin; act on the lines read before (for at most ``limit`` seconds), then end.  Lines
        read but not acted on (a read that returned during the stop, or the limit reached) are reported on
        stderr, with their number."""
        self.lines.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), limit)
        # (What a line raises is logged by the loop: the task itself only ends, or is still at work here.)
        self._halt = True  # the loop ends at its next turn: 0.25 s at most, or once the line in hand is done
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except TimeoutError:
            self._task.cancel()
        left = self.lines.abandon()
        if left:
            print(f"streams: warning: {left} stdin line{'s' if left != 1 else ''} read but not acted on: the "
                  "command stopped first", file=sys.stderr)


#: Marker put in the queue for a stdin line over MAX_STDIN_LINE (never valid JSON, so never a real line).
_TOO_LONG = b"\x00too-long"


def _branch_named(author: Author, to: str, key: str) -> bytes:
    """The branch a stdin line names: a subscriber's DID (its open branch) or a branch id (hex)."""
    if to.startswith("did:"):
        found = author.branch_of(to)
        if found is None:
            raise UsageError(f"no open branch for {to}")
        return found
    try:
        return parse_branch(to, key)
    except UsageError:
        raise UsageError(f"{key}: expected a subscriber's DID or a branch id (32 hex digits), got {to!r}") from None


async def _revoke_line(author: Author, name: str, out: LinePrinter) -> None:
    """``{"revoke": DID or branch hex}``: a subscriber (named by its DID or its own branch) is cut off -- its
    branch revoked, and taken out of its groups (:meth:`Author.revoke_subscriber`); a group's id closes the
    group."""
    branch: bytes | None
    if name.startswith("did:"):  # (its own branch may be closed already, and the DID still in groups)
        did: str | None = name
        branch = author.branch_of(name)
    else:
        branch = parse_branch(name, "revoke")
        did = author.owner_of(branch)
        if did is not None and author.branch_of(did) != branch:
            did = None  # a closed branch of a DID that subscribed again: only that old branch is named
    if did is not None:
        closed = await author.revoke_subscriber(did)
    else:
        assert branch is not None  # (a DID was named, or a branch id)
        await author.revoke(branch)
        closed = [branch]
    out.emit({"event": "revoked", "branch": branch.hex() if branch is not None else None, "did": did,
              "closed": [b.hex() for b in closed]})


async def _group_line(author: Author, req: dict[str, Any], out: LinePrinter) -> None:
    """``{"group": [DID, ...], "permission": "read"|"audit"}`` (default read): open a group branch (a broadcast:
    the author writes, its members read) for subscribers the channel admitted -- each named DID must hold an open
    branch of its own, with at least the group's permission there, so that a group never lets in a DID, or gives
    a right, the policy did not.  Publish to it with ``{"to": its branch hex}``."""
    dids, name = req["group"], req.get("permission", "read")
    if not dids or not all(isinstance(d, str) for d in dids):
        raise UsageError('"group" must be a non-empty list of subscribers\' DIDs')
    if name not in ("read", "audit"):
        raise UsageError(f'"permission" of a group must be "read" or "audit" (only the author writes in a group), '
                         f"got {name!r}")
    if len(set(dids)) != len(dids):
        raise UsageError('"group" names a DID twice')
    permission = PERMISSIONS[name]
    for did in dids:
        mine = author.branch_of(did)
        held = author.permission_of(mine) if mine is not None else None
        if mine is None or held is None:
            raise UsageError(f"no open branch for {did}: a group's members must be subscribers the policy admitted")
        if common_permission(held, permission) != permission:
            # A group must not give what the policy did not: a provider admitted to write only reads nothing.
            raise UsageError(f"{did} holds {permission_name(held)} on its own branch, not {name}: a group "
                             "gives its members no right their admission did not")
    branch = await author.open_group(dids, permission)
    out.emit({"event": "group", "branch": branch.hex(), "members": dids, "permission": name})


async def _remove_line(author: Author, did: str, group: str, out: LinePrinter) -> None:
    """``{"remove": DID, "from": group hex}``: take a member out of a group (re-keyed without it: it reads
    nothing published there afterwards; the group closes when its last member goes)."""
    branch = parse_branch(group, "from")
    info = next((b for b in author.branches() if b.id == branch), None)
    if info is None or author.owner_of(branch) is not None:
        raise UsageError(f"from: {group} is not a group of this channel (a subscriber's own branch is revoked, "
                         'with {"revoke": ...})')
    if not info.open:
        raise UsageError(f"from: group {branch.hex()} is closed: nobody reads it any more")
    if did not in info.members[1:]:
        raise UsageError(f"{did} is not a member of group {branch.hex()}")
    await author.remove_member(branch, did)
    left = next((b for b in author.branches() if b.id == branch), None)
    out.emit({"event": "removed", "branch": branch.hex(), "did": did,
              "closed": left is None or not left.open})


_SERVE_LINES = ('stdin line must be {"to": DID or branch hex, "data": text}, {"revoke": DID or branch hex}, '
                '{"group": [DID, ...]} or {"remove": DID, "from": group hex}')


def _only_keys(req: dict[str, Any], allowed: set[str]) -> None:
    """Refuse a line with a key it does not take (a typo, or a key of another form), rather than ignore it."""
    unknown = sorted(set(req) - allowed)
    if unknown:
        raise UsageError(f"stdin line has unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}: it takes {', '.join(map(repr, sorted(allowed)))}")


async def _publish_line(author: Author, line: bytes, out: LinePrinter) -> None:
    """Act on one stdin line: ``{"to": ..., "data"|"data_b64": ...}`` publishes, ``{"revoke": ...}`` revokes a
    branch, ``{"group": [...]}`` opens a group, ``{"remove": DID, "from": group}`` takes a member out of one;
    bad lines are reported, never fatal."""
    if not line.strip():
        return
    try:
        req = _line_json(line)
        if not isinstance(req, dict):
            raise UsageError(_SERVE_LINES)
        # The form is decided by the keys, and a line of one form with a key of another is refused: a
        # {"remove": ..., "from": ..., "to": ..., "data": ...} published and removed no one.
        keys = set(req)
        if "revoke" in keys:
            if keys != {"revoke"} or not isinstance(req["revoke"], str):
                raise UsageError('a revoke line is {"revoke": DID or branch hex}, with no other key')
            await _revoke_line(author, req["revoke"], out)
            return
        if "group" in keys:
            if not keys <= {"group", "permission"} or not isinstance(req["group"], list):
                raise UsageError('a group line is {"group": [DID, ...]} with, optionally, "permission": "read" or '
                                 '"audit", and no other key')
            await _group_line(author, req, out)
            return
        if keys & {"remove", "from"}:
            if keys != {"remove", "from"} or not isinstance(req["remove"], str) or not isinstance(req["from"], str):
                raise UsageError('a remove line is {"remove": DID, "from": group hex}, with no other key')
            await _remove_line(author, req["remove"], req["from"], out)
            return
        if not isinstance(req.get("to"), str):
            raise UsageError(_SERVE_LINES)
        _only_keys(req, {"to", "data", "data_b64"})
        branch = _branch_named(author, req["to"], "to")
        payload = _line_payload(req)
        seq = await author.publish(branch, payload)
    except StreamsError as exc:  # (a bad line, a closed branch, a refused or failed store: never fatal)
        out.emit({"event": "error", "error": str(exc), "type": type(exc).__name__})
        return
    out.emit({"event": "published", "branch": branch.hex(), "seq": seq})


def _line_json(line: bytes) -> Any:
    """A stdin line's JSON.  Raises :class:`UsageError` for an over-long line or one that is not JSON."""
    if line == _TOO_LONG:
        raise UsageError(f"stdin line longer than {MAX_STDIN_LINE} bytes")
    try:
        return json.loads(line)
    except ValueError:
        raise UsageError("stdin line is not JSON") from None
    except RecursionError:  # ("[[[[..." nested deeper than the parser goes)
        raise UsageError("stdin line is JSON nested too deeply") from None


def _line_payload(req: dict[str, Any]) -> bytes:
    """A stdin line's payload: ``"data"`` (text, as UTF-8) or ``"data_b64"``.  Raises :class:`UsageError`."""
    if isinstance(req.get("data"), str):
        return _utf8(req["data"])
    if isinstance(req.get("data_b64"), str):
        try:
            return base64.b64decode(req["data_b64"], validate=True)
        except binascii.Error:
            raise UsageError("data_b64 is not base64") from None
    raise UsageError('stdin line needs "data" (text) or "data_b64"')


def _utf8(text: str) -> bytes:
    """A stdin line's "data" as UTF-8.  Raises :class:`UsageError` for text that has no UTF-8 form (a lone
    surrogate: valid JSON, ``"\\ud800"``)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError('"data" is not text that UTF-8 can carry (a lone surrogate): use "data_b64"') from None


async def _member_line(sub: Subscriber, line: bytes, default: bytes | None, out: LinePrinter) -> None:
    """``tail --publish-stdin``: publish one ``{"data"|"data_b64": ..., "branch": hex (optional)}`` line on the
    subscriber's writable branch; bad lines are reported, never fatal.  Not waiting for the ACK (``--events``
    shows it): the message is stored before the ``published`` line."""
    if not line.strip():
        return
    try:
        req = _line_json(line)
        if not isinstance(req, dict):
            raise UsageError('stdin line must be {"data": text} (or "data_b64"), with "branch": hex if several')
        _only_keys(req, {"data", "data_b64", "branch"})
        name = req.get("branch")
        if name is not None and not isinstance(name, str):
            raise UsageError('"branch" must be a branch id (hex)')
        if name is None and default is not None and any(
                b.id == default and b.open and b.permission.can_write for b in sub.branches()):
            name = default.hex()  # tail's --branch, where it is writable (else the only writable branch)
        branch = writable_branch(sub, name)
        payload = _line_payload(req)
        seq = await sub.publish(branch, payload)
    except StreamsError as exc:  # (a bad line, a closed branch, a store that failed: reported, never fatal)
        out.emit({"event": "error", "error": str(exc), "type": type(exc).__name__})
        return
    out.emit({"event": "published", "branch": branch.hex(), "seq": seq})


async def _pump_messages(party: Author | Subscriber, out: LinePrinter,
                         keep: Callable[[MessageReceived], bool] = lambda m: True) -> None:
    async for m in party:
        if keep(m):
            out.emit(message_doc(m))


async def _pump_events(party: Author | Subscriber, out: LinePrinter) -> None:
    async for ev in party.events():
        doc = event_doc(ev)
        if doc is not None:
            if isinstance(ev, BranchClosed) and isinstance(party, Author):
                # Who was cut off (a re-check's revocation says nothing else): a per-subscriber branch's member.
                owner = party.owner_of(ev.branch)
                if owner is not None:
                    doc["did"] = owner
            out.emit(doc)


async def _recheck(author: Author, out: LinePrinter, path: str, reloaded: bool) -> None:
    """Revoke the subscribers the policy can no longer admit (denied, off its allow-list) or whose credential no
    longer holds; they show as ``closed`` events (``by: recheck``).  A ``policy`` event reports a reload, or
    revocations at start; it lists the branches revoked and those whose permission was narrowed
    (``restricted``: each also has a ``restricted`` event)."""
    before = {b.id: author.permission_of(b.id) for b in author.branches() if b.open}
    revoked = await author.recheck_admissions()
    closed = set(revoked)
    restricted = [b for b, p in before.items()
                  if p is not None and b not in closed and author.permission_of(b) not in (p, None)]
    if reloaded or revoked or restricted:
        owners = [author.owner_of(b) for b in revoked]
        out.emit({"event": "policy", "file": path, "reloaded": reloaded, "revoked": [b.hex() for b in revoked],
                  "dids": [d for d in owners if d is not None], "restricted": [b.hex() for b in restricted],
                  "restricted_dids": [author.owner_of(b) for b in restricted]})


async def _watch_policy(author: Author, path: str, hup: asyncio.Event, out: LinePrinter) -> None:
    """On SIGHUP, reload the policy file and re-check every admitted subscriber against it.  Only when told, as
    daemons do: a file read while an editor or a copy is still writing it can be valid TOML that lists fewer
    providers, and would revoke them.  A file that does not load is reported (an ``error`` event) and the
    policy in force stays."""
    while True:
        await hup.wait()
        hup.clear()
        try:
            policy = load_policy(path)
        except Exception as exc:  # (any: this task must hear the next SIGHUP)
            if not isinstance(exc, (LocalProtocolError, OSError)):
                _log.exception("the policy file could not be loaded")
            out.emit({"event": "error", "error": f"policy not reloaded, the one in force stays: {exc}",
                      "type": type(exc).__name__})
            continue
        author.policy = policy
        _log.info("policy reloaded from %s", path)
        try:
            await _recheck(author, out, path, True)
        except Exception as exc:  # (the next SIGHUP must still be heard: this task never ends on an error)
            if not isinstance(exc, StreamsError):
                _log.exception("re-check after the policy reload failed")
            out.emit({"event": "error", "error": f"policy reloaded, but its re-check failed: {exc}",
                      "type": type(exc).__name__})


async def serve(args: argparse.Namespace, out: LinePrinter) -> int:
    """Serve a channel until SIGINT/SIGTERM (or stdin EOF with the demo's ``--exit-on-stdin-eof``)."""
    zmq = load_zmq()
    hup = asyncio.Event()  # (before anything slow: a SIGHUP while the store opens must not kill us)
    with contextlib.suppress(AttributeError, NotImplementedError, ValueError):  # (no SIGHUP on Windows)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup.set)
    passphrase = read_passphrase(args)
    # CurveZMQ keys the endpoint with the author's identity, so it is read first; the Author opened on the
    # endpoint then installs its own ZAP decision (members of open branches, DIDs the policy could admit).
    keys = author_keys(args.store, passphrase, keystore_path=args.keystore, name=args.name) if args.curve else None
    # An embedded ledger is made if it is not there, before the policy and the store are checked (the author opens
    # with its ledger): a serve that fails them removes the ledger it made.
    new_ledger = _absent_ledger_files(args.ledger) if args.ledger else None
    ledger: Ledger | None = None
    try:
        ledger = open_ledger(args.ledger, create=True) if args.ledger else None
        transport = zmq.author(args.bind, keys)
        author = await open_author(args.store, passphrase, transport, args.policy, keystore_path=args.keystore,
                                   name=args.name, identity=keys.identity if keys is not None else None,
                                   ledger=ledger, anchor_interval_ms=args.anchor_interval_ms)
    except BaseException:  # (open_author closes the transport when it fails)
        _unmake_ledger(ledger, new_ledger)
        raise
    stop = asyncio.Event()
    _install_stop(stop)
    pumps = [asyncio.create_task(_pump_messages(author, out)), asyncio.create_task(_pump_events(author, out))]
    ended = asyncio.Event()  # a pump ended: the author closed itself
    tasks = [*pumps, asyncio.create_task(_stop_when_any_ends(pumps, stop, ended))]
    publisher: _StdinWorker | None = None
    try:
        out.emit({"event": "ready", "channel": author.channel.hex(), "did": author.did,
                  "name": author.store.meta("name"), "addresses": transport.addresses, "curve": keys is not None,
                  "ledger": args.ledger.split(":", 1)[0] if args.ledger else None})  # (its kind: a URL may hide keys)
        # The policy file may have changed since the last run: whom it no longer admits is revoked now.
        # A re-check that fails here ends serve (fail closed): the timer re-checks credentials only, not DIDs taken
        # off the policy while it was down.  (A status list that cannot be read only leaves its subscribers as
        # they are: PolicyUnavailable does not end the re-check.)
        await _recheck(author, out, args.policy, False)
        tasks.append(asyncio.create_task(_watch_policy(author, args.policy, hup, out)))
        if args.publish_stdin:
            publisher = _StdinWorker(lambda line: _publish_line(author, line, out),
                                     stop.set if args.exit_on_stdin_eof else lambda: None)
        await stop.wait()
    finally:
        if publisher is not None:  # the lines read before the stop are published first
            await publisher.finish()
        await cancel_tasks(tasks)
        failure = await _failure_of(author, pumps) if ended.is_set() else None
        await author.close()  # persists cursors and the application's delivered marks
        if ledger is not None:
            ledger.close()
    if failure is not None:
        text, kind = failure
        out.emit({"event": "error", "error": f"the channel stopped: {text}", "type": kind})
        return 1
    out.emit({"event": "stopped"})
    return 0


async def _stop_when_any_ends(pumps: list[asyncio.Task[None]], stop: asyncio.Event, ended: asyncio.Event) -> None:
    """A pump ends only when the party closed itself (it failed: a store that can no longer be written, an
    endpoint whose task died, anchoring that died), or fails itself: stop serving rather than run on, serving
    nobody."""
    done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    # (BrokenResourceError: the iteration's word for a party that closed itself after a failure)
    if pending and not any(t.exception() is not None and not isinstance(t.exception(), BrokenResourceError)
                           for t in done):
        await asyncio.wait(pending)  # the party closed: the other pump prints what is left of its queue, and ends
    ended.set()
    stop.set()


async def _failure_of(party: Author | Subscriber, pumps: list[asyncio.Task[None]]) -> tuple[str, str]:
    """Why a pump of ``party`` ended, and the name of the failure's type: its own error, or the party's (the error
    its calls raise once it closed itself, with the failure chained to it).  The type is the failure's, not that
    of the error a closed party's calls wrap it in (ClosedResourceError, BrokenResourceError): a supervisor
    reading the error line learns what broke.  Only once a pump ended: the queue is drained then, and nothing is
    taken from it here."""
    for t in pumps:
        if t.done() and not t.cancelled() and t.exception() is not None:
            exc: BaseException | None = t.exception()
            return f"{type(exc).__name__}: {exc}", _failure_type(exc)
    try:
        await party.next_message(timeout=0)
    except ClosedResourceError as closed:
        cause = closed.__cause__
        return f"{closed}" + (f": {type(cause).__name__}: {cause}" if cause is not None else ""), \
            _failure_type(closed)
    except StreamsError as exc:
        return f"{type(exc).__name__}: {exc}", _failure_type(exc)
    return "the party stopped delivering", "ClosedResourceError"  # (not reached: a pump ends only so)


def _failure_type(exc: BaseException | None) -> str:
    """The name of the type of the failure ``exc`` reports: the cause chained to a closed party's
    ClosedResourceError or BrokenResourceError, else ``exc``'s own."""
    # (The wrappers themselves: StorageError and LedgerError are BrokenResourceErrors, failures of their own.)
    while exc is not None and type(exc) in (ClosedResourceError, BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__


#: SQLite's files of an embedded ledger: the database, then the side files it may leave.
_LEDGER_FILES = ("", "-wal", "-shm", "-journal")


def _absent_ledger_files(spec: str) -> list[Path]:
    """For ``sqlite:PATH`` with nothing at PATH: the ledger's files (:data:`_LEDGER_FILES`) not there now, which
    opening it would make; else none (another kind of ledger, or one that exists: never ours to remove)."""
    kind, _, rest = spec.partition(":")
    if kind != "sqlite" or not rest or os.path.lexists(rest):
        return []
    return [Path(f"{rest}{s}") for s in _LEDGER_FILES if not os.path.lexists(f"{rest}{s}")]


def _unmake_ledger(ledger: Ledger | None, made: list[Path] | None) -> None:
    """Close the ledger of a serve that failed before it ran, and remove the files that opening it made (``made``,
    from :func:`_absent_ledger_files`) -- unless something was written to it meanwhile, or another process holds
    it open (a party on the host that opened the new ledger too, with nothing to anchor yet: then it is theirs as
    well, and removing it would send what they anchor next to a deleted file)."""
    from ..ledger.embedded import EmbeddedLedger

    empty = True
    if ledger is not None:
        if made and isinstance(ledger, EmbeddedLedger):
            try:
                empty = ledger.size() == 0
            except StreamsError:
                empty = False  # (unknown: keep it)
        ledger.close()
    if made and os.path.lexists(f"{made[0]}-wal"):  # (made[0]: the database)
        # SQLite removes a WAL-mode database's -wal when its last connection closes: one left after ours closed
        # is another connection's (or a close that could not clean up: keep it too).
        empty = False
    if made and empty:
        for p in made:
            with contextlib.suppress(OSError):
                p.unlink()


def _cmd_serve(args: argparse.Namespace) -> int:
    read_passphrase_first(args)
    return asyncio.run(serve(args, LinePrinter(_json(args))))


# --- subscribe -----------------------------------------------------------------------------------------------


async def subscribe(args: argparse.Namespace) -> Result:
    """Create or open the subscriber's store, run the handshake, describe the grant."""
    zmq = load_zmq()
    passphrase = read_passphrase(args)
    presentation: list[dict[str, Any]] = []
    for path in args.credential or ():
        doc = read_json_file(path, "credential")
        if not isinstance(doc, dict):
            raise UsageError(f"{path} is not a JSON object")
        presentation.append(doc)
    keys = subscriber_keys(args.store, passphrase, keystore_path=args.keystore, author_did=args.author,
                           channel=args.channel) if args.curve else None
    transport = zmq.subscriber(args.connect, keys)
    created = not Path(args.store).exists()
    sub = await open_subscriber(args.store, passphrase, transport, keystore_path=args.keystore,
                                author_did=args.author, channel=args.channel,
                                identity=keys.identity if keys is not None else None)
    granted = False
    try:
        presenter = None
        if presentation:
            holder = (_keystore_identity(args.holder_keystore, passphrase, sub.did) if args.holder_keystore
                      else sub.store.identity)
            cred = presentation

            def presenter(nonce: bytes, channel: bytes) -> bytes:
                # Bound to this challenge and channel: useless for any other subscription (THREATS 3, 5).
                return vc.present(holder, cred, challenge=nonce, domain=channel, created=now())

        try:
            branch = await sub.subscribe(timeout=args.timeout, presenter=presenter)
        except AdmissionRefused as exc:
            refused = CheckFailed(f"the author refused the subscription ({exc.reason.name})", "refused", exc.reason)
            raise refused from None
        except StreamsTimeoutError:
            hint = unheard_hint(transport, args.curve)
            if not hint:
                raise
            # Nothing at all came: not the library's "check the address and the channel id" -- the channel id
            # cannot be what is wrong (its announcement needs a connection first), and the hint says the rest.
            raise StreamsTimeoutError(f"no admission or refusal from the author{hint}") from None
        info = next(b for b in sub.branches() if b.id == branch)
        data = {"ok": True, "did": sub.did, "channel": sub.channel.hex(), **branch_doc(info)}
        granted = True
    finally:
        await sub.close()
        if created and not granted and not sub.branches():
            # A first run that got no grant (a mistyped --channel or --author, an unreachable author, a
            # refusal) leaves no store behind: it holds nothing but those arguments, and running again with
            # them corrected must start afresh.
            _remove_store_files(args.store)
    return Result(data, f"subscribed: branch {branch.hex()} ({data['permission']}, epoch {info.epoch})\n"
                        f"members: {', '.join(info.members)}")


def _remove_store_files(store: str) -> None:
    """Remove the store this first run created.  Through a symlink (dangling before the run), the files made at
    its target go, and the symlink stays as the user made it."""
    target = os.path.realpath(store)
    names = {target, *(f"{p}{suffix}" for p in (store, target) for suffix in _SIDE_FILES)}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    print(f"streams: note: {store}, created by this first run, was removed (no grant): run again with --keystore, "
          "--author and --channel", file=sys.stderr)


def _cmd_subscribe(args: argparse.Namespace) -> Result:
    read_passphrase_first(args)
    return asyncio.run(subscribe(args))


# --- publish -------------------------------------------------------------------------------------------------


def _read_payload(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return utf8_arg(str(args.data), "--data")
    if args.file == "-":
        data = sys.stdin.buffer.read(MAX_FRAME + 1)
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read(MAX_FRAME + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_FRAME:
        raise UsageError(f"payload larger than {MAX_FRAME} bytes")
    return data


async def publish(args: argparse.Namespace) -> Result:
    """Publish one message on the subscriber's branch; wait for the author's durable ACK unless told not to."""
    zmq = load_zmq()
    payload = _read_payload(args)
    passphrase = read_passphrase(args)
    if not Path(args.store).exists():
        raise UsageError(f"no store at {args.store}: run `streams subscribe` first")
    keys = subscriber_keys(args.store, passphrase) if args.curve else None
    transport = zmq.subscriber(args.connect, keys)
    sub = await open_subscriber(args.store, passphrase, transport)
    try:
        branch = writable_branch(sub, args.branch)
        acked: bool | None = None
        try:
            try:
                seq = await sub.publish(branch, payload)
            except ChainConflictError as exc:  # known from an earlier run, or from the author at this one's open
                raise CheckFailed(f"nothing was published: {exc}. {_STALE_STORE}", "conflict") from None
            if args.wait_ack > 0:
                try:
                    await sub.wait_acknowledged(branch, seq, timeout=args.wait_ack)
                    acked = True
                except StreamsTimeoutError:
                    acked = False
                except ChainConflictError as exc:  # the author's ACK came after we signed: the message is a fork
                    raise CheckFailed(f"seq {seq} was signed but will never be delivered: {exc} (the author keeps "
                                      f"it as evidence of a fork). {_STALE_STORE}", "conflict") from None
                except LocalProtocolError as exc:
                    # Every other cause here is a write permission the author took away meanwhile: a re-key
                    # that left us read-only, or one that restarted our chain at the grant's head because our
                    # write had lapsed when we signed (the seq is not ours then).
                    raise CheckFailed(f"seq {seq} is refused: {exc} (the policy allows this provider to read "
                                      "only now)", "not_permitted") from None
                except asyncio.CancelledError:  # Ctrl-C or SIGTERM while waiting: say what became of it
                    print(f"streams: note: seq {seq} on branch {branch.hex()} is stored and will be delivered "
                          "when the author is heard again: do not publish it again", file=sys.stderr)
                    args.interrupted_doc = {"branch": branch.hex(), "seq": seq, "stored": True}  # (main adds it)
                    raise
        except ClosedResourceError:
            # Revoked while we were away: learnt at open (catch-up), or from the author's answer to this message.
            if any(b.id == branch and not b.open for b in sub.branches()):
                raise _closed(branch) from None
            raise
    finally:
        await sub.close()
    data: dict[str, Any] = {"ok": acked is not False, "branch": branch.hex(), "seq": seq, "acknowledged": acked}
    if acked is False:
        data["error"] = (f"not acknowledged within {args.wait_ack} s (stored: it is delivered when the author is "
                         f"heard again){unheard_hint(transport, args.curve)}")
        data["type"] = "NotAcknowledged"
    if acked is None:
        note = "not waiting for the author (it fetches the message at the next session)"
    else:
        note = ("acknowledged by the author (on its disk)" if acked else
                f"NOT acknowledged within {args.wait_ack} s{unheard_hint(transport, args.curve)}")
    # Exit 1 when the user asked for an acknowledgement and did not get it: the answer was "no".
    return Result(data, f"published seq {seq} on branch {branch.hex()}: {note}", 0 if acked is not False else 1)


def _cmd_publish(args: argparse.Namespace) -> Result:
    read_passphrase_first(args)
    return asyncio.run(publish(args))


# --- tail ----------------------------------------------------------------------------------------------------


async def tail(args: argparse.Namespace, out: LinePrinter) -> int:
    """Print received messages: until ``--count`` messages, or ``--timeout`` seconds without one (or, with
    ``--follow``, until SIGINT/SIGTERM)."""
    zmq = load_zmq()
    passphrase = read_passphrase(args)
    if not Path(args.store).exists():
        raise UsageError(f"no store at {args.store}: run `streams subscribe` first")
    only = parse_branch(args.branch) if args.branch else None
    keys = subscriber_keys(args.store, passphrase) if args.curve else None
    # With the channel's ledger, each anchor proof is checked against the ledger itself (ledger_verified).
    ledger = open_ledger(args.ledger) if args.ledger else None
    try:
        transport = zmq.subscriber(args.connect, keys)
        sub = await open_subscriber(args.store, passphrase, transport, ledger=ledger, anchor_wait=args.anchor_wait)
    except BaseException:
        if ledger is not None:
            ledger.close()
        raise
    try:
        return await _tail(args, out, sub, transport, only)
    finally:
        if ledger is not None:
            ledger.close()


async def _tail(args: argparse.Namespace, out: LinePrinter, sub: Subscriber, transport: SubscriberTransport,
                only: bytes | None) -> int:
    if only is not None and only not in {b.id for b in sub.branches()}:
        # Not fatal: a branch granted while this provider was away is learnt by the catch-up that runs now.
        print(f"streams: warning: --branch {only.hex()} is not a branch of {args.store} (yet)", file=sys.stderr)
    stop = asyncio.Event()
    signals: list[int] = []
    _install_stop(stop, signals)
    out.emit({"event": "ready", "channel": sub.channel.hex(), "did": sub.did})
    count = 0
    events = asyncio.create_task(_pump_events(sub, out)) if args.events else None
    loop = asyncio.get_running_loop()
    quiet_end = loop.time() + args.timeout  # without --follow: stop after --timeout seconds without a message
    stdin_end = asyncio.Event()  # stdin read to its EOF and every line acted on (at once without --publish-stdin)

    def at_eof() -> None:  # (publishing was activity: the quiet --timeout counts from stdin's end)
        nonlocal quiet_end
        quiet_end = max(quiet_end, loop.time() + args.timeout)
        stdin_end.set()

    publisher: _StdinWorker | None = None
    if args.publish_stdin:  # a provider that follows the alerts and sends its events, in one process
        publisher = _StdinWorker(lambda line: _member_line(sub, line, only, out), at_eof)
    else:
        stdin_end.set()
    timed_out = False
    cut = False  # stopped before stdin's EOF: its later lines were never read, nor published
    try:
        # (A reader that went away, `streams tail | head -1`, stops it too: nothing more would be shown.)
        while not stop.is_set() and not out.broken:
            if args.count and count >= args.count:
                if stdin_end.is_set():
                    break
                # --count messages taken: no more are, and stdin is still published, to its end.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stdin_end.wait(), 0.25)
                continue
            # Short waits either way, so that SIGINT/SIGTERM (``stop``) ends the command at once.  While stdin is
            # still read and published (--publish-stdin), no quiet spell ends the command: it is at work.
            busy = args.follow or not stdin_end.is_set()
            wait = 0.25 if busy else max(0.0, min(0.25, quiet_end - loop.time()))
            try:
                m = await sub.next_message(timeout=wait)
            except StreamsTimeoutError:
                if busy or loop.time() < quiet_end:
                    continue
                timed_out = True
                break
            quiet_end = loop.time() + args.timeout
            if only is not None and m.branch != only:
                sub.put_back(m)  # left for a later tail: never marked delivered unseen
                continue
            if not out.emit(message_doc(m)):
                # The reader went away (`streams tail | head -1`): stop, and leave this message, the first whose
                # line could not be written, and the later ones for the next tail.  The lines written before it
                # that the reader left unread in the pipe are marked delivered all the same: nothing here tells
                # them from the ones it read (`tail --help` says so, and to take N messages with --count N).
                sub.put_back(m)
                break
            count += 1
    finally:
        if publisher is not None:  # the lines read before the stop are published first
            await publisher.finish()
            cut = not publisher.at_end
            if cut:  # (a note only where a signal is the way to stop: --follow)
                print(f"streams: {'note' if args.follow and signals else 'error'}: stdin was not read to its end: "
                      "tail stopped before its EOF; the lines after the last one acted on were not published",
                      file=sys.stderr)
        if events is not None:
            events.cancel()
            try:
                await events
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug of ours there must not skip the close below
                _log.exception("tail task failed")
        await sub.close()  # marks the last message delivered: the next tail starts after it
    if timed_out and count == 0 and (hint := unheard_hint(transport, args.curve)):
        # Not an error (a quiet channel ends a tail the same way), but the author's endpoint never answered.
        print(f"streams: warning: no message within {args.timeout} s{hint}", file=sys.stderr)
    status = 0
    if cut and not (args.follow and signals):  # (--follow ends at a signal by design: 0)
        if signals:  # interrupted before it finished: what stdin still held was not published
            what = "terminated" if signals[0] == signal.SIGTERM else "interrupted"
            out.emit({"event": "error", "error": f"{what} before stdin's end: the lines after the last one acted "
                      "on were not published", "type": "Interrupted"})
            status = 128 + signals[0]
        else:  # stdout's reader went away (nothing more is printed)
            status = 1
    out.emit({"event": "done", "messages": count})
    return status


def _cmd_tail(args: argparse.Namespace) -> int:
    read_passphrase_first(args)
    return asyncio.run(tail(args, LinePrinter(_json(args))))


# --- status --------------------------------------------------------------------------------------------------


def status_doc(store: Store) -> dict[str, Any]:
    """Everything ``streams status`` shows about an open store (no network)."""
    records = store.load_branches()
    by_id = {rec.id: rec for rec in records}
    chains: dict[bytes, list[dict[str, Any]]] = {}
    for cr in store.load_chains():
        rec = by_id.get(cr.branch)
        chains.setdefault(cr.branch, []).append({"index": cr.publisher, "next_seq": cr.next_seq,
                                                 "covered": cr.covered,
                                                 "conflict": rec.conflict_of(cr) if rec is not None else 0})
    branches = []
    for rec in records:
        members = {i: (did_from_public_key(pk), Permission(p)) for i, pk, p in rec.members}
        mine = members[rec.me][1] if rec.me in members else None
        for doc in chains.get(rec.id, []):
            member = members.get(doc["index"])
            doc["publisher"] = member[0] if member is not None else None
        branches.append({
            "branch": rec.id.hex(), "epoch": rec.epoch, "open": rec.state == "open",
            "permission": permission_name(mine) if mine is not None else None,
            "members": [{"index": i, "did": d, "permission": permission_name(p)}
                        for i, (d, p) in sorted(members.items())],
            "chains": sorted(chains.get(rec.id, []), key=lambda x: x["index"]),
        })
    channel = store.meta("channel")
    return {"ok": True, "store": str(store.path), "role": store.meta("role"), "did": store.identity.did,
            "name": store.meta("name") or None, "author": store.meta("author_did"),
            "channel": channel.hex() if isinstance(channel, bytes) else None,
            "branches": branches, "retained_messages": store.log_count(), "files": _files(store.path)}


def _files(path: Path) -> dict[str, int]:
    """Bytes of a store's files on disk: the database, its WAL, its frame file and its commit journal (0 when
    absent; a running party's journal holds the commits it has not applied to the database yet)."""
    sizes = {}
    for key, p in (("store", path), ("wal", Path(f"{path}-wal")), ("frames", Path(f"{path}-frames")),
                   ("commits", Path(f"{path}-commits"))):
        try:
            sizes[key] = p.stat().st_size
        except FileNotFoundError:
            sizes[key] = 0
    return sizes


def _status_text(d: dict[str, Any]) -> str:
    lines = [f"{d['role']} {d['did']}", f"channel {d['channel']}" + (f" ({d['name']})" if d["name"] else "")]
    if d["role"] == "subscriber":
        lines.append(f"author  {d['author']}")
    for b in d["branches"]:
        lines.append(f"branch {b['branch']} epoch {b['epoch']} {'open' if b['open'] else 'closed'} "
                     f"({b['permission']})")
        for m in b["members"]:
            lines.append(f"  member {m['index']} {m['did']} ({m['permission']})")
        for c in b["chains"]:
            lines.append(f"  chain of {c['index']}: next seq {c['next_seq']}, covered through {c['covered']}")
            if c["conflict"]:
                lines.append(f"    CONFLICT: the author's ACK of this chain through seq {c['conflict']} contradicts "
                             "this store (ChainConflict): do not publish from it")
    lines.append(f"retained log: {d['retained_messages']} messages")
    f = d["files"]
    lines.append(f"files: {d['store']} {f['store']:,} B, -wal {f['wal']:,} B, -frames {f['frames']:,} B, "
                 f"-commits {f['commits']:,} B (back up with streams backup)")
    if f["commits"]:
        lines.append("  (-commits: commits its party has not applied to the database yet, not counted above: "
                     "applied within a heartbeat, at close, or when the store is next opened)")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> Result:
    store = Store.open(args.store, read_passphrase(args))
    try:
        d = status_doc(store)
    finally:
        store.close()
    return Result(d, _status_text(d))


def _cmd_backup(args: argparse.Namespace) -> Result:
    start = last = time.monotonic()

    def progress(phase: str, done: int, total: int) -> None:  # on stderr (stdout is the result), once a second
        nonlocal last
        now = time.monotonic()
        if now - last >= 1.0 or (done == total and now - start >= 1.0):
            last = now
            what = f"copied {done:,} of {total:,} frame file bytes" if phase == "copy" else \
                f"checked {done:,} of {total:,} logged frames"
            print(f"streams backup: {what} ({done * 100 // max(total, 1)}%)", file=sys.stderr, flush=True)

    r = backup(args.store, args.to, verify=args.verify, progress=progress)
    d = {"ok": True, "store": args.store, "backup": str(r.path), "frames_file": f"{r.path}-frames",
         "db_bytes": r.db_bytes, "log_rows": r.log_rows, "frames_bytes": r.frames_bytes,
         "frames_checked": r.frames_checked if args.verify else None}
    text = (f"backed up {args.store} to {r.path} (+ {r.path}-frames): {r.log_rows} logged messages, "
            f"{r.db_bytes:,} + {r.frames_bytes:,} bytes"
            + (f"; {r.frames_checked} frames read back and checked" if args.verify else ""))
    return Result(d, text)


# --- registration --------------------------------------------------------------------------------------------


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False) or getattr(args, "global_json", False))


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _wait_seconds(value: str) -> float:
    v = _number(value)
    if not v > 0:  # NaN too
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return v


def _positive(value: str) -> float:
    v = _number(value)
    if not v >= 0:  # (so, not NaN either: every comparison with it is false, a subscribe would wait forever)
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least ``minimum``."""

    def whole(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return n

    return whole


#: ``--curve`` of ``serve``.
_CURVE_AUTHOR_HELP = ("CurveZMQ on every connection (defence in depth, SPEC 14.5): the server key is the author's "
                      "X25519 key, derived from its DID, and a client completes the handshake only if its key is that "
                      "of a member of an open branch or of a DID the policy could admit; subscribers need --curve too")
#: ``--curve`` of ``subscribe``, ``publish`` and ``tail``.
_CURVE_SUBSCRIBER_HELP = ("CurveZMQ, for an author that serves with --curve: the keys are the X25519 keys of the "
                          "store's DID and of the author's DID")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streams serve|subscribe|publish|tail|status|backup``."""
    s = add_command(subparsers, "serve", _cmd_serve, help="serve a channel as its author (until SIGINT/SIGTERM)",
                    description=(
                        "Serve a channel as its author over ZeroMQ: admit subscribers by a policy file, receive\n"
                        "their messages, print one line per event (JSON Lines with --json), until SIGINT or\n"
                        "SIGTERM, then close cleanly -- or until the author fails under it (a store that cannot\n"
                        "be written, a dead endpoint or anchoring): an 'error' line then says why, its 'type'\n"
                        "the failure's (StorageError, say), and the exit status is 1.  The first run creates the\n"
                        "store from --keystore/--name; later runs reopen it.  The first line is the 'ready' event\n"
                        "with the channel id, the DID and the bound addresses.  With --publish-stdin, JSON lines\n"
                        "{\"to\": DID or branch hex, \"data\": text} (or \"data_b64\") on stdin are published, and\n"
                        "{\"revoke\": DID or branch hex} cuts a subscriber off (its branch and its groups);\n"
                        '{"group": [DID, ...], "permission": "read" (default) or "audit"} opens a broadcast branch\n'
                        "for admitted subscribers that hold that permission on their own branch (publish to it by\n"
                        'its hex), and {"remove": DID, "from": group hex} takes a member out of one.  A line with a\n'
                        "key its form does not take is refused.  SIGHUP re-reads the policy file and revokes the\n"
                        "subscribers it no longer admits (so does every start).  With --curve, connections use\n"
                        "CurveZMQ and only DIDs the channel knows complete the handshake (subscribers need\n"
                        "--curve)."))
    s.add_argument("--store", required=True, metavar="PATH", help="the author's store (SQLite)")
    s.add_argument("--bind", required=True, action="append", metavar="ADDR",
                   help="address to bind, e.g. tcp://127.0.0.1:0 (random port) or ipc://PATH; repeatable")
    s.add_argument("--policy", required=True, metavar="FILE", help="admission policy (TOML, see policy check)")
    s.add_argument("--keystore", metavar="PATH", help="identity of the author (first run only)")
    s.add_argument("--name", metavar="NAME", help="channel name (first run only)")
    s.add_argument("--publish-stdin", action="store_true", help="publish JSON lines read from stdin")
    s.add_argument("--curve", action="store_true", help=_CURVE_AUTHOR_HELP)
    s.add_argument("--ledger", metavar="SPEC",
                   help="anchor the chain heads: sqlite:PATH (embedded ledger, created if missing) or iota:URL")
    s.add_argument("--anchor-interval-ms", type=_at_least(1), default=1000, metavar="MS",
                   help="anchoring epoch length with --ledger (1000)")
    # The demo's monitor stops when its orchestrator (holding the other end of stdin) goes away.
    s.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    add_passphrase_options(s, "keystore and store")

    c = add_command(subparsers, "subscribe", _cmd_subscribe, help="subscribe to a channel; print the granted branch",
                    description=(
                        "Subscribe to a channel: the first run creates the store from --keystore for the channel\n"
                        "--channel of --author; every run performs the handshake (proof of control of the DID\n"
                        "over the author's fresh challenge) and prints the granted branch.  Exit status 1 if\n"
                        "the author refuses.  Give --curve (every run, and to publish and tail) if the author\n"
                        "serves with --curve."))
    c.add_argument("--store", required=True, metavar="PATH", help="the subscriber's store (SQLite)")
    c.add_argument("--connect", required=True, metavar="ADDR", help="the author's address")
    c.add_argument("--keystore", metavar="PATH", help="identity of the subscriber (first run only)")
    c.add_argument("--author", metavar="DID", help="the author's DID (first run only)")
    c.add_argument("--channel", metavar="HEX", help="the channel id (first run only)")
    c.add_argument("--credential", action="append", metavar="FILE",
                   help="a credential to present (bound to the challenge); repeat it for several, all in one "
                        "presentation (a policy in mode \"all\" may need one per rule)")
    c.add_argument("--holder-keystore", metavar="PATH",
                   help="keystore that signs the presentation (default: the store's identity; must be the same DID)")
    c.add_argument("--timeout", type=_positive, default=15.0, metavar="S", help="give up after S seconds (15)")
    c.add_argument("--curve", action="store_true",
                   help=_CURVE_SUBSCRIBER_HELP + " (on a first run, of --keystore and --author)")
    add_passphrase_options(c, "keystore and store")

    p = add_command(subparsers, "publish", _cmd_publish, help="publish one message as a subscriber",
                    description=(
                        "Publish one message on the subscriber's branch (its only writable branch unless\n"
                        "--branch) and wait up to --wait-ack seconds for the author's signed acknowledgement\n"
                        "that it is on the author's disk.  Exit status 1 if it did not come."))
    p.add_argument("--store", required=True, metavar="PATH", help="the subscriber's store")
    p.add_argument("--connect", required=True, metavar="ADDR", help="the author's address")
    p.add_argument("--branch", metavar="HEX", help="branch to publish on")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="TEXT", help="the payload, as UTF-8 text")
    src.add_argument("--file", metavar="FILE", help="read the payload from FILE ('-' for stdin)")
    p.add_argument("--wait-ack", type=_positive, default=10.0, metavar="S",
                   help="seconds to wait for the author's durable ACK (default 10; 0: do not wait)")
    p.add_argument("--curve", action="store_true", help=_CURVE_SUBSCRIBER_HELP)
    add_passphrase_options(p, "store")

    t = add_command(subparsers, "tail", _cmd_tail, help="print messages received on a subscriber's branches",
                    description=(
                        "Print the messages received (those not yet shown by an earlier tail first: the store\n"
                        "keeps the application's cursor; anything missed while offline is fetched from the\n"
                        "author's retained log).  After a crash of tail (kill -9, a power loss), the messages\n"
                        "it showed in its last half second or so may be shown again: dedupe by (branch, index,\n"
                        "seq), which each --json message line carries.  Stops after --count messages or --timeout\n"
                        "seconds without one; --follow runs until SIGINT/SIGTERM.  With --branch (one of the\n"
                        "store's branches), messages of other branches are not shown and are left for a later\n"
                        "tail.  A reader that stops early (`streams tail | head -2`) can take messages it never\n"
                        "shows: the lines written into the pipe before it left count as shown.  To take N\n"
                        "messages, use --count N.\n"
                        "With --publish-stdin, publishing stdin is work too: tail runs until stdin's end (every\n"
                        "line acted on), and only then do --count and --timeout (counted from that end) stop it.\n"
                        "Stopped before stdin's end (SIGINT/SIGTERM), it says on stderr that stdin was not read to\n"
                        "its end and exits 130/143 (with --follow, where a signal is the way to stop, 0)."))
    t.add_argument("--store", required=True, metavar="PATH", help="the subscriber's store")
    t.add_argument("--connect", required=True, metavar="ADDR", help="the author's address")
    t.add_argument("--branch", metavar="HEX", help="only this branch")
    t.add_argument("--follow", action="store_true", help="keep running until interrupted")
    t.add_argument("--count", type=_at_least(0), default=0, metavar="N", help="stop after N messages")
    t.add_argument("--timeout", type=_positive, default=3.0, metavar="S",
                   help="stop after S seconds without a message (default 3; ignored with --follow; with "
                        "--publish-stdin, counted from stdin's end)")
    t.add_argument("--events", action="store_true",
                   help="also print rejections, gaps, closures, ACKs, anchor proofs")
    t.add_argument("--ledger", metavar="SPEC",
                   help="check the author's anchor proofs against this ledger: sqlite:PATH or iota:URL (the "
                        "author's --ledger); --events shows them with ledger_verified")
    t.add_argument("--anchor-wait", type=_wait_seconds, default=ANCHOR_WAIT, metavar="S",
                   help="with --ledger: how long a proof whose checkpoint the ledger does not know or has not "
                        "confirmed yet (a node that lags behind the author's) is checked again before it is "
                        f"rejected NOT_ANCHORED (default {ANCHOR_WAIT:.0f}; inf: never)")
    t.add_argument("--publish-stdin", action="store_true",
                   help='also publish JSON lines {"data": text} (or "data_b64"; "branch": hex if several) read from '
                        'stdin, on the writable branch (--branch if given)')
    t.add_argument("--curve", action="store_true", help=_CURVE_SUBSCRIBER_HELP)
    add_passphrase_options(t, "store")

    st = add_command(subparsers, "status", _cmd_status, help="show a store: role, DID, channel, branches, cursors",
                     description=(
                         "Show what a store holds, offline: role (author or subscriber), DID, channel, each\n"
                         "branch (epoch, permission, open or closed, members), each chain's cursor (next\n"
                         "sequence number, covered by a signature through; 'conflict', the seq of the author's\n"
                         "ACK of our own chain that contradicts this store -- ChainConflict: do not publish from\n"
                         "it -- or 0), the retained log size and the sizes of the store's files (the database,\n"
                         "its -wal, its -frames file and its -commits file, the commit journal: what a running\n"
                         "party has not applied to the database yet)."))
    st.add_argument("--store", required=True, metavar="PATH", help="an author's or a subscriber's store")
    add_passphrase_options(st, "store")

    bk = add_command(subparsers, "backup", _cmd_backup,
                     help="copy a store (both its files) safely, even while in use",
                     description=(
                         "Copy a store to a new path while its party may be running: the SQLite database as one\n"
                         "consistent snapshot, then its frame file (<store>-frames) up to the length that snapshot\n"
                         "needs, both synced and renamed into place only when complete.  Never copy a live store\n"
                         "with cp.  The copy opens with the same passphrase (none is needed to make it); restore by\n"
                         "pointing --store at it, or, with the party stopped: delete <store>-wal, <store>-shm and\n"
                         "<store>-commits (after a crash the -wal and the commit journal hold what was written after\n"
                         "the snapshot, and would be replayed over the copy; opening refuses only a copy never\n"
                         "opened beside a -wal), then move the\n"
                         "copy to <store> and its -frames file to <store>-frames.\n"
                         "--verify reads every logged frame of the copy back and checks it against its hash.\n"
                         "\n"
                         "A restore goes back to the snapshot: everything after it is lost (messages, cursors,\n"
                         "anchor epochs).  A party restored from a copy older than what it already sent must not\n"
                         "publish: it would sign different messages at sequence numbers it already used (forks,\n"
                         "recorded by every member as evidence against it), and an author's anchoring would sign a\n"
                         "second history (it refuses when the ledger is ahead of the store; `streams audit\n"
                         "--ledger` of such a store fails).  Restore a copy only if the party published nothing\n"
                         "after it (e.g. the copy was taken after the party stopped).  Otherwise, a member starts\n"
                         "over with a new, empty store and re-subscribes (it restarts at the latest anchored heads\n"
                         "of its chains: wait for them before publishing); an author's channel cannot be continued\n"
                         "from a stale copy: keep the copy for audit and open a new channel."))
    bk.add_argument("--store", required=True, metavar="PATH", help="the store to back up")
    bk.add_argument("--to", required=True, metavar="PATH", help="the new store path (must not exist)")
    bk.add_argument("--verify", action="store_true", help="check every logged frame of the copy")
