"""TOML policy files (`streams.policy_file`) and `streams policy check`: strict parsing, deny-wins, and decisions
for allow-listed, denied, credentialed and revoked DIDs -- made by the real CLI and by a loaded policy."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams import credentials as vc
from streams import keystore
from streams.identity import Identity, did_from_public_key, x25519_multibase
from streams.ledger.embedded import EmbeddedLedger
from streams.policy import SubscriptionRequest
from streams.policy_file import FilePolicy, PolicyFileError, load_policy
from streams.wire import Permission
from tests.cliutil import Cli, make_keystore

PASS = "policy test passphrase 5d1e"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
A, B, C = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def request(who: Identity, presentation: bytes = b"", nonce: bytes = b"n" * 16, channel: bytes = b"c" * 32):
    return SubscriptionRequest(channel, who.did, who.sign_public, presentation, nonce)


# --- parsing ---


def test_good_file_parses_and_decides(tmp_path: Path) -> None:
    issuer = Identity.from_seed(b"\x09" * 32)
    lst = vc.issue_status_list_credential(issuer, "https://i.example/sl", vc.StatusList(), valid_from=NOW)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "sl.json").write_text(vc.canonicalize(lst).decode())
    f = write(tmp_path / "p.toml", f"""
# comments are fine
[policy]
mode = "any"
deny = ["{C.did}"]

[[policy.allow]]
did = "{A.did}"
permission = "read"

[[policy.allow]]
did = "{B.did}"

[[policy.credential]]
type = "PaymentProviderCredential"
issuers = ["{issuer.did}"]
permission = "write"
status_lists = ["lists/sl.json"]
""")
    p = load_policy(f)
    assert isinstance(p, FilePolicy)
    d = p.describe()
    assert d["mode"] == "any" and d["deny"] == [C.did]
    assert d["allow"] == [{"did": A.did, "permission": "read"}, {"did": B.did, "permission": "read-write"}]
    assert d["credential"][0]["status_lists"] == [str(tmp_path / "lists" / "sl.json")]  # relative to the file
    assert p.decide(request(A), NOW_MS).permission == Permission.READ
    assert p.decide(request(B), NOW_MS).permission == Permission.READ_WRITE
    assert not p.decide(request(C), NOW_MS).admit
    stranger = Identity.from_seed(b"\x0a" * 32)
    assert not p.decide(request(stranger), NOW_MS).admit


BAD = [
    ("unknown top-level table", "[policy]\n[[policy.allow]]\ndid='{A}'\n[extra]\nx=1\n", "extra"),
    ("unknown key", "[policy]\nmodes='any'\n[[policy.allow]]\ndid='{A}'\n", "policy.modes"),
    ("typo in entry", "[policy]\n[[policy.allow]]\ndid='{A}'\npermision='read'\n", "policy.allow[0].permision"),
    ("bad mode", "[policy]\nmode='some'\n[[policy.allow]]\ndid='{A}'\n", "policy.mode"),
    ("bad permission", "[policy]\n[[policy.allow]]\ndid='{A}'\npermission='admin'\n", "policy.allow[0].permission"),
    ("bad DID", "[policy]\n[[policy.allow]]\ndid='did:key:z6Mknope'\n", "policy.allow[0].did"),
    ("non-canonical DID", "[policy]\n[[policy.allow]]\ndid='{A} '\n", "policy.allow[0].did"),
    ("X25519 key, not Ed25519", "[policy]\n[[policy.allow]]\ndid='did:key:{X}'\n", "policy.allow[0].did"),
    ("bad deny DID", "[policy]\ndeny=['{A}', 'did:web:x']\n[[policy.allow]]\ndid='{B}'\n", "policy.deny[1]"),
    ("deny not a list", "[policy]\ndeny='{A}'\n[[policy.allow]]\ndid='{B}'\n", "policy.deny"),
    ("allowed twice", "[policy]\n[[policy.allow]]\ndid='{A}'\n[[policy.allow]]\ndid='{A}'\n",
     "policy.allow[1].did"),
    ("allowed as itself and as its twin", "[policy]\n[[policy.allow]]\ndid='{A}'\npermission='read'\n"
     "[[policy.allow]]\ndid='{T}'\n", "policy.allow[1].did"),
    ("allowed and denied", "[policy]\ndeny=['{A}']\n[[policy.allow]]\ndid='{A}'\n", "policy.allow[0].did"),
    ("missing did", "[policy]\n[[policy.allow]]\npermission='read'\n", "policy.allow[0].did"),
    ("no issuers", "[policy]\n[[policy.credential]]\ntype='T'\nissuers=[]\n", "policy.credential[0].issuers"),
    ("missing type", "[policy]\n[[policy.credential]]\nissuers=['{A}']\n", "policy.credential[0].type"),
    ("missing status list", "[policy]\n[[policy.credential]]\ntype='T'\nissuers=['{A}']\nstatus_lists=['no.json']\n",
     "policy.credential[0].status_lists[0]"),
    ("status ledger, no lists", "[policy]\n[[policy.credential]]\ntype='T'\nissuers=['{A}']\n"
     "status_ledger='sqlite:l.db'\n", "policy.credential[0].status_ledger"),
    ("admits nobody", "[policy]\ndeny=['{A}']\n", "policy"),
    ("no policy table", "[[allow]]\ndid='{A}'\n", "allow"),
    ("not TOML", "[policy\n", ""),
]


@pytest.mark.parametrize(("text", "key"), [(t, k) for _, t, k in BAD], ids=[n for n, _, _ in BAD])
def test_bad_files_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    x25519 = x25519_multibase(A.kx_public)  # a real key, of the wrong kind
    twin = bytearray(A.sign_public)
    twin[31] ^= 0x80  # the same key negated: the same holder, who signs as either (identity.holder_of)
    f = write(tmp_path / "bad.toml", text.format(A=A.did, B=B.did, X=x25519, T=did_from_public_key(bytes(twin))))
    with pytest.raises(PolicyFileError) as err:
        load_policy(f)
    assert err.value.key == key
    assert str(f) in str(err.value) and isinstance(err.value, ValueError)
    if key:
        assert key in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_mode_all_needs_every_rule_and_grants_the_common_permission(tmp_path: Path) -> None:
    issuer = Identity.from_seed(b"\x09" * 32)
    f = write(tmp_path / "p.toml", f"""
[policy]
mode = "all"
[[policy.allow]]
did = "{A.did}"
permission = "read-write"
[[policy.allow]]
did = "{B.did}"
permission = "read"
[[policy.credential]]
type = "Member"
issuers = ["{issuer.did}"]
permission = "write"
""")
    p = load_policy(f)
    cred = vc.issue_credential(issuer, A.did, ["Member"], {}, valid_from=NOW)
    nonce, channel = os.urandom(16), os.urandom(32)

    def vp(holder: Identity, c: dict[str, object]) -> bytes:
        return vc.present(holder, c, challenge=nonce, domain=channel, created=NOW)

    d = p.decide(request(A, vp(A, cred), nonce, channel), NOW_MS)
    assert d.admit and d.permission == Permission.WRITE  # read-write & write
    assert not p.decide(request(A), NOW_MS).admit  # allow-listed but no credential
    cred_b = vc.issue_credential(issuer, B.did, ["Member"], {}, valid_from=NOW)
    d = p.decide(request(B, vp(B, cred_b), nonce, channel), NOW_MS)
    assert not d.admit and "in common" in d.reason  # read & write: nothing
    # Replay: A's presentation, bound to one challenge, shown against another nonce, is refused.
    assert not p.decide(request(A, vp(A, cred), os.urandom(16), channel), NOW_MS).admit


# --- the CLI, end to end ---


def test_policy_check_decisions_from_toml(tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"PP": PASS})
    issuer, allowed, denied, member = (make_keystore(cli, f"{n}.ks") for n in ("issuer", "allowed", "denied", "member"))
    cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
        "--id", "https://issuer.example/sl/1", "--out", "sl.json").ok()
    for who, did, index in (("member", member, "5"), ("denied", denied, "6")):
        cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--subject", did,
            "--type", "PaymentProviderCredential", "--status-list", "sl.json", "--status-index", index,
            "--out", f"{who}.vc.json").ok()
    write(tmp_path / "policy.toml", f"""
[policy]
mode = "any"
deny = ["{denied}"]
[[policy.allow]]
did = "{allowed}"
permission = "read"
[[policy.credential]]
type = "PaymentProviderCredential"
issuers = ["{issuer}"]
permission = "write"
status_lists = ["sl.json"]
""")
    parsed = cli("policy", "check", "policy.toml", "--json").ok().json
    assert parsed["policy"]["deny"] == [denied] and "decision" not in parsed

    def check(did: str, *extra: str) -> tuple[int, dict[str, object]]:
        r = cli("policy", "check", "policy.toml", "--did", did, "--passphrase-env", "PP", "--json", *extra)
        decision: dict[str, object] = r.json["decision"]
        assert r.json["ok"] is decision["admit"]  # "ok" agrees with the exit status
        return r.returncode, decision

    code, d = check(allowed)
    assert (code, d["admit"], d["permission"]) == (0, True, "read")
    # Denied even with a valid credential from the trusted issuer: deny wins.
    code, d = check(denied, "--credential", "denied.vc.json", "--holder-keystore", "denied.ks")
    assert (code, d["admit"], d["reason"]) == (1, False, "DID on the deny-list")
    code, d = check(member)
    assert (code, d["admit"]) == (1, False)  # no credential presented
    code, d = check(member, "--credential", "member.vc.json", "--holder-keystore", "member.ks")
    assert (code, d["admit"], d["permission"]) == (0, True, "write")
    # Someone else's credential, presented by a holder it is not about, is refused.
    code, d = check(allowed, "--credential", "member.vc.json", "--holder-keystore", "allowed.ks")
    assert (code, d["permission"]) == (0, "read")  # admitted by the allow-list only...
    other = make_keystore(cli, "other.ks")
    code, d = check(other, "--credential", "member.vc.json", "--holder-keystore", "other.ks")
    assert code == 1 and "another DID" in str(d["reason"])  # ...and a stranger gets nothing from it

    # A policy loaded *before* the revocation sees it afterwards (status lists are re-read on change).
    live = load_policy(tmp_path / "policy.toml")
    holder = keystore.load_identity(tmp_path / "member.ks", PASS)
    nonce, channel = os.urandom(16), os.urandom(32)
    cred = json.loads((tmp_path / "member.vc.json").read_text())
    now = datetime.now(UTC).replace(microsecond=0)
    vp = vc.present(holder, cred, challenge=nonce, domain=channel, created=now)
    req = SubscriptionRequest(channel, member, holder.sign_public, vp, nonce)
    assert live.decide(req, int(now.timestamp() * 1000)).admit

    cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--status-list", "sl.json",
        "--index", "5").ok()
    code, d = check(member, "--credential", "member.vc.json", "--holder-keystore", "member.ks")
    assert (code, d["admit"]) == (1, False) and "revoked" in str(d["reason"])
    refused = live.decide(req, int(now.timestamp() * 1000))
    assert not refused.admit and "revoked" in refused.reason

    # Usage errors: a credential without the holder's keystore; a holder keystore of another DID; a bad file.
    r = cli("policy", "check", "policy.toml", "--did", member, "--credential", "member.vc.json")
    assert r.returncode == 2
    r = cli("policy", "check", "policy.toml", "--did", member, "--credential", "member.vc.json",
            "--holder-keystore", "other.ks", "--passphrase-env", "PP")
    assert r.returncode == 2
    write(tmp_path / "bad.toml", "[policy]\n[[policy.allow]]\ndid = 'did:key:nope'\n")
    r = cli("policy", "check", "bad.toml", "--json")
    assert r.returncode == 2 and r.json["type"] == "PolicyFileError" and "policy.allow[0].did" in r.json["error"]
    assert PASS not in cli.all_output()


def test_status_lists_anchored_on_the_ledger_cannot_be_rolled_back(tmp_path: Path) -> None:
    """`status_ledger` in a policy: only the latest version the issuer anchored counts, so handing the verifier
    the list from before a revocation (hiding it) is refused -- fail closed."""
    cli = Cli(tmp_path, {"PP": PASS})
    issuer, member = (make_keystore(cli, f"{n}.ks") for n in ("issuer", "member"))
    created = cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--id", "https://issuer.example/sl/9", "--out", "sl.json", "--ledger", "sqlite:ledger.db",
                  "--json").ok().json
    assert created["anchor"] == "1"
    cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--subject", member,
        "--type", "PaymentProviderCredential", "--status-list", "sl.json", "--status-index", "3",
        "--out", "member.vc.json").ok()
    write(tmp_path / "policy.toml", f"""
[policy]
[[policy.credential]]
type = "PaymentProviderCredential"
issuers = ["{issuer}"]
status_lists = ["sl.json"]
status_ledger = "sqlite:ledger.db"
""")

    def check() -> tuple[int, dict[str, object]]:
        r = cli("policy", "check", "policy.toml", "--did", member, "--credential", "member.vc.json",
                "--holder-keystore", "member.ks", "--passphrase-env", "PP", "--json")
        decision: dict[str, object] = r.json["decision"]
        return r.returncode, decision

    assert check()[0] == 0
    shown = cli("policy", "check", "policy.toml", "--json").ok().json["policy"]["credential"][0]
    assert shown["status_ledger"] == "sqlite:ledger.db"  # as resolved against the policy file (here: cwd)
    assert "status ledger sqlite:ledger.db" in cli("policy", "check", "policy.toml").ok().stdout
    before = (tmp_path / "sl.json").read_bytes()
    revoked = cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
                  "--status-list", "sl.json", "--index", "3", "--ledger", "sqlite:ledger.db", "--json").ok().json
    assert revoked["anchor"] == "2"
    text = cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
               "--status-list", "sl.json", "--index", "4", "--ledger", "sqlite:ledger.db").ok().stdout
    assert "anchored on sqlite ledger entry 3" in text  # (the text said nothing of the anchoring)
    code, d = check()
    assert code == 1 and "revoked" in str(d["reason"])
    (tmp_path / "sl.json").write_bytes(before)  # the revocation is hidden: the old, validly signed list is back
    code, d = check()
    assert code == 1 and "status" in str(d["reason"])  # not the latest anchored version: refused
    # Anyone may write the ledger: re-appending the issuer's own (public, signed) anchor of the old list, twice,
    # does not make it the latest version again.
    with EmbeddedLedger(tmp_path / "ledger.db") as ledger:
        tag, data = ledger.read("1")
        ledger.append(tag, data)
        ledger.append(tag, data)
    code, d = check()
    assert code == 1 and "status" in str(d["reason"])


def test_mode_all_with_two_credential_rules_in_one_presentation(tmp_path: Path) -> None:
    """`mode = "all"` with two credential rules: `policy check` presents both credentials, as a subscriber does,
    and the author's later re-check of what admitted it agrees (each credential against its own rule)."""
    cli = Cli(tmp_path, {"PP": PASS})
    issuer, member = (make_keystore(cli, f"{n}.ks") for n in ("issuer", "member"))
    cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
        "--id", "https://issuer.example/sl/all", "--out", "sl.json").ok()
    for ctype, index in (("PaymentProviderCredential", "1"), ("KYCCredential", "2")):
        cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--subject", member,
            "--type", ctype, "--status-list", "sl.json", "--status-index", index, "--out", f"{ctype}.json").ok()
    write(tmp_path / "policy.toml", f"""
[policy]
mode = "all"
[[policy.credential]]
type = "PaymentProviderCredential"
issuers = ["{issuer}"]
permission = "read-write"
status_lists = ["sl.json"]
[[policy.credential]]
type = "KYCCredential"
issuers = ["{issuer}"]
permission = "read"
status_lists = ["sl.json"]
""")
    creds = ("--credential", "PaymentProviderCredential.json", "--credential", "KYCCredential.json")
    r = cli("policy", "check", "policy.toml", "--did", member, *creds, "--holder-keystore", "member.ks",
            "--passphrase-env", "PP", "--json")
    assert (r.returncode, r.json["decision"]["admit"], r.json["decision"]["permission"]) == (0, True, "read")
    r = cli("policy", "check", "policy.toml", "--did", member, *creds[:2], "--holder-keystore", "member.ks",
            "--passphrase-env", "PP", "--json")
    assert (r.returncode, r.json["decision"]["admit"]) == (1, False)  # one credential is not enough

    policy = load_policy(tmp_path / "policy.toml")
    holder = keystore.load_identity(tmp_path / "member.ks", PASS)
    nonce, channel = os.urandom(16), os.urandom(32)
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    docs = [json.loads((tmp_path / f).read_text()) for f in creds[1::2]]
    vp = vc.present(holder, docs, challenge=nonce, domain=channel, created=now)
    d = policy.decide(SubscriptionRequest(channel, member, holder.sign_public, vp, nonce), now_ms)
    assert d.admit and policy.still_valid(d.evidence, now_ms)
    cli("credential", "revoke", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--status-list", "sl.json",
        "--index", "2").ok()
    assert not policy.still_valid(d.evidence, now_ms)


def test_a_status_list_file_caught_half_written_keeps_the_version_read_before(tmp_path: Path) -> None:
    """A status list is re-read when it changes.  Read while a copy is still writing it (half a JSON document),
    it used to count as no list at all -- every credential it backs refused, and their subscribers revoked at
    the next re-check.  The version read before stays in use until the file parses; a missing file still finds
    nothing (fail closed)."""
    from streams.policy_file import FileStatusLists

    path = tmp_path / "sl.json"
    url = "https://issuer.example/sl"
    path.write_text(json.dumps({"id": url, "version": 1}))
    lists = FileStatusLists((path,))
    assert lists.get(url) == {"id": url, "version": 1}
    whole = json.dumps({"id": url, "version": 2, "padding": "x" * 100})
    path.write_text(whole[: len(whole) // 2])  # caught half-way
    assert lists.get(url) == {"id": url, "version": 1}
    path.write_text(whole)
    assert lists.get(url) == json.loads(whole)
    path.unlink()
    assert lists.get(url) is None


def test_policy_check_warns_of_status_lists_that_cannot_serve_their_rule(tmp_path: Path) -> None:
    """A credential is checked only against a status list of its own issuer: a rule's list published by another
    issuer (a copy-paste slip) would refuse every credential of the rule with a status entry.  `policy check`
    used to accept it silently; it warns now, as it does of a list that does not verify."""
    cli = Cli(tmp_path, {"PP": PASS})
    issuer, other = (make_keystore(cli, f"{n}.ks") for n in ("issuer", "other"))
    for ks, out in (("issuer.ks", "mine.json"), ("other.ks", "theirs.json")):
        cli("credential", "status-list", "create", "--issuer-keystore", ks, "--passphrase-env", "PP",
            "--id", f"https://issuer.example/{out}", "--out", out).ok()
    tampered = json.loads((tmp_path / "mine.json").read_text())
    tampered["id"] = "https://issuer.example/elsewhere"
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))

    def check(*lists: str) -> dict[str, object]:
        rule = f'[[policy.credential]]\ntype = "T"\nissuers = ["{issuer}"]\nstatus_lists = {json.dumps(lists)}\n'
        write(tmp_path / "policy.toml", "[policy]\n" + rule)
        doc: dict[str, object] = cli("policy", "check", "--json", "policy.toml").ok().json
        text = cli("policy", "check", "policy.toml").ok()  # (text mode: the warnings on stderr, as the others)
        assert ("streams: warning:" in text.stderr) == bool(doc["warnings"]) and "warning" not in text.stdout
        return doc

    assert check("mine.json")["warnings"] == []
    [warning] = check("mine.json", "theirs.json")["warnings"]  # type: ignore[misc]
    assert "theirs.json" in warning and other in warning and "not by an issuer of this rule" in warning
    [warning] = check("tampered.json")["warnings"]  # type: ignore[misc]
    assert "tampered.json does not verify" in warning


def test_a_status_list_file_with_a_key_twice_is_refused_when_loaded(tmp_path: Path) -> None:
    """Two values of one key are ambiguous (readers disagree on which counts); presentations refused them, the
    policy file's status lists did not."""
    doc = vc.issue_status_list_credential(A, "https://issuer.example/status/1", vc.StatusList(),
                                          valid_from=datetime(2025, 1, 1, tzinfo=UTC))
    text = json.dumps(doc)
    (tmp_path / "sl.json").write_text('{"id": "https://issuer.example/status/other", ' + text[1:])
    f = write(tmp_path / "p.toml", f"[policy]\n[[policy.credential]]\ntype='T'\nissuers=['{A.did}']\n"
                                   "status_lists=['sl.json']\n")
    with pytest.raises(PolicyFileError, match="key twice") as err:
        load_policy(f)
    assert err.value.key == "policy.credential[0].status_lists[0]"
    (tmp_path / "sl.json").write_text(text)
    assert load_policy(f).describe()["credential"]
