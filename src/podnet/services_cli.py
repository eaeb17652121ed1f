"""`podnet service ...` and `podnet pod label`: services in the store; agents program them."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from podnet import keys
from podnet.errors import INVALID_CONFIG, NOT_FOUND, PodnetError

CONFIG_KEY = keys.CONFIG + "services"
PORT_RE = re.compile(r"^(\d+)(?::(\d+))?(?:/([A-Za-z]+))?$")


def parse_port(text: str) -> dict[str, Any]:
    """PORT[:TARGET][/PROTO], e.g. 80:8080/tcp."""
    m = PORT_RE.match(text.strip())
    if not m:
        raise PodnetError(INVALID_CONFIG, "invalid --port", f"{text!r}: use PORT[:TARGET][/PROTO]")
    port, target, proto = m.groups()
    return {"port": int(port), "target_port": int(target) if target else None,
            "protocol": (proto or "tcp").lower()}


def parse_selector(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if "=" not in part:
                raise PodnetError(INVALID_CONFIG, "invalid selector", f"{part!r}: use KEY=VALUE")
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


def allocator(store):  # type: ignore[no-untyped-def]
    from podnet.services.alloc import ServiceAllocator

    cfg = store.get(CONFIG_KEY)
    if cfg is None:
        return ServiceAllocator(store)
    lo, hi = cfg.value["node_port_range"]
    return ServiceAllocator(store, cidr=cfg.value["cidr"], node_port_range=(lo, hi))


def create_service(args: argparse.Namespace, store) -> dict:  # type: ignore[no-untyped-def]
    from podnet.services.model import Service, ServicePort

    ports = [parse_port(p) for p in args.port]
    if args.node_port is not None and len(ports) != 1:
        raise PodnetError(INVALID_CONFIG, "--node-port needs exactly one --port")
    built = []
    for p in ports:
        name = f"{p['protocol']}-{p['port']}" if len(ports) > 1 else ""
        built.append(ServicePort(port=p["port"], protocol=p["protocol"],
                                 target_port=p["target_port"], name=name,
                                 node_port=args.node_port))
    svc = Service(
        name=args.name, ports=tuple(built), cluster_ip=args.cluster_ip,
        type="NodePort" if args.type.lower() == "nodeport" else "ClusterIP",
        session_affinity="ClientIP" if args.affinity == "client-ip" else "None",
        affinity_timeout=args.affinity_timeout, selector=parse_selector(args.selector),
    )
    return allocator(store).create(svc).to_dict()


def configure(args: argparse.Namespace, store) -> dict:  # type: ignore[no-untyped-def]
    from podnet.services.alloc import ServiceAllocator

    current = store.get(CONFIG_KEY)
    value = dict(current.value) if current else {"cidr": "10.96.0.0/16",
                                                 "node_port_range": [30000, 32767]}
    if args.cidr:
        value["cidr"] = args.cidr
    if args.node_port_range:
        lo, _, hi = args.node_port_range.partition("-")
        try:
            value["node_port_range"] = [int(lo), int(hi)]
        except ValueError as exc:
            raise PodnetError(INVALID_CONFIG, "invalid --node-port-range",
                              args.node_port_range) from exc
    ServiceAllocator(store, cidr=value["cidr"],
                     node_port_range=tuple(value["node_port_range"]))  # validates
    store.put(CONFIG_KEY, value)
    return value


def service_rows(store) -> list[dict]:  # type: ignore[no-untyped-def]
    from podnet.agent.services import select
    from podnet.model import Endpoint

    eps = [Endpoint.from_dict(e.value) for e in store.list(keys.ENDPOINTS)]
    rows = []
    for svc in allocator(store).list():
        d = svc.to_dict()
        d["endpoints"] = select(svc.selector, eps)
        rows.append(d)
    return rows


def label_pod(store, pod: str, pairs: list[str]) -> list[dict]:  # type: ignore[no-untyped-def]
    """Set labels on every endpoint of a pod (named as listed by `pod ls`, or its tail)."""
    from podnet.model import Endpoint

    labels = parse_selector(pairs)
    found = []
    for entry in store.list(keys.ENDPOINTS):
        ep = Endpoint.from_dict(entry.value)
        if pod in (ep.pod, ep.container_id) or ep.pod.rsplit("/", 1)[-1] == pod:
            ep.labels.update(labels)
            for k, v in list(ep.labels.items()):
                if v == "":
                    del ep.labels[k]  # KEY= removes a label
            store.put(entry.key, ep.to_dict(), revision=entry.revision)
            found.append({"pod": ep.pod, "network": ep.network, "labels": ep.labels})
    if not found:
        raise PodnetError(NOT_FOUND, f"pod {pod!r} is not attached to any network")
    return found


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# -- command handlers ---------------------------------------------------------------
def cmd_service_create(args: argparse.Namespace) -> int:
    with open_store_for(args) as store:
        svc = create_service(args, store)
    if args.json:
        print_json(svc)
    else:
        ports = ", ".join(f"{p['port']}/{p['protocol']}" + (f" (node port {p['node_port']})"
                          if p.get("node_port") else "") for p in svc["ports"])
        print(f"service {svc['name']} created: {svc['cluster_ip']} {ports}")
    return 0


def cmd_service_ls(args: argparse.Namespace) -> int:
    with open_store_for(args) as store:
        rows = service_rows(store)
    if args.json:
        print_json(rows)
    else:
        table("services", ["name", "type", "cluster ip", "ports", "selector", "endpoints"],
               [[r["name"], r["type"], r["cluster_ip"],
                 ", ".join(f"{p['port']}->{p.get('target_port') or p['port']}/{p['protocol']}"
                           + (f" :{p['node_port']}" if p.get("node_port") else "")
                           for p in r["ports"]),
                 ",".join(f"{k}={v}" for k, v in r["selector"].items()),
                 " ".join(r["endpoints"])] for r in rows])
    return 0


def cmd_service_inspect(args: argparse.Namespace) -> int:
    with open_store_for(args) as store:
        rows = [r for r in service_rows(store) if r["name"] == args.name]
    if not rows:
        raise PodnetError(105, f"service {args.name!r} does not exist")
    print_json(rows[0])
    return 0


def cmd_service_rm(args: argparse.Namespace) -> int:
    with open_store_for(args) as store:
        if not allocator(store).delete(args.name):
            raise PodnetError(105, f"service {args.name!r} does not exist")
    print(f"service {args.name} removed")
    return 0


def cmd_service_config(args: argparse.Namespace) -> int:
    with open_store_for(args) as store:
        print_json(configure(args, store))
    return 0


def open_store_for(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from podnet.cli import _store

    return _store(args)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from podnet.cli import _table

    _table(title, columns, rows)


def add_service_commands(sub: Any, add: Any) -> None:
    """`podnet service ...` (add: the CLI's helper that registers a handler)."""
    svc = sub.add_parser("service", help="ClusterIP / NodePort services",
                         description="ClusterIP / NodePort services, programmed by every agent")
    ssub = svc.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    sc = add(ssub, "create", cmd_service_create, "create a service", json_flag=True)
    sc.add_argument("name")
    sc.add_argument("--port", action="append", required=True, metavar="PORT[:TARGET][/PROTO]")
    sc.add_argument("--selector", action="append", metavar="KEY=VALUE[,KEY=VALUE]")
    sc.add_argument("--type", default="ClusterIP", choices=["ClusterIP", "NodePort",
                                                            "clusterip", "nodeport"])
    sc.add_argument("--node-port", type=int, help="NodePort: the node port (default: allocated)")
    sc.add_argument("--cluster-ip", help="the virtual IP (default: allocated)")
    sc.add_argument("--affinity", choices=["none", "client-ip"], default="none")
    sc.add_argument("--affinity-timeout", type=int, default=10800)
    add(ssub, "ls", cmd_service_ls, "list services with their endpoints", json_flag=True)
    si = add(ssub, "inspect", cmd_service_inspect, "show one service (JSON)")
    si.add_argument("name")
    si.add_argument("--json", action="store_true", help="print JSON (the default)")
    sr = add(ssub, "rm", cmd_service_rm, "remove a service")
    sr.add_argument("name")
    sco = add(ssub, "config", cmd_service_config, "set the service CIDR / node port range")
    sco.add_argument("--cidr")
    sco.add_argument("--node-port-range", metavar="LOW-HIGH")
