"""The one seam between the ``streams`` command line and its ZeroMQ transport (package ``brokerless``).

The dependency rule (STYLE.md, tests/test_architecture.py) is that the library ``streams`` never imports
``brokerless`` or ``zmq``: the protocol, the store and the asyncio API work over any
:class:`~streams.api.Transport` and stay importable without pyzmq.  The *command line* is an application on
top of both packages, so it needs a network transport for ``serve``/``subscribe``/``publish``/``tail``.  It
loads ``brokerless`` here, by name, only when such a command runs -- the way a plug-in is loaded -- and never
at import time: ``import streams.cli`` does not pull in zmq (tests/test_cli_channel.py checks that).

With ``--curve`` the endpoints use CurveZMQ (SPEC 14.5): the factories take the parties' identities as
:class:`CurveKeys` and build ``brokerless.CurveConfig`` from them here, so that nothing else in ``streams``
names a ``brokerless`` type.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..api import Transport
from ..identity import Identity
from ._common import UsageError, utf8_arg

__all__ = ["AuthorTransport", "CurveKeys", "SubscriberTransport", "ZmqTransports", "load_zmq", "zmq_available"]


class AuthorTransport(Transport, Protocol):
    """An author's transport that listens: :class:`brokerless.AuthorEndpoint`."""

    addresses: list[str]  #: the addresses actually bound (``tcp://127.0.0.1:0`` resolved to its port)


class SubscriberTransport(Transport, Protocol):
    """A subscriber's transport that connects: :class:`brokerless.SubscriberEndpoint`."""

    #: The author endpoint's instance id from its latest PONG (the first frame it sends a new connection);
    #: None while nothing at all came from it: the connection never came up (wrong address, author down, or a
    #: CurveZMQ handshake that failed -- CURVE against a plain endpoint, or a key the author's ZAP refused).
    author_instance: bytes | None


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """What a CurveZMQ endpoint is keyed with: ``identity``, the party's own (its X25519 pair is the CURVE pair;
    secret: :class:`~streams.identity.Identity` never shows its seed, so neither does this ``repr``), and
    ``author_did``, the channel author's DID (a subscriber's server key; an author's own DID)."""

    identity: Identity
    author_did: str


class _AuthorFactory(Protocol):
    def __call__(self, bind: Sequence[str], curve: CurveKeys | None = None) -> AuthorTransport: ...


class _SubscriberFactory(Protocol):
    def __call__(self, connect: str, curve: CurveKeys | None = None) -> SubscriberTransport: ...


@dataclass(frozen=True, slots=True)
class ZmqTransports:
    """Constructors of the ZeroMQ endpoints: ``author(bind_addresses, curve=None)`` and
    ``subscriber(connect_address, curve=None)``.  With ``curve``, the author's endpoint is a CURVE server whose
    ZAP handler refuses every client until an :class:`~streams.api.Author` opened on it installs its own decision
    (:meth:`~streams.api.Author.knows_key`), and the subscriber's is a CURVE client of the author's key.

    Both raise :class:`~streams.errors.LocalProtocolError` for an address that cannot be bound or parsed, and
    :class:`~streams.errors.DecodeError` for an ``author_did`` that is not a valid did:key."""

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

    def author(bind: Sequence[str], curve: CurveKeys | None = None) -> AuthorTransport:
        for address in bind:
            utf8_arg(address, "--bind")  # (ZeroMQ encodes it: a UnicodeEncodeError traceback otherwise)
        config = None if curve is None else mod.EndpointConfig(curve=mod.CurveConfig.for_author(curve.identity))
        endpoint: AuthorTransport = mod.AuthorEndpoint(bind, config)
        return endpoint

    def subscriber(connect: str, curve: CurveKeys | None = None) -> SubscriberTransport:
        utf8_arg(connect, "--connect")
        config = None if curve is None else mod.EndpointConfig(
            curve=mod.CurveConfig.for_subscriber(curve.identity, curve.author_did))
        endpoint: SubscriberTransport = mod.SubscriberEndpoint(connect, config)
        return endpoint

    return ZmqTransports(author=author, subscriber=subscriber)
