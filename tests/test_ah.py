"""Unit tests of the AH codec (ipsecd.ah, RFC 4302).

Interop with scapy is in test_ah_scapy.py, properties in
test_ah_properties.py, fuzzing in test_fuzz_ah.py.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import ipsecd.ah
from ipsecd.ah import AH_HEADER, AhContext, spi_of
from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpProto
from ipsecd.packet import checksum, ip_datagram, ipv4_header, ipv6_header
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import LegacyAlgorithmError, TransformError

CORPUS = Path(__file__).parent / "corpus" / "ah" / "vectors.json"
SPI = 0x1001
V4 = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("198.51.100.2"))
V6 = (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2"))

# IANA id -> (key bytes, ICV bytes, AH bytes in IPv4, AH bytes in IPv6)
SIZES = {
    IntegId.AUTH_HMAC_SHA2_256_128: (32, 16, 28, 32),
    IntegId.AUTH_HMAC_SHA2_384_192: (48, 24, 36, 40),
    IntegId.AUTH_HMAC_SHA2_512_256: (64, 32, 44, 48),
    IntegId.AUTH_HMAC_SHA1_96: (20, 12, 24, 24),
    IntegId.AUTH_HMAC_MD5_96: (16, 12, 24, 24),
}


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
    """A stand-in for ipsecd.replay.ReplayWindow: fixed high bits, records calls."""

    def __init__(self, high: int = 0, verdict: Drop = Drop.OK) -> None:
        self.high = high
        self.verdict = verdict
        self.checked: list[int] = []
        self.updated: list[int] = []

    def check(self, seq_low: int, /) -> tuple[Drop, int]:
        self.checked.append(seq_low)
        return self.verdict, (self.high << 32) | seq_low

    def update(self, seq: int, /) -> None:
        self.updated.append(seq)


def make_sa(
    integ: IntegId = IntegId.AUTH_HMAC_SHA2_256_128, *, family: int = 4, mode: Mode = Mode.TRANSPORT,
    esn: bool = False, spi: int = SPI, protocol: IpProto = IpProto.AH, key: bytes | None = None,
) -> SecurityAssociation:
    src, dst = V4 if family == 4 else V6
    key_len = SIZES[integ][0] if integ in SIZES else 32
    return SecurityAssociation(
        spi=spi, protocol=protocol, src=src, dst=dst, mode=mode, auth=integ,
        auth_key=bytearray(key if key is not None else bytes(range(key_len))), esn=esn)


def udp4(payload: bytes = b"payload", *, options: bytes = b"", tos: int = 0, flags: int = 0) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    hdr = bytearray(ipv4_header(V4[0].packed, V4[1].packed, IpProto.UDP, len(udp), tos=tos))
    if options:
        hdr[0] = 0x40 | (20 + len(options)) // 4
        hdr += options
        struct.pack_into("!H", hdr, 2, len(hdr) + len(udp))
    struct.pack_into("!H", hdr, 6, flags)
    hdr[10:12] = b"\x00\x00"
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + udp


def udp6(payload: bytes = b"payload", *, ext: bytes = b"", first_nh: int = IpProto.UDP) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return bytes(ipv6_header(V6[0].packed, V6[1].packed, first_nh if ext else IpProto.UDP,
                             len(ext) + len(udp), traffic_class=0x2E, flow_label=0xABCDE)) + ext + udp


def set_byte(data: bytes, index: int, value: int) -> bytes:
    out = bytearray(data)
    out[index] = value
    return bytes(out)


def refresh_checksum(data: bytes) -> bytes:
    out = bytearray(data)
    ihl = (out[0] & 0x0F) * 4
    out[10:12] = b"\x00\x00"
    struct.pack_into("!H", out, 10, checksum(out[:ihl]))
    return bytes(out)


# --- construction ---------------------------------------------------------------------------


def test_refuses_non_ah_sa() -> None:
    with pytest.raises(ValueError, match="AH SA"):
        AhContext(make_sa(protocol=IpProto.ESP))


@pytest.mark.parametrize("spi", [0, 1, 255])
def test_refuses_reserved_spi(spi: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        AhContext(make_sa(spi=spi))


def test_refuses_no_integrity() -> None:
    with pytest.raises(TransformError):
        AhContext(make_sa(IntegId.NONE))


def test_refuses_wrong_key_length() -> None:
    with pytest.raises(TransformError, match="256-bit key"):
        AhContext(make_sa(key=bytes(16)))


def test_md5_needs_the_legacy_switch(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(LegacyAlgorithmError):
        AhContext(make_sa(IntegId.AUTH_HMAC_MD5_96))
    with caplog.at_level(logging.WARNING, logger="ipsecd.transforms"):
        ctx = AhContext(make_sa(IntegId.AUTH_HMAC_MD5_96), allow_legacy=True)
    assert ctx.icv_bytes == 12
    # Once, when the context is built (the lookup inside does not log).
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "legacy algorithm hmac-md5 in use: it is weak, migrate this peer to AES-GCM"]


def test_refuses_bad_alignment() -> None:
    with pytest.raises(ValueError, match="alignment"):
        AhContext(make_sa(), ipv4_alignment=2)


@pytest.mark.parametrize(("sa_mode", "override", "expected"), [
    (Mode.ANY, None, Mode.TRANSPORT),  # Linux PF_KEY: IPSEC_MODE_ANY is transport
    (Mode.ANY, Mode.TUNNEL, Mode.TUNNEL),  # the policy decides
    (Mode.TUNNEL, None, Mode.TUNNEL),
    (Mode.TRANSPORT, None, Mode.TRANSPORT),
])
def test_mode(sa_mode: Mode, override: Mode | None, expected: Mode) -> None:
    assert AhContext(make_sa(mode=sa_mode), mode=override).mode is expected


# --- layout: RFC 4302 §2 ----------------------------------------------------------------------


@pytest.mark.parametrize("integ", list(SIZES))
@pytest.mark.parametrize("family", [4, 6])
def test_icv_padding(integ: IntegId, family: int) -> None:
    # RFC 4302 §2.6 / §3.3.3.2.1: 32-bit alignment in IPv4, 64-bit in IPv6.
    _, icv, ah_v4, ah_v6 = SIZES[integ]
    ctx = AhContext(make_sa(integ, family=family), allow_legacy=True)
    plain = udp4() if family == 4 else udp6()
    out = encap_ok(ctx, plain, 1)
    ah_len = ah_v4 if family == 4 else ah_v6
    assert len(out) == len(plain) + ah_len
    off = 20 if family == 4 else 40
    nh, words, reserved, spi, seq = AH_HEADER.unpack_from(out, off)
    assert (nh, (words + 2) * 4, reserved, spi, seq) == (IpProto.UDP, ah_len, 0, SPI, 1)
    padding = out[off + 12 + icv : off + ah_len]
    assert padding == bytes(ah_len - 12 - icv)
    assert ctx.ah_length(family) == ah_len


def test_transport_ipv4_header_fixed_up() -> None:
    plain = udp4(tos=0x10, flags=0x4000)
    out = encap_ok(AhContext(make_sa()), plain, 7)
    assert out[9] == IpProto.AH
    assert struct.unpack_from("!H", out, 2)[0] == len(out)
    assert checksum(out[:20]) == 0
    assert out[1] == 0x10 and out[6:9] == plain[6:9]  # mutable fields left as they were
    assert out[48:] == plain[20:]


def test_transport_ipv6_after_hop_by_hop() -> None:
    hbh = bytes([IpProto.UDP, 0, 0x05, 0x02, 0, 0, 0x01, 0x00])  # Router Alert + PadN(0)
    plain = udp6(ext=hbh, first_nh=IpProto.HOPOPT)
    out = encap_ok(AhContext(make_sa(family=6)), plain, 7)
    assert out[6] == IpProto.HOPOPT and out[40] == IpProto.AH
    assert out[48] == IpProto.UDP  # AH's next header
    assert struct.unpack_from("!H", out, 4)[0] == len(out) - 40


@pytest.mark.parametrize(("outer", "inner"), [(4, 4), (4, 6), (6, 4), (6, 6)])
def test_tunnel_outer_header(outer: int, inner: int) -> None:
    ctx = AhContext(make_sa(family=outer, mode=Mode.TUNNEL))
    plain = udp4(tos=0xB8, flags=0x4000) if inner == 4 else udp6()
    out = encap_ok(ctx, plain, 0x10002)
    src, dst = V4 if outer == 4 else V6
    if outer == 4:
        assert out[9] == IpProto.AH and out[20] == (IpProto.IPV4 if inner == 4 else IpProto.IPV6)
        assert out[12:16] == src.packed and out[16:20] == dst.packed
        assert out[8] == 64 and checksum(out[:20]) == 0
        assert struct.unpack_from("!H", out, 4)[0] == 0x0002  # identification from the seq
        assert out[1] == (0xB8 if inner == 4 else 0x2E)  # DSCP/ECN copied (RFC 4301 §5.1.2.1)
        assert out[6] & 0x40  # DF copied from the IPv4 inner header, set over IPv6
    else:
        assert out[6] == IpProto.AH and out[40] == (IpProto.IPV4 if inner == 4 else IpProto.IPV6)
        assert out[8:24] == src.packed and out[24:40] == dst.packed
        traffic_class = ((out[0] & 0x0F) << 4) | (out[1] >> 4)
        assert traffic_class == (0xB8 if inner == 4 else 0x2E)
    assert out.endswith(plain)
    assert ctx.decap(out) == (Drop.OK, plain)


def test_tunnel_df_copied() -> None:
    ctx = AhContext(make_sa(mode=Mode.TUNNEL))
    assert not encap_ok(ctx, udp4(), 1)[6] & 0x40


@pytest.mark.parametrize(("outer_ecn", "inner_ecn", "expected"), [
    (3, 2, 3), (3, 1, 3), (3, 3, 3), (3, 0, None),  # CE outside: CE inside, or drop over Not-ECT
    (1, 2, 1),  # ECT(1) over ECT(0) propagates
    (2, 1, 1), (1, 0, 0), (2, 0, 0), (0, 2, 2), (0, 3, 3),  # otherwise the inner field stays
])
@pytest.mark.parametrize(("outer", "inner"), [(4, 4), (6, 6), (4, 6), (6, 4)])
def test_tunnel_ecn_decapsulation(outer: int, inner: int, outer_ecn: int, inner_ecn: int,
                                  expected: int | None) -> None:
    # RFC 6040 §4.2; the outer ECN field is mutable for AH, so the ICV still verifies.
    ctx = AhContext(make_sa(family=outer, mode=Mode.TUNNEL))
    if inner == 4:
        plain = udp4(tos=0xA0 | inner_ecn)
    else:
        v6 = bytearray(udp6())
        v6[1] = (v6[1] & 0xCF) | inner_ecn << 4
        plain = bytes(v6)
    signed = bytearray(encap_ok(ctx, plain, 1))
    if outer == 4:
        signed[1] = (signed[1] & 0xFC) | outer_ecn
        signed = bytearray(refresh_checksum(bytes(signed)))
    else:
        signed[1] = (signed[1] & 0xCF) | outer_ecn << 4
    drop, out = ctx.decap(bytes(signed))
    if expected is None:
        assert (drop, out) == (Drop.ECN, b"")
        return
    assert drop is Drop.OK
    if inner == 4:
        assert out[1] == 0xA0 | expected and checksum(out[:20]) == 0
        assert out[2:10] == plain[2:10] and out[12:] == plain[12:]
    else:
        assert (out[1] >> 4) & 3 == expected and out[2:] == plain[2:]


# --- sequence numbers and ESN: RFC 4302 §2.5, §3.3.3.2.2 ---------------------------------------


def test_sequence_number_range() -> None:
    # The caller owns the counter: 0 or past the SA's space is SEQ_OVERFLOW (RFC 4302 §3.3.2).
    ctx = AhContext(make_sa())
    for bad in (0, -1, 1 << 32):
        assert ctx.encap(udp4(), bad) == (Drop.SEQ_OVERFLOW, b"")
    assert AH_HEADER.unpack_from(encap_ok(ctx, udp4(), 0xFFFFFFFF), 20)[4] == 0xFFFFFFFF
    esn = AhContext(make_sa(esn=True))
    assert esn.encap(udp4(), 1 << 64) == (Drop.SEQ_OVERFLOW, b"")
    assert AH_HEADER.unpack_from(encap_ok(esn, udp4(), 1 << 32), 20)[4] == 0
    assert AH_HEADER.unpack_from(encap_ok(esn, udp4(), (1 << 64) - 1), 20)[4] == 0xFFFFFFFF


def test_esn_high_bits_in_icv_not_on_wire() -> None:
    ctx = AhContext(make_sa(esn=True))
    out = encap_ok(ctx, udp4(), (5 << 32) | 9)
    assert AH_HEADER.unpack_from(out, 20)[4] == 9
    assert len(out) == len(udp4()) + 28  # no extra bytes
    window = FakeWindow(high=5)
    assert ctx.decap(out, window) == (Drop.OK, udp4())
    assert window.updated == [(5 << 32) | 9]
    assert ctx.decap(out, FakeWindow(high=4))[0] is Drop.ICV
    assert ctx.decap(out)[0] is Drop.ICV  # without a window the high bits are taken as 0
    # The same SA without ESN computes a different ICV for the same low bits.
    assert encap_ok(AhContext(make_sa()), udp4(), 9) != out


# --- replay window interplay: RFC 4302 §3.4.3 --------------------------------------------------


def test_replay_checked_before_and_updated_after_icv() -> None:
    ctx = AhContext(make_sa())
    signed = encap_ok(ctx, udp4(), 3)
    refused = FakeWindow(verdict=Drop.REPLAY)
    assert ctx.decap(signed, refused) == (Drop.REPLAY, b"")
    assert refused.checked == [3] and refused.updated == []
    forged = FakeWindow()
    assert ctx.decap(signed[:-1] + bytes([signed[-1] ^ 1]), forged)[0] is Drop.ICV
    assert forged.checked == [3] and forged.updated == []  # a forgery never moves the window


def test_with_the_real_replay_window() -> None:
    from ipsecd import replay
    ctx = AhContext(make_sa(esn=True))
    window = replay.ReplayWindow(64, esn=True)
    first = encap_ok(ctx, udp4(), 1)
    assert ctx.decap(first, window) == (Drop.OK, udp4())
    assert ctx.decap(first, window)[0] is Drop.REPLAY
    later = encap_ok(ctx, udp4(b"later"), 2)
    assert ctx.decap(later, window) == (Drop.OK, udp4(b"later"))


# --- drops ---------------------------------------------------------------------------------------


def test_unknown_spi() -> None:
    signed = encap_ok(AhContext(make_sa(spi=0x2222)), udp4(), 1)
    assert AhContext(make_sa()).decap(signed) == (Drop.UNKNOWN_SPI, b"")


@pytest.mark.parametrize("family", [4, 6])
def test_runts(family: int) -> None:
    ctx = AhContext(make_sa(family=family))
    signed = encap_ok(ctx, udp4() if family == 4 else udp6(), 1)
    hdr = 20 if family == 4 else 40
    for cut in (0, 1, hdr - 1, hdr + 11):
        drop, out = ctx.decap(signed[:cut])
        assert drop is Drop.RUNT and out == b"", cut
    # The IP length says more than there is.
    assert ctx.decap(signed[:-1])[0] is Drop.RUNT


def test_link_layer_padding_is_ignored() -> None:
    ctx = AhContext(make_sa())
    signed = encap_ok(ctx, udp4(b""), 1)
    assert ctx.decap(signed + bytes(60 - len(signed) + 14)) == (Drop.OK, udp4(b""))


def test_not_ah() -> None:
    assert AhContext(make_sa()).decap(udp4()) == (Drop.MALFORMED, b"")
    assert AhContext(make_sa(family=6)).decap(udp6()) == (Drop.MALFORMED, b"")
    assert AhContext(make_sa()).decap(b"\x50" + bytes(40)) == (Drop.MALFORMED, b"")


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x2010])
def test_ipv4_fragment_dropped(frag: int) -> None:
    # RFC 4302 §3.4.1: a fragment offered to AH MUST be discarded.
    ctx = AhContext(make_sa())
    signed = bytearray(encap_ok(ctx, udp4(), 1))
    struct.pack_into("!H", signed, 6, frag)
    assert ctx.decap(refresh_checksum(bytes(signed)))[0] is Drop.MALFORMED


def test_ipv6_fragment_header_dropped() -> None:
    ctx = AhContext(make_sa(family=6))
    signed = encap_ok(ctx, udp6(), 1)
    frag = bytes([IpProto.AH, 0, 0, 0, 0, 0, 0, 1])
    fragmented = bytearray(signed[:40] + frag + signed[40:])
    fragmented[6] = IpProto.IPV6_FRAG
    struct.pack_into("!H", fragmented, 4, len(fragmented) - 40)
    assert ctx.decap(bytes(fragmented))[0] is Drop.MALFORMED


@pytest.mark.parametrize("family", [4, 6])
def test_bad_ah_length(family: int) -> None:
    ctx = AhContext(make_sa(family=family))
    signed = encap_ok(ctx, udp4() if family == 4 else udp6(), 1)
    off = 21 if family == 4 else 41
    for words in (0, 1, signed[off] - 1, signed[off] + 3, 255):
        assert ctx.decap(set_byte(signed, off, words))[0] in (Drop.MALFORMED, Drop.RUNT), words


def test_ipv6_needs_64_bit_alignment() -> None:
    # SHA2-256 in IPv6 is 32 bytes; the 28-byte IPv4 form is not accepted there.
    ctx = AhContext(make_sa(family=6))
    signed = encap_ok(ctx, udp6(), 1)
    assert ctx.decap(set_byte(signed, 41, signed[41] - 1))[0] is Drop.MALFORMED


def test_tunnel_bad_next_header_and_bad_inner() -> None:
    # A transport-mode SA with the same key produces packets with an
    # authentic ICV whose next header a tunnel-mode SA cannot deliver.
    transport = AhContext(make_sa())
    tunnel = AhContext(make_sa(mode=Mode.TUNNEL))
    assert tunnel.decap(encap_ok(transport, udp4(), 1)) == (Drop.BAD_NEXT_HEADER, b"")
    ipip_garbage = bytearray(udp4())
    ipip_garbage[9] = IpProto.IPV4
    signed = encap_ok(transport, refresh_checksum(bytes(ipip_garbage)), 2)
    assert tunnel.decap(signed) == (Drop.MALFORMED, b"")


def test_tunnel_ipcomp_payload_comes_back_without_ah() -> None:
    """Next header 108 in tunnel mode (IPComp inside AH, RFC 3173): BAD_NEXT_HEADER for a
    caller without IPComp, with the verified packet less AH for one that has it."""
    transport = AhContext(make_sa())
    tunnel = AhContext(make_sa(mode=Mode.TUNNEL))
    ipcomp = bytearray(udp4())
    ipcomp[9] = IpProto.IPCOMP  # what the IPComp codec puts in front in tunnel mode
    ipcomp = bytearray(refresh_checksum(bytes(ipcomp)))
    drop, packet = tunnel.decap(encap_ok(transport, bytes(ipcomp), 1))
    assert (drop, packet) == (Drop.BAD_NEXT_HEADER, bytes(ipcomp))
    # a bad ICV is still just a drop, with nothing
    signed = bytearray(encap_ok(transport, bytes(ipcomp), 2))
    signed[-1] ^= 1
    assert tunnel.decap(bytes(signed)) == (Drop.ICV, b"")


# --- mutable fields: RFC 4302 §3.3.3.1 ----------------------------------------------------------


def test_ipv4_mutable_fields_do_not_count() -> None:
    ctx = AhContext(make_sa())
    signed = encap_ok(ctx, udp4(tos=0x10), 1)
    routed = bytearray(signed)
    routed[1] = 0xFF  # DSCP + ECN
    routed[6] = 0x40 | 0x80  # DF and the reserved flag
    routed[8] = 1  # TTL
    assert ctx.decap(refresh_checksum(bytes(routed)))[0] is Drop.OK
    routed[10] ^= 0xFF  # even a wrong checksum: it is not covered (RFC 4302 §3.3.3.1.1.1)
    assert ctx.decap(bytes(routed))[0] is Drop.OK


@pytest.mark.parametrize(("index", "field"), [(2, "total length"), (4, "identification"), (9, "protocol"),
                                               (12, "source"), (19, "destination")])
def test_ipv4_immutable_fields_count(index: int, field: str) -> None:
    ctx = AhContext(make_sa())
    signed = encap_ok(ctx, udp4(), 1)
    assert ctx.decap(refresh_checksum(set_byte(signed, index, signed[index] ^ 0x04)))[0] is not Drop.OK, field


def test_ipv4_options_by_appendix_a() -> None:
    # Security (0x82, immutable), Record Route (0x07, mutable), an unknown
    # option (0x9E, treated as mutable), NOP, End of List and padding.
    security = bytes([0x82, 11]) + bytes(range(9))
    record_route = bytes([0x07, 7, 4]) + bytes(4)
    unknown = bytes([0x9E, 4, 0xAA, 0xBB])
    options = security + bytes([0x01]) + record_route + unknown + bytes(5)
    assert len(options) % 4 == 0
    ctx = AhContext(make_sa())
    signed = encap_ok(ctx, udp4(options=options), 1)
    rr = 20 + len(security) + 1
    recorded = bytearray(signed)
    recorded[rr + 2] = 8  # pointer moved on
    recorded[rr + 3 : rr + 7] = bytes([203, 0, 113, 1])
    recorded[rr + 9] = 0x55  # the unknown option's data changed
    assert ctx.decap(refresh_checksum(bytes(recorded)))[0] is Drop.OK
    for index in (20, 22, 20 + len(security)):  # Security type, Security data, NOP
        assert ctx.decap(refresh_checksum(set_byte(signed, index, signed[index] ^ 0x10)))[0] is Drop.ICV
    # Bytes after End of List are padding and covered as they are.
    assert ctx.decap(refresh_checksum(set_byte(signed, 20 + len(options) - 1, 1)))[0] is Drop.ICV


@pytest.mark.parametrize("options", [bytes([0x07, 1, 0, 0]), bytes([0x07, 9, 4, 0]), bytes([0x01, 0x01, 0x01, 0x44])])
def test_ipv4_malformed_options(options: bytes) -> None:
    ctx = AhContext(make_sa())
    assert ctx.encap(udp4(options=options), 1) == (Drop.MALFORMED, b"")
    good = encap_ok(ctx, udp4(options=bytes([0x01, 0x01, 0x01, 0x00])), 1)
    broken = bytearray(good)
    broken[20:24] = options
    assert ctx.decap(refresh_checksum(bytes(broken)))[0] is Drop.MALFORMED


def test_ipv4_strict_source_route_uses_final_destination() -> None:
    # RFC 4302 §3.3.3.1.1.1: with source routing the destination is mutable
    # but predictable; the ICV uses the final destination (the last address).
    ssrr = bytes([0x89, 11, 4]) + bytes([10, 9, 0, 1]) + V4[1].packed + bytes([0])
    ctx = AhContext(make_sa())
    plain = bytearray(udp4(options=ssrr))
    plain[16:20] = bytes([10, 8, 0, 1])  # first hop
    signed = encap_ok(ctx, refresh_checksum(bytes(plain)), 1)
    arrived = bytearray(signed)
    arrived[16:20] = V4[1].packed  # after both hops
    arrived[23:31] = bytes([10, 8, 0, 1, 10, 9, 0, 1])  # recorded hops
    arrived[22] = 12  # pointer past the end: route used up
    assert ctx.decap(refresh_checksum(bytes(arrived)))[0] is Drop.OK
    arrived[16:20] = bytes([10, 7, 0, 1])  # but a different destination is not allowed
    assert ctx.decap(refresh_checksum(bytes(arrived)))[0] is Drop.ICV


def _hbh(nh: int, options: bytes) -> bytes:
    body = bytes([nh, 0]) + options
    pad = -len(body) % 8
    if pad == 1:
        body += b"\x00"
    elif pad:
        body += bytes([0x01, pad - 2]) + bytes(pad - 2)
    return bytes([body[0], len(body) // 8 - 1]) + body[2:]


def test_ipv6_mutable_fields_and_options() -> None:
    mutable = bytes([0x3E, 3, 1, 2, 3])
    immutable = bytes([0x1E, 2, 7, 7])
    hbh = _hbh(IpProto.UDP, mutable + immutable)
    ctx = AhContext(make_sa(family=6))
    signed = encap_ok(ctx, udp6(ext=hbh, first_nh=IpProto.HOPOPT), 1)
    routed = bytearray(signed)
    routed[0:4] = bytes([0x6F, 0xFF, 0xFF, 0xFF])  # traffic class and flow label
    routed[7] = 1  # hop limit
    routed[44:47] = b"xyz"  # the mutable option's data
    assert ctx.decap(bytes(routed))[0] is Drop.OK
    for index in (42, 43, 49):  # mutable option's type and length, immutable option's data
        assert ctx.decap(set_byte(signed, index, signed[index] ^ 0x01))[0] is not Drop.OK


def _routing(nh: int, routing_type: int, segments_left: int, addresses: list[bytes]) -> bytes:
    return bytes([nh, 2 * len(addresses), routing_type, segments_left, 0, 0, 0, 0]) + b"".join(addresses)


def test_ipv6_type2_routing_header() -> None:
    # Mobile IPv6 (RFC 6275 §6.4): the care-of address is the destination, the
    # home address in the header; the receiver swaps them.
    home = ipaddress.ip_address("2001:db8:ff::1").packed
    rh2 = _routing(IpProto.UDP, 2, 1, [home])
    ctx = AhContext(make_sa(family=6))
    signed = encap_ok(ctx, udp6(ext=rh2, first_nh=IpProto.IPV6_ROUTE), 1)
    assert signed[40] == IpProto.AH  # AH after the routing header
    processed = bytearray(signed)
    processed[24:40], processed[48:64] = home, signed[24:40]
    processed[43] = 0
    assert ctx.decap(bytes(processed))[0] is Drop.OK
    assert ctx.decap(signed)[0] is Drop.OK  # or predicted before processing


def test_ipv6_unpredictable_routing_header() -> None:
    srh = _routing(IpProto.UDP, 4, 1, [V6[1].packed])
    ctx = AhContext(make_sa(family=6))
    assert ctx.encap(udp6(ext=srh, first_nh=IpProto.IPV6_ROUTE), 1) == (Drop.MALFORMED, b"")
    done = _routing(IpProto.UDP, 4, 0, [V6[1].packed])  # segments left 0: covered as is
    signed = encap_ok(ctx, udp6(ext=done, first_nh=IpProto.IPV6_ROUTE), 1)
    assert ctx.decap(signed)[0] is Drop.OK
    assert ctx.decap(set_byte(signed, 43, 1))[0] is Drop.MALFORMED


# --- encap refusals -------------------------------------------------------------------------------


def test_encap_refusals() -> None:
    ctx = AhContext(make_sa())
    assert ctx.encap(udp4(flags=0x2000), 1) == (Drop.MALFORMED, b"")  # RFC 4302 §3.3.4: whole datagrams
    assert ctx.encap(b"\x00" * 40, 1) == (Drop.MALFORMED, b"")
    assert ctx.encap(b"", 1) == (Drop.RUNT, b"")
    assert ctx.encap(udp4()[:-1], 1) == (Drop.RUNT, b"")
    assert ctx.encap(udp4(bytes(65535 - 28)), 1) == (Drop.MTU, b"")
    frag = bytes([IpProto.UDP, 0, 0, 0, 0, 0, 0, 1])
    v6 = AhContext(make_sa(family=6))
    assert v6.encap(udp6(ext=frag, first_nh=IpProto.IPV6_FRAG), 1) == (Drop.MALFORMED, b"")
    assert AhContext(make_sa(mode=Mode.TUNNEL)).encap(udp4(bytes(65535 - 28)), 1) == (Drop.MTU, b"")
    # In tunnel mode a fragment is just payload.
    tunnel = AhContext(make_sa(mode=Mode.TUNNEL))
    fragment = udp4(flags=0x2000)
    assert tunnel.decap(encap_ok(tunnel, fragment, 1)) == (Drop.OK, fragment)


# --- helpers ---------------------------------------------------------------------------------------


def test_spi_of() -> None:
    assert spi_of(encap_ok(AhContext(make_sa()), udp4(), 1)) == SPI
    hbh = _hbh(IpProto.UDP, b"")
    assert spi_of(encap_ok(AhContext(make_sa(family=6)), udp6(ext=hbh, first_nh=IpProto.HOPOPT), 1)) == SPI
    assert spi_of(udp4()) is None
    assert spi_of(b"\x45") is None


def test_ip_datagram() -> None:
    assert ip_datagram(udp4() + b"pad") == udp4()
    assert ip_datagram(memoryview(udp6())) == udp6()


# --- the frozen scapy corpus ------------------------------------------------------------------------


def _corpus() -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = json.loads(CORPUS.read_text())["vectors"]
    return vectors


@pytest.mark.parametrize("vector", _corpus(), ids=lambda v: f"{v['scapy_name']}-{v['mode']}-{v['src']}")
def test_corpus(vector: dict[str, object]) -> None:
    sa = SecurityAssociation(
        spi=int(str(vector["spi"])), protocol=IpProto.AH,
        src=ipaddress.ip_address(str(vector["src"])), dst=ipaddress.ip_address(str(vector["dst"])),
        mode=Mode(str(vector["mode"])), auth=IntegId(int(str(vector["algorithm"]))),
        auth_key=bytearray.fromhex(str(vector["key"])), esn=bool(vector["esn"]))
    ctx = AhContext(sa, allow_legacy=True)
    seq = int(str(vector["seq"]))
    signed = bytes.fromhex(str(vector["signed"]))
    plain = bytes.fromhex(str(vector["plain"]))
    assert ctx.decap(signed, FakeWindow(seq >> 32)) == (Drop.OK, plain)
    if sa.mode is Mode.TRANSPORT:
        assert encap_ok(ctx, plain, seq) == signed
