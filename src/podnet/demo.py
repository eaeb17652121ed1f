"""`podnet demo`: the single-host demo. A host namespace with a real agent, two pods
attached through the CNI plugin, a ping and a short iperf3 between them, `podnet pod ls`,
then everything removed. Never touches the root network namespace."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from podnet.install import install_cni
from podnet.kernel import netns


def _wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("agent exited during start-up")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return
        time.sleep(0.05)
    raise RuntimeError("agent did not start")


def run(prefix: str | None = None) -> int:
    prefix = prefix or "pndemo" + secrets.token_hex(2)
    work = tempfile.mkdtemp(prefix="podnet-demo-")
    host = f"{prefix}-host"
    pods = [f"{prefix}-p1", f"{prefix}-p2"]
    store = os.path.join(work, "podnet.db")
    sock = os.path.join(work, "agent.sock")
    enter = ["nsenter", f"--net=/run/netns/{host}"]
    agent = None
    try:
        for name in (host, *pods):
            netns.create(name)
        plugin = install_cni(os.path.join(work, "bin"))
        agent = subprocess.Popen(
            [*enter, sys.executable, "-m", "podnet", "--store", store, "--socket", sock,
             "agent", "--node-name", "demo"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_for_socket(sock, agent)
        conf = {"cniVersion": "1.0.0", "name": "demo", "type": "podnet-cni",
                "subnet": "10.99.0.0/24", "agentSocket": sock}
        ips = []
        for i, pod in enumerate(pods):
            env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"demo-{i}",
                   "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": f"K8S_POD_NAMESPACE=demo;K8S_POD_NAME=pod{i + 1}",
                   "CNI_PATH": os.path.dirname(plugin), "PATH": os.environ["PATH"]}
            t0 = time.perf_counter()
            out = subprocess.run([*enter, plugin], input=json.dumps(conf).encode(), env=env,
                                 capture_output=True, check=True).stdout
            ms = (time.perf_counter() - t0) * 1000
            ip = json.loads(out)["ips"][0]["address"]
            ips.append(ip.split("/")[0])
            print(f"CNI ADD {pod}: {ip} in {ms:.1f} ms")
        print(f"\nping {pods[0]} -> {pods[1]}:")
        subprocess.run(["ip", "netns", "exec", pods[0], "ping", "-c", "3", ips[1]], check=True)
        if shutil.which("iperf3"):
            server = subprocess.Popen(["ip", "netns", "exec", pods[1], "iperf3", "-s", "-1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            res = subprocess.run(["ip", "netns", "exec", pods[0], "iperf3", "-J", "-t", "2",
                                  "-c", ips[1]], capture_output=True, text=True)
            server.wait(10)
            if res.returncode == 0:
                bps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]
                print(f"\niperf3 {pods[0]} -> {pods[1]}: {bps / 1e9:.2f} Gbit/s")
        print()
        subprocess.run([sys.executable, "-m", "podnet", "--store", store, "pod", "ls"],
                       check=True)
        return 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
        for name in (*pods, host):
            netns.remove(name)
        shutil.rmtree(work, ignore_errors=True)
