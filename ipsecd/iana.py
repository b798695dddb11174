"""IANA registries used by ipsecd, one IntEnum per registry.

Unknown code points survive a round trip (``_missing_`` builds a pseudo
member), as dnspython does for DNS types: IKE peers send private-use values
and we must be able to carry them, log them and refuse them by name.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Self


class _OpenEnum(IntEnum):
    """An IntEnum that accepts values it has no name for."""

    @classmethod
    def _missing_(cls, value: object) -> _OpenEnum | None:
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"{cls.__name__.upper()}_{value}"
        member._value_ = value
        return member

    @classmethod
    def of(cls, value: int) -> Self:
        """``cls(value)``, a dict lookup when ``value`` has a name (the IKE decoder's hot
        path calls this for every payload, transform and notify)."""
        try:
            # no typing.cast: a function call at run time, 60 of them per IKE SA setup
            return cls._value2member_map_[value]  # type: ignore[return-value]
        except KeyError:
            return cls(value)


class IpProto(_OpenEnum):
    """IP protocol numbers (IANA "Assigned Internet Protocol Numbers")."""

    HOPOPT = 0
    ICMP = 1
    IPV4 = 4  # IP-in-IP, the next header of an IPv4 tunnel-mode ESP payload
    TCP = 6
    UDP = 17
    IPV6 = 41
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    ESP = 50
    AH = 51
    ICMPV6 = 58
    IPV6_NONXT = 59  # RFC 4303 §2.6: dummy packets carry this next header
    IPV6_OPTS = 60
    IPCOMP = 108


class EncrId(_OpenEnum):
    """IKEv2 Transform Type 1 - Encryption Algorithm Transform IDs (RFC 7296 §3.3.2)."""

    ENCR_DES_IV64 = 1
    ENCR_DES = 2
    ENCR_3DES = 3
    ENCR_RC5 = 4
    ENCR_IDEA = 5
    ENCR_CAST = 6
    ENCR_BLOWFISH = 7
    ENCR_3IDEA = 8
    ENCR_DES_IV32 = 9
    ENCR_NULL = 11
    ENCR_AES_CBC = 12
    ENCR_AES_CTR = 13
    ENCR_AES_CCM_8 = 14
    ENCR_AES_CCM_12 = 15
    ENCR_AES_CCM_16 = 16
    ENCR_AES_GCM_8 = 18
    ENCR_AES_GCM_12 = 19
    ENCR_AES_GCM_16 = 20
    ENCR_NULL_AUTH_AES_GMAC = 21
    ENCR_CAMELLIA_CBC = 23
    ENCR_CHACHA20_POLY1305 = 28


class IntegId(_OpenEnum):
    """IKEv2 Transform Type 3 - Integrity Algorithm Transform IDs (RFC 7296 §3.3.2, RFC 4868)."""

    NONE = 0
    AUTH_HMAC_MD5_96 = 1
    AUTH_HMAC_SHA1_96 = 2
    AUTH_DES_MAC = 3
    AUTH_KPDK_MD5 = 4
    AUTH_AES_XCBC_96 = 5
    AUTH_HMAC_MD5_128 = 6
    AUTH_HMAC_SHA1_160 = 7
    AUTH_AES_CMAC_96 = 8
    AUTH_AES_128_GMAC = 9
    AUTH_AES_192_GMAC = 10
    AUTH_AES_256_GMAC = 11
    AUTH_HMAC_SHA2_256_128 = 12
    AUTH_HMAC_SHA2_384_192 = 13
    AUTH_HMAC_SHA2_512_256 = 14


class IpcompId(_OpenEnum):
    """IPComp transform identifiers (RFC 7296 §3.3.2 / RFC 3173)."""

    IPCOMP_OUI = 1
    IPCOMP_DEFLATE = 2
    IPCOMP_LZS = 3
    IPCOMP_LZJH = 4
