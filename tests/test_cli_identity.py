"""`streams identity ...` and the CLI conventions (--json, exit codes, no secrets printed), in subprocesses."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import stat
import subprocess
import sys
from pathlib import Path

import base58
import pytest

from streams import keystore
from streams.identity import PublicIdentity, public_key_from_did, x25519_multibase
from tests.cliutil import ROOT, Cli, make_keystore

PASS = "correct horse battery staple 7f3a"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"PP": PASS})


def secret_forms(seed: bytes) -> list[str]:
    """Every way a seed would likely be printed."""
    return [
        seed.hex(),
        seed.hex().upper(),
        base64.b64encode(seed).decode(),
        base64.urlsafe_b64encode(seed).decode().rstrip("="),
        base58.b58encode(seed).decode(),
        repr(seed)[2:-1],
    ]


def test_create_then_show_without_passphrase(cli: Cli, tmp_path: Path) -> None:
    created = cli("identity", "create", "--keystore", "me.ks", "--passphrase-env", "PP", "--kdf-fast", "--json").ok()
    doc = created.json
    public_key_from_did(doc["did"])  # a canonical Ed25519 did:key
    assert doc["x25519"] == x25519_multibase(PublicIdentity.from_did(doc["did"]).kx_public)
    assert doc["x25519"].startswith("z6LS")
    ks = tmp_path / "me.ks"
    assert stat.S_IMODE(os.stat(ks).st_mode) == 0o600
    # The file opens with the passphrase and holds that DID.
    assert keystore.load_identity(ks, PASS).did == doc["did"]
    with pytest.raises(keystore.BadPassphrase):
        keystore.load_identity(ks, PASS + "x")
    # `show` needs no passphrase (none in the environment here) and prints the same keys.
    no_pass = Cli(tmp_path)
    shown = no_pass("identity", "show", "--keystore", "me.ks", "--json").ok().json
    assert shown["did"] == doc["did"] and shown["x25519"] == doc["x25519"]
    assert shown["ok"] is True and doc["ok"] is True  # as every command's document
    # Text output and the global --json spelling.
    assert doc["did"] in no_pass("identity", "show", "--keystore", "me.ks").ok().stdout
    assert no_pass("--json", "identity", "show", "--keystore", "me.ks").ok().json["did"] == doc["did"]
    assert no_pass("identity", "--json", "show", "--keystore", "me.ks").ok().json["did"] == doc["did"]  # (refused)


def test_default_kdf_cost_is_moderate(cli: Cli, tmp_path: Path) -> None:
    import json

    cli("identity", "create", "--keystore", "slow.ks", "--passphrase-env", "PP").ok()
    kdf = json.loads((tmp_path / "slow.ks").read_text())["kdf"]
    assert (kdf["opslimit"], kdf["memlimit"]) == (keystore.DEFAULT_OPSLIMIT, keystore.DEFAULT_MEMLIMIT)


def test_passphrase_file_drops_one_newline(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASS + "\n")
    did = cli("identity", "create", "--keystore", "f.ks", "--passphrase-file", "pw", "--kdf-fast", "--json").ok()
    assert keystore.load_identity(tmp_path / "f.ks", PASS).did == did.json["did"]


def test_passphrase_on_command_line_is_refused_and_not_echoed(cli: Cli, tmp_path: Path) -> None:
    for args in (["--passphrase", "hunter2-secret"], ["--passphrase=hunter2-secret"]):
        r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", *args)
        assert r.returncode == 2
        assert "passphrase-env" in r.stderr
        assert "hunter2-secret" not in r.stdout + r.stderr
    assert not (tmp_path / "x.ks").exists()


def test_a_passphrase_given_to_a_command_that_takes_none_is_refused_and_not_echoed(cli: Cli, tmp_path: Path) -> None:
    """`--passphrase SECRET` on a command without passphrase options (identity show, backup, credential show, or
    before the command name) was echoed back in argparse's "unrecognized arguments" error, on stderr and in the
    JSON error document."""
    make_keystore(cli, "k.ks")
    for cmd in (["identity", "show", "--keystore", "k.ks"], ["backup", "--store", "a.db", "--to", "b.db"],
                ["credential", "show", "c.json"], ["identity", "show", "--keystore", "k.ks", "extra"]):
        for args in (["--passphrase", "hunter2-secret"], ["--passphrase=hunter2-secret"]):
            for argv in ([*cmd, *args, "--json"], ["--json", *args, *cmd]):
                r = cli(*argv)
                assert r.returncode == 2, (argv, r.stdout, r.stderr)
                assert r.json["ok"] is False and r.json["type"] == "UsageError", r.stdout
                assert "passphrase-env" in r.json["error"] and "passphrase-env" in r.stderr, (argv, r.stdout)
                assert "hunter2-secret" not in r.stdout + r.stderr, (argv, r.stdout, r.stderr)


def test_a_secret_given_to_a_look_alike_of_the_passphrase_option_is_refused_and_not_echoed(cli: Cli,
                                                                                            tmp_path: Path) -> None:
    """`--password SECRET`, `--pass=SECRET`, `--pwd SECRET` or a misspelt `--passphase SECRET` (another tool's
    habit, a typo) were "unrecognized arguments" that argparse printed back whole, on stderr and in the JSON error
    document -- the leak closed for `--passphrase` itself.  They are refused as it is, without the value."""
    for args in (["--password", "hunter2-secret"], ["--pass=hunter2-secret"], ["--pwd", "hunter2-secret"],
                 ["--passphase", "hunter2-secret"], ["-passphrase", "hunter2-secret"], ["-pw", "hunter2-secret"],
                 ["--", "--passphrase=hunter2-secret"]):
        r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--json", *args)
        assert r.returncode == 2 and r.json["type"] == "UsageError", (args, r.stdout, r.stderr)
        assert "hunter2-secret" not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
        assert "passphrase-env" in r.json["error"], r.stdout
    assert not (tmp_path / "x.ks").exists()


def test_no_passphrase_source_without_terminal(cli: Cli, tmp_path: Path) -> None:
    r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--json", stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert r.json == {"ok": False, "error": r.json["error"], "type": "UsageError"}
    assert "--passphrase-env" in r.json["error"]
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback
    r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--passphrase-env", "UNSET_VAR_42")
    assert r.returncode == 2 and "UNSET_VAR_42" in r.stderr
    assert not (tmp_path / "x.ks").exists()


def test_a_passphrase_given_as_the_variable_name_is_not_echoed(cli: Cli, tmp_path: Path) -> None:
    """`--passphrase-env "$SECRET"` (the value where the variable's name goes) is a usage error that must not print
    the value back -- on stderr, in the JSON error document, or in the -vv log -- as `--passphrase SECRET` is not
    (THREATS 9).  What cannot be a variable's name (a space, punctuation) is not repeated, nor a name with lowercase
    letters in it (a passphrase of letters and digits is one); a name as variables are written is.  Nor is the path
    given to --passphrase-file when nothing is there (the passphrase given where its file goes)."""
    for secret in ("hunter2 secret!", "correct-horse/battery", "CorrectHorseBatteryStaple42"):
        r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--passphrase-env", secret, "--json", "-vv")
        assert r.returncode == 2 and r.json["type"] == "UsageError", (secret, r.stdout, r.stderr)
        assert secret not in r.stdout + r.stderr, (secret, r.stdout, r.stderr)
        assert "--passphrase-env" in r.json["error"], r.stdout
    for secret in ("My secret pass phrase!", "CorrectHorseBatteryStaple42"):
        r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--passphrase-file", secret, "--json", "-vv")
        assert r.returncode == 2 and r.json["type"] == "UsageError", (secret, r.stdout, r.stderr)
        assert secret not in r.stdout + r.stderr, (secret, r.stdout, r.stderr)
        assert "--passphrase-file" in r.json["error"] and "No such file" in r.json["error"], r.stdout
    (tmp_path / "a dir").mkdir()
    r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--passphrase-file", "a dir", "--json")
    assert r.returncode == 2 and "a dir" in r.json["error"], r.stdout  # (a path that is there is named)
    assert not (tmp_path / "x.ks").exists()


def test_a_passphrase_of_bytes_that_are_not_utf8_is_an_error_without_traceback_or_any_of_it(tmp_path: Path) -> None:
    """A passphrase variable holding bytes that are not UTF-8 ended the command with a traceback (no JSON
    document) naming one of its characters and its position: now a one-line error that shows none of it."""
    cli = Cli(tmp_path, {"PP": "sekr3t\udcffqu1x"})  # (the child's environment gets the byte 0xff)
    r = cli("identity", "create", "--keystore", "x.ks", "--kdf-fast", "--passphrase-env", "PP", "--json")
    assert r.returncode == 2 and r.json["ok"] is False and r.json["type"] == "LocalProtocolError", r.stdout
    for part in ("sekr3t", "qu1x", "xff", "dcff", "position"):
        assert part not in r.stdout + r.stderr, (part, r.stdout, r.stderr)
    assert not (tmp_path / "x.ks").exists()


def test_end_of_input_at_the_passphrase_prompt_is_a_usage_error(tmp_path: Path) -> None:
    """Ctrl-D at the terminal's passphrase prompt (the input ends) raised EOFError out of getpass: a traceback,
    exit 1.  A usage error now (exit 2, the JSON document), and nothing is created."""
    master, slave = pty.openpty()
    tty = os.ttyname(slave)

    def own_terminal() -> None:  # the pty becomes the child's controlling terminal: getpass opens /dev/tty
        os.setsid()
        os.close(os.open(tty, os.O_RDWR))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.Popen([sys.executable, "-m", "streams.cli", "identity", "create", "--keystore", "x.ks",
                              "--kdf-fast", "--json"], cwd=tmp_path, env=env, stdin=slave, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=own_terminal)
        os.close(slave)
        seen = b""
        while b"Passphrase" not in seen:  # the prompt goes to the terminal
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, seen
            seen += os.read(master, 1024)
        os.write(master, b"\x04")  # Ctrl-D: end of input
        out, err = p.communicate(timeout=30)
    finally:
        os.close(master)
    assert "Traceback" not in err, err
    assert p.returncode == 2, (p.returncode, err)
    assert json.loads(out)["type"] == "UsageError", out
    assert not (tmp_path / "x.ks").exists()


def test_a_passphrase_typed_in_bytes_that_are_not_utf8_is_an_error_that_shows_none_of_it(tmp_path: Path) -> None:
    """A byte that is not UTF-8 typed at the passphrase prompt made getpass raise UnicodeDecodeError: a traceback
    (exit 1, no JSON document) whose last line gave the byte and its position in the passphrase.  A usage error
    now, naming neither."""
    master, slave = pty.openpty()
    tty = os.ttyname(slave)

    def own_terminal() -> None:  # the pty becomes the child's controlling terminal: getpass opens /dev/tty
        os.setsid()
        os.close(os.open(tty, os.O_RDWR))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"}
    try:
        p = subprocess.Popen([sys.executable, "-m", "streams.cli", "identity", "create", "--keystore", "x.ks",
                              "--kdf-fast", "--json"], cwd=tmp_path, env=env, stdin=slave, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=own_terminal)
        os.close(slave)
        seen = b""
        while b"Passphrase" not in seen:  # the prompt goes to the terminal
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, seen
            seen += os.read(master, 1024)
        os.write(master, b"sekr3t\xffqu1x\n")
        out, err = p.communicate(timeout=30)
    finally:
        os.close(master)
    assert "Traceback" not in err, err
    assert p.returncode == 2, (p.returncode, err)
    assert json.loads(out)["type"] == "UsageError", out
    for part in ("sekr3t", "qu1x", "xff", "position 6"):
        assert part not in out + err, (part, out, err)
    assert not (tmp_path / "x.ks").exists()


def test_existing_keystore_is_not_replaced_without_force(cli: Cli, tmp_path: Path) -> None:
    first = make_keystore(cli, "me.ks")
    before = (tmp_path / "me.ks").read_bytes()
    r = cli("identity", "create", "--keystore", "me.ks", "--passphrase-env", "PP", "--kdf-fast")
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "me.ks").read_bytes() == before
    second = cli("identity", "create", "--keystore", "me.ks", "--passphrase-env", "PP", "--kdf-fast", "--force",
                 "--json").ok().json["did"]
    assert second != first and keystore.read_public(tmp_path / "me.ks") == second


def test_tampered_or_missing_keystore_is_a_typed_error(cli: Cli, tmp_path: Path) -> None:
    make_keystore(cli, "me.ks")
    r = cli("identity", "show", "--keystore", "missing.ks", "--json")
    assert r.returncode == 2 and r.json["type"] == "KeystoreError"
    data = (tmp_path / "me.ks").read_bytes()
    (tmp_path / "me.ks").write_bytes(data.replace(b'"version": 1', b'"version": 2'))
    r = cli("identity", "show", "--keystore", "me.ks", "--json")
    assert r.returncode == 2 and r.json["type"] == "KeystoreError"


def test_no_passphrase_or_seed_is_ever_printed(tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"PP": PASS, "WRONG": "wrong-" + PASS})
    for n, verbosity in enumerate(([], ["-v"], ["-vv"])):
        ks = f"k{n}.ks"
        cli("identity", "create", "--keystore", ks, "--passphrase-env", "PP", "--kdf-fast", *verbosity).ok()
        cli("identity", "show", "--keystore", ks, "--json", *verbosity).ok()
        sl = f"sl{n}.json"
        cli("credential", "status-list", "create", "--issuer-keystore", ks, "--passphrase-env", "PP",
            "--id", f"https://issuer.example/sl/{n}", "--out", sl, *verbosity).ok()
        did = keystore.read_public(tmp_path / ks)
        cli("credential", "issue", "--issuer-keystore", ks, "--passphrase-env", "PP", "--subject", did,
            "--type", "T", "--status-list", sl, "--status-index", "1", "--out", f"c{n}.json",
            *verbosity).ok()
        cli("credential", "revoke", "--issuer-keystore", ks, "--passphrase-env", "PP", "--status-list", sl,
            "--index", "1", *verbosity).ok()
        bad = cli("credential", "revoke", "--issuer-keystore", ks, "--passphrase-env", "WRONG",
                  "--status-list", sl, "--index", "2", "--json", *verbosity)
        assert bad.returncode == 2 and bad.json["type"] == "BadPassphrase"
    assert any("DEBUG" in r.stderr or "INFO" in r.stderr for r in cli.transcript)  # -vv did log something
    out = cli.all_output()
    assert PASS not in out
    for i in range(3):
        seed = keystore.load_identity(tmp_path / f"k{i}.ks", PASS).export_seed()
        for form in secret_forms(seed):
            assert form not in out


COMMANDS = [
    [], ["demo"], ["identity"], ["identity", "create"], ["identity", "show"], ["credential"],
    ["credential", "issue"], ["credential", "show"], ["credential", "verify"], ["credential", "revoke"],
    ["credential", "status-list"], ["credential", "status-list", "create"], ["policy"], ["policy", "check"],
]


def test_help_for_every_command(cli: Cli) -> None:
    for cmd in COMMANDS:
        r = cli(*cmd, "--help").ok()
        assert r.stdout.startswith("usage: streams"), cmd
        # Leaf commands all take --json; groups list their commands.
        if cmd and cmd[-1] not in ("identity", "credential", "status-list", "policy"):
            assert "--json" in r.stdout, cmd
    assert "--kdf-fast" not in cli("identity", "create", "--help").stdout  # tests-only option stays hidden
