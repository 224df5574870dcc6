"""Cold review of branch ``int`` (fixes from today's attack reviews): tests that fail on ``int``.

Real SQLite stores and ledgers, real PyNaCl, the in-memory transport or core-to-core (tests/corenet.py)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
from pathlib import Path

from streams.api import Subscriber
from streams.audit import AuditReport, audit_store
from streams.events import Anchored
from streams.ledger import EmbeddedLedger
from streams.store import backup
from tests.test_anchoring_integration import FAST, P1, PW, Collect, make_author, make_sub, wait_for


async def test_audit_of_a_member_restored_from_an_older_copy_does_not_say_its_restore_flag_was_altered(
        tmp_path: Path) -> None:
    """579f39e: 'a member's anchored head flagged restored must be where its chain's log starts'.  But an honest
    member restored from an older copy of its store (the documented backup/restore) holds its own chain through
    3 while the author holds it through 6: the author's latest proof of that chain (sent again when the member
    comes back) restores the member's own chain at 6 (core: ``head.publisher == b.me``), flagged restored -- and
    the log rightly still holds 1..3 below it.  The audit now calls that honest store tampered with."""
    rep = await _audit_of_a_member_restored_from_an_older_copy(tmp_path)
    errors = [f.reason for f in rep.findings if f.severity == "error"]
    assert not [r for r in errors if "restore flag altered" in r], rep.summary()


async def _audit_of_a_member_restored_from_an_older_copy(tmp_path: Path) -> AuditReport:
    """P1 publishes 1..3 (anchored), its store is backed up, it publishes 4..6 (anchored), then the copy is put back
    as the restore steps say and P1 reopens: the author's proof restores its own chain at 6.  The audit of it."""
    from streams.api import MemoryHub

    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"before the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 3, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 3 for e in col.of(Anchored)), what="anchored 3")
        await s.close()
        backup(tmp_path / "p1.db", tmp_path / "old.db")
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        await s.publish_many(branch, [b"after the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
        await s.close()
        for suffix in ("", "-frames"):
            if (tmp_path / f"old.db{suffix}").exists():
                shutil.copyfile(tmp_path / f"old.db{suffix}", tmp_path / f"p1.db{suffix}")
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"p1.db{suffix}").unlink(missing_ok=True)
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 and e.restored for e in col.of(Anchored)),
                       what="own chain restored at the author's anchored head")
        await s.close()
    finally:
        await s.close()
        await author.close()
    rep = audit_store(tmp_path / "p1.db", PW, ledger)
    ledger.close()
    return rep


def test_a_hand_inserted_row_beyond_the_ledger_tail_does_not_hide_a_later_revocation(tmp_path: Path) -> None:
    """f5310da passes over a row of the wrong types added to the embedded ledger's file by hand.  The same attack
    with a well-typed row INSERTed at a position past the tail (the file refuses UPDATE and DELETE, not INSERT):
    ``_Latest.scan`` walks positions 1..count(*), so the position the extra row adds to the count is a hole, and
    ``read()`` of it raises UnknownAnchor -- every later status lookup raises, so a list revoked after it is
    never seen: a re-check leaves its subscribers in place (a failed lookup decides nothing)."""
    import sqlite3

    from streams.credentials import CredentialPolicy, StatusList, StatusListSource
    from streams.status_anchor import STATUS_TAG, AnchoredStatusLists, publish_status_list
    from tests.test_status_anchor import ISSUER, NOW, TYPE, URL, _list, _request

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    bits = StatusList()
    v1 = _list(bits)
    publish_status_list(ledger, ISSUER, v1)
    db = sqlite3.connect(tmp_path / "ledger.db")
    (n,) = db.execute("SELECT max(position) FROM entries").fetchone()
    db.execute("INSERT INTO entries VALUES (?, ?, x'00', 0, zeroblob(32), zeroblob(32))", (n + 100, STATUS_TAG))
    db.commit()
    db.close()
    bits.set(5)
    v2 = _list(bits)
    publish_status_list(ledger, ISSUER, v2)  # the issuer revokes: anchored after the inserted row
    served = StatusListSource()
    served.publish(v2)
    lookup = AnchoredStatusLists(ledger, served)
    try:
        assert lookup.get(URL) == v2
        d = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lookup).decide(_request(), NOW)
        assert not d.admit and "revoked" in d.reason
    finally:
        ledger.close()


def test_a_late_rekey_leaving_a_group_of_one_is_not_taken_for_our_branch_while_we_subscribe_again() -> None:
    """5e76bce: a re-key of two members for a branch we hold nothing of is taken for a group's (its first grant
    asked for) -- except while a handshake runs whose ADMIT has not come yet (``_may_be_own``: ``_admitted is
    None``).  A member that is already subscribed, holds its own open branch, and calls subscribe again (HELLO: a
    new attempt, e.g. to present a renewed credential) is in that window: the group's late re-key, which the
    author sends along the member's own branch, is then applied at its heads in silence -- the group's history
    before it is skipped, with no GapDetected (the bug 5e76bce fixed outside a handshake).  The author keeps one
    branch per DID, so a member holding an open branch of its own can tell this grant is not of its branch."""
    from streams.events import GapDetected, MessageReceived
    from streams.identity import PublicIdentity
    from tests.corenet import Net, ident

    net = Net.make(n_subs=2)
    for name in ("s0", "s1"):
        net.subscribe(name)
    a, s0 = net.author, net.subs["s0"]
    g = a.open_group([PublicIdentity.from_did(ident(10 + i).did) for i in range(2)])
    a.take_changes()
    for o in a.data_to_send():  # the first GRANT never reaches s0
        net.to_sub("s1", o.data)
    for i in range(3):
        a.publish(g, b"group msg %d" % i, net.now)
    a.take_changes()
    for o in a.data_to_send():
        net.to_sub("s1", o.data)
    start = len(net.events["s0"])
    s0.hello()  # s0 subscribes again; its HELLO is on its way
    s0.take_changes()
    hello = s0.data_to_send()
    a.remove_member(g, ident(11).did)  # epoch 1: the author and s0 are left; its GRANT reaches s0 first
    net.pump_author()
    applied_at_heads = g in s0.branch_ids()
    for o in hello:  # the handshake goes on and completes
        net.to_author(o.data, "s0")
    for _ in range(3):
        net.now += 2_000
        s0.handle_timer(net.now)
        net.pump_sub("s0")
    ev = net.events["s0"][start:]
    got = [e.payload for e in ev if isinstance(e, MessageReceived) and e.branch == g]
    told = [e for e in ev if isinstance(e, GapDetected) and e.branch == g]
    assert not applied_at_heads and (got == [b"group msg %d" % i for i in range(3)] or told), (
        f"applied at heads: {applied_at_heads}, read: {got}, gaps reported: {told}")


async def test_a_forged_bundle_ok_does_not_make_the_author_bundle_for_a_subscriber_that_takes_none() -> None:
    """2f6e243 lets the smallest BUNDLE_OK of a record stand, trusting the subscriber's own BUNDLE_OK to pull a
    forged, larger one down.  A subscriber endpoint with bundles off (``bundle_bytes=0``, documented: "0 turns
    bundles off"; likewise ``credit_window=0``, or an endpoint from before BUNDLEs) never sends one: the first
    BUNDLE_OK a relay injects on its connection stands for the whole record, and the author bundles everything
    it sends that peer together -- each BUNDLE dropped whole by the subscriber (a commit's frames, the answers to
    its FETCHes that would fill the hole)."""
    import zmq.asyncio

    from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
    from brokerless.endpoints import BUNDLE_OK
    from streams.core import Outgoing
    from tests.test_zmq_review import HELLO, Relay, _read, frame, index, until

    cfg = EndpointConfig(heartbeat_ms=1000, liveness=30)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=1000, liveness=30, bundle_bytes=0))
    got: list[bytes] = []
    reader: asyncio.Task[None] | None = None
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        reader = asyncio.create_task(_read(sep, got))
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT")
        aep.send_many([Outgoing(frame(i), rid) for i in range(2)])
        await until(lambda: len(got) == 2, "two frames")
        assert aep.stats.bundles == 0  # the subscriber said it takes none: single frames
        malformed = aep.stats.malformed
        await relay.inject_up(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await relay.inject_up(b"\xff")  # garbage, counted when read: the forged BUNDLE_OK was read before it
        await until(lambda: aep.stats.malformed > malformed, "the forged BUNDLE_OK to be read")
        aep.send_many([Outgoing(frame(2 + i), rid) for i in range(200)])
        await until(lambda: len(got) == 202 or sep.stats.malformed > 0, "the frames")
        assert sep.stats.malformed == 0, "BUNDLEs sent to a subscriber that takes none, dropped whole"
        assert [index(f) for f in got] == list(range(202))
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()


async def test_a_forged_bundle_ok_does_not_make_a_subscriber_bundle_for_an_author_that_takes_none() -> None:
    """The mirror image on the subscriber's side (47fde25 keeps the smallest of a session's answers): an author
    endpoint with bundles off (``bundle_bytes=0``) never answers a BUNDLE_OK, so the first one a relay injects
    down the connection stands for the whole session, and the subscriber bundles what it sends in one go (a
    publish_many, the answers to the author's FETCHes) -- the author drops each such BUNDLE whole."""
    import zmq.asyncio

    from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
    from brokerless.endpoints import BUNDLE_OK
    from streams.core import Outgoing
    from tests.test_zmq_review import HELLO, Relay, until

    aep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=1000, liveness=30, bundle_bytes=0))
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=1000, liveness=30))
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        st = aep.stats
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT (after its BUNDLE_OK)")
        await relay.inject(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await until(lambda: sep.stats.frames_in >= relay.down, "the forged BUNDLE_OK to be read")
        malformed = st.malformed
        sep.send_many([Outgoing(HELLO)] * 20)
        await until(lambda: st.frames_in >= 21 or st.malformed > malformed, "the frames to arrive")
        assert st.malformed == malformed, "a BUNDLE sent to an author that takes none, dropped whole"
        await until(lambda: st.frames_in >= 21, "the 20 frames")
    finally:
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()
