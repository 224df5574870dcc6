"""The demo's attacker on the wire: a transparent ZeroMQ relay that records, withholds and re-sends frames.

``python -m brokerless._demo_relay --connect AUTHOR_ADDR`` binds a ROUTER on ``tcp://127.0.0.1:<random>``
and prints ``{"event": "ready", "address": ...}``.  Each subscriber connecting to it gets its own DEALER to
the author, so the author sees one peer per subscriber and nothing on the wire changes -- except that the
relay keeps a copy of every frame in both directions.  This is the untrusted network of THREATS ("Network and
relays are untrusted"): the demo uses it to show that what it records is useless to an attacker.

Commands are JSON lines on stdin, each answered by one JSON line on stdout (frames in base64):

* ``{"cmd": "frames", "dir": "up"|"down", "branch": hex, "kinds": ["PACKET", ...]}`` -- recorded frames of
  that branch and kinds (``up``: subscriber to author).
* ``{"cmd": "inject", "to_branch": hex, "frames": [...]}`` -- send frames *down* to every subscriber
  connection seen sending on ``to_branch``, as if the author had sent them (relay into another branch).  Paced
  by the receiver: none is dropped at a full queue (see :meth:`Relay.inject`); ``sent`` counts those handed to
  a connection, ``unsent`` those that could not be.
* ``{"cmd": "send_direct", "frames": [...]}`` -- send frames to the author from the relay's own DEALER socket
  (a replay from a connection that never subscribed).
* ``{"cmd": "hold", "dir": ..., "branch": hex, "count": n, "kinds": ["PACKET", ...]}`` -- withhold the next
  ``n`` frames of those kinds (default PACKET) of that branch and direction (recorded, not forwarded);
  ``{"cmd": "held"}`` returns them.  The demo uses it to obtain a valid frame the receiver never saw, to forge
  copies of it (checks a and e); its tests, to show that the replay check can fail.

The relay exits at stdin EOF, so it never outlives the demo that started it.  Internal to the demo.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from collections import deque
from typing import Any

import zmq

from streams.errors import DecodeError
from streams.wire import Kind, decode_frame

from .endpoints import BUNDLE, _as_message, _unbundle

#: Frames kept per direction (the latest); the demo needs a few hundred.  Bounded so a long run cannot exhaust
#: memory.
MAX_RECORDED = 20_000
#: How long an injection waits for room on a subscriber connection that takes nothing (seconds).
INJECT_PATIENCE = 10.0


def _branch_of(data: bytes) -> tuple[Kind, bytes] | None:
    """(kind, branch) of a protocol frame naming a branch; None for heartbeats and other kinds."""
    try:
        frame = decode_frame(data)
    except DecodeError:
        return None  # PING/PONG and anything else that is not a frame
    branch = getattr(frame.head, "branch", None)
    return (frame.kind, branch) if isinstance(branch, bytes) else None


class Relay:
    """The relay's state and loop.  Single-threaded: one ``zmq.Poller`` over every socket and stdin."""

    def __init__(self, author_addr: str) -> None:
        self.author_addr = author_addr
        self.ctx = zmq.Context()
        self.front = self._socket(zmq.ROUTER)
        # A full queue to a connection (SNDHWM) is an EAGAIN, not a silent drop: an injection waits for room
        # rather than losing frames (forwarding drops, as a lossy network would: see down()).
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.front.bind("tcp://127.0.0.1:0")
        last = self.front.getsockopt(zmq.LAST_ENDPOINT)
        self.address = last.decode() if isinstance(last, bytes) else str(last)
        self.backs: dict[bytes, zmq.Socket[bytes]] = {}
        self.rid_of: dict[zmq.Socket[bytes], bytes] = {}
        self.branches_of: dict[bytes, set[bytes]] = {}
        self.recorded: dict[str, deque[bytes]] = {"up": deque(maxlen=MAX_RECORDED),
                                                   "down": deque(maxlen=MAX_RECORDED)}
        self.holds: dict[tuple[str, bytes], tuple[int, set[Kind]]] = {}
        self.held: list[bytes] = []
        self.direct: zmq.Socket[bytes] | None = None
        self.poller = zmq.Poller()  # the sockets and stdin
        self.net = zmq.Poller()  # the sockets only: what is forwarded while an injection waits
        self._watch(self.front)

    def _watch(self, sock: zmq.Socket[bytes]) -> None:
        self.poller.register(sock, zmq.POLLIN)
        self.net.register(sock, zmq.POLLIN)

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, 2 << 20)
        return s

    def close(self) -> None:
        for s in [self.front, *self.backs.values(), *([self.direct] if self.direct is not None else [])]:
            s.close(linger=0)
        self.ctx.term()

    # -- forwarding ------------------------------------------------------------------------------------------

    def _withhold(self, direction: str, data: bytes) -> bool:
        kb = _branch_of(data)
        if kb is None:
            return False
        key = (direction, kb[1])
        count, kinds = self.holds.get(key, (0, set()))
        if count > 0 and kb[0] in kinds:
            self.holds[key] = (count - 1, kinds)
            self.held.append(data)
            return True
        return False

    def up(self) -> None:
        rid, data = self.front.recv_multipart()
        back = self.backs.get(rid)
        if back is None:
            back = self._socket(zmq.DEALER)
            back.connect(self.author_addr)
            self.backs[rid] = back
            self.rid_of[back] = rid
            self._watch(back)
        kept = self._pass("up", data, rid)
        if kept is not None:
            # The author's queue full: lost, as down() loses it (a DEALER's blocking send froze the relay).
            with contextlib.suppress(zmq.Again):
                back.send(kept, zmq.NOBLOCK)

    def down(self, back: zmq.Socket[bytes]) -> None:
        kept = self._pass("down", back.recv())
        if kept is not None:
            try:
                self.front.send_multipart([self.rid_of[back], kept], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # A connection whose queue is full, or that is gone, loses the message, as it did without
                # ROUTER_MANDATORY: the protocol's gap fill is there for that.
                if exc.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                    raise

    def _pass(self, direction: str, data: bytes, rid: bytes | None = None) -> bytes | None:
        """Record one ZeroMQ message going ``direction`` and return what goes on (None: all of it withheld).

        A BUNDLE (SPEC 14.1: the author's frames to a subscriber, a provider's ``publish_many`` to the author) is
        opened: each of its frames is recorded, noted as ``rid``'s branch and may be withheld, as a frame sent
        alone is; the rest goes on, bundled again."""
        frames = _unbundle(data) if data[:1] == BUNDLE else None
        kept = []
        for f in [data] if frames is None else frames:
            self.recorded[direction].append(f)
            if rid is not None:
                kb = _branch_of(f)
                if kb is not None:
                    self.branches_of.setdefault(rid, set()).add(kb[1])
            if not self._withhold(direction, f):
                kept.append(f)
        return _as_message(kept) if kept else None

    def forward(self, timeout_ms: int) -> None:
        """Forward what the sockets hold, waiting up to ``timeout_ms`` for some (stdin is left for later)."""
        for sock, _ in self.net.poll(timeout_ms):
            self._on(sock)

    def _on(self, sock: Any) -> None:
        if sock is self.front:
            self.up()
        elif self.direct is not None and sock is self.direct:
            self.direct.recv()  # the author's answers to the attacker's own socket: ignored
        else:
            self.down(sock)

    def inject(self, rid: bytes, frames: list[bytes]) -> int:
        """Send ``frames`` down to connection ``rid``, one message each; return how many were handed to it.

        A burst larger than the connection's queue (SNDHWM, 1000 messages, plus the receiver's RCVHWM) used to lose
        the excess silently.  Each frame waits for room now: the relay forwards the other traffic meanwhile, and
        gives up on the connection only when it takes nothing for :data:`INJECT_PATIENCE` seconds, or is gone."""
        for n, data in enumerate(frames):
            deadline = time.monotonic() + INJECT_PATIENCE
            while True:
                try:
                    self.front.send_multipart([rid, data], zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if time.monotonic() > deadline:
                        return n
                    self.forward(2)  # (the receiver reads meanwhile)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EHOSTUNREACH:  # the connection is gone
                        return n
                    raise
        return len(frames)

    # -- commands --------------------------------------------------------------------------------------------

    def command(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "frames":
            branch = bytes.fromhex(req["branch"])
            kinds = {Kind[k] for k in req.get("kinds", ["PACKET"])}
            frames = []
            for data in self.recorded[req["dir"]]:
                kb = _branch_of(data)
                if kb is not None and kb[1] == branch and kb[0] in kinds:
                    frames.append(base64.b64encode(data).decode())
            return {"reply": cmd, "frames": frames}
        if cmd == "inject":
            target = bytes.fromhex(req["to_branch"])
            rids = [rid for rid, bs in self.branches_of.items() if target in bs]
            raw = [base64.b64decode(f) for f in req["frames"]]
            sent = sum(self.inject(rid, raw) for rid in rids)
            return {"reply": cmd, "sent": sent, "unsent": len(raw) * len(rids) - sent, "clients": len(rids)}
        if cmd == "send_direct":
            if self.direct is None:
                self.direct = self._socket(zmq.DEALER)
                self.direct.connect(self.author_addr)
                self._watch(self.direct)
            raw = [base64.b64decode(f) for f in req["frames"]]
            for data in raw:
                self.direct.send(data)
            return {"reply": cmd, "sent": len(raw)}
        if cmd == "hold":
            self.holds[(req["dir"], bytes.fromhex(req["branch"]))] = (
                int(req.get("count", 1)), {Kind[k] for k in req.get("kinds", ["PACKET"])})
            return {"reply": cmd}
        if cmd == "held":
            held, self.held = self.held, []
            return {"reply": cmd, "frames": [base64.b64encode(f).decode() for f in held]}
        return {"reply": "error", "error": f"unknown command {cmd!r}"}

    def run(self) -> None:
        self.poller.register(0, zmq.POLLIN)
        _emit({"event": "ready", "address": self.address})
        part: list[bytes] = []  #: the chunks of a command line not ended yet (each read once: a long line of
        # frames to inject is joined when its newline comes, not copied and searched again at every chunk)
        while True:
            for sock, _ in self.poller.poll(1000):
                if sock == 0:
                    chunk = os.read(0, 1 << 20)
                    if not chunk:
                        return  # the demo went away: so do we
                    if b"\n" not in chunk:
                        part.append(chunk)
                        continue
                    *lines, rest = b"".join([*part, chunk]).split(b"\n")
                    part = [rest] if rest else []
                    for line in lines:
                        try:
                            reply = self.command(json.loads(line))
                        except (ValueError, KeyError, TypeError) as exc:
                            reply = {"reply": "error", "error": str(exc)}
                        _emit(reply)
                else:
                    self._on(sock)


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m brokerless._demo_relay --connect AUTHOR_ADDR``."""
    p = argparse.ArgumentParser(prog="brokerless._demo_relay", description="recording relay (demo attacker)")
    p.add_argument("--connect", required=True, help="the author's address")
    args = p.parse_args(argv)
    relay = Relay(args.connect)
    try:
        relay.run()
    except KeyboardInterrupt:
        return 130
    finally:
        relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
