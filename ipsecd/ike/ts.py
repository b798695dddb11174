"""IKEv2 traffic selectors: configuration syntax, narrowing, checks (RFC 7296 §2.9, §3.13).

Theory of operation
-------------------
A traffic selector (§3.13.1) is an address range, an IP protocol (0 = any)
and a port range (0-65535 = any).  Configuration says which selectors a
Child SA may carry, in swanctl's ``local_ts``/``remote_ts`` syntax
(:func:`parse_ts` -> :class:`TsSpec`); ``dynamic`` stands for the SA's own
address, filled in by :func:`to_selectors` once it is known.

The initiator proposes TSi/TSr; the responder answers with a subset (§2.9:
it may narrow, never widen): :func:`narrow` computes, for one of TSi or
TSr, every non-empty intersection of a proposed selector with a configured
one.  The initiator checks the answer with :func:`within`.  Only
TS_IPV4_ADDR_RANGE and TS_IPV6_ADDR_RANGE are handled; other selector
types (:class:`~ipsecd.ike.messages.RawTrafficSelector`, e.g. RFC 9478
security labels) are left out of narrowing.

For ICMP and ICMPv6 the port fields hold Type (high octet) and Code (low
octet) as one 16-bit number (§3.13.1); :func:`parse_ts` reads ``[icmp/8]``
as type 8 with any code.  The OPAQUE port range (start 65535, end 0,
§3.13.1) is not supported: such a selector is empty here.

Everything is pure: no I/O, no name lookups (protocol names come from a
small table below, ports are numbers).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ipsecd.ike.messages import RawTrafficSelector, TrafficSelector
from ipsecd.sa import IPAddress

__all__ = [
    "TsSpec",
    "describe",
    "narrow",
    "parse_ts",
    "to_prefixes",
    "to_selectors",
    "within",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_PROTOCOLS: dict[str, int] = {
    "icmp": 1, "igmp": 2, "ipencap": 4, "tcp": 6, "udp": 17, "ipv6": 41, "gre": 47, "esp": 50,
    "ah": 51, "ipv6-icmp": 58, "icmpv6": 58, "ospf": 89, "sctp": 132, "udplite": 136, "dccp": 33,
}
_PROTOCOL_NAMES: dict[int, str] = {
    1: "icmp", 2: "igmp", 4: "ipencap", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
    51: "ah", 58: "ipv6-icmp", 89: "ospf", 132: "sctp", 136: "udplite", 33: "dccp",
}
_ICMP = frozenset({1, 58})
_WITH_PORTS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite
_ANY = ("%any", "any")
_SPEC = re.compile(r"(?P<address>[^\[\]]*)(?:\[(?P<selector>[^\[\]]*)\])?")


@dataclass(frozen=True, slots=True)
class TsSpec:
    """One configured traffic selector; ``network`` None is ``dynamic`` (the SA's own address)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    def __post_init__(self) -> None:
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"IP protocol {self.protocol} out of range 0..255")
        if not 0 <= self.start_port <= self.end_port <= 0xFFFF:
            raise ValueError(f"port range {self.start_port}-{self.end_port} is not within 0..65535")


def _number(text: str, limit: int, what: str, spec: str) -> int:
    if not text.isdigit() or int(text) > limit:
        raise ValueError(f"{what} {text!r} in traffic selector {spec!r} is not a number 0..{limit}")
    return int(text)


def _protocol(text: str, spec: str) -> int:
    name = text.strip().lower()
    if name in _ANY:
        return 0
    if name in _PROTOCOLS:
        return _PROTOCOLS[name]
    if name.isdigit():
        return _number(name, 255, "IP protocol", spec)
    raise ValueError(f"unknown protocol {text!r} in traffic selector {spec!r}")


def _ports(text: str, protocol: int, spec: str) -> tuple[int, int]:
    text = text.strip().lower()
    if text in _ANY:
        return 0, 0xFFFF
    if protocol == 0:
        raise ValueError(f"traffic selector {spec!r}: a port needs a protocol")
    if protocol not in _WITH_PORTS | _ICMP:
        raise ValueError(f"traffic selector {spec!r}: protocol {protocol} has no ports")
    low_text, _, high_text = text.partition("-")
    if protocol in _ICMP:
        # RFC 7296 §3.13.1: Type in the high octet, Code in the low one; a type means any code.
        low = _number(low_text, 255, "ICMP type", spec)
        high = _number(high_text, 255, "ICMP type", spec) if high_text else low
        low, high = low << 8, high << 8 | 0xFF
    else:
        low = _number(low_text, 0xFFFF, "port", spec)
        high = _number(high_text, 0xFFFF, "port", spec) if high_text else low
    if low > high:
        raise ValueError(f"traffic selector {spec!r}: port range {text!r} is reversed")
    return low, high


def parse_ts(text: str) -> TsSpec:
    """A traffic selector in swanctl syntax.

    ``10.1.0.0/16``, ``192.0.2.1`` (a host), ``2001:db8::/32``, ``dynamic``,
    each optionally followed by ``[protocol]`` or ``[protocol/port]``:
    ``10.1.0.0/16[tcp/80]``, ``dynamic[udp]``, ``0.0.0.0/0[tcp/1024-65535]``,
    ``::/0[ipv6-icmp/128]``.  The protocol is a name (tcp, udp, icmp,
    ipv6-icmp/icmpv6, sctp, gre, esp, ah, ...), a number or ``%any``; the
    port a number, a range ``low-high`` or ``%any`` (for ICMP an ICMP type
    or range of types).  Host bits in a prefix are cleared, as swanctl does.
    Raises ValueError with the reason otherwise.
    """
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"traffic selector {text!r}: expected ADDRESS[/PREFIX][PROTOCOL/PORT]")
    address = match["address"].strip()
    network: Network | None
    if not address:
        raise ValueError(f"traffic selector {text!r} has no address (use 'dynamic' for the SA's own)")
    if address.lower() == "dynamic":
        network = None
    else:
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise ValueError(f"traffic selector {text!r}: {address!r} is not an address or prefix") from None
    protocol, start_port, end_port = 0, 0, 0xFFFF
    selector = match["selector"]
    if selector is not None:
        proto_text, slash, port_text = selector.partition("/")
        protocol = _protocol(proto_text, text)
        if slash:
            start_port, end_port = _ports(port_text, protocol, text)
    return TsSpec(network, protocol, start_port, end_port)


def to_selectors(specs: Sequence[TsSpec], dynamic: IPAddress | None) -> list[TrafficSelector]:
    """The selectors of ``specs``; ``dynamic`` ones become ``dynamic``'s /32 or /128 (or are left out if None)."""
    out: list[TrafficSelector] = []
    for spec in specs:
        network = spec.network
        if network is None:
            if dynamic is None:
                continue
            network = ipaddress.ip_network(dynamic)
        out.append(TrafficSelector.from_network(network, spec.protocol, spec.start_port, spec.end_port))
    return out


def _range(ts: TrafficSelector) -> tuple[int, int, int]:
    """(IP version, first, last) as integers; a selector mixing families is empty (last < first)."""
    if ts.start_address.version != ts.end_address.version:
        return ts.start_address.version, 1, 0
    return ts.start_address.version, int(ts.start_address), int(ts.end_address)


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _intersection(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """``a`` ∩ ``b`` (RFC 7296 §2.9), or None when empty or of different families."""
    (version, a_first, a_last), (b_version, b_first, b_last) = _range(a), _range(b)
    if version != b_version:
        return None
    first, last = max(a_first, b_first), min(a_last, b_last)
    if first > last:
        return None
    if a.ip_protocol == 0 or a.ip_protocol == b.ip_protocol:
        protocol = b.ip_protocol  # 0 matches anything; the specific one wins
    elif b.ip_protocol == 0:
        protocol = a.ip_protocol
    else:
        return None
    start_port = max(a.start_port, b.start_port)
    end_port = min(a.end_port, b.end_port)
    if start_port > end_port:
        return None
    return TrafficSelector(_address(version, first), _address(version, last), protocol, start_port, end_port)


def narrow(proposed: Sequence[TrafficSelector | RawTrafficSelector],
           configured: Sequence[TrafficSelector | RawTrafficSelector]) -> list[TrafficSelector]:
    """The responder's narrowing of TSi or TSr (RFC 7296 §2.9).

    Every non-empty intersection of a proposed selector with a configured
    one, in the proposed order (then the configured order), duplicates
    removed; address ranges and port ranges are intersected, protocol 0
    matches any protocol and the specific one wins.  Selectors of different
    families never intersect; RawTrafficSelector entries are ignored.  An
    empty result means TS_UNACCEPTABLE.
    """
    out: list[TrafficSelector] = []
    for p in proposed:
        if not isinstance(p, TrafficSelector):
            continue
        for c in configured:
            if not isinstance(c, TrafficSelector):
                continue
            both = _intersection(p, c)
            if both is not None and both not in out:
                out.append(both)
    return out


def _inside(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    (version, first, last), (outer_version, outer_first, outer_last) = _range(inner), _range(outer)
    return (version == outer_version and first <= last and outer_first <= first and last <= outer_last
            and outer.ip_protocol in (0, inner.ip_protocol)
            and inner.start_port <= inner.end_port
            and outer.start_port <= inner.start_port and inner.end_port <= outer.end_port)


def within(received: Sequence[TrafficSelector | RawTrafficSelector],
           proposed: Sequence[TrafficSelector | RawTrafficSelector]) -> bool:
    """The initiator's check of TSi/TSr in the answer: the responder may only narrow (§2.9).

    True when every received selector lies inside some proposed selector
    (addresses and ports within, protocol equal or proposed 0).  A received
    RawTrafficSelector must equal one we proposed.  An empty ``received``
    is False: a Child SA carries at least one selector each way.
    """
    if not received:
        return False
    for r in received:
        if isinstance(r, TrafficSelector):
            if not any(isinstance(p, TrafficSelector) and _inside(r, p) for p in proposed):
                return False
        elif r not in proposed:
            return False
    return True


def to_prefixes(ts: TrafficSelector) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDR blocks that cover exactly the address range of ``ts`` (none if it is empty)."""
    version, first, last = _range(ts)
    if first > last:
        return []
    size = last - first + 1
    if not size & (size - 1) and not first & (size - 1):  # one block (the common case): quick
        bits = (32 if version == 4 else 128) - size.bit_length() + 1
        return [ipaddress.IPv4Network((first, bits)) if version == 4
                else ipaddress.IPv6Network((first, bits))]
    return list(ipaddress.summarize_address_range(_address(version, first), _address(version, last)))


def _port_text(ts: TrafficSelector) -> str:
    low, high = ts.start_port, ts.end_port
    if ts.ip_protocol in _ICMP and low & 0xFF == 0 and high & 0xFF == 0xFF:
        low, high = low >> 8, high >> 8  # whole ICMP types, as parse_ts reads them
    return str(low) if low == high else f"{low}-{high}"


def describe(ts: TrafficSelector) -> str:
    """The selector in swanctl's syntax: ``10.1.0.0/16``, ``10.1.0.0/16[tcp/80]``, ``10.1.0.5..10.1.0.9``."""
    version, first, last = _range(ts)
    size = last - first + 1
    if first <= last and not size & (size - 1) and not first & (size - 1):
        # one block (to_prefixes' quick case), written without building the network
        address = f"{ts.start_address}/{(32 if version == 4 else 128) - size.bit_length() + 1}"
    else:
        prefixes = to_prefixes(ts)
        address = str(prefixes[0]) if len(prefixes) == 1 else f"{ts.start_address}..{ts.end_address}"
    all_ports = ts.start_port == 0 and ts.end_port == 0xFFFF
    if ts.ip_protocol == 0 and all_ports:
        return address
    protocol = "%any" if ts.ip_protocol == 0 else _PROTOCOL_NAMES.get(ts.ip_protocol, str(ts.ip_protocol))
    if all_ports:
        return f"{address}[{protocol}]"
    return f"{address}[{protocol}/{_port_text(ts)}]"
