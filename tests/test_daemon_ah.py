"""AH (RFC 4302) through running ``ipsecd run`` daemons.

* Host-to-host transport mode (``A ── B``, netns.host_to_host) with ``ah``
  SAs (HMAC-SHA2-256-128) and ``ah/transport//require`` policies: ping
  works both ways over IPv4 and IPv6, and the wire carries that traffic in
  AH only: no ESP, no ICMP in clear.  UDP datagrams without DF bigger than
  the path get AH whole and cross in outer fragments (RFC 4302 §3.3.4),
  which B's workers reassemble.
* Site-to-site tunnel mode (``netA ── gwA ══ wan ══ gwB ── netB``) with
  ``ah/tunnel/A-B/require``: ping between the sites, IPv4 and IPv6, AH on
  the WAN.
* Hostile AH at the tunnel gateway is counted by reason: too short for an
  SPI (``malformed``), unknown SPI, truncated (``runt``), bit-flipped
  packets made by scapy with the SA's real key (``icv``) and AH captured on
  the wire and sent again (``replay``); the workers survive and the tunnel
  still works.

The AH that ipsecd sends is checked against an implementation we did not
write in tests/test_daemon_interop_scapy.py; here both ends are ipsecd.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, Gateways, transport_pair, tunnel_pair
from daemon_harness import Hosts as Pair
from netns import (
    HostToHost,
    Injector,
    SiteToSite,
    needs_root,
    ping,
    wait_until,
)
from scapy.layers.inet import ICMP, IP
from scapy.layers.ipsec import AH as ScapyAH
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

pytestmark = [pytest.mark.netns, needs_root()]

ESP, AH, ICMP_PROTO, ICMPV6 = 50, 51, 1, 58
ND = {133, 134, 135, 136, 143}  # RS, RA, NS, NA, MLDv2 report
# HMAC-SHA2-256 keys (32 bytes each way); not secret, deterministic.
AUTH_AB = bytes(range(0x40, 0x60))
AUTH_BA = bytes(range(0x60, 0x80))
SPI_AB, SPI_BA = 0x3001, 0x3002
N = 200  # hostile packets of each kind


def _ah_sas(a: str, b: str, mode: str, spi: int, ipcomp: int = 0,
            ah_mode: str = "") -> list[str]:
    """AH SAs both ways; with ``ipcomp`` (a CPI) IPComp SAs of that mode too.  ``ah_mode``:
    the AH SAs' mode when it differs (the nested form)."""
    comp = [f"add {a} {b} ipcomp {ipcomp:#x} -m {mode} -C deflate;",
            f"add {b} {a} ipcomp {ipcomp:#x} -m {mode} -C deflate;"] if ipcomp else []
    m = ah_mode or mode
    return [f"add {a} {b} ah {spi:#x} -m {m} -A hmac-sha256 0x{AUTH_AB.hex()};",
            f"add {b} {a} ah {spi + 1:#x} -m {m} -A hmac-sha256 0x{AUTH_BA.hex()};", *comp]


def transport_script(topo: HostToHost, side: str, *, ipcomp: int = 0) -> str:
    """``ipcomp``: a CPI, and ``ipcomp/transport//use`` before the AH request."""
    lines = ["flush;", "spdflush;"]
    req = ("ipcomp/transport//use " if ipcomp else "") + "ah/transport//require"
    for a, b in ((topo.a.v4, topo.b.v4), (topo.a.v6, topo.b.v6)):
        # The same SPIs for both families: the SAD key includes the destination.
        lines += _ah_sas(a, b, "transport", SPI_AB, ipcomp)
        local, peer = (a, b) if side == "a" else (b, a)
        lines += [f"spdadd {local} {peer} any -P out ipsec {req};",
                  f"spdadd {peer} {local} any -P in ipsec {req};"]
    return "\n".join(lines) + "\n"


def tunnel_script(topo: SiteToSite, side: str, *, ipcomp: int = 0, nested: bool = False) -> str:
    """``ipcomp``: a CPI, and ``ipcomp/tunnel/A-B/use`` before the AH request; ``nested``:
    Linux's form, ``ipcomp/tunnel/A-B/use ah/transport//require`` with transport-mode AH SAs."""
    lines = ["flush;", "spdflush;"]
    wans = ((topo.gw_a_wan.v4, topo.gw_b_wan.v4), (topo.gw_a_wan.v6, topo.gw_b_wan.v6))

    def req(x: str, y: str) -> str:
        ah = "ah/transport//require" if nested else f"ah/tunnel/{x}-{y}/require"
        return (f"ipcomp/tunnel/{x}-{y}/use " if ipcomp else "") + ah

    for (ga, gb), site_a, site_b, spi in zip(wans, topo.site_a, topo.site_b,
                                             (SPI_AB, SPI_AB + 0x600), strict=True):
        lines += _ah_sas(ga, gb, "tunnel", spi, ipcomp, "transport" if nested else "")
        if side == "a":
            lines += [f"spdadd {site_a} {site_b} any -P out ipsec {req(ga, gb)};",
                      f"spdadd {site_b} {site_a} any -P in ipsec {req(gb, ga)};"]
        else:
            lines += [f"spdadd {site_b} {site_a} any -P out ipsec {req(gb, ga)};",
                      f"spdadd {site_a} {site_b} any -P in ipsec {req(ga, gb)};"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with transport_pair(tmp_path_factory.mktemp("ah-transport"), "aht",
                        script=transport_script) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("ah-tunnel"), "ahu", script=tunnel_script) as g:
        yield g


def _v6_upper(f: bytes) -> tuple[int, int]:
    """(next header, offset) of an IPv6 frame's first header after a hop-by-hop header
    (MLD reports carry one)."""
    nh, at = f[14 + 6], 14 + 40
    if nh == 0 and len(f) >= at + 8:
        nh, at = f[at], at + (f[at + 1] + 1) * 8
    return nh, at


def _protocols(frames: list[bytes]) -> list[tuple[int, int]]:
    """(IP version, protocol or next header) of each Ethernet frame; (0, -1) for others."""
    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0800:
            out.append((4, f[14 + 9]))
        elif ethertype == 0x86DD:
            out.append((6, _v6_upper(f)[0]))
        else:
            out.append((0, -1))
    return out


def _icmpv6_types(frames: list[bytes]) -> set[int]:
    out = set()
    for f in frames:
        if struct.unpack_from("!H", f, 12)[0] == 0x86DD:
            nh, at = _v6_upper(f)
            if nh == ICMPV6 and at < len(f):
                out.add(f[at])
    return out


def _ah_spis(frames: list[bytes]) -> set[int]:
    out = set()
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0800 and f[14 + 9] == AH:
            out.add(struct.unpack_from("!I", f, 14 + (f[14] & 15) * 4 + 4)[0])
        elif ethertype == 0x86DD and f[14 + 6] == AH:
            out.add(struct.unpack_from("!I", f, 14 + 44)[0])
    return out


def _pings_only_in_ah(cap: Any, one: tuple[Any, str, str], other: tuple[Any, str, str]
                      ) -> list[bytes]:
    """Three pings each way over IPv4 and IPv6 between ``(namespace, v4, v6)`` ends; the
    frames ``cap`` saw, checked to hold all of them in AH and nothing else but IPv6
    neighbour discovery in clear."""
    for (src, _, _), (_, v4, v6) in ((one, other), (other, one)):
        assert ping(src, v4, count=3) == 3
        assert ping(src, v6, count=3) == 3
    cap.stop()
    frames: list[bytes] = cap.packets()
    protocols = _protocols(frames)
    # 4 x 3 echo requests and replies, each in AH: 12 per family.
    assert protocols.count((4, AH)) >= 12 and protocols.count((6, AH)) >= 12, protocols
    assert {p for _, p in protocols} <= {AH, ICMPV6, -1}, protocols  # no ESP, no clear ICMP
    assert _icmpv6_types(frames) <= ND  # IPv6: only neighbour discovery in clear
    return frames


def test_transport_ping_over_ah_both_ways_ipv4_and_ipv6(pair: Pair, tmp_path: Path) -> None:
    topo = pair.topo
    before = {spi: pair.b.sa(spi)["packets"] for spi in (SPI_AB,)}
    cap = topo.b.ns.capture("eth0", tmp_path / "wire.pcap")
    frames = _pings_only_in_ah(cap, (topo.a.ns, topo.a.v4, topo.a.v6),
                               (topo.b.ns, topo.b.v4, topo.b.v6))
    assert _ah_spis(frames) == {SPI_AB, SPI_BA}
    # Counted on B's inbound SA (both families share the SPI: both SAs moved).
    st = pair.b.status()
    inbound = [s for s in st["sas"] if s["spi"] == SPI_AB and s["direction"] == "in"]
    assert len(inbound) == 2 and all(s["packets"] >= 6 for s in inbound), inbound
    assert sum(s["packets"] for s in inbound) >= before[SPI_AB] + 12
    assert all(not s["drops"] for s in inbound), inbound
    assert "not supported" not in pair.a.log_text() + pair.b.log_text()


def test_transport_big_datagrams_without_df_over_ah(pair: Pair, tmp_path: Path) -> None:
    """RFC 4302 §3.3.4: AH over the whole datagram, then the outer packet in fragments.

    B's workers reassemble the AH fragments (their socket filters take them as
    ESP's) and verify the datagram whole.  1460 bytes of UDP payload fit A's
    TUN, 3000 and 8000 reach it in A's own fragments, reassembled first.
    """
    topo = pair.topo
    before = pair.b.query()["drops"]
    cap = topo.b.ns.capture("eth0", tmp_path / "frag.pcap", f"ip and src host {topo.a.v4}")
    with topo.b.ns.enter():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with topo.a.ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((topo.b.v4, 9700))
        rx.settimeout(3)
        tx.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
        for size in (1460, 3000, 8000):
            payload = random.randbytes(size)
            tx.sendto(payload, (topo.b.v4, 9700))
            assert rx.recv(65535) == payload, size
    finally:
        rx.close()
        tx.close()
        time.sleep(0.2)
        cap.stop()
    packets = [f[14:] for f in cap.packets() if struct.unpack_from("!H", f, 12)[0] == 0x0800]
    assert {p[9] for p in packets} == {AH}, "nothing but AH from A"
    fragments = [p for p in packets if struct.unpack_from("!H", p, 6)[0] & 0x3FFF]
    assert len(fragments) >= 11 and all(len(p) <= 1500 for p in packets)
    after = pair.b.query()["drops"]
    assert {r: n for r, n in after.items() if n != before.get(r, 0)} == {}


def test_tunnel_ping_between_the_sites_over_ah(gws: Gateways, tmp_path: Path) -> None:
    topo = gws.topo
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap")
    frames = _pings_only_in_ah(cap, (topo.net_a.ns, topo.net_a.v4, topo.net_a.v6),
                               (topo.net_b.ns, topo.net_b.v4, topo.net_b.v6))
    assert _ah_spis(frames) == {SPI_AB, SPI_AB + 1, SPI_AB + 0x600, SPI_AB + 0x601}
    # Every AH packet on the WAN is gateway to gateway, with the inner packet whole
    # behind AH (next header 4 or 41, RFC 4302 §3.1.2).
    for f in frames:
        if struct.unpack_from("!H", f, 12)[0] == 0x0800 and f[14 + 9] == AH:
            assert f[14 + 20] == 4
        elif struct.unpack_from("!H", f, 12)[0] == 0x86DD and f[14 + 6] == AH:
            assert f[14 + 40] == 41


def _drops(d: Daemon) -> dict[str, int]:
    drops: dict[str, int] = d.status()["drops"]
    return drops


def test_hostile_ah_is_counted_by_reason(gws: Gateways, tmp_path: Path) -> None:
    topo, b = gws.topo, gws.b
    ga, gb = topo.gw_a_wan, topo.gw_b_wan
    rng = random.Random(4302)
    st = b.status()
    pids, before = [w["pid"] for w in st["workers"]], st["drops"]
    sa_before = next(s for s in st["sas"] if s["spi"] == SPI_AB and s["direction"] == "in"
                     and "." in s["dst"])["drops"]

    # Real AH of SA 0x3001 (IPv4) on the wire, to replay later: whole IP packets.
    cap = ga.ns.capture("wan0", tmp_path / "ah.pcap", f"ip proto 51 and dst host {gb.v4}")
    assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    cap.stop()
    captured = [f[14:] for f in cap.packets()]
    assert len(captured) == 3 and all(p[24:28] == struct.pack("!I", SPI_AB) for p in captured)

    # Valid AH for SA 0x3001 from scapy with the real key, sequence numbers far ahead,
    # then one bit of the inner packet flipped: only the ICV can tell.
    sa = ScapySA(ScapyAH, spi=SPI_AB, auth_algo="SHA2-256-128",  # type: ignore[no-untyped-call]
                 auth_key=AUTH_AB, tunnel_header=IP(src=ga.v4, dst=gb.v4))
    sa.seq_num = 1 << 20
    flipped = []
    for i in range(N):
        inner = IP(src=topo.net_a.v4, dst=topo.net_b.v4) / ICMP(id=7, seq=i) / Raw(b"f" * 24)
        packet = bytearray(bytes(sa.encrypt(inner)))  # type: ignore[no-untyped-call]
        assert packet[9] == AH and len(packet) == 20 + 28 + len(inner)
        bit = rng.randrange(8 * (20 + 28 + 20), 8 * len(packet))  # in the inner ICMP
        packet[bit // 8] ^= 1 << (bit % 8)
        flipped.append(bytes(packet))

    inj = Injector(ga.ns)
    try:
        for i in range(N):
            # Truncated: the SA's SPI and a sequence number, then less than the ICV.
            inj.ip4(ga.v4, gb.v4, AH, struct.pack("!BBHII", 4, 5, 0, SPI_AB, (1 << 21) + i)
                    + rng.randbytes(rng.randrange(0, 16)))
            # Unknown SPI (never 0..255, reserved: RFC 4302 §2.4).
            inj.ip4(ga.v4, gb.v4, AH, struct.pack("!BBHII", 4, 5, 0,
                                                  rng.randrange(0x10000, 1 << 32), 1)
                    + rng.randbytes(rng.randrange(16, 100)))
            inj.raw4.sendto(flipped[i], (gb.v4, 0))
            inj.raw4.sendto(captured[i % len(captured)], (gb.v4, 0))
        for i in range(30):  # no room for an SPI (0-7 bytes of AH), IPv4 and IPv6
            runt = (struct.pack("!BBH", 4, 5, 0) + struct.pack("!I", SPI_AB))[:i % 8]
            inj.ip4(ga.v4, gb.v4, AH, runt)
            inj.ip6(ga.v6, gb.v6, AH, runt)
    finally:
        inj.close()

    expected = {"runt": N, "unknown_spi": N, "icv": N, "replay": N, "malformed": 60}

    def delta() -> dict[str, int]:
        now = b.query()["drops"]
        return {k: now.get(k, 0) - before.get(k, 0) for k in expected}

    wait_until(lambda: all(delta()[k] >= v for k, v in expected.items()), 5)
    after = b.status()
    got = {k: after["drops"].get(k, 0) - before.get(k, 0) for k in expected}
    assert got == expected
    assert set(after["drops"]) - set(expected) == set(before) - set(expected)
    sa_drops = next(s for s in after["sas"] if s["spi"] == SPI_AB and s["direction"] == "in"
                    and "." in s["dst"])["drops"]
    assert {k: sa_drops.get(k, 0) - sa_before.get(k, 0) for k in ("runt", "icv", "replay")} == {
        "runt": N, "icv": N, "replay": N}

    # The workers survived, and the tunnel still works (the flipped packets, far ahead,
    # failed their ICV before they could move the replay window).
    assert [w["pid"] for w in after["workers"]] == pids
    assert all(w["restarts"] == 0 and w["running"] for w in after["workers"])
    assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    assert b.log_text().count("Traceback") == 0
    assert os.path.exists(b.socket)


def test_esp_and_ah_bundle_is_refused_with_a_counted_drop(pair: Pair) -> None:
    """ESP+AH on one policy (RFC 4301 §4.5 bundle) is not supported: dropped, counted, logged."""
    topo, a = pair.topo, pair.a
    esp_sas = (f"add {topo.a.v4} {topo.b.v4} esp 0x3101 -m transport -E aes-gcm-16 "
               f"0x{bytes(20).hex()};\n")
    bundle = (f"spddelete {topo.a.v4} {topo.b.v4} any -P out;\n"
              f"spdadd {topo.a.v4} {topo.b.v4} any -P out ipsec "
              f"esp/transport//require ah/transport//require;\n")
    restore = (f"spddelete {topo.a.v4} {topo.b.v4} any -P out;\n"
               f"spdadd {topo.a.v4} {topo.b.v4} any -P out ipsec ah/transport//require;\n"
               f"delete {topo.a.v4} {topo.b.v4} esp 0x3101;\n")
    before = _drops(a).get("no_sa", 0)
    r = a.setkey(esp_sas + bundle)
    assert r.returncode == 0, r.stderr
    try:
        assert ping(topo.a.ns, topo.b.v4, count=2, interval=0.05, timeout=0.5) == 0
        assert wait_until(lambda: a.query()["drops"].get("no_sa", 0) >= before + 2, 3)
        assert "ESP+AH bundles are not supported by the datapath" in a.log_text()
    finally:
        r = a.setkey(restore)
        assert r.returncode == 0, r.stderr
    assert ping(topo.a.ns, topo.b.v4, count=3) == 3


# --- IPComp (RFC 3173) in front of AH ----------------------------------------------------------

CPI = 0x1000
PAYLOAD = b"IPComp in front of AH, RFC 3173 and RFC 4302. " * 25


def _ah_ipcomp_frames(frames: list[bytes], src: str, dst: str, spi: int,
                      key: bytes) -> list[tuple[int, bytes]]:
    """(IPComp next header, inflated data) of every AH packet ``src`` -> ``dst`` in ``frames``,
    its ICV checked by scapy's AH with ``key``; the AH next header must be 108."""
    import zlib

    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    out = []
    sa = ScapySA(ScapyAH, spi=spi, auth_algo="SHA2-256-128",  # type: ignore[no-untyped-call]
                 auth_key=key)
    for frame in frames:
        eth = Ether(frame)
        layer = IP if IP in eth else IPv6
        if layer not in eth or ScapyAH not in eth:
            continue
        packet = eth[layer]
        if (packet.src, packet.dst) != (src, dst):
            continue
        assert packet[ScapyAH].nh == 108 and packet[ScapyAH].spi == spi
        clear = sa.decrypt(packet)  # type: ignore[no-untyped-call]  # raises on a bad ICV
        data = bytes(clear.payload)
        next_header, _flags, cpi = struct.unpack_from("!BBH", data)
        assert cpi == CPI
        out.append((next_header, zlib.decompress(data[4:], -15)))
    return out


@pytest.fixture(scope="module")
def ipcomp_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with transport_pair(tmp_path_factory.mktemp("ah-ipcomp-tr"), "ahc",
                        script=lambda t, s: transport_script(t, s, ipcomp=CPI)) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def ipcomp_gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("ah-ipcomp-tu"), "ahd",
                     script=lambda t, s: tunnel_script(t, s, ipcomp=CPI)) as g:
        yield g


@pytest.mark.parametrize("family", [4, 6])
def test_transport_ipcomp_then_ah(ipcomp_pair: Pair, family: int, tmp_path: Path) -> None:
    """IP | AH (next header 108) | IPComp | deflate: scapy checks the ICV, zlib inflates."""
    topo = ipcomp_pair.topo
    a, b = (topo.a.v4, topo.b.v4) if family == 4 else (topo.a.v6, topo.b.v6)
    cap = topo.b.ns.capture("eth0", tmp_path / "wire.pcap")
    assert ping(topo.a.ns, b, count=3, payload=PAYLOAD) == 3
    cap.stop()
    frames = cap.packets()
    upper = ICMP_PROTO if family == 4 else ICMPV6
    for src, dst, spi, key in ((a, b, SPI_AB, AUTH_AB), (b, a, SPI_BA, AUTH_BA)):
        seen = _ah_ipcomp_frames(frames, src, dst, spi, key)
        assert len(seen) == 3 and all(nh == upper and data.endswith(PAYLOAD)
                                      for nh, data in seen), seen
    comp = [s for s in ipcomp_pair.b.status()["sas"]
            if s["protocol"] == "ipcomp" and s["dst"] == b]
    assert len(comp) == 1 and comp[0]["packets"] >= 3 and not comp[0]["drops"]


@pytest.fixture(scope="module")
def nested_gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("ah-ipcomp-ne"), "ahn",
                     script=lambda t, s: tunnel_script(t, s, ipcomp=CPI, nested=True)) as g:
        yield g


@pytest.mark.parametrize("form", ["ipcomp_gws", "nested_gws"])
@pytest.mark.parametrize("family", [4, 6])
def test_tunnel_ipcomp_then_ah(request: pytest.FixtureRequest, form: str, family: int,
                               tmp_path: Path) -> None:
    """One outer header: IP(gwA -> gwB) | AH (next header 108) | IPComp (4 / 41) | deflate
    of the inner packet - with AH in tunnel mode, and in Linux's nested form (AH in
    transport mode), whose small packets go as IP-in-IP inside AH."""
    ipcomp_gws: Gateways = request.getfixturevalue(form)
    topo = ipcomp_gws.topo
    if family == 4:
        ga, gb, dst, spi = topo.gw_a_wan.v4, topo.gw_b_wan.v4, topo.net_b.v4, SPI_AB
    else:
        ga, gb, dst, spi = topo.gw_a_wan.v6, topo.gw_b_wan.v6, topo.net_b.v6, SPI_AB + 0x600
    cap = topo.gw_b_wan.ns.capture("wan0", tmp_path / "wan.pcap")
    assert ping(topo.net_a.ns, dst, count=3, payload=PAYLOAD) == 3
    cap.stop()
    frames = cap.packets()
    for src, to, s, key in ((ga, gb, spi, AUTH_AB), (gb, ga, spi + 1, AUTH_BA)):
        seen = _ah_ipcomp_frames(frames, src, to, s, key)
        assert len(seen) == 3, seen
        assert all(nh == (4 if family == 4 else 41) and data.endswith(PAYLOAD)
                   for nh, data in seen)
    comp = [s for s in ipcomp_gws.b.status()["sas"]
            if s["protocol"] == "ipcomp" and s["dst"] == gb]
    assert len(comp) == 1 and comp[0]["packets"] >= 3 and not comp[0]["drops"]
    assert ping(topo.net_a.ns, dst, count=2, size=16) == 2  # below the threshold: uncompressed
