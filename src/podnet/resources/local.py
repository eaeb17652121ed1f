"""The resource layer on podnet's own store (SQLite on one machine, etcd across machines).

Why create-if-absent everywhere: many CNI processes and agents write at once, and the
store has no multi-key transactions. A subnet's key is its CIDR, so reserving it is one
create-if-absent put (two creators of one inline network race on it and exactly one
wins); a port's key is (network, device, ifname), so claiming it is the duplicate
check; an address is its own key (resources/ipam.py). Every multi-step write undoes its
earlier steps when a later one fails, whatever the failure, so a store error (a full
disk, a lost etcd) never leaves a reservation without its owner.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from podnet import keys
from podnet.backends.overlay import BACKENDS as OVERLAY_DRIVERS
from podnet.errors import (
    ALREADY_ATTACHED,
    POOL_EXHAUSTED,
    TRY_AGAIN_LATER,
    Conflict,
    NotFound,
    PodnetError,
    ResourceConflict,
    invalid,
)
from podnet.model import (
    SUBNET_ROLE_CLUSTER,
    SUBNET_ROLE_PORTS,
    Addressing,
    FixedIP,
    Network,
    Port,
    Subnet,
    SubnetPool,
)
from podnet.resources import ipam, migrate, validate
from podnet.resources.leases import StoreLeases
from podnet.services.world import StoreServices
from podnet.store import Store

DEFAULT_POOL = SubnetPool(name="default", prefixes=["10.200.0.0/16"], default_prefixlen=24,
                          id="default")


def new_id() -> str:
    return str(uuid.uuid4())


def random_mac() -> str:
    """A locally administered unicast MAC (as Neutron's base_mac fa:16:3e does)."""
    tail = os.urandom(4)
    return "02:" + ":".join(f"{b:02x}" for b in (0x50, *tail))


class LocalResources:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.leases = StoreLeases(store)
        self.services = StoreServices(store)
        migrate.ensure_current(store)

    # -- networks -------------------------------------------------------------------
    def validate_network(self, net: Network) -> Network:
        return validate.network(net)

    def find_network(self, name: str) -> Network | None:
        entry = self.store.get(keys.network(name))
        return Network.from_dict(entry.value) if entry else None

    def get_network(self, name: str) -> Network:
        net = self.find_network(name)
        if net is None:
            raise NotFound(f"network {name!r} does not exist", kind="network")
        return net

    def list_networks(self) -> list[Network]:
        return [Network.from_dict(e.value) for e in self.store.list(keys.NETWORKS)]

    def create_network(self, net: Network, *, exist_ok: bool = False,
                       pool: str | None = None) -> Network:
        if not net.subnet and net.driver != "null":
            prefixes, prefixlen, pool_id = self._pool_prefixes(pool, None)
            for _ in range(20):
                net.subnet = self._carve(prefixes, prefixlen)
                try:
                    return self._create_network(validate.network(net), exist_ok=exist_ok,
                                                subnetpool_id=pool_id)
                except Conflict:
                    net.gateway = None
                    continue
            raise PodnetError(TRY_AGAIN_LATER, "could not reserve a subnet from the pool",
                              ", ".join(prefixes))
        return self._create_network(validate.network(net), exist_ok=exist_ok)

    def _create_network(self, net: Network, *, exist_ok: bool,
                        subnetpool_id: str | None = None) -> Network:
        existing = self.find_network(net.name)
        if existing is not None:
            return self._existing(existing, net, exist_ok)
        if net.subnet:
            self._refuse_overlap(net.subnet)
        net.created = time.time()
        net.id = net.id or new_id()
        reservation = None
        if net.subnet:
            role = SUBNET_ROLE_CLUSTER if net.driver in OVERLAY_DRIVERS else SUBNET_ROLE_PORTS
            reservation = Subnet(id=new_id(), network=net.name, cidr=net.subnet,
                                 gateway_ip=net.gateway, subnetpool_id=subnetpool_id,
                                 role=role, created=net.created)
        try:
            if reservation is not None:
                self.store.put(keys.subnet(reservation.cidr), reservation.to_dict(), revision=0)
            try:
                self.store.put(keys.network(net.name), net.to_dict(), revision=0)
            except BaseException:
                if reservation is not None:
                    self.store.delete(keys.subnet(reservation.cidr))
                raise
        except Conflict:
            winner = self.find_network(net.name)
            if winner is not None and exist_ok and validate.same_definition(winner, net):
                return winner
            raise
        return net

    @staticmethod
    def _existing(existing: Network, asked: Network, exist_ok: bool) -> Network:
        if exist_ok and validate.same_definition(existing, asked):
            return existing
        if exist_ok:
            raise invalid(
                f"network {asked.name!r} exists with a different definition",
                f"stored: {existing.driver} {existing.subnet}; asked: {asked.driver} "
                f"{asked.subnet}")
        raise ResourceConflict(f"network {asked.name!r} already exists")

    def delete_network(self, name: str) -> Network:
        net = self.get_network(name)
        if self.store.list(keys.port_prefix(name)):
            raise ResourceConflict(f"network {name!r} has attached endpoints; detach them first")
        self.store.delete(keys.network(name))
        for sub in self.list_subnets(name):
            self.store.delete(keys.subnet(sub.cidr))
        for ip in ipam.allocations(self.store, name):
            self.store.delete(keys.address(name, ip))
        return net

    # -- subnets ----------------------------------------------------------------------
    def _subnets(self) -> list[Subnet]:
        return [Subnet.from_dict(e.value) for e in self.store.list(keys.SUBNETS)]

    def list_subnets(self, network: str | None = None) -> list[Subnet]:
        return [s for s in self._subnets() if network is None or s.network == network]

    def get_subnet(self, id_or_cidr: str) -> Subnet:
        for s in self._subnets():
            if id_or_cidr in (s.id, s.cidr):
                return s
        raise NotFound(f"subnet {id_or_cidr!r} does not exist", kind="subnet")

    def _refuse_overlap(self, cidr: str) -> None:
        new = ipaddress.IPv4Network(cidr)
        for other in self._subnets():
            if ipaddress.IPv4Network(other.cidr).overlaps(new):
                raise invalid(f"subnet {cidr} overlaps {other.cidr} (network {other.network})")

    def create_subnet(self, subnet: Subnet, *, pool: str | None = None,
                      prefixlen: int | None = None) -> Subnet:
        self.get_network(subnet.network)
        if not subnet.cidr:
            prefixes, default_len, pool_id = self._pool_prefixes(pool, prefixlen)
            subnet.cidr = self._carve(prefixes, default_len)
            subnet.subnetpool_id = pool_id
        cidr = validate.ipv4_subnet(subnet.cidr)
        subnet.gateway_ip = validate.gateway_of(cidr, subnet.gateway_ip)
        self._refuse_overlap(subnet.cidr)
        subnet.id = subnet.id or new_id()
        subnet.created = time.time()
        try:
            self.store.put(keys.subnet(subnet.cidr), subnet.to_dict(), revision=0)
        except Conflict as exc:
            raise ResourceConflict(f"subnet {subnet.cidr} already exists") from exc
        return subnet

    def delete_subnet(self, id_or_cidr: str) -> Subnet:
        sub = self.get_subnet(id_or_cidr)
        if any(ip.subnet_id == sub.id for p in self.list_ports(sub.network)
               for ip in p.fixed_ips):
            raise ResourceConflict(f"subnet {sub.cidr} has ports; remove them first")
        self.store.delete(keys.subnet(sub.cidr))
        return sub

    # -- subnet pools -------------------------------------------------------------------
    def create_subnet_pool(self, pool: SubnetPool) -> SubnetPool:
        validate.network_name(pool.name)
        if not pool.prefixes:
            raise invalid("a subnet pool needs at least one prefix")
        for prefix in pool.prefixes:
            validate.ipv4_subnet(prefix, "pool prefix")
        if not pool.min_prefixlen <= pool.default_prefixlen <= pool.max_prefixlen <= 32:
            raise invalid("pool prefix lengths must satisfy min <= default <= max <= 32")
        pool.id = pool.id or new_id()
        pool.created = time.time()
        try:
            self.store.put(keys.subnet_pool(pool.name), pool.to_dict(), revision=0)
        except Conflict as exc:
            raise ResourceConflict(f"subnet pool {pool.name!r} already exists") from exc
        return pool

    def get_subnet_pool(self, name: str) -> SubnetPool:
        entry = self.store.get(keys.subnet_pool(name))
        if entry is not None:
            return SubnetPool.from_dict(entry.value)
        if name == DEFAULT_POOL.name:
            return DEFAULT_POOL
        raise NotFound(f"subnet pool {name!r} does not exist", kind="subnetpool")

    def list_subnet_pools(self) -> list[SubnetPool]:
        pools = [SubnetPool.from_dict(e.value) for e in self.store.list(keys.SUBNET_POOLS)]
        if all(p.name != DEFAULT_POOL.name for p in pools):
            pools.insert(0, DEFAULT_POOL)
        return pools

    def delete_subnet_pool(self, name: str) -> SubnetPool:
        pool = self.get_subnet_pool(name)
        if any(s.subnetpool_id == pool.id for s in self._subnets()):
            raise ResourceConflict(f"subnet pool {name!r} has subnets; remove them first")
        self.store.delete(keys.subnet_pool(name))
        return pool

    def _pool_prefixes(self, pool: str | None, prefixlen: int | None
                       ) -> tuple[list[str], int, str | None]:
        """(prefixes, prefix length, pool id) of a pool name, or of a CIDR given as pool."""
        if pool and "/" in pool:  # a bare CIDR: carve a /24 from it (`--pool 10.9.0.0/16`)
            validate.ipv4_subnet(pool, "pool")
            return [pool], prefixlen or DEFAULT_POOL.default_prefixlen, None
        sp = self.get_subnet_pool(pool or DEFAULT_POOL.name)
        length = prefixlen or sp.default_prefixlen
        if not sp.min_prefixlen <= length <= sp.max_prefixlen:
            raise invalid(f"prefix length {length} outside pool {sp.name}'s "
                          f"{sp.min_prefixlen}-{sp.max_prefixlen}")
        return list(sp.prefixes), length, sp.id

    def _carve(self, prefixes: list[str], prefixlen: int) -> str:
        taken = [ipaddress.IPv4Network(s.cidr) for s in self._subnets()]
        for prefix in prefixes:
            for candidate in ipaddress.IPv4Network(prefix).subnets(new_prefix=prefixlen):
                if not any(candidate.overlaps(t) for t in taken):
                    return str(candidate)
        raise PodnetError(POOL_EXHAUSTED, "no free subnet left in pool", ", ".join(prefixes))

    # -- ports ---------------------------------------------------------------------------
    def create_port(self, port: Port, addressing: Addressing) -> Port:
        port.id = port.id or new_id()
        port.mac_address = port.mac_address or random_mac()
        port.created = port.created or time.time()
        owner = {"port": port.id, "device_id": port.device_id, "ifname": port.ifname,
                 "pod": port.pod, "subnet": addressing.subnet}
        key = keys.port(port.network, port.device_id, port.ifname)
        if self.store.get(key) is not None:  # before allocating: a full subnet is no excuse
            raise self._duplicate(port)
        allocated: list[str] = []
        try:
            if addressing.subnet:
                reserved = [addressing.gateway] if addressing.gateway else []
                asked = port.fixed_ips[0].ip_address if port.fixed_ips else ""
                ip = (ipam.claim(self.store, port.network, addressing.subnet, asked, owner,
                                 reserved=reserved) if asked else
                      ipam.allocate(self.store, port.network, addressing.subnet, owner,
                                    reserved=reserved))
                allocated.append(ip)
                port.fixed_ips = [FixedIP(ip, addressing.subnet, addressing.subnet_id)]
            port.gateway = addressing.gateway
            port.mtu = addressing.mtu
            try:
                self.store.put(key, port.to_dict(), revision=0)  # the claim (races)
            except Conflict as exc:
                raise self._duplicate(port) from exc
        except BaseException:
            for ip in allocated:
                ipam.release(self.store, port.network, ip, device_id=port.device_id)
            raise
        return port

    @staticmethod
    def _duplicate(port: Port) -> ResourceConflict:
        return ResourceConflict(f"container {port.device_id} already has {port.ifname} on "
                                f"network {port.network}", code=ALREADY_ATTACHED)

    def update_port(self, port: Port) -> Port:
        self.store.put(keys.port(port.network, port.device_id, port.ifname), port.to_dict())
        return port

    def find_port(self, network: str, device_id: str, ifname: str) -> Port | None:
        entry = self.store.get(keys.port(network, device_id, ifname))
        return Port.from_dict(entry.value) if entry else None

    def get_port(self, port_id: str) -> Port:
        for port in self.list_ports():
            if port.id == port_id:
                return port
        raise NotFound(f"port {port_id!r} does not exist", kind="port")

    def list_ports(self, network: str | None = None) -> list[Port]:
        prefix = keys.port_prefix(network) if network else keys.PORTS
        return [Port.from_dict(e.value) for e in self.store.list(prefix)]

    def delete_port(self, port: Port) -> None:
        for ip in port.fixed_ips:
            ipam.release(self.store, port.network, ip.ip_address, device_id=port.device_id)
        self.store.delete(keys.port(port.network, port.device_id, port.ifname))

    def release_addresses_of(self, network: str, device_id: str, ifname: str) -> list[str]:
        return ipam.release_owner(self.store, network, device_id, ifname)

    def gc_addresses(self, network: str, valid: Iterable[tuple[str, str]]) -> list[str]:
        keep = set(valid)
        recorded = {p.ip for p in self.list_ports(network) if p.ip}
        freed = []
        for ip, owner in ipam.allocations(self.store, network).items():
            who = (owner.get("device_id") or owner.get("container_id"), owner.get("ifname"))
            if who not in keep and ip not in recorded and ipam.release(self.store, network, ip):
                freed.append(ip)
        return freed

    def address_owners(self, network: str) -> dict[str, dict[str, Any]]:
        return ipam.allocations(self.store, network)

    # -- the store itself -----------------------------------------------------------------
    def revision(self) -> int:
        return self.store.revision()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LocalResources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

