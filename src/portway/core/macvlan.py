"""macvlan networks: what their options mean and how they are checked. Pure.

A macvlan network puts each container straight on a LAN: its interface is a macvlan
device of a parent interface of the host, with a MAC of its own, so the LAN sees it as
one more machine. portway makes no bridge, no firewall rule and no DNS for it (neither
do Docker's nor netavark's macvlan drivers: the traffic never passes the host's IP
stack), and the gateway is the LAN's router, not an address of the host.

Rules of this module:
1. A network keeps its parent and mode in its options under Docker's names, `parent`
   and `macvlan_mode`, whichever front end made it (Podman's network_interface and
   `mode` are copied there), so the driver reads one place.
2. Errors are worded as the front end's model words them: Docker's for the CLI,
   netavark's for portway-netavark (callers match them).
"""

from __future__ import annotations

from portway.errors import InvalidInput
from portway.model.types import Network

DRIVER = "macvlan"
PARENT_OPTION = "parent"
MODE_OPTION = "macvlan_mode"
MTU_OPTION = "com.docker.network.driver.mtu"
# The kernel's macvlan modes (netavark also takes source, which the kernel has).
MODES = ("bridge", "private", "vepa", "passthru", "source")
DOCKER_MODES = ("bridge", "private", "vepa", "passthru")
IPVLAN_MODES = ("l2", "l3", "l3s")
DEFAULT_MODE = "bridge"
# netavark's default-route metric for macvlan networks (below a bridge network's 100,
# so the LAN wins: containers/podman#23984).
DEFAULT_METRIC = 99
# The options of `portway network create -d macvlan` (Docker's).
CLI_OPTIONS = (PARENT_OPTION, MODE_OPTION, MTU_OPTION)
# netavark's option names of a macvlan or ipvlan network (VALID_VLAN_OPTS).
NETAVARK_OPTIONS = ("mode", "mtu", "metric", "no_default_route", "bclim")


def is_macvlan(network: Network) -> bool:
    return network.driver == DRIVER


def parent(network: Network) -> str:
    """The parent interface's name ("": the host's default-route interface, as netavark
    takes when a Podman network names none)."""
    return network.options.get(PARENT_OPTION, "")


def mode(network: Network) -> str:
    return network.options.get(MODE_OPTION) or DEFAULT_MODE


def check_cli_options(options: dict[str, str], internal: bool) -> dict[str, str]:
    """`network create -d macvlan -o ...`, checked as Docker checks them: a known option,
    a mode of Docker's, and a parent (Docker makes a dummy parent when none is given;
    this kernel has no dummy interfaces)."""
    unknown = sorted(k for k in options if k not in CLI_OPTIONS)
    if unknown:
        raise InvalidInput(f"unknown option {unknown[0]!r} for a macvlan network",
                           f"known options: {', '.join(CLI_OPTIONS)}")
    wanted = options.get(MODE_OPTION, DEFAULT_MODE)
    if wanted not in DOCKER_MODES:
        raise InvalidInput(f"requested macvlan mode '{wanted}' is not valid, 'bridge' mode "
                           "is the macvlan driver default",
                           f"give -o {MODE_OPTION}= one of {', '.join(DOCKER_MODES)}")
    if not options.get(PARENT_OPTION):
        raise InvalidInput("a macvlan network needs a parent interface"
                           + (" (an internal one too: Docker gives it a dummy one, which "
                              "this kernel cannot make)" if internal else ""),
                           "give -o parent=IF, the host interface on the LAN (ip link "
                           "shows them)")
    return {**options, MODE_OPTION: wanted}


def macvlan_mode(text: str | None) -> str:
    """netavark's get_macvlan_mode_from_string: none or "" is bridge."""
    if not text:
        return DEFAULT_MODE
    if text not in MODES:
        raise InvalidInput(f'invalid macvlan mode "{text}"',
                           f"give mode one of {', '.join(MODES)}")
    return text


def ipvlan_mode(text: str | None) -> str:
    """netavark's get_ipvlan_mode_from_string: none or "" is l2."""
    if not text:
        return "l2"
    if text not in IPVLAN_MODES:
        raise InvalidInput(f'invalid ipvlan mode "{text}"',
                           f"give mode one of {', '.join(IPVLAN_MODES)}")
    return text


NO_IPVLAN = ("this kernel has no ipvlan support (CONFIG_IPVLAN), so portway cannot make "
             "ipvlan interfaces", "use a macvlan network on the same parent "
             "(driver macvlan), or a kernel with ipvlan")
