"""A child process for the disk-fault tests: an author publishing on a real SQLite store until the disk fails.

    python tests/disk_party.py fill   DB [--fsize BYTES] [--size N]   create the author, publish until StorageError
    python tests/disk_party.py resume DB N                 reopen, publish N more (or report the error)

Prints one JSON object per line: ``{"ack": seq}`` after each publish that returned (the store acknowledged
it), then, on a failure, ``{"error": class, "message": str, "phase": ..., "then": class of the error from
the next publish, "closed": bool, "sent": [PACKET seqs the network saw]}``.  ``--fsize`` caps the size of
any file this process writes (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so the write fails with EFBIG
instead of killing us): a full disk without privileges.  ``--size``: payload bytes per message (200; from about
1 KiB the frames go to the store's frame file).  ``DISK_JOURNAL=1`` in the environment: the store's commit
journal on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
from pathlib import Path

from streams.api import Author, MemoryHub, StoreOptions
from streams.errors import StreamsError
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame

PW = "pw"
OPTS = StoreOptions(durable=True, opslimit=1, memlimit=8192, journal=os.environ.get("DISK_JOURNAL") == "1")
AUTHOR, SUB = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def sent_packets(hub: MemoryHub) -> list[int]:
    out = []
    for _src, _dst, data in hub.tap:
        f = decode_frame(data)
        if f.kind is Kind.PACKET:
            out.append(f.head.seq)
    return sorted(set(out))


async def main(mode: str, db: Path, count: int, fsize: int | None, size: int = 200) -> None:
    hub = MemoryHub()
    hub.subscriber_endpoint("sub")  # a receiver, so the tap shows what was actually sent
    phase = "open"
    author: Author | None = None
    try:
        if mode == "fill":
            author = await Author.create(db, AUTHOR, "disk", PW, hub.author_endpoint(), AllowList.of([SUB.did]),
                                         store_options=OPTS)
            branch = await author.open_branch(SUB.did)
            if fsize is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        else:
            author = await Author.open(db, PW, hub.author_endpoint(), AllowList.of([SUB.did]), store_options=OPTS)
            found = author.branch_of(SUB.did)
            assert found is not None
            branch = found
        phase = "publish"
        for _ in range(count):
            seq = await author.publish(branch, b"x" * size)
            emit(ack=seq)
    except StreamsError as exc:
        then = "none"
        if author is not None:
            try:
                await author.publish(branch, b"after the failure")
            except Exception as again:
                then = type(again).__name__
            for _ in range(20):  # the party closes itself on the event loop
                if author._closed:
                    break
                await asyncio.sleep(0.01)
        emit(error=type(exc).__name__, message=str(exc), phase=phase, then=then,
             closed=author is not None and author._closed, sent=sent_packets(hub))
        return
    finally:
        if author is not None:
            await author.close()
    emit(done=True, sent=sent_packets(hub))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["fill", "resume"])
    p.add_argument("db", type=Path)
    p.add_argument("count", type=int, nargs="?", default=100_000)
    p.add_argument("--fsize", type=int)
    p.add_argument("--size", type=int, default=200)
    a = p.parse_args()
    asyncio.run(main(a.mode, a.db, a.count, a.fsize, a.size))
