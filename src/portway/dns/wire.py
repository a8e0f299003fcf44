"""DNS wire format, just what the server needs: parse one question, build answers.

Addresses are packed, as the kernel gives them: 4 bytes for IPv4, 16 for IPv6.

Pure and standard-library only. Parsing reads the header and the question and
nothing else (no compression in questions, as RFC 1035 queries never need it);
anything malformed raises FormErr, which the server answers with FORMERR when
it can read an id, and drops otherwise.
"""

from __future__ import annotations

import collections
import struct

QTYPE_A, QTYPE_PTR, QTYPE_AAAA, QTYPE_ANY = 1, 12, 28, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
HEADER = struct.Struct("!HHHHHH")
MAX_NAME = 255


class FormErr(Exception):
    def __init__(self, query_id: int | None) -> None:
        super().__init__("malformed query")
        self.query_id = query_id


TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        id: int
        flags: int
        name: str  # lower case, no trailing dot
        qtype: int
        qclass: int
        wire: bytes  # the question section as received (name, type, class)
else:
    # At run time collections' namedtuple: the same tuple, without importing typing.
    _Fields = collections.namedtuple("_Fields", "id flags name qtype qclass wire")


class Question(_Fields):
    """One query's header and question: a tuple, built for every query, so cheap."""

    __slots__ = ()

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def parse_question(msg: bytes) -> Question:
    if len(msg) < HEADER.size:
        raise FormErr(None)
    qid, flags, qdcount, ancount, nscount, _arcount = HEADER.unpack_from(msg)
    if flags & FLAG_QR or qdcount != 1 or ancount or nscount:
        raise FormErr(qid)
    pos = HEADER.size
    labels: list[bytes] = []
    total = 0
    while True:
        if pos >= len(msg):
            raise FormErr(qid)
        length = msg[pos]
        if length & 0xC0:  # compression or reserved label types have no place here
            raise FormErr(qid)
        pos += 1
        if length == 0:
            break
        if pos + length > len(msg):
            raise FormErr(qid)
        total += length + 1
        if total > MAX_NAME:
            raise FormErr(qid)
        labels.append(msg[pos:pos + length])
        pos += length
    if pos + 4 > len(msg):
        raise FormErr(qid)
    qtype, qclass = struct.unpack_from("!HH", msg, pos)
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        name = b".".join(labels).decode("latin-1").lower()
    return Question(qid, flags, name, qtype, qclass, msg[HEADER.size:pos + 4])


def response(q: Question, rcode: int, answers: list[bytes] = (),  # type: ignore[assignment]
             authoritative: bool = True) -> bytes:
    flags = FLAG_QR | (q.flags & (0x7800 | FLAG_RD)) | FLAG_RA | rcode
    if authoritative:
        flags |= FLAG_AA
    return HEADER.pack(q.id, flags, 1, len(answers), 0, 0) + q.wire + b"".join(answers)


def error_response(query_id: int, rcode: int) -> bytes:
    """An answer to a query whose question could not be read."""
    return HEADER.pack(query_id, FLAG_QR | FLAG_RA | rcode, 0, 0, 0, 0)


def a_record(packed_ipv4: bytes, ttl: int) -> bytes:
    # Name: a pointer to the question's name at offset 12.
    return struct.pack("!HHHIH", 0xC00C, QTYPE_A, CLASS_IN, ttl, 4) + packed_ipv4


def aaaa_record(packed_ipv6: bytes, ttl: int) -> bytes:
    return struct.pack("!HHHIH", 0xC00C, QTYPE_AAAA, CLASS_IN, ttl, 16) + packed_ipv6


def address_record(packed: bytes, ttl: int) -> bytes:
    """An A record for a 4-byte address, AAAA for a 16-byte one."""
    return a_record(packed, ttl) if len(packed) == 4 else aaaa_record(packed, ttl)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.split("."):
        raw = label.encode("ascii", "replace")[:63]
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def ptr_record(target: str, ttl: int) -> bytes:
    rdata = encode_name(target)
    return struct.pack("!HHHIH", 0xC00C, QTYPE_PTR, CLASS_IN, ttl, len(rdata)) + rdata


_NIBBLES = frozenset("0123456789abcdef")


def ptr_address(name: str) -> bytes | None:
    """The packed address a reverse name stands for: 4 bytes for d.c.b.a.in-addr.arpa,
    16 for the 32 nibbles of an ip6.arpa name (RFC 3596 §2.5); None for any other
    name, a shorter one (a zone, not an address) included. name is lower case, as
    parse_question gives it."""
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        # isdecimal, not isdigit: "²" is a digit that int() refuses.
        if len(parts) != 4 or not all(p.isdecimal() and int(p) < 256 for p in parts):
            return None
        return bytes(int(p) for p in reversed(parts))
    if name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in _NIBBLES for n in nibbles):
            return None
        return bytes.fromhex("".join(reversed(nibbles)))
    return None


def reverse_name(packed: bytes) -> str:
    """The reverse name of a packed address (the inverse of ptr_address)."""
    if len(packed) == 4:
        return ".".join(str(b) for b in reversed(packed)) + ".in-addr.arpa"
    return ".".join(reversed(packed.hex())) + ".ip6.arpa"

