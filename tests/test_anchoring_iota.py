"""Anchoring through IOTA: the real iota-sdk client (worker process) against the stand-in Stardust node.  A node
outage queues anchors; a written but not yet milestone-confirmed checkpoint is never reported as anchored."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.api import MemoryHub, Subscriber
from streams.errors import LocalProtocolError, RejectReason
from streams.events import Anchored, Rejected
from streams.ledger.iota import IotaLedger
from tests.test_anchoring_integration import AUTHOR, FAST, P1, PW, Collect, make_author, make_sub, wait_for
from tests.test_ledger_iota import NODE, StandIn, needs_sdk
from tests.test_ledger_iota import node as node  # the stand-in node process fixture (module scope)


@pytest.fixture
def iota(node: StandIn) -> Iterator[IotaLedger]:
    with IotaLedger(node.url, timeout=10.0, api_timeout=2.0) as led:
        yield led


@needs_sdk
async def test_node_outage_queues_anchors_then_they_are_anchored(tmp_path: Path, node: StandIn,
                                                                 iota: IotaLedger) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, iota)  # type: ignore[arg-type]
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=iota)  # type: ignore[arg-type]
    col = Collect(s1)
    node.admin("/admin/outage", {"on": True})
    try:
        b1 = await s1.subscribe(timeout=5)
        for i in range(3):
            await author.publish(b1, b"alert %d" % i)
        for _ in range(3):
            await s1.next_message(timeout=5)
        svc = author.anchoring
        assert svc is not None
        await wait_for(lambda: svc.pending >= 1 and svc.last_error is not None, timeout=30, what="queued epoch")
        assert not col.of(Anchored)
        # The node is back, but no milestone references the block yet: written, not anchored (THREATS 7).
        node.admin("/admin/milestones", {"paused": True})
        node.admin("/admin/outage", {"on": False})
        await wait_for(lambda: any(r.state == "written" for r in author.store.anchors()), timeout=30,
                       what="written epoch")
        await asyncio.sleep(0.5)
        assert not col.of(Anchored) and author.store.anchored_heads() == []
        node.admin("/admin/milestones", {"paused": False})
        await wait_for(lambda: any(e.seq == 3 and e.publisher == 0 for e in col.of(Anchored)), timeout=30,
                       what="anchored after the milestone")
        assert all(e.ledger_verified and e.anchor_id.startswith("0x") for e in col.of(Anchored))
        await wait_for(lambda: svc.pending == 0, timeout=30, what="queue drained")
    finally:
        node.admin("/admin/outage", {"on": False})
        node.admin("/admin/milestones", {"paused": False})
        await s1.close()
        await author.close()


# --- a member on another node, which lags behind the author's ---------------------------------------------------

RAW_BLOCK = "application/vnd.iota.serializer-v1"


@pytest.fixture
def lagging() -> Iterator[StandIn]:
    """A second stand-in node (its own process) for the member: it learns the author's blocks only when the test
    relays them (gossip is not modelled), and issues milestones only when told to."""
    proc = subprocess.Popen([sys.executable, str(NODE), "--port", "0", "--milestone-interval", "0.2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        n = StandIn("http://" + line.split()[-1], proc)
        n.admin("/admin/milestones", {"paused": True})
        yield n
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def gossip(src: StandIn, dst: StandIn, block_id: str) -> None:
    """What gossip does between two nodes, through their real REST API: the block's bytes as ``src`` holds them,
    submitted to ``dst`` (same bytes, so the same block id)."""
    url = f"{src.url}/api/core/v2/blocks/{block_id}"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": RAW_BLOCK}), timeout=5) as r:
        raw = r.read()
    req = urllib.request.Request(f"{dst.url}/api/core/v2/blocks", data=raw, headers={"Content-Type": RAW_BLOCK})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["blockId"] == block_id


async def _proof_sent(author: Any, s1: Any, node: StandIn, lagging: StandIn, col: Collect) -> str:
    """Publish three messages; wait for the author's epoch to be confirmed on its node (its proofs go out then);
    return the anchor id.  The member's node knows nothing of it yet."""
    b1 = await s1.subscribe(timeout=5)
    for i in range(3):
        await author.publish(b1, b"alert %d" % i)
    for _ in range(3):
        await s1.next_message(timeout=5)
    await wait_for(lambda: any(r.state == "confirmed" for r in author.store.anchors()), timeout=30,
                   what="the author's epoch confirmed on its node")
    return str(next(r.anchor_id for r in author.store.anchors() if r.state == "confirmed"))


@needs_sdk
async def test_a_member_whose_node_lags_waits_for_the_milestone_rather_than_reporting_not_anchored(
        tmp_path: Path, node: StandIn, iota: IotaLedger, lagging: StandIn) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, iota)  # type: ignore[arg-type]
    with IotaLedger(lagging.url, timeout=10.0, api_timeout=2.0) as behind:
        s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=behind)  # type: ignore[arg-type]
        col = Collect(s1)
        try:
            anchor_id = await _proof_sent(author, s1, node, lagging, col)
            await asyncio.sleep(0.5)  # the member asks its node, which does not know the block yet
            # The block reaches the member's node, which has not seen the milestone referencing it.
            gossip(node, lagging, anchor_id)
            assert not behind.status(anchor_id).confirmed
            await asyncio.sleep(1.5)  # the member asks again meanwhile: "not confirmed yet" is no verdict
            assert not col.of(Rejected) and not col.of(Anchored)
            lagging.admin("/admin/milestones", {"paused": False})
            await wait_for(lambda: any(e.seq == 3 and e.publisher == 0 for e in col.of(Anchored)), timeout=30,
                           what="anchored once the member's node has the milestone")
            assert all(e.ledger_verified and e.anchor_id == anchor_id for e in col.of(Anchored))
            assert not col.of(Rejected)
        finally:
            await s1.close()
            await author.close()


@needs_sdk
@pytest.mark.parametrize("relayed", [True, False], ids=["never-confirmed", "never-known"])
async def test_a_proof_the_members_node_never_confirms_is_not_anchored_after_the_wait(
        tmp_path: Path, node: StandIn, iota: IotaLedger, lagging: StandIn, relayed: bool) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, iota)  # type: ignore[arg-type]
    with IotaLedger(lagging.url, timeout=10.0, api_timeout=2.0) as behind:
        s1 = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                     hub.subscriber_endpoint("p1"), store_options=FAST,
                                     ledger=behind, anchor_wait=1.0)  # type: ignore[arg-type]
        col = Collect(s1)
        try:
            anchor_id = await _proof_sent(author, s1, node, lagging, col)
            sent = time.monotonic()  # the proof went out just before: the member's wait starts no earlier
            if relayed:
                gossip(node, lagging, anchor_id)
            await wait_for(lambda: bool(col.of(Rejected)), timeout=30, what="the verdict after the wait")
            # After the wait, not at the first "not confirmed" (which the old code reported at once).
            assert time.monotonic() - sent >= 0.8
            bad = col.of(Rejected)
            assert {r.reason for r in bad} == {RejectReason.NOT_ANCHORED}
            assert all(("not confirmed" if relayed else "does not know") in r.detail for r in bad), bad
            assert all("s of asking" in r.detail for r in bad), bad
            assert not col.of(Anchored)
            assert s1.store.anchored_heads() == []
        finally:
            await s1.close()
            await author.close()


@pytest.mark.parametrize("wait", [0, -1.0, float("nan"), True, "600"])
async def test_anchor_wait_must_be_a_positive_number_and_is_checked_before_the_store_is_made(
        tmp_path: Path, wait: Any) -> None:
    hub = MemoryHub()
    path = tmp_path / "p1.db"
    with pytest.raises(LocalProtocolError, match="anchor_wait"):
        await Subscriber.create(path, P1, AUTHOR.did, b"\x01" * 32, PW, hub.subscriber_endpoint("p1"),
                                store_options=FAST, anchor_wait=wait)
    assert list(tmp_path.iterdir()) == []
