"""A gap whose publisher never answers (its log lost the messages, or it cut us off) is reported once and asked
for again -- at fetch_retry_ms for the first few retries, then less and less often up to fetch_retry_max_ms, never
given up: a publisher whose log is repaired later still heals it.  Counted over simulated time (sans-I/O cores
wired together, no sleeping)."""

from __future__ import annotations

from streams._state import BranchState
from streams.core import FETCH_FLAT_RETRIES, SubscriberCore
from streams.events import GapDetected, MessageReceived
from streams.wire import Fetch, Kind, decode_frame

from .corenet import Net

HOUR_MS = 3_600_000


def _fetches(s: SubscriberCore, branch: bytes) -> list[Fetch]:
    """The FETCHes of the author's chain of ``branch`` ``s`` sends now (nobody answers them)."""
    out = [decode_frame(o.data) for o in s.data_to_send()]
    return [f.head for f in out if f.kind is Kind.FETCH and f.head.branch == branch and f.head.from_seq]


def _run_unanswered(s: SubscriberCore, branch: bytes, start: int, span_ms: int) -> tuple[int, int]:
    """Fire ``s``'s timers over ``span_ms`` of simulated time; no FETCH is answered.  (FETCHes of the gap, time
    of the last timer fired.)"""
    count, now = 0, start
    s.take_changes()
    count += len(_fetches(s, branch))
    while True:
        due = s.next_timer()
        assert due is not None, "the gap is never given up"
        if due > start + span_ms:
            return count, now
        now = max(now, due)
        s.handle_timer(now)
        s.take_changes()
        count += len(_fetches(s, branch))


def _published(count: int) -> tuple[Net, SubscriberCore, bytes, list[bytes]]:
    """s0 subscribed, and ``count`` messages the author published on its branch, not delivered yet: (the net, s0,
    its branch, the PACKETs)."""
    n = Net.make(n_subs=1)
    n.subscribe("s0")
    s = n.subs["s0"]
    [b0] = s.branch_ids()
    for i in range(count):
        n.author.publish(b0, b"m%d" % i, n.now)
    n.author.take_changes()
    return n, s, b0, [o.data for o in n.author.data_to_send()]


def _bound(s: SubscriberCore, span_ms: int) -> int:
    """The most FETCHes the backoff allows over ``span_ms``: the flat retries, the doublings up to the cap, then
    one per cap -- plus the first ask."""
    cfg = s.config
    doublings = (cfg.fetch_retry_max_ms // cfg.fetch_retry_ms).bit_length()
    return 1 + FETCH_FLAT_RETRIES + doublings + span_ms // cfg.fetch_retry_max_ms + 1


def test_an_open_branch_gap_nobody_serves_is_asked_for_less_often_and_heals_later() -> None:
    n, s, b0, packets = _published(5)
    n.to_sub("s0", packets[0])
    events = n.to_sub("s0", packets[2])  # 2 lost; the author will never answer
    assert [(g.expected_seq, g.received_seq) for g in events if isinstance(g, GapDetected)] == [(2, 3)]
    count, now = _run_unanswered(s, b0, n.now, HOUR_MS)
    assert 1 + FETCH_FLAT_RETRIES < count <= _bound(s, HOUR_MS)  # was one per fetch_retry_ms: 3601
    # Still asked: the author's log repaired, its answer heals the gap, and what is still
    # missing waits fetch_retry_ms again.
    n.now = now
    assert [m.seq for m in n.to_sub("s0", packets[1]) if isinstance(m, MessageReceived)] == [2, 3]
    # 4 and 5 are still missing (the author's HEAD named 5): progress brought the wait back to fetch_retry_ms.
    s.take_changes()
    s.data_to_send()
    s.handle_timer(now + s.config.fetch_retry_ms)
    s.take_changes()
    assert [(f.from_seq, f.to_seq) for f in _fetches(s, b0)] == [(4, 5)]


def test_a_revoke_tail_nobody_serves_is_asked_for_less_often() -> None:
    n, s, b0, packets = _published(4)
    n.to_sub("s0", packets[0])
    n.author.revoke(b0)
    revoke = [o.data for o in n.author.data_to_send()]
    for raw in revoke:
        n.to_sub("s0", raw)
    assert s.branch_state(b0) is BranchState.CLOSED
    count, now = _run_unanswered(s, b0, n.now, HOUR_MS)
    assert 1 + FETCH_FLAT_RETRIES < count <= _bound(s, HOUR_MS)
    n.now = now
    got = [m.seq for raw in packets[1:] for m in n.to_sub("s0", raw) if isinstance(m, MessageReceived)]
    assert got == [2, 3, 4]
    assert s.next_timer() is None


def test_a_reconnect_asks_at_fetch_retry_ms_again() -> None:
    """A catch-up (a reconnect or a restart) starts the retries over: the backoff a dead connection built up does
    not slow down the new one's window (nor what it defers, reported on the retries' time)."""
    n, s, b0, packets = _published(3)
    n.to_sub("s0", packets[0])
    n.to_sub("s0", packets[2])
    _, now = _run_unanswered(s, b0, n.now, HOUR_MS)
    s.catch_up(now)
    s.take_changes()
    assert [f.from_seq for f in _fetches(s, b0)] == [2]
    s.handle_timer(now + s.config.fetch_retry_ms)
    s.take_changes()
    assert [f.from_seq for f in _fetches(s, b0)] == [2]


def test_a_reconnect_asks_for_a_revoke_tail_at_fetch_retry_ms_again() -> None:
    """The tail a REVOKE names is fetched on a closed branch, which a catch-up does not open a window on: its
    backoff was not reset by a reconnect (as SPEC 10.1 step 7 says it is), so a tail the old connection could not
    get waited up to fetch_retry_max_ms more on a new one that may serve it."""
    n, s, b0, packets = _published(4)
    n.to_sub("s0", packets[0])
    n.author.revoke(b0)
    for raw in [o.data for o in n.author.data_to_send()]:
        n.to_sub("s0", raw)
    assert s.branch_state(b0) is BranchState.CLOSED
    _, now = _run_unanswered(s, b0, n.now, HOUR_MS)
    s.catch_up(now)  # reconnected
    s.take_changes()
    s.data_to_send()
    due = s.next_timer()
    assert due is not None and due <= now + s.config.fetch_retry_ms
    s.handle_timer(now + s.config.fetch_retry_ms)
    s.take_changes()
    assert [(f.from_seq, f.to_seq) for f in _fetches(s, b0)] == [(2, 4)]
