"""Third review of a9eb16b..int (rev9)."""
from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from streams.errors import LedgerError
from streams.ledger import EmbeddedLedger


def test_an_append_after_a_hand_inserted_row_at_a_negative_position_is_a_ledger_error(tmp_path: Path) -> None:
    """672e795 makes an append after a row put by hand at the last position a LedgerError (the anchoring task
    retries on LedgerError and "must never die on it").  A well-typed row INSERTed by hand at a negative
    position into an empty ledger (or as its only rows) makes the next position negative too: ``entry_hash``
    packs it as ``>Q`` and ``struct.error`` escapes ``append`` -- every later append, for good."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("INSERT INTO entries VALUES (-5, x'01', x'00', 0, zeroblob(32), zeroblob(32))")
    db.commit()
    db.close()
    try:
        with pytest.raises(LedgerError):
            ledger.append(b"t", b"d")
    finally:
        ledger.close()


def _first_grant_lost_once_more(late_by: int) -> tuple[bool, int]:
    """s0 misses a group's first GRANT, sees its re-key and asks the first grant through its own branch.  That
    ask is lost; s0's timer runs ``late_by`` ms after the ask's retry was due (a host that was suspended, a
    loaded event loop) and asks again; the answer's copy of the group's first GRANT is lost too, s0's own GRANT
    (the rest of the answer) arrives.  Then the network is sound and s0's timer runs on time.  Returns whether s0
    holds the group in the end, and how many own-branch grant syncs it sent after the answer."""
    from streams.identity import PublicIdentity
    from streams.wire import Kind, decode_frame
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
    a.remove_member(g, ident(12).did)  # the group's re-key (epoch 1): s0 asks its first grant
    a.take_changes()
    asked: list[bytes] = []
    for o in a.data_to_send():
        s0.receive(o.data, net.now)
        s0.take_changes()
        asked += [x.data for x in s0.data_to_send()]  # lost on the way
        net.to_sub("s1", o.data)
    assert asked, "s0 asked for the group's first grant"
    assert g not in s0.branch_ids()
    retry = max(a.config.fetch_retry_ms, a.config.grant_sync_interval_ms) * 3 // 2
    net.now += retry + late_by  # s0's timer runs late: its first retry of the ask
    s0.handle_timer(net.now)
    s0.take_changes()
    again = [x.data for x in s0.data_to_send()]
    assert again, "s0 asked again"
    for d in again:
        a.receive(d, net.now, "s0")
        a.take_changes()
        for o in a.data_to_send():
            if o.branch == g:
                continue  # the copy of the group's first GRANT is lost on the way
            assert o.peer in (None, "s0")
            s0.receive(o.data, net.now)  # s0's own GRANT (the answer) arrives
    assert g not in s0.branch_ids()
    mark = len(net.wire)
    for _ in range(4):  # a sound network from now on; s0's timer on time
        net.now += retry
        s0.handle_timer(net.now)
        net.pump_sub("s0")
    syncs = sum(1 for sender, data in net.wire[mark:] if sender == "s0"
                and (f := decode_frame(data)).kind is Kind.FETCH and f.head.branch == own and f.head.from_seq == 0)
    return g in s0.branch_ids(), syncs


def test_a_first_grant_ask_whose_timer_ran_on_time_is_retried_until_the_group_comes() -> None:
    """Control for the test below: the same losses with s0's timer on time -- its remaining retry brings the
    group's first grant."""
    held, _ = _first_grant_lost_once_more(late_by=0)
    assert held


def test_a_first_grant_ask_is_not_dropped_while_its_retries_last_after_a_late_timer() -> None:
    """86a7a67 keeps the own-branch grant-sync wait for a group's first grant "only while that ask's retries
    last" -- but measures that as ``sync_retry_ms * (GRANT_SYNC_RETRIES + 1)`` from the ask's *first* send,
    while the retries themselves run from each actual send (``b.sync_ms``, ``_sync_waits``).  A timer that ran
    late (a retry sent after the window) makes the answer to a retry that still has one more to go end the wait:
    the own GRANT in it pops ``_sync_waits`` and the ask's last retry is never sent.  The honest member misses
    the group's first grant (a later copy of the re-key is then applied with a gap: its history skipped), where
    at a9eb16b it was asked again and came."""
    held, syncs = _first_grant_lost_once_more(late_by=3 * 1500)
    assert held, f"the group's first grant never came: s0 sent {syncs} own-branch grant sync(s) after the answer"


@pytest.mark.parametrize("tail_hash", ["'x'", str(2**62)])
def test_an_append_after_a_hand_inserted_last_row_of_the_wrong_types_is_a_ledger_error(
        tmp_path: Path, tail_hash: str) -> None:
    """``append`` reads the last row and takes ``bytes(row[2])`` of its entry_hash -- the coercion ``_row`` refuses
    ("bytes() of an INTEGER column would allocate that many bytes") and ``scan`` filters out (typeof blob).  A row
    INSERTed by hand at the end whose entry_hash is TEXT makes every later append raise TypeError; one whose
    entry_hash is an INTEGER makes it allocate that many bytes (2**62: MemoryError at once; 2**33: 8 GiB, per
    append) -- never a LedgerError, for good."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    ledger.append(b"t", b"first")
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute(f"INSERT INTO entries VALUES (1000, x'01', x'00', 0, zeroblob(32), {tail_hash})")
    db.commit()
    db.close()
    try:
        with pytest.raises(LedgerError):
            ledger.append(b"t", b"d")
    finally:
        ledger.close()


async def test_a_forged_bundle_ok_does_not_outlast_the_subscribers_one_lost_bundle_ok() -> None:
    """SPEC 14.1 (9faf594): "Both sides say 0 for none, so that where one side takes none a forged BUNDLE_OK is
    pinned down once that side's own has arrived.  It stands where none does: at the author, for a subscriber
    endpoint from before BUNDLEs or with credit off ...; at the subscriber, ... or when a relay drops the author's
    one answer of the session".  The subscriber says its BUNDLE_OK once per session too (only until a CREDIT went
    out): a relay that drops that one frame upstream and injects a forged BUNDLE_OK of 1 MiB makes the author
    bundle everything for the session to a subscriber that takes none (``bundle_bytes=0``), which drops each
    BUNDLE whole -- a case the SPEC does not list at the author (it says a subscriber with 0 pins it), and
    test_zmq_bundles says "a relay's forged one cannot make the author bundle for it".  Now a subscriber that gets
    a BUNDLE larger than it takes says its BUNDLE_OK again (at most once per heartbeat): the forged one costs the
    first BUNDLE, and what the author sends after the subscriber's word arrives goes as single frames."""
    import asyncio

    import zmq
    import zmq.asyncio

    from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
    from brokerless.endpoints import BUNDLE_OK
    from streams.core import Outgoing
    from tests.test_zmq_bundles import frame
    from tests.test_zmq_review import HELLO, Relay, until

    class DropsOneBundleOkUp(Relay):
        """Passes everything but the subscriber's first BUNDLE_OK up."""

        dropped = 0

        def passes(self, data: bytes, up: bool) -> bool:
            if up and data[:1] == BUNDLE_OK and not self.dropped:
                self.dropped += 1
                return False
            return True

    aep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=1000, liveness=30))
    ctx = zmq.asyncio.Context()
    relay = DropsOneBundleOkUp(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=1000, liveness=30, bundle_bytes=0))
    got: list[bytes] = []

    async def read() -> None:
        while True:
            got.extend(d for d, _ in await sep.recv())

    reader = asyncio.create_task(read())
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT (its BUNDLE_OK dropped)")
        assert relay.dropped == 1
        before = aep.stats.frames_in
        await relay.inject_up(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await until(lambda: aep.stats.frames_in > before, "the forged BUNDLE_OK to be read")
        malformed = sep.stats.malformed
        aep.send_many([Outgoing(frame(i), peer=rid) for i in range(20)])
        await until(lambda: sep.stats.malformed > malformed, "the first BUNDLE, dropped whole")
        await until(lambda: aep.stats.frames_in > before + 1, "the subscriber's BUNDLE_OK, again")
        aep.send_many([Outgoing(frame(20 + i), peer=rid) for i in range(20)])
        await until(lambda: len(got) >= 20 or sep.stats.malformed > malformed + 1, "the frames to arrive")
        assert sep.stats.malformed == malformed + 1, "a forged BUNDLE_OK outlasted the first BUNDLE it cost"
        assert got == [frame(20 + i) for i in range(20)]
    finally:
        reader.cancel()
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()
