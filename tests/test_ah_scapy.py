"""AH interop against scapy's independent implementation (``scapy.layers.ipsec``).

Every integrity algorithm x {transport, tunnel} x {IPv4, IPv6, v4-in-v6,
v6-in-v4} x {no ESN, ESN}, in both directions: scapy signs and ipsecd
verifies and removes AH; ipsecd signs and scapy verifies and removes AH.  When
ipsecd signs, its bytes must also be *identical* to scapy's for the same
packet (for tunnel mode scapy is given the outer header ipsecd chose), which
checks the layout, the padding and the ICV at once.

The sample packets carry IPv4 options (immutable Router Alert, mutable Record
Route and Timestamp) and IPv6 hop-by-hop options (Router Alert, an immutable
and a mutable experimental option, RFC 4727 types 0x1E and 0x3E), so the
mutable-field rules of RFC 4302 §3.3.3.1 are exercised on both sides.

Where scapy and the RFC disagree
--------------------------------
- IPv4 loose/strict source routing: RFC 4302 §3.3.3.1.1.1 makes the
  destination address "mutable but predictable": the ICV uses the *final*
  destination.  Linux does so (``ip_clear_mutable_options`` copies the last
  route address into the destination on output).  scapy's
  ``zero_mutable_fields`` zeroes the option but keeps the destination field as
  it is.  At the final destination that field holds the final destination,
  so scapy *verifies* correctly, but it *signs* with the first hop there, and
  its own source-routed packets then fail at the far end (in scapy as in
  ipsecd).  ipsecd follows the RFC; :func:`test_lsrr_scapy_disagrees` pins
  the difference.
- IPv4 fragment offset: the RFC zeroes "Flags" and "Fragment Offset", scapy
  only the flags.  AH never sees fragments (RFC 4302 §3.3.4, §3.4.1), so the
  offset is 0 on both sides and the difference cannot show.
- IPv6 destination options without a routing header: scapy puts AH after
  them, ipsecd (and Linux) before them (RFC 4302 §3.1.1 allows both).  Each
  side verifies the other's packets (:func:`test_destination_options_placement`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import (
    IP,
    UDP,
    IPOption_LSRR,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Timestamp,
)
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.layers.ipsec import AH, IPSecIntegrityError
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Packet

import ipsecd.ah
from ipsecd.ah import AhContext
from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpProto
from ipsecd.packet import checksum
from ipsecd.sa import Mode, SecurityAssociation

SPI = 0x0000C0DE

# (IANA id, scapy's name, key bytes)
ALGORITHMS = [
    (IntegId.AUTH_HMAC_SHA2_256_128, "SHA2-256-128", 32),
    (IntegId.AUTH_HMAC_SHA2_384_192, "SHA2-384-192", 48),
    (IntegId.AUTH_HMAC_SHA2_512_256, "SHA2-512-256", 64),
    (IntegId.AUTH_HMAC_SHA1_96, "HMAC-SHA1-96", 20),
    (IntegId.AUTH_HMAC_MD5_96, "HMAC-MD5-96", 16),
]
ALGORITHM_IDS = [name for _, name, _ in ALGORITHMS]

# (mode, outer family, inner family)
SHAPES = [
    (Mode.TRANSPORT, 4, 4),
    (Mode.TRANSPORT, 6, 6),
    (Mode.TUNNEL, 4, 4),
    (Mode.TUNNEL, 6, 6),
    (Mode.TUNNEL, 6, 4),
    (Mode.TUNNEL, 4, 6),
]
SHAPE_IDS = [f"{m.value}-v{o}" if m is Mode.TRANSPORT else f"tunnel-v{i}in{o}" for m, o, i in SHAPES]

OUTER = {4: ("192.0.2.1", "198.51.100.7"), 6: ("2001:db8:a::1", "2001:db8:b::7")}
ESN_HIGH = 0x00000003


@pytest.fixture(autouse=True, scope="module")
def _raise_unexpected() -> Iterator[None]:
    """Unexpected exceptions in the codec fail the test instead of becoming MALFORMED."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ipsecd.ah, "RAISE_UNEXPECTED", True)
        yield

def encap_ok(ctx: AhContext, packet: bytes, seq: int) -> bytes:
    drop, out = ctx.encap(packet, seq)
    assert drop is Drop.OK, drop
    return out


class FakeWindow:
    """Stands in for ipsecd.replay.ReplayWindow where replay is not under test."""

    def __init__(self, high: int = 0) -> None:
        self.high = high
        self.updated: list[int] = []

    def check(self, seq_low: int, /) -> tuple[Drop, int]:
        return Drop.OK, (self.high << 32) | seq_low

    def update(self, seq: int, /) -> None:
        self.updated.append(seq)


def key_for(length: int) -> bytes:
    return bytes((7 * i + 3) & 0xFF for i in range(length))


def ipv4_sample(payload: bytes = b"ipsecd-ah-interop") -> Packet:
    pkt = IP(
        src="10.1.0.1", dst="10.2.0.1", tos=0x28, ttl=17, id=4242, flags="DF",
        options=[
            IPOption_Router_Alert(),
            IPOption_RR(routers=["0.0.0.0", "0.0.0.0"]),
            IPOption_Timestamp(flg=0, timestamp=0),
        ],
    ) / UDP(sport=4000, dport=5000) / payload
    return IP(bytes(pkt))


def ipv6_sample(payload: bytes = b"ipsecd-ah-interop") -> Packet:
    pkt = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1", tc=0x28, fl=0x12345, hlim=9) / \
        IPv6ExtHdrHopByHop(options=[
            RouterAlert(),
            HBHOptUnknown(otype=0x1E, optdata=b"keep"),  # immutable: covered by the ICV
            HBHOptUnknown(otype=0x3E, optdata=b"zero-me"),  # 0x20 bit set: zeroed for the ICV
        ]) / UDP(sport=4000, dport=5000) / payload
    return IPv6(bytes(pkt))


def sample(family: int) -> Packet:
    return ipv4_sample() if family == 4 else ipv6_sample()


def parse(data: bytes) -> Packet:
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def make_sa(integ: IntegId, key_len: int, mode: Mode, outer: int, esn: bool) -> SecurityAssociation:
    src, dst = OUTER[outer]
    return SecurityAssociation(
        spi=SPI, protocol=IpProto.AH, src=ipaddress.ip_address(src), dst=ipaddress.ip_address(dst),
        mode=mode, auth=integ, auth_key=bytearray(key_for(key_len)), esn=esn,
    )


def scapy_sa(name: str, key_len: int, tunnel: Packet | None, esn: bool) -> Any:
    return ScapySA(AH, spi=SPI, auth_algo=name, auth_key=key_for(key_len),  # type: ignore[no-untyped-call]
                   tunnel_header=tunnel, esn_en=esn, esn=ESN_HIGH if esn else 0)


def scapy_tunnel_header(outer_family: int, outer_bytes: bytes | None = None) -> Packet:
    """scapy's tunnel header; with ``outer_bytes`` it copies the fields ipsecd chose."""
    src, dst = OUTER[outer_family]
    hdr: Packet
    if outer_family == 4:
        hdr = IP(src=src, dst=dst)
        if outer_bytes is not None:
            mine: Packet = IP(outer_bytes)
            hdr.tos, hdr.id, hdr.flags, hdr.ttl = mine.tos, mine.id, mine.flags, mine.ttl
        return hdr
    hdr = IPv6(src=src, dst=dst)
    if outer_bytes is not None:
        mine = IPv6(outer_bytes)
        hdr.tc, hdr.fl, hdr.hlim = mine.tc, mine.fl, mine.hlim
    return hdr


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize(("mode", "outer", "inner"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS, ids=ALGORITHM_IDS)
def test_scapy_signs_ipsecd_verifies(
    integ: IntegId, name: str, key_len: int, mode: Mode, outer: int, inner: int, esn: bool,
) -> None:
    plain = sample(inner)
    tunnel = scapy_tunnel_header(outer) if mode is Mode.TUNNEL else None
    signed = scapy_sa(name, key_len, tunnel, esn).encrypt(plain, seq_num=77)
    ctx = AhContext(make_sa(integ, key_len, mode, outer, esn), allow_legacy=True)
    window = FakeWindow(ESN_HIGH if esn else 0)

    drop, out = ctx.decap(bytes(signed), window)

    assert drop is Drop.OK
    assert out == bytes(plain)
    assert window.updated == [((ESN_HIGH << 32) if esn else 0) | 77]


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize(("mode", "outer", "inner"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS, ids=ALGORITHM_IDS)
def test_ipsecd_signs_scapy_verifies(
    integ: IntegId, name: str, key_len: int, mode: Mode, outer: int, inner: int, esn: bool,
) -> None:
    plain = sample(inner)
    ctx = AhContext(make_sa(integ, key_len, mode, outer, esn), allow_legacy=True)
    seq = ((ESN_HIGH << 32) if esn else 0) | 0x1234

    signed = encap_ok(ctx, bytes(plain), seq)

    outer_len = 20 if outer == 4 else 40
    tunnel = scapy_tunnel_header(outer, signed[:outer_len]) if mode is Mode.TUNNEL else None
    ssa = scapy_sa(name, key_len, tunnel, esn)
    assert signed == bytes(ssa.encrypt(plain, seq_num=0x1234)), "differs from scapy's bytes"
    decrypted = ssa.decrypt(parse(signed))  # raises IPSecIntegrityError on a bad ICV
    assert bytes(decrypted) == bytes(plain)


@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS, ids=ALGORITHM_IDS)
@pytest.mark.parametrize("family", [4, 6])
def test_each_side_rejects_a_tampered_packet(integ: IntegId, name: str, key_len: int, family: int) -> None:
    ctx = AhContext(make_sa(integ, key_len, Mode.TRANSPORT, family, False), allow_legacy=True)
    ssa = scapy_sa(name, key_len, None, False)
    plain = sample(family)
    # The last payload byte is covered by the ICV on both sides.
    ours = bytearray(encap_ok(ctx, bytes(plain), 5))
    ours[-1] ^= 0x01
    with pytest.raises(IPSecIntegrityError):
        ssa.decrypt(parse(bytes(ours)))
    theirs = bytearray(bytes(ssa.encrypt(plain, seq_num=5)))
    theirs[-1] ^= 0x01
    assert ctx.decap(bytes(theirs))[0] is Drop.ICV


def _route_ipv4(data: bytes) -> bytes:
    """What routers may do to an IPv4 packet en route: every RFC 4302 mutable field changes."""
    pkt = IP(data)
    pkt.ttl -= 3
    pkt.tos = 0xB9  # re-marked DSCP, ECN congestion experienced
    pkt.flags = 0  # RFC 4302 §3.3.3.1.1.1: "an intermediate router might set the DF bit" (or clear it)
    for opt in pkt.options:
        if isinstance(opt, IPOption_RR):
            opt.routers = ["203.0.113.9", "0.0.0.0"]
            opt.pointer += 4
        if isinstance(opt, IPOption_Timestamp):
            opt.oflw = 1
    del pkt.chksum
    return bytes(pkt)


def _route_ipv6(data: bytes) -> bytes:
    pkt = IPv6(data)
    pkt.hlim -= 3
    pkt.tc = 0xB9
    pkt.fl = 0xFEDCB
    for opt in pkt[IPv6ExtHdrHopByHop].options:
        if getattr(opt, "otype", None) == 0x3E:
            opt.optdata = b"changed"
    return bytes(pkt)


@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS[:2] + ALGORITHMS[3:4], ids=["sha256", "sha384", "sha1"])
@pytest.mark.parametrize("family", [4, 6])
def test_mutable_fields_changed_en_route(integ: IntegId, name: str, key_len: int, family: int) -> None:
    ctx = AhContext(make_sa(integ, key_len, Mode.TRANSPORT, family, False))
    ssa = scapy_sa(name, key_len, None, False)
    plain = sample(family)
    route = _route_ipv4 if family == 4 else _route_ipv6

    from_scapy = route(bytes(ssa.encrypt(plain, seq_num=9)))
    drop, out = ctx.decap(from_scapy)
    assert drop is Drop.OK
    assert out == bytes(ssa.decrypt(parse(from_scapy)))  # both strip AH from the routed packet alike

    from_ipsecd = route(encap_ok(ctx, bytes(plain), 9))
    ssa.decrypt(parse(from_ipsecd))
    assert ctx.decap(from_ipsecd)[0] is Drop.OK


def _ipv6_routing_hops(data: bytes) -> bytes:
    """Forward a packet with a type 0 routing header through every listed hop (RFC 2460 §4.4)."""
    pkt = IPv6(data)
    rh = pkt[IPv6ExtHdrRouting]
    while rh.segleft:
        index = len(rh.addresses) - rh.segleft
        addresses = list(rh.addresses)
        addresses[index], pkt.dst = pkt.dst, addresses[index]
        rh.addresses = addresses
        rh.segleft -= 1
        pkt.hlim -= 1
    return bytes(pkt)


@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS[:1] + ALGORITHMS[3:4], ids=["sha256", "sha1"])
def test_type0_routing_header(integ: IntegId, name: str, key_len: int) -> None:
    # RFC 4302 Appendix A.2: the routing header is mutable but predictable;
    # both sides compute the ICV over the header as it arrives at the end.
    ctx = AhContext(make_sa(integ, key_len, Mode.TRANSPORT, 6, False))
    ssa = scapy_sa(name, key_len, None, False)
    plain = IPv6(bytes(
        IPv6(src="2001:db8:1::1", dst="2001:db8:ff::1", hlim=64)
        / IPv6ExtHdrRouting(addresses=["2001:db8:ff::2", "2001:db8:ff::3", "2001:db8:2::1"])
        / UDP(sport=1, dport=2) / b"routed"))

    from_scapy = bytes(ssa.encrypt(plain, seq_num=3))
    assert ctx.decap(from_scapy)[0] is Drop.OK  # predicted before any hop
    arrived = _ipv6_routing_hops(from_scapy)
    drop, out = ctx.decap(arrived)
    assert drop is Drop.OK
    assert IPv6(out)[IPv6ExtHdrRouting].segleft == 0

    from_ipsecd = encap_ok(ctx, bytes(plain), 3)
    assert from_ipsecd == from_scapy
    ssa.decrypt(IPv6(_ipv6_routing_hops(from_ipsecd)))


def test_destination_options_placement() -> None:
    integ, name, key_len = ALGORITHMS[0]
    ctx = AhContext(make_sa(integ, key_len, Mode.TRANSPORT, 6, False))
    ssa = scapy_sa(name, key_len, None, False)
    plain = IPv6(bytes(
        IPv6(src="2001:db8:1::1", dst="2001:db8:2::1")
        / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x3E, optdata=b"mut")])
        / UDP(sport=1, dport=2) / b"dest-opts"))

    from_scapy = bytes(ssa.encrypt(plain, seq_num=4))
    assert IPv6(from_scapy)[IPv6ExtHdrDestOpt].nh == IpProto.AH  # scapy: AH after them
    drop, out = ctx.decap(from_scapy)
    assert (drop, out) == (Drop.OK, bytes(plain))

    from_ipsecd = encap_ok(ctx, bytes(plain), 4)
    assert IPv6(from_ipsecd).nh == IpProto.AH  # ipsecd: AH before them, they are payload
    assert bytes(ssa.decrypt(IPv6(from_ipsecd))) == bytes(plain)


def _source_route_ipv4(data: bytes) -> bytes:
    """Forward an IPv4 packet through the hops of its LSRR option (RFC 791 §3.1)."""
    pkt = IP(data)
    opt = next(o for o in pkt.options if isinstance(o, IPOption_LSRR))
    while opt.pointer + 3 <= opt.length:
        index = (opt.pointer - 4) // 4
        routers = list(opt.routers)
        routers[index], pkt.dst = f"203.0.113.{index + 1}", routers[index]
        opt.routers = routers
        opt.pointer += 4
        pkt.ttl -= 1
    del pkt.chksum
    return bytes(pkt)


def test_lsrr_scapy_disagrees() -> None:
    """RFC 4302 §3.3.3.1.1.1: with source routing the ICV uses the final destination."""
    integ, name, key_len = ALGORITHMS[0]
    ctx = AhContext(make_sa(integ, key_len, Mode.TRANSPORT, 4, False))
    ssa = scapy_sa(name, key_len, None, False)
    plain = IP(bytes(
        IP(src="10.1.0.1", dst="10.9.0.1", options=[IPOption_LSRR(routers=["10.9.0.2", "10.2.0.1"])])
        / UDP(sport=1, dport=2) / b"source-routed"))

    ours = encap_ok(ctx, bytes(plain), 6)
    arrived = _source_route_ipv4(ours)
    assert IP(arrived).dst == "10.2.0.1"
    assert ctx.decap(ours)[0] is Drop.OK  # at the first hop, predicted
    assert ctx.decap(arrived)[0] is Drop.OK  # at the final destination
    # At the final destination the destination field holds the final
    # destination, so scapy's receive side agrees with the RFC ...
    assert bytes(ssa.decrypt(IP(arrived)))[-13:] == b"source-routed"
    # ... but scapy signs with the first hop in the destination field, so its
    # packet fails once it has travelled the route - in scapy too.
    theirs = _source_route_ipv4(bytes(ssa.encrypt(plain, seq_num=6)))
    assert ctx.decap(theirs)[0] is Drop.ICV
    with pytest.raises(IPSecIntegrityError):
        ssa.decrypt(IP(theirs))


@pytest.mark.parametrize(("integ", "name", "key_len"), ALGORITHMS, ids=ALGORITHM_IDS)
def test_linux_ipv4_alignment(integ: IntegId, name: str, key_len: int) -> None:
    # Linux pads IPv4 AH to 64 bits unless the SA has "flag align4"; scapy and
    # ipsecd accept that form as well as the RFC's 32-bit one.
    sa = make_sa(integ, key_len, Mode.TRANSPORT, 4, False)
    linux_style = AhContext(sa, allow_legacy=True, ipv4_alignment=8)
    rfc_style = AhContext(sa, allow_legacy=True)
    plain = ipv4_sample()
    signed = encap_ok(linux_style, bytes(plain), 8)
    assert IP(signed)[AH].payloadlen * 4 + 8 == (12 + integ_icv(integ) + 7) // 8 * 8
    assert bytes(scapy_sa(name, key_len, None, False).decrypt(IP(signed))) == bytes(plain)
    assert rfc_style.decap(signed) == (Drop.OK, bytes(plain))


def integ_icv(integ: IntegId) -> int:
    return {12: 16, 13: 24, 14: 32, 2: 12, 1: 12}[int(integ)]


def test_checksum_of_ipsecd_output_is_valid() -> None:
    integ, _, key_len = ALGORITHMS[0]
    for mode in (Mode.TRANSPORT, Mode.TUNNEL):
        out = encap_ok(AhContext(make_sa(integ, key_len, mode, 4, False)), bytes(ipv4_sample()), 1)
        ihl = (out[0] & 0x0F) * 4
        assert checksum(out[:ihl]) == 0
