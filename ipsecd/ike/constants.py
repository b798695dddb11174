"""IKEv2 IANA registries ("Internet Key Exchange Version 2 (IKEv2) Parameters").

One open IntEnum per registry, built on :class:`ipsecd.iana._OpenEnum`: a
value we have no name for (a private-use notify, a transform id assigned
after this was written) becomes a pseudo member named ``<REGISTRY>_<value>``
instead of an error, so it survives a decode/encode round trip and can be
logged and refused by number.  The encryption and integrity transform ids
are the ones ESP uses too and live in :mod:`ipsecd.iana` (``EncrId``,
``IntegId``); they are re-exported here so IKE code imports one module.

Member names follow the RFC text (``IDi``, ``TSr``, ``NAT_DETECTION_SOURCE_IP``)
so that a reader can grep the RFC for them.
"""

from __future__ import annotations

from enum import IntFlag

from ipsecd.iana import EncrId, IntegId, IpcompId, _OpenEnum

__all__ = [
    "IKE_HEADER_LENGTH",
    "IKE_MAJOR_VERSION",
    "AuthMethod",
    "CertEncoding",
    "CfgType",
    "ConfigAttributeType",
    "DhGroup",
    "EncrId",
    "EsnId",
    "ExchangeType",
    "HeaderFlag",
    "IdType",
    "IntegId",
    "IpcompId",
    "NotifyType",
    "PayloadType",
    "PrfId",
    "ProtocolId",
    "SignatureHashAlgorithm",
    "TransformAttributeType",
    "TransformType",
    "TsType",
    "transform_id",
]

IKE_MAJOR_VERSION = 2  # RFC 7296 §3.1
IKE_HEADER_LENGTH = 28  # RFC 7296 §3.1: two SPIs, five octets of fields, message ID, length


class HeaderFlag(IntFlag):
    """Flags octet of the IKE header (RFC 7296 §3.1); the other bits are reserved."""

    INITIATOR = 0x08  # I: sent by the original initiator of the IKE SA
    VERSION = 0x10  # V: the sender can speak a higher major version
    RESPONSE = 0x20  # R: this message is a response


class ExchangeType(_OpenEnum):
    """Exchange types (RFC 7296 §3.1 and later RFCs); 240-255 are private use."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370


class PayloadType(_OpenEnum):
    """Next Payload types (RFC 7296 §3.2, RFC 7383); 128-255 are private use."""

    NONE = 0  # no next payload
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40  # Ni, Nr
    NOTIFY = 41  # N
    DELETE = 42  # D
    VENDOR_ID = 43  # V
    TSi = 44
    TSr = 45
    SK = 46  # Encrypted and Authenticated
    CP = 47  # Configuration
    EAP = 48
    GSPM = 49  # RFC 6467 Generic Secure Password Methods
    SKF = 53  # RFC 7383 Encrypted and Authenticated Fragment
    PS = 54  # RFC 8019 Puzzle Solution


class ProtocolId(_OpenEnum):
    """Security Protocol Identifiers (RFC 7296 §3.3.1); 0 where an SPI is absent (§3.10)."""

    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(_OpenEnum):
    """Transform types (RFC 7296 §3.3.2, RFC 9370); 241-255 are private use."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4  # "Key Exchange Method" since RFC 9370
    ESN = 5
    ADDKE1 = 6  # RFC 9370 Additional Key Exchange 1..7
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class TransformAttributeType(_OpenEnum):
    """Transform attribute types (RFC 7296 §3.3.5); 16384-32767 are private use."""

    KEY_LENGTH = 14  # in bits, TV format


class PrfId(_OpenEnum):
    """Transform Type 2 - Pseudorandom Function Transform IDs (RFC 7296 §3.3.2, RFC 4868)."""

    PRF_HMAC_MD5 = 1
    PRF_HMAC_SHA1 = 2
    PRF_HMAC_TIGER = 3
    PRF_AES128_XCBC = 4  # RFC 4434
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7
    PRF_AES128_CMAC = 8  # RFC 4615


class DhGroup(_OpenEnum):
    """Transform Type 4 - Key Exchange Method Transform IDs (RFC 7296 §3.3.2, RFC 3526, RFC 5903, RFC 8031)."""

    NONE = 0
    MODP_768 = 1  # RFC 7296 Appendix B.1
    MODP_1024 = 2  # RFC 7296 Appendix B.2
    MODP_1536 = 5  # RFC 3526 §2
    MODP_2048 = 14  # RFC 3526 §3
    MODP_3072 = 15  # RFC 3526 §4
    MODP_4096 = 16  # RFC 3526 §5
    MODP_6144 = 17  # RFC 3526 §6
    MODP_8192 = 18  # RFC 3526 §7
    ECP_256 = 19  # RFC 5903
    ECP_384 = 20
    ECP_521 = 21
    MODP_1024_160 = 22  # RFC 5114 (DSA-style groups, see RFC 6989 §2.2)
    MODP_2048_224 = 23
    MODP_2048_256 = 24
    ECP_192 = 25
    ECP_224 = 26
    BRAINPOOL_P224R1 = 27  # RFC 6954
    BRAINPOOL_P256R1 = 28
    BRAINPOOL_P384R1 = 29
    BRAINPOOL_P512R1 = 30
    CURVE25519 = 31  # RFC 8031
    CURVE448 = 32


class EsnId(_OpenEnum):
    """Transform Type 5 - Extended Sequence Numbers Transform IDs (RFC 7296 §3.3.2)."""

    NO_ESN = 0
    ESN = 1


class NotifyType(_OpenEnum):
    """Notify Message Types (RFC 7296 §3.10.1 and later RFCs).

    Below 16384 the type is an error, from 16384 on a status; 8192-16383
    and 40960-65535 are private use.
    """

    # Errors (RFC 7296 §3.10.1 unless noted)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    UNACCEPTABLE_ADDRESSES = 40  # RFC 4555
    UNEXPECTED_NAT_DETECTED = 41  # RFC 4555
    USE_ASSIGNED_HoA = 42  # RFC 5026
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INVALID_GROUP_ID = 45  # G-IKEv2
    AUTHORIZATION_FAILED = 46
    STATE_NOT_FOUND = 47  # RFC 9370
    # Status
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    AUTH_LIFETIME = 16403  # RFC 4478
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    TICKET_LT_OPAQUE = 16409  # RFC 5723
    TICKET_REQUEST = 16410
    TICKET_ACK = 16411
    TICKET_NACK = 16412
    TICKET_OPAQUE = 16413
    LINK_ID = 16414  # RFC 5739
    USE_WESP_MODE = 16415  # RFC 5840
    ROHC_SUPPORTED = 16416  # RFC 5857
    EAP_ONLY_AUTHENTICATION = 16417  # RFC 5998
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    QUICK_CRASH_DETECTION = 16419  # RFC 6290
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420  # RFC 6311
    IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED = 16421
    IKEV2_MESSAGE_ID_SYNC = 16422
    IPSEC_REPLAY_COUNTER_SYNC = 16423
    SECURE_PASSWORD_METHODS = 16424  # RFC 6467
    PSK_PERSIST = 16425  # RFC 6631
    PSK_CONFIRM = 16426
    ERX_SUPPORTED = 16427  # RFC 6867
    IFOM_CAPABILITY = 16428
    SENDER_REQUEST_ID = 16429
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427
    CLONE_IKE_SA_SUPPORTED = 16432  # RFC 7791
    CLONE_IKE_SA = 16433
    PUZZLE = 16434  # RFC 8019
    USE_PPK = 16435  # RFC 8784
    PPK_IDENTITY = 16436
    NO_PPK_AUTH = 16437
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    IP4_ALLOWED = 16439  # RFC 8983
    IP6_ALLOWED = 16440
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370
    USE_AGGFRAG = 16442  # RFC 9347

    @property
    def is_error(self) -> bool:
        """True for error types (below 16384, RFC 7296 §3.10.1)."""
        return int(self) < 16384


class IdType(_OpenEnum):
    """Identification payload ID types (RFC 7296 §3.5); 249-255 are private use."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11
    ID_FC_NAME = 12  # RFC 4595
    ID_NULL = 13  # RFC 7619


class AuthMethod(_OpenEnum):
    """IKEv2 Authentication Method (RFC 7296 §3.8, RFC 4754, RFC 7427); 201-255 private use."""

    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MIC = 2  # Shared Key Message Integrity Code
    DSS_DIGITAL_SIGNATURE = 3
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    GENERIC_SECURE_PASSWORD = 12  # RFC 6467
    NULL_AUTH = 13  # RFC 7619
    DIGITAL_SIGNATURE = 14  # RFC 7427


class CertEncoding(_OpenEnum):
    """Certificate Encoding (RFC 7296 §3.6); 201-255 are private use."""

    PKCS7_X509 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    KERBEROS_TOKEN = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10
    RAW_RSA_KEY = 11  # deprecated by RFC 7296
    HASH_URL_X509_CERT = 12
    HASH_URL_X509_BUNDLE = 13
    OCSP_CONTENT = 14  # RFC 4806
    RAW_PUBLIC_KEY = 15  # RFC 7670


class TsType(_OpenEnum):
    """Traffic selector types (RFC 7296 §3.13.1); 241-255 are private use."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8
    TS_FC_ADDR_RANGE = 9  # RFC 4595
    TS_SECLABEL = 10  # RFC 9478


class CfgType(_OpenEnum):
    """Configuration payload CFG types (RFC 7296 §3.15)."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class ConfigAttributeType(_OpenEnum):
    """Configuration payload attribute types (RFC 7296 §3.15.1 and later); 16384-32767 private use."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    MIP6_HOME_PREFIX = 16  # RFC 5026
    INTERNAL_IP6_LINK = 17  # RFC 5739
    INTERNAL_IP6_PREFIX = 18
    HOME_AGENT_ADDRESS = 19  # RFC 5555
    P_CSCF_IP4_ADDRESS = 20  # RFC 7651
    P_CSCF_IP6_ADDRESS = 21
    INTERNAL_DNS_DOMAIN = 25  # RFC 8598
    INTERNAL_DNSSEC_TA = 26


class SignatureHashAlgorithm(_OpenEnum):
    """Hash algorithms of the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4, RFC 8420)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420 (EdDSA)


# The registry of the Transform ID depends on the transform type (RFC 7296 §3.3.2).
_TRANSFORM_ID_ENUMS: dict[int, type[_OpenEnum]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
    **{t: DhGroup for t in range(TransformType.ADDKE1, TransformType.ADDKE7 + 1)},
}


def transform_id(transform_type: int, value: int) -> int:
    """``value`` as a member of the registry of ``transform_type`` (a plain int when unknown)."""
    enum = _TRANSFORM_ID_ENUMS.get(int(transform_type))
    if enum is None:
        return int(value)
    return value if type(value) is enum else enum.of(value)  # already one: nothing to look up
