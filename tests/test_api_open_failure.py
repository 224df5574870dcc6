"""A failed ``create``/``open`` closes the transport it was given (README: the transport is the party's once
passed).  Real ZeroMQ endpoints on tcp loopback and real SQLite stores: an endpoint left open keeps its socket and
port, and pyzmq's finalizer may later block the whole process in ``Context.term``."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokerless import AuthorEndpoint, SubscriberEndpoint
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import Outgoing
from streams.errors import BadPassphrase, ClosedResourceError, DecodeError, LocalProtocolError, StorageError
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import Store

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
POLICY = AllowList.of([P1.did])


async def assert_closed(ep: AuthorEndpoint | SubscriberEndpoint) -> None:
    with pytest.raises(ClosedResourceError):
        await ep.send(Outgoing(b"x"))


async def test_failed_author_open_and_create_close_the_endpoint_and_free_its_port(tmp_path: Path) -> None:
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, ep, POLICY, store_options=FAST)
    addr = ep.addresses[0]
    await author.close()

    ep = AuthorEndpoint(addr)
    try:
        with pytest.raises(BadPassphrase):
            await Author.open(tmp_path / "author.db", "wrong passphrase", ep, POLICY, store_options=FAST)
        await assert_closed(ep)
    finally:
        await ep.close()  # idempotent: only the old code leaves it to the test
    ep = AuthorEndpoint(addr)  # the port was released: the right passphrase can serve there again
    try:
        with pytest.raises(LocalProtocolError):  # the store exists
            await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, ep, POLICY, store_options=FAST)
        await assert_closed(ep)
    finally:
        await ep.close()
    author = await Author.open(tmp_path / "author.db", PW, AuthorEndpoint(addr), POLICY, store_options=FAST)
    await author.close()


async def test_failed_subscriber_open_and_create_close_the_endpoint(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    await sub.close()
    author_ep = AuthorEndpoint("tcp://127.0.0.1:0")  # a real address for the subscriber endpoints to connect to
    addr = author_ep.addresses[0]
    try:
        ep = SubscriberEndpoint(addr)
        try:
            with pytest.raises(BadPassphrase):
                await Subscriber.open(tmp_path / "p1.db", "wrong passphrase", ep, store_options=FAST)
            await assert_closed(ep)
        finally:
            await ep.close()
        ep = SubscriberEndpoint(addr)
        try:
            with pytest.raises(DecodeError):  # a malformed author DID
                await Subscriber.create(tmp_path / "p2.db", P1, "did:key:zNOT-BASE58", author.channel, PW, ep,
                                        store_options=FAST)
            await assert_closed(ep)
        finally:
            await ep.close()
        ep = SubscriberEndpoint(addr)
        try:
            with pytest.raises(LocalProtocolError, match="32 bytes"):  # a truncated channel id
                await Subscriber.create(tmp_path / "p2.db", P1, AUTHOR.did, author.channel[:5], PW, ep,
                                        store_options=FAST)
            await assert_closed(ep)
        finally:
            await ep.close()
        assert not (tmp_path / "p2.db").exists()
    finally:
        await author_ep.close()
        await author.close()


async def test_a_store_runs_one_party_at_a_time(tmp_path: Path) -> None:
    """Two parties on one store would sign the same sequence numbers twice (forks): the second open is refused
    while the first runs (also from this process), and the store opens again once the first closed.  A second
    create at the path is the caller's mistake, whether a party runs or not (README: LocalProtocolError)."""
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    try:
        with pytest.raises(StorageError, match="in use"):
            await Author.open(tmp_path / "author.db", PW, ep, POLICY, store_options=FAST)
        await assert_closed(ep)  # and the failed open released what it was given, as any other
        with pytest.raises(LocalProtocolError, match="already exists"):
            await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, MemoryHub().author_endpoint(),
                                POLICY, store_options=FAST)
    finally:
        await ep.close()
        await author.close()
    again = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), POLICY, store_options=FAST)
    # A reader that does not run a party still opens it meanwhile (streams status, audit, backup).
    reader = Store.open(tmp_path / "author.db", PW, durable=False)
    reader.close()
    await again.close()


async def test_a_failed_party_create_leaves_no_store(tmp_path: Path) -> None:
    """``Author.create`` and ``Subscriber.create`` that fail after their store was made -- the transport closed
    under the announce, the store's lock held by another party -- leave nothing at the path (README: a create
    that fails leaves nothing behind), so the same create succeeds once the cause is gone; they used to leave
    the new store, and the retry was refused as "already exists".  A ``-lock`` that was there stays."""
    import fcntl
    import os

    closed = MemoryHub().author_endpoint()
    await closed.close()
    with pytest.raises(ClosedResourceError):
        await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, closed, POLICY, store_options=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    await author.close()

    sub_db = tmp_path / "s.db"
    fd = os.open(f"{sub_db}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another party (here, this process) holds the path's lock
        with pytest.raises(StorageError, match="in use"):
            await Subscriber.create(sub_db, P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                    store_options=FAST)
        assert not sub_db.exists() and not Path(f"{sub_db}-wal").exists() and Path(f"{sub_db}-lock").exists()
    finally:
        os.close(fd)
    sub = await Subscriber.create(sub_db, P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                  store_options=FAST)
    await sub.close()
