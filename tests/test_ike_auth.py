"""Certificate authentication for IKEv2 (ipsecd.ike.auth).

The proof is independent of our code wherever it can be: signatures are
checked by the ``openssl`` CLI in both directions, AlgorithmIdentifiers are
compared with the ones cryptography (OpenSSL) writes into certificates, DNs
with the subjects OpenSSL encodes, SPKI hashes are computed through
cryptography's own serialization.  Certificates come from cryptography's
builder (module-scoped, one PKI per key type) and, if it is installed, from
strongSwan's ``pki`` tool.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.ike import auth
from ipsecd.ike.auth import AuthError
from ipsecd.ike.constants import AuthMethod, CertEncoding, IdType
from ipsecd.ike.constants import SignatureHashAlgorithm as Hash
from ipsecd.ike.messages import (
    AUTH,
    CERT,
    CERTREQ,
    Identification,
    decode_payloads,
    encode_payloads,
)

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
OCTETS = b"RealMessage1 | NonceRData | prf(SK_pi, IDi') " * 3  # stand-in for signed octets (RFC 7296 §2.15)

# AlgorithmIdentifier DER, RFC 7427 Appendix A (checked below against what cryptography/OpenSSL
# writes into certificates signed with the same algorithm).
ALGID = {
    "sha1WithRSAEncryption": bytes.fromhex("300d06092a864886f70d0101050500"),
    "sha256WithRSAEncryption": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "sha384WithRSAEncryption": bytes.fromhex("300d06092a864886f70d01010c0500"),
    "sha512WithRSAEncryption": bytes.fromhex("300d06092a864886f70d01010d0500"),
    "ecdsa-with-SHA256": bytes.fromhex("300a06082a8648ce3d040302"),
    "ecdsa-with-SHA384": bytes.fromhex("300a06082a8648ce3d040303"),
    "ecdsa-with-SHA512": bytes.fromhex("300a06082a8648ce3d040304"),
    "id-Ed25519": bytes.fromhex("300506032b6570"),  # RFC 8420 §2, RFC 8410 §3
    # RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt 32 (RFC 4055 §3.1); the same bytes are in the
    # CA/Browser Forum Baseline Requirements §7.1.3.2.1.
    "rsassa-pss-sha256": bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d"
        "010108300d06096086480165030402010500a203020120"),
}

KINDS = ["rsa2048", "rsa3072", "p256", "p384", "p521", "ed25519"]
CHAIN_KINDS = ["rsa2048", "rsa3072", "p256", "p384", "p521"]  # CAs the library can validate
EXPECTED_ALGID = {
    "rsa2048": "sha256WithRSAEncryption", "rsa3072": "sha256WithRSAEncryption",
    "p256": "ecdsa-with-SHA256", "p384": "ecdsa-with-SHA384", "p521": "ecdsa-with-SHA512",
    "ed25519": "id-Ed25519",
}
OPENSSL_DIGEST = {"rsa2048": "sha256", "rsa3072": "sha384", "p256": "sha256", "p384": "sha384", "p521": "sha512"}

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# --------------------------------------------------------------------------- certificate factory


def new_key(kind: str) -> SigningKey:
    makers: dict[str, Callable[[], SigningKey]] = {
        "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
        "rsa3072": lambda: rsa.generate_private_key(65537, 3072),
        "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }
    return makers[kind]()


CertHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def cert_hash(key: SigningKey) -> CertHash | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve: dict[str, CertHash] = {"secp384r1": hashes.SHA384(), "secp521r1": hashes.SHA512()}
        return by_curve.get(key.curve.name, hashes.SHA256())
    return hashes.SHA256()


def dn(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    """A Name whose first pair is the first RDN (cryptography keeps the order given)."""
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def key_usage(**bits: bool) -> x509.KeyUsage:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{name: bits.get(name, False) for name in names})


@dataclass
class Issued:
    cert: x509.Certificate
    key: SigningKey


def issue(
    subject: x509.Name,
    key: SigningKey,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    basic_constraints: x509.BasicConstraints | None = None,
    usage: x509.KeyUsage | None = None,
    san: Sequence[x509.GeneralName] = (),
    eku: Sequence[x509.ObjectIdentifier] = (),
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + 30 * DAY,
    ski: bool = True,
    aki: bool = True,
    signing_key: SigningKey | None = None,
) -> Issued:
    """A certificate for ``key``, issued by ``issuer`` (self-signed when None)."""
    signer = signing_key or (issuer.key if issuer else key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(usage or CA_USAGE, critical=True)
    else:
        if basic_constraints is not None:
            builder = builder.add_extension(basic_constraints, critical=True)
        if usage is not None:
            builder = builder.add_extension(usage, critical=True)
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Issued(builder.sign(signer, cert_hash(signer)), key)


def ca_issue(subject: x509.Name, key: SigningKey, issuer: Issued | None = None, *,
             path_length: int | None = None, **kwargs: object) -> Issued:
    """A CA certificate with an explicit pathLenConstraint."""
    signer = issuer.key if issuer else key
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(CA_USAGE, critical=True))
    return Issued(builder.sign(signer, cert_hash(signer)), key)


@dataclass
class Pki:
    kind: str
    root: Issued
    inter: Issued
    leaf: Issued
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address
    fqdn: str
    email: str


@functools.cache
def make_pki(kind: str) -> Pki:
    """CA -> intermediate -> end entity, all with keys of ``kind``; cached for the whole run."""
    index = KINDS.index(kind) + 1 if kind in KINDS else 99
    root = issue(dn((NameOID.COUNTRY_NAME, "CH"), (NameOID.ORGANIZATION_NAME, "ipsecd test"),
                    (NameOID.COMMON_NAME, f"{kind} Root CA")), new_key(kind), ca=True, aki=False)
    inter = issue(dn((NameOID.COUNTRY_NAME, "CH"), (NameOID.ORGANIZATION_NAME, "ipsecd test"),
                     (NameOID.COMMON_NAME, f"{kind} Intermediate CA")), new_key(kind), root, ca=True)
    address = ipaddress.IPv4Address(f"192.0.2.{index}")
    address6 = ipaddress.IPv6Address(f"2001:db8::{index}")
    fqdn = f"gw-{kind}.example.net"
    email = f"Admin@{fqdn}"
    leaf = issue(dn((NameOID.COUNTRY_NAME, "CH"), (NameOID.ORGANIZATION_NAME, "ipsecd test"),
                    (NameOID.COMMON_NAME, fqdn)), new_key(kind), inter,
                 san=[x509.DNSName(fqdn), x509.IPAddress(address), x509.IPAddress(address6),
                      x509.RFC822Name(email)])
    return Pki(kind, root, inter, leaf, address, address6, fqdn, email)


@pytest.fixture(scope="module")
def pki() -> Callable[[str], Pki]:
    return make_pki


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl CLI is missing: the cross-checks need it (Debian package openssl)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=60)


def write_private_pem(key: SigningKey, path: Path, mode: int = 0o600) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(mode)
    return path


def write_public_pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def split_rfc7427(data: bytes) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier, signature) of RFC 7427 §3 AUTH data."""
    return data[1:1 + data[0]], data[1 + data[0]:]


def rfc7427(algid: bytes, signature: bytes) -> bytes:
    return bytes([len(algid)]) + algid + signature


def certificate_signature_algid(cert: x509.Certificate) -> bytes:
    """The signatureAlgorithm AlgorithmIdentifier that follows tbsCertificate (RFC 5280 §4.1.1.2)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs = cert.tbs_certificate_bytes
    rest = der[der.index(tbs) + len(tbs):]
    assert rest[0] == 0x30 and rest[1] < 0x80
    return rest[:2 + rest[1]]


def flip(data: bytes, index: int = -1) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


# --------------------------------------------------------------------------- sign / verify


@pytest.mark.parametrize("kind", KINDS)
def test_sign_verify_round_trip(pki: Callable[[str], Pki], kind: str) -> None:
    p = pki(kind)
    payload = auth.sign(p.leaf.key, OCTETS, peer_hashes=auth.SUPPORTED_HASHES)
    assert payload.method == AuthMethod.DIGITAL_SIGNATURE
    algid, signature = split_rfc7427(payload.data)
    assert algid == ALGID[EXPECTED_ALGID[kind]]
    assert signature
    auth.verify(payload, OCTETS, p.leaf.cert)
    # and after a trip through the payload codec
    first, chain = encode_payloads([payload])
    (decoded,) = decode_payloads(first, chain)
    assert isinstance(decoded, AUTH)
    auth.verify(decoded, OCTETS, p.leaf.cert)


@pytest.mark.parametrize("kind", KINDS)
def test_flipped_byte_fails(pki: Callable[[str], Pki], kind: str) -> None:
    p = pki(kind)
    payload = auth.sign(p.leaf.key, OCTETS, peer_hashes=auth.SUPPORTED_HASHES)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(AUTH(payload.method, flip(payload.data)), OCTETS, p.leaf.cert)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(AUTH(payload.method, flip(payload.data, len(payload.data) // 2 + 10)), OCTETS, p.leaf.cert)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(payload, flip(OCTETS, 7), p.leaf.cert)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_key_fails(pki: Callable[[str], Pki], kind: str) -> None:
    p = pki(kind)
    payload = auth.sign(p.leaf.key, OCTETS, peer_hashes=[])
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(payload, OCTETS, p.inter.cert)  # same key type, another key


def test_algorithm_identifier_must_fit_the_key(pki: Callable[[str], Pki]) -> None:
    ecdsa, rsa_pki, edwards = pki("p256"), pki("rsa2048"), pki("ed25519")
    _, ecdsa_sig = split_rfc7427(auth.sign(ecdsa.leaf.key, OCTETS, peer_hashes=[]).data)
    _, rsa_sig = split_rfc7427(auth.sign(rsa_pki.leaf.key, OCTETS, peer_hashes=[]).data)
    cases = [
        (rfc7427(ALGID["sha256WithRSAEncryption"], ecdsa_sig), ecdsa.leaf.cert),
        (rfc7427(ALGID["ecdsa-with-SHA256"], rsa_sig), rsa_pki.leaf.cert),
        (rfc7427(ALGID["id-Ed25519"], ecdsa_sig), ecdsa.leaf.cert),
        (rfc7427(ALGID["rsassa-pss-sha256"], ecdsa_sig), ecdsa.leaf.cert),
        (rfc7427(ALGID["ecdsa-with-SHA256"], ecdsa_sig), edwards.leaf.cert),
    ]
    for data, cert in cases:
        with pytest.raises(AuthError, match="does not fit"):
            auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, data), OCTETS, cert)


def test_algorithm_identifiers_match_openssl_encodings(pki: Callable[[str], Pki]) -> None:
    """Our fixed AlgorithmIdentifiers are the ones OpenSSL writes for the same algorithms."""
    for kind in KINDS:
        p = pki(kind)
        # the intermediate is signed by the root's key with the algorithm sign() uses for that key
        algid, _ = split_rfc7427(auth.sign(p.root.key, OCTETS, peer_hashes=[]).data)
        assert certificate_signature_algid(p.inter.cert) == algid, kind
    rsa_key = pki("rsa2048").leaf.key
    subject = dn((NameOID.COMMON_NAME, "x"))
    digests: list[tuple[CertHash, str]] = [(hashes.SHA384(), "sha384WithRSAEncryption"),
                                           (hashes.SHA512(), "sha512WithRSAEncryption")]
    for digest, name in digests:
        cert = x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(
            rsa_key.public_key()).serial_number(1).not_valid_before(NOW).not_valid_after(NOW + DAY).sign(
            rsa_key, digest)
        assert certificate_signature_algid(cert) == ALGID[name]
    pss = x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(
        rsa_key.public_key()).serial_number(1).not_valid_before(NOW).not_valid_after(NOW + DAY).sign(
        rsa_key, hashes.SHA256(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32))
    pss_algid = certificate_signature_algid(pss)
    # cryptography omits the hash parameters (RFC 5754 §2), the published form has NULL; both are
    # RSASSA-PSS with SHA-256 and salt 32, and verify() accepts both (below).
    assert pss_algid[2:13] == ALGID["rsassa-pss-sha256"][2:13]


@pytest.mark.parametrize(("kind", "offered", "expected"), [
    ("rsa2048", [Hash.SHA2_512], "sha512WithRSAEncryption"),
    ("rsa2048", [Hash.SHA2_384, Hash.SHA2_512], "sha384WithRSAEncryption"),
    ("rsa2048", [Hash.IDENTITY, Hash.SHA2_256], "sha256WithRSAEncryption"),
    ("rsa2048", [], "sha256WithRSAEncryption"),
    ("p256", [Hash.SHA2_384], "ecdsa-with-SHA384"),
    ("p256", [Hash.SHA2_512, Hash.SHA2_256], "ecdsa-with-SHA256"),
    ("p384", [Hash.SHA2_256], "ecdsa-with-SHA256"),
    ("p521", [], "ecdsa-with-SHA512"),
    ("ed25519", [], "id-Ed25519"),
    ("ed25519", [Hash.SHA2_256, Hash.IDENTITY], "id-Ed25519"),
])
def test_hash_follows_the_peers_announcement(
    pki: Callable[[str], Pki], kind: str, offered: list[Hash], expected: str,
) -> None:
    p = pki(kind)
    payload = auth.sign(p.leaf.key, OCTETS, peer_hashes=offered)
    assert split_rfc7427(payload.data)[0] == ALGID[expected]
    auth.verify(payload, OCTETS, p.leaf.cert)


@pytest.mark.parametrize(("kind", "offered"), [
    ("rsa2048", [Hash.SHA1]),
    ("p256", [Hash.SHA1, Hash.IDENTITY]),
    ("ed25519", [Hash.SHA2_256, Hash.SHA2_512]),
])
def test_no_shared_hash_is_an_error(pki: Callable[[str], Pki], kind: str, offered: list[Hash]) -> None:
    with pytest.raises(AuthError, match="SIGNATURE_HASH_ALGORITHMS"):
        auth.sign(pki(kind).leaf.key, OCTETS, peer_hashes=offered)


def test_sha1_is_refused_inside_a_digital_signature(pki: Callable[[str], Pki]) -> None:
    rsa_pki, ecdsa = pki("rsa2048"), pki("p256")
    assert isinstance(rsa_pki.leaf.key, rsa.RSAPrivateKey) and isinstance(ecdsa.leaf.key, ec.EllipticCurvePrivateKey)
    signature = rsa_pki.leaf.key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    rsa_pki.leaf.key.public_key().verify(signature, OCTETS, padding.PKCS1v15(), hashes.SHA1())  # genuine
    with pytest.raises(AuthError, match="SHA-1"):
        auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(ALGID["sha1WithRSAEncryption"], signature)),
                    OCTETS, rsa_pki.leaf.cert)
    ecdsa_sha1 = bytes.fromhex("300906072a8648ce3d0401")  # ecdsa-with-SHA1
    signature = ecdsa.leaf.key.sign(OCTETS, ec.ECDSA(hashes.SHA1()))
    with pytest.raises(AuthError, match="SHA-1"):
        auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(ecdsa_sha1, signature)), OCTETS, ecdsa.leaf.cert)


def test_rsassa_pss_is_verified(pki: Callable[[str], Pki]) -> None:
    p = pki("rsa3072")
    assert isinstance(p.leaf.key, rsa.RSAPrivateKey)
    signature = p.leaf.key.sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(ALGID["rsassa-pss-sha256"], signature)), OCTETS, p.leaf.cert)
    # the parameters are honoured: the same signature announced with salt 20 fails
    salt20 = ALGID["rsassa-pss-sha256"][:-1] + b"\x14"
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(salt20, signature)), OCTETS, p.leaf.cert)
    # SHA-384 with the parameters cryptography writes into a certificate (hash parameters absent)
    subject = dn((NameOID.COMMON_NAME, "pss"))
    pss384 = padding.PSS(padding.MGF1(hashes.SHA384()), 48)
    cert = x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(
        p.leaf.key.public_key()).serial_number(1).not_valid_before(NOW).not_valid_after(NOW + DAY).sign(
        p.leaf.key, hashes.SHA384(), rsa_padding=pss384)
    signature = p.leaf.key.sign(OCTETS, pss384, hashes.SHA384())
    auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(certificate_signature_algid(cert), signature)),
                OCTETS, p.leaf.cert)
    # RSASSA-PSS with the default (SHA-1) parameters is refused
    defaults = bytes.fromhex("300d06092a864886f70d01010a3000")
    with pytest.raises(AuthError, match="SHA-1"):
        auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(defaults, signature)), OCTETS, p.leaf.cert)


@pytest.mark.parametrize("method", [AuthMethod.SHARED_KEY_MIC, AuthMethod.DSS_DIGITAL_SIGNATURE,
                                    AuthMethod.NULL_AUTH, AuthMethod.GENERIC_SECURE_PASSWORD, AuthMethod(201)])
def test_other_methods_are_refused(pki: Callable[[str], Pki], method: AuthMethod) -> None:
    with pytest.raises(AuthError, match="not a signature method"):
        auth.verify(AUTH(method, b"\x00" * 64), OCTETS, pki("p256").leaf.cert)


@pytest.mark.parametrize("data", [
    b"", b"\x0f", b"\x0f" + ALGID["sha256WithRSAEncryption"], b"\xff" + b"\x30" * 40,
    rfc7427(b"\x30\x03\x06\x01\x00", b"sig"), rfc7427(b"\x31\x00", b"sig"),
    rfc7427(bytes.fromhex("300b06092a864886f70d01010b"), b"sig") + b"",  # 1.2.840.113549.1.1.11 without NULL
    rfc7427(bytes.fromhex("300606042a030405"), b"sig"),  # unknown algorithm 1.2.3.4.5
])
def test_malformed_digital_signature_data(pki: Callable[[str], Pki], data: bytes) -> None:
    with pytest.raises(AuthError):
        auth.verify(AUTH(AuthMethod.DIGITAL_SIGNATURE, data), OCTETS, pki("rsa2048").leaf.cert)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from([AuthMethod.DIGITAL_SIGNATURE, AuthMethod.RSA_DIGITAL_SIGNATURE,
                               AuthMethod.ECDSA_SHA256_P256, AuthMethod.ECDSA_SHA384_P384]),
       data=st.one_of(st.binary(max_size=300),
                      st.builds(lambda a, b: a + b, st.sampled_from([rfc7427(v, b"") for v in ALGID.values()]),
                                st.binary(max_size=200))),
       kind=st.sampled_from(["rsa2048", "p256", "p384", "ed25519"]))
def test_any_auth_data_is_refused_with_auth_error_only(method: AuthMethod, data: bytes, kind: str) -> None:
    with pytest.raises(AuthError):
        auth.verify(AUTH(method, data), OCTETS, make_pki(kind).leaf.cert)


# --------------------------------------------------------------------------- legacy methods


def test_rsa_digital_signature_method_1(pki: Callable[[str], Pki], openssl: str, tmp_path: Path) -> None:
    """RFC 7296 §3.8 method 1: PKCS#1 v1.5 over SHA-1, here made by openssl."""
    p = pki("rsa2048")
    data = tmp_path / "octets"
    data.write_bytes(OCTETS)
    key = write_private_pem(p.leaf.key, tmp_path / "key.pem")
    result = run(openssl, "dgst", "-sha1", "-sign", key, "-out", tmp_path / "sig", data)
    assert result.returncode == 0, result.stderr
    signature = (tmp_path / "sig").read_bytes()
    auth.verify(AUTH(AuthMethod.RSA_DIGITAL_SIGNATURE, signature), OCTETS, p.leaf.cert)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(AUTH(AuthMethod.RSA_DIGITAL_SIGNATURE, signature), flip(OCTETS), p.leaf.cert)
    with pytest.raises(AuthError, match="RSA_DIGITAL_SIGNATURE"):
        auth.verify(AUTH(AuthMethod.RSA_DIGITAL_SIGNATURE, signature), OCTETS, pki("p256").leaf.cert)


@pytest.mark.parametrize(("kind", "method", "digest", "size"), [
    ("p256", AuthMethod.ECDSA_SHA256_P256, "sha256", 32),
    ("p384", AuthMethod.ECDSA_SHA384_P384, "sha384", 48),
    ("p521", AuthMethod.ECDSA_SHA512_P521, "sha512", 66),
])
def test_rfc4754_ecdsa_methods(
    pki: Callable[[str], Pki], openssl: str, tmp_path: Path, kind: str, method: AuthMethod, digest: str, size: int,
) -> None:
    """RFC 4754 §7: the signature is r | s, each exactly the size of the curve's field."""
    p = pki(kind)
    data = tmp_path / "octets"
    data.write_bytes(OCTETS)
    key = write_private_pem(p.leaf.key, tmp_path / "key.pem")
    result = run(openssl, "dgst", f"-{digest}", "-sign", key, "-out", tmp_path / "sig", data)
    assert result.returncode == 0, result.stderr
    der = (tmp_path / "sig").read_bytes()
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    auth.verify(AUTH(method, raw), OCTETS, p.leaf.cert)
    with pytest.raises(AuthError, match="does not verify"):
        auth.verify(AUTH(method, flip(raw)), OCTETS, p.leaf.cert)
    with pytest.raises(AuthError, match="octets"):
        auth.verify(AUTH(method, der), OCTETS, p.leaf.cert)  # DER is not the RFC 4754 format
    other = "p384" if kind != "p384" else "p256"
    with pytest.raises(AuthError, match="RFC 4754"):
        auth.verify(AUTH(method, raw), OCTETS, pki(other).leaf.cert)


# --------------------------------------------------------------------------- openssl cross-checks


@pytest.mark.parametrize("kind", KINDS)
def test_openssl_verifies_our_signatures(pki: Callable[[str], Pki], openssl: str, tmp_path: Path, kind: str) -> None:
    p = pki(kind)
    offered = {"rsa3072": [Hash.SHA2_384]}.get(kind, auth.SUPPORTED_HASHES)
    algid, signature = split_rfc7427(auth.sign(p.leaf.key, OCTETS, peer_hashes=offered).data)
    (tmp_path / "sig").write_bytes(signature)
    (tmp_path / "octets").write_bytes(OCTETS)
    (tmp_path / "tampered").write_bytes(flip(OCTETS))
    public = write_public_pem(p.leaf.cert, tmp_path / "pub.pem")

    def check(data: Path) -> subprocess.CompletedProcess[str]:
        if kind == "ed25519":
            return run(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin",
                       "-in", data, "-sigfile", tmp_path / "sig")
        return run(openssl, "dgst", f"-{OPENSSL_DIGEST[kind]}", "-verify", public, "-signature", tmp_path / "sig", data)

    good = check(tmp_path / "octets")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Verified" in good.stdout
    bad = check(tmp_path / "tampered")
    assert bad.returncode != 0, bad.stdout
    if kind == "rsa3072":
        assert algid == ALGID["sha384WithRSAEncryption"]


@pytest.mark.parametrize("kind", KINDS)
def test_we_verify_openssl_signatures(pki: Callable[[str], Pki], openssl: str, tmp_path: Path, kind: str) -> None:
    p = pki(kind)
    (tmp_path / "octets").write_bytes(OCTETS)
    key = write_private_pem(p.leaf.key, tmp_path / "key.pem")
    if kind == "ed25519":
        result = run(openssl, "pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", tmp_path / "octets",
                     "-out", tmp_path / "sig")
        algid = ALGID["id-Ed25519"]
    else:
        digest = OPENSSL_DIGEST[kind]
        result = run(openssl, "dgst", f"-{digest}", "-sign", key, "-out", tmp_path / "sig", tmp_path / "octets")
        family = "ecdsa-with-" if kind.startswith("p") else ""
        algid = ALGID[f"{family}{digest.upper()}" if family else f"{digest}WithRSAEncryption"]
    assert result.returncode == 0, result.stderr
    payload = AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(algid, (tmp_path / "sig").read_bytes()))
    auth.verify(payload, OCTETS, p.leaf.cert)
    with pytest.raises(AuthError):
        auth.verify(payload, flip(OCTETS), p.leaf.cert)


def test_we_verify_openssl_rsassa_pss(pki: Callable[[str], Pki], openssl: str, tmp_path: Path) -> None:
    p = pki("rsa2048")
    (tmp_path / "octets").write_bytes(OCTETS)
    key = write_private_pem(p.leaf.key, tmp_path / "key.pem")
    result = run(openssl, "dgst", "-sha256", "-sign", key, "-sigopt", "rsa_padding_mode:pss",
                 "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256",
                 "-out", tmp_path / "sig", tmp_path / "octets")
    assert result.returncode == 0, result.stderr
    payload = AUTH(AuthMethod.DIGITAL_SIGNATURE, rfc7427(ALGID["rsassa-pss-sha256"], (tmp_path / "sig").read_bytes()))
    auth.verify(payload, OCTETS, p.leaf.cert)


# --------------------------------------------------------------------------- key and certificate files


def test_load_private_key_formats(pki: Callable[[str], Pki], openssl: str, tmp_path: Path) -> None:
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    pkcs8, traditional = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
    cases = [("rsa2048", pem, traditional), ("rsa3072", der, pkcs8), ("p256", pem, traditional),
             ("p384", der, traditional), ("p521", pem, pkcs8), ("ed25519", pem, pkcs8), ("ed25519", der, pkcs8)]
    for i, (kind, encoding, private_format) in enumerate(cases):
        key = pki(kind).leaf.key
        path = tmp_path / f"key{i}"
        path.write_bytes(key.private_bytes(encoding, private_format, serialization.NoEncryption()))
        path.chmod(0o600)
        loaded = auth.load_private_key(path)
        assert loaded.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo) == \
            key.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert "BEGIN" not in repr(loaded)
    # a key made by openssl, used end to end
    result = run(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384",
                 "-out", tmp_path / "openssl.key")
    assert result.returncode == 0, result.stderr
    (tmp_path / "openssl.key").chmod(0o600)
    key = auth.load_private_key(tmp_path / "openssl.key")
    cert = issue(dn((NameOID.COMMON_NAME, "openssl key")), key).cert
    auth.verify(auth.sign(key, OCTETS, peer_hashes=[]), OCTETS, cert)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o610, 0o666])
def test_private_key_with_group_or_other_bits_is_refused(pki: Callable[[str], Pki], tmp_path: Path, mode: int) -> None:
    path = write_private_pem(pki("p256").leaf.key, tmp_path / "gw.key", mode)
    with pytest.raises(AuthError) as excinfo:
        auth.load_private_key(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert f"{mode:04o}" in message and "chmod 600" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_owner_only_is_accepted(pki: Callable[[str], Pki], tmp_path: Path, mode: int) -> None:
    path = write_private_pem(pki("p256").leaf.key, tmp_path / "gw.key", mode)
    assert isinstance(auth.load_private_key(path), ec.EllipticCurvePrivateKey)


def test_private_key_errors_name_the_file_and_never_show_its_bytes(pki: Callable[[str], Pki], tmp_path: Path) -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtbG9n"
    garbage = tmp_path / "garbage.key"
    garbage.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(pki("p256").leaf.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    encrypted.chmod(0o600)
    body = "".join(encrypted.read_text().splitlines()[1:-1])
    for path, expected in [(garbage, "not a private key"), (encrypted, "encrypted")]:
        with pytest.raises(AuthError, match=expected) as excinfo:
            auth.load_private_key(path)
        message = str(excinfo.value)
        assert str(path) in message
        assert secret not in message and body[:16] not in message and body[-16:] not in message
        assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_unsupported_private_keys(tmp_path: Path) -> None:
    k1 = ec.generate_private_key(ec.SECP256K1())
    k448 = ed448.Ed448PrivateKey.generate()
    cases: list[tuple[str, ec.EllipticCurvePrivateKey | ed448.Ed448PrivateKey, str]] = [
        ("k1", k1, "secp256k1"), ("ed448", k448, "Ed448")]
    for name, key, expected in cases:
        path = tmp_path / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        with pytest.raises(AuthError, match=expected):
            auth.load_private_key(path)
    with pytest.raises(AuthError, match=r"missing\.key"):
        auth.load_private_key(tmp_path / "missing.key")
    with pytest.raises(AuthError, match="regular file"):
        auth.load_private_key(tmp_path)


def test_load_certificates(pki: Callable[[str], Pki], tmp_path: Path) -> None:
    p = pki("p256")
    pem = serialization.Encoding.PEM
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(p.leaf.cert.public_bytes(pem)
                       + p.leaf.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                       + p.inter.cert.public_bytes(pem))
    assert auth.load_certificates(bundle) == [p.leaf.cert, p.inter.cert]
    der = tmp_path / "root.der"
    der.write_bytes(p.root.cert.public_bytes(serialization.Encoding.DER))
    assert auth.load_certificates(str(der)) == [p.root.cert]
    for name, content in [("junk.der", b"\x30\x03\x02\x01\x01"), ("empty.pem", b"-----BEGIN CERTIFICATE-----\n"),
                          ("empty", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AuthError, match=name):
            auth.load_certificates(tmp_path / name)


# --------------------------------------------------------------------------- validate_chain


@pytest.mark.parametrize("kind", CHAIN_KINDS)
def test_valid_chain(pki: Callable[[str], Pki], kind: str) -> None:
    p = pki(kind)
    auth.validate_chain(p.leaf.cert, [p.inter.cert], [p.root.cert])
    auth.validate_chain(p.leaf.cert, [p.inter.cert, pki("p256").inter.cert], [pki("p256").root.cert, p.root.cert])
    with pytest.raises(AuthError, match="basicConstraints"):  # a CA certificate cannot be the peer's
        auth.validate_chain(p.inter.cert, [], [p.root.cert])


def test_ed25519_end_entity_under_an_ecdsa_ca(pki: Callable[[str], Pki]) -> None:
    p = pki("p256")
    key = new_key("ed25519")
    leaf = issue(dn((NameOID.COMMON_NAME, "ed25519 peer")), key, p.inter)
    auth.validate_chain(leaf.cert, [p.inter.cert], [p.root.cert])
    auth.verify(auth.sign(key, OCTETS, peer_hashes=auth.SUPPORTED_HASHES), OCTETS, leaf.cert)


def test_eddsa_signed_chain_is_refused_with_the_reason(pki: Callable[[str], Pki]) -> None:
    """cryptography's verifier does not accept EdDSA certificate signatures; the error says so."""
    p = pki("ed25519")
    with pytest.raises(AuthError, match="EdDSA"):
        auth.validate_chain(p.leaf.cert, [p.inter.cert], [p.root.cert])


def test_expired_and_not_yet_valid(pki: Callable[[str], Pki]) -> None:
    p = pki("p256")
    leaf = p.leaf.cert
    with pytest.raises(AuthError, match="expired"):
        auth.validate_chain(leaf, [p.inter.cert], [p.root.cert], now=NOW + 31 * DAY)
    with pytest.raises(AuthError, match="not valid before"):
        auth.validate_chain(leaf, [p.inter.cert], [p.root.cert], now=NOW - 2 * DAY)
    auth.validate_chain(leaf, [p.inter.cert], [p.root.cert], now=(NOW + DAY).replace(tzinfo=None))  # naive = UTC
    expired = issue(leaf.subject, new_key("p256"), p.inter, not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    with pytest.raises(AuthError, match="expired"):
        auth.validate_chain(expired.cert, [p.inter.cert], [p.root.cert])
    future = issue(leaf.subject, new_key("p256"), p.inter, not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    with pytest.raises(AuthError, match="not valid before"):
        auth.validate_chain(future.cert, [p.inter.cert], [p.root.cert])
    # an expired intermediate breaks the chain although the end entity is valid
    old_inter = issue(p.inter.cert.subject, p.inter.key, p.root, ca=True, not_before=NOW - 10 * DAY,
                      not_after=NOW - DAY)
    with pytest.raises(AuthError, match="not valid"):
        auth.validate_chain(leaf, [old_inter.cert], [p.root.cert])


def test_unknown_ca(pki: Callable[[str], Pki]) -> None:
    p, other = pki("p256"), pki("p384")
    with pytest.raises(AuthError, match="neither a trusted CA nor among the intermediate"):
        auth.validate_chain(p.leaf.cert, [], [p.root.cert])  # intermediate not sent
    with pytest.raises(AuthError):
        auth.validate_chain(p.leaf.cert, [p.inter.cert], [other.root.cert])
    # a CA with the right name but another key is not the issuer
    impostor = issue(p.root.cert.subject, new_key("p256"), ca=True, aki=False)
    with pytest.raises(AuthError):
        auth.validate_chain(p.leaf.cert, [p.inter.cert], [impostor.cert])
    with pytest.raises(AuthError, match="no trusted CA"):
        auth.validate_chain(p.leaf.cert, [p.inter.cert], [])


def test_bad_signature_on_the_end_entity(pki: Callable[[str], Pki]) -> None:
    p = pki("rsa2048")
    forged = issue(p.leaf.cert.subject, new_key("p256"), p.inter, signing_key=new_key("rsa2048"))
    assert forged.cert.issuer == p.inter.cert.subject
    with pytest.raises(AuthError):
        auth.validate_chain(forged.cert, [p.inter.cert], [p.root.cert])


@pytest.mark.parametrize("constraints", [None, x509.BasicConstraints(ca=False, path_length=None)])
def test_intermediate_without_ca_flag(pki: Callable[[str], Pki], constraints: x509.BasicConstraints | None) -> None:
    p = pki("p256")
    inter = issue(dn((NameOID.COMMON_NAME, "not a CA")), new_key("p256"), p.root, basic_constraints=constraints)
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), inter)
    with pytest.raises(AuthError, match="basicConstraints"):
        auth.validate_chain(leaf.cert, [inter.cert], [p.root.cert])


def test_path_length_constraint(pki: Callable[[str], Pki]) -> None:
    p = pki("p256")
    root = ca_issue(dn((NameOID.COMMON_NAME, "pathlen 0 root")), new_key("p256"), path_length=0)
    inter = issue(dn((NameOID.COMMON_NAME, "sub CA")), new_key("p256"), root, ca=True)
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), inter)
    with pytest.raises(AuthError):
        auth.validate_chain(leaf.cert, [inter.cert], [root.cert])
    direct = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), root)
    auth.validate_chain(direct.cert, [], [root.cert])
    assert p.root.cert  # the shared fixture is untouched


def test_strongswan_style_certificates(pki: Callable[[str], Pki]) -> None:
    """What ``pki --self --ca`` / ``pki --issue`` write: a DN-only end entity (no SAN, KU or EKU, an
    authorityKeyIdentifier); a CA with basicConstraints and subjectKeyIdentifier (older pki: no keyUsage)."""
    ca_key, gw_key = new_key("p256"), new_key("p256")
    ca_name = dn((NameOID.COUNTRY_NAME, "CH"), (NameOID.ORGANIZATION_NAME, "strongSwan Project"),
                 (NameOID.COMMON_NAME, "strongSwan Root CA"))
    builder = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW - DAY)
               .not_valid_after(NOW + 3650 * DAY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False))
    ca = Issued(builder.sign(ca_key, hashes.SHA256()), ca_key)
    moon_name = "C=CH, O=strongSwan Project, CN=moon.strongswan.org"
    moon = issue(dn((NameOID.COUNTRY_NAME, "CH"), (NameOID.ORGANIZATION_NAME, "strongSwan Project"),
                    (NameOID.COMMON_NAME, "moon.strongswan.org")), gw_key, ca, ski=False)
    assert not any(isinstance(e.value, x509.SubjectAlternativeName) for e in moon.cert.extensions)
    auth.validate_chain(moon.cert, [], [ca.cert])
    assert auth.identity_matches(auth.parse_identity(moon_name), moon.cert)
    assert auth.identity_matches(auth.identity_from_certificate(moon.cert), moon.cert)
    assert not auth.identity_matches(auth.parse_identity("moon.strongswan.org"), moon.cert)  # no SAN
    assert auth.describe_identity(auth.identity_from_certificate(moon.cert)) == moon_name


@pytest.mark.parametrize(("usages", "accepted"), [
    ([ExtendedKeyUsageOID.SERVER_AUTH, x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")], True),  # strongSwan's advice
    ([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")], True),  # id-kp-ipsecIKE
    ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True),
    ([ExtendedKeyUsageOID.CLIENT_AUTH], True),
    ([ExtendedKeyUsageOID.CODE_SIGNING], False),
    ([ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.TIME_STAMPING], False),
])
def test_extended_key_usage(pki: Callable[[str], Pki], usages: list[x509.ObjectIdentifier], accepted: bool) -> None:
    """RFC 4945 §5.1.3.12, plus what IPsec gateways carry in practice."""
    p = pki("p256")
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), p.inter, eku=usages)
    if accepted:
        auth.validate_chain(leaf.cert, [p.inter.cert], [p.root.cert])
    else:
        with pytest.raises(AuthError, match="extendedKeyUsage"):
            auth.validate_chain(leaf.cert, [p.inter.cert], [p.root.cert])


def test_key_usage(pki: Callable[[str], Pki]) -> None:
    """RFC 4945 §5.1.3.2 for the end entity, RFC 5280 §6.1.4 (n) for CAs."""
    p = pki("p256")
    for usage in (key_usage(digital_signature=True), key_usage(content_commitment=True)):
        leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), p.inter, usage=usage)
        auth.validate_chain(leaf.cert, [p.inter.cert], [p.root.cert])
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), p.inter, usage=key_usage(key_encipherment=True))
    with pytest.raises(AuthError, match="digitalSignature"):
        auth.validate_chain(leaf.cert, [p.inter.cert], [p.root.cert])
    inter = issue(dn((NameOID.COMMON_NAME, "CA without keyCertSign")), new_key("p256"), p.root, ca=True,
                  usage=key_usage(crl_sign=True))
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), inter)
    with pytest.raises(AuthError, match="keyCertSign"):
        auth.validate_chain(leaf.cert, [inter.cert], [p.root.cert])


def test_weak_rsa_ca_is_refused() -> None:
    """RSA keys of at least 2048 bits: cryptography's rule for CAs, ours for the end entity (RFC 8247 §4.1.1)."""
    root = issue(dn((NameOID.COMMON_NAME, "RSA-1024 CA")), new_key("rsa1024"), ca=True, aki=False)
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), root)
    with pytest.raises(AuthError, match="weak"):
        auth.validate_chain(leaf.cert, [], [root.cert])
    p = make_pki("rsa2048")
    weak_leaf = issue(dn((NameOID.COMMON_NAME, "weak peer")), new_key("rsa1024"), p.inter)
    with pytest.raises(AuthError, match="1024 bits"):
        auth.validate_chain(weak_leaf.cert, [p.inter.cert], [p.root.cert])


# --------------------------------------------------------------------------- identities

DN_TEXT = "C=CH, O=strongSwan Project, CN=moon.strongswan.org"


@pytest.mark.parametrize(("text", "id_type", "data"), [
    ("192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("ipv4:192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("2001:db8::1", IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("2001:db8::1").packed),
    ("user@example.org", IdType.ID_RFC822_ADDR, b"user@example.org"),
    ("email:user@example.org", IdType.ID_RFC822_ADDR, b"user@example.org"),
    ("@@user@example.org", IdType.ID_RFC822_ADDR, b"user@example.org"),
    ("@example.org", IdType.ID_FQDN, b"example.org"),
    ("fqdn:x", IdType.ID_FQDN, b"x"),
    ("gw-a.example.net", IdType.ID_FQDN, b"gw-a.example.net"),
    ("fqdn:192.0.2.1", IdType.ID_FQDN, b"192.0.2.1"),
    ("keyid:0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
    ("keyid:#0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
    ("@#0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
    ("CN=gw-a", IdType.ID_DER_ASN1_DN, bytes.fromhex("300f310d300b0603550403130467772d61")),
])
def test_parse_identity(text: str, id_type: IdType, data: bytes) -> None:
    ident = auth.parse_identity(text)
    assert (ident.id_type, ident.data) == (id_type, data)


@pytest.mark.parametrize("subject", [
    "/C=CH/O=strongSwan Project/CN=moon.strongswan.org",
    "/C=CH/O=strongSwan Project/OU=Gateways/CN=moon.strongswan.org/emailAddress=moon@strongswan.org",
    "/CN=gw-a",
    "/C=DE/ST=Bayern/L=München/O=Beispiel GmbH/CN=Größe",
])
def test_dn_matches_openssl_encoding(openssl: str, tmp_path: Path, subject: str) -> None:
    """OpenSSL with string_mask=default types ASCII values as strongSwan does: the DER is identical.

    Non-ASCII values become T61String there and UTF8String here: still the same name.
    """
    (tmp_path / "req.cnf").write_text("[req]\ndistinguished_name=dn\nstring_mask=default\nprompt=no\n[dn]\n")
    key = write_private_pem(new_key("p256"), tmp_path / "k.pem")
    result = run(openssl, "req", "-x509", "-new", "-key", key, "-subj", subject, "-config", tmp_path / "req.cnf",
                 "-days", "1", "-utf8", "-out", tmp_path / "c.pem")
    assert result.returncode == 0, result.stderr
    cert = auth.load_certificates(tmp_path / "c.pem")[0]
    text = subject[1:].replace("/", ", ").replace("emailAddress", "E")
    der = auth.identity_from_certificate(cert).data
    if subject.isascii():
        assert auth.parse_identity(text).data == der == cert.subject.public_bytes(), text
    else:
        assert auth.parse_identity(text).data != der
        assert b"\x14\x07M\xfcnchen" in der  # T61String, which cryptography's Name parser refuses
    assert auth.identity_matches(auth.parse_identity(text), cert)
    assert auth.describe_identity(auth.identity_from_certificate(cert)) == text
    assert auth.parse_identity(subject).data == auth.parse_identity(text).data  # strongSwan's "/" form
    if not subject.isascii():
        # cryptography cannot parse such a name, so the chain cannot be validated: AuthError, nothing else
        with pytest.raises(AuthError, match="cannot be"):
            auth.validate_chain(cert, [], [cert])
        with pytest.raises(AuthError, match="cannot be"):
            auth.validate_chain(cert, [cert], [make_pki("p256").root.cert])


def test_dn_rdn_order_is_as_written() -> None:
    """strongSwan's order (first RDN first) is the reverse of RFC 4514's string order."""
    ours = auth.parse_identity(DN_TEXT)
    rfc4514 = x509.Name.from_rfc4514_string("CN=moon.strongswan.org,O=strongSwan Project,C=CH")
    assert auth.identities_equal(ours, Identification(IdType.ID_DER_ASN1_DN, rfc4514.public_bytes()))
    reversed_order = auth.parse_identity("CN=moon.strongswan.org, O=strongSwan Project, C=CH")
    assert not auth.identities_equal(ours, reversed_order)
    assert ours.data.index(b"CH") < ours.data.index(b"strongSwan Project") < ours.data.index(b"moon")


@pytest.mark.parametrize(("text", "described"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:DB8:0::1", "2001:db8::1"),
    ("user@example.org", "user@example.org"),
    ("@example.org", "example.org"),
    ("fqdn:x", "x"),
    ("fqdn:192.0.2.1", "fqdn:192.0.2.1"),
    ("fqdn:a=b", "fqdn:a=b"),
    ("fqdn:keyid:00", "fqdn:keyid:00"),
    ("email:a=b@example.org", "email:a=b@example.org"),
    ("keyid:0A0b", "keyid:0a0b"),
    (DN_TEXT, DN_TEXT),
    ("C=CH,O=strongSwan Project,CN=moon.strongswan.org", DN_TEXT),
    ("/C=CH/O=strongSwan Project/CN=moon.strongswan.org", DN_TEXT),
    ("c=CH, o=Acme\\, Inc., cn=gw", "C=CH, O=Acme\\, Inc., CN=gw"),
    ('O="Acme, Inc.", CN=  gw  ', "O=Acme\\, Inc., CN=gw"),
    ("CN=\\ padded\\ ", "CN=\\ padded\\ "),
    ("CN=\\#not-der", "CN=\\#not-der"),
    ("CN=back\\\\slash", "CN=back\\\\slash"),
    ("E=moon@strongswan.org, DC=example, UID=jdoe, SN=1234, S=Doe, G=John", None),
    ("2.5.4.3=by-oid", "CN=by-oid"),
    ("1.2.3.4=private attribute", "1.2.3.4=private attribute"),
    ("CN=Grüße", "CN=Grüße"),
    ("CN=#0c03616263", "CN=abc"),
    ("asn1dn:#3000", "asn1dn:#3000"),
])
def test_describe_identity_round_trip(text: str, described: str | None) -> None:
    ident = auth.parse_identity(text)
    shown = auth.describe_identity(ident)
    if described is not None:
        assert shown == described
    again = auth.parse_identity(shown)
    assert auth.identities_equal(again, ident)
    if not text.startswith("CN=#"):  # a raw value is shown as text, and typed again as strongSwan would
        assert (again.id_type, again.data) == (ident.id_type, ident.data)


@settings(max_examples=400)
@given(st.binary(max_size=24) | st.text("aZ09.-@:= _\\", max_size=24).map(str.encode))
def test_a_plain_host_name_is_described_as_the_round_trip_would(data: bytes) -> None:
    """describe_identity's shortcut for plain host names (no parse_identity round trip)
    gives what the round trip gives, and the text reads back as the same identity."""
    shown = auth.describe_identity(Identification(IdType.ID_FQDN, data))
    assert shown == auth._describe_name(IdType.ID_FQDN, data)
    if auth._PLAIN_HOST.fullmatch(data):  # the shortcut's names read back as themselves
        again = auth.parse_identity(shown)
        assert (again.id_type, again.data) == (IdType.ID_FQDN, data)


@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
def test_describe_certificate_subjects(pki: Callable[[str], Pki], kind: str) -> None:
    """cryptography writes UTF8String values; shown and parsed again they still name the subject."""
    cert = pki(kind).leaf.cert
    ident = auth.identity_from_certificate(cert)
    assert (ident.id_type, ident.data) == (IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())
    shown = auth.describe_identity(ident)
    assert shown == f"C=CH, O=ipsecd test, CN=gw-{kind}.example.net"
    assert auth.identity_matches(auth.parse_identity(shown), cert)
    assert auth.parse_identity(shown).data != ident.data  # PrintableString vs UTF8String


@pytest.mark.parametrize("text", [
    "", "   ", "=x", "CN=a, =b", "Foo=bar", "CN=\"open", "CN=a\\", "keyid:zz", "keyid:", "ipv4:2001:db8::1",
    "ipv6:192.0.2.1", "ipv4:host", "héllo.example", "two words", "@", "user@", "asn1dn:#0400", "CN=#zz",
])
def test_parse_identity_errors(text: str) -> None:
    with pytest.raises(AuthError):
        auth.parse_identity(text)


def test_describe_identity_of_peer_garbage_is_safe_to_log() -> None:
    samples = [
        Identification(IdType.ID_FQDN, b"evil\r\nInjected: line\x00"),
        Identification(IdType.ID_RFC822_ADDR, b"\xff\xfe@x"),
        Identification(IdType.ID_DER_ASN1_DN, b"\x30\x05\x31\x03\x30\x01"),
        Identification(IdType.ID_IPV4_ADDR, b"\x01\x02"),
        Identification(IdType.ID_NULL, b""),
        Identification(IdType.ID_DER_ASN1_GN, b"\xa0\x00"),
        Identification(IdType(250), b"\x01"),
        Identification(IdType.ID_DER_ASN1_DN, auth.parse_identity("CN=x").data[:-1] + b"\x07"),
    ]
    for ident in samples:
        shown = auth.describe_identity(ident)
        assert shown.isprintable(), shown


def test_identity_matches_each_type(pki: Callable[[str], Pki]) -> None:
    p = pki("p256")
    cert = p.leaf.cert
    yes = [
        auth.identity_from_certificate(cert),
        auth.parse_identity("C=CH, O=ipsecd test, CN=gw-p256.example.net"),  # PrintableString vs UTF8String
        auth.parse_identity("c=ch, o=IPSECD  Test, cn=GW-P256.example.net"),  # RFC 5280 §7.1 caseIgnoreMatch
        Identification.from_address(p.address),
        Identification.from_address(p.address6),
        auth.parse_identity("GW-P256.Example.NET"),
        auth.parse_identity("gw-p256.example.net."),
        auth.parse_identity(p.email),
        auth.parse_identity("Admin@GW-P256.example.net"),  # the host part ignores case (RFC 5280 §7.5)
        Identification.key_id(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest),
        Identification.key_id(hashlib.sha1(cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()),
    ]
    no = [
        auth.parse_identity("C=CH, O=ipsecd test, CN=gw-p384.example.net"),
        auth.parse_identity("C=CH, CN=gw-p256.example.net, O=ipsecd test"),
        auth.parse_identity("C=CH, O=ipsecd test"),
        auth.identity_from_certificate(p.inter.cert),
        Identification.from_address(ipaddress.IPv4Address("192.0.2.200")),
        Identification.from_address(ipaddress.IPv6Address("2001:db8::ffff")),
        Identification(IdType.ID_IPV4_ADDR, p.address6.packed),
        auth.parse_identity("other.example.net"),
        auth.parse_identity("*.example.net"),
        auth.parse_identity("admin@gw-p256.example.net"),  # the local part is case-sensitive (RFC 5280 §7.5)
        Identification.key_id(b"\x00" * 20),
        Identification(IdType.ID_NULL, b""),
        Identification(IdType.ID_DER_ASN1_DN, b"\x30\x02\x31"),
    ]
    for ident in yes:
        assert auth.identity_matches(ident, cert), auth.describe_identity(ident)
    for ident in no:
        assert not auth.identity_matches(ident, cert), auth.describe_identity(ident)
    dn_only = pki("p384").inter.cert  # a CA certificate without subjectAltName
    assert not auth.identity_matches(Identification.from_address(p.address), dn_only)
    assert auth.identity_matches(auth.identity_from_certificate(dn_only), dn_only)


def test_identity_in_subject_alt_name_directory_name(pki: Callable[[str], Pki]) -> None:
    p = pki("p256")
    alias = dn((NameOID.ORGANIZATION_NAME, "Alias"), (NameOID.COMMON_NAME, "gw"))
    leaf = issue(dn((NameOID.COMMON_NAME, "peer")), new_key("p256"), p.inter, san=[x509.DirectoryName(alias)])
    assert auth.identity_matches(auth.parse_identity("O=Alias, CN=gw"), leaf.cert)


def test_identities_equal() -> None:
    pairs_equal = [("Gw.Example.Net.", "gw.example.net"), ("a@EXAMPLE.org", "a@example.org"),
                   (DN_TEXT, "c=ch,o=STRONGSWAN PROJECT,cn=moon.strongswan.org"), ("keyid:01", "@#01"),
                   ("192.0.2.1", "ipv4:192.0.2.1")]
    pairs_differ = [("A@example.org", "a@example.org"), ("gw.example.net", "gw@example.net"),
                    ("keyid:01", "keyid:02"), (DN_TEXT, "C=CH, O=strongSwan Project"), ("192.0.2.1", "192.0.2.2")]
    for a, b in pairs_equal:
        assert auth.identities_equal(auth.parse_identity(a), auth.parse_identity(b)), (a, b)
    for a, b in pairs_differ:
        assert not auth.identities_equal(auth.parse_identity(a), auth.parse_identity(b)), (a, b)


# --------------------------------------------------------------------------- CERT, CERTREQ, expiry


def test_certreq_is_sha1_of_each_ca_spki(pki: Callable[[str], Pki]) -> None:
    roots = [pki("rsa2048").root.cert, pki("p384").root.cert, pki("ed25519").root.cert]
    request = auth.certreq([*roots, roots[0]])  # a CA listed twice is named once
    assert isinstance(request, CERTREQ)
    assert request.encoding == CertEncoding.X509_SIGNATURE
    expected = [hashlib.sha1(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest() for cert in roots]
    assert request.data == b"".join(expected)
    assert request.authorities() == expected
    assert [auth.spki_sha1(cert) for cert in roots] == expected


def test_cert_payloads_round_trip(pki: Callable[[str], Pki]) -> None:
    p = pki("rsa2048")
    chain = [p.leaf.cert, p.inter.cert]
    payloads = auth.cert_payloads(chain)
    assert [c.encoding for c in payloads] == [CertEncoding.X509_SIGNATURE] * 2
    assert payloads[0].data == p.leaf.cert.public_bytes(serialization.Encoding.DER)
    first, encoded = encode_payloads([*payloads, CERT(CertEncoding.HASH_URL_X509_CERT, b"\x00" * 20 + b"http://x")])
    decoded = [q for q in decode_payloads(first, encoded) if isinstance(q, CERT)]
    assert auth.certificates_from_payloads(decoded) == chain
    with pytest.raises(AuthError, match="CERT payload 2"):
        auth.certificates_from_payloads([payloads[0], CERT(CertEncoding.X509_SIGNATURE, b"\x30\x00")])


def test_not_after(pki: Callable[[str], Pki]) -> None:
    end = dt.datetime(2031, 5, 17, 12, 30, tzinfo=UTC)
    cert = issue(dn((NameOID.COMMON_NAME, "expiry")), new_key("p256"), pki("p256").inter, not_after=end).cert
    assert auth.not_after(cert) == end.timestamp() == calendar.timegm((2031, 5, 17, 12, 30, 0))


# --------------------------------------------------------------------------- strongSwan's pki


PKI_TOOL = shutil.which("pki")


def test_certificates_made_by_strongswan_pki(tmp_path: Path) -> None:
    # make test installs strongswan-pki; without it this fails rather than skipping
    assert PKI_TOOL is not None, "strongSwan's pki tool is missing (Debian package strongswan-pki)"

    def pki_tool(*args: str | Path) -> bytes:
        result = subprocess.run([PKI_TOOL, *map(str, args)], capture_output=True, check=False, timeout=60)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    ca_key = tmp_path / "ca.key"
    ca_key.write_bytes(pki_tool("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    ca_dn = "C=CH, O=strongSwan Project, CN=strongSwan Root CA"
    (tmp_path / "ca.pem").write_bytes(pki_tool("--self", "--ca", "--lifetime", "3650", "--in", ca_key,
                                               "--type", "ecdsa", "--dn", ca_dn, "--outform", "pem"))
    moon_key = tmp_path / "moon.key"
    moon_key.write_bytes(pki_tool("--gen", "--type", "rsa", "--size", "3072", "--outform", "pem"))
    moon_dn = "C=CH, O=strongSwan Project, CN=moon.strongswan.org"
    (tmp_path / "moon.pub").write_bytes(pki_tool("--pub", "--in", moon_key, "--type", "rsa", "--outform", "pem"))
    (tmp_path / "moon.pem").write_bytes(pki_tool(
        "--issue", "--cacert", tmp_path / "ca.pem", "--cakey", ca_key, "--in", tmp_path / "moon.pub",
        "--type", "pub", "--dn", moon_dn, "--lifetime", "365", "--outform", "pem"))
    (tmp_path / "sun.pem").write_bytes(pki_tool(
        "--issue", "--cacert", tmp_path / "ca.pem", "--cakey", ca_key, "--in", tmp_path / "moon.pub",
        "--type", "pub", "--dn", "C=CH, O=strongSwan Project, CN=sun.strongswan.org",
        "--san", "sun.strongswan.org", "--san", "192.0.2.2", "--flag", "serverAuth", "--flag", "ikeIntermediate",
        "--outform", "pem"))
    (ca,) = auth.load_certificates(tmp_path / "ca.pem")
    (moon,) = auth.load_certificates(tmp_path / "moon.pem")
    (sun,) = auth.load_certificates(tmp_path / "sun.pem")
    auth.validate_chain(moon, [], [ca])
    auth.validate_chain(sun, [], [ca])
    # pki types the DN as we do: the configured identity is byte-equal to the subject
    assert auth.parse_identity(moon_dn).data == moon.subject.public_bytes()
    assert auth.describe_identity(auth.identity_from_certificate(moon)) == moon_dn
    assert auth.identity_matches(auth.parse_identity(moon_dn), moon)
    assert auth.identity_matches(auth.parse_identity("sun.strongswan.org"), sun)
    assert auth.identity_matches(auth.parse_identity("192.0.2.2"), sun)
    assert auth.certreq([ca]).data == hashlib.sha1(ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    os.chmod(moon_key, 0o600)
    key = auth.load_private_key(moon_key)
    auth.verify(auth.sign(key, OCTETS, peer_hashes=auth.SUPPORTED_HASHES), OCTETS, moon)
