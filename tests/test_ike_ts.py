"""IKEv2 traffic selectors (ipsecd.ike.ts, RFC 7296 §2.9, §3.13).

swanctl's selector syntax and its refusals, dynamic selectors, narrowing
(addresses, protocols, ports, both families) with hypothesis properties
(every result lies within both inputs, and every point both inputs cover
is covered by a result), the initiator's check, covering prefixes and the
text form used in logs.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.ike.constants import TsType
from ipsecd.ike.messages import RawTrafficSelector, TrafficSelector
from ipsecd.ike.ts import TsSpec, describe, narrow, parse_ts, to_prefixes, to_selectors, within

net = ipaddress.ip_network
addr = ipaddress.ip_address


def ts(first: str, last: str | None = None, protocol: int = 0, ports: tuple[int, int] = (0, 0xFFFF)) -> TrafficSelector:
    """A selector from a prefix ("10.0.0.0/8") or an address range (first, last)."""
    if last is None:
        return TrafficSelector.from_network(net(first), protocol, *ports)
    return TrafficSelector(addr(first), addr(last), protocol, *ports)


# -- parse_ts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("10.1.0.0/16", TsSpec(net("10.1.0.0/16"))),
    ("192.0.2.1", TsSpec(net("192.0.2.1/32"))),
    ("2001:db8::/32", TsSpec(net("2001:db8::/32"))),
    ("2001:db8::5", TsSpec(net("2001:db8::5/128"))),
    ("dynamic", TsSpec(None)),
    ("  DYNAMIC ", TsSpec(None)),
    ("10.1.0.1/16", TsSpec(net("10.1.0.0/16"))),  # host bits cleared, as swanctl does
    ("0.0.0.0/0", TsSpec(net("0.0.0.0/0"))),
    ("::/0", TsSpec(net("::/0"))),
    ("10.1.0.0/16[tcp/80]", TsSpec(net("10.1.0.0/16"), 6, 80, 80)),
    ("10.1.0.0/16[tcp]", TsSpec(net("10.1.0.0/16"), 6)),
    ("dynamic[udp]", TsSpec(None, 17)),
    ("dynamic[udp/500]", TsSpec(None, 17, 500, 500)),
    ("0.0.0.0/0[tcp/1024-65535]", TsSpec(net("0.0.0.0/0"), 6, 1024, 65535)),
    ("10.0.0.0/8[udp/%any]", TsSpec(net("10.0.0.0/8"), 17)),
    ("10.0.0.0/8[%any]", TsSpec(net("10.0.0.0/8"))),
    ("10.0.0.0/8[47]", TsSpec(net("10.0.0.0/8"), 47)),
    ("10.0.0.0/8[gre]", TsSpec(net("10.0.0.0/8"), 47)),
    ("2001:db8::/48[sctp/9899]", TsSpec(net("2001:db8::/48"), 132, 9899, 9899)),
    # RFC 7296 §3.13.1: ICMP Type in the high octet, Code in the low one; a type means any code.
    ("10.0.0.0/8[icmp]", TsSpec(net("10.0.0.0/8"), 1)),
    ("10.0.0.0/8[icmp/8]", TsSpec(net("10.0.0.0/8"), 1, 0x0800, 0x08FF)),
    ("::/0[ipv6-icmp/133-137]", TsSpec(net("::/0"), 58, 133 << 8, 137 << 8 | 0xFF)),
    ("::/0[icmpv6]", TsSpec(net("::/0"), 58)),
])
def test_parse_ts(text: str, expected: TsSpec) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "has no address"),
    ("[udp]", "has no address"),
    ("10.1.0.0/33", "is not an address or prefix"),
    ("10.1.0.0/16/8", "is not an address or prefix"),
    ("example.com", "is not an address or prefix"),
    ("10.1.0.0/16[tcp/80", "expected ADDRESS"),
    ("10.1.0.0/16[tcp]x", "expected ADDRESS"),
    ("10.1.0.0/16[[tcp]]", "expected ADDRESS"),
    ("10.0.0.0/8[xyz]", "unknown protocol 'xyz'"),
    ("10.0.0.0/8[256]", "IP protocol '256'"),
    ("10.0.0.0/8[tcp/70000]", "port '70000'"),
    ("10.0.0.0/8[tcp/http]", "port 'http'"),
    ("10.0.0.0/8[tcp/90-80]", "is reversed"),
    ("10.0.0.0/8[tcp/-80]", "port ''"),
    ("10.0.0.0/8[%any/80]", "a port needs a protocol"),
    ("10.0.0.0/8[gre/1]", "has no ports"),
    ("10.0.0.0/8[icmp/300]", "ICMP type '300'"),
])
def test_parse_ts_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_ts(text)
    assert message in str(excinfo.value)
    assert repr(text) in str(excinfo.value) or not text


def test_ts_spec_validates() -> None:
    with pytest.raises(ValueError, match="protocol"):
        TsSpec(None, 300)
    with pytest.raises(ValueError, match="port range"):
        TsSpec(None, 6, 90, 80)
    with pytest.raises(ValueError, match="port range"):
        TsSpec(None, 6, 0, 70000)


# -- to_selectors ----------------------------------------------------------------------------


def test_to_selectors() -> None:
    specs = [parse_ts(t) for t in ("10.1.0.0/16", "dynamic[udp/500]", "2001:db8::/32[tcp/443]")]
    assert to_selectors(specs, addr("192.0.2.7")) == [
        ts("10.1.0.0", "10.1.255.255"),
        ts("192.0.2.7", "192.0.2.7", 17, (500, 500)),
        ts("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 6, (443, 443)),
    ]
    six = to_selectors([parse_ts("dynamic")], addr("2001:db8::1"))
    assert six == [ts("2001:db8::1", "2001:db8::1")]
    assert six[0].ts_type == TsType.TS_IPV6_ADDR_RANGE
    # Without an address, dynamic entries are left out.
    assert to_selectors(specs, None) == [
        ts("10.1.0.0/16"), ts("2001:db8::/32", protocol=6, ports=(443, 443))]


# -- narrow ----------------------------------------------------------------------------------


def test_narrow_addresses() -> None:
    # The initiator asks for a /16, we allow a /24 inside it and an overlapping range.
    proposed = [ts("10.1.0.0/16")]
    configured = [ts("10.1.2.0/24"), ts("10.0.255.250", "10.1.0.9"), ts("192.168.0.0/16")]
    assert narrow(proposed, configured) == [ts("10.1.2.0/24"), ts("10.1.0.0", "10.1.0.9")]
    # Proposed inside configured: unchanged.
    assert narrow([ts("10.1.2.3", "10.1.2.3")], [ts("10.0.0.0/8")]) == [ts("10.1.2.3", "10.1.2.3")]
    assert narrow([ts("10.1.0.0/16")], [ts("10.2.0.0/16")]) == []


def test_narrow_protocols_and_ports() -> None:
    any_ = ts("0.0.0.0/0")
    web = ts("10.0.0.0/8", protocol=6, ports=(80, 443))
    # Protocol 0 matches anything and the specific one wins.
    assert narrow([any_], [web]) == [web]
    assert narrow([web], [any_]) == [web]
    assert narrow([web], [ts("10.0.0.0/8", protocol=17)]) == []
    assert narrow([web], [ts("10.1.0.0/16", protocol=6, ports=(443, 8080))]) == [
        ts("10.1.0.0/16", protocol=6, ports=(443, 443))]
    assert narrow([web], [ts("10.0.0.0/8", protocol=6, ports=(1024, 65535))]) == []
    # The ICMP type/code pseudo-ports intersect like ports (RFC 7296 §3.13.1).
    echo = ts("0.0.0.0/0", protocol=1, ports=(0x0800, 0x08FF))
    assert narrow([ts("10.0.0.0/8", protocol=1)], [echo]) == [ts("10.0.0.0/8", protocol=1, ports=(0x0800, 0x08FF))]


def test_narrow_ipv6_and_families() -> None:
    proposed = [ts("2001:db8::/32"), ts("10.0.0.0/8")]
    configured = [ts("2001:db8:1::/48", protocol=17), ts("::/0"), ts("0.0.0.0/0", protocol=6)]
    assert narrow(proposed, configured) == [
        ts("2001:db8:1::/48", protocol=17), ts("2001:db8::/32"), ts("10.0.0.0/8", protocol=6)]
    # Small IPv6 addresses stay IPv6 (::1 is not 0.0.0.1).
    [loop] = narrow([ts("::/64")], [ts("::1", "::1")])
    assert loop.start_address == addr("::1") and loop.ts_type == TsType.TS_IPV6_ADDR_RANGE
    assert narrow([ts("::/0")], [ts("0.0.0.0/0")]) == []


def test_narrow_order_duplicates_and_raw_selectors() -> None:
    raw = RawTrafficSelector(TsType.TS_SECLABEL, 0, b"\x00\x08label")
    proposed: list[TrafficSelector | RawTrafficSelector] = [raw, ts("10.2.0.0/16"), ts("10.1.0.0/16")]
    configured: list[TrafficSelector | RawTrafficSelector] = [ts("10.0.0.0/8"), raw, ts("10.1.0.0/16")]
    # In proposed order; 10.1/16 ∩ 10/8 and 10.1/16 ∩ 10.1/16 are the same selector: once.
    assert narrow(proposed, configured) == [ts("10.2.0.0/16"), ts("10.1.0.0/16")]
    assert narrow([raw], [raw]) == []
    assert narrow([], configured) == []


_V4 = st.integers(0, 2**32 - 1)
_PORTS = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(sorted)


@st.composite
def selectors(draw: st.DrawFn, version: int | None = None) -> TrafficSelector:
    family = version or draw(st.sampled_from([4, 4, 6]))
    # Few distinct bits so that ranges overlap often.
    if family == 4:
        values = sorted(draw(st.lists(_V4.map(lambda v: v & 0xFF00FF0F), min_size=2, max_size=2)))
        make: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    else:
        values = sorted(draw(st.lists(st.integers(0, 2**128 - 1).map(lambda v: v & (0xF << 124 | 0xFF)),
                                      min_size=2, max_size=2)))
        make = ipaddress.IPv6Address
    protocol = draw(st.sampled_from([0, 0, 6, 17, 1]))
    low, high = draw(_PORTS)
    if draw(st.booleans()):
        low, high = 0, 0xFFFF
    return TrafficSelector(make(values[0]), make(values[1]), protocol, low, high)


def _covers(selector: TrafficSelector, address: int, version: int, protocol: int, port: int) -> bool:
    return (selector.start_address.version == version
            and int(selector.start_address) <= address <= int(selector.end_address)
            and selector.ip_protocol in (0, protocol) and selector.start_port <= port <= selector.end_port)


@settings(max_examples=300)
@given(proposed=st.lists(selectors(), max_size=4), configured=st.lists(selectors(), max_size=4))
def test_narrow_results_lie_within_both(proposed: list[TrafficSelector], configured: list[TrafficSelector]) -> None:
    result = narrow(proposed, configured)
    assert len(result) == len({(describe(r), r.ts_type) for r in result})  # no duplicates
    if result:
        assert within(result, proposed)
        assert within(result, configured)
    for r in result:
        assert within([r], proposed) and within([r], configured)


@settings(max_examples=300)
@given(proposed=st.lists(selectors(4), min_size=1, max_size=3),
       configured=st.lists(selectors(4), min_size=1, max_size=3),
       point=st.tuples(_V4.map(lambda v: v & 0xFF00FF0F), st.sampled_from([6, 17, 1, 47]),
                       st.integers(0, 0xFFFF)))
def test_narrow_loses_nothing_both_allow(
    proposed: list[TrafficSelector], configured: list[TrafficSelector], point: tuple[int, int, int],
) -> None:
    """A packet that a proposed and a configured selector both allow is allowed by the result."""
    address, protocol, port = point
    in_both = (any(_covers(p, address, 4, protocol, port) for p in proposed)
               and any(_covers(c, address, 4, protocol, port) for c in configured))
    assert in_both == any(_covers(r, address, 4, protocol, port) for r in narrow(proposed, configured))


# -- within ----------------------------------------------------------------------------------


def test_within() -> None:
    proposed = [ts("10.1.0.0/16"), ts("2001:db8::/32", protocol=6, ports=(1000, 2000))]
    assert within([ts("10.1.2.0/24")], proposed)
    assert within([ts("10.1.2.0/24", protocol=17, ports=(53, 53)), ts("10.1.0.0/16")], proposed)
    assert within([ts("2001:db8:5::/48", protocol=6, ports=(1500, 1500))], proposed)
    assert not within([ts("10.0.0.0/8")], proposed)  # wider: the responder may only narrow
    assert not within([ts("10.1.2.0/24"), ts("10.2.0.0/24")], proposed)
    assert not within([ts("2001:db8:5::/48", protocol=17, ports=(1500, 1500))], proposed)
    assert not within([ts("2001:db8:5::/48", protocol=6, ports=(999, 1500))], proposed)
    assert not within([ts("2001:db8:5::/48")], proposed)  # protocol 0 is wider than tcp
    assert not within([ts("::ffff:10.1.0.1", "::ffff:10.1.0.1")], proposed)  # other family
    assert not within([], proposed)
    raw = RawTrafficSelector(TsType.TS_SECLABEL, 0, b"\x00\x08label")
    assert within([raw, ts("10.1.0.0/24")], [*proposed, raw])
    assert not within([raw], proposed)


# -- to_prefixes and describe ----------------------------------------------------------------


def test_to_prefixes() -> None:
    assert to_prefixes(ts("10.1.0.0/16")) == [net("10.1.0.0/16")]
    assert to_prefixes(ts("10.1.0.5", "10.1.0.9")) == [net("10.1.0.5/32"), net("10.1.0.6/31"), net("10.1.0.8/31")]
    assert to_prefixes(ts("0.0.0.0", "255.255.255.255")) == [net("0.0.0.0/0")]
    assert to_prefixes(ts("2001:db8::", "2001:db8::2")) == [net("2001:db8::/127"), net("2001:db8::2/128")]
    assert to_prefixes(ts("::", "::3")) == [net("::/126")]
    assert to_prefixes(ts("10.0.0.9", "10.0.0.5")) == []


@settings(max_examples=300)
@given(selector=selectors())
def test_to_prefixes_cover_exactly(selector: TrafficSelector) -> None:
    prefixes = to_prefixes(selector)
    assert prefixes[0].network_address == selector.start_address
    assert prefixes[-1].broadcast_address == selector.end_address
    assert sum(p.num_addresses for p in prefixes) == int(selector.end_address) - int(selector.start_address) + 1
    for before, after in itertools.pairwise(prefixes):
        assert int(before.broadcast_address) + 1 == int(after.network_address)
    # the quick path for a single block gives what the library's summary gives
    assert prefixes == list(ipaddress.summarize_address_range(selector.start_address,
                                                              selector.end_address))


@pytest.mark.parametrize(("selector", "text"), [
    (ts("10.1.0.0/16"), "10.1.0.0/16"),
    (ts("10.1.0.0/16", protocol=6, ports=(80, 80)), "10.1.0.0/16[tcp/80]"),
    (ts("10.1.0.0/16", protocol=6), "10.1.0.0/16[tcp]"),
    (ts("0.0.0.0/0", protocol=6, ports=(1024, 65535)), "0.0.0.0/0[tcp/1024-65535]"),
    (ts("10.1.0.5", "10.1.0.9"), "10.1.0.5..10.1.0.9"),
    (ts("10.1.0.5", "10.1.0.5"), "10.1.0.5/32"),
    (ts("2001:db8::/32", protocol=17, ports=(500, 500)), "2001:db8::/32[udp/500]"),
    (ts("2001:db8::1", "2001:db8::3"), "2001:db8::1..2001:db8::3"),
    (ts("10.0.0.0/8", protocol=1, ports=(0x0800, 0x08FF)), "10.0.0.0/8[icmp/8]"),
    (ts("::/0", protocol=58, ports=(0x8500, 0x89FF)), "::/0[ipv6-icmp/133-137]"),
    (ts("10.0.0.0/8", protocol=1, ports=(0x0800, 0x0800)), "10.0.0.0/8[icmp/2048]"),
    (ts("10.0.0.0/8", protocol=99), "10.0.0.0/8[99]"),
    (ts("10.0.0.0/8", ports=(53, 53)), "10.0.0.0/8[%any/53]"),
])
def test_describe(selector: TrafficSelector, text: str) -> None:
    assert describe(selector) == text


@pytest.mark.parametrize("text", [
    "10.1.0.0/16", "10.1.0.0/16[tcp/80]", "192.0.2.1/32[udp]", "2001:db8::/32[sctp/1-2]",
    "0.0.0.0/0[icmp/8]", "::/0[ipv6-icmp/133-137]",
])
def test_describe_reads_back(text: str) -> None:
    [selector] = to_selectors([parse_ts(text)], None)
    assert describe(selector) == text
