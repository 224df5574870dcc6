"""Author and subscriber in separate processes over real ZeroMQ (tcp loopback and ipc), with ``kill -9``.

"No duplicate delivered" is checked as :mod:`brokerless.endpoints` documents it: within one process lifetime
the protocol accepts each (branch, publisher, seq) once, so the GOT lines are strictly increasing; across a
subscriber crash, messages accepted but not yet marked delivered are handed out again -- only as a prefix of
the new lifetime -- and after de-duplication the stream has no holes.
"""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import pytest

from .zmqproc import got, ints, party, procs

AUTHOR_SEED, SUB_SEED = "1", "10"


def _addr(kind: str, tmp: Path) -> str:
    return "tcp://127.0.0.1:0" if kind == "tcp" else f"ipc://{tmp}/author.sock"


def _author(started: list, tmp: Path, bind: str, count: int, interval: int = 5, *extra: str):  # type: ignore[no-untyped-def]
    return party(started, "author", "--db", str(tmp / "author.db"), "--bind", bind, "--seed", AUTHOR_SEED,
                 "--allow", SUB_SEED, "--count", str(count), "--interval", str(interval), *extra)


def _sub(started: list, tmp: Path, connect: str, *extra: str):  # type: ignore[no-untyped-def]
    return party(started, "subscriber", "--db", str(tmp / "sub.db"), "--connect", connect, "--seed", SUB_SEED,
                 "--author-seed", AUTHOR_SEED, *extra)


def _seqs(lines: list[str], publisher: int) -> list[int]:
    return [s for _b, p, s, _ in got(lines) if p == publisher]


def _strictly_increasing(xs: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(xs))


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_both_directions_with_durable_acks_across_processes(tmp_path: Path, kind: str) -> None:
    with procs() as started:
        a = _author(started, tmp_path, _addr(kind, tmp_path), 30)
        addr = a.first("READY").split()[1]
        assert addr.startswith(kind + "://") and not addr.endswith(":0")
        s = _sub(started, tmp_path, addr, "--count", "10")
        s.first("SUBSCRIBED")
        s.wait_for(lambda ls: _seqs(ls, 0)[-1:] == [30] and 10 in ints(ls, "ACKED"), 30, "author stream + acks")
        a.wait_for(lambda ls: _seqs(ls, 1)[-1:] == [10] and 30 in ints(ls, "ACKED"), 30, "sub stream + acks")
        assert _seqs(s.lines, 0) == list(range(1, 31))
        assert _seqs(a.lines, 1) == list(range(1, 11))
        payloads = [x[3] for x in got(s.lines)]
        assert len(set(payloads)) == len(payloads)
        # ACKs only ever move forward and never claim more than was published.
        assert _strictly_increasing(ints(a.lines, "ACKED")) and max(ints(a.lines, "ACKED")) <= 30


def test_kill9_author_midstream_then_restart(tmp_path: Path) -> None:
    with procs() as started:
        a = _author(started, tmp_path, "tcp://127.0.0.1:0", 150, 10)
        addr = a.first("READY").split()[1]
        s = _sub(started, tmp_path, addr)
        s.first("SUBSCRIBED")
        s.wait_for(lambda ls: len(got(ls)) >= 40, 30, "40 messages")
        a.kill9()
        acked_before = ints(a.lines, "ACKED")
        pub_before = ints(a.lines, "PUB")
        assert acked_before and pub_before
        a2 = _author(started, tmp_path, addr, 150, 10)  # same store, same address
        a2.first("READY")
        s.wait_for(lambda ls: 150 in _seqs(ls, 0), 60, "the whole stream after the restart")
        seqs = _seqs(s.lines, 0)
        # One subscriber lifetime: every seq accepted exactly once, in order, none missing.
        assert seqs == list(range(1, max(seqs) + 1))
        # Nothing acknowledged or published before the crash was lost, and the restarted author continued the
        # chain (a reused seq would have been a fork, refused by the subscriber).
        assert set(acked_before) | set(pub_before) <= set(seqs)
        a2.wait_for(lambda ls: bool(ints(ls, "PUB")), 30, "publishing after the restart")
        assert min(ints(a2.lines, "PUB")) > max(pub_before)
        assert "REJECT FORK" not in s.lines and "REJECT BAD_LINK" not in s.lines


def test_kill9_subscriber_midstream_then_restart(tmp_path: Path) -> None:
    with procs() as started:
        a = _author(started, tmp_path, _addr("ipc", tmp_path), 150, 10)
        addr = a.first("READY").split()[1]
        s = _sub(started, tmp_path, addr, "--delay", "5")
        s.first("SUBSCRIBED")
        s.wait_for(lambda ls: len(got(ls)) >= 40, 30, "40 messages")
        s.kill9()
        first_life = _seqs(s.lines, 0)
        # Freeze the author: what the restarted subscriber hands out now can only come from its own disk.
        a.p.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        acked = max(ints(a.poll_lines(), "ACKED"))
        s2 = _sub(started, tmp_path, addr, "--delay", "5")
        s2.first("SUBSCRIBED")
        time.sleep(1.0)
        from_disk = _seqs(s2.poll_lines(), 0)
        assert set(range(1, acked + 1)) <= set(first_life) | set(from_disk), "an acknowledged message was lost"
        a.p.send_signal(signal.SIGCONT)
        s2.wait_for(lambda ls: 150 in _seqs(ls, 0), 60, "the whole stream after the restart")
        second_life = _seqs(s2.lines, 0)
        assert _strictly_increasing(first_life) and _strictly_increasing(second_life)
        # Redelivery (at-least-once to the application) is a prefix of the second lifetime; after de-duplication
        # by seq the stream is complete and has no holes.
        redelivered = [x for x in second_life if x <= max(first_life)]
        assert second_life[: len(redelivered)] == redelivered
        assert sorted(set(first_life) | set(second_life)) == list(range(1, 151))
