"""Operations of a parsed setkey script, and applying them all or nothing.

The parser (:mod:`ipsecd.setkey.parser`) turns a whole script into a
:class:`Script` - a list of operations - before anything is applied, so a
bad statement anywhere rejects the script.  :func:`apply` then runs the
operations on *copies* of the SPD and SAD (:meth:`ipsecd.spd.SPD.copy`,
:meth:`ipsecd.sad.SAD.copy`) and swaps the copies in only when every
operation succeeded: an ``add`` of an SPI that exists, in the middle of a
script, leaves both databases exactly as they were.  SAs removed by a
successful script are wiped at commit; SAs a failed script had added are
wiped at once.

RFC mode ``fwd`` twins
    setkey on Linux runs in "RFC mode" by default (``-r``; setkey(8), "RFC
    vs Linux kernel semantics"): for every ``in`` policy it installs the
    same policy for ``fwd``, with ``unique`` levels turned into
    ``require``, so traffic decapsulated on a gateway and forwarded is
    checked like traffic for the gateway itself.  :func:`apply` does the
    same unless ``rfc_mode=False`` (setkey's ``-k``).  A twin yields to an
    explicit ``fwd`` policy for the same selector (it is neither made over
    one nor an error when one is added later), and ``spddelete ... -P in``
    removes the twin it made.

``no-act`` checking (``setkey -n``)
    :func:`check` applies a script to an empty SPD and SAD with
    ``missing_ok=True``: without the daemon the real contents are unknown,
    so deleting an SA the script did not add is not an error, but adding
    one SPI twice is.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ipsecd.iana import IpProto
from ipsecd.sa import IPAddress, SAState, SecurityAssociation
from ipsecd.sad import SAD, SADError, describe
from ipsecd.setkey import dump
from ipsecd.setkey.errors import Location, ScriptWarning, SetkeyError
from ipsecd.spd import SPD, Direction, Level, Policy, Selector, SPDError


@dataclass(frozen=True, slots=True)
class AddSA:
    """``add`` (or ``update`` when ``update`` is true) of one SA."""

    loc: Location
    sa: SecurityAssociation
    update: bool = False

    @property
    def command(self) -> str:
        return "update" if self.update else "add"


@dataclass(frozen=True, slots=True)
class GetSA:
    """``get src dst protocol spi``: print one SA."""

    loc: Location
    src: IPAddress
    dst: IPAddress
    protocol: IpProto
    spi: int
    command = "get"


@dataclass(frozen=True, slots=True)
class DeleteSA:
    """``delete src dst protocol spi``."""

    loc: Location
    src: IPAddress
    dst: IPAddress
    protocol: IpProto
    spi: int
    command = "delete"


@dataclass(frozen=True, slots=True)
class DeleteAllSA:
    """``deleteall src dst protocol``: every SA between two addresses."""

    loc: Location
    src: IPAddress
    dst: IPAddress
    protocol: IpProto
    command = "deleteall"


@dataclass(frozen=True, slots=True)
class FlushSA:
    """``flush [protocol]``."""

    loc: Location
    protocol: IpProto | None = None
    command = "flush"


@dataclass(frozen=True, slots=True)
class DumpSA:
    """``dump [protocol]``: print the SAD."""

    loc: Location
    protocol: IpProto | None = None
    command = "dump"


@dataclass(frozen=True, slots=True)
class SpdAdd:
    """``spdadd`` (or ``spdupdate`` when ``update`` is true)."""

    loc: Location
    policy: Policy
    update: bool = False

    @property
    def command(self) -> str:
        return "spdupdate" if self.update else "spdadd"


@dataclass(frozen=True, slots=True)
class SpdDelete:
    """``spddelete src dst upperspec -P direction``."""

    loc: Location
    selector: Selector
    direction: Direction
    command = "spddelete"


@dataclass(frozen=True, slots=True)
class SpdFlush:
    """``spdflush``."""

    loc: Location
    command = "spdflush"


@dataclass(frozen=True, slots=True)
class SpdDump:
    """``spddump``: print the SPD."""

    loc: Location
    command = "spddump"


Op = (
    AddSA
    | GetSA
    | DeleteSA
    | DeleteAllSA
    | FlushSA
    | DumpSA
    | SpdAdd
    | SpdDelete
    | SpdFlush
    | SpdDump
)


@dataclass(slots=True)
class Script:
    """A parsed script: its operations in order, and the warnings parsing gave."""

    filename: str
    ops: list[Op] = field(default_factory=list)
    warnings: list[ScriptWarning] = field(default_factory=list)

    def wipe(self) -> None:
        """Zero the keys the script's ``add`` operations hold (once they are applied or dropped)."""
        for op in self.ops:
            if isinstance(op, AddSA):
                op.sa.wipe()

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


@dataclass(slots=True)
class ApplyResult:
    """What applying a script did."""

    changes: int = 0  # operations that changed the SPD or SAD
    output: list[str] = field(default_factory=list)  # text from get / dump / spddump, in order


@dataclass(slots=True)
class _Txn:
    """One application of a script: the working copies and the options."""

    spd: SPD
    sad: SAD
    rfc_mode: bool
    missing_ok: bool
    now: float
    show_keys: bool
    pid: int | None
    result: ApplyResult = field(default_factory=ApplyResult)
    added: list[SecurityAssociation] = field(default_factory=list)


def apply(
    ops: Script | Sequence[Op],
    spd: SPD,
    sad: SAD,
    *,
    rfc_mode: bool = True,
    missing_ok: bool = False,
    now: float | None = None,
    show_keys: bool = False,
    pid: int | None = None,
) -> ApplyResult:
    """Apply ``ops`` to ``spd`` and ``sad``, all or nothing.

    Raises :class:`SetkeyError` located at the failing statement; the
    databases are then unchanged.  ``show_keys`` only affects the text of
    ``get``/``dump`` statements (keys are never shown by default).  The
    SAs installed are copies of the ones in ``ops`` (keys copied too), so
    the caller may :meth:`Script.wipe` the script afterwards.
    """
    op_list: Iterable[Op] = ops.ops if isinstance(ops, Script) else ops
    txn = _Txn(
        spd.copy(),
        sad.copy(),
        rfc_mode,
        missing_ok,
        time.time() if now is None else now,
        show_keys,
        pid,
    )
    try:
        for op in op_list:
            try:
                txn.result.changes += _apply_one(op, txn)
            except (SADError, SPDError, ValueError) as exc:
                # ValueError: a value the model refused that the parser let through.
                raise SetkeyError(op.loc, f"{op.command}: {exc}") from None
    except BaseException:
        for sa in txn.added:  # never installed: their key copies go now
            sa.wipe()
        raise
    sad.replace_with(txn.sad)
    spd.replace_with(txn.spd)
    return txn.result


def check(ops: Script | Sequence[Op], *, rfc_mode: bool = True) -> ApplyResult:
    """Check a script as ``setkey -n`` does: apply it to an empty SPD/SAD, missing entries allowed."""
    sad = SAD()
    try:
        return apply(ops, SPD(), sad, rfc_mode=rfc_mode, missing_ok=True, now=0.0)
    finally:
        sad.flush()  # wipe the key copies the check installed


def _copy_sa(sa: SecurityAssociation) -> SecurityAssociation:
    """An independent copy: keys, lifetimes, encapsulation and extras are not shared."""
    return sa.replace(
        hard=copy.copy(sa.hard),
        soft=copy.copy(sa.soft),
        encap=copy.copy(sa.encap),
        extra=dict(sa.extra),
        state=SAState.MATURE,
    )


def _fwd_twin(policy: Policy) -> Policy:
    # ipsec-tools setkey (setkeymsg_spdaddr, HAVE_POLICY_FWD): the fwd copy of
    # an in policy has its unique level turned into require, without reqid.
    requests = tuple(
        dataclasses.replace(r, level=Level.REQUIRE, reqid=0) if r.level is Level.UNIQUE else r
        for r in policy.requests
    )
    return Policy(policy.selector, Direction.FWD, policy.action, requests, policy.priority)


def _install_policy(txn: _Txn, policy: Policy, update: bool) -> None:
    spd = txn.spd
    existing = spd.get(policy.selector, policy.direction)
    if existing is not None and existing.auto:
        # An explicit fwd policy takes the place of the twin RFC mode made.
        spd.update(policy, now=txn.now)
    elif update:
        spd.update(policy, now=txn.now)
    else:
        spd.add(policy, now=txn.now)
    if txn.rfc_mode and policy.direction is Direction.IN:
        twin = spd.get(policy.selector, Direction.FWD)
        if twin is None or twin.auto:
            spd.update(_fwd_twin(policy), now=txn.now, auto=True)


def _apply_one(op: Op, txn: _Txn) -> int:
    """Apply one operation to the working copies; returns 1 if it changed something."""
    spd, sad = txn.spd, txn.sad
    if isinstance(op, AddSA):
        sa = _copy_sa(op.sa)
        txn.added.append(sa)
        if op.update and not (txn.missing_ok and sa.key not in sad):
            sad.update(sa, now=txn.now)
        else:
            sad.add(sa, now=txn.now)
        return 1
    if isinstance(op, GetSA):
        found = sad.get(op.spi, op.protocol, op.dst)
        if found is None or found.src != op.src:
            if txn.missing_ok:
                return 0
            raise SADError(f"no {describe(op.spi, op.protocol, op.dst)} from {op.src}")
        txn.result.output.append(
            dump.format_sa(
                found, created=sad.created(found), now=txn.now, show_keys=txn.show_keys, pid=txn.pid
            )
        )
        return 0
    if isinstance(op, DeleteSA):
        if txn.missing_ok and sad.get(op.spi, op.protocol, op.dst) is None:
            return 0
        sad.delete(op.spi, op.protocol, op.dst, op.src)
        return 1
    if isinstance(op, DeleteAllSA):
        return 1 if sad.deleteall(op.src, op.dst, op.protocol) else 0
    if isinstance(op, FlushSA):
        sad.flush(op.protocol)
        return 1
    if isinstance(op, DumpSA):
        txn.result.output.append(
            dump.dump_sad(sad, op.protocol, now=txn.now, show_keys=txn.show_keys, pid=txn.pid)
        )
        return 0
    if isinstance(op, SpdAdd):
        _install_policy(txn, op.policy, op.update)
        return 1
    if isinstance(op, SpdDelete):
        if txn.missing_ok and spd.get(op.selector, op.direction) is None:
            return 0
        spd.delete(op.selector, op.direction)
        if txn.rfc_mode and op.direction is Direction.IN:
            twin = spd.get(op.selector, Direction.FWD)
            if twin is not None and twin.auto:
                spd.delete(op.selector, Direction.FWD)
        return 1
    if isinstance(op, SpdFlush):
        spd.flush()
        return 1
    if isinstance(op, SpdDump):
        txn.result.output.append(dump.dump_spd(spd, pid=txn.pid))
        return 0
    raise TypeError(f"not a setkey operation: {op!r}")


__all__ = [
    "AddSA",
    "ApplyResult",
    "DeleteAllSA",
    "DeleteSA",
    "DumpSA",
    "FlushSA",
    "GetSA",
    "Op",
    "Script",
    "SpdAdd",
    "SpdDelete",
    "SpdDump",
    "SpdFlush",
    "apply",
    "check",
]
