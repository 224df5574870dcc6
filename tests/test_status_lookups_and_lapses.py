"""Status lookups that fail during a re-check, attacked: a distrusted issuer (who serves its own status list), a
denied DID, an all-of with one revoked and one unreachable credential are still cut; a late group grant to a
member without a branch of its own reports the gap; an honest HEAD from before a write lapse is no fork; a
store refuses an identity whose DID its seed does not give.  Cores wired together without sockets, real
credentials and status lists."""

from __future__ import annotations

from datetime import timedelta

from streams.credentials import (
    CredentialPolicy,
    StatusList,
    StatusListSource,
    issue_credential,
    issue_status_list_credential,
)
from streams.policy import AllOf, DenyList

from .corenet import Net, ident
from .test_admission import ISSUER, LIST_URL, T0, TYPE, _sub_with

URL_B = "https://issuer.example/status/8"


class _Flaky:
    def __init__(self, src: StatusListSource) -> None:
        self.src = src
        self.down: set[str] = set()

    def get(self, url: str):  # type: ignore[no-untyped-def]
        if url in self.down:
            raise OSError("connection refused")
        return self.src.get(url)


def _lists() -> tuple[StatusList, StatusListSource, _Flaky]:
    bits, src = StatusList(), StatusListSource()
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    src.publish(issue_status_list_credential(ISSUER, URL_B, StatusList(), valid_from=T0))
    return bits, src, _Flaky(src)


def _cred(n: int, url: str, typ: str = TYPE):  # type: ignore[no-untyped-def]
    return issue_credential(ISSUER, ident(n).did, [typ], {"name": "p"}, valid_from=T0,
                            valid_until=T0 + timedelta(days=365), status=(url, 3), created=T0)


def test_a_distrusted_issuer_cannot_keep_its_subscriber_in_by_failing_its_status_list() -> None:
    # The author stops trusting ISSUER (README: "its issuer no longer trusted" revokes).  The distrusted issuer
    # -- the party the author now holds hostile -- controls the host of the status list its credentials name and
    # makes the lookup fail: still_valid looks the status up before it checks trust, the re-check leaves the
    # subscriber "undecided", at every re-check, forever.  Trust needs no lookup to be decided.
    _, _, lists = _lists()
    net = Net.make(policy=CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists), n_subs=1)
    _sub_with(net, "s0", _cred(10, URL_B))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    net.author.policy = CredentialPolicy(TYPE, frozenset(), status_lists=lists)  # SIGHUP: issuer distrusted
    lists.down = {URL_B}
    revoked = net.author.recheck(net.now, dids=True)
    assert b0 in revoked


def test_a_denied_did_is_revoked_even_while_its_status_lookup_fails() -> None:
    # The author puts s0's DID on its deny-list (SIGHUP).  s0's credential's status list is unreachable: the
    # re-check skips s0 entirely (``continue``) -- also the DID check, which needs no status list.
    _, _, lists = _lists()
    cp = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists)
    net = Net.make(policy=AllOf((DenyList(frozenset()), cp)), n_subs=1)
    _sub_with(net, "s0", _cred(10, URL_B))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    net.author.policy = AllOf((DenyList(frozenset({ident(10).did})), cp))
    lists.down = {URL_B}
    revoked = net.author.recheck(net.now, dids=True)
    assert b0 in revoked


def test_an_all_of_with_one_revoked_and_one_unreachable_credential_is_revoked() -> None:
    # AllOf of two credential rules: the first credential is revoked (an answer: AllOf fails whatever the other
    # says), the second's status list is down.  _still_valid evaluates every sub-policy eagerly and the raise wins.
    bits, src, lists = _lists()
    TYPE_B = "OtherCredential"
    cp_a = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists)
    cp_b = CredentialPolicy(TYPE_B, frozenset({ISSUER.did}), status_lists=lists)
    net = Net.make(policy=AllOf((cp_a, cp_b)), n_subs=1)
    s = net.subs["s0"]
    from streams.credentials import present
    ca, cb = _cred(10, LIST_URL), _cred(10, URL_B, TYPE_B)
    s.credential_for_challenge = lambda nonce, ch: present(s.identity, [ca, cb], challenge=nonce, domain=ch,
                                                           created=T0 + timedelta(days=1))
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    bits.set(3)
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    lists.down = {URL_B}
    revoked = net.author.recheck(net.now)
    assert b0 in revoked


def test_a_late_group_grant_to_a_member_without_an_own_branch_reports_the_gap() -> None:
    # As the commit's late-first-grant case, but s0's own branch was revoked alone (it stays a group member, SPEC
    # 11: "a group member without an open branch of its own").  With no open own branch, _on_grant neither waits
    # nor reports: it applies the epoch-1 GRANT at its heads and the group's three earlier messages are skipped
    # with no GapDetected (THREATS 4).
    from streams.events import GapDetected

    from .test_core_grants import _late_first_grant_group

    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    a, s0 = net.author, net.subs["s0"]
    b0 = a.branch_of(ident(10).did)
    g = _late_first_grant_group(net)
    a.revoke(b0)
    a.take_changes()
    for o in a.data_to_send():
        s0.receive(o.data, net.now)
    s0.take_changes()
    s0.data_to_send()
    assert s0.branch_info(b0)[2].value == "closed"
    a.remove_member(g, ident(12).did)  # epoch 1
    a.take_changes()
    rekey = a.data_to_send()[0].data
    ev = s0.receive(rekey, net.now)
    s0.take_changes()
    net.now += 60_000
    ev += s0.receive(rekey, net.now)
    s0.take_changes()
    assert g in s0.branch_ids()
    c = s0._branches[g].chains[0]
    assert c.next_seq == 1 or [e for e in ev if isinstance(e, GapDetected) and e.branch == g], \
        f"cursor at {c.next_seq}, no gap reported"


def test_an_honest_head_delayed_across_a_lapse_is_no_fork() -> None:
    # s0 (read-write) publishes 1 (accepted) and 2 (lost on the way), and sends its HEAD naming 2 (epoch 0), which
    # a relay delays.  Write is taken away (epoch 1, heads: 1) and given back (epoch 2); s0 drops its 2 and signs
    # a new 2 under epoch 2, accepted.  The delayed HEAD arrives: an honest, stale notice (nobody accepted its 2).
    # Before 856b672 it was dropped in silence; now the core raises REPLAY with the frame, the driver's
    # fork_evidence finds no fork, and a Rejected(REPLAY) is reported for an honest member's frame.
    from streams.events import Rejected

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    a, s = net.author, net.subs["s0"]
    b0 = a.branch_of(ident(10).did)
    s.publish(b0, b"one", net.now)
    net.pump_sub("s0")
    s.publish(b0, b"two, lost", net.now)
    s.take_changes()
    s.data_to_send()
    assert s.notify_head(b0)
    s.take_changes()
    (old_head,) = [o.data for o in s.data_to_send()]
    net.lapse_write(b0)
    assert s.publish(b0, b"two, new run", net.now) == 2
    s.take_changes()
    (new2,) = [o.data for o in s.data_to_send()]
    net.to_author(new2, "s0")
    assert a.chain_head(b0, 1)[0] == 3
    ev = a.receive(old_head, net.now, "relay")
    # The core hands it to the driver's fork check (a REPLAY with the frame); against the logged message of the
    # later run there is no fork, and the driver then drops it without a report (api._dispatch).
    [rej] = [e for e in ev if isinstance(e, Rejected)]
    assert rej.frame == old_head and a.fork_evidence(rej.frame, new2) is None


def test_store_create_refuses_an_identity_whose_did_its_seed_does_not_give(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Store.create now takes any object with export_seed() and a str did, and records both unchecked.  A store
    # made from a look-alike whose did is not its seed's reopens as the seed's identity: a party that created
    # its channel (or subscribed) as one DID comes back after a restart as another, without a word.
    from streams.errors import LocalProtocolError
    from streams.store import Store

    from .test_curve_policy import Twin

    real = ident(10)
    twin = Twin(real)
    try:
        store = Store.create(tmp_path / "s.db", twin, "pw", role="subscriber", channel=b"c" * 32,  # type: ignore
                             author_did=ident(1).did, durable=False, opslimit=1, memlimit=8192)
    except LocalProtocolError:
        return  # refused: fine
    store.close()
    again = Store.open(tmp_path / "s.db", "pw", durable=False)
    try:
        assert again.identity.did == twin.did, "the store reopened as another identity"
    finally:
        again.close()
