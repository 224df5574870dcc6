"""The PACKET fast path of ``decode_frame`` accepts exactly what the generic schema path accepts.

Heads are built byte by byte with every msgpack width for each field (canonical and not), with wrong types,
lengths and ranges, and compared against the generic check (``Packet.SCHEMA`` plus re-encoding)."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import DecodeError
from streams.wire import VERSION, Kind, Packet, _packet_head, decode_frame

U64 = (1 << 64) - 1


def _uint(v: int, width: int) -> bytes | None:
    """msgpack encoding of a non-negative int with a chosen width (0 = fixint), None if it does not fit."""
    if width == 0:
        return bytes([v]) if v < 128 else None
    fmt = {1: (0xCC, ">B"), 2: (0xCD, ">H"), 4: (0xCE, ">I"), 8: (0xCF, ">Q")}[width]
    try:
        return bytes([fmt[0]]) + struct.pack(fmt[1], v)
    except struct.error:
        return None


def _bin(b: bytes, width: int) -> bytes:
    if width == 1:
        return bytes([0xC4, len(b)]) + b
    if width == 2:
        return b"\xc5" + struct.pack(">H", len(b)) + b
    return b"\xc6" + struct.pack(">I", len(b)) + b


def _generic(values: list[Any], head_raw: bytes) -> Packet | None:
    try:
        checked = [t.check("f", v) for t, v in zip(Packet.SCHEMA, values, strict=True)]
    except DecodeError:
        return None
    if msgpack.packb(checked, use_bin_type=True) != head_raw:
        return None
    return Packet(*checked)


def _frame(head_raw: bytes, body: bytes = b"\x00" * 40, sig: bytes = b"") -> bytes:
    return msgpack.packb([VERSION, int(Kind.PACKET), head_raw, body, sig], use_bin_type=True)  # type: ignore[no-any-return]


ints = st.one_of(st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64]),
                 st.integers(0, U64))


@settings(max_examples=400, deadline=None)
@given(publisher=ints, seq=ints, epoch=ints, widths=st.lists(st.sampled_from([0, 1, 2, 4, 8]), min_size=3,
                                                             max_size=3),
       bin_widths=st.lists(st.sampled_from([1, 1, 1, 2, 4]), min_size=4, max_size=4),
       lens=st.sampled_from([(32, 16, 32, 24), (31, 16, 32, 24), (32, 17, 32, 24), (32, 16, 32, 23)]))
def test_fast_path_agrees_with_schema_path(publisher: int, seq: int, epoch: int, widths: list[int],
                                           bin_widths: list[int], lens: tuple[int, int, int, int]) -> None:
    enc = [_uint(v, w) for v, w in zip((publisher, seq, epoch), widths, strict=True)]
    if any(e is None for e in enc):
        return
    ch, br, pr, no = (bytes([i + 1]) * n for i, n in enumerate(lens))
    head_raw = (b"\x97" + _bin(ch, bin_widths[0]) + _bin(br, bin_widths[1]) + enc[0] + enc[1] + _bin(pr, bin_widths[2])
                + enc[2] + _bin(no, bin_widths[3]))  # type: ignore[operator]
    values = msgpack.unpackb(head_raw, raw=False)
    want = _generic(values, head_raw)
    assert _packet_head(values, head_raw) == want
    # and through the whole decoder: accepted exactly when the generic path accepts
    if want is None:
        with pytest.raises(DecodeError):
            decode_frame(_frame(head_raw))
    else:
        assert decode_frame(_frame(head_raw)).head == want


@pytest.mark.parametrize("bad", [
    ["x" * 32, b"b" * 16, 0, 1, b"p" * 32, 0, b"n" * 24],  # text instead of bytes
    [b"c" * 32, b"b" * 16, 256, 1, b"p" * 32, 0, b"n" * 24],  # publisher out of range
    [b"c" * 32, b"b" * 16, -1, 1, b"p" * 32, 0, b"n" * 24],  # negative
    [b"c" * 32, b"b" * 16, 0, True, b"p" * 32, 0, b"n" * 24],  # bool is not an int on the wire
    [b"c" * 32, b"b" * 16, 0, 1.0, b"p" * 32, 0, b"n" * 24],  # float
    [b"c" * 32, b"b" * 16, 0, 1, b"p" * 32, 0, [b"n"]],  # nested
])
def test_fast_path_refuses_what_the_schema_refuses(bad: list[Any]) -> None:
    head_raw = msgpack.packb(bad, use_bin_type=True)
    values = msgpack.unpackb(head_raw, raw=False)
    assert _generic(values, head_raw) is None
    assert _packet_head(values, head_raw) is None
    with pytest.raises(DecodeError):
        decode_frame(_frame(head_raw))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([int(k) for k in Kind] + [0, 15, 255]), st.binary(max_size=300), st.binary(max_size=70_000))
def test_message_hash_is_the_spec_definition(kind: int, head_raw: bytes, body: bytes) -> None:
    # The hash comes from a BLAKE2b state pre-seeded with [version, kind] (hot path); it must stay exactly
    # H(person "streams.v1.msg", [version, kind] || head || body) -- SPEC.md, "Frames" -- for every kind,
    # including kinds without a pre-seeded state.
    import hashlib

    from streams.wire import message_hash

    want = hashlib.blake2b(bytes((VERSION, kind)) + head_raw + body, digest_size=32,
                           person=b"streams.v1.msg").digest()
    assert message_hash(kind, head_raw, body) == want
    assert message_hash(kind, head_raw, body) == want  # the shared state is not consumed by a call


def test_the_shared_packer_gives_packb_bytes_from_many_threads_at_once() -> None:
    """The wire module packs with one Packer (no Packer built per call); threads packing at the same moment each
    get exactly ``msgpack.packb``'s bytes, and a failed pack leaves nothing behind for the next."""
    import threading

    from streams.wire import _packb

    def objs(t: int) -> list[list[Any]]:
        return [[bytes([t]) * (32 + i % 200), t, i, "x" * (i % 40), [i, bytes(i % 7)]] for i in range(3000)]

    bad: list[str] = []

    def work(t: int) -> None:
        for o in objs(t):
            if _packb(o) != msgpack.packb(o, use_bin_type=True):
                bad.append(f"thread {t}: {o!r:.60}")
                return

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not bad
    with pytest.raises(TypeError):
        _packb([b"half", object()])
    assert _packb([b"next"]) == msgpack.packb([b"next"], use_bin_type=True)


@pytest.mark.parametrize("publisher", [0, 1, 127, 128, 255])
@pytest.mark.parametrize("value", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64])
def test_the_fast_path_takes_every_canonical_head_itself(publisher: int, value: int) -> None:
    """Not by falling back to the generic path: the fast path's own length and marker rules hold for every
    canonical width of the publisher, the seq and the epoch."""
    values = [b"c" * 32, b"b" * 16, publisher, value, b"p" * 32, U64 - value, b"n" * 24]
    head_raw = msgpack.packb(values, use_bin_type=True)
    got = _packet_head(msgpack.unpackb(head_raw, raw=False), head_raw)
    assert got is not None and got == Packet(*values) == _generic(values, head_raw)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536])
def test_a_body_at_each_bin_width_decodes_only_in_its_shortest_form(n: int) -> None:
    head_raw = msgpack.packb([b"c" * 32, b"b" * 16, 1, 7, b"p" * 32, 0, b"n" * 24], use_bin_type=True)
    body = bytes(range(256)) * (n // 256) + bytes(n % 256)
    shortest = 1 if n < 256 else 2 if n < 65536 else 4
    for width in (1, 2, 4):
        if n >= 1 << (8 * width):
            continue
        raw = bytes([0x95, VERSION, int(Kind.PACKET)]) + _bin(head_raw, 1) + _bin(body, width) + _bin(b"", 1)
        if width == shortest:
            assert decode_frame(raw).body == body and raw == _frame(head_raw, body)
        else:
            with pytest.raises(DecodeError, match="canonical"):
                decode_frame(raw)


def test_building_through_slots_follows_the_class_or_refuses_to_load() -> None:
    """Packet and MessageReceived are built through their slots on the receive path (``_slot_setters``): what is
    built equals what ``__init__`` builds, and a class whose fields change, lose their slots or gain a
    ``__post_init__`` makes the setup fail (the module would not load) instead of building it wrongly."""
    from dataclasses import dataclass

    from streams.events import MessageReceived, _message_received
    from streams.wire import _slot_setters

    args = (b"b" * 16, 3, "did:key:z6Mk", 9, b"payload", False, b"h" * 32)
    built = _message_received(*args)
    assert built == MessageReceived(*args) and repr(built) == repr(MessageReceived(*args))
    assert hash(built) == hash(MessageReceived(*args))

    @dataclass(frozen=True, slots=True)
    class Two:
        a: int
        b: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int
        b: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class Unslotted:
        a: int
        b: int

    set_a, set_b = _slot_setters(Two, ("a", "b"))
    t = object.__new__(Two)
    set_a(t, 1)
    set_b(t, 2)
    assert t == Two(1, 2)
    for cls, names in ((Two, ("b", "a")), (Two, ("a",)), (Checked, ("a", "b")), (Unslotted, ("a", "b"))):
        with pytest.raises(RuntimeError, match="changed"):
            _slot_setters(cls, names)
