"""`podnet agent`: the per-host daemon. Serves the local API, keeps host subnet leases
and peers of every overlay network and programs services, until SIGTERM/SIGINT.

The front ends it serves are handed in (`serve_cni` builds the CNI handler over the
agent's attachers), so the agent never imports a front end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from podnet import config
from podnet.agent.overlay import OverlayManager, Timing
from podnet.agent.server import AgentServer, CniHandler, ServiceCache
from podnet.agent.services import ServiceKeeper
from podnet.errors import INVALID_CONFIG, PodnetError

log = logging.getLogger("podnet.agent")

CniFactory = Callable[[ServiceCache], CniHandler]


def run(store_url: str, socket_path: str, node: str, public_ip: str | None,
        timing: Timing, serve_cni: CniFactory, *, services: bool = True) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(message)s")
    from podnet.kernel import netns

    netns.warm_up()  # pay the netlink library's import before the first request
    run_dir = os.path.dirname(os.path.abspath(socket_path))
    cache = ServiceCache(store_url, node)
    resources = cache.default.resources
    resources.revision()  # fail at start, clearly, if the store is unreachable
    overlays = OverlayManager(resources, cache.drivers, node, public_ip, timing, run_dir)
    cache.use_leases(overlays)
    from podnet.store import open_store

    service_keeper = ServiceKeeper(open_store(store_url),
                                   full_period=max(60.0, timing.resync_period))

    def status(params: dict[str, Any]) -> dict[str, Any]:
        out = {"node": node, "store": store_url, **overlays.status()}
        out["errors"] = out["errors"] + service_keeper.errors
        synced = [k["last_full_sync_revision"] for k in out["leases"].values()]
        if services:
            synced.append(service_keeper.synced_revision)
        out["last_full_sync_revision"] = min(synced) if synced else resources.revision()
        return out

    rpcs: dict[str, Callable[[dict[str, Any]], Any]] = {
        "ping": lambda params: {"node": node, "store": store_url},
        "status": status,
    }
    server = AgentServer(socket_path, serve_cni(cache), rpcs)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    overlays.start_all()
    if services:
        service_keeper.start()
    threading.Thread(target=overlays.watch_networks, name="net-scan", daemon=True).start()
    server.serve_in_thread()
    log.info("serving on %s (store %s, node %s)", socket_path, store_url, node)
    stop.wait()
    log.info("stopping")
    server.shutdown()
    server.server_close()
    service_keeper.stop()
    overlays.stop()
    logging.shutdown()
    # Kernel state stays as it is (a restarted agent adopts it). Exit now rather than
    # wait for library threads (netlink event loops of in-flight requests) to wind down.
    os._exit(0)


def main(store: str | None, socket: str | None, node: str | None, serve_cni: CniFactory,
         public_ip: str | None = None, timing: Timing | None = None,
         services: bool = True) -> int:
    timing = timing or Timing()
    if not 0 < timing.renew_margin < timing.lease_ttl:
        raise PodnetError(INVALID_CONFIG, "renew margin must be between 0 and the lease TTL",
                          f"ttl {timing.lease_ttl}, margin {timing.renew_margin}")
    if timing.resync_period <= 0:
        raise PodnetError(INVALID_CONFIG, "resync period must be positive")
    return run(config.store_url(store), config.socket_path(socket), config.node_name(node),
               public_ip, timing, serve_cni, services=services)
