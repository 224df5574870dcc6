"""Crash harness: an author and N subscribers in separate processes over ZeroMQ (tcp loopback), real SQLite stores,
messages in both directions on every branch, while a killer SIGKILLs random processes at random moments and
restarts them from their stores (the author on the same address).

    python chaos/crash.py [--kills 100] [--messages 10000] [--subscribers 3] [--size 16] [--journal] [--seed N]
                          [--json]
                          [--out FILE]

At the end (after a quiet period for catch-up) it checks every log and every store, prints the figures and exits
non-zero if any of these is not 0 (THREATS 3 and 4):

* ``acked_lost``         -- an acknowledged (branch, publisher, seq) missing from the receiver's store log or never
                            handed to its application (ACKED / WACK lines of the sender, GOT lines of the receiver);
* ``duplicates``         -- a position handed out twice within one process lifetime (the protocol accepted it
                            twice); re-delivery across a crash is allowed (at-least-once) and counted apart;
* ``holes``              -- after de-duplication by position, a missing seq below a chain's highest delivered one;
* ``undelivered``        -- published (on the sender's disk) but never delivered once the quiet period is over;
* ``replays_accepted``   -- re-injected old frames (see :mod:`chaos.party`) handed out again;
* ``replays_unanswered_last_life`` -- re-injected frames without a REPLAY rejection of their position in a lifetime
                            that was not killed (a kill between injection and rejection is counted apart, in
                            ``replays_unanswered_killed``);
* ``forks``              -- two different hashes at one position across all stores and logs, or fork evidence;
* ``log_dup_positions``  -- repeated positions in any store's protocol log.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.applog import read_log
from chaos.figures import emit

HERE = Path(__file__).resolve().parent
PARTY = HERE / "party.py"
AUTHOR_SEED = 1

Chain = tuple[str, int]  # (branch hex, publisher index)


def free_port() -> int:
    """A tcp port on 127.0.0.1 that is free now (the author rebinds the same one after every restart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """One party process: its fixed arguments, its current Popen (None while down) and its lifetime counter."""

    name: str
    args: list[str]
    db: Path
    log: Path
    work: Path
    life: int = -1
    p: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    lives: list[int] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)  #: e.g. ``ip netns exec NAME`` (chaos.netns)

    def start(self) -> None:
        self.life += 1
        self.lives.append(self.life)
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        err = open(self.work / f"{self.name}.stderr", "ab")  # noqa: SIM115 - handed to the child
        try:
            argv = [*self.prefix, sys.executable, str(PARTY), *self.args, "--db", str(self.db), "--log",
                    str(self.log), "--life", str(self.life)]
            self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        finally:
            err.close()
        self.restart_at = None

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self) -> None:
        if self.p is not None:
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGKILL)
            self.p.wait(30)
        self.p = None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the party closes its store cleanly), SIGKILL if it does not exit in time."""
        if self.p is None:
            return
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.send_signal(signal.SIGKILL)
                self.p.wait(30)
        self.p = None


class LogTail:
    """Incremental reader of one app log: keeps the progress figures the killer and the quiet period need."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.off = 0
        self.buf = b""
        self.pub: dict[str, int] = defaultdict(int)  # branch -> highest PUB seq
        self.got: dict[Chain, set[int]] = defaultdict(set)
        self.lines: dict[str, int] = defaultdict(int)
        self.started: set[int] = set()  # lifetimes that logged START
        self.unanswered: dict[int, set[tuple[Chain, int]]] = defaultdict(set)  # injected, not yet refused

    def settled(self, life: int) -> bool:
        """Lifetime ``life`` is up and every replay it injected has been refused (or accepted: analyse says)."""
        return life in self.started and not self.unanswered[life]

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return
        self.off += len(data)
        data = self.buf + data
        *complete, self.buf = data.split(b"\n")
        for raw in complete:
            w = raw.decode(errors="replace").split()
            if len(w) < 2:
                continue
            self.lines[w[1]] += 1
            if w[1] == "PUB" and len(w) >= 4:
                self.pub[w[2]] = max(self.pub[w[2]], int(w[3]))
            elif w[1] == "GOT" and len(w) >= 5:
                self.got[(w[2], int(w[3]))].add(int(w[4]))
                self.unanswered[int(w[0])].discard(((w[2], int(w[3])), int(w[4])))
            elif w[1] == "START":
                self.started.add(int(w[0]))
            elif w[1] == "INJ" and len(w) >= 5:
                self.unanswered[int(w[0])].add(((w[2], int(w[3])), int(w[4])))
            elif _replay_position(w) is not None:
                self.unanswered[int(w[0])].discard(_replay_position(w))


def wait_line(tail: LogTail, word: str, child: Child, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tail.poll()
        if tail.lines[word]:
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early; see {child.work / (child.name + '.stderr')}")
        time.sleep(0.05)
    raise RuntimeError(f"{child.name}: no {word} line within {timeout} s")


def _store_log(db: Path) -> tuple[dict[tuple[str, int, int], str], int, int, dict[Chain, int]]:
    """(position -> hash, repeated positions, fork evidence rows, own chain cursors) of a store, read directly."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pos = {(b.hex(), p, s): h.hex() for b, p, s, h in conn.execute("SELECT branch, publisher, seq, hash FROM log")}
        dup = conn.execute("SELECT count(*) FROM (SELECT 1 FROM log GROUP BY branch, publisher, seq "
                           "HAVING count(*) > 1)").fetchone()[0]
        forks = conn.execute("SELECT count(*) FROM forks").fetchone()[0]
        chains = {(b.hex(), p): n - 1 for b, p, n in conn.execute("SELECT branch, publisher, next_seq FROM chains")}
    finally:
        conn.close()
    return pos, int(dup), int(forks), chains


def branches_of(work: Path, subscribers: int) -> dict[str, str]:
    """branch hex -> subscriber name, from the subscribers' SUBSCRIBED lines."""
    out = {}
    for i in range(subscribers):
        w = next(x for x in read_log(work / f"sub{i}.log") if x[1] == "SUBSCRIBED")
        out[w[2]] = f"sub{i}"
    return out


def _replay_position(w: list[str]) -> tuple[Chain, int] | None:
    """The position a ``REJECT REPLAY <branch> <publisher> <seq>`` line names; None for any other line, or one
    that names none (a FETCH refused as a replay names its requester and no seq)."""
    if len(w) >= 6 and w[1] == "REJECT" and w[2] == "REPLAY" and w[4].isdigit() and w[5].isdigit():
        return (w[3], int(w[4])), int(w[5])
    return None


def analyse(work: Path, subscribers: int, final_lives: dict[str, int] | None = None) -> dict[str, Any]:
    """Check every log (``<name>.log``) and store (``<name>.db``) in ``work``, for the author and ``subscribers``
    subscribers, after every process stopped.  Returns the figures (see the module docstring).

    ``final_lives``: each process's last lifetime, the one stopped cleanly (the harness knows it; without it, the
    highest lifetime in its log)."""
    names = ["author", *(f"sub{i}" for i in range(subscribers))]
    sub_branch = branches_of(work, subscribers)
    logs = {n: read_log(work / f"{n}.log") for n in names}
    author_name = "author"
    # Who receives each chain: the author's chain (publisher 0) of a branch goes to that branch's subscriber; the
    # subscriber's chain (publisher 1) goes to the author.
    receiver: dict[Chain, str] = {}
    sender: dict[Chain, str] = {}
    for b, name in sub_branch.items():
        receiver[(b, 0)], sender[(b, 0)] = name, author_name
        receiver[(b, 1)], sender[(b, 1)] = author_name, name

    stores = {n: _store_log(work / f"{n}.db") for n in names}
    acked: dict[Chain, int] = defaultdict(int)
    delivered: dict[str, dict[Chain, dict[int, set[str]]]] = {n: defaultdict(dict) for n in names}
    duplicates = redelivered = replays_accepted = injected = replay_refusals = 0
    replays_refused = replays_unanswered = replays_unanswered_last = 0
    fork_lines = 0
    reject_reasons: dict[str, int] = defaultdict(int)
    for name, lines in logs.items():
        me = 0 if name == author_name else 1
        per_life: dict[tuple[int, Chain], list[int]] = defaultdict(list)
        inj: dict[int, set[tuple[Chain, int]]] = defaultdict(set)
        refused: dict[int, set[tuple[Chain, int]]] = defaultdict(set)
        for w in lines:
            life, kind = int(w[0]), w[1]
            if kind == "ACKED" and int(w[3]) == me:
                acked[(w[2], me)] = max(acked[(w[2], me)], int(w[4]))
            elif kind == "WACK":
                acked[(w[2], me)] = max(acked[(w[2], me)], int(w[3]))
            elif kind == "GOT":
                ch, seq, h = (w[2], int(w[3])), int(w[4]), w[5]
                if seq in per_life[(life, ch)]:
                    duplicates += 1
                per_life[(life, ch)].append(seq)
                if (ch, seq) in inj[life]:
                    replays_accepted += 1
                delivered[name][ch].setdefault(seq, set()).add(h)
            elif kind == "INJ":
                inj[life].add(((w[2], int(w[3])), int(w[4])))
                injected += 1
            elif kind == "REJECT":
                reject_reasons[w[2]] += 1
                replay_refusals += w[2] == "REPLAY"
                pos = _replay_position(w)
                if pos is not None:
                    refused[life].add(pos)
            elif kind == "FORK":
                fork_lines += 1
        # Each injected replay against the REPLAY rejection of the same position in the same lifetime.  A kill
        # between the INJ line and the core's rejection event leaves one unanswered: only a killed lifetime may.
        last_life = (final_lives or {}).get(name, max((int(w[0]) for w in lines), default=0))
        for life, positions in inj.items():
            answered = len(positions & refused[life])
            replays_refused += answered
            replays_unanswered += len(positions) - answered
            if life == last_life:
                replays_unanswered_last += len(positions) - answered
        seen_lives: dict[tuple[Chain, int], int] = defaultdict(int)
        for (_life, ch), seqs in per_life.items():
            for s in set(seqs):
                seen_lives[(ch, s)] += 1
        redelivered += sum(1 for n in seen_lives.values() if n > 1)

    acked_lost = holes = undelivered = forks = 0
    published = delivered_total = 0
    for ch, rname in receiver.items():
        got = delivered[rname].get(ch, {})
        rpos = stores[rname][0]
        spos, _, _, schains = stores[sender[ch]]
        pub = schains.get(ch, 0)
        published += pub
        delivered_total += len(got)
        for s in range(1, acked[ch] + 1):
            if (ch[0], ch[1], s) not in rpos or s not in got:
                acked_lost += 1
        top = max(got, default=0)
        holes += sum(1 for s in range(1, top + 1) if s not in got)
        undelivered += sum(1 for s in range(1, pub + 1) if s not in got)
        for s, hashes in got.items():
            truth = spos.get((ch[0], ch[1], s))
            if len(hashes) > 1 or (truth is not None and hashes != {truth}):
                forks += 1
    # Every position held by more than one store must carry one hash.
    by_pos: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for pos, _dup, _f, _c in stores.values():
        for k, h in pos.items():
            by_pos[k].add(h)
    forks += sum(1 for hs in by_pos.values() if len(hs) > 1)
    forks += sum(st[2] for st in stores.values()) + fork_lines
    return {
        "acked": sum(acked.values()),
        "acked_lost": acked_lost,
        "duplicates": duplicates,
        "holes": holes,
        "undelivered": undelivered,
        "replays_injected": injected,
        "replays_accepted": replays_accepted,
        "replay_rejections": replay_refusals,
        "replays_refused": replays_refused,
        "replays_unanswered_killed": replays_unanswered - replays_unanswered_last,
        "replays_unanswered_last_life": replays_unanswered_last,
        "forks": forks,
        "log_dup_positions": sum(st[1] for st in stores.values()),
        "messages_published": published,
        "messages_delivered": delivered_total,
        "redelivered_after_crash": redelivered,
        "reject_reasons": dict(sorted(reject_reasons.items())),
    }


MUST_BE_ZERO = ("acked_lost", "duplicates", "holes", "undelivered", "replays_accepted", "replays_unanswered_last_life",
                "forks", "log_dup_positions")


def run(kills: int = 100, messages: int = 10_000, subscribers: int = 3, seed: int = 1, workdir: Path | None = None,
        quiet_timeout: float = 180.0, window: int = 64, inject: int = 20, max_down_s: float = 1.0,
        progress: bool = False, size: int = 16, journal: bool = False) -> dict[str, Any]:
    """Run the harness once and return its figures (``ok`` is True when every ``MUST_BE_ZERO`` figure is 0)."""
    rng = random.Random(seed)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="chaos-crash-") if workdir is None else None
    work = Path(tmp_ctx.name) if tmp_ctx is not None else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    quota = max(1, messages // (2 * subscribers))
    addr = f"tcp://127.0.0.1:{free_port()}"
    sub_seeds = [100 + i for i in range(subscribers)]
    common = ["--quota", str(quota), "--window", str(window), "--inject", str(inject), "--size", str(size),
              *(["--journal"] if journal else [])]
    author = Child("author", ["author", "--bind", addr, "--seed", str(AUTHOR_SEED), "--subs",
                              *map(str, sub_seeds), *common], work / "author.db", work / "author.log", work)
    subs = [Child(f"sub{i}", ["subscriber", "--connect", addr, "--seed", str(s), "--author-seed", str(AUTHOR_SEED),
                              *common], work / f"sub{i}.db", work / f"sub{i}.log", work)
            for i, s in enumerate(sub_seeds)]
    parties = [author, *subs]
    tails = {c.name: LogTail(c.log) for c in parties}
    t0 = time.monotonic()
    kills_done = restarts = 0
    kill_log: list[tuple[float, str]] = []
    try:
        author.start()
        wait_line(tails["author"], "START", author, 60)
        for c in subs:
            c.start()
        for c in subs:
            wait_line(tails[c.name], "START", c, 60)
        sub_branch = branches_of(work, subscribers)
        total = 2 * quota * subscribers
        thresholds = sorted(rng.uniform(0.02, 0.92) * total for _ in range(kills))
        last_report = 0.0

        def pumped() -> int:
            for t in tails.values():
                t.poll()
            return sum(sum(t.pub.values()) for t in tails.values())

        def restart_due() -> int:
            n = 0
            for c in parties:
                if c.p is None and c.restart_at is not None and time.monotonic() >= c.restart_at:
                    c.start()
                    n += 1
            return n

        while kills_done < kills:
            time.sleep(0.02)
            done = pumped()
            restarts += restart_due()
            if done >= thresholds[kills_done]:
                victims = [c for c in parties if c.alive()]
                if victims:
                    v = rng.choice(victims)
                    v.kill9()
                    v.restart_at = time.monotonic() + rng.uniform(0.0, max_down_s)
                    kills_done += 1
                    kill_log.append((round(time.monotonic() - t0, 2), v.name))
            if progress and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                print(f"[{time.monotonic() - t0:6.1f}s] published {done}/{total}, kills {kills_done}/{kills}",
                      file=sys.stderr, flush=True)
            if time.monotonic() - t0 > 3600:
                raise RuntimeError("the stream made no progress for an hour")
        # Quiet period: no more kills; every process comes back and everything published must arrive.
        t_quiet = time.monotonic()
        while time.monotonic() - t_quiet < quiet_timeout:
            restarts += restart_due()
            pumped()
            complete = all(len(tails["author"].got[(b, 1)]) >= quota and len(tails[n].got[(b, 0)]) >= quota
                           for b, n in sub_branch.items())
            # Every process up in its last lifetime, which refused the replays it injected at its start: stopped
            # before that, its unanswered injections would not say whether the refusal works.
            if complete and all(c.alive() and tails[c.name].settled(c.life) for c in parties):
                break
            time.sleep(0.1)
        # Let the last ACKs land, then stop cleanly (a SIGKILL would be as good: the logs are fsync'd).
        time.sleep(1.0)
        catch_up_s = time.monotonic() - t_quiet
        for c in parties:
            c.stop()
        elapsed = time.monotonic() - t0
        figures = analyse(work, subscribers, {c.name: c.life for c in parties})
    finally:
        for c in parties:
            c.kill9()
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    figures.update({
        "kills": kills_done,
        "restarts": restarts,
        "kills_by_process": {c.name: c.life for c in parties},
        "kill_times": kill_log,
        "messages_target": total,
        "subscribers": subscribers,
        "payload_bytes": size,
        "seed": seed,
        "elapsed_s": round(elapsed, 1),
        "catch_up_s": round(catch_up_s, 1),
        "ok": all(figures[k] == 0 for k in MUST_BE_ZERO),
    })
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="random kill -9 of author and subscribers during a two-way stream")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--messages", type=int, default=10_000, help="messages in all (both directions, all branches)")
    ap.add_argument("--subscribers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--out", type=Path, help="also write the JSON figures to this file")
    ap.add_argument("--workdir", type=Path, help="keep stores and logs here (default: a temp dir, removed)")
    ap.add_argument("--quiet-timeout", type=float, default=180.0, help="seconds allowed for the final catch-up")
    ap.add_argument("--size", type=int, default=16,
                    help="payload bytes per message (from about 1 KiB the frames go to the stores' frame files)")
    ap.add_argument("--journal", action="store_true", help="every party's store with its commit journal on")
    args = ap.parse_args(argv)
    fig = run(args.kills, args.messages, args.subscribers, args.seed, args.workdir, args.quiet_timeout,
              progress=not args.json, size=args.size, journal=args.journal)
    return emit(fig, args.out, args.json, 26,
                lambda k, v: "" if k not in MUST_BE_ZERO else ("  ok" if v == 0 else "  FAIL"))


if __name__ == "__main__":
    sys.exit(main())
