"""Signature checks of a received batch spread over threads (a driver helper; the core stays sans-I/O).

Ed25519 verification is most of a signed-each receiver's time (``crypto_sign_open``: 52% of the subscriber in
``bench/profile_ours.py``).  PyNaCl's calls go through cffi, which releases the GIL while libsodium works, so
checks made on two threads run on two cores.  :class:`ParallelVerifier` is the core's ``verify_many`` hook:
the calling thread and ``threads`` helpers take checks from one shared counter until none is left, so a helper
that the OS does not schedule in time costs nothing but its share (the caller does the rest), and the caller
waits only for checks a helper has already started.  The results are exactly those of
:func:`streams._crypto.verify`, which both sides call.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ._crypto import verify
from .core import SignatureCheck
from .errors import VerificationError

#: Fewer checks than this are made on the calling thread alone: handing work to a thread costs about as much
#: as two checks.
MIN_PARALLEL = 4


def default_threads() -> int:
    """Helper threads for the signature checks of a received batch: one if this process may run on more than
    one CPU, else none."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 1 if cpus > 1 else 0


def _holds(check: SignatureCheck) -> bool:
    try:
        verify(*check)
    except VerificationError:
        return False
    return True


class _Batch:
    """One call's work: a shared counter hands out indices; results land in a list; the caller waits on
    ``done`` only for checks that helpers took."""

    __slots__ = ("checks", "cond", "next", "pending", "results")

    def __init__(self, checks: list[SignatureCheck]) -> None:
        self.checks = checks
        self.results: list[bool] = [False] * len(checks)
        self.next = itertools.count().__next__  # atomic under the GIL
        self.pending = 0  #: checks taken by helpers and not finished
        self.cond = threading.Condition(threading.Lock())

    def work(self, helper: bool) -> None:
        checks, results, n, take, cond = self.checks, self.results, len(self.checks), self.next, self.cond
        while True:
            if helper:  # counted before taking an index: the caller cannot miss a check in progress
                with cond:
                    self.pending += 1
            i = take()
            if i < n:
                results[i] = _holds(checks[i])
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


class ParallelVerifier:
    """``verify_many`` for a core: ``__call__(checks) -> [holds, ...]`` on the calling thread plus ``threads``
    helper threads (started lazily, stopped by :meth:`close`)."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError("threads must be >= 0")
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, checks: list[SignatureCheck]) -> list[bool]:
        if not self.threads or len(checks) < MIN_PARALLEL:
            return [_holds(c) for c in checks]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="streams-verify")
        batch = _Batch(checks)
        for _ in range(self.threads):
            self._pool.submit(batch.work, True)
        batch.work(False)
        batch.wait_helpers()
        return batch.results

    def close(self) -> None:
        """Stop the helper threads (a check in progress finishes first).  The verifier still works afterwards,
        on the calling thread alone."""
        pool, self._pool = self._pool, None
        self.threads = 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
