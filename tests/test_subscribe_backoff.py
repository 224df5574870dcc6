"""``Subscriber.subscribe`` asks again after a BAD_CHALLENGE refusal (the challenge expired on the way, the
author restarted, its used-nonce table is full: SPEC 9.2) -- but paced: a relay that answers every HELLO with a
stale CHALLENGE, or an author refusing every request for a while, must not have the subscriber and the author
doing a handshake's crypto at network speed until the timeout.  Real SQLite stores, the in-memory transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import AdmissionRefused, StreamsTimeoutError
from streams.api import Author, MemoryHub, StoreOptions
from streams.core import CoreConfig
from streams.errors import RejectReason
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame
from tests.test_admission_r2 import member

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


async def test_a_subscriber_refused_bad_challenge_again_and_again_asks_again_at_a_slowing_pace(
        tmp_path: Path) -> None:
    hub = MemoryHub()
    a, b = Identity.generate(), Identity.generate()
    # The author's used-nonce table holds one: while a's nonce is unexpired, every other SUBSCRIBE is refused
    # BAD_CHALLENGE (a refusal to ask again for).
    author = await Author.create(tmp_path / "author.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([a.did, b.did]), store_options=FAST,
                                 config=CoreConfig(max_nonces=1))
    sa = await member(tmp_path, hub, author, a, "a")
    sb = await member(tmp_path, hub, author, b, "b")
    try:
        await sa.subscribe(timeout=10)
        with pytest.raises((AdmissionRefused, StreamsTimeoutError)) as err:
            await sb.subscribe(timeout=1.5)
        if isinstance(err.value, AdmissionRefused):
            assert err.value.reason is RejectReason.BAD_CHALLENGE
        hellos = [d for src, dst, d in hub.tap if src == "b" and decode_frame(d).kind is Kind.HELLO]
        refusals = [d for src, dst, d in hub.tap if dst == "b" and decode_frame(d).kind is Kind.REFUSE]
        assert refusals, "the author never refused b: the test proves nothing"
        # Paced: 0, 0.05, 0.1, 0.2, 0.4, 0.8 s between the asks -- at most a handful in 1.5 s, whatever the speed
        # of the machine (unpaced, every refusal was answered by a new HELLO at once: hundreds).
        assert len(hellos) <= 8, len(hellos)
    finally:
        await sb.close()
        await sa.close()
        await author.close()
