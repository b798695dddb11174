"""Two ``ipsecd run`` gateways in site-to-site tunnel mode (the HOWTO's tunnel picture).

``netA ── gwA ══ wan ══ gwB ── netB`` (netns.site_to_site, without clear
routes between the sites): the IPv4 sites over the IPv4 WAN, the IPv6
sites over the IPv6 WAN, AES-GCM-16 manual keys.  Also the MTU behaviour:
ICMP "fragmentation needed" / "packet too big" with the SA's exact inner
MTU for DF packets, inner fragmentation for IPv4 without DF, and TCP with
default settings.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import KEY_AB, KEY_BA, Daemon, start, tunnel_script, wait_ready
from netns import (
    Lab,
    SiteToSite,
    needs_root,
    ping,
    remove_stale,
    site_to_site,
    tcp_transfer,
    wait_until,
)

pytestmark = [pytest.mark.netns, needs_root()]

ESP, ICMPV6 = 50, 58
ND = {130, 131, 132, 133, 134, 135, 136, 143}  # MLD, RS, RA, NS, NA, MLDv2 report
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO, IP_MTU = 10, 0, 2, 14
IPV6_MTU_DISCOVER, IPV6_MTU = 23, 24
# AES-GCM-16 in tunnel mode: outer header + ESP header (8) + IV (8) + ICV (16)
# and 2 trailer bytes, padded to 4.  The largest inner packet in 1500 bytes:
INNER_MTU_V4_WAN = (1500 - 20 - 16 - 16) // 4 * 4 - 2  # 1446
INNER_MTU_V6_WAN = (1500 - 40 - 16 - 16) // 4 * 4 - 2  # 1426


class Gateways:
    def __init__(self, topo: SiteToSite, a: Daemon, b: Daemon) -> None:
        self.topo, self.a, self.b = topo, a, b


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    remove_stale()
    workdir = tmp_path_factory.mktemp("tunnel")
    with Lab("tu") as lab:
        topo = site_to_site(lab, routed=False)
        a = start(topo.gw_a_wan.ns, workdir, "tu-a", outside=["wan0"],
                  script=tunnel_script(topo, "a"), wait=False)
        b = start(topo.gw_b_wan.ns, workdir, "tu-b", outside=["wan0"],
                  script=tunnel_script(topo, "b"), wait=False)
        try:
            wait_ready(a, b)
            yield Gateways(topo, a, b)
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()
        # A clean shutdown leaves nothing behind.
        ns = topo.gw_a_wan.ns
        assert "ipsecd" not in ns.run("nft", "list", "tables").stdout.decode()
        assert "lookup 220" not in ns.run("ip", "rule").stdout.decode()
        assert "lookup 220" not in ns.run("ip", "-6", "rule").stdout.decode()
        assert ns.run("ip", "link", "show", "ipsec0", check=False).returncode != 0
        assert not ns.run("ip", "route", "show", "table", "220").stdout.strip()


def _protocols(frames: list[bytes]) -> list[int]:
    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        out.append(f[23] if ethertype == 0x0800 else f[20] if ethertype == 0x86DD else -1)
    return out


def test_ping_between_the_sites(gws: Gateways, tmp_path: Path) -> None:
    topo = gws.topo
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap")
    assert ping(topo.net_a.ns, topo.net_b.v4, count=3) == 3
    assert ping(topo.net_b.ns, topo.net_a.v4, count=3) == 3
    assert ping(topo.net_a.ns, topo.net_b.v6, count=3) == 3
    assert ping(topo.net_b.ns, topo.net_a.v6, count=3) == 3
    # The gateways' own traffic to the other site goes through the tunnel too
    # (the route's preferred source is the gateway's address inside the selector).
    assert ping(topo.gw_a_lan.ns, topo.net_b.v4, count=1) == 1
    cap.stop()
    frames = cap.packets()
    protocols = _protocols(frames)
    assert protocols.count(ESP) >= 26
    # ESP, ARP, and IPv6 neighbour discovery and MLD (after a hop-by-hop header) only.
    assert set(protocols) <= {ESP, -1, ICMPV6, 0}
    assert {f[54] for f, p in zip(frames, protocols, strict=True) if p == ICMPV6} <= ND
    assert {f[54 + (f[55] + 1) * 8] for f, p in zip(frames, protocols, strict=True)
            if p == 0 and f[54] == ICMPV6} <= ND
    st = gws.a.status()
    by_spi = {sa["spi"]: sa for sa in st["sas"]}
    assert by_spi[0x2001]["packets"] >= 7 and by_spi[0x2601]["packets"] >= 6
    assert by_spi[0x2001]["mode"] == "tunnel" and by_spi[0x2002]["direction"] == "in"
    assert "203.0.113.0/24" in st["routes"] and "2001:db8:b::/64" in st["routes"]


def _udp_pmtu(ns: object, dst: str, port: int, size: int, *, v6: bool) -> int:
    """Send one DF datagram of ``size`` bytes of payload, then report the socket's path MTU."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with ns.enter():  # type: ignore[attr-defined]
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.connect((dst, port))
        s.send(bytes(size))

        def mtu() -> int:
            if v6:
                return int(s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
            return int(s.getsockopt(socket.IPPROTO_IP, IP_MTU))

        wait_until(lambda: mtu() < 1500, 2)
        return mtu()
    finally:
        s.close()


def test_df_packets_get_the_sas_inner_mtu_back(gws: Gateways) -> None:
    topo = gws.topo
    before = gws.a.sa(0x2001)["drops"].get("mtu", 0)
    assert _udp_pmtu(topo.net_a.ns, topo.net_b.v4, 9, 1472, v6=False) == INNER_MTU_V4_WAN
    assert _udp_pmtu(topo.net_a.ns, topo.net_b.v6, 9, 1452, v6=True) == INNER_MTU_V6_WAN
    assert gws.a.sa(0x2001)["drops"].get("mtu", 0) == before + 1
    # A packet that fits the announced MTU goes through.
    with topo.net_b.ns.enter():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with topo.net_a.ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((topo.net_b.v4, 9999))
        rx.settimeout(3)
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        tx.sendto(bytes(INNER_MTU_V4_WAN - 28), (topo.net_b.v4, 9999))
        assert len(rx.recv(65535)) == INNER_MTU_V4_WAN - 28
    finally:
        rx.close()
        tx.close()


def test_packets_without_df_still_get_through(gws: Gateways) -> None:
    """IPv4 without DF: the gateway fragments the inner packet before encapsulation."""
    topo = gws.topo
    with topo.net_b.ns.enter():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with topo.net_a.ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((topo.net_b.v4, 9998))
        rx.settimeout(3)
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        payload = bytes(range(256)) * 5 + bytes(1472 - 1280)
        tx.sendto(payload, (topo.net_b.v4, 9998))
        assert rx.recv(65535) == payload
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_through_the_tunnel_with_default_settings(gws: Gateways, family: int) -> None:
    topo = gws.topo
    dst = topo.net_b.v4 if family == 4 else topo.net_b.v6
    def tun_rx() -> int:  # packets the workers wrote into gwB's TUN, as its kernel counts them
        out = topo.gw_b_wan.ns.run("ip", "-s", "-j", "link", "show", "ipsec0").stdout
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    def decrypted() -> int:
        return sum(w["packets_in"] for w in gws.b.status()["workers"])

    writes0, esp0 = tun_rx(), decrypted()
    size = (20 if family == 4 else 8) << 20
    moved = tcp_transfer(topo.net_a.ns, topo.net_b.ns, dst, size=size)
    assert moved.received == size and moved.seconds < 20
    # GRO (datapath.gro, on by default): the decrypted segments of the transfer went
    # into the TUN as far fewer, larger writes.
    writes, esp = tun_rx() - writes0, decrypted() - esp0
    assert esp > (4 << 20) // 1500
    assert writes < esp / 2, (writes, esp)


def test_esp_in_udp(gws: Gateways, tmp_path: Path) -> None:
    """RFC 3948 encapsulation: a newer esp-udp SA pair takes over the IPv4 sites' traffic."""
    topo = gws.topo
    ga, gb = topo.gw_a_wan.v4, topo.gw_b_wan.v4
    sas = (f"add {ga}[4500] {gb}[4500] esp-udp 0x3001 -m tunnel -E aes-gcm-16 {KEY_AB};\n"
           f"add {gb}[4500] {ga}[4500] esp-udp 0x3002 -m tunnel -E aes-gcm-16 {KEY_BA};\n")
    for d in (gws.a, gws.b):
        r = d.setkey(sas)
        assert r.returncode == 0, r.stderr
    try:
        cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "udp.pcap", "udp port 4500")
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3) == 3
        assert ping(topo.net_b.ns, topo.net_a.v4, count=2) == 2
        cap.stop()
        frames = cap.packets()
        assert len(frames) >= 10
        spis = {struct.unpack_from("!I", f, 14 + 20 + 8)[0] for f in frames}
        assert spis == {0x3001, 0x3002}
        assert gws.a.sa(0x3001)["packets"] >= 5 and gws.b.sa(0x3001)["packets"] >= 5
        assert "udp-encap 4500/4500" in gws.a.sa(0x3001)["algorithms"]
    finally:
        for d in (gws.a, gws.b):
            d.setkey(f"delete {ga} {gb} esp 0x3001;\ndelete {gb} {ga} esp 0x3002;\n")
    assert ping(topo.net_a.ns, topo.net_b.v4, count=1) == 1
