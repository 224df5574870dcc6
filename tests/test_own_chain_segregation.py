"""The author serves a member its own chain back (SPEC 8.9, 13.5: a member restored from an older copy fetches its
lost messages): that serving path, attacked (THREATS 1, segregation).  Only the member itself, on an open branch of
its own, signing for its own chain, on its own connection where FETCHes are bound, is served -- never another
member, a removed or revoked one, a group's member (the author keeps no copy of members' chains there), or a
replayer.  Cores wired together without sockets (an attacker sees, replays and relays every frame)."""

from __future__ import annotations

from streams.errors import RejectReason
from streams.events import FetchRequested, Rejected
from streams.wire import Fetch, Permission, encode_frame

from .corenet import Net, ident


def _ask(net: Net, fetch: Fetch, signer: int, peer: str, session: bytes = b"") -> tuple[list[FetchRequested],
                                                                                        list[RejectReason]]:
    net.now += 10_000
    events = net.author.receive(encode_frame(fetch, session, ident(signer).sign).raw, net.now, peer)
    net.author.take_changes()
    net.author.data_to_send()
    return ([e for e in events if isinstance(e, FetchRequested)],
            [e.reason for e in events if isinstance(e, Rejected)])


def _own_branch(net: Net, name: str) -> bytes:
    b = net.author.branch_of(net.subs[name].identity.did)
    assert b is not None
    return b


def test_only_the_member_itself_is_served_its_own_chain() -> None:
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    b0 = _own_branch(net, "s0")
    for i in range(3):
        net.subs["s0"].publish(b0, b"mine %d" % i, net.now)
        net.pump_sub("s0")
    ch = net.author.channel
    served, rejected = _ask(net, Fetch(ch, b0, 1, 1, 3, 1), 10, "s0")
    assert [(e.publisher, e.from_seq, e.to_seq) for e in served] == [(1, 1, 3)] and not rejected  # (the member)
    # Another subscriber, naming s0 as the requester (it cannot sign for it), or itself (no member of b0).
    assert _ask(net, Fetch(ch, b0, 1, 1, 3, 1), 11, "s1") == ([], [RejectReason.BAD_SIGNATURE])
    assert _ask(net, Fetch(ch, b0, 1, 1, 3, 2), 11, "s1") == ([], [RejectReason.NOT_MEMBER])
    # Where FETCHes are bound (SPEC 8.9): s0's, replayed on another connection, is refused before anything else.
    sessions = {"s0": b"\x01" * 8, "relay": b"\x02" * 8}
    net.author.session_of = sessions.get
    assert _ask(net, Fetch(ch, b0, 1, 1, 3, 1), 10, "relay", sessions["s0"]) == ([], [RejectReason.REPLAY])
    assert len(_ask(net, Fetch(ch, b0, 1, 1, 3, 1), 10, "s0", sessions["s0"])[0]) == 1
    net.author.session_of = None
    # Its write permission taken away: its own chain, which it wrote, is still its own (and nobody else's).
    net.author.set_permission(b0, Permission.READ)
    net.pump_author()
    assert len(_ask(net, Fetch(ch, b0, 1, 1, 3, 1), 10, "s0")[0]) == 1
    # Revoked: nothing more is served.
    net.author.revoke(b0)
    net.pump_author()
    assert _ask(net, Fetch(ch, b0, 1, 1, 3, 1), 10, "s0")[0] == []


def test_a_group_member_is_served_no_members_chain_its_own_neither_before_nor_after_its_removal() -> None:
    """(Groups are author-write only: the author keeps no copy of a member's chain there to serve.)"""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public, ident(11).public], Permission.AUDIT)
    net.pump_author()
    me0 = net.subs["s0"].branch_info(g)[0]
    me1 = net.subs["s1"].branch_info(g)[0]
    ch = net.author.channel
    assert _ask(net, Fetch(ch, g, me0, 1, 2, me0), 10, "s0")[0] == []
    assert _ask(net, Fetch(ch, g, me0, 1, 2, me1), 11, "s1")[0] == []
    net.author.remove_member(g, ident(10).did)
    net.pump_author()
    assert _ask(net, Fetch(ch, g, me0, 1, 2, me0), 10, "s0")[0] == []
