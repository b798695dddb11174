"""IKEv2 proposals (ipsecd.ike.proposals, RFC 7296 §2.7, §3.3).

Parsing strongSwan's proposal syntax (every token kind, the legacy switch,
every refusal), the wire round trip of the proposals it makes, the
responder's choice (our order, the peer's SPI and number, only offered
transforms: a hypothesis property), the initiator's check of the answer
(every kind of bad answer), and the Child SA key sizes proven against the
ESP datapath itself.
"""

from __future__ import annotations

import ipaddress

import pytest
from conftest import inner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.drops import Drop
from ipsecd.esp import EspContext
from ipsecd.iana import IpProto
from ipsecd.ike import crypto
from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformAttributeType,
    TransformType,
)
from ipsecd.ike.errors import IkeProtocolError
from ipsecd.ike.messages import SA, Message, Proposal, Transform, TransformAttribute, decode, encode
from ipsecd.ike.proposals import (
    ChildSuite,
    check_chosen,
    child_suite,
    chosen_dh,
    describe,
    dh_groups,
    parse_esp,
    parse_ike,
    restrict_dh,
    select,
    with_spi,
)
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.transforms import TransformError

ENCR, PRF, INTEG, DH, ESN = (
    TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH, TransformType.ESN)
ESP_SPI = b"\x12\x34\x56\x78"


def described(proposals: list[Proposal]) -> list[str]:
    return [describe(p) for p in proposals]


def one(text: str, *, ike: bool = True) -> Proposal:
    [proposal] = parse_ike(text) if ike else parse_esp(text)
    return proposal


def of_type(proposal: Proposal, kind: TransformType) -> list[Transform]:
    return [t for t in proposal.transforms if t.type == kind]


def no_proposal(excinfo: pytest.ExceptionInfo[IkeProtocolError]) -> None:
    assert excinfo.value.code == NotifyType.NO_PROPOSAL_CHOSEN


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("aes128gcm16-prfsha256-x25519", ["AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"]),
    # strongSwan's shorthand: without a prf token the integrity algorithm implies its PRF.
    ("aes256-sha256-modp2048", ["AES_CBC_256/PRF_HMAC_SHA2_256/HMAC_SHA2_256_128/MODP_2048"]),
    ("chacha20poly1305-prfsha512-ecp256", ["CHACHA20_POLY1305/PRF_HMAC_SHA2_512/ECP_256"]),
    ("aes128gcm16-aes256gcm16-prfsha384-ecp384-x25519",
     ["AES_GCM_16_128/AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384/CURVE_25519"]),
    # An explicit PRF wins over the implied one.
    ("aes128-sha256-prfsha384-ecp256", ["AES_CBC_128/PRF_HMAC_SHA2_384/HMAC_SHA2_256_128/ECP_256"]),
    # Several integrity algorithms imply several PRFs, in order, without duplicates.
    ("aes192-sha512-sha384-sha2_512-x448",
     ["AES_CBC_192/PRF_HMAC_SHA2_512/PRF_HMAC_SHA2_384/HMAC_SHA2_512_256/HMAC_SHA2_384_192/CURVE_448"]),
    # ICV spelled in bits, "aes" = AES-128, curve25519 = x25519, upper case tolerated.
    ("aes128gcm128-AES-sha256-curve25519",
     ["AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
      "AES_CBC_128/PRF_HMAC_SHA2_256/HMAC_SHA2_256_128/CURVE_25519"]),
    ("aes256gcm12-aes128ccm16-prfsha256-ecp521",
     ["AES_GCM_12_256/AES_CCM_16_128/PRF_HMAC_SHA2_256/ECP_521"]),
    ("aes128-aesxcbc-modp3072", ["AES_CBC_128/PRF_AES128_XCBC/AES_XCBC_96/MODP_3072"]),
    # An AEAD-only proposal: integrity tokens only stand for their PRFs.
    ("aes256gcm16-sha384-ecp384", ["AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384"]),
    # AEAD and classic ciphers in one string are split; the first one named comes first.
    ("aes256-aes128gcm16-sha256-x25519",
     ["AES_CBC_256/PRF_HMAC_SHA2_256/HMAC_SHA2_256_128/CURVE_25519",
      "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"]),
    ("aes128gcm16-prfsha256-x25519, aes256-sha512-modp4096",
     ["AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
      "AES_CBC_256/PRF_HMAC_SHA2_512/HMAC_SHA2_512_256/MODP_4096"]),
])
def test_parse_ike(text: str, expected: list[str]) -> None:
    proposals = parse_ike(text)
    assert described(proposals) == expected
    assert [p.number for p in proposals] == list(range(1, len(expected) + 1))
    assert all(p.protocol == ProtocolId.IKE and p.spi == b"" for p in proposals)


def test_parse_ike_key_length_attributes() -> None:
    """RFC 7296 §3.3.5: AES carries the Key Length attribute; RFC 7634: ChaCha20-Poly1305 none."""
    proposal = one("aes256gcm16-chacha20poly1305-prfsha256-x25519")
    gcm, chacha = of_type(proposal, ENCR)
    assert gcm.id == EncrId.ENCR_AES_GCM_16
    assert gcm.attributes == [TransformAttribute(TransformAttributeType.KEY_LENGTH, 256)]
    assert chacha.id == EncrId.ENCR_CHACHA20_POLY1305 and chacha.attributes == []
    assert all(t.attributes == [] for t in proposal.transforms if t.type != ENCR)
    assert of_type(proposal, INTEG) == []  # no integrity with an AEAD (RFC 5282 §8)


def test_parse_list_and_comma_forms_agree() -> None:
    as_list = parse_ike(["aes128gcm16-prfsha256-x25519", "aes256-sha384-ecp384"])
    as_text = parse_ike(" aes128gcm16-prfsha256-x25519 ,aes256-sha384-ecp384 ")
    assert as_list == as_text
    assert [p.number for p in as_list] == [1, 2]


def test_parse_ike_default() -> None:
    dh = "CURVE_25519/ECP_256/ECP_384/MODP_3072/MODP_2048/CURVE_448/ECP_521"
    prf = "PRF_HMAC_SHA2_256/PRF_HMAC_SHA2_384/PRF_HMAC_SHA2_512"
    assert described(parse_ike("default")) == [
        f"AES_GCM_16_128/AES_GCM_16_256/CHACHA20_POLY1305/{prf}/{dh}",
        f"AES_CBC_128/AES_CBC_256/{prf}/HMAC_SHA2_256_128/HMAC_SHA2_384_192/HMAC_SHA2_512_256/{dh}",
    ]
    assert dh_groups(parse_ike("default")) == [
        DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.MODP_3072,
        DhGroup.MODP_2048, DhGroup.CURVE448, DhGroup.ECP_521]
    # "default" mixes with explicit proposals and the numbering runs on.
    mixed = parse_ike("aes256gcm16-prfsha384-ecp384, default")
    assert [p.number for p in mixed] == [1, 2, 3]
    assert mixed[1:] == [Proposal(p.number + 1, p.protocol, p.spi, p.transforms) for p in parse_ike("default")]


@pytest.mark.parametrize(("text", "expected"), [
    ("aes128gcm16", ["AES_GCM_16_128/NO_EXT_SEQ"]),
    ("aes256-sha256", ["AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ"]),
    ("chacha20poly1305", ["CHACHA20_POLY1305/NO_EXT_SEQ"]),
    ("aes128gcm16-esn", ["AES_GCM_16_128/EXT_SEQ"]),
    ("aes128gcm16-noesn", ["AES_GCM_16_128/NO_EXT_SEQ"]),
    ("aes128gcm16-esn-noesn", ["AES_GCM_16_128/EXT_SEQ/NO_EXT_SEQ"]),
    ("aes128gcm16-noesn-esn", ["AES_GCM_16_128/NO_EXT_SEQ/EXT_SEQ"]),
    ("aes128gcm16-x25519", ["AES_GCM_16_128/CURVE_25519/NO_EXT_SEQ"]),
    ("aes128gcm16-x25519-modpnone", ["AES_GCM_16_128/CURVE_25519/MODP_NONE/NO_EXT_SEQ"]),
    ("aes192gcm16-aes256gcm128", ["AES_GCM_16_192/AES_GCM_16_256/NO_EXT_SEQ"]),
    ("aes128gmac", ["NULL_AES_GMAC_128/NO_EXT_SEQ"]),
    ("null-sha256", ["NULL/HMAC_SHA2_256_128/NO_EXT_SEQ"]),
    ("aes128-aes128gcm16-sha512-esn",
     ["AES_CBC_128/HMAC_SHA2_512_256/EXT_SEQ", "AES_GCM_16_128/EXT_SEQ"]),
    ("default", ["AES_GCM_16_128/AES_GCM_16_256/CHACHA20_POLY1305/NO_EXT_SEQ",
                 "AES_CBC_128/AES_CBC_256/HMAC_SHA2_256_128/HMAC_SHA2_384_192/HMAC_SHA2_512_256/NO_EXT_SEQ"]),
])
def test_parse_esp(text: str, expected: list[str]) -> None:
    proposals = parse_esp(text)
    assert described(proposals) == expected
    assert [p.number for p in proposals] == list(range(1, len(expected) + 1))
    assert all(p.protocol == ProtocolId.ESP and p.spi == b"" for p in proposals)


@pytest.mark.parametrize(("text", "ike", "message"), [
    ("aes128gcm16-prfsha256-xyz", True, "unknown algorithm 'xyz' in proposal 'aes128gcm16-prfsha256-xyz'"),
    ("aes128-sha256-foo", False, "unknown algorithm 'foo' in proposal 'aes128-sha256-foo'"),
    ("aes128-sha256--x25519", True, "unknown algorithm ''"),
    ("aes128gcm16-prfsha256", True, "needs a key exchange (DH) group"),
    ("aes128gcm16-x25519", True, "needs a PRF"),
    ("aes128-prfsha256-x25519", True, "needs an integrity algorithm"),
    ("aes128", False, "needs an integrity algorithm"),
    ("sha256-prfsha256-x25519", True, "names no encryption algorithm"),
    ("x25519", False, "names no encryption algorithm"),
    ("aes128gcm16-sha256", False, "an AEAD cipher takes no integrity algorithm"),
    ("aes128gcm16-sha256-prfsha256-x25519", True, "an AEAD cipher takes no integrity algorithm"),
    # What the ESP datapath (ipsecd.transforms) cannot run is never offered.
    ("aes128ccm16", False, "'aes128ccm16' in proposal 'aes128ccm16' is not supported for ESP"),
    ("aes128gcm8", False, "is not supported for ESP"),
    ("aes128-aesxcbc", False, "is not supported for ESP"),
    ("aes128gcm16-prfsha256", False, "is not supported for ESP"),
    # ...and what is not for IKE (RFC 7296 §3.3.2: no NULL cipher, no ESN; PFS "none").
    ("null-sha256-x25519", True, "is not supported for IKE"),
    ("aes128gcm16-prfsha256-x25519-esn", True, "is not supported for IKE"),
    ("aes128gcm16-prfsha256-modpnone", True, "is not supported for IKE"),
    ("aes128gmac-prfsha256-x25519", True, "is not supported for IKE"),
    ("aes128gcm16-prfsha256-ecp192", True, "unknown algorithm 'ecp192'"),
    ("", True, "empty proposal"),
    ("aes128gcm16-prfsha256-x25519,,default", True, "empty proposal"),
])
def test_parse_errors(text: str, ike: bool, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_ike(text) if ike else parse_esp(text)
    assert message in str(excinfo.value)


def test_parse_error_on_empty_list() -> None:
    with pytest.raises(ValueError, match="empty proposal"):
        parse_esp([])


@pytest.mark.parametrize(("text", "ike", "token", "kind", "ident"), [
    ("3des-sha256-modp2048", True, "3des", ENCR, EncrId.ENCR_3DES),
    ("3des-sha256", False, "3des", ENCR, EncrId.ENCR_3DES),
    ("des-sha256", False, "des", ENCR, EncrId.ENCR_DES),
    ("blowfish-sha256", False, "blowfish", ENCR, EncrId.ENCR_BLOWFISH),
    ("cast128-sha256", False, "cast128", ENCR, EncrId.ENCR_CAST),
    ("aes128-md5", False, "md5", INTEG, IntegId.AUTH_HMAC_MD5_96),
    ("aes128-md5-modp2048", True, "md5", PRF, PrfId.PRF_HMAC_MD5),
    ("aes128-sha1", False, "sha1", INTEG, IntegId.AUTH_HMAC_SHA1_96),
    ("aes128-sha1-modp2048", True, "sha1", PRF, PrfId.PRF_HMAC_SHA1),
    ("aes128gcm16-prfsha1-x25519", True, "prfsha1", PRF, PrfId.PRF_HMAC_SHA1),
    ("aes128-sha256-modp1024", True, "modp1024", DH, DhGroup.MODP_1024),
    ("aes128-sha256-modp768", True, "modp768", DH, DhGroup.MODP_768),
    ("aes128gcm16-modp1536", False, "modp1536", DH, DhGroup.MODP_1536),
])
def test_legacy_needs_the_switch(
    text: str, ike: bool, token: str, kind: TransformType, ident: int,
) -> None:
    parse = parse_ike if ike else parse_esp
    with pytest.raises(ValueError, match="legacy switch") as excinfo:
        parse(text)
    assert f"'{token}'" in str(excinfo.value)
    [proposal] = parse(text, allow_legacy=True)
    assert ident in [t.id for t in of_type(proposal, kind)]


def test_legacy_keys_match_the_datapath() -> None:
    """Blowfish and CAST carry a key length the datapath accepts; DES/3DES a fixed key."""
    for text, enc_bytes, integ_bytes in (("3des-md5", 24, 16), ("des-sha1", 8, 20),
                                         ("blowfish256-sha256", 32, 32), ("cast128-md5", 16, 16)):
        [proposal] = parse_esp(text, allow_legacy=True)
        chosen = select(with_spi([proposal], ESP_SPI), [proposal])
        assert chosen is not None
        suite = child_suite(chosen)
        assert (suite.enc_key_bytes, suite.integ_key_bytes, suite.legacy) == (enc_bytes, integ_bytes, True)


@pytest.mark.parametrize("spi", [b"", bytes(range(1, 9))])
def test_round_trip_through_the_sa_payload(spi: bytes) -> None:
    proposals = with_spi(parse_ike("default, aes128-aesxcbc-modp3072"), spi)
    message = Message(b"\x01" * 8, b"\x00" * 8, ExchangeType.IKE_SA_INIT, 0, initiator=True,
                      payloads=[SA(proposals)])
    [sa] = decode(encode(message)).find(SA)
    assert sa.proposals == proposals
    esp = with_spi(parse_esp("default, aes128gcm16-esn-noesn-x25519-modpnone"), ESP_SPI)
    message.payloads = [SA(esp)]
    [sa] = decode(encode(message)).find(SA)
    assert sa.proposals == esp
    assert [describe(p) for p in sa.proposals] == [describe(p) for p in esp]


def test_key_length_on_the_wire() -> None:
    """RFC 7296 §3.3.5: Key Length is a TV attribute 14 (0x800E) with the bits."""
    message = Message(b"\x01" * 8, b"\x00" * 8, ExchangeType.IKE_SA_INIT, 0,
                      payloads=[SA(parse_ike("aes256gcm16-prfsha256-x25519"))])
    assert b"\x80\x0e\x01\x00" in encode(message)
    message.payloads = [SA(parse_ike("chacha20poly1305-prfsha256-x25519"))]
    assert b"\x80\x0e" not in encode(message)


# -- select() --------------------------------------------------------------------------------


def test_select_follows_our_order_of_proposals() -> None:
    offered = parse_ike(["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384"])
    ours = parse_ike(["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519"])
    chosen = select(offered, ours)
    assert chosen is not None
    assert chosen.number == 2
    assert describe(chosen) == "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384"


def test_select_tries_the_offered_proposals_in_the_peers_order() -> None:
    offered = parse_ike(["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519"])
    chosen = select(offered, parse_ike("default"))
    assert chosen is not None and chosen.number == 1


def test_select_takes_the_peers_order_within_a_proposal() -> None:
    """The initiator's KE is usually for its first group (RFC 7296 §1.2)."""
    offered = parse_ike("aes256gcm16-aes128gcm16-prfsha512-prfsha256-ecp256-x25519")
    chosen = select(offered, parse_ike("aes128gcm16-aes256gcm16-prfsha256-prfsha512-x25519-ecp256"))
    assert chosen is not None
    assert describe(chosen) == "AES_GCM_16_256/PRF_HMAC_SHA2_512/ECP_256"
    retry = select(restrict_dh(offered, DhGroup.CURVE25519), parse_ike("default"))
    assert retry is not None and chosen_dh(retry) == DhGroup.CURVE25519


def test_select_returns_the_offered_number_and_spi() -> None:
    offered = [Proposal(7, ProtocolId.ESP, b"\xaa\xbb\xcc\xdd", one("aes256-sha256", ike=False).transforms),
               Proposal(9, ProtocolId.ESP, b"\x01\x02\x03\x04", one("aes128gcm16", ike=False).transforms)]
    chosen = select(offered, parse_esp("aes128gcm16, aes256-sha256"))
    assert chosen is not None
    assert (chosen.number, chosen.protocol, chosen.spi) == (9, ProtocolId.ESP, b"\x01\x02\x03\x04")
    assert describe(chosen) == "AES_GCM_16_128/NO_EXT_SEQ"


def test_select_copies_not_aliases() -> None:
    offered = with_spi(parse_esp("aes128gcm16"), ESP_SPI)
    chosen = select(offered, parse_esp("default"))
    assert chosen is not None
    chosen.transforms[0].attributes[0].value = 192
    assert offered[0].transforms[0].key_length == 128


def test_select_skips_unknown_ids_and_types() -> None:
    unknown_encr = Transform(ENCR, 1234)
    unknown_prf = Transform(PRF, 200)
    unknown_group = Transform(DH, 777)
    proposal = one("aes128gcm16-prfsha256-x25519")
    offered = [Proposal(1, ProtocolId.IKE, b"", [unknown_encr, *proposal.transforms[:1], unknown_prf,
                                                 *proposal.transforms[1:2], unknown_group,
                                                 *proposal.transforms[2:]])]
    chosen = select(offered, parse_ike("default"))
    assert chosen is not None
    assert describe(chosen) == "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519"
    # Only unknown ids for a type: that proposal does not match, and nothing raises.
    only_unknown = [Proposal(1, ProtocolId.IKE, b"", [unknown_encr, *proposal.transforms[1:]])]
    assert select(only_unknown, parse_ike("default")) is None
    # RFC 7296 §3.3.6: a transform type we do not understand makes the proposal unacceptable.
    with_unknown_type = [Proposal(1, ProtocolId.IKE, b"", [*proposal.transforms, Transform(TransformType(200), 1)])]
    assert select(with_unknown_type, parse_ike("default")) is None
    # A protocol we do not negotiate.
    assert select([Proposal(1, ProtocolId(9), b"", proposal.transforms)], parse_ike("default")) is None


def test_select_key_length_must_match() -> None:
    assert select(parse_ike("aes256gcm16-prfsha256-x25519"), parse_ike("aes128gcm16-prfsha256-x25519")) is None
    assert select(parse_esp("aes192-sha256"), parse_esp("default")) is None
    # AES without its Key Length attribute, or with one where none belongs.
    bare_aes = Proposal(1, ProtocolId.ESP, ESP_SPI, [
        Transform(ENCR, EncrId.ENCR_AES_GCM_16), Transform(ESN, EsnId.NO_ESN)])
    assert select([bare_aes], parse_esp("default")) is None
    chacha_256 = Proposal(1, ProtocolId.ESP, ESP_SPI, [
        Transform.make(ENCR, EncrId.ENCR_CHACHA20_POLY1305, 256), Transform(ESN, EsnId.NO_ESN)])
    assert select([chacha_256], parse_esp("default")) is None


def test_select_refuses_transforms_with_unknown_attributes() -> None:
    """RFC 7296 §3.3.6: a transform with an attribute we do not understand is unacceptable."""
    odd = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 128)
    odd.attributes.append(TransformAttribute(TransformAttributeType(99), 5))
    twice = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 128)
    twice.attributes.append(TransformAttribute(TransformAttributeType.KEY_LENGTH, 128))
    tlv = Transform(ENCR, EncrId.ENCR_AES_GCM_16, [TransformAttribute(TransformAttributeType.KEY_LENGTH, b"\x00\x80")])
    for encr in (odd, twice, tlv):
        offered = [Proposal(1, ProtocolId.ESP, ESP_SPI, [encr, Transform(ESN, EsnId.NO_ESN)])]
        assert select(offered, parse_esp("default")) is None
    good = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 256)
    offered = [Proposal(1, ProtocolId.ESP, ESP_SPI, [odd, good, Transform(ESN, EsnId.NO_ESN)])]
    chosen = select(offered, parse_esp("default"))
    assert chosen is not None and describe(chosen) == "AES_GCM_16_256/NO_EXT_SEQ"


def test_select_aead_and_integrity() -> None:
    gcm = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 128)
    cbc = Transform.make(ENCR, EncrId.ENCR_AES_CBC, 128)
    sha = Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128)
    none = Transform(INTEG, IntegId.NONE)
    esn = Transform(ESN, EsnId.NO_ESN)

    def offer(*transforms: Transform) -> list[Proposal]:
        return [Proposal(1, ProtocolId.ESP, ESP_SPI, list(transforms))]

    # RFC 7296 §3.3: an AEAD with a single INTEG of NONE is fine, and NONE is echoed.
    chosen = select(offer(gcm, none, esn), parse_esp("default"))
    assert chosen is not None and describe(chosen) == "AES_GCM_16_128/NONE/NO_EXT_SEQ"
    # A mixed proposal: the AEAD cannot take SHA-256, the CBC cipher can.
    chosen = select(offer(gcm, cbc, sha, esn), parse_esp("default"))
    assert chosen is not None and describe(chosen) == "AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ"
    assert select(offer(gcm, sha, esn), parse_esp("default")) is None
    # A classic cipher without integrity, or with INTEG NONE, never matches.
    assert select(offer(cbc, esn), parse_esp("default")) is None
    assert select(offer(cbc, none, esn), parse_esp("default")) is None
    # Integrity we do not have configured.
    assert select(offer(cbc, Transform(INTEG, IntegId.AUTH_HMAC_SHA1_96), esn), parse_esp("default")) is None


def test_select_esp_pfs_rules() -> None:
    no_pfs = with_spi(parse_esp("aes128gcm16"), ESP_SPI)
    pfs = with_spi(parse_esp("aes128gcm16-x25519"), ESP_SPI)
    optional = with_spi(parse_esp("aes128gcm16-x25519-modpnone"), ESP_SPI)
    # We want PFS, the peer offers none: no match.
    assert select(no_pfs, parse_esp("aes128gcm16-x25519")) is None
    # We want none, the peer insists on a group: no match; offers NONE as well: NONE chosen.
    assert select(pfs, parse_esp("aes128gcm16")) is None
    chosen = select(optional, parse_esp("aes128gcm16"))
    assert chosen is not None and chosen_dh(chosen) == DhGroup.NONE
    assert describe(chosen) == "AES_GCM_16_128/MODP_NONE/NO_EXT_SEQ"
    # We make PFS optional: either answer works.
    chosen = select(no_pfs, parse_esp("aes128gcm16-x25519-modpnone"))
    assert chosen is not None and of_type(chosen, DH) == []
    chosen = select(pfs, parse_esp("aes128gcm16-ecp256-x25519-modpnone"))
    assert chosen is not None and chosen_dh(chosen) == DhGroup.CURVE25519
    # Both without PFS.
    chosen = select(no_pfs, parse_esp("default"))
    assert chosen is not None and chosen_dh(chosen) == DhGroup.NONE


def test_select_esn_rules() -> None:
    gcm = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 128)
    without_esn = [Proposal(1, ProtocolId.ESP, ESP_SPI, [gcm])]
    # An absent ESN transform means NO_ESN (RFC 7296 §3.3.2): fine if we do NO_ESN.
    chosen = select(without_esn, parse_esp("aes128gcm16"))
    assert chosen is not None and describe(chosen) == "AES_GCM_16_128"
    assert child_suite(chosen).esn is False
    assert select(without_esn, parse_esp("aes128gcm16-esn")) is None
    chosen = select(with_spi(parse_esp("aes128gcm16-esn-noesn"), ESP_SPI), parse_esp("aes128gcm16-noesn-esn"))
    assert chosen is not None and of_type(chosen, ESN)[0].id == EsnId.ESN  # the peer's order
    assert select(with_spi(parse_esp("aes128gcm16-esn"), ESP_SPI), parse_esp("aes128gcm16")) is None


def test_select_ike_needs_prf_and_dh() -> None:
    full = one("aes128gcm16-prfsha256-x25519")
    without_dh = [Proposal(1, ProtocolId.IKE, b"", [t for t in full.transforms if t.type != DH])]
    without_prf = [Proposal(1, ProtocolId.IKE, b"", [t for t in full.transforms if t.type != PRF])]
    dh_none = [Proposal(1, ProtocolId.IKE, b"", [*full.transforms[:2], Transform(DH, DhGroup.NONE)])]
    for offered in (without_dh, without_prf, dh_none):
        assert select(offered, parse_ike("default")) is None
    # Protocols never cross.
    assert select(with_spi(parse_esp("aes128gcm16"), ESP_SPI), parse_ike("default")) is None
    assert select(parse_ike("default"), parse_esp("default")) is None


def test_select_ah() -> None:
    ah = [Proposal(3, ProtocolId.AH, ESP_SPI, [Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128),
                                               Transform(ESN, EsnId.NO_ESN)])]
    ours = [Proposal(1, ProtocolId.AH, b"", [Transform(INTEG, IntegId.AUTH_HMAC_SHA2_512_256),
                                             Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128)])]
    chosen = select(ah, ours)
    assert chosen is not None and describe(chosen) == "HMAC_SHA2_256_128/NO_EXT_SEQ"
    check_chosen(chosen, ah)
    with_encr = [Proposal(3, ProtocolId.AH, ESP_SPI, [*ah[0].transforms, *one("aes128gcm16", ike=False).transforms[:1]])]
    assert select(with_encr, ours) is None


# A pool of transforms for the property: ours, near misses (other key lengths, unknown ids,
# odd attributes) and NONE values.
_POOL: list[Transform] = [
    *[t for p in parse_ike("default, aes128-aesxcbc-modp4096, aes256ccm16-prfsha256-ecp521") for t in p.transforms],
    *[t for p in parse_esp("default, aes192gcm16-aes128gmac-esn-x25519-modpnone, null-sha512") for t in p.transforms],
    Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 64), Transform(ENCR, EncrId.ENCR_AES_CBC),
    Transform.make(ENCR, EncrId.ENCR_CHACHA20_POLY1305, 256), Transform(ENCR, 4321),
    Transform(ENCR, EncrId.ENCR_AES_GCM_16, [TransformAttribute(TransformAttributeType(17), 1)]),
    Transform(INTEG, IntegId.NONE), Transform(INTEG, 999), Transform(PRF, 77), Transform(DH, DhGroup.NONE),
    Transform(DH, 4242), Transform(ESN, 9), Transform(TransformType.ADDKE1, 0),
    Transform(TransformType.ADDKE1, DhGroup.CURVE25519), Transform(TransformType(250), 1),
]
_CONFIGURED = [
    parse_ike("default"), parse_esp("default"), parse_ike("aes128-aesxcbc-modp4096, aes256ccm16-prfsha256-ecp521"),
    parse_esp("aes192gcm16-aes128gmac-esn-x25519-modpnone, null-sha512"), parse_esp("aes256-sha384-esn-noesn-ecp384"),
]


_BASES = [p for ours in _CONFIGURED for p in ours]


@st.composite
def offered_proposals(draw: st.DrawFn) -> list[Proposal]:
    """Proposals like a peer's: pieces of ours (some types dropped), shuffled with near misses."""
    # Distinct numbers (RFC 7296 §3.3.1 numbers them 1, 2, ...; any distinct ones will do here).
    numbers = draw(st.lists(st.integers(1, 255), min_size=1, max_size=4, unique=True))
    proposals = []
    for number in numbers:
        base = draw(st.sampled_from(_BASES))
        protocol = draw(st.sampled_from([base.protocol, base.protocol, ProtocolId.AH]))
        spi = b"" if protocol == ProtocolId.IKE else draw(st.binary(min_size=4, max_size=4).filter(any))
        kept = [t for t in base.transforms if draw(st.integers(0, 4))]  # most of them
        junk = draw(st.lists(st.sampled_from(_POOL), max_size=4))
        transforms = draw(st.permutations([*kept, *junk]))
        proposals.append(Proposal(number, protocol, spi,
                                  [Transform(t.type, t.id, list(t.attributes)) for t in transforms]))
    return proposals


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(offered=offered_proposals(), configured=st.sampled_from(_CONFIGURED))
def test_select_only_returns_what_was_offered(offered: list[Proposal], configured: list[Proposal]) -> None:
    chosen = select(offered, configured)
    if chosen is None:
        return
    kinds = [t.type for t in chosen.transforms]
    assert len(kinds) == len(set(kinds)), "one transform per type"
    # Some offered proposal has this number, protocol and SPI, every chosen transform, and
    # exactly the chosen types.
    assert any(p.number == chosen.number and p.protocol == chosen.protocol and p.spi == chosen.spi
               and all(t in p.transforms for t in chosen.transforms)
               and {t.type for t in p.transforms} == set(kinds) for p in offered)
    # Every chosen transform is also one of ours, or a NONE that absence stands for.
    for transform in chosen.transforms:
        assert transform.id == 0 or any(transform in p.transforms for p in configured)
    # What the responder chooses, the initiator's check accepts.
    check_chosen(chosen, offered)
    if chosen.protocol == ProtocolId.ESP:
        suite = child_suite(chosen)
        assert suite.enc_key_bytes >= 0 and (suite.integ == IntegId.NONE) == (suite.integ_key_bytes == 0)


@settings(max_examples=200)
@given(offered=offered_proposals())
def test_select_finds_our_own_proposal_when_offered(offered: list[Proposal]) -> None:
    """Offering exactly one of our proposals always matches, whatever junk comes before it."""
    for ours in _CONFIGURED:
        for proposal in ours:
            spi = b"" if proposal.protocol == ProtocolId.IKE else ESP_SPI
            exact = Proposal(200, proposal.protocol, spi, proposal.transforms)
            chosen = select([*offered, exact], ours)
            assert chosen is not None


# -- check_chosen() --------------------------------------------------------------------------


SENT_IKE = parse_ike("aes128gcm16-prfsha256-x25519-ecp256, aes256-sha384-modp3072")
SENT_ESP = with_spi(parse_esp("aes128gcm16-esn, aes256-sha256-x25519-modpnone"), ESP_SPI)


def answer(number: int, protocol: ProtocolId, spi: bytes, *transforms: Transform) -> Proposal:
    return Proposal(number, protocol, spi, list(transforms))


GCM128 = Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 128)
CBC256 = Transform.make(ENCR, EncrId.ENCR_AES_CBC, 256)
PRF256 = Transform(PRF, PrfId.PRF_HMAC_SHA2_256)
SHA256 = Transform(INTEG, IntegId.AUTH_HMAC_SHA2_256_128)
X25519 = Transform(DH, DhGroup.CURVE25519)
R_SPI = b"\x0a\x0b\x0c\x0d"


def test_check_chosen_accepts_valid_answers() -> None:
    check_chosen(answer(1, ProtocolId.IKE, b"", GCM128, PRF256, X25519), SENT_IKE)
    check_chosen([answer(1, ProtocolId.IKE, b"", GCM128, PRF256, Transform(DH, DhGroup.ECP_256))], SENT_IKE)
    check_chosen(answer(2, ProtocolId.IKE, b"", CBC256, Transform(PRF, PrfId.PRF_HMAC_SHA2_384),
                        Transform(INTEG, IntegId.AUTH_HMAC_SHA2_384_192), Transform(DH, DhGroup.MODP_3072)),
                 SENT_IKE)
    check_chosen(answer(1, ProtocolId.IKE, bytes(range(1, 9)), GCM128, PRF256, X25519), SENT_IKE)  # IKE rekey
    check_chosen(answer(1, ProtocolId.ESP, R_SPI, GCM128, Transform(ESN, EsnId.ESN)), SENT_ESP)
    # ESP with the PFS group, or without DH because we offered NONE; ESN absent = NO_ESN, offered.
    check_chosen(answer(2, ProtocolId.ESP, R_SPI, CBC256, SHA256, X25519, Transform(ESN, EsnId.NO_ESN)), SENT_ESP)
    check_chosen(answer(2, ProtocolId.ESP, R_SPI, CBC256, SHA256), SENT_ESP)
    check_chosen(answer(2, ProtocolId.ESP, R_SPI, CBC256, SHA256, Transform(DH, DhGroup.NONE)), SENT_ESP)
    # The transforms may come in any order.
    check_chosen(answer(1, ProtocolId.IKE, b"", X25519, PRF256, GCM128), SENT_IKE)


@pytest.mark.parametrize(("chosen", "sent"), [
    pytest.param([], SENT_IKE, id="no proposal"),
    pytest.param([answer(1, ProtocolId.IKE, b"", GCM128, PRF256, X25519)] * 2, SENT_IKE, id="two proposals"),
    pytest.param(answer(3, ProtocolId.IKE, b"", GCM128, PRF256, X25519), SENT_IKE, id="number not sent"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, PRF256, X25519), SENT_IKE, id="other protocol"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, GCM128, PRF256, X25519), SENT_IKE, id="two ENCR"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, PRF256, X25519, Transform(DH, DhGroup.ECP_256)),
                 SENT_IKE, id="two DH"),
    pytest.param(answer(1, ProtocolId.IKE, b"", Transform.make(ENCR, EncrId.ENCR_AES_GCM_16, 256), PRF256, X25519),
                 SENT_IKE, id="key length not offered"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, Transform(PRF, PrfId.PRF_HMAC_SHA2_384), X25519),
                 SENT_IKE, id="PRF from another proposal"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, PRF256, Transform(DH, DhGroup.MODP_2048)),
                 SENT_IKE, id="group not offered"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, PRF256), SENT_IKE, id="IKE without DH"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, X25519), SENT_IKE, id="IKE without PRF"),
    pytest.param(answer(1, ProtocolId.IKE, b"", GCM128, PRF256, X25519, SHA256), SENT_IKE, id="INTEG not offered"),
    pytest.param(answer(2, ProtocolId.IKE, b"", CBC256, Transform(PRF, PrfId.PRF_HMAC_SHA2_384),
                        Transform(DH, DhGroup.MODP_3072)), SENT_IKE, id="classic cipher without INTEG"),
    pytest.param(answer(1, ProtocolId.IKE, b"\x01\x02", GCM128, PRF256, X25519), SENT_IKE, id="IKE SPI size"),
    pytest.param(answer(1, ProtocolId.ESP, b"", GCM128, Transform(ESN, EsnId.ESN)), SENT_ESP, id="ESP without SPI"),
    pytest.param(answer(1, ProtocolId.ESP, b"\x00" * 4, GCM128, Transform(ESN, EsnId.ESN)), SENT_ESP, id="ESP SPI 0"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128), SENT_ESP, id="ESN absent, only ESN offered"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, Transform(ESN, EsnId.NO_ESN)), SENT_ESP,
                 id="NO_ESN not offered"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, X25519, Transform(ESN, EsnId.ESN)), SENT_ESP,
                 id="PFS not offered"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, Transform(INTEG, IntegId.NONE), Transform(ESN, EsnId.ESN)),
                 SENT_ESP, id="INTEG NONE not offered"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, Transform(ESN, EsnId.ESN)), SENT_ESP, id="ESP without ENCR"),
    pytest.param(answer(2, ProtocolId.ESP, R_SPI, CBC256, SHA256),
                 with_spi(parse_esp("aes256-sha256-x25519"), ESP_SPI)[:1] * 2, id="PFS required, DH absent"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, CBC256, SHA256, Transform(TransformType(250), 1)),
                 with_spi(parse_esp("aes256-sha256"), ESP_SPI), id="unknown type"),
])
def test_check_chosen_refuses(chosen: Proposal | list[Proposal], sent: list[Proposal]) -> None:
    with pytest.raises(IkeProtocolError) as excinfo:
        check_chosen(chosen, sent)
    no_proposal(excinfo)


def test_check_chosen_refuses_integrity_with_an_aead() -> None:
    """Even if we (wrongly) offered both in one proposal, an AEAD answer must carry no INTEG."""
    mixed = [Proposal(1, ProtocolId.ESP, ESP_SPI, [GCM128, CBC256, SHA256])]
    check_chosen(answer(1, ProtocolId.ESP, R_SPI, GCM128), mixed)
    check_chosen(answer(1, ProtocolId.ESP, R_SPI, CBC256, SHA256), mixed)
    with pytest.raises(IkeProtocolError) as excinfo:
        check_chosen(answer(1, ProtocolId.ESP, R_SPI, GCM128, SHA256), mixed)
    no_proposal(excinfo)


# -- helpers ---------------------------------------------------------------------------------


def test_dh_groups_and_chosen_dh() -> None:
    proposals = parse_esp("aes128gcm16-ecp384-modpnone-x25519, aes256-sha256-x25519-ecp256, aes128gcm16")
    assert dh_groups(proposals) == [DhGroup.ECP_384, DhGroup.CURVE25519, DhGroup.ECP_256]
    assert dh_groups(parse_esp("default")) == []
    assert chosen_dh(proposals[2]) == DhGroup.NONE
    assert chosen_dh(answer(1, ProtocolId.IKE, b"", GCM128, PRF256, X25519)) == DhGroup.CURVE25519


def test_restrict_dh() -> None:
    proposals = parse_ike(["aes128gcm16-prfsha256-x25519-ecp256-ecp384", "aes256-sha256-modp2048"])
    before = [describe(p) for p in proposals]
    restricted = restrict_dh(proposals, DhGroup.ECP_384)
    assert described(restricted) == [
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/ECP_384/CURVE_25519/ECP_256",
        "AES_CBC_256/PRF_HMAC_SHA2_256/HMAC_SHA2_256_128/MODP_2048",  # no ECP-384: unchanged
    ]
    assert [p.number for p in restricted] == [1, 2]
    assert described(proposals) == before  # the input is not changed
    assert dh_groups(restricted)[0] == DhGroup.ECP_384
    assert restrict_dh(proposals, DhGroup.CURVE25519) == proposals


def test_with_spi() -> None:
    proposals = parse_esp("default")
    spied = with_spi(proposals, ESP_SPI)
    assert [p.spi for p in spied] == [ESP_SPI, ESP_SPI]
    assert [p.spi for p in proposals] == [b"", b""]
    assert [p.transforms for p in spied] == [p.transforms for p in proposals]
    spied[0].transforms.clear()
    assert proposals[0].transforms


def test_describe_unknown_values() -> None:
    proposal = Proposal(1, ProtocolId.IKE, b"", [
        Transform(ENCR, 4321), Transform.make(ENCR, 4322, 128), Transform(PRF, 200), Transform(INTEG, 999),
        Transform(DH, 4242), Transform(ESN, 7), Transform(TransformType.ADDKE1, DhGroup.CURVE25519),
        Transform(TransformType(250), 3)])
    assert describe(proposal) == (
        "ENCR_4321/ENCR_4322_128/PRF_200/INTEG_999/KE_4242/ESN_7/ADDKE1:CURVE_25519/TRANSFORMTYPE_250_3")


# -- child_suite() against the datapath ------------------------------------------------------


def default_esp_choices() -> list[tuple[str, Proposal]]:
    """Every single-algorithm answer a responder can give to our default ESP proposals."""
    choices = []
    for proposal in parse_esp("default"):
        integs: list[list[Transform]] = [[t] for t in of_type(proposal, INTEG)] or [[]]
        for encr in of_type(proposal, ENCR):
            for integ in integs:
                transforms = [encr, *integ, *of_type(proposal, ESN)]
                chosen = Proposal(proposal.number, ProtocolId.ESP, R_SPI, transforms)
                choices.append((describe(chosen), chosen))
    return choices


EXPECTED_SIZES = {
    "AES_GCM_16_128/NO_EXT_SEQ": (EncrId.ENCR_AES_GCM_16, 20, IntegId.NONE, 0),  # RFC 4106 §8.1
    "AES_GCM_16_256/NO_EXT_SEQ": (EncrId.ENCR_AES_GCM_16, 36, IntegId.NONE, 0),
    "CHACHA20_POLY1305/NO_EXT_SEQ": (EncrId.ENCR_CHACHA20_POLY1305, 36, IntegId.NONE, 0),  # RFC 7634
    "AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_256_128, 32),
    "AES_CBC_128/HMAC_SHA2_384_192/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_384_192, 48),
    "AES_CBC_128/HMAC_SHA2_512_256/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 16, IntegId.AUTH_HMAC_SHA2_512_256, 64),
    "AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_256_128, 32),
    "AES_CBC_256/HMAC_SHA2_384_192/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_384_192, 48),
    "AES_CBC_256/HMAC_SHA2_512_256/NO_EXT_SEQ": (EncrId.ENCR_AES_CBC, 32, IntegId.AUTH_HMAC_SHA2_512_256, 64),
}


def test_default_esp_choices_are_all_covered() -> None:
    assert sorted(name for name, _ in default_esp_choices()) == sorted(EXPECTED_SIZES)


@pytest.mark.parametrize(("name", "chosen"), default_esp_choices(), ids=[n for n, _ in default_esp_choices()])
def test_child_suite_keys_work_in_the_datapath(name: str, chosen: Proposal) -> None:
    # The responder's choice for an initiator offering exactly this combination.
    offered = [Proposal(4, ProtocolId.ESP, ESP_SPI, chosen.transforms)]
    selected = select(offered, parse_esp("default"))
    assert selected is not None and describe(selected) == name
    check_chosen(with_spi([selected], R_SPI)[0], offered)
    suite = child_suite(selected)
    assert (suite.enc, suite.enc_key_bytes, suite.integ, suite.integ_key_bytes) == EXPECTED_SIZES[name]
    assert (suite.esn, suite.dh, suite.legacy) == (False, DhGroup.NONE, False)

    # KEYMAT split by these sizes (RFC 7296 §2.17) goes straight into the SA.
    prf = crypto.prf(PrfId.PRF_HMAC_SHA2_256)
    keys = crypto.child_sa_keymat(prf, b"\x5a" * 32, b"\x01" * 32, b"\x02" * 32,
                                  suite.enc_key_bytes, suite.integ_key_bytes)
    initiator, responder = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")

    def sa(enc_key: bytes, auth_key: bytes) -> SecurityAssociation:
        return SecurityAssociation(
            spi=int.from_bytes(R_SPI, "big"), protocol=IpProto.ESP, src=initiator, dst=responder,
            mode=Mode.TUNNEL, enc=suite.enc, enc_key=bytearray(enc_key), auth=suite.integ,
            auth_key=bytearray(auth_key), esn=suite.esn)

    sender = EspContext(sa(keys.encr_i, keys.integ_i))  # the initiator's outbound SA
    receiver = EspContext(sa(keys.encr_i, keys.integ_i))  # the responder's inbound twin
    packet = inner(4, b"proposal " + name.encode())
    drop, esp = sender.encap(packet, 1)
    assert drop is Drop.OK
    drop, result = receiver.decap(esp, ReplayWindow(64, esn=suite.esn))
    assert drop is Drop.OK and result is not None
    assert result.packet == packet
    # The other direction's keys are different keys: the packet does not verify with them.
    other = EspContext(sa(keys.encr_r, keys.integ_r))
    assert other.decap(esp)[0] is not Drop.OK


def test_child_suite_esn_pfs_and_gmac() -> None:
    chosen = select(with_spi(parse_esp("aes256gcm16-esn-ecp384"), ESP_SPI), parse_esp("aes256gcm16-esn-ecp384"))
    assert chosen is not None
    assert child_suite(chosen) == ChildSuite(EncrId.ENCR_AES_GCM_16, 36, IntegId.NONE, 0, True, DhGroup.ECP_384)
    gmac = child_suite(one("aes128gmac", ike=False))
    assert (gmac.enc, gmac.enc_key_bytes, gmac.integ_key_bytes) == (EncrId.ENCR_NULL_AUTH_AES_GMAC, 20, 0)  # RFC 4543 §5
    null = child_suite(one("null-sha384", ike=False))
    assert (null.enc_key_bytes, null.integ_key_bytes) == (0, 48)


@pytest.mark.parametrize("chosen", [
    pytest.param(one("aes128gcm16-prfsha256-x25519"), id="IKE proposal"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, Transform.make(ENCR, EncrId.ENCR_AES_CCM_16, 128)), id="CCM"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, CBC256), id="two ENCR"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, SHA256), id="no ENCR"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, Transform(ENCR, EncrId.ENCR_AES_GCM_16)), id="GCM no key length"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, Transform.make(ENCR, EncrId.ENCR_AES_CBC, 100), SHA256),
                 id="odd key length"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, GCM128, SHA256), id="AEAD with INTEG"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, CBC256), id="CBC without INTEG"),
    pytest.param(answer(1, ProtocolId.ESP, R_SPI, CBC256, Transform(INTEG, IntegId.AUTH_AES_XCBC_96)),
                 id="INTEG the datapath lacks"),
])
def test_child_suite_refuses(chosen: Proposal) -> None:
    with pytest.raises(TransformError):
        child_suite(chosen)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(offered=offered_proposals(), configured=st.sampled_from(_CONFIGURED),
       spis=st.lists(st.binary(min_size=4, max_size=4).filter(any), min_size=4, max_size=4))
def test_select_remembered_is_select_computed(offered: list[Proposal], configured: list[Proposal],
                                              spis: list[bytes]) -> None:
    """select() remembers its choices by the proposals' shape (not their SPIs): asked again,
    with other SPIs, it answers what the computation (_select) does."""
    from ipsecd.ike import proposals

    for round_ in range(3):  # the first call computes, the later ones remember
        again = [Proposal(p.number, p.protocol,
                          p.spi if p.protocol == ProtocolId.IKE or not round_ else spis[k % 4],
                          [Transform(t.type, t.id, [TransformAttribute(a.type, a.value)
                                                    for a in t.attributes])
                           for t in p.transforms])
                 for k, p in enumerate(offered)]
        found = proposals._select(again, configured)
        chosen = select(again, configured)
        assert chosen == (found[1] if found is not None else None)
        if chosen is not None and found is not None:
            source = again[found[0]]
            assert chosen.spi == source.spi
            # copies, not aliases
            assert all(t is not u for t in chosen.transforms for u in source.transforms)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(offered=offered_proposals())
def test_describe_remembered_is_describe_computed(offered: list[Proposal]) -> None:
    """describe() remembers its text by the transforms' shape: the same as writing it out."""
    from ipsecd.ike import proposals

    for _ in range(2):
        for p in offered:
            assert describe(p) == "/".join(proposals._name(t) for t in p.transforms)
