"""Shared pieces of the ESP and anti-replay tests.

``test_esp*.py``, ``test_replay*.py``, ``test_vectors.py`` and
``test_fuzz_esp.py`` import the helpers below (``from conftest import ...``):
the table of ESP transforms the issue lists (with scapy's names for them),
SA and context builders with fixed keys, and small inner packets built with
:mod:`ipsecd.packet` (not with the code under test).  The fixture that makes
the codec re-raise unexpected exceptions applies to those modules only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.packet import checksum, ipv4_header, ipv6_header
from ipsecd.sa import IPAddress, Mode, SecurityAssociation, UdpEncap

SPI = 0x0A0B0C0D
OUTER: dict[int, tuple[IPAddress, IPAddress]] = {
    4: (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")),
    6: (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2")),
}
INNER_ADDRESSES = {
    4: (bytes((10, 1, 0, 1)), bytes((10, 2, 0, 1))),
    6: (ipaddress.ip_address("fd00:1::1").packed, ipaddress.ip_address("fd00:2::1").packed),
}


@dataclass(frozen=True)
class Transform:
    """One ESP transform of the issue's list, with scapy's names for it."""

    name: str
    enc: EncrId
    enc_key_bytes: int  # including the salt of AEAD/GMAC transforms
    auth: IntegId
    auth_key_bytes: int
    scapy_crypt: str
    scapy_auth: str | None
    legacy: bool = False

    @property
    def aead(self) -> bool:
        return self.enc in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305)

    @property
    def integrity(self) -> bool:
        """Whether a modified packet must fail (every transform here has integrity)."""
        return self.aead or self.enc == EncrId.ENCR_NULL_AUTH_AES_GMAC or self.auth != IntegId.NONE

    def __str__(self) -> str:
        return self.name


TRANSFORMS: tuple[Transform, ...] = (
    Transform("aes128-gcm16", EncrId.ENCR_AES_GCM_16, 20, IntegId.NONE, 0, "AES-GCM", None),
    Transform("aes256-gcm16", EncrId.ENCR_AES_GCM_16, 36, IntegId.NONE, 0, "AES-GCM", None),
    Transform("chacha20-poly1305", EncrId.ENCR_CHACHA20_POLY1305, 36, IntegId.NONE, 0, "CHACHA20-POLY1305", None),
    Transform("aes128-gmac", EncrId.ENCR_NULL_AUTH_AES_GMAC, 20, IntegId.NONE, 0, "AES-NULL-GMAC", None),
    Transform("aes256-gmac", EncrId.ENCR_NULL_AUTH_AES_GMAC, 36, IntegId.NONE, 0, "AES-NULL-GMAC", None),
    Transform("aes128-cbc+sha256", EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_256_128, 32,
              "AES-CBC", "SHA2-256-128"),
    Transform("aes256-cbc+sha384", EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_384_192, 48,
              "AES-CBC", "SHA2-384-192"),
    Transform("aes192-cbc+sha512", EncrId.ENCR_AES_CBC, 24, IntegId.AUTH_HMAC_SHA2_512_256, 64,
              "AES-CBC", "SHA2-512-256"),
    Transform("aes128-cbc+sha1", EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA1_96, 20,
              "AES-CBC", "HMAC-SHA1-96"),
    Transform("null+sha256", EncrId.ENCR_NULL, 0, IntegId.AUTH_HMAC_SHA2_256_128, 32, "NULL", "SHA2-256-128"),
    Transform("null+sha1", EncrId.ENCR_NULL, 0, IntegId.AUTH_HMAC_SHA1_96, 20, "NULL", "HMAC-SHA1-96"),
    Transform("3des-cbc+md5", EncrId.ENCR_3DES, 24, IntegId.AUTH_HMAC_MD5_96, 16, "3DES", "HMAC-MD5-96",
              legacy=True),
    Transform("des-cbc+sha1", EncrId.ENCR_DES, 8, IntegId.AUTH_HMAC_SHA1_96, 20, "DES", "HMAC-SHA1-96",
              legacy=True),
    Transform("blowfish-cbc+sha256", EncrId.ENCR_BLOWFISH, 16, IntegId.AUTH_HMAC_SHA2_256_128, 32,
              "Blowfish", "SHA2-256-128", legacy=True),
    Transform("cast128-cbc+md5", EncrId.ENCR_CAST, 16, IntegId.AUTH_HMAC_MD5_96, 16, "CAST", "HMAC-MD5-96",
              legacy=True),
)
BY_NAME = {t.name: t for t in TRANSFORMS}
AEAD_TUNNEL = tuple(t for t in TRANSFORMS if t.aead)  # the configurations with a fast path


def key_bytes(label: str, length: int) -> bytearray:
    """Deterministic key material (so failures reproduce)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return bytearray(out[:length])


def make_sa(
    transform: Transform,
    *,
    mode: Mode = Mode.TUNNEL,
    family: int = 4,
    esn: bool = False,
    encap: bool = False,
    spi: int = SPI,
    replay_window: int = 1024,
) -> SecurityAssociation:
    src, dst = OUTER[family]
    return SecurityAssociation(
        spi=spi,
        protocol=IpProto.ESP,
        src=src,
        dst=dst,
        mode=mode,
        replay_window=replay_window,
        enc=transform.enc,
        enc_key=key_bytes(transform.name + "/enc", transform.enc_key_bytes),
        auth=transform.auth,
        auth_key=key_bytes(transform.name + "/auth", transform.auth_key_bytes),
        esn=esn,
        encap=UdpEncap(4500, 4500) if encap else None,
    )


def make_ctx(transform: Transform, **kwargs: object) -> EspContext:
    """An :class:`EspContext` for ``transform`` (legacy allowed); kwargs as :func:`make_sa`."""
    return EspContext(make_sa(transform, **kwargs), allow_legacy=True)  # type: ignore[arg-type]


def udp4(payload: bytes = b"hello", *, tos: int = 0, df: bool = True) -> bytes:
    """An IPv4/UDP packet (valid header and UDP checksum 0)."""
    src, dst = INNER_ADDRESSES[4]
    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0) + payload
    return bytes(ipv4_header(src, dst, IpProto.UDP, len(udp), tos=tos, df=df, ident=0x1357) + udp)


def udp6(payload: bytes = b"hello", *, traffic_class: int = 0) -> bytes:
    """An IPv6/UDP packet with a correct UDP checksum."""
    src, dst = INNER_ADDRESSES[6]
    length = 8 + len(payload)
    udp = bytearray(struct.pack("!HHHH", 1234, 5678, length, 0) + payload)
    pseudo = int.from_bytes(src + dst, "big") + length + IpProto.UDP
    struct.pack_into("!H", udp, 6, checksum(udp, pseudo) or 0xFFFF)
    return bytes(ipv6_header(src, dst, IpProto.UDP, length, traffic_class=traffic_class) + udp)


def inner(family: int, payload: bytes = b"hello") -> bytes:
    return udp4(payload) if family == 4 else udp6(payload)


ESP_MODULES = ("test_esp", "test_replay", "test_vectors", "test_fuzz_esp")


@pytest.fixture(autouse=True)
def _esp_raise_unexpected(request: pytest.FixtureRequest) -> Iterator[None]:
    """In the ESP test modules, an unexpected exception in the codec fails the
    test instead of being counted as MALFORMED."""
    if not request.module.__name__.startswith(ESP_MODULES):
        yield
        return
    import ipsecd.esp

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ipsecd.esp, "RAISE_UNEXPECTED", True)
        yield


# Imported late so that the table above is usable even if the codec fails to import.
from ipsecd.esp import EspContext  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``netns`` need root for namespaces: without it they fail, never skip.

    A skipped namespace test would read as a pass; CI runs as root, so a
    failure here means the environment is wrong and must be said loudly.
    """
    if item.get_closest_marker("netns") is not None and os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and needs root", pytrace=False)
