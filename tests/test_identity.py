"""Identity and did:key: known-answer vectors, refusals of malformed DIDs, and secrecy of the seed.

The vectors are the Ed25519/X25519 test vectors of the W3C CCG did:key method
(w3c-ccg/did-method-key, ``test-vectors/ed25519-x25519.json`` and ``test-vectors/x25519.json``).
"""

from __future__ import annotations

import base64
import copy
import pickle
import traceback

import base58
import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import DecodeError, LocalProtocolError, VerificationError
from streams.identity import (
    Identity,
    KeyResolver,
    PublicIdentity,
    did_from_public_key,
    public_key_from_did,
    x25519_multibase,
)

# (seed hex, DID, Ed25519 publicKeyBase58, X25519 key id (multibase), X25519 publicKeyBase58,
#  X25519 privateKeyBase58) -- verbatim from test-vectors/ed25519-x25519.json.
ED25519_VECTORS = [
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
        "z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
        "7By6kV2t2d188odEM4ExAve1UithKT6dLva4dwsDT3ak",
        "6QN8DfuN9hjgHgPvLXqgzqYE3jRRGRrmJQZkd5tL8paR",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000001",
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
        "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt",
        "z6LSrHyXiPBhUbvPUtyUCdf32sniiMGPTAesgHrtEa4FePtr",
        "FcoNC5NqP9CePWbhfz95iHaEsCjGkZUioK9Ck7Qiw286",
        "HBTcN2MrXNRj9xF9oi8QqYyuEPv3JLLjQKuEgW9oxVKP",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000002",
        "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
        "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH",
        "z6LSkkqoZRC34AEpbkhZCqLDcHQVAxuLpQ7kC8XCXMVUfvjE",
        "A5fe37PAxhX5WNKngBpGHhC1KpNE7nwbK9oX2tqwxYxU",
        "ACa4PPJ1LnPNq1iwS33V3Akh7WtnC71WkKFZ9ccM6sX2",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000003",
        "did:key:z6MkvqoYXQfDDJRv8L4wKzxYeuKyVZBfi9Qo6Ro8MiLH3kDQ",
        "HPYVwAQmskwT1qEEeRzhoomyfyupJGASQQtCXSNG8XS2",
        "z6LSiUo6AEDat8Ze4nQzDo67SGuHLLwsUGkxndHGUjsywHow",
        "7ocvdvQinfqtyQ3Dh9aA7ggoVCQkmfaoueZazHETDv3B",
        "FZrzd1osCnbK6y6MJzMBW1RcVfL524sNKhSbqRwMuwHT",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000004",
        "did:key:z6MkwW6aqMnjgrhJXFUko3NnZPGzVpkNzhYK7yEhnsibmLwL",
        "J3qYF7YJMKCqQke47UQwiHizgFUXapHxRxKmxbkar89x",
        "z6LSrGb3qm4xMCEBjvwkLb2WEcXfTM94Tu1RyGCbT5wbg8i9",
        "FbQtKTG6FjWSeYZyowWYv2KBcCbwmHqH6HUuxdJ4xkwP",
        "8Zybi2bqQ8YB4uPm3iy2rkDCmbB4wkG2Y2ig5YAkgNdg",
    ),
]

# X25519 did:keys from test-vectors/x25519.json: valid did:keys, but not Ed25519 ones.
X25519_DIDS = [
    "did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F",
    "did:key:z6LStiZsmxiK4odS4Sb6JmdRFuJ6e1SYP157gtiCyJKfrYha",
    "did:key:z6LSoMdmJz2Djah2P4L9taDmtqeJ6wwd2HhKZvNToBmvaczQ",
]

GOOD_DID = ED25519_VECTORS[0][1]
GOOD_KEY = base58.b58decode(ED25519_VECTORS[0][2])


def _did_of(raw: bytes) -> str:
    return "did:key:z" + base58.b58encode(raw).decode()


# --- known answers ---


@pytest.mark.parametrize(("seed", "did", "pub58", "kx_id", "kx58", "kx_priv58"), ED25519_VECTORS)
def test_vector_seed_to_did(seed: str, did: str, pub58: str, kx_id: str, kx58: str, kx_priv58: str) -> None:
    ident = Identity.from_seed(bytes.fromhex(seed))
    assert ident.did == did
    assert ident.sign_public == base58.b58decode(pub58)
    assert ident.kx_public == base58.b58decode(kx58)


@pytest.mark.parametrize(("seed", "did", "pub58", "kx_id", "kx58", "kx_priv58"), ED25519_VECTORS)
def test_vector_did_to_keys(seed: str, did: str, pub58: str, kx_id: str, kx58: str, kx_priv58: str) -> None:
    assert public_key_from_did(did) == base58.b58decode(pub58)
    assert did_from_public_key(base58.b58decode(pub58)) == did
    pub = PublicIdentity.from_did(did)
    assert x25519_multibase(pub.kx_public) == kx_id
    assert pub.kx_public == base58.b58decode(kx58)
    assert pub.did == did
    doc = KeyResolver().resolve(did)
    assert (doc.id, doc.sign_public, doc.kx_public) == (did, pub.sign_public, pub.kx_public)


@pytest.mark.parametrize(("seed", "did", "pub58", "kx_id", "kx58", "kx_priv58"), ED25519_VECTORS)
def test_vector_key_agreement_secret(
    seed: str, did: str, pub58: str, kx_id: str, kx58: str, kx_priv58: str
) -> None:
    """The identity's X25519 secret is the vector's: a peer's DH with the vector private key equals the
    peer's DH with our public key, and a box sealed to the vector's public key opens with our identity."""
    kx_priv = base58.b58decode(kx_priv58)
    kx_pub = base58.b58decode(kx58)
    assert nacl.bindings.crypto_scalarmult_base(kx_priv) == kx_pub  # the vector is self-consistent
    ident = Identity.from_seed(bytes.fromhex(seed))
    sealed = nacl.bindings.crypto_box_seal(b"to the vector key", kx_pub)
    assert ident.unseal(sealed) == b"to the vector key"


@pytest.mark.parametrize("did", X25519_DIDS)
def test_x25519_did_is_not_an_ed25519_did(did: str) -> None:
    with pytest.raises(DecodeError, match="multicodec"):
        public_key_from_did(did)


# --- refusals ---

BAD_DIDS = {
    "empty": "",
    "no method": "did:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "other method": "did:web:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "upper-case scheme": "DID:KEY:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "leading space": " " + GOOD_DID,
    "trailing space": GOOD_DID + " ",
    "trailing newline": GOOD_DID + "\n",
    "trailing tab": GOOD_DID + "\t",
    "fragment": GOOD_DID + "#z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "path": GOOD_DID + "/path",
    "query": GOOD_DID + "?service=x",
    "params": GOOD_DID + ";p=1",
    "no multibase": "did:key:",
    "bare z": "did:key:z",
    "base64url multibase": "did:key:u"
    + base64.urlsafe_b64encode(b"\xed\x01" + GOOD_KEY).decode().rstrip("="),
    "hex multibase": "did:key:f" + (b"\xed\x01" + GOOD_KEY).hex(),
    "non-base58 zero": "did:key:z6Mk0TBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "non-base58 O": "did:key:z6MkOTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "non-base58 I": "did:key:z6MkITBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "non-base58 l": "did:key:z6MklTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "non-ascii": "did:key:z6Mk\u00e9TBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    "leading zero byte": _did_of(b"\x00\xed\x01" + GOOD_KEY),
    "key 31 bytes": _did_of(b"\xed\x01" + GOOD_KEY[:31]),
    "key 33 bytes": _did_of(b"\xed\x01" + GOOD_KEY + b"\x00"),
    "prefix only": _did_of(b"\xed\x01"),
    "secp256k1 multicodec": _did_of(b"\xe7\x01\x02" + GOOD_KEY),
    "x25519 multicodec": _did_of(b"\xec\x01" + GOOD_KEY),
    "truncated varint": _did_of(b"\xed" + GOOD_KEY + b"\x00"),
    # y = 2 is not the y-coordinate of any point on edwards25519.
    "not on curve": _did_of(b"\xed\x01" + (2).to_bytes(32, "little")),
    # The neutral element (y = 1) is on the curve but of small order: a key anyone can "sign" for.
    "small order": _did_of(b"\xed\x01" + (1).to_bytes(32, "little")),
    # y = p (non-canonical encoding of y = 0).
    "non-canonical y": _did_of(b"\xed\x01" + ((1 << 255) - 19).to_bytes(32, "little")),
}


@pytest.mark.parametrize("did", list(BAD_DIDS.values()), ids=list(BAD_DIDS))
def test_malformed_did_refused(did: str) -> None:
    with pytest.raises(DecodeError) as info:
        public_key_from_did(did)
    assert isinstance(info.value, ValueError)
    with pytest.raises(DecodeError):
        PublicIdentity.from_did(did)
    with pytest.raises(DecodeError):
        KeyResolver().resolve(did)


def test_good_did_accepted_as_control() -> None:
    """The refusals above are not an artefact of the helper: the same construction gives a valid DID."""
    assert _did_of(b"\xed\x01" + GOOD_KEY) == GOOD_DID
    assert public_key_from_did(GOOD_DID) == GOOD_KEY


@pytest.mark.parametrize("value", [None, 42, b"did:key:z6Mk", ["did:key:"]])
def test_non_string_did_refused(value: object) -> None:
    with pytest.raises(DecodeError):
        public_key_from_did(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_did_from_wrong_length_key(length: int) -> None:
    with pytest.raises(LocalProtocolError):
        did_from_public_key(b"\x01" * length)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_seed_must_be_32_bytes(length: int) -> None:
    with pytest.raises(LocalProtocolError):
        Identity(b"\x07" * length)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_did_round_trip(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    assert public_key_from_did(ident.did) == ident.sign_public
    assert PublicIdentity.from_did(ident.did) == ident.public


# --- signatures ---


def test_sign_and_verify() -> None:
    ident = Identity.from_seed(bytes(range(32)))
    digest = bytes(32)
    sig = ident.sign(digest)
    PublicIdentity.from_did(ident.did).verify(digest, sig)
    with pytest.raises(VerificationError):
        ident.public.verify(b"\x01" + digest[1:], sig)
    with pytest.raises(VerificationError):
        ident.public.verify(digest, sig[:-1] + bytes([sig[-1] ^ 1]))
    other = Identity.from_seed(bytes(range(1, 33)))
    with pytest.raises(VerificationError):
        other.public.verify(digest, sig)


# --- secrecy, pickling, equality ---

SECRET_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def _renderings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        base58.b58encode(secret).decode(),
        repr(secret),
    ]


def test_repr_and_str_never_show_the_seed() -> None:
    ident = Identity.from_seed(SECRET_SEED)
    secret64 = SECRET_SEED + ident.sign_public  # libsodium's secret key layout
    texts = [repr(ident), str(ident), f"{ident}", f"{ident!r}", repr([ident]), repr({"k": ident})]
    for text in texts:
        assert ident.did in text
        for rendering in _renderings(SECRET_SEED) + _renderings(secret64):
            assert rendering not in text


def test_seed_not_in_exception_text() -> None:
    ident = Identity.from_seed(SECRET_SEED)
    with pytest.raises(TypeError) as info:
        pickle.dumps(ident)
    text = "".join(traceback.format_exception(info.value))
    for rendering in _renderings(SECRET_SEED):
        assert rendering not in text


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_refused(protocol: int) -> None:
    ident = Identity.from_seed(SECRET_SEED)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(ident, protocol=protocol)


def test_copying_refused() -> None:
    # copy goes through the same __reduce_ex__ path; a silent copy would spread the seed around.
    ident = Identity.from_seed(SECRET_SEED)
    with pytest.raises(TypeError):
        copy.copy(ident)
    with pytest.raises(TypeError):
        copy.deepcopy(ident)


def test_no_instance_dict() -> None:
    # __slots__ keeps the secret attributes to a fixed, known set (no stray copies in a __dict__).
    ident = Identity.from_seed(SECRET_SEED)
    assert not hasattr(ident, "__dict__")


def test_equality_and_hash() -> None:
    a = Identity.from_seed(SECRET_SEED)
    b = Identity.from_seed(bytes(SECRET_SEED))
    c = Identity.from_seed(bytes(32))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != a.public  # an Identity never equals its public half
    assert a != a.did
    assert (a == object()) is False
    assert a.__eq__(object()) is NotImplemented


def test_export_seed_round_trip() -> None:
    ident = Identity.from_seed(SECRET_SEED)
    assert Identity.from_seed(ident.export_seed()) == ident
    assert ident.export_seed() == SECRET_SEED


def test_generate_gives_distinct_identities() -> None:
    assert Identity.generate() != Identity.generate()


def test_derive_key_is_domain_separated() -> None:
    ident = Identity.from_seed(SECRET_SEED)
    k1 = ident.derive_key(b"purpose-one")
    assert len(k1) == 32
    assert k1 == Identity.from_seed(SECRET_SEED).derive_key(b"purpose-one")
    assert k1 != ident.derive_key(b"purpose-two")
    assert k1 != ident.derive_key(b"purpose-one", b"ctx")
    assert k1 != Identity.from_seed(bytes(32)).derive_key(b"purpose-one")


def test_an_overlong_did_key_is_refused_before_its_base58_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base58 decode takes time that grows with the square of the length (1.5 s for 64,000 characters):
    anything longer than an Ed25519 did:key can be is refused unread (a credential's verificationMethod, an
    anchored status list's issuer, a keystore file carry DIDs from outside)."""
    import streams.identity as identity_mod

    decoded: list[str] = []
    real = identity_mod.base58.b58decode

    def counting(s: str | bytes) -> bytes:
        decoded.append(s if isinstance(s, str) else s.decode())
        return real(s)

    monkeypatch.setattr(identity_mod.base58, "b58decode", counting)
    long_did = "did:key:z6Mk" + "k" * 64_000
    with pytest.raises(DecodeError, match="too long"):
        public_key_from_did(long_did)
    assert decoded == []
    # Every canonical Ed25519 did:key is well under the bound (48 characters of multibase), and still reads.
    for i in range(200):
        did = Identity.from_seed(bytes([i]) * 32).did
        assert len(did) == len("did:key:") + 48
        assert public_key_from_did(did) == Identity.from_seed(bytes([i]) * 32).sign_public
