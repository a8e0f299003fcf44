"""A stand-in upstream resolver for tests: answers every A query with one address.

Usage: python3 fake_dns.py LISTEN_ADDRESS ANSWER_ADDRESS [ANSWER_ADDRESS6] (run
inside the "outside" namespace). LISTEN_ADDRESS may be IPv6, link-local with its
interface too (fe80::53%eth0). With ANSWER_ADDRESS6, AAAA queries are answered
with it; other types get no records. It counts the queries it saw in the answer's
TTL, so a test can tell which upstream answered. A name under "tc." is answered
truncated (no records, TC) over UDP, and in full over TCP, on the same address.
"""

from __future__ import annotations

import select
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from portway.dns import mmsg, wire


class Answers:
    def __init__(self, answer: bytes, answer6: bytes | None) -> None:
        self.answer, self.answer6, self.seen = answer, answer6, 0

    def to(self, msg: bytes, tcp: bool) -> bytes | None:
        try:
            q = wire.parse_question(msg)
        except wire.FormErr:
            return None
        self.seen += 1
        if not tcp and q.name.startswith("tc."):
            out = bytearray(wire.response(q, wire.NOERROR, authoritative=False))
            out[2] |= wire.FLAG_TC >> 8
            return bytes(out)
        records = []
        if q.qtype == wire.QTYPE_A:
            records = [wire.a_record(self.answer, 1000 + self.seen)]
        elif q.qtype == wire.QTYPE_AAAA and self.answer6 is not None:
            records = [wire.aaaa_record(self.answer6, 1000 + self.seen)]
        return wire.response(q, wire.NOERROR, records, authoritative=False)


def serve_tcp(conn: socket.socket, answers: Answers) -> None:
    """One connection's queries, in turn, till it closes (blocking: a test's fake)."""
    conn.settimeout(2)
    with conn:
        try:
            while len(size := conn.recv(2, socket.MSG_WAITALL)) == 2:
                msg = conn.recv(int.from_bytes(size, "big"), socket.MSG_WAITALL)
                out = answers.to(msg, tcp=True)
                if out is not None:
                    conn.sendall(len(out).to_bytes(2, "big") + out)
        except OSError:
            pass


def main() -> None:
    answer = socket.inet_aton(sys.argv[2])
    answer6 = socket.inet_pton(socket.AF_INET6, sys.argv[3]) if len(sys.argv) > 3 else None
    answers = Answers(answer, answer6)
    # getaddrinfo: either family, and a link-local address's scope from its "%interface".
    family, _, _, _, address = socket.getaddrinfo(sys.argv[1], 53, type=socket.SOCK_DGRAM,
                                                  flags=socket.AI_NUMERICHOST)[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: room for bursts
    s.bind(address)
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(address)
    t.listen(16)
    batch = mmsg.Batch(family=family)  # what is queued, read and answered a call each way
    while True:
        ready, _, _ = select.select([s, t], [], [])
        if t in ready:
            serve_tcp(t.accept()[0], answers)
        if s not in ready:
            continue
        out = []
        for slot, (msg, _) in enumerate(batch.recv(s.fileno())):
            reply = answers.to(msg, tcp=False)
            if reply is not None:
                out.append((reply, slot))
        batch.send(s.fileno(), out)


if __name__ == "__main__":
    main()
