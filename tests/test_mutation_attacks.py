"""Attacks that deliberate vulnerabilities (mutation testing) got past the rest of the suite.

Each test attacks one security property the way an insider or a relay would, with real cores, real PyNaCl and
only what the attacker holds: frames it saw on the wire and the grant entries its own identity opens.
"""

from __future__ import annotations

from streams import _crypto
from streams.core import CoreConfig
from streams.errors import DecodeError, VerificationError
from streams.events import Acknowledged, Covered, FetchRequested, Granted, MessageReceived, Rejected
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import (
    Ack,
    Fetch,
    Grant,
    Kind,
    Permission,
    SigningMode,
    decode_frame,
    decode_grant_body,
    decode_grant_key,
    decode_grant_removal,
    encode_frame,
)

from .corenet import Net, ident


def _keys_held(net: Net, who: Identity) -> list[bytes]:
    """Every chain key ``who`` can take out of the grants it saw on the wire (all of them: a relay shows it every
    frame): what an insider holds, whatever its own core does with it."""
    keys: list[bytes] = []
    for _sender, data in net.wire:
        f = decode_frame(data)
        if f.kind is not Kind.GRANT:
            continue
        _shared, entries = decode_grant_body(f.body)
        for e in entries:
            try:
                plain = who.unseal(e.sealed)
            except VerificationError:
                continue
            try:
                k = decode_grant_key(plain)
            except DecodeError:
                decode_grant_removal(plain)  # the re-key that removed it tells it the head, and holds no key
                continue
            keys += [key for _p, key in k.keys if key not in keys]
    return keys


def _opens(keys: list[bytes], data: bytes) -> list[bytes]:
    f = decode_frame(data)
    out = []
    for k in keys:
        try:
            out.append(_crypto.aead_decrypt(k, f.head.nonce, f.aad, f.body))
        except VerificationError:
            continue
    return out


def _author_packets(net: Net, branch: bytes) -> list[bytes]:
    return [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.PACKET
            and decode_frame(d).head.branch == branch]


def test_a_provider_cannot_decrypt_another_providers_branch_with_the_keys_it_was_granted() -> None:
    """Segregation (THREATS 1): each branch has keys of its own.  s1, a member of its own branch, records every
    frame of s0's branch on the wire and tries every key its grants gave it: none opens them.  (Kills the mutant
    that derives the chain keys from the channel and publisher index: one key for every branch.)"""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    b0, b1 = net.author.branch_of(ident(10).did), net.author.branch_of(ident(11).did)
    assert b0 is not None and b1 is not None and b0 != b1
    for b in (b0, b1):
        net.author.publish(b, b"alert for " + b.hex().encode(), net.now)
    net.pump_author()
    s1_keys = _keys_held(net, ident(11))
    assert s1_keys  # it holds its own branch's keys ...
    assert [_opens(s1_keys, d) for d in _author_packets(net, b1)] == [[b"alert for " + b1.hex().encode()]]
    foreign = _author_packets(net, b0)
    assert foreign and all(_opens(s1_keys, d) == [] for d in foreign)  # ... and none of s0's


def test_a_member_removed_from_a_group_cannot_decrypt_what_is_published_after_with_its_old_keys() -> None:
    """THREATS 6: removal re-keys the group.  The removed member records the next broadcast and tries every key
    it ever held: none opens it (its own core closing the group is no protection against its owner).  (Kills the
    mutant whose re-key keeps the old key.)"""
    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    g = net.author.open_group([s.identity.public for s in net.subs.values()])
    net.pump_author()
    net.author.publish(g, b"before", net.now)
    net.pump_author()
    old = _keys_held(net, ident(12))
    assert [_opens(old, d) for d in _author_packets(net, g)] == [[b"before"]]
    net.author.remove_member(g, ident(12).did)
    net.pump_author()
    net.author.publish(g, b"after removal", net.now)
    net.pump_author()
    after = _author_packets(net, g)[1:]
    assert after and all(_opens(_keys_held(net, ident(12)), d) == [] for d in after)
    assert [_opens(_keys_held(net, ident(10)), d) for d in after] == [[b"after removal"]]  # members still read


def test_a_checkpoint_whose_signature_was_tampered_with_is_rejected_and_covers_nothing() -> None:
    """THREATS 2 (amortized signing): a CHECKPOINT is what signs the unsigned packets before it.  A relay flips a
    bit of its signature: the subscriber refuses it BAD_SIGNATURE and reports nothing covered; the genuine one is
    then accepted.  (Kills the mutant that skips the Ed25519 check of checkpoints.)"""
    net = Net.make(n_subs=1, config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=3))
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    for i in range(3):
        net.author.publish(b0, b"p%d" % i, net.now)
    net.author.take_changes()
    outs = [o.data for o in net.author.data_to_send()]
    frames = [decode_frame(d) for d in outs]
    assert [f.kind for f in frames] == [Kind.PACKET] * 3 + [Kind.CHECKPOINT]
    s = net.subs["s0"]
    for d in outs[:3]:
        assert [m.payload for m in s.receive(d, net.now) if isinstance(m, MessageReceived)]
    cp = frames[3]
    sig = bytearray(cp.sig)
    sig[7] ^= 1
    forged = encode_frame(cp.head, cp.body, lambda _h: bytes(sig)).raw
    ev = s.receive(forged, net.now)
    assert [r.reason.name for r in ev if isinstance(r, Rejected)] == ["BAD_SIGNATURE"]
    assert [e for e in ev if isinstance(e, Covered)] == []
    ev = s.receive(outs[3], net.now)
    assert [e.through_seq for e in ev if isinstance(e, Covered)] == [4]


def test_a_write_only_member_fetching_the_authors_chain_is_refused() -> None:
    """THREATS 1: a member without read permission may not have the author's chain served to it.  It signs a
    FETCH of the author's chain (publisher 0) with its own key: refused NOT_PERMITTED, nothing served.  (Kills the
    mutant that skips the FETCH permission check.)"""
    net = Net.make(policy=AllowList.of([ident(10).did], Permission.WRITE), n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    for i in range(3):
        net.author.publish(b0, b"secret %d" % i, net.now)
    net.pump_author()
    fetch = encode_frame(Fetch(net.author.channel, b0, 0, 1, 3, 1), b"", ident(10).sign).raw
    ev = net.author.receive(fetch, net.now, "s0")
    assert [r.reason.name for r in ev if isinstance(r, Rejected)] == ["NOT_PERMITTED"]
    assert [e for e in ev if isinstance(e, FetchRequested)] == []


def test_a_write_only_members_ack_of_the_authors_chain_is_refused_and_counts_for_nothing() -> None:
    """THREATS 4: an ACK says the acker holds the message on disk; a member that may not read the author's chain
    refuses its packets and holds none.  It signs an ACK of the author's latest message anyway (the hash is on
    the wire): refused NOT_PERMITTED, no Acknowledged, and the author's chain counts as acknowledged by nobody.
    (Kills the mutant that drops the ACK read-permission check.)"""
    net = Net.make(policy=AllowList.of([ident(10).did], Permission.WRITE), n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    for i in range(2):
        net.author.publish(b0, b"secret %d" % i, net.now)
    net.pump_author()
    last = decode_frame(_author_packets(net, b0)[-1])
    ack = encode_frame(Ack(net.author.channel, b0, 0, last.head.seq, last.hash, 1), b"", ident(10).sign).raw
    ev = net.author.receive(ack, net.now, "s0")
    assert [r.reason.name for r in ev if isinstance(r, Rejected)] == ["NOT_PERMITTED"]
    assert [e for e in ev if isinstance(e, Acknowledged)] == []
    assert net.author.acknowledged(b0) == 0


def test_a_rekey_grant_that_does_not_link_to_the_current_grant_is_refused() -> None:
    """SPEC 8.5 / THREATS 7: each GRANT links to the branch's previous one.  An epoch-1 GRANT signed by the
    author's key but linked elsewhere (a forked grant history: an author restored from a stale copy that re-keyed
    again, or its key used by another holder) must not replace the member's keys; the genuine one then applies.
    (Kills the mutant whose subscriber checks only the epoch of a re-key, not its ``prev`` link.)"""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    net.author.set_permission(b0, Permission.READ)
    net.author.take_changes()
    [real] = [decode_frame(o.data) for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.GRANT]
    g = real.head
    assert g.epoch == 1
    forked = encode_frame(Grant(g.channel, g.branch, g.epoch, bytes(32), g.mode), real.body, ident(1).sign).raw
    s = net.subs["s0"]
    ev = s.receive(forked, net.now)
    assert [r.reason.name for r in ev if isinstance(r, Rejected)] == ["STALE_EPOCH"]
    assert [e for e in ev if isinstance(e, Granted)] == []
    ev = s.receive(real.raw, net.now)
    assert [(e.epoch, e.permission) for e in ev if isinstance(e, Granted)] == [(1, Permission.READ)]
