"""Real problems people brought to issue trackers and Q&A sites, each rebuilt in the
sandbox as a real host has it: plain namespaces ("VMs", containers of other runtimes),
bridges, nftables rules and sysctls made by hand, never by portway.

Each scenario first confirms the symptom with a real connection (a Python client and
server in namespaces the test made), then checks that static `trace` gives the verdict
the real connection met, that `--live` agrees, and that the hop that decided is the
one that explains it. Then the fix the thread arrived at is applied, and both the
connection and the trace change together.

Scenarios that need what trace does not model yet are marked xfail (strict, so they
turn green, and must be unmarked, when it lands), with the mechanism of issue 16 they
need.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from lab import Lab

from conftest import Sandbox
from portway.testbed import HOST_ADDR6 as HOST6
from portway.testbed import OUTSIDE_ADDR6 as OUTSIDE6

# What a real client meets -> the verdicts that say the same.
SAME = {"connected": {"delivered", "leaves-host"}, "refused": {"no-listener"},
        "timeout": {"dropped", "no-route"}, "unreachable": {"no-route"}}


@pytest.fixture
def lab(sandbox: Sandbox) -> Iterator[Lab]:
    lab = Lab(sandbox)
    try:
        yield lab
    finally:
        lab.close()


def vms(lab: Lab, count: int, bridge: str = "br0", third: int = 88) -> list[str]:
    """A bridge made by hand in the host (10.THIRD.0.1/24) and `count` "VM" namespaces
    behind it (10.THIRD.0.2, .3, ...), each with its default route via the bridge."""
    host = lab.sb.host
    names = []
    for n in range(count):
        vm = lab.netns(f"vm{n + 1}")
        lab.veth(host, f"vm{n + 1}p", vm, "eth0")
        lab.addr(vm, "eth0", f"10.{third}.0.{n + 2}/24")
        lab.route(vm, "default", "via", f"10.{third}.0.1")
        names.append(vm)
    lab.bridge(host, bridge, *[f"vm{n + 1}p" for n in range(count)])
    lab.addr(host, bridge, f"10.{third}.0.1/24")
    return names


# Where scenarios write what they saw, for docs/how-packets-move.md's chapter on real
# hosts (scripts/real_hosts_doc.py sets it; unset, nothing is written).
RECORD = os.environ.get("PORTWAY_SCENARIO_RECORD")


def traced(lab: Lab, real: str, *args: str) -> dict[str, Any]:
    """portway trace ARGS --json --live; where scenarios are recorded, also its text as a
    user sees it, with what the real connection met."""
    t = lab.trace(*args)
    if RECORD:
        shown = lab.sb.pw("trace", *args, "--live").stdout
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
        with open(RECORD, "a") as f:
            f.write(json.dumps({"test": test, "args": list(args), "real": real,
                                "text": shown, "host": lab.sb.host,
                                "outside": lab.sb.outside,
                                "wheres": [h["where"] for h in t["hops"]]}) + "\n")
    return t


def check(lab: Lab, real: str, source: str, destination: str,
          *more: str) -> dict[str, Any]:
    """Static and live trace of the path the real connection took, which met `real`:
    the static verdict says the same, live agrees with it."""
    t = traced(lab, real, source, destination, *more)
    assert t["verdict"] in SAME[real], (real, t["verdict"], t["summary"], t["hops"])
    live = t["live"]
    assert live["verdict"] == t["verdict"], (live["verdict"], live["summary"])
    assert live["agrees"], live["disagreements"]
    return t


def decider(t: dict[str, Any]) -> dict[str, Any]:
    """The hop that decided: the last one."""
    hop: dict[str, Any] = t["hops"][-1]
    return hop


def test_docker_forward_drop_breaks_bridged_vms(lab: Lab) -> None:
    """"docker-ce package makes existing KVM guests unusable" (docker/for-linux#949,
    https://github.com/docker/for-linux/issues/949; also "Docker br_netfilter silently
    blocks KVM VM bridge traffic", https://github.com/seapath/ansible/issues/909): Docker
    sets the FORWARD policy to DROP, and br_netfilter sends bridged frames between two
    VMs through that chain. The fix from the threads: bridged traffic out of iptables
    (bridge-nf-call-iptables=0), or an accept for the bridge."""
    sb = lab.sb
    vm1, vm2 = vms(lab, 2)
    lab.serve(vm2, "10.88.0.3", 80)
    lab.sysctl(sb.host, "net.bridge.bridge-nf-call-iptables", "1")
    lab.nft(sb.host, "table ip filter {\n"
                     "  chain FORWARD { type filter hook forward priority 0; policy drop; }\n"
                     "}\n")
    assert lab.connect(vm1, "10.88.0.3", 80) == "timeout"
    t = check(lab, "timeout", f"ns:{vm1}", "10.88.0.3:80")
    hop = decider(t)
    assert (hop["family"], hop["table"], hop["chain"], hop["verdict"]) == \
        ("ip", "filter", "FORWARD", "policy drop")
    assert any("bridge netfilter is on" in h["detail"] for h in t["hops"])
    lab.sysctl(sb.host, "net.bridge.bridge-nf-call-iptables", "0")
    assert lab.connect(vm1, "10.88.0.3", 80) == "connected"
    t = check(lab, "connected", f"ns:{vm1}", "10.88.0.3:80")
    assert t["verdict"] == "delivered" and t["hops"][-1]["where"] == f"namespace {vm2}"


def test_ip_forward_off_no_internet_from_containers(lab: Lab) -> None:
    """"Podman - Detect when net.ipv4.ip_forward=0 and warn user" (containers/podman#399,
    https://github.com/containers/podman/issues/399), Docker's "WARNING: IPv4 forwarding
    is disabled. Networking will not work." (moby/moby#27319): masquerade is in place,
    but the host routes nothing. The fix: net.ipv4.ip_forward=1."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain POSTROUTING { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" masquerade\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "0")
    assert lab.connect(vm, sb.outside_addr, 9000) == "timeout"
    t = check(lab, "timeout", "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "dropped" and "ip_forward=0" in t["summary"]
    assert "net.ipv4.ip_forward is 0" in decider(t)["detail"]
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == sb.host_addr


def test_forwarding_off_on_the_bridge_alone(lab: Lab) -> None:
    """"No network access from container" (moby/moby#14185,
    https://github.com/moby/moby/issues/14185: "systemd-network has started setting
    forwarding to off for specific interfaces configured on it ... setting sysctl
    net.ipv4.conf.all.forwarding=1 is not enough anymore"; systemd/systemd#468,
    https://github.com/systemd/systemd/issues/468): ip_forward is 1, masquerade is in
    place, but the bridge's own forwarding setting is 0, so what arrives on it is not
    forwarded. The fix: net.ipv4.conf.br0.forwarding=1 (IPForward=yes in its .network)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain POSTROUTING { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" masquerade\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    lab.sysctl(sb.host, "net.ipv4.conf.br0.forwarding", "0")
    assert lab.connect(vm, sb.outside_addr, 9000) == "timeout"
    t = check(lab, "timeout", f"ns:{vm}", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "dropped" and "net.ipv4.conf.br0.forwarding=0" in t["summary"]
    assert t["fix"] == "sysctl -w net.ipv4.conf.br0.forwarding=1"
    lab.sysctl(sb.host, "net.ipv4.conf.br0.forwarding", "1")
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", f"ns:{vm}", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["fix"] == ""


def test_host_service_on_loopback_from_a_container(lab: Lab) -> None:
    """"From inside of a Docker container, how do I connect to the localhost of the
    machine?" (https://stackoverflow.com/questions/24319662): the database on the host
    listens on 127.0.0.1 only; the container reaches the host's bridge address, where
    nothing listens. The fix: listen on the bridge's address (or 0.0.0.0)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.serve(sb.host, "127.0.0.1", 5432)
    assert lab.connect(vm, "10.88.0.1", 5432) == "refused"
    t = check(lab, "refused", f"ns:{vm}", "10.88.0.1:5432")
    hop = decider(t)
    assert hop["kind"] == "socket" and hop["where"] == "host"
    assert "nothing listens on 10.88.0.1:5432" in hop["detail"]
    lab.serve(sb.host, "10.88.0.1", 5432)
    assert lab.connect(vm, "10.88.0.1", 5432) == "connected"
    check(lab, "connected", f"ns:{vm}", "10.88.0.1:5432")


def test_host_service_on_loopback_names_the_bind_address(lab: Lab) -> None:
    """As above (https://stackoverflow.com/questions/24319662): the verdict should name the
    cause a user can act on: the service listens on 127.0.0.1 only; bind 0.0.0.0."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.serve(sb.host, "127.0.0.1", 5432)
    assert lab.connect(vm, "10.88.0.1", 5432) == "refused"
    t = check(lab, "refused", f"ns:{vm}", "10.88.0.1:5432")
    assert "127.0.0.1" in t["summary"] and "0.0.0.0" in t["summary"]
    assert t["fix"] == "make the server bind 0.0.0.0 (every address) or 10.88.0.1, not " \
        "127.0.0.1"


def test_app_bound_to_loopback_inside_the_container(lab: Lab) -> None:
    """"Can't access to server starting on 127.0.0.1 inside docker, but work with
    0.0.0.0" (https://forums.docker.com/t/34709): the port is forwarded (DNAT) to the
    container, whose server listens on its own 127.0.0.1 only, so the connection is
    refused there. The fix: the server binds 0.0.0.0."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain PREROUTING { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     f"    ip daddr {sb.host_addr} tcp dport 3001 dnat to 10.88.0.2:3001\n"
                     "  }\n}\n")
    loopback_only = lab.serve(vm, "127.0.0.1", 3001)
    assert lab.connect(sb.outside, sb.host_addr, 3001) == "refused"
    t = check(lab, "refused", "outside", f"{sb.host_addr}:3001", "--from-ip",
              sb.outside_addr)
    assert t["seen_destination"] == "10.88.0.2:3001"  # DNAT took it to the container
    assert decider(t)["where"] == f"namespace {vm}"
    lab.stop(loopback_only)
    lab.serve(vm, "0.0.0.0", 3001)
    assert lab.connect(sb.outside, sb.host_addr, 3001) == "connected"
    t = check(lab, "connected", "outside", f"{sb.host_addr}:3001", "--from-ip",
              sb.outside_addr)
    assert t["seen_source"] == sb.outside_addr


def test_port_forward_to_a_vm_behind_a_drop_policy(lab: Lab) -> None:
    """Port forwarding to a VM behind the host's own firewall ("the host firewall
    configured a DROP-all policy ... additional rules are required",
    https://www.p15r.net/posts/2019-02-27-hostfw-libvirtd/): the DNAT rule works, but
    the forward chain's policy drops the new connection, which only established
    traffic may pass. The fix: accept what was DNATed (ct status dnat accept)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain prerouting { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     f"    ip daddr {sb.host_addr} tcp dport 8080 dnat to 10.88.0.2:80\n"
                     "  }\n}\n"
                     "table inet filter {\n"
                     "  chain forward { type filter hook forward priority 0; policy drop;\n"
                     "    ct state established,related accept\n  }\n}\n")
    lab.serve(vm, "0.0.0.0", 80)
    assert lab.connect(sb.outside, sb.host_addr, 8080) == "timeout"
    t = check(lab, "timeout", "outside", f"{sb.host_addr}:8080", "--from-ip",
              sb.outside_addr)
    hop = decider(t)
    assert (hop["family"], hop["table"], hop["chain"], hop["verdict"]) == \
        ("inet", "filter", "forward", "policy drop")
    lab.run(sb.host, "nft", "insert rule inet filter forward ct status dnat accept")
    assert lab.connect(sb.outside, sb.host_addr, 8080) == "connected"
    t = check(lab, "connected", "outside", f"{sb.host_addr}:8080", "--from-ip",
              sb.outside_addr)
    assert t["verdict"] == "delivered" and t["seen_destination"] == "10.88.0.2:80"


def test_host_firewall_input_blocks_a_container_reaching_the_host(lab: Lab) -> None:
    """"Cannot access service on host from container" (chaifeng/ufw-docker#53,
    https://github.com/chaifeng/ufw-docker/issues/53): a ufw-style input chain (policy
    drop; loopback, established and SSH allowed) drops the container's connection to
    the database on the host: "[UFW BLOCK] IN=docker0". The fix: allow the port from
    the bridge."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain input { type filter hook input priority 0; policy drop;\n"
                     "    iif \"lo\" accept\n"
                     "    ct state established,related accept\n"
                     "    tcp dport 22 accept\n  }\n}\n")
    lab.serve(sb.host, "0.0.0.0", 5432)
    assert lab.connect(vm, "10.88.0.1", 5432) == "timeout"
    t = check(lab, "timeout", "10.88.0.2", "10.88.0.1:5432")
    hop = decider(t)
    assert (hop["table"], hop["chain"], hop["hook"], hop["verdict"]) == \
        ("filter", "input", "input", "policy drop")
    lab.run(sb.host, "nft", "insert rule inet filter input iifname br0 tcp dport 5432 "
            "accept")
    assert lab.connect(vm, "10.88.0.1", 5432) == "connected"
    check(lab, "connected", "10.88.0.2", "10.88.0.1:5432")


def test_a_container_network_shadows_part_of_the_lan(lab: Lab) -> None:
    """"Docker network 'bridge' subnet interferes with corporate network range"
    (https://github.com/docker/for-win/issues/58; "Accessing external networks on
    172.17.x.x from container", https://github.com/docker/for-win/issues/1838): Docker's
    default 172.17.0.0/16 is more specific than the 172.16.0.0/12 the company network is
    routed by, so a LAN host in it is looked for behind the bridge, where nobody answers
    ARP. The fix: give the bridge a subnet that does not overlap."""
    sb = lab.sb
    vms(lab, 1, bridge="docker0", third=17)  # 10.17.0.0/24 ...
    lab.addr(sb.host, "docker0", "172.17.0.1/16")  # ... and Docker's default subnet
    lab.addr(sb.outside, "wan0", "172.17.5.10/16")  # the LAN host, beyond the uplink
    lab.route(sb.host, "172.16.0.0/12", "via", sb.outside_addr)
    lab.serve(sb.outside, "172.17.5.10", 443)
    assert lab.connect(sb.host, "172.17.5.10", 443) in ("timeout", "unreachable")
    t = check(lab, "timeout", "host", "172.17.5.10:443")
    assert t["verdict"] == "no-route" and decider(t)["where"] == "docker0"
    assert "ARP gets no answer" in decider(t)["detail"]
    lab.ip(sb.host, "addr", "del", "172.17.0.1/16", "dev", "docker0")
    assert lab.connect(sb.host, "172.17.5.10", 443) == "connected"
    t = check(lab, "connected", "host", "172.17.5.10:443")
    assert t["verdict"] == "leaves-host"


def test_stale_udp_conntrack_entry_outlives_a_port_forward(lab: Lab) -> None:
    """"Failed to receive UDP traffic after container restart" (moby/moby#8795,
    https://github.com/moby/moby/issues/8795; "portmap: delete UDP conntrack entries on
    teardown", https://github.com/containernetworking/plugins/issues/123): the forwarded
    UDP port's container is recreated with another address and the rule follows it, but
    a client that keeps sending from the same port keeps its flow's conntrack entry,
    which still leads to the old address. The fix: conntrack -D -p udp --orig-port-dst
    5060."""
    sb = lab.sb
    vm1, vm2 = vms(lab, 2)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain prerouting { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     f"    ip daddr {sb.host_addr} udp dport 5060 dnat to 10.88.0.2:5060\n"
                     "  }\n}\n")
    old = lab.serve(vm1, "0.0.0.0", 5060, "udp")
    assert lab.connect(sb.outside, sb.host_addr, 5060, "udp", sport=40000) == "connected"
    # The container is recreated as vm2 (10.88.0.3); the rule follows it.
    lab.stop(old)
    lab.ip(vm1, "addr", "flush", "dev", "eth0")
    lab.run(sb.host, "nft", "flush chain ip nat prerouting")
    lab.run(sb.host, "nft", f"add rule ip nat prerouting ip daddr {sb.host_addr} udp dport "
            "5060 dnat to 10.88.0.3:5060")
    lab.serve(vm2, "0.0.0.0", 5060, "udp")
    assert lab.connect(sb.outside, sb.host_addr, 5060, "udp", sport=40001) == "connected"
    real = lab.connect(sb.outside, sb.host_addr, 5060, "udp", sport=40000)
    assert real == "timeout"
    # The trace's client sends from port 40000, the flow conntrack still holds.
    t = traced(lab, real, "outside", f"{sb.host_addr}:5060/udp", "--from-ip", sb.outside_addr)
    assert t["verdict"] in SAME[real], (real, t["verdict"])
    held = next(h for h in t["hops"] if h["kind"] == "ct")
    assert "10.88.0.2:5060" in held["detail"] and "rules now lead to 10.88.0.3:5060" in \
        held["detail"]
    assert t["fix"] == ("delete the stale entry: conntrack -D -p udp --orig-src "
                        f"{sb.outside_addr} --orig-port-src 40000 --orig-dst {sb.host_addr} "
                        "--orig-port-dst 5060")
    # The probe is a new flow, which the rules send to the new address: it agrees with
    # the static trace of a new flow.
    assert t["live"]["agrees"], t["live"]["disagreements"]
    lab.run(sb.host, *t["fix"].partition(": ")[2].split())
    assert lab.connect(sb.outside, sb.host_addr, 5060, "udp", sport=40000) == "connected"
    t = check(lab, "connected", "outside", f"{sb.host_addr}:5060/udp", "--from-ip",
              sb.outside_addr)
    assert t["seen_destination"] == "10.88.0.3:5060"


def test_hairpin_to_a_forwarded_port_without_bridge_netfilter(lab: Lab) -> None:
    """"hairpin nat issue when source and destination pod ... are on same node"
    (cloudnativelabs/kube-router#151, https://github.com/cloudnativelabs/kube-router/
    issues/151; Docker's "modprobe br_netfilter: this fixes hairpin nat",
    https://github.com/moby/moby/pull/13162): a VM connects to a port the host forwards
    to another VM on the same bridge; the SYN is DNATed, but the reply is bridged
    straight back with the server's own address, and the client resets it. The fix:
    bridge-nf-call-iptables=1 (or masquerade the hairpin)."""
    sb = lab.sb
    vm1, vm2 = vms(lab, 2)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.sysctl(sb.host, "net.bridge.bridge-nf-call-iptables", "0")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain prerouting { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     "    ip daddr 10.88.0.1 tcp dport 8080 dnat to 10.88.0.3:80\n"
                     "  }\n}\n")
    lab.serve(vm2, "0.0.0.0", 80)
    real = lab.connect(vm1, "10.88.0.1", 8080)
    assert real == "timeout"
    t = check(lab, real, f"ns:{vm1}", "10.88.0.1:8080")
    hop = decider(t)
    assert (hop["kind"], hop["where"]) == ("reply", f"namespace {vm2}")
    assert "bridges it straight back" in hop["detail"]
    assert t["fix"].startswith("sysctl -w net.bridge.bridge-nf-call-iptables=1")


def test_hairpin_to_a_forwarded_port_with_bridge_netfilter(lab: Lab) -> None:
    """The same hairpin (https://github.com/moby/moby/pull/13162) with bridge netfilter
    on: the reply passes the host's conntrack, which undoes the DNAT; it works."""
    sb = lab.sb
    vm1, vm2 = vms(lab, 2)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.sysctl(sb.host, "net.bridge.bridge-nf-call-iptables", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain prerouting { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     "    ip daddr 10.88.0.1 tcp dport 8080 dnat to 10.88.0.3:80\n"
                     "  }\n}\n")
    lab.serve(vm2, "0.0.0.0", 80)
    assert lab.connect(vm1, "10.88.0.1", 8080) == "connected"
    t = check(lab, "connected", f"ns:{vm1}", "10.88.0.1:8080")
    assert t["seen_destination"] == "10.88.0.3:80"
    assert t["hops"][-1]["where"] == f"namespace {vm2}"


def test_the_guests_own_firewall(lab: Lab) -> None:
    """"Any network service on a guest must have the applicable ports open on the guest
    ... If a network service on a guest is firewalled it will be inaccessible. Always
    verify the guests network configuration first." (Red Hat's virtualization guide,
    https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/5/html/
    virtualization/ch19s04): the host is fine; the VM's own input chain drops the
    connection. The fix: open the port in the guest."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.nft(vm, "table inet guest {\n"
                "  chain input { type filter hook input priority 0; policy drop;\n"
                "    ct state established,related accept\n"
                "    tcp dport 22 accept\n  }\n}\n")
    lab.serve(vm, "0.0.0.0", 8443)
    assert lab.connect(sb.host, "10.88.0.2", 8443) == "timeout"
    t = check(lab, "timeout", "host", "10.88.0.2:8443")
    hop = decider(t)
    assert hop["where"] == f"namespace {vm}: inet guest input"
    assert (hop["table"], hop["verdict"]) == ("guest", "policy drop")
    lab.run(vm, "nft", "add rule inet guest input tcp dport 8443 accept")
    assert lab.connect(sb.host, "10.88.0.2", 8443) == "connected"
    check(lab, "connected", "host", "10.88.0.2:8443")


def test_policy_routing_sends_container_traffic_elsewhere(lab: Lab) -> None:
    """"Docker 29 breaks policy routing" (https://github.com/moby/moby/issues/51544):
    a rule sends everything from one container network to a table of its own (a VPN's
    default route), so a container on another bridge of the same host is no longer
    reached through the main table. The fix: a rule of higher priority that keeps the
    traffic between the host's own networks in the main table."""
    sb = lab.sb
    (vm1,) = vms(lab, 1)
    vm2 = lab.netns("other")
    lab.veth(sb.host, "otherp", vm2, "eth0")
    lab.bridge(sb.host, "br1", "otherp")
    lab.addr(sb.host, "br1", "10.89.0.1/24")
    lab.addr(vm2, "eth0", "10.89.0.2/24")
    lab.route(vm2, "default", "via", "10.89.0.1")
    lab.serve(vm2, "0.0.0.0", 80)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.ip(sb.host, "route", "add", "unreachable", "default", "table", "11")
    lab.ip(sb.host, "rule", "add", "from", "10.88.0.0/24", "lookup", "11", "priority", "150")
    real = lab.connect(vm1, "10.89.0.2", 80)
    assert real == "unreachable"
    t = check(lab, real, f"ns:{vm1}", "10.89.0.2:80")
    assert "ip rule 150: from 10.88.0.0/24 lookup 11" in decider(t)["detail"]
    assert t["fix"].endswith("ip rule add to 10.89.0.0/24 lookup main priority 149")
    lab.ip(sb.host, *t["fix"].rpartition(": ip ")[2].split())
    try:
        assert lab.connect(vm1, "10.89.0.2", 80) == "connected"
        t = check(lab, "connected", f"ns:{vm1}", "10.89.0.2:80")
        assert decider(t)["where"] == f"namespace {vm2}"
    finally:
        lab.ip(sb.host, "rule", "del", "priority", "149")


def test_strict_reverse_path_filter_on_a_guest_with_two_interfaces(lab: Lab) -> None:
    """A guest with two interfaces and strict reverse path filtering: a connection that
    arrives on the second interface from a source the guest routes through the first is
    dropped on receipt ("For the guest with multiple interfaces, the asymmetric routing
    ... If the rp_filter is enabled, Linux will refuse" them,
    https://github.com/autotest/tp-libvirt/pull/6375; "[VPR] no WG traffic with kernel
    reverse-path strict filter enabled",
    https://github.com/stangri/source.openwrt.melmac.ca/issues/41). The fix: loose mode
    (rp_filter=2) or a route back through the second interface."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.veth(sb.host, "vm1q", vm, "eth1")
    lab.addr(sb.host, "vm1q", "10.71.0.1/24")
    lab.addr(vm, "eth1", "10.71.0.2/24")
    lab.sysctl(vm, "net.ipv4.conf.all.rp_filter", "1")
    lab.sysctl(vm, "net.ipv4.conf.eth1.rp_filter", "1")
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.route(sb.outside, "10.71.0.0/24", "via", sb.host_addr)
    lab.serve(vm, "0.0.0.0", 80)
    real = lab.connect(sb.outside, "10.71.0.2", 80)
    assert real == "timeout"
    t = check(lab, real, "outside", "10.71.0.2:80", "--from-ip", sb.outside_addr)
    hop = decider(t)
    assert hop["where"] == f"namespace {vm}" and "reverse path filter (strict" in \
        hop["detail"]
    assert f"ip netns exec {vm} sysctl -w net.ipv4.conf.eth1.rp_filter=2" in t["fix"]
    lab.sysctl(vm, "net.ipv4.conf.eth1.rp_filter", "2")
    assert lab.connect(sb.outside, "10.71.0.2", 80) == "connected"
    check(lab, "connected", "outside", "10.71.0.2:80", "--from-ip", sb.outside_addr)


def test_a_forwarded_port_bypasses_the_input_firewall(lab: Lab) -> None:
    """"docker and ufw serious problems" (https://github.com/moby/moby/issues/4737): ufw
    denies all incoming traffic, yet the ports Docker publishes are reachable from
    outside, because DNAT sends their traffic through the forward hook, and ufw's
    rules are in input. The trace shows the path: prerouting DNAT, then forward, never
    input. The fix from the threads (ufw-docker): filter it where it passes, in the
    forward hook."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain input { type filter hook input priority 0; policy drop;\n"
                     "    iif \"lo\" accept\n"
                     "    ct state established,related accept\n"
                     "    tcp dport 22 accept\n  }\n}\n"
                     "table ip nat {\n"
                     "  chain PREROUTING { type nat hook prerouting priority -100; "
                     "policy accept;\n"
                     f"    ip daddr {sb.host_addr} tcp dport 8080 dnat to 10.88.0.2:80\n"
                     "  }\n}\n")
    lab.serve(vm, "0.0.0.0", 80)
    assert lab.connect(sb.outside, sb.host_addr, 8080) == "connected"
    t = check(lab, "connected", "outside", f"{sb.host_addr}:8080", "--from-ip",
              sb.outside_addr)
    hooks = [h.get("hook") for h in t["hops"] if h["where"].startswith("host:")]
    assert "input" not in hooks and "prerouting" in hooks
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain forward { type filter hook forward priority 0; policy accept;\n"
                     "    oifname \"br0\" ct status dnat drop\n  }\n}\n")
    assert lab.connect(sb.outside, sb.host_addr, 8080) == "timeout"
    t = check(lab, "timeout", "outside", f"{sb.host_addr}:8080", "--from-ip",
              sb.outside_addr)
    hop = decider(t)
    assert (hop["table"], hop["chain"], hop["verdict"]) == ("filter", "forward", "drop")


def test_no_masquerade_the_reply_never_comes_back(lab: Lab) -> None:
    """"Can't access internet from containers" (https://github.com/moby/moby/issues/13381):
    with Docker's rules gone (--iptables=false, a flush) the nat table is empty; packets
    from the container leave the host with its private source address, and "there's no
    reply packet from router to the container". The fix: masquerade what leaves the
    uplink."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    real = lab.connect(vm, sb.outside_addr, 9000)
    assert real == "timeout"  # the outside has no route back to 10.88.0.0/24
    t = traced(lab, real, "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] in SAME[real], (real, t["verdict"])
    assert "not masqueraded" in t["summary"] and decider(t)["kind"] == "reply"
    # The probe is stopped at the uplink, before any answer: it agrees with the request.
    assert t["live"]["verdict"] == "leaves-host" and t["live"]["agrees"]
    assert 'ip saddr 10.88.0.0/24 oifname \'"uplink0"\' masquerade' in t["fix"]
    lab.run(sb.host, "sh", "-c", t["fix"].partition(": ")[2])
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == sb.host_addr


def test_a_forward_drop_of_its_own_drops_the_replies_another_table_accepts(lab: Lab
                                                                           ) -> None:
    """"Play nice with nftables forward policy drop" (containers/netavark#977,
    https://github.com/containers/netavark/issues/977; "containers without internet
    access", https://github.com/oniGino/docker-nftables-scripts/issues/4): the runtime's
    table accepts its network's traffic both ways, but the user's own `inet filter`
    forward chain (policy drop) lets out only what goes from the bridge to the uplink.
    The request leaves; its reply, coming back from the uplink to the bridge, is accepted
    by the runtime's chain and dropped by the user's: an accept ends only its own chain.
    The fix: accept established and related traffic in that chain."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip runtime {\n"
                     "  chain forward { type filter hook forward priority -1; "
                     "policy accept;\n"
                     "    oifname \"br0\" ct state established,related accept\n"
                     "    iifname \"br0\" accept\n  }\n"
                     "  chain postrouting { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" masquerade\n  }\n}\n"
                     "table inet filter {\n"
                     "  chain forward { type filter hook forward priority 0; policy drop;\n"
                     "    iifname \"br0\" oifname \"uplink0\" accept\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    real = lab.connect(vm, sb.outside_addr, 9000)
    assert real == "timeout"
    t = traced(lab, real, "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "dropped" and t["verdict"] in SAME[real], (t["verdict"], t["hops"])
    assert "its reply does not come back" in t["summary"]
    assert "ends only its own chain" in t["summary"]
    hop = decider(t)
    assert (hop["kind"], hop["table"], hop["chain"], hop["verdict"]) == \
        ("reply", "filter", "forward", "policy drop")
    # The reply is the one coming back from the uplink to the VM, after conntrack turned
    # the masquerade back.
    assert any(h["kind"] == "reply" and h["detail"].startswith("the far end answers")
               for h in t["hops"])
    assert any("undoes the source NAT" in h["detail"] for h in t["hops"])
    # The probe is stopped at the uplink, before any answer: it agrees with the request.
    assert t["live"]["verdict"] == "leaves-host" and t["live"]["agrees"]
    assert t["fix"].endswith("nft insert rule inet filter forward ct state "
                             "established,related accept")
    lab.run(sb.host, "sh", "-c", t["fix"].partition(": ")[2])
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == sb.host_addr
    # The reply's way back, hook by hook, comes with it.
    back = t["reply_hops"]
    assert back[0]["detail"].startswith("the far end answers")
    assert [(h["table"], h["verdict"]) for h in back if h.get("chain") == "forward"] == \
        [("runtime", "accept"), ("filter", "accept")]
    assert back[-1]["kind"] == "reply" and "client's socket" in back[-1]["detail"]


def test_ipv6_forwarding_for_some_interfaces_only(lab: Lab) -> None:
    """IPv6 has no per-interface forwarding switch as IPv4 has: net.ipv6.conf.all.
    forwarding alone decides, and net.ipv6.conf.DEV.forwarding only makes DEV a router
    for neighbour discovery. Linux 6.17 added net.ipv6.conf.DEV.force_forwarding
    ("forward packets received on this interface even if all.forwarding is 0",
    https://docs.kernel.org/networking/ip-sysctl.html, force_forwarding) for hosts that
    route between some interfaces only. Turned on for the VMs' bridge alone, the
    requests go out, but the replies arrive on the uplink, which does not forward: the
    connection fails until the uplink forwards too."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.addr(sb.host, "br0", "fd00:88::1/64")
    lab.addr(vm, "eth0", "fd00:88::2/64")
    lab.ip(vm, "-6", "route", "add", "default", "via", "fd00:88::1")
    lab.sysctl(sb.host, "net.ipv6.conf.all.forwarding", "0")
    lab.nft(sb.host, "table ip6 nat {\n"
                     "  chain postrouting { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip6 saddr fd00:88::/64 oifname \"uplink0\" masquerade\n  }\n}\n")
    lab.serve(sb.outside, OUTSIDE6, 9000)
    lab.sysctl(sb.host, "net.ipv6.conf.br0.force_forwarding", "1")
    real = lab.connect(vm, OUTSIDE6, 9000)
    assert real == "timeout"
    t = traced(lab, real, "fd00:88::2", f"[{OUTSIDE6}]:9000")
    assert t["verdict"] == "dropped" and "its reply does not come back" in t["summary"], \
        (t["summary"], t["hops"])
    assert any("force_forwarding is 1: what arrives on br0 is forwarded" in h["detail"]
               for h in t["hops"])
    hop = decider(t)
    assert hop["kind"] == "reply" and "nothing is forwarded" in hop["detail"]
    assert "net.ipv6.conf.uplink0.force_forwarding=1" in t["fix"]
    assert t["live"]["verdict"] == "leaves-host" and t["live"]["agrees"]
    lab.sysctl(sb.host, "net.ipv6.conf.uplink0.force_forwarding", "1")
    assert lab.connect(vm, OUTSIDE6, 9000) == "connected"
    t = check(lab, "connected", "fd00:88::2", f"[{OUTSIDE6}]:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == HOST6
    # A per-interface forwarding of 0 stops nothing in IPv6 (all.forwarding decides).
    lab.sysctl(sb.host, "net.ipv6.conf.all.forwarding", "1")
    lab.sysctl(sb.host, "net.ipv6.conf.br0.forwarding", "0")
    assert lab.connect(vm, OUTSIDE6, 9000) == "connected"
    check(lab, "connected", "fd00:88::2", f"[{OUTSIDE6}]:9000")


def test_vms_behind_a_bridge_in_a_namespace_of_their_own(lab: Lab) -> None:
    """VMs in a network namespace of their own, reached from the host by a veth ("each
    VM lives in its own network namespace ... we need to build a path from each
    namespace, through the host's root network stack", "Setting up networking for your
    VMs", https://jacquesverre.com/blog/setting-up-networking-for-your-vms): here the
    namespace (a VM host, a lab's node) bridges its guests behind a bridge of its own,
    and the host routes their subnet to the namespace's veth. trace follows that bridge
    to the guest (and the reply back through it), where it used to stop at the bridge
    as if the packet left the machine there."""
    sb = lab.sb
    hv, guest = lab.netns("hv"), lab.netns("guest")
    lab.veth(sb.host, "hvp", hv, "eth0")
    lab.addr(sb.host, "hvp", "10.97.0.1/30")
    lab.addr(hv, "eth0", "10.97.0.2/30")
    lab.veth(hv, "g1p", guest, "eth0")
    lab.bridge(hv, "lbr0", "g1p")
    lab.addr(hv, "lbr0", "10.98.0.1/24")
    lab.addr(guest, "eth0", "10.98.0.2/24")
    lab.route(guest, "default", "via", "10.98.0.1")
    lab.route(hv, "default", "via", "10.97.0.1")
    lab.sysctl(hv, "net.ipv4.ip_forward", "1")
    lab.route(sb.host, "10.98.0.0/24", "via", "10.97.0.2")
    server = lab.serve(guest, "0.0.0.0", 80)
    assert lab.connect(sb.host, "10.98.0.2", 80) == "connected"
    t = check(lab, "connected", "host", "10.98.0.2:80")
    assert t["verdict"] == "delivered", (t["summary"], t["hops"])
    assert t["hops"][-1]["where"] == f"namespace {guest}"
    assert any(h["kind"] == "bridge" and h["where"] == f"lbr0 (namespace {hv})"
               for h in t["hops"])
    # The reply: from the VM to the lab's bridge address, routed by the lab to the host.
    assert any(h["where"] == f"namespace {hv}" for h in t["reply_hops"])
    lab.stop(server)
    assert lab.connect(sb.host, "10.98.0.2", 80) == "refused"
    t = check(lab, "refused", "host", "10.98.0.2:80")
    assert t["hops"][-1]["where"] == f"namespace {guest}"


def test_the_hosts_stub_resolver_from_a_container(lab: Lab) -> None:
    """A container given the host's /etc/resolv.conf asks 127.0.0.53, systemd-resolved's
    stub, which is the host's own loopback: inside the container that address is its own,
    where nothing answers ("If host machine's resolv.conf contain the '127.0.0.53' ...
    container can not use", https://github.com/buckyos/CYFS/pull/87; "Use
    systemd-resolve", https://github.com/docker-library/docker/issues/114). The fix: a
    resolver the container can reach (here, one on the bridge's address)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.serve(sb.host, "127.0.0.53", 53, "udp")
    assert lab.connect(sb.host, "127.0.0.53", 53, "udp") == "connected"  # on the host
    assert lab.connect(vm, "127.0.0.53", 53, "udp") == "refused"
    t = check(lab, "refused", f"ns:{vm}", "127.0.0.53:53/udp")
    hop = decider(t)
    assert hop["where"] == f"namespace {vm}" and "nothing listens" in hop["detail"]
    lab.serve(sb.host, "10.88.0.1", 53, "udp")
    assert lab.connect(vm, "10.88.0.1", 53, "udp") == "connected"
    t = check(lab, "connected", f"ns:{vm}", "10.88.0.1:53/udp")
    assert decider(t)["where"] == "host"


def test_deny_outgoing_does_not_stop_containers(lab: Lab) -> None:
    """"Docker can access internet after: ufw default deny outgoing"
    (https://github.com/chaifeng/ufw-docker/issues/32): the output chain's policy drop
    stops the host's own connections, but a container's are forwarded and never pass
    output. The fix from the thread: deny in the forward hook (ufw route deny)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain output { type filter hook output priority 0; policy drop;\n"
                     "    oif \"lo\" accept\n"
                     "    ct state established,related accept\n  }\n}\n"
                     "table ip nat {\n"
                     "  chain POSTROUTING { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" masquerade\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 443)
    assert lab.connect(sb.host, sb.outside_addr, 443) == "timeout"  # the host is stopped
    t = check(lab, "timeout", "host", f"{sb.outside_addr}:443")
    assert (decider(t)["chain"], decider(t)["verdict"]) == ("output", "policy drop")
    assert lab.connect(vm, sb.outside_addr, 443) == "connected"  # the container is not
    t = check(lab, "connected", f"ns:{vm}", f"{sb.outside_addr}:443")
    assert "output" not in [h.get("hook") for h in t["hops"] if h["where"].startswith("host:")]
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain forward { type filter hook forward priority 0; policy accept;\n"
                     "    iifname \"br0\" oifname \"uplink0\" ct state new drop\n  }\n}\n")
    assert lab.connect(vm, sb.outside_addr, 443) == "timeout"
    t = check(lab, "timeout", f"ns:{vm}", f"{sb.outside_addr}:443")
    assert (decider(t)["chain"], decider(t)["verdict"]) == ("forward", "drop")


def test_an_accept_in_one_table_a_policy_drop_in_another(lab: Lab) -> None:
    """"NAT not working on lxdbr0 after upgrade" (canonical/lxd#8716,
    https://github.com/canonical/lxd/issues/8716; "Play nice with nftables forward policy
    drop", https://github.com/containers/netavark/issues/977): LXD's own table accepts
    what leaves its bridge, but Docker's iptables-nft FORWARD chain, on the same hook,
    drops it by policy: "even if LXD's own nftables rules accept the forwarded traffic"
    every chain on the hook runs, and an accept ends only its own. (Here LXD's table is
    made after Docker's, as when LXD restarts: of two chains of one priority, the kernel
    runs the newer first.) The fix: accept the traffic in the chain that drops it."""
    sb = lab.sb
    (vm,) = vms(lab, 1, bridge="lxdbr0")
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip filter {\n"
                     "  chain FORWARD { type filter hook forward priority 0; policy drop; }\n"
                     "}\n")
    lab.nft(sb.host, "table inet lxd {\n"
                     "  chain fwd.lxdbr0 { type filter hook forward priority 0; "
                     "policy accept;\n"
                     "    oifname \"lxdbr0\" accept\n    iifname \"lxdbr0\" accept\n  }\n"
                     "  chain pstrt.lxdbr0 { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 ip daddr != 10.88.0.0/24 masquerade\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    assert lab.connect(vm, sb.outside_addr, 9000) == "timeout"
    t = check(lab, "timeout", "10.88.0.2", f"{sb.outside_addr}:9000")
    hop = decider(t)
    assert (hop["family"], hop["table"], hop["chain"], hop["verdict"]) == \
        ("ip", "filter", "FORWARD", "policy drop")
    assert "the accept in inet lxd fwd.lxdbr0" in t["summary"] and \
        "ends only its own chain" in t["summary"]
    assert t["fix"].startswith("accept the flow in that chain: nft insert rule ip filter "
                               "FORWARD iifname \"lxdbr0\"")
    lab.run(sb.host, "sh", "-c", t["fix"].partition(": ")[2])
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", "10.88.0.2", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == sb.host_addr


def test_bridges_made_by_hand_are_not_isolated(lab: Lab) -> None:
    """"Isolating containers on separate bridge networks"
    (https://github.com/containernetworking/plugins/issues/474): containers on two
    bridge networks of the CNI bridge plugin reach each other through the host, which
    routes between the bridges; the user expected them isolated. The fix: drop what
    goes from one bridge to the other in forward, as Docker's DOCKER-ISOLATION chains
    do."""
    sb = lab.sb
    (vm1,) = vms(lab, 1)
    vm2 = lab.netns("net2")
    lab.veth(sb.host, "net2p", vm2, "eth0")
    lab.bridge(sb.host, "cni-podman1", "net2p")
    lab.addr(sb.host, "cni-podman1", "10.89.1.1/24")
    lab.addr(vm2, "eth0", "10.89.1.2/24")
    lab.route(vm2, "default", "via", "10.89.1.1")
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.serve(vm2, "0.0.0.0", 80)
    assert lab.connect(vm1, "10.89.1.2", 80) == "connected"
    t = check(lab, "connected", f"ns:{vm1}", "10.89.1.2:80")
    assert t["verdict"] == "delivered" and decider(t)["where"] == f"namespace {vm2}"
    lab.nft(sb.host, "table ip filter {\n"
                     "  chain ISOLATION { iifname \"br0\" oifname \"cni-podman1\" drop\n"
                     "    iifname \"cni-podman1\" oifname \"br0\" drop\n  }\n"
                     "  chain FORWARD { type filter hook forward priority 0; policy accept;\n"
                     "    jump ISOLATION\n  }\n}\n")
    assert lab.connect(vm1, "10.89.1.2", 80) == "timeout"
    t = check(lab, "timeout", f"ns:{vm1}", "10.89.1.2:80")
    hop = decider(t)
    assert (hop["chain"], hop["rule_chain"], hop["verdict"]) == ("FORWARD", "ISOLATION", "drop")


def test_a_default_gateway_nobody_answers_for(lab: Lab) -> None:
    """"Container gets wrong default gateway" (https://github.com/subutai-io/agent/issues/
    465): the container's default route names a gateway from another subnet, which
    nobody on its link holds: ARP for it goes unanswered and nothing leaves. The fix:
    the bridge's address as the gateway."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain POSTROUTING { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" masquerade\n  }\n}\n")
    lab.serve(sb.outside, sb.outside_addr, 443)
    lab.ip(vm, "route", "replace", "default", "via", "172.18.139.251", "dev", "eth0",
           "onlink")
    assert lab.connect(vm, sb.outside_addr, 443) in ("timeout", "unreachable")
    t = check(lab, "timeout", f"ns:{vm}", f"{sb.outside_addr}:443")
    assert t["verdict"] == "no-route"
    assert "nothing behind br0 has 172.18.139.251" in decider(t)["detail"]
    assert "172.18.139.251" in t["live"]["summary"]
    lab.ip(vm, "route", "replace", "default", "via", "10.88.0.1")
    assert lab.connect(vm, sb.outside_addr, 443) == "connected"
    check(lab, "connected", f"ns:{vm}", f"{sb.outside_addr}:443")


def test_localhost_is_ipv6_first_the_server_ipv4_only(lab: Lab) -> None:
    """"Error: connect ECONNREFUSED ::1:8080"
    (https://github.com/web-tunnel/lite-http-tunnel/issues/3; Node.js 17 and later
    resolve localhost to ::1 first, https://github.com/nodejs/node/issues/40702): in a
    container, the client goes to ::1 while the server listens on 127.0.0.1 only. The
    fix from the thread: the client asks 127.0.0.1 (or the server listens on ::1
    too)."""
    (vm,) = vms(lab, 1)
    lab.serve(vm, "127.0.0.1", 8080)
    assert lab.connect(vm, "::1", 8080) == "refused"
    t = check(lab, "refused", f"ns:{vm}", "[::1]:8080")
    hop = decider(t)
    assert hop["where"] == f"namespace {vm}" and "nothing listens on [::1]:8080" in \
        hop["detail"]
    assert lab.connect(vm, "127.0.0.1", 8080) == "connected"
    t = check(lab, "connected", f"ns:{vm}", "127.0.0.1:8080")
    assert "listens on 127.0.0.1:8080" in decider(t)["detail"]



def test_strict_reverse_path_filter_drops_replies_on_the_second_uplink(lab: Lab) -> None:
    """A host with two uplinks whose VMs leave with the second one's address while the
    main table routes by the first ("Why does Red Hat Enterprise Linux ... discard packets
    when the route for outbound traffic differs from the route of incoming traffic?",
    https://access.redhat.com/solutions/53031; "Since RHEL 6 ... asymmetric routing
    doesn't work anymore out of the box", "Linux multihome host with rule based routing",
    http://pdiary.ru/index.php/2017/12/26/linux-multihome-host-with-rule-based-routing/).
    The request
    leaves by uplink0; the far end answers the address it saw, which is uplink1's, and
    the network beyond delivers that to uplink1, where strict reverse path filtering
    drops it: the host's way back to the far end leaves by uplink0. The connection's
    verdict is its reply's. The fix: loose mode on uplink1 (or policy routing that sends
    what comes from uplink1's address out by uplink1)."""
    sb = lab.sb
    (vm,) = vms(lab, 1)
    lab.veth(sb.host, "uplink1", sb.outside, "wan1")
    lab.addr(sb.host, "uplink1", "192.0.2.1/24")
    lab.addr(sb.outside, "wan1", "192.0.2.2/24")
    # The second ISP's default route, kept for when the first fails.
    lab.route(sb.host, "default", "via", "192.0.2.2", "metric", "200")
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table ip nat {\n"
                     "  chain postrouting { type nat hook postrouting priority 100; "
                     "policy accept;\n"
                     "    ip saddr 10.88.0.0/24 oifname \"uplink0\" snat to 192.0.2.1\n"
                     "  }\n}\n")
    lab.sysctl(sb.host, "net.ipv4.conf.all.rp_filter", "1")
    lab.serve(sb.outside, sb.outside_addr, 9000)
    real = lab.connect(vm, sb.outside_addr, 9000)
    assert real == "timeout"
    t = traced(lab, real, f"ns:{vm}", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "dropped", (t["summary"], t["hops"])
    assert "its reply does not come back" in t["summary"]
    assert any(h["kind"] == "reply" and "arrives on uplink1" in h["detail"]
               for h in t["hops"]), t["hops"]
    hop = decider(t)
    assert hop["kind"] == "reply" and hop["where"] == "host"
    assert "reverse path filter (strict, rp_filter=1 on uplink1)" in hop["detail"]
    assert "sysctl -w net.ipv4.conf.uplink1.rp_filter=2" in t["fix"]
    # The probe is stopped at the uplink, before any answer: it agrees with the request.
    assert t["live"]["verdict"] == "leaves-host" and t["live"]["agrees"]
    lab.sysctl(sb.host, "net.ipv4.conf.uplink1.rp_filter", "2")
    assert lab.connect(vm, sb.outside_addr, 9000) == "connected"
    t = check(lab, "connected", f"ns:{vm}", f"{sb.outside_addr}:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == "192.0.2.1"
    assert "arrives on uplink1" in t["reply_hops"][0]["detail"]
    assert t["reply_hops"][-1]["where"] == f"namespace {vm}"


def test_nat_inside_a_vm_host_namespace_is_undone_on_the_reply(lab: Lab) -> None:
    """A VM host of its own (a lab node, a nested runtime) that does what a libvirt
    NAT-based network does, in its own namespace: masquerades its guests ("Custom
    NAT-based network", https://jamielinux.com/docs/libvirt-networking-handbook/custom-nat-based-network.html)
    and forwards a port to one with DNAT ("Packets arriving on the public interface are
    DNATed to the virtual machine", https://github.com/saschpe/libvirt-hook-qemu). The
    host knows only the VM host's own address, not the guests' subnet. The guest's connection to the
    host leaves masqueraded; the host's reply goes to the VM host's address, where that
    namespace's conntrack turns it back to the guest, and bridges it on. A port the VM
    host forwards to the guest answers from the address the client asked for."""
    sb = lab.sb
    hv, guest = lab.netns("hv"), lab.netns("guest")
    lab.veth(sb.host, "hvp", hv, "eth0")
    lab.addr(sb.host, "hvp", "10.97.0.1/30")
    lab.addr(hv, "eth0", "10.97.0.2/30")
    lab.veth(hv, "g1p", guest, "eth0")
    lab.bridge(hv, "lbr0", "g1p")
    lab.addr(hv, "lbr0", "10.98.0.1/24")
    lab.addr(guest, "eth0", "10.98.0.2/24")
    lab.route(guest, "default", "via", "10.98.0.1")
    lab.route(hv, "default", "via", "10.97.0.1")
    lab.sysctl(hv, "net.ipv4.ip_forward", "1")
    lab.nft(hv, "table ip nat {\n"
                "  chain prerouting { type nat hook prerouting priority -100; policy accept;\n"
                "    ip daddr 10.97.0.2 tcp dport 8080 dnat to 10.98.0.2:80\n  }\n"
                "  chain postrouting { type nat hook postrouting priority 100; "
                "policy accept;\n"
                "    ip saddr 10.98.0.0/24 oifname \"eth0\" masquerade\n  }\n}\n")
    lab.serve(sb.host, "10.97.0.1", 5432)
    lab.serve(guest, "0.0.0.0", 80)
    # The host has no route to the guests: only the masquerade brings the reply back.
    assert lab.connect(guest, "10.97.0.1", 5432) == "connected"
    t = check(lab, "connected", f"ns:{guest}", "10.97.0.1:5432")
    assert t["verdict"] == "delivered" and t["seen_source"] == "10.97.0.2", t["summary"]
    back = t["reply_hops"]
    assert any(h["where"] == f"namespace {hv}" and h["detail"] ==
               "conntrack undoes the source NAT: destination 10.97.0.2:40000 -> "
               "10.98.0.2:40000" for h in back), back
    assert any(h["kind"] == "reply" and h["where"] == f"lbr0 (namespace {hv})"
               for h in back), back
    assert back[-1]["where"] == f"namespace {guest}" and \
        "client's socket on 10.98.0.2:40000" in back[-1]["detail"], back[-1]
    # A port the VM host forwards: the reply leaves it from the address asked for.
    assert lab.connect(sb.host, "10.97.0.2", 8080) == "connected"
    t = check(lab, "connected", "host", "10.97.0.2:8080")
    assert t["verdict"] == "delivered" and t["hops"][-1]["where"] == f"namespace {guest}"
    back = t["reply_hops"]
    assert any(h["where"] == f"namespace {hv}" and h["detail"] ==
               "conntrack undoes the DNAT: source 10.98.0.2:80 -> 10.97.0.2:8080"
               for h in back), back
    assert back[-1]["where"] == "host" and \
        back[-1]["detail"].endswith("takes the reply from 10.97.0.2:8080"), back[-1]


def vm_host_with_guests(lab: Lab, count: int) -> tuple[str, list[str]]:
    """A VM host namespace (hv) routed from the host over a veth (10.97.0.0/30), its own
    bridge lbr0 (10.98.0.1/24) and `count` guests behind it (10.98.0.2, .3, ...)."""
    sb = lab.sb
    hv = lab.netns("hv")
    lab.veth(sb.host, "hvp", hv, "eth0")
    lab.addr(sb.host, "hvp", "10.97.0.1/30")
    lab.addr(hv, "eth0", "10.97.0.2/30")
    guests = []
    for n in range(count):
        guest = lab.netns(f"g{n + 1}")
        lab.veth(hv, f"g{n + 1}p", guest, "eth0")
        lab.addr(guest, "eth0", f"10.98.0.{n + 2}/24")
        guests.append(guest)
    lab.bridge(hv, "lbr0", *[f"g{n + 1}p" for n in range(count)])
    lab.addr(hv, "lbr0", "10.98.0.1/24")
    for guest in guests:
        lab.route(guest, "default", "via", "10.98.0.1")
    lab.route(hv, "default", "via", "10.97.0.1")
    lab.sysctl(hv, "net.ipv4.ip_forward", "1")
    lab.route(sb.host, "10.98.0.0/24", "via", "10.97.0.2")
    return hv, guests


def test_guest_to_guest_on_a_bridge_inside_another_namespace(lab: Lab) -> None:
    """Two guests on a VM host's own bridge (a lab node, a nested runtime), the VM host
    in a namespace of its own: their frames are bridged inside that namespace, with its
    bridge netfilter (per namespace) and its own forward chain deciding, as Docker's
    FORWARD policy drop does to KVM guests on the host (docker/for-linux#949,
    https://github.com/docker/for-linux/issues/949). trace follows the frame across the
    bridge to the other guest where it said no-route. A guest whose tap has no process
    behind it (a VM that is not running: the tap has no carrier) answers nothing, and
    trace says why."""
    hv, (g1, g2) = vm_host_with_guests(lab, 2)
    lab.serve(g2, "0.0.0.0", 80)
    assert lab.connect(g1, "10.98.0.3", 80) == "connected"
    t = check(lab, "connected", f"ns:{g1}", "10.98.0.3:80")
    assert t["verdict"] == "delivered" and t["hops"][-1]["where"] == f"namespace {g2}", \
        (t["summary"], t["hops"])
    assert any(h["where"] == f"lbr0 (namespace {hv})" and "bridged, not routed" in
               h["detail"] for h in t["hops"]), t["hops"]
    assert t["reply_hops"][-1]["where"] == f"namespace {g1}"
    # The VM host's own forward chain, policy drop: its bridge netfilter is on.
    lab.sysctl(hv, "net.bridge.bridge-nf-call-iptables", "1")
    lab.nft(hv, "table ip filter {\n"
                "  chain FORWARD { type filter hook forward priority 0; policy drop; }\n}\n")
    assert lab.connect(g1, "10.98.0.3", 80) == "timeout"
    t = check(lab, "timeout", f"ns:{g1}", "10.98.0.3:80")
    hop = decider(t)
    assert (hop["where"], hop["table"], hop["verdict"]) == \
        (f"namespace {hv}: ip filter FORWARD", "filter", "policy drop"), hop
    assert any(f"bridge-nf-call-iptables in namespace {hv}=1" in h["detail"]
               for h in t["hops"])
    assert t["live"]["summary"].endswith(f"static trace drops it in namespace {hv}, whose "
                                         "hooks the live trace does not see")
    lab.sysctl(hv, "net.bridge.bridge-nf-call-iptables", "0")
    assert lab.connect(g1, "10.98.0.3", 80) == "connected"
    t = check(lab, "connected", f"ns:{g1}", "10.98.0.3:80")
    assert any("bridge netfilter is off" in h["detail"] for h in t["hops"])
    # A guest that is a VM whose process is not running: its tap has no carrier.
    lab.run(hv, "ip", "tuntap", "add", "tap0", "mode", "tap")
    lab.ip(hv, "link", "set", "tap0", "master", "lbr0")
    lab.ip(hv, "link", "set", "tap0", "up")
    real = lab.connect(g1, "10.98.0.9", 80)
    assert real in ("timeout", "unreachable")
    t = check(lab, real, f"ns:{g1}", "10.98.0.9:80")
    assert t["verdict"] == "no-route"
    hop = decider(t)
    assert hop["where"] == f"lbr0 (namespace {hv})" and \
        "tap0 (a tap: a VM's port) has no carrier" in hop["detail"], hop
    assert t["fix"].startswith("start the VM that holds tap0")


def test_macvlan_siblings_in_two_namespaces(lab: Lab) -> None:
    """Two namespaces each with a macvlan on the same lower device of the host (Docker's
    and Podman's macvlan networks,
    https://docs.docker.com/engine/network/drivers/macvlan/): in bridge mode the siblings
    talk straight across, and trace follows the frame to the other namespace. `ip link add
    ... type macvlan` makes vepa mode by default, where a frame to a sibling leaves by the
    lower device and comes back only if the switch beyond reflects it ("with vepa mode
    connections between containers on the same host arent working at all anymore ... arp
    requests that get no answer", https://github.com/jpetazzo/pipework/issues/239; the
    modes in "Introduction to Linux interfaces for virtual networking",
    https://developers.redhat.com/blog/2018/10/22/introduction-to-linux-interfaces-for-virtual-networking):
    trace says so, and the fix is bridge mode."""
    sb = lab.sb
    lab.veth(sb.host, "mvl0", sb.host, "mvl0p")
    a, b = lab.netns("mva"), lab.netns("mvb")
    for ns, dev, addr in ((a, "mva", "10.99.0.2/24"), (b, "mvb", "10.99.0.3/24")):
        lab.ip(sb.host, "link", "add", dev, "link", "mvl0", "type", "macvlan", "mode", "vepa")
        lab.ip(sb.host, "link", "set", dev, "netns", ns)
        lab.addr(ns, dev, addr)
        lab.ip(ns, "link", "set", dev, "up")
    lab.serve(b, "0.0.0.0", 80)
    assert lab.connect(a, "10.99.0.3", 80) == "timeout"
    t = check(lab, "timeout", f"ns:{a}", "10.99.0.3:80")
    hop = decider(t)
    assert hop["kind"] == "mvlan" and hop["where"] == "mva -> mvb" and \
        "in vepa mode" in hop["detail"], (t["summary"], hop)
    assert f"ip netns exec {a} ip link set mva type macvlan mode bridge" in t["fix"]
    lab.ip(a, "link", "set", "mva", "type", "macvlan", "mode", "bridge")
    lab.ip(b, "link", "set", "mvb", "type", "macvlan", "mode", "bridge")
    # (The entry the failed ARP left is not waited out.)
    lab.ip(a, "neigh", "flush", "dev", "mva")
    assert lab.connect(a, "10.99.0.3", 80) == "connected"
    t = check(lab, "connected", f"ns:{a}", "10.99.0.3:80")
    assert t["verdict"] == "delivered" and t["hops"][-1]["where"] == f"namespace {b}", \
        (t["summary"], t["hops"])
    assert any(h["kind"] == "mvlan" and "bridge mode" in h["detail"] for h in t["hops"])
    assert t["reply_hops"][-1]["where"] == f"namespace {a}"


def test_live_probe_sees_where_its_answer_dies_in_the_host(lab: Lab) -> None:
    """A forward chain of the user's own (policy drop) lets one network reach another,
    but forgets the replies (as in containers/netavark#977,
    https://github.com/containers/netavark/issues/977): the SYN is forwarded, the server
    answers, and the SYN-ACK dies in the host. Static trace walks the reply to that chain;
    the live probe's answer is traced too, and the live verdict names the same chain,
    where it used to say that no rule dropped anything."""
    sb = lab.sb
    (vm1,) = vms(lab, 1)
    vm2 = lab.netns("other")
    lab.veth(sb.host, "otherp", vm2, "eth0")
    lab.bridge(sb.host, "br1", "otherp")
    lab.addr(sb.host, "br1", "10.89.0.1/24")
    lab.addr(vm2, "eth0", "10.89.0.2/24")
    lab.route(vm2, "default", "via", "10.89.0.1")
    lab.sysctl(sb.host, "net.ipv4.ip_forward", "1")
    lab.nft(sb.host, "table inet filter {\n"
                     "  chain forward { type filter hook forward priority 0; policy drop;\n"
                     "    iifname \"br0\" oifname \"br1\" accept\n  }\n}\n")
    lab.serve(vm2, "0.0.0.0", 80)
    assert lab.connect(vm1, "10.89.0.2", 80) == "timeout"
    t = check(lab, "timeout", f"ns:{vm1}", "10.89.0.2:80")
    assert "its reply does not come back" in t["summary"], t["summary"]
    hop = decider(t)
    assert (hop["kind"], hop["table"], hop["chain"], hop["verdict"]) == \
        ("reply", "filter", "forward", "policy drop")
    live = t["live"]
    assert live["summary"] == "delivered, but the reply was dropped on this host by inet " \
        "filter forward: policy drop", live["summary"]
    assert [(h["table"], h["verdict"]) for h in live["reply"]["hops"]] == \
        [("filter", "policy drop")], live["reply"]["hops"]
    lab.run(sb.host, "sh", "-c", t["fix"].partition(": ")[2])
    assert lab.connect(vm1, "10.89.0.2", 80) == "connected"
    t = check(lab, "connected", f"ns:{vm1}", "10.89.0.2:80")
    assert [(h["table"], h["verdict"]) for h in t["live"]["reply"]["hops"]] == \
        [("filter", "accept")], t["live"]["reply"]["hops"]
