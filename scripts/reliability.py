"""Run the reliability and security tests and write docs/reliability.md from the results.

    make reliability            (as root; the same tests also run in `make test`)

Each row names a promise, what the test does to break it, and the test; the
result and time come from this run (pytest's JUnit XML), not from this file.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
E2E = "tests/e2e"

# (area, what is tried, test file, test function; a parametrized test gives one row per case)
ROWS: list[tuple[str, str, str, str]] = [
    ("Concurrency", "30 `run -d` at once on one network; all reachable; 30 `rm -f` at once",
     "test_concurrency.py", "test_thirty_runs_at_once"),
    ("Concurrency", "50 `run -d -p` and 50 `rm -f` at once, mixed with connect/disconnect: "
     "no duplicate address, name or host port, no lock error, nothing left",
     "test_concurrency.py", "test_fifty_mixed_operations"),
    ("Crash safety", "portwayd (and the CLI with it) SIGKILLed at this step, then `gc`: store "
     "and kernel agree, nothing leaked, bystander container still running, the operation "
     "can be retried", "test_crash.py", "test_kill_at_each_step_then_gc"),
    ("Crash safety", "portwayd killed while containers run: they keep running, a new daemon "
     "re-adopts them", "test_containers.py", "test_daemon_death_stops_no_container"),
    ("Drift", "bridge, veth and namespace name deleted; store rows deleted behind portway's "
     "back: `doctor` reports, `gc` repairs both ways", "test_containers.py",
     "test_gc_repairs_drift"),
    ("Drift", "`inet portway` flushed, then deleted: `gc` rebuilds it and an open TCP "
     "connection survives; on an intact system `gc` changes nothing", "test_firewall.py",
     "test_gc_after_flush_and_open_connection_survives"),
    ("Drift", "`bridge portway` entries deleted: `gc` puts them back", "test_spoofing.py",
     "test_entries_follow_endpoints"),
    ("Drift", "DNS server killed: `gc` starts it with the same records", "test_dns.py",
     "test_server_follows_networks_and_gc"),
    ("Drift", "simulated reboot (processes killed, named namespaces gone, fresh host "
     "namespace, same state dir): the daemon re-creates bridges, tables, DNS, sandboxes",
     "test_drift.py", "test_simulated_reboot"),
    ("Hostile input", "hypothesis: generated names, CIDRs, gateways, ranges, options for "
     "`network create`: one line, non-zero exit, no change", "test_hostile_input.py",
     "test_network_create_hostile"),
    ("Hostile input", "hypothesis: generated names, addresses, port specs, aliases, argument "
     "orders for `run`: one line, non-zero exit, no change", "test_hostile_input.py",
     "test_run_hostile"),
    ("Hostile input", "a table of known-bad commands: one line each, kernel and store "
     "unchanged", "test_bad_input.py", "test_bad_input_changes_nothing"),
    ("Hostile input", "netavark JSON with one field wrong, as Podman could send it: one "
     "netavark-style error, no link made", "test_netavark.py",
     "test_invalid_input_changes_nothing"),
    ("Drift", "Podman removes a container's namespace without calling teardown: `doctor` "
     "reports it, `gc` forgets the container and its ports", "test_netavark.py",
     "test_gc_forgets_a_container_podman_removed_without_teardown"),
    ("Security", "container to another network's container (control: works with the "
     "isolation rule removed)", "test_firewall.py", "test_isolation_between_networks_and_icc"),
    ("Security", "a 127.0.0.1-published port from a neighbour on the host's segment "
     "(moby/moby#45610; control first)", "test_firewall.py",
     "test_loopback_published_port_is_not_reachable_from_the_segment"),
    ("Security", "frames with another container's address, an unassigned address, a foreign "
     "MAC, and ARP poisoning (control first)", "test_spoofing.py",
     "test_spoofed_frames_are_dropped_on_the_bridge_port"),
    ("Security", "a container's neighbour advertisement, neighbour solicitation (also with "
     "the option behind a nonce) and router solicitation naming another container's MAC "
     "as its own: the host's entry for it not poisoned (control first)", "test_ipv6.py",
     "test_neighbour_discovery_names_only_the_senders_own_mac"),
    ("Security", "a container's neighbour advertisement cut into fragments, its option (or "
     "its target for another container's address) in the second: the host's entry not "
     "poisoned (control first)", "test_nd_guard.py",
     "test_a_fragmented_advertisement_poisons_nothing"),
    ("Security", "a container's router advertisement, and its neighbour advertisement for "
     "another container's address (also behind a destination options header), behind an "
     "IPsec Authentication Header, where nftables stops looking for ICMPv6: none reaches "
     "the port it was sent to, as a packet socket there sees (control first)",
     "test_nd_guard.py", "test_neighbour_discovery_behind_ah_is_dropped"),
    ("Security", "a container's neighbour advertisement for another container's address "
     "(to the host), or for the gateway's (to the other container), in two fragments, the "
     "first cut where its second destination options header begins (nftables finds no "
     "transport header in either): neither entry poisoned (control first); UDP behind "
     "such a header, its first fragment holding the headers up to UDP's, passes",
     "test_nd_guard.py",
     "test_a_first_fragment_cut_between_two_headers_hides_nothing"),
    ("Security", "UDP behind an Authentication Header from another container's or an "
     "unassigned address: dropped; from the container's own: passes (control first)",
     "test_nd_guard.py", "test_other_traffic_behind_ah_passes_from_its_own_address_only"),
    ("Security", "a router advertisement the host writes onto a dual-stack network's "
     "bridge: no route, no address and nothing at the container's eth0; after gc and after "
     "the daemon's start too (control first)", "test_host_routers.py",
     "test_the_hosts_router_advertisement_reaches_no_container"),
    ("Security", "a redirect the host writes onto the bridge: nothing at the container's "
     "eth0 (control first)", "test_host_routers.py",
     "test_the_hosts_redirect_reaches_no_container"),
    ("Security", "a router advertisement the host writes onto the bridge behind an "
     "Authentication Header: nothing at the container's eth0; UDP behind one arrives "
     "(control first)", "test_host_routers.py",
     "test_an_advertisement_behind_ah_reaches_no_container"),
    ("Security", "a router advertisement the host writes onto the bridge in a VLAN tag of "
     "VLAN 0: no route in the container (control first)", "test_host_routers.py",
     "test_a_vlan_tag_hides_no_advertisement"),
    ("Security", "internal network to the outside, even with a route added by hand",
     "test_firewall.py", "test_internal_network"),
    ("Security", "internal network to the host's other addresses, and to host services "
     "other than DNS on its own gateway (control first)",
     "test_firewall.py", "test_internal_network_reaches_no_other_host_address"),
    ("Security", "a container process tries to leave its network: enter the host's "
     "namespace (by name, by /proc/1), leave an internal network that way, mount, change "
     "its addresses, routes and MAC, see or signal host processes (control: --privileged "
     "does each)", "test_confinement.py", "test_a_container_cannot_leave_its_network"),
    ("Security", "capabilities: --cap-drop ALL --cap-add NET_ADMIN, --cap-drop "
     "NET_BIND_SERVICE, --user 65534 as the kernel shows them; foreground run confined "
     "too; bad names refused, nothing made", "test_confinement.py",
     "test_capabilities_and_user"),
    ("Security", "frames to 802.1 group addresses: an IPv6 router advertisement, spoofed "
     "UDP to a host address, DNS exfiltration from an internal network, ARP (control "
     "first)", "test_linklocal.py", "test_link_local_frames_do_not_reach_the_host"),
    ("Security", "a host on the uplink sends a DNS query under a container's address: not "
     "forwarded, not answered (control: with the network's source check emptied, it is)",
     "test_linklocal.py", "test_a_networks_addresses_come_only_from_its_bridge"),
    ("Security", "a container of a bridge network sends one UDP datagram carrying a "
     "VXLAN frame to its gateway and to the host's VTEP: nothing reaches the overlay "
     "network's container (control: with the input chain's rule deleted, both do)",
     "test_vxlan_injection.py", "test_a_container_cannot_inject_frames_into_an_overlay"),
    ("Security", "a container of a network without IPAM (its port unchecked) sends a host "
     "service a datagram from 127.0.0.2: not delivered (control: with the guard's rule "
     "deleted, it is)", "test_loopback_source.py", "test_a_container_never_sends_from_127"),
    ("Security", "forged ICMP errors naming another network's, and an icc=false "
     "neighbour's, tracked flow (control: `related` accepted first)", "test_firewall.py",
     "test_forged_icmp_errors_meet_isolation_and_icc"),
    ("Security", "the CLI and real Podman in one host namespace: each side started, "
     "restarted, gc'd and torn down in every order; the other's ports, isolation, "
     "internal network and DNS hold throughout (control: a one-sided rebuild breaks the "
     "other)", "test_shared_firewall.py", "test_two_portways_share_one_firewall"),
    ("Security", "a host process binds a published port afterwards (IPv4, IPv6): refused; "
     "bound while the daemon was down: `doctor` reports it shadowed (control: free once "
     "the container is gone)", "test_ports.py", "test_published_ports_are_held"),
    ("Security", "publishing on an address the host lacks, on a portway gateway, or "
     "64,512 ports at once: refused, nothing changed (control: a host address works)",
     "test_ports.py", "test_publish_only_on_the_hosts_own_addresses"),
    ("Load", "10,001 UDP ports published by one container, and removed",
     "test_ports.py", "test_a_large_range"),
    ("Security", "a state dir, socket or database that another user owns or can write, "
     "or reached through one: refused before anything is started",
     "test_state_dir.py", "test_state_dir_writable_by_others_is_refused"),
    ("Security", "the same, a state dir in a directory others can write",
     "test_state_dir.py", "test_state_dir_in_a_directory_others_can_write_is_refused"),
    ("Security", "the same, a symlink of another user on the way",
     "test_state_dir.py", "test_symlink_of_another_user_on_the_way_is_refused"),
    ("Security", "the same, a socket of another user", "test_state_dir.py",
     "test_socket_of_another_user_is_refused"),
    ("Security", "the same, a database of another user", "test_state_dir.py",
     "test_database_of_another_user_is_refused"),
    ("Security", "a fake daemon on the socket: obeyed only in a state dir of the caller's "
     "(control), never in one others can write", "test_state_dir.py",
     "test_fake_daemon_is_obeyed_only_in_a_state_dir_of_the_callers"),
    ("Security", "the state dir 0700, the database, WAL, logs and containers' output "
     "0600", "test_state_dir.py", "test_what_portway_creates_is_for_its_owner_alone"),
    ("Drift", "the host namespace deleted and made again under its name: the old daemon "
     "and DNS server leave, portway works in the new one", "test_stale_daemon.py",
     "test_daemon_leaves_with_its_deleted_host_namespace"),
    ("Drift", "the same with the daemon SIGKILLed first: the next daemon stops the orphaned "
     "DNS server", "test_stale_daemon.py",
     "test_new_daemon_stops_the_dns_server_of_a_deleted_namespace"),
    ("Drift", "a firewall rule edited in place (isolation's drop made an accept): `doctor` "
     "names the chain, `gc` restores it", "test_firewall.py",
     "test_a_rule_edited_in_place_is_drift"),
    ("Drift", "the kernel tier: a bridge whose address is there already is still brought "
     "up", "kernel/test_links.py",
     "test_ensure_bridge_finishes_when_the_address_is_there_already"),
    ("Drift", "the kernel tier: a half-undone veth pair is reused, not made again",
     "kernel/test_links.py", "test_ensure_endpoint_reuses_its_own_pair"),
    ("Security", "a TCP DNS client that asks and never reads (the loop used to block on "
     "it): other networks' lookups answered within a second; the client closed past 64 KiB",
     "test_dns_attacks.py", "test_a_tcp_client_that_never_reads_freezes_nobody"),
    ("Security", "64 slow TCP DNS connections from one container: 8 kept, closed after "
     "5 s idle; others' TCP lookups answered within a second", "test_dns_attacks.py",
     "test_slow_tcp_connections_lock_out_nobody"),
    ("Security", "3,000 unique names against a held upstream: the flooder holds its share "
     "(SERVFAIL beyond), another container's lookup is forwarded and answered",
     "test_dns_attacks.py", "test_a_flood_of_forwarded_names_starves_nobody"),
    ("Security", "enumerating another network's container names: answered exactly as "
     "unknown names (control: its own members see them)", "test_dns_attacks.py",
     "test_other_networks_names_cannot_be_told_from_unknown_ones"),
    ("Tests", "foreign namespaces, /etc/netns entries and processes (a lab, Podman's "
     "netns-<uuid>, another instance's pw-) survive the suite's clean-up",
     "test_suite_hygiene.py", "test_clean_up_leaves_what_is_not_the_tests_own"),
    ("Security", "DNS queries from outside portway's networks, and random bytes",
     "test_dns.py", "test_refuses_outsiders_and_survives_garbage"),
    ("Security", "`--network host` warns that isolation is off", "test_containers.py",
     "test_none_and_host_modes"),
    ("Load", "600 DNS queries queued from four sockets at once: each answered once, to the "
     "socket that asked, with the right address", "test_dns.py",
     "test_a_burst_from_several_sockets"),
    ("State store", "three writers open a new state file at once and are SIGKILLed "
     "mid-transaction: schema made once, integrity_check ok, every transaction whole",
     "test_store_integrity.py", "test_concurrent_writers_killed_mid_write"),
    ("State store", "corrupted state file: one clear line", "test_store_integrity.py",
     "test_corrupted_state_file"),
    ("State store", "newer schema version: one clear line", "test_store_integrity.py",
     "test_newer_schema"),
]


# What the tests above do not hold portway to, on purpose (docs/firewall.md has the rules).
BY_DESIGN = [
    "## By design",
    "",
    "- A container shares the host's file system (portway runs host commands, not "
    "images). As root, its default, a container's command can change host files and "
    "devices: that is a way out of any sandbox. Untrusted code belongs under `--user` "
    "with a uid that owns nothing; it then has no capabilities either.",
    "- Containers keep Docker's default capabilities, CAP_NET_RAW among them: they can "
    "write raw frames, which `bridge portway` polices (only their own MAC and address, "
    "only IPv4 and ARP, through the bridge).",
    "- `--privileged` gives every capability: such a container can enter the host's "
    "namespace and undo every rule above; portway warns, as for `--network host`.",
    "- Containers of ordinary (not internal) networks reach the host's services on "
    "every host address, as with Docker; a service meant only for the host listens on "
    "127.0.0.1, which containers never reach.",
    "- A container's command is the first process of its PID namespace: as in Docker, "
    "it gets only the signals it handles, so `portway stop` waits out its timeout for a "
    "command that ignores SIGTERM.",
    "",
]


def node(file: str, test: str) -> str:
    """A row's test: under tests/e2e, or under tests/ when the file names its tier."""
    return f"tests/{file}::{test}" if "/" in file else f"{E2E}/{file}::{test}"


def run_tests(xml: Path) -> int:
    nodes = sorted({node(file, test) for _, _, file, test in ROWS})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *nodes]
    return subprocess.run(cmd, cwd=ROOT).returncode


def results(xml: Path) -> dict[str, list[tuple[str, str, float]]]:
    """test function -> [(case, outcome, seconds)]"""
    out: dict[str, list[tuple[str, str, float]]] = {}
    for case in ET.parse(xml).iter("testcase"):
        name = case.get("name", "")
        base, _, param = name.partition("[")
        outcome = "held"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "**FAILED**"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        out.setdefault(base, []).append((param.rstrip("]"), outcome,
                                         float(case.get("time", "0"))))
    return out


def render(found: dict[str, list[tuple[str, str, float]]]) -> str:
    kernel = platform.release()
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Reliability and security: what was tried, and what held",
        "",
        "Generated by `make reliability` (scripts/reliability.py) from one run of the tests "
        "below; every one of them also runs in `make test`. Each runs against the real "
        "kernel inside throwaway host namespaces; each security test first shows the "
        "attack working with portway's protection removed (a control).",
        "",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Linux {kernel}, {nft}.",
        "",
        "| Area | What was tried | Test | Result | Time |",
        "|---|---|---|---|---|",
    ]
    held = total = 0
    for area, what, file, test in ROWS:
        for index, (param, outcome, seconds) in enumerate(
                found.get(test, [("", "not run", 0.0)])):
            total += 1
            held += outcome == "held"
            label = what if not param else f"{what}: `{param}`" if index == 0 \
                else f"the same, at `{param}`"
            lines.append(f"| {area} | {label} | `{file}::{test}` | {outcome} | "
                         f"{seconds:.1f} s |")
    lines += ["", f"{held} of {total} held.", "", *BY_DESIGN]
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "results.xml"
        code = run_tests(xml)
        if not xml.exists():
            print("reliability: pytest produced no results", file=sys.stderr)
            return code or 1
        text = render(results(xml))
    (ROOT / "docs" / "reliability.md").write_text(text)
    print(f"wrote docs/reliability.md (pytest exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
