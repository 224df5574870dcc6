"""Second cold review of branch ``int`` (8a32fc8..int): tests that fail on ``int``.

Real SQLite stores and ledgers, real PyNaCl, core-to-core (tests/corenet.py)."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from streams.audit import audit_store
from streams.events import Anchored
from streams.ledger import EmbeddedLedger


def test_a_hand_inserted_row_at_the_last_position_does_not_fail_every_later_status_lookup(tmp_path: Path) -> None:
    """e7e5379 reads status anchors with ``ledger.scan(STATUS_TAG, self.next, 1000)`` and sets ``next`` to the
    last row's position + 1 ("a row added to the file by hand past the end ... is passed over -- never a failure
    of every later lookup").  A well-typed row INSERTed by hand at position 2**63-2 (the same attack as
    test_int_review's, a larger position) leaves room for one more real append: the issuer's revocation lands at
    2**63-1, the verifier's first lookup sees it, and ``next`` becomes 2**63 -- which SQLite cannot bind: every
    later ``scan`` raises LedgerError, so every later lookup of every list fails (a re-check then decides
    nothing and leaves revoked subscribers in place)."""
    from streams.credentials import CredentialPolicy, StatusList, StatusListSource
    from streams.status_anchor import STATUS_TAG, AnchoredStatusLists, publish_status_list
    from tests.test_status_anchor import ISSUER, NOW, TYPE, URL, _list, _request

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    bits = StatusList()
    publish_status_list(ledger, ISSUER, _list(bits))
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("INSERT INTO entries VALUES (?, ?, x'00', 0, zeroblob(32), zeroblob(32))", (2**63 - 2, STATUS_TAG))
    db.commit()
    db.close()
    bits.set(5)
    v2 = _list(bits)
    assert publish_status_list(ledger, ISSUER, v2) == str(2**63 - 1)  # the issuer revokes: anchored after it
    served = StatusListSource()
    served.publish(v2)
    lookup = AnchoredStatusLists(ledger, served)
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lookup)
    try:
        assert lookup.get(URL) == v2  # the first lookup reads it
        decisions = []
        for _ in range(2):  # every later re-check
            d = policy.decide(_request(), NOW)
            decisions.append((d.admit, d.reason))
        assert all(not admit and "revoked" in reason for admit, reason in decisions), decisions
    finally:
        ledger.close()


def test_an_answered_own_branch_grant_sync_is_not_asked_again_once_a_first_grant_can_never_come() -> None:
    """734e021 keeps the wait of a grant sync of a two-member branch when a GRANT answers it while
    ``_first_grants_pending()`` -- any group whose first grant was ever asked through our own branch and is not
    held.  Nothing ends that state but the group's arrival (``_first_grant_asked`` is never pruned, but for a
    wholesale clear at 1024): a member that saw a group's re-key, asked for its first grant, and was removed from
    the group before the answer (the author no longer sends it that group's first grant) stays "pending" for
    good.  From then on every grant sync of its own branch that the author answers is asked again
    (GRANT_SYNC_RETRIES more times) as if unanswered -- each own-branch GRANT (a permission change, a re-key)
    costs three syncs and three answers instead of one, for the life of the process."""
    from streams.identity import PublicIdentity
    from streams.wire import Kind, Permission, decode_frame
    from tests.corenet import Net, ident

    net = Net.make(n_subs=3)
    for name in ("s0", "s1", "s2"):
        net.subscribe(name)
    a, s0 = net.author, net.subs["s0"]
    own = s0.branch_ids()[0]
    g = a.open_group([PublicIdentity.from_did(ident(10 + i).did) for i in range(3)])
    a.take_changes()
    for o in a.data_to_send():  # the group's first GRANT never reaches s0
        for name in ("s1", "s2"):
            net.to_sub(name, o.data)
    a.remove_member(g, ident(12).did)  # epoch 1 (author, s0, s1): s0 asks its first grant through its branch
    a.take_changes()
    held: list[bytes] = []
    for o in a.data_to_send():
        s0.receive(o.data, net.now)
        s0.take_changes()
        held += [x.data for x in s0.data_to_send()]
        net.to_sub("s1", o.data)
    assert held, "s0 asked for the group's first grant"
    a.remove_member(g, ident(10).did)  # s0 is removed before its ask reaches the author
    net.pump_author()
    for d in held:  # the ask is answered (s0's own GRANT; no first grant of a group it left)
        net.to_author(d, "s0")
    for _ in range(4):  # the first-grant ask runs its course
        net.now += 10_000
        s0.handle_timer(net.now)
        net.pump_sub("s0")
    assert g not in s0.branch_ids()

    def syncs_sent() -> int:
        n = 0
        for sender, data in net.wire:
            if sender == "s0":
                f = decode_frame(data)
                if f.kind is Kind.FETCH and f.head.branch == own and f.head.from_seq == 0:
                    n += 1
        return n

    # An own-branch GRANT (a permission change): s0 applies it and asks a grant sync, which the author answers.
    a.set_permission(own, Permission.READ)
    net.pump_author()
    before = syncs_sent()
    for _ in range(6):
        net.now += 10_000
        s0.handle_timer(net.now)
        net.pump_sub("s0")
    again = syncs_sent() - before
    assert again == 0, f"an answered own-branch grant sync was asked {again} more times"


async def test_audit_still_finds_the_tail_of_a_members_own_chain_deleted_behind_a_restore_flag(tmp_path: Path) -> None:
    """7e02548 skips the 'restore flag altered' check for the member's own chain (``r.publisher == b.me``).  The
    flag is a plain column: whoever can write the store file deletes the tail of the member's own chain (4..6,
    anchored at 6) and sets ``restored = 1`` on the anchored head -- the head's message is then not looked for in
    the log (``_logged`` runs only for unflagged heads), and what lies below it (1..3) no longer counts against
    the flag.  Before 7e02548 that store was reported; now its audit is clean: a truncation of the member's own
    history (what it published, the evidence an auditor asks a member for) goes unreported."""
    from streams.api import MemoryHub
    from tests.test_anchoring_integration import P1, PW, Collect, make_author, make_sub, wait_for

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=5)
        col = Collect(s)
        await s.publish_many(branch, [b"own %d" % i for i in range(6)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
    finally:
        await s.close()
        await author.close()
    clean = audit_store(tmp_path / "p1.db", PW, ledger)
    assert not [f for f in clean.findings if f.severity == "error"], clean.summary()
    db = sqlite3.connect(tmp_path / "p1.db")
    (n,) = db.execute("SELECT count(*) FROM anchor_heads WHERE branch = ? AND publisher = 1 AND seq = 6",
                      (branch,)).fetchone()
    assert n == 1
    db.execute("UPDATE anchor_heads SET restored = 1 WHERE branch = ? AND publisher = 1", (branch,))
    db.execute("DELETE FROM log WHERE branch = ? AND publisher = 1 AND seq >= 4", (branch,))
    (h3,) = db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 1 AND seq = 3", (branch,)).fetchone()
    db.execute("UPDATE chains SET next_seq = 4, head = ? WHERE branch = ? AND publisher = 1", (h3, branch))
    db.commit()
    db.close()
    rep = audit_store(tmp_path / "p1.db", PW, ledger)
    ledger.close()
    errors = [f.reason for f in rep.findings if f.severity == "error"]
    assert errors, "the own chain's anchored tail was deleted from the log: " + rep.summary()


async def test_audit_of_a_member_restored_from_an_older_copy_finds_no_tampering_at_all(
        tmp_path: Path) -> None:
    """test_int_review's honest member (restored from an older copy of its store: its log holds its own chain
    1..3, the author's proof restores the chain at 6).  7e02548 removed the 'restore flag altered' error, but the
    same store still failed its audit with an error of another name: ``_chain`` starts the own chain at seq 1 (its
    first row; the restore proof at 6 is not where a row starts) and ends at 3 while ``next_seq`` is 7 --
    "messages 4..6 are missing at the tail (deleted)".  The honest member was accused of deleting its own
    messages.  Now the member fetches its messages 4..6 back from the author's log when its chain restarts there
    (SPEC 13.5), and reports the proof once they are logged: its log holds its whole chain."""
    from tests.test_int_review import _audit_of_a_member_restored_from_an_older_copy

    rep = await _audit_of_a_member_restored_from_an_older_copy(tmp_path)
    errors = [f.reason for f in rep.findings if f.severity == "error"]
    assert not errors, errors


async def test_a_forged_bundle_ok_does_not_outlast_the_authors_one_lost_answer() -> None:
    """0c103ba: "both sides saying 0 for none is what pins a forged BUNDLE_OK down" -- at the subscriber, only once
    the author's own answer arrives, and the author sends it once per session (never again: ``bundles_told``).  A
    relay that drops that one frame and injects one forged BUNDLE_OK makes the subscriber bundle everything it
    sends for the whole session to an author that takes none (``bundle_bytes=0``), which drops each BUNDLE whole:
    two frames of relay effort, not a relay dropping every frame.  (The subscriber keeps saying its BUNDLE_OK
    until a CREDIT went out; the author's answer had no such retry.)  Now an author that gets a BUNDLE larger than
    it takes says its BUNDLE_OK again (at most once per heartbeat): the forged one costs the first BUNDLE, and what
    the subscriber sends after the author's answer arrives goes as single frames."""
    import asyncio

    import zmq
    import zmq.asyncio

    from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
    from brokerless.endpoints import BUNDLE_OK
    from streams.core import Outgoing
    from tests.test_zmq_review import HELLO, Relay, until

    class DropsOneBundleOk(Relay):
        """Passes everything but the author's first BUNDLE_OK down."""

        dropped = 0

        def passes(self, data: bytes, up: bool) -> bool:
            if not up and data[:1] == BUNDLE_OK and not self.dropped:
                self.dropped += 1
                return False
            return True

    aep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=1000, liveness=30, bundle_bytes=0))
    ctx = zmq.asyncio.Context()
    relay = DropsOneBundleOk(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=1000, liveness=30))
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        st = aep.stats
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT (after its BUNDLE_OK)")
        await until(lambda: relay.dropped == 1, "the author's answer (dropped)")
        await relay.inject(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await until(lambda: sep.stats.frames_in >= relay.down, "the forged BUNDLE_OK to be read")
        malformed = st.malformed
        down = relay.down
        sep.send_many([Outgoing(HELLO)] * 20)
        await until(lambda: st.malformed > malformed, "the first BUNDLE, dropped whole")
        await until(lambda: relay.down > down and sep.stats.frames_in >= relay.down, "the author's answer, again")
        frames_in = st.frames_in
        sep.send_many([Outgoing(HELLO)] * 20)
        await until(lambda: st.frames_in >= frames_in + 20 or st.malformed > malformed + 1, "the frames to arrive")
        assert st.malformed == malformed + 1, "a forged BUNDLE_OK outlasted the first BUNDLE it cost"
        assert st.frames_in == frames_in + 20
    finally:
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()
