"""`podnet service create|ls|inspect|rm|config`: services in the store; agents program them."""

from __future__ import annotations

import argparse
import re
from typing import Any

from podnet.cli.common import command, group, parse_pairs, print_json, resources, table
from podnet.errors import INVALID_CONFIG, NotFound, PodnetError
from podnet.resources import Resources

PORT_RE = re.compile(r"^(\d+)(?::(\d+))?(?:/([A-Za-z]+))?$")


def parse_port(text: str) -> dict[str, Any]:
    """PORT[:TARGET][/PROTO], e.g. 80:8080/tcp."""
    m = PORT_RE.match(text.strip())
    if not m:
        raise PodnetError(INVALID_CONFIG, "invalid --port", f"{text!r}: use PORT[:TARGET][/PROTO]")
    port, target, proto = m.groups()
    return {"port": int(port), "target_port": int(target) if target else None,
            "protocol": (proto or "tcp").lower()}


def _rows(res: Resources) -> list[dict[str, Any]]:
    endpoints = res.services.endpoints()
    rows = []
    for svc in res.services.list():
        d = svc.to_dict()
        d["endpoints"] = endpoints.get(svc.name, [])
        rows.append(d)
    return rows


def cmd_create(args: argparse.Namespace) -> int:
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
    spec = Service(
        name=args.name, ports=tuple(built), cluster_ip=args.cluster_ip,
        type="NodePort" if args.type.lower() == "nodeport" else "ClusterIP",
        session_affinity="ClientIP" if args.affinity == "client-ip" else "None",
        affinity_timeout=args.affinity_timeout,
        selector=parse_pairs(args.selector, "selector"),
    )
    with resources(args) as res:
        svc = res.services.create(spec).to_dict()
    if args.json:
        print_json(svc)
    else:
        shown = ", ".join(f"{p['port']}/{p['protocol']}" + (f" (node port {p['node_port']})"
                          if p.get("node_port") else "") for p in svc["ports"])
        print(f"service {svc['name']} created: {svc['cluster_ip']} {shown}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with resources(args) as res:
        rows = _rows(res)
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


def cmd_inspect(args: argparse.Namespace) -> int:
    with resources(args) as res:
        rows = [r for r in _rows(res) if r["name"] == args.name]
    if not rows:
        raise NotFound(f"service {args.name!r} does not exist", kind="service")
    print_json(rows[0])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with resources(args) as res:
        if not res.services.delete(args.name):
            raise NotFound(f"service {args.name!r} does not exist", kind="service")
    print(f"service {args.name} removed")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    with resources(args) as res:
        print_json(res.services.configure(cidr=args.cidr,
                                          node_port_range=args.node_port_range))
    return 0


def register(sub: Any) -> None:
    ssub = group(sub, "service", "ClusterIP / NodePort services, programmed by every agent")
    sc = command(ssub, "create", cmd_create, "create a service", json_flag=True)
    sc.add_argument("name")
    sc.add_argument("--port", action="append", required=True, metavar="PORT[:TARGET][/PROTO]")
    sc.add_argument("--selector", action="append", metavar="KEY=VALUE[,KEY=VALUE]")
    sc.add_argument("--type", default="ClusterIP", choices=["ClusterIP", "NodePort",
                                                            "clusterip", "nodeport"])
    sc.add_argument("--node-port", type=int, help="NodePort: the node port (default: allocated)")
    sc.add_argument("--cluster-ip", help="the virtual IP (default: allocated)")
    sc.add_argument("--affinity", choices=["none", "client-ip"], default="none")
    sc.add_argument("--affinity-timeout", type=int, default=10800)
    command(ssub, "ls", cmd_ls, "list services with their endpoints", json_flag=True)
    si = command(ssub, "inspect", cmd_inspect, "show one service (JSON)")
    si.add_argument("name")
    si.add_argument("--json", action="store_true", help="print JSON (the default)")
    sr = command(ssub, "rm", cmd_rm, "remove a service")
    sr.add_argument("name")
    sco = command(ssub, "config", cmd_config, "set the service CIDR / node port range")
    sco.add_argument("--cidr")
    sco.add_argument("--node-port-range", metavar="LOW-HIGH")
