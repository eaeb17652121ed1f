"""udp: flannel's userspace backend, the study's slow baseline, made as fast as Python can.

A TUN device carries the cluster CIDR; a separate forwarder process (podnet.udp.forwarder)
encapsulates what the kernel hands it in UDP to the peer owning the destination subnet.
The forwarder is started detached and outlives the agent: a restarted agent adopts it
through its control socket and pushes the peer table again, so no packet is lost. The
agent keeps the full peer table and replaces it atomically on every change.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os

from podnet.backends.overlay.base import BackendNetwork, OverlayBackend, pod_mtu
from podnet.backends.overlay.config import OverlayConfig
from podnet.kernel import tun
from podnet.kernel.netns import Netlink
from podnet.kernel.underlay import Underlay
from podnet.resources.base import HostLease
from podnet.udp import control


def device_name(network: str) -> str:
    return "pntun" + hashlib.sha1(network.encode()).hexdigest()[:8]


def forwarder_paths(run_dir: str, node: str, network: str) -> tuple[str, str, str]:
    """Control socket, pid file and log of a network's forwarder."""
    base = os.path.join(run_dir, f"{node}-udp-{network}")
    return base + ".ctl", base + ".pid", base + ".log"


class UdpNetwork(BackendNetwork):
    def __init__(self, cfg: OverlayConfig, underlay: Underlay, run_dir: str, node: str
                 ) -> None:
        super().__init__(cfg, underlay, {"type": "udp", "port": cfg.port})
        self.run_dir = run_dir
        self.ctl, self.pidfile, self.logfile = forwarder_paths(run_dir, node, cfg.network)
        self.table: dict[str, tuple[str, int]] | None = None

    def setup(self, nl: Netlink, lease: HostLease) -> None:
        name = device_name(self.cfg.network)
        mtu = pod_mtu(self.cfg, self.underlay.mtu)
        address = str(ipaddress.IPv4Network(lease.subnet).network_address) + "/32"
        tun.ensure_tun_setup(None, name, address, mtu, str(self.cfg.cidr))
        os.makedirs(self.run_dir, exist_ok=True)
        pid = control.ensure_forwarder(None, name, f"{self.underlay.address}:{self.cfg.port}",
                                       self.ctl, mtu, log_path=self.logfile)
        with open(self.pidfile, "w") as fh:
            fh.write(f"{pid}\n")
        if self.table is None:
            # A restarted agent adopts a running forwarder: start from the table it already
            # has, so re-adding peers one by one never pushes a shorter table (lost packets).
            self.table = dict(control.get_peers(self.ctl))

    def _dest(self, peer: HostLease) -> tuple[str, int]:
        return peer.public_ip, int(peer.backend.get("port") or self.cfg.port)

    def add_peer(self, nl: Netlink, lease: HostLease, peer: HostLease) -> None:
        table = self.table if self.table is not None else {}
        self.table = table
        if table.get(peer.subnet) != self._dest(peer):
            table[peer.subnet] = self._dest(peer)
            control.set_peers(self.ctl, table)

    def remove_peer(self, nl: Netlink, peer: HostLease) -> None:
        if self.table is not None and self.table.pop(peer.subnet, None) is not None:
            control.set_peers(self.ctl, self.table)

    def prune(self, nl: Netlink, lease: HostLease, peers: list[HostLease]) -> None:
        self.table = {p.subnet: self._dest(p) for p in peers}
        control.set_peers(self.ctl, self.table)  # also re-pushes after a forwarder restart

    def teardown(self, nl: Netlink) -> None:
        control.stop_forwarder(self.ctl)
        tun.remove_tun(None, device_name(self.cfg.network))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)


class UdpBackend(OverlayBackend):
    name = "udp"

    def register(self, nl: Netlink, cfg: OverlayConfig, underlay: Underlay,
                 memory: HostLease | None) -> BackendNetwork:
        return UdpNetwork(cfg, underlay, self.run_dir, self.node)
