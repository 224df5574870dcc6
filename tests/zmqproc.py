"""Run ``tests/zmq_party.py`` (and the hostile relay) as child processes and read their machine-readable lines."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTY = HERE / "zmq_party.py"


class Proc:
    """A child process whose stdout lines are collected by a thread; killed (``kill -9``) on exit."""

    def __init__(self, script: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        self.p = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.endswith("\n"):  # (not the last one of a process killed in the middle of printing it)
                self._q.put(line[:-1])

    def poll_lines(self) -> list[str]:
        while True:
            try:
                self.lines.append(self._q.get_nowait())
            except queue.Empty:
                return self.lines

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float, what: str = "") -> list[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.poll_lines()):
                return self.lines
            if self.p.poll() is not None:
                self.poll_lines()
                if pred(self.lines):
                    return self.lines
                raise AssertionError(f"process exited ({self.p.returncode}) waiting for {what}: "
                                     f"{self.stderr_tail()}")
            time.sleep(0.02)
        raise AssertionError(f"timeout waiting for {what}; last lines {self.lines[-5:]}")

    def first(self, prefix: str, timeout: float = 30) -> str:
        self.wait_for(lambda ls: any(x.startswith(prefix) for x in ls), timeout, prefix)
        return next(x for x in self.lines if x.startswith(prefix))

    def kill9(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        time.sleep(0.05)
        self.poll_lines()

    def stderr_tail(self) -> str:
        if self.p.poll() is None or self.p.stderr is None:
            return ""
        return self.p.stderr.read()[-3000:]


@contextmanager
def procs() -> Iterator[list[Proc]]:
    """Every process started into the yielded list is killed at the end, whatever happens."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for pr in started:
            if pr.p.poll() is None:
                with_signal = signal.SIGCONT
                pr.p.send_signal(with_signal)  # in case a test stopped it
                pr.p.send_signal(signal.SIGKILL)
            pr.p.wait(10)
            for s in (pr.p.stdout, pr.p.stderr):
                if s is not None:
                    s.close()


def party(started: list[Proc], *args: str) -> Proc:
    pr = Proc(PARTY, *args)
    started.append(pr)
    return pr


def got(lines: list[str]) -> list[tuple[str, int, int, str]]:
    """(branch, publisher, seq, payload) of every GOT line."""
    outl = []
    for x in lines:
        if x.startswith("GOT "):
            _, b, p, s, payload = x.split(" ", 4)
            outl.append((b, int(p), int(s), payload))
    return outl


def ints(lines: list[str], prefix: str) -> list[int]:
    return [int(x.split()[1]) for x in lines if x.startswith(prefix + " ")]
