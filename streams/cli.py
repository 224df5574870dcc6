"""The ``streams`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_inprocess_demo

    return run_inprocess_demo(events_per_provider=args.events, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streams", description="Secure publish/subscribe channels between security tools.")
    p.add_argument("--version", action="version", version=f"streams {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the fraud-monitor demo and check its security claims")
    d.add_argument("--events", type=int, default=5, help="payment events per provider (default 5)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=_cmd_demo)
    from .audit import register_cli as _register_audit  # anchoring helper's hook

    _register_audit(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
