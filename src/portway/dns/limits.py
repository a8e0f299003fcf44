"""What one DNS client may hold of the server's shared resources: pure arithmetic.

A client is a source address (a container's address on one network), of either
family, packed (4 or 16 bytes): a container with an IPv4 and an IPv6 address on a
network is two clients, as a container on two networks is. The server
shares two bounded things among all of them: the table of forwarded queries in
flight and the TCP connection slots. The rules here decide who gets a slot; the
server (server.py) applies them, and bounds what one TCP connection may hold.
Nothing here does I/O, so each rule is tested on its own
(tests/unit/test_dns_limits.py).

- Forwarded queries: at most MAX_FORWARDS in flight in all. One client address
  may hold at most FORWARDS_PER_CLIENT of them, and starts another only while it
  holds fewer than half of the room still free (FORWARDS_FLOOR while there is
  any): the fuller the table, the smaller each share, so a few clients together
  cannot take the last slots from everyone else either.
- TCP connections: at most TCP_PER_CLIENT per client address and MAX_TCP_CLIENTS
  in all. When every slot is taken, a newcomer takes one from the address that
  holds the most, if that address holds at least two more than the newcomer does
  (so it still holds as many as the newcomer afterwards): slots go to addresses
  that hold few, and two addresses never take a slot back and forth.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_FORWARDS = 2048  # forwarded queries in flight, all clients together
# A quarter of the table: one client's honest burst (a stub asking hundreds of names
# at once) still fits, and one flood leaves three quarters to the others.
FORWARDS_PER_CLIENT = 512
FORWARDS_FLOOR = 16  # a client's share never shrinks below this while there is room
TCP_PER_CLIENT = 8  # open TCP connections of one client address
MAX_TCP_CLIENTS = 256  # open TCP connections in all
TCP_OUTPUT_LIMIT = 64 << 10  # answers buffered for one TCP client that does not read them
TCP_IDLE = 5.0  # seconds a TCP client has to send a whole query (RFC 7766 §6.2.3)


def forward_share(total: int) -> int:
    """How many forwarded queries one client address may have in flight when `total`
    are in flight for all clients (its own included): it may start one more while it
    holds fewer than this."""
    free = MAX_FORWARDS - total
    if free <= 0:
        return 0
    return min(FORWARDS_PER_CLIENT, max(FORWARDS_FLOOR, free // 2))


def tcp_admit(held: Mapping[bytes, int], src: bytes, total: int) -> tuple[bool, bytes | None]:
    """Whether a new TCP connection from src is taken, given the connections each
    address holds (`held`) and `total` open in all; and, when a slot must be freed
    for it, the address one of whose connections is closed first (else None)."""
    own = held.get(src, 0)
    if own >= TCP_PER_CLIENT:
        return False, None
    if total < MAX_TCP_CLIENTS:
        return True, None
    heaviest = max(held, key=lambda address: held[address], default=None)
    if heaviest is not None and held[heaviest] >= own + 2:
        return True, heaviest
    return False, None
