"""The receive path's shortcut for a packet that is simply the next of its chain (``_CoreBase._in_order_packet``),
against the path it stands for (``_handle`` -> ``_on_chain_frame`` -> ``_chain_of`` / ``_accept``).

The shortcut must do exactly what the normal path does with such a packet -- the same events, the same state
changes, the same frames to send -- and decline everything else, changing nothing, so that the normal path
judges it.  Each test runs a core and its twin (a deep copy with the shortcut off) on the same bytes, under
attack (replays, reordering, drops, bit flips, stripped and foreign signatures, frames of other branches and of
another channel, key epochs that change mid-stream, a revoked branch, permission lapses, a peer suspended within a
batch; and what only key holders can make: a forked chain, packets beyond a REVOKE's final head, a packet in a
member's own name), batch by batch, and compares everything after every batch: events, changes, frames sent,
ACKs, offenders, routes, deadlines and every chain's state."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from streams import _crypto
from streams.core import AuthorCore, CoreConfig, SubscriberCore, _CoreBase
from streams.errors import RejectReason
from streams.events import Event, MessageReceived, Rejected
from streams.identity import Identity
from streams.wire import VERSION, Kind, Packet, Permission, SigningMode, decode_frame, encode_frame, encode_head

from .corenet import Net, ident, seeded_rng

C = TypeVar("C", bound=_CoreBase)
#: Something done to a core between frames (the same to its twin): a re-key, a timer.
Action = Callable[[_CoreBase, int], None]


def _copy(core: C, seed: int) -> C:
    """A deep copy of ``core`` (identities are shared: they refuse to be copied) drawing from ``seed``."""
    memo: dict[int, Any] = {id(v): v for v in vars(core).values() if isinstance(v, Identity)}
    twin = copy.deepcopy(core, memo)
    twin._rng = seeded_rng(seed)
    return twin


def _twin(core: _CoreBase) -> _CoreBase:
    """A copy of ``core`` with the shortcut off; both draw the same randomness from now on."""
    twin = _copy(core, 99)
    core._rng = seeded_rng(99)
    twin._packets_in_order = False
    return twin


def _chains(core: _CoreBase) -> list[tuple[object, ...]]:
    out = []
    for bid in sorted(core._branches):
        b = core._branches[bid]
        for p in sorted(b.chains):
            c = b.chains[p]
            out.append((bid, p, b.epoch, b.heard, b.state, c.next_seq, c.head, c.covered,
                        sorted((s, f.raw) for s, f in (c.held or {}).items()), c.gap_to, c.fetch_end, c.deferred,
                        c.progress_ms, c.advanced_ms, c.stalls, c.catch_up_left, c.anchor_wait is None, c.final,
                        c.final_hash, c.notified, c.acked, c.ack_ms, c.quick_acked, c.first_uncovered_ms,
                        c.anchored, c.conflict))
    return out


def _step(core: _CoreBase, batch: list[tuple[bytes, object]], now: int, one_by_one: bool) -> tuple[object, ...]:
    events: list[Event] = []
    if one_by_one:
        for data, peer in batch:
            events.extend(core.receive(data, now, peer))
    else:
        events = core.receive_many(batch, now)
    ch = core.take_changes()
    # (A grant seals keys with libsodium's own randomness: its bytes, and its record's, differ between twins.)
    changes = (ch.log, sorted((c.branch, c.publisher, c.next_seq, c.head, c.covered) for c in ch.chains),
               [repr(r) for r in ch.branches], ch.log_cut, ch.log_drop, ch.anchored)
    out = [(o.data if decode_frame(o.data).kind is not Kind.GRANT else "GRANT", o.peer) for o in core.data_to_send()]
    acks = [(o.data, o.peer) for o in core.take_acks(now)] if isinstance(core, SubscriberCore) else []
    offenders = core.take_offenders()
    routes = core.take_routes() if isinstance(core, AuthorCore) else []
    return events, changes, out, acks, offenders, routes, core.take_deadline(), core._opened, _chains(core)


def _compare(core: _CoreBase, frames: list[tuple[bytes, object] | Action], seed: int, now: int) -> dict[str, int]:
    """Feeds ``frames`` to ``core`` and its twin in random batches (some one frame at a time, some through
    ``receive_many``, with timers between; an action is done to both where it stands), asserting the same
    outcome after each; returns counts that show the run was not vacuous."""
    twin = _twin(core)
    taken = 0
    orig = core._in_order_packet

    def counting(*args: Any) -> bool:
        nonlocal taken
        ok = orig(*args)
        taken += ok
        return ok

    core._in_order_packet = counting  # type: ignore[method-assign]
    rnd = random.Random(seed)
    reasons: dict[str, int] = {}
    delivered = 0
    i = 0
    while i < len(frames):
        if callable(frames[i]):
            act = frames[i]
            i += 1
            act(core, now)
            act(twin, now)
            assert _step(core, [], now, False) == _step(twin, [], now, False)
            continue
        n = rnd.choice((1, 1, 2, 5, 13, 40))
        batch: list[tuple[bytes, object]] = []
        while i < len(frames) and len(batch) < n and not callable(frames[i]):
            batch.append(frames[i])  # type: ignore[arg-type]
            i += 1
        one_by_one = rnd.random() < 0.3
        got = _step(core, batch, now, one_by_one)
        want = _step(twin, batch, now, one_by_one)
        assert got == want, f"the batch before {i} (seed {seed}) differs"
        for e in got[0]:  # type: ignore[attr-defined]
            if isinstance(e, Rejected):
                reasons[e.reason.name] = reasons.get(e.reason.name, 0) + 1
            elif isinstance(e, MessageReceived):
                delivered += 1
        if rnd.random() < 0.35:
            now += rnd.choice((5, 300, 1_000, 2_000))
            assert core.handle_timer(now) == twin.handle_timer(now)
            assert [(o.data, o.peer) for o in core.data_to_send()] == [(o.data, o.peer) for o in twin.data_to_send()]
    return {"taken": taken, "delivered": delivered, **reasons}


def _mutate(genuine: list[bytes], extra: list[bytes], rnd: random.Random, forger: Identity) -> list[bytes]:
    """The genuine frames as a hostile relay passes them on: some dropped, copied, swapped, bit-flipped,
    re-signed by another key or stripped of their signature, with ``extra`` (frames that do not belong) mixed
    in and old frames replayed."""
    out: list[bytes] = []
    late: list[tuple[int, bytes]] = []
    for i, raw in enumerate(genuine):
        while late and late[0][0] <= i:
            out.append(late.pop(0)[1])
        r = rnd.random()
        if r < 0.005:
            continue  # lost (a gap that stays: held frames, FETCHes)
        if r < 0.04:
            late.append((i + rnd.randrange(1, 25), raw))  # late (a gap, filled when it comes)
            late.sort(key=lambda t: t[0])
            continue
        if r < 0.10:
            flipped = bytearray(raw)
            flipped[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
            out.append(bytes(flipped))
        elif r < 0.13:
            f = decode_frame(raw)
            if f.kind is Kind.PACKET:
                out.append(encode_frame(f.head, f.body, forger.sign).raw)
                if f.sig:
                    out.append(encode_frame(f.head, f.body, None).raw)
        out.append(raw)
        if rnd.random() < 0.08:
            out.append(raw)  # a copy at once
        if extra and rnd.random() < 0.08:
            out.append(rnd.choice(extra))
        if out and rnd.random() < 0.04:
            out.append(rnd.choice(out))  # an older one again
    out.extend(raw for _, raw in late)
    for _ in range(len(out) // 12):  # and some neighbours swapped
        j = rnd.randrange(len(out) - 1)
        out[j], out[j + 1] = out[j + 1], out[j]
    return out


def _author_frames(net: Net, to: str) -> list[bytes]:
    """What the author sent since the last call that ``to`` would get (its own frames and broadcasts)."""
    return [o.data for o in net.author.data_to_send() if o.peer in (to, None)]


def _subscriber_world(mode: SigningMode, seed: int) -> tuple[Net, list[bytes], list[bytes]]:
    """s0 subscribed, in a group with s1 and s2; the author's frames for s0 (its branch and the group's, with
    re-keys of both mid-stream and, for odd seeds, its branch revoked at the end), and frames s0 must not accept
    (s1's branch, another channel's)."""
    rnd = random.Random(seed)
    net = Net.make(n_subs=3, config=CoreConfig(signing=mode, checkpoint_every=4))
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    b0 = net.author.branch_of(ident(10).did)
    b1 = net.author.branch_of(ident(11).did)
    assert b0 is not None and b1 is not None
    g = net.author.open_group([s.identity.public for s in net.subs.values()])
    net.pump_author()
    frames: list[bytes] = []
    foreign: list[bytes] = []

    def publish(branch: bytes, n: int) -> None:
        for _ in range(n):
            net.author.publish(branch, rnd.randbytes(rnd.choice((0, 1, 64, 300))), net.now)
        net.author.flush_checkpoints(net.now)

    for round_ in range(3):
        publish(b0, 20)
        publish(g, 5)
        frames.extend(_author_frames(net, "s0"))
        publish(b1, 4)
        foreign.extend(_author_frames(net, "s1"))
        if round_ == 0:
            net.author.set_permission(b0, Permission.READ)  # a re-key of s0's branch
            net.author.set_permission(b0, Permission.READ_WRITE)
        elif round_ == 1:
            net.author.remove_member(g, ident(12).did)  # a re-key of the group
        frames.extend(_author_frames(net, "s0"))
    if seed % 2:
        publish(b0, 3)
        net.author.revoke(b0)
        publish(g, 3)
        frames.extend(_author_frames(net, "s0"))
    other = Net.make(n_subs=1, config=CoreConfig(signing=mode, checkpoint_every=4))
    other.subscribe("s0")
    ob = other.author.branch_of(ident(10).did)
    assert ob is not None
    for _ in range(5):
        other.author.publish(ob, b"another channel", other.now)
    foreign.extend(_author_frames(other, "s0"))
    return net, frames, foreign


@pytest.mark.parametrize("mode", [SigningMode.AMORTIZED, SigningMode.EACH])
@pytest.mark.parametrize("seed", range(6))
def test_subscriber_shortcut_does_what_the_normal_path_does_under_attack(mode: SigningMode, seed: int) -> None:
    net, genuine, foreign = _subscriber_world(mode, seed)
    rnd = random.Random(1000 + seed)
    frames = _mutate(genuine, foreign, rnd, ident(11))
    sub = net.subs["s0"]
    # Signed packets take the shortcut only once the batch's pre-pass confirmed their signatures.
    prepass = mode is SigningMode.AMORTIZED or seed % 3 != 1
    if prepass:
        sub.verify_many = lambda checks: [_holds(c) for c in checks]
    stream: list[tuple[bytes, object] | Action] = [(f, None) for f in frames]
    if seed % 3 == 2:  # (as after a restart: the first frames come while a catch-up window is unanswered)
        stream.insert(0, lambda core, now: core.catch_up(now))  # type: ignore[attr-defined]
    counts = _compare(sub, stream, seed, net.now)
    if prepass:
        assert counts["taken"] > 5 and counts["delivered"] > counts["taken"]
    else:
        assert counts["taken"] == 0 and counts["delivered"] > 20
    assert counts.get("REPLAY", 0) > 0
    assert counts.get("BAD_SIGNATURE", 0) + counts.get("BAD_AEAD", 0) + counts.get("MALFORMED", 0) > 0


def _holds(check: tuple[bytes, bytes, bytes]) -> bool:
    try:
        _crypto.verify(*check)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("seed", range(4))
def test_author_shortcut_charges_peers_as_the_normal_path_does(seed: int) -> None:
    """The author hears members on their own connections and charges each for frames that fail their checks
    (SPEC 10.3): forged packets from one peer suspend it within a batch, the others' packets go on."""
    rnd = random.Random(seed)
    net = Net.make(n_subs=2, config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=4, peer_failures=3))
    net.subscribe("s0")
    net.subscribe("s1")
    sent: dict[str, list[bytes]] = {}
    for name in ("s0", "s1"):
        sub = net.subs[name]
        [b] = sub.branch_ids()
        for _ in range(40):
            sub.publish(b, rnd.randbytes(rnd.choice((1, 80))), net.now)
        sub.flush_checkpoints(net.now)
        sent[name] = [o.data for o in sub.data_to_send()]
    flows = {name: _mutate(frames, sent["s1" if name == "s0" else "s0"], rnd, ident(12))
             for name, frames in sent.items()}
    # A peer that sends a burst of ciphertexts that do not authenticate, each the next of the chain in form.
    tampered = []
    for raw in sent["s1"][:6]:
        f = decode_frame(raw)
        if f.kind is Kind.PACKET:
            tampered.append(encode_frame(f.head, bytes([f.body[0] ^ 1]) + f.body[1:], None).raw)
    half = len(flows["s1"]) // 2
    flows["s1"][half:half] = tampered
    mixed: list[tuple[bytes, object] | Action] = []
    while any(flows.values()):
        name = rnd.choice([n for n, f in flows.items() if f])
        mixed.append((flows[name].pop(0), name))
    # Somewhere in the stream the author takes s0's write permission away and gives it back (its packets signed
    # before are refused from then on: SPEC 11); for odd seeds only once the rest of the stream is in.
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    at = len(mixed) // 3 if seed % 2 == 0 else len(mixed)
    mixed[at:at] = [lambda core, now: core.set_permission(b0, Permission.READ),  # type: ignore[attr-defined]
                    lambda core, now: core.set_permission(b0, Permission.READ_WRITE)]  # type: ignore[attr-defined]
    counts = _compare(net.author, mixed, seed, net.now)
    assert counts["taken"] > 5 and counts["delivered"] > counts["taken"]
    assert counts.get("BAD_AEAD", 0) > 0 and counts.get("REPLAY", 0) > 0
    if seed % 2 == 0:
        assert counts.get("NOT_PERMITTED", 0) > 0


def test_a_packet_that_does_not_authenticate_is_opened_once() -> None:
    """Declined by the shortcut, it is refused by the normal path without a second AEAD attempt (a forged frame
    must cost no more than before, THREATS 8)."""
    net, genuine, _ = _subscriber_world(SigningMode.AMORTIZED, 0)
    sub = net.subs["s0"]
    ordered = []
    for raw in genuine:  # everything up to the first packet of s0's own branch, then that packet altered
        f = decode_frame(raw)
        if f.kind is Kind.PACKET and f.head.branch == net.author.branch_of(ident(10).did):
            ordered.append(encode_frame(f.head, bytes([f.body[0] ^ 1]) + f.body[1:], None).raw)
            ordered.append(raw)
            break
        ordered.append(raw)
    for raw in ordered[:-2]:
        sub.receive(raw, net.now)
    calls = 0
    real = _crypto.aead_decrypt

    def counting(*args: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(*args)

    for one in (True, False):
        twin = _twin(sub) if one else sub
        twin._packets_in_order = True
        _crypto.aead_decrypt = counting  # type: ignore[assignment]
        try:
            calls = 0
            if one:
                ev = twin.receive(ordered[-2], net.now)
            else:
                ev = twin.receive_many([(ordered[-2], None)], net.now)
        finally:
            _crypto.aead_decrypt = real  # type: ignore[assignment]
        assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.BAD_AEAD]
        assert calls == 1
    ev = sub.receive(ordered[-1], net.now)  # the genuine one still goes in
    assert [type(e) for e in ev] == [MessageReceived]


def _forged_own_packet(net: Net, name: str, payload: bytes) -> bytes:
    """A packet on member ``name``'s own chain of its branch, next in line, sealed by the author with the chain's
    key (which it holds: it reads the chain) -- a message in the member's name that the member never sent."""
    sub = net.subs[name]
    [bid] = sub.branch_ids()
    me = sub._branches[bid].me
    seq, head, _ = sub.chain_head(bid, me)
    b = net.author._branches[bid]
    key = b.keys[(b.epoch, me)]
    h = Packet(net.author.channel, bid, me, seq, head, b.epoch, bytes(24))
    body = _crypto.aead_encrypt(key, h.nonce, bytes((VERSION, Kind.PACKET)) + encode_head(h), payload)
    return encode_frame(h, body, None).raw


@pytest.mark.parametrize("closed", [False, True])
def test_what_key_holders_forge_takes_the_normal_path(closed: bool) -> None:
    """Frames only a holder of the keys can make -- the author's chain forked (a stolen key, THREATS 7), its
    packets beyond the head a REVOKE named, a packet in the member's own name -- authenticate, and may be next in
    line: only the link, the closed branch and the own-chain checks refuse them.  The shortcut must leave each to
    the normal path."""
    net = Net.make(n_subs=2, config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=4))
    net.subscribe("s0")
    net.subscribe("s1")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    sub = net.subs["s0"]
    for i in range(6):
        net.author.publish(b0, b"before %d" % i, net.now)
        sub.publish(b0, b"own %d" % i, net.now)
    net.pump_author()
    net.pump_sub("s0")
    assert len([e for e in net.events["s0"] if isinstance(e, MessageReceived)]) == 6
    forged = _forged_own_packet(net, "s0", b"not mine")
    rogue = _copy(net.author, 5)  # the author's keys, elsewhere
    for i in range(3):
        net.author.publish(b0, b"genuine %d" % i, net.now)
    tail = _author_frames(net, "s0")
    if not closed:
        for i in range(3):
            rogue.publish(b0, b"rogue %d" % i, net.now)
        forks = [o.data for o in rogue.data_to_send() if o.peer in ("s0", None)]
        frames = [forks[0], *tail, *forks[1:], forged]
    else:
        rogue = _copy(net.author, 5)
        net.author.revoke(b0)
        closing = _author_frames(net, "s0")
        for i in range(3):
            rogue.publish(b0, b"beyond the close %d" % i, net.now)
        beyond = [o.data for o in rogue.data_to_send() if o.peer in ("s0", None)]
        frames = [*tail, forged, *closing, *beyond]
    counts = _compare(sub, [(f, None) for f in frames], 0, net.now)
    assert counts.get("NOT_MEMBER", 0) == 1
    if closed:
        assert counts.get("CLOSED_BRANCH", 0) >= 3 and counts["delivered"] == 3
    else:
        assert counts.get("BAD_LINK", 0) >= 2 and counts["delivered"] == 3  # (the fork that came first)


def test_a_peer_suspended_within_a_batch_gets_nothing_more_in() -> None:
    """Once a peer's frames failed ``peer_failures`` checks in a batch, its further frames there are refused
    unchecked (SPEC 10.3) -- also those that are next in line and genuine; another peer's are not."""
    net = Net.make(n_subs=2, config=CoreConfig(signing=SigningMode.AMORTIZED, peer_failures=3))
    net.subscribe("s0")
    net.subscribe("s1")
    sent = {}
    for name in ("s0", "s1"):
        sub = net.subs[name]
        [b] = sub.branch_ids()
        for i in range(10):
            sub.publish(b, b"%s %d" % (name.encode(), i), net.now)
        sub.flush_checkpoints(net.now)
        sent[name] = [f for f in (o.data for o in sub.data_to_send()) if decode_frame(f).kind is Kind.PACKET]
    ahead = []  # ciphertexts altered, of packets ahead of the cursor (held frames are authenticated first)
    for raw in sent["s1"][6:9]:
        f = decode_frame(raw)
        ahead.append(encode_frame(f.head, bytes([f.body[0] ^ 1]) + f.body[1:], None).raw)
    batch: list[tuple[bytes, object]] = [(a, "s1") for a in ahead]
    batch += [(sent["s1"][0], "s1"), (sent["s0"][0], "s0"), (sent["s1"][1], "s1"), (sent["s0"][1], "s0")]
    twin = _twin(net.author)
    got, want = _step(net.author, batch, net.now, False), _step(twin, batch, net.now, False)
    assert got == want
    outcome = [(type(e).__name__, getattr(e, "reason", None)) for e in got[0]]  # type: ignore[index]
    assert outcome == [("Rejected", RejectReason.BAD_AEAD)] * 3 + [("Rejected", RejectReason.SUSPENDED),
                                                                   ("MessageReceived", None)] * 2
