"""CoreConfig refuses, at construction, a value that would break the protocol far from the mistake."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streams.core import CoreConfig
from streams.errors import LocalProtocolError
from streams.wire import SigningMode

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
