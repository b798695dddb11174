"""Rebuild tests/corpus/ike/messages.json: the seeds of tests/test_ike_fuzz.py.

Run from the repository root: ``python tests/corpus/ike/regenerate.py``.
The captured messages come from tests/ike_vectors.py; the others are built
by ipsecd's own encoder and serve only as fuzzing seeds, never as expected
values.  Protected seeds record the suite and keys that open them.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[1])]

import ike_vectors as vectors  # noqa: E402

from ipsecd.ike.constants import (  # noqa: E402
    AuthMethod,
    CfgType,
    ConfigAttributeType,
    DhGroup,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ipsecd.ike.crypto import IkeSaSuite, SkCipher, protect, protect_fragments  # noqa: E402
from ipsecd.ike.messages import (  # noqa: E402
    AUTH,
    CP,
    KE,
    SA,
    ConfigAttribute,
    Delete,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    Transform,
    TSi,
    TSr,
    UnknownPayload,
    encode,
)

SPI_I, SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8"), bytes.fromhex("b1b2b3b4b5b6b7b8")


def auth_payloads() -> list[Payload]:
    return [
        IDi.fqdn("carol.example.org"), IDr.from_address(ipaddress.ip_address("192.0.2.1")),
        AUTH(AuthMethod.SHARED_KEY_MIC, bytes(range(32))),
        CP(CfgType.CFG_REQUEST, [ConfigAttribute(ConfigAttributeType.INTERNAL_IP4_ADDRESS)]),
        SA([Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", [
            Transform.make(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
            Transform.make(TransformType.ESN, 0)])]),
        TSi([TrafficSelector.from_network(ipaddress.ip_network("10.1.0.0/16"))]),
        TSr([TrafficSelector.from_network(ipaddress.ip_network("2001:db8::/32"), 6, 80, 80)]),
        Notify.status(NotifyType.INITIAL_CONTACT),
    ]


def main() -> None:
    seeds: list[dict[str, object]] = [
        {"name": "capture-sa-init-request", "source": "Wireshark ikev2-decrypt-aes128ccm12.pcap",
         "hex": vectors.CAPTURE_SA_INIT_REQUEST.hex()},
        {"name": "capture-sa-init-response", "source": "Wireshark ikev2-decrypt-aes128ccm12.pcap",
         "hex": vectors.CAPTURE_SA_INIT_RESPONSE.hex()},
        {"name": "capture-informational-request", "source": "Wireshark ikev2-decrypt-aes128ccm12.pcap",
         "hex": vectors.CAPTURE_INFORMATIONAL_REQUEST.hex(), "encr": int(EncrId.ENCR_AES_CCM_12),
         "key_bits": 128, "integ": 0, "SK_e": vectors.CAPTURE_SK_EI.hex(), "SK_a": ""},
    ]
    sa_init = Message(SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True, payloads=[
        SA([Proposal(1, ProtocolId.IKE, b"", [
            Transform.make(TransformType.ENCR, EncrId.ENCR_AES_CBC, 256),
            Transform.make(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
            Transform.make(TransformType.INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
            Transform.make(TransformType.DH, DhGroup.CURVE25519)])]),
        KE(DhGroup.CURVE25519, bytes(range(32))), Nonce(bytes(range(32))),
        Notify.cookie(b"cookie"), UnknownPayload(PayloadType(200), b"future"),
        Delete(ProtocolId.ESP, [b"\x01\x02\x03\x04"])])
    seeds.append({"name": "encoder-sa-init", "source": "ipsecd encoder", "hex": encode(sa_init).hex()})
    auth = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, initiator=True)
    seeds.append({"name": "encoder-ike-auth-plain", "source": "ipsecd encoder",
                  "hex": encode(Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, initiator=True,
                                        payloads=auth_payloads())).hex()})
    for encr, bits, integ, e, a in (
        (EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE, bytes(range(36)), b""),
        (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, bytes(range(16)), bytes(range(32))),
        (EncrId.ENCR_CHACHA20_POLY1305, None, IntegId.NONE, bytes(range(36)), b""),
    ):
        cipher = SkCipher(IkeSaSuite(encr, PrfId.PRF_HMAC_SHA2_256, integ, encr_key_bits=bits), e, a)
        keys = {"encr": int(encr), "key_bits": bits, "integ": int(integ), "SK_e": e.hex(), "SK_a": a.hex()}
        seeds.append({"name": f"encoder-ike-auth-{encr.name.lower()}", "source": "ipsecd encoder",
                      "hex": protect(auth, auth_payloads(), cipher, iv=bytes(cipher.encr.iv_bytes)).hex(), **keys})
    cipher = SkCipher(IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA2_256, encr_key_bits=128), bytes(20),
                      iv_start=1)
    for number, fragment in enumerate(protect_fragments(auth, auth_payloads(), cipher, 160), 1):
        seeds.append({"name": f"encoder-ike-auth-fragment-{number}", "source": "ipsecd encoder",
                      "hex": fragment.hex(), "encr": int(EncrId.ENCR_AES_GCM_16), "key_bits": 128,
                      "integ": 0, "SK_e": bytes(20).hex(), "SK_a": ""})
    (HERE / "messages.json").write_text(json.dumps({"seeds": seeds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
