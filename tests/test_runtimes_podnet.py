"""podnet's CNI plugin under real runtimes: containerd (ctr run --cni) and podman.

Each runtime runs inside a test host namespace with a real podnet agent; the conflist
chains the reference meta plugins (tuning, portmap, bandwidth) after podnet-cni, so the
runtimes also prove podnet's result works as their prevResult. Two containers talk
(ping both ways, an HTTP transfer); after they stop, no veth, pod namespace or address
of theirs remains (checked with `ip`, then with the store as a second witness).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import runtimes as rts
from podnet_fixtures import Agent, Namespaces, sh

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module", params=rts.RUNTIME_KINDS)
def podnet_session(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    busybox_image: Path,
    cni_plugin: str,
) -> Iterator[tuple[rts.RuntimeSession, Agent, str]]:
    kind = str(request.param)
    reason = rts.missing_runtime_reason(kind)
    if reason:
        pytest.skip(reason)
    spaces = Namespaces("pnt" + secrets.token_hex(2))
    work = tmp_path_factory.mktemp(f"podnet-{kind}")
    try:
        host = spaces.add("host")
        agent = Agent(host, str(work / "podnet.db"), str(work / "agent.sock")).start()
        subnet = f"10.78.{secrets.randbelow(250) + 1}.0/24"
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"pn{kind[:4]}{secrets.token_hex(2)}",
            "plugins": [
                {"type": "podnet-cni", "subnet": subnet, "mtu": 1400,
                 "agentSocket": agent.socket, "store": agent.store},
                {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "bandwidth", "ingressRate": 1000000000, "ingressBurst": 100000000},
            ],
        }
        try:
            with rts.runtime_session(
                kind, work / "rt", conflist, cni_bin_dirs=[os.path.dirname(cni_plugin),
                                                          "/usr/lib/cni"],
                image_tar=busybox_image, host_netns_name=host, conf_stem="zz",
            ) as s:
                yield s, agent, subnet
        finally:
            agent.stop()
    finally:
        spaces.remove_all()


def _store_allocations(agent: Agent, network: str) -> dict:
    from podnet.resources import open_resources

    with open_resources(agent.store) as res:
        return res.address_owners(network)


def test_two_containers_talk_and_leave_nothing(podnet_session) -> None:
    session, agent, subnet = podnet_session
    report = rts.run_two_containers_scenario(session.runtime, session.network)
    for ip in report.ips.values():
        assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(subnet), report.ips
    # run_two_containers_scenario already checked (with ip) that no veth and no pod
    # namespace remain; the store agrees that no address is still allocated.
    assert _store_allocations(agent, session.network) == {}
    assert "pnv" not in sh(session.host_netns, "ip -o link show")


def test_chained_plugins_applied_and_mtu(podnet_session) -> None:
    session, agent, subnet = podnet_session
    rt = session.runtime
    name = f"{session.prefix}-{secrets.token_hex(2)}-c"
    try:
        c = rt.run(name, ["sleep", "3600"], session.network)
        links = {lk["ifname"]: lk for lk in rts.ip_json(c.netns_path, "link", "show")}
        assert links["eth0"]["mtu"] == 1400
        sysctl = subprocess.run(
            ["nsenter", f"--net={c.netns_path}", "cat",
             "/proc/sys/net/ipv4/conf/eth0/accept_redirects"],
            capture_output=True, text=True, check=True).stdout
        assert sysctl.strip() == "0"  # tuning ran with podnet's prevResult
        # bandwidth put a tbf qdisc on the host veth named in podnet's result
        veths = rts.host_veths(session.host_netns)
        assert len(veths) == 1
        qdiscs = sh(session.host_netns, f"tc qdisc show dev {veths[0]}")
        assert "tbf" in qdiscs or "ingress" in qdiscs, qdiscs
    finally:
        rt.stop(name)
    assert not rts.wait_for(lambda: rts.host_veths(session.host_netns))
    assert _store_allocations(agent, session.network) == {}
