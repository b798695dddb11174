"""The ESP codec (RFC 4303): API, layout, and every named drop.

Interop with scapy is in ``test_esp_scapy.py``, properties (round trip, bit
flips, fast path = general path) in ``test_esp_properties.py``, published
vectors in ``test_vectors.py``.
"""

from __future__ import annotations

import logging
import struct

import pytest
from conftest import (
    BY_NAME,
    SPI,
    TRANSFORMS,
    Transform,
    inner,
    key_bytes,
    make_ctx,
    make_sa,
    udp4,
    udp6,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecd.drops import Drop
from ipsecd.esp import EspContext, Inbound, peek
from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.packet import checksum, ipv4_header, ipv6_header
from ipsecd.replay import ReplayWindow, SequenceCounter
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import LegacyAlgorithmError, TransformError, enc_algo, integ_algo

GCM = BY_NAME["aes128-gcm16"]
CBC = BY_NAME["aes128-cbc+sha256"]
NULL = BY_NAME["null+sha256"]
GMAC = BY_NAME["aes128-gmac"]


def encap_ok(ctx: EspContext, packet: bytes, seq: int) -> bytes:
    drop, out = ctx.encap(packet, seq)
    assert drop is Drop.OK, drop
    return out


def decap_drop(ctx: EspContext, packet: bytes, window: ReplayWindow | None = None) -> Drop:
    return ctx.decap(packet, window)[0]


def esp_offset(packet: bytes) -> int:
    found = peek(packet, udp_port=None)
    assert found.kind is Inbound.ESP
    return found.offset


# -- construction ------------------------------------------------------------------------


def test_legacy_needs_the_switch_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    sa = make_sa(BY_NAME["3des-cbc+md5"])
    with pytest.raises(LegacyAlgorithmError):
        EspContext(sa)
    with caplog.at_level(logging.WARNING):
        EspContext(sa, allow_legacy=True)
    assert "legacy algorithm" in caplog.text


def test_legacy_warning_once_per_context_not_per_lookup(caplog: pytest.LogCaptureFixture) -> None:
    sa = make_sa(BY_NAME["3des-cbc+md5"])
    with caplog.at_level(logging.WARNING, logger="ipsecd.transforms"):
        enc_algo(EncrId.ENCR_3DES, allow_legacy=True)
        integ_algo(IntegId.AUTH_HMAC_MD5_96, allow_legacy=True)
        assert not caplog.records  # lookups only refuse, they do not log
        ctx = EspContext(sa, allow_legacy=True)
        ctx.encap(bytes(ipv4_header(bytes(4), bytes(4), 17, 8)) + bytes(8), 1)
        # One line per legacy algorithm of the SA, at build time only.
        assert [r.getMessage() for r in caplog.records] == [
            "legacy algorithm 3des-cbc in use: it is weak, migrate this peer to AES-GCM",
            "legacy algorithm hmac-md5 in use: it is weak, migrate this peer to AES-GCM",
        ]
        caplog.clear()
        EspContext(sa, allow_legacy=True, legacy_warning=False)  # a worker's copy
        assert not caplog.records


@pytest.mark.parametrize(
    ("enc", "enc_key", "auth", "auth_key", "message"),
    [
        (EncrId.ENCR_AES_GCM_16, 20, IntegId.AUTH_HMAC_SHA2_256_128, 32, "combined-mode"),
        (EncrId.ENCR_NULL, 0, IntegId.NONE, 0, "NULL encryption"),
        (EncrId.ENCR_AES_GCM_16, 16, IntegId.NONE, 0, "key of"),
        (EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_256_128, 16, "needs a 256-bit key"),
        (EncrId.ENCR_AES_CTR, 20, IntegId.NONE, 0, "unknown"),
    ],
)
def test_configuration_errors_raise(enc: EncrId, enc_key: int, auth: IntegId, auth_key: int, message: str) -> None:
    sa = make_sa(GCM)
    sa.enc, sa.enc_key, sa.auth, sa.auth_key = enc, bytearray(enc_key), auth, bytearray(auth_key)
    with pytest.raises(TransformError, match=message):
        EspContext(sa)


def test_not_an_esp_sa() -> None:
    sa = make_sa(GCM)
    sa.protocol = IpProto.AH
    with pytest.raises(TransformError):
        EspContext(sa)


def test_cbc_without_integrity_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sa = make_sa(CBC)
    sa.auth, sa.auth_key = IntegId.NONE, bytearray()
    with caplog.at_level(logging.WARNING):
        ctx = EspContext(sa)
    assert "without integrity" in caplog.text
    assert ctx.icv_bytes == 0
    esp = encap_ok(ctx, udp4(), 1)
    assert ctx.decap(esp)[1].packet == udp4()  # type: ignore[union-attr]


# -- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS, ids=str)
@pytest.mark.parametrize(("mode", "family", "encap"), [
    (Mode.TUNNEL, 4, False), (Mode.TUNNEL, 6, True), (Mode.TRANSPORT, 4, True), (Mode.TRANSPORT, 6, False),
])
@pytest.mark.parametrize("esn", [False, True])
def test_encap_stays_within_headroom_and_tailroom(
    transform: Transform, mode: Mode, family: int, encap: bool, esn: bool
) -> None:
    """encap_into writes only inside [start - headroom, end + tailroom) and returns new_start = start - headroom."""
    ctx = make_ctx(transform, mode=mode, family=family, esn=esn, encap=encap)
    for size in (0, 1, 13, 100):
        packet = inner(family, bytes(range(size)))
        guard = 64
        start = guard + ctx.headroom
        end = start + len(packet)
        buf = bytearray(b"\xee" * (end + ctx.tailroom + guard))
        buf[start:end] = packet
        drop, new_start, new_end = ctx.encap_into(memoryview(buf), start, end, 7)
        assert drop is Drop.OK
        assert new_start == start - ctx.headroom
        assert new_end <= end + ctx.tailroom
        assert new_end - new_start == ctx.encapsulated_length(
            len(packet), 0 if mode is Mode.TUNNEL else (20 if family == 4 else 40))
        assert buf[:guard] == b"\xee" * guard
        assert buf[end + ctx.tailroom :] == b"\xee" * guard
        assert ctx.decap(bytes(buf[new_start:new_end]))[1].packet == packet  # type: ignore[union-attr]


def test_bytearray_buffers_are_accepted() -> None:
    ctx = make_ctx(GCM)
    packet = udp4(b"x" * 50)
    buf = bytearray(ctx.headroom + len(packet) + ctx.tailroom)
    buf[ctx.headroom : ctx.headroom + len(packet)] = packet
    drop, start, end = ctx.encap_into(buf, ctx.headroom, ctx.headroom + len(packet), 1)
    assert drop is Drop.OK
    drop, start, end, next_header = ctx.decap_into(buf, start, end, ReplayWindow())
    assert (drop, bytes(buf[start:end]), next_header) == (Drop.OK, packet, 4)


def test_wire_format_aead_tunnel() -> None:
    """RFC 4303 §2 / RFC 4106 §3: SPI, seq, 8-byte IV (= seq), ciphertext, 16-byte ICV;
    outer IPv4 with protocol 50, TTL 64, DF and DSCP/ECN from the inner packet."""
    ctx = make_ctx(GCM)
    packet = udp4(b"abc", tos=0xB9)  # DSCP 46, ECN ECT(1)
    esp = encap_ok(ctx, packet, 0x01020304)
    assert esp[0] == 0x45 and esp[1] == 0xB9 and esp[8] == 64 and esp[9] == IpProto.ESP
    assert struct.unpack("!H", esp[6:8])[0] == 0x4000  # DF copied, ID 0 (RFC 6864 atomic datagram)
    assert checksum(esp[:20]) == 0
    assert struct.unpack("!IIQ", esp[20:36]) == (SPI, 0x01020304, 0x01020304)
    payload = len(packet) + 2
    assert len(esp) == 20 + 8 + 8 + payload + (-payload % 4) + 16
    # Decrypt by hand: salt from the key material, nonce = salt || IV, AAD = SPI || seq.
    key = key_bytes(GCM.name + "/enc", 20)
    plain = AESGCM(bytes(key[:16])).decrypt(bytes(key[16:]) + esp[28:36], esp[36:], esp[20:28])
    pad = plain[-2]
    assert plain[-1] == 4 and plain[: len(packet)] == packet
    assert plain[len(packet) : -2] == bytes(range(1, pad + 1))


def test_df_policy_and_ipv4_ident() -> None:
    no_df = udp4(df=False)
    for policy, packet, flags in (("copy", udp4(), 0x4000), ("copy", no_df, 0), ("set", no_df, 0x4000),
                                  ("clear", udp4(), 0)):
        ctx = EspContext(make_sa(GCM), df=policy)  # type: ignore[arg-type]
        esp = encap_ok(ctx, packet, 0x12345)
        ident, frag = struct.unpack("!HH", esp[4:8])
        assert frag == flags
        assert ident == (0 if flags else 0x2345)  # low 16 bits of seq when not atomic
        assert checksum(esp[:20]) == 0
    esp = encap_ok(make_ctx(GCM), udp6(), 9)  # IPv6 inside IPv4: DF set
    assert struct.unpack("!H", esp[6:8])[0] == 0x4000


def test_ipv6_outer_traffic_class_and_next_header() -> None:
    ctx = make_ctx(GCM, family=6)
    esp = encap_ok(ctx, udp4(tos=0x2A), 3)
    first = struct.unpack("!I", esp[:4])[0]
    assert first >> 28 == 6 and (first >> 20) & 0xFF == 0x2A and esp[6] == IpProto.ESP and esp[7] == 64
    assert struct.unpack("!H", esp[4:6])[0] == len(esp) - 40


@pytest.mark.parametrize("family", [4, 6])
def test_transport_mode_inserts_esp_and_restores(family: int) -> None:
    ctx = make_ctx(GCM, mode=Mode.TRANSPORT, family=family)
    packet = inner(family, b"transport")
    esp = encap_ok(ctx, packet, 5)
    if family == 4:
        assert esp[9] == IpProto.ESP and checksum(esp[:20]) == 0
        assert struct.unpack("!H", esp[2:4])[0] == len(esp)
        assert esp[12:20] == packet[12:20]
    else:
        assert esp[6] == IpProto.ESP and esp[8:40] == packet[8:40]
    result = ctx.decap(esp)[1]
    assert result is not None and result.packet == packet and result.next_header == IpProto.UDP


def test_transport_ipv4_options_are_kept() -> None:
    ctx = make_ctx(CBC, mode=Mode.TRANSPORT)
    options = bytes((0x94, 4, 0, 0)) + bytes((1, 1, 1, 0))  # router alert, NOPs, end
    udp = struct.pack("!HHHH", 1, 2, 12, 0) + b"data"
    header = bytearray(ipv4_header(b"\x0a\0\0\1", b"\x0a\0\0\2", IpProto.UDP, len(udp) + len(options)))
    header[0] = 0x47
    header = header + options
    struct.pack_into("!H", header, 10, 0)
    struct.pack_into("!H", header, 10, checksum(header))
    packet = bytes(header) + udp
    esp = encap_ok(ctx, packet, 1)
    assert esp[20:28] == options and esp[9] == IpProto.ESP
    assert ctx.decap(esp)[1].packet == packet  # type: ignore[union-attr]


def test_transport_ipv6_after_hop_by_hop() -> None:
    ctx = make_ctx(GCM, mode=Mode.TRANSPORT, family=6)
    src, dst = udp6()[8:24], udp6()[24:40]
    udp = struct.pack("!HHHH", 1, 2, 12, 0) + b"data"
    hop_by_hop = bytes((IpProto.UDP, 0, 1, 4, 0, 0, 0, 0))  # PadN
    packet = bytes(ipv6_header(src, dst, IpProto.HOPOPT, len(hop_by_hop) + len(udp))) + hop_by_hop + udp
    esp = encap_ok(ctx, packet, 1)
    assert esp[6] == IpProto.HOPOPT and esp[40] == IpProto.ESP and esp[41:48] == hop_by_hop[1:]
    assert ctx.decap(esp)[1].packet == packet  # type: ignore[union-attr]


@pytest.mark.parametrize("family", [4, 6])
def test_udp_encapsulation(family: int) -> None:
    """RFC 3948: UDP with the SA's ports before ESP; checksum 0 over IPv4, computed over IPv6."""
    ctx = make_ctx(GCM, family=family, encap=True)
    esp = encap_ok(ctx, udp4(), 1)
    ip = 20 if family == 4 else 40
    sport, dport, length, csum = struct.unpack("!HHHH", esp[ip : ip + 8])
    assert (sport, dport, length) == (4500, 4500, len(esp) - ip)
    if family == 4:
        assert esp[9] == IpProto.UDP and csum == 0
    else:
        pseudo = int.from_bytes(esp[8:40], "big") + length + IpProto.UDP
        assert esp[6] == IpProto.UDP and csum != 0 and checksum(esp[ip:], pseudo) == 0
    assert peek(esp).kind is Inbound.ESP and peek(esp).udp
    assert ctx.decap(esp)[1].packet == udp4()  # type: ignore[union-attr]
    # Bare ESP to a UDP SA, UDP to a bare SA, and UDP to another port are refused.
    bare = make_ctx(GCM, family=family)
    assert decap_drop(ctx, encap_ok(bare, udp4(), 1)) is Drop.MALFORMED
    assert decap_drop(bare, esp) is Drop.MALFORMED
    other_port = bytearray(esp)
    struct.pack_into("!H", other_port, ip + 2, 4501)
    assert decap_drop(ctx, bytes(other_port)) is Drop.MALFORMED
    # The source port may be anything a NAT chose.
    nat = bytearray(esp)
    struct.pack_into("!H", nat, ip, 40000)
    assert decap_drop(ctx, bytes(nat)) is Drop.OK


# -- sequence numbers, ESN, IVs ----------------------------------------------------------


def test_sequence_number_limits() -> None:
    plain, esn = make_ctx(GCM), make_ctx(GCM, esn=True)
    assert plain.encap(udp4(), 0)[0] is Drop.SEQ_OVERFLOW
    assert plain.encap(udp4(), 2**32 - 1)[0] is Drop.OK
    assert plain.encap(udp4(), 2**32)[0] is Drop.SEQ_OVERFLOW  # RFC 4303 §3.3.3: never cycle
    assert esn.encap(udp4(), 2**32)[0] is Drop.OK
    assert esn.encap(udp4(), 2**64 - 1)[0] is Drop.OK
    assert esn.encap(udp4(), 2**64)[0] is Drop.SEQ_OVERFLOW
    counter = SequenceCounter(last=2**32 - 2)
    assert counter.next() == 2**32 - 1
    assert counter.next() == 0 and counter.next() == 0 and counter.exhausted
    assert plain.encap(udp4(), counter.next())[0] is Drop.SEQ_OVERFLOW


@pytest.mark.parametrize("transform", [GCM, CBC, GMAC, NULL], ids=str)
def test_esn_high_bits_enter_the_icv_not_the_wire(transform: Transform) -> None:
    ctx = make_ctx(transform, esn=True)
    low = encap_ok(ctx, udp4(), 5)
    high = encap_ok(ctx, udp4(), (7 << 32) | 5)
    assert len(low) == len(high)
    assert high[24:28] == struct.pack("!I", 5)  # only the low half on the wire
    window = ReplayWindow(64, esn=True)
    window.reset((7 << 32) | 2)
    result = ctx.decap(high, window)[1]
    assert result is not None and result.seq == (7 << 32) | 5
    assert decap_drop(ctx, low, ReplayWindow(64, esn=True)) is Drop.OK
    wrong = ReplayWindow(64, esn=True)
    wrong.reset((8 << 32) | 2)  # the receiver infers other high bits: the ICV fails
    assert decap_drop(ctx, high, wrong) is Drop.ICV


def test_counter_ivs_are_unique_and_cbc_ivs_unpredictable() -> None:
    gcm = make_ctx(GCM)
    assert {encap_ok(gcm, udp4(), seq)[28:36] for seq in range(1, 50)} == {
        struct.pack("!Q", seq) for seq in range(1, 50)
    }
    masked = EspContext(make_sa(GCM), iv_mask=0x1111)
    assert encap_ok(masked, udp4(), 1)[28:36] == struct.pack("!Q", 1 ^ 0x1111)
    cbc = make_ctx(CBC)
    ivs = [encap_ok(cbc, udp4(), seq)[28:44] for seq in range(1, 200)]
    assert len(set(ivs)) == len(ivs)
    assert all(iv[:8] != bytes(8) for iv in ivs)  # not the plain counter block


def test_cbc_ciphertext_is_standard_cbc_with_the_wire_iv() -> None:
    """The chained IV construction is plain CBC for the receiver (RFC 3602 §2)."""
    ctx = make_ctx(CBC)
    key = bytes(key_bytes(CBC.name + "/enc", 16))
    packet = udp4(b"z" * 77)
    for seq in (1, 2, 3):
        esp = encap_ok(ctx, packet, seq)
        iv, body = esp[28:44], esp[44:-16]
        plain = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(body)
        assert plain[: len(packet)] == packet and plain[-1] == 4


# -- inbound drops -------------------------------------------------------------------------


def test_replay_and_window_update_only_after_icv() -> None:
    ctx = make_ctx(GCM)
    window = ReplayWindow(64)
    first = encap_ok(ctx, udp4(), 10)
    assert decap_drop(ctx, first, window) is Drop.OK
    assert decap_drop(ctx, first, window) is Drop.REPLAY
    forged = bytearray(encap_ok(ctx, udp4(), 500))
    forged[-1] ^= 1
    assert decap_drop(ctx, bytes(forged), window) is Drop.ICV
    assert window.top == 10  # the forgery did not move the window
    assert decap_drop(ctx, encap_ok(ctx, udp4(), 9), window) is Drop.OK
    assert decap_drop(ctx, encap_ok(ctx, udp4(), 100), window) is Drop.OK
    assert decap_drop(ctx, encap_ok(ctx, udp4(), 36), window) is Drop.REPLAY  # left of the window
    assert decap_drop(ctx, encap_ok(ctx, udp4(), 37), window) is Drop.OK


def test_unknown_spi() -> None:
    esp = encap_ok(make_ctx(GCM, spi=0x999), udp4(), 1)
    assert decap_drop(make_ctx(GCM), esp) is Drop.UNKNOWN_SPI


def _seal_gcm(plaintext: bytes, seq: int, *, family: int = 4) -> bytes:
    """An ESP packet with an arbitrary (authentic) plaintext: payload, padding, trailer."""
    key = key_bytes(GCM.name + "/enc", 20)
    iv = struct.pack("!Q", seq)
    header = struct.pack("!II", SPI, seq)
    body = AESGCM(bytes(key[:16])).encrypt(bytes(key[16:]) + iv, plaintext, header)
    esp = header + iv + body
    src, dst = (b"\xc0\0\2\1", b"\xc0\0\2\2") if family == 4 else (bytes(15) + b"\1", bytes(15) + b"\2")
    if family == 4:
        return bytes(ipv4_header(src, dst, IpProto.ESP, len(esp))) + esp
    return bytes(ipv6_header(src, dst, IpProto.ESP, len(esp))) + esp


def test_bad_padding_and_pad_length() -> None:
    ctx = make_ctx(GCM)
    packet = udp4(b"abcd")  # 32 bytes: 2 pad bytes reach the 4-byte alignment
    assert decap_drop(ctx, _seal_gcm(packet + b"\x01\x02\x02\x04", 1)) is Drop.OK
    assert decap_drop(ctx, _seal_gcm(packet + b"\x01\x03\x02\x04", 2)) is Drop.PADDING
    assert decap_drop(ctx, _seal_gcm(packet + b"\x00\x00\x02\x04", 3)) is Drop.PADDING
    assert decap_drop(ctx, _seal_gcm(b"\x01\x02\xff\x04", 4)) is Drop.PADDING  # pad length > payload


def test_dummy_packets_are_dropped_after_moving_the_window() -> None:
    ctx = make_ctx(GCM)
    window = ReplayWindow(64)
    assert decap_drop(ctx, _seal_gcm(b"tfc-dummy!!!" + b"\x01\x02\x02" + bytes((59,)), 7), window) is Drop.DUMMY
    assert window.top == 7  # a genuine packet: RFC 4303 §2.6


def test_tunnel_next_header_and_inner_checks() -> None:
    ctx = make_ctx(GCM)
    packet = udp4(b"abcd")
    trailer = b"\x01\x02\x02"
    assert decap_drop(ctx, _seal_gcm(packet + trailer + b"\x06", 1)) is Drop.BAD_NEXT_HEADER
    assert decap_drop(ctx, _seal_gcm(packet + trailer + b"\x29", 2)) is Drop.MALFORMED  # says IPv6, is IPv4
    truncated = bytearray(packet)
    struct.pack_into("!H", truncated, 2, 200)  # claims more than the payload holds
    assert decap_drop(ctx, _seal_gcm(bytes(truncated) + trailer + b"\x04", 3)) is Drop.MALFORMED


@pytest.mark.parametrize("family", [4, 6])  # 4: the generated fast path; 6: the general one
def test_tunnel_ipcomp_payload_is_located_for_the_caller(family: int) -> None:
    """Next header 108 in tunnel mode (IPComp inside ESP, RFC 3173): still BAD_NEXT_HEADER
    for a caller without IPComp, but the result says where the IPComp payload lies."""
    ctx = make_ctx(GCM)
    payload = struct.pack("!BBH", 4, 0, 0x1000) + b"deflate data"  # 16 bytes: 2 pad bytes
    packet = bytearray(_seal_gcm(payload + b"\x01\x02\x02" + bytes((108,)), 1, family=family))
    drop, start, end, next_header = ctx.decap_into(memoryview(packet), 0, len(packet),
                                                   ReplayWindow(64))
    assert (drop, next_header) == (Drop.BAD_NEXT_HEADER, 108)
    assert bytes(packet[start:end]) == payload


def test_tfc_padding_is_trimmed() -> None:
    """RFC 4303 §2.7: bytes after the inner packet inside the payload are TFC padding."""
    ctx = make_ctx(GCM)
    packet = udp4(b"abcd")
    sealed = _seal_gcm(packet + bytes(16) + b"\x01\x02\x02\x04", 1)
    result = ctx.decap(sealed)[1]
    assert result is not None and result.packet == packet


@pytest.mark.parametrize("family", [4, 6])
def test_runts_and_malformed_headers(family: int) -> None:
    ctx = make_ctx(GCM, family=family)
    esp = encap_ok(ctx, udp4(), 1)
    ip = 20 if family == 4 else 40
    assert decap_drop(ctx, b"") is Drop.RUNT
    assert decap_drop(ctx, esp[:10]) is Drop.RUNT
    assert decap_drop(ctx, esp[: ip + 20]) is Drop.RUNT  # IP length says more
    cut = bytearray(esp[: ip + 8 + 8 + 10])  # consistent IP length, no room for IV + trailer + ICV
    struct.pack_into("!H", cut, 2 if family == 4 else 4, len(cut) - (0 if family == 4 else 40))
    if family == 4:
        struct.pack_into("!H", cut, 10, 0)
        struct.pack_into("!H", cut, 10, checksum(cut[:20]))
    assert decap_drop(ctx, bytes(cut)) is Drop.RUNT
    assert decap_drop(ctx, b"\x50" + esp[1:]) is Drop.MALFORMED  # IP version 5
    assert decap_drop(ctx, esp + b"\0" * 6) is Drop.OK  # link-layer padding after the datagram


def test_outer_ipv4_checks() -> None:
    ctx = make_ctx(GCM)
    esp = bytearray(encap_ok(ctx, udp4(), 1))

    def patched(offset: int, value: int, fix_checksum: bool = True) -> bytes:
        packet = bytearray(esp)
        packet[offset] = value
        if fix_checksum:
            struct.pack_into("!H", packet, 10, 0)
            struct.pack_into("!H", packet, 10, checksum(packet[:20]))
        return bytes(packet)

    assert decap_drop(ctx, patched(8, 63, fix_checksum=False)) is Drop.MALFORMED  # bad header checksum
    assert decap_drop(ctx, patched(8, 63)) is Drop.OK  # TTL is not protected, checksum fixed
    assert decap_drop(ctx, patched(6, 0x20)) is Drop.MALFORMED  # MF: a fragment (RFC 4303 §3.4.1)
    assert decap_drop(ctx, patched(7, 1)) is Drop.MALFORMED  # fragment offset
    assert decap_drop(ctx, patched(9, IpProto.AH)) is Drop.MALFORMED  # not ESP


def test_ipv6_outer_fragment_header_is_malformed() -> None:
    ctx = make_ctx(GCM, family=6)
    esp = encap_ok(ctx, udp4(), 1)
    fragment = bytes((IpProto.ESP, 0, 0, 0, 0, 0, 0, 1))
    packet = bytearray(esp[:40] + fragment + esp[40:])
    packet[6] = IpProto.IPV6_FRAG
    struct.pack_into("!H", packet, 4, len(packet) - 40)
    assert decap_drop(ctx, bytes(packet)) is Drop.MALFORMED
    hop_by_hop = bytes((IpProto.ESP, 0, 1, 4, 0, 0, 0, 0))
    packet = bytearray(esp[:40] + hop_by_hop + esp[40:])
    packet[6] = IpProto.HOPOPT
    struct.pack_into("!H", packet, 4, len(packet) - 40)
    assert decap_drop(ctx, bytes(packet)) is Drop.OK  # extension headers before ESP are skipped


def test_encap_rejects_what_it_cannot_parse() -> None:
    for transform in (GCM, CBC):
        tunnel, transport = make_ctx(transform), make_ctx(transform, mode=Mode.TRANSPORT)
        assert tunnel.encap(b"\x45" + bytes(10), 1)[0] is Drop.RUNT
        wrong_length = bytearray(udp4())
        wrong_length[3] += 1
        assert tunnel.encap(bytes(wrong_length), 1)[0] is Drop.MALFORMED
        assert tunnel.encap(b"\x75" + udp4()[1:], 1)[0] is Drop.MALFORMED
        fragment = bytearray(udp4())
        fragment[6] |= 0x20
        assert transport.encap(bytes(fragment), 1)[0] is Drop.MALFORMED
        assert tunnel.encap(bytes(fragment), 1)[0] is Drop.OK  # a fragment is just payload in a tunnel


# -- ECN (RFC 6040) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("outer", "inner_ecn", "expected"), [
    (0, 2, 2), (2, 2, 2), (1, 2, 1), (3, 2, 3), (3, 1, 3), (3, 3, 3), (1, 0, 0), (2, 0, 0), (3, 0, None),
])
@pytest.mark.parametrize("family", [4, 6])
def test_ecn_decapsulation(outer: int, inner_ecn: int, expected: int | None, family: int) -> None:
    """RFC 6040 §4.2: the outer ECN field merged into the inner header."""
    ctx = make_ctx(GCM, family=family)
    packet = udp4(tos=0xA0 | inner_ecn)
    esp = bytearray(encap_ok(ctx, packet, 1))
    assert (esp[1] & 3 if family == 4 else esp[1] >> 4 & 3) == inner_ecn  # normal mode copies
    if family == 4:
        esp[1] = (esp[1] & 0xFC) | outer
        struct.pack_into("!H", esp, 10, 0)
        struct.pack_into("!H", esp, 10, checksum(esp[:20]))
    else:
        esp[1] = (esp[1] & 0xCF) | outer << 4
    drop, result = ctx.decap(bytes(esp))
    if expected is None:
        assert drop is Drop.ECN
        return
    assert result is not None
    out = result.packet
    assert out[1] == 0xA0 | expected and checksum(out[:20]) == 0
    assert out[2:] == packet[2:] if expected == inner_ecn else out[20:] == packet[20:]


# -- peek ---------------------------------------------------------------------------------------


def test_peek() -> None:
    esp4 = encap_ok(make_ctx(GCM), udp4(), 77)
    assert peek(esp4)[:4] == (Inbound.ESP, SPI, 77, 20)
    esp6 = encap_ok(make_ctx(GCM, family=6, encap=True), udp4(), 78)
    assert tuple(peek(esp6)) == (Inbound.ESP, SPI, 78, 48, True)
    src, dst = b"\xc0\0\2\1", b"\xc0\0\2\2"

    def udp(payload: bytes, port: int = 4500) -> bytes:
        body = struct.pack("!HHHH", 4500, port, 8 + len(payload), 0) + payload
        return bytes(ipv4_header(src, dst, IpProto.UDP, len(body))) + body

    assert peek(udp(bytes(4) + b"ike message")).kind is Inbound.IKE
    assert peek(udp(b"\xff")).kind is Inbound.NAT_KEEPALIVE
    assert peek(udp(bytes(8), port=500)).kind is Inbound.OTHER
    assert peek(udp(b"\x01\x02")).kind is Inbound.MALFORMED
    assert peek(udp4()).kind is Inbound.OTHER
    assert peek(esp4[:30]).kind is Inbound.MALFORMED
    fragment = bytearray(esp4)
    fragment[6] = 0x20
    assert peek(bytes(fragment)).kind is Inbound.MALFORMED
    assert peek(b"").kind is Inbound.MALFORMED


# -- the SA-level wrapper flow -------------------------------------------------------------------


def test_single_process_flow_with_counter_and_window() -> None:
    """The way the control plane or a test uses the codec: counter -> encap -> decap(window)."""
    sender, receiver = make_ctx(CBC, esn=True), make_ctx(CBC, esn=True)
    counter = SequenceCounter(esn=True, last=2**32 - 3)
    window = ReplayWindow(64, esn=True)
    window.reset(2**32 - 10)
    seen = []
    for i in range(6):
        seq = counter.next()
        result = receiver.decap(encap_ok(sender, udp4(bytes([i])), seq), window)[1]
        assert result is not None
        seen.append(result.seq)
    assert seen == list(range(2**32 - 2, 2**32 + 4))


def test_sa_with_replay_window_zero_and_esn() -> None:
    sa = make_sa(GCM, esn=True, replay_window=0)
    assert isinstance(sa, SecurityAssociation)
    ctx = EspContext(sa)
    window = ReplayWindow(0, esn=True)
    esp = encap_ok(ctx, udp4(), 5)
    assert decap_drop(ctx, esp, window) is Drop.OK
    assert decap_drop(ctx, esp, window) is Drop.OK  # anti-replay disabled
