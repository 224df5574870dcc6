"""THREATS 9 attacked from the outside: someone who can read a party's files while it runs (the database, its
``-wal`` and ``-shm``, the frame file, the lock), its log at debug level, the events it hands out, the
``repr``/``str`` of every library object reachable from it, and the exceptions a wrong passphrase raises (their
whole chain, formatted as a traceback) searches all of it for every secret the parties hold -- identity seeds,
Ed25519 and X25519 secret keys, every branch key of every epoch, the store keys, the author's challenge key,
the passphrase -- in every encoding a program would print one in.

Real SQLite stores and PyNaCl, the in-memory transport; the secrets are read out of the parties themselves."""

from __future__ import annotations

import base64
import gc
import logging
import traceback
from pathlib import Path
from types import FunctionType, ModuleType

import base58
import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.errors import BadPassphrase
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import FRAME_FILE_MIN, Store

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "the-one passphrase 5e1c"
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85(data: bytes) -> bytes:
    """ZeroMQ's Z85 (RFC 32), how CurveZMQ keys are usually printed (no pyzmq needed here)."""
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i:i + 4], "big")
        out.append("".join(_Z85[v // 85 ** k % 85] for k in range(4, -1, -1)))
    return "".join(out).encode("ascii")


def forms(secret: bytes) -> set[bytes]:
    """Every likely printed form of ``secret``."""
    b64, url = base64.b64encode(secret), base64.urlsafe_b64encode(secret)
    found = {secret, secret.hex().encode(), secret.hex().upper().encode(), b64, url, b64.rstrip(b"="),
             url.rstrip(b"="), base58.b58encode(secret), repr(secret)[2:-1].encode()}
    if len(secret) % 4 == 0:
        found.add(_z85(secret))
    return found


def secrets_of(party: Author | Subscriber) -> dict[str, bytes]:
    core = party._core
    me = core._id
    found = {"seed": me._seed, "ed25519 secret": me._secret, "x25519 secret": me._kx_secret,
             "store key": party.store._key}
    if hasattr(core, "_chal_key"):
        found["challenge key"] = core._chal_key
    for bid, b in core._branches.items():
        for (epoch, publisher), key in b.keys.items():
            found[f"key of {bid.hex()[:8]} epoch {epoch} chain {publisher}"] = key
    return {f"{party.did[-6:]} {name}": value for name, value in found.items()}


def leaks(data: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, secret in secrets.items() if any(f in data for f in forms(secret))] + \
        (["passphrase"] if PW.encode() in data else [])


def library_objects(roots: list[object]) -> list[object]:
    """Every object reachable from ``roots`` whose class is the library's (``streams``, ``brokerless``)."""
    seen: set[int] = set()
    stack, found = list(roots), []
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type | ModuleType | FunctionType | str | bytes | int | float):
            continue
        seen.add(id(o))
        if (type(o).__module__ or "").startswith(("streams", "brokerless")):
            found.append(o)
        stack.extend(gc.get_referents(o))
    return found


async def test_no_secret_in_a_running_party_s_files_reprs_events_logs_or_errors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub = MemoryHub()
    members = [Identity.generate() for _ in range(3)]
    author = await Author.create(tmp_path / "author.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([m.did for m in members]), store_options=FAST)
    subs = [await Subscriber.create(tmp_path / f"m{i}.db", m, author.did, author.channel, PW,
                                    hub.subscriber_endpoint(f"m{i}"), store_options=FAST)
            for i, m in enumerate(members)]
    own = [await s.subscribe(timeout=10) for s in subs]
    group = await author.open_group([m.did for m in members])
    big = b"x" * FRAME_FILE_MIN  # (to the frame file)
    for s, b in zip(subs, own, strict=True):
        await s.publish(b, b"small")
        await s.publish(b, big)
    await author.publish(group, big)
    await author.remove_member(group, members[2].did)  # a re-key: a second epoch of keys
    await author.publish(group, b"after the re-key")
    for _ in range(6):
        await author.next_message(timeout=10)
    for s in subs[:2]:
        for _ in range(2):
            await s.next_message(timeout=10)
    parties: list[Author | Subscriber] = [author, *subs]
    secrets: dict[str, bytes] = {}
    for p in parties:
        secrets.update(secrets_of(p))
    assert sum("epoch 1" in name for name in secrets) >= 2  # the re-key's keys are among them
    try:
        names = {f.name for f in tmp_path.iterdir()}
        assert {"author.db-wal", "author.db-shm", "author.db-frames", "m0.db-wal", "m0.db-frames"} <= names
        for f in sorted(tmp_path.iterdir()):
            assert leaks(f.read_bytes(), secrets) == [], f"{f.name} (live)"
        for o in library_objects(list(parties)):
            for show in (repr, str):
                assert leaks(show(o).encode(), secrets) == [], f"{show.__name__} of a {type(o).__qualname__}"
        for p in parties:
            for ev in p.pending_events():
                assert leaks(repr(ev).encode(), secrets) == [], repr(ev)
    finally:
        for s in subs:
            await s.close()
        await author.close()
    for f in sorted(tmp_path.iterdir()):
        assert leaks(f.read_bytes(), secrets) == [], f"{f.name} (closed)"
    # A wrong passphrase (one letter off) and its whole exception chain, formatted as a traceback.
    with pytest.raises(BadPassphrase) as caught:
        Store.open(tmp_path / "m0.db", PW[:-1] + "d")
    text = "".join(traceback.format_exception(caught.value)).encode()
    assert PW[:-1].encode() not in text and leaks(text, secrets) == []
    chain: list[BaseException] = []
    exc: BaseException | None = caught.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert all(PW[:-1].encode() not in repr(e).encode() for e in chain)
    assert caplog.records  # (the parties did log: the re-key, the branch closed to the removed member)
    assert leaks(caplog.text.encode(), secrets) == []


async def test_an_observer_who_knows_the_dids_cannot_tell_who_holds_which_branch(tmp_path: Path) -> None:
    """SPEC 15: "member lists are inside sealed grants, so the set of subscribers is not visible on the wire".  An
    observer on the wire who knows the candidate DIDs (public identifiers: a policy's allow list, a sector's
    providers) computes each candidate's hint for every GRANT it sees, from the GRANT's cleartext head alone, by the
    rule authors used before the keyed hint (SPEC 8.5): no GRANT's entries match any more.  (The keyed rule attacked
    with every public key: tests/test_grant_hints.py.)"""
    import struct

    from streams import _crypto
    from streams.identity import PublicIdentity
    from streams.wire import Kind, decode_frame, decode_grant_body

    hub = MemoryHub()
    members = [Identity.generate() for _ in range(3)]
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([m.did for m in members]), store_options=FAST)
    subs = [await Subscriber.create(tmp_path / f"m{i}.db", m, author.did, author.channel, PW,
                                    hub.subscriber_endpoint(f"m{i}"), store_options=FAST)
            for i, m in enumerate(members)]
    try:
        own = {m.did: await s.subscribe(timeout=10) for m, s in zip(members, subs, strict=True)}
        linked: dict[bytes, set[str]] = {}
        for _src, _dst, data in hub.tap:
            frame = decode_frame(data)
            if frame.kind is not Kind.GRANT:
                continue
            hints = {e.hint for e in decode_grant_body(frame.body)[1]}
            for m in members:
                kx = PublicIdentity.from_did(m.did).kx_public
                if _crypto.hash32(_crypto.P_HINT, frame.head.branch, struct.pack(">Q", frame.head.epoch),
                                  kx)[:8] in hints:
                    linked.setdefault(frame.head.branch, set()).add(m.did)
        assert all(linked.get(branch) != {did} for did, branch in own.items())
    finally:
        for s in subs:
            await s.close()
        await author.close()
