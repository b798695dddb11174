"""The minimal rtnetlink client (ipsecd.rtnl): the routes it makes are pyroute2's, its
route lookups are ``ip route get``'s."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import Lab, host_to_host, lab_fixture, needs_root

from ipsecd.rtnl import RouteInfo, Rtnl
from workers import tun

pytestmark = [pytest.mark.netns, needs_root()]
TABLE = 220


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def _routes(ns: object, family: str) -> list[dict[str, object]]:
    out = ns.run("ip", "-j", family, "route", "show", "table", str(TABLE),  # type: ignore[attr-defined]
                 check=False).stdout
    return sorted(json.loads(out or "[]"), key=lambda r: str(r.get("dst")))


def test_routes_are_pyroute2_s_and_go_again(lab: Lab) -> None:
    h = host_to_host(lab)
    ns = h.a.ns
    policy = tun.PolicyRouting("ipsec0", table=TABLE)
    peers = [(f"{h.b.v4}/32", h.a.v4), ("198.51.100.0/24", None), (f"{h.b.v6}/128", h.a.v6),
             ("2001:db8:77::/48", None)]
    with ns.enter():
        control = tun.create("ipsec0")
        try:
            tun.configure("ipsec0")
            for prefix, src in peers:  # the reference: pyroute2, one route at a time
                policy.add_peer(prefix, src=src)
            want = {f: _routes(ns, f) for f in ("-4", "-6")}
            assert len(want["-4"]) == 2 and len(want["-6"]) == 2
            for prefix, _ in peers:
                policy.del_peer(prefix)
            assert _routes(ns, "-4") == _routes(ns, "-6") == []

            assert policy.set_peers(peers) == {}
            assert {f: _routes(ns, f) for f in ("-4", "-6")} == want
            assert policy.set_peers(peers) == {}  # replaced, not added twice
            assert {f: _routes(ns, f) for f in ("-4", "-6")} == want

            # a source address that is not ours: that route alone is refused
            failed = policy.set_peers([("203.0.113.0/24", "192.0.2.99"),
                                       ("203.0.114.0/24", None)])
            assert list(failed) == ["203.0.113.0/24"]
            assert getattr(failed["203.0.113.0/24"], "errno", None) == errno.EINVAL

            assert policy.set_peers([], [p for p, _ in peers] + ["203.0.114.0/24",
                                                                 "192.0.2.0/24"]) == {}
            assert _routes(ns, "-4") == _routes(ns, "-6") == []
            with Rtnl() as rtnl:  # a removal of a route that is not there says so
                oif = socket.if_nametoindex("ipsec0")
                assert rtnl.delete_routes(oif, TABLE, ["192.0.2.0/24"]) == {
                    "192.0.2.0/24": errno.ESRCH}
        finally:
            control.close()


def test_get_routes_is_ip_route_get(lab: Lab) -> None:
    h = host_to_host(lab)
    ns = h.a.ns
    ns.ip("route add 198.51.100.0/24 dev eth0 mtu 1400",
          "route add 2001:db8:99::/48 dev eth0 mtu 1380",
          "route add 203.0.113.0/24 dev eth0 table 7",
          "rule add fwmark 0x20 lookup 7")
    eth0 = ns.ifindex("eth0")
    addr = ipaddress.ip_address
    with ns.enter(), Rtnl() as rtnl:
        got = rtnl.get_routes([addr(h.b.v4), addr(h.b.v6), addr("198.51.100.9"),
                               addr("2001:db8:99::1"), addr("203.0.113.1")])
        marked = rtnl.get_routes([addr("203.0.113.1")], mark=0x20)
    assert got == {
        addr(h.b.v4): RouteInfo(eth0, 0),
        addr(h.b.v6): RouteInfo(eth0, 0),
        addr("198.51.100.9"): RouteInfo(eth0, 1400),
        addr("2001:db8:99::1"): RouteInfo(eth0, 1380),
        addr("203.0.113.1"): None,  # only in table 7: unreachable without the mark
    }
    assert marked == {addr("203.0.113.1"): RouteInfo(eth0, 0)}


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses().map(str), st.integers(0, 140)),
    st.ip_addresses().map(str),
    st.text(alphabet="0123456789abcdef:./% ", max_size=30)))
def test_route_prefixes_are_parsed_as_ipaddress_does(text: str) -> None:
    """A route's prefix is parsed by inet_pton, host bits cleared: as ip_network(strict=False),
    and what that refuses is refused alike."""
    from ipsecd.rtnl import _prefix

    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        with pytest.raises(ValueError):
            _prefix(text)
        return
    assert _prefix(text) == (net.version, net.prefixlen, net.network_address.packed)
