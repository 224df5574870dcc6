"""The one seam between the ``streams`` command line and its ZeroMQ transport (package ``brokerless``).

The dependency rule (STYLE.md, tests/test_architecture.py) is that the library ``streams`` never imports
``brokerless`` or ``zmq``: the protocol, the store and the asyncio API work over any
:class:`~streams.api.Transport` and stay importable without pyzmq.  The *command line* is an application on
top of both packages, so it needs a network transport for ``serve``/``subscribe``/``publish``/``tail``.  It
loads ``brokerless`` here, by name, only when such a command runs -- the way a plug-in is loaded -- and never
at import time: ``import streams.cli`` does not pull in zmq (tests/test_cli_channel.py checks that).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..api import Transport
from ._common import UsageError

__all__ = ["AuthorTransport", "ZmqTransports", "load_zmq", "zmq_available"]


class AuthorTransport(Transport, Protocol):
    """An author's transport that listens: :class:`brokerless.AuthorEndpoint`."""

    addresses: list[str]  #: the addresses actually bound (``tcp://127.0.0.1:0`` resolved to its port)


class _AuthorFactory(Protocol):
    def __call__(self, bind: Sequence[str]) -> AuthorTransport: ...


class _SubscriberFactory(Protocol):
    def __call__(self, connect: str) -> Transport: ...


@dataclass(frozen=True, slots=True)
class ZmqTransports:
    """Constructors of the ZeroMQ endpoints: ``author(bind_addresses)`` and ``subscriber(connect_address)``.

    Both raise :class:`~streams.errors.LocalProtocolError` for an address that cannot be bound or parsed."""

    author: _AuthorFactory
    subscriber: _SubscriberFactory


def zmq_available() -> bool:
    """True if pyzmq and ``brokerless`` can be imported (without importing them)."""
    return importlib.util.find_spec("zmq") is not None and importlib.util.find_spec("brokerless") is not None


def load_zmq() -> ZmqTransports:
    """Load the ZeroMQ endpoints.  Raises :class:`UsageError` (exit status 2) if pyzmq is not installed."""
    if not zmq_available():
        raise UsageError("the ZeroMQ transport is not available: install pyzmq (pip install pyzmq)")
    mod = importlib.import_module("brokerless")
    return ZmqTransports(author=mod.AuthorEndpoint, subscriber=mod.SubscriberEndpoint)
