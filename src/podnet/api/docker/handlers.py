"""The routing table from `/Family.Method` to handlers over a DockerBackend.

The handshake is answered here (it describes the plugin, not a resource): Plugin.Activate
implements NetworkDriver and IpamDriver; NetworkDriver.GetCapabilities gives the scope;
IpamDriver.GetCapabilities and GetDefaultAddressSpaces the IPAM's. Every other method is
one call into the backend with the validated request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from podnet.api.docker.backend import DockerBackend
from podnet.api.docker.plugin import CallObserver, Handler, PluginServer, Router
from podnet.api.docker.protocol import (
    GLOBAL_ADDRESS_SPACE,
    IMPLEMENTS,
    LOCAL_ADDRESS_SPACE,
    validate,
)


@dataclass(frozen=True)
class Capabilities:
    """What the handshake answers. `scope` "local": dockerd keeps the network's record on
    this host only (no swarm); `connectivity_scope` "global" would mark a network that
    spans hosts (Docker then expects swarm for it), so podnet's overlays stay "local"
    too: each host's dockerd knows its own endpoints and podnet connects the hosts."""

    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global"] = "local"
    requires_mac_address: bool = False
    requires_request_replay: bool = False
    local_address_space: str = LOCAL_ADDRESS_SPACE
    global_address_space: str = GLOBAL_ADDRESS_SPACE


def handshake_routes(caps: Capabilities) -> dict[str, Handler]:
    return {
        "/Plugin.Activate": lambda _req: {"Implements": list(IMPLEMENTS)},
        "/NetworkDriver.GetCapabilities": lambda _req: {
            "Scope": caps.scope, "ConnectivityScope": caps.connectivity_scope},
        "/IpamDriver.GetCapabilities": lambda _req: {
            "RequiresMACAddress": caps.requires_mac_address,
            "RequiresRequestReplay": caps.requires_request_replay},
        "/IpamDriver.GetDefaultAddressSpaces": lambda _req: {
            "LocalDefaultAddressSpace": caps.local_address_space,
            "GlobalDefaultAddressSpace": caps.global_address_space},
    }


# method name -> DockerBackend attribute
BACKEND_METHODS = {
    "/NetworkDriver.CreateNetwork": "create_network",
    "/NetworkDriver.AllocateNetwork": "allocate_network",
    "/NetworkDriver.DeleteNetwork": "delete_network",
    "/NetworkDriver.FreeNetwork": "free_network",
    "/NetworkDriver.CreateEndpoint": "create_endpoint",
    "/NetworkDriver.EndpointOperInfo": "endpoint_oper_info",
    "/NetworkDriver.DeleteEndpoint": "delete_endpoint",
    "/NetworkDriver.Join": "join",
    "/NetworkDriver.Leave": "leave",
    "/NetworkDriver.DiscoverNew": "discover_new",
    "/NetworkDriver.DiscoverDelete": "discover_delete",
    "/NetworkDriver.ProgramExternalConnectivity": "program_external_connectivity",
    "/NetworkDriver.RevokeExternalConnectivity": "revoke_external_connectivity",
    "/IpamDriver.RequestPool": "request_pool",
    "/IpamDriver.ReleasePool": "release_pool",
    "/IpamDriver.RequestAddress": "request_address",
    "/IpamDriver.ReleaseAddress": "release_address",
}


def _call(fn: Any) -> Handler:
    def handler(req: dict[str, Any]) -> dict[str, Any]:
        answer = fn(req)
        return dict(answer) if answer else {}

    return handler


def routes(backend: DockerBackend, caps: Capabilities = Capabilities()) -> dict[str, Handler]:
    """The full routing table: handshake plus one route per backend method."""
    table = handshake_routes(caps)
    for method, attr in BACKEND_METHODS.items():
        table[method] = _call(getattr(backend, attr))
    return table


def router(backend: DockerBackend, caps: Capabilities = Capabilities(),
           observer: CallObserver | None = None) -> Router:
    return Router(routes(backend, caps), validate=validate, observer=observer)


def serve(path: str, backend: DockerBackend, caps: Capabilities = Capabilities(), *,
          observer: CallObserver | None = None, workers: int = 8) -> PluginServer:
    """Claim `path` and serve the plugin API on it in a background thread."""
    server = PluginServer(path, router(backend, caps, observer), workers=workers)
    return server.serve_in_thread()
