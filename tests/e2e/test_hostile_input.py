"""Hostile and bad input, generated: names, CIDRs, addresses, port specs, options.

Whatever the input, portway either does what was asked or answers with one
line and a non-zero exit, never a traceback, and changes nothing in the kernel
or the store. Names that could reach an nftables rule, a file path or an
interface name are refused.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Sandbox

NASTY = ["", "-", "--", "a b", "../x", "x/y", "a;b", 'a"b', "a\nb", "a\tb", "é", "$(id)",
         "x" * 70, "*", "{}", "pw-" + "0" * 12, "host", "none", ".", "..", "-rf", "\\", "'"]
# No NUL bytes: the kernel cannot pass them in argv, so no user can type them. Lone
# surrogates only as Python gives argv's bytes that are not UTF-8 (U+DC80-U+DCFF).
typable = st.characters(blacklist_characters="\x00").filter(
    lambda c: not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff")
names = st.one_of(st.sampled_from(NASTY),
                  st.text(typable, max_size=20),
                  st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True))
octets = st.integers(min_value=-1, max_value=300)
addresses = st.one_of(
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", octets, octets, octets, octets),
    st.sampled_from(["", "::1", "10.0.0", "10.0.0.0.1", "localhost", "0x0a000001"]),
    st.text(typable, max_size=15))
subnets = st.one_of(
    st.builds(lambda a, p: f"{a}/{p}", addresses, st.integers(min_value=-1, max_value=40)),
    st.sampled_from(["10.99.0.0/24", "10.99.0.0/16", "0.0.0.0/0", "10.99.0.1/24", "/24"]),
    st.text(typable, max_size=20))
ports = st.one_of(
    st.sampled_from(["80", "8080:80", "127.0.0.1:8081:80", "0:80", "80-79:80-79", "1-2:3",
                     "80/dccp", "65536:80", "::80", "a:b", "", "80:80:80:80"]),
    st.builds(lambda a, b: f"{a}:{b}", st.integers(-5, 70000), st.integers(-5, 70000)),
    st.text(typable, max_size=12))
options = st.one_of(st.sampled_from([
    "com.docker.network.bridge.enable_icc=false", "com.docker.network.bridge.enable_icc=maybe",
    "x=1", "=1", "noequals", "com.docker.network.driver.mtu=9",
    "com.docker.network.driver.mtu=1400",
]), st.text(typable, max_size=20))

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(sb: Sandbox, args: list[str]) -> bool:
    """Run one command; True if it succeeded. On failure, nothing may have changed."""
    before = sb.snapshot()
    cp = sb.pw(*args, check=False)
    if cp.returncode == 0:
        return True
    assert "Traceback" not in cp.stderr, (args, cp.stderr)
    assert cp.stderr.startswith("portway"), (args, cp.stderr)
    assert cp.stderr.count("\n") == 1, (args, cp.stderr)
    assert sb.snapshot() == before, f"{args} failed but changed something"
    return False


def test_network_create_hostile(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "base", "--subnet", "10.98.0.0/24")

    @SETTINGS
    @given(name=names, subnet=st.none() | subnets, gateway=st.none() | addresses,
           opts=st.lists(options, max_size=2), internal=st.booleans())
    def run(name: str, subnet: str | None, gateway: str | None, opts: list[str],
            internal: bool) -> None:
        args = ["network", "create"]
        if subnet is not None:
            args += ["--subnet", subnet]
        if gateway is not None:
            args += ["--gateway", gateway]
        for o in opts:
            args += ["-o", o]
        if internal:
            args.append("--internal")
        args += ["--", name]
        if check(sb, args):
            created = json.loads(sb.pw("network", "inspect", name).stdout)[0]
            assert created["Name"] == name
            bridge = created["Bridge"]
            assert bridge.startswith("pwbr-") and len(bridge) <= 15  # derived, never the name
            sb.pw("network", "rm", name)

    run()


def test_run_hostile(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.97.0.0/24")

    @SETTINGS
    @given(name=names, ip=st.none() | addresses, publish=st.lists(ports, max_size=2),
           alias=st.none() | names, network=st.sampled_from(["app", "nope", "host", "none"]))
    def run(name: str, ip: str | None, publish: list[str], alias: str | None,
            network: str) -> None:
        args = ["run", "-d", "--name", name, "--network", network]
        if ip is not None:
            args += ["--ip", ip]
        if alias is not None:
            args += ["--alias", alias]
        for p in publish:
            args += ["-p", p]
        args += ["--", "sleep", "3600"]
        if check(sb, args):
            sb.pw("rm", "-f", name)

    run()
