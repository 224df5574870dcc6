"""An idle branch costs at most 2 KiB of Python objects (the scale target, bench/bench_scale.py and bench_core.py).

It crept from about 1.8 to 2.3 KiB over many changes, each adding a field or a cache entry, before a benchmark run
showed it: measured here with tracemalloc (deterministic for one Python, unlike time), on the protocol cores alone,
where every per-branch structure lives."""

from __future__ import annotations

import gc
import tracemalloc

from streams.core import AuthorCore, SubscriberCore
from streams.identity import Identity
from streams.policy import AllowList

#: Bytes of Python objects an idle per-subscriber branch may keep (SCALE: at most 2 KiB per idle branch).
TARGET = 2048
N = 600
NOW = 1_700_000_000_000


def _per_branch(open_one: object, n: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        m0 = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            open_one(i)  # type: ignore[operator]
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - m0) / n
    finally:
        tracemalloc.stop()


def test_an_idle_per_subscriber_branch_costs_the_author_at_most_2_kib() -> None:
    author = AuthorCore(Identity.from_seed(b"\x01" * 32), "mem", AllowList.of([]))
    author.extras_lookup = lambda _branch: None  # as under the driver: grant frames are read back from the store
    author.data_to_send()
    author.take_changes()
    subs = [Identity.from_seed(i.to_bytes(32, "big")).public for i in range(1000, 1000 + N)]

    def open_one(i: int) -> None:
        author.open_branch(subs[i])
        author.data_to_send()
        author.take_changes()

    cost = _per_branch(open_one, N)
    assert len(author.branch_ids()) == N
    assert cost <= TARGET, f"{cost:.0f} bytes per idle branch"


def test_an_idle_branch_costs_a_subscriber_at_most_2_kib() -> None:
    author_id, me = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    author = AuthorCore(author_id, "mem", AllowList.of([]))
    sub = SubscriberCore(me, author_id.did, author.channel)
    sub.extras_lookup = lambda _branch: None  # as under the driver (see above)
    sub.receive(author.announcement, NOW)
    sub.take_changes()
    grants = []
    for _ in range(N):  # one-member groups: each a GRANT to us
        author.open_group([me.public])
        grants += [o.data for o in author.data_to_send()]
        author.take_changes()
    sub.take_changes()
    frames = iter(grants)

    def accept_one(_i: int) -> None:
        sub.receive(bytes(bytearray(next(frames))), NOW)  # a fresh copy, as off the network
        sub.data_to_send()
        sub.take_changes()

    cost = _per_branch(accept_one, N)
    assert len(sub.branch_ids()) == N
    assert cost <= TARGET, f"{cost:.0f} bytes per idle branch"
