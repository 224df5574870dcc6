"""`streams serve|subscribe|publish|tail|status` as a user runs them: real processes, real ZeroMQ over tcp
loopback (random ports), real SQLite stores, --json outputs parsed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams._cli.channel import _files
from tests.cliutil import ROOT, Cli, make_keystore

PASS = "channel test passphrase 91c2"


class Serve:
    """`streams serve --json --publish-stdin` in the background; its JSON lines collected by a thread."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
        self.p = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--json", "--publish-stdin", *args],
                                  cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.docs: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._q.put(json.loads(line))  # every line must be one JSON object

    def wait(self, event: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            for d in self.docs:
                if d["event"] == event and all(d.get(k) == v for k, v in match.items()):
                    return d
            try:
                self.docs.append(self._q.get(timeout=max(0.0, min(0.2, end - time.monotonic()))))
            except queue.Empty:
                if time.monotonic() > end:
                    raise AssertionError(f"no {event} {match}; got {self.docs}") from None

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> tuple[int, str]:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(20)
        time.sleep(0.1)
        while not self._q.empty():
            self.docs.append(self._q.get_nowait())
        assert self.p.stderr is not None
        return rc, self.p.stderr.read()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        for s in (self.p.stdin, self.p.stdout, self.p.stderr):
            if s is not None:
                s.close()


def _signal_and_wait(p: subprocess.Popen[str], sig: int) -> tuple[str, str]:
    """Send ``sig`` to ``p`` and collect its output; kill it if it does not end (the test fails on its status)."""
    try:
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return out, err


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"PP": PASS})


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        yield started
    finally:
        for s in started:
            s.kill()


def _policy(path: Path, *dids: str) -> None:
    path.write_text("[policy]\n" + "".join(f'[[policy.allow]]\ndid = "{d}"\n' for d in dids))


def _serve(tmp_path: Path, serves: list[Serve], *extra: str, first_run: bool = True) -> Serve:
    """`streams serve` of monitor.db on a random tcp port with policy.toml (``first_run``: creating the channel
    from monitor.ks), ``extra`` options first; kept in ``serves`` so that the test's end stops it."""
    create = ("--keystore", "monitor.ks", "--name", "fraud-monitor") if first_run else ()
    serve = Serve(tmp_path, *extra, "--store", "monitor.db", "--bind", "tcp://127.0.0.1:0", "--policy", "policy.toml",
                  *create, "--passphrase-env", "PP")
    serves.append(serve)
    return serve


def _monitor_and_provider(cli: Cli, tmp_path: Path, serves: list[Serve]) -> tuple[str, Serve, tuple[str, str, str]]:
    """monitor.ks and provider.ks, a policy admitting the provider, `streams serve` running and ready: (the
    provider's DID, the serve, (its address, the channel id, the monitor's DID))."""
    make_keystore(cli, "monitor.ks")
    sub_did = make_keystore(cli, "provider.ks")
    _policy(tmp_path / "policy.toml", sub_did)
    serve = _serve(tmp_path, serves)
    ready = serve.wait("ready")
    return sub_did, serve, (ready["addresses"][0], ready["channel"], ready["did"])


def test_serve_subscribe_publish_tail_status_round_trip(cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    make_keystore(cli, "monitor.ks")
    sub_did = make_keystore(cli, "provider.ks")
    stranger = make_keystore(cli, "stranger.ks")
    _policy(tmp_path / "policy.toml", sub_did)
    serve = _serve(tmp_path, serves)
    ready = serve.wait("ready")
    addr, channel, author = ready["addresses"][0], ready["channel"], ready["did"]
    assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0") and ready["ledger"] is None

    sub = cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
              "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json
    branch = sub["branch"]
    assert sub["did"] == sub_did and sub["permission"] == "read-write" and sub["open"] is True
    assert sub["members"] == [author, sub_did]
    serve.wait("admitted", did=sub_did, branch=branch)

    # publish: on the only writable branch by default, and the author's signed ACK comes back.
    pub = cli("publish", "--json", "--store", "provider.db", "--connect", addr, "--data", "payment 1: 42 EUR",
              "--passphrase-env", "PP").ok().json
    assert pub == {"ok": True, "branch": branch, "seq": 1, "acknowledged": True}
    (tmp_path / "blob").write_bytes(b"\xff\x00binary")
    pub2 = cli("publish", "--json", "--store", "provider.db", "--connect", addr, "--file", "blob",
               "--passphrase-env", "PP").ok().json
    assert pub2["seq"] == 2 and pub2["acknowledged"] is True
    got = serve.wait("message", seq=1, branch=branch)
    assert got["publisher"] == sub_did and got["signed"] is True and got["data"] == "payment 1: 42 EUR"
    assert serve.wait("message", seq=2, branch=branch)["data_b64"] == "/wBiaW5hcnk="

    # --publish-stdin: bad lines are reported and do not stop the server; a good one is published.
    serve.send("this is not json")
    serve.send(json.dumps({"to": "did:key:z6MkNobodyHere", "data": "x"}))
    serve.send(json.dumps({"to": "nobody", "data": "x"}))
    serve.send(json.dumps({"to": sub_did, "data": "ALERT card 4242 flagged"}))
    assert serve.wait("published", branch=branch)["seq"] == 1
    errors = [d["error"] for d in serve.docs if d["event"] == "error"]
    assert len(errors) == 3 and "expected a subscriber's DID or a branch id" in errors[2], errors

    # tail: prints the alert (catch-up on open), then nothing more: the cursor was persisted.
    out = cli("tail", "--json", "--store", "provider.db", "--connect", addr, "--count", "1", "--timeout", "10",
              "--passphrase-env", "PP").ok()
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0] == {"event": "ready", "channel": channel, "did": sub_did}
    assert lines[1]["event"] == "message" and lines[1]["data"] == "ALERT card 4242 flagged"
    assert lines[1]["publisher"] == author and lines[1]["index"] == 0 and lines[1]["branch"] == branch
    assert lines[-1] == {"event": "done", "messages": 1}
    again = cli("tail", "--json", "--store", "provider.db", "--connect", addr, "--timeout", "1",
                "--passphrase-env", "PP").ok()
    assert [json.loads(x) for x in again.stdout.splitlines()] == [lines[0], {"event": "done", "messages": 0}]

    # SIGINT ends a waiting tail at once, not when its --timeout (here two minutes) runs out: exit 0, "done".
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    waiting = subprocess.Popen([sys.executable, "-m", "streams.cli", "tail", "--json", "--store", "provider.db",
                                "--connect", addr, "--timeout", "120", "--passphrase-env", "PP"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout is not None
        assert json.loads(waiting.stdout.readline())["event"] == "ready"  # its signal handlers are installed
        waiting.send_signal(signal.SIGINT)
        tail_out, tail_err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 0, tail_err
    assert [json.loads(x) for x in tail_out.splitlines()] == [{"event": "done", "messages": 0}]

    # An unlisted DID is refused: exit 1, the reason in the JSON error, and the author reports it.
    refused = cli("subscribe", "--json", "--store", "stranger.db", "--connect", addr, "--keystore", "stranger.ks",
                  "--author", author, "--channel", channel, "--passphrase-env", "PP")
    assert refused.returncode == 1, refused.stderr
    assert refused.json["ok"] is False and refused.json["reason"] == "REFUSED"
    serve.wait("refused", did=stranger)

    # Clean stop on SIGTERM, then status of both stores (offline).
    rc, err = serve.stop()
    assert rc == 0, err
    assert serve.docs[-1] == {"event": "stopped"}
    st_a = cli("status", "--json", "--store", "monitor.db", "--passphrase-env", "PP").ok().json
    assert (st_a["role"], st_a["did"], st_a["channel"], st_a["name"]) == ("author", author, channel, "fraud-monitor")
    [b] = st_a["branches"]
    assert b["branch"] == branch and b["open"] and [m["did"] for m in b["members"]] == [author, sub_did]
    assert {c["index"]: c["next_seq"] for c in b["chains"]} == {0: 2, 1: 3}
    assert st_a["retained_messages"] >= 3  # the provider's two events and the alert
    st_s = cli("status", "--json", "--store", "provider.db", "--passphrase-env", "PP").ok().json
    assert (st_s["role"], st_s["did"], st_s["author"]) == ("subscriber", sub_did, author)
    assert st_s["branches"][0]["permission"] == "read-write"
    assert {c["index"]: c["next_seq"] for c in st_s["branches"][0]["chains"]} == {0: 2, 1: 3}
    text = cli("status", "--store", "provider.db", "--passphrase-env", "PP").ok().stdout
    assert f"branch {branch}" in text and "retained log" in text

    # Restart from the store alone (no keystore): same channel, same DID.
    serve2 = _serve(tmp_path, serves, first_run=False)
    r2 = serve2.wait("ready")
    assert (r2["channel"], r2["did"]) == (channel, author)
    assert serve2.stop()[0] == 0
    assert PASS not in cli.all_output() + "".join(json.dumps(d) for d in serve.docs + serve2.docs)


def test_usage_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    make_keystore(cli, "m.ks")
    _policy(tmp_path / "p.toml", make_keystore(cli, "s.ks"))
    for args in (
        ["status", "--store", "missing.db"],
        ["publish", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--data", "x"],
        ["tail", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1"],
        # First run of serve without an identity to create the channel from.
        ["serve", "--store", "new.db", "--bind", "tcp://127.0.0.1:0", "--policy", "p.toml"],
        ["subscribe", "--store", "s.db", "--connect", "tcp://127.0.0.1:1", "--keystore", "s.ks"],
        ["subscribe", "--store", "s.db", "--connect", "tcp://127.0.0.1:1", "--keystore", "s.ks", "--author",
         "did:key:z6Mk", "--channel", "abcd"],
        ["serve", "--store", "new.db", "--bind", "nonsense://x", "--policy", "p.toml", "--keystore", "m.ks",
         "--name", "n"],
    ):
        r = cli(*args, "--json", "--passphrase-env", "PP")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.json["ok"] is False
    assert not (tmp_path / "new.db").exists()


def test_command_line_text_that_is_not_utf8_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """`publish --data` and a first `serve --name` with bytes that are not UTF-8 on the command line (Python holds
    them as lone surrogates) ended in a UnicodeEncodeError traceback.  Now a usage error, naming the option; the
    first serve creates nothing."""
    make_keystore(cli, "m.ks")
    _policy(tmp_path / "p.toml", make_keystore(cli, "s.ks"))
    bad = "caf\udce9"  # b"caf\xe9" (Latin-1) in argv
    for args, option in (
        (["publish", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--data", bad], "--data"),
        (["serve", "--store", "new.db", "--bind", "tcp://127.0.0.1:0", "--policy", "p.toml", "--keystore", "m.ks",
          "--name", bad], "--name"),
    ):
        r = cli(*args, "--json", "--passphrase-env", "PP")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.json["ok"] is False and r.json["type"] == "UsageError" and option in r.json["error"], r.stdout
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith("new.db")]


def test_an_address_that_is_not_utf8_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """`serve --bind` and `subscribe --connect` with bytes that are not UTF-8 on the command line reached ZeroMQ,
    which encodes them: a UnicodeEncodeError traceback, exit 1, no JSON document.  A usage error, naming the
    option, as for --data and --name; the first run creates no store."""
    make_keystore(cli, "m.ks")
    _policy(tmp_path / "p.toml", make_keystore(cli, "s.ks"))
    bad = "tcp://127.0.0.1:0\udce9"  # a b"\xe9" (Latin-1) in argv
    for args, option in (
        (["serve", "--store", "new.db", "--bind", "tcp://127.0.0.1:0", "--bind", bad, "--policy", "p.toml",
          "--keystore", "m.ks", "--name", "x"], "--bind"),
        (["subscribe", "--store", "new.db", "--connect", bad, "--keystore", "s.ks", "--author",
          "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "--channel", "00" * 32], "--connect"),
    ):
        r = cli(*args, "--json", "--passphrase-env", "PP")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.json["ok"] is False and r.json["type"] == "UsageError" and option in r.json["error"], r.stdout
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith("new.db")]


def test_a_tail_whose_reader_went_away_stops_and_loses_no_message(cli: Cli, tmp_path: Path,
                                                                   serves: list[Serve]) -> None:
    """`streams tail | head -1`: once its stdout's reader was gone, tail dropped every later line but went on
    taking messages -- marked delivered at its end, so the next tail never showed them -- and with --follow it
    ran on forever.  It stops at the first line it cannot print now; that message and the later ones come again
    at the next tail."""
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    store = ("--store", "provider.db", "--connect", addr, "--passphrase-env", "PP")
    cli("subscribe", *store, "--keystore", "provider.ks", "--author", author, "--channel", channel).ok()
    for seq, text in enumerate(("one", "two"), 1):
        serve.send(json.dumps({"to": sub_did, "data": text}))
        serve.wait("published", seq=seq)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    try:
        for follow in (["--follow"], []):
            r = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "--json", *store, *follow],
                               stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=tmp_path,
                               env=env, check=False)
            assert r.returncode == 0 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    finally:
        os.close(write_end)
    again = cli("tail", "--json", *store, "--timeout", "1").ok()
    assert [d["data"] for d in _lines(again.stdout) if d["event"] == "message"] == ["one", "two"], again.stdout


def test_tail_says_a_reader_that_stops_early_can_take_messages_it_never_shows(cli: Cli, tmp_path: Path,
                                                                             serves: list[Serve]) -> None:
    """`streams tail ... | head -2`: the lines tail wrote into the pipe before head exited are marked delivered,
    never shown -- tail cannot tell (only its first write after the reader left fails, and that message is put
    back), and neither its help nor the README said so.  Both do now, with the way to take N messages: --count N,
    which leaves the rest for the next tail."""
    for text in (cli("tail", "--help").ok().stdout, (ROOT / "README.md").read_text(encoding="utf-8")):
        flat = " ".join(text.split()).lower().replace("`", "").replace("\\|", "|")
        assert "a reader that stops early (streams tail | head -2) can take messages it never shows" in flat
        assert "to take n messages, use --count n" in flat
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    store = ("--store", "provider.db", "--connect", addr, "--passphrase-env", "PP")
    cli("subscribe", *store, "--keystore", "provider.ks", "--author", author, "--channel", channel).ok()
    for seq, text in enumerate(("one", "two", "three"), 1):
        serve.send(json.dumps({"to": sub_did, "data": text}))
        serve.wait("published", seq=seq)
    first = cli("tail", "--json", *store, "--count", "1", "--timeout", "10").ok()
    assert [d["data"] for d in _lines(first.stdout) if d["event"] == "message"] == ["one"]
    rest = cli("tail", "--json", *store, "--timeout", "1").ok()
    assert [d["data"] for d in _lines(rest.stdout) if d["event"] == "message"] == ["two", "three"]


def test_a_tail_killed_may_show_its_last_messages_again_and_says_how_to_dedupe(cli: Cli, tmp_path: Path,
                                                                              serves: list[Serve]) -> None:
    """A message is marked delivered when the next is asked for, and the marks are committed at the next heartbeat:
    after `kill -9` of a tail, the next one shows again what the killed one showed last.  Its help said "those not
    yet shown by an earlier tail", the README "since the last tail": both say now that after a crash the last
    messages shown may come again, and to dedupe by (branch, index, seq), which the --json lines carry."""
    for text in (cli("tail", "--help").ok().stdout, (ROOT / "README.md").read_text(encoding="utf-8")):
        flat = " ".join(text.split()).replace("`", "").lower()
        assert "after a crash of tail (kill -9, a power loss), the messages it showed in its last half second" in flat
        assert "dedupe by (branch, index, seq)" in flat
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    store = ("--store", "provider.db", "--connect", addr, "--passphrase-env", "PP")
    cli("subscribe", *store, "--keystore", "provider.ks", "--author", author, "--channel", channel).ok()

    def send(*seqs: int) -> None:
        for seq in seqs:
            serve.send(json.dumps({"to": sub_did, "data": f"alert {seq}"}))
        serve.wait("published", seq=seqs[-1])

    send(1, 2, 3, 4, 5)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli", "tail", "--json", "--follow", *store],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    shown: list[dict[str, Any]] = []
    try:
        assert tail.stdout is not None
        while len(shown) < 5:
            doc = json.loads(tail.stdout.readline())
            if doc["event"] == "message":
                shown.append(doc)
    finally:
        tail.kill()  # (SIGKILL: no close, nothing committed since the last heartbeat)
        tail.wait(10)
        assert tail.stdout is not None
        tail.stdout.close()
    send(6, 7)
    again = [d for d in _lines(cli("tail", "--json", *store, "--timeout", "1").ok().stdout) if d["event"] == "message"]
    repeated = again[: len(again) - 2]
    assert repeated == shown[len(shown) - len(repeated):]  # what comes again is what the killed tail showed last
    unique = {(d["branch"], d["index"], d["seq"]): d["data"] for d in shown + again}
    assert list(unique.values()) == [f"alert {seq}" for seq in range(1, 8)]


def test_a_duration_that_is_not_a_number_is_refused(cli: Cli) -> None:
    """`--timeout nan` (and `--wait-ack nan`) passed the ">= 0" check (every comparison with NaN is false): a
    subscribe with it waited forever, a tail stopped at once, a publish did not wait for the ACK it was asked
    to wait for.  Refused by argparse now, naming the option."""
    for args, option in (
        (["subscribe", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--timeout", "nan"], "--timeout"),
        (["tail", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--timeout", "NaN"], "--timeout"),
        (["publish", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--data", "x", "--wait-ack", "nan"],
         "--wait-ack"),
    ):
        r = cli(*args, "--json", "--passphrase-env", "PP")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.json["type"] == "UsageError" and f"argument {option}" in r.json["error"], (args, r.stdout)


def test_a_negative_count_or_anchor_interval_is_refused(cli: Cli) -> None:
    """`tail --count -1` printed nothing and ended at once (its loop stops once the count "is reached"), and
    `serve --anchor-interval-ms 0` (or negative) cut an epoch -- a ledger write -- at every turn of a 1 ms
    loop.  Both are usage errors now."""
    for args, option in (
        (["tail", "--store", "missing.db", "--connect", "tcp://127.0.0.1:1", "--count", "-1"], "--count"),
        (["serve", "--store", "missing.db", "--bind", "tcp://127.0.0.1:0", "--policy", "p.toml",
          "--anchor-interval-ms", "0"], "--anchor-interval-ms"),
        (["serve", "--store", "missing.db", "--bind", "tcp://127.0.0.1:0", "--policy", "p.toml",
          "--anchor-interval-ms", "-5"], "--anchor-interval-ms"),
    ):
        r = cli(*args, "--json", "--passphrase-env", "PP")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.json["type"] == "UsageError" and f"argument {option}" in r.json["error"], (args, r.stdout)


def test_a_payload_cannot_forge_lines_of_the_text_output(cli: Cli, tmp_path: Path) -> None:
    """`streams serve` without --json printed a payload as it came: a provider's message holding a newline then
    `message ... publisher=<another provider's DID> ...` printed a second line, indistinguishable from a
    message of that other provider (THREATS 2: the origin of every message), and terminal escapes went to the
    operator's terminal as they were.  Control characters are now escaped: one event, one line."""
    make_keystore(cli, "monitor.ks")
    sub_did = make_keystore(cli, "provider.ks")
    other = make_keystore(cli, "other.ks")
    _policy(tmp_path / "policy.toml", sub_did, other)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--store", "monitor.db", "--bind",
                          "tcp://127.0.0.1:0", "--policy", "policy.toml", "--keystore", "monitor.ks", "--name", "m",
                          "--passphrase-env", "PP"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        ready = p.stdout.readline().split()
        fields = dict(f.split("=", 1) for f in ready[1:])
        assert ready[0] == "ready", ready
        sub = cli("subscribe", "--json", "--store", "provider.db", "--connect", fields["addresses"], "--keystore",
                  "provider.ks", "--author", fields["did"], "--channel", fields["channel"],
                  "--passphrase-env", "PP").ok().json
        forged = (f"ok\nmessage branch={'ab' * 16} publisher={other} index=1 seq=1 signed=True : "
                  "\x1b[31mrefund 1M EUR\x1b[0m\r")
        cli("publish", "--json", "--store", "provider.db", "--connect", fields["addresses"], "--data", forged,
            "--passphrase-env", "PP").ok()
    finally:
        out, err = _signal_and_wait(p, signal.SIGTERM)
    assert p.returncode == 0, err
    lines = out.splitlines()
    messages = [x for x in lines if x.startswith("message ")]
    assert len(messages) == 1, lines
    assert f"branch={sub['branch']} publisher={sub_did} " in messages[0] and "refund 1M EUR" in messages[0]
    assert not any(other in x for x in lines if not x.startswith(("admitted", "message "))), lines
    assert "\x1b" not in out and "\r" not in out, repr(out)


def test_tail_events_says_when_the_store_is_older_than_its_own_chain(cli: Cli, tmp_path: Path,
                                                                     serves: list[Serve]) -> None:
    """A provider's store restored from a backup older than what it published: the author's signed ACK says it
    holds the provider's chain beyond the store's head, and the library reports a ChainConflict (publishing now
    would fork the chain).  `tail --events` dropped that event -- only a `rejected` UNEXPECTED frame showed.  It
    is a `conflict` event now, with both positions."""
    _, _, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    common = ("--connect", addr, "--passphrase-env", "PP", "--json")
    branch = cli("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", author,
                 "--channel", channel, *common).ok().json["branch"]
    cli("publish", "--store", "provider.db", "--data", "payment 1", *common).ok()
    cli("backup", "--store", "provider.db", "--to", "stale.db").ok()
    for n in (2, 3):
        assert cli("publish", "--store", "provider.db", "--data", f"payment {n}", *common).ok().json["seq"] == n
    out = cli("tail", "--store", "stale.db", "--events", "--timeout", "3", *common).ok()
    docs = [json.loads(x) for x in out.stdout.splitlines()]
    conflicts = [d for d in docs if d["event"] == "conflict"]
    assert conflicts == [{"event": "conflict", "branch": branch, "index": 1, "ours": 1, "theirs": 3}], docs


def _stale_provider(cli: Cli, tmp_path: Path, serves: list[Serve]) -> tuple[Serve, str, tuple[str, ...]]:
    """The monitor serving and the provider subscribed; the provider publishes payment 1, backs its store up
    to stale.db (the real backup), publishes payments 2 and 3: stale.db is older than its chain.  Returns (the
    serve, the provider's branch, the common options of a provider command)."""
    _, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    common = ("--connect", addr, "--passphrase-env", "PP", "--json")
    branch = cli("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", author,
                 "--channel", channel, *common).ok().json["branch"]
    cli("publish", "--store", "provider.db", "--data", "payment 1", *common).ok()
    cli("backup", "--store", "provider.db", "--to", "stale.db").ok()
    for n in (2, 3):
        cli("publish", "--store", "provider.db", "--data", f"payment {n}", *common).ok()
    return serve, branch, common


def _conflicting_publish(cli: Cli, common: tuple[str, ...], wait_ack: str) -> str:
    """`publish` from stale.db, which must fail as a conflict (exit 1, failure "conflict"), with the reason and
    what to do, and no promise of a later delivery; returns the error."""
    run = cli("publish", "--store", "stale.db", "--data", "payment 2 again", "--wait-ack", wait_ack, *common)
    doc = run.json
    assert run.returncode == 1 and doc["ok"] is False and doc.get("failure") == "conflict", (run.stdout, run.stderr)
    error: str = doc["error"]
    assert "conflicts with the author's copy" in error and "Do not publish from this store" in error
    assert "heard again" not in run.stdout + run.stderr and "policy" not in error
    return error


def _own_chain(cli: Cli, store: str, branch: str) -> tuple[int, int]:
    """(next_seq, conflict) of the provider's own chain, as `streams status --json` shows them."""
    st = cli("status", "--store", store, "--passphrase-env", "PP", "--json").ok().json
    [b] = [b for b in st["branches"] if b["branch"] == branch]
    [c] = [c for c in b["chains"] if c["index"] == 1]
    return int(c["next_seq"]), int(c["conflict"])


def test_publish_from_a_store_older_than_its_chain_is_refused_in_every_later_run(cli: Cli, tmp_path: Path,
                                                                                  serves: list[Serve]) -> None:
    """Once the provider learnt that its store is older than its chain (the author's signed ACK, here during a
    `tail`), `publish` raised a bare LocalProtocolError in the same run only; a later run signed a new message
    all the same -- a fork the author recorded -- and then said the author allows the provider to "read only
    now" (its policy), or, with the author away, that the message was stored and "delivered when the author is
    heard again": neither is true.  Now each run is refused before anything is signed (the stop is kept in the
    store), with the reason and what to do."""
    serve, branch, common = _stale_provider(cli, tmp_path, serves)
    out = cli("tail", "--store", "stale.db", "--events", "--timeout", "3", *common).ok()
    assert '"event": "conflict"' in out.stdout, out.stdout
    assert "nothing was published" in _conflicting_publish(cli, common, "30")  # the author running
    rc, _ = serve.stop()
    assert rc == 0
    assert [d for d in serve.docs if d["event"] == "fork"] == [], serve.docs
    assert "nothing was published" in _conflicting_publish(cli, common, "2")  # the author away
    assert _own_chain(cli, "stale.db", branch) == (2, 3)  # nothing signed; the stop kept in the store
    assert _own_chain(cli, "provider.db", branch) == (4, 0)
    text = cli("status", "--store", "stale.db", "--passphrase-env", "PP").ok().stdout
    assert "CONFLICT: the author's ACK of this chain through seq 3 contradicts this store" in text, text


def test_a_provider_that_forked_its_chain_learns_it_over_zeromq_and_stops(cli: Cli, tmp_path: Path,
                                                                          serves: list[Serve]) -> None:
    """The first `publish` from a stale copy signs seq 2 before the author can say anything: a fork (SPEC 12).
    The author records it and sends its ACK of the chain again -- once, and over ZeroMQ usually before the new
    connection's route is known (the PACKET came before the FETCH that teaches it), so the ACK went nowhere;
    the provider's HEAD notices of its forked head were rejected without an answer.  So it never learnt: the
    run said "delivered when the author is heard again", no later run (`tail` included) was told either, and
    every later `publish` forked the chain once more.  The author now answers every fork of a member's chain
    with its ACK (paced as ACKs are)."""
    serve, branch, common = _stale_provider(cli, tmp_path, serves)
    assert "seq 2 was signed but will never be delivered" in _conflicting_publish(cli, common, "20")
    out = cli("tail", "--store", "stale.db", "--events", "--timeout", "5", *common).ok()
    docs = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(d["ours"], d["theirs"]) for d in docs if d["event"] == "conflict"] == [(2, 3)], docs  # told again
    assert "nothing was published" in _conflicting_publish(cli, common, "20")
    rc, _ = serve.stop()
    assert rc == 0
    assert [d["seq"] for d in serve.docs if d["event"] == "fork"] == [2], serve.docs  # that first one only
    assert _own_chain(cli, "stale.db", branch) == (3, 3)


def test_output_survives_a_stdout_that_cannot_encode_the_text(cli: Cli, tmp_path: Path) -> None:
    """Under a locale whose encoding is not UTF-8 (here PYTHONIOENCODING=ascii), the first payload with a
    character it lacks ("10 €") raised UnicodeEncodeError in `serve --json`'s printing task: the task died,
    and serve went on admitting and acknowledging while printing no message again -- one provider's payload
    blinded the monitor to every later one.  One-shot text output (credential show) ended in a traceback.
    What the encoding lacks is escaped now (JSON: \\u20ac)."""
    make_keystore(cli, "monitor.ks")
    sub_did = make_keystore(cli, "provider.ks")
    _policy(tmp_path / "policy.toml", sub_did)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS, "PYTHONIOENCODING": "ascii"}
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--json", "--store", "monitor.db", "--bind",
                          "tcp://127.0.0.1:0", "--policy", "policy.toml", "--keystore", "monitor.ks", "--name", "m",
                          "--passphrase-env", "PP"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        ready = json.loads(p.stdout.readline())
        common = ("--connect", ready["addresses"][0], "--passphrase-env", "PP", "--json")
        cli("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", ready["did"],
            "--channel", ready["channel"], *common).ok()
        for text in ("10 €", "plain"):
            cli("publish", "--store", "provider.db", "--data", text, *common).ok()
    finally:
        out, err = _signal_and_wait(p, signal.SIGTERM)
    assert p.returncode == 0 and "Traceback" not in err, err
    docs = [json.loads(x) for x in out.splitlines()]
    assert [d["data"] for d in docs if d["event"] == "message"] == ["10 €", "plain"], docs

    doc = {"issuer": "did:key:z6MkIssuer", "credentialSubject": {"id": "x", "amount": "10 €"}}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    shown = Cli(tmp_path, {"PYTHONIOENCODING": "ascii"})("credential", "show", "c.json").ok()
    assert "\\u20ac" in shown.stdout, shown.stdout


def test_every_channel_command_has_help() -> None:
    for cmd in ("serve", "subscribe", "publish", "tail", "status"):
        r = subprocess.run([sys.executable, "-m", "streams.cli", cmd, "--help"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        assert r.returncode == 0 and "--store" in r.stdout and "--json" in r.stdout, cmd
        assert ("--curve" in r.stdout) == (cmd != "status"), cmd


def test_status_help_names_every_file_status_shows(tmp_path: Path) -> None:
    """`status --help` listed "the database, its -wal and its -frames file"; status shows the -commits file (the
    commit journal) too, as the README's row says."""
    shown = set(_files(tmp_path / "store.db"))  # the files status reports, by their keys
    assert shown == {"store", "wal", "frames", "commits"}
    r = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--help"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    flat = " ".join(r.stdout.split())
    assert all(f"-{key}" in flat for key in shown - {"store"}) and "the commit journal" in flat, flat

def test_streams_cli_does_not_load_zmq_until_a_network_command_runs() -> None:
    # The dependency rule: streams never imports brokerless/zmq; the CLI loads them by name only to run a
    # network command (streams/_cli/_transport.py).
    code = ("import sys, streams, streams.api, streams.cli; streams.cli.build_parser(); "
            "from streams._cli import _transport; assert _transport.zmq_available(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'brokerless')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert r.stdout.strip() == "[]"


def test_subscribe_presents_several_credentials_for_a_policy_in_mode_all(cli: Cli, tmp_path: Path,
                                                                         serves: list[Serve]) -> None:
    """`mode = "all"` with two credential rules: `streams subscribe --credential A --credential B` presents both
    in one presentation and is admitted; one of them alone is refused (exit 1)."""
    make_keystore(cli, "monitor.ks")
    issuer = make_keystore(cli, "issuer.ks")
    member = make_keystore(cli, "provider.ks")
    cli("credential", "status-list", "create", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP",
        "--id", "https://issuer.example/sl/all", "--out", "sl.json").ok()
    for ctype, index in (("PaymentProviderCredential", "1"), ("KYCCredential", "2")):
        cli("credential", "issue", "--issuer-keystore", "issuer.ks", "--passphrase-env", "PP", "--subject", member,
            "--type", ctype, "--status-list", "sl.json", "--status-index", index, "--out", f"{ctype}.json").ok()
    rules = "".join(f'[[policy.credential]]\ntype = "{t}"\nissuers = ["{issuer}"]\npermission = "read-write"\n'
                    f'status_lists = ["sl.json"]\n' for t in ("PaymentProviderCredential", "KYCCredential"))
    (tmp_path / "policy.toml").write_text('[policy]\nmode = "all"\n' + rules)
    serve = _serve(tmp_path, serves)
    ready = serve.wait("ready")
    base = ("subscribe", "--json", "--store", "provider.db", "--connect", ready["addresses"][0], "--keystore",
            "provider.ks", "--author", ready["did"], "--channel", ready["channel"], "--passphrase-env", "PP")
    one = cli(*base, "--credential", "PaymentProviderCredential.json")
    assert one.returncode == 1 and one.json["reason"] == "REFUSED", one.stdout + one.stderr
    both = cli(*base, "--credential", "PaymentProviderCredential.json", "--credential", "KYCCredential.json").ok()
    assert both.json["did"] == member and both.json["open"] is True
    serve.wait("admitted", did=member)


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.splitlines()]


def test_curve_admits_the_dids_the_policy_allows_and_no_one_else(cli: Cli, tmp_path: Path,
                                                                  serves: list[Serve]) -> None:
    """`serve --curve` with a policy allowing A: A with --curve subscribes (first run: its keys from the keystore),
    gets the author's alert with `tail --curve` and publishes with `publish --curve` (keys read from its store).
    B, not allowed, with --curve is kept out by the CurveZMQ handshake itself: it times out (exit 2) and never
    reaches the protocol -- the author reports no refusal, as it does without CURVE (exit 1, REFUSED, in
    test_serve_subscribe_publish_tail_status_round_trip).  Restarted from its store alone, the author's key is
    the same: A still gets through."""
    make_keystore(cli, "monitor.ks")
    a = make_keystore(cli, "a.ks")
    b = make_keystore(cli, "b.ks")
    _policy(tmp_path / "policy.toml", a)
    serve = _serve(tmp_path, serves, "--curve")
    ready = serve.wait("ready")
    assert ready["curve"] is True
    addr, channel, author = ready["addresses"][0], ready["channel"], ready["did"]

    sub = cli("subscribe", "--curve", "--json", "--store", "a.db", "--connect", addr, "--keystore", "a.ks",
              "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json
    branch = sub["branch"]
    assert sub["did"] == a and sub["members"] == [author, a]
    serve.wait("admitted", did=a, branch=branch)
    serve.send(json.dumps({"to": a, "data": "ALERT over curve"}))
    serve.wait("published", branch=branch)
    lines = _lines(cli("tail", "--curve", "--json", "--store", "a.db", "--connect", addr, "--count", "1",
                       "--timeout", "10", "--passphrase-env", "PP").ok().stdout)
    assert lines[1]["event"] == "message" and lines[1]["data"] == "ALERT over curve"
    assert lines[1]["publisher"] == author and lines[1]["branch"] == branch
    pub = cli("publish", "--curve", "--json", "--store", "a.db", "--connect", addr, "--data", "payment over curve",
              "--passphrase-env", "PP").ok().json
    assert pub["acknowledged"] is True
    serve.wait("message", branch=branch, publisher=a, data="payment over curve")

    stranger = cli("subscribe", "--curve", "--json", "--store", "b.db", "--connect", addr, "--keystore", "b.ks",
                   "--author", author, "--channel", channel, "--timeout", "1", "--passphrase-env", "PP")
    assert stranger.returncode == 2, stranger.stdout + stranger.stderr
    assert stranger.json["type"] == "StreamsTimeoutError"
    assert "the author must serve with --curve too and know this DID" in stranger.json["error"]
    rc, err = serve.stop()
    assert rc == 0, err
    assert not [d for d in serve.docs if d.get("did") == b], "B reached the protocol through the CURVE handshake"

    # Restart without the keystore: the server key now comes from the store.
    serve2 = _serve(tmp_path, serves, "--curve", first_run=False)
    r2 = serve2.wait("ready")
    assert (r2["did"], r2["curve"]) == (author, True)
    serve2.send(json.dumps({"to": a, "data": "after the restart"}))
    serve2.wait("published", branch=branch)
    lines = _lines(cli("tail", "--curve", "--json", "--store", "a.db", "--connect", r2["addresses"][0], "--count",
                       "1", "--timeout", "10", "--passphrase-env", "PP").ok().stdout)
    assert lines[1]["event"] == "message" and lines[1]["data"] == "after the restart"
    assert serve2.stop()[0] == 0
    assert PASS not in cli.all_output() + "".join(json.dumps(d) for d in serve.docs + serve2.docs)


def _interrupted_publish(tmp_path: Path, addr: str) -> Any:
    """`streams publish --json` of a.db that waits for an ACK that does not come, sent SIGTERM once its message
    is in the store (its chain cursor moved): the JSON document it prints."""
    import sqlite3

    def ours() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'a.db'}?mode=ro", uri=True)) as c:
            return int(c.execute("SELECT max(next_seq) FROM chains WHERE publisher = 1").fetchone()[0])

    before = ours()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "publish", "--json", "--store", "a.db", "--connect",
                          addr, "--data", "y", "--wait-ack", "120", "--passphrase-env", "PP"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(400):
            if ours() > before:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # (from the commit to its wait for the ACK: microseconds; this leaves no doubt)
    finally:
        out, err = _signal_and_wait(p, signal.SIGTERM)
    assert p.returncode == 143 and "is stored" in err, err
    return json.loads(out)


def test_curve_on_one_side_only_times_out_with_a_hint(cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """A without --curve against `serve --curve`, and A with --curve against a plain `serve`: the handshake never
    completes and nothing comes back, so `subscribe` times out (exit 2) and its error names --curve, `publish`
    gets no ACK (exit 1) with the same hint, and `tail` ends empty with it as a warning.  The same store and
    address with matching options work (so the failures come from the mismatch alone)."""
    make_keystore(cli, "monitor.ks")
    a = make_keystore(cli, "a.ks")
    _policy(tmp_path / "policy.toml", a)
    serve = _serve(tmp_path, serves, "--curve")
    ready = serve.wait("ready")
    addr, channel, author = ready["addresses"][0], ready["channel"], ready["did"]
    no_curve = "if the author serves with --curve, give --curve too"

    plain = cli("subscribe", "--json", "--store", "a.db", "--connect", addr, "--keystore", "a.ks", "--author",
                author, "--channel", channel, "--timeout", "1", "--passphrase-env", "PP")
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert plain.json["type"] == "StreamsTimeoutError" and no_curve in plain.json["error"]
    assert no_curve in plain.stderr  # the one-line error people see
    assert not list(tmp_path.glob("a.db*"))  # a first run with no grant leaves no store (nor a side file of it)
    branch = cli("subscribe", "--curve", "--json", "--store", "a.db", "--connect", addr, "--keystore", "a.ks",
                 "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json["branch"]
    serve.wait("admitted", did=a, branch=branch)
    pub = cli("publish", "--store", "a.db", "--connect", addr, "--data", "x", "--wait-ack", "1",
              "--passphrase-env", "PP")
    assert pub.returncode == 1 and "NOT acknowledged" in pub.stdout and no_curve in pub.stdout, pub.stdout
    unacked = cli("publish", "--json", "--store", "a.db", "--connect", addr, "--data", "x", "--wait-ack", "1",
                  "--passphrase-env", "PP")
    assert unacked.returncode == 1 and unacked.json["ok"] is False and unacked.json["type"] == "NotAcknowledged"
    assert "stored" in unacked.json["error"] and no_curve in unacked.json["error"]
    # Interrupted while it waits: the JSON document says which seq is stored (so a script does not send it again).
    stored = _interrupted_publish(tmp_path, addr)
    assert stored == {"ok": False, "error": "terminated", "type": "Interrupted", "branch": branch,
                      "seq": unacked.json["seq"] + 1, "stored": True}
    tail = cli("tail", "--json", "--store", "a.db", "--connect", addr, "--timeout", "1", "--passphrase-env", "PP")
    assert tail.returncode == 0 and _lines(tail.stdout)[-1] == {"event": "done", "messages": 0}
    assert no_curve in tail.stderr
    assert serve.stop()[0] == 0

    # The same channel served without --curve: now --curve is the mismatch.
    serve2 = _serve(tmp_path, serves, first_run=False)
    r2 = serve2.wait("ready")
    assert r2["curve"] is False
    curved = cli("subscribe", "--curve", "--json", "--store", "a.db", "--connect", r2["addresses"][0],
                 "--timeout", "1", "--passphrase-env", "PP")
    assert curved.returncode == 2, curved.stdout + curved.stderr
    assert "with --curve, the author must serve with --curve too" in curved.json["error"]
    assert cli("subscribe", "--json", "--store", "a.db", "--connect", r2["addresses"][0], "--passphrase-env",
               "PP").ok().json["branch"] == branch
    assert serve2.stop()[0] == 0
    assert PASS not in cli.all_output()


async def test_publish_on_a_branch_revoked_while_away_says_closed(cli: Cli, tmp_path: Path) -> None:
    """The author revokes a provider's branch while the provider is offline: its next `streams publish` -- with
    or without --branch -- answers no (exit 1, failure "closed"), whether it learns the revocation at open or
    from the author's answer to the message; never a usage error."""
    import asyncio

    from brokerless import AuthorEndpoint
    from streams.api import Author, StoreOptions
    from streams.identity import Identity
    from streams.policy import AllowList

    sub_did = make_keystore(cli, "provider.ks")
    monitor = Identity.generate()
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "monitor.db", monitor, "fraud-monitor", PASS, ep,
                                 AllowList.of([sub_did]),
                                 store_options=StoreOptions(durable=False, opslimit=1, memlimit=8192))
    try:
        addr = ep.addresses[0]
        sub = (await asyncio.to_thread(
            cli, "subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
            "--author", monitor.did, "--channel", author.channel.hex(), "--passphrase-env", "PP")).ok().json
        branch = sub["branch"]
        await author.revoke(bytes.fromhex(branch))
        for extra in ((), ("--branch", branch)):
            run = await asyncio.to_thread(cli, "publish", "--json", "--store", "provider.db", "--connect", addr,
                                          "--data", "payment 9: 10 EUR", "--passphrase-env", "PP", *extra)
            assert run.returncode == 1, (run.stdout, run.stdout)
            doc = run.json
            assert doc["failure"] == "closed" and "revoked" in doc["error"], doc
            assert "reason" not in doc  # a local answer: no peer's reject code (it used to say MALFORMED)
    finally:
        await author.close()


def test_a_malformed_author_did_is_named_as_the_bad_argument(cli: Cli) -> None:
    make_keystore(cli, "provider.ks")
    for curve in ((), ("--curve",)):
        run = cli("subscribe", "--json", "--store", "provider.db", "--connect", "tcp://127.0.0.1:9", "--keystore",
                  "provider.ks", "--author", "did:key:z6MkNotAKey", "--channel", "ab" * 32, "--passphrase-env", "PP",
                  *curve)
        assert run.returncode == 2 and "--author" in run.stdout, (run.stdout, run.stderr)


def test_an_operator_cuts_a_provider_off_by_editing_the_policy_and_sighup_or_by_a_revoke_line(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """A provider taken off the policy file is revoked when `streams serve` is told to reload it (SIGHUP; it used
    to keep publishing, acknowledged, until someone wrote a program to revoke it); an edit alone changes
    nothing (a half-written file must not revoke anyone); a file that does not load is reported and the policy in
    force stays; `{"revoke": DID}` on stdin revokes at once; and at start, whom the file no longer admits is
    revoked."""
    make_keystore(cli, "monitor.ks")
    dids = {name: make_keystore(cli, f"{name}.ks") for name in ("acme", "globex", "initech")}
    _policy(tmp_path / "policy.toml", *dids.values())
    serve = _serve(tmp_path, serves)
    ready = serve.wait("ready")
    addr, channel, author = ready["addresses"][0], ready["channel"], ready["did"]

    def subscribe(name: str) -> str:
        return str(cli("subscribe", "--json", "--store", f"{name}.db", "--connect", addr, "--keystore", f"{name}.ks",
                       "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json["branch"])

    def publish(name: str) -> Any:
        return cli("publish", "--json", "--store", f"{name}.db", "--connect", addr, "--data", "payment",
                   "--passphrase-env", "PP")

    branches = {name: subscribe(name) for name in dids}
    _policy(tmp_path / "policy.toml", dids["globex"], dids["initech"])  # acme is off the list
    time.sleep(1.5)
    assert publish("acme").ok().json["acknowledged"] is True  # not reloaded yet: only when told
    serve.p.send_signal(signal.SIGHUP)
    reload = serve.wait("policy", reloaded=True)
    assert (reload["revoked"], reload["dids"]) == ([branches["acme"]], [dids["acme"]])
    serve.wait("closed", branch=branches["acme"], by="recheck", did=dids["acme"],
               reason="the policy no longer admits the subscriber's DID")
    cut = publish("acme")
    assert cut.returncode == 1 and cut.json["failure"] == "closed", cut.stdout
    assert publish("globex").ok().json["acknowledged"] is True

    (tmp_path / "policy.toml").write_text("[policy\n")  # a broken edit: reported, nothing changes
    serve.p.send_signal(signal.SIGHUP)
    assert "policy not reloaded" in serve.wait("error", timeout=20)["error"]
    assert publish("globex").ok().json["acknowledged"] is True

    serve.send(json.dumps({"revoke": dids["globex"]}))
    revoked = serve.wait("revoked", branch=branches["globex"])
    assert (revoked["did"], revoked["closed"]) == (dids["globex"], [branches["globex"]])
    assert publish("globex").returncode == 1

    assert serve.stop()[0] == 0
    _policy(tmp_path / "policy.toml", dids["acme"])  # initech is off the list while the author is down
    serve2 = _serve(tmp_path, serves, first_run=False)
    serve2.wait("ready")
    assert serve2.wait("policy", reloaded=False)["revoked"] == [branches["initech"]]
    assert publish("initech").returncode == 1
    assert serve2.stop()[0] == 0


def test_serve_opens_a_group_for_a_broadcast_only_its_members_read_and_a_removed_member_reads_no_more(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """`streams serve` had no way to open a group, so a monitor could not broadcast an alert to several providers
    (only the library could).  `{"group": [...]}` opens one for admitted subscribers: its members read what is
    published there, another provider does not (segregation); a DID without a branch of its own (one the policy
    did not admit) is refused, and so is a writable group; `{"remove": ..., "from": ...}` re-keys it without a
    member, which reads nothing published afterwards."""
    make_keystore(cli, "monitor.ks")
    dids = {name: make_keystore(cli, f"{name}.ks") for name in ("acme", "globex", "initech")}
    outsider = make_keystore(cli, "outsider.ks")
    _policy(tmp_path / "policy.toml", *dids.values())
    serve = _serve(tmp_path, serves)
    ready = serve.wait("ready")
    addr, channel, author = ready["addresses"][0], ready["channel"], ready["did"]
    own = {name: cli("subscribe", "--json", "--store", f"{name}.db", "--connect", addr, "--keystore", f"{name}.ks",
                     "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json["branch"]
           for name in dids}

    def errors() -> list[str]:
        return [d["error"] for d in serve.docs if d["event"] == "error"]

    serve.send(json.dumps({"group": [dids["acme"], outsider]}))
    serve.wait("error")
    assert "no open branch for " + outsider in errors()[-1], errors()
    serve.send(json.dumps({"group": [dids["acme"]], "permission": "read-write"}))
    serve.send(json.dumps({"group": [dids["acme"], dids["acme"]]}))
    serve.send(json.dumps({"remove": dids["acme"], "from": own["acme"]}))  # an own branch is not a group
    serve.send(json.dumps({"group": [dids["acme"], dids["globex"]]}))
    group = serve.wait("group")  # (lines are acted on in order: the errors before it are all out)
    assert len(errors()) == 4, errors()
    assert "only the author writes" in errors()[1] and "twice" in errors()[2] and "not a group" in errors()[3]
    assert group["members"] == [dids["acme"], dids["globex"]] and group["permission"] == "read"
    assert group["branch"] not in own.values()
    serve.send(json.dumps({"to": group["branch"], "data": "ALERT 1: card testing from 203.0.113.7"}))
    serve.wait("published", branch=group["branch"], seq=1)

    def tail(name: str) -> list[dict[str, Any]]:
        out = cli("tail", "--json", "--store", f"{name}.db", "--connect", addr, "--timeout", "3",
                  "--passphrase-env", "PP").ok()
        return [d for d in map(json.loads, out.stdout.splitlines()) if d["event"] == "message"]

    for name in ("acme", "globex"):
        got = tail(name)
        assert [(m["branch"], m["data"], m["publisher"]) for m in got] == [
            (group["branch"], "ALERT 1: card testing from 203.0.113.7", author)], (name, got)
    assert tail("initech") == []  # not a member: the group's frames never reach it, nor could it open them

    serve.send(json.dumps({"remove": dids["globex"], "from": group["branch"]}))
    removed = serve.wait("removed")
    assert removed == {"event": "removed", "branch": group["branch"], "did": dids["globex"], "closed": False}
    serve.send(json.dumps({"to": group["branch"], "data": "ALERT 2"}))
    serve.wait("published", branch=group["branch"], seq=2)
    assert [m["data"] for m in tail("acme")] == ["ALERT 2"]
    assert tail("globex") == []
    serve.send(json.dumps({"remove": dids["globex"], "from": group["branch"]}))  # again
    serve.send(json.dumps({"remove": dids["acme"], "from": group["branch"]}))
    assert serve.wait("removed", did=dids["acme"])["closed"] is True  # its last member gone: closed
    serve.send(json.dumps({"remove": dids["acme"], "from": group["branch"]}))
    serve.send(json.dumps({"to": dids["acme"], "data": "marker"}))
    serve.wait("published", branch=own["acme"])  # (the lines before it are acted on)
    assert "is not a member of group" in errors()[4] and "is closed" in errors()[5], errors()
    assert serve.stop()[0] == 0


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_sigterm_ends_a_command_cleanly_with_its_json_document(cli: Cli, tmp_path: Path, sigint: Any) -> None:
    """SIGTERM ends `streams subscribe` as Ctrl-C does: its cleanup runs (the store of a first run with no grant
    is removed), exit 143, and with --json the error document (it used to die where it stood).  Also where
    SIGINT is ignored -- a background job of a non-interactive shell (`streams subscribe ... &` in a script)
    starts so: SIGTERM then killed the command where it stood (exit -15, no JSON document, the first run's store
    left behind), because it was turned into a SIGINT, which was ignored, and so its handler was not even
    installed."""
    make_keystore(cli, "p.ks")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "subscribe", "--json", "--store", "p.db", "--connect",
                          "tcp://127.0.0.1:9", "--keystore", "p.ks", "--author",
                          "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "--channel", "00" * 32,
                          "--timeout", "60", "--passphrase-env", "PP"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        for _ in range(200):  # until the first run created its store
            if (tmp_path / "p.db").exists():
                break
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        out, err = _signal_and_wait(p, signal.SIGTERM)
    assert p.returncode == 143, (p.returncode, err)
    assert json.loads(out) == {"ok": False, "error": "terminated", "type": "Interrupted"}
    assert "Traceback" not in err, err
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith("p.db")]
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith("p.db")]


def test_a_first_subscribe_that_gets_no_grant_leaves_no_store_and_a_later_one_names_a_mismatch(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """A mistyped --channel on the first `streams subscribe` used to leave a store bound to it, and running again
    with the right one silently ignored the correction.  Now the failed first run removes what it created, and a
    store that exists refuses an --author/--channel other than its own (exit 2, naming both)."""
    _, _, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    wrong = ("0" if channel[0] != "0" else "1") + channel[1:]
    args = ("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
            "--author", author, "--passphrase-env", "PP", "--timeout", "2")
    miss = cli(*args, "--channel", wrong)
    assert miss.returncode == 2 and "no announcement of this channel" in miss.json["error"], miss.stdout
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("provider.db")]
    # Through a dangling symlink: the files made at its target go, the symlink stays (it was the link that went,
    # and the store it had created stayed).
    (tmp_path / "stores").mkdir()
    (tmp_path / "linked.db").symlink_to(tmp_path / "stores" / "provider.db")
    linked = cli(*args[:3], "linked.db", *args[4:], "--channel", wrong)
    assert linked.returncode == 2, linked.stdout
    assert (tmp_path / "linked.db").is_symlink() and list((tmp_path / "stores").iterdir()) == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("linked.db") and p.name != "linked.db"]
    branch = cli(*args, "--channel", channel).ok().json["branch"]
    again = cli(*args, "--channel", wrong)
    assert again.returncode == 2 and channel in again.json["error"] and "another" in again.json["error"]
    assert cli(*args, "--channel", channel).ok().json["branch"] == branch  # the right one, repeated: fine


async def test_the_revoke_line_cuts_off_a_did_left_only_in_groups(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`{"revoke": DID}` for a subscriber whose own branch is already closed but who is still in a group (made
    by a program on the same store): it leaves the group, which closes (it was its last member)."""
    from streams._cli.channel import LinePrinter, _revoke_line
    from streams.api import Author, MemoryHub, StoreOptions
    from streams.identity import Identity
    from streams.policy import AllowList

    member = Identity.generate()
    author = await Author.create(tmp_path / "monitor.db", Identity.generate(), "fraud-monitor", PASS,
                                 MemoryHub().author_endpoint(), AllowList.of([member.did]),
                                 store_options=StoreOptions(durable=False, opslimit=1, memlimit=8192))
    try:
        own = await author.open_branch(member.did)
        group = await author.open_group([member.did])
        await author.revoke(own)
        capsys.readouterr()
        await _revoke_line(author, member.did, LinePrinter(True))
        doc = json.loads(capsys.readouterr().out)
        assert doc == {"event": "revoked", "branch": None, "did": member.did, "closed": [group.hex()]}
        assert [b.id for b in author.branches() if b.open] == []
    finally:
        await author.close()


async def test_a_stdin_line_with_keys_of_two_forms_or_an_unknown_key_is_refused_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A control line with a publish line's keys was published and its control part ignored: {"remove": ...,
    "from": ..., "to": ..., "data": ...} printed `published`, removed no one, and the member read the message.
    Such lines, and keys no form takes, are an `error` now, with nothing done.  And a group may not give a member
    a right its own admission did not (a provider admitted to write only must not read a broadcast)."""
    from streams._cli.channel import LinePrinter, _member_line, _publish_line
    from streams.api import Author, MemoryHub, StoreOptions
    from streams.identity import Identity
    from streams.policy import AllowList
    from streams.wire import Permission

    reader, writer = Identity.generate(), Identity.generate()
    author = await Author.create(tmp_path / "monitor.db", Identity.generate(), "fraud-monitor", PASS,
                                 MemoryHub().author_endpoint(), AllowList.of([reader.did, writer.did]),
                                 store_options=StoreOptions(durable=False, opslimit=1, memlimit=8192))

    async def line(doc: dict[str, Any]) -> dict[str, Any]:
        capsys.readouterr()
        await _publish_line(author, json.dumps(doc).encode(), LinePrinter(True))
        [out] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        return out

    try:
        own = await author.open_branch(reader.did)
        await author.open_branch(writer.did, Permission.WRITE)
        group = await line({"group": [reader.did]})
        assert group["event"] == "group"
        g = group["branch"]

        def heads() -> dict[tuple[bytes, int], int]:
            return {(r.branch, r.publisher): r.next_seq for r in author.store.load_chains()}

        before = heads()
        for doc, says in (
                ({"remove": reader.did, "from": g, "to": g, "data": "mixed"}, "a remove line"),
                ({"revoke": reader.did, "to": reader.did, "data": "mixed"}, "a revoke line"),
                ({"group": [reader.did], "to": reader.did, "data": "mixed"}, "a group line"),
                ({"from": g, "to": g, "data": "mixed"}, "a remove line"),
                ({"to": reader.did, "data": "x", "prority": "high"}, "unknown key 'prority'")):
            out = await line(doc)
            assert out["event"] == "error" and says in out["error"], (doc, out)
        assert heads() == before  # nothing published
        info = {b.id: b for b in author.branches()}
        assert info[own].open and info[bytes.fromhex(g)].open and reader.did in info[bytes.fromhex(g)].members

        refused = await line({"group": [reader.did, writer.did]})
        assert refused["event"] == "error" and "holds write on its own branch, not read" in refused["error"]
        assert len(author.branches()) == 3  # no group opened for it
        assert (await line({"group": [reader.did], "permission": "audit"}))["event"] == "error"  # read is not audit
    finally:
        await author.close()

    # tail --publish-stdin's lines are held to their keys too.
    capsys.readouterr()
    await _member_line(None, b'{"data": "x", "brnach": "00"}', None, LinePrinter(True))  # type: ignore[arg-type]
    [out] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out["event"] == "error" and "unknown key 'brnach'" in out["error"]


async def test_serve_still_hears_sighup_after_a_recheck_failed(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A re-check that raised (here a failed commit, injected) ended the task that waits for SIGHUP, silently:
    every later reload was ignored.  It is an ``error`` event now, and the next SIGHUP reloads."""
    from streams._cli.channel import LinePrinter, _watch_policy
    from streams.api import Author, MemoryHub, StoreOptions
    from streams.errors import StorageError
    from streams.identity import Identity
    from streams.policy import AllowList

    member = Identity.generate()
    _policy(tmp_path / "policy.toml", member.did)
    author = await Author.create(tmp_path / "monitor.db", Identity.generate(), "fraud-monitor", PASS,
                                 MemoryHub().author_endpoint(), AllowList.of([member.did]),
                                 store_options=StoreOptions(durable=False, opslimit=1, memlimit=8192))
    real, calls = author.recheck_admissions, []

    async def fails_once() -> list[bytes]:
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("injected: the commit failed")
        return await real()

    author.recheck_admissions = fails_once  # type: ignore[method-assign]
    hup = asyncio.Event()
    watcher = asyncio.create_task(_watch_policy(author, str(tmp_path / "policy.toml"), hup, LinePrinter(True)))
    docs: list[dict[str, Any]] = []

    async def next_doc() -> dict[str, Any]:
        for _ in range(500):
            docs.extend(json.loads(x) for x in capsys.readouterr().out.splitlines())
            if docs:
                return docs.pop(0)
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing printed; watcher done: {watcher.done()}")

    try:
        capsys.readouterr()
        hup.set()
        doc = await next_doc()
        assert doc["event"] == "error" and doc["type"] == "StorageError" and "injected" in doc["error"], doc
        _policy(tmp_path / "policy.toml", Identity.generate().did)  # the member is off the list now
        own = await author.open_branch(member.did)
        hup.set()
        doc = await next_doc()
        assert doc["event"] == "policy" and doc["reloaded"] and doc["revoked"] == [own.hex()], doc
        assert doc["dids"] == [member.did] and len(calls) == 2
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await author.close()


async def test_tail_of_one_branch_leaves_the_other_branches_messages_for_a_later_tail(cli: Cli, tmp_path: Path) -> None:
    """`tail --branch` used to take the messages of the other branches too, unseen: an alert on a group (or a
    new branch) was lost for good.  They are left for the next tail now; a --branch the store does not hold (yet:
    one granted while the provider was away is learnt by the catch-up) is a warning."""
    import asyncio

    from brokerless import AuthorEndpoint
    from streams.api import Author, StoreOptions
    from streams.identity import Identity
    from streams.policy import AllowList

    sub_did = make_keystore(cli, "provider.ks")
    monitor = Identity.generate()
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "monitor.db", monitor, "fraud-monitor", PASS, ep, AllowList.of([sub_did]),
                                 store_options=StoreOptions(durable=False, opslimit=1, memlimit=8192))
    try:
        addr = ep.addresses[0]
        own = (await asyncio.to_thread(
            cli, "subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
            "--author", monitor.did, "--channel", author.channel.hex(), "--passphrase-env", "PP")).ok().json["branch"]
        group = await author.open_group([sub_did])
        await author.publish(group, b"to every provider")
        await author.publish(bytes.fromhex(own), b"to this provider")

        def tail(*extra: str) -> list[Any]:
            out = cli("tail", "--json", "--store", "provider.db", "--connect", addr, "--timeout", "3",
                      "--passphrase-env", "PP", *extra).ok().stdout
            return [json.loads(x).get("data") for x in out.splitlines() if json.loads(x)["event"] == "message"]

        assert await asyncio.to_thread(tail, "--branch", own) == ["to this provider"]
        assert await asyncio.to_thread(tail) == ["to every provider"]
        assert await asyncio.to_thread(tail) == []
        bad = await asyncio.to_thread(cli, "tail", "--json", "--store", "provider.db", "--connect", addr,
                                      "--branch", "00" * 16, "--passphrase-env", "PP")
        assert bad.returncode == 0 and "not a branch of provider.db (yet)" in bad.stderr
    finally:
        await author.close()


def test_a_provider_follows_alerts_and_publishes_from_one_tail_process(cli: Cli, tmp_path: Path,
                                                                       serves: list[Serve]) -> None:
    """One process per store: while `tail --follow` ran, `streams publish` on the same store was refused (the
    store is in use).  `tail --follow --publish-stdin` does both: JSON lines on its stdin are published, the
    monitor's alerts are printed."""
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    branch = cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
                 "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json["branch"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli", "tail", "--json", "--follow", "--publish-stdin",
                             "--store", "provider.db", "--connect", addr, "--passphrase-env", "PP"], cwd=tmp_path,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stdin is not None and tail.stdout is not None
        assert json.loads(tail.stdout.readline())["event"] == "ready"
        tail.stdin.write(json.dumps({"data": "\ud800"}) + "\n")  # valid JSON, no UTF-8: an error, not the end
        tail.stdin.write(json.dumps({"data": "payment 7: 12 EUR"}) + "\n")
        tail.stdin.write("not json\n")
        tail.stdin.flush()
        assert serve.wait("message", branch=branch)["data"] == "payment 7: 12 EUR"
        serve.send(json.dumps({"to": sub_did, "data": "ALERT: card 4242"}))
        seen = []
        while not any(d.get("event") == "message" for d in seen):
            seen.append(json.loads(tail.stdout.readline()))
        assert {"event": "published", "branch": branch, "seq": 1} in seen
        assert [d["type"] for d in seen if d["event"] == "error"] == ["UsageError"] * 2  # the bad lines, reported
        assert [d["data"] for d in seen if d["event"] == "message"] == ["ALERT: card 4242"]
        for i in range(50):  # queued when the tail is told to stop: published all the same, none dropped
            tail.stdin.write(json.dumps({"data": f"payment {100 + i}"}) + "\n")
        tail.stdin.flush()
    finally:
        out, err = _signal_and_wait(tail, signal.SIGTERM)
    assert tail.returncode == 0, err
    docs = [json.loads(x) for x in out.splitlines()]
    assert docs[-1] == {"event": "done", "messages": 1}
    published = [d["seq"] for d in docs if d["event"] == "published"]
    assert published == list(range(2, 2 + len(published)))  # in order, after seq 1
    for seq in published:
        serve.wait("message", branch=branch, seq=seq)  # each one it said it published did arrive


def test_tail_publish_stdin_without_follow_publishes_stdin_to_its_end(cli: Cli, tmp_path: Path,
                                                                        serves: list[Serve]) -> None:
    """`tail --publish-stdin` without --follow stopped --timeout seconds after the last message it received, with
    stdin still flowing: of 60,000 lines, 3,029 were published, and it exited 0.  Reading and publishing stdin
    is activity now: tail runs until stdin's EOF (then --timeout seconds without a message, as usual); stopped
    before that EOF, it says that stdin was not read to its end and exits 130/143 (interrupted)."""
    _, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    store = ("--store", "provider.db", "--connect", addr, "--passphrase-env", "PP")
    branch = cli("subscribe", "--json", *store, "--keystore", "provider.ks", "--author", author,
                 "--channel", channel).ok().json["branch"]
    n = 4000
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps({"data": f"event {i}"}) + "\n" for i in range(n)))
    with lines.open() as f:
        r = cli("tail", "--json", *store, "--publish-stdin", "--timeout", "0.2", stdin=f.fileno())
    assert r.returncode == 0, r.stderr
    assert "not acted on" not in r.stderr and "not read to its end" not in r.stderr, r.stderr
    docs = _lines(r.stdout)
    assert [d["seq"] for d in docs if d["event"] == "published"] == list(range(1, n + 1))
    assert docs[-1] == {"event": "done", "messages": 0}
    serve.wait("message", branch=branch, seq=n, timeout=120)
    assert [d["data"] for d in serve.docs if d["event"] == "message"] == [f"event {i}" for i in range(n)]

    # stdin still open: tail runs on past --timeout; a stop before stdin's EOF is said, and is no success.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli", "tail", "--json", *store, "--publish-stdin",
                             "--timeout", "0.2"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stdin is not None and tail.stdout is not None
        assert json.loads(tail.stdout.readline())["event"] == "ready"
        tail.stdin.write(json.dumps({"data": "one more"}) + "\n")
        tail.stdin.flush()
        assert json.loads(tail.stdout.readline()) == {"event": "published", "branch": branch, "seq": n + 1}
        time.sleep(1.5)  # (well past --timeout)
        assert tail.poll() is None
        tail.send_signal(signal.SIGTERM)
        tail.wait(30)  # (stdin still open: closed, it would be read to its end)
    finally:
        out, err = _signal_and_wait(tail, signal.SIGKILL)
    assert tail.returncode == 128 + signal.SIGTERM, err  # (as any command stopped before it finished)
    assert "stdin was not read to its end" in err, err
    assert [d["event"] for d in _lines(out)] == ["error", "done"]
    serve.wait("message", branch=branch, seq=n + 1)


def test_a_permission_narrowed_in_the_policy_file_is_applied_at_sighup(cli: Cli, tmp_path: Path,
                                                                     serves: list[Serve]) -> None:
    """A provider edited from read-write to read in the policy file kept publishing after the reload (a
    permission applied to new subscriptions only).  At SIGHUP its branch is re-keyed read-only now (a
    `restricted` event); its next publish is refused, and it still reads the monitor's alerts."""
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    branch = cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
                 "--author", author, "--channel", channel, "--passphrase-env", "PP").ok().json["branch"]
    args = ("publish", "--json", "--store", "provider.db", "--connect", addr, "--passphrase-env", "PP")
    assert cli(*args, "--data", "payment 1").ok().json["acknowledged"] is True
    (tmp_path / "policy.toml").write_text(f'[policy]\n[[policy.allow]]\ndid = "{sub_did}"\npermission = "read"\n')
    serve.p.send_signal(signal.SIGHUP)
    assert serve.wait("restricted", branch=branch) == {"event": "restricted", "branch": branch, "did": sub_did,
                                                        "permission": "read"}
    policy = serve.wait("policy", reloaded=True)
    assert (policy["revoked"], policy["restricted"], policy["restricted_dids"]) == ([], [branch], [sub_did])
    refused = cli(*args, "--data", "payment 2")  # (stored before its catch-up learnt the re-key)
    assert refused.returncode == 1 and refused.json["failure"] == "not_permitted", refused.stdout
    refused = cli(*args, "--data", "payment 3")  # known now: refused before anything is stored (it said "0
    assert refused.returncode == 1 and refused.json["failure"] == "not_permitted"  # writable branches: subscribe")
    refused = cli(*args, "--data", "payment 4", "--branch", branch)
    assert refused.returncode == 1 and refused.json["failure"] == "not_permitted", refused.stdout
    serve.send(json.dumps({"to": sub_did, "data": "ALERT: read-only now"}))
    tail = cli("tail", "--json", "--store", "provider.db", "--connect", addr, "--passphrase-env", "PP",
               "--count", "1", "--timeout", "10").ok()
    assert [json.loads(x).get("data") for x in tail.stdout.splitlines()][1] == "ALERT: read-only now"
    assert [d["seq"] for d in serve.docs if d["event"] == "message"] == [1]  # payment 2 never arrived
    assert serve.stop()[0] == 0
    # Payment 2's packet is refused once; its chain's HEADs start no gap fetch, refused again and again (three
    # NOT_PERMITTED rejections and a gap that never closed, which read like an attack).
    assert not [d for d in serve.docs if d["event"] == "gap" and d["branch"] == branch]
    assert len([d for d in serve.docs if d["event"] == "rejected" and d.get("branch") == branch]) <= 1


def test_serve_publishes_every_stdin_line_it_reads_a_flood_and_those_read_before_a_stop(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """The stdin reader put each line into a queue of 1000 without waiting: a faster writer lost every line past
    that (an 'Exception in callback' on stderr, nothing on stdout), and a stop cancelled the publisher with lines
    still queued.  The reader now waits for room (back-pressure through the pipe), and a stop publishes the lines
    already read first."""
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
        "--author", author, "--channel", channel, "--passphrase-env", "PP").ok()
    flood, burst = 3000, 200
    serve.send("\n".join(json.dumps({"to": sub_did, "data": f"alert {i}"}) for i in range(flood)))
    first = serve.wait("published")["seq"]
    serve.wait("published", timeout=120, seq=first + flood - 1)
    serve.send("\n".join(json.dumps({"to": sub_did, "data": f"late {i}"}) for i in range(burst)))
    serve.wait("published", seq=first + flood)  # the burst is being published: stop now
    rc, err = serve.stop()
    assert rc == 0, err
    seqs = [d["seq"] for d in serve.docs if d["event"] == "published"]
    assert seqs == list(range(first, first + flood + burst)), (len(seqs), err[-2000:])
    assert serve.docs[-1]["event"] == "stopped"
    assert "Exception in callback" not in err
    assert "read but not acted on" not in err  # (a stop reads no more: nothing read was dropped)


def test_serve_survives_hostile_stdin_lines_and_stops_under_an_endless_writer(cli: Cli, tmp_path: Path,
                                                                              serves: list[Serve]) -> None:
    """A line of JSON nested too deeply (json raises RecursionError) ended the stdin task: no line after it was
    published, the writer then blocked for good on the full pipe, and the stop ended in a traceback without
    closing the store.  It is an error line now, and the next lines are published.  A writer that never stops
    kept serve publishing after SIGTERM (reading on, forever on Python 3.11); a stop now ends the reading and
    serve exits, having published every line it read before the stop (those read during it are counted on
    stderr).  A policy file nested too deeply (tomllib's RecursionError) is a reload error like any other."""
    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
        "--author", author, "--channel", channel, "--passphrase-env", "PP").ok()
    serve.send("[" * 100_000)
    serve.send(json.dumps({"to": sub_did, "data": "after the hostile line"}))
    assert serve.wait("error")["type"] == "UsageError"
    first = serve.wait("published")["seq"]
    (tmp_path / "policy.toml").write_text("[policy]\nx = " + "[" * 100_000 + "\n")
    serve.p.send_signal(signal.SIGHUP)
    assert "nested too deeply" in serve.wait("error", type="PolicyFileError")["error"]

    writing = threading.Event()
    writing.set()

    def endless() -> None:
        i = 0
        with contextlib.suppress(OSError, ValueError):  # (the pipe closes when serve exits)
            while writing.is_set():
                serve.send(json.dumps({"to": sub_did, "data": f"line {i}"}))
                i += 1

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    try:
        serve.wait("published", seq=first + 50)
        serve.p.send_signal(signal.SIGTERM)
        rc = serve.p.wait(30)  # (a hang guard: it used to publish on until killed)
    finally:
        writing.clear()
        writer.join(10)
        with contextlib.suppress(OSError):  # (what the writer left in the pipe's buffer has no reader now)
            assert serve.p.stdin is not None
            serve.p.stdin.close()
    _, err = serve.stop()
    assert rc == 0, err
    seqs = [d["seq"] for d in serve.docs if d["event"] == "published"]
    assert seqs == list(range(first, first + len(seqs))) and serve.docs[-1]["event"] == "stopped"
    assert "Traceback" not in err


def test_a_gap_event_names_the_missing_messages() -> None:
    """`received_seq` is the message that came early: the missing ones end just before it (a catch-up of a
    one-message chain read as 'expected 1, received 2', like a loss)."""
    from streams._cli.channel import event_doc
    from streams.events import GapDetected

    doc = event_doc(GapDetected(b"\x01" * 16, 1, 3, 4))
    assert doc is not None and doc["missing"] == [3, 3] and (doc["expected_seq"], doc["received_seq"]) == (3, 4)


def test_serve_says_which_kind_of_ledger_it_anchors_on_and_each_epoch_it_anchored(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """The `ready` event names the ledger's kind (not its address, which may carry credentials); each epoch
    confirmed on the ledger is an `epoch` event (serve used to say nothing of its anchoring: only members'
    `tail --events` showed their proofs)."""
    make_keystore(cli, "monitor.ks")
    _policy(tmp_path / "policy.toml", make_keystore(cli, "provider.ks"))
    serve = _serve(tmp_path, serves, "--ledger", "sqlite:ledger.db", "--anchor-interval-ms", "100")
    ready = serve.wait("ready")
    assert ready["ledger"] == "sqlite"
    cli("subscribe", "--json", "--store", "provider.db", "--connect", ready["addresses"][0], "--keystore",
        "provider.ks", "--author", ready["did"], "--channel", ready["channel"], "--passphrase-env", "PP").ok()
    cli("publish", "--json", "--store", "provider.db", "--connect", ready["addresses"][0], "--data", "payment",
        "--passphrase-env", "PP").ok()
    epoch = serve.wait("epoch")
    assert epoch["heads"] >= 1 and epoch["anchor_id"] and isinstance(epoch["epoch"], int)
    # A provider checks the proofs it is sent against the ledger itself (tail had no --ledger: every proof said
    # ledger_verified false, and the anchoring protected nobody who used the CLI).
    serve.send(json.dumps({"to": serve.wait("admitted")["did"], "data": "ALERT"}))
    tail = cli("tail", "--json", "--events", "--store", "provider.db", "--connect", ready["addresses"][0],
               "--ledger", "sqlite:ledger.db", "--timeout", "3", "--passphrase-env", "PP").ok()
    anchored = [d for d in map(json.loads, tail.stdout.splitlines()) if d["event"] == "anchored"]
    assert anchored and all(d["ledger_verified"] for d in anchored), tail.stdout
    missing = cli("tail", "--json", "--store", "provider.db", "--connect", ready["addresses"][0],
                  "--ledger", "sqlite:nowhere.db", "--passphrase-env", "PP")
    assert missing.returncode == 2 and "no embedded ledger" in missing.json["error"]
    assert serve.stop()[0] == 0


def test_tail_anchor_wait_bounds_how_long_a_proof_waits_for_its_ledger(
        cli: Cli, tmp_path: Path, serves: list[Serve]) -> None:
    """`tail --ledger` checks each proof against the member's ledger, which may lag behind the author's: a
    checkpoint it does not know is asked about again for `--anchor-wait` seconds (default 600) before the proof
    is rejected NOT_ANCHORED.  Here the member names another (empty) embedded ledger than the author's: after
    half a second, the verdict; and a wait that is not a positive number is refused before anything runs."""
    from streams.ledger import EmbeddedLedger

    make_keystore(cli, "monitor.ks")
    _policy(tmp_path / "policy.toml", make_keystore(cli, "provider.ks"))
    serve = _serve(tmp_path, serves, "--ledger", "sqlite:ledger.db", "--anchor-interval-ms", "100")
    ready = serve.wait("ready")
    cli("subscribe", "--json", "--store", "provider.db", "--connect", ready["addresses"][0], "--keystore",
        "provider.ks", "--author", ready["did"], "--channel", ready["channel"], "--passphrase-env", "PP").ok()
    cli("publish", "--json", "--store", "provider.db", "--connect", ready["addresses"][0], "--data", "payment",
        "--passphrase-env", "PP").ok()
    serve.wait("epoch")
    EmbeddedLedger(tmp_path / "other.db").close()  # a ledger the author never wrote to
    for bad in ("0", "-1", "nan", "soon"):
        refused = cli("tail", "--json", "--store", "provider.db", "--connect", ready["addresses"][0],
                      "--ledger", "sqlite:other.db", "--anchor-wait", bad, "--passphrase-env", "PP")
        assert refused.returncode == 2 and "--anchor-wait" in refused.stderr, (bad, refused.stderr)
    tail = cli("tail", "--json", "--events", "--store", "provider.db", "--connect", ready["addresses"][0],
               "--ledger", "sqlite:other.db", "--anchor-wait", "0.5", "--timeout", "5",
               "--passphrase-env", "PP").ok()
    docs = list(map(json.loads, tail.stdout.splitlines()))
    rejected = [d for d in docs if d["event"] == "rejected"]
    assert rejected and all(d["reason"] == "NOT_ANCHORED" and "does not know this anchor" in d["detail"]
                            for d in rejected), tail.stdout
    assert not [d for d in docs if d["event"] == "anchored"], tail.stdout
    assert serve.stop()[0] == 0


def test_a_store_older_than_its_chain_publishing_is_told_conflict_not_permission(cli: Cli, tmp_path: Path,
                                                                                 serves: list[Serve]) -> None:
    """A provider runs on a store restored from a backup older than what it already published: the author's
    signed ACK shows it holds the provider's chain beyond the store's head (a `conflict` event), and publishing
    from that store is refused.  The refusal was a plain LocalProtocolError -- the type a lost write permission
    has, and `streams publish` reported every such error met while it waited for the ACK as "not_permitted"
    ("the policy allows this provider to read only now"), untrue here: the permission is intact.  It is a
    ChainConflictError now (`streams publish` says failure "conflict"), and the provider's own store still
    publishes."""
    _, _, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    common = ("--connect", addr, "--passphrase-env", "PP")
    cli("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", author, "--channel",
        channel, "--json", *common).ok()
    cli("publish", "--store", "provider.db", "--data", "payment 1", "--json", *common).ok()
    cli("backup", "--store", "provider.db", "--to", "stale.db").ok()
    for n in (2, 3):
        assert cli("publish", "--store", "provider.db", "--data", f"payment {n}", "--json", *common).ok().json[
            "seq"] == n
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PP": PASS}
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli", "tail", "--json", "--follow", "--events",
                             "--publish-stdin", "--store", "stale.db", *common], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stdin is not None and tail.stdout is not None
        seen = [json.loads(tail.stdout.readline())]
        while seen[-1]["event"] != "conflict":  # (the author's ACK, about a heartbeat after it connects)
            seen.append(json.loads(tail.stdout.readline()))
        tail.stdin.write(json.dumps({"data": "payment 2 again"}) + "\n")
        tail.stdin.flush()
        while seen[-1]["event"] not in ("error", "published"):
            seen.append(json.loads(tail.stdout.readline()))
    finally:
        _signal_and_wait(tail, signal.SIGTERM)
    assert seen[-1]["event"] == "error", seen
    assert seen[-1]["type"] == "ChainConflictError", seen[-1]
    assert "conflicts with the author's copy" in seen[-1]["error"], seen[-1]
    # The provider may still write: its own store's next message is acknowledged.
    assert cli("publish", "--store", "provider.db", "--data", "payment 4", "--json", *common).ok().json[
        "acknowledged"] is True


def test_a_serve_that_fails_its_checks_leaves_no_new_ledger_file(cli: Cli, tmp_path: Path) -> None:
    """`streams serve --ledger sqlite:PATH` makes the embedded ledger if it is not there.  A serve that then
    fails its checks -- a policy file that does not parse, a store it cannot open -- used to leave that new,
    empty ledger file behind (with its -wal and -shm), made before the checks ran.  It leaves nothing now; a
    ledger that was there before is left as it was."""
    make_keystore(cli, "monitor.ks")
    (tmp_path / "bad.toml").write_text("[policy\n")
    _policy(tmp_path / "policy.toml")
    (tmp_path / "notastore.db").write_bytes(b"x" * 100)
    cases = [("monitor.db", "bad.toml", ("--keystore", "monitor.ks", "--name", "fraud-monitor")),
             ("notastore.db", "policy.toml", ())]
    for store, policy, create in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        run = cli("serve", "--json", "--store", store, "--bind", "tcp://127.0.0.1:0", "--policy", policy, *create,
                  "--passphrase-env", "PP", "--ledger", "sqlite:ledger.db")
        assert run.returncode == 2, (run.stdout, run.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, run.stdout
    # A ledger that was there before the failed serve stays, with what it holds.
    from streams.ledger.embedded import EmbeddedLedger

    with EmbeddedLedger(tmp_path / "ledger.db") as ledger:
        anchor_id = ledger.append(b"tag", b"kept")
    run = cli("serve", "--json", "--store", "notastore.db", "--bind", "tcp://127.0.0.1:0", "--policy", "policy.toml",
              "--passphrase-env", "PP", "--ledger", "sqlite:ledger.db")
    assert run.returncode == 2, (run.stdout, run.stderr)
    with EmbeddedLedger(tmp_path / "ledger.db") as ledger:
        assert ledger.size() == 1 and ledger.read(anchor_id) == (b"tag", b"kept")


def test_a_failed_serve_keeps_a_new_ledger_another_process_opened_meanwhile(tmp_path: Path) -> None:
    """`serve --ledger sqlite:PATH` makes the ledger, then checks the store (an Argon2id derivation: a second or
    so); one that fails removes the ledger it made if it is still empty.  Another process on the host that opened
    the new ledger meanwhile (a second serve of another channel, which anchors there too: any number of processes
    may append to one embedded ledger) had nothing in it yet, so the ledger was removed under it: what it anchored
    afterwards went to a deleted file, and its next start found no ledger.  The failed serve's clean-up (the
    functions serve calls, with a real second process) now leaves a ledger another process holds open."""
    from streams._cli.channel import _absent_ledger_files, _unmake_ledger
    from streams.audit import open_ledger
    from streams.ledger.embedded import EmbeddedLedger

    path = tmp_path / "ledger.db"
    spec = f"sqlite:{path}"
    made = _absent_ledger_files(spec)
    ours = open_ledger(spec, create=True)  # the serve that will fail
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom streams.ledger.embedded import EmbeddedLedger\n"
         "ledger = EmbeddedLedger(sys.argv[1])\nprint('open', flush=True)\nsys.stdin.readline()\n"
         "print(ledger.append(b'tag', b'anchored'), flush=True)\nledger.close()\n", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline() == "open\n"
        _unmake_ledger(ours, made)  # the serve failed its checks
        other.stdin.write("go\n")
        other.stdin.flush()
        anchor_id = other.stdout.readline().strip()
    finally:
        with other:  # (closes the pipes, waits)
            other.stdin.close()  # type: ignore[union-attr]
    assert other.returncode == 0
    assert path.exists(), "the ledger another process held open was removed"
    with EmbeddedLedger(path) as ledger:
        assert ledger.read(anchor_id) == (b"tag", b"anchored")


@pytest.mark.xfail(strict=True, reason="design limit: a process that opens the new ledger between the failed "
                   "serve's close and its removal of the files (microseconds) is not seen; nothing an opener of an "
                   "embedded ledger takes could tell it")
def test_a_failed_serve_keeps_a_new_ledger_opened_just_before_its_removal(tmp_path: Path) -> None:
    """The window left by the clean-up above, hit on purpose: another process opens the ledger at the moment the
    failed serve is about to remove it (an audit hook at that removal), then anchors there."""
    from streams._cli.channel import _absent_ledger_files, _unmake_ledger
    from streams.audit import open_ledger
    from streams.ledger.embedded import EmbeddedLedger

    path = tmp_path / "ledger.db"
    spec = f"sqlite:{path}"
    made = _absent_ledger_files(spec)
    ours = open_ledger(spec, create=True)
    others: list[subprocess.Popen[str]] = []

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "os.remove" and str(args[0]) == str(path) and not others:
            other = subprocess.Popen(
                [sys.executable, "-c", "import sys\nfrom streams.ledger.embedded import EmbeddedLedger\n"
                 "ledger = EmbeddedLedger(sys.argv[1])\nprint('open', flush=True)\nsys.stdin.readline()\n"
                 "print(ledger.append(b'tag', b'anchored'), flush=True)\nledger.close()\n", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            others.append(other)
            assert other.stdout is not None and other.stdout.readline() == "open\n"

    sys.addaudithook(hook)  # (cannot be removed: inert once it has run)
    _unmake_ledger(ours, made)
    [other] = others
    with other:
        assert other.stdin is not None and other.stdout is not None
        other.stdin.write("go\n")
        other.stdin.flush()
        anchor_id = other.stdout.readline().strip()
        other.stdin.close()
    assert other.returncode == 0
    assert path.exists(), "the ledger another process had just opened was removed"
    with EmbeddedLedger(path) as ledger:
        assert ledger.read(anchor_id) == (b"tag", b"anchored")


def test_serve_whose_author_fails_under_it_exits_and_says_why(cli: Cli, tmp_path: Path,
                                                              serves: list[Serve]) -> None:
    """The author `serve` runs closes itself when it fails (here its store can no longer be written: the serve
    process's file-size limit is lowered to one byte, so every write of the store fails as on a full disk).  serve
    used to go on running -- its message and event pumps simply ended -- saying nothing on its output and serving
    nobody, until a signal: a supervisor saw a live process, never a failure to restart.  It now exits 1 with an
    error line naming the failure."""
    import resource

    sub_did, serve, (addr, channel, author) = _monitor_and_provider(cli, tmp_path, serves)
    cli("subscribe", "--json", "--store", "provider.db", "--connect", addr, "--keystore", "provider.ks",
        "--author", author, "--channel", channel, "--passphrase-env", "PP").ok()
    serve.wait("admitted", did=sub_did)
    resource.prlimit(serve.p.pid, resource.RLIMIT_FSIZE, (1, 1))  # its store's next write fails
    cli("publish", "--json", "--store", "provider.db", "--connect", addr, "--data", "x", "--wait-ack", "2",
        "--passphrase-env", "PP")
    try:
        rc = serve.p.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError("serve still runs, serving nobody, 60 s after its author failed") from None
    assert rc == 1
    serve.wait("error", timeout=5)
    [error] = [d for d in serve.docs if d["event"] == "error"]
    assert error["error"].startswith("the channel stopped") and "StorageError" in error["error"], error
    # The type names the failure, not the ClosedResourceError a closed party's calls wrap it in.
    assert error["type"] == "StorageError", error
