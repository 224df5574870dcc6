"""Hypothesis strategies shared by the test suite.

Valid values are built from the wire module's own tables (``HEADS`` and each head's ``SCHEMA``), so a new
message kind is covered by every property test without touching this file.

* :func:`heads`, :func:`frames` -- every head kind, and encoded frames with a body and signature that fit the
  kind's rules;
* :func:`grant_entries`, :func:`grant_secrets`, :func:`subscribe_secrets` -- valid inner structures;
* :func:`msgpack_values` -- arbitrary msgpack-encodable data (for "well-formed msgpack, wrong shape" inputs);
* :func:`mutations` -- a valid encoding, damaged: bit flips, truncation, extension, splices;
* :func:`seeds`, :func:`identities`, :func:`dids` -- key material and DIDs.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from streams import wire
from streams.identity import Identity

U8_MAX = 255
U64_MAX = (1 << 64) - 1
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

u8s = st.integers(min_value=0, max_value=U8_MAX)
u64s = st.integers(min_value=0, max_value=U64_MAX)


def byte_strings(n: int) -> st.SearchStrategy[bytes]:
    """Exactly ``n`` bytes."""
    return st.binary(min_size=n, max_size=n)


def _text_of_utf8_size(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(min_size=lo, max_size=hi).filter(lambda s: lo <= len(s.encode()) <= hi)


def field_values(t: Any) -> st.SearchStrategy[Any]:
    """Valid values for one field type of a wire schema (``bytes``, ``uint`` or ``str`` with bounds)."""
    if t.kind == "bytes":
        return st.binary(min_size=t.min, max_size=min(t.max, t.min + 64))
    if t.kind == "uint":
        # Favour the edges of the range: that is where widths change in msgpack.
        return st.one_of(st.sampled_from(sorted({t.min, t.max, min(t.max, 127), min(t.max, 128)})),
                         st.integers(min_value=t.min, max_value=t.max))
    if t.kind == "str":
        return _text_of_utf8_size(t.min, t.max)
    raise AssertionError(f"unknown field type {t.kind}")


def heads(kind: wire.Kind | None = None) -> st.SearchStrategy[Any]:
    """A valid head of ``kind``, or of any kind."""
    if kind is None:
        return st.sampled_from(sorted(wire.HEADS)).flatmap(heads)
    cls = wire.HEADS[kind]
    return st.builds(cls, *(field_values(t) for t in cls.SCHEMA))


def bodies(kind: wire.Kind) -> st.SearchStrategy[bytes]:
    """A body allowed for ``kind`` (empty for the kinds that must have none)."""
    if kind in wire.EMPTY_BODY:
        return st.just(b"")
    if kind is wire.Kind.FETCH:
        return st.sampled_from([b"", b"\x07" * wire.SESSION_LEN])  # unbound, or bound to a session
    return st.binary(max_size=300)


def signatures(kind: wire.Kind) -> st.SearchStrategy[bytes]:
    """A signature field allowed for ``kind``: 64 bytes, optional or absent.  Not a valid signature:
    the decoder checks structure only."""
    if kind in wire.SIG_REQUIRED:
        return byte_strings(64)
    if kind in wire.SIG_OPTIONAL:
        return st.one_of(st.just(b""), byte_strings(64))
    return st.just(b"")


@st.composite
def frames(draw: st.DrawFn, kind: wire.Kind | None = None) -> wire.Frame:
    """A valid frame made by :func:`streams.wire.encode_frame`."""
    head = draw(heads(kind))
    body = draw(bodies(head.KIND))
    sig = draw(signatures(head.KIND))
    return wire.encode_frame(head, body, (lambda _digest: sig) if sig else None)


grant_entries = st.lists(
    st.builds(wire.GrantEntry, byte_strings(8), st.binary(min_size=48, max_size=120)), min_size=1, max_size=6
)

def _rows(*fields: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A grant's list of rows, each index (first element) at most once (SPEC 8.5)."""
    return st.lists(st.tuples(u8s, *fields), max_size=5, unique_by=lambda r: r[0])


_members = _rows(byte_strings(32), st.sampled_from([1, 2, 3, 4]))

grant_secrets = st.builds(
    wire.GrantSecret, u8s, _members, _rows(byte_strings(32)), _rows(u64s, byte_strings(32))
)

#: (shared, entries) of a GRANT body in the current layout (SPEC 8.5).
grant_bodies = st.tuples(st.binary(min_size=16, max_size=200), grant_entries)

grant_keys = st.builds(wire.GrantKey, u8s, byte_strings(32), _rows(byte_strings(32)))

#: (members, heads) of a grant's shared part.
grant_shared = st.tuples(_members, _rows(u64s, byte_strings(32)))

subscribe_secrets = st.builds(
    wire.SubscribeSecret, *(field_values(t) for t in wire.SubscribeSecret.SCHEMA)
)

#: Anything msgpack can encode (no maps with non-str keys, no ext types).
msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=U64_MAX),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=80),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=8), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` damaged in one of several ways.  May, rarely, return ``data`` itself (e.g. a no-op splice)."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "replace", "insert", "delete"]))
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=16))
    i = draw(st.integers(0, len(data)))
    if how == "replace" and i < len(data):
        return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i + 1 :]
    if how == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    if how == "delete" and i < len(data):
        return data[:i] + data[i + draw(st.integers(1, 4)) :]
    return data + b"\x00"


seeds = byte_strings(32)
identities = seeds.map(Identity.from_seed)
dids = identities.map(lambda ident: ident.did)
