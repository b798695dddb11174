"""A running ``ipsecd`` gateway against an ESP and AH implementation we did not write: scapy.

The peer is scapy's ``scapy.layers.ipsec.SecurityAssociation`` with the same
manual keys, in a namespace of its own that has no IPsec at all: it encrypts
an ICMP echo request, sends the ESP packet through a raw socket, reads the
ESP that comes back from the wire (an AF_PACKET socket; an nftables rule
keeps the peer's kernel from answering ESP with protocol-unreachable), and
decrypts it.  The echo reply must carry the request's id, sequence number
and data.

* transport mode (``scapy ── ipsecd``, netns.host_to_host): the gateway
  itself answers;
* tunnel mode (``scapy ══ gwB(ipsecd) ── netB``, netns.site_to_site): scapy
  plays gateway A with an inner packet from site A, a host behind ipsecd
  answers, the reply comes back tunnelled.

ESP with AES-GCM-16 and AES-CBC + HMAC-SHA256, and AH (RFC 4302) with
HMAC-SHA256 (scapy's ``SecurityAssociation(AH, ...)``: its ICV over the
immutable header fields is computed independently of ours), over IPv4 and
IPv6.  For AH "decrypt" is scapy's ICV check.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_harness import Daemon, start, wait_ready
from netns import Lab, Netns, host_to_host, needs_root, remove_stale, site_to_site
from scapy.layers.inet import ICMP, IP, UDP, defragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    defragment6,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Packet, Raw

pytestmark = [pytest.mark.netns, needs_root()]

ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
SPI_IN, SPI_OUT = 0x5001, 0x5002  # seen from ipsecd: scapy -> ipsecd, ipsecd -> scapy


@dataclass(frozen=True)
class Alg:
    setkey_name: str
    scapy_crypt: str
    scapy_auth: str | None
    enc_key: tuple[bytes, bytes]  # scapy -> ipsecd, ipsecd -> scapy (GCM: key + salt)
    auth_key: tuple[bytes, bytes] | None
    protocol: str = "esp"  # or "ah": no encryption, setkey_name and enc_key unused

    @property
    def layer(self) -> type[Packet]:
        return AH if self.protocol == "ah" else ESP

    def setkey(self, direction: int) -> str:
        text = "" if self.protocol == "ah" else (
            f"-E {self.setkey_name} 0x{self.enc_key[direction].hex()} ")
        if self.auth_key is not None:
            text += f"-A hmac-sha256 0x{self.auth_key[direction].hex()}"
        return text.strip()

    def scapy(self, direction: int, spi: int, tunnel: Packet | None) -> ScapySA:
        auth_key = None if self.auth_key is None else self.auth_key[direction]
        if self.protocol == "ah":
            return ScapySA(  # type: ignore[no-untyped-call]
                AH, spi=spi, auth_algo=self.scapy_auth, auth_key=auth_key, tunnel_header=tunnel)
        return ScapySA(  # type: ignore[no-untyped-call]
            ESP, spi=spi, crypt_algo=self.scapy_crypt, crypt_key=self.enc_key[direction],
            auth_algo=self.scapy_auth, auth_key=auth_key, tunnel_header=tunnel)


ALGS = {
    "aes-gcm": Alg("aes-gcm-16", "AES-GCM", None,
                   (bytes.fromhex("4c80cdefbb5d10da906ac73c3613a634" "2e443b68"),
                    bytes.fromhex("feffe9928665731c6d6a8f9467308308" "cafebabe")), None),
    "aes-cbc-sha256": Alg(
        "aes-cbc", "AES-CBC", "SHA2-256-128",
        (bytes.fromhex("c286696d887c9aa0611bbb3e2025a45a"),
         bytes.fromhex("56e47a38c5598974bc46903dba290349")),
        (bytes.fromhex("0102030405060708090a0b0c0d0e0f10111213141516171819" "1a1b1c1d1e1f20"),
         bytes.fromhex("202122232425262728292a2b2c2d2e2f30313233343536373839" "3a3b3c3d3e3f"))),
    "ah-sha256": Alg(
        "", "NULL", "SHA2-256-128", (b"", b""),
        (bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
         bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf")),
        protocol="ah"),
}
CASES = [(mode, alg) for mode in ("transport", "tunnel") for alg in ALGS]


@dataclass
class Setup:
    mode: str
    alg: Alg
    gateway: Daemon
    scapy_ns: Netns
    scapy_if: str
    # per family: (scapy's outer address, ipsecd's outer address,
    #              inner source, inner destination that answers)
    addrs: dict[int, tuple[str, str, str, str]]


def _script(mode: str, alg: Alg, addrs: dict[int, tuple[str, str, str, str]],
            sites: dict[int, tuple[str, str]]) -> str:
    """ipsecd's side, HOWTO style: the scapy peer is "A", ipsecd is "B"."""
    lines = ["flush;", "spdflush;"]
    for family, (peer, me, _, _) in addrs.items():
        off = 0 if family == 4 else 0x100
        p = alg.protocol
        lines += [f"add {peer} {me} {p} {SPI_IN + off:#x} -m {mode} {alg.setkey(0)};",
                  f"add {me} {peer} {p} {SPI_OUT + off:#x} -m {mode} {alg.setkey(1)};"]
        site_a, site_b = sites[family]
        if mode == "transport":
            lines += [f"spdadd {me} {peer} any -P out ipsec {p}/transport//require;",
                      f"spdadd {peer} {me} any -P in ipsec {p}/transport//require;"]
        else:
            lines += [f"spdadd {site_b} {site_a} any -P out ipsec "
                      f"{p}/tunnel/{me}-{peer}/require;",
                      f"spdadd {site_a} {site_b} any -P in ipsec "
                      f"{p}/tunnel/{peer}-{me}/require;"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{a}" for m, a in CASES])
def setup(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    mode, alg_name = request.param
    alg = ALGS[alg_name]
    remove_stale()
    workdir = tmp_path_factory.mktemp(f"interop-{mode}-{alg_name}")
    with Lab("sc") as lab:
        if mode == "transport":
            h = host_to_host(lab)
            addrs = {4: (h.a.v4, h.b.v4, h.a.v4, h.b.v4), 6: (h.a.v6, h.b.v6, h.a.v6, h.b.v6)}
            sites = {4: (f"{h.a.v4}/32", f"{h.b.v4}/32"), 6: (f"{h.a.v6}/128", f"{h.b.v6}/128")}
            scapy_ns, scapy_if, gw_ns, outside = h.a.ns, "eth0", h.b.ns, "eth0"
        else:
            t = site_to_site(lab, routed=False)
            addrs = {4: (t.gw_a_wan.v4, t.gw_b_wan.v4, t.net_a.v4, t.net_b.v4),
                     6: (t.gw_a_wan.v6, t.gw_b_wan.v6, t.net_a.v6, t.net_b.v6)}
            sites = {4: (t.site_a[0], t.site_b[0]), 6: (t.site_a[1], t.site_b[1])}
            scapy_ns, scapy_if, gw_ns, outside = t.gw_a_wan.ns, "wan0", t.gw_b_wan.ns, "wan0"
        # The scapy side's kernel has no ESP or AH: keep it from answering what it gets
        # (protocol unreachable); AF_PACKET sockets still see the packets.
        scapy_ns.run("nft", "-f", "-", input=b"table inet scapy { chain input { "
                     b"type filter hook input priority -300; "
                     b"meta l4proto { esp, ah } drop; }; }\n")
        gw = start(gw_ns, workdir, f"sc-{mode[:2]}-{alg_name[4:7]}", outside=[outside],
                   script=_script(mode, alg, addrs, sites), wait=False)
        try:
            wait_ready(gw)
            yield Setup(mode, alg, gw, scapy_ns, scapy_if, addrs)
        finally:
            status = gw.stop()
        assert status == 0, gw.log_text()


def _echo(family: int, src: str, dst: str, ident: int, seq: int, data: bytes) -> Packet:
    if family == 4:
        return IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=seq) / Raw(data)
    return IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq, data=data)


@pytest.mark.parametrize("family", [4, 6])
def test_scapy_pings_through_ipsecd(setup: Setup, family: int) -> None:
    peer, me, inner_src, inner_dst = setup.addrs[family]
    off = 0 if family == 4 else 0x100
    tunnel_out = tunnel_in = None
    if setup.mode == "tunnel":
        outer = IP if family == 4 else IPv6
        tunnel_out, tunnel_in = outer(src=peer, dst=me), outer(src=me, dst=peer)
    sa_out = setup.alg.scapy(0, SPI_IN + off, tunnel_out)  # scapy -> ipsecd
    sa_in = setup.alg.scapy(1, SPI_OUT + off, tunnel_in)  # ipsecd -> scapy
    ident = os.getpid() & 0xFFFF
    count = 3
    with setup.scapy_ns.enter():
        tx = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                           socket.IPPROTO_RAW)
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        rx.bind((setup.scapy_if, 0))
    before = setup.gateway.sa(SPI_IN + off)["packets"]
    replies: dict[int, Packet] = {}
    try:
        payloads = {seq: f"scapy->ipsecd {setup.mode} seq {seq} ".encode() * 3
                    for seq in range(count)}
        for seq in range(count):
            request = _echo(family, inner_src, inner_dst, ident, seq, payloads[seq])
            tx.sendto(bytes(sa_out.encrypt(request)), (me, 0))  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 5
        while len(replies) < count and time.monotonic() < deadline:
            if not select.select([rx], [], [], 0.1)[0]:
                continue
            data, address = rx.recvfrom(65535)
            if address[2] == PACKET_OUTGOING:
                continue
            packet = IP(data) if family == 4 and data[0] >> 4 == 4 else (
                IPv6(data) if family == 6 and data[0] >> 4 == 6 else None)
            layer = setup.alg.layer
            if packet is None or layer not in packet or packet[layer].spi != SPI_OUT + off:
                continue
            assert (packet.src, packet.dst) == (me, peer)
            clear = sa_in.decrypt(packet)  # type: ignore[no-untyped-call]
            # scapy's AH "decrypt" (the ICV check) leaves the payload unparsed: parse it.
            clear = (IP if family == 4 else IPv6)(bytes(clear))
            if family == 4:
                assert clear[ICMP].type == 0 and clear[ICMP].id == ident
                replies[clear[ICMP].seq] = clear
            else:
                assert ICMPv6EchoReply in clear and clear[ICMPv6EchoReply].id == ident
                replies[clear[ICMPv6EchoReply].seq] = clear
    finally:
        tx.close()
        rx.close()
    assert sorted(replies) == list(range(count)), setup.gateway.status()["drops"]
    for seq, clear in replies.items():
        assert (clear.src, clear.dst) == (inner_dst, inner_src)
        data = bytes(clear[ICMP].payload) if family == 4 else clear[ICMPv6EchoReply].data
        assert data == payloads[seq]
    # ipsecd decrypted exactly what scapy sent, on the SA scapy used.
    assert setup.gateway.sa(SPI_IN + off)["packets"] == before + count
    assert not setup.gateway.sa(SPI_IN + off)["drops"]


def test_nothing_reached_the_peer_in_clear(setup: Setup, tmp_path: Path) -> None:
    """The gateway's answers to scapy are all ESP: a capture on the peer's side has no ICMP."""
    family = 4
    peer, me, inner_src, inner_dst = setup.addrs[family]
    cap = setup.scapy_ns.capture(setup.scapy_if, tmp_path / "peer.pcap", "icmp")
    tunnel = IP(src=peer, dst=me) if setup.mode == "tunnel" else None
    sa_out = setup.alg.scapy(0, SPI_IN, tunnel)
    sa_out.seq_num = 1000  # after the other test's numbers
    with setup.scapy_ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for seq in range(3):
            echo = _echo(family, inner_src, inner_dst, 0x4242, seq, b"x" * 32)
            tx.sendto(bytes(sa_out.encrypt(echo)), (me, 0))  # type: ignore[no-untyped-call]
        time.sleep(0.5)
    finally:
        tx.close()
        cap.stop()
    assert cap.packets() == []


TRANSPORT_CASES = [c for c in CASES if c[0] == "transport"]


def _our_fragment(data: bytes, family: int, src: str, dst: str, proto: int) -> Packet | None:
    """A captured frame's packet if it is a fragment of ipsecd's ESP / AH from src to dst."""
    if family == 4:
        packet = IP(data)
        if (packet.src, packet.dst, packet.proto) != (src, dst, proto):
            return None
        assert packet.flags.MF or packet.frag, "a fragment, not one too-big packet"
        assert not packet.flags.DF and len(data) <= 1500
        return packet
    packet = IPv6(data)
    if (packet.src, packet.dst) != (src, dst) or IPv6ExtHdrFragment not in packet:
        return None
    assert packet[IPv6ExtHdrFragment].nh == proto, "fragments of ESP / AH"
    assert len(data) <= 1500
    return packet


def _reassembled(fragments: list[Packet], family: int) -> Packet | None:
    """scapy's own reassembly of ``fragments`` once they are all there, else None."""
    if family == 4:
        whole = [p for p in defragment(fragments)
                 if not p.flags.MF and not p.frag]  # type: ignore[no-untyped-call]
        return whole[0] if whole else None
    if not any(not f[IPv6ExtHdrFragment].m for f in fragments):
        return None
    total = max(f[IPv6ExtHdrFragment].offset * 8 + len(f[IPv6ExtHdrFragment].payload)
                for f in fragments)
    if sum(len(f[IPv6ExtHdrFragment].payload) for f in fragments) < total:
        return None
    return defragment6(fragments)  # type: ignore[no-any-return, no-untyped-call]


# Transport mode only (tunnel mode fragments the inner packet: test_daemon_tunnel.py).
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("setup", TRANSPORT_CASES, indirect=True,
                         ids=[f"{m}-{a}" for m, a in TRANSPORT_CASES])
def test_scapy_decrypts_a_big_transport_datagram(setup: Setup, family: int) -> None:
    """Transport mode, a UDP datagram bigger than the path (no DF) sent by the gateway's host.

    RFC 4303 §3.3.4 / RFC 4302 §3.3.4: ipsecd applies ESP or AH to the whole
    datagram, then fragments the outer packet: IPv4 fragments, or over IPv6 a
    Fragment header of its own (RFC 8200 §4.5, the originating host may; the
    3000 bytes are bigger than the TUN, so the host's kernel cut them first and
    the worker reassembled them).  scapy puts the fragments it sees on the wire
    together (its own ``defragment`` / ``defragment6``) and decrypts (or, for
    AH, checks the ICV of) the datagram: the payload comes back exactly.
    """
    assert setup.mode == "transport"
    peer, me, _, _ = setup.addrs[family]
    # ipsecd -> scapy; the IPv6 SA's SPI is 0x100 above the IPv4 one's
    sa_in = setup.alg.scapy(1, SPI_OUT + (0 if family == 4 else 0x100), None)
    proto = 51 if setup.alg.protocol == "ah" else 50
    payload = os.urandom(3000)
    with setup.scapy_ns.enter():
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        rx.bind((setup.scapy_if, 0))
    with setup.gateway.ns.enter():
        tx = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    fragments: list[Packet] = []
    whole: Packet | None = None
    try:
        if family == 4:
            tx.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
        else:
            tx.setsockopt(socket.IPPROTO_IPV6, 23, 0)  # IPV6_MTU_DISCOVER: IPV6_PMTUDISC_DONT
        tx.sendto(payload, (peer, 9700))
        deadline = time.monotonic() + 5
        while whole is None and time.monotonic() < deadline:
            if not select.select([rx], [], [], 0.1)[0]:
                continue
            data, address = rx.recvfrom(65535)
            if address[2] == PACKET_OUTGOING or data[0] >> 4 != family:
                continue
            fragment = _our_fragment(data, family, me, peer, proto)
            if fragment is not None:
                fragments.append(fragment)
                whole = _reassembled(fragments, family)
    finally:
        tx.close()
        rx.close()
    assert whole is not None, (len(fragments), setup.gateway.status()["drops"])
    # 3028 (IPv4) / 3048 (IPv6) bytes of datagram + ESP or AH, 1500-byte path
    assert len(fragments) == 3
    layer = IP if family == 4 else IPv6
    clear = layer(bytes(sa_in.decrypt(layer(bytes(whole)))))  # type: ignore[no-untyped-call]
    assert (clear.src, clear.dst) == (me, peer)
    assert clear[UDP].dport == 9700 and bytes(clear[UDP].payload) == payload
