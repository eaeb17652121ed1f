"""The study's matrix as lab paths: which namespaces talk, in which lab, over what.

Why few labs, all up at once: a lab builds in about a second, and ratios are only
trustworthy between numbers taken close together on a shared, noisy machine. So every
lab the selected paths need is built first, then the bench measures round after round
over all paths (shuffled after the first), then everything is torn down.

  group    lab                                                  paths
  flat     vxlan pods, 2x2; 1 VM per host on a flat network     server-flat, vm-flat,
           with 1 pod (the VMs run their own vxlan cluster);    vm-pods-flat, same-pod,
           a direct veth pair; a service VIP (DNAT) in h1       same-host-bridge,
                                                                same-host-veth,
                                                                cross-host-vxlan(-dnat)
  vxlan    1 VM per host on a VXLAN network, 1 pod each          server-vxlan, vm-vxlan,
                                                                vm-pods-vxlan (double)
  vlan     the same on VLAN 100 (if the kernel has 802.1q)      server-vlan, vm-vlan,
                                                                vm-pods-vlan
  host-gw, udp, mtu1000   2 hosts x 1 pod on that backend       cross-host-host-gw,
                          (mtu1000: vxlan with pod MTU 1000)    cross-host-udp,
                                                                cross-host-vxlan-mtu1000
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from podnet.bench.endpoint import Endpoint
from podnet.lab import Lab, Topo

SERVICE_VIP = "10.96.0.10"
BENCH_NAT_TABLE = "podnet-bench-nat"
VETH_NET = "10.250.0"
# Long lease/resync periods: idle labs must stay quiet while another path is measured.
LAB_TIMING = {"lease_ttl": 600.0, "renew_margin": 120.0, "resync_period": 120.0}


@dataclass(frozen=True)
class PathDef:
    name: str
    title: str
    group: str


CATALOGUE = [
    PathDef("server-flat", "server to server, flat underlay (host eth0 to eth0)", "flat"),
    PathDef("server-vlan", "server to server over a VLAN network", "vlan"),
    PathDef("server-vxlan", "server to server over a VXLAN network", "vxlan"),
    PathDef("vm-flat", "VM to VM, flat network", "flat"),
    PathDef("vm-vlan", "VM to VM, VLAN network", "vlan"),
    PathDef("vm-vxlan", "VM to VM, VXLAN network", "vxlan"),
    PathDef("same-pod", "same pod, over lo", "flat"),
    PathDef("same-host-bridge", "pods on one host, through the pod bridge", "flat"),
    PathDef("same-host-veth", "two namespaces joined by a direct veth pair", "flat"),
    PathDef("cross-host-host-gw", "pods across hosts, host-gw routes", "host-gw"),
    PathDef("cross-host-vxlan", "pods across hosts, vxlan (pod MTU 1450)", "flat"),
    PathDef("cross-host-vxlan-mtu1000", "pods across hosts, vxlan, pod MTU 1000", "mtu1000"),
    PathDef("cross-host-vxlan-dnat", "pods across hosts, vxlan, through a service VIP (DNAT)",
            "flat"),
    PathDef("cross-host-udp", "pods across hosts, udp backend (userspace forwarder)", "udp"),
    PathDef("vm-pods-flat", "pods in VMs on a flat network (vxlan inside the VMs)", "flat"),
    PathDef("vm-pods-vlan", "pods in VMs on a VLAN network", "vlan"),
    PathDef("vm-pods-vxlan", "pods in VMs on a VXLAN network: the double overlay", "vxlan"),
]
GROUPS = ("flat", "vxlan", "vlan", "host-gw", "udp", "mtu1000")
GROUP_TAG = {"flat": "f", "vxlan": "x", "vlan": "v", "host-gw": "g", "udp": "u",
             "mtu1000": "m"}


@dataclass
class Wiring:
    """How one path is measured: who dials whom, at which address, with what around it."""

    client: Endpoint
    server: Endpoint
    target: str
    streams: tuple[int, ...] = (1, 4)
    around: Callable[[], AbstractContextManager[str]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Unavailable(Exception):
    """A path this machine cannot build (the reason is the kernel's own words)."""


# -- helpers ---------------------------------------------------------------------------
def _lab(stack: contextlib.ExitStack, name: str, topo: Topo, backend: str,
         **kw: Any) -> Lab:
    lab = Lab(topo, backend=backend, name=name, **LAB_TIMING, **kw)
    stack.callback(lab.down)
    return lab.up()


def _ep(lab: Lab, role: str, address: str) -> Endpoint:
    return Endpoint.namespace(lab.netns_of(role), address, label=role)


def _pod_mtu(netns_name: str) -> int:
    from podnet.kernel import links, netns

    with netns.iproute(netns_name) as ipr:
        index = links.lookup(ipr, "eth0")
        assert index is not None
        return int(links.get(ipr, index).get("IFLA_MTU"))


def _veth_pair(lab: Lab, mtu: int) -> tuple[Endpoint, Endpoint]:
    """Two namespaces joined by one veth pair (no bridge, no host): obs. 6's baseline.
    Named LAB-va / LAB-vb, so the lab's teardown removes them with everything else."""
    from podnet.kernel import addr, links, netns
    from podnet.lab import underlay

    a, b = f"{lab.name}-va", f"{lab.name}-vb"
    underlay.make_ns(a)
    underlay.make_ns(b)
    fd = netns.open_netns(b)
    try:
        with netns.iproute(a) as ipr:
            links.create_veth_into(ipr, "eth0", "eth0", fd, mtu=mtu)
            index = links.lookup(ipr, "eth0")
            assert index is not None
            addr.ensure_address(ipr, index, f"{VETH_NET}.1/24")
    finally:
        os.close(fd)
    with netns.iproute(b) as ipr:
        index = links.lookup(ipr, "eth0")
        assert index is not None
        addr.ensure_address(ipr, index, f"{VETH_NET}.2/24")
        links.set_up(ipr, index)
    return (Endpoint.namespace(a, f"{VETH_NET}.1", "veth-a"),
            Endpoint.namespace(b, f"{VETH_NET}.2", "veth-b"))


def _nft(netns_name: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns_name}", "nft", "-f", "-"],
                          input=script, capture_output=True, text=True, timeout=30)


def _tcp_open(client: Endpoint, target: str, port: int) -> bool:
    probe = client.run(["timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{target}/{port}"],
                       timeout=10)
    return probe.returncode == 0


@contextlib.contextmanager
def service_nat(host_ns: str, vip: str, backend: str, client: Endpoint,
                ports: tuple[int, int]) -> Iterator[str]:
    """A service VIP in front of `backend`, DNAT'ed in the client's host namespace (where
    kube-proxy would do it). podnet's own service proxy when it loads and passes a TCP
    probe; otherwise one nft DNAT rule the bench installs (and says so)."""
    iperf_port, rr_port = ports
    how = ""
    proxy = None
    try:
        from podnet.services.model import Service, ServicePort
        from podnet.services.proxy import ServiceProxy

        proxy = ServiceProxy(f"/run/netns/{host_ns}")
        proxy.sync_all([Service(name="bench", cluster_ip=vip, ports=(
            ServicePort(port=iperf_port, protocol="tcp", name="iperf"),
            ServicePort(port=rr_port, protocol="tcp", name="rr-tcp"),
            ServicePort(port=rr_port, protocol="udp", name="rr-udp")))],
            {"bench": [backend]})
        if _tcp_open(client, vip, rr_port):
            how = "podnet services (podnet.services.proxy, nftables DNAT)"
    except Exception:  # noqa: BLE001 - someone else's module, still being written
        how = ""
    if not how:
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.sync_all([], {})
        _nft(host_ns, "delete table ip podnet-svc\n")
        done = _nft(host_ns, f"""table ip {BENCH_NAT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {vip} tcp dport {{ {iperf_port}, {rr_port} }} dnat to {backend}
    ip daddr {vip} udp dport {rr_port} dnat to {backend}
  }}
}}
""")
        if done.returncode != 0:
            raise RuntimeError(f"nft DNAT in {host_ns}: {done.stderr.strip()}")
        how = "bench-installed DNAT (one nft rule in the client's host namespace)"
    try:
        yield how
    finally:
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.sync_all([], {})
            with contextlib.suppress(Exception):
                proxy.close()
        _nft(host_ns, "delete table ip podnet-svc\n")
        _nft(host_ns, f"delete table ip {BENCH_NAT_TABLE}\n")


# -- groups ----------------------------------------------------------------------------------
def _vm_paths(lab: Lab, net: str) -> dict[str, Wiring]:
    from podnet.lab import vms

    v1, v2 = lab.vms[0], lab.vms[-1]
    p1, p2 = lab.vm_pods[0], lab.vm_pods[-1]
    vm_mtu = _pod_mtu(v1.netns)
    out = {
        f"vm-{net}": Wiring(_ep(lab, v1.name, v1.ip), _ep(lab, v2.name, v2.ip), v2.ip,
                            notes={"vm_nic_mtu": vm_mtu}),
        f"vm-pods-{net}": Wiring(_ep(lab, p1.name, p1.ip or ""), _ep(lab, p2.name, p2.ip or ""),
                                 p2.ip or "", notes={"vm_nic_mtu": vm_mtu,
                                                     "pod_mtu": _pod_mtu(p1.netns)}),
    }
    if net != "flat":  # hosts over the VM network: addresses on their VM bridges
        a, b = vms.host_vm_ip(1), vms.host_vm_ip(2)
        out[f"server-{net}"] = Wiring(_ep(lab, "h1", a), _ep(lab, "h2", b), b,
                                      notes={"via": "the hosts' VM bridges"})
    return out


def group_flat(prefix: str, stack: contextlib.ExitStack, ports: tuple[int, int]
               ) -> dict[str, Wiring]:
    lab = _lab(stack, prefix + GROUP_TAG["flat"],
               Topo(hosts=2, pods_per_host=2, vms_per_host=1, vm_network="flat",
                    pods_per_vm=1), "vxlan")
    h1, h2 = lab.host("h1"), lab.host("h2")
    p11, p12, p21 = lab.pod("h1-p1"), lab.pod("h1-p2"), lab.pod("h2-p1")
    ip11, ip12, ip21 = p11.ip or "", p12.ip or "", p21.ip or ""
    pod_mtu = _pod_mtu(p11.netns)
    va, vb = _veth_pair(lab, pod_mtu)
    client = _ep(lab, p11.name, ip11)
    out = {
        "server-flat": Wiring(_ep(lab, "h1", h1.ip), _ep(lab, "h2", h2.ip), h2.ip),
        "same-pod": Wiring(_ep(lab, p11.name, "127.0.0.1"), _ep(lab, p11.name, "127.0.0.1"),
                           "127.0.0.1"),
        "same-host-bridge": Wiring(client, _ep(lab, p12.name, ip12), ip12,
                                   notes={"pod_mtu": pod_mtu}),
        "same-host-veth": Wiring(va, vb, vb.address, notes={"mtu": pod_mtu}),
        "cross-host-vxlan": Wiring(client, _ep(lab, p21.name, ip21), ip21, (1, 2, 4, 8),
                                   notes={"pod_mtu": pod_mtu}),
        "cross-host-vxlan-dnat": Wiring(
            _ep(lab, p11.name, ip11), _ep(lab, p21.name, ip21), SERVICE_VIP,
            around=lambda: service_nat(h1.netns, SERVICE_VIP, ip21, client, ports),
            notes={"vip": SERVICE_VIP}),
    }
    out.update(_vm_paths(lab, "flat"))
    return out


def group_vm_network(net: str) -> Callable[[str, contextlib.ExitStack, tuple[int, int]],
                                           dict[str, Wiring]]:
    def build(prefix: str, stack: contextlib.ExitStack, ports: tuple[int, int]
              ) -> dict[str, Wiring]:
        if net == "vlan":
            reason = vlan_unavailable(prefix)
            if reason:
                raise Unavailable(reason)
        lab = _lab(stack, prefix + GROUP_TAG[net],
                   Topo(hosts=2, pods_per_host=0, vms_per_host=1, vm_network=net,
                        pods_per_vm=1), "vxlan")
        return _vm_paths(lab, net)

    return build


def vlan_unavailable(prefix: str) -> str | None:
    """The kernel's refusal to make an 802.1q device (tried in a scratch namespace)."""
    from podnet.kernel import netns
    from podnet.lab import underlay, vms

    probe = f"{prefix}-probe"
    underlay.make_ns(probe)
    try:
        err = vms.vlan_error(probe)
    finally:
        netns.remove(probe)
    return f"802.1q VLAN devices are absent from this kernel: {err}" if err else None


def group_backend(backend: str, path: str, options: dict[str, Any] | None = None
                  ) -> Callable[[str, contextlib.ExitStack, tuple[int, int]],
                                dict[str, Wiring]]:
    def build(prefix: str, stack: contextlib.ExitStack, ports: tuple[int, int]
              ) -> dict[str, Wiring]:
        tag = GROUP_TAG["mtu1000" if options else backend]
        lab = _lab(stack, prefix + tag, Topo(hosts=2, pods_per_host=1), backend,
                   backend_options=options)
        p1, p2 = lab.pod("h1-p1"), lab.pod("h2-p1")
        return {path: Wiring(_ep(lab, p1.name, p1.ip or ""), _ep(lab, p2.name, p2.ip or ""),
                             p2.ip or "", notes={"pod_mtu": _pod_mtu(p1.netns)})}

    return build


BUILDERS: dict[str, Callable[[str, contextlib.ExitStack, tuple[int, int]],
                             dict[str, Wiring]]] = {
    "flat": group_flat,
    "vxlan": group_vm_network("vxlan"),
    "vlan": group_vm_network("vlan"),
    "host-gw": group_backend("host-gw", "cross-host-host-gw"),
    "udp": group_backend("udp", "cross-host-udp"),
    "mtu1000": group_backend("vxlan", "cross-host-vxlan-mtu1000", {"MTU": 1000}),
}
