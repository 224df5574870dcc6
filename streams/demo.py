"""The demos.  ``streams demo`` runs the multi-process one (:mod:`streams._demo_multi`); this module holds
:func:`run_demo`, which picks it, and the in-process demo (``streams demo --in-process``, also used when ZeroMQ
is not installed).

The in-process demo: one fraud monitor (author) and three payment providers (subscribers).

Runs over the in-memory transport with real SQLite stores in a temporary directory and *checks* the security
claims it shows, each by attacking it: forged signatures rejected, segregation between providers, replay
rejection, refusal of a DID the monitor did not admit.  Returns 0 if every check holds, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import _crypto
from ._cli._common import print_out
from .api import Author, MemoryHub, StoreOptions, Subscriber
from .errors import AdmissionRefused, DecodeError, RejectReason, StreamsTimeoutError, VerificationError
from .events import MessageReceived, Rejected
from .identity import Identity
from .policy import AllowList
from .wire import Kind, decode_frame, decode_grant_body, decode_grant_key, encode_frame

__all__ = ["run_demo", "run_inprocess_demo"]


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def granted_keys(grants: list[bytes], ident: Identity) -> list[bytes]:
    """Every chain key that ``ident`` can take out of the GRANT frames ``grants`` (each entry it opens with its own
    identity): what a dishonest provider holds, whatever its software does with it."""
    keys: list[bytes] = []
    for data in grants:
        f = decode_frame(data)
        if f.kind is not Kind.GRANT:
            continue
        for entry in decode_grant_body(f.body)[1]:
            try:
                granted = decode_grant_key(ident.unseal(entry.sealed))
            except (VerificationError, DecodeError):
                continue  # another member's entry
            keys += [k for _p, k in granted.keys if k not in keys]
    return keys


def opens(keys: list[bytes], data: bytes) -> bool:
    """Does one of ``keys`` open (authenticate) the PACKET ``data``?"""
    f = decode_frame(data)
    for k in keys:
        try:
            _crypto.aead_decrypt(k, f.head.nonce, f.aad, f.body)
            return True
        except VerificationError:
            continue
    return False


def altered_signature(data: bytes) -> bytes:
    """The signed frame ``data`` with one bit of its signature flipped (the signature is the frame's last field,
    so its last byte is the frame's): what a relay that alters a frame in flight sends."""
    if not decode_frame(data).sig:
        raise ValueError("the frame is not signed")
    return data[:-1] + bytes([data[-1] ^ 1])


def resigned(data: bytes, signer: Identity) -> bytes:
    """The frame ``data`` -- the same head and body -- signed by ``signer`` instead of its publisher: what a party
    holding its own key but not the publisher's can make of a frame in someone else's name."""
    f = decode_frame(data)
    return encode_frame(f.head, f.body, signer.sign).raw


def judge_forgeries(sent: int, rejected: list[str], forged_delivered: int, genuine_ok: bool) -> tuple[bool, str]:
    """A check passes only if each of the ``sent`` forged copies of a message was rejected BAD_SIGNATURE
    (``rejected``: the reasons given), none was delivered, and the genuine message then was, from its signer."""
    ok = (sent > 0 and len(rejected) == sent and all(r == "BAD_SIGNATURE" for r in rejected)
          and forged_delivered == 0 and genuine_ok)
    detail = (f"{sent} forged cop{'y' if sent == 1 else 'ies'}: {len(rejected)} rejected "
              f"({', '.join(sorted(set(rejected))) or 'none'}), {forged_delivered} delivered; the genuine one "
              f"{'then delivered, signed by its DID' if genuine_ok else 'NOT delivered as signed by its DID'}")
    return ok, detail


class _Wire(MemoryHub):
    """The in-memory network with an attacker on it: besides recording every frame (``tap``), it withholds those
    ``hold`` picks (``held``, in order), and sends frames of its own (:meth:`attack`)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: Callable[[str, bytes], bool] | None = None  #: (receiver, frame) -> withhold it?
        self.held: list[bytes] = []

    def inject(self, to: str, data: bytes, peer: str = "attacker") -> None:
        if self.hold is not None and self.hold(to, data):
            self.held.append(data)
            return
        super().inject(to, data, peer)

    def attack(self, to: str, data: bytes) -> None:
        """Deliver ``data`` to ``to`` from the attacker's own connection, whatever ``hold`` says."""
        super().inject(to, data, "attacker")


async def _until(cond: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``cond()`` holds (True) or ``timeout`` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True


async def _forgeries(monitor: Author, hub: _Wire, sub: Subscriber, branch: bytes, did: str,
                     impostor: Identity) -> tuple[bool, str]:
    """The attacker withholds the provider's next payment event and sends the monitor two forged copies of it:
    one with its signature altered, one signed with ``impostor``'s key.  Each must be rejected BAD_SIGNATURE and
    not delivered; the genuine event, released after them, must be delivered from ``did``."""

    def next_packet(to: str, data: bytes) -> bool:
        f = decode_frame(data)
        return to == "author" and f.kind is Kind.PACKET and f.head.branch == branch

    delivered: list[MessageReceived] = []

    async def read() -> None:
        while True:
            delivered.append(await monitor.next_message())

    reader = asyncio.create_task(read())  # (cancelled while it waits: nothing is taken then)
    hub.hold = next_packet
    try:
        seq = await sub.publish(branch, json.dumps({"payment": "withheld by the attacker"}).encode())
        if not await _until(lambda: bool(hub.held), 10):
            return False, "the attacker saw no packet to forge"
        genuine = hub.held[0]
        monitor.pending_events()
        forged = [altered_signature(genuine), resigned(genuine, impostor)]
        reasons: list[str] = []

        def settled(n: int) -> Callable[[], bool]:
            """n forgeries rejected, or one delivered."""

            def pred() -> bool:
                reasons.extend(e.reason.name for e in monitor.pending_events()
                               if isinstance(e, Rejected) and e.branch == branch and e.seq == seq)
                return len(reasons) >= n or bool(delivered)

            return pred

        for n, f in enumerate(forged, 1):
            hub.attack("author", f)
            await _until(settled(n), 5)
        await _until(lambda: bool(delivered), 0.3)  # a forgery delivered late would show now
        forged_delivered = len(delivered)
        genuine_ok = False
        if not delivered:  # (else the genuine event is a replay: the check has failed already)
            hub.hold = None
            hub.attack("author", genuine)
            if await _until(lambda: bool(delivered), 10):
                m = delivered[0]
                genuine_ok = (m.branch, m.seq, m.signed, m.publisher_did) == (branch, seq, True, did)
    finally:
        hub.hold = None
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return judge_forgeries(len(forged), reasons, forged_delivered, genuine_ok)


async def _demo(workdir: Path, events_per_provider: int, out: list[str]) -> Report:
    rep = Report()
    opts = StoreOptions(durable=True)
    hub = _Wire()
    monitor_id = Identity.generate()
    providers = {name: Identity.generate() for name in ("acme-pay", "globex-pay", "initech-pay")}
    stranger = Identity.generate()
    policy = AllowList.of([i.did for i in providers.values()])
    monitor = await Author.create(workdir / "monitor.db", monitor_id, "payment-fraud-monitor", "demo-passphrase",
                                  hub.author_endpoint(), policy, store_options=opts)
    out.append(f"monitor   {monitor.did}")
    out.append(f"channel   {monitor.channel.hex()}")
    subs: dict[str, Subscriber] = {}
    branches: dict[str, bytes] = {}
    for name, ident in providers.items():
        s = await Subscriber.create(workdir / f"{name}.db", ident, monitor.did, monitor.channel, "demo-passphrase",
                                    hub.subscriber_endpoint(name), store_options=opts)
        subs[name] = s
        branches[name] = await s.subscribe(timeout=10)
        out.append(f"provider  {name:<12} {ident.did}  branch {branches[name].hex()[:12]}…")

    # 1. Providers publish payment events; the monitor reads them all.
    for i in range(events_per_provider):
        for name, s in subs.items():
            event = {"provider": name, "payment": i, "amount_eur": 10 + i, "card": f"4242…{1000 + i}"}
            await s.publish(branches[name], json.dumps(event).encode())
    expected = events_per_provider * len(subs)
    received = []
    for _ in range(expected):
        received.append(await monitor.next_message(timeout=10))
    per_provider = {name: sum(1 for m in received if m.branch == branches[name]) for name in subs}
    rep.check("monitor received every provider's events", all(v == events_per_provider for v in per_provider.values()),
              ", ".join(f"{name} {n}/{events_per_provider}" for name, n in per_provider.items()))
    rep.check("every event signed by its provider's DID",
              all(m.signed and m.publisher_did == providers[json.loads(m.payload)["provider"]].did for m in received))
    # The attacker forges: acme-pay's next event with its signature altered, and signed with globex-pay's key.
    ok, detail = await _forgeries(monitor, hub, subs["acme-pay"], branches["acme-pay"], providers["acme-pay"].did,
                                  providers["globex-pay"])
    rep.check("forged signatures on a payment event rejected, nothing delivered", ok, detail)

    # 2. The monitor alerts one provider; no other provider can read it (every frame reached every endpoint).
    await monitor.publish(branches["acme-pay"], b'{"alert": "card 4242...1003 flagged"}')
    alert = await subs["acme-pay"].next_message(timeout=10)
    rep.check("alert delivered to its provider only", alert.payload.startswith(b'{"alert"'))
    leaked = 0
    for name in ("globex-pay", "initech-pay"):
        try:
            await subs[name].next_message(timeout=0.3)
            leaked += 1
        except StreamsTimeoutError:
            pass
    # Their software refuses the branch; their owners try every key they were granted on what crossed their wire.
    opened = seen_foreign = 0
    for name in ("globex-pay", "initech-pay"):
        keys = granted_keys([d for _s, dst, d in hub.tap if dst == name], providers[name])
        foreign = [d for _s, dst, d in hub.tap if dst == name and decode_frame(d).kind is Kind.PACKET
                   and decode_frame(d).head.branch == branches["acme-pay"]]
        seen_foreign += len(foreign)
        opened += sum(1 for d in foreign if opens(keys, d))
    rep.check("segregation: other providers read nothing of acme-pay's branch",
              leaked == 0 and opened == 0 and seen_foreign > 0,
              f"{seen_foreign} foreign packets crossed their wire, {leaked + opened} readable")

    # 3. An attacker records a packet on the wire and replays it to the monitor.
    recorded = [d for src, _dst, d in hub.tap if src == "globex-pay" and decode_frame(d).kind is Kind.PACKET]
    monitor.pending_events()
    hub.inject("author", recorded[0], peer="attacker")
    await asyncio.sleep(0.2)
    head = decode_frame(recorded[0]).head
    rejected = [e for e in monitor.pending_events() if isinstance(e, Rejected)
                and (e.branch, e.seq) == (head.branch, head.seq)]
    rep.check("replayed payment event rejected", [e.reason for e in rejected] == [RejectReason.REPLAY],
              ", ".join(e.reason.name for e in rejected))
    try:
        await monitor.next_message(timeout=0.3)
        rep.check("replay not delivered", False)
    except StreamsTimeoutError:
        rep.check("replay not delivered", True)

    # 4. A DID the monitor did not admit is refused.
    s = await Subscriber.create(workdir / "stranger.db", stranger, monitor.did, monitor.channel, "demo-passphrase",
                                hub.subscriber_endpoint("stranger"), store_options=opts)
    try:
        await s.subscribe(timeout=10)
        rep.check("unlisted DID refused", False)
    except AdmissionRefused as exc:
        rep.check("unlisted DID refused", exc.reason is RejectReason.REFUSED)
    await s.close()
    for x in subs.values():
        await x.close()
    await monitor.close()
    return rep


def run_inprocess_demo(events_per_provider: int = 5, as_json: bool = False) -> int:
    """Run the demo, print a summary, return the exit status."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="streams-demo-") as tmp:
        rep = asyncio.run(_demo(Path(tmp), events_per_provider, lines))
    if as_json:
        print_out(json.dumps({"ok": rep.ok, "checks": [{"check": n, "ok": ok, "detail": d}
                                                      for n, ok, d in rep.checks]}))
    else:
        checks = [f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail else "")
                  for name, ok, detail in rep.checks]
        print_out("\n".join([*lines, "", *checks, "", "all checks passed" if rep.ok else "SOME CHECKS FAILED"]))
    return 0 if rep.ok else 1


def run_demo(events_per_provider: int = 5, as_json: bool = False, in_process: bool = False) -> int:
    """``streams demo``: the multi-process demo over ZeroMQ (:mod:`streams._demo_multi`), or this in-process one
    if asked or if ZeroMQ is not installed.  Returns the exit status (0 only if every check passed)."""
    from ._cli._transport import zmq_available

    if in_process or not zmq_available():
        if not in_process:
            print("streams demo: ZeroMQ (pyzmq) is not installed; running the in-process demo", file=sys.stderr)
        return run_inprocess_demo(events_per_provider, as_json)
    from ._demo_multi import run_process_demo

    return run_process_demo(events_per_provider, as_json)
