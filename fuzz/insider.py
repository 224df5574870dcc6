"""Structure-aware inputs for the core harnesses: frames made *and signed* by a party that holds real keys.

Byte-level mutation of a signed frame almost never survives the signature check, so it cannot reach the
logic behind it.  But that logic faces signed input in real life: a member signs whatever it likes with its
own key, and encrypts under its own chain key (THREATS: the network and relays are untrusted, and an admitted
subscriber is not trusted either).  These harnesses read the fuzzer's bytes as *choices* -- kind, branch,
publisher, sequence number relative to the receiver's cursor, hash link, epoch, fields, payload -- build a
canonical frame from them and sign it with the insider's real key:

* ``author_insider``: subscriber ``s0`` attacks the author (PACKET, CHECKPOINT, FETCH, HEAD, UNSUBSCRIBE);
* ``subscriber_insider``: the author's key attacks subscriber ``s0`` (PACKET, CHECKPOINT, HEAD, FETCH,
  REVOKE, REFUSE and GRANT with a fuzzed sealed secret).  A hostile author is out of scope for
  confidentiality, but the subscriber must still never crash or corrupt its state.

The invariant is the core harness's (:class:`fuzz.targets.CoreHarness`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from streams import _crypto
from streams.core import _GRANT_NONCE, _grant_aad, _hint, _hint_key, _legacy_hint
from streams.identity import Identity
from streams.wire import (
    Admit,
    Checkpoint,
    Fetch,
    Grant,
    GrantEntry,
    GrantKey,
    GrantSecret,
    HeadNotice,
    Kind,
    Packet,
    Refuse,
    Revoke,
    Unsubscribe,
    decode_frame,
    encode_frame,
    encode_grant_body,
    encode_grant_entries,
    encode_grant_key,
    encode_grant_secret,
    encode_grant_shared,
    encode_head,
)

from .scenario import CoreSnapshot, Scenario

T = TypeVar("T")
_U64 = (1 << 64) - 1


class Choices:
    """Reads decisions from fuzzer bytes; once they run out every decision is the first option (so short
    inputs still build frames)."""

    def __init__(self, data: bytes) -> None:
        self._d = data
        self._i = 0

    def byte(self) -> int:
        if self._i >= len(self._d):
            return 0
        b = self._d[self._i]
        self._i += 1
        return b

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "big")

    def raw(self, n: int) -> bytes:
        return bytes(self.byte() for _ in range(n))

    def rest(self, limit: int = 512) -> bytes:
        out = self._d[self._i : self._i + limit]
        self._i = len(self._d)
        return out


class _View:
    """What the insider knows: the receiver's branches, cursors, hashes and the keys it was given."""

    def __init__(self, receiver: CoreSnapshot, insider: CoreSnapshot | None, sc: Scenario) -> None:
        self.channel = sc.subscriber.channel
        self.branches = [b.id for b in receiver.branches] + [bytes(16)]
        self.epochs = {b.id: b.epoch for b in receiver.branches}
        self.grants = [b.grant_hash for b in receiver.branches]
        self.cursors = {(c.branch, c.publisher): (c.next_seq, c.head) for c in receiver.chains}
        self.hashes = self.grants + [c.head for c in receiver.chains] + [bytes(32)]
        src = insider.branches if insider is not None else receiver.branches
        self.keys = {(b.id, e, p): k for b in src for e, p, k in b.keys}
        self.members = {b.id: b.members for b in receiver.branches}

    def seq(self, c: Choices, branch: bytes, publisher: int) -> tuple[int, bytes]:
        nxt, head = self.cursors.get((branch, publisher), (1, bytes(32)))
        mode = c.byte() % 8
        seq = c.uint(8) if mode == 7 else max(0, nxt + mode - 2)  # mostly next, early, late or replayed
        prev = head if c.byte() % 4 else c.pick(self.hashes)
        return seq, prev

    def epoch(self, c: Choices, branch: bytes) -> int:
        e = self.epochs.get(branch, 0)
        return c.pick([e, e, max(0, e - 1), e + 1, c.uint(8)])


def _chain_frame(c: Choices, v: _View, me: Identity, kinds: Sequence[Kind], publishers: Sequence[int]) -> bytes:
    kind = c.pick(kinds)
    branch = c.pick(v.branches)
    publisher = c.pick(publishers)
    epoch = v.epoch(c, branch)
    seq, prev = v.seq(c, branch, publisher)
    sign: Any = me.sign if c.byte() % 8 else Identity.from_seed(b"\x66" * 32).sign  # sometimes the wrong key
    if kind is Kind.PACKET:
        nonce = c.raw(24)
        head = Packet(v.channel, branch, publisher, seq, prev, epoch, nonce)
        key = v.keys.get((branch, epoch, publisher)) or c.raw(32)
        body = _crypto.aead_encrypt(key, nonce, bytes((1, Kind.PACKET)) + encode_head(head), c.rest())
        return encode_frame(head, body, sign if c.byte() % 2 else None).raw
    if kind is Kind.CHECKPOINT:
        return encode_frame(Checkpoint(v.channel, branch, publisher, seq, prev, epoch), b"", sign).raw
    if kind is Kind.HEAD:
        return encode_frame(HeadNotice(v.channel, branch, publisher, seq, prev, epoch), b"", sign).raw
    if kind is Kind.FETCH:
        lo = c.pick([0, 1, seq, c.uint(8)])
        hi = c.pick([lo, lo + 3, lo + 2000, _U64, max(0, lo - 1)])
        return encode_frame(Fetch(v.channel, branch, publisher, lo, min(hi, _U64), c.pick(publishers)), b"",
                            sign).raw
    if kind is Kind.UNSUBSCRIBE:
        return encode_frame(Unsubscribe(v.channel, branch, publisher, epoch, c.pick(v.hashes)), b"", sign).raw
    if kind is Kind.REVOKE:
        return encode_frame(Revoke(v.channel, branch, epoch, c.pick(v.hashes), seq, prev), b"", sign).raw
    raise AssertionError(kind)


def author_frame(data: bytes, sc: Scenario) -> bytes:
    """A frame signed by subscriber ``s0`` (member 1 of its branch and of the group) for the author."""
    c = Choices(data)
    v = _View(sc.author, sc.subscriber, sc)
    return _chain_frame(c, v, sc.subscriber.identity,
                        [Kind.PACKET, Kind.PACKET, Kind.CHECKPOINT, Kind.FETCH, Kind.HEAD, Kind.UNSUBSCRIBE],
                        [1, 1, 1, 0, 2, 255])


def subscriber_frame(data: bytes, sc: Scenario) -> bytes:
    """A frame signed by the author for subscriber ``s0``, including grants with a fuzzed sealed secret."""
    c = Choices(data)
    v = _View(sc.subscriber, None, sc)
    author = sc.author.identity
    kind = c.pick([Kind.PACKET, Kind.PACKET, Kind.CHECKPOINT, Kind.HEAD, Kind.FETCH, Kind.REVOKE, Kind.REFUSE,
                   Kind.GRANT, Kind.GRANT, Kind.GRANT, Kind.ADMIT])
    [pending_request] = sc.subscriber.requests
    if kind is Kind.REFUSE:
        request = pending_request if c.byte() % 2 else c.raw(32)
        return encode_frame(Refuse(v.channel, request, c.byte()), b"", author.sign).raw
    if kind is Kind.ADMIT:
        request = pending_request if c.byte() % 2 else c.raw(32)
        branch = c.pick([*v.branches, c.raw(16)])
        return encode_frame(Admit(v.channel, request, branch, v.epoch(c, branch)), b"", author.sign).raw
    if kind is not Kind.GRANT:
        return _chain_frame(c, v, author, [kind], [0, 0, 0, 1, 2])
    me = sc.subscriber.identity
    branch = c.pick([*v.branches[:-1], c.raw(16)])
    epoch = v.epoch(c, branch)
    announce = sc.subscriber.announce
    prev = c.pick(v.hashes + ([decode_frame(announce).hash] if announce else []))
    pks = [author.sign_public, me.sign_public, Identity.from_seed(b"\x67" * 32).sign_public]
    members = [(c.byte() % 4, c.pick(pks), 1 + c.byte() % 4) for _ in range(c.byte() % 4)]
    keys = [(c.byte() % 4, c.raw(32)) for _ in range(c.byte() % 3)]
    heads = [(c.byte() % 4, c.pick([0, 1, c.uint(8)]), c.pick(v.hashes)) for _ in range(c.byte() % 3)]
    index = c.byte() % 4
    pick = c.byte() % 8  # our keyed hint (SPEC 8.5), mostly; the legacy one (still read); or any 8 bytes
    if pick > 1:
        hint = _hint(_hint_key(me, author.kx_public, author.kx_public, me.kx_public), v.channel, branch, epoch)
    else:
        hint = _legacy_hint(branch, epoch, me.kx_public) if pick else c.raw(8)
    first_layout = c.byte() % 4 == 0  # still read (SPEC 8.5)
    if first_layout:
        sealed = _crypto.seal(me.kx_public, encode_grant_secret(GrantSecret(index, members, keys, heads)))
    else:
        shared_key = c.raw(32)
        # The shared part's associated data names this grant's branch and epoch, or (sometimes) another's.
        aad = _grant_aad(branch if c.byte() % 8 else c.raw(16), epoch)
        shared = _crypto.aead_encrypt(shared_key, _GRANT_NONCE, aad, encode_grant_shared(members, heads))
        sealed = _crypto.seal(me.kx_public, encode_grant_key(GrantKey(index, shared_key, keys)))
    entries = [GrantEntry(hint, sealed)]
    if c.byte() % 4 == 0:
        entries.append(GrantEntry(hint, _crypto.seal(me.kx_public, c.rest(200).ljust(48, b"\0"))))
    head = Grant(v.channel, branch, epoch, prev, c.pick([1, 2, 0, 3, 255]))
    body = encode_grant_entries(entries) if first_layout else encode_grant_body(shared, entries)
    return encode_frame(head, body, author.sign).raw
