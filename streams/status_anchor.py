"""Status lists anchored on the ledger, so that a revocation cannot be hidden (THREATS 5, 6, 7).

A Bitstring Status List credential (:mod:`streams.credentials`) says which credentials its issuer revoked.  A
verifier that is handed an *older* list -- by a relay, a cache, or an issuer that shows different lists to
different verifiers -- would miss a revocation.  Here the issuer anchors every version of a list on the ledger::

    payload = msgpack([2, list_id, issuer_did, version, digest, sig])
    digest  = SHA-256(JCS(status list credential))                       (credentials.status_list_digest)
    sig     = Ed25519(issuer, BLAKE2b-256(person="streams.v1.stat",
                                          msgpack([2, list_id, issuer_did, version, digest])))

under the ledger tag ``streams.statuslist.v1``.  ``version`` (an unsigned 64-bit integer, signed with the rest)
numbers the issuer's versions of that list: :func:`publish_status_list` takes one more than the highest the
issuer already anchored for the list on that ledger.  :class:`AnchoredStatusLists` accepts a status list only if
its digest is the one its issuer anchored with the **highest version** for that list id, in a confirmed ledger
write.  The ledger order does not matter: anyone can write to a public ledger, including copies of the issuer's
own earlier (signed, public) anchors, so an entry whose version is not above the highest seen is ignored
(re-appending an old anchor cannot roll a revocation back), and so are anchors not validly signed by the list's
issuer (they cannot displace the issuer's own).  Two different digests anchored by the issuer under the same
highest version (two revocations racing) are ambiguous: the list is unavailable until the issuer anchors a
higher version.  Entries of the first format, ``[1, list_id, issuer_did, digest, sig]`` (no version, so
replayable), count as version 0: one of them is used only while the issuer anchored nothing else for that list.
Anything else -- no anchor, a newer anchor than the list held, a list from another issuer, a list with no JCS form
(so no digest) -- makes the lookup
fail closed (:class:`~streams.credentials.StatusUnavailable` in the credential check, so the subscription is
refused and the subscriptions it admitted are revoked at the next re-check).

Scanning needs a ledger that can be read by position (the embedded ledger: :meth:`EmbeddedLedger.size`); the
IOTA ledger has no index here, so it is not supported as a status-list ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import msgpack

from . import _crypto
from .credentials import CredentialError, StatusListLookup, status_list_digest
from .errors import DecodeError, LocalProtocolError, VerificationError
from .identity import Identity, PublicIdentity
from .ledger.base import DamagedEntry, Ledger

__all__ = ["STATUS_TAG", "AnchoredStatusLists", "StatusAnchor", "decode_status_anchor", "next_status_version",
           "publish_status_list", "status_anchor_payload", "superseded_status_digests"]

STATUS_TAG: Final = b"streams.statuslist.v1"
_SCAN_PAGE: Final = 1000  #: status anchors read per ledger query
_L = TypeVar("_L", bound="_Latest")
P_STATUS: Final = b"streams.v1.stat"
_MAX_VERSION: Final = 2**64 - 1
_log = logging.getLogger("streams.status")


class _ScannableLedger(Ledger, Protocol):
    def scan(self, tag: bytes, start: int = 1, limit: int = 10_000) -> list[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class StatusAnchor:
    """One verified anchor of a status list version."""

    list_id: str
    issuer: str
    digest: bytes
    version: int = 0  #: the issuer's version number of the list (0 for an anchor of the first format)


def _signed_part(list_id: str, issuer: str, digest: bytes, version: int | None) -> bytes:
    part = [1, list_id, issuer, digest] if version is None else [2, list_id, issuer, version, digest]
    return msgpack.packb(part, use_bin_type=True)  # type: ignore[no-any-return]


def status_anchor_payload(issuer: Identity, status_list_credential: Mapping[str, Any], version: int) -> bytes:
    """The ledger payload anchoring this version of a status list, signed by its issuer; ``version`` must be
    above every version the issuer anchored for this list before (verifiers ignore the others).

    Raises :class:`~streams.errors.LocalProtocolError` if the credential has no string ``id`` or another issuer,
    or ``version`` is not in 1..2**64-1."""
    list_id = status_list_credential.get("id")
    if not isinstance(list_id, str):
        raise LocalProtocolError("a status list credential needs a string id")
    if status_list_credential.get("issuer") != issuer.did:
        raise LocalProtocolError("only the list's issuer anchors it")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _MAX_VERSION:
        raise LocalProtocolError("a status anchor version is an integer in 1..2**64-1")
    digest = status_list_digest(status_list_credential)
    sig = issuer.sign(_crypto.hash32(P_STATUS, _signed_part(list_id, issuer.did, digest, version)))
    return msgpack.packb([2, list_id, issuer.did, version, digest, sig],  # type: ignore[no-any-return]
                         use_bin_type=True)


def _scanned(ledger: Ledger, state: _L) -> _L:
    """``state`` after a scan of every status anchor on ``ledger``, confirmed or not.  Raises
    :class:`~streams.errors.LocalProtocolError` for a ledger that cannot be scanned (IOTA)."""
    if not callable(getattr(ledger, "scan", None)):
        raise LocalProtocolError("status lists are anchored on a ledger read by position (sqlite:PATH)")
    state.scan(ledger, confirmed_only=False)  # type: ignore[arg-type]
    return state


def _highest(ledger: Ledger, list_id: str, issuer: str) -> _Best | None:
    """The highest-version anchor ``issuer`` made for ``list_id`` on ``ledger``, confirmed or not."""
    return _scanned(ledger, _Latest()).best.get((list_id, issuer))


def next_status_version(ledger: Ledger, list_id: str, issuer: str) -> int:
    """One more than the highest version ``issuer`` anchored for ``list_id`` on ``ledger`` (confirmed or not),
    1 if none.  Raises :class:`~streams.errors.LocalProtocolError` for a ledger that cannot be scanned (IOTA)."""
    best = _highest(ledger, list_id, issuer)
    version = 1 if best is None else best.anchor.version + 1
    if version > _MAX_VERSION:
        raise LocalProtocolError("this status list has no version number left")
    return version


def superseded_status_digests(ledger: Ledger, list_id: str, issuer: str) -> frozenset[bytes]:
    """The digests of the versions of ``list_id`` that ``issuer`` anchored on ``ledger`` (confirmed or not) and
    has since superseded: anchored under a version number below its highest, and not anchored again under it.

    An issuer must not change such a version: an older copy of its list (validly signed, put back by whoever can
    write the file) would be re-signed and anchored as the newest, undoing the revocations made since.  (A
    version that was never anchored -- written by a ``revoke`` whose append failed -- is not in it: that one is
    changed again to retry.)  Raises :class:`~streams.errors.LocalProtocolError` for a ledger that cannot be
    scanned (IOTA)."""
    state = _scanned(ledger, _AllVersions((list_id, issuer)))
    best = state.best.get((list_id, issuer))
    if best is None:
        return frozenset()
    top = {d for v, d in state.versions if v == best.anchor.version}
    return frozenset(d for v, d in state.versions if v < best.anchor.version and d not in top)


def publish_status_list(ledger: Ledger, issuer: Identity, status_list_credential: Mapping[str, Any]) -> str:
    """Anchor a status list version (after issuing or revoking) under the next version number (see
    :func:`next_status_version`); returns the ledger's anchor id.

    Two issuer processes anchoring the same list at once may pick the same version: verifiers then refuse
    the list (fail closed) until one of them anchors again."""
    list_id = status_list_credential.get("id")
    if not isinstance(list_id, str):
        raise LocalProtocolError("a status list credential needs a string id")
    version = next_status_version(ledger, list_id, issuer.did)
    return ledger.append(STATUS_TAG, status_anchor_payload(issuer, status_list_credential, version))


def decode_status_anchor(data: bytes) -> StatusAnchor:
    """Parse and verify an anchor payload (either format).  Raises :class:`DecodeError` (malformed) or
    :class:`VerificationError` (not signed by the issuer it names)."""
    try:
        v = msgpack.unpackb(data, raw=False, max_bin_len=4096, max_str_len=4096, max_array_len=8, max_map_len=0)
    except Exception as exc:  # any msgpack failure on ledger data means "malformed"
        raise DecodeError("status anchor: not valid msgpack") from exc
    if not isinstance(v, list) or not v:
        raise DecodeError("status anchor: expected a msgpack array")
    if v[0] == 1 and len(v) == 5:
        _, list_id, issuer, digest, sig = v
        version: int | None = None
    elif v[0] == 2 and len(v) == 6:
        _, list_id, issuer, version, digest, sig = v
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _MAX_VERSION:
            raise DecodeError("status anchor: version must be an integer in 1..2**64-1")
    else:
        raise DecodeError("status anchor: expected [2, list_id, issuer, version, digest, sig]")
    if (not isinstance(list_id, str) or not isinstance(issuer, str) or not isinstance(digest, bytes)
            or len(digest) != 32 or not isinstance(sig, bytes) or len(sig) != 64):
        raise DecodeError("status anchor: malformed list id, issuer, digest or signature")
    pub = PublicIdentity.from_did(issuer)  # DecodeError for a DID that is not an Ed25519 did:key
    pub.verify(_crypto.hash32(P_STATUS, _signed_part(list_id, issuer, digest, version)), sig)
    return StatusAnchor(list_id, issuer, digest, version or 0)


@dataclass(slots=True)
class _Best:
    anchor: StatusAnchor
    ambiguous: bool = False  #: another digest was anchored under the same version


class _Latest:
    """The highest-version verified anchor of each (list id, issuer), built by scanning a ledger in order."""

    def __init__(self) -> None:
        self.next = 1  # embedded ledger positions start at 1
        self.best: dict[tuple[str, str], _Best] = {}

    def scan(self, ledger: _ScannableLedger, *, confirmed_only: bool) -> None:
        """Read the status anchors written since the last scan (append-only: a scan resumes where it ended).  The
        ledger lists the entries that exist, in position order: a position left empty, or a row added to the file
        by hand past the end or of the wrong types, is passed over -- never a failure of every later lookup."""
        while True:
            rows = ledger.scan(STATUS_TAG, self.next, _SCAN_PAGE)
            for anchor_id, data in rows:
                try:
                    if confirmed_only and not ledger.status(anchor_id).confirmed:
                        return  # not final yet: look again next time
                except DamagedEntry as exc:  # nobody's record: as another tag's
                    _log.warning("ignoring ledger entry %s: %s", anchor_id, exc)
                    self.next = int(anchor_id) + 1
                    continue
                self.next = int(anchor_id) + 1
                try:
                    a = decode_status_anchor(data)
                except (DecodeError, VerificationError) as exc:
                    _log.info("ignoring a status anchor at %s: %s", anchor_id, exc)
                    continue
                self._add(a, anchor_id)
            if len(rows) < _SCAN_PAGE:
                return

    def _add(self, a: StatusAnchor, anchor_id: str) -> None:
        key = (a.list_id, a.issuer)
        cur = self.best.get(key)
        if cur is None or a.version > cur.anchor.version:
            self.best[key] = _Best(a)
        elif a.version < cur.anchor.version:
            _log.info("ignoring a status anchor at %s: version %d of %s is not the latest (%d)", anchor_id,
                      a.version, a.list_id, cur.anchor.version)
        elif not _crypto.ct_equal(a.digest, cur.anchor.digest):
            _log.warning("status list %s: two versions anchored as version %d (at %s): unavailable until its issuer "
                         "anchors a higher version", a.list_id, a.version, anchor_id)
            cur.ambiguous = True


class _AllVersions(_Latest):
    """:class:`_Latest`, also keeping every verified (version, digest) of one (list id, issuer)."""

    def __init__(self, key: tuple[str, str]) -> None:
        super().__init__()
        self._key = key
        self.versions: list[tuple[int, bytes]] = []

    def _add(self, a: StatusAnchor, anchor_id: str) -> None:
        super()._add(a, anchor_id)
        if (a.list_id, a.issuer) == self._key:
            self.versions.append((a.version, a.digest))


class AnchoredStatusLists:
    """A :class:`~streams.credentials.StatusListLookup` that hands out a status list only if it is the version
    its issuer anchored with the highest version number on ``ledger`` (confirmed writes only); ``source``
    supplies the lists."""

    def __init__(self, ledger: _ScannableLedger, source: StatusListLookup) -> None:
        self._ledger = ledger
        self._source = source
        self._state = _Latest()

    def refresh(self) -> None:
        """Read the ledger entries written since the last refresh."""
        self._state.scan(self._ledger, confirmed_only=True)

    def latest(self, url: str, issuer: str) -> StatusAnchor | None:
        """The highest-version verified anchor of list ``url`` by ``issuer``; ``None`` if there is none or it
        is ambiguous."""
        self.refresh()
        best = self._state.best.get((url, issuer))
        return None if best is None or best.ambiguous else best.anchor

    def get(self, url: str) -> Mapping[str, Any] | None:
        vc = self._source.get(url)
        if vc is None:
            return None
        issuer = vc.get("issuer")
        anchor = self.latest(url, issuer) if isinstance(issuer, str) else None
        try:
            # A list with no JCS form (a NaN, an integer beyond 2**53) has no digest, so it is not the anchored
            # version either: an answer ("not found"), not a lookup that failed, which would leave the subscribers
            # it admitted in place at every re-check (PolicyUnavailable) while its server hides a revocation.
            digest = status_list_digest(vc) if anchor is not None else None
        except CredentialError:
            digest = None
        if anchor is None or digest is None or not _crypto.ct_equal(digest, anchor.digest):
            _log.warning("status list %s is not the version its issuer anchored last: refused", url)
            return None
        return vc
