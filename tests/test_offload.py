"""TUN offloads (workers/offload.py): TCP coalescing checked against scapy and a real kernel."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import start, tunnel_script, wait_ready
from netns import Lab, lab_fixture, needs_root, site_to_site, tcp_transfer, wait_until
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from workers import offload, tun
from workers.offload import VNET_HDR, VNET_HDR_LEN, Coalescer, segment_tcp

MSS = 1448
SRC4, DST4 = "192.0.2.1", "198.51.100.2"
SRC6, DST6 = "2001:db8::1", "2001:db8:1::2"


def _segment(i: int, *, v6: bool = False, seq0: int = 1000, mss: int = MSS, flags: str = "A",
             ts: tuple[int, int] = (7, 8), sport: int = 40000, payload: bytes | None = None,
             ident: int = 100) -> bytes:
    data = payload if payload is not None else bytes([i & 0xFF]) * mss
    tcp = TCP(sport=sport, dport=5201, seq=seq0 + i * mss, ack=77, flags=flags, window=500,
              options=[("NOP", None), ("NOP", None), ("Timestamp", ts)])
    ip = (IPv6(src=SRC6, dst=DST6) if v6
          else IP(src=SRC4, dst=DST4, flags="DF", id=(ident + i) & 0xFFFF))
    return bytes(ip / tcp / data)


class _Capture:
    """A coalescer writing into one end of a SEQPACKET pair: every write is one message."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.errors: list[tuple[OSError, int]] = []
        self.gro = Coalescer(self.a.fileno(), lambda e, n: self.errors.append((e, n)))
        self.buf = memoryview(bytearray(70000))

    def push(self, *packets: bytes, at: int = 37) -> None:
        for p in packets:
            self.buf[at:at + len(p)] = p
            self.gro.push(self.buf, at, at + len(p))

    def writes(self) -> list[tuple[tuple[int, ...], bytes]]:
        self.gro.flush()
        out = []
        while select.select([self.b], [], [], 0)[0]:
            m = self.b.recv(1 << 17)
            out.append((VNET_HDR.unpack_from(m), m[VNET_HDR_LEN:]))
        return out

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def cap() -> Iterator[_Capture]:
    c = _Capture()
    yield c
    c.close()


def _tcp_checksum_ok(packet: bytes) -> bool:
    p = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    got = p[TCP].chksum
    del p[TCP].chksum
    return bool(IP(bytes(p))[TCP].chksum == got if packet[0] >> 4 == 4
                else IPv6(bytes(p))[TCP].chksum == got)


# -- the coalescer on its own ---------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
def test_consecutive_segments_become_one_gso_write_that_segments_back_to_them(
        cap: _Capture, v6: bool) -> None:
    segs = [_segment(i, v6=v6) for i in range(6)]
    cap.push(*segs)
    [(hdr, packet)] = cap.writes()
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = hdr
    ip_hl = 40 if v6 else 20
    assert flags == offload.F_NEEDS_CSUM
    assert gso_type == (offload.GSO_TCPV6 if v6 else offload.GSO_TCPV4)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (ip_hl + 32, MSS, ip_hl, 16)
    assert len(packet) == ip_hl + 32 + 6 * MSS
    p = IPv6(packet) if v6 else IP(packet)
    assert bytes(p[TCP].payload) == b"".join(bytes([i]) * MSS for i in range(6))
    if not v6:  # scapy recomputes the header checksum: the one we wrote must equal it
        assert p.len == len(packet)
        q = IP(packet)
        del q.chksum
        assert IP(bytes(q)).chksum == p.chksum
    else:
        assert p.plen == len(packet) - 40
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, so that the kernel's
    # segmentation, which we imitate here, completes each segment's checksum.
    assert segment_tcp(packet, MSS) == [bytearray(s) for s in segs]
    assert cap.gro.coalesced == 6 and cap.gro.writes == 1


def test_segment_tcp_matches_scapy_checksums() -> None:
    big = _segment(0, payload=bytes(range(256)) * 20 + b"x", flags="PA")
    segs = segment_tcp(big, 1000)
    assert [len(s) - 52 for s in segs] == [1000, 1000, 1000, 1000, 1000, 121]
    for i, s in enumerate(segs):
        assert _tcp_checksum_ok(bytes(s))
        p = IP(bytes(s))
        assert p[TCP].seq == 1000 + 1000 * i
        assert str(p[TCP].flags) == ("PA" if i == 5 else "A")
        assert p.id == 100 + i


def test_a_segment_with_a_bad_checksum_is_never_coalesced(cap: _Capture) -> None:
    segs = [bytearray(_segment(i)) for i in range(5)]
    segs[2][-1] ^= 0x40  # damaged before it was encrypted: its TCP checksum no longer holds
    cap.push(*map(bytes, segs))
    writes = cap.writes()
    assert [len(p) for _, p in writes] == [52 + 2 * MSS, 52 + MSS, 52 + 2 * MSS]
    assert writes[1] == ((0, 0, 0, 0, 0, 0), bytes(segs[2]))  # alone and unchanged
    assert cap.gro.bad_checksum == 1
    assert [segment_tcp(p, MSS) for _, p in (writes[0], writes[2])] == [
        [segs[0], segs[1]], [segs[3], segs[4]]]


def test_order_within_a_flow_is_kept_and_flows_are_separate(cap: _Capture) -> None:
    a = [_segment(i) for i in range(3)]
    b = [_segment(i, sport=40001, seq0=5000) for i in range(3)]
    udp = bytes(IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=2) / b"hello")
    gap = _segment(5)  # not the next sequence number: a new packet
    fin = _segment(6, flags="FA", payload=b"")
    cap.push(a[0], b[0], a[1], udp, b[1], a[2], b[2], gap, fin)
    writes = cap.writes()
    by_port: dict[int, list[bytes]] = {}
    for hdr, p in writes:
        if IP(p).haslayer(TCP):
            parts = [bytes(x) for x in segment_tcp(p, MSS)] if hdr[1] else [p]
            by_port.setdefault(IP(p)[TCP].sport, []).extend(parts)
    assert by_port[40000] == [*a, gap, fin]
    assert by_port[40001] == b
    assert ((0, 0, 0, 0, 0, 0), udp) in writes  # as it came, no offload


@pytest.mark.parametrize("case", ["psh", "short", "options", "ack", "window", "no_df", "syn"])
def test_what_ends_or_prevents_coalescing(cap: _Capture, case: str) -> None:
    first = [_segment(0), _segment(1)]
    if case == "psh":  # PSH may end a packet: it joins it, and nothing after it
        last = _segment(2, flags="PA")
        cap.push(*first, last, _segment(3))
        w = cap.writes()
        assert [len(segment_tcp(p, MSS)) if h[1] else 1 for h, p in w] == [3, 1]
        assert IP(w[0][1])[TCP].flags == "PA"
        assert segment_tcp(w[0][1], MSS)[-1] == bytearray(last)
        return
    if case == "short":  # a short segment is a packet's last
        cap.push(*first, _segment(2, payload=b"z" * 100), _segment(3))
        w = cap.writes()
        assert len(w) == 2 and len(segment_tcp(w[0][1], MSS)) == 3
        return
    if case == "options":
        other = _segment(2, ts=(9, 8))  # another timestamp value
    elif case == "syn":
        other = _segment(2, flags="S", payload=b"")
    else:
        p = IP(_segment(2))
        if case == "ack":
            p[TCP].ack += 1
        elif case == "window":
            p[TCP].window = 501
        else:  # no_df
            p.flags = 0
        del p.chksum
        del p[TCP].chksum
        other = bytes(p)
    cap.push(*first, other)
    w = cap.writes()
    assert len(w) == 2
    assert segment_tcp(w[0][1], MSS) == [bytearray(s) for s in first]
    assert w[1] == ((0, 0, 0, 0, 0, 0), other)


def test_a_packet_never_exceeds_the_length_field(cap: _Capture) -> None:
    segs = [_segment(i) for i in range(100)]
    cap.push(*segs)
    writes = cap.writes()
    assert all(len(p) <= 65535 for _, p in writes)
    assert [s for _, p in writes for s in segment_tcp(p, MSS)] == [bytearray(s) for s in segs]
    assert len(writes) == 3  # 45 + 45 + 10 segments of 1448 bytes


def test_too_many_flows_write_out_the_oldest(cap: _Capture) -> None:
    for flow in range(offload.MAX_FLOWS + 4):
        cap.push(_segment(0, sport=30000 + flow))
    assert len(cap.gro.flows) == offload.MAX_FLOWS
    assert len(cap.writes()) == offload.MAX_FLOWS + 4


def test_a_failed_write_is_reported_with_its_packet_count() -> None:
    c = _Capture()
    c.b.close()  # the reader is gone: writes fail with EPIPE... or ECONNREFUSED
    c.push(*[_segment(i) for i in range(4)])
    c.gro.flush()
    c.push(bytes(IP(src=SRC4, dst=DST4) / UDP() / b"x"))
    assert [n for _, n in c.errors] == [4, 1]
    c.a.close()


# -- against the kernel ---------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def _handshake_through_tun(q: tun.TunQueue, listener_port: int) -> tuple[int, int, int]:
    """Be 10.9.0.2 behind the TUN: open a TCP connection to the local listener.

    Returns (our next sequence number, the server's next, the timestamp echo).
    """
    syn = IP(src="10.9.0.2", dst="10.9.0.1", flags="DF") / TCP(
        sport=40000, dport=listener_port, seq=1000, flags="S", window=65000,
        options=[("MSS", MSS), ("NOP", None), ("NOP", None), ("Timestamp", (7, 0))])
    q.write(bytes(syn))
    buf = memoryview(bytearray(4096))
    synack = None

    def got() -> bool:
        nonlocal synack
        n = q.readinto(buf)
        if n is None:
            return False
        p = IP(bytes(buf[VNET_HDR_LEN:n]))
        if p.haslayer(TCP) and p[TCP].flags == "SA":
            synack = p
            return True
        return False

    assert wait_until(got, 5)
    assert synack is not None
    ts = dict(synack[TCP].options)["Timestamp"][0]
    ack = IP(src="10.9.0.2", dst="10.9.0.1", flags="DF") / TCP(
        sport=40000, dport=listener_port, seq=1001, ack=synack[TCP].seq + 1, flags="A",
        window=65000, options=[("NOP", None), ("NOP", None), ("Timestamp", (8, ts))])
    q.write(bytes(ack))
    return 1001, synack[TCP].seq + 1, ts


@pytest.mark.netns
@needs_root()
def test_the_kernel_takes_a_coalesced_write_as_the_segments(lab: Lab) -> None:
    """A real TUN with IFF_VNET_HDR: one write, the listener reads every byte in order."""
    ns = lab.netns("gro")

    def run() -> tuple[bytes, int, int]:
        q = tun.TunQueue.open("gro0", vnet_hdr=True)
        tun.configure("gro0", mtu=1500, addresses=["10.9.0.1/24"])
        srv = socket.socket()
        srv.bind(("10.9.0.1", 5201))
        srv.listen()

        def rx_packets() -> int:  # packets written into the TUN, as the kernel counts them
            with open("/proc/net/dev") as f:  # this network namespace's
                for line in f:
                    name, _, counters = line.partition(":")
                    if name.strip() == "gro0":
                        return int(counters.split()[1])
            raise AssertionError("no gro0 in /proc/net/dev")

        try:
            seq, their, ts = _handshake_through_tun(q, 5201)
            conn, _ = srv.accept()
            conn.settimeout(5)
            segs = []
            for i in range(12):
                p = IP(src="10.9.0.2", dst="10.9.0.1", flags="DF", id=i) / TCP(
                    sport=40000, dport=5201, seq=seq + i * MSS, ack=their, flags="A",
                    window=65000, options=[("NOP", None), ("NOP", None), ("Timestamp", (9, ts))]
                ) / (bytes([65 + i]) * MSS)
                segs.append(bytes(p))
            before = rx_packets()
            errors: list[OSError] = []
            gro = Coalescer(q.fileno(), lambda e, n: errors.append(e))
            buf = memoryview(bytearray(4096))
            for s in segs:
                buf[16:16 + len(s)] = s
                gro.push(buf, 16, 16 + len(s))
            gro.flush()
            writes = rx_packets() - before
            data = b""
            while len(data) < 12 * MSS:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            conn.close()
            assert not errors, errors
            return data, writes, gro.coalesced
        finally:
            srv.close()
            q.close()

    data, writes, coalesced = ns.call(run, timeout=30)
    assert data == b"".join(bytes([65 + i]) * MSS for i in range(12))
    assert writes == 1 and coalesced == 12


@pytest.mark.netns
@needs_root()
def test_vnet_hdr_queues_read_and_write_plain_packets(lab: Lab) -> None:
    ns = lab.netns("vh")

    def run() -> tuple[bytes, int]:
        q = tun.TunQueue.open("vh0", vnet_hdr=True)
        tun.configure("vh0", mtu=1500, addresses=["10.8.0.1/24"])
        assert q.flags() & tun.IFF_VNET_HDR
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.8.0.1", 9999))
        s.settimeout(5)
        # TunQueue.write puts an empty header in front.
        q.write(bytes(IP(src="10.8.0.2", dst="10.8.0.1") / UDP(sport=5, dport=9999) / b"in"))
        got = s.recv(100)
        s.sendto(b"out", ("10.8.0.2", 7))
        buf = memoryview(bytearray(2048))
        assert wait_until(lambda: (n := q.readinto(buf)) is not None and
                          IP(bytes(buf[VNET_HDR_LEN:n])).haslayer(UDP), 5)
        hdr = VNET_HDR.unpack_from(buf)
        s.close()
        q.close()
        return got, hdr[1]

    got, gso_type = ns.call(run, timeout=20)
    assert got == b"in"
    assert gso_type == offload.GSO_NONE  # no TUNSETOFFLOAD: the kernel never sends GSO


def test_partial_checksum_is_the_pseudo_headers_rfc1071_sum() -> None:
    """The CHECKSUM_PARTIAL field: the pseudo-header's one's complement sum, not inverted."""
    for addrs, length, proto in ((bytes(8), 20, 6), (os.urandom(8), 1468, 6),
                                 (os.urandom(32), 65000, 17), (b"\xff" * 8, 0xFFFF, 6)):
        pseudo = addrs + struct.pack("!IHH", length, 0, proto)
        total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        # 0 and 0xFFFF are the same number in one's complement.
        assert offload.partial_checksum(addrs, length, proto) % 0xFFFF == total % 0xFFFF


# -- UDP ------------------------------------------------------------------------------------


def _datagram(i: int, *, v6: bool = False, size: int = 1400, sport: int = 5000,
              df: bool = True) -> bytes:
    data = bytes([i & 0xFF]) * size
    ip = IPv6(src=SRC6, dst=DST6) if v6 else IP(src=SRC4, dst=DST4, flags="DF" if df else 0,
                                                 id=i)
    return bytes(ip / UDP(sport=sport, dport=9) / data)


def _udp_pieces(hdr: tuple[int, ...], packet: bytes) -> list[bytes]:
    """The payloads a UDP_L4 GSO write stands for (cut at gso_size), or the one datagram."""
    v6 = packet[0] >> 4 == 6
    payload = bytes((IPv6(packet) if v6 else IP(packet))[UDP].payload)
    size = hdr[3] if hdr[1] == offload.GSO_UDP_L4 else len(payload)
    return [payload[i:i + size] for i in range(0, len(payload), size)]


@pytest.mark.parametrize("v6", [False, True])
def test_udp_datagrams_of_one_size_become_one_udp_l4_write(cap: _Capture, v6: bool) -> None:
    grams = [_datagram(i, v6=v6) for i in range(5)] + [_datagram(5, v6=v6, size=300)]
    cap.push(*grams, _datagram(6, v6=v6))
    writes = cap.writes()
    (hdr, packet), (hdr2, last) = writes
    ip_hl = 40 if v6 else 20
    assert hdr == (offload.F_NEEDS_CSUM, offload.GSO_UDP_L4, ip_hl + 8, 1400, ip_hl, 6)
    assert _udp_pieces(hdr, packet) == [bytes([i]) * 1400 for i in range(5)] + [bytes([5]) * 300]
    p = IPv6(packet) if v6 else IP(packet)
    assert p[UDP].len == len(packet) - ip_hl
    assert (hdr2, last) == ((0, 0, 0, 0, 0, 0), _datagram(6, v6=v6))  # alone: as it came


def test_udp_without_checksum_or_df_or_with_a_bad_checksum_goes_alone(cap: _Capture) -> None:
    no_sum = IP(_datagram(1))
    no_sum[UDP].chksum = 0
    bad = bytearray(_datagram(2))
    bad[-1] ^= 1
    plain = [_datagram(0), bytes(no_sum), bytes(bad), _datagram(3, df=False)]
    cap.push(*plain)
    assert cap.writes() == [((0, 0, 0, 0, 0, 0), p) for p in plain]
    assert cap.gro.bad_checksum == 1


def test_at_most_64_datagrams_in_one_write(cap: _Capture) -> None:
    grams = [_datagram(i, size=200) for i in range(100)]
    cap.push(*grams)
    writes = cap.writes()
    assert [len(_udp_pieces(h, p)) for h, p in writes] == [64, 36]
    assert [x for h, p in writes for x in _udp_pieces(h, p)] == [
        bytes([i]) * 200 for i in range(100)]


@pytest.mark.netns
@needs_root()
@pytest.mark.parametrize("v6", [False, True])
def test_the_kernel_cuts_a_udp_write_back_into_the_datagrams(lab: Lab, v6: bool) -> None:
    ns = lab.netns("udpgro")

    def run() -> tuple[list[bytes], int]:
        q = tun.TunQueue.open("ug0", vnet_hdr=True)
        tun.configure("ug0", mtu=1500, addresses=["10.7.0.1/24", "fd00:7::1/64"])
        family = socket.AF_INET6 if v6 else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("fd00:7::1" if v6 else "10.7.0.1", 9))
        s.settimeout(5)
        errors: list[OSError] = []
        gro = Coalescer(q.fileno(), lambda e, n: errors.append(e))
        buf = memoryview(bytearray(4096))
        for i in range(10):
            ip = (IPv6(src="fd00:7::2", dst="fd00:7::1") if v6
                  else IP(src="10.7.0.2", dst="10.7.0.1", flags="DF"))
            d = bytes(ip / UDP(sport=4000, dport=9) / (bytes([i]) * (1200 if i < 9 else 77)))
            buf[16:16 + len(d)] = d
            gro.push(buf, 16, 16 + len(d))
        gro.flush()
        got = [s.recv(2000) for _ in range(10)]
        s.close()
        q.close()
        assert not errors, errors
        return got, gro.writes

    got, writes = ns.call(run, timeout=30)
    assert got == [bytes([i]) * 1200 for i in range(9)] + [bytes([9]) * 77]
    assert writes == 1


# -- the switch -----------------------------------------------------------------------------


@pytest.mark.netns
@needs_root()
def test_gro_off_writes_every_packet_and_still_carries_tcp(lab: Lab, tmp_path: Path) -> None:
    """``datapath.gro = false``: a plain TUN (no virtio-net header), one write per packet."""
    topo = site_to_site(lab, routed=False)
    kw: dict[str, Any] = {"outside": ["wan0"], "wait": False, "workers": 1,
                          "extra": {"datapath": {"gro": False}}}
    a = start(topo.gw_a_wan.ns, tmp_path, "nogro-a", script=tunnel_script(topo, "a"), **kw)
    b = start(topo.gw_b_wan.ns, tmp_path, "nogro-b", script=tunnel_script(topo, "b"), **kw)
    try:
        wait_ready(a, b)

        def tun_rx() -> int:
            out = topo.gw_b_wan.ns.run("ip", "-s", "-j", "link", "show", "ipsec0").stdout
            return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

        def decrypted() -> int:
            return sum(w["packets_in"] for w in b.status()["workers"])

        writes0, esp0 = tun_rx(), decrypted()
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=8 << 20).received == 8 << 20
        # The worker publishes its counts after the writes: read the count first,
        # so that a late packet (an ACK, a FIN) between the two reads cannot be
        # counted and not yet seen written.  (The baseline is read the other way.)
        esp = decrypted() - esp0
        writes = tun_rx() - writes0
        assert esp > (4 << 20) // 1500
        assert writes >= esp  # every decrypted packet its own write (and a few of the kernel's)
    finally:
        assert [a.stop(), b.stop()] == [0, 0], a.log_text() + b.log_text()
