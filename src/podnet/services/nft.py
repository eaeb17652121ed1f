"""Services as an nftables ruleset: rendering (full and per-service delta), applying, reading back.

Why this shape (see FACTS.md, "nftables at 10,000 services"):
- Dispatch is ONE named verdict map keyed `ip daddr . meta l4proto . th dport` (and one keyed
  `meta l4proto . th dport` for node ports on local addresses), so the cost of finding a
  service does not grow with the number of services.
- Each service port gets one chain whose endpoint choice is a probability cascade of plain
  rules (`numgen random mod 3 0 dnat to A`, `numgen random mod 2 0 dnat to B`, `dnat to C`).
  Anonymous maps (`numgen ... map {...}`) make a 10k-service load take 17-49 s instead of <1 s.
- Hairpin (a pod reaching itself through its service) is one postrouting rule and one shared
  set of `A . A` pairs, instead of a rule per endpoint: `ip saddr . ip daddr @hairpin`.
- Session affinity follows kube-proxy's nftables mode: one dynamic set of client addresses per
  endpoint (`flags dynamic,timeout`). A hit refreshes the timeout (`update`), so stickiness
  lasts `timeout` after the client's last new connection, as in Kubernetes; a removed
  endpoint's set goes with it in the same transaction, so no stale choice survives. (A single
  `ip saddr : ipv4_addr` map per service cannot do that with nft 1.0.6: a map lookup cannot be
  compared, cannot feed `update`, and packet-path `delete` on maps is refused by the kernel.)
- Services without endpoints are rejected (TCP reset / ICMP port unreachable) in a filter
  chain at prerouting (and output, for local clients), before routing: this works even where
  the host has no route for the service CIDR (forward-hook rejects would never see the packet).
- Everything is text for `nft -f`: the same 10k-service ruleset as `nft -j` JSON takes
  1.6-1.9x as long to load (measured by benchmarks/services_scale.py).
- A full sync never deletes the table: it flushes rules and the static maps and re-adds them
  in one transaction, deleting only stale chains and sets. Affinity state survives, and a
  re-run leaves `nft list table` text identical.

Scripts run through libnftables (the library behind `nft -f`, same parser, same text) on a
worker thread parked inside the target namespace (backend "lib", the default when the
library loads): no fork/exec per update. At 10,000 services a one-service update takes
about 35 ms this way against about 55 ms with a `nft` process, which must also load
itself and free the 10,000-chain cache it read; most of what remains is nft re-reading
that cache and the kernel re-validating the table after a rule with `dnat` changes.
Backend "cli" runs `nsenter --net=PATH -- nft -f -` instead. Neither
touches the caller's namespace: nsenter enters only the network namespace of its child,
and the worker thread's setns(2) affects that thread alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import ipaddress
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podnet.errors import INVALID_CONFIG, KERNEL_FAILURE, PLUGIN_NOT_AVAILABLE, PodnetError
from podnet.kernel import netns as kns
from podnet.services.model import NODE_PORT, Service, ServicePort

TABLE = "podnet-svc"
FAMILY = "ip"
DEFAULT_MASQ_MARK = 0x2000

# Static sets and maps, in declaration order.
SET_HAIRPIN = "hairpin"
SET_NOEP_IPS = "no-ep-ips"
SET_NOEP_NODEPORTS = "no-ep-nodeports"
MAP_IPS = "svc-ips"
MAP_NODEPORTS = "svc-nodeports"
STATIC_SETS: dict[str, str] = {
    SET_HAIRPIN: "type ipv4_addr . ipv4_addr;",
    SET_NOEP_IPS: "type ipv4_addr . inet_proto . inet_service;",
    SET_NOEP_NODEPORTS: "type inet_proto . inet_service;",
    MAP_IPS: "type ipv4_addr . inet_proto . inet_service : verdict;",
    MAP_NODEPORTS: "type inet_proto . inet_service : verdict;",
}
_MAPS = {MAP_IPS, MAP_NODEPORTS}
BASE_CHAINS = (
    "services",
    "endpoints-check",
    "reject-svc",
    "filter-prerouting",
    "filter-output",
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
)
CHAIN_PREFIX = "svc-"
AFFINITY_PREFIX = "aff-"
_AFFINITY_SIZE = 65535
_MAX_DETAILS = 2000


# -- names ------------------------------------------------------------------------------------
def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def chain_name(service: str, port: ServicePort) -> str:
    """Deterministic, short and nft-safe: svc-<name[:24]>-<proto>-<port>-<hash of all three>."""
    return f"{CHAIN_PREFIX}{service[:24]}-{port.protocol}-{port.port}-" + _short_hash(
        f"{service}/{port.protocol}/{port.port}"
    )


def affinity_set_name(chain: str, timeout: int, endpoint: str) -> str:
    """aff-<chain hash>-<timeout>-<endpoint as hex>: a new timeout means a new set."""
    hexip = f"{int(ipaddress.IPv4Address(endpoint)):08x}"
    return f"{AFFINITY_PREFIX}{chain[-8:]}-{timeout}-{hexip}"


# -- what one service contributes ----------------------------------------------------------------
Element = tuple[str, str, str]  # (set or map name, key, value; "" for plain sets)


@dataclass(frozen=True)
class Objects:
    """The nftables objects one service owns (chains, affinity sets) or shares (elements)."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Mapping[str, str] = field(default_factory=dict)
    elements: frozenset[Element] = frozenset()


def sort_endpoints(endpoints: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated IPv4 endpoints in address order (the cascade's order)."""
    out: set[ipaddress.IPv4Address] = set()
    for ep in endpoints:
        try:
            addr = ipaddress.ip_address(ep)
        except (ValueError, TypeError) as exc:
            raise PodnetError(INVALID_CONFIG, "invalid endpoint address", repr(ep)) from exc
        if addr.version != 4:
            raise PodnetError(INVALID_CONFIG, "only IPv4 endpoints are supported", str(ep))
        out.add(addr)  # type: ignore[arg-type]
    return tuple(str(a) for a in sorted(out))


def render_service(
    service: Service, endpoints: Sequence[str], mark: int = DEFAULT_MASQ_MARK
) -> Objects:
    """Chains, affinity sets and dispatch elements for one service and its endpoints."""
    if service.cluster_ip is None:
        raise PodnetError(
            INVALID_CONFIG, "service has no cluster IP", f"allocate one for {service.name!r} first"
        )
    eps = sort_endpoints(endpoints)
    vip = service.cluster_ip
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    elements: set[Element] = {(SET_HAIRPIN, f"{ep} . {ep}", "") for ep in eps}
    for port in service.ports:
        if service.type == NODE_PORT and port.node_port is None:
            raise PodnetError(
                INVALID_CONFIG,
                "NodePort service has no node port",
                f"allocate one for {service.name!r} port {port.port}/{port.protocol} first",
            )
        proto = port.protocol
        ip_key = f"{vip} . {proto} . {port.port}"
        np_key = f"{proto} . {port.node_port}" if port.node_port is not None else None
        if not eps:
            elements.add((SET_NOEP_IPS, ip_key, ""))
            if np_key:
                elements.add((SET_NOEP_NODEPORTS, np_key, ""))
            continue
        chain = chain_name(service.name, port)
        elements.add((MAP_IPS, ip_key, f"goto {chain}"))
        if np_key:
            elements.add((MAP_NODEPORTS, np_key, f"goto {chain}"))
        rules: list[str] = []
        if np_key:
            # Entered by node port (destination is a local address, not the VIP): masquerade,
            # so replies come back through this host.
            rules.append(f"ip daddr != {vip} meta mark set meta mark | {mark:#010x}")
        dnat = {ep: f"dnat to {ep}:{port.target}" for ep in eps}
        update = {ep: "" for ep in eps}
        if service.affinity:
            for ep in eps:
                aff = affinity_set_name(chain, service.affinity_timeout, ep)
                sets[aff] = (
                    f"type ipv4_addr; size {_AFFINITY_SIZE}; flags dynamic,timeout; "
                    f"timeout {service.affinity_timeout}s;"
                )
                update[ep] = f"update @{aff} {{ ip saddr }} "
                rules.append(f"meta l4proto {proto} ip saddr @{aff} {update[ep]}{dnat[ep]}")
        n = len(eps)
        for i, ep in enumerate(eps):
            pick = f"numgen random mod {n - i} 0 " if i < n - 1 else ""
            rules.append(f"meta l4proto {proto} {pick}{update[ep]}{dnat[ep]}")
        chains[chain] = tuple(rules)
    return Objects(chains=chains, sets=sets, elements=frozenset(elements))


def base_chains(mark: int = DEFAULT_MASQ_MARK) -> dict[str, tuple[str, ...]]:
    """The fixed chains: hooks, dispatch, the no-endpoint reject, masquerading."""
    m = f"{mark:#010x}"
    local = "ip daddr != 127.0.0.0/8 fib daddr type local"
    return {
        "services": (
            f"ip daddr . meta l4proto . th dport vmap @{MAP_IPS}",
            f"{local} meta l4proto . th dport vmap @{MAP_NODEPORTS}",
        ),
        "endpoints-check": (
            f"ip daddr . meta l4proto . th dport @{SET_NOEP_IPS} goto reject-svc",
            f"{local} meta l4proto . th dport @{SET_NOEP_NODEPORTS} goto reject-svc",
        ),
        "reject-svc": ("meta l4proto tcp reject with tcp reset", "reject"),
        "filter-prerouting": (
            "type filter hook prerouting priority dstnat - 10; policy accept;",
            "ct state new jump endpoints-check",
        ),
        "filter-output": (
            "type filter hook output priority -110; policy accept;",
            "ct state new jump endpoints-check",
        ),
        "nat-prerouting": (
            "type nat hook prerouting priority dstnat; policy accept;",
            "jump services",
        ),
        "nat-output": ("type nat hook output priority -100; policy accept;", "jump services"),
        "nat-postrouting": (
            "type nat hook postrouting priority srcnat; policy accept;",
            f"ip saddr . ip daddr @{SET_HAIRPIN} masquerade fully-random",
            f"meta mark & {m} == {m} meta mark set meta mark ^ {m} masquerade fully-random",
        ),
    }


# -- rendering ------------------------------------------------------------------------------------
_T = f"{FAMILY} {TABLE}"


def _chain_block(name: str, rules: Sequence[str]) -> list[str]:
    return [f"\tchain {name} {{", *(f"\t\t{r}" for r in rules), "\t}"]


def _element_cmds(verb: str, elements: Iterable[Element]) -> list[str]:
    by_set: dict[str, list[str]] = {}
    for name, key, value in elements:
        if verb == "add" and value:
            by_set.setdefault(name, []).append(f"{key} : {value}")
        else:
            by_set.setdefault(name, []).append(key)
    out = []
    for name in sorted(by_set):
        items = sorted(by_set[name])
        out.append(f"{verb} element {_T} {name} {{ " + ",\n\t".join(items) + " }")
    return out


def render_full(
    objects: Iterable[Objects],
    *,
    mark: int = DEFAULT_MASQ_MARK,
    stale_chains: Iterable[str] = (),
    stale_sets: Iterable[str] = (),
    destructive: bool = False,
) -> str:
    """One transaction that makes the table exactly the union of `objects`.

    Default: keep the table and its affinity sets; flush every rule and the static sets and
    maps, delete `stale_*` objects, re-add everything. `destructive`: delete the table and
    build it from scratch (the fallback when an existing object has an incompatible shape).
    """
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    elements: set[Element] = set()
    for obj in objects:
        chains.update(obj.chains)
        sets.update(obj.sets)
        elements.update(obj.elements)
    out = [f"add table {_T}"]
    if destructive:
        out.append(f"delete table {_T}")
    else:
        out.append(f"flush table {_T}")
    out.append(f"table {_T} {{")
    out += [f"\t{'map' if n in _MAPS else 'set'} {n} {{ {d} }}" for n, d in STATIC_SETS.items()]
    out.append("}")
    if not destructive:
        out += [f"flush {'map' if n in _MAPS else 'set'} {_T} {n}" for n in STATIC_SETS]
        out += [f"delete chain {_T} {c}" for c in sorted(stale_chains)]
        out += [f"delete set {_T} {s}" for s in sorted(stale_sets)]
    out.append(f"table {_T} {{")
    out += [f"\tset {n} {{ {sets[n]} }}" for n in sorted(sets)]
    for name in sorted(chains):
        out += _chain_block(name, chains[name])
    for name, rules in base_chains(mark).items():
        out += _chain_block(name, rules)
    out.append("}")
    out += _element_cmds("add", elements)
    return "\n".join(out) + "\n"


@dataclass
class Delta:
    """The kernel changes for one service: small, and applied as one transaction."""

    add_sets: dict[str, str] = field(default_factory=dict)
    add_chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    replace_chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    del_chains: list[str] = field(default_factory=list)
    del_sets: list[str] = field(default_factory=list)
    add_elements: set[Element] = field(default_factory=set)
    del_elements: set[Element] = field(default_factory=set)


def diff(old: Objects | None, new: Objects | None) -> Delta:
    """What turns `old` into `new` (element changes still to be ref-counted by the caller)."""
    old = old or Objects()
    new = new or Objects()
    d = Delta()
    d.add_sets = {n: v for n, v in new.sets.items() if n not in old.sets}
    d.del_sets = sorted(n for n in old.sets if n not in new.sets)
    for name, rules in new.chains.items():
        if name not in old.chains:
            d.add_chains[name] = rules
        elif old.chains[name] != rules:
            d.replace_chains[name] = rules
    d.del_chains = sorted(n for n in old.chains if n not in new.chains)
    d.add_elements = set(new.elements - old.elements)
    d.del_elements = set(old.elements - new.elements)
    return d


def render_delta(delta: Delta) -> str:
    """Order matters: drop references before their targets, create targets before references."""
    out = _element_cmds("delete", delta.del_elements)
    out += [f"add set {_T} {n} {{ {d} }}" for n, d in sorted(delta.add_sets.items())]
    for name, rules in sorted({**delta.add_chains, **delta.replace_chains}.items()):
        out.append(f"add chain {_T} {name}")
        if name in delta.replace_chains:
            out.append(f"flush chain {_T} {name}")
        out += [f"add rule {_T} {name} {r}" for r in rules]
    for name in delta.del_chains:
        out += [f"flush chain {_T} {name}", f"delete chain {_T} {name}"]
    out += [f"delete set {_T} {n}" for n in delta.del_sets]
    out += _element_cmds("add", delta.add_elements)
    return "\n".join(out) + "\n" if out else ""


# -- running nft ----------------------------------------------------------------------------------
def _failure(msg: str, err: str) -> PodnetError:
    err = err.strip()
    if len(err) > _MAX_DETAILS:
        err = err[:_MAX_DETAILS] + " ..."
    return PodnetError(KERNEL_FAILURE, msg, err)


class Nft:
    """Runs nft scripts in one network namespace (None: the caller's own).

    backend "lib": libnftables in-process, on a worker thread that joined the namespace once
    and stays there, so its netlink socket (even a re-opened one) is always inside it.
    backend "cli": `nsenter --net=PATH -- nft -f -` (or plain `nft` for the own namespace).
    backend "auto" (default): "lib" when libnftables loads, else "cli".
    """

    def __init__(self, netns: str | None = None, backend: str = "auto") -> None:
        if backend not in ("auto", "cli", "lib"):
            raise PodnetError(INVALID_CONFIG, "unknown nft backend", backend)
        self.netns = kns.netns_path(netns) if netns else None
        if self.netns:
            os.close(kns.open_netns(self.netns))  # fail early and clearly if it is missing
        self._lib: _LibNft | None = None
        if backend in ("auto", "lib"):
            try:
                self._lib = _LibNft(self.netns)
                backend = "lib"
            except PodnetError:
                if backend == "lib":
                    raise
                backend = "cli"
        self.backend = backend
        if backend == "cli":
            self._nft = shutil.which("nft") or "/usr/sbin/nft"
            if not os.path.exists(self._nft):
                raise PodnetError(PLUGIN_NOT_AVAILABLE, "nft command not found", "install nftables")

    def close(self) -> None:
        if self._lib is not None:
            self._lib.close()
            self._lib = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self, script: str, *, json_out: bool = False, terse: bool = False, what: str = "nft"
    ) -> str:
        """Run a script (one atomic transaction for changes); returns stdout.

        A one-line listing is passed as arguments (`nft -j -f -` prints no JSON listings).
        `terse` omits set elements from listings.
        """
        if self._lib is not None:
            return self._lib.run(script, json_out=json_out, terse=terse, what=what)
        argv = [self._nft] + (["-j"] if json_out else []) + (["-t"] if terse else [])
        one_line = script.count("\n") <= 1 and script.startswith("list ")
        argv += script.split() if one_line else ["-f", "-"]
        if self.netns:
            argv = ["nsenter", f"--net={self.netns}", "--", *argv]
        proc = subprocess.run(
            argv, input="" if one_line else script, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise _failure(f"{what} failed", proc.stderr)
        return proc.stdout

    # -- reading back ------------------------------------------------------------------------------
    def list_table(self) -> str:
        """`nft list table ip podnet-svc` text ('' when the table does not exist)."""
        try:
            return self.run(f"list table {_T}\n", what="list table")
        except PodnetError as exc:
            if "No such file or directory" in exc.details:
                return ""
            raise

    def names(self) -> tuple[set[str], set[str]]:
        """Chain names and set/map names in our table (cheap: no rules, no elements)."""
        chains: set[str] = set()
        sets: set[str] = set()
        for kind, dest in (("chains", chains), ("sets", sets), ("maps", sets)):
            out = self.run(
                f"list {kind} {FAMILY}\n", json_out=True, terse=True, what=f"list {kind}"
            )
            for obj in json.loads(out or '{"nftables": []}').get("nftables", []):
                for key in ("chain", "set", "map"):
                    item = obj.get(key)
                    if item and item.get("table") == TABLE:
                        dest.add(item["name"])
        return chains, sets

    def apply(self, script: str, what: str = "nftables transaction") -> None:
        if script:
            self.run(script, what=what)


class _LibNft:
    """libnftables (the library behind `nft`) on a thread parked inside the namespace."""

    _OUTPUT_JSON = 1 << 4  # enum nft_output_flags in libnftables.h
    _OUTPUT_TERSE = 1 << 11

    def __init__(self, netns: str | None) -> None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise PodnetError(PLUGIN_NOT_AVAILABLE, "libnftables not found", str(exc)) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._jobs: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._main, args=(netns,), name="podnet-nft", daemon=True
        )
        self._thread.start()
        err = self._ready.get()
        if err is not None:
            raise err

    def _main(self, netns: str | None) -> None:
        try:
            if netns:
                # run_in's thread joins the namespace and serves until close(); this one waits.
                kns.run_in(netns, self._serve)
            else:
                self._serve()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            err = exc if isinstance(exc, PodnetError) else _failure("nft worker failed", str(exc))
            self._ready.put(err)

    def _serve(self) -> None:
        lib = self._lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise PodnetError(KERNEL_FAILURE, "libnftables context failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._ready.put(None)
        try:
            while (job := self._jobs.get()) is not None:
                script, flags, reply = job
                lib.nft_ctx_output_set_flags(ctx, flags)
                rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
                reply.put((rc, out, err))
        finally:
            lib.nft_ctx_free(ctx)

    def run(self, script: str, *, json_out: bool, terse: bool, what: str) -> str:
        reply: queue.Queue = queue.Queue()
        flags = (self._OUTPUT_JSON if json_out else 0) | (self._OUTPUT_TERSE if terse else 0)
        self._jobs.put((script, flags, reply))
        rc, out, err = reply.get()
        if rc != 0:
            raise _failure(f"{what} failed", err)
        return out

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
