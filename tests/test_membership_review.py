"""Segregation and membership under attack (SPEC 9.5, 11, 14.2): what a member removed from a group, revoked,
downgraded or gone keeps receiving or can still make the author accept.  Cores wired together without sockets (an
attacker sees, replays and relays every frame)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams._state import BranchState
from streams.core import Outgoing
from streams.errors import RejectReason
from streams.events import BranchClosed, FetchRequested, GapDetected, MessageReceived, Rejected, Subscribed
from streams.wire import SESSION_LEN, Fetch, Kind, decode_frame, encode_frame

from .corenet import Net, ident


class _Routes:
    """What a routing transport learns from the author core (SPEC 14.2, as ``brokerless.AuthorEndpoint`` does): a
    reply naming a peer and a branch routes the branch to that peer; ``take_routes`` hints add and forget."""

    def __init__(self) -> None:
        self.routes: dict[bytes, set[object]] = {}

    def sent(self, outs: list[Outgoing]) -> list[Outgoing]:
        for o in outs:
            if o.peer is not None and o.branch is not None:
                self.routes.setdefault(o.branch, set()).add(o.peer)
        return outs

    def hints(self, hints: list[tuple[bytes, object, bool]]) -> None:
        for branch, peer, keep in hints:
            if keep:
                self.routes.setdefault(branch, set()).add(peer)
            elif peer is None:
                self.routes.pop(branch, None)
            else:
                self.routes.get(branch, set()).discard(peer)


def _grant_sync(net: Net, name: str, branch: bytes, peer: str, routes: _Routes) -> list[Outgoing]:
    """``name`` asks for the grants of ``branch`` (its own: member 1) on connection ``peer``; the author's
    answers."""
    s = net.subs[name]
    net.now += 1000
    fetch = Fetch(net.author.channel, branch, 0, 0, 0, 1)
    net.author.receive(encode_frame(fetch, b"", s.identity.sign).raw, net.now, peer)
    net.author.take_changes()
    routes.hints(net.author.take_routes())
    return routes.sent(net.author.data_to_send())


def test_a_connection_routed_a_group_by_an_own_branch_sync_is_forgotten_when_the_member_is_removed() -> None:
    """A member's grant sync on its own branch is answered, on that connection, with the first GRANT of each of its
    groups, naming the group and the peer: a routing transport takes that as a route of the group to the
    connection (SPEC 14.2).  The author did not record it among the member's peers for the group, so removing the
    member did not forget it: the connection went on getting every frame of the group (sizes, timing, heads of a
    group it no longer belongs to), on as many connections as it asked from (the cap of 4 did not apply either)."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    own = net.author.branch_of(ident(10).did)
    assert own is not None
    routes = _Routes()
    routes.hints(net.author.take_routes())
    conns = [f"s0-conn{i}" for i in range(6)]
    for peer in conns:  # it never FETCHes the group on these: only its own branch's sync
        answer = _grant_sync(net, "s0", own, peer, routes)
        assert [decode_frame(o.data).kind for o in answer if o.branch == g and o.peer == peer] == [Kind.GRANT]
    assert set(conns) & routes.routes[g]  # routed the group
    net.author.remove_member(g, ident(10).did)
    net.author.take_changes()
    routes.sent(net.author.data_to_send())
    routes.hints(net.author.take_routes())
    assert not set(conns) & routes.routes.get(g, set())


def test_a_message_lost_just_before_the_members_removal_is_fetched_or_reported_as_a_gap() -> None:
    """A member of a group is entitled to what was published there before its removal (THREATS 4: every gap is
    detected).  Here message 2 is lost on its way to s0, then s0 is removed: s0 closes the group at its cursor (1),
    its catch-up asks for nothing there, and nothing says message 2 existed."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    s0 = net.subs["s0"]
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    net.author.publish(g, b"one", net.now)
    net.pump_author()
    net.author.publish(g, b"two", net.now)
    net.author.take_changes()
    net.author.data_to_send()  # lost on the way (to s0)
    start = len(net.events["s0"])
    net.author.remove_member(g, ident(10).did)
    net.pump_author()
    assert [(e.branch, e.by) for e in net.events["s0"][start:] if isinstance(e, BranchClosed)] == [(g, "removed")]
    for _ in range(4):  # its retries, a reconnect's catch-up, the author's HEAD refreshes
        net.now += 5_000
        s0.handle_timer(net.now)
        s0.catch_up(net.now)
        net.pump_sub("s0")
        net.author.head_notices(force=True)
        net.pump_author()
    got = [e.payload for e in net.events["s0"][start:] if isinstance(e, MessageReceived) and e.branch == g]
    gaps = [e for e in net.events["s0"][start:] if isinstance(e, GapDetected) and e.branch == g]
    assert got == [b"two"] or [(e.expected_seq, e.received_seq) for e in gaps] == [(2, 3)]


def _removed_after_a_loss() -> tuple[Net, bytes, dict[int, bytes]]:
    """s0 and s1 in a group; message 2 is lost on its way to s0, then s0 is removed, then message 3 is published
    (s1 alone).  (net, the group, the author's frames by seq, as its log holds them)."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    frames: dict[int, bytes] = {}
    for seq, payload in ((1, b"one"), (2, b"two")):
        net.author.publish(g, payload, net.now)
        net.author.take_changes()
        for o in net.author.data_to_send():
            if decode_frame(o.data).kind is Kind.PACKET:
                frames[seq] = o.data
            if seq == 1:
                net.deliver_author_out([o])
            else:
                net.to_sub("s1", o.data)  # lost on the way to s0
    net.author.remove_member(g, ident(10).did)
    net.pump_author()
    net.author.publish(g, b"three, after s0's removal", net.now)
    net.author.take_changes()
    frames[3] = next(o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.PACKET)
    return net, g, frames


def _served(net: Net, fetch: bytes, peer: str) -> tuple[list[tuple[int, int]], list[Kind]]:
    """The author's answer to ``fetch`` on ``peer``: the ranges it asks its driver to serve from its log, and the
    kinds of the frames it sends itself."""
    events = net.author.receive(fetch, net.now, peer)
    net.author.take_changes()
    sent = [decode_frame(o.data).kind for o in net.author.data_to_send()]
    assert not [e for e in events if isinstance(e, Rejected)]
    return [(e.from_seq, e.to_seq) for e in events if isinstance(e, FetchRequested)], sent


def test_a_removed_member_fetches_what_it_lost_before_its_removal_and_is_served_nothing_published_after() -> None:
    """The re-key that removes s0 names, to s0 alone, the author chain's head then (2): s0 reports the gap and asks
    for message 2, which the author serves from its log, and s0 accepts on its closed group.  A FETCH of s0's
    reaching beyond its removal -- its own, or one recorded while it was a member and replayed -- is served up to
    message 2 at most, with no HEAD (which would name the later head); message 3, relayed to s0, is refused."""
    net, g, frames = _removed_after_a_loss()
    s0 = net.subs["s0"]
    events = net.events["s0"]
    assert [(e.by, e.last_seq) for e in events if isinstance(e, BranchClosed) and e.branch == g] == [("removed", 2)]
    assert [(e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)] == [(2, 3)]
    asked = [decode_frame(d).head for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.FETCH
             and decode_frame(d).head.branch == g and decode_frame(d).head.from_seq]
    assert [(f.from_seq, f.to_seq) for f in asked] == [(2, 2)]
    assert [(e.from_seq, e.to_seq) for e in net.events["author"] if isinstance(e, FetchRequested)
            and e.branch == g] == [(2, 2)]
    got = net.to_sub("s0", frames[2])  # the driver's part: the logged frame
    assert [m.payload for m in got if isinstance(m, MessageReceived)] == [b"two"]
    beyond = net.to_sub("s0", frames[3])
    assert [e.reason for e in beyond if isinstance(e, Rejected)] == [RejectReason.CLOSED_BRANCH]
    assert s0.branch_info(g)[2] is BranchState.CLOSED
    net.now += 10_000
    for lo, hi in ((1, 1000), (3, 1000), (2, 2)):  # reaching beyond its removal, and a copy of its own
        fetch = encode_frame(Fetch(net.author.channel, g, 0, lo, hi, 1), b"", ident(10).sign).raw
        ranges, kinds = _served(net, fetch, f"s0-{lo}")
        assert ranges == ([(lo, 2)] if lo <= 2 else [])
        assert Kind.HEAD not in kinds and Kind.PACKET not in kinds


def test_a_fetch_recorded_before_the_members_removal_and_replayed_after_it_is_served_nothing_later() -> None:
    """A catch-up FETCH s0 signed while a member (from seq 1, a whole window), recorded and replayed after s0's
    removal, on its connection: served through the head at the removal, never message 3."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    recorded = encode_frame(Fetch(net.author.channel, g, 0, 1, 1024, 1), b"", ident(10).sign).raw
    assert _served(net, recorded, "s0")[0] == []  # (the chain is empty: nothing yet)
    net.author.publish(g, b"one", net.now)
    net.pump_author()
    net.author.remove_member(g, ident(10).did)
    net.pump_author()
    for i in range(3):
        net.author.publish(g, b"after %d" % i, net.now)
    net.pump_author()
    net.now += 10_000
    ranges, kinds = _served(net, recorded, "s0")
    assert ranges == [(1, 1)] and Kind.HEAD not in kinds


def test_a_forged_or_relayed_removal_neither_closes_a_group_nor_fakes_a_gap() -> None:
    """The head a removal names is believed only from the author's signed re-key that extends the grant held:
    one forged with another key (naming a far head, to fake a gap) is BAD_SIGNATURE; s1's genuine removal,
    relayed to s0, has no entry of s0's that is a removal and changes nothing there; s0's own removal from
    another group, relayed into this one, does not verify under its branch."""
    import msgpack

    from streams import _crypto
    from streams.core import _hint, _hint_key  # (the SPEC 8.5 hint of s0's entry)
    from streams.identity import PublicIdentity
    from streams.wire import Grant, GrantEntry, GrantRemoval, encode_grant_body, encode_grant_removal, encode_head

    net = Net.make(n_subs=3)
    for name in ("s0", "s1", "s2"):
        net.subscribe(name)
    s0 = net.subs["s0"]
    g = net.author.open_group([ident(10).public, ident(11).public, ident(12).public])
    g2 = net.author.open_group([ident(10).public, ident(11).public, ident(12).public])
    net.pump_author()
    first = next(decode_frame(d) for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.GRANT
                 and decode_frame(d).head.branch == g)
    kx = PublicIdentity.from_sign_public(ident(10).public.sign_public).kx_public
    hint = _hint(_hint_key(ident(10), net.author.identity.kx_public, net.author.identity.kx_public, kx),
                 net.author.channel, g, 1)
    entry = GrantEntry(hint, _crypto.seal(kx, encode_grant_removal(GrantRemoval(1, 50, bytes(32)))))
    forged = encode_frame(Grant(net.author.channel, g, 1, first.hash, first.head.mode),
                          encode_grant_body(bytes(16), [entry]), ident(99).sign).raw
    start = len(net.events["s0"])
    assert [e.reason for e in net.to_sub("s0", forged) if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]
    net.author.remove_member(g, ident(11).did)  # s1's removal, relayed to s0 (the group's routes broadcast here)
    net.pump_author()
    net.author.remove_member(g2, ident(10).did)
    net.author.take_changes()
    mine = next(o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.GRANT)
    m = decode_frame(mine)
    for prev in (m.head.prev, net.subs["s0"]._branches[g].grant_hash):  # as it is, and naming our grant
        head = encode_head(Grant(m.head.channel, g, 2, prev, m.head.mode))
        moved = msgpack.packb([1, int(Kind.GRANT), head, m.body, m.sig], use_bin_type=True)
        ev = net.to_sub("s0", moved)
        assert not [e for e in ev if isinstance(e, BranchClosed)]
    assert s0.branch_info(g)[2] is BranchState.OPEN and s0.branch_info(g)[0] == 1
    assert not [e for e in net.events["s0"][start:] if isinstance(e, GapDetected | BranchClosed)]


async def test_over_zeromq_a_removed_member_routed_by_its_own_branch_sync_gets_no_more_group_frames(
        tmp_path: Path) -> None:
    """The same over the real endpoints: P1 opens a connection of its own, asks only for its own branch's grants
    there (a bound FETCH: the author answers with the first GRANT of its group, which routes the group to that
    connection), and never FETCHes the group on it.  Removed from the group, that connection got every packet the
    author published to the group afterwards."""
    import zmq
    import zmq.asyncio

    from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
    from brokerless.endpoints import PING, PONG
    from streams.api import Author, StoreOptions, Subscriber
    from streams.core import CoreConfig
    from streams.identity import Identity
    from streams.policy import AllowList

    fast = StoreOptions(durable=False, opslimit=1, memlimit=8192)
    cfg = EndpointConfig(heartbeat_ms=200, liveness=30)
    author_id, p1, p2 = (Identity.from_seed(bytes([n]) * 32) for n in (0x01, 0x0A, 0x0B))
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", author_id, "groups", "pw", ep, AllowList.of([p1.did, p2.did]),
                                 config=CoreConfig(fetch_retry_ms=200), store_options=fast)
    subs: list[Subscriber] = []
    ctx = zmq.asyncio.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    try:
        for who in (p1, p2):
            s = await Subscriber.create(tmp_path / f"{who.did[-6:]}.db", who, author_id.did, author.channel, "pw",
                                        SubscriberEndpoint(ep.addresses[0], cfg), store_options=fast)
            subs.append(s)
            await s.subscribe(timeout=10)
        own1 = author.branch_of(p1.did)
        assert own1 is not None
        group = await author.open_group([p1.did, p2.did])
        d.connect(ep.addresses[0])
        await d.send(PING)
        pong = await asyncio.wait_for(d.recv(), 10)
        assert pong[:1] == PONG
        await d.send(encode_frame(Fetch(author.channel, own1, 0, 0, 0, 1), pong[9:17], p1.sign).raw)
        while True:  # the answer: the group's first grant, routing the group to this connection
            data = await asyncio.wait_for(d.recv(), 10)
            f = decode_frame(data) if data[:1] == b"\x95" else None
            if f is not None and f.kind is Kind.GRANT and f.head.branch == group:
                break
        await author.remove_member(group, p1.did)
        for i in range(3):
            await author.publish(group, b"P2 only %d" % i)
        got = []
        while len(got) < 3:
            m = await subs[1].next_message(timeout=15)
            if m.branch == group:
                got.append(m.payload)
        await asyncio.sleep(0.3)  # frames sent to the connection at the same time would be in by now
        late = []
        while await d.poll(0):
            data = await d.recv()
            f = decode_frame(data) if data[:1] == b"\x95" else None
            if f is not None and f.kind is Kind.PACKET and f.head.branch == group:
                late.append(f.head.seq)
        assert not late, late
    finally:
        d.close(linger=0)
        ctx.term()
        for s in subs:
            await s.close()
        await author.close()


def _handshake_to_subscribe(net: Net, name: str, on: str) -> Outgoing:
    """``name`` says HELLO on connection ``on`` and answers the CHALLENGE: its SUBSCRIBE, not yet delivered."""
    s = net.subs[name]
    s.hello()
    s.take_changes()
    (hello,) = s.data_to_send()
    net.author.receive(hello.data, net.now, on)
    net.author.take_changes()
    for o in net.author.data_to_send():
        s.receive(o.data, net.now)
    s.take_changes()
    (subscribe,) = s.data_to_send()
    assert decode_frame(subscribe.data).kind is Kind.SUBSCRIBE
    return subscribe


def test_a_subscribe_recorded_by_a_tap_and_delivered_first_on_its_own_connection_routes_no_branch_there() -> None:
    """A tap that sees s0's SUBSCRIBE on the wire (sealed, but its bytes are visible with transport security off)
    and delivers it first, on a connection of its own, got s0's new branch routed to that connection: every frame
    of s0's branch, sizes and timing (and a connection that never reads holds up the author's drain(branch)); s0's
    own copy was then refused as a used challenge.  The challenge is bound to the session of the connection it was
    issued on (SPEC 8.3): the tap's copy is refused there as a foreign challenge, nothing is routed to it, and s0's
    own copy admits s0 at once."""
    net = Net.make(n_subs=1)
    sessions = {"s0": b"\x01" * SESSION_LEN, "tap": b"\x02" * SESSION_LEN}
    net.author.session_of = lambda peer: sessions.get(peer, b"")  # type: ignore[method-assign]
    subscribe = _handshake_to_subscribe(net, "s0", "s0")
    routes = _Routes()
    refused = net.author.receive(subscribe.data, net.now, "tap")  # the tap's copy first
    net.author.take_changes()
    sent = routes.sent(net.author.data_to_send())
    routes.hints(net.author.take_routes())
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [RejectReason.BAD_CHALLENGE]
    assert net.author.branch_of(ident(10).did) is None
    assert [decode_frame(o.data).kind for o in sent] == [Kind.REFUSE]
    assert all(o.peer == "tap" and o.branch is None for o in sent)
    admitted = net.author.receive(subscribe.data, net.now, "s0")  # s0's own copy: admitted
    net.author.take_changes()
    routes.sent(net.author.data_to_send())
    routes.hints(net.author.take_routes())
    assert not [e for e in admitted if isinstance(e, Rejected)]
    branch = net.author.branch_of(ident(10).did)
    assert branch is not None
    assert routes.routes[branch] == {"s0"}


def test_a_subscribe_on_a_new_session_of_its_own_connection_is_refused_and_the_next_attempt_admits() -> None:
    """The binding is to the session, not the routing id alone: a connection whose record was replaced (a routing
    id claimed again after its connection closed gets a new session) cannot use a challenge of the old one.  The
    honest requester's next HELLO gets a challenge of the new session and is admitted (the asyncio ``subscribe``
    retries a BAD_CHALLENGE refusal)."""
    net = Net.make(n_subs=1)
    sessions = {"s0": b"\x01" * SESSION_LEN}
    net.author.session_of = lambda peer: sessions.get(peer, b"")  # type: ignore[method-assign]
    subscribe = _handshake_to_subscribe(net, "s0", "s0")
    sessions["s0"] = b"\x03" * SESSION_LEN
    refused = net.author.receive(subscribe.data, net.now, "s0")
    net.author.take_changes()
    net.author.data_to_send()
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [RejectReason.BAD_CHALLENGE]
    assert [e.branch for e in net.subscribe("s0") if isinstance(e, Subscribed)] == [net.author.branch_of(
        ident(10).did)]


def test_a_challenge_issued_on_a_connection_the_transport_no_longer_knows_is_not_bound_to_nothing() -> None:
    """SPEC 8.3: the challenge is MACed with the session of the connection the HELLO came on.  Where the transport
    had no record of that connection any more when the core ran (a flood of new connections evicted it between
    the read and the core's turn: ``session_of`` says ``b""``), the challenge was bound to no session at all --
    and a tap's copy of the SUBSCRIBE, delivered first on a connection of its own that the transport had no
    record of either, was admitted there (GRANT, ADMIT and the new branch's route to the tap).  Now such a
    challenge is bound to the connection's id: the tap's copy is refused BAD_CHALLENGE, the requester's own
    admits it."""
    net = Net.make(n_subs=1)
    sessions: dict[object, bytes] = {}  # the transport has sessions, but no record of either connection now
    net.author.session_of = lambda peer: sessions.get(peer, b"")  # type: ignore[method-assign]
    subscribe = _handshake_to_subscribe(net, "s0", "s0")
    refused = net.author.receive(subscribe.data, net.now, "tap")
    net.author.take_changes()
    sent = net.author.data_to_send()
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [RejectReason.BAD_CHALLENGE]
    assert net.author.branch_of(ident(10).did) is None
    assert [decode_frame(o.data).kind for o in sent] == [Kind.REFUSE]
    admitted = net.author.receive(subscribe.data, net.now, "s0")
    net.author.take_changes()
    net.author.data_to_send()
    assert not [e for e in admitted if isinstance(e, Rejected)]
    assert net.author.branch_of(ident(10).did) is not None


async def test_a_member_that_lost_a_message_before_its_removal_gets_it_from_the_authors_log(tmp_path: Path) -> None:
    """The same through the asyncio parties, real stores: P1's link drops the group's message 2, then P1 is
    removed.  It used to close the group at message 1, message 2 gone without a word; now the removal names the
    head (2), P1 says so (``GapDetected``), fetches it from the author's log and reads it -- and nothing published
    after its removal (the frame reaches it on the hub's broadcast, and is refused there)."""
    from streams.api import Author, MemoryHub, StoreOptions, Subscriber
    from streams.identity import Identity
    from streams.policy import AllowList

    class LossyHub(MemoryHub):
        """Drops what the author sends to the endpoints named in ``lossy``."""

        lossy: set[str] = set()

        def inject(self, to: str, data: bytes, peer: str = "attacker") -> None:
            if to not in self.lossy:
                super().inject(to, data, peer)

    fast = StoreOptions(durable=False, opslimit=1, memlimit=8192)
    author_id, p1, p2 = (Identity.from_seed(bytes([n]) * 32) for n in (0x01, 0x0A, 0x0B))
    hub = LossyHub()
    author = await Author.create(tmp_path / "a.db", author_id, "groups", "pw", hub.author_endpoint(),
                                 AllowList.of([p1.did, p2.did]), store_options=fast)
    subs: list[Subscriber] = []
    try:
        for who in (p1, p2):
            s = await Subscriber.create(tmp_path / f"{who.did[-6:]}.db", who, author_id.did, author.channel, "pw",
                                        hub.subscriber_endpoint(who.did[-6:]), store_options=fast)
            subs.append(s)
            await s.subscribe(timeout=10)
        s1, s2 = subs
        group = await author.open_group([p1.did, p2.did])

        async def payloads(s: Subscriber, n: int) -> list[bytes]:
            got = []
            while len(got) < n:
                m = await s.next_message(timeout=15)
                if m.branch == group:
                    got.append(m.payload)
            return got

        await author.publish(group, b"one")
        assert await payloads(s1, 1) == [b"one"]
        hub.lossy = {p1.did[-6:]}
        await author.publish(group, b"two")
        assert await payloads(s2, 2) == [b"one", b"two"]
        hub.lossy = set()
        await author.remove_member(group, p1.did)
        assert await payloads(s1, 1) == [b"two"]
        await author.publish(group, b"three, for P2 alone")
        assert await payloads(s2, 1) == [b"three, for P2 alone"]
        events: list[object] = []
        for _ in range(1500):  # until P1 handled the broadcast of message 3
            events += s1.pending_events()
            if [e for e in events if isinstance(e, Rejected) and e.branch == group and e.seq == 3]:
                break
            await asyncio.sleep(0.01)
        assert [(e.reason, e.seq) for e in events if isinstance(e, Rejected) and e.branch == group] == [
            (RejectReason.CLOSED_BRANCH, 3)]
        assert [(e.by, e.last_seq) for e in events if isinstance(e, BranchClosed)] == [("removed", 2)]
        assert [(e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)] == [(2, 3)]
    finally:
        for s in subs:
            await s.close()
        await author.close()


def test_a_challenge_bound_to_a_connection_the_transport_no_longer_knows_names_that_connection_alone() -> None:
    """SPEC 8.3: where the transport has no record of a connection any more, its challenge is bound to the
    connection's routing id (``0xff || id``, padded past 8 bytes).  The padding made two ids one: a 7-byte id
    and the same id with ``0xff`` appended (ZeroMQ lets a peer choose its own routing id, up to 255 bytes).  A
    tap that saw the SUBSCRIBE of a requester on such an id, on a connection of its own with the longer id that
    the transport had no record of either, was admitted in the requester's place.  Now its copy is refused."""
    net = Net.make(n_subs=1)
    net.author.session_of = lambda peer: b""  # type: ignore[method-assign]  # (no record of either connection)
    s = net.subs["s0"]
    requester, tap = b"ABCDEFG", b"ABCDEFG\xff"
    s.hello()
    s.take_changes()
    (hello,) = s.data_to_send()
    net.author.receive(hello.data, net.now, requester)
    net.author.take_changes()
    for o in net.author.data_to_send():
        s.receive(o.data, net.now)
    s.take_changes()
    (subscribe,) = s.data_to_send()
    refused = net.author.receive(subscribe.data, net.now, tap)
    net.author.take_changes()
    net.author.data_to_send()
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [RejectReason.BAD_CHALLENGE]
    assert net.author.branch_of(ident(10).did) is None
    admitted = net.author.receive(subscribe.data, net.now, requester)
    assert not [e for e in admitted if isinstance(e, Rejected)]
    assert net.author.branch_of(ident(10).did) is not None
