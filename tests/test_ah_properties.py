"""Properties of the AH codec (hypothesis).

1. decap(encap(p)) == p for every integrity transform, mode, address family
   (and mix in tunnel mode), ESN on and off, and payloads of 0 to 1500 bytes.
2. One flipped bit anywhere in an AH packet: never an exception; a counted
   drop if the bit is covered by the ICV (RFC 4302 §3.3.3.1) and success if it
   lies in a mutable field the ICV treats as zero.  Checked for random packets
   and bits, and exhaustively for every bit of a few fixed packets.

Each generated packet records which of its header bytes are mutable, from
how it was built (not by parsing it again with the code under test).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipsecd.ah
from ipsecd.ah import AhContext
from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpProto
from ipsecd.packet import checksum, ipv4_header, ipv6_header
from ipsecd.sa import Mode, SecurityAssociation

KEYS = {
    IntegId.AUTH_HMAC_SHA2_256_128: 32,
    IntegId.AUTH_HMAC_SHA2_384_192: 48,
    IntegId.AUTH_HMAC_SHA2_512_256: 64,
    IntegId.AUTH_HMAC_SHA1_96: 20,
    IntegId.AUTH_HMAC_MD5_96: 16,
}
OUTER = {
    4: (ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.20")),
    6: (ipaddress.ip_address("2001:db8:10::1"), ipaddress.ip_address("2001:db8:20::1")),
}
SPI = 0x4242

# Bit classes of a header byte.
IMMUTABLE = "immutable"  # flipping must be dropped
MUTABLE = "mutable"  # flipping must still verify
FRAGMENT = "fragment"  # flipping turns the packet into a fragment: MALFORMED
ANY = "any"  # an IPv4 mutable option: zeroed whole, but its bytes also steer parsing

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    """Stands in for the anti-replay window (not under test here): supplies the ESN high bits."""

    def __init__(self, high: int) -> None:
        self.high = high

    def check(self, seq_low: int, /) -> tuple[Drop, int]:
        return Drop.OK, (self.high << 32) | seq_low

    def update(self, seq: int, /) -> None:
        pass


@dataclass
class Plain:
    """A generated IP packet and the class of each byte before the AH insertion point."""

    data: bytes
    header_classes: list[str] = field(default_factory=list)  # one per byte of the header part

    def bit_class(self, byte: int, bit: int) -> str:
        return self.header_classes[byte] if byte < len(self.header_classes) else IMMUTABLE


def ipv4_classes(header_len: int, options: list[tuple[bytes, bool]]) -> list[str]:
    classes = [IMMUTABLE] * header_len
    for index in (1, 8, 10, 11):  # TOS, TTL, checksum
        classes[index] = MUTABLE
    classes[6] = classes[7] = FRAGMENT  # refined per bit in outer_bit_class
    at = 20
    for option, mutable in options:
        for i in range(at, at + len(option)):
            classes[i] = ANY if mutable else IMMUTABLE
        at += len(option)
    return classes


IPV4_OPTIONS = [
    (bytes([0x94, 4, 0, 0]), False),  # Router Alert (immutable)
    (bytes([0x07, 7, 4]) + bytes(4) + b"\x01", True),  # Record Route + NOP (mutable)
    (bytes([0x44, 8, 5, 0]) + bytes(4), True),  # Timestamp (mutable)
    (bytes([0x82, 11]) + bytes(range(1, 10)) + b"\x01", False),  # Security + NOP (immutable)
]


@st.composite
def ipv4_packets(draw: st.DrawFn, payload: bytes) -> Plain:
    options = draw(st.lists(st.sampled_from(IPV4_OPTIONS), max_size=2, unique=True))
    opt_bytes = b"".join(o for o, _ in options)
    header = bytearray(ipv4_header(
        OUTER[4][0].packed if draw(st.booleans()) else bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
        draw(st.sampled_from([IpProto.UDP, IpProto.TCP, IpProto.ICMP, 253])),
        len(payload), ttl=draw(st.integers(1, 255)), tos=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 0xFFFF)), df=draw(st.booleans())))
    if opt_bytes:
        header[0] = 0x40 | (20 + len(opt_bytes)) // 4
        header += opt_bytes
        struct.pack_into("!H", header, 2, len(header) + len(payload))
        header[10:12] = b"\x00\x00"
        struct.pack_into("!H", header, 10, checksum(header))
    return Plain(bytes(header) + payload, ipv4_classes(len(header), options))


def hbh_header(nh: int, options: list[tuple[int, bytes]]) -> tuple[bytes, list[str]]:
    body = bytearray([nh, 0])
    classes = [IMMUTABLE, IMMUTABLE]
    for kind, data in options:
        body += bytes([kind, len(data)]) + data
        classes += [IMMUTABLE, IMMUTABLE] + [MUTABLE if kind & 0x20 else IMMUTABLE] * len(data)
    pad = -len(body) % 8
    if pad == 1:
        body += b"\x00"
    elif pad:
        body += bytes([0x01, pad - 2]) + bytes(pad - 2)
    classes += [IMMUTABLE] * pad
    body[1] = len(body) // 8 - 1
    return bytes(body), classes


@st.composite
def ipv6_packets(draw: st.DrawFn, payload: bytes) -> Plain:
    upper = draw(st.sampled_from([IpProto.UDP, IpProto.TCP, IpProto.ICMPV6, IpProto.IPV6_NONXT]))
    ext = b""
    ext_classes: list[str] = []
    if draw(st.booleans()):
        options = draw(st.lists(st.tuples(
            st.sampled_from([0x1E, 0x3E, 0x05, 0xDE, 0x7E]), st.binary(min_size=0, max_size=12)),
            max_size=3))
        ext, ext_classes = hbh_header(upper, options)
    header = ipv6_header(
        OUTER[6][0].packed, bytes(15) + b"\x07", IpProto.HOPOPT if ext else upper,
        len(ext) + len(payload), hop_limit=draw(st.integers(0, 255)),
        traffic_class=draw(st.integers(0, 255)), flow_label=draw(st.integers(0, 0xFFFFF)))
    classes = [MUTABLE if i in (1, 2, 3, 7) else IMMUTABLE for i in range(40)]
    classes[0] = "version+tc"
    return Plain(bytes(header) + ext + payload, classes + ext_classes)


def make_ctx(integ: IntegId, mode: Mode, outer: int, esn: bool) -> AhContext:
    src, dst = OUTER[outer]
    sa = SecurityAssociation(
        spi=SPI, protocol=IpProto.AH, src=src, dst=dst, mode=mode, auth=integ,
        auth_key=bytearray(bytes(range(100, 100 + KEYS[integ]))), esn=esn)
    return AhContext(sa, allow_legacy=True)


SHAPES = [(Mode.TRANSPORT, 4, 4), (Mode.TRANSPORT, 6, 6), (Mode.TUNNEL, 4, 4),
          (Mode.TUNNEL, 6, 6), (Mode.TUNNEL, 4, 6), (Mode.TUNNEL, 6, 4)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[AhContext, Plain, int, int]:
    integ = draw(st.sampled_from(list(KEYS)))
    mode, outer, inner = draw(st.sampled_from(SHAPES))
    esn = draw(st.booleans())
    payload = draw(st.binary(min_size=0, max_size=1500))
    plain = draw(ipv4_packets(payload) if inner == 4 else ipv6_packets(payload))
    seq = draw(st.integers(1, (1 << 64) - 1 if esn else (1 << 32) - 1))
    return make_ctx(integ, mode, outer, esn), plain, seq, outer


@SETTINGS
@given(cases())
def test_roundtrip(case: tuple[AhContext, Plain, int, int]) -> None:
    ctx, plain, seq, _ = case
    signed = encap_ok(ctx, plain.data, seq)
    assert ctx.decap(signed, FakeWindow(seq >> 32)) == (Drop.OK, plain.data)


def expected_for_bit(ctx: AhContext, plain: Plain, outer: int, byte: int, bit: int) -> str:
    """The class of bit ``bit`` of byte ``byte`` of the packet ``ctx`` made of ``plain``."""
    if ctx.mode is Mode.TUNNEL:
        # New outer header, then AH, then the inner packet covered verbatim.
        classes = ipv4_classes(20, []) if outer == 4 else \
            ["version+tc"] + [MUTABLE if i in (1, 2, 3, 7) else IMMUTABLE for i in range(1, 40)]
        kind = classes[byte] if byte < len(classes) else IMMUTABLE
    else:
        kind = plain.bit_class(byte, bit)
    if kind == "version+tc":
        return IMMUTABLE if bit >= 4 else MUTABLE  # bits 7..4 are the version
    if kind == FRAGMENT:
        if byte == 6 and bit >= 6:  # reserved flag, DF
            return MUTABLE
        return FRAGMENT  # MF and the fragment offset
    return kind


def check_flip(ctx: AhContext, signed: bytes, seq: int, byte: int, bit: int, expected: str) -> None:
    flipped = bytearray(signed)
    flipped[byte] ^= 1 << bit
    drop, out = ctx.decap(bytes(flipped), FakeWindow(seq >> 32))
    where = f"byte {byte} bit {bit} ({expected}) -> {drop.name}"
    if expected == MUTABLE:
        assert drop is Drop.OK, where
    elif expected == FRAGMENT:
        assert drop is Drop.MALFORMED, where
    elif expected == IMMUTABLE:
        assert drop is not Drop.OK and out == b"", where
    else:
        assert drop in (Drop.OK, Drop.ICV, Drop.MALFORMED), where


@SETTINGS
@given(cases(), st.data())
def test_single_bit_flip(case: tuple[AhContext, Plain, int, int], data: st.DataObject) -> None:
    ctx, plain, seq, outer = case
    signed = encap_ok(ctx, plain.data, seq)
    byte = data.draw(st.integers(0, len(signed) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    check_flip(ctx, signed, seq, byte, bit, expected_for_bit(ctx, plain, outer, byte, bit))


FIXED = [
    pytest.param(Mode.TRANSPORT, 4, 4, id="transport-v4-options"),
    pytest.param(Mode.TRANSPORT, 6, 6, id="transport-v6-hbh"),
    pytest.param(Mode.TUNNEL, 6, 4, id="tunnel-v4in6"),
]


@pytest.mark.parametrize("integ", list(KEYS), ids=lambda i: i.name)
@pytest.mark.parametrize(("mode", "outer", "inner"), FIXED)
def test_every_bit_flip(integ: IntegId, mode: Mode, outer: int, inner: int) -> None:
    payload = b"exhaustive"
    if inner == 4:
        options = [IPV4_OPTIONS[0], IPV4_OPTIONS[1]]
        header = bytearray(ipv4_header(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), IpProto.UDP,
                                       len(payload), ttl=9, tos=0x20, ident=7, df=True))
        opt = b"".join(o for o, _ in options)
        header[0] = 0x40 | (20 + len(opt)) // 4
        header += opt
        struct.pack_into("!H", header, 2, len(header) + len(payload))
        header[10:12] = b"\x00\x00"
        struct.pack_into("!H", header, 10, checksum(header))
        plain = Plain(bytes(header) + payload, ipv4_classes(len(header), options))
    else:
        ext, ext_classes = hbh_header(IpProto.UDP, [(0x3E, b"mut"), (0x1E, b"imm"), (0x05, b"\x00\x00")])
        header = ipv6_header(OUTER[6][0].packed, OUTER[6][1].packed, IpProto.HOPOPT,
                             len(ext) + len(payload), traffic_class=3, flow_label=5)
        classes = ["version+tc"] + [MUTABLE if i in (1, 2, 3, 7) else IMMUTABLE for i in range(1, 40)]
        plain = Plain(bytes(header) + ext + payload, classes + ext_classes)
    ctx = make_ctx(integ, mode, outer, esn=True)
    seq = (2 << 32) | 99
    signed = encap_ok(ctx, plain.data, seq)
    for byte in range(len(signed)):
        for bit in range(8):
            check_flip(ctx, signed, seq, byte, bit, expected_for_bit(ctx, plain, outer, byte, bit))
