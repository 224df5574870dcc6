"""Grant entry hints (SPEC 8.5, SPEC 15, THREATS 1) attacked from the wire: an observer who knows every DID and every
public key -- and an insider, a member of the channel with its own secret keys -- cannot tell whose entry is whose
in any GRANT; the members can.  The author agrees one key per member and keeps it for groups' members (a group's
re-key agrees none), and GRANTs written with the legacy hint (kept in stores and grant histories) still open.  Two
cores wired without sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streams import _crypto
from streams.core import _hint, _hint_key, _legacy_hint
from streams.errors import VerificationError
from streams.events import Granted, Rejected, Subscribed
from streams.identity import Identity
from streams.wire import GrantEntry, Kind, decode_frame, decode_grant_body, encode_frame, encode_grant_body
from tests.corenet import Net, ident


def _member_hint(member: Identity, author: Identity, channel: bytes, branch: bytes, epoch: int) -> bytes:
    """The hint ``member`` looks for, computed as a member does: from its own secret and the author's public key."""
    return _hint(_hint_key(member, author.kx_public, author.kx_public, member.kx_public), channel, branch, epoch)


def _grants(net: Net) -> list[bytes]:
    out: list[bytes] = []
    for who, data in net.wire:
        if who == "author" and decode_frame(data).kind is Kind.GRANT and data not in out:
            out.append(data)
    return out


def test_an_observer_with_every_did_and_public_key_cannot_match_grant_entries_to_members() -> None:
    """Four subscribers, each with its own branch; a group of three, one of them then removed (its entry a
    `removal`); the fourth's branch re-keyed twice.  The observer holds every DID (the author's too), so every
    Ed25519 and X25519 public key, the channel and every GRANT's cleartext head.  It computes each candidate's hint
    by the legacy rule and by the keyed rule with every key it can make -- keys from public values, and its own
    agreement with each key (it has an identity of its own) -- and so does an insider, the fourth subscriber, with
    its secret key, for every other member: nothing matches.  The members' own hints, from their secrets, find
    exactly their entries (positive control: the same GRANTs, the same matching)."""
    net = Net.make(n_subs=4)
    for name in net.subs:
        net.subscribe(name)
    author, members = ident(1), [ident(10 + i) for i in range(4)]
    own = {m.did: next(e.branch for e in net.events[f"s{i}"] if isinstance(e, Subscribed))
           for i, m in enumerate(members)}
    g = net.author.open_group([m.public for m in members[:3]])
    net.pump_author()
    net.author.remove_member(g, members[2].did)
    net.pump_author()
    net.lapse_write(own[members[3].did])
    grants = _grants(net)
    assert len(grants) == 4 + 2 + 2  # each own branch's, the group's two, the two re-keys

    outsider, insider = ident(99), members[3]
    everyone = [author, *members]
    akx = author.kx_public
    seen: list[bytes] = []
    for data in grants:
        f = decode_frame(data)
        c, b, e = f.head.channel, f.head.branch, f.head.epoch
        hints = [x.hint for x in decode_grant_body(f.body)[1]]
        seen += hints
        guesses: set[bytes] = set()
        for p in everyone:
            kx = p.kx_public
            guesses.add(_legacy_hint(b, e, kx))
            public_keys: list[bytes] = [kx, akx, _crypto.hash32(_crypto.P_HINTKEY, akx, kx),
                                        _crypto.hash32(_crypto.P_HINTKEY, kx, akx),
                                        _crypto.hash32(_crypto.P_HINTKEY, akx, akx, kx)]
            public_keys += [_hint_key(outsider, kx, akx, kx), _hint_key(outsider, akx, akx, kx)]
            if p != insider:
                public_keys += [_hint_key(insider, kx, akx, kx), _hint_key(insider, akx, akx, kx)]
            guesses |= {_hint(k, c, b, e) for k in public_keys}
        assert guesses.isdisjoint(hints), f"GRANT of epoch {e}: an entry matched a public guess"

        found = {m.did for m in members if _member_hint(m, author, c, b, e) in hints}
        if b == g:
            assert found == {m.did for m in members[:3]}  # the removed member's `removal` entry included
        else:
            assert found == {did for did, mine in own.items() if mine == b}
        assert len(hints) == len(found)  # every entry is one member's, found by that member alone
    assert len(set(seen)) == len(seen)  # no hint repeats: one member's entries share nothing visible


def test_the_author_agrees_one_key_per_member_and_each_member_one_with_the_author(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 8.5: the hint key depends on the pair alone.  Each X25519 agreement, by whom: the author one per member
    at its first grant, and one more when a group first lists it (the author keeps the hint keys of groups' members
    only: kept for every per-subscriber branch, they were about 180 bytes of each idle branch's 2 KiB), each member
    one with the author -- and none for a member removed from the group, for the group's re-keys or for re-keys of
    a member's branch once a group listed it."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bytes] = _crypto.x25519

    def counting(secret: bytes, public: bytes) -> bytes:
        calls.append(public)
        return real(secret, public)

    monkeypatch.setattr(_crypto, "x25519", counting)
    net = Net.make(n_subs=3)
    for name in net.subs:
        net.subscribe(name)
    members = [ident(10 + i) for i in range(3)]
    akx = ident(1).kx_public
    assert sorted(calls) == sorted([m.kx_public for m in members] + [akx] * 3)
    calls.clear()
    g = net.author.open_group([m.public for m in members])
    net.pump_author()
    assert sorted(calls) == sorted(m.kx_public for m in members)
    calls.clear()
    net.author.remove_member(g, members[0].did)
    net.pump_author()
    net.lapse_write(next(e.branch for e in net.events["s1"] if isinstance(e, Subscribed)))
    assert len(_grants(net)) == 3 + 2 + 2
    assert calls == []


def test_a_grant_written_with_the_legacy_hint_still_opens() -> None:
    """SPEC 8.5: GRANTs an author wrote before the keyed hint -- kept in its store and grant history, sent again to
    a member that asks -- carry the legacy hint: the member still finds its entry and opens the grant."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    author, me, other = ident(1), ident(10), ident(11)
    g = net.author.open_group([me.public, other.public])
    [new] = {o.data for o in net.author.data_to_send()  # (one copy per route; not delivered)
             if decode_frame(o.data).kind is Kind.GRANT and decode_frame(o.data).head.branch == g}
    f = decode_frame(new)
    shared, entries = decode_grant_body(f.body)
    assert shared is not None
    legacy = []
    for e in entries:
        [who] = [m for m in (me, other) if _member_hint(m, author, f.head.channel, g, 0) == e.hint]
        legacy.append(GrantEntry(_legacy_hint(g, 0, who.kx_public), e.sealed))
    old = encode_frame(f.head, encode_grant_body(shared, legacy), author.sign).raw
    events = net.to_sub("s0", old)
    assert [e for e in events if isinstance(e, Rejected)] == []
    assert [(e.branch, e.epoch) for e in events if isinstance(e, Granted)] == [(g, 0)]
    assert g in net.subs["s0"].branch_ids()


@pytest.mark.xfail(strict=True, reason=(
    "design limit (SPEC 15): a member signs some frames of its branches with its DID's Ed25519 key -- FETCH, ACK, "
    "HEAD, CHECKPOINT, UNSUBSCRIBE, and its PACKETs in signed-each mode -- and a signature is verifiable by anyone "
    "with the frame and the key: an observer with every DID links those branches to their members, keyed hints "
    "or not"))
def test_an_observer_with_every_did_cannot_link_a_branch_to_a_member_by_its_signed_frames() -> None:
    """SPEC 15 says the set of subscribers is not visible on the wire, even to an observer who knows every
    candidate DID.  The keyed hint keeps GRANT entries from telling it; but a member's own frames carry its
    signature over a digest anyone computes from the frame (SPEC 6.3): the observer checks each signed frame a
    member sends against every candidate DID's key.  Here a member publishes on its own branch (signed-each, the
    default) and fetches a group message it missed (every member does, on a gap): the observer must link neither
    its branch nor the group to it."""
    net = Net.make(n_subs=3)
    for name in net.subs:
        net.subscribe(name)
    members = [ident(10 + i) for i in range(3)]
    own = next(e.branch for e in net.events["s0"] if isinstance(e, Subscribed))
    g = net.author.open_group([m.public for m in members[:2]])
    net.pump_author()
    net.author.publish(g, b"to the group", net.now)
    net.author.take_changes()
    net.author.data_to_send()  # (lost on the way: s0 fetches it)
    net.subs["s0"].publish(own, b"from s0", net.now)
    net.subs["s0"].request_fetch(g, 0, 1, 1)
    net.pump_sub("s0")

    linked: dict[bytes, set[str]] = {}
    for who, data in net.wire:
        f = decode_frame(data)
        if who == "author" or not f.sig:
            continue
        for m in members:
            try:
                m.public.verify(f.hash, f.sig)
            except VerificationError:
                continue
            linked.setdefault(f.head.branch, set()).add(m.did)
    # (Both are: the branch to s0 by its PACKET's signature, the group to s0 and s1 by their FETCHes'.)
    assert {b: linked.get(b) for b in (own, g)} == {own: None, g: None}
