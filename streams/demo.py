"""The demos.  ``streams demo`` runs the multi-process one (:mod:`streams._demo_multi`); this module holds
:func:`run_demo`, which picks it, and the in-process demo (``streams demo --in-process``, also used when ZeroMQ
is not installed).

The in-process demo: one fraud monitor (author) and three payment providers (subscribers).

Runs over the in-memory transport with real SQLite stores in a temporary directory and *checks* the security
claims it shows: segregation between providers, replay rejection, refusal of a DID the monitor did not admit.
Returns 0 if every check holds, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import _crypto
from ._cli._common import print_out
from .api import Author, MemoryHub, StoreOptions, Subscriber
from .errors import AdmissionRefused, DecodeError, RejectReason, StreamsTimeoutError, VerificationError
from .events import Rejected
from .identity import Identity
from .policy import AllowList
from .wire import Kind, decode_frame, decode_grant_body, decode_grant_key

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


async def _demo(workdir: Path, events_per_provider: int, out: list[str]) -> Report:
    rep = Report()
    opts = StoreOptions(durable=True)
    hub = MemoryHub()
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
    rejected = [e for e in monitor.pending_events() if isinstance(e, Rejected)]
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
