"""CoreConfig refuses, at construction, a value that would break the protocol far from the mistake."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streams.core import CoreConfig, SubscriberCore
from streams.errors import LocalProtocolError
from streams.events import Subscribed
from streams.wire import Challenge, Kind, SigningMode, decode_frame
from tests.corenet import Net, ident, seeded_rng

#: Each integer field and the least value it takes (see streams.core._CONFIG_FLOORS for why).
LEAST = {
    "max_frame": 1,
    "hold_limit": 1,
    "challenge_ttl_ms": 1,
    "checkpoint_every": 1,
    "checkpoint_interval_ms": 0,
    "max_fetch": 1,
    "max_nonces": 1,
    "fetch_retry_ms": 1,
    "fetch_retry_max_ms": 0,
    "grant_sync_interval_ms": 0,
    "ack_interval_ms": 0,
    "copy_window_ms": 0,
    "peer_failures": 1,
}


def _config(name: str, value: object) -> CoreConfig:
    fields: dict[str, Any] = {name: value}
    return CoreConfig(**fields)


def test_every_integer_field_has_a_rule() -> None:
    # A field added later must be given its least value here and in the core, not left unchecked.
    assert {f.name for f in dataclasses.fields(CoreConfig)} == set(LEAST) | {"signing"}


@pytest.mark.parametrize("name", sorted(LEAST))
def test_a_field_below_its_least_value_is_refused_naming_field_and_value(name: str) -> None:
    assert getattr(_config(name, LEAST[name]), name) == LEAST[name]  # the least value itself is fine
    for bad in (LEAST[name] - 1, -1000):
        with pytest.raises(LocalProtocolError) as info:
            _config(name, bad)
        assert f"CoreConfig.{name}" in str(info.value) and repr(bad) in str(info.value)


@pytest.mark.parametrize("name", sorted(LEAST))
@pytest.mark.parametrize("bad", [2.5, "100", True, None])
def test_a_field_that_is_not_an_integer_is_refused(name: str, bad: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        _config(name, bad)
    assert f"CoreConfig.{name}" in str(info.value) and repr(bad) in str(info.value)


def test_signing_must_be_a_signing_mode() -> None:
    assert CoreConfig(signing=SigningMode.AMORTIZED).signing is SigningMode.AMORTIZED
    for bad in (2, "amortized", None):
        with pytest.raises(LocalProtocolError) as info:
            _config("signing", bad)
        assert "CoreConfig.signing" in str(info.value) and repr(bad) in str(info.value)


def test_a_retry_ceiling_below_the_retry_is_harmless_and_accepted() -> None:
    # The backoff never waits less than fetch_retry_ms (core._retry_wait), so this combination breaks nothing.
    cfg = CoreConfig(fetch_retry_ms=5000, fetch_retry_max_ms=100)
    assert (cfg.fetch_retry_ms, cfg.fetch_retry_max_ms) == (5000, 100)
    assert CoreConfig(grant_sync_interval_ms=0, ack_interval_ms=0, copy_window_ms=0).ack_interval_ms == 0


#: The greatest value of the fields added to a clock reading (challenge_ttl_ms: a challenge's expires_ms) or to a
#: sequence number (max_fetch: a FETCH's to_seq) that the wire then carries as a u64.
MOST = (1 << 63) - 1


@pytest.mark.parametrize("name", ["challenge_ttl_ms", "max_fetch"])
def test_a_field_the_wire_carries_as_a_u64_is_refused_above_its_greatest_value(name: str) -> None:
    # Above it the sum overflowed the u64 and the core raised struct.error, never one of ours: an author with
    # challenge_ttl_ms=2**64 crashed at the first HELLO, anyone's; a subscriber with max_fetch=2**64 at its catch-up.
    assert getattr(_config(name, MOST), name) == MOST
    for bad in (MOST + 1, 1 << 64):
        with pytest.raises(LocalProtocolError) as info:
            _config(name, bad)
        assert f"CoreConfig.{name}" in str(info.value) and repr(bad) in str(info.value)


def test_at_the_greatest_values_a_challenge_and_a_catch_up_fetch_still_encode() -> None:
    cfg = CoreConfig(challenge_ttl_ms=MOST, max_fetch=MOST)
    net = Net.make(n_subs=1, config=cfg)
    net.subs["s0"] = s0 = SubscriberCore(ident(10), net.author.identity.did, net.author.channel, cfg,
                                         rng=seeded_rng(3))
    assert any(isinstance(e, Subscribed) for e in net.subscribe("s0"))  # the author's CHALLENGE encoded
    challenges = [h for who, d in net.wire if who == "author" and isinstance(h := decode_frame(d).head, Challenge)]
    # The handshake's clock is kept so that its expiries fit the store's signed 64-bit INTEGER (SPEC 8.3): at the
    # greatest window it stays at 0 (net.now + MOST, once the expiry, closed an author with a store at the commit).
    assert [c.expires_ms for c in challenges] == [MOST]
    s0.catch_up(net.now)
    fetches = [decode_frame(o.data) for o in s0.data_to_send() if decode_frame(o.data).kind is Kind.FETCH]
    # (the other FETCH is the grant sync, 0..0)
    assert [f.head.to_seq - f.head.from_seq for f in fetches if f.head.to_seq] == [MOST - 1]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(LEAST))
def test_every_integer_field_is_refused_above_the_greatest_value(name: str) -> None:
    assert getattr(_config(name, MOST), name) == MOST
    with pytest.raises(LocalProtocolError) as info:
        _config(name, MOST + 1)
    assert f"CoreConfig.{name}" in str(info.value) and repr(MOST + 1) in str(info.value)
