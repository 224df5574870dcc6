"""Audit a stored channel log against its signatures, its hash links and the ledger (THREATS 2, 4, 7).

:func:`audit_store` opens one party's store (author, member, or auditor -- a member with
:class:`~streams.wire.Permission.AUDIT` holds every chain's key and can never publish) and re-verifies, for
every chain the party may read:

* the branch's grant is signed by the author (the start of every chain's hash links);
* every retained message decodes, hashes to its stored hash, sits at the position it claims, links to its
  predecessor (the first to the grant, or to the anchored head a restored member started from -- only with the
  member's own restore mark of it: the restore flag and row are plain columns; SPEC 13.5), is signed by
  its publisher -- or, for amortized packets, authenticates under the branch key and is covered by a later
  signed checkpoint;
* nothing is missing (holes, a truncated tail), inserted (rows beyond the chain's head or for unknown chains)
  or altered (any edit made directly in the SQLite file breaks a hash, a link or a signature);
* every anchored head: its blinded leaf and inclusion in the signed checkpoint, the message at that position,
  the checkpoint chain (author), and -- with a ledger -- that the ledger holds exactly that checkpoint,
  confirmed;
* no chain of the party's own is stopped by a conflict the author's signed ACK showed (``chain_conflicts``,
  :class:`~streams.events.ChainConflict`: the store is older than the chain it publishes, or another holder of
  the key published there -- its party must not publish from it); a stop row deleted, edited or added in the
  file is bound to its branch's sealed record, and fails the audit as that record altered; so does a chain of the
  party's own, on a branch it may write, with no cursor (the row its stop is read with, deleted);
* with a ledger that can be listed (the embedded one), every checkpoint of this channel the author signed on
  it: none may differ from one the store holds for its epoch, and for an author store none may be of an epoch
  the store does not hold (a store restored from a stale copy: its party would sign a second history).

The result is an :class:`AuditReport`; ``streams audit`` (``streams/_cli/audit.py``) prints it and exits non-zero on
any error.  Warnings (e.g. epochs still queued for the ledger) do not fail an audit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _crypto, merkle
from ._state import BranchState
from .anchor import (
    ChainHead,
    EpochCheckpoint,
    ForkEvidence,
    InclusionProof,
    chain_blind_key,
    check_fork,
    restore_mark_digest,
    verify_inclusion,
)
from .core import AnchorRecord, BranchRecord, ChainRecord
from .errors import (
    DecodeError,
    LedgerError,
    LocalProtocolError,
    StorageError,
    StreamsError,
    VerificationError,
)
from .ledger.anchoring import PendingAnchor, channel_checkpoints, checkpoint_conflicts, confirm, verify_anchored
from .ledger.base import Ledger
from .store import AnchorRow, Store
from .wire import Kind, Permission, SigningMode, decode_frame

__all__ = ["AuditReport", "Finding", "audit_store", "open_ledger"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found.  ``severity`` is "error" (the audit fails) or "warning"."""

    severity: str
    reason: str
    branch: str | None = None  #: hex branch id
    publisher: int | None = None
    seq: int | None = None


@dataclass(slots=True)
class AuditReport:
    """The outcome of :func:`audit_store`.  ``ok`` is True when there is no error finding."""

    ok: bool
    role: str
    did: str
    channel: str
    ledger_checked: bool
    branches: int = 0
    chains: int = 0
    messages: int = 0
    signatures: int = 0
    anchored_heads: int = 0
    anchor_epochs: int = 0
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """A human-readable report."""
        lines = [
            f"audit of {self.role} store ({self.did}) on channel {self.channel[:16]}...: "
            f"{'OK' if self.ok else 'FAILED'}",
            f"  {_n(self.branches, 'branch', 'branches')}, {_n(self.chains, 'chain')}, "
            f"{_n(self.messages, 'message')}, {_n(self.signatures, 'signature')}, "
            f"{_n(self.anchored_heads, 'anchored head')}, {_n(self.anchor_epochs, 'anchor epoch')} "
            f"({'checked against the ledger' if self.ledger_checked else 'no ledger given: not checked on it'})",
        ]
        for f in self.findings:
            where = "" if f.branch is None else f" [branch {f.branch[:12]} publisher {f.publisher} seq {f.seq}]"
            lines.append(f"  {f.severity.upper()}: {f.reason}{where}")
        return "\n".join(lines)


class _Audit:
    def __init__(self, store: Store, ledger: Ledger | None) -> None:
        self.store = store
        self.ledger = ledger
        self.report = AuditReport(True, str(store.meta("role")), store.identity.did,
                                  bytes(store.meta("channel")).hex(), ledger is not None)
        self.channel: bytes = store.meta("channel")
        self.marks: dict[tuple[bytes, int, int], bytes] = {}

    def err(self, reason: str, branch: bytes | None = None, publisher: int | None = None,
            seq: int | None = None, severity: str = "error") -> None:
        if severity == "error":
            self.report.ok = False
        self.report.findings.append(Finding(severity, reason, None if branch is None else branch.hex(), publisher,
                                            seq))

    def run(self) -> AuditReport:
        try:
            branches = {b.id: b for b in self.store.load_branches()}
        except StorageError as exc:
            self.err(f"branch records unreadable: {exc}")
            return self.report
        cursors = {(c.branch, c.publisher): c for c in self.store.load_chains()}
        rows: dict[tuple[bytes, int], list[tuple[int, bytes, bytes]]] = {}
        for rb, rp, rs, rh, rf in self.store.iter_log():
            rows.setdefault((rb, rp), []).append((rs, bytes(rh), bytes(rf)))
        anchored = {(r.branch, r.publisher): r for r in self.store.anchored_heads()}
        # Where restored chains start: every restore proof applied, kept apart from the latest anchored heads
        # (a later epoch's proof replaces those).
        restores: dict[tuple[bytes, int], list[AnchorRecord]] = {}
        for r in self.store.anchor_restores():
            restores.setdefault((r.branch, r.publisher), []).append(r)
        if restores:
            self.marks = self.store.restore_marks()
        self.report.branches = len(branches)
        for key in rows.keys() - cursors.keys():
            self.err(f"{len(rows[key])} log rows for a chain this party does not follow (inserted)", key[0], key[1])
        for key, cursor in sorted(cursors.items()):
            br = branches.get(key[0])
            if br is None:
                self.err("a chain cursor for an unknown branch", key[0], key[1])
                continue
            self.report.chains += 1
            self._chain(br, key[1], cursor.next_seq, cursor.head, rows.get(key, []), restores.get(key, []))
            conflict = br.conflict_of(cursor)
            if conflict:
                self.err(f"the author's signed ACK of this chain through seq {conflict} contradicts this store "
                         "(ChainConflict, kept in it): the store is older than its own chain, or another holder "
                         "of its key published there -- do not publish from it", key[0], key[1], conflict)
        for rec in branches.values():
            # Our own chain's cursor is where its ChainConflict stop is read (load_chains): with its row deleted
            # (and its log rows, which would show up as inserted) the stop would be passed over.  A branch we may
            # write always has it (made with the grant, committed with the record).
            mine = next((p for i, _, p in rec.members if i == rec.me), None)
            if (rec.me and mine is not None and Permission(mine).can_write and rec.state == BranchState.OPEN.value
                    and (rec.id, rec.me) not in cursors):
                self.err("this party's own chain here has no cursor: its row was deleted (the store was altered), "
                         "and a ChainConflict stop kept with it would not be seen -- do not publish from it",
                         rec.id, rec.me)
        for rec in branches.values():
            self._grant(rec)
        epochs: list[AnchorRow] | None = None  # the author's anchor epochs, read once for both checks below
        if self.report.role == "author":
            try:
                epochs = self.store.anchors()
            except StorageError as exc:
                self.err(f"anchor epochs unreadable (altered or damaged): {exc}")
            else:
                self._author_anchors(branches, epochs)
        else:
            self._member_anchors(branches, anchored, restores, cursors)
        if self.ledger is not None:
            self._ledger_history(branches, anchored, restores, epochs)
        for fb, fp, fs, fa, ffb in self.store.forks():
            self._fork(branches, fb, fp, fs, fa, ffb)
        return self.report

    def _fork(self, branches: dict[bytes, BranchRecord], branch: bytes, publisher: int, seq: int, frame_a: Any,
              frame_b: Any) -> None:
        """A ``forks`` row: reported as a fork only if it verifies (the table is not authenticated: a row put in
        that proves nothing must not accuse the publisher)."""
        b = branches.get(branch)
        signer = None if b is None else dict((i, pk) for i, pk, _ in b.members).get(publisher)
        try:
            if signer is None or type(frame_a) is not bytes or type(frame_b) is not bytes:
                raise VerificationError("not a member of a branch this party holds")
            where = check_fork(ForkEvidence(frame_a, frame_b), signer)
            if where != (self.channel, branch, publisher, seq):
                raise VerificationError("the frames are of another position")
        except (DecodeError, VerificationError) as exc:
            self.err(f"a forks row does not verify as fork evidence ({exc}): the store was altered or damaged",
                     branch if type(branch) is bytes else None, publisher if type(publisher) is int else None,
                     seq if type(seq) is int else None)
            return
        self.err("fork evidence held: the publisher signed two different messages here", branch, publisher, seq)

    # -- chains ------------------------------------------------------------------------------------------------

    def _grant(self, b: BranchRecord) -> None:
        try:
            g = decode_frame(b.grant_frame)
            author = dict((i, pk) for i, pk, _ in b.members)[0]
            if g.kind is not Kind.GRANT or not _crypto.ct_equal(g.hash, b.grant_hash) or g.head.branch != b.id:
                raise VerificationError("grant frame does not match the branch record")
            _crypto.verify(author, g.hash, g.sig)
        except (StreamsError, KeyError) as exc:
            self.err(f"branch grant does not verify: {exc}", b.id)

    def _chain(self, b: BranchRecord, publisher: int, next_seq: int, head: bytes,
               rows: list[tuple[int, bytes, bytes]], restores: list[AnchorRecord]) -> None:
        members = {i: pk for i, pk, _ in b.members}
        keys = {(e, p): k for e, p, k in b.keys}
        pub = members.get(publisher)
        if pub is None:
            self.err("chain of a publisher who is not a member", b.id, publisher)
            return
        # Where the chain starts: the grant (seq 0), or the anchored head a restored member started from (its
        # restore proof is verified in _member_anchors).
        first = rows[0][0] if rows else next_seq
        restored = next((r for r in restores if r.seq + 1 == first and self._marked(r)), None)
        if restored is not None:
            exp_seq, prev = restored.seq + 1, restored.hash
        else:
            exp_seq, prev = 1, b.grant_hash if b.epoch == 0 else b""
        uncovered: list[int] = []
        for seq, stored_hash, raw in rows:
            self.report.messages += 1
            try:
                f = decode_frame(raw)
            except DecodeError as exc:
                self.err(f"row does not decode (altered): {exc}", b.id, publisher, seq)
                prev, exp_seq = b"", seq + 1
                continue
            h = f.head
            if f.kind not in (Kind.PACKET, Kind.CHECKPOINT) or h.channel != self.channel or h.branch != b.id \
                    or h.publisher != publisher or h.seq != seq:
                self.err("row holds a message of another position (moved or inserted)", b.id, publisher, seq)
            if not _crypto.ct_equal(f.hash, stored_hash):
                self.err("stored hash does not match the message (altered)", b.id, publisher, seq)
            if seq > exp_seq:
                self.err(f"messages {exp_seq}..{seq - 1} are missing (deleted)", b.id, publisher, exp_seq)
            elif seq < exp_seq:
                self.err("a row before the chain's start (inserted)", b.id, publisher, seq)
            elif prev and not _crypto.ct_equal(h.prev, prev):
                self.err("hash link to the previous message is broken (altered or inserted)", b.id, publisher, seq)
            if f.kind is Kind.PACKET:
                key = keys.get((h.epoch, publisher))
                if key is not None:
                    try:
                        _crypto.aead_decrypt(key, h.nonce, f.aad, f.body)
                    except VerificationError:
                        self.err("ciphertext does not authenticate under the branch key (altered)", b.id, publisher,
                                 seq)
            if f.sig:
                try:
                    _crypto.verify(pub, f.hash, f.sig)
                    self.report.signatures += 1
                    uncovered.clear()
                except VerificationError:
                    self.err("signature does not verify (altered or forged)", b.id, publisher, seq)
            elif b.mode != SigningMode.AMORTIZED:
                self.err("unsigned packet on a signed-each branch (forged)", b.id, publisher, seq)
            else:
                uncovered.append(seq)
            prev, exp_seq = f.hash, seq + 1
        if uncovered:
            self.err(f"{len(uncovered)} packet(s) at the tail not covered by a signed checkpoint yet", b.id,
                     publisher, uncovered[0], severity="warning")
        last = exp_seq - 1
        if last < next_seq - 1:
            self.err(f"messages {last + 1}..{next_seq - 1} are missing at the tail (deleted)", b.id, publisher,
                     last + 1)
        elif last > next_seq - 1:
            self.err("rows beyond the chain's head (inserted)", b.id, publisher, next_seq)
        elif rows and prev and not _crypto.ct_equal(prev, head):
            self.err("the chain's head is not its last message (altered)", b.id, publisher, last)

    # -- anchors -----------------------------------------------------------------------------------------------

    def _blind(self, branches: dict[bytes, BranchRecord], branch: bytes, publisher: int,
               key_epoch: int) -> bytes | None:
        b = branches.get(branch)
        key = None if b is None else {(e, p): k for e, p, k in b.keys}.get((key_epoch, publisher))
        return None if key is None else chain_blind_key(key, branch, publisher, key_epoch)

    def _logged(self, r: tuple[bytes, int, int, bytes]) -> None:
        entry = self.store.log_entry(r[0], r[1], r[2])
        if entry is None:
            self.err("anchored head is not in the log (deleted)", r[0], r[1], r[2])
        elif not _crypto.ct_equal(entry[0], r[3]):
            self.err("the logged message differs from the anchored head (altered, or a fork)", r[0], r[1], r[2])

    def _author_anchors(self, branches: dict[bytes, BranchRecord], rows: list[AnchorRow]) -> None:
        author = self.store.identity.sign_public
        prev: EpochCheckpoint | None = None
        for row in rows:
            self.report.anchor_epochs += 1
            try:
                cp = EpochCheckpoint.decode(row.checkpoint)
                cp.verify(author)
                cp.verify_follows(prev)
            except StreamsError as exc:
                self.err(f"anchor epoch {row.epoch}: checkpoint does not verify or link: {exc}")
                prev = None
                continue
            prev = cp
            # The heads are bound to the signed root and to the log whatever the row's state: the state is a
            # plain column, and a row set back to "built" must not hide a log cut or rewritten below its heads.
            # Every leaf has its head (the heads column is not signed: dropping entries must not drop their checks).
            if len(row.heads) != len(row.leaves) or len(row.leaves) != cp.tree_size:
                self.err(f"anchor epoch {row.epoch}: {len(row.heads)} stored heads and {len(row.leaves)} leaves for "
                         f"a tree of {cp.tree_size} (altered)")
            try:
                root = merkle.MerkleTree(row.leaves).root
            except ValueError:
                root = b""
            if root != cp.root:
                self.err(f"anchor epoch {row.epoch}: the stored leaves do not give the checkpoint's root")
            for i, (b, p, s, h, ke) in enumerate(row.heads):
                blind = self._blind(branches, b, p, ke)
                if blind is None:
                    self.err("no key to recompute an anchored leaf", b, p, s, severity="warning")
                elif i >= len(row.leaves) or ChainHead(b, p, s, h, blind).leaf != row.leaves[i]:
                    self.err(f"anchor epoch {row.epoch}: head does not match its blinded leaf (altered)", b, p, s)
                self._logged((b, p, s, h))
            if row.state != "confirmed":
                self.err(f"anchor epoch {row.epoch} is not confirmed on the ledger yet ({row.state})",
                         severity="warning")
                continue
            self.report.anchored_heads += len(row.heads)
            if self.ledger is not None and row.anchor_id is not None:
                try:
                    if confirm(self.ledger, PendingAnchor(row.anchor_id, cp)) is None:
                        self.err(f"anchor epoch {row.epoch} is not confirmed on the ledger")
                except (VerificationError, DecodeError, LocalProtocolError) as exc:
                    self.err(f"anchor epoch {row.epoch}: the ledger does not hold this checkpoint: {exc}")
                except LedgerError as exc:
                    self.err(f"anchor epoch {row.epoch}: ledger unreachable: {exc}")

    def _ledger_history(self, branches: dict[bytes, BranchRecord], anchored: dict[tuple[bytes, int], AnchorRecord],
                        restores: dict[tuple[bytes, int], list[AnchorRecord]], epochs: list[AnchorRow] | None) -> None:
        """The channel's checkpoints on the ledger against the store's: the store must not be behind the
        history its party signed (author: its anchor ``epochs``, None if they could not be read), nor hold another
        checkpoint than the ledger for an epoch."""
        assert self.ledger is not None
        if self.report.role == "author":
            if epochs is None:
                return  # (unreadable, reported: nothing here to compare the ledger's history with)
            author = self.store.identity.sign_public
            known = {r.epoch: r.checkpoint for r in epochs}
            last: int | None = max(known, default=-1)
        else:
            author = bytes(dict((i, pk) for b in branches.values() for i, pk, _ in b.members if i == 0).get(0, b""))
            recs = [*anchored.values(), *(r for rs in restores.values() for r in rs)]
            known, last = {r.epoch: r.checkpoint for r in recs}, None
        try:
            found = channel_checkpoints(self.ledger, self.channel, author)
        except LedgerError as exc:
            self.err(f"ledger unreachable: {exc}")
            return
        if found is None:
            self.err("this ledger cannot be listed: later or conflicting checkpoints of the channel were not looked "
                     "for", severity="warning")
            return
        for reason in checkpoint_conflicts(found, known, last):
            self.err(reason)

    def _member_anchors(self, branches: dict[bytes, BranchRecord], anchored: dict[tuple[bytes, int], AnchorRecord],
                        restores: dict[tuple[bytes, int], list[AnchorRecord]],
                        cursors: dict[tuple[bytes, int], ChainRecord]) -> None:
        author = bytes(dict((i, pk) for b in branches.values() for i, pk, _ in b.members if i == 0).get(0, b""))
        latest = {(r.branch, r.publisher, r.seq) for r in anchored.values()}
        # The latest anchored heads, and the restore proofs that are no longer a chain's latest (each one is
        # where a restored log starts: it must verify as much as a latest head does).
        earlier = [r for rs in restores.values() for r in rs if (r.branch, r.publisher, r.seq) not in latest]
        for r in [*anchored.values(), *earlier]:
            self.report.anchored_heads += 1
            blind = self._blind(branches, r.branch, r.publisher, r.key_epoch)
            where = (r.branch, r.publisher, r.seq)
            if blind is None:
                self.err("no key to recompute an anchored leaf", *where)
                continue
            head = ChainHead(r.branch, r.publisher, r.seq, r.hash, blind)
            proof = InclusionProof(r.epoch, r.index, r.tree_size, r.path)
            try:
                cp = EpochCheckpoint.decode(r.checkpoint)
                if self.ledger is not None:
                    verify_anchored(self.ledger, r.anchor_id, head, proof, author, cp)
                else:
                    verify_inclusion(head, proof, cp, author)
            except (VerificationError, DecodeError, LocalProtocolError) as exc:
                self.err(f"anchored head does not verify: {exc}", *where)
            except LedgerError as exc:
                self.err(f"ledger unreachable: {exc}", *where)
            b = branches.get(r.branch)
            cursor = cursors.get((r.branch, r.publisher))
            # Our own chain is restored at the author's head over what our store still holds (a store restored
            # from an older copy keeps its older messages, and the chain goes on beyond the head): there only a
            # cursor at or below the head says the flag was set to hide a cut (the tail check in _chain reports
            # the messages missing below it either way).
            own_restart = (b is not None and r.publisher == b.me and cursor is not None and cursor.next_seq > r.seq)
            marked = self._marked(r)
            if r.restored and not marked:
                # The flag and the restore row are plain columns: only our signature says we restarted the chain
                # there holding nothing below it.  Without one it is no start of a log, and its message must be in
                # the log as any anchored head's.
                self.err("a head flagged restored without this party's restore mark (restore flag altered, or "
                         "kept by a version before restore marks)", *where)
            if not marked:
                self._logged((r.branch, r.publisher, r.seq, r.hash))
            elif not own_restart and self._holds_rows(r.branch, r.publisher, r.seq):
                # A chain restarted at this head (a restore proof, after the member lost its state) holds nothing
                # at or below it (older messages are replays): the flag, a plain column, would otherwise exempt a
                # head whose message was deleted from the log.
                self.err("a chain restored at an anchored head holds messages at or below it (restore flag "
                         "altered)", *where)

    def _marked(self, r: AnchorRecord) -> bool:
        """Whether this party's restore mark of a restore proof verifies (SPEC 13.5): the proof is where its log
        of that chain starts.  The flag and the restore row are plain rows anyone who can write the file sets; the
        mark is a signature only the party's key makes."""
        mark = self.marks.get((r.branch, r.publisher, r.seq))
        if not r.restored or mark is None:
            return False
        try:
            _crypto.verify(self.store.identity.sign_public,
                           restore_mark_digest(self.channel, r.branch, r.publisher, r.seq, r.hash), mark)
        except (VerificationError, LocalProtocolError):
            return False
        return True

    def _holds_rows(self, branch: bytes, publisher: int, seq: int) -> bool:
        """Whether the log holds a row of the chain at or below ``seq``.  A damaged one counts (``log_page``
        raises StorageError for a frame that does not match its hash; :meth:`_chain` reports the row)."""
        try:
            return bool(self.store.log_page(branch, publisher, 1, seq, 1))
        except StorageError:
            return True


def audit_store(path: str | os.PathLike[str], passphrase: str | bytes, ledger: Ledger | None) -> AuditReport:
    """Audit the store at ``path`` (see the module docstring).  ``ledger``: check anchors on it (None: only the
    signatures and inclusion proofs, reported as not ledger-checked).

    Raises :class:`~streams.errors.BadPassphrase` for a wrong passphrase and
    :class:`~streams.errors.StorageError` if the file is not a readable store; everything found *in* the store
    is a :class:`Finding`."""
    store = Store.open(path, passphrase, durable=False)
    try:
        return _Audit(store, ledger).run()
    finally:
        store.close()


def open_ledger(spec: str, *, create: bool = False) -> Ledger:
    """``sqlite:PATH`` (an embedded ledger; it must exist unless ``create``) or ``iota:URL`` (a Stardust node).
    Raises :class:`~streams.errors.LocalProtocolError` for another form or a missing file,
    :class:`~streams.errors.LedgerError` if it cannot be opened."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        if not create and not os.path.exists(rest):
            raise LocalProtocolError(f"no embedded ledger at {rest}")
        from .ledger.embedded import EmbeddedLedger

        return EmbeddedLedger(rest)
    if kind == "iota" and rest:
        from .ledger.iota import IotaLedger

        return IotaLedger(rest)
    raise LocalProtocolError("--ledger takes sqlite:PATH or iota:URL")


def _n(count: int, one: str, many: str | None = None) -> str:
    """``1 branch``, ``2 branches``."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
