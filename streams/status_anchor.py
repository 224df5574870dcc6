"""Status lists anchored on the ledger, so that a revocation cannot be hidden (THREATS 5, 6, 7).

A Bitstring Status List credential (:mod:`streams.credentials`) says which credentials its issuer revoked.  A
verifier that is handed an *older* list -- by a relay, a cache, or an issuer that shows different lists to
different verifiers -- would miss a revocation.  Here the issuer anchors every version of a list on the ledger::

    payload = msgpack([1, list_id, issuer_did, digest, sig])
    digest  = SHA-256(JCS(status list credential))                       (credentials.status_list_digest)
    sig     = Ed25519(issuer, BLAKE2b-256(person="streams.v1.stat", msgpack([1, list_id, issuer_did, digest])))

under the ledger tag ``streams.statuslist.v1``, and :class:`AnchoredStatusLists` accepts a status list only if
its digest is the **latest** one its issuer anchored for that list id, in a confirmed ledger write.  Anyone can
write to a public ledger: anchors not signed by the list's issuer are ignored.  Anything else -- no anchor, a
newer anchor than the list held, a list from another issuer -- makes the lookup fail closed
(:class:`~streams.credentials.StatusUnavailable` in the credential check, so the subscription is refused).

Scanning needs a ledger that can be read by position (the embedded ledger: :meth:`EmbeddedLedger.size`); the
IOTA ledger has no index here, so it is not supported as a status-list ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgpack

from . import _crypto
from .credentials import StatusListLookup, status_list_digest
from .errors import DecodeError, LocalProtocolError, VerificationError
from .identity import Identity, PublicIdentity
from .ledger.base import Ledger

__all__ = ["STATUS_TAG", "AnchoredStatusLists", "StatusAnchor", "decode_status_anchor", "publish_status_list",
           "status_anchor_payload"]

STATUS_TAG: Final = b"streams.statuslist.v1"
P_STATUS: Final = b"streams.v1.stat"
_log = logging.getLogger("streams.status")


class _ScannableLedger(Ledger, Protocol):
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StatusAnchor:
    """One verified anchor of a status list version."""

    list_id: str
    issuer: str
    digest: bytes


def _signed_part(list_id: str, issuer: str, digest: bytes) -> bytes:
    return msgpack.packb([1, list_id, issuer, digest], use_bin_type=True)  # type: ignore[no-any-return]


def status_anchor_payload(issuer: Identity, status_list_credential: Mapping[str, Any]) -> bytes:
    """The ledger payload anchoring this version of a status list, signed by its issuer.

    Raises :class:`~streams.errors.LocalProtocolError` if the credential has no string ``id`` or another issuer."""
    list_id = status_list_credential.get("id")
    if not isinstance(list_id, str):
        raise LocalProtocolError("a status list credential needs a string id")
    if status_list_credential.get("issuer") != issuer.did:
        raise LocalProtocolError("only the list's issuer anchors it")
    digest = status_list_digest(status_list_credential)
    sig = issuer.sign(_crypto.hash32(P_STATUS, _signed_part(list_id, issuer.did, digest)))
    return msgpack.packb([1, list_id, issuer.did, digest, sig], use_bin_type=True)  # type: ignore[no-any-return]


def publish_status_list(ledger: Ledger, issuer: Identity, status_list_credential: Mapping[str, Any]) -> str:
    """Anchor a status list version (after issuing or revoking); returns the ledger's anchor id."""
    return ledger.append(STATUS_TAG, status_anchor_payload(issuer, status_list_credential))


def decode_status_anchor(data: bytes) -> StatusAnchor:
    """Parse and verify an anchor payload.  Raises :class:`DecodeError` (malformed) or
    :class:`VerificationError` (not signed by the issuer it names)."""
    try:
        v = msgpack.unpackb(data, raw=False, max_bin_len=4096, max_str_len=4096, max_array_len=8, max_map_len=0)
    except Exception as exc:  # any msgpack failure on ledger data means "malformed"
        raise DecodeError("status anchor: not valid msgpack") from exc
    if (not isinstance(v, list) or len(v) != 5 or v[0] != 1 or not isinstance(v[1], str)
            or not isinstance(v[2], str) or not isinstance(v[3], bytes) or len(v[3]) != 32
            or not isinstance(v[4], bytes) or len(v[4]) != 64):
        raise DecodeError("status anchor: expected [1, list_id, issuer, digest, sig]")
    _, list_id, issuer, digest, sig = v
    pub = PublicIdentity.from_did(issuer)  # DecodeError for a DID that is not an Ed25519 did:key
    pub.verify(_crypto.hash32(P_STATUS, _signed_part(list_id, issuer, digest)), sig)
    return StatusAnchor(list_id, issuer, digest)


class AnchoredStatusLists:
    """A :class:`~streams.credentials.StatusListLookup` that hands out a status list only if it is the latest
    version its issuer anchored on ``ledger`` (confirmed writes only); ``source`` supplies the lists."""

    def __init__(self, ledger: _ScannableLedger, source: StatusListLookup) -> None:
        self._ledger = ledger
        self._source = source
        self._next = 1  # embedded ledger positions start at 1
        self._latest: dict[str, StatusAnchor] = {}

    def refresh(self) -> None:
        """Read the ledger entries written since the last refresh (append-only: a scan resumes where it ended)."""
        size = self._ledger.size()
        while self._next <= size:
            anchor_id = str(self._next)
            if not self._ledger.status(anchor_id).confirmed:
                break  # not final yet: look again next time
            tag, data = self._ledger.read(anchor_id)
            self._next += 1
            if tag != STATUS_TAG:
                continue
            try:
                a = decode_status_anchor(data)
            except (DecodeError, VerificationError) as exc:
                _log.info("ignoring a status anchor at %s: %s", anchor_id, exc)
                continue
            self._latest[a.list_id] = a

    def latest(self, url: str) -> StatusAnchor | None:
        """The latest verified anchor of list ``url``."""
        self.refresh()
        return self._latest.get(url)

    def get(self, url: str) -> Mapping[str, Any] | None:
        vc = self._source.get(url)
        anchor = self.latest(url)
        if vc is None or anchor is None:
            return None
        if vc.get("issuer") != anchor.issuer or not _crypto.ct_equal(status_list_digest(vc), anchor.digest):
            _log.warning("status list %s is not the version its issuer anchored last: refused", url)
            return None
        return vc
