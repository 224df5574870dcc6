"""`streams demo`: the multi-process demo passes every check, its checks fail when their property does not hold,
and it leaves no process behind (also when interrupted)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import streams._crypto
import streams._parallel
from brokerless.endpoints import _as_message, _unbundle
from streams import keystore
from streams._demo_multi import (
    PASSPHRASE_VAR,
    Child,
    DemoRun,
    judge_anchor_forgeries,
    judge_anchoring,
    judge_delivery,
    judge_forgeries,
    judge_refusal,
    judge_replay,
    judge_segregation,
)
from streams.demo import run_inprocess_demo
from streams.wire import Packet, encode_frame
from tests.cliutil import ROOT


def _procs_under(path: Path) -> list[int]:
    """PIDs of our processes whose working directory is inside ``path`` (the demo's children run there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(path)):
            found.append(int(entry.name))
    return found


def _env(tmp: Path) -> dict[str, str]:
    # TMPDIR: the demo's temporary directory (and so its children's cwd) is inside tmp, to find orphans.
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}


def test_demo_json_every_check_passes_and_no_process_is_left(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--json", "--events", "3"],
                       capture_output=True, text=True, timeout=120, env=_env(tmp_path), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)  # one JSON document; progress went to stderr
    assert report["ok"] is True and report["mode"] == "processes"
    names = [c["check"] for c in report["checks"]]
    assert len(names) == 5
    assert all(c["ok"] for c in report["checks"]), report
    assert any(n.startswith("segregation") for n in names)
    assert {"replayed payment event rejected, nothing delivered", "unlisted DID refused"} <= set(names)
    assert "starting monitor" in r.stderr and "provider acme-pay subscribed" in r.stderr
    assert _procs_under(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_demo_passes_with_more_events_than_the_relay_s_queue_holds(tmp_path: Path) -> None:
    """`streams demo --events N` said FAIL of the segregation check from about 950 events on (documented range
    1..10000): the attacker's relay handed the victim every recorded packet of the other branch in one burst, the
    excess past its connection's high-water marks (1000 messages each way) was dropped silently, and the judge
    wants one rejection per packet sent.  The relay is paced by the victim's reading now: every packet arrives,
    each is rejected."""
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--json", "--events", "1200"],
                       capture_output=True, text=True, timeout=180, env=_env(tmp_path), check=False)
    report = json.loads(r.stdout)
    segregation = next(c for c in report["checks"] if c["check"].startswith("segregation"))
    assert segregation["ok"], segregation
    handed = int(segregation["detail"].split()[0])
    assert handed >= 1200 and f"{handed} rejected (UNKNOWN_BRANCH), 0 readable" in segregation["detail"]
    assert r.returncode == 0 and report["ok"] is True, r.stdout
    assert "replays a payment event of initech-pay it recorded (seq " in r.stderr  # (its first one, or a later)


def test_the_relay_hands_a_subscriber_every_injected_frame_however_many(tmp_path: Path) -> None:
    """The relay's injection was a burst of single messages on its ROUTER: past what the connection holds (1000
    messages queued each side, and the TCP buffers) the rest was dropped silently, so the segregation check
    counted a rejection missing for each.  It waits for the receiver now: a subscriber that reads nothing for a
    second still gets every frame, in order."""
    ctx = zmq.Context()
    relay: Child | None = None
    try:
        author = ctx.socket(zmq.ROUTER)
        port = author.bind_to_random_port("tcp://127.0.0.1")
        relay = Child("relay", [sys.executable, "-m", "brokerless._demo_relay", "--connect",
                                f"tcp://127.0.0.1:{port}"], {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path)
        address = relay.wait_for(lambda d: d.get("event") == "ready", "ready")["address"]
        sub = ctx.socket(zmq.DEALER)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.setsockopt(zmq.RCVBUF, 4096)  # (little room on the way: what the relay must not lose is on its side)
        sub.connect(address)
        branch = bytes(range(16))
        frames = [encode_frame(Packet(bytes(32), branch, 1, seq, bytes(32), 0, bytes(24)), os.urandom(1000)).raw
                  for seq in range(1, 8001)]
        sub.send(frames[0])  # (the relay learns which connection is the branch's)
        assert author.poll(10_000)
        m = relay.mark()
        relay.send({"cmd": "inject", "to_branch": branch.hex(),
                    "frames": [base64.b64encode(f).decode() for f in frames]})
        time.sleep(1.0)  # the subscriber reads nothing meanwhile
        got = []
        while sub.poll(1000):
            got.append(sub.recv())
        reply = relay.wait_for(lambda d: "reply" in d, "the reply", since=m)
        assert len(got) == len(frames) and got == frames, len(got)
        assert (reply["sent"], reply.get("unsent")) == (len(frames), 0), reply
    finally:
        if relay is not None:
            relay.stop()
        ctx.destroy(linger=0)


def _relay_between(ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
                   ) -> tuple[zmq.Socket[bytes], Child, zmq.Socket[bytes]]:
    """A bare ROUTER as the author, the relay in front of it, and a DEALER as the subscriber through the relay."""
    author = ctx.socket(zmq.ROUTER)
    author.setsockopt(zmq.RCVHWM, 10)
    author.setsockopt(zmq.RCVBUF, 4096)
    port = author.bind_to_random_port("tcp://127.0.0.1")
    relay = Child("relay", [sys.executable, "-m", "brokerless._demo_relay", "--connect", f"tcp://127.0.0.1:{port}"],
                  {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path)
    address = relay.wait_for(lambda d: d.get("event") == "ready", "ready")["address"]
    sub = ctx.socket(zmq.DEALER)
    sub.setsockopt(zmq.SNDTIMEO, 100)
    sub.connect(address)
    return author, relay, sub


def _packets(branch: bytes, seqs: range, size: int = 100) -> list[bytes]:
    return [encode_frame(Packet(bytes(32), branch, 1, seq, bytes(32), 0, bytes(24)), os.urandom(size)).raw
            for seq in seqs]


def test_the_relay_opens_a_provider_s_bundles(tmp_path: Path) -> None:
    """A provider's ``publish_many`` reaches the author in BUNDLEs: the relay recorded such a message as one
    unreadable frame, so the attacker (and the demo's checks that replay or hold a provider's packets) never saw
    the packets in it.  Each is recorded now, can be withheld, and the rest goes on."""
    ctx = zmq.Context()
    relay: Child | None = None
    try:
        author, relay, sub = _relay_between(ctx, tmp_path)
        branch = bytes(range(16))
        first, second = _packets(branch, range(1, 4)), _packets(branch, range(4, 7))
        sub.send(_as_message(first))
        assert author.poll(10_000)
        assert _unbundle(author.recv_multipart()[1]) == first  # forwarded as it came
        got = relay.request({"cmd": "frames", "dir": "up", "branch": branch.hex()})["frames"]
        assert [base64.b64decode(f) for f in got] == first
        relay.request({"cmd": "hold", "dir": "up", "branch": branch.hex(), "count": 1})
        sub.send(_as_message(second))
        assert author.poll(10_000)
        assert _unbundle(author.recv_multipart()[1]) == second[1:]
        assert [base64.b64decode(f) for f in relay.request({"cmd": "held"})["frames"]] == second[:1]
        # The connection is known as the branch's from the packets in a bundle too (an injection reaches it).
        assert relay.request({"cmd": "inject", "to_branch": branch.hex(), "frames": []})["clients"] == 1
    finally:
        if relay is not None:
            relay.stop()
        ctx.destroy(linger=0)


def test_the_relay_keeps_serving_when_the_author_takes_nothing(tmp_path: Path) -> None:
    """The relay's send to the author was a blocking DEALER send: an author that stopped reading (its queue
    full) froze the relay -- no command answered, nothing forwarded either way.  It drops what does not fit now,
    as it does downstream (a lossy network; the protocol's gap fill recovers)."""
    ctx = zmq.Context()
    relay: Child | None = None
    try:
        _author, relay, sub = _relay_between(ctx, tmp_path)
        branch = bytes(range(16))
        sent = 0
        for f in _packets(branch, range(1, 6001), size=8000):  # ~48 MB: more than the queues and buffers hold
            try:
                sub.send(f)
                sent += 1
            except zmq.Again:
                time.sleep(0.01)
        assert sent > 2000
        reply = relay.request({"cmd": "held"})  # (DemoError after STEP_TIMEOUT if the relay is stuck)
        assert reply == {"reply": "held", "frames": []}
        frames = relay.request({"cmd": "frames", "dir": "up", "branch": branch.hex()})["frames"]
        assert len(frames) > 2000  # it kept reading from the subscriber
    finally:
        if relay is not None:
            relay.stop()
        ctx.destroy(linger=0)


def test_the_relay_takes_a_command_line_of_many_megabytes(tmp_path: Path) -> None:
    """A command line (frames to inject, in base64) arrives in many reads; it is joined once at its newline."""
    ctx = zmq.Context()
    relay: Child | None = None
    try:
        author, relay, sub = _relay_between(ctx, tmp_path)
        branch = bytes(range(16))
        sub.send(_packets(branch, range(1, 2))[0])
        assert author.poll(10_000)
        frames = _packets(branch, range(2, 4002), size=1000)  # ~5.6 MB of base64 on one line
        m = relay.mark()
        relay.send({"cmd": "inject", "to_branch": branch.hex(),
                    "frames": [base64.b64encode(f).decode() for f in frames]})
        got = []
        while len(got) < len(frames) and sub.poll(10_000):
            got.append(sub.recv())
        reply = relay.wait_for(lambda d: "reply" in d, "the reply", since=m)
        assert got == frames and reply["sent"] == len(frames)
    finally:
        if relay is not None:
            relay.stop()
        ctx.destroy(linger=0)


def test_demo_interrupted_leaves_no_process(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--events", "3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert p.stdout is not None
        for line in p.stdout:  # wait until every child runs
            if "provider initech-pay subscribed" in line:
                break
        children = _procs_under(tmp_path)
        assert len(children) >= 5  # monitor, relay, three providers
        p.send_signal(signal.SIGINT)
        p.wait(30)
        end = time.monotonic() + 10
        while _procs_under(tmp_path) and time.monotonic() < end:
            time.sleep(0.1)
        assert _procs_under(tmp_path) == []
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for s in (p.stdout, p.stderr):
            if s is not None:
                s.close()
        for pid in _procs_under(tmp_path):  # never leak, even if the assertion above failed
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    run = DemoRun(tmp_path, events_per_provider=2)
    try:
        run.start()
        assert run.check_delivery().ok
        yield run
    finally:
        run.close()


def test_checks_fail_when_the_property_does_not_hold(demo: DemoRun) -> None:
    """Drive the real processes into situations where a claim is false, and see the check say FAIL."""
    assert demo.relay is not None and demo.monitor is not None
    initech, globex = demo.providers["initech-pay"], demo.providers["globex-pay"]

    # Replay check fed a *fresh* frame: the attacker withholds initech's next payment event, so the monitor
    # never saw it; sending it "again" is then a first delivery, and the check must report FAIL.  The relay keeps
    # withholding every packet of that branch until the check is done: otherwise gap fill (a HEAD notice, then a
    # FETCH answered with the same packet) hands the monitor the event first and the "fresh" frame is a replay.
    demo.relay.request({"cmd": "hold", "dir": "up", "branch": initech.branch, "count": 10_000})
    m = initech.proc.mark()
    initech.proc.send({"cmd": "publish", "data": "payment 3"})
    fresh = initech.proc.wait_for(lambda d: d.get("event") == "published", "publish", since=m)
    assert fresh["seq"] == 3
    held = []
    end = time.monotonic() + 10
    while not held and time.monotonic() < end:
        held = demo.relay.request({"cmd": "held"})["frames"]
        time.sleep(0.05)
    assert all(h == held[0] for h in held)  # the event, and nothing but gap-fill copies of it
    replay = demo.check_replay(held[0])
    demo.relay.request({"cmd": "hold", "dir": "up", "branch": initech.branch, "count": 0})
    assert not replay.ok, replay
    assert "not rejected" in replay.detail and "1 message(s) delivered" in replay.detail

    # The real replay (a frame the monitor already accepted) passes, on the same processes.
    assert demo.check_replay(demo.recorded_packet("initech-pay")).ok

    # Segregation check fed frames the victim *can* read: an alert to globex, withheld on the way down and
    # then "handed over" as if it belonged to another branch.  The check must report FAIL.
    # (As above, the relay withholds the gap-fill copies too, until the injection.)
    demo.relay.request({"cmd": "hold", "dir": "down", "branch": globex.branch, "count": 10_000})
    demo.monitor.send({"to": globex.did, "data": "alert withheld by the attacker"})
    held = []
    end = time.monotonic() + 10
    while not held and time.monotonic() < end:
        held = demo.relay.request({"cmd": "held"})["frames"]
        time.sleep(0.05)
    assert held and all(h == held[0] for h in held)
    m = globex.proc.mark()
    sent = demo.relay.request({"cmd": "inject", "to_branch": globex.branch, "frames": held[:1]})["sent"]
    demo.relay.request({"cmd": "hold", "dir": "down", "branch": globex.branch, "count": 0})
    globex.proc.wait_for(lambda d: d.get("event") == "message", "the withheld alert", since=m)
    seg = judge_segregation(sent, globex.branch, globex.proc.since(m), True, owner="globex", victim="globex")
    assert not seg.ok and "1 readable" in seg.detail

    # The real segregation check passes on the same processes.
    assert demo.check_segregation().ok


def test_judges_on_hand_made_observations() -> None:
    did, other = "did:key:z6MkA", "did:key:z6MkB"
    ok_msgs = [{"event": "message", "branch": "aa", "seq": s, "publisher": did, "signed": True} for s in (1, 2)]
    assert judge_delivery({"p": (did, "aa")}, 2, ok_msgs).ok
    assert not judge_delivery({"p": (did, "aa")}, 3, ok_msgs).ok  # one missing
    forged = [*ok_msgs[:1], {**ok_msgs[1], "publisher": other}]
    assert not judge_delivery({"p": (did, "aa")}, 2, forged).ok
    assert not judge_delivery({"p": (did, "aa")}, 2, [*ok_msgs[:1], {**ok_msgs[1], "signed": False}]).ok

    rej = {"event": "rejected", "branch": "bb", "seq": 1, "reason": "REPLAY"}
    assert judge_replay([rej], "bb", 1).ok
    assert not judge_replay([], "bb", 1).ok
    assert not judge_replay([{**rej, "reason": "BAD_SIGNATURE"}], "bb", 1).ok
    assert not judge_replay([rej, {"event": "message", "branch": "bb", "seq": 2}], "bb", 1).ok
    assert not judge_replay([{**rej, "seq": 2}], "bb", 1).ok  # another frame's rejection does not count

    assert judge_segregation(2, "aa", [{"event": "rejected", "branch": "aa"}] * 2, True).ok
    assert not judge_segregation(2, "aa", [{"event": "rejected", "branch": "aa"}] * 2, False).ok
    assert not judge_segregation(2, "aa", [{"event": "rejected", "branch": "aa"}], True).ok
    assert not judge_segregation(0, "aa", [], True).ok

    refused = [{"event": "refused", "did": did}]
    assert judge_anchoring(["a", "b"], {"a": 0, "b": 1}, True, 2).ok
    assert not judge_anchoring(["a", "b"], {"a": 0}, True, 2).ok  # b never verified a proof on the ledger
    assert not judge_anchoring(["a"], {"a": 0}, False, 2).ok  # the ledger's hash chain is broken
    assert judge_refusal(1, {"reason": "REFUSED"}, refused, did).ok
    assert not judge_refusal(0, {"reason": "REFUSED"}, refused, did).ok
    assert not judge_refusal(1, {"reason": "REFUSED"}, [], did).ok
    assert not judge_refusal(2, {"error": "timeout"}, refused, did).ok


def test_judges_of_the_forgeries_on_hand_made_observations() -> None:
    assert judge_forgeries(2, ["BAD_SIGNATURE"] * 2, 0, True)[0]
    assert not judge_forgeries(2, ["BAD_SIGNATURE"], 1, True)[0]  # one forgery delivered
    assert not judge_forgeries(2, ["BAD_SIGNATURE", "REPLAY"], 0, True)[0]  # refused, but not for its signature
    assert not judge_forgeries(2, ["BAD_SIGNATURE"] * 2, 0, False)[0]  # the genuine message lost
    assert not judge_forgeries(0, [], 0, True)[0]  # nothing forged: nothing shown

    def doc(event: str, **kw: object) -> dict[str, object]:
        return {"event": event, "branch": "aa", "seq": 3, **kw}

    refused = [doc("rejected", reason="BAD_SIGNATURE"), doc("rejected", reason="NOT_ANCHORED")]
    genuine = [doc("anchored", ledger_verified=True)]
    assert judge_anchor_forgeries(["altered", "unwritten"], refused, genuine, "aa", 3).ok
    assert not judge_anchor_forgeries(["altered", "unwritten"], refused[:1], genuine, "aa", 3).ok
    assert not judge_anchor_forgeries(["altered", "unwritten"], [*refused, genuine[0]], genuine, "aa", 3).ok
    assert not judge_anchor_forgeries(["altered", "unwritten"], refused[::-1], genuine, "aa", 3).ok
    assert not judge_anchor_forgeries(["altered", "unwritten"], refused, [doc("anchored", ledger_verified=False)],
                                      "aa", 3).ok
    assert not judge_anchor_forgeries(["altered"], [{**refused[0], "seq": 2}], genuine, "aa", 3).ok


def test_the_in_process_demo_fails_when_signatures_are_not_checked(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The in-process demo's check of forged signatures attacks: with every signature check of the process made to
    pass, the forged copy of a payment event is delivered, and the demo says FAIL and exits 1.  (The demo passes on
    the real code: tests/test_cli.py.)"""

    def accept(public: bytes, digest: bytes, sig: bytes) -> None:
        return None

    monkeypatch.setattr(streams._crypto, "verify", accept)
    monkeypatch.setattr(streams._parallel, "verify", accept)
    assert run_inprocess_demo(2, as_json=True) == 1
    report = json.loads(capsys.readouterr().out)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["forged signatures on a payment event rejected, nothing delivered"]
    assert "1 delivered" in failed[0]["detail"]


#: Loaded by every child of a demo whose PYTHONPATH holds its directory: while a file ``signatures-off`` is there,
#: every Ed25519 signature verifies; while ``ledger-off`` is, every anchor proof is on the ledger.  Decided at each
#: call, so one set of processes shows each check failing in turn.
_BREAKER = """
from pathlib import Path

import streams._crypto
import streams._parallel
import streams.api
import streams.core
import streams.ledger.anchoring

_HERE = Path(__file__).parent
_verify, _verify_anchored = streams._crypto.verify, streams.ledger.anchoring.verify_anchored


def verify(*args):
    if not (_HERE / "signatures-off").exists():
        _verify(*args)


def verify_anchored(*args, **kwargs):
    if not (_HERE / "ledger-off").exists():
        return _verify_anchored(*args, **kwargs)
    return None


streams._crypto.verify = streams._parallel.verify = verify  # (the latter imported it by name)
streams.ledger.anchoring.verify_anchored = streams.api.verify_anchored = verify_anchored

# While ``same-keys`` is there, a party draws the same 32 random bytes for each key: every branch the monitor
# opens has the same chain keys (segregation broken).
_init = streams.core._CoreBase.__init__


def _init_same_keys(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    rng = self._rng
    self._rng = lambda n: bytes(range(n)) if n == 32 and (_HERE / "same-keys").exists() else rng(n)


streams.core._CoreBase.__init__ = _init_same_keys
"""


def test_the_demo_s_forgery_checks_fail_when_the_children_do_not_check(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks (a) and (e) of the multi-process demo attack what they claim: run against processes whose signature
    checks pass everything, or whose ledger check of anchor proofs does, each says FAIL -- the forged event
    delivered, the altered proof taken, the proof of a checkpoint the ledger does not hold taken.  (On the real
    code they pass: test_demo_json_every_check_passes_and_no_process_is_left.)"""
    breaker = _breaker(tmp_path, monkeypatch)
    run = DemoRun(tmp_path / "demo", events_per_provider=1)
    run.workdir.mkdir()
    try:
        run.start()
        (breaker / "signatures-off").touch()
        a = run.check_delivery()
        assert not a.ok and "2 forged copies: 1 rejected (REPLAY), 1 delivered" in a.detail, a
        e = run.check_anchor_forgeries()
        assert not e.ok and "refused none, 1 taken as anchored" in e.detail, e  # the altered proof
        (breaker / "signatures-off").unlink()
        (breaker / "ledger-off").touch()
        e = run.check_anchor_forgeries()
        assert not e.ok and "refused BAD_SIGNATURE, 1 taken as anchored" in e.detail, e  # the unwritten one
    finally:
        run.close()


def _breaker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory of the :data:`_BREAKER` every child of a demo started now loads."""
    breaker = tmp_path / "breaker"
    breaker.mkdir()
    (breaker / "sitecustomize.py").write_text(_BREAKER)
    monkeypatch.setenv("PYTHONPATH", str(breaker))
    return breaker


def test_the_demo_s_segregation_check_fails_when_every_branch_has_the_same_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check (b) attacks what it claims: with a monitor that keys every branch alike, the grants globex-pay holds
    open acme-pay's packets, and the check says FAIL -- for that, not for packets lost on the way: with more events
    than the relay's queue holds (which used to lose some), each packet is handed over and rejected by globex-pay's
    software, and each opens with its keys.  (On the real code it passes:
    test_demo_passes_with_more_events_than_the_relay_s_queue_holds.)"""
    (_breaker(tmp_path, monkeypatch) / "same-keys").touch()
    run = DemoRun(tmp_path / "demo", events_per_provider=1200)
    run.workdir.mkdir()
    try:
        run.start()
        assert run.check_delivery().ok
        seg = run.check_segregation()
    finally:
        run.close()
    handed = int(seg.detail.split()[0])
    assert not seg.ok and handed >= 1200, seg
    assert f"{handed} rejected (UNKNOWN_BRANCH), 0 readable" in seg.detail, seg
    assert f"; {handed} open with the " in seg.detail, seg


def _environ(pid: int) -> dict[bytes, bytes]:
    """A running process's environment (``/proc/PID/environ``)."""
    raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    return dict(entry.partition(b"=")[::2] for entry in raw.split(b"\0") if entry)


def test_each_demo_process_holds_only_its_own_passphrase_and_the_attacker_none(demo: DemoRun) -> None:
    """THREATS 9: the relay is the demo's attacker, and each provider another organisation; a process holding the
    passphrase of a keystore in the demo's directory can open it and read that party's branches.  So the relay's
    environment holds no passphrase of the demo, and each party's only its own (the one that opens its keystore)."""
    assert demo.relay is not None and demo.monitor is not None
    parties = {"monitor": demo.monitor.p.pid, **{n: p.proc.p.pid for n, p in demo.providers.items()}}
    var = PASSPHRASE_VAR.encode()
    passphrases = {name: _environ(pid)[var] for name, pid in parties.items()}
    for name, passphrase in passphrases.items():  # (each is the real one: it opens the party's keystore)
        keystore.load_identity(demo.workdir / f"{name}.ks", passphrase)
    assert len(set(passphrases.values())) == len(parties)  # one each
    relay = _environ(demo.relay.p.pid)
    assert var not in relay and set(relay.values()).isdisjoint(passphrases.values())
    for name, pid in parties.items():
        assert set(_environ(pid).values()) & set(passphrases.values()) == {passphrases[name]}, name
