"""The IKEv2 message codec (ipsecd.ike.messages, RFC 7296 §3).

A real IKE_SA_INIT exchange (Wireshark's test capture, see ike_vectors.py)
is decoded field by field and re-encoded to the same octets; every payload
type round-trips; unknown payloads, code points and the critical bit follow
RFC 7296 §2.5; every length guard refuses what it should with the error
code it should.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from ike_vectors import (
    CAPTURE_INFORMATIONAL_REQUEST,
    CAPTURE_INITIATOR,
    CAPTURE_RESPONDER,
    CAPTURE_SA_INIT_REQUEST,
    CAPTURE_SA_INIT_RESPONSE,
)

from ipsecd.ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgType,
    ConfigAttributeType,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    IdType,
    IntegId,
    IpcompId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    SignatureHashAlgorithm,
    TransformAttributeType,
    TransformType,
    TsType,
)
from ipsecd.ike.errors import (
    IkeLocalError,
    IkeProtocolError,
    InvalidMajorVersionError,
    UnsupportedCriticalPayloadError,
)
from ipsecd.ike.messages import (
    AUTH,
    CERT,
    CERTREQ,
    CP,
    EAP,
    KE,
    SA,
    SK,
    SKF,
    ConfigAttribute,
    Delete,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    RawTrafficSelector,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TSi,
    TSr,
    UnknownPayload,
    VendorID,
    decode,
    decode_header,
    decode_payloads,
    encode,
    encode_payloads,
    identification_body,
    nat_detection_hash,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")
V4 = ipaddress.ip_address


def ike_sa_proposal() -> Proposal:
    return Proposal(1, ProtocolId.IKE, b"", [
        Transform.make(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform.make(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128),
        Transform.make(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
        Transform.make(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
        Transform.make(TransformType.DH, DhGroup.CURVE25519),
        Transform.make(TransformType.DH, DhGroup.MODP_2048),
    ])


def every_payload() -> list[Payload]:
    """One of each payload type, with unknown code points and both attribute formats."""
    return [
        SA([
            ike_sa_proposal(),
            Proposal(2, ProtocolId.ESP, b"\xca\xfe\xba\xbe", [
                Transform(TransformType.ENCR, 0x9999),  # unknown ENCR id
                Transform(TransformType.ESN, EsnId.ESN),
                Transform(TransformType(250), 7, [  # private-use transform type
                    TransformAttribute(TransformAttributeType(16400), b"opaque TLV value"),
                    TransformAttribute(TransformAttributeType(16401), 0x1234),
                ]),
            ]),
        ]),
        KE(DhGroup.CURVE25519, bytes(range(32))),
        IDi.fqdn("moon.example.org"),
        IDr.from_address(V4("192.0.2.7")),
        CERT(CertEncoding.X509_SIGNATURE, b"0\x82certificate"),
        CERTREQ(CertEncoding.X509_SIGNATURE, bytes(20) + bytes(range(20))),
        AUTH(AuthMethod.SHARED_KEY_MIC, bytes(32)),
        Nonce(bytes(range(16, 48))),
        Notify.status(NotifyType.INITIAL_CONTACT),
        Notify(NotifyType(40960), b"private use status"),
        Notify(NotifyType(8192), b"private use error"),
        Notify.rekey_sa(ProtocolId.ESP, b"\x01\x02\x03\x04"),
        Delete(ProtocolId.ESP, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]),
        Delete(ProtocolId.IKE),
        VendorID(b"ipsecd"),
        TSi([
            TrafficSelector.from_network(ipaddress.ip_network("10.1.0.0/16")),
            TrafficSelector(V4("2001:db8::1"), V4("2001:db8::ff"), 6, 443, 443),
            RawTrafficSelector(TsType.TS_SECLABEL, 0, b"system_u:object_r:ipsec_spd_t:s0"),
        ]),
        TSr([TrafficSelector(V4("10.2.0.0"), V4("10.2.255.255"), 17, 500, 4500)]),
        CP(CfgType.CFG_REQUEST, [
            ConfigAttribute(ConfigAttributeType.INTERNAL_IP4_ADDRESS),
            ConfigAttribute(ConfigAttributeType.INTERNAL_IP4_DNS, bytes(4)),
            ConfigAttribute(ConfigAttributeType(20000), b"private"),
        ]),
        EAP(b"\x01\x07\x00\x05\x01"),
        UnknownPayload(PayloadType(200), b"skip me"),
        SK(PayloadType.IDi, bytes(48)),
    ]


def message(
    payloads: list[Payload], *, exchange_type: ExchangeType = ExchangeType.IKE_AUTH, message_id: int = 1,
    spi_i: bytes = SPI_I, minor_version: int = 0,
) -> Message:
    return Message(spi_i, SPI_R, exchange_type, message_id, initiator=True, payloads=payloads,
                   minor_version=minor_version)


def invalid_syntax(data: bytes) -> IkeProtocolError:
    with pytest.raises(IkeProtocolError) as info:
        decode(data)
    assert info.value.code == NotifyType.INVALID_SYNTAX, info.value
    return info.value


def raw_message(chain: bytes, first: int, *, exchange: int = 34, flags: int = 0x08,
                version: int = 0x20, length: int | None = None) -> bytes:
    """A header in front of hand-made payload octets (for malformed inputs)."""
    total = 28 + len(chain) if length is None else length
    return struct.pack("!8s8sBBBBII", SPI_I, SPI_R, first, version, exchange, flags, 0, total) + chain


def generic(next_payload: int, body: bytes, critical: bool = False) -> bytes:
    return struct.pack("!BBH", next_payload, 0x80 if critical else 0, 4 + len(body)) + body


# --------------------------------------------------------------------------- a real exchange


def test_capture_sa_init_request_decodes_field_by_field() -> None:
    msg = decode(CAPTURE_SA_INIT_REQUEST)
    assert msg.spi_i == bytes.fromhex("ea684d21597afd36") and msg.spi_r == bytes(8)
    assert (msg.exchange_type, msg.message_id, msg.initiator, msg.response) == (
        ExchangeType.IKE_SA_INIT, 0, True, False)
    assert [p.payload_type for p in msg.payloads] == [
        PayloadType.SA, PayloadType.KE, PayloadType.NONCE, PayloadType.NOTIFY, PayloadType.NOTIFY,
        PayloadType.NOTIFY]
    sa, ke, nonce, nat_src, nat_dst, hashes = msg.payloads
    assert isinstance(sa, SA) and isinstance(ke, KE) and isinstance(nonce, Nonce)
    (proposal,) = sa.proposals
    assert (proposal.number, proposal.protocol, proposal.spi) == (1, ProtocolId.IKE, b"")
    assert [(t.type, t.id, t.key_length) for t in proposal.transforms] == [
        (TransformType.ENCR, EncrId.ENCR_AES_CCM_12, 128),
        (TransformType.PRF, PrfId.PRF_HMAC_SHA2_256, None),
        (TransformType.DH, DhGroup.ECP_256, None),
    ]
    assert ke.group == DhGroup.ECP_256 and len(ke.data) == 64  # RFC 5903 §7: x | y
    assert len(nonce.data) == 32
    assert isinstance(nat_src, Notify) and nat_src.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
    assert isinstance(nat_dst, Notify) and nat_dst.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP
    assert isinstance(hashes, Notify) and hashes.hash_algorithms() == [
        SignatureHashAlgorithm.SHA1, SignatureHashAlgorithm.SHA2_256,
        SignatureHashAlgorithm.SHA2_384, SignatureHashAlgorithm.SHA2_512]
    assert encode(msg) == CAPTURE_SA_INIT_REQUEST


def test_capture_sa_init_response_decodes_and_reencodes() -> None:
    msg = decode(CAPTURE_SA_INIT_RESPONSE)
    assert msg.spi_r == bytes.fromhex("d9fe2ab22dac23ac")
    assert (msg.initiator, msg.response) == (False, True)
    assert msg.notifies()[-1].notify_type == NotifyType.MULTIPLE_AUTH_SUPPORTED
    assert encode(msg) == CAPTURE_SA_INIT_RESPONSE


def test_capture_nat_detection_hashes() -> None:
    """RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | Port), checked against the captured notifies."""
    initiator, responder = V4(CAPTURE_INITIATOR), V4(CAPTURE_RESPONDER)
    request, response = decode(CAPTURE_SA_INIT_REQUEST), decode(CAPTURE_SA_INIT_RESPONSE)
    req_src, req_dst = request.notifies()[:2]
    assert req_src.data == nat_detection_hash(request.spi_i, request.spi_r, initiator, 500)
    assert req_dst.data == nat_detection_hash(request.spi_i, request.spi_r, responder, 500)
    resp_src, resp_dst = response.notifies()[:2]
    assert resp_src.data == nat_detection_hash(response.spi_i, response.spi_r, responder, 500)
    assert resp_dst.data == nat_detection_hash(response.spi_i, response.spi_r, initiator, 500)
    built = Notify.nat_detection(NotifyType.NAT_DETECTION_SOURCE_IP, request.spi_i, request.spi_r, initiator, 500)
    assert built == req_src


def test_capture_header_only() -> None:
    header = decode_header(CAPTURE_INFORMATIONAL_REQUEST)
    assert header.next_payload == PayloadType.SK and header.exchange_type == ExchangeType.INFORMATIONAL
    assert header.message_id == 2 and header.initiator and not header.response
    assert header.length == len(CAPTURE_INFORMATIONAL_REQUEST)


# --------------------------------------------------------------------------- round trips


def test_every_payload_type_round_trips() -> None:
    original = message(every_payload())
    data = encode(original)
    decoded = decode(data)
    assert decoded == original
    assert encode(decoded) == data
    assert {type(p) for p in decoded.payloads} >= {
        SA, KE, IDi, IDr, CERT, CERTREQ, AUTH, Nonce, Notify, Delete, VendorID, TSi, TSr, CP, EAP,
        UnknownPayload, SK}


def test_skf_round_trips() -> None:
    original = message([SKF(PayloadType.IDi, 1, 3, bytes(40))])
    assert decode(encode(original)) == original
    later = message([SKF(PayloadType.NONE, 3, 3, bytes(40))])
    assert decode(encode(later)) == later


def test_inner_chain_round_trips() -> None:
    inner = every_payload()[:-1]  # everything but SK
    first, data = encode_payloads(inner)
    assert first == PayloadType.SA
    assert decode_payloads(first, data) == inner
    assert encode_payloads([]) == (PayloadType.NONE, b"")


def test_unknown_code_points_survive() -> None:
    msg = message([Notify(NotifyType(65000), b"x")], exchange_type=ExchangeType(250), minor_version=3)
    decoded = decode(encode(msg))
    assert decoded.exchange_type == 250 and decoded.exchange_type.name == "EXCHANGETYPE_250"
    assert decoded.payloads[0] == Notify(NotifyType(65000), b"x")
    assert decoded.minor_version == 3


def test_unknown_transform_ids_keep_their_number() -> None:
    (sa,) = decode(encode(message([every_payload()[0]]))).payloads
    assert isinstance(sa, SA)
    esp = sa.proposals[1]
    assert esp.transforms[0].id == 0x9999 and isinstance(esp.transforms[0].id, EncrId)
    assert esp.transforms[2].type == 250 and esp.transforms[2].id == 7
    assert esp.transforms[2].attributes[0].value == b"opaque TLV value"
    assert esp.transforms[2].attributes[1].value == 0x1234


# --------------------------------------------------------------------------- RFC 7296 §2.5


def test_unknown_noncritical_payload_is_kept() -> None:
    chain = generic(PayloadType.NONCE, b"future payload", critical=False) + generic(0, bytes(16))
    decoded = decode(raw_message(chain, 210))
    assert decoded.payloads == [UnknownPayload(PayloadType(210), b"future payload"), Nonce(bytes(16))]
    assert encode(decoded) == raw_message(chain, 210)


def test_unknown_critical_payload_is_rejected() -> None:
    chain = generic(0, b"must understand", critical=True)
    with pytest.raises(UnsupportedCriticalPayloadError) as info:
        decode(raw_message(chain, 211))
    assert info.value.code == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert int(info.value.code) == 1
    assert info.value.data == bytes([211])  # §3.10.1: the one-octet payload type
    assert info.value.payload_type == 211


def test_unknown_critical_payload_inside_sk_is_rejected() -> None:
    with pytest.raises(UnsupportedCriticalPayloadError):
        decode_payloads(212, generic(0, b"", critical=True))


def test_critical_bit_on_known_payload_is_ignored_but_kept() -> None:
    chain = generic(0, bytes(16), critical=True)
    decoded = decode(raw_message(chain, PayloadType.NONCE))
    assert decoded.payloads == [Nonce(bytes(16), critical=True)]
    assert encode(decoded) == raw_message(chain, PayloadType.NONCE)


# --------------------------------------------------------------------------- header checks


def test_header_checks() -> None:
    invalid_syntax(b"")
    invalid_syntax(CAPTURE_SA_INIT_REQUEST[:27])
    invalid_syntax(CAPTURE_SA_INIT_REQUEST + b"\x00")  # length field disagrees with the datagram
    invalid_syntax(CAPTURE_SA_INIT_REQUEST[:-1])
    with pytest.raises(InvalidMajorVersionError) as info:
        decode(raw_message(b"", 0, version=0x10))  # IKEv1
    assert info.value.major_version == 1 and info.value.code == NotifyType.INVALID_MAJOR_VERSION
    with pytest.raises(InvalidMajorVersionError):
        decode(raw_message(b"", 0, version=0x30))
    empty = decode(raw_message(b"", 0, flags=0xFF))  # reserved flag bits are ignored
    assert empty.payloads == [] and empty.initiator and empty.response and empty.version_flag


# --------------------------------------------------------------------------- length guards


def test_payload_length_guards() -> None:
    invalid_syntax(raw_message(struct.pack("!BBH", 0, 0, 3), PayloadType.VENDOR_ID))  # < 4
    invalid_syntax(raw_message(struct.pack("!BBH", 0, 0, 9) + b"abc", PayloadType.VENDOR_ID))  # too long
    invalid_syntax(raw_message(generic(0, b"v") + b"trailing", PayloadType.VENDOR_ID))
    invalid_syntax(raw_message(generic(PayloadType.VENDOR_ID, b"v"), PayloadType.VENDOR_ID))  # chain runs out
    invalid_syntax(raw_message(b"\x00\x00", PayloadType.VENDOR_ID))  # half a generic header


def sa_body(proposals: bytes) -> bytes:
    return raw_message(generic(0, proposals), PayloadType.SA)


def proposal_octets(transforms: bytes, count: int, last: int = 0, spi: bytes = b"") -> bytes:
    return struct.pack("!BBHBBBB", last, 0, 8 + len(spi) + len(transforms), 1, 1, len(spi), count) + spi + transforms


def transform_octets(last: int = 0, attributes: bytes = b"", kind: int = 1, ident: int = 12) -> bytes:
    return struct.pack("!BBHBBH", last, 0, 8 + len(attributes), kind, 0, ident) + attributes


def test_sa_nesting_guards() -> None:
    good = transform_octets(0, struct.pack("!HH", 0x800E, 128))
    assert decode(sa_body(proposal_octets(good, 1))).payloads[0] == SA([
        Proposal(1, ProtocolId.IKE, b"", [Transform.make(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128)])])
    invalid_syntax(sa_body(proposal_octets(good, 2)))  # count says 2, one present
    invalid_syntax(sa_body(proposal_octets(good + good, 1)))  # leftover transform
    invalid_syntax(sa_body(proposal_octets(transform_octets(3), 1)))  # 'more' on the last transform
    invalid_syntax(sa_body(proposal_octets(transform_octets(1), 1)))  # 'last' must be 0 or 3
    invalid_syntax(sa_body(proposal_octets(good, 1, last=2)))  # 'more' on the last proposal
    invalid_syntax(sa_body(proposal_octets(good, 1, last=1)))
    invalid_syntax(sa_body(proposal_octets(good, 1) + proposal_octets(good, 1)))  # first says last
    invalid_syntax(sa_body(proposal_octets(good, 1, spi=b"\x01\x02\x03")[:-2]))  # SPI runs into transforms
    invalid_syntax(sa_body(proposal_octets(transform_octets(0, struct.pack("!HH", 0x000E, 5) + b"ab"), 1)))
    invalid_syntax(sa_body(proposal_octets(transform_octets(0, b"\x80"), 1)))  # half an attribute
    broken = bytearray(proposal_octets(good, 1))
    broken[2:4] = b"\x00\x07"  # proposal length < 8
    invalid_syntax(sa_body(bytes(broken)))
    broken = bytearray(proposal_octets(good, 1))
    broken[10:12] = b"\x00\x07"  # transform length < 8
    invalid_syntax(sa_body(bytes(broken)))


def test_payload_body_guards() -> None:
    def body(kind: int, octets: bytes) -> bytes:
        return raw_message(generic(0, octets), kind)

    invalid_syntax(body(PayloadType.KE, b"\x00\x13\x00"))
    invalid_syntax(body(PayloadType.IDi, b"\x02\x00"))
    invalid_syntax(body(PayloadType.AUTH, b"\x02"))
    invalid_syntax(body(PayloadType.NONCE, bytes(15)))  # RFC 7296 §3.9: 16..256 octets
    invalid_syntax(body(PayloadType.NONCE, bytes(257)))
    invalid_syntax(body(PayloadType.NOTIFY, b"\x03\x04\x40\x00\x01"))  # SPI of 4 in 1 octet
    invalid_syntax(body(PayloadType.DELETE, b"\x03\x04\x00\x02" + bytes(7)))  # 2 SPIs of 4 in 7 octets
    invalid_syntax(body(PayloadType.DELETE, b"\x01\x00\x00\x01"))  # SPIs of size 0
    invalid_syntax(body(PayloadType.CERT, b""))
    ts4 = struct.pack("!BBHHH", 7, 0, 16, 0, 65535) + bytes(8)
    assert decode(body(PayloadType.TSi, b"\x01\x00\x00\x00" + ts4)).payloads[0] == TSi(
        [TrafficSelector(V4("0.0.0.0"), V4("0.0.0.0"))])
    invalid_syntax(body(PayloadType.TSi, b"\x02\x00\x00\x00" + ts4))  # count 2, one present
    invalid_syntax(body(PayloadType.TSi, b"\x01\x00\x00\x00" + ts4 + b"x"))
    invalid_syntax(body(PayloadType.TSi, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 40, 0, 0) + bytes(32)))
    invalid_syntax(body(PayloadType.TSi, b"\x01\x00\x00\x00" + struct.pack("!BBH", 9, 0, 3)))
    invalid_syntax(body(PayloadType.CP, b"\x01\x00\x00\x00\x00\x01\x00\x04\x00"))  # value runs out
    invalid_syntax(body(PayloadType.SKF, b"\x00\x00\x00\x01"))  # fragment 0
    invalid_syntax(body(PayloadType.SKF, b"\x00\x03\x00\x02"))  # fragment 3 of 2
    invalid_syntax(body(PayloadType.SKF, b"\x00\x01"))


def test_sk_must_be_last() -> None:
    chain = generic(PayloadType.NONCE, bytes(20))  # SK whose own length leaves octets behind
    invalid_syntax(raw_message(chain + generic(0, bytes(16)), PayloadType.SK))
    sk = generic(PayloadType.VENDOR_ID, bytes(8))
    with pytest.raises(IkeProtocolError):
        decode_payloads(PayloadType.SK, sk)  # no SK inside SK
    decoded = decode(raw_message(generic(PayloadType.SK, b"vendor") + sk, PayloadType.VENDOR_ID))
    assert decoded.payloads == [VendorID(b"vendor"), SK(PayloadType.VENDOR_ID, bytes(8))]


# --------------------------------------------------------------------------- encoder misuse


def test_encoder_refuses_what_does_not_fit() -> None:
    with pytest.raises(IkeLocalError):
        encode(message([SK(PayloadType.NONE), VendorID(b"x")]))  # SK not last
    with pytest.raises(IkeLocalError):
        encode_payloads([SK(PayloadType.NONE)])
    with pytest.raises(IkeLocalError):
        encode(message([VendorID(bytes(70000))]))
    with pytest.raises(IkeLocalError):
        encode(message([], message_id=2**32))
    with pytest.raises(IkeLocalError):
        encode(message([], spi_i=b"short"))
    with pytest.raises(IkeLocalError):
        encode(message([Nonce(bytes(8))]))
    with pytest.raises(IkeLocalError):
        encode(message([Delete(ProtocolId.ESP, [b"\x01\x02\x03\x04", b"\x01"])]))
    with pytest.raises(IkeLocalError):
        encode(message([TSi([TrafficSelector(V4("10.0.0.1"), V4("::1"))])]))
    with pytest.raises(IkeLocalError):
        encode(message([SKF(PayloadType.NONE, 0, 1)]))
    with pytest.raises(IkeLocalError):
        encode(message([KE(DhGroup(70000), b"")]))


# --------------------------------------------------------------------------- typed notifies and helpers


def test_typed_notifies() -> None:
    ke = Notify.invalid_ke_payload(DhGroup.ECP_256)
    assert ke.data == b"\x00\x13" and ke.is_error and ke.dh_group() == DhGroup.ECP_256
    assert Notify.cookie(b"c" * 64).data == b"c" * 64
    with pytest.raises(IkeLocalError):
        Notify.cookie(b"c" * 65)
    ipcomp = Notify.ipcomp_supported(0x1234, IpcompId.IPCOMP_DEFLATE)
    assert ipcomp.data == b"\x12\x34\x02" and ipcomp.ipcomp() == (0x1234, IpcompId.IPCOMP_DEFLATE)
    sig = Notify.signature_hash_algorithms([SignatureHashAlgorithm.SHA2_256, SignatureHashAlgorithm(99)])
    assert sig.hash_algorithms() == [SignatureHashAlgorithm.SHA2_256, 99]
    assert not Notify.status(NotifyType.MOBIKE_SUPPORTED).is_error
    with pytest.raises(IkeProtocolError):
        Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x13").dh_group()
    with pytest.raises(IkeProtocolError):
        Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00").hash_algorithms()
    with pytest.raises(IkeProtocolError):
        Notify(NotifyType.IPCOMP_SUPPORTED, b"\x00").ipcomp()
    with pytest.raises(IkeLocalError):
        Notify.status(NotifyType.COOKIE).dh_group()
    with pytest.raises(IkeLocalError):
        Notify.nat_detection(NotifyType.COOKIE, SPI_I, SPI_R, V4("192.0.2.1"), 500)
    error = IkeProtocolError(NotifyType.TS_UNACCEPTABLE, "no")
    assert Notify.error(error.code, error.data) == Notify(NotifyType.TS_UNACCEPTABLE)


def test_identification_helpers() -> None:
    assert identification_body(IDi.fqdn("a.example")) == b"\x02\x00\x00\x00a.example"
    assert IDr.from_address(V4("2001:db8::1")).id_type == IdType.ID_IPV6_ADDR
    assert IDi.rfc822("carol@example.org").id_type == IdType.ID_RFC822_ADDR
    assert IDi.key_id(b"\x01").data == b"\x01"


def test_certreq_authorities() -> None:
    assert CERTREQ(CertEncoding.X509_SIGNATURE, bytes(40)).authorities() == [bytes(20), bytes(20)]
    with pytest.raises(IkeProtocolError):
        CERTREQ(CertEncoding.X509_SIGNATURE, bytes(21)).authorities()


def test_message_helpers() -> None:
    msg = message(every_payload())
    assert len(msg.find(Notify)) == 4 == len(msg.notifies())
    assert msg.flags == 0x08
