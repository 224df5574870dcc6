"""The author's grant history (SPEC 9.5) in its store: one ``grants`` row per re-key, written once, not a list
inside the branch record rewritten with it; and stores whose records still hold that list.  The asyncio API over
the in-memory transport, with real SQLite stores in a temporary directory."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import msgpack

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, Permission, decode_frame, decode_grant_body

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1, P2, P3 = (Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 3, 4))
POLICY = AllowList.of([P1.did, P2.did, P3.did])
FIRST_LAYOUT = Path(__file__).parent / "fixtures" / "first_layout_grants"


def _record_size(db: Path, branch: bytes) -> int:
    with sqlite3.connect(db) as c:
        (n,) = c.execute("SELECT length(rec) FROM branches WHERE id = ?", (branch,)).fetchone()
    return int(n)


def _history(db: Path, branch: bytes) -> list[tuple[int, bytes]]:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT epoch, frame FROM grants WHERE branch = ? ORDER BY epoch", (branch,)).fetchall()
    return [(int(e), bytes(f)) for e, f in rows]


def _record_list(db: Path, branch: bytes) -> list[bytes]:
    with sqlite3.connect(db) as c:
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (branch,)).fetchone()
    return list(msgpack.unpackb(rec, raw=False)[11])


async def _epoch(sub: Subscriber, branch: bytes, epoch: int) -> None:
    """Wait until ``sub`` holds ``branch`` at ``epoch``."""
    for _ in range(250):
        if any(b.id == branch and b.epoch == epoch for b in sub.branches()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{[(b.id.hex(), b.epoch) for b in sub.branches()]}: epoch {epoch} never came")


async def _back_and_read(tmp: Path, hub: MemoryHub, author: Author, branch: bytes, epoch: int) -> None:
    """The author publishes on ``branch``; P1 comes back, reaches ``epoch`` there and reads that message."""
    await author.publish(branch, b"under epoch %d" % epoch)
    s1 = await Subscriber.open(tmp / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST)
    await _epoch(s1, branch, epoch)
    assert (await s1.next_message(timeout=5)).payload == b"under epoch %d" % epoch
    await s1.close()


async def _start(tmp: Path) -> tuple[MemoryHub, Author, bytes]:
    """The author and P1, subscribed (its branch), then P1 offline."""
    hub = MemoryHub()
    author = await Author.create(tmp / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    s1 = await Subscriber.create(tmp / "p1.db", P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                 store_options=FAST)
    branch = await s1.subscribe(timeout=5)
    await s1.close()
    return hub, author, branch


async def _rekey(author: Author, branch: bytes, n: int) -> None:
    for i in range(n):
        await author.set_permission(branch, Permission.READ if i % 2 == 0 else Permission.READ_WRITE)


async def test_each_rekey_adds_one_history_row_and_the_branch_record_does_not_grow(tmp_path: Path) -> None:
    """The record used to carry every earlier grant and was rewritten whole at each change of the branch
    (quadratic in re-keys; a group's grant is O(members^2) bytes).  A member offline across all the re-keys
    still gets every grant, in order, from the history."""
    db = tmp_path / "author.db"
    hub, author, branch = await _start(tmp_path)
    await _rekey(author, branch, 2)
    size_2 = _record_size(db, branch)
    await _rekey(author, branch, 10)  # epoch 12
    grant_size = len(_history(db, branch)[-1][1])
    # It still grows by each epoch's keys (about 75 bytes here: kept to read older messages), no longer by the
    # 10 grants as well.
    assert _record_size(db, branch) - size_2 < 10 * grant_size // 3
    history = _history(db, branch)
    assert [e for e, _ in history] == list(range(12))
    assert [(decode_frame(f).kind, decode_frame(f).head.epoch) for _, f in history] == [(Kind.GRANT, e)
                                                                                         for e in range(12)]
    assert _record_list(db, branch) == []
    await _back_and_read(tmp_path, hub, author, branch, 12)
    await author.close()


async def test_a_group_opened_and_rekeyed_while_a_member_was_away_reaches_it_from_the_history(tmp_path: Path) -> None:
    """The group's first grant, which the member's own-branch sync answer carries, now comes from the history
    table (epoch 0), and the group's later grants from the group's own sync."""
    hub, author, _own = await _start(tmp_path)
    group = await author.open_group([P1.did, P2.did, P3.did])
    await author.remove_member(group, P3.did)  # epoch 1
    await author.remove_member(group, P2.did)  # epoch 2
    assert [e for e, _ in _history(tmp_path / "author.db", group)] == [0, 1]
    await _back_and_read(tmp_path, hub, author, group, 2)
    await author.close()


async def test_a_store_whose_records_hold_their_history_serves_it_and_moves_it_at_the_next_write(
        tmp_path: Path) -> None:
    """Stores written before the ``grants`` table keep their history in the branch record (a list).  It is
    served as it is (a member offline across those re-keys catches up), and moves into the table, epochs
    unchanged, the next time the record is written."""
    db = tmp_path / "author.db"
    hub, author, branch = await _start(tmp_path)
    await _rekey(author, branch, 5)  # epoch 5
    await author.close()
    frames = _to_old_layout(db, branch)
    assert len(_record_list(db, branch)) == 5 and _history(db, branch) == []
    hub = MemoryHub()
    author = await Author.open(db, PW, hub.author_endpoint(), POLICY, store_options=FAST)
    await _back_and_read(tmp_path, hub, author, branch, 5)
    await author.set_permission(branch, Permission.READ)  # epoch 6: the record is written again
    assert _record_list(db, branch) == []
    history = _history(db, branch)
    assert [e for e, _ in history] == list(range(6))
    assert [f for _, f in history[:5]] == frames
    assert [decode_frame(f).head.epoch for _, f in history] == list(range(6))
    # (a new connection: the author answers a peer's grant syncs once per interval)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1-again"), store_options=FAST)
    await _epoch(s1, branch, 6)
    await s1.close()
    await author.close()


def _to_old_layout(db: Path, branch: bytes) -> list[bytes]:
    """Rewrite ``branch``'s record as the code before the ``grants`` table did (its history inside it, no rows);
    return that history."""
    with sqlite3.connect(db) as c:
        frames = [f for _, f in _history(db, branch)]
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (branch,)).fetchone()
        v = msgpack.unpackb(rec, raw=False)
        v[11] = frames
        c.execute("UPDATE branches SET rec = ? WHERE id = ?", (msgpack.packb(v, use_bin_type=True), branch))
        c.execute("DELETE FROM grants WHERE branch = ?", (branch,))
    return frames


async def test_history_rows_take_their_epoch_from_the_grant_not_from_the_record(tmp_path: Path) -> None:
    """A history an old-layout record still carries must not be shifted by the record's epoch.  (Stores written
    before 2026-11-27 revoked a group emptied by remove_member at the next epoch without a grant of it, so its
    record's epoch was its grant's plus two; an emptied group is now revoked at its own epoch, and this test
    now exercises the common case.)"""
    db = tmp_path / "author.db"
    _hub, author, _own = await _start(tmp_path)
    group = await author.open_group([P1.did, P2.did])
    await author.remove_member(group, P2.did)  # epoch 1
    await author.close()
    [first] = _to_old_layout(db, group)
    author = await Author.open(db, PW, MemoryHub().author_endpoint(), POLICY, store_options=FAST)
    await author.remove_member(group, P1.did)  # the last member: revoked
    assert _record_list(db, group) == []
    assert _history(db, group) == [(0, first)] and decode_frame(first).head.epoch == 0
    await author.close()


async def test_stores_written_with_first_layout_grants_still_serve_and_read_them(tmp_path: Path) -> None:
    """Stores written before the current GRANT body (SPEC 8.5: ``[shared, entries]``) hold grants of the first
    layout, every entry sealing the member list and the heads whole: here, written by the code of ``c13ee97``
    (``tests/fixtures/first_layout_grants/make.py``).  The author opens its store and serves the group's grants
    from its history and its record as they are; P1, away across the group's opening and a re-key, reads them
    and what was published under them, then a re-key of the current layout, and a message after it."""
    for name in ("author.db", "p1.db"):
        shutil.copyfile(FIRST_LAYOUT / name, tmp_path / name)
    group = bytes.fromhex((FIRST_LAYOUT / "group").read_text())
    db = tmp_path / "author.db"
    with sqlite3.connect(db) as c:
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (group,)).fetchone()
    stored = [f for _, f in _history(db, group)] + [msgpack.unpackb(rec, raw=False)[4]]
    assert [decode_frame(f).head.epoch for f in stored] == [0, 1]
    assert all(decode_grant_body(decode_frame(f).body)[0] is None for f in stored)  # the first layout, both

    hub = MemoryHub()
    author = await Author.open(db, PW, hub.author_endpoint(), POLICY, store_options=FAST)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST)
    await _epoch(s1, group, 1)
    got = [(await s1.next_message(timeout=5)).payload for _ in range(2)]
    assert got == [b"under epoch 0", b"under epoch 1"]
    await author.remove_member(group, P2.did)  # epoch 2: a grant of the current layout, linked to the old ones
    assert decode_grant_body(decode_frame(_history(db, group)[-1][1]).body)[0] is None
    with sqlite3.connect(db) as c:
        (rec,) = c.execute("SELECT rec FROM branches WHERE id = ?", (group,)).fetchone()
    assert decode_grant_body(decode_frame(msgpack.unpackb(rec, raw=False)[4]).body)[0] is not None
    await author.publish(group, b"under epoch 2")
    await _epoch(s1, group, 2)
    assert (await s1.next_message(timeout=5)).payload == b"under epoch 2"
    [info] = [b for b in s1.branches() if b.id == group]
    assert sorted(info.members) == sorted([AUTHOR.did, P1.did])
    await s1.close()
    await author.close()
