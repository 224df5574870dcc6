"""Attacks on the ZeroMQ layer: a hostile relay process, a garbage flood, a slow subscriber, CURVE admission.

The author runs in the test process (so its endpoint's queues and counters can be inspected); the other parties
are real processes (``tests/zmq_party.py``, ``tests/zmq_relay.py``) talking over tcp loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, CurveConfig, EndpointConfig, SubscriberEndpoint
from brokerless.endpoints import PING, PONG
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing
from streams.errors import DecodeError, RejectReason, StreamsTimeoutError
from streams.events import Rejected, SubscriberAdmitted
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame

from .test_zmq_review import Relay as Hop
from .zmqproc import HERE, Proc, got, ints, party, procs

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
NAME = "fraud-monitor"  # as in zmq_party.py
CORE = CoreConfig(fetch_retry_ms=200)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


AUTHOR, P1, P2 = ident(1), ident(10), ident(11)


async def until(proc: Proc, pred: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
    """Wait for a child's output without blocking the event loop (the author runs in it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred(proc.poll_lines()):
            return proc.lines
        assert proc.p.poll() is None, f"child exited waiting for {what}: {proc.stderr_tail()}"
        await asyncio.sleep(0.02)
    raise AssertionError(f"timeout waiting for {what}; last lines {proc.lines[-5:]}")


async def make_author(tmp: Path, cfg: EndpointConfig, allow: list[Identity]) -> tuple[Author, AuthorEndpoint]:
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([i.did for i in allow]),
                                 store_options=FAST, config=CORE)
    author.heartbeat_ms = 100
    author.head_refresh_ticks = 5
    return author, ep


async def wait_branch(author: Author, who: Identity, timeout: float = 20) -> bytes:
    end = time.monotonic() + timeout
    while (b := author.branch_of(who.did)) is None:
        assert time.monotonic() < end, "no subscription"
        await asyncio.sleep(0.02)
    return b


class Relay:
    def __init__(self, started: list[Proc], author_addr: str) -> None:
        self.proc = Proc(HERE / "zmq_relay.py", author_addr)
        started.append(self.proc)
        self.ctx = zmq.asyncio.Context()
        self.ctl: zmq.asyncio.Socket | None = None

    async def start(self) -> str:
        line = (await until(self.proc, lambda ls: bool(ls), 20, "relay READY"))[0]
        _, front, ctl = line.split()
        self.ctl = self.ctx.socket(zmq.REQ)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.connect(ctl)
        return front

    async def call(self, *req: object) -> object:
        assert self.ctl is not None
        await self.ctl.send(msgpack.packb(list(req), use_bin_type=True))
        return msgpack.unpackb(await self.ctl.recv(), raw=False)

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close(linger=0)
        self.ctx.term()


async def test_hostile_relay_cannot_make_anything_bad_accepted_and_delivery_recovers(tmp_path: Path) -> None:
    cfg = EndpointConfig(heartbeat_ms=100, liveness=20)
    author, ep = await make_author(tmp_path, cfg, [P1])
    with procs() as started:
        relay = Relay(started, ep.addresses[0])
        try:
            front = await relay.start()
            sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                          SubscriberEndpoint(front, cfg), store_options=FAST, config=CORE)
            sub.heartbeat_ms = 100
            sub.head_refresh_ticks = 5
            branch = await sub.subscribe(timeout=10)
            # From now on the relay drops, flips bits in, duplicates and reorders frames both ways.
            await relay.call("set", "down", 0.15, 0.10, 0.10, 0.20)
            await relay.call("set", "up", 0.10, 0.05, 0.10, 0.10)
            sent = [b"alert %d" % i for i in range(60)]
            for p in sent:
                await author.publish(branch, p)
            for i in range(10):
                await sub.publish(branch, b"payment %d" % i)
            got_sub = [await sub.next_message(timeout=30) for _ in range(60)]
            got_author = [await author.next_message(timeout=30) for _ in range(10)]
            # Exactly the genuine messages, each once, in order, despite loss, corruption, duplicates, reorder.
            assert [(m.seq, m.payload) for m in got_sub] == list(enumerate(sent, 1))
            assert [m.payload for m in got_author] == [b"payment %d" % i for i in range(10)]
            await author.wait_acknowledged(branch, 60, timeout=30)
            await sub.wait_acknowledged(branch, 10, timeout=30)
            seen = {e.reason for e in sub.pending_events() if isinstance(e, Rejected)}
            assert RejectReason.REPLAY in seen  # the duplicates
            assert seen & {RejectReason.BAD_SIGNATURE, RejectReason.BAD_AEAD, RejectReason.MALFORMED,
                           RejectReason.BAD_LINK, RejectReason.HOLD_FULL}  # the bit flips
            author.pending_events()
            sub.pending_events()

            # The relay turns honest and replays everything it ever recorded, both ways.
            await relay.call("set", "down", 0, 0, 0, 0)
            await relay.call("set", "up", 0, 0, 0, 0)
            down = await relay.call("frames", "down")
            up = await relay.call("frames", "up")
            assert isinstance(down, list) and isinstance(up, list)
            await relay.call("replay", "down", 0, len(down))
            await relay.call("replay", "up", 0, len(up))
            with pytest.raises(StreamsTimeoutError):
                await sub.next_message(timeout=1.0)
            with pytest.raises(StreamsTimeoutError):
                await author.next_message(timeout=0.2)
            assert not any(isinstance(e, SubscriberAdmitted) for e in author.pending_events())
            replays = [e for e in sub.pending_events() if isinstance(e, Rejected)]
            n_packets = sum(1 for d in down if d[:1] == b"\x95" and decode_frame(d).kind is Kind.PACKET)
            assert len([r for r in replays if r.reason is RejectReason.REPLAY]) >= n_packets // 2

            # Injection: a genuine packet with one bit flipped in each position class is never accepted.
            pkt = next(d for d in down if d[:1] == b"\x95" and decode_frame(d).kind is Kind.PACKET)
            for pos in (5, 40, len(pkt) // 2, len(pkt) - 3):
                bad = bytearray(pkt)
                bad[pos] ^= 0x04
                await relay.call("inject", "down", bytes(bad))
            with pytest.raises(StreamsTimeoutError):
                await sub.next_message(timeout=0.5)
            # And the channel still works afterwards.
            await author.publish(branch, b"after the attack")
            m = await sub.next_message(timeout=10)
            assert (m.seq, m.payload) == (61, b"after the attack")
            await sub.close()
        finally:
            relay.close()
            await author.close()


async def test_garbage_flood_does_not_stop_delivery_to_well_behaved_peers(tmp_path: Path) -> None:
    cfg = EndpointConfig(heartbeat_ms=100, liveness=30, inbound_budget=20, inbound_burst=20)
    author, ep = await make_author(tmp_path, cfg, [P1])
    with procs() as started:
        try:
            addr = ep.addresses[0]
            s = party(started, "subscriber", "--db", str(tmp_path / "p1.db"), "--connect", addr, "--seed", "10")
            await until(s, lambda ls: any(x.startswith("SUBSCRIBED") for x in ls), 20, "subscription")
            branch = await wait_branch(author, P1)
            flood = party(started, "flood", "--connect", addr, "--seconds", "3")
            await asyncio.sleep(0.5)  # the flood is under way
            for i in range(100):
                await author.publish(branch, b"m%d" % i)
                await asyncio.sleep(0.02)
            await author.wait_acknowledged(branch, 100, timeout=20)
            await until(s, lambda ls: [x[2] for x in got(ls)] == list(range(1, 101)), 20, "every message")
            await until(flood, lambda ls: any(x.startswith("SENT") for x in ls), 20, "flood end")
            sent = int(next(x for x in flood.lines if x.startswith("SENT")).split()[1])
            st = ep.stats
            assert sent > 1000
            assert st.malformed > 500, st  # dropped before the core, counted
            assert st.over_budget > 0, st  # the HELLO/PING flood was capped by the token bucket
            assert max(ep.queue_sizes().values(), default=0) <= cfg.send_queue
            assert len(ep.peers()) <= cfg.max_peers
        finally:
            await author.close()


async def test_slow_subscriber_does_not_slow_the_others_and_author_memory_is_bounded(tmp_path: Path) -> None:
    cfg = EndpointConfig(heartbeat_ms=1000, liveness=30, sndhwm=20, send_queue=50)
    author, ep = await make_author(tmp_path, cfg, [P1, P2])
    with procs() as started:
        try:
            addr = ep.addresses[0]
            fast = party(started, "subscriber", "--db", str(tmp_path / "p1.db"), "--connect", addr, "--seed", "10")
            slow = party(started, "subscriber", "--db", str(tmp_path / "p2.db"), "--connect", addr, "--seed", "11")
            for pr in (fast, slow):
                await until(pr, lambda ls: any(x.startswith("SUBSCRIBED") for x in ls), 20, "subscription")
            b_fast, b_slow = await wait_branch(author, P1), await wait_branch(author, P2)
            slow.p.send_signal(signal.SIGSTOP)  # it never reads again (until SIGCONT)
            n, payload = 300, b"x" * 16_000
            peak = 0
            for _ in range(n):
                await author.publish(b_fast, payload)
                await author.publish(b_slow, payload)
                peak = max(peak, *ep.queue_sizes().values())
            # The fast subscriber got and acknowledged everything while the slow one is still stopped.
            await author.wait_acknowledged(b_fast, n, timeout=60)
            await until(fast, lambda ls: len(got(ls)) >= n, 20, "fast subscriber stream")
            assert [x[2] for x in got(fast.lines)] == list(range(1, n + 1))
            # The stalled peer cost a bounded queue and dropped frames, never a blocked publish.
            assert peak <= cfg.send_queue and ep.stats.max_queue_seen <= cfg.send_queue
            assert ep.stats.send_dropped > 0, ep.stats
            # Once it runs again it recovers everything from the author's log (gap fill + HEAD notices).
            slow.p.send_signal(signal.SIGCONT)
            await until(slow, lambda ls: n in [x[2] for x in got(ls)], 60, "slow subscriber catch-up")
            assert [x[2] for x in got(slow.lines)] == list(range(1, n + 1))
            assert n in ints(slow.lines, "ACKED") or await _acked(author, b_slow, n)
        finally:
            await author.close()


async def _acked(author: Author, branch: bytes, seq: int) -> bool:
    await author.wait_acknowledged(branch, seq, timeout=20)
    return True


async def test_curve_admits_only_known_dids(tmp_path: Path) -> None:
    known = {P1.kx_public}
    cfg = EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_author(AUTHOR))
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg, known_key=lambda k: k in known)
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did, P2.did]),
                                 store_options=FAST, config=CORE)
    assert "secret" not in repr(cfg.curve).replace("secret=<hidden>", "")
    try:
        def sub_cfg(who: Identity) -> EndpointConfig:
            return EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_subscriber(who, AUTHOR.did))

        ok = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                     SubscriberEndpoint(ep.addresses[0], sub_cfg(P1)), store_options=FAST)
        branch = await ok.subscribe(timeout=10)
        await author.publish(branch, b"over curve")
        assert (await ok.next_message(timeout=10)).payload == b"over curve"
        # P2 is allowed by the policy but its key is not known to the ZAP handler: refused at the ZeroMQ level,
        # so not a single frame reaches the protocol core.
        refused = await Subscriber.create(tmp_path / "p2.db", P2, AUTHOR.did, author.channel, PW,
                                          SubscriberEndpoint(ep.addresses[0], sub_cfg(P2)), store_options=FAST)
        with pytest.raises(StreamsTimeoutError):
            await refused.subscribe(timeout=1.0, retry=0.3)
        assert author.branch_of(P2.did) is None
        assert len(ep.peers()) == 1
        await refused.close()
        await ok.close()
    finally:
        await author.close()


async def test_bad_addresses_are_typed_errors() -> None:
    from streams.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        AuthorEndpoint("nonsense://x")
    with pytest.raises(LocalProtocolError):
        SubscriberEndpoint("nonsense://x")


async def _curve_round_trip(tmp_path: Path, ep: AuthorEndpoint, name: str) -> None:
    """A known subscriber subscribes over CURVE to an author on ``ep`` and gets a message."""
    author = await Author.create(tmp_path / f"{name}-author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    sub = await Subscriber.create(tmp_path / f"{name}-p1.db", P1, AUTHOR.did, author.channel, PW,
                                  SubscriberEndpoint(ep.addresses[0], EndpointConfig(
                                      heartbeat_ms=100, curve=CurveConfig.for_subscriber(P1, AUTHOR.did))),
                                  store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)
        await author.publish(branch, b"over curve")
        assert (await sub.next_message(timeout=10)).payload == b"over curve"
    finally:
        await sub.close()
        await author.close()


async def test_a_curve_author_endpoint_recreated_in_the_same_loop_turn_still_admits(tmp_path: Path) -> None:
    """The ZAP handler is a task of the endpoint, awaited at close.  With pyzmq's AsyncioAuthenticator, whose
    cancelled task cleaned up a loop turn later, a new endpoint created right after could lose its ZAP socket's
    reader (same file descriptor) and refuse everyone; that depended on the order of tasks in the next turn, so
    this is a regression check of the sequence rather than a reproduction of every ordering."""
    cfg = EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_author(AUTHOR))
    first = AuthorEndpoint("tcp://127.0.0.1:0", cfg, known_key=lambda k: k == P1.kx_public)
    first._start()  # its tasks run (as under a party), the ZAP handler's among them
    await asyncio.sleep(0.05)
    await first.close()
    again = AuthorEndpoint("tcp://127.0.0.1:0", cfg, known_key=lambda k: k == P1.kx_public)  # no await between
    await _curve_round_trip(tmp_path, again, "b")


def test_a_curve_author_endpoint_built_before_the_loop_runs_admits(tmp_path: Path) -> None:
    """Built outside a running event loop (a script's setup), its ZAP handler starts with the endpoint's tasks."""
    ep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_author(AUTHOR)),
                        known_key=lambda k: k == P1.kx_public)
    asyncio.run(_curve_round_trip(tmp_path, ep, "c"))


async def test_a_second_close_waits_for_the_first_and_the_address_is_free_after_it(tmp_path: Path) -> None:
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    addr = ep.addresses[0]
    first = asyncio.create_task(author.close())
    await asyncio.sleep(0)  # the first close is under way
    await author.close()  # returns only when it is done: the store and the socket are closed
    assert first.done()
    again = await Author.open(tmp_path / "author.db", PW, AuthorEndpoint(addr), AllowList.of([P1.did]),
                              store_options=FAST, config=CORE)
    await again.close()


async def test_an_ipc_path_in_use_or_not_a_socket_is_not_taken_over(tmp_path: Path) -> None:
    """libzmq unlinks whatever is at an ipc path before binding: a second author silently took over a live one's
    socket, and a regular file was deleted.  A stale socket file (its author killed) is replaced."""
    import socket as socketlib

    from streams.errors import LocalProtocolError

    live = f"ipc://{tmp_path}/live.sock"
    first = AuthorEndpoint(live)
    try:
        with pytest.raises(LocalProtocolError, match="another endpoint is listening"):
            AuthorEndpoint(live)
    finally:
        await first.close()
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(LocalProtocolError, match="not a socket"):
        AuthorEndpoint(f"ipc://{regular}")
    assert regular.read_text() == "keep me"
    stale = tmp_path / "stale.sock"
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.bind(str(stale))  # bound, never listening, then closed: what a killed process leaves
    s.close()
    ep = AuthorEndpoint(f"ipc://{stale}")
    await ep.close()


def _kind(data: bytes) -> Kind | None:
    """The kind of a frame, or None for a message that is none (PING, PONG, CREDIT, BUNDLE_OK)."""
    with contextlib.suppress(DecodeError):
        return decode_frame(data).kind
    return None


class _HoldsFirstSubscribe(Hop):
    """An on-path hop that holds back the first SUBSCRIBE going up (``held``: the test decides when, and on which
    connection, it is delivered) and records the REFUSEs coming down (``refused``)."""

    def __init__(self, ctx: zmq.asyncio.Context, author_addr: str) -> None:
        self.held: list[bytes] = []
        self.refused: list[bytes] = []
        super().__init__(ctx, author_addr)

    def passes(self, data: bytes, up: bool) -> bool:
        if up and not self.held and _kind(data) is Kind.SUBSCRIBE:
            self.held.append(data)
            return False
        if not up and _kind(data) is Kind.REFUSE:
            self.refused.append(data)
        return True


async def test_a_tap_that_delivers_a_recorded_subscribe_first_on_its_own_connection_is_refused_there(
        tmp_path: Path) -> None:
    """SPEC 8.3 / 14.2 over real ZeroMQ: an on-path tap holds back a subscriber's SUBSCRIBE, sends it first on a
    connection of its own, then lets the original through.  Before the challenge was bound to the session of the
    connection it was issued on, the tap's copy was admitted -- GRANT and ADMIT went to the tap, and the new branch
    was routed to its connection (every frame of it, sizes and timing) -- and the subscriber's own copy was
    refused as a used challenge.  Now the tap is refused (BAD_CHALLENGE) and routed nothing; the subscriber is
    admitted by its own copy."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=20)
    author, ep = await make_author(tmp_path, cfg, [P1])
    ctx = zmq.asyncio.Context()
    relay = _HoldsFirstSubscribe(ctx, ep.addresses[0])
    held = relay.held
    tap = ctx.socket(zmq.DEALER)
    tap.setsockopt(zmq.ROUTING_ID, b"tap-conn")
    tap.setsockopt(zmq.LINGER, 0)
    tap.connect(ep.addresses[0])
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  SubscriberEndpoint(relay.address, cfg), store_options=FAST, config=CORE)
    try:
        subscribing = asyncio.create_task(sub.subscribe(timeout=30))
        end = time.monotonic() + 20
        while not held:
            assert time.monotonic() < end, "no SUBSCRIBE seen"
            await asyncio.sleep(0.005)
        await tap.send(held[0])
        kinds: list[Kind | None] = []
        while Kind.REFUSE not in kinds and Kind.ADMIT not in kinds:
            kinds.append(_kind(await asyncio.wait_for(tap.recv(), 20)))
        await relay.inject_up(held[0])
        branch = await subscribing
        assert Kind.REFUSE in kinds
        assert Kind.GRANT not in kinds and Kind.ADMIT not in kinds
        assert author.branch_of(P1.did) == branch
        assert b"tap-conn" not in ep.routes(branch)
    finally:
        tap.close(linger=0)
        await relay.close()
        await sub.close()
        await author.close()
        ctx.term()


async def test_a_subscriber_whose_author_restarted_between_its_hello_and_its_subscribe_is_admitted(
        tmp_path: Path) -> None:
    """SPEC 8.3: the challenge is bound to the session of the connection it was issued on, and an author restart
    gives every connection a new one.  A subscriber whose SUBSCRIBE reaches the restarted author (held on the way,
    here by a hop; a slow path does the same) is refused BAD_CHALLENGE there -- and must still be admitted: the
    asyncio ``subscribe`` asks again (a challenge of the new session), before its timeout, on the same store."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=20)
    author, ep = await make_author(tmp_path, cfg, [P1])
    address = ep.addresses[0]
    ctx = zmq.asyncio.Context()
    hop = _HoldsFirstSubscribe(ctx, address)
    held, refused = hop.held, hop.refused
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  SubscriberEndpoint(hop.address, cfg), store_options=FAST, config=CORE)
    try:
        subscribing = asyncio.create_task(sub.subscribe(timeout=30))
        end = time.monotonic() + 20
        while not held:
            assert time.monotonic() < end, "no SUBSCRIBE seen"
            await asyncio.sleep(0.005)
        await author.close()  # the author restarts, on the same address
        ep = AuthorEndpoint(address, cfg)
        author = await Author.open(tmp_path / "author.db", PW, ep, AllowList.of([P1.did]), store_options=FAST,
                                   config=CORE)
        author.heartbeat_ms = 100
        await hop.inject_up(held[0])  # the held SUBSCRIBE reaches the new author (the hop's DEALER reconnected)
        branch = await subscribing
        # The held SUBSCRIBE was refused as a foreign challenge (then the subscriber asked again).
        verdicts = [(decode_frame(r).head.request, RejectReason(decode_frame(r).head.reason)) for r in refused]
        assert verdicts == [(decode_frame(held[0]).hash, RejectReason.BAD_CHALLENGE)]
        assert author.branch_of(P1.did) == branch
        await author.publish(branch, b"after the restart")
        assert (await sub.next_message(timeout=10)).payload == b"after the restart"
    finally:
        await hop.close()
        await sub.close()
        await author.close()
        ctx.term()


async def test_a_churn_of_new_connections_does_not_evict_a_requester_between_its_hello_and_its_subscribe(
        tmp_path: Path) -> None:
    """SPEC 8.3: the challenge is bound to the session of the author's record of the connection it was issued on.
    The author keeps at most ``max_peers`` records, and a new connection's first message (a PING will do) makes
    one, evicting the least recently seen.  A peer with more connections than that, each sending in turn, makes a
    new record on every message: if that evicts a requester's record between its HELLO and its SUBSCRIBE, the
    SUBSCRIBE comes on a new record (a new session) and is refused BAD_CHALLENGE -- and so on each time it asks
    again, and it was never admitted (StreamsTimeoutError).  A record in a handshake is now evicted only after
    those in none; so is a member's (routed to its branch), which then gets its branch's traffic.

    The limits are scaled down as the defaults stand to each other: a batch the endpoint reads before the core
    runs (256) is far smaller than ``max_peers`` (10,000), so the requester's record is still there when the core
    MACs its session into the challenge; the churn must then cycle ``max_peers`` records within the round trip."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=30, max_peers=16, batch=8, handshake_hold_ms=500)
    author, ep = await make_author(tmp_path, cfg, [P1])
    with procs() as started:
        sub: Subscriber | None = None
        try:
            churn = party(started, "churn", "--connect", ep.addresses[0], "--conns", "64", "--seconds", "60")
            await until(churn, lambda ls: "FLOODING" in ls, 20, "the churn")
            end = time.monotonic() + 20
            while ep.stats.peers_evicted < 100:  # the churn is under way: records come and go
                assert time.monotonic() < end, "no eviction"
                await asyncio.sleep(0.01)
            sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                          SubscriberEndpoint(ep.addresses[0], cfg), store_options=FAST, config=CORE)
            evicted = ep.stats.peers_evicted
            branch = await sub.subscribe(timeout=30)
            assert ep.stats.peers_evicted > evicted  # it churned all along
            assert author.branch_of(P1.did) == branch
            # Its handshake over (and its hold with it), the member's record stays for its route: the churn goes on,
            # and the branch is still routed to it.
            admitted = time.monotonic()
            while time.monotonic() - admitted < 1.5 * cfg.handshake_hold_ms / 1000:
                await asyncio.sleep(0.05)
            evicted, end = ep.stats.peers_evicted, time.monotonic() + 20
            while ep.stats.peers_evicted < evicted + 10 * cfg.max_peers:
                assert time.monotonic() < end, "the churn stopped"
                await asyncio.sleep(0.01)
            assert len(ep.routes(branch)) == 1
            await author.publish(branch, b"under the churn")
            assert (await sub.next_message(timeout=20)).payload == b"under the churn"
            assert churn.p.poll() is None  # (still churning)
            assert len(ep.peers()) <= cfg.max_peers
        finally:
            if sub is not None:
                await sub.close()
            await author.close()


async def test_a_churn_of_hellos_does_not_evict_a_members_record_and_its_route(tmp_path: Path) -> None:
    """A member's record (routed to its branch) is evicted only after those of other peers -- so its branch's
    traffic reaches it under a churn of new connections.  But a record of a recent HELLO is held too, and a HELLO
    needs no identity: a churn whose every connection sends a HELLO makes every record held, and eviction then
    took the least recently seen of those it looked at -- the member's, idle between its heartbeats: its route was
    forgotten, and what the author published to it went nowhere (until its catch-up relearned it).  A record
    held only for its handshake now goes before a member's.

    Scaled as the defaults stand: a flooder's HELLOs over ``handshake_hold_ms`` (2000/s x 10 s, the global
    budget) are twice ``max_peers`` (10,000), so every record in the table can be one it holds; here the global
    budget lets every HELLO through."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=30, max_peers=16, batch=8, global_budget=1e9,
                         global_burst=1_000_000_000)
    author, ep = await make_author(tmp_path, cfg, [P1])
    with procs() as started:
        sub: Subscriber | None = None
        try:
            sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                          SubscriberEndpoint(ep.addresses[0], cfg), store_options=FAST, config=CORE)
            branch = await sub.subscribe(timeout=30)
            end = time.monotonic() + 20
            while len(ep.routes(branch)) != 1:
                assert time.monotonic() < end, "the member was never routed"
                await asyncio.sleep(0.01)
            churn = party(started, "churn", "--connect", ep.addresses[0], "--conns", "64", "--seconds", "60",
                          "--hello")
            await until(churn, lambda ls: "FLOODING" in ls, 20, "the churn")
            evicted, end = ep.stats.peers_evicted, time.monotonic() + 20
            while ep.stats.peers_evicted < evicted + 20 * cfg.max_peers:
                assert time.monotonic() < end, "the churn stopped"
                assert len(ep.routes(branch)) == 1, "the member's route was evicted"
                await asyncio.sleep(0.001)
            assert churn.p.poll() is None  # (still churning)
            await author.publish(branch, b"under the churn")
            assert (await sub.next_message(timeout=20)).payload == b"under the churn"
            assert len(ep.peers()) <= cfg.max_peers
        finally:
            if sub is not None:
                await sub.close()
            await author.close()


async def _serve(ep: AuthorEndpoint) -> None:
    """A driver's receive loop that takes what arrives and drops it (the endpoint's own tasks run meanwhile)."""
    while True:
        await ep.recv()


async def test_a_silent_members_record_expires_under_a_churn_of_new_records(tmp_path: Path) -> None:
    """The liveness sweep expires records from the front of the least-recently-seen order and stops at the first
    fresh one.  Eviction moved the records it passed over (a member's, a handshake's) to the back: under a churn of
    new records a silent member's -- its host frozen, its connection up -- kept going behind fresh ones and was
    never expired, its route (and queue) kept for as long as the churn went on (hours at the default
    ``max_peers``).  Eviction now leaves the order as it is.

    The old code let the sweep see the member at the front only in the instant between two evictions that put it
    there, about once in ``max_peers`` sweeps: at 500 records and 10 sweeps of a 4 s deadline it failed this test
    about 49 times in 50."""
    cfg = EndpointConfig(heartbeat_ms=200, liveness=2, max_peers=500)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    member = ctx.socket(zmq.DEALER)
    member.setsockopt(zmq.LINGER, 0)
    member.connect(ep.addresses[0])
    serving = asyncio.create_task(_serve(ep))
    branch = b"B" * 16
    with procs() as started:
        try:
            await member.send(PING)
            end = time.monotonic() + 10
            while not ep.peers():
                assert time.monotonic() < end, "no record for the member"
                await asyncio.sleep(0.005)
            (rid,) = ep.peers()
            ep.learn_routes([(branch, rid, True)])  # the core verified its member frame: routed to the branch
            assert ep.routes(branch) == [rid]
            churn = party(started, "churn", "--connect", ep.addresses[0], "--conns", "560", "--seconds", "60")
            await until(churn, lambda ls: "FLOODING" in ls, 20, "the churn")
            end = time.monotonic() + 20
            while ep.stats.peers_evicted < 2 * cfg.max_peers:  # the table is full and churning
                assert time.monotonic() < end, "no eviction"
                await member.send(PING)  # the member is alive until then
                await asyncio.sleep(0.02)
            assert rid in ep.peers() and ep.routes(branch) == [rid]
            # From here on the member is silent (dead after heartbeat_ms * liveness = 0.4 s).
            evicted, end = ep.stats.peers_evicted, time.monotonic() + 4
            while rid in ep.peers():
                assert time.monotonic() < end, (
                    f"a silent member's record outlived 10 liveness periods under the churn "
                    f"({ep.stats.peers_evicted - evicted} records evicted meanwhile)")
                await asyncio.sleep(0.01)
            assert ep.stats.peers_expired >= 1  # expired, not evicted: a member's record is held
            assert ep.routes(branch) == []
            assert churn.p.poll() is None  # (the churn went on all along)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            member.close(0)
            ctx.term()
            await ep.close()


async def test_a_reply_to_a_peer_without_a_record_teaches_no_route() -> None:
    """The core names the branch on a reply to a member (its GRANT, answers to its FETCHes): the endpoint learns
    the route.  A peer evicted (or expired) between the driver's read of its frame and that reply still gets the
    reply, but no route: one without a record was never forgotten (``_forget`` goes by the records' branches),
    took the branch's frames past the credit and queue bounds, and outlived the peer."""
    cfg = EndpointConfig(max_peers=1, heartbeat_ms=50, liveness=2, handshake_hold_ms=0)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    p1, p2 = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (p1, p2):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep.addresses[0])
    serving = asyncio.create_task(_serve(ep))
    branch, frame = b"B" * 16, b"\x95" + b"x" * 99
    try:
        await p1.send(PING)
        end = time.monotonic() + 10
        while not ep.peers():
            assert time.monotonic() < end, "no record for p1"
            await asyncio.sleep(0.005)
        (rid1,) = ep.peers()
        await p2.send(PING)  # its record evicts p1's (max_peers=1)
        while rid1 in ep.peers():
            assert time.monotonic() < end, "p1's record was not evicted"
            await asyncio.sleep(0.005)
        await ep.send(Outgoing(frame, peer=rid1, branch=branch))
        assert ep.routes(branch) == []
        while (got := await asyncio.wait_for(p1.recv(), 5))[:1] == PONG[:1]:
            pass  # (the PONGs that announced p1's session)
        assert got == frame  # the reply itself still went out
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        p1.close(0)
        p2.close(0)
        ctx.term()
        await ep.close()


async def test_a_subscriber_waiting_to_reconnect_keeps_no_handle_to_its_closed_socket() -> None:
    """Paranoid Pirate: a subscriber whose author went silent closes its socket, waits out its backoff and
    connects a fresh one.  Its synchronous shadow of the socket -- the driver's sends, credit reports, reads --
    went on pointing at the closed one all that time: libzmq's freed memory, which a socket made meanwhile may
    take (a send through the shadow then reaches that socket).  Now the shadow is a closed socket of its own
    until the new one: what the driver sends meanwhile is dropped and counted, and nothing reaches libzmq."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    cfg = EndpointConfig(heartbeat_ms=50, liveness=2, reconnect_min_ms=1500, reconnect_max_ms=3000)
    ep = SubscriberEndpoint(f"tcp://127.0.0.1:{port}", cfg)
    try:
        first = ep._sync.underlying
        await ep.send(Outgoing(b"\x95before", None, None))  # (starts its tasks; the router never answers)
        rid, data = await asyncio.wait_for(router.recv_multipart(), 5)
        while data != b"\x95before":
            rid, data = await asyncio.wait_for(router.recv_multipart(), 5)
        end = time.monotonic() + 10
        while ep._sync.underlying == first:  # until the reconnect closed the socket
            assert time.monotonic() < end, "no reconnect, or the closed socket's pointer kept through it"
            await asyncio.sleep(0.005)
        assert ep.stats.reconnects == 1
        # During the backoff (1.5 s): a closed socket of its own, no pointer into the one libzmq freed.
        assert ep._sync.closed and ep._sync.underlying == 0
        dropped = ep.stats.send_dropped
        await ep.send(Outgoing(b"\x95during the backoff", None, None))
        assert ep.stats.send_dropped == dropped + 1
        # The fresh socket: a new connection (a new routing id at the router), and what was sent during the backoff
        # never arrives.
        while True:
            new_rid, data = await asyncio.wait_for(router.recv_multipart(), 10)
            assert data != b"\x95during the backoff"
            if new_rid != rid:
                break
        assert not ep._sync.closed  # (the new socket's shadow: libzmq may well give it the old one's address)
    finally:
        await ep.close()
        router.close(0)
        ctx.term()
