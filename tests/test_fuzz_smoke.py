"""The fast variant of the coverage-guided fuzzing in ``fuzz/`` (the long runs are ``fuzz/run.py``).

The same harnesses (``fuzz/targets.py``) are driven three ways:

1. every seed and every committed corpus file satisfies its target's invariant, and the seeds are valid
   input (each decoder accepts them, each core accepts most);
2. Hypothesis damages the seeds (bit flips, truncations, splices) and feeds random bytes, a few hundred
   inputs per target;
3. if atheris is installed, a short libFuzzer run of every target in a child process (a few thousand inputs
   each, coverage-guided, hangs caught by ``-timeout``).

Plus regression tests for the crashes the fuzzers found, written as the attacks they are.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.scenario import Scenario
from fuzz.targets import TARGETS, CoreHarness, fingerprint, scenario
from streams import _crypto
from streams.core import _legacy_hint
from streams.errors import DecodeError, RejectReason
from streams.events import Rejected
from streams.policy import AllowList
from streams.wire import (
    Fetch,
    Grant,
    GrantEntry,
    GrantSecret,
    Permission,
    encode_frame,
    encode_grant_entries,
    encode_grant_secret,
)
from tests import strategies as S
from tests.corenet import ident

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(TARGETS)
SMOKE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.mark.parametrize("name", NAMES)
def test_seeds_and_committed_corpus_hold_the_invariant(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    committed = [p.read_bytes() for p in sorted((ROOT / "fuzz" / "corpus" / name).iterdir())]
    assert seeds and len(committed) >= len(seeds) // 2, "run fuzz/make_corpus.py"
    for data in seeds + committed:
        target.check(data)


def _one_of(*decoders: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A decoder that accepts what any of ``decoders`` accepts (raises the last one's error otherwise)."""

    def decode(data: bytes) -> object:
        for d in decoders[:-1]:
            try:
                return d(data)
            except DecodeError:
                continue
        return decoders[-1](data)

    return decode


def test_seeds_are_valid_input() -> None:
    """Seeds that were all refused would start the fuzzer outside the interesting code."""
    from streams import wire
    from streams.anchor import EpochCheckpoint
    from streams.identity import public_key_from_did

    decoders = {
        "decode_frame": wire.decode_frame, "grant_entries": wire.decode_grant_body,
        "grant_secret": _one_of(wire.decode_grant_secret, wire.decode_grant_key, wire.decode_grant_shared),
        "subscribe_secret": wire.decode_subscribe_secret,
        "epoch_checkpoint": EpochCheckpoint.decode, "did": lambda b: public_key_from_did(b.decode()),
    }
    for name, decode in decoders.items():
        for data in TARGETS[name].seeds():
            decode(data)  # raises if a seed is not valid
    sc = scenario()
    for make, frames in ((sc.author.author, sc.to_author), (sc.subscriber.subscriber, sc.to_subscriber)):
        accepted = 0
        for data in frames:
            events = make().receive(data, sc.now_ms, "peer")
            accepted += not any(isinstance(e, Rejected) for e in events)
        assert accepted >= len(frames) // 2


def test_the_rebuilt_author_admits_the_newcomers_subscribe_seed() -> None:
    """The author's seeds hold a SUBSCRIBE answering a challenge of the live author (fuzz/scenario.py), so that
    the harness reaches admission.  The challenge key is per run (SPEC 8.3): an author rebuilt from the snapshot
    must take the live one's (else every such seed fails its MAC, BAD_CHALLENGE, and admission goes unfuzzed)."""
    from streams.events import SubscriberAdmitted
    from streams.wire import Kind, decode_frame

    sc = scenario()
    subscribes = [d for d in sc.to_author if decode_frame(d).kind is Kind.SUBSCRIBE]
    admitted = [e for d in subscribes for e in sc.author.author().receive(d, sc.now_ms, "peer")
                if isinstance(e, SubscriberAdmitted)]
    assert [e.did for e in admitted] == [ident(13).did]  # the newcomer's (the stranger's: not on the list)


def _inputs(name: str) -> st.SearchStrategy[bytes]:
    seeds = TARGETS[name].seeds()
    return st.one_of(st.sampled_from(seeds).flatmap(S.mutations), st.binary(max_size=300))


@pytest.mark.parametrize("name", NAMES)
def test_damaged_and_random_inputs(name: str) -> None:
    check = TARGETS[name].check

    @SMOKE
    @given(_inputs(name))
    def run(data: bytes) -> None:
        check(data)

    run()


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed (extra 'fuzz')")
def test_libfuzzer_short_run(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--all", "--runs", "1500", "--jobs", "2",  # one per core
         "--workdir", str(tmp_path), "--results", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["crashes"] == 0
    assert {t["target"] for t in doc["targets"]} == set(TARGETS)
    assert all(t["inputs"] >= 1500 and t["coverage_edges"] > 0 for t in doc["targets"])


# --- regressions: crashes the fuzzers found, as attacks -----------------------------------------------------


def _group(sc: Scenario) -> bytes:
    """The group branch: the one where s0 (member 1) reads only and s1 is member 2."""
    [g] = [b.id for b in sc.subscriber.branches if dict((i, p) for i, _, p in b.members).get(1) == Permission.READ]
    return g


def test_member_asking_a_reader_for_its_chain_is_rejected() -> None:
    """s1, a reader of the group, sends s0 (another reader, with no chain of its own) a FETCH for s0's chain,
    properly signed with s1's key.  It used to raise KeyError out of ``receive``: a member could crash any
    other member of a group."""
    sc = scenario()
    h = CoreHarness(sc.subscriber.subscriber, sc.now_ms)
    clean = fingerprint(h.core)
    fetch = encode_frame(Fetch(sc.subscriber.channel, _group(sc), 1, 1, 5, 2), b"", ident(11).sign).raw
    events = h.core.receive(fetch, sc.now_ms, "s1")
    assert [type(e) for e in events] == [Rejected]
    assert events[0].reason is RejectReason.UNEXPECTED  # type: ignore[union-attr]
    assert fingerprint(h.core) == clean and not h.core.take_changes() and not h.core.data_to_send()


def test_rekey_grant_moving_our_member_index_is_rejected() -> None:
    """A re-key grant (signed by the author, correctly linked) that puts s0 at another member index used to
    raise KeyError while re-syncing the chains; now it is refused and nothing changes."""
    sc = scenario()
    h = CoreHarness(sc.subscriber.subscriber, sc.now_ms)
    clean = fingerprint(h.core)
    author, me = sc.author.identity, sc.subscriber.identity
    g = _group(sc)
    [rec] = [b for b in sc.subscriber.branches if b.id == g]
    members = [(0, author.sign_public, 3), (2, me.sign_public, 1)]
    secret = GrantSecret(2, members, [], [])
    hint = _legacy_hint(g, rec.epoch + 1, me.kx_public)  # a first-layout grant: its authors wrote this hint
    entry = GrantEntry(hint, _crypto.seal(me.kx_public, encode_grant_secret(secret)))
    grant = encode_frame(Grant(sc.subscriber.channel, g, rec.epoch + 1, rec.grant_hash, rec.mode),
                         encode_grant_entries([entry]), author.sign).raw
    events = h.core.receive(grant, sc.now_ms, "author")
    assert [type(e) for e in events] == [Rejected]
    assert events[0].reason is RejectReason.MALFORMED  # type: ignore[union-attr]
    assert fingerprint(h.core) == clean and not h.core.take_changes()


def test_libfuzzer_crash_input_replays_clean() -> None:
    """The input libFuzzer saved for the second crash (subscriber_insider), replayed through its harness."""
    import base64

    data = base64.b64decode("CQEHAQIDBAUACQojCwz/////EBEACQoLDIwNDg8QERoGEwcUFQgJCgsMDQ4PEBYXGBEZEhob")
    TARGETS["subscriber_insider"].check(data)


def test_an_author_snapshot_rebuilds_the_run_it_was_taken_of() -> None:
    """The harness feeds every input to a core rebuilt from a snapshot: the rebuilt author must be the live one,
    its run's handshake state included -- the challenge nonces it used and those it refused (a stranger's
    subscription, here), which the snapshot once left out."""
    from fuzz.scenario import author_snapshot
    from streams.core import CoreConfig
    from tests.corenet import Net

    net = Net.make(n_subs=2)
    allowed = (net.subs["s0"].identity.did,)
    net.author.policy = AllowList.of(list(allowed))
    net.subscribe("s0")
    net.subscribe("s1")  # not on the list: refused, its nonce kept as refused
    live = net.author
    assert live._refused_nonces and live._used_nonces
    rebuilt = author_snapshot(live, allowed, CoreConfig()).author()
    assert fingerprint(rebuilt) == fingerprint(live)
