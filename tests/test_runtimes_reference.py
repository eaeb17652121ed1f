"""The runtime harness proven with the CNI reference plugins (bridge + host-local).

Real containerd (via ctr) and podman run busybox containers inside a test host netns; the
same scenario later runs with podnet's plugin. A recording wrapper sits in front of the
reference ``bridge`` plugin so the tests see exactly which CNI calls each runtime made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import runtimes as rts

pytestmark = pytest.mark.runtime

REFERENCE_BIN = Path("/usr/lib/cni")


def _skip_reason(kind: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    return rts.missing_runtime_reason(kind)


def _recorder_script(real: Path, log: Path) -> str:
    """A CNI plugin that logs each call (one JSON line) and then execs the real one."""
    return f"""#!{sys.executable} -IS
import json, os, subprocess, sys
data = sys.stdin.buffer.read()
try:
    conf = json.loads(data or b"{{}}")
except ValueError:
    conf = {{}}
rec = {{k: os.environ.get(k) for k in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                                        "CNI_IFNAME", "CNI_ARGS")}}
rec["prevResult"] = "prevResult" in conf
rec["cniVersion"] = conf.get("cniVersion")
p = subprocess.run([{str(real)!r}], input=data, capture_output=True)
rec["rc"] = p.returncode
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(rec) + "\\n")
sys.stdout.buffer.write(p.stdout)
sys.stderr.buffer.write(p.stderr)
sys.exit(p.returncode)
"""


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(bin dir with a recording ``bridge``, its log). The real bridge is hard-linked
    outside every plugin dir, so the wrapper never finds itself (ctr shadows /usr/lib/cni)."""
    base = tmp_path_factory.mktemp("cnirec")
    real_dir, bin_dir = base / "real", base / "bin"
    real_dir.mkdir()
    bin_dir.mkdir()
    real = real_dir / "bridge"
    try:
        os.link(REFERENCE_BIN / "bridge", real)
    except OSError:
        real.write_bytes((REFERENCE_BIN / "bridge").read_bytes())
        real.chmod(0o755)
    log = base / "calls.jsonl"
    log.touch()
    wrapper = bin_dir / "bridge"
    wrapper.write_text(_recorder_script(real, log))
    wrapper.chmod(0o755)
    yield bin_dir, log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=rts.RUNTIME_KINDS)
def session(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    busybox_image: Path,
    recorder: tuple[Path, Path],
) -> Iterator[rts.RuntimeSession]:
    """One runtime per kind for the whole module, in its own host netns and subnet."""
    kind = str(request.param)
    reason = _skip_reason(kind)
    if reason:
        pytest.skip(reason)
    subnet = f"10.77.{secrets.randbelow(250) + 1}.0/24"
    bin_dir, _ = recorder
    # Stem "zz": had ctr read the machine's /etc/cni/net.d, another file would sort first.
    with rts.runtime_session(
        kind, tmp_path_factory.mktemp(f"rt-{kind}"), rts.reference_conflist(subnet),
        cni_bin_dirs=[bin_dir, REFERENCE_BIN], image_tar=busybox_image, conf_stem="zz",
    ) as s:
        yield s


def _subnet(s: rts.RuntimeSession) -> ipaddress.IPv4Network:
    rng = s.conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
    return ipaddress.IPv4Network(rng)


def test_two_containers_ping_tcp_and_clean_stop(
    session: rts.RuntimeSession, recorder: tuple[Path, Path]
) -> None:
    _, log = recorder
    first = len(calls(log))
    report = rts.run_two_containers_scenario(
        session.runtime, session.network, ipam_data_dir=session.ipam_data_dir
    )
    for ip in report.ips.values():
        assert ipaddress.IPv4Address(ip) in _subnet(session), report.ips
    seen = calls(log)[first:]
    adds = [c for c in seen if c["CNI_COMMAND"] == "ADD"]
    dels = [c for c in seen if c["CNI_COMMAND"] == "DEL"]
    assert len(adds) == 2 and all(c["rc"] == 0 and c["CNI_NETNS"] for c in adds), seen
    assert {c["CNI_CONTAINERID"] for c in dels} == {c["CNI_CONTAINERID"] for c in adds}, seen
    assert all(c["rc"] == 0 and c["prevResult"] for c in dels), seen
    assert all(c["CNI_IFNAME"] == "eth0" for c in adds), seen
    if session.kind == "containerd":
        # ctr 1.6: DEL comes from the foreground `ctr run` after the task is gone.
        assert all(c["CNI_NETNS"] == "" for c in dels), dels
    else:
        assert all("K8S_POD_NAME=" in (c["CNI_ARGS"] or "") for c in adds), adds
    print(f"\n{session.kind}: {report.ips} timings "
          + ", ".join(f"{k}={v:.2f}s" for k, v in report.timings.items()))


def test_host_side_is_built_in_the_host_netns(session: rts.RuntimeSession) -> None:
    rt = session.runtime
    name = f"{session.prefix}-{secrets.token_hex(2)}-h"
    try:
        c = rt.run(name, ["sleep", "3600"], session.network)
        bridge = session.conflist["plugins"][0]["bridge"]
        gw = str(next(_subnet(session).hosts()))
        host_links = {lk["ifname"]: lk for lk in rts.ip_json(session.host_netns, "link", "show")}
        assert bridge in host_links
        ports = rts.ip_json(session.host_netns, "link", "show", "master", bridge)
        veths = rts.host_veths(session.host_netns)
        assert len(veths) == 1 and {p["ifname"] for p in ports} == set(veths)
        br_addrs = rts.ip_json(session.host_netns, "-4", "addr", "show", "dev", bridge)
        assert gw in {a["local"] for a in br_addrs[0]["addr_info"]}
        # nothing of it in the root namespace
        root_links = {lk["ifname"] for lk in rts.ip_json(None, "link", "show")}
        assert bridge not in root_links and not set(veths) & root_links
        # the pod side: eth0 in the subnet, default route via the bridge
        assert ipaddress.IPv4Address(c.ipv4()) in _subnet(session)
        routes = rts.ip_json(c.netns_path, "-4", "route", "show", "default")
        assert routes and routes[0]["gateway"] == gw, routes
        rc, out = c.exec(["ping", "-c", "1", "-W", "2", gw])
        assert rc == 0, out
    finally:
        rt.stop(name)
    problems = rts.wait_clean(session.host_netns, [c], session.ipam_data_dir, session.network)
    assert not problems, problems


@pytest.mark.parametrize("kind", rts.RUNTIME_KINDS)
def test_session_teardown_removes_everything(
    kind: str, tmp_path_factory: pytest.TempPathFactory, busybox_image: Path
) -> None:
    """A container left running at exit: the session still removes every trace."""
    reason = _skip_reason(kind)
    if reason:
        pytest.skip(reason)
    etc_before = sorted(os.listdir("/etc/cni/net.d")) if os.path.isdir("/etc/cni/net.d") else None
    opt_before = os.path.exists("/opt/cni")
    workdir = tmp_path_factory.mktemp(f"td-{kind}")
    with rts.runtime_session(
        kind, workdir, rts.reference_conflist("10.77.250.0/24"), image_tar=busybox_image
    ) as s:
        c = s.runtime.run(f"{s.prefix}-left", ["sleep", "3600"], s.network)
        daemon = getattr(s.runtime, "proc", None)
        assert rts.host_veths(s.host_netns)
    netns_names = {n["name"] for n in rts.ip_json(None, "netns", "list")}
    assert s.host_netns not in netns_names
    assert not workdir.exists()
    assert not rts.wait_for(lambda: rts.pod_netns_leftovers([c]))
    if daemon is not None:
        assert daemon.poll() is not None
    with open("/proc/self/mountinfo") as f:
        assert str(workdir) not in f.read()
    after = sorted(os.listdir("/etc/cni/net.d")) if os.path.isdir("/etc/cni/net.d") else None
    assert after == etc_before
    assert os.path.exists("/opt/cni") == opt_before
    cg = subprocess.run(["sh", "-c", f"ls -d /sys/fs/cgroup/*/{s.prefix}* 2>/dev/null"],
                        capture_output=True, text=True)
    assert cg.stdout.strip() == ""


@pytest.mark.parametrize("kind", rts.RUNTIME_KINDS)
def test_failing_plugin_is_reported_and_cleaned(
    kind: str, tmp_path_factory: pytest.TempPathFactory, busybox_image: Path
) -> None:
    """An ADD that fails surfaces as an error from run(); nothing is left behind."""
    reason = _skip_reason(kind)
    if reason:
        pytest.skip(reason)

    def broken(prefix: str, workdir: Path) -> dict[str, Any]:
        conf = rts.reference_conflist("10.77.251.0/24")(prefix, workdir)
        conf["plugins"][0]["type"] = f"{prefix}-no-such-plugin"
        return conf

    workdir = tmp_path_factory.mktemp(f"fail-{kind}")
    with rts.runtime_session(kind, workdir, broken, image_tar=busybox_image) as s:
        name = f"{s.prefix}-broken"
        try:
            with pytest.raises(RuntimeError, match="no-such-plugin"):
                s.runtime.run(name, ["sleep", "3600"], s.network)
        finally:
            s.runtime.stop(name)
        assert rts.host_veths(s.host_netns) == []
    assert not workdir.exists()
    assert s.host_netns not in {n["name"] for n in rts.ip_json(None, "netns", "list")}
