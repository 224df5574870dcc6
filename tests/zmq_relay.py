"""A hostile ZeroMQ relay, run as its own process: ``python tests/zmq_relay.py AUTHOR_ADDR``.

Subscribers connect to its ROUTER front; for each of them it opens a DEALER to the author, so the author sees
one peer per subscriber.  It records every frame in both directions and, as told through its control socket
(REP, msgpack requests), drops, bit-flips, duplicates, reorders, replays and injects frames -- the attacker of
THREATS "Network and relays are untrusted".  It prints ``READY <front> <control>`` once bound.

Control requests (msgpack arrays), each answered with a msgpack value:

* ``["set", dir, drop, flip, dup, reorder]`` -- probabilities for direction ``"down"`` (author -> subscriber)
  or ``"up"``; all zero makes the relay honest again.
* ``["frames", dir]`` -- every frame recorded in that direction, in order.
* ``["replay", dir, lo, hi]`` -- send recorded frames ``lo:hi`` of ``dir`` again, unchanged (to subscriber 0 or
  from subscriber 0's connection).
* ``["inject", dir, data]`` -- send arbitrary bytes.
"""

from __future__ import annotations

import random
import sys

import msgpack
import zmq


def main() -> None:
    author_addr = sys.argv[1]
    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    front.setsockopt(zmq.MAXMSGSIZE, 2 << 20)
    front.bind("tcp://127.0.0.1:0")
    ctl = ctx.socket(zmq.REP)
    ctl.setsockopt(zmq.LINGER, 0)
    ctl.bind("tcp://127.0.0.1:0")
    print("READY", front.getsockopt(zmq.LAST_ENDPOINT).decode(), ctl.getsockopt(zmq.LAST_ENDPOINT).decode(),
          flush=True)
    rnd = random.Random(1234)
    clients: dict[bytes, zmq.Socket[bytes]] = {}
    order: list[bytes] = []
    back_rid: dict[zmq.Socket[bytes], bytes] = {}
    rec: dict[str, list[bytes]] = {"down": [], "up": []}
    mode: dict[str, tuple[float, float, float, float]] = {"down": (0, 0, 0, 0), "up": (0, 0, 0, 0)}
    held: dict[str, tuple[zmq.Socket[bytes], list[bytes]] | None] = {"down": None, "up": None}
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(ctl, zmq.POLLIN)

    def emit(d: str, sock: zmq.Socket[bytes], parts: list[bytes]) -> None:
        drop, flip, dup, reorder = mode[d]
        if rnd.random() < drop:
            return
        if rnd.random() < flip and parts[-1]:
            data = bytearray(parts[-1])
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
            parts = [*parts[:-1], bytes(data)]
        if rnd.random() < reorder and held[d] is None:
            held[d] = (sock, parts)  # sent after the next frame: the two swap places
            return
        copies = 2 if rnd.random() < dup else 1
        for _ in range(copies):
            sock.send_multipart(parts)
        h = held[d]
        if h is not None:
            held[d] = None
            h[0].send_multipart(h[1])

    def backend_for(rid: bytes) -> zmq.Socket[bytes]:
        s = clients.get(rid)
        if s is None:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(author_addr)
            clients[rid] = s
            order.append(rid)
            back_rid[s] = rid
            poller.register(s, zmq.POLLIN)
        return s

    while True:
        for sock, _ in poller.poll(1000):
            if sock is front:
                rid, data = front.recv_multipart()
                rec["up"].append(data)
                emit("up", backend_for(rid), [data])
            elif sock is ctl:
                req = msgpack.unpackb(ctl.recv(), raw=False)
                reply: object = "ok"
                if req[0] == "set":
                    mode[req[1]] = tuple(req[2:6])  # type: ignore[assignment]
                elif req[0] == "frames":
                    reply = rec[req[1]]
                elif req[0] in ("replay", "inject"):
                    datas = rec[req[1]][req[2]:req[3]] if req[0] == "replay" else [req[2]]
                    for data in datas:
                        if req[1] == "down":
                            front.send_multipart([order[0], data])
                        else:
                            clients[order[0]].send(data)
                ctl.send(msgpack.packb(reply, use_bin_type=True))
            else:
                data = sock.recv()
                rec["down"].append(data)
                emit("down", front, [back_rid[sock], data])


if __name__ == "__main__":
    main()
