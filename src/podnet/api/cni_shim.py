"""The `podnet-cni` executable: a stdlib-only shim that forwards a CNI call to the agent.

Why so small: a runtime execs the plugin for every pod, and Python's start-up dominates
its cost. This module imports only what the interpreter has already loaded at start-up
(sys, posix) plus the C module _socket: `os` costs a few ms, `json` about 8 ms, `socket`
about as much. `podnet install-cni` copies this file verbatim, behind a `python -IS`
shebang, so it runs in about 11 ms without importing the podnet package at all. It sends
the CNI_* / PODNET_* environment and stdin to the agent's unix socket and relays the
answer. Only where no agent listens does it import podnet's kernel layer and do the
work in-process (slower, same result).

Wire format (agent side in podnet.agent.server):
  request:  b"CNI <len(env)> <len(stdin)>\\n" + env (NUL-separated K=V) + stdin
  response: b"<exit code>\\n" + stdout bytes
"""

import posix
import sys

DEFAULT_SOCKET = "/run/podnet/agent.sock"
FALLBACK_PATHS: list = []  # set by `podnet install-cni`: where podnet and its deps live


def _read_stdin() -> bytes:
    chunks = []
    while True:
        try:
            chunk = posix.read(0, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _conf_string(conf: bytes, key: bytes) -> str | None:
    """The value of a top-level-looking string key, without importing json.

    Returns None when the key is absent or the value is not a plain string literal
    (an escaped string falls back to a real JSON parse).
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
    env = posix.environ.get(b"PODNET_AGENT_SOCKET")
    return (env.decode() if env else None) or _conf_string(conf, b"agentSocket") \
        or DEFAULT_SOCKET


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


def _in_process(data: bytes) -> int:
    sys.path.extend(p for p in FALLBACK_PATHS if p not in sys.path)
    from podnet.api.cni import main_in_process

    return main_in_process(data)


def main() -> None:
    data = _read_stdin()
    env = b"\0".join(
        k + b"=" + v for k, v in posix.environ.items()
        if k.startswith(b"CNI_") or k.startswith(b"PODNET_")
    )
    path = socket_path(data)
    try:
        answer = _ask_agent(path, env, data)
    except OSError as exc:
        posix.write(1, _error(11, "podnet agent failed mid-request; try again", str(exc)))
        sys.exit(1)
    if answer is None:
        sys.exit(_in_process(data))
    head, _, body = answer.partition(b"\n")
    try:
        code = int(head)
    except ValueError:
        posix.write(1, _error(11, "podnet agent sent a malformed answer; try again", repr(head)))
        sys.exit(1)
    while body:
        body = body[posix.write(1, body):]
    sys.exit(code)


if __name__ == "__main__":
    main()
