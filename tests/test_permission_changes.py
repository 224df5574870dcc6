"""Permission changes on a member's own branch (SPEC 11): keys only for what a member may do, a write right that
lapses and comes back, a read right that ends with messages in flight, and the author's view of members that leave
a group.  Cores wired together without sockets (an attacker sees and replays every frame), real SQLite stores where
the log matters."""

from __future__ import annotations

from pathlib import Path

from streams import _crypto
from streams._state import BranchState
from streams.core import ChainRecord, Changes, LogRecord
from streams.errors import RejectReason
from streams.events import (
    BranchClosed,
    GapDetected,
    Granted,
    MemberLeft,
    MessageReceived,
    Rejected,
)
from streams.identity import PublicIdentity
from streams.store import Store
from streams.wire import Packet, Permission, decode_frame, encode_frame, encode_head

from .corenet import Net, ident


def _own_branch(net: Net) -> bytes:
    b = net.author.branch_of(ident(10).did)
    assert b is not None
    return b


def _lapsed_and_back(net: Net) -> tuple[bytes, bytes, bytes]:
    """s0 publishes 1; it signs 2 while the author takes its write away (2 is refused); write is given back.
    Returns (branch, the refused frame 2, the frame 2 it signs once write is back)."""
    b0 = _own_branch(net)
    s = net.subs["s0"]
    s.publish(b0, b"one", net.now)
    net.pump_sub("s0")
    s.publish(b0, b"two", net.now)
    s.take_changes()
    (late,) = [o.data for o in s.data_to_send()]
    net.author.set_permission(b0, Permission.READ)  # epoch 1
    net.pump_author()
    refused = net.author.receive(late, net.now, "s0")
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [RejectReason.NOT_PERMITTED]
    net.author.set_permission(b0, Permission.READ_WRITE)  # epoch 2
    net.pump_author()
    assert s.publish(b0, b"two again", net.now) == 2  # from the head the re-key named (1)
    s.take_changes()
    (again,) = [o.data for o in s.data_to_send()]
    return b0, late, again


def test_write_taken_and_given_back_makes_no_fork_of_an_honest_members_chain() -> None:
    """Its refused message 2 and the message 2 it signs after getting write back are not evidence of a fork, in
    whichever order a relay delivers them; the refused one is never accepted."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    _, late, again = _lapsed_and_back(net)
    # The refused one, replayed at a position that holds the honest one: not evidence.  (The other way round -- an
    # accepted pre-lapse message and a post-lapse one at its position -- is a real fork: the later run of the
    # member's right starts beyond the head the lapse named.)
    assert net.author.fork_evidence(late, again) is None
    # The refused frame first: still refused (it was signed under epoch 0, before the lapse) ...
    ev = net.author.receive(late, net.now, "relay")
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.NOT_PERMITTED]
    # ... and the honest one is accepted, then the refused one is a replay, which the driver's fork check (the
    # frame against the logged one) finds no evidence in.
    ev = net.to_author(again, "s0")
    assert [(e.seq, e.payload) for e in ev if isinstance(e, MessageReceived)] == [(2, b"two again")]
    [rej] = [e for e in net.author.receive(late, net.now, "relay") if isinstance(e, Rejected)]
    assert rej.reason is RejectReason.REPLAY and rej.frame == late
    assert net.author.fork_evidence(rej.frame, again) is None


def test_a_member_given_write_back_replaces_in_its_log_what_was_refused(tmp_path: Path) -> None:
    """The re-key that gives write back restarts the member's chain at the author's head: the change it commits
    drops its log beyond that head, so its store serves the message it signs now, not the refused one (which the
    author would refuse again on a gap fetch, and the chain would never link)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = _own_branch(net)
    s = net.subs["s0"]
    store = Store.create(tmp_path / "s0.db", ident(10), "pw", role="subscriber", channel=net.author.channel,
                         author_did=ident(1).did, durable=False, opslimit=1, memlimit=8192)
    s.publish(b0, b"one", net.now)
    s.publish(b0, b"two", net.now)
    store.commit(s.take_changes())
    for o in s.data_to_send()[:1]:  # 1 reaches the author; 2 is still on its way
        net.to_author(o.data, "s0")
    net.author.set_permission(b0, Permission.READ)
    net.pump_author()
    net.author.set_permission(b0, Permission.READ_WRITE)
    net.author.take_changes()
    regrant = net.author.data_to_send()
    for o in regrant:
        s.receive(o.data, net.now)
    changes = s.take_changes()
    assert changes.log_cut == [(b0, 1, 1)]
    s.publish(b0, b"two again", net.now)
    more = s.take_changes()
    changes.log += more.log
    changes.chains += more.chains
    store.commit(changes)
    entry = store.log_entry(b0, 1, 2)
    assert entry is not None and decode_frame(entry[1]).head.epoch == 2
    assert store.log_entry(b0, 1, 1) is not None  # what the author holds stays
    store.close()


def test_log_cut_drops_only_that_chain_beyond_the_seq(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "a.db", ident(1), "pw", role="author", channel=b"c" * 32, author_did=ident(1).did,
                         durable=False, opslimit=1, memlimit=8192)
    br = b"b" * 16
    log = [LogRecord(br, p, seq, bytes([p, seq]) * 16, b"\x95frame %d %d" % (p, seq)) for p in (0, 1)
           for seq in (1, 2, 3)]
    store.commit(Changes(chains=[ChainRecord(br, 1, 4, bytes(32), 3)], log=log))
    store.commit(Changes(log_cut=[(br, 1, 1)], log=[LogRecord(br, 1, 2, b"\x07" * 32, b"\x95new 2")]))
    assert [store.log_hash(br, 1, s) for s in (1, 2, 3)] == [b"\x01\x01" * 16, b"\x07" * 32, None]
    assert [store.log_hash(br, 0, s) for s in (1, 2, 3)] == [bytes([0, s]) * 16 for s in (1, 2, 3)]
    store.close()


def test_a_member_restarted_while_it_may_not_write_resumes_at_the_grants_head() -> None:
    """A store keeps the chain row of a member whose write was taken away; loaded again, that cursor is not
    restored (the member may not write), and the re-key that gives write back starts it at the author's head --
    not at what the member had signed beyond it."""
    from streams.core import SubscriberCore

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = _own_branch(net)
    s = net.subs["s0"]
    s.publish(b0, b"one", net.now)
    net.pump_sub("s0")
    s.publish(b0, b"two (refused)", net.now)
    s.take_changes()
    s.data_to_send()  # never arrives
    stale = ChainRecord(b0, 1, *s.chain_head(b0, 1))
    net.author.set_permission(b0, Permission.READ)
    net.pump_author()
    record = s._record(s._branches[b0])
    again = SubscriberCore(ident(10), ident(1).did, net.author.channel)
    again.load_subscriber(None, [record], [stale])
    assert 1 not in again._branches[b0].chains
    net.subs["s0"] = again
    net.author.set_permission(b0, Permission.READ_WRITE)
    net.pump_author()
    assert again.publish(b0, b"two", net.now) == 2
    ev = net.to_author(again.data_to_send()[-1].data, "s0")
    assert [(e.seq, e.payload) for e in ev if isinstance(e, MessageReceived)] == [(2, b"two")]


def test_a_member_that_may_not_write_gets_no_key_and_cannot_backdate() -> None:
    """A read-only member gets no key for its own chain (SPEC 11's table).  And a frame it signs under an epoch
    before its write lapsed -- it still holds that key -- is refused once write is given back: made outside its
    current right."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = _own_branch(net)
    s = net.subs["s0"]
    net.author.set_permission(b0, Permission.READ)  # epoch 1: write taken
    net.pump_author()
    assert s.branch_info(b0)[1] is Permission.READ
    assert (1, 1) not in s._branches[b0].keys
    old_key = s._branches[b0].keys[(0, 1)]
    net.author.set_permission(b0, Permission.READ_WRITE)  # epoch 2
    net.pump_author()
    seq, head, _ = net.author.chain_head(b0, 1)
    h = Packet(net.author.channel, b0, 1, seq, head, 0, bytes(24))  # dated epoch 0
    body = _crypto.aead_encrypt(old_key, bytes(24), bytes((1, 7)) + encode_head(h), b"backdated")
    ev = net.author.receive(encode_frame(h, body, ident(10).sign).raw, net.now, "s0")
    assert not [e for e in ev if isinstance(e, MessageReceived)]
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.NOT_PERMITTED]


def test_read_taken_away_with_a_tail_in_flight_is_reported() -> None:
    """The author publishes 1..5 while the member may read, then takes read away; 4 and 5 never arrive.  The
    re-key names the author's chain at 5: the member reports 4..5 missing rather than dropping its cursor in
    silence."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = _own_branch(net)
    for i in range(5):
        net.author.publish(b0, b"m%d" % i, net.now)
    net.author.take_changes()
    for o in net.author.data_to_send()[:3]:
        net.to_sub("s0", o.data)
    start = len(net.events["s0"])
    net.author.set_permission(b0, Permission.WRITE)
    net.pump_author()
    ev = net.events["s0"][start:]
    assert any(isinstance(e, Granted) and e.permission is Permission.WRITE for e in ev)
    assert [e for e in ev if isinstance(e, GapDetected)] == [GapDetected(b0, 0, 4, 6)]


def test_a_write_only_member_drops_the_authors_heads_quietly() -> None:
    """The author's periodic HEAD of its chain reaches a member that may no longer read it: nothing to fetch,
    and no rejection (it is not an attack)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = _own_branch(net)
    net.author.publish(b0, b"m", net.now)
    net.pump_author()
    net.author.set_permission(b0, Permission.WRITE)
    net.pump_author()
    start = len(net.events["s0"])
    net.author.head_notices(force=True)
    net.pump_author()
    assert [e for e in net.events["s0"][start:] if isinstance(e, Rejected)] == []


def test_a_member_leaving_a_group_is_reported_as_leaving_and_the_last_closes_it() -> None:
    net = Net.make(n_subs=2)
    for s in ("s0", "s1"):
        net.subscribe(s)
    g = net.author.open_group([PublicIdentity.from_did(ident(10 + i).did) for i in range(2)])
    net.pump_author()
    start = len(net.events["author"])
    net.subs["s0"].unsubscribe(g)
    net.pump_sub("s0")
    assert net.author.branch_state(g) is BranchState.OPEN
    ev = net.events["author"][start:]
    assert [e for e in ev if isinstance(e, BranchClosed | MemberLeft)] == [MemberLeft(g, ident(10).did)]
    start = len(net.events["author"])
    net.subs["s1"].unsubscribe(g)
    net.pump_sub("s1")
    assert net.author.branch_state(g) is BranchState.CLOSED
    ev = net.events["author"][start:]
    assert [e for e in ev if isinstance(e, BranchClosed | MemberLeft)] == [BranchClosed(g, "unsubscribe", 0)]
