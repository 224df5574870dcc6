"""Wire protocol cores together without sockets: a deterministic in-process network for core tests.

Everything a core sends is recorded in ``wire`` (an attacker's view of every byte), so tests can replay,
reorder, tamper with and relay frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from streams.core import AuthorCore, Outgoing, SubscriberCore
from streams.events import Event
from streams.identity import Identity
from streams.policy import AllowList, Policy


def seeded_rng(seed: int):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


@dataclass
class Net:
    author: AuthorCore
    subs: dict[str, SubscriberCore] = field(default_factory=dict)
    now: int = 1_700_000_000_000
    wire: list[tuple[str, bytes]] = field(default_factory=list)  # (sender, frame)
    events: dict[str, list[Event]] = field(default_factory=dict)

    @classmethod
    def make(cls, policy: Policy | None = None, n_subs: int = 2, **kw: object) -> Net:
        author_id = ident(1)
        subs_ids = [ident(10 + i) for i in range(n_subs)]
        pol = policy or AllowList.of([s.did for s in subs_ids])
        a = AuthorCore(author_id, "fraud-monitor", pol, rng=seeded_rng(1), **kw)  # type: ignore[arg-type]
        net = cls(a)
        for i, sid in enumerate(subs_ids):
            net.add_sub(f"s{i}", sid)
        net.events["author"] = []
        return net

    def add_sub(self, name: str, identity: Identity) -> SubscriberCore:
        s = SubscriberCore(identity, self.author.identity.did, self.author.channel, rng=seeded_rng(hash(name) % 997))
        self.subs[name] = s
        self.events[name] = []
        return s

    def deliver_author_out(self, outs: list[Outgoing]) -> None:
        for o in outs:
            self.wire.append(("author", o.data))
            targets = [o.peer] if o.peer is not None else list(self.subs)
            for t in targets:
                assert isinstance(t, str)
                self.to_sub(t, o.data)

    def to_sub(self, name: str, data: bytes) -> list[Event]:
        ev = self.subs[name].receive(data, self.now)
        self.events[name].extend(ev)
        self.pump_sub(name)
        return ev

    def to_author(self, data: bytes, peer: str) -> list[Event]:
        ev = self.author.receive(data, self.now, peer)
        self.events["author"].extend(ev)
        self.author.take_changes()
        self.deliver_author_out(self.author.data_to_send())
        return ev

    def pump_sub(self, name: str) -> None:
        s = self.subs[name]
        s.take_changes()
        for o in s.data_to_send():
            self.wire.append((name, o.data))
            self.to_author(o.data, name)

    def pump_author(self) -> None:
        self.author.take_changes()
        self.deliver_author_out(self.author.data_to_send())

    def lapse_write(self, branch: bytes) -> None:
        """The author takes the member's write permission on its ``branch`` away, then gives it back (two
        re-keys, each delivered)."""
        from streams.wire import Permission

        self.author.set_permission(branch, Permission.READ)
        self.pump_author()
        self.author.set_permission(branch, Permission.READ_WRITE)
        self.pump_author()

    def subscribe(self, name: str, credential: bytes = b"") -> list[Event]:
        start = len(self.events[name])
        self.subs[name].hello(credential)
        self.pump_sub(name)
        return self.events[name][start:]
