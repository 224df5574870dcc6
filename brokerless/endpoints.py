"""ZeroMQ endpoints for the asyncio drivers of :mod:`streams.api`: brokerless, one hop, untrusted.

* :class:`AuthorEndpoint` -- one ROUTER socket that binds (``tcp://``, ``ipc://``, several at once).
* :class:`SubscriberEndpoint` -- one DEALER socket that connects to the author.

Both implement :class:`streams.api.Transport`, so ``Author.create(..., transport=AuthorEndpoint("tcp://*:0"))``
and ``Subscriber.create(..., transport=SubscriberEndpoint(addr))`` run the whole protocol over ZeroMQ.

What this layer guarantees, and what it leaves to the protocol core
--------------------------------------------------------------------
Message security never depends on this layer (THREATS, "Network and relays are untrusted"): every byte may be
recorded, replayed, reordered, dropped, altered or injected by a relay between the endpoints and the core still
accepts each (branch, publisher, seq) at most once, in order, authentic.  The endpoints add:

* **Routing.**  The author learns which routing ids belong to which branch from the grant (an ``Outgoing``
  with both ``peer`` and ``branch``) and from the member frames naming a branch that the protocol core
  verified (``learn_routes``, fed by the driver; SPEC 14.2 says which): a forged or replayed frame never maps,
  nor evicts, a peer.  Mappings are bounded (``peers_per_branch``, ``max_branches``; least recently seen evicted).
* **Nothing stalls** (THREATS 8).  Sends never block: a peer whose pipe is full (ZeroMQ high-water mark) gets
  its frames queued up to ``send_queue`` frames or ``send_queue_bytes`` bytes, then dropped and counted.  The
  receiver's gap detection, HEAD notices and FETCH retries (in the core) recover every dropped frame from the
  retained log, so a slow or dead subscriber costs the author bounded memory and never delays the others.
* **Credit-based flow control, author -> subscriber** (THREATS 8).  ZeroMQ's high-water mark is imprecise over
  TCP (kernel buffers hold megabytes) and a subscriber endpoint's inbox holds ``inbox`` frames, so the author
  would not know how far a subscriber's *application* is behind.  The subscriber endpoint reports it: a CREDIT
  (data frames received and taken by the driver in the current session, and its window); the author sends a
  data frame only while ``sent - consumed < window``, queues the rest in the bounded per-peer queue, and sends
  on as credit comes back.  The session (8 random bytes per author peer record, first announced by an
  unsolicited PONG, the first frame a new peer gets: ZeroMQ pipes are ordered) makes old, replayed and forged
  credits harmless.  Frames a lossy relay dropped (sent but never received) are detected when the subscriber is
  idle and written off (``credit_resyncs``).  Whatever window a peer asks for, at most ``window_bytes`` (64 MiB)
  plus one frame is in flight to it, so a peer that stops reading holds bounded memory at the author in bytes,
  not only in frames.  A peer that never sent a CREDIT of its session (a raw client, a relay that strips them)
  gets an initial window -- ``credit_window_max`` frames and ``window_bytes`` bytes -- and then waits for one,
  as a QUIC or HTTP/2 peer waits for a window update.  The PONG also tells the author's limits
  (``credit_window_max``, ``window_bytes``), so a subscriber asks for a window the author does not clamp and its
  quarter-window reports come before the author blocks.  Only this direction is
  credit-controlled: the author's own inbox is bounded and drops, and senders recover by gap fill.  A producer
  that must not outrun its subscribers awaits :meth:`AuthorEndpoint.drain` (``Author.drain``) after publishing:
  it returns once every peer of the branch has credit left and an empty queue, so nothing is dropped.
* **Bundles** (SPEC 14.1).  The data frames for one subscriber that are ready together -- a driver commit's, a
  FETCH answer, a queue a CREDIT flushes -- go out in one ZeroMQ message (a BUNDLE), within the peer's credit, to
  a subscriber endpoint that said it takes them (BUNDLE_OK, with the most bytes it takes); a subscriber bundles
  each ``send_many`` once the author answered with its own.  Per frame the ZeroMQ calls and the I/O threads'
  per-message work were about a third of the author's CPU.  Each frame is still one frame to credit and to the
  protocol core, judged by the author as if it had come alone; a malformed BUNDLE is dropped whole.
* **Nothing lost** (THREATS 4).  Heartbeats when idle (and every third while busy, for the author's limits): a
  subscriber's one-byte PING, answered by a PONG carrying
  the author endpoint's random instance id and the peer's session (neither can decode as a protocol frame).  A
  subscriber that hears nothing for ``liveness`` heartbeats closes and recreates its DEALER with exponential
  backoff (Paranoid Pirate), PINGs, and calls ``on_reconnect`` when the PONG announces the new connection's
  session (its FETCHes carry it, SPEC 8.9) -- set by :class:`streams.api.Subscriber` to
  re-fetch everything after its cursors (Clone pattern: live frames are held by the core while the fetch fills
  the hole; duplicates are rejected as replays).  A PONG with a new instance id (the author restarted behind a
  transparent ZeroMQ reconnect) triggers the same catch-up.  Only heartbeats the subscriber was awake for count,
  and never while a frame waits unread in its socket: a stall of its own event loop is not the author's silence
  (a reconnect then would discard the answers waiting there -- a starved host's handshakes never completed).
* **Hostile input** (THREATS 8).  Frames over ``max_frame`` are refused by ZeroMQ itself (``MAXMSGSIZE``: the
  connection is dropped).  One bound this layer cannot set: ``MAXMSGSIZE`` limits each part of a ZeroMQ message,
  not how many parts it has, and libzmq keeps a message's parts until its last one arrives -- a peer that speaks
  ZMTP itself can make the process hold an unfinished message without bound before any of it reaches this code,
  and any peer can send one finished message of many parts, held whole until read (the author reads it whole and
  drops it as malformed; a subscriber takes each part for a frame).  Where hosts other than the channel's parties
  can connect, turn CURVE on (its ZAP handler lets only the keys the channel
  knows finish the handshake, nothing flows before -- but under a credential policy every key passes: SPEC 14.5)
  and cap the process's memory (a cgroup, ``RLIMIT_AS``).
  Malformed frames are dropped by the strict decoder before reaching the core and
  counted per peer.  Unauthenticated kinds (HELLO, SUBSCRIBE, PING, CREDITs of a wrong session) are
  rate-limited per peer (token bucket), and well-formed requests from all peers together by one endpoint-wide
  bucket, so that reconnecting or opening many connections does not multiply what a flooder can make the core
  unseal.  The author's inbound queue is bounded (``inbox`` frames, ``inbox_bytes`` bytes); per-peer state is a
  few counters and a send queue bounded in frames and bytes, and the number of peers is capped (least recently
  seen evicted, those in a handshake or routed to a branch last: a requester's challenge is bound to its record).

Delivery semantics seen by the application (with :mod:`streams.api`): the protocol accepts every
(branch, publisher, seq) exactly once, in order, including across ``kill -9`` and restart of either side.  The
application sees every accepted message at least once: a message is marked delivered when the application asks
for the next one, so after a crash the messages accepted but not yet marked are handed out again.  After
de-duplicating by (branch, publisher, seq), the application's stream has no duplicates and no holes.  A sender
that must know a message is durable at the receiver awaits :meth:`streams.api.Author.wait_acknowledged`
(the receiver's signed ACK is sent only after its commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import itertools
import logging
import os
import socket
import stat
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
import zmq.asyncio

from streams._config import check_ints, check_order, check_rate
from streams._tasks import cancel_and_wait, wait_shielded
from streams.core import Outgoing
from streams.errors import BrokenResourceError, ClosedResourceError, DecodeError, LocalProtocolError
from streams.wire import MAX_FRAME, VERSION, Kind, decode_frame

from .curve import CurveConfig, KnownKeys, ZapHandler, setup_client, setup_server

__all__ = [
    "BUNDLE",
    "BUNDLE_OK",
    "CREDIT",
    "PING",
    "PONG",
    "AuthorEndpoint",
    "EndpointConfig",
    "EndpointStats",
    "SubscriberEndpoint",
]

log = logging.getLogger("brokerless")

#: Transport-level heartbeat.  A single 0x00 byte is the msgpack integer 0, never a 5-array: it cannot be a frame.
PING = b"\x00"
#: PONG prefix (SPEC 14.1): ``0x01 || instance(8) || session(8) || window_max(u32 BE) || window_bytes(u64 BE)``
#: -- the author endpoint's random instance id, the random session of the receiving peer's record, and the
#: author's flow-control limits (``credit_window_max``, ``window_bytes``), to which the subscriber fits the window
#: it reports.  A frame starts with 0x95: a control message never decodes.
PONG = b"\x01"
#: CREDIT prefix (SPEC 14.1, subscriber -> author):
#: ``0x02 || session(8) || received(u64 BE) || consumed(u64 BE) || window(u32 BE)``.
CREDIT = b"\x02"
_INSTANCE_LEN = 8
_SESSION_LEN = 8
_PONG_LIMITS = struct.Struct(">IQ")
#: A PONG without the limits (an author endpoint from before them) is still understood: it tells no limits.
_PONG_LEN_NO_LIMITS = 1 + _INSTANCE_LEN + _SESSION_LEN
_PONG_LEN = _PONG_LEN_NO_LIMITS + _PONG_LIMITS.size
_CREDIT_BODY = struct.Struct(">8sQQI")
_CREDIT_LEN = 1 + _CREDIT_BODY.size
#: BUNDLE prefix (SPEC 14.1, either way): ``0x03 || (len(u32 BE) || frame)...`` -- frames for one peer in one
#: ZeroMQ message, sent only to a peer that said it takes them (BUNDLE_OK), at most as large as it said.
BUNDLE = b"\x03"
#: BUNDLE_OK prefix (SPEC 14.1): ``0x04 || max_bytes(u32 BE)`` -- the sender takes BUNDLEs of up to ``max_bytes``
#: bytes.  A subscriber sends it with the first CREDIT of every session; the author answers it once per record.
BUNDLE_OK = b"\x04"
_U32 = struct.Struct(">I")
_BUNDLE_OK_LEN = 1 + _U32.size
#: A BUNDLE_OK under this many bytes is taken as "no bundles" (not even two small frames would fit).
_MIN_BUNDLE = 64
#: A subscriber says it takes BUNDLEs this much below its ``max_frame``: under CURVE, ZeroMQ holds the encrypted
#: message (33 bytes more) to ``MAXMSGSIZE``, and a BUNDLE of exactly ``max_frame`` bytes cut the connection.
_BUNDLE_MARGIN = 64
#: No protocol frame is shorter (the smallest, a HELLO, is 44 bytes): a BUNDLE holding a shorter one is
#: malformed, which also bounds how many frames one BUNDLE can put in the inbox (about bytes / 44).
_MIN_FRAME = 40
#: The largest BUNDLE an author takes from a subscriber: the reader judges a BUNDLE's frames in one turn, and a
#: flood of frames that decode but fail later (about 100 bytes and 13 us each here) must not hold it long (64 KiB:
#: 3-6 ms measured).  A provider's publish_many of 64 frames of 1 KiB goes in two.
_MAX_INBOUND_BUNDLE = 64 << 10
#: A subscriber reports its credit whenever its driver took this fraction of the window since the last report.
_REPORT_FRACTION = 4
_AVG_RISE, _AVG_FALL = 1 / 2, 1 / 64  # weights of a data frame's size in the subscriber's moving average

#: Kinds that only members send (they are authenticated by the core); every other kind is unauthenticated and
#: charged against the sender's inbound budget.
#: Records an eviction passes over (in a handshake, or routed) before it takes the least recently seen anyway.
_EVICT_LOOKS = 64
#: A subscriber PINGs at least every this many heartbeats, also while frames flow (the PONG restores the author's
#: limits: SubscriberEndpoint._heartbeat).
_BUSY_PING_HEARTBEATS = 3
_MEMBER_KINDS = frozenset({Kind.PACKET, Kind.CHECKPOINT, Kind.UNSUBSCRIBE, Kind.FETCH, Kind.HEAD, Kind.ACK})
_NOT_A_FRAME = DecodeError("not a streams/1 frame (must start with [1, kind, ...])")
_BAD_CREDIT = DecodeError(f"CREDIT must be {_CREDIT_LEN} bytes")
_BAD_BUNDLE_OK = DecodeError(f"BUNDLE_OK must be {_BUNDLE_OK_LEN} bytes")
_BAD_BUNDLE = DecodeError("a BUNDLE larger than agreed, or whose frames do not add up")


def _bundle(frames: Sequence[bytes]) -> bytes:
    """A BUNDLE message of ``frames`` (SPEC 14.1)."""
    pack = _U32.pack
    return BUNDLE + b"".join([pack(len(f)) + f for f in frames])


def _as_message(frames: Sequence[bytes]) -> bytes:
    """The ZeroMQ message carrying ``frames``: a lone frame as itself, several as a BUNDLE."""
    return frames[0] if len(frames) == 1 else _bundle(frames)


def _our_takes(cfg: EndpointConfig, cap: int) -> int:
    """The largest BUNDLE an endpoint with ``cfg`` takes (its BUNDLE_OK's ``max_bytes``), at most ``cap``: 64 bytes
    under its ``max_frame`` (the room CURVE needs under ``MAXMSGSIZE``), 0 for none."""
    takes = min(cfg.bundle_bytes, cfg.max_frame - _BUNDLE_MARGIN, cap)
    return takes if takes >= _MIN_BUNDLE else 0


def _agreed(most: int, ours: int) -> int:
    """What the other side's BUNDLE_OK of ``most`` bytes agrees to, within our own limit ``ours`` (0: none)."""
    return min(most, ours) if most >= _MIN_BUNDLE else 0


def _unbundle(data: bytes) -> list[bytes] | None:
    """The frames of a BUNDLE message, or None if its lengths do not add up exactly, or a frame is shorter than any
    protocol frame or does not start as one (``0x95``)."""
    frames: list[bytes] = []
    off, end, unpack = 1, len(data), _U32.unpack_from
    while off < end:
        if off + 4 > end:
            return None
        (n,) = unpack(data, off)
        off += 4
        if n < _MIN_FRAME or off + n > end or data[off] != 0x95:
            return None
        frames.append(data[off:off + n])
        off += n
    return frames or None


def _queue_has_room(cfg: EndpointConfig, frames: int, queued: int, size: int) -> bool:
    """Whether a send queue holding ``frames`` frames of ``queued`` bytes takes one more of ``size`` bytes: within
    ``send_queue`` and ``send_queue_bytes``, and an empty queue always takes one (so an oversized frame, a gap
    fill's say, still goes out)."""
    return frames < cfg.send_queue and (not frames or queued + size <= cfg.send_queue_bytes)


def _subscriber_rcvhwm(cfg: EndpointConfig) -> int:
    """A subscriber's receive high-water mark: ``rcvhwm``, at most ``inbox_bytes / max_frame`` frames (at least
    16).  Measured: 256 costs nothing against 1000 (16 KiB signed-each), while 64 cost 8%."""
    return min(cfg.rcvhwm, max(16, cfg.inbox_bytes // max(1, cfg.max_frame)))


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


#: EndpointConfig's integer fields and their least meaningful values: 0 where the docstring gives 0 a meaning
#: (no CREDIT, no BUNDLEs, no queue beyond the pipe, no suspension, no handshake hold), 1 elsewhere -- a 0
#: interval spins a loop, a 0 high-water mark is ZeroMQ's "no limit" (unbounded memory per peer).
_ENDPOINT_FLOORS: dict[str, int] = {
    "max_frame": 1, "heartbeat_ms": 1, "liveness": 1, "reconnect_min_ms": 1, "reconnect_max_ms": 1,
    "send_queue": 0, "send_queue_bytes": 0, "inbound_burst": 1, "global_burst": 1, "failures_to_suspend": 1,
    "suspend_ms": 0, "sndhwm": 1, "rcvhwm": 1, "inbox": 1, "inbox_bytes": 1, "credit_window": 0,
    "credit_window_max": 1, "window_bytes": 1, "batch": 1, "bundle_bytes": 0, "max_peers": 1,
    "handshake_hold_ms": 0, "peers_per_branch": 1, "max_branches": 1,
}
#: Ceilings other than 2**63 - 1 (MAXMSGSIZE is an int64): ZeroMQ's high-water marks and reconnect intervals are C
#: ints (a larger value raised OverflowError out of the endpoint's constructor, its socket left open); a CREDIT
#: carries the window as a u32 (SPEC 14.4).
_C_INT = (1 << 31) - 1
_ENDPOINT_CEILINGS: dict[str, int] = {"sndhwm": _C_INT, "rcvhwm": _C_INT, "reconnect_min_ms": _C_INT,
                                      "reconnect_max_ms": _C_INT, "credit_window": 0xFFFF_FFFF}


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Limits and timings of an endpoint.  Units are in the field names and docstrings.

    Raises :class:`~streams.errors.LocalProtocolError`, naming the field and the value, for a field out of its
    range: the integers from 1 (0 for ``send_queue``, ``send_queue_bytes``, ``suspend_ms``, ``credit_window``,
    ``bundle_bytes`` and ``handshake_hold_ms``, where 0 has a meaning) to ``2**63 - 1`` (``sndhwm``, ``rcvhwm``,
    ``reconnect_min_ms`` and ``reconnect_max_ms``: ``2**31 - 1``, ZeroMQ's C int; ``credit_window``:
    ``2**32 - 1``, a u32 on the wire); ``inbound_budget`` and ``global_budget`` finite numbers above 0;
    ``reconnect_max_ms`` at least ``reconnect_min_ms``; ``curve`` a :class:`~brokerless.curve.CurveConfig` or
    None.  Refused where the mistake is made, not met later as a spinning loop or unbounded memory."""

    max_frame: int = MAX_FRAME
    """Largest frame accepted, bytes.  Also ZeroMQ ``MAXMSGSIZE``: a peer sending more is disconnected."""
    heartbeat_ms: int = 1000
    """Heartbeat interval, milliseconds.  Subscriber: a PING is sent when nothing was sent or heard for this long
    (the author endpoint sends none: it answers each with a PONG).  Author: the unit of ``liveness``."""
    liveness: int = 3
    """Missed heartbeats before a peer counts as dead (author: forgotten; subscriber: reconnect -- counted only
    while the subscriber's event loop runs, and never while a frame waits unread in its socket)."""
    reconnect_min_ms: int = 100
    """First reconnect delay, milliseconds; doubled on each failed attempt up to ``reconnect_max_ms``."""
    reconnect_max_ms: int = 5000
    """Largest reconnect delay, milliseconds."""
    send_queue: int = 1000
    """Frames queued per peer when its ZeroMQ pipe is full; beyond it frames are dropped (and recovered by the
    receiver's gap fill).  Bounds the author's memory per slow peer."""
    send_queue_bytes: int = 64 << 20
    """The same bound in bytes (frames may be up to ``max_frame``, 1 MiB: 1000 of them were a gigabyte per slow
    peer).  One frame is always accepted into an empty queue, so a frame larger than this still goes out."""
    inbound_budget: float = 50.0
    """Unauthenticated frames (HELLO, SUBSCRIBE, PING) and new branch mappings accepted per peer, per second."""
    inbound_burst: int = 100
    """Token bucket size for ``inbound_budget``, frames."""
    global_budget: float = 2000.0
    """Author: unauthenticated frames (HELLO, SUBSCRIBE, ...) passed to the protocol per second from all peers
    together.  A flooder that reconnects (a new routing id, a fresh per-peer bucket) or opens many connections
    still cannot make the core unseal more SUBSCRIBE requests than this (THREATS 8); under such a flood new
    subscriptions are slowed, members' traffic is not (member kinds never draw from it)."""
    global_burst: int = 4000
    """Token bucket size for ``global_budget``, frames."""
    failures_to_suspend: int = 16
    """Author: frames of one peer (connection) that failed the protocol's signature or AEAD checks (reported by
    the core through the driver, :meth:`AuthorEndpoint.penalize`) before every frame from it is dropped unread
    for ``suspend_ms``.  Counted for the life of the peer's record, never reset by its good frames (a replayed
    genuine frame is one): a connection that speaks for a real member never fails them; one that sends
    forgeries naming a real branch costs a few checks, then nothing (SPEC 10.3, 14.4, THREATS 8)."""
    suspend_ms: int = 10_000
    """Author: how long a suspended peer's frames are dropped before any parsing (kept apart from its record,
    which may expire meanwhile; at most ``max_peers`` suspensions are remembered).  A new connection's first
    failures cost the core at most ``CoreConfig.peer_failures`` + 1 checks per batch."""
    sndhwm: int = 1000
    """ZeroMQ send high-water mark per peer pipe, messages."""
    rcvhwm: int = 1000
    """ZeroMQ receive high-water mark per peer pipe, messages.  A subscriber's socket uses at most
    ``inbox_bytes / max_frame`` of it (256 with the defaults; at least 16): when its inbox is full it stops
    reading, and a sender that overruns its window -- a hostile author, a relay injecting frames -- can then park
    no more than about ``inbox_bytes`` more in ZeroMQ's pipe (1000 frames of 1 MiB were a gigabyte) in messages
    of one part.  The mark counts messages, not their parts: one message of many parts, each under
    ``max_frame``, is held whole however large (the module doc, "Hostile input": CURVE closes it)."""
    inbox: int = 10_000
    """Frames received but not yet taken by the driver.  Author: beyond it frames are dropped (senders
    recover); subscriber: beyond it the endpoint stops reading (back-pressure into ZeroMQ)."""
    inbox_bytes: int = 256 << 20
    """The same bound in bytes (10,000 frames of up to 1 MiB were 10 GB).  A subscriber also fits its credit
    window to it (and to ``window_bytes``): about the smaller of the two / the average size of the data frames it
    receives, when that is fewer frames than ``credit_window`` (from about 8 KiB frames with the defaults)."""
    credit_window: int = 8000
    """Subscriber: data frames the author may send beyond what this endpoint's driver took (the window of its
    CREDITs, SPEC 14.4).  At most ``inbox`` (a larger value is clamped to it), and fewer for large frames (see
    ``inbox_bytes`` and ``window_bytes``); 0 sends no CREDIT at all, so the author sends this endpoint no more
    than its initial window per session (see ``window_bytes``: for tests of the author's bounds).  The default
    leaves a producer burst as much room as the high-water marks and kernel buffers did before credit
    (measured: 2000 made a producer faster than its subscriber drop, and recover by gap fill, in 6 of 10 runs
    against 1 of 10)."""
    credit_window_max: int = 10_000
    """Author: the largest window a subscriber may ask for, frames (a larger one is clamped to it).  Also the
    window of a peer that has not sent a CREDIT of its session yet.  Told to subscribers in the PONG, with
    ``window_bytes``: a subscriber endpoint asks for no more and reports at a quarter of the window it asked."""
    window_bytes: int = 64 << 20
    """Author: the most bytes of data frames in flight to one peer -- handed to ZeroMQ and not yet reported taken
    by its driver -- whatever window it asked for (windows count frames; 10,000 frames of up to 1 MiB were
    10 GB in ZeroMQ's pipe for a peer that does not read).  A frame goes out while less than this is in flight,
    so the most is this plus one frame.  A peer that never sent a CREDIT of its session reports nothing taken:
    it gets this much (and ``credit_window_max`` frames), then waits for one.  Subscriber: its window is fitted
    to this bound, to ``inbox_bytes`` and to the author's ``window_bytes`` (from the author's PONG)."""
    batch: int = 256
    """Most frames returned by one ``recv()``."""
    bundle_bytes: int = 256 << 10
    """Largest BUNDLE, bytes (SPEC 14.1): data frames for one peer that are ready together go out in one ZeroMQ
    message -- one send, one receive and one message through each side's I/O thread instead of one per frame
    (measured: a third of the author's CPU per 1 KiB message).  Subscriber: what it tells the author it takes
    (at most ``max_frame`` less 64 bytes: ZeroMQ enforces ``max_frame`` on each message, CURVE's included; none
    with ``credit_window`` 0, which sends no CREDIT to say it with); author: the most it sends, whatever the
    subscriber said.  0 turns bundles off."""
    max_peers: int = 10_000
    """Author: most peers tracked; beyond it one is forgotten: the least recently seen of those neither in a
    handshake (a HELLO within ``handshake_hold_ms``) nor routed to a branch, looking past at most 64 of those
    (if those are all it looks at, the least recently seen of them in a handshake, a member's only if all are
    members').  Its challenge is bound to the session of its
    record (SPEC 8.3): a requester's record evicted between its HELLO and its SUBSCRIBE is refused, so a peer
    cycling more new connections than this through one round trip would otherwise keep everyone out."""
    handshake_hold_ms: int = 10_000
    """Author: how long after its last HELLO a peer's record is kept before those of other peers that are not
    routed to a branch (see ``max_peers``), milliseconds.  A HELLO needs no identity: a flooder can hold as many
    records this way as ``global_budget`` lets HELLOs through in this time (at the defaults, twice
    ``max_peers``), so these are evicted before members' records, never after."""
    peers_per_branch: int = 4096
    """Author: most routing ids mapped to one branch (the least recently seen is evicted).  Only peers of
    verified members are mapped, so a group needs one per connected member (at most 255 members besides the
    author, a few connections each)."""
    max_branches: int = 100_000
    """Author: most branches in the routing map (the least recently used is evicted)."""
    curve: CurveConfig | None = None
    """Optional CurveZMQ per hop (defence in depth only; see :mod:`brokerless.curve`)."""

    def __post_init__(self) -> None:
        check_ints("EndpointConfig", self, _ENDPOINT_FLOORS, _ENDPOINT_CEILINGS)
        check_rate("EndpointConfig", "inbound_budget", self.inbound_budget)
        check_rate("EndpointConfig", "global_budget", self.global_budget)
        check_order("EndpointConfig", self, "reconnect_min_ms", "reconnect_max_ms")
        if self.curve is not None and not isinstance(self.curve, CurveConfig):
            # (its type only: a key pair passed here in place of a CurveConfig holds a secret)
            raise LocalProtocolError("EndpointConfig.curve must be a CurveConfig or None, not "
                                     f"{type(self.curve).__name__}")


@dataclass(slots=True)
class EndpointStats:
    """Counters of an endpoint (cumulative since it was opened)."""

    frames_in: int = 0
    frames_out: int = 0
    malformed: int = 0  #: frames the strict decoder refused
    over_budget: int = 0  #: unauthenticated frames dropped by the per-peer token bucket
    over_global_budget: int = 0  #: unauthenticated frames dropped by the endpoint-wide token bucket (author)
    inbox_dropped: int = 0  #: frames dropped because the driver did not keep up (author)
    send_dropped: int = 0  #: frames dropped because a peer's send queue was full or the peer was gone
    peers_expired: int = 0
    peers_evicted: int = 0
    reconnects: int = 0
    max_queue_seen: int = 0  #: the largest per-peer send queue observed, frames
    credits: int = 0  #: CREDITs sent (subscriber) or accepted with the right session (author)
    credit_blocked: int = 0  #: author: data frames that found their peer's window full (queued, or dropped)
    credit_stale: int = 0  #: author: CREDITs of another session (replayed, forged, old) -- ignored
    credit_resyncs: int = 0  #: author: times frames lost on the way were written off the window
    credit_renewals: int = 0  #: author: sessions renewed because a peer's credit reports stayed behind ours
    bundles: int = 0  #: BUNDLE messages sent; their frames count in frames_out
    bundles_in: int = 0  #: BUNDLE messages received; their frames count in frames_in
    peers_suspended: int = 0  #: author: times a peer was suspended for frames that failed their checks
    suspended_dropped: int = 0  #: author: frames dropped unread because their peer was suspended
    per_peer_malformed: dict[bytes, int] = field(default_factory=dict)


class _Bucket:
    """Token bucket (THREATS 8): ``rate`` per second, at most ``burst`` saved.  Per peer, and one endpoint-wide."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, now: int, burst: int) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: int, rate: float, burst: int) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate / 1000.0)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Peer(_Bucket):
    """What the author endpoint keeps per routing id: budget, routes, the bounded send queue and its credit."""

    __slots__ = ("behind_at", "branches", "bundle_max", "bundle_said", "bundles_told", "consumed", "credit",
                 "failures", "flight_bytes", "flight_max", "hello_at", "last_seen", "loss_at", "loss_received",
                 "loss_sent",
                 "malformed", "pong", "queue", "queued_bytes", "reply", "retold_at", "rid", "sent", "session", "sizes",
                 "window")

    def __init__(self, rid: bytes, now: int, burst: int, window: int, window_bytes: int) -> None:
        super().__init__(now, burst)
        self.rid = rid
        self.last_seen = now
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0  #: bytes of the frames in ``queue``
        self.branches: set[bytes] = set()
        self.malformed = 0
        self.failures = 0  #: frames that failed the core's checks (penalize), since the last suspension
        self.pong: bytes | None = None  #: the session PONG, while the pipe refused it (sent before any queued frame)
        self.flight_max = window_bytes
        self.bundle_max = 0  #: the largest BUNDLE this peer takes (its BUNDLE_OK, within ours), bytes; 0: none
        self.bundle_said = False  #: a BUNDLE_OK came from this peer (``bundle_max`` is the smallest it said)
        #: when we last said our BUNDLE_OK again because this peer sent a BUNDLE larger than we take (ms), or -1
        self.retold_at = -1
        self.hello_at = -1  #: when a HELLO of this record last went to the protocol (ms), or -1
        self.new_session(window)

    def new_session(self, window: int) -> None:
        """Start a session (SPEC 14.4): a new random id and credit counted from zero, with the initial ``window``
        (``credit_window_max``).  The caller announces it with a PONG before any further data frame."""
        # A fresh session per record: every data frame counted in ``sent`` follows the PONG announcing it on the
        # ordered pipe, so the subscriber's counts of this session compare with ours.
        self.session = os.urandom(_SESSION_LEN)
        self.credit = False  #: a CREDIT of this session arrived
        self.sent = 0  #: data frames handed to ZeroMQ in this session (PING/PONG never count)
        self.consumed = 0  #: the most the subscriber's driver reported taken (never above ``sent``)
        self.window = window  #: frames: ``credit_window_max`` until the first CREDIT, then the reported window
        # Bytes in flight: the sizes of the frames ``consumed + 1 .. sent`` (at most a window of them) and their sum.
        self.sizes: deque[int] = deque()
        self.flight_bytes = 0
        self.loss_at = -1  #: loss detection: when an idle subscriber first reported ``loss_received`` (ms), or -1
        self.loss_received = 0
        self.loss_sent = 0  #: ``sent`` at that moment
        #: when a report of this session first came behind the one we have, with none since that was not (ms), or -1
        self.behind_at = -1
        self.bundles_told = False  #: our BUNDLE_OK answered its own (once per session: the subscriber forgets it)
        self.reply: bytes | None = None  #: that answer, while it waits for the pipe (after the session PONG)

    def next_message(self, frames: Sequence[bytes], start: int = 0) -> list[bytes]:
        """The frames, from ``frames[start]`` on, that go out in the next message: that one always (the caller
        checked :meth:`must_wait`), more while its window and ``window_bytes`` leave room for each and they fit in
        one BUNDLE of ``bundle_max`` bytes."""
        first = frames[start]
        limit = self.bundle_max
        if not limit:
            return [first]
        out = [first]
        room = self.window - (self.sent - self.consumed)
        flight, flight_max = self.flight_bytes + len(first), self.flight_max
        size = 5 + len(first)
        for i in range(start + 1, min(len(frames), start + room)):
            f = frames[i]
            if flight >= flight_max or size + 4 + len(f) > limit:
                break
            out.append(f)
            size += 4 + len(f)
            flight += len(f)
        return out

    def gated(self) -> bool:
        """Its window (frames) or ``window_bytes`` is used up: data frames must wait for the next CREDIT."""
        return self.sent - self.consumed >= self.window or self.flight_bytes >= self.flight_max

    def sent_one(self, size: int) -> None:
        """A data frame of ``size`` bytes was handed to ZeroMQ."""
        self.sent += 1
        self.sizes.append(size)
        self.flight_bytes += size

    def taken(self, frames: int) -> None:
        """The oldest ``frames`` frames in flight left it (taken by the driver, or written off as lost)."""
        sizes = self.sizes
        for _ in range(min(frames, len(sizes))):
            self.flight_bytes -= sizes.popleft()

    def must_wait(self) -> bool:
        """A data frame for this peer cannot go out now: frames (or the session PONG) wait ahead of it, or its
        window is used up."""
        return bool(self.queue) or self.pong is not None or self.reply is not None or self.gated()


def _socket_options(sock: zmq.Socket[Any], cfg: EndpointConfig) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
    sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame)


def _address_error(what: str, address: str, exc: zmq.ZMQError) -> LocalProtocolError:
    """``what`` (bind, connect) ``address`` failed: the reason once (pyzmq's ``strerror`` repeats the address), and
    for an address libzmq cannot parse -- typed as ``HOST:PORT``, say -- what one looks like."""
    reason = zmq.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in (errno.EINVAL, errno.EPROTONOSUPPORT):
        reason += " (an address is tcp://HOST:PORT or ipc://PATH)"
    return LocalProtocolError(f"cannot {what} {address}: {reason}")


def _check_port(what: str, address: str) -> None:
    """Refuse a ``tcp://`` port that is not ASCII digits up to 65535 (or ``*``, any port): libzmq reads it with
    ``strtol`` and takes it modulo 65536, so a typo bound or connected to another port without a word (``:99999``
    to 34463, ``:-1`` to 65535, ``:+99999`` to 34463, ``:5555x`` to 5555).  Each part of a ``source;address``
    pair is checked."""
    if not address.startswith("tcp://"):
        return
    for part in address[len("tcp://"):].split(";"):
        _host, colon, port = part.rpartition(":")
        if not colon or port == "*" or "]" in port:
            # No port at all (the last colon is inside an IPv6 address's brackets): libzmq refuses it and says
            # so, or takes it where a port is optional (the source of a source;address pair: [::1];[::1]:5555).
            continue
        if not (port.isascii() and port.isdigit()):
            raise LocalProtocolError(f"cannot {what} {address}: port {port!r} is not a number (0 to 65535)")
        if int(port) > 0xFFFF:
            raise LocalProtocolError(f"cannot {what} {address}: port {port} is out of range (0 to 65535)")


def _check_ipc(address: str) -> None:
    """Refuse to bind an ``ipc://`` path that is in use or not ours to replace: libzmq unlinks whatever is at the
    path before binding, which silently took over a live author's socket (its subscribers then reached the new
    one) or deleted a regular file.  A socket file nobody listens on (a killed author's) is replaced."""
    if not address.startswith("ipc://") or address.startswith("ipc://@"):
        return
    path = address[len("ipc://"):]
    try:
        st = os.stat(path)
    except OSError:
        return  # nothing there (or not reachable: bind reports it)
    if not stat.S_ISSOCK(st.st_mode):
        raise LocalProtocolError(f"cannot bind {address!r}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return  # refused: a stale socket file
    finally:
        probe.close()
    raise LocalProtocolError(f"cannot bind {address!r}: another endpoint is listening there")


class _Base:
    def __init__(self, config: EndpointConfig | None, context: zmq.asyncio.Context | None) -> None:
        self.config = config or EndpointConfig()
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.asyncio.Context()
        # A closed socket of our own, for _sync once the socket is closed (_retire_socket), made now: a close may
        # come when the context can make no socket any more (terminated by an application's shutdown).
        try:
            self._closed_sync: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.DEALER)
        except zmq.ZMQError:
            self._term()
            raise
        self._closed_sync.close(linger=0)
        self._inbox: deque[tuple[bytes, object]] = deque()
        self._inbox_bytes = 0  #: bytes of the frames in the inbox
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None  #: the first close(), run as a task of its own
        #: Why a background task of the endpoint died (a reader whose socket failed, a reconnect that could not make
        #: a socket): recv() raises it, so the driver learns of it instead of waiting for frames that never come.
        self._failure: BaseException | None = None
        self.stats = EndpointStats()

    async def recv(self) -> list[tuple[bytes, object]]:
        """Wait for at least one frame; return up to ``config.batch`` frames as (data, peer).

        Raises :class:`ClosedResourceError` once the endpoint is closed, :class:`BrokenResourceError` (the cause
        chained) once a background task of the endpoint died: close it."""
        self._start()
        while not self._inbox:
            if self._closed:
                raise ClosedResourceError("endpoint closed")
            self._check_failed()
            self._ready.clear()
            self._driver_waits = True
            try:
                await self._ready.wait()
            finally:
                self._driver_waits = False
        n = min(len(self._inbox), self.config.batch)
        batch = [self._inbox.popleft() for _ in range(n)]
        self._inbox_bytes -= sum(len(d) for d, _ in batch)
        self._on_taken()
        return batch

    def _inbox_full(self) -> bool:
        return len(self._inbox) >= self.config.inbox or self._inbox_bytes >= self.config.inbox_bytes

    def _on_taken(self) -> None:
        pass

    # -- readability of the ZeroMQ socket -------------------------------------------------------------------------
    #
    # The readers drain the socket through a synchronous shadow (PERF-FLOORS: drain loops), and the drivers send
    # through it too.  ZeroMQ's notification descriptor (ZMQ_FD) only says "something changed": any operation on
    # the socket -- a send included -- may consume that notification while frames wait, so a reader parked in
    # zmq.asyncio's poll() would sleep until its timeout (measured: p50 latency of tens of milliseconds).  The
    # rule of ZMQ_FD is to re-check ZMQ_EVENTS after every operation; the readers wait on their own future,
    # woken by the descriptor and by that re-check after each send.

    _sock: zmq.asyncio.Socket
    _sync: zmq.Socket[bytes]
    _wake_fut: asyncio.Future[None] | None = None
    _driver_waits = False  #: the driver is parked in recv() with an empty inbox

    def _check_readable(self) -> None:
        """Wake the parked reader if frames are waiting (also processes ZeroMQ's pending commands, so the
        descriptor stops signalling)."""
        f = self._wake_fut
        if self._frames_waiting() and f is not None and not f.done():
            f.set_result(None)

    def _frames_waiting(self) -> bool:
        """Whether a frame waits in the socket (ZMQ_EVENTS; also processes ZeroMQ's pending commands).  False while
        the socket is closed or being replaced by a reconnect."""
        try:
            return bool(cast(int, self._sync.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
        except zmq.ZMQError:
            return False

    async def _wait_readable(self, timeout_ms: int) -> None:
        """Until the socket has a frame to read, or ``timeout_ms`` passed."""
        loop = asyncio.get_running_loop()
        fut = self._wake_fut = loop.create_future()
        self._check_readable()
        if fut.done():
            self._wake_fut = None
            return
        timer = loop.call_later(timeout_ms / 1000, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._wake_fut = None

    def _watch(self) -> int:
        """Call _check_readable whenever ZMQ_FD signals; returns the descriptor (for _unwatch)."""
        fd = int(self._sync.getsockopt(zmq.FD))
        asyncio.get_running_loop().add_reader(fd, self._check_readable)
        return fd

    @staticmethod
    def _unwatch(fd: int) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)

    def _start(self) -> None:
        raise NotImplementedError

    def _task(self, body: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``body`` as a background task of the endpoint, guarded: if it dies, the endpoint stops serving its
        driver -- :meth:`recv` raises :class:`BrokenResourceError` with the cause, and the party closes saying why
        -- rather than leave it waiting, deaf, for frames that never come."""
        return asyncio.create_task(self._guarded(body, name), name=name)

    async def _guarded(self, body: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await body
        except Exception as exc:
            if self._closed:
                return
            log.error("%s failed; the endpoint stops: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
            if self._failure is None:
                self._failure = exc
            self._ready.set()
            self._on_failure()

    def _on_failure(self) -> None:
        pass

    def _check_failed(self) -> None:
        if self._failure is not None:
            raise BrokenResourceError(f"the endpoint stopped: {type(self._failure).__name__}: {self._failure}; "
                                      "close it") from self._failure

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("endpoint closed")

    async def close(self) -> None:
        """Close the socket (linger 0) and, if owned, the context.  Idempotent: a call while another is in
        progress returns once that one has finished (the address is free then)."""
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.ensure_future(self._close())
        await wait_shielded(self._close_task)

    async def _close(self) -> None:
        raise NotImplementedError

    async def _stop_tasks(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self._ready.set()

    def _term(self) -> None:
        if self._own_ctx:
            self._ctx.term()

    def _retire_socket(self) -> None:
        """Close the socket (linger 0), first pointing ``_sync`` at a closed socket of our own.  ``_sync`` is a
        shadow: it holds libzmq's pointer to the socket and knows nothing of its close, so a call through it
        afterwards -- a driver's send while a subscriber waits out its reconnect backoff, a credit report, a
        readability check -- would use freed memory (a send could reach another socket that took its address).
        A closed pyzmq socket refuses every call before libzmq (ZMQError ENOTSOCK), which every user of
        ``_sync`` takes for a socket closed or being replaced."""
        self._sync = self._closed_sync
        self._sock.close(linger=0)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AuthorEndpoint(_Base):
    """The author's side: one ROUTER socket bound to every address in ``bind``.

    ``bind`` accepts ``tcp://127.0.0.1:0`` (port chosen by the OS; see :attr:`addresses`) and ``ipc://path``.
    ``context``: a ``zmq.asyncio.Context`` to share; by default the endpoint owns (and terminates) its own.  A
    context holds one ZAP handler: one CURVE author endpoint per context.
    ``known_key``: with ``config.curve``, the ZAP decision ``known_key(x25519_public) -> bool``; without it
    every CURVE client is refused until :meth:`admit_keys` installs one (an :class:`streams.api.Author` given
    this endpoint installs :meth:`~streams.api.Author.knows_key`).

    Raises :class:`LocalProtocolError` if an address cannot be bound (bad syntax, in use)."""

    def __init__(self, bind: str | Sequence[str], config: EndpointConfig | None = None, *,
                 context: zmq.asyncio.Context | None = None,
                 known_key: Callable[[bytes], bool] | None = None) -> None:
        super().__init__(config, context)
        self.instance = os.urandom(_INSTANCE_LEN)
        self._pong = PONG + self.instance  # + the peer's session + _pong_limits
        self._pong_limits = _PONG_LIMITS.pack(max(1, min(self.config.credit_window_max, 0xFFFF_FFFF)),
                                              max(1, min(self.config.window_bytes, (1 << 64) - 1)))
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self._routes: OrderedDict[bytes, OrderedDict[bytes, None]] = OrderedDict()
        self._backlog: set[bytes] = set()
        #: Suspended peers (SPEC 10.3): routing id -> until (ms), oldest first, at most ``max_peers``.
        self._suspended: OrderedDict[bytes, int] = OrderedDict()
        self._drain_waiters: list[asyncio.Future[None]] = []
        #: During :meth:`send_many`: each known peer's data frames, collected to go out together.
        self._pending: dict[bytes, list[bytes]] | None = None
        #: The largest BUNDLE we take from a peer (SPEC 14.1), told in reply to its BUNDLE_OK; 0: none.  At most
        #: _MAX_INBOUND_BUNDLE: its frames are judged in one turn of the reader.
        self._takes = _our_takes(self.config, _MAX_INBOUND_BUNDLE)
        self._global = _Bucket(_now_ms(), self.config.global_burst)
        self._auth: ZapHandler | None = None
        self._keys = KnownKeys(known_key)
        self._sock: zmq.asyncio.Socket = self._ctx.socket(zmq.ROUTER)
        at: object = bind  # the address that failed, for the error
        try:
            _socket_options(self._sock, self.config)
            # Unroutable sends raise instead of vanishing, and a full pipe raises EAGAIN instead of dropping
            # silently: every drop is seen and counted.
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if self.config.curve is not None:
                self._auth = setup_server(self._ctx, self._sock, self.config.curve, self._keys)
            addrs = [bind] if isinstance(bind, str) else list(bind)
            self.addresses: list[str] = []
            for a in addrs:
                at = a
                _check_port("bind", a)
                _check_ipc(a)
                self._sock.bind(a)
                last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
                self.addresses.append(last.decode() if isinstance(last, bytes) else str(last))
        except (zmq.ZMQError, LocalProtocolError) as exc:
            if self._auth is not None:
                self._auth.stop()
            self._sock.close(linger=0)
            self._term()
            if isinstance(exc, LocalProtocolError):
                raise
            raise _address_error("bind", str(at), exc) from exc
        # A synchronous shadow of the same socket for non-blocking drains (PERF-FLOORS: drain loops).
        self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)

    def __repr__(self) -> str:
        return f"AuthorEndpoint({self.addresses}, peers={len(self._peers)})"

    # -- Transport -----------------------------------------------------------------------------------------------

    async def send(self, out: Outgoing) -> None:
        """Route one frame: to ``out.peer``; else to the peers of ``out.branch``; else to every live peer.
        Never blocks: frames for a peer whose pipe and queue are full are dropped and counted.

        Raises :class:`ClosedResourceError` once closed."""
        self._check_open()
        self._start()
        self._route(out)
        self._check_readable()

    def send_many(self, outs: Sequence[Outgoing]) -> None:
        """Route every frame of ``outs``, in order, as :meth:`send` does, without an ``await`` per frame (one
        call per driver commit).  Never blocks.  Raises :class:`ClosedResourceError` once closed."""
        self._check_open()
        self._start()
        route = self._route
        # The data frames of each known peer are collected and go out together, as BUNDLEs where it takes them.
        pending: dict[bytes, list[bytes]] = {}
        self._pending = pending
        try:
            for out in outs:
                route(out)
        finally:  # also when an Outgoing is refused midway: what was routed before it goes out, as it did one by one
            self._pending = None
            for rid, frames in pending.items():
                peer = self._peers.get(rid)
                if peer is not None:
                    self._send_frames(peer, frames)
            self._check_readable()

    def _route(self, out: Outgoing) -> None:
        if type(out.data) is not bytes:  # refused here, not when the frames collected for a peer go out together
            raise LocalProtocolError("frame data must be bytes")
        if out.peer is not None:
            if not isinstance(out.peer, bytes):
                raise LocalProtocolError("peer must be a routing id received from this endpoint")
            if out.branch is not None and out.peer in self._peers:
                # A reply to a member of the branch (the grant answering its SUBSCRIBE, answers to its verified
                # FETCHes): authoritative, from the core, which names no branch on a reply to anyone else.  Only
                # while the peer has a record (as in learn_routes): one evicted or expired since the core read its
                # frame gets the reply, but a route without a record would never be forgotten (_forget goes by
                # the records' branches) and would take the branch's frames past credit and queue bounds.
                self._learn(out.branch, out.peer)
            self._send_to(out.peer, out.data)
        elif out.branch is not None:
            for rid in list(self._routes.get(out.branch, ())):
                self._send_to(rid, out.data)
        else:
            for rid in list(self._peers):
                self._send_to(rid, out.data)

    async def _close(self) -> None:
        self._wake_drain()
        await self._stop_tasks()  # the ZAP task included: it has let go of its socket when this returns
        if self._auth is not None:
            self._auth.stop()
        self._retire_socket()
        self._term()

    @property
    def wants_known_key(self) -> bool:
        """CURVE is on and no ZAP decision is installed (none given at construction, none by :meth:`admit_keys`):
        its ZAP handler refuses every client.  :class:`streams.api.Author` installs its own in such an endpoint
        (not in a wrapper around one, which it cannot see through: install it yourself there)."""
        return self._auth is not None and self._keys.known is None

    def admit_keys(self, known: Callable[[bytes], bool]) -> None:
        """Install the ZAP decision ``known(x25519_public) -> bool`` (synchronous; anything but True refuses)
        for CURVE clients connecting from now on, replacing any.  Raises :class:`LocalProtocolError` if the
        endpoint does not use CURVE."""
        if self._auth is None:
            raise LocalProtocolError("this endpoint does not use CURVE")
        self._keys.known = known

    async def drain(self, branch: bytes | None = None) -> None:
        """Wait until every peer of ``branch`` (if None, every peer routed to any branch: a member's connection)
        can take another data frame at once: nothing waits in its send queue and it has credit left (SPEC 14.4).
        A peer that goes away (liveness expiry, eviction) stops counting.  A peer routed to no branch -- a
        stranger's connection, a subscriber still in its handshake -- never counts: it gets no branch traffic, and
        anyone can open one that never reads (with a window of one frame, the answer to its HELLO fills it).

        For a producer that must not outrun its subscribers -- asyncio's ``StreamWriter.drain`` idiom: without
        it, frames beyond a subscriber's window are queued (bounded) and then dropped, and the subscriber
        recovers them by gap fill: nothing is lost, but that is slow.  It waits as long as the slowest peer of
        the branch needs (a dead one until it is forgotten, ``heartbeat_ms * liveness``): bound it with
        ``asyncio.wait_for`` if needed.  Raises :class:`ClosedResourceError` once closed,
        :class:`BrokenResourceError` once the endpoint's reader died (as :meth:`recv`)."""
        loop = asyncio.get_running_loop()
        while True:
            self._check_open()
            self._check_failed()  # a dead reader takes no credit: this would wait forever
            peers = self._peers
            if branch is not None:
                waits = any((p := peers.get(rid)) is not None and p.must_wait() for rid in self._routes.get(branch, ()))
            else:
                waits = any(p.branches and p.must_wait() for p in peers.values())
            if not waits:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._drain_waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._drain_waiters:
                    self._drain_waiters.remove(fut)

    def _on_failure(self) -> None:
        self._wake_drain()

    def _wake_drain(self) -> None:
        """A queue moved, a credit came or a peer went away: let drain() look again."""
        if self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    # -- introspection -------------------------------------------------------------------------------------------

    def queue_sizes(self) -> dict[bytes, int]:
        """Frames waiting in each peer's send queue (bounded by ``config.send_queue``)."""
        return {rid: len(p.queue) for rid, p in self._peers.items()}

    def queue_bytes(self) -> dict[bytes, int]:
        """Bytes waiting in each peer's send queue (bounded by ``config.send_queue_bytes``)."""
        return {rid: p.queued_bytes for rid, p in self._peers.items()}

    def in_flight(self) -> dict[bytes, int]:
        """For each peer under credit control (it sent a CREDIT of its current session): data frames sent to it
        that its driver has not taken yet, as far as its last CREDIT says (at most its window)."""
        return {rid: p.sent - p.consumed for rid, p in self._peers.items() if p.credit}

    def in_flight_bytes(self) -> dict[bytes, int]:
        """For each peer: bytes of the data frames sent to it in its session that its driver has not reported
        taken (all of them for a peer that has not sent a CREDIT); bounded by ``config.window_bytes`` plus one
        frame."""
        return {rid: p.flight_bytes for rid, p in self._peers.items()}

    def peers(self) -> list[bytes]:
        """Routing ids of the live peers."""
        return list(self._peers)

    def session_of(self, peer: object) -> bytes:
        """The session of our record of ``peer`` (a routing id), which its FETCHes must carry (SPEC 8.9);
        ``b""`` (which no FETCH carries) for a peer we have no record of."""
        rec = self._peers.get(peer) if isinstance(peer, bytes) else None
        return b"" if rec is None else rec.session

    def routes(self, branch: bytes) -> list[bytes]:
        """Routing ids currently mapped to ``branch``."""
        return list(self._routes.get(branch, ()))

    # -- internals ------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if not self._tasks and not self._closed:
            self._tasks.append(self._task(self._reader(), "brokerless-author-reader"))
            self._tasks.append(self._task(self._maintain(), "brokerless-author-maintain"))
            if self._auth is not None:
                self._tasks.append(self._task(self._auth.serve(), "brokerless-author-zap"))

    async def _reader(self) -> None:
        cfg = self.config
        fd = self._watch()
        try:
            while not self._closed:
                got = 0
                while got < cfg.batch:  # frames, a BUNDLE's each: one turn never holds the loop much longer
                    try:
                        parts = self._sync.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except zmq.ZMQError as exc:
                        log.error("author endpoint receive failed: %s", exc.strerror)
                        raise BrokenResourceError("receive failed") from exc
                    got += self._on_message(parts)
                if got:
                    self._ready.set()
                    await asyncio.sleep(0)  # let the driver run between batches
                else:
                    await self._wait_readable(cfg.heartbeat_ms)
        finally:
            self._unwatch(fd)

    def _on_message(self, parts: list[bytes]) -> int:
        """One ZeroMQ message from a peer; returns the frames it judged (1 for anything but a BUNDLE)."""
        cfg = self.config
        self.stats.frames_in += 1
        if len(parts) != 2:
            # A DEALER sends exactly one part (the routing id is prepended by ZeroMQ).
            self.stats.malformed += 1
            return 1
        rid, data = parts
        now = _now_ms()
        if self._suspended:
            until = self._suspended.get(rid)
            if until is not None:
                if now < until:
                    self.stats.suspended_dropped += 1
                    return 1
                del self._suspended[rid]
        peer = self._touch(rid, now)
        if data == PING:
            if peer.take(now, cfg.inbound_budget, cfg.inbound_burst):
                self._send_pong(peer, keep=False)
            else:
                self.stats.over_budget += 1
            return 1
        if data[:1] == PONG:
            return 1
        if data[:1] == CREDIT:
            self._on_credit(peer, data, now)
            return 1
        if data[:1] == BUNDLE_OK:
            if len(data) != _BUNDLE_OK_LEN:
                self._malformed(peer, _BAD_BUNDLE_OK)
                return 1
            # Like a CREDIT, not charged: a length check and an unpack.  Only this connection's peer, or an on-path
            # relay (which can drop its frames anyway), can send it.
            (most,) = _U32.unpack_from(data, 1)
            # A subscriber endpoint says the same every time (what it takes is fixed at its construction); another
            # value is a relay's (forged, or replayed from another connection).  The smallest stands: a forged one
            # can make our BUNDLEs to it smaller (or single frames), never larger than it takes -- it drops those.
            agreed = _agreed(most, cfg.bundle_bytes)
            peer.bundle_max = min(peer.bundle_max, agreed) if peer.bundle_said else agreed
            peer.bundle_said = True
            if not peer.bundles_told:
                # Its BUNDLE_OK says it is a subscriber endpoint that knows BUNDLEs: so say whether we take them
                # too, and how large (0: none -- said too, so that the smallest answer of the session, which
                # stands at the subscriber, pins a relay's forged one to what we take).  An older subscriber, which
                # would take our BUNDLE_OK for a data frame, sends none and never gets it.  Once per session, after
                # the record's session PONG (the subscriber forgets our answer at a new session).
                peer.bundles_told = True
                peer.reply = BUNDLE_OK + _U32.pack(self._takes)
                if self._flush_peer(peer):
                    self._backlog.add(rid)
            return 1
        if data[:1] == BUNDLE:
            # Whether or not we told this peer (a subscriber that has not yet heard of a new record of ours sends
            # what the old one agreed to): no agreement makes a frame more or less trusted, each is judged.
            # Counted in the reader's batch as the frames it may hold (splitting it costs per frame too), so that a
            # turn of the reader takes at most one BUNDLE beyond its batch, whatever the BUNDLE holds.
            frames = _unbundle(data) if len(data) <= self._takes else None
            if frames is None:
                self._malformed(peer, _BAD_BUNDLE)
                if len(data) > self._takes:
                    self._retell_bundles(peer, rid, now)
                return max(1, len(data) // _MIN_FRAME)
            self.stats.bundles_in += 1
            self.stats.frames_in -= 1  # counted below, frame by frame, as judged
            for f in frames:  # each as if it had come alone: triage, budgets, the inbox bound
                self.stats.frames_in += 1
                if not self._on_data(peer, rid, f, now):
                    # A subscriber endpoint bundles only what its core made: one frame that is none means the
                    # rest is not worth judging either (a flood's BUNDLE costs one failed frame, and one warning).
                    break
            return len(frames)
        self._on_data(peer, rid, data, now)
        return 1

    def _retell_bundles(self, peer: _Peer, rid: bytes, now: int) -> None:
        """``peer`` sent a BUNDLE larger than we take: its smallest BUNDLE_OK answer of the session says more than
        ours did -- ours was lost and a relay forged one (SPEC 14.1).  Say ours again (at most once per heartbeat):
        the smallest answer stands at the subscriber, so its BUNDLEs come back within what we take.  Without it, two
        frames of a relay's effort (drop our one answer, forge another) cost the peer every BUNDLE of the session."""
        if now - peer.retold_at < self.config.heartbeat_ms and peer.retold_at >= 0:
            return
        peer.retold_at = now
        peer.reply = BUNDLE_OK + _U32.pack(self._takes)
        if self._flush_peer(peer):
            self._backlog.add(rid)

    def _on_data(self, peer: _Peer, rid: bytes, data: bytes, now: int) -> bool:
        """A frame from a peer (alone, or one of a BUNDLE's), after the control messages.  False if it was
        malformed."""
        cfg = self.config
        # Cheap triage before any parsing (THREATS 8): a frame is the canonical array [1, kind, ...], so it starts
        # with 0x95 (fixarray 5), the version and the kind.  Garbage costs two byte compares, and unauthenticated
        # kinds are charged against the peer's budget before they are decoded.
        if len(data) < 3 or data[0] != 0x95 or data[1] != VERSION:
            self._malformed(peer, _NOT_A_FRAME)
            return False
        member = data[2] in _MEMBER_KINDS
        if not member and not peer.take(now, cfg.inbound_budget, cfg.inbound_burst):
            self.stats.over_budget += 1
            if self.stats.over_budget % 1000 == 1:
                log.warning("peer %s over its inbound budget: dropping (%d so far)", rid.hex(),
                            self.stats.over_budget)
            return True
        if self._inbox_full():  # dropped anyway: not worth decoding first (a BUNDLE would make that 390 decodes)
            self.stats.inbox_dropped += 1
            return True
        try:
            frame = decode_frame(data, cfg.max_frame)
        except DecodeError as exc:
            self._malformed(peer, exc)
            return False
        if not member and not self._global.take(now, cfg.global_budget, cfg.global_burst):
            # Charged after decoding, so that garbage cannot spend it: only well-formed requests compete for it.
            self.stats.over_global_budget += 1
            if self.stats.over_global_budget % 1000 == 1:
                log.warning("unauthenticated frames over the endpoint's global budget: dropping (%d so far)",
                            self.stats.over_global_budget)
            return True
        if frame.kind is Kind.HELLO:
            peer.hello_at = now  # its record is kept until the SUBSCRIBE comes (see _evict)
        if member:
            branch = getattr(frame.head, "branch", None)
            if isinstance(branch, bytes):
                routes = self._routes.get(branch)
                if routes is not None and rid in routes:
                    routes.move_to_end(rid)
                    self._routes.move_to_end(branch)
                # Routes are learned only from what the core verified (learn_routes): a forged frame never maps,
                # nor evicts, a peer.  A member frame is never dropped here: a member's catch-up after an author
                # restart (a grant sync and a FETCH per branch and chain, none routed yet) is not retried.
        self._inbox.append((data, rid))
        self._inbox_bytes += len(data)
        return True

    def _malformed(self, peer: _Peer, exc: DecodeError) -> None:
        self.stats.malformed += 1
        peer.malformed += 1
        self.stats.per_peer_malformed[peer.rid] = peer.malformed
        if len(self.stats.per_peer_malformed) > self.config.max_peers:
            self.stats.per_peer_malformed.pop(next(iter(self.stats.per_peer_malformed)))
        if peer.malformed == 1 or peer.malformed % 1000 == 0:
            log.warning("dropping malformed frame from peer %s (%d so far): %s", peer.rid.hex(), peer.malformed,
                        exc)

    def _touch(self, rid: bytes, now: int) -> _Peer:
        peer = self._peers.get(rid)
        if peer is None:
            if len(self._peers) >= self.config.max_peers:
                self._evict(now)
            cfg = self.config
            peer = _Peer(rid, now, cfg.inbound_burst, cfg.credit_window_max, cfg.window_bytes)
            self._peers[rid] = peer
            # The first frame of every new record announces its session (SPEC 14.4): ordered pipe, so whatever
            # follows belongs to it, and anything before it (an earlier record's frames) does not.
            self._send_pong(peer, keep=True)
        else:
            self._peers.move_to_end(rid)
        peer.last_seen = now
        return peer

    def _evict(self, now: int) -> None:
        """Forget one record to make room for a new one: the least recently seen that is neither a member's (routed
        to a branch) nor in a handshake (a HELLO within ``handshake_hold_ms``).  A requester's challenge is bound
        to its record's session (SPEC 8.3): evicted between its HELLO and its SUBSCRIBE, it is refused
        BAD_CHALLENGE, and a peer cycling more than ``max_peers`` new connections through every round trip of it
        would keep it out for good.  Those passed over keep their place: the records stay in least-recently-seen
        order, which the liveness sweep relies on (``_maintain`` expires from the front and stops at the first
        fresh one: moved to the back, a silent member's record escaped it for as long as a churn of new connections
        went on).  If the first ``_EVICT_LOOKS`` are all held, the least recently seen of them held only for a
        handshake goes anyway -- a HELLO needs no identity, and a flood of them (2000/s by the global budget, over
        a 10 s hold: twice the default ``max_peers``) can make every record held, so it must never cost a member
        its record while such a one is in sight -- else the least recently seen of them; so a new record costs a
        bounded amount of work."""
        peers = self._peers
        hold = self.config.handshake_hold_ms
        victim: tuple[bytes, _Peer] | None = None
        oldest: tuple[bytes, _Peer] | None = None
        oldest_hello: tuple[bytes, _Peer] | None = None
        for rid, old in itertools.islice(peers.items(), _EVICT_LOOKS):
            if not old.branches and (old.hello_at < 0 or now - old.hello_at >= hold):
                victim = (rid, old)
                break
            oldest = oldest or (rid, old)
            if not old.branches:
                oldest_hello = oldest_hello or (rid, old)
        victim = victim or oldest_hello or oldest  # every one we looked at is held: a handshake's goes first
        if victim is None:
            return
        rid, old = victim
        del peers[rid]
        self._forget(old)
        self.stats.peers_evicted += 1

    def learn_routes(self, hints: list[tuple[bytes, object, bool]]) -> None:
        """Apply the protocol core's routing hints (:meth:`streams.core.AuthorCore.take_routes`; the
        :class:`streams.api.Author` driver calls this): ``(branch, rid, True)`` maps a live peer whose signed
        member frame the core verified to the branch; ``(branch, rid, False)`` forgets that peer for the branch;
        ``(branch, None, False)`` forgets every peer of the branch."""
        for branch, rid, keep in hints:
            if keep:
                if isinstance(rid, bytes) and rid in self._peers:
                    self._learn(branch, rid)
                continue
            routes = self._routes.get(branch)
            if routes is None:
                continue
            if rid is None:
                gone = list(routes)
            else:
                gone = [rid] if isinstance(rid, bytes) and rid in routes else []
            for r in gone:
                del routes[r]
                peer = self._peers.get(r)
                if peer is not None:
                    peer.branches.discard(branch)
            if not routes:
                del self._routes[branch]

    def penalize(self, offenders: list[tuple[object, int]]) -> None:
        """Charge peers for frames that failed the protocol's signature or AEAD checks (the core's
        :meth:`~streams.core.AuthorCore.take_offenders`; the :class:`streams.api.Author` driver calls this after
        each batch).  A peer with ``failures_to_suspend`` of them on its record (its good frames never make up for
        them) is suspended: its frames are dropped unread for ``suspend_ms`` (SPEC 10.3)."""
        cfg = self.config
        now = _now_ms()
        for rid, n in offenders:
            peer = self._peers.get(rid) if isinstance(rid, bytes) else None
            if peer is None:
                continue
            peer.failures += n
            if peer.failures >= cfg.failures_to_suspend:
                failed, peer.failures = peer.failures, 0
                self._suspended[peer.rid] = now + cfg.suspend_ms
                self._suspended.move_to_end(peer.rid)
                while len(self._suspended) > cfg.max_peers:
                    self._suspended.popitem(last=False)
                self.stats.peers_suspended += 1
                log.warning("peer %s sent %d frames that failed their checks: ignoring it for %d ms (%d "
                            "suspensions so far)", peer.rid.hex(), failed, cfg.suspend_ms, self.stats.peers_suspended)

    def _learn(self, branch: bytes, rid: bytes) -> None:
        cfg = self.config
        routes = self._routes.get(branch)
        if routes is None:
            if len(self._routes) >= cfg.max_branches:
                self._routes.popitem(last=False)
            routes = self._routes[branch] = OrderedDict()
        else:
            self._routes.move_to_end(branch)
        routes[rid] = None
        routes.move_to_end(rid)
        while len(routes) > cfg.peers_per_branch:
            routes.popitem(last=False)
        peer = self._peers.get(rid)
        if peer is not None and len(peer.branches) < cfg.max_branches:
            peer.branches.add(branch)

    def _forget(self, peer: _Peer) -> None:
        for b in peer.branches:
            routes = self._routes.get(b)
            if routes is not None:
                routes.pop(peer.rid, None)
                if not routes:
                    del self._routes[b]
        self.stats.send_dropped += len(peer.queue)
        peer.queue.clear()
        peer.queued_bytes = 0
        peer.pong = peer.reply = None
        self._backlog.discard(peer.rid)
        self._wake_drain()

    # -- credit (SPEC 14.4) ---------------------------------------------------------------------------------------

    def _send_pong(self, peer: _Peer, *, keep: bool) -> None:
        """PONG with the peer's session.  Control frames bypass the credit gate and the data queue: a reply
        (``keep`` false) is dropped if the pipe is full (the next PING repairs it); the session announcement of a
        new record is kept and goes first, ahead of any data frame, once the pipe has room."""
        data = self._pong + peer.session + self._pong_limits
        try:
            self._sync.send_multipart([peer.rid, data], zmq.NOBLOCK)
            self.stats.frames_out += 1
        except zmq.Again:
            if keep:
                peer.pong = data
                self._backlog.add(peer.rid)
            else:
                self.stats.send_dropped += 1
        except zmq.ZMQError:
            self.stats.send_dropped += 1  # the peer is gone; its record expires

    def _on_credit(self, peer: _Peer, data: bytes, now: int) -> None:
        cfg = self.config
        if len(data) != _CREDIT_LEN:
            self._malformed(peer, _BAD_CREDIT)
            return
        session, received, consumed, window = _CREDIT_BODY.unpack_from(data, 1)
        # The session is an unguessable per-record token, not a key, but compare it in constant time anyway
        # (THREATS 9 habit): it is all that stands between an off-path forger and this peer's window.
        if not hmac.compare_digest(session, peer.session):
            # Replayed, forged, or sent before the subscriber saw this record's PONG (which may have been lost on
            # a lossy path: answer with one, so the subscriber adopts the session).  Charged against the budget
            # like a PING: it costs us a reply.
            self.stats.credit_stale += 1
            if peer.take(now, cfg.inbound_budget, cfg.inbound_burst):
                self._send_pong(peer, keep=False)
            else:
                self.stats.over_budget += 1
            return
        # A CREDIT of the current session is not charged (THREATS 8): it costs a length check, a 29-byte unpack,
        # an 8-byte compare and a few integer updates -- no crypto, no decoding -- about what a malformed frame
        # costs, and those are not charged either.  Charging it would throttle a well-behaved fast subscriber: it
        # sends one per window/4 frames taken (100/s at 50k msg/s with a window of 2000, twice the default
        # budget) plus one per heartbeat.  Only the peer itself or an on-path relay knows the session, and either
        # can open this peer's window (to ``credit_window_max`` frames) and, claiming frames taken that were not,
        # free ``window_bytes`` again and again: for a peer that lies, what we hand ZeroMQ is bounded by the
        # socket's ``sndhwm`` messages, not by ``window_bytes`` (SPEC 14.4); our queue keeps its bounds.  A CREDIT
        # claiming more taken than we sent frees nothing more: ``consumed`` is capped.
        self.stats.credits += 1
        sent = peer.sent
        # A report older than one we already had (replayed or reordered by a relay) moves nothing, and must not
        # look like an idle subscriber to the loss detection below.
        current = consumed >= peer.consumed
        # Replay and reorder tolerant: consumed only moves forward; never above what we sent (a duplicating relay
        # makes a subscriber count more than we sent).
        if current:
            taken = min(consumed, sent)
            peer.taken(taken - peer.consumed)
            peer.consumed = taken
            peer.window = max(1, min(window, cfg.credit_window_max))
            peer.behind_at = -1
        elif self._behind(peer, now):
            return
        peer.credit = True
        # Loss (a lossy relay dropped data frames: counted in ``sent``, never ``received``; left alone they would
        # shrink the window until the peer stalls).  When the subscriber is idle (it took everything it got) and
        # reports the same ``received`` twice at least a heartbeat apart, the frames we had sent before the first
        # of those reports had time to arrive: those not received are lost, and written off.  Frames sent since
        # may still be in flight and stay counted.  A false positive (a path slower than a heartbeat) over-sends
        # by at most what was in flight, bounded by the window; the receiver's gap fill recovers real losses.
        if current and received == consumed and received < sent:
            if peer.loss_at < 0 or received != peer.loss_received:
                peer.loss_at, peer.loss_received, peer.loss_sent = now, received, sent
            elif now - peer.loss_at >= cfg.heartbeat_ms:
                lost = peer.loss_sent - received
                peer.taken(lost)  # the oldest in flight: ``consumed`` is ``received`` here
                peer.sent = sent - lost
                peer.consumed = min(peer.consumed, peer.sent)
                peer.loss_at = -1
                self.stats.credit_resyncs += 1
                log.info("peer %s: %d frames lost on the way; resynchronising its credit", peer.rid.hex(), lost)
        else:
            peer.loss_at = -1
        self._resume(peer)

    def _resume(self, peer: _Peer) -> None:
        """Send what waits for ``peer`` (its session PONG, our BUNDLE_OK answer, queued frames) as far as its pipe
        and credit allow, keep polling it while frames wait for the pipe, and wake :meth:`drain` callers."""
        if (peer.queue or peer.pong is not None or peer.reply is not None) and self._flush_peer(peer):
            self._backlog.add(peer.rid)
        self._wake_drain()

    def _behind(self, peer: _Peer, now: int) -> bool:
        """A report of the peer's session came behind the one we have.  Once, that is a relay's replay (or
        reorder), and moves nothing.  Reports that stay behind for a heartbeat mean the subscriber counts this
        session from another start than we do -- it adopted it again after a PONG of another session (forged or
        replayed by a relay) and counts from zero, while our record counts every frame since the session began: no
        report of it would ever move the window again, which stays shut for good.  Then start a new session,
        which both sides count from zero (its PONG goes before any further data frame).  True if it did."""
        if peer.behind_at < 0:
            peer.behind_at = now
            return False
        if now - peer.behind_at < self.config.heartbeat_ms:
            return False
        log.info("peer %s: its credit reports stay behind ours (it counts from another start); new session",
                 peer.rid.hex())
        peer.new_session(self.config.credit_window_max)
        self.stats.credit_renewals += 1
        peer.pong = None  # an old session's PONG still waiting for the pipe must not follow the new one
        self._send_pong(peer, keep=True)
        self._resume(peer)
        return True

    def _send_to(self, rid: bytes, data: bytes) -> None:
        peer = self._peers.get(rid)
        pending = self._pending
        if pending is not None and peer is not None:
            got = pending.get(rid)
            if got is None:
                pending[rid] = [data]
            else:
                got.append(data)
            return
        if peer is not None and peer.must_wait():
            self._enqueue(peer, data)
            return
        try:
            self._sync.send_multipart([rid, data], zmq.NOBLOCK)
            self.stats.frames_out += 1
            if peer is not None:
                peer.sent_one(len(data))
        except zmq.Again:
            if peer is None:
                self.stats.send_dropped += 1
            else:
                self._enqueue(peer, data)
        except zmq.ZMQError as exc:
            self.stats.send_dropped += 1
            if exc.errno == errno.EHOSTUNREACH and peer is not None:
                # The peer disconnected: forget it now rather than at its liveness expiry.
                del self._peers[rid]
                self._forget(peer)

    def _send_frames(self, peer: _Peer, frames: list[bytes]) -> None:
        """Send ``frames`` to ``peer`` in order, as many as its credit and pipe allow, in BUNDLEs where it takes
        them; queue the rest (as :meth:`_send_to` does one frame)."""
        sync, rid, stats = self._sync, peer.rid, self.stats
        i, n = 0, len(frames)
        while i < n and not peer.must_wait():
            take = peer.next_message(frames, i)
            try:
                sync.send_multipart([rid, _as_message(take)], zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                stats.send_dropped += n - i
                if exc.errno == errno.EHOSTUNREACH and self._peers.get(rid) is peer:
                    del self._peers[rid]  # the peer disconnected: forget it now rather than at its liveness expiry
                    self._forget(peer)
                return
            i += len(take)
            self._count_sent(peer, take)
        for f in frames[i:]:
            self._enqueue(peer, f)

    def _enqueue(self, peer: _Peer, data: bytes) -> None:
        if peer.gated():
            self.stats.credit_blocked += 1
        if not _queue_has_room(self.config, len(peer.queue), peer.queued_bytes, len(data)):
            self.stats.send_dropped += 1  # recovered by the receiver's gap fill (core: GapDetected + FETCH)
            return
        peer.queue.append(data)
        peer.queued_bytes += len(data)
        self._backlog.add(peer.rid)
        if len(peer.queue) > self.stats.max_queue_seen:
            self.stats.max_queue_seen = len(peer.queue)

    def _flush_peer(self, peer: _Peer) -> bool:
        """Send what the peer's pipe and credit allow, in order.  True while frames wait for room in the pipe
        (keep polling); false when the queue is empty or waits for credit (the next CREDIT flushes it)."""
        sync, rid = self._sync, peer.rid
        if peer.pong is not None:
            try:
                sync.send_multipart([rid, peer.pong], zmq.NOBLOCK)
            except zmq.Again:
                return True
            except zmq.ZMQError:
                self.stats.send_dropped += len(peer.queue) + 1
                peer.queue.clear()
                peer.queued_bytes = 0
                peer.pong = peer.reply = None
                return False
            peer.pong = None
            self.stats.frames_out += 1
        if peer.reply is not None:  # our BUNDLE_OK, after the PONG that announced the record it speaks for
            try:
                sync.send_multipart([rid, peer.reply], zmq.NOBLOCK)
                self.stats.frames_out += 1
            except zmq.Again:
                return True
            except zmq.ZMQError:
                self.stats.send_dropped += 1
            peer.reply = None
        queue = peer.queue
        while queue:
            if peer.gated():
                return False
            take = peer.next_message(queue)
            try:
                sync.send_multipart([rid, _as_message(take)], zmq.NOBLOCK)
            except zmq.Again:
                return True
            except zmq.ZMQError:
                self.stats.send_dropped += len(queue)
                queue.clear()
                peer.queued_bytes = 0
                return False
            for _ in take:
                peer.queued_bytes -= len(queue.popleft())
            self._count_sent(peer, take)
        return False

    def _count_sent(self, peer: _Peer, take: list[bytes]) -> None:
        """``take`` went to ``peer`` in one message: each frame counts, in the stats and in its credit."""
        self.stats.frames_out += len(take)
        if len(take) > 1:
            self.stats.bundles += 1
        for f in take:
            peer.sent_one(len(f))

    def _flush_backlog(self) -> None:
        for rid in list(self._backlog):
            peer = self._peers.get(rid)
            if peer is None or not self._flush_peer(peer):
                self._backlog.discard(rid)
        self._wake_drain()

    async def _maintain(self) -> None:
        cfg = self.config
        dead_after = cfg.heartbeat_ms * cfg.liveness
        last_sweep = _now_ms()
        while not self._closed:
            await asyncio.sleep(0.01 if self._backlog else min(cfg.heartbeat_ms, 200) / 1000)
            self._flush_backlog()
            self._check_readable()
            now = _now_ms()
            if now - last_sweep >= cfg.heartbeat_ms:
                last_sweep = now
                # Peers are in least-recently-seen order: expire from the front (frees their queues and routes).
                while self._peers:
                    rid, peer = next(iter(self._peers.items()))
                    if now - peer.last_seen <= dead_after:
                        break
                    del self._peers[rid]
                    self._forget(peer)
                    self.stats.peers_expired += 1


class SubscriberEndpoint(_Base):
    """A subscriber's side: one DEALER socket connected to ``connect`` (``tcp://host:port`` or ``ipc://path``).

    ``on_reconnect``: an optional coroutine function called whenever the author endpoint announces a new session
    for this connection: first contact, after every reconnect, when the author restarted or forgot us
    (:class:`streams.api.Subscriber` sets it to its catch-up, whose FETCHes carry the session: SPEC 8.9).

    Raises :class:`LocalProtocolError` if the address is invalid."""

    def __init__(self, connect: str, config: EndpointConfig | None = None, *,
                 context: zmq.asyncio.Context | None = None) -> None:
        super().__init__(config, context)
        self.address = connect
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.author_instance: bytes | None = None
        self._queue: deque[bytes] = deque()
        self._queue_bytes = 0  #: bytes of the frames in ``_queue``
        # Credit (SPEC 14.4): the session of the author's record of this connection, and our counts in it.
        self._session: bytes | None = None
        self._received = 0  #: data frames that arrived in this session
        self._window = min(self.config.credit_window, self.config.inbox)
        #: The largest BUNDLE we take, and say so in BUNDLE_OK (SPEC 14.1); 0: none.  BUNDLE_OK goes with the
        #: session's first CREDIT: an endpoint that sends none (``credit_window`` 0) takes none.
        self._takes = _our_takes(self.config, 0xFFFF_FFFF) if self._window else 0
        #: The largest BUNDLE the author's current record of us takes (its BUNDLE_OK, within ours); 0: none.
        self._author_takes = 0
        self._author_answered = False  #: a BUNDLE_OK came in this session (``_author_takes`` is the smallest)
        self._retold_at = -1  #: when we last said our BUNDLE_OK again, a BUNDLE larger than we take in (ms), or -1
        self._frame_avg = 0.0  #: moving average of data frame sizes, bytes (fits the window to the byte bounds)
        #: The author's (credit_window_max, window_bytes), from its latest PONG; None until a PONG told them.
        self.author_limits: tuple[int, int] | None = None
        self._reported: tuple[int, int] | None = None  #: (received, consumed) of the last CREDIT sent
        self._session_asked = -(1 << 62)  #: when we last PINGed because data came before any session (ms)
        self._reported_at = 0
        self._space = asyncio.Event()
        now = _now_ms()
        self._last_heard = now
        self._last_sent = now
        self._last_tick = now  #: when the heartbeat last ran (its lateness measures stalls of our own loop)
        self._last_ping = now  #: when the heartbeat last sent a PING
        self._backoff = self.config.reconnect_min_ms
        self._reader_task: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._resync_again = False
        try:
            self._sock, self._sync = self._connect()
        except LocalProtocolError:
            self._term()
            raise

    def __repr__(self) -> str:
        return f"SubscriberEndpoint({self.address!r})"

    def _connect(self) -> tuple[zmq.asyncio.Socket, zmq.Socket[bytes]]:
        sock: zmq.asyncio.Socket = self._ctx.socket(zmq.DEALER)
        try:
            _socket_options(sock, self.config)
            sock.setsockopt(zmq.RCVHWM, _subscriber_rcvhwm(self.config))
            sock.setsockopt(zmq.RECONNECT_IVL, self.config.reconnect_min_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.config.reconnect_max_ms)
            if self.config.curve is not None:
                setup_client(sock, self.config.curve)
            _check_port("connect to", self.address)
            sock.connect(self.address)
        except (zmq.ZMQError, LocalProtocolError) as exc:
            sock.close(linger=0)
            if isinstance(exc, LocalProtocolError):
                raise
            raise _address_error("connect to", self.address, exc) from exc
        return sock, zmq.Socket.shadow(sock.underlying)

    # -- Transport -----------------------------------------------------------------------------------------------

    async def send(self, out: Outgoing) -> None:
        """Send one frame to the author (routing hints do not apply on this side).  Never blocks: beyond the
        ZeroMQ pipe and ``send_queue`` frames are dropped and counted (the author's gap fill recovers them).

        Raises :class:`ClosedResourceError` once closed."""
        self._check_open()
        if type(out.data) is not bytes:
            raise LocalProtocolError("frame data must be bytes")
        self._start()
        self._send(out.data)
        self._check_readable()

    def send_many(self, outs: Sequence[Outgoing]) -> None:
        """Send every frame of ``outs`` to the author, in order, without an ``await`` per frame.  Never blocks.
        Raises :class:`ClosedResourceError` once closed."""
        self._check_open()
        self._start()
        if any(type(out.data) is not bytes for out in outs):
            raise LocalProtocolError("frame data must be bytes")  # before any is sent, bundled or not
        takes = self._author_takes
        if not takes or len(outs) < 2:
            for out in outs:
                self._send(out.data)
        else:  # as BUNDLEs of frames that fit together (SPEC 14.1); a frame that fits with none goes alone
            group: list[bytes] = []
            size = 1
            for out in outs:
                data = out.data
                if group and size + 4 + len(data) > takes:
                    self._send_group(group)
                    group, size = [], 1
                group.append(data)
                size += 4 + len(data)
            self._send_group(group)
        self._check_readable()

    def _send_group(self, frames: list[bytes]) -> None:
        self._send(_as_message(frames))
        if len(frames) > 1:
            self.stats.bundles += 1
            self.stats.frames_out += len(frames) - 1  # (send_dropped, if it is, counts one for the BUNDLE)

    async def _close(self) -> None:
        await self._stop_tasks()
        self._retire_socket()
        self._term()

    def queue_size(self) -> int:
        """Frames waiting in the send queue."""
        return len(self._queue)

    def inbox_size(self) -> int:
        """Frames received and not yet taken by :meth:`recv` (with credit, at most about the window)."""
        return len(self._inbox)

    def inbox_size_bytes(self) -> int:
        """Bytes of the frames received and not yet taken (bounded by ``config.inbox_bytes``)."""
        return self._inbox_bytes

    @property
    def session(self) -> bytes | None:
        """The session of the author endpoint's record of this connection (from its PONG), or None before one."""
        return self._session

    @property
    def received(self) -> int:
        """Data frames (not PING/PONG) that arrived in the current session."""
        return self._received

    @property
    def consumed(self) -> int:
        """Data frames of the current session taken by :meth:`recv`.  Frames still in the inbox when the session
        changed belong to the old one: the inbox is first in, first out, so they are the first taken."""
        return max(0, self._received - len(self._inbox))

    # -- internals ------------------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._queue:
            self._enqueue(data)
            return
        try:
            self._sync.send(data, zmq.NOBLOCK)
            self.stats.frames_out += 1
            self._last_sent = _now_ms()
        except zmq.Again:
            self._enqueue(data)
        except zmq.ZMQError:
            self.stats.send_dropped += 1

    def _enqueue(self, data: bytes) -> None:
        if not _queue_has_room(self.config, len(self._queue), self._queue_bytes, len(data)):
            self.stats.send_dropped += 1
            return
        self._queue.append(data)
        self._queue_bytes += len(data)
        self.stats.max_queue_seen = max(self.stats.max_queue_seen, len(self._queue))

    def _flush_queue(self) -> None:
        while self._queue:
            try:
                self._sync.send(self._queue[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                self.stats.send_dropped += len(self._queue)
                self._queue.clear()
                self._queue_bytes = 0
                return
            self._queue_bytes -= len(self._queue.popleft())
            self.stats.frames_out += 1
            self._last_sent = _now_ms()

    def _on_taken(self) -> None:
        self._space.set()
        reported = self._reported
        if reported is not None and self.consumed - reported[1] >= self._window // _REPORT_FRACTION:
            self._send_credit(_now_ms())
            # The send may have consumed the descriptor's notification of a frame that waits unread: re-check,
            # as after every send (else the reader sleeps until a heartbeat tick or an ACK -- p99 spikes).
            self._check_readable()

    def _send_credit(self, now: int) -> None:
        """Report (received, consumed, window) of the current session.  Bypasses the send queue (order does not
        matter for it); if the pipe is full it is skipped and the next heartbeat tick sends it."""
        session = self._session
        if session is None or not self._window:
            return
        self._window = self._fit_window()
        received, consumed = self._received, self.consumed
        data = CREDIT + _CREDIT_BODY.pack(session, received, consumed, self._window)
        try:
            if self._reported is None:
                # The session's first CREDIT: the new record knows nothing of us, so first say whether and how
                # large BUNDLEs we take -- 0 for none, said too: the smallest BUNDLE_OK of a session stands at the
                # author, so ours pins a relay's forged one to what we take (an author endpoint from before BUNDLEs
                # counts it as one malformed frame and sends single frames).  Until a CREDIT of the session went
                # out, each attempt says it again.
                self._sync.send(BUNDLE_OK + _U32.pack(self._takes), zmq.NOBLOCK)
                self.stats.frames_out += 1
            self._sync.send(data, zmq.NOBLOCK)
        except zmq.ZMQError:  # EAGAIN (pipe full) or a socket being replaced: the heartbeat retries
            return
        self.stats.frames_out += 1
        self.stats.credits += 1
        self._last_sent = self._reported_at = now
        self._reported = (received, consumed)

    def _start(self) -> None:
        if not self._tasks and not self._closed:
            self._reader_task = self._task(self._reader(), "brokerless-sub-reader")
            self._tasks.append(self._reader_task)
            self._tasks.append(self._task(self._heartbeat(), "brokerless-sub-heartbeat"))
            if self._session is None:
                self._send(PING)  # first contact: the PONG announces our session (SPEC 14.4), which FETCHes carry

    async def _reader(self) -> None:
        fd = self._watch()
        try:
            await self._read_loop()
        finally:
            self._unwatch(fd)

    async def _read_loop(self) -> None:
        cfg = self.config
        while not self._closed:
            if self._inbox_full():
                # The driver is behind: stop reading so ZeroMQ's high-water marks push back to the author,
                # whose bounded queues then drop for us alone (THREATS 8: a slow subscriber stalls no one).
                self._space.clear()
                await self._space.wait()
                continue
            got = self._drain()
            if got > 0:
                await asyncio.sleep(0)
            elif got < 0:
                await asyncio.sleep(0.01)  # the socket is being replaced by a reconnect; the heartbeat restarts us
            else:
                await self._wait_readable(min(cfg.heartbeat_ms, 200))

    def _drain(self) -> int:
        """Read what the socket holds, up to a batch (of messages, and of data frames: a BUNDLE holds many) and the
        inbox's room, and wake the driver.  Returns the messages read, or -1 if the socket failed (being replaced by
        a reconnect)."""
        cfg, sync, inbox = self.config, self._sync, self._inbox
        got, most, most_bytes = 0, cfg.inbox, cfg.inbox_bytes
        batch, first = cfg.batch, len(inbox)
        while got < batch and len(inbox) - first < batch and len(inbox) < most and self._inbox_bytes < most_bytes:
            try:
                data = sync.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                got = got or -1
                break
            got += 1
            self._on_frame(data)
        if got > 0:
            self._ready.set()
            if self._reported is not None and 0 < self._fit_window() <= self._window // 2:
                self._send_credit(_now_ms())  # frames grew large: tell the author the smaller window now
        return got

    def _fit_window(self) -> int:
        """The credit window to report: ``credit_window`` frames (at most ``inbox`` and the author's
        ``credit_window_max``), fewer when data frames are so large that it would exceed ``inbox_bytes``,
        ``window_bytes`` or the author's ``window_bytes`` -- the window counts frames, and frames of up to 1 MiB
        made a full window gigabytes at the author, in ZeroMQ's pipes and here.  (Fitted to the author's limits,
        which its PONG tells, our reports at every quarter window come before it blocks on them.)"""
        cfg = self.config
        w = min(cfg.credit_window, cfg.inbox)
        if not w:
            return 0
        byte_bound = min(cfg.inbox_bytes, cfg.window_bytes)
        limits = self.author_limits
        if limits is not None:
            w = max(1, min(w, limits[0]))
            byte_bound = min(byte_bound, limits[1])
        if self._frame_avg >= 1.0:
            w = max(1, min(w, int(byte_bound // self._frame_avg)))
        return w

    def _check_readable(self) -> None:
        # Latency: when the driver is parked in recv(), read right here, in the descriptor's callback, rather
        # than waking the reader task to do it -- one event-loop turn less between the wire and the driver
        # (measured: about 30 us of the p50).  Busy periods keep the reader task's batching.
        if self._driver_waits and not self._inbox:
            self._drain()
        super()._check_readable()

    def _on_frame(self, data: bytes) -> None:
        self.stats.frames_in += 1
        self._last_heard = _now_ms()
        self._backoff = self.config.reconnect_min_ms
        if data == PING:
            self._send(PONG)
            return
        if data[:1] == PONG:
            self._on_pong(data)
            return
        if data[:1] == BUNDLE_OK:
            # The author's answer to ours: whether it takes BUNDLEs too, and how large (0: none; an older author
            # never sends one).  One while we take none changes nothing: we bundle nothing then.
            if len(data) == _BUNDLE_OK_LEN and not self._takes:
                return
            if len(data) == _BUNDLE_OK_LEN:
                (most,) = _U32.unpack_from(data, 1)
                agreed = _agreed(most, self._takes)
                # The author answers once per session; any other is a relay's (forged, replayed).  The smallest of
                # the session's answers stands: a forged one can make our BUNDLEs smaller (or single frames), which
                # the author always takes, never larger than what the author said -- it drops those whole.
                answered, self._author_answered = self._author_answered, True
                self._author_takes = min(self._author_takes, agreed) if answered else agreed
            else:
                self.stats.malformed += 1
            return
        if data[:1] == BUNDLE:
            frames = _unbundle(data) if len(data) <= self._takes else None
            if frames is None:
                # Only the author or an on-path relay sends us anything; a relay that alters a BUNDLE has dropped
                # its frames, which the author's loss detection writes off and our gap fill recovers.  One larger
                # than we said we take (any, if we said none) is refused too: with frames of at least _MIN_FRAME
                # bytes, a BUNDLE puts at most about takes / 44 frames in the inbox beyond its bound.
                self.stats.malformed += 1
                log.warning("dropping a malformed BUNDLE of %d bytes", len(data))
                if len(data) > self._takes:
                    self._retell_bundles()
                return
            self.stats.bundles_in += 1
            self.stats.frames_in += len(frames) - 1  # counted in frames, as the author counts them out
            for f in frames:
                self._on_data(f)
            return
        self._on_data(data)

    def _retell_bundles(self) -> None:
        """The author sent a BUNDLE larger than we take: its record holds a larger BUNDLE_OK than ours -- ours was
        lost and a relay forged one (SPEC 14.1).  Say ours again (at most once per heartbeat; bypassing the send
        queue, as CREDIT does): the author keeps the smallest, so its BUNDLEs come back within what we take."""
        now = _now_ms()
        if self._retold_at >= 0 and now - self._retold_at < self.config.heartbeat_ms:
            return
        self._retold_at = now
        try:
            self._sync.send(BUNDLE_OK + _U32.pack(self._takes), zmq.NOBLOCK)
        except zmq.ZMQError:  # EAGAIN (pipe full) or a socket being replaced: the next such BUNDLE says it
            return
        self.stats.frames_out += 1

    def _on_data(self, data: bytes) -> None:
        """A data frame (alone, or one of a BUNDLE's)."""
        self._received += 1
        if self._session is None and self._last_heard - self._session_asked >= self.config.heartbeat_ms:
            # Data before any session: the PONG announcing it was lost on the way (a lossy relay).  Ask for it
            # now -- the author answers a PING with one -- not at the next idle heartbeat: until we report credit
            # the author sends no more than its initial window (SPEC 14.4).
            self._session_asked = self._last_heard
            self._send(PING)
        # Quick to rise (a window of large frames is what must not overrun the bytes), slow to fall.
        delta = len(data) - self._frame_avg
        self._frame_avg += delta * (_AVG_RISE if delta > 0 else _AVG_FALL)
        if len(data) > self.config.max_frame:  # pragma: no cover - MAXMSGSIZE refuses these first
            self.stats.malformed += 1
            return
        self._inbox.append((data, None))
        self._inbox_bytes += len(data)

    def _on_pong(self, data: bytes) -> None:
        if len(data) not in (_PONG_LEN, _PONG_LEN_NO_LIMITS):
            self.stats.malformed += 1
            return
        inst, session = data[1:1 + _INSTANCE_LEN], data[1 + _INSTANCE_LEN:_PONG_LEN_NO_LIMITS]
        if len(data) == _PONG_LEN:
            # Reports fitted to the author's limits come before it blocks on them (SPEC 14.4).  Only the author
            # or an on-path relay can send us a PONG; forged limits can at most shrink our window (to 1 frame:
            # a CREDIT per frame), never open the author's.
            limits = _PONG_LIMITS.unpack_from(data, _PONG_LEN_NO_LIMITS)
            if limits != self.author_limits:
                self.author_limits = limits
                if self._reported is not None and session == self._session and self._fit_window() < self._window:
                    self._send_credit(_now_ms())
        if self.author_instance is not None and inst != self.author_instance:
            # The author restarted behind a transparent ZeroMQ reconnect: its routing state is empty
            # and we may have missed messages.  Re-register and catch up.
            log.info("author endpoint restarted; catching up")
            self._fire_reconnect()
        elif self._session is not None and session != self._session:
            # Same author, new record: it forgot us (our liveness expired there -- a stalled host, a paused
            # process) and with the record its routes for our branches, so nothing published since reaches us
            # until we name our branches again.  The catch-up does both: its FETCHes re-teach the routes and
            # fill the hole (THREATS 4, 8: nothing lost, nobody starved).
            log.info("author endpoint forgot this connection; catching up")
            self._fire_reconnect()
        elif self._session is None:
            # The first session of this socket (a start, a reconnect): the catch-up's FETCHes must carry it
            # (SPEC 8.9), so the catch-up waits for it.
            self._fire_reconnect()
        self.author_instance = inst
        if session != self._session:
            # A new record at the author (first contact, its restart, or our record expired there): every data
            # frame after this PONG belongs to the new session.  Start counting afresh -- what is still in the
            # inbox belongs to the old one (see ``consumed``) -- and opt in at once.  The first PONG on this
            # socket is the exception: the record's first frame, so whatever came before it on this socket (it
            # was lost on the way) belongs to this session too, and ``_received`` counts from the socket's start.
            if self._session is not None:
                self._received = 0
            self._session = session
            self._reported = None
            self._author_takes = 0  # a new record: it answers our next BUNDLE_OK
            self._author_answered = False
            self._send_credit(_now_ms())

    def _fire_reconnect(self) -> None:
        """Run ``on_reconnect``; while one runs, further triggers coalesce into one more run after it (a relay
        replaying old PONGs can cause catch-ups, never a pile of concurrent ones)."""
        cb = self.on_reconnect
        if cb is None:
            return
        if self._resync is not None and not self._resync.done():
            self._resync_again = True
            return
        self._resync = asyncio.create_task(self._run_callback(cb), name="brokerless-resync")
        self._tasks.append(self._resync)

    async def _run_callback(self, cb: Callable[[], Awaitable[None]]) -> None:
        while True:
            self._resync_again = False
            try:
                await cb()
            except Exception:  # the driver's own errors are its to report; never kill the heartbeat
                log.exception("on_reconnect callback failed")
            if not self._resync_again or self._closed:
                return

    async def _heartbeat(self) -> None:
        cfg = self.config
        tick_ms = min(cfg.heartbeat_ms, 100)
        tick = tick_ms / 1000
        while not self._closed:
            await asyncio.sleep(tick)
            self._tasks = [t for t in self._tasks if not t.done() or t is self._reader_task]
            self._flush_queue()
            now = _now_ms()
            # Liveness counts only the time this loop was awake to listen (THREATS 8).  A tick that comes late
            # means our own event loop was stalled -- a host running more subscribers than its CPU serves, a
            # long GC, a blocking call: meanwhile we neither sent PINGs nor read the socket, so that time is not
            # the author's silence.  Counting it made every subscriber of a host whose loop lagged more than the
            # liveness window "reconnect" about once per loop turn, discarding the answers waiting in its socket
            # (a handshake then never saw its CHALLENGE or GRANT: chaos/flood.py --pin, tests/test_zmq_stall.py).
            stalled = now - self._last_tick - 2 * tick_ms
            if stalled > 0:
                self._last_heard = min(now, self._last_heard + stalled)
            self._last_tick = now
            if self._inbox_full():
                self._last_heard = now  # we are the slow side, not the author
            idle = now - self._last_sent >= cfg.heartbeat_ms or now - self._last_heard >= cfg.heartbeat_ms
            # Busy or not, a PING every few heartbeats: its PONG brings the author's limits again.  Limits a relay
            # forged into one PONG shrink our window (to 1 frame: a CREDIT per frame); with PINGs only when idle they
            # lasted as long as the stream never went quiet for a heartbeat (an injected frame, 11x slower here).
            if (idle or now - self._last_ping >= _BUSY_PING_HEARTBEATS * cfg.heartbeat_ms) and not self._queue:
                self._send(PING)
                self._last_sent = self._last_ping = now
            # CREDIT: at least every heartbeat (repairs a lost one; it also serves as our keepalive), and at once
            # when our consumption moved while the author may be near the end of the window we last gave it.
            # Not on every tick that something moved: with many subscribers at a few messages a second each, that
            # was about one CREDIT per message delivered, all to the author's one socket.
            reported = self._reported
            if self._session is not None and (
                    now - self._reported_at >= cfg.heartbeat_ms
                    or (reported is not None and self.consumed != reported[1]
                        and self._received - reported[1] >= self._window - self._window // _REPORT_FRACTION)):
                self._send_credit(now)
            self._check_readable()
            if now - self._last_heard > cfg.heartbeat_ms * cfg.liveness:
                if self._frames_waiting():
                    # The author is not silent: its frames wait in our own socket, not yet read because our
                    # reader has not run since.  Reconnecting would discard them (a CHALLENGE, a GRANT).
                    self._last_heard = now
                else:
                    await self._reconnect()

    async def _reconnect(self) -> None:
        """Paranoid Pirate: drop the socket, wait (exponential backoff), connect a fresh one, catch up."""
        self.stats.reconnects += 1
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.config.reconnect_max_ms)
        log.info("author silent for %d heartbeats: reconnecting in %d ms", self.config.liveness, delay)
        reader = self._reader_task
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._tasks.remove(reader)
            if self._closed:
                # close() cancelled us while we waited for the reader, and the CancelledError was swallowed with
                # the reader's: do not sleep out the reconnect delay (up to reconnect_max_ms) before it can finish.
                return
        self._retire_socket()  # (until the new socket: the driver's sends and credit reports are dropped)
        self._queue.clear()  # queued frames were for the dead connection; the core re-sends what matters
        self._queue_bytes = 0
        self._session = None  # the new connection gets a new record at the author, and a new session
        self._author_takes = 0
        self._author_answered = False
        self._received = 0  # counted from here: the new socket's frames all belong to that session
        self._reported = None
        await asyncio.sleep(delay / 1000)
        if self._closed:
            return
        self._sock, self._sync = self._connect()
        self._last_heard = _now_ms()
        self._reader_task = self._task(self._reader(), "brokerless-sub-reader")
        self._tasks.append(self._reader_task)
        self._send(PING)  # its PONG announces the new connection's session, and that catches up (_on_pong)
