"""What a run ran on: kernel, CPUs, tool versions, and per path the MTU and offloads of
the interfaces the traffic leaves and enters by.

Why per path: the study's findings hinge on segmentation offloads (a VXLAN device does not
offer tunnel segmentation; veth does) and on MTUs, so a number without them cannot be
explained later. Everything is read through the Endpoint (`uname`, `nproc`, `ip -j`,
`ethtool -k`), so it works on real machines as well; where ethtool(8) is not installed,
a lab namespace's offloads are read through the ethtool ioctl (kernel/ethtool.py) instead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from typing import Any

from podnet.bench.endpoint import Endpoint

# The features that decide how many bytes move per packet through each hop.
OFFLOADS = (
    "tx-scatter-gather", "tx-checksum-ip-generic", "rx-checksum", "tx-tcp-segmentation",
    "tx-generic-segmentation", "rx-gro", "tx-udp_tnl-segmentation", "tx-udp-segmentation",
    "rx-gro-list", "rx-udp-gro-forwarding",
)
SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.core.default_qdisc",
           "net.ipv4.tcp_congestion_control")


def _out(ep: Endpoint, cmd: list[str]) -> str:
    with contextlib.suppress(Exception):
        proc = ep.run(cmd, timeout=15)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return ""


def machine(ep: Endpoint) -> dict[str, Any]:
    """Kernel, CPU count and model, tool versions, as seen from `ep`."""
    cpuinfo = _out(ep, ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"])
    sysctls = {}
    for name in SYSCTLS:
        value = _out(ep, ["sysctl", "-n", name])
        if value:
            sysctls[name] = value
    return {
        "kernel": _out(ep, ["uname", "-r"]),
        "kernel_version": _out(ep, ["uname", "-v"]),
        "cpus": int(_out(ep, ["nproc"]) or 0),
        "cpu_model": cpuinfo.split(":", 1)[-1].strip(),
        "iperf3": (_out(ep, ["iperf3", "-v"]).splitlines() or [""])[0],
        "sockperf": " ".join((_out(ep, ["sockperf", "--version"]).splitlines() or [""])[:1]),
        "ethtool": "ethtool -k" if shutil.which("ethtool") else
                   "ethtool ioctl (ethtool(8) not installed)",
        "sysctls": sysctls,
    }


def load(ep: Endpoint) -> dict[str, Any]:
    """The 1-minute load average where `ep` runs: other people's work on a shared machine
    is what makes a run's ratios unreliable, so every measurement records it."""
    fields = _out(ep, ["cat", "/proc/loadavg"]).split()
    return {"loadavg1": float(fields[0])} if fields else {}


def _ethtool_k(ep: Endpoint, dev: str) -> dict[str, str]:
    text = _out(ep, ["ethtool", "-k", dev])
    feats = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(":")
        if name in OFFLOADS:
            feats[name] = value.split()[0] if value.split() else ""
    return feats


def _netlink_features(netns: str, dev: str) -> dict[str, str]:
    from podnet.kernel import ethtool

    return ethtool.features(netns, dev, OFFLOADS)


def interface(ep: Endpoint, peer: str) -> dict[str, Any]:
    """The interface `ep` reaches `peer` through: name, kind, MTU, offloads."""
    route = _out(ep, ["ip", "-j", "route", "get", peer])
    try:
        dev = json.loads(route)[0].get("dev", "")
    except (ValueError, IndexError, AttributeError):
        return {"error": f"no route to {peer}"}
    info: dict[str, Any] = {"dev": dev}
    with contextlib.suppress(ValueError, IndexError):
        link = json.loads(_out(ep, ["ip", "-d", "-j", "link", "show", "dev", dev]))[0]
        info["mtu"] = link.get("mtu")
        info["kind"] = (link.get("linkinfo") or {}).get("info_kind") or link.get("link_type")
    feats = _ethtool_k(ep, dev) if shutil.which("ethtool") or ep.remote else {}
    if not feats and ep.netns:
        with contextlib.suppress(Exception):
            feats = _netlink_features(ep.netns, dev)
    info["offloads"] = feats
    return info
