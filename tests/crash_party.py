"""A child process for crash tests: an author publishing as fast as it can on a real SQLite store, printing
``ACK <seq>`` after each publish call returned (i.e. after the store acknowledged it).

``crash_party.py DB COUNT [BATCH]``: with ``BATCH`` > 1, ``publish_many`` of BATCH payloads per call, and the
printed seq is the last of the batch.  ``CRASH_JOURNAL=1`` in the environment: the store's commit journal on;
``CRASH_HOLD=1``: after the last, print ``HELD`` and wait (to be killed) rather than close; ``CRASH_PAYLOAD=N``:
payloads of N bytes (100 by default)."""

from __future__ import annotations

import asyncio
import os
import sys

from streams.api import Author, MemoryHub, StoreOptions
from streams.identity import Identity
from streams.policy import AllowList

PW = "pw"
OPTS = StoreOptions(durable=True, opslimit=1, memlimit=8192, journal=os.environ.get("CRASH_JOURNAL") == "1")
PAYLOAD = b"x" * int(os.environ.get("CRASH_PAYLOAD", "100"))


async def main(path: str, count: int, batch: int = 1) -> None:
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
        if batch > 1:
            seq = (await author.publish_many(branch, [PAYLOAD] * batch))[-1]
        else:
            seq = await author.publish(branch, PAYLOAD)
        print("ACK", seq, flush=True)
    if os.environ.get("CRASH_HOLD") == "1":  # (to be killed with everything acknowledged: no close)
        print("HELD", flush=True)
        await asyncio.sleep(3600)
    await author.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1))
