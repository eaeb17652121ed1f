"""udp: flannel's userspace backend, the study's slow baseline, made as fast as Python can.

A TUN device carries the cluster CIDR; a separate forwarder process (podnet.udp.forwarder)
encapsulates what the kernel hands it in UDP to the peer owning the destination subnet.
The forwarder is started detached and outlives the agent: a restarted agent adopts it
through its control socket and pushes the peer table again, so no packet is lost. The
agent keeps the full peer table and replaces it atomically on every change.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import Any

from pyroute2 import IPRoute

from podnet.drivers.overlay import OverlayDriver
from podnet.kernel import tun
from podnet.kernel.underlay import Underlay
from podnet.model import Network
from podnet.overlay.config import OVERHEAD, OverlayConfig
from podnet.overlay.leases import Lease
from podnet.udp import control


def device_name(network: str) -> str:
    return "pntun" + hashlib.sha1(network.encode()).hexdigest()[:8]


class UdpDriver(OverlayDriver):
    name = "udp"

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self._tables: dict[str, dict[str, tuple[str, int]]] = {}

    def _paths(self, network: str) -> tuple[str, str, str]:
        base = os.path.join(self.ctx.run_dir, f"{self.ctx.node}-udp-{network}")
        return base + ".ctl", base + ".pid", base + ".log"

    def prepare_host(
        self, ipr: IPRoute, cfg: OverlayConfig, under: Underlay, memory: dict[str, Any]
    ) -> dict[str, Any]:
        return {"type": "udp", "port": cfg.port}

    def setup_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network, lease: Lease,
                   under: Underlay) -> None:
        name = device_name(cfg.network)
        mtu = cfg.mtu or under.mtu - OVERHEAD["udp"]
        address = str(ipaddress.IPv4Network(lease.subnet).network_address) + "/32"
        tun.ensure_tun_setup(None, name, address, mtu, str(cfg.cidr))
        ctl, pidfile, logfile = self._paths(cfg.network)
        os.makedirs(self.ctx.run_dir, exist_ok=True)
        pid = control.ensure_forwarder(None, name, f"{under.address}:{cfg.port}", ctl, mtu,
                                       log_path=logfile)
        with open(pidfile, "w") as fh:
            fh.write(f"{pid}\n")
        if cfg.network not in self._tables:
            # A restarted agent adopts a running forwarder: start from the table it already
            # has, so re-adding peers one by one never pushes a shorter table (lost packets).
            self._tables[cfg.network] = dict(control.get_peers(ctl))
        super().setup_host(ipr, cfg, net, lease, under)

    def _push(self, cfg: OverlayConfig) -> None:
        ctl, _, _ = self._paths(cfg.network)
        control.set_peers(ctl, self._tables.get(cfg.network, {}))

    def add_peer(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peer: Lease,
                 under: Underlay) -> None:
        table = self._tables.setdefault(cfg.network, {})
        dest = (peer.public_ip, int(peer.backend.get("port") or cfg.port))
        if table.get(peer.subnet) != dest:
            table[peer.subnet] = dest
            self._push(cfg)

    def remove_peer(self, ipr: IPRoute, cfg: OverlayConfig, peer: Lease,
                    under: Underlay) -> None:
        if self._tables.get(cfg.network, {}).pop(peer.subnet, None) is not None:
            self._push(cfg)

    def prune(self, ipr: IPRoute, cfg: OverlayConfig, lease: Lease, peers: list[Lease],
              under: Underlay) -> None:
        self._tables[cfg.network] = {
            p.subnet: (p.public_ip, int(p.backend.get("port") or cfg.port)) for p in peers}
        self._push(cfg)  # also re-pushes after an agent restart or forwarder restart

    def teardown_host(self, ipr: IPRoute, cfg: OverlayConfig, net: Network) -> None:
        ctl, pidfile, _ = self._paths(cfg.network)
        control.stop_forwarder(ctl)
        tun.remove_tun(None, device_name(cfg.network))
        for path in (pidfile,):
            if os.path.exists(path):
                os.unlink(path)
        super().teardown_host(ipr, cfg, net)
