"""Store schema versions and the in-place upgrade from one to the next.

Why in place: a store holds the addresses of running pods; an upgrade must keep every
one of them. Each step is idempotent (create-if-absent writes, deletes that tolerate
absence), so two processes opening an old store at once both migrate safely, and a
step interrupted half-way is finished by the next opener. The version key is written
last. Opening a current store costs one read.

Version 1 -> 2:
  /podnet/endpoints/NET/CID/IF (Endpoint) -> /podnet/ports/NET/CID/IF (Port)
  networks gain an id; subnet reservations {"cidr", "network"} become Subnet records;
  address owners' "container_id" is kept and "device_id" added; node records keep
  their backend data under "backend" and the pod MTU as its own field.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from podnet import keys
from podnet.errors import Conflict, PodnetError
from podnet.model import (
    SUBNET_ROLE_CLUSTER,
    SUBNET_ROLE_PORTS,
    FixedIP,
    Network,
    Port,
    Subnet,
)
from podnet.resources.leases import node_from_value
from podnet.store import Store

CURRENT = 2
OVERLAY_DRIVERS = ("vxlan", "host-gw", "udp")


def version(store: Store) -> int:
    entry = store.get(keys.SCHEMA)
    if entry is not None:
        return int(entry.value.get("version", 1))
    return 1 if _has_any(store) else CURRENT


def _has_any(store: Store) -> bool:
    return bool(store.list(keys.NETWORKS) or store.list(keys.V1_ENDPOINTS))


def ensure_current(store: Store) -> int:
    """Upgrade the store to CURRENT if it is older; returns the version found."""
    entry = store.get(keys.SCHEMA)
    if entry is not None:
        found = int(entry.value.get("version", 1))
        if found > CURRENT:
            raise PodnetError(7, f"store schema {found} is newer than this podnet ({CURRENT})",
                              "upgrade podnet")
        if found == CURRENT:
            return found
    found = version(store)
    if found < 2:
        _v1_to_v2(store)
    try:
        store.put(keys.SCHEMA, {"version": CURRENT}, revision=entry.revision if entry else 0)
    except Conflict:
        pass  # another process finished the migration first
    return found


def _v1_to_v2(store: Store) -> None:
    nets: dict[str, Network] = {}
    for e in store.list(keys.NETWORKS):
        net = Network.from_dict(e.value)
        if not net.id:
            net.id = str(uuid.uuid4())
            _put_if_unchanged(store, e.key, net.to_dict(), e.revision)
        nets[net.name] = net
    for e in store.list(keys.SUBNETS):
        if "id" in e.value:
            continue
        owner = nets.get(e.value.get("network", ""))
        role = SUBNET_ROLE_CLUSTER if owner and owner.driver in OVERLAY_DRIVERS else \
            SUBNET_ROLE_PORTS
        sub = Subnet(id=str(uuid.uuid4()), network=e.value.get("network", ""),
                     cidr=e.value["cidr"], gateway_ip=owner.gateway if owner else None,
                     role=role, created=owner.created if owner else 0.0)
        _put_if_unchanged(store, e.key, sub.to_dict(), e.revision)
    subnet_ids = {Subnet.from_dict(e.value).cidr: Subnet.from_dict(e.value).id
                  for e in store.list(keys.SUBNETS) if "id" in e.value}
    for e in store.list(keys.V1_ENDPOINTS):
        port = port_from_v1(e.value, subnet_ids)
        new_key = keys.port(port.network, port.device_id, port.ifname)
        try:
            store.put(new_key, port.to_dict(), revision=0)
        except Conflict:
            pass  # migrated already
        store.delete(e.key)
    for e in store.list(keys.ADDRESSES):
        if "device_id" not in e.value and "container_id" in e.value:
            _put_if_unchanged(store, e.key, {**e.value, "device_id": e.value["container_id"]},
                              e.revision)
    for e in store.list(keys.NODES):
        if "backend" in e.value:
            continue
        _, _, rest = e.key.partition(keys.NODES)
        network, _, node = rest.rpartition("/")
        rec = node_from_value(network, node, e.value)
        _put_if_unchanged(store, e.key, {"subnet": rec.subnet, "public_ip": rec.public_ip,
                                         "pod_mtu": rec.pod_mtu, "backend": rec.backend},
                          e.revision)


def _put_if_unchanged(store: Store, key: str, value: dict[str, Any], revision: int) -> None:
    try:
        store.put(key, value, revision=revision)
    except Conflict:
        pass  # somebody rewrote it meanwhile (another migrator or a newer writer)


def port_from_v1(value: dict[str, Any], subnet_ids: dict[str, str]) -> Port:
    """A schema-1 Endpoint record as a Port."""
    fixed = []
    address = value.get("address")
    if address:
        cidr = str(ipaddress.IPv4Network(address, strict=False))
        fixed.append(FixedIP(address.split("/")[0], cidr, subnet_ids.get(cidr, "")))
    return Port(
        id=str(uuid.uuid4()), network=value["network"], device_id=value["container_id"],
        ifname=value["ifname"], device_owner="cni", frontend="cni", host="",
        sandbox=value.get("netns", ""), pod=value.get("pod", ""), fixed_ips=fixed,
        mac_address=value.get("mac"), gateway=value.get("gateway"), mtu=value.get("mtu"),
        host_ifname=value.get("host_ifname"), labels=dict(value.get("labels") or {}),
        status="ACTIVE", created=float(value.get("created") or 0.0),
    )
