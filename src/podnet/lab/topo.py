"""A lab topology as plain data, and the lab's address plan.

Why plain data (as Mininet's Topo): a topology is something to print, compare, store and
pass around before anything exists in the kernel; building it is the Lab's job.

Address plan (chosen not to overlap 192.0.2.0/24, which tests use, nor the pod CIDR):
  underlay segment s (1 or 2)   172.30.s.0/24
  host hI                       172.30.s.(10+I) on its segment's switch
  router, segment s             172.30.s.1 (only with two segments)
  switch bridge, segment s      172.30.s.254 (only where etcd runs)
  host hI's uplink MAC          02:50:ac:1e:0s:(10+I) (hex)
  pods                          10.244.0.0/16, a /24 per host (leased by the agents)
  VMs, their network and the pods inside them: see podnet.lab.vms (172.31.0.0/16,
  pods 10.245.0.0/16 from a separate VM cluster).
With two segments, hosts alternate: h1, h3, ... on segment 1; h2, h4, ... on segment 2,
so a host added later keeps both segments populated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from podnet.errors import INVALID_CONFIG, PodnetError

UNDERLAY_PREFIX = 24
MAX_HOSTS = 240  # 172.30.s.(10+I) must stay below the switch's .254
MAX_PODS_PER_HOST = 200
POD_CIDR = "10.244.0.0/16"
POD_SUBNET_LEN = 24
POD_NAME_RE = re.compile(r"^h(\d+)-p(\d+)$")
HOST_NAME_RE = re.compile(r"^h(\d+)$")
VM_NETWORKS = ("flat", "vlan", "vxlan")
MAX_VMS_PER_HOST = 200


@dataclass(frozen=True)
class Topo:
    """How many hosts, pods per host and underlay segments a lab has."""

    hosts: int = 2
    pods_per_host: int = 1
    segments: int = 1
    # -- VMs (built by podnet.lab.vms) --------------------------------------------------
    vms_per_host: int = 0
    vm_network: str = "flat"  # flat | vlan | vxlan: how VM bridges meet across hosts
    pods_per_vm: int = 0
    vm_backend: str | None = "vxlan"  # the VMs' own podnet cluster; None: no agent in VMs

    def __post_init__(self) -> None:
        self._check_vms()
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise PodnetError(INVALID_CONFIG, f"hosts must be 1-{MAX_HOSTS}", str(self.hosts))
        if not 0 <= self.pods_per_host <= MAX_PODS_PER_HOST:
            raise PodnetError(INVALID_CONFIG, f"pods_per_host must be 0-{MAX_PODS_PER_HOST}",
                              str(self.pods_per_host))
        if self.segments not in (1, 2):
            raise PodnetError(INVALID_CONFIG, "segments must be 1 or 2", str(self.segments))

    def _check_vms(self) -> None:
        if not 0 <= self.vms_per_host <= MAX_VMS_PER_HOST:
            raise PodnetError(INVALID_CONFIG, f"vms_per_host must be 0-{MAX_VMS_PER_HOST}",
                              str(self.vms_per_host))
        if self.vm_network not in VM_NETWORKS:
            raise PodnetError(INVALID_CONFIG, f"unknown vm_network {self.vm_network!r}",
                              f"known: {', '.join(VM_NETWORKS)}")
        if self.vms_per_host and self.vm_network != "vxlan" and self.segments != 1:
            raise PodnetError(INVALID_CONFIG, f"a {self.vm_network} VM network needs one "
                              "underlay segment", "use vm_network='vxlan' across a router")
        if not 0 <= self.pods_per_vm <= MAX_PODS_PER_HOST:
            raise PodnetError(INVALID_CONFIG, f"pods_per_vm must be 0-{MAX_PODS_PER_HOST}",
                              str(self.pods_per_vm))
        if self.pods_per_vm and self.vm_backend is None:
            raise PodnetError(INVALID_CONFIG, "pods in VMs need an agent in the VMs",
                              "set vm_backend (vxlan, host-gw or udp)")


def host_name(index: int) -> str:
    return f"h{index}"


def host_index(name: str) -> int:
    m = HOST_NAME_RE.match(name)
    if not m:
        raise PodnetError(INVALID_CONFIG, f"not a lab host name: {name!r}", "expected hN")
    return int(m.group(1))


def pod_name(host: str, index: int) -> str:
    return f"{host}-p{index}"


def segment_of(index: int, segments: int) -> int:
    """The underlay segment (1-based) of host hI."""
    return 1 if segments == 1 else (index - 1) % segments + 1


def host_ip(index: int, segments: int) -> str:
    if not 1 <= index <= MAX_HOSTS:
        raise PodnetError(INVALID_CONFIG, f"host index must be 1-{MAX_HOSTS}", str(index))
    return f"172.30.{segment_of(index, segments)}.{10 + index}"


def host_mac(index: int, segments: int) -> str:
    """hI's uplink MAC: locally administered, spelling its address (02:50 + 172.30.s.x),
    so neighbour entries can be written before the host exists and read well."""
    seg = segment_of(index, segments)
    return f"02:50:ac:1e:{seg:02x}:{10 + index:02x}"


def router_ip(segment: int) -> str:
    return f"172.30.{segment}.1"


def switch_ip(segment: int) -> str:
    return f"172.30.{segment}.254"


def segment_cidr(segment: int) -> str:
    return f"172.30.{segment}.0/{UNDERLAY_PREFIX}"


def switch_role(segment: int, segments: int) -> str:
    """The switch namespace's role name: `sw` with one segment, `sw1`/`sw2` with two."""
    return "sw" if segments == 1 else f"sw{segment}"
