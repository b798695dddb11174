"""IKEv2 cryptography: PRFs, prf+, the key schedule, AUTH for PSK, SK payload protection.

Theory of operation
-------------------
After IKE_SA_INIT both ends hold Ni, Nr, SPIi, SPIr and the Diffie-Hellman
shared secret g^ir (:mod:`ipsecd.ike.dh`).  RFC 7296 §2.14 turns them into

    SKEYSEED = prf(Ni | Nr, g^ir)
    {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
             = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)

(:func:`derive_ike_sa_keys`; :func:`ike_sa_keys_from_exchange` does both
steps from the recorded inputs of an exchange, for adding vectors taken
from a peer's logs).  SK_d keys every Child SA (§2.17,
:func:`child_sa_keymat`) and the next IKE SA (§2.18,
:func:`rekey_skeyseed`); SK_ai/SK_ei protect what the initiator sends and
SK_ar/SK_er what the responder sends; SK_pi/SK_pr enter the AUTH payload
(§2.15, :func:`signed_octets`, :func:`psk_auth`).  Key lengths come from the
negotiated transforms (:class:`IkeSaSuite`): an AEAD has no SK_a and its SK_e
ends with the salt (RFC 5282 §7.1: 4 octets for GCM, 3 for CCM; RFC 7634 §4
for ChaCha20-Poly1305).

:class:`SkCipher` protects one direction of the Encrypted payload (§3.14):

* AES-CBC (and legacy 3DES) with an HMAC or AES-XCBC integrity transform:
  a random IV of one block, the inner payloads padded to the block size with
  a Pad Length octet, encrypted, and an ICV computed over the whole message
  from the first octet of the IKE header through the last octet of the
  ciphertext.
* AEADs (RFC 5282, RFC 7634): an 8-octet IV, nonce = salt | IV, associated
  data = the message from the IKE header through the SK payload's generic
  header (§5.1 - any unencrypted payloads before SK included, IV and
  ciphertext excluded); no padding is needed, the Pad Length octet is still
  there.

:func:`protect` / :func:`unprotect` work on whole messages; the SKF variants
(RFC 7383) protect each fragment the same way with the Fragment Number and
Total Fragments fields inside the associated data.  A message that fails to
decrypt raises :class:`~ipsecd.ike.errors.IkeDecryptError`: RFC 7296
§2.21.1 wants it dropped silently and counted, and no state changed.

Nothing here logs, and no repr shows a key.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    IntegId,
    PayloadType,
    PrfId,
    TransformType,
)
from ipsecd.ike.errors import IkeDecryptError, IkeLocalError, invalid_syntax
from ipsecd.ike.messages import (
    SK,
    SKF,
    Identification,
    Message,
    Payload,
    Proposal,
    decode,
    decode_payloads,
    encode_payloads,
    encode_protected_prefix,
    identification_body,
)
from ipsecd.transforms import integ_algo

__all__ = [
    "ENCR_ALGORITHMS",
    "INTEG_ALGORITHMS",
    "KEY_PAD",
    "PRF_ALGORITHMS",
    "ChildSaKeys",
    "IkeEncr",
    "IkeInteg",
    "IkePrf",
    "IkeSaKeys",
    "IkeSaSuite",
    "SkCipher",
    "aes_xcbc_mac",
    "child_sa_keymat",
    "derive_ike_sa_keys",
    "ike_sa_keys_from_exchange",
    "prf",
    "prf_plus",
    "protect",
    "protect_fragments",
    "psk_auth",
    "psk_auth_with_pad",
    "psk_key_pad",
    "reassemble_fragments",
    "rekey_skeyseed",
    "signed_octets",
    "skeyseed",
    "unprotect",
    "unprotect_fragment",
    "verify_psk_auth",
]

log = logging.getLogger("ipsecd.ike.crypto")

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15, 17 ASCII octets, no terminator


# --------------------------------------------------------------------------- AES-XCBC (RFC 3566)


def _aes_ecb_block(key: bytes | bytearray, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def aes_xcbc_mac(key: bytes | bytearray, message: bytes | bytearray) -> bytes:
    """AES-XCBC-MAC (RFC 3566 §4), the full 128-bit output; ``key`` is 16 octets."""
    if len(key) != 16:
        raise IkeLocalError("AES-XCBC-MAC takes a 128-bit key")
    k1 = _aes_ecb_block(key, b"\x01" * 16)
    k2 = _aes_ecb_block(key, b"\x02" * 16)
    k3 = _aes_ecb_block(key, b"\x03" * 16)
    if message and len(message) % 16 == 0:
        body, last, pad_key = message[:-16], message[-16:], k2
    else:  # RFC 3566 §4 (b): pad with 0x80 then zeros, and use K3
        cut = len(message) - len(message) % 16
        body, last, pad_key = message[:cut], message[cut:], k3
        last += b"\x80" + b"\x00" * (15 - len(last))
    final = bytes(a ^ b for a, b in zip(last, pad_key, strict=True))
    # CBC over the whole blocks with a zero IV: the last ciphertext block is E.
    encryptor = Cipher(algorithms.AES(k1), modes.CBC(b"\x00" * 16)).encryptor()
    chained = encryptor.update(body + final) + encryptor.finalize()
    return chained[-16:]


def _aes_xcbc_prf(key: bytes | bytearray, message: bytes) -> bytes:
    """AES-XCBC-PRF-128 (RFC 4434 §2): any key length, normalized to 128 bits."""
    if len(key) < 16:
        key = key + b"\x00" * (16 - len(key))
    elif len(key) > 16:
        key = aes_xcbc_mac(b"\x00" * 16, key)
    return aes_xcbc_mac(key, message)


# --------------------------------------------------------------------------- algorithm tables


@dataclass(frozen=True, slots=True)
class IkePrf:
    """A PRF transform (§3.3.2 type 2): output size and preferred key size in octets."""

    id: PrfId
    name: str
    output_bytes: int
    key_bytes: int  # preferred key length: the size of SK_d, SK_pi, SK_pr (§2.14)
    hash_name: str = ""  # HMAC hash; empty for AES-XCBC
    fixed_key: bool = False  # AES-XCBC: SKEYSEED uses 64 bits of each nonce (§2.14)
    legacy: bool = False

    def __call__(self, key: bytes | bytearray, data: bytes) -> bytes:
        """prf(key, data); ``key`` may be a PSK's own bytearray (no immutable copy of it)."""
        if self.hash_name:
            return hmac.digest(key, data, self.hash_name)
        return _aes_xcbc_prf(key, data)


@dataclass(frozen=True, slots=True)
class IkeEncr:
    """An encryption transform for the SK payload (§3.3.2 type 1).

    ``key_bits`` are the Key Length attribute values allowed (empty when the
    transform has a fixed key size and takes no attribute, e.g. 3DES and
    ChaCha20-Poly1305).  SK_e is ``key_bits / 8 + salt_bytes`` octets.
    """

    id: EncrId
    name: str
    key_bits: tuple[int, ...]
    fixed_key_bytes: int = 0
    iv_bytes: int = 8
    block_bytes: int = 1  # padding alignment of the plaintext
    icv_bytes: int = 0  # AEAD tag
    salt_bytes: int = 0
    aead: bool = False
    legacy: bool = False

    def key_bytes(self, key_bits: int | None) -> int:
        """Length of SK_e for this Key Length attribute (salt included)."""
        if not self.key_bits:
            if key_bits not in (None, self.fixed_key_bytes * 8):
                raise IkeLocalError(f"{self.name} takes no key length {key_bits}")
            return self.fixed_key_bytes + self.salt_bytes
        if key_bits not in self.key_bits:
            raise IkeLocalError(f"{self.name} with a key length of {key_bits} bits")
        return key_bits // 8 + self.salt_bytes


@dataclass(frozen=True, slots=True)
class IkeInteg:
    """An integrity transform for the SK payload (§3.3.2 type 3)."""

    id: IntegId
    name: str
    key_bytes: int
    icv_bytes: int
    legacy: bool = False


_AES = (128, 192, 256)

PRF_ALGORITHMS: dict[PrfId, IkePrf] = {p.id: p for p in (
    IkePrf(PrfId.PRF_HMAC_SHA2_256, "prf-hmac-sha2-256", 32, 32, "sha256"),
    IkePrf(PrfId.PRF_HMAC_SHA2_384, "prf-hmac-sha2-384", 48, 48, "sha384"),
    IkePrf(PrfId.PRF_HMAC_SHA2_512, "prf-hmac-sha2-512", 64, 64, "sha512"),
    IkePrf(PrfId.PRF_HMAC_SHA1, "prf-hmac-sha1", 20, 20, "sha1"),
    IkePrf(PrfId.PRF_AES128_XCBC, "prf-aes128-xcbc", 16, 16, fixed_key=True),
    IkePrf(PrfId.PRF_HMAC_MD5, "prf-hmac-md5", 16, 16, "md5", legacy=True),
)}

ENCR_ALGORITHMS: dict[EncrId, IkeEncr] = {e.id: e for e in (
    IkeEncr(EncrId.ENCR_AES_GCM_16, "aes-gcm-16", _AES, icv_bytes=16, salt_bytes=4, aead=True),
    IkeEncr(EncrId.ENCR_AES_GCM_12, "aes-gcm-12", _AES, icv_bytes=12, salt_bytes=4, aead=True),
    IkeEncr(EncrId.ENCR_AES_GCM_8, "aes-gcm-8", _AES, icv_bytes=8, salt_bytes=4, aead=True),
    IkeEncr(EncrId.ENCR_AES_CCM_16, "aes-ccm-16", _AES, icv_bytes=16, salt_bytes=3, aead=True),
    IkeEncr(EncrId.ENCR_AES_CCM_12, "aes-ccm-12", _AES, icv_bytes=12, salt_bytes=3, aead=True),
    IkeEncr(EncrId.ENCR_AES_CCM_8, "aes-ccm-8", _AES, icv_bytes=8, salt_bytes=3, aead=True),
    IkeEncr(EncrId.ENCR_CHACHA20_POLY1305, "chacha20-poly1305", (), fixed_key_bytes=32,
            icv_bytes=16, salt_bytes=4, aead=True),
    IkeEncr(EncrId.ENCR_AES_CBC, "aes-cbc", _AES, iv_bytes=16, block_bytes=16),
    IkeEncr(EncrId.ENCR_3DES, "3des-cbc", (), fixed_key_bytes=24, block_bytes=8, legacy=True),
)}

INTEG_ALGORITHMS: dict[IntegId, IkeInteg] = {i.id: i for i in (
    IkeInteg(IntegId.AUTH_HMAC_SHA2_256_128, "hmac-sha2-256-128", 32, 16),
    IkeInteg(IntegId.AUTH_HMAC_SHA2_384_192, "hmac-sha2-384-192", 48, 24),
    IkeInteg(IntegId.AUTH_HMAC_SHA2_512_256, "hmac-sha2-512-256", 64, 32),
    IkeInteg(IntegId.AUTH_HMAC_SHA1_96, "hmac-sha1-96", 20, 12),
    IkeInteg(IntegId.AUTH_AES_XCBC_96, "aes-xcbc-96", 16, 12),
    IkeInteg(IntegId.AUTH_HMAC_MD5_96, "hmac-md5-96", 16, 12, legacy=True),
)}


_K = TypeVar("_K")
_V = TypeVar("_V")


def _lookup(table: dict[_K, _V], key: _K, kind: str) -> _V:
    try:
        return table[key]
    except KeyError:
        raise IkeLocalError(f"{kind} {key!r} is not implemented for IKE") from None


def _check_legacy(name: str, legacy: bool, allow_legacy: bool) -> None:
    if not legacy:
        return
    if not allow_legacy:
        raise IkeLocalError(f"{name} is a legacy algorithm; it needs the legacy switch (--allow-legacy)")
    log.warning("legacy IKE algorithm %s in use: it is weak, migrate this peer", name)


def prf(prf_id: PrfId, *, allow_legacy: bool = False) -> IkePrf:
    """The PRF with IANA id ``prf_id``."""
    algorithm = _lookup(PRF_ALGORITHMS, PrfId(prf_id), "PRF")
    _check_legacy(algorithm.name, algorithm.legacy, allow_legacy)
    return algorithm


# --------------------------------------------------------------------------- prf+ and the key schedule


def prf_plus(prf: IkePrf, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), n <= 255."""
    if length > 255 * prf.output_bytes:
        raise IkeLocalError(f"prf+ yields at most {255 * prf.output_bytes} octets with {prf.name}")
    out = bytearray()
    block = b""
    if prf.hash_name:
        # Every block is keyed with K: its HMAC key schedule (the hashed inner and outer
        # pads) is made once and copied per block - an IKE SA's keys take 5 or more blocks.
        keyed = hmac.new(key, digestmod=prf.hash_name)
        for n in range(1, -(-length // prf.output_bytes) + 1):
            mac = keyed.copy()
            mac.update(block + seed + bytes((n,)))
            block = mac.digest()
            out += block
        return bytes(out[:length])
    for n in itertools.count(1):
        if len(out) >= length:
            break
        block = prf(key, block + seed + bytes((n,)))
        out += block
    return bytes(out[:length])


def skeyseed(prf: IkePrf, Ni: bytes, Nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14).

    For a PRF with a fixed key size (AES-XCBC) only the first 64 bits of
    each nonce form the key (§2.14).
    """
    if prf.fixed_key:
        return prf(Ni[:8] + Nr[:8], g_ir)
    return prf(Ni + Nr, g_ir)


def rekey_skeyseed(prf: IkePrf, SK_d: bytes, g_ir: bytes, Ni: bytes, Nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) of a rekeyed IKE SA (RFC 7296 §2.18).

    ``prf`` is the old IKE SA's PRF; Ni and Nr are those of the
    CREATE_CHILD_SA exchange.
    """
    return prf(SK_d, g_ir + Ni + Nr)


@dataclass(frozen=True, slots=True)
class IkeSaSuite:
    """The transforms an IKE SA runs with, as chosen in IKE_SA_INIT (one of each type)."""

    encr: EncrId
    prf: PrfId
    integ: IntegId = IntegId.NONE  # NONE with an AEAD (RFC 5282 §8)
    dh: DhGroup = DhGroup.NONE
    encr_key_bits: int | None = None

    @classmethod
    def from_proposal(cls, proposal: Proposal) -> IkeSaSuite:
        """The suite of a chosen proposal (SAr1): exactly one transform of each type."""
        chosen: dict[int, tuple[int, int | None]] = {}
        for transform in proposal.transforms:
            if transform.type in chosen:
                raise invalid_syntax(f"chosen proposal has two {TransformType(transform.type).name} transforms")
            chosen[transform.type] = (transform.id, transform.key_length)
        if TransformType.ENCR not in chosen or TransformType.PRF not in chosen:
            raise invalid_syntax("chosen proposal lacks ENCR or PRF")
        encr, key_bits = chosen[TransformType.ENCR]
        return cls(
            EncrId(encr), PrfId(chosen[TransformType.PRF][0]),
            IntegId(chosen.get(TransformType.INTEG, (IntegId.NONE, None))[0]),
            DhGroup(chosen.get(TransformType.DH, (DhGroup.NONE, None))[0]), key_bits)

    def algorithms(self, *, allow_legacy: bool = False) -> tuple[IkePrf, IkeEncr, IkeInteg | None]:
        """The PRF, encryption and integrity descriptions; raises IkeLocalError if unusable."""
        # Asked three times per IKE SA set up (keys, two SK ciphers): a suite without a legacy
        # algorithm (which warns each time) is looked up once.
        found = _SUITE_ALGORITHMS.get(self)
        if found is not None:
            return found
        found = self._algorithms(allow_legacy)
        if not any(a is not None and a.legacy for a in found) and len(_SUITE_ALGORITHMS) < 256:
            _SUITE_ALGORITHMS[self] = found
        return found

    def _algorithms(self, allow_legacy: bool) -> tuple[IkePrf, IkeEncr, IkeInteg | None]:
        prf_algorithm = prf(self.prf, allow_legacy=allow_legacy)
        encr = _lookup(ENCR_ALGORITHMS, EncrId(self.encr), "encryption algorithm")
        _check_legacy(encr.name, encr.legacy, allow_legacy)
        encr.key_bytes(self.encr_key_bits)  # validates the key length
        if encr.aead:
            if self.integ != IntegId.NONE:  # RFC 5282 §8: no integrity transform with an AEAD
                raise IkeLocalError(f"{encr.name} is an AEAD and takes no integrity transform")
            return prf_algorithm, encr, None
        integ = _lookup(INTEG_ALGORITHMS, IntegId(self.integ), "integrity algorithm")
        _check_legacy(integ.name, integ.legacy, allow_legacy)
        return prf_algorithm, encr, integ


_SUITE_ALGORITHMS: dict[IkeSaSuite, tuple[IkePrf, IkeEncr, IkeInteg | None]] = {}


def _keys_repr(self: object) -> str:
    return f"<{type(self).__name__} (keys not shown)>"


@dataclass(frozen=True, slots=True, repr=False)
class IkeSaKeys:
    """The seven keys of an IKE SA (RFC 7296 §2.14), plus the suite they belong to."""

    suite: IkeSaSuite
    SK_d: bytes
    SK_ai: bytes
    SK_ar: bytes
    SK_ei: bytes
    SK_er: bytes
    SK_pi: bytes
    SK_pr: bytes

    __repr__ = _keys_repr

    def cipher(self, *, initiator: bool, sending: bool, allow_legacy: bool = False) -> SkCipher:
        """The SK protection for one direction: the initiator sends with SK_ei/SK_ai (§2.14)."""
        initiator_side = initiator == sending
        return SkCipher(
            self.suite,
            self.SK_ei if initiator_side else self.SK_er,
            self.SK_ai if initiator_side else self.SK_ar,
            allow_legacy=allow_legacy)


def derive_ike_sa_keys(
    suite: IkeSaSuite, SKEYSEED: bytes, Ni: bytes, Nr: bytes, SPIi: bytes, SPIr: bytes,
    *, allow_legacy: bool = False,
) -> IkeSaKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf_algorithm, encr, integ = suite.algorithms(allow_legacy=allow_legacy)
    p = prf_algorithm.key_bytes
    a = integ.key_bytes if integ is not None else 0  # RFC 5282 §7.1: SK_a is empty for an AEAD
    e = encr.key_bytes(suite.encr_key_bits)
    keymat = prf_plus(prf_algorithm, SKEYSEED, Ni + Nr + SPIi + SPIr, 3 * p + 2 * a + 2 * e)
    sizes = (p, a, a, e, e, p, p)
    offsets = list(itertools.accumulate(sizes, initial=0))
    parts = [keymat[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    return IkeSaKeys(suite, *parts)


def ike_sa_keys_from_exchange(
    suite: IkeSaSuite, Ni: bytes, Nr: bytes, g_ir: bytes, SPIi: bytes, SPIr: bytes,
    *, old_SK_d: bytes | None = None, old_prf: PrfId | None = None, allow_legacy: bool = False,
) -> tuple[bytes, IkeSaKeys]:
    """(SKEYSEED, keys) from the recorded inputs of an exchange (a peer's debug log, a capture).

    With ``old_SK_d`` the exchange is an IKE SA rekey (§2.18) and
    ``old_prf`` the old SA's PRF (default: the new one).
    """
    new_prf = prf(suite.prf, allow_legacy=allow_legacy)
    if old_SK_d is None:
        seed = skeyseed(new_prf, Ni, Nr, g_ir)
    else:
        seed_prf = new_prf if old_prf is None else prf(old_prf, allow_legacy=allow_legacy)
        seed = rekey_skeyseed(seed_prf, old_SK_d, g_ir, Ni, Nr)
    return seed, derive_ike_sa_keys(suite, seed, Ni, Nr, SPIi, SPIr, allow_legacy=allow_legacy)


@dataclass(frozen=True, slots=True, repr=False)
class ChildSaKeys:
    """The keys of one Child SA pair (§2.17): initiator->responder and responder->initiator."""

    encr_i: bytes  # protects traffic from the initiator to the responder
    integ_i: bytes
    encr_r: bytes  # protects traffic from the responder to the initiator
    integ_r: bytes

    __repr__ = _keys_repr


def child_sa_keymat(
    prf: IkePrf, SK_d: bytes, Ni: bytes, Nr: bytes, encr_key_bytes: int, integ_key_bytes: int,
    g_ir: bytes | None = None,
) -> ChildSaKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) for one ESP or AH Child SA (RFC 7296 §2.17).

    Order: the initiator-to-responder encryption key, then its integrity
    key, then the same for responder-to-initiator.  ``encr_key_bytes``
    includes an AEAD's salt (RFC 4106 §8.1); it is 0 for AH.
    """
    seed = (g_ir or b"") + Ni + Nr
    e, a = encr_key_bytes, integ_key_bytes
    keymat = prf_plus(prf, SK_d, seed, 2 * (e + a))
    return ChildSaKeys(keymat[:e], keymat[e:e + a], keymat[e + a:2 * e + a], keymat[2 * e + a:])


# --------------------------------------------------------------------------- AUTH (§2.15)


def signed_octets(
    prf: IkePrf, real_message: bytes, peer_nonce: bytes, SK_p: bytes, id_payload: Identification,
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 §2.15).

    The initiator signs RealMessage1 | NonceRData | prf(SK_pi, IDi'); the
    responder signs RealMessage2 | NonceIData | prf(SK_pr, IDr').
    ``real_message`` is the first message it sent, exactly as sent;
    ``peer_nonce`` is the other side's Nonce Data; IDx' is the ID payload
    without its generic header.
    """
    return real_message + peer_nonce + prf(SK_p, identification_body(id_payload))


def psk_key_pad(prf: IkePrf, shared_secret: bytes | bytearray) -> bytes:
    """prf(Shared Secret, "Key Pad for IKEv2"): the key of the PSK AUTH computation (RFC 7296
    §2.15).  A responder checks the peer's AUTH and makes its own with the same secret: it
    computes this once per IKE_AUTH (:func:`psk_auth_with_pad`)."""
    return prf(shared_secret, KEY_PAD)


def psk_auth_with_pad(prf: IkePrf, key_pad: bytes, octets: bytes) -> bytes:
    """AUTH = prf(``key_pad``, <SignedOctets>), ``key_pad`` from :func:`psk_key_pad`."""
    return prf(key_pad, octets)


def psk_auth(prf: IkePrf, shared_secret: bytes | bytearray, octets: bytes) -> bytes:
    """AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15).

    Also the EAP case (§2.16) with the MSK as the shared secret.
    """
    return prf(psk_key_pad(prf, shared_secret), octets)


def verify_psk_auth(prf: IkePrf, shared_secret: bytes | bytearray, octets: bytes,
                    received: bytes) -> bool:
    """True when ``received`` is the AUTH data for ``octets``; compared in constant time."""
    return hmac.compare_digest(psk_auth(prf, shared_secret, octets), received)


# --------------------------------------------------------------------------- SK protection


class _Integrity(Protocol):
    """What SK protection needs of an integrity transform (ipsecd.transforms.Integrity has it)."""

    icv_bytes: int

    def compute(self, *parts: bytes | bytearray | memoryview) -> bytes: ...

    def verify(self, icv: bytes | bytearray | memoryview, *parts: bytes | bytearray | memoryview) -> bool: ...


class _Xcbc96:
    """AES-XCBC-MAC-96 (RFC 3566) with the interface of ipsecd.transforms.Integrity."""

    __slots__ = ("_key", "icv_bytes")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.icv_bytes = 12

    def compute(self, *parts: bytes | bytearray | memoryview) -> bytes:
        return aes_xcbc_mac(self._key, b"".join(bytes(p) for p in parts))[:12]

    def verify(self, icv: bytes | bytearray | memoryview, *parts: bytes | bytearray | memoryview) -> bool:
        return hmac.compare_digest(self.compute(*parts), bytes(icv))


class _TruncatedGcm:
    """AES-GCM with an 8- or 12-octet tag (cryptography's AESGCM only does 16)."""

    __slots__ = ("_key", "_tag")

    def __init__(self, key: bytes, tag: int) -> None:
        self._key = key
        self._tag = tag

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        out = encryptor.update(data) + encryptor.finalize()
        return out + encryptor.tag[:self._tag]

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        body, tag = data[:-self._tag], data[-self._tag:]
        decryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce, tag, min_tag_length=self._tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(body) + decryptor.finalize()


@dataclass(slots=True, repr=False, eq=False)
class SkCipher:
    """Protection of the SK payload in one direction (RFC 7296 §3.14, RFC 5282, RFC 7634).

    ``SK_e`` is SK_ei or SK_er (with the salt at the end for an AEAD) and
    ``SK_a`` the matching SK_ai / SK_ar (empty for an AEAD).  Build it with
    :meth:`IkeSaKeys.cipher`.  ``iv_start`` fixes the first AEAD IV (for
    reproducible test vectors only; by default it is random).
    """

    suite: IkeSaSuite
    SK_e: bytes
    SK_a: bytes = b""
    allow_legacy: bool = False
    iv_start: int | None = None
    encr: IkeEncr = field(init=False)
    _aead: AESGCM | AESCCM | ChaCha20Poly1305 | _TruncatedGcm | None = field(init=False, default=None)
    _integ: _Integrity | None = field(init=False, default=None)
    _salt: bytes = field(init=False, default=b"")
    _key: bytes = field(init=False, default=b"")
    _iv_counter: itertools.count[int] = field(init=False)

    __repr__ = _keys_repr

    def __post_init__(self) -> None:
        _, encr, integ = self.suite.algorithms(allow_legacy=self.allow_legacy)
        self.encr = encr
        if len(self.SK_e) != encr.key_bytes(self.suite.encr_key_bits):
            raise IkeLocalError(f"{encr.name} needs SK_e of {encr.key_bytes(self.suite.encr_key_bits)} octets")
        key_length = len(self.SK_e) - encr.salt_bytes
        self._key, self._salt = self.SK_e[:key_length], self.SK_e[key_length:]
        # RFC 5282 §3.1.1: an AEAD IV must never repeat under one key; a counter
        # guarantees it (message IDs cannot: both directions' requests and
        # responses share the ID space under one key).
        start = int.from_bytes(os.urandom(4), "big") << 32 if self.iv_start is None else self.iv_start
        self._iv_counter = itertools.count(start)
        if encr.id in (EncrId.ENCR_AES_GCM_16,):
            self._aead = AESGCM(self._key)
        elif encr.id in (EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12):
            self._aead = _TruncatedGcm(self._key, encr.icv_bytes)
        elif encr.id in (EncrId.ENCR_AES_CCM_8, EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_16):
            self._aead = AESCCM(self._key, tag_length=encr.icv_bytes)
        elif encr.id == EncrId.ENCR_CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(self._key)
        if integ is not None:
            if len(self.SK_a) != integ.key_bytes:
                raise IkeLocalError(f"{integ.name} needs SK_a of {integ.key_bytes} octets")
            if integ.id == IntegId.AUTH_AES_XCBC_96:
                self._integ = _Xcbc96(self.SK_a)
            else:
                self._integ = integ_algo(integ.id, allow_legacy=self.allow_legacy).new(self.SK_a)
        elif self.SK_a:
            raise IkeLocalError(f"{encr.name} is an AEAD: SK_a must be empty (RFC 5282 §7.1)")

    @property
    def icv_bytes(self) -> int:
        """Length of the ICV (or AEAD tag) at the end of the SK payload."""
        return self.encr.icv_bytes if self.encr.aead else self._integrity().icv_bytes

    def _integrity(self) -> _Integrity:
        if self._integ is None:  # pragma: no cover - only AEADs have none, and they do not get here
            raise IkeLocalError("no integrity transform")
        return self._integ

    def body_length(self, plaintext_length: int) -> int:
        """Length of IV | ciphertext | ICV for ``plaintext_length`` octets of inner payloads."""
        padded = plaintext_length + 1  # the Pad Length octet
        padded += -padded % self.encr.block_bytes
        return self.encr.iv_bytes + padded + self.icv_bytes

    def _cbc_cipher(self, iv: bytes) -> Cipher[modes.CBC]:
        if self.encr.id == EncrId.ENCR_3DES:
            return Cipher(decrepit.TripleDES(self._key), modes.CBC(iv))
        return Cipher(algorithms.AES(self._key), modes.CBC(iv))

    def seal(self, prefix: bytes | bytearray, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """IV | ciphertext | ICV of ``plaintext`` (inner payloads) for a message starting with ``prefix``.

        ``prefix`` is the message up to and including the SK/SKF payload
        header, with its length fields already counting the returned body.
        """
        pad = -(len(plaintext) + 1) % self.encr.block_bytes
        padded = plaintext + b"\x00" * pad + bytes((pad,))
        if self._aead is not None:
            if iv is None:
                iv = (next(self._iv_counter) & (2**64 - 1)).to_bytes(8, "big")
            return iv + self._aead.encrypt(self._salt + iv, padded, bytes(prefix))
        if iv is None:
            iv = os.urandom(self.encr.iv_bytes)  # §3.14: random and unpredictable
        encryptor = self._cbc_cipher(iv).encryptor()
        ciphertext = iv + encryptor.update(padded) + encryptor.finalize()
        return ciphertext + self._integrity().compute(prefix, ciphertext)

    def open(self, prefix: bytes | bytearray | memoryview, body: bytes) -> bytes:
        """The inner payload chain of an SK/SKF body; raises IkeDecryptError."""
        iv_bytes, icv_bytes = self.encr.iv_bytes, self.icv_bytes
        if len(body) < iv_bytes + 1 + icv_bytes:
            raise IkeDecryptError("short")
        iv = body[:iv_bytes]
        if self._aead is not None:
            try:
                padded = self._aead.decrypt(self._salt + iv, body[iv_bytes:], bytes(prefix))
            except InvalidTag:
                raise IkeDecryptError("icv") from None
        else:
            ciphertext = body[iv_bytes:len(body) - icv_bytes]
            if len(ciphertext) % self.encr.block_bytes:
                raise IkeDecryptError("alignment")
            if not self._integrity().verify(body[len(body) - icv_bytes:], prefix, body[:len(body) - icv_bytes]):
                raise IkeDecryptError("icv")
            decryptor = self._cbc_cipher(iv).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
        pad = padded[-1]
        if pad + 1 > len(padded):
            raise IkeDecryptError("padding")
        return padded[:len(padded) - 1 - pad]  # §3.14: the padding's content is not checked


def protect(message: Message, inner: Sequence[Payload], cipher: SkCipher, *, iv: bytes | None = None) -> bytes:
    """Encode ``message`` with an SK payload carrying ``inner`` as its last payload.

    ``message.payloads`` are the unencrypted payloads before SK (usually none).
    """
    first, plaintext = encode_payloads(inner)
    body_length = cipher.body_length(len(plaintext))
    prefix = encode_protected_prefix(message, SK(first), body_length)
    body = cipher.seal(prefix, plaintext, iv)
    if len(body) != body_length:  # pragma: no cover - body_length and seal agree by construction
        raise IkeLocalError("SK body length mismatch")
    return bytes(prefix + body)


def unprotect(data: bytes, cipher: SkCipher, message: Message | None = None,
              ) -> tuple[Message, list[Payload]]:
    """(message, inner payloads) of a message whose last payload is SK.

    Raises IkeProtocolError when the outer structure is malformed (before
    authentication: drop it), IkeDecryptError when the SK payload does not
    verify (drop silently, §2.21.1), and IkeProtocolError with
    INVALID_SYNTAX when the authenticated inner payloads are malformed
    (this one may be answered).  ``message``: ``decode(data)``, when the caller has it.
    """
    if message is None:
        message = decode(data)
    if not message.payloads or not isinstance(message.payloads[-1], SK):
        raise IkeDecryptError("not-encrypted")
    sk = message.payloads[-1]
    plaintext = cipher.open(memoryview(data)[:len(data) - len(sk.data)], sk.data)
    return message, decode_payloads(sk.next_payload, plaintext)


def protect_fragments(
    message: Message, inner: Sequence[Payload], cipher: SkCipher, max_message_bytes: int,
) -> list[bytes]:
    """The message as SKF fragments of at most ``max_message_bytes`` octets each (RFC 7383 §2.5).

    The inner payload chain is split into equal-sized chunks; each fragment
    is a message of its own (same header fields) whose only payload is an
    SKF carrying one encrypted chunk.  Fragment 1 names the first inner
    payload type, the others carry zero there.
    """
    if message.payloads:
        raise IkeLocalError("RFC 7383 §2.5: an SKF message carries no other payload")
    first, plaintext = encode_payloads(inner)
    overhead = 28 + SKF.HEADER_LENGTH + cipher.body_length(0)
    room = max_message_bytes - overhead
    room -= room % cipher.encr.block_bytes  # a whole number of blocks leaves no padding
    if room < 1:
        raise IkeLocalError(f"fragments of {max_message_bytes} octets leave no room for data")
    chunks = [plaintext[i:i + room] for i in range(0, len(plaintext), room)] or [b""]
    if len(chunks) > 0xFFFF:
        raise IkeLocalError("more than 65535 fragments")
    out = []
    for number, chunk in enumerate(chunks, 1):
        skf = SKF(first if number == 1 else PayloadType.NONE, number, len(chunks))
        body_length = cipher.body_length(len(chunk))
        prefix = encode_protected_prefix(message, skf, body_length)
        out.append(bytes(prefix + cipher.seal(prefix, chunk)))
    return out


def unprotect_fragment(data: bytes, cipher: SkCipher, message: Message | None = None,
                       ) -> tuple[Message, SKF, bytes]:
    """(message, SKF header, decrypted chunk) of one fragment (RFC 7383 §2.6); ``message``:
    ``decode(data)``, when the caller has it."""
    if message is None:
        message = decode(data)
    if len(message.payloads) != 1 or not isinstance(message.payloads[0], SKF):
        raise IkeDecryptError("not-encrypted")
    skf = message.payloads[0]
    chunk = cipher.open(memoryview(data)[:len(data) - len(skf.data)], skf.data)
    return message, skf, chunk


def reassemble_fragments(fragments: Sequence[tuple[SKF, bytes]]) -> list[Payload]:
    """The inner payloads of a complete set of decrypted fragments (RFC 7383 §2.6.1).

    Raises IkeProtocolError (INVALID_SYNTAX) when the set is incomplete or
    inconsistent; the chunks are authenticated, so this may be answered.
    """
    if not fragments:
        raise invalid_syntax("no fragments")
    total = fragments[0][0].total_fragments
    by_number = {skf.fragment_number: (skf, chunk) for skf, chunk in fragments}
    if any(skf.total_fragments != total for skf, _ in fragments) or sorted(by_number) != list(range(1, total + 1)):
        raise invalid_syntax("incomplete or inconsistent fragment set")
    first = by_number[1][0].next_payload
    return decode_payloads(first, b"".join(by_number[n][1] for n in range(1, total + 1)))
