"""`podnet cleanup`: remove every link, namespace, nftables table and address record
podnet left behind in this network namespace and its store (like `mn -c`)."""

from __future__ import annotations

import contextlib
import glob
import os

from podnet.errors import PodnetError
from podnet.kernel import links, netns, nft
from podnet.kernel_names import LINK_PREFIXES, NETNS_PREFIXES


def stop_forwarders(run_dir: str) -> list[str]:
    """Stop udp forwarders whose control sockets podnet agents left in `run_dir`."""
    from podnet.udp import control

    stopped = []
    for ctl in sorted(glob.glob(os.path.join(run_dir, "*-udp-*.ctl"))):
        control.stop_forwarder(ctl)
        pidfile = ctl[: -len(".ctl")] + ".pid"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        stopped.append(os.path.basename(ctl))
    return stopped


def cleanup(store_url: str, run_dir: str = "/run/podnet", *,
            all_labs: bool = False) -> dict[str, list[str]]:
    from podnet.lab import cleanup_all_labs

    report: dict[str, list[str]] = {"links": [], "namespaces": [], "nftables": [], "records": [],
                                    "forwarders": [], "labs": []}
    report["labs"] = sorted(cleanup_all_labs(only_stale=not all_labs))
    report["forwarders"] = stop_forwarders(run_dir)
    with netns.iproute() as ipr:
        for prefix in LINK_PREFIXES:
            for name in links.names_with_prefix(ipr, prefix):
                if links.remove(ipr, name):
                    report["links"].append(name)
    for name in netns.list_named():
        if name.startswith(tuple(NETNS_PREFIXES)):
            netns.remove(name)
            report["namespaces"].append(name)
    if nft.list_json("table", nft.FAMILY, nft.TABLE):
        nft.remove_table()
        report["nftables"].append(f"{nft.FAMILY} {nft.TABLE}")
    with contextlib.suppress(PodnetError):
        from podnet.resources import open_resources

        with open_resources(store_url) as res:
            for port in res.list_ports():
                res.delete_port(port)
                report["records"].append(f"port {port.network}/{port.device_id}/{port.ifname}")
            for net in res.list_networks():
                for ip in res.gc_addresses(net.name, ()):
                    report["records"].append(f"address {net.name}/{ip}")
    return report
