"""``streams audit``: re-verify a stored channel log against its signatures, its hash links and the ledger.

The party's store (author, member or auditor) is opened read-only in effect (nothing is written) and checked as
:func:`streams.audit.audit_store` describes.  Exit status: 0 clean, 1 findings (the report says which), 2 the
audit could not run (no passphrase, a wrong one, not a store, an unusable ``--ledger``).
"""

from __future__ import annotations

import argparse

from ..audit import audit_store, open_ledger
from ..ledger.base import Ledger
from ._common import Result, add_command, add_passphrase_options, read_passphrase

__all__ = ["register"]

_DESCRIPTION = """Re-verify a party's stored channel log (author, member or auditor store), offline: every
retained message decodes, hashes, links to its predecessor and is signed (or covered by a signed checkpoint);
nothing is missing, inserted or altered; every anchored head is in its signed checkpoint and, with --ledger,
the ledger holds exactly that checkpoint; a chain of the party's own stopped by a conflict (the author's signed
ACK contradicts the store: ChainConflict) is an error too.  A member's log of a chain may start at an anchored
head only where it restarted there after losing its state, with its own signed restore mark (a restore proof
kept by a version before restore marks has none: that chain's start is reported missing, and so is a head
flagged restored without one).  With an embedded ledger (sqlite:PATH), every checkpoint of the channel the
author signed on it is also compared with the store's: another checkpoint for an epoch the store holds fails
the audit, and so, for an author store, does any epoch it does not hold (the store is behind the history its
author signed: an older copy, such as a backup, from which the author must not publish).  Nothing is written
(but the one-time upgrade of a store an earlier version wrote: README, Compatibility).

Exit status: 0 clean, 1 findings (the report lists them), 2 the audit could not run (no passphrase, a wrong
one, not a store, an unusable --ledger)."""


def _audit(args: argparse.Namespace) -> Result:
    passphrase = read_passphrase(args)
    ledger: Ledger | None = None
    try:
        if args.ledger:
            ledger = open_ledger(args.ledger)
        report = audit_store(args.store, passphrase, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    return Result(report.to_dict(), report.summary(), 0 if report.ok else 1)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streams audit``."""
    a = add_command(subparsers, "audit", _audit, help="check a stored channel log against its signatures and "
                    "the ledger", description=_DESCRIPTION)
    a.add_argument("--store", required=True, metavar="PATH", help="the party's store file (author, member or auditor)")
    a.add_argument("--ledger", metavar="SPEC", help="sqlite:PATH (embedded ledger) or iota:URL (Stardust node)")
    add_passphrase_options(a, "store")

