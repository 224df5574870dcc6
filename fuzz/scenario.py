"""Protocol cores in an interesting state, and the frames that reach them, for the core fuzz harnesses.

:func:`build` wires an author and three subscribers together with :class:`tests.corenet.Net` (no sockets,
seeded randomness; only the sealed boxes inside SUBSCRIBE and GRANT bodies use fresh libsodium randomness, so
those bytes differ from run to run) and drives them into a state with every feature in use:

* the author's config signs *amortized*, so per-subscriber branches carry unsigned packets and checkpoints;
* ``s0`` holds an amortized per-subscriber branch that was re-keyed once (epoch 1, messages in both epochs,
  both directions) and a signed-each group branch shared with ``s1``;
* ``s0`` then restarted its handshake (HELLO, CHALLENGE, SUBSCRIBE) and waits for the answer, so a
  REFUSE or an ADMIT for its pending challenge is meaningful input;
* ``s1`` has its own branch; ``s2``'s branch was opened by the author ahead of the handshake.

At that point the author and ``s0`` are frozen as :class:`CoreSnapshot` (the durable records, exactly what
the store would hold), and only *then* are "future" frames produced without delivering them: the next
packets and checkpoint of each side (some in order, some early, so they are held), HEAD and FETCH notices,
a fresh SUBSCRIBE with a valid challenge from a new subscriber and one from a stranger, an UNSUBSCRIBE, a
re-key grant of the group, a REFUSE and an ADMIT for ``s0``'s pending challenge and a REVOKE.  Together with
every frame that crossed the wire while building, these are the seed corpora: valid frames of every kind,
addressed to the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.core import AuthorCore, BranchRecord, ChainRecord, CoreConfig, SubscriberCore
from streams.errors import RejectReason
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Permission, SigningMode
from tests.corenet import Net, ident, seeded_rng

__all__ = ["CoreSnapshot", "Scenario", "build"]

AUTHOR_NAME = "fraud-monitor"


@dataclass(frozen=True)
class CoreSnapshot:
    """The durable state of one core (what :class:`~streams.store.Store` would hold), plus the handshake
    fields a restart does not keep, so a fresh core identical to the original can be rebuilt cheaply."""

    identity: Identity
    branches: tuple[BranchRecord, ...]
    chains: tuple[ChainRecord, ...]
    nonces: tuple[tuple[bytes, int], ...] = ()
    refused: tuple[bytes, ...] = ()  #: the author's refused challenge nonces (of its run, as ``nonces``)
    announce: bytes | None = None
    sub_state: object = None
    requests: tuple[bytes, ...] = ()  #: the hashes of the subscriber's outstanding SUBSCRIBEs
    author_did: str = ""
    channel: bytes = b""
    allowed: tuple[str, ...] = ()
    config: CoreConfig = field(default_factory=CoreConfig)
    #: The author's challenge key: per run (SPEC 8.3), so a rebuilt core takes the live one's, or the challenges
    #: the live author issued would fail their MAC in it.
    chal_key: bytes = b""

    def author(self) -> AuthorCore:
        """A fresh author core in exactly the snapshot's state."""
        core = AuthorCore(self.identity, AUTHOR_NAME, AllowList.of(list(self.allowed)), self.config,
                          rng=seeded_rng(7))
        core.load_author(_copy_branches(self.branches), _copy_chains(self.chains), [])
        if self.chal_key:
            # The live author's run: the nonces it used in it are its state too (load_author leaves a store's
            # out -- of an earlier run, they never match, SPEC 8.3).  The table and its expiry heap, sorted.
            core._chal_key = self.chal_key
            core._used_nonces = dict(self.nonces)
            core._nonce_expiry = sorted((e, n) for n, e in self.nonces)
            core._refused_nonces = set(self.refused)
        return core

    def subscriber(self) -> SubscriberCore:
        """A fresh subscriber core in exactly the snapshot's state (handshake included)."""
        core = SubscriberCore(self.identity, self.author_did, self.channel, self.config, rng=seeded_rng(8))
        core.load_subscriber(self.announce, _copy_branches(self.branches), _copy_chains(self.chains))
        core.state = self.sub_state  # type: ignore[assignment]
        core._requests = list(self.requests)
        return core


def _copy_branches(recs: tuple[BranchRecord, ...]) -> list[BranchRecord]:
    return [BranchRecord(r.id, r.epoch, r.mode, r.grant_hash, r.grant_frame, r.me, list(r.members), list(r.keys),
                         r.state, r.peer_did, r.evidence) for r in recs]


def _copy_chains(recs: tuple[ChainRecord, ...]) -> list[ChainRecord]:
    return [ChainRecord(r.branch, r.publisher, r.next_seq, r.head, r.covered) for r in recs]


def _records(core: AuthorCore | SubscriberCore) -> tuple[tuple[BranchRecord, ...], tuple[ChainRecord, ...]]:
    branches = tuple(core._record(core._branches[b]) for b in core.branch_ids())
    chains = tuple(core._branches[b].chain_record(p) for b in core.branch_ids() for p in core._branches[b].chains)
    return branches, chains


@dataclass(frozen=True)
class Scenario:
    """The frozen cores and the seed frames for each of them."""

    author: CoreSnapshot
    subscriber: CoreSnapshot
    now_ms: int
    wire: tuple[bytes, ...]  #: every frame exchanged while building (old traffic: replays, foreign branches)
    to_author: tuple[bytes, ...]  #: future frames addressed to the author
    to_subscriber: tuple[bytes, ...]  #: future frames addressed to ``s0``


def author_snapshot(a: AuthorCore, allowed: tuple[str, ...], config: CoreConfig) -> CoreSnapshot:
    """The snapshot of a live author core, its run's handshake state included (used and refused nonces, the
    challenge key)."""
    ab, ac = _records(a)
    return CoreSnapshot(a.identity, ab, ac, tuple(a._used_nonces.items()), tuple(sorted(a._refused_nonces)),
                        allowed=allowed, config=config, chal_key=a._chal_key)


def build() -> Scenario:
    """Build the scenario described in the module docstring (deterministic, about 50 ms)."""
    config = CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=4)
    stranger, newcomer = ident(40), ident(13)
    net = Net.make(n_subs=3, config=config)
    allowed = (*(ident(10 + i).did for i in range(3)), newcomer.did)
    net.author.policy = AllowList.of(list(allowed))
    a = net.author
    s2_branch = a.open_branch(net.subs["s2"].identity.public)
    net.pump_author()
    for name in ("s0", "s1", "s2"):
        net.subscribe(name)
    b0, b1 = a.branch_of(net.subs["s0"].identity.did), a.branch_of(net.subs["s1"].identity.did)
    assert b0 is not None and b1 is not None and a.branch_of(net.subs["s2"].identity.did) == s2_branch
    group = a.open_group([net.subs["s0"].identity.public, net.subs["s1"].identity.public], Permission.READ)
    net.pump_author()
    s0 = net.subs["s0"]

    def traffic(n: int) -> None:
        for i in range(n):
            a.publish(b0, b"alert %d" % i, net.now)
            a.publish(group, b"bulletin %d" % i, net.now)
            net.pump_author()
            s0.publish(b0, b"report %d" % i, net.now)
            net.pump_sub("s0")
            net.now += 10
        a.flush_checkpoints(net.now)
        net.pump_author()
        s0.flush_checkpoints(net.now)
        net.pump_sub("s0")

    traffic(5)
    a.set_permission(b0, Permission.READ_WRITE)  # a re-key: epoch 1, new keys, heads carried over
    net.pump_author()
    traffic(3)
    a.publish(b1, b"for s1", net.now)
    net.pump_author()
    # s0 restarts its handshake and sends its SUBSCRIBE, which is not delivered yet: s0 waits in AWAIT_GRANT
    # with a pending challenge nonce.
    s0.hello()
    [hello0] = s0.data_to_send()
    a.receive(hello0.data, net.now, "s0")
    for o in a.data_to_send():
        s0.receive(o.data, net.now)
    s0.data_to_send()  # the SUBSCRIBE, held back
    s0.take_changes()
    wire = tuple(dict.fromkeys(f for _, f in net.wire))

    author_snap = author_snapshot(a, allowed, config)
    sb, sc = _records(s0)
    assert s0._announced
    sub_snap = CoreSnapshot(s0.identity, sb, sc, announce=a.announcement, sub_state=s0.state,
                            requests=tuple(s0._requests), author_did=a.identity.did, channel=a.channel,
                            config=config)

    # -- future frames, produced but not delivered ---------------------------------------------------------
    to_author: list[bytes] = []
    for i in range(3):  # next packets: the first in order, the rest early (held)
        s0.publish(b0, b"next %d" % i, net.now)
    s0.flush_checkpoints(net.now)
    s0.head_notices()
    s0.request_fetch(b0, 0, 1, 5)
    s0.request_fetch(group, 0, 2, 4)
    to_author += [o.data for o in s0.data_to_send()]
    for name, who in (("s3", newcomer), ("stranger", stranger)):
        s = net.add_sub(name, who)
        s.hello()
        [hello] = s.data_to_send()
        to_author.append(hello.data)
        # the challenge comes from the live author, whose challenge key the snapshot keeps
        a.receive(hello.data, net.now, name)
        for o in a.data_to_send():
            s.receive(o.data, net.now)
        to_author += [o.data for o in s.data_to_send()]
    net.subs["s1"].unsubscribe(b1)
    to_author += [o.data for o in net.subs["s1"].data_to_send()]

    to_sub: list[bytes] = []
    for i in range(3):
        a.publish(b0, b"next %d" % i, net.now)
        a.publish(group, b"next %d" % i, net.now)
    a.flush_checkpoints(net.now)
    a.head_notices()
    a.request_fetch(b0, 1, 1, 5)
    [request] = sub_snap.requests
    a._refuse(None, request, RejectReason.REFUSED)
    a._admit(None, request, b0, a.branch_info(b0)[0])  # (its own branch's current grant)
    a.remove_member(group, net.subs["s1"].identity.did)  # a re-key grant (epoch 1) of the group
    a.revoke(b0)
    to_sub += [o.data for o in a.data_to_send()]
    return Scenario(author_snap, sub_snap, net.now, wire, tuple(to_author), tuple(to_sub))
