"""Networks: create (validated, a subnet picked that collides with nothing), install
(the row, the driver's segment and the firewall's part: all or nothing), remove.

The default network is called `bridge`, as Docker's, and is made on first use. `host`
and `none` are pseudo-networks, as in Docker: listed and inspected, never made or
removed (a container in those modes has no endpoint).

Rule of this module: the store row is written in the same transaction as the kernel
work and commits only after it; every kernel step registers its undo before it runs.
"""

from __future__ import annotations

import secrets
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING

from portway.core import ipam, listing, macvlan, names, overlay, runopts, validate
from portway.core.overlay import NO_CLUSTER
from portway.engine.context import fault_point, now
from portway.errors import Conflict, InvalidInput
from portway.model.types import IPNetwork, Network, Subnet

if TYPE_CHECKING:
    from portway.engine.cluster import Cluster
    from portway.engine.context import Host

DEFAULT_NETWORK = "bridge"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
# The pseudo-networks, by name: their driver (Docker's names).
PSEUDO_NETWORKS = {"host": "host", "none": "null"}


class Networks:
    def __init__(self, host: Host) -> None:
        self.h = host

    def taken_ranges(self) -> list[tuple[IPNetwork, str]]:
        """Subnets a new network must not overlap: portway's networks, and the host's
        addresses and routes (except the routes of portway's own bridges)."""
        nets = self.h.store.networks()
        taken: list[tuple[IPNetwork, str]] = [(s.subnet, f"network {n.name}")
                                              for n in nets for s in n.subnets]
        return taken + self.h.facts.taken_ranges({n.bridge for n in nets})

    def create(self, name: str, driver: str = "bridge",
               subnet: str | list[str] | None = None,
               gateway: str | list[str] | None = None,
               ip_range: str | list[str] | None = None,
               internal: bool = False, mtu: int | str | None = None,
               options: list[str] | None = None, labels: list[str] | None = None,
               ipv6: bool | None = None, ipv4: bool | str | None = None,
               aux_addresses: list[str] | None = None) -> Network:
        """A network of either family or both: Docker's flags (--subnet, --gateway,
        --ip-range and --aux-address repeatable and matched by family, --ipv6,
        --ipv4=false; ipv6 or ipv4 None: not given, so -o com.docker.network.enable_ipv6
        or enable_ipv4 decides, as in Docker). A family without a subnet given gets a
        free one: IPv4 from Docker's pools, IPv6 a /64 of the installation's unique local
        /48. The bridge is named pwbr-<id>, or as -o com.docker.network.bridge.name says
        (a name no link of the host has); either way it carries the network's owner tag,
        by which it is found and removed."""
        if driver not in self.h.drivers:
            raise InvalidInput(f"unsupported network driver {driver!r}",
                               f"use one of: {', '.join(sorted(self.h.drivers))} "
                               "(bridge is the default)")
        given = validate.parse_key_values("--opt", options or [])
        v4, v6, family_opts = validate.network_families(ipv4, ipv6, given)
        for key in validate.FAMILY_OPTIONS.values():  # for any driver, as Docker's
            given.pop(key, None)
        plan = validate.plan_subnets(_listed(subnet), _listed(gateway), _listed(ip_range),
                                     v4, v6, _listed(aux_addresses))
        lan = driver == macvlan.DRIVER
        # Docker's overlay driver takes the VNI as an option: claimed with the network.
        if overlay.VNI_OPTION in given and driver != "overlay":
            raise InvalidInput(f"option {overlay.VNI_OPTION} is for overlay networks",
                               "drop it, or add --driver overlay")
        vni = given.pop(overlay.VNI_OPTION, None)
        if vni is not None:
            vni = str(overlay.parse_vni(vni))
        opts = macvlan.check_cli_options(given, internal) if lan else \
            validate.check_options(given)
        opts = {**opts, **family_opts}
        if not lan:
            validate.check_host_binding_family(opts, {w.version for w in plan}, name)
        labs = dict(runopts.parse_labels(labels or []))  # a bare KEY: empty, as Docker
        if mtu is None and "com.docker.network.driver.mtu" in opts:
            mtu = opts["com.docker.network.driver.mtu"]
        elif mtu is not None and "com.docker.network.driver.mtu" in opts and \
                validate.parse_mtu(mtu) != validate.parse_mtu(
                    opts["com.docker.network.driver.mtu"]):
            # One would win silently, and inspect would show the other in Options.
            raise InvalidInput(
                f"--mtu {mtu} and -o com.docker.network.driver.mtu="
                f"{opts['com.docker.network.driver.mtu']} disagree",
                "give the MTU once, either way")
        # A macvlan device takes its parent's MTU unless told (0), and cannot exceed it.
        mtu_value = validate.parse_mtu(mtu) if mtu is not None else 0 if lan else 1500
        h = self.h
        if driver == "overlay":
            mtu_value = self.overlay_mtu(mtu_value if mtu is not None else None)
        validate.check_mtu_families(mtu_value, {w.version for w in plan})
        with h.lock:
            if h.store.name_taken("networks", name):
                raise Conflict(f"network {name!r} already exists",
                               f"choose another name or remove it with "
                               f"'portway network rm {name}'")
            bridge = opts.get(BRIDGE_NAME_OPTION)
            if bridge is not None:
                self.check_bridge_name(bridge)
            if lan:
                self.check_parent_free(opts[macvlan.PARENT_OPTION])
            taken = self.taken_ranges()
            # A macvlan network's subnet is its LAN's, which the host is usually on
            # itself: only portway's own networks' subnets are in its way.
            mine = [(s.subnet, f"network {n.name}") for n in h.store.networks()
                    for s in n.subnets] if lan else taken
            subnets = []
            for want in plan:
                if want.subnet is None and want.version == 4 and driver != "overlay":
                    net_addr = ipam.pick_subnet(taken, ipam.DEFAULT_POOLS) \
                        if name == DEFAULT_NETWORK or h.store.find_network(DEFAULT_NETWORK) \
                        else ipam.pick_user_subnet(taken)
                elif want.subnet is None:
                    pools = ipam.OVERLAY_POOLS if driver == "overlay" else ipam.DEFAULT_POOLS
                    net_addr = ipam.pick_subnet(taken, pools) if want.version == 4 else \
                        ipam.pick_subnet6(taken, self.ula_global_id())
                else:
                    net_addr = want.subnet
                    ipam.check_subnet_free(net_addr, mine)
                taken.append((net_addr, f"network {name} itself"))
                subnets.append(Subnet(subnet=net_addr,
                                      gateway=want.gateway or ipam.default_gateway(net_addr),
                                      ip_range=want.ip_range,
                                      aux_addresses=want.aux_addresses))
            network_id = names.new_id()
            network = Network(id=network_id, name=name, subnets=tuple(subnets),
                              bridge=bridge or names.bridge_name(network_id), driver=driver,
                              internal=internal, mtu=mtu_value, options=opts, labels=labs,
                              created=now())
            if driver == "overlay":
                h.driver(network).validate(replace(network, options={
                    **network.options, overlay.VNI_OPTION: "0"}))
                # Claimed for every host first (name and VNI, one etcd transaction);
                # taken back if it cannot be made here.
                network = self.cluster().create_network(
                    network, int(vni) if vni is not None else None)
                try:
                    self.install(network)
                except BaseException:
                    self.cluster().remove_network(network)
                    raise
                h.containers.publish_dns()
                return network
            h.driver(network).validate(network)
            self.install(network)
            h.containers.publish_dns()
            return network

    def cluster(self) -> Cluster:
        if self.h.cluster is None:
            raise InvalidInput(*NO_CLUSTER)
        return self.h.cluster

    def overlay_mtu(self, asked: int | None) -> int:
        """An overlay network's MTU: the underlay's less VXLAN's 50 bytes (70 between
        IPv6 VTEPs), or less if asked (more would not fit the underlay)."""
        cluster = self.cluster()
        version = cluster.advertise.version
        limit = overlay.vxlan_mtu(cluster.underlay_mtu(), version)
        if asked is not None and asked > limit:
            over = " over IPv6" if version == 6 else ""
            raise InvalidInput(f"--mtu {asked} does not fit the underlay: an overlay network "
                               f"carries at most {limit} (the underlay's MTU less "
                               f"{overlay.vxlan_overhead(version)} bytes of VXLAN{over})",
                               f"give --mtu {limit} or less, or omit it")
        return asked if asked is not None else limit

    def uninstall(self, network: Network) -> None:
        """A network gone from this host (an overlay network another host removed): its
        row, its firewall part and its segment."""
        h = self.h
        with h.store.transaction():
            h.store.delete_network(network.id)
            h.fw.remove_network(network)
            h.driver(network).delete(network)
        if not h.store.networks():
            h.fw.release()

    def check_parent_free(self, parent: str) -> None:
        """One macvlan network per parent interface, as Docker allows (a second one's
        containers would share the first one's LAN under another subnet: give it a VLAN
        interface of its own)."""
        other = next((n for n in self.h.store.networks()
                      if macvlan.is_macvlan(n) and macvlan.parent(n) == parent), None)
        if other is not None:
            raise Conflict(f"network {other.name} is already using parent interface "
                           f"{parent}", f"connect containers to {other.name}, or give the "
                           "new network another parent (a VLAN interface of it, e.g.)")

    def check_bridge_name(self, bridge: str) -> None:
        """A bridge name the user chose: no other network's, no link's of the host (an
        existing link would be taken over, and removed with the network)."""
        other = next((n for n in self.h.store.networks() if n.bridge == bridge), None)
        if other is not None:
            raise Conflict(f"bridge name {bridge!r} is taken by network {other.name}",
                           "choose another com.docker.network.bridge.name")
        if self.h.facts.link_exists(bridge):
            raise Conflict(f"bridge name {bridge!r} is taken: the host has a link of that "
                           "name", "choose another com.docker.network.bridge.name (ip link "
                           "shows the host's links)")

    def ula_global_id(self) -> int:
        """The installation's random 40-bit ULA global id, made once (RFC 4193)."""
        store = self.h.store
        with store.transaction():
            value = store.get_meta("ula_global_id")
            if value is None:
                value = str(secrets.randbits(40))
                store.set_meta("ula_global_id", value)
        return int(value)

    def install(self, network: Network) -> None:
        """The row, the driver's segment and the firewall's part of a validated network:
        all or nothing."""
        h = self.h
        driver = h.driver(network)
        with h.store.transaction(), ExitStack() as undo:
            h.store.add_network(network)
            undo.callback(driver.delete, network)
            driver.ensure(network)
            fault_point("network_create.bridge")
            undo.callback(h.fw.remove_network, network)
            h.fw.add_network(network)
            fault_point("network_create.firewall")
            undo.pop_all()

    def remove(self, refs: list[str]) -> list[str]:
        h = self.h
        for ref in refs:
            if ref in PSEUDO_NETWORKS:
                raise InvalidInput(f"{ref} is a pre-defined network and cannot be removed",
                                   f"it stands for --network {ref}; remove only networks "
                                   "made with 'portway network create'")
        with h.lock:
            nets = [h.network(r) for r in refs]
            for net in nets:
                # Only running containers hold it: a stopped one has no endpoint (its
                # configuration still names the network, and its start says it is gone).
                users = h.store.endpoints(network_id=net.id)
                if users:
                    who = ", ".join(sorted(h.container(e.container_id).name for e in users))
                    raise Conflict(f"network {net.name} has running containers attached: "
                                   f"{who}", f"stop or remove them first (portway stop "
                                   f"{who.split(',')[0]}), or disconnect them")
            removed = []
            for net in nets:
                if net.driver == "overlay":
                    # Gone for every host first (refused while another host has
                    # containers on it); the others remove theirs as they see it.
                    self.cluster().remove_network(net)
                with h.store.transaction():
                    h.store.delete_network(net.id)
                    fault_point("network_rm.row")
                    h.fw.remove_network(net)
                    h.driver(net).delete(net)
                removed.append(net.name)
            if not h.store.networks():
                # The shared tables go with the last network of every portway here.
                h.fw.release()
            h.containers.publish_dns()
            if h.cluster is not None:
                h.cluster.retry_not_made()
            return removed

    def prune(self, filters: list[str] | None = None) -> list[str]:
        """The networks no container uses: none is attached, and none that is stopped is
        configured to be (Docker prunes those too, and their start then fails: a known
        complaint, so portway keeps them); an overlay network, none on another host
        either. filters: Docker's until=, label= and label!= (all must hold)."""
        h = self.h
        try:
            wanted = listing.parse_filters(filters or [], listing.PRUNE_FILTERS)
        except listing.ListingError as exc:
            raise InvalidInput(exc.message, exc.hint) from None
        moment = time.time()
        with h.lock:
            unused = [n.name for n in h.store.networks()
                      if n.name != DEFAULT_NETWORK and not h.store.endpoints(network_id=n.id)
                      and not h.store.configs(network_id=n.id)
                      and not self.used_elsewhere(n)
                      and listing.prune_selects({"Created": n.created, "Labels": n.labels},
                                                wanted, moment)]
            return self.remove(unused) if unused else []

    def used_elsewhere(self, network: Network) -> bool:
        """An overlay network that another host's containers are on (as this host's view
        of the cluster has it): in use, though not here."""
        cluster = self.h.cluster
        return network.driver == "overlay" and cluster is not None and \
            bool(cluster.remote_endpoints(network.id))

    def resolve(self, ref: str) -> Network:
        """The network a container is to join: ref's, or the default one (made now if
        it is not there yet) for `bridge`."""
        if ref in PSEUDO_NETWORKS:
            raise InvalidInput(f"a container cannot be connected to network {ref}",
                               f"run it with --network {ref} alone")
        if ref == DEFAULT_NETWORK:
            return self.default()
        return self.h.network(ref)

    def default(self) -> Network:
        net = self.h.store.find_network(DEFAULT_NETWORK)
        if net is None:
            net = self.create(DEFAULT_NETWORK)
        return net


def _listed(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)

