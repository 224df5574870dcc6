"""Ledgers that anchor epoch checkpoints: the interface, the embedded SQLite ledger and IOTA Stardust.

:class:`~streams.ledger.iota.IotaLedger` needs the ``iota`` extra (``iota-sdk``); it is imported lazily so
this package works without it.
"""

from __future__ import annotations

from .base import AnchorStatus, DamagedEntry, Ledger, NotConfirmed, UnknownAnchor
from .embedded import EmbeddedLedger, VerifyReport

__all__ = ["AnchorStatus", "DamagedEntry", "EmbeddedLedger", "Ledger", "NotConfirmed", "UnknownAnchor",
           "VerifyReport"]
