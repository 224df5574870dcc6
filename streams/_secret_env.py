"""Environment variables that hold secrets, kept from the processes this library starts.

Internal.  The command line reads a passphrase from the variable ``--passphrase-env`` names (THREATS 9) and
registers that name here (:func:`withhold`); a helper process the library starts (the iota-sdk worker of
:class:`~streams.ledger.iota.IotaLedger`) is given :func:`child_environment`, the process's environment without
those variables -- it needs no passphrase, and a process environment is readable by anyone who can read its
``/proc/<pid>/environ`` or core dump, and is passed on to whatever that process starts in turn.
"""

from __future__ import annotations

import os
import threading

__all__ = ["child_environment", "withhold"]

_lock = threading.Lock()
_withheld: set[str] = set()


def withhold(name: str) -> None:
    """Keep the environment variable ``name`` (it holds a secret) from every process started from now on."""
    with _lock:
        _withheld.add(name)


def child_environment() -> dict[str, str]:
    """A copy of this process's environment without the variables :func:`withhold` named."""
    with _lock:
        withheld = frozenset(_withheld)
    return {k: v for k, v in os.environ.items() if k not in withheld}
