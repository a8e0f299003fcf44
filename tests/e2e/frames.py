"""Hand-made Ethernet frames, sent from inside a container by the spoofing tests.

    python3 frames.py udp IFNAME SRC_MAC SRC_IP DST_MAC DST_IP PORT PAYLOAD
    python3 frames.py arp IFNAME SRC_MAC SENDER_IP TARGET_IP

`udp` sends one UDP datagram with whatever source MAC and address it is given;
`arp` sends a broadcast ARP request claiming SENDER_IP is at SRC_MAC. A packet
socket writes the frame as is, so nothing in the container's stack corrects it.
"""

from __future__ import annotations

import socket
import struct
import sys


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


def arp_frame(src_mac: str, sender_ip: str, target_ip: str) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(src_mac),
                      socket.inet_aton(sender_ip), b"\0" * 6, socket.inet_aton(target_ip))
    return b"\xff" * 6 + mac(src_mac) + b"\x08\x06" + arp


def main(argv: list[str]) -> None:
    kind, ifname = argv[0], argv[1]
    if kind == "udp":
        frame = udp_frame(argv[2], argv[3], argv[4], argv[5], int(argv[6]), argv[7].encode())
    else:
        frame = arp_frame(argv[2], argv[3], argv[4])
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(frame)


if __name__ == "__main__":
    main(sys.argv[1:])
