"""ESP interop with scapy's independent implementation (``scapy.layers.ipsec``).

For every transform of the issue's list, in tunnel mode (IPv4 and IPv6
outside, either family inside - mixed families included) and transport
mode (IPv4, IPv6), with and without ESN (RFC 4304; scapy supports it for
every transform), bare and UDP-encapsulated (RFC 3948), in both directions:

* ipsecd encapsulates, scapy decrypts: scapy's result equals our input;
* scapy encrypts, ipsecd decapsulates: our result equals scapy's input, and
  the full sequence number (high bits inferred by the replay window) is the
  one scapy used.

scapy chooses its own (random) CBC IVs and puts ESP after IPv6 extension
headers its own way; the packets here have none.
"""

from __future__ import annotations

import itertools

import pytest
from conftest import INNER_ADDRESSES, OUTER, SPI, TRANSFORMS, Transform, key_bytes, make_ctx
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Packet, Raw

from ipsecd.drops import Drop
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode

LAYOUTS = (  # mode, outer family, inner family
    (Mode.TUNNEL, 4, 4),
    (Mode.TUNNEL, 4, 6),
    (Mode.TUNNEL, 6, 4),
    (Mode.TUNNEL, 6, 6),
    (Mode.TRANSPORT, 4, 4),
    (Mode.TRANSPORT, 6, 6),
)
CASES = [
    pytest.param(t, mode, outer, inner, esn, udp, direction,
                 id=f"{t}-{mode.value}-{inner}in{outer}{'-esn' if esn else ''}{'-udp' if udp else ''}-{direction}")
    for t, (mode, outer, inner), esn, udp, direction in itertools.product(
        TRANSFORMS, LAYOUTS, (False, True), (False, True), ("ipsecd>scapy", "scapy>ipsecd"))
]


def inner_packet(family: int, size: int = 100) -> Packet:
    data = bytes(range(size % 256)) * (size // 256 + 1)
    if family == 4:
        src, dst = (".".join(map(str, address)) for address in INNER_ADDRESSES[4])
        return IP(src=src, dst=dst, id=7, flags="DF") / ICMP(id=1, seq=2) / Raw(data[:size])
    return IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=1000, dport=2000) / Raw(data[:size])


def scapy_sa(transform: Transform, mode: Mode, family: int, esn: bool, udp: bool) -> ScapySA:
    tunnel = None
    if mode is Mode.TUNNEL:
        src, dst = OUTER[family]
        tunnel = IP(src=str(src), dst=str(dst)) if family == 4 else IPv6(src=str(src), dst=str(dst))
    return ScapySA(  # type: ignore[no-untyped-call]
        ESP,
        spi=SPI,
        crypt_algo=transform.scapy_crypt,
        crypt_key=bytes(key_bytes(transform.name + "/enc", transform.enc_key_bytes)) or None,
        auth_algo=transform.scapy_auth,
        auth_key=bytes(key_bytes(transform.name + "/auth", transform.auth_key_bytes)) or None,
        tunnel_header=tunnel,
        nat_t_header=UDP(sport=4500, dport=4500) if udp else None,
        esn_en=esn,
        esn=0,
    )


def parse(data: bytes) -> Packet:
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


@pytest.mark.parametrize(("transform", "mode", "outer", "inner", "esn", "udp", "direction"), CASES)
def test_scapy_interop(
    transform: Transform, mode: Mode, outer: int, inner: int, esn: bool, udp: bool, direction: str
) -> None:
    ctx = make_ctx(transform, mode=mode, family=outer, esn=esn, encap=udp)
    theirs = scapy_sa(transform, mode, outer, esn, udp)
    packet = inner_packet(inner, size=37 if esn else 100)
    plain = raw(packet)
    seq = (5 << 32) | 0xFFFFFFF0 if esn else 0x1234
    if direction == "ipsecd>scapy":
        drop, esp = ctx.encap(plain, seq)
        assert drop is Drop.OK
        decrypted = theirs.decrypt(parse(esp), esn_en=esn, esn=seq >> 32)  # type: ignore[no-untyped-call]
        assert raw(decrypted) == plain
    else:
        esp = raw(theirs.encrypt(packet, seq_num=seq & 0xFFFFFFFF, esn_en=esn, esn=seq >> 32))  # type: ignore[no-untyped-call]
        window = ReplayWindow(64, esn=esn)
        window.reset(seq - 3)
        drop, result = ctx.decap(esp, window)
        assert drop is Drop.OK
        assert result is not None
        assert result.packet == plain
        assert result.seq == seq
        assert ctx.decap(esp, window)[0] is Drop.REPLAY


def test_cases_cover_the_issue_matrix() -> None:
    names = {t.name for t in TRANSFORMS}
    assert {"aes128-gcm16", "aes256-gcm16", "chacha20-poly1305", "aes128-gmac", "aes128-cbc+sha256",
            "aes256-cbc+sha384", "aes192-cbc+sha512", "aes128-cbc+sha1", "null+sha256", "3des-cbc+md5",
            "des-cbc+sha1", "blowfish-cbc+sha256", "cast128-cbc+md5"} <= names
    assert len(CASES) == len(TRANSFORMS) * len(LAYOUTS) * 2 * 2 * 2
