"""The algorithm registry: every ESP/AH/IPComp transform ipsecd knows.

Transforms are looked up by their IANA id (:mod:`ipsecd.iana`) and, for the
setkey(8) language, by the names setkey spells them with.  This module holds
the static description of each transform (key, IV, block and ICV sizes;
whether it is an AEAD; whether it is legacy) and the integrity (HMAC)
implementation shared by ESP and AH.  Cipher contexts for the per-packet
path are built by :mod:`ipsecd.esp`.

Legacy algorithms (DES, 3DES, Blowfish, CAST-128, HMAC-MD5) exist only for
the HOWTO's racoon and Windows 2000 era peers.  Looking one up is refused
unless the caller passes ``allow_legacy=True`` (the operator's explicit
switch).  The warning that one is in use is logged by :func:`warn_legacy`
once per SA, when the SA's codec context is built, not on every lookup (the
setkey parser, the control process and each worker look the same algorithm up
several times per SA).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from ipsecd.iana import EncrId, IntegId, IpcompId

log = logging.getLogger("ipsecd.transforms")


class TransformError(ValueError):
    """An algorithm or key that cannot be used: unknown, wrong size, or legacy without the switch."""


class LegacyAlgorithmError(TransformError):
    """A legacy algorithm was asked for without the explicit legacy switch."""


@dataclass(frozen=True, slots=True)
class EncAlgo:
    """An ESP encryption (or combined-mode) transform.

    ``key_bits`` are the accepted lengths of the *whole* keying material as
    setkey takes it; for AEADs and GMAC that includes ``salt_bytes`` of salt
    at the end (RFC 4106 §8.1, RFC 7634 §4, RFC 4543 §5).
    """

    id: EncrId
    name: str
    setkey_names: tuple[str, ...]
    key_bits: tuple[int, ...]
    iv_bytes: int
    block_bytes: int  # payload alignment for padding (at least 4, RFC 4303 §2.4)
    icv_bytes: int = 0  # tag length of a combined-mode algorithm; 0 otherwise
    salt_bytes: int = 0
    aead: bool = False  # combined mode: confidentiality and integrity in one
    auth_only: bool = False  # ENCR_NULL_AUTH_AES_GMAC: integrity only, payload in clear
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class IntegAlgo:
    """An integrity transform: HMAC with a hash, truncated to ``icv_bytes``."""

    id: IntegId
    name: str
    setkey_names: tuple[str, ...]
    key_bytes: int
    icv_bytes: int
    hash_name: str
    legacy: bool = False

    def new(self, key: bytes | bytearray) -> Integrity:
        """An integrity context keyed with ``key``."""
        if len(key) != self.key_bytes:
            raise TransformError(
                f"{self.name} needs a {self.key_bytes * 8}-bit key, got {len(key) * 8} bits"
            )
        return Integrity(self, bytes(key))


@dataclass(frozen=True, slots=True)
class CompAlgo:
    """An IPComp transform (RFC 3173)."""

    id: IpcompId
    name: str
    setkey_names: tuple[str, ...]


class Integrity:
    """A keyed integrity transform: ``compute`` and constant-time ``verify``.

    The HMAC key schedule is done once here; each packet copies the keyed
    state.  ``cryptography``'s HMAC is used because its ``copy()`` +
    ``update()`` + ``finalize()`` measured fastest per packet (faster than
    ``hmac.digest`` one-shot, which re-keys, and than ``hmac.HMAC.copy``).
    """

    __slots__ = ("_template", "algo", "icv_bytes")

    def __init__(self, algo: IntegAlgo, key: bytes) -> None:
        self.algo = algo
        self.icv_bytes = algo.icv_bytes
        self._template = crypto_hmac.HMAC(key, _HASHES[algo.hash_name]())

    @property
    def new_mac(self) -> Callable[[], crypto_hmac.HMAC]:
        """A factory of fresh keyed HMAC objects (``update``/``finalize``) for streaming use."""
        return self._template.copy

    def compute(self, *parts: bytes | bytearray | memoryview) -> bytes:
        """The truncated ICV over the concatenation of ``parts``."""
        mac = self._template.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()[: self.icv_bytes]

    def verify(self, icv: bytes | bytearray | memoryview, *parts: bytes | bytearray | memoryview) -> bool:
        """True when ``icv`` is the ICV of ``parts``; compared in constant time."""
        return hmac.compare_digest(self.compute(*parts), icv)


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "md5": hashes.MD5,
}

_AES_BITS = (128, 192, 256)

ENC_ALGOS: tuple[EncAlgo, ...] = (
    EncAlgo(EncrId.ENCR_AES_GCM_16, "aes-gcm-16", ("aes-gcm-16", "aes-gcm", "aes-gcm-icv16"),
            key_bits=tuple(b + 32 for b in _AES_BITS), iv_bytes=8, block_bytes=4,
            icv_bytes=16, salt_bytes=4, aead=True),
    EncAlgo(EncrId.ENCR_CHACHA20_POLY1305, "chacha20-poly1305", ("chacha20-poly1305",),
            key_bits=(288,), iv_bytes=8, block_bytes=4, icv_bytes=16, salt_bytes=4, aead=True),
    EncAlgo(EncrId.ENCR_NULL_AUTH_AES_GMAC, "aes-gmac", ("aes-gmac", "null-aes-gmac"),
            key_bits=tuple(b + 32 for b in _AES_BITS), iv_bytes=8, block_bytes=4,
            icv_bytes=16, salt_bytes=4, aead=True, auth_only=True),
    EncAlgo(EncrId.ENCR_AES_CBC, "aes-cbc", ("rijndael-cbc", "aes-cbc"),
            key_bits=_AES_BITS, iv_bytes=16, block_bytes=16),
    EncAlgo(EncrId.ENCR_NULL, "null", ("null", "null-enc"),
            key_bits=(0,), iv_bytes=0, block_bytes=4),
    EncAlgo(EncrId.ENCR_3DES, "3des-cbc", ("3des-cbc",),
            key_bits=(192,), iv_bytes=8, block_bytes=8, legacy=True),
    EncAlgo(EncrId.ENCR_DES, "des-cbc", ("des-cbc",),
            key_bits=(64,), iv_bytes=8, block_bytes=8, legacy=True),
    EncAlgo(EncrId.ENCR_BLOWFISH, "blowfish-cbc", ("blowfish-cbc",),
            key_bits=tuple(range(40, 449, 8)), iv_bytes=8, block_bytes=8, legacy=True),
    EncAlgo(EncrId.ENCR_CAST, "cast128-cbc", ("cast128-cbc",),
            key_bits=tuple(range(40, 129, 8)), iv_bytes=8, block_bytes=8, legacy=True),
)

INTEG_ALGOS: tuple[IntegAlgo, ...] = (
    IntegAlgo(IntegId.AUTH_HMAC_SHA2_256_128, "hmac-sha256", ("hmac-sha256", "hmac-sha2-256"),
              key_bytes=32, icv_bytes=16, hash_name="sha256"),
    IntegAlgo(IntegId.AUTH_HMAC_SHA2_384_192, "hmac-sha384", ("hmac-sha384", "hmac-sha2-384"),
              key_bytes=48, icv_bytes=24, hash_name="sha384"),
    IntegAlgo(IntegId.AUTH_HMAC_SHA2_512_256, "hmac-sha512", ("hmac-sha512", "hmac-sha2-512"),
              key_bytes=64, icv_bytes=32, hash_name="sha512"),
    IntegAlgo(IntegId.AUTH_HMAC_SHA1_96, "hmac-sha1", ("hmac-sha1",),
              key_bytes=20, icv_bytes=12, hash_name="sha1"),
    IntegAlgo(IntegId.AUTH_HMAC_MD5_96, "hmac-md5", ("hmac-md5",),
              key_bytes=16, icv_bytes=12, hash_name="md5", legacy=True),
)

COMP_ALGOS: tuple[CompAlgo, ...] = (
    CompAlgo(IpcompId.IPCOMP_DEFLATE, "deflate", ("deflate",)),
)

_ENC_BY_ID = {a.id: a for a in ENC_ALGOS}
_ENC_BY_NAME = {n: a for a in ENC_ALGOS for n in a.setkey_names}
_INTEG_BY_ID = {a.id: a for a in INTEG_ALGOS}
_INTEG_BY_NAME = {n: a for a in INTEG_ALGOS for n in a.setkey_names}
_COMP_BY_ID = {a.id: a for a in COMP_ALGOS}
_COMP_BY_NAME = {n: a for a in COMP_ALGOS for n in a.setkey_names}


def _check_legacy(name: str, legacy: bool, allow_legacy: bool) -> None:
    if legacy and not allow_legacy:
        raise LegacyAlgorithmError(
            f"{name} is a legacy algorithm; enable the legacy switch (--allow-legacy / "
            f"allow_legacy = true) to use it with old peers"
        )


def warn_legacy(*algos: EncAlgo | IntegAlgo | None) -> None:
    """Log that the legacy algorithms among ``algos`` are in use, one line each.

    The codecs call this once when they build an SA's context; lookups
    (:func:`enc_algo`, :func:`integ_algo`) only refuse legacy algorithms
    without the switch, they do not log.
    """
    for algo in algos:
        if algo is not None and algo.legacy:
            log.warning("legacy algorithm %s in use: it is weak, migrate this peer to AES-GCM", algo.name)


def enc_algo(which: EncrId | int | str, *, allow_legacy: bool = False) -> EncAlgo:
    """The encryption transform by IANA id or setkey name."""
    algo = _ENC_BY_NAME.get(which) if isinstance(which, str) else _ENC_BY_ID.get(EncrId(which))
    if algo is None:
        raise TransformError(f"unknown encryption algorithm {which!r}")
    _check_legacy(algo.name, algo.legacy, allow_legacy)
    return algo


def integ_algo(which: IntegId | int | str, *, allow_legacy: bool = False) -> IntegAlgo:
    """The integrity transform by IANA id or setkey name."""
    algo = _INTEG_BY_NAME.get(which) if isinstance(which, str) else _INTEG_BY_ID.get(IntegId(which))
    if algo is None:
        raise TransformError(f"unknown authentication algorithm {which!r}")
    _check_legacy(algo.name, algo.legacy, allow_legacy)
    return algo


def comp_algo(which: IpcompId | int | str) -> CompAlgo:
    """The IPComp transform by IANA id or setkey name."""
    algo = _COMP_BY_NAME.get(which) if isinstance(which, str) else _COMP_BY_ID.get(IpcompId(which))
    if algo is None:
        raise TransformError(f"unknown compression algorithm {which!r}")
    return algo


def check_enc_key(algo: EncAlgo, key: bytes | bytearray) -> None:
    """Raise :class:`TransformError` unless ``key`` has a length ``algo`` accepts."""
    if len(key) * 8 not in algo.key_bits:
        allowed = ", ".join(str(b) for b in algo.key_bits) if len(algo.key_bits) < 6 else (
            f"{algo.key_bits[0]}..{algo.key_bits[-1]}")
        raise TransformError(f"{algo.name} takes a key of {allowed} bits, got {len(key) * 8}")


def md5_available() -> bool:
    """Some FIPS builds of OpenSSL refuse MD5; HMAC-MD5 is then unavailable."""
    try:
        hashlib.new("md5")
    except ValueError:
        return False
    return True
