"""``Store.create`` and ``Store.open`` and the files on disk: what they write, and what they leave behind.

Real SQLite files in a temporary directory, compared byte for byte.  What must hold: opening something that is
not a store (``streams status --store`` at the wrong path) refuses it with :class:`StorageError` and leaves it as
it was; a create that fails -- a bad argument, a full disk -- leaves nothing that blocks the path (the next
create there succeeds, and ``open`` says "no store", not "unsupported schema"); a new store's files, its
``-wal`` and ``-shm`` included, are private (mode 0600) from the first write, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streams.errors import BadPassphrase, LocalProtocolError, StorageError
from streams.identity import Identity
from streams.store import Store

ME = Identity.from_seed(b"\x07" * 32)
ROOT = Path(__file__).resolve().parent.parent


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def create(path: Path, **kw: object) -> Store:
    args: dict[str, object] = {"role": "author", "channel": b"c" * 32, "author_did": ME.did, "opslimit": 1,
                               "memlimit": 8192}
    args.update(kw)
    passphrase = args.pop("passphrase", "pw")
    return Store.create(path, ME, passphrase, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("what", ["empty", "other-sqlite", "other-sqlite-wal", "not-sqlite"])
def test_opening_what_is_not_a_store_refuses_it_and_writes_nothing(tmp_path: Path, what: str) -> None:
    """Another application's SQLite file (rollback or WAL mode), an empty file or arbitrary bytes: ``open`` raises
    StorageError naming the path, and every file in the directory is as it was (no WAL mode, no tables added, no
    ``-wal``/``-shm`` left)."""
    p = tmp_path / "x.db"
    if what == "empty":
        p.write_bytes(b"")
    elif what == "not-sqlite":
        p.write_bytes(b"hello, world\n" * 100)
    else:
        c = sqlite3.connect(p)
        if what == "other-sqlite-wal":
            c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t (x)")
        c.execute("INSERT INTO t VALUES (1)")
        c.commit()
        c.close()
    before = files(tmp_path)
    with pytest.raises(StorageError, match=r"x\.db"):
        Store.open(p, "pw")
    assert files(tmp_path) == before


def test_a_wrong_passphrase_writes_nothing(tmp_path: Path) -> None:
    """A store opened with the wrong passphrase is not written to either (the schema runs once it is opened)."""
    create(tmp_path / "s.db").close()
    before = files(tmp_path)
    with pytest.raises(BadPassphrase):
        Store.open(tmp_path / "s.db", "not it")
    assert files(tmp_path) == before


def test_an_empty_file_can_still_be_created_over(tmp_path: Path) -> None:
    """An empty file that ``open`` refused is still taken by ``create`` (it was not turned into a schema-only
    file that create then calls "already exists"), and gets mode 0600."""
    p = tmp_path / "s.db"
    p.write_bytes(b"")
    os.chmod(p, 0o644)
    with pytest.raises(StorageError):
        Store.open(p, "pw")
    store = create(p)
    store.close()
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    Store.open(p, "pw").close()


@pytest.mark.parametrize(("label", "kw"), [
    ("opslimit", {"opslimit": 0}),
    ("passphrase type", {"passphrase": 7}),
    ("empty passphrase", {"passphrase": ""}),
    ("empty bytes passphrase", {"passphrase": b""}),
    ("role", {"role": "boss"}),
    ("channel", {"channel": b"short"}),
    ("author_did", {"author_did": "did:key:nonsense"}),
    ("name", {"name": 7}),
])
@pytest.mark.parametrize("existing", ["none", "empty file"])
def test_a_create_refused_for_an_argument_leaves_nothing(tmp_path: Path, label: str, kw: dict[str, object],
                                                         existing: str) -> None:
    """A bad argument is a LocalProtocolError before the disk is touched (an empty passphrase is one, as for a keystore:
    the seed and branch keys sealed under it would not be encrypted at rest, THREATS 9): no file is made (an empty file
    that was there stays empty), so the same path takes a correct create at once, and ``open`` of it says "no store"."""
    p = tmp_path / "s.db"
    if existing == "empty file":
        p.write_bytes(b"")
    before = files(tmp_path)
    with pytest.raises(LocalProtocolError):
        create(p, **kw)
    assert files(tmp_path) == before
    if existing == "none":
        with pytest.raises(StorageError, match="no store"):
            Store.open(p, "pw")
    create(p).close()
    Store.open(p, "pw").close()


# A child that creates a store under RLIMIT_FSIZE (SIGXFSZ ignored: the write fails with EFBIG): a full disk
# in the middle of create, without privileges.  It prints the error, then the files left.
FULL = """
import os, resource, signal, sys
from pathlib import Path
from streams.identity import Identity
from streams.store import Store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
p = Path(sys.argv[1])
me = Identity.from_seed(bytes([7]) * 32)
try:
    Store.create(p, me, "pw", role="author", channel=b"c" * 32, author_did=me.did, opslimit=1, memlimit=8192)
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("created")
print(sorted(x.name for x in p.parent.iterdir()))
"""


@pytest.mark.parametrize("limit", [0, 2048, 8192])
def test_a_create_that_runs_out_of_space_leaves_nothing(tmp_path: Path, limit: int) -> None:
    """A create whose writes fail (the database or its WAL cannot grow) is a StorageError and removes the files
    it made, the ``-wal`` and ``-shm`` included: the next create at the path succeeds."""
    p = tmp_path / "s.db"
    out = subprocess.run([sys.executable, "-c", FULL, str(p), str(limit)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=True).stdout
    first, left = out.splitlines()
    assert first.startswith("StorageError") and "s.db" in first, out
    assert left == "[]"
    create(p).close()
    Store.open(p, "pw").close()


def test_a_new_store_s_wal_and_shm_are_private_from_the_start(tmp_path: Path) -> None:
    """Under umask 022, every file of a new store -- the database, and the ``-wal`` (which holds the cleartext
    rows: DIDs, members, logged frames) and ``-shm`` SQLite makes beside it -- is 0600 while its first session
    runs, not only after it."""
    old = os.umask(0o022)
    try:
        store = create(tmp_path / "s.db")
    finally:
        os.umask(old)
    try:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert {"s.db", "s.db-wal", "s.db-shm"} <= set(names)
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p.name} is {oct(p.stat().st_mode)}"
    finally:
        store.close()


def test_a_new_store_takes_a_leftover_frame_and_lock_file_as_private(tmp_path: Path) -> None:
    """A ``-frames`` and ``-lock`` left at the path by an earlier store (or made there by anyone) with a wider mode:
    ``create`` reuses them (the frame file emptied), and they end up 0600 like the store's other files -- the frame
    file takes the new store's logged frames, which another user must not read."""
    for side in ("s.db-frames", "s.db-lock"):
        (tmp_path / side).write_bytes(b"old frames" if side.endswith("frames") else b"")
        os.chmod(tmp_path / side, 0o644)
    store = create(tmp_path / "s.db")
    try:
        assert (tmp_path / "s.db-frames").read_bytes() == b""
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p.name} is {oct(p.stat().st_mode)}"
    finally:
        store.close()


def test_create_refuses_a_path_that_holds_anything(tmp_path: Path) -> None:
    """A path holding a store, another file or a directory is refused with LocalProtocolError ("already
    exists"; the caller's mistake), and left as it was."""
    create(tmp_path / "s.db").close()
    (tmp_path / "other").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    before = {p.name for p in tmp_path.iterdir()}
    for name in ("s.db", "other", "dir"):
        with pytest.raises(LocalProtocolError, match="already exists"):
            create(tmp_path / name)
    assert {p.name for p in tmp_path.iterdir()} == before
    assert (tmp_path / "other").read_bytes() == b"x"
    Store.open(tmp_path / "s.db", "pw").close()


# A party (this child) on a store; after its first commit, the same process opens the store again -- an audit
# (``audit_store``), or a second party refused by the lock -- or creates at its path (refused: "already
# exists"); then it commits again when told, and waits to be killed.
LIVE = """
import sys
import threading
from pathlib import Path
from streams.core import Changes
from streams.errors import LocalProtocolError, StorageError
from streams.identity import Identity
from streams.store import Store
me = Identity.from_seed(bytes([7]) * 32)
p, again = Path(sys.argv[1]), sys.argv[2]
store = Store.create(p, me, "pw", role="author", channel=b"c" * 32, author_did=me.did, opslimit=1, memlimit=8192)
store.lock()
store.commit(Changes(), {(b"b" * 16, 1): 1})
if again == "open":
    other = Store.open(p, "pw")
    try:
        other.lock()
    except StorageError:
        pass
    other.close()
else:
    try:
        Store.create(p, me, "pw", role="author", channel=b"c" * 32, author_did=me.did, opslimit=1, memlimit=8192)
    except LocalProtocolError:
        pass
print("ready", flush=True)
sys.stdin.readline()
store.commit(Changes(), {(b"b" * 16, 1): 2})
print("committed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("again", ["open", "create"])
def test_opening_a_store_again_in_its_party_s_process_keeps_its_wal(tmp_path: Path, again: str) -> None:
    """A store opened again (or created over) in the process its party runs in must leave that party's SQLite
    locks alone: a descriptor of the database opened and closed outside SQLite drops them all (POSIX), and
    another process's connection then takes itself for the last one at its close, checkpoints and deletes the
    party's ``-wal`` and ``-shm`` -- the party writes its next commits to a deleted file, and a ``kill -9`` loses
    them (THREATS 4).  Here that other process is a second party refused by the lock."""
    p = tmp_path / "s.db"
    child = subprocess.Popen([sys.executable, "-c", LIVE, str(p), again], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        second = Store.open(p, "pw")
        with pytest.raises(StorageError, match="in use"):
            second.lock()
        second.close()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "committed\n"
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()
    store = Store.open(p, "pw")
    try:
        assert store.delivered() == {(b"b" * 16, 1): 2}
    finally:
        store.close()


# Each call on a path that holds a FIFO; prints the error's type and text (or "returned").
ON_FIFO = """
import sys
import threading
from streams.store import Store, backup
path, call = sys.argv[1], sys.argv[2]
try:
    if call == "open":
        Store.open(path, "pw")
    else:
        backup(path, path + ".copy")
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("returned")
"""


@pytest.mark.parametrize("call", ["open", "backup"])
def test_a_fifo_is_refused_as_not_a_store(tmp_path: Path, call: str) -> None:
    """A FIFO at a store's path (``streams status --store`` or ``backup`` pointed at one, or one planted) is
    refused at once as not a store, naming the path; it used to block the process forever, waiting for a
    writer (the child runs under a timeout that only guards the test run)."""
    p = tmp_path / "s.db"
    os.mkfifo(p)
    out = subprocess.run([sys.executable, "-c", ON_FIFO, str(p), call], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120).stdout
    assert out.startswith("StorageError") and "s.db" in out and "not a store" in out, out


@pytest.mark.parametrize("sql", [
    "CREATE TRIGGER t AFTER INSERT ON log BEGIN DELETE FROM log WHERE rowid = new.rowid; END",
    "CREATE TRIGGER t BEFORE UPDATE ON delivered BEGIN SELECT RAISE(IGNORE); END",
    "CREATE VIEW v AS SELECT * FROM meta",
])
def test_a_store_with_sql_triggers_or_views_is_refused(tmp_path: Path, sql: str) -> None:
    """A store file given SQL triggers (or views) by someone who could write to it -- which this library never
    makes, and which SQLite's check does not look at -- is refused at open with StorageError naming it.  A
    trigger runs inside the party's own commits: the first one here deleted every logged message as it was
    committed (acknowledged, then gone), the second froze the delivery cursors."""
    p = tmp_path / "s.db"
    create(p).close()
    conn = sqlite3.connect(p)
    with conn:
        conn.execute(sql)
    conn.close()
    with pytest.raises(StorageError, match=r"s\.db"):
        Store.open(p, "pw")


def test_discard_after_a_change_of_directory_removes_only_its_own_files(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A store created at a relative path, then discarded (its party's create failed) after the process changed
    its working directory: the files it made are removed where they are -- beside the absolute path its side
    files and lock use -- and another store of the same name in the new working directory is left alone.  It
    used to be deleted, database and all, and the new store's files were left behind."""
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    create(there / "s.db").close()
    before = files(there)
    monkeypatch.chdir(here)
    store = create(Path("s.db"))
    store.lock()
    monkeypatch.chdir(there)
    store.discard()
    assert list(here.iterdir()) == []
    assert files(there) == before
    Store.open(there / "s.db", "pw").close()


def test_discard_leaves_a_dangling_symlink_that_was_there_before(tmp_path: Path) -> None:
    """A ``<store>-lock`` that is a dangling symlink before the create (planted, or left over): the lock refuses
    it (never followed) -- create, which takes the lock itself, refuses the path before it makes anything --
    and the link is not the store's: it is left as it was.  It used to count as not there (``exists`` follows
    the link) and be deleted by the discard of the failed create."""
    db = tmp_path / "s.db"
    link = Path(f"{db}-lock")
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(LocalProtocolError, match=r"s\.db-lock"):
        create(db)
    assert [p.name for p in tmp_path.iterdir()] == ["s.db-lock"]
    assert os.readlink(link) == str(tmp_path / "gone")


@pytest.mark.parametrize("call", ["open", "backup"])
def test_a_path_with_a_nul_byte_is_no_store(tmp_path: Path, call: str) -> None:
    """A store path holding a NUL byte (from a configuration value, say) names no file: ``open`` and ``backup``
    raise StorageError ("no store"), as for any missing store -- not the ValueError ``os.stat`` raises."""
    from streams.store import backup

    p = f"{tmp_path}/s\0.db"
    run = (lambda: Store.open(p, "pw")) if call == "open" else (lambda: backup(p, tmp_path / "copy.db"))
    with pytest.raises(StorageError, match="no store"):
        run()
    assert list(tmp_path.iterdir()) == []


CRASHED_PARTY = """
import os, sys
from streams.core import ChainRecord, Changes
from streams.store import Store
s = Store.open(sys.argv[1], "pw")
s.commit(Changes(chains=[ChainRecord(b"b" * 16, 0, 2, b"h" * 32, 1)]))
os._exit(0)
"""


def test_a_store_dropped_without_close_no_longer_counts_as_open(tmp_path: Path) -> None:
    """A Store that is never closed and is garbage-collected: its SQLite connection is gone with it, so its file
    must no longer count as open in this process (bb69f2c's registry).  It used to count forever: a later open
    of the same file (the same inode) then skipped the check that refuses a backup copy restored over a store
    whose crashed party left its -wal, and SQLite replayed that -wal over the copy."""
    import gc
    import shutil

    from streams.store import backup

    db = tmp_path / "s.db"
    create(db).close()
    backup(db, tmp_path / "copy.db")
    dropped = Store.open(db, "pw")
    del dropped  # never closed
    gc.collect()
    # A party in another process commits and dies without closing: its -wal stays.
    subprocess.run([sys.executable, "-c", CRASHED_PARTY, str(db)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert Path(f"{db}-wal").stat().st_size > 0
    inode = db.stat().st_ino
    shutil.copyfile(tmp_path / "copy.db", db)  # the copy restored into the same file (the same inode)
    assert db.stat().st_ino == inode
    with pytest.raises(StorageError, match="is not this database's"):
        Store.open(db, "pw")


RACER = """
import json, sys
from streams.identity import Identity
from streams.keystore import derive_key
from streams.store import Store
me = Identity.from_seed(bytes([int(sys.argv[1])]) * 32)
derive_key("pw", bytes(16), 1, 8192)  # (warm: the race starts at create)
print("ready", flush=True)
for line in sys.stdin:  # one trial per line: the path to create, given to both racers at once
    try:
        Store.create(line.rstrip("\\n"), me, "pw", role="author", channel=b"c" * 32, author_did=me.did, opslimit=1,
                     memlimit=8192).close()
        print(json.dumps({"ok": True}), flush=True)
    except Exception as exc:
        print(json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc)}), flush=True)
"""


def test_two_processes_creating_the_same_store_at_once_leave_the_winner_s_store(tmp_path: Path) -> None:
    """Two processes call Store.create on the same new path at the same moment (released together from a
    barrier, many times over).  Exactly one creates the store, the other is refused (StorageError "in use" while
    the winner holds the store's lock, LocalProtocolError "already exists" once it is done), and the store is the
    winner's: it opens, with the winner's identity.  The second creator used to take the
    first one's still-empty file (an empty file is taken), initialise it alongside, fail, and then truncate or
    remove it in its clean-up -- after the winner had returned its store."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Two racer processes for all the trials (a process each per trial cost a second a trial in start-up alone).
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env) for n in (1, 2)]
    try:
        for r in racers:
            assert r.stdout is not None and r.stdout.readline() == "ready\n"
        for trial in range(25):
            db = tmp_path / f"s{trial}.db"
            for r in racers:  # the barrier: both are released at once
                assert r.stdin is not None
                r.stdin.write(f"{db}\n")
                r.stdin.flush()
            outcomes = [json.loads(_line(r)) for r in racers]
            winners = [n for n, o in zip((1, 2), outcomes, strict=True) if o["ok"]]
            assert len(winners) == 1, (trial, outcomes)
            [loser] = [o for o in outcomes if not o["ok"]]
            # Refused: the winner holds the store's lock ("in use"), or is done ("already exists").
            assert ((loser["type"] == "StorageError" and "is in use" in loser["error"])
                    or (loser["type"] == "LocalProtocolError" and "already exists" in loser["error"])), (
                trial, outcomes)
            try:
                store = Store.open(db, "pw")
            except StorageError as exc:
                raise AssertionError(f"trial {trial}: the winner's store is gone: {exc} ({outcomes})") from None
            try:
                assert store.identity.did == Identity.from_seed(bytes([winners[0]]) * 32).did
            finally:
                store.close()
    finally:
        for r in racers:
            if r.stdin is not None:
                r.stdin.close()
            try:
                r.wait(10)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait()
            if r.stdout is not None:
                r.stdout.close()


def _line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The next line ``proc`` writes, within ``timeout`` seconds (a racer stuck in create fails the test)."""
    assert proc.stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()) if proc.stdout else None,
                              daemon=True)
    reader.start()
    reader.join(timeout)
    assert got and got[0], "a racer gave no answer"
    return got[0]


def test_a_store_dropped_without_close_leaves_no_connection_to_its_file(tmp_path: Path) -> None:
    """A Store that logged messages (so the process's background checkpointer opened a connection of its own to
    its file) and is then garbage-collected unclosed: nothing of this process keeps the file open afterwards.
    The checkpointer kept that connection, keyed by the dropped store's id(), for the life of the process --
    a descriptor of the file never closed, and a connection that a later store given the same id() would have
    been checkpointed through (another store's file)."""
    import gc
    import time

    from streams.core import ChainRecord, Changes, LogRecord
    from streams.wire import decode_frame
    from tests.test_store_frames import BRANCH, frame_for

    db = tmp_path / "s.db"
    store = create(db, durable=False)
    frame = frame_for(1, 400)
    store.commit(Changes(chains=[ChainRecord(BRANCH, 0, 2, decode_frame(frame).hash, 1)],
                         log=[LogRecord(BRANCH, 0, 1, decode_frame(frame).hash, frame)]))

    def open_here() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == str(db.resolve()):
                    out.append(fd)
        return out

    deadline = time.monotonic() + 30
    while len(open_here()) < 2 and time.monotonic() < deadline:  # the store's own and the checkpointer's
        time.sleep(0.02)
    assert len(open_here()) >= 2
    del store  # never closed
    gc.collect()
    deadline = time.monotonic() + 30
    while open_here() and time.monotonic() < deadline:  # (a checkpoint of it may still be running)
        time.sleep(0.02)
        gc.collect()
    assert open_here() == []


def test_a_store_dropped_without_close_lets_go_of_its_lock(tmp_path: Path) -> None:
    """A party's Store (it holds the store's lock, and the frame file open) garbage-collected unclosed: the
    process may open and lock the store again.  Its descriptors used to stay open for the life of the process --
    the lock with them, so every later lock in the process was refused ("in use") as if the dropped store still
    ran."""
    import gc
    import time
    import weakref

    from streams.core import ChainRecord, Changes, LogRecord
    from streams.wire import decode_frame
    from tests.test_store_frames import BRANCH, frame_for

    db = tmp_path / "s.db"
    create(db).close()
    dropped = Store.open(db, "pw", durable=False)
    dropped.lock()
    frame = frame_for(1, 9000)  # (to the frame file: its descriptor is opened too)
    dropped.commit(Changes(chains=[ChainRecord(BRANCH, 0, 2, decode_frame(frame).hash, 1)],
                           log=[LogRecord(BRANCH, 0, 1, decode_frame(frame).hash, frame)]))
    with pytest.raises(StorageError, match="in use"):
        Store.open(db, "pw").lock()
    gone = weakref.ref(dropped)
    del dropped  # never closed
    deadline = time.monotonic() + 30
    while gone() is not None and time.monotonic() < deadline:  # (the checkpointer may still hold it a moment)
        time.sleep(0.02)
        gc.collect()
    assert gone() is None
    again = Store.open(db, "pw")
    try:
        again.lock()
        assert again.log_range(BRANCH, 0, 1, 1) == [frame]
    finally:
        again.close()


def test_discard_removes_the_files_it_made_while_it_still_holds_the_lock(tmp_path: Path) -> None:
    """A store create made, discarded (its party's create failed): the files are removed while the store's lock is
    still held, as a failed create's own clean-up does.  discard used to let the lock go first: another process's
    create of the same path could then take the lock on the -lock file discard was about to remove, make its store
    there once discard had removed the database, and run holding a lock on a file no longer at its name -- so a
    third party could lock the store too (two parties signing on one store: forks).  Watched here at each removal
    (an audit hook), by taking the lock as another process would: from a descriptor of its own."""
    import fcntl

    db = tmp_path / "s.db"
    store = create(db)
    free_at: list[str] = []
    watching = True

    def hook(event: str, args: tuple[object, ...]) -> None:
        if not watching or event != "os.remove" or not str(args[0]).startswith(str(db)):
            return
        try:
            fd = os.open(f"{db}-lock", os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            free_at.append(f"{args[0]} (no -lock left)")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free_at.append(str(args[0]))
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    sys.addaudithook(hook)  # (hooks cannot be removed: this one goes inert below)
    try:
        store.discard()
    finally:
        watching = False
    assert free_at == [], f"the lock was free while discard removed {free_at}"
    assert list(tmp_path.iterdir()) == []
    create(db).close()  # and the path is free for a new store


def test_a_forked_child_opens_and_closes_stores_whatever_the_parent_s_threads_held(tmp_path: Path) -> None:
    """A process forks (a pre-fork server; multiprocessing's default start method on Linux) while another of its
    threads is inside the store module: opening or closing a store (the open-files registry's lock), or the
    background checkpointer between two checkpoints (its condition's lock).  The child has only the forking
    thread, and those locks stay held in it for good: its first store open, create, commit or close waited for
    ever.  The child now starts with locks of its own, as the helper pools do (f5b0aed)."""
    import threading
    import time
    import warnings

    from streams import store as store_module
    from streams.core import ChainRecord, Changes, LogRecord
    from streams.wire import decode_frame
    from tests.test_store_frames import BRANCH, frame_for

    held, release = threading.Event(), threading.Event()

    def inside() -> None:  # another thread, in the middle of what takes these locks
        with store_module._OPEN_LOCK, store_module._CHECKPOINTER._cond:
            held.set()
            release.wait()

    thread = threading.Thread(target=inside)
    thread.start()
    assert held.wait(30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12: a fork of a process with threads)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            store = create(tmp_path / "child.db", durable=False)
            frame = frame_for(1, 400)
            store.commit(Changes(chains=[ChainRecord(BRANCH, 0, 2, decode_frame(frame).hash, 1)],
                                 log=[LogRecord(BRANCH, 0, 1, decode_frame(frame).hash, frame)]))
            store.close()
            Store.open(tmp_path / "child.db", "pw").close()
            code = 0
        finally:
            os._exit(code)
    release.set()
    thread.join()
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the child waited for ever on a lock a thread of its parent held at the fork")
    assert os.waitstatus_to_exitcode(done[1]) == 0
