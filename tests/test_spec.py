"""SPEC.md and the code agree: every message kind and head field exists in both, with the same order and types;
the personalisation strings and reason codes the spec lists are the code's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from streams import _crypto
from streams.errors import RejectReason
from streams.wire import HEADS, Kind

SPEC = (Path(__file__).resolve().parent.parent / "SPEC.md").read_text()
ROW = re.compile(r"^\|\s*([A-Z_]+)\s*\|\s*(\d+)\s*\|\s*(`[^|]*`)\s*\|\s*$", re.M)


def _spec_kinds() -> dict[str, tuple[int, list[tuple[str, str]]]]:
    out = {}
    for name, value, fields in ROW.findall(SPEC):
        parsed = [tuple(x.strip() for x in f.split(":")) for f in fields.strip("`").split(",")]
        out[name] = (int(value), [(n, t) for n, t in parsed])
    return out


def _type_name(t: object) -> str:
    kind, lo, hi = t.kind, t.min, t.max  # type: ignore[attr-defined]
    if kind == "bytes" and lo == hi:
        return f"b{lo}"
    if kind == "uint":
        return "u8" if hi == 255 else "flag" if hi == 1 else "u64"
    if kind == "str":
        return "name"
    raise AssertionError(f"type without a spec name: {kind} {lo}..{hi}")


def test_every_kind_is_specified_with_its_fields_in_order() -> None:
    spec = _spec_kinds()
    code = {
        k.name: (int(k), [(f.name, _type_name(t)) for f, t in zip(dataclasses.fields(cls), cls.SCHEMA, strict=True)])
        for k, cls in HEADS.items()
    }
    assert set(spec) == set(code), f"only in spec: {set(spec) - set(code)}; only in code: {set(code) - set(spec)}"
    for name in code:
        assert spec[name] == code[name], name


def test_kind_values_are_the_enum() -> None:
    assert {k.name: int(k) for k in Kind} == {n: v for n, (v, _) in _spec_kinds().items()}


def test_personalisation_strings_are_the_code_constants() -> None:
    for const in ("P_MSG", "P_CHANNEL", "P_HINT", "P_HINTKEY", "P_GRANT", "P_CHALLENGE", "P_CHALKEY", "P_PROOF",
                  "P_STORE"):
        value = getattr(_crypto, const).decode()
        assert re.search(rf"`{const}`\s*\|\s*`{re.escape(value)}`", SPEC), const


def test_every_personalisation_string_in_the_code_is_in_the_spec_table() -> None:
    """SPEC 4 says no string may serve two purposes: that is checkable only against a complete table.  Every
    ``streams.v1.*`` byte string in the package is listed there (status_anchor's and the in-memory one were not)."""
    root = Path(__file__).resolve().parent.parent / "streams"
    found = {m for f in root.rglob("*.py") for m in re.findall(r'b"(streams\.v1\.[a-z]+)"', f.read_text())}
    table = set(re.findall(r"^\|\s*`P_[A-Z]+`\s*\|\s*`(streams\.v1\.[a-z]+)`", SPEC, re.M))
    assert len(found) >= 14
    assert found <= table, sorted(found - table)


def test_reason_codes_are_listed() -> None:
    for r in RejectReason:
        assert f"{r.value} {r.name}" in SPEC, r
