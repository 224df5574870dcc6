"""One payment provider of the multi-process demo, in its own OS process (internal to :mod:`streams._demo_multi`).

``python -m streams._demo_proc --store S --keystore K --connect ADDR --author DID --channel HEX
--passphrase-env VAR`` creates the provider's store, subscribes over ZeroMQ, prints
``{"event": "subscribed", "branch": hex, "did": ...}`` and then one JSON line per message and event
(the same documents as ``streams serve --json``).  It obeys JSON commands on stdin:

* ``{"cmd": "publish", "data": text}`` -- publish on its branch; prints ``{"event": "published", "seq": n}``.

It closes cleanly (cursors persisted) and exits when stdin reaches EOF -- so it never outlives the
orchestrator that holds the other end -- or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from . import _secret_env
from ._cli._transport import load_zmq
from ._cli.channel import (
    LinePrinter,
    StdinLines,
    cancel_tasks,
    event_doc,
    message_doc,
    open_subscriber,
)
from .api import Subscriber
from .audit import open_ledger
from .errors import AdmissionRefused, ClosedResourceError, LocalProtocolError, StreamsError


async def _pump(sub: Subscriber, out: LinePrinter) -> None:
    async for m in sub:
        out.emit(message_doc(m))


async def _pump_events(sub: Subscriber, out: LinePrinter) -> None:
    async for ev in sub.events():
        doc = event_doc(ev)
        if doc is not None:
            out.emit(doc)


async def _command(sub: Subscriber, branch: bytes, line: bytes, out: LinePrinter) -> None:
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or req.get("cmd") != "publish" or not isinstance(req.get("data"), str):
            raise ValueError("unknown command")
        seq = await sub.publish(branch, req["data"].encode("utf-8"))
    except (ValueError, LocalProtocolError, ClosedResourceError) as exc:
        out.emit({"event": "error", "error": str(exc), "type": type(exc).__name__})
        return
    out.emit({"event": "published", "branch": branch.hex(), "seq": seq})


async def run(args: argparse.Namespace) -> int:
    """Subscribe, then follow stdin commands until EOF or a signal.  Returns the exit status."""
    out = LinePrinter(as_json=True)
    # As the CLI's read_passphrase does: no process started from here (the iota-sdk worker of an iota: ledger)
    # inherits the variable -- it needs no passphrase (THREATS 9).
    _secret_env.withhold(args.passphrase_env)
    passphrase = os.environ.get(args.passphrase_env, "")
    if not passphrase:
        out.emit({"event": "error", "error": f"{args.passphrase_env} is unset", "type": "UsageError"})
        return 2
    zmq = load_zmq()
    # With the channel's ledger, every anchor proof is checked against the ledger itself (THREATS 7).
    ledger = open_ledger(args.ledger) if args.ledger else None
    sub = await open_subscriber(args.store, passphrase, zmq.subscriber(args.connect), keystore_path=args.keystore,
                                author_did=args.author, channel=args.channel, ledger=ledger)
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            branch = await sub.subscribe(timeout=args.timeout)
        except AdmissionRefused as exc:
            out.emit({"event": "refused", "reason": exc.reason.name})
            return 1
        out.emit({"event": "subscribed", "branch": branch.hex(), "did": sub.did})
        tasks += [asyncio.create_task(_pump(sub, out)), asyncio.create_task(_pump_events(sub, out))]
        loop = asyncio.get_running_loop()
        lines = StdinLines()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def commands() -> None:
            while (line := await lines.get()) is not None:
                await _command(sub, branch, line, out)
            stop.set()

        tasks.append(asyncio.create_task(commands()))
        await stop.wait()
    finally:
        await cancel_tasks(tasks)
        await sub.close()
        if ledger is not None:
            ledger.close()
    out.emit({"event": "stopped"})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m streams._demo_proc ...``."""
    p = argparse.ArgumentParser(prog="streams._demo_proc", description="a payment provider of the demo")
    p.add_argument("--store", required=True)
    p.add_argument("--keystore", required=True)
    p.add_argument("--connect", required=True)
    p.add_argument("--author", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--passphrase-env", required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--ledger", default="", help="sqlite:PATH or iota:URL: verify anchor proofs on this ledger")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except StreamsError as exc:
        print(json.dumps({"event": "error", "error": str(exc), "type": type(exc).__name__}), flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
