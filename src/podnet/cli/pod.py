"""`podnet pod add|rm|ls|label`: attach namespaces by hand, through the CNI path."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from podnet.cli.common import (
    POD_NETNS_PREFIX,
    command,
    group,
    parse_pairs,
    print_json,
    resources,
    socket_path,
    table,
)
from podnet.errors import INTERNAL, NotFound, PodnetError


def _cni_call(args: argparse.Namespace, env: dict[str, str], conf: dict[str, Any]
              ) -> dict[str, Any] | None:
    """Run a CNI request through the agent if one listens, else in-process."""
    from podnet.agent.server import call_cni
    from podnet.api import cni

    data = json.dumps(conf).encode()
    try:
        code, out = call_cni(socket_path(args), env, data)
    except OSError:  # no agent: the same work in-process (conf["store"] names the store)
        code, out = cni.handle(env, data, cni.in_process_service)
    answer: dict[str, Any] | None = json.loads(out) if out.strip() else None
    if code != 0:
        answer = answer or {}
        raise PodnetError(int(answer.get("code", INTERNAL)), answer.get("msg", ""),
                          answer.get("details", ""))
    return answer


def _pod_conf(args: argparse.Namespace, network: str) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": network, "network": network,
                            "type": "podnet-cni"}
    if args.store:
        conf["store"] = args.store
    return conf


def cmd_add(args: argparse.Namespace) -> int:
    from podnet.kernel import netns

    created = None
    path = args.netns
    if not path:
        created = POD_NETNS_PREFIX + args.name.replace("/", "_")
        path = netns.create(created)
    conf = _pod_conf(args, args.network)
    labels = parse_pairs(args.label)
    if labels:
        conf["runtimeConfig"] = {"labels": labels}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": args.name, "CNI_NETNS": path,
           "CNI_IFNAME": args.ifname, "CNI_ARGS": f"PODNET_POD={args.name}",
           "CNI_PATH": "/opt/cni/bin"}
    try:
        result = _cni_call(args, env, conf)
    except BaseException:
        if created:
            netns.remove(created)
        raise
    if args.json:
        print_json(result)
    else:
        ips = ", ".join(ip["address"] for ip in (result or {}).get("ips", []))
        print(f"pod {args.name} attached to {args.network}: {ips} (netns {path})")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from podnet.kernel import netns

    with resources(args) as res:
        ports = [p for p in res.list_ports() if args.name in (p.pod, p.device_id)]
    if not ports:
        raise NotFound(f"pod {args.name!r} is not attached to any network", kind="pod")
    for port in ports:
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": port.device_id,
               "CNI_NETNS": port.sandbox, "CNI_IFNAME": port.ifname,
               "CNI_PATH": "/opt/cni/bin"}
        _cni_call(args, env, _pod_conf(args, port.network))
        name = os.path.basename(port.sandbox)
        if name.startswith(POD_NETNS_PREFIX):
            netns.remove(name)
    print(f"pod {args.name} removed")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with resources(args) as res:
        ports = res.list_ports()
    rows = [{"pod": p.pod, "network": p.network, "ifname": p.ifname, "address": p.address,
             "netns": p.sandbox, "container_id": p.device_id, "labels": p.labels,
             "frontend": p.frontend, "mac": p.mac_address, "port": p.id, "status": p.status}
            for p in sorted(ports, key=lambda p: (p.pod, p.network, p.ifname))]
    if args.json:
        print_json(rows)
    else:
        table("pods", ["pod", "network", "ifname", "address", "netns"],
              [[r["pod"], r["network"], r["ifname"], r["address"], r["netns"]] for r in rows])
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from podnet.agent.attach import label_pod

    with resources(args) as res:
        ports = label_pod(res, args.pod, parse_pairs(args.labels))
    if args.json:
        print_json([{"pod": p.pod, "network": p.network, "labels": p.labels} for p in ports])
    else:
        for p in ports:
            print(f"pod {p.pod} ({p.network}): "
                  + ",".join(f"{k}={v}" for k, v in sorted(p.labels.items())))
    return 0


def register(sub: Any) -> None:
    psub = group(sub, "pod", "attach namespaces by hand")
    pa = command(psub, "add", cmd_add, "attach a pod (network namespace) to a network",
                 json_flag=True)
    pa.add_argument("name")
    pa.add_argument("--network", required=True)
    pa.add_argument("--netns", help=f"namespace path or name (default: {POD_NETNS_PREFIX}NAME)")
    pa.add_argument("--ifname", default="eth0")
    pa.add_argument("--label", action="append", metavar="KEY=VALUE")
    pr = command(psub, "rm", cmd_rm, "detach a pod from all its networks")
    pr.add_argument("name")
    command(psub, "ls", cmd_ls, "list pods", json_flag=True)
    pl = command(psub, "label", cmd_label, "set labels on a pod (KEY= removes one)",
                 json_flag=True)
    pl.add_argument("pod")
    pl.add_argument("labels", nargs="+", metavar="KEY=VALUE")
