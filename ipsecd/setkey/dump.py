"""``setkey -D`` and ``setkey -DP`` output.

The layout is the one ipsec-tools' libipsec prints (``pfkey_sadump`` and
``pfkey_spdump``), so people and scripts that read setkey dumps can read
ours.  What we print differently, and why:

* **Keys are never printed by default.**  setkey prints the key bytes in
  hex; we print their length, ``E: aes-gcm-16  <288-bit key>``, unless the
  caller passes ``show_keys=True`` (``ipsecd setkey -D --show-keys``).  A
  dump is pasted into tickets and chats; keys must not go with it.
* ``replay=`` is in setkey's ``-r`` unit (bytes of bitmap, window/8),
  so that what ``-r 4`` set reads back as ``replay=4``.
* The ``-f`` options and ipsecd's extensions (ESN) are listed on an
  ``extensions:`` line after ``seq=``, only when there are any.  The
  ``flags=`` word carries KAME's bits for the padding and raw-CPI options.
* The per-SA counters (``current:`` bytes, ``allocated:``) are 0: the
  control process does not see the workers' traffic counters (the metrics
  exporter does).  ``allocated`` hard/soft hold the packet limits
  (``-ph``/``-ps``), where Linux puts them too.
* No trailing blanks at the end of the first line.
* The SPD dump lists ``in`` policies, then ``out``, then ``fwd``, each in
  lookup order.  Ports of SA end points in requests are shown when set.

Times are printed as ``ctime()`` without the weekday, as setkey does, in
local time; tests pass ``localtime=time.gmtime`` for stable output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ipsecd.iana import IpProto
from ipsecd.sa import SecurityAssociation
from ipsecd.sad import SAD
from ipsecd.spd import PRIORITY_MAX, SPD, Action, IpsecRequest, Policy, Selector, SPDEntry
from ipsecd.transforms import COMP_ALGOS, ENC_ALGOS, INTEG_ALGOS

LocalTime = Callable[[float], time.struct_time]

_ENC_NAMES = {a.id: a.name for a in ENC_ALGOS}
_INTEG_NAMES = {a.id: a.name for a in INTEG_ALGOS}
_COMP_NAMES = {a.id: a.name for a in COMP_ALGOS}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# KAME's sadb_sa_flags bits (net/pfkeyv2.h SADB_X_EXT_*) for the options we keep.
_FLAG_RAWCPI = 0x0080
_FLAG_PRAND = 0x0100
_FLAG_PZERO = 0x0200

#: Upper-layer protocol names as /etc/protocols spells them (setkey prints
#: ``getprotobynumber()``); numbers without a name print as numbers.
PROTOCOL_NAMES: dict[int, str] = {
    1: "icmp",
    2: "igmp",
    4: "ipencap",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    89: "ospf",
    103: "pim",
    108: "ipcomp",
    132: "sctp",
    136: "udplite",
}
_ICMP = (1, 58)


def _stime(t: float, localtime: LocalTime) -> str:
    """setkey's ``str_time``: ``ctime()`` without the weekday, 20 blanks for "never"."""
    if not t:
        return " " * 20
    tm = localtime(t)
    return f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}"


def _key(name: str, key: bytearray, show_keys: bool) -> str:
    if show_keys:
        # ipsec_hexdump: groups of four bytes, each preceded by a blank.
        text = "".join((" " if i % 4 == 0 else "") + f"{b:02x}" for i, b in enumerate(key))
        return f"{name} {text}"
    return f"{name}  <{len(key) * 8}-bit key>"


def _flags(sa: SecurityAssociation) -> int:
    flags = 0
    if sa.extra.get("rawcpi"):
        flags |= _FLAG_RAWCPI
    pad = sa.extra.get("pad")
    if pad == "random-pad":
        flags |= _FLAG_PRAND
    elif pad == "zero-pad":
        flags |= _FLAG_PZERO
    return flags


def _extensions(sa: SecurityAssociation) -> list[str]:
    words: list[str] = []
    if sa.esn:
        words.append("esn")
    pad = sa.extra.get("pad")
    if isinstance(pad, str):
        words.append(pad)
    if sa.extra.get("nocyclic_seq"):
        words.append("nocyclic-seq")
    return words


def _replay_bytes(window: int) -> int:
    return (window + 7) // 8


def format_sa(
    sa: SecurityAssociation,
    *,
    created: float,
    now: float | None = None,
    show_keys: bool = False,
    seq: int = 0,
    pid: int | None = None,
    localtime: LocalTime = time.localtime,
) -> str:
    """One SA as ``setkey -D`` prints it (ends with a newline)."""
    now = time.time() if now is None else now
    pid = os.getpid() if pid is None else pid
    natt = sa.encap is not None and sa.protocol == IpProto.ESP
    src, dst = str(sa.src), str(sa.dst)
    if natt and sa.encap is not None:
        src, dst = f"{src}[{sa.encap.sport}]", f"{dst}[{sa.encap.dport}]"
    satype = "esp-udp" if natt else sa.protocol.name.lower()
    lines = [
        f"{src} {dst}",
        f"\t{satype} mode={sa.mode.value} spi={sa.spi}(0x{sa.spi:08x}) reqid={sa.reqid}(0x{sa.reqid:08x})",
    ]
    oa = sa.extra.get("nat_oa")
    if natt and oa is not None:
        lines.append(f"\tNAT OA={oa}")
    if sa.protocol == IpProto.IPCOMP and sa.comp is not None:
        lines.append(f"\tC: {_COMP_NAMES.get(sa.comp, str(int(sa.comp)))}")
    elif sa.protocol == IpProto.ESP and sa.enc is not None:
        name = _ENC_NAMES.get(sa.enc, str(int(sa.enc)))
        lines.append(f"\tE: {_key(name, sa.enc_key, show_keys)}" if sa.enc_key else f"\tE: {name}")
    if sa.auth_key:
        name = _INTEG_NAMES.get(sa.auth, str(int(sa.auth)))
        lines.append(f"\tA: {_key(name, sa.auth_key, show_keys)}")
    lines.append(
        f"\tseq=0x{sa.seq & 0xFFFFFFFF:08x} replay={_replay_bytes(sa.replay_window)} "
        f"flags=0x{_flags(sa):08x} state={sa.state.value}"
    )
    ext = _extensions(sa)
    if ext:
        lines.append("\textensions: " + " ".join(ext))
    hard, soft = sa.hard, sa.soft
    diff = int(now - created) if created else 0
    lines += [
        f"\tcreated: {_stime(created, localtime)}\tcurrent: {_stime(now, localtime)}",
        f"\tdiff: {diff}(s)\thard: {hard.add_seconds}(s)\tsoft: {soft.add_seconds}(s)",
        f"\tlast: {_stime(0, localtime)}\thard: {hard.use_seconds}(s)\tsoft: {soft.use_seconds}(s)",
        f"\tcurrent: 0(bytes)\thard: {hard.bytes}(bytes)\tsoft: {soft.bytes}(bytes)",
        f"\tallocated: 0\thard: {hard.packets}\tsoft: {soft.packets}",
        f"\tsadb_seq={seq} pid={pid} refcnt=0",
    ]
    return "\n".join(lines) + "\n"


def dump_sad(
    sad: SAD,
    protocol: IpProto | None = None,
    *,
    now: float | None = None,
    show_keys: bool = False,
    pid: int | None = None,
    localtime: LocalTime = time.localtime,
) -> str:
    """The SAD (or one protocol of it) as ``setkey -D`` prints it."""
    sas = sad.dump(protocol)
    if not sas:
        return "No SAD entries.\n"
    # PF_KEY dumps number their messages down to 0 (sadb_msg_seq).
    return "".join(
        format_sa(
            sa,
            created=sad.created(sa),
            now=now,
            show_keys=show_keys,
            seq=len(sas) - 1 - i,
            pid=pid,
            localtime=localtime,
        )
        for i, sa in enumerate(sas)
    )


def _endpoint(net_str: str, plen: int, full: int, port: int, proto: int | None) -> str:
    text = net_str if plen == full else f"{net_str}/{plen}"
    if proto in _ICMP:  # str_prefport: no port field for ICMP
        return text
    return text + (f"[{port}]" if port else "[any]")


def format_selector(sel: Selector) -> str:
    """The first line of a ``setkey -DP`` entry: ``src[port] dst[port] upperspec``."""
    full = 32 if sel.version == 4 else 128
    src = _endpoint(str(sel.src.network_address), sel.src.prefixlen, full, sel.sport, sel.proto)
    dst = _endpoint(str(sel.dst.network_address), sel.dst.prefixlen, full, sel.dport, sel.proto)
    if sel.proto is None:
        upper = "any"
    else:
        upper = PROTOCOL_NAMES.get(sel.proto, str(sel.proto))
        if sel.proto in _ICMP and (sel.sport or sel.dport):
            upper += f" {sel.sport},{sel.dport}"
    return f"{src} {dst} {upper}"


def format_priority(priority: int) -> str:
    """``prio def``, ``prio high + 5``, ... as libipsec's ``ipsec_dump_policy`` prints them.

    libipsec finds the base (low, def, high) nearest to the kernel's value
    and prints the offset from it; the kernel value is ``2**31 - priority``.
    """
    if priority == PRIORITY_MAX:  # kernel value 0: printed without a priority
        return ""
    if priority > 1 << 29:
        base, offset = "high", priority - (1 << 30)
    elif priority > -(1 << 29):
        base, offset = "def", priority
    else:
        base, offset = "low", priority + (1 << 30)
    if offset == 0:
        return f"prio {base}"
    return f"prio {base} {'+' if offset > 0 else '-'} {abs(offset)}"


def format_request(req: IpsecRequest) -> str:
    """One ``protocol/mode/src-dst/level`` rule."""
    addrs = ""
    if req.src is not None and req.dst is not None:
        src = f"{req.src}[{req.sport}]" if req.sport else str(req.src)
        dst = f"{req.dst}[{req.dport}]" if req.dport else str(req.dst)
        addrs = f"{src}-{dst}"
    level = req.level.value + (f":{req.reqid}" if req.reqid else "")
    return f"{req.protocol.name.lower()}/{req.mode.value}/{addrs}/{level}"


def format_policy_lines(policy: Policy) -> list[str]:
    """The direction/priority/action line and the request lines of a policy."""
    prio = format_priority(policy.priority)
    head = " ".join(w for w in (policy.direction.value, prio, policy.action.value) if w)
    lines = [head]
    if policy.action is Action.IPSEC:
        lines += [format_request(r) for r in policy.requests]
    return lines


def format_policy(
    entry: SPDEntry,
    *,
    seq: int = 0,
    pid: int | None = None,
    localtime: LocalTime = time.localtime,
) -> str:
    """One SPD entry as ``setkey -DP`` prints it (ends with a newline)."""
    pid = os.getpid() if pid is None else pid
    lines = [format_selector(entry.policy.selector)]
    lines += ["\t" + line for line in format_policy_lines(entry.policy)]
    lines += [
        f"\tcreated: {_stime(entry.created, localtime)}  lastused: {_stime(0, localtime)}",
        "\tlifetime: 0(s) validtime: 0(s)",
        f"\tspid={entry.spid} seq={seq} pid={pid}",
        "\trefcnt=1",
    ]
    return "\n".join(lines) + "\n"


def dump_spd(
    spd: SPD,
    *,
    pid: int | None = None,
    localtime: LocalTime = time.localtime,
) -> str:
    """The SPD as ``setkey -DP`` prints it."""
    entries = spd.entries()
    if not entries:
        return "No SPD entries.\n"
    return "".join(
        format_policy(e, seq=len(entries) - 1 - i, pid=pid, localtime=localtime)
        for i, e in enumerate(entries)
    )


__all__ = [
    "PROTOCOL_NAMES",
    "dump_sad",
    "dump_spd",
    "format_policy",
    "format_policy_lines",
    "format_priority",
    "format_request",
    "format_sa",
    "format_selector",
]
