"""The CNI plugin's logic (spec 1.1.0): parse a request, call the endpoint service,
format the result or the error. Runs inside the agent, or in-process when no agent
answers. `handle()` maps (environment, stdin) to (exit code, stdout) and never raises.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from podnet.agent.attach import Attacher
from podnet.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    PLUGIN_NOT_AVAILABLE,
    UNSUPPORTED_FIELD,
    NotFound,
    PodnetError,
    StoreUnavailable,
)
from podnet.model import Network, Port

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
LATEST = "1.1.0"
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

# The keys of an inline network definition, and how they map onto Network fields.
INLINE_KEYS = {
    "driver": "driver", "subnet": "subnet", "gateway": "gateway", "mtu": "mtu",
    "ipMasq": "ip_masq", "bridge": "bridge", "hairpinMode": "hairpin",
    "subnetLen": "subnet_len", "subnetMin": "subnet_min", "subnetMax": "subnet_max",
    "backend": "backend",
}

ServiceFor = Callable[[dict], Attacher]


class UnknownNetwork(PodnetError):
    """The configuration names a network that does not exist (CNI code 7)."""

    def __init__(self, name: str, details: str = "") -> None:
        super().__init__(INVALID_CONFIG, f"network {name!r} does not exist", details)


def handle(env: Mapping[str, str], stdin: bytes, service_for: ServiceFor) -> tuple[int, str]:
    version = LATEST
    try:
        command = env.get("CNI_COMMAND", "")
        if not command:
            raise PodnetError(INVALID_ENV, "CNI_COMMAND is not set")
        conf = _decode(stdin, allow_empty=command == "VERSION")
        version = str(conf.get("cniVersion") or LATEST)
        if version not in SUPPORTED_VERSIONS:
            bad = version
            version = LATEST
            raise PodnetError(
                INCOMPATIBLE_VERSION, f"unsupported cniVersion {bad!r}",
                f"supported: {', '.join(SUPPORTED_VERSIONS)}",
            )
        if command == "VERSION":
            return 0, _dump({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
        handler = _COMMANDS.get(command)
        if handler is None:
            raise PodnetError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
        if "ipam" in conf and conf["ipam"]:
            raise PodnetError(
                UNSUPPORTED_FIELD, "podnet-cni allocates addresses itself",
                "remove the 'ipam' section",
            )
        try:
            svc = service_for(conf)
        except (OSError, PodnetError) as exc:
            if command == "STATUS":
                raise PodnetError(PLUGIN_NOT_AVAILABLE, "podnet cannot serve ADD requests",
                                  str(exc)) from exc
            if isinstance(exc, PodnetError):
                raise
            raise StoreUnavailable(str(exc)) from exc
        out = handler(env, conf, version, svc)
        return 0, _dump(out) if out is not None else ""
    except PodnetError as exc:
        return 1, _dump(exc.to_cni(version))
    except Exception as exc:  # noqa: BLE001 - a plugin must always answer in JSON
        return 1, _dump(PodnetError(INTERNAL, "internal error", repr(exc)).to_cni(version))


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def _decode(stdin: bytes, *, allow_empty: bool) -> dict:
    if allow_empty and not stdin.strip():
        return {}
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PodnetError(DECODE_FAILURE, "cannot decode network configuration", str(exc)) from exc
    if not isinstance(conf, dict):
        raise PodnetError(DECODE_FAILURE, "network configuration is not a JSON object")
    return conf


def _need(env: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise PodnetError(INVALID_ENV, f"missing environment variable {', '.join(missing)}")
    return [env[n] for n in names]


def cni_args(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for part in env.get("CNI_ARGS", "").split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip()
    return out


def pod_name(env: Mapping[str, str], container_id: str) -> str:
    args = cni_args(env)
    name = args.get("K8S_POD_NAME")
    if name:
        ns = args.get("K8S_POD_NAMESPACE")
        return f"{ns}/{name}" if ns else name
    return args.get("PODNET_POD") or container_id


def resolve_network(conf: dict, svc: Attacher, *, create: bool) -> Network:
    """The network a configuration names, or defines inline (created on first ADD)."""
    res = svc.resources
    if conf.get("network"):
        name = str(conf["network"])
        try:
            return res.get_network(name)
        except NotFound as exc:
            raise UnknownNetwork(name) from exc
    conf_name = conf.get("name")
    if not conf_name or not isinstance(conf_name, str):
        raise PodnetError(INVALID_CONFIG, "network configuration has no name")
    name = conf_name
    if "subnet" not in conf and conf.get("driver") != "null":
        net = res.find_network(name)
        if net is None:
            raise UnknownNetwork(
                name, "define it inline with 'subnet' or create it with 'podnet network create'")
        return net
    fields: dict[str, Any] = {"name": name}
    for key, attr in INLINE_KEYS.items():
        if key in conf:
            fields[attr] = conf[key]
    try:
        wanted = Network(**fields)
    except TypeError as exc:
        raise PodnetError(INVALID_CONFIG, "invalid network definition", str(exc)) from exc
    if not create:
        existing = res.find_network(name)
        return existing or res.validate_network(wanted)
    return res.create_network(wanted, exist_ok=True)


# -- commands ---------------------------------------------------------------------
def cmd_add(env: Mapping[str, str], conf: dict, version: str, svc: Attacher) -> dict:
    cid, netns, ifname = _need(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    net = resolve_network(conf, svc, create=True)
    labels = (conf.get("runtimeConfig") or {}).get("labels") or {}
    if not isinstance(labels, dict):
        raise PodnetError(INVALID_CONFIG, "runtimeConfig.labels must be an object")
    port = svc.attach(
        net, device_id=cid, ifname=ifname, sandbox=netns, pod=pod_name(env, cid),
        labels={str(k): str(v) for k, v in labels.items()},
    )
    return result(net, port, conf, version)


def cmd_del(env: Mapping[str, str], conf: dict, version: str, svc: Attacher) -> None:
    cid, ifname = _need(env, "CNI_CONTAINERID", "CNI_IFNAME")
    try:
        net = resolve_network(conf, svc, create=False)
    except UnknownNetwork:
        return None  # nothing of ours can be attached to a network that is gone
    svc.detach(net, device_id=cid, ifname=ifname)
    return None


def cmd_check(env: Mapping[str, str], conf: dict, version: str, svc: Attacher) -> None:
    cid, netns, ifname = _need(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    net = resolve_network(conf, svc, create=False)
    port = svc.check(net, device_id=cid, ifname=ifname, sandbox=netns)
    prev = conf.get("prevResult") or {}
    for ip in prev.get("ips", []):
        if port.address and ip.get("address") not in (port.address,):
            raise PodnetError(
                INVALID_CONFIG, "prevResult does not match the attachment",
                f"{ip.get('address')} != {port.address}",
            )
    return None


def cmd_status(env: Mapping[str, str], conf: dict, version: str, svc: Attacher) -> None:
    try:
        svc.resources.revision()
        resolve_network(conf, svc, create=False)
    except PodnetError as exc:
        raise PodnetError(PLUGIN_NOT_AVAILABLE, "podnet cannot serve ADD requests",
                          str(exc)) from exc
    return None


def cmd_gc(env: Mapping[str, str], conf: dict, version: str, svc: Attacher) -> None:
    try:
        net = resolve_network(conf, svc, create=False)
    except UnknownNetwork:
        return None
    raw = conf.get(VALID_ATTACHMENTS) or []
    if not isinstance(raw, list):
        raise PodnetError(INVALID_CONFIG, f"{VALID_ATTACHMENTS} must be a list")
    valid = {(str(a.get("containerID")), str(a.get("ifname"))) for a in raw if isinstance(a, dict)}
    svc.gc(net, valid)
    return None


_COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
             "GC": cmd_gc}


def result(net: Network, port: Port, conf: dict, version: str) -> dict:
    interfaces: list[dict] = []
    if net.bridge and net.driver != "null":
        interfaces.append({"name": net.bridge})
    if port.host_ifname:
        interfaces.append({"name": port.host_ifname})
    interfaces.append({"name": port.ifname, "mac": port.mac_address or "",
                       "sandbox": port.sandbox})
    out: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces}
    if port.address:
        ip: dict[str, Any] = {"address": port.address, "interface": len(interfaces) - 1}
        if port.gateway:
            ip["gateway"] = port.gateway
        if version < "1.0.0":
            ip["version"] = "4"
        out["ips"] = [ip]
        if port.gateway:
            out["routes"] = [{"dst": "0.0.0.0/0", "gw": port.gateway}]
    out["dns"] = conf.get("dns") or {}
    return out


def in_process_service(conf: dict) -> Attacher:
    """Open the store named by the configuration / environment (no agent running)."""
    from podnet import config
    from podnet.resources import open_resources

    return Attacher(open_resources(config.store_url(conf.get("store"))), config.node_name())


def handler(service_for: ServiceFor) -> Callable[[dict[str, str], bytes], tuple[int, str]]:
    """This front end's CNI handler for the agent's socket."""
    def serve(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
        return handle(env, stdin, service_for)

    return serve


def main_in_process(stdin: bytes | None = None) -> int:
    data = os.read(0, 1 << 20) if stdin is None else stdin
    code, out = handle(os.environ, data, in_process_service)
    os.write(1, out.encode())
    return code
