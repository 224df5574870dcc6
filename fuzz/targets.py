"""The fuzz harnesses: one per decoder and one per protocol core, each a plain ``check(data: bytes) -> None``.

A harness returns normally when the input was handled as the invariant allows and raises anything else
(which the fuzzer reports as a crash, with the input saved).  The invariants (THREATS 8):

* **decoders** -- the decoder returns a value or raises its one typed error (``DecodeError`` for the wire
  structures, DIDs and epoch checkpoints; a ``CredentialError`` subclass for presentations), never anything
  else; and whatever it accepts is canonical: encoding the result again gives back exactly the input bytes.
* **cores** -- ``receive(data, now, peer)`` never raises at all: bad input becomes ``Rejected`` events.  When
  every event is a ``Rejected``, the core's state is unchanged (every ``chain_head``, every branch's epoch,
  grant, members, keys and state, the handshake, the used challenges) and ``take_changes()`` has nothing to
  persist.  Every frame the core emits in reply decodes.

The harnesses use only the standard library and ``streams`` (plus ``tests.corenet`` to build the scenario),
so the test suite can run them without atheris (``tests/test_fuzz_smoke.py``).  Hangs are caught by the
runner (libFuzzer ``-timeout``) and by the smoke test's time limit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from streams import _crypto, wire
from streams.anchor import ChainHead, EpochCheckpoint, build_epoch
from streams.core import _GRANT_NONCE, AuthorCore, SubscriberCore, _grant_aad
from streams.credentials import (
    CredentialError,
    StatusList,
    StatusListSource,
    issue_credential,
    issue_status_list_credential,
    present,
    verify_presentation,
)
from streams.errors import DecodeError, RejectReason
from streams.events import Event, Rejected
from streams.identity import Identity, did_from_public_key, public_key_from_did

from . import insider
from .scenario import Scenario, build

__all__ = ["TARGETS", "Target", "scenario"]


@dataclass(frozen=True)
class Target:
    """One harness: ``check`` enforces the invariant on one input; ``seeds`` are valid inputs to start from."""

    name: str
    doc: str
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


class InvariantViolation(AssertionError):
    """A harness found input that breaks its invariant (the fuzzer saves the input as a crash)."""


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise InvariantViolation(what)


@functools.cache
def scenario() -> Scenario:
    """The core scenario, built once per process."""
    return build()


def _all_frames() -> list[bytes]:
    sc = scenario()
    return list(dict.fromkeys(sc.wire + sc.to_author + sc.to_subscriber))


def _typed(err: DecodeError) -> None:
    # A refusal carries a wire reason code the caller can send back.
    _require(isinstance(err.reason, RejectReason), "DecodeError without a RejectReason")


# --- decoders --------------------------------------------------------------------------------------------------


def check_frame(data: bytes) -> None:
    try:
        f = wire.decode_frame(data)
    except DecodeError as exc:
        _typed(exc)
        return
    sig = f.sig
    again = wire.encode_frame(f.head, f.body, (lambda _d: sig) if sig else None)
    _require(again.raw == data and again.hash == f.hash, "decode_frame accepted a non-canonical frame")


def check_grant_entries(data: bytes) -> None:
    """A GRANT body, either layout (SPEC 8.5)."""
    try:
        shared, entries = wire.decode_grant_body(data)
    except DecodeError as exc:
        _typed(exc)
        return
    again = wire.encode_grant_entries(entries) if shared is None else wire.encode_grant_body(shared, entries)
    _require(again == data, "grant body: accepted a non-canonical encoding")


def _round_trip(data: bytes, decode: Callable[[bytes], Any], encode: Callable[[Any], bytes], what: str) -> None:
    """``decode`` refuses ``data`` with a typed error, or what it accepts re-encodes to the same bytes."""
    try:
        value = decode(data)
    except DecodeError as exc:
        _typed(exc)
        return
    _require(encode(value) == data, f"{what}: accepted a non-canonical encoding")


def _zero_padded_removal(data: bytes) -> wire.GrantRemoval:
    """``decode_grant_removal``, and what it accepts has a pad of zero bytes or none (SPEC 8.5: it carries nothing)."""
    r = wire.decode_grant_removal(data)
    _require(r.pad is None or not any(r.pad), "grant removal: accepted a pad that is not zero bytes")
    return r


def check_grant_secret(data: bytes) -> None:
    """What a grant seals or encrypts: a first-layout entry's secret, a current entry's key (or a removed member's
    removal), the shared part."""
    _round_trip(data, wire.decode_grant_secret, wire.encode_grant_secret, "grant secret")
    _round_trip(data, wire.decode_grant_key, wire.encode_grant_key, "grant key")
    _round_trip(data, _zero_padded_removal, wire.encode_grant_removal, "grant removal")
    _round_trip(data, wire.decode_grant_shared, lambda v: wire.encode_grant_shared(*v), "grant shared part")


def check_subscribe_secret(data: bytes) -> None:
    _round_trip(data, wire.decode_subscribe_secret, wire.encode_subscribe_secret, "subscribe secret")


def check_did(data: bytes) -> None:
    # surrogateescape maps every byte string to a distinct str, so the fuzzer's mutations all reach the parser
    did = data.decode("utf-8", "surrogateescape")
    try:
        key = public_key_from_did(did)
    except DecodeError as exc:
        _typed(exc)
        return
    _require(did_from_public_key(key) == did, "public_key_from_did accepted a non-canonical DID")


def check_epoch_checkpoint(data: bytes) -> None:
    try:
        cp = EpochCheckpoint.decode(data)
    except DecodeError as exc:
        _typed(exc)
        return
    _require(cp.encode() == data, "EpochCheckpoint.decode accepted a non-canonical encoding")


def _seed_grant_entries() -> list[bytes]:
    """The scenario's GRANT bodies, and each one's entries as a first-layout body (still read)."""
    bodies = [f.body for f in map(wire.decode_frame, _all_frames()) if f.kind is wire.Kind.GRANT]
    return bodies + [wire.encode_grant_entries(wire.decode_grant_body(b)[1]) for b in bodies]


def _seed_grant_secrets() -> list[bytes]:
    """For each GRANT the subscriber can open: its entry's key, the shared part, and the two as one
    first-layout secret."""
    sc = scenario()
    me = sc.subscriber.identity
    out = []
    for f in map(wire.decode_frame, _all_frames()):
        if f.kind is not wire.Kind.GRANT:
            continue
        shared, entries = wire.decode_grant_body(f.body)
        for e in entries:
            try:
                plain = me.unseal(e.sealed)
            except Exception:  # noqa: S112 - an entry for another member
                continue
            if shared is None:
                out.append(plain)
                continue
            k = wire.decode_grant_key(plain)
            inner = _crypto.aead_decrypt(k.shared_key, _GRANT_NONCE, _grant_aad(f.head.branch, f.head.epoch), shared)
            members, heads = wire.decode_grant_shared(inner)
            out += [plain, inner, wire.encode_grant_secret(wire.GrantSecret(k.index, members, k.keys, heads))]
    return out


def _seed_subscribe_secrets() -> list[bytes]:
    author = scenario().author.identity
    frames = map(wire.decode_frame, _all_frames())
    return [author.unseal(f.body) for f in frames if f.kind is wire.Kind.SUBSCRIBE]


def _seed_dids() -> list[bytes]:
    return [Identity.from_seed(bytes([i]) * 32).did.encode() for i in (1, 2, 200)]


def _seed_checkpoints() -> list[bytes]:
    channel = scenario().author.channel or bytes(range(32))
    ident = Identity.from_seed(b"\x05" * 32)
    heads = [ChainHead(bytes([i]) * 16, i % 3, i + 1, bytes([i]) * 32, b"\x09" * 32) for i in range(5)]
    first = build_epoch(channel, heads, None, 1_700_000_000_000, ident.sign)
    second = build_epoch(channel, heads[:1], first.checkpoint, 1_700_000_001_000, ident.sign)
    return [first.payload, second.payload]


# --- presentations -------------------------------------------------------------------------------------------

_ISSUER, _HOLDER = Identity.from_seed(b"\x21" * 32), Identity.from_seed(b"\x22" * 32)
_T0 = datetime(2025, 1, 1, tzinfo=UTC)
_NOW_MS = int((_T0 + timedelta(days=10)).timestamp() * 1000)
_NONCE, _CHANNEL = bytes(range(16)), bytes(range(32))
_LIST = "https://issuer.example/status/1"


@functools.cache
def _status_lists() -> StatusListSource:
    bits = StatusList()
    bits.set(3)
    source = StatusListSource()
    source.publish(issue_status_list_credential(_ISSUER, _LIST, bits, valid_from=_T0))
    return source


def check_presentation(data: bytes) -> None:
    try:
        creds = verify_presentation(data, expected_holder_did=_HOLDER.did, challenge=_NONCE, domain=_CHANNEL,
                                    now_ms=_NOW_MS, status_lists=_status_lists())
    except CredentialError as exc:
        _require(isinstance(exc.reason, RejectReason), "CredentialError without a RejectReason")
        return
    _require(isinstance(creds, list) and all(c.subject == _HOLDER.did for c in creds),
             "verify_presentation accepted a credential about someone else")


def _seed_presentations() -> list[bytes]:
    def vc(**kw: Any) -> dict[str, Any]:
        return issue_credential(_ISSUER, _HOLDER.did, ["PaymentProviderCredential"], {"provider": "acme"},
                                valid_from=_T0, valid_until=_T0 + timedelta(days=30), **kw)

    when = _T0 + timedelta(days=10)
    plain = present(_HOLDER, vc(), challenge=_NONCE, domain=_CHANNEL, created=when)
    with_status = present(_HOLDER, [vc(status=(_LIST, 9)), vc(status=(_LIST, 3))], challenge=_NONCE,
                          domain=_CHANNEL, created=when)
    return [plain, with_status, json.dumps({"type": ["VerifiablePresentation"]}).encode()]


# --- the protocol cores ----------------------------------------------------------------------------------------


def fingerprint(core: AuthorCore | SubscriberCore) -> tuple[Any, ...]:
    """Everything a rejected frame must leave alone.  Cursors are read through the public ``chain_head``; the
    rest through the core's private fields (this is a test harness).  Empty and absent hold buffers are equal:
    only their content is state."""
    branches = []
    for bid in sorted(core.branch_ids()):
        b = core._branches[bid]
        chains = tuple(
            (p, core.chain_head(bid, p), tuple(sorted(c.held or ())), c.gap_to) for p, c in sorted(b.chains.items())
        )
        branches.append((bid, b.state, b.epoch, b.grant_hash, b.me, tuple(sorted(b.members.items())),
                         tuple(sorted(b.keys.items())), chains))
    if isinstance(core, AuthorCore):
        # (The used nonces with their expiry heap and the refused ones' set: the three must change together.)
        extra: tuple[Any, ...] = (tuple(sorted(core._used_nonces.items())), tuple(sorted(core._nonce_expiry)),
                                  tuple(sorted(core._refused_nonces)), tuple(sorted(core._by_did.items())))
    else:
        extra = (core.state, core._announced, core._announce_hash, tuple(core._requests), core._admitted)
    return (tuple(branches), extra)


class CoreHarness:
    """Feeds one frame at a time to a core restored from a snapshot; rebuilds the core whenever a frame was
    accepted (changed its state), so every input meets the same state and a crash reproduces from one input."""

    def __init__(self, make: Callable[[], AuthorCore | SubscriberCore], now_ms: int) -> None:
        self._make = make
        self._now = now_ms
        self.core = make()
        self._clean = fingerprint(self.core)
        self.rebuilds = 0

    def check(self, data: bytes) -> None:
        core = self.core
        events = core.receive(data, self._now, "fuzzer")  # must never raise
        out = core.data_to_send()
        changes = core.take_changes()
        _require(isinstance(events, list) and all(isinstance(e, Event) for e in events), "receive returned junk")
        for o in out:
            wire.decode_frame(o.data)  # a reply that does not decode is a bug (raises DecodeError: a crash here)
        after = fingerprint(core)
        rejected = [e for e in events if isinstance(e, Rejected)]
        if events and len(rejected) == len(events):
            _require(all(isinstance(e.reason, RejectReason) and isinstance(e.detail, str) for e in rejected),
                     "Rejected event without a reason")
            _require(after == self._clean, f"state changed by a rejected frame: {events}")
            _require(not changes, f"a rejected frame left changes to persist: {events}")
        if after != self._clean or changes:
            self.rebuilds += 1
            self.core = self._make()


@functools.cache
def _author_harness() -> CoreHarness:
    sc = scenario()
    return CoreHarness(sc.author.author, sc.now_ms)


@functools.cache
def _subscriber_harness() -> CoreHarness:
    sc = scenario()
    return CoreHarness(sc.subscriber.subscriber, sc.now_ms)


def check_author(data: bytes) -> None:
    _author_harness().check(data)


def check_subscriber(data: bytes) -> None:
    _subscriber_harness().check(data)


def check_author_insider(data: bytes) -> None:
    _author_harness().check(insider.author_frame(data, scenario()))


def check_subscriber_insider(data: bytes) -> None:
    _subscriber_harness().check(insider.subscriber_frame(data, scenario()))


def _seed_choices() -> list[bytes]:
    # The insider harnesses read bytes as choices: a spread of short patterns reaches every kind.
    return [b""] + [bytes((i, j)) + bytes(range(i, i + 60)) for i in range(10) for j in (0, 1, 2, 7)]


def _seed_author() -> list[bytes]:
    sc = scenario()
    return list(dict.fromkeys(sc.to_author + sc.wire))


def _seed_subscriber() -> list[bytes]:
    sc = scenario()
    return list(dict.fromkeys(sc.to_subscriber + sc.wire))


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("author_core", "AuthorCore.receive on a busy author", check_author, _seed_author),
        Target("subscriber_core", "SubscriberCore.receive on a subscribed, re-handshaking subscriber",
               check_subscriber, _seed_subscriber),
        Target("author_insider", "AuthorCore.receive of frames signed by a member (s0's real key)",
               check_author_insider, _seed_choices),
        Target("subscriber_insider", "SubscriberCore.receive of frames signed by the author's real key",
               check_subscriber_insider, _seed_choices),
        Target("decode_frame", "streams.wire.decode_frame", check_frame, _all_frames),
        Target("grant_entries", "streams.wire.decode_grant_body (both layouts)", check_grant_entries,
               _seed_grant_entries),
        Target("grant_secret", "streams.wire.decode_grant_secret / decode_grant_key / decode_grant_removal / "
               "decode_grant_shared",
               check_grant_secret, _seed_grant_secrets),
        Target("subscribe_secret", "streams.wire.decode_subscribe_secret", check_subscribe_secret,
               _seed_subscribe_secrets),
        Target("did", "streams.identity.public_key_from_did", check_did, _seed_dids),
        Target("epoch_checkpoint", "streams.anchor.EpochCheckpoint.decode", check_epoch_checkpoint,
               _seed_checkpoints),
        Target("presentation", "streams.credentials.verify_presentation", check_presentation,
               _seed_presentations),
    )
}
