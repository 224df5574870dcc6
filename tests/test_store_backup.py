"""``streams.store.backup`` and ``streams backup``: a consistent copy of a store (its database and its frame
file) while a party writes to it, from another process.

Real SQLite files, a real writer process committing small and 16 KiB frames as fast as it can, real files on a
real (and on a full) file system.  What must hold: every copy taken mid-stream opens with the passphrase, every
row's frame reads back and matches its hash, and each chain's cursor agrees with its last logged message (the
snapshot is one transaction); a copy is never left half-made (no space, a damaged source with ``verify``); an
existing destination is never overwritten.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streams.errors import LocalProtocolError, StorageError
from streams.store import Store, backup
from tests.cliutil import ROOT, Cli
from tests.test_disk_faults import in_namespace, needs_mount
from tests.test_store_frames import commit, new_store

# The writer: an author store (as tests.test_store_frames.new_store makes it) committing batches of frames of
# 600 B and 16 KiB in turn, one chain, until killed; it prints each batch's last seq as soon as it is committed.
WRITER = """
import sys
from tests.test_store_frames import commit
from streams.store import Store
store = Store.open(sys.argv[1], "pw", durable=False)
seq = 1
while True:
    commit(store, [seq, seq + 1, seq + 2], [600, 16384, 16384])
    seq += 3
    print(seq - 1, flush=True)
"""


def source(tmp_path: Path, sizes: list[int]) -> Path:
    """A closed store ``s.db`` whose chain logged one frame of each size (seq 1, 2, ...)."""
    src = tmp_path / "s.db"
    store = new_store(src)
    commit(store, list(range(1, len(sizes) + 1)), sizes)
    store.close()
    return src


def check_copy(path: Path) -> int:
    """Open a backup and read all of it back: every frame against its hash (``iter_log`` raises otherwise), the
    chain's cursor against its last logged message.  Returns the messages logged."""
    store = Store.open(path, "pw")
    try:
        rows = list(store.iter_log())
        seqs = [s for _b, _p, s, _h, _f in rows]
        assert seqs == list(range(1, len(seqs) + 1))  # a prefix of the stream, no hole
        (chain,) = store.load_chains()
        assert chain.next_seq == len(seqs) + 1 and chain.head == rows[-1][3]  # one transaction: rows and cursor
        return len(seqs)
    finally:
        store.close()


def test_backups_taken_while_another_process_writes_are_whole(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    new_store(src).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert writer.stdout is not None
        counts = []
        for i in range(4):
            while int(writer.stdout.readline()) < 300 * (i + 1):  # the stream has moved on since the last copy
                pass
            calls: list[tuple[str, int, int]] = []
            r = backup(src, tmp_path / f"copy{i}.db", verify=i % 2 == 1, progress=lambda *a, c=calls: c.append(a))
            assert r.frames_checked == (r.log_rows if i % 2 == 1 else 0)
            copied = [done for phase, done, total in calls if phase == "copy" and total == r.frames_bytes]
            assert copied == sorted(copied) and copied[-1] == r.frames_bytes  # progress, up to the whole file
            checked = [done for phase, done, total in calls if phase == "verify" and total == r.log_rows]
            assert len(checked) == (r.log_rows // 1024 if i % 2 == 1 else 0)
            counts.append(check_copy(tmp_path / f"copy{i}.db"))
            assert counts[-1] == r.log_rows and r.frames_bytes >= 2 * 16384 * (r.log_rows // 3)
        assert writer.poll() is None  # the writer was never disturbed
        assert counts == sorted(counts) and counts[0] >= 300 and counts[-1] > counts[0]
    finally:
        writer.kill()
        writer.wait(10)
        if writer.stdout is not None:
            writer.stdout.close()
    # The source, once its writer is gone, is as whole as its copies.
    assert check_copy(src) >= counts[-1]


def test_an_existing_destination_is_never_overwritten(tmp_path: Path) -> None:
    src = source(tmp_path, [600, 16384])
    backup(src, tmp_path / "b.db")
    before = (tmp_path / "b.db").read_bytes(), (tmp_path / "b.db-frames").read_bytes()
    with pytest.raises(LocalProtocolError, match="already exists"):
        backup(src, tmp_path / "b.db")
    (tmp_path / "c.db-frames").write_bytes(b"someone else's")
    with pytest.raises(LocalProtocolError, match=r"c\.db-frames already exists"):
        backup(src, tmp_path / "c.db")
    assert ((tmp_path / "b.db").read_bytes(), (tmp_path / "b.db-frames").read_bytes()) == before
    assert not (tmp_path / "c.db").exists() and (tmp_path / "c.db-frames").read_bytes() == b"someone else's"
    assert check_copy(tmp_path / "b.db") == 2


def test_the_temporary_copy_is_a_new_private_file_never_reached_through_a_link(tmp_path: Path) -> None:
    """A symlink at a temporary name (to another application's SQLite database, planted in a shared directory) is
    neither followed nor removed: SQLite used to write the copy through the link, replacing that database, and
    the copy became the link.  And the copy is a regular file of mode 0600 whatever the umask (SQLite created it
    with the umask's mode, made private only after the whole copy was written)."""
    import sqlite3

    src = source(tmp_path, [600, 16384])
    victim = tmp_path / "victim.sqlite"
    conn = sqlite3.connect(victim)
    with conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    before = victim.read_bytes()
    for tmp in (tmp_path / "b.db.tmp-backup", tmp_path / "b.db-frames.tmp-backup"):
        tmp.symlink_to(victim)
        with pytest.raises(LocalProtocolError, match="exists"):
            backup(src, tmp_path / "b.db")
        assert tmp.is_symlink() and victim.read_bytes() == before
        assert not (tmp_path / "b.db").exists() and not (tmp_path / "b.db-frames").exists()
        tmp.unlink()
    old = os.umask(0o022)
    try:
        backup(src, tmp_path / "b.db", verify=True)
    finally:
        os.umask(old)
    for name in ("b.db", "b.db-frames"):
        st = (tmp_path / name).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name
    assert check_copy(tmp_path / "b.db") == 2
    assert not [p.name for p in tmp_path.iterdir() if "tmp-backup" in p.name]


def test_a_file_where_the_backup_would_stage_its_copy_is_never_overwritten_or_deleted(tmp_path: Path) -> None:
    """The copy is staged as <dest>.tmp-backup and <dest>-frames.tmp-backup.  A file of the user's there was
    opened as the SQLite copy (\"cannot back up s.db: file is not a database\", naming the wrong file) and then
    deleted by the clean-up: `streams backup --to x` destroyed x.tmp-backup.  It is refused now, naming it."""
    src = source(tmp_path, [600, 16384])
    for staged in ("b.db.tmp-backup", "b.db-frames.tmp-backup"):
        (tmp_path / staged).write_bytes(b"someone else's")
        with pytest.raises(LocalProtocolError, match=rf"{staged.replace('.', '[.]')} exists"):
            backup(src, tmp_path / "b.db")
        assert (tmp_path / staged).read_bytes() == b"someone else's"
        assert not (tmp_path / "b.db").exists() and not (tmp_path / "b.db-frames").exists()
        (tmp_path / staged).unlink()
    assert check_copy(backup(src, tmp_path / "b.db").path) == 2


def test_a_store_without_large_frames_backs_up_with_an_empty_frame_file(tmp_path: Path) -> None:
    src = source(tmp_path, [600, 700, 800])
    assert not Path(f"{src}-frames").exists()
    r = backup(src, tmp_path / "b.db", verify=True)
    assert (r.log_rows, r.frames_bytes, r.frames_checked) == (3, 0, 3)
    assert check_copy(tmp_path / "b.db") == 3


def test_verify_finds_a_damaged_frame_and_leaves_no_copy(tmp_path: Path) -> None:
    src = source(tmp_path, [16384, 16384, 16384])
    frames = Path(f"{src}-frames")
    data = bytearray(frames.read_bytes())
    data[16384 + 5000] ^= 0x01  # inside the second frame's ciphertext
    frames.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="does not match its hash"):
        backup(src, tmp_path / "b.db", verify=True)
    assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")]  # no copy, no temporary
    # Without verify the copy is made (its references are all in range), and the damage travels with it.
    backup(src, tmp_path / "c.db")
    with pytest.raises(StorageError, match="altered"):
        check_copy(tmp_path / "c.db")


def test_a_cut_frame_file_is_refused_even_without_verify(tmp_path: Path) -> None:
    src = source(tmp_path, [16384, 16384])
    os.truncate(f"{src}-frames", 20000)
    with pytest.raises(StorageError, match="beyond the copied frame file"):
        backup(src, tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "b.db-frames").exists()


@pytest.mark.parametrize("what", ["missing", "not-a-store"])
def test_what_is_not_a_store_is_refused(tmp_path: Path, what: str) -> None:
    src = tmp_path / "x.db"
    if what == "not-a-store":
        src.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(StorageError):
        backup(src, tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists()


@needs_mount
def test_a_backup_that_runs_out_of_space_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "s.db"
    store = new_store(src)
    for s in range(1, 60, 3):
        commit(store, [s, s + 1, s + 2], [600, 16384, 16384])
    store.close()
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = (f"import sys; from streams.store import backup\n"
             f"try:\n    backup({str(src)!r}, {str(disk / 'b.db')!r})\n"
             f"except Exception as exc:\n    print(type(exc).__name__, exc)\n"
             f"else:\n    print('copied')\n")
    out = in_namespace(f"""
        mount -t tmpfs -o size=256k tmpfs {disk}
        {sys.executable} -c "{probe}"
        ls -A {disk} | wc -l
        mount -o remount,size=16m {disk}
        {sys.executable} -c "{probe}"
        ls -A {disk}
    """)
    first, leftover, second, *listing = out.split("\n")
    assert first.startswith("StorageError") and "disk is full" in first, first
    assert leftover.strip() == "0"  # nothing half-made
    assert second == "copied" and sorted(x for x in listing if x) == ["b.db", "b.db-frames"]


def test_cli_backup(tmp_path: Path) -> None:
    source(tmp_path, [600, 16384, 16384])
    cli = Cli(tmp_path)
    doc = cli("backup", "--store", "s.db", "--to", "b.db", "--verify", "--json").ok().json
    assert doc["ok"] and doc["backup"] == "b.db" and doc["frames_file"] == "b.db-frames"
    assert (doc["log_rows"], doc["frames_checked"], doc["frames_bytes"]) == (3, 3, 2 * 16384)
    assert check_copy(tmp_path / "b.db") == 3
    status = Cli(tmp_path, {"PP": "pw"})("status", "--store", "b.db", "--passphrase-env", "PP", "--json").ok().json
    assert status["retained_messages"] == 3 and status["files"]["frames"] == 2 * 16384
    assert status["files"]["store"] == (tmp_path / "b.db").stat().st_size
    text = cli("backup", "--store", "s.db", "--to", "c.db").ok().stdout
    assert "3 logged messages" in text and "read back" not in text
    again = cli("backup", "--store", "s.db", "--to", "b.db", "--json")
    assert again.returncode == 2 and not again.json["ok"] and "already exists" in again.json["error"]
    gone = cli("backup", "--store", "nothing.db", "--to", "d.db")
    assert gone.returncode == 2 and "no store at nothing.db" in gone.stderr


# A party that commits three more messages to the store and dies without closing it (its -wal stays).
CRASH_AFTER = """
import os, sys
from tests.test_store_frames import commit
from streams.store import Store
s = Store.open(sys.argv[1], "pw")
commit(s, [3, 4, 5], [500, 16384, 500])
os._exit(0)
"""


def _crashed_after_backup(tmp_path: Path) -> Path:
    """``s.db`` backed up to ``copy.db`` at 2 messages, then 3 more written by a party that crashed."""
    db = source(tmp_path, [500, 16384])
    backup(db, tmp_path / "copy.db")
    subprocess.run([sys.executable, "-c", CRASH_AFTER, str(db)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert Path(f"{db}-wal").stat().st_size > 0
    return db


def test_the_documented_restore_goes_back_to_the_snapshot(tmp_path: Path) -> None:
    """The restore steps of README and ``streams backup --help``, after a crash (the usual reason to restore):
    with the party stopped, delete ``<store>-wal`` and ``<store>-shm``, then move the copy and its ``-frames``
    file into place.  The store opens at the snapshot: 2 messages, not the 5 the crashed party's WAL holds."""
    db = _crashed_after_backup(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_path / "copy.db", db)
    os.replace(tmp_path / "copy.db-frames", f"{db}-frames")
    assert check_copy(db) == 2


def test_a_copy_moved_over_a_store_with_its_wal_left_is_refused(tmp_path: Path) -> None:
    """Moving only the copy's two files into place leaves the crashed party's ``-wal``, which SQLite would replay
    over the copy (the rows written after the snapshot, pages of one file applied to another): ``open`` refuses
    it with StorageError saying which files to delete, and writes nothing; once they are deleted it opens at
    the snapshot."""
    db = _crashed_after_backup(tmp_path)
    os.replace(tmp_path / "copy.db", db)
    os.replace(tmp_path / "copy.db-frames", f"{db}-frames")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StorageError, match=r"delete .*s\.db-wal, .*s\.db-shm and .*s\.db-commits"):
        Store.open(db, "pw")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert check_copy(db) == 2


def test_backup_help_gives_the_restore_steps(tmp_path: Path) -> None:
    """``streams backup --help`` says to delete the store's ``-wal`` and ``-shm`` when restoring."""
    out = Cli(tmp_path)("backup", "--help").ok().stdout
    assert "-wal" in out and "-shm" in out and "delete" in out
