"""A lab's state file: what `lab up` built, so later commands (ls, ping, exec, down) and
other processes can find every namespace, address and process of a lab.

Why a file written after every step: `lab up` runs as a short CLI process while its agents
and etcd outlive it, and a crash half-way must still leave enough behind for `lab down`
to stop exactly the processes the lab started (by PID) and nothing else. Writes go to a
temp file and are renamed into place, so a reader never sees half a file.

Layout:
  /var/lib/podnet/labs/LAB/   state.json, podnet.db (sqlite), hI.log, bin/podnet-cni,
                              etcd/ (data dir), etcd/pki/ (CA, certs, 0600 keys and
                              passwords), etcd.log
  /run/podnet/labs/LAB/       hI.sock (agent sockets), *.pid (udp forwarders, by agents)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from podnet.errors import INVALID_CONFIG, NOT_FOUND, PodnetError

LABS_DIR = "/var/lib/podnet/labs"
RUN_DIR = "/run/podnet/labs"
STATE_FILE = "state.json"
NETWORK = "labnet"
OVERLAY_BACKENDS = ("vxlan", "host-gw", "udp")
# "bridge": every host gets its own local bridge on the same cluster CIDR, so pods on one
# host reach each other and nothing crosses hosts. A baseline, and a way to exercise the
# lab itself (namespaces, agents, CNI path) without an overlay driver.
LOCAL_BACKENDS = ("bridge",)
BACKENDS = OVERLAY_BACKENDS + LOCAL_BACKENDS
STORES = ("sqlite", "etcd")
ETCD_PORTS = (2379, 2380)
DEFAULT_LEASE_TTL = 60.0
DEFAULT_RENEW_MARGIN = 20.0
DEFAULT_RESYNC_PERIOD = 10.0
# No '-': a lab's namespaces are "LAB-role", and a name with a dash could be the
# prefix of another lab's namespaces ("a" vs "a-h1"), so cleanup by prefix would
# reach into the wrong lab.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,15}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise PodnetError(INVALID_CONFIG, f"invalid lab name {name!r}",
                          "a letter, then up to 15 letters, digits or '_' (no '-')")
    return name


def lab_dir(name: str) -> str:
    return os.path.join(LABS_DIR, name)


def run_dir(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def state_path(name: str) -> str:
    return os.path.join(lab_dir(name), STATE_FILE)


def sqlite_url(name: str) -> str:
    return os.path.join(lab_dir(name), "podnet.db")


def agent_socket(name: str, host: str) -> str:
    return os.path.join(run_dir(name), f"{host}.sock")


def agent_log(name: str, host: str) -> str:
    return os.path.join(lab_dir(name), f"{host}.log")


def netns_name(lab: str, role: str) -> str:
    """Every namespace of a lab is LAB-role (role: sw, sw1, rt, h1, h1-p1, ...)."""
    return f"{lab}-{role}"


@dataclass
class PodState:
    name: str
    netns: str
    ip: str | None
    host: str
    container_id: str

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "netns": self.netns, "ip": self.ip}


@dataclass
class HostState:
    name: str
    index: int
    netns: str
    ip: str
    segment: int
    mac: str
    socket: str
    log: str
    agent_pid: int | None = None
    subnet: str | None = None
    pods: list[PodState] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "netns": self.netns, "ip": self.ip,
                "pods": [p.public() for p in self.pods]}


@dataclass
class VmState:
    """A VM (podnet.lab.vms): a namespace on host `host`'s VM bridge, maybe with an agent."""

    name: str
    host: str
    index: int
    netns: str
    ip: str
    mac: str
    socket: str
    log: str
    agent_pid: int | None = None
    subnet: str | None = None
    pods: list[PodState] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "netns": self.netns, "ip": self.ip,
                "pods": [p.public() for p in self.pods]}


@dataclass
class EtcdState:
    netns: str
    host: str
    port: int
    peer_port: int
    data_dir: str
    log: str
    pid: int | None = None
    tls: bool = False  # client port over TLS with client certificates (lab.etcd)
    pki_dir: str | None = None  # the lab's CA, certificates, keys and passwords
    auth: bool = False  # etcd auth on: agents log in as user podnet


@dataclass
class LabState:
    name: str
    backend: str
    store: str  # "sqlite" | "etcd"
    store_url: str
    segments: int
    pods_per_host: int
    lease_ttl: float
    renew_margin: float
    resync_period: float
    network: str = NETWORK
    backend_options: dict[str, Any] = field(default_factory=dict)
    hosts: list[HostState] = field(default_factory=list)
    etcd: EtcdState | None = None
    status: str = "building"  # building | up
    created: float = 0.0
    # -- VMs (podnet.lab.vms); a VM cluster has its own SQLite store --------------------
    vm_network: str | None = None
    vm_backend: str | None = None
    vm_store_url: str | None = None
    pods_per_vm: int = 0
    vms: list[VmState] = field(default_factory=list)

    # -- lookups --------------------------------------------------------------------
    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        raise PodnetError(NOT_FOUND, f"lab {self.name} has no host {name!r}",
                          f"hosts: {', '.join(h.name for h in self.hosts) or 'none'}")

    def pods(self) -> list[PodState]:
        return [p for h in self.hosts for p in h.pods]

    def vm_roles(self) -> list[str]:
        """VM and VM pod names (their namespaces are LAB-hI-vmJ, LAB-hI-vmJ-pK)."""
        return [v.name for v in self.vms] + [p.name for v in self.vms for p in v.pods]

    def switch_roles(self) -> list[str]:
        return ["sw"] if self.segments == 1 else ["sw1", "sw2"]

    def infra_roles(self) -> list[str]:
        """The namespaces that are neither hosts nor pods: switches and the router."""
        return self.switch_roles() + (["rt"] if self.segments == 2 else [])

    def public(self) -> dict[str, Any]:
        """`podnet lab ls --json`: the hosts/pods shape scripts rely on, plus context."""
        from podnet.lab import topo

        switches = []
        for seg, role in enumerate(self.switch_roles(), start=1):
            sw: dict[str, Any] = {"name": role, "netns": netns_name(self.name, role),
                                  "segment": topo.segment_cidr(seg)}
            if self.etcd is not None and self.etcd.netns == sw["netns"]:
                sw["ip"] = self.etcd.host
            switches.append(sw)
        out: dict[str, Any] = {
            "name": self.name, "backend": self.backend, "store": self.store,
            "store_url": self.store_url, "network": self.network, "segments": self.segments,
            "status": self.status, "switches": switches,
            "hosts": [h.public() for h in self.hosts],
            "agents": {h.name: {"pid": h.agent_pid, "socket": h.socket, "log": h.log,
                                "subnet": h.subnet} for h in self.hosts},
            "timing": {"lease_ttl": self.lease_ttl, "renew_margin": self.renew_margin,
                       "resync_period": self.resync_period},
        }
        if self.segments == 2:
            out["router"] = {"name": "rt", "netns": netns_name(self.name, "rt"),
                             "ips": [topo.router_ip(1), topo.router_ip(2)]}
        if self.vms:
            out["vms"] = [v.public() for v in self.vms]
        if self.etcd is not None:
            out["etcd"] = {"pid": self.etcd.pid, "netns": self.etcd.netns,
                           "url": self.store_url, "data_dir": self.etcd.data_dir,
                           "log": self.etcd.log, "tls": self.etcd.tls,
                           "pki_dir": self.etcd.pki_dir, "auth": self.etcd.auth}
        return out

    # -- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        hosts = []
        for h in data.pop("hosts", []):
            h = dict(h)
            pods = [PodState(**p) for p in h.pop("pods", [])]
            hosts.append(HostState(**h, pods=pods))
        etcd = data.pop("etcd", None)
        vms = []
        for v in data.pop("vms", []):
            v = dict(v)
            pods = [PodState(**p) for p in v.pop("pods", [])]
            vms.append(VmState(**v, pods=pods))
        return cls(**data, hosts=hosts, etcd=EtcdState(**etcd) if etcd else None, vms=vms)


def save(state: LabState) -> None:
    path = state_path(state.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(state.to_dict(), fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load(name: str) -> LabState:
    """The lab's state; PodnetError(NOT_FOUND) with a one-line message if there is none."""
    check_name(name)
    try:
        with open(state_path(name)) as fh:
            return LabState.from_dict(json.load(fh))
    except FileNotFoundError:
        raise PodnetError(NOT_FOUND, f"no lab named {name!r}",
                          "see `podnet lab ls`") from None
    except (ValueError, TypeError) as exc:
        raise PodnetError(INVALID_CONFIG, f"lab {name!r} has a corrupt state file",
                          f"{state_path(name)}: {exc}; `podnet lab down {name}` removes it"
                          ) from exc


def exists(name: str) -> bool:
    return os.path.exists(state_path(name))


def known_labs() -> list[str]:
    """Every lab name with a lab dir or a run dir (also half-built or half-removed ones)."""
    names: set[str] = set()
    for base in (LABS_DIR, RUN_DIR):
        with contextlib.suppress(FileNotFoundError):
            names.update(n for n in os.listdir(base) if NAME_RE.match(n))
    return sorted(names)
