"""Anchoring through IOTA: the real iota-sdk client (worker process) against the stand-in Stardust node.  A node
outage queues anchors; a written but not yet milestone-confirmed checkpoint is never reported as anchored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.api import MemoryHub
from streams.events import Anchored
from streams.ledger.iota import IotaLedger
from tests.test_anchoring_integration import P1, Collect, make_author, make_sub, wait_for
from tests.test_ledger_iota import StandIn, needs_sdk
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
