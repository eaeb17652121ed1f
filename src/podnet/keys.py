"""The store's key layout, in one place.

Only the resource layer (`resources/`), the stores and the service datapath read this:
every other module reaches records through `podnet.resources`.

Schema version 2 (this release):
  /podnet/schema                         {"version": 2}
  /podnet/networks/NAME                  Network
  /podnet/subnets/CIDR                   Subnet (key by CIDR: reserves it, so none overlap)
  /podnet/subnetpools/NAME               SubnetPool
  /podnet/ports/NET/DEVICE_ID/IFNAME     Port (the key claims (device, ifname) on NET)
  /podnet/ipam/NET/IP                    address owner {"port", "device_id", "ifname", ...}
  /podnet/leases/NET/SUBNET              host subnet lease (TTL'd)
  /podnet/nodes/NET/NODE                 a node's remembered lease (subnet, MTU, backend data)
  /podnet/services/...                   services, cluster IPs, node ports (services/alloc.py)
  /podnet/config/services                the service CIDR and node port range
Version 1 (the first release) had no schema key and kept ports as
/podnet/endpoints/NET/CONTAINER/IFNAME; resources/migrate.py upgrades it in place.
"""

from __future__ import annotations

ROOT = "/podnet"
SCHEMA = f"{ROOT}/schema"
NETWORKS = f"{ROOT}/networks/"
SUBNETS = f"{ROOT}/subnets/"
SUBNET_POOLS = f"{ROOT}/subnetpools/"
PORTS = f"{ROOT}/ports/"
ADDRESSES = f"{ROOT}/ipam/"
CONFIG = f"{ROOT}/config/"
SERVICES_CONFIG = f"{CONFIG}services"
SERVICES = f"{ROOT}/services"  # services/alloc.py keeps its own layout below this
LEASES = f"{ROOT}/leases/"  # host subnet leases (TTL'd), one per (network, subnet)
NODES = f"{ROOT}/nodes/"  # a node's remembered subnet and backend data (no TTL)
V1_ENDPOINTS = f"{ROOT}/endpoints/"  # schema 1's ports, migrated away


def network(name: str) -> str:
    return f"{NETWORKS}{name}"


def subnet(cidr: str) -> str:
    return f"{SUBNETS}{cidr.replace('/', '_')}"


def subnet_pool(name: str) -> str:
    return f"{SUBNET_POOLS}{name}"


def address_prefix(net: str) -> str:
    return f"{ADDRESSES}{net}/"


def address(net: str, ip: str) -> str:
    return f"{ADDRESSES}{net}/{ip}"


def port_prefix(net: str) -> str:
    return f"{PORTS}{net}/"


def port(net: str, device_id: str, ifname: str) -> str:
    return f"{PORTS}{net}/{device_id}/{ifname}"


def lease_prefix(net: str) -> str:
    return f"{LEASES}{net}/"


def lease(net: str, subnet: str) -> str:
    return f"{LEASES}{net}/{subnet.replace('/', '_')}"


def subnet_of_lease_key(key: str) -> str:
    return key.rsplit("/", 1)[1].replace("_", "/")


def node_prefix(net: str) -> str:
    return f"{NODES}{net}/"


def node(net: str, name: str) -> str:
    return f"{NODES}{net}/{name}"
