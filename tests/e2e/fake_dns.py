"""A stand-in upstream resolver for tests: answers every A query with one address.

Usage: python3 fake_dns.py LISTEN_ADDRESS ANSWER_ADDRESS (run inside the "outside"
namespace). It counts the queries it saw in the answer's TTL, so a test can tell
which upstream answered.
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
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: room for bursts
    s.bind((listen, 53))
    batch = mmsg.Batch()  # what is queued, read and answered a system call each way
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
            records = [wire.a_record(answer, 1000 + seen)] if q.qtype == wire.QTYPE_A else []
            out.append((wire.response(q, wire.NOERROR, records, authoritative=False), slot))
        batch.send(s.fileno(), out)


if __name__ == "__main__":
    main()
