"""The ledger interface: where epoch checkpoints are anchored (THREATS 7).

A ledger is synchronous and blocking; the asyncio layer calls it from a worker thread.  Every
implementation keeps one promise: :meth:`Ledger.status` says ``confirmed`` only once the write is durable
on that ledger (committed with ``synchronous=FULL`` for the embedded one, referenced by a milestone for
IOTA) -- so a receipt built on it never says "anchored" too early.

Errors: outages and backend failures raise :class:`~streams.errors.LedgerError` (a ``BrokenResourceError``)
with the cause chained (:class:`DamagedEntry` for one entry that is not what a write leaves: readers of every
entry in turn pass over it); an anchor id the ledger does not know raises :class:`UnknownAnchor`; use after
:meth:`Ledger.close` raises :class:`~streams.errors.ClosedResourceError`.  A ledger that holds a checkpoint it has
not confirmed yet makes :func:`~streams.ledger.anchoring.verify_anchored` raise :class:`NotConfirmed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import LedgerError, LocalProtocolError, VerificationError

__all__ = ["AnchorStatus", "DamagedEntry", "Ledger", "NotConfirmed", "UnknownAnchor"]


class DamagedEntry(LedgerError):
    """One ledger entry is not what a write leaves (a row of the wrong types added to the embedded ledger's file
    by hand): nobody's record.  Reading that entry fails; a reader of every entry in turn passes over it."""


class UnknownAnchor(LocalProtocolError, KeyError):
    """The ledger has no entry with this anchor id (a typo, another ledger, or a write that never landed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown anchor"


class NotConfirmed(VerificationError):
    """The checkpoint is on this ledger and the proof checks against it, but the ledger has not confirmed the
    write yet: not anchored *yet*.  For a write another party saw confirmed, this ledger lags (an IOTA node that
    has not seen the milestone referencing the block): ask again later.  Only a write that is never confirmed
    means the head is not anchored."""


@dataclass(frozen=True, slots=True)
class AnchorStatus:
    """Where a write stands on the ledger."""

    confirmed: bool  #: durable and final on the ledger; only then may anyone say "anchored"
    timestamp_ms: int | None  #: ledger time of confirmation (milestone timestamp / commit time), ms
    ref: int | None  #: milestone index (IOTA) or position in the chain (embedded); None until confirmed


@runtime_checkable
class Ledger(Protocol):
    """An append-only ledger of tagged records."""

    def append(self, tag: bytes, data: bytes) -> str:
        """Write one record; return its anchor id.  The write may not be confirmed yet: poll
        :meth:`status`.  Raises :class:`~streams.errors.LedgerError` if the ledger is unreachable."""
        ...

    def status(self, anchor_id: str) -> AnchorStatus:
        """Confirmation state of a write.  Raises :class:`UnknownAnchor` or
        :class:`~streams.errors.LedgerError`."""
        ...

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        """``(tag, data)`` of a record, as the ledger stores it.  Raises :class:`UnknownAnchor` or
        :class:`~streams.errors.LedgerError`."""
        ...

    def close(self) -> None:
        """Release resources.  Idempotent."""
        ...
