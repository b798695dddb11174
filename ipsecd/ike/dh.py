"""IKEv2 key exchange groups (RFC 7296 §3.4): MODP, ECP, Curve25519 and Curve448.

Theory of operation
-------------------
``group(id)`` returns a :class:`Group`; ``group(id).generate()`` a fresh
:class:`PrivateKey` whose ``public_bytes()`` go into the KE payload and whose
``exchange(peer)`` turns the peer's KE data into g^ir, the shared secret that
:func:`ipsecd.ike.crypto.skeyseed` consumes.  Every peer value is checked
before use (RFC 6989) and a bad one raises
:class:`~ipsecd.ike.errors.InvalidPublicValueError` (INVALID_SYNTAX):

* MODP groups (RFC 3526; RFC 7296 Appendix B for groups 1 and 2): the value
  must be exactly as long as the prime and 1 < y < p-1.  These primes are
  safe primes, for which that range check is the whole of RFC 6989 §2.1.
  g^ir is padded with zeros to the length of the prime (§2.14).
* ECP groups (RFC 5903): KE data is x | y, each coordinate as long as the
  field, without the 0x04 prefix of SEC 1 (RFC 5903 §7); the point must be
  on the curve (RFC 6989 §2.3; OpenSSL checks it when the point is loaded).
  g^ir is the x coordinate of the shared point.
* Curve25519 and Curve448 (RFC 8031): 32- and 56-octet values; an all-zero
  shared secret (a low-order peer point) is refused (RFC 8031 §2.3).

Groups 1, 2 and 5 are legacy (RFC 8247 §2.4): ``group(..., allow_legacy=True)``
is required and logs a warning.  The prime constants below are RFC 3526 /
RFC 7296 Appendix B; ``tests/test_ike_dh.py`` recomputes each one from its
defining formula p = 2^N - 2^(N-64) - 1 + 2^64 * ([2^(N-130) pi] + k).

MODP arithmetic uses ``cryptography``'s finite-field DH, which version 50
marks deprecated; the warning is silenced here, and if the API is ever
removed the MODP class is the one place to change.  Private keys never
appear in a repr or a log.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

from ipsecd.ike.constants import DhGroup
from ipsecd.ike.errors import IkeLocalError, InvalidPublicValueError

__all__ = ["GROUPS", "EcpGroup", "Group", "ModpGroup", "MontgomeryGroup", "PrivateKey", "group"]

log = logging.getLogger("ipsecd.ike.dh")


def _hex(*lines: str) -> int:
    return int("".join(lines).replace(" ", ""), 16)


@contextmanager
def _ffdh() -> Iterator[None]:
    """Silence cryptography's FFDH deprecation warning around one call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        yield


# RFC 7296 Appendix B (groups 1, 2) and RFC 3526 (groups 5, 14-18); generator 2.
_MODP_768 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A63A3620 FFFFFFFF FFFFFFFF"
)
_MODP_1024 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE65381 FFFFFFFF FFFFFFFF"
)
_MODP_1536 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA237327 FFFFFFFF FFFFFFFF"
)
_MODP_2048 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AACAA68 FFFFFFFF FFFFFFFF"
)
_MODP_3072 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF"
)
_MODP_4096 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7"
    "88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA 2583E9CA 2AD44CE8"
    "DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D 99B2964F A090C3A2"
    "233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9"
    "93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199 FFFFFFFF FFFFFFFF"
)
_MODP_6144 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7"
    "88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA 2583E9CA 2AD44CE8"
    "DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D 99B2964F A090C3A2"
    "233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9"
    "93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34028492 36C3FAB4 D27C7026"
    "C1D4DCB2 602646DE C9751E76 3DBA37BD F8FF9406 AD9E530E E5DB382F 413001AE"
    "B06A53ED 9027D831 179727B0 865A8918 DA3EDBEB CF9B14ED 44CE6CBA CED4BB1B"
    "DB7F1447 E6CC254B 33205151 2BD7AF42 6FB8F401 378CD2BF 5983CA01 C64B92EC"
    "F032EA15 D1721D03 F482D7CE 6E74FEF6 D55E702F 46980C82 B5A84031 900B1C9E"
    "59E7C97F BEC7E8F3 23A97A7E 36CC88BE 0F1D45B7 FF585AC5 4BD407B2 2B4154AA"
    "CC8F6D7E BF48E1D8 14CC5ED2 0F8037E0 A79715EE F29BE328 06A1D58B B7C5DA76"
    "F550AA3D 8A1FBFF0 EB19CCB1 A313D55C DA56C9EC 2EF29632 387FE8D7 6E3C0468"
    "043E8F66 3F4860EE 12BF2D5B 0B7474D6 E694F91E 6DCC4024 FFFFFFFF FFFFFFFF"
)
_MODP_8192 = _hex(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7"
    "88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA 2583E9CA 2AD44CE8"
    "DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D 99B2964F A090C3A2"
    "233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9"
    "93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34028492 36C3FAB4 D27C7026"
    "C1D4DCB2 602646DE C9751E76 3DBA37BD F8FF9406 AD9E530E E5DB382F 413001AE"
    "B06A53ED 9027D831 179727B0 865A8918 DA3EDBEB CF9B14ED 44CE6CBA CED4BB1B"
    "DB7F1447 E6CC254B 33205151 2BD7AF42 6FB8F401 378CD2BF 5983CA01 C64B92EC"
    "F032EA15 D1721D03 F482D7CE 6E74FEF6 D55E702F 46980C82 B5A84031 900B1C9E"
    "59E7C97F BEC7E8F3 23A97A7E 36CC88BE 0F1D45B7 FF585AC5 4BD407B2 2B4154AA"
    "CC8F6D7E BF48E1D8 14CC5ED2 0F8037E0 A79715EE F29BE328 06A1D58B B7C5DA76"
    "F550AA3D 8A1FBFF0 EB19CCB1 A313D55C DA56C9EC 2EF29632 387FE8D7 6E3C0468"
    "043E8F66 3F4860EE 12BF2D5B 0B7474D6 E694F91E 6DBE1159 74A3926F 12FEE5E4"
    "38777CB6 A932DF8C D8BEC4D0 73B931BA 3BC832B6 8D9DD300 741FA7BF 8AFC47ED"
    "2576F693 6BA42466 3AAB639C 5AE4F568 3423B474 2BF1C978 238F16CB E39D652D"
    "E3FDB8BE FC848AD9 22222E04 A4037C07 13EB57A8 1A23F0C7 3473FC64 6CEA306B"
    "4BCBC886 2F8385DD FA9D4B7F A2C087E8 79683303 ED5BDD3A 062B3CF5 B3A278A6"
    "6D2A13F8 3F44F82D DF310EE0 74AB6A36 4597E899 A0255DC1 64F31CC5 0846851D"
    "F9AB4819 5DED7EA1 B1D510BD 7EE74D73 FAF36BC3 1ECFA268 359046F4 EB879F92"
    "4009438B 481C6CD7 889A002E D5EE382B C9190DA6 FC026E47 9558E447 5677E9AA"
    "9E3050E2 765694DF C81F56E8 80B96E71 60C980DD 98EDD3DF FFFFFFFF FFFFFFFF"
)
_MODP_PRIMES: dict[DhGroup, int] = {
    DhGroup.MODP_768: _MODP_768,
    DhGroup.MODP_1024: _MODP_1024,
    DhGroup.MODP_1536: _MODP_1536,
    DhGroup.MODP_2048: _MODP_2048,
    DhGroup.MODP_3072: _MODP_3072,
    DhGroup.MODP_4096: _MODP_4096,
    DhGroup.MODP_6144: _MODP_6144,
    DhGroup.MODP_8192: _MODP_8192,
}


class PrivateKey:
    """This side's key pair for one exchange: ``public_bytes()`` for KEi/KEr, ``exchange()`` for g^ir."""

    __slots__ = ("group",)

    def __init__(self, group: Group) -> None:
        self.group = group

    def __repr__(self) -> str:
        return f"<PrivateKey of {self.group.name} (not shown)>"

    def public_bytes(self) -> bytes:
        """The Key Exchange Data of our KE payload."""
        raise NotImplementedError

    def exchange(self, peer: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data; raises InvalidPublicValueError if it is bad."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Group:
    """A key exchange method (Transform Type 4): its id, name and public value length."""

    id: DhGroup
    name: str
    public_length: int  # octets of Key Exchange Data
    legacy: bool = False

    def generate(self) -> PrivateKey:
        """A fresh private key."""
        raise NotImplementedError

    def load_private(self, value: bytes) -> PrivateKey:
        """A private key with a given value (for known-answer tests only)."""
        raise NotImplementedError

    def invalid_value(self, reason: str) -> InvalidPublicValueError:
        """The error for a peer public value of this group that fails a check."""
        return InvalidPublicValueError(self.id, reason)

    def check_length(self, peer: bytes) -> None:
        """The KE data must be exactly ``public_length`` octets (RFC 5903 §7, RFC 6989)."""
        if len(peer) != self.public_length:
            raise self.invalid_value(f"public value of {len(peer)} octets, expected {self.public_length}")


@dataclass(frozen=True, slots=True)
class ModpGroup(Group):
    """A MODP group with generator 2 and a safe prime ``p``."""

    p: int = 0

    def _parameters(self) -> dh.DHParameters:
        with _ffdh():
            return dh.DHParameterNumbers(self.p, 2).parameters()

    def generate(self) -> PrivateKey:
        with _ffdh():
            return _ModpKey(self, self._parameters().generate_private_key())

    def load_private(self, value: bytes) -> PrivateKey:
        x = int.from_bytes(value, "big")
        with _ffdh():
            numbers = dh.DHParameterNumbers(self.p, 2)
            key = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(pow(2, x, self.p), numbers)).private_key()
        return _ModpKey(self, key)

    def check_public(self, peer: bytes) -> int:
        """y from the KE data, after the RFC 6989 §2.1 checks: exact length and 1 < y < p-1."""
        self.check_length(peer)
        y = int.from_bytes(peer, "big")
        if not 1 < y < self.p - 1:
            raise self.invalid_value("public value outside 1 < y < p-1")
        return y


class _ModpKey(PrivateKey):
    __slots__ = ("_group", "_key")

    def __init__(self, group: ModpGroup, key: dh.DHPrivateKey) -> None:
        super().__init__(group)
        self._group = group
        self._key = key

    def public_bytes(self) -> bytes:
        y = self._key.public_key().public_numbers().y
        return y.to_bytes(self.group.public_length, "big")

    def exchange(self, peer: bytes) -> bytes:
        group = self._group
        y = group.check_public(peer)
        with _ffdh():
            peer_key = dh.DHPublicNumbers(y, dh.DHParameterNumbers(group.p, 2)).public_key()
            try:
                shared = self._key.exchange(peer_key)
            except ValueError as exc:  # OpenSSL's own checks
                raise group.invalid_value("rejected by the DH implementation") from exc
        return shared.rjust(group.public_length, b"\x00")  # §2.14: padded to the modulus length


@dataclass(frozen=True, slots=True)
class EcpGroup(Group):
    """A random ECP group (RFC 5903): KE data is x | y."""

    curve: type[ec.EllipticCurve] = ec.SECP256R1

    def generate(self) -> PrivateKey:
        return _EcpKey(self, ec.generate_private_key(self.curve()))

    def load_private(self, value: bytes) -> PrivateKey:
        return _EcpKey(self, ec.derive_private_key(int.from_bytes(value, "big"), self.curve()))

    def load_public(self, peer: bytes) -> ec.EllipticCurvePublicKey:
        """The peer's point, after the length and on-curve checks (RFC 5903 §7, RFC 6989 §2.3)."""
        self.check_length(peer)
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(self.curve(), b"\x04" + peer)
        except ValueError as exc:
            raise self.invalid_value("not a point on the curve") from exc


class _EcpKey(PrivateKey):
    __slots__ = ("_group", "_key")

    def __init__(self, group: EcpGroup, key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(group)
        self._group = group
        self._key = key

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]

    def exchange(self, peer: bytes) -> bytes:
        group = self._group
        try:
            return self._key.exchange(ec.ECDH(), group.load_public(peer))  # the x coordinate
        except ValueError as exc:
            raise group.invalid_value("ECDH failed") from exc


@dataclass(frozen=True, slots=True)
class MontgomeryGroup(Group):
    """Curve25519 or Curve448 (RFC 8031)."""

    def generate(self) -> PrivateKey:
        if self.id == DhGroup.CURVE25519:
            return _MontgomeryKey(self, x25519.X25519PrivateKey.generate())
        return _MontgomeryKey(self, x448.X448PrivateKey.generate())

    def load_private(self, value: bytes) -> PrivateKey:
        if self.id == DhGroup.CURVE25519:
            return _MontgomeryKey(self, x25519.X25519PrivateKey.from_private_bytes(value))
        return _MontgomeryKey(self, x448.X448PrivateKey.from_private_bytes(value))


class _MontgomeryKey(PrivateKey):
    __slots__ = ("_group", "_key")

    def __init__(self, group: MontgomeryGroup, key: x25519.X25519PrivateKey | x448.X448PrivateKey) -> None:
        super().__init__(group)
        self._group = group
        self._key = key

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def exchange(self, peer: bytes) -> bytes:
        group = self._group
        group.check_length(peer)
        try:
            if isinstance(self._key, x25519.X25519PrivateKey):
                shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            else:
                shared = self._key.exchange(x448.X448PublicKey.from_public_bytes(peer))
        except ValueError as exc:  # OpenSSL refuses an all-zero result itself
            raise group.invalid_value("low-order point: all-zero shared secret") from exc
        if not any(shared):  # RFC 8031 §2.3, in case the library did not refuse it
            raise group.invalid_value("low-order point: all-zero shared secret")
        return shared


def _modp(group_id: DhGroup, legacy: bool = False) -> ModpGroup:
    p = _MODP_PRIMES[group_id]
    return ModpGroup(group_id, group_id.name.lower(), (p.bit_length() + 7) // 8, legacy, p)


GROUPS: dict[DhGroup, Group] = {g.id: g for g in (
    _modp(DhGroup.MODP_768, legacy=True),
    _modp(DhGroup.MODP_1024, legacy=True),
    _modp(DhGroup.MODP_1536, legacy=True),
    _modp(DhGroup.MODP_2048),
    _modp(DhGroup.MODP_3072),
    _modp(DhGroup.MODP_4096),
    _modp(DhGroup.MODP_6144),
    _modp(DhGroup.MODP_8192),
    EcpGroup(DhGroup.ECP_256, "ecp_256", 64, curve=ec.SECP256R1),
    EcpGroup(DhGroup.ECP_384, "ecp_384", 96, curve=ec.SECP384R1),
    EcpGroup(DhGroup.ECP_521, "ecp_521", 132, curve=ec.SECP521R1),
    MontgomeryGroup(DhGroup.CURVE25519, "curve25519", 32),
    MontgomeryGroup(DhGroup.CURVE448, "curve448", 56),
)}


def group(group_id: DhGroup | int, *, allow_legacy: bool = False) -> Group:
    """The key exchange group with IANA id ``group_id``; raises IkeLocalError if unusable."""
    found = GROUPS.get(DhGroup(group_id))
    if found is None:
        raise IkeLocalError(f"key exchange group {int(group_id)} is not implemented")
    if found.legacy:
        if not allow_legacy:
            raise IkeLocalError(
                f"group {int(group_id)} ({found.name}) is legacy; it needs the legacy switch (--allow-legacy)")
        log.warning("legacy key exchange group %s in use: it is weak, migrate this peer", found.name)
    return found
