"""The crash harness (chaos/crash.py), short variant: random ``kill -9`` of the author and the subscribers during a
two-way stream over ZeroMQ, then every log and store is checked (THREATS 3 and 4).  The long run is
``python chaos/crash.py`` (300 kills, 30k messages in the last one); its figures are in chaos/results/crash.json."""

from __future__ import annotations

from pathlib import Path

from chaos.applog import read_log
from chaos.crash import MUST_BE_ZERO, analyse, run


def _rewrite(path: Path, keep: object) -> None:
    lines = [w for w in read_log(path) if keep(w)]  # type: ignore[operator]
    path.write_text("".join(" ".join(w) + "\n" for w in lines))


def test_random_kills_lose_nothing_acknowledged_and_accept_no_replay(tmp_path: Path) -> None:
    fig = run(kills=8, messages=600, subscribers=2, seed=7, workdir=tmp_path, quiet_timeout=60, inject=10)
    for k in MUST_BE_ZERO:
        assert fig[k] == 0, (k, fig)
    assert fig["ok"]
    assert fig["kills"] == 8 and fig["restarts"] >= 8
    assert fig["messages_published"] == fig["messages_delivered"] == 600
    # The run exercised what it claims to: acknowledgements, replays re-injected after restarts and refused as
    # replays, position by position (only a kill between injection and refusal may leave one unanswered; the
    # last lifetimes' are all answered: replays_unanswered_last_life is in MUST_BE_ZERO).
    assert fig["acked"] >= 500
    assert fig["replays_injected"] > 0 and fig["replays_refused"] > 0

    # The checker itself: a receiver that "forgets" an acknowledged message, hands one out twice in one lifetime,
    # or hands out a replayed frame again is caught.
    sub = tmp_path / "sub0.log"
    lines = read_log(sub)
    got = [w for w in lines if w[1] == "GOT" and w[3] == "0"]
    victim = got[len(got) // 2]
    _rewrite(sub, lambda w: w[1:5] != victim[1:5])
    bad = analyse(tmp_path, 2)
    assert bad["acked_lost"] >= 1 and bad["holes"] >= 1 and not all(bad[k] == 0 for k in MUST_BE_ZERO)

    with sub.open("a") as f:
        f.write(" ".join(victim) + "\n" + " ".join(victim) + "\n")
    assert analyse(tmp_path, 2)["duplicates"] >= 1

    [(log, inj), *_] = [(p, w) for p in (tmp_path / "author.log", tmp_path / "sub1.log") for w in read_log(p)
                        if w[1] == "INJ"]
    h = next(w[5] for w in read_log(log) if w[1] == "GOT" and w[2:5] == inj[2:5])
    with log.open("a") as f:
        f.write(" ".join([inj[0], "GOT", *inj[2:5], h]) + "\n")
    assert analyse(tmp_path, 2)["replays_accepted"] >= 1

    # An injected replay the last lifetime never refused is caught (its REJECT lines removed); in a killed one it
    # is counted apart.
    last = fig["kills_by_process"][log.stem]
    assert any(w[1] == "INJ" and int(w[0]) == last for w in read_log(log))
    _rewrite(log, lambda w: not (w[1] == "REJECT" and w[2] == "REPLAY" and int(w[0]) == last))
    lives = {"author": fig["kills_by_process"]["author"], "sub0": fig["kills_by_process"]["sub0"],
             "sub1": fig["kills_by_process"]["sub1"]}
    assert analyse(tmp_path, 2, lives)["replays_unanswered_last_life"] >= 1
    lives[log.stem] += 1  # as if that lifetime had been killed and a later one had logged nothing
    moved = analyse(tmp_path, 2, lives)
    assert moved["replays_unanswered_last_life"] == 0 and moved["replays_unanswered_killed"] >= 1

    # A different hash at a delivered position is a fork.
    with sub.open("a") as f:
        f.write(" ".join([*victim[:5], "00" * 32]) + "\n")
    assert analyse(tmp_path, 2)["forks"] >= 1


def test_random_kills_with_16_kib_payloads_lose_nothing_in_the_frame_files(tmp_path: Path) -> None:
    """The same with frames that go to the stores' frame files: a kill between a frame file's write and its
    commit, or in a catch-up read, must lose and duplicate nothing either."""
    fig = run(kills=6, messages=300, subscribers=2, seed=11, workdir=tmp_path, quiet_timeout=60, inject=5,
              size=16384)
    for k in MUST_BE_ZERO:
        assert fig[k] == 0, (k, fig)
    assert fig["ok"] and fig["kills"] == 6 and fig["payload_bytes"] == 16384
    assert fig["messages_published"] == fig["messages_delivered"] == 300
    for db in ("author", "sub0", "sub1"):  # every party kept its frames in its frame file
        assert (tmp_path / f"{db}.db-frames").stat().st_size >= 16384 * 100, db


def test_random_kills_with_the_commit_journal_on_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """The same with every store's commit journal on (``--journal``): what a killed party acknowledged sits in its
    journal, applied when it starts again."""
    fig = run(kills=8, messages=600, subscribers=2, seed=11, workdir=tmp_path, quiet_timeout=60, inject=10,
              journal=True)
    for k in MUST_BE_ZERO:
        assert fig[k] == 0, (k, fig)
    assert fig["ok"] and fig["kills"] == 8 and fig["restarts"] >= 8
    assert fig["messages_published"] == fig["messages_delivered"] == 600
    assert fig["acked"] >= 500 and fig["replays_injected"] > 0 and fig["replays_refused"] > 0
