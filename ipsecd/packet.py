"""Small IPv4/IPv6 header helpers shared by the codecs.

Only what the ESP/AH/IPComp codecs need: build and patch outer headers,
compute the IPv4 header checksum, and find where IPsec headers go in an IPv6
packet.  Everything works on ``bytes``/``bytearray``/``memoryview`` without
building packet objects.
"""

from __future__ import annotations

import struct

from ipsecd.iana import IpProto

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl, tos, total len, id, flags/frag, ttl, proto, csum, src, dst
IPV6_HEADER = struct.Struct("!IHBB16s16s")  # ver/tc/flow, payload len, next header, hop limit, src, dst
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF

# Extension headers that precede ESP/AH in IPv6 transport mode (RFC 4303 §3.1.1,
# RFC 4302 §3.1.1): hop-by-hop, routing and fragment always; destination
# options may come before or after, and we leave them where they are only when
# a routing header follows them.
_IPV6_EXT_BEFORE_IPSEC = {IpProto.HOPOPT, IpProto.IPV6_ROUTE, IpProto.IPV6_FRAG}


class PacketError(ValueError):
    """A header that does not parse; the codecs turn it into a counted drop."""


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``.

    ``initial`` is added to the one's-complement sum first (a pseudo-header
    sum, for UDP).  The sum is computed as one big integer modulo 0xFFFF:
    since 2^16 = 1 (mod 0xFFFF), the big-endian integer of the data is
    congruent to the sum of its 16-bit words, which is what the end-around
    carry computes - and it runs in C instead of a Python loop.
    """
    value = int.from_bytes(data, "big")
    if len(data) % 2:
        value <<= 8  # an odd trailing byte is the high half of a zero-padded word
    return fold_checksum(value + initial)


def fold_checksum(value: int) -> int:
    """The Internet checksum of a non-negative sum of 16-bit words (any size)."""
    rest = value % 0xFFFF
    if rest:
        return 0xFFFF - rest
    return 0 if value else 0xFFFF  # a non-zero multiple of 0xFFFF sums to 0xFFFF


def ipv4_header(
    src: bytes, dst: bytes, proto: int, payload_len: int, *,
    ttl: int = 64, tos: int = 0, ident: int = 0, df: bool = False,
) -> bytearray:
    """A 20-byte IPv4 header with a correct checksum."""
    hdr = bytearray(IPV4_HEADER.pack(
        0x45, tos, 20 + payload_len, ident, IPV4_DF if df else 0, ttl, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return hdr


def ipv6_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int, *,
    hop_limit: int = 64, traffic_class: int = 0, flow_label: int = 0,
) -> bytearray:
    """A 40-byte IPv6 header."""
    first = (6 << 28) | (traffic_class << 20) | (flow_label & 0xFFFFF)
    return bytearray(IPV6_HEADER.pack(first, payload_len, next_header, hop_limit, src, dst))


def ipv4_header_length(packet: bytes | bytearray | memoryview) -> int:
    """IHL in bytes; raises :class:`PacketError` on a bad header."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise PacketError("not an IPv4 packet")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or ihl > len(packet):
        raise PacketError("bad IPv4 header length")
    return ihl


def ipv6_ipsec_offset(packet: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Where an ESP/AH header goes in an IPv6 packet (transport mode).

    Returns ``(offset, next_header, nh_field_offset)``: the byte offset at which
    to insert the IPsec header, the protocol that currently starts there (the
    IPsec header's next header), and the offset of the byte that holds that
    protocol number (the IPv6 header's or the preceding extension header's
    next-header field), which must be rewritten to ESP/AH.
    """
    if len(packet) < 40 or packet[0] >> 4 != 6:
        raise PacketError("not an IPv6 packet")
    nh_field = 6
    nh = packet[6]
    off = 40
    while True:
        if nh in _IPV6_EXT_BEFORE_IPSEC or (
            nh == IpProto.IPV6_OPTS and _dest_opts_before_routing(packet, off)
        ):
            if off + 8 > len(packet):
                raise PacketError("truncated IPv6 extension header")
            length = 8 if nh == IpProto.IPV6_FRAG else (packet[off + 1] + 1) * 8
            if off + length > len(packet):
                raise PacketError("truncated IPv6 extension header")
            nh_field = off
            nh = packet[off]
            off += length
            continue
        return off, nh, nh_field


def _dest_opts_before_routing(packet: bytes | bytearray | memoryview, off: int) -> bool:
    # Destination options followed by a routing header are processed by every
    # listed hop, so they stay in front of the IPsec header (RFC 8200 §4.1).
    return off + 2 <= len(packet) and packet[off] == IpProto.IPV6_ROUTE
