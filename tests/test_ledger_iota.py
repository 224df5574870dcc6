"""IotaLedger end to end: the real iota-sdk client, in its worker process, against the stand-in Stardust node
(tests/iota_node.py) running as its own process on a free 127.0.0.1 port."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams._cli._common import read_passphrase
from streams.anchor import ANCHOR_TAG, EpochCheckpoint, build_epoch
from streams.anchor import ChainHead as Head
from streams.errors import (
    ClosedResourceError,
    DecodeError,
    LedgerError,
    LocalProtocolError,
    VerificationError,
)
from streams.identity import Identity
from streams.ledger import Ledger, UnknownAnchor
from streams.ledger.anchoring import confirm, publish, verify_anchored
from streams.ledger.iota import IotaLedger, parse_tagged_block

needs_sdk = pytest.mark.skipif(
    importlib.util.find_spec("iota_sdk") is None, reason="iota-sdk is not installed (the 'iota' extra)"
)

NODE = Path(__file__).with_name("iota_node.py")


class StandIn:
    """The stand-in node process and its admin endpoints."""

    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url, self.proc = url, proc

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data), timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def node() -> Iterator[StandIn]:
    proc = subprocess.Popen(
        [sys.executable, str(NODE), "--port", "0", "--milestone-interval", "0.2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening on 127.0.0.1:PORT": the OS picked a free port
        assert line.startswith("listening on 127.0.0.1:"), line
        yield StandIn("http://" + line.split()[-1], proc)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def ledger(node: StandIn) -> Iterator[IotaLedger]:
    with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:
        yield led


def _wait_confirmed(led: IotaLedger, block_id: str, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        st = led.status(block_id)
        if st.confirmed:
            return st
        time.sleep(0.1)
    raise AssertionError("not confirmed in time")


@needs_sdk
def test_append_is_unconfirmed_until_a_milestone_references_it(node: StandIn, ledger: IotaLedger) -> None:
    assert isinstance(ledger, Ledger)
    before_ms = (int(time.time()) - 1) * 1000
    node.admin("/admin/milestones", {"paused": True})
    try:
        block_id = ledger.append(b"streams.test", b"hello tangle")
        st = ledger.status(block_id)
        assert (st.confirmed, st.timestamp_ms, st.ref) == (False, None, None)
    finally:
        node.admin("/admin/milestones", {"paused": False})
    st = _wait_confirmed(ledger, block_id)
    assert st.ref is not None
    assert st.ref >= 2
    assert st.timestamp_ms is not None
    assert st.timestamp_ms >= before_ms
    assert st.timestamp_ms % 1000 == 0  # a Stardust milestone timestamp is in seconds
    assert ledger.read(block_id) == (b"streams.test", b"hello tangle")
    # the SDK ran in another process, never in this one
    assert ledger.worker_pid not in (None, os.getpid())
    assert "iota_sdk" not in sys.modules


@needs_sdk
def test_block_id_is_the_blake2b_of_the_bytes_the_node_received(node: StandIn, ledger: IotaLedger) -> None:
    block_id = ledger.append(b"t", b"\x00\x01\x02")
    computed = node.admin(f"/admin/blocks/{block_id}/raw-hash")
    assert computed["hash"] == block_id
    # and the client posted the serialized block, not JSON
    types = node.admin("/admin/stats")["postContentTypes"]
    assert types
    assert all(t.startswith("application/vnd.iota.serializer-v1") for t in types)


@needs_sdk
def test_an_epoch_checkpoint_round_trips_through_the_tangle(ledger: IotaLedger) -> None:
    author = Identity.from_seed(bytes(32))
    heads = [Head(bytes([i]) * 16, 0, 3, bytes([i]) * 32, bytes([9]) * 32) for i in range(20)]
    epoch = build_epoch(bytes(32), heads, None, 1_700_000_000_000, author.sign)
    block_id = ledger.append(ANCHOR_TAG, epoch.payload)
    tag, data = ledger.read(block_id)
    assert tag == ANCHOR_TAG
    cp = EpochCheckpoint.decode(data)
    assert cp == epoch.checkpoint
    cp.verify(author.sign_public)
    assert _wait_confirmed(ledger, block_id).confirmed


@needs_sdk
def test_no_receipt_before_the_milestone(node: StandIn, ledger: IotaLedger) -> None:
    author = Identity.from_seed(bytes([3]) * 32)
    heads = [Head(bytes([i]) * 16, 1, 7, bytes([i]) * 32, bytes([4]) * 32) for i in range(5)]
    epoch = build_epoch(bytes([2]) * 32, heads, None, 1_700_000_000_000, author.sign)
    h = heads[3]
    proof = epoch.proofs[(h.branch, h.publisher)]
    node.admin("/admin/milestones", {"paused": True})
    try:
        pending = publish(ledger, epoch)
        assert confirm(ledger, pending) is None  # written, signed, valid -- and still not anchored
        with pytest.raises(VerificationError):
            verify_anchored(ledger, pending.anchor_id, h, proof, author.sign_public)
    finally:
        node.admin("/admin/milestones", {"paused": False})
    _wait_confirmed(ledger, pending.anchor_id)
    receipt = confirm(ledger, pending)
    assert receipt is not None
    assert receipt.ref is not None
    assert verify_anchored(ledger, pending.anchor_id, h, proof, author.sign_public) == receipt


@needs_sdk
def test_unknown_and_malformed_ids(ledger: IotaLedger) -> None:
    with pytest.raises(UnknownAnchor):
        ledger.status("0x" + "ab" * 32)
    with pytest.raises(UnknownAnchor):
        ledger.read("not-an-id")
    with pytest.raises(LocalProtocolError):
        ledger.append(b"x" * 65, b"")


@needs_sdk
def test_outage_raises_ledger_error_then_recovers(node: StandIn, ledger: IotaLedger) -> None:
    node.admin("/admin/outage", {"on": True})
    try:
        with pytest.raises(LedgerError) as info:
            ledger.append(b"t", b"during outage")
        assert info.value.__cause__ is not None
        with pytest.raises(LedgerError):
            ledger.status("0x" + "ab" * 32)
    finally:
        node.admin("/admin/outage", {"on": False})
    block_id = ledger.append(b"t", b"after outage")
    assert ledger.read(block_id) == (b"t", b"after outage")


@needs_sdk
def test_a_worker_started_during_an_outage_recovers_as_soon_as_the_node_is_back(node: StandIn) -> None:
    # The iota-sdk client marks its node unhealthy when created during an outage and then refuses every call with
    # "no healthy node available" until its next node sync (a minute later).  The ledger must not inherit that.
    node.admin("/admin/outage", {"on": True})
    try:
        with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:
            with pytest.raises(LedgerError):
                led.append(b"t", b"during outage")  # the worker (and its client) starts here
            pid = led.worker_pid
            assert pid is not None
            node.admin("/admin/outage", {"on": False})
            block_id = led.append(b"t", b"after outage")  # the first call after the outage succeeds
            assert led.read(block_id) == (b"t", b"after outage")
            assert led.worker_pid == pid  # no restart was needed
    finally:
        node.admin("/admin/outage", {"on": False})


@needs_sdk
def test_worker_death_mid_call_is_a_ledger_error_and_the_worker_restarts(node: StandIn) -> None:
    # A call timeout far beyond the test's own limit: only the death itself can end the call.
    led = IotaLedger(node.url, timeout=3600.0, api_timeout=3600.0)
    try:
        led.status(led.append(b"t", b"warm"))
        pid = led.worker_pid
        assert pid is not None
        errors: list[BaseException] = []

        def call() -> None:
            try:
                led.status("0x" + "cd" * 32)
            except BaseException as exc:
                errors.append(exc)

        node.admin("/admin/stall", {"on": True})  # hold the request so the worker is inside the SDK
        try:
            t = threading.Thread(target=call)
            t.start()
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)  # we started this worker; kill exactly it
            t.join()  # returns because the death is noticed, not because a timeout expired
        finally:
            node.admin("/admin/stall", {"on": False})
        assert len(errors) == 1
        assert isinstance(errors[0], LedgerError)
        assert isinstance(errors[0].__cause__, EOFError | OSError)
        # the next call starts a fresh worker
        block_id = led.append(b"t", b"after crash")
        assert led.worker_pid not in (None, pid)
        assert led.read(block_id) == (b"t", b"after crash")
    finally:
        led.close()


@needs_sdk
def test_the_worker_does_not_inherit_the_cli_passphrase_variable(node: StandIn,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """THREATS 9: the passphrase the CLI reads from ``--passphrase-env VAR`` stays out of the iota-sdk worker's
    environment (readable in /proc, passed on to whatever it starts), while the caller still has it."""
    secret = "worker-env-" + os.urandom(8).hex()
    monkeypatch.setenv("STREAMS_TEST_WORKER_PW", secret)
    monkeypatch.setenv("STREAMS_TEST_WORKER_PLAIN", "kept")
    # The CLI's own read of the passphrase: how it learns which variable holds it.
    assert read_passphrase(argparse.Namespace(passphrase_env="STREAMS_TEST_WORKER_PW", passphrase_file=None)) == secret
    with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:
        block_id = led.append(b"t", b"env")  # a worker started after the read, and serving
        pid = led.worker_pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert led.read(block_id) == (b"t", b"env")
    assert os.environ["STREAMS_TEST_WORKER_PW"] == secret  # the caller keeps it
    assert b"STREAMS_TEST_WORKER_PLAIN=kept" in environ  # the rest of the environment is passed on
    assert not any(secret.encode() in e or e.startswith(b"STREAMS_TEST_WORKER_PW=") for e in environ)
    assert node.url.encode() not in cmdline  # (the URL, which may carry credentials, goes over the pipe)


@needs_sdk
def test_the_demo_providers_passphrase_variable_is_kept_from_the_worker_too(node: StandIn, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A demo provider (``python -m streams._demo_proc ... --passphrase-env VAR --ledger iota:URL``) reads its
    passphrase from the environment itself, not through the CLI's read_passphrase: the variable must be kept
    from the iota-sdk worker its ledger starts as well (THREATS 9)."""
    from streams import _demo_proc

    secret = "demo-worker-env-" + os.urandom(8).hex()
    monkeypatch.setenv("STREAMS_TEST_DEMO_PW", secret)
    monkeypatch.chdir(tmp_path)
    # It reads the passphrase and opens the ledger, then stops at the author's DID (not a key): enough here.
    assert _demo_proc.main(["--store", "p.db", "--keystore", "p.ks", "--connect", "tcp://127.0.0.1:9", "--author",
                            "did:key:z6Mk", "--channel", "00" * 32, "--passphrase-env", "STREAMS_TEST_DEMO_PW",
                            "--ledger", f"iota:{node.url}"]) == 2
    assert "--author" in capsys.readouterr().out
    with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:  # a worker this process starts from now on
        led.append(b"t", b"demo env")
        pid = led.worker_pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert os.environ["STREAMS_TEST_DEMO_PW"] == secret
    assert not any(secret.encode() in e or e.startswith(b"STREAMS_TEST_DEMO_PW=") for e in environ)


@needs_sdk
def test_the_worker_runs_with_the_interpreter_flags_of_its_caller(node: StandIn) -> None:
    """The worker is the caller's interpreter run as the caller's was, as multiprocessing's spawn made it: a caller
    run with -E (or -I: the environment's PYTHON* variables ignored, as a service's interpreter may be) must not get
    a worker that obeys them.  Here PYTHONPROFILEIMPORTTIME, which makes an interpreter that obeys it print its
    imports on stderr -- the stderr the worker shares with its caller."""
    root = Path(__file__).resolve().parent.parent
    caller = (f"import sys; sys.path.insert(0, {str(root)!r})\n"  # (-E: PYTHONPATH is ignored too)
              "from streams.ledger.iota import IotaLedger\n"
              "with IotaLedger(sys.argv[1], timeout=10.0, api_timeout=2.0) as led:\n"
              "    print(led.read(led.append(b't', b'flags')))\n")
    out = subprocess.run([sys.executable, "-E", "-c", caller, node.url], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "(b't', b'flags')\n"
    assert "import time:" not in out.stderr, out.stderr[:2000]


#: A caller of its own (a `streams serve`, say): warms its worker up, prints its pid, then on a line of stdin makes
#: a call the stalled node holds.
_CALLER = """
import sys
from streams.ledger.iota import IotaLedger
led = IotaLedger(sys.argv[1], timeout=3600.0, api_timeout=3600.0)
led.status(led.append(b"t", b"warm"))
print(led.worker_pid, flush=True)
sys.stdin.readline()
led.status("0x" + "cd" * 32)
"""


@needs_sdk
def test_a_worker_whose_caller_was_killed_during_a_call_ends_quietly_when_the_call_returns(node: StandIn) -> None:
    """The caller is killed (-9) while its worker is inside an SDK call: when the call returns, its answer has
    nowhere to go, and the worker ends -- without a traceback (BrokenPipeError) on the stderr it shares with its
    caller (a terminal, a service's journal).  The same answer comes too late after a call's timeout, while the
    caller lives on, when the SDK returns within the second the caller gives the worker before killing it."""
    root = Path(__file__).resolve().parent.parent
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, node.url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert caller.stdin is not None and caller.stdout is not None
        worker = int(caller.stdout.readline())
        node.admin("/admin/stall", {"on": True})
        try:
            caller.stdin.write("go\n")
            caller.stdin.flush()
            deadline = time.monotonic() + 60
            while not any(p.endswith("/metadata") for p in node.admin("/admin/stats")["held"]):
                assert time.monotonic() < deadline, "the worker's request never reached the node"
                time.sleep(0.02)  # until the worker is inside the SDK call
            caller.kill()  # (our own subprocess)
            caller.wait(10)
        finally:
            node.admin("/admin/stall", {"on": False})
        # Until EOF: the worker inherited the caller's stdout and stderr, so this returns once it has ended too.
        _, err = caller.communicate(timeout=60)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(10)
    stat = Path(f"/proc/{worker}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # ended (a zombie at most)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@needs_sdk
def test_a_worker_killed_while_idle_is_replaced_on_next_use(ledger: IotaLedger) -> None:
    ledger.status(ledger.append(b"t", b"warm"))
    pid = ledger.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ledger.worker_pid == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    block_id = ledger.append(b"t", b"after idle crash")
    assert ledger.worker_pid not in (None, pid)
    assert ledger.read(block_id) == (b"t", b"after idle crash")


@needs_sdk
def test_a_timeout_is_a_ledger_error_and_the_next_call_recovers(node: StandIn) -> None:
    led = IotaLedger(node.url, timeout=1.5, api_timeout=30.0)
    try:
        led.status(led.append(b"t", b"warm"))  # worker up and talking
        stuck = led.worker_pid
        node.admin("/admin/stall", {"on": True})  # the node now accepts requests and never answers
        try:
            with pytest.raises(LedgerError) as info:
                led.status("0x" + "ab" * 32)
            assert isinstance(info.value.__cause__, TimeoutError)
            after = led.worker_pid
            assert after is None  # the worker stuck inside the SDK was killed
        finally:
            node.admin("/admin/stall", {"on": False})
        block_id = led.append(b"t", b"after the stall")  # a fresh worker
        assert led.worker_pid not in (None, stuck)
        assert led.read(block_id) == (b"t", b"after the stall")
    finally:
        led.close()
    with pytest.raises(ClosedResourceError):
        led.status("0x" + "ab" * 32)


def test_parse_tagged_block_refuses_non_tagged_data() -> None:
    tag, data = b"tag", b"data"
    body = (5).to_bytes(4, "little") + bytes([len(tag)]) + tag + len(data).to_bytes(4, "little") + data
    raw = bytes([2, 1]) + bytes(32) + len(body).to_bytes(4, "little") + body + bytes(8)
    assert parse_tagged_block(raw) == (tag, data)
    assert hashlib.blake2b(raw, digest_size=32).digest() != bytes(32)
    for bad in (raw[:-1], raw + b"\x00", raw[:38] + b"\x06" + raw[39:], b""):
        with pytest.raises(DecodeError):
            parse_tagged_block(bad)


_HIDE_SDK = """
import sys
from importlib.abc import MetaPathFinder

class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "iota_sdk" or name.startswith("iota_sdk."):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, Hide())
from streams.ledger.iota import IotaLedger, IotaSdkMissing
from streams.errors import LedgerError
try:
    IotaLedger("http://127.0.0.1:9")
except IotaSdkMissing as exc:
    assert isinstance(exc, LedgerError) and isinstance(exc, ImportError)
    print("missing:", exc)
"""


def test_without_iota_sdk_the_error_says_which_extra_to_install() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _HIDE_SDK], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("missing:")
    assert "'iota' extra" in out.stdout


# --- what the node's answers are taken for: only its 404 to a lookup of the block is "unknown" ------------------


def _node_on_a_port_with_404() -> StandIn:
    """A stand-in node of its own, on a free port whose number holds "404" (an error text holds the port)."""
    for port in range(40400, 40500):
        proc = subprocess.Popen([sys.executable, str(NODE), "--port", str(port), "--milestone-interval", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.startswith("listening on 127.0.0.1:"):
            return StandIn("http://" + line.split()[-1], proc)
        proc.wait(10)  # the port was taken: it exited
        proc.stdout.close()
    pytest.skip("no free port from 40400 to 40499")


def _stop(node: StandIn) -> None:
    if node.proc.poll() is None:
        node.proc.terminate()
    node.proc.wait(10)
    if node.proc.stdout is not None:
        node.proc.stdout.close()


@needs_sdk
def test_an_outage_or_a_dead_node_is_no_unknown_block_when_the_port_holds_404() -> None:
    """A node on port 404xx in an outage (503), then gone (connection refused): every lookup of a block it holds is a
    LedgerError (no verdict), never UnknownAnchor -- which makes a member reject a correctly anchored head as
    NOT_ANCHORED and the author write an epoch again.  A real 404 is still UnknownAnchor."""
    node = _node_on_a_port_with_404()
    try:
        with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:
            block_id = led.append(b"t", b"on port 404xx")
            _wait_confirmed(led, block_id)
            node.admin("/admin/outage", {"on": True})
            for call in (led.status, led.read):
                with pytest.raises(LedgerError):  # (UnknownAnchor is no LedgerError)
                    call(block_id)
            node.admin("/admin/outage", {"on": False})
            for call in (led.status, led.read):
                with pytest.raises(UnknownAnchor):
                    call("0x" + "ab" * 32)
            _stop(node)
            for call in (led.status, led.read):
                with pytest.raises(LedgerError):
                    call(block_id)
    finally:
        _stop(node)


@needs_sdk
def test_an_outage_is_no_unknown_block_whatever_the_block_id_or_the_nodes_message_says(node: StandIn,
                                                                                       ledger: IotaLedger) -> None:
    """A block id holding "404" (one in about 70 does) or an outage whose message says "not found" is still an
    outage: LedgerError, not UnknownAnchor."""
    block_id = ledger.append(b"t", b"before the outage")
    ids = [block_id, "0x404" + "0" * 61, "0x" + "ab" * 30 + "4040"]
    for message in ("service unavailable (simulated outage)", "upstream Not Found", "404"):
        node.admin("/admin/outage", {"on": True, "message": message})
        try:
            for anchor_id in ids:
                for call in (ledger.status, ledger.read):
                    with pytest.raises(LedgerError):
                        call(anchor_id)
        finally:
            node.admin("/admin/outage", {"on": False})


@needs_sdk
def test_a_404_to_posting_a_block_is_a_ledger_error(node: StandIn, ledger: IotaLedger) -> None:
    """A node that answers 404 to everything (a URL that does not lead to its API): posting fails with LedgerError,
    not with UnknownAnchor (which no writer expects from append); a lookup is a block it does not know."""
    node.admin("/admin/outage", {"on": True, "code": 404, "message": "not found"})
    try:
        with pytest.raises(LedgerError):
            ledger.append(b"t", b"to nowhere")
        with pytest.raises(UnknownAnchor):
            ledger.status("0x" + "ab" * 32)
        with pytest.raises(UnknownAnchor):
            ledger.read("0x" + "ab" * 32)
    finally:
        node.admin("/admin/outage", {"on": False})


@needs_sdk
def test_a_404_to_the_lookup_of_a_blocks_milestone_is_a_ledger_error(node: StandIn, ledger: IotaLedger) -> None:
    """The node says a milestone references the block, then has no such milestone (pruned): no verdict on the
    block (UnknownAnchor would make an author write its epoch again, a member reject an anchored head)."""
    block_id = ledger.append(b"t", b"referenced")
    _wait_confirmed(ledger, block_id)
    node.admin("/admin/pruned", {"on": True})
    try:
        with pytest.raises(LedgerError, match="status"):
            ledger.status(block_id)
    finally:
        node.admin("/admin/pruned", {"on": False})
    assert ledger.status(block_id).confirmed


def test_the_status_is_read_from_the_shape_of_the_sdk_error_not_from_its_url_or_body() -> None:
    from streams.ledger.iota import _http_status

    url = "http://127.0.0.1:40404/api/core/v2/blocks/0x404" + "0" * 61
    assert _http_status(f"node error: The requested data {url}/metadata was not found.") == 404
    assert _http_status(f"node error: The requested data {url}/not%20found was not found.") == 404
    assert _http_status('node error: Response error with status code 503: {"error": {"code": "404", "message": '
                        f'"block not found"}}, URL: {url}') == 503
    assert _http_status(f"node error: Response error with status code 404: not found, URL: {url}") == 404
    # a body written to look like a 404
    assert _http_status("node error: Response error with status code 502: The requested data x was not found., "
                        f"URL: {url}") == 502
    assert _http_status(f"node error: error sending request for url ({url}): error trying to connect: tcp connect "
                        "error: Connection refused (os error 111)") is None
    assert _http_status(f"node error: error sending request for url ({url}/metadata): operation timed out") is None
    assert _http_status(f"The requested data {url} was not found. and more") is None
    assert _http_status("404 not found") is None


# --- the node URL's credentials stay out of errors -----------------------------------------------------------------


def _texts(exc: BaseException) -> str:
    """Everything an exception and the chain behind it show: what goes into events, log lines and tracebacks."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(out)


@needs_sdk
def test_the_node_urls_credentials_are_in_no_error(node: StandIn) -> None:
    """The node URL may carry credentials (``http://user:password@host``); the SDK's error texts hold the request's
    URL, and they become UnknownAnchor and LedgerError messages, the LedgerError's cause, a member's Rejected events
    and log lines.  None of them may hold the password or a query token -- for a block the node does not know
    (404), an outage (503), or a node that is gone."""
    password, token = "hunter2-" + os.urandom(4).hex(), "tok-" + os.urandom(4).hex()
    url = node.url.replace("http://", f"http://alice:{password}@") + f"/?token={token}"
    unknown = "0x" + "ab" * 32
    with IotaLedger(url, timeout=10.0, api_timeout=2.0) as led:
        block_id = led.append(b"t", b"with credentials")  # (the node takes them)
        assert led.read(block_id) == (b"t", b"with credentials")
        failures: list[BaseException] = []
        for call in (led.status, led.read):
            with pytest.raises(UnknownAnchor) as info:
                call(unknown)
            failures.append(info.value)
        node.admin("/admin/outage", {"on": True})
        try:
            for call in (led.status, led.read):
                with pytest.raises(LedgerError) as lerr:
                    call(block_id)
                failures.append(lerr.value)
            with pytest.raises(LedgerError) as lerr:
                led.append(b"t", b"during the outage")
            failures.append(lerr.value)
        finally:
            node.admin("/admin/outage", {"on": False})
    for exc in failures:
        text = _texts(exc)
        assert "127.0.0.1" in text  # the URL is still there, to say which node failed
        assert password not in text, text
        assert token not in text, text
        assert "alice" not in text, text


@needs_sdk
def test_a_client_that_cannot_be_created_is_reported_without_the_urls_credentials() -> None:
    password = "hunter2-" + os.urandom(4).hex()
    with (IotaLedger(f"ftp://alice:{password}@127.0.0.1:9", timeout=10.0, api_timeout=2.0) as led,
          pytest.raises(LedgerError) as info):
        led.status("0x" + "ab" * 32)
    assert "could not be created" in str(info.value)
    assert password not in _texts(info.value)


def test_redact_takes_userinfo_and_query_values_out_of_every_url() -> None:
    from streams.ledger.iota import _redact

    url = "http://alice:hunter2@127.0.0.1:40404/?token=tok-123"
    assert (_redact("node error: The requested data http://alice:hunter2@127.0.0.1:40404/api/core/v2/blocks/0xab "
                    "was not found.", url)
            == "node error: The requested data http://***@127.0.0.1:40404/api/core/v2/blocks/0xab was not found.")
    assert (_redact("error sending request for url (https://u:p@h:1/x?token=t0k&a=1&flag#frag): refused", "")
            == "error sending request for url (https://***@h:1/x?token=***&a=***&***#frag): refused")
    assert _redact("x http://a:p@ss@host:1/y z", "") == "x http://***@host:1/y z"  # the userinfo ends at the last @
    assert _redact("URL: ws://user@h", "") == "URL: ws://***@h"
    plain = "node error: error sending request for url (http://127.0.0.1:40404/api/core/v2/tips): refused"
    assert _redact(plain, url) == plain
    # the node URL's own secrets, wherever they appear, as given, decoded or encoded
    assert _redact("auth hunter2 failed; tok-123", url) == "auth *** failed; ***"
    assert _redact("p@ss/word and p%40ss%2Fword", "http://a:p%40ss%2Fword@h") == "*** and ***"
    assert _redact("status code 503", "http://a:503@h") == "status code 503"  # too short to look for in text
    assert _redact("status code 503", "http://[::1") == "status code 503"  # a URL that does not parse


# --- a hostile node's oversized answers stay out of the caller's process ------------------------------------------

#: TIP-24: a serialized Stardust block is at most this many bytes.
MAX_BLOCK = 32768


@needs_sdk
def test_a_huge_block_from_a_hostile_node_is_refused_in_the_worker(node: StandIn, ledger: IotaLedger) -> None:
    """A Stardust block is at most 32768 bytes; a node that answers a block read with 1 MB (or 100 MB) must not get
    that into the caller's process: the worker refuses it, a VerificationError (the node lied) that states the
    size, and the caller's memory never holds it."""
    block_id = ledger.append(b"t", b"a real block")
    size = 1_000_000
    node.admin("/admin/oversize", {"bytes": size})
    try:
        tracemalloc.start()
        try:
            with pytest.raises(VerificationError) as info:
                ledger.read(block_id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < size // 10, f"{peak} bytes allocated in the caller during the read"
        assert f"{size} bytes" in str(info.value)
        assert str(MAX_BLOCK) in str(info.value)
        # A block's maximum size itself passes the size check (and fails on its hash), one byte more does not.
        node.admin("/admin/oversize", {"bytes": MAX_BLOCK})
        with pytest.raises(VerificationError, match="does not hash"):
            ledger.read(block_id)
        node.admin("/admin/oversize", {"bytes": MAX_BLOCK + 1})
        with pytest.raises(VerificationError, match=f"{MAX_BLOCK + 1} bytes"):
            ledger.read(block_id)
    finally:
        node.admin("/admin/oversize", {"bytes": 0})
    assert ledger.read(block_id) == (b"t", b"a real block")  # the same worker serves on


@needs_sdk
def test_read_checks_the_length_of_what_the_worker_returns_too(monkeypatch: pytest.MonkeyPatch) -> None:
    led = IotaLedger("http://127.0.0.1:9")
    try:
        monkeypatch.setattr(led, "_call", lambda op, *args: bytes(MAX_BLOCK + 1))
        with pytest.raises(VerificationError, match=f"{MAX_BLOCK + 1} bytes"):
            led.read("0x" + "ab" * 32)
    finally:
        led.close()
