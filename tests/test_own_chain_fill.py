"""A member restored from an older copy of its store fetches its own lost messages back from the author (SPEC 13.5).

Its log held its chain through 3, the author's through 6 (anchored): the restore proof restarts its chain at 6,
and the member logs 4..6 again, from the author's log, each checked against its own signature and linked to the
one before.  The audit then finds its whole chain -- and still finds every deletion.  The asyncio API over the
in-memory transport, real SQLite stores and ledger, the real backup."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from streams.api import Author, MemoryHub, MemoryTransport, Subscriber
from streams.audit import AuditReport, audit_store
from streams.core import FILL_RETRIES, CoreConfig
from streams.errors import DecodeError, RejectReason
from streams.events import Anchored, Rejected
from streams.ledger import EmbeddedLedger
from streams.policy import AllowList
from streams.store import Store, backup
from streams.wire import Kind, decode_frame
from tests.test_anchoring_integration import FAST, P1, PW, Collect, make_author, make_sub, wait_for


class _OwnChainRelay(MemoryTransport):
    """P1's endpoint behind a hostile relay that sees every frame of P1's own chain the author serves it:
    ``forge`` puts a bit-flipped copy before the first one, ``drop`` drops them all."""

    def __init__(self, hub: MemoryHub, forge: bool = False, drop: bool = False) -> None:
        super().__init__(hub, "p1")
        hub._subs["p1"] = self  # (the hub routes to the endpoint registered under the name)
        self.forge, self.drop = forge, drop
        self.seen: list[int] = []

    async def recv(self) -> list[tuple[bytes, object]]:
        out: list[tuple[bytes, object]] = []
        for data, peer in await super().recv():
            try:
                f = decode_frame(data)
            except DecodeError:
                out.append((data, peer))
                continue
            if f.kind in (Kind.PACKET, Kind.CHECKPOINT) and f.head.publisher == 1:
                self.seen.append(f.head.seq)
                if self.drop:
                    continue
                if self.forge and len(self.seen) == 1:
                    out.append((data[:-1] + bytes([data[-1] ^ 1]), peer))
            out.append((data, peer))
        return out


async def _restored_member(tmp: Path, ledger: EmbeddedLedger, relay: dict[str, bool] | None = None
                           ) -> tuple[bytes, list[bytes], Collect, _OwnChainRelay | None]:
    """P1 publishes 1..3 (anchored), its store is backed up, it publishes 4..6 (anchored), the copy is put back as
    the restore steps say, and P1 reopens (behind ``relay``, if given) until the author's proof of its chain at 6
    is reported.  Returns the branch, P1's frames 4..6 as they were, its events and the relay."""
    hub = MemoryHub()
    author = await make_author(tmp, hub, ledger)
    s = await make_sub(tmp / "p1.db", hub, P1, "p1", author, ledger=ledger)
    t: _OwnChainRelay | None = None
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"before the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 3, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 3 for e in col.of(Anchored)), what="anchored 3")
        await s.close()
        backup(tmp / "p1.db", tmp / "old.db")
        s = await Subscriber.open(tmp / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        await s.publish_many(branch, [b"after the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
        await s.close()
        lost = _logged(tmp / "p1.db", branch, 4, 6)
        _put_back(tmp, "old.db")
        t = None if relay is None else _OwnChainRelay(hub, **relay)
        s = await Subscriber.open(tmp / "p1.db", PW, t or hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger, config=CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200))
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 and e.restored for e in col.of(Anchored)),
                       what="own chain restored at the author's anchored head")
    finally:
        await s.close()
        await author.close()
    return branch, lost, col, t


def _errors(rep: AuditReport) -> list[str]:
    return [f.reason for f in rep.findings if f.severity == "error"]


def _audit(tmp: Path, ledger: EmbeddedLedger) -> AuditReport:
    return audit_store(tmp / "p1.db", PW, ledger)


async def test_a_restored_member_logs_its_lost_messages_again_as_they_were_and_every_deletion_still_fails(
        tmp_path: Path) -> None:
    """The messages fetched back are the very frames P1 signed (byte for byte), its chain keeps no restore proof
    (its log does not start there), and the audit passes.  Then an attacker with write access to the store file:
    deleting a message fetched back fails the audit, and so does deleting everything up to the anchored head --
    which a restore proof kept for the chain (a plain row) would have let pass as "the log starts here"."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, lost, _col, _ = await _restored_member(tmp_path, ledger)
        store = Store.open(tmp_path / "p1.db", PW, durable=False)
        try:
            assert store.log_range(branch, 1, 1, 7) [3:] == lost and len(lost) == 3
            assert not [r for r in store.anchor_restores() if r.publisher == 1]
        finally:
            store.close()
        clean = _audit(tmp_path, ledger)
        assert not _errors(clean), clean.summary()
        shutil.copyfile(tmp_path / "p1.db", tmp_path / "clean.db")

        db = sqlite3.connect(tmp_path / "p1.db")
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 1 AND seq = 5", (branch,))
        db.commit()
        db.close()
        assert any("missing" in r for r in _errors(_audit(tmp_path, ledger)))

        shutil.copyfile(tmp_path / "clean.db", tmp_path / "p1.db")
        db = sqlite3.connect(tmp_path / "p1.db")
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 1 AND seq <= 6", (branch,))
        db.commit()
        db.close()
        assert _errors(_audit(tmp_path, ledger)), "P1's whole chain up to its anchored head was deleted"
    finally:
        ledger.close()


async def test_a_forged_copy_of_a_message_fetched_back_is_refused_and_never_logged(tmp_path: Path) -> None:
    """A relay puts a bit-flipped copy of the first message the author serves P1 of its own chain before it: it
    does not authenticate, is refused, and what P1 logs is its own messages as it signed them."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, lost, col, relay = await _restored_member(tmp_path, ledger, {"forge": True})
        assert relay is not None and relay.seen[:3] == [4, 5, 6]
        assert [e.reason for e in col.of(Rejected) if e.publisher == 1 and e.seq == 4] in (
            [RejectReason.BAD_SIGNATURE], [RejectReason.BAD_AEAD])
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == lost
        assert not _errors(_audit(tmp_path, ledger))
    finally:
        ledger.close()


async def test_messages_that_never_come_back_are_a_hole_the_audit_still_reports(tmp_path: Path) -> None:
    """A relay drops every message of P1's own chain the author serves: P1 asks again a few times, then gives up
    and says so, and reports the proof (its chain restarted at 6).  Its log lacks 4..6, and the
    audit says so: nothing marks that hole as legitimate."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, _lost, col, relay = await _restored_member(tmp_path, ledger, {"drop": True})
        assert relay is not None and relay.seen[:1] == [4]
        asks = []
        for src, _dst, data in relay.hub.tap:
            f = decode_frame(data)
            if src == "p1" and f.kind is Kind.FETCH and f.head.publisher == 1:
                asks.append(f.head.from_seq)
        assert asks.count(4) == 1 + FILL_RETRIES  # asked again, then given up
        assert [e.reason for e in col.of(Rejected) if e.publisher == 1 and e.seq == 4] == [RejectReason.UNEXPECTED]
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == []
        assert any("4..6 are missing" in r for r in _errors(_audit(tmp_path, ledger)))
    finally:
        ledger.close()


async def test_a_fetch_of_our_own_messages_that_did_not_end_is_taken_up_again_by_the_next_run(
        tmp_path: Path) -> None:
    """P1 restarts its chain at 6 and asks for 4..6; a relay drops every answer, and P1 gives up -- what a run
    stopped before the answer came leaves in the store too: the proof, kept as its anchored head, and a log that
    ends at 3.  Its next run takes the fetch up from its log's head: the messages come back as they were, and the
    audit of the store passes."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, lost, _col, relay = await _restored_member(tmp_path, ledger, {"drop": True})
        assert relay is not None
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == []
        hub = relay.hub
        author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                                   store_options=FAST, ledger=ledger)
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        try:
            await wait_for(lambda: audit_store(tmp_path / "p1.db", PW, ledger).ok, what="the store whole again")
        finally:
            await s.close()
            await author.close()
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == lost
    finally:
        ledger.close()


async def test_over_zeromq_a_restored_member_logs_its_lost_messages_again(tmp_path: Path) -> None:
    """The same restore over real sockets (FETCHes bound to the connection's session, SPEC 8.9): the member's
    fetch of its own messages is answered, and the audit of its store passes."""
    from brokerless import AuthorEndpoint, SubscriberEndpoint
    from tests.test_anchoring_integration import AUTHOR, CFG

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, ledger=ledger, anchor_config=CFG)
    p1 = tmp_path / "p1.db"
    s = await Subscriber.create(p1, P1, AUTHOR.did, author.channel, PW, SubscriberEndpoint(ep.addresses[0]),
                                store_options=FAST, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=10)
        for n, what in ((3, b"before the copy %d"), (6, b"after the copy %d")):
            await s.publish_many(branch, [what % i for i in range(3)])
            await s.wait_acknowledged(branch, n, timeout=10)
            col = Collect(s)
            await wait_for(lambda: any(e.publisher == 1 and e.seq == n for e in col.of(Anchored)),  # noqa: B023
                           what=f"anchored {n}")
            await s.close()
            if n == 3:
                backup(p1, tmp_path / "old.db")
            s = await Subscriber.open(p1, PW, SubscriberEndpoint(ep.addresses[0]), store_options=FAST,
                                      ledger=ledger)
        await s.close()
        lost = _logged(p1, branch, 4, 6)
        _put_back(tmp_path, "old.db")
        s = await Subscriber.open(p1, PW, SubscriberEndpoint(ep.addresses[0]), store_options=FAST, ledger=ledger)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 and e.restored for e in col.of(Anchored)),
                       what="own chain restored at the author's anchored head")
    finally:
        await s.close()
        await author.close()
    try:
        assert len(lost) == 3 and _logged(p1, branch, 4, 6) == lost
        rep = audit_store(p1, PW, ledger)
        assert rep.ok, rep.summary()
    finally:
        ledger.close()


async def test_an_amortized_member_fetches_back_its_unsigned_packets_and_checkpoints(tmp_path: Path) -> None:
    """In amortized mode (SPEC 11) the member's packets carry no signature (the chain key authenticates them) and
    its checkpoints do: both are fetched back, and the audit of the store passes."""
    from streams.wire import SigningMode
    from tests.test_anchoring_integration import AUTHOR, CFG

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, ledger=ledger, anchor_config=CFG,
                                 config=CoreConfig(signing=SigningMode.AMORTIZED))
    p1 = tmp_path / "p1.db"
    cfg = CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200)
    s = await make_sub(p1, hub, P1, "p1", author, ledger=ledger)
    heads = []
    try:
        branch = await s.subscribe(timeout=5)
        for what in (b"before the copy %d", b"after the copy %d"):
            seqs = await s.publish_many(branch, [what % i for i in range(3)])
            await s.close()  # (its checkpoint goes with the close)
            if not heads:
                backup(p1, tmp_path / "old.db")
            heads.append(seqs[-1] + 1)
            s = await Subscriber.open(p1, PW, hub.subscriber_endpoint("p1"), store_options=FAST, ledger=ledger,
                                      config=cfg)
            col = Collect(s)
            await wait_for(lambda c=col: any(e.publisher == 1 and e.seq == heads[-1] for e in c.of(Anchored)),
                           what="the checkpoint anchored")
        await s.close()
        lost = _logged(p1, branch, heads[0] + 1, heads[1])
        assert [decode_frame(f).kind for f in lost] == [Kind.PACKET] * 3 + [Kind.CHECKPOINT]
        assert not any(decode_frame(f).sig for f in lost[:3])
        _put_back(tmp_path, "old.db")
        s = await Subscriber.open(p1, PW, hub.subscriber_endpoint("p1"), store_options=FAST, ledger=ledger,
                                  config=cfg)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == heads[1] and e.restored for e in col.of(Anchored)),
                       what="own chain restored at the author's anchored head")
    finally:
        await s.close()
        await author.close()
    try:
        assert _logged(p1, branch, heads[0] + 1, heads[1]) == lost
        rep = audit_store(p1, PW, ledger)
        assert rep.ok, rep.summary()
    finally:
        ledger.close()


def _logged(path: Path, branch: bytes, lo: int, hi: int) -> list[bytes]:
    """The frames P1's store (closed) logs of its own chain at ``lo..hi``."""
    store = Store.open(path, PW, durable=False)
    try:
        return store.log_range(branch, 1, lo, hi)
    finally:
        store.close()


def _put_back(tmp: Path, copy: str) -> None:
    """The restore steps: the copy's files in place of the store's, no WAL of the later store left over."""
    for suffix in ("", "-frames"):
        if (tmp / f"{copy}{suffix}").exists():
            shutil.copyfile(tmp / f"{copy}{suffix}", tmp / f"p1.db{suffix}")
    for suffix in ("-wal", "-shm"):
        (tmp / f"p1.db{suffix}").unlink(missing_ok=True)


async def test_a_copy_from_before_our_first_message_is_no_restart_we_sign_a_restore_mark_for(
        tmp_path: Path) -> None:
    """Whoever can write P1's store file puts back a copy taken before P1 published anything (or sets its chain's
    cursor back to 1 and deletes its rows: the same file).  P1's branch is not one a handshake of this run created
    -- it did not lose its state -- so the author's proof of its chain at 6 must not make it sign a restore mark:
    that mark is what lets the audit take the log as starting after 6, a clean audit of a store from which all six
    of P1's messages were deleted.  It fetches them back instead (the first links to the genesis grant), as it
    does from a copy that holds some of them, and the store holds them again as they were."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=5)
        await s.close()
        backup(tmp_path / "p1.db", tmp_path / "old.db")  # the branch, nothing of P1's own chain
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        await s.publish_many(branch, [b"own %d" % i for i in range(6)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
        await s.close()
        lost = _logged(tmp_path / "p1.db", branch, 1, 6)
        assert len(lost) == 6
        _put_back(tmp_path, "old.db")
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger, config=CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200))
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)),
                       what="own chain restarted at the author's anchored head")
    finally:
        await s.close()
        await author.close()
    try:
        db = sqlite3.connect(tmp_path / "p1.db")
        marks = db.execute("SELECT seq FROM restore_marks WHERE publisher = 1").fetchall()
        db.close()
        assert marks == [], "P1 signed a restore mark over a deletion of its own chain"
        assert _logged(tmp_path / "p1.db", branch, 1, 6) == lost
        rep = _audit(tmp_path, ledger)
        assert rep.ok, rep.summary()
    finally:
        ledger.close()


async def test_a_log_whose_head_was_deleted_makes_us_sign_no_restore_mark(tmp_path: Path) -> None:
    """P1's store is an older copy (its chain through 3, the author's through 6) from which whoever can write it
    also deleted P1's messages 1..3.  P1 did not lose its state (no handshake of this run created the branch): it
    must sign no restore mark at 6 -- that would pass the deletion off as a restart.  Its log holds nothing of its
    chain and no mark says it starts later: the whole chain is fetched back (at its open) and the audit passes
    with every message in place."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"before the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 3, timeout=5)
        await s.close()
        backup(tmp_path / "p1.db", tmp_path / "old.db")
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger)
        await s.publish_many(branch, [b"after the copy %d" % i for i in range(3)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
        await s.close()
        _put_back(tmp_path, "old.db")
        db = sqlite3.connect(tmp_path / "p1.db")
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 1", (branch,))
        db.commit()
        db.close()
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger, config=CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200))
        col = Collect(s)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)),
                       what="own chain restarted at the author's anchored head")
    finally:
        await s.close()
        await author.close()
    try:
        db = sqlite3.connect(tmp_path / "p1.db")
        marks = db.execute("SELECT seq FROM restore_marks WHERE publisher = 1").fetchall()
        db.close()
        assert marks == [], "P1 signed a restore mark over a deletion of its own chain"
        assert len(_logged(tmp_path / "p1.db", branch, 1, 6)) == 6
        rep = _audit(tmp_path, ledger)
        assert rep.ok, rep.summary()
    finally:
        ledger.close()


async def test_a_fetch_given_up_is_taken_up_again_after_a_later_proof_of_our_chain(tmp_path: Path) -> None:
    """P1 restarts its chain at 6 and its fetch of 4..6 is given up (a relay drops the answers); it runs on,
    publishes 7, and the author's next proof anchors 7 -- now its chain's latest anchored head, which its log
    holds.  Its next run must still take the fetch of 4..6 up again (the hole is in its log, whatever the latest
    proof): else the store of an honest member fails every later audit for messages it could have had back."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, lost, _col, relay = await _restored_member(tmp_path, ledger, {"drop": True})
        assert relay is not None
        hub = relay.hub
        cfg = CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200)
        author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                                   store_options=FAST, ledger=ledger)
        s = await Subscriber.open(tmp_path / "p1.db", PW, _OwnChainRelay(hub, drop=True), store_options=FAST,
                                  ledger=ledger, config=cfg)
        try:
            col = Collect(s)
            await s.publish(branch, b"after the restore")
            await s.wait_acknowledged(branch, 7, timeout=5)
            await wait_for(lambda: any(e.publisher == 1 and e.seq == 7 for e in col.of(Anchored)), what="anchored 7")
        finally:
            await s.close()
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == []
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger, config=cfg)
        try:
            await wait_for(lambda: audit_store(tmp_path / "p1.db", PW, ledger).ok, what="the store whole again")
        finally:
            await s.close()
            await author.close()
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == lost
    finally:
        ledger.close()


async def test_a_write_permission_lapse_during_the_fetch_leaves_no_hole_for_good(tmp_path: Path) -> None:
    """P1 restarted its chain at 6 and its fetch of 4..6 is not through (a relay drops the answers) when the
    author takes its write permission away and gives it back: P1's chain starts again at the author's head (6),
    which its log lacks, and the rows its log held up to there (1..3, its own) leave it (SPEC 12: they may be
    forks).  Its next run must fetch its whole chain back from the author: else the store of an honest member
    fails every later audit ("messages 1..6 are missing") for messages the author still serves."""
    from streams.wire import Permission

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    try:
        branch, lost, _col, relay = await _restored_member(tmp_path, ledger, {"drop": True})
        assert relay is not None
        hub = relay.hub
        cfg = CoreConfig(fetch_retry_ms=50, grant_sync_interval_ms=200)
        author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                                   store_options=FAST, ledger=ledger)
        s = await Subscriber.open(tmp_path / "p1.db", PW, _OwnChainRelay(hub, drop=True), store_options=FAST,
                                  ledger=ledger, config=cfg)
        try:
            for perm in (Permission.READ, Permission.READ_WRITE):
                await author.set_permission(branch, perm)
                await wait_for(lambda p=perm: any(i.id == branch and i.permission is p  # type: ignore[misc]
                                                      for i in s.branches()), what=f"P1 holds {perm.name}")
        finally:
            await s.close()
        s = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                  ledger=ledger, config=cfg)
        try:
            await wait_for(lambda: audit_store(tmp_path / "p1.db", PW, ledger).ok, what="the store whole again")
        finally:
            await s.close()
            await author.close()
        assert _logged(tmp_path / "p1.db", branch, 4, 6) == lost
    finally:
        ledger.close()
