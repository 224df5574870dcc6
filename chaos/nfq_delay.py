"""Per-packet delay without ``sch_netem``: an NFQUEUE listener that holds every queued packet for a fixed time
before accepting it (run inside a network namespace: ``ip netns exec NS python chaos/nfq_delay.py --delay-ms 50``).

Some kernels (this project's CI VM among them) are built without ``sch_netem``.  nftables can still send a link's
packets to a netfilter queue (``queue num 0 bypass``), and this process, speaking the nfnetlink_queue protocol
directly over a netlink socket, gives each packet its verdict ``delay_ms`` after it was queued: a real delay of real
packets in the kernel's path, as netem would add.  Loss is added by nftables itself (``numgen random``).

The packet layout below is the kernel's UAPI (``linux/netfilter/nfnetlink_queue.h``, ``linux/netlink.h``).
It runs until SIGTERM/SIGINT; packets still held then are accepted (``bypass`` covers the time after exit)."""

from __future__ import annotations

import argparse
import heapq
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\x00" * (-len(raw) % 4)


def _msg(msg_type: int, flags: int, seq: int, family: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0) + body


def _check_ack(sock: socket.socket) -> None:
    data = sock.recv(65536)
    _length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        if err != 0:
            raise OSError(-err, "nfnetlink_queue config refused")


def bind_queue(queue: int) -> socket.socket:
    """A netlink socket bound to netfilter queue ``queue`` (metadata only: packets are not copied to us)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    cmd = _attr(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, socket.htons(socket.AF_INET)))
    sock.send(_msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 1, socket.AF_UNSPEC, queue, cmd))
    _check_ack(sock)
    params = _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
    sock.send(_msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 2, socket.AF_UNSPEC, queue, params))
    _check_ack(sock)
    return sock


def _packet_ids(data: bytes) -> list[int]:
    ids = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 20  # nlmsghdr (16) + nfgenmsg (4)
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids


def run(queue: int, delay_ms: float) -> int:
    """Hold each packet of ``queue`` for ``delay_ms``, then accept it; returns the number of packets delayed."""
    sock = bind_queue(queue)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    held: list[tuple[float, int]] = []
    count = 0
    print("READY", flush=True)
    while not stop or held:
        now = time.monotonic()
        while held and (held[0][0] <= now or stop):
            _, pid = heapq.heappop(held)
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, pid))
            sock.send(_msg(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, socket.AF_UNSPEC, queue, verdict))
        if stop:
            break
        timeout = max(0.0, held[0][0] - now) if held else 0.2
        try:
            ready, _, _ = select.select([sock], [], [], timeout)
        except InterruptedError:
            continue
        if ready:
            data = sock.recv(1 << 16)
            due = time.monotonic() + delay_ms / 1000
            for pid in _packet_ids(data):
                heapq.heappush(held, (due, pid))
                count += 1
    sock.close()
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    args = ap.parse_args()
    n = run(args.queue, args.delay_ms)
    print("DELAYED", n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
