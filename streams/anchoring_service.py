"""The author's batched anchoring (THREATS 7), run by :class:`streams.api.Author` next to its protocol core.

Per anchor epoch (every :attr:`AnchorConfig.epoch_interval_ms`, or earlier once
:attr:`AnchorConfig.max_heads_per_epoch` chains moved):

1. the heads of every chain that moved -- the author's own and the members' chains it accepted -- are turned
   into blinded leaves (:func:`streams.anchor.chain_blind_key`) and one signed, linked checkpoint
   (:func:`streams.anchor.build_epoch`, in a worker thread);
2. the epoch is written to the store as a ``built`` row *before* the ledger is called, so a crash or a ledger
   outage loses no anchor: rows not ``confirmed`` are the durable queue, resumed by :meth:`AnchorService.start`
   after a restart, in epoch order, and ``prev`` links checkpoints across restarts;
3. one ledger write per epoch (a worker thread for blocking ledgers; :class:`~streams.ledger.iota.IotaLedger`
   has its own process), then polling until the ledger confirms it and reads the same bytes back;
4. only then is the row ``confirmed``, the chains' latest anchored heads recorded, and a signed ANCHOR_PROOF
   sent to the members of each branch.  Nothing says "anchored" earlier.

Publishing never waits for any of it: the driver only records which chains moved (:meth:`AnchorService.note`).
A :class:`~streams.errors.LedgerError` keeps the rows and retries with exponential backoff.  While
:attr:`AnchorConfig.max_unwritten` epochs wait for the ledger no new one is cut: moved chains keep accumulating
and go into one epoch once the ledger is back (one write instead of one per interval of the outage).

A crash between the ledger write and recording its id leaves a ``built`` row that is written again at the next
start: the ledger may then hold the same signed checkpoint twice (harmless: same bytes, same digest).

Before its first epoch, and before each ledger write, the service lists the channel's checkpoints written on the
ledger since the last one it saw (:func:`~streams.ledger.anchoring.channel_checkpoints`; at start, since the
store's last confirmed epoch).  If one is of an epoch the store does not hold, or differs from the store's for
its epoch, the store is behind the history this author already signed -- it was restored from a stale copy
(``streams backup``), or another instance runs -- and a write would put a second, different signed checkpoint
for an epoch on the ledger.  The service then refuses: it logs an error, sets :attr:`AnchorService.refused` (a
:class:`~streams.errors.LedgerConflict`) and anchors nothing more; the party itself keeps running.  A ledger
that cannot be listed (IOTA) is not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import merkle
from ._config import check_ints, check_order
from .anchor import ANCHOR_TAG, ChainHead, EpochCheckpoint, InclusionProof, build_epoch
from .core import AnchorRecord, AuthorCore, Changes
from .errors import LedgerConflict, LedgerError, LocalProtocolError, StreamsError, VerificationError
from .events import EpochAnchored, LedgerStatus
from .ledger.anchoring import PendingAnchor, channel_checkpoints, checkpoint_conflicts, confirm
from .ledger.base import Ledger, UnknownAnchor
from .store import AnchorRow, Store

__all__ = ["AnchorConfig", "AnchorService"]

log = logging.getLogger("streams.anchoring")


@dataclass(frozen=True, slots=True)
class AnchorConfig:
    """When and how the author anchors.  Units are in the field names.

    Raises :class:`~streams.errors.LocalProtocolError`, naming the field and the value, for a field that is not
    an integer from 1 to ``2**63 - 1``, or a ``retry_max_ms`` below ``retry_min_ms`` (a 0 interval or delay
    would spin the anchoring task, a 0 ``max_unwritten`` never build an epoch)."""

    epoch_interval_ms: int = 1_000
    """An epoch is cut this often if any chain moved."""
    max_heads_per_epoch: int = 100_000
    """An epoch is cut as soon as this many chains moved; more moved chains are split over several epochs."""
    max_unwritten: int = 2
    """Most built epochs waiting for their ledger write; beyond, moved chains accumulate for the next one."""
    retry_min_ms: int = 100
    """First retry delay after a ledger error; doubled after each further error."""
    retry_max_ms: int = 5_000
    """Ceiling of the retry delay."""
    confirm_poll_ms: int = 200
    """How often a written but unconfirmed checkpoint is polled (IOTA: until a milestone references it)."""
    restart_after: int = 5
    """Consecutive ledger errors after which a ledger with a ``restart()`` method (IotaLedger) is restarted."""

    def __post_init__(self) -> None:
        check_ints("AnchorConfig", self, dict.fromkeys(
            ("epoch_interval_ms", "max_heads_per_epoch", "max_unwritten", "retry_min_ms", "retry_max_ms",
             "confirm_poll_ms", "restart_after"), 1))
        check_order("AnchorConfig", self, "retry_min_ms", "retry_max_ms")


class AnchorService:
    """Anchors an author's chain heads on a ledger.  Internal to :class:`streams.api.Author`; its state is the
    store's ``anchors`` and ``anchor_heads`` tables."""

    def __init__(self, core: AuthorCore, store: Store, ledger: Ledger, config: AnchorConfig,
                 clock: Callable[[], int], send: Callable[[], object],
                 on_refused: Callable[[LedgerConflict], None] | None = None,
                 report: Callable[[EpochAnchored | LedgerStatus], None] | None = None,
                 on_failed: Callable[[Exception], None] | None = None) -> None:
        self._core = core
        self._report = report or (lambda ev: None)  # the driver's events(): epochs confirmed, outages
        self._on_refused = on_refused  # the driver stops publishing: it would sign a second history too
        #: The driver closes the party when the task dies of anything else (a ledger closed under it, a store that
        #: failed, a bug): anchoring must not stop without a word while the party goes on publishing.
        self._on_failed = on_failed
        self._store = store
        self.ledger = ledger
        self.config = config
        self._clock = clock
        self._send = send  # the driver's flush: commits nothing new, sends the queued ANCHOR_PROOF frames
        #: Chains that moved since their last anchor, in order, each with its head as committed (seq, hash): an
        #: epoch anchors those, never a head the core holds that a publish not yet committed moved (its commit
        #: may fail; the ledger would then hold a head the store never had, which it later contradicts).
        self._moved: dict[tuple[bytes, int], tuple[int, bytes]] = {}
        self._pending: list[AnchorRow] = []
        self._anchored: dict[tuple[bytes, int], AnchorRecord] = {}
        self._prev: EpochCheckpoint | None = None
        self._trees: dict[int, merkle.MerkleTree] = {}
        self._wake = asyncio.Event()
        self._kick = False
        self._task: asyncio.Task[None] | None = None
        self.ledger_writes = 0  #: ledger appends made by this instance (one per epoch, barring retries)
        self.last_error: BaseException | None = None  #: the latest ledger error, None once the ledger answers
        #: Set when the ledger contradicts the store (see the module doc): nothing is anchored any more.
        self.refused: LedgerConflict | None = None
        self._checked = False  #: the ledger was listed once since start and did not contradict the store
        self._seen: str | None = None  #: the ledger was listed up to this anchor id

    # -- driver interface ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume from the store (pending epochs, the last checkpoint, chains that moved since their last
        anchor) and start the background task."""
        last = self._store.anchor_last()
        self._prev = None if last is None else EpochCheckpoint.decode(last.checkpoint)
        last_confirmed = self._store.anchor_last(confirmed=True)
        self._seen = None if last_confirmed is None else last_confirmed.anchor_id
        self._pending = self._store.anchors(pending_only=True)
        self._anchored = {(r.branch, r.publisher): r for r in self._store.anchored_heads()}
        queued = {(b, p, s) for row in self._pending for b, p, s, _, _ in row.heads}
        for ch in self._store.load_chains():
            seq = ch.next_seq - 1
            done = self._anchored.get((ch.branch, ch.publisher))
            if seq >= 1 and (done is None or done.seq != seq) and (ch.branch, ch.publisher, seq) not in queued:
                self._moved[(ch.branch, ch.publisher)] = (seq, ch.head)
        self._task = asyncio.create_task(self._run(), name="streams-anchoring")

    async def stop(self) -> None:
        """Stop the background task (pending epochs stay in the store for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def note(self, changes: Changes) -> None:
        """Record which chains moved, and their heads as committed (called by the driver after every commit;
        O(changes), never blocks)."""
        for c in changes.chains:
            self._moved[(c.branch, c.publisher)] = (c.next_seq - 1, c.head)
        if len(self._moved) >= self.config.max_heads_per_epoch:
            self._wake.set()

    def kick(self) -> None:
        """Cut an epoch now if anything moved (e.g. a member re-subscribed and needs its current heads)."""
        self._kick = True
        self._wake.set()

    @property
    def pending(self) -> int:
        """Epochs built but not confirmed on the ledger yet."""
        return len(self._pending)

    def anchored_head(self, branch: bytes, publisher: int) -> AnchorRecord | None:
        """The latest confirmed anchored head of a chain."""
        return self._anchored.get((branch, publisher))

    def send_restore(self, branch: bytes, peer: object = None, restore: bool = True) -> None:
        """Queue, for every chain of ``branch`` with a confirmed anchored head, a fresh ANCHOR_PROOF, flagged
        *restore* if ``restore``: a member that lost its state starts its cursors there (THREATS 3).  Without
        the flag: the latest proofs again, for a member back from a restart or a reconnect."""
        for (b, p), rec in self._anchored.items():
            if b != branch:
                continue
            tree = self._tree(rec.epoch)
            if tree is None:
                continue
            proof = InclusionProof(rec.epoch, rec.index, rec.tree_size, tuple(tree.inclusion_proof(rec.index)))
            self._core.anchor_proof(b, p, rec.seq, rec.hash, rec.key_epoch, EpochCheckpoint.decode(rec.checkpoint),
                                    rec.anchor_id, proof, restore=restore, peer=peer)

    # -- the loop ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except LedgerConflict as exc:
            self._refuse(exc)
        except Exception as exc:
            self.last_error = exc
            if self._on_failed is None:
                raise
            self._on_failed(exc)

    def _refuse(self, exc: LedgerConflict) -> None:
        self.refused = self.last_error = exc
        log.error("anchoring refused: nothing more is anchored%s: %s",
                  " or published from this store" if self._on_refused is not None else " from this store", exc)
        if self._on_refused is not None:
            self._on_refused(exc)

    async def check_ledger(self) -> None:
        """Compare the channel's checkpoints on the ledger with the store now (``Author.open`` does, before it
        returns).  Raises :class:`LedgerConflict` if the store is behind what this author already signed; a
        ledger that does not answer is not an error here (the background task checks again)."""
        try:
            await self._check_ledger()
        except LedgerConflict as exc:
            self._refuse(exc)
            raise
        except LedgerError as exc:
            log.warning("could not compare the ledger with the store yet: %s", exc)
            return
        self._checked = True

    async def _check_ledger(self) -> None:
        """Raise :class:`LedgerConflict` if the channel's checkpoints written on the ledger since the last look
        contradict the store (see the module doc); :class:`LedgerError` on outage."""
        core = self._core
        found = await asyncio.to_thread(channel_checkpoints, self.ledger, core.channel, core.identity.sign_public,
                                        self._seen)
        if not found:
            return
        known = self._store.anchor_checkpoints(min(cp.epoch for _, cp in found))
        last = -1 if self._prev is None else self._prev.epoch
        conflicts = checkpoint_conflicts(found, known, last)
        if conflicts:
            raise LedgerConflict(f"the ledger contradicts this author's store: {conflicts[0]}; a store restored "
                                 "from an older copy must not anchor or publish (see streams backup --help)")
        self._seen = found[-1][0]

    async def _loop(self) -> None:
        cfg = self.config
        next_cut = self._clock() + cfg.epoch_interval_ms
        backoff = 0
        retry_at = 0
        failures = 0
        while True:
            now = self._clock()
            due = now >= next_cut or self._kick or len(self._moved) >= cfg.max_heads_per_epoch
            unwritten = sum(1 for r in self._pending if r.state == "built")
            if due and self._moved and unwritten < cfg.max_unwritten and self._checked:
                self._kick = False
                await self._cut(now)
            if now >= next_cut:
                next_cut = now + cfg.epoch_interval_ms
            if (self._pending or not self._checked) and self._clock() >= retry_at:
                try:
                    if not self._checked:
                        await self._check_ledger()  # before the first epoch is cut or written
                        self._checked = True
                        if not self._pending:
                            self._answered()
                            continue
                    progressed = await self._advance()
                    backoff = 0
                    self._answered()
                    retry_at = 0 if progressed else self._clock() + cfg.confirm_poll_ms
                except (LedgerError, LocalProtocolError) as exc:
                    # Outage, or a ledger answer we cannot use: keep the rows, retry later (THREATS 7: queued
                    # durably, resumed) -- the anchoring task must never die on it.
                    backoff = min(max(backoff * 2, cfg.retry_min_ms), cfg.retry_max_ms)
                    retry_at = self._clock() + backoff
                    if self.last_error is None:
                        log.warning("ledger unavailable, %d epoch(s) queued: %s", len(self._pending), exc)
                        self._report(LedgerStatus(False, len(self._pending), f"{type(exc).__name__}: {exc}"))
                    self.last_error = exc
                    failures += 1
                    restart = getattr(self.ledger, "restart", None)
                    if callable(restart) and failures % cfg.restart_after == 0:
                        # Belt and braces: a fresh worker (a fresh client, fresh connections) after repeated
                        # failures.  The known cause -- the SDK's sticky "no healthy node" -- is fixed in
                        # IotaLedger itself (ignore_node_health).
                        with contextlib.suppress(StreamsError):
                            await asyncio.to_thread(restart)
                else:
                    failures = 0
            now = self._clock()
            wake_at = next_cut if not self._pending else min(next_cut, max(retry_at, now))
            if self._pending and retry_at <= now:
                continue
            self._wake.clear()
            # Not asyncio.wait_for: on Python 3.11, a wake (kick) in the turn stop() cancels us makes it return
            # instead of raising -- the cancellation swallowed, this loop never ends, and close() waits for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake_at - now, 1) / 1000):
                    await self._wake.wait()

    def _answered(self) -> None:
        """The ledger answered: after an outage, say so (once)."""
        if self.last_error is not None:
            log.info("ledger available again, %d epoch(s) queued", len(self._pending))
            self._report(LedgerStatus(True, len(self._pending)))
        self.last_error = None

    async def _cut(self, now: int) -> None:
        take = list(self._moved.items())[: self.config.max_heads_per_epoch]
        for k, _ in take:
            del self._moved[k]
        heads = self._core.anchor_heads([k for k, _ in take], dict(take))
        if not heads:
            return
        prev = self._prev
        ts = now if prev is None else max(now, prev.timestamp_ms)
        row, tree = await asyncio.to_thread(_build, self._core, heads, prev, ts)
        self._store.anchor_add(row)  # durable before the ledger hears of it
        self._prev = EpochCheckpoint.decode(row.checkpoint)
        self._pending.append(row)
        self._trees[row.epoch] = tree

    async def _advance(self) -> bool:
        """Write and confirm the oldest pending epoch.  True if it was confirmed (go on at once)."""
        row = self._pending[0]
        checkpoint = EpochCheckpoint.decode(row.checkpoint)
        if row.state == "built":
            await self._check_ledger()  # what was written since the last look (another instance, say)
            anchor_id = await asyncio.to_thread(self.ledger.append, ANCHOR_TAG, row.checkpoint)
            self.ledger_writes += 1
            self._store.anchor_written(row.epoch, anchor_id)
            row = AnchorRow(row.epoch, row.checkpoint, row.heads, row.leaves, anchor_id, "written")
            self._pending[0] = row
        assert row.anchor_id is not None
        try:
            receipt = await asyncio.to_thread(confirm, self.ledger, PendingAnchor(row.anchor_id, checkpoint))
        except (VerificationError, UnknownAnchor) as exc:
            # The ledger holds something else under that id, or nothing (a node that lost an unconfirmed
            # block): the write did not land as ours.  Write again.
            log.error("ledger entry %s is not our checkpoint (%s); writing epoch %d again", row.anchor_id, exc,
                      row.epoch)
            self._pending[0] = AnchorRow(row.epoch, row.checkpoint, row.heads, row.leaves, None, "built")
            return False
        if receipt is None:
            return False
        records = [
            AnchorRecord(b, p, s, h, ke, row.epoch, row.anchor_id, row.checkpoint, i, len(row.leaves), (), True,
                         False)
            for i, (b, p, s, h, ke) in enumerate(row.heads)
        ]
        self._store.anchor_confirmed(row.epoch, records)
        self._pending.pop(0)
        self._report(EpochAnchored(row.epoch, row.anchor_id, len(records)))
        tree = self._tree(row.epoch, row)
        for r in records:
            self._anchored[(r.branch, r.publisher)] = r
            if tree is not None:
                proof = InclusionProof(row.epoch, r.index, r.tree_size, tuple(tree.inclusion_proof(r.index)))
                self._core.anchor_proof(r.branch, r.publisher, r.seq, r.hash, r.key_epoch, checkpoint,
                                        row.anchor_id, proof)
        # Keep only recent trees in memory (restore proofs of older epochs rebuild theirs from the store).
        for e in [e for e in self._trees if e < row.epoch]:
            del self._trees[e]
        result = self._send()
        if asyncio.iscoroutine(result):
            await result
        return True

    def _tree(self, epoch: int, row: AnchorRow | None = None) -> merkle.MerkleTree | None:
        tree = self._trees.get(epoch)
        if tree is None:
            row = row or self._store.anchor(epoch)
            if row is None:
                return None
            try:
                tree = merkle.MerkleTree(row.leaves)
            except (ValueError, StreamsError):
                return None
            self._trees[epoch] = tree
        return tree


def _build(core: AuthorCore, heads: list[tuple[ChainHead, int]], prev: EpochCheckpoint | None,
           ts: int) -> tuple[AnchorRow, merkle.MerkleTree]:
    """Worker thread: blinded leaves, tree, signed checkpoint, and the store row in leaf order."""
    epoch = build_epoch(core.channel, [h for h, _ in heads], prev, ts, core.identity.sign)
    n = len(heads)
    ordered: list[tuple[bytes, int, int, bytes, int]] = [(b"", 0, 0, b"", 0)] * n
    leaves: list[bytes] = [b""] * n
    for h, key_epoch in heads:
        i = epoch.proofs[(h.branch, h.publisher)].index
        ordered[i] = (h.branch, h.publisher, h.seq, h.hash, key_epoch)
        leaves[i] = h.leaf
    row = AnchorRow(epoch.checkpoint.epoch, epoch.payload, ordered, leaves, None, "built")
    return row, merkle.MerkleTree(leaves)
