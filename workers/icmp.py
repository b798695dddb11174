"""MTU handling on the plaintext side: ICMP errors and IPv4 fragmentation.

When an inner packet would not fit the path once encapsulated, the worker
either tells its sender (a DF-set IPv4 packet: ICMP "fragmentation needed",
RFC 792 / RFC 1191; any IPv6 packet: ICMPv6 "packet too big", RFC 4443
§3.2 - routers never fragment IPv6) or, for IPv4 without DF, fragments
with :func:`fragment_ipv4` (RFC 791).  In tunnel mode that is the *inner*
packet, before encapsulation: each fragment travels in its own ESP packet
and the final destination reassembles, and the outer packet is never
fragmented (the peer would have to reassemble before it can even read the
SPI, which costs it memory and per-SPI steering; RFC 4459 §3 and §5 discuss
the trade-off).  In transport mode the datagram must not be cut first: ESP
and AH are applied to whole datagrams only and fragmentation comes after (RFC 4303
§3.3.4, RFC 4302 §3.3.4), so there the worker fragments the *outer* ESP or
AH packet (``Worker._send_whole``).

The error goes back into the TUN device towards the sender, as if a router
beyond the tunnel had sent it.  Its source address is the original
packet's *destination*: the kernel checks the source of what arrives on the
TUN (reverse path filtering, and IPv4 drops a packet whose source is one
of its own addresses as a martian unless ``accept_local`` is set) and the
route back to that destination points into the TUN, so the error passes
every check with any ``rp_filter`` setting, for forwarded and local
senders alike.  PMTU discovery keys on the quoted header, not on who sent
the error.

The builders never raise for packet content; they return ``None`` when
RFC 1122 §3.2.2 (IPv4) or RFC 4443 §2.4 (IPv6) forbids an error (about an
ICMP error, a non-first fragment, a multicast or broadcast packet, an
unspecified or multicast source).  :class:`RateLimit` bounds how many a
worker sends (RFC 1812 §4.3.2.8, RFC 4443 §2.4(f)).
"""

from __future__ import annotations

import struct
import time

from ipsecd.iana import IpProto
from ipsecd.packet import PacketError, checksum, ipv6_ipsec_offset

Buffer = bytes | bytearray | memoryview

ICMP_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
IPV4_QUOTE_LIMIT = 576  # RFC 1812 §4.3.2.3: the whole error at most 576 bytes
IPV6_QUOTE_LIMIT = 1280  # RFC 4443 §2.4(c): the whole error at most the minimum MTU
IPV6_MIN_MTU = 1280
IPV4_MIN_MTU = 68  # RFC 791

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ICMP_UNREACH = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU
_ICMP6_PTB = struct.Struct("!BBHI")  # type, code, checksum, MTU
_ICMP_ERRORS_V4 = frozenset((3, 4, 5, 11, 12))  # unreachable, quench, redirect, time exceeded, param
_IPV6_EXT = frozenset((0, 43, 60))


def _ipv4_source_ok(src: int) -> bool:
    # RFC 1122 §3.2.2: not about a packet whose source is not a single host
    # (0.0.0.0, loopback, multicast, broadcast, class E).
    first = src >> 24
    return src != 0 and first != 127 and first < 224


def frag_needed(packet: Buffer, mtu: int, ttl: int = 64) -> bytes | None:
    """ICMP destination unreachable / fragmentation needed (type 3 code 4) for an IPv4 packet.

    ``mtu`` is the next-hop MTU to announce (RFC 1191 §4).  ``None`` when no
    error may be sent about ``packet`` or it is not a readable IPv4 header.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 15) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    _, _, _, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(packet, 0)
    if frag & 0x1FFF:  # not about a non-first fragment
        return None
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    if not _ipv4_source_ok(s) or d >> 28 == 14 or d == 0xFFFFFFFF:
        return None
    if proto == 1 and len(packet) > ihl and packet[ihl] in _ICMP_ERRORS_V4:
        return None  # never an error about an ICMP error
    quote = bytes(packet[:min(len(packet), IPV4_QUOTE_LIMIT - 28)])
    body = bytearray(_ICMP_UNREACH.pack(ICMP_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu & 0xFFFF))
    body += quote
    struct.pack_into("!H", body, 2, checksum(body))
    header = bytearray(_IPV4.pack(0x45, 0xC0, 20 + len(body), 0, 0, ttl, 1, 0, dst, src))
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header + body)


def packet_too_big(packet: Buffer, mtu: int, hop_limit: int = 64) -> bytes | None:
    """ICMPv6 packet too big (RFC 4443 §3.2) for an IPv6 packet; ``None`` when not allowed."""
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    _, _, nh, _, src, dst = _IPV6.unpack_from(packet, 0)
    if src[0] == 0xFF or not any(src):  # multicast or unspecified source
        return None
    # RFC 4443 §2.4(e.3): packet too big is sent even for multicast destinations.
    at = 40
    while nh in _IPV6_EXT and at + 8 <= len(packet):
        nh, at = packet[at], at + (packet[at + 1] + 1) * 8
    if nh == 58 and at < len(packet) and packet[at] < 128:
        return None  # an ICMPv6 error message (RFC 4443 §2.4(e.1))
    quote = bytes(packet[:min(len(packet), IPV6_QUOTE_LIMIT - 48)])
    body = bytearray(_ICMP6_PTB.pack(ICMPV6_PACKET_TOO_BIG, 0, 0, max(mtu, IPV6_MIN_MTU)))
    body += quote
    # The error comes from the packet's destination and goes to its source.
    pseudo = int.from_bytes(dst + src, "big") + len(body) + 58
    struct.pack_into("!H", body, 2, checksum(body, pseudo))
    return _IPV6.pack(6 << 28, len(body), 58, hop_limit, dst, src) + bytes(body)


def too_big_error(packet: Buffer, mtu: int) -> bytes | None:
    """The right error for ``packet`` (IPv4 or IPv6), announcing ``mtu``."""
    if len(packet) and packet[0] >> 4 == 6:
        return packet_too_big(packet, mtu)
    return frag_needed(packet, mtu)


def fragment_ipv4(packet: Buffer, mtu: int) -> list[bytes] | None:
    """Split an IPv4 packet (DF clear) into fragments of at most ``mtu`` bytes (RFC 791).

    Works on a packet that is already a fragment too (offsets and the last
    fragment's MF are kept).  Options whose "copied" flag is set go into every
    fragment, the others only into the first.  ``None`` if the packet cannot
    be fragmented (DF set, bad header, ``mtu`` too small).
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 15) * 4
    total = packet[2] << 8 | packet[3]
    if ihl < 20 or total < ihl or total > len(packet):
        return None
    frag = packet[6] << 8 | packet[7]
    if frag & 0x4000:
        return None
    header = bytearray(packet[:ihl])
    later = bytearray(header[:20])
    options = header[20:]
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 0
        if length < 2:
            return None
        if kind & 0x80:
            later += options[i:i + length]
        i += length
    later += bytes(-len(later) % 4)
    later[0] = 0x40 | len(later) // 4
    first_room = (mtu - ihl) & ~7
    later_room = (mtu - len(later)) & ~7
    if first_room < 8 or later_room < 8:
        return None
    payload = bytes(packet[ihl:total])
    base = (frag & 0x1FFF) * 8
    more = frag & 0x2000
    out: list[bytes] = []
    at = 0
    while at < len(payload):
        head = header if not out else later
        room = first_room if not out else later_room
        chunk = payload[at:at + room]
        last = at + len(chunk) >= len(payload)
        h = bytearray(head)
        offset = (base + at) // 8
        flags = (more if last else 0x2000) | offset
        struct.pack_into("!H", h, 2, len(h) + len(chunk))
        struct.pack_into("!H", h, 6, flags)
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, checksum(h))
        out.append(bytes(h) + chunk)
        at += len(chunk)
    return out


IPV6_FRAGMENT = int(IpProto.IPV6_FRAG)


def fragment_ipv6(packet: Buffer, mtu: int, ident: int) -> list[bytes] | None:
    """Source fragmentation of an IPv6 packet into pieces of at most ``mtu`` bytes (RFC 8200 §4.5).

    Only the originating host may do this, as ipsecd is in transport mode.
    The per-fragment part is the IPv6 header and the extension headers that
    go before ESP/AH (hop-by-hop, routing, destination options in front of a
    routing header: the place :func:`ipsecd.packet.ipv6_ipsec_offset` finds);
    a Fragment header with ``ident`` follows it in every fragment.  ``None``
    if the packet cannot be fragmented (not IPv6, already a fragment,
    inconsistent lengths, ``mtu`` too small).
    """
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    try:
        off, nh, nh_field = ipv6_ipsec_offset(packet)
    except PacketError:
        return None
    total = 40 + (packet[4] << 8 | packet[5])
    if total > len(packet) or total < off:
        return None
    walk, at = packet[6], 40
    while at < off:  # a Fragment header among them: already a fragment
        if walk == IPV6_FRAGMENT:
            return None
        walk, at = packet[at], at + (packet[at + 1] + 1) * 8
    room = (mtu - off - 8) & ~7
    if room < 8:
        return None
    unfragmentable = bytearray(packet[:off])
    unfragmentable[nh_field] = IPV6_FRAGMENT
    payload = bytes(packet[off:total])
    out: list[bytes] = []
    for at in range(0, len(payload), room):
        chunk = payload[at:at + room]
        more = 1 if at + room < len(payload) else 0
        piece = unfragmentable + struct.pack("!BBHI", nh, 0, at | more, ident & 0xFFFFFFFF) + chunk
        struct.pack_into("!H", piece, 4, len(piece) - 40)
        out.append(bytes(piece))
    return out


class RateLimit:
    """A token bucket: ``rate`` events per second, bursts of ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float = 100.0, burst: float = 50.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 - 1e-9:  # 0.1 s at 10/s is one token, not 0.99999...
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False


__all__ = [
    "IPV6_MIN_MTU",
    "RateLimit",
    "frag_needed",
    "fragment_ipv4",
    "fragment_ipv6",
    "packet_too_big",
    "too_big_error",
]
