"""The Security Policy Database (RFC 4301 §4.4.1).

A :class:`Policy` says what to do with traffic that matches a
:class:`Selector` in one :class:`Direction`: ``discard`` it, let it pass
without IPsec (``none``), or protect it (``ipsec``) with an ordered list of
:class:`IpsecRequest` - setkey's ``protocol/mode/src-dst/level`` rules.
Policies are immutable values; the :class:`SPD` orders them and answers
:meth:`SPD.lookup`.

Selectors (RFC 4301 §4.4.1.1)
    Source and destination address prefixes, the upper-layer protocol
    (``None`` is setkey's ``any``) and source / destination ports where ``0``
    is setkey's ``[any]``.  For ICMP and ICMPv6 the two "ports" are the
    message type and code, as RFC 4301 §4.4.1.1 and setkey's
    ``icmp6 135,0`` have it; ``0`` is a wildcard there too (setkey(8): "the
    kernel can not distinguish a wildcard from an ICMPv6 type of zero").
    Host bits below the prefix length are cleared when the selector is
    built, so ``192.0.2.7/24`` is stored and shown as ``192.0.2.0/24``.

Lookup order
    The SPD is an ordered list per direction (RFC 4301 §4.4.1: "the SPD
    MUST be ordered", first match wins).  The order is the one Linux gives
    policies installed with setkey(8), so a script behaves here as it did on
    a Linux host:

    1. higher ``priority`` first.  ``priority`` is setkey's signed
       ``-P out prio N`` offset (``prio high + N`` and ``prio low - N`` are
       converted by the parser); ``0`` is ``prio def``, the default;
    2. among equal priorities, the policy installed first wins.
       ``spdupdate`` replaces a policy in place and keeps its position.

    We deliberately do *not* sort by prefix length.  Longest-prefix order
    looks convenient but silently overrides the operator's order: a
    ``spdadd 0.0.0.0/0[500] 0.0.0.0/0[500] udp -P out none`` bypass for IKE
    added before a ``/32`` host-to-host ``ipsec`` policy would lose to it
    and IKE would be sent into ESP.  An operator who wants an exception
    ahead of a broader policy installs it first or gives it a ``prio``.

Speed
    Each policy is compiled to integers (network, mask, protocol, ports)
    and kept in one list per (direction, address family), already in lookup
    order, so :meth:`SPD.lookup` is a linear scan of integer compares with
    no allocation.  The datapath caches results per flow and watches
    :attr:`SPD.generation`, which grows on every change, to invalidate its
    cache.  A change finds its place in the list by bisection and moves
    the tail (O(n) memmove), so loading n policies is not quadratic in
    Python work.

Change journal
    The SPD remembers, for every policy key (selector, direction) changed
    since the control process last took the journal (:meth:`SPD.take_changes`),
    the entry it had before (None: none).  The control process brings its
    routes, the workers' policy table and the nft filter in line from it, in
    time proportional to the change.  Copies carry the journal; a commit
    takes the copy's.  Past :data:`JOURNAL_LIMIT` keys it gives up (``None``:
    anything may have changed).

Only the control process changes the SPD.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ipsecd.iana import IpProto
from ipsecd.sa import IPAddress, Mode

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: setkey's ``prio`` bases (libipsec ``PRIORITY_LOW/DEF/HIGH``) expressed as
#: offsets in our "higher goes first" convention.
PRIORITY_HIGH = 1 << 30
PRIORITY_DEFAULT = 0
PRIORITY_LOW = -(1 << 30)
#: setkey(8): the offset is "an integer in the range from -2147483647 to
#: 2147483648" (the kernel keeps 2**31 - priority in a u32).
PRIORITY_MIN = -(2**31) + 1
PRIORITY_MAX = 2**31

#: Changed policies the journal holds before it reports "everything" (None).
JOURNAL_LIMIT = 4096

#: setkey(8): "number must be between 1 and 32767" for ``unique:number``.
MAX_MANUAL_REQID = 32767


class SPDError(Exception):
    """An SPD operation that cannot be done (duplicate or missing policy)."""


class Direction(enum.Enum):
    """Which traffic a policy applies to.

    ``FWD`` is Linux's direction for packets forwarded through the gateway
    after inbound processing; setkey in its default RFC mode installs a
    ``fwd`` twin for every ``in`` policy (see :mod:`ipsecd.setkey.ops`).
    """

    IN = "in"
    OUT = "out"
    FWD = "fwd"


class Action(enum.Enum):
    """RFC 4301 §4.4.1: DISCARD, BYPASS (setkey's ``none``) or PROTECT (``ipsec``)."""

    DISCARD = "discard"
    NONE = "none"
    IPSEC = "ipsec"


class Level(enum.Enum):
    """How strictly a request wants an SA (setkey(8), ``level``)."""

    DEFAULT = "default"  # the system-wide default; we treat it as ``require``
    USE = "use"  # use an SA if there is one, else send in clear
    REQUIRE = "require"  # an SA is required
    UNIQUE = "unique"  # required, and bound to the SA with this policy's reqid


@dataclass(frozen=True, slots=True)
class IpsecRequest:
    """One ``protocol/mode/src-dst/level`` rule of an ``ipsec`` policy.

    ``src``/``dst`` are the SA end points: required for tunnel mode, and
    optional for transport mode (then the packet's own addresses are used).
    ``sport``/``dport`` are the NAT-T ports written ``addr[4500]``; 0 when
    not given.  ``reqid`` binds the request to SAs added with ``-u reqid``;
    it is only non-zero for ``unique:N``.
    """

    protocol: IpProto  # ESP, AH or IPCOMP
    mode: Mode  # TRANSPORT or TUNNEL
    src: IPAddress | None = None
    dst: IPAddress | None = None
    level: Level = Level.DEFAULT
    reqid: int = 0
    sport: int = 0
    dport: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in (IpProto.ESP, IpProto.AH, IpProto.IPCOMP):
            raise ValueError(
                f"an IPsec request protocol must be esp, ah or ipcomp, not {self.protocol!r}"
            )
        if self.mode not in (Mode.TRANSPORT, Mode.TUNNEL):
            raise ValueError("an IPsec request mode must be transport or tunnel")
        if (self.src is None) != (self.dst is None):
            raise ValueError("give both end points of the SA or neither")
        if self.mode is Mode.TUNNEL and self.src is None:
            raise ValueError("tunnel mode needs the end points of the SA (src-dst)")
        if self.src is not None and self.dst is not None and self.src.version != self.dst.version:
            raise ValueError("the end points of the SA are of different address families")
        if self.reqid and self.level is not Level.UNIQUE:
            raise ValueError("a reqid is only given with level unique")
        if not 0 <= self.reqid <= 0xFFFFFFFF:
            raise ValueError("reqid out of range")

    @property
    def required(self) -> bool:
        """False only for ``use``: the packet may then go out in clear without an SA."""
        return self.level is not Level.USE


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic selector: address prefixes, upper-layer protocol, ports.

    ``proto`` ``None`` means any protocol; ports ``0`` mean any port (for
    ICMP/ICMPv6 they hold type and code).
    """

    src: IPNetwork
    dst: IPNetwork
    proto: int | None = None
    sport: int = 0
    dport: int = 0
    # A selector keys the SPD (with a direction) and is hashed at every SPD operation, each
    # time two ipaddress networks in Python: hashed once, when made.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("source and destination prefixes are of different address families")
        if self.proto is not None and not 0 <= self.proto <= 255:
            raise ValueError(f"upper-layer protocol {self.proto} out of range 0..255")
        if not (0 <= self.sport <= 0xFFFF and 0 <= self.dport <= 0xFFFF):
            raise ValueError("port out of range 0..65535")
        object.__setattr__(self, "_hash",
                           hash((self.src, self.dst, self.proto, self.sport, self.dport)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def make(
        cls,
        src: str | IPNetwork,
        dst: str | IPNetwork,
        proto: int | None = None,
        sport: int = 0,
        dport: int = 0,
    ) -> Selector:
        """A selector from prefixes written as strings; host bits are cleared."""
        return cls(
            ipaddress.ip_network(src, strict=False),
            ipaddress.ip_network(dst, strict=False),
            proto,
            sport,
            dport,
        )

    @property
    def version(self) -> int:
        return self.src.version

    def matches(
        self, src: IPAddress, dst: IPAddress, proto: int, sport: int = 0, dport: int = 0
    ) -> bool:
        """True when a packet with these header fields is selected (slow path, for tests)."""
        return (
            src.version == self.version
            and src in self.src
            and dst in self.dst
            and (self.proto is None or self.proto == proto)
            and (not self.sport or self.sport == sport)
            and (not self.dport or self.dport == dport)
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """One SPD entry: selector, direction, action and (for ``ipsec``) requests."""

    selector: Selector
    direction: Direction
    action: Action
    requests: tuple[IpsecRequest, ...] = ()
    priority: int = PRIORITY_DEFAULT

    def __post_init__(self) -> None:
        if self.action is Action.IPSEC and not self.requests:
            raise ValueError(
                "an ipsec policy needs at least one protocol/mode/src-dst/level request"
            )
        if self.action is not Action.IPSEC and self.requests:
            raise ValueError(f"a {self.action.value} policy takes no requests")
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise ValueError(
                f"priority {self.priority} out of range {PRIORITY_MIN}..{PRIORITY_MAX}"
            )

    @property
    def key(self) -> tuple[Selector, Direction]:
        """What identifies a policy for spdadd / spdupdate / spddelete."""
        return (self.selector, self.direction)


@dataclass(frozen=True, slots=True)
class SPDEntry:
    """A policy as installed: with its id, install time and install order."""

    policy: Policy
    spid: int
    created: float
    order: int  # install order among equal priorities; kept by spdupdate
    auto: bool = False  # a fwd twin setkey's RFC mode made for an ``in`` policy


@dataclass(slots=True)
class _Compiled:
    """A policy reduced to integers for the lookup loop."""

    snet: int
    smask: int
    dnet: int
    dmask: int
    proto: int  # -1 for any
    sport: int
    dport: int
    policy: Policy


def _mask(net: IPNetwork) -> tuple[int, int]:
    return int(net.network_address), int(net.netmask)


def _compile(policy: Policy) -> _Compiled:
    sel = policy.selector
    snet, smask = _mask(sel.src)
    dnet, dmask = _mask(sel.dst)
    proto = -1 if sel.proto is None else sel.proto
    return _Compiled(snet, smask, dnet, dmask, proto, sel.sport, sel.dport, policy)


@dataclass(slots=True)
class _Bucket:
    """The policies of one (direction, family) in lookup order, with their sort keys."""

    keys: list[tuple[int, int]] = field(default_factory=list)
    items: list[_Compiled] = field(default_factory=list)

    def insert(self, entry: SPDEntry) -> None:
        key = _sort_key(entry)
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.items.insert(i, _compile(entry.policy))

    def remove(self, entry: SPDEntry) -> _Compiled:
        key = _sort_key(entry)
        i = bisect.bisect_left(self.keys, key)
        if i == len(self.keys) or self.keys[i] != key:  # pragma: no cover - internal invariant
            raise RuntimeError("SPD index out of step with its entries")
        del self.keys[i]
        item = self.items.pop(i)
        return item

    def restore(self, entry: SPDEntry, item: _Compiled) -> None:
        """Put back an item :meth:`remove` returned (the same object: the publisher diffs
        items by identity)."""
        key = _sort_key(entry)
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.items.insert(i, item)

    def copy(self) -> _Bucket:
        return _Bucket(list(self.keys), list(self.items))


@dataclass(slots=True)
class _Undo:
    """What :meth:`SPD.rollback` restores."""

    generation: int
    next_spid: int
    next_order: int
    changed: dict[tuple[Selector, Direction], SPDEntry | None] | None  # the journal object
    journaled: int  # its length then: keys past it were added since
    buckets: set[tuple[Direction, int]]  # the lookup lists there were
    # (key, the entry before the change or None, its lookup item), in order
    steps: list[tuple[tuple[Selector, Direction], SPDEntry | None, _Compiled | None]]


@dataclass(slots=True)
class SPD:
    """The ordered policy database. Not thread-safe: one writer (the control process)."""

    generation: int = 0
    _entries: dict[tuple[Selector, Direction], SPDEntry] = field(default_factory=dict)
    _index: dict[tuple[Direction, int], _Bucket] = field(default_factory=dict)
    _next_spid: int = 1
    _next_order: int = 0
    # key -> the entry before the first change since take_changes(); None: too many.
    _changed: dict[tuple[Selector, Direction], SPDEntry | None] | None = field(
        default_factory=dict, compare=False, repr=False)
    # Inside a savepoint: what undoes the changes since (savepoint, rollback).
    _undo: _Undo | None = field(default=None, compare=False, repr=False)

    # -- changes ---------------------------------------------------------------

    def _journal(self, key: tuple[Selector, Direction], old: SPDEntry | None) -> None:
        changed = self._changed
        if changed is not None:
            changed.setdefault(key, old)  # the entry before the *first* change is kept
            if len(changed) > JOURNAL_LIMIT:
                self._changed = None

    def add(self, policy: Policy, *, now: float | None = None, auto: bool = False) -> SPDEntry:
        """Install a new policy; :class:`SPDError` if one with its selector and direction exists."""
        key = policy.key  # a new tuple at each use: made once (IKE adds three per child)
        if key in self._entries:
            raise SPDError(
                f"{_a(policy.direction)} policy for {_describe(policy.selector)} already exists"
            )
        entry = SPDEntry(policy, self._next_spid, _now(now), self._next_order, auto)
        self._next_spid += 1
        self._next_order += 1
        self._journal(key, None)
        self._entries[key] = entry
        self._bucket(policy).insert(entry)
        self.generation += 1
        if self._undo is not None:
            self._undo.steps.append((key, None, None))
        return entry

    def update(self, policy: Policy, *, now: float | None = None, auto: bool = False) -> SPDEntry:
        """Replace the policy with the same selector and direction in place, or add it.

        As PF_KEY's SPDUPDATE: an existing policy keeps its id and its
        position among policies of equal priority.
        """
        key = policy.key
        old = self._entries.get(key)
        if old is None:
            return self.add(policy, now=now, auto=auto)
        entry = SPDEntry(policy, old.spid, _now(now), old.order, auto)
        bucket = self._bucket(policy)
        item = bucket.remove(old)
        bucket.insert(entry)
        if self._undo is not None:
            self._undo.steps.append((key, old, item))
        self._journal(key, old)
        self._entries[key] = entry
        self.generation += 1
        return entry

    def delete(self, selector: Selector, direction: Direction) -> Policy:
        """Remove and return the policy for ``selector`` in ``direction``; :class:`SPDError` if none."""
        entry = self._entries.pop((selector, direction), None)
        if entry is None:
            raise SPDError(f"no {direction.value} policy for {_describe(selector)}")
        self._journal((selector, direction), entry)
        item = self._bucket(entry.policy).remove(entry)
        self.generation += 1
        if self._undo is not None:
            self._undo.steps.append(((selector, direction), entry, item))
        return entry.policy

    def flush(self) -> int:
        """Remove every policy; returns how many there were."""
        self._no_savepoint()
        count = len(self._entries)
        if self._changed is not None and count + len(self._changed) > JOURNAL_LIMIT:
            self._changed = None
        for key, entry in self._entries.items():
            self._journal(key, entry)
        self._entries = {}
        self._index.clear()
        self.generation += 1
        return count

    # -- queries ---------------------------------------------------------------

    def get(self, selector: Selector, direction: Direction) -> SPDEntry | None:
        return self._entries.get((selector, direction))

    def lookup(
        self,
        direction: Direction,
        src: IPAddress,
        dst: IPAddress,
        proto: int,
        sport: int = 0,
        dport: int = 0,
    ) -> Policy | None:
        """The first policy (in lookup order, see the module docs) that selects this packet.

        ``sport``/``dport`` are 0 for protocols without ports; for ICMP and
        ICMPv6 pass the message type and code.
        """
        bucket = self._index.get((direction, src.version))
        if bucket is None:
            return None
        s = int(src)
        d = int(dst)
        for c in bucket.items:
            if (
                (s & c.smask) == c.snet
                and (d & c.dmask) == c.dnet
                and (c.proto < 0 or c.proto == proto)
                and (not c.sport or c.sport == sport)
                and (not c.dport or c.dport == dport)
            ):
                return c.policy
        return None

    def changes(self) -> dict[tuple[Selector, Direction], SPDEntry | None] | None:
        """Policy key -> its entry before the first change since :meth:`take_changes` (None:
        there was none), for every key added, updated or deleted since (the present entry is
        :meth:`get`'s); None when there were more than :data:`JOURNAL_LIMIT`: anything may
        have changed.  Not to be changed by the caller."""
        return self._changed

    def take_changes(self) -> dict[tuple[Selector, Direction], SPDEntry | None] | None:
        """:meth:`changes`, and start a new journal."""
        self._no_savepoint()
        out = self._changed
        self._changed = {}
        return out

    def entries(self, direction: Direction | None = None) -> list[SPDEntry]:
        """Installed policies in dump order: by direction (in, out, fwd), then lookup order."""
        dirs = list(Direction) if direction is None else [direction]
        out: list[SPDEntry] = []
        for d in dirs:
            out.extend(
                sorted(
                    (e for e in self._entries.values() if e.policy.direction is d), key=_sort_key
                )
            )
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Policy]:
        return (e.policy for e in self.entries())

    def index_view(self) -> dict[tuple[Direction, int], tuple[list[tuple[int, int]], list[Any]]]:
        """The lookup lists, read-only, per (direction, IP version): (sort keys, items), in
        lookup order; each item has the ``policy``.  A sort key is unique within its list,
        and an item is a new object whenever its policy is added or updated (copies share
        the items of policies they did not change): what the policy publisher
        (:mod:`workers.policy`) diffs by identity to send the workers only the changes."""
        return {k: (b.keys, b.items) for k, b in self._index.items()}

    def copy(self) -> SPD:
        """An independent SPD with the same policies (policies are immutable, so shared)."""
        self._no_savepoint()
        new = SPD(
            generation=self.generation, _next_spid=self._next_spid, _next_order=self._next_order,
            _changed=None if self._changed is None else dict(self._changed),
        )
        new._entries = dict(self._entries)
        new._index = {k: v.copy() for k, v in self._index.items()}
        return new

    def replace_with(self, other: SPD) -> None:
        """Take over ``other``'s contents (commit of a transaction built on :meth:`copy`)."""
        self._no_savepoint()
        self._entries = other._entries
        self._index = other._index
        self._changed = other._changed
        self._next_spid = other._next_spid
        self._next_order = other._next_order
        self.generation = max(self.generation, other.generation)

    def savepoint(self) -> None:
        """Start a transaction in place (add, update, delete): :meth:`rollback` undoes its
        changes, :meth:`release` keeps them.  Unlike :meth:`copy` it costs what changes,
        not the size of the SPD (IKE installs a few policies at a time into thousands)."""
        if self._undo is not None:
            raise SPDError("a savepoint is already open")
        changed = self._changed
        self._undo = _Undo(self.generation, self._next_spid, self._next_order, changed,
                           0 if changed is None else len(changed), set(self._index), [])

    def rollback(self) -> None:
        """Undo every change since :meth:`savepoint`: entries, lookup lists (the same item
        objects), counters and journal are as they were then."""
        undo, self._undo = self._undo, None
        if undo is None:
            raise SPDError("no savepoint to roll back")
        for key, old, item in reversed(undo.steps):
            now = self._entries.pop(key, None)
            if now is not None:
                self._bucket(now.policy).remove(now)
            if old is not None:
                assert item is not None
                self._entries[key] = old
                self._bucket(old.policy).restore(old, item)
        for bkey in [k for k, b in self._index.items() if not b.keys and k not in undo.buckets]:
            del self._index[bkey]  # made for an addition taken back
        self.generation, self._next_spid, self._next_order = (
            undo.generation, undo.next_spid, undo.next_order)
        changed = self._changed = undo.changed
        if changed is not None:
            for key in list(itertools.islice(changed, undo.journaled, None)):
                del changed[key]

    def release(self) -> None:
        """Keep the changes since :meth:`savepoint`."""
        if self._undo is None:
            raise SPDError("no savepoint to release")
        self._undo = None

    def _no_savepoint(self) -> None:
        if self._undo is not None:  # they would share or drop what a rollback restores
            raise SPDError("not inside a savepoint")

    def _bucket(self, policy: Policy) -> _Bucket:
        key = (policy.direction, policy.selector.version)
        bucket = self._index.get(key)
        if bucket is None:
            bucket = self._index[key] = _Bucket()
        return bucket


def _sort_key(entry: SPDEntry) -> tuple[int, int]:
    return (-entry.policy.priority, entry.order)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _a(direction: Direction) -> str:
    return ("an " if direction is not Direction.FWD else "a ") + direction.value


def _describe(sel: Selector) -> str:
    proto = "any" if sel.proto is None else str(sel.proto)
    return f"{sel.src}[{sel.sport or 'any'}] {sel.dst}[{sel.dport or 'any'}] {proto}"


__all__ = [
    "MAX_MANUAL_REQID",
    "PRIORITY_DEFAULT",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "SPD",
    "Action",
    "Direction",
    "IpsecRequest",
    "Level",
    "Policy",
    "SPDEntry",
    "SPDError",
    "Selector",
]
