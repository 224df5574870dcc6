"""Property tests and fuzzing of every decoder in :mod:`streams.wire` (and of ``public_key_from_did``).

The invariant, as in h11's fuzz harness: a decoder either returns a valid value or raises
:class:`~streams.errors.DecodeError` -- never anything else (THREATS 8).  And what it accepts is canonical:
re-encoding the result gives back exactly the input bytes, so one message has one byte string and one hash.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import wire
from streams.errors import DecodeError, FrameTooLarge, RejectReason, UnsupportedVersion
from streams.identity import did_from_public_key, public_key_from_did
from tests import strategies as S

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T = TypeVar("T")


def decode_or_refuse(decode: Callable[[Any], T], data: Any) -> T | None:
    """``decode(data)``, or None if it raised DecodeError.  Any other exception propagates and fails."""
    try:
        return decode(data)
    except DecodeError as exc:
        refused = exc
    # A refusal carries a wire reason code the caller can send back.
    assert isinstance(refused.reason, RejectReason)
    return None


def packb(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _sig_fn(sig: bytes) -> Callable[[bytes], bytes] | None:
    return (lambda _digest: sig) if sig else None


def assert_canonical_frame(frame: wire.Frame, data: bytes) -> None:
    assert isinstance(frame, wire.Frame)
    assert frame.raw == data
    again = wire.encode_frame(frame.head, frame.body, _sig_fn(frame.sig))
    assert again.raw == data
    assert again.hash == frame.hash


# --- non-canonical msgpack: the same values in wider encodings ---


def _widenable(obj: Any) -> int:
    """How many nodes of ``obj`` have a strictly wider msgpack encoding than the canonical one."""
    own = 1 if isinstance(obj, (bytes, str, list)) or (type(obj) is int and 0 <= obj < 1 << 32) else 0
    if isinstance(obj, list):
        return own + sum(_widenable(x) for x in obj)
    return own


def pack_widened(obj: Any, target: int) -> bytes:
    """msgpack of ``obj`` with the ``target``-th widenable node (pre-order) in a wider, valid encoding:
    uint64 for a small int, bin32/str32/array32 for short bytes, text and arrays.  Everything else is
    canonical."""
    counter = [target]

    def enc(o: Any) -> bytes:
        here = isinstance(o, (bytes, str, list)) or (type(o) is int and 0 <= o < 1 << 32)
        widen = False
        if here:
            widen = counter[0] == 0
            counter[0] -= 1
        if isinstance(o, list):
            if widen:
                head = b"\xdd" + len(o).to_bytes(4, "big")
            elif len(o) < 16:
                head = bytes([0x90 | len(o)])
            else:
                head = b"\xdc" + len(o).to_bytes(2, "big")
            return head + b"".join(enc(x) for x in o)
        if widen and type(o) is int:
            return b"\xcf" + o.to_bytes(8, "big")
        if widen and isinstance(o, bytes):
            return b"\xc6" + len(o).to_bytes(4, "big") + o
        if widen and isinstance(o, str):
            raw = o.encode()
            return b"\xdb" + len(raw).to_bytes(4, "big") + raw
        return packb(o)

    return enc(obj)


@st.composite
def widened(draw: st.DrawFn, obj: Any) -> bytes:
    """A non-canonical encoding of ``obj`` that decodes to the same value."""
    n = _widenable(obj)
    assert n > 0
    data = pack_widened(obj, draw(st.integers(0, n - 1)))
    assert data != packb(obj)
    assert msgpack.unpackb(data, raw=False) == obj  # same content, only the encoding differs
    return data


def test_pack_widened_control() -> None:
    """The helper's non-widening path is the canonical encoding, so the refusals below are about width."""
    obj = [1, 2**40, b"x" * 20, "name", [3, b""]]
    assert pack_widened(obj, -1) == packb(obj)


def _frame_fields(frame: wire.Frame) -> list[Any]:
    return [wire.VERSION, int(frame.kind), frame.head_raw, frame.body, frame.sig]


# --- decode_frame ---


@FUZZ
@given(st.binary(max_size=600))
def test_frame_arbitrary_bytes(data: bytes) -> None:
    frame = decode_or_refuse(wire.decode_frame, data)
    if frame is not None:
        assert_canonical_frame(frame, data)


@FUZZ
@given(S.msgpack_values)
def test_frame_arbitrary_msgpack(value: Any) -> None:
    data = packb(value)
    frame = decode_or_refuse(wire.decode_frame, data)
    if frame is not None:
        assert_canonical_frame(frame, data)


@FUZZ
@given(
    st.sampled_from(sorted(wire.HEADS)),
    st.lists(S.msgpack_values, max_size=9),
    st.binary(max_size=40),
    st.binary(max_size=70),
)
def test_frame_shaped_with_arbitrary_head(kind: int, head_values: list[Any], body: bytes, sig: bytes) -> None:
    """A well-formed outer frame around an arbitrary head: exercises the head checks, not just msgpack."""
    data = packb([wire.VERSION, kind, packb(head_values), body, sig])
    frame = decode_or_refuse(wire.decode_frame, data)
    if frame is not None:
        assert_canonical_frame(frame, data)


@FUZZ
@given(S.frames().flatmap(lambda f: S.mutations(f.raw)))
def test_frame_mutated(data: bytes) -> None:
    frame = decode_or_refuse(wire.decode_frame, data)
    if frame is not None:
        assert_canonical_frame(frame, data)


@FUZZ
@given(S.frames(), st.data())
def test_frame_mutated_head(frame: wire.Frame, data: st.DataObject) -> None:
    """Damage inside the head, with the outer frame re-encoded correctly around it."""
    head_raw = data.draw(S.mutations(frame.head_raw))
    raw = packb([wire.VERSION, int(frame.kind), head_raw, frame.body, frame.sig])
    decoded = decode_or_refuse(wire.decode_frame, raw)
    if decoded is not None:
        assert_canonical_frame(decoded, raw)


@pytest.mark.parametrize("kind", sorted(wire.HEADS), ids=lambda k: wire.Kind(k).name)
@SOME
@given(data=st.data())
def test_frame_round_trip_every_kind(kind: wire.Kind, data: st.DataObject) -> None:
    frame = data.draw(S.frames(kind))
    for buf in (frame.raw, bytearray(frame.raw), memoryview(frame.raw)):
        decoded = wire.decode_frame(buf)  # type: ignore[arg-type]  # accepts any bytes-like
        assert decoded.kind == frame.kind == kind
        assert decoded.head == frame.head
        assert decoded.hash == frame.hash
        assert decoded.hash == wire.message_hash(kind, frame.head_raw, frame.body)
        assert decoded.raw == frame.raw
        assert (decoded.head_raw, decoded.body, decoded.sig) == (frame.head_raw, frame.body, frame.sig)
        assert decoded.aad == frame.aad


@FUZZ
@given(S.frames(), st.data())
def test_frame_non_canonical_outer_refused(frame: wire.Frame, data: st.DataObject) -> None:
    raw = data.draw(widened(_frame_fields(frame)))
    with pytest.raises(DecodeError):
        wire.decode_frame(raw)


@FUZZ
@given(S.frames(), st.data())
def test_frame_non_canonical_head_refused(frame: wire.Frame, data: st.DataObject) -> None:
    values = msgpack.unpackb(frame.head_raw, raw=False)
    head_raw = data.draw(widened(values))
    raw = packb([wire.VERSION, int(frame.kind), head_raw, frame.body, frame.sig])
    with pytest.raises(DecodeError, match="canonical"):
        wire.decode_frame(raw)


@pytest.mark.parametrize(
    ("version", "encoding"),
    [
        (1, b"\xcc\x01"),  # uint8
        (1, b"\xcd\x00\x01"),  # uint16
        (1, b"\xd0\x01"),  # int8
        (1, b"\xd3\x00\x00\x00\x00\x00\x00\x00\x01"),  # int64
    ],
)
def test_frame_version_in_wider_int_refused(version: int, encoding: bytes) -> None:
    frame = wire.encode_frame(wire.Hello(bytes(32)))
    assert frame.raw[:2] == b"\x95\x01"
    raw = frame.raw[:1] + encoding + frame.raw[2:]
    assert msgpack.unpackb(raw, raw=False)[0] == version
    with pytest.raises(DecodeError, match="canonical"):
        wire.decode_frame(raw)


def _wrong_values(t: Any) -> st.SearchStrategy[Any]:
    """Values that are not valid for field type ``t``: other types, or out of range."""
    others: dict[str, st.SearchStrategy[Any]] = {
        "bytes": st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), S.U64_MAX), st.floats(),
                           st.text(max_size=40),
                           st.lists(st.integers(0, 255), max_size=40)),
        "uint": st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=8), st.binary(max_size=8),
                          st.integers(max_value=-1, min_value=-(1 << 63))),
        "str": st.one_of(st.none(), st.booleans(), st.integers(min_value=0, max_value=S.U64_MAX),
                         st.binary(min_size=1, max_size=40)),
    }
    bad_range: dict[str, st.SearchStrategy[Any]] = {
        "bytes": st.binary(max_size=t.max + 8).filter(lambda b: not t.min <= len(b) <= t.max),
        "uint": (st.integers(min_value=t.max + 1, max_value=S.U64_MAX) if t.max < S.U64_MAX
                 else st.nothing()),
        "str": st.one_of(st.just(""), st.text(min_size=t.max + 1, max_size=t.max + 5)),
    }
    return st.one_of(others[t.kind], bad_range[t.kind])


@FUZZ
@given(S.frames(), st.data())
def test_frame_wrong_field_type_refused(frame: wire.Frame, data: st.DataObject) -> None:
    schema = type(frame.head).SCHEMA
    values = msgpack.unpackb(frame.head_raw, raw=False)
    i = data.draw(st.integers(0, len(schema) - 1))
    values[i] = data.draw(_wrong_values(schema[i]))
    raw = packb([wire.VERSION, int(frame.kind), packb(values), frame.body, frame.sig])
    with pytest.raises(DecodeError):
        wire.decode_frame(raw)


@FUZZ
@given(S.frames(), st.booleans(), S.msgpack_values)
def test_frame_wrong_field_count_refused(frame: wire.Frame, add: bool, extra: Any) -> None:
    values = msgpack.unpackb(frame.head_raw, raw=False)
    values = [*values, extra] if add else values[:-1]
    raw = packb([wire.VERSION, int(frame.kind), packb(values), frame.body, frame.sig])
    with pytest.raises(DecodeError):
        wire.decode_frame(raw)


@SOME
@given(S.frames(), st.integers(min_value=0, max_value=S.U64_MAX).filter(lambda v: v != wire.VERSION))
def test_frame_other_version_refused(frame: wire.Frame, version: int) -> None:
    raw = packb([version, *_frame_fields(frame)[1:]])
    with pytest.raises(UnsupportedVersion) as info:
        wire.decode_frame(raw)
    assert info.value.reason is RejectReason.BAD_VERSION


@SOME
@given(S.frames(), st.integers(min_value=0, max_value=S.U64_MAX).filter(lambda k: k not in wire.HEADS))
def test_frame_unknown_kind_refused(frame: wire.Frame, kind: int) -> None:
    raw = packb([wire.VERSION, kind, *_frame_fields(frame)[2:]])
    with pytest.raises(DecodeError, match="kind"):
        wire.decode_frame(raw)


@SOME
@given(S.heads(), st.data())
def test_frame_signature_rules(head: Any, data: st.DataObject) -> None:
    """Each kind's signature field must be 64 bytes (required), 0 or 64 (optional) or empty (none)."""
    kind = head.KIND
    sig = data.draw(st.binary(max_size=80))
    frame = wire.encode_frame(head, data.draw(S.bodies(kind)), _sig_fn(sig))
    if kind in wire.SIG_REQUIRED:
        ok = len(sig) == 64
    elif kind in wire.SIG_OPTIONAL:
        ok = len(sig) in (0, 64)
    else:
        ok = not sig
    if ok:
        assert wire.decode_frame(frame.raw).sig == sig
    else:
        with pytest.raises(DecodeError):
            wire.decode_frame(frame.raw)


@SOME
@given(st.sampled_from(sorted(wire.EMPTY_BODY)).flatmap(S.heads), st.binary(min_size=1, max_size=40))
def test_frame_body_forbidden(head: Any, body: bytes) -> None:
    sig = bytes(64) if head.KIND in wire.SIG_REQUIRED else b""
    frame = wire.encode_frame(head, body, _sig_fn(sig))
    with pytest.raises(DecodeError, match="empty body"):
        wire.decode_frame(frame.raw)


# --- size limit ---


@FUZZ
@given(S.frames())
def test_frame_size_limit_applies_to_valid_frames(frame: wire.Frame) -> None:
    """A frame one byte over the limit is refused even though it would parse: the limit comes first."""
    n = len(frame.raw)
    assert wire.decode_frame(frame.raw, max_frame=n).raw == frame.raw
    with pytest.raises(FrameTooLarge) as info:
        wire.decode_frame(frame.raw, max_frame=n - 1)
    assert info.value.reason is RejectReason.TOO_LARGE


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.data())
def test_frame_size_limit_applies_to_garbage(data: bytes, draw: st.DataObject) -> None:
    limit = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(FrameTooLarge):
        wire.decode_frame(data, max_frame=limit)


def test_frame_default_size_limit() -> None:
    with pytest.raises(FrameTooLarge):
        wire.decode_frame(b"\x95" + bytes(wire.MAX_FRAME))


def test_frame_size_limit_counts_bytes_of_any_buffer() -> None:
    """Regression: ``len()`` of a memoryview counts items, so a 4-byte-item view of 400 bytes passed a
    200-byte limit and was parsed.  The limit is in bytes, whatever the buffer's format."""
    view = memoryview(array.array("I", bytes(400)))
    assert len(view) == 100
    with pytest.raises(FrameTooLarge):
        wire.decode_frame(view, max_frame=200)  # type: ignore[arg-type]  # accepts any bytes-like


@pytest.mark.parametrize("value", [None, 1, "frame", [b"x"], 1.5])
def test_frame_not_bytes(value: Any) -> None:
    with pytest.raises(DecodeError):
        wire.decode_frame(value)


# --- inner structures ---

INNER: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes], st.SearchStrategy[Any]]] = {
    "grant_entries": (wire.decode_grant_entries, wire.encode_grant_entries, S.grant_entries),
    "grant_secret": (wire.decode_grant_secret, wire.encode_grant_secret, S.grant_secrets),
    "grant_body": (wire.decode_grant_body, lambda v: wire.encode_grant_body(*v), S.grant_bodies),
    "grant_key": (wire.decode_grant_key, wire.encode_grant_key, S.grant_keys),
    "grant_shared": (wire.decode_grant_shared, lambda v: wire.encode_grant_shared(*v), S.grant_shared),
    "subscribe_secret": (wire.decode_subscribe_secret, wire.encode_subscribe_secret, S.subscribe_secrets),
}
inner = pytest.mark.parametrize("name", list(INNER))


def _check_inner(name: str, data: Any) -> None:
    decode, encode, _ = INNER[name]
    value = decode_or_refuse(decode, data)
    if value is not None:
        assert encode(value) == data


@inner
@FUZZ
@given(data=st.binary(max_size=400))
def test_inner_arbitrary_bytes(name: str, data: bytes) -> None:
    _check_inner(name, data)


@inner
@FUZZ
@given(value=S.msgpack_values)
def test_inner_arbitrary_msgpack(name: str, value: Any) -> None:
    _check_inner(name, packb(value))


@inner
@SOME
@given(data=st.data())
def test_inner_round_trip(name: str, data: st.DataObject) -> None:
    decode, encode, strategy = INNER[name]
    value = data.draw(strategy)
    raw = encode(value)
    assert decode(raw) == value
    assert encode(decode(raw)) == raw


@inner
@FUZZ
@given(data=st.data())
def test_inner_mutated(name: str, data: st.DataObject) -> None:
    _, encode, strategy = INNER[name]
    raw = data.draw(S.mutations(encode(data.draw(strategy))))
    _check_inner(name, raw)


@inner
@FUZZ
@given(data=st.data())
def test_inner_non_canonical_refused(name: str, data: st.DataObject) -> None:
    decode, encode, strategy = INNER[name]
    canonical = encode(data.draw(strategy))
    raw = data.draw(widened(msgpack.unpackb(canonical, raw=False)))
    with pytest.raises(DecodeError):
        decode(raw)


@SOME
@given(S.grant_secrets, st.integers(min_value=0, max_value=255).filter(lambda p: p not in (1, 2, 3, 4)))
def test_grant_secret_unknown_permission_refused(secret: wire.GrantSecret, perm: int) -> None:
    members = [(0, bytes(32), perm), *secret.members]
    raw = wire.encode_grant_secret(wire.GrantSecret(secret.index, members, secret.keys, secret.heads))
    with pytest.raises(DecodeError, match="permission"):
        wire.decode_grant_secret(raw)


def test_grant_entries_limits() -> None:
    entry = wire.GrantEntry(bytes(8), bytes(48))
    with pytest.raises(DecodeError):
        wire.decode_grant_entries(wire.encode_grant_entries([]))
    assert len(wire.decode_grant_entries(wire.encode_grant_entries([entry] * 3), max_entries=3)) == 3
    with pytest.raises(DecodeError):
        wire.decode_grant_entries(wire.encode_grant_entries([entry] * 4), max_entries=3)
    with pytest.raises(DecodeError):
        wire.decode_grant_entries(wire.encode_grant_entries([wire.GrantEntry(bytes(8), bytes(47))]))
    with pytest.raises(DecodeError):
        wire.decode_grant_entries(wire.encode_grant_entries([wire.GrantEntry(bytes(7), bytes(48))]))


def test_grant_body_limits_and_layouts() -> None:
    """The current layout's bounds (SPEC 8.5), and the two layouts told apart by the body's first element."""
    entry = wire.GrantEntry(bytes(8), bytes(48))
    shared, entries = wire.decode_grant_body(wire.encode_grant_body(bytes(16), [entry]))
    assert shared == bytes(16) and entries == [entry]
    assert wire.decode_grant_body(wire.encode_grant_entries([entry])) == (None, [entry])  # the first layout
    assert len(wire.decode_grant_body(wire.encode_grant_body(bytes(16), [entry] * 256))[1]) == 256
    for shared, entries in (
        (bytes(15), [entry]),  # shorter than a tag
        (bytes(wire.MAX_GRANT_SHARED + 1), [entry]),
        (bytes(16), []),
        (bytes(16), [entry] * 257),  # more than a branch's members
        (bytes(16), [wire.GrantEntry(bytes(8), bytes(wire.MAX_GRANT_KEY_ENTRY + 1))]),
        (bytes(16), [wire.GrantEntry(bytes(7), bytes(48))]),
    ):
        with pytest.raises(DecodeError):
            wire.decode_grant_body(wire.encode_grant_body(shared, entries))
    assert wire.decode_grant_body(wire.encode_grant_body(bytes(wire.MAX_GRANT_SHARED), [entry]))[0] is not None
    big = wire.GrantEntry(bytes(8), bytes(wire.MAX_GRANT_KEY_ENTRY))
    assert wire.decode_grant_body(wire.encode_grant_body(bytes(16), [big]))[1] == [big]
    with pytest.raises(DecodeError):  # a first-layout entry is at most MAX_GRANT_ENTRY
        wire.decode_grant_body(wire.encode_grant_entries([wire.GrantEntry(bytes(8), bytes(wire.MAX_GRANT_ENTRY + 1))]))
    with pytest.raises(DecodeError):  # a third element
        wire.decode_grant_body(packb([bytes(16), [[bytes(8), bytes(48)]], 1]))


@SOME
@given(S.grant_shared, st.integers(min_value=0, max_value=255).filter(lambda p: p not in (1, 2, 3, 4)))
def test_grant_shared_unknown_permission_refused(shared: tuple[Any, Any], perm: int) -> None:
    members, heads = shared
    with pytest.raises(DecodeError, match="permission"):
        wire.decode_grant_shared(wire.encode_grant_shared([(0, bytes(32), perm), *members], heads))


@pytest.mark.parametrize("name", list(INNER))
@pytest.mark.parametrize("value", [None, "text", 5])
def test_inner_not_bytes(name: str, value: Any) -> None:
    with pytest.raises(DecodeError):
        INNER[name][0](value)


# --- did:key ---


def _check_did(value: Any) -> None:
    key = decode_or_refuse(public_key_from_did, value)
    if key is not None:
        assert isinstance(key, bytes)
        assert len(key) == 32
        assert did_from_public_key(key) == value  # only the canonical spelling is accepted


@FUZZ
@given(st.text(max_size=80))
def test_did_arbitrary_text(value: str) -> None:
    _check_did(value)


@FUZZ
@given(st.text(alphabet=S.BASE58_ALPHABET + " #/?;0OIl\n", max_size=60))
def test_did_key_shaped_text(tail: str) -> None:
    _check_did("did:key:z" + tail)
    _check_did("did:key:z6Mk" + tail)


@FUZZ
@given(S.dids, st.data())
def test_did_mutated(did: str, data: st.DataObject) -> None:
    raw = data.draw(S.mutations(did.encode()))
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    _check_did(text)


@SOME
@given(S.identities)
def test_did_valid(ident: Any) -> None:
    assert public_key_from_did(ident.did) == ident.sign_public


@SOME
@given(S.msgpack_values.filter(lambda v: not isinstance(v, str)))
def test_did_not_a_string(value: Any) -> None:
    with pytest.raises(DecodeError):
        public_key_from_did(value)
