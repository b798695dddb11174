"""IPComp, the IP Payload Compression Protocol (RFC 3173) with DEFLATE (RFC 2394).

Theory of operation
===================

An :class:`IpcompContext` is built once per IPComp SA (an "IPCA", RFC 3173
§4) and holds only constants: the CPI, the mode and the threshold.  Like the
AH and ESP codecs it keeps no per-packet state.

Stateless compression (RFC 3173 §2.1)
-------------------------------------
Each datagram is compressed on its own with a fresh compressor, because
datagrams may be lost or reordered.  The compressed data is a raw DEFLATE
stream (RFC 1951, no zlib header or checksum, RFC 2394 §2) that ends with a
final block.  We compress with a 2 KiB window (``wbits=-11``) because that is
the window Linux's ``crypto/deflate.c`` decompresses with
(``DEFLATE_DEF_WINBITS`` 11): a larger window would make packets over 2 KiB
undecodable there.  We decompress with the largest window (``wbits=-15``),
which decodes any DEFLATE stream.

Outbound (:meth:`IpcompContext.encap`)
--------------------------------------
- transport mode: the bytes after the IPv4 header, or after the IPv6
  extension headers routers must see (hop-by-hop, routing, fragment,
  destination options before a routing header), are compressed and an IPComp
  header goes in front of them (RFC 3173 §2.1, §3);
- tunnel mode: the whole inner packet is compressed behind a new outer header
  from the SA's addresses, IPComp next header 4 or 41.

The packet is sent uncompressed (RFC 3173 §2.2, "non-expansion policy") when
the compressed data plus the 4-byte IPComp header is not smaller than the
original, and without even trying when the data is shorter than the threshold
(90 bytes by default, the value Linux uses for deflate in
``net/xfrm/xfrm_algo.c``: small packets such as TCP ACKs do not compress).
Uncompressed means: in transport mode the packet unchanged; in tunnel mode
plain IP-in-IP (outer header, protocol 4 or 41, inner packet), as Linux sends
it through the IPIP state that accompanies an IPComp tunnel SA.  The outer
header is built as for AH and ESP (:func:`ipsecd.packet.tunnel_header`).  The
result is ``(Drop.OK, packet)``; a packet that is not a whole IP datagram is
``RUNT``/``MALFORMED`` (a fragment in transport mode: compression comes
before fragmentation, RFC 3173 §2), and ``encap`` never raises.

Inbound (:meth:`IpcompContext.decap`)
-------------------------------------
The receiver must accept both forms (RFC 3173 §2.2).  A packet with an IPComp
header is decompressed and rebuilt; one without is returned as it is
(transport) or unwrapped (tunnel, IP-in-IP).  Decompression is bounded: the
output may not exceed what the rebuilt packet's 16-bit length field can hold
(65535 bytes for the IPv4 datagram or IPv6 payload; a tunnel-mode inner
packet 65535 bytes), so a "decompression bomb" costs at most 64 KiB of output
before it is dropped.  A stream that is corrupt, truncated, followed by extra
bytes, or too large is ``Drop.DECOMPRESS``; an unknown CPI is
``Drop.UNKNOWN_SPI``; an IPComp header inside the decompressed data (we never
compress twice) or a tunnel-mode next header other than 4/41 is
``Drop.BAD_NEXT_HEADER``.  In tunnel mode the outer ECN is merged into the
inner packet (RFC 6040 §4.2, ``Drop.ECN`` for CE over Not-ECT).  The Flags
field is ignored on receipt and zero when sent (RFC 3173 §2.2).  Nothing
raises out of ``decap``.

The CPI (RFC 3173 §2.2, §3.3)
-----------------------------
The CPI is the 16-bit "SPI" of IPComp and is kept in the SA's ``spi``.  Values
0-63 are the IANA transform ids used as well-known CPIs for manual setup (so
deflate may only use 2 there), 64-255 are reserved, 256-61439 are for
negotiated IPCAs and 61440-65535 for private use.  We refuse CPIs over 16 bits
(as Linux's XFRM does), reserved ones, and well-known ones of another algorithm.
KAME's setkey without ``-R`` sends the well-known CPI and uses the SPI only as
a local index; the SA given here must hold the CPI that goes on the wire.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from typing import Final

from ipsecd.ah import decap_guard, encap_guard
from ipsecd.drops import Drop
from ipsecd.iana import IpcompId, IpProto
from ipsecd.packet import (
    Buffer,
    PacketError,
    check_inner,
    ip_datagram,
    ipv4_is_fragment,
    ipv6_check_unfragmented,
    ipv6_find_header,
    ipv6_ipsec_offset,
    merge_ecn,
    replace_payload,
    tunnel_header,
)
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import TransformError, comp_algo

#: Next header, flags, CPI (RFC 3173 §2.2).
IPCOMP_HEADER: Final = struct.Struct("!BBH")
IPCOMP_HEADER_BYTES: Final = 4
#: Below this many bytes of data no compression is tried (Linux's deflate threshold).
DEFAULT_THRESHOLD: Final = 90
#: The largest datagram (IPv4) or payload (IPv6) a 16-bit length field describes.
MAX_IP_LENGTH: Final = 0xFFFF
#: Window of the DEFLATE streams we send (2 KiB, what Linux decompresses) and accept (32 KiB).
COMPRESS_WBITS: Final = -11
DECOMPRESS_WBITS: Final = -15

_TUNNEL_NEXT_HEADERS: Final = frozenset({IpProto.IPV4, IpProto.IPV6})


def check_cpi(cpi: int, algorithm: IpcompId) -> int:
    """``cpi`` if it may be used with ``algorithm``; ``ValueError`` otherwise (RFC 3173 §3.3)."""
    if not 0 < cpi <= 0xFFFF:
        raise ValueError(f"CPI {cpi:#x} is not a non-zero 16-bit value (RFC 3173 §2.2)")
    if cpi < 64 and cpi != algorithm:
        raise ValueError(
            f"CPI {cpi} is the well-known CPI of IPComp transform {cpi}, not of "
            f"{algorithm.name} ({int(algorithm)}) (RFC 3173 §3.3)")
    if 64 <= cpi <= 255:
        raise ValueError(f"CPI {cpi} is reserved (RFC 3173 §3.3)")
    return cpi


def deflate(data: Buffer, level: int = zlib.Z_DEFAULT_COMPRESSION) -> bytes:
    """``data`` as one raw DEFLATE stream with a 2 KiB window (RFC 2394)."""
    return zlib.compress(data, level, wbits=COMPRESS_WBITS)


def inflate(data: Buffer, limit: int) -> bytes | None:
    """The DEFLATE stream ``data`` decompressed, or None if it is bad or longer than ``limit``.

    At most ``limit + 1`` bytes are ever produced, whatever the input.
    """
    inflater = zlib.decompressobj(wbits=DECOMPRESS_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not inflater.eof or inflater.unused_data:
        return None
    return out


class IpcompContext:
    """The IPComp codec for one SA (RFC 3173).  See the module docstring.

    ``mode`` overrides an SA whose mode is ``any`` (which otherwise means
    transport); ``threshold`` is the smallest data length worth compressing;
    ``level`` the zlib compression level.
    """

    __slots__ = ("_ident", "_level", "cpi", "dst", "mode", "src", "threshold")

    def __init__(
        self,
        sa: SecurityAssociation,
        *,
        mode: Mode | None = None,
        threshold: int = DEFAULT_THRESHOLD,
        level: int = zlib.Z_DEFAULT_COMPRESSION,
    ) -> None:
        if sa.protocol != IpProto.IPCOMP:
            raise ValueError(f"an IPComp context needs an IPComp SA, not {sa.protocol.name}")
        if sa.comp is None:
            raise TransformError("IPComp SA without a compression algorithm")
        algo = comp_algo(sa.comp)
        if algo.id != IpcompId.IPCOMP_DEFLATE:
            raise TransformError(f"IPComp algorithm {algo.name} is not implemented")
        if threshold < 0:
            raise ValueError("threshold must not be negative")
        self.cpi = check_cpi(sa.spi, algo.id)
        self.src = sa.src
        self.dst = sa.dst
        chosen = mode if mode is not None and mode is not Mode.ANY else sa.mode
        self.mode = Mode.TUNNEL if chosen is Mode.TUNNEL else Mode.TRANSPORT
        self.threshold = threshold
        self._level = level
        # Outer IPv4 identification for tunnel mode (RFC 6864): IPComp has no
        # sequence number to derive it from, so count from a random start.
        self._ident = itertools.count(int.from_bytes(os.urandom(2), "big"))

    # -- outbound ----------------------------------------------------------------------

    def encap(self, packet: Buffer) -> tuple[Drop, bytes]:
        """``packet`` with its payload compressed, or uncompressed when that does not pay.

        Returns ``(Drop.OK, packet)`` or ``(reason, b"")``, never raises:
        ``RUNT``/``MALFORMED`` for a packet that is not a whole IP datagram
        (truncated, not IP, a fragment in transport mode), ``MTU`` if a tunnel
        header would not fit the 16-bit IP length.
        """
        return encap_guard(lambda: self._encap(packet), "IPComp")

    def compress(self, packet: Buffer) -> tuple[Drop, bytes | None]:
        """``packet`` with an IPComp header, or ``(Drop.OK, None)`` when it goes uncompressed.

        As :meth:`encap`, for a caller that sends the uncompressed form its own
        way (the datapath: plain tunnel-mode ESP rather than IP-in-IP inside
        ESP).  Tunnel mode gives outer header | IPComp | compressed inner packet.
        """
        drop, out = encap_guard(lambda: self._encap(packet, compressed_only=True), "IPComp")
        return drop, out or None  # b"": not worth compressing

    def _encap(self, packet: Buffer, *, compressed_only: bool = False) -> bytes:
        data = ip_datagram(packet)
        if self.mode is Mode.TUNNEL:
            if compressed_only:
                compressed = self._compress(data)
                return b"" if compressed is None else self._tunnel_compressed(data, compressed)
            return self._encap_tunnel(data)
        if data[0] >> 4 == 4:
            if ipv4_is_fragment(data):
                raise PacketError("IPComp compresses whole datagrams (RFC 3173 §2)")
            off, nh, nh_field = (data[0] & 0x0F) * 4, data[9], 9
        else:
            off, nh, nh_field = ipv6_ipsec_offset(data)
            ipv6_check_unfragmented(data, off)
        compressed = self._compress(memoryview(data)[off:])
        if compressed is None:
            return b"" if compressed_only else data
        return replace_payload(data, off, nh_field, IpProto.IPCOMP,
                               IPCOMP_HEADER.pack(nh, 0, self.cpi) + compressed)

    def _encap_tunnel(self, inner: bytes) -> bytes:
        compressed = self._compress(inner)
        if compressed is None:
            next_header = IpProto.IPV4 if inner[0] >> 4 == 4 else IpProto.IPV6
            ident = next(self._ident) & 0xFFFF
            outer = tunnel_header(self.src, self.dst, next_header, inner, len(inner), ident)
            return b"".join((outer, inner))
        return self._tunnel_compressed(inner, compressed)

    def _tunnel_compressed(self, inner: bytes, compressed: bytes) -> bytes:
        next_header = IpProto.IPV4 if inner[0] >> 4 == 4 else IpProto.IPV6
        ident = next(self._ident) & 0xFFFF
        payload = IPCOMP_HEADER.pack(next_header, 0, self.cpi) + compressed
        outer = tunnel_header(self.src, self.dst, IpProto.IPCOMP, inner, len(payload), ident)
        return b"".join((outer, payload))

    def _compress(self, data: Buffer) -> bytes | None:
        if len(data) < self.threshold:
            return None
        compressed = deflate(data, self._level)
        # RFC 3173 §2.2: send the original unless compression made it smaller.
        if len(compressed) + IPCOMP_HEADER_BYTES >= len(data):
            return None
        return compressed

    # -- inbound -----------------------------------------------------------------------

    def decap(self, packet: Buffer) -> tuple[Drop, bytes]:
        """Decompress: ``(Drop.OK, packet)`` or ``(reason, b"")``.  Never raises.

        Transport mode gives the original packet, tunnel mode the inner packet.
        A packet without an IPComp header (sent uncompressed) is accepted too.
        """
        return decap_guard(lambda: self._decap(packet), "IPComp")

    def _decap(self, packet: Buffer) -> tuple[Drop, bytes]:
        data = ip_datagram(packet)
        if data[0] >> 4 == 4:
            if ipv4_is_fragment(data):
                return Drop.MALFORMED, b""  # decompression follows reassembly (RFC 3173 §2)
            off, proto, nh_field = (data[0] & 0x0F) * 4, data[9], 9
            limit = MAX_IP_LENGTH - off
        else:
            off, proto, nh_field = ipv6_find_header(data)
            limit = MAX_IP_LENGTH - (off - 40)
        if proto != IpProto.IPCOMP:
            return self._uncompressed(data, off, proto)
        if off + IPCOMP_HEADER_BYTES > len(data):
            return Drop.RUNT, b""
        next_header, _flags, cpi = IPCOMP_HEADER.unpack_from(data, off)
        if cpi != self.cpi:
            return Drop.UNKNOWN_SPI, b""
        if next_header == IpProto.IPCOMP:
            return Drop.BAD_NEXT_HEADER, b""
        if self.mode is Mode.TUNNEL:
            if next_header not in _TUNNEL_NEXT_HEADERS:
                return Drop.BAD_NEXT_HEADER, b""
            limit = MAX_IP_LENGTH
        payload = inflate(memoryview(data)[off + IPCOMP_HEADER_BYTES :], limit)
        if payload is None:
            return Drop.DECOMPRESS, b""
        if self.mode is Mode.TUNNEL:
            return _tunnel_inner(data, payload, next_header)
        return Drop.OK, replace_payload(data, off, nh_field, next_header, payload)

    def decap_tunnel_payload(self, outer: Buffer, payload: Buffer) -> tuple[Drop, bytes]:
        """Tunnel mode: the inner packet of ``payload`` (IPComp header onwards).  Never raises.

        For IPComp inside tunnel-mode ESP (ESP next header 108): ESP removed
        the outer header's protocol, so the caller hands over the outer IP
        header (its ECN is merged into the inner packet, RFC 6040 §4.2) and
        the bytes after ESP's header.  Drops as :meth:`decap`.
        """
        return decap_guard(lambda: self._decap_payload(outer, payload), "IPComp")

    def _decap_payload(self, outer: Buffer, payload: Buffer) -> tuple[Drop, bytes]:
        if len(payload) < IPCOMP_HEADER_BYTES:
            return Drop.RUNT, b""
        next_header, _flags, cpi = IPCOMP_HEADER.unpack_from(payload, 0)
        if cpi != self.cpi:
            return Drop.UNKNOWN_SPI, b""
        if next_header not in _TUNNEL_NEXT_HEADERS:
            return Drop.BAD_NEXT_HEADER, b""
        inner = inflate(memoryview(payload)[IPCOMP_HEADER_BYTES:], MAX_IP_LENGTH)
        if inner is None:
            return Drop.DECOMPRESS, b""
        return _tunnel_inner(bytes(outer), inner, next_header)

    def _uncompressed(self, data: bytes, off: int, proto: int) -> tuple[Drop, bytes]:
        # RFC 3173 §2.2: the peer sent this one uncompressed.
        if self.mode is Mode.TRANSPORT:
            return Drop.OK, data
        if proto not in _TUNNEL_NEXT_HEADERS:
            return Drop.BAD_NEXT_HEADER, b""
        return _tunnel_inner(data, data[off:], proto)


def _tunnel_inner(outer: bytes, inner: bytes, next_header: int) -> tuple[Drop, bytes]:
    if not check_inner(inner, next_header):
        return Drop.MALFORMED, b""
    merged = merge_ecn(outer, inner)  # RFC 6040 §4.2, as for any IP-in-IP tunnel
    if merged is None:
        return Drop.ECN, b""
    return Drop.OK, merged

