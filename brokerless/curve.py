"""Optional CurveZMQ per hop, keyed by the parties' DIDs -- defence in depth, never the only guard.

CurveZMQ (RFC 26/CURVEZMQ) uses Curve25519 key pairs.  Every ``streams`` identity already has one: the X25519
key-agreement key derived from its Ed25519 key (did:key, "Encryption Method Creation Algorithm"), so a DID
alone tells a peer the CURVE key to expect -- no extra key distribution.  The author's endpoint runs a ZAP
handler that admits a client only if its CURVE key is the X25519 key of a DID the channel knows: a
``known_key(x25519_public) -> bool`` callback.  :class:`streams.api.Author` installs its own
(:meth:`~streams.api.Author.knows_key`: members of its open branches, and DIDs its policy could admit) in an
endpoint built without one; until a callback is installed the handler refuses every client (fail closed).

Message security does not depend on any of this (THREATS: "Message security must hold with CURVE off"): it only
hides traffic from passive observers on the hop and refuses strangers before they reach the protocol core.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import zmq
import zmq.asyncio
from zmq.auth.base import Authenticator
from zmq.utils import z85

from streams.errors import LocalProtocolError
from streams.identity import Identity, PublicIdentity

__all__ = ["CurveConfig", "KnownKeys", "ZapHandler", "kx_keypair", "setup_client", "setup_server"]

log = logging.getLogger("brokerless")


def kx_keypair(identity: Identity) -> tuple[bytes, bytes]:
    """(X25519 public, X25519 secret) of an identity: the same pair its did:key names for key agreement."""
    _pk, sk = nacl.bindings.crypto_sign_seed_keypair(identity.export_seed())
    return identity.kx_public, nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk)


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """CURVE keys of one endpoint.  ``server_public`` is the author's X25519 key (clients only).

    Build it with :meth:`for_author` / :meth:`for_subscriber`.  The secret never appears in ``repr``."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None

    def __post_init__(self) -> None:
        # Refused where the mistake is made (a key of another length, a pair that does not belong together), as a
        # LocalProtocolError naming no secret -- not a ValueError from deep in the socket setup.
        for name in ("public", "secret", "server_public"):
            v = getattr(self, name)
            if not (v is None and name == "server_public") and not (type(v) is bytes and len(v) == 32):
                raise LocalProtocolError(f"CurveConfig.{name} must be 32 bytes (an X25519 key)")
        if nacl.bindings.crypto_scalarmult_base(self.secret) != self.public:
            raise LocalProtocolError("CurveConfig: the public key is not the secret key's")

    def __repr__(self) -> str:
        return f"CurveConfig(public={self.public.hex()}, secret=<hidden>)"

    @classmethod
    def for_author(cls, identity: Identity) -> CurveConfig:
        """Server-side keys: the author's own X25519 pair."""
        pk, sk = kx_keypair(identity)
        return cls(pk, sk)

    @classmethod
    def for_subscriber(cls, identity: Identity, author_did: str) -> CurveConfig:
        """Client-side keys: our X25519 pair, and the author's X25519 key derived from its DID."""
        pk, sk = kx_keypair(identity)
        return cls(pk, sk, PublicIdentity.from_did(author_did).kx_public)


class KnownKeys:
    """ZAP credentials provider: the decision is one synchronous call, ``known(x25519_public) -> bool``; with no
    callback (:attr:`known` None) every client is refused."""

    def __init__(self, known: Callable[[bytes], bool] | None) -> None:
        self.known = known
        self._warned = False

    def callback(self, domain: str, key: bytes) -> bool:
        known = self.known
        if known is None:
            # Any client can cause this line: say it once, then quietly (a log is no place for a flood).
            log.log(logging.DEBUG if self._warned else logging.WARNING,
                    "CURVE client refused: no known_key callback is installed (the endpoint admits no one until "
                    "its author installs one)")
            self._warned = True
            return False
        try:
            raw = z85.decode(key)
            verdict: object = known(raw) if len(raw) == 32 else False
            if inspect.isawaitable(verdict):  # a coroutine is truthy: it must not read as "admit"
                if inspect.iscoroutine(verdict):
                    verdict.close()
                log.error("CURVE client refused: the known_key callback must return a bool, not an awaitable")
                return False
            ok = verdict is True
        except Exception:  # a malformed key or a failing callback refuses, never crashes the handler
            log.exception("CURVE client refused: the known_key callback failed")
            ok = False
        if not ok:
            log.info("CURVE client refused: its key is not the X25519 key of a DID this channel knows (%s)",
                     key.decode("ascii", "replace") if isinstance(key, bytes) else key)
        return ok


class ZapHandler(Authenticator):
    """The ZAP handler of one author endpoint.  Its REP socket is bound at once (by :func:`setup_server`, before
    the endpoint binds): a CURVE handshake that arrives before :meth:`serve` runs waits for it, never bypasses
    it.  :meth:`serve` is a task of the endpoint's own event loop, started with the endpoint's other tasks and
    awaited when they stop, before the socket is closed -- pyzmq's ``AsyncioAuthenticator`` starts its task at
    construction (an endpoint built outside a running loop refused everyone) and leaves its cancellation to a
    later loop turn (a new endpoint created in the same turn lost its ZAP socket's reader)."""

    async def serve(self) -> None:
        sock = self.zap_socket
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while True:
                await poller.poll()
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    await self.handle_zap_message(msg)
        finally:
            poller.unregister(sock)


def setup_server(ctx: zmq.asyncio.Context, sock: zmq.Socket[Any], cfg: CurveConfig,
                 keys: KnownKeys) -> ZapHandler:
    """Make ``sock`` a CURVE server with a ZAP handler admitting only keys ``keys`` knows (none while its
    callback is None: a CURVE server that admitted anyone would only look like a guard); the caller runs
    :meth:`ZapHandler.serve` in its event loop and calls ``stop()`` after that task ended."""
    auth = ZapHandler(ctx)
    try:
        auth.start()  # binds the ZAP socket now: from here on every handshake asks it
    except zmq.ZMQError as exc:
        auth.stop()
        if exc.errno == zmq.EADDRINUSE:  # (ZAP's inproc address is one per context)
            raise LocalProtocolError("this ZeroMQ context already has a ZAP handler (inproc://zeromq.zap.01): one "
                                     "CURVE AuthorEndpoint per context -- give this one a context of its own") from None
        raise
    auth.configure_curve_callback("*", credentials_provider=keys)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, z85.encode(cfg.secret))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, z85.encode(cfg.public))
    return auth


def setup_client(sock: zmq.Socket[Any], cfg: CurveConfig) -> None:
    """Make ``sock`` a CURVE client of the server whose X25519 key is ``cfg.server_public``."""
    if cfg.server_public is None:
        raise LocalProtocolError("a CURVE client needs the server's public key")
    sock.setsockopt(zmq.CURVE_SERVERKEY, z85.encode(cfg.server_public))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, z85.encode(cfg.public))
    sock.setsockopt(zmq.CURVE_SECRETKEY, z85.encode(cfg.secret))
