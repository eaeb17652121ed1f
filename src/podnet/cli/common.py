"""What every `podnet` command module shares: output, the resource layer, the agent."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from podnet import config
from podnet.errors import INVALID_CONFIG, PodnetError
from podnet.resources import Resources

POD_NETNS_PREFIX = "pn-pod-"
Handler = Callable[[argparse.Namespace], int]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    Console().print(out)


def resources(args: argparse.Namespace) -> Resources:
    """The resource layer on the store the command names (--store, $PODNET_STORE)."""
    from podnet.resources import open_resources

    return open_resources(config.store_url(args.store))


def socket_path(args: argparse.Namespace) -> str:
    return config.socket_path(args.socket)


def parse_pairs(items: list[str] | None, what: str = "label") -> dict[str, str]:
    """KEY=VALUE items (each may hold several, comma-separated)."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            if "=" not in part:
                raise PodnetError(INVALID_CONFIG, f"invalid {what}", f"{part!r}: use KEY=VALUE")
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


def command(parent: Any, name: str, fn: Handler, help: str, *, json_flag: bool = False
            ) -> argparse.ArgumentParser:
    """Register a subcommand whose handler is `fn` (optionally with --json)."""
    sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(fn=fn)
    if json_flag:
        sp.add_argument("--json", action="store_true", help="print JSON")
    return sp


def group(sub: Any, name: str, help: str) -> Any:
    """A command with subcommands (`podnet network ...`); returns its subparsers."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
