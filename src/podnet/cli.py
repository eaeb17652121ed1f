"""The `podnet` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from podnet import config
from podnet.errors import PodnetError

POD_NETNS_PREFIX = "pn-pod-"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from podnet.store import open_store

    return open_store(config.store_url(args.store))


# -- network ------------------------------------------------------------------------
def cmd_network_create(args: argparse.Namespace) -> int:
    from podnet import networks
    from podnet.model import Network

    net = Network(
        name=args.name, driver=args.driver, subnet=args.subnet, gateway=args.gateway,
        mtu=args.mtu, ip_masq=args.ip_masq, bridge=args.bridge,
        subnet_len=args.subnet_len, subnet_min=args.subnet_min, subnet_max=args.subnet_max,
    )
    if args.backend:
        net.backend = json.loads(args.backend)
    with _store(args) as store:
        net = networks.create(store, net, pool=args.pool)
    if args.json:
        _print_json(net.to_dict())
    else:
        print(f"network {net.name} created ({net.driver}, {net.subnet})")
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    from podnet import networks

    with _store(args) as store:
        nets = networks.list_all(store)
    if args.json:
        _print_json([n.to_dict() for n in nets])
    else:
        _table("networks", ["name", "driver", "subnet", "gateway", "mtu", "bridge"],
               [[n.name, n.driver, n.subnet, n.gateway, n.mtu, n.bridge] for n in nets])
    return 0


def cmd_network_inspect(args: argparse.Namespace) -> int:
    from podnet import ipam, networks
    from podnet.endpoints import Endpoints

    with _store(args) as store:
        net = networks.get(store, args.name)
        info = net.to_dict()
        info["endpoints"] = [e.to_dict() for e in Endpoints(store, "").list(net.name)]
        info["allocations"] = ipam.allocations(store, net.name)
    _print_json(info)
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    from podnet import networks
    from podnet.endpoints import Endpoints

    with _store(args) as store:
        svc = Endpoints(store, config.node_name())
        net = networks.get(store, args.name)
        if args.force:
            for ep in svc.list(net.name):
                svc.detach(net, container_id=ep.container_id, ifname=ep.ifname)
        networks.delete(store, args.name, force=False)
        svc.driver(net.driver).teardown(net)
    print(f"network {args.name} removed")
    return 0


# -- pod ----------------------------------------------------------------------------
def _cni_call(args: argparse.Namespace, env: dict[str, str], conf: dict) -> dict | None:
    """Run a CNI request through the agent if one listens, else in-process."""
    from podnet.api import cni

    data = json.dumps(conf).encode()
    path = config.socket_path(args.socket)
    code: int
    try:
        from podnet.agent.server import call_cni

        code, out = call_cni(path, env, data)
    except OSError:  # no agent: the same work in-process (conf["store"] names the store)
        code, out = cni.handle(env, data, cni.in_process_service)
    answer = json.loads(out) if out.strip() else None
    if code != 0:
        assert answer is not None
        raise PodnetError(answer.get("code", 199), answer.get("msg", ""), answer.get("details", ""))
    return answer


def _pod_conf(args: argparse.Namespace, network: str) -> dict:
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": network, "network": network,
                            "type": "podnet-cni"}
    if args.store:
        conf["store"] = args.store
    return conf


def cmd_pod_add(args: argparse.Namespace) -> int:
    from podnet.kernel import netns

    created = None
    path = args.netns
    if not path:
        created = POD_NETNS_PREFIX + args.name.replace("/", "_")
        path = netns.create(created)
    conf = _pod_conf(args, args.network)
    labels = dict(kv.split("=", 1) for kv in args.label or [])
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
        _print_json(result)
    else:
        ips = ", ".join(ip["address"] for ip in (result or {}).get("ips", []))
        print(f"pod {args.name} attached to {args.network}: {ips} (netns {path})")
    return 0


def cmd_pod_rm(args: argparse.Namespace) -> int:
    from podnet.endpoints import Endpoints
    from podnet.kernel import netns

    with _store(args) as store:
        eps = [e for e in Endpoints(store, "").list() if e.pod == args.name
               or e.container_id == args.name]
    if not eps:
        raise PodnetError(105, f"pod {args.name!r} is not attached to any network")
    for ep in eps:
        conf = _pod_conf(args, ep.network)
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": ep.container_id,
               "CNI_NETNS": ep.netns, "CNI_IFNAME": ep.ifname, "CNI_PATH": "/opt/cni/bin"}
        _cni_call(args, env, conf)
        name = os.path.basename(ep.netns)
        if name.startswith(POD_NETNS_PREFIX):
            netns.remove(name)
    print(f"pod {args.name} removed")
    return 0


def cmd_pod_ls(args: argparse.Namespace) -> int:
    from podnet.endpoints import Endpoints

    with _store(args) as store:
        eps = Endpoints(store, "").list()
    rows = [{"pod": e.pod, "network": e.network, "ifname": e.ifname, "address": e.address,
             "netns": e.netns, "container_id": e.container_id, "labels": e.labels}
            for e in sorted(eps, key=lambda e: (e.pod, e.network, e.ifname))]
    if args.json:
        _print_json(rows)
    else:
        _table("pods", ["pod", "network", "ifname", "address", "netns"],
               [[r["pod"], r["network"], r["ifname"], r["address"], r["netns"]] for r in rows])
    return 0


# -- services -------------------------------------------------------------------------
def cmd_pod_label(args: argparse.Namespace) -> int:
    from podnet import services_cli

    with _store(args) as store:
        out = services_cli.label_pod(store, args.pod, args.labels)
    if args.json:
        _print_json(out)
    else:
        for row in out:
            print(f"pod {row['pod']} ({row['network']}): "
                  + ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items())))
    return 0


# -- agent, cleanup, install-cni --------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from podnet.agent.main import main as agent_main
    from podnet.agent.overlay import Timing

    timing = Timing(args.lease_ttl, args.renew_margin, args.resync_period)
    return agent_main(args.store, args.socket, args.node_name, args.public_ip, timing)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from podnet.cleanup import cleanup

    run_dir = os.path.dirname(os.path.abspath(config.socket_path(args.socket)))
    report = cleanup(config.store_url(args.store), run_dir, all_labs=args.all_labs)
    if args.json:
        _print_json(report)
    else:
        for what, items in report.items():
            print(f"{what}: {len(items)} removed" + (f" ({', '.join(items)})" if items else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from podnet.demo import run

    return run()


def cmd_install_cni(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    path = install_cni(args.dir)
    print(f"installed {path}")
    return 0


# -- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podnet", description="Overlay networking for containers.")
    p.add_argument("--store", help=f"store path, etcd://host:port or etcd+https://host:port "
                   f"(env {config.ENV_STORE}, default {config.DEFAULT_STORE})")
    for key, what in (("cacert", "CA certificate to trust (PEM)"),
                      ("cert", "client certificate (PEM)"), ("key", "client key (PEM)"),
                      ("user", "user name"), ("password", "password")):
        p.add_argument(f"--etcd-{key}", dest=f"etcd_{key}", metavar=key.upper(),
                       help=f"etcd store: {what} (env {config.ENV_ETCD[key]}"
                       + ("; prefer it: argv is visible to all" if key == "password" else "")
                       + ")")
    p.add_argument("--socket", help=f"agent socket (env {config.ENV_SOCKET}, "
                   f"default {config.DEFAULT_SOCKET})")
    p.add_argument("--lab", help="act on a lab's store and agents (see `podnet lab`)")
    p.add_argument("--host", default=None, help="with --lab: whose agent (default h1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, fn: Callable[[argparse.Namespace], int], help: str,
            json_flag: bool = False) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    a = add(sub, "agent", cmd_agent, "run the per-host agent (foreground)")
    a.add_argument("--node-name", help="this host's node name (default: hostname)")
    a.add_argument("--public-ip", help="underlay address peers reach this host on "
                   "(default: the address of the default route's interface)")
    a.add_argument("--lease-ttl", type=float, default=60.0, help="host subnet lease TTL (s)")
    a.add_argument("--renew-margin", type=float, default=20.0,
                   help="renew this many seconds before the lease expires")
    a.add_argument("--resync-period", type=float, default=10.0,
                   help="seconds between full resyncs of peers")

    net = sub.add_parser("network", help="manage networks", description="manage networks")
    nsub = net.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    c = add(nsub, "create", cmd_network_create, "create a network", json_flag=True)
    c.add_argument("name")
    c.add_argument("--driver", default="bridge", help="null, bridge, vxlan, host-gw, udp")
    c.add_argument("--subnet", help="CIDR (default: carved from --pool)")
    c.add_argument("--pool", help="pool to carve a /24 from (default 10.200.0.0/16)")
    c.add_argument("--gateway")
    c.add_argument("--mtu", type=int)
    c.add_argument("--ip-masq", action="store_true", help="masquerade traffic leaving the subnet")
    c.add_argument("--bridge", help="bridge name (default pnbr-NAME)")
    c.add_argument("--subnet-len", type=int, help="overlay: prefix length of host subnets")
    c.add_argument("--subnet-min", help="overlay: lowest host subnet to lease")
    c.add_argument("--subnet-max", help="overlay: highest host subnet to lease")
    c.add_argument("--backend", help='overlay backend options as JSON, e.g. {"VNI": 1}')
    add(nsub, "ls", cmd_network_ls, "list networks", json_flag=True)
    i = add(nsub, "inspect", cmd_network_inspect, "show a network with its endpoints")
    i.add_argument("name")
    i.add_argument("--json", action="store_true", help="print JSON (the default)")
    r = add(nsub, "rm", cmd_network_rm, "remove a network")
    r.add_argument("name")
    r.add_argument("--force", action="store_true", help="detach its pods first")

    pod = sub.add_parser("pod", help="attach namespaces by hand", description="manage pods")
    psub = pod.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    pa = add(psub, "add", cmd_pod_add, "attach a pod (network namespace) to a network",
             json_flag=True)
    pa.add_argument("name")
    pa.add_argument("--network", required=True)
    pa.add_argument("--netns", help=f"namespace path or name (default: {POD_NETNS_PREFIX}NAME)")
    pa.add_argument("--ifname", default="eth0")
    pa.add_argument("--label", action="append", metavar="KEY=VALUE")
    pr = add(psub, "rm", cmd_pod_rm, "detach a pod from all its networks")
    pr.add_argument("name")
    add(psub, "ls", cmd_pod_ls, "list pods", json_flag=True)
    pl = add(psub, "label", cmd_pod_label, "set labels on a pod (KEY= removes one)",
             json_flag=True)
    pl.add_argument("pod")
    pl.add_argument("labels", nargs="+", metavar="KEY=VALUE")

    from podnet.services_cli import add_service_commands

    add_service_commands(sub, add)

    cl = add(sub, "cleanup", cmd_cleanup, "remove everything podnet left behind",
             json_flag=True)
    cl.add_argument("--all-labs", action="store_true",
                    help="also tear down labs that are still running (default: stale ones)")
    add(sub, "demo", cmd_demo, "single-host demo: two pods on a podnet network talk")
    ic = add(sub, "install-cni", cmd_install_cni, "install the fast podnet-cni executable")
    ic.add_argument("--dir", default="/opt/cni/bin")
    from podnet.lab.cli import add_lab_commands

    add_lab_commands(sub)
    from podnet.bench.cli import add_bench_commands

    add_bench_commands(sub)
    return p


def _use_lab(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Point --store/--socket at a lab. An etcd lab's store is only reachable inside the
    lab, so the command re-runs itself inside the chosen lab host's namespace."""
    from podnet.lab import state

    st = state.load(args.lab)
    host = st.host(args.host or (st.hosts[0].name if st.hosts else "h1"))
    args.store = args.store or st.store_url
    args.socket = args.socket or host.socket
    if st.etcd is not None:  # the lab's own certificates (and credentials)
        from podnet.lab.etcd import client_settings

        config.set_etcd_flags(client_settings(st.etcd), override=False)
    if st.etcd is not None and not os.environ.get("PODNET_IN_LAB"):
        import subprocess

        env = {**os.environ, "PODNET_IN_LAB": args.lab}
        cmd = ["nsenter", f"--net=/run/netns/{host.netns}", sys.executable, "-m", "podnet",
               *argv]
        return subprocess.run(cmd, env=env).returncode
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    config.set_etcd_flags({k: getattr(args, f"etcd_{k}") for k in config.ENV_ETCD})
    try:
        if args.lab and args.command != "lab":
            code = _use_lab(args, argv)
            if code is not None:
                return code
        return int(args.fn(args) or 0)
    except PodnetError as exc:
        print(f"podnet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
