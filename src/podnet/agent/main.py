"""`podnet agent`: the per-host daemon. Serves the local API until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading

from podnet import config
from podnet.agent.server import AgentServer, ServiceCache

log = logging.getLogger("podnet.agent")


def run(store_url: str, socket_path: str, node: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podnet-agent %(message)s")
    import pyroute2  # noqa: F401 - warm the import before the first request

    services = ServiceCache(store_url, node)
    rpcs = {
        "ping": lambda params: {"node": node, "store": store_url},
    }
    server = AgentServer(socket_path, services.for_conf, rpcs)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_in_thread()
    log.info("serving on %s (store %s, node %s)", socket_path, store_url, node)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


def main(store: str | None, socket: str | None, node: str | None) -> int:
    return run(config.store_url(store), config.socket_path(socket), config.node_name(node))
