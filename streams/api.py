"""The asyncio API: :class:`Author` and :class:`Subscriber`, thin drivers over the sans-I/O core and the store.

Each driver owns one core, one :class:`~streams.store.Store` and one :class:`Transport`.  For every batch of
frames received, and for every API call, it

1. feeds the core (``receive`` / ``publish`` / ...),
2. commits the core's changes to SQLite in one transaction -- *before* anything is acknowledged,
3. sends the frames the core produced, and
4. hands events to the application: payload messages through ``async for msg in party`` and everything else
   (gaps, rejections, admissions, closures) through ``async for ev in party.events()``.

Messages are delivered at least once to the application: a message is marked delivered when the application
asks for the next one; after a crash, messages accepted but not yet marked are delivered again.  The protocol
itself accepts each message exactly once (replays are rejected, before and after restarts).  Each chain's
messages reach the application in order: after a restart, its accepted but unmarked messages first (read back
from the store as the bounded queue drains), then the live ones.

If the store fails (disk full, read-only), the call raises :class:`~streams.errors.StorageError`, nothing is
acknowledged, and the party closes itself: reopen it from the store, which holds the last committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self

from . import _crypto
from ._parallel import Parallel, default_threads
from ._state import BranchState
from ._syncer import Syncer
from ._tasks import cancel_and_wait, run_in_task, wait_shielded
from .anchoring_service import AnchorConfig, AnchorService
from .core import (
    AnchorClaim,
    AuthorCore,
    ChainRecord,
    Changes,
    CoreConfig,
    Outgoing,
    SubscriberCore,
    _check_credential,
    _CoreBase,
)
from .errors import (
    AdmissionRefused,
    BrokenResourceError,
    ChainConflictError,
    ClosedResourceError,
    DecodeError,
    LedgerConflict,
    LedgerError,
    LocalProtocolError,
    RejectReason,
    StorageError,
    StreamsTimeoutError,
    VerificationError,
)
from .events import (
    Acknowledged,
    BranchClosed,
    ChainConflict,
    Event,
    FetchRequested,
    ForkDetected,
    MessageReceived,
    PermissionRestricted,
    Refused,
    Rejected,
    Subscribed,
    SubscriberAdmitted,
)
from .identity import Identity, PublicIdentity, dids_of_kx_public
from .ledger.anchoring import verify_anchored
from .ledger.base import Ledger, NotConfirmed, UnknownAnchor
from .policy import Policy, could_admit
from .store import J_APPLY_SOON, MEMLIMIT, OPSLIMIT, Store
from .wire import Grant, Kind, Permission, SigningMode, decode_frame

if TYPE_CHECKING:
    from .anchor import ForkEvidence

__all__ = [
    "AnchorConfig",
    "Author",
    "BatchTransport",
    "BranchInfo",
    "MemoryHub",
    "MemoryTransport",
    "StoreOptions",
    "Subscriber",
    "Transport",
]

log = logging.getLogger("streams")

Clock = Callable[[], int]

#: Seconds a member keeps asking its ledger about an anchor proof's checkpoint that the ledger does not know or has
#: not confirmed yet, before it reports the head NOT_ANCHORED (``Subscriber.create(anchor_wait=...)``).  An IOTA
#: node can lag minutes behind the author's (it syncs after a restart); a checkpoint the author saw confirmed that
#: ours has not after this long is not one we can call anchored.
ANCHOR_WAIT = 600.0


def _check_positive_seconds(name: str, seconds: object, note: str = "") -> None:
    """Raise :class:`LocalProtocolError` unless ``seconds`` is a number above 0 (not a bool; NaN is refused too)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:  # NaN too
        raise LocalProtocolError(f"{name} must be a positive number of seconds{note}, not {seconds!r}")


def _check_anchor_wait(seconds: float) -> None:
    _check_positive_seconds("anchor_wait", seconds, " (math.inf: ask forever)")


#: How many of the store's expired used-nonce rows the author's timer deletes at a tick, at most
#: (:meth:`Author._prune_nonces`): the DELETE runs on the event loop.
NONCE_PRUNE_BATCH = 5_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Transport(Protocol):
    """Moves frames.  Implementations: :class:`MemoryTransport` (tests), ``brokerless`` (ZeroMQ).

    A transport that can lose its connection and reconnect may also have an ``on_reconnect`` attribute: the
    :class:`Subscriber` sets it to a coroutine function that the transport calls after each reconnect (and when
    it notices that the other side restarted); it re-requests whatever was missed (catch-up).  One that routes a
    branch's frames to the peers it knows for that branch may have ``learn_routes(hints)``: the party hands it
    the core's verified routing hints (:meth:`streams.core.AuthorCore.take_routes`) after each send.  One that
    can stop reading a peer may have ``penalize(offenders)``: the party hands it, after each received batch, the
    peers whose frames failed signature or AEAD checks (:meth:`streams.core.AuthorCore.take_offenders`).

    A transport with connection sessions (SPEC 8.9) binds FETCHes to them: an author's has
    ``session_of(peer)`` (the session of the connection ``peer`` speaks on; ``b""`` for a peer it no longer
    knows), a subscriber's a ``session`` attribute (its connection's, None before the author announced one).
    Such a subscriber transport calls ``on_reconnect`` whenever its session changes, the first one included:
    FETCHes made before carry the old one and are refused.
    """

    async def send(self, out: Outgoing) -> None:
        """Send one frame.  ``out.peer``: reply to that peer; ``out.branch``: branch traffic; else everyone."""

    async def recv(self) -> list[tuple[bytes, object]]:
        """Wait for at least one frame and return every frame available now, as (data, peer)."""
        ...

    async def close(self) -> None: ...


class BatchTransport(Transport, Protocol):
    """A :class:`Transport` that can also hand over a burst of frames without awaiting (optional).

    The drivers use ``send_many`` when the transport's class defines it: one call per commit instead of one
    ``await`` per frame (PERF-FLOORS, "one await per message"), and publishes of one group commit leave in one
    burst.  A transport that wraps another and intercepts ``send`` must define ``send_many`` itself (or nothing:
    attributes forwarded through ``__getattr__`` are not used)."""

    def send_many(self, outs: Sequence[Outgoing]) -> None:
        """Send every frame of ``outs``, in order, without blocking (what does not fit is queued or dropped
        and counted: the protocol's gap fill recovers it).  Raises :class:`ClosedResourceError` once closed."""


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How the store is kept."""

    durable: bool = True
    """``synchronous=FULL`` (survives power loss) if True, else ``NORMAL`` (survives process crashes)."""
    opslimit: int = OPSLIMIT
    """Argon2id operations limit for the passphrase KDF."""
    memlimit: int = MEMLIMIT
    """Argon2id memory limit, bytes."""
    journal: bool = True
    """Commit a publish or a received batch by appending one record to ``<store>-commits`` (one ``write``; with
    ``durable``, an ``fdatasync``) instead of a SQLite transaction; the records are applied to the database in
    batches (from ``store.J_APPLY_SOON`` on, usually between messages: in the loop's turn after a publish's frames
    went out or a received batch was handed over; at the latest inside the commit that reaches
    ``store.J_APPLY_RECORDS``; before any other use of the database, once per heartbeat, at close) and, after
    a crash, when the party opens the store again.  Durable in the same sense as a SQLite transaction
    (``durable`` chooses which); 60-170 us less per message end to end here, one awaited publish at a time.
    Readers that do not lock the store (``streams status``, ``audit``; ``backup`` copies the journal too) see the
    records once applied, up to a heartbeat later: see the store module doc.  On by default; False commits each
    as a SQLite transaction."""


@dataclass(frozen=True, slots=True)
class BranchInfo:
    """What a party knows of one branch."""

    id: bytes
    epoch: int
    permission: Permission
    open: bool
    members: tuple[str, ...]  #: member DIDs, index order; the author first


@functools.lru_cache(maxsize=65536)
def _kx_of(sign_public: bytes) -> bytes:
    """A member's X25519 key from its Ed25519 key (cached: about 35 us each, and a group re-key lists them all)."""
    return _crypto.ed25519_pk_to_x25519(sign_public)


class _Party:
    """Shared driver machinery."""

    _core: _CoreBase

    def __init__(self, store: Store, transport: Transport, clock: Clock | None, queue_size: int) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock or wall_clock_ms
        # Payload messages for the application: a bounded deque rather than an asyncio.Queue, so the receive
        # loop appends a whole batch without one await per message and wakes the reader once per batch; when it
        # is full the receive loop waits (back-pressure into the transport, whose own buffers are bounded:
        # THREATS 8).
        self._messages: deque[MessageReceived] = deque()
        self._queue_size = max(1, queue_size)
        self._msg_waiters: list[asyncio.Future[None]] = []
        self._space_waiter: asyncio.Future[None] | None = None
        self._events: deque[Event] = deque(maxlen=10_000)
        self._events_ready = asyncio.Event()
        self._dropped_events = 0
        #: Application cursors to commit: (branch, publisher) -> the last seq of that chain the application took.
        #: A chain's messages are handed out in order, so everything up to it was taken.
        self._delivered: dict[tuple[bytes, int], int] = {}
        #: Chains whose accepted messages the application has not taken are (partly) on disk only, after a
        #: restart: (branch, publisher) -> [last seq read back from the log, last seq accepted].  They are read
        #: back into the queue as it drains (_refill); meanwhile the chain's live messages stay on disk behind them
        #: (their acceptance moves the second cursor), so each chain is delivered in order and the queue bound holds.
        self._backlog: dict[tuple[bytes, int], list[int]] = {}
        #: The signature coverage of backlogged chains the core keeps no cursor of (_redeliver): the store's.
        self._backlog_covered: dict[tuple[bytes, int], int] = {}
        #: Messages handed out by the last next_message(s) call: marked delivered at the next call.
        self._last_given: list[MessageReceived] = []
        # Group commit: publishes wait on this future, resolved by the next commit that covers them (the first
        # publish of a loop iteration schedules it for the next iteration).
        self._group: list[asyncio.Future[None]] | None = None
        # Looked up on the class: a wrapper that intercepts send() and forwards other attributes to what it wraps
        # (__getattr__) must not have its send() bypassed by the wrapped transport's send_many.
        send_many = getattr(type(transport), "send_many", None)
        self._send_many: Callable[[Sequence[Outgoing]], None] | None = (
            getattr(transport, "send_many") if callable(send_many) else None)  # noqa: B009
        learn = getattr(transport, "learn_routes", None)
        self._learn_routes: Callable[[list[tuple[bytes, object, bool]]], None] | None = (
            learn if callable(learn) else None)
        #: Sends one frame at a time (``_send_each``, no ``send_many``) still on the way, a cancelled caller's
        #: hand-off included: routing hints wait until none is (they may forget peers a frame on the way is for).
        self._sending = 0
        #: Per branch, done once the frames of the last commit sent one at a time that has frames of that branch
        #: have gone out (or failed, or were given up at close): the next such commit's wait for it
        #: (:meth:`_send_each`).
        self._sends_done: dict[bytes, asyncio.Future[None]] = {}
        #: The errors of FETCHes not served (a damaged logged message), and when each was last logged as an error.
        self._unserved_logged: dict[str, int] = {}
        #: Stored grants found intact (author), as (branch, epoch, digest of the stored bytes): each is checked
        #: once, not at every grant sync; bytes damaged since read back with another digest, and are checked.
        self._grants_verified: set[tuple[bytes, int, bytes]] = set()
        penalize = getattr(transport, "penalize", None)
        self._penalize: Callable[[list[tuple[object, int]]], None] | None = (
            penalize if callable(penalize) else None)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._apply_queued = False  #: an apply of the commit journal is scheduled (_apply_soon)
        self._apply_failed = False  #: it failed: none is scheduled again before the journal was applied otherwise
        self._close_task: asyncio.Future[None] | None = None  #: the first close(), run as a task of its own
        self._broken: BaseException | None = None
        self._ack_waiters: list[tuple[bytes, int, asyncio.Future[None]]] = []
        #: Set when publishing would contradict what this party already signed (its anchoring found the ledger
        #: ahead of its store: a stale restore): publish raises it.
        self._no_publish: LedgerConflict | None = None
        self.heartbeat_ms = 500
        # The timer loop sleeps until _timer_at (party clock, ms), or until _timer_wake: set when the core sets an
        # earlier deadline meanwhile (see _rearm_timer).
        self._timer_at = -(1 << 62)
        self._timer_wake = asyncio.Event()
        #: Every this many heartbeats, HEAD notices are sent even for chains that did not move (a lost notice or
        #: a lost catch-up request would otherwise leave a quiet chain's tail unnoticed: THREATS 4).
        self.head_refresh_ticks = 20
        # The signature checks of a received batch run on the loop's thread plus helper threads (see
        # crypto_threads).
        self._parallel = Parallel(default_threads())
        #: A durable, journaled store's commit syncs, on a thread of their own (streams._syncer): a commit's frames
        #: are sent, and received messages handed over, once its sync has ended, while the loop goes on.  Over a
        #: transport without ``send_many`` each commit syncs in place.
        self._syncer: Syncer | None = Syncer(store) if store.defers_syncs and self._send_many is not None else None
        #: Received batches waiting for their sync before their events are reported (messages handed to the
        #: application), in order (_deliver_forever): (the sync's future, the batch's events).  At most two: the
        #: receive loop checks the next batch while the one before syncs, and waits beyond.
        self._deliveries: deque[tuple[asyncio.Future[None], list[Event]]] = deque()
        self._deliveries_moved = asyncio.Event()  #: set when a batch is queued or taken from _deliveries

    def _install(self) -> None:
        """Let the core match anchor proofs of older heads against the log (read-only, no I/O in the core)."""
        store = self._store

        self._core.log_lookup = store.log_hash
        # The grant frames and admission evidence stay on disk, not in memory (O(branches) state stays small).
        self._core.extras_lookup = store.branch_extras
        # A branch's grant history, read only for grant syncs (what the author serves: checked first).
        author = isinstance(self._core, AuthorCore)
        self._core.grants_lookup = self._served_grants if author else store.grants_between
        if author:
            self._core.grant_intact = self._grant_intact
        self._hook_parallel()
        # FETCHes bound to the connection they travel on (SPEC 8.9), where the transport has sessions: the author
        # checks them against the connection's session, a member binds its own to its connection's.
        transport = self._transport
        session_of = getattr(transport, "session_of", None)
        if callable(session_of):
            self._core.session_of = session_of
        if hasattr(transport, "session"):
            self._core.my_session = lambda: transport.session

    def _hook_parallel(self) -> None:
        self._core.verify_many = self._parallel.verify_many

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def crypto_threads(self) -> int:
        """Helper threads for the Ed25519 signature checks of each received batch, alongside the event loop's
        thread (libsodium releases the GIL, so they run in parallel).  Default: one if this process may use more
        than one CPU, else 0.  Set to 0 to keep everything on the event loop's thread.  Signing stays on the
        loop's thread: a signature (about 15 us) is too short to win back a hand-over to a helper (bench)."""
        return self._parallel.threads

    @crypto_threads.setter
    def crypto_threads(self, n: int) -> None:
        if n < 0:
            raise LocalProtocolError("crypto_threads must be >= 0")
        old, self._parallel = self._parallel, Parallel(n)
        self._hook_parallel()
        old.close()

    @property
    def did(self) -> str:
        """This party's DID."""
        return self._store.identity.did

    @property
    def channel(self) -> bytes:
        """The channel id, 32 bytes (what a subscriber is given out of band, with the author's DID)."""
        return self._core.channel

    @property
    def store(self) -> Store:
        """The party's store (read-only use: the party commits to it)."""
        return self._store

    def branches(self) -> list[BranchInfo]:
        """Every branch this party holds, open or closed."""
        out = []
        for bid in self._core.branch_ids():
            epoch, perm, state, members = self._core.branch_info(bid)
            out.append(BranchInfo(bid, epoch, perm, state.value == "open", members))
        return out

    async def publish(self, branch: bytes, payload: bytes) -> int:
        """Publish ``payload`` on ``branch``; returns its sequence number once it is on disk and sent.

        Publishes made by several tasks in the same event-loop iteration share one store transaction (group
        commit) and leave in one burst; each call still returns only after the commit that holds its message.

        Raises :class:`LocalProtocolError` (no write permission, payload too large, unknown branch; its
        :class:`ChainConflictError` when our chain conflicts with the author's copy: nothing is signed),
        :class:`ClosedResourceError` (branch or party closed), :class:`StorageError` (nothing acknowledged),
        :class:`LedgerConflict` (an author whose anchoring found the ledger ahead of its store: it publishes
        nothing more, see :meth:`Author.open`).

        Cancelling the call (a timeout) does not take the message back: it has its seq, and the next commit
        stores and sends it as any other -- publishing it again publishes a second message."""
        self._check_usable()
        if self._no_publish is not None:
            raise LedgerConflict(str(self._no_publish))
        seq = self._core.publish(branch, payload, self._clock())
        await self._durable()
        return seq

    async def publish_many(self, branch: bytes, payloads: Iterable[bytes]) -> list[int]:
        """Publish several payloads on ``branch``, in order, with one store transaction and one send burst;
        returns their sequence numbers once all of them are on disk and sent.  For streaming producers: the
        per-message cost of a commit is paid once per call.

        All or nothing for the caller's errors: every payload is checked before any is published.  Raises as
        :meth:`publish`."""
        self._check_usable()
        if self._no_publish is not None:
            raise LedgerConflict(str(self._no_publish))
        seqs = self._core.publish_many(branch, list(payloads), self._clock())
        if seqs:
            await self._durable(now=True)
        return seqs

    async def drain(self, branch: bytes | None = None) -> None:
        """Wait until the transport can send more to ``branch`` (to everyone if None) at once -- flow control
        for a producer that must not outrun its readers (asyncio's ``StreamWriter.drain`` idiom).  Over
        ``brokerless`` it waits while a peer of the branch has used up its credit window or has frames queued
        (:meth:`brokerless.AuthorEndpoint.drain`); without it such frames are queued, then dropped and recovered
        by gap fill.  Returns at once on a transport without flow control.  Raises
        :class:`ClosedResourceError` if the party or the transport closes."""
        self._check_usable()
        drain = getattr(type(self._transport), "drain", None)
        if callable(drain):
            await self._transport.drain(branch)  # type: ignore[attr-defined]

    async def wait_acknowledged(self, branch: bytes, seq: int, timeout: float | None = None) -> None:
        """Wait until a member of ``branch`` acknowledged (signed ACK, sent after its commit) that our message
        ``seq`` -- and every earlier one of our chain -- is on its disk.

        ``publish`` stays non-blocking; call this when the sender must know the receiver holds the message.  It
        sends a signed HEAD notice of our chain (once per head), which the receiver answers at once, outside its
        ACK pacing: about one round trip plus the receiver's commit.
        Raises :class:`StreamsTimeoutError` after ``timeout`` seconds, :class:`LocalProtocolError` for an unknown
        branch, or when a re-key takes our write permission away before the ACK came (the author then refuses
        the message; given back meanwhile, the seq is used again by the next publish) or the author's ACK shows
        that our chain conflicts with its copy (:class:`ChainConflictError`, after the :class:`ChainConflict`
        event: a store restored from a stale copy),
        :class:`ClosedResourceError` if the party closes, or the branch is or becomes closed (revoked, left)
        before the ACK came."""
        self._check_usable()
        if self._core.acknowledged(branch) >= seq:
            return
        if self._core.branch_state(branch) is BranchState.CLOSED:
            raise ClosedResourceError(f"branch {branch.hex()} is closed: seq {seq} was not acknowledged")
        if self._core.chain_conflict(branch):
            raise _conflict_error(branch, seq)
        nxt = self._core.own_next_seq(branch)
        if 0 < nxt <= seq:
            # Not published on our chain as it is: never, or refused while our write had lapsed (the chain restarted
            # at the author's head since, and that seq goes to what we publish next).
            raise LocalProtocolError(f"seq {seq} on branch {branch.hex()} is not a message of our chain (its next "
                                     f"is {nxt})")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (branch, seq, fut)
        self._ack_waiters.append(entry)
        try:
            if self._core.notify_head(branch):
                # A HEAD notice of our chain: a receiver that holds the head answers it at once, rather than
                # at the end of its ACK pacing interval (SPEC 12) -- a publisher that waits for each ACK is
                # not held to one message per ack_interval_ms.
                await self._flush()
            async with asyncio.timeout(timeout):  # (not wait_for: see _wait_messages)
                await fut
        except TimeoutError:
            raise StreamsTimeoutError(f"seq {seq} not acknowledged within {timeout} s") from None
        finally:
            if entry in self._ack_waiters:
                self._ack_waiters.remove(entry)

    def __aiter__(self) -> AsyncIterator[MessageReceived]:
        """``async for msg in party``: each step is a :meth:`next_message`; the iteration ends once the party is
        closed and drained -- or, if it closed itself after a failure (a store that can no longer be written, a
        transport or a background task that died), raises :class:`BrokenResourceError` with the failure as its
        cause.  A step cancelled (a timeout around ``anext``) leaves the iteration usable."""
        return _Messages(self)

    async def next_message(self, timeout: float | None = None) -> MessageReceived:
        """The next payload message.  Marks the previous one(s) delivered.  Raises :class:`StreamsTimeoutError`
        after ``timeout`` seconds, :class:`ClosedResourceError` once closed and drained."""
        self._mark_given()
        self._top_up()
        if not self._messages:
            await self._wait_messages(timeout)
        msg = self._messages.popleft()
        self._last_given.append(msg)
        self._taken()
        return msg

    async def next_messages(self, max_n: int = 256, timeout: float | None = None) -> list[MessageReceived]:
        """Up to ``max_n`` payload messages, in order: every one waiting now, or the first to arrive.  Marks the
        messages of the previous call delivered (as :meth:`next_message` does).  For streaming consumers: one
        call per batch instead of one per message.

        Raises :class:`LocalProtocolError` if ``max_n < 1``, :class:`StreamsTimeoutError` after ``timeout``
        seconds without a message, :class:`ClosedResourceError` once closed and drained."""
        if max_n < 1:
            raise LocalProtocolError("max_n must be at least 1")
        self._mark_given()
        self._top_up()
        if not self._messages:
            await self._wait_messages(timeout)
        q = self._messages
        if len(q) <= max_n:
            out = list(q)
            q.clear()
        else:
            out = [q.popleft() for _ in range(max_n)]
        self._last_given = out
        self._taken()
        return out

    def put_back(self, message: MessageReceived) -> None:
        """Leave ``message``, taken by the last :meth:`next_message`/:meth:`next_messages` call, undelivered: it
        is not marked delivered, so it comes again at the next open.  A chain's delivery cursor is one sequence
        number: every later message of its chain must be put back too (as a reader that skips whole branches
        does), or taking one of them marks this one delivered with it."""
        self._last_given = [m for m in self._last_given if m is not message]

    def _mark_given(self) -> None:
        """What the application took last time is delivered: it came back for more."""
        if self._last_given:
            d = self._delivered
            for m in self._last_given:
                d[(m.branch, m.publisher)] = m.seq
            self._last_given = []

    def _top_up(self) -> None:
        """Read backlogged messages back from the store once the queue is half empty (not once per message)."""
        if self._backlog and not self._closed and len(self._messages) <= self._queue_size // 2:
            self._refill()

    def _refill(self) -> None:
        """Queue backlogged messages from the store while there is room, oldest first in each chain; a chain
        whose backlog is exhausted leaves it (its later messages arrive live, after the ones queued here)."""
        backlog, q = self._backlog, self._messages
        while backlog:
            room = self._queue_size - len(q)
            if room <= 0:
                return
            key = next(iter(backlog))
            cur = backlog[key]
            rows = self._store.log_page(key[0], key[1], cur[0] + 1, cur[1], room)
            covered = self._backlog_covered.get(key)
            for seq, frame in rows:
                msg = self._core.open_logged(frame, covered)
                if msg is not None and (msg.branch, msg.publisher, msg.seq) != (key[0], key[1], seq):
                    # The log is not authenticated: a row holding (or referring to) the frame of another position
                    # -- an edit, frames being signed and sealed -- is not handed out as that message again.
                    log.error("the logged message at branch %s publisher %d seq %d in %s holds the frame of "
                              "publisher %d seq %d: the store was altered; not redelivered", key[0].hex(), key[1],
                              seq, self._store.path, msg.publisher, msg.seq)
                    msg = None
                if msg is not None:  # None: a checkpoint, or nothing we can read (skipped, as live)
                    q.append(msg)
                cur[0] = seq
            if len(rows) < room:
                del backlog[key]
                self._backlog_covered.pop(key, None)

    async def _wait_messages(self, timeout: float | None) -> None:
        """Until a message is waiting.  Raises StreamsTimeoutError, or ClosedResourceError once closed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._messages:
            if self._closed:
                raise ClosedResourceError("closed") from self._broken
            fut: asyncio.Future[None] = loop.create_future()
            self._msg_waiters.append(fut)
            try:
                if deadline is None:
                    await fut
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise StreamsTimeoutError("no message within the timeout")
                    # Not asyncio.wait_for: on Python 3.11 it swallows our caller's cancellation when the message
                    # comes in the same loop turn (it returns the result), and the cancelled reader goes on.
                    try:
                        async with asyncio.timeout(remaining):
                            await fut
                    except TimeoutError:
                        raise StreamsTimeoutError("no message within the timeout") from None
            finally:
                if fut in self._msg_waiters:
                    self._msg_waiters.remove(fut)

    def _taken(self) -> None:
        """The application took messages: let a receive loop waiting for room go on."""
        w = self._space_waiter
        if w is not None and len(self._messages) < self._queue_size and not w.done():
            w.set_result(None)

    def _wake_readers(self) -> bool:
        """Wake the tasks waiting in next_message(s); True if there were any."""
        woke = False
        for w in self._msg_waiters:
            if not w.done():
                w.set_result(None)
                woke = True
        self._msg_waiters.clear()
        return woke

    async def _put_message(self, msg: MessageReceived) -> None:
        """Queue a message for the application; waits while the queue is full (back-pressure)."""
        while len(self._messages) >= self._queue_size and not self._closed:
            self._wake_readers()
            fut = self._space_waiter = asyncio.get_running_loop().create_future()
            try:
                await fut
            finally:
                self._space_waiter = None
        self._messages.append(msg)

    def events(self) -> AsyncIterator[Event]:
        """Every non-message event (gaps, rejections, admissions, grants, closures), in order; the iteration ends
        once the party is closed and they are drained.  A step cancelled (a timeout around ``anext``) leaves the
        iteration usable."""
        return _Events(self)

    def pending_events(self) -> list[Event]:
        """Take the non-message events that are waiting, without blocking."""
        out = list(self._events)
        self._events.clear()
        return out

    def forks(self) -> list[ForkDetected]:
        """Every fork this party has detected and kept as evidence (THREATS 7), oldest first.  Only evidence that
        verifies: the ``forks`` table is not authenticated, and a row that proves nothing is no fork."""
        from .anchor import ForkEvidence

        return [ForkDetected(b, p, s, ForkEvidence(fa, fb)) for b, p, s, fa, fb in self._store.forks()
                if self._fork_holds(b, p, s, fa, fb)]

    def _fork_holds(self, branch: bytes, publisher: int, seq: int, frame_a: bytes, frame_b: bytes) -> bool:
        """Whether a ``forks`` row is evidence of a fork at its own position: both frames signed by the chain's
        publisher, at that position of our channel, claiming different messages."""
        from .anchor import ForkEvidence, check_fork

        b = self._core._branches.get(branch)
        member = None if b is None else b.members.get(publisher)
        if member is None or type(frame_a) is not bytes or type(frame_b) is not bytes:
            return False
        try:
            where = check_fork(ForkEvidence(frame_a, frame_b), member[0])
        except (DecodeError, VerificationError):
            return False
        return where == (self._core.channel, branch, publisher, seq)

    async def close(self) -> None:
        """Stop, persist the application cursor, close the transport and the store.  Idempotent: a call while
        another is in progress returns when that one has finished (the store and the transport are closed then:
        the same address can be bound again at once).  A ledger passed in is not closed: it belongs to the
        caller."""
        if self._closed:
            if self._close_task is not None:
                await wait_shielded(self._close_task)
            return
        self._closed = True
        # Its own task: a caller cancelled meanwhile gets its CancelledError once everything is closed.
        self._close_task = asyncio.ensure_future(self._close())
        await wait_shielded(self._close_task)

    async def _close(self) -> None:
        await self._stop_services()
        for _b, _s, f in self._ack_waiters:
            if not f.done():
                f.set_exception(self._closed_error("closed before the ACK came"))
        self._end_waits()
        await cancel_and_wait(self._tasks)
        try:
            if self._broken is None:
                await self._final_commit()
        finally:  # whatever happened above, the waiters are answered and the transport and the store released
            group, self._group = self._group, None
            _settle(group, ClosedResourceError("closed before the commit"))
            self._events_ready.set()
            self._wake_readers()
            if self._space_waiter is not None and not self._space_waiter.done():
                self._space_waiter.set_result(None)
            try:
                await self._transport.close()
            finally:
                self._parallel.close()
                if self._syncer is not None:
                    await self._syncer.close()  # (a sync under way uses the store's descriptor)
                self._store.close()

    async def _final_commit(self) -> None:
        """close(): commit what is pending (checkpoints, ACKs, the application's cursor) and send what it made.  A
        send that fails (a transport whose connection is gone) is logged: what it would have sent is committed,
        and a receiver recovers it (catch-up, head notices) -- it must not keep close() from releasing the store."""
        try:
            self._core.flush_checkpoints(self._clock())
            self._core.acknowledge()  # the coalesced ACKs still pending (their cursors commit first)
            await self._flush()
        except (StorageError, ClosedResourceError):
            return
        except Exception as exc:
            log.warning("close: the last frames could not be sent (%s: %s); they are committed", type(exc).__name__,
                        exc)
        with contextlib.suppress(StorageError, ClosedResourceError):
            self._mark_given()
            self._store.commit(self._core.take_changes(), self._delivered)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- driver ------------------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ClosedResourceError("closed after a failure (the cause follows); reopen from the store") \
                from self._broken
        if self._closed:
            raise ClosedResourceError("closed")

    def _raise_broken(self) -> None:
        """An iteration over a drained, closed party: a party that failed under the application (README:
        ``BrokenResourceError``, the failure chained) must not end it as quietly as the application's own close."""
        cause = self._broken
        if cause is not None:
            raise BrokenResourceError(f"the party failed under you: {type(cause).__name__}: {cause}; reopen from "
                                      "the store") from cause

    def _fail(self, exc: BaseException, what: str, *, broken: bool = True) -> None:
        """A driver task died: log why and close the party, so the application learns of it (its next call raises
        :class:`ClosedResourceError`) instead of waiting on a party that silently stopped receiving.  ``broken``
        (an unexpected error: a bug, ours or a transport's): the core's state is suspect, so the close commits
        nothing more and the calls raise with ``exc`` as the cause."""
        if broken:
            if self._broken is None:
                self._broken = exc
            log.error("%s; closing: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
        else:
            log.warning("%s; closing", what)
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))

    async def _durable(self, now: bool = False) -> None:
        """Return once the next commit (and send) that covers everything the core holds now has happened.

        Group commit: the first caller of a loop iteration leads.  It yields once, so every publish made
        meanwhile by other tasks joins the same transaction, then commits and sends for all of them.  Each
        caller waits on its own future (a cancelled caller cancels only its own), resolved only after
        ``Store.commit`` returned: nothing is acknowledged before its commit (THREATS 4).  Raises what the
        commit or the send raised.

        ``now`` (``publish_many``: the caller already batched): with a ``send_many`` transport, commit and send
        at once -- covering any group still waiting for its leader -- and yield to the loop only afterwards, so
        the frames leave before whatever else is ready in this iteration runs (the yield keeps a streaming
        producer from starving the receive loop)."""
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[None] = loop.create_future()
        group = self._group
        if group is not None:
            group.append(mine)
            if now and self._send_many is not None:
                self._group_flush(group)  # the waiting leader finds its group committed and only collects
        else:
            group = self._group = [mine]
            if now and self._send_many is not None:
                self._group_flush(group)
            else:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    mine.cancel()
                    if self._group is group:  # the others still need their commit
                        self._schedule_group_flush(group)
                    raise
                if self._group is group:
                    if self._send_many is not None:
                        self._group_flush(group)
                    else:
                        try:
                            await self._flush()
                        except asyncio.CancelledError:
                            mine.cancel()  # its outcome is nobody's to retrieve now
                            raise
                        except Exception:  # noqa: S110 - _flush failed the group with it: raised below
                            pass
                        self._apply_soon()
        if not mine.done():
            await mine
        mine.result()
        if now:
            await asyncio.sleep(0)

    def _schedule_group_flush(self, group: list[asyncio.Future[None]]) -> None:
        loop = asyncio.get_running_loop()
        if self._send_many is not None:
            loop.call_soon(self._group_flush, group)
        else:
            self._spawn(self._group_flush_async(group))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of the party: awaited by close(), forgotten once done (a party runs for years)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks and not self._closed:
            self._tasks.remove(task)

    def _group_flush(self, group: list[asyncio.Future[None]]) -> None:
        """The group commit, for transports with ``send_many`` (no await: commit, then one burst)."""
        if self._group is not group:
            return  # another flush already committed these publishes and resolved their futures
        try:
            out, covered = self._commit()
        except StorageError:
            return  # _commit failed the group
        with contextlib.suppress(Exception):  # a closed transport: _send_out failed the group with it
            self._send_committed(out, covered)

    async def _group_flush_async(self, group: list[asyncio.Future[None]]) -> None:
        if self._group is group:
            with contextlib.suppress(Exception):  # _flush failed the group with it: the publishers raise it
                await self._flush()

    def _send_committed(self, out: list[Outgoing], group: list[asyncio.Future[None]] | None
                        ) -> asyncio.Future[None] | None:
        """Send a commit's frames (``send_many``) and resolve the publish group it covers: at once if the commit
        is durable (raising what the send raised), else once its sync has ended (_syncer), in commit order --
        then the returned future is done once they went out (or failed: the send's error, or the sync's)."""
        return self._send_synced(out, group, self._syncer.request() if self._syncer is not None else None)

    def _send_synced(self, out: list[Outgoing], group: list[asyncio.Future[None]] | None,
                     fut: asyncio.Future[None] | None) -> asyncio.Future[None] | None:
        """:meth:`_send_committed` once ``fut`` (the commit's sync; None: durable now) is done."""
        if self._broken is not None:  # (a commit or a sync failed: nothing more leaves)
            _settle(group, self._broken if isinstance(self._broken, Exception) else None)
            return None
        if fut is None:
            self._send_out(out, group)
            self._apply_soon()
            return None
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(functools.partial(self._synced, out, group, sent))
        return sent

    def _synced(self, out: list[Outgoing], group: list[asyncio.Future[None]] | None, sent: asyncio.Future[None],
                fut: asyncio.Future[None]) -> None:
        """A commit's sync ended (:meth:`_send_committed`): send its frames, or fail the party."""
        err = _sync_error(fut)
        if err is None:
            try:
                self._send_out(out, group)
            except Exception as exc:  # (the group has it)
                err = exc
            else:
                self._apply_soon()
        else:
            self._store_failed(err, group)
        if not sent.done():
            if err is None:
                sent.set_result(None)
            else:
                sent.set_exception(err)
                sent.add_done_callback(_retrieved)  # (a caller that went away: no "never retrieved" warning)

    def _store_failed(self, exc: Exception, group: list[asyncio.Future[None]] | None) -> None:
        """A commit, or its sync, failed: the core is ahead of the disk -- fail the publishes it covered, never
        acknowledge or send it, close and let the user reopen (the first failure is the cause reported)."""
        _settle(group, exc)
        if self._broken is None:
            self._broken = exc
            log.error("store commit failed; closing: %s", exc)
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))

    def _commit(self) -> tuple[list[Outgoing], list[asyncio.Future[None]] | None]:
        """Commit the core's changes; return the frames to send (:meth:`_send_committed`: once durable) and the
        publish group this commit covers.

        On a store failure, fail the group, mark the party broken and schedule its closing."""
        changes = self._core.take_changes()
        out = self._core.data_to_send()
        delivered, self._delivered = self._delivered, {}
        group, self._group = self._group, None
        try:
            self._store.commit(changes, delivered, defer_sync=self._syncer is not None)
        except StorageError as exc:
            self._store_failed(exc, group)
            raise
        self._committed(changes)
        self._rearm_timer()
        if self._ack_waiters and changes.log_cut:
            # Our chain restarted at a grant's head after our write lapsed: what we signed beyond it was refused,
            # and its seqs go to what we sign now -- an ACK of those must not answer a wait for the refused ones.
            for b, _p, head in changes.log_cut:
                for wb, ws, f in self._ack_waiters:
                    if wb == b and ws > head and not f.done():
                        f.set_exception(LocalProtocolError(
                            f"seq {ws} on branch {b.hex()} was refused: signed while our write permission had "
                            f"lapsed (the author holds our chain through {head}; its seqs are used again)"))
        if self._ack_waiters and changes.branches:
            self._fail_dead_waiters({r.id: r.state == BranchState.CLOSED.value for r in changes.branches})
        return out, group

    def _fail_dead_waiters(self, changed: dict[bytes, bool]) -> None:
        """``wait_acknowledged`` calls that will never be answered: on a branch that closed (revoked, left), or
        where a re-key took our write permission away (the author refuses what we published under it)."""
        for b, s, f in self._ack_waiters:
            if b not in changed or f.done():
                continue
            if self._core.acknowledged(b) >= s:
                f.set_result(None)  # its ACK came in the same batch as the closing frame or the re-key
            elif changed[b]:
                f.set_exception(ClosedResourceError(f"branch {b.hex()} closed before seq {s} was acknowledged"))
            elif not self._core.branch_info(b)[1].can_write:
                f.set_exception(LocalProtocolError(
                    f"our write permission on branch {b.hex()} was taken away before seq {s} was acknowledged: "
                    "the author will not accept it"))

    def _send_out(self, out: list[Outgoing], group: list[asyncio.Future[None]] | None) -> None:
        """Send committed frames in one burst (``send_many``); resolve the publish group they complete."""
        assert self._send_many is not None
        try:
            if out:
                self._send_many(out)
        except Exception as exc:
            _settle(group, exc)
            raise
        _settle(group, None)
        self._apply_routes()

    def _apply_routes(self) -> None:
        """Hand the core's verified routing hints to the transport, after the frames they may concern went out
        (a REVOKE reaches the peers before they are forgotten)."""
        hints = self._core.take_routes()
        if hints and self._learn_routes is not None:
            self._learn_routes(hints)

    async def _flush(self) -> None:
        """Commit the core's changes, then send its frames (once durable).  Called with no await between core
        calls and here.  A caller cancelled while the sync runs leaves the sending to it (the commit is done)."""
        out, group = self._commit()
        if self._send_many is not None:
            sent = self._send_committed(out, group)
            if sent is not None:
                await asyncio.shield(sent)
            return
        await self._send_each(out, group)

    async def _send_each(self, out: list[Outgoing], group: list[asyncio.Future[None]] | None,
                         turn: _Turn | None = None) -> None:
        """Send committed frames one ``send`` at a time; resolve the publish group they complete.

        A caller cancelled meanwhile leaves the rest to a task of the party: the commit is done, and the other
        publishes it covered must neither fail with the caller's cancellation (they used to get
        ClosedResourceError, the party open and their messages committed) nor lose their frames.  Each send runs
        in a task of its own, which the caller's cancellation does not reach (:func:`run_in_task`, awaited
        shielded): the hand-off waits for the one on the way and sends the frames after it, each once.  (It used
        to send the frame whose send was cancelled again, in case it had not gone out; where it had, the receiver
        reported the copy as a REPLAY, as it would an attack.)  A real task, not the caller: a deadline the
        transport's send sets itself (``asyncio.timeout``) bounds that send, not the publisher.

        Sends of several commits may be on the way at once (each awaits): the routing hints are handed to the
        transport by the last of them to finish (:attr:`_sending`), once every frame committed before the hints
        went out -- not by a later publish while a REVOKE handed off to a task is still waiting (``turn`` given:
        the hand-off keeps its count).

        The frames of a commit leave after those of the commits before it on the same branches (``turn``): two
        commits' sends interleaved used to put seqs 1, 4, 2, 5, 3, 6 on the wire, and the member fetched what
        looked missing and then reported the late originals as REPLAYs.  Other branches' frames do not wait (a
        REVOKE held on the way holds up no other branch), nor do close()'s last frames (a send stuck on the way
        must not keep close() from releasing the store)."""
        if turn is None:
            self._sending += 1
            turn = self._take_turn(out)
        handed_off = False
        sent = 0
        sending: asyncio.Future[None] | None = None  #: a send on the way
        try:
            for before in turn.before:
                if not before.done() and not self._closed:  # (close's last frames: no wait)
                    await asyncio.shield(before)
            for o in out:
                sending = run_in_task(self._transport.send(o))
                if sending is not None:
                    await asyncio.shield(sending)
                    sending = None
                sent += 1
        except asyncio.CancelledError:
            if self._closed:  # close() cancels the party's tasks: nothing sends the rest, nor the one on the way
                _stop(sending)
                _settle(group, ClosedResourceError("closed before the send"))
            else:
                self._spawn(self._send_rest(sending, out[sent + (sending is not None):], group, turn))
                handed_off = True
            raise
        except Exception as exc:
            _settle(group, exc)
            raise
        finally:
            if not handed_off:
                self._sending -= 1
                self._end_turn(turn)
        _settle(group, None)
        if not self._sending:
            self._apply_routes()

    async def _send_rest(self, sending: asyncio.Future[None] | None, out: list[Outgoing],
                         group: list[asyncio.Future[None]] | None,
                         turn: _Turn) -> None:
        """The hand-off of a cancelled caller's sends: the one on the way (``sending``), then ``out``, in the
        caller's ``turn``."""
        if sending is not None:
            try:
                await sending
            except asyncio.CancelledError:  # close() cancelled this task (and so the send it awaited)
                _stop(sending)
                _settle(group, ClosedResourceError("closed before the send"))
                self._sending -= 1
                self._end_turn(turn)
                raise
            except Exception as exc:  # as _send_each would have: the publishers raise it
                _settle(group, exc)
                self._sending -= 1
                self._end_turn(turn)
                return
        with contextlib.suppress(Exception):  # _send_each failed the group with it: the publishers raise it
            await self._send_each(out, group, turn)

    def _take_turn(self, out: list[Outgoing]) -> _Turn:
        """The place of a commit's frames (``out``) behind the commits still sending frames of its branches."""
        branches = {o.branch for o in out if o.branch is not None}
        before = [self._sends_done[b] for b in branches if b in self._sends_done]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for b in branches:
            self._sends_done[b] = done
        return _Turn(before, done, branches)

    def _end_turn(self, turn: _Turn) -> None:
        """A commit's sends are over (sent, failed or given up): the next commits' on its branches may go."""
        if not turn.done.done():
            turn.done.set_result(None)
        for b in turn.branches:
            if self._sends_done.get(b) is turn.done:
                del self._sends_done[b]

    def _committed(self, changes: Changes) -> None:
        """Hook: ``changes`` are committed -- durable, or written with their sync under way (_syncer): whatever
        reads or writes the store's database next makes them durable first (the author's anchoring notes which
        chains moved; the epoch it builds of them is stored before the ledger hears of it)."""

    async def _stop_services(self) -> None:
        """Hook: stop background services before the final flush."""

    def _end_waits(self) -> None:
        """Hook: close() answers the calls waiting for the peer with ClosedResourceError."""

    def _closed_error(self, message: str) -> ClosedResourceError:
        """The error of a call that close() ends: the failure that closed the party, if any, is its cause."""
        exc = ClosedResourceError(message)
        exc.__cause__ = self._broken
        return exc

    def _start(self) -> None:
        self._tasks.append(asyncio.create_task(self._recv_loop(), name=f"streams-recv-{self.did[-8:]}"))
        self._tasks.append(asyncio.create_task(self._timer_loop(), name=f"streams-timer-{self.did[-8:]}"))
        if self._syncer is not None:
            self._tasks.append(asyncio.create_task(self._guarded(self._deliver_forever(), "delivery failed"),
                                                   name=f"streams-deliver-{self.did[-8:]}"))

    async def _recv_loop(self) -> None:
        await self._guarded(self._receive_forever(), "receive loop failed")

    async def _timer_loop(self) -> None:
        await self._guarded(self._tick_forever(), "timer loop failed")

    async def _guarded(self, body: Coroutine[object, object, None], what: str) -> None:
        """Run a driver task's body; if it dies, close the party loudly rather than leave it silently deaf."""
        try:
            await body
        except ClosedResourceError as exc:
            if not self._closed:
                self._fail(exc, "the transport closed under the party", broken=False)
        except Exception as exc:
            self._fail(exc, what)

    async def _receive_forever(self) -> None:
        while not self._closed:
            batch = await self._transport.recv()
            events = self._core.receive_many(batch, self._clock())
            offenders = self._core.take_offenders()
            if offenders and self._penalize is not None:
                self._penalize(offenders)  # the transport may drop their later frames unread (SPEC 10.3)
            if self._syncer is not None:
                if not await self._received_deferred(events):
                    return
                continue
            try:
                await self._flush()
            except StorageError:
                return
            await self._report(events)  # (the application takes the batch before we sign the ACKs)
            # ACKs only after the commit (THREATS 4): they promise the publisher the messages survive a crash of
            # ours.  Every cursor move of the core is committed before its mover awaits anything (receive, then
            # _flush, with no await between), so the cursors acknowledged here are on disk.
            acks = self._core.take_acks(self._clock())  # coalesced: at most one per ack_interval_ms
            self._rearm_timer()  # the ACKs it held back are due at the end of their interval
            if acks:
                await self._send_now(acks)
            self._apply_soon()  # (the batch is with the application and its ACKs are out)

    async def _received_deferred(self, events: list[Event]) -> bool:
        """The rest of a received batch's turn with a store whose syncs are deferred (_syncer): commit, then send
        its frames and its ACKs -- taken now, of the cursors this commit holds -- and report its events (hand its
        messages to the application) once the commit's sync has ended (_deliver_forever), in the order the old
        loop did, right after those frames; meanwhile this loop checks the next batch.  False if the commit
        failed (the party closes)."""
        assert self._syncer is not None
        try:
            out, group = self._commit()
        except StorageError:
            return False
        out += self._core.take_acks(self._clock())  # (ACKs only once the commit is durable: THREATS 4)
        self._rearm_timer()
        # One sync request for the batch: its frames and its events wait on the same one (a second request could
        # find the first one's failure taken back already, and answer "durable").
        done = self._syncer.request()
        if out or group:
            self._send_synced(out, group, done)
        if events:
            if done is None:  # (durable already: in turn behind the batches still waiting)
                done = asyncio.get_running_loop().create_future()
                done.set_result(None)
            self._deliveries.append((done, events))
            self._deliveries_moved.set()
            while len(self._deliveries) > 1 and not self._closed:
                self._deliveries_moved.clear()
                await self._deliveries_moved.wait()
        return True

    async def _deliver_forever(self) -> None:
        """Report received batches' events (messages to the application) in order, each once its commit's sync has
        ended."""
        while not self._closed:
            if not self._deliveries:
                self._deliveries_moved.clear()
                await self._deliveries_moved.wait()
                continue
            done, events = self._deliveries[0]
            if not done.done():
                await asyncio.wait([done])
            self._deliveries.popleft()
            self._deliveries_moved.set()
            err = _sync_error(done)
            if err is not None:  # never reported: the commit may not be on disk
                self._store_failed(err, None)
                return
            await self._report(events)
            self._apply_soon()

    async def _report(self, events: list[Event]) -> None:
        """Report a received batch's events: its messages into the bounded queue (no await per message while it
        has room), the rest through :meth:`_dispatch`; then wake the readers once and let them take the batch."""
        put = self._messages.append
        for ev in events:
            if type(ev) is MessageReceived and len(self._messages) < self._queue_size and not self._backlog:
                put(ev)  # the common case: no await per message
            else:
                await self._dispatch(ev)
        if self._wake_readers():  # once per batch
            await asyncio.sleep(0)

    def _apply_soon(self) -> None:
        """Apply the commit journal in the loop's next turn if it holds ``store.J_APPLY_SOON`` records or more:
        called once a publish's frames are out and once a received batch is with the application, so that the apply
        usually runs between messages -- not inside the commit that reaches ``J_APPLY_RECORDS``, whose messages
        would wait for it (about 0.4 ms for 64 one-message records here, 1.2 ms with cold caches).  Commits of the
        timer loop do not call it, and a receive loop that never yields reaches that bound all the same."""
        if self._store.journal_pending < J_APPLY_SOON:
            self._apply_failed = False  # (applied since: by a commit at J_APPLY_RECORDS, the heartbeat, a read)
            return
        if self._apply_queued or self._apply_failed or self._closed:
            return
        self._apply_queued = True
        asyncio.get_running_loop().call_soon(self._apply_now)

    def _apply_now(self) -> None:
        self._apply_queued = False
        if self._closed or self._broken is not None or self._store.journal_pending < J_APPLY_SOON:
            return  # (closing applies it; or a commit's own apply came first)
        try:
            self._store.apply_journal()
        except StorageError as exc:  # (still in the journal: a commit at J_APPLY_RECORDS tries again, or fails)
            # Not retried after every message: a write lock another connection holds would stall the loop for
            # its busy timeout each time.  The heartbeat's apply, or the commit at J_APPLY_RECORDS, tries again.
            self._apply_failed = True
            log.warning("%s", exc)

    async def _send_now(self, out: list[Outgoing]) -> None:
        """Send frames that need no commit (ACKs of committed cursors, retained log frames): none once a commit or
        its sync failed (the party is closing; what the core holds may not be on disk)."""
        if self._broken is not None:
            return
        if self._send_many is not None:
            self._send_many(out)
        else:
            for o in out:
                await self._transport.send(o)

    def _rearm_timer(self) -> None:
        """Wake the timer loop if the core set a deadline earlier than the time it sleeps until (a coalesced ACK
        after a batch, an amortized checkpoint after a publish): it then sleeps again until the new earliest."""
        due = self._core.take_deadline()
        if due is not None and due < self._timer_at:
            self._timer_wake.set()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        slept = 0.0  #: seconds slept since the last HEAD notices
        refresh = 0
        while not self._closed:
            self._core.take_deadline()  # next_timer() covers every deadline set so far
            due = self._core.next_timer()
            now = self._clock()
            wait_ms = self.heartbeat_ms if due is None else max(0, min(self.heartbeat_ms, due - now))
            self._timer_at = now + wait_ms
            self._timer_wake.clear()
            t0 = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), wait_ms / 1000)
            slept += loop.time() - t0
            now = self._clock()
            events = self._core.handle_timer(now)
            self._on_tick(now)
            if slept * 1000 >= self.heartbeat_ms:
                slept = 0.0
                refresh += 1
                force = refresh >= self.head_refresh_ticks
                if force:
                    refresh = 0
                    self._core.sync_quiet(now)  # a member re-teaches the author its route where it went quiet
                self._core.head_notices(force)
                try:  # (a party gone quiet: readers that do not lock the store see its last commits)
                    self._store.apply_journal()
                except StorageError as exc:  # (still in the journal: applied at a later try, or the next open)
                    log.warning("%s", exc)
            try:
                await self._flush()
            except StorageError:
                return
            for ev in events:  # (a catch-up window given up: what it kept quiet is a gap; a fetch-back given up)
                await self._dispatch(ev)

    async def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, MessageReceived):
            behind = self._backlog.get((ev.branch, ev.publisher))
            if behind is None:
                await self._put_message(ev)  # bounded: back-pressure on the receive loop
            else:
                behind[1] = ev.seq  # committed: read back from the store after the chain's older messages
                if not self._closed:
                    self._refill()
            self._wake_readers()
            return
        if isinstance(ev, Rejected) and ev.frame is not None:
            fork = self._check_fork(ev)
            head_of_earlier_run = ev.reason is RejectReason.REPLAY and ev.frame[2:3] == bytes((Kind.HEAD,))
            ev = dataclasses.replace(ev, frame=None, held=None)  # never keep frames in the bounded event queue
            if fork is None and head_of_earlier_run:
                # An honest HEAD signed before the publisher's write lapsed, delayed or replayed: nothing to
                # report (the core handed it over only for this fork check).
                return
            if fork is not None:
                if ev.reason is not RejectReason.FORK:
                    ev = dataclasses.replace(ev, reason=RejectReason.FORK, detail="a different signed message at "
                                             "an accepted position")
                self._queue_event(ev)
                ev = fork
        if isinstance(ev, FetchRequested):
            # Retained frames only (already durable).  Not through the core's output list: frames of a publish
            # made meanwhile by another task wait there for their commit and must not leave before it.
            await self._send_now(self._serve_fetch(ev))
        if isinstance(ev, Rejected):
            log.info("rejected frame: %s (%s)", ev.reason.name, ev.detail)
        if isinstance(ev, Acknowledged):
            self._resolve_acks(ev)
        if isinstance(ev, ChainConflict):
            for b, s, f in self._ack_waiters:
                if b == ev.branch and s > self._core.acknowledged(b) and not f.done():
                    f.set_exception(_conflict_error(b, s))
        self._on_event(ev)
        self._queue_event(ev)

    def _queue_event(self, ev: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self._dropped_events += 1
        self._events.append(ev)
        self._events_ready.set()

    def _check_fork(self, ev: Rejected) -> ForkDetected | None:
        """A REPLAY is either a duplicate (same hash as the logged message: the cheap path) or, if it differs
        and is validly signed by the chain's publisher, a fork: kept as evidence and reported (THREATS 7)."""
        assert ev.frame is not None and ev.branch is not None and ev.publisher is not None and ev.seq is not None
        if ev.held is not None:
            # Another message at a held position (the core checked that both differ and that the new one
            # authenticates): the held frame is the other half, not in the log yet.
            return self._record_fork(ev.branch, ev.publisher, ev.seq, self._core.fork_evidence(ev.frame, ev.held))
        # The logged hash first, from its row: a duplicate (the common replay) costs no read of the logged frame,
        # which may be in the frame file (THREATS 8: a replayer should buy only cheap work).
        logged = self._store.log_hash(ev.branch, ev.publisher, ev.seq)
        if logged is None:
            return None
        try:
            new_hash = decode_frame(ev.frame, self._core.config.max_frame).hash
        except DecodeError:
            return None
        if new_hash == logged:
            return None
        entry = self._store.log_entry(ev.branch, ev.publisher, ev.seq)
        if entry is None:
            return None
        return self._record_fork(ev.branch, ev.publisher, ev.seq, self._core.fork_evidence(ev.frame, entry[1]))

    def _record_fork(self, branch: bytes, publisher: int, seq: int,
                     evidence: ForkEvidence | None) -> ForkDetected | None:
        """Keep checked fork evidence in the store and report it, once per position; and send our ACK of that
        chain again, at every fork (SPEC 12)."""
        if evidence is None:
            return None
        # What we hold, signed: a member whose store is older than its chain stops there (ChainConflict).  At every
        # fork, not once per position: the first ACK may go nowhere -- over ZeroMQ a member's new connection has
        # no route yet when its first frame is a PACKET -- and the member's HEAD notices of its forked head, which
        # come after its route is learnt, are forks too.  Paced as every ACK (ack_interval_ms): a replayed fork
        # buys at most one signature per chain per interval.
        self._core.reacknowledge(branch, publisher)
        if not self._store.fork_add(branch, publisher, seq, evidence.frame_a, evidence.frame_b):
            held = [r for r in self._store.forks() if (r[0], r[1], r[2]) == (branch, publisher, seq)]
            if not held or self._fork_holds(*held[0]):
                return None  # already reported for this position
            # The row there proves nothing (the table is not authenticated: one put in ahead of a real fork would
            # hide it): this evidence, checked, takes its place.
            self._store.fork_add(branch, publisher, seq, evidence.frame_a, evidence.frame_b, replace=True)
        log.warning("fork detected on branch %s publisher %d seq %d", branch.hex(), publisher, seq)
        return ForkDetected(branch, publisher, seq, evidence)

    def _on_event(self, ev: Event) -> None:
        pass

    def _on_tick(self, now_ms: int) -> None:
        pass

    def _resolve_acks(self, ev: Acknowledged) -> None:
        for b, s, f in self._ack_waiters:
            if b == ev.branch and s <= ev.through_seq and not f.done():
                f.set_result(None)

    def _serve_fetch(self, ev: FetchRequested) -> list[Outgoing]:
        """The retained frames a FETCH asks for.  A damaged one (StorageError: it does not match its row's hash,
        or its bytes are gone) is never sent -- the member would reject it, and only it would know: the range is
        served up to it (the member's cursor moves that far), the error is logged for the operator, and the party
        goes on serving everyone else (the member asks again later, and the store can be restored meanwhile).

        The member asks again about every second for as long as the damage stays: the same error is logged once
        per :data:`_UNSERVED_RELOG_MS` (repeats at debug level), not once a FETCH -- a flood that buries the rest
        of the operator's log."""

        def damaged(exc: StorageError) -> None:
            self._log_unserved(f"a fetch of seq {ev.from_seq}-{ev.to_seq} is not served from there on: ", exc)

        try:
            frames = self._store.log_range(ev.branch, ev.publisher, ev.from_seq, ev.to_seq, on_damage=damaged)
        except StorageError as exc:  # (the read itself failed)
            self._log_unserved(f"a fetch of seq {ev.from_seq}-{ev.to_seq} is not served: ", exc)
            return []
        return [Outgoing(f, peer=ev.peer) for f in frames]

    def _served_grants(self, branch: bytes, lo: int, hi: int) -> list[bytes]:
        """The author's grant history of ``branch`` for epochs ``lo..hi`` (:meth:`Store.grants_between`), as
        served to a member's grant sync: each frame is checked against the author's own signature first.  A grant
        damaged on disk is never served -- the member would reject it, and only it would know (as for a damaged
        logged message, :meth:`_serve_fetch`): the history is served from after it, and the damage is logged for
        the operator (the store can be restored meanwhile)."""
        try:
            frames = self._store.grants_between(branch, lo, hi)
        except StorageError as exc:
            self._log_unserved(f"the grants of branch {branch.hex()} are not served: ", exc)
            return []
        for i in range(len(frames) - 1, -1, -1):
            if not self._grant_intact(branch, hi - (len(frames) - 1 - i), frames[i], "grant history"):
                return frames[i + 1:]
        return frames

    def _grant_intact(self, branch: bytes, epoch: int, raw: bytes, where: str = "branch record") -> bool:
        """Whether a grant frame read back from the store is intact: our own signed grant of ``branch`` at
        ``epoch``.  One that is not (a disk fault, an edit) is logged for the operator (:meth:`_log_unserved`), and
        the caller serves nothing from it back (the core's ``grant_intact`` hook, for the grants a branch record
        holds)."""
        seen = (branch, epoch, _crypto.hash32(_crypto.P_KEPT, raw))
        if seen in self._grants_verified:
            return True
        try:
            f = decode_frame(raw, self._core.config.max_frame)
            # The epoch too: an older grant of the branch is signed by us as well, and a store edited without
            # the passphrase could put it where a later one belongs (the frame is not sealed into the record).
            intact = type(f.head) is Grant and f.head.branch == branch and f.head.epoch == epoch
            if intact:
                self._store.identity.public.verify(f.hash, f.sig)
        except (DecodeError, VerificationError):
            intact = False
        if intact:
            if len(self._grants_verified) >= 65_536:  # bounded: the rest are checked again, that is all
                self._grants_verified.clear()
            self._grants_verified.add(seen)
        else:
            self._log_unserved(
                f"the grants of branch {branch.hex()} through epoch {epoch} are not served: ",
                StorageError(f"the stored grant of branch {branch.hex()} epoch {epoch} ({where}) in "
                             f"{self._store.path} does not verify: the store is damaged"))
        return intact

    def _log_unserved(self, what: str, exc: StorageError) -> None:
        """Log why a FETCH is not (fully) served: at error level the first time this error is seen and once per
        :data:`_UNSERVED_RELOG_MS` after, at debug level in between (the error names the damaged position: one
        stuck member's retries, or several members stuck on the same message, say it once)."""
        now = self._clock()
        key = str(exc)
        seen = self._unserved_logged
        last = seen.get(key)
        if last is not None and 0 <= now - last < _UNSERVED_RELOG_MS:
            log.debug("%s%s (again)", what, exc)
            return
        if len(seen) >= 256:  # bounded: a store damaged in many places re-logs some of them sooner, that is all
            seen.clear()
        seen[key] = now
        log.error("%s%s", what, exc)

    def _redeliver(self, chains: list[ChainRecord]) -> None:
        """At open: every chain accepted beyond the application's cursor is backlogged, and the queue filled from
        the backlog; the rest is read back as the application drains the queue (never more than queue_size
        messages in memory), before any live message of the same chain.  ``chains``: the store's cursors (the
        rows the core was loaded from), not the core's: it keeps none of a chain we may no longer read (a re-key
        took the right away), whose messages we accepted, acknowledged and did not hand out yet all the same."""
        cursors = self._store.delivered()
        branches = self._core._branches
        for cr in sorted(chains, key=lambda c: (c.branch, c.publisher)):
            b = branches.get(cr.branch)
            if b is None or cr.publisher == b.me:
                continue  # our own chain is not delivered to us
            key = (cr.branch, cr.publisher)
            taken, last = cursors.get(key, 0), cr.next_seq - 1
            if last > taken:
                self._backlog[key] = [taken, last]
                if cr.publisher not in b.chains:
                    self._backlog_covered[key] = cr.covered
        self._refill()


class Author(_Party):
    """A channel's author.  Open with :meth:`create` (new channel) or :meth:`open` (restart).  The transport
    passed to either is the author's from then on: :meth:`close` closes it, and so does a failed create/open.

    >>> author = await Author.create("monitor.db", identity, "fraud-monitor", "passphrase", transport, policy)
    """

    _core: AuthorCore

    def __init__(self, core: AuthorCore, store: Store, transport: Transport, clock: Clock | None,
                 queue_size: int) -> None:
        super().__init__(store, transport, clock, queue_size)
        self._core = core
        self.recheck_ms = 5_000
        self._last_recheck = 0
        self._last_nonce_prune: int | None = None  #: when the store's expired used nonces were last deleted
        self._anchoring: AnchorService | None = None
        self._install()
        #: For knows_key: the X25519 keys of each open branch's members (not ours), and how many open branches
        #: each key is a member of.  Built at the first knows_key, then kept up to date at each commit.
        self._member_kx: dict[bytes, tuple[bytes, ...]] | None = None
        self._kx_count: Counter[bytes] = Counter()
        if getattr(transport, "wants_known_key", False) is True:
            # A CurveZMQ endpoint with no ZAP decision (it refuses everyone until it has one): ours.
            transport.admit_keys(self.knows_key)  # type: ignore[attr-defined]

    def _with_ledger(self, ledger: Ledger | None, config: AnchorConfig | None) -> None:
        if ledger is not None:
            self._anchoring = AnchorService(self._core, self._store, ledger, config or AnchorConfig(), self._clock,
                                            self._send_queued, on_refused=self._refuse_publishing,
                                            report=self._queue_event, on_failed=self._anchoring_failed)
            self._anchoring.start()

    def _anchoring_failed(self, exc: Exception) -> None:
        """The anchoring task died: close and say why (as a subscriber whose ledger checks fail does), rather than
        go on publishing with nothing anchored any more."""
        if self._closed:
            return  # (the ledger closed before the party, at its shutdown)
        if isinstance(exc, ClosedResourceError):
            self._fail(exc, "the ledger was closed under the party: chain heads can no longer be anchored",
                       broken=False)
        else:
            self._fail(exc, "anchoring failed")

    def _refuse_publishing(self, exc: LedgerConflict) -> None:
        # (the anchoring service logged the conflict, and says publishing stops: once is enough)
        self._no_publish = exc

    async def _send_queued(self) -> None:
        if not self._closed:
            with contextlib.suppress(StorageError):
                await self._flush()

    def _committed(self, changes: Changes) -> None:
        if self._member_kx is not None:
            for rec in changes.branches:
                open_ = rec.state == BranchState.OPEN.value
                self._note_members(rec.id, [pk for i, pk, _ in rec.members if open_ and i != rec.me])
        syncs = self._core.take_syncs()
        if self._anchoring is not None:
            self._anchoring.note(changes)
            if syncs:
                # A member back after a restart or a reconnect: the latest anchor proofs of its branch, which
                # it may have missed while away (sent once, at confirmation).  They leave with the next flush.
                for branch, peer in syncs:
                    self._anchoring.send_restore(branch, peer, restore=False)
                self._spawn(self._send_queued())

    async def _stop_services(self) -> None:
        if self._anchoring is not None:
            await self._anchoring.stop()

    @property
    def anchoring(self) -> AnchorService | None:
        """The anchoring service (None without a ledger): ``pending`` epochs, ``ledger_writes``, ``kick()``."""
        return self._anchoring

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, SubscriberAdmitted) and ev.resubscribed and self._anchoring is not None:
            # State-loss recovery (THREATS 3): right after the re-sent grant, the latest anchored heads; and
            # anchor the current heads soon, so the member's own chain cursor catches up with ours.
            self._anchoring.send_restore(ev.branch)
            self._anchoring.kick()
            self._spawn(self._send_queued())

    def __repr__(self) -> str:
        return f"Author(did={self.did!r}, channel={self.channel.hex()}, branches={len(self._core.branch_ids())})"

    @classmethod
    async def create(cls, path: str | os.PathLike[str], identity: Identity, name: str, passphrase: str | bytes,
                     transport: Transport, policy: Policy, *, config: CoreConfig | None = None,
                     store_options: StoreOptions | None = None, clock: Clock | None = None,
                     queue_size: int = 10_000, ledger: Ledger | None = None,
                     anchor_config: AnchorConfig | None = None) -> Author:
        """Create a channel: a new store at ``path``, announce it, start serving.

        With a ``ledger``, chain heads are anchored on it in batches (see :mod:`streams.anchoring_service`);
        publishing never waits for the ledger.  The ledger stays the caller's to close.

        Raises :class:`LocalProtocolError` if ``path`` already holds a file (other than an empty one: ``open``
        it) or its side files are not regular files, :class:`StorageError` if it cannot be written.  A failed
        create leaves nothing at ``path`` and closes ``transport``."""
        so = store_options or StoreOptions()
        store: Store | None = None
        self: Author | None = None
        try:
            core = AuthorCore(identity, name, policy, config)
            store = Store.create(path, identity, passphrase, role="author", channel=core.channel,
                                 author_did=identity.did, name=name, durable=so.durable, opslimit=so.opslimit,
                                 memlimit=so.memlimit, journal=so.journal)
            store.lock()
            self = cls(core, store, transport, clock, queue_size)
            core.announce()
            await self._flush()
            self._with_ledger(ledger, anchor_config)
            self._start()
            return self
        except BaseException:
            await _abandon(transport, store, self, discard=True)  # a failed create leaves nothing behind
            raise

    @classmethod
    async def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, transport: Transport,
                   policy: Policy, *, config: CoreConfig | None = None, store_options: StoreOptions | None = None,
                   clock: Clock | None = None, queue_size: int = 10_000, ledger: Ledger | None = None,
                   anchor_config: AnchorConfig | None = None) -> Author:
        """Reopen a channel after a restart: cursors and branches come back from disk (not the challenges issued
        before: SPEC 8.3, a SUBSCRIBE answering one is refused and its requester asks again); with a
        ``ledger``, epochs queued before the restart are written and confirmed first, in order.  Raises
        :class:`~streams.errors.LedgerConflict` if the ledger holds checkpoints of this channel that the store
        does not (a store restored from a stale copy: publishing from it would fork the channel),
        :class:`~streams.errors.BadPassphrase` for a wrong passphrase, :class:`StorageError` for a missing,
        damaged or foreign file or one another party has open, :class:`LocalProtocolError` for a subscriber's
        store.  A failed open closes ``transport``."""
        so = store_options or StoreOptions()
        store: Store | None = None
        self: Author | None = None
        try:
            store = Store.open(path, passphrase, durable=so.durable, journal=so.journal)
            if store.meta("role") != "author":
                raise LocalProtocolError(f"{path} is not an author's store")
            store.lock()
            core = AuthorCore(store.identity, store.meta("name"), policy, config)
            self = cls(core, store, transport, clock, queue_size)
            chains = store.load_chains()
            core.load_author(store.load_branches(), chains, [])  # (used nonces: of an earlier run)
            self._member_kx = None  # knows_key reads the loaded members at its next call
            self._redeliver(chains)
            core.announce()
            core.acknowledge()
            await self._flush()
            self._with_ledger(ledger, anchor_config)
            if self._anchoring is not None:
                # A store behind what this author already signed (restored from a stale copy) must not publish
                # or anchor: refuse to open it with its ledger (LedgerConflict), rather than fork the channel.
                await self._anchoring.check_ledger()
            self._start()
            return self
        except BaseException:
            await _abandon(transport, store, self)  # a damaged store (StorageError) must not stay open either
            raise

    def knows_key(self, x25519_public: bytes) -> bool:
        """Whether ``x25519_public`` is the X25519 key-agreement key of a DID this channel knows: a member of one
        of its open branches, or a DID its policy could admit (:func:`streams.policy.could_admit`; a credential
        policy cannot tell from the DID alone, so there the subscription's proof decides).  A key is the key of
        two DIDs, twins (:func:`streams.identity.dids_of_kx_public`): it is known if either is.

        The ZAP decision for a CurveZMQ transport (SPEC 14.5): given an endpoint that has none
        (:attr:`brokerless.AuthorEndpoint.wants_known_key`), the author installs this one.  Admissions,
        revocations and policy changes apply to the next connection; one already made stays (the protocol's
        own checks guard it).  The first call reads every open branch's members (about 35 us each)."""
        key = bytes(x25519_public)
        if self._member_kx is None:
            self._member_kx = {}
            for bid in self._core.branch_ids():
                self._note_members(bid, self._core.member_keys(bid))
        if self._kx_count.get(key):
            return True
        policy = self._core.policy
        return any(could_admit(policy, did) for did in dids_of_kx_public(key))

    def _note_members(self, branch: bytes, members: Iterable[bytes]) -> None:
        """Branch ``branch`` now has the members (Ed25519 keys, not ours) ``members`` (knows_key)."""
        assert self._member_kx is not None
        keys = tuple({_kx_of(pk) for pk in members})
        old = self._member_kx.pop(branch, ())
        if keys:
            self._member_kx[branch] = keys
        self._kx_count.update(keys)
        self._kx_count.subtract(old)
        for k in old:
            if self._kx_count[k] <= 0:
                del self._kx_count[k]

    @property
    def announcement(self) -> bytes:
        """The channel's signed announcement frame."""
        return self._core.announcement

    @property
    def policy(self) -> Policy:
        """The admission policy.  Assigning one replaces it: it decides the next subscriptions.  Subscribers
        already admitted stay until revoked: :meth:`recheck_admissions` revokes those it can no longer admit."""
        return self._core.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._core.policy = policy

    def branch_of(self, did: str) -> bytes | None:
        """The open per-subscriber branch of a DID."""
        return self._core.branch_of(did)

    def permission_of(self, branch: bytes) -> Permission | None:
        """The subscriber's permission on its own branch ``branch`` (what :meth:`set_permission` sets; a
        :class:`BranchInfo` gives ours); None for a group or an unknown branch."""
        return self._core.permission_of(branch)

    def owner_of(self, branch: bytes) -> str | None:
        """The DID whose own (per-subscriber) branch ``branch`` is, open or closed -- the inverse of
        :meth:`branch_of`; None for a group (one of a single member too) or an unknown branch."""
        return self._core.owner_of(branch)

    async def open_branch(self, did: str, permission: Permission = Permission.READ_WRITE,
                          mode: SigningMode | None = None) -> bytes:
        """Open a branch for a DID without waiting for it to subscribe (it receives the grant when it does).
        :meth:`recheck_admissions` revokes it if the policy does not admit that DID on its DID alone."""
        self._check_usable()
        b = self._core.open_branch(PublicIdentity.from_did(did), permission, mode)
        await self._flush()
        return b

    async def open_group(self, dids: list[str], permission: Permission = Permission.READ) -> bytes:
        """Open a broadcast branch readable by several DIDs (author-write only, signed-each).  Raises
        :class:`LocalProtocolError` for more than 255 members, or a group whose grant would not fit the frame
        limit (the grant grows with its members, about 170 bytes each: only a limit far below the default's)."""
        self._check_usable()
        b = self._core.open_group([PublicIdentity.from_did(d) for d in dids], permission)
        await self._flush()
        return b

    async def revoke(self, branch: bytes) -> None:
        """Close a branch: nothing published afterwards reaches its members; nothing they send is accepted."""
        self._check_usable()
        self._core.revoke(branch)
        await self._flush()

    async def set_permission(self, branch: bytes, permission: Permission) -> None:
        """Change a subscriber's permission on its branch; effective from the next message (re-key)."""
        self._check_usable()
        self._core.set_permission(branch, permission)
        await self._flush()

    async def recheck_admissions(self) -> list[bytes]:
        """Re-check each subscriber's admission against the policy now, and revoke (:meth:`revoke_subscriber`)
        those it no longer admits: a DID it cannot admit at all (denied), one admitted on its DID alone (an
        allow-list, or :meth:`open_branch`) that it refuses on its DID alone now, and one whose credential was
        revoked or expired.  The credential check also runs every ``recheck_ms`` on the timer; the DID checks only
        here, when asked (``streams serve`` does at start and on SIGHUP).  A subscriber admitted on its DID alone
        whose branch gives it rights the policy no longer gives (read-write, where the policy now says read) keeps
        only those it still gives: its branch is re-keyed (:meth:`set_permission`), and a
        :class:`~streams.events.PermissionRestricted` event says so; a re-check never adds rights (a credential's
        permission is not decided again).  Every decision is made before any change: what the policy raises
        propagates and nothing changes.  Returns the branches closed, groups included."""
        self._check_usable()
        restricted: list[tuple[bytes, Permission]] = []
        reasons: dict[bytes, str] = {}
        undecided: list[tuple[str, str]] = []
        revoked = self._core.recheck(self._clock(), dids=True, restricted=restricted, reasons=reasons,
                                     undecided=undecided)
        await self._flush()
        self._report_revoked(revoked, reasons)
        self._report_restricted(restricted)
        self._report_undecided(undecided)
        return revoked

    def _on_tick(self, now_ms: int) -> None:
        self._prune_nonces(now_ms)
        if now_ms - self._last_recheck >= self.recheck_ms:
            self._last_recheck = now_ms
            reasons: dict[bytes, str] = {}
            restricted: list[tuple[bytes, Permission]] = []
            undecided: list[tuple[str, str]] = []
            try:
                revoked = self._core.recheck(now_ms, restricted=restricted, reasons=reasons, undecided=undecided)
            except Exception as exc:  # the policy's failure: nothing changed (every decision comes first)
                # A policy's bug, a store read that failed (a policy that cannot answer for one subscriber,
                # PolicyUnavailable, is left out by the core: undecided).  The next re-check tries again.
                log.warning("admission re-check failed, nothing changed (tried again in %d ms): %s: %s",
                            self.recheck_ms, type(exc).__name__, exc)
                return
            self._report_revoked(revoked, reasons)
            self._report_restricted(restricted)
            self._report_undecided(undecided)

    def _prune_nonces(self, now_ms: int) -> None:
        """Delete the store's expired used nonces, at the first tick and then once a challenge lifetime: each
        subscription writes one (for older versions of this code, see :mod:`streams.store`), and none is read
        back, so without this the file grew by a row per subscription for good (THREATS 8: a flood of throwaway
        DIDs grew it without bound).  A failure is logged and tried again at the next period."""
        last = self._last_nonce_prune
        if last is not None and 0 <= now_ms - last < self._core.config.challenge_ttl_ms:
            return
        self._last_nonce_prune = now_ms
        # The rows' expiries are times of the handshake's clock, which may be ahead of the wall clock (it never
        # goes back, SPEC 8.3): pruned against it, else rows written after one reading far ahead outlived the run.
        t = self._core.handshake_time(now_ms)
        try:
            # At most NONCE_PRUNE_BATCH rows a tick (this runs on the event loop): a store an older version wrote
            # holds a row per subscription it ever admitted, and one DELETE of them all held every frame for as
            # long as it took.  Where rows may remain, the next tick deletes more (THREATS 8).
            more = self._store.prune_nonces(t, t + self._core.config.challenge_ttl_ms, limit=NONCE_PRUNE_BATCH)
        except StorageError as exc:
            log.warning("deleting the store's expired challenge nonces failed (tried again later): %s", exc)
            return
        if more:
            self._last_nonce_prune = None

    @staticmethod
    def _report_undecided(undecided: list[tuple[str, str]]) -> None:
        if undecided:
            did, why = undecided[0]
            log.warning("admission re-check: %d subscriber(s) left as they are, their policy cannot answer now "
                        "(first: %s: %s); tried again at the next re-check", len(undecided), did, why)

    def _report_restricted(self, restricted: list[tuple[bytes, Permission]]) -> None:
        for branch, permission in restricted:
            did = self._core.owner_of(branch) or ""  # (a re-check restricts per-subscriber branches only)
            log.info("branch %s: permission restricted to %s by the policy", branch.hex(), permission.name)
            self._queue_event(PermissionRestricted(branch, did, permission))

    def _report_revoked(self, branches: list[bytes], reasons: dict[bytes, str]) -> None:
        """Tell the application (``events()``) about the branches a re-check revoked: nobody asked for it."""
        for b in branches:
            why = reasons.get(b, "")
            log.info("branch %s revoked: its admission no longer holds: %s", b.hex(), why)
            self._queue_event(BranchClosed(b, "recheck", self._core.chain_head(b, 0)[0] - 1, why))

    async def revoke_subscriber(self, did: str) -> list[bytes]:
        """Cut a subscriber off: revoke its own branch and take it out of every group (each re-keyed without it).
        :meth:`revoke` closes one branch only.  Returns the branches closed (its own; groups it was the last
        member of).  It may subscribe again while the policy admits it."""
        self._check_usable()
        closed = self._core.revoke_subscriber(did)
        await self._flush()
        return closed

    async def remove_member(self, branch: bytes, did: str) -> None:
        """Remove a DID from a group branch and re-key it (epoch + 1): the removed member reads nothing published
        afterwards, is told the author chain's head at its removal, and is still served what it missed up to there
        (SPEC 9.5).  Removing the last member closes the group.  Raises :class:`LocalProtocolError` for an
        unknown or per-subscriber branch, or a DID that is not a member."""
        self._check_usable()
        self._core.remove_member(branch, did)
        await self._flush()


class Subscriber(_Party):
    """A subscriber.  Open with :meth:`create` (first time) or :meth:`open` (restart), then :meth:`subscribe`.
    The transport passed to either is the subscriber's from then on: :meth:`close` closes it, and so does a failed
    create/open."""

    _core: SubscriberCore

    def __init__(self, core: SubscriberCore, store: Store, transport: Transport, clock: Clock | None,
                 queue_size: int) -> None:
        super().__init__(store, transport, clock, queue_size)
        self._core = core
        self._waiters: list[asyncio.Future[Event]] = []
        if hasattr(transport, "on_reconnect"):
            transport.on_reconnect = self._resync
        self._ledger: Ledger | None = None
        self._claims: asyncio.Queue[AnchorClaim] = asyncio.Queue()
        #: Each claim queued or under its ledger check: a copy of one of them (a relay replaying a proof not applied
        #: yet) adds no ledger read (THREATS 8).
        self._claimed: set[tuple[bytes, int, int, bytes, str, bool]] = set()
        self._install()

    async def _resync(self) -> None:
        """After the transport reconnected (or the author restarted): fetch what we missed (Clone pattern: live
        frames already flow and are held; the fetch fills up to them; duplicates are rejected as replays), and
        re-announce our own chains' heads so the author detects what it missed of ours."""
        if self._closed or self._broken is not None:
            return
        self._core.catch_up(self._clock())
        self._core.head_notices(force=True)
        self._core.acknowledge()
        with contextlib.suppress(StorageError):
            await self._flush()

    def _with_ledger(self, ledger: Ledger | None, anchor_wait: float = ANCHOR_WAIT) -> None:
        self._ledger = ledger
        self._anchor_wait_ms = anchor_wait * 1000
        if ledger is not None:
            # Every anchor proof is read back from the ledger before it is reported (THREATS 7).
            self._core.defer_anchor_checks = True
            self._tasks.append(asyncio.create_task(self._anchor_task(), name=f"streams-anchor-{self.did[-8:]}"))

    def _committed(self, changes: Changes) -> None:
        if self._ledger is not None:
            for claim in self._core.take_anchor_claims():
                key = _claim_key(claim)
                if key not in self._claimed:
                    self._claimed.add(key)
                    self._claims.put_nowait(claim)

    async def _anchor_task(self) -> None:
        """The ledger checks, guarded as the driver's loops are: a party whose proofs can no longer be checked closes
        and says why, rather than leave every later proof waiting for a check that never comes."""
        try:
            await self._anchor_loop()
        except ClosedResourceError as exc:
            if not self._closed:  # (the party closing cancels this task: nothing to say then)
                self._fail(exc, "the ledger (or the transport) was closed under the party: anchor proofs cannot be "
                           "checked", broken=False)
        except Exception as exc:
            self._fail(exc, "the ledger check of anchor proofs failed")

    async def _anchor_loop(self) -> None:
        assert self._ledger is not None
        ledger, author = self._ledger, self._core.author.sign_public
        backoff = 0.1
        stalled = 0  # claims put back in a row because their anchor is not (yet) on the ledger here
        #: Each claim whose anchor this ledger did not know or had not confirmed: when that was first seen (ms).
        #: Our ledger may lag behind the author's (another IOTA node, which has not seen the block or the
        #: milestone referencing it yet): that is no verdict until ``anchor_wait`` has passed.  Measured on the
        #: monotonic clock: the party's clock is wall-clock time, which steps forward and back -- less the time our
        #: ledger was down (an outage is no verdict, nor any part of one: a node that restarts then syncs is the lag
        #: this wait is for).
        unsettled: dict[tuple[bytes, int, int, bytes, str, bool], float] = {}
        lost = 0.0  # ms our ledger was down, in all
        down_since: float | None = None  # since when it is down (its first failure), None while it answers

        def answered() -> float:
            """The ledger answered: now, on the clock of the time it answered (ms)."""
            nonlocal lost, down_since
            now = time.monotonic() * 1000
            if down_since is not None:
                lost += now - down_since
                down_since = None
            return now - lost

        while not self._closed:
            claim = await self._claims.get()
            key = _claim_key(claim)
            requeued = False
            while True:
                try:
                    await asyncio.to_thread(verify_anchored, ledger, claim.anchor_id, claim.head, claim.proof,
                                            author, claim.checkpoint)
                    answered()
                    events = self._core.apply_anchor(claim, True)
                    break
                except (UnknownAnchor, NotConfirmed) as exc:
                    h = claim.head
                    now = answered()
                    since = unsettled.setdefault(key, now)
                    if now - since >= self._anchor_wait_ms:
                        what = (f"does not know this anchor ({exc})" if isinstance(exc, UnknownAnchor) else
                                "holds the checkpoint but has not confirmed it")
                        events = [Rejected(RejectReason.NOT_ANCHORED,
                                           f"not anchored: after {(now - since) / 1000:.1f} s of asking, our ledger "
                                           f"still {what}", h.branch, h.publisher, h.seq)]
                        break
                    log.info("anchor %s (branch %s, seq %d) is not on our ledger or not confirmed there yet; "
                             "asking again: %s", claim.anchor_id, h.branch.hex(), h.seq, exc)
                    if not self._claims.empty():
                        # This proof alone waits for our ledger: retry it after the proofs waiting behind it,
                        # which it must not hold up.  A whole round of them waiting waits out the backoff first,
                        # as one proof does.
                        stalled += 1
                        if stalled > self._claims.qsize():
                            stalled = 0
                            await asyncio.sleep(backoff)
                            backoff = min(backoff * 2, 5.0)
                        self._claims.put_nowait(claim)
                        events, requeued = [], True
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except VerificationError as exc:
                    answered()
                    h = claim.head
                    events = [Rejected(RejectReason.NOT_ANCHORED, f"not on the ledger: {exc}", h.branch,
                                       h.publisher, h.seq)]
                    break
                except (LedgerError, LocalProtocolError) as exc:  # outage, or a ledger that cannot take the id
                    log.warning("ledger check of an anchor proof failed, retrying: %s", exc)
                    if down_since is None:
                        down_since = time.monotonic() * 1000
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if not requeued:
                unsettled.pop(key, None)
                self._claimed.discard(key)
                backoff, stalled = 0.1, 0
            try:
                await self._flush()
            except StorageError:
                return
            for ev in events:
                await self._dispatch(ev)

    def __repr__(self) -> str:
        return f"Subscriber(did={self.did!r}, channel={self.channel.hex()}, state={self._core.state.value})"

    @classmethod
    async def create(cls, path: str | os.PathLike[str], identity: Identity, author_did: str, channel: bytes,
                     passphrase: str | bytes, transport: Transport, *, config: CoreConfig | None = None,
                     store_options: StoreOptions | None = None, clock: Clock | None = None,
                     queue_size: int = 10_000, ledger: Ledger | None = None,
                     anchor_wait: float = ANCHOR_WAIT) -> Subscriber:
        """New subscriber state at ``path`` for the channel ``channel`` of ``author_did`` (both known out of
        band).  Call :meth:`subscribe` next.  With a ``ledger``, anchor proofs are checked against it before
        ``Anchored(ledger_verified=True)`` is reported; without, they are reported with
        ``ledger_verified=False``.  A proof whose anchor our ledger does not know or has not confirmed yet (a
        node that lags behind the author's) is checked again, with backoff, for ``anchor_wait`` seconds before
        it is reported ``Rejected(NOT_ANCHORED)`` (``math.inf``: never); an outage of the ledger is waited out
        however long it lasts, and does not count against ``anchor_wait``.  Raises :class:`LocalProtocolError` if
        ``anchor_wait`` is not a positive number or ``channel`` is not 32 bytes (before anything is written), or
        ``path`` already holds a file (as :meth:`Author.create`); :class:`~streams.errors.DecodeError` (a
        ``ValueError``) for a malformed ``author_did``; :class:`StorageError` if it cannot be written.  A failed
        create leaves nothing at ``path`` and closes ``transport``."""
        so = store_options or StoreOptions()
        store: Store | None = None
        self: Subscriber | None = None
        try:
            _check_anchor_wait(anchor_wait)  # before anything touches the disk (the transport is closed, as below)
            core = SubscriberCore(identity, author_did, channel, config)
            store = Store.create(path, identity, passphrase, role="subscriber", channel=channel,
                                 author_did=author_did, durable=so.durable, opslimit=so.opslimit, memlimit=so.memlimit,
                                 journal=so.journal)
            store.lock()
            self = cls(core, store, transport, clock, queue_size)
            self._with_ledger(ledger, anchor_wait)
            self._start()
            return self
        except BaseException:
            await _abandon(transport, store, self, discard=True)  # a failed create leaves nothing behind
            raise

    @classmethod
    async def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, transport: Transport, *,
                   config: CoreConfig | None = None, store_options: StoreOptions | None = None,
                   clock: Clock | None = None, queue_size: int = 10_000, ledger: Ledger | None = None,
                   anchor_wait: float = ANCHOR_WAIT) -> Subscriber:
        """Reopen after a restart: branches and cursors come back; missed messages are fetched.  ``ledger`` and
        ``anchor_wait`` as for :meth:`create`.  Raises as :meth:`Author.open` (an author's store:
        :class:`LocalProtocolError`)."""
        so = store_options or StoreOptions()
        store: Store | None = None
        self: Subscriber | None = None
        try:
            _check_anchor_wait(anchor_wait)
            store = Store.open(path, passphrase, durable=so.durable, journal=so.journal)
            if store.meta("role") != "subscriber":
                raise LocalProtocolError(f"{path} is not a subscriber's store")
            store.lock()
            core = SubscriberCore(store.identity, store.meta("author_did"), store.meta("channel"), config)
            chains = store.load_chains()
            core.load_subscriber(store.meta("announce"), store.load_branches(), chains)
            core.load_anchored(store.anchored_heads())  # proofs at or below them: no event, or REPLAY (SPEC 13.5)
            self = cls(core, store, transport, clock, queue_size)
            core.resume_fills(store.log_hole, self._clock())  # (SPEC 13.5)
            self._with_ledger(ledger, anchor_wait)
            self._redeliver(chains)
            if getattr(transport, "session", b"") is not None:
                core.catch_up(self._clock())
            # else: a transport with sessions that has none yet -- it calls on_reconnect (our catch-up) when the
            # author announces one: FETCHes must carry it (SPEC 8.9).
            core.acknowledge()  # re-send our ACKs: the last ones may have died with the previous process
            await self._flush()
            self._start()
            return self
        except BaseException:
            await _abandon(transport, store, self)  # a damaged store (StorageError) must not stay open either
            raise

    async def subscribe(self, credential: bytes = b"", timeout: float = 10.0, retry: float = 1.0,
                        presenter: Callable[[bytes, bytes], bytes] | None = None) -> bytes:
        """Run the handshake (announcement, challenge, sealed proof of control) and wait for the author's answer:
        the grant of our branch and the ADMIT of this request (SPEC 9.1).

        ``presenter(nonce, channel) -> bytes`` builds a credential presentation bound to the author's challenge
        (see :func:`streams.credentials.present`, with ``challenge=nonce, domain=channel``); ``credential`` is
        for static evidence.

        Returns the granted branch id.  Raises :class:`AdmissionRefused` if the author refuses (a refusal of an
        expired or already used challenge, or of one issued before the author restarted, is not final: the
        handshake starts again while time remains -- at once the first time, then after 50 ms, doubling up to
        ``retry``),
        :class:`StreamsTimeoutError` if nothing comes back in ``timeout`` seconds (HELLO is retried every
        ``retry`` seconds), :class:`ClosedResourceError` if the party is or gets closed meanwhile,
        :class:`LocalProtocolError` at once, nothing sent, if ``retry`` is not a positive number of seconds (0 paced
        nothing: HELLOs at network speed until the timeout) or ``timeout`` is not a number (NaN: no deadline)."""
        self._check_usable()
        _check_positive_seconds("retry", retry)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
            # NaN compares false with everything: the deadline never came, and HELLOs went on for good.
            raise LocalProtocolError(f"timeout must be a number of seconds, not {timeout!r}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Event] = loop.create_future()
        self._waiters.append(fut)
        deadline = loop.time() + timeout
        core = self._core

        def present(nonce: bytes, channel: bytes) -> bytes:
            # The application's presenter runs inside the receive loop: its failure must end this call, not
            # the party (the core catches it and sends no request; the waiter gets the error at once).
            assert presenter is not None
            try:
                cred = presenter(nonce, channel)
                _check_credential(cred)
                return cred
            except Exception as exc:
                err = exc if isinstance(exc, LocalProtocolError) else LocalProtocolError(
                    f"the credential presenter failed: {type(exc).__name__}: {exc}")
                if not fut.done():
                    fut.set_exception(err)
                raise err from exc

        core.credential_for_challenge = present if presenter is not None else None
        foreign = core.foreign_announcements
        try:
            retrying = retrying_refused = False
            pause = 0.0  #: before the next HELLO: refusals of our challenge in a row ask again ever more slowly
            while True:
                if pause:
                    done, _ = await asyncio.wait({fut}, timeout=min(pause, max(0.0, deadline - loop.time())))
                    got = fut.result() if done else None
                    if isinstance(got, Subscribed):  # (an earlier SUBSCRIBE of ours admitted meanwhile)
                        return got.branch
                core.hello(credential, retry=retrying)
                retrying = True
                await self._flush()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if core.foreign_announcements > foreign:
                        hint = ("; the peer announced another channel or author key than the ones given: check the "
                                "author's DID, the channel id and the address")
                    elif not core.announced:
                        hint = "; no announcement of this channel came back: check the address and the channel id"
                    else:
                        hint = ""
                    raise StreamsTimeoutError("no admission or refusal from the author" + hint)
                done, _ = await asyncio.wait({fut}, timeout=min(retry, remaining))
                if done:
                    ev = fut.result()
                    if isinstance(ev, Subscribed):
                        return ev.branch
                    assert isinstance(ev, Refused)
                    if ev.reason is not RejectReason.BAD_CHALLENGE or deadline - loop.time() <= 0:
                        raise AdmissionRefused("the author refused the subscription", ev.reason)
                    # Not a verdict on us: the challenge expired on the way (a slow host), the author restarted
                    # since it issued it (SPEC 8.3), or our SUBSCRIBE arrived twice (the first may have been
                    # granted).  Ask again with a fresh challenge.
                    # The first time at once; then after 50 ms, doubling up to ``retry``: a relay answering every
                    # HELLO with a stale CHALLENGE, or an author refusing for a while (its used-nonce table full),
                    # must not have both sides run the handshake's crypto at network speed until the timeout.
                    log.info("subscription challenge refused (expired, used, issued before the author restarted, "
                             "or the author is busy); asking again")
                    pause = 0.0 if not retrying_refused else min(retry, max(0.05, pause * 2))
                    retrying_refused = True
                    self._waiters.remove(fut)
                    fut = loop.create_future()
                    self._waiters.append(fut)
        except BaseException:
            # Given up (timed out, refused, cancelled, closed): a late CHALLENGE must not run the application's
            # presenter nor send a SUBSCRIBE the author would admit after this call returned.
            core.abandon_hello()
            raise
        finally:
            if core.credential_for_challenge is present:
                core.credential_for_challenge = None
            if fut in self._waiters:
                self._waiters.remove(fut)
            if not fut.done():
                fut.cancel()

    async def unsubscribe(self, branch: bytes) -> None:
        """Leave a branch (signed notice to the author) and close it locally.  What we hold of it is acknowledged
        first: no ACK is signed for a closed branch, and the receive loop signs a batch's ACKs only after the
        application took the batch -- an application that leaves as soon as it read a message would leave it
        unacknowledged."""
        self._check_usable()
        self._core.acknowledge()  # committed with the unsubscribe, sent before it (THREATS 4: commit, then ACK)
        self._core.unsubscribe(branch)
        await self._flush()

    def _end_waits(self) -> None:
        for w in self._waiters:  # subscribe() calls: they would wait out their retry step, then find the party closed
            if not w.done():
                w.set_exception(self._closed_error("closed before the author answered the subscription"))

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, (Refused, Subscribed)):
            for w in self._waiters:
                if not w.done():
                    w.set_result(ev)
        if isinstance(ev, BranchClosed):
            log.info("branch %s closed by %s", ev.branch.hex(), ev.by)


class _Messages:
    """The iterator of ``async for msg in party``.  Not an async generator: a cancelled step would finish one, and
    every later step would raise StopAsyncIteration -- the iteration's "closed" -- while the party is open."""

    __slots__ = ("_party",)

    def __init__(self, party: _Party) -> None:
        self._party = party

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> MessageReceived:
        try:
            return await self._party.next_message()
        except ClosedResourceError:
            self._party._raise_broken()
            raise StopAsyncIteration from None


class _Events:
    """The iterator of :meth:`_Party.events` (not an async generator, for the reason :class:`_Messages` says)."""

    __slots__ = ("_party",)

    def __init__(self, party: _Party) -> None:
        self._party = party

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Event:
        party = self._party
        while not party._events:
            if party._closed:
                party._raise_broken()
                raise StopAsyncIteration
            party._events_ready.clear()
            await party._events_ready.wait()
        return party._events.popleft()


async def _abandon(transport: Transport, store: Store | None, party: _Party | None, *, discard: bool = False) -> None:
    """A create/open failed: release what it took.  The transport passed in belongs to the party from then on, so
    it is closed too (an abandoned ZeroMQ endpoint keeps its socket, and pyzmq's finalizer may later block the
    process).  Nothing more is committed; errors while releasing are dropped (the caller gets the first one).
    ``discard`` (a create): the store's files are removed as well (:meth:`Store.discard`)."""
    if party is not None:
        party._closed = True
        with contextlib.suppress(Exception):
            await party._stop_services()
        await cancel_and_wait(party._tasks)
        party._parallel.close()
    if store is not None:
        with contextlib.suppress(Exception):
            if discard:
                store.discard()
            else:
                store.close()
    with contextlib.suppress(Exception):
        await transport.close()


#: A FETCH not served for a damaged logged message is logged as an error again after this long (ms), not at each
#: of the member's retries (about one a second).
_UNSERVED_RELOG_MS = 3_600_000


def _conflict_error(branch: bytes, seq: int) -> ChainConflictError:
    return ChainConflictError(f"our chain on branch {branch.hex()} conflicts with the author's copy (ChainConflict): "
                              f"seq {seq} will not be acknowledged")


class _Turn(NamedTuple):
    """A commit's place in the order of sends (:meth:`_Party._send_each`)."""

    before: list[asyncio.Future[None]]  #: the sends of earlier commits on the same branches, still on the way
    done: asyncio.Future[None]  #: ours: done once they are over
    branches: set[bytes]


def _stop(sending: asyncio.Future[None] | None) -> None:
    """Cancel the rest of a send on the way (close), its outcome taken: nobody is left to raise it."""
    if sending is not None:
        sending.cancel()
        sending.add_done_callback(_retrieved)


def _retrieved(f: asyncio.Future[None]) -> None:
    """A done callback that takes a future's outcome (nobody else will: no "never retrieved" warning)."""
    if not f.cancelled():
        f.exception()


def _sync_error(f: asyncio.Future[None]) -> Exception | None:
    """What a commit's sync (streams._syncer) ended with: None, its StorageError, or ClosedResourceError if it was
    given up (cancelled: the party closed)."""
    if f.cancelled():
        return ClosedResourceError("closed before the commit's sync")
    exc = f.exception()
    return exc if exc is None or isinstance(exc, Exception) else ClosedResourceError("the commit's sync was stopped")


def _settle(group: list[asyncio.Future[None]] | None, exc: Exception | None) -> None:
    """Resolve (or fail, with ``exc``) the futures of the publishes a commit covered.  Cancelled callers'
    futures are skipped; every other one is awaited by exactly one caller, which retrieves its outcome."""
    if group:
        for f in group:
            if not f.done():
                if exc is None:
                    f.set_result(None)
                else:
                    f.set_exception(exc)


def _claim_key(claim: AnchorClaim) -> tuple[bytes, int, int, bytes, str, bool]:
    """What makes two anchor claims the same claim (a copy of one queued for its ledger check adds nothing)."""
    h = claim.head
    return h.branch, h.publisher, h.seq, h.hash, claim.anchor_id, claim.restore


# --- in-memory transport ---------------------------------------------------------------------------------------


class MemoryHub:
    """An in-process network for tests and the in-process demo.

    Every frame the author sends to a branch or to everyone reaches *every* subscriber endpoint: the worst case
    for segregation, which must then hold by cryptography alone.  ``tap`` records every frame as
    (sender, receiver, data) -- the attacker's view; :meth:`inject` delivers arbitrary bytes."""

    def __init__(self) -> None:
        self._author: MemoryTransport | None = None
        self._subs: dict[str, MemoryTransport] = {}
        self.tap: list[tuple[str, str, bytes]] = []

    def author_endpoint(self) -> MemoryTransport:
        self._author = MemoryTransport(self, "author")
        return self._author

    def subscriber_endpoint(self, name: str) -> MemoryTransport:
        t = MemoryTransport(self, name)
        self._subs[name] = t
        return t

    def inject(self, to: str, data: bytes, peer: str = "attacker") -> None:
        """Deliver raw bytes to an endpoint as if ``peer`` had sent them."""
        target = self._author if to == "author" else self._subs.get(to)
        if target is not None and not target.closed:
            target.inbox.put_nowait((data, peer))

    def _route(self, src: str, out: Outgoing) -> None:
        if src != "author":
            targets = ["author"]
        else:
            targets = [str(out.peer)] if out.peer is not None else list(self._subs)
        for t in targets:
            self.tap.append((src, t, out.data))
            self.inject(t, out.data, src)


_SHUT = object()  #: the "peer" of the item close() puts in a MemoryTransport's inbox


class MemoryTransport:
    """One endpoint of a :class:`MemoryHub`."""

    def __init__(self, hub: MemoryHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.inbox: asyncio.Queue[tuple[bytes, object]] = asyncio.Queue()
        self.closed = False
        self._shut = False  #: close() was called

    async def send(self, out: Outgoing) -> None:
        if self.closed:
            raise ClosedResourceError("transport closed")
        self.hub._route(self.name, out)

    def send_many(self, outs: Sequence[Outgoing]) -> None:
        """Route every frame of ``outs`` in order (see :class:`BatchTransport`)."""
        if self.closed:
            raise ClosedResourceError("transport closed")
        for out in outs:
            self.hub._route(self.name, out)

    async def recv(self) -> list[tuple[bytes, object]]:
        """Raises :class:`ClosedResourceError` once :meth:`close` was called (a pending call too), as a real
        transport does.  (Setting :attr:`closed` alone drops what reaches this endpoint: tests' lossy link.)"""
        if self._shut:
            raise ClosedResourceError("transport closed")
        first = await self.inbox.get()
        if first[1] is _SHUT:
            raise ClosedResourceError("transport closed")
        batch = [first]
        while not self.inbox.empty() and len(batch) < 256:
            item = self.inbox.get_nowait()
            if item[1] is not _SHUT:  # (the next call raises)
                batch.append(item)
        return batch

    async def close(self) -> None:
        self.closed = True
        if not self._shut:
            self._shut = True
            self.inbox.put_nowait((b"", _SHUT))  # wakes a pending recv(), which raises

