"""A batch's Ed25519 signature checks spread over threads (a driver helper; the core stays sans-I/O).

Signature checks are most of a signed-each receiver's time (``crypto_sign_open``: 52% of the subscriber in
``bench/profile_ours.py``; about 40 us each).  PyNaCl's calls go through cffi, which releases the GIL while
libsodium works, so calls made on two threads run on two cores.  :class:`Parallel` maps a function over a batch
on the calling thread and ``threads`` helpers, which take items from one shared counter until none is left: a
helper the OS does not schedule in time costs nothing but its share (the caller does the rest), and the caller
waits only for items a helper has already started.  The cores' hook built on it (:meth:`Parallel.verify_many`)
gives exactly the results of the single calls.

Signing is not spread: a signature of a digest takes about 15 us, too little to win back the hand-over of the
GIL on every call; a lone author publishing 16 KiB messages signed-each was 8% slower with a helper (bench).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from ._crypto import verify
from .core import SignatureCheck
from .errors import VerificationError

T = TypeVar("T")
R = TypeVar("R")

#: Batches smaller than this stay on the calling thread.  Waking a helper costs tens of microseconds and, when
#: the other core is busy, gains nothing: with 4 here, paced bursts of 5 messages at 5k msgs/s took 1.5 ms at
#: p50 end to end against 1.1 ms without helpers; streaming batches (64 and more) gain 15-25% throughput.
MIN_PARALLEL = 16


def default_threads() -> int:
    """Helper threads for a batch's Ed25519 work: one if this process may run on more than one CPU, else 0."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 1 if cpus > 1 else 0


def holds(check: SignatureCheck) -> bool:
    """Whether one (public key, digest, signature) check holds: :func:`streams._crypto.verify` as a verdict."""
    try:
        verify(*check)
    except VerificationError:
        return False
    return True


class _Batch(Generic[T, R]):
    """One call's work: a shared counter hands out indices; results land in a list; the caller waits only for
    items that helpers took."""

    __slots__ = ("cond", "error", "fn", "items", "next", "pending", "results")

    def __init__(self, fn: Callable[[T], R], items: Sequence[T]) -> None:
        self.fn = fn
        self.items = items
        self.results: list[R | None] = [None] * len(items)
        self.next = itertools.count().__next__  # atomic under the GIL
        self.pending = 0  #: items taken by helpers and not finished
        self.error: BaseException | None = None
        self.cond = threading.Condition(threading.Lock())

    def work(self, helper: bool) -> None:
        fn, items, results, n, take, cond = self.fn, self.items, self.results, len(self.items), self.next, self.cond
        while True:
            if helper:  # counted before taking an index: the caller cannot miss an item in progress
                with cond:
                    self.pending += 1
            i = take()
            try:
                if i < n:
                    results[i] = fn(items[i])
            except BaseException as exc:  # handed to the caller, which raises it
                self.error = exc
                i = n
            finally:
                if helper:
                    with cond:
                        self.pending -= 1
                        if not self.pending:
                            cond.notify_all()
            if i >= n:
                return

    def wait_helpers(self) -> None:
        with self.cond:
            while self.pending:
                self.cond.wait()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork() -> None:
    """In a forked child: the pools' threads stayed in the parent.  Work queued on them would never run (and stay
    referenced, a leak of every batch); the child starts pools of its own at its first batch."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()  # (held by another thread at the fork, it would stay held in the child)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``threads`` helpers.  Shared: a host running many parties on one event loop
    runs one batch at a time anyway, and must not start a thread per party."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="streams-ed25519")
        return pool


class Parallel:
    """Map a function over a batch on the calling thread plus ``threads`` helpers of a process-wide pool
    (started at first use; after :meth:`close` everything runs on the calling thread)."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError("threads must be >= 0")
        self.threads = threads

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]``, in order, shared with the helpers.  Raises what ``fn`` raised (the first
        error seen; the other items may or may not have been processed)."""
        if not self.threads or len(items) < MIN_PARALLEL:
            return [fn(x) for x in items]
        pool = _pool(self.threads)
        batch: _Batch[T, R] = _Batch(fn, items)
        for _ in range(self.threads):
            pool.submit(batch.work, True)
        batch.work(False)
        batch.wait_helpers()
        if batch.error is not None:
            raise batch.error
        return batch.results  # type: ignore[return-value]  # every slot is filled when no error was seen

    def verify_many(self, checks: list[SignatureCheck]) -> list[bool]:
        """The cores' ``verify_many`` hook: for each check, whether the signature holds."""
        return self.map(holds, checks)

    def close(self) -> None:
        """Use no helpers from now on (the shared pool stays for the process's other users)."""
        self.threads = 0
