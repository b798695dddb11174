"""Counters per connection that outlive the SAs they are made of.

Theory of operation
-------------------
The workers count packets and bytes per SA *slot* of the shared SA table
(:mod:`ipsecd.satable`), each worker in its own row, without locks.  An SA is
replaced on every rekey and its slot is cleared for the next SA, so a
counter read straight from the slots would fall back to zero at each rekey,
which Prometheus reads as a counter reset and which hides the traffic
counted between the last scrape and the removal.

The control process therefore tells :class:`Accounting` when it installs
an SA in a slot (:meth:`Accounting.install`), when it removes the SA from
the table (:meth:`Accounting.drain`) and, just before it lets the slot be
reused, when the slot's counters are final (:meth:`Accounting.retire`):
``retire`` reads the slot's final totals and adds them to the *retired*
totals of the SA's child.  A scrape (:meth:`Accounting.snapshot`, in the
exporter's HTTP thread) reports, per child, retired totals plus the current
sums of the live and the draining slots.  Both sides hold one
``threading.Lock`` of the control process - never touched by the workers, so
the datapath does no extra work - which makes "slot moved to retired" atomic
for the reader: a scrape sees a slot's traffic either in the slot's sum or
in the retired total, never both, never neither, so the reported counters
never go down.

Between ``drain`` and ``retire`` a slot *drains*: its SA is gone (not up, no
per-SA series, no lifetime), but a worker may still add the packets it
counted before it saw the removal - it adds its counts once per loop turn -
and those belong to the child too.  The control process calls ``retire``
once every worker has written that it holds no more
(:meth:`ipsecd.satable.SATable.flushed_generation`), so every packet a
worker counted reaches the child's counter.

Labels: the connection and the child
------------------------------------
With manual keys there is no connection name.  An SA is put in a child of
a connection by what setkey(8) gives:

* ``connection`` = ``LOCAL-REMOTE``: the SA's outer addresses seen from
  this gateway (for an inbound SA its destination first, for an outbound
  one its source first), so the two directions of a tunnel, and every SA
  that replaces them on a rekey, share it;
* ``child`` = ``reqid:N``: the SA's reqid (setkey's ``-u N``, the
  ``unique:N`` of the policy that uses it; ``reqid:0`` when the SA serves
  any policy between the two peers).

With IKE (an SA the daemon installed for a negotiated Child SA carries
``sa.extra["ike"]``, the connection's name, and ``sa.extra["child"]``, the
child's) they are the configuration's names: ``connection`` = the
``[connections.NAME]``, ``child`` = the ``children.NAME`` (``reqid:N`` if an
SA lacks the child's name).  A rekeyed Child SA keeps its name (and its
reqid), so its counters carry on as with manual keys; so do those of a child
negotiated again after its IKE SA was re-established.  Several IKE SAs of one
connection (peers answered with ``remote_addrs = %any``) add up in one
series per child name.

Cardinality is bounded by the configuration: a child, once
seen, is kept (with its totals) for the daemon's life, so its counters and
its ``up`` gauge stay continuous while it has no SA at all (between the
``delete`` and the ``add`` of a manual rekey, or after a hard expiry).
SPIs, which change at every rekey, become labels only when the operator
asks for per-SA series (``[metrics] sa_labels = true``).

IPComp SAs (RFC 3173) belong to their child like its ESP SAs, but the
packets they count are the same packets again, before compression (the ESP
or AH SA that carries them counts them too): their traffic is not added to
the child's counters, nor do they count as the child's SA in use, nor do
they get per-SA series (a CPI may equal an ESP SPI of the same child: the
labels would clash); ``ipsecd status`` shows their counters.  Their drops
(``decompress``...) are counted like any SA's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from ipsecd.iana import IpProto
from ipsecd.sa import SecurityAssociation
from ipsecd.satable import DROP_COLUMNS, SACounter

#: (connection, child, direction) - the key of the monotonic counters.
ChildKey = tuple[str, str, str]


class CounterSource(Protocol):
    """What the accounting reads: :class:`ipsecd.satable.SATable` (its summed counter rows)."""

    def sum_sa_counters(self, slot: int) -> list[int]: ...


def connection_of(sa: SecurityAssociation, direction: str) -> tuple[str, str]:
    """The ``(connection, child)`` labels of an SA used in ``direction`` ("in" or "out")."""
    ike = sa.extra.get("ike")
    if ike is not None:
        child = sa.extra.get("child")
        return str(ike), str(child) if child else f"reqid:{sa.reqid}"
    local, remote = (sa.dst, sa.src) if direction == "in" else (sa.src, sa.dst)
    return f"{local}-{remote}", f"reqid:{sa.reqid}"


@dataclass(frozen=True, slots=True)
class LiveSA:
    """An installed SA as the exporter may show it: labels and lifetimes, no keys."""

    slot: int
    uid: int
    connection: str
    child: str
    direction: str
    spi: int
    installed: float  # wall clock of the SA's creation in the SAD
    order: int  # install order: the newest SA of a child is the one in use
    soft_add: int  # add-time lifetimes in seconds, 0 = none
    hard_add: int
    soft_use: int  # use-time lifetimes in seconds, 0 = none
    hard_use: int
    carries: bool = True  # its packets are the child's traffic (not so for IPComp)


@dataclass(frozen=True, slots=True)
class ChildSample:
    connection: str
    child: str
    direction: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class SASample:
    """One installed SA (only exported with ``[metrics] sa_labels``)."""

    connection: str
    child: str
    direction: str
    spi: int
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class LifetimeSample:
    connection: str
    child: str
    direction: str
    kind: str  # "soft" or "hard"
    seconds: float


@dataclass(frozen=True, slots=True)
class Traffic:
    """What :meth:`Accounting.snapshot` returns."""

    children: list[ChildSample] = field(default_factory=list)
    up: dict[tuple[str, str], bool] = field(default_factory=dict)
    sas: list[SASample] = field(default_factory=list)
    lifetimes: list[LifetimeSample] = field(default_factory=list)
    sa_count: dict[str, int] = field(default_factory=dict)
    drops: list[int] = field(default_factory=lambda: [0] * DROP_COLUMNS)


class Accounting:
    """Monotonic per-child counters over SA slots that come and go (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, LiveSA] = {}  # slot -> SA
        self._draining: dict[int, LiveSA] = {}  # slot -> removed SA, workers may still add
        self._retired: dict[ChildKey, list[int]] = {}  # [packets, bytes]
        self._retired_drops = [0] * DROP_COLUMNS
        self._first_used: dict[int, float] = {}  # uid -> wall clock of the first packet
        self._order = 0

    def install(self, slot: int, uid: int, sa: SecurityAssociation, direction: str,
                created: float) -> None:
        """Call after the SA was written into ``slot`` (its counters were cleared)."""
        connection, child = connection_of(sa, direction)
        with self._lock:
            self._order += 1
            self._live[slot] = LiveSA(slot, uid, connection, child, direction, sa.spi, created,
                                      self._order, sa.soft.add_seconds, sa.hard.add_seconds,
                                      sa.soft.use_seconds, sa.hard.use_seconds,
                                      sa.protocol != IpProto.IPCOMP)
            retired = self._retired
            for d in ("in", "out"):
                key = (connection, child, d)
                if key not in retired:  # (setdefault would make a list every time)
                    retired[key] = [0, 0]

    def drain(self, slot: int) -> None:
        """Call when the SA in ``slot`` was removed: its counters still count, it is not up."""
        with self._lock:
            live = self._live.pop(slot, None)
            if live is not None:
                self._draining[slot] = live
                self._first_used.pop(live.uid, None)

    def retire(self, slot: int, table: CounterSource) -> list[int]:
        """Call before ``slot`` is reused: its final counters move to the child's totals.

        Returns the slot's summed counter row (the caller may want its drops).
        """
        with self._lock:
            totals = table.sum_sa_counters(slot)
            live = self._live.pop(slot, None) or self._draining.pop(slot, None)
            if live is not None and live.carries:
                acc = self._retired[(live.connection, live.child, live.direction)]
                acc[0] += totals[SACounter.PACKETS]
                acc[1] += totals[SACounter.BYTES]
            if live is not None:
                self._first_used.pop(live.uid, None)
            for i in range(DROP_COLUMNS):
                self._retired_drops[i] += totals[SACounter.DROPS + i]
        return totals

    def first_used(self, sa_uids: list[int], when: float) -> None:
        """Note the first packet of an SA (its slots' uids), for use-time lifetimes."""
        with self._lock:
            for uid in sa_uids:
                self._first_used.setdefault(uid, when)

    def drop_totals(self, table: CounterSource) -> list[int]:
        """Drops of removed SAs plus those of the installed ones, per reason (SA-level only)."""
        with self._lock:
            totals = list(self._retired_drops)
            for slot in (*self._live, *self._draining):
                row = table.sum_sa_counters(slot)
                for i in range(DROP_COLUMNS):
                    totals[i] += row[SACounter.DROPS + i]
        return totals

    def snapshot(self, table: CounterSource, *, per_sa: bool = False,
                 now: float | None = None) -> Traffic:
        """Everything a scrape shows about SAs, read consistently with :meth:`retire`."""
        now = time.time() if now is None else now
        out = Traffic()
        with self._lock:
            totals = {key: list(v) for key, v in self._retired.items()}
            drops = list(self._retired_drops)
            newest: dict[ChildKey, LiveSA] = {}
            for slot, live in self._draining.items():
                row = table.sum_sa_counters(slot)
                if live.carries:
                    acc = totals[(live.connection, live.child, live.direction)]
                    acc[0] += row[SACounter.PACKETS]
                    acc[1] += row[SACounter.BYTES]
                for i in range(DROP_COLUMNS):
                    drops[i] += row[SACounter.DROPS + i]
            for slot, live in self._live.items():
                row = table.sum_sa_counters(slot)
                key = (live.connection, live.child, live.direction)
                for i in range(DROP_COLUMNS):
                    drops[i] += row[SACounter.DROPS + i]
                if not live.carries:
                    continue  # IPComp: the same packets as its carrier's (module docstring)
                if per_sa:
                    out.sas.append(SASample(live.connection, live.child, live.direction,
                                            live.spi, row[SACounter.PACKETS],
                                            row[SACounter.BYTES]))
                acc = totals[key]
                acc[0] += row[SACounter.PACKETS]
                acc[1] += row[SACounter.BYTES]
                out.sa_count[live.direction] = out.sa_count.get(live.direction, 0) + 1
                if key not in newest or newest[key].order < live.order:
                    newest[key] = live
            first_used = dict(self._first_used)
        out.drops[:] = drops
        for (connection, child, direction), (packets, nbytes) in sorted(totals.items()):
            out.children.append(ChildSample(connection, child, direction, packets, nbytes))
            pair = (connection, child)
            out.up[pair] = out.up.get(pair, True) and (connection, child, direction) in newest
        for (connection, child, direction), live in sorted(newest.items()):
            for kind, add, use in (("soft", live.soft_add, live.soft_use),
                                   ("hard", live.hard_add, live.hard_use)):
                left: list[float] = []
                if add:
                    left.append(live.installed + add - now)
                if use:
                    start = first_used.get(live.uid)
                    left.append(use if start is None else start + use - now)
                if left:
                    out.lifetimes.append(LifetimeSample(connection, child, direction, kind,
                                                        max(0.0, min(left))))
        return out


__all__ = ["Accounting", "ChildSample", "LifetimeSample", "LiveSA", "SASample", "Traffic",
           "connection_of"]
