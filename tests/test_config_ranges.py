"""EndpointConfig and AnchorConfig refuse, at construction, a value that would spin a loop, grow memory without
bound or stall anchoring far from the mistake (CoreConfig: tests/test_core_config.py)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from brokerless import EndpointConfig
from brokerless.curve import CurveConfig
from streams.anchoring_service import AnchorConfig
from streams.errors import LocalProtocolError
from streams.identity import Identity

MOST = (1 << 63) - 1
HWM_MOST = (1 << 31) - 1

#: EndpointConfig's integer fields and the least value each takes: 0 where the field documents a meaning for it.
ENDPOINT_LEAST = {
    "max_frame": 1, "heartbeat_ms": 1, "liveness": 1, "reconnect_min_ms": 1, "reconnect_max_ms": 1,
    "send_queue": 0, "send_queue_bytes": 0, "inbound_burst": 1, "global_burst": 1, "failures_to_suspend": 1,
    "suspend_ms": 0, "sndhwm": 1, "rcvhwm": 1, "inbox": 1, "inbox_bytes": 1, "credit_window": 0,
    "credit_window_max": 1, "window_bytes": 1, "batch": 1, "bundle_bytes": 0, "max_peers": 1,
    "handshake_hold_ms": 0, "peers_per_branch": 1, "max_branches": 1,
}
#: ZeroMQ's C ints (high-water marks, reconnect intervals) and the CREDIT's u32 window.
ENDPOINT_MOST = {name: HWM_MOST if name in ("sndhwm", "rcvhwm", "reconnect_min_ms", "reconnect_max_ms")
                 else 0xFFFF_FFFF if name == "credit_window" else MOST for name in ENDPOINT_LEAST}
RATES = ("inbound_budget", "global_budget")
ANCHOR_FIELDS = ("epoch_interval_ms", "max_heads_per_epoch", "max_unwritten", "retry_min_ms", "retry_max_ms",
                 "confirm_poll_ms", "restart_after")


def _endpoint(name: str, value: object) -> EndpointConfig:
    # A backoff's two ends are also checked against each other: the other end is set out of the way.
    fields: dict[str, Any] = {"reconnect_min_ms": 1, "reconnect_max_ms": HWM_MOST, name: value}
    return EndpointConfig(**fields)


def _anchor(name: str, value: object) -> AnchorConfig:
    fields: dict[str, Any] = {"retry_min_ms": 1, "retry_max_ms": MOST, name: value}
    return AnchorConfig(**fields)


def _refused(make: Any, owner: str, name: str, bad: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        make(name, bad)
    assert f"{owner}.{name}" in str(info.value) and repr(bad) in str(info.value)


def test_every_endpoint_field_has_a_rule() -> None:
    # A field added later must be given its range here and in the endpoint, not left unchecked.
    assert {f.name for f in dataclasses.fields(EndpointConfig)} == set(ENDPOINT_LEAST) | set(RATES) | {"curve"}


@pytest.mark.parametrize("name", sorted(ENDPOINT_LEAST))
def test_an_endpoint_integer_is_refused_outside_its_range_naming_field_and_value(name: str) -> None:
    least, most = ENDPOINT_LEAST[name], ENDPOINT_MOST[name]
    assert getattr(_endpoint(name, least), name) == least  # both ends are fine
    assert getattr(_endpoint(name, most), name) == most
    for bad in (least - 1, -1000, most + 1, 2.5, "100", True, None):
        _refused(_endpoint, "EndpointConfig", name, bad)


@pytest.mark.parametrize("name", RATES)
def test_an_endpoint_rate_must_be_a_finite_number_above_zero(name: str) -> None:
    assert getattr(_endpoint(name, 0.001), name) == 0.001
    assert getattr(_endpoint(name, 10**9), name) == 10**9
    for bad in (0, -1.0, math.inf, math.nan, 10**400, "50", True, None):  # (10**400: no float holds it)
        _refused(_endpoint, "EndpointConfig", name, bad)


def test_an_endpoint_reconnect_ceiling_below_the_first_delay_is_refused() -> None:
    assert EndpointConfig(reconnect_min_ms=500, reconnect_max_ms=500).reconnect_max_ms == 500
    with pytest.raises(LocalProtocolError, match=r"reconnect_max_ms \(400\) must be at least reconnect_min_ms \(500\)"):
        EndpointConfig(reconnect_min_ms=500, reconnect_max_ms=400)


def test_an_endpoint_curve_must_be_a_curve_config() -> None:
    keys = CurveConfig.for_author(Identity.generate())
    assert EndpointConfig(curve=keys).curve is keys
    with pytest.raises(LocalProtocolError, match=r"EndpointConfig\.curve must be a CurveConfig"):
        EndpointConfig(curve=(keys.public, keys.secret))  # type: ignore[arg-type]


def test_every_anchor_field_has_a_rule() -> None:
    assert {f.name for f in dataclasses.fields(AnchorConfig)} == set(ANCHOR_FIELDS)


@pytest.mark.parametrize("name", ANCHOR_FIELDS)
def test_an_anchor_field_is_refused_outside_its_range_naming_field_and_value(name: str) -> None:
    assert getattr(_anchor(name, 1), name) == 1
    assert getattr(_anchor(name, MOST), name) == MOST
    for bad in (0, -5, MOST + 1, 1.5, "1000", False, None):
        _refused(_anchor, "AnchorConfig", name, bad)


def test_an_anchor_retry_ceiling_below_the_first_retry_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match=r"retry_max_ms \(100\) must be at least retry_min_ms \(200\)"):
        AnchorConfig(retry_min_ms=200, retry_max_ms=100)


async def test_endpoints_take_the_greatest_values_their_config_accepts() -> None:
    # The ceilings are ZeroMQ's and the wire's own: a value the config accepts must not fail later (a reconnect
    # interval above a C int raised OverflowError out of SubscriberEndpoint(), its socket left open; a credit
    # window above a u32 raised struct.error out of the heartbeat task).
    from brokerless import AuthorEndpoint, SubscriberEndpoint

    cfg = EndpointConfig(reconnect_min_ms=HWM_MOST, reconnect_max_ms=HWM_MOST, sndhwm=HWM_MOST, rcvhwm=HWM_MOST,
                         credit_window=0xFFFF_FFFF, inbox=MOST, max_frame=MOST, inbound_budget=10**300,
                         global_budget=10**300)
    author = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sub = SubscriberEndpoint(author.addresses[0], cfg)
    try:
        sub._session = bytes(8)  # as once a PONG announced the session; no limits from the author yet
        sub._send_credit(0)  # the window, unclamped, on the wire as a u32
        assert sub._window == 0xFFFF_FFFF
    finally:
        await sub.close()
        await author.close()
