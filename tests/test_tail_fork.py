"""The tail a close names (SPEC 8.8 REVOKE, SPEC 9.5 removal from a group) is fetched and accepted up to the
head it names -- and that head is the one it names: another signed message at that position is the author's
fork (THREATS 7), refused as FORK, not accepted.  Cores wired together without sockets."""

from __future__ import annotations

from pathlib import Path

from streams import _crypto
from streams._state import BranchState
from streams.anchor import check_fork
from streams.core import SubscriberCore
from streams.errors import RejectReason
from streams.events import MessageReceived, Rejected
from streams.wire import Kind, Packet, decode_frame, encode_frame, encode_head

from .corenet import Net, ident
from .test_restart_and_wait_edges import _keep


def _forged_author_packet(n: Net, branch: bytes, seq: int, prev: bytes, payload: bytes) -> bytes:
    """Another message of the author's chain at ``seq``, encrypted and signed as the author's own (the attacker
    is the author, or holds its key): what a forking author sends one member."""
    key = n.author._branches[branch].keys[(0, 0)]
    h = Packet(n.author.channel, branch, 0, seq, prev, 0, bytes(24))
    body = _crypto.aead_encrypt(key, bytes(24), bytes((1, 7)) + encode_head(h), payload)
    return encode_frame(h, body, ident(1).sign).raw


def _revoked_with_tail(n: Net) -> tuple[bytes, list[bytes]]:
    """s0 holds the author's 1..3 of 5; the REVOKE naming 5 overtook 4 and 5."""
    n.subscribe("s0")
    [b0] = n.subs["s0"].branch_ids()
    for i in range(5):
        n.author.publish(b0, b"m%d" % i, n.now)
    n.author.take_changes()
    packets = [o.data for o in n.author.data_to_send()]
    for raw in packets[:3]:
        n.to_sub("s0", raw)
    n.author.revoke(b0)
    n.pump_author()
    assert n.subs["s0"].branch_state(b0) is BranchState.CLOSED
    return b0, packets


def _assert_fork_refused(n: Net, b0: bytes, packets: list[bytes], evidence: bool) -> None:
    s = n.subs["s0"]
    assert [m.seq for m in n.to_sub("s0", packets[3]) if isinstance(m, MessageReceived)] == [4]
    other = _forged_author_packet(n, b0, 5, decode_frame(packets[3]).hash, b"not what the revoke named")
    events = n.to_sub("s0", other)
    assert [m for m in events if isinstance(m, MessageReceived)] == []
    (rej,) = [e for e in events if isinstance(e, Rejected)]
    assert (rej.reason, rej.publisher, rej.seq) == (RejectReason.FORK, 0, 5)
    if evidence:
        ev = s.fork_evidence(rej.frame, rej.held) if rej.frame is not None and rej.held is not None else None
        assert ev is not None and check_fork(ev, ident(1).sign_public)[3] == 5
    # The message the close named is still the one taken, then nothing more.
    assert [m.seq for m in n.to_sub("s0", packets[4]) if isinstance(m, MessageReceived)] == [5]
    assert s.next_timer() is None


def test_a_tail_message_other_than_the_one_the_revoke_named_is_a_fork() -> None:
    n = Net.make(n_subs=1)
    b0, packets = _revoked_with_tail(n)
    _assert_fork_refused(n, b0, packets, evidence=True)


def test_a_tail_message_other_than_the_one_the_revoke_named_is_a_fork_after_a_restart() -> None:
    """The named hash is kept with the branch record (BranchRecord.tail_hash), as its seq is."""
    n = Net.make(n_subs=1)
    records, chains = _keep(n.subs["s0"])
    b0, packets = _revoked_with_tail(n)
    s0 = n.subs["s0"]
    s0.take_changes()
    again = SubscriberCore(s0.identity, n.author.identity.did, n.author.channel)
    again.load_subscriber(None, list(records.values()), list(chains.values()))
    n.subs["s0"] = again
    _assert_fork_refused(n, b0, packets, evidence=False)


def test_a_tail_message_other_than_the_head_the_removal_named_is_a_fork() -> None:
    """SPEC 9.5: the re-key that removed s0 from a group named the author chain's head [seq, hash]."""
    n = Net.make(n_subs=2)
    n.subscribe("s0")
    n.subscribe("s1")
    g = n.author.open_group([ident(10).public, ident(11).public])
    n.pump_author()
    for i in range(3):
        n.author.publish(g, b"m%d" % i, n.now)
    n.author.take_changes()
    packets = [o.data for o in n.author.data_to_send() if decode_frame(o.data).kind is Kind.PACKET]
    n.to_sub("s0", packets[0])
    n.author.remove_member(g, ident(10).did)
    n.pump_author()
    assert n.subs["s0"].branch_state(g) is BranchState.CLOSED
    n.to_sub("s0", packets[1])
    key = n.author._branches[g].keys
    epoch0 = min(e for e, p in key if p == 0)
    h = Packet(n.author.channel, g, 0, 3, decode_frame(packets[1]).hash, epoch0, bytes(24))
    body = _crypto.aead_encrypt(key[(epoch0, 0)], bytes(24), bytes((1, 7)) + encode_head(h), b"forked")
    other = encode_frame(h, body, ident(1).sign).raw
    events = n.to_sub("s0", other)
    assert [m for m in events if isinstance(m, MessageReceived)] == []
    assert [(e.reason, e.seq) for e in events if isinstance(e, Rejected)] == [(RejectReason.FORK, 3)]
    assert [m.payload for m in n.to_sub("s0", packets[2]) if isinstance(m, MessageReceived)] == [b"m2"]


def test_the_named_tail_hash_survives_the_store(tmp_path: Path) -> None:
    """Real SQLite: BranchRecord.tail_hash is kept with the tail; a record written before it was kept reads b""."""
    import msgpack

    from streams.core import BranchRecord, Changes
    from streams.identity import Identity
    from streams.keystore import seal_secret
    from streams.store import Store, _keys_ad

    me = Identity.from_seed(b"\x0a" * 32)
    store = Store.create(tmp_path / "s.db", me, "pw", role="subscriber", channel=b"c" * 32,
                         author_did=Identity.from_seed(b"\x01" * 32).did, durable=False, opslimit=1, memlimit=8192)
    rec = BranchRecord(b"b" * 16, 0, 1, b"h" * 32, b"", 1, [(0, b"a" * 32, 3), (1, me.sign_public, 3)],
                       [(0, 0, b"k" * 32)], BranchState.CLOSED.value, tail=7, tail_hash=b"t" * 32)
    store.commit(Changes(branches=[rec]))
    assert [(r.tail, r.tail_hash) for r in store.load_branches()] == [(7, b"t" * 32)]
    raw = store._conn.execute("SELECT rec FROM branches").fetchone()[0]
    v = msgpack.unpackb(raw, raw=False)
    # As the code before wrote it: 14 fields, its keys sealed with those as associated data (a record merely cut
    # short is refused as altered: tests/test_store_tamper.py).
    older = v[:14]
    older[7] = seal_secret(store._key, msgpack.packb([list(k) for k in rec.keys], use_bin_type=True),
                           _keys_ad(rec.id, older))
    store._conn.execute("UPDATE branches SET rec = ?", (msgpack.packb(older, use_bin_type=True),))
    assert [(r.tail, r.tail_hash) for r in store.load_branches()] == [(7, b"")]
    store.close()
