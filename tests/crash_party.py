"""A child process for crash tests: an author publishing as fast as it can on a real SQLite store, printing
``ACK <seq>`` after each publish call returned (i.e. after the store acknowledged it)."""

from __future__ import annotations

import asyncio
import sys

from streams.api import Author, MemoryHub, StoreOptions
from streams.identity import Identity
from streams.policy import AllowList

PW = "pw"
OPTS = StoreOptions(durable=True, opslimit=1, memlimit=8192)


async def main(path: str, count: int) -> None:
    hub = MemoryHub()
    sub = Identity.from_seed(b"\x02" * 32)
    try:
        author = await Author.open(path, PW, hub.author_endpoint(), AllowList.of([sub.did]), store_options=OPTS)
    except Exception:
        author = await Author.create(path, Identity.from_seed(b"\x01" * 32), "crash", PW, hub.author_endpoint(),
                                     AllowList.of([sub.did]), store_options=OPTS)
    branch = author.branch_of(sub.did) or await author.open_branch(sub.did)
    print("READY", branch.hex(), flush=True)
    for _ in range(count):
        seq = await author.publish(branch, b"x" * 100)
        print("ACK", seq, flush=True)
    await author.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
