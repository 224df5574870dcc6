"""Coverage (SPEC 10.1) across a re-key that re-creates a chain's cursor at the grant's head, amortized mode.

A grant names a chain's head, signed by the author, but it is no signature of the chain's publisher over its
messages: unsigned packets held below that head stay uncovered until a signed message of the chain comes.  A
cursor re-created at the head used to count everything below as covered: a member whose write lapsed (its
checkpoint held back by a relay meanwhile, then refused as of the earlier run) never signed its packets and the
author never got a signature over them; a reader re-granted its read right reported the author's unsigned
packets as signed when it opened them from its log (a restart's redelivery) after delivering them unsigned.
"""

from __future__ import annotations

from streams.core import CoreConfig
from streams.events import Covered, MessageReceived, Rejected
from streams.wire import Kind, Permission, SigningMode, decode_frame
from tests.corenet import Net, ident


def _net(**cfg: int) -> Net:
    net = Net.make(n_subs=1, config=CoreConfig(signing=SigningMode.AMORTIZED, **cfg))
    net.subscribe("s0")
    return net


def test_a_member_checkpoints_its_unsigned_packets_after_its_write_lapsed() -> None:
    net = _net()
    b = net.author.branch_of(ident(10).did)
    assert b is not None
    s0 = net.subs["s0"]
    for i in range(3):
        s0.publish(b, b"p%d" % i, net.now)
    net.pump_sub("s0")  # packets 1..3 reach the author, unsigned
    net.now += 300
    s0.handle_timer(net.now)  # checkpoint_interval_ms passed: CHECKPOINT 4 -- which a relay holds back
    s0.take_changes()
    (held,) = [o.data for o in s0.data_to_send()]
    assert decode_frame(held).kind is Kind.CHECKPOINT
    net.lapse_write(b)
    late = net.to_author(held, "s0")
    assert [type(e) for e in late] == [Rejected]  # signed under the earlier run of the write right
    author_got = [(e.seq, e.signed) for e in net.events["author"] if isinstance(e, MessageReceived)]
    assert author_got == [(1, False), (2, False), (3, False)]

    # The member's chain restarts at the author's head 3; nothing there is covered by its signature yet.
    assert s0.chain_head(b, 1)[0] == 4
    assert s0.chain_head(b, 1)[2] == 0
    due = s0.next_timer()
    assert due is not None and due <= net.now + 200
    net.now = due
    s0.handle_timer(net.now)
    net.pump_sub("s0")
    covered = [e for e in net.events["author"] if isinstance(e, Covered)]
    assert [(c.branch, c.publisher, c.through_seq) for c in covered] == [(b, 1, 4)]
    assert net.author.chain_head(b, 1)[2] == 4
    assert s0.chain_head(b, 1)[2] == 4


def test_a_reader_regranted_reports_what_it_held_unsigned_as_unsigned_until_a_signature_covers_it() -> None:
    net = _net(checkpoint_every=1000)
    b = net.author.branch_of(ident(10).did)
    assert b is not None
    s0 = net.subs["s0"]
    for i in range(3):
        net.author.publish(b, b"m%d" % i, net.now)
    net.pump_author()
    got = [(e.seq, e.signed) for e in net.events["s0"] if isinstance(e, MessageReceived)]
    assert got == [(1, False), (2, False), (3, False)]
    raws = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.PACKET]
    net.author.set_permission(b, Permission.WRITE)
    net.pump_author()
    net.author.set_permission(b, Permission.READ_WRITE)
    net.pump_author()
    head = s0.chain_head(b, 0)
    assert head[0] == 4 and head[2] == 0
    # Opened from the log (a restart's redelivery) with the cursor's coverage: as they were delivered, unsigned.
    assert [s0.open_logged(r, head[2]).signed for r in raws] == [False, False, False]
    assert not [e for e in net.events["s0"] if isinstance(e, Covered)]

    # The author's next checkpoint covers them, and says so.
    net.author.flush_checkpoints(net.now)
    net.pump_author()
    assert [(c.publisher, c.through_seq) for c in net.events["s0"] if isinstance(c, Covered)] == [(0, 4)]
    assert [s0.open_logged(r, s0.chain_head(b, 0)[2]).signed for r in raws] == [True, True, True]
