"""Shared plumbing of the ``streams`` command line: common options, results, passphrases, files, times.

Internal to the CLI.  Sub-command modules use :func:`add_command` so that every command accepts ``--json``
and ``-v``, return a :class:`Result` (or raise a :class:`~streams.errors.StreamsError`), and never print
secrets: passphrases are read from the environment, a file or the terminal, never from the command line,
where they would show in ``ps`` output and shell history (THREATS 9).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .. import _secret_env
from ..credentials import _DuplicateKey, _no_duplicates
from ..errors import LocalProtocolError, RejectReason, VerificationError

__all__ = [
    "CheckFailed",
    "Handler",
    "Result",
    "UsageError",
    "add_command",
    "add_passphrase_options",
    "encodable",
    "parse_time",
    "passphrase_refusal",
    "print_out",
    "printable",
    "read_json_file",
    "read_passphrase",
    "refuse_passphrase_argument",
    "utf8_arg",
    "write_file_atomic",
]

#: Largest JSON document (credential, status list) the CLI reads; a status list of the BSL minimum size is
#: about 200 bytes compressed, so this is generous and still bounds a hostile file (THREATS 8).
MAX_JSON_FILE = 4 * 1024 * 1024


class UsageError(LocalProtocolError, ValueError):
    """A command-line argument or a local file is unusable (exit status 2)."""


class CheckFailed(VerificationError):
    """A check the user asked for failed (exit status 1).  ``failure`` is a short machine-readable reason;
    ``reason`` a peer's reject code, if a peer gave one (``peer_reason``: else the JSON output has none)."""

    def __init__(self, message: str, failure: str, reason: RejectReason | None = None) -> None:
        super().__init__(message, RejectReason.MALFORMED if reason is None else reason)
        self.failure = failure
        self.peer_reason = reason is not None


@dataclass
class Result:
    """What a command produced: ``data`` for ``--json`` (one JSON document) and ``text`` for people.

    ``code`` is the exit status: 0 success, 1 a negative answer to a question the user asked (a refused
    policy decision).  Errors are raised, not returned.
    """

    data: dict[str, Any]
    text: str
    code: int = 0


#: A command: returns a Result, or (for commands that print themselves, like `demo`) an exit status.
Handler = Callable[[argparse.Namespace], "Result | int"]


def _common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("common options")
    g.add_argument("--json", action="store_true",
                   help="machine-readable output on stdout: one JSON document (serve, tail: one per line)")
    g.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-v info, -vv debug); never secrets"
    )
    return parent


_COMMON_PARENT = _common_parent()


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add sub-command ``name`` with the common ``--json``/``-v`` options; ``handler`` runs it."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=_plain(description or help),
        parents=[_COMMON_PARENT],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # No prefix matching: `--pass=...` would otherwise be echoed back in an "ambiguous option" error.
        allow_abbrev=False,
    )
    p.set_defaults(handler=handler)
    return p


def _plain(doc: str) -> str:
    """A module docstring as help text: Sphinx roles and literals as plain words (``:class:`~a.b.C``` -> ``C``,
    double backquotes dropped)."""
    doc = re.sub(r":[a-z]+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "")


def add_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str,
    description: str | None = None,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add a command group (``streams credential ...``) and return its own sub-parsers."""
    p = subparsers.add_parser(name, help=help, description=_plain(description or help), allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    # Also here (`streams identity --json show`), under its own name: the command's own --json default would
    # otherwise overwrite it.
    p.add_argument("--json", dest="group_json", action="store_true", help="machine-readable output (JSON on stdout)")
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


# --- passphrases ---


def passphrase_refusal(option: str | None = "--passphrase") -> str:
    """The usage error for a passphrase given on the command line (it never repeats the value: the secret)."""
    return (f"refusing {option}: a passphrase on the command line shows in ps and shell history; "
            "use --passphrase-env VAR or --passphrase-file FILE")


#: Options of ours whose names look like a passphrase option's: they take no secret (a variable's name, a path).
_PASSPHRASE_SOURCES = frozenset({"--passphrase-env", "--passphrase-file"})


def refuse_passphrase_argument(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Refuse (``parser.error``) a ``--passphrase`` option anywhere in ``argv``, before it is parsed -- and any
    look-alike that is not one of ours (``--password``, ``--pass=``, ``--pwd``, a misspelt ``--passphase``, a
    single-dash ``-passphrase``: another tool's habit or a typo), after a ``--`` too: argparse would otherwise echo
    its value back in an "unrecognized arguments" or "invalid choice" error (on a command without passphrase
    options, before the command name, or for any look-alike)."""
    for arg in argv:  # (after "--" too: argparse echoes what it does not take there as well)
        option = arg.partition("=")[0]
        if option.lower().startswith(("--pas", "--pw", "-pas", "-pw")) and option not in _PASSPHRASE_SOURCES:
            parser.error(passphrase_refusal(option))


class _RefusePassphraseArgument(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        # Do not echo the value back: it is the secret.
        parser.error(passphrase_refusal(option_string))


def add_passphrase_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--passphrase-env VAR`` / ``--passphrase-file FILE`` for the keystore named ``what``.

    A ``--passphrase`` option exists only to refuse, with a pointer to the safe alternatives.
    """
    g = p.add_argument_group(f"passphrase of the {what} (default: prompt, if stdin is a terminal)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--passphrase-env", metavar="VAR", help="read the passphrase from environment variable VAR")
    m.add_argument(
        "--passphrase-file", metavar="FILE", help="read the passphrase from FILE (one trailing newline is dropped)"
    )
    g.add_argument("--passphrase", nargs="?", action=_RefusePassphraseArgument, help=argparse.SUPPRESS)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the Ctrl-C path (cleanup runs); the CLI then exits 143."""


class _Held:
    """A passphrase read ahead of time (:func:`read_passphrase_first`), kept out of ``repr(args)``."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<passphrase>"


def read_passphrase_first(args: argparse.Namespace) -> None:
    """Read the passphrase now, before the command's event loop starts, for :func:`read_passphrase` to return
    later: a terminal prompt inside ``asyncio.run`` blocks the loop, and a SIGTERM (or Ctrl-C) there is only
    acted on once the prompt returns."""
    args.held_passphrase = _Held(read_passphrase(args))


#: What a POSIX shell can name (and export) as an environment variable.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A variable's name as they are usually written, which an error may repeat (a passphrase is seldom all capitals).
_CONVENTIONAL_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def read_passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    """The passphrase chosen by :func:`add_passphrase_options`; prompts (twice if ``confirm``) on a terminal.

    Raises :class:`UsageError` if the variable is unset or empty, the file cannot be read, no source was
    given and stdin is not a terminal, the terminal's input ends (Ctrl-D) at the prompt, or what is typed there
    is not text in the terminal's encoding.  The message never
    contains the passphrase (nor a ``--passphrase-env`` value that cannot be a variable's name: most likely the
    passphrase itself).
    """
    held = getattr(args, "held_passphrase", None)
    if isinstance(held, _Held):
        return held.value
    if args.passphrase_env:
        # No process the library starts (the iota-sdk worker) inherits the variable: it needs no passphrase.
        _secret_env.withhold(args.passphrase_env)
        value = os.environ.get(args.passphrase_env)
        if not value:
            if not _VARIABLE_NAME.fullmatch(args.passphrase_env):
                # Not a name a shell can export: most likely the passphrase itself (`--passphrase-env "$PW"`),
                # which must not be printed back (as --passphrase is not, THREATS 9).
                raise UsageError("--passphrase-env takes the NAME of an environment variable holding the passphrase "
                                 "(what was given is not a variable's name, and is not repeated here)")
            if not _CONVENTIONAL_NAME.fullmatch(args.passphrase_env):
                # A name, but not as variables are named (lowercase in it): it may be the passphrase itself,
                # letters and digits only -- not repeated either.
                raise UsageError("the environment variable --passphrase-env names is unset or empty (a name with "
                                 "lowercase letters is not repeated here: it may be the passphrase itself)")
            raise UsageError(f"environment variable {args.passphrase_env} (--passphrase-env) is unset or empty")
        return value
    if args.passphrase_file:
        try:
            with open(args.passphrase_file, "rb") as f:
                raw = f.read(64 * 1024 + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if not os.path.lexists(args.passphrase_file):
                # Nothing by that name: it may be the passphrase itself, given where its file's path goes.
                raise UsageError(f"cannot read the passphrase file --passphrase-file names: {reason} (its name is "
                                 "not repeated here: it may be the passphrase itself)") from None
            raise UsageError(f"cannot read passphrase file {args.passphrase_file}: {reason}") from None
        if len(raw) > 64 * 1024:
            raise UsageError(f"passphrase file {args.passphrase_file} is too large")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("passphrase file is not UTF-8") from None
        # Editors and `echo` add one newline; drop exactly one so the passphrase is what the user typed.
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise UsageError("passphrase file is empty")
        return text
    if not sys.stdin.isatty():
        raise UsageError("no passphrase: use --passphrase-env VAR or --passphrase-file FILE (stdin is not a terminal)")
    try:
        value = getpass.getpass("Passphrase: ")
        if confirm and getpass.getpass("Passphrase again: ") != value:
            raise UsageError("the passphrases differ")
    except EOFError:  # Ctrl-D at the prompt
        raise UsageError("no passphrase: the terminal input ended") from None
    except UnicodeDecodeError:
        # Its text names a byte of the passphrase and where, and it holds the whole line: raised below, outside
        # this block, so that it is not even the new error's context.
        value = None
    if value is None:
        raise UsageError("the passphrase typed is not text in the terminal's encoding")
    if not value:
        raise UsageError("empty passphrase")
    return value


# --- text, files and times ---


def printable(text: str) -> str:
    """``text`` with what is not printable (newlines, terminal escapes, bidi overrides...) escaped, as ``\\n``,
    ``\\x1b``, ``\\u202e``, for a line of text output: a line is one event or field, whatever a peer put in a
    payload or a file -- a provider's message must not print a second line in another provider's name
    (THREATS 2), an unverified credential's field must not hide the line saying so."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def encodable(text: str) -> str:
    """``text`` with what stdout's encoding (the locale's) cannot carry escaped (``\\u20ac``)."""
    encoding = sys.stdout.encoding or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def print_out(text: str) -> None:
    """Print ``text`` (a command's result) on stdout.  A locale whose encoding lacks a character of it: escaped
    (:func:`encodable`; JSON is ASCII already).  A reader that went away (``streams ... | true``) is not an error
    of the command, whose work is done: a note on stderr, no traceback, and the command's own exit status."""
    try:
        try:
            print(text, flush=True)
        except UnicodeEncodeError:
            print(encodable(text), flush=True)
    except BrokenPipeError:
        # Python's advice (signal module docs, "Note on SIGPIPE"): stdout to devnull, so that its flush at exit
        # does not fail again (nor the next print_out).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("streams: note: stdout was closed by its reader: the result was not printed", file=sys.stderr)


def utf8_arg(value: str, option: str) -> bytes:
    """A command-line text argument as UTF-8.  Raises :class:`UsageError` for one that has no UTF-8 form: bytes
    that are not UTF-8 on the command line reach Python as lone surrogates."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{option}: not UTF-8 text (the command line held other bytes)") from None


def read_json_file(path: str, what: str) -> Any:
    """Parse the JSON file ``path`` (at most 4 MiB); raise :class:`UsageError` naming ``what`` otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_JSON_FILE:
        raise UsageError(f"{what} {path} is too large")
    try:
        # NaN and Infinity are not JSON (RFC 8259): Python's parser takes them, and --json would print them back;
        # so is a number too large for a float (1e400), which it reads as infinity.  A key twice is ambiguous:
        # Python keeps the last value, another reader of the same file the first (what `credential show` prints
        # must be what was verified).
        return json.loads(data.decode("utf-8"), parse_constant=_not_json, parse_float=_finite,
                          object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        raise UsageError(f"{what} {path} holds a key twice in one object (ambiguous JSON: readers disagree on "
                         "which value counts)") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{what} {path} is not valid UTF-8 JSON") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of a float's range")
    return value


def dump_json(doc: Any) -> bytes:
    """Pretty JSON as written to credential and status-list files (insertion order kept, one newline)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_file_atomic(path: str, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), so a crash leaves the old or the
    new file, never half of one -- a truncated status list would make every credential on it unverifiable.

    Raises :class:`UsageError` if ``path`` exists and not ``overwrite``, or on any OS error.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise UsageError(f"{path} exists (use --force to replace it)")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent.absolute())
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # credentials and status lists are public documents
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def parse_time(value: str, what: str) -> datetime:
    """An aware datetime (in UTC) from ISO 8601 text: ``2026-01-31`` (midnight UTC) or a date-time with a zone.

    Raises :class:`UsageError` for anything else, including a date-time without a zone (ambiguous) and one
    whose UTC time is outside the years 1 to 9999 (``9999-12-31T23:59:59-14:00``).
    """
    try:
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{what}: not an ISO 8601 date or date-time: {value!r}") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise UsageError(f"{what}: give a time zone, e.g. {value}Z")
    try:
        return dt.astimezone(UTC)  # (credentials write UTC times: one that has none is refused here)
    except OverflowError:
        raise UsageError(f"{what}: {value!r} is out of range in UTC") from None


def now() -> datetime:
    """The current time (UTC), whole seconds: credentials carry second precision."""
    return datetime.now(UTC).replace(microsecond=0)


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch, exactly (not through a float, which is a millisecond off for some instants)."""
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
