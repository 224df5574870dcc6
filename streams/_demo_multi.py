"""The multi-process demo (``streams demo``): a fraud monitor and three payment providers, each its own OS process,
on loopback ZeroMQ, with an attacker on the wire -- and checks of the security claims.

Processes (all started with ``sys.executable``, state in a temporary directory):

* the **monitor**: ``streams serve --json --publish-stdin`` (the real CLI), admitting the providers by a TOML
  policy file;
* the **attacker**: :mod:`brokerless._demo_relay`, a transparent ZeroMQ relay between the providers and the
  monitor that records every frame (THREATS: the network is untrusted, every byte visible);
* three **providers** (:mod:`streams._demo_proc`), connected through the relay;
* an **unlisted subscriber**: ``streams subscribe`` with a DID the policy does not name.

Checks (each PASS/FAIL with a short detail; :func:`run_process_demo` returns 1 if any fails):

a. every provider's payment events reach the monitor, each signed by the provider's DID (THREATS 2); and the
   attacker withholds one provider's next event and sends the monitor two forged copies of it from its own
   socket -- its signature altered, and signed with another provider's key: each is rejected BAD_SIGNATURE
   and none delivered, then the genuine one is;
b. segregation (THREATS 1): the monitor alerts provider A, A reads it; every packet of A's branch the attacker
   recorded (A's payment events and the alert) is then delivered into provider B's connection: B's core
   rejects each one and reads none -- and B's own branch still works (an alert to B arrives);
c. replay (THREATS 3): a payment event recorded on the wire is sent again to the monitor from the attacker's
   own DEALER socket: the monitor rejects it as a replay and delivers nothing new;
d. admission (THREATS 5): the unlisted DID is refused (``streams subscribe`` exits 1 with REFUSED, and the
   monitor reports the refusal);
e. anchoring (THREATS 7): every provider verifies an anchor proof of its branch against the embedded ledger;
   and the attacker withholds a provider's next proof and hands it two forged ones: the proof with its
   signature altered (refused BAD_SIGNATURE), and a proof signed with the monitor's own key for a checkpoint
   the ledger does not hold -- what a monitor claiming an anchor it never wrote would send (refused
   NOT_ANCHORED by the provider's ledger check); then the genuine one is verified against the ledger.

The ``judge_*`` functions decide each check from what the processes printed; they are separate so tests can
show that each check fails when its property does not hold.  Every child is stopped (and killed if it does
not stop) whatever happens, including Ctrl-C and SIGTERM; the providers and the relay also exit on their own
when the demo's end of their stdin closes.

This module starts processes and reads pipes only; it imports neither zmq nor ``brokerless``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from . import keystore
from ._cli._common import Terminated, print_out
from .anchor import EpochCheckpoint
from .demo import altered_signature, granted_keys, judge_forgeries, opens, resigned
from .identity import Identity
from .wire import Kind, decode_anchor_body, decode_frame, encode_anchor_body, encode_frame

__all__ = [
    "Check",
    "DemoError",
    "DemoRun",
    "judge_anchor_forgeries",
    "judge_delivery",
    "judge_forgeries",
    "judge_refusal",
    "judge_replay",
    "judge_segregation",
    "run_process_demo",
]

PROVIDERS = ("acme-pay", "globex-pay", "initech-pay")
CHANNEL_NAME = "payment-fraud-monitor"
PASSPHRASE_VAR = "STREAMS_DEMO_PASSPHRASE"  # noqa: S105 -- the name of a variable, not a passphrase
#: Longest wait for any one step; the whole demo takes a few seconds.
STEP_TIMEOUT = 20.0

Doc = dict[str, Any]


class DemoError(Exception):
    """A step of the demo did not happen in time, or a child process failed.  The message says which."""


@dataclass(frozen=True)
class Check:
    """One verdict of the demo."""

    name: str
    ok: bool
    detail: str = ""


# --- judges: each decides one check from what the processes printed -------------------------------------------


def judge_delivery(expected: dict[str, tuple[str, str]], per_provider: int, monitor_docs: list[Doc]) -> Check:
    """(a) For each provider ``name -> (did, branch hex)``: the monitor printed exactly ``per_provider``
    messages on its branch, seq 1..n, each signed and from that DID."""
    bad: list[str] = []
    counts = []
    for name, (did, branch) in expected.items():
        msgs = [d for d in monitor_docs if d.get("event") == "message" and d.get("branch") == branch]
        counts.append(f"{name} {len(msgs)}/{per_provider}")
        if [m.get("seq") for m in msgs] != list(range(1, per_provider + 1)):
            bad.append(f"{name}: seqs {[m.get('seq') for m in msgs]}")
        if any(m.get("publisher") != did or m.get("signed") is not True for m in msgs):
            bad.append(f"{name}: a message not signed by its DID")
    detail = ", ".join(counts) + ("; all signed by the provider's DID" if not bad else "; " + "; ".join(bad))
    return Check("monitor received every provider's payment events, signed by its DID", not bad, detail)


def judge_segregation(handed: int, foreign_branch: str, victim_docs: list[Doc], own_alert: bool, *,
                      owner: str = "A", victim: str = "B") -> Check:
    """(b) ``handed`` frames of ``foreign_branch`` reached the victim: each was rejected, none read, and the
    victim's own branch still delivered an alert."""
    rejected = [d for d in victim_docs if d.get("event") == "rejected" and d.get("branch") == foreign_branch]
    read = [d for d in victim_docs if d.get("event") == "message" and d.get("branch") == foreign_branch]
    reasons = sorted({str(d.get("reason")) for d in rejected})
    ok = handed > 0 and len(rejected) == handed and not read and own_alert
    detail = (f"{handed} recorded packet{'' if handed == 1 else 's'} of {owner}'s branch delivered to {victim}: "
              f"{len(rejected)} rejected "
              f"({', '.join(reasons) or 'none'}), {len(read)} readable; {victim}'s own branch "
              f"{'still works' if own_alert else 'BROKEN'}")
    return Check(f"segregation: {victim} cannot read {owner}'s branch", ok, detail)


def judge_replay(monitor_docs_after: list[Doc], branch: str, seq: int) -> Check:
    """(c) After the attacker sent the recorded packet ``(branch, seq)`` again: the monitor rejected it as a
    REPLAY and printed no new message.  Rejections of other frames (a member's duplicate ACK) do not count."""
    ours = [d for d in monitor_docs_after
            if d.get("event") == "rejected" and d.get("branch") == branch and d.get("seq") == seq]
    delivered = [d for d in monitor_docs_after if d.get("event") == "message"]
    ok = bool(ours) and all(d.get("reason") == "REPLAY" for d in ours) and not delivered
    seen = ", ".join(str(d.get("reason")) for d in ours) or "not rejected"
    detail = f"packet seq {seq} re-sent from the attacker's own socket: {seen}; {len(delivered)} message(s) delivered"
    return Check("replayed payment event rejected, nothing delivered", ok, detail)


def judge_anchoring(providers: list[str], verified: dict[str, int], ledger_ok: bool, writes: int) -> Check:
    """(e) anchoring: every provider verified a proof of its branch head against the ledger, which verifies."""
    name = "branch heads anchored on the embedded ledger, proofs verified by every provider"
    missing = [p for p in providers if p not in verified]
    ok = not missing and ledger_ok and writes >= 1
    detail = (f"{len(verified)}/{len(providers)} providers verified against the ledger; {writes} ledger "
              f"write{'' if writes == 1 else 's'} "
              f"(one per epoch); hash chain {'intact' if ledger_ok else 'BROKEN'}")
    if missing:
        detail += f"; no verified proof at {', '.join(missing)}"
    return Check(name, ok, detail)


def judge_anchor_forgeries(forged: list[str], docs: list[Doc], after: list[Doc], branch: str, seq: int) -> Check:
    """(e) The provider was handed forged anchor proofs of its head ``(branch, seq)``, named in ``forged`` by
    what each claims (``docs``: what it printed meanwhile), then the genuine proof (``after``: what it printed
    since).  Each forgery must be refused with the reason it is there to meet, in order -- "altered" ones
    BAD_SIGNATURE, "unwritten" ones (a checkpoint the ledger does not hold) NOT_ANCHORED -- none may make the head
    anchored, and the genuine proof then must, verified against the ledger."""
    def mine(d: Doc, event: str) -> bool:
        return d.get("event") == event and d.get("branch") == branch and d.get("seq") == seq

    want = ["BAD_SIGNATURE" if f == "altered" else "NOT_ANCHORED" for f in forged]
    got = [str(d.get("reason")) for d in docs if mine(d, "rejected")]
    taken = sum(1 for d in docs if mine(d, "anchored"))
    genuine = any(mine(d, "anchored") and d.get("ledger_verified") is True for d in after)
    ok = bool(forged) and got == want and taken == 0 and genuine
    detail = (f"{len(forged)} forged proofs of head seq {seq} ({', '.join(forged)}): refused "
              f"{', '.join(got) or 'none'}, {taken} taken as anchored; the genuine proof then "
              f"{'verified against the ledger' if genuine else 'NOT verified'}")
    return Check("forged anchor proofs refused", ok, detail)


def judge_refusal(returncode: int, output: Doc, monitor_docs: list[Doc], did: str) -> Check:
    """(d) ``streams subscribe`` of an unlisted DID exited 1 with REFUSED, and the monitor refused that DID."""
    seen = any(d.get("event") == "refused" and d.get("did") == did for d in monitor_docs)
    ok = returncode == 1 and output.get("reason") == "REFUSED" and seen
    detail = (f"streams subscribe exited {returncode} ({output.get('reason') or output.get('error', '?')}); "
              f"monitor {'logged' if seen else 'did NOT log'} the refusal")
    return Check("unlisted DID refused", ok, detail)


def _message_pred(branch: str, *, seq: int | None = None, index: int | None = None) -> Callable[[Doc], bool]:
    """A predicate: a printed message on ``branch`` (and with that seq / publisher index, if given)."""

    def pred(d: Doc) -> bool:
        return (d.get("event") == "message" and d.get("branch") == branch
                and (seq is None or d.get("seq") == seq) and (index is None or d.get("index") == index))

    return pred


# --- child processes -----------------------------------------------------------------------------------------


class Child:
    """A child process speaking JSON lines: commands on its stdin, documents on its stdout (read by a thread).

    stderr goes to a file in the demo's directory, shown when the child fails."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.stderr"
        self._err: IO[bytes] = open(self.err_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                  env=env, cwd=workdir)
        self.docs: list[Doc] = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._pump, daemon=True, name=f"demo-{name}")
        self._t.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"event": "text", "line": raw.decode("utf-8", "replace").rstrip()}
            if not isinstance(doc, dict):
                doc = {"event": "text", "line": str(doc)}
            with self._cond:
                self.docs.append(doc)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self) -> int:
        """The number of documents so far (to look only at what comes after)."""
        with self._cond:
            return len(self.docs)

    def since(self, mark: int) -> list[Doc]:
        with self._cond:
            return list(self.docs[mark:])

    def send(self, doc: Doc) -> None:
        """Write one JSON command line.  Raises :class:`DemoError` if the child is gone."""
        try:
            assert self.p.stdin is not None
            self.p.stdin.write(json.dumps(doc).encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise DemoError(f"{self.name} is gone: {self.stderr_tail()}") from exc

    def wait_for(self, pred: Callable[[Doc], bool], what: str, *, since: int = 0,
                 timeout: float = STEP_TIMEOUT) -> Doc:
        """The first document at index ``since`` or later for which ``pred`` holds.

        Raises :class:`DemoError` after ``timeout`` seconds or if the child exits first."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for d in self.docs[since:]:
                    if pred(d):
                        return d
                since = max(since, len(self.docs))
                left = end - time.monotonic()
                if left <= 0:
                    raise DemoError(f"timeout waiting for {self.name}: {what}")
                if self.p.poll() is not None and not self._t.is_alive():
                    raise DemoError(f"{self.name} exited ({self.p.returncode}) before {what}: "
                                    f"{self.stderr_tail()}")
                self._cond.wait(min(left, 0.1))

    def request(self, doc: Doc) -> Doc:
        """Send a command and return the reply (the relay's protocol: one ``{"reply": ...}`` line each)."""
        m = self.mark()
        self.send(doc)
        return self.wait_for(lambda d: "reply" in d, f"reply to {doc.get('cmd')}", since=m)

    def stderr_tail(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-1500:].strip()
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Close stdin (the child then exits cleanly), wait ``grace`` seconds, then SIGTERM, then SIGKILL."""
        with contextlib.suppress(OSError):
            if self.p.stdin is not None:
                self.p.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.p.send_signal(sig)
            try:
                self.p.wait(grace if sig is None else 3.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.p.stdout is not None:
            self.p.stdout.close()
        self._err.close()


# --- the demo ------------------------------------------------------------------------------------------------


@dataclass
class Provider:
    name: str
    did: str
    proc: Child
    branch: str = ""


@dataclass
class DemoRun:
    """One run of the demo in ``workdir``: start the processes (:meth:`start`), run the checks, :meth:`close`.

    ``say`` receives the progress lines."""

    workdir: Path
    say: Callable[[str], None] = lambda s: None
    events_per_provider: int = 5
    children: list[Child] = field(default_factory=list)
    identities: dict[str, Identity] = field(default_factory=dict)  #: the demo's, to attack with
    providers: dict[str, Provider] = field(default_factory=dict)
    monitor: Child | None = None
    relay: Child | None = None
    monitor_did: str = ""
    channel: str = ""
    address: str = ""

    def __post_init__(self) -> None:
        #: Each party's own passphrase (its keystore's and its store's), never printed: the party's process gets
        #: it in its environment, and no other process does -- the providers are distinct organisations, and the
        #: relay is the attacker: a passphrase of a keystore in this directory would open it (THREATS 9).
        self._passphrases: dict[str, str] = {}
        self.ledger_path = self.workdir / "ledger.db"  # the embedded ledger the monitor anchors on
        root = str(Path(__file__).resolve().parent.parent)
        # (a passphrase variable inherited from whoever started the demo is not passed on either)
        self.env = {**{k: v for k, v in os.environ.items() if k != PASSPHRASE_VAR},
                    "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}

    # -- processes -----------------------------------------------------------------------------------------

    def _env(self, party: str | None) -> dict[str, str]:
        """A child's environment: with ``party``'s passphrase in :data:`PASSPHRASE_VAR`, or with none."""
        return self.env if party is None else {**self.env, PASSPHRASE_VAR: self._passphrases[party]}

    def _spawn(self, name: str, *argv: str, party: str | None = None) -> Child:
        c = Child(name, [sys.executable, *argv], self._env(party), self.workdir)
        self.children.append(c)
        return c

    def _identity(self, name: str) -> tuple[str, str]:
        """A throwaway identity in a keystore of the temporary directory, under a passphrase of its own: (path,
        DID).  Minimal KDF cost: the directory and the passphrases live only as long as the demo."""
        path = str(self.workdir / f"{name}.ks")
        ident = Identity.generate()
        self.identities[name] = ident
        self._passphrases[name] = secrets.token_urlsafe(24)
        keystore.save_identity(path, ident, self._passphrases[name], opslimit=keystore.MIN_OPSLIMIT,
                               memlimit=keystore.MIN_MEMLIMIT)
        return path, ident.did

    def start(self) -> None:
        """Create identities and the policy, start the monitor, the relay and the providers; wait for every
        provider's grant.  Raises :class:`DemoError`."""
        mon_ks, _ = self._identity("monitor")
        keys = {name: self._identity(name) for name in PROVIDERS}
        policy = self.workdir / "policy.toml"
        policy.write_text("[policy]\n" + "".join(
            f'\n[[policy.allow]]  # {name}\ndid = "{did}"\npermission = "read-write"\n'
            for name, (_, did) in keys.items()))
        self.say("starting monitor (streams serve)…")
        self.monitor = self._spawn(
            "monitor", "-m", "streams.cli", "serve", "--json", "--store", "monitor.db",
            "--bind", "tcp://127.0.0.1:0", "--policy", str(policy), "--keystore", mon_ks, "--name", CHANNEL_NAME,
            "--passphrase-env", PASSPHRASE_VAR, "--publish-stdin", "--exit-on-stdin-eof",
            "--ledger", f"sqlite:{self.ledger_path}", "--anchor-interval-ms", "300", party="monitor")
        ready = self.monitor.wait_for(lambda d: d.get("event") == "ready", "ready")
        self.monitor_did, self.channel, self.address = ready["did"], ready["channel"], ready["addresses"][0]
        self.say(f"monitor {self.monitor_did} serves channel {self.channel[:16]}… on {self.address}")
        self.say("starting the attacker's recording relay between the providers and the monitor…")
        self.relay = self._spawn("relay", "-m", "brokerless._demo_relay", "--connect", self.address)
        relay_addr = self.relay.wait_for(lambda d: d.get("event") == "ready", "ready")["address"]
        for name, (ks, did) in keys.items():
            self.say(f"starting provider {name}…")
            proc = self._spawn(name, "-m", "streams._demo_proc", "--store", f"{name}.db", "--keystore", ks,
                               "--connect", relay_addr, "--author", self.monitor_did, "--channel", self.channel,
                               "--passphrase-env", PASSPHRASE_VAR, "--ledger", f"sqlite:{self.ledger_path}",
                               party=name)
            self.providers[name] = Provider(name, did, proc)
        for p in self.providers.values():
            doc = p.proc.wait_for(lambda d: d.get("event") in ("subscribed", "refused", "error"), "subscription")
            if doc["event"] != "subscribed":
                raise DemoError(f"{p.name} was not admitted: {doc}")
            p.branch = doc["branch"]
            self.say(f"provider {p.name} subscribed: branch {p.branch[:12]}…")

    def close(self) -> None:
        """Stop every child (clean close first, then signals); idempotent."""
        for c in reversed(self.children):
            c.stop()
        self.children.clear()

    def _alert(self, provider: Provider, text: str) -> bool:
        """The monitor alerts ``provider``; True once the provider printed it (from the author, index 0)."""
        assert self.monitor is not None
        m = provider.proc.mark()
        self.monitor.send({"to": provider.did, "data": json.dumps({"alert": text}, ensure_ascii=False)})
        try:
            provider.proc.wait_for(lambda d: d.get("event") == "message" and d.get("branch") == provider.branch
                                   and d.get("index") == 0 and text in str(d.get("data")), "the alert", since=m)
        except DemoError:
            return False
        return True

    # -- checks --------------------------------------------------------------------------------------------

    def check_delivery(self) -> Check:
        """(a) Each provider publishes payment events; the monitor must print all of them."""
        assert self.monitor is not None
        n = self.events_per_provider
        self.say(f"each provider publishes {n} payment events…")
        for i in range(n):
            for p in self.providers.values():
                event = {"provider": p.name, "payment": i + 1, "amount_eur": 10 + 7 * i, "card": f"4242…{1000 + i}"}
                p.proc.send({"cmd": "publish", "data": json.dumps(event, ensure_ascii=False)})
        for p in self.providers.values():
            last = _message_pred(p.branch, seq=n)
            with contextlib.suppress(DemoError):  # the judge reports what is missing
                self.monitor.wait_for(last, f"{p.name}'s event {n}")
        check = judge_delivery({p.name: (p.did, p.branch) for p in self.providers.values()}, n, self.monitor.docs)
        forgery = self.check_forgeries()
        return Check(check.name + "; forgeries rejected", check.ok and forgery.ok,
                     f"{check.detail}; {forgery.detail}")

    def _withhold_next(self, direction: str, provider: Provider, kind: str, publish: str,
                       pick: Callable[[Any], bool]) -> tuple[int, bytes]:
        """The attacker withholds every ``kind`` frame of ``provider``'s branch going ``direction`` (``up``: to the
        monitor); the provider publishes ``publish``; returns the seq it published and the first withheld frame
        for which ``pick(frame)`` holds.  The caller releases the hold (:meth:`_release`).  Raises
        :class:`DemoError` if none comes."""
        assert self.relay is not None
        self.relay.request({"cmd": "hold", "dir": direction, "branch": provider.branch, "count": 1_000_000,
                            "kinds": [kind]})
        m = provider.proc.mark()
        provider.proc.send({"cmd": "publish", "data": publish})
        seq = int(provider.proc.wait_for(lambda d: d.get("event") == "published", "publish", since=m)["seq"])
        end = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < end:
            for f in self.relay.request({"cmd": "held"})["frames"]:
                raw = base64.b64decode(f)
                if pick(decode_frame(raw)) and int(getattr(decode_frame(raw).head, "seq", -1)) == seq:
                    return seq, raw
            time.sleep(0.05)
        raise DemoError(f"the attacker saw no {kind} of {provider.name}'s seq {seq}")

    def _release(self, provider: Provider, direction: str) -> None:
        """End the hold of :meth:`_withhold_next`."""
        assert self.relay is not None
        self.relay.request({"cmd": "hold", "dir": direction, "branch": provider.branch, "count": 0})
        self.relay.request({"cmd": "held"})  # what it withheld meanwhile (gap-fill copies): dropped, not kept

    def check_forgeries(self, victim: str = "acme-pay", impostor: str = "globex-pay") -> Check:
        """(a) The attacker withholds ``victim``'s next payment event and sends the monitor, from its own socket, a
        copy with its signature altered and one signed with ``impostor``'s key; then the genuine event."""
        assert self.monitor is not None and self.relay is not None
        p = self.providers[victim]
        self.say(f"the attacker withholds {victim}'s next payment event and sends the monitor forged copies…")
        event = json.dumps({"provider": victim, "payment": "withheld by the attacker"})
        try:
            seq, genuine = self._withhold_next("up", p, "PACKET", event, lambda f: f.kind is Kind.PACKET)
            forged = [altered_signature(genuine), resigned(genuine, self.identities[impostor])]
            m = self.monitor.mark()

            def mine(d: Doc) -> bool:
                return d.get("event") == "rejected" and d.get("branch") == p.branch and d.get("seq") == seq

            monitor = self.monitor

            def settled(n: int) -> Callable[[Doc], bool]:
                """n forgeries rejected, or one delivered."""
                return lambda d: _message_pred(p.branch, seq=seq)(d) or sum(map(mine, monitor.since(m))) >= n

            for n, f in enumerate(forged, 1):
                self.relay.request({"cmd": "send_direct", "frames": [base64.b64encode(f).decode()]})
                with contextlib.suppress(DemoError):
                    monitor.wait_for(settled(n), "the forgery's fate", since=m, timeout=5.0)
            time.sleep(0.3)  # a forgery delivered late would show now
            docs = monitor.since(m)
        finally:
            self._release(p, "up")
        delivered = sum(1 for d in docs if _message_pred(p.branch)(d))
        genuine_ok = False
        if not delivered:  # (else the genuine event is a replay: the check has failed already)
            m = self.monitor.mark()
            self.relay.request({"cmd": "send_direct", "frames": [base64.b64encode(genuine).decode()]})
            with contextlib.suppress(DemoError):
                doc = self.monitor.wait_for(_message_pred(p.branch, seq=seq), "the genuine event", since=m)
                genuine_ok = doc.get("publisher") == p.did and doc.get("signed") is True
        ok, detail = judge_forgeries(len(forged), [str(d.get("reason")) for d in docs if mine(d)], delivered,
                                     genuine_ok)
        return Check("forged signatures rejected", ok,
                     f"{victim}'s withheld event seq {seq}, its signature altered and signed with {impostor}'s key: "
                     + detail)

    def check_segregation(self, owner: str = "acme-pay", victim: str = "globex-pay") -> Check:
        """(b) The attacker delivers every recorded packet of ``owner``'s branch into ``victim``'s connection."""
        assert self.relay is not None
        a, b = self.providers[owner], self.providers[victim]
        self.say(f"monitor alerts {owner}; the attacker hands {owner}'s recorded packets to {victim}…")
        alert_read = self._alert(a, "card 4242…1003 flagged")
        frames = (self.relay.request({"cmd": "frames", "dir": "up", "branch": a.branch})["frames"]
                  + self.relay.request({"cmd": "frames", "dir": "down", "branch": a.branch})["frames"])
        m = b.proc.mark()
        # (The relay hands them over paced by the victim's reading, every one: a burst of single messages past
        # the connection's high-water marks was dropped silently, and the judge counted a rejection missing for
        # each frame dropped.)
        reply = self.relay.request({"cmd": "inject", "to_branch": b.branch, "frames": frames})
        sent = int(reply["sent"])
        self._wait_rejections(b, a.branch, sent, m)
        own_alert = self._alert(b, f"{victim}: card 5555…0001 flagged")
        check = judge_segregation(sent if sent == len(frames) else 0, a.branch, b.proc.since(m),
                                  own_alert and alert_read, owner=owner, victim=victim)
        if sent != len(frames):
            check = Check(check.name, False, f"the relay handed {victim} {sent} of the {len(frames)} recorded "
                                             f"packets ({reply.get('clients')} connection(s)); " + check.detail)
        # The victim's software refused them; its owner tries every key its grants gave it on the same packets.
        grants = self.relay.request({"cmd": "frames", "dir": "down", "branch": b.branch, "kinds": ["GRANT"]})["frames"]
        keys = granted_keys([base64.b64decode(g) for g in grants], self.identities[victim])
        opened = sum(1 for f in frames if opens(keys, base64.b64decode(f)))
        detail = f"{check.detail}; {opened} open with the {len(keys)} key(s) {victim}'s grants gave it"
        check = Check(check.name, check.ok and bool(keys) and opened == 0, detail)
        if not alert_read:
            return Check(check.name, False, f"{owner} did not receive its own alert; " + check.detail)
        return check

    @staticmethod
    def _wait_rejections(victim: Provider, branch: str, n: int, since: int, idle: float = 5.0) -> None:
        """Wait until ``victim`` printed ``n`` rejections of frames of ``branch`` after document ``since``, for as
        long as they keep coming (``idle`` seconds without one ends the wait: the judge says what is missing)."""
        counted = [0, 0]  # documents looked at, rejections among them

        def enough(d: Doc) -> bool:  # (each document is looked at once)
            counted[0] += 1
            counted[1] += d.get("event") == "rejected" and d.get("branch") == branch
            return counted[1] >= n

        while counted[1] < n:
            before = counted[1]
            try:
                victim.proc.wait_for(enough, "rejections", since=since + counted[0], timeout=idle)
            except DemoError:
                if counted[1] == before:
                    return

    def recorded_packet(self, provider: str) -> str:
        """The earliest payment event of ``provider`` the attacker still holds, recorded on the wire (base64): its
        first one, unless a long run pushed it out of the relay's recording (the latest frames are kept)."""
        assert self.relay is not None
        frames = self.relay.request({"cmd": "frames", "dir": "up", "branch": self.providers[provider].branch})
        if not frames["frames"]:
            raise DemoError(f"the relay recorded no packet of {provider}")
        return str(frames["frames"][0])

    def check_replay(self, frame_b64: str, *, settle: float = 0.5) -> Check:
        """(c) The attacker sends ``frame_b64`` to the monitor from its own DEALER socket."""
        assert self.monitor is not None and self.relay is not None
        head = decode_frame(base64.b64decode(frame_b64)).head
        branch, seq = getattr(head, "branch", b"").hex(), int(getattr(head, "seq", 0))
        m = self.monitor.mark()
        self.relay.request({"cmd": "send_direct", "frames": [frame_b64]})
        with contextlib.suppress(DemoError):
            self.monitor.wait_for(lambda d: d.get("event") == "message" or (
                d.get("event") == "rejected" and d.get("branch") == branch and d.get("seq") == seq),
                "the replay's fate", since=m, timeout=5.0)
        time.sleep(settle)  # anything delivered late would show now
        return judge_replay(self.monitor.since(m), branch, seq)

    def check_refusal(self) -> Check:
        """(d) An identity the policy does not name runs ``streams subscribe`` against the monitor."""
        assert self.monitor is not None
        ks, did = self._identity("mallory")
        self.say("an unlisted DID (mallory) tries to subscribe…")
        try:
            r = subprocess.run(
                [sys.executable, "-m", "streams.cli", "subscribe", "--json", "--store", "mallory.db", "--connect",
                 self.address, "--keystore", ks, "--author", self.monitor_did, "--channel", self.channel,
                 "--passphrase-env", PASSPHRASE_VAR, "--timeout", "15"],
                cwd=self.workdir, env=self._env("mallory"), capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return Check("unlisted DID refused", False, "streams subscribe did not finish in 30 s")
        try:
            out = json.loads(r.stdout)
        except ValueError:
            out = {"error": r.stderr.decode(errors="replace")[-300:]}
        with contextlib.suppress(DemoError):
            self.monitor.wait_for(lambda d: d.get("event") == "refused" and d.get("did") == did, "refusal",
                                  timeout=3.0)
        return judge_refusal(r.returncode, out if isinstance(out, dict) else {}, self.monitor.docs, did)

    def run_checks(self) -> list[Check]:
        """Every check, in order.  A step that fails to happen is a FAIL, not an exception."""
        checks: list[Check] = []
        steps: list[tuple[str, Callable[[], Check]]] = [
            ("monitor received every provider's payment events, signed by its DID; forgeries rejected",
             self.check_delivery),
            ("segregation: globex-pay cannot read acme-pay's branch", self.check_segregation),
            ("replayed payment event rejected, nothing delivered",
             lambda: self._replay_step("initech-pay")),
            ("unlisted DID refused", self.check_refusal),
            ("branch heads anchored on the embedded ledger, proofs verified by every provider; forged proofs "
             "refused", self.check_anchoring),
        ]
        for name, step in steps:
            try:
                checks.append(step())
            except DemoError as exc:
                checks.append(Check(name, False, str(exc)))
        return checks

    def check_anchoring(self, timeout: float = 10.0) -> Check:
        """Every provider received an anchor proof of its branch and verified it against the ledger itself;
        the ledger's hash chain verifies end to end."""
        self.say("waiting for the anchor proofs (checked by each provider against the ledger)…")
        verified: dict[str, int] = {}
        for p in self.providers.values():
            def anchored(d: Doc, branch: str = p.branch) -> bool:
                return d.get("event") == "anchored" and d.get("branch") == branch and d.get("ledger_verified") is True

            try:
                doc = p.proc.wait_for(anchored, "anchored", timeout=timeout)
                verified[p.name] = int(doc["epoch"])
            except DemoError:
                pass
        forgery = self.check_anchor_forgeries()
        from .ledger.embedded import EmbeddedLedger

        with EmbeddedLedger(self.ledger_path) as ledger:
            report = ledger.verify()
            writes = ledger.size()
        check = judge_anchoring(sorted(self.providers), verified, report.ok, writes)
        return Check(check.name + "; forged proofs refused", check.ok and forgery.ok,
                     f"{check.detail}; {forgery.detail}")

    def check_anchor_forgeries(self, name: str = "globex-pay") -> Check:
        """(e) The attacker withholds the anchor proof of ``name``'s next head and hands the provider, on its own
        connection, that proof with its signature altered, then one signed with the monitor's key for a checkpoint
        the ledger does not hold (the genuine one, a millisecond later); then the genuine proof."""
        assert self.relay is not None
        p = self.providers[name]
        self.say(f"the attacker withholds {name}'s next anchor proof and hands it forged ones…")
        monitor_id = self.identities["monitor"]
        event = json.dumps({"provider": name, "payment": "to be anchored"})
        try:
            seq, genuine = self._withhold_next("down", p, "ANCHOR_PROOF", event,
                                               lambda f: f.kind is Kind.ANCHOR_PROOF and f.head.publisher != 0)
            f = decode_frame(genuine)
            raw_cp, path = decode_anchor_body(f.body)
            cp = EpochCheckpoint.decode(raw_cp)
            unwritten = dataclasses.replace(cp, timestamp_ms=cp.timestamp_ms + 1, sig=b"")
            unwritten = dataclasses.replace(unwritten, sig=monitor_id.sign(unwritten.digest))
            forged = {"altered": altered_signature(genuine),
                      "unwritten": encode_frame(f.head, encode_anchor_body(unwritten.encode(), path),
                                                monitor_id.sign).raw}
            m = p.proc.mark()

            def settled(n: int) -> Callable[[Doc], bool]:
                """n forgeries refused, or one taken."""
                def pred(d: Doc) -> bool:
                    got = [x for x in p.proc.since(m) if x.get("branch") == p.branch and x.get("seq") == seq
                           and x.get("event") in ("rejected", "anchored")]
                    return len(got) >= n or any(x.get("event") == "anchored" for x in got)
                return pred

            for n, frame in enumerate(forged.values(), 1):
                self.relay.request({"cmd": "inject", "to_branch": p.branch,
                                    "frames": [base64.b64encode(frame).decode()]})
                with contextlib.suppress(DemoError):
                    p.proc.wait_for(settled(n), "the forged proof's fate", since=m, timeout=5.0)
            docs = p.proc.since(m)
        finally:
            self._release(p, "down")
        m = p.proc.mark()

        def anchored(d: Doc) -> bool:
            return d.get("event") == "anchored" and d.get("branch") == p.branch and d.get("seq") == seq

        if not any(map(anchored, docs)):  # (else the genuine proof is ignored: the check has failed already)
            self.relay.request({"cmd": "inject", "to_branch": p.branch,
                                "frames": [base64.b64encode(genuine).decode()]})
            with contextlib.suppress(DemoError):
                p.proc.wait_for(anchored, "the genuine proof", since=m)
        return judge_anchor_forgeries(list(forged), docs, p.proc.since(m), p.branch, seq)

    def _replay_step(self, provider: str) -> Check:
        frame = self.recorded_packet(provider)
        seq = int(getattr(decode_frame(base64.b64decode(frame)).head, "seq", 0))
        self.say(f"the attacker replays a payment event of {provider} it recorded (seq {seq}) from its own socket…")
        return self.check_replay(frame)


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: through ``finally`` blocks that stop every child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    old: Any = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_process_demo(events_per_provider: int = 5, as_json: bool = False) -> int:
    """Run the multi-process demo, print the summary (one JSON document with ``as_json``; progress then goes to
    stderr) and return the exit status: 0 if every check passed, 1 otherwise."""
    started = time.monotonic()

    def say(line: str) -> None:
        if as_json:
            print(line, file=sys.stderr, flush=True)
        else:
            print_out(line)

    say("streams demo: a fraud monitor and three payment providers, each its own OS process, on loopback "
        "ZeroMQ; an attacker relays and records every frame between them")
    checks: list[Check] = []
    with _terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="streams-demo-") as tmp:
        run = DemoRun(Path(tmp), say, events_per_provider)
        try:
            run.start()
            checks = run.run_checks()
        except DemoError as exc:
            checks.append(Check("demo setup", False, str(exc)))
        finally:
            run.close()
    ok = bool(checks) and all(c.ok for c in checks)
    seconds = round(time.monotonic() - started, 1)
    if as_json:
        print_out(json.dumps({"ok": ok, "mode": "processes", "seconds": seconds,
                              "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}))
    else:
        lines = [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}" + (f"\n         {c.detail}" if c.detail else "")
                 for c in checks]
        print_out("\n".join(["", *lines, "", f"all checks passed ({seconds} s)" if ok else
                              f"SOME CHECKS FAILED ({seconds} s)"]))
    return 0 if ok else 1
