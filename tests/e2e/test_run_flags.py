"""run's flags, `port NAME PORT`, `logs -f/--tail/-t`, network create's options and the
small bugs of issue 17 (2, 3, 5, 6), as a user runs them: the CLI in a throwaway host
namespace, checked with real connections, the kernel's own view and Docker's output.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Sandbox, ip_json, sh
from portway.testbed import HTTP_GET, WAIT_LISTENING

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


def pw(sb: Sandbox, *args: str, cwd: str | None = None, input: str | None = None,
       env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """portway in the sandbox from a directory of the caller's, with stdin given."""
    cp = subprocess.run(sb.pw_cmd(*args), capture_output=True, text=True, cwd=cwd,
                        input=input if input is not None else "", timeout=timeout,
                        env=dict(os.environ, **sb.env, **(env or {})))
    if check and cp.returncode != 0:
        raise AssertionError(f"portway {' '.join(args)} failed ({cp.returncode}):\n"
                             f"{cp.stdout}{cp.stderr}")
    return cp


def in_ns(netns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", netns, *args).stdout.strip()


def one_line_error(cp: subprocess.CompletedProcess[str], text: str, code: int = 2) -> None:
    assert cp.returncode == code, (cp.returncode, cp.stderr)
    assert cp.stderr.startswith("portway:") and cp.stderr.count("\n") == 1, cp.stderr
    assert text in cp.stderr and "Traceback" not in cp.stderr, cp.stderr


@contextmanager
def host_listener(sb: Sandbox, port: int) -> Iterator[None]:
    """A TCP server in the host namespace that answers each connection with 'host'."""
    code = ("import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(); print('up', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); c.sendall(b'host'); c.close()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", sb.host, "python3", "-c", code],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        yield
    finally:
        proc.kill()
        proc.wait()


# bug 2, -w, -e, --env-file


# -i and -t


def run_in_terminal(sb: Sandbox, args: list[str], rows: int, cols: int,
                    typed: bytes = b"", timeout: float = 30) -> tuple[int, str]:
    """portway ARGS with a terminal of rows x cols as its stdin, stdout and stderr;
    what it wrote there and its exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(sb.pw_cmd(*args), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    if typed:
        time.sleep(1.5)  # the command is waiting for it by then
        os.write(master, typed)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, out.decode(errors="replace")


# -P, --expose, host port ranges, port NAME PORT


def outside_get(sb: Sandbox, port: int) -> str:
    return in_ns(sb.outside, "python3", "-c", HTTP_GET, f"http://{sb.host_addr}:{port}/")


# --add-host, --dns-search, --dns-option, --domainname, --sysctl, --label, --mac-address


# --network container:NAME


# network create --aux-address, --attachable, -o com.docker.network.bridge.name


def test_network_create_options(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "lab", "--subnet", "10.67.0.0/24", "--aux-address",
          "router=10.67.0.2", "--attachable", "-o", "com.docker.network.bridge.name=br-lab")
    net = json.loads(sb.pw("network", "inspect", "lab").stdout)[0]
    assert net["IPAM"]["Config"][0]["AuxiliaryAddresses"] == {"router": "10.67.0.2"}
    assert net["Bridge"] == "br-lab" and net["Attachable"] is True
    link = ip_json(sb.host, "-d", "link", "show", "dev", "br-lab")[0]
    assert link["linkinfo"]["info_kind"] == "bridge" and net["Id"] in link["ifalias"]
    sb.pw("run", "-d", "--name", "web", "--network", "lab", "--",
          "python3", "-m", "http.server", "80")
    assert sb.inspect("web")["NetworkSettings"]["Networks"]["lab"]["IPAddress"] == \
        "10.67.0.3"  # type: ignore[index]
    sb.in_host("python3", "-c", WAIT_LISTENING, "10.67.0.3", "80")
    assert sb.pw("run", "--rm", "--network", "lab", "--", "python3", "-c", HTTP_GET,
                 "http://web/").stdout == "200\n"
    # It is portway's by its owner tag: doctor sees it go, gc makes it again.
    sb.in_host("ip", "link", "del", "br-lab")
    assert "br-lab" in sb.pw("doctor", check=False).stdout
    sb.pw("gc")
    assert ip_json(sb.host, "link", "show", "dev", "br-lab")[0]["ifname"] == "br-lab"
    before = sb.snapshot()
    for args, text, code in (
            (["-o", "com.docker.network.bridge.name=br-lab"], "taken by network lab", 4),
            (["-o", "com.docker.network.bridge.name=uplink0"], "the host has a link", 4),
            (["-o", "com.docker.network.bridge.name=way-too-long-name"], "invalid bridge name",
             2),
            (["--subnet", "10.68.0.0/24", "--aux-address", "r=10.69.0.2"], "in no --subnet",
             2),
            (["--subnet", "10.68.0.0/24", "--aux-address", "r"], "NAME=IP", 2)):
        one_line_error(sb.pw("network", "create", "other", *args, check=False), text, code)
    cp = sb.pw("run", "-d", "--network", "lab", "--ip", "10.67.0.2", "--", "sleep", "1",
               check=False)
    one_line_error(cp, "auxiliary address router", code=4)
    assert sb.snapshot() == before
    sb.pw("rm", "-f", "web")
    sb.pw("network", "rm", "lab")
    assert "br-lab" not in sb.links()


# logs -f, --tail, -t


# bug 3: --network host --hostname


# bugs 5 and 6: help text, what daemon start and network connect/disconnect print


# shell completion, as bash runs it, against this sandbox's portway


