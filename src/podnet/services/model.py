"""Services: a stable virtual IP (and optionally node ports) in front of a set of pods.

Why frozen, self-validating dataclasses: a Service travels from the CLI through the store
to every agent's proxy, and a bad value (port 0, protocol "sctp", a name nftables or DNS
cannot carry) must fail where it enters, with a message that names the field, long before
anything is written to the kernel. Construction validates; `from_dict` is construction.
Names follow Kubernetes: a service name is a DNS-1035 label, a port name a DNS-1123 label.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import INVALID_CONFIG, PodnetError

PROTOCOLS = ("tcp", "udp")
CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
SERVICE_TYPES = (CLUSTER_IP, NODE_PORT)
AFFINITY_NONE = "None"
AFFINITY_CLIENT_IP = "ClientIP"
AFFINITIES = (AFFINITY_NONE, AFFINITY_CLIENT_IP)
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as Kubernetes
MAX_AFFINITY_TIMEOUT = 86400

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _invalid(what: str, detail: str = "") -> PodnetError:
    return PodnetError(INVALID_CONFIG, f"invalid service: {what}", detail)


def _check_port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{what} must be an integer", f"{what}={value!r}")
    if not 1 <= value <= 65535:
        raise _invalid(f"{what} {value} out of range 1-65535")
    return value


def _canon(value: Any, choices: tuple[str, ...], what: str) -> str:
    if isinstance(value, str):
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
    raise _invalid(f"unknown {what} {value!r}", f"{what} must be one of {', '.join(choices)}")


@dataclass(frozen=True)
class ServicePort:
    """One exposed port: `port`/`protocol` on the VIP, forwarded to `target_port` on pods."""

    port: int
    protocol: str = "tcp"
    target_port: int | None = None  # None: same as port
    name: str = ""
    node_port: int | None = None  # NodePort services: allocated when None

    def __post_init__(self) -> None:
        _check_port(self.port, "port")
        object.__setattr__(self, "protocol", _canon(self.protocol, PROTOCOLS, "protocol"))
        if self.target_port is not None:
            _check_port(self.target_port, "target port")
        if self.node_port is not None:
            _check_port(self.node_port, "node port")
        if not isinstance(self.name, str) or (self.name and not _DNS1123.match(self.name)):
            raise _invalid(
                f"port name {self.name!r} is not a DNS label",
                "lowercase letters, digits and '-', at most 63 characters",
            )

    @property
    def target(self) -> int:
        return self.target_port if self.target_port is not None else self.port

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServicePort:
        if not isinstance(data, Mapping):
            raise _invalid("a port must be an object", f"got {data!r}")
        if "port" not in data:
            raise _invalid("port is required", f"got {dict(data)!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise _invalid(f"unknown port field {sorted(unknown)[0]!r}")
        return cls(**data)


@dataclass(frozen=True)
class Service:
    """A named virtual IP with ports; endpoints are chosen by `selector` (the caller's job)."""

    name: str
    ports: tuple[ServicePort, ...]
    cluster_ip: str | None = None  # None: allocate from the service CIDR
    type: str = CLUSTER_IP
    session_affinity: str = AFFINITY_NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    selector: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _DNS1035.match(self.name):
            raise _invalid(
                f"service name {self.name!r} is not valid",
                "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter, "
                "ending with a letter or digit, at most 63 characters",
            )
        try:
            self._normalise()
        except PodnetError as exc:
            where = f"service {self.name!r}"
            raise PodnetError(
                exc.code, exc.msg, f"{where}: {exc.details}" if exc.details else where
            ) from None

    def _normalise(self) -> None:
        ports = self.ports
        if not isinstance(ports, list | tuple):
            raise _invalid("ports must be a list", f"got {ports!r}")
        ports = tuple(p if isinstance(p, ServicePort) else ServicePort.from_dict(p) for p in ports)
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "type", _canon(self.type, SERVICE_TYPES, "type"))
        affinity = _canon(self.session_affinity, AFFINITIES, "session affinity")
        object.__setattr__(self, "session_affinity", affinity)
        self._check_ports()
        if self.cluster_ip is not None:
            try:
                addr = ipaddress.ip_address(self.cluster_ip)
            except (ValueError, TypeError) as exc:
                raise _invalid(f"cluster IP {self.cluster_ip!r} is not an IP address") from exc
            if addr.version != 4:
                raise _invalid(f"cluster IP {self.cluster_ip}: only IPv4 is supported")
            object.__setattr__(self, "cluster_ip", str(addr))
        timeout = self.affinity_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not (
            1 <= timeout <= MAX_AFFINITY_TIMEOUT
        ):
            raise _invalid(f"affinity timeout {timeout!r} out of range 1-{MAX_AFFINITY_TIMEOUT} s")
        if not isinstance(self.selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.selector.items()
        ):
            raise _invalid("selector must map strings to strings")
        object.__setattr__(self, "selector", dict(self.selector))

    def _check_ports(self) -> None:
        if not self.ports:
            raise _invalid("a service needs at least one port")
        seen: set[tuple[int, str]] = set()
        names: set[str] = set()
        node_ports: set[tuple[int, str]] = set()
        for p in self.ports:
            if (p.port, p.protocol) in seen:
                raise _invalid(f"duplicate port {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
            if len(self.ports) > 1 and not p.name:
                raise _invalid("every port needs a name when a service has several")
            if p.name:
                if p.name in names:
                    raise _invalid(f"duplicate port name {p.name!r}")
                names.add(p.name)
            if p.node_port is not None:
                if self.type != NODE_PORT:
                    raise _invalid(
                        f"node port {p.node_port} given but type is {self.type}",
                        "node ports need type NodePort",
                    )
                if (p.node_port, p.protocol) in node_ports:
                    raise _invalid(f"duplicate node port {p.node_port}/{p.protocol}")
                node_ports.add((p.node_port, p.protocol))

    @property
    def affinity(self) -> bool:
        """True when the service keeps each client on one endpoint (ClientIP affinity)."""
        return self.session_affinity == AFFINITY_CLIENT_IP

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cluster_ip": self.cluster_ip,
            "type": self.type,
            "ports": [p.to_dict() for p in self.ports],
            "session_affinity": self.session_affinity,
            "affinity_timeout": self.affinity_timeout,
            "selector": dict(self.selector),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Service:
        if not isinstance(data, Mapping):
            raise _invalid("a service must be an object", f"got {data!r}")
        if "name" not in data:
            raise _invalid("name is required", f"got {dict(data)!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise _invalid(f"unknown field {sorted(unknown)[0]!r}", f"service {data['name']!r}")
        if "ports" not in data:
            raise _invalid("ports are required", f"service {data['name']!r}")
        return cls(**data)
