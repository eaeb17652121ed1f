"""The store's key layout, in one place."""

from __future__ import annotations

ROOT = "/podnet"
NETWORKS = f"{ROOT}/networks/"
SUBNETS = f"{ROOT}/subnets/"  # reservation of a network's subnet: no two overlap
ADDRESSES = f"{ROOT}/ipam/"
ENDPOINTS = f"{ROOT}/endpoints/"
CONFIG = f"{ROOT}/config/"
LEASES = f"{ROOT}/leases/"  # host subnet leases (TTL'd), one per (network, subnet)
NODES = f"{ROOT}/nodes/"  # a node's remembered subnet and VTEP MAC (no TTL)


def network(name: str) -> str:
    return f"{NETWORKS}{name}"


def subnet(cidr: str) -> str:
    return f"{SUBNETS}{cidr.replace('/', '_')}"


def address_prefix(net: str) -> str:
    return f"{ADDRESSES}{net}/"


def address(net: str, ip: str) -> str:
    return f"{ADDRESSES}{net}/{ip}"


def endpoint_prefix(net: str) -> str:
    return f"{ENDPOINTS}{net}/"


def endpoint(net: str, container_id: str, ifname: str) -> str:
    return f"{ENDPOINTS}{net}/{container_id}/{ifname}"


def lease_prefix(net: str) -> str:
    return f"{LEASES}{net}/"


def lease(net: str, subnet: str) -> str:
    return f"{LEASES}{net}/{subnet.replace('/', '_')}"


def node(net: str, name: str) -> str:
    return f"{NODES}{net}/{name}"
