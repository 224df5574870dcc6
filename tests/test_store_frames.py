"""The store's frame file: large frames live in ``<store>-frames``, their ``log`` rows hold references.

Real SQLite files, real descriptors, real frames, a real ``kill -9``.  What must hold: every committed frame
reads back byte for byte (also after a reopen and after a crash between the frame write and the commit); a
frame file that is damaged, cut short or gone reads as :class:`StorageError`, never as another frame; and the
synced part of the file leaves the page cache (checked with util-linux ``fincore``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import streams.store as store_module
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import ChainRecord, Changes, LogRecord
from streams.errors import LocalProtocolError, StorageError
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import FRAME_FILE_MIN, FRAMES_CACHED, Store, backup
from streams.wire import Frame, Packet, decode_frame, encode_frame

ME = Identity.from_seed(b"\x07" * 32)
BRANCH = b"\xbb" * 16
ROOT = Path(__file__).resolve().parent.parent


def _frame(seq: int, body_len: int) -> Frame:
    block = hashlib.blake2b(seq.to_bytes(8, "little")).digest()
    body = (block * (body_len // len(block) + 1))[:body_len]
    return encode_frame(Packet(b"c" * 32, BRANCH, 0, seq, bytes(32), 0, bytes(24)), body)


def frame_for(seq: int, size: int) -> bytes:
    """A real, deterministic packet frame of exactly ``size`` bytes (``size`` from 400 to 64 KiB)."""
    overhead = len(_frame(seq, 1000).raw) - 1000  # (the same for bodies of 256 bytes to 64 KiB)
    raw = _frame(seq, size - overhead).raw
    assert len(raw) == size
    return raw


def new_store(path: Path, durable: bool = False) -> Store:
    return Store.create(path, ME, "pw", role="author", channel=b"c" * 32, author_did=ME.did, durable=durable,
                        opslimit=1, memlimit=8192)


def commit(store: Store, seqs: list[int], sizes: list[int]) -> None:
    log = [LogRecord(BRANCH, 0, s, decode_frame(frame_for(s, n)).hash, frame_for(s, n))
           for s, n in zip(seqs, sizes, strict=True)]
    store.commit(Changes(chains=[ChainRecord(BRANCH, 0, seqs[-1] + 1, log[-1].hash, seqs[-1])], log=log))


def raw_rows(db: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(db)
    try:
        return {s: bytes(f) for s, f in conn.execute("SELECT seq, frame FROM log")}
    finally:
        conn.close()


SIZES = [400, FRAME_FILE_MIN - 1, FRAME_FILE_MIN, 16384, 60_000, 500]


def test_large_frames_go_to_the_frame_file_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    frames_file = Path(f"{db}-frames")
    store = new_store(db)
    seqs = list(range(1, len(SIZES) + 1))
    commit(store, seqs, SIZES)
    expect = {s: frame_for(s, n) for s, n in zip(seqs, SIZES, strict=True)}
    assert store.log_range(BRANCH, 0, 1, 100) == [expect[s] for s in seqs]
    assert [f for *_k, f in store.iter_log()] == [expect[s] for s in seqs]
    entry = store.log_entry(BRANCH, 0, 5)
    assert entry is not None and entry[1] == expect[5]
    assert store.log_hash(BRANCH, 0, 5) == entry[0]
    store.close()

    rows = raw_rows(db)
    big = [s for s, n in zip(seqs, SIZES, strict=True) if n >= FRAME_FILE_MIN]
    assert big == [3, 4, 5]
    for s in seqs:  # big frames are references into the file, small ones stay in their rows
        assert (len(rows[s]) == 13 and rows[s][0] == 0xC1) if s in big else rows[s] == expect[s]
    assert frames_file.stat().st_size == sum(SIZES[s - 1] for s in big)
    assert stat.S_IMODE(frames_file.stat().st_mode) == 0o600
    assert frames_file.read_bytes() == b"".join(expect[s] for s in big)

    # Reopen: still readable, and new frames are appended after the old ones.
    store = Store.open(db, "pw", durable=False)
    commit(store, [7, 8], [20_000, 450])
    assert store.log_range(BRANCH, 0, 1, 100) == [expect[s] for s in seqs] + [frame_for(7, 20_000), frame_for(8, 450)]
    store.close()
    assert frames_file.stat().st_size == sum(SIZES[s - 1] for s in big) + 20_000


def test_a_value_that_looks_like_a_reference_is_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.db")
    odd = b"\xc1" + bytes(12)  # the tag and length of a reference: never a frame
    with pytest.raises(LocalProtocolError, match="not a frame"):
        store.commit(Changes(log=[LogRecord(BRANCH, 0, 1, bytes(32), odd)]))
    assert store.log_entry(BRANCH, 0, 1) is None
    store.close()


def test_a_failed_commit_leaves_only_unreferenced_bytes(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = new_store(db)
    commit(store, [1], [10_000])
    log = [LogRecord(BRANCH, 0, 2, bytes(32), frame_for(2, 30_000))]
    # The frames are written inside the transaction; a later statement of it fails, so it rolls back.
    bad = Changes(log=log, nonces=[(b"n" * 16, {"not": "bindable"})])  # type: ignore[list-item]
    with pytest.raises(StorageError, match="commit to"):
        store.commit(bad)
    assert Path(f"{db}-frames").stat().st_size == 40_000  # the orphan is there ...
    assert store.log_entry(BRANCH, 0, 2) is None  # ... and nothing names it
    commit(store, [2, 3], [30_000, 5000])
    assert store.log_range(BRANCH, 0, 1, 3) == [frame_for(1, 10_000), frame_for(2, 30_000), frame_for(3, 5000)]
    store.close()


CHILD = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.test_store_frames import commit, new_store
store = new_store(__import__("pathlib").Path({db!r}), durable=False)
seq = 1
while True:
    n = 3 + seq % 5
    commit(store, list(range(seq, seq + n)), [5000 + 997 * (s % 13) for s in range(seq, seq + n)])
    seq += n
    print(seq - 1, flush=True)
"""


def test_kill_9_while_writing_large_frames(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), db=str(db))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = 0
    while committed < 400:
        line = proc.stdout.readline()
        assert line, "the child died"
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    store = Store.open(db, "pw", durable=False)
    frames = store.log_range(BRANCH, 0, 1, 10**9)
    assert len(frames) >= committed  # everything the child saw committed (perhaps a batch more)
    assert frames == [frame_for(s, 5000 + 997 * (s % 13)) for s in range(1, len(frames) + 1)]
    nxt = len(frames) + 1
    commit(store, [nxt], [9000])  # appends after whatever the kill left at the end
    assert store.log_range(BRANCH, 0, nxt, nxt) == [frame_for(nxt, 9000)]
    store.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_frame_file_is_a_storage_error(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "s.db"
    store = new_store(db)
    commit(store, [1, 2, 3], [8000, 8000, 400])
    store.close()
    path = Path(f"{db}-frames")
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[8000 + 1234] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        os.truncate(path, 12_000)
    else:
        path.unlink()
    store = Store.open(db, "pw", durable=False)
    assert store.log_range(BRANCH, 0, 3, 3) == [frame_for(3, 400)]  # inline rows are unaffected
    if damage != "delete":
        assert store.log_range(BRANCH, 0, 1, 1) == [frame_for(1, 8000)]
    words = {"flip": "altered", "truncate": "missing", "delete": "No such file"}[damage]
    with pytest.raises(StorageError, match=words):
        store.log_range(BRANCH, 0, 1, 3)
    with pytest.raises(StorageError, match=words):
        store.log_entry(BRANCH, 0, 2)
    store.close()


@pytest.mark.parametrize("value", [
    pytest.param(b"\xc1" + (1 << 63).to_bytes(8, "little") + (8000).to_bytes(4, "little"), id="offset-top-bit"),
    pytest.param(7, id="integer"),
    pytest.param("a frame", id="text"),
])
def test_a_damaged_log_row_is_a_storage_error(tmp_path: Path, value: object) -> None:
    """A ``log`` row's frame column damaged or edited into something SQLite's check passes -- a reference whose
    offset has its top bit flipped (beyond what ``pread`` takes), an integer, text -- reads as StorageError
    naming the store, never an OverflowError or TypeError, nor as a frame; ``backup`` refuses it the same way."""
    db = tmp_path / "s.db"
    store = new_store(db)
    commit(store, [1, 2], [8000, 400])
    store.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE log SET frame = ? WHERE seq = 1", (value,))
    conn.close()
    store = Store.open(db, "pw", durable=False)
    try:
        assert store.log_range(BRANCH, 0, 2, 2) == [frame_for(2, 400)]
        for read in (lambda: store.log_range(BRANCH, 0, 1, 2), lambda: store.log_entry(BRANCH, 0, 1),
                     lambda: list(store.iter_log())):
            with pytest.raises(StorageError, match=r"s\.db"):
                read()
    finally:
        store.close()
    with pytest.raises(StorageError):
        backup(db, tmp_path / "copy.db", verify=True)
    assert not (tmp_path / "copy.db").exists()


def resident(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux fincore not installed")
@pytest.mark.parametrize("durable", [False, True])
def test_settled_frames_leave_the_page_cache(tmp_path: Path, durable: bool) -> None:
    db = tmp_path / "s.db"
    store = new_store(db, durable=durable)
    n = (FRAMES_CACHED * 3) // 16384
    for lo in range(1, n + 1, 64):
        commit(store, list(range(lo, min(lo + 64, n + 1))), [16384] * (min(lo + 64, n + 1) - lo))
    path = Path(f"{db}-frames")
    size = path.stat().st_size
    assert size >= 3 * FRAMES_CACHED - 16384
    store.settle_frames()  # (the background checkpointer may have settled part of it already)
    # Only the tail stays cached, where 3x that was written.  (With durable=False the pages were dirty: they were
    # synced first, or the kernel could not have dropped them.)
    assert resident(path) <= FRAMES_CACHED + 4096
    assert store.log_range(BRANCH, 0, 1, 1) == [frame_for(1, 16384)]  # read back from the disk
    assert size == path.stat().st_size
    store.close()


# --- through the API: catch-up from the author's frame file, redelivery from the subscriber's ----------------

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
AUTHOR, SUB = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)


async def test_large_messages_catch_up_and_redeliver(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", AUTHOR, "big", "pw", hub.author_endpoint(),
                                 AllowList.of([SUB.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "s.db", SUB, AUTHOR.did, author.channel, "pw",
                                  hub.subscriber_endpoint("s"), store_options=FAST)
    branch = await sub.subscribe(timeout=5)
    await sub.close()
    payloads = [os.urandom(16384) for _ in range(12)]
    for p in payloads:  # nobody online: served later from the author's frame file
        await author.publish(branch, p)
    sub = await Subscriber.open(tmp_path / "s.db", "pw", hub.subscriber_endpoint("s"), store_options=FAST)
    got = [(await sub.next_message(timeout=5)).payload for _ in range(4)]
    for _ in range(500):  # the rest arrive and are committed, not yet handed to the application
        if len(sub._store.log_range(branch, 0, 0, 10**9)) >= 12:
            break
        await asyncio.sleep(0.01)
    await sub.close()
    assert Path(f"{tmp_path / 's.db'}-frames").stat().st_size > 12 * 16384
    sub = await Subscriber.open(tmp_path / "s.db", "pw", MemoryHub().subscriber_endpoint("s"), store_options=FAST)
    got += [(await sub.next_message(timeout=5)).payload for _ in range(8)]  # from the subscriber's own file
    assert got == payloads
    await sub.close()
    await author.close()


def test_a_new_store_does_not_inherit_a_stale_frame_file(tmp_path: Path) -> None:
    """A store deleted without its ``-frames`` file, and a new one created at the same path: the new store starts
    an empty frame file (nothing it has refers to the old bytes) and reads back only its own frames."""
    db = tmp_path / "s.db"
    store = new_store(db)
    commit(store, [1, 2], [30_000, 30_000])
    store.close()
    for p in tmp_path.iterdir():
        if p.name != "s.db-frames":
            p.unlink()
    assert Path(f"{db}-frames").stat().st_size == 60_000
    store = new_store(db)
    assert Path(f"{db}-frames").stat().st_size == 0
    commit(store, [1], [5000])
    assert store.log_range(BRANCH, 0, 1, 9) == [frame_for(1, 5000)]
    assert Path(f"{db}-frames").stat().st_size == 5000
    store.close()


@pytest.mark.parametrize("side", ["-frames", "-lock"])
def test_a_store_never_writes_through_a_symlink_beside_it(tmp_path: Path, side: str) -> None:
    """A ``<store>-frames`` or ``<store>-lock`` that is a symlink (planted in a shared directory, or left over) is
    never followed: ``create`` used to truncate the link's target to nothing, and the first large frame or the
    lock would append to, or create, a file elsewhere.  ``create`` refuses before touching anything; a store
    whose side file became a link fails with StorageError where it is used.  The target stays as it was."""
    db = tmp_path / "s.db"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = Path(f"{db}{side}")
    link.symlink_to(victim)
    if side == "-frames":
        with pytest.raises(LocalProtocolError, match=r"s\.db-frames"):
            new_store(db)
        assert sorted(x.name for x in tmp_path.iterdir()) == ["s.db-frames", "victim"]
        link.unlink()
        store = new_store(db)
        link.symlink_to(victim)
        with pytest.raises(StorageError, match=r"s\.db-frames"):
            commit(store, [1], [9000])
        assert store.log_entry(BRANCH, 0, 1) is None
    else:  # (refused by create since it takes the store's lock itself, before it makes anything)
        with pytest.raises(LocalProtocolError, match=r"s\.db-lock"):
            new_store(db)
        assert sorted(x.name for x in tmp_path.iterdir()) == ["s.db-lock", "victim"]
        link.unlink()
        store = new_store(db)
        store.close()
        link.unlink()  # (the lock file the create made)
        link.symlink_to(victim)
        store = Store.open(db, "pw")
        with pytest.raises(StorageError, match=r"s\.db"):
            store.lock()
    store.close()
    assert victim.read_bytes() == b"precious"
    gone = tmp_path / "gone"
    link.unlink()
    link.symlink_to(gone)  # dangling: following it would create a file there
    store = Store.open(db, "pw")
    use = (lambda: commit(store, [1], [9000])) if side == "-frames" else store.lock
    with pytest.raises(StorageError):
        use()
    store.close()
    assert not gone.exists()


def test_a_failed_sync_of_the_frame_file_is_reported_and_nothing_is_checkpointed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """fdatasync failing (here: a pipe in place of the file, EINVAL -- on a disk, EIO) must not be a debug line:
    the kernel may have dropped those pages.  The checkpoint that would copy rows naming them is skipped."""
    from streams.store import _CHECKPOINTER

    db = tmp_path / "s.db"
    store = new_store(db)  # durable=False: the checkpointer syncs the frame file
    commit(store, [1], [20_000])
    _CHECKPOINTER.release(store)  # (no background checkpoint of its own during the test)
    size_before = db.stat().st_size
    real = store._frames_fd
    r, w = os.pipe()
    try:
        store._frames_fd, store._frames_unsynced = r, True
        with caplog.at_level("WARNING", logger="streams.store"):
            _CHECKPOINTER._checkpoint(store)
        assert any("may not be on disk" in m and "s.db-frames" in m for m in caplog.messages), caplog.messages
        assert db.stat().st_size == size_before  # the rows stayed in the WAL
    finally:
        store._frames_fd = real
        os.close(r)
        os.close(w)
    store.close()


def test_a_durable_store_keeps_a_small_commits_frames_in_their_rows(tmp_path: Path) -> None:
    """A durable store syncs the frame file in each commit that writes it, on top of SQLite's own sync: a lone
    1-4 KiB frame stays in its row there (one sync, not two); a batch of them, or a larger frame, goes to the
    file, as it always does in a store that is not durable."""
    from streams.store import DURABLE_FILE_BATCH, DURABLE_FILE_MIN

    size = FRAME_FILE_MIN + 200
    durable, plain = new_store(tmp_path / "d.db", durable=True), new_store(tmp_path / "p.db")
    try:
        n = DURABLE_FILE_BATCH
        for store in (durable, plain):
            commit(store, [1], [size])
            commit(store, list(range(2, 2 + n)), [size] * n)
            commit(store, [2 + n], [DURABLE_FILE_MIN])
        inline = {db: {s for s, f in raw_rows(tmp_path / db).items() if f[:1] != b"\xc1"} for db in ("d.db", "p.db")}
        assert inline == {"d.db": {1}, "p.db": set()}
        for store in (durable, plain):  # every frame reads back, wherever it is
            got = store.log_range(BRANCH, 0, 1, 2 + n)
            assert got == [frame_for(1, size)] + [frame_for(s, size) for s in range(2, 2 + n)] + [
                frame_for(2 + n, DURABLE_FILE_MIN)]
    finally:
        durable.close()
        plain.close()


# A store whose frame file became a FIFO: a commit of a large frame, a read of one, and a backup.  Prints the
# error's type and text for each (or "returned").
FIFO_FRAMES = """
import os, sys
from pathlib import Path
from tests.test_store_frames import BRANCH, commit, new_store
from streams.store import Store, backup
db = Path(sys.argv[1])
store = new_store(db)
commit(store, [1], [9000])
store.close()
os.unlink(f"{db}-frames")
os.mkfifo(f"{db}-frames")
store = Store.open(db, "pw", durable=False)
for call in (lambda: commit(store, [2], [9000]), lambda: store.log_entry(BRANCH, 0, 1),
             lambda: backup(db, db.parent / "copy.db")):
    try:
        call()
    except Exception as exc:
        print(type(exc).__name__, exc, flush=True)
    else:
        print("returned", flush=True)
"""


def test_a_fifo_as_frame_file_is_a_storage_error(tmp_path: Path) -> None:
    """A ``<store>-frames`` replaced by a FIFO is a StorageError naming it where the file is used -- a commit of
    a large frame, a read of one, a backup -- not a process blocked forever (a write into a pipe nobody reads,
    an open waiting for a writer); the child runs under a timeout that only guards the test run."""
    out = subprocess.run([sys.executable, "-c", FIFO_FRAMES, str(tmp_path / "s.db")], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60).stdout.splitlines()
    assert len(out) == 3, out
    for line in out:
        assert line.startswith("StorageError") and "s.db-frames" in line and "not a regular file" in line, line


def test_a_store_opened_by_a_relative_path_keeps_its_files_after_a_chdir(tmp_path: Path) -> None:
    """A store opened by a relative path in a process that then changes its working directory (a daemon does:
    ``chdir("/")``) still writes its large frames, and checkpoints, beside its database: the frame file used
    to be opened by the relative path at its first large frame, in the new directory -- the committed rows
    then named bytes that are not beside the store, and after a restart those messages read as missing."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    old = os.getcwd()
    os.chdir(home)
    try:
        store = new_store(Path("s.db"))
        os.chdir(elsewhere)
        commit(store, [1, 2], [9000, 400])
        store.close()
    finally:
        os.chdir(old)
    assert sorted(p.name for p in elsewhere.iterdir()) == []
    store = Store.open(home / "s.db", "pw", durable=False)
    try:
        assert store.log_range(BRANCH, 0, 1, 2) == [frame_for(1, 9000), frame_for(2, 400)]
    finally:
        store.close()


def test_a_store_opened_through_a_symlink_to_its_file_shares_its_side_files(tmp_path: Path) -> None:
    """The side files (``-frames``, ``-lock``) sit beside the database file itself, not beside the name it was
    opened by (SQLite's ``-wal`` and ``-shm`` do: it resolves the link).  Opened through a symlink to the file, a
    store took a ``-lock`` of its own -- a second party ran on a store while the first did, signing the same
    sequence numbers twice -- and wrote its large frames into a ``-frames`` of its own, which the rows then named
    from beside the real file: missing."""
    real = tmp_path / "data" / "s.db"
    real.parent.mkdir()
    store = new_store(real)
    store.lock()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    other = Store.open(link, "pw", durable=False)
    try:
        with pytest.raises(StorageError, match="in use"):
            other.lock()
    finally:
        other.close()
    store.close()
    via_link = Store.open(link, "pw", durable=False)
    commit(via_link, [1, 2], [9000, 400])
    via_link.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "link.db"]
    store = Store.open(real, "pw", durable=False)
    try:
        assert store.log_range(BRANCH, 0, 1, 2) == [frame_for(1, 9000), frame_for(2, 400)]
    finally:
        store.close()


_SHORT_WRITE = """
import errno, os, resource, signal, sys
from streams.store import _writev_all
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit then fails with EFBIG, not the signal)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
_writev_all(fd, [b"a" * 1000, b"b" * 1500])
try:
    _writev_all(fd, [b"c" * 1200, b"d" * 2000, b"e" * 1200])
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def test_frame_writes_go_on_after_a_short_write_and_report_why_they_stop(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The frame file's writev is retried from where a short write stopped (inside a frame, or at a frame's end:
    the kernel may stop anywhere), and a retry that cannot write raises the real reason (here the file size
    limit, in a child process of its own)."""
    real = os.writev
    stops = [3700, 700, 1000]  # inside the third of four frames, then at its end, then inside the last

    def short(fd: int, bufs: list[bytes]) -> int:
        if not stops:
            return real(fd, bufs)
        return os.write(fd, b"".join(bufs)[:stops.pop(0)])

    frames = [b"c" * 1200, b"d" * 2000, b"e" * 1200, b"f" * 2000]
    path = tmp_path / "frames"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        monkeypatch.setattr(os, "writev", short)
        store_module._writev_all(fd, frames)
        monkeypatch.undo()
    finally:
        os.close(fd)
    assert not stops and path.read_bytes() == b"".join(frames)
    out = subprocess.run([sys.executable, "-c", _SHORT_WRITE, str(tmp_path / "limited")], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "EFBIG"
    assert (tmp_path / "limited").read_bytes() == b"a" * 1000 + b"b" * 1500 + b"c" * 1200 + b"d" * 1300
