"""`streams credential ...` in subprocesses: issue, show, verify, status lists and revocation -- and attacks on
the files (tampered claims, an un-revoked status list, a forged issuer, a rolled-back or foreign list)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from streams import credentials as vc
from streams.ledger.embedded import EmbeddedLedger
from streams.policy_file import FileStatusLists
from streams.status_anchor import AnchoredStatusLists, decode_status_anchor
from tests.cliutil import Cli, make_keystore

PASS = "issuer passphrase 91c2"
LIST_URL = "https://issuer.example/status/1"


@dataclass
class World:
    cli: Cli
    dir: Path
    issuer: str
    other: str
    holder: str

    def status_list(self, name: str = "sl.json", keystore: str = "issuer.ks", url: str = LIST_URL) -> str:
        self.cli("credential", "status-list", "create", "--issuer-keystore", keystore, "--passphrase-env", "PP",
                 "--id", url, "--out", name).ok()
        return name

    def issue(
        self, out: str, *extra: str, keystore: str = "issuer.ks", subject: str | None = None
    ) -> dict[str, object]:
        r = self.cli("credential", "issue", "--issuer-keystore", keystore, "--passphrase-env", "PP",
                     "--subject", subject or self.holder, "--type", "PaymentProviderCredential", "--out", out,
                     "--json", *extra).ok()
        doc: dict[str, object] = r.json
        return doc

    def verify(self, *args: str) -> tuple[int, dict[str, object]]:
        r = self.cli("credential", "verify", *args, "--json")
        return r.returncode, r.json


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("parties")
    cli = Cli(d, {"PP": PASS})
    return d, {name: make_keystore(cli, f"{name}.ks") for name in ("issuer", "other", "holder")}


@pytest.fixture
def world(parties: tuple[Path, dict[str, str]], tmp_path: Path) -> World:
    src, dids = parties
    for name in dids:
        shutil.copy(src / f"{name}.ks", tmp_path / f"{name}.ks")
    return World(Cli(tmp_path, {"PP": PASS}), tmp_path, dids["issuer"], dids["other"], dids["holder"])


def test_issue_show_verify(world: World) -> None:
    sl = world.status_list()
    issued = world.issue("c.json", "--claim", "name=Acme Payments", "--claim", "tier:=3", "--claim", "eu:=true",
                         "--valid-until", "2099-01-01T00:00:00Z", "--id", "urn:uuid:1234",
                         "--status-list", sl, "--status-index", "42")
    assert issued["ok"] is True and issued["issuer"] == world.issuer and issued["subject"] == world.holder
    assert issued["claims"] == {"name": "Acme Payments", "tier": 3, "eu": True}
    doc = json.loads((world.dir / "c.json").read_text())
    assert doc["credentialStatus"]["statusListIndex"] == "42"
    assert doc["credentialStatus"]["statusListCredential"] == LIST_URL

    shown = world.cli("credential", "show", "c.json", "--json").ok().json
    assert shown["verified"] is False and shown["id"] == "urn:uuid:1234" and shown["ok"] is True
    assert shown["status"] == {"list": LIST_URL, "index": "42", "purpose": "revocation"}
    assert "not verified" in world.cli("credential", "show", "c.json").ok().stdout

    code, out = world.verify("c.json", "--status-list", sl, "--trusted-issuer", world.issuer,
                             "--type", "PaymentProviderCredential", "--subject", world.holder)
    assert (code, out["ok"]) == (0, True)
    # The verified credential really is acceptable to the library as well.
    lists = vc.StatusListSource()
    lists.publish(json.loads((world.dir / sl).read_text()))
    cred = vc.verify_credential(doc, 4_000_000_000_000, status_lists=lists)
    assert cred.claims["tier"] == 3


def test_status_entry_without_its_list_fails_closed(world: World) -> None:
    sl = world.status_list()
    world.issue("c.json", "--status-list", sl, "--status-index", "1")
    code, out = world.verify("c.json")
    assert code == 1
    assert (out["type"], out["failure"]) == ("StatusUnavailable", "status unavailable")


def test_tampered_credential_is_refused(world: World) -> None:
    world.issue("c.json", "--claim", "limit:=100")
    doc = json.loads((world.dir / "c.json").read_text())
    doc["credentialSubject"]["limit"] = 1_000_000
    (world.dir / "c.json").write_text(json.dumps(doc))
    code, out = world.verify("c.json")
    assert code == 1 and out["type"] == "BadProof" and out["failure"] == "bad proof"
    # Swapping the subject for another DID (relaying the credential to someone else) breaks it too.
    world.issue("d.json")
    doc = json.loads((world.dir / "d.json").read_text())
    doc["credentialSubject"]["id"] = world.other
    (world.dir / "d.json").write_text(json.dumps(doc))
    assert world.verify("d.json")[0] == 1


def test_untrusted_issuer_wrong_type_wrong_subject(world: World) -> None:
    world.issue("c.json", keystore="other.ks")
    code, out = world.verify("c.json", "--trusted-issuer", world.issuer)
    assert code == 1 and (out["type"], out["failure"]) == ("CheckFailed", "untrusted issuer")
    code, out = world.verify("c.json", "--type", "AuditorCredential")
    assert code == 1 and out["failure"] == "wrong type"
    code, out = world.verify("c.json", "--subject", world.issuer)
    assert code == 1 and out["failure"] == "wrong subject"
    assert world.verify("c.json", "--trusted-issuer", world.other)[0] == 0
    # A credential claiming the trusted issuer but signed by another key is a forgery.
    doc = json.loads((world.dir / "c.json").read_text())
    doc["issuer"] = world.issuer
    (world.dir / "c.json").write_text(json.dumps(doc))
    code, out = world.verify("c.json", "--trusted-issuer", world.issuer)
    assert code == 1 and out["type"] == "BadProof"


def test_validity_period(world: World) -> None:
    world.issue("c.json", "--valid-from", "2020-01-01", "--valid-until", "2021-01-01T00:00:00+00:00")
    code, out = world.verify("c.json")
    assert code == 1 and (out["type"], out["failure"]) == ("CredentialExpired", "expired")
    assert world.verify("c.json", "--at", "2020-06-01T12:00:00Z")[0] == 0
    code, out = world.verify("c.json", "--at", "2019-12-31T23:59:59Z")
    assert code == 1 and out["failure"] == "not yet valid"


def test_revoke_then_verify_fails_and_rollback_is_detected(world: World) -> None:
    sl = world.status_list()
    world.issue("c.json", "--status-list", sl, "--status-index", "9")
    world.issue("keep.json", "--status-list", sl, "--status-index", "10")
    before = (world.dir / sl).read_text()
    assert world.verify("c.json", "--status-list", sl)[0] == 0

    r = world.cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--status-list", sl, "--index", "9", "--json").ok().json
    assert r["set"] is True and r["was_set"] is False
    after = json.loads((world.dir / sl).read_text())
    assert r["digest"] == vc.status_list_digest(after).hex()

    code, out = world.verify("c.json", "--status-list", sl)
    assert code == 1 and (out["type"], out["failure"]) == ("CredentialRevoked", "revoked")
    assert world.verify("keep.json", "--status-list", sl)[0] == 0  # the neighbour is untouched

    # Attack: un-revoke by splicing the old (validly signed) bitstring into the new list: the proof breaks.
    forged = dict(after)
    forged["credentialSubject"] = json.loads(before)["credentialSubject"]
    (world.dir / "forged.json").write_text(json.dumps(forged))
    code, out = world.verify("c.json", "--status-list", "forged.json")
    assert code == 1 and out["type"] == "StatusUnavailable"
    # And revoke refuses to re-sign a list whose proof does not verify (it would launder the edit).
    r2 = world.cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                   "--status-list", "forged.json", "--index", "11", "--json")
    assert r2.returncode == 1 and r2.json["type"] == "BadProof"
    # Revocation is final: --clear only lifts suspensions.
    r3 = world.cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                   "--status-list", sl, "--index", "9", "--clear")
    assert r3.returncode == 2 and world.verify("c.json", "--status-list", sl)[0] == 1
    # A new credential at the revoked index would be dead on arrival: refused at issue.
    dead = world.cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                     "--subject", world.holder, "--type", "PaymentProviderCredential", "--status-list", sl,
                     "--status-index", "9", "--out", "dead.json", "--json")
    assert dead.returncode == 2 and "already set" in dead.json["error"] and not (world.dir / "dead.json").exists()


def test_suspension_can_be_lifted(world: World) -> None:
    world.cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--id", LIST_URL, "--purpose", "suspension", "--out", "susp.json").ok()
    world.issue("c.json", "--status-list", "susp.json", "--status-index", "3")
    revoke = ["credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--status-list", "susp.json", "--index", "3"]
    world.cli(*revoke).ok()
    code, out = world.verify("c.json", "--status-list", "susp.json")
    assert code == 1 and out["failure"] == "suspended"
    world.cli(*revoke, "--clear").ok()
    assert world.verify("c.json", "--status-list", "susp.json")[0] == 0


def test_foreign_status_lists_are_refused(world: World) -> None:
    world.status_list("other-sl.json", keystore="other.ks")
    before = (world.dir / "other-sl.json").read_bytes()
    # Issuing against another issuer's list would make the credential unverifiable.
    r = world.cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--subject", world.holder, "--type", "T", "--status-list", "other-sl.json", "--status-index", "1",
                  "--out", "c.json")
    assert r.returncode == 2 and not (world.dir / "c.json").exists()
    # Revoking in another issuer's list is refused and leaves it as it was.
    r = world.cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--status-list", "other-sl.json", "--index", "1")
    assert r.returncode == 2 and (world.dir / "other-sl.json").read_bytes() == before
    # A list with the right URL but published by someone else does not vouch for our issuer's credentials.
    sl = world.status_list()
    world.issue("c.json", "--status-list", sl, "--status-index", "1")
    code, out = world.verify("c.json", "--status-list", "other-sl.json")
    assert code == 1 and out["type"] == "StatusUnavailable"


def test_bad_arguments_are_usage_errors(world: World) -> None:
    base = ["credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--type", "T",
            "--out", "c.json", "--json"]
    for extra in (
        ["--subject", world.holder + " "],  # non-canonical DID
        ["--subject", "did:web:example.com"],
        ["--subject", world.holder, "--claim", "novalue"],
        ["--subject", world.holder, "--claim", "id=did:key:z6Mkforged"],  # the subject id is not a claim
        ["--subject", world.holder, "--claim", "n:=not json"],
        ["--subject", world.holder, "--valid-until", "2030-01-01T00:00:00"],  # no time zone
        ["--subject", world.holder, "--valid-from", "2030-01-01", "--valid-until", "2029-01-01"],
        ["--subject", world.holder, "--status-index", "3"],  # without --status-list
        # Times whose UTC form is outside the years 1..9999 (an OverflowError traceback, exit 1, before).
        ["--subject", world.holder, "--valid-until", "9999-12-31T23:59:59-14:00"],
        ["--subject", world.holder, "--valid-from", "0001-01-01T00:00:00+14:00"],
    ):
        r = world.cli(*base, *extra)
        assert r.returncode == 2, extra
        assert r.json["ok"] is False and r.json["type"] in ("UsageError", "LocalProtocolError"), (extra, r.json)
    assert not (world.dir / "c.json").exists()
    sl = world.status_list()
    r = world.cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--id", LIST_URL, "--out", sl)
    assert r.returncode == 2 and "--force" in r.stderr  # replacing a list would un-revoke everything
    assert world.cli("credential", "verify", "missing.json").returncode == 2
    r = world.cli("credential", "verify", sl, "--at", "0001-01-01T00:00:00+00:01", "--json")
    assert r.returncode == 2 and r.json["type"] == "UsageError" and "--at" in r.json["error"], r.stdout


def test_show_prints_an_unverified_credential_s_fields_escaped(world: World) -> None:
    """`credential show` printed the string fields of an unverified file as they were: a newline in "issuer"
    printed a forged `subject:` line, and a terminal escape (here: conceal) could hide the "(not verified)" line
    that follows.  What is not printable is escaped now; --json was and is unaffected."""
    doc = {"issuer": "did:key:z6MkIssuer\nsubject: did:key:z6MkForged\x1b[8m", "credentialSubject": {"id": "x"}}
    (world.dir / "odd.json").write_text(json.dumps(doc))
    r = world.cli("credential", "show", "odd.json").ok()
    lines = r.stdout.splitlines()
    assert not [x for x in lines if x.startswith("subject: did:key:z6MkForged")], lines
    assert "\x1b" not in r.stdout and lines[-1].startswith("(not verified"), repr(r.stdout)
    assert world.cli("credential", "show", "odd.json", "--json").ok().json["issuer"] == doc["issuer"]


def test_a_file_with_nan_or_infinity_is_not_json(world: World) -> None:
    """Python's JSON parser takes NaN and Infinity, which JSON (RFC 8259) has not: `credential show --json` of
    such a file printed them back -- a document strict parsers refuse, and jq turned into null and 1.8e308.
    Such a file is refused now as not JSON (exit 2), and every document printed is strict JSON."""
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} in the output")}
    for text in ('{"validFrom": NaN, "credentialSubject": {"id": "x"}}', '{"credentialSubject": {"n": -Infinity}}'):
        (world.dir / "odd.json").write_text(text)
        for cmd in (["show", "odd.json"], ["verify", "odd.json"]):
            r = world.cli("credential", *cmd, "--json")
            doc = json.loads(r.stdout, **strict)
            assert r.returncode == 2 and doc["type"] == "UsageError" and "not valid" in doc["error"], (cmd, r.stdout)


def test_a_file_with_a_number_beyond_a_float_is_not_printed_as_infinity(world: World) -> None:
    """A number too large for a float (1e400, -1e400) is JSON, but Python reads it as infinity, which
    `credential show --json` printed back as `Infinity`: not JSON, as NaN and Infinity in the file were.  It is
    refused the same way (exit 2), and every document printed is strict JSON."""
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} in the output")}
    for text in ('{"credentialSubject": {"id": "x", "n": 1e400}}', '{"validFrom": -1E+999}'):
        (world.dir / "odd.json").write_text(text)
        for cmd in (["show", "odd.json"], ["verify", "odd.json"]):
            r = world.cli("credential", *cmd, "--json")
            doc = json.loads(r.stdout, **strict)
            assert r.returncode == 2 and doc["type"] == "UsageError" and "not valid" in doc["error"], (cmd, r.stdout)


def test_a_status_list_file_whose_type_is_not_a_list_of_strings_is_a_usage_error(world: World) -> None:
    """A --status-list file with `"type": 5` raised TypeError (`in` an int): a traceback, exit 1.  And a
    `"type"` string merely containing the name ("NotABitstringStatusListCredential") passed the check
    (`in` a str is a substring test)."""
    sl = world.status_list()
    good = json.loads((world.dir / sl).read_text())
    for bad_type in (5, "NotABitstringStatusListCredential", {"BitstringStatusListCredential": 1}):
        (world.dir / "odd.json").write_text(json.dumps({**good, "type": bad_type}))
        for argv in (["verify", "odd.json", "--status-list", "odd.json"],
                     ["issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--subject", world.holder,
                      "--type", "T", "--status-list", "odd.json", "--status-index", "7", "--out", "c.json"],
                     ["revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--status-list",
                      "odd.json", "--index", "7"]):
            r = world.cli("credential", *argv, "--json")
            assert r.returncode == 2 and r.json["type"] == "UsageError", (bad_type, argv, r.stdout)
            assert "BitstringStatusListCredential" in r.json["error"], (bad_type, argv, r.stdout)
    assert not (world.dir / "c.json").exists()


def _refusing_ledger(path: Path) -> None:
    """A real embedded ledger that opens and reads fine but refuses every append (a SQLite trigger)."""
    EmbeddedLedger(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'ledger refuses'); END")
    db.commit()
    db.close()


def test_a_failed_ledger_step_leaves_the_list_file_alone(world: World) -> None:
    sl = world.status_list()
    before = (world.dir / sl).read_bytes()
    revoke = ["credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--status-list", sl,
              "--index", "3", "--json", "--ledger"]
    # A bad spec, an IOTA ledger (status anchors are read by position: embedded ledgers only), a path that
    # cannot be opened: exit 2 and the list file is untouched (it used to be rewritten with the bit set).
    for spec in ("bogus", "iota:http://127.0.0.1:9", "sqlite:no/such/dir/ledger.db"):
        r = world.cli(*revoke, spec)
        assert r.returncode == 2 and r.json["ok"] is False, (spec, r.stdout)
        assert (world.dir / sl).read_bytes() == before, spec
    create = ["credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--id", LIST_URL + "/2", "--out", "new.json", "--ledger"]
    for spec in ("bogus", "sqlite:no/such/dir/ledger.db"):
        assert world.cli(*create, spec).returncode == 2
        assert not (world.dir / "new.json").exists(), spec
    # The ledger opens but the append fails: the new list is in place, and the error says it is not anchored.
    _refusing_ledger(world.dir / "refusing.db")
    r = world.cli(*revoke, "sqlite:refusing.db")
    assert r.returncode == 2 and r.json["type"] == "LedgerError"
    assert f"{sl} was rewritten (index 3 set)" in r.json["error"] and "run the command again" in r.json["error"]
    bits = vc.StatusList.decode(json.loads((world.dir / sl).read_text())["credentialSubject"]["encodedList"])
    assert bits.get(3)
    with EmbeddedLedger(world.dir / "refusing.db") as ledger:
        assert ledger.size() == 0
    # With a working ledger each version is anchored with the next version number.
    r1 = world.cli(*revoke, "sqlite:ledger.db").ok().json
    r2 = world.cli(*revoke[:-3], "4", "--json", "--ledger", "sqlite:ledger.db").ok().json
    with EmbeddedLedger(world.dir / "ledger.db") as ledger:
        anchors = [decode_status_anchor(ledger.read(a)[1]) for a in (r1["anchor"], r2["anchor"])]
    assert [(a.version, a.digest.hex()) for a in anchors] == [(1, r1["digest"]), (2, r2["digest"])]


def test_revoke_with_a_ledger_refuses_an_older_copy_of_the_list(world: World) -> None:
    # The party the status ledger guards against can write the list file (a shared or mirrored directory, the
    # web server the issuer publishes to and copies back from).  It puts back the issuer's own earlier list --
    # validly signed, so `revoke`'s proof check passes -- from before a revocation.  The issuer's next `revoke
    # --ledger` then re-signed that older bitstring with one more bit and anchored it as the newest version:
    # the earlier revocation was undone by the issuer's own signature and anchor, and every verifier reading
    # the ledger accepted the list.  The ledger knows the version last anchored: revoke must refuse another.
    world.cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--id", LIST_URL, "--out", "sl.json", "--ledger", "sqlite:ledger.db").ok()
    world.issue("first.json", "--status-list", "sl.json", "--status-index", "1")
    world.issue("second.json", "--status-list", "sl.json", "--status-index", "2")
    v1 = (world.dir / "sl.json").read_bytes()
    revoke = ["credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--status-list", "sl.json", "--ledger", "sqlite:ledger.db", "--json", "--index"]
    world.cli(*revoke, "1").ok()
    v2 = (world.dir / "sl.json").read_bytes()
    (world.dir / "sl.json").write_bytes(v1)  # the attacker's rollback
    r = world.cli(*revoke, "2")
    assert r.returncode == 2, r.stdout
    assert "anchored" in r.json["error"]
    assert (world.dir / "sl.json").read_bytes() == v1  # nothing re-signed, nothing anchored
    now_ms = int(time.time() * 1000)
    first = json.loads((world.dir / "first.json").read_text())
    with EmbeddedLedger(world.dir / "ledger.db") as ledger:
        assert ledger.size() == 2
        lists = AnchoredStatusLists(ledger, FileStatusLists((world.dir / "sl.json",)))
        with pytest.raises(vc.StatusUnavailable):  # v1 is not the latest anchored version: refused
            vc.verify_credential(first, now_ms, status_lists=lists)
        # Given the current list back, revoke works again, and both credentials are revoked.
        (world.dir / "sl.json").write_bytes(v2)
        world.cli(*revoke, "2").ok()
        for name in ("first.json", "second.json"):
            with pytest.raises(vc.CredentialRevoked):
                vc.verify_credential(json.loads((world.dir / name).read_text()), now_ms, status_lists=lists)
    # A version that was never anchored (written by a revoke whose append failed) is not refused: the documented
    # retry ("run the command again") works on the same ledger.
    db = sqlite3.connect(world.dir / "ledger.db")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'ledger refuses'); END")
    db.commit()
    failed = world.cli(*revoke, "3")
    assert failed.returncode == 2 and "run the command again" in failed.json["error"]
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()
    world.cli(*revoke, "3").ok()


def test_create_with_a_ledger_refuses_a_list_id_already_anchored_unless_forced(world: World) -> None:
    # An empty list created under an id its issuer already anchored, written to a new file (no --force needed
    # for that), was anchored as the newest version: every verifier reading the ledger then took the empty list,
    # and every revocation on the old one was undone.  --force says that is meant (as for replacing --out).
    create = ["credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--id", LIST_URL, "--ledger", "sqlite:ledger.db", "--json", "--out"]
    world.cli(*create, "sl.json").ok()
    world.issue("cred.json", "--status-list", "sl.json", "--status-index", "1")
    world.cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
              "--status-list", "sl.json", "--ledger", "sqlite:ledger.db", "--index", "1").ok()
    r = world.cli(*create, "fresh.json")
    assert r.returncode == 2, r.stdout
    assert "already anchored" in r.json["error"] and "--force" in r.json["error"]
    assert not (world.dir / "fresh.json").exists()
    now_ms = int(time.time() * 1000)
    cred = json.loads((world.dir / "cred.json").read_text())
    with EmbeddedLedger(world.dir / "ledger.db") as ledger:
        assert ledger.size() == 2  # nothing anchored
        lists = AnchoredStatusLists(ledger, FileStatusLists((world.dir / "sl.json",)))
        with pytest.raises(vc.CredentialRevoked):
            vc.verify_credential(cred, now_ms, status_lists=lists)
    # Meant: --force.
    assert world.cli(*create, "fresh.json", "--force").ok().json["anchor"] == "3"


def test_verify_at_judges_the_instant_given_to_the_millisecond(world: World) -> None:
    """``--at`` went through a float (``timestamp() * 1000``): from 2038 some instants came out a millisecond
    early, so a credential valid from exactly that instant was "not yet valid" and one that expired a millisecond
    before it "valid"."""
    from streams._cli._common import to_ms
    from streams.identity import Identity

    at = "2038-01-19T18:27:21.009Z"
    dt = datetime.fromisoformat(at)
    assert to_ms(dt) == 2147538441009  # (int(dt.timestamp() * 1000) is 2147538441008)
    issuer, subject = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    docs = {
        "from.json": vc.issue_credential(issuer, subject.did, ["T"], {}, valid_from=at),
        "until.json": vc.issue_credential(issuer, subject.did, ["T"], {}, valid_from="2038-01-01T00:00:00Z",
                                          valid_until="2038-01-19T18:27:21.008Z"),
    }
    for name, doc in docs.items():
        (world.dir / name).write_text(json.dumps(doc))
    assert world.verify("from.json", "--at", at)[0] == 0
    code, out = world.verify("until.json", "--at", at)
    assert code == 1 and out["failure"] == "expired"


def test_a_file_with_a_key_twice_is_refused_as_ambiguous(world: World) -> None:
    """Python's JSON parser keeps the last of two values of one key, another reader the first: `credential show`
    printed one issuer while `verify` checked the signature over the other (a signed credential and a forged
    first copy of its issuer side by side).  Refused now (exit 2), as presentations already were."""
    world.issue("c.json")
    text = (world.dir / "c.json").read_text()
    assert world.verify("c.json")[0] == 0
    (world.dir / "twice.json").write_text('{"issuer": "' + world.other + '", ' + text.lstrip()[1:])
    for cmd in (["show", "twice.json"], ["verify", "twice.json"]):
        r = world.cli("credential", *cmd, "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 2 and doc["type"] == "UsageError" and "key twice" in doc["error"], (cmd, r.stdout)
