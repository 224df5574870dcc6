"""The author's table of used challenge nonces is bounded (``CoreConfig.max_nonces``, THREATS 8): whoever can
generate key pairs can answer any number of challenges with a valid proof of control, each leaving a nonce
remembered for the challenge's lifetime.  Beyond the bound a SUBSCRIBE is refused (BAD_CHALLENGE: the requester
asks again with a new HELLO) until nonces expire -- never more memory, and never a scan of the whole table per
request.  Two cores wired without sockets (``tests.corenet``)."""

from __future__ import annotations

from streams.core import CoreConfig
from streams.errors import RejectReason
from streams.events import Refused, SubscriberAdmitted, SubscriberRefused
from streams.policy import AllowList
from tests.corenet import Net


def _net(bound: int, n_subs: int) -> Net:
    net = Net.make(n_subs=n_subs, config=CoreConfig(max_nonces=bound))
    net.author.policy = AllowList.of([s.identity.did for s in net.subs.values()])
    return net


def _admitted(net: Net, name: str) -> bool:
    net.subscribe(name)
    return any(isinstance(e, SubscriberAdmitted) and e.did == net.subs[name].identity.did
               for e in net.events["author"])


def test_a_full_nonce_table_refuses_new_subscriptions_until_nonces_expire() -> None:
    net = _net(3, 5)
    for name in ("s0", "s1", "s2"):
        assert _admitted(net, name), name
    assert len(net.author._used_nonces) == 3
    # The fourth, within the challenges' lifetime: refused, as a challenge to ask again for; nothing remembered.
    before = len(net.events["s3"])
    assert not _admitted(net, "s3")
    assert len(net.author._used_nonces) == 3
    refusals = [e for e in net.events["s3"][before:] if isinstance(e, Refused)]
    assert refusals and refusals[0].reason is RejectReason.BAD_CHALLENGE, net.events["s3"][before:]
    assert any(isinstance(e, SubscriberRefused) and "too many" in e.reason for e in net.events["author"])
    # Once the used challenges expired, a new one is admitted, and the table still holds at most the bound.
    net.now += net.author.config.challenge_ttl_ms + 1
    assert _admitted(net, "s4")
    assert len(net.author._used_nonces) <= 3


def test_expired_nonces_are_dropped_as_new_ones_come_without_the_bound_reached() -> None:
    """The table never keeps an expired nonce once a new one comes: memory follows the challenge window."""
    net = _net(1000, 3)
    assert _admitted(net, "s0")
    net.now += net.author.config.challenge_ttl_ms + 1
    assert _admitted(net, "s1")
    assert len(net.author._used_nonces) == 1


def _held_subscribe(net: Net, name: str) -> list[bytes]:
    """``name`` says HELLO and gets its challenge now; its SUBSCRIBE is returned, not delivered."""
    s = net.subs[name]
    s.hello()
    for o in s.data_to_send():
        net.author.receive(o.data, net.now, name)
        net.author.take_changes()
        for out in net.author.data_to_send():
            s.receive(out.data, net.now)
    s.take_changes()
    return [o.data for o in s.data_to_send()]


def test_the_bound_does_not_refuse_a_subscription_whose_nonces_all_expired_out_of_order() -> None:
    """Nonces are not used in the order their challenges were issued: one issued later can be used first.  An
    expired nonce behind an unexpired one is still dropped when the table is full."""
    net = _net(2, 4)
    held = _held_subscribe(net, "s0")  # s0's challenge now; its SUBSCRIBE arrives after s1's
    assert held
    net.now += 1000
    assert _admitted(net, "s1")
    for d in held:
        net.to_author(d, "s0")
    assert any(isinstance(e, SubscriberAdmitted) and e.did == net.subs["s0"].identity.did
               for e in net.events["author"])
    assert len(net.author._used_nonces) == 2
    # s0's nonce expired, s1's not yet (used first, issued later): the table must make room for s2.
    net.now += net.author.config.challenge_ttl_ms - 500
    assert _admitted(net, "s2")
    assert len(net.author._used_nonces) == 2
