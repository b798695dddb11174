"""IPComp (RFC 3173) with DEFLATE (RFC 2394): ipsecd.ipcomp.

scapy has no IPComp layer (only the IKE transform names), so the wire format
is checked independently: headers parsed by hand per RFC 3173 §2.2 (Next
Header, Flags, CPI) and the IP headers per RFC 791/8200, the compressed data
inflated with zlib directly (with a 2 KiB window, as Linux does), and the
inbound side fed hand-made DEFLATE streams (RFC 1951) that were not produced
by ipsecd.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipsecd.ah
from ipsecd.ah import AhContext
from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpcompId, IpProto
from ipsecd.ipcomp import DEFAULT_THRESHOLD, IpcompContext, check_cpi, inflate
from ipsecd.packet import checksum, ipv4_header, ipv6_header
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import TransformError

CPI = 0x1234
V4 = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("198.51.100.2"))
V6 = (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2"))
TEXT = b"IP payload compression, RFC 3173. " * 40  # compresses well

# RFC 1951 streams made by hand, not by ipsecd:
# - "hello" in one final block with fixed Huffman codes (BFINAL=1, BTYPE=01);
#   the same bytes sit between the zlib header and Adler-32 of zlib.compress(b"hello").
DEFLATE_FIXED_HELLO = bytes.fromhex("cb48cdc9c90700")
# - "hello" in one final stored block: header bits 1,00; LEN=5, NLEN=~5; the bytes.
DEFLATE_STORED_HELLO = bytes([0x01, 0x05, 0x00, 0xFA, 0xFF]) + b"hello"


@pytest.fixture(autouse=True, scope="module")
def _raise_unexpected() -> Iterator[None]:
    """Unexpected exceptions in the codecs fail the test instead of becoming MALFORMED."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ipsecd.ah, "RAISE_UNEXPECTED", True)
        yield


def compress(ctx: IpcompContext, packet: bytes) -> bytes:
    drop, out = ctx.encap(packet)
    assert drop is Drop.OK, drop
    return out


def sign(ctx: AhContext, packet: bytes, seq: int) -> bytes:
    drop, out = ctx.encap(packet, seq)
    assert drop is Drop.OK, drop
    return out


def make_sa(*, family: int = 4, mode: Mode = Mode.TRANSPORT, cpi: int = CPI,
            comp: IpcompId | None = IpcompId.IPCOMP_DEFLATE, protocol: IpProto = IpProto.IPCOMP) -> SecurityAssociation:
    src, dst = V4 if family == 4 else V6
    return SecurityAssociation(spi=cpi, protocol=protocol, src=src, dst=dst, mode=mode, comp=comp)


def udp4(payload: bytes, *, tos: int = 0, df: bool = False, flags: int | None = None) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    hdr = bytearray(ipv4_header(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), IpProto.UDP, len(udp),
                                tos=tos, df=df, ident=77, ttl=33))
    if flags is not None:
        struct.pack_into("!H", hdr, 6, flags)
        hdr[10:12] = b"\x00\x00"
        struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + udp


def udp6(payload: bytes, *, ext: bytes = b"", first_nh: int = IpProto.UDP) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return bytes(ipv6_header(V6[0].packed, V6[1].packed, first_nh if ext else IpProto.UDP,
                             len(ext) + len(udp), traffic_class=0x12)) + ext + udp


def hand_built_v4(next_header: int, cpi: int, compressed: bytes, *, flags: int = 0) -> bytes:
    """An IPv4 packet with an IPComp header built per RFC 3173 §2.2, independently of ipsecd."""
    body = struct.pack("!BBH", next_header, flags, cpi) + compressed
    return bytes(ipv4_header(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), IpProto.IPCOMP, len(body),
                             ident=77, ttl=33)) + body


# --- construction and the CPI: RFC 3173 §2.2, §3.3 ------------------------------------------------


@pytest.mark.parametrize("cpi", [2, 256, 0x1234, 61439, 61440, 0xFFFF])
def test_valid_cpis(cpi: int) -> None:
    assert IpcompContext(make_sa(cpi=cpi)).cpi == cpi


@pytest.mark.parametrize(("cpi", "reason"), [
    (0, "16-bit"), (0x10000, "16-bit"), (0x12345678, "16-bit"),
    (1, "well-known"), (3, "well-known"), (63, "well-known"),  # another algorithm's well-known CPI
    (64, "reserved"), (255, "reserved"),
])
def test_invalid_cpis(cpi: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_cpi(cpi, IpcompId.IPCOMP_DEFLATE)
    with pytest.raises(ValueError):
        IpcompContext(make_sa(cpi=cpi))


def test_refusals() -> None:
    with pytest.raises(ValueError, match="IPComp SA"):
        IpcompContext(make_sa(protocol=IpProto.ESP))
    with pytest.raises(TransformError):
        IpcompContext(make_sa(comp=None))
    with pytest.raises(TransformError):
        IpcompContext(make_sa(comp=IpcompId.IPCOMP_LZS))
    with pytest.raises(ValueError):
        IpcompContext(make_sa(), threshold=-1)


def test_mode_any_is_transport_unless_told() -> None:
    assert IpcompContext(make_sa(mode=Mode.ANY)).mode is Mode.TRANSPORT
    assert IpcompContext(make_sa(mode=Mode.ANY), mode=Mode.TUNNEL).mode is Mode.TUNNEL


# --- the wire format, checked by hand ----------------------------------------------------------------


def test_ipv4_transport_wire_format() -> None:
    plain = udp4(TEXT, tos=0x28, df=True)
    out = compress(IpcompContext(make_sa()), plain)
    # IPv4 header: only protocol, total length and checksum change (RFC 3173 §2.1).
    assert out[9] == IpProto.IPCOMP
    assert struct.unpack_from("!H", out, 2)[0] == len(out) < len(plain)
    assert checksum(out[:20]) == 0
    assert out[:2] == plain[:2] and out[4:9] == plain[4:9] and out[12:20] == plain[12:20]
    # IPComp header (RFC 3173 §2.2): next header, flags 0, CPI.
    next_header, flags, cpi = struct.unpack_from("!BBH", out, 20)
    assert (next_header, flags, cpi) == (IpProto.UDP, 0, CPI)
    # The rest is a raw DEFLATE stream of the UDP datagram (RFC 2394); it
    # decodes with Linux's 2 KiB window and has no zlib header.
    assert zlib.decompress(out[24:], wbits=-11) == plain[20:]
    assert zlib.decompress(out[24:], wbits=-15) == plain[20:]
    with pytest.raises(zlib.error):
        zlib.decompress(out[24:], wbits=15)


def test_ipv6_transport_after_hop_by_hop() -> None:
    hbh = bytes([IpProto.UDP, 0, 0x05, 0x02, 0, 0, 0x01, 0x00])
    plain = udp6(TEXT, ext=hbh, first_nh=IpProto.HOPOPT)
    out = compress(IpcompContext(make_sa(family=6)), plain)
    # RFC 3173 §2.1: hop-by-hop options stay uncompressed in front.
    assert out[:4] == plain[:4] and out[6] == IpProto.HOPOPT and out[7:40] == plain[7:40]
    assert out[40] == IpProto.IPCOMP and out[41:48] == hbh[1:]
    assert struct.unpack_from("!H", out, 4)[0] == len(out) - 40
    assert struct.unpack_from("!BBH", out, 48) == (IpProto.UDP, 0, CPI)
    assert zlib.decompress(out[52:], wbits=-11) == plain[48:]


def test_ipv6_destination_options_are_compressed() -> None:
    # Destination options without a routing header are end-to-end (RFC 3173 §2.1).
    dest = bytes([IpProto.UDP, 0, 0x1E, 0x04, 1, 2, 3, 4])
    plain = udp6(TEXT, ext=dest, first_nh=IpProto.IPV6_OPTS)
    out = compress(IpcompContext(make_sa(family=6)), plain)
    assert out[6] == IpProto.IPCOMP
    assert struct.unpack_from("!BBH", out, 40) == (IpProto.IPV6_OPTS, 0, CPI)
    assert zlib.decompress(out[44:], wbits=-15) == plain[40:]


@pytest.mark.parametrize(("outer", "inner"), [(4, 4), (4, 6), (6, 4), (6, 6)])
def test_tunnel_wire_format(outer: int, inner: int) -> None:
    ctx = IpcompContext(make_sa(family=outer, mode=Mode.TUNNEL))
    plain = udp4(TEXT) if inner == 4 else udp6(TEXT)
    out = compress(ctx, plain)
    hdr = 20 if outer == 4 else 40
    src, dst = V4 if outer == 4 else V6
    assert out[9 if outer == 4 else 6] == IpProto.IPCOMP
    if outer == 4:
        assert out[12:16] == src.packed and out[16:20] == dst.packed and checksum(out[:20]) == 0
    else:
        assert out[8:24] == src.packed and out[24:40] == dst.packed
    assert struct.unpack_from("!BBH", out, hdr) == (IpProto.IPV4 if inner == 4 else IpProto.IPV6, 0, CPI)
    assert zlib.decompress(out[hdr + 4 :], wbits=-11) == plain
    assert ctx.decap(out) == (Drop.OK, plain)


# --- non-expansion and threshold: RFC 3173 §2.2 ---------------------------------------------------------


def test_incompressible_is_sent_as_is() -> None:
    noise = os.urandom(1400)
    assert compress(IpcompContext(make_sa()), udp4(noise)) == udp4(noise)
    assert compress(IpcompContext(make_sa(family=6)), udp6(noise)) == udp6(noise)


def test_incompressible_tunnel_is_ip_in_ip() -> None:
    noise = udp4(os.urandom(1400))
    ctx = IpcompContext(make_sa(mode=Mode.TUNNEL))
    out = compress(ctx, noise)
    assert out[9] == IpProto.IPV4 and out[20:] == noise
    assert ctx.decap(out) == (Drop.OK, noise)


def test_threshold() -> None:
    small = b"a" * (DEFAULT_THRESHOLD - 8 - 1)  # UDP datagram one byte under the threshold
    assert compress(IpcompContext(make_sa()), udp4(small)) == udp4(small)
    at = b"a" * (DEFAULT_THRESHOLD - 8)
    assert compress(IpcompContext(make_sa()), udp4(at))[9] == IpProto.IPCOMP
    assert compress(IpcompContext(make_sa(), threshold=0), udp4(b"a" * 40))[9] == IpProto.IPCOMP


def test_no_gain_is_sent_as_is() -> None:
    # Compressed + 4-byte header not smaller than the original: original (RFC 3173 §2.2).
    ctx = IpcompContext(make_sa(), threshold=0)
    for size in range(0, 40):
        plain = udp4(os.urandom(size))
        out = compress(ctx, plain)
        assert out == plain or len(out) < len(plain)


# --- inbound ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [DEFLATE_FIXED_HELLO, DEFLATE_STORED_HELLO], ids=["fixed", "stored"])
def test_known_deflate_vectors(stream: bytes) -> None:
    assert zlib.decompress(stream, wbits=-15) == b"hello"  # the vectors are what they claim
    udp = struct.pack("!HHHH", 1000, 2000, 8 + 5, 0)
    # Compress only the UDP payload's stream here: the IPComp payload is the
    # UDP header (raw, in a stored block) followed by "hello".
    stored_udp = bytes([0x00, len(udp), 0x00, 0xFF ^ len(udp), 0xFF]) + udp
    packet = hand_built_v4(IpProto.UDP, CPI, stored_udp + stream)
    drop, out = IpcompContext(make_sa()).decap(packet)
    assert drop is Drop.OK
    assert out == udp4(b"hello")


def test_flags_ignored_on_receipt() -> None:
    packet = hand_built_v4(IpProto.UDP, CPI, zlib.compress(udp4(TEXT)[20:], wbits=-15), flags=0xA5)
    assert IpcompContext(make_sa()).decap(packet) == (Drop.OK, udp4(TEXT))


def test_uncompressed_packets_accepted() -> None:
    assert IpcompContext(make_sa()).decap(udp4(b"x")) == (Drop.OK, udp4(b"x"))
    assert IpcompContext(make_sa(family=6)).decap(udp6(b"x")) == (Drop.OK, udp6(b"x"))
    tunnel = IpcompContext(make_sa(mode=Mode.TUNNEL))
    assert tunnel.decap(udp4(b"x"))[0] is Drop.BAD_NEXT_HEADER  # neither IPComp nor IP-in-IP


def test_unknown_cpi() -> None:
    packet = hand_built_v4(IpProto.UDP, 0x4321, zlib.compress(b"x" * 100, wbits=-15))
    assert IpcompContext(make_sa()).decap(packet) == (Drop.UNKNOWN_SPI, b"")


@pytest.mark.parametrize("stream", [
    b"",  # nothing
    b"\xff\xff\xff",  # invalid block type
    zlib.compress(b"x" * 500, wbits=-15)[:-2],  # truncated
    zlib.compress(b"x" * 500, wbits=-15) + b"extra",  # data after the final block
    zlib.compress(b"x" * 500, wbits=15),  # zlib header: not raw DEFLATE
    bytes([0x01, 0x05, 0x00, 0xFA, 0xFE]) + b"hello",  # stored block with a bad NLEN
], ids=["empty", "bad-block", "truncated", "trailing", "zlib-header", "bad-nlen"])
def test_bad_streams(stream: bytes) -> None:
    assert IpcompContext(make_sa()).decap(hand_built_v4(IpProto.UDP, CPI, stream)) == (Drop.DECOMPRESS, b"")


def test_decompression_bomb() -> None:
    # 10 MB of zeros deflate to about 10 KB; we stop after 64 KiB of output.
    bomb = zlib.compress(bytes(10_000_000), wbits=-15)
    assert len(bomb) < 11_000
    assert IpcompContext(make_sa()).decap(hand_built_v4(IpProto.UDP, CPI, bomb)) == (Drop.DECOMPRESS, b"")
    # The exact limit: an IPv4 datagram may be 65535 bytes with its header.
    ok = zlib.compress(bytes(65535 - 20), wbits=-15)
    drop, out = IpcompContext(make_sa()).decap(hand_built_v4(253, CPI, ok))
    assert drop is Drop.OK and len(out) == 65535
    over = zlib.compress(bytes(65535 - 20 + 1), wbits=-15)
    assert IpcompContext(make_sa()).decap(hand_built_v4(253, CPI, over))[0] is Drop.DECOMPRESS


def test_inflate_bound() -> None:
    assert inflate(zlib.compress(b"abc" * 10, wbits=-15), 30) == b"abc" * 10
    assert inflate(zlib.compress(b"abc" * 10, wbits=-15), 29) is None


def test_nested_ipcomp_refused() -> None:
    inner = struct.pack("!BBH", IpProto.UDP, 0, CPI) + zlib.compress(udp4(TEXT)[20:], wbits=-15)
    packet = hand_built_v4(IpProto.IPCOMP, CPI, zlib.compress(inner, wbits=-15))
    assert IpcompContext(make_sa()).decap(packet) == (Drop.BAD_NEXT_HEADER, b"")


def test_tunnel_bad_inner() -> None:
    tunnel = IpcompContext(make_sa(mode=Mode.TUNNEL))
    assert tunnel.decap(hand_built_v4(IpProto.UDP, CPI, zlib.compress(TEXT, wbits=-15)))[0] is Drop.BAD_NEXT_HEADER
    not_ip = hand_built_v4(IpProto.IPV4, CPI, zlib.compress(TEXT, wbits=-15))
    assert tunnel.decap(not_ip) == (Drop.MALFORMED, b"")
    v6_named_v4 = hand_built_v4(IpProto.IPV4, CPI, zlib.compress(udp6(TEXT), wbits=-15))
    assert tunnel.decap(v6_named_v4) == (Drop.MALFORMED, b"")


def test_runts_and_fragments() -> None:
    ctx = IpcompContext(make_sa())
    out = compress(ctx, udp4(TEXT))
    assert ctx.decap(out[:22]) == (Drop.RUNT, b"")
    assert ctx.decap(out[:10]) == (Drop.RUNT, b"")
    assert ctx.decap(b"")[0] is Drop.RUNT
    fragment = bytearray(out)
    struct.pack_into("!H", fragment, 6, 0x2000)
    assert ctx.decap(bytes(fragment)) == (Drop.MALFORMED, b"")
    # Link-layer padding after the datagram is ignored.
    assert ctx.decap(out + bytes(8)) == (Drop.OK, udp4(TEXT))


def test_encap_refusals() -> None:
    ctx = IpcompContext(make_sa())
    # A fragment: compression comes before fragmentation (RFC 3173 §2).
    assert ctx.encap(udp4(TEXT, flags=0x2001)) == (Drop.MALFORMED, b"")
    assert ctx.encap(bytes(40)) == (Drop.MALFORMED, b"")  # IP version 0
    assert ctx.encap(b"junk") == (Drop.RUNT, b"")  # "j" reads as IPv6, 4 bytes of it
    assert ctx.encap(b"") == (Drop.RUNT, b"")
    frag = bytes([IpProto.UDP, 0, 0, 0, 0, 0, 0, 1])
    v6 = IpcompContext(make_sa(family=6))
    assert v6.encap(udp6(TEXT, ext=frag, first_nh=IpProto.IPV6_FRAG)) == (Drop.MALFORMED, b"")
    tunnel = IpcompContext(make_sa(mode=Mode.TUNNEL))
    assert tunnel.encap(udp4(os.urandom(65535 - 28))) == (Drop.MTU, b"")


def test_tunnel_ecn() -> None:
    # RFC 6040 §4.2 for the compressed and the IP-in-IP form alike.
    tunnel = IpcompContext(make_sa(mode=Mode.TUNNEL))
    for plain in (udp4(TEXT, tos=0x02), udp4(os.urandom(300), tos=0x02)):  # ECT(0) inside
        marked = bytearray(compress(tunnel, plain))
        marked[1] |= 0x03  # CE on the outer header
        marked[10:12] = b"\x00\x00"
        struct.pack_into("!H", marked, 10, checksum(marked[:20]))
        drop, out = tunnel.decap(bytes(marked))
        assert drop is Drop.OK and out[1] == 0x03 and checksum(out[:20]) == 0
        not_ect = bytearray(compress(tunnel, udp4(plain[28:], tos=0)))
        not_ect[1] |= 0x03
        assert tunnel.decap(bytes(not_ect)) == (Drop.ECN, b"")


def test_large_packet_decodes_with_a_2k_window() -> None:
    # Repeats more than 2 KiB apart must not be referenced: Linux inflates
    # with a 2 KiB window (crypto/deflate.c, DEFLATE_DEF_WINBITS 11).
    block = os.urandom(3000)
    plain = udp4(block + block)
    out = compress(IpcompContext(make_sa()), plain)
    if out[9] == IpProto.IPCOMP:
        assert zlib.decompress(out[24:], wbits=-11) == plain[20:]


def test_ipcomp_inside_ah() -> None:
    # The usual bundle: compress, then authenticate (RFC 3173 §2: before IPsec).
    ipcomp = IpcompContext(make_sa())
    ah_sa = SecurityAssociation(spi=0x3000, protocol=IpProto.AH, src=V4[0], dst=V4[1],
                                auth=IntegId.AUTH_HMAC_SHA2_256_128, auth_key=bytearray(32))
    ah = AhContext(ah_sa)
    plain = udp4(TEXT)
    wire = sign(ah, compress(ipcomp, plain), 1)
    assert wire[9] == IpProto.AH and wire[20] == IpProto.IPCOMP
    drop, compressed = ah.decap(wire)
    assert drop is Drop.OK
    assert ipcomp.decap(compressed) == (Drop.OK, plain)


# --- properties ---------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [(Mode.TRANSPORT, 4, 4), (Mode.TRANSPORT, 6, 6), (Mode.TUNNEL, 4, 4),
          (Mode.TUNNEL, 6, 6), (Mode.TUNNEL, 4, 6), (Mode.TUNNEL, 6, 4)]

payloads = st.one_of(
    st.binary(max_size=1500),  # mostly incompressible
    st.builds(lambda chunk, n: (chunk * n)[:1500], st.binary(min_size=1, max_size=20), st.integers(1, 300)),
)


@PROPERTY
@given(st.sampled_from(SHAPES), payloads, st.integers(0, 200))
def test_roundtrip(shape: tuple[Mode, int, int], payload: bytes, threshold: int) -> None:
    mode, outer, inner = shape
    ctx = IpcompContext(make_sa(family=outer, mode=mode), threshold=threshold)
    plain = udp4(payload) if inner == 4 else udp6(payload)
    out = compress(ctx, plain)
    assert len(out) <= len(plain) + (0 if mode is Mode.TRANSPORT else (20 if outer == 4 else 40))
    assert ctx.decap(out) == (Drop.OK, plain)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    mode, outer, inner = draw(st.sampled_from(SHAPES))
    ctx = IpcompContext(make_sa(family=outer, mode=mode))
    plain = udp4(TEXT[: draw(st.integers(0, len(TEXT)))]) if inner == 4 else udp6(TEXT[:500])
    data = bytearray(compress(ctx, plain))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "set"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        else:
            del data[pos:]
            if not data:
                break
    return bytes(data)


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SHAPES), st.one_of(mutated(), st.binary(max_size=600)))
def test_fuzz_decap(shape: tuple[Mode, int, int], data: bytes) -> None:
    mode, outer, _ = shape
    drop, out = IpcompContext(make_sa(family=outer, mode=mode)).decap(data)
    assert isinstance(drop, Drop) and isinstance(out, bytes)
    assert (drop is Drop.OK) == (out != b"")


# --- the datapath's entry points: compress() and decap_tunnel_payload() -----------------------------


@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL])
def test_compress_is_encap_or_none(mode: Mode) -> None:
    """compress() gives what encap() sends when it compresses, and None when encap() would
    send the packet uncompressed (threshold, non-expansion: RFC 3173 §2.2)."""
    ctx = IpcompContext(make_sa(mode=mode))
    plain = udp4(TEXT)
    drop, out = ctx.compress(plain)
    assert drop is Drop.OK and out is not None
    assert IpcompContext(make_sa(mode=mode)).decap(out) == (Drop.OK, plain)
    assert out[9] == IpProto.IPCOMP and len(out) < len(plain) + (20 if mode is Mode.TUNNEL else 0)
    assert ctx.compress(udp4(b"tiny")) == (Drop.OK, None)  # under the threshold
    assert ctx.compress(udp4(os.urandom(400))) == (Drop.OK, None)  # would expand
    assert ctx.compress(b"\x45garbage")[0] is not Drop.OK


def test_decap_tunnel_payload() -> None:
    """The payload after tunnel-mode ESP (IPComp header onwards) and the outer header for ECN."""
    inner = udp4(TEXT)  # Not-ECT
    ctx = IpcompContext(make_sa(mode=Mode.TUNNEL))
    drop, out = ctx.compress(inner)
    assert drop is Drop.OK and out is not None
    outer, payload = out[:20], out[20:]
    assert ctx.decap_tunnel_payload(outer, payload) == (Drop.OK, inner)
    ect1 = bytearray(outer)
    ect1[1] |= 1
    inner_ect0 = udp4(TEXT, tos=2)
    drop, out2 = ctx.compress(inner_ect0)
    assert out2 is not None
    assert ctx.decap_tunnel_payload(ect1, out2[20:])[0] is Drop.OK
    ce = bytearray(outer)
    ce[1] |= 3
    assert ctx.decap_tunnel_payload(ce, payload)[0] is Drop.ECN  # CE over Not-ECT (RFC 6040)
    bad = bytearray(payload)
    bad[2:4] = b"\x99\x99"
    assert ctx.decap_tunnel_payload(outer, bad)[0] is Drop.UNKNOWN_SPI
    bad = bytearray(payload)
    bad[0] = IpProto.UDP
    assert ctx.decap_tunnel_payload(outer, bad)[0] is Drop.BAD_NEXT_HEADER
    assert ctx.decap_tunnel_payload(outer, payload[:-3])[0] is Drop.DECOMPRESS
    assert ctx.decap_tunnel_payload(outer, payload[:3])[0] is Drop.RUNT
    bomber = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = payload[:4] + bomber.compress(bytes(1 << 20)) + bomber.flush()
    assert ctx.decap_tunnel_payload(outer, bomb)[0] is Drop.DECOMPRESS
