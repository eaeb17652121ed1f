"""What the overlay backends (vxlan, host-gw, udp) share: pods attach to a per-host
bridge whose subnet is this host's leased subnet (flannel's cni0), and the host side
is driven by the agent: prepare the host, then add and remove peers.

Pods learn their subnet and MTU from the node record the agent wrote when it leased
the subnet, so the CNI path works the same with or without the agent in the loop.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2 import IPRoute

from podnet import keys
from podnet.drivers.base import PodAddressing
from podnet.drivers.bridge import BridgeDriver
from podnet.errors import TRY_AGAIN_LATER, PodnetError
from podnet.kernel import addr, links
from podnet.kernel.underlay import Underlay
from podnet.model import Network
from podnet.overlay.config import OVERHEAD, OverlayConfig
from podnet.overlay.leases import Lease


class OverlayDriver(BridgeDriver):
    name = "overlay"

    # -- pods -----------------------------------------------------------------------
    def addressing(self, net: Network) -> PodAddressing:
        manager = self.ctx.state.get("overlay_manager")
        if manager is not None:
            manager.ensure(net)
        entry = self.ctx.store.get(keys.node(net.name, self.ctx.node))
        if entry is None or "subnet" not in entry.value:
            raise PodnetError(
                TRY_AGAIN_LATER, f"no host subnet leased for node {self.ctx.node!r} yet",
                f"network {net.name}: is the podnet agent running on this host?",
            )
        subnet = ipaddress.IPv4Network(entry.value["subnet"])
        gateway = str(subnet.network_address + 1)
        mtu = entry.value.get("pod_mtu")
        return PodAddressing(subnet=str(subnet), gateway=gateway, mtu=mtu,
                             routes=[{"dst": "0.0.0.0/0", "gw": gateway}])

    # -- host (called by the agent's overlay keeper) ----------------------------------
    def pod_mtu(self, cfg: OverlayConfig, under: Underlay) -> int:
        return cfg.mtu or under.mtu - OVERHEAD[cfg.backend]

    def prepare_host(
        self, ipr: IPRoute, cfg: OverlayConfig, under: Underlay, memory: dict[str, Any]
    ) -> dict[str, Any]:
        """Create backend devices before leasing; returns the lease's backend data."""
        return {"type": cfg.backend}

    def setup_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network, lease: Lease,
                   under: Underlay) -> None:
        """The pod bridge with this host's gateway address, forwarding on."""
        subnet = ipaddress.IPv4Network(lease.subnet)
        pa = PodAddressing(subnet=lease.subnet, gateway=str(subnet.network_address + 1),
                           mtu=self.pod_mtu(cfg, under))
        self.ensure_host_side(ipr, net, pa)

    def add_peer(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peer: Lease,
                 under: Underlay) -> None:
        raise NotImplementedError

    def remove_peer(self, ipr: IPRoute, cfg: OverlayConfig, peer: Lease,
                    under: Underlay) -> None:
        raise NotImplementedError

    def prune(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peers: list[Lease],
              under: Underlay) -> None:
        """Remove routes into the cluster CIDR that no current peer explains."""
        wanted = {p.subnet for p in peers} | {lease.subnet}
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get("RTA_DST")
            if not dst or route["dst_len"] != cfg.subnet_len:
                continue
            cidr = f"{dst}/{route['dst_len']}"
            if ipaddress.IPv4Network(cidr).subnet_of(cfg.cidr) and cidr not in wanted:
                addr.remove_route(ipr, cidr)

    def teardown_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network) -> None:
        links.remove(ipr, self.bridge_name(net))
