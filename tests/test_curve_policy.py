"""CurveZMQ's ZAP handler follows the channel (SPEC 14.5): an :class:`~streams.api.Author` given a CURVE endpoint
without a ``known_key`` callback installs its own, which admits the members of its open branches and the DIDs
its policy could admit -- and follows admissions, revocations, policy changes and restarts.

Real ZeroMQ sockets on tcp loopback, real stores.  "Refused by ZAP" is told apart from "refused by the protocol"
by the author endpoint's peers: a connection whose handshake ZAP refused never delivers a frame, so it never
gets a peer record; a HELLO refused by the policy does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import nacl.bindings as nb
import pytest
import zmq
import zmq.asyncio
import zmq.utils.z85

from brokerless import AuthorEndpoint, CurveConfig, EndpointConfig, SubscriberEndpoint
from streams import _crypto
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.errors import AdmissionRefused, LocalProtocolError, StreamsTimeoutError
from streams.identity import Identity, PublicIdentity, dids_of_kx_public
from streams.policy import AllOf, AllowList, AnyOf, Decision, DenyList, SubscriptionRequest, could_admit

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
NAME = "fraud-monitor"
CORE = CoreConfig(fetch_retry_ms=200)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


AUTHOR, P1, P2, P3 = ident(1), ident(20), ident(21), ident(22)


class Twin:
    """``real``'s twin: the Ed25519 key negated (sign bit flipped), signing with the negated scalar -- a valid
    DID and valid signatures, with ``real``'s X25519 key pair.  Anyone holding ``real``'s seed can be it."""

    def __init__(self, real: Identity) -> None:
        self._real = real
        h = hashlib.sha512(real.export_seed()).digest()
        a = bytearray(h[:32])
        a[0] &= 248
        a[31] &= 127
        a[31] |= 64
        self._a = nb.crypto_core_ed25519_scalar_negate(nb.crypto_core_ed25519_scalar_reduce(bytes(a) + bytes(32)))
        self._prefix = h[32:]
        pk = bytearray(real.sign_public)
        pk[31] ^= 0x80
        self.public = PublicIdentity(bytes(pk), real.kx_public)
        assert nb.crypto_scalarmult_ed25519_base_noclamp(self._a) == bytes(pk)

    @property
    def did(self) -> str:
        return self.public.did

    @property
    def sign_public(self) -> bytes:
        return self.public.sign_public

    @property
    def kx_public(self) -> bytes:
        return self.public.kx_public

    def sign(self, m: bytes) -> bytes:
        r = nb.crypto_core_ed25519_scalar_reduce(hashlib.sha512(self._prefix + b"twin" + m).digest())
        big_r = nb.crypto_scalarmult_ed25519_base_noclamp(r)
        k = nb.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + self.sign_public + m).digest())
        return big_r + nb.crypto_core_ed25519_scalar_add(r, nb.crypto_core_ed25519_scalar_mul(k, self._a))

    def unseal(self, sealed: bytes) -> bytes:
        return self._real.unseal(sealed)

    def export_seed(self) -> bytes:
        return self._real.export_seed()


def _author_ep() -> AuthorEndpoint:
    return AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_author(AUTHOR)))


def _sub_ep(ep: AuthorEndpoint, who: Identity) -> SubscriberEndpoint:
    cfg = EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_subscriber(who, AUTHOR.did))
    return SubscriberEndpoint(ep.addresses[0], cfg)


async def _subscriber(tmp: Path, name: str, who: Identity, author: Author, ep: AuthorEndpoint) -> Subscriber:
    return await Subscriber.create(tmp / f"{name}.db", who, AUTHOR.did, author.channel, PW, _sub_ep(ep, who),
                                   store_options=FAST, config=CORE)


async def _refused_by_zap(tmp: Path, name: str, who: Identity, author: Author, ep: AuthorEndpoint) -> None:
    """``who`` tries to subscribe on a new connection: it must time out, and no frame of that connection may
    reach the author's endpoint (no new peer record: ZAP refused the handshake)."""
    before = set(ep.peers())
    sub = await _subscriber(tmp, name, who, author, ep)
    try:
        with pytest.raises(StreamsTimeoutError):
            await sub.subscribe(timeout=1.0, retry=0.3)
    finally:
        await sub.close()
    assert set(ep.peers()) <= before, "a frame of a connection ZAP should have refused reached the endpoint"


async def test_author_installs_its_zap_decision(tmp_path: Path) -> None:
    """Without a known_key callback the author's own decision guards the CURVE handshake: a listed DID gets in and
    is served; a stranger with perfectly good CURVE keys of its own never reaches the protocol core."""
    ep = _author_ep()
    assert ep.wants_known_key
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    try:
        assert not ep.wants_known_key  # installed
        assert author.knows_key(P1.public.kx_public) and not author.knows_key(P2.public.kx_public)
        ok = await _subscriber(tmp_path, "p1", P1, author, ep)
        branch = await ok.subscribe(timeout=10)
        await author.publish(branch, b"over curve")
        assert (await ok.next_message(timeout=10)).payload == b"over curve"
        await _refused_by_zap(tmp_path, "p2", P2, author, ep)
        assert author.branch_of(P2.did) is None
        await ok.close()
    finally:
        await author.close()


async def test_zap_follows_membership_policy_and_revocation(tmp_path: Path) -> None:
    """A member stays known after the policy stops listing it (its branch is open), a DID the new policy would
    refuse is kept out, and a revoked member's next connection is refused."""
    ep = _author_ep()
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did, P2.did]),
                                 store_options=FAST, config=CORE)
    try:
        first = await _subscriber(tmp_path, "p1", P1, author, ep)
        branch = await first.subscribe(timeout=10)
        await first.close()
        author.policy = AllowList.of([])  # nobody new
        assert author.knows_key(P1.public.kx_public)  # a member of an open branch
        assert not author.knows_key(P2.public.kx_public)
        # P1 again, on a new connection (its store kept): admitted by ZAP, served by the protocol.
        again = await Subscriber.open(tmp_path / "p1.db", PW, _sub_ep(ep, P1), config=CORE, store_options=FAST)
        await author.publish(branch, b"still a member")
        assert (await again.next_message(timeout=10)).payload == b"still a member"
        await again.close()
        await _refused_by_zap(tmp_path, "p2", P2, author, ep)
        await author.revoke(branch)
        assert not author.knows_key(P1.public.kx_public)
        await _refused_by_zap(tmp_path, "p1-after-revoke", P1, author, ep)
    finally:
        await author.close()


async def test_zap_members_come_back_with_the_store(tmp_path: Path) -> None:
    """After a restart the members of open branches are known again, from the store, even under a policy that
    would no longer admit them."""
    ep = _author_ep()
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    try:
        sub = await _subscriber(tmp_path, "p1", P1, author, ep)
        branch = await sub.subscribe(timeout=10)
        await sub.close()
    finally:
        await author.close()
    ep2 = _author_ep()
    author = await Author.open(tmp_path / "author.db", PW, ep2, AllowList.of([]), store_options=FAST, config=CORE)
    try:
        assert author.knows_key(P1.public.kx_public)
        assert not author.knows_key(P2.public.kx_public)
        again = await Subscriber.open(tmp_path / "p1.db", PW, _sub_ep(ep2, P1), config=CORE, store_options=FAST)
        await author.publish(branch, b"after the restart")
        assert (await again.next_message(timeout=10)).payload == b"after the restart"
        await again.close()
    finally:
        await author.close()


async def test_a_denied_did_cannot_come_back_as_its_twin(tmp_path: Path) -> None:
    """The twin of a denied DID is a valid DID with valid signatures, held by the same party: a deny-list refuses
    it -- at the handshake (same X25519 key) and, without CURVE, at the subscription."""
    twin = Twin(P2)
    nb.crypto_sign_open(twin.sign(b"x" * 32) + b"x" * 32, twin.sign_public)
    policy = DenyList(frozenset({P2.did}))
    ep = _author_ep()
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, policy, store_options=FAST,
                                 config=CORE)
    try:
        assert not author.knows_key(P2.public.kx_public) and author.knows_key(P1.public.kx_public)
        await _refused_by_zap(tmp_path, "p2", P2, author, ep)
    finally:
        await author.close()

    # Without CURVE, at the subscription: the cores wired together (a store refuses a look-alike identity, whose
    # DID its seed does not give).
    from streams.events import Refused

    from .corenet import Net

    net = Net.make(policy=policy, n_subs=0)
    net.add_sub("twin", twin)  # type: ignore[arg-type]
    assert [e for e in net.subscribe("twin") if isinstance(e, Refused)]
    assert net.author.branch_of(twin.did) is None


async def test_zap_knows_group_members_and_pre_opened_branches(tmp_path: Path) -> None:
    """Under a policy that admits nobody new, the members of a group and of a branch opened ahead are known; a
    member removed from the group is not (no other branch of it is open); after a restart, the same."""
    ep = _author_ep()
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([]),
                                 store_options=FAST, config=CORE)
    try:
        group = await author.open_group([P1.did, P2.did])
        await author.open_branch(P3.did)
        assert [await _frames_arrive(ep, who, 10.0) for who in (P1, P2, P3)] == [True, True, True]
        await author.remove_member(group, P2.did)
        assert not author.knows_key(P2.public.kx_public)
        assert not await _frames_arrive(ep, P2, 1.0)
        assert await _frames_arrive(ep, P1, 10.0)
    finally:
        await author.close()
    ep2 = _author_ep()
    author = await Author.open(tmp_path / "author.db", PW, ep2, AllowList.of([]), store_options=FAST, config=CORE)
    try:
        assert [author.knows_key(w.public.kx_public) for w in (P1, P2, P3)] == [True, False, True]
        assert await _frames_arrive(ep2, P3, 10.0)
        assert not await _frames_arrive(ep2, P2, 1.0)
    finally:
        await author.close()


class _OnlyP3:
    """A policy with no ``could_admit``: it needs the request (as a credential policy does)."""

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        if request.did == P3.did:
            return Decision(True, "P3")
        return Decision.refuse("not P3")


async def test_a_policy_that_needs_the_request_lets_the_handshake_through(tmp_path: Path) -> None:
    """ZAP cannot see a credential: under such a policy the handshake admits every key, and the subscription
    decides (P3 is admitted; P1 gets through the handshake and is refused by the protocol)."""
    ep = _author_ep()
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, _OnlyP3(), store_options=FAST,
                                 config=CORE)
    try:
        ok = await _subscriber(tmp_path, "p3", P3, author, ep)
        await ok.subscribe(timeout=10)
        await ok.close()
        before = set(ep.peers())
        refused = await _subscriber(tmp_path, "p1", P1, author, ep)
        with pytest.raises(AdmissionRefused):
            await refused.subscribe(timeout=10, retry=0.3)
        await refused.close()
        assert set(ep.peers()) - before, "P1's HELLO should have reached the author"
    finally:
        await author.close()


async def test_explicit_known_key_is_kept(tmp_path: Path) -> None:
    """A callback given to the endpoint is the user's decision: the author does not replace it."""
    cfg = EndpointConfig(heartbeat_ms=100, curve=CurveConfig.for_author(AUTHOR))
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg, known_key=lambda k: False)
    assert not ep.wants_known_key
    author = await Author.create(tmp_path / "author.db", AUTHOR, NAME, PW, ep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    try:
        assert author.knows_key(P1.public.kx_public)  # the author would admit it ...
        await _refused_by_zap(tmp_path, "p1", P1, author, ep)  # ... but the endpoint's own callback refuses
        await author.open_branch(P3.did)  # members count in knows_key whoever decides at the endpoint
        assert author.knows_key(P3.public.kx_public)
    finally:
        await author.close()


async def _frames_arrive(ep: AuthorEndpoint, who: Identity, timeout: float) -> bool:
    """A raw CURVE DEALER keyed as ``who`` sends a PING: whether the endpoint receives anything from it."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    cfg = CurveConfig.for_subscriber(who, AUTHOR.did)
    assert cfg.server_public is not None
    sock.curve_serverkey = zmq.utils.z85.encode(cfg.server_public)
    sock.curve_publickey = zmq.utils.z85.encode(cfg.public)
    sock.curve_secretkey = zmq.utils.z85.encode(cfg.secret)
    before = ep.stats.frames_in
    try:
        sock.connect(ep.addresses[0])
        await sock.send(b"\x01")  # a PING
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if ep.stats.frames_in > before:
                return True
            await asyncio.sleep(0.02)
        return False
    finally:
        sock.close(0)
        ctx.term()


async def test_endpoint_without_a_decision_refuses_everyone_until_one_is_installed() -> None:
    """Fail closed: a CURVE endpoint nobody gave a decision admits no one (it would otherwise only look like a
    guard); installing one admits from the next handshake on."""
    ep = _author_ep()
    assert ep.wants_known_key
    task = asyncio.ensure_future(ep.recv())  # the endpoint serves (its ZAP task runs) while a driver waits
    try:
        assert not await _frames_arrive(ep, P1, 1.0)

        async def coroutine_says_no(key: bytes) -> bool:
            return False

        ep.admit_keys(coroutine_says_no)  # type: ignore[arg-type]  # a coroutine is truthy: must not admit
        assert not await _frames_arrive(ep, P1, 1.0)
        ep.admit_keys(lambda k: k == P1.public.kx_public)
        assert not ep.wants_known_key
        assert await _frames_arrive(ep, P1, 10.0)
        assert not await _frames_arrive(ep, P2, 1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ep.close()
    plain = AuthorEndpoint("tcp://127.0.0.1:0")
    try:
        assert not plain.wants_known_key
        with pytest.raises(LocalProtocolError):
            plain.admit_keys(lambda k: True)
    finally:
        await plain.close()


def test_could_admit_of_the_policies() -> None:
    a, b = P1.did, P2.did
    assert could_admit(AllowList.of([a]), a) and not could_admit(AllowList.of([a]), b)
    assert not could_admit(DenyList(frozenset({a})), a) and could_admit(DenyList(frozenset({a})), b)
    assert could_admit(AnyOf((AllowList.of([a]), AllowList.of([b]))), b)
    assert not could_admit(AnyOf(()), a)
    assert not could_admit(AllOf((AllowList.of([a, b]), DenyList(frozenset({b})))), b)
    assert could_admit(AllOf((AllowList.of([a, b]), DenyList(frozenset({b})))), a)
    assert not could_admit(AllOf(()), a)
    assert could_admit(_OnlyP3(), a)  # cannot tell from the DID: the request decides

    class Broken:
        def could_admit(self, did: str) -> bool:
            raise RuntimeError("bug")

        def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
            return Decision.refuse("no")

    assert could_admit(Broken(), a)  # the handshake is not where a policy's bug locks everyone out


def test_could_admit_of_a_policy_file(tmp_path: Path) -> None:
    from streams.policy_file import PolicyFileError, load_policy

    f = tmp_path / "policy.toml"
    f.write_text(f"[policy]\nmode = 'any'\ndeny = ['{P2.did}']\n[[policy.allow]]\ndid = '{P1.did}'\n")
    pol = load_policy(f)
    assert could_admit(pol, P1.did) and not could_admit(pol, P3.did)
    assert not could_admit(pol, P2.did) and not could_admit(pol, Twin(P2).did)
    # With a credential rule anyone might be admitted -- except a denied DID and its twin: the deny-list wins.
    f.write_text(f"[policy]\nmode = 'any'\ndeny = ['{P2.did}']\n[[policy.credential]]\n"
                 f"type = 'PaymentProviderCredential'\nissuers = ['{AUTHOR.did}']\n")
    pol = load_policy(f)
    assert could_admit(pol, P1.did) and could_admit(pol, P3.did)
    assert not could_admit(pol, P2.did) and not could_admit(pol, Twin(P2).did)
    # Allowing a DID whose twin is denied is a contradiction, as allowing a denied DID is.
    f.write_text(f"[policy]\ndeny = ['{P2.did}']\n[[policy.allow]]\ndid = '{Twin(P2).did}'\n")
    with pytest.raises(PolicyFileError, match="denied"):
        load_policy(f)
    req = SubscriptionRequest(b"c" * 32, Twin(P2).did, Twin(P2).sign_public, b"")
    assert not pol.decide(req, 0).admit


def test_a_key_stands_for_two_dids() -> None:
    """An X25519 key does not carry the sign of x: it is the key of two DIDs, twins, and whoever holds one's
    secret can act as the other (its scalar negated).  A deny-list refuses both."""
    dids = dids_of_kx_public(P2.public.kx_public)
    assert len(dids) == 2 and P2.did in dids
    twin = Twin(P2)
    assert set(dids) == {P2.did, twin.did}
    assert not could_admit(DenyList(frozenset({P2.did})), twin.did)
    assert not could_admit(DenyList(frozenset({twin.did})), P2.did)
    assert could_admit(DenyList(frozenset({P2.did})), P1.did)
    assert not could_admit(AllowList.of([P1.did]), twin.did) and not could_admit(AllowList.of([P1.did]), P2.did)


def test_dids_of_an_x25519_key() -> None:
    for _ in range(50):
        who = Identity.from_seed(os.urandom(32))
        dids = dids_of_kx_public(who.public.kx_public)
        assert who.did in dids and len(dids) <= 2
        for d in dids:  # each candidate really has that key-agreement key
            from streams.identity import PublicIdentity

            assert PublicIdentity.from_did(d).kx_public == who.public.kx_public
    p = 2**255 - 19
    for bad in (b"", b"\x00" * 31, (p - 1).to_bytes(32, "little"), p.to_bytes(32, "little"), b"\xff" * 32):
        assert dids_of_kx_public(bad) == ()
    assert _crypto.ed25519_candidates_for_x25519(b"\x01" + b"\x00" * 31) == []  # u = 1: y = 0, small order


def test_a_curve_config_of_the_wrong_keys_is_refused_where_it_is_made() -> None:
    """A key of another length, or a pair that does not belong together, was met deep in the socket setup as a
    bare ValueError (z85), the endpoint's socket and ZAP handler left to the garbage collector."""
    good = CurveConfig.for_author(Identity.generate())
    other = CurveConfig.for_author(Identity.generate())
    for bad in (lambda: CurveConfig(good.public[:31], good.secret),
                lambda: CurveConfig(good.public, good.secret + b"x"),
                lambda: CurveConfig(good.public, good.secret, b"short"),
                lambda: CurveConfig(other.public, good.secret)):
        with pytest.raises(LocalProtocolError, match="CurveConfig"):
            bad()
    assert CurveConfig(good.public, good.secret, other.public).server_public == other.public


def test_a_key_pair_given_for_a_curve_config_is_not_echoed() -> None:
    pk, sk = nb.crypto_box_keypair()
    with pytest.raises(LocalProtocolError) as err:
        EndpointConfig(curve=(pk, sk))  # type: ignore[arg-type]
    assert "tuple" in str(err.value)
    for form in (sk, sk.hex(), repr(sk)):
        assert str(form) not in str(err.value) and repr(sk)[2:12] not in str(err.value)


async def test_a_second_curve_author_endpoint_on_one_context_names_the_zap_clash() -> None:
    """A context holds one ZAP handler; the second CURVE author endpoint on it was refused with "cannot bind
    tcp://127.0.0.1:0: Address already in use", blaming an address that was free."""
    ctx = zmq.asyncio.Context()
    cfg = EndpointConfig(curve=CurveConfig.for_author(Identity.generate()))
    first = AuthorEndpoint("tcp://127.0.0.1:0", cfg, context=ctx, known_key=lambda k: True)
    try:
        with pytest.raises(LocalProtocolError, match="ZAP handler") as err:
            AuthorEndpoint("tcp://127.0.0.1:0", cfg, context=ctx, known_key=lambda k: True)
        assert "tcp://" not in str(err.value)
        assert first.wants_known_key is False  # the first one keeps its decision
    finally:
        await first.close()
        ctx.destroy(linger=0)  # (the old code left the failed one's ZAP socket open: term() hung)
