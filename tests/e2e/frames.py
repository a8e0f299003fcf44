"""Hand-made Ethernet frames, sent from inside a container by the spoofing tests.

    python3 frames.py udp IFNAME SRC_MAC SRC_IP DST_MAC DST_IP PORT PAYLOAD
    python3 frames.py dns IFNAME SRC_MAC SRC_IP DST_MAC DST_IP NAME
    python3 frames.py arp IFNAME SRC_MAC SENDER_IP TARGET_IP [DST_MAC]
    python3 frames.py ra IFNAME SRC_MAC DST_MAC PREFIX [vlan0]
    python3 frames.py udp6 IFNAME SRC_MAC SRC_IP DST_MAC DST_IP PORT PAYLOAD [fragopts]
    python3 frames.py na IFNAME SRC_MAC SRC_IP DST_MAC DST_IP TARGET LLADDR [dstopt|fragN|fragopts]
    python3 frames.py ns IFNAME SRC_MAC SRC_IP DST_MAC DST_IP TARGET LLADDR [nonce]
    python3 frames.py rs IFNAME SRC_MAC SRC_IP DST_MAC DST_IP LLADDR
    python3 frames.py redirect IFNAME SRC_MAC SRC_IP DST_MAC DST_IP TARGET DESTINATION
    python3 frames.py redirect4 IFNAME SRC_MAC SRC_IP DST_MAC DST_IP TARGET DESTINATION
    python3 frames.py vxlan VTEP VNI SRC_MAC SRC_IP DST_MAC DST_IP PORT PAYLOAD
    python3 frames.py ah IFNAME SRC_MAC SRC_IP DST_MAC DST_IP SPI ra PREFIX
    python3 frames.py ah IFNAME SRC_MAC SRC_IP DST_MAC DST_IP SPI na|dstopt-na TARGET LLADDR
    python3 frames.py ah IFNAME SRC_MAC SRC_IP DST_MAC DST_IP SPI udp PORT PAYLOAD
    python3 frames.py sniff IFNAME SECONDS SPI
    python3 frames.py sniff6 IFNAME SECONDS TYPE

`udp` sends one UDP datagram with whatever source MAC and address it is given;
`dns` the same, carrying a DNS query for NAME to port 53; `arp` sends an ARP
request claiming SENDER_IP is at SRC_MAC (broadcast, or to DST_MAC); `ra` an IPv6
router advertisement from the link-local address of SRC_MAC, offering PREFIX (a
/64) for address autoconfiguration and itself as default router (with `vlan0`, in a VLAN
tag of VLAN 0: priority only); `udp6` a UDP
datagram over IPv6 from any source; `na` a neighbour advertisement saying TARGET is at
LLADDR (with `dstopt`, behind a destination options header; with `fragN`, in two
fragments, the first with the message's first N bytes; with `fragopts`, behind two
destination options headers, in two fragments, the first ending where the second header
begins; `udp6` with `fragopts`: behind one, in two fragments, the first with the headers
up to UDP's); `ns` a neighbour solicitation
for TARGET, and `rs` a router solicitation, each saying its sender is at LLADDR (with
`nonce`, a nonce option comes first); `redirect` a redirect saying TARGET is the
better first hop to DESTINATION (`redirect4`: an IPv4 ICMP redirect for hosts, about an
echo reply DST_IP sent to DESTINATION, which the kernel hands to routing). A packet
socket writes the frame as is, so nothing in the container's stack corrects it. `vxlan`
wraps a `udp` frame in a VXLAN header with VNI and sends it to VTEP's port 4789 over an
ordinary UDP socket of VTEP's family (no privilege needed).

`ah` sends an IPv6 packet from SRC_IP whose IPv6 header is followed by an IPsec
Authentication Header (RFC 4302: next header 51) with SPI and an ICV of zeros (no
security association makes it valid), and behind it a router advertisement offering
PREFIX, a neighbour advertisement (`dstopt-na`: behind a destination options header
too) or a UDP datagram, hop limit 255. `sniff` prints `ready` once it listens on
IFNAME, then `ah SPI NEXT_HEADER` for each IPv6 frame IFNAME receives with an AH right
after the IPv6 header, until it sees SPI or SECONDS have passed; `sniff6` the same,
printing `icmpv6 TYPE` for an ICMPv6 message of that type right after the IPv6 header.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, port: int,
              payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload  # no checksum
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + header + udp


def redirect4_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, target: str,
                    destination: str) -> bytes:
    """An IPv4 ICMP redirect for hosts (type 5, code 1): TARGET is the better first hop
    to DESTINATION, quoting an echo reply DST_IP sent there (the kernel hands a redirect
    about one to routing; about an echo request, to its ping socket alone)."""
    def ip4(proto: int, src: str, dst: str, payload: bytes) -> bytes:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto,
                             0, socket.inet_aton(src), socket.inet_aton(dst))
        return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload

    quoted = ip4(1, dst_ip, destination, struct.pack("!BBHHH", 0, 0, 0, 1, 1))
    icmp = struct.pack("!BBH4s", 5, 1, 0, socket.inet_aton(target)) + quoted
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip4(1, src_ip, dst_ip, icmp)


def arp_frame(src_mac: str, sender_ip: str, target_ip: str,
              dst_mac: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(src_mac),
                      socket.inet_aton(sender_ip), b"\0" * 6, socket.inet_aton(target_ip))
    return mac(dst_mac) + mac(src_mac) + b"\x08\x06" + arp


def dns_query(name: str) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", 1, 1)


def link_local(src_mac: str) -> bytes:
    """fe80::/64 with the modified EUI-64 of the MAC."""
    raw = bytearray(mac(src_mac))
    raw[0] ^= 0x02
    return b"\xfe\x80" + b"\0" * 6 + bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])


def ra_body(src_mac: str, prefix: str) -> bytes:
    """A router advertisement (its checksum left 0): router lifetime 1800 s; a prefix
    option (type 3): /64, on-link and autonomous, valid and preferred for an hour; the
    source link-layer address (type 1)."""
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    body += struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 3600, 3600, 0,
                        socket.inet_pton(socket.AF_INET6, prefix.split("/")[0]))
    return body + struct.pack("!BB6s", 1, 1, mac(src_mac))


def ra_frame(src_mac: str, dst_mac: str, prefix: str) -> bytes:
    src, dst = link_local(src_mac), socket.inet_pton(socket.AF_INET6, "ff02::1")
    body = ra_body(src_mac, prefix)
    pseudo = src + dst + struct.pack("!IxxxB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 255, src, dst)
    return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + body


def udp6_frames(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, port: int,
                payload: bytes, how: str = "") -> list[bytes]:
    """A UDP datagram over IPv6; with `fragopts`, behind a destination options header, in
    two fragments, the first with the headers up to UDP's (as RFC 8200 wants)."""
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src_ip, dst_ip))
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    pseudo = src + dst + struct.pack("!IxxxB", len(udp), 17)
    padded = udp + b"\0" * (len(udp) % 2)
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + padded) or 0xFFFF) + udp[8:]

    def frame(next_header: int, packet: bytes) -> bytes:
        header = struct.pack("!IHBB16s16s", 6 << 28, len(packet), next_header, 64, src, dst)
        return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + packet

    if how == "fragopts":
        ident, options = os.getpid(), struct.pack("!BBBB4x", 17, 0, 1, 4)
        return [frame(44, struct.pack("!BBHI", 60, 0, 1, ident) + options + udp[:8]),
                frame(44, struct.pack("!BBHI", 60, 0, 16, ident) + udp[8:])]
    return [frame(17, udp)]


def na_body(target: str, lladdr: str) -> bytes:
    """An unsolicited neighbour advertisement (override set): TARGET is at LLADDR."""
    body = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000,
                       socket.inet_pton(socket.AF_INET6, target))
    body += struct.pack("!BB6s", 2, 1, mac(lladdr))  # target link-layer address option
    return body


def ns_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, target: str,
             lladdr: str, nonce: bool = False) -> bytes:
    """A neighbour solicitation for TARGET from SRC_IP, which it says is at LLADDR."""
    body = struct.pack("!BBHI16s", 135, 0, 0, 0, socket.inet_pton(socket.AF_INET6, target))
    if nonce:
        body += struct.pack("!BB6s", 14, 1, b"\x01\x02\x03\x04\x05\x06")
    body += struct.pack("!BB6s", 1, 1, mac(lladdr))  # source link-layer address option
    return icmp6_frame(src_mac, src_ip, dst_mac, dst_ip, body)


def rs_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, lladdr: str) -> bytes:
    """A router solicitation from SRC_IP, which it says is at LLADDR."""
    body = struct.pack("!BBHI", 133, 0, 0, 0) + struct.pack("!BB6s", 1, 1, mac(lladdr))
    return icmp6_frame(src_mac, src_ip, dst_mac, dst_ip, body)


def redirect_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, target: str,
                   destination: str) -> bytes:
    """A redirect (RFC 4861 4.5): TARGET is the better first hop to DESTINATION."""
    body = struct.pack("!BBHI16s16s", 137, 0, 0, 0, socket.inet_pton(socket.AF_INET6, target),
                       socket.inet_pton(socket.AF_INET6, destination))
    return icmp6_frame(src_mac, src_ip, dst_mac, dst_ip, body)


def na_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, target: str,
             lladdr: str) -> bytes:
    return icmp6_frame(src_mac, src_ip, dst_mac, dst_ip, na_body(target, lladdr))


def icmp6_frames(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, body: bytes,
                 how: str) -> list[bytes]:
    """An ICMPv6 message behind an extension header: a destination options header
    (`dstopt`, one PadN option), or a fragment header (`fragN`: the message cut in two
    after its first N bytes, a multiple of 8), each with hop limit 255."""
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src_ip, dst_ip))
    pseudo = src + dst + struct.pack("!IxxxB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]

    def frame(next_header: int, payload: bytes) -> bytes:
        header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 255, src,
                             dst)
        return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + payload

    if how == "dstopt":
        return [frame(60, struct.pack("!BBBB4x", 58, 0, 1, 4) + body)]
    ident = os.getpid()
    if how == "fragopts":
        return fragments_behind_options(frame, 58, body, ident)
    cut = int(how.removeprefix("frag"))
    return [frame(44, struct.pack("!BBHI", 58, 0, 1, ident) + body[:cut]),  # more follow
            frame(44, struct.pack("!BBHI", 58, 0, cut, ident) + body[cut:])]


def fragments_behind_options(frame: Callable[[int, bytes], bytes], proto: int,
                             message: bytes, ident: int) -> list[bytes]:
    """A message (of protocol proto) behind two destination options headers, in two
    fragments: the first ends where the second header begins, so that its chain of
    headers stops short of the message; the second holds that header and the message."""
    return [frame(44, struct.pack("!BBHI", 60, 0, 1, ident) +  # more follow
                  struct.pack("!BBBB4x", 60, 0, 1, 4)),
            frame(44, struct.pack("!BBHI", 60, 0, 8, ident) +
                  struct.pack("!BBBB4x", proto, 0, 1, 4) + message)]


def icmp6_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, body: bytes) -> bytes:
    """An ICMPv6 message (its checksum filled in) with hop limit 255, as neighbour
    discovery must have."""
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src_ip, dst_ip))
    pseudo = src + dst + struct.pack("!IxxxB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 255, src, dst)
    return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + body


def ah_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, spi: int, inner: str,
             args: list[str]) -> bytes:
    """An IPv6 packet with an Authentication Header first, the message inner names (with
    args) behind it: its checksum is the message's own (the pseudo-header names the
    message's protocol, not AH)."""
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src_ip, dst_ip))
    if inner == "ra":
        proto, body, at = 58, ra_body(src_mac, args[0]), 2
    elif inner in ("na", "dstopt-na"):
        proto, body, at = 58, na_body(args[0], args[1]), 2
    else:
        payload = args[1].encode()
        proto, body, at = 17, struct.pack("!HHHH", 40000, int(args[0]), 8 + len(payload),
                                          0) + payload, 6
    pseudo = src + dst + struct.pack("!IxxxB", len(body), proto)
    padded = body + b"\0" * (len(body) % 2)
    body = body[:at] + struct.pack("!H", checksum(pseudo + padded) or 0xFFFF) + body[at + 2:]
    if inner == "dstopt-na":
        proto, body = 60, struct.pack("!BBBB4x", 58, 0, 1, 4) + body
    # Next header, length in 4-byte units less 2 (24 bytes: a multiple of 8, as IPv6
    # wants), reserved, SPI, sequence number, a 96-bit ICV (HMAC-SHA1-96's size).
    body = struct.pack("!BBHII12x", proto, 24 // 4 - 2, 0, spi, 1) + body
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), 51, 255, src, dst)
    return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + body


def sniff(ifname: str, seconds: float, spi: int, icmp6: bool = False) -> None:
    """Print what arrives at ifname: AH packets (their SPI and next header), or with
    icmp6, ICMPv6 messages (spi: their type)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD)) as s:
        s.bind((ifname, 0x86DD))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, where = s.recvfrom(65535)
            except TimeoutError:
                return
            if where[0] != ifname or where[2] == socket.PACKET_OUTGOING:
                continue
            if icmp6:
                if len(data) > 54 and data[20] == 58 and data[54] == spi:
                    print(f"icmpv6 {spi}", flush=True)
                    return
                continue
            if len(data) < 62 or data[20] != 51:
                continue  # (14 bytes of Ethernet header, the next header 6 into IPv6's)
            seen = int.from_bytes(data[58:62], "big")
            print(f"ah {seen} {data[54]}", flush=True)
            if seen == spi:
                return


def main(argv: list[str]) -> None:
    kind, ifname = argv[0], argv[1]
    frames: list[bytes] = []
    if kind == "vxlan":
        inner = udp_frame(argv[3], argv[4], argv[5], argv[6], int(argv[7]), argv[8].encode())
        header = struct.pack("!II", 0x08000000, int(argv[2]) << 8)  # flags: the VNI is valid
        family = socket.AF_INET6 if ":" in ifname else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.sendto(header + inner, (ifname, 4789))
        return
    if kind in ("sniff", "sniff6"):
        sniff(argv[1], float(argv[2]), int(argv[3]), kind == "sniff6")
        return
    if kind == "ah":
        frame = ah_frame(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7], argv[8:])
    elif kind == "udp":
        frame = udp_frame(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7].encode())
    elif kind == "dns":
        frame = udp_frame(argv[2], argv[3], argv[4], argv[5], 53, dns_query(argv[6]))
    elif kind == "ra":
        frame = ra_frame(argv[2], argv[3], argv[4])
        if argv[5:6] == ["vlan0"]:
            frame = frame[:12] + b"\x81\x00\x00\x00" + frame[12:]
    elif kind == "udp6":
        frames = udp6_frames(argv[2], argv[3], argv[4], argv[5], int(argv[6]),
                             argv[7].encode(), *argv[8:9])
    elif kind == "na" and len(argv) > 8:
        frames = icmp6_frames(argv[2], argv[3], argv[4], argv[5], na_body(argv[6], argv[7]),
                              argv[8])
    elif kind == "na":
        frame = na_frame(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7])
    elif kind == "ns":
        frame = ns_frame(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7],
                         argv[8:9] == ["nonce"])
    elif kind == "redirect":
        frame = redirect_frame(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7])
    elif kind == "redirect4":
        frame = redirect4_frame(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7])
    elif kind == "rs":
        frame = rs_frame(argv[2], argv[3], argv[4], argv[5], argv[6])
    else:
        frame = arp_frame(argv[2], argv[3], argv[4], *argv[5:6])
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for one in frames or [frame]:
            s.send(one)


if __name__ == "__main__":
    main(sys.argv[1:])
