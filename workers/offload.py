"""TUN offloads: the virtio-net header, receive coalescing (GRO) for TCP and UDP, checksums.

Why
---
Every packet written to the TUN device runs the kernel's whole receive and
forwarding path inline, in the worker's own system call: about 9-10 µs of
CPU per packet on the machines we measured, more than decrypting it.  With
``IFF_VNET_HDR`` a write may carry one *large* TCP packet plus a
``struct virtio_net_hdr`` saying "segment me at this size" (GSO): the kernel
then forwards it once, hands it whole to a local receiver or a GSO-capable
device (veth, most NICs), and segments it only where it must.  So the
decapsulating worker coalesces consecutive segments of one TCP flow from a
batch into one such write, as the kernel's own GRO does for a NIC; and
UDP datagrams of one flow and one size the same way (UDP_L4 GSO, which the
kernel cuts back into the same datagrams before any socket sees them).

What is coalesced (:class:`Coalescer`)
--------------------------------------
TCP: only what Linux's ``tcp_gro_receive`` would coalesce, so the result is
the same stream the peer sent, cut at the same places when the kernel
segments it again:

* IPv4 without options, DF set and not a fragment; or IPv6 whose next
  header is TCP;
* a payload, flags ACK (PSH allowed on the last segment, which then ends the
  packet), no SYN / FIN / RST / URG / CWR / ECE;
* equal, across the segments: TOS / traffic class and flow label, TTL / hop
  limit, acknowledgment number, window, data offset and every TCP option
  byte (timestamps included); consecutive sequence numbers; every segment
  but the last exactly ``gso_size`` (the first one's payload) long;
* **a valid TCP checksum on every segment.**  The written packet says
  ``NEEDS_CSUM`` (checksum to be completed, ``CHECKSUM_PARTIAL``): whoever
  segments it computes fresh checksums, and a local receiver trusts it.  So
  a segment damaged before it was encrypted (the ICV only covers what the
  peer gateway sent) must never enter one: each is checked first (about
  3 µs of Python for 1400 bytes, against the 8+ µs the coalescing saves).
  One that fails is written alone, unchanged, and the receiver drops it as
  it would have anyway.

UDP: datagrams of one flow (addresses and ports) with equal TOS / TTL (IPv6:
traffic class, flow label, hop limit), IPv4 with DF and a non-zero checksum,
every checksum valid, every payload as long as the first but the last, which
ends the packet; at most 64 datagrams (the kernel's ``UDP_MAX_SEGMENTS``).

A packet that cannot be coalesced flushes its own flow first, so the order
within a flow never changes; different flows may be reordered, which TCP
and the kernel's GRO allow.  The coalescer holds packets only within one
batch of the worker loop: :meth:`Coalescer.flush` runs before the worker
waits again, so no latency is added.

Checksums
---------
As :func:`ipsecd.packet.checksum` does: since 2**16 is 1 modulo 0xFFFF, the
one's complement sum of an even-length byte string's 16-bit words is
congruent to the string read as one big-endian integer, modulo 0xFFFF
(``int.from_bytes(data, "big") % 0xFFFF``, in C).  The segment check in
:meth:`Coalescer.push` inlines it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from ipsecd.packet import checksum, fold_checksum

Buffer = bytes | bytearray | memoryview

# linux/virtio_net.h: struct virtio_net_hdr, in the host's byte order (a TUN set up
# without TUNSETVNETLE / TUNSETVNETBE uses the legacy virtio rule: native).
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size  # 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
ZERO_HDR = bytes(VNET_HDR_LEN)  # a plain packet: no offload, checksums complete

TCP = 6
UDP = 17
UDP_MAX_SEGMENTS = 64  # the kernel's limit on one UDP GSO packet (UDP_MAX_SEGMENTS)
ACK = 0x10
PSH = 0x08
MAX_PACKET = 65535  # the IPv4 total length / IPv6 payload length field
MAX_FLOWS = 16  # flows held at once; the oldest is written out to make room

# IPv4 header without options + TCP header up to the options:
#  ver/ihl tos total id frag ttl proto csum addrs | ports seq ack off flags window check urg
_V4_TCP = struct.Struct("!BBHHHBBH8s4sIIBBHHH")
# IPv6 header + TCP header: ver/tc/flow plen next hlim addrs | ports seq ack off flags window
_V6_TCP = struct.Struct("!IHBB32s4sIIBBHHH")
_V4_UDP = struct.Struct("!BBHHHBBH8s4sHH")  # ... addrs | ports length checksum
_V6_UDP = struct.Struct("!IHBB32s4sHH")
_U16 = struct.Struct("!H")
_LIMIT = {4: VNET_HDR_LEN + MAX_PACKET, 6: VNET_HDR_LEN + 40 + MAX_PACKET}  # arena bytes
_ARENA = VNET_HDR_LEN + 40 + MAX_PACKET


def pseudo_sum(addrs: Buffer, length: int, proto: int = TCP) -> int:
    """The pseudo-header's contribution (RFC 793 / RFC 8200 §8.1), modulo 0xFFFF."""
    return (int.from_bytes(addrs, "big") + length + proto) % 0xFFFF


def partial_checksum(addrs: Buffer, length: int, proto: int = TCP) -> int:
    """What a ``NEEDS_CSUM`` (CHECKSUM_PARTIAL) packet carries in its checksum field: the
    pseudo-header's sum, folded and not inverted - Linux's ``~csum_tcpudp_magic()``."""
    return 0xFFFF - fold_checksum(pseudo_sum(addrs, length, proto))


class _Flow:
    """A packet being built: the first segment's headers, then payloads."""

    __slots__ = ("arena", "count", "end", "hl", "mss", "next_seq", "proto", "psh", "sig",
                 "version")

    def __init__(self, arena: bytearray) -> None:
        self.arena = arena
        self.end = 0
        self.count = 0
        self.hl = 0
        self.mss = 0
        self.next_seq = 0
        self.sig: tuple[Any, ...] = ()
        self.version = 4
        self.psh = 0
        self.proto = TCP


class Coalescer:
    """Coalesce TCP segments / UDP datagrams into GSO writes to a TUN with IFF_VNET_HDR.

    ``push(buf, s, end)`` takes a plaintext IP packet at ``buf[s:end]`` (the
    bytes are copied or written before it returns, so ``buf`` may be reused);
    ``flush()`` writes out whatever is held.  ``fd`` is the TUN queue.
    ``on_error(exc, packets)`` is called for a failed write, with the number
    of packets it held (nothing is raised).
    """

    def __init__(self, fd: int, on_error: Callable[[OSError, int], None]) -> None:
        self.fd = fd
        self.on_error = on_error
        self.flows: dict[bytes, _Flow] = {}
        self._free: list[bytearray] = []
        # What the worker reports: packets pushed, writes made, segments that
        # went out inside a coalesced write, and segments refused for their checksum.
        self.pushed = 0
        self.writes = 0
        self.coalesced = 0
        self.bad_checksum = 0

    # -- the hot path -----------------------------------------------------------------

    def push(self, buf: memoryview, s: int, end: int) -> None:
        self.pushed += 1
        b0 = buf[s]
        if b0 == 0x45 and end - s >= 40 and buf[s + 9] == TCP:
            (_, tos, total, _, frag, ttl, _, _, addrs, ports, seq, ack, off, flags, window,
             _, urg) = _V4_TCP.unpack_from(buf, s)
            hl = 20
            if frag != 0x4000 or total != end - s:  # DF only; the length is the packet's
                return self._single(buf, s, end, addrs + ports)
            sig: tuple[Any, ...] = (tos, ttl, ack, off, flags & ~PSH, window, urg)
            version = 4
        elif b0 >> 4 == 6 and end - s >= 60 and buf[s + 6] == TCP:
            (vtf, plen, _, hlim, addrs, ports, seq, ack, off, flags, window, _,
             urg) = _V6_TCP.unpack_from(buf, s)
            hl = 40
            if plen != end - s - 40:
                return self._single(buf, s, end, addrs + ports)
            sig = (vtf, hlim, ack, off, flags & ~PSH, window, urg)
            version = 6
        else:
            return self._push_udp(buf, s, end)
        key = addrs + ports
        thl = (off >> 4) << 2
        data = s + hl + thl
        n = end - data
        if thl < 20 or n <= 0 or flags & ~PSH != ACK or urg:
            return self._single(buf, s, end, key)
        if thl > 20:
            sig += (bytes(buf[s + hl + 20:data]),)
        tcp_len = end - s - hl
        # The segment's checksum must be right before its bytes join others (module doc).
        if (int.from_bytes(buf[s + hl:end], "big") << ((tcp_len & 1) << 3)) % 0xFFFF + \
                (int.from_bytes(addrs, "big") + tcp_len + TCP) % 0xFFFF not in (0, 0xFFFF):
            self.bad_checksum += 1
            return self._single(buf, s, end, key)
        flows = self.flows
        f = flows.get(key)
        if f is not None:
            # The length field (IPv4 total, IPv6 payload) must hold the result.
            if (seq == f.next_seq and sig == f.sig and n <= f.mss
                    and f.end + n <= _LIMIT[version]):
                arena = f.arena
                arena[f.end:f.end + n] = buf[data:end]
                f.end += n
                f.count += 1
                f.next_seq = (seq + n) & 0xFFFFFFFF
                f.psh |= flags & PSH
                if n < f.mss or flags & PSH:
                    self._emit(key, f)  # a short or pushed segment ends the packet
                return None
            self._emit(key, f)
        elif len(flows) >= MAX_FLOWS:
            oldest = next(iter(flows))
            self._emit(oldest, flows[oldest])
        if flags & PSH:
            return self._write1(buf[s:end])  # nothing may follow it: as it is
        f = _Flow(self._free.pop() if self._free else bytearray(_ARENA))
        length = end - s
        f.arena[VNET_HDR_LEN:VNET_HDR_LEN + length] = buf[s:end]
        f.end = VNET_HDR_LEN + length
        f.count = 1
        f.hl = hl + thl
        f.mss = n
        f.next_seq = (seq + n) & 0xFFFFFFFF
        f.sig = sig
        f.version = version
        f.proto = TCP
        flows[key] = f
        return None

    def _push_udp(self, buf: memoryview, s: int, end: int) -> None:
        """UDP datagrams of one flow, all of one size but the last: one UDP_L4 GSO write."""
        b0 = buf[s]
        if b0 == 0x45 and end - s >= 28 and buf[s + 9] == UDP:
            (_, tos, total, _, frag, ttl, _, _, addrs, ports, ulen,
             ucsum) = _V4_UDP.unpack_from(buf, s)
            hl = 20
            # DF only (RFC 6864: then the ID means nothing); no checksum: alone.
            ok = frag == 0x4000 and total == end - s and ucsum != 0
            sig: tuple[Any, ...] = (tos, ttl)
            version = 4
        elif b0 >> 4 == 6 and end - s >= 48 and buf[s + 6] == UDP:
            vtf, plen, _, hlim, addrs, ports, ulen, ucsum = _V6_UDP.unpack_from(buf, s)
            hl = 40
            ok = plen == end - s - 40
            sig = (vtf, hlim)
            version = 6
        else:
            return self._write1(buf[s:end])
        key = addrs + ports + b"u"
        n = ulen - 8
        if not ok or ulen != end - s - hl or n <= 0:
            return self._single(buf, s, end, key)
        if (int.from_bytes(buf[s + hl:end], "big") << ((ulen & 1) << 3)) % 0xFFFF + \
                (int.from_bytes(addrs, "big") + ulen + UDP) % 0xFFFF not in (0, 0xFFFF):
            self.bad_checksum += 1
            return self._single(buf, s, end, key)
        flows = self.flows
        f = flows.get(key)
        if f is not None:
            if (sig == f.sig and n <= f.mss and f.count < UDP_MAX_SEGMENTS
                    and f.end + n <= _LIMIT[version]):
                arena = f.arena
                arena[f.end:f.end + n] = buf[s + hl + 8:end]
                f.end += n
                f.count += 1
                if n < f.mss:
                    self._emit(key, f)  # a shorter datagram is the last one
                return None
            self._emit(key, f)
        elif len(flows) >= MAX_FLOWS:
            oldest = next(iter(flows))
            self._emit(oldest, flows[oldest])
        f = _Flow(self._free.pop() if self._free else bytearray(_ARENA))
        length = end - s
        f.arena[VNET_HDR_LEN:VNET_HDR_LEN + length] = buf[s:end]
        f.end = VNET_HDR_LEN + length
        f.count = 1
        f.hl = hl + 8
        f.mss = n
        f.sig = sig
        f.version = version
        f.proto = UDP
        flows[key] = f
        return None

    def flush(self) -> None:
        """Write out every packet held (end of a batch)."""
        flows = self.flows
        while flows:
            key = next(iter(flows))
            self._emit(key, flows[key])

    # -- writing --------------------------------------------------------------------------

    def _single(self, buf: memoryview, s: int, end: int, key: bytes) -> None:
        """A packet that is not coalesced: after whatever its flow holds."""
        f = self.flows.get(key)
        if f is not None:
            self._emit(key, f)
        self._write1(buf[s:end])

    def _write1(self, packet: Buffer) -> None:
        try:
            os.writev(self.fd, (ZERO_HDR, packet))
            self.writes += 1
        except OSError as exc:
            self.on_error(exc, 1)

    def _emit(self, key: bytes, f: _Flow) -> None:
        del self.flows[key]
        arena = f.arena
        view = memoryview(arena)
        try:
            if f.count == 1:
                # A lone segment goes out exactly as it came (its own checksum).
                arena[:VNET_HDR_LEN] = ZERO_HDR
                os.write(self.fd, view[:f.end])
            else:
                h = VNET_HDR_LEN
                length = f.end - h
                ip_hl = 20 if f.version == 4 else 40
                tcp_len = length - ip_hl
                if f.version == 4:
                    struct.pack_into("!H", arena, h + 2, length)
                    struct.pack_into("!H", arena, h + 10, 0)
                    struct.pack_into("!H", arena, h + 10, checksum(view[h:h + 20]))
                    addrs = view[h + 12:h + 20]
                    gso = GSO_TCPV4
                else:
                    struct.pack_into("!H", arena, h + 4, tcp_len)
                    addrs = view[h + 8:h + 40]
                    gso = GSO_TCPV6
                t = h + ip_hl
                # CHECKSUM_PARTIAL: the field holds the pseudo-header sum (not inverted).
                if f.proto == TCP:
                    if f.psh:
                        arena[t + 13] |= PSH
                    struct.pack_into("!H", arena, t + 16, partial_checksum(addrs, tcp_len))
                    VNET_HDR.pack_into(arena, 0, F_NEEDS_CSUM, gso, f.hl, f.mss, ip_hl, 16)
                else:
                    struct.pack_into("!HH", arena, t + 4, tcp_len,
                                     partial_checksum(addrs, tcp_len, UDP))
                    VNET_HDR.pack_into(arena, 0, F_NEEDS_CSUM, GSO_UDP_L4, f.hl, f.mss, ip_hl, 6)
                os.write(self.fd, view[:f.end])
                self.coalesced += f.count
            self.writes += 1
        except OSError as exc:
            self.on_error(exc, f.count)
        finally:
            view.release()
            if len(self._free) < MAX_FLOWS:
                self._free.append(arena)


# -- segmentation (the other direction, and tests) -------------------------------------------


def segment_tcp(packet: Buffer, mss: int) -> list[bytearray]:
    """Cut a large TCP/IP packet into segments of ``mss`` payload bytes, as TSO would.

    The inverse of coalescing: sequence numbers advance, FIN and PSH stay on
    the last segment and CWR on the first, IPv4 IDs count up from the
    first, and every segment gets complete IP and TCP checksums.
    """
    p = memoryview(packet)
    version = p[0] >> 4
    if version == 4:
        ip_hl = (p[0] & 15) << 2
        addrs = bytes(p[12:20])
        ident = _U16.unpack_from(p, 4)[0]
    elif version == 6:
        ip_hl = 40
        addrs = bytes(p[8:40])
        ident = 0
    else:
        raise ValueError("not an IP packet")
    thl = (p[ip_hl + 12] >> 4) << 2
    hdr = ip_hl + thl
    seq = struct.unpack_from("!I", p, ip_hl + 4)[0]
    flags = p[ip_hl + 13]
    payload = p[hdr:]
    out = []
    offsets = range(0, max(len(payload), 1), mss)
    for i, at in enumerate(offsets):
        chunk = payload[at:at + mss]
        seg = bytearray(p[:hdr]) + chunk
        last = i == len(offsets) - 1
        f = flags
        if i:
            f &= ~0x80  # CWR on the first segment only
        if not last:
            f &= ~(0x01 | PSH)  # FIN and PSH on the last
        seg[ip_hl + 13] = f
        struct.pack_into("!I", seg, ip_hl + 4, (seq + at) & 0xFFFFFFFF)
        if version == 4:
            struct.pack_into("!HH", seg, 2, len(seg), (ident + i) & 0xFFFF)
            struct.pack_into("!H", seg, 10, 0)
            struct.pack_into("!H", seg, 10, checksum(seg[:ip_hl]))
        else:
            struct.pack_into("!H", seg, 4, len(seg) - 40)
        tcp_len = len(seg) - ip_hl
        struct.pack_into("!H", seg, ip_hl + 16, 0)
        struct.pack_into("!H", seg, ip_hl + 16,
                         checksum(memoryview(seg)[ip_hl:], pseudo_sum(addrs, tcp_len)))
        out.append(seg)
    return out


__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_HDR",
    "Coalescer",
    "partial_checksum",
    "pseudo_sum",
    "segment_tcp",
]
