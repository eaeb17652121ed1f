"""The `podnet-cni` executable: a stdlib-only shim that forwards a CNI call to the agent.

Why so small: a runtime execs the plugin for every pod, and Python's start-up dominates
its cost. This module imports only os, sys and the C module _socket (`json` alone costs
about 8 ms, `socket` about as much), so the installed shim runs under `python -I -S`
in about 11 ms. It sends the CNI_* / PODNET_* environment and stdin to the agent's unix
socket and relays the answer. Only where no agent listens does it import podnet's
kernel layer and do the work in-process (slower, same result).

Wire format (agent side in podnet.agent.server):
  request:  b"CNI <len(env)> <len(stdin)>\n" + env (NUL-separated K=V) + stdin
  response: b"<exit code>\n" + stdout bytes
"""

import os
import sys

DEFAULT_SOCKET = "/run/podnet/agent.sock"


def _read_stdin() -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(0, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _conf_string(conf: bytes, key: bytes) -> str | None:
    """The value of a top-level-looking string key, without importing json.

    Returns None when the key is absent or the value is not a plain string literal
    (then the caller falls back to a real JSON parse).
    """
    at = conf.find(b'"' + key + b'"')
    if at < 0:
        return None
    rest = conf[at + len(key) + 2 :].lstrip()
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip()
    if not rest.startswith(b'"'):
        return None
    end = rest.find(b'"', 1)
    value = rest[1:end]
    if end < 0 or b"\\" in value:
        import json

        try:
            return str(json.loads(conf).get(key.decode()) or "") or None
        except ValueError:
            return None
    return value.decode("utf-8", "replace")


def socket_path(conf: bytes) -> str:
    return (
        os.environ.get("PODNET_AGENT_SOCKET")
        or _conf_string(conf, b"agentSocket")
        or DEFAULT_SOCKET
    )


def _ask_agent(path: str, env: bytes, data: bytes) -> bytes | None:
    """The agent's raw answer; None if no agent listens at `path`."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        sock.sendall(b"CNI %d %d\n" % (len(env), len(data)) + env + data)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def _error(code: int, msg: str, details: str) -> bytes:
    def q(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")

    body = f'"code": {code}, "msg": "{q(msg)}", "details": "{q(details)}"'
    return ('{"cniVersion": "1.0.0", ' + body + "}\n").encode()


def main() -> None:
    data = _read_stdin()
    env = b"\0".join(
        f"{k}={v}".encode()
        for k, v in os.environ.items()
        if k.startswith("CNI_") or k.startswith("PODNET_")
    )
    path = socket_path(data)
    try:
        answer = _ask_agent(path, env, data)
    except OSError as exc:
        os.write(1, _error(11, "podnet agent failed mid-request; try again", str(exc)))
        sys.exit(1)
    if answer is None:
        from podnet.api.cni import main_in_process

        sys.exit(main_in_process(data))
    head, _, body = answer.partition(b"\n")
    try:
        code = int(head)
    except ValueError:
        os.write(1, _error(11, "podnet agent sent a malformed answer; try again", repr(head)))
        sys.exit(1)
    os.write(1, body)
    sys.exit(code)


if __name__ == "__main__":
    main()
