"""Regenerate ``tests/vectors/protocol.json`` -- run only when SPEC.md changes (with a protocol version bump).

    python tests/vectors/generate.py

    python tests/vectors/generate.py --out FILE   # elsewhere (tests/test_vectors.py compares the two)

Everything is derived from fixed seeds and a fixed pseudo-random source, so the output is reproducible byte for
byte.  Sealed boxes too: libsodium's ``crypto_box_seal`` draws its ephemeral key itself, so here they are built
by the same construction (``epk || crypto_box(m, BLAKE2b-192(epk || pk), pk, esk)``) with an ephemeral key from
the fixed source -- boxes that ``crypto_box_seal_open`` opens like any other.  The vectors also give each sealed
plaintext, which the tests recover by opening the box with the recipient's key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import nacl.bindings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streams import _crypto  # noqa: E402
from streams.anchor import ChainHead, blinded_leaf, build_epoch  # noqa: E402
from streams.core import (  # noqa: E402
    AuthorCore,
    CoreConfig,
    SubscriberCore,
    _hint,
    _hint_key,
    _proof_digest,
    channel_id,
)
from streams.identity import Identity, x25519_multibase  # noqa: E402
from streams.policy import AllowList  # noqa: E402
from streams.wire import (  # noqa: E402
    Permission,
    Refuse,
    SigningMode,
    Unsubscribe,
    decode_frame,
    decode_grant_body,
    decode_grant_key,
    encode_frame,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
OUT = Path(__file__).resolve().parent / "protocol.json"


class DetRng:
    """Deterministic 'randomness' for vectors: BLAKE2b(label || counter)."""

    def __init__(self, label: bytes) -> None:
        self.label, self.n = label, 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        out = b""
        i = 0
        while len(out) < size:
            out += hashlib.blake2b(self.label + self.n.to_bytes(8, "big") + bytes([i]), digest_size=64).digest()
            i += 1
        return out[:size]


#: The run component of the first channel's challenge key (SPEC 8.3), fixed for the vectors.
CHALLENGE_RUN = bytes(range(64, 80))


class RunFirst:
    """An author core's source: ``run`` for its first draw -- the per-run component of its challenge key (SPEC 8.3),
    which the core draws as it is made -- then ``rest``.  The draws after it are ``rest``'s own, as they were
    before challenge keys had a run component (so no other vector moved when it came)."""

    def __init__(self, run: bytes, rest: DetRng) -> None:
        self.run: bytes | None = run
        self.rest = rest

    def __call__(self, size: int) -> bytes:
        run, self.run = self.run, None
        if run is None:
            return self.rest(size)
        assert size == len(run), "the core's first draw is no longer the challenge key's run component"
        return run


def deterministic_seal(rng: DetRng) -> Any:
    """``_crypto.seal`` with the ephemeral key drawn from ``rng`` (libsodium's sealed box construction)."""

    def seal(recipient_x25519: bytes, plaintext: bytes) -> bytes:
        esk = rng(32)
        epk = nacl.bindings.crypto_scalarmult_base(esk)
        nonce = hashlib.blake2b(epk + recipient_x25519, digest_size=24).digest()
        return epk + nacl.bindings.crypto_box(plaintext, nonce, recipient_x25519, esk)

    return seal


def _val(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


def frame_vector(name: str, raw: bytes, signer: str | None, **extra: Any) -> dict[str, Any]:
    f = decode_frame(raw)
    return {
        "name": name,
        "kind": f.kind.name,
        "head": {fl.name: _val(getattr(f.head, fl.name)) for fl in dataclasses.fields(f.head)},
        "body": f.body.hex(),
        "sig": f.sig.hex(),
        "signer": signer,
        "hash": f.hash.hex(),
        "raw": raw.hex(),
        **extra,
    }


def ident_vector(i: Identity) -> dict[str, str]:
    return {"seed": i.export_seed().hex(), "sign_public": i.sign_public.hex(), "kx_public": i.kx_public.hex(),
            "did": i.did, "kx_multibase": x25519_multibase(i.kx_public)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="regenerate the known-answer vectors (SPEC.md section 16)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write them (default: {OUT})")
    out = parser.parse_args(argv).out
    real_seal = _crypto.seal
    # Only while generating: a fixed ephemeral key source is for known answers, never for real boxes.
    _crypto.seal = deterministic_seal(DetRng(b"seal"))
    try:
        _generate(out)
    finally:
        _crypto.seal = real_seal


def _generate(out: Path) -> None:
    author = Identity.from_seed(bytes(range(32)))
    sub = Identity.from_seed(bytes(range(32, 64)))
    name = "payment-fraud-monitor"
    acore = AuthorCore(author, name, AllowList.of([sub.did]), CoreConfig(),
                       rng=RunFirst(CHALLENGE_RUN, DetRng(b"author")))
    score = SubscriberCore(sub, author.did, acore.channel, CoreConfig(), rng=DetRng(b"subscriber"))
    frames: list[dict[str, Any]] = []
    wire: list[tuple[str, bytes]] = []

    def to_author(data: bytes) -> None:
        wire.append(("subscriber", data))
        acore.receive(data, NOW, "sub")
        acore.take_changes()
        for o in acore.data_to_send():
            wire.append(("author", o.data))
            score.receive(o.data, NOW)
            score.take_changes()
            for o2 in score.data_to_send():
                to_author(o2.data)

    score.hello()
    for o in score.data_to_send():
        to_author(o.data)
    kinds = {decode_frame(d).kind.name: (who, d) for who, d in wire}
    # The handshake frames, in order (sealed bodies: the recipient opens them).  A kind sent again is named
    # ``<kind>_again`` (the GRANT that answers the new member's catch-up FETCH, SPEC 9.5).
    for who, d in wire:
        f = decode_frame(d)
        fname = f.kind.name.lower()
        if any(v["name"] == fname for v in frames):
            fname += "_again"
        extra: dict[str, Any] = {}
        if f.kind.name == "SUBSCRIBE":
            extra["sealed_to"] = "author"
            extra["plaintext"] = author.unseal(f.body).hex()
        if f.kind.name == "GRANT":
            shared, [entry] = decode_grant_body(f.body)
            assert shared is not None
            key = decode_grant_key(sub.unseal(entry.sealed))
            extra["sealed_to"] = "subscriber"
            extra["entry_hint"] = entry.hint.hex()
            extra["plaintext"] = sub.unseal(entry.sealed).hex()
            extra["shared_aad"] = (_crypto.P_GRANT + f.head.branch + f.head.epoch.to_bytes(8, "big")).hex()
            extra["shared_plaintext"] = _crypto.aead_decrypt(key.shared_key, bytes(_crypto.NONCE_SIZE),
                                                             bytes.fromhex(extra["shared_aad"]), shared).hex()
        frames.append(frame_vector(fname, d, who if f.sig else None, deterministic=True, **extra))
    branch = acore.branch_ids()[0]
    grant_hash = decode_frame(kinds["GRANT"][1]).hash
    challenge = decode_frame(kinds["CHALLENGE"][1]).head
    keys = {p: k for (e, p), k in acore._branches[branch].keys.items() if e == 0}

    # Packets and chain frames (deterministic: nonces come from the DetRng).
    seq_frames: list[tuple[str, bytes]] = []
    for i, payload in enumerate([b"payment 1: 17.00 EUR", b"payment 2: 99.90 EUR", b"alert: card 4242 flagged"]):
        acore.publish(branch, payload, NOW + i)
        [o] = acore.data_to_send()
        frames.append(frame_vector(f"packet_{i + 1}", o.data, "author", deterministic=True,
                                   payload=payload.hex(), key=keys[0].hex()))
        seq_frames.append((f"packet_{i + 1}", o.data))
    acore.take_changes()
    acore.head_notices()
    [head_out] = acore.data_to_send()
    frames.append(frame_vector("head", head_out.data, "author", deterministic=True))
    # The subscriber receives the author's packets and acknowledges them (ACK, signed by member 1).
    for _n, d in seq_frames:
        score.receive(d, NOW)
    score.take_changes()
    score.data_to_send()
    score.acknowledge()
    [ack] = score.data_to_send()
    frames.append(frame_vector("ack", ack.data, "subscriber", deterministic=True))
    # An anchor proof of the author chain's head (seq 3), as the anchoring service sends it once confirmed.
    [(chain_head, key_epoch)] = acore.anchor_heads([(branch, 0)])
    anchor_epoch = build_epoch(acore.channel, [chain_head], None, NOW, author.sign)
    acore.anchor_proof(branch, 0, chain_head.seq, chain_head.hash, key_epoch, anchor_epoch.checkpoint, "0",
                       anchor_epoch.proofs[(branch, 0)])
    [ap] = acore.data_to_send()
    frames.append(frame_vector("anchor_proof", ap.data, "author", deterministic=True))
    ap_bad = bytearray(ap.data)
    ap_bad[-80] ^= 0x01  # inside the body (the inclusion path / checkpoint), under the signature
    score.publish(branch, b"provider reply", NOW)
    [sp] = score.data_to_send()
    frames.append(frame_vector("packet_sub_1", sp.data, "subscriber", deterministic=True,
                               payload=b"provider reply".hex(), key=keys[1].hex()))
    score.request_fetch(branch, 0, 1, 3)
    [fe] = score.data_to_send()
    frames.append(frame_vector("fetch_range", fe.data, "subscriber", deterministic=True))
    score.take_changes()

    # Amortized chain with a checkpoint (a second channel, same identities).
    acore2 = AuthorCore(author, name + "-amortized", AllowList.of([sub.did]),
                        CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=2),
                        rng=RunFirst(bytes(16), DetRng(b"author2")))
    b2 = acore2.open_branch(sub.public)
    acore2.data_to_send()
    acore2.publish(b2, b"unsigned 1", NOW)
    acore2.publish(b2, b"unsigned 2", NOW)
    outs = acore2.data_to_send()
    keys2 = {p: k for (e, p), k in acore2._branches[b2].keys.items() if e == 0}
    frames.append(frame_vector("packet_amortized_1", outs[0].data, None, deterministic=True,
                               payload=b"unsigned 1".hex(), key=keys2[0].hex()))
    frames.append(frame_vector("checkpoint", outs[2].data, "author", deterministic=True))

    # Unsubscribe and revoke on the first channel (after the sequence frames were recorded).
    acore.revoke(branch)
    [rv] = acore.data_to_send()
    frames.append(frame_vector("revoke", rv.data, "author", deterministic=True))
    unsub = encode_frame(Unsubscribe(acore.channel, branch, 1, 0, grant_hash), b"", sub.sign)
    frames.append(frame_vector("unsubscribe", unsub.raw, "subscriber", deterministic=True))
    subscribe_hash = decode_frame(kinds["SUBSCRIBE"][1]).hash
    refuse = encode_frame(Refuse(acore.channel, subscribe_hash, 15), b"", author.sign)
    frames.append(frame_vector("refuse", refuse.raw, "author", deterministic=True))

    # A sequence with verdicts, replayed against a fresh subscriber that holds the grant.
    p1, p2, p3 = (d for _, d in seq_frames)
    tampered = bytearray(p3)
    tampered[-70] ^= 0x01  # inside the ciphertext's tag (the signature is the last 64 bytes)
    other_channel = AuthorCore(author, "another-channel", AllowList(), rng=RunFirst(bytes(16), DetRng(b"other")))
    ob = other_channel.open_branch(sub.public)
    other_channel.data_to_send()
    other_channel.publish(ob, b"foreign", NOW)
    [foreign] = other_channel.data_to_send()
    steps = [
        ("packet 2 before 1: held, gap reported", p2, "hold"),
        ("packet 1: accepted, then held 2 follows", p1, "accept"),
        ("packet 1 again: replay", p1, "REPLAY"),
        ("packet 3 with a flipped ciphertext bit", bytes(tampered), "BAD_AEAD"),
        ("packet 3: accepted", p3, "accept"),
        ("packet of another channel: relay", foreign.data, "FOREIGN_CHANNEL"),
        ("packet 1 of this chain re-sent after 3: replay", p1, "REPLAY"),
        ("anchor proof with an altered body", bytes(ap_bad), "BAD_SIGNATURE"),
        ("anchor proof of the head (seq 3): anchored", ap.data, "anchored"),
        ("the same anchor proof again: ignored, no event (SPEC 13.5)", ap.data, "ignored"),
    ]

    # Merkle / anchoring vectors.
    blind = bytes(range(100, 132))
    heads = [ChainHead(bytes([i]) * 16, i % 2, 10 + i, hashlib.blake2b(bytes([i]), digest_size=32).digest(), blind)
             for i in range(5)]
    epoch = build_epoch(acore.channel, heads, None, NOW, author.sign)
    anchoring = {
        "blind_key": blind.hex(),
        "heads": [{"branch": h.branch.hex(), "publisher": h.publisher, "seq": h.seq, "hash": h.hash.hex(),
                   "leaf": h.leaf.hex()} for h in heads],
        "timestamp_ms": NOW,
        "root": epoch.checkpoint.root.hex(),
        "checkpoint_digest": epoch.checkpoint.digest.hex(),
        "checkpoint": epoch.payload.hex(),
        "proofs": [{"branch": k[0].hex(), "publisher": k[1], "index": p.index, "tree_size": p.tree_size,
                    "path": [x.hex() for x in p.path]} for k, p in sorted(epoch.proofs.items())],
    }

    # A re-key with heads (SPEC 8.5): the amortized branch made read-only for its subscriber, epoch 1, listing
    # both chains' heads.  Made last, so that every frame above keeps its bytes (the sealed boxes share one source).
    acore2.set_permission(b2, Permission.READ)
    [rk] = [o.data for o in acore2.data_to_send()]
    f = decode_frame(rk)
    shared, [entry] = decode_grant_body(f.body)
    assert shared is not None and f.head.epoch == 1
    plain = sub.unseal(entry.sealed)
    aad = _crypto.P_GRANT + f.head.branch + f.head.epoch.to_bytes(8, "big")
    frames.append(frame_vector(
        "grant_rekey", rk, "author", deterministic=True, sealed_to="subscriber", entry_hint=entry.hint.hex(),
        plaintext=plain.hex(), shared_aad=aad.hex(),
        shared_plaintext=_crypto.aead_decrypt(decode_grant_key(plain).shared_key, bytes(_crypto.NONCE_SIZE), aad,
                                              shared).hex()))

    hint_key = _hint_key(author, sub.kx_public, author.kx_public, sub.kx_public)
    doc = {
        "comment": "streams/1 known-answer vectors; see SPEC.md section 16. Regenerate with generate.py.",
        "protocol_version": 1,
        "now_ms": NOW,
        "identities": {"author": ident_vector(author), "subscriber": ident_vector(sub)},
        "channel": {"name": name, "id": acore.channel.hex(), "author_sign": author.sign_public.hex()},
        "derived": {
            "channel_id": channel_id(author.sign_public, name).hex(),
            "challenge_run": CHALLENGE_RUN.hex(),
            "challenge_key": author.derive_key(_crypto.P_CHALKEY, acore.channel + CHALLENGE_RUN).hex(),
            "challenge_nonce": challenge.nonce.hex(),
            "challenge_expires_ms": challenge.expires_ms,
            "challenge_mac": challenge.mac.hex(),
            "proof_digest": _proof_digest(acore.channel, author.sign_public, challenge.nonce,
                                          challenge.expires_ms, b"").hex(),
            "grant_hint_key": hint_key.hex(),
            "grant_hint": _hint(hint_key, acore.channel, branch, 0).hex(),
            "branch": branch.hex(),
            "grant_hash": grant_hash.hex(),
            "blinded_leaf_example": blinded_leaf(blind, bytes(16), 0, 1, bytes(32)).hex(),
        },
        "frames": frames,
        "sequence": {
            "setup": ["announce", "grant"],
            "steps": [{"what": w, "frame": d.hex(), "verdict": v} for w, d, v in steps],
        },
        "anchoring": anchoring,
    }
    names = [f["name"] for f in frames]
    assert len(set(names)) == len(names), names  # the tests look frames up by name
    out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out} ({len(frames)} frames)")


if __name__ == "__main__":
    main()
