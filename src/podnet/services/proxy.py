"""The service proxy the agent owns: desired services in, one small nft transaction out.

Why an in-memory view: an update to one service must touch only that service's chains, sets
and map elements (about 30 ms of nft work at 10,000 services, against about a second for a
full load). To compute that delta without reading the kernel, the proxy remembers what it
last wrote: per service the rendered objects, and for shared map/set elements (the hairpin
pairs, which several services may need for the same pod) a reference count. `sync_all` is
the periodic full resync and the start-up path: it rewrites the whole table atomically,
deleting what no service wants, and leaves an unchanged table byte-for-byte identical.

Validation (names, ports, VIP/port and node-port clashes between services, endpoint
addresses) happens before any nft command runs, so bad input never changes the kernel.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from podnet.errors import IN_USE, INVALID_CONFIG, PodnetError
from podnet.services.model import Service
from podnet.services.nft import (
    BASE_CHAINS,
    DEFAULT_MASQ_MARK,
    STATIC_SETS,
    Delta,
    Element,
    Nft,
    Objects,
    diff,
    render_delta,
    render_full,
    render_service,
    sort_endpoints,
)

Claim = tuple[str, ...]


def _claims(service: Service) -> list[Claim]:
    """The dispatch keys a service occupies; two services may not share one."""
    out: list[Claim] = []
    for p in service.ports:
        out.append(("ip", str(service.cluster_ip), p.protocol, str(p.port)))
        if p.node_port is not None:
            out.append(("node", p.protocol, str(p.node_port)))
    return out


def _describe(claim: Claim) -> str:
    if claim[0] == "ip":
        return f"cluster IP {claim[1]} port {claim[3]}/{claim[2]}"
    return f"node port {claim[2]}/{claim[1]}"


class ServiceProxy:
    """Programs services into `table ip podnet-svc` of one network namespace."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        mark: int = DEFAULT_MASQ_MARK,
        backend: str = "auto",
        nft: Nft | None = None,
    ) -> None:
        if not isinstance(mark, int) or mark <= 0 or mark & (mark - 1):
            raise PodnetError(INVALID_CONFIG, "masquerade mark must be a single bit", repr(mark))
        self.mark = mark
        self.nft = nft or Nft(netns, backend)
        self._lock = threading.Lock()
        self._synced = False
        self._services: dict[str, Service] = {}
        self._endpoints: dict[str, tuple[str, ...]] = {}
        self._objects: dict[str, Objects] = {}
        self._refs: Counter[Element] = Counter()
        self._claims: dict[Claim, str] = {}

    # -- queries -----------------------------------------------------------------------------
    @property
    def services(self) -> dict[str, Service]:
        return dict(self._services)

    def endpoints(self, name: str) -> tuple[str, ...]:
        return self._endpoints.get(name, ())

    def table(self) -> str:
        """The kernel's current `nft list table ip podnet-svc` text (read back)."""
        return self.nft.list_table()

    def close(self) -> None:
        self.nft.close()

    # -- full resync -------------------------------------------------------------------------
    def sync_all(
        self, services: Iterable[Service], endpoints_by_service: Mapping[str, Sequence[str]]
    ) -> None:
        """Make the kernel table exactly these services, in one transaction."""
        with self._lock:
            wanted: dict[str, Service] = {}
            for svc in services:
                if svc.name in wanted:
                    raise PodnetError(INVALID_CONFIG, "duplicate service name", svc.name)
                wanted[svc.name] = svc
            eps = {n: sort_endpoints(endpoints_by_service.get(n, ())) for n in wanted}
            self._full(wanted, eps)

    def _full(self, wanted: dict[str, Service], eps: dict[str, tuple[str, ...]]) -> None:
        claims: dict[Claim, str] = {}
        for svc in wanted.values():
            for claim in _claims(svc):
                if claim in claims:
                    raise PodnetError(
                        IN_USE, f"{_describe(claim)} used by two services",
                        f"{claims[claim]} and {svc.name}",
                    )
                claims[claim] = svc.name
        objects = {n: render_service(s, eps[n], self.mark) for n, s in wanted.items()}
        chains, sets = self.nft.names()
        keep_chains = set(BASE_CHAINS).union(*(o.chains for o in objects.values()))
        keep_sets = set(STATIC_SETS).union(*(o.sets for o in objects.values()))
        try:
            self.nft.apply(
                render_full(
                    objects.values(), mark=self.mark,
                    stale_chains=chains - keep_chains, stale_sets=sets - keep_sets,
                ),
                what="full service sync",
            )
        except PodnetError:
            # An object of ours has an incompatible shape (say, from an older podnet): start
            # the table over. Affinity state is lost; everything else is rebuilt atomically.
            self.nft.apply(
                render_full(objects.values(), mark=self.mark, destructive=True),
                what="full service sync (rebuild)",
            )
        refs: Counter[Element] = Counter()
        for obj in objects.values():
            refs.update(obj.elements)
        self._services, self._endpoints, self._objects = dict(wanted), dict(eps), objects
        self._refs, self._claims, self._synced = refs, claims, True

    # -- incremental -------------------------------------------------------------------------
    def update(self, service: Service, endpoints: Sequence[str]) -> None:
        """Add or change one service (and its endpoints): one small transaction."""
        with self._lock:
            eps = sort_endpoints(endpoints)
            for claim in _claims(service):
                owner = self._claims.get(claim)
                if owner is not None and owner != service.name:
                    raise PodnetError(
                        IN_USE, f"{_describe(claim)} already used by service {owner}",
                        service.name,
                    )
            new = render_service(service, eps, self.mark)
            if (
                self._synced
                and self._services.get(service.name) == service
                and self._endpoints.get(service.name) == eps
            ):
                return
            self._change(service.name, service, eps, new)

    def remove(self, service: Service | str) -> None:
        """Delete one service; unknown names are fine (removal is idempotent)."""
        name = service if isinstance(service, str) else service.name
        with self._lock:
            if name not in self._services:
                return
            self._change(name, None, (), None)

    def _change(
        self, name: str, service: Service | None, eps: tuple[str, ...], new: Objects | None
    ) -> None:
        services = dict(self._services)
        endpoints = dict(self._endpoints)
        if service is None:
            services.pop(name, None)
            endpoints.pop(name, None)
        else:
            services[name] = service
            endpoints[name] = eps
        if not self._synced:
            # Nothing known about the kernel yet (start-up): write the whole table.
            self._full(services, endpoints)
            return
        delta = diff(self._objects.get(name), new)
        refs = self._count(delta)
        try:
            self.nft.apply(render_delta(delta), what=f"update of service {name}")
        except PodnetError:
            # The kernel drifted from our view (table flushed behind our back?): resync.
            self._full(services, endpoints)
            return
        self._services, self._endpoints, self._refs = services, endpoints, refs
        if new is None:
            self._objects.pop(name, None)
        else:
            self._objects[name] = new
        self._claims = {c: n for c, n in self._claims.items() if n != name}
        if service is not None:
            self._claims.update({c: name for c in _claims(service)})

    def _count(self, delta: Delta) -> Counter[Element]:
        """Reference-count element changes; only first users add and last users delete."""
        refs = self._refs.copy()
        gone, added = set(), set()
        for elem in delta.del_elements:
            refs[elem] -= 1
            if refs[elem] <= 0:
                del refs[elem]
                gone.add(elem)
        for elem in delta.add_elements:
            refs[elem] += 1
            if refs[elem] == 1:
                added.add(elem)
        delta.del_elements, delta.add_elements = gone, added
        return refs

