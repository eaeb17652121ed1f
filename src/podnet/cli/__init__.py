"""The `podnet` command: one small module per command group over cli/common.py.

Imports are lazy (inside handlers), so `podnet --help` and quick commands do not pay for
the netlink library.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from podnet import config
from podnet.errors import PodnetError


def build_parser() -> argparse.ArgumentParser:
    from podnet.cli import admin, bench, lab, network, pod, service

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
    admin.register(sub)
    network.register(sub)
    pod.register(sub)
    service.register(sub)
    lab.register(sub)
    bench.register(sub)
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
