"""Helpers shared by the end-to-end and scaling benchmarks: worker processes driven over JSON lines, percentiles,
machine description.  Internal to ``bench/``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_core import machine_info  # noqa: E402

__all__ = ["ROOT", "Pacer", "Worker", "WorkerError", "emit", "machine_info", "percentiles", "rss_bytes"]


class WorkerError(RuntimeError):
    """A worker process died, answered with an error, or did not answer in time."""


def emit(obj: dict[str, Any]) -> None:
    """Worker side: one JSON line on stdout (the orchestrator's channel); logs go to stderr."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of ``samples`` (nearest-rank on the sorted list)."""
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99_9": q(0.999), "max": s[-1],
            "mean": sum(s) / n, "count": float(n)}


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (Linux /proc), bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Pacer:
    """Waits until a ``time.monotonic_ns`` instant inside a running asyncio loop, to the tens of microseconds.

    ``asyncio.sleep`` cannot pace a constant rate above a few hundred messages per second: the selector rounds its
    timeout up to whole milliseconds (``epoll_wait`` takes milliseconds), so a paced sender leaves in bursts of
    up to rate/1000 messages per tick, and a message waits for the rest of its burst on both sides -- a load the
    latency target's "about half of peak" does not describe.  On Linux this arms a ``timerfd`` (CLOCK_MONOTONIC,
    absolute time, nanoseconds), registered as a reader with the loop: the loop wakes when the instant comes.
    Elsewhere, if the timerfd cannot be made, or with ``precise=False`` (the bursty pacing, for comparison), it
    waits with ``asyncio.sleep`` (``precise`` is False then).  Close it with :meth:`close` (or ``with``)."""

    CLOCK_MONOTONIC = 1
    TFD_TIMER_ABSTIME = 1

    def __init__(self, precise: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._waiter: asyncio.Future[None] | None = None
        if precise and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.timerfd_create(self.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
                self._settime = libc.timerfd_settime
            except (OSError, AttributeError):
                fd = -1
            if fd >= 0:
                self._fd = fd
                self._loop.add_reader(fd, self._fired)
        self.precise = self._fd >= 0

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count: reading it disarms readiness
        except BlockingIOError:
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def until(self, due_ns: int) -> None:
        """Return at ``due_ns`` (``time.monotonic_ns`` clock) or just after; at once if it has passed.  One waiter
        at a time (a second call while one waits replaces its wake-up: the first would wait forever)."""
        left = due_ns - time.monotonic_ns()
        if left <= 0:  # (also: an it_value of 0 would disarm the timer, a negative one is EINVAL)
            return
        if not self.precise:
            await asyncio.sleep(left / 1e9)
            return
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(due_ns // 1_000_000_000, due_ns % 1_000_000_000))
        if self._settime(self._fd, self.TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        fut = self._waiter = self._loop.create_future()
        try:
            await fut
        finally:
            if self._waiter is fut:  # (a cancelled wait must not take a later call's waiter with it)
                self._waiter = None

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self.precise = False

    def __enter__(self) -> Pacer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)``, so a module that ``run.py`` stops (its timeout) runs its ``finally``
    blocks: its worker processes and ``nats-server`` run in sessions of their own and would outlive it."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)


class Worker:
    """A benchmark worker subprocess: commands go in as JSON lines on stdin, answers come back as JSON lines on
    stdout (read by a thread, so waits can time out).  Killed (whole process group) by :meth:`kill`."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=full_env, start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def stderr_tail(self) -> str:
        return "".join(self._stderr[-15:])

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"{self.name}: cannot write: {exc}; stderr: {self.stderr_tail()}") from exc

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON answer.  Raises :class:`WorkerError` on timeout, death or ``{"error": ...}``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s; stderr: {self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.05)
                raise WorkerError(f"{self.name}: exited ({self.proc.poll()}); stderr: {self.stderr_tail()}")
            line = line.strip()
            if not line.startswith("{"):
                continue  # stray output (a library print): not ours
            obj: dict[str, Any] = json.loads(line)
            if "error" in obj:
                raise WorkerError(f"{self.name}: {obj['error']}")
            return obj

    def call(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.read(timeout)

    def kill(self) -> None:
        """Ask politely, then kill the process group; never leaves the process behind."""
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "stop"})
                self.proc.wait(timeout=3)
            except (WorkerError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
