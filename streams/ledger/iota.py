"""IOTA Stardust as a ledger, through iota-sdk, with every SDK call in a dedicated worker process.

Each anchor is one feeless *tagged data* block (TIP-23 payload in a TIP-24 block); its anchor id is the block
id, ``0x`` + hex of ``BLAKE2b-256(block bytes)``.  A write is *confirmed* only once the node reports the block
``referencedByMilestoneIndex``; the confirmation time is that milestone's timestamp (seconds on Stardust,
reported here in milliseconds).

Why a worker process: every iota-sdk call holds the GIL until the Rust side returns (measured), so calling it
in the process that runs the event loop would stall every other task for a whole HTTP round trip or an
outage's timeout.  :class:`IotaLedger` lives in the caller's process and only moves small messages over a
pipe; ``iota_sdk`` is imported in the worker alone, so the ``iota`` extra is optional.  The worker is started
with the caller's environment less the variables that hold secrets (:mod:`streams._secret_env`: the CLI's
``--passphrase-env`` variable): the SDK never needs them (THREATS 9).  Its command line holds nothing but a file
descriptor number: the node URL, which may carry credentials, goes over the pipe.

Trust: :meth:`IotaLedger.read` fetches the raw block bytes and checks that they hash to the anchor id before
parsing them, so a lying node cannot substitute a payload; more bytes than a block can have (:data:`MAX_BLOCK`)
are refused in the worker, so a hostile node cannot fill the caller's memory either.  Confirmation (``status``)
is taken from the node as reported; a client that distrusts its node should ask several.

Failures: a node outage, a timeout or the death of the worker raise :class:`~streams.errors.LedgerError`
(chained from the cause).  Only the node's HTTP 404 to a lookup of the block (its bytes or metadata) raises
:class:`~streams.ledger.UnknownAnchor` (not one to the lookup of the milestone its metadata names): the status
is read from the fixed shape of the SDK's error, never from words or digits anywhere in its text (the request's
URL holds the block id, the host and the port).  The SDK's error texts hold the request's URL, credentials and
all: the worker takes the userinfo and query values out of every URL in them (:func:`_redact`) before any of it
reaches the caller's exceptions, events or logs.  After a timeout or a crash the worker is discarded and a fresh
one is started by the next call (or by :meth:`IotaLedger.restart`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import re
import struct
import subprocess
import sys
import threading
import time
from datetime import timedelta
from multiprocessing.connection import Connection, Pipe
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .._secret_env import child_environment
from ..errors import (
    ClosedResourceError,
    DecodeError,
    LedgerError,
    LocalProtocolError,
    StreamsTimeoutError,
    VerificationError,
)
from .base import AnchorStatus, UnknownAnchor

__all__ = ["MAX_BLOCK", "MAX_DATA", "MAX_TAG", "IotaLedger", "IotaSdkMissing", "parse_tagged_block"]

#: TIP-23: a tag is at most 64 bytes.
MAX_TAG: Final = 64
#: TIP-24: a serialized block is at most 32768 bytes.
MAX_BLOCK: Final = 32768
#: The most data a tagged data block holds: room left for the header and 8 parents.
MAX_DATA: Final = MAX_BLOCK - 1 - 1 - 8 * 32 - 4 - 4 - 1 - MAX_TAG - 4 - 8
_BLOCK_ID: Final = re.compile(r"0x[0-9a-f]{64}")
_TAGGED_DATA: Final = 5  # TIP-23 payload type


class IotaSdkMissing(LedgerError, ImportError):
    """``iota-sdk`` is not installed: install the ``iota`` extra (``pip install 'streams[iota]'``)."""


def parse_tagged_block(raw: bytes) -> tuple[bytes, bytes]:
    """``(tag, data)`` of a serialized Stardust block (TIP-24) carrying a tagged data payload (TIP-23).

    Raises :class:`~streams.errors.DecodeError` for anything else or for trailing bytes."""
    try:
        pos = 1  # protocol version
        pos += 1 + 32 * raw[1]  # parents count and parents
        (plen,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        (ptype,) = struct.unpack_from("<I", raw, pos)
        tlen = raw[pos + 4]
        tag = raw[pos + 5 : pos + 5 + tlen]
        (dlen,) = struct.unpack_from("<I", raw, pos + 5 + tlen)
        data = raw[pos + 9 + tlen : pos + 9 + tlen + dlen]
    except (IndexError, struct.error) as exc:
        raise DecodeError("not a Stardust block") from exc
    if ptype != _TAGGED_DATA or len(tag) != tlen or len(data) != dlen or plen != 9 + tlen + dlen:
        raise DecodeError("not a tagged data block")
    if pos + plen + 8 != len(raw):  # 8: the nonce ends the block
        raise DecodeError("block length does not match its payload")
    return bytes(tag), bytes(data)


def _sdk_installed() -> bool:
    """Whether ``iota_sdk`` can be found, without importing it here (its import stays in the worker)."""
    try:
        return importlib.util.find_spec("iota_sdk") is not None
    except (ImportError, ValueError):
        return False


# --- the worker (runs in its own process; the only place that imports iota_sdk) -----------------------------

#: What the worker's interpreter runs (``python -c``, the pipe's descriptor as its one argument): it takes the
#: caller's ``sys.path`` (as multiprocessing's spawn did), this module's name and the worker's arguments from the
#: pipe, then serves.  SIGINT is ignored: the caller ends the worker (pipe closed, or killed), and a Ctrl-C meant
#: for the caller must not print a traceback from it.
_BOOT: Final = (
    "import importlib, signal, sys\n"
    "from multiprocessing.connection import Connection\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:], module, args = conn.recv()\n"
    "importlib.import_module(module)._worker_main(conn, *args)\n"
)

#: Workers running, ended at the caller's exit if still there (multiprocessing did so for its daemon processes):
#: one stuck inside an SDK call does not notice the pipe closing.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _end(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """Wait up to ``wait_s`` for ``proc`` to exit, then kill it (stuck inside an SDK call: it cannot be
    interrupted any other way) and reap it."""
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
    with _LIVE_LOCK:
        _LIVE.discard(proc)


@atexit.register
def _end_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _end(proc, 0.0)


def _answer(conn: Connection, msg: object) -> bool:
    """Send ``msg`` to the caller; False if the caller is gone (its end closed: it gave up on this call after its
    timeout, closed the ledger, or died).  The worker then just ends, as its caller expects -- not with a
    BrokenPipeError traceback on the stderr it shares with the caller."""
    try:
        conn.send(msg)
    except OSError:
        return False
    return True


#: iota-sdk's error texts for a request the node answered with an HTTP error (iota-sdk 1.1, Rust
#: ``client::Error::Node`` wrapping ``node_api::Error``): a 404 is ``NotFound(url)``, any other status
#: ``ResponseError {code, text, url}``.  Anything else (connection refused, a timeout, a body that does not parse)
#: carries no status.
_SDK_NOT_FOUND: Final = re.compile(r"node error: The requested data <url> was not found\.")
_SDK_STATUS: Final = re.compile(r"node error: Response error with status code ([0-9]{3}): ")
#: A URL in a text: its scheme, then the rest up to the next white space (the SDK prints URLs serialized: no white
#: space in them).
_URL_PARTS: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>\S*)")


def _sdk_error(exc: Exception) -> str:
    """The message of an iota-sdk exception: a ``ClientError`` carries ``{"type": ..., "error": message}``."""
    payload = exc.args[0] if len(exc.args) == 1 else None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, str) else str(exc)


def _http_status(error: str) -> int | None:
    """The HTTP status the node answered, as an iota-sdk error message reports it; ``None`` if it reports none.
    Matched on the message's fixed shape with every URL taken out first, so that nothing in a URL (block id, host,
    port, path) and nothing the node wrote in its answer's body can pass for a status."""
    shape = _URL_PARTS.sub("<url>", error)
    if _SDK_NOT_FOUND.fullmatch(shape):
        return 404
    m = _SDK_STATUS.match(shape)
    return int(m.group(1)) if m else None


#: Secrets of the node URL shorter than this are not searched for outside URLs: they would match ordinary words
#: and digits of the text (a password "503"), and the URL rule finds them where the SDK prints them.
_MIN_LITERAL: Final = 4


def _redact_url(m: re.Match[str]) -> str:
    rest = m["rest"]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))  # the authority's end
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:  # userinfo: up to the last "@" of the authority
        authority = "***@" + authority.rsplit("@", 1)[1]
    before, mark, query = tail.partition("?")
    if mark:
        query, hash_, fragment = query.partition("#")
        query = "&".join(f"{p.partition('=')[0]}=***" if "=" in p else "***" for p in query.split("&"))
        tail = before + "?" + query + hash_ + fragment
    return m["scheme"] + authority + tail


def _redact(text: str, url: str) -> str:
    """``text`` (an SDK error) without the credentials a node URL may carry: the userinfo of every URL in it
    (``http://alice:secret@host/...`` -> ``http://***@host/...``) and the value of every query parameter
    (``?token=***``); then, should the text hold them outside a URL, the password and query values of ``url``
    (the node's), as given, percent-decoded and percent-encoded."""
    text = _URL_PARTS.sub(_redact_url, text)
    try:
        parts = urlsplit(url)
        found = [parts.password or "", *(v for _, v in parse_qsl(parts.query))]
    except ValueError:
        found = []
    secrets = {form for s in found for form in (s, unquote(s), quote(unquote(s), safe=""))
               if len(form) >= _MIN_LITERAL}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _Outage(Exception):
    """A lookup failed that says nothing of the block's existence, whatever its status (a LedgerError)."""


class _NotABlock(Exception):
    """The node answered with something no Stardust block can be: the node lies (a VerificationError)."""


def _oversize(what: str) -> str:
    """Why ``what`` (a size, or a type) answered for a block is no block, worker and caller alike."""
    return f"the node answered {what} for a block; a Stardust block is at most {MAX_BLOCK}"


def _worker_main(conn: Connection, url: str, api_timeout_s: float) -> None:
    """Serve ``(rid, op, args)`` requests with one iota-sdk client until the pipe closes."""
    try:
        from iota_sdk.client.client import Client  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        _answer(conn, ("missing", _redact(repr(exc), url)))
        return
    try:
        # ignore_node_health: we talk to exactly one node, so the SDK's health-based node selection has nothing to
        # choose from -- but a client created while that node was down marks it unhealthy and answers "no healthy
        # node available" until its next sync (60 s), long after the node is back.  Health is no safety property
        # here: every answer we act on is checked (block ids are re-derived from the bytes; nothing counts as
        # anchored until a milestone references it).
        client = Client(nodes=[url], api_timeout=timedelta(seconds=api_timeout_s), ignore_node_health=True)
    except Exception as exc:  # the SDK raises bare Exceptions from Rust; report and stop
        _answer(conn, ("fatal", _redact(f"{type(exc).__name__}: {exc}", url)))
        return
    if not _answer(conn, ("ready", None)):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        rid, op, args = msg
        reply: tuple[Any, ...]
        try:
            result = _serve(client, op, args)
        except _NotABlock as exc:
            reply = (rid, "invalid", str(exc))
        except _Outage as exc:
            reply = (rid, "ledger", _redact(str(exc), url))
        except Exception as exc:  # every SDK failure becomes a typed reply, never a dead worker
            error = _sdk_error(exc)
            # "The node does not know the block" is only a 404 to a lookup of the block (status: its metadata;
            # read: its bytes).  Anything else -- another status, no answer at all, or a 404 to
            # posting a block (the node's API is not where we think) -- is the ledger failing, no verdict on it.
            kind = "unknown" if op in ("status", "read") and _http_status(error) == 404 else "ledger"
            reply = (rid, kind, _redact(f"{type(exc).__name__}: {error}", url))
        else:
            reply = (rid, "ok", result)
        if not _answer(conn, reply):
            return


def _serve(client: Any, op: str, args: tuple[Any, ...]) -> Any:
    if op == "append":
        tag, data = args
        block_id, _block = client.build_and_post_block(
            secret_manager=None, tag="0x" + tag.hex(), data="0x" + data.hex()
        )
        return str(block_id)
    if op == "status":
        (block_id,) = args
        meta = client.get_block_metadata(block_id)
        index = meta.referencedByMilestoneIndex
        if index is None:
            return (False, None, None)
        try:
            milestone = client.get_milestone_by_index(index)
        except Exception as exc:
            # The node says a milestone references the block, then has no such milestone (pruned, or lagging
            # behind its own metadata): no verdict on the block -- never "unknown", on which an author writes its
            # epoch again and a member rejects an anchored head.
            raise _Outage(f"milestone {index} of the block: {type(exc).__name__}: {_sdk_error(exc)}") from exc
        return (True, int(milestone.timestamp) * 1000, int(index))  # Stardust timestamps are seconds
    if op == "read":
        (block_id,) = args
        # iota-sdk has no way to bound what it downloads: it reads the node's whole answer and hands it over as a
        # JSON list of numbers.  That memory is this worker's, not the caller's (whose timeout kills a worker that
        # takes too long): no more than a block's maximum goes on to the caller.
        raw = client.get_block_raw(block_id)
        if len(raw) > MAX_BLOCK:
            raise _NotABlock(_oversize(f"{len(raw)} bytes"))
        return bytes(raw)
    if op == "ping":
        return "pong"
    raise ValueError(f"unknown op {op!r}")


# --- the caller's side --------------------------------------------------------------------------------------


class IotaLedger:
    """A :class:`~streams.ledger.base.Ledger` on an IOTA Stardust node, via iota-sdk in a worker process.

    ``node_url`` is the node's REST endpoint (``http://host:14265``).  ``timeout`` bounds each call in
    seconds (the worker is replaced when it expires); ``api_timeout`` is the SDK's own HTTP timeout and
    should be shorter; ``start_timeout`` bounds the worker's start-up (spawn plus SDK import).

    Raises :class:`IotaSdkMissing` at construction if ``iota-sdk`` is not installed.
    """

    def __init__(self, node_url: str, *, timeout: float = 15.0, api_timeout: float = 5.0,
                 start_timeout: float = 60.0) -> None:
        if not _sdk_installed():
            raise IotaSdkMissing(
                "IotaLedger needs iota-sdk: install the 'iota' extra (pip install 'streams[iota]')"
            )
        self._url = node_url
        self._timeout = timeout
        self._api_timeout = api_timeout
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._rid = 0
        self._closed = False

    # worker lifecycle

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker, if one is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> None:
        # A new interpreter (never a fork of a process that may hold threads), with an environment of its own:
        # multiprocessing's spawn can only pass on the caller's whole environment, secrets included.
        parent, child = Pipe(duplex=True)
        fd = child.fileno()
        try:
            # The caller's interpreter flags (-I, -E, -s, -O, -W..., -X...), as multiprocessing's spawn passed
            # them (with this same helper): a caller run with -E or -I ignores the environment's PYTHON*
            # variables, and so must its worker.  -P: nothing imported from the current directory before the
            # caller's sys.path is in place.
            flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
            proc = subprocess.Popen([sys.executable, *flags, "-P", "-c", _BOOT, str(fd)], pass_fds=(fd,),
                                    env=child_environment(), stdin=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            raise LedgerError("the iota-sdk worker could not be started") from exc
        finally:
            child.close()
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self._proc, self._conn = proc, parent
        try:
            parent.send((sys.path, __name__, (self._url, self._api_timeout)))
            if not parent.poll(self._start_timeout):
                raise LedgerError("the iota-sdk worker did not start in time") from StreamsTimeoutError(
                    f"no answer in {self._start_timeout} s"
                )
            kind, detail = parent.recv()
        except (EOFError, OSError) as exc:  # (OSError: BrokenPipeError from the send, if it died at once)
            self._stop()
            raise LedgerError("the iota-sdk worker died while starting") from exc
        except LedgerError:
            self._stop()
            raise
        if kind == "missing":
            self._stop()
            raise IotaSdkMissing(f"iota-sdk cannot be imported in the worker: {detail}")
        if kind != "ready":
            self._stop()
            raise LedgerError(f"the iota-sdk client could not be created: {detail}")

    def _stop(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):  # the worker may already be gone
                conn.send(None)
            conn.close()
        if proc is not None:
            _end(proc, 1.0)

    def restart(self) -> None:
        """Replace the worker process now (otherwise a dead or timed-out worker is replaced on next use)."""
        with self._lock:
            if self._closed:
                raise ClosedResourceError("the ledger is closed")
            self._stop()
            self._start()

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise ClosedResourceError("the ledger is closed")
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            conn = self._conn
            assert conn is not None
            self._rid += 1
            rid = self._rid
            deadline = time.monotonic() + self._timeout
            try:
                conn.send((rid, op, args))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not conn.poll(remaining):
                        self._stop()  # its answer, if it ever comes, must not be read as the next one's
                        raise LedgerError(f"iota {op} timed out") from StreamsTimeoutError(
                            f"no answer in {self._timeout} s"
                        )
                    reply = conn.recv()
                    if reply[0] == rid:
                        break
            except (EOFError, OSError, BrokenPipeError) as exc:
                self._stop()
                raise LedgerError(f"the iota-sdk worker died during {op}") from exc
        _, kind, value = reply
        if kind == "ok":
            return value
        if kind == "unknown":
            raise UnknownAnchor(f"the node does not know this block: {value}")
        if kind == "invalid":
            raise VerificationError(value)
        raise LedgerError(f"iota {op} failed") from _NodeError(value)

    # the Ledger interface

    def append(self, tag: bytes, data: bytes) -> str:
        """Post one tagged data block; return its block id (``0x`` + 64 hex digits).  Not yet confirmed:
        poll :meth:`status`.  Raises :class:`~streams.errors.LocalProtocolError` if ``tag`` exceeds
        :data:`MAX_TAG` or ``data`` :data:`MAX_DATA` bytes, and :class:`~streams.errors.LedgerError` on
        failure."""
        if not isinstance(tag, bytes) or not isinstance(data, bytes):
            raise LocalProtocolError("tag and data must be bytes")
        if len(tag) > MAX_TAG or len(data) > MAX_DATA:
            raise LocalProtocolError(f"tag is at most {MAX_TAG} bytes and data at most {MAX_DATA}")
        block_id = self._call("append", tag, data)
        if not isinstance(block_id, str) or not _BLOCK_ID.fullmatch(block_id):
            raise LedgerError("the node returned a malformed block id")
        return block_id

    def _check_id(self, anchor_id: str) -> str:
        if not isinstance(anchor_id, str) or not _BLOCK_ID.fullmatch(anchor_id.lower()):
            raise UnknownAnchor(f"not an IOTA block id: {anchor_id!r}")
        return anchor_id.lower()

    def status(self, anchor_id: str) -> AnchorStatus:
        """Confirmed once a milestone references the block; ``ref`` is that milestone's index and
        ``timestamp_ms`` its timestamp."""
        confirmed, ts, ref = self._call("status", self._check_id(anchor_id))
        return AnchorStatus(bool(confirmed), ts, ref)

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        """``(tag, data)`` of the block, after checking that its bytes hash to ``anchor_id``.  Raises
        :class:`~streams.errors.VerificationError` if they do not or are more than :data:`MAX_BLOCK` (the node
        lied), and :class:`~streams.errors.DecodeError` if the block is not tagged data."""
        block_id = self._check_id(anchor_id)
        raw = self._call("read", block_id)
        if not isinstance(raw, bytes) or len(raw) > MAX_BLOCK:  # (the worker refuses them already)
            raise VerificationError(_oversize(f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__))
        if "0x" + hashlib.blake2b(raw, digest_size=32).hexdigest() != block_id:
            raise VerificationError("the node returned a block that does not hash to its id")
        return parse_tagged_block(raw)

    def close(self) -> None:
        """Stop the worker.  Idempotent."""
        with self._lock:
            self._closed = True
            self._stop()

    def __enter__(self) -> IotaLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NodeError(Exception):
    """The text of an iota-sdk error, carried across the process boundary as the cause of a LedgerError."""
