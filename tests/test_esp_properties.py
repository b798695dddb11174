"""Properties of the ESP codec (hypothesis).

1. ``decap(encap(p)) == p`` for every transform of the issue's list, every
   mode and address-family layout (mixed families in tunnel mode), ESN on and
   off, bare and UDP-encapsulated, inner payloads of 0 to 1500 bytes.
2. One flipped bit anywhere in an ESP packet: never an exception, always a
   counted drop - except in the few outer-header bits no one protects, which
   are listed in :func:`unprotected_bits` (IPv6 traffic class, flow label, hop
   limit and addresses; the UDP source port, which a NAT may change, and the
   UDP checksum, ignored as RFC 3948 says).  The outer IPv4 header is checked
   by its header checksum, so every one of its bits counts.  Random packets
   and bits, plus every bit of a few fixed packets.
3. The fast paths (AEAD, tunnel, IPv4 outside) give exactly what the general
   path gives: the same bytes out of encapsulation, the same verdict and
   bytes out of decapsulation of valid and damaged packets.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from conftest import AEAD_TUNNEL, TRANSFORMS, Transform, make_ctx, udp4, udp6
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.drops import Drop
from ipsecd.esp import EspContext
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
LAYOUTS = (  # mode, outer family, inner family
    (Mode.TUNNEL, 4, 4), (Mode.TUNNEL, 4, 6), (Mode.TUNNEL, 6, 4), (Mode.TUNNEL, 6, 6),
    (Mode.TRANSPORT, 4, 4), (Mode.TRANSPORT, 6, 6),
)

layouts = st.sampled_from(LAYOUTS)
payloads = st.integers(0, 1500).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def inner_of(family: int, payload: bytes) -> bytes:
    return udp4(payload) if family == 4 else udp6(payload)


def window_for(ctx: EspContext, seq: int) -> ReplayWindow:
    window = ReplayWindow(64, esn=ctx.esn)
    window.reset(max(seq - 10, 0))
    return window


@pytest.mark.parametrize("transform", TRANSFORMS, ids=str)
@PROPERTY
@given(layout=layouts, esn=st.booleans(), udp=st.booleans(), payload=payloads,
       seq=st.integers(1, 2**32 - 1))
def test_round_trip(transform: Transform, layout: tuple[Mode, int, int], esn: bool, udp: bool,
                    payload: bytes, seq: int) -> None:
    mode, outer, inner = layout
    ctx = make_ctx(transform, mode=mode, family=outer, esn=esn, encap=udp)
    if esn:
        seq |= 1 << 32
    packet = inner_of(inner, payload)
    drop, esp = ctx.encap(packet, seq)
    assert drop is Drop.OK
    assert len(esp) == ctx.encapsulated_length(len(packet), 0 if mode is Mode.TUNNEL else 20 if inner == 4 else 40)
    drop, result = ctx.decap(esp, window_for(ctx, seq))
    assert drop is Drop.OK and result is not None
    assert result.packet == packet and result.seq == seq


def unprotected_bits(esp: bytes, outer: int, udp: bool) -> set[int]:
    """Bit positions whose flip ESP cannot notice (and need not)."""
    bits: set[int] = set()
    if outer == 6:
        bits |= set(range(4, 32))  # traffic class (ECN may then mark the inner packet) and flow label
        bits |= set(range(7 * 8, 8 * 8))  # hop limit
        bits |= set(range(8 * 8, 40 * 8))  # addresses
    if udp:
        ip = 20 if outer == 4 else 40
        bits |= set(range(ip * 8, (ip + 2) * 8))  # source port: NATs rewrite it (RFC 3948)
        bits |= set(range((ip + 6) * 8, (ip + 8) * 8))  # UDP checksum, not checked
    return bits


def flipped(esp: bytes, bit: int) -> bytes:
    data = bytearray(esp)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


INTEGRITY = [t for t in TRANSFORMS if t.integrity]


@PROPERTY
@given(transform=st.sampled_from(INTEGRITY), layout=layouts, esn=st.booleans(), udp=st.booleans(),
       payload=st.binary(max_size=200), data=st.data())
def test_single_bit_flip_is_a_counted_drop(
    transform: Transform, layout: tuple[Mode, int, int], esn: bool, udp: bool, payload: bytes, data: st.DataObject
) -> None:
    mode, outer, inner = layout
    ctx = make_ctx(transform, mode=mode, family=outer, esn=esn, encap=udp)
    seq = (1 << 32 | 77) if esn else 77
    esp = ctx.encap(inner_of(inner, payload), seq)[1]
    skip = unprotected_bits(esp, outer, udp)
    bit = data.draw(st.integers(0, len(esp) * 8 - 1).filter(lambda b: b not in skip))
    drop, _ = ctx.decap(flipped(esp, bit), window_for(ctx, seq))
    assert drop is not Drop.OK, (bit, bit // 8)


@pytest.mark.parametrize(("transform", "layout", "udp"), [
    (t, layout, udp)
    for t, layout, udp in itertools.product(
        [BY for BY in INTEGRITY if BY.name in ("aes128-gcm16", "chacha20-poly1305", "aes128-gmac",
                                               "aes128-cbc+sha256", "null+sha1", "des-cbc+sha1")],
        [LAYOUTS[0], LAYOUTS[3], LAYOUTS[4], LAYOUTS[5]], [False, True])
], ids=lambda v: str(v) if isinstance(v, Transform) else None)
def test_every_bit_of_a_packet(transform: Transform, layout: tuple[Mode, int, int], udp: bool) -> None:
    mode, outer, inner = layout
    ctx = make_ctx(transform, mode=mode, family=outer, esn=True, encap=udp)
    seq = (2 << 32) | 9
    esp = ctx.encap(inner_of(inner, b"every bit counts"), seq)[1]
    skip = unprotected_bits(esp, outer, udp)
    verdicts: dict[Drop, int] = {}
    for bit in range(len(esp) * 8):
        drop, _ = ctx.decap(flipped(esp, bit), window_for(ctx, seq))
        if bit in skip:
            continue
        assert drop is not Drop.OK, (bit // 8, bit % 8)
        verdicts[drop] = verdicts.get(drop, 0) + 1
    assert Drop.ICV in verdicts or Drop.MALFORMED in verdicts


# -- fast path == general path ---------------------------------------------------------------

inner_packets = st.one_of(
    st.builds(lambda p, tos, df: udp4(p, tos=tos, df=df), st.binary(max_size=1500), st.integers(0, 255),
              st.booleans()),
    st.builds(lambda p, tc: udp6(p, traffic_class=tc), st.binary(max_size=300), st.integers(0, 255)),
)


def general_encap(ctx: EspContext, packet: bytes, seq: int) -> tuple[Drop, bytes]:
    buf = memoryview(bytearray(ctx.headroom + len(packet) + ctx.tailroom))
    buf[ctx.headroom : ctx.headroom + len(packet)] = packet
    drop, start, end = ctx._general_encap(buf, ctx.headroom, ctx.headroom + len(packet), seq)
    return drop, bytes(buf[start:end]) if not drop else b""


@PROPERTY
@given(transform=st.sampled_from(AEAD_TUNNEL), packet=inner_packets, esn=st.booleans(), udp=st.booleans(),
       df=st.sampled_from(["copy", "set", "clear"]), seq=st.integers(1, 2**32 - 1))
def test_fast_encap_equals_general(transform: Transform, packet: bytes, esn: bool, udp: bool, df: str,
                                   seq: int) -> None:
    from conftest import make_sa

    ctx = EspContext(make_sa(transform, esn=esn, encap=udp), df=df)  # type: ignore[arg-type]
    assert ctx.encap_into != ctx._general_encap  # the fast path is in use
    assert ctx.encap(packet, seq) == general_encap(ctx, packet, seq)


@PROPERTY
@given(transform=st.sampled_from(AEAD_TUNNEL), packet=inner_packets, esn=st.booleans(), udp=st.booleans(),
       mutations=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
       cut=st.integers(0, 8), window_top=st.integers(0, 120))
def test_fast_decap_equals_general(transform: Transform, packet: bytes, esn: bool, udp: bool,
                                   mutations: list[tuple[int, int]], cut: int, window_top: int) -> None:
    ctx = make_ctx(transform, esn=esn, encap=udp)
    esp = bytearray(ctx.encap(packet, 100)[1])
    for position, value in mutations:
        esp[position % len(esp)] = value
    if cut:
        esp = esp[:-cut]
    results = []
    for decap in (ctx.decap_into, ctx._general_decap):
        buf = memoryview(bytearray(bytes(esp) + bytes(32)))
        window = ReplayWindow(64, esn=esn)
        window.reset(window_top)
        drop, start, end, next_header = decap(buf, 0, len(esp), window)
        results.append((drop, bytes(buf[start:end]), next_header, bytes(window.state)))
    assert results[0] == results[1]


@pytest.mark.parametrize("transform", AEAD_TUNNEL, ids=str)
def test_fast_decap_in_order_stream_matches_general(transform: Transform) -> None:
    """The inlined window update: a long in-order stream with block crossings and a gap."""
    ctx = make_ctx(transform)
    fast, general = ReplayWindow(64), ReplayWindow(64)
    seqs = [*range(1, 200), 300, *range(250, 310), 301]
    for seq in seqs:
        esp = ctx.encap(udp4(struct.pack("!I", seq)), seq)[1]
        a = ctx.decap_into(memoryview(bytearray(esp)), 0, len(esp), fast)
        b = ctx._general_decap(memoryview(bytearray(esp)), 0, len(esp), general)
        assert a[0] == b[0] and bytes(fast.state) == bytes(general.state)


# -- the fast paths' per-buffer caches ---------------------------------------------------------
# The datapath calls encap_into / decap_into again and again on one buffer at one offset, and the
# fast paths then reuse memoryview slices and what they learned of the previous packets there.
# Streams of varied packets through one place must still give what the general path gives.


@PROPERTY
@given(transform=st.sampled_from(AEAD_TUNNEL), packets=st.lists(inner_packets, min_size=1, max_size=8),
       esn=st.booleans(), udp=st.booleans(), df=st.sampled_from(["copy", "set", "clear"]),
       repeat=st.integers(1, 3), offset=st.integers(0, 8))
def test_fast_encap_stream_through_one_buffer(transform: Transform, packets: list[bytes], esn: bool, udp: bool,
                                              df: str, repeat: int, offset: int) -> None:
    from conftest import make_sa

    ctx = EspContext(make_sa(transform, esn=esn, encap=udp), df=df)  # type: ignore[arg-type]
    start = ctx.headroom + offset
    buf = memoryview(bytearray(start + 1600 + ctx.tailroom))
    seq = 1
    for packet in packets * repeat:
        seq += 1
        buf[start : start + len(packet)] = packet
        drop, new_start, new_end = ctx.encap_into(buf, start, start + len(packet), seq)
        fast = (drop, bytes(buf[new_start:new_end]) if not drop else b"")
        assert fast == general_encap(ctx, packet, seq)
    ctx.forget_buffers()


def reseal(ctx: EspContext, esp: bytearray, position: int, value: int) -> None:
    """Set plaintext byte ``position`` of an AEAD tunnel packet over IPv4 (negative: from the
    end of the trailer, else in the inner header) to ``value`` and seal it again."""
    at = 20 + (8 if ctx.udp_encap else 0)
    ct = at + 16
    spi, seq = esp[at : at + 4], esp[at + 4 : at + 8]
    nonce = bytes(ctx._scratch[:4]) + bytes(esp[at + 8 : ct])
    aad = bytes(spi + (bytes(4) if ctx.esn else b"") + seq)
    aead = ctx._aead
    assert aead is not None
    plain = bytearray(aead.decrypt(nonce, bytes(esp[ct:]), aad))
    plain[position] = value
    esp[ct:] = aead.encrypt(nonce, bytes(plain), aad)


@PROPERTY
@given(transform=st.sampled_from(AEAD_TUNNEL), packets=st.lists(inner_packets, min_size=1, max_size=6),
       esn=st.booleans(), udp=st.booleans(), repeat=st.integers(1, 3),
       mutations=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2000), st.integers(0, 255)), max_size=4),
       neighbours=st.lists(st.integers(0, 200), max_size=3), offset=st.integers(0, 8),
       inside=st.lists(st.tuples(st.integers(0, 30), st.integers(-8, 5), st.integers(0, 255)), max_size=4))
def test_fast_decap_stream_through_one_buffer(transform: Transform, packets: list[bytes], esn: bool, udp: bool,
                                              repeat: int, mutations: list[tuple[int, int, int]],
                                              neighbours: list[int], offset: int,
                                              inside: list[tuple[int, int, int]]) -> None:
    ctx = make_ctx(transform, esn=esn, encap=udp)
    inner_stream = packets * repeat
    for n in neighbours:  # inner lengths n and n + 1 often pad to the same outer length
        inner_stream += [udp4(bytes(n)), udp4(bytes(n + 1)), udp4(bytes(n))]
    stream = [bytearray(ctx.encap(packet, seq)[1]) for seq, packet in enumerate(inner_stream, start=1)]
    for which, position, value in inside:  # authentic packets with a changed trailer or inner header
        esp = stream[which % len(stream)]
        reseal(ctx, esp, position, value)
    for which, position, value in mutations:
        esp = stream[which % len(stream)]
        esp[position % len(esp)] = value
    buf = memoryview(bytearray(offset + 1700))
    fast, general = ReplayWindow(64, esn=esn), ReplayWindow(64, esn=esn)
    for esp in stream:
        buf[offset : offset + len(esp)] = esp
        copy = memoryview(bytearray(buf))
        a = ctx.decap_into(buf, offset, offset + len(esp), fast)
        b = ctx._general_decap(copy, offset, offset + len(esp), general)
        assert a[0] == b[0] and a[1:] == b[1:]
        assert bytes(buf[a[1] : a[2]]) == bytes(copy[b[1] : b[2]])
        assert bytes(fast.state) == bytes(general.state)  # T, B and the bitmap


@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("transform", AEAD_TUNNEL, ids=str)
def test_fast_decap_cached_place_checks_every_packet(transform: Transform, udp: bool) -> None:
    """After the cache of one buffer place is warm, authentic packets of the same outer length with
    another trailer or inner header still get the general path's verdict."""
    ctx = make_ctx(transform, encap=udp)
    variants: list[tuple[int, int]] = [(-1, 41), (-1, 59), (-1, 17), (-2, 0), (-2, 3), (-2, 200), (-3, 9),
                                       (0, 0x46), (0, 0x65), (2, 0), (3, 0x55), (3, 0x57), (1, 0x23)]
    buf = memoryview(bytearray(1700))
    fast, general = ReplayWindow(64), ReplayWindow(64)
    seq = 0
    for position, value in variants:
        for mutate in (False, False, False, True, False):
            seq += 1
            esp = bytearray(ctx.encap(udp4(bytes(101)), seq)[1])
            if mutate:
                reseal(ctx, esp, position, value)
            buf[: len(esp)] = esp
            copy = memoryview(bytearray(buf))
            a = ctx.decap_into(buf, 0, len(esp), fast)
            b = ctx._general_decap(copy, 0, len(esp), general)
            assert a == b, (position, value, mutate)
            assert bytes(buf[a[1] : a[2]]) == bytes(copy[b[1] : b[2]])
            assert bytes(fast.state) == bytes(general.state)  # T, B and the bitmap


# -- a worker restart over the shared replay window ---------------------------------------------


@PROPERTY
@given(transform=st.sampled_from(AEAD_TUNNEL), esn=st.booleans(), udp=st.booleans(),
       steps=st.lists(st.integers(-70, 4), min_size=1, max_size=150),
       restarts=st.sets(st.integers(0, 149), max_size=6))
def test_worker_restart_never_accepts_a_number_twice(transform: Transform, esn: bool, udp: bool,
                                                     steps: list[int], restarts: set[int]) -> None:
    """The datapath's inbound SA after a worker restart: a new context and a new window attached
    to the same slot of the shared SA table (``initialize=False``), at any point of a stream that
    is mostly in order (the fast path's run), with losses, reordering and replays.  No packet is
    ever accepted twice, and every verdict is the general path's on a window of its own."""
    from ipsecd.satable import SATable

    sender = make_ctx(transform, esn=esn, encap=udp, replay_window=64)
    table = SATable.create(None, n_slots=1, n_workers=1, max_replay_window=64)
    try:
        ctx = make_ctx(transform, esn=esn, encap=udp, replay_window=64)
        window = ReplayWindow(64, esn=esn, buffer=table.replay_buffer(0))
        reference = ReplayWindow(64, esn=esn)
        buf = memoryview(bytearray(200))  # the worker's fixed place: the fast path's caches apply
        accepted: set[int] = set()
        seq = 0
        for i, step in enumerate(steps):
            if i in restarts:
                ctx.forget_buffers()
                del window
                ctx = make_ctx(transform, esn=esn, encap=udp, replay_window=64)
                window = ReplayWindow(64, esn=esn, buffer=table.replay_buffer(0), initialize=False)
            seq = seq + 1 if step > 0 else max(1, seq + step)
            esp = sender.encap(udp4(struct.pack("!I", seq)), seq)[1]
            buf[: len(esp)] = esp
            drop = ctx.decap_into(buf, 0, len(esp), window)[0]
            assert drop is ctx._general_decap(memoryview(bytearray(esp)), 0, len(esp), reference)[0]
            if drop is Drop.OK:
                assert seq not in accepted, seq
                accepted.add(seq)
            else:
                assert drop is Drop.REPLAY
        ctx.forget_buffers()
        del window
    finally:
        table.close()
