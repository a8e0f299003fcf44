"""A stand-in upstream resolver for tests: answers every A query with one address.

Usage: python3 fake_dns.py LISTEN_ADDRESS ANSWER_ADDRESS [ANSWER_ADDRESS6] (run
inside the "outside" namespace). LISTEN_ADDRESS may be IPv6, link-local with its
interface too (fe80::53%eth0). With ANSWER_ADDRESS6, AAAA queries are answered
with it; other types get no records. It counts the queries it saw in the answer's
TTL, so a test can tell which upstream answered.
"""

from __future__ import annotations

import select
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from portway.dns import mmsg, wire


def main() -> None:
    listen, answer = sys.argv[1], socket.inet_aton(sys.argv[2])
    answer6 = socket.inet_pton(socket.AF_INET6, sys.argv[3]) if len(sys.argv) > 3 else None
    # getaddrinfo: either family, and a link-local address's scope from its "%interface".
    family, _, _, _, address = socket.getaddrinfo(listen, 53, type=socket.SOCK_DGRAM,
                                                  flags=socket.AI_NUMERICHOST)[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: room for bursts
    s.bind(address)
    batch = mmsg.Batch(family=family)  # what is queued, read and answered a call each way
    seen = 0
    while True:
        select.select([s], [], [])
        out = []
        for slot, (msg, _) in enumerate(batch.recv(s.fileno())):
            try:
                q = wire.parse_question(msg)
            except wire.FormErr:
                continue
            seen += 1
            records = []
            if q.qtype == wire.QTYPE_A:
                records = [wire.a_record(answer, 1000 + seen)]
            elif q.qtype == wire.QTYPE_AAAA and answer6 is not None:
                records = [wire.aaaa_record(answer6, 1000 + seen)]
            out.append((wire.response(q, wire.NOERROR, records, authoritative=False), slot))
        batch.send(s.fileno(), out)


if __name__ == "__main__":
    main()
