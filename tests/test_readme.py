"""README.md is what a new user reads first, and what it shows must be true of the code: its command table names
each command's own flags, all of them; and the package exports every error and event its modules declare public."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import streams
from streams import errors, events
from streams.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: What the README says once for every command, above its table: not repeated in each row.
COMMON_FLAGS = {"-h", "--help", "--json", "-v", "--verbose", "--passphrase-env", "--passphrase-file"}


def test_every_error_and_event_is_exported_from_streams() -> None:
    """``streams.__all__`` is the public API (its docstring): an error a caller has to catch, or raise from its own
    policy, and an event a party yields, must be importable from there."""
    exported = set(streams.__all__)
    assert sorted(set(errors.__all__) - exported) == []
    assert sorted(set(events.__all__) - exported) == []
    for name in streams.__all__:
        assert hasattr(streams, name), name


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> \
        dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command of ``parser``: its words -> its parser."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_subcommands(sub, (*prefix, name)))
            return out
    return {prefix: parser}


def _table_rows() -> dict[tuple[str, ...], str]:
    """The README's command table: command words -> the whole row (usage and description)."""
    rows: dict[tuple[str, ...], str] = {}
    for line in README.splitlines():
        m = re.match(r"\| `streams ((?:[a-z][a-z-]* ?)+)", line)
        if m:
            rows[tuple(m.group(1).split())] = line
    return rows


def test_readme_command_table_matches_the_parsers() -> None:
    """Every command has a row; every flag a row names is one its command takes, and every flag a command takes
    (but the common ones said above the table) is in its row."""
    commands = _subcommands(build_parser())
    rows = _table_rows()
    assert sorted(rows) == sorted(commands)
    problems = []
    for words, row in rows.items():
        takes = {s for a in commands[words]._actions if a.help != argparse.SUPPRESS  # (hidden: internal, refusals)
                 for s in a.option_strings} - COMMON_FLAGS
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row)) - COMMON_FLAGS
        if named - takes:
            problems.append(f"streams {' '.join(words)}: README names {sorted(named - takes)}, which it does not take")
        if takes - named:
            problems.append(f"streams {' '.join(words)}: takes {sorted(takes - named)}, not in the README")
    assert problems == [], "\n".join(problems)
