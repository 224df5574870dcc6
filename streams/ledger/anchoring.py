"""From an epoch to a receipt: write the checkpoint, and say "anchored" only once the ledger confirms it.

THREATS 7: "a receipt never says anchored before the ledger write is durable".  The only way to obtain an
:class:`AnchorReceipt` is :func:`confirm` or :func:`verify_anchored`, and both return one only when the
ledger reports the write *confirmed* and the bytes read back from the ledger are exactly the signed
checkpoint.  Synchronous, like the ledgers; the asyncio layer runs these in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import _crypto
from ..anchor import ANCHOR_TAG, ChainHead, Epoch, EpochCheckpoint, InclusionProof, verify_inclusion
from ..errors import DecodeError, VerificationError
from .base import Ledger, NotConfirmed

__all__ = ["AnchorReceipt", "PendingAnchor", "channel_checkpoints", "checkpoint_conflicts", "confirm", "publish",
           "verify_anchored"]


@dataclass(frozen=True, slots=True)
class PendingAnchor:
    """A checkpoint written to the ledger but not (known to be) confirmed.  Not a receipt."""

    anchor_id: str
    checkpoint: EpochCheckpoint


@dataclass(frozen=True, slots=True)
class AnchorReceipt:
    """Proof that an epoch checkpoint is durably on the ledger."""

    anchor_id: str  #: ledger id of the write (IOTA block id, embedded position)
    epoch: int
    checkpoint_digest: bytes  #: :attr:`EpochCheckpoint.digest`
    ref: int | None  #: milestone index or ledger position
    timestamp_ms: int | None  #: ledger time of confirmation


def publish(ledger: Ledger, epoch: Epoch) -> PendingAnchor:
    """Write the epoch's checkpoint: one ledger write, whatever the number of heads.  Raises
    :class:`~streams.errors.LedgerError` if the ledger fails (nothing is pending then)."""
    return PendingAnchor(ledger.append(ANCHOR_TAG, epoch.payload), epoch.checkpoint)


def _check_on_ledger(ledger: Ledger, anchor_id: str) -> tuple[EpochCheckpoint, AnchorReceipt | None]:
    """The checkpoint under ``anchor_id`` and, if the write is confirmed, its receipt.  Whatever the entry holds
    if not a well-formed checkpoint (another tag, undecodable bytes, an IOTA block that is not tagged data) is a
    :class:`VerificationError`: callers treat it as "not our checkpoint", never as a crash."""
    status = ledger.status(anchor_id)
    try:
        tag, data = ledger.read(anchor_id)
        if tag != ANCHOR_TAG:
            raise VerificationError("the ledger entry is not a streams anchor")
        checkpoint = EpochCheckpoint.decode(data)
    except DecodeError as exc:
        raise VerificationError(f"the ledger entry is not a well-formed checkpoint: {exc}") from exc
    if not status.confirmed:
        return checkpoint, None
    return checkpoint, AnchorReceipt(anchor_id, checkpoint.epoch, checkpoint.digest, status.ref,
                                     status.timestamp_ms)


def confirm(ledger: Ledger, pending: PendingAnchor) -> AnchorReceipt | None:
    """The receipt once the ledger confirms the write, else ``None`` (poll again later).

    Raises :class:`~streams.errors.VerificationError` if the ledger holds something other than our
    checkpoint under that id, :class:`~streams.errors.LedgerError` on outage."""
    checkpoint, receipt = _check_on_ledger(ledger, pending.anchor_id)
    if checkpoint.encode() != pending.checkpoint.encode():
        raise VerificationError("the ledger holds another checkpoint under this anchor id")
    return receipt


def verify_anchored(
    ledger: Ledger,
    anchor_id: str,
    head: ChainHead,
    proof: InclusionProof,
    author_public: bytes,
    expected: EpochCheckpoint | None = None,
) -> AnchorReceipt:
    """For a member or an auditor holding a head: read the checkpoint from the ledger, check the author's
    signature and the inclusion of ``head``, and that the write is confirmed.  ``expected``, if given, must
    be that same checkpoint (e.g. the one the author handed out with the proof).

    Raises :class:`~streams.errors.VerificationError` if anything fails -- :class:`~streams.ledger.NotConfirmed`
    (a subclass) if only the confirmation is missing: the head is then *not* anchored yet, and a lagging ledger
    may confirm it later -- :class:`~streams.ledger.UnknownAnchor` if the ledger has no entry under
    ``anchor_id``, :class:`~streams.errors.LedgerError` on outage."""
    checkpoint, receipt = _check_on_ledger(ledger, anchor_id)
    if expected is not None and not _crypto.ct_equal(expected.digest, checkpoint.digest):
        raise VerificationError("the ledger holds another checkpoint than expected")
    verify_inclusion(head, proof, checkpoint, author_public)
    if receipt is None:
        raise NotConfirmed("the checkpoint is on the ledger but not confirmed: not anchored yet")
    return receipt


def channel_checkpoints(ledger: Ledger, channel: bytes, author_public: bytes, after: str | None = None
                        ) -> list[tuple[str, EpochCheckpoint]] | None:
    """Every checkpoint of ``channel`` signed by ``author_public`` on the ledger, ``(anchor_id, checkpoint)`` in
    ledger order -- only those written after entry ``after`` if given.  Entries that do not decode or are not
    the author's are skipped (anyone may write to a ledger).  ``None`` if this ledger cannot be listed (it needs
    a ``scan`` method: the embedded ledger; an IOTA node has no index of tagged blocks here).  Raises
    :class:`~streams.errors.LedgerError` on outage."""
    scan = getattr(ledger, "scan", None)
    if not callable(scan):
        return None
    pos = 1 if after is None or not after.isdigit() else int(after) + 1
    out: list[tuple[str, EpochCheckpoint]] = []
    while True:
        rows = scan(ANCHOR_TAG, pos)
        for anchor_id, data in rows:
            try:
                cp = EpochCheckpoint.decode(data)
                if cp.channel == channel:
                    cp.verify(author_public)
                    out.append((anchor_id, cp))
            except (DecodeError, VerificationError):
                continue
        if not rows:
            return out
        pos = int(rows[-1][0]) + 1


def checkpoint_conflicts(found: list[tuple[str, EpochCheckpoint]], known: Mapping[int, bytes],
                         last: int | None) -> list[str]:
    """How the channel's checkpoints on the ledger (``found``, from :func:`channel_checkpoints`) contradict those
    a party holds (``known``: epoch -> encoded checkpoint): another checkpoint for an epoch it holds, two
    different ones for one epoch, and -- if ``last`` is given (the party's last epoch, -1 for none: the author)
    -- epochs it does not hold (one reason for all of them).  Empty if none."""
    out: list[str] = []
    seen: dict[int, bytes] = {}
    missing: list[tuple[int, str]] = []
    for anchor_id, cp in found:
        data = cp.encode()
        mine = known.get(cp.epoch)
        if mine is not None and mine != data:
            out.append(f"the ledger holds another signed checkpoint for epoch {cp.epoch} (entry {anchor_id}) than "
                       "this store: two different histories were signed for this channel")
        elif mine is None and last is not None:
            missing.append((cp.epoch, anchor_id))
        elif seen.get(cp.epoch, data) != data:
            out.append(f"the ledger holds two different signed checkpoints for epoch {cp.epoch} (entry {anchor_id})")
        seen.setdefault(cp.epoch, data)
    if missing:
        epochs = sorted({e for e, _ in missing})
        span = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}..{epochs[-1]}"
        out.insert(0, f"the ledger holds {len(epochs)} epoch(s) of this channel that this store does not ({span}, "
                      f"first at entry {missing[0][1]}; the store's last is {last}): the store is behind the "
                      "history its author signed (an older copy, such as a backup: a party must not publish or "
                      "anchor from it)")
    return out
