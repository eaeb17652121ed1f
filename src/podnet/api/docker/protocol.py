"""The libnetwork remote driver and IPAM driver wire format, as dockerd 20.10 sends it.

Sources: moby/libnetwork docs/remote.md and docs/ipam.md, drivers/remote/api/api.go and
ipams/remote/api/api.go on the 20.10 branch, and the bodies a real dockerd 20.10.24 sent
(tests/data/docker_payloads.json, recorded by tests/test_dockerd_harness.py). Things that
bite (all seen on the wire):

- Addresses are CIDR strings in some fields and plain IPs in others: CreateNetwork's
  `Gateway` and `AuxAddresses` values are CIDR ("10.1.0.1/24"); RequestAddress's
  `Address` and ReleaseAddress's `Address` are plain IPs; RequestAddress answers CIDR;
  Join answers `Gateway` as a plain IP; CreateEndpoint's `Interface.Address` is CIDR.
- Go encodes a nil map as `null`: RequestAddress `Options` is null except for the
  gateway request (`{"RequestAddressType": "com.docker.network.gateway"}`).
- `-o KEY=VALUE` reaches only CreateNetwork (`Options["com.docker.network.generic"]`),
  `--ipam-opt KEY=VALUE` only RequestPool (`Options`); `--ip-range` only RequestPool's
  `SubPool`; `--internal` is `Options["com.docker.network.internal"]: true` (absent
  otherwise); `--label` is not sent at all.
- CreateEndpoint carries the address Docker's IPAM chose and the MAC the user gave
  (`Interface.MacAddress`, "" when none): the answer must not repeat a supplied value
  (Docker rolls back with "driver modified interface ..."); it may supply a MAC when
  Docker's was empty. `Options["com.docker.network.endpoint.macaddress"]` is the same MAC
  base64-encoded (a Go []byte).
- Published ports (`-p`) come as `Options["com.docker.network.portmap"]` (Proto 6 tcp,
  17 udp; HostIP "" for all addresses) in CreateEndpoint, Join and
  ProgramExternalConnectivity; the latter is called only for the endpoint that gives the
  container its gateway.
- EndpointOperInfo is called repeatedly (docker inspect, container start) and must be
  cheap. Join's `SandboxKey` is a path inside dockerd's mount namespace.
- Scope "local": AllocateNetwork / FreeNetwork / DiscoverNew / DiscoverDelete are swarm
  calls and never come from a standalone dockerd.
- Order: activation sends both GetCapabilities and GetDefaultAddressSpaces even when the
  network uses Docker's default IPAM; network create is RequestPool, RequestAddress
  (gateway), RequestAddress (each aux address), CreateNetwork; a container is
  RequestAddress, CreateEndpoint, Join, ProgramExternalConnectivity (also with an empty
  port map); removal is RevokeExternalConnectivity, Leave, DeleteEndpoint, ReleaseAddress;
  network rm releases the gateway and aux addresses and the pool BEFORE DeleteNetwork.
- A dockerd restart detaches every endpoint at shutdown (Leave, DeleteEndpoint,
  ReleaseAddress) and attaches containers with a restart policy anew after activating the
  plugin again; its RequestAddress then asks for any address ("", Options null, nothing
  naming the container), so an IPAM cannot tell a returning container from a new one.

`validate(method, request)` checks the top level of a request against these TypedDicts
(required keys, JSON types, non-empty IDs), so a handler can index it safely.
"""

# No `from __future__ import annotations`: TypedDict reads NotRequired[...] at class
# creation (Python 3.11), and string annotations would make every key required.

import types
import typing
from typing import Any, Literal, NotRequired, TypedDict, Union

from podnet.errors import INVALID_CONFIG, PodnetError

# ---- constants --------------------------------------------------------------------------

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
IMPLEMENTS = ["NetworkDriver", "IpamDriver"]
LOCAL_ADDRESS_SPACE = "PodnetLocal"
GLOBAL_ADDRESS_SPACE = "PodnetGlobal"

GENERIC = "com.docker.network.generic"  # CreateNetwork: the `-o` options
INTERNAL = "com.docker.network.internal"  # CreateNetwork: --internal
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
PORTMAP = "com.docker.network.portmap"  # CreateEndpoint / Join / ProgramExt...: -p
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
MAC_ADDRESS_OPTION = "com.docker.network.endpoint.macaddress"  # base64 of the MAC
REQUEST_ADDRESS_TYPE = "RequestAddressType"  # RequestAddress Options key
GATEWAY_REQUEST = "com.docker.network.gateway"  # ... its value for the gateway request
PROTO_TCP, PROTO_UDP = 6, 17

# ---- NetworkDriver ----------------------------------------------------------------------


class ErrResponse(TypedDict):
    Err: str


class NetworkCapabilities(TypedDict):
    Scope: Literal["local", "global"]
    ConnectivityScope: NotRequired[Literal["local", "global"]]  # "" -> same as Scope


class IPAMData(TypedDict):
    AddressSpace: str
    Pool: str  # CIDR
    Gateway: NotRequired[str]  # CIDR, e.g. "10.1.0.1/24"
    AuxAddresses: NotRequired[dict[str, str]]  # name -> CIDR; absent when none


class CreateNetworkRequest(TypedDict):
    NetworkID: str
    Options: NotRequired[dict[str, Any] | None]  # GENERIC, INTERNAL, ENABLE_IPV6
    IPv4Data: NotRequired[list[IPAMData] | None]
    IPv6Data: NotRequired[list[IPAMData] | None]


class AllocateNetworkRequest(TypedDict):  # swarm managers only
    NetworkID: str
    Options: NotRequired[dict[str, str] | None]
    IPv4Data: NotRequired[list[IPAMData] | None]
    IPv6Data: NotRequired[list[IPAMData] | None]


class AllocateNetworkResponse(TypedDict):
    Options: NotRequired[dict[str, str]]


class NetworkRequest(TypedDict):  # DeleteNetwork, FreeNetwork
    NetworkID: str


class EndpointInterface(TypedDict):
    Address: NotRequired[str]  # CIDR or ""
    AddressIPv6: NotRequired[str]
    MacAddress: NotRequired[str]  # "aa:bb:..." or ""


class PortBinding(TypedDict):
    Proto: int  # 6 tcp, 17 udp
    IP: str  # container address, "" in requests
    Port: int
    HostIP: str  # "" for all
    HostPort: int
    HostPortEnd: int


class CreateEndpointRequest(TypedDict):
    NetworkID: str
    EndpointID: str
    Interface: NotRequired[EndpointInterface | None]
    Options: NotRequired[dict[str, Any] | None]  # PORTMAP, EXPOSED_PORTS, MAC_ADDRESS_OPTION


class CreateEndpointResponse(TypedDict):
    # Only values Docker did not supply; {} (or no Interface) when it supplied them all.
    Interface: NotRequired[EndpointInterface | None]


class EndpointRequest(TypedDict):  # EndpointOperInfo, DeleteEndpoint, Leave, RevokeExt...
    NetworkID: str
    EndpointID: str


class EndpointOperInfoResponse(TypedDict):
    Value: dict[str, Any]


class JoinRequest(TypedDict):
    NetworkID: str
    EndpointID: str
    SandboxKey: NotRequired[str]  # EXEC_ROOT/netns/ID, inside dockerd's mount namespace
    Options: NotRequired[dict[str, Any] | None]


class InterfaceName(TypedDict):
    SrcName: str  # an interface in dockerd's network namespace; Docker moves and renames it
    DstPrefix: str  # "eth": Docker appends an index
    DstName: NotRequired[str]


class StaticRoute(TypedDict):
    Destination: str  # CIDR
    RouteType: int  # 0: via NextHop, 1: connected
    NextHop: NotRequired[str]


class JoinResponse(TypedDict):
    InterfaceName: InterfaceName
    Gateway: NotRequired[str]  # plain IP
    GatewayIPv6: NotRequired[str]
    StaticRoutes: NotRequired[list[StaticRoute]]
    DisableGatewayService: NotRequired[bool]  # true: no docker_gwbridge


class ExternalConnectivityRequest(TypedDict):
    NetworkID: str
    EndpointID: str
    Options: NotRequired[dict[str, Any] | None]  # PORTMAP, EXPOSED_PORTS


class DiscoveryNotification(TypedDict):
    DiscoveryType: int  # 1: node discovery
    DiscoveryData: NotRequired[Any]


class Empty(TypedDict):
    pass


# ---- IpamDriver -------------------------------------------------------------------------


class ErrorResponse(TypedDict):
    Error: str


class IpamCapabilities(TypedDict):
    RequiresMACAddress: bool
    RequiresRequestReplay: NotRequired[bool]


class AddressSpaces(TypedDict):
    LocalDefaultAddressSpace: str
    GlobalDefaultAddressSpace: str


class RequestPoolRequest(TypedDict):
    AddressSpace: str
    Pool: NotRequired[str]  # CIDR or "" (the driver picks)
    SubPool: NotRequired[str]  # CIDR (--ip-range) or ""
    Options: NotRequired[dict[str, str] | None]  # --ipam-opt
    V6: NotRequired[bool]


class RequestPoolResponse(TypedDict):
    PoolID: str  # same arguments -> same PoolID
    Pool: str  # CIDR
    Data: NotRequired[dict[str, str]]


class ReleasePoolRequest(TypedDict):
    PoolID: str


class RequestAddressRequest(TypedDict):
    PoolID: str
    Address: NotRequired[str]  # plain IP, "" for any
    Options: NotRequired[dict[str, str] | None]  # REQUEST_ADDRESS_TYPE for the gateway


class RequestAddressResponse(TypedDict):
    Address: str  # CIDR
    Data: NotRequired[dict[str, str]]


class ReleaseAddressRequest(TypedDict):
    PoolID: str
    Address: str  # plain IP


# ---- methods ----------------------------------------------------------------------------

REQUESTS: dict[str, type] = {
    "/Plugin.Activate": Empty,
    "/NetworkDriver.GetCapabilities": Empty,
    "/NetworkDriver.CreateNetwork": CreateNetworkRequest,
    "/NetworkDriver.AllocateNetwork": AllocateNetworkRequest,
    "/NetworkDriver.DeleteNetwork": NetworkRequest,
    "/NetworkDriver.FreeNetwork": NetworkRequest,
    "/NetworkDriver.CreateEndpoint": CreateEndpointRequest,
    "/NetworkDriver.EndpointOperInfo": EndpointRequest,
    "/NetworkDriver.DeleteEndpoint": EndpointRequest,
    "/NetworkDriver.Join": JoinRequest,
    "/NetworkDriver.Leave": EndpointRequest,
    "/NetworkDriver.DiscoverNew": DiscoveryNotification,
    "/NetworkDriver.DiscoverDelete": DiscoveryNotification,
    "/NetworkDriver.ProgramExternalConnectivity": ExternalConnectivityRequest,
    "/NetworkDriver.RevokeExternalConnectivity": EndpointRequest,
    "/IpamDriver.GetCapabilities": Empty,
    "/IpamDriver.GetDefaultAddressSpaces": Empty,
    "/IpamDriver.RequestPool": RequestPoolRequest,
    "/IpamDriver.ReleasePool": ReleasePoolRequest,
    "/IpamDriver.RequestAddress": RequestAddressRequest,
    "/IpamDriver.ReleaseAddress": ReleaseAddressRequest,
}


def _json_types(annotation: Any) -> tuple[type, ...]:
    """The Python types of decoded JSON that satisfy an annotation (top level only)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _json_types(a))
    if origin is typing.NotRequired or origin is typing.Required:
        return _json_types(typing.get_args(annotation)[0])
    if origin is Literal:
        return tuple({type(v) for v in typing.get_args(annotation)})
    if annotation is type(None):
        return (type(None),)
    if annotation is Any:
        return (object,)
    if origin is dict or typing.is_typeddict(annotation) or annotation is dict:
        return (dict,)
    if origin is list or annotation is list:
        return (list,)
    if annotation in (str, int, bool, float):
        return (annotation,)
    return (object,)


def validate(method: str, request: dict[str, Any]) -> None:
    """Raise PodnetError (invalid configuration) unless `request` has the method's shape."""
    schema = REQUESTS.get(method)
    if schema is None:
        return
    hints = typing.get_type_hints(schema)
    name = method[1:]
    for key in sorted(schema.__required_keys__):  # type: ignore[attr-defined]
        if key not in request:
            raise PodnetError(INVALID_CONFIG, f"{name}: the request has no {key}")
    for key, annotation in hints.items():
        if key not in request:
            continue
        value = request[key]
        allowed = _json_types(annotation)
        ok = isinstance(value, allowed) and not (
            isinstance(value, bool) and bool not in allowed and int in allowed)
        if not ok:
            raise PodnetError(INVALID_CONFIG, f"{name}: {key} must be "
                              f"{' or '.join(_type_name(t) for t in allowed)}, "
                              f"not {_type_name(type(value))}")
        if key.endswith("ID") and isinstance(value, str) and not value:
            raise PodnetError(INVALID_CONFIG, f"{name}: {key} is empty")


def _type_name(t: type) -> str:
    return {str: "a string", int: "a number", bool: "true or false", float: "a number",
            dict: "an object", list: "an array", type(None): "null"}.get(t, t.__name__)
