"""Bounded fuzzing of the AH codec: any bytes into ``decap`` give a Drop or a packet.

The invariant (as h11's fuzz/): ``decap`` never raises, it returns
``(Drop.OK, packet)`` or ``(reason, b"")``, and so does ``encap``.  The
codec's ``RAISE_UNEXPECTED`` is set, so an exception it would otherwise log
and count as MALFORMED fails the test.  Inputs: random bytes, random bytes
behind a plausible IPv4/IPv6 header that names AH (to get past the first
checks), and mutations (flips, overwrites, cuts, insertions, deletions) of the
scapy corpus and of packets ipsecd signed.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipsecd.ah
from ipsecd.ah import AhContext, spi_of
from ipsecd.drops import Drop
from ipsecd.iana import IntegId, IpProto
from ipsecd.packet import ipv4_header, ipv6_header
from ipsecd.sa import Mode, SecurityAssociation

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = json.loads((Path(__file__).parent / "corpus" / "ah" / "vectors.json").read_text())["vectors"]


@pytest.fixture(autouse=True, scope="module")
def _raise_unexpected() -> Iterator[None]:
    """Unexpected exceptions in the codec fail the test instead of becoming MALFORMED."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ipsecd.ah, "RAISE_UNEXPECTED", True)
        yield

def encap_ok(ctx: AhContext, packet: bytes, seq: int) -> bytes:
    drop, out = ctx.encap(packet, seq)
    assert drop is Drop.OK, drop
    return out


class AnyWindow:
    """Accepts everything (the replay window is not under test)."""

    def check(self, seq_low: int, /) -> tuple[Drop, int]:
        return Drop.OK, seq_low

    def update(self, seq: int, /) -> None:
        pass


def corpus_context(vector: dict[str, object]) -> AhContext:
    sa = SecurityAssociation(
        spi=int(str(vector["spi"])), protocol=IpProto.AH,
        src=ipaddress.ip_address(str(vector["src"])), dst=ipaddress.ip_address(str(vector["dst"])),
        mode=Mode(str(vector["mode"])), auth=IntegId(int(str(vector["algorithm"]))),
        auth_key=bytearray.fromhex(str(vector["key"])), esn=bool(vector["esn"]))
    return AhContext(sa, allow_legacy=True)


CONTEXTS = [(corpus_context(v), bytes.fromhex(str(v["signed"]))) for v in CORPUS]


def assert_contract(result: tuple[Drop, bytes]) -> None:
    drop, out = result
    assert isinstance(drop, Drop)
    assert isinstance(out, bytes)
    if drop is Drop.OK:
        assert out  # an IP packet
    else:
        assert out == b""


def run(ctx: AhContext, data: bytes) -> None:
    assert_contract(ctx.decap(data))
    assert_contract(ctx.decap(data, AnyWindow()))
    assert spi_of(data) is None or isinstance(spi_of(data), int)


contexts = st.sampled_from(CONTEXTS)


@FUZZ
@given(contexts, st.binary(max_size=2000))
def test_random_bytes(case: tuple[AhContext, bytes], data: bytes) -> None:
    run(case[0], data)


@st.composite
def plausible(draw: st.DrawFn) -> bytes:
    """A valid IP header naming AH (or an extension header) followed by random bytes."""
    rest = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        header = ipv4_header(bytes(4), bytes(4), IpProto.AH, len(rest))
        return bytes(header) + rest
    nh = draw(st.sampled_from([IpProto.AH, IpProto.HOPOPT, IpProto.IPV6_ROUTE, IpProto.IPV6_OPTS,
                               IpProto.IPV6_FRAG]))
    return bytes(ipv6_header(bytes(16), bytes(16), nh, len(rest))) + rest


@FUZZ
@given(contexts, plausible())
def test_plausible_headers(case: tuple[AhContext, bytes], data: bytes) -> None:
    run(case[0], data)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(st.data())
def test_mutated_corpus(data: st.DataObject) -> None:
    ctx, seed = data.draw(contexts)
    run(ctx, data.draw(mutated(seed)))


@FUZZ
@given(st.data())
def test_mutated_own_packets(data: st.DataObject) -> None:
    ctx, seed = data.draw(contexts)
    # Re-sign a corpus plaintext with ipsecd, then mutate.
    plain = bytes.fromhex(str(next(v["plain"] for v in CORPUS if bytes.fromhex(str(v["signed"])) == seed)))
    signed = encap_ok(ctx, plain, 1)
    run(ctx, data.draw(mutated(signed)))


@FUZZ
@given(contexts, st.binary(max_size=600))
def test_encap_never_raises(case: tuple[AhContext, bytes], data: bytes) -> None:
    drop, out = case[0].encap(data, 1)
    assert_contract((drop, out))
    if drop is Drop.OK:
        assert case[0].decap(out)[0] in (Drop.OK, Drop.MALFORMED)


def test_ipv4_header_lengths_exhaustive() -> None:
    # Every IHL and total length byte pattern around a valid packet.
    ctx, signed = CONTEXTS[0]
    for ihl in range(16):
        for total in (0, 1, 19, 20, 21, len(signed) - 1, len(signed), len(signed) + 1, 0xFFFF):
            data = bytearray(signed)
            data[0] = 0x40 | ihl
            struct.pack_into("!H", data, 2, total)
            run(ctx, bytes(data))
