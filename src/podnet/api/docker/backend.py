"""What the Docker front end needs from the layers below: one method per libnetwork call.

The handlers (handlers.py) answer the handshake themselves (Plugin.Activate, both
GetCapabilities, GetDefaultAddressSpaces) and pass every other call through, with its
request already checked against protocol.py's shape. A method returns the response body
without an error field and raises PodnetError to fail: its text becomes Docker's `Err`
(network calls) or `Error` (IPAM calls), shown to the user as "remote: TEXT", so it must
be one clear sentence. A call must change nothing when it fails.
"""

from __future__ import annotations

from typing import Protocol

from podnet.api.docker.protocol import (
    AllocateNetworkRequest,
    AllocateNetworkResponse,
    CreateEndpointRequest,
    CreateEndpointResponse,
    CreateNetworkRequest,
    DiscoveryNotification,
    Empty,
    EndpointOperInfoResponse,
    EndpointRequest,
    ExternalConnectivityRequest,
    JoinRequest,
    JoinResponse,
    NetworkRequest,
    ReleaseAddressRequest,
    ReleasePoolRequest,
    RequestAddressRequest,
    RequestAddressResponse,
    RequestPoolRequest,
    RequestPoolResponse,
)


class NetworkBackend(Protocol):
    """libnetwork's remote NetworkDriver calls."""

    def create_network(self, req: CreateNetworkRequest) -> Empty: ...

    def allocate_network(self, req: AllocateNetworkRequest) -> AllocateNetworkResponse: ...

    def delete_network(self, req: NetworkRequest) -> Empty: ...

    def free_network(self, req: NetworkRequest) -> Empty: ...

    def create_endpoint(self, req: CreateEndpointRequest) -> CreateEndpointResponse: ...

    def endpoint_oper_info(self, req: EndpointRequest) -> EndpointOperInfoResponse: ...

    def delete_endpoint(self, req: EndpointRequest) -> Empty: ...

    def join(self, req: JoinRequest) -> JoinResponse: ...

    def leave(self, req: EndpointRequest) -> Empty: ...

    def discover_new(self, req: DiscoveryNotification) -> Empty: ...

    def discover_delete(self, req: DiscoveryNotification) -> Empty: ...

    def program_external_connectivity(self, req: ExternalConnectivityRequest) -> Empty: ...

    def revoke_external_connectivity(self, req: EndpointRequest) -> Empty: ...


class IpamBackend(Protocol):
    """libnetwork's remote IpamDriver calls."""

    def request_pool(self, req: RequestPoolRequest) -> RequestPoolResponse: ...

    def release_pool(self, req: ReleasePoolRequest) -> Empty: ...

    def request_address(self, req: RequestAddressRequest) -> RequestAddressResponse: ...

    def release_address(self, req: ReleaseAddressRequest) -> Empty: ...


class DockerBackend(NetworkBackend, IpamBackend, Protocol):
    """Both drivers in one object (podnet's plugin implements both)."""
