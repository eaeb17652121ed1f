"""nftables through `nft -j`: podnet's own NAT table for pod masquerade.

Everything podnet adds lives in `table ip podnet`, so `podnet cleanup` removes it with
one command and nothing else on the host is touched. Rules carry a comment naming their
network, which makes ensure/remove idempotent without keeping handles anywhere.
"""

from __future__ import annotations

import json
import subprocess

from podnet.errors import KERNEL_FAILURE, PodnetError

TABLE = "podnet"
FAMILY = "ip"
CHAIN = "postrouting"


def run(commands: list[dict], *, check: bool = True) -> dict:
    """Run a JSON command list as one nft transaction; returns nft's JSON output."""
    payload = json.dumps({"nftables": commands})
    proc = subprocess.run(
        ["nft", "-j", "-f", "-"], input=payload, capture_output=True, text=True
    )
    if proc.returncode != 0:
        if not check:
            return {}
        raise PodnetError(KERNEL_FAILURE, "nft failed", proc.stderr.strip())
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def list_json(*args: str) -> list[dict]:
    """`nft -j list ...` as a list of objects; [] if the object does not exist."""
    proc = subprocess.run(["nft", "-j", "list", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout).get("nftables", [])


def _comment(network: str) -> str:
    return f"podnet:{network}"


def masquerade_rules() -> dict[str, int]:
    """{network name: rule handle} of podnet's masquerade rules."""
    found = {}
    for obj in list_json("chain", FAMILY, TABLE, CHAIN):
        rule = obj.get("rule")
        if rule and str(rule.get("comment", "")).startswith("podnet:"):
            found[rule["comment"].removeprefix("podnet:")] = rule["handle"]
    return found


def ensure_masquerade(network: str, subnet: str) -> None:
    """Masquerade traffic from `subnet` to anywhere outside it (idempotent)."""
    if network in masquerade_rules():
        return
    net, plen = subnet.split("/")
    prefix = {"prefix": {"addr": net, "len": int(plen)}}
    run([
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"chain": {
            "family": FAMILY, "table": TABLE, "name": CHAIN,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept",
        }}},
        {"add": {"rule": {
            "family": FAMILY, "table": TABLE, "chain": CHAIN, "comment": _comment(network),
            "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": prefix}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": prefix}},
                {"masquerade": None},
            ],
        }}},
    ])


def remove_masquerade(network: str) -> None:
    handle = masquerade_rules().get(network)
    if handle is None:
        return
    run([{"delete": {"rule": {"family": FAMILY, "table": TABLE, "chain": CHAIN,
                              "handle": handle}}}], check=False)


def remove_table() -> None:
    run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}], check=False)
