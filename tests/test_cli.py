"""The CLI entry points, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cliutil import ROOT


def test_demo_runs_and_all_checks_pass() -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--in-process", "--json", "--events", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True
    names = {c["check"] for c in out["checks"]}
    assert {"replayed payment event rejected", "unlisted DID refused"} <= names
    assert all(c["ok"] for c in out["checks"])


def test_help_for_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "demo" in r.stdout


def test_python_dash_m_streams_is_the_streams_command() -> None:
    """`python -m streams` runs the CLI (where the `streams` script is not on PATH); it had no ``__main__``."""
    r = subprocess.run([sys.executable, "-m", "streams", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: streams") and "demo" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "streams", "--json", "no-such-command"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and json.loads(r.stdout)["type"] == "UsageError"


def test_usage_errors_give_the_json_document_with_json_and_demo_events_must_be_positive() -> None:
    """README: with --json, one JSON document on stdout, also for errors -- argparse's own included."""
    for argv in (["publish", "--json", "--store", "a", "--connect", "b"], ["--json", "no-such-command"],
                 ["demo", "--json", "--events", "0"], ["demo", "--events", "-3", "--json"]):
        r = subprocess.run([sys.executable, "-m", "streams.cli", *argv], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["type"] == "UsageError" and "error:" in r.stderr, doc
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--events", "0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "must be 1 to 10000" in r.stderr


def test_json_usage_errors_are_main_s_alone() -> None:
    """`main(["--json", ...])` made every parser built afterwards in the process print JSON usage errors (the
    flag was process-wide state, left set)."""
    code = ("import contextlib, io, streams.cli as c\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):\n"
            "    c.main(['--json', 'identity', 'show', '--no-such-option'])\n"
            "print('--- after main ---')\n"
            "c.build_parser().parse_args(['identity', 'show', '--no-such-option'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    after = r.stdout.split("--- after main ---", 1)[1]
    assert after.strip() == "" and "error:" in r.stderr, (r.stdout, r.stderr)  # argparse's own, on stderr only


def test_a_reader_that_went_away_is_no_traceback(tmp_path: Path) -> None:
    """`streams ... --json | true`: stdout's reader is gone before the result is printed.  The command's print
    raised BrokenPipeError, a traceback and exit 1; the command's work (here: a keystore written) was done all
    the same.  Now a note on stderr, and the command's own status."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": "reader gone passphrase"}
    try:
        for argv in (["identity", "create", "--keystore", "k.ks", "--kdf-fast", "--passphrase-env", "PP", "--json"],
                     ["identity", "show", "--keystore", "k.ks"],
                     ["identity", "show", "--keystore", "missing.ks", "--json"]):
            r = subprocess.run([sys.executable, "-m", "streams.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                               text=True, timeout=60, cwd=tmp_path, env=env, check=False)
            assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, (argv, r.stderr)
            assert r.returncode == (2 if "missing.ks" in argv else 0), (argv, r.returncode, r.stderr)
            assert "stdout" in r.stderr, (argv, r.stderr)
    finally:
        os.close(write_end)
    assert (tmp_path / "k.ks").exists()


def test_a_usage_error_whose_reader_went_away_is_no_traceback(tmp_path: Path) -> None:
    """`streams --json bogus | true`: a usage error's JSON document printed to a reader that is gone raised
    BrokenPipeError out of argparse, a traceback and exit 1 instead of the usage error's 2 (the result's and the
    error's documents were handled, the parser's was not)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    try:
        for argv in (["--json", "bogus"], ["identity", "show", "--json"],
                     ["identity", "show", "--json", "--keystore", "k.ks", "--passphrase=x"]):
            r = subprocess.run([sys.executable, "-m", "streams.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                               text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               check=False)
            assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, (argv, r.stderr)
            assert r.returncode == 2 and "error:" in r.stderr, (argv, r.returncode, r.stderr)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("mode", [["--in-process"], []], ids=["in-process", "processes"])
def test_the_demo_s_output_survives_a_reader_gone_and_a_stdout_that_cannot_encode_it(mode: list[str],
                                                                                       tmp_path: Path) -> None:
    """The demo printed with plain print(): `streams demo | head -1` ended in a BrokenPipeError traceback, and
    under a locale whose encoding is not UTF-8 (PYTHONIOENCODING=ascii) its first line with "\u2026" in it ended
    in a UnicodeEncodeError traceback, exit 1, checks unreported.  Both now go as main's own output does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    argv = [sys.executable, "-m", "streams.cli", "demo", "--events", "1", *mode]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                       env={**env, "PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\\u2026" in r.stdout and "all checks passed" in r.stdout, r.stdout
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    try:
        for extra in ([], ["--json"]):
            r = subprocess.run([*argv, *extra], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                               env=env, check=False)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (extra, r.stderr)
            assert "stdout was closed" in r.stderr, (extra, r.stderr)
    finally:
        os.close(write_end)
