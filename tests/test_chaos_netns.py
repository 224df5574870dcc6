"""Network faults across hosts: the author and two subscribers in separate Linux network namespaces joined by veth
pairs (chaos/netns.py); a link cut and restored, then 50 ms delay and 10 % loss each way on every link; nothing
acknowledged is lost and delivery completes (THREATS 4), a cut subscriber stalls no one (THREATS 8)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chaos.crash import MUST_BE_ZERO
from chaos.netns import Topology, scenario, why_unavailable

_REASON = why_unavailable()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=f"network namespaces unavailable: {_REASON}")


@needs_netns
def test_topology_isolates_and_cuts_links() -> None:
    with Topology(2, tag="t0") as topo:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert topo.author_ns in names and all(ns in names for ns in topo.sub_ns)
        (ans, adev), (sns, _sdev) = topo.veths(1)
        # The addresses exist only inside the namespaces; the host never sees the devices.
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        assert "10.200." not in host and adev not in host
        inside = subprocess.run(["ip", "-n", sns, "-o", "addr"], capture_output=True, text=True, check=True).stdout
        assert topo.sub_ip(1) in inside
        # No route out of a subscriber's namespace but its own link (no default route).
        routes = subprocess.run(["ip", "-n", sns, "route"], capture_output=True, text=True, check=True).stdout
        assert "default" not in routes
        topo.link(1, up=False)
        state = subprocess.run(["ip", "-n", ans, "link", "show", adev], capture_output=True, text=True,
                               check=True).stdout
        assert "state DOWN" in state or ",UP" not in state
        topo.link(1, up=True)
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert topo.author_ns not in after and not any(ns in after for ns in topo.sub_ns)


@needs_netns
def test_cut_delay_and_loss_across_namespaces_lose_nothing(tmp_path: Path) -> None:
    fig = scenario(tmp_path, subscribers=2, quota=400)
    for k in MUST_BE_ZERO:
        assert fig[k] == 0, (k, fig)
    assert fig["messages_delivered"] == fig["messages_target"] == 1600
    # The cut was real (nothing reached the cut subscriber), the other kept receiving, and delivery resumed.
    assert fig["cut_sub_received_during_cut"] == 0
    assert fig["others_received_during_cut"] > 0
    assert fig["resumed_after_restore_s"] < 30
    # The impairment was real: packets were dropped and delayed by the kernel, and traffic still flowed.
    assert fig["impairment"]["dropped"] > 0 and fig["impairment"]["delayed"] > 0
    assert fig["received_while_impaired"] > 0
    assert fig["ok"]
