"""brokerless: ZeroMQ endpoints driving the ``streams`` protocol core (see :mod:`brokerless.endpoints`)."""

from __future__ import annotations

from .curve import CurveConfig
from .endpoints import AuthorEndpoint, EndpointConfig, EndpointStats, SubscriberEndpoint

__all__ = ["AuthorEndpoint", "CurveConfig", "EndpointConfig", "EndpointStats", "SubscriberEndpoint"]
