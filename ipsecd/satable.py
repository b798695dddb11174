"""The SA table in shared memory: the control process writes, workers read.

Theory of operation
-------------------
One POSIX shared-memory segment (``multiprocess.shared_memory``, mode 0600)
holds five regions::

    header | SA slots | sequence counters | replay windows | counters

* **SA slots** (written only by the control process).  Each slot starts with
  a generation number used as a seqlock: the writer makes it odd, writes the
  slot, makes it even again, then bumps the table-wide generation in the
  header.  A reader copies the slot and keeps the copy only if the generation
  was even and unchanged across the copy, so a worker never uses half an SA
  (see :meth:`SATable.read`).  Removing an SA zeroes its keys in the slot.
  Stores are ordered on x86 (TSO), which this relies on; Python gives no
  fences of its own.
* **Sequence counters** (per slot: the last outbound sequence number handed
  out, and the uid of the SA it belongs to).  Several workers may encrypt on
  one outbound SA, so a worker takes the numbers for a whole batch at once
  under a POSIX record lock on the slot's byte of the segment's file
  (``fcntl.lockf``).  The kernel drops such a lock when its holder dies, so a
  worker killed with SIGKILL cannot wedge the others, and numbers it took but
  did not use are a gap, never reused.  The worker names the SA (uid) it
  encrypts with; installing and removing an SA rewrite the uid under the same
  lock, so once :meth:`SATable.remove` returns the SA's last number no worker
  can take another for that key, even one that has not yet seen the removal:
  the number recorded is final, and a key that comes back continues above
  it.
* **Replay windows** (one per slot, written only by the worker that owns the
  inbound SA's SPI; the worker's socket filter guarantees there is one).  They
  live here rather than in the worker so a restarted worker carries on with
  the window its predecessor left; each holds a :class:`ipsecd.replay.ReplayWindow`
  state (``T``, ``B``, bitmap), exact at every moment, so that a worker killed
  at any point leaves nothing for its successor to accept twice.
* **Counters** (one row per worker per slot, plus one row of worker-wide
  counters per worker), each written only by its worker and summed by the
  control process and the exporter.  No locks: u64 stores are single-writer.
  A worker counts in local ints and adds them to its rows once per loop turn,
  so it may still add to a slot after the control process removed the slot's
  SA; it then writes the table generation its view of the table was read at
  (``WorkerCounter.FLUSHED_GEN``), which tells the control process that
  nothing more will come for SAs removed up to that generation
  (:meth:`SATable.flushed_generation`): only then does it read their final
  counters and let the slot be reused (``daemon._settle``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from enum import IntEnum

from multiprocess import resource_tracker, shared_memory

from ipsecd.drops import Drop
from ipsecd.iana import EncrId, IntegId, IpcompId, IpProto
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode, SecurityAssociation, UdpEncap

MAGIC = 0x49505344  # "IPSD"
VERSION = 4  # 2: replay windows carry T, B and the bitmap; 3: WorkerCounter.FLUSHED_GEN;
# 4: sequence counters carry the SA's uid

_HEADER = struct.Struct("<IHHIIIIQ")  # magic, version, pad, n_slots, n_workers, replay_bytes, pad, generation
HEADER_SIZE = 64
_GEN_OFFSET = 24  # offset of the table generation in the header

# One SA slot. Little-endian, fixed size; the generation comes first.
_SLOT = struct.Struct("<IBBBBIIIHHHBBBBHHH16s16sQ")
SLOT_SIZE = 256
MAX_KEY_BYTES = 64
_ENC_KEY_OFF = 80  # keys sit after the fixed fields, outside the struct so they are never
_AUTH_KEY_OFF = _ENC_KEY_OFF + MAX_KEY_BYTES  # copied into immutable (unwipeable) bytes
assert _SLOT.size <= _ENC_KEY_OFF and _AUTH_KEY_OFF + MAX_KEY_BYTES <= SLOT_SIZE
_GEN = struct.Struct("<I")
_HEAD = struct.Struct("<IBBBxI")  # a slot's generation, state, direction, protocol, (mode,) SPI
_U64 = struct.Struct("<Q")
_SEQ = struct.Struct("<QQ")  # last sequence number handed out, uid of the SA (0: none)
SEQ_GONE = -1  # alloc_seq: the SA is no longer in the slot

_NONE16 = 0xFFFF
_FLAG_ESN = 1
_FLAG_ENCAP = 2
_FLAG_LEGACY = 4


class Direction(IntEnum):
    """Which way the datapath uses an SA."""

    IN = 1
    OUT = 2


class SlotState(IntEnum):
    FREE = 0
    ACTIVE = 1


class SACounter(IntEnum):
    """Columns of a per-worker per-SA counter row; drops follow at ``DROPS + reason``."""

    PACKETS = 0
    BYTES = 1
    LAST_USED_NS = 2  # wall clock (time.time_ns) of the last packet, for use-time lifetimes
    DROPS = 3


class WorkerCounter(IntEnum):
    """Columns of a worker-wide counter row; drops not tied to an SA follow at ``DROPS + reason``."""

    HEARTBEAT_NS = 0  # monotonic clock of the worker's last loop turn
    PACKETS_IN = 1
    PACKETS_OUT = 2
    BUSY_NS = 3
    RING_DROPS = 4
    PID = 5
    ACQUIRES = 6  # outbound packets that found a trap policy (reqid) without an SA: a count,
    ACQUIRE_REQID = 7  # and the reqid of the last one, for IKE to negotiate (start_action trap)
    FLUSHED_GEN = 8  # the table generation up to which the worker's SA counts are all in its rows
    DROPS = 9


#: Room for drop reasons in a counter row (more than ``Drop`` has, for growth).
DROP_COLUMNS = 32
SA_COUNTER_COLUMNS = SACounter.DROPS + DROP_COLUMNS
WORKER_COUNTER_COLUMNS = WorkerCounter.DROPS + DROP_COLUMNS
assert len(Drop) <= DROP_COLUMNS


_ZERO_ROW = bytes(SA_COUNTER_COLUMNS * 8)
_ZERO_KEYS = bytes(2 * MAX_KEY_BYTES)


class TableFull(RuntimeError):
    """No free slot for another SA."""


@dataclass(frozen=True, slots=True)
class SlotEntry:
    """What a reader got from a slot: the SA, which way it is used, and its generation."""

    slot: int
    generation: int
    uid: int
    direction: Direction
    sa: SecurityAssociation


_MODE_CODE = {Mode.ANY: 0, Mode.TRANSPORT: 1, Mode.TUNNEL: 2}  # a slot's mode byte


def _addr_bytes(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return addr.packed.ljust(16, b"\x00")


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def _replay_stride(replay_bytes: int) -> int:
    # One slot's replay-window state for windows of up to replay_bytes * 8 packets.
    return _align(ReplayWindow.state_bytes(replay_bytes * 8), 8)


class SATable:
    """A view of the shared SA table; create with :meth:`create` or :meth:`attach`."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        magic, version, _, n_slots, n_workers, replay_bytes, _, _ = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"shared memory {shm.name!r} is not an ipsecd SA table of version {VERSION}")
        self.n_slots: int = n_slots
        self.n_workers: int = n_workers
        self.replay_bytes: int = replay_bytes
        self.replay_stride = _replay_stride(replay_bytes)
        self._slots_off = HEADER_SIZE
        self._seq_off = _align(self._slots_off + n_slots * SLOT_SIZE)
        self._replay_off = _align(self._seq_off + n_slots * _SEQ.size)
        self._sa_ctr_off = _align(self._replay_off + n_slots * self.replay_stride)
        self._wk_ctr_off = _align(self._sa_ctr_off + n_workers * n_slots * SA_COUNTER_COLUMNS * 8)
        self.buf: memoryview = buf
        self._next_uid = 1
        self._zero_replay = bytes(self.replay_stride)  # what install writes over a window

    # -- construction ---------------------------------------------------------------

    @staticmethod
    def size_for(n_slots: int, n_workers: int, max_replay_window: int) -> int:
        replay_bytes = _align(max(max_replay_window, 64) // 8, 8)
        stride = _replay_stride(replay_bytes)
        size = _align(HEADER_SIZE + n_slots * SLOT_SIZE)
        size = _align(size + n_slots * _SEQ.size)
        size = _align(size + n_slots * stride)
        size = _align(size + n_workers * n_slots * SA_COUNTER_COLUMNS * 8)
        return size + n_workers * WORKER_COUNTER_COLUMNS * 8

    @classmethod
    def create(cls, name: str | None, n_slots: int, n_workers: int,
               max_replay_window: int = 4096) -> SATable:
        """Create the segment (control process). It is readable only by its owner (0600)."""
        size = cls.size_for(n_slots, n_workers, max_replay_window)
        old_umask = os.umask(0o077)
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        finally:
            os.umask(old_umask)
        os.fchmod(shm._fd, 0o600)
        # The daemon unlinks the segment itself (close(), and at start-up a stale one
        # left by a crash); multiprocess's resource tracker would otherwise also
        # track every worker's attachment to the same name and trip over it.
        _untrack(shm)
        replay_bytes = _align(max(max_replay_window, 64) // 8, 8)
        _HEADER.pack_into(shm.buf, 0, MAGIC, VERSION, 0, n_slots, n_workers, replay_bytes, 0, 0)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> SATable:
        """Attach to an existing segment (worker process)."""
        shm = shared_memory.SharedMemory(name=name)
        # Only the creator may unlink the segment: keep the resource tracker
        # of a worker from removing it when the worker exits.
        _untrack(shm)
        return cls(shm, owner=False)

    @staticmethod
    def unlink_stale(name: str) -> bool:
        """Remove a segment a crashed daemon left behind (wiping it first); True if there was one."""
        try:
            shm = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            return False
        _untrack(shm)
        shm.buf[:] = bytes(len(shm.buf))
        shm.close()
        _unlink(shm)
        return True

    @property
    def name(self) -> str:
        return str(self._shm.name)

    def close(self) -> None:
        """Detach; the owner also wipes and unlinks the segment."""
        buf = self.buf
        if self._owner:
            for slot in range(self.n_slots):
                self.remove(slot)
        self.buf = memoryview(b"")
        del buf
        self._shm.close()
        if self._owner:
            _unlink(self._shm)

    # -- the table generation -------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped after every slot change: workers poll this once per batch."""
        return int(_U64.unpack_from(self.buf, _GEN_OFFSET)[0])

    def _bump_generation(self) -> None:
        _U64.pack_into(self.buf, _GEN_OFFSET, self.generation + 1)

    # -- writer side (control process) ------------------------------------------------

    def _slot_off(self, slot: int) -> int:
        if not 0 <= slot < self.n_slots:
            raise IndexError(slot)
        return self._slots_off + slot * SLOT_SIZE

    def free_slot(self, exclude: Container[int] = (), start: int = 0) -> int:
        """The lowest free slot not in ``exclude`` from ``start`` on, else the lowest below it;
        raises :class:`TableFull`."""
        # The slots' state bytes in strided copies, searched in C, a block at a time from
        # ``start`` (one state byte per slot, each in a cache line of its own): IKE installs
        # SAs one after another into a table of thousands of slots.
        free = bytes((SlotState.FREE,))
        base = self._slots_off + 4
        start = start if 0 <= start < self.n_slots else 0
        for lo, hi in ((start, self.n_slots), (0, start)):
            block = 8  # the first block small: the slot after the last one taken is most often
            while lo < hi:  # free, and a strided copy costs about 10 ns a slot
                end = min(hi, lo + block)
                block = 256
                states = self.buf[base + lo * SLOT_SIZE:base + end * SLOT_SIZE:SLOT_SIZE].tobytes()
                at = states.find(free)
                while at >= 0:
                    if lo + at not in exclude:
                        return lo + at
                    at = states.find(free, at + 1)
                lo = end
        raise TableFull(f"all {self.n_slots} SA slots are in use")

    def install(self, slot: int, sa: SecurityAssociation, direction: Direction) -> int:
        """Write ``sa`` into ``slot`` and return its uid (unique across slot reuse)."""
        if len(sa.enc_key) > MAX_KEY_BYTES or len(sa.auth_key) > MAX_KEY_BYTES:
            raise ValueError("key longer than a slot holds")
        if sa.replay_window > self.replay_bytes * 8:
            raise ValueError(f"replay window {sa.replay_window} larger than the table's "
                             f"{self.replay_bytes * 8}")
        off = self._slot_off(slot)
        gen = _GEN.unpack_from(self.buf, off)[0]
        uid = self._next_uid
        self._next_uid += 1
        flags = (_FLAG_ESN if sa.esn else 0) | (_FLAG_ENCAP if sa.encap else 0) | (
            _FLAG_LEGACY if sa.legacy else 0)
        mode = _MODE_CODE[sa.mode]
        buf = self.buf
        _GEN.pack_into(buf, off, gen + 1)  # odd: being written
        _SLOT.pack_into(
            buf, off, gen + 1, SlotState.ACTIVE, direction, sa.protocol, mode,
            sa.spi, sa.reqid, sa.replay_window,
            _NONE16 if sa.enc is None else int(sa.enc), int(sa.auth),
            _NONE16 if sa.comp is None else int(sa.comp),
            len(sa.enc_key), len(sa.auth_key), flags, sa.src.version,
            sa.encap.sport if sa.encap else 0, sa.encap.dport if sa.encap else 0, 0,
            _addr_bytes(sa.src), _addr_bytes(sa.dst), uid,
        )
        # Zeros and keys straight into the segment (no view of it kept: close() releases it).
        at = off + _ENC_KEY_OFF
        buf[at:at + 2 * MAX_KEY_BYTES] = _ZERO_KEYS
        buf[at:at + len(sa.enc_key)] = sa.enc_key
        at = off + _AUTH_KEY_OFF
        buf[at:at + len(sa.auth_key)] = sa.auth_key
        # The sequence counter and replay window start afresh with the SA.
        self._set_seq(slot, sa.seq, uid)
        roff = self._replay_off + slot * self.replay_stride
        buf[roff:roff + self.replay_stride] = self._zero_replay
        self._clear_counters(slot)
        _GEN.pack_into(self.buf, off, gen + 2)  # even: stable
        self._bump_generation()
        return uid

    def remove(self, slot: int) -> int:
        """Free ``slot`` and zero its keys; return the SA's last outbound sequence number.

        That number is final: from now on :meth:`alloc_seq` refuses the SA.
        """
        off = self._slot_off(slot)
        gen = _GEN.unpack_from(self.buf, off)[0]
        last = self._set_seq(slot, None, 0)
        if self.buf[off + 4] == SlotState.FREE and not any(self.buf[off + 4:off + SLOT_SIZE]):
            return last
        _GEN.pack_into(self.buf, off, gen + 1)
        self.buf[off + 4:off + SLOT_SIZE] = bytes(SLOT_SIZE - 4)
        _GEN.pack_into(self.buf, off, gen + 2)
        self._bump_generation()
        return last

    def _set_seq(self, slot: int, seq: int | None, uid: int) -> int:
        """Under the slot's record lock: make the counter (seq or unchanged, uid); the old last."""
        fd = self._shm._fd
        pos = self._seq_off + slot * _SEQ.size
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, slot)
        try:
            last = int(_SEQ.unpack_from(self.buf, pos)[0])
            _SEQ.pack_into(self.buf, pos, last if seq is None else seq, uid)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, slot)
        return last

    def _clear_counters(self, slot: int) -> None:
        row = SA_COUNTER_COLUMNS * 8
        for worker in range(self.n_workers):
            off = self._sa_counter_row_off(worker, slot)
            self.buf[off:off + row] = _ZERO_ROW

    # -- reader side (workers; the control process may read too) ------------------------

    def slot_generation(self, slot: int) -> int:
        return int(_GEN.unpack_from(self.buf, self._slot_off(slot))[0])

    def slot_generations(self) -> bytes:
        """Every slot's generation as it is stored (4 bytes per slot, in slot order).

        One strided copy in C: a worker compares it with the copy it took at its
        last refresh (:func:`changed_slots`) instead of reading thousands of slot
        generations one Python call at a time when IKE has changed a few.
        """
        off = self._slots_off
        words = self.buf[off:off + self.n_slots * SLOT_SIZE].cast("I")
        try:
            return words[::SLOT_SIZE // 4].tobytes()
        finally:
            words.release()

    def read_head(self, slot: int) -> tuple[int, int, int, int] | None:
        """(generation, direction, protocol, SPI) of the SA in ``slot``, read as :meth:`read`
        reads a slot but without decoding it: None when the slot is free or being written.

        A worker needs no more to see that an inbound SA is another worker's (the SPI
        steers its packets elsewhere), and then neither builds the SA nor copies its keys.
        """
        off = self._slot_off(slot)
        buf = self.buf
        gen1 = _GEN.unpack_from(buf, off)[0]
        if gen1 & 1:
            return None
        gen, state, direction, proto, spi = _HEAD.unpack_from(buf, off)
        if gen != gen1 or _GEN.unpack_from(buf, off)[0] != gen1 or state != SlotState.ACTIVE:
            return None
        return gen, direction, proto, spi

    def read(self, slot: int, retries: int = 100) -> SlotEntry | None:
        """A consistent copy of ``slot``, or None when it is free.

        Retries while the writer is busy with the slot; after ``retries``
        attempts it gives up and returns None (the caller tries again on its
        next batch).
        """
        off = self._slot_off(slot)
        buf = self.buf
        scratch = bytearray(_ZERO_SLOT)
        try:
            for _ in range(retries):
                gen1 = _GEN.unpack_from(buf, off)[0]
                if gen1 & 1:
                    time.sleep(0)
                    continue
                scratch[:] = buf[off:off + SLOT_SIZE]
                if _GEN.unpack_from(buf, off)[0] != gen1:
                    continue
                return _decode_slot(slot, scratch)
            return None
        finally:
            scratch[:] = _ZERO_SLOT

    # -- sequence numbers (workers) -------------------------------------------------------

    def alloc_seq(self, slot: int, count: int, limit: int, uid: int | None = None) -> int:
        """Take ``count`` outbound sequence numbers of the SA ``uid``; returns the first.

        Returns 0 when fewer than ``count`` numbers remain below ``limit``
        (2**32 - 1, or 2**64 - 1 with ESN): the SA is exhausted and must be
        rekeyed (RFC 4303 §3.3.3 forbids cycling).  Returns :data:`SEQ_GONE`
        when the slot no longer holds SA ``uid`` (removed, perhaps replaced,
        since the caller read it); ``uid`` None skips that check.
        """
        fd = self._shm._fd
        pos = self._seq_off + slot * _SEQ.size
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, slot)
        try:
            last, owner = _SEQ.unpack_from(self.buf, pos)
            if uid is not None and owner != uid:
                return SEQ_GONE
            if last + count > limit:
                return 0
            _SEQ.pack_into(self.buf, pos, last + count, owner)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, slot)
        return int(last + 1)

    def last_seq(self, slot: int) -> int:
        return int(_SEQ.unpack_from(self.buf, self._seq_off + slot * _SEQ.size)[0])

    def replay_buffer(self, slot: int) -> memoryview:
        """The slot's replay-window state, for the worker that owns the SA."""
        off = self._replay_off + slot * self.replay_stride
        return self.buf[off:off + self.replay_stride]

    # -- counters -------------------------------------------------------------------

    def _sa_counter_row_off(self, worker: int, slot: int) -> int:
        return self._sa_ctr_off + (worker * self.n_slots + slot) * SA_COUNTER_COLUMNS * 8

    def sa_counters(self, worker: int) -> memoryview:
        """Worker ``worker``'s per-SA counters as u64s: index ``slot * SA_COUNTER_COLUMNS + column``."""
        off = self._sa_counter_row_off(worker, 0)
        return self.buf[off:off + self.n_slots * SA_COUNTER_COLUMNS * 8].cast("Q")

    def worker_counters(self, worker: int) -> memoryview:
        """Worker ``worker``'s worker-wide counters as u64s, indexed by :class:`WorkerCounter`."""
        off = self._wk_ctr_off + worker * WORKER_COUNTER_COLUMNS * 8
        return self.buf[off:off + WORKER_COUNTER_COLUMNS * 8].cast("Q")

    def flushed_generation(self, workers: Iterable[int]) -> int:
        """The table generation up to which ``workers`` have added all their SA counts.

        A worker writes it after adding its counts, at the end of a loop turn
        that began by reading the table at that generation: it holds nothing
        more for an SA removed at or before it.  With no workers, the current
        generation (nothing is in flight).
        """
        done = self.generation
        for worker in workers:
            done = min(done, int(self.worker_counters(worker)[WorkerCounter.FLUSHED_GEN]))
        return done

    def sum_sa_counters(self, slot: int) -> list[int]:
        """One SA's counters summed over all workers (``LAST_USED_NS`` is the maximum)."""
        total = [0] * SA_COUNTER_COLUMNS
        for worker in range(self.n_workers):
            off = self._sa_counter_row_off(worker, slot)
            row = struct.unpack_from(f"<{SA_COUNTER_COLUMNS}Q", self.buf, off)
            for i, value in enumerate(row):
                if i == SACounter.LAST_USED_NS:
                    total[i] = max(total[i], value)
                else:
                    total[i] += value
        return total


def _untrack(shm: shared_memory.SharedMemory) -> None:
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:  # pragma: no cover - no tracker in this process
        pass


def _unlink(shm: shared_memory.SharedMemory) -> None:
    # shm_unlink by path: SharedMemory.unlink() would also tell the resource
    # tracker, which no longer tracks the name (see _untrack).
    try:
        os.unlink(os.path.join("/dev/shm", shm._name.lstrip("/")))
    except FileNotFoundError:
        pass


def changed_slots(new: bytes, old: bytes | bytearray) -> list[int]:
    """The slots whose generation differs between two :meth:`SATable.slot_generations`.

    Compared a block at a time (memcmp in C), and slot by slot only in the blocks
    that differ: the cost follows the slots that changed, not the table's size.
    """
    out: list[int] = []
    n = len(new)
    for a in range(0, n, 16384):  # 4096 slots
        b = min(n, a + 16384)
        if new[a:b] == old[a:b]:
            continue
        for c in range(a, b, 256):  # 64 slots
            d = min(b, c + 256)
            if new[c:d] == old[c:d]:
                continue
            for e in range(c, d, 4):
                if new[e:e + 4] != old[e:e + 4]:
                    out.append(e >> 2)
    return out


def pack_generation(generation: int) -> bytes:
    """A generation as :meth:`SATable.slot_generations` shows it."""
    return _GEN.pack(generation)


_ZERO_SLOT = bytes(SLOT_SIZE)
_MODES = (Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL)
_IPV4 = ipaddress.IPv4Address
_IPV6 = ipaddress.IPv6Address

# The code points a slot names, by value: a worker decodes a slot for every SA it takes up,
# and calling an enum class costs several dict look-ups and Python frames; a value not in
# these tables goes to the class, which raises as before.
_PROTOCOLS = {int(m): m for m in IpProto}
_ENCRS = {int(m): m for m in EncrId}
_INTEGS = {int(m): m for m in IntegId}
_DIRECTIONS = {int(m): m for m in Direction}


def _decode_slot(slot: int, raw: bytearray) -> SlotEntry | None:
    (gen, state, direction, proto, mode, spi, reqid, window, enc_id, auth_id, comp_id,
     enc_len, auth_len, flags, family, sport, dport, _, src, dst, uid) = _SLOT.unpack_from(raw)
    if state != SlotState.ACTIVE:
        return None
    protocol = _PROTOCOLS.get(proto)
    integ = _INTEGS.get(auth_id)
    enc = None if enc_id == _NONE16 else _ENCRS.get(enc_id)
    way = _DIRECTIONS.get(direction)
    sa = SecurityAssociation(
        spi=spi,
        protocol=IpProto(proto) if protocol is None else protocol,
        # what ipaddress.ip_address makes of 4 or 16 packed bytes
        src=_IPV4(src[:4]) if family == 4 else _IPV6(src),
        dst=_IPV4(dst[:4]) if family == 4 else _IPV6(dst),
        mode=_MODES[mode],
        reqid=reqid,
        replay_window=window,
        enc=EncrId(enc_id) if enc is None and enc_id != _NONE16 else enc,
        enc_key=raw[_ENC_KEY_OFF:_ENC_KEY_OFF + enc_len],
        auth=IntegId(auth_id) if integ is None else integ,
        auth_key=raw[_AUTH_KEY_OFF:_AUTH_KEY_OFF + auth_len],
        comp=None if comp_id == _NONE16 else IpcompId(comp_id),
        esn=bool(flags & _FLAG_ESN),
        encap=UdpEncap(sport, dport) if flags & _FLAG_ENCAP else None,
        legacy=bool(flags & _FLAG_LEGACY),
    )
    return SlotEntry(slot, gen, uid, Direction(direction) if way is None else way, sa)
