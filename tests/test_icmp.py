"""MTU handling: the ICMP errors and IPv4 fragments the workers build, decoded by scapy."""

from __future__ import annotations

import ipaddress

import pytest
from conftest import BY_NAME, key_bytes
from scapy.layers.inet import ICMP, IP, UDP, defragment
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6PacketTooBig, IPv6

from ipsecd.esp import EspContext
from ipsecd.iana import IpProto
from ipsecd.sa import Mode, SecurityAssociation, UdpEncap
from workers.icmp import (
    IPV6_MIN_MTU,
    RateLimit,
    frag_needed,
    fragment_ipv4,
    packet_too_big,
    too_big_error,
)
from workers.worker import _Out


def _v4(size: int = 1500, **kw: object) -> bytes:
    pkt = IP(src="198.51.100.10", dst="203.0.113.10", flags="DF", **kw) / UDP(
        sport=4000, dport=9) / bytes(size - 28)
    return bytes(pkt)


def _v6(size: int = 1500, src: str = "2001:db8:a::10", dst: str = "2001:db8:b::10") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=4000, dport=9) / bytes(size - 48))


def test_fragmentation_needed() -> None:
    original = _v4()
    err = frag_needed(original, 1446)
    assert err is not None
    ip = IP(err)
    # From the original destination (through the TUN, see workers/icmp.py), to its source.
    assert (ip.src, ip.dst, ip.proto, ip.ttl) == ("203.0.113.10", "198.51.100.10", 1, 64)
    assert (ip[ICMP].type, ip[ICMP].code, ip[ICMP].nexthopmtu) == (3, 4, 1446)
    assert len(err) == 576  # RFC 1812: as much of the original as fits in 576 bytes
    assert bytes(ip[ICMP].payload)[:20] == original[:20]
    # The checksums scapy computes are the ones we wrote.
    again = IP(err)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again.__class__(bytes(again))) == err
    small = _v4(100)
    err = frag_needed(small, 68)
    assert err is not None and len(err) == 28 + 100


def test_packet_too_big() -> None:
    original = _v6()
    err = packet_too_big(original, 1426)
    assert err is not None
    ip = IPv6(err)
    assert (ip.src, ip.dst, ip.nh) == ("2001:db8:b::10", "2001:db8:a::10", 58)
    assert ip[ICMPv6PacketTooBig].mtu == 1426
    assert len(err) == 1280  # RFC 4443: as much as fits the minimum MTU
    again = IPv6(err)
    del again[ICMPv6PacketTooBig].cksum
    assert bytes(IPv6(bytes(again))) == err
    # Below the IPv6 minimum the announcement is the minimum (RFC 8200 §5).
    low = packet_too_big(original, 1000)
    assert low is not None and IPv6(low)[ICMPv6PacketTooBig].mtu == IPV6_MIN_MTU
    # A multicast destination still gets one (RFC 4443 §2.4(e.3)).
    assert packet_too_big(_v6(dst="ff0e::1"), 1426) is not None
    assert too_big_error(original, 1426) == err
    assert too_big_error(_v4(), 1446) == frag_needed(_v4(), 1446)


@pytest.mark.parametrize("packet", [
    bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(type=3, code=1) / bytes(100)),
    bytes(IP(src="198.51.100.10", dst="203.0.113.10", frag=10) / bytes(100)),
    bytes(IP(src="198.51.100.10", dst="224.0.0.5") / UDP() / bytes(100)),
    bytes(IP(src="198.51.100.10", dst="255.255.255.255") / UDP() / bytes(100)),
    bytes(IP(src="0.0.0.0", dst="203.0.113.10") / UDP() / bytes(100)),
    bytes(IP(src="127.0.0.1", dst="203.0.113.10") / UDP() / bytes(100)),
    b"\x45\x00",
    b"",
], ids=["icmp-error", "later-fragment", "multicast", "broadcast", "unspecified-src",
        "loopback-src", "runt", "empty"])
def test_no_error_about_these_ipv4_packets(packet: bytes) -> None:
    assert frag_needed(packet, 1400) is None


@pytest.mark.parametrize("packet", [
    bytes(IPv6(src="ff02::1", dst="2001:db8:b::10") / UDP() / bytes(100)),
    bytes(IPv6(src="::", dst="2001:db8:b::10") / UDP() / bytes(100)),
    bytes(IPv6(src="2001:db8:a::10", dst="2001:db8:b::10") / ICMPv6PacketTooBig() / bytes(100)),
    b"\x60" + bytes(20),
], ids=["multicast-src", "unspecified-src", "icmpv6-error", "runt"])
def test_no_error_about_these_ipv6_packets(packet: bytes) -> None:
    assert packet_too_big(packet, 1400) is None


def test_an_icmpv6_informational_message_gets_one() -> None:
    reply = bytes(IPv6(src="2001:db8:a::10", dst="2001:db8:b::10") / ICMPv6EchoReply() / bytes(1400))
    assert packet_too_big(reply, 1280) is not None


def test_fragmenting_an_inner_ipv4_packet() -> None:
    payload = bytes(range(256)) * 6
    original = bytes(IP(src="198.51.100.10", dst="203.0.113.10", id=77) / UDP(sport=1, dport=2)
                     / payload)
    frags = fragment_ipv4(original, 600)
    assert frags is not None and len(frags) == 3
    assert all(len(f) <= 600 for f in frags)
    parsed = [IP(f) for f in frags]
    assert [p.frag * 8 for p in parsed] == [0, 576, 1152]
    assert [bool(p.flags.MF) for p in parsed] == [True, True, False]
    assert all(p.id == 77 for p in parsed)
    for p, raw in zip(parsed, frags, strict=True):  # header checksums are right
        del p.chksum
        assert bytes(IP(bytes(p)))[:20] == raw[:20]
    whole = defragment(parsed)
    assert len(whole) == 1 and bytes(whole[0][UDP].payload) == payload
    # A fragment is fragmented further, keeping its offset and MF.
    again = fragment_ipv4(frags[1], 300)
    assert again is not None
    assert [IP(f).frag * 8 for f in again] == [576, 576 + 280, 576 + 560]
    assert [bool(IP(f).flags.MF) for f in again] == [True, True, True]


def test_fragment_options_copy_flag() -> None:
    # Router alert (copied) and a record route (not copied).
    options = bytes([0x94, 4, 0, 0]) + bytes([7, 7, 4, 0, 0, 0, 0, 0])
    raw = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / bytes(1000))
    packet = IP(bytes([0x48]) + raw[1:20] + options + bytes(1000))
    del packet.len, packet.chksum
    frags = fragment_ipv4(bytes(packet), 400)
    assert frags is not None
    first, later = IP(frags[0]), IP(frags[1])
    assert first.ihl == 8 and later.ihl == 6
    assert frags[1][20:24] == bytes([0x94, 4, 0, 0])


def test_what_cannot_be_fragmented() -> None:
    assert fragment_ipv4(_v4(1500), 1000) is None  # DF set
    no_df = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / bytes(100))
    assert fragment_ipv4(no_df, 20) is None  # no room for 8 bytes
    assert fragment_ipv4(_v6(), 1000) is None


@pytest.mark.parametrize("transform", ["aes128-gcm16", "aes256-cbc+sha384", "chacha20-poly1305",
                                       "null+sha1"])
@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("encap", [False, True])
def test_announced_mtu_is_the_largest_inner_packet_that_fits(
        transform: str, mode: Mode, outer: int, encap: bool) -> None:
    t = BY_NAME[transform]
    src, dst = (("192.0.2.1", "192.0.2.2") if outer == 4 else ("2001:db8::1", "2001:db8::2"))
    sa = SecurityAssociation(
        spi=1, protocol=IpProto.ESP, src=ipaddress.ip_address(src),
        dst=ipaddress.ip_address(dst), mode=mode, enc=t.enc,
        enc_key=key_bytes("k", t.enc_key_bytes), auth=t.auth,
        auth_key=key_bytes("a", t.auth_key_bytes), encap=UdpEncap() if encap else None)
    ctx = EspContext(sa)
    out = _Out(0, 1, ctx, sa)
    header = 0 if mode is Mode.TUNNEL else (20 if outer == 4 else 40)
    for path_mtu in (1280, 1400, 1500, 9000):
        inner = out.max_inner(path_mtu, header)
        assert ctx.encapsulated_length(inner, header) <= path_mtu
        assert ctx.encapsulated_length(inner + 1, header) > path_mtu


def test_rate_limit() -> None:
    limit = RateLimit(rate=10, burst=3)
    t = limit.stamp
    assert [limit.allow(t) for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow(t + 0.1) and not limit.allow(t + 0.1)
    assert limit.allow(t + 10)


@pytest.mark.parametrize("size", [1300, 3000, 65000])
@pytest.mark.parametrize("hop_by_hop", [False, True])
def test_fragment_ipv6_is_what_scapy_reassembles(size: int, hop_by_hop: bool) -> None:
    from scapy.layers.inet import UDP as ScapyUDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, defragment6

    from workers.icmp import fragment_ipv6

    ip = IPv6(src="2001:db8::1", dst="2001:db8::2")
    if hop_by_hop:
        ip = ip / IPv6ExtHdrHopByHop()
    packet = bytes(ip / ScapyUDP(sport=1, dport=2) / (bytes(range(256)) * (size // 256 + 1))[:size])
    pieces = fragment_ipv6(packet, 1280, 0xABCDEF01)
    assert pieces is not None and len(pieces) > 1
    assert all(len(p) <= 1280 for p in pieces)
    parsed = [IPv6(p) for p in pieces]
    assert {f[IPv6ExtHdrFragment].id for f in parsed} == {0xABCDEF01}
    assert [f[IPv6ExtHdrFragment].m for f in parsed] == [1] * (len(pieces) - 1) + [0]
    if hop_by_hop:  # the per-fragment part comes first, in every fragment
        assert all(IPv6ExtHdrHopByHop in f and f.nh == 0 for f in parsed)
    assert bytes(defragment6(parsed)) == packet  # type: ignore[no-untyped-call]
    assert fragment_ipv6(pieces[0], 1280, 1) is None  # a fragment is not cut again
    assert fragment_ipv6(packet, 40 + 8 + 7, 1) is None  # no room for 8 bytes of data
