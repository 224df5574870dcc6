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
itself accepts each message exactly once (replays are rejected, before and after restarts).

If the store fails (disk full, read-only), the call raises :class:`~streams.errors.StorageError`, nothing is
acknowledged, and the party closes itself: reopen it from the store, which holds the last committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, Self

from .core import AuthorCore, CoreConfig, Outgoing, SubscriberCore, _CoreBase
from .errors import (
    AdmissionRefused,
    ClosedResourceError,
    LocalProtocolError,
    StorageError,
    StreamsTimeoutError,
)
from .events import (
    Acknowledged,
    BranchClosed,
    Event,
    FetchRequested,
    Granted,
    MessageReceived,
    Refused,
    Rejected,
)
from .identity import Identity, PublicIdentity
from .policy import Policy
from .store import MEMLIMIT, OPSLIMIT, Store
from .wire import Permission, SigningMode

__all__ = [
    "Author",
    "BranchInfo",
    "MemoryHub",
    "MemoryTransport",
    "StoreOptions",
    "Subscriber",
    "Transport",
]

log = logging.getLogger("streams")

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Transport(Protocol):
    """Moves frames.  Implementations: :class:`MemoryTransport` (tests), ``brokerless`` (ZeroMQ).

    A transport that can lose its connection and reconnect may also have an ``on_reconnect`` attribute: the
    :class:`Subscriber` sets it to a coroutine function that the transport calls after each reconnect (and when
    it notices that the other side restarted); it re-requests whatever was missed (catch-up).
    """

    async def send(self, out: Outgoing) -> None:
        """Send one frame.  ``out.peer``: reply to that peer; ``out.branch``: branch traffic; else everyone."""

    async def recv(self) -> list[tuple[bytes, object]]:
        """Wait for at least one frame and return every frame available now, as (data, peer)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How the store is kept."""

    durable: bool = True
    """``synchronous=FULL`` (survives power loss) if True, else ``NORMAL`` (survives process crashes)."""
    opslimit: int = OPSLIMIT
    """Argon2id operations limit for the passphrase KDF."""
    memlimit: int = MEMLIMIT
    """Argon2id memory limit, bytes."""


@dataclass(frozen=True, slots=True)
class BranchInfo:
    """What a party knows of one branch."""

    id: bytes
    epoch: int
    permission: Permission
    open: bool
    members: tuple[str, ...]  #: member DIDs, index order; the author first


class _Party:
    """Shared driver machinery."""

    _core: _CoreBase

    def __init__(self, store: Store, transport: Transport, clock: Clock | None, queue_size: int) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock or wall_clock_ms
        self._messages: asyncio.Queue[MessageReceived] = asyncio.Queue(queue_size)
        self._events: deque[Event] = deque(maxlen=10_000)
        self._events_ready = asyncio.Event()
        self._dropped_events = 0
        self._delivered: dict[tuple[bytes, int], int] = {}
        self._last_given: MessageReceived | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._broken: BaseException | None = None
        self._ack_waiters: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self.heartbeat_ms = 500
        #: Every this many heartbeats, HEAD notices are sent even for chains that did not move (a lost notice or
        #: a lost catch-up request would otherwise leave a quiet chain's tail unnoticed: THREATS 4).
        self.head_refresh_ticks = 20

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def did(self) -> str:
        return self._store.identity.did

    @property
    def channel(self) -> bytes:
        return self._core.channel

    @property
    def store(self) -> Store:
        return self._store

    def branches(self) -> list[BranchInfo]:
        out = []
        for bid in self._core.branch_ids():
            epoch, perm, state, members = self._core.branch_info(bid)
            out.append(BranchInfo(bid, epoch, perm, state.value == "open", members))
        return out

    async def publish(self, branch: bytes, payload: bytes) -> int:
        """Publish ``payload`` on ``branch``; returns its sequence number once it is on disk and sent.

        Raises :class:`LocalProtocolError` (no write permission, payload too large, unknown branch),
        :class:`ClosedResourceError` (branch or party closed), :class:`StorageError` (nothing acknowledged)."""
        self._check_usable()
        seq = self._core.publish(branch, payload, self._clock())
        await self._flush()
        return seq

    async def wait_acknowledged(self, branch: bytes, seq: int, timeout: float | None = None) -> None:
        """Wait until a member of ``branch`` acknowledged (signed ACK, sent after its commit) that our message
        ``seq`` -- and every earlier one of our chain -- is on its disk.

        ``publish`` stays non-blocking; call this when the sender must know the receiver holds the message.
        Raises :class:`StreamsTimeoutError` after ``timeout`` seconds, :class:`LocalProtocolError` for an unknown
        branch, :class:`ClosedResourceError` if the party closes meanwhile."""
        self._check_usable()
        if self._core.acknowledged(branch) >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (branch, seq, fut)
        self._ack_waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise StreamsTimeoutError(f"seq {seq} not acknowledged within {timeout} s") from None
        finally:
            if entry in self._ack_waiters:
                self._ack_waiters.remove(entry)

    def __aiter__(self) -> AsyncIterator[MessageReceived]:
        return self._iter_messages()

    async def _iter_messages(self) -> AsyncIterator[MessageReceived]:
        while True:
            try:
                yield await self.next_message()
            except ClosedResourceError:
                return

    async def next_message(self, timeout: float | None = None) -> MessageReceived:
        """The next payload message.  Marks the previous one delivered.  Raises :class:`StreamsTimeoutError`
        after ``timeout`` seconds, :class:`ClosedResourceError` once closed and drained."""
        if self._last_given is not None:
            m = self._last_given
            self._delivered[(m.branch, m.publisher)] = m.seq
            self._last_given = None
        while True:
            if not self._messages.empty():
                msg = self._messages.get_nowait()
                self._last_given = msg
                return msg
            if self._closed:
                raise ClosedResourceError("closed")
            get = asyncio.ensure_future(self._messages.get())
            try:
                done, _ = await asyncio.wait({get}, timeout=timeout)
            except asyncio.CancelledError:
                get.cancel()
                raise
            if not done:
                get.cancel()
                raise StreamsTimeoutError("no message within the timeout")
            msg = get.result()
            self._last_given = msg
            return msg

    async def events(self) -> AsyncIterator[Event]:
        """Every non-message event (gaps, rejections, admissions, grants, closures), in order."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            self._events_ready.clear()
            await self._events_ready.wait()

    def pending_events(self) -> list[Event]:
        """Take the non-message events that are waiting, without blocking."""
        out = list(self._events)
        self._events.clear()
        return out

    async def close(self) -> None:
        """Stop, persist the application cursor, close the transport and the store.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for _b, _s, f in self._ack_waiters:
            if not f.done():
                f.set_exception(ClosedResourceError("closed"))
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._broken is None:
            with contextlib.suppress(StorageError):
                self._core.flush_checkpoints(self._clock())
                await self._flush()
                if self._last_given is not None:
                    m = self._last_given
                    self._delivered[(m.branch, m.publisher)] = m.seq
                self._store.commit(self._core.take_changes(), self._delivered)
        self._events_ready.set()
        await self._transport.close()
        self._store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- driver ------------------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ClosedResourceError("closed after a storage failure; reopen from the store") from self._broken
        if self._closed:
            raise ClosedResourceError("closed")

    async def _flush(self) -> None:
        """Commit the core's changes, then send its frames.  Called with no await between core calls and here."""
        changes = self._core.take_changes()
        out = self._core.data_to_send()
        delivered, self._delivered = self._delivered, {}
        try:
            self._store.commit(changes, delivered)
        except StorageError as exc:
            # The core is now ahead of the disk: never acknowledge or send, close and let the user reopen.
            self._broken = exc
            log.error("store commit failed; closing: %s", exc)
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))
            raise
        for o in out:
            await self._transport.send(o)

    def _start(self) -> None:
        self._tasks.append(asyncio.create_task(self._recv_loop(), name=f"streams-recv-{self.did[-8:]}"))
        self._tasks.append(asyncio.create_task(self._timer_loop(), name=f"streams-timer-{self.did[-8:]}"))

    async def _recv_loop(self) -> None:
        while not self._closed:
            batch = await self._transport.recv()
            now = self._clock()
            events: list[Event] = []
            for data, peer in batch:
                events.extend(self._core.receive(data, now, peer))
            # ACKs are queued now but sent by _flush only after its commit succeeded (THREATS 4).
            self._core.acknowledge()
            try:
                await self._flush()
            except StorageError:
                return
            for ev in events:
                await self._dispatch(ev)

    async def _timer_loop(self) -> None:
        quiet_ticks = 0
        refresh = 0
        while not self._closed:
            due = self._core.next_timer()
            now = self._clock()
            wait_ms = self.heartbeat_ms if due is None else max(0, min(self.heartbeat_ms, due - now))
            await asyncio.sleep(wait_ms / 1000)
            now = self._clock()
            self._core.handle_timer(now)
            self._on_tick(now)
            quiet_ticks += 1
            if quiet_ticks * max(wait_ms, 1) >= self.heartbeat_ms:
                quiet_ticks = 0
                refresh += 1
                force = refresh >= self.head_refresh_ticks
                if force:
                    refresh = 0
                self._core.head_notices(force)
            try:
                await self._flush()
            except StorageError:
                return

    async def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, MessageReceived):
            await self._messages.put(ev)  # bounded: back-pressure on the receive loop
            return
        if isinstance(ev, FetchRequested):
            self._serve_fetch(ev)
            for o in self._core.data_to_send():
                await self._transport.send(o)
        if isinstance(ev, Rejected):
            log.info("rejected frame: %s (%s)", ev.reason.name, ev.detail)
        if isinstance(ev, Acknowledged):
            self._resolve_acks(ev)
        self._on_event(ev)
        if len(self._events) == self._events.maxlen:
            self._dropped_events += 1
        self._events.append(ev)
        self._events_ready.set()

    def _on_event(self, ev: Event) -> None:
        pass

    def _resolve_acks(self, ev: Acknowledged) -> None:
        for b, s, f in self._ack_waiters:
            if b == ev.branch and s <= ev.through_seq and not f.done():
                f.set_result(None)

    def _on_tick(self, now_ms: int) -> None:
        pass

    def _serve_fetch(self, ev: FetchRequested) -> None:
        frames = self._store.log_range(ev.branch, ev.publisher, ev.from_seq, ev.to_seq)
        self._core._out.extend(Outgoing(f, peer=ev.peer) for f in frames)

    def _redeliver(self) -> None:
        me = {bid: self._core._branches[bid].me for bid in self._core.branch_ids()}
        for _b, _p, _s, frame in self._store.undelivered(me):
            msg = self._core.open_logged(frame)
            if msg is not None:
                if self._messages.full():
                    break  # the rest stays undelivered on disk and comes back at the next open
                self._messages.put_nowait(msg)


class Author(_Party):
    """A channel's author.  Open with :meth:`create` (new channel) or :meth:`open` (restart).

    >>> author = await Author.create("monitor.db", identity, "fraud-monitor", "passphrase", transport, policy)
    """

    _core: AuthorCore

    def __init__(self, core: AuthorCore, store: Store, transport: Transport, clock: Clock | None,
                 queue_size: int) -> None:
        super().__init__(store, transport, clock, queue_size)
        self._core = core
        self.recheck_ms = 5_000
        self._last_recheck = 0

    def __repr__(self) -> str:
        return f"Author(did={self.did!r}, channel={self.channel.hex()}, branches={len(self._core.branch_ids())})"

    @classmethod
    async def create(cls, path: str | os.PathLike[str], identity: Identity, name: str, passphrase: str | bytes,
                     transport: Transport, policy: Policy, *, config: CoreConfig | None = None,
                     store_options: StoreOptions | None = None, clock: Clock | None = None,
                     queue_size: int = 10_000) -> Author:
        """Create a channel: a new store at ``path``, announce it, start serving."""
        so = store_options or StoreOptions()
        core = AuthorCore(identity, name, policy, config)
        store = Store.create(path, identity, passphrase, role="author", channel=core.channel,
                             author_did=identity.did, name=name, durable=so.durable, opslimit=so.opslimit,
                             memlimit=so.memlimit)
        self = cls(core, store, transport, clock, queue_size)
        core.announce()
        await self._flush()
        self._start()
        return self

    @classmethod
    async def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, transport: Transport,
                   policy: Policy, *, config: CoreConfig | None = None, store_options: StoreOptions | None = None,
                   clock: Clock | None = None, queue_size: int = 10_000) -> Author:
        """Reopen a channel after a restart: cursors, branches and used challenges come back from disk."""
        so = store_options or StoreOptions()
        store = Store.open(path, passphrase, durable=so.durable)
        if store.meta("role") != "author":
            store.close()
            raise LocalProtocolError(f"{path} is not an author's store")
        core = AuthorCore(store.identity, store.meta("name"), policy, config)
        self = cls(core, store, transport, clock, queue_size)
        core.load_author(store.load_branches(), store.load_chains(), store.load_nonces(self._clock()))
        self._redeliver()
        core.announce()
        core.acknowledge()
        await self._flush()
        self._start()
        return self

    @property
    def announcement(self) -> bytes:
        return self._core.announcement

    @property
    def policy(self) -> Policy:
        return self._core.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._core.policy = policy

    def branch_of(self, did: str) -> bytes | None:
        """The open per-subscriber branch of a DID."""
        return self._core.branch_of(did)

    async def open_branch(self, did: str, permission: Permission = Permission.READ_WRITE,
                          mode: SigningMode | None = None) -> bytes:
        """Open a branch for a DID without waiting for it to subscribe (it receives the grant when it does)."""
        self._check_usable()
        b = self._core.open_branch(PublicIdentity.from_did(did), permission, mode)
        await self._flush()
        return b

    async def open_group(self, dids: list[str], permission: Permission = Permission.READ) -> bytes:
        """Open a broadcast branch readable by several DIDs (author-write only, signed-each)."""
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
        """Re-check the evidence (credentials) that admitted each subscriber against the policy now, and revoke
        the branches whose credential was revoked or expired.  Also runs every ``recheck_ms`` on the timer."""
        self._check_usable()
        revoked = self._core.recheck(self._clock())
        await self._flush()
        return revoked

    def _on_tick(self, now_ms: int) -> None:
        if now_ms - self._last_recheck >= self.recheck_ms:
            self._last_recheck = now_ms
            for b in self._core.recheck(now_ms):
                log.info("branch %s revoked: its admission no longer holds", b.hex())

    async def remove_member(self, branch: bytes, did: str) -> None:
        """Remove a DID from a group branch and re-key it."""
        self._check_usable()
        self._core.remove_member(branch, did)
        await self._flush()


class Subscriber(_Party):
    """A subscriber.  Open with :meth:`create` (first time) or :meth:`open` (restart), then :meth:`subscribe`."""

    _core: SubscriberCore

    def __init__(self, core: SubscriberCore, store: Store, transport: Transport, clock: Clock | None,
                 queue_size: int) -> None:
        super().__init__(store, transport, clock, queue_size)
        self._core = core
        self._waiters: list[asyncio.Future[Event]] = []
        if hasattr(transport, "on_reconnect"):
            transport.on_reconnect = self._resync

    async def _resync(self) -> None:
        """After the transport reconnected (or the author restarted): fetch what we missed (Clone pattern: live
        frames already flow and are held; the fetch fills up to them; duplicates are rejected as replays), and
        re-announce our own chains' heads so the author detects what it missed of ours."""
        if self._closed or self._broken is not None:
            return
        self._core.catch_up()
        self._core.head_notices(force=True)
        self._core.acknowledge()
        with contextlib.suppress(StorageError):
            await self._flush()

    def __repr__(self) -> str:
        return f"Subscriber(did={self.did!r}, channel={self.channel.hex()}, state={self._core.state.value})"

    @classmethod
    async def create(cls, path: str | os.PathLike[str], identity: Identity, author_did: str, channel: bytes,
                     passphrase: str | bytes, transport: Transport, *, config: CoreConfig | None = None,
                     store_options: StoreOptions | None = None, clock: Clock | None = None,
                     queue_size: int = 10_000) -> Subscriber:
        """New subscriber state at ``path`` for the channel ``channel`` of ``author_did`` (both known out of
        band).  Call :meth:`subscribe` next."""
        so = store_options or StoreOptions()
        core = SubscriberCore(identity, author_did, channel, config)
        store = Store.create(path, identity, passphrase, role="subscriber", channel=channel, author_did=author_did,
                             durable=so.durable, opslimit=so.opslimit, memlimit=so.memlimit)
        self = cls(core, store, transport, clock, queue_size)
        self._start()
        return self

    @classmethod
    async def open(cls, path: str | os.PathLike[str], passphrase: str | bytes, transport: Transport, *,
                   config: CoreConfig | None = None, store_options: StoreOptions | None = None,
                   clock: Clock | None = None, queue_size: int = 10_000) -> Subscriber:
        """Reopen after a restart: branches and cursors come back; missed messages are fetched."""
        so = store_options or StoreOptions()
        store = Store.open(path, passphrase, durable=so.durable)
        if store.meta("role") != "subscriber":
            store.close()
            raise LocalProtocolError(f"{path} is not a subscriber's store")
        core = SubscriberCore(store.identity, store.meta("author_did"), store.meta("channel"), config)
        core.load_subscriber(store.meta("announce"), store.load_branches(), store.load_chains())
        self = cls(core, store, transport, clock, queue_size)
        self._redeliver()
        core.catch_up()
        core.acknowledge()  # re-send our ACKs: the last ones may have died with the previous process
        await self._flush()
        self._start()
        return self

    async def subscribe(self, credential: bytes = b"", timeout: float = 10.0, retry: float = 1.0,
                        presenter: Callable[[bytes, bytes], bytes] | None = None) -> bytes:
        """Run the handshake (announcement, challenge, sealed proof of control) and wait for the grant.

        ``presenter(nonce, channel) -> bytes`` builds a credential presentation bound to the author's challenge
        (see :func:`streams.credentials.present`, with ``challenge=nonce, domain=channel``); ``credential`` is
        for static evidence.

        Returns the granted branch id.  Raises :class:`AdmissionRefused` if the author refuses,
        :class:`StreamsTimeoutError` if nothing comes back in ``timeout`` seconds (HELLO is retried every
        ``retry`` seconds)."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Event] = loop.create_future()
        self._waiters.append(fut)
        deadline = loop.time() + timeout
        self._core.credential_for_challenge = presenter
        try:
            while True:
                self._core.hello(credential)
                await self._flush()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise StreamsTimeoutError("no grant or refusal from the author")
                done, _ = await asyncio.wait({fut}, timeout=min(retry, remaining))
                if done:
                    ev = fut.result()
                    if isinstance(ev, Refused):
                        raise AdmissionRefused("the author refused the subscription", ev.reason)
                    assert isinstance(ev, Granted)
                    return ev.branch
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
            if not fut.done():
                fut.cancel()

    async def unsubscribe(self, branch: bytes) -> None:
        """Leave a branch (signed notice to the author) and close it locally."""
        self._check_usable()
        self._core.unsubscribe(branch)
        await self._flush()

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Granted | Refused):
            for w in self._waiters:
                if not w.done():
                    w.set_result(ev)
        if isinstance(ev, BranchClosed):
            log.info("branch %s closed by %s", ev.branch.hex(), ev.by)


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


class MemoryTransport:
    """One endpoint of a :class:`MemoryHub`."""

    def __init__(self, hub: MemoryHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.inbox: asyncio.Queue[tuple[bytes, object]] = asyncio.Queue()
        self.closed = False

    async def send(self, out: Outgoing) -> None:
        if self.closed:
            raise ClosedResourceError("transport closed")
        self.hub._route(self.name, out)

    async def recv(self) -> list[tuple[bytes, object]]:
        first = await self.inbox.get()
        batch = [first]
        while not self.inbox.empty() and len(batch) < 256:
            batch.append(self.inbox.get_nowait())
        return batch

    async def close(self) -> None:
        self.closed = True

