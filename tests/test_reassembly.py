"""IP fragment reassembly (workers/reassembly.py): RFC 791/815 and RFC 8200 §4.5.

Fragments come from two places: a small builder here (any offset, length
and flags we want, including the wrong ones) and scapy's ``fragment()`` /
``fragment6()``, an implementation we did not write, whose unfragmented
packet must come back byte for byte.  Hypothesis drives orders (in order,
reversed, shuffled), duplicates, overlaps and n workers fed the same
fragments, and throws arbitrary bytes at ``push``: nothing may raise.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, fragment
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    fragment6,
)
from scapy.layers.ipsec import ESP as ScapyESP
from scapy.packet import Raw

import workers.reassembly
from ipsecd.drops import Drop
from ipsecd.packet import checksum
from workers.reassembly import (
    FRAGMENT_COST,
    Claim,
    Discard,
    Reassembled,
    Reassembler,
    is_fragment,
    spi_claim,
)

ESP, UDP, TCP, FRAG, AH = 50, 17, 6, 44, 51
SRC4, DST4 = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")


@pytest.fixture(autouse=True)
def _raise_unexpected() -> Iterator[None]:
    """An unexpected exception fails the test instead of being counted as malformed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workers.reassembly, "RAISE_UNEXPECTED", True)
        yield


# --- building packets ------------------------------------------------------------------


def v4_header(length: int, *, proto: int = ESP, ident: int = 0x1234, flags: int = 0,
              options: bytes = b"", src: bytes = SRC4, dst: bytes = DST4) -> bytearray:
    """An IPv4 header for ``length`` bytes of data, checksum right."""
    ihl = 5 + len(options) // 4
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + length, ident, flags,
                              64, proto, 0, src, dst) + options)
    struct.pack_into("!H", h, 10, checksum(h))
    return h


def v4_datagram(data: bytes, **kwargs: object) -> bytes:
    return bytes(v4_header(len(data), **kwargs)) + data  # type: ignore[arg-type]


def frag4(offset: int, data: bytes, more: bool, *, df: bool = False, **kwargs: object) -> bytes:
    """One IPv4 fragment: ``data`` at byte ``offset`` (a multiple of 8) of the datagram."""
    flags = (0x2000 if more else 0) | (0x4000 if df else 0) | (offset >> 3)
    return bytes(v4_header(len(data), flags=flags, **kwargs)) + data  # type: ignore[arg-type]


def v6_datagram(data: bytes, *, nh: int = ESP, ext: bytes = b"", first_nh: int | None = None
                ) -> bytes:
    """IPv6 with ``ext`` (unfragmentable extension headers, the first named ``first_nh``)."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(data),
                       nh if first_nh is None else first_nh, 64, SRC6, DST6) + ext + data


def frag6(offset: int, data: bytes, more: bool, *, ident: int = 0x89ABCDEF, nh: int = ESP,
          ext: bytes = b"", first_nh: int | None = None) -> bytes:
    """One IPv6 fragment; ``ext`` is the unfragmentable part after the fixed header, whose
    last next-header byte must name the fragment header (44)."""
    fh = struct.pack("!BBHI", nh, 0, offset | int(more), ident)
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + 8 + len(data),
                       FRAG if first_nh is None else first_nh, 64, SRC6, DST6) + ext + fh + data


def cut(data: bytes, points: list[int]) -> list[tuple[int, bytes, bool]]:
    """``data`` cut at the given offsets (multiples of 8): (offset, bytes, more) triples."""
    edges = [0, *sorted(set(points)), len(data)]
    return [(a, data[a:b], b != len(data)) for a, b in pairwise(edges) if b > a]


def esp_payload(spi: int, size: int, seed: int = 0) -> bytes:
    return struct.pack("!II", spi, 1) + random.Random(seed).randbytes(max(0, size - 8))


def feed(r: Reassembler, packets: list[bytes], now: float = 0.0) -> list[Reassembled]:
    out = []
    for p in packets:
        got = r.push(p, now)
        if got is not None:
            out.append(got)
    return out


def reasons(r: Reassembler) -> dict[Drop, int]:
    out: dict[Drop, int] = {}
    for d in r.discards:
        out[d.reason] = out.get(d.reason, 0) + d.fragments
    return out


# --- strategies -------------------------------------------------------------------------


@st.composite
def fragmented(draw: st.DrawFn, max_size: int = 4000) -> tuple[bytes, list[tuple[int, bytes, bool]]]:
    size = draw(st.integers(16, max_size))
    data = esp_payload(draw(st.integers(1, 0xFFFFFFFF)), size, draw(st.integers(0, 1000)))
    points = draw(st.lists(st.integers(1, (size - 1) // 8).map(lambda x: 8 * x),
                           min_size=1, max_size=12))
    return data, cut(data, points)


def orders(n: int) -> st.SearchStrategy[list[int]]:
    return st.one_of(st.just(list(range(n))), st.just(list(range(n))[::-1]),
                     st.permutations(list(range(n))))


# --- whole datagrams back -----------------------------------------------------------------


@given(fragmented(), st.data())
def test_ipv4_any_order_gives_the_datagram_back(case: tuple[bytes, list[tuple[int, bytes, bool]]],
                                                data: st.DataObject) -> None:
    payload, pieces = case
    assume(len(pieces) > 1)
    order = data.draw(orders(len(pieces)))
    r = Reassembler()
    got = feed(r, [frag4(*pieces[i]) for i in order])
    assert [g.packet for g in got] == [v4_datagram(payload)]
    assert got[0].fragments == len(pieces) and got[0].ident == 0x1234 and got[0].proto == ESP
    assert r.discards == [] and r.pending == 0 and r.held_bytes == 0


@given(fragmented(), st.data())
def test_ipv6_any_order_gives_the_datagram_back(case: tuple[bytes, list[tuple[int, bytes, bool]]],
                                                data: st.DataObject) -> None:
    payload, pieces = case
    assume(len(pieces) > 1)
    order = data.draw(orders(len(pieces)))
    r = Reassembler()
    got = feed(r, [frag6(*pieces[i]) for i in order])
    assert [g.packet for g in got] == [v6_datagram(payload)]
    assert r.discards == [] and r.pending == 0 and r.held_bytes == 0


@given(fragmented(), st.data())
def test_duplicates_are_dropped_alone(case: tuple[bytes, list[tuple[int, bytes, bool]]],
                                      data: st.DataObject) -> None:
    payload, pieces = case
    assume(len(pieces) > 1)
    order = data.draw(st.permutations(list(range(len(pieces)))))
    packets = [frag4(*pieces[i]) for i in order]
    # Copies of fragments already received, anywhere before the one that completes.
    dups = data.draw(st.lists(st.integers(0, len(packets) - 2), max_size=6))
    sequence = list(packets[:-1])
    for i in dups:
        at = data.draw(st.integers(sequence.index(packets[i]) + 1, len(sequence)))
        sequence.insert(at, packets[i])
    sequence.append(packets[-1])
    r = Reassembler()
    got = feed(r, sequence)
    assert [g.packet for g in got] == [v4_datagram(payload)]
    assert reasons(r) == ({Drop.FRAGMENT_DUPLICATE: len(dups)} if dups else {})
    assert r.pending == 0 and r.held_bytes == 0


def test_scapy_fragments_come_back_whole() -> None:
    """scapy's fragment() and fragment6(): IPv4 with options, ESP in UDP, IPv6 with
    unfragmentable extension headers before the fragment header."""
    r = Reassembler()
    rng = random.Random(791)
    cases = [
        IP(src="192.0.2.1", dst="192.0.2.2", id=7, options=b"\x94\x04\x00\x00")  # router alert
        / ScapyUDP(sport=4500, dport=4500) / Raw(struct.pack("!I", 0x1001) + rng.randbytes(3000)),
        IP(src="192.0.2.1", dst="192.0.2.2", id=8, proto=ESP) / Raw(rng.randbytes(5000)),
    ]
    for packet in cases:
        whole = bytes(IP(bytes(packet)))
        frags = [bytes(f) for f in fragment(packet, 600)]
        assert len(frags) > 2 and all(is_fragment(f, len(f)) for f in frags)
        rng.shuffle(frags)
        assert [g.packet for g in feed(r, frags)] == [whole]

    body = rng.randbytes(2500)

    def udp6(frag: bool) -> bytes:
        mid = IPv6ExtHdrFragment(id=99) if frag else None
        layers = IPv6(src="2001:db8::1", dst="2001:db8::2")
        if mid is not None:
            layers = layers / mid
        return bytes(layers / ScapyUDP(sport=4500, dport=4500) / Raw(body))

    def esp6(frag: bool) -> bytes:
        layers = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() \
            / IPv6ExtHdrDestOpt()
        if frag:
            layers = layers / IPv6ExtHdrFragment(id=100)
        return bytes(layers / ScapyESP(spi=5, seq=1) / Raw(body))

    for make in (udp6, esp6):
        frags = [bytes(f) for f in fragment6(IPv6(make(True)), 1280)]
        assert len(frags) > 1
        rng.shuffle(frags)
        assert [g.packet for g in feed(r, frags)] == [make(False)]
    assert r.discards == [] and r.pending == 0


def test_reassembled_headers() -> None:
    # IPv4: DF survives, MF and the offset go, lengths and checksum are right.
    data = esp_payload(0x1001, 64)
    got = feed(Reassembler(), [frag4(0, data[:32], True, df=True), frag4(32, data[32:], False)])
    packet = got[0].packet
    assert struct.unpack_from("!H", packet, 6)[0] == 0x4000
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet) == 84
    assert checksum(packet[:20]) == 0
    # IPv4 options of the first fragment stay (later fragments carry none: RFC 791 copy flag).
    opts = b"\x07\x07\x04\x00\x00\x00\x00\x00"  # record route: not copied into later fragments
    got = feed(Reassembler(), [frag4(32, data[32:], False),
                               frag4(0, data[:32], True, options=opts)])
    assert got[0].packet == v4_datagram(data, options=opts)
    # IPv6: hop-by-hop before the fragment header names the upper protocol again.
    hbh = bytes([FRAG, 0, 1, 4, 0, 0, 0, 0])
    pieces = cut(data, [32])
    got = feed(Reassembler(), [frag6(o, d, m, ext=hbh, first_nh=0) for o, d, m in pieces])
    assert got[0].packet == v6_datagram(data, ext=bytes([ESP]) + hbh[1:], first_nh=0)


# --- atomic and tiny -------------------------------------------------------------------------


def test_ipv6_atomic_fragment_is_whole_and_leaves_others_alone() -> None:
    r = Reassembler()
    data = esp_payload(9, 48)
    assert r.push(frag6(0, data[:24], True, ident=5), 0) is None
    got = r.push(frag6(0, b"atomic" + bytes(10), False, ident=5), 0)  # RFC 6946
    assert got is not None and got.packet == v6_datagram(b"atomic" + bytes(10))
    assert got.claim == Claim.KEEP and got.fragments == 1
    assert r.pending == 1
    got = r.push(frag6(24, data[24:], False, ident=5), 0)
    assert got is not None and got.packet == v6_datagram(data)
    assert r.discards == []


@pytest.mark.parametrize("packet", [
    frag4(0, bytes(7) + b"x" * 8, True),  # MF and not a multiple of 8
    frag4(8, b"", False),  # empty
    frag4(0, bytes(8), True, proto=TCP),  # first fragment shorter than a TCP header (RFC 1858)
    frag4(65512, bytes(8), False),  # past 65535 with the header (ping of death)
    frag4(0, esp_payload(1, 16), False),  # not a fragment at all
    frag6(8, bytes(12), True),  # RFC 8200: M set, not a multiple of 8
    frag6(0, bytes(16), True, nh=TCP),  # RFC 7112: the TCP header is not all there
    frag6(65528, bytes(16), False),  # payload would pass 65535
    frag6(8, b"", False),  # empty
    frag6(8, b"", True),
    v6_datagram(esp_payload(1, 16)),  # no fragment header
    b"\x45" + bytes(10),  # truncated
    b"",
    b"\x70" + bytes(60),  # IP version 7
], ids=lambda p: p[:1].hex() + f"-{len(p)}")
def test_malformed_fragments(packet: bytes) -> None:
    r = Reassembler()
    assert r.push(packet, 0) is None
    assert reasons(r) == {Drop.FRAGMENT_MALFORMED: 1}
    assert r.pending == 0 and r.held_bytes == 0


def test_bad_ipv4_checksum_and_lengths() -> None:
    good = frag4(0, esp_payload(1, 16), True)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 1
    long_total = bytearray(good)
    struct.pack_into("!H", long_total, 2, len(good) + 8)
    long_total[10:12] = b"\0\0"
    struct.pack_into("!H", long_total, 10, checksum(long_total[:20]))
    for packet in (bad_sum, long_total):
        r = Reassembler()
        assert r.push(bytes(packet), 0) is None
        assert reasons(r) == {Drop.FRAGMENT_MALFORMED: 1}
    # Link-layer padding after the total length is ignored.
    data = esp_payload(1, 32)
    got = feed(Reassembler(), [frag4(0, data[:16], True) + bytes(6), frag4(16, data[16:], False)])
    assert got[0].packet == v4_datagram(data)


def test_largest_datagrams() -> None:
    for version, limit in ((4, 65535 - 20), (6, 65535)):
        data = esp_payload(3, limit)
        pieces = cut(data, list(range(1480, limit, 1480)))
        build = frag4 if version == 4 else frag6
        r = Reassembler()
        got = feed(r, [build(o, d, m) for o, d, m in pieces])
        assert len(got) == 1 and len(got[0].packet) == limit + (20 if version == 4 else 40)
        # One byte more: the last fragment is refused, the datagram waits and times out.
        o, d, _ = pieces[-1]
        assert r.push(build(o, d + b"!", False), 1.0) is None
        assert reasons(r) == {Drop.FRAGMENT_MALFORMED: 1}
    # IPv4 with options: the data fits 65515 but not next to a 24-byte header.
    data = esp_payload(3, 65512)
    pieces = cut(data, list(range(1480, len(data), 1480)))
    r = Reassembler()
    assert feed(r, [frag4(o, d, m, options=b"\x01" * 4 if not o else b"")
                    for o, d, m in pieces]) == []
    assert reasons(r) == {Drop.FRAGMENT_MALFORMED: len(pieces)}


# --- overlaps and inconsistencies --------------------------------------------------------------


@given(fragmented(2000), st.data())
def test_overlap_discards_the_whole_datagram(case: tuple[bytes, list[tuple[int, bytes, bool]]],
                                             data: st.DataObject) -> None:
    payload, pieces = case
    assume(len(pieces) > 1)
    version = data.draw(st.sampled_from([4, 6]))
    build = frag4 if version == 4 else frag6
    order = data.draw(st.permutations(list(range(len(pieces)))))
    # A fragment that overlaps one already held, before the datagram is complete: its
    # range starts inside that fragment's, its bytes are the same or not (RFC 5722).
    j = data.draw(st.integers(0, len(pieces) - 2))
    o, d, _ = pieces[order[j]]
    start = o + 8 * data.draw(st.integers(0, (len(d) - 1) // 8))
    end = min(start + 8 * data.draw(st.integers(1, 64)), len(payload))
    assume((start, end) != (o, o + len(d)))  # not a duplicate
    assume(start or end < len(payload))  # a fragment, not a whole datagram
    same = data.draw(st.booleans())
    rogue = build(start, payload[start:end] if same else bytes(end - start), end < len(payload))
    packets = [build(*p) for p in pieces]
    sequence = [packets[i] for i in order]
    sequence.insert(j + 1, rogue)
    r = Reassembler()
    assert feed(r, sequence) == []
    # Every fragment is discarded: those held, the overlapping one, and all that come after.
    assert reasons(r) == {Drop.FRAGMENT_OVERLAP: len(sequence)}
    assert r.pending == 0 and r.held_bytes == 0
    # Even a complete set sent again within the timeout is discarded (RFC 5722).
    r.discards.clear()
    assert feed(r, packets) == []
    assert reasons(r) == {Drop.FRAGMENT_OVERLAP: len(packets)}
    # After the timeout the identification is free again.
    r.discards.clear()
    assert [g.packet for g in feed(r, packets, now=10.0)] == [
        v4_datagram(payload) if version == 4 else v6_datagram(payload)]


def test_same_range_other_bytes_is_an_overlap() -> None:
    data = esp_payload(1, 48)
    r = Reassembler()
    feed(r, [frag4(0, data[:16], True), frag4(16, data[16:32], True),
             frag4(16, bytes(16), True), frag4(32, data[32:], False)])
    assert reasons(r) == {Drop.FRAGMENT_OVERLAP: 4}


def test_inconsistent_last_fragments() -> None:
    data = esp_payload(1, 64)
    cases = [
        [frag4(48, data[48:], False), frag4(40, data[40:48], False)],  # two ends
        [frag4(32, data[32:40], False), frag4(48, data[48:], True)],  # past the end
        [frag4(48, data[48:], True), frag4(32, data[32:40], False)],  # an end before data
    ]
    for packets in cases:
        r = Reassembler()
        assert feed(r, [*packets, frag4(0, data[:32], True)]) == []
        assert reasons(r) == {Drop.FRAGMENT_MALFORMED: 3}, packets
        assert r.pending == 0


# --- time and limits ---------------------------------------------------------------------------


def test_timeout_is_checked_lazily_and_by_expire() -> None:
    data = esp_payload(1, 64)
    r = Reassembler(timeout=3.0)
    r.push(frag4(0, data[:32], True, ident=1), 0.0)
    r.push(frag4(0, data[:32], True, ident=2), 1.0)
    r.push(frag4(32, data[32:40], True, ident=2), 1.5)
    assert r.pending == 2 and not r.discards
    r.push(frag4(0, data[:32], True, ident=3), 3.0)  # ident 1 is due at 3.0
    assert r.discards == [Discard(Drop.FRAGMENT_TIMEOUT, 1, 1, ESP, Claim.MINE)]
    r.discards.clear()
    r.expire(3.9)
    assert not r.discards
    r.expire(4.0)  # ident 2: two fragments, timed from its first one
    assert r.discards == [Discard(Drop.FRAGMENT_TIMEOUT, 2, 2, ESP, Claim.MINE)]
    # A late fragment of a timed-out datagram starts afresh (and times out in turn).
    assert r.push(frag4(48, data[48:], False, ident=1), 4.0) is None
    assert r.pending == 2
    r.expire(100.0)
    assert r.pending == 0 and r.held_bytes == 0


def test_datagram_limit_evicts_the_oldest() -> None:
    data = esp_payload(1, 64)
    r = Reassembler(max_datagrams=4)
    for ident in range(6):
        r.push(frag4(0, data[:32], True, ident=ident), ident * 0.1)
    assert r.pending == 4
    assert r.discards == [Discard(Drop.FRAGMENT_LIMIT, 1, i, ESP, Claim.MINE) for i in (0, 1)]
    r.discards.clear()
    # The newest ones still complete.
    got = r.push(frag4(32, data[32:], False, ident=5), 1.0)
    assert got is not None and got.packet == v4_datagram(data, ident=5)


def test_byte_limit_evicts_the_oldest_then_the_datagram_itself() -> None:
    data = esp_payload(1, 1024)
    per = 512 + FRAGMENT_COST
    r = Reassembler(max_bytes=3 * per)
    r.push(frag4(0, data[:512], True, ident=1), 0)
    r.push(frag4(0, data[:512], True, ident=2), 0)
    r.push(frag4(0, data[:512], True, ident=3), 0)
    assert r.held_bytes == 3 * per and not r.discards
    r.push(frag4(0, data[:512], True, ident=4), 0)
    assert r.discards == [Discard(Drop.FRAGMENT_LIMIT, 1, 1, ESP, Claim.MINE)]
    assert r.held_bytes == 3 * per
    # One datagram larger than the whole budget goes itself, this fragment included.
    r = Reassembler(max_bytes=per + 100)
    r.push(frag4(0, data[:512], True, ident=9), 0)
    assert r.push(frag4(512, data[512:], False, ident=9), 0) is None
    assert r.discards == [Discard(Drop.FRAGMENT_LIMIT, 2, 9, ESP, Claim.MINE)]
    assert r.pending == 0 and r.held_bytes == 0


def test_tiny_fragments_are_charged_for_their_objects() -> None:
    # 8-byte fragments cost FRAGMENT_COST each: a flood of them is bounded by count too.
    r = Reassembler(max_bytes=100 * (8 + FRAGMENT_COST))
    for i in range(1, 200):
        r.push(frag4(8 * i, bytes(8), True, ident=1), 0)
    assert r.held_bytes <= r.max_bytes
    assert reasons(r) == {Drop.FRAGMENT_LIMIT: 101}


# --- claims: n workers, one owner, one count ------------------------------------------------------


def test_claim_others_is_forgotten_silently() -> None:
    data = esp_payload(0x1001, 64)  # SPI odd: worker 1 of 2
    mine, other = Reassembler(claim=spi_claim(2, 1)), Reassembler(claim=spi_claim(2, 0))
    frags = [frag4(32, data[32:40], True), frag4(0, data[:32], True), frag4(40, data[40:], False)]
    assert feed(other, frags) == [] and other.pending == 0 and other.held_bytes == 0
    assert other.discards == []
    got = feed(mine, frags)
    assert len(got) == 1 and got[0].claim == Claim.MINE
    # The identification comes round again with a datagram that is worker 0's.
    data2 = esp_payload(0x1002, 64)
    frags2 = [frag4(0, data2[:32], True), frag4(32, data2[32:], False)]
    assert [g.packet for g in feed(other, frags2)] == [v4_datagram(data2)]
    assert feed(mine, frags2) == []


def test_another_owners_datagram_takes_no_place() -> None:
    data = esp_payload(0x1001, 64)  # worker 1's
    r = Reassembler(max_datagrams=2, claim=spi_claim(2, 0))
    mine = esp_payload(0x1002, 64)
    r.push(frag4(0, mine[:32], True, ident=1), 0)
    r.push(frag4(0, mine[:32], True, ident=2), 0)
    for ident in range(3, 10):
        assert r.push(frag4(0, data[:32], True, ident=ident), 0) is None
        assert r.push(frag4(32, data[32:], False, ident=ident), 0) is None
    assert r.pending == 2 and r.discards == []
    got = r.push(frag4(32, mine[32:], False, ident=1), 0)
    assert got is not None and got.packet == v4_datagram(mine, ident=1)


def test_spi_claim() -> None:
    claim = spi_claim(3, 2, 4500)
    udp = struct.pack("!HHHH", 4500, 4500, 100, 0)
    assert claim(ESP, memoryview(struct.pack("!II", 5, 1))) == Claim.MINE
    assert claim(ESP, memoryview(struct.pack("!II", 6, 1))) == Claim.OTHERS
    assert claim(ESP, memoryview(b"\0\0")) == Claim.KEEP
    assert claim(UDP, memoryview(udp + struct.pack("!I", 8))) == Claim.MINE
    assert claim(UDP, memoryview(udp + bytes(4))) == Claim.OTHERS  # IKE's marker
    assert claim(UDP, memoryview(udp)) == Claim.KEEP
    assert claim(UDP, memoryview(struct.pack("!HHHH", 500, 500, 9, 0) + b"abcd")) == Claim.OTHERS
    assert claim(TCP, memoryview(bytes(20))) == Claim.OTHERS
    # AH (RFC 4302 §2): the SPI is the second word.
    assert claim(AH, memoryview(struct.pack("!BBHII", 6, 4, 0, 5, 1))) == Claim.MINE
    assert claim(AH, memoryview(struct.pack("!BBHII", 6, 4, 0, 6, 1))) == Claim.OTHERS
    assert claim(AH, memoryview(bytes(6))) == Claim.KEEP


def _broken(fragment: bytes) -> bytes:
    """A copy of a fragment that cannot be valid (IPv4: bad checksum; IPv6: truncated)."""
    if fragment[0] >> 4 == 4:
        return fragment[:10] + bytes([fragment[10] ^ 1]) + fragment[11:]
    return fragment[:-1]


@settings(max_examples=200)
@given(fragmented(1500), st.integers(1, 4), st.booleans(), st.booleans(),
       st.sampled_from([4, 6]), st.data())
def test_n_workers_one_owner_one_count(case: tuple[bytes, list[tuple[int, bytes, bool]]], n: int,
                                       overlap: bool, broken: bool, version: int,
                                       data: st.DataObject) -> None:
    """Every worker is fed every fragment: exactly one decrypts, every discard is counted once."""
    payload, pieces = case
    assume(len(pieces) > 1)
    spi = struct.unpack_from("!I", payload)[0]
    build = frag4 if version == 4 else frag6
    order = data.draw(st.permutations(list(range(len(pieces)))))
    sequence = [build(*pieces[i]) for i in order]
    if overlap:
        # A later fragment's range with other bytes, right behind it, before the end.
        j = data.draw(st.integers(0, len(pieces) - 2))
        assume(order[j] != 0)
        o, d, more = pieces[order[j]]
        sequence.insert(j + 1, build(o, bytes(len(d)), more))
    dups = data.draw(st.lists(st.integers(0, len(sequence) - 2), max_size=3))
    for i in sorted(dups, reverse=True):
        sequence.insert(i + 1, sequence[i])  # a duplicate right behind its original
    if broken:  # a corrupted copy of one fragment, anywhere before the end
        at = data.draw(st.integers(0, len(sequence) - 1))
        sequence.insert(data.draw(st.integers(0, len(sequence) - 1)), _broken(sequence[at]))
    workers = [Reassembler(claim=spi_claim(n, k)) for k in range(n)]
    decrypted = 0
    counted: dict[Drop, int] = {}
    for k, r in enumerate(workers):
        for p in sequence:
            got = r.push(p, 0.0)
            # As Worker._defragment: a whole datagram is decrypted by the SPI's worker only.
            if got is not None and spi % n == k:
                assert got.packet == (v4_datagram(payload) if version == 4
                                      else v6_datagram(payload))
                decrypted += 1
        r.expire(100.0)
        for d in r.discards:
            if d.counted_by(n, k):
                counted[d.reason] = counted.get(d.reason, 0) + d.fragments
    malformed = {Drop.FRAGMENT_MALFORMED: 1} if broken else {}
    if overlap:
        assert decrypted == 0
        assert sum(counted.values()) == len(sequence)
        assert counted.get(Drop.FRAGMENT_MALFORMED, 0) == int(broken)
        assert set(counted) <= {Drop.FRAGMENT_OVERLAP, Drop.FRAGMENT_DUPLICATE,
                                Drop.FRAGMENT_MALFORMED}
    else:
        assert decrypted == 1
        assert counted == ({Drop.FRAGMENT_DUPLICATE: len(dups)} if dups else {}) | malformed


def test_udp_fragments_never_claimed_are_not_counted() -> None:
    """Later UDP fragments of a datagram whose first never came may be anybody's traffic."""
    r = Reassembler(claim=spi_claim(2, 0))
    r.push(frag4(1480, bytes(100), False, proto=UDP), 0)
    r.expire(10)
    assert r.discards == [Discard(Drop.FRAGMENT_TIMEOUT, 1, 0x1234, UDP, Claim.UNSEEN)]
    assert not any(r.discards[0].counted_by(2, k) for k in range(2))
    # ... while raw ESP's are counted, once.
    r.discards.clear()
    r.push(frag4(1480, bytes(100), False), 0)
    r.expire(10)
    assert [r.discards[0].counted_by(2, k) for k in range(2)] == [True, False]  # 0x1234 % 2


# --- nothing raises ------------------------------------------------------------------------------


def _mutations() -> st.SearchStrategy[bytes]:
    data = esp_payload(0x1001, 48)
    seeds = [frag4(0, data[:24], True), frag4(24, data[24:], False), frag6(0, data[:24], True),
             frag6(24, data[24:], False), frag6(0, data, False)]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        p = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 4))):
            p[draw(st.integers(0, len(p) - 1))] = draw(st.integers(0, 255))
        return bytes(p[:draw(st.integers(0, len(p)))])

    return mutate()


@settings(max_examples=300)
@given(st.lists(st.tuples(st.one_of(st.binary(max_size=120), _mutations()),
                          st.floats(0, 20, allow_nan=False)), max_size=40),
       st.integers(1, 3))
def test_no_exception_on_any_input(inputs: list[tuple[bytes, float]], n: int) -> None:
    r = Reassembler(max_datagrams=4, max_bytes=2000, timeout=2.0, claim=spi_claim(n, 0))
    for packet, now in inputs:
        got = r.push(packet, now)
        assert got is None or isinstance(got.packet, bytes)
        assert r.pending <= 4 and r.held_bytes <= 2000
        assert all(isinstance(d.reason, Drop) and d.fragments >= 1 for d in r.discards)
        is_fragment(packet, len(packet))
    r.expire(1000.0)
    assert r.pending == 0 and r.held_bytes == 0


def test_limits_are_checked() -> None:
    for kwargs in ({"max_datagrams": 0}, {"max_bytes": 0}, {"timeout": 0.0}):
        with pytest.raises(ValueError):
            Reassembler(**kwargs)  # type: ignore[arg-type]


def test_is_fragment() -> None:
    data = esp_payload(1, 32)
    assert is_fragment(frag4(0, data[:16], True), 36)
    assert is_fragment(frag4(16, data[16:], False), 36)
    assert not is_fragment(v4_datagram(data), 52)
    assert is_fragment(frag6(0, data, True), 80)
    hbh = bytes([FRAG, 0, 1, 4, 0, 0, 0, 0])
    assert is_fragment(frag6(0, data, True, ext=hbh, first_nh=0), 88)
    assert not is_fragment(v6_datagram(data), 72)
    assert not is_fragment(b"", 0) and not is_fragment(b"\x45", 1)
