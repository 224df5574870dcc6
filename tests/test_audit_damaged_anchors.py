"""An author store whose ``anchors.heads`` column (plain msgpack, not sealed) was edited or damaged.

``audit_store`` promises a finding for whatever it finds in the store; the store's reader of that column
promises :class:`StorageError` for a column of the wrong form.  A head of the wrong shape or types used to raise
a bare ValueError/TypeError from deep in the audit (``streams audit``: "the audit cannot run").  Real SQLite
stores and an embedded ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from streams.audit import audit_store
from streams.errors import StorageError
from streams.ledger import EmbeddedLedger
from streams.store import Store
from tests.test_anchor_review import _copy_store
from tests.test_anchoring_integration import PW, _channel_for_audit

DAMAGES: dict[str, Callable[[list[Any]], Any]] = {
    "a head with four fields": lambda h: [h[0][:4], *h[1:]],
    "a head whose seq is text": lambda h: [[h[0][0], h[0][1], "3", h[0][3], h[0][4]], *h[1:]],
    "a head whose branch is an integer": lambda h: [[7, *h[0][1:]], *h[1:]],
    "heads as a map": lambda h: {"a": 1},
    "heads as a number": lambda h: 5,
}


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import asyncio

    tmp = tmp_path_factory.mktemp("chan")
    lpath, _ = asyncio.run(_channel_for_audit(tmp))
    return tmp, lpath


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_the_audit_reports_a_damaged_heads_column_as_a_finding(channel: tuple[Path, Path], tmp_path: Path,
                                                                damage: str) -> None:
    tmp, lpath = channel
    with EmbeddedLedger(lpath) as ledger:
        assert audit_store(tmp / "author.db", PW, ledger).ok  # the untouched store
        db = _copy_store(tmp / "author.db", tmp_path / "t.db")
        epoch, raw = db.execute("SELECT epoch, heads FROM anchors ORDER BY epoch LIMIT 1").fetchone()
        heads = msgpack.unpackb(raw, raw=False)
        db.execute("UPDATE anchors SET heads = ? WHERE epoch = ?",
                   (msgpack.packb(DAMAGES[damage](heads), use_bin_type=True), epoch))
        db.commit()
        db.close()
        report = audit_store(tmp_path / "t.db", PW, ledger)
    assert not report.ok
    assert [f.reason for f in report.findings if "anchor epochs unreadable" in f.reason]
    store = Store.open(tmp_path / "t.db", PW, durable=False)
    try:
        with pytest.raises(StorageError, match="heads column"):
            store.anchors()
    finally:
        store.close()
