"""IPComp (RFC 3173, DEFLATE RFC 2394) in front of ESP between running ``ipsecd`` daemons.

The HOWTO's manual keying with ``add A B ipcomp 0x1000 -C deflate`` both ways
and policies ``ipcomp/transport//use esp/transport//require`` (host to host)
or ``ipcomp/tunnel/A-B/use esp/tunnel/A-B/require`` (site to site), IPv4 and
IPv6; site to site also Linux's nested form ``ipcomp/tunnel/A-B/use
esp/transport//require`` (ESP SAs in transport mode), on both gateways and
against the tunnel/tunnel form.  What goes on the wire is checked with implementations we did not
write: scapy's ESP decrypts captured packets with the script's keys, and
zlib's raw inflate turns the IPComp data back into what was sent.  A scapy
peer sends ESP(IPComp(raw deflate)) itself, and hostile IPComp inside valid
ESP is a counted drop that does not stop the daemon.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import (
    KEY_AB,
    KEY_BA,
    Daemon,
    Gateways,
    Hosts,
    start,
    transport_pair,
    transport_script,
    tunnel_pair,
    tunnel_script,
    wait_ready,
)
from netns import (
    HostToHost,
    Injector,
    Lab,
    Netns,
    SiteToSite,
    host_to_host,
    needs_root,
    ping,
    remove_stale,
    site_to_site,
    wait_until,
)
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

pytestmark = [pytest.mark.netns, needs_root()]

CPI = 0x1000
IPCOMP = 108
SO_MARK, MARK = 36, 1  # the daemons' default [datapath] mark
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
# Compressible, and big: about 1200 bytes of echo data.
PAYLOAD = b"IPComp in front of ESP, RFC 3173 and RFC 2394. " * 25


def _transport(topo: HostToHost, side: str) -> str:
    a, b = topo.a, topo.b
    v4 = transport_script(a.v4, b.v4, local=a.v4 if side == "a" else b.v4, ipcomp=CPI)
    # The IPv6 SAs share the IPv4 ones' SPIs and CPI: the destination tells them apart.
    v6 = transport_script(a.v6, b.v6, local=a.v6 if side == "a" else b.v6, ipcomp=CPI)
    return v4 + v6.replace("flush;\nspdflush;\n", "")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    with transport_pair(tmp_path_factory.mktemp("ipcomp-tr"), "ct", _transport) as pair:
        yield pair


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("ipcomp-tu"), "cu",
                     lambda topo, side: tunnel_script(topo, side, ipcomp=CPI)) as pair:
        yield pair


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Linux's form on both gateways: ipcomp/tunnel/A-B/use esp/transport//require."""
    with tunnel_pair(tmp_path_factory.mktemp("ipcomp-ne"), "cn",
                     lambda topo, side: tunnel_script(topo, side, ipcomp=CPI,
                                                      nested=True)) as pair:
        yield pair


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """gwA with Linux's nested form, gwB with the tunnel/tunnel form: one wire format."""
    with tunnel_pair(tmp_path_factory.mktemp("ipcomp-mx"), "cm",
                     lambda topo, side: tunnel_script(topo, side, ipcomp=CPI,
                                                      nested=side == "a")) as pair:
        yield pair


FORMS = ["tunnel", "nested", "mixed"]  # the fixture names are "gateways", "nested", "mixed"


def _pair(request: pytest.FixtureRequest, form: str) -> Gateways:
    pair: Gateways = request.getfixturevalue("gateways" if form == "tunnel" else form)
    return pair


def _scapy_sa(spi: int, key: str) -> ScapySA:
    """scapy's ESP SA for one of the script's AES-GCM-16 SAs (key + salt, as setkey has it)."""
    return ScapySA(ESP, spi=spi, crypt_algo="AES-GCM",  # type: ignore[no-untyped-call]
                   crypt_key=bytes.fromhex(key[2:]))


def _tunnel_ends(topo: Any, family: int) -> tuple[str, str, str, str, dict[tuple[str, str], ScapySA]]:
    """gwA's and gwB's wan addresses, netA's and netB's, and scapy's SA for each direction
    of the tunnel script's ESP SAs (0x2001/0x2002 over IPv4, 0x2601/0x2602 over IPv6)."""
    v = "v4" if family == 4 else "v6"
    ga, gb = getattr(topo.gw_a_wan, v), getattr(topo.gw_b_wan, v)
    spi = 0x2001 if family == 4 else 0x2601
    return (ga, gb, getattr(topo.net_a, v), getattr(topo.net_b, v),
            {(ga, gb): _scapy_sa(spi, KEY_AB), (gb, ga): _scapy_sa(spi + 1, KEY_BA)})


def _esp_frames(frames: list[bytes]) -> list[Packet]:
    """The captured frames' IP packets, after checking nothing but ESP carried traffic.

    IPv4: ESP only (ARP is not IP); IPv6: ESP, or neighbour discovery / MLD.
    """
    out = []
    for frame in frames:
        eth = Ether(frame)
        if IP in eth:
            assert eth[IP].proto == 50, eth.summary()
            out.append(eth[IP])
        elif IPv6 in eth:
            ip6 = eth[IPv6]
            if ip6.nh == 50:
                out.append(ip6)
            else:
                assert ip6.nh in (0, 58), ip6.summary()  # ND, or MLD after hop-by-hop
                assert ICMPv6EchoRequest not in ip6 and ICMPv6EchoReply not in ip6
    return out


def _ipcomp_of(packet: Packet, sa: ScapySA) -> tuple[int, int, bytes]:
    """Decrypt with scapy's ESP: (ESP next header, IPComp next header, inflated data)."""
    clear = sa.decrypt(packet)  # type: ignore[no-untyped-call]  # transport: IP + payload
    nh = clear.proto if clear.version == 4 else clear.nh
    data = bytes(clear.payload)
    next_header, _flags, cpi = struct.unpack_from("!BBH", data)
    assert cpi == CPI
    return nh, next_header, zlib.decompress(data[4:], -15)


@pytest.mark.parametrize("family", [4, 6])
def test_transport_ping_is_compressed_then_encrypted(hosts: Hosts, family: int,
                                                     tmp_path: Path) -> None:
    topo = hosts.topo
    a, b = (topo.a.v4, topo.b.v4) if family == 4 else (topo.a.v6, topo.b.v6)
    cap = topo.a.ns.capture("eth0", tmp_path / "link.pcap")
    assert ping(topo.a.ns, b, count=3, payload=PAYLOAD) == 3
    cap.stop()
    esp = _esp_frames(cap.packets())
    keys = {(a, b): _scapy_sa(0x1001, KEY_AB), (b, a): _scapy_sa(0x1002, KEY_BA)}
    seen = {(a, b): 0, (b, a): 0}
    for packet in esp:
        if (packet.src, packet.dst) not in keys:
            continue
        nh, inner_nh, data = _ipcomp_of(packet, keys[(packet.src, packet.dst)])
        assert nh == IPCOMP and inner_nh == (1 if family == 4 else 58)
        assert data.endswith(PAYLOAD)  # ICMP header, then the echo data
        seen[(packet.src, packet.dst)] += 1
    assert seen == {(a, b): 3, (b, a): 3}, esp
    # The IPComp SAs count their packets (ipsecd status, as setkey -D would show them).
    sas = [sa for sa in hosts.a.status()["sas"]
           if sa["protocol"] == "ipcomp" and family == (6 if ":" in sa["dst"] else 4)]
    by_dir = {sa["direction"]: sa for sa in sas}
    assert by_dir["out"]["spi"] == by_dir["in"]["spi"] == CPI
    assert by_dir["out"]["packets"] >= 3 and by_dir["in"]["packets"] >= 3
    assert by_dir["in"]["bytes"] >= 3 * len(PAYLOAD)
    assert not by_dir["in"]["drops"] and not by_dir["out"]["drops"]
    dump = hosts.a.ipsecd("setkey", "-D")
    assert dump.returncode == 0 and "ipcomp" in dump.stdout, dump.stdout + dump.stderr


def test_small_packets_go_uncompressed_and_are_accepted(hosts: Hosts, tmp_path: Path) -> None:
    """Below the threshold (90 bytes) the packet is plain ESP, and the peer takes it
    (RFC 3173 §2.2): its ESP next header is the upper protocol."""
    topo = hosts.topo
    a, b = topo.a.v4, topo.b.v4
    cap = topo.a.ns.capture("eth0", tmp_path / "link.pcap", "esp")
    assert ping(topo.a.ns, b, count=2, size=16) == 2
    cap.stop()
    sa = _scapy_sa(0x1001, KEY_AB)
    out = [p for p in _esp_frames(cap.packets()) if (p.src, p.dst) == (a, b)]
    assert len(out) == 2
    for packet in out:
        clear = sa.decrypt(packet)  # type: ignore[no-untyped-call]
        assert clear.proto == 1 and ICMP in clear


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("family", [4, 6])
def test_tunnel_ping_is_compressed_then_encrypted(request: pytest.FixtureRequest, form: str,
                                                  family: int, tmp_path: Path) -> None:
    """Both forms (and one of each) put one outer header on the wire: ESP next header
    108, IPComp's 4 / 41, the inner packet compressed."""
    gateways = _pair(request, form)
    topo = gateways.topo
    ga, gb, src, dst, keys = _tunnel_ends(topo, family)
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap")
    assert ping(topo.net_a.ns, dst, count=3, payload=PAYLOAD) == 3
    cap.stop()
    seen = {(ga, gb): 0, (gb, ga): 0}
    for packet in _esp_frames(cap.packets()):
        if (packet.src, packet.dst) not in keys:
            continue
        nh, inner_nh, data = _ipcomp_of(packet, keys[(packet.src, packet.dst)])
        # One outer header: ESP next header 108, IPComp's 4 / 41, the inner packet compressed.
        assert nh == IPCOMP and inner_nh == (4 if family == 4 else 41)
        inner = IP(data) if family == 4 else IPv6(data)
        assert {inner.src, inner.dst} == {src, dst}
        assert bytes(inner.payload).endswith(PAYLOAD)
        seen[(packet.src, packet.dst)] += 1
    assert seen == {(ga, gb): 3, (gb, ga): 3}
    for daemon, local in ((gateways.a, ga), (gateways.b, gb)):
        st = daemon.status()
        comp = [sa for sa in st["sas"] if sa["protocol"] == "ipcomp" and sa["dst"] == local]
        assert len(comp) == 1 and comp[0]["packets"] >= 3 and comp[0]["mode"] == "tunnel"
        assert not comp[0]["drops"]


@pytest.mark.parametrize("form", ["nested", "mixed"])
@pytest.mark.parametrize("family", [4, 6])
def test_tunnel_small_packets_go_as_ip_in_ip(request: pytest.FixtureRequest, form: str,
                                             family: int, tmp_path: Path) -> None:
    """Below the threshold Linux's IPComp tunnel state leaves the packet as IP-in-IP, so
    the nested form sends ESP next header 4 / 41 (the tunnel/tunnel form's plain
    tunnel-mode ESP on the wire) and takes it from either form."""
    gateways = _pair(request, form)
    topo = gateways.topo
    ga, gb, src, dst, keys = _tunnel_ends(topo, family)
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap")
    assert ping(topo.net_a.ns, dst, count=2, size=16) == 2
    cap.stop()
    seen = {(ga, gb): 0, (gb, ga): 0}
    for packet in _esp_frames(cap.packets()):
        if (packet.src, packet.dst) not in keys:
            continue
        clear = keys[(packet.src, packet.dst)].decrypt(packet)  # type: ignore[no-untyped-call]
        nh = clear.proto if family == 4 else clear.nh
        assert nh == (4 if family == 4 else 41)
        inner = clear.payload
        assert {inner.src, inner.dst} == {src, dst}
        seen[(packet.src, packet.dst)] += 1
    assert seen == {(ga, gb): 2, (gb, ga): 2}


def test_nested_without_its_ipcomp_sa_sends_ip_in_ip(nested: Gateways, tmp_path: Path) -> None:
    """gwA's outbound IPComp SA removed: its nested policy's traffic still leaves, as
    IP-in-IP inside the transport-mode ESP SA (IPComp is optional, RFC 3173 §2.2), and
    gwB (whose IPComp SA is still there) delivers it; put back, compression resumes."""
    topo = nested.topo
    ga, gb, dst = topo.gw_a_wan.v4, topo.gw_b_wan.v4, topo.net_b.v4
    sa = _scapy_sa(0x2001, KEY_AB)

    def next_headers() -> list[int]:
        cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap", "esp")
        assert ping(topo.net_a.ns, dst, count=2, payload=PAYLOAD) == 2
        cap.stop()
        return [sa.decrypt(p).proto  # type: ignore[no-untyped-call]
                for p in _esp_frames(cap.packets()) if (p.src, p.dst) == (ga, gb)]

    gone = nested.a.ipsecd("setkey", "-c", input=f"delete {ga} {gb} ipcomp {CPI:#x};\n".encode())
    assert gone.returncode == 0, gone.stderr
    try:
        assert next_headers() == [4, 4]
    finally:
        back = nested.a.ipsecd("setkey", "-c", input=(
            f"add {ga} {gb} ipcomp {CPI:#x} -m tunnel -C deflate;\n").encode())
        assert back.returncode == 0, back.stderr
    assert next_headers() == [IPCOMP, IPCOMP]


def test_nested_takes_only_what_its_policy_covers(nested: Gateways) -> None:
    """In authentic transport-mode ESP from gwA: IP-in-IP and IPComp tunnel packets whose
    inner source is not site A's are `policy_mismatch` on gwB's ESP SA; the same with site
    A's source is delivered (counted on the SA).

    On the IPv6 SA A -> B with sequence numbers far ahead of daemon A's: no later test
    sends IPv6 through this pair."""
    topo = nested.topo
    ga, gb = topo.gw_a_wan.v6, topo.gw_b_wan.v6
    good, dst = topo.net_a.v6, topo.net_b.v6
    bad = "2001:db8:dead::1"  # in no policy of gwB
    sa = _scapy_sa(0x2601, KEY_AB)
    sa.seq_num = 1 << 20

    def esp_sa() -> dict[str, Any]:
        found: dict[str, Any] = next(x for x in nested.b.status()["sas"]
                                     if x["protocol"] == "esp" and x["spi"] == 0x2601)
        return found

    def inner(src: str) -> bytes:
        return bytes(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=7, data=PAYLOAD))

    def compressed(src: str) -> Packet:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = struct.pack("!BBH", 41, 0, CPI) + deflater.compress(inner(src)) + deflater.flush()
        return IPv6(src=ga, dst=gb, nh=IPCOMP) / Raw(body)

    before = esp_sa()
    mismatched = before["drops"].get("policy_mismatch", 0)
    inj = _marked_injector(topo.gw_a_wan.ns)
    try:
        for packet in (IPv6(src=ga, dst=gb, nh=41) / Raw(inner(bad)), compressed(bad)):
            inj.raw6.sendto(bytes(sa.encrypt(packet)), (gb, 0))  # type: ignore[no-untyped-call]
        assert wait_until(
            lambda: esp_sa()["drops"].get("policy_mismatch", 0) == mismatched + 2, 3), esp_sa()
        for packet in (IPv6(src=ga, dst=gb, nh=41) / Raw(inner(good)), compressed(good)):
            inj.raw6.sendto(bytes(sa.encrypt(packet)), (gb, 0))  # type: ignore[no-untyped-call]
        assert wait_until(lambda: esp_sa()["packets"] == before["packets"] + 2, 3), esp_sa()
    finally:
        inj.close()
    assert esp_sa()["drops"].get("policy_mismatch", 0) == mismatched + 2
    assert not _ipcomp_drops(nested.b, gb)


def _marked_injector(ns: Netns) -> Injector:
    """Raw sockets that skip the daemon's routing table (as its own ESP does)."""
    inj = Injector(ns)
    for sock in (inj.raw4, inj.raw6):
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    return inj


def _ipcomp_drops(daemon: Daemon, dst: str) -> dict[str, int]:
    sa = next(sa for sa in daemon.status()["sas"]
              if sa["protocol"] == "ipcomp" and sa["dst"] == dst)
    drops: dict[str, int] = sa["drops"]
    return drops


def test_hostile_ipcomp_inside_valid_esp_is_a_counted_drop(hosts: Hosts) -> None:
    """A decompression bomb and garbage, in ESP that authenticates: `decompress` drops on the
    IPComp SA, an unknown CPI `unknown_spi` on the ESP SA; the daemon keeps forwarding.

    Sent on the IPv6 SA B -> A with sequence numbers far ahead of daemon B's, so
    A's window for it moves past what B will send: IPv4 shows the forwarding.
    """
    topo = hosts.topo
    a, b = topo.a.v6, topo.b.v6
    sa = _scapy_sa(0x1002, KEY_BA)  # B -> A, as daemon B would send
    sa.seq_num = 1 << 20
    bomber = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = bomber.compress(bytes(1 << 20)) + bomber.flush()  # 1 MiB of zeros in ~1 KiB
    assert len(bomb) < 1400

    def esp_drops() -> dict[str, int]:
        esp = next(s for s in hosts.a.status()["sas"]
                   if s["protocol"] == "esp" and s["spi"] == 0x1002 and s["dst"] == a)
        drops: dict[str, int] = esp["drops"]
        return drops

    before = _ipcomp_drops(hosts.a, a).get("decompress", 0)
    unknown = esp_drops().get("unknown_spi", 0)
    inj = _marked_injector(topo.b.ns)
    try:
        for cpi, body in ((CPI, bomb), (CPI, os.urandom(600)), (CPI, b""), (0x1234, bomb)):
            packet = IPv6(src=b, dst=a, nh=IPCOMP) / Raw(struct.pack("!BBH", 58, 0, cpi) + body)
            inj.raw6.sendto(bytes(sa.encrypt(packet)), (a, 0))  # type: ignore[no-untyped-call]
    finally:
        inj.close()
    assert wait_until(lambda: _ipcomp_drops(hosts.a, a).get("decompress", 0) == before + 3, 3), \
        _ipcomp_drops(hosts.a, a)
    assert wait_until(lambda: esp_drops().get("unknown_spi", 0) == unknown + 1, 3), esp_drops()
    assert hosts.a.proc.poll() is None
    assert ping(topo.b.ns, topo.a.v4, count=2, payload=PAYLOAD) == 2
    assert ping(topo.a.ns, topo.b.v4, count=2, payload=PAYLOAD) == 2


# --- a peer we did not write: scapy sends ESP(IPComp(raw deflate)) -------------------------


@dataclass
class ScapyPeer:
    topo: HostToHost
    gateway: Daemon  # on B; scapy plays A


@pytest.fixture(scope="module")
def scapy_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScapyPeer]:
    remove_stale()
    workdir = tmp_path_factory.mktemp("ipcomp-scapy")
    with Lab("cs") as lab:
        topo = host_to_host(lab)
        # A's kernel has no ESP: keep it from answering (AF_PACKET still sees the packets).
        topo.a.ns.run("nft", "-f", "-", input=b"table inet scapy { chain input { "
                      b"type filter hook input priority -300; meta l4proto esp drop; }; }\n")
        gw = start(topo.b.ns, workdir, "cs-b", outside=["eth0"], script=_transport(topo, "b"),
                   wait=False)
        try:
            wait_ready(gw)
            yield ScapyPeer(topo, gw)
        finally:
            status = gw.stop()
        assert status == 0, gw.log_text()


@pytest.mark.parametrize("family", [4, 6])
def test_scapy_peer_sends_compressed_echo_requests(scapy_peer: ScapyPeer, family: int) -> None:
    topo = scapy_peer.topo
    a, b = (topo.a.v4, topo.b.v4) if family == 4 else (topo.a.v6, topo.b.v6)
    sa_out, sa_in = _scapy_sa(0x1001, KEY_AB), _scapy_sa(0x1002, KEY_BA)
    ident = os.getpid() & 0xFFFF
    count = 3
    with topo.a.ns.enter():
        tx = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                           socket.IPPROTO_RAW)
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        rx.bind(("eth0", 0))
    replies: dict[int, bytes] = {}
    try:
        for seq in range(count):
            if family == 4:
                icmp = bytes(ICMP(type=8, id=ident, seq=seq) / Raw(PAYLOAD))
                head: Packet = IP(src=a, dst=b, proto=IPCOMP)
            else:
                icmp = bytes(IPv6(src=a, dst=b) / ICMPv6EchoRequest(id=ident, seq=seq,
                                                                    data=PAYLOAD))[40:]
                head = IPv6(src=a, dst=b, nh=IPCOMP)
            deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = struct.pack("!BBH", 1 if family == 4 else 58, 0, CPI) + (
                deflater.compress(icmp) + deflater.flush())
            tx.sendto(bytes(sa_out.encrypt(head / Raw(body))),  # type: ignore[no-untyped-call]
                      (b, 0))
        deadline = time.monotonic() + 5
        while len(replies) < count and time.monotonic() < deadline:
            if not select.select([rx], [], [], 0.1)[0]:
                continue
            data, address = rx.recvfrom(65535)
            if address[2] == PACKET_OUTGOING or data[0] >> 4 != family:
                continue
            packet = IP(data) if family == 4 else IPv6(data)
            if ESP not in packet or packet[ESP].spi != 0x1002:
                continue
            nh, inner_nh, inflated = _ipcomp_of(packet, sa_in)  # ipsecd compressed the reply
            assert nh == IPCOMP and inner_nh == (1 if family == 4 else 58)
            if family == 4:
                reply = ICMP(inflated)
                assert reply.type == 0 and reply.id == ident
                replies[reply.seq] = bytes(reply.payload)
            else:
                reply6 = IPv6(bytes(IPv6(src=b, dst=a, nh=58, plen=len(inflated)))
                              + inflated)[ICMPv6EchoReply]
                assert reply6.id == ident
                replies[reply6.seq] = bytes(reply6.data)
    finally:
        tx.close()
        rx.close()
    assert sorted(replies) == list(range(count)), scapy_peer.gateway.status()["drops"]
    assert all(data == PAYLOAD for data in replies.values())


@dataclass
class ScapyGateway:
    topo: SiteToSite
    gateway: Daemon  # gwB; scapy plays gwA


@pytest.fixture(scope="module")
def scapy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScapyGateway]:
    remove_stale()
    workdir = tmp_path_factory.mktemp("ipcomp-scapy-tunnel")
    with Lab("cg") as lab:
        topo = site_to_site(lab, routed=False)
        topo.gw_a_wan.ns.run("nft", "-f", "-", input=b"table inet scapy { chain input { "
                             b"type filter hook input priority -300; meta l4proto esp drop; }; }\n")
        gw = start(topo.gw_b_wan.ns, workdir, "cg-b", outside=["wan0"],
                   script=tunnel_script(topo, "b", ipcomp=CPI), wait=False)
        try:
            wait_ready(gw)
            yield ScapyGateway(topo, gw)
        finally:
            status = gw.stop()
        assert status == 0, gw.log_text()


def test_scapy_gateway_sends_compressed_tunnel_traffic(scapy_gateway: ScapyGateway) -> None:
    """scapy as gateway A: IP(gwA -> gwB) | ESP | IPComp(next header 4) | raw deflate of an
    echo request from site A to a host of site B; the reply comes back the same way."""
    topo = scapy_gateway.topo
    ga, gb = topo.gw_a_wan.v4, topo.gw_b_wan.v4
    src, dst = topo.net_a.v4, topo.net_b.v4
    sa_out, sa_in = _scapy_sa(0x2001, KEY_AB), _scapy_sa(0x2002, KEY_BA)
    ident, count = os.getpid() & 0xFFFF, 3
    with topo.gw_a_wan.ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        rx.bind(("wan0", 0))
    replies: dict[int, bytes] = {}
    try:
        for seq in range(count):
            inner = bytes(IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=seq) / Raw(PAYLOAD))
            deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = struct.pack("!BBH", 4, 0, CPI) + deflater.compress(inner) + deflater.flush()
            packet = IP(src=ga, dst=gb, proto=IPCOMP) / Raw(body)
            tx.sendto(bytes(sa_out.encrypt(packet)), (gb, 0))  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 5
        while len(replies) < count and time.monotonic() < deadline:
            if not select.select([rx], [], [], 0.1)[0]:
                continue
            data, address = rx.recvfrom(65535)
            if address[2] == PACKET_OUTGOING or data[0] >> 4 != 4:
                continue
            packet = IP(data)
            if ESP not in packet or packet[ESP].spi != 0x2002:
                continue
            nh, inner_nh, inflated = _ipcomp_of(packet, sa_in)
            assert (nh, inner_nh) == (IPCOMP, 4)
            reply = IP(inflated)
            assert (reply.src, reply.dst) == (dst, src)
            assert reply[ICMP].type == 0 and reply[ICMP].id == ident
            replies[reply[ICMP].seq] = bytes(reply[ICMP].payload)
    finally:
        tx.close()
        rx.close()
    assert sorted(replies) == list(range(count)), scapy_gateway.gateway.status()["drops"]
    assert all(data == PAYLOAD for data in replies.values())


def test_hostile_ipcomp_in_tunnel_mode_esp_is_a_counted_drop(gateways: Gateways) -> None:
    """Tunnel mode (ESP next header 108): a bomb, garbage, an empty stream and a wrong
    IPComp next header, in authentic ESP, are counted on B's IPComp SA; B keeps forwarding.

    Last in the module: the IPv6 SA's window at B moves far past what A will send."""
    topo = gateways.topo
    ga, gb = topo.gw_a_wan.v6, topo.gw_b_wan.v6
    sa = _scapy_sa(0x2601, KEY_AB)  # A -> B over the IPv6 WAN, as daemon A would send
    sa.seq_num = 1 << 20
    bomber = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = bomber.compress(bytes(1 << 20)) + bomber.flush()
    before = _ipcomp_drops(gateways.b, gb)
    inj = _marked_injector(topo.gw_a_wan.ns)
    try:
        for nh, body in ((41, bomb), (41, os.urandom(700)), (41, b""), (6, bomb)):
            packet = IPv6(src=ga, dst=gb, nh=IPCOMP) / Raw(struct.pack("!BBH", nh, 0, CPI) + body)
            inj.raw6.sendto(bytes(sa.encrypt(packet)), (gb, 0))  # type: ignore[no-untyped-call]
    finally:
        inj.close()

    def counted() -> bool:
        now = _ipcomp_drops(gateways.b, gb)
        return (now.get("decompress", 0) == before.get("decompress", 0) + 3
                and now.get("bad_next_header", 0) == before.get("bad_next_header", 0) + 1)

    assert wait_until(counted, 3), _ipcomp_drops(gateways.b, gb)
    assert gateways.b.proc.poll() is None
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2, payload=PAYLOAD) == 2
