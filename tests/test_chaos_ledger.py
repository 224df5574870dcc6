"""Ledger outage by process death: the IOTA stand-in node (tests/iota_node.py) is SIGKILLed and restarted on the
same port -- not the admin outage switch of tests/test_anchoring_iota.py.  Publishing goes on, epochs queue
durably, anchoring resumes against the new node, and nothing is reported anchored before it is (THREATS 7)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from streams.api import MemoryHub
from streams.events import Anchored
from streams.ledger.iota import IotaLedger
from tests.test_anchoring_integration import P1, Collect, make_author, make_sub, wait_for
from tests.test_ledger_iota import NODE, needs_sdk


class Node:
    """A stand-in node process that can be killed and brought back on the same port (with an empty tangle)."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(NODE), "--port", str(self.port), "--milestone-interval",
                                      "0.2"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        self.port = int(line.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@needs_sdk
async def test_node_killed_and_restarted_anchoring_resumes_without_false_receipts(tmp_path: Path) -> None:
    node = Node()
    node.start()
    try:
        with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as iota:
            hub = MemoryHub()
            author = await make_author(tmp_path, hub, iota)  # type: ignore[arg-type]
            s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=iota)  # type: ignore[arg-type]
            col = Collect(s1)
            try:
                b1 = await s1.subscribe(timeout=5)
                await author.publish(b1, b"before")
                await s1.next_message(timeout=5)
                await wait_for(lambda: any(e.seq == 1 and e.publisher == 0 for e in col.of(Anchored)), timeout=30,
                               what="anchored before the kill")
                node.kill9()
                # The node is gone: publishing and delivery go on, epochs queue on disk, nothing new is anchored.
                for i in range(5):
                    await author.publish(b1, b"during %d" % i)
                for _ in range(5):
                    await s1.next_message(timeout=5)
                svc = author.anchoring
                assert svc is not None
                await wait_for(lambda: svc.pending >= 1 and svc.last_error is not None, timeout=30,
                               what="queued epoch")
                await asyncio.sleep(0.5)
                assert not [e for e in col.of(Anchored) if e.seq > 1]
                assert all(r.state != "confirmed" for r in author.store.anchors(pending_only=True))
                node.start()  # same port, empty tangle
                await wait_for(lambda: any(e.seq == 6 and e.publisher == 0 for e in col.of(Anchored)), timeout=60,
                               what="anchored after the node came back")
                assert all(e.ledger_verified for e in col.of(Anchored))
                await wait_for(lambda: svc.pending == 0, timeout=30, what="queue drained")
            finally:
                await s1.close()
                await author.close()
    finally:
        node.kill9()


@needs_sdk
async def test_node_killed_between_write_and_milestone_loses_no_anchor(tmp_path: Path) -> None:
    node = Node()
    node.start()
    try:
        with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as iota:
            hub = MemoryHub()
            author = await make_author(tmp_path, hub, iota)  # type: ignore[arg-type]
            s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=iota)  # type: ignore[arg-type]
            col = Collect(s1)
            try:
                import urllib.request

                req = urllib.request.Request(node.url + "/admin/milestones", data=b'{"paused": true}')
                urllib.request.urlopen(req, timeout=5).close()
                b1 = await s1.subscribe(timeout=5)
                for i in range(3):
                    await author.publish(b1, b"m %d" % i)
                await wait_for(lambda: any(r.state == "written" for r in author.store.anchors()), timeout=30,
                               what="written, not confirmed")
                node.kill9()
                node.start()  # the block is gone with the old process
                svc = author.anchoring
                assert svc is not None
                await wait_for(lambda: any(e.seq == 3 and e.publisher == 0 for e in col.of(Anchored)), timeout=8,
                               what="the lost epoch anchored again")
                assert svc.pending == 0
            finally:
                assert not [e for e in col.of(Anchored) if not e.ledger_verified]
                await s1.close()
                await author.close()
    finally:
        node.kill9()
