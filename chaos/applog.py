"""Append-only, fsync'd line logs: what each chaos process acknowledged and handed to its application.

A line is on disk before the process acts on it (the application asks for its next message only after its GOT
line is durable), so a ``kill -9`` can only make a log *under*-report acknowledgements -- never claim one that
did not happen -- and an application that logged a message really received it."""

from __future__ import annotations

import os
from pathlib import Path


class AppLog:
    """One process lifetime's log file, opened for append; every :meth:`line` is written and fsync'd."""

    def __init__(self, path: str | os.PathLike[str], life: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.life = life

    def line(self, *words: object) -> None:
        """Append ``life word...`` as one line and fsync it (a torn last line is ignored by :func:`read_log`)."""
        os.write(self._fd, (" ".join(str(w) for w in (self.life, *words)) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_log(path: str | os.PathLike[str]) -> list[list[str]]:
    """Every complete line of a log, split into words (a torn last line, cut by a kill, is dropped)."""
    p = Path(path)
    if not p.exists():
        return []
    text = p.read_bytes().decode(errors="replace")
    lines = text.split("\n")
    return [ln.split() for ln in lines[:-1] if ln]
