"""An overlay network's definition, in flannel's shape, with validation.

{"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": ..., "SubnetMax": ...,
 "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": false, "MTU": null}}
is stored as a podnet Network whose driver is the backend type.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnet.backends.overlay import BACKENDS
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.model import Network

DEFAULT_PORT = {"vxlan": 8472, "udp": 8285, "host-gw": 0}
OVERHEAD = {"vxlan": 50, "udp": 28, "host-gw": 0}  # bytes of encapsulation per packet


@dataclass(frozen=True)
class OverlayConfig:
    network: str
    cidr: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Network
    subnet_max: ipaddress.IPv4Network
    backend: str
    vni: int
    port: int
    direct_routing: bool
    mtu: int | None

    def subnets(self) -> list[str]:
        """Every host subnet in [SubnetMin, SubnetMax], in order."""
        lo = int(self.subnet_min.network_address)
        hi = int(self.subnet_max.network_address)
        return [str(s) for s in self.cidr.subnets(new_prefix=self.subnet_len)
                if lo <= int(s.network_address) <= hi]


def _bad(msg: str, details: str = "") -> PodnetError:
    return PodnetError(INVALID_CONFIG, msg, details)


def _get(d: dict, *names: str, default=None):  # type: ignore[no-untyped-def]
    for n in names:
        if n in d:
            return d[n]
    return default


def from_network(net: Network) -> OverlayConfig:
    backend_opts = dict(net.backend or {})
    btype = str(_get(backend_opts, "Type", "type", default=net.driver))
    if btype not in BACKENDS:
        raise _bad(f"unknown backend {btype!r}", f"known: {', '.join(BACKENDS)}")
    if net.driver != btype:
        raise _bad(f"backend type {btype!r} does not match driver {net.driver!r}")
    try:
        cidr = ipaddress.IPv4Network(net.subnet or "", strict=True)
    except ValueError as exc:
        raise _bad("invalid overlay Network CIDR", str(exc)) from exc
    subnet_len = int(net.subnet_len or (24 if cidr.prefixlen < 24 else cidr.prefixlen + 1))
    if not cidr.prefixlen < subnet_len <= 30:
        raise _bad(
            f"SubnetLen {subnet_len} does not fit Network {cidr}",
            f"need {cidr.prefixlen} < SubnetLen <= 30",
        )
    all_subnets = list(cidr.subnets(new_prefix=subnet_len))

    def bound(value: str | None, default: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if not value:
            return default
        try:
            sub = ipaddress.IPv4Network(value if "/" in value else f"{value}/{subnet_len}")
        except ValueError as exc:
            raise _bad("invalid SubnetMin/SubnetMax", str(exc)) from exc
        if not sub.subnet_of(cidr):
            raise _bad("SubnetMin/SubnetMax outside Network", str(sub))
        return sub

    smin = bound(net.subnet_min, all_subnets[0])
    smax = bound(net.subnet_max, all_subnets[-1])
    if int(smin.network_address) > int(smax.network_address):
        raise _bad("SubnetMin is above SubnetMax", f"{smin} > {smax}")
    vni = int(_get(backend_opts, "VNI", "vni", default=1))
    if not 0 < vni < 2**24:
        raise _bad("VNI out of range 1-16777215", str(vni))
    port = int(_get(backend_opts, "Port", "port", default=DEFAULT_PORT[btype]))
    if btype != "host-gw" and not 0 < port < 65536:
        raise _bad("Port out of range 1-65535", str(port))
    mtu = _get(backend_opts, "MTU", "mtu", default=net.mtu)
    if mtu is not None and not 68 <= int(mtu) <= 65535:
        raise _bad("MTU out of range 68-65535", str(mtu))
    return OverlayConfig(
        network=net.name, cidr=cidr, subnet_len=subnet_len, subnet_min=smin, subnet_max=smax,
        backend=btype, vni=vni, port=port,
        direct_routing=bool(_get(backend_opts, "DirectRouting", "directRouting", default=False)),
        mtu=int(mtu) if mtu is not None else None,
    )
