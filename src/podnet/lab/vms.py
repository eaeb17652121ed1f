"""VMs in the lab: namespaces on a per-host "VM bridge", joined across hosts the way
Neutron's linuxbridge agent joins them, optionally running a podnet cluster of their own
(containers in VMs: the overlay inside an overlay).

Why a VM is a namespace: what the 2015 study's VM rows cost is the extra hops (the tap,
the VM bridge, the provider network between hosts), not a hypervisor; a namespace on a
veth "tap" has exactly those hops and nothing else. Neutron's three network types:

  flat   the VM bridge enslaves a second veth into the underlay switch (the "physical
         network"): VMs of all hosts share one bridged L2.
  vlan   the same veth, but the VM bridge enslaves its 802.1q child (VLAN 100). Kernels
         without 8021q refuse the child; `vlan_error()` tells why, in the kernel's words.
  vxlan  a kernel VXLAN device per host (VNI 100, UDP 4789, learning off), enslaved to the
         VM bridge, with static FDB entries to the other hosts, as l2population writes
         them: the all-zero MAC for flooding, each remote VM's MAC for unicast. The VM NIC
         gets the underlay MTU minus 50 (1450), so a podnet agent inside the VM gives its
         pods 1400 by itself: the double overlay subtracts twice.

Address plan: VM network 172.31.0.0/16; host hI's VM bridge 172.31.I.1 (so hosts can
talk over the VM network too: the study's server-to-server on VLAN or VXLAN); VM hI-vmJ
172.31.I.(10+J), MAC 02:51:ac:1f:I:(10+J). Pods in VMs get 10.245.0.0/16 from the VMs'
agents, which share their own SQLite store (vms.db in the lab dir): a tenant's cluster
knows nothing of the hosts' one, and its network is also called `labnet`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from podnet.agent.server import call
from podnet.errors import INVALID_CONFIG, KERNEL_FAILURE, TRY_AGAIN_LATER, PodnetError
from podnet.kernel import addr, links, netns
from podnet.kernel import vlan as kvlan
from podnet.kernel import vxlan as kvxlan
from podnet.lab import procs, state, underlay
from podnet.lab.state import OVERLAY_BACKENDS, HostState, LabState, VmState

if TYPE_CHECKING:
    from podnet.lab.lab import Lab

VM_BRIDGE = "vmbr0"
VM_UPLINK = "vmup"  # flat / vlan: the host's veth into the underlay switch
VM_VXLAN = "vmvx0"
VLAN_ID = 100
VM_VNI = 100
VM_VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
VM_PREFIX = 16
VM_POD_CIDR = "10.245.0.0/16"
VM_NIC = "eth0"
ZERO_MAC = "00:00:00:00:00:00"


# -- plan ------------------------------------------------------------------------------
def vm_name(host: str, j: int) -> str:
    return f"{host}-vm{j}"


def vm_ip(host_index: int, j: int) -> str:
    return f"172.31.{host_index}.{10 + j}"


def vm_mac(host_index: int, j: int) -> str:
    return f"02:51:ac:1f:{host_index:02x}:{10 + j:02x}"


def host_vm_ip(host_index: int) -> str:
    """Host hI's own address on the VM network (on its VM bridge)."""
    return f"172.31.{host_index}.1"


def vm_store_url(lab: str) -> str:
    return os.path.join(state.lab_dir(lab), "vms.db")


# -- kernel ------------------------------------------------------------------------------
def vlan_error(ns: str) -> str | None:
    """None if this kernel makes 802.1q devices, else its refusal in its own words."""
    return kvlan.unsupported_reason(ns)


def _vm_bridge(h: HostState, mtu: int | None) -> None:
    with netns.iproute(h.netns) as ipr:
        br = links.ensure_bridge(ipr, VM_BRIDGE, mtu=mtu)
        addr.ensure_address(ipr, br, f"{host_vm_ip(h.index)}/{VM_PREFIX}")


def _uplink_into_switch(st: LabState, h: HostState) -> None:
    """flat / vlan: a second veth from the underlay switch into the host (`vmup`)."""
    sw = state.netns_name(st.name, st.switch_roles()[h.segment - 1])
    underlay.plug(sw, f"{h.name}v", h.netns, VM_UPLINK)
    with kvlan.iproute_ext_ack(h.netns) as ipr:
        up = links.lookup(ipr, VM_UPLINK)
        br = links.lookup(ipr, VM_BRIDGE)
        assert up is not None and br is not None
        port = up if st.vm_network == "flat" else \
            kvlan.create(ipr, up, f"{VM_UPLINK}.{VLAN_ID}", VLAN_ID)
        links.attach_to_bridge(ipr, port, br, hairpin=False)


def _vxlan_uplink(st: LabState, h: HostState, mtu: int) -> None:
    """vxlan: the VM network's VTEP on the host's underlay, enslaved to the VM bridge."""
    with netns.iproute(h.netns) as ipr:
        eth0 = links.lookup(ipr, underlay.UPLINK)
        br = links.lookup(ipr, VM_BRIDGE)
        assert eth0 is not None and br is not None
        index = kvxlan.ensure_vxlan(ipr, VM_VXLAN, vni=VM_VNI, port=VM_VXLAN_PORT,
                                    local=h.ip, underlay_index=eth0, mtu=mtu, mac=None)
        links.attach_to_bridge(ipr, index, br, hairpin=False)


def _vxlan_fdb(st: LabState) -> None:
    """l2population: flood to every other host, unicast each remote VM's MAC to its host."""
    for h in st.hosts:
        with netns.iproute(h.netns) as ipr:
            index = links.lookup(ipr, VM_VXLAN)
            assert index is not None
            for o in st.hosts:
                if o.name == h.name:
                    continue
                kvxlan.append_fdb(ipr, index, ZERO_MAC, o.ip)
                for v in st.vms:
                    if v.host == o.name:
                        kvxlan.replace_fdb(ipr, index, v.mac, o.ip)


def _make_vm(h: HostState, v: VmState, mtu: int) -> None:
    """The VM namespace, its NIC on the host's VM bridge through a veth "tap"."""
    underlay.make_ns(v.netns)
    fd = netns.open_netns(v.netns)
    try:
        with netns.iproute(h.netns) as ipr:
            br = links.lookup(ipr, VM_BRIDGE)
            assert br is not None
            links.create_veth_into(ipr, f"tap{v.name.split('-')[-1]}", VM_NIC, fd, mtu=mtu,
                                   master=br)
    finally:
        os.close(fd)
    with netns.iproute(v.netns) as ipr:
        nic = links.lookup(ipr, VM_NIC)
        assert nic is not None
        links.set_mac(ipr, nic, v.mac)
        addr.ensure_address(ipr, nic, f"{v.ip}/{VM_PREFIX}")
        links.set_up(ipr, nic)
    underlay.forwarding_on(v.netns)


def _underlay_mtu(h: HostState) -> int:
    with netns.iproute(h.netns) as ipr:
        index = links.lookup(ipr, underlay.UPLINK)
        assert index is not None
        return int(links.get(ipr, index).get("IFLA_MTU"))


# -- the VMs' own cluster ----------------------------------------------------------------
def _create_vm_network(st: LabState) -> None:
    from podnet.model import Network
    from podnet.resources import open_resources

    backend = st.vm_backend or "vxlan"
    net = Network(name=st.network, driver=backend, subnet=VM_POD_CIDR, subnet_len=24,
                  backend={"Type": backend})
    with open_resources(st.vm_store_url or "") as res:
        res.create_network(net)


def _agent_cmd(st: LabState, v: VmState) -> list[str]:
    from podnet.lab.lab import _num

    return ["nsenter", f"--net={netns.netns_path(v.netns)}", sys.executable, "-m", "podnet",
            "--store", st.vm_store_url or "", "--socket", v.socket, "agent",
            "--node-name", v.name, "--public-ip", v.ip,
            "--lease-ttl", _num(st.lease_ttl), "--renew-margin", _num(st.renew_margin),
            "--resync-period", _num(st.resync_period)]


def _spawn_agents(lab: Lab) -> None:
    from podnet.lab.lab import _src_dir

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_src_dir(), env.get("PYTHONPATH")) if p)
    for v in lab.state.vms:
        with open(v.log, "ab") as log:
            proc = subprocess.Popen(_agent_cmd(lab.state, v), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, env=env, start_new_session=True)
        lab._popens[proc.pid] = proc
        v.agent_pid = proc.pid
        lab._save()


def _ready(st: LabState, v: VmState) -> tuple[bool, str]:
    try:
        status = call(v.socket, "status", timeout=2.0)
    except (OSError, PodnetError) as exc:
        return False, f"not answering ({exc})"
    errors = (status or {}).get("errors") or []
    if errors:
        raise PodnetError(INVALID_CONFIG, f"agent on {v.name} reports: {errors[0]}")
    lease = ((status or {}).get("leases") or {}).get(st.network) or {}
    if not lease.get("subnet"):
        return False, "no subnet leased yet"
    v.subnet = str(lease["subnet"])
    missing = {o.name for o in st.vms if o.name != v.name} - set(lease.get("peers") or [])
    return (not missing), f"peers missing: {', '.join(sorted(missing))}"


def _wait_agents(lab: Lab) -> None:
    deadline = time.monotonic() + lab.start_timeout
    pending = {v.name: v for v in lab.state.vms}
    why: dict[str, str] = {}
    while pending:
        for name, v in list(pending.items()):
            if v.agent_pid is None or not procs.alive(v.agent_pid):
                raise PodnetError(KERNEL_FAILURE, f"agent in VM {name} exited during start-up",
                                  f"log {v.log}")
            ok, why[name] = _ready(lab.state, v)
            if ok:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise PodnetError(TRY_AGAIN_LATER, "VM agents not ready",
                              "; ".join(f"{n}: {why.get(n)}" for n in sorted(pending)))
        time.sleep(0.05)
    lab._save()


def _attach_vm_pods(lab: Lab) -> None:
    """CNI ADD each VM's pods through the VM's own agent (the shim exec'd in the VM)."""
    lab._add_pods([(v, f"{v.name}-p{k}") for v in lab.state.vms
                   for k in range(1, lab.state.pods_per_vm + 1)])


# -- entry point ----------------------------------------------------------------------------
def build(lab: Lab) -> None:
    """Add the topology's VMs to a lab whose hosts are up (called from Lab._build)."""
    topo, st = lab.topo, lab.state
    if topo.vm_backend is not None and topo.vm_backend not in OVERLAY_BACKENDS:
        raise PodnetError(INVALID_CONFIG, f"unknown vm_backend {topo.vm_backend!r}",
                          f"known: {', '.join(OVERLAY_BACKENDS)}")
    st.vm_network, st.vm_backend, st.pods_per_vm = (topo.vm_network, topo.vm_backend,
                                                     topo.pods_per_vm)
    st.vm_store_url = vm_store_url(st.name)
    for h in st.hosts:
        for j in range(1, topo.vms_per_host + 1):
            name = vm_name(h.name, j)
            st.vms.append(VmState(name=name, host=h.name, index=j,
                                  netns=state.netns_name(st.name, name),
                                  ip=vm_ip(h.index, j), mac=vm_mac(h.index, j),
                                  socket=state.agent_socket(st.name, name),
                                  log=state.agent_log(st.name, name)))
    lab._save()  # from here on, teardown finds every VM namespace and agent
    for h in st.hosts:
        mtu = _underlay_mtu(h) - VXLAN_OVERHEAD if st.vm_network == "vxlan" else None
        _vm_bridge(h, mtu)
        if st.vm_network == "vxlan":
            _vxlan_uplink(st, h, mtu or 1450)
        else:
            _uplink_into_switch(st, h)
        for v in st.vms:
            if v.host == h.name:
                _make_vm(h, v, mtu or _underlay_mtu(h))
    if st.vm_network == "vxlan":
        _vxlan_fdb(st)
    for v in st.vms:  # VMs know each other's MAC, as hosts do (see lab.underlay)
        underlay.set_neighbours(v.netns, [(o.ip, o.mac) for o in st.vms if o.name != v.name])
    if st.vm_backend is None:
        return
    _create_vm_network(st)
    _spawn_agents(lab)
    _wait_agents(lab)
    _attach_vm_pods(lab)

