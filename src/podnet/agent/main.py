"""`podnet agent`: the per-host daemon. Serves the local API, keeps host subnet leases
and peers of every overlay network, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading

from podnet import config
from podnet.agent.overlay import OverlayManager, Timing
from podnet.agent.server import AgentServer, ServiceCache
from podnet.agent.services import ServiceKeeper
from podnet.errors import PodnetError

log = logging.getLogger("podnet.agent")


def run(store_url: str, socket_path: str, node: str, public_ip: str | None,
        timing: Timing, services: bool = True) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(message)s")
    import pyroute2  # noqa: F401 - warm the import before the first request

    services = ServiceCache(store_url, node, os.path.dirname(os.path.abspath(socket_path)))
    svc = services.default
    svc.store.revision()  # fail at start, clearly, if the store is unreachable
    overlays = OverlayManager(svc.store, svc.ctx, svc.driver, node, public_ip, timing)
    services_keeper = ServiceKeeper(svc.store, full_period=max(60.0, timing.resync_period))

    def status(params: dict) -> dict:
        out = {"node": node, "store": store_url, **overlays.status()}
        out["errors"] = out["errors"] + services_keeper.errors
        return out

    rpcs = {
        "ping": lambda params: {"node": node, "store": store_url},
        "status": status,
    }
    server = AgentServer(socket_path, services.for_conf, rpcs)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    overlays.start_all()
    if services:
        services_keeper.start()
    threading.Thread(target=overlays.watch_networks, name="net-scan", daemon=True).start()
    server.serve_in_thread()
    log.info("serving on %s (store %s, node %s)", socket_path, store_url, node)
    stop.wait()
    log.info("stopping")
    server.shutdown()
    server.server_close()
    services_keeper.stop()
    overlays.stop()
    logging.shutdown()
    # Kernel state stays as it is (a restarted agent adopts it). Exit now rather than
    # wait for library threads (pyroute2 event loops of in-flight requests) to wind down.
    os._exit(0)


def main(store: str | None, socket: str | None, node: str | None, public_ip: str | None = None,
         timing: Timing | None = None, services: bool = True) -> int:
    timing = timing or Timing()
    if not 0 < timing.renew_margin < timing.lease_ttl:
        raise PodnetError(7, "renew margin must be between 0 and the lease TTL",
                          f"ttl {timing.lease_ttl}, margin {timing.renew_margin}")
    if timing.resync_period <= 0:
        raise PodnetError(7, "resync period must be positive")
    return run(config.store_url(store), config.socket_path(socket), config.node_name(node),
               public_ip, timing, services)
