"""The policy table the control process publishes for the workers.

Theory of operation
-------------------
The SPD lives in the control process (:class:`ipsecd.spd.SPD`); workers need
a read-only copy of it plus the answers that depend on the SAD: which SA
slot of the shared SA table (:mod:`ipsecd.satable`) serves an ``ipsec``
request, the path MTU and outside interface of each outbound SA, and the
local addresses (an inbound packet for one of them is checked against the
``in`` policies, any other against ``fwd``).

The control process serializes all of it as JSON (orjson) into a small
shared-memory segment of its own (mode 0600), as a log of records::

    header (64 bytes): u32 seq | u32 pad | u64 generation | u64 length | u64 base
    data (length bytes): record | record | ...
    record: u32 payload length | u32 kind | u64 generation | payload (JSON)

The first record is a *snapshot*: the whole document (:func:`build_document`),
its generation is ``base``.  Every later one is a *delta* (:class:`PolicyPublisher`):
the policies added or removed (identified by their SPD sort key, unique within
a direction), the SA candidate lists and slots that changed, the local
addresses if they did.  IKE changes a few policies per Child SA while the
document grows with every one of them: a worker applies a delta in time
proportional to the change, not to the SPD.  When the log would not fit, or
outgrows four times the snapshot (plus 1 MB), the writer starts over with a
new snapshot: a snapshot costs the writer and every worker time in
proportion to the SPD, so the deltas between two pay for it.

``seq`` is a seqlock: odd while the writer changes the header or rewrites
the log from the start; appended records are written past ``length`` before
the header counts them.  A reader copies the bytes it needs and keeps them
only if ``seq`` was even and unchanged across the copy.  ``generation``
grows with every publication; workers read it (one 8-byte load) once per
batch and, when it moved, apply the records past the last one they saw
(:meth:`PolicyReader.refresh`) - all of them, snapshot first, if the log was
started over since, or at start - and drop their per-flow caches.

Why JSON and not a binary table: policies change at human speed or one
Child SA at a time, and JSON keeps the format debuggable (``ipsecd status
--json`` shows the same facts).  Addresses travel as hex strings because
orjson does not take 128-bit integers.

Lookup (:meth:`PolicySet.lookup`) is the SPD's own rule: a linear scan of
integer compares in the SPD's order (priority, then installation order,
first match wins; see :mod:`ipsecd.spd`).  The workers cache the decision per
flow, so the scan runs once per flow and generation.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import mmap
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ipsecd.sa import Mode, SAState, SecurityAssociation
from ipsecd.spd import SPD, Action, Direction, Level, Policy, Selector

_HEADER = struct.Struct("<IIQQQ")  # seq, pad, generation, length, base (snapshot generation)
HEADER_SIZE = 64
_RECORD = struct.Struct("<IIQ")  # payload length, kind, generation
SNAPSHOT = 0
DELTA = 1
_SEQ = struct.Struct("<I")
_GEN_OFF = 8
_U64 = struct.Struct("<Q")
DEFAULT_SIZE = 4 << 20
SHM_DIR = "/dev/shm"

ACTION_IPSEC = 0
ACTION_NONE = 1
ACTION_DISCARD = 2
_ACTIONS = {Action.IPSEC: ACTION_IPSEC, Action.NONE: ACTION_NONE, Action.DISCARD: ACTION_DISCARD}
MODE_TRANSPORT = 1
MODE_TUNNEL = 2
_MODES = {Mode.TRANSPORT: MODE_TRANSPORT, Mode.TUNNEL: MODE_TUNNEL}


class PolicyTableFull(RuntimeError):
    """The document does not fit the segment."""


def _shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


# --- writer (control process) -------------------------------------------------------------


class PolicyTable:
    """The control process's side: create the segment, publish documents."""

    def __init__(self, name: str, size: int = DEFAULT_SIZE) -> None:
        self.name = name
        self.size = size
        path = _shm_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self.generation = 0
        self.length = 0  # bytes of records
        self.base = 0  # generation of the snapshot that starts them

    @staticmethod
    def unlink_stale(name: str) -> bool:
        try:
            os.unlink(_shm_path(name))
        except FileNotFoundError:
            return False
        return True

    @property
    def capacity(self) -> int:
        """Bytes of records the segment holds."""
        return self.size - HEADER_SIZE

    def encode(self, document: Mapping[str, Any]) -> bytes:
        """The bytes :meth:`publish` would write; :class:`PolicyTableFull` if too big."""
        data = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
        if len(data) + _RECORD.size > self.capacity:
            raise PolicyTableFull(
                f"the policy table needs {len(data) + _RECORD.size} bytes; the segment holds "
                f"{self.capacity}")
        return data

    def publish(self, document: Mapping[str, Any] | bytes) -> int:
        """Start the log over with a snapshot (a whole document); returns its generation."""
        data = document if isinstance(document, bytes) else self.encode(document)
        if len(data) + _RECORD.size > self.capacity:
            raise PolicyTableFull(f"{len(data)} bytes do not fit")
        mm = self._mm
        seq = _SEQ.unpack_from(mm, 0)[0]
        _SEQ.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF)  # odd: being written
        self.generation += 1
        _RECORD.pack_into(mm, HEADER_SIZE, len(data), SNAPSHOT, self.generation)
        end = HEADER_SIZE + _RECORD.size + len(data)
        mm[HEADER_SIZE + _RECORD.size:end] = data
        self.length = end - HEADER_SIZE
        self.base = self.generation
        _HEADER.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF, 0, self.generation, self.length,
                          self.base)
        _SEQ.pack_into(mm, 0, (seq + 2) & 0xFFFFFFFF)  # even: stable
        return self.generation

    def room(self) -> int:
        """Payload bytes one more delta record may have."""
        return self.capacity - self.length - _RECORD.size if self.generation else -1

    def append(self, delta: bytes) -> int:
        """Append a delta record (JSON of :meth:`PolicyPublisher`'s changes); returns its
        generation.  Needs a snapshot first and :meth:`room` for it."""
        if not self.generation or len(delta) > self.room():
            raise PolicyTableFull(f"a {len(delta)}-byte delta does not fit")
        mm = self._mm
        at = HEADER_SIZE + self.length
        # Past ``length``: no reader looks here until the header below counts it.
        _RECORD.pack_into(mm, at, len(delta), DELTA, self.generation + 1)
        mm[at + _RECORD.size:at + _RECORD.size + len(delta)] = delta
        seq = _SEQ.unpack_from(mm, 0)[0]
        _SEQ.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF)
        self.generation += 1
        self.length += _RECORD.size + len(delta)
        _HEADER.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF, 0, self.generation, self.length,
                          self.base)
        _SEQ.pack_into(mm, 0, (seq + 2) & 0xFFFFFFFF)
        return self.generation

    def close(self) -> None:
        """Wipe, unmap and unlink the segment."""
        if self._mm.closed:
            return
        self._mm[:] = bytes(self.size)
        self._mm.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_shm_path(self.name))


# --- reader (workers) -------------------------------------------------------------------------


class PolicyReader:
    """A worker's read-only view of the segment."""

    def __init__(self, name: str) -> None:
        fd = os.open(_shm_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view = memoryview(self._mm)

    @property
    def generation(self) -> int:
        """The generation of the current document (0: nothing published yet)."""
        return int(_U64.unpack_from(self._view, _GEN_OFF)[0])

    def _copy(self, since: int, offset: int,
              retries: int) -> tuple[int, int, list[tuple[int, int, bytes]]] | None:
        """(generation, length, records) of a consistent copy: the records past ``offset``
        when the reader is at generation ``since`` of the current log, else all of them.
        None: nothing published, or the writer was busy ``retries`` times."""
        view = self._view
        for _ in range(retries):
            seq1, _, gen, length, base = _HEADER.unpack_from(view, 0)
            if seq1 & 1:
                time.sleep(0)
                continue
            if gen == 0:
                return None
            start = offset if since and since >= base and offset <= length else 0
            data = bytes(view[HEADER_SIZE + start:HEADER_SIZE + length])
            if _SEQ.unpack_from(view, 0)[0] != seq1:
                continue
            records = []
            at = 0
            while at + _RECORD.size <= len(data):
                size, kind, rgen = _RECORD.unpack_from(data, at)
                records.append((kind, rgen, data[at + _RECORD.size:at + _RECORD.size + size]))
                at += _RECORD.size + size
            return int(gen), int(length), records
        return None

    def read(self, retries: int = 1000) -> tuple[int, dict[str, Any]] | None:
        """A consistent copy of the current document (the snapshot with the deltas after it
        folded in) and its generation (None if none yet)."""
        got = self._copy(0, 0, retries)
        if got is None:
            return None
        gen, _, records = got
        doc: dict[str, Any] = {}
        for kind, _, payload in records:
            if kind == SNAPSHOT:
                doc = orjson.loads(payload)
            else:
                fold(doc, orjson.loads(payload))
        return gen, doc

    def refresh(self, policies: PolicySet, retries: int = 1000) -> bool:
        """Bring ``policies`` (built by this reader's refreshes only) to the current
        generation: the deltas past the last record it saw, or a snapshot and the deltas
        after it.  True when it changed."""
        if self.generation == policies.generation:
            return False
        got = self._copy(policies.generation, self._offset, retries)
        if got is None:
            return False
        gen, length, records = got
        try:
            for kind, rgen, payload in records:
                if kind == SNAPSHOT:
                    policies.reset(PolicySet.from_document(rgen, orjson.loads(payload)))
                elif rgen > policies.generation:
                    policies.apply(orjson.loads(payload))
                    policies.generation = rgen
            if policies.generation != gen:
                raise ValueError(f"records end at {policies.generation}, not {gen}")
        except Exception:
            # Not expected: start over from the snapshot rather than keep a wrong view.
            got = self._copy(0, 0, retries)
            if got is None:
                policies.reset(PolicySet())
                self._offset = 0
                return True
            gen, length, records = got
            fresh = PolicySet()
            for kind, rgen, payload in records:
                if kind == SNAPSHOT:
                    fresh = PolicySet.from_document(rgen, orjson.loads(payload))
                else:
                    fresh.apply(orjson.loads(payload))
                    fresh.generation = rgen
            policies.reset(fresh)
        self._offset = length
        return True

    _offset = 0  # where the records after policies.generation start (refresh)

    def close(self) -> None:
        self._view.release()
        self._mm.close()


# --- the document ---------------------------------------------------------------------------


def _hex(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str | None:
    return None if addr is None else addr.packed.hex()


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What the workers need to know about an outbound SA slot beyond the SA itself."""

    path_mtu: int  # MTU of the route to the SA's destination (outer packets must fit)
    ifname: str  # outside interface the route uses ("" when unknown)


@dataclass(slots=True)
class InstalledSA:
    """An SA as the control process placed it in the SA table."""

    sa: SecurityAssociation
    slot: int
    order: int  # SAD order: later is preferred, as SAD.find_outbound does


def build_document(
    spd: SPD,
    outbound: Iterable[InstalledSA],
    local_addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
    slot_info: Mapping[int, SlotInfo],
) -> dict[str, Any]:
    """The document (a snapshot) for the current SPD and the outbound SAs in the table.

    ``policies``: per direction, ``[k0, k1, row]`` in lookup order, (k0, k1) the
    policy's SPD sort key; ``sas``: ``[protocol, src, dst, candidates]``;
    ``local``: addresses; ``slots``: ``[slot, path MTU, interface]``."""
    policies: dict[str, list[Any]] = {direction.value: [] for direction in Direction}
    for (direction, _), (keys, items) in sorted(spd.index_view().items(),
                                                key=lambda kv: (kv[0][0].value, kv[0][1])):
        policies[direction.value].extend(
            [k[0], k[1], _policy_row(item.policy)] for k, item in zip(keys, items, strict=True))
    for rows in policies.values():
        rows.sort(key=lambda r: (r[0], r[1]))  # the two families of a direction, merged
    return {
        "policies": policies,
        "sas": [[*key, cands] for key, cands in _sa_groups(outbound, {}).items()],
        "local": sorted({a.packed.hex() for a in local_addresses}),
        "slots": [[slot, info.path_mtu, info.ifname] for slot, info in sorted(slot_info.items())],
    }


_MODE_OF = {Mode.ANY: 0, Mode.TRANSPORT: MODE_TRANSPORT, Mode.TUNNEL: MODE_TUNNEL}


def _sa_groups(outbound: Iterable[InstalledSA],
               cache: dict[int, tuple[SecurityAssociation, tuple[int, str, str], int]],
               ) -> dict[tuple[int, str, str], list[list[int]]]:
    """(protocol, src, dst) -> candidates ``[slot, mode, reqid]``, best first: mature before
    dying, then newest (the rule of SAD.find_outbound; the worker filters by mode and
    reqid; the higher slot first between equals).  ``cache``: id(sa) -> (sa, key, mode), kept
    from call to call."""
    groups: dict[tuple[int, str, str], list[tuple[tuple[int, int, int], list[int]]]] = {}
    for inst in outbound:
        sa = inst.sa
        state = sa.state
        if state is not SAState.MATURE and state is not SAState.DYING:
            continue
        hit = cache.get(id(sa))
        if hit is None or hit[0] is not sa:
            hit = cache[id(sa)] = (sa, (int(sa.protocol), sa.src.packed.hex(),
                                        sa.dst.packed.hex()), _MODE_OF[sa.mode])
        rank = (1 if state is SAState.MATURE else 0, inst.order, inst.slot)
        groups.setdefault(hit[1], []).append((rank, [inst.slot, hit[2], sa.reqid]))
    return {key: [c for _, c in sorted(cands, key=lambda x: x[0], reverse=True)]
            for key, cands in groups.items()}


def fold(doc: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Apply a delta record to a document (JSON form; :meth:`PolicyReader.read`)."""
    policies = doc.setdefault("policies", {})
    for direction, _family, k0, k1, row in delta.get("policies", ()):
        rows = policies.setdefault(direction, [])
        keys = [(r[0], r[1]) for r in rows]
        i = bisect.bisect_left(keys, (k0, k1))
        if i < len(rows) and keys[i] == (k0, k1):
            del rows[i]
        if row is not None:
            rows.insert(i, [k0, k1, row])
    if "sas" in delta:
        sas = {(p, s, d): c for p, s, d, c in doc.get("sas", [])}
        for p, s_, d, cands in delta["sas"]:
            if cands:
                sas[(p, s_, d)] = cands
            else:
                sas.pop((p, s_, d), None)
        doc["sas"] = [[*k, c] for k, c in sas.items()]
    if "slots" in delta:
        slots = {row[0]: row for row in doc.get("slots", [])}
        for row in delta["slots"]:
            if len(row) == 1:
                slots.pop(row[0], None)
            else:
                slots[row[0]] = row
        doc["slots"] = [slots[k] for k in sorted(slots)]
    if "local" in delta:
        doc["local"] = delta["local"]


_ROWS: dict[int, tuple[Policy, list[Any], int]] = {}


def _policy_row(policy: Policy) -> list[Any]:
    # Policies are immutable and snapshots are rebuilt now and then: a row is computed
    # once per policy object.  Keyed by identity (hashing a Policy costs more than the row).
    return _row_entry(policy)[1]


def _row_entry(policy: Policy) -> tuple[Policy, list[Any], int]:
    """(policy, row, the row's JSON size)."""
    hit = _ROWS.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit
    if len(_ROWS) > 1 << 16:
        _ROWS.clear()
    row = _make_row(policy)
    hit = _ROWS[id(policy)] = (policy, row, len(orjson.dumps(row)) + 32)  # + keys, commas
    return hit


def _make_row(policy: Policy) -> list[Any]:
    sel = policy.selector
    requests = [
        [int(r.protocol), _MODES[r.mode], _hex(r.src), _hex(r.dst),
         r.level is not Level.USE, r.reqid if r.level is Level.UNIQUE else 0]
        for r in policy.requests
    ]
    return [sel.version, _hex(sel.src.network_address), _hex(sel.src.netmask),
            _hex(sel.dst.network_address), _hex(sel.dst.netmask),
            -1 if sel.proto is None else sel.proto, sel.sport, sel.dport,
            _ACTIONS[policy.action], requests]


# --- the writer's side of the deltas -----------------------------------------------------------

_SA_BYTES = 160  # an upper bound of what an outbound SA adds to a snapshot (its group, its slot)
_LOCAL_BYTES = 40


class PolicyPublisher:
    """Publishes the control process's state to a :class:`PolicyTable` as deltas.

    It remembers what it published: the policies with their sort keys, the SA
    candidate lists (and which slot is a candidate in which list), slots and
    local addresses.  :meth:`publish` works out what changed and appends a
    delta, or writes a snapshot when the log is full or has outgrown the
    snapshot.  Told what changed - ``policy_changes``, the SPD's journal
    (:meth:`ipsecd.spd.SPD.take_changes`), and ``dirty_slots``, the outbound
    slots added, removed or whose SA changed state - it costs the size of the
    change, whatever the number of policies and SAs.  Not told, it diffs
    everything: the policies by item identity (see
    :meth:`ipsecd.spd.SPD.index_view`; set operations that run in C), every
    slot's SA and path.
    """

    def __init__(self, table: PolicyTable) -> None:
        self.table = table
        self._items: dict[tuple[Direction, int], dict[int, tuple[tuple[int, int], Any]]] = {}
        # False once a publication followed a journal: the next full diff cannot use _items
        # and writes a snapshot instead.
        self._items_valid = True
        self._policy_bytes = 0  # the policies' share of a snapshot (estimated)
        self._sas: dict[tuple[int, str, str], list[list[int]]] = {}
        # group -> slot -> (rank, candidate); slot -> the group it is a candidate in
        self._members: dict[tuple[int, str, str], dict[int, tuple[tuple[int, int, int],
                                                                  list[int]]]] = {}
        self._group_of: dict[int, tuple[int, str, str]] = {}
        self._slots: dict[int, tuple[int, str]] = {}
        self._local: list[str] = []
        self._snapshot_bytes = 0
        self._log_bytes = 0
        self._lost = False  # a publication failed half-way: start over with a snapshot
        self.snapshots = 0  # how many were written (tests, status)

    def _diff(self, spd: SPD) -> tuple[dict[tuple[Direction, int], dict[int, tuple[tuple[int, int], Any]]],
                                       list[tuple[Direction, int, tuple[int, int]]],
                                       list[tuple[Direction, int, tuple[int, int], Policy]], int]:
        """(new items per list, removed (direction, version, key), added (direction, version,
        key, policy), the policies' estimated snapshot bytes)."""
        view = spd.index_view()
        new_items: dict[tuple[Direction, int], dict[int, tuple[tuple[int, int], Any]]] = {}
        removed: list[tuple[Direction, int, tuple[int, int]]] = []
        added: list[tuple[Direction, int, tuple[int, int], Policy]] = []
        valid = self._items_valid
        size = self._policy_bytes if valid else 0
        for bucket in view.keys() | self._items.keys():
            keys, items = view.get(bucket, ([], []))
            old = self._items.get(bucket, {}) if valid else {}
            new = dict(zip(map(id, items), zip(keys, items, strict=True), strict=True))
            new_items[bucket] = new
            for gone in old.keys() - new.keys():
                key, item = old[gone]
                removed.append((bucket[0], bucket[1], key))
                size -= _row_entry(item.policy)[2]
            for came in new.keys() - old.keys():
                key, item = new[came]
                added.append((bucket[0], bucket[1], key, item.policy))
                size += _row_entry(item.policy)[2]
        return new_items, removed, added, size

    def _journal_diff(self, spd: SPD, changes: Mapping[tuple[Selector, Direction], Any],
                      ) -> tuple[list[tuple[Direction, int, tuple[int, int]]],
                                 list[tuple[Direction, int, tuple[int, int], Policy]], int]:
        """(removed, added, bytes) as :meth:`_diff`, from the SPD's journal."""
        removed: list[tuple[Direction, int, tuple[int, int]]] = []
        added: list[tuple[Direction, int, tuple[int, int], Policy]] = []
        size = self._policy_bytes
        for key, old in changes.items():
            new = spd.get(*key)
            if new is old:
                continue
            new_key = None
            if new is not None:
                policy = new.policy
                new_key = (-policy.priority, new.order)
                added.append((policy.direction, policy.selector.version, new_key, policy))
                size += _row_entry(policy)[2]
            if old is not None:
                policy = old.policy
                old_key = (-policy.priority, old.order)
                if old_key != new_key:  # else the new row replaces it
                    removed.append((policy.direction, policy.selector.version, old_key))
                size -= _row_entry(policy)[2]
        return removed, added, size

    def check(self, spd: SPD, n_outbound: int,
              local: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
              policy_changes: Mapping[tuple[Selector, Direction], Any] | None = None) -> None:
        """:class:`PolicyTableFull` unless a snapshot of this state (``n_outbound`` outbound
        SAs) would fit the segment - estimated, not built: the row sizes are known.
        ``policy_changes``: the SPD's changes since the last publication, if known."""
        if policy_changes is not None and not self._lost:
            policy_bytes = self._journal_diff(spd, policy_changes)[2]
        else:
            policy_bytes = self._diff(spd)[3]
        size = policy_bytes + n_outbound * _SA_BYTES + len(set(local)) * _LOCAL_BYTES + 256
        if size > self.table.capacity:
            raise PolicyTableFull(
                f"the policy table needs about {size} bytes; the segment holds "
                f"{self.table.capacity}")

    def _sa_rows(self, outbound: Mapping[int, InstalledSA], dirty: Iterable[int],
                 ) -> list[list[Any]]:
        """Bring the candidate lists of the groups ``dirty`` slots were or are in up to date;
        the delta rows of those that changed."""
        touched: set[tuple[int, str, str]] = set()
        members, group_of = self._members, self._group_of
        for slot in dirty:
            group = group_of.pop(slot, None)
            if group is not None:
                members[group].pop(slot, None)
                touched.add(group)
            inst = outbound.get(slot)
            if inst is None:
                continue
            sa = inst.sa
            state = sa.state
            if state is not SAState.MATURE and state is not SAState.DYING:
                continue
            group = (int(sa.protocol), sa.src.packed.hex(), sa.dst.packed.hex())
            rank = (1 if state is SAState.MATURE else 0, inst.order, slot)
            members.setdefault(group, {})[slot] = (rank, [slot, _MODE_OF[sa.mode], sa.reqid])
            group_of[slot] = group
            touched.add(group)
        rows: list[list[Any]] = []
        for group in touched:
            cands = members.get(group)
            if cands:
                ranked = [c for _, c in sorted(cands.values(), key=_first, reverse=True)]
                if self._sas.get(group) != ranked:
                    self._sas[group] = ranked
                    rows.append([*group, ranked])
            else:
                members.pop(group, None)
                if self._sas.pop(group, None) is not None:
                    rows.append([*group, []])
        return rows

    def publish(self, spd: SPD, outbound: Mapping[int, InstalledSA] | Sequence[InstalledSA],
                local: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
                slot_info: Mapping[int, SlotInfo], *,
                policy_changes: Mapping[tuple[Selector, Direction], Any] | None = None,
                dirty_slots: Iterable[int] | None = None) -> int:
        """Publish the current state; returns its generation.

        ``outbound``: the outbound SAs by slot (or a sequence of them);
        ``policy_changes``: the SPD's journal since the last publication (None: unknown,
        diff every policy); ``dirty_slots``: the slots whose SA or path may have changed
        since the last publication (None: any)."""
        if not isinstance(outbound, Mapping):
            outbound = {inst.slot: inst for inst in outbound}
        if self._lost:  # forget everything: a snapshot follows (_items_valid False)
            self._members, self._group_of, self._sas, self._slots = {}, {}, {}, {}
            self._items, self._items_valid, self._policy_bytes = {}, False, 0
            policy_changes = dirty_slots = None
        if policy_changes is not None:
            removed, added, policy_bytes = self._journal_diff(spd, policy_changes)
            new_items = None
        else:
            new_items, removed, added, policy_bytes = self._diff(spd)
        if dirty_slots is None:
            dirty_slots = (outbound.keys() | self._group_of.keys() | slot_info.keys()
                           | self._slots.keys())
        try:
            gen = self._publish(spd, outbound, local, slot_info, set(dirty_slots), new_items,
                                removed, added, policy_bytes)
        except BaseException:
            # What is published and what we remember may differ now: start over next time.
            self._lost = True
            raise
        self._lost = False
        return gen

    def _publish(self, spd: SPD, outbound: Mapping[int, InstalledSA],
                 local: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
                 slot_info: Mapping[int, SlotInfo], dirty: set[int],
                 new_items: dict[tuple[Direction, int], dict[int, tuple[tuple[int, int], Any]]]
                 | None, removed: list[tuple[Direction, int, tuple[int, int]]],
                 added: list[tuple[Direction, int, tuple[int, int], Policy]],
                 policy_bytes: int) -> int:
        local_hex = sorted({a.packed.hex() for a in local})
        delta: dict[str, Any] = {}
        rows: list[Any] = [[d.value, v, k[0], k[1], None] for d, v, k in removed]
        rows += [[d.value, v, k[0], k[1], _policy_row(policy)] for d, v, k, policy in added]
        if rows:
            delta["policies"] = rows
        changed = self._sa_rows(outbound, dirty)
        if changed:
            delta["sas"] = changed
        old_slots = self._slots
        slots_after: dict[int, tuple[int, str] | None] = {}
        slot_rows: list[list[Any]] = []
        for slot in dirty:
            info = slot_info.get(slot)
            value = None if info is None else (info.path_mtu, info.ifname)
            if old_slots.get(slot) != value:
                slots_after[slot] = value
                slot_rows.append([slot] if value is None else [slot, *value])
        if slot_rows:
            delta["slots"] = slot_rows
        if local_hex != self._local:
            delta["local"] = local_hex
        data = orjson.dumps(delta)
        table = self.table
        full_needed = new_items is not None and not self._items_valid
        if (not full_needed and table.generation and len(data) <= table.room()
                and self._log_bytes + len(data) <= 4 * self._snapshot_bytes + (1 << 20)):
            gen = table.append(data)
            self._log_bytes += len(data)
        else:
            doc = build_document(spd, outbound.values(), local, slot_info)
            encoded = table.encode(doc)  # PolicyTableFull: nothing changes
            gen = table.publish(encoded)
            self._snapshot_bytes, self._log_bytes = len(encoded), 0
            self.snapshots += 1
        if new_items is not None:
            self._items, self._items_valid = new_items, True
        else:
            self._items, self._items_valid = {}, False
        self._policy_bytes = policy_bytes
        for slot, value in slots_after.items():
            if value is None:
                old_slots.pop(slot, None)
            else:
                old_slots[slot] = value
        self._local = local_hex
        return gen


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


# --- the workers' lookup structure -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One ``ipsec`` request as the worker uses it."""

    protocol: int  # 50 ESP, 51 AH, 108 IPComp
    mode: int  # MODE_TRANSPORT or MODE_TUNNEL
    src: bytes | None  # SA end points (packed); None: the packet's own addresses
    dst: bytes | None
    required: bool
    reqid: int


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled policy: integer selector, action and requests."""

    snet: int
    smask: int
    dnet: int
    dmask: int
    proto: int  # -1: any
    sport: int
    dport: int
    action: int
    requests: tuple[Request, ...]

    def matches(self, s: int, d: int, proto: int, sport: int, dport: int) -> bool:
        return ((s & self.smask) == self.snet and (d & self.dmask) == self.dnet
                and (self.proto < 0 or self.proto == proto)
                and (not self.sport or self.sport == sport)
                and (not self.dport or self.dport == dport))


def _int(h: str | None) -> int:
    return int(h, 16) if h else 0


def _bytes(h: str | None) -> bytes | None:
    return bytes.fromhex(h) if h is not None else None


def _rule(row: Sequence[Any]) -> Rule:
    _family, snet, smask, dnet, dmask, proto, sport, dport, action, reqs = row
    requests = tuple(Request(p, m, _bytes(s), _bytes(d), bool(req), reqid)
                     for p, m, s, d, req, reqid in reqs)
    return Rule(_int(snet), _int(smask), _int(dnet), _int(dmask), proto, sport, dport, action,
                requests)


INDEX_MIN_RULES = 16  # up to this many rules a direction is scanned in order (PolicySet.lookup)

# (position of the shape's first rule, source mask, destination mask,
#  {(source network, destination network): [(position, rule), ...] in SPD order})
_Shape = tuple[int, int, int, dict[tuple[int, int], list[tuple[int, "Rule"]]]]


def _shapes(rules: Sequence[Rule]) -> list[_Shape]:
    """``rules`` (in SPD order) grouped by selector shape, the shapes in the order of their
    first rule.  A rule's networks are keys as they are: one with bits outside its mask
    matches nothing in the scan and is never found here either."""
    by_shape: dict[tuple[int, int], tuple[int, dict[tuple[int, int], list[tuple[int, Rule]]]]] = {}
    for pos, rule in enumerate(rules):
        shape = by_shape.get((rule.smask, rule.dmask))
        if shape is None:
            shape = by_shape[(rule.smask, rule.dmask)] = (pos, {})
        shape[1].setdefault((rule.snet, rule.dnet), []).append((pos, rule))
    return [(first, smask, dmask, table)
            for (smask, dmask), (first, table) in by_shape.items()]


@dataclass(slots=True)
class PolicySet:
    """The document turned into lookup structures (kept current by each worker)."""

    generation: int = 0
    rules: dict[tuple[str, int], list[Rule]] = field(default_factory=dict)
    sas: dict[tuple[int, bytes, bytes], list[tuple[int, int, int]]] = field(default_factory=dict)
    local: frozenset[bytes] = frozenset()
    slots: dict[int, SlotInfo] = field(default_factory=dict)
    keys: dict[tuple[str, int], list[tuple[int, int]]] = field(default_factory=dict)
    """The SPD sort key of each rule of ``rules`` (ascending): where a delta's changes go."""
    index: dict[tuple[str, int], list[_Shape]] = field(default_factory=dict, repr=False,
                                                        compare=False)
    """``rules`` by selector shape (see :meth:`lookup`), built when first needed after a change."""

    @classmethod
    def from_document(cls, generation: int, doc: Mapping[str, Any]) -> PolicySet:
        rules: dict[tuple[str, int], list[Rule]] = {}
        keys: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for direction, rows in doc.get("policies", {}).items():
            for k0, k1, row in rows:
                rules.setdefault((direction, row[0]), []).append(_rule(row))
                keys.setdefault((direction, row[0]), []).append((k0, k1))
        sas = {(proto, bytes.fromhex(src), bytes.fromhex(dst)): [tuple(c) for c in cands]
               for proto, src, dst, cands in doc.get("sas", [])}
        return cls(
            generation=generation,
            rules=rules,
            sas=sas,
            local=frozenset(bytes.fromhex(a) for a in doc.get("local", [])),
            slots={slot: SlotInfo(mtu, ifname) for slot, mtu, ifname in doc.get("slots", [])},
            keys=keys,
        )

    def reset(self, other: PolicySet) -> None:
        """Take over ``other``'s contents."""
        self.generation, self.rules, self.sas = other.generation, other.rules, other.sas
        self.local, self.slots, self.keys = other.local, other.slots, other.keys
        self.index = {}

    def apply(self, delta: Mapping[str, Any]) -> None:
        """Apply a delta record (:class:`PolicyPublisher`); the caller sets ``generation``."""
        for direction, family, k0, k1, row in delta.get("policies", ()):
            bucket = (direction, family)
            self.index.pop(bucket, None)
            keys = self.keys.setdefault(bucket, [])
            rules = self.rules.setdefault(bucket, [])
            key = (k0, k1)
            i = bisect.bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                if row is None:
                    del keys[i], rules[i]
                else:
                    rules[i] = _rule(row)
            elif row is not None:
                keys.insert(i, key)
                rules.insert(i, _rule(row))
        for proto, src, dst, cands in delta.get("sas", ()):
            sa_key = (proto, bytes.fromhex(src), bytes.fromhex(dst))
            if cands:
                self.sas[sa_key] = [tuple(c) for c in cands]
            else:
                self.sas.pop(sa_key, None)
        for row in delta.get("slots", ()):
            if len(row) == 1:
                self.slots.pop(row[0], None)
            else:
                self.slots[row[0]] = SlotInfo(row[1], row[2])
        if "local" in delta:
            self.local = frozenset(bytes.fromhex(a) for a in delta["local"])

    def lookup(self, direction: str, version: int, s: int, d: int, proto: int,
               sport: int = 0, dport: int = 0) -> Rule | None:
        """The first rule of ``direction`` ("out", "in", "fwd") selecting the packet.

        A few rules (setkey scripts) are scanned in order.  More (an IKE gateway has three
        per Child SA, thousands in all) are searched by shape: the rules with the same
        (source mask, destination mask) sit in a dict keyed by their two networks, so each
        shape costs one dict lookup and the answer is the earliest rule over all shapes -
        the same rule the scan finds, without walking every rule.  It matters because the
        worker's flow caches are emptied on every SA or policy change: under IKE churn each
        active flow is decided again.
        """
        bucket = (direction, version)
        rules = self.rules.get(bucket)
        if not rules:
            return None
        if len(rules) <= INDEX_MIN_RULES:
            for rule in rules:
                if ((s & rule.smask) == rule.snet and (d & rule.dmask) == rule.dnet
                        and (rule.proto < 0 or rule.proto == proto)
                        and (not rule.sport or rule.sport == sport)
                        and (not rule.dport or rule.dport == dport)):
                    return rule
            return None
        shapes = self.index.get(bucket)
        if shapes is None:
            shapes = self.index[bucket] = _shapes(rules)
        best: Rule | None = None
        best_pos = len(rules)
        for first, smask, dmask, table in shapes:
            if first >= best_pos:
                break  # shapes are in the order of their first rule: none can come earlier
            candidates = table.get((s & smask, d & dmask))
            if candidates is None:
                continue
            for pos, rule in candidates:
                if pos >= best_pos:
                    break
                if ((rule.proto < 0 or rule.proto == proto)
                        and (not rule.sport or rule.sport == sport)
                        and (not rule.dport or rule.dport == dport)):
                    best, best_pos = rule, pos
                    break
        return best

    def outbound_slot(self, request: Request, src: bytes, dst: bytes) -> int | None:
        """The SA slot serving ``request`` for a packet from ``src`` to ``dst`` (packed)."""
        if request.src is not None and request.dst is not None:
            src, dst = request.src, request.dst
        for slot, mode, reqid in self.sas.get((request.protocol, src, dst), ()):
            if mode and mode != request.mode:
                continue
            if request.reqid and reqid != request.reqid:
                continue
            return slot
        return None

    def count(self) -> int:
        return sum(len(v) for v in self.rules.values())


def ports_of(proto: int, data: Sequence[int] | memoryview | bytes, at: int, end: int) -> tuple[int, int]:
    """Selector "ports" of a transport header at ``data[at:]``: ports for TCP/UDP/SCTP/UDP-Lite,
    type and code for ICMP/ICMPv6 (RFC 4301 §4.4.1.1), else (0, 0)."""
    if proto in (6, 17, 132, 136):
        if at + 4 <= end:
            return data[at] << 8 | data[at + 1], data[at + 2] << 8 | data[at + 3]
    elif proto in (1, 58) and at + 2 <= end:
        return data[at], data[at + 1]
    return 0, 0


__all__ = [
    "ACTION_DISCARD",
    "ACTION_IPSEC",
    "ACTION_NONE",
    "MODE_TRANSPORT",
    "MODE_TUNNEL",
    "InstalledSA",
    "PolicyPublisher",
    "PolicyReader",
    "PolicySet",
    "PolicyTable",
    "PolicyTableFull",
    "Request",
    "Rule",
    "SlotInfo",
    "build_document",
    "fold",
    "ports_of",
]
