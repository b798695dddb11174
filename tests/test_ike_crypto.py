"""IKEv2 PRFs, key schedule, AUTH and SK protection (ipsecd.ike.crypto).

Known answers come from published sources only, named beside each
constant: RFC 4868 §2.7.1 (PRF-HMAC-SHA2), RFC 3566 / RFC 4434
(AES-XCBC), the NIST CAVP SP 800-135 IKEv2 KDF samples (SKEYSEED, prf+,
Child SA keymat, rekey SKEYSEED) and a real AES-CCM exchange from
Wireshark's test suite.  Everything else is self-consistency: initiator and
responder objects derive the same keys, and what one side protects the
other unprotects, for every IKE ENCR x INTEG combination.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from ike_vectors import (
    CAPTURE_INFORMATIONAL_REQUEST,
    CAPTURE_INFORMATIONAL_RESPONSE,
    CAPTURE_SA_INIT_RESPONSE,
    CAPTURE_SK_EI,
    CAPTURE_SK_ER,
    h,
)

from ipsecd.ike import dh
from ipsecd.ike.constants import (
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
from ipsecd.ike.crypto import (
    ENCR_ALGORITHMS,
    KEY_PAD,
    IkeSaKeys,
    IkeSaSuite,
    SkCipher,
    aes_xcbc_mac,
    child_sa_keymat,
    derive_ike_sa_keys,
    ike_sa_keys_from_exchange,
    prf,
    prf_plus,
    protect,
    protect_fragments,
    psk_auth,
    psk_auth_with_pad,
    psk_key_pad,
    reassemble_fragments,
    rekey_skeyseed,
    signed_octets,
    skeyseed,
    unprotect,
    unprotect_fragment,
    verify_psk_auth,
)
from ipsecd.ike.errors import IkeDecryptError, IkeLocalError, IkeProtocolError
from ipsecd.ike.messages import (
    SA,
    SK,
    Delete,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    Transform,
    VendorID,
    decode,
    encode,
    encode_protected_prefix,
)

# --------------------------------------------------------------------------- PRF known answers

# RFC 4868 §2.7.1 PRF test cases (the same keys and data as RFC 4231 §4.2-§4.8).
_PRF_1 = (h("0b" * 20), b"Hi There")
_PRF_2 = (b"Jefe", b"what do ya want for nothing?")
_PRF_3 = (h("aa" * 20), h("dd" * 50))
_PRF_4 = (h("0102030405060708090a0b0c0d0e0f10111213141516171819"), h("cd" * 50))
_PRF_5 = (h("aa" * 131), b"Test Using Larger Than Block-Size Key - Hash Key First")
_PRF_6 = (h("aa" * 131), b"This is a test using a larger than block-size key and a larger than block-size data. "
          b"The key needs to be hashed before being used by the HMAC algorithm.")
PRF_VECTORS = [
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_1, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_2, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_3, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_4, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_5, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (PrfId.PRF_HMAC_SHA2_256, *_PRF_6, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_1, "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
                                       "faea9ea9076ede7f4af152e8b2fa9cb6"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_2, "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                                       "8e2240ca5e69e2c78b3239ecfab21649"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_3, "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b"
                                       "2a5ab39dc13814b94e3ab6e101a34f27"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_4, "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e"
                                       "6801dd23c4a7d679ccf8a386c674cffb"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_5, "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
                                       "0c2ef6ab4030fe8296248df163f44952"),
    (PrfId.PRF_HMAC_SHA2_384, *_PRF_6, "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
                                       "a678cc31e799176d3860e6110c46523e"),
    (PrfId.PRF_HMAC_SHA2_512, *_PRF_1, "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                                       "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (PrfId.PRF_HMAC_SHA2_512, *_PRF_2, "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                                       "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    (PrfId.PRF_HMAC_SHA2_512, *_PRF_6, "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
                                       "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58"),
    # RFC 2202 §3 test case 1 (HMAC-SHA-1), the PRF of the NIST vectors below.
    (PrfId.PRF_HMAC_SHA1, *_PRF_1, "b617318655057264e28bc0b6fb378c8ef146be00"),
]


@pytest.mark.parametrize(("prf_id", "key", "data", "expected"), PRF_VECTORS)
def test_prf_hmac_known_answers(prf_id: PrfId, key: bytes, data: bytes, expected: str) -> None:
    assert prf(prf_id)(key, data).hex() == expected


_XCBC_KEY = h("000102030405060708090a0b0c0d0e0f")
_XCBC_MSG20 = h("000102030405060708090a0b0c0d0e0f10111213")
# RFC 3566 §4.6 test cases 1-7 (full 128-bit AES-XCBC-MAC outputs).
XCBC_MAC_VECTORS = [
    (b"", "75f0251d528ac01c4573dfd584d79f29"),
    (h("000102"), "5b376580ae2f19afe7219ceef172756f"),
    (h("000102030405060708090a0b0c0d0e0f"), "d2a246fa349b68a79998a4394ff7a263"),
    (_XCBC_MSG20, "47f51b4564966215b8985c63055ed308"),
    (bytes(range(32)), "f54f0ec8d2b9f3d36807734bd5283fd4"),
    (bytes(range(34)), "becbb3bccdb518a30677d5481fb6b4d8"),
    (bytes(1000), "f0dafee895db30253761103b5d84528f"),
]
# RFC 4434 §6: AES-XCBC-PRF-128 with keys of 16, 10 and 18 octets.
XCBC_PRF_VECTORS = [
    (_XCBC_KEY, "47f51b4564966215b8985c63055ed308"),
    (h("00010203040506070809"), "0fa087af7d866e7653434e602fdde835"),
    (h("000102030405060708090a0b0c0d0e0fedcb"), "8cd3c93ae598a9803006ffb67c40e9e4"),
]


@pytest.mark.parametrize(("message", "expected"), XCBC_MAC_VECTORS)
def test_aes_xcbc_mac_rfc3566(message: bytes, expected: str) -> None:
    assert aes_xcbc_mac(_XCBC_KEY, message).hex() == expected


@pytest.mark.parametrize(("key", "expected"), XCBC_PRF_VECTORS)
def test_aes_xcbc_prf_rfc4434(key: bytes, expected: str) -> None:
    assert prf(PrfId.PRF_AES128_XCBC)(key, _XCBC_MSG20).hex() == expected


# --------------------------------------------------------------------------- key schedule known answers


@dataclasses.dataclass(frozen=True)
class KdfVector:
    """One NIST CAVP SP 800-135 IKEv2 KDF record."""

    source: str
    prf: PrfId
    Ni: bytes
    Nr: bytes
    g_ir: bytes
    g_ir_new: bytes
    SPIi: bytes
    SPIr: bytes
    SKEYSEED: bytes
    DKM: bytes
    SKEYSEED_rekey: bytes
    DKM_child: bytes = b""
    DKM_child_dh: bytes = b""


KDF_VECTORS = [
    KdfVector(
        # NIST CAVP KDF135 IKEv2 sample, SHA-1, COUNT = 0, as carried in libreswan
        # programs/cavp/test.acvp.ikev2.run and lib/libswan/ike_alg_test_prf.c.
        "CAVP SHA-1 (libreswan)", PrfId.PRF_HMAC_SHA1,
        Ni=h("32b50d5f4a3763f3"), Nr=h("9206a04b26564cb1"),
        g_ir=h("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52"),
        g_ir_new=h("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330"),
        SPIi=h("34c9e7c188868785"), SPIr=h("3ff77d760d2b2199"),
        SKEYSEED=h("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"),
        DKM=h("""a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062
                 768b76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702
                 c979fa280870d2ed41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249
                 520a441a81157435a7a56cc4"""),
        DKM_child=h("""8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd95
                       60b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf
                       5580b1e521a8fe20754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f51
                       0b1c0a22f3e664994d234cb4"""),
        DKM_child_dh=h("""bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232ea
                          b4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a508
                          0d7d4b5666023a8bbb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227c
                          ffc06e27899c7054d56fd74c"""),
        SKEYSEED_rekey=h("63e81194946ebd05df7df5ebf5d8750056bf1f1d"),
    ),
    KdfVector(
        # A second NIST CAVP KDF135 IKEv2 SHA-1 record (1024-bit g^ir), as carried in
        # Cisco's FIPS KDF self-test (test_ikev2_kdf, B. Fussell, 2015).
        "CAVP SHA-1 (Cisco FIPS self-test)", PrfId.PRF_HMAC_SHA1,
        Ni=h("3651fef5c9c35e93"), Nr=h("c09a8b90a3f04d59"),
        g_ir=h("""d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb
                  4fa2fe2a28254e289cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d
                  1ac4175eaa695033f3cedb026a6873a36455172a8540b8a5d23a0143bed0390ee49b168269d75fff
                  ee9fb62be965993c"""),
        g_ir_new=h("""52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f3
                      3552a17d1557fa41ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c2
                      8eae58cbc6847770f32c3fed1d04750484f854790f95e9ec01bc5bc461f24966462e359511329305
                      038e94deb6dd42c2"""),
        SPIi=h("8e5c3ae507221684"), SPIr=h("b1f201bb155c3acd"),
        SKEYSEED=h("cd2e8050137832245f1dbacc6e4f0a92f94d45d6"),
        DKM=h("""6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58
                 fa63bbb667f8d36920b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91
                 874a9c0a27fcc2d717eb8963a9e3a89c7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60b
                 a3c80557323331a8cbb89f20"""),
        DKM_child=h("""4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962
                       c5b1ca8a41ff8145445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d5
                       9dc7186deb20a27b411d1dcb70a365440bf7de905088b0692e8addc094e18d1939bdb67e89798ca6
                       b239e2ccb81c2409dac0106c"""),
        DKM_child_dh=h("""b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a
                          975ff1b9d9a12c75ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917eb
                          ae8297fb5539d2008ce830823a09cc197361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41
                          a4a40877d3fe106db909707b"""),
        SKEYSEED_rekey=h("3b03bce748c96d5e8306918d2ff89b68f0648da3"),
    ),
    KdfVector(
        # NIST CAVP KDF135 IKEv2 sample, SHA-256, as carried in NSS
        # gtests/common/testvectors/ike-sha256-vectors.h (tcIds 6, 7, 8).
        "CAVP SHA-256 (NSS)", PrfId.PRF_HMAC_SHA2_256,
        Ni=h("3f302be1abcb28e1"), Nr=h("8c332ee006064c9b"),
        g_ir=h("0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29"),
        g_ir_new=h("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c"),
        SPIi=h("40dac39e1e1a8640"), SPIr=h("8619a1cf9a6e4c07"),
        SKEYSEED=h("5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe"),
        DKM=h("""0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531188d160
                 41b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b8d3d1fa990cf9c
                 5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74ad405c588662c14a04d0d3
                 6aa4ab55e90f8986d12d4aad"""),
        SKEYSEED_rekey=h("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398"),
    ),
    KdfVector(
        # NIST CAVP KDF135 IKEv2 sample, SHA-384, as carried in NSS
        # gtests/common/testvectors/ike-sha384-vectors.h (tcIds 6, 7, 8).
        "CAVP SHA-384 (NSS)", PrfId.PRF_HMAC_SHA2_384,
        Ni=h("fd1b572a8e735591"), Nr=h("6013b0ef88dacd3d"),
        g_ir=h("d3288cd87565101e88fe3bad918f31939d8dd26ff1071f8b2d7f447524e58d7c"),
        g_ir_new=h("3358f620539473aee8d07e779764c4c6a9aabddc79a28e136b3bac021dbde44a"),
        SPIi=h("2116ad07ce61f749"), SPIr=h("24880e55f11a65b7"),
        SKEYSEED=h("69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d"
                   "7d0b596f51f7dfcf3330061888f6a94f"),
        DKM=h("""4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cacb04cd6deeda4f952
                 191dd9bc1f7a9502471a648d74dc06d38112de48a42501f6b1a3ad55c2099cd9a648e5f17e5bf3e3
                 4bf9b5953decb768a34f875fe2b78dca0c2fcca81ec1a412006dfaed38fa06882e61f4c148105fb8
                 e231fdb33c4d484c001721d4"""),
        SKEYSEED_rekey=h("e0548c1682e13bce454026b3b1bdf42985b24e4e7408095a7c529de38c3d1fcb"
                         "04c9fe6868042a34c9614c6c99e3fcea"),
    ),
]


@pytest.mark.parametrize("v", KDF_VECTORS, ids=lambda v: v.source)
def test_skeyseed_and_prf_plus_nist(v: KdfVector) -> None:
    p = prf(v.prf)
    assert skeyseed(p, v.Ni, v.Nr, v.g_ir) == v.SKEYSEED  # RFC 7296 §2.14
    assert prf_plus(p, v.SKEYSEED, v.Ni + v.Nr + v.SPIi + v.SPIr, len(v.DKM)) == v.DKM
    SK_d = v.DKM[:p.key_bytes]
    assert rekey_skeyseed(p, SK_d, v.g_ir_new, v.Ni, v.Nr) == v.SKEYSEED_rekey  # §2.18


@pytest.mark.parametrize("v", [v for v in KDF_VECTORS if v.DKM_child], ids=lambda v: v.source)
def test_child_sa_keymat_nist(v: KdfVector) -> None:
    """§2.17: KEYMAT = prf+(SK_d, Ni | Nr) and prf+(SK_d, g^ir (new) | Ni | Nr).

    The split (32-octet encryption and 34-octet integrity keys, twice) only
    exercises the order: the four keys concatenated are the DKM.
    """
    p = prf(v.prf)
    SK_d = v.DKM[:p.key_bytes]
    keys = child_sa_keymat(p, SK_d, v.Ni, v.Nr, 32, 34)
    assert keys.encr_i + keys.integ_i + keys.encr_r + keys.integ_r == v.DKM_child
    keys = child_sa_keymat(p, SK_d, v.Ni, v.Nr, 32, 34, g_ir=v.g_ir_new)
    assert keys.encr_i + keys.integ_i + keys.encr_r + keys.integ_r == v.DKM_child_dh


@pytest.mark.parametrize("v", KDF_VECTORS, ids=lambda v: v.source)
def test_derive_ike_sa_keys_nist(v: KdfVector) -> None:
    """The seven keys are consecutive slices of prf+ output (a stream, so the DKM is a prefix)."""
    suite = IkeSaSuite(EncrId.ENCR_AES_CBC, v.prf, IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=128)
    SKEYSEED, keys = ike_sa_keys_from_exchange(suite, v.Ni, v.Nr, v.g_ir, v.SPIi, v.SPIr)
    assert SKEYSEED == v.SKEYSEED
    stream = keys.SK_d + keys.SK_ai + keys.SK_ar + keys.SK_ei + keys.SK_er + keys.SK_pi + keys.SK_pr
    n = min(len(stream), len(v.DKM))
    assert stream[:n] == v.DKM[:n]
    p = prf(v.prf).key_bytes
    assert (len(keys.SK_d), len(keys.SK_ai), len(keys.SK_ei), len(keys.SK_pr)) == (p, 20, 16, p)
    rekeyed, _ = ike_sa_keys_from_exchange(
        suite, v.Ni, v.Nr, v.g_ir_new, v.SPIi, v.SPIr, old_SK_d=v.DKM[:p], old_prf=v.prf)
    assert rekeyed == v.SKEYSEED_rekey


def test_aead_keys_have_no_sk_a_and_carry_the_salt() -> None:
    """RFC 5282 §7.1: SK_a is empty, SK_e is key | salt (4 octets for GCM, 3 for CCM)."""
    v = KDF_VECTORS[2]
    for encr, bits, size in ((EncrId.ENCR_AES_GCM_16, 256, 36), (EncrId.ENCR_AES_CCM_8, 128, 19),
                             (EncrId.ENCR_CHACHA20_POLY1305, None, 36)):
        suite = IkeSaSuite(encr, PrfId.PRF_HMAC_SHA2_256, encr_key_bits=bits)
        keys = derive_ike_sa_keys(suite, v.SKEYSEED, v.Ni, v.Nr, v.SPIi, v.SPIr)
        assert keys.SK_ai == keys.SK_ar == b"" and len(keys.SK_ei) == len(keys.SK_er) == size
        assert keys.SK_d == v.DKM[:32] and keys.SK_ei == v.DKM[32:32 + size]  # right after SK_d


def test_xcbc_skeyseed_uses_64_bits_of_each_nonce() -> None:
    """RFC 7296 §2.14: a fixed-key PRF keys SKEYSEED with the first 64 bits of Ni and of Nr."""
    p = prf(PrfId.PRF_AES128_XCBC)
    Ni, Nr, g_ir = bytes(range(32)), bytes(range(100, 132)), bytes(64)
    assert skeyseed(p, Ni, Nr, g_ir) == p(Ni[:8] + Nr[:8], g_ir)
    assert skeyseed(p, Ni, Nr, g_ir) == skeyseed(p, Ni[:8] + b"other", Nr[:8] + b"bits", g_ir)


def test_prf_plus_limits() -> None:
    p = prf(PrfId.PRF_HMAC_SHA1)
    assert len(prf_plus(p, b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(IkeLocalError):
        prf_plus(p, b"k", b"s", 255 * 20 + 1)
    assert prf_plus(p, b"k", b"s", 0) == b""


@settings(max_examples=60, deadline=None)
@given(prf_id=st.sampled_from([PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_HMAC_SHA2_384,
                               PrfId.PRF_HMAC_SHA2_512, PrfId.PRF_HMAC_SHA1,
                               PrfId.PRF_AES128_XCBC]),
       key=st.binary(max_size=200), seed=st.binary(max_size=300),
       length=st.integers(min_value=0, max_value=600))
def test_prf_plus_is_its_definition(prf_id: PrfId, key: bytes, seed: bytes, length: int) -> None:
    # prf_plus copies one HMAC key schedule per block: the octets of RFC 7296 §2.13 still.
    p = prf(prf_id)
    expected, block, n = b"", b"", 1
    while len(expected) < length:
        block = p(key, block + seed + bytes((n,)))
        expected += block
        n += 1
    assert prf_plus(p, key, seed, length) == expected[:length]


# --------------------------------------------------------------------------- a real protected exchange

CAPTURE_SUITE = IkeSaSuite(EncrId.ENCR_AES_CCM_12, PrfId.PRF_HMAC_SHA2_256, dh=DhGroup.ECP_256, encr_key_bits=128)


def test_capture_informational_decrypts() -> None:
    """Wireshark's AES-CCM-12 capture: the Delete request and the empty reply open with its keys."""
    message, inner = unprotect(CAPTURE_INFORMATIONAL_REQUEST, SkCipher(CAPTURE_SUITE, CAPTURE_SK_EI))
    assert message.exchange_type == ExchangeType.INFORMATIONAL and message.message_id == 2
    assert inner == [Delete(ProtocolId.IKE)]
    message, inner = unprotect(CAPTURE_INFORMATIONAL_RESPONSE, SkCipher(CAPTURE_SUITE, CAPTURE_SK_ER))
    assert message.response and inner == []
    with pytest.raises(IkeDecryptError):  # the other direction's key
        unprotect(CAPTURE_INFORMATIONAL_REQUEST, SkCipher(CAPTURE_SUITE, CAPTURE_SK_ER))


def test_capture_informational_reencrypts_to_the_same_octets() -> None:
    """With the captured IV, protect() rebuilds the peer's message octet for octet."""
    for data, key, inner in ((CAPTURE_INFORMATIONAL_REQUEST, CAPTURE_SK_EI, [Delete(ProtocolId.IKE)]),
                             (CAPTURE_INFORMATIONAL_RESPONSE, CAPTURE_SK_ER, [])):
        received = decode(data)
        sk = received.payloads[-1]
        assert isinstance(sk, SK)
        outer = dataclasses.replace(received, payloads=[])
        assert protect(outer, inner, SkCipher(CAPTURE_SUITE, key), iv=sk.data[:8]) == data


# --------------------------------------------------------------------------- initiator and responder


class Side:
    """One end of an IKE_SA_INIT: its DH key, nonce and SPI."""

    def __init__(self, group: DhGroup, spi: bytes) -> None:
        self.key = dh.group(group).generate()
        self.nonce = bytes.fromhex(spi.hex() * 4)
        self.spi = spi


def establish(suite: IkeSaSuite, *, allow_legacy: bool = False) -> tuple[IkeSaKeys, IkeSaKeys]:
    i, r = Side(suite.dh, b"\x11" * 8), Side(suite.dh, b"\x22" * 8)
    g_ir_i = i.key.exchange(r.key.public_bytes())
    g_ir_r = r.key.exchange(i.key.public_bytes())
    seed_i = skeyseed(prf(suite.prf, allow_legacy=allow_legacy), i.nonce, r.nonce, g_ir_i)
    seed_r = skeyseed(prf(suite.prf, allow_legacy=allow_legacy), i.nonce, r.nonce, g_ir_r)
    keys_i = derive_ike_sa_keys(suite, seed_i, i.nonce, r.nonce, i.spi, r.spi, allow_legacy=allow_legacy)
    keys_r = derive_ike_sa_keys(suite, seed_r, i.nonce, r.nonce, i.spi, r.spi, allow_legacy=allow_legacy)
    return keys_i, keys_r


def test_initiator_and_responder_derive_the_same_keys() -> None:
    suite = IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA2_256, dh=DhGroup.CURVE25519, encr_key_bits=256)
    keys_i, keys_r = establish(suite)
    assert keys_i == keys_r
    assert "SK_" not in repr(keys_i) and keys_i.SK_d.hex() not in repr(keys_i)


def inner_payloads() -> list[Payload]:
    return [IDi.fqdn("carol.example.org"), Notify.status(NotifyType.INITIAL_CONTACT), Nonce(bytes(range(40)))]


def ike_auth(*, response: bool = False, payloads: Sequence[Payload] = ()) -> Message:
    return Message(b"\x11" * 8, b"\x22" * 8, ExchangeType.IKE_AUTH, 1, initiator=not response,
                   response=response, payloads=list(payloads))


COMBINATIONS = [
    *[(EncrId.ENCR_AES_CBC, bits, integ) for bits in (128, 192, 256) for integ in (
        IntegId.AUTH_HMAC_SHA2_256_128, IntegId.AUTH_HMAC_SHA2_384_192, IntegId.AUTH_HMAC_SHA2_512_256,
        IntegId.AUTH_HMAC_SHA1_96, IntegId.AUTH_AES_XCBC_96, IntegId.AUTH_HMAC_MD5_96)],
    *[(EncrId.ENCR_3DES, None, integ) for integ in (IntegId.AUTH_HMAC_SHA2_256_128, IntegId.AUTH_HMAC_SHA1_96)],
    *[(encr, bits, IntegId.NONE) for bits in (128, 192, 256) for encr in (
        EncrId.ENCR_AES_GCM_16, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_8,
        EncrId.ENCR_AES_CCM_16, EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_8)],
    (EncrId.ENCR_CHACHA20_POLY1305, None, IntegId.NONE),
]


@pytest.mark.parametrize(("encr", "bits", "integ"), COMBINATIONS)
def test_sk_round_trip_and_tampering(encr: EncrId, bits: int | None, integ: IntegId) -> None:
    suite = IkeSaSuite(encr, PrfId.PRF_HMAC_SHA2_256, integ, DhGroup.ECP_256, bits)
    keys_i, keys_r = establish(suite, allow_legacy=True)
    send = keys_i.cipher(initiator=True, sending=True, allow_legacy=True)
    receive = keys_r.cipher(initiator=False, sending=False, allow_legacy=True)
    outer = [Notify.status(NotifyType(40000), b"unencrypted, still authenticated")]
    data = protect(ike_auth(payloads=outer), inner_payloads(), send)
    message, inner = unprotect(data, receive)
    assert inner == inner_payloads() and message.payloads[:-1] == outer
    # The reply goes the other way with the other keys.
    reply = protect(ike_auth(response=True), [], keys_r.cipher(initiator=False, sending=True, allow_legacy=True))
    assert unprotect(reply, keys_i.cipher(initiator=True, sending=False, allow_legacy=True))[1] == []
    with pytest.raises(IkeDecryptError):
        unprotect(data, keys_r.cipher(initiator=False, sending=True, allow_legacy=True))
    # Flip one bit anywhere - IKE header, the unencrypted notify, SK header, IV, ciphertext, ICV.
    sk_start = len(encode(ike_auth(payloads=outer)))
    for offset in (3, 20, 40, sk_start + 1, sk_start + 4, sk_start + 12, len(data) - 20, len(data) - 1):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        with pytest.raises((IkeDecryptError, IkeProtocolError)) as info:
            unprotect(bytes(tampered), receive)
        if offset >= sk_start + 4:  # past the SK header the structure still parses: the ICV fails
            assert isinstance(info.value, IkeDecryptError) and info.value.reason in ("icv", "alignment")


@pytest.mark.parametrize(("encr", "bits", "integ"), [
    (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128), (EncrId.ENCR_AES_GCM_16, 128, IntegId.NONE)])
def test_truncated_and_misaligned_sk(encr: EncrId, bits: int, integ: IntegId) -> None:
    suite = IkeSaSuite(encr, PrfId.PRF_HMAC_SHA2_256, integ, encr_key_bits=bits)
    keys, _ = establish(dataclasses.replace(suite, dh=DhGroup.CURVE25519))
    cipher = keys.cipher(initiator=True, sending=True)
    for body in (b"", bytes(8), bytes(20)):
        data = encode(ike_auth(payloads=[SK(PayloadType.NONE, body)]))
        with pytest.raises(IkeDecryptError) as info:
            unprotect(data, cipher)
        assert info.value.reason == "short"
    if not cipher.encr.aead:
        data = encode(ike_auth(payloads=[SK(PayloadType.NONE, bytes(16 + 17 + 16))]))
        with pytest.raises(IkeDecryptError) as info:
            unprotect(data, cipher)
        assert info.value.reason == "alignment"
    with pytest.raises(IkeDecryptError) as info:
        unprotect(encode(ike_auth(payloads=[VendorID(b"x")])), cipher)
    assert info.value.reason == "not-encrypted"


def test_bad_padding_and_bad_inner_payloads() -> None:
    """A pad length past the plaintext is a drop; authenticated garbage is INVALID_SYNTAX."""
    suite = IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA2_256, encr_key_bits=128)
    cipher = SkCipher(suite, bytes(20))  # key 0^128, salt 0^32

    def sealed(first: PayloadType, padded_plaintext: bytes) -> bytes:
        """AES-GCM by hand (RFC 5282): nonce = salt | IV, AAD = header through the SK header."""
        prefix = bytes(encode_protected_prefix(ike_auth(), SK(first), 8 + len(padded_plaintext) + 16))
        iv = bytes(8)
        return prefix + iv + AESGCM(bytes(16)).encrypt(bytes(4) + iv, padded_plaintext, prefix)

    assert unprotect(sealed(PayloadType.NONE, b"\x00"), cipher)[1] == []

    with pytest.raises(IkeDecryptError) as info:
        unprotect(sealed(PayloadType.NONE, b"\x05"), cipher)
    assert info.value.reason == "padding"
    with pytest.raises(IkeProtocolError) as error:
        unprotect(sealed(PayloadType.NONCE, b"\x00\x00\x00\x05\x00"), cipher)
    assert error.value.code == NotifyType.INVALID_SYNTAX


# --------------------------------------------------------------------------- fragments (RFC 7383)


def test_fragments_round_trip() -> None:
    suite = IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128,
                       encr_key_bits=256)
    keys = derive_ike_sa_keys(suite, bytes(32), bytes(16), bytes(16), b"\x11" * 8, b"\x22" * 8)
    send, receive = keys.cipher(initiator=True, sending=True), keys.cipher(initiator=False, sending=False)
    inner = [*inner_payloads(), VendorID(bytes(range(256)) * 4)]
    fragments = protect_fragments(ike_auth(), inner, send, 300)
    assert len(fragments) > 3 and all(len(f) <= 300 for f in fragments)
    opened = [unprotect_fragment(f, receive) for f in fragments]
    assert [skf.next_payload for _, skf, _ in opened] == [PayloadType.IDi] + [PayloadType.NONE] * (len(fragments) - 1)
    parts = [(skf, chunk) for _, skf, chunk in opened]
    assert reassemble_fragments(list(reversed(parts))) == inner
    with pytest.raises(IkeProtocolError):
        reassemble_fragments(parts[:-1])
    with pytest.raises(IkeProtocolError):
        reassemble_fragments([])
    tampered = bytearray(fragments[1])
    tampered[30] ^= 1  # Fragment Number is associated data
    with pytest.raises((IkeDecryptError, IkeProtocolError)):
        unprotect_fragment(bytes(tampered), receive)
    with pytest.raises(IkeDecryptError):
        unprotect_fragment(protect(ike_auth(), inner_payloads(), send), receive)
    with pytest.raises(IkeLocalError):
        protect_fragments(ike_auth(), inner, send, 60)
    with pytest.raises(IkeLocalError):
        protect_fragments(ike_auth(payloads=[VendorID(b"x")]), inner, send, 300)


# --------------------------------------------------------------------------- AUTH (§2.15)


def test_psk_auth_both_directions() -> None:
    p = prf(PrfId.PRF_HMAC_SHA2_256)
    keys = derive_ike_sa_keys(IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA2_256, encr_key_bits=128),
                              bytes(32), bytes(16), bytes(16), b"\x11" * 8, b"\x22" * 8)
    message1, message2 = b"IKE_SA_INIT request octets", b"IKE_SA_INIT response octets"
    Ni, Nr, psk = bytes(range(32)), bytes(range(32, 64)), b"shared secret"
    initiator_octets = signed_octets(p, message1, Nr, keys.SK_pi, IDi.fqdn("carol"))
    assert initiator_octets == message1 + Nr + p(keys.SK_pi, b"\x02\x00\x00\x00carol")
    auth = psk_auth(p, psk, initiator_octets)
    assert auth == p(p(psk, b"Key Pad for IKEv2"), initiator_octets) and KEY_PAD == b"Key Pad for IKEv2"
    assert verify_psk_auth(p, psk, initiator_octets, auth)
    assert not verify_psk_auth(p, b"wrong secret", initiator_octets, auth)
    responder_octets = signed_octets(p, message2, Ni, keys.SK_pr, IDr.fqdn("moon"))
    assert not verify_psk_auth(p, psk, responder_octets, auth)


@pytest.mark.parametrize("prf_id", [PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_AES128_XCBC])
@pytest.mark.parametrize("psk", [b"short", b"a shared secret longer than sixteen octets"])
def test_psk_auth_with_a_padded_key_is_psk_auth(prf_id: PrfId, psk: bytes) -> None:
    # The responder pads the key once per IKE_AUTH and uses it for both AUTH payloads, and
    # passes the PSK table's own bytearray (no immutable copy): the same octets either way.
    p = prf(prf_id)
    octets = b"signed octets" * 5
    key_pad = psk_key_pad(p, bytearray(psk))
    assert key_pad == p(psk, KEY_PAD)
    assert psk_auth_with_pad(p, key_pad, octets) == psk_auth(p, psk, octets)
    assert psk_auth(p, bytearray(psk), octets) == psk_auth(p, psk, octets)
    assert verify_psk_auth(p, bytearray(psk), octets, psk_auth(p, psk, octets))


# --------------------------------------------------------------------------- configuration errors


def test_legacy_and_unknown_algorithms(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(IkeLocalError):
        prf(PrfId.PRF_HMAC_MD5)
    with pytest.raises(IkeLocalError):
        IkeSaSuite(EncrId.ENCR_3DES, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96).algorithms()
    with caplog.at_level(logging.WARNING, "ipsecd.ike.crypto"):
        IkeSaSuite(EncrId.ENCR_3DES, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96).algorithms(allow_legacy=True)
    assert "legacy" in caplog.text
    for suite in (
        IkeSaSuite(EncrId.ENCR_AES_CTR, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=128),
        IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=64),
        IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA1, IntegId.NONE, encr_key_bits=128),
        IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=128),
        IkeSaSuite(EncrId.ENCR_CHACHA20_POLY1305, PrfId.PRF_HMAC_SHA1, encr_key_bits=128),
        IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId(99), IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=128),
    ):
        with pytest.raises(IkeLocalError):
            suite.algorithms()
    good = IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96, encr_key_bits=128)
    with pytest.raises(IkeLocalError):
        SkCipher(good, bytes(15), bytes(20))
    with pytest.raises(IkeLocalError):
        SkCipher(good, bytes(16), bytes(19))
    with pytest.raises(IkeLocalError):
        SkCipher(IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA1, encr_key_bits=128), bytes(20), bytes(20))
    assert "SK_e" not in repr(SkCipher(good, bytes(16), bytes(20)))


def test_suite_from_proposal() -> None:
    (sa,) = [p for p in decode(CAPTURE_SA_INIT_RESPONSE).payloads if isinstance(p, SA)]
    assert IkeSaSuite.from_proposal(sa.proposals[0]) == CAPTURE_SUITE
    with pytest.raises(IkeProtocolError):
        IkeSaSuite.from_proposal(Proposal(1, ProtocolId.IKE, b"", [
            Transform.make(TransformType.ENCR, EncrId.ENCR_AES_CBC, 128),
            Transform.make(TransformType.ENCR, EncrId.ENCR_AES_CBC, 256),
            Transform.make(TransformType.PRF, PrfId.PRF_HMAC_SHA1)]))
    with pytest.raises(IkeProtocolError):
        IkeSaSuite.from_proposal(Proposal(1, ProtocolId.IKE, b"", []))
    assert set(ENCR_ALGORITHMS) >= {EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305, EncrId.ENCR_AES_CBC}


# --------------------------------------------------------------------------- recorded exchanges

RECORDED = Path(__file__).parent / "corpus" / "ike" / "recorded_exchanges.json"
_KEY_NAMES = ("SK_d", "SK_ai", "SK_ar", "SK_ei", "SK_er", "SK_pi", "SK_pr")


def test_recorded_exchanges() -> None:
    """Key derivations recorded from a peer's logs (empty until the strongSwan cross-check adds some)."""
    for entry in json.loads(RECORDED.read_text())["exchanges"]:
        suite = IkeSaSuite(EncrId(entry["encr"]), PrfId(entry["prf"]), IntegId(entry.get("integ", 0)),
                           encr_key_bits=entry.get("key_bits"))
        old_SK_d = bytes.fromhex(entry["old_SK_d"]) if "old_SK_d" in entry else None
        SKEYSEED, keys = ike_sa_keys_from_exchange(
            suite, *(bytes.fromhex(entry[k]) for k in ("Ni", "Nr", "g_ir", "SPIi", "SPIr")),
            old_SK_d=old_SK_d, old_prf=PrfId(entry["old_prf"]) if "old_prf" in entry else None,
            allow_legacy=True)
        if "SKEYSEED" in entry:
            assert SKEYSEED.hex() == entry["SKEYSEED"].lower(), entry["source"]
        for name in _KEY_NAMES:
            if name in entry:
                assert getattr(keys, name).hex() == entry[name].lower(), (entry["source"], name)


def test_ivs() -> None:
    """AEAD IVs come from a counter (RFC 5282 §3.1.1: never repeat); CBC IVs are random (§3.14)."""
    gcm = SkCipher(IkeSaSuite(EncrId.ENCR_AES_GCM_16, PrfId.PRF_HMAC_SHA2_256, encr_key_bits=128), bytes(20),
                   iv_start=7)
    first, second = (gcm.seal(b"prefix", b"payloads")[:8] for _ in range(2))
    assert (first, second) == ((7).to_bytes(8, "big"), (8).to_bytes(8, "big"))
    random_start = SkCipher(dataclasses.replace(gcm.suite), bytes(20))
    assert random_start.seal(b"p", b"")[:8] != random_start.seal(b"p", b"")[:8]
    cbc = SkCipher(IkeSaSuite(EncrId.ENCR_AES_CBC, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128,
                              encr_key_bits=128), bytes(16), bytes(32))
    assert cbc.seal(b"p", b"")[:16] != cbc.seal(b"p", b"")[:16]
    assert len(cbc.seal(b"p", bytes(15))) == cbc.body_length(15) == 16 + 16 + 16
    assert cbc.body_length(16) == 16 + 32 + 16  # 16 + the Pad Length octet needs a second block


def test_suite_algorithms_remembered_are_computed(caplog: pytest.LogCaptureFixture) -> None:
    """IkeSaSuite.algorithms remembers suites without a legacy algorithm (the same answer as
    the lookup, asked again); a legacy one is looked up, and warned about, every time."""
    from ipsecd.ike import crypto

    suites = [IkeSaSuite(e, p, i, encr_key_bits=bits)
              for e, bits, i in ((EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE),
                                 (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128),
                                 (EncrId.ENCR_CHACHA20_POLY1305, None, IntegId.NONE))
              for p in (PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_AES128_XCBC)]
    for suite in suites:
        for _ in range(2):
            assert suite.algorithms() == suite._algorithms(False)
    legacy = IkeSaSuite(EncrId.ENCR_3DES, PrfId.PRF_HMAC_SHA1, IntegId.AUTH_HMAC_SHA1_96)
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "ipsecd.ike.crypto"):
            legacy.algorithms(allow_legacy=True)
        assert "legacy" in caplog.text
        with pytest.raises(IkeLocalError):
            legacy.algorithms()
    assert legacy not in crypto._SUITE_ALGORITHMS
