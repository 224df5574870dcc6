"""Flood harness: many subscribers on one author, one slow subscriber and one hostile flooder (THREATS 8).

    python chaos/flood.py [--subscribers 1000] [--hosts 2] [--phase 6] [--rounds 5] [--pin] [--no-control]
                          [--json] [--out FILE]

One author process, ``--hosts`` processes each hosting hundreds of Subscriber+SubscriberEndpoint pairs in one event
loop (each with its own SQLite store and handshake), and one more process hosting the slow subscriber.  The author
publishes round-robin into every branch at the system's capacity (a per-branch window of unacknowledged messages).
Phases of equal length in the same run, in this order: base, ``--rounds`` times (decoy, attack), decoy, base.

* **base**   -- everyone reads, nobody floods;
* **decoy**  -- the control: the flooder sends the same frames at the same rate into a sink process, an idle
  author endpoint with no channel behind it, which refuses them as the author's endpoint would.  Everything here
  shares two cores, so the flood's own CPU (the flooder, the kernel, the receiving and refusing) is taken from the
  subscribers whatever its target; in a deployment the attacker and the subscribers are on other hosts.  The decoy
  phases carry that load without touching the author process;
* **attack** -- the slow subscriber's process is stopped (SIGSTOP: it stops reading entirely) and the flooder
  sends garbage, frame-looking garbage, HELLO and SUBSCRIBE requests and PINGs at the author from one peer.

Each attack is compared with the mean of the decoy phases on both sides of it (the machine is shared: short
interleaved phases cancel the drift of the background load, which over a minute is larger than the effect
measured): ``throughput_ratio`` is the median of those per-round ratios -- what the author's handling of the
flood and the stopped reader cost the others -- and ``throughput_ratio_vs_no_flood`` compares all attacks with
the two no-flood phases (this machine's CPU included).  ``--no-control`` alternates base and attack phases.

``--pin`` gives the author a CPU of its own and puts every other process on the remaining one(s): the topology of
a deployment, where subscribers and attacker run on other hosts and the author's CPU is the only resource they
share.  Without it, on two cores, the author only gets the share of a CPU the scheduler leaves it next to two
busy subscriber hosts, and whatever the flood costs it comes straight off the others' throughput.  Pinned runs
are best compared without the decoy (``--pin --no-control``): the flooder's own CPU is small and lands on the
subscribers' core, while a decoy's receiving would too, unlike the real flood's.

Figures: the good subscribers' throughput in each phase and its ratio (target >= 0.9), per-subscriber ratios, the
author's RSS (bounded: no growth with the flood), the endpoint's queues (bounded by ``send_queue``), and how the
flood was refused: ``over_budget`` (per-peer token bucket, before the core), ``malformed`` (strict decoder, before
the core) against ``subscribe_refused`` (SUBSCRIBE requests that reached the core's unsealing): the flooder's
SUBSCRIBE requests beyond the budget never cost an X25519 operation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.figures import emit

HERE = Path(__file__).resolve().parent
PARTY = HERE / "flood_party.py"


class Proc:
    """A child whose stdout lines are collected by a thread (killed in :meth:`kill`)."""

    def __init__(self, *args: str, stderr: Path, stdin: bool = False, cpus: set[int] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        with open(stderr, "ab") as err:
            self.p = subprocess.Popen([sys.executable, str(PARTY), *args], stdout=subprocess.PIPE, stderr=err,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, env=env)
        if cpus:
            # Set at once: the child is still importing, its threads (ZeroMQ's I/O thread) are created later and
            # inherit the mask.
            os.sched_setaffinity(self.p.pid, cpus)
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._q.put(line.rstrip("\n"))

    def poll(self) -> list[str]:
        while True:
            try:
                self.lines.append(self._q.get_nowait())
            except queue.Empty:
                return self.lines

    def wait_for(self, prefix: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for x in self.poll():
                if x.startswith(prefix):
                    return x
            if self.p.poll() is not None:
                raise RuntimeError(f"child exited ({self.p.returncode}) before {prefix!r}")
            time.sleep(0.05)
        raise RuntimeError(f"no {prefix!r} within {timeout} s")

    def tell(self, line: str) -> None:
        """One command line on the child's stdin."""
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.poll()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.p.stdout, self.p.stdin):
            if f is not None:
                with contextlib.suppress(OSError):  # stdin: the child may be gone (broken pipe on flush)
                    f.close()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.kill()
            self.p.wait(10)
        self._close_pipes()


_Report = tuple[float, list[int], float]


def _report_lines(host: Proc) -> list[tuple[float, str]]:
    """The host's ``C <time> <counts> <cpu>`` lines so far, as (time, the rest unparsed)."""
    out = []
    for x in host.poll():
        if x.startswith("C "):
            _, ts, rest = x.split(" ", 2)
            out.append((float(ts), rest))
    return out


def _parse(ts: float, rest: str) -> _Report:
    js, cpu = rest.rsplit(" ", 1)
    return ts, json.loads(js), float(cpu)


def _counts_at(host: Proc, t: float) -> _Report:
    """The host's last report at or before ``t``: (its time, per-subscriber counts, its CPU seconds)."""
    before = [line for line in _report_lines(host) if line[0] <= t]
    return _parse(*before[-1]) if before else (0.0, [], 0.0)


def _first_after(host: Proc, t: float) -> _Report:
    """The host's first report after ``t`` (see :func:`_counts_at`)."""
    for ts, rest in _report_lines(host):
        if ts > t:
            return _parse(ts, rest)
    raise RuntimeError("a host stopped reporting")


def _span(host: Proc, t0: float, t1: float) -> tuple[_Report, _Report]:
    """The host's reports bracketing [t0, t1]: its loop may have been too busy to report inside a short phase, then
    the span is widened to the next report."""
    a = _counts_at(host, t0)
    b = _counts_at(host, t1)
    if b[0] <= a[0]:
        b = _first_after(host, a[0])
    return a, b


def _rates(hosts: list[Proc], t0: float, t1: float) -> list[float]:
    out: list[float] = []
    for h in hosts:
        (a_t, a, _), (b_t, b, _) = _span(h, t0, t1)
        out += [(y - x) / (b_t - a_t) for x, y in zip(a, b, strict=True)]
    return out


def _cpu(hosts: list[Proc], t0: float, t1: float) -> float:
    """CPU seconds per second used by all of ``hosts`` between ``t0`` and ``t1`` (1.0 = one core busy)."""
    total = 0.0
    for h in hosts:
        (a_t, _, a), (b_t, _, b) = _span(h, t0, t1)
        total += (b - a) / (b_t - a_t)
    return total


def _proc_stat() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return sum(f) - idle, sum(f)


def _busy(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Cores busy on average between two :func:`_proc_stat` readings (the machine's, every process)."""
    return round((b[0] - a[0]) / max(1.0, b[1] - a[1]) * (os.cpu_count() or 1), 2)


def _author_stats(author: Proc, t0: float, t1: float) -> list[dict[str, Any]]:
    return [s for s in (json.loads(x[2:]) for x in author.poll() if x.startswith("S ")) if t0 <= s["t"] <= t1]


def run(subscribers: int = 1000, hosts: int = 2, phase_s: float = 6.0, rate: float = 20_000, warmup_s: float = 3.0,
        workdir: Path | None = None, ready_timeout: float = 900.0, progress: bool = False,
        control: bool = True, rounds: int = 5, pin: bool = False) -> dict[str, Any]:
    """Run both phases and return the figures (see the module docstring)."""
    tmp = tempfile.TemporaryDirectory(prefix="chaos-flood-") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    good = subscribers - 1
    first = 1000
    procs: list[Proc] = []
    t_start = time.monotonic()
    try:
        cpus = sorted(os.sched_getaffinity(0))
        author_cpus = others = None
        if pin and len(cpus) >= 2:
            # The author on a core of its own, everyone else (subscriber hosts, slow peer, flooder, sink) on the
            # rest: the topology of a deployment, where the subscribers and the attacker run on other hosts and the
            # author's own CPU is the only resource they share.
            author_cpus, others = {cpus[0]}, set(cpus[1:])
        author = Proc("author", "--db", str(work / "author.db"), "--subs", str(subscribers), "--first-seed",
                      str(first), "--push-seed", str(first + subscribers - 1), stderr=work / "author.stderr",
                      cpus=author_cpus)
        procs.append(author)
        addr = author.wait_for("READY", 60).split()[1]
        per = -(-good // hosts)
        host_procs = []
        for h in range(hosts):
            lo, n = first + h * per, min(per, good - h * per)
            hp = Proc("host", "--connect", addr, "--dir", str(work / f"h{h}"), "--subs", str(n), "--first-seed",
                      str(lo), stderr=work / f"h{h}.stderr", cpus=others)
            procs.append(hp)
            host_procs.append(hp)
        slow = Proc("host", "--connect", addr, "--dir", str(work / "slow"), "--subs", "1", "--first-seed",
                    str(first + good), "--queue", "10", stderr=work / "slow.stderr", cpus=others)
        procs.append(slow)
        for hp in [*host_procs, slow]:
            hp.wait_for("READY", ready_timeout)
        setup_s = time.monotonic() - t_start
        if progress:
            print(f"[{setup_s:.0f}s] {subscribers} subscribers admitted", file=sys.stderr)
        extra = []
        if control:
            sink = Proc("sink", stderr=work / "sink.stderr", cpus=others)
            procs.append(sink)
            extra = ["--sink", sink.wait_for("READY", 60).split()[1]]
        # One flooder for every phase, told on stdin where to send (connected from the start: its peer record at the
        # author is created, and forgotten when idle, like any peer's).
        flooder = Proc("flooder", "--connect", addr, "--rate", str(rate), "--stdin", *extra,
                       stderr=work / "flooder.stderr", stdin=True, cpus=others)
        procs.append(flooder)
        time.sleep(warmup_s)

        def phase(name: str, target: str) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
            if progress:
                print(f"phase {name}", file=sys.stderr)
            flooder.tell(target)
            time.sleep(1.0)
            t0, s0 = time.time(), _proc_stat()
            time.sleep(phase_s)
            return t0, time.time(), s0, _proc_stat()

        # Phases (the 2-core machine is shared: short interleaved phases cancel the drift of the background load,
        # which over a minute is larger than the effect measured):
        #   base   -- no flood at all;
        #   decoy  -- (control) the same flood at the same rate into a process that discards it: the machine
        #             carries the flood's CPU (flooder, kernel, a receiving ZeroMQ thread) but the author is left
        #             alone, as when the attacker is on another host;
        #   attack -- the flood at the author, and the slow subscriber stopped (SIGSTOP: it reads nothing).
        # Each attack is compared with the reference phases on both sides of it (decoy with the control, else base).
        ref_name = "decoy" if control else "base"
        plan = [*[ref_name, "attack"] * rounds, ref_name]
        if control:
            plan = ["base", *plan, "base"]
        spans: dict[str, list[tuple[float, float, tuple[float, float], tuple[float, float]]]] = {}
        for name in plan:
            if name == "attack":
                slow.p.send_signal(signal.SIGSTOP)
            spans.setdefault(name, []).append(phase(name, {"base": "off", "decoy": "sink"}.get(name, "author")))
            if name == "attack":
                slow.p.send_signal(signal.SIGCONT)
                flooder.tell("off")
        flooder.tell("stop")
        sent = json.loads(flooder.wait_for("SENT", 60)[5:])
        time.sleep(1.0)
        for hp in procs:
            hp.poll()

        def mean_rates(name: str) -> list[float]:
            runs = [_rates(host_procs, t0, t1) for t0, t1, _, _ in spans[name]]
            return [statistics.fmean(xs) for xs in zip(*runs, strict=True)]

        def mean_cpu(name: str) -> float:
            return round(statistics.fmean(_cpu(host_procs, t0, t1) for t0, t1, _, _ in spans[name]), 2)

        def mean_busy(name: str) -> float:
            return round(statistics.fmean(_busy(s0, s1) for _, _, s0, s1 in spans[name]), 2)

        (a0, a1, _, _), (c0, c1, _, _) = spans["base"][0], spans["base"][-1]
        b0, b1 = spans["attack"][0][0], spans["attack"][-1][1]
        pair_ratios: list[float] = []
        if len(spans[ref_name]) > len(spans["attack"]):
            for i, (t0, t1, _, _) in enumerate(spans["attack"]):
                before, after = spans[ref_name][i], spans[ref_name][i + 1]
                ref_i = (sum(_rates(host_procs, before[0], before[1]))
                         + sum(_rates(host_procs, after[0], after[1]))) / 2
                pair_ratios.append(sum(_rates(host_procs, t0, t1)) / ref_i if ref_i else 0.0)
        base, att = mean_rates("base"), mean_rates("attack")
        base1 = _rates(host_procs, a0, a1)
        base2 = _rates(host_procs, c0, c1)
        ref = mean_rates(ref_name)
        st_a = _author_stats(author, a0, a1)
        st_b = _author_stats(author, b0, b1 + 1.5)
        st_before_attack = _author_stats(author, 0, b0 - 1.0)[-1]
        st_end = st_b[-1]
        ratios = sorted(b / a for a, b in zip(ref, att, strict=True) if a > 0)
        frames_total = sum(v for k, v in sent.items() if k not in ("hwm_full", "cpu_ms"))

        def delta(k: str) -> int:
            return int(st_end.get(k, 0)) - int(st_before_attack.get(k, 0))

        fig: dict[str, Any] = {
            "subscribers": subscribers,
            "hosts": hosts,
            "phase_s": phase_s,
            "setup_s": round(setup_s, 1),
            "baseline_msgs_per_s": round(sum(base), 1),
            "baseline_before_msgs_per_s": round(sum(base1), 1),
            "baseline_after_msgs_per_s": round(sum(base2), 1),
            "attack_msgs_per_s": round(sum(att), 1),
            # The target (>= 0.9): with the control, against the decoy phases (the flood's CPU on the machine in
            # both, only its target differs); without it, against no flood at all.
            "control": control,
            "reference_msgs_per_s": round(sum(ref), 1),
            "rounds": rounds,
            "throughput_ratio": (round(statistics.median(pair_ratios), 3) if pair_ratios
                                 else round(sum(att) / sum(ref), 3) if sum(ref) else 0.0),
            "throughput_ratio_per_round": [round(r, 3) for r in pair_ratios],
            "throughput_ratio_pooled": round(sum(att) / sum(ref), 3) if sum(ref) else 0.0,
            "throughput_ratio_vs_no_flood": round(sum(att) / sum(base), 3) if sum(base) else 0.0,
            "per_subscriber_ratio_min": round(ratios[0], 3) if ratios else 0.0,
            "per_subscriber_ratio_p10": round(ratios[len(ratios) // 10], 3) if ratios else 0.0,
            "per_subscriber_ratio_median": round(statistics.median(ratios), 3) if ratios else 0.0,
            "good_subscribers_starved": sum(1 for r in att if r == 0),
            "author_rss_mb_baseline_max": round(max(s["rss_kb"] for s in st_a) / 1024, 1),
            "author_rss_mb_attack_max": round(max(s["rss_kb"] for s in st_b) / 1024, 1),
            "author_queued_frames_max": max(s["queued_frames"] for s in st_b),
            "author_max_queue_seen": st_end["max_queue_seen"],
            "author_send_dropped_attack": delta("send_dropped"),
            "author_peers_expired_attack": delta("peers_expired"),
            "flood_frames_sent": frames_total,
            "flood_sent_by_shape": sent,
            "flood_refused_over_budget": delta("over_budget"),
            "flood_refused_malformed": delta("malformed"),
            "flood_subscribe_sent": int(sent.get("subscribe", 0)),
            "flood_subscribe_reached_core": delta("subscribe_refused"),
            "flood_hello_sent": int(sent.get("hello", 0)),
            "author_published_total": st_end.get("published", 0),
            # CPU seconds per second of the author in each phase (1.0 = one core busy)
            "author_cpu_baseline": round((st_a[-1]["cpu_s"] - st_a[0]["cpu_s"]) / (st_a[-1]["t"] - st_a[0]["t"]), 2),
            "author_cpu_attack": round((st_b[-1]["cpu_s"] - st_b[0]["cpu_s"]) / (st_b[-1]["t"] - st_b[0]["t"]), 2),
            "flooder_cpu_s": round(sent.get("cpu_ms", 0) / 1000, 2),
            # CPU of the good subscribers' processes: if the system is CPU-bound, any CPU the flood costs anyone
            # (the flooder itself included) is taken from them on this 2-core machine.
            "hosts_cpu": {k: mean_cpu(k) for k in spans},
            "machine_cpus": os.cpu_count(),
            "pinned": {"author": sorted(author_cpus), "others": sorted(others or ())} if author_cpus else None,
            "machine_busy": {k: mean_busy(k) for k in spans},
        }
        fig["author_rss_growth_mb"] = round(fig["author_rss_mb_attack_max"] - fig["author_rss_mb_baseline_max"], 1)
        fig["ok"] = bool(fig["throughput_ratio"] >= 0.9 and fig["author_rss_growth_mb"] < 64
                         and fig["flood_subscribe_reached_core"] < fig["flood_subscribe_sent"] / 10
                         and fig["good_subscribers_starved"] == 0)
        fig["elapsed_s"] = round(time.monotonic() - t_start, 1)
        return fig
    finally:
        for pr in procs:
            pr.kill()
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="1,000 subscribers, one slow and one flooding: do the others keep up?")
    ap.add_argument("--subscribers", type=int, default=1000, help="all subscribers, the slow one included")
    ap.add_argument("--hosts", type=int, default=2, help="processes hosting the good subscribers")
    ap.add_argument("--phase", type=float, default=6.0, help="seconds of each phase")
    ap.add_argument("--rounds", type=int, default=5, help="attack phases, each between two decoy phases")
    ap.add_argument("--rate", type=float, default=20_000, help="flood frames per second")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the decoy phases: compare the attack with no flood at all (on one machine the "
                         "flood's own CPU then counts against the author)")
    ap.add_argument("--pin", action="store_true",
                    help="the author on a CPU of its own, every other process on the others (as on separate hosts)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workdir", type=Path, help="keep stores and stderr here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    fig = run(args.subscribers, args.hosts, args.phase, args.rate, workdir=args.workdir, progress=not args.json,
              control=not args.no_control, rounds=args.rounds, pin=args.pin)
    return emit(fig, args.out, args.json, 32)


if __name__ == "__main__":
    sys.exit(main())
