"""The policy table the control process publishes for the workers.

Theory of operation
-------------------
The SPD lives in the control process (:class:`ipsecd.spd.SPD`); workers need
a read-only copy of it plus the answers that depend on the SAD: which SA
slot of the shared SA table (:mod:`ipsecd.satable`) serves an ``ipsec``
request, the path MTU and outside interface of each outbound SA, and the
local addresses (an inbound packet for one of them is checked against the
``in`` policies, any other against ``fwd``).

The control process serializes all of it into one JSON document (orjson)
and publishes it in a small shared-memory segment of its own (mode 0600)::

    header (64 bytes): u32 seq | u32 pad | u64 generation | u64 length
    data: the JSON document

``seq`` is a seqlock: odd while the writer copies a new document in.  A
reader copies ``length`` bytes and keeps them only if ``seq`` was even and
unchanged across the copy.  ``generation`` grows with every publication;
workers read it (one 8-byte load) once per batch and rebuild their lookup
structure (:class:`PolicySet`) and drop their per-flow caches when it moved.
A restarted worker simply reads the current document.

Why a document and not a binary table: policies change at human speed
(setkey, IKE), the document is parsed once per change per worker, and JSON
keeps the format debuggable (``ipsecd status --json`` shows the same facts).
Addresses travel as hex strings because orjson does not take 128-bit
integers.

Lookup (:meth:`PolicySet.lookup`) is the SPD's own rule: a linear scan of
integer compares in the SPD's order (priority, then installation order,
first match wins; see :mod:`ipsecd.spd`).  The workers cache the decision per
flow, so the scan runs once per flow and generation.
"""

from __future__ import annotations

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
from ipsecd.spd import SPD, Action, Direction, Level, Policy

_HEADER = struct.Struct("<IIQQ")  # seq, pad, generation, length
HEADER_SIZE = 64
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

    @staticmethod
    def unlink_stale(name: str) -> bool:
        try:
            os.unlink(_shm_path(name))
        except FileNotFoundError:
            return False
        return True

    def encode(self, document: Mapping[str, Any]) -> bytes:
        """The bytes :meth:`publish` would write; :class:`PolicyTableFull` if too big."""
        data = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
        if len(data) > self.size - HEADER_SIZE:
            raise PolicyTableFull(
                f"the policy table needs {len(data)} bytes; the segment holds "
                f"{self.size - HEADER_SIZE}")
        return data

    def publish(self, document: Mapping[str, Any] | bytes) -> int:
        """Write a new document and return its generation."""
        data = document if isinstance(document, bytes) else self.encode(document)
        if len(data) > self.size - HEADER_SIZE:
            raise PolicyTableFull(f"{len(data)} bytes do not fit")
        mm = self._mm
        seq = _SEQ.unpack_from(mm, 0)[0]
        _SEQ.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF)  # odd: being written
        mm[HEADER_SIZE:HEADER_SIZE + len(data)] = data
        self.generation += 1
        _HEADER.pack_into(mm, 0, (seq + 1) & 0xFFFFFFFF, 0, self.generation, len(data))
        _SEQ.pack_into(mm, 0, (seq + 2) & 0xFFFFFFFF)  # even: stable
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

    def read(self, retries: int = 1000) -> tuple[int, dict[str, Any]] | None:
        """A consistent copy of the current document and its generation (None if none yet)."""
        view = self._view
        for _ in range(retries):
            seq1, _, gen, length = _HEADER.unpack_from(view, 0)
            if seq1 & 1:
                time.sleep(0)
                continue
            if gen == 0:
                return None
            data = bytes(view[HEADER_SIZE:HEADER_SIZE + length])
            if _SEQ.unpack_from(view, 0)[0] != seq1:
                continue
            return int(gen), orjson.loads(data)
        return None

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
    """The document for the current SPD and the outbound SAs in the table."""
    policies: dict[str, list[Any]] = {}
    for direction in Direction:
        rows = []
        for entry in spd.entries(direction):
            rows.append(_policy_row(entry.policy))
        policies[direction.value] = rows
    # (protocol, src, dst) -> candidates, best first: mature before dying, then newest
    # (the rule of SAD.find_outbound; the worker filters by mode and reqid).
    groups: dict[tuple[int, str, str], list[tuple[tuple[int, int], list[int]]]] = {}
    for inst in outbound:
        sa = inst.sa
        if sa.state not in (SAState.MATURE, SAState.DYING):
            continue
        key = (int(sa.protocol), sa.src.packed.hex(), sa.dst.packed.hex())
        mode = {Mode.ANY: 0, Mode.TRANSPORT: MODE_TRANSPORT, Mode.TUNNEL: MODE_TUNNEL}[sa.mode]
        rank = (1 if sa.state is SAState.MATURE else 0, inst.order)
        groups.setdefault(key, []).append((rank, [inst.slot, mode, sa.reqid]))
    sas = [[proto, src, dst, [c for _, c in sorted(cands, key=lambda x: x[0], reverse=True)]]
           for (proto, src, dst), cands in groups.items()]
    return {
        "policies": policies,
        "sas": sas,
        "local": sorted({a.packed.hex() for a in local_addresses}),
        "slots": [[slot, info.path_mtu, info.ifname] for slot, info in sorted(slot_info.items())],
    }


_ROWS: dict[int, tuple[Policy, list[Any]]] = {}


def _policy_row(policy: Policy) -> list[Any]:
    # Policies are immutable and the document is rebuilt on every change: a row is
    # computed once per policy object, not once per policy per change (IKE installs one
    # child after another).  Keyed by identity (hashing a Policy costs more than the row).
    hit = _ROWS.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    if len(_ROWS) > 1 << 16:
        _ROWS.clear()
    row = _make_row(policy)
    _ROWS[id(policy)] = (policy, row)
    return row


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


@dataclass(slots=True)
class PolicySet:
    """The document turned into lookup structures (built per generation by each worker)."""

    generation: int = 0
    rules: dict[tuple[str, int], list[Rule]] = field(default_factory=dict)
    sas: dict[tuple[int, bytes, bytes], list[tuple[int, int, int]]] = field(default_factory=dict)
    local: frozenset[bytes] = frozenset()
    slots: dict[int, SlotInfo] = field(default_factory=dict)

    @classmethod
    def from_document(cls, generation: int, doc: Mapping[str, Any]) -> PolicySet:
        rules: dict[tuple[str, int], list[Rule]] = {}
        for direction, rows in doc.get("policies", {}).items():
            for row in rows:
                family, snet, smask, dnet, dmask, proto, sport, dport, action, reqs = row
                requests = tuple(Request(p, m, _bytes(s), _bytes(d), bool(req), reqid)
                                 for p, m, s, d, req, reqid in reqs)
                rules.setdefault((direction, family), []).append(Rule(
                    _int(snet), _int(smask), _int(dnet), _int(dmask), proto, sport, dport,
                    action, requests))
        sas = {(proto, bytes.fromhex(src), bytes.fromhex(dst)): [tuple(c) for c in cands]
               for proto, src, dst, cands in doc.get("sas", [])}
        return cls(
            generation=generation,
            rules=rules,
            sas=sas,
            local=frozenset(bytes.fromhex(a) for a in doc.get("local", [])),
            slots={slot: SlotInfo(mtu, ifname) for slot, mtu, ifname in doc.get("slots", [])},
        )

    def lookup(self, direction: str, version: int, s: int, d: int, proto: int,
               sport: int = 0, dport: int = 0) -> Rule | None:
        """The first rule of ``direction`` ("out", "in", "fwd") selecting the packet."""
        for rule in self.rules.get((direction, version), ()):
            if ((s & rule.smask) == rule.snet and (d & rule.dmask) == rule.dnet
                    and (rule.proto < 0 or rule.proto == proto)
                    and (not rule.sport or rule.sport == sport)
                    and (not rule.dport or rule.dport == dport)):
                return rule
        return None

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
    "PolicyReader",
    "PolicySet",
    "PolicyTable",
    "PolicyTableFull",
    "Request",
    "Rule",
    "SlotInfo",
    "build_document",
    "ports_of",
]
