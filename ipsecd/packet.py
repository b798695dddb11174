"""Small IPv4/IPv6 header helpers shared by the codecs.

Only what the ESP/AH/IPComp codecs need: build and patch outer headers
(tunnel mode, RFC 4301 §5.1.2), compute the IPv4 header checksum, find where
IPsec headers go in an IPv6 packet, cut a datagram to its IP length, and merge
ECN on decapsulation (RFC 6040).  Everything works on
``bytes``/``bytearray``/``memoryview`` without building packet objects.
"""

from __future__ import annotations

import struct

from ipsecd.iana import IpProto
from ipsecd.sa import IPAddress

Buffer = bytes | bytearray | memoryview

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl, tos, total len, id, flags/frag, ttl, proto, csum, src, dst
IPV6_HEADER = struct.Struct("!IHBB16s16s")  # ver/tc/flow, payload len, next header, hop limit, src, dst
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
MAX_IP_LENGTH = 0xFFFF  # IPv4 total length, IPv6 payload length: 16 bits
# ECN codepoints (RFC 3168 §5).
ECN_NOT_ECT = 0
ECN_ECT1 = 1
ECN_ECT0 = 2
ECN_CE = 3
_U16 = struct.Struct("!H")

# Extension headers that precede ESP/AH in IPv6 transport mode (RFC 4303 §3.1.1,
# RFC 4302 §3.1.1): hop-by-hop, routing and fragment always; destination
# options may come before or after, and we leave them where they are only when
# a routing header follows them.
_IPV6_EXT_BEFORE_IPSEC = {IpProto.HOPOPT, IpProto.IPV6_ROUTE, IpProto.IPV6_FRAG}
# Extension headers that may precede an IPsec header on receipt (a fragment
# header may not: IPsec works on reassembled packets).
_IPV6_CHAIN_HEADERS = frozenset({IpProto.HOPOPT, IpProto.IPV6_ROUTE, IpProto.IPV6_OPTS})


class PacketError(ValueError):
    """A header that does not parse; the codecs turn it into a counted drop."""


class TruncatedPacket(PacketError):
    """The packet ends before the headers it announces: counted as ``Drop.RUNT``."""


class PacketTooBig(PacketError):
    """Encapsulation would exceed the 16-bit IP length: counted as ``Drop.MTU``."""


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


# -- whole datagrams (AH and IPComp work on copies) ----------------------------


def ip_datagram(packet: Buffer) -> bytes:
    """The IP datagram in ``packet``, cut to the length its header states.

    Link-layer padding after the datagram is dropped.  Raises
    :class:`TruncatedPacket` when the packet is shorter than it claims and
    :class:`~ipsecd.packet.PacketError` when it is not IPv4/IPv6 or its lengths
    are inconsistent.
    """
    data = bytes(packet)
    if not data:
        raise TruncatedPacket("empty packet")
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            raise TruncatedPacket("shorter than an IPv4 header")
        ihl = (data[0] & 0x0F) * 4
        total = _U16.unpack_from(data, 2)[0]
        if ihl < 20 or total < ihl:
            raise PacketError("bad IPv4 header or total length")
    elif version == 6:
        if len(data) < 40:
            raise TruncatedPacket("shorter than an IPv6 header")
        # A jumbogram (RFC 2675) has payload length 0: it is cut to its bare
        # header here and its hop-by-hop header then reads as truncated.
        total = 40 + _U16.unpack_from(data, 4)[0]
    else:
        raise PacketError(f"IP version {version}")
    if total > len(data):
        raise TruncatedPacket("shorter than its IP length")
    return data if total == len(data) else data[:total]


def ipv4_is_fragment(data: Buffer) -> bool:
    """True for an IPv4 fragment (more-fragments set or a non-zero offset)."""
    return bool(_U16.unpack_from(data, 6)[0] & (IPV4_MF | IPV4_OFFSET_MASK))


def ipv6_find_header(data: Buffer) -> tuple[int, int, int]:
    """Walk the IPv6 extension headers that precede an IPsec header.

    Skips hop-by-hop, routing and destination options headers and returns
    ``(offset, next_header, nh_field)`` for the first other header: its byte
    offset, its protocol number and the offset of the byte that names it.  A
    fragment header raises :class:`~ipsecd.packet.PacketError` (IPsec works on
    reassembled packets, RFC 4302 §3.4.1, RFC 4303 §3.4.1).
    """
    nh_field = 6
    nh = data[6]
    off = 40
    while nh in _IPV6_CHAIN_HEADERS:
        if off + 8 > len(data):
            raise TruncatedPacket("truncated IPv6 extension header")
        length = (data[off + 1] + 1) * 8
        if off + length > len(data):
            raise TruncatedPacket("truncated IPv6 extension header")
        nh_field = off
        nh = data[off]
        off += length
    if nh == IpProto.IPV6_FRAG:
        raise PacketError("IPv6 fragment: IPsec processes reassembled packets only")
    return off, nh, nh_field


def ipv6_check_unfragmented(data: Buffer, end: int) -> None:
    """Raise :class:`~ipsecd.packet.PacketError` if a fragment header lies before ``end``."""
    nh = data[6]
    off = 40
    while off < end:
        if nh == IpProto.IPV6_FRAG:
            raise PacketError("IPv6 fragment: IPsec is applied before fragmentation")
        length = (data[off + 1] + 1) * 8
        nh = data[off]
        off += length


def tunnel_header(
    src: IPAddress, dst: IPAddress, proto: int, inner: bytes, payload_len: int, ident: int,
) -> bytearray:
    """The outer header of a tunnel-mode packet carrying ``inner`` (RFC 4301 §5.1.2).

    DSCP and ECN are copied from the inner header (RFC 4301 §5.1.2.1, RFC 6040
    §4.1 normal mode); DF is copied from an inner IPv4 header (RFC 4301 §8.1)
    and set over an inner IPv6 packet, which routers may not fragment either
    (as :mod:`ipsecd.esp` does); TTL/hop limit start afresh at 64.
    """
    if inner[0] >> 4 == 4:
        ds = inner[1]
        df = bool(_U16.unpack_from(inner, 6)[0] & IPV4_DF)
    else:
        ds = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
        df = True
    if src.version == 4:
        if 20 + payload_len > MAX_IP_LENGTH:
            raise PacketTooBig("too big for an IPv4 packet after encapsulation")
        return ipv4_header(src.packed, dst.packed, proto, payload_len, tos=ds, ident=ident, df=df)
    if payload_len > MAX_IP_LENGTH:
        raise PacketTooBig("too big for an IPv6 packet after encapsulation")
    return ipv6_header(src.packed, dst.packed, proto, payload_len, traffic_class=ds)


def rewrite_front(data: Buffer, off: int, nh_field: int, next_header: int, total: int) -> bytearray:
    """A copy of the headers ``data[:off]`` for a packet of ``total`` bytes.

    The byte at ``nh_field`` (the protocol / next header field that names
    what follows ``off``) becomes ``next_header``; the IPv4 total length and
    checksum or the IPv6 payload length are set for ``total``.
    """
    front = bytearray(data[:off])
    front[nh_field] = next_header
    _set_length(front, total)
    return front


def remove_header(data: bytes, off: int, end: int, nh_field: int, next_header: int) -> bytes:
    """``data`` without the bytes ``off:end``; the byte at ``nh_field`` becomes ``next_header``."""
    front = rewrite_front(data, off, nh_field, next_header, len(data) - (end - off))
    return b"".join((front, memoryview(data)[end:]))


def replace_payload(data: bytes, off: int, nh_field: int, next_header: int, payload: Buffer) -> bytes:
    """``data[:off]`` followed by ``payload``, with lengths and next header fixed."""
    front = rewrite_front(data, off, nh_field, next_header, off + len(payload))
    return b"".join((front, payload))


def _set_length(front: bytearray, total: int) -> None:
    # The IP header at the start of ``front`` describes a packet of ``total`` bytes.
    if front[0] >> 4 == 4:
        if total > MAX_IP_LENGTH:
            raise PacketTooBig("too big for an IPv4 packet")
        _U16.pack_into(front, 2, total)
        front[10:12] = b"\x00\x00"
        _U16.pack_into(front, 10, checksum(memoryview(front)[: (front[0] & 0x0F) * 4]))
    else:
        if total - 40 > MAX_IP_LENGTH:
            raise PacketTooBig("too big for an IPv6 packet")
        _U16.pack_into(front, 4, total - 40)


def check_inner(inner: bytes, next_header: int) -> bool:
    """True when ``inner`` is exactly one IP packet of the family ``next_header`` names."""
    if not inner or inner[0] >> 4 != (4 if next_header == IpProto.IPV4 else 6):
        return False
    try:
        return len(ip_datagram(inner)) == len(inner)
    except PacketError:
        return False


# -- ECN at the tunnel exit (RFC 6040 §4.2): ESP, AH and IPComp -----------------


def ecn_of(header: Buffer, at: int = 0) -> int:
    """The ECN field (RFC 3168 §5) of the IPv4 or IPv6 header at ``header[at:]``."""
    if header[at] >> 4 == 4:
        return header[at + 1] & 3
    return header[at + 1] >> 4 & 3


def decapsulated_ecn(outer_ecn: int, inner_ecn: int) -> int | None:
    """The ECN an inner packet leaves a tunnel with (RFC 6040 §4.2); None: drop it.

    CE outside marks the inner packet CE, unless it is Not-ECT: then the
    congestion signal cannot be passed on and the packet is dropped.  ECT(1)
    outside over ECT(0) inside is propagated too.  Everything else leaves the
    inner packet as it is.
    """
    if outer_ecn == ECN_CE:
        return None if inner_ecn == ECN_NOT_ECT else ECN_CE
    if outer_ecn == ECN_ECT1 and inner_ecn == ECN_ECT0:
        return ECN_ECT1
    return inner_ecn


def set_ecn(buf: bytearray | memoryview, at: int, ecn: int) -> None:
    """Set the ECN field of the IP header at ``buf[at:]`` in place (IPv4: checksum fixed)."""
    if buf[at] >> 4 == 4:
        buf[at + 1] = (buf[at + 1] & 0xFC) | ecn
        ihl = (buf[at] & 0x0F) << 2
        _U16.pack_into(buf, at + 10, 0)
        _U16.pack_into(buf, at + 10, checksum(buf[at : at + ihl]))
    else:
        buf[at + 1] = (buf[at + 1] & 0xCF) | ecn << 4


def merge_ecn(outer: Buffer, inner: bytes) -> bytes | None:
    """The inner packet with the outer header's ECN merged in (RFC 6040 §4.2).

    None when the packet must be dropped (CE outside, Not-ECT inside).  The
    inner IPv4 checksum is updated when the field changes.
    """
    inner_ecn = ecn_of(inner)
    ecn = decapsulated_ecn(ecn_of(outer), inner_ecn)
    if ecn is None:
        return None
    if ecn == inner_ecn:
        return inner
    out = bytearray(inner)
    set_ecn(out, 0, ecn)
    return bytes(out)
