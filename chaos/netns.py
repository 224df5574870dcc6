"""Several hosts on one machine: Linux network namespaces joined by veth pairs, with link cuts, delay and loss.

    python chaos/netns.py [--subscribers 2] [--quota 300] [--json] [--out FILE]

Topology (``tag`` keeps concurrent runs apart)::

    streams-a-<tag>  (author)  va1<tag> 10.200.1.1/24 <--veth--> vs1<tag> 10.200.1.2/24  streams-s1-<tag>
                               va2<tag> 10.200.2.1/24 <--veth--> vs2<tag> 10.200.2.2/24  streams-s2-<tag>

The 10.200.x.y addresses exist only on veths inside namespaces this module created; nothing is routed anywhere
else (no default route, no forwarding), so no traffic can leave them.  Everything is deleted on exit.

Faults: :meth:`Topology.link` (``ip link set down/up``) and :meth:`Topology.impair` (delay and loss on both ends
of a link).  ``tc qdisc ... netem`` is used where the kernel has ``sch_netem``; where it does not (this project's
CI VM), loss is an iptables ``statistic`` DROP rule and delay is :mod:`chaos.nfq_delay` holding each packet of an
NFQUEUE for the delay -- both on real packets in the kernel's path.  ``method`` says which was used.

The scenario (:func:`scenario`, also the test ``tests/test_chaos_netns.py``): the author in one namespace and the
subscribers in others (``ip netns exec``), a two-way stream; one link cut for a few seconds and restored; every
link then delayed 50 ms each way with 10 % loss each way; at the end every log and store is checked as in
:mod:`chaos.crash` -- nothing acknowledged lost, delivery complete, no duplicates, holes, replays or forks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.crash import AUTHOR_SEED, MUST_BE_ZERO, Child, LogTail, analyse, wait_line
from chaos.figures import emit

HERE = Path(__file__).resolve().parent


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def why_unavailable() -> str | None:
    """None if namespaces, veth pairs and one of the two impairment methods work here, else the reason (for a
    test skip)."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    probe = f"streams-probe-{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"'ip netns add' is not permitted here: {r.stderr.strip()}"
    try:
        r = _ip("-n", probe, "link", "add", "vp0", "type", "veth", "peer", "name", "vp1", check=False)
        if r.returncode != 0:
            return f"veth pairs cannot be created here: {r.stderr.strip()}"
        ex = ["ip", "netns", "exec", probe]
        if shutil.which("tc") is not None and subprocess.run(
                [*ex, "tc", "qdisc", "add", "dev", "vp0", "root", "netem", "delay", "1ms"], capture_output=True,
                timeout=30).returncode == 0:
            return None
        if shutil.which("iptables") is None:
            return "the kernel has no sch_netem and iptables is missing for the fallback (apt-get install iptables)"
        r2 = subprocess.run([*ex, "iptables", "-A", "OUTPUT", "-o", "vp0", "-j", "NFQUEUE", "--queue-num", "0",
                             "--queue-bypass"], capture_output=True, text=True, timeout=30)
        if r2.returncode != 0:
            return f"neither sch_netem nor the iptables NFQUEUE target is available: {r2.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Topology:
    """An author namespace and ``subscribers`` subscriber namespaces, one veth link each (see the module doc).

    Use as a context manager: namespaces are created on enter and deleted (with every impairment process stopped)
    on exit.  Raises :class:`RuntimeError` if a step fails."""

    def __init__(self, subscribers: int, tag: str | None = None) -> None:
        self.n = subscribers
        self.tag = tag if tag is not None else f"{os.getpid() % 65536:04x}"
        self.author_ns = f"streams-a-{self.tag}"
        self.sub_ns = [f"streams-s{i}-{self.tag}" for i in range(1, subscribers + 1)]
        self.method: str | None = None
        self._delayers: dict[str, subprocess.Popen[str]] = {}
        self._impaired: set[int] = set()

    # -- addresses ---------------------------------------------------------------------------------------------

    def author_ip(self, i: int) -> str:
        """The author's address on link ``i`` (1-based): where subscriber ``i`` connects."""
        return f"10.200.{i}.1"

    def sub_ip(self, i: int) -> str:
        return f"10.200.{i}.2"

    def veths(self, i: int) -> tuple[tuple[str, str], tuple[str, str]]:
        """((namespace, device) of the author's end, (namespace, device) of the subscriber's end) of link i."""
        return (self.author_ns, f"va{i}{self.tag}"), (self.sub_ns[i - 1], f"vs{i}{self.tag}")

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    # -- life cycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        for ns in (self.author_ns, *self.sub_ns):
            _ip("netns", "del", ns, check=False)  # a leftover of a killed run with the same tag
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i in range(1, self.n + 1):
            (ans, adev), (sns, sdev) = self.veths(i)
            # Created inside the author's namespace, one end moved: no device ever exists in the host namespace.
            _ip("-n", ans, "link", "add", adev, "type", "veth", "peer", "name", sdev)
            _ip("-n", ans, "link", "set", sdev, "netns", sns)
            _ip("-n", ans, "addr", "add", f"{self.author_ip(i)}/24", "dev", adev)
            _ip("-n", sns, "addr", "add", f"{self.sub_ip(i)}/24", "dev", sdev)
            _ip("-n", ans, "link", "set", adev, "up")
            _ip("-n", sns, "link", "set", sdev, "up")

    def teardown(self) -> None:
        for p in self._delayers.values():
            self._stop(p)
        self._delayers.clear()
        for ns in (self.author_ns, *self.sub_ns):
            _ip("netns", "del", ns, check=False)

    # -- faults ------------------------------------------------------------------------------------------------

    def link(self, i: int, up: bool) -> None:
        """Cut (``up=False``) or restore link ``i``: both ends down/up (no carrier, as a pulled cable)."""
        for ns, dev in self.veths(i):
            _ip("-n", ns, "link", "set", dev, "up" if up else "down")

    def impair(self, i: int, delay_ms: int, loss_pct: float) -> None:
        """Add ``delay_ms`` and ``loss_pct`` % loss to every packet leaving either end of link ``i``."""
        for ns, dev in self.veths(i):
            if self.method in (None, "netem"):
                r = self._run(ns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                                   f"{delay_ms}ms", "loss", f"{loss_pct}%"], check=False)
                if r.returncode == 0:
                    self.method = "netem"
                    continue
                if self.method == "netem":
                    raise RuntimeError(f"netem failed on {dev}: {r.stderr.strip()}")
                self.method = "iptables+nfqueue"
            self._impair_iptables(ns, dev, delay_ms, loss_pct)
        self._impaired.add(i)

    def clear(self, i: int) -> None:
        """Remove the delay and loss of link ``i``."""
        for ns, dev in self.veths(i):
            if self.method == "netem":
                self._run(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
            elif self.method == "iptables+nfqueue":
                for rule in self._rules(dev, 0, 0):
                    self._run(ns, ["iptables", "-D", "OUTPUT", *rule], check=False)
        self._impaired.discard(i)
        if self.method == "iptables+nfqueue":
            busy = {ns for j in self._impaired for ns, _ in self.veths(j)}
            for ns in [n for n in self._delayers if n not in busy]:
                self._stop(self._delayers.pop(ns))

    def impairment_stats(self) -> dict[str, int]:
        """Packets dropped and delayed so far on every impaired device (from the kernel's own counters)."""
        dropped = delayed = 0
        for ns in (self.author_ns, *self.sub_ns):
            if self.method == "netem":
                out = self._run(ns, ["tc", "-s", "qdisc", "show"], check=False).stdout
                dropped += sum(int(x) for x in re.findall(r"dropped (\d+)", out))
                delayed += sum(int(x) for x in re.findall(r"Sent \d+ bytes (\d+) pkt", out) if "netem" in out)
            elif self.method == "iptables+nfqueue":
                out = self._run(ns, ["iptables", "-L", "OUTPUT", "-v", "-n", "-x"], check=False).stdout
                for line in out.splitlines():
                    w = line.split()
                    if len(w) > 2 and w[2] == "DROP":
                        dropped += int(w[0])
                    elif len(w) > 2 and w[2] == "NFQUEUE":
                        delayed += int(w[0])
        return {"dropped": dropped, "delayed": delayed}

    # -- internals ---------------------------------------------------------------------------------------------

    def _run(self, ns: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.exec_prefix(ns), *argv], capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: {r.stderr.strip()}")
        return r

    @staticmethod
    def _rules(dev: str, delay_ms: int, loss_pct: float) -> list[list[str]]:
        # Loss first (a dropped packet is not also delayed), then every remaining packet to queue 0.  --queue-bypass:
        # packets pass untouched whenever no delayer is bound (before it starts, after it stops).
        return [["-o", dev, "-m", "statistic", "--mode", "random", "--probability", f"{loss_pct / 100:.4f}",
                 "-j", "DROP"],
                ["-o", dev, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]]

    def _impair_iptables(self, ns: str, dev: str, delay_ms: int, loss_pct: float) -> None:
        if shutil.which("iptables") is None:
            raise RuntimeError("no sch_netem in this kernel and no iptables for the fallback "
                               "(apt-get install iptables)")
        if ns not in self._delayers:
            p = subprocess.Popen([*self.exec_prefix(ns), sys.executable, str(HERE / "nfq_delay.py"),
                                  "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                self._stop(p)
                raise RuntimeError(f"nfq_delay did not start in {ns}")
            self._delayers[ns] = p
        for rule in self._rules(dev, delay_ms, loss_pct):
            self._run(ns, ["iptables", "-A", "OUTPUT", *rule])

    @staticmethod
    def _stop(p: subprocess.Popen[str]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for s in (p.stdout, p.stderr):
            if s is not None:
                s.close()


def _got(tails: dict[str, LogTail], name: str) -> int:
    tails[name].poll()
    return sum(len(s) for s in tails[name].got.values())


def scenario(work: Path, subscribers: int = 2, quota: int = 400, interval_ms: float = 15.0, cut_s: float = 3.0,
             impair_s: float = 5.0, delay_ms: int = 50, loss_pct: float = 10.0,
             complete_timeout: float = 120.0) -> dict[str, Any]:
    """Run the namespace scenario (see the module docstring) and return its figures; ``ok`` when all hold."""
    port = 7100
    t0 = time.monotonic()
    with Topology(subscribers) as topo:
        binds = [x for i in range(1, subscribers + 1) for x in ("--bind", f"tcp://{topo.author_ip(i)}:{port}")]
        common = ["--quota", str(quota), "--interval", str(interval_ms), "--inject", "5"]
        author = Child("author", ["author", *binds, "--seed", str(AUTHOR_SEED), "--subs",
                                  *(str(100 + i) for i in range(subscribers)), *common],
                       work / "author.db", work / "author.log", work, prefix=topo.exec_prefix(topo.author_ns))
        subs = [Child(f"sub{i}", ["subscriber", "--connect", f"tcp://{topo.author_ip(i + 1)}:{port}", "--seed",
                                  str(100 + i), "--author-seed", str(AUTHOR_SEED), *common],
                      work / f"sub{i}.db", work / f"sub{i}.log", work, prefix=topo.exec_prefix(topo.sub_ns[i]))
                for i in range(subscribers)]
        parties = [author, *subs]
        tails = {c.name: LogTail(c.log) for c in parties}
        fig: dict[str, Any] = {}
        try:
            author.start()
            wait_line(tails["author"], "START", author, 60)
            for c in subs:
                c.start()
            for c in subs:
                wait_line(tails[c.name], "START", c, 60)
            time.sleep(1.0)
            # 1. Cut link 1: subscriber 0 is cut off, the others go on (THREATS 8: nobody stalls the others).
            topo.link(1, up=False)
            time.sleep(0.5)  # frames already in flight land
            cut_before = {c.name: _got(tails, c.name) for c in subs}
            time.sleep(cut_s)
            cut_after = {c.name: _got(tails, c.name) for c in subs}
            topo.link(1, up=True)
            fig["cut_s"] = cut_s
            fig["cut_sub_received_during_cut"] = cut_after["sub0"] - cut_before["sub0"]
            fig["others_received_during_cut"] = sum(cut_after[n] - cut_before[n] for n in cut_after if n != "sub0")
            t_restore = time.monotonic()
            while _got(tails, "sub0") == cut_after["sub0"] and time.monotonic() - t_restore < 30:
                time.sleep(0.05)
            fig["resumed_after_restore_s"] = round(time.monotonic() - t_restore, 2)
            # 2. Delay and loss on every link, both directions.
            for i in range(1, subscribers + 1):
                topo.impair(i, delay_ms, loss_pct)
            imp_before = {c.name: _got(tails, c.name) for c in parties}
            time.sleep(impair_s)
            fig["received_while_impaired"] = sum(_got(tails, c.name) - imp_before[c.name] for c in parties)
            fig["impairment"] = {"method": topo.method, "delay_ms_each_way": delay_ms, "loss_pct_each_way": loss_pct,
                                 "seconds": impair_s, **topo.impairment_stats()}
            for i in range(1, subscribers + 1):
                topo.clear(i)
            # 3. Everything published arrives.
            t_done = time.monotonic()
            while time.monotonic() - t_done < complete_timeout:
                for t in tails.values():
                    t.poll()
                if all(len(tails["author"].got[(b, 1)]) >= quota and len(tails[c.name].got[(b, 0)]) >= quota
                       for c in subs for b in [next(iter(tails[c.name].pub), "")] if b):
                    break
                time.sleep(0.1)
            fig["completion_after_faults_s"] = round(time.monotonic() - t_done, 1)
            time.sleep(1.0)
            for c in parties:
                c.stop()
            fig.update(analyse(work, subscribers, {c.name: c.life for c in parties}))
        finally:
            for c in parties:
                c.kill9()
    fig["elapsed_s"] = round(time.monotonic() - t0, 1)
    fig["messages_target"] = 2 * quota * subscribers
    fig["ok"] = (all(fig[k] == 0 for k in MUST_BE_ZERO) and fig["messages_delivered"] == fig["messages_target"]
                 and fig["cut_sub_received_during_cut"] == 0)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="author and subscribers in separate network namespaces, with faults")
    ap.add_argument("--subscribers", type=int, default=2)
    ap.add_argument("--quota", type=int, default=400, help="messages per chain (two chains per subscriber)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    reason = why_unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="chaos-netns-") as d:
        fig = scenario(Path(d), args.subscribers, args.quota)
    return emit(fig, args.out, args.json, 30)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
