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


def cmd_create(args: argparse.Namespace, store) -> dict:  # type: ignore[no-untyped-def]
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


def cmd_config(args: argparse.Namespace, store) -> dict:  # type: ignore[no-untyped-def]
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
