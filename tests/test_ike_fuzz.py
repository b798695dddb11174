"""Bounded fuzzing of the IKEv2 codec and SK protection.

The invariants (as h11's fuzz/):

* ``decode(any bytes)`` returns a Message or raises IkeProtocolError -
  nothing else; and a message that decodes re-encodes to octets that decode
  to the same Message.
* ``unprotect`` / ``unprotect_fragment`` of any mutation of a protected
  message raise only IkeProtocolError or IkeDecryptError.
* Messages built from random payload objects survive encode -> decode.

Inputs: random bytes, random payload chains behind a valid header (so the
header checks do not stop everything), and mutations (flips, overwrites,
cuts, insertions, deletions, with the header length fixed up or not) of the
seeds in tests/corpus/ike/messages.json.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgType,
    ConfigAttributeType,
    DhGroup,
    EncrId,
    ExchangeType,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttributeType,
    TransformType,
    TsType,
)
from ipsecd.ike.crypto import IkeSaSuite, SkCipher, unprotect, unprotect_fragment
from ipsecd.ike.errors import IkeDecryptError, IkeProtocolError
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
    Reader,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TSi,
    TSr,
    UnknownPayload,
    VendorID,
    _pull_traffic_selector,
    _pull_traffic_selector_short,
    decode,
    decode_payloads,
    encode,
)

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "corpus" / "ike" / "messages.json").read_text())["seeds"]
PROTECTED = [s for s in SEEDS if "SK_e" in s]


def decode_or_protocol_error(data: bytes) -> Message | None:
    """The invariant: a Message, or IkeProtocolError (returned as None); re-encoding is stable."""
    try:
        message = decode(data)
    except IkeProtocolError:
        return None
    again = decode(encode(message))
    assert again == message
    return message


# --------------------------------------------------------------------------- raw inputs


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes(data: bytes) -> None:
    decode_or_protocol_error(data)


def header(first: int, length: int, exchange: int = 35, flags: int = 0x08) -> bytes:
    return struct.pack("!8s8sBBBBII", b"\x01" * 8, b"\x02" * 8, first, 0x20, exchange, flags, 1, length)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=400))
def test_any_chain_behind_a_valid_header(first: int, chain: bytes) -> None:
    decode_or_protocol_error(header(first, 28 + len(chain)) + chain)


def generic(next_payload: int, body: bytes, critical: bool) -> bytes:
    return struct.pack("!BBH", next_payload, 0x80 if critical else 0, 4 + len(body)) + body


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 255), st.booleans(), st.binary(max_size=60)), min_size=1, max_size=6))
def test_chains_of_wellformed_generic_headers(parts: list[tuple[int, bool, bytes]]) -> None:
    """Right lengths, random types and bodies: reaches every payload parser."""
    chain = b"".join(
        generic(parts[i + 1][0] if i + 1 < len(parts) else 0, body, critical)
        for i, (_, critical, body) in enumerate(parts))
    decode_or_protocol_error(header(parts[0][0], 28 + len(chain)) + chain)
    try:
        decode_payloads(parts[0][0], chain)
    except IkeProtocolError:
        pass


# --------------------------------------------------------------------------- mutations of the corpus


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
    seed = draw(st.sampled_from(seeds))
    data = bytearray(bytes.fromhex(seed["hex"]))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
    if len(data) >= 28 and draw(st.booleans()):
        struct.pack_into("!I", data, 24, len(data))  # keep the header length right: go deeper
    return seed, bytes(data)


@FUZZ
@given(mutated(SEEDS))
def test_mutated_corpus(case: tuple[dict[str, Any], bytes]) -> None:
    decode_or_protocol_error(case[1])


def cipher_of(seed: dict[str, Any]) -> SkCipher:
    suite = IkeSaSuite(EncrId(seed["encr"]), PrfId.PRF_HMAC_SHA2_256, IntegId(seed["integ"]),
                       encr_key_bits=seed["key_bits"])
    return SkCipher(suite, bytes.fromhex(seed["SK_e"]), bytes.fromhex(seed["SK_a"]))


def test_protected_seeds_open() -> None:
    """The seeds themselves decrypt (so the mutation test below starts from valid messages)."""
    for seed in PROTECTED:
        data = bytes.fromhex(seed["hex"])
        if "fragment" in seed["name"]:
            unprotect_fragment(data, cipher_of(seed))
        else:
            unprotect(data, cipher_of(seed))


@FUZZ
@given(mutated(PROTECTED))
def test_mutated_protected_messages(case: tuple[dict[str, Any], bytes]) -> None:
    seed, data = case
    opener = unprotect_fragment if "fragment" in seed["name"] else unprotect
    try:
        opener(data, cipher_of(seed))
    except (IkeProtocolError, IkeDecryptError):
        pass


# --------------------------------------------------------------------------- structured round trips

blobs = st.binary(max_size=24)
u8, u16 = st.integers(0, 255), st.integers(0, 0xFFFF)
addresses4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
addresses6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)

attributes = st.builds(
    TransformAttribute, st.integers(0, 0x7FFF).map(TransformAttributeType), st.one_of(u16, blobs))
transforms = st.builds(
    Transform, u8.map(TransformType), u16, st.lists(attributes, max_size=3))
proposals = st.builds(
    Proposal, u8, u8.map(ProtocolId), st.binary(max_size=8), st.lists(transforms, max_size=4))
selectors = st.one_of(
    st.builds(TrafficSelector, addresses4, addresses4, u8, u16, u16),
    st.builds(TrafficSelector, addresses6, addresses6, u8, u16, u16),
    st.builds(RawTrafficSelector, u8.filter(lambda t: t not in (7, 8)).map(TsType), u8, blobs),
)


@st.composite
def deletes(draw: st.DrawFn) -> Delete:
    size = draw(st.integers(1, 8))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4))
    return Delete(draw(u8.map(ProtocolId)), spis)


_IMPLEMENTED = {33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 53}
payloads = st.one_of(
    st.builds(SA, st.lists(proposals, max_size=3)),
    st.builds(KE, u16.map(DhGroup), blobs),
    st.builds(IDi, u8.map(IdType), blobs),
    st.builds(IDr, u8.map(IdType), blobs),
    st.builds(CERT, u8.map(CertEncoding), blobs),
    st.builds(CERTREQ, u8.map(CertEncoding), blobs),
    st.builds(AUTH, u8.map(AuthMethod), blobs),
    st.builds(Nonce, st.binary(min_size=16, max_size=64)),
    st.builds(Notify, u16.map(NotifyType), blobs, u8.map(ProtocolId), st.binary(max_size=8)),
    deletes(),
    st.builds(VendorID, blobs),
    st.builds(TSi, st.lists(selectors, max_size=3)),
    st.builds(TSr, st.lists(selectors, max_size=3)),
    st.builds(CP, u8.map(CfgType), st.lists(
        st.builds(ConfigAttribute, st.integers(0, 0x7FFF).map(ConfigAttributeType), blobs), max_size=3)),
    st.builds(EAP, blobs),
    st.builds(UnknownPayload, u8.filter(lambda t: t not in _IMPLEMENTED and t != 0).map(PayloadType), blobs),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    chain: list[Payload] = draw(st.lists(payloads, max_size=6))
    for payload in chain:
        if not isinstance(payload, UnknownPayload):
            payload.critical = draw(st.booleans())
    last = draw(st.sampled_from(["none", "sk", "skf"]))
    if last == "sk":
        chain.append(SK(draw(u8.map(PayloadType)), draw(blobs)))
    elif last == "skf":
        total = draw(st.integers(1, 0xFFFF))
        chain.append(SKF(draw(u8.map(PayloadType)), draw(st.integers(1, total)), total, draw(blobs)))
    return Message(
        draw(st.binary(min_size=8, max_size=8)), draw(st.binary(min_size=8, max_size=8)),
        draw(u8.map(ExchangeType)), draw(st.integers(0, 2**32 - 1)), draw(st.booleans()), draw(st.booleans()),
        chain, draw(st.booleans()), draw(st.integers(0, 15)))


@FUZZ
@given(messages())
def test_random_messages_round_trip(message: Message) -> None:
    data = encode(message)
    assert decode(data) == message
    assert encode(decode(data)) == data


def test_notify_types_are_open() -> None:
    assert NotifyType(12345).name == "NOTIFYTYPE_12345" and not NotifyType(50000).is_error


# --------------------------------------------------------------------------- fast paths


def _outcome(pull: Any, data: bytes, limit: int) -> tuple[str, Any, int]:
    """What a pull makes of ``data`` read up to ``limit``: (error type, its text, -1) or
    ("ok", the value, the reader's position)."""
    buf = Reader(data)
    buf._end = limit
    try:
        value = pull(buf)
    except IkeProtocolError as exc:
        return type(exc).__name__, (exc.code, str(exc)), -1
    return "ok", value, buf._pos


@FUZZ
@given(st.one_of(
    st.binary(max_size=48),
    # mostly well-formed: a known type and a length that fits or nearly fits
    st.tuples(st.sampled_from([7, 8, 10, 0, 255]), st.integers(0, 255),
              st.sampled_from([0, 3, 4, 8, 15, 16, 17, 40, 41]),
              st.binary(min_size=0, max_size=44)).map(
        lambda t: struct.pack("!BBH", t[0], t[1], t[2]) + t[3])),
    st.integers(0, 60))
def test_traffic_selector_fast_path_is_the_general_one(data: bytes, cut: int) -> None:
    # _pull_traffic_selector reads the fixed part at once when 8 octets are there; the
    # field-by-field reading (used when fewer are) gives the same selectors and errors.
    limit = min(cut, len(data))
    assert _outcome(_pull_traffic_selector, data, limit) == \
        _outcome(_pull_traffic_selector_short, data, limit)
