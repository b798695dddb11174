"""AH, the IP Authentication Header (RFC 4302): the per-packet codec.

Theory of operation
===================

An :class:`AhContext` is built once per SA from an
:class:`ipsecd.sa.SecurityAssociation` (protocol AH) and then used for every
packet of that SA.  It holds the keyed integrity transform and the SA's
constants; it holds no per-packet state, so one context can serve any number
of packets and its methods never allocate more than the output packet.

Outbound, :meth:`AhContext.encap` takes an IP packet and a sequence number
(the counter lives outside the codec, in memory shared by the workers) and
returns ``(Drop.OK, packet with AH)``:

- transport mode: AH goes after the IPv4 header, or after the IPv6 extension
  headers that routers look at (hop-by-hop, routing, fragment, and destination
  options in front of a routing header; :func:`ipsecd.packet.ipv6_ipsec_offset`)
  (RFC 4302 §3.1.1).  The header that named the payload now names AH, and the
  lengths (and the IPv4 checksum) are fixed up;
- tunnel mode: a new outer header from the SA's addresses, then AH with next
  header 4 (IPv4) or 41 (IPv6), then the whole inner packet (RFC 4302 §3.1.2).
  Either family can carry either family.  As in :mod:`ipsecd.esp`: TTL/hop
  limit 64, DSCP and ECN copied from the inner header (RFC 4301 §5.1.2.1,
  RFC 6040 §4.1), DF copied from an inner IPv4 header and set over IPv6, the
  IPv4 identification taken from the sequence number.

Inbound, :meth:`AhContext.decap` finds AH, checks the SPI, asks the optional
anti-replay window about the sequence number, verifies the ICV in constant
time, updates the window, and returns ``(Drop.OK, packet)``: the packet
without AH (transport mode) or the inner packet with the outer ECN merged in
by RFC 6040 §4.2 (tunnel mode).

Drops, not exceptions: every per-packet failure, in either direction, is a
:class:`~ipsecd.drops.Drop` returned with ``b""``; neither method raises for
any packet bytes.  Outbound: ``SEQ_OVERFLOW`` (sequence number 0 or past the
SA's space), ``RUNT``, ``MALFORMED`` (not a whole IP datagram), ``MTU``
(the result would not fit a 16-bit IP length).  Inbound: ``RUNT``,
``MALFORMED`` (bad headers, not AH, a fragment, an AH length this SA cannot
have, a bad inner packet), ``UNKNOWN_SPI``, the window's ``REPLAY``, ``ICV``,
``BAD_NEXT_HEADER`` (tunnel mode, next header not 4/41) and ``ECN``.  For
next header 108 in tunnel mode (IPComp inside AH, RFC 3173, as Linux and
strongSwan send it) the ``BAD_NEXT_HEADER`` comes with the verified packet
without AH (outer header, protocol 108, IPComp): a caller that does IPComp
continues from there, the codec has no inner packet to return.  An
unexpected exception is logged and counted as ``MALFORMED`` (tests set
``RAISE_UNEXPECTED`` to see it instead).  Only building a context raises.

What the ICV covers (RFC 4302 §3.3.3)
-------------------------------------
The whole packet as the receiver will see it, with the fields that routers
may change treated as zero:

- IPv4 (§3.3.3.1.1): TOS (DSCP+ECN), flags + fragment offset, TTL and header
  checksum are zeroed.  Options are classified by RFC 4302 Appendix A: End of
  List, No Operation, Security, Extended Security, Commercial Security, Router
  Alert and Sender Directed Multi-Destination Delivery are immutable and
  covered; every other option (Record Route, Timestamp, the source routes, and
  any option we do not know) is zeroed *as a whole*, type and length
  included, because IPv4 has no mutability bit (§3.3.3.1.1.2).  With a loose
  or strict source route the destination address is "mutable but
  predictable": the ICV uses the final destination, which is the last address
  of the route while the route is not yet used up and the destination field
  once it is (RFC 791 source routing).  That is what Linux does on output;
  scapy leaves the destination as it is, which only agrees for packets that
  are not actually source-routed (see tests/test_ah_scapy.py).
- IPv6 (§3.3.3.1.2): traffic class, flow label and hop limit are zeroed.  In
  the hop-by-hop and destination options headers in front of AH, the data of
  each option whose type has the "may change en route" bit (0x20, RFC 8200
  §4.2) is zeroed, its type and length are kept.  A routing header of type 0
  (deprecated by RFC 5095 but still parseable) or type 2 (Mobile IPv6,
  RFC 6275) is "mutable but predictable": the ICV is computed over the header
  as it will arrive, with segments left 0, the address list rotated as the
  hops will rewrite it and the final address in the destination field (as
  Linux ``ipv6_rearrange_rthdr``).  Any other routing type is covered as is
  when segments left is 0; with segments left > 0 its arrival form cannot be
  predicted and the packet is dropped as MALFORMED.  Extension headers after AH are payload and are covered
  verbatim, as everything in a tunnel-mode inner packet is.
- AH itself with the ICV field zeroed; explicit padding after the ICV is
  covered as sent (§3.3.3.2.1).
- With extended sequence numbers (ESN) the high 32 bits of the sequence number
  are appended after the packet (§3.3.3.2.2, "implicitly ... immediately after
  the end of the payload"); only the low 32 bits are on the wire (§2.5.1).

ICV padding (RFC 4302 §2.6, §3.3.3.2.1)
---------------------------------------
AH must be a multiple of 32 bits in IPv4 and 64 bits in IPv6.  The fixed part
is 12 bytes, so HMAC-SHA2-256-128 (16-byte ICV) is 28 bytes in IPv4 and 32
(4 bytes of padding) in IPv6; HMAC-SHA1-96 is 24 in both.  scapy does the
same.  Linux pads IPv4 AH to 64 bits too unless the SA has ``flag align4``, and
its receiver accepts only that length; ``ipv4_alignment=8`` makes us send the
Linux form.  Inbound we accept both lengths in IPv4 and only the 64-bit one in
IPv6.

Fragments
---------
AH is computed over whole datagrams: outbound before fragmentation (§3.3.4),
inbound after reassembly (§3.4.1: a fragment offered to AH "MUST" be
discarded).  An IPv4 fragment, or an IPv6 packet with a fragment header in
front of AH, is MALFORMED in both directions (in tunnel mode an inner
fragment is just payload).

Replay
------
The anti-replay window is not ours: ``decap`` takes any object with the
:class:`AntiReplay` interface (:class:`ipsecd.replay.ReplayWindow` has it),
calls ``check(seq_low32)`` before the ICV (cheap rejection, RFC 4302
§3.4.3) and ``update(full_seq)`` only after the ICV verified.  ``check`` also
supplies the high 32 bits with ESN (RFC 4303 Appendix A2).  Without a window
(``replay=None``) the high bits are taken as 0, so an ESN SA should always
get one (a window of size 0 still infers the high bits).

Mode ``any``
------------
setkey's default mode (``-m any``) lets the policy choose; pass ``mode=`` to
:class:`AhContext` then.  Without it, ``any`` means transport, as in Linux's
PF_KEY, which maps ``IPSEC_MODE_ANY`` to transport.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Final, Protocol

from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpProto
from ipsecd.packet import (
    Buffer,
    PacketError,
    PacketTooBig,
    TruncatedPacket,
    check_inner,
    ip_datagram,
    ipv4_is_fragment,
    ipv6_find_header,
    ipv6_ipsec_offset,
    merge_ecn,
    remove_header,
    rewrite_front,
    tunnel_header,
)
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import TransformError, integ_algo, warn_legacy

log = logging.getLogger("ipsecd.ah")

#: Tests set this to re-raise unexpected exceptions instead of counting them
#: as ``MALFORMED`` (as :mod:`ipsecd.esp` does): the fuzzers prove there are none.
RAISE_UNEXPECTED = False

#: Next header, payload length (32-bit words minus 2), reserved, SPI, sequence number (RFC 4302 §2).
AH_HEADER: Final = struct.Struct("!BBHII")
AH_FIXED_BYTES: Final = 12
_U32 = struct.Struct("!I")

#: RFC 4302 Appendix A.1: the IPv4 options that are immutable and covered by the ICV,
#: by their full type octet (copied flag, class and number, RFC 791).
IPV4_IMMUTABLE_OPTIONS: Final = frozenset({
    0x00,  # End of Options List (RFC 791)
    0x01,  # No Operation (RFC 791)
    0x82,  # Security (RFC 1108)
    0x85,  # Extended Security (RFC 1108)
    0x86,  # Commercial Security (CIPSO)
    0x94,  # Router Alert (RFC 2113)
    0x95,  # Sender Directed Multi-Destination Delivery (RFC 1770)
})
_IPV4_LSRR: Final = 0x83
_IPV4_SSRR: Final = 0x89
_IPV6_OPTION_MUTABLE: Final = 0x20  # "option data may change en route" (RFC 8200 §4.2)
_IPV6_OPTION_HEADERS: Final = frozenset({IpProto.HOPOPT, IpProto.IPV6_OPTS})
_TUNNEL_NEXT_HEADERS: Final = frozenset({IpProto.IPV4, IpProto.IPV6})


class AntiReplay(Protocol):
    """The anti-replay window as ``decap`` uses it (:class:`ipsecd.replay.ReplayWindow` implements it)."""

    def check(self, seq_low: int, /) -> tuple[Drop, int]:
        """Before the ICV: ``(Drop.OK, full 64-bit seq)`` or ``(Drop.REPLAY, _)``."""
        ...

    def update(self, seq: int, /) -> None:
        """After the ICV verified: mark the full sequence number as seen."""
        ...


def encap_guard(encapsulate: Callable[[], bytes], what: str) -> tuple[Drop, bytes]:
    """Run an encapsulation; turn its refusals into drops (never raises)."""
    try:
        return Drop.OK, encapsulate()
    except TruncatedPacket:
        return Drop.RUNT, b""
    except PacketTooBig:
        return Drop.MTU, b""
    except (PacketError, struct.error, IndexError):
        return Drop.MALFORMED, b""
    except Exception:
        if RAISE_UNEXPECTED:
            raise
        log.exception("unexpected error in %s encapsulation", what)
        return Drop.MALFORMED, b""


def decap_guard(decapsulate: Callable[[], tuple[Drop, bytes]], what: str) -> tuple[Drop, bytes]:
    """Run a decapsulation; turn parse failures into drops (never raises)."""
    try:
        return decapsulate()
    except TruncatedPacket:
        return Drop.RUNT, b""
    except (PacketError, struct.error, IndexError):
        return Drop.MALFORMED, b""
    except Exception:
        if RAISE_UNEXPECTED:
            raise
        log.exception("unexpected error in %s decapsulation", what)
        return Drop.MALFORMED, b""


# --- The ICV's view of the headers (RFC 4302 §3.3.3.1) ----------------------------------


def ipv4_icv_header(header: Buffer, ihl: int) -> bytearray:
    """A copy of the IPv4 header with the mutable fields zeroed (RFC 4302 §3.3.3.1.1)."""
    view = bytearray(header[:ihl])
    view[1] = 0  # DSCP and ECN
    view[6:9] = b"\x00\x00\x00"  # flags, fragment offset, TTL
    view[10:12] = b"\x00\x00"  # header checksum
    final_destination = _zero_ipv4_options(view, ihl)
    if final_destination is not None:
        view[16:20] = final_destination
    return view


def _zero_ipv4_options(view: bytearray, ihl: int) -> bytes | None:
    # RFC 4302 §3.3.3.1.1.2 and Appendix A: zero every mutable option as a
    # whole.  Returns the final destination of a source route still in progress.
    final_destination = None
    i = 20
    while i < ihl:
        kind = view[i]
        if kind == 0x00:  # End of Options List: the rest is padding, covered as is
            break
        if kind == 0x01:  # No Operation
            i += 1
            continue
        if i + 2 > ihl:
            raise PacketError("truncated IPv4 option")
        length = view[i + 1]
        if length < 2 or i + length > ihl:
            raise PacketError("bad IPv4 option length")
        if kind not in IPV4_IMMUTABLE_OPTIONS:
            if kind in (_IPV4_LSRR, _IPV4_SSRR) and length >= 7:
                # RFC 791: the pointer (1-based) names the next address; past
                # the end, the route is used up and the destination field
                # already holds the final destination.
                pointer = view[i + 2]
                if pointer + 3 <= length:
                    final_destination = bytes(view[i + length - 4 : i + length])
            view[i : i + length] = bytes(length)
        i += length
    return final_destination


def ipv6_icv_header(header: Buffer, end: int) -> bytearray:
    """A copy of the IPv6 header and extension headers up to ``end``, as the ICV sees them.

    Traffic class, flow label and hop limit are zeroed (RFC 4302 §3.3.3.1.2.1),
    mutable options are zeroed and routing headers put in their arrival form
    (§3.3.3.1.2.2, see the module docstring).
    """
    view = bytearray(header[:end])
    view[0:4] = b"\x60\x00\x00\x00"  # version 6; traffic class and flow label zeroed
    view[7] = 0  # hop limit
    nh = view[6]
    off = 40
    while off < end:
        if off + 8 > end:
            raise TruncatedPacket("truncated IPv6 extension header")
        length = (view[off + 1] + 1) * 8
        if off + length > end:
            raise TruncatedPacket("truncated IPv6 extension header")
        if nh in _IPV6_OPTION_HEADERS:
            _zero_ipv6_options(view, off + 2, off + length)
        elif nh == IpProto.IPV6_ROUTE:
            _routing_header_on_arrival(view, off, length)
        else:
            raise PacketError(f"extension header {nh} cannot precede AH")
        nh = view[off]
        off += length
    return view


def _zero_ipv6_options(view: bytearray, start: int, end: int) -> None:
    # RFC 8200 §4.2: option type, length, data.  Pad1 is a lone zero byte.
    i = start
    while i < end:
        kind = view[i]
        if kind == 0:
            i += 1
            continue
        if i + 2 > end:
            raise PacketError("truncated IPv6 option")
        length = view[i + 1]
        if i + 2 + length > end:
            raise PacketError("IPv6 option overruns its header")
        if kind & _IPV6_OPTION_MUTABLE:
            view[i + 2 : i + 2 + length] = bytes(length)
        i += 2 + length


def _routing_header_on_arrival(view: bytearray, off: int, length: int) -> None:
    # RFC 4302 §3.3.3.1.2.2 / Appendix A.2: the routing header is mutable but
    # predictable; compute it as the final destination will receive it.
    routing_type = view[off + 2]
    segments_left = view[off + 3]
    if segments_left == 0:
        return
    if routing_type not in (0, 2):
        raise PacketError(f"routing header type {routing_type} with segments left cannot be predicted")
    count, rest = divmod(length - 8, 16)
    if rest or segments_left > count:
        raise PacketError("bad type 0/2 routing header")
    base = off + 8
    addresses = [bytes(view[base + 16 * k : base + 16 * (k + 1)]) for k in range(count)]
    visited = count - segments_left
    # Each hop swaps the destination field with the next listed address
    # (type 0: RFC 2460 §4.4, the processing RFC 5095 deprecated; type 2:
    # RFC 6275 §6.4): at the end the destination field holds the last address
    # and the list holds the hops, starting with the current destination.
    arrival = [*addresses[:visited], bytes(view[24:40]), *addresses[visited:-1]]
    view[24:40] = addresses[-1]
    view[base : base + 16 * count] = b"".join(arrival)
    view[off + 3] = 0


def _align(length: int, to: int) -> int:
    return (length + to - 1) // to * to


# --- The codec ----------------------------------------------------------------------------


class AhContext:
    """The AH codec for one SA (RFC 4302).  See the module docstring.

    ``allow_legacy`` is the operator's switch for HMAC-MD5-96 (building a
    context with it logs a warning); ``mode``
    overrides an SA whose mode is ``any``; ``ipv4_alignment`` is 4 (RFC 4302,
    the default) or 8 (Linux without ``flag align4``) for the AH we send in IPv4.
    """

    __slots__ = (
        "_accept_v4",
        "_accept_v6",
        "_ah_len_v4",
        "_ah_len_v6",
        "_integrity",
        "_seq_limit",
        "_zero_icv",
        "dst",
        "esn",
        "icv_bytes",
        "mode",
        "spi",
        "src",
    )

    def __init__(
        self,
        sa: SecurityAssociation,
        *,
        allow_legacy: bool = False,
        mode: Mode | None = None,
        ipv4_alignment: int = 4,
    ) -> None:
        if sa.protocol != IpProto.AH:
            raise ValueError(f"an AH context needs an AH SA, not {sa.protocol.name}")
        if sa.spi < 256:
            # RFC 4302 §2.4: 0 is for local use, 1..255 are reserved by IANA.
            raise ValueError(f"SPI {sa.spi} is reserved (RFC 4302 §2.4)")
        if sa.auth == IntegId.NONE:
            raise TransformError("AH needs an integrity algorithm")
        if ipv4_alignment not in (4, 8):
            raise ValueError("ipv4_alignment is 4 or 8")
        algo = integ_algo(sa.auth, allow_legacy=allow_legacy)
        self._integrity = algo.new(sa.auth_key)
        self.spi = sa.spi
        self.src = sa.src
        self.dst = sa.dst
        self.esn = sa.esn
        self._seq_limit = (1 << 64 if sa.esn else 1 << 32) - 1
        self.icv_bytes = algo.icv_bytes
        chosen = mode if mode is not None and mode is not Mode.ANY else sa.mode
        self.mode = Mode.TUNNEL if chosen is Mode.TUNNEL else Mode.TRANSPORT
        fixed = AH_FIXED_BYTES + algo.icv_bytes
        self._ah_len_v4 = _align(fixed, ipv4_alignment)
        self._ah_len_v6 = _align(fixed, 8)  # RFC 4302 §2.2: 64-bit multiple in IPv6
        self._accept_v4 = frozenset({_align(fixed, 4), _align(fixed, 8)})
        self._accept_v6 = frozenset({self._ah_len_v6})
        self._zero_icv = bytes(algo.icv_bytes)
        warn_legacy(algo)  # once per SA, now that its context is built

    def ah_length(self, version: int) -> int:
        """Bytes of AH (with ICV and padding) this context sends in an IP ``version`` header."""
        return self._ah_len_v4 if version == 4 else self._ah_len_v6

    # -- outbound ----------------------------------------------------------------------

    def encap(self, packet: Buffer, seq: int) -> tuple[Drop, bytes]:
        """Protect ``packet`` with AH, sequence number ``seq`` (64-bit with ESN).

        Returns ``(Drop.OK, packet)`` or ``(reason, b"")``, never raises:
        ``SEQ_OVERFLOW`` for a sequence number 0 or beyond the SA's space (the
        caller owns the counter and must rekey before it cycles, RFC 4302
        §3.3.2), ``RUNT``/``MALFORMED`` for a packet that is not a whole IP
        datagram (truncated, not IP, a fragment in transport mode), ``MTU``
        when the result would not fit a 16-bit IP length.
        """
        if not 0 < seq <= self._seq_limit:
            return Drop.SEQ_OVERFLOW, b""
        return encap_guard(lambda: self._encap(packet, seq), "AH")

    def _encap(self, packet: Buffer, seq: int) -> bytes:
        seq_low = seq & 0xFFFFFFFF
        seq_hi = _U32.pack(seq >> 32) if self.esn else b""
        data = ip_datagram(packet)
        if self.mode is Mode.TUNNEL:
            return self._encap_tunnel(data, seq_low, seq_hi)
        if data[0] >> 4 == 4:
            if ipv4_is_fragment(data):
                raise PacketError("AH protects whole datagrams (RFC 4302 §3.3.4)")
            off, nh, nh_field = (data[0] & 0x0F) * 4, data[9], 9
        else:
            off, nh, nh_field = ipv6_ipsec_offset(data)
        ah = self._ah_header(nh, self.ah_length(data[0] >> 4), seq_low)
        front = rewrite_front(data, off, nh_field, IpProto.AH, len(data) + len(ah))
        payload = memoryview(data)[off:]
        icv = self._integrity.compute(self._icv_header(front, off), ah, payload, seq_hi)
        ah[AH_FIXED_BYTES : AH_FIXED_BYTES + self.icv_bytes] = icv
        return b"".join((front, ah, payload))

    def _encap_tunnel(self, inner: bytes, seq_low: int, seq_hi: bytes) -> bytes:
        next_header = IpProto.IPV4 if inner[0] >> 4 == 4 else IpProto.IPV6
        ah = self._ah_header(next_header, self.ah_length(self.src.version), seq_low)
        # The outer IPv4 identification only has to be unique per source,
        # destination and protocol while packets live (RFC 6864): the low bits
        # of the sequence number are, without any shared state.
        outer = tunnel_header(self.src, self.dst, IpProto.AH, inner, len(ah) + len(inner),
                              ident=seq_low & 0xFFFF)
        icv = self._integrity.compute(self._icv_header(outer, len(outer)), ah, inner, seq_hi)
        ah[AH_FIXED_BYTES : AH_FIXED_BYTES + self.icv_bytes] = icv
        return b"".join((outer, ah, inner))

    def _ah_header(self, next_header: int, length: int, seq_low: int) -> bytearray:
        # RFC 4302 §2: the ICV and padding are left zero, as the ICV computation wants them.
        ah = bytearray(length)
        AH_HEADER.pack_into(ah, 0, next_header, length // 4 - 2, 0, self.spi, seq_low)
        return ah

    @staticmethod
    def _icv_header(data: Buffer, end: int) -> bytearray:
        if data[0] >> 4 == 4:
            return ipv4_icv_header(data, end)
        return ipv6_icv_header(data, end)

    # -- inbound -----------------------------------------------------------------------

    def decap(self, packet: Buffer, replay: AntiReplay | None = None) -> tuple[Drop, bytes]:
        """Verify and remove AH: ``(Drop.OK, packet)`` or ``(reason, b"")``.

        Transport mode gives the packet without AH, tunnel mode the inner
        packet.  Never raises for any input bytes.
        """
        return decap_guard(lambda: self._decap(packet, replay), "AH")

    def _decap(self, packet: Buffer, replay: AntiReplay | None) -> tuple[Drop, bytes]:
        data = ip_datagram(packet)
        if data[0] >> 4 == 4:
            if data[9] != IpProto.AH:
                return Drop.MALFORMED, b""
            if ipv4_is_fragment(data):
                return Drop.MALFORMED, b""  # RFC 4302 §3.4.1: fragments MUST be discarded
            off, nh_field = (data[0] & 0x0F) * 4, 9
            accepted = self._accept_v4
        else:
            off, proto, nh_field = ipv6_find_header(data)
            if proto != IpProto.AH:
                return Drop.MALFORMED, b""
            accepted = self._accept_v6
        if off + AH_FIXED_BYTES > len(data):
            return Drop.RUNT, b""
        next_header, words, _reserved, spi, seq_low = AH_HEADER.unpack_from(data, off)
        if spi != self.spi:
            return Drop.UNKNOWN_SPI, b""
        end = off + (words + 2) * 4
        if end - off not in accepted:
            return Drop.MALFORMED, b""
        if end > len(data):
            return Drop.RUNT, b""
        seq = seq_low
        if replay is not None:
            verdict, seq = replay.check(seq_low)
            if verdict != Drop.OK:
                return verdict, b""
        icv_start = off + AH_FIXED_BYTES
        icv_end = icv_start + self.icv_bytes
        view = memoryview(data)
        if not self._integrity.verify(
            view[icv_start:icv_end],
            self._icv_header(data, off),
            view[off:icv_start],
            self._zero_icv,
            view[icv_end:],  # padding, then the payload
            _U32.pack(seq >> 32) if self.esn else b"",
        ):
            return Drop.ICV, b""
        if replay is not None:
            replay.update(seq)
        if self.mode is Mode.TUNNEL:
            if next_header == IpProto.IPCOMP:  # see the module docstring
                return Drop.BAD_NEXT_HEADER, remove_header(data, off, end, nh_field, next_header)
            if next_header not in _TUNNEL_NEXT_HEADERS:
                return Drop.BAD_NEXT_HEADER, b""
            inner = data[end:]
            if not check_inner(inner, next_header):
                return Drop.MALFORMED, b""
            merged = merge_ecn(data, inner)
            if merged is None:
                return Drop.ECN, b""
            return Drop.OK, merged
        return Drop.OK, remove_header(data, off, end, nh_field, next_header)


def spi_of(packet: Buffer) -> int | None:
    """The SPI of the AH header in ``packet`` (for the SAD lookup), or None."""
    try:
        data = ip_datagram(packet)
        if data[0] >> 4 == 4:
            off = (data[0] & 0x0F) * 4
            if data[9] != IpProto.AH:
                return None
        else:
            off, proto, _ = ipv6_find_header(data)
            if proto != IpProto.AH:
                return None
        if off + 8 > len(data):
            return None
        spi: int = _U32.unpack_from(data, off + 4)[0]
        return spi
    except (PacketError, struct.error, IndexError):
        return None
