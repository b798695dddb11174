"""Reassembly of fragmented outer packets (IPv4: RFC 791/815, IPv6: RFC 8200 §4.5), sans-I/O.

Why a worker reassembles at all
-------------------------------
A peer behind a path whose MTU is smaller than its ESP packets, or a NAT-T
peer behind such a path, may send its outer packets fragmented; and a
transport-mode peer fragments ESP and AH packets bigger than its path, as
our own datapath does in transport mode (RFC 4303 §3.3.4, RFC 4302 §3.3.4;
docs/architecture.md, "MTU").  ESP and AH are verified over whole datagrams
(RFC 4303 §3.4.1, RFC 4302 §3.4.1), so the receiver must reassemble before
it can look at the SPI.  The kernel reassembles its copy
too, but that copy is dropped by the daemon's nftables rule; the workers see
the original fragments on their packet sockets, below the IP layer.

Which worker reassembles (the datapath decision)
------------------------------------------------
Each worker's socket filter takes the ESP whose ``spi % n == k``
(:mod:`workers.bpf`), so that every inbound SA's replay window lives in one
process.  Only the first fragment carries the SPI (and, for RFC 3948, the
UDP port); later fragments carry nothing but the identification.  Classic
BPF keeps no state, so no filter can send the later fragments to the
first fragment's worker.  The options were:

* one designated worker takes every fragment and reassembles; but a
  datagram whose SPI belongs to another worker must then be handed over
  (an inter-process queue per worker, created by the control process and
  surviving restarts; a local socket anybody could write to otherwise),
  and that worker's poll loop must watch it;
* steering fragments by identification spreads the reassembly but needs the
  same hand-over for ``n - 1`` of ``n`` datagrams;
* **every worker takes every fragment that may be ESP or AH** (each worker's
  filter is built with ``fragments_to=k``), and the SPI in the first
  fragment decides, in each worker, whether it keeps the datagram.  That is
  what we do: the owner reassembles and decrypts, and the other workers
  forget the datagram the moment its first fragment arrives (a small
  "tombstone" makes them ignore its later fragments until the timeout; a
  first fragment that is theirs after all - the identification came round
  again, RFC 4963 - starts a new datagram).  No hand-over, nothing shared
  between workers, a restarted worker gets exactly the same fragments, and
  the replay window stays in one process.  The price: the kernel copies
  each fragment into ``n`` rings, and each non-owner spends a header parse
  and a dictionary lookup per fragment (and holds the fragments that arrive
  before the first one).  Fragmented ESP is a fallback for a misconfigured
  path, not the normal case, so we take that price for the simplicity and
  exactness.

Counting exactly once
---------------------
Every worker sees the same fragments, so a discard must be counted by one of
them only.  The rule (:meth:`Discard.counted_by`): a datagram a worker has
claimed (``Claim.MINE``, its SPI is that worker's) is counted by that worker
alone - the others have forgotten it; a datagram nobody could claim yet
(first fragment not seen, or too short to show the SPI) is counted by worker
``identification % n``, which holds the same state as every other worker.
A datagram that the socket filter may have let in although it is not ESP
at all - UDP whose first fragment was never seen: the filter takes every
later UDP fragment, since it cannot see their port - is released without a
count.  The kernel stack has its own copy of such traffic and delivers it;
dropping our copy drops nothing.  A whole datagram that turns out to be
another worker's (claim undecided until complete, or an IPv6 atomic
fragment) is ignored by the others, never counted as an unknown SPI.

Two corners are not exact.  A fragment that arrives after its datagram
completed (a late network duplicate) starts a new datagram in the owner
alone, whose timeout worker ``identification % n`` would have to count.
And overlapping *first* fragments with different SPIs look, to the worker
that owns the second SPI, like an identification used again: the real
owner discards its datagram (RFC 5722), the other worker reassembles the
rogue one, which then fails its ICV.  Nothing unauthenticated gets through
either way; ESP's integrity check is the last word.

Rules
-----
* The key is ``(source, destination, protocol / next header,
  identification)`` (RFC 791; RFC 8200 keys on source, destination and
  identification, the next header is compared as well).
* Overlapping fragments discard the whole datagram, and its later
  fragments, for the rest of the timeout (RFC 5722 for IPv6; IPv4 the same,
  which is safer).  An exact duplicate (same offset, length and bytes) is
  dropped on its own (RFC 8200 §4.5 allows that).
* Fragments other than the last are a positive multiple of 8 bytes (RFC 791;
  RFC 8200 §4.5 says discard).  A reassembled datagram may not exceed 65535
  bytes (IPv4 total length; IPv6 payload length, RFC 8200 §4.5).  An IPv4
  fragment's header checksum is verified, as :mod:`ipsecd.esp` does for
  whole packets (we are below the kernel's IP layer, RFC 1122 §3.2.1.2).
* The first fragment must hold the upper-layer header (RFC 7112 for IPv6,
  RFC 1858 "tiny fragments" for IPv4): ESP's SPI and sequence number, UDP's
  header.
* A second last fragment (more-fragments clear) that disagrees about the
  length, or a fragment past a known end, discards the datagram.
* An IPv6 atomic fragment (offset 0, M clear) is returned at once, without
  touching any reassembly in progress with the same identification
  (RFC 6946).
* Bounds: at most ``max_datagrams`` datagrams in progress and ``max_bytes``
  held (each fragment's data plus :data:`FRAGMENT_COST` for what Python
  spends on it); the oldest datagram makes room (a flood cannot keep out
  a datagram that completes within a few hundred of the flood's).  The
  timeout runs from the first fragment seen (RFC 791 and 8200 allow at
  most 15 and 60 s; ESP's fragments arrive back to back, so a few seconds
  bound what a flood can hold) and is checked lazily, with the caller's
  clock, on every push and on :meth:`Reassembler.expire`.

Interface
---------
:meth:`Reassembler.push` takes one IP packet that is a fragment
(:func:`is_fragment`) and the time, and returns the whole datagram when
this fragment completed it, else ``None``.  Discards are appended to
:attr:`Reassembler.discards` as :class:`Discard` events, which the caller
counts and clears.  Nothing raises on packet content.
"""

from __future__ import annotations

import logging
import struct
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

from ipsecd.drops import Drop
from ipsecd.iana import IpProto
from ipsecd.packet import checksum

log = logging.getLogger("ipsecd.reassembly")

#: Tests set this to re-raise unexpected exceptions instead of counting them
#: as ``FRAGMENT_MALFORMED`` (as :mod:`ipsecd.esp` does).
RAISE_UNEXPECTED = False

DEFAULT_MAX_DATAGRAMS = 256
DEFAULT_MAX_BYTES = 4 << 20
DEFAULT_TIMEOUT = 3.0
MAX_LENGTH = 0xFFFF  # IPv4 total length, IPv6 payload length (no jumbograms: RFC 8200 §4.5)
#: Bytes charged per held fragment besides its data: the bytes object, the list slots.
FRAGMENT_COST = 128

_ESP = int(IpProto.ESP)
_UDP = int(IpProto.UDP)
_TCP = int(IpProto.TCP)
_AH = int(IpProto.AH)
_FRAG = int(IpProto.IPV6_FRAG)
_IPV6_UNFRAGMENTABLE = frozenset((int(IpProto.HOPOPT), int(IpProto.IPV6_ROUTE),
                                  int(IpProto.IPV6_OPTS)))
#: The least a first fragment carries after the IP header(s): the upper-layer header.
_FIRST_MIN = {_ESP: 8, _UDP: 8, _TCP: 20, _AH: 12}
_FIRST_MIN_DEFAULT = 8  # RFC 791: every router passes a first fragment of 8 bytes

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_V4 = struct.Struct("!BxHHHxB2x8s")  # ver/IHL, total length, identification, flags/offset, proto, addrs
_V6_FRAG = struct.Struct("!BxHI")  # next header, offset << 3 | M, identification


class Claim(IntEnum):
    """Who processes a datagram, as decided on its first fragment (see the module docstring)."""

    UNSEEN = 0  # the first fragment has not arrived
    KEEP = 1  # it arrived and could not tell: keep reassembling, decide on the whole datagram
    MINE = 2  # this reassembler's owner processes it
    OTHERS = 3  # not this owner's: forget it and ignore its later fragments


#: ``claim(protocol, first fragment's data)``: the caller's verdict on a datagram.
ClaimHook = Callable[[int, memoryview], Claim]


class Discard(NamedTuple):
    """Fragments thrown away, for the caller to count."""

    reason: Drop
    fragments: int  # how many received fragments this discards
    ident: int  # the datagram's identification
    proto: int  # its protocol / next header
    claim: Claim  # the datagram's claim when discarded

    def counted_by(self, n: int, k: int) -> bool:
        """Whether worker ``k`` of ``n``, all fed the same fragments, counts this one."""
        if self.claim == Claim.MINE:
            return True
        if self.claim == Claim.OTHERS or (self.claim == Claim.UNSEEN and self.proto == _UDP):
            return False  # another worker's; or possibly not ESP at all (module docstring)
        return self.ident % n == k


class Reassembled(NamedTuple):
    """A whole datagram: the IP packet as if it had never been fragmented."""

    packet: bytes
    ident: int
    proto: int
    claim: Claim  # MINE, KEEP (undecided), or KEEP for an IPv6 atomic fragment
    fragments: int


class _Datagram:
    """One datagram in reassembly: disjoint fragments sorted by offset."""

    __slots__ = ("claim", "cost", "data", "deadline", "ends", "header", "ident", "nh_field",
                 "proto", "received", "starts", "total")

    def __init__(self, deadline: float, ident: int, proto: int) -> None:
        self.deadline = deadline
        self.ident = ident
        self.proto = proto
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.data: list[bytes] = []
        self.received = 0  # data bytes held (fragments never overlap, so coverage)
        self.total = -1  # the length of the data, once the last fragment came
        self.header: bytes | None = None  # IPv4 header / IPv6 unfragmentable part, first fragment's
        self.nh_field = 0  # offset in ``header`` of the byte naming what follows it
        self.cost = 0
        self.claim = Claim.UNSEEN


# A tombstone: (deadline, reason for its later fragments or None: ignore them, ident, proto, claim)
_Tomb = tuple[float, Drop | None, int, int, Claim]
_Key = tuple[bytes, int, int]


class _Fragment(NamedTuple):
    key: _Key
    ident: int
    proto: int
    header_len: int  # IPv4 header / IPv6 unfragmentable part
    nh_field: int
    offset: int  # of the data, in bytes
    more: bool
    data_start: int
    data_end: int


def is_fragment(buf: bytes | bytearray | memoryview, end: int) -> bool:
    """Whether ``buf[:end]`` is an IPv4 fragment (MF or an offset) or IPv6 with a fragment header."""
    try:
        version = buf[0] >> 4
        if version == 4:
            return end >= 20 and bool(_U16.unpack_from(buf, 6)[0] & 0x3FFF)
        if version == 6 and end >= 40:
            nh, at = buf[6], 40
            while nh in _IPV6_UNFRAGMENTABLE and at + 8 <= end:
                nh, at = buf[at], at + ((buf[at + 1] + 1) << 3)
            return nh == _FRAG
    except (IndexError, struct.error):
        pass
    return False


def spi_claim(n: int, k: int, udp_port: int | None = 4500) -> ClaimHook:
    """The claim of worker ``k`` of ``n`` (socket filter ``spi % n == k``, :mod:`workers.bpf`).

    ESP: the SPI (RFC 4303 §2.1).  AH: its SPI, the second word (RFC 4302
    §2; AH SPIs are a space of their own, steered by the same rule).  UDP to ``udp_port``: the SPI after the UDP
    header, unless it is IKE's zero non-ESP marker (RFC 3948 §2.2), which is
    the kernel's to reassemble for the IKE daemon.  A first fragment too
    short to show the SPI is kept; the whole datagram decides.
    """

    def claim(proto: int, data: memoryview) -> Claim:
        if proto == _ESP:
            if len(data) < 4:
                return Claim.KEEP
            spi = _U32.unpack_from(data)[0]
        elif proto == _AH:
            if len(data) < 8:
                return Claim.KEEP
            spi = _U32.unpack_from(data, 4)[0]
        elif proto == _UDP and udp_port is not None:
            if len(data) < 12:
                return Claim.KEEP
            if _U16.unpack_from(data, 2)[0] != udp_port:
                return Claim.OTHERS
            spi = _U32.unpack_from(data, 8)[0]
            if not spi:
                return Claim.OTHERS
        else:
            return Claim.OTHERS
        return Claim.MINE if spi % n == k else Claim.OTHERS

    return claim


class Reassembler:
    """IPv4 and IPv6 fragment reassembly with bounded state; see the module docstring."""

    def __init__(self, *, max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
                 max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT,
                 claim: ClaimHook | None = None) -> None:
        if max_datagrams < 1 or max_bytes < 1 or timeout <= 0:
            raise ValueError("reassembly limits must be positive")
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.claim = claim
        self.discards: list[Discard] = []
        # Oldest first: every deadline is creation + timeout, so this is also deadline order.
        self._table: OrderedDict[_Key, _Datagram] = OrderedDict()
        self._tombs: OrderedDict[_Key, _Tomb] = OrderedDict()
        self._held = 0

    @property
    def pending(self) -> int:
        """Datagrams in reassembly."""
        return len(self._table)

    @property
    def held_bytes(self) -> int:
        """What the held fragments are charged (data plus :data:`FRAGMENT_COST` each)."""
        return self._held

    # -- the interface ---------------------------------------------------------------------

    def push(self, packet: bytes | bytearray | memoryview, now: float) -> Reassembled | None:
        """Add one fragment (a whole IP packet); the datagram if it is now complete."""
        try:
            self.expire(now)
            view = memoryview(packet)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            version = view[0] >> 4 if len(view) else 0
            if version == 4:
                frag = self._parse_v4(view)
            elif version == 6:
                frag = self._parse_v6(view)
                if frag is not None and not frag.offset and not frag.more:
                    return self._atomic(view, frag)
            else:
                frag = None
            if frag is None:
                self._drop_fragment(view, version)
                return None
            return self._add(view, frag, now)
        except Exception:
            if RAISE_UNEXPECTED:
                raise
            log.exception("unexpected error in fragment reassembly")
            self.discards.append(Discard(Drop.FRAGMENT_MALFORMED, 1, 0, 0, Claim.UNSEEN))
            return None

    def expire(self, now: float) -> None:
        """Discard the datagrams (and forget the tombstones) whose time is up."""
        table = self._table
        while table:
            key, e = next(iter(table.items()))
            if e.deadline > now:
                break
            del table[key]
            self._release(e, Drop.FRAGMENT_TIMEOUT, 0)
        tombs = self._tombs
        while tombs:
            key, tomb = next(iter(tombs.items()))
            if tomb[0] > now:
                break
            del tombs[key]

    # -- parsing ---------------------------------------------------------------------------

    @staticmethod
    def _parse_v4(view: memoryview) -> _Fragment | None:
        """An IPv4 fragment's fields, or None if it cannot be a valid fragment (RFC 791)."""
        end = len(view)
        if end < 20:
            return None
        b0, total, ident, flags, proto, addrs = _V4.unpack_from(view)
        ihl = (b0 & 15) << 2
        if ihl < 20 or total < ihl or total > end or checksum(view[:ihl]):
            return None
        offset = (flags & 0x1FFF) << 3
        more = bool(flags & 0x2000)
        n = total - ihl
        if not (more or offset) or not n or (more and n & 7):
            return None  # not a fragment; empty; or not the last and not a multiple of 8
        if offset + n > MAX_LENGTH - 20:
            return None  # RFC 791: the datagram would exceed 65535 with the least header
        if not offset and n < _FIRST_MIN.get(proto, _FIRST_MIN_DEFAULT):
            return None  # tiny first fragment (RFC 1858)
        return _Fragment((addrs, proto, ident), ident, proto, ihl, 9, offset, more, ihl, total)

    @staticmethod
    def _parse_v6(view: memoryview) -> _Fragment | None:
        """An IPv6 fragment's fields (RFC 8200 §4.5), or None if it cannot be a valid one."""
        end = len(view)
        if end < 40:
            return None
        plen = _U16.unpack_from(view, 4)[0]
        total = 40 + plen
        if not plen or total > end:
            return None  # a jumbogram (payload length 0) is not reassembled
        nh, at, nh_field = view[6], 40, 6
        while nh in _IPV6_UNFRAGMENTABLE:  # the unfragmentable part
            if at + 8 > total:
                return None
            nh_field, nh, at = at, view[at], at + ((view[at + 1] + 1) << 3)
        if nh != _FRAG or at + 8 > total:
            return None
        proto, field, ident = _V6_FRAG.unpack_from(view, at)
        offset = field & 0xFFF8
        more = bool(field & 1)
        data_start = at + 8
        n = total - data_start
        if more and (not n or n & 7):
            return None  # RFC 8200 §4.5: not the last and not a multiple of 8
        if (at - 40) + offset + n > MAX_LENGTH:
            return None  # RFC 8200 §4.5: the reassembled payload would exceed 65535
        if not offset and more and n < _FIRST_MIN.get(proto, _FIRST_MIN_DEFAULT):
            return None  # RFC 7112: the first fragment holds the upper-layer header
        if offset and not n:
            return None  # an empty last fragment
        key = (bytes(view[8:40]), proto, ident)
        return _Fragment(key, ident, proto, at, nh_field, offset, more, data_start, total)

    def _drop_fragment(self, view: memoryview, version: int) -> None:
        """A fragment that cannot be valid: counted, attributed to its datagram if one exists."""
        key: _Key | None = None
        ident, proto, first = 0, 0, False
        try:
            if version == 4 and len(view) >= 20:
                ident, proto = _U16.unpack_from(view, 4)[0], view[9]
                first = not _U16.unpack_from(view, 6)[0] & 0x1FFF
                key = (bytes(view[12:20]), proto, ident)
            elif version == 6 and len(view) >= 48 and view[6] == _FRAG:
                proto, field, ident = _V6_FRAG.unpack_from(view, 40)
                first = not field & 0xFFF8
                key = (bytes(view[8:40]), proto, ident)
        except (IndexError, struct.error):
            pass
        claim = Claim.UNSEEN
        if key is not None:
            e = self._table.get(key)
            tomb = self._tombs.get(key)
            if e is not None:
                claim = e.claim
            elif tomb is not None:
                claim = tomb[4]  # OTHERS: another worker's datagram, its owner counts this
        if claim == Claim.UNSEEN and first:
            # A first fragment shows what it is: ESP, or UDP to the port (the socket
            # filter saw it).  A later UDP fragment may be anybody's (counted_by).
            claim = Claim.KEEP
        self.discards.append(Discard(Drop.FRAGMENT_MALFORMED, 1, ident, proto, claim))

    # -- reassembly ------------------------------------------------------------------------

    def _atomic(self, view: memoryview, frag: _Fragment) -> Reassembled | None:
        """RFC 6946: an atomic fragment is a whole packet; other state is not touched."""
        header = bytearray(view[:frag.header_len])
        header[frag.nh_field] = frag.proto
        _U16.pack_into(header, 4, frag.header_len - 40 + frag.data_end - frag.data_start)
        packet = b"".join((header, view[frag.data_start:frag.data_end]))
        return Reassembled(packet, frag.ident, frag.proto, Claim.KEEP, 1)

    def _add(self, view: memoryview, frag: _Fragment, now: float) -> Reassembled | None:
        key = frag.key
        start = frag.offset
        data = view[frag.data_start:frag.data_end]
        end = start + len(data)
        claim: Claim | None = None
        tomb = self._tombs.get(key)
        if tomb is not None:
            if tomb[1] is not None:  # RFC 5722: later fragments of a discarded datagram go too
                self.discards.append(Discard(tomb[1], 1, tomb[2], tomb[3], tomb[4]))
                return None
            # Another owner's datagram.  A first fragment that is ours means the
            # identification came round again (RFC 4963): a new datagram.
            if start or self.claim is None:
                return None
            claim = self.claim(frag.proto, data)
            if claim == Claim.OTHERS:
                return None
            del self._tombs[key]
        e = self._table.get(key)
        if not start and (e is None or e.header is None):
            # The first fragment: whose is it?  Asked before a new datagram takes a place.
            if claim is None:
                claim = self.claim(frag.proto, data) if self.claim is not None else Claim.MINE
            if claim == Claim.OTHERS:  # another owner's: forget it, ignore what follows
                deadline = now + self.timeout
                if e is not None:
                    del self._table[key]
                    self._release(e, None, 0)
                    deadline = e.deadline
                self._bury(key, (deadline, None, frag.ident, frag.proto, Claim.OTHERS))
                return None
        if e is None:
            if len(self._table) >= self.max_datagrams:
                _, oldest = self._table.popitem(last=False)
                self._release(oldest, Drop.FRAGMENT_LIMIT, 0)
            e = _Datagram(now + self.timeout, frag.ident, frag.proto)
            self._table[key] = e
        if claim is not None and e.header is None:
            e.header = bytes(view[:frag.header_len])
            e.nh_field = frag.nh_field
            e.claim = claim

        # RFC 791 / 8200: the last fragment fixes the length; everything must fit it.
        if not frag.more:
            if (e.total >= 0 and e.total != end) or (e.ends and e.ends[-1] > end):
                self._poison(key, e, Drop.FRAGMENT_MALFORMED)
                return None
            e.total = end
        elif 0 <= e.total < end:
            self._poison(key, e, Drop.FRAGMENT_MALFORMED)
            return None

        starts, ends = e.starts, e.ends
        i = bisect_right(starts, start)
        if i and ends[i - 1] > start:
            if starts[i - 1] == start and ends[i - 1] == end and e.data[i - 1] == data:
                self.discards.append(Discard(Drop.FRAGMENT_DUPLICATE, 1, e.ident, e.proto,
                                             e.claim))
                return None
            self._poison(key, e, Drop.FRAGMENT_OVERLAP)
            return None
        if i < len(starts) and starts[i] < end:
            self._poison(key, e, Drop.FRAGMENT_OVERLAP)
            return None

        cost = len(data) + FRAGMENT_COST
        while self._held + cost > self.max_bytes:
            _, oldest = self._table.popitem(last=False)
            self._release(oldest, Drop.FRAGMENT_LIMIT, 1 if oldest is e else 0)
            if oldest is e:
                return None
        starts.insert(i, start)
        ends.insert(i, end)
        e.data.insert(i, bytes(data))
        e.received += len(data)
        e.cost += cost
        self._held += cost
        if e.received == e.total:
            del self._table[key]
            self._held -= e.cost
            return self._whole(e)
        return None

    def _whole(self, e: _Datagram) -> Reassembled | None:
        """The datagram from its fragments: the first fragment's header, lengths fixed."""
        header = bytearray(e.header or b"")
        fragments = len(e.data)
        if not header:  # cannot happen: full coverage includes offset 0
            self.discards.append(Discard(Drop.FRAGMENT_MALFORMED, fragments, e.ident, e.proto,
                                         e.claim))
            return None
        if header[0] >> 4 == 4:
            length = len(header) + e.total
            if length > MAX_LENGTH:
                self.discards.append(Discard(Drop.FRAGMENT_MALFORMED, fragments, e.ident,
                                             e.proto, e.claim))
                return None
            _U16.pack_into(header, 2, length)
            header[6] &= 0xC0  # keep DF (and the reserved bit); MF and the offset go
            header[7] = 0
            header[10:12] = b"\x00\x00"
            _U16.pack_into(header, 10, checksum(header))
        else:
            header[e.nh_field] = e.proto  # RFC 8200 §4.5: from the first fragment's header
            _U16.pack_into(header, 4, len(header) - 40 + e.total)
        packet = b"".join((header, *e.data))
        return Reassembled(packet, e.ident, e.proto, e.claim, fragments)

    def _poison(self, key: _Key, e: _Datagram, reason: Drop) -> None:
        """Discard the datagram, this fragment included, and its later fragments."""
        del self._table[key]
        self._release(e, reason, 1)
        self._bury(key, (e.deadline, reason, e.ident, e.proto, e.claim))

    def _release(self, e: _Datagram, reason: Drop | None, extra: int) -> None:
        """Forget a datagram already out of the table; count its fragments (+ ``extra``)."""
        self._held -= e.cost
        if reason is not None and (e.data or extra):
            self.discards.append(Discard(reason, len(e.data) + extra, e.ident, e.proto, e.claim))

    def _bury(self, key: _Key, tomb: _Tomb) -> None:
        """Remember a discarded datagram until its timeout (bounded; the oldest go first)."""
        tombs = self._tombs
        tombs.pop(key, None)
        if len(tombs) >= 4 * self.max_datagrams:
            tombs.popitem(last=False)
        tombs[key] = tomb


__all__ = ["Claim", "ClaimHook", "Discard", "Reassembled", "Reassembler", "is_fragment",
           "spi_claim"]
