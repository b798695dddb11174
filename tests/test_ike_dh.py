"""IKEv2 key exchange groups (ipsecd.ike.dh).

Known answers: RFC 5903 §8 (ECP), RFC 7748 §6 (Curve25519, Curve448).  The
MODP primes typed into ipsecd/ike/dh.py are recomputed here from their
defining formula (RFC 2409 §6 / RFC 3526: p = 2^N - 2^(N-64) - 1 + 2^64 *
([2^(N-130) pi] + k)) with pi computed by Machin's formula, so a mistyped
digit fails.  Then: both sides agree in every group, and every RFC 6989
check refuses what it should.
"""

from __future__ import annotations

import logging
import random

import pytest
from ike_vectors import h

from ipsecd.ike.constants import DhGroup, NotifyType
from ipsecd.ike.dh import GROUPS, EcpGroup, ModpGroup, group
from ipsecd.ike.errors import IkeLocalError, IkeProtocolError, InvalidPublicValueError

LEGACY = {DhGroup.MODP_768, DhGroup.MODP_1024, DhGroup.MODP_1536}


@pytest.mark.parametrize("group_id", list(GROUPS), ids=lambda g: g.name)
def test_both_sides_agree(group_id: DhGroup) -> None:
    g = group(group_id, allow_legacy=True)
    a, b = g.generate(), g.generate()
    assert len(a.public_bytes()) == len(b.public_bytes()) == g.public_length
    shared = a.exchange(b.public_bytes())
    assert shared == b.exchange(a.public_bytes())
    expected = g.public_length // 2 if isinstance(g, EcpGroup) else g.public_length  # ECP: x only
    assert len(shared) == expected
    assert "PrivateKey" in repr(a) and a.public_bytes().hex() not in repr(a)


# --------------------------------------------------------------------------- known answers

# RFC 5903 §8.1 (256-bit random ECP group) and §8.2 (384-bit).
ECP_VECTORS = [
    (DhGroup.ECP_256,
     h("C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433"),
     h("DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180"
       "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3"),
     h("D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63"
       "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB"),
     h("D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE")),
    (DhGroup.ECP_384,
     h("099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655 E35B5380 41E649EE"
       "3FAEF896 783AB194"),
     h("667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6 DE3AC808 ACB4BDB4"
       "C88732AE E95F41AA 9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E"
       "EB9FCFF3 C2C947DA E69B4C63 4573A81C"),
     h("E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D 0D1AC43A 0336DEF9"
       "6FDA41D0 774A3571 DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF"
       "F83FA401 42209DFF 5EAAD96D B9E6386C"),
     h("11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4 D6031355 69B9E9D0"
       "9CF5D4A2 70F59746")),
]
# RFC 5903 §8.1: the responder's private value r, so both directions are checked for P-256.
ECP_256_R = h("C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53")


@pytest.mark.parametrize(("group_id", "i", "g_i", "g_r", "g_ir"), ECP_VECTORS, ids=["ecp256", "ecp384"])
def test_ecp_rfc5903(group_id: DhGroup, i: bytes, g_i: bytes, g_r: bytes, g_ir: bytes) -> None:
    key = group(group_id).load_private(i)
    assert key.public_bytes() == g_i  # RFC 5903 §7: x | y, no 0x04 prefix
    assert key.exchange(g_r) == g_ir  # the x coordinate of g^ir
    if group_id == DhGroup.ECP_256:
        responder = group(group_id).load_private(ECP_256_R)
        assert responder.public_bytes() == g_r and responder.exchange(g_i) == g_ir


# RFC 7748 §6.1 (X25519) and §6.2 (X448): Alice's and Bob's keys and the shared secret K.
MONTGOMERY_VECTORS = [
    (DhGroup.CURVE25519,
     h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
     h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
     h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
     h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
     h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")),
    (DhGroup.CURVE448,
     h("9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28dd9c9baf574a9419744897391006382a6f127ab1d"
       "9ac2d8c0a598726b"),
     h("9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c22c5d9bbc836647241d953d40c5b12da88120d53"
       "177f80e532c41fa0"),
     h("1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d6927c120bb5ee8972b0d3e21374c9c921b09d1b0"
       "366f10b65173992d"),
     h("3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b43027d8b972fc3e34fb4232a13ca706dcb57aec3dae"
       "07bdc1c67bf33609"),
     h("07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282bb60c0b56fd2464c335543936521c24403085d59a"
       "449a5037514a879d")),
]


@pytest.mark.parametrize(("group_id", "a", "a_pub", "b", "b_pub", "k"), MONTGOMERY_VECTORS, ids=["x25519", "x448"])
def test_montgomery_rfc7748(group_id: DhGroup, a: bytes, a_pub: bytes, b: bytes, b_pub: bytes, k: bytes) -> None:
    alice, bob = group(group_id).load_private(a), group(group_id).load_private(b)
    assert alice.public_bytes() == a_pub and bob.public_bytes() == b_pub
    assert alice.exchange(b_pub) == bob.exchange(a_pub) == k


def test_modp_load_private() -> None:
    g = group(DhGroup.MODP_2048)
    assert isinstance(g, ModpGroup)
    key = g.load_private((12345).to_bytes(2, "big"))
    assert int.from_bytes(key.public_bytes(), "big") == pow(2, 12345, g.p)
    other = g.generate()
    assert key.exchange(other.public_bytes()) == other.exchange(key.public_bytes())


# --------------------------------------------------------------------------- the MODP primes


def pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula pi = 16 atan(1/5) - 4 atan(1/239) in integers."""
    guard = 64
    one = 1 << (bits + guard)

    def atan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> guard


# (bits, k) of p = 2^N - 2^(N-64) - 1 + 2^64 * ([2^(N-130) pi] + k): RFC 2409 §6.1, §6.2
# (groups 1, 2) and RFC 3526 §2-§7 (groups 5, 14-18).
MODP_FORMULA = {
    DhGroup.MODP_768: (768, 149686),
    DhGroup.MODP_1024: (1024, 129093),
    DhGroup.MODP_1536: (1536, 741804),
    DhGroup.MODP_2048: (2048, 124476),
    DhGroup.MODP_3072: (3072, 1690314),
    DhGroup.MODP_4096: (4096, 240904),
    DhGroup.MODP_6144: (6144, 929484),
    DhGroup.MODP_8192: (8192, 4743158),
}


@pytest.mark.parametrize("group_id", list(MODP_FORMULA), ids=lambda g: g.name)
def test_modp_prime_matches_its_definition(group_id: DhGroup) -> None:
    n, k = MODP_FORMULA[group_id]
    expected = 2**n - 2**(n - 64) - 1 + 2**64 * (pi_fixed(n - 130) + k)
    g = GROUPS[group_id]
    assert isinstance(g, ModpGroup)
    assert g.p == expected and g.public_length * 8 == n


def probably_prime(n: int, rounds: int = 3) -> bool:
    """Miller-Rabin with fixed bases (enough to catch a mistyped constant)."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11)[:rounds]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("group_id", [DhGroup.MODP_768, DhGroup.MODP_1024, DhGroup.MODP_1536, DhGroup.MODP_2048])
def test_modp_primes_are_safe_primes(group_id: DhGroup) -> None:
    """RFC 6989 §2.1 relies on p = 2q + 1 with q prime."""
    g = GROUPS[group_id]
    assert isinstance(g, ModpGroup)
    assert probably_prime(g.p, 2) and probably_prime((g.p - 1) // 2, 2)


# --------------------------------------------------------------------------- RFC 6989 checks


def refused(group_id: DhGroup, peer: bytes) -> InvalidPublicValueError:
    with pytest.raises(InvalidPublicValueError) as info:
        group(group_id, allow_legacy=True).generate().exchange(peer)
    assert info.value.code == NotifyType.INVALID_SYNTAX and info.value.group == group_id
    assert isinstance(info.value, IkeProtocolError)
    return info.value


@pytest.mark.parametrize("group_id", [DhGroup.MODP_1024, DhGroup.MODP_2048, DhGroup.MODP_3072])
def test_modp_public_value_checks(group_id: DhGroup) -> None:
    g = group(group_id, allow_legacy=True)
    assert isinstance(g, ModpGroup)
    size = g.public_length
    for y in (0, 1, g.p - 1, g.p, 2**(8 * size) - 1):
        refused(group_id, y.to_bytes(size, "big"))
    good = g.generate().public_bytes()
    refused(group_id, good[1:])  # one octet short
    refused(group_id, b"\x00" + good)  # one octet long (even if the value is fine)
    refused(group_id, b"")
    assert len(g.generate().exchange((2).to_bytes(size, "big"))) == size  # the smallest allowed y


@pytest.mark.parametrize("group_id", [DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521])
def test_ecp_public_value_checks(group_id: DhGroup) -> None:
    g = group(group_id)
    good = g.generate().public_bytes()
    off_curve = bytearray(good)
    off_curve[-1] ^= 0x01  # y no longer matches x
    refused(group_id, bytes(off_curve))
    refused(group_id, bytes(len(good)))  # (0, 0): where SEC 1 would put the point at infinity
    refused(group_id, b"\x04" + good)  # the SEC 1 encoding is not the IKE one (RFC 5903 §7)
    refused(group_id, good[:-1])
    refused(group_id, b"\xff" * len(good))  # coordinates past the field prime


# Points of small order (RFC 7748 §6: "the all-zero value" check; u = 0 and u = 1 have order 1 and 4).
@pytest.mark.parametrize(("group_id", "size"), [(DhGroup.CURVE25519, 32), (DhGroup.CURVE448, 56)])
def test_montgomery_low_order_points(group_id: DhGroup, size: int) -> None:
    refused(group_id, bytes(size))
    refused(group_id, (1).to_bytes(size, "little"))
    refused(group_id, bytes(size - 1))
    refused(group_id, bytes(size + 1))


def test_legacy_groups_need_the_switch(caplog: pytest.LogCaptureFixture) -> None:
    for group_id in LEGACY:
        with pytest.raises(IkeLocalError):
            group(group_id)
        with caplog.at_level(logging.WARNING, "ipsecd.ike.dh"):
            assert group(group_id, allow_legacy=True).legacy
        assert "legacy" in caplog.text
    for group_id in set(GROUPS) - LEGACY:
        assert not group(group_id).legacy


def test_unimplemented_groups() -> None:
    for group_id in (DhGroup.NONE, DhGroup.MODP_2048_256, DhGroup.BRAINPOOL_P256R1, DhGroup(200)):
        with pytest.raises(IkeLocalError):
            group(group_id)


def test_random_modp_values_never_escape_the_error_class() -> None:
    rng = random.Random(7)
    g = group(DhGroup.MODP_2048)
    key = g.generate()
    for _ in range(50):
        peer = rng.randbytes(rng.choice((255, 256, 256, 257)))
        try:
            assert len(key.exchange(peer)) == 256
        except InvalidPublicValueError:
            pass
