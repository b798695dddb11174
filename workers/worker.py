"""A datapath worker: ESP and AH from the RX ring to the TUN, plaintext from the TUN to them.

Theory of operation
-------------------
The control process forks one worker per core and calls :func:`main` with a
:class:`WorkerSpec`.  A worker owns, for its whole life:

* one TPACKET_V3 RX ring per outside interface, each with the socket filter
  ``bpf.spi_steering(n, k)``: this worker sees exactly the ESP and AH whose
  ``spi % n == k``, so the anti-replay window of each inbound SA is used by
  one process (docs/architecture.md), and every IP fragment that may be ESP
  or AH;
* one queue of the multi-queue TUN device: the kernel hands it the
  plaintext of some flows (a flow always lands on one queue);
* a :class:`workers.rings.TxSender` per outside interface (with the policy
  routing mark, so our ESP does not loop back into the TUN);
* read-only views of the SA table (:mod:`ipsecd.satable`) and the policy
  table (:mod:`workers.policy`), and its own counter rows in the SA table.

The loop waits in ``poll`` on the ring and TUN descriptors (at most
:data:`IDLE_POLL_MS`, so the heartbeat moves while idle) and per wake-up:

1. **Generations.**  When the SA table's generation moved, changed slots are
   re-read (seqlock copy) and their codec contexts rebuilt; the key copies
   are wiped once the context holds them.  When the policy table's
   generation moved, the policy document is re-read.  Either change clears
   the per-flow decision caches.
2. **Inbound.**  Every ready ring block: :func:`ipsecd.esp.peek` for the SPI,
   the SPI's context, ``decap_into`` in the ring frame itself (no copy), the
   inbound policy check (cached per SA and flow), one ``write`` to the TUN.
   A fragmented outer packet goes to :mod:`workers.reassembly` first: every
   worker's filter takes every fragment that may be ESP or AH, the SPI in the
   first fragment decides which worker keeps the datagram, and a whole one
   continues as if it had arrived so (see that module for why).
3. **Outbound.**  Up to :data:`BATCH` packets are read from the TUN, each
   into its own reusable buffer behind :data:`HEADROOM` bytes, and
   classified (per-flow cache of the SPD decision: bypass, discard, or the
   SA slot and its context).  Then, once per SA per batch,
   ``SATable.alloc_seq(slot, count)`` takes exactly the sequence numbers
   the batch needs under the SA's record lock, so no number is ever used
   twice, whatever the number of workers; a worker killed in between
   leaves a gap, never a reuse.  Each packet is encrypted where it lies
   (``encap_into``) and queued on the TX ring; one ``flush`` per batch.
   AH (RFC 4302) takes the same steps in a branch of its own, outside the
   ESP fast path: inbound, protocol 51 is looked up among the AH SAs and
   verified with :class:`ipsecd.ah.AhContext` (see ``_inbound_ah``);
   outbound, an AH SA's ``encap`` has ESP's signature, so ``_encrypt``
   serves both.  A policy that requires ESP and AH together (a bundle) is
   not supported: it drops (``no_sa``) with a log line.
   IPComp (RFC 3173) in front of ESP or AH is a branch of its own too:
   outbound an ``OUT_IPCOMP`` decision compresses the packet before it
   joins the batch (``_compress``); inbound, what ESP or AH delivers with
   next header 108 reaches ``_inbound_ipcomp`` through their failure
   branches only, and so does KAME's nested form (IPComp tunnel inside
   transport-mode ESP, ``_inbound_nested``) (docs/architecture.md, "IPComp
   in the datapath").
4. **Counters** are accumulated in local ints and added to the worker's
   own rows of the shared table once per batch, with the heartbeat.

Drops are counted per SA when the SA is known, else in the worker row, and
logged at most once per reason per :data:`LOG_INTERVAL` seconds with the
number seen since the last line.

MTU: a packet that would not fit the SA's path MTU once encapsulated gets
ICMP "fragmentation needed" / "packet too big" back through the TUN when
DF is set (IPv6: always), announcing the largest inner packet that fits
*that* SA.  In tunnel mode an IPv4 packet without DF is fragmented before
encapsulation (:mod:`workers.icmp`: each inner fragment in its own tunnel
packet), and the outer packet is never fragmented.  Transport mode protects
whole datagrams only (RFC 4303 §3.3.4, RFC 4302 §3.3.4), so there the
datagram is encapsulated whole and the outer ESP / AH packet is fragmented
(``_send_whole``); fragments the host made of a datagram bigger than the
TUN MTU are reassembled first (``_outbound_fragment``, a
:class:`workers.reassembly.Reassembler` of its own, created on first use).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ipsecd.ah import AhContext
from ipsecd.drops import Drop
from ipsecd.esp import EspContext, Inbound, peek
from ipsecd.iana import IpProto
from ipsecd.ipcomp import IpcompContext
from ipsecd.packet import PacketError, ipv6_find_header, ipv6_ipsec_offset
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.satable import (
    SA_COUNTER_COLUMNS,
    SEQ_GONE,
    Direction,
    SACounter,
    SATable,
    WorkerCounter,
    changed_slots,
    pack_generation,
)
from workers import bpf
from workers.icmp import RateLimit, fragment_ipv4, fragment_ipv6, too_big_error
from workers.offload import VNET_HDR_LEN, Coalescer
from workers.policy import (
    ACTION_DISCARD,
    ACTION_IPSEC,
    ACTION_NONE,
    MODE_TRANSPORT,
    MODE_TUNNEL,
    PolicyReader,
    PolicySet,
    Request,
    Rule,
)
from workers.reassembly import Claim, Reassembler, is_fragment, spi_claim
from workers.rings import RingConfig, RxRing, TxSender
from workers.tun import TunQueue

log = logging.getLogger("ipsecd.worker")

BATCH = 64  # packets read from the TUN per turn
HEADROOM = 128  # room before a TUN packet: outer IPv6 + UDP + ESP + IV is 72 at most
TAILROOM = 128  # padding, trailer, ICV (and CBC scratch)
RX_CAPACITY = 65535  # the largest IP packet a ring frame can hold
IDLE_POLL_MS = 200
LOG_INTERVAL = 10.0
STATS_INTERVAL = 1.0
ICMP_RATE = 200.0  # errors per second per worker (RFC 1812 §4.3.2.8 wants a limit)

_ESP = int(IpProto.ESP)
_AH = int(IpProto.AH)
_IPCOMP = int(IpProto.IPCOMP)
_IPIP = int(IpProto.IPV4)  # IP-in-IP next headers (RFC 2003, RFC 2473)
_IPV6_IN = int(IpProto.IPV6)
_V4_KEY = struct.Struct("!B5xBBxB2x8s")  # ver/ihl, flags/frag hi, frag lo, proto, src+dst
_V6_KEY = struct.Struct("!6xB1x32s")  # next header, src+dst
# IPv4 without options: flags/fragment offset, protocol, src+dst, first L4 word (ports).
_V4_FAST = struct.Struct("!6xHxB2x8sI")
# Flags/fragment offset and the SPI of bare ESP after a 20-byte IPv4 header.
_V4_ESP = struct.Struct("!6xH12xI")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_PORT_PROTOS = frozenset((6, 17, 132, 136))
_ICMP_PROTOS = frozenset((1, 58))
_IPV6_EXT = frozenset((0, 43, 60))
_IPV6_FRAG = int(IpProto.IPV6_FRAG)
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1

# Outbound decisions (first item of a cached decision tuple).
OUT_ESP = 0
OUT_BYPASS = 1
OUT_DROP = 2
# ESP with IPComp first: OUT_ESP's fields, then the IPComp context, the IPComp SA's
# slot and the decision for the compressed packet (_ipcomp_decision).
OUT_IPCOMP = 3


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; the control process builds one per worker index."""

    index: int
    count: int
    table: str  # SA table shm name
    policy: str  # policy table shm name
    tun: str
    outside: tuple[str, ...]
    mark: int
    tx: str = "ring"
    nat_t_port: int = 4500
    allow_legacy: bool = False
    log_level: int = logging.INFO
    tun_mtu: int = 1500
    ring_block_size: int = 1 << 17
    ring_block_count: int = 32
    gro: bool = False  # TUN with IFF_VNET_HDR; TCP / UDP coalesced (workers/offload.py)


class _In:
    """An inbound SA as the worker uses it."""

    __slots__ = ("decap", "dst", "mode", "proto", "reqid", "slot", "spi", "src", "uid", "window")

    def __init__(self, slot: int, uid: int, ctx: EspContext, window: ReplayWindow,
                 sa: SecurityAssociation) -> None:
        self.decap = ctx.decap_into
        self._sa(slot, uid, window, sa)

    def _sa(self, slot: int, uid: int, window: ReplayWindow, sa: SecurityAssociation) -> None:
        self.slot = slot
        self.uid = uid
        self.spi = sa.spi
        self.proto = int(sa.protocol)  # what an inbound policy's request must name
        self.window = window
        self.mode = MODE_TUNNEL if sa.mode is Mode.TUNNEL else MODE_TRANSPORT
        self.src = sa.src.packed
        self.dst = sa.dst.packed
        self.reqid = sa.reqid


class _AhIn(_In):
    """An inbound AH SA (RFC 4302): the codec instead of ESP's ``decap_into``."""

    __slots__ = ("ah",)

    def __init__(self, slot: int, uid: int, ctx: AhContext, window: ReplayWindow,
                 sa: SecurityAssociation) -> None:
        self.ah = ctx
        self._sa(slot, uid, window, sa)


class _Ipcomp:
    """An IPComp SA (RFC 3173), either direction: a codec context per mode it may serve.

    IPComp keeps no per-packet state (no sequence numbers, no window), so every
    worker holds every inbound IPComp SA: the ESP SA it arrives in steers the
    packet to whichever worker, not the CPI.  An SA of mode ``any`` (setkey's
    default) serves both modes: the request (outbound) or the ESP SA that
    carried the packet (inbound) decides.
    """

    __slots__ = ("dst", "slot", "spi", "src", "transport", "tunnel", "uid")

    def __init__(self, slot: int, uid: int, sa: SecurityAssociation) -> None:
        self.slot = slot
        self.uid = uid
        self.spi = sa.spi  # the CPI
        self.src = sa.src.packed
        self.dst = sa.dst.packed
        self.transport = (IpcompContext(sa, mode=Mode.TRANSPORT)
                          if sa.mode is not Mode.TUNNEL else None)
        self.tunnel = IpcompContext(sa, mode=Mode.TUNNEL) if sa.mode is not Mode.TRANSPORT else None


_E = TypeVar("_E", bound="_In | _Ipcomp")


_UNKNOWN: Any = object()  # no SA with this SPI


class _Out:
    """An outbound SA: its context, sizes and sequence-number limit."""

    __slots__ = ("ctx", "encap", "limit", "slot", "tunnel", "uid")

    def __init__(self, slot: int, uid: int, ctx: EspContext, sa: SecurityAssociation) -> None:
        self.slot = slot
        self.uid = uid
        self.ctx = ctx
        self.encap = ctx.encap_into
        self.limit = _M64 if sa.esn else _M32
        self.tunnel = sa.mode is Mode.TUNNEL

    def max_inner(self, path_mtu: int, header: int) -> int:
        """The largest inner packet that fits ``path_mtu`` once encapsulated.

        ``header`` is the length of the IP header that stays in front of ESP
        in transport mode (ignored in tunnel mode).  See
        :meth:`ipsecd.esp.EspContext.encapsulated_length`: the padded payload
        (payload + 2 trailer bytes, rounded up to ``align``) plus headroom,
        ICV and, in transport mode, the header must fit.
        """
        ctx = self.ctx
        h = 0 if self.tunnel else header
        room = path_mtu - ctx.headroom - ctx.icv_bytes - h
        room -= room % ctx.align
        return room - 2 + h

    def outer_length(self, length: int, header: int) -> int:
        """The length of the packet ``encap`` makes of an inner packet of ``length`` bytes."""
        return self.ctx.encapsulated_length(length, 0 if self.tunnel else header)


class _AhOut(_Out):
    """An outbound AH SA (RFC 4302): ``encap`` has ESP's ``encap_into`` signature.

    AH cannot be built in place (the codec returns a new packet), so the
    result is copied back in front of where the plaintext began: the buffer
    has :data:`HEADROOM` bytes there, more than AH plus an outer header need
    (12 + the largest ICV, 32, padded to 48, + 40 for an outer IPv6 header).
    """

    __slots__ = ("ah", "overhead")

    def __init__(self, slot: int, uid: int, ctx: AhContext, sa: SecurityAssociation) -> None:
        self.slot = slot
        self.uid = uid
        self.ah = ctx
        self.encap = self._encap
        self.limit = _M64 if sa.esn else _M32
        self.tunnel = sa.mode is Mode.TUNNEL
        # RFC 4302 §3.3.3: everything, AH included, goes in one unfragmented packet.
        version = sa.src.version
        self.overhead = ctx.ah_length(version) + (
            (20 if version == 4 else 40) if self.tunnel else 0)

    def max_inner(self, path_mtu: int, header: int) -> int:
        return path_mtu - self.overhead

    def outer_length(self, length: int, header: int) -> int:
        return length + self.overhead

    def _encap(self, buf: Any, start: int, end: int, seq: int) -> tuple[Drop, int, int]:
        drop, packet = self.ah.encap(buf[start:end], seq)
        if drop:
            return drop, 0, 0
        s = end - len(packet)
        if s < 0:  # cannot happen with HEADROOM as it is; never write before the buffer
            return Drop.MTU, 0, 0
        buf[s:end] = packet
        return Drop.OK, s, end


class Worker:
    """One worker's state and loop; see the module docstring."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.k = spec.index
        self.running = True
        self.table = SATable.attach(spec.table)
        self.policy_reader = PolicyReader(spec.policy)
        self.sa_ctr = self.table.sa_counters(spec.index)
        self.wk_ctr = self.table.worker_counters(spec.index)
        self.wk_ctr[WorkerCounter.PID] = os.getpid()
        self.tun = TunQueue.open(spec.tun, vnet_hdr=spec.gro)
        self.gro = Coalescer(self.tun.fileno(), self._tun_write_failed) if spec.gro else None
        self.vnet = VNET_HDR_LEN if spec.gro else 0  # header bytes in front of what a read gives
        ring_config = RingConfig(block_size=spec.ring_block_size,
                                 block_count=spec.ring_block_count)
        # Every worker takes every fragment that may be ESP: the first fragment's SPI
        # decides which one keeps the datagram (workers/reassembly.py).  Worker 0
        # takes ESP too short for an SPI, to count it.
        code = bpf.pack(bpf.spi_steering(spec.count, spec.index, nat_t_port=spec.nat_t_port,
                                         fragments_to=spec.index, runts_to=0))
        self.rings = [RxRing(ifname, config=ring_config, filter=code) for ifname in spec.outside]
        self.txs = {ifname: TxSender(ifname, method=spec.tx, mark=spec.mark)  # type: ignore[arg-type]
                    for ifname in spec.outside}
        self.tx_default = self.txs[spec.outside[0]]
        self.raw = self.tx_default.raw
        self.poll = select.poll()
        for ring in self.rings:
            self.poll.register(ring.fileno(), select.POLLIN | select.POLLERR)
        self.poll.register(self.tun.fileno(), select.POLLIN)

        # TUN buffers: BATCH slots, each HEADROOM + MTU + TAILROOM bytes.
        self.capacity = max(spec.tun_mtu, 1280) + 1  # one more: a longer packet shows as truncated
        size = HEADROOM + self.capacity + TAILROOM
        self._mem = bytearray(BATCH * size)
        whole = memoryview(self._mem)
        self.bufs = [whole[i * size:(i + 1) * size] for i in range(BATCH)]
        # With IFF_VNET_HDR the header is read into the headroom's end, so the
        # packet itself still starts at HEADROOM.  It is not looked at: the
        # device offers no offload (no TUNSETOFFLOAD), so it is always "none".
        self.reads = [b[HEADROOM - self.vnet:HEADROOM + self.capacity] for b in self.bufs]
        # The fixed places where every packet is encrypted / decrypted (see _inbound).
        self.work = memoryview(bytearray(size))
        self.rx_capacity = RX_CAPACITY
        # 40 more: a reassembled IPv6 packet is its header plus up to 65535 (RFC 8200 §4.5).
        self.rx_view = memoryview(bytearray(RX_CAPACITY + 40 + TAILROOM))
        self.reassembler = Reassembler(claim=spi_claim(spec.count, spec.index, spec.nat_t_port))
        # Transport mode only, and rare: datagrams the host fragmented before the TUN
        # (bigger than its MTU) are reassembled here, in a 64 KiB buffer of their own;
        # both are made on first use (_outbound_fragment, _big_buffer).
        self.tun_reassembler: Reassembler | None = None
        self._big: memoryview | None = None
        self._ident = int.from_bytes(os.urandom(3), "big")  # IPv6 fragment ids (_next_ident)

        self._init_tables()

        # Local counters, flushed once per batch.
        self.acc: dict[int, list[int]] = {}  # slot -> [packets, bytes]
        self.sa_drops: dict[tuple[int, int], int] = {}
        self.wk_drops: dict[int, int] = {}
        self.packets_in = 0
        self.packets_out = 0
        self.icmp_limit = RateLimit(ICMP_RATE, ICMP_RATE / 2)
        self._log_last: dict[str, float] = {}
        self._log_count: dict[str, int] = {}
        self._next_stats = 0.0
        # Worker rows outlive a worker: a restarted one adds to what its predecessor counted.
        self._ring_drops_base = int(self.wk_ctr[WorkerCounter.RING_DROPS])

    def _init_tables(self) -> None:
        """The SA and policy state, rebuilt on generation changes (see _refresh)."""
        self.sa_generation = -1
        # Every slot's generation as this worker last took it up (SATable.slot_generations):
        # a refresh reads only the slots whose generation moved since.  Zero is a slot
        # never written, which holds nothing to take up.
        self.slot_gens = bytearray(4 * self.table.n_slots)
        # Inbound SAs by SPI - the hot-path lookup - and, for the rare SPIs
        # that several SAs share (the SAD key is SPI, protocol and destination),
        # by (SPI, destination): then the SPI maps to None here.
        self.in_index: _SpiIndex[_In] = _SpiIndex()
        self.inbound: dict[int, _In | None] = self.in_index.by_spi
        self.inbound_by_dst: dict[tuple[int, bytes], _In] = self.in_index.by_dst
        # AH SAs the same way: their SPIs are a space of their own (the SAD key
        # includes the protocol), and only AH packets look here.
        self.ah_index: _SpiIndex[_AhIn] = _SpiIndex()
        self.inbound_ah: dict[int, _AhIn | None] = self.ah_index.by_spi
        self.inbound_ah_by_dst: dict[tuple[int, bytes], _AhIn] = self.ah_index.by_dst
        self.outbound: dict[int, _Out] = {}
        # IPComp SAs (RFC 3173) by CPI - every worker has all of them (see _Ipcomp) -
        # and outbound by slot; copies of ESP SAs in the other mode, made on first use,
        # for IPComp in tunnel mode and the nested form (_twin).
        self.ipcomp_index: _SpiIndex[_Ipcomp] = _SpiIndex()
        self.ipcomp_out: dict[int, _Ipcomp] = {}
        self.twins: dict[int, _Out] = {}
        # Inbound tunnel-mode IPComp SAs by outer addresses, for IP-in-IP (_ipcomp_tunnel).
        self._ipip: dict[bytes, _Ipcomp] = {}
        self._ipip_generation = -1
        self.policy_generation = -1
        self.policies = PolicySet()
        self.out_flows: dict[Any, tuple[Any, ...]] = {}
        self.in_flows: dict[Any, int] = {}

    @classmethod
    def tables_only(cls, spec: WorkerSpec) -> Worker:
        """A worker that follows the SA and policy tables and does nothing else (no TUN,
        rings or sockets: only ``_refresh`` works): what ``python -m workers.bench_takeup``
        times."""
        self = cls.__new__(cls)
        self.spec = spec
        self.k = spec.index
        self.table = SATable.attach(spec.table)
        self.policy_reader = PolicyReader(spec.policy)
        self._log_last = {}
        self._log_count = {}
        self.rings, self.txs = [], {}  # for close()
        self._init_tables()
        return self

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        log.debug("worker %d of %d up (pid %d)", self.k, self.spec.count, os.getpid())
        poll = self.poll.poll
        rings = self.rings
        wk = self.wk_ctr
        busy = False
        ppid = os.getppid()
        while self.running:
            if not busy:
                poll(IDLE_POLL_MS)
            start = time.monotonic_ns()
            wk[WorkerCounter.HEARTBEAT_NS] = start
            self._refresh()
            busy = False
            for ring in rings:
                if ring.ready():
                    self._inbound(ring)
            if self._outbound() == BATCH:
                busy = True
            for ring in rings:
                if ring.ready():
                    busy = True
            self._flush_counters()
            end = time.monotonic_ns()
            wk[WorkerCounter.BUSY_NS] += end - start
            if end >= self._next_stats:
                self._next_stats = end + int(STATS_INTERVAL * 1e9)
                self._ring_stats()
                if self.reassembler.pending:  # timeouts counted without waiting for a fragment
                    self.reassembler.expire(time.monotonic())
                    self._fragment_drops()
                tun_reassembler = self.tun_reassembler
                if tun_reassembler is not None and tun_reassembler.pending:
                    tun_reassembler.expire(time.monotonic())
                    self._tun_fragment_drops()
                if os.getppid() != ppid:  # the control process is gone
                    log.error("worker %d: control process gone, exiting", self.k)
                    break

    def stop(self) -> None:
        self.running = False

    # -- generations --------------------------------------------------------------------

    def _refresh(self) -> None:
        gen = self.table.generation
        if gen != self.sa_generation:
            self.sa_generation = gen
            self._reload_sas()
            self.out_flows.clear()
            self.in_flows.clear()
        # the policy records since the last refresh, applied to the rules in place
        if self.policy_reader.generation != self.policy_generation and \
                self.policy_reader.refresh(self.policies):
            self.policy_generation = self.policies.generation
            self.out_flows.clear()
            self.in_flows.clear()

    def _reload_sas(self) -> None:
        table = self.table
        n, k = self.spec.count, self.k
        gens = table.slot_generations()
        known = self.slot_gens
        steered = self._steered
        for slot in changed_slots(gens, known):
            at = 4 * slot
            head = table.read_head(slot)
            if head is not None and head[1] == Direction.IN and head[2] in steered \
                    and head[3] % n != k:
                # Another worker's inbound ESP or AH SA (socket filter): nothing to build, no
                # keys to copy; only what the slot held before goes.
                known[at:at + 4] = pack_generation(head[0])
                self._forget(slot)
                continue
            entry = table.read(slot)
            if entry is None:
                if gens[at] & 1:  # being written (little-endian: bit 0 is in the first byte)
                    self.sa_generation = -1  # look again next turn
                    continue
                known[at:at + 4] = gens[at:at + 4]
                self._forget(slot)
                continue
            known[at:at + 4] = pack_generation(entry.generation)
            self._forget(slot)
            sa = entry.sa
            try:
                if sa.protocol == IpProto.AH:
                    self._load_ah(slot, entry.uid, entry.direction, sa)
                    continue
                if sa.protocol == IpProto.IPCOMP:
                    e = _Ipcomp(slot, entry.uid, sa)
                    if entry.direction is Direction.IN:
                        self.ipcomp_index.add(e)  # every worker: see _Ipcomp
                    else:
                        self.ipcomp_out[slot] = e
                    continue
                if sa.protocol != IpProto.ESP:
                    continue
                # No legacy-algorithm warning here: the control process logged
                # it once for the SA when it checked the plan (daemon._check_plan).
                if entry.direction is Direction.IN:
                    if sa.spi % n != k:
                        continue  # another worker's SA (socket filter)
                    ctx = EspContext(sa, allow_legacy=self.spec.allow_legacy, legacy_warning=False,
                                     fast_paths="decap")  # an inbound SA only decapsulates
                    window = ReplayWindow(sa.replay_window, esn=sa.esn,
                                          buffer=table.replay_buffer(slot), initialize=False)
                    self._add_inbound(_In(slot, entry.uid, ctx, window, sa))
                else:
                    ctx = EspContext(sa, allow_legacy=self.spec.allow_legacy, legacy_warning=False,
                                     fast_paths="encap")
                    self.outbound[slot] = _Out(slot, entry.uid, ctx, sa)
            except Exception as exc:  # TransformError, ValueError: the control validated it
                self._note("bad_sa", f"SA {sa.spi:#x} in slot {slot} unusable: {exc}")
            finally:
                sa.wipe()  # the context holds what it needs; the copy's keys go

    # Inbound SAs of these protocols are steered to one worker by their SPI (spi % n == k,
    # workers/bpf.py); every worker takes up the others (outbound SAs, inbound IPComp).
    _steered = frozenset((_ESP, _AH))

    def _load_ah(self, slot: int, uid: int, direction: Direction,
                 sa: SecurityAssociation) -> None:
        """An AH SA's context (RFC 4302); the caller wipes the SA's key copy."""
        n, k = self.spec.count, self.k
        if direction is Direction.IN:
            if sa.spi % n != k:
                return  # another worker's SA (socket filter)
            ctx = AhContext(sa, allow_legacy=self.spec.allow_legacy)
            window = ReplayWindow(sa.replay_window, esn=sa.esn,
                                  buffer=self.table.replay_buffer(slot), initialize=False)
            self.ah_index.add(_AhIn(slot, uid, ctx, window, sa))
        else:
            ctx = AhContext(sa, allow_legacy=self.spec.allow_legacy)
            self.outbound[slot] = _AhOut(slot, uid, ctx, sa)

    def _add_inbound(self, e: _In) -> None:
        self.in_index.add(e)

    def _forget(self, slot: int) -> None:
        self.outbound.pop(slot, None)
        self.in_index.forget(slot)
        self.ah_index.forget(slot)
        self.ipcomp_index.forget(slot)
        self.ipcomp_out.pop(slot, None)
        self.twins.pop(slot, None)

    def _shared_spi(self, spi: int, pkt: memoryview) -> _In | None:
        """The SA of a shared SPI, by the packet's destination address."""
        dst = bytes(pkt[16:20]) if pkt[0] >> 4 == 4 else bytes(pkt[24:40])
        return self.inbound_by_dst.get((spi, dst))

    # -- inbound ------------------------------------------------------------------------

    def _inbound(self, ring: RxRing) -> None:
        inbound = self.inbound
        acc = self.acc
        write = os.write
        fd = self.tun.fileno()
        push = self.gro.push if self.gro is not None else None
        port = self.spec.nat_t_port
        esp_kind = Inbound.ESP
        check = self._inbound_check
        count = 0
        head = _V4_ESP.unpack_from
        defragment = self._defragment
        # Each packet is copied out of the ring into one fixed place: the ESP
        # fast paths keep their per-place cache (esp.py, "Speed") only for a
        # buffer and offset used twice in a row, and ring frames never are.
        rx = self.rx_view
        cap = self.rx_capacity
        for pkt in ring.batch(0):
            count += 1
            end = len(pkt)
            if end > cap:
                self._wk_drop(Drop.MALFORMED, "malformed")
                continue
            rx[:end] = pkt
            if rx[0] == 0x45 and rx[9] == _ESP and end >= 28:
                # The common case, bare ESP after an IPv4 header without options:
                # the SPI is at 20 (decap_into checks the rest of the header),
                # read with the flags word, tested once.
                frag, spi = head(rx)
                if frag & 0x3FFF:  # MF or a fragment offset (RFC 791): reassemble first
                    end, spi = defragment(rx, end)
                    if not end:
                        continue
            else:
                kind, spi, _, _, _ = peek(rx, 0, end, udp_port=port)
                if kind is not esp_kind:
                    v4 = rx[0] >> 4 == 4
                    if rx[9 if v4 else 6] == _AH and end >= 28 and not (
                            v4 and (rx[6] & 0x3F or rx[7])):
                        # AH (RFC 4302), not a fragment: ESP pays nothing.
                        self._inbound_ah(rx, end)
                        continue
                    # peek calls every fragment malformed: it may be ESP or AH once whole.
                    end, spi = defragment(rx, end)
                    if not end:
                        continue
            e = inbound.get(spi, _UNKNOWN)
            if e is _UNKNOWN and self.table.generation != self.sa_generation:
                # An SA installed while this batch was under way (IKE answers a rekey only
                # after installing it, and the peer starts using it at once): look again.
                self._flush_counters()  # counts so far belong to the slots as they were
                self._refresh()
                e = inbound.get(spi, _UNKNOWN)  # the same dict, brought up to date
            if e is None:
                e = self._shared_spi(spi, rx)
            if e is None or e is _UNKNOWN:
                self._wk_drop(Drop.UNKNOWN_SPI, "unknown_spi", spi)
                continue
            drop, s, en, nh = e.decap(rx, 0, end, e.window)
            if drop:
                if nh == _IPCOMP:  # IPComp in tunnel-mode ESP (esp.py: the payload's place)
                    self._inbound_ipcomp(e, rx, s, en, tunnel=True, payload=True)
                    continue
                self._sa_drop(e.slot, drop, spi)
                continue
            if not check(e, rx, s, en):
                if nh == _IPCOMP:  # transport mode: the check refuses protocol 108 to send it here
                    self._inbound_ipcomp(e, rx, s, en, tunnel=False, payload=False)
                    continue
                if nh in (_IPIP, _IPV6_IN):  # uncompressed, nested form (_inbound_decide)
                    self._inbound_ipip(e, rx, s, en)
                    continue
                self._sa_drop(e.slot, Drop.POLICY_MISMATCH, spi)
                continue
            if push is not None:
                push(rx, s, en)
            else:
                try:
                    write(fd, rx[s:en])
                except OSError as exc:
                    self._tun_write_failed(exc)
                    continue  # not forwarded: not counted on the SA
            a = acc.get(e.slot)
            if a is None:
                acc[e.slot] = [1, en - s]
            else:
                a[0] += 1
                a[1] += en - s
        if push is not None:
            self.gro.flush()  # type: ignore[union-attr]
        self.packets_in += count

    def _inbound_ah(self, rx: memoryview, end: int) -> None:
        """One AH packet in ``rx[:end]``: verify, check the policy, on to the TUN as ESP's are.

        The socket filter takes IPv4 AH and IPv6 AH directly after the fixed
        header, so the SPI is at the IP header's end + 4 (RFC 4302 §2); AH
        shorter than that went to one worker and is counted malformed here.
        """
        v4 = rx[0] >> 4 == 4
        at = ((rx[0] & 15) << 2) + 4 if v4 else 44
        if at + 4 > end:
            self._wk_drop(Drop.MALFORMED, "malformed")
            return
        spi = int(_U32.unpack_from(rx, at)[0])
        e: Any = self.inbound_ah.get(spi, _UNKNOWN)
        if e is _UNKNOWN and self.table.generation != self.sa_generation:
            self._flush_counters()  # as in _inbound: an SA installed while the batch ran
            self._refresh()
            e = self.inbound_ah.get(spi, _UNKNOWN)
        if e is None:
            dst = bytes(rx[16:20]) if v4 else bytes(rx[24:40])
            e = self.inbound_ah_by_dst.get((spi, dst))
        if e is None or e is _UNKNOWN:
            self._wk_drop(Drop.UNKNOWN_SPI, "unknown_spi", spi)
            return
        drop, packet = e.ah.decap(rx[:end], e.window)
        if drop:
            if drop is Drop.BAD_NEXT_HEADER and packet:  # IPComp in tunnel-mode AH (ah.py)
                rx[:len(packet)] = packet
                self._inbound_ipcomp(e, rx, 0, len(packet), tunnel=True, payload=False)
                return
            self._sa_drop(e.slot, drop, spi)
            return
        n = len(packet)
        rx[:n] = packet  # where ESP's plaintext would be: the GRO coalescer reads from rx
        if not self._inbound_check(e, rx, 0, n):
            upper = _upper_protocol(rx, n) if e.mode == MODE_TRANSPORT else -1
            if upper == _IPCOMP:
                self._inbound_ipcomp(e, rx, 0, n, tunnel=False, payload=False)
                return
            if upper in (_IPIP, _IPV6_IN):  # uncompressed, nested form
                self._inbound_ipip(e, rx, 0, n)
                return
            self._sa_drop(e.slot, Drop.POLICY_MISMATCH, spi)
            return
        if self.gro is not None:
            self.gro.push(rx, 0, n)
        else:
            try:
                os.write(self.tun.fileno(), rx[:n])
            except OSError as exc:
                self._tun_write_failed(exc)
                return  # not forwarded: not counted on the SA
        self._count(self.acc, e.slot, 1, n)

    def _inbound_ipcomp(self, e: _In, rx: memoryview, s: int, en: int, *, tunnel: bool,
                        payload: bool) -> None:
        """What ESP or AH ``e`` carried, ``rx[s:en]``, is IPComp (RFC 3173): decompress it.

        Outside the ESP fast path, which reaches here only through its drop
        (tunnel mode) or policy-check failure (transport mode) branch; AH
        likewise.  ``payload``: ``rx[s:en]`` is the IPComp header and data,
        the outer header still at ``rx[0]`` (tunnel-mode ESP); otherwise an IP
        packet with protocol 108, whose header is the outer one in tunnel mode.
        The CPI picks the IPComp SA among ours (the carrying SA's
        destination); the decompressed packet then takes the carrying SA's
        policy check and goes to the TUN as any other.  IPComp is optional on
        receipt (RFC 3173 §2.2): uncompressed packets never come here.
        """
        if payload:
            at = s
        elif rx[s] >> 4 == 4:
            at = s + ((rx[s] & 15) << 2)
        else:
            try:
                at = s + ipv6_find_header(rx[s:en])[0]
            except PacketError:
                self._sa_drop(e.slot, Drop.MALFORMED, e.spi)
                return
        if at + 4 > en:
            self._sa_drop(e.slot, Drop.RUNT, e.spi)
            return
        cpi = int(_U16.unpack_from(rx, at + 2)[0])
        c = self.ipcomp_index.by_spi.get(cpi, _UNKNOWN)
        if c is None:
            c = self.ipcomp_index.by_dst.get((cpi, e.dst), _UNKNOWN)
        if c is _UNKNOWN:
            self._sa_drop(e.slot, Drop.UNKNOWN_SPI, cpi)  # no IPComp SA: counted on its carrier
            return
        ctx = c.tunnel if tunnel else c.transport
        if ctx is None and not tunnel and e.mode == MODE_TRANSPORT:
            # A tunnel-mode IPComp SA inside transport-mode ESP: KAME's nested form.
            self._inbound_nested(e, c, rx, s, en, compressed=True)
            return
        if ctx is None:  # an IPComp SA of the other mode
            self._sa_drop(c.slot, Drop.BAD_NEXT_HEADER, cpi)
            return
        if payload:
            drop, packet = ctx.decap_tunnel_payload(rx[:40], rx[s:en])  # the outer ECN
        else:
            drop, packet = ctx.decap(rx[s:en])  # transport, or tunnel behind its outer header
        if drop:
            self._sa_drop(c.slot, drop, cpi)
            return
        carried = en - s
        n = len(packet)
        rx[:n] = packet  # where ESP's plaintext would be: the GRO coalescer reads from rx
        if not self._inbound_check(e, rx, 0, n):
            self._sa_drop(e.slot, Drop.POLICY_MISMATCH, e.spi)
            return
        if not self._to_tun(rx, n):
            return  # not forwarded: not counted on the SAs
        self._count(self.acc, e.slot, 1, carried)
        self._count(self.acc, c.slot, 1, n)

    def _inbound_ipip(self, e: _In, rx: memoryview, s: int, en: int) -> None:
        """IP-in-IP from transport-mode ESP or AH ``e``, ``rx[s:en]``: an IPComp tunnel's packet.

        What Linux's IPComp tunnel state sends a packet not worth compressing
        in (see _nested_decision); ``_inbound_decide`` sends it here only when a
        tunnel-mode IPComp SA between the outer addresses is installed (as
        Linux's IPIP state that comes with it), other IP-in-IP goes on as it is.
        """
        c = self._ipcomp_tunnel(_outer_addresses(rx, s)) if e.mode == MODE_TRANSPORT else None
        if c is None:  # tunnel-mode ESP (a policy mismatch), or the SA went since the check
            self._sa_drop(e.slot, Drop.POLICY_MISMATCH, e.spi)
            return
        self._inbound_nested(e, c, rx, s, en, compressed=False)

    def _inbound_nested(self, e: _In, c: _Ipcomp, rx: memoryview, s: int, en: int, *,
                        compressed: bool) -> None:
        """KAME's nested form inbound: ``rx[s:en]``, from transport-mode ``e``, is outer IP |
        IPComp | compressed inner packet, or outer IP | inner packet (IP-in-IP).

        The tunnel-mode IPComp SA ``c`` unwraps it (ECN merged, RFC 6040 §4.2);
        the inner packet must match an ``ipsec`` policy with an IPComp tunnel
        request between the outer addresses and a transport request ``e``
        satisfies (_nested_decide).  Uncompressed packets are counted on ``e``
        only, as the tunnel/tunnel form's plain tunnel-mode ESP is.
        """
        outer = _outer_addresses(rx, s)
        drop, packet = c.tunnel.decap(rx[s:en])  # type: ignore[union-attr]
        if drop:
            self._sa_drop(c.slot, drop, c.spi)
            return
        carried = en - s
        n = len(packet)
        rx[:n] = packet
        selectors = _selectors(rx, 0, n)
        if selectors is None:
            self._sa_drop(c.slot, Drop.MALFORMED, c.spi)
            return
        key = (e.slot, outer, *selectors)
        ok = self.in_flows.get(key)
        if ok is None:
            if len(self.in_flows) > 65536:
                self.in_flows.clear()
            ok = self.in_flows[key] = self._nested_decide(e, outer, *selectors)
        if not ok:
            self._sa_drop(e.slot, Drop.POLICY_MISMATCH, e.spi)
            return
        if not self._to_tun(rx, n):
            return
        self._count(self.acc, e.slot, 1, carried)
        if compressed:
            self._count(self.acc, c.slot, 1, n)

    def _nested_decide(self, e: _In, outer: bytes, version: int, addrs: bytes, proto: int,
                       ports: int) -> int:
        """RFC 4301 §5.2 for the nested form: the inner packet's policy asks for an IPComp
        tunnel between the outer addresses and for ``e`` in transport mode (as Linux's
        template check, an IPComp or IPIP tunnel state must match its template)."""
        half = len(addrs) // 2
        src, dst = addrs[:half], addrs[half:]
        ps = self.policies
        rule = ps.lookup("in" if dst in ps.local else "fwd", version, int.from_bytes(src, "big"),
                         int.from_bytes(dst, "big"), proto, ports >> 16, ports & 0xFFFF)
        if rule is None or rule.action != ACTION_IPSEC:
            return 0
        o = len(outer) // 2
        tunnel = carrier = False
        for req in rule.requests:
            if req.protocol == _IPCOMP:
                tunnel = tunnel or (req.mode == MODE_TUNNEL and req.src == outer[:o]
                                    and req.dst == outer[o:])
            elif req.protocol == e.proto and req.mode == MODE_TRANSPORT:
                carrier = carrier or not req.reqid or req.reqid == e.reqid
        return int(tunnel and carrier)

    def _ipcomp_tunnel(self, outer: bytes) -> _Ipcomp | None:
        """Our inbound tunnel-mode IPComp SA from the outer source to the outer destination.

        An index made on first use after each SA generation: IP-in-IP inside
        transport-mode ESP is rare, so the SA loading pays nothing for it.
        """
        if self._ipip_generation != self.sa_generation:
            self._ipip_generation = self.sa_generation
            self._ipip = {c.src + c.dst: c for c in self.ipcomp_index.by_dst.values()
                          if c.transport is None}
        return self._ipip.get(outer)

    def _to_tun(self, rx: memoryview, n: int) -> bool:
        """``rx[:n]``, decapsulated and checked, to the TUN (through GRO); False if refused."""
        if self.gro is not None:
            self.gro.push(rx, 0, n)
            return True
        try:
            os.write(self.tun.fileno(), rx[:n])
        except OSError as exc:
            self._tun_write_failed(exc)
            return False
        return True

    def _tun_write_failed(self, exc: OSError, packets: int = 1) -> None:
        """A write the kernel refused: counted (per packet inside it) and logged.

        The packets stay counted on their SA too: they were decrypted and
        checked; the TUN_WRITE count says that they went no further.
        """
        r = int(Drop.TUN_WRITE)
        self.wk_drops[r] = self.wk_drops.get(r, 0) + packets
        self._note("tun_write", f"TUN write failed: {exc.strerror}")

    def _defragment(self, rx: memoryview, end: int) -> tuple[int, int]:
        """A packet the inbound loop could not take as it is: reassemble it if it is a fragment.

        Returns ``(end, spi)`` when ``rx[:end]`` now holds a whole ESP datagram
        this worker must decrypt, else ``(0, 0)``: not a fragment (counted
        malformed, as before), a fragment held or dropped (counted by
        :meth:`_fragment_drops`), or a datagram that is another worker's.  A
        whole AH datagram this worker must verify goes to :meth:`_inbound_ah`
        from here (also ``(0, 0)``).
        """
        if not is_fragment(rx, end):
            self._wk_drop(Drop.MALFORMED, "malformed")
            return 0, 0
        reassembler = self.reassembler
        whole = reassembler.push(rx[:end], time.monotonic())
        if reassembler.discards:
            self._fragment_drops()
        if whole is None:
            return 0, 0
        packet = whole.packet
        end = len(packet)
        rx[:end] = packet
        n = self.spec.count
        v4 = rx[0] >> 4 == 4
        if rx[9 if v4 else 6] == _AH and end >= 28:
            # AH fragmented after AH processing (RFC 4302 §3.3.4), verified whole (§3.4.1)
            # by the worker its SPI steers to (the first fragment holds it: reassembly.py).
            at = ((rx[0] & 15) << 2) + 4 if v4 else 44
            if at + 4 > end or _U32.unpack_from(rx, at)[0] % n == self.k:
                self._inbound_ah(rx, end)
            return 0, 0
        kind, spi, _, _, _ = peek(rx, 0, end, udp_port=self.spec.nat_t_port)
        if kind is not Inbound.ESP:
            # IKE or another port in UDP is the kernel's (it has its own copy); a broken
            # header is counted, by one worker.
            if kind is Inbound.MALFORMED and (whole.claim == Claim.MINE
                                              or whole.ident % n == self.k):
                self._wk_drop(Drop.MALFORMED, "malformed")
            return 0, 0
        if spi % n != self.k:
            return 0, 0  # another worker's SA: that worker reassembled it too
        return end, spi

    def _fragment_drops(self) -> None:
        """Count the reassembler's discards that are this worker's to count (exactly one does)."""
        n, k = self.spec.count, self.k
        drops = self.wk_drops
        for d in self.reassembler.discards:
            if d.counted_by(n, k):
                r = int(d.reason)
                drops[r] = drops.get(r, 0) + d.fragments
                self._note(d.reason.label, f"id {d.ident:#x} protocol {d.proto}")
        self.reassembler.discards.clear()

    def _inbound_check(self, e: _In, buf: memoryview, s: int, end: int) -> bool:
        """RFC 4301 §5.2: the decapsulated packet must be one the SA's policy admits."""
        b0 = buf[s]
        if b0 == 0x45 and end - s >= 24:
            # IPv4 without options (the common case): selectors in one struct call.
            frag, proto, addrs, word = _V4_FAST.unpack_from(buf, s)
            if frag & 0x1FFF:
                ports = 0
            elif proto in _PORT_PROTOS:
                ports = word
            elif proto in _ICMP_PROTOS:
                ports = (word >> 8 & 0xFF0000) | (word >> 16 & 0xFF)
            else:
                ports = 0
            key = (e.slot, addrs, proto, ports)
            ok = self.in_flows.get(key)
            if ok is None:
                return self._inbound_cache(key, e, 4, addrs, proto, ports)
            return bool(ok)
        version = b0 >> 4
        if version == 4:
            if end - s < 20:
                return False
            b0, frag_hi, frag_lo, proto, addrs = _V4_KEY.unpack_from(buf, s)
            at = s + ((b0 & 15) << 2)
            ports = 0 if (frag_hi & 0x1F or frag_lo) else _ports(proto, buf, at, end)
        elif version == 6:
            if end - s < 40:
                return False
            proto, addrs = _V6_KEY.unpack_from(buf, s)
            at = s + 40
            while proto in _IPV6_EXT and at + 8 <= end:
                proto, at = buf[at], at + ((buf[at + 1] + 1) << 3)
            ports = _ports(proto, buf, at, end)
        else:
            return False
        key = (e.slot, addrs, proto, ports)
        ok = self.in_flows.get(key)
        if ok is None:
            return self._inbound_cache(key, e, version, addrs, proto, ports)
        return bool(ok)

    def _inbound_cache(self, key: tuple[int, bytes, int, int], e: _In, version: int,
                       addrs: bytes, proto: int, ports: int) -> bool:
        if len(self.in_flows) > 65536:
            self.in_flows.clear()
        ok = self.in_flows[key] = self._inbound_decide(e, version, addrs, proto, ports)
        return bool(ok)

    def _inbound_decide(self, e: _In, version: int, addrs: bytes, proto: int, ports: int) -> int:
        half = len(addrs) // 2
        src, dst = addrs[:half], addrs[half:]
        ps = self.policies
        direction = "in" if dst in ps.local else "fwd"
        rule = ps.lookup(direction, version, int.from_bytes(src, "big"),
                         int.from_bytes(dst, "big"), proto, ports >> 16, ports & 0xFFFF)
        transport = e.mode == MODE_TRANSPORT
        if proto == _IPCOMP and transport:
            return 0  # IPComp inside transport-mode ESP: _inbound_ipcomp checks what it holds
        if proto in (_IPIP, _IPV6_IN) and transport and \
                self._ipcomp_tunnel(addrs) is not None:
            return 0  # an IPComp tunnel's uncompressed packet: _inbound_ipip checks the inner one
        if rule is None or rule.action == ACTION_NONE:
            # As Linux (__xfrm_policy_check): without a policy that asks for
            # IPsec, only what came through transport-mode SAs is accepted.
            return int(transport)
        if rule.action == ACTION_DISCARD:
            return 0
        for req in rule.requests:
            if req.protocol != e.proto or req.mode != e.mode:
                continue
            if req.src is not None and (req.src != e.src or req.dst != e.dst):
                continue
            if req.reqid and req.reqid != e.reqid:
                continue
            return 1
        return 0

    # -- outbound -----------------------------------------------------------------------

    def _outbound(self) -> int:
        read = self.tun.readinto
        reads = self.reads
        bufs = self.bufs
        flows = self.out_flows
        decide = self._outbound_decide
        pending: list[tuple[memoryview, int, tuple[Any, ...]]] = []
        need: dict[int, int] = {}
        n = 0
        h = HEADROOM
        vnet = self.vnet
        for i in range(BATCH):
            try:
                length = read(reads[i])
            except OSError:
                length = None
            if length is None:
                break
            n += 1
            length -= vnet
            buf = bufs[i]
            version = buf[h] >> 4
            if version == 4 and length >= 20:
                b0, frag_hi, frag_lo, proto, addrs = _V4_KEY.unpack_from(buf, h)
                if frag_hi & 0x3F or frag_lo:
                    # A fragment (MF or an offset, RFC 791): the host cut a datagram
                    # bigger than the TUN MTU.  Transport mode reassembles it first.
                    ports = 0 if (frag_hi & 0x1F or frag_lo) else _ports(
                        proto, buf, h + ((b0 & 15) << 2), h + length)
                    if self._outbound_fragment(buf, h, length, addrs, proto, ports,
                                               pending, need):
                        continue
                else:
                    ports = _ports(proto, buf, h + ((b0 & 15) << 2), h + length)
            elif version == 6 and length >= 40:
                proto, addrs = _V6_KEY.unpack_from(buf, h)
                at = h + 40
                end = h + length
                while proto in _IPV6_EXT and at + 8 <= end:
                    proto, at = buf[at], at + ((buf[at + 1] + 1) << 3)
                if proto == _IPV6_FRAG and at + 8 <= end:
                    # The host's own fragment (RFC 8200 §4.5), after a packet-too-big:
                    # transport mode reassembles it first, as for IPv4.
                    proto = buf[at]
                    first = not (buf[at + 2] << 8 | buf[at + 3]) & 0xFFF8
                    ports = _ports(proto, buf, at + 8, end) if first else 0
                    if self._outbound_fragment(buf, h, length, addrs, proto, ports,
                                               pending, need, version=6):
                        continue
                ports = _ports(proto, buf, at, end)
            else:
                self._wk_drop(Drop.MALFORMED, "malformed")
                continue
            if length >= self.capacity:
                self._wk_drop(Drop.MALFORMED, "malformed")  # truncated: larger than the TUN MTU
                continue
            key = (addrs, proto, ports)
            d = flows.get(key)
            if d is None:
                d = decide(version, addrs, proto, ports, buf, h, length)
                if len(flows) > 65536:
                    flows.clear()
                flows[key] = d
            kind = d[0]
            if kind == OUT_ESP:
                slot = d[1]
                if length > d[3]:
                    self._too_big(buf, h, length, d, pending, need)
                    continue
                pending.append((buf, length, d))
                need[slot] = need.get(slot, 0) + 1
            elif kind == OUT_BYPASS:
                self._bypass(buf[h:h + length], version, addrs)
            elif kind == OUT_IPCOMP:  # outside the ESP fast path, as bypass and drops are
                if length > d[3]:
                    # MTU decisions use the uncompressed size: conservative (compression
                    # might have made it fit), and a too-big packet goes uncompressed.
                    self._too_big(buf, h, length, d, pending, need)
                else:
                    self._compress(buf, h, length, d, pending, need)
            else:
                reason = d[1]
                if d[2] is not None:
                    self._sa_drop(d[2], reason, 0)
                else:
                    self._wk_drop(reason, reason.label)
        if not n:
            return 0
        self.packets_out += n
        if pending:
            self._encrypt(pending, need)
        return n

    def _compress(self, buf: memoryview, h: int, length: int, d: tuple[Any, ...],
                  pending: list[tuple[memoryview, int, tuple[Any, ...]]],
                  need: dict[int, int]) -> None:
        """IPComp (RFC 3173) before ESP: ``buf[h:h + length]`` compressed in place, then queued.

        Compressed, the packet is queued with the decision for it (ESP next header
        108); not worth compressing (threshold, non-expansion, RFC 3173 §2.2), it
        is queued as plain ESP.  Either way it is counted on the IPComp SA, with
        its uncompressed size, as Linux counts the packets an IPComp state sees.
        """
        slot = d[1]
        drop, packet = d[7].compress(buf[h:h + length])
        if drop:
            self._sa_drop(d[8], drop, 0)
            return
        self._count(self.acc, d[8], 1, length)
        if packet is not None and len(packet) < self.capacity:
            n = len(packet)
            buf[h:h + n] = packet
            length, d = n, d[9]
        pending.append((buf, length, d))
        need[slot] = need.get(slot, 0) + 1

    def _encrypt(self, pending: list[tuple[memoryview, int, tuple[Any, ...]]],
                 need: dict[int, int]) -> None:
        table = self.table
        nxt: dict[int, int] = {}
        for slot, count in need.items():
            out = self.outbound.get(slot)
            first = (table.alloc_seq(slot, count, out.limit, out.uid) if out is not None
                     else SEQ_GONE)
            # 0: exhausted (RFC 4303 §3.3.3: rekey, never cycle); SEQ_GONE: the SA was
            # removed after this worker last read the table (its packets have no SA now).
            nxt[slot] = first
        acc = self.acc
        h = HEADROOM
        # Every packet is encrypted in one fixed place, so that the ESP fast
        # path's per-place cache applies (esp.py, "Speed"); the TX ring copies
        # the result anyway.
        work = self.work
        sent_to: set[TxSender] = set()
        last_slot = -1
        seq = 0
        sent = 0
        nbytes = 0
        for buf, length, d in pending:
            slot = d[1]
            if slot != last_slot:
                if last_slot >= 0:
                    nxt[last_slot] = seq
                    self._count(acc, last_slot, sent, nbytes)
                last_slot, seq, sent, nbytes = slot, nxt[slot], 0, 0
            if seq <= 0:
                self._sa_drop(slot, Drop.SEQ_OVERFLOW if seq == 0 else Drop.NO_SA, 0)
                continue
            end = h + length
            work[h:end] = buf[h:end]
            drop, s, e = d[2](work, h, end, seq)
            seq += 1
            if drop:
                self._sa_drop(slot, drop, 0)
                continue
            tx = d[4]
            if not tx.send(work[s:e]):
                self._sa_drop(slot, Drop.RING_FULL, 0)
                continue
            sent_to.add(tx)
            sent += 1
            nbytes += length
        if last_slot >= 0:
            self._count(acc, last_slot, sent, nbytes)
        for tx in sent_to:
            tx.flush()

    @staticmethod
    def _count(acc: dict[int, list[int]], slot: int, packets: int, nbytes: int) -> None:
        if not packets:
            return
        a = acc.get(slot)
        if a is None:
            acc[slot] = [packets, nbytes]
        else:
            a[0] += packets
            a[1] += nbytes

    def _outbound_decide(self, version: int, addrs: bytes, proto: int, ports: int,
                         buf: memoryview, h: int, length: int) -> tuple[Any, ...]:
        """The SPD decision for a new flow (cached by the caller)."""
        half = len(addrs) // 2
        src, dst = addrs[:half], addrs[half:]
        rule: Rule | None = self.policies.lookup(
            "out", version, int.from_bytes(src, "big"), int.from_bytes(dst, "big"),
            proto, ports >> 16, ports & 0xFFFF)
        if rule is None or rule.action == ACTION_NONE:
            return (OUT_BYPASS,)
        if rule.action == ACTION_DISCARD:
            return (OUT_DROP, Drop.DISCARD, None)
        chosen: _Out | None = None
        chosen_req: Request | None = None
        comp_req: Request | None = None
        for req in rule.requests:
            if req.protocol == _IPCOMP:
                # KAME order: ipcomp/.../use before esp: compress, then ESP.  Without
                # its SA the packet goes uncompressed, which is always allowed (RFC
                # 3173 §2.2), so an IPComp request never drops nor asks IKE for an SA.
                if comp_req is None:
                    comp_req = req
                continue
            if comp_req is not None and _nested(comp_req, req):
                # KAME's nested form (Linux's, strongSwan's): ESP transport protects the
                # IPComp tunnel's outer packet, so its SA is the one between the end points.
                slot = self.policies.outbound_slot(req, comp_req.src, comp_req.dst)  # type: ignore[arg-type]
            else:
                slot = self.policies.outbound_slot(req, src, dst)
            out = self.outbound.get(slot) if slot is not None else None
            if req.protocol != _ESP and req.protocol != _AH:
                continue  # nothing else is a request setkey or IKE makes
            if chosen is not None and (req.protocol == _AH) != isinstance(chosen, _AhOut):
                # A bundle (ESP and AH on one policy, RFC 4301 §4.5) is one transform too
                # many for this datapath: refuse rather than send less than asked for.
                if req.required:
                    self._note("bundle_out", "ESP+AH bundles are not supported by the "
                               f"datapath: policy for {_addr(src)} -> {_addr(dst)} drops")
                    return (OUT_DROP, Drop.NO_SA, None)
                continue
            if out is None:
                if req.reqid:  # a unique policy with no SA: IKE may be waiting for this (trap)
                    self.wk_ctr[WorkerCounter.ACQUIRE_REQID] = req.reqid
                    self.wk_ctr[WorkerCounter.ACQUIRES] += 1
                if req.required:
                    return (OUT_DROP, Drop.NO_SA, None)
                continue
            if chosen is None:
                chosen, chosen_req = out, req
        if chosen is None:
            if comp_req is not None:
                self._note("ipcomp_alone", "IPComp without ESP is not supported by the datapath: "
                           f"{_addr(src)} -> {_addr(dst)} goes uncompressed")
            return (OUT_BYPASS,)
        info = self.policies.slots.get(chosen.slot)
        path_mtu = info.path_mtu if info is not None else 1500
        tx = self.txs.get(info.ifname, self.tx_default) if info is not None else self.tx_default
        if comp_req is not None and chosen_req is not None and _nested(comp_req, chosen_req):
            return self._nested_decision(chosen, comp_req, tx, version, path_mtu, src, dst)
        if chosen.tunnel:
            header = 0
        elif version == 4:
            header = (buf[h] & 15) << 2
        else:
            try:
                header = ipv6_ipsec_offset(buf[h:h + length])[0]
            except ValueError:
                header = 40
        d = (OUT_ESP, chosen.slot, chosen.encap, chosen.max_inner(path_mtu, header), tx,
             version, path_mtu)
        if comp_req is not None and chosen_req is not None:
            return self._ipcomp_decision(d, chosen, chosen_req, comp_req, src, dst)
        return d

    def _ipcomp_decision(self, d: tuple[Any, ...], chosen: _Out, chosen_req: Request,
                         comp_req: Request, src: bytes, dst: bytes) -> tuple[Any, ...]:
        """The ESP decision ``d`` with IPComp in front of it, if its SA is installed.

        Wire format as Linux and strongSwan send it: outer IP | ESP | IPComp |
        DEFLATE data, ESP's next header 108.  Transport mode: the IPComp codec's
        output (protocol 108) goes through the ESP SA as any packet.  Tunnel
        mode: the codec makes outer IP (the SA's addresses) | IPComp | the
        compressed inner packet, and a transport-mode copy of the tunnel ESP SA
        (same keys and sequence numbers) puts ESP after that outer header, so
        there is one outer header, not two.  Uncompressed packets are plain ESP.
        AH the same way.  Anything else - modes or tunnel end points that differ
        between the two requests, an IPComp SA of the other mode - goes
        uncompressed, logged.
        """
        slot = self.policies.outbound_slot(comp_req, src, dst)
        c = self.ipcomp_out.get(slot) if slot is not None else None
        if c is None:
            return d  # no IPComp SA (yet): uncompressed
        tunnel = comp_req.mode == MODE_TUNNEL
        why = ""
        if tunnel != chosen.tunnel or (tunnel and (comp_req.src, comp_req.dst)
                                         != (chosen_req.src, chosen_req.dst)):
            why = "the IPComp and ESP requests differ in mode or tunnel end points"
        ctx = c.tunnel if tunnel else c.transport
        if not why and ctx is None:
            why = f"IPComp SA {c.spi:#x} has the other mode"
        if why or ctx is None:
            self._note("ipcomp_unusable", f"{why}: {_addr(src)} -> {_addr(dst)} goes uncompressed")
            return d
        encap = d[2]
        if tunnel:
            twin = self._twin(chosen)
            if twin is None:
                return d
            encap = twin.encap
        return (OUT_IPCOMP, *d[1:], ctx, c.slot, (OUT_ESP, d[1], encap, *d[3:]))

    def _nested_decision(self, chosen: _Out, comp_req: Request, tx: TxSender, version: int,
                         path_mtu: int, src: bytes, dst: bytes) -> tuple[Any, ...]:
        """KAME's nested form, ``ipcomp/tunnel/A-B/use esp/transport//require``.

        ``chosen`` is the transport-mode ESP (or AH) SA from A to B.  Linux's
        IPComp tunnel state builds outer IP (A -> B) | IPComp | compressed inner
        packet, and the ESP transport state encrypts what follows that header:
        the same packet as the tunnel/tunnel form's, ESP next header 108.  A
        packet not worth compressing leaves that state as IP-in-IP (Linux's
        ``ipcomp_output`` leaves the tunnel mode's outer header, protocol 4 or
        41, in place), which under ESP transport is, on the wire, tunnel-mode
        ESP between A and B: a tunnel-mode copy of ``chosen`` sends it.  Without
        a (tunnel-mode) IPComp SA every packet goes that way, as the
        tunnel/tunnel form sends plain tunnel-mode ESP - where Linux, skipping
        the optional template, would look for an ESP SA between the inner
        addresses (``xfrm_tmpl_resolve_one``) and drop the packet.
        """
        twin = self._twin(chosen)
        if twin is None:
            return (OUT_DROP, Drop.NO_SA, None)  # replaced meanwhile: a new decision follows
        d = (OUT_ESP, chosen.slot, twin.encap, twin.max_inner(path_mtu, 0), tx, version, path_mtu)
        slot = self.policies.outbound_slot(comp_req, src, dst)
        c = self.ipcomp_out.get(slot) if slot is not None else None
        if c is None:
            return d
        if c.transport is not None:  # mode any: a transport SA, as on Linux (see _Ipcomp)
            self._note("ipcomp_unusable", f"IPComp SA {c.spi:#x} is not a tunnel-mode SA: "
                       f"{_addr(src)} -> {_addr(dst)} goes uncompressed")
            return d
        return (OUT_IPCOMP, *d[1:], c.tunnel, c.slot, (OUT_ESP, d[1], chosen.encap, *d[3:]))

    def _twin(self, out: _Out) -> _Out | None:
        """A context of the ESP or AH SA ``out`` in the other mode (made once, kept).

        Transport mode for a tunnel-mode SA (IPComp in tunnel mode puts the
        outer header in front of ESP itself), tunnel mode between the SA's
        addresses for a transport-mode one (the nested form, _nested_decision).
        The worker wiped its copy of the keys when it built ``out``, so the slot
        is read again (seqlock copy) and this copy wiped in turn.  Sequence
        numbers still come from the slot's one counter, so the two contexts
        never use a number twice.
        """
        twin = self.twins.get(out.slot)
        if twin is not None and twin.uid == out.uid:
            return twin
        entry = self.table.read(out.slot)
        if entry is None or entry.uid != out.uid:
            return None  # replaced meanwhile: the next generation brings new decisions
        sa = entry.sa
        try:
            sa.mode = Mode.TRANSPORT if out.tunnel else Mode.TUNNEL
            if isinstance(out, _AhOut):
                twin = _AhOut(out.slot, out.uid,
                              AhContext(sa, allow_legacy=self.spec.allow_legacy), sa)
            else:
                ctx = EspContext(sa, allow_legacy=self.spec.allow_legacy, legacy_warning=False,
                                 fast_paths="encap")  # a copy only ever sends
                twin = _Out(out.slot, out.uid, ctx, sa)
            self.twins[out.slot] = twin
        except Exception as exc:  # as in _reload_sas: the control process validated it
            self._note("bad_sa", f"SA {sa.spi:#x} in slot {out.slot} unusable: {exc}")
            return None
        finally:
            sa.wipe()
        return twin

    def _too_big(self, buf: memoryview, h: int, length: int, d: tuple[Any, ...],
                 pending: list[tuple[memoryview, int, tuple[Any, ...]]],
                 need: dict[int, int]) -> None:
        slot, max_inner, version = d[1], d[3], d[5]
        packet = buf[h:h + length]
        if version == 4 and not packet[6] & 0x40:
            out = self.outbound.get(slot)
            if out is None or not out.tunnel:
                # Transport mode, ESP (RFC 4303 §3.3.4) and AH (RFC 4302 §3.3.4), is
                # applied to whole datagrams only, and fragmentation comes after it:
                # encapsulated whole, the outer packet goes in fragments.
                big = self._big_buffer()
                if buf is not big:
                    big[h:h + length] = packet
                self._send_whole(d, big, h, length)
                return
            # Tunnel mode: each inner fragment rides in a tunnel packet of its own.
            frags = fragment_ipv4(packet, max_inner)
            if frags:
                size = HEADROOM + max_inner + TAILROOM
                for frag in frags:
                    room = memoryview(bytearray(size))
                    room[h:h + len(frag)] = frag
                    pending.append((room, len(frag), d))
                need[slot] = need.get(slot, 0) + len(frags)
                return
        self._sa_drop(slot, Drop.MTU, 0)
        if self.icmp_limit.allow():
            error = too_big_error(packet, max_inner)
            if error is not None:
                try:
                    self.tun.write(error)
                except OSError as exc:
                    self._note("tun_write", f"TUN write failed: {exc.strerror}")

    def _send_whole(self, d: tuple[Any, ...], buf: memoryview, h: int, length: int) -> None:
        """One whole datagram ``buf[h:h + length]`` in one ESP / AH packet, sent at once.

        It takes a sequence number of its own (not the batch's).  A transport-mode
        packet bigger than the SA's path MTU leaves in outer IPv4 fragments (RFC
        791; DF is clear, the identification is the datagram's own, kept in the
        header transport mode moves): the peer reassembles before it decrypts
        (RFC 4303 §3.4.1), as :mod:`workers.reassembly` does for ours.  ``buf``
        has :data:`HEADROOM` bytes before ``h`` and :data:`TAILROOM` after the end.
        """
        slot, tx, path_mtu = d[1], d[4], d[6]
        out = self.outbound.get(slot)
        if out is None:
            self._sa_drop(slot, Drop.NO_SA, 0)
            return
        v6 = buf[h] >> 4 == 6
        if v6:
            try:
                header = ipv6_ipsec_offset(buf[h:h + length])[0]
            except ValueError:
                self._sa_drop(slot, Drop.MALFORMED, 0)
                return
        else:
            header = (buf[h] & 15) << 2
        if out.outer_length(length, header) > 0xFFFF + (40 if v6 else 0):
            self._sa_drop(slot, Drop.MTU, 0)  # no IP packet holds it once encapsulated
            return
        seq = self.table.alloc_seq(slot, 1, out.limit, out.uid)
        if seq <= 0:  # 0: exhausted; SEQ_GONE: the SA was removed (as in _encrypt)
            self._sa_drop(slot, Drop.SEQ_OVERFLOW if seq == 0 else Drop.NO_SA, 0)
            return
        drop, s, e = d[2](buf, h, h + length, seq)
        if drop:
            self._sa_drop(slot, drop, 0)
            return
        outer = buf[s:e]
        packets: list[bytes] | list[memoryview] = [outer]
        if e - s > path_mtu:
            fragments = (fragment_ipv6(outer, path_mtu, self._next_ident()) if v6
                         else fragment_ipv4(outer, path_mtu))
            if not fragments:  # cannot happen: DF is clear, and a path MTU is >= 68 + 8
                self._sa_drop(slot, Drop.MTU, 0)
                return
            packets = fragments
        sent = True
        for packet in packets:
            if not tx.send(packet):
                sent = False
                break
        tx.flush()
        if not sent:
            self._sa_drop(slot, Drop.RING_FULL, 0)  # the rest is useless without it
            return
        self._count(self.acc, slot, 1, length)

    def _outbound_fragment(self, buf: memoryview, h: int, length: int, addrs: bytes, proto: int,
                           ports: int, pending: list[tuple[memoryview, int, tuple[Any, ...]]],
                           need: dict[int, int], version: int = 4) -> bool:
        """An IPv4 or IPv6 fragment read from the TUN; True if transport mode took it.

        The host fragments a datagram bigger than the TUN MTU before the TUN
        sees it; transport mode must not encapsulate the pieces (RFC 4303
        §3.3.4, RFC 4302 §3.3.4), so it reassembles them and sends the whole
        datagram on (:meth:`_outbound_whole`).  The fragments of one datagram
        all come through this worker's queue: the TUN hashes fragments by
        their addresses.  Tunnel mode, bypass and drops take fragments as
        they take any packet (False).  The decision is the fragment's own, as
        for any packet (a later fragment has no ports to match).
        """
        if length >= self.capacity:
            return False  # truncated: the caller counts it
        d = self._decision(version, addrs, proto, ports, buf, h, length)
        if d[0] not in (OUT_ESP, OUT_IPCOMP):
            return False
        out = self.outbound.get(d[1])
        if out is None or out.tunnel:
            return False
        reassembler = self.tun_reassembler
        if reassembler is None:
            reassembler = self.tun_reassembler = Reassembler()  # no claim: every datagram is ours
        whole = reassembler.push(buf[h:h + length], time.monotonic())
        if reassembler.discards:
            self._tun_fragment_drops()
        if whole is not None:
            self._outbound_whole(whole.packet, pending, need)
        return True

    def _decision(self, version: int, addrs: bytes, proto: int, ports: int, buf: memoryview,
                  h: int, length: int) -> tuple[Any, ...]:
        """The flow's cached SPD decision, made on a miss (the rare paths; ``_outbound``
        has the same lookup inline)."""
        key = (addrs, proto, ports)
        flows = self.out_flows
        d = flows.get(key)
        if d is None:
            d = self._outbound_decide(version, addrs, proto, ports, buf, h, length)
            if len(flows) > 65536:
                flows.clear()
            flows[key] = d
        return d

    def _outbound_whole(self, packet: bytes, pending: list[tuple[memoryview, int, tuple[Any, ...]]],
                        need: dict[int, int]) -> None:
        """A datagram reassembled from the TUN's fragments: decided on again, with its ports."""
        h = HEADROOM
        length = len(packet)
        big = self._big_buffer()
        big[h:h + length] = packet
        version = big[h] >> 4
        if version == 4:
            b0, _, _, proto, addrs = _V4_KEY.unpack_from(big, h)
            ports = _ports(proto, big, h + ((b0 & 15) << 2), h + length)
        else:
            proto, addrs = _V6_KEY.unpack_from(big, h)
            at, end = h + 40, h + length
            while proto in _IPV6_EXT and at + 8 <= end:
                proto, at = big[at], at + ((big[at + 1] + 1) << 3)
            ports = _ports(proto, big, at, end)
        d = self._decision(version, addrs, proto, ports, big, h, length)
        kind = d[0]
        if kind in (OUT_ESP, OUT_IPCOMP):  # big: uncompressed, as in _outbound
            if length > d[3] and version == 4:
                self._too_big(big, h, length, d, pending, need)
            else:
                # IPv6: the host fragmented it, so it may go in fragments (after a
                # packet-too-big, this is how the host's datagrams come).
                self._send_whole(d, big, h, length)
        elif kind == OUT_BYPASS:
            # A port-selective policy lets the whole datagram pass in clear: as the host cut it.
            if version == 4:
                frags = fragment_ipv4(big[h:h + length], self.spec.tun_mtu)
            else:
                frags = fragment_ipv6(big[h:h + length], self.spec.tun_mtu, self._next_ident())
            for frag in frags or ():
                self._bypass(memoryview(frag), version, addrs)
        elif d[2] is not None:
            self._sa_drop(d[2], d[1], 0)
        else:
            self._wk_drop(d[1], d[1].label)

    def _big_buffer(self) -> memoryview:
        """The buffer for whole datagrams beyond the TUN MTU (made on first use, kept)."""
        big = self._big
        if big is None:
            # 40 more: an IPv6 datagram is its header plus up to 65535 (RFC 8200 §4.5).
            big = self._big = memoryview(bytearray(HEADROOM + 0xFFFF + 40 + TAILROOM))
        return big

    def _next_ident(self) -> int:
        """An IPv6 fragment identification: a counter per worker, the worker's index below it."""
        self._ident = (self._ident + 1) & 0xFFFFFF
        return self._ident << 8 | (self.k & 0xFF)

    def _tun_fragment_drops(self) -> None:
        """Count the TUN reassembler's discards (only this worker saw those fragments)."""
        reassembler = self.tun_reassembler
        if reassembler is None:
            return
        drops = self.wk_drops
        for d in reassembler.discards:
            r = int(d.reason)
            drops[r] = drops.get(r, 0) + d.fragments
            self._note(d.reason.label, f"from the TUN: id {d.ident:#x} protocol {d.proto}")
        reassembler.discards.clear()

    def _bypass(self, packet: memoryview, version: int, addrs: bytes) -> None:
        """Traffic the SPD lets pass in clear (``none``, or no policy): out by the main table."""
        dst = addrs[len(addrs) // 2:]
        if (version == 6 and (dst[0] == 0xFF or dst[:2] == b"\xfe\x80")) or (
                version == 4 and dst[0] >= 224):
            # Multicast and link-local (the kernel's own MLD and router
            # solicitations on the TUN): not ours to route, and not a drop of
            # anyone's traffic either.
            return
        if not self.raw.send(packet, dst):
            self._wk_drop(Drop.RING_FULL, "bypass_send")

    # -- counters and logs ---------------------------------------------------------------

    def _sa_drop(self, slot: int, reason: Drop, spi: int) -> None:
        key = (slot, int(reason))
        self.sa_drops[key] = self.sa_drops.get(key, 0) + 1
        if reason is not Drop.DUMMY:
            self._note(reason.label, f"SA slot {slot}" + (f" spi {spi:#x}" if spi else ""))

    def _wk_drop(self, reason: Drop, what: str, spi: int = 0) -> None:
        r = int(reason)
        self.wk_drops[r] = self.wk_drops.get(r, 0) + 1
        self._note(what, f"spi {spi:#x}" if spi else "")

    def _note(self, what: str, detail: str) -> None:
        """Rate-limited log: one line per kind per LOG_INTERVAL, with the count since the last."""
        count = self._log_count.get(what, 0) + 1
        now = time.monotonic()
        last = self._log_last.get(what)
        if last is not None and now - last < LOG_INTERVAL:
            self._log_count[what] = count
            return
        self._log_last[what] = now
        self._log_count[what] = 0
        log.warning("worker %d: %s: %d packet(s)%s", self.k, what, count,
                    f" (last: {detail})" if detail else "")

    def _flush_counters(self) -> None:
        ctr = self.sa_ctr
        if self.acc:
            now = time.time_ns()
            for slot, (packets, nbytes) in self.acc.items():
                base = slot * SA_COUNTER_COLUMNS
                ctr[base + SACounter.PACKETS] += packets
                ctr[base + SACounter.BYTES] += nbytes
                ctr[base + SACounter.LAST_USED_NS] = now
            self.acc.clear()
        if self.sa_drops:
            for (slot, reason), count in self.sa_drops.items():
                ctr[slot * SA_COUNTER_COLUMNS + SACounter.DROPS + reason] += count
            self.sa_drops.clear()
        wk = self.wk_ctr
        if self.wk_drops:
            for reason, count in self.wk_drops.items():
                wk[WorkerCounter.DROPS + reason] += count
            self.wk_drops.clear()
        if self.packets_in:
            wk[WorkerCounter.PACKETS_IN] += self.packets_in
            self.packets_in = 0
        if self.packets_out:
            wk[WorkerCounter.PACKETS_OUT] += self.packets_out
            self.packets_out = 0
        if self.sa_generation >= 0:
            # Every count for an SA removed at or before the generation this turn's view
            # was read at is in the rows now: the control process may take the slot's
            # counters as final and reuse it (SATable.flushed_generation).
            wk[WorkerCounter.FLUSHED_GEN] = self.sa_generation

    def _ring_stats(self) -> None:
        drops = 0
        for ring in self.rings:
            with contextlib.suppress(OSError):
                drops += ring.read_stats().drops
        self.wk_ctr[WorkerCounter.RING_DROPS] = self._ring_drops_base + drops

    def close(self) -> None:
        for ring in self.rings:
            with contextlib.suppress(Exception):
                ring.close()
        for tx in self.txs.values():
            with contextlib.suppress(Exception):
                tx.close()
        with contextlib.suppress(Exception):
            self.tun.close()
        with contextlib.suppress(Exception):
            self.policy_reader.close()
        self.in_index.clear()
        self.ah_index.clear()
        self.ipcomp_index.clear()
        self.ipcomp_out.clear()
        self.twins.clear()
        self.outbound.clear()
        self.out_flows.clear()


class _SpiIndex(Generic[_E]):
    """Inbound SAs by SPI (the hot-path dict), and by (SPI, destination) for shared SPIs.

    ``by_spi`` maps an SPI to its SA, or to None when several SAs share it (the
    SAD key is SPI, protocol and destination): then ``by_dst`` decides.  Adding
    and forgetting cost the same whatever the number of SAs (IKE installs
    thousands, one after another).
    """

    def __init__(self) -> None:
        self.by_spi: dict[int, _E | None] = {}
        self.by_dst: dict[tuple[int, bytes], _E] = {}
        self._key_of_slot: dict[int, tuple[int, bytes]] = {}
        self._dsts: dict[int, set[bytes]] = {}  # SPI -> destinations of its SAs

    def add(self, e: _E) -> None:
        key = (e.spi, e.dst)
        self.by_dst[key] = e
        self._key_of_slot[e.slot] = key
        dsts = self._dsts.setdefault(e.spi, set())
        dsts.add(e.dst)
        self.by_spi[e.spi] = e if len(dsts) == 1 else None

    def forget(self, slot: int) -> None:
        key = self._key_of_slot.pop(slot, None)
        if key is None:
            return
        e = self.by_dst.get(key)
        if e is None or e.slot != slot:
            return  # the key now belongs to another slot's SA
        del self.by_dst[key]
        spi, dst = key
        dsts = self._dsts[spi]
        dsts.discard(dst)
        if not dsts:
            del self._dsts[spi]
            self.by_spi.pop(spi, None)
        elif len(dsts) == 1:
            self.by_spi[spi] = self.by_dst[(spi, next(iter(dsts)))]
        else:
            self.by_spi[spi] = None

    def clear(self) -> None:
        self.by_spi.clear()
        self.by_dst.clear()
        self._key_of_slot.clear()
        self._dsts.clear()


def _nested(comp: Request, req: Request) -> bool:
    """KAME's nested form: an IPComp tunnel request and an ESP or AH request in transport mode."""
    return (comp.mode == MODE_TUNNEL and req.mode == MODE_TRANSPORT
            and comp.src is not None and comp.dst is not None)


def _outer_addresses(buf: memoryview, s: int) -> bytes:
    """Source and destination of the IP header at ``buf[s]``, packed."""
    return bytes(buf[s + 12:s + 20]) if buf[s] >> 4 == 4 else bytes(buf[s + 8:s + 40])


def _selectors(buf: memoryview, s: int, end: int) -> tuple[int, bytes, int, int] | None:
    """Version, packed addresses, protocol and ports of the IP packet ``buf[s:end]``.

    What ``Worker._inbound_check`` reads inline (a call less per packet there).
    """
    version = buf[s] >> 4
    if version == 4:
        if end - s < 20:
            return None
        b0, frag_hi, frag_lo, proto, addrs = _V4_KEY.unpack_from(buf, s)
        at = s + ((b0 & 15) << 2)
        ports = 0 if (frag_hi & 0x1F or frag_lo) else _ports(proto, buf, at, end)
    elif version == 6:
        if end - s < 40:
            return None
        proto, addrs = _V6_KEY.unpack_from(buf, s)
        at = s + 40
        while proto in _IPV6_EXT and at + 8 <= end:
            proto, at = buf[at], at + ((buf[at + 1] + 1) << 3)
        ports = _ports(proto, buf, at, end)
    else:
        return None
    return version, addrs, proto, ports


def _ports(proto: int, buf: memoryview, at: int, end: int) -> int:
    """Selector ports as one int (sport << 16 | dport); ICMP: type << 16 | code."""
    if proto in _PORT_PROTOS:
        if at + 4 <= end:
            return int(_U32.unpack_from(buf, at)[0])
    elif proto in _ICMP_PROTOS and at + 2 <= end:
        return buf[at] << 16 | buf[at + 1]
    return 0


def _upper_protocol(buf: memoryview, end: int) -> int:
    """The protocol after the IP header (IPv6: after the extension headers IPsec skips)."""
    if buf[0] >> 4 == 4:
        return buf[9]
    try:
        return ipv6_find_header(buf[:end])[1]
    except PacketError:
        return -1


def _addr(packed: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(packed))


# --- process entry --------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the control process dies (no orphan workers)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _reset_signals(on_term: Callable[[int, object], None]) -> None:
    # A forked child inherits the control process's asyncio signal set-up: its
    # wakeup fd is the parent's self-pipe.  Detach from it first, or a signal
    # to this worker would be taken for one to the control process.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in a terminal goes to the control process
    signal.signal(signal.SIGTERM, on_term)


WORKER_GC_THRESHOLDS = (700, 10, 10)  # CPython 3.11's defaults


def main(spec: WorkerSpec) -> None:
    """Worker process entry point (the control process forks and calls this)."""
    _die_with_parent()
    # Everything inherited from the control process (its modules, configuration, IKE SAs)
    # stays as it is: out of the cyclic collector's sight, so that the worker's full
    # collections walk only what the worker made (and do not write to the inherited pages).
    gc.freeze()
    # The control process raises its youngest generation's threshold for IKE's sake; the
    # datapath keeps CPython's defaults, whose young collections are short pauses.
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    worker: Worker | None = None

    def on_term(signum: int, frame: object) -> None:
        if worker is not None:
            worker.stop()
        else:
            raise SystemExit(0)

    _reset_signals(on_term)
    logging.getLogger().setLevel(spec.log_level)
    try:
        worker = Worker(spec)
    except Exception as exc:
        log.error("worker %d could not start: %s", spec.index, exc)
        sys.stderr.flush()
        os._exit(3)
    try:
        worker.run()
    except Exception:
        log.exception("worker %d failed", spec.index)
        os._exit(4)
    finally:
        worker.close()


__all__ = ["BATCH", "HEADROOM", "Worker", "WorkerSpec", "main"]
