"""The ``streams`` command line: builds the parser and dispatches to the command modules.

Each command group lives in its own module under ``streams/_cli/`` with ``register(subparsers)``; modules
elsewhere register through the hook list in :func:`build_parser`.

Conventions, for every command:

* ``--json``: one JSON document on stdout (also on failure: ``{"ok": false, "error": ..., "type": ...}``);
  ``-v``/``-vv``: logging (stdlib ``logging``) to stderr.  Both work before or after the command name.
* Exit status: 0 success; 1 a verification failed or a policy refused (the answer was "no");
  2 a usage or local error (bad argument, unreadable file, wrong passphrase); 130 / 143 interrupted by SIGINT /
  SIGTERM before it finished (``serve`` and ``tail`` stop cleanly on either: 0; not a ``tail --publish-stdin``
  without ``--follow`` whose stdin was not read to its end yet).
* An expected error (:class:`~streams.errors.StreamsError`) prints one line on stderr, never a traceback.
* No secret is ever printed or logged: passphrases come from the environment, a file or the terminal, never
  from the command line (THREATS 9).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from ._cli import audit as _audit_cli
from ._cli import channel as _channel_cli
from ._cli import credential as _credential_cli
from ._cli import identity as _identity_cli
from ._cli import policy as _policy_cli
from ._cli._common import CheckFailed, Result, Terminated, add_command, print_out, refuse_passphrase_argument
from .errors import RemoteProtocolError, StreamsError, VerificationError

__all__ = ["build_parser", "main"]

_log = logging.getLogger("streams.cli")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(events_per_provider=args.events, as_json=_want_json(args), in_process=args.in_process)


def _events(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError("must be 1 to 10000")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors also print the JSON error document when ``--json`` is on the command line (the
    sub-parsers are of this class too)."""

    json_errors = False  #: set by :func:`main` while it parses its arguments

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
            print_out(json.dumps({"ok": False, "error": f"{self.prog}: {message}", "type": "UsageError"}))
            sys.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The full ``streams`` argument parser."""
    p: argparse.ArgumentParser = _Parser(
        prog="streams", description="Secure publish/subscribe channels between security tools.", allow_abbrev=False
    )
    p.add_argument("--version", action="version", version=f"streams {__version__}")
    # Distinct dests: a sub-parser's own defaults would otherwise overwrite these (argparse copies the whole
    # sub-namespace back), losing `streams --json identity show`.
    p.add_argument("--json", dest="global_json", action="store_true", help="machine-readable output (JSON on stdout)")
    p.add_argument("-v", "--verbose", dest="global_verbose", action="count", default=0,
                   help="more logging on stderr (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = add_command(sub, "demo", _cmd_demo, help="run the fraud-monitor demo and check its security claims",
                    description=(
                        "A fraud monitor (author) and three payment providers, each its own OS process, on\n"
                        "loopback ZeroMQ, with an attacker relaying and recording every frame.  Checks, each\n"
                        "PASS/FAIL: (a) every provider's events reach the monitor, signed by its DID; (b) a\n"
                        "provider handed another's recorded packets rejects them all and reads none; (c) a\n"
                        "payment event replayed from the attacker's own socket is rejected; (d) a DID the\n"
                        "policy does not name is refused; (e) the branch heads are anchored on an embedded\n"
                        "ledger and every provider verifies its proof (not with --in-process).  Exit status 1\n"
                        "if any check fails."))
    d.add_argument("--events", type=_events, default=5, help="payment events per provider, 1 to 10000 (default 5)")
    d.add_argument("--in-process", action="store_true",
                   help="run every party in this process over the in-memory transport (no ZeroMQ; the default "
                        "when pyzmq is not installed)")

    # --- command modules register themselves here: each is `register(subparsers)` ---
    _identity_cli.register(sub)
    _credential_cli.register(sub)
    _policy_cli.register(sub)
    _channel_cli.register(sub)
    _audit_cli.register(sub)
    return p


def _want_json(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, False) for name in ("json", "global_json", "group_json"))


def _error_doc(exc: StreamsError) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": False, "error": str(exc), "type": type(exc).__name__}
    failure = getattr(exc, "failure", None)
    if failure is not None:  # CredentialError (an enum) or CheckFailed (a str)
        doc["failure"] = getattr(failure, "value", failure)
    if isinstance(exc, RemoteProtocolError) and getattr(exc, "peer_reason", True):
        doc["reason"] = exc.reason.name  # (a failed local check carries no peer's code: no "MALFORMED" for it)
    return doc


def _exit_code(exc: StreamsError) -> int:
    # A failed verification is an answer ("no"), not a misuse: scripts tell the two apart by status.
    return 1 if isinstance(exc, VerificationError | CheckFailed) else 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "--json" in argv
    try:
        parser = build_parser()
        refuse_passphrase_argument(parser, argv)  # (wherever it is: argparse would echo it in its own errors)
        args = parser.parse_args(argv)
    finally:  # (only while main parses: a program that builds the parser itself gets argparse's errors)
        _Parser.json_errors = False
    verbose = int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "global_verbose", 0) or 0)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    as_json = _want_json(args)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:  # pragma: no cover -- every sub-command sets one
        build_parser().print_help(sys.stderr)
        return 2
    terminated = False

    def on_sigterm(signum: int, frame: object) -> None:
        # SIGTERM ends a command as Ctrl-C does -- asyncio cancels it at an await, its cleanup runs -- rather
        # than killing it where it stands (a first subscribe's store left behind, no JSON document).
        nonlocal terminated
        if terminated:
            return  # once: a second SIGTERM must not cut the cleanup short (SIGKILL is for that)
        terminated = True
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            # SIGINT ignored -- a background job of a non-interactive shell (`streams ... &` in a script) -- so
            # raising it would do nothing (and asyncio.run installed no handler of its own): end the command
            # here, as Ctrl-C did before asyncio.run handled it (the loop's tasks are cancelled, their cleanup
            # runs).
            raise Terminated
        signal.raise_signal(signal.SIGINT)

    restore: Any = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcome = handler(args)
    except StreamsError as exc:
        # Expected failures: one line, no traceback.  Messages of StreamsError never hold key material
        # (errors.py); the cause chain is logged at debug level for whoever asked with -vv.
        _log.debug("command failed", exc_info=True)
        print(f"streams: error: {exc}", file=sys.stderr)
        if as_json:
            print_out(json.dumps(_error_doc(exc)))
        return _exit_code(exc)
    except KeyboardInterrupt as exc:
        terminated = terminated or isinstance(exc, Terminated)  # (the demo raises it from its own handler)
        what = "terminated" if terminated else "interrupted"
        print(f"streams: {what}", file=sys.stderr)
        if as_json:
            extra = getattr(args, "interrupted_doc", None)  # what the command had done (publish: its seq)
            print_out(json.dumps({"ok": False, "error": what, "type": "Interrupted", **(extra or {})}))
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    if isinstance(outcome, Result):
        print_out(json.dumps(outcome.data) if as_json else outcome.text)
        return outcome.code
    return int(outcome)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
