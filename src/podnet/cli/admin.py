"""`podnet agent`, `cleanup`, `demo`, `install-cni`: running and maintaining a host."""

from __future__ import annotations

import argparse
import os
from typing import Any

from podnet import config
from podnet.cli.common import command, print_json, socket_path


def cmd_agent(args: argparse.Namespace) -> int:
    from podnet.agent.main import main as agent_main
    from podnet.agent.overlay import Timing
    from podnet.agent.server import ServiceCache
    from podnet.api import cni

    def serve_cni(cache: ServiceCache) -> Any:
        return cni.handler(cache.for_conf)

    timing = Timing(args.lease_ttl, args.renew_margin, args.resync_period)
    return agent_main(args.store, args.socket, args.node_name, serve_cni, args.public_ip,
                      timing)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from podnet.cleanup import cleanup

    run_dir = os.path.dirname(os.path.abspath(socket_path(args)))
    report = cleanup(config.store_url(args.store), run_dir, all_labs=args.all_labs)
    if args.json:
        print_json(report)
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


def register(sub: Any) -> None:
    a = command(sub, "agent", cmd_agent, "run the per-host agent (foreground)")
    a.add_argument("--node-name", help="this host's node name (default: hostname)")
    a.add_argument("--public-ip", help="underlay address peers reach this host on "
                   "(default: the address of the default route's interface)")
    a.add_argument("--lease-ttl", type=float, default=60.0, help="host subnet lease TTL (s)")
    a.add_argument("--renew-margin", type=float, default=20.0,
                   help="renew this many seconds before the lease expires")
    a.add_argument("--resync-period", type=float, default=10.0,
                   help="seconds between full resyncs of peers")
    cl = command(sub, "cleanup", cmd_cleanup, "remove everything podnet left behind",
                 json_flag=True)
    cl.add_argument("--all-labs", action="store_true",
                    help="also tear down labs that are still running (default: stale ones)")
    command(sub, "demo", cmd_demo, "single-host demo: two pods on a podnet network talk")
    ic = command(sub, "install-cni", cmd_install_cni, "install the fast podnet-cni executable")
    ic.add_argument("--dir", default="/opt/cni/bin")
