"""A batch's Ed25519 signature checks on several threads (``streams._parallel``, the cores' ``verify_many``
hook): the same verdicts and events as one check at a time, under attack.

The attack batches mix genuine frames with forged signatures (bit flips, a signature by another member's key,
a stripped signature), replays, a foreign branch's frame, a truncated frame and reordering; a subscriber fed
the batch through :meth:`SubscriberCore.receive_many` with a two-thread verifier must end in exactly the state
and events of its twin fed the same frames one at a time."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streams._parallel import Parallel, holds
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import SignatureCheck
from streams.errors import LocalProtocolError, RejectReason
from streams.events import Event, MessageReceived, Rejected
from streams.policy import AllowList
from streams.wire import decode_frame, encode_frame

from .corenet import Net, ident

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)


def _checks(n: int, seed: int) -> list[SignatureCheck]:
    """Genuine checks and broken ones (bit-flipped signature, wrong key, short signature, flipped digest)."""
    rnd = random.Random(seed)
    ids = [ident(40 + i) for i in range(3)]
    out: list[SignatureCheck] = []
    for i in range(n):
        who = ids[i % 3]
        digest = rnd.randbytes(32)
        sig = who.sign(digest)
        kind = 0 if i % 2 == 0 else 1 + (i // 2 + seed) % 4
        if kind == 1:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        elif kind == 2:
            who = ids[(i + 1) % 3]
        elif kind == 3:
            sig = sig[:63]
        elif kind == 4:
            digest = bytes([digest[0] ^ 0x80]) + digest[1:]
        out.append((who.sign_public, digest, sig))
    return out


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_verifier_gives_the_verdicts_of_single_checks(threads: int) -> None:
    v = Parallel(threads)
    try:
        for seed, n in ((1, 1), (2, 3), (3, 4), (4, 57), (5, 400)):
            checks = _checks(n, seed)
            want = [holds(c) for c in checks]
            assert (True in want and False in want) or n < 2
            assert v.verify_many(checks) == want
    finally:
        v.close()
    # closed: still correct, on the calling thread alone
    checks = _checks(50, 9)
    assert v.threads == 0
    assert v.verify_many(checks) == [holds(c) for c in checks]


def test_an_error_on_any_thread_reaches_the_caller() -> None:
    v = Parallel(1)

    def boom(x: int) -> int:
        if x == 37:
            raise ValueError("item 37")
        return x * 2

    try:
        with pytest.raises(ValueError, match="item 37"):
            v.map(boom, list(range(200)))
        assert v.map(boom, list(range(30))) == [x * 2 for x in range(30)]  # the pool still works
    finally:
        v.close()


def test_verifier_refuses_a_negative_thread_count() -> None:
    with pytest.raises(ValueError):
        Parallel(-1)


def _twin_nets() -> tuple[Net, Net]:
    """Two worlds built alike.  Sealing uses fresh randomness, so their bytes differ, but the same attack built
    in each (:func:`_attack_batch`) must lead to the same events, message for message."""
    nets = []
    for _ in range(2):
        n = Net.make()
        for s in ("s0", "s1"):
            n.subscribe(s)
        nets.append(n)
    return nets[0], nets[1]


def _branch(net: Net, name: str) -> bytes:
    from streams.events import Granted

    [g] = [e for e in net.events[name] if isinstance(e, Granted)]
    return g.branch


def _summary(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, MessageReceived):
            out.append(("msg", e.seq, e.payload, e.signed))
        elif isinstance(e, Rejected):
            out.append(("rejected", e.reason, e.seq))
        else:
            out.append((type(e).__name__,))
    return out


def _attack_batch(net: Net) -> list[bytes]:
    """40 genuine frames of s0's branch with forgeries, replays, a foreign frame and reordering mixed in."""
    b0, b1 = _branch(net, "s0"), _branch(net, "s1")
    for i in range(40):
        net.author.publish(b0, f"payment {i}".encode(), net.now)
    genuine = [o.data for o in net.author.data_to_send()]
    net.author.publish(b1, b"for s1 only", net.now)
    [foreign] = [o.data for o in net.author.data_to_send()]
    s1_key = ident(11)
    batch: list[bytes] = []
    for i, raw in enumerate(genuine):
        f = decode_frame(raw)
        if i % 5 == 0:  # a bit-flipped signature, ahead of the genuine frame
            batch.append(encode_frame(f.head, f.body, lambda _h, s=f.sig: bytes([s[0] ^ 4]) + s[1:]).raw)
        if i % 7 == 3:  # re-signed by another member: a valid signature, by the wrong key
            batch.append(encode_frame(f.head, f.body, s1_key.sign).raw)
        if i % 11 == 5:  # stripped
            batch.append(encode_frame(f.head, f.body, None).raw)
        if i == 20:
            batch.append(foreign)
            batch.append(raw[:-9])
        batch.append(raw)
        if i % 6 == 2:
            batch.append(raw)  # replayed at once
    batch[30], batch[31] = batch[31], batch[30]  # and two frames swapped
    batch.append(genuine[3])  # an old one again
    return batch


def test_batch_under_attack_gives_the_events_of_frame_by_frame() -> None:
    par, seq = _twin_nets()
    batch_p, batch_s = _attack_batch(par), _attack_batch(seq)
    assert len(batch_p) == len(batch_s)
    calls: list[int] = []
    verifier = Parallel(1)

    def hook(checks: list[SignatureCheck]) -> list[bool]:
        calls.append(len(checks))
        return verifier.verify_many(checks)

    sub_p, sub_s = par.subs["s0"], seq.subs["s0"]
    sub_p.verify_many = hook
    try:
        got = sub_p.receive_many([(d, None) for d in batch_p], par.now)
    finally:
        verifier.close()
    want: list[Event] = []
    for d in batch_s:
        want.extend(sub_s.receive(d, seq.now))
    assert calls and calls[0] > 40  # the parallel path ran, on the whole batch
    assert _summary(got) == _summary(want)
    delivered = [e.payload for e in got if isinstance(e, MessageReceived)]
    assert delivered == [f"payment {i}".encode() for i in range(40)]
    reasons = {e.reason for e in got if isinstance(e, Rejected)}
    assert RejectReason.BAD_SIGNATURE in reasons and RejectReason.REPLAY in reasons
    cp, cs = sub_p.take_changes(), sub_s.take_changes()
    assert [(r.seq, len(r.frame)) for r in cp.log] == [(r.seq, len(r.frame)) for r in cs.log]
    assert [(c.next_seq, c.covered) for c in cp.chains] == [(c.next_seq, c.covered) for c in cs.chains]
    assert sub_p._verified == set()  # nothing confirmed outlives its batch


def test_a_hook_that_confirms_nothing_changes_nothing() -> None:
    # Only what the hook confirms is skipped: a hook that says "no" to everything costs a second check,
    # never a message.
    par, seq = _twin_nets()
    par.subs["s0"].verify_many = lambda checks: [False] * len(checks)
    got = par.subs["s0"].receive_many([(d, None) for d in _attack_batch(par)], par.now)
    want: list[Event] = []
    for d in _attack_batch(seq):
        want.extend(seq.subs["s0"].receive(d, seq.now))
    assert _summary(got) == _summary(want)


def test_a_hook_that_raises_leaves_nothing_of_its_batch_behind() -> None:
    """What the pre-pass opened and confirmed is for its batch only, also when the hook raises (a helper pool
    shut down under it).  Left behind, the opened payloads, keyed by the ids of frames that are gone (CPython
    reuses them for the next frames decoded), could hand a later frame of the same key another's payload."""
    net, _ = _twin_nets()
    b0 = _branch(net, "s0")
    payloads = [f"payment {i}".encode() for i in range(64)]
    for p in payloads:
        net.author.publish(b0, p, net.now)
    frames = [o.data for o in net.author.data_to_send()]
    sub = net.subs["s0"]

    def broken(checks: list[SignatureCheck]) -> list[bool]:
        raise RuntimeError("the helper pool is gone")

    sub.verify_many = broken
    raised = False
    try:  # not pytest.raises: its traceback would keep the batch's frames, and their ids, alive
        sub.receive_many([(d, None) for d in frames], net.now)
    except RuntimeError:
        raised = True
    assert raised
    # Nothing of the failed batch is left to be matched by a later frame (white-box: whether an id is reused
    # soon depends on the allocator, so the check below alone would not catch stale entries reliably).
    assert not sub._opened and not sub._verified
    sub.verify_many = None
    got: list[bytes] = []
    for _ in range(3):  # the same frames one at a time (replays after the first round), then in batches
        for d in frames:
            got.extend(e.payload for e in sub.receive(d, net.now) if isinstance(e, MessageReceived))
    assert got == payloads


def test_the_core_asks_for_the_exact_key_digest_and_signature_of_each_frame() -> None:
    # A confirmation covers one (key, digest, signature) triple: the key is the one the chain's publisher has
    # now, the signature the frame's own -- a forgery is asked about as what it is.
    net, _ = _twin_nets()
    b0 = _branch(net, "s0")
    net.author.publish(b0, b"genuine", net.now)
    net.author.publish(b0, b"second", net.now)
    f1, f2 = (decode_frame(o.data) for o in net.author.data_to_send())
    forged = decode_frame(encode_frame(f1.head, f1.body, ident(11).sign).raw)
    author_pk = net.author.identity.sign_public
    asked: list[SignatureCheck] = []

    def recording(checks: list[SignatureCheck]) -> list[bool]:
        asked.extend(checks)
        return [holds(c) for c in checks]

    net.subs["s0"].verify_many = recording
    ev = net.subs["s0"].receive_many([(forged.raw, None), (f1.raw, None), (f2.raw, None)], net.now)
    assert asked == [(author_pk, f1.hash, forged.sig), (author_pk, f1.hash, f1.sig), (author_pk, f2.hash, f2.sig)]
    assert [e.payload for e in ev if isinstance(e, MessageReceived)] == [b"genuine", b"second"]
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]


async def test_subscriber_checks_bursts_on_helper_threads(tmp_path: Path) -> None:
    # Through the asyncio API: a burst with forged copies ahead of the genuine frames arrives as one batch; the
    # forgeries are refused, every genuine message arrives once, in order; the helper count is the party's.
    hub = MemoryHub()
    author_id, p1 = ident(1), ident(2)
    author = await Author.create(tmp_path / "a.db", author_id, "monitor", "pw", hub.author_endpoint(),
                                 AllowList.of([p1.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "s.db", p1, author_id.did, author.channel, "pw",
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=5)
        with pytest.raises(LocalProtocolError):
            sub.crypto_threads = -1
        sub.crypto_threads = 2
        assert sub.crypto_threads == 2
        sizes: list[int] = []
        real = sub._parallel

        def counting(checks: list[SignatureCheck]) -> list[bool]:
            sizes.append(len(checks))
            return real.verify_many(checks)

        sub._core.verify_many = counting
        # Hold p1's frames back (a relay), then hand them over in one burst with forgeries in front.
        p1_transport = hub._subs.pop("p1")
        relay = hub.subscriber_endpoint("relay")
        seqs = await author.publish_many(branch, [f"event {i}".encode() for i in range(64)])
        frames = [relay.inbox.get_nowait()[0] for _ in range(relay.inbox.qsize())]
        del hub._subs["relay"]
        hub._subs["p1"] = p1_transport
        assert len(frames) == 64
        for i, raw in enumerate(frames):
            f = decode_frame(raw)
            if i % 4 == 0:
                bad = encode_frame(f.head, f.body, lambda _h, s=f.sig: s[:10] + bytes([s[10] ^ 1]) + s[11:]).raw
                hub.inject("p1", bad)
            hub.inject("p1", raw)
        got: list[MessageReceived] = []
        while len(got) < 64:
            got.extend(await sub.next_messages(256, timeout=5))
        assert [m.seq for m in got] == seqs
        assert [m.payload for m in got] == [f"event {i}".encode() for i in range(64)]
        assert max(sizes) == 80  # one batch: 64 genuine signatures and 16 forged ones, checked up front
        rejected = [e for e in sub.pending_events() if isinstance(e, Rejected)]
        assert [e.reason for e in rejected] == [RejectReason.BAD_SIGNATURE] * 16
    finally:
        await sub.close()
        await author.close()


def test_parties_share_one_pool_of_helpers() -> None:
    # A host process runs many parties (chaos/flood.py: hundreds per process): helpers must not grow with them.
    import threading

    def helpers() -> int:
        return sum(t.name.startswith("streams-ed25519") for t in threading.enumerate())

    checks = _checks(40, 3)
    want = [holds(c) for c in checks]
    parties = [Parallel(1) for _ in range(30)]
    before = helpers()
    for p in parties:
        assert p.verify_many(checks) == want
    assert helpers() - before <= 1
    assert helpers() >= 1


def test_sparse_signatures_stay_on_the_loop_thread() -> None:
    # An amortized stream (a signed checkpoint per 32 packets): too little signature work in a batch to hand
    # any of it to a helper; the checkpoints are checked inline and every packet still arrives.
    from streams.core import CoreConfig
    from streams.wire import SigningMode

    net = Net.make(config=CoreConfig(signing=SigningMode.AMORTIZED))
    net.subscribe("s0")
    b0 = _branch(net, "s0")
    net.author.publish_many(b0, [b"p%d" % i for i in range(96)], net.now)
    frames = [o.data for o in net.author.data_to_send()]
    assert sum(bool(decode_frame(f).sig) for f in frames) == 3  # three checkpoints
    asked: list[int] = []
    net.subs["s0"].verify_many = lambda checks: asked.append(len(checks)) or [holds(c) for c in checks]
    ev = net.subs["s0"].receive_many([(f, None) for f in frames], net.now)
    assert asked == []
    assert [e.payload for e in ev if isinstance(e, MessageReceived)] == [b"p%d" % i for i in range(96)]


def test_forged_and_replayed_frames_never_reach_the_signature_hook() -> None:
    # THREATS 8: cheap rejections come before any signature check.  Frames whose ciphertext does not
    # authenticate (an outsider's forgery), replays of accepted positions and frames of unknown branches are
    # never handed to the hook -- a forged batch costs what it cost frame by frame.
    net, _ = _twin_nets()
    b0 = _branch(net, "s0")
    for i in range(30):
        net.author.publish(b0, b"m%d" % i, net.now)
    genuine = [o.data for o in net.author.data_to_send()]
    s0 = net.subs["s0"]
    s0.receive_many([(d, None) for d in genuine[:10]], net.now)  # 1..10 accepted: replays from now on
    asked: list[SignatureCheck] = []

    def recording(checks: list[SignatureCheck]) -> list[bool]:
        asked.extend(checks)
        return [holds(c) for c in checks]

    s0.verify_many = recording
    forged = []
    for raw in genuine[10:20]:
        f = decode_frame(raw)
        body = bytes([f.body[0] ^ 1]) + f.body[1:]
        forged.append(encode_frame(f.head, body, lambda _h, s=f.sig: s).raw)  # AEAD fails; signature kept
    foreign = [o.data for o in _foreign_frames(net)]
    batch = forged + genuine[:10] + foreign + genuine[10:]
    ev = s0.receive_many([(d, None) for d in batch], net.now)
    assert sorted(c[1] for c in asked) == sorted(decode_frame(d).hash for d in genuine[10:])
    assert [e.payload for e in ev if isinstance(e, MessageReceived)] == [b"m%d" % i for i in range(10, 30)]
    reasons = [e.reason for e in ev if isinstance(e, Rejected)]
    assert reasons.count(RejectReason.BAD_AEAD) == 10 and reasons.count(RejectReason.REPLAY) == 10


def _foreign_frames(net: Net) -> list[object]:
    """Frames of s1's branch: s0 is not a member."""
    b1 = _branch(net, "s1")
    for i in range(5):
        net.author.publish(b1, b"other %d" % i, net.now)
    return list(net.author.data_to_send())


def _helper_takes_a_share() -> bool:
    """Whether a helper thread takes items of a batch: the caller's first item waits (up to 20 s) until one does."""
    import threading

    me = threading.get_ident()
    helped = threading.Event()

    def item(x: int) -> int:
        if threading.get_ident() != me:
            helped.set()
        elif x == 0:
            helped.wait(20)
        return x

    assert Parallel(1).map(item, list(range(64))) == list(range(64))
    return helped.is_set()


def test_a_forked_child_gets_helpers_of_its_own() -> None:
    # An application that forks after a party ran (a pre-fork server, multiprocessing's default start method on
    # Linux) hands its child the process-wide pool without its thread.  The child's batches queued their helpers'
    # work on that dead pool: it never ran, and every batch stayed referenced from the queue (a leak of every
    # received batch's checks and verdicts for the child's life), with no helper ever sharing the work.
    import os
    import warnings

    assert _helper_takes_a_share()  # the pool exists in this process, its thread started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12: a fork of a process with threads)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if _helper_takes_a_share() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's batches got no helper"
