"""The Security Association Database (RFC 4301 §4.4.2).

The SAD holds :class:`ipsecd.sa.SecurityAssociation` values keyed by
``(SPI, protocol, destination)`` - the triple an inbound packet carries
(RFC 4301 §4.1), so an SPI is unique per protocol and destination address.
Only the control process changes the SAD; the workers read a copy of it
from shared memory.

Operations follow PF_KEY (RFC 2367) as setkey(8) drives them: ``add``
refuses an SA whose key exists, ``update`` replaces one, ``delete`` removes
one (its source address must match too), ``deleteall`` removes every SA
between two addresses for a protocol, ``flush`` empties the SAD or one
protocol of it.  Every SA that leaves the SAD is wiped
(:meth:`~ipsecd.sa.SecurityAssociation.wipe`: keys zeroed, state ``dead``).

:attr:`SAD.generation` grows on every change; the datapath watches it to
know when to re-read the table.

Change journal
    The SAD remembers which keys changed (an SA added, replaced or removed)
    since the control process last took the list (:meth:`SAD.take_changes`),
    so that it brings the SA table in line in time proportional to the
    change, not to the SAD.  Copies carry the journal; a commit takes the
    copy's.  Past :data:`JOURNAL_LIMIT` keys it gives up (``None``: anything
    may have changed, recompute everything).

Transactions
    A setkey script is applied all or nothing (:mod:`ipsecd.setkey.ops`).
    It runs on :meth:`SAD.copy`, a shallow copy that shares the SA objects
    and *defers* wiping: an SA removed inside the transaction is only
    wiped when :meth:`SAD.replace_with` commits the copy, because until
    then the live SAD still uses it.  A copy that is thrown away wipes
    nothing.

Outbound SA selection (:meth:`SAD.find_outbound`)
    For an ``ipsec`` policy request the SA must match the request's end
    points and protocol.  An SA added with ``-m any`` (setkey's default)
    serves either mode, as in KAME; otherwise the modes must be equal.  A
    request with a reqid (``unique:N``) takes only the SA added with
    ``-u N``; a request without one takes any SA.  Among several candidates
    a ``mature`` SA is preferred to a ``dying`` one (soft lifetime reached),
    then the most recently added, as KAME and Linux do; ``larval`` and
    ``dead`` SAs are never used.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ipsecd.iana import IpProto
from ipsecd.sa import IPAddress, Mode, SAState, SecurityAssociation

SAKey = tuple[int, IpProto, IPAddress]

#: Changed keys the journal holds before it reports "everything" (None).
JOURNAL_LIMIT = 4096

#: The protocols an SAD entry can have.
SA_PROTOCOLS = (IpProto.ESP, IpProto.AH, IpProto.IPCOMP)


class SADError(Exception):
    """An SAD operation that cannot be done (duplicate SPI, no such SA)."""


def describe(spi: int, protocol: IpProto, dst: IPAddress) -> str:
    """A human-readable SA key, as used in error messages."""
    return f"{protocol.name.lower()} SA spi {spi:#x} to {dst}"


@dataclass(slots=True)
class _Slot:
    sa: SecurityAssociation
    created: float
    order: int


@dataclass(slots=True)
class _Undo:
    """What :meth:`SAD.rollback` restores."""

    generation: int
    next_order: int
    changed: dict[SAKey, None] | None  # the journal object (it may be dropped meanwhile)
    journaled: int  # its length then: keys past it were added since
    # (key, pair, the pair's list then or None, its length then), in order
    added: list[tuple[SAKey, tuple[IPAddress, IPAddress, IpProto],
                      list[SecurityAssociation] | None, int]]


@dataclass(slots=True)
class SAD:
    """The SA database. Not thread-safe: one writer (the control process)."""

    generation: int = 0
    _slots: dict[SAKey, _Slot] = field(default_factory=dict)
    # (src, dst, protocol) -> SAs between those end points, for outbound selection.
    _by_pair: dict[tuple[IPAddress, IPAddress, IpProto], list[SecurityAssociation]] = field(
        default_factory=dict
    )
    _next_order: int = 0
    # Inside a transaction: SAs removed so far, wiped only at commit.
    _deferred: list[SecurityAssociation] | None = None
    # ids of the _by_pair lists this SAD made since it was last copied (the others are
    # shared with a copy and replaced, not changed, when they change).
    _owned: set[int] = field(default_factory=set, compare=False, repr=False)
    # Keys changed since take_changes() (a dict as an ordered set); None: too many.
    _changed: dict[SAKey, None] | None = field(default_factory=dict, compare=False,
                                                     repr=False)
    # Inside a savepoint: what undoes the additions since (savepoint, rollback).
    _undo: _Undo | None = field(default=None, compare=False, repr=False)

    # -- changes ---------------------------------------------------------------

    def add(self, sa: SecurityAssociation, *, now: float | None = None) -> None:
        """Install ``sa`` (the object itself, not a copy); :class:`SADError` if its key exists."""
        if sa.protocol not in SA_PROTOCOLS:
            raise SADError(f"an SA protocol must be esp, ah or ipcomp, not {sa.protocol!r}")
        key = sa.key  # a new tuple at each use, hashing an address each time: made once
        if key in self._slots:
            raise SADError(f"{describe(*key)} already exists")
        self._insert(sa, time.time() if now is None else now, key)

    def update(self, sa: SecurityAssociation, *, now: float | None = None) -> SecurityAssociation:
        """Replace the SA with ``sa``'s key and return the old one, wiped; :class:`SADError` if none.

        The replacement keeps the creation time of the SA it replaces, as
        PF_KEY's SADB_UPDATE completes an existing SA rather than making a
        new one.
        """
        slot = self._slots.get(sa.key)
        if slot is None:
            raise SADError(f"no {describe(*sa.key)} to update")
        old = self._remove(sa.key)
        self._insert(sa, slot.created if now is None else now)
        return old

    def delete(
        self, spi: int, protocol: IpProto, dst: IPAddress, src: IPAddress | None = None
    ) -> SecurityAssociation:
        """Remove one SA and return it, wiped; with ``src`` its source address must match too.

        Inside a transaction (:meth:`copy`) the wipe happens at commit.
        """
        slot = self._slots.get((spi, protocol, dst))
        if slot is None or (src is not None and slot.sa.src != src):
            frm = f" from {src}" if src is not None else ""
            raise SADError(f"no {describe(spi, protocol, dst)}{frm}")
        return self._remove((spi, protocol, dst))

    def deleteall(self, src: IPAddress, dst: IPAddress, protocol: IpProto) -> int:
        """Remove (and wipe) every ``protocol`` SA from ``src`` to ``dst``; returns how many."""
        victims = [sa.key for sa in self._by_pair.get((src, dst, protocol), ())]
        for key in victims:
            self._remove(key)
        return len(victims)

    def flush(self, protocol: IpProto | None = None) -> int:
        """Remove (and wipe) every SA, or every SA of ``protocol``; returns how many."""
        victims = [
            k for k, slot in self._slots.items() if protocol is None or slot.sa.protocol == protocol
        ]
        for key in victims:
            self._remove(key)
        return len(victims)

    # -- queries ---------------------------------------------------------------

    def get(self, spi: int, protocol: IpProto, dst: IPAddress) -> SecurityAssociation | None:
        """The SA an inbound packet with this SPI, protocol and destination belongs to."""
        slot = self._slots.get((spi, protocol, dst))
        return None if slot is None else slot.sa

    def created(self, sa: SecurityAssociation) -> float:
        """When ``sa`` was added (seconds since the epoch)."""
        slot = self._slots.get(sa.key)
        if slot is None or slot.sa is not sa:
            raise SADError(f"{describe(*sa.key)} is not in this SAD")
        return slot.created

    def dump(self, protocol: IpProto | None = None) -> list[SecurityAssociation]:
        """SAs in the order they were added, optionally only one protocol's."""
        slots = sorted(self._slots.values(), key=lambda s: s.order)
        return [s.sa for s in slots if protocol is None or s.sa.protocol == protocol]

    def find_outbound(
        self,
        src: IPAddress,
        dst: IPAddress,
        protocol: IpProto,
        mode: Mode,
        reqid: int = 0,
    ) -> SecurityAssociation | None:
        """The SA to use for an outbound request (selection rules in the module docs)."""
        best: SecurityAssociation | None = None
        best_rank: tuple[int, int] = (-1, -1)
        for sa in self._by_pair.get((src, dst, protocol), ()):
            if sa.state not in (SAState.MATURE, SAState.DYING):
                continue
            if sa.mode is not Mode.ANY and sa.mode is not mode:
                continue
            if reqid and sa.reqid != reqid:
                continue
            rank = (1 if sa.state is SAState.MATURE else 0, self._slots[sa.key].order)
            if rank > best_rank:
                best, best_rank = sa, rank
        return best

    def changes(self) -> list[SAKey] | None:
        """The keys whose SA was added, replaced or removed since :meth:`take_changes` (the
        present ones in SAD order, then the absent ones); None when there were more than
        :data:`JOURNAL_LIMIT`: anything may have changed."""
        if self._changed is None:
            return None
        # Each key looked up once: an SA key hashes its address (ipaddress's hash formats
        # the address in hex every time), and an install asks for these twice.
        slots = self._slots
        present: list[tuple[int, SAKey]] = []
        absent: list[SAKey] = []
        for k in self._changed:
            slot = slots.get(k)
            if slot is None:
                absent.append(k)
            else:
                present.append((slot.order, k))
        present.sort(key=_first)  # stable, as the sort by order it replaces
        return [k for _, k in present] + absent

    def take_changes(self) -> list[SAKey] | None:
        """:meth:`changes`, and start a new journal."""
        self._no_savepoint()
        out = self.changes()
        self._changed = {}
        return out

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(self.dump())

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    # -- transactions ----------------------------------------------------------

    def copy(self) -> SAD:
        """A shallow copy for a transaction: shares the SAs, defers their wiping."""
        self._no_savepoint()
        new = SAD(generation=self.generation, _next_order=self._next_order, _deferred=[],
                  _changed=None if self._changed is None else dict(self._changed))
        new._slots = dict(self._slots)
        # The lists are copied when the copy changes them (_insert, _remove), not here.
        new._by_pair = dict(self._by_pair)
        self._owned = set()  # both now share every list
        return new

    def replace_with(self, other: SAD) -> None:
        """Commit a transaction made on :meth:`copy`: take its contents, wipe what it removed."""
        self._no_savepoint()
        self._slots = other._slots
        self._by_pair = other._by_pair
        self._owned = other._owned
        self._changed = other._changed
        self._next_order = other._next_order
        self.generation = max(self.generation, other.generation)
        removed = other._deferred or []
        other._deferred = []
        if self._deferred is not None:  # committing into an outer transaction
            self._deferred.extend(removed)
            return
        for sa in removed:
            slot = self._slots.get(sa.key)  # an SA is only ever under its own key
            if slot is None or slot.sa is not sa:
                sa.wipe()

    def savepoint(self) -> None:
        """Start a transaction in place that can only add SAs: :meth:`rollback` takes the
        additions back, :meth:`release` keeps them.  Unlike :meth:`copy` it costs what is
        added, not the size of the SAD (IKE installs a few SAs at a time into thousands)."""
        if self._undo is not None:
            raise SADError("a savepoint is already open")
        changed = self._changed
        self._undo = _Undo(self.generation, self._next_order, changed,
                           0 if changed is None else len(changed), [])

    def rollback(self) -> None:
        """Undo every addition since :meth:`savepoint`: the SAD is as it was then (its lists
        and journal included); the SAs taken back are not wiped (they were never kept)."""
        undo, self._undo = self._undo, None
        if undo is None:
            raise SADError("no savepoint to roll back")
        for key, pair, siblings, length in reversed(undo.added):
            del self._slots[key]
            now = self._by_pair[pair]
            if now is not siblings:  # a new list was made for the addition
                self._owned.discard(id(now))
            if siblings is None:
                del self._by_pair[pair]
            else:
                del siblings[length:]  # appended in place, or untouched
                self._by_pair[pair] = siblings
        self.generation, self._next_order = undo.generation, undo.next_order
        changed = self._changed = undo.changed
        if changed is not None:
            for key in list(itertools.islice(changed, undo.journaled, None)):
                del changed[key]

    def release(self) -> None:
        """Keep the changes since :meth:`savepoint`."""
        if self._undo is None:
            raise SADError("no savepoint to release")
        self._undo = None

    # -- internals -------------------------------------------------------------

    def _no_savepoint(self) -> None:
        if self._undo is not None:  # they would share or drop what a rollback restores
            raise SADError("not inside a savepoint")

    def _journal(self, key: SAKey) -> None:
        if self._changed is not None:
            self._changed[key] = None
            if len(self._changed) > JOURNAL_LIMIT:
                self._changed = None

    def _insert(self, sa: SecurityAssociation, created: float, key: SAKey | None = None) -> None:
        if key is None:
            key = sa.key
        self._slots[key] = _Slot(sa, created, self._next_order)
        self._next_order += 1
        pair = (sa.src, sa.dst, sa.protocol)
        siblings = self._by_pair.get(pair)
        if self._undo is not None:
            self._undo.added.append((key, pair, siblings, len(siblings or ())))
        if siblings is not None and id(siblings) in self._owned:
            siblings.append(sa)
        else:  # none yet, or a list shared with a copy: a new one
            siblings = self._by_pair[pair] = [*(siblings or ()), sa]
            self._owned.add(id(siblings))
        self.generation += 1
        self._journal(key)

    def _remove(self, key: SAKey) -> SecurityAssociation:
        if self._undo is not None:
            raise SADError("a savepoint undoes additions only")
        slot = self._slots.pop(key)
        sa = slot.sa
        pair = (sa.src, sa.dst, sa.protocol)
        old = self._by_pair.get(pair, [])
        self._owned.discard(id(old))
        siblings = [s for s in old if s is not sa]
        if siblings:
            self._by_pair[pair] = siblings
            self._owned.add(id(siblings))
        else:
            self._by_pair.pop(pair, None)
        self.generation += 1
        self._journal(key)
        if self._deferred is not None:
            self._deferred.append(sa)
        else:
            sa.wipe()
        return sa


__all__ = ["SAD", "SA_PROTOCOLS", "SADError", "SAKey", "describe"]


def _first(item: tuple[int, SAKey]) -> int:
    return item[0]
