"""`podnet network create|ls|inspect|rm`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from podnet import config
from podnet.cli.common import command, group, print_json, resources, table
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.model import Network


def cmd_create(args: argparse.Namespace) -> int:
    net = Network(
        name=args.name, driver=args.driver, subnet=args.subnet, gateway=args.gateway,
        mtu=args.mtu, ip_masq=args.ip_masq, bridge=args.bridge,
        subnet_len=args.subnet_len, subnet_min=args.subnet_min, subnet_max=args.subnet_max,
    )
    if args.backend:
        try:
            net.backend = json.loads(args.backend)
        except ValueError as exc:
            raise PodnetError(INVALID_CONFIG, "--backend is not valid JSON", str(exc)) from exc
    with resources(args) as res:
        net = res.create_network(net, pool=args.pool)
    if args.json:
        print_json(net.to_dict())
    else:
        print(f"network {net.name} created ({net.driver}, {net.subnet})")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with resources(args) as res:
        nets = res.list_networks()
    if args.json:
        print_json([n.to_dict() for n in nets])
    else:
        table("networks", ["name", "driver", "subnet", "gateway", "mtu", "bridge"],
              [[n.name, n.driver, n.subnet, n.gateway, n.mtu, n.bridge] for n in nets])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    with resources(args) as res:
        net = res.get_network(args.name)
        info: dict[str, Any] = net.to_dict()
        info["subnets"] = [s.to_dict() for s in res.list_subnets(net.name)]
        info["ports"] = [p.to_dict() for p in res.list_ports(net.name)]
        info["allocations"] = res.address_owners(net.name)
    print_json(info)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from podnet.agent.attach import Attacher

    with resources(args) as res:
        Attacher(res, config.node_name()).remove_network(args.name, force=args.force)
    print(f"network {args.name} removed")
    return 0


def register(sub: Any) -> None:
    nsub = group(sub, "network", "manage networks")
    c = command(nsub, "create", cmd_create, "create a network", json_flag=True)
    c.add_argument("name")
    c.add_argument("--driver", default="bridge", help="null, bridge, vxlan, host-gw, udp")
    c.add_argument("--subnet", help="CIDR (default: carved from --pool)")
    c.add_argument("--pool", help="subnet pool name, or a CIDR to carve a /24 from "
                   "(default: the pool `default`, 10.200.0.0/16)")
    c.add_argument("--gateway")
    c.add_argument("--mtu", type=int)
    c.add_argument("--ip-masq", action="store_true", help="masquerade traffic leaving the subnet")
    c.add_argument("--bridge", help="bridge name (default pnbr-NAME)")
    c.add_argument("--subnet-len", type=int, help="overlay: prefix length of host subnets")
    c.add_argument("--subnet-min", help="overlay: lowest host subnet to lease")
    c.add_argument("--subnet-max", help="overlay: highest host subnet to lease")
    c.add_argument("--backend", help='overlay backend options as JSON, e.g. {"VNI": 1}')
    command(nsub, "ls", cmd_ls, "list networks", json_flag=True)
    i = command(nsub, "inspect", cmd_inspect, "show a network with its subnets and ports")
    i.add_argument("name")
    i.add_argument("--json", action="store_true", help="print JSON (the default)")
    r = command(nsub, "rm", cmd_rm, "remove a network")
    r.add_argument("name")
    r.add_argument("--force", action="store_true", help="detach its pods first")
