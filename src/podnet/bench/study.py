"""The 2015 study's figures ("Optimizing and extending overlay networking for containers",
OpenStack Summit, October 2015) and how each maps onto a path this bench measures.

Why the table's container rows map to pods in VMs: the study ran its containers inside
VMs on the Neutron network of each column, which its own observation 4 shows (pods on
flannel inside VMs on VXLAN: 1.17 Gbit/s = 59% of VM-to-VM on VXLAN, 1.98). So the
cross-host cell of column X is "pods in VMs on an X network" here (vxlan: the double
overlay). Same-pod (lo) and same-host (the pod bridge) paths do not touch the network
between hosts; one measurement fills both columns, marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = ("flat", "vlan", "vxlan")
COLUMN_TITLES = {"flat": "Flat", "vlan": "VLAN", "vxlan": "VXLAN / GRE"}

# row -> (title, {column: study Gbit/s}, {column: our path}, same path in every column?)
TABLE: dict[str, tuple[str, dict[str, float], dict[str, str], bool]] = {
    "server": ("server to server", {"flat": 9.39, "vlan": 9.39, "vxlan": 3.5},
               {c: f"server-{c}" for c in COLUMNS}, False),
    "vm": ("VM to VM", {"flat": 7.74, "vlan": 7.46, "vxlan": 1.98},
           {c: f"vm-{c}" for c in COLUMNS}, False),
    "same-pod": ("container to container, same pod", {"flat": 13.0, "vlan": 12.3, "vxlan": 13.2},
                 {c: "same-pod" for c in COLUMNS}, True),
    "same-host": ("different pods, same host", {"flat": 8.58, "vlan": 7.33, "vxlan": 8.40},
                  {c: "same-host-bridge" for c in COLUMNS}, True),
    "cross-host": ("different pods, different hosts (pods in VMs)",
                   {"flat": 1.71, "vlan": 1.67, "vxlan": 1.17},
                   {c: f"vm-pods-{c}" for c in COLUMNS}, False),
}


@dataclass(frozen=True)
class Comparison:
    """measured = metric(num) / metric(den); `expect` is the study's direction."""

    what: str
    study: float | None
    num: str
    den: str
    metric: str  # gbps | gbps_4streams | rr_latency_us | streams:N
    expect: str  # "down" (measured < 1) or "up" (measured > 1)
    den_metric: str | None = None  # defaults to metric


def tput(what: str, study: float | None, num: str, den: str, expect: str = "down"
         ) -> Comparison:
    return Comparison(what, study, num, den, "gbps", expect)


def lat(what: str, study: float | None, num: str, den: str, expect: str = "up") -> Comparison:
    return Comparison(what, study, num, den, "rr_latency_us", expect)


OBSERVATIONS: list[tuple[int, str, list[Comparison], str]] = [
    (1, "Server vs VM, and the network type under VMs", [
        tput("VM-flat ÷ server throughput", 0.82, "vm-flat", "server-flat"),
        lat("VM-flat ÷ server latency", 3.50, "vm-flat", "server-flat"),
        tput("VM-vlan ÷ VM-flat throughput", 0.96, "vm-vlan", "vm-flat"),
        lat("VM-vlan ÷ VM-flat latency", 1.14, "vm-vlan", "vm-flat"),
        tput("VM-vxlan ÷ VM-flat throughput", 0.26, "vm-vxlan", "vm-flat"),
        lat("VM-vxlan ÷ VM-flat latency", 1.08, "vm-vxlan", "vm-flat"),
    ], "study: bandwidth to 82%, 96%, 26%; latency to 350%, 114%, 108%"),
    (2, "Overlay MTU 1450 vs 1000", [
        tput("MTU 1000 ÷ MTU 1450 throughput (vxlan pods, 1 stream)", 0.50,
             "cross-host-vxlan-mtu1000", "cross-host-vxlan"),
        Comparison("MTU 1000 ÷ MTU 1450 throughput (4 streams)", None,
                   "cross-host-vxlan-mtu1000", "cross-host-vxlan", "gbps_4streams", "down"),
    ], "study: bandwidth falls to 50%"),
    (3, "One stream vs 2, 4, 8 concurrent streams on the overlay", [
        Comparison(f"{n} streams ÷ 1 stream (vxlan pods)", None, "cross-host-vxlan",
                   "cross-host-vxlan", f"streams:{n}", "up", "streams:1")
        for n in (2, 4, 8)
    ], "study: a chart from another talk only (aggregate VXLAN throughput rising with "
       "streams); no figure to print beside ours"),
    (4, "Double overlay vs single overlay", [
        tput("pods in VMs on VXLAN ÷ VM-vxlan throughput (double overlay)", 0.59,
             "vm-pods-vxlan", "vm-vxlan"),
        lat("pods in VMs on VXLAN ÷ VM-vxlan latency (double overlay)", 1.34,
            "vm-pods-vxlan", "vm-vxlan"),
        tput("VM-vxlan ÷ VM-flat throughput (single overlay)", 0.26, "vm-vxlan", "vm-flat"),
        lat("VM-vxlan ÷ VM-flat latency (single overlay)", 3.50, "vm-vxlan", "vm-flat"),
    ], "study: throughput -41% where the single overlay cost -74%; latency +34% where "
       "the single overlay cost +250%"),
    (5, "Backend udp vs vxlan; service proxy NAT on the path", [
        tput("vxlan ÷ udp throughput (study: 3-5x)", 4.0, "cross-host-vxlan",
             "cross-host-udp", expect="up"),
        lat("udp ÷ vxlan latency", None, "cross-host-udp", "cross-host-vxlan"),
        tput("with DNAT ÷ without throughput (vxlan pods)", 0.90, "cross-host-vxlan-dnat",
             "cross-host-vxlan"),
        lat("with DNAT ÷ without latency (vxlan pods)", 1.05, "cross-host-vxlan-dnat",
            "cross-host-vxlan"),
    ], "study: vxlan 3-5x udp's throughput; proxy NAT -10% throughput, +5% latency"),
    (6, "Linux bridge vs a direct veth pair for same-host pods", [
        tput("bridge ÷ direct veth throughput", 0.63, "same-host-bridge", "same-host-veth"),
        lat("bridge ÷ direct veth latency", 1.54, "same-host-bridge", "same-host-veth"),
    ], "study: -37% bandwidth, +54% latency"),
]
