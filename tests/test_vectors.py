"""The implementation against the committed known-answer vectors (tests/vectors/protocol.json).

Every expected value is read from the file (SPEC.md section 16); the last test checks that the generator,
run again, writes that file byte for byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams import _crypto, merkle
from streams.anchor import ChainHead, EpochCheckpoint, InclusionProof, blinded_leaf, verify_inclusion
from streams.core import SubscriberCore, _hint, _hint_key, _proof_digest, channel_id
from streams.events import Anchored, GapDetected, MessageReceived, Rejected
from streams.identity import Identity, PublicIdentity, x25519_multibase
from streams.wire import (
    VERSION,
    Kind,
    decode_frame,
    decode_grant_body,
    decode_grant_key,
    decode_grant_shared,
    decode_subscribe_secret,
    encode_frame,
)

V: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "protocol.json").read_text())
IDS = {k: Identity.from_seed(bytes.fromhex(v["seed"])) for k, v in V["identities"].items()}
FRAMES = {f["name"]: f for f in V["frames"]}
HERE = Path(__file__).resolve().parent


def test_frame_names_are_unique() -> None:
    assert len(FRAMES) == len(V["frames"])  # a repeated name would hide a frame from every test below


def test_protocol_version() -> None:
    assert V["protocol_version"] == VERSION


@pytest.mark.parametrize("who", sorted(V["identities"]))
def test_identities(who: str) -> None:
    v, i = V["identities"][who], IDS[who]
    assert i.sign_public.hex() == v["sign_public"]
    assert i.kx_public.hex() == v["kx_public"]
    assert i.did == v["did"]
    assert x25519_multibase(i.kx_public) == v["kx_multibase"]
    assert PublicIdentity.from_did(v["did"]).kx_public.hex() == v["kx_public"]


def test_derived_values() -> None:
    d, author, sub = V["derived"], IDS["author"], IDS["subscriber"]
    ch = bytes.fromhex(V["channel"]["id"])
    assert channel_id(author.sign_public, V["channel"]["name"]).hex() == d["channel_id"] == V["channel"]["id"]
    key = author.derive_key(_crypto.P_CHALKEY, ch + bytes.fromhex(d["challenge_run"]))  # (SPEC 8.3: per run)
    assert key.hex() == d["challenge_key"]
    nonce = bytes.fromhex(d["challenge_nonce"])
    mac = _crypto.mac16(key, _crypto.P_CHALLENGE, ch, nonce, d["challenge_expires_ms"].to_bytes(8, "big"))
    assert mac.hex() == d["challenge_mac"]
    assert _proof_digest(ch, author.sign_public, nonce, d["challenge_expires_ms"], b"").hex() == d["proof_digest"]
    # The hint key from either side of the agreement (SPEC 8.5), then the hint.
    key = _hint_key(author, sub.kx_public, author.kx_public, sub.kx_public)
    assert key == _hint_key(sub, author.kx_public, author.kx_public, sub.kx_public)
    assert key.hex() == d["grant_hint_key"]
    assert _hint(key, ch, bytes.fromhex(d["branch"]), 0).hex() == d["grant_hint"]
    assert blinded_leaf(bytes.fromhex(V["anchoring"]["blind_key"]), bytes(16), 0, 1, bytes(32)).hex() \
        == d["blinded_leaf_example"]


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_frame_decodes_to_the_vector_and_hash_and_signature_hold(name: str) -> None:
    v = FRAMES[name]
    raw = bytes.fromhex(v["raw"])
    f = decode_frame(raw)
    assert f.kind is Kind[v["kind"]]
    for fl in dataclasses.fields(f.head):
        got = getattr(f.head, fl.name)
        assert (got.hex() if isinstance(got, bytes) else got) == v["head"][fl.name], fl.name
    assert f.body.hex() == v["body"]
    assert f.sig.hex() == v["sig"]
    assert f.hash.hex() == v["hash"]
    # message hash per SPEC 6.3
    assert _crypto.hash32(_crypto.P_MSG, bytes((VERSION, f.kind)), f.head_raw, f.body).hex() == v["hash"]
    if v["signer"]:
        IDS[v["signer"]].public.verify(f.hash, f.sig)


@pytest.mark.parametrize("name", sorted(n for n, f in FRAMES.items() if f["deterministic"]))
def test_deterministic_frames_are_reproduced_byte_for_byte(name: str) -> None:
    v = FRAMES[name]
    f = decode_frame(bytes.fromhex(v["raw"]))
    body = f.body
    if "payload" in v:  # recompute the ciphertext from key, nonce and associated data (SPEC 7.4)
        body = _crypto.aead_encrypt(bytes.fromhex(v["key"]), f.head.nonce, f.aad, bytes.fromhex(v["payload"]))
        assert body.hex() == v["body"]
    signer = IDS[v["signer"]].sign if v["signer"] else None
    assert encode_frame(f.head, body, signer).raw.hex() == v["raw"]


def test_the_answers_to_the_subscribe_name_it() -> None:
    """ADMIT and REFUSE are bound to the SUBSCRIBE they answer by its message hash (SPEC 8.6)."""
    subscribe, grant = FRAMES["subscribe"], FRAMES["grant"]
    assert FRAMES["admit"]["head"]["request"] == FRAMES["refuse"]["head"]["request"] == subscribe["hash"]
    assert (FRAMES["admit"]["head"]["branch"], FRAMES["admit"]["head"]["epoch"]) == (grant["head"]["branch"], 0)


def test_packets_decrypt_to_their_payloads() -> None:
    for v in FRAMES.values():
        if "payload" in v:
            f = decode_frame(bytes.fromhex(v["raw"]))
            pt = _crypto.aead_decrypt(bytes.fromhex(v["key"]), f.head.nonce, f.aad, f.body)
            assert pt.hex() == v["payload"]


def test_sealed_bodies_open_to_the_vector_plaintexts() -> None:
    sub = FRAMES["subscribe"]
    f = decode_frame(bytes.fromhex(sub["raw"]))
    pt = IDS["author"].unseal(f.body)
    assert pt.hex() == sub["plaintext"]
    s = decode_subscribe_secret(pt)
    assert s.sign_public == IDS["subscriber"].sign_public
    assert s.nonce.hex() == V["derived"]["challenge_nonce"]
    IDS["subscriber"].public.verify(bytes.fromhex(V["derived"]["proof_digest"]), s.proof)
    grant = FRAMES["grant"]
    shared, [entry] = decode_grant_body(bytes.fromhex(grant["body"]))
    assert shared is not None  # the current layout (SPEC 8.5)
    assert entry.hint.hex() == grant["entry_hint"] == V["derived"]["grant_hint"]
    pt = IDS["subscriber"].unseal(entry.sealed)
    assert pt.hex() == grant["plaintext"]
    key = decode_grant_key(pt)
    assert key.index == 1
    f = decode_frame(bytes.fromhex(grant["raw"]))
    aad = _crypto.P_GRANT + f.head.branch + f.head.epoch.to_bytes(8, "big")
    assert aad.hex() == grant["shared_aad"]
    inner = _crypto.aead_decrypt(key.shared_key, bytes(_crypto.NONCE_SIZE), aad, shared)
    assert inner.hex() == grant["shared_plaintext"]
    members, heads = decode_grant_shared(inner)
    assert [m[1] for m in members] == [IDS["author"].sign_public, IDS["subscriber"].sign_public] and heads == []
    keys = dict(key.keys)
    assert keys[0].hex() == FRAMES["packet_1"]["key"]
    assert keys[1].hex() == FRAMES["packet_sub_1"]["key"]


def test_sequence_verdicts() -> None:
    seq = V["sequence"]
    core = SubscriberCore(IDS["subscriber"], IDS["author"].did, bytes.fromhex(V["channel"]["id"]))
    for name in seq["setup"]:
        assert not [e for e in core.receive(bytes.fromhex(FRAMES[name]["raw"]), V["now_ms"])
                    if isinstance(e, Rejected)]
    for step in seq["steps"]:
        ev = core.receive(bytes.fromhex(step["frame"]), V["now_ms"])
        rejected = [e.reason.name for e in ev if isinstance(e, Rejected)]
        if step["verdict"] == "anchored":
            assert not rejected, step["what"]
            assert any(isinstance(e, Anchored) for e in ev), step["what"]
        elif step["verdict"] == "accept":
            assert not rejected, step["what"]
            assert any(isinstance(e, MessageReceived) for e in ev), step["what"]
        elif step["verdict"] == "ignored":
            assert ev == [], step["what"]
        elif step["verdict"] == "hold":
            assert not rejected, step["what"]
            assert any(isinstance(e, GapDetected) for e in ev), step["what"]
            assert not any(isinstance(e, MessageReceived) for e in ev), step["what"]
        else:
            assert rejected == [step["verdict"]], step["what"]


def test_anchoring_vectors() -> None:
    a = V["anchoring"]
    blind = bytes.fromhex(a["blind_key"])
    heads = [ChainHead(bytes.fromhex(h["branch"]), h["publisher"], h["seq"], bytes.fromhex(h["hash"]), blind)
             for h in a["heads"]]
    assert [h.leaf.hex() for h in heads] == [h["leaf"] for h in a["heads"]]
    leaves = sorted(h.leaf for h in heads)
    assert merkle.MerkleTree(leaves).root.hex() == a["root"]
    cp = EpochCheckpoint.decode(bytes.fromhex(a["checkpoint"]))
    assert cp.root.hex() == a["root"]
    assert cp.digest.hex() == a["checkpoint_digest"]
    assert cp.timestamp_ms == a["timestamp_ms"]
    by_key = {(h.branch, h.publisher): h for h in heads}
    for p in a["proofs"]:
        head = by_key[(bytes.fromhex(p["branch"]), p["publisher"])]
        proof = InclusionProof(cp.epoch, p["index"], p["tree_size"], tuple(bytes.fromhex(x) for x in p["path"]))
        verify_inclusion(head, proof, cp, IDS["author"].sign_public)


def test_every_message_kind_has_a_vector() -> None:
    assert {Kind[f["kind"]] for f in V["frames"]} == set(Kind)


def test_the_generator_reproduces_the_committed_vectors(tmp_path: Path) -> None:
    """Fixed seeds and a fixed source for every random draw (sealed boxes' ephemeral keys included): a file that
    drifted from the code that generates it, or a generator that drifted from the protocol, is caught here."""
    out = tmp_path / "protocol.json"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, str(HERE / "vectors" / "generate.py"), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == (HERE / "vectors" / "protocol.json").read_bytes()
