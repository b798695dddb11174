"""Certificate authentication for IKEv2, sans-I/O (RFC 7296 §2.15, §3.5-§3.8, RFC 7427, RFC 4754, RFC 8420).

Theory of operation
-------------------
In IKE_AUTH each side proves it holds the private key of a certificate by
signing its SignedOctets (:func:`ipsecd.ike.crypto.signed_octets`, RFC 7296
§2.15).  What a state machine does with this module, per side::

    key = load_private_key("/etc/ipsecd/private/moon.key")     # mode 0600 or refused
    chain = load_certificates("/etc/ipsecd/certs/moon.pem")     # end entity first
    trust = load_certificates("/etc/ipsecd/cacerts/ca.pem")

    # IKE_SA_INIT: Notify.signature_hash_algorithms(SUPPORTED_HASHES) and certreq(trust)
    # IKE_AUTH, sending:   IDx from identity_from_certificate(chain[0]) or parse_identity(config),
    #                      *cert_payloads(chain), sign(key, octets, peer_hashes=<peer's notify>)
    # IKE_AUTH, receiving: certs = certificates_from_payloads(CERT payloads)
    #                      validate_chain(certs[0], certs[1:], trust)
    #                      identity_matches(IDx, certs[0])  and the IDx the configuration expects
    #                      verify(AUTH, octets, certs[0])
    # every failure is an AuthError -> AUTHENTICATION_FAILED (RFC 7296 §2.21.2)

Signatures (:func:`sign`, :func:`verify`).  We sign with the Digital
Signature method of RFC 7427 (AuthMethod 14): the AUTH data is a one-octet
length, the DER AlgorithmIdentifier of the signature scheme, and the
signature.  The hash is one the peer announced in SIGNATURE_HASH_ALGORITHMS
(RFC 7427 §4); RSA signs PKCS#1 v1.5, ECDSA with the hash that fits its curve
(DER signature value), Ed25519 as RFC 8420 says (the hash is "IDENTITY").
We verify method 14 for RSA (PKCS#1 v1.5 and RSASSA-PSS with explicit
parameters), ECDSA and EdDSA; the legacy RSA method 1 (PKCS#1 v1.5 over
SHA-1, RFC 7296 §3.8); and the RFC 4754 ECDSA methods 9-11, whose signature
is r | s in fixed-size halves, not DER.  SHA-1 inside method 14 is refused
(RFC 8247 §4.2: SHA1 MUST NOT).  The AlgorithmIdentifiers are fixed byte
strings (RFC 7427 Appendix A) and a minimal DER reader below parses the ones
we receive; there is no ASN.1 dependency.

Chains (:func:`validate_chain`) use cryptography's RFC 5280 path builder
(``cryptography.x509.verification``) with its Web PKI extension policies
relaxed where IKE certificates differ from TLS ones; see the comments at
:func:`_extension_policies`.  What remains enforced: signatures, validity
dates of every certificate, basicConstraints cA on every issuer, path length
and name constraints, unknown critical extensions, a depth limit, RSA keys of
at least 2048 bits (the library's rule for issuers, ours for the end entity).  Known limit of the library: it refuses certificates
*signed by* an EdDSA key (an Ed25519 end entity under an RSA or ECDSA CA is
fine); the error says so.

Identities (:func:`parse_identity`, :func:`describe_identity`) use
strongSwan's notation, so a configuration can be copied: an address, a
``user@domain``, a DN such as ``C=CH, O=strongSwan, CN=moon`` (first RDN
first, as written - not RFC 4514's reversed order), ``@fqdn``, a bare host
name, or a ``fqdn:``, ``email:``, ``keyid:``... prefix.  A DN is encoded as
strongSwan encodes it (PrintableString where the value allows, else
UTF8String; emailAddress and DC as IA5String), so it is byte-equal to the
subject of a certificate made by strongSwan's ``pki`` or OpenSSL with
``string_mask = default``; certificates from other tools use other string
types, so DNs are compared as names (RFC 5280 §7.1: same attributes in the
same order, values equal ignoring case and redundant spaces), never only as
bytes.

Nothing here logs, and no error message contains key material.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ipsecd.ike.constants import AuthMethod, CertEncoding, IdType, SignatureHashAlgorithm
from ipsecd.ike.messages import AUTH, CERT, CERTREQ, Identification

__all__ = [
    "SUPPORTED_HASHES",
    "AuthError",
    "PrivateKey",
    "cert_payloads",
    "certificates_from_payloads",
    "certreq",
    "describe_identity",
    "identities_equal",
    "identity_from_certificate",
    "identity_matches",
    "load_certificates",
    "load_private_key",
    "not_after",
    "parse_identity",
    "sign",
    "spki_sha1",
    "validate_chain",
    "verify",
]

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class AuthError(Exception):
    """Authentication cannot go on: ``str()`` says what failed, for logs.

    Raised for unusable key or certificate files, identities that cannot be
    parsed, signatures that do not verify and chains that do not validate.
    The message never contains key material.
    """


# --------------------------------------------------------------------------- minimal DER


class _DerError(ValueError):
    """Malformed DER (X.690 §10)."""


class _Tlv(NamedTuple):
    tag: int
    content: bytes
    encoding: bytes  # the whole element, tag and length included


_SEQUENCE = 0x30
_SET = 0x31
_OID = 0x06
_NULL = 0x05
_INTEGER = 0x02
_BIT_STRING = 0x03
_UTF8_STRING = 0x0C
_PRINTABLE_STRING = 0x13
_IA5_STRING = 0x16


def _der_elements(data: bytes) -> list[_Tlv]:
    """The DER elements that make up ``data`` exactly (definite, minimal lengths only)."""
    out: list[_Tlv] = []
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise _DerError("multi-octet tag")
        if pos + 2 > end:
            raise _DerError("truncated length")
        first = data[pos + 1]
        header = 2
        if first == 0x80:
            raise _DerError("indefinite length")
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count > 4 or pos + 2 + count > end:
                raise _DerError("length field too long")
            length = int.from_bytes(data[pos + 2:pos + 2 + count], "big")
            if length < 0x80 or data[pos + 2] == 0:
                raise _DerError("length not in minimal form")
            header += count
        stop = pos + header + length
        if stop > end:
            raise _DerError("element runs past its container")
        out.append(_Tlv(tag, data[pos + header:stop], data[pos:stop]))
        pos = stop
    return out


def _der_one(data: bytes, tag: int) -> _Tlv:
    """``data`` is exactly one element with tag ``tag``."""
    elements = _der_elements(data)
    if len(elements) != 1 or elements[0].tag != tag:
        raise _DerError(f"expected one element with tag 0x{tag:02x}")
    return elements[0]


def _der(tag: int, content: bytes) -> bytes:
    """Encode one element (X.690 §8.1: definite length, minimal form)."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _oid_decode(content: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's contents (X.690 §8.19)."""
    if not content or content[-1] & 0x80:
        raise _DerError("truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in content:
        if start and octet == 0x80:
            raise _DerError("OBJECT IDENTIFIER arc not in minimal form")
        value = value << 7 | (octet & 0x7F)
        start = not octet & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [first // 40, first % 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def _oid_encode(dotted: str) -> bytes:
    """OBJECT IDENTIFIER contents for a dotted OID (X.690 §8.19)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise AuthError(f"{dotted} is not a valid object identifier")
    out = bytearray()
    for value in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        group = [value & 0x7F]
        value >>= 7
        while value:
            group.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(group))
    return bytes(out)


def _tbs_field(cert: x509.Certificate, index: int) -> bytes:
    """Element ``index`` of tbsCertificate after the version (RFC 5280 §4.1): 1 issuer, 3 subject, 4 SPKI.

    Read with our DER reader rather than through ``cert.subject``: cryptography
    refuses some string types that real certificates use (T61String, as
    OpenSSL writes non-ASCII values with ``string_mask = default``).
    """
    try:
        tbs = _der_elements(_der_one(cert.tbs_certificate_bytes, _SEQUENCE).content)
        first = 1 if tbs and tbs[0].tag == 0xA0 else 0  # [0] EXPLICIT version, absent for v1
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        return tbs[first + 1 + index].encoding
    except (_DerError, IndexError):
        raise AuthError("malformed tbsCertificate") from None


def _spki(cert: x509.Certificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo exactly as encoded in it (RFC 5280 §4.1)."""
    return _tbs_field(cert, 4)


def _subject(cert: x509.Certificate) -> bytes:
    """The DER of the certificate's subject Name (RFC 5280 §4.1.2.6)."""
    return _tbs_field(cert, 3)


def _issuer(cert: x509.Certificate) -> bytes:
    """The DER of the certificate's issuer Name (RFC 5280 §4.1.2.4)."""
    return _tbs_field(cert, 1)


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of a CA's SubjectPublicKeyInfo: its entry in a CERTREQ (RFC 7296 §3.7)."""
    return hashlib.sha1(_spki(cert)).digest()


# --------------------------------------------------------------------------- files


def _read_file(path: str | Path, *, private: bool) -> bytearray:
    """The contents of a regular file; with ``private``, refused unless chmod 600 or stricter.

    The mode is checked on the opened file, so a file swapped between the
    check and the read cannot slip through.  The contents go straight into
    one ``bytearray`` that the caller can wipe.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise AuthError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuthError(f"{name}: not a regular file")
        if private and st.st_mode & 0o077:
            raise AuthError(
                f"{name}: private key file has mode {stat.S_IMODE(st.st_mode):04o}; it must give "
                "no permission to group or others (chmod 600)")
        data = bytearray(st.st_size + 1)  # one more octet shows a file that grew meanwhile
        view = memoryview(data)
        filled = 0
        while filled < len(data):
            n = os.readv(fd, [view[filled:]])
            if n == 0:
                break
            filled += n
        view.release()
        if filled == len(data):
            data[:] = bytes(len(data))
            raise AuthError(f"{name}: file changed while being read")
        del data[filled:]
        return data
    except OSError as exc:
        raise AuthError(f"{name}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """The certificates in a PEM file (one or more, other PEM blocks ignored) or a DER file."""
    name = os.fspath(path)
    data = bytes(_read_file(name, private=False))
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise AuthError(f"{name}: no X.509 certificate could be read (PEM or DER)") from None


_SIGNING_CURVES: Final[dict[str, SignatureHashAlgorithm]] = {
    # RFC 7427 §3 leaves the hash open; this is the pairing of RFC 4754 §3 and RFC 5480 §4.
    "secp256r1": SignatureHashAlgorithm.SHA2_256,
    "secp384r1": SignatureHashAlgorithm.SHA2_384,
    "secp521r1": SignatureHashAlgorithm.SHA2_512,
}


def load_private_key(path: str | Path) -> PrivateKey:
    """An RSA, ECDSA (P-256/384/521) or Ed25519 private key from a PEM or DER file.

    The file must have mode 0600 or stricter.  Encrypted keys are not
    supported (the daemon has nobody to ask for a pass phrase).  The file's
    contents are wiped from our buffer once parsed.
    """
    name = os.fspath(path)
    data = _read_file(name, private=True)
    try:
        try:
            if b"-----BEGIN" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_der_private_key(data, password=None)
        except TypeError:
            raise AuthError(f"{name}: the private key is encrypted; store it unencrypted with mode 0600") from None
        except (ValueError, UnsupportedAlgorithm):
            raise AuthError(f"{name}: not a private key we can read (PEM or DER: PKCS#8, PKCS#1, SEC 1)") from None
    finally:
        data[:] = bytes(len(data))
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _SIGNING_CURVES:
            raise AuthError(f"{name}: ECDSA curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return key
    raise AuthError(f"{name}: {type(key).__name__} keys are not supported (RSA, ECDSA, Ed25519)")


# --------------------------------------------------------------------------- identities

_PRINTABLE_RE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")  # X.680 §41.4 PrintableString characters

# DN attribute keywords as strongSwan spells them (first name is the one printed), the OID, and
# whether the value is IA5String (else PrintableString when possible, UTF8String otherwise).
# Note strongSwan's "SN" is serialNumber, not OpenSSL's surname; "S" is surname.
_DN_ATTRIBUTES: Final[tuple[tuple[tuple[str, ...], str, bool], ...]] = (
    (("C", "countryName"), "2.5.4.6", False),
    (("ST", "stateOrProvinceName"), "2.5.4.8", False),
    (("L", "localityName"), "2.5.4.7", False),
    (("O", "organizationName"), "2.5.4.10", False),
    (("OU", "organizationalUnitName"), "2.5.4.11", False),
    (("CN", "commonName"), "2.5.4.3", False),
    (("SN", "serialNumber"), "2.5.4.5", False),
    (("S", "surname"), "2.5.4.4", False),
    (("G", "GN", "givenName"), "2.5.4.42", False),
    (("I", "initials"), "2.5.4.43", False),
    (("T", "title"), "2.5.4.12", False),
    (("D", "description"), "2.5.4.13", False),
    (("N", "name"), "2.5.4.41", False),
    (("street", "streetAddress"), "2.5.4.9", False),
    (("postalCode",), "2.5.4.17", False),
    (("pseudonym",), "2.5.4.65", False),
    (("dnQualifier",), "2.5.4.46", False),
    (("DC", "domainComponent"), "0.9.2342.19200300.100.1.25", True),  # RFC 4519 §2.4: IA5String
    (("UID", "userId"), "0.9.2342.19200300.100.1.1", False),
    (("E", "Email", "emailAddress"), "1.2.840.113549.1.9.1", True),  # PKCS #9: IA5String
    (("UN", "unstructuredName"), "1.2.840.113549.1.9.2", True),
    (("EN", "employeeNumber"), "2.16.840.1.113730.3.1.3", False),
)
_DN_KEYWORDS: Final[dict[str, tuple[str, bool]]] = {
    name.lower(): (oid, ia5) for names, oid, ia5 in _DN_ATTRIBUTES for name in names}
_DN_NAMES: Final[dict[str, str]] = {oid: names[0] for names, oid, _ in _DN_ATTRIBUTES}
_DOTTED_OID_RE = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")

# String types we can show as text, with their codecs (X.690 §8.23).
_STRING_CODECS: Final[dict[int, str]] = {
    _UTF8_STRING: "utf-8", 0x12: "ascii", _PRINTABLE_STRING: "ascii", 0x14: "latin-1",
    _IA5_STRING: "ascii", 0x1A: "ascii", 0x1C: "utf-32-be", 0x1E: "utf-16-be",
}

_PREFIXES: Final[dict[str, IdType]] = {
    "ipv4:": IdType.ID_IPV4_ADDR, "ipv6:": IdType.ID_IPV6_ADDR,
    "fqdn:": IdType.ID_FQDN, "dns:": IdType.ID_FQDN,
    "email:": IdType.ID_RFC822_ADDR, "rfc822:": IdType.ID_RFC822_ADDR, "userfqdn:": IdType.ID_RFC822_ADDR,
    "asn1dn:": IdType.ID_DER_ASN1_DN, "keyid:": IdType.ID_KEY_ID,
}


def _ascii_name(text: str, what: str, original: str) -> bytes:
    """An FQDN or e-mail address: printable ASCII without blanks (RFC 7296 §3.5: no terminators)."""
    if not text or not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise AuthError(f"identity {original!r}: {what} must be printable ASCII without blanks "
                        "(use the IDNA form of international names)")
    return text.encode("ascii")


def _strip_unescaped(text: str) -> str:
    """``text`` without surrounding blanks, except a final one escaped by a backslash."""
    text = text.lstrip()
    stripped = text.rstrip()
    backslashes = len(stripped) - len(stripped.rstrip("\\"))
    if backslashes % 2 and len(stripped) < len(text):
        return stripped + text[len(stripped)]
    return stripped


def parse_identity(text: str) -> Identification:
    """An identity in strongSwan's notation as an Identification (RFC 7296 §3.5).

    ``192.0.2.1`` / ``2001:db8::1`` -> ID_IPV4_ADDR / ID_IPV6_ADDR;
    anything with ``=`` -> ID_DER_ASN1_DN (``C=CH, O=strongSwan, CN=moon``,
    first RDN first; ``/C=CH/O=strongSwan/CN=moon`` also works);
    ``user@example.org`` -> ID_RFC822_ADDR; ``@example.org`` or a bare name
    -> ID_FQDN; ``keyid:0a0b...`` (or ``keyid:#0a0b...``, ``@#0a0b...``) ->
    ID_KEY_ID.  The prefixes ``ipv4:``, ``ipv6:``, ``fqdn:``, ``dns:``,
    ``email:``, ``rfc822:``, ``userfqdn:``, ``asn1dn:`` and ``keyid:`` force a
    type.  In DN values ``\\`` escapes the next character (``O=Acme\\, Inc.``),
    a value may be double-quoted, and ``#`` followed by hex is the DER of a
    non-string value.  Raises :class:`AuthError` for anything else.
    """
    original = text
    text = _strip_unescaped(text)
    if not text:
        raise AuthError("empty identity")
    forced: IdType | None = None
    for prefix, id_type in _PREFIXES.items():
        if text.lower().startswith(prefix):
            forced, text = id_type, text[len(prefix):]
            break
    if forced is None and text.startswith("@#"):
        forced, text = IdType.ID_KEY_ID, text[2:]
    elif forced is None and text.startswith("@@"):
        forced, text = IdType.ID_RFC822_ADDR, text[2:]
    elif forced is None and text.startswith("@"):
        forced, text = IdType.ID_FQDN, text[1:]

    if forced in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR, None):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if forced is not None:
                raise AuthError(f"identity {original!r}: not an IP address") from None
        else:
            if forced is not None and (address.version == 4) != (forced == IdType.ID_IPV4_ADDR):
                raise AuthError(f"identity {original!r}: not an IPv{4 if forced == IdType.ID_IPV4_ADDR else 6} address")
            return Identification.from_address(address)
    if forced == IdType.ID_KEY_ID:
        hex_text = text[1:] if text.startswith("#") else text
        try:
            data = bytes.fromhex(hex_text)
        except ValueError:
            raise AuthError(f"identity {original!r}: key ID must be hexadecimal") from None
        if not data:
            raise AuthError(f"identity {original!r}: empty key ID")
        return Identification(IdType.ID_KEY_ID, data)
    if forced == IdType.ID_DER_ASN1_DN and text.startswith("#"):  # the DER itself, in hex
        der = _hex_der(text[1:])
        if der is None or der[0] != _SEQUENCE:
            raise AuthError(f"identity {original!r}: '#' must be followed by the hex of a DER Name")
        return Identification(IdType.ID_DER_ASN1_DN, der)
    if forced == IdType.ID_DER_ASN1_DN or (forced is None and "=" in text):
        return Identification(IdType.ID_DER_ASN1_DN, _parse_dn(text, original))
    if forced == IdType.ID_RFC822_ADDR or (forced is None and "@" in text):
        local, _, domain = text.rpartition("@")
        if not local or not domain:
            raise AuthError(f"identity {original!r}: an e-mail address needs a local part and a domain")
        return Identification(IdType.ID_RFC822_ADDR, _ascii_name(text, "an e-mail address", original))
    return Identification(IdType.ID_FQDN, _ascii_name(text, "a host name", original))


def _split_dn(text: str, original: str) -> list[tuple[str, str, bool]]:
    """(keyword, value, value-is-#hex) for each ``key=value`` of a DN string."""
    separator = ","
    if text.startswith("/"):  # strongSwan: a leading slash selects "/" as the separator
        separator, text = "/", text[1:]
    pairs: list[tuple[str, str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        equals = text.find("=", i)
        if equals < 0:
            raise AuthError(f"DN {original!r}: {text[i:].strip()!r} has no '='")
        key = text[i:equals].strip()
        if not key:
            raise AuthError(f"DN {original!r}: attribute without a name")
        i = equals + 1
        while i < n and text[i] == " ":
            i += 1
        value: list[str] = []
        raw_hex = i < n and text[i] == "#"
        if i < n and text[i] == '"':
            i += 1
            while True:
                if i >= n:
                    raise AuthError(f"DN {original!r}: unterminated quoted value")
                if text[i] == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif text[i] == '"':
                    i += 1
                    break
                else:
                    value.append(text[i])
                    i += 1
            while i < n and text[i] == " ":
                i += 1
            if i < n and text[i] != separator:
                raise AuthError(f"DN {original!r}: text after the quoted value of {key}")
        else:
            trailing = 0  # unescaped blanks at the end are not part of the value
            while i < n and text[i] != separator:
                if text[i] == "\\":
                    if i + 1 >= n:
                        raise AuthError(f"DN {original!r}: '\\' at the end")
                    value.append(text[i + 1])
                    i += 2
                    trailing = 0
                    continue
                value.append(text[i])
                trailing = trailing + 1 if text[i] == " " else 0
                i += 1
            if trailing:
                del value[-trailing:]
        i += 1  # the separator
        pairs.append((key, "".join(value), raw_hex))
    if not pairs:
        raise AuthError(f"DN {original!r}: no attributes")
    return pairs


def _dn_value(text: str, ia5: bool) -> bytes:
    """The DER of an attribute value given as text, typed as strongSwan types it."""
    if ia5 and text.isascii():
        return _der(_IA5_STRING, text.encode("ascii"))
    if not ia5 and _PRINTABLE_RE.fullmatch(text):
        return _der(_PRINTABLE_STRING, text.encode("ascii"))
    return _der(_UTF8_STRING, text.encode("utf-8"))


def _hex_der(text: str) -> bytes | None:
    """The octets of ``text`` (hex) if they are exactly one DER element, else None."""
    try:
        data = bytes.fromhex(text)
        return data if len(_der_elements(data)) == 1 else None
    except (ValueError, _DerError):
        return None


def _parse_dn(text: str, original: str) -> bytes:
    """DER Name (RFC 5280 §4.1.2.4) of a DN string, one RDN per attribute, in written order."""
    rdns = []
    for key, value, raw_hex in _split_dn(text, original):
        spec = _DN_KEYWORDS.get(key.lower())
        if spec is not None:
            oid, ia5 = spec
        elif _DOTTED_OID_RE.fullmatch(key):
            oid, ia5 = key, False
        else:
            raise AuthError(f"DN {original!r}: unknown attribute {key!r}")
        encoded: bytes | None = None
        if raw_hex:
            encoded = _hex_der(value[1:])
            if encoded is None:
                raise AuthError(f"DN {original!r}: {key}={value}: '#' must be followed by the hex "
                                "of one DER value (write '\\#' for a literal '#')")
        if encoded is None:
            encoded = _dn_value(value, ia5)
        rdns.append(_der(_SET, _der(_SEQUENCE, _der(_OID, _oid_encode(oid)) + encoded)))
    return _der(_SEQUENCE, b"".join(rdns))


class _Attribute(NamedTuple):
    oid: str
    value: _Tlv


def _dn_rdns(der: bytes) -> list[list[_Attribute]]:
    """The RDNs of a DER Name, each a list of (type, value) (RFC 5280 §4.1.2.4)."""
    rdns: list[list[_Attribute]] = []
    for rdn in _der_elements(_der_one(der, _SEQUENCE).content):
        if rdn.tag != _SET:
            raise _DerError("RDN is not a SET")
        attributes = []
        for attribute in _der_elements(rdn.content):
            if attribute.tag != _SEQUENCE:
                raise _DerError("AttributeTypeAndValue is not a SEQUENCE")
            parts = _der_elements(attribute.content)
            if len(parts) != 2 or parts[0].tag != _OID:
                raise _DerError("AttributeTypeAndValue needs a type and a value")
            attributes.append(_Attribute(_oid_decode(parts[0].content), parts[1]))
        if not attributes:
            raise _DerError("empty RDN")
        rdns.append(attributes)
    return rdns


def _value_text(value: _Tlv) -> str | None:
    """A string value as text, or None for other types (and for text that does not decode)."""
    codec = _STRING_CODECS.get(value.tag)
    if codec is None:
        return None
    try:
        return value.content.decode(codec)
    except UnicodeDecodeError:
        return None


def _escape_dn_value(text: str) -> str:
    """Backslash-escape what :func:`_split_dn` would otherwise read as syntax or drop."""
    last = len(text) - 1
    return "".join(
        "\\" + c if c in ',\\"' or (i == 0 and c in " #") or (i == last and c == " ") else c
        for i, c in enumerate(text))


def _describe_dn(der: bytes) -> str:
    """``C=CH, O=strongSwan, CN=moon`` (first RDN first, strongSwan's notation)."""
    try:
        rdns = _dn_rdns(der)
    except _DerError:
        return f"(invalid ID_DER_ASN1_DN) {der.hex()}"
    parts = []
    for rdn in rdns:
        shown = []
        for attribute in rdn:
            key = _DN_NAMES.get(attribute.oid, attribute.oid)
            text = _value_text(attribute.value)
            if text is None or not text.isprintable():
                shown.append(f"{key}=#{attribute.value.encoding.hex()}")
            else:
                shown.append(f"{key}={_escape_dn_value(text)}")
        parts.append("+".join(shown))
    return ", ".join(parts)


def _normalized_dn(der: bytes) -> list[list[tuple[str, str | bytes]]] | None:
    """A DN for comparison: string values case-folded with runs of blanks collapsed (RFC 4518 §2).

    The string type does not matter (RFC 5280 §7.1); values of other types
    compare by their encoding.  Attributes of a multi-valued RDN are
    unordered (X.501).  None if the DER is malformed.
    """
    try:
        rdns = _dn_rdns(der)
    except _DerError:
        return None
    out: list[list[tuple[str, str | bytes]]] = []
    for rdn in rdns:
        values: list[tuple[str, str | bytes]] = []
        for attribute in rdn:
            text = _value_text(attribute.value)
            values.append((attribute.oid, " ".join(text.casefold().split()) if text is not None
                           else attribute.value.encoding))
        out.append(sorted(values, key=repr))
    return out


def _dn_equal(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    left, right = _normalized_dn(a), _normalized_dn(b)
    return left is not None and left == right


def _shown(data: bytes) -> str:
    """Peer-supplied octets as text that is safe in a log line."""
    text = data.decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def describe_identity(ident: Identification) -> str:
    """The identity in :func:`parse_identity`'s notation, for logs and status.

    ``parse_identity(describe_identity(x))`` gives ``x`` back for every
    identity :func:`parse_identity` can produce (a prefix is added where the
    bare form would be read as another type).  DNs of certificates come back
    equal as names (:func:`identities_equal`), not always byte-equal, since the
    string types of the values are not shown.  Malformed identities from a
    peer are shown in hex.
    """
    return _describe(ident.id_type, bytes(ident.data))


_PLAIN_HOST = re.compile(rb"[A-Za-z0-9.-]+")
_NOT_IPV4 = re.compile(rb"[A-Za-z-]")


@functools.lru_cache(maxsize=1024)
def _describe(id_type: IdType, data: bytes) -> str:
    """:func:`describe_identity`, remembered: every IKE SA setup asks it for the peer's
    identity (the PSK lookup, the logs), and an FQDN's round trip through
    :func:`parse_identity` costs more than the rest of that lookup."""
    if (id_type, len(data)) in ((IdType.ID_IPV4_ADDR, 4), (IdType.ID_IPV6_ADDR, 16)):
        return str(ipaddress.ip_address(data))
    if id_type == IdType.ID_DER_ASN1_DN:
        text = _describe_dn(data)
        return text if "=" in text and not text.startswith("(") else f"asn1dn:#{data.hex()}"
    if id_type == IdType.ID_KEY_ID:
        return f"keyid:{data.hex()}"
    if id_type == IdType.ID_FQDN and _PLAIN_HOST.fullmatch(data) and _NOT_IPV4.search(data):
        # A plain host name (letters, digits, dots, hyphens; a letter or hyphen, so not an
        # IPv4 address): parse_identity reads it back as this FQDN - the round trip below,
        # which every peer's first IKE_AUTH would otherwise pay, says so.
        return data.decode("ascii")
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return _describe_name(id_type, data)
    return f"{id_type.name}:{data.hex()}"


def _describe_name(id_type: IdType, data: bytes) -> str:
    """An FQDN or e-mail address as text, prefixed where parse_identity would read the bare
    text as something else."""
    text = _shown(data)
    try:
        same = parse_identity(text)
    except AuthError:
        same = None
    if same is not None and same.id_type == id_type and same.data == data:
        return text
    return ("fqdn:" if id_type == IdType.ID_FQDN else "email:") + text


def identity_from_certificate(cert: x509.Certificate) -> Identification:
    """ID_DER_ASN1_DN of the certificate's subject, byte for byte (RFC 4945 §3.1.5)."""
    return Identification(IdType.ID_DER_ASN1_DN, _subject(cert))


def _email_equal(a: str, b: str) -> bool:
    """RFC 5280 §7.5: the local part is case-sensitive, the host part is not."""
    local_a, _, host_a = a.rpartition("@")
    local_b, _, host_b = b.rpartition("@")
    return local_a == local_b and host_a.casefold() == host_b.casefold()


def _fqdn_key(name: str) -> str:
    return name.rstrip(".").casefold()


def identities_equal(a: Identification, b: Identification) -> bool:
    """Whether two identities name the same thing: for comparing a received IDx with configuration.

    Same ID type, and: DNs equal as names (RFC 5280 §7.1), FQDNs equal
    ignoring case and a final dot, e-mail addresses as RFC 5280 §7.5, other
    types byte for byte.
    """
    if a.id_type != b.id_type:
        return False
    if a.id_type == IdType.ID_DER_ASN1_DN:
        return _dn_equal(a.data, b.data)
    if a.id_type == IdType.ID_FQDN:
        return _fqdn_key(_shown(a.data)) == _fqdn_key(_shown(b.data))
    if a.id_type == IdType.ID_RFC822_ADDR:
        return _email_equal(_shown(a.data), _shown(b.data))
    return a.data == b.data


def _subject_alt_names(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def identity_matches(ident: Identification, cert: x509.Certificate) -> bool:
    """Whether the certificate vouches for ``ident`` (RFC 4945 §3.1, RFC 7296 §3.5).

    ID_DER_ASN1_DN: the subject (or a directoryName in subjectAltName), equal
    as names (RFC 5280 §7.1).  ID_IPV4_ADDR / ID_IPV6_ADDR: an iPAddress in
    subjectAltName.  ID_FQDN: a dNSName, ignoring case (no wildcards).
    ID_RFC822_ADDR: an rfc822Name (RFC 5280 §7.5).  ID_KEY_ID: the
    subjectKeyIdentifier or the SHA-1 of the SubjectPublicKeyInfo or of the
    public key (RFC 5280 §4.2.1.2 method 1).  Any other type: False.
    """
    id_type, data = ident.id_type, ident.data
    san = _subject_alt_names(cert)
    if id_type == IdType.ID_DER_ASN1_DN:
        if _dn_equal(data, _subject(cert)):
            return True
        return san is not None and any(
            _dn_equal(data, name.public_bytes()) for name in san.get_values_for_type(x509.DirectoryName))
    if id_type == IdType.ID_KEY_ID:
        return data in _key_ids(cert)
    if san is None:
        return False
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        if len(data) != (4 if id_type == IdType.ID_IPV4_ADDR else 16):
            return False
        address = ipaddress.ip_address(data)
        return any(value == address for value in san.get_values_for_type(x509.IPAddress))
    if id_type == IdType.ID_FQDN:
        name = _fqdn_key(_shown(data))
        return any(_fqdn_key(value) == name for value in san.get_values_for_type(x509.DNSName))
    if id_type == IdType.ID_RFC822_ADDR:
        address_text = _shown(data)
        return any(_email_equal(value, address_text) for value in san.get_values_for_type(x509.RFC822Name))
    return False


def _key_ids(cert: x509.Certificate) -> set[bytes]:
    spki = _spki(cert)
    ids = {hashlib.sha1(spki).digest()}
    try:
        bit_string = _der_elements(_der_one(spki, _SEQUENCE).content)[1]
        ids.add(hashlib.sha1(bit_string.content[1:]).digest())  # skip the unused-bits octet
    except (_DerError, IndexError):
        pass
    try:
        ids.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    except (x509.ExtensionNotFound, ValueError):
        pass
    return ids


# --------------------------------------------------------------------------- signatures

# What we put in our SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4, RFC 8420 §2 for IDENTITY).
SUPPORTED_HASHES: list[SignatureHashAlgorithm] = [
    SignatureHashAlgorithm.SHA2_256,
    SignatureHashAlgorithm.SHA2_384,
    SignatureHashAlgorithm.SHA2_512,
    SignatureHashAlgorithm.IDENTITY,
]

_HASHES: Final[dict[SignatureHashAlgorithm, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]]] = {
    SignatureHashAlgorithm.SHA2_256: hashes.SHA256,
    SignatureHashAlgorithm.SHA2_384: hashes.SHA384,
    SignatureHashAlgorithm.SHA2_512: hashes.SHA512,
}

# AlgorithmIdentifier DER as listed in RFC 7427 Appendix A.
_RSA_ALGIDS: Final[dict[SignatureHashAlgorithm, bytes]] = {
    # PKCS#1 1.5 RSA (RFC 8017 Appendix C), parameters NULL: sha{256,384,512}WithRSAEncryption
    SignatureHashAlgorithm.SHA2_256: bytes.fromhex("300d06092a864886f70d01010b0500"),
    SignatureHashAlgorithm.SHA2_384: bytes.fromhex("300d06092a864886f70d01010c0500"),
    SignatureHashAlgorithm.SHA2_512: bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_ECDSA_ALGIDS: Final[dict[SignatureHashAlgorithm, bytes]] = {
    # ECDSA (RFC 5758 §3.2: parameters absent): ecdsa-with-SHA{256,384,512}
    SignatureHashAlgorithm.SHA2_256: bytes.fromhex("300a06082a8648ce3d040302"),
    SignatureHashAlgorithm.SHA2_384: bytes.fromhex("300a06082a8648ce3d040303"),
    SignatureHashAlgorithm.SHA2_512: bytes.fromhex("300a06082a8648ce3d040304"),
}
_ED25519_ALGID: Final = bytes.fromhex("300506032b6570")  # id-Ed25519, RFC 8420 §2 / RFC 8410 §3

_HASH_OIDS: Final[dict[str, SignatureHashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": SignatureHashAlgorithm.SHA2_256,  # RFC 5754 §2
    "2.16.840.1.101.3.4.2.2": SignatureHashAlgorithm.SHA2_384,
    "2.16.840.1.101.3.4.2.3": SignatureHashAlgorithm.SHA2_512,
    "1.3.14.3.2.26": SignatureHashAlgorithm.SHA1,
}
_RSA_PKCS1_OIDS: Final[dict[str, SignatureHashAlgorithm]] = {
    "1.2.840.113549.1.1.11": SignatureHashAlgorithm.SHA2_256,
    "1.2.840.113549.1.1.12": SignatureHashAlgorithm.SHA2_384,
    "1.2.840.113549.1.1.13": SignatureHashAlgorithm.SHA2_512,
    "1.2.840.113549.1.1.5": SignatureHashAlgorithm.SHA1,
}
_ECDSA_OIDS: Final[dict[str, SignatureHashAlgorithm]] = {
    "1.2.840.10045.4.3.2": SignatureHashAlgorithm.SHA2_256,
    "1.2.840.10045.4.3.3": SignatureHashAlgorithm.SHA2_384,
    "1.2.840.10045.4.3.4": SignatureHashAlgorithm.SHA2_512,
    "1.2.840.10045.4.1": SignatureHashAlgorithm.SHA1,
}
_RSASSA_PSS_OID: Final = "1.2.840.113549.1.1.10"  # RFC 4055 §3.1
_MGF1_OID: Final = "1.2.840.113549.1.1.8"
_ED25519_OID: Final = "1.3.101.112"  # RFC 8410 §3
_ED448_OID: Final = "1.3.101.113"

# RFC 4754 §3 / §7: method -> (curve, hash, octets per coordinate); the signature is r | s.
_RFC4754: Final[dict[AuthMethod, tuple[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512], int]]] = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", hashes.SHA256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", hashes.SHA384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", hashes.SHA512, 66),
}


def _choose_hash(offered: set[int], preferred: SignatureHashAlgorithm) -> SignatureHashAlgorithm:
    """``preferred`` unless the peer announced hashes without it: then the first we share (RFC 7427 §4)."""
    if not offered or preferred in offered:
        return preferred
    for candidate in (SignatureHashAlgorithm.SHA2_256, SignatureHashAlgorithm.SHA2_384,
                      SignatureHashAlgorithm.SHA2_512):
        if candidate in offered:
            return candidate
    names = ", ".join(SignatureHashAlgorithm(h).name for h in sorted(offered))
    raise AuthError(f"the peer's SIGNATURE_HASH_ALGORITHMS ({names}) has none of SHA2_256/384/512")


def sign(key: PrivateKey, octets: bytes, *, peer_hashes: Sequence[SignatureHashAlgorithm]) -> AUTH:
    """The AUTH payload over ``octets`` (RFC 7296 §2.15) with the Digital Signature method (RFC 7427 §3).

    ``peer_hashes`` is the content of the peer's SIGNATURE_HASH_ALGORITHMS
    notify; empty if it sent none, in which case the default hash is used
    anyway (every RFC 7427 implementation has SHA2-256).
    """
    offered = {int(h) for h in peer_hashes}
    if isinstance(key, rsa.RSAPrivateKey):
        chosen = _choose_hash(offered, SignatureHashAlgorithm.SHA2_256)
        algid = _RSA_ALGIDS[chosen]
        signature = key.sign(octets, padding.PKCS1v15(), _HASHES[chosen]())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        preferred = _SIGNING_CURVES.get(key.curve.name)
        if preferred is None:
            raise AuthError(f"cannot sign with ECDSA on {key.curve.name} (P-256, P-384, P-521)")
        chosen = _choose_hash(offered, preferred)
        algid = _ECDSA_ALGIDS[chosen]
        signature = key.sign(octets, ec.ECDSA(_HASHES[chosen]()))  # DER Ecdsa-Sig-Value (RFC 7427 §3)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8420 §2: EdDSA signs the octets themselves, announced as the IDENTITY "hash".
        if offered and SignatureHashAlgorithm.IDENTITY not in offered:
            raise AuthError("the peer's SIGNATURE_HASH_ALGORITHMS lacks IDENTITY, which Ed25519 needs (RFC 8420 §2)")
        algid = _ED25519_ALGID
        signature = key.sign(octets)
    else:
        raise AuthError(f"cannot sign with a {type(key).__name__}")
    return AUTH(AuthMethod.DIGITAL_SIGNATURE, bytes((len(algid),)) + algid + signature)


def _parse_algorithm_identifier(data: bytes) -> tuple[str, _Tlv | None]:
    """(OID, parameters or None) of a DER AlgorithmIdentifier (RFC 5280 §4.1.1.2)."""
    parts = _der_elements(_der_one(data, _SEQUENCE).content)
    if not parts or parts[0].tag != _OID or len(parts) > 2:
        raise _DerError("AlgorithmIdentifier is not SEQUENCE { OID, parameters OPTIONAL }")
    return _oid_decode(parts[0].content), parts[1] if len(parts) == 2 else None


def _hash_algorithm(data: bytes) -> SignatureHashAlgorithm:
    oid, params = _parse_algorithm_identifier(data)
    if params is not None and params.encoding != b"\x05\x00":
        raise _DerError("hash AlgorithmIdentifier with parameters other than NULL")
    if oid not in _HASH_OIDS:
        raise AuthError(f"RSASSA-PSS with unsupported hash {oid}")
    return _HASH_OIDS[oid]


def _pss_parameters(params: _Tlv | None) -> tuple[SignatureHashAlgorithm, SignatureHashAlgorithm, int]:
    """(hash, MGF1 hash, salt length) of RSASSA-PSS-params (RFC 4055 §3.1, RFC 8017 Appendix A.2.3)."""
    if params is None or params.tag != _SEQUENCE:
        raise AuthError("RSASSA-PSS without its parameters SEQUENCE (RFC 7427 §3 needs them)")
    digest, mgf_digest, salt = SignatureHashAlgorithm.SHA1, SignatureHashAlgorithm.SHA1, 20  # the defaults
    last = -1
    for field in _der_elements(params.content):
        number = field.tag - 0xA0
        if not 0 <= number <= 3 or number <= last:
            raise _DerError("RSASSA-PSS-params fields out of order")
        last = number
        inner = _der_elements(field.content)
        if len(inner) != 1:
            raise _DerError("RSASSA-PSS-params field is not one element")
        if number == 0:
            digest = _hash_algorithm(inner[0].encoding)
        elif number == 1:
            oid, mgf_params = _parse_algorithm_identifier(inner[0].encoding)
            if oid != _MGF1_OID or mgf_params is None:
                raise AuthError(f"RSASSA-PSS mask generation function {oid} is not MGF1")
            mgf_digest = _hash_algorithm(mgf_params.encoding)
        else:
            if inner[0].tag != _INTEGER or not inner[0].content:
                raise _DerError("RSASSA-PSS-params INTEGER expected")
            integer = int.from_bytes(inner[0].content, "big", signed=True)
            if number == 2:
                salt = integer
            elif integer != 1:  # trailerField: only trailerFieldBC (1) exists
                raise AuthError(f"RSASSA-PSS trailer field {integer}")
    if SignatureHashAlgorithm.SHA1 in (digest, mgf_digest):
        raise AuthError("RSASSA-PSS with SHA-1 is not accepted (RFC 8247 §4.2)")
    if not 0 <= salt <= 1024:
        raise AuthError(f"RSASSA-PSS salt length {salt}")
    return digest, mgf_digest, salt


def _key_name(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {public_key.curve.name}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _verify_digital_signature(data: bytes, octets: bytes, public_key: object) -> None:
    """RFC 7427 §3: length | AlgorithmIdentifier | signature, checked against the key type."""
    if not data:
        raise AuthError("empty Digital Signature AUTH data")
    length = data[0]
    algid, signature = data[1:1 + length], data[1 + length:]
    if len(algid) != length or not signature:
        raise AuthError("Digital Signature AUTH data shorter than its AlgorithmIdentifier and a signature")
    try:
        oid, params = _parse_algorithm_identifier(algid)
    except _DerError as exc:
        raise AuthError(f"Digital Signature AlgorithmIdentifier: {exc}") from None
    null_or_absent = params is None or params.encoding == b"\x05\x00"
    key = _key_name(public_key)

    def unfit(scheme: str) -> AuthError:
        return AuthError(f"AlgorithmIdentifier {scheme} does not fit the certificate's {key} key")

    if oid in _RSA_PKCS1_OIDS or oid == _RSASSA_PSS_OID:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise unfit("RSA")
        if oid == _RSASSA_PSS_OID:
            try:
                digest, mgf_digest, salt = _pss_parameters(params)
            except _DerError as exc:
                raise AuthError(f"RSASSA-PSS parameters: {exc}") from None
            pss = padding.PSS(mgf=padding.MGF1(_HASHES[mgf_digest]()), salt_length=salt)
            public_key.verify(signature, octets, pss, _HASHES[digest]())
            return
        digest = _RSA_PKCS1_OIDS[oid]
        if digest == SignatureHashAlgorithm.SHA1:
            raise AuthError("sha1WithRSAEncryption: SHA-1 is not accepted in a Digital Signature (RFC 8247 §4.2)")
        if not null_or_absent:
            raise AuthError("PKCS#1 v1.5 AlgorithmIdentifier with parameters other than NULL")
        public_key.verify(signature, octets, padding.PKCS1v15(), _HASHES[digest]())
    elif oid in _ECDSA_OIDS:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise unfit("ECDSA")
        digest = _ECDSA_OIDS[oid]
        if digest == SignatureHashAlgorithm.SHA1:
            raise AuthError("ecdsa-with-SHA1: SHA-1 is not accepted in a Digital Signature (RFC 8247 §4.2)")
        if not null_or_absent:
            raise AuthError("ECDSA AlgorithmIdentifier with parameters")
        public_key.verify(signature, octets, ec.ECDSA(_HASHES[digest]()))  # DER signature value
    elif oid == _ED25519_OID:
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise unfit("Ed25519")
        if not null_or_absent:
            raise AuthError("Ed25519 AlgorithmIdentifier with parameters")
        public_key.verify(signature, octets)
    elif oid == _ED448_OID:
        if not isinstance(public_key, ed448.Ed448PublicKey):
            raise unfit("Ed448")
        if not null_or_absent:
            raise AuthError("Ed448 AlgorithmIdentifier with parameters")
        public_key.verify(signature, octets)
    else:
        raise AuthError(f"unsupported signature algorithm {oid} in a Digital Signature AUTH")


def verify(auth: AUTH, octets: bytes, cert: x509.Certificate) -> None:
    """Check that ``auth`` signs ``octets`` with the key of ``cert``; :class:`AuthError` if not.

    Accepted methods: DIGITAL_SIGNATURE (RFC 7427), RSA_DIGITAL_SIGNATURE
    (PKCS#1 v1.5 with SHA-1, RFC 7296 §3.8) and ECDSA_SHA256_P256 /
    ECDSA_SHA384_P384 / ECDSA_SHA512_P521 (RFC 4754).  The certificate is
    not validated here; see :func:`validate_chain`.
    """
    subject = _describe_dn(_subject(cert))
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AuthError(f"certificate {subject}: unsupported public key") from None
    method = AuthMethod(auth.method)
    data = bytes(auth.data)
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            _verify_digital_signature(data, octets, public_key)
        elif method == AuthMethod.RSA_DIGITAL_SIGNATURE:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise AuthError(f"RSA_DIGITAL_SIGNATURE with the certificate's {_key_name(public_key)} key")
            public_key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
        elif method in _RFC4754:
            curve, digest, size = _RFC4754[method]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve:
                raise AuthError(f"{method.name} with the certificate's {_key_name(public_key)} key (RFC 4754 §3)")
            if len(data) != 2 * size:
                raise AuthError(f"{method.name} signature of {len(data)} octets, not {2 * size} (RFC 4754 §7)")
            r, s = int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
            public_key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(digest()))
        else:
            raise AuthError(f"authentication method {method.name} is not a signature method we accept")
    except (InvalidSignature, ValueError):
        raise AuthError(f"{method.name} signature does not verify with the key of {subject}") from None


# --------------------------------------------------------------------------- chains

_MAX_CHAIN_DEPTH: Final = 8
_MIN_RSA_BITS: Final = 2048  # what cryptography's verifier requires of issuers

# Extended key usages that allow IKE.  RFC 4945 §5.1.3.12 names anyExtendedKeyUsage and
# id-kp-ipsecIKE; we also accept what IPsec gateways carry in practice: serverAuth and
# iKEIntermediate (Windows and macOS clients require them on the gateway), clientAuth, and the
# older id-kp-ipsecEndSystem/Tunnel/User.  A certificate whose EKU lists only other purposes
# (codeSigning, emailProtection, ...) was not issued for IKE and is refused.
_IKE_EKUS: Final = frozenset(x509.ObjectIdentifier(oid) for oid in (
    "2.5.29.37.0",  # anyExtendedKeyUsage (RFC 5280 §4.2.1.12)
    "1.3.6.1.5.5.7.3.17",  # id-kp-ipsecIKE (RFC 4945 §5.1.3.12)
    "1.3.6.1.5.5.7.3.1",  # id-kp-serverAuth
    "1.3.6.1.5.5.7.3.2",  # id-kp-clientAuth
    "1.3.6.1.5.5.8.2.2",  # iKEIntermediate
    "1.3.6.1.5.5.7.3.5", "1.3.6.1.5.5.7.3.6", "1.3.6.1.5.5.7.3.7",  # ipsecEndSystem/Tunnel/User
))


def _check_eku(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    """RFC 4945 §5.1.3.12: no EKU, or one that allows IKE (see ``_IKE_EKUS``)."""
    if eku is not None and not any(usage in _IKE_EKUS for usage in eku):
        names = ", ".join(usage.dotted_string for usage in eku)
        raise ValueError(f"extendedKeyUsage ({names}) does not allow IKE (RFC 4945 §5.1.3.12)")


def _check_ee_key_usage(policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    """RFC 4945 §5.1.3.2: if keyUsage is present it has digitalSignature or nonRepudiation."""
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise ValueError("keyUsage has neither digitalSignature nor nonRepudiation (RFC 4945 §5.1.3.2)")


def _check_ca_key_usage(policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    """RFC 5280 §6.1.4 (n): if a CA's keyUsage is present it has keyCertSign."""
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("CA keyUsage lacks keyCertSign (RFC 5280 §6.1.4)")


def _extension_policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy): the Web PKI defaults minus what IKE certificates lack.

    Relaxed, and why:

    * subjectAltName may be absent on the end entity.  The Web PKI requires
      it because a TLS server is named by DNS name; an IKE peer is often
      named by its subject DN alone (RFC 4945 §3.1.5; ``pki --issue`` without
      ``--san``).  :func:`identity_matches` does the naming.
    * extendedKeyUsage: the client verifier requires clientAuth; IKE
      certificates have no EKU, or serverAuth/iKEIntermediate, or
      ipsecIKE.  Replaced by RFC 4945 §5.1.3.12 (``_check_eku``), for CAs too.
    * keyUsage of the end entity: replaced by the RFC 4945 §5.1.3.2 rule.
    * keyUsage of a CA may be absent (older strongSwan ``pki --self --ca``
      wrote none); if present it must have keyCertSign, as RFC 5280 §6.1.4 (n).
    * authorityKeyIdentifier and subjectKeyIdentifier may be absent: they
      only help to find issuers, and the library also matches by name and
      signature.

    Kept: basicConstraints cA on every issuer and not on the end entity,
    path length and name constraints, unknown critical extensions refused,
    every signature and validity period, RSA keys of at least 2048 bits.
    """
    ca = (ExtensionPolicy.webpki_defaults_ca()
          .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_ca_key_usage)
          .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku)
          .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
          .may_be_present(x509.SubjectKeyIdentifier, Criticality.NON_CRITICAL, None))
    ee = (ExtensionPolicy.webpki_defaults_ee()
          .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
          .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku)
          .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_ee_key_usage)
          .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None))
    return ca, ee


_CA_POLICY, _EE_POLICY = _extension_policies()
_EDDSA_SIGNATURES: Final = frozenset({SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448})


def _chain_failure(exc: VerificationError, cert: x509.Certificate,
                   intermediates: Sequence[x509.Certificate], trust: Sequence[x509.Certificate]) -> str:
    """The library's reason, with what we can tell about the common causes."""
    reason = str(exc)
    issuer = _issuer(cert)
    if not any(_dn_equal(_subject(candidate), issuer) for candidate in [*intermediates, *trust]):
        return (f"issuer {_describe_dn(issuer)} is neither a trusted CA nor "
                f"among the intermediate certificates ({reason})")
    if any(c.signature_algorithm_oid in _EDDSA_SIGNATURES for c in [cert, *intermediates]):
        reason += ("; note: certificates signed with EdDSA keys cannot be validated (cryptography's "
                   "verifier refuses them), use an RSA or ECDSA CA")
    return reason


def validate_chain(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
) -> None:
    """Check that ``cert`` chains to one of ``trust`` through ``intermediates``; :class:`AuthError` if not.

    RFC 5280 §6 path validation by ``cryptography.x509.verification`` with
    the IKE policies of :func:`_extension_policies`.  ``now`` defaults to the
    current time; a naive datetime is taken as UTC.  A certificate that is
    itself in ``trust`` validates (a pinned peer certificate).  Revocation is
    not checked.
    """
    if not trust:
        raise AuthError("no trusted CA certificates configured")
    when = datetime.now(UTC) if now is None else now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    subject = _describe_dn(_subject(cert))
    # The library says only "not valid at validation time"; say which end, for the end entity.
    if when < cert.not_valid_before_utc:
        raise AuthError(f"certificate {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if when > cert.not_valid_after_utc:
        raise AuthError(f"certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    # The library holds issuers' RSA keys to 2048 bits but not the end entity's, which signs AUTH;
    # RFC 8247 §4.1.1 wants 2048 bits there too.
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AuthError(f"certificate {subject}: unsupported public key") from None
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < _MIN_RSA_BITS:
        raise AuthError(f"certificate {subject}: RSA key of {public_key.key_size} bits, "
                        f"at least {_MIN_RSA_BITS} are required (RFC 8247 §4.1.1)")
    try:
        store = Store(list(trust))
    except ValueError as exc:  # e.g. a name with a string type cryptography cannot parse
        raise AuthError(f"a trusted CA certificate cannot be used: {exc}") from None
    verifier = (PolicyBuilder()
                .store(store)
                .time(when)
                .max_chain_depth(_MAX_CHAIN_DEPTH)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(cert, list(intermediates))
    except VerificationError as exc:
        raise AuthError(f"certificate {subject}: {_chain_failure(exc, cert, intermediates, trust)}") from None
    except ValueError as exc:  # cryptography could not parse a part of a certificate it was given
        raise AuthError(f"certificate {subject}: cannot be validated: {exc}") from None


# --------------------------------------------------------------------------- CERT, CERTREQ


def cert_payloads(chain: Sequence[x509.Certificate]) -> list[CERT]:
    """One CERT payload per certificate, X.509 Certificate - Signature, DER, end entity first (RFC 7296 §3.6)."""
    return [CERT(CertEncoding.X509_SIGNATURE, cert.public_bytes(serialization.Encoding.DER)) for cert in chain]


def certificates_from_payloads(payloads: Sequence[CERT]) -> list[x509.Certificate]:
    """The certificates of the X509_SIGNATURE CERT payloads, in order; other encodings are ignored.

    RFC 7296 §3.6: the first one carries the key that signs AUTH.
    """
    certs = []
    for index, payload in enumerate(payloads):
        if payload.encoding != CertEncoding.X509_SIGNATURE:
            continue
        try:
            certs.append(x509.load_der_x509_certificate(bytes(payload.data)))
        except ValueError:
            raise AuthError(f"CERT payload {index + 1}: not a DER X.509 certificate") from None
    return certs


def certreq(trust: Sequence[x509.Certificate]) -> CERTREQ:
    """CERTREQ naming our trusted CAs: the SHA-1 of each one's SubjectPublicKeyInfo (RFC 7296 §3.7)."""
    seen: list[bytes] = []
    for cert in trust:
        digest = spki_sha1(cert)
        if digest not in seen:
            seen.append(digest)
    return CERTREQ(CertEncoding.X509_SIGNATURE, b"".join(seen))


def not_after(cert: x509.Certificate) -> float:
    """The end of the certificate's validity as a POSIX timestamp (for the expiry metric)."""
    return cert.not_valid_after_utc.timestamp()
