"""The classic BPF assembler and the SPI-steering filter.

Two layers: a small classic-BPF interpreter written from the kernel's
semantics (filter.h / Documentation/networking/filter.rst) runs the filter
over generated packets (hypothesis), and the real kernel runs it on packet
sockets in a namespace, which also proves that it attaches (BPF_MOD, the
ancillary protocol load) and that re-attaching replaces it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netns import Injector, Lab, collect, host_to_host, lab_fixture, needs_root

from workers import bpf
from workers.rings import RingConfig, RxRing

ESP, AH, UDP, FRAG = 50, 51, 17, 44


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


# --- an interpreter, for property tests without a kernel ----------------------------


def run(program: bpf.Program, packet: bytes, protocol: int) -> int:
    """Run a classic BPF program the way the kernel does for a socket filter."""
    code_ = bpf.assemble(program)
    a = x = 0
    pc = 0
    sizes = {bpf.BPF_W: 4, bpf.BPF_H: 2, bpf.BPF_B: 1}
    while True:
        code, jt, jf, k = code_[pc]
        pc += 1
        cls = code & 0x07
        if cls == bpf.BPF_LD:
            mode = code & 0xE0
            if mode == bpf.BPF_IMM:
                a = k
            elif mode == bpf.BPF_LEN:
                a = len(packet)
            elif mode == bpf.BPF_ABS and k >= (bpf.SKF_AD_OFF & 0xFFFFFFFF):
                assert k == (bpf.SKF_AD_OFF + bpf.SKF_AD_PROTOCOL) & 0xFFFFFFFF
                a = protocol
            elif mode in (bpf.BPF_ABS, bpf.BPF_IND):
                off = k + (x if mode == bpf.BPF_IND else 0)
                n = sizes[code & 0x18]
                if off + n > len(packet):
                    return 0  # out-of-bounds load ends the program: drop
                a = int.from_bytes(packet[off:off + n], "big")
            else:
                raise AssertionError(f"load mode {mode:#x}")
        elif cls == bpf.BPF_LDX:
            assert code & 0xE0 == bpf.BPF_MSH
            if k >= len(packet):
                return 0
            x = 4 * (packet[k] & 0x0F)
        elif cls == bpf.BPF_ALU:
            op, src = code & 0xF0, (x if code & bpf.BPF_X else k)
            if op == bpf.BPF_AND:
                a &= src
            elif op == bpf.BPF_SUB:
                a = (a - src) & 0xFFFFFFFF
            elif op == bpf.BPF_MOD:
                a %= src
            else:
                raise AssertionError(f"alu {op:#x}")
        elif cls == bpf.BPF_JMP:
            op = code & 0xF0
            if op == bpf.BPF_JA:
                pc += k
                continue
            cond = {bpf.BPF_JEQ: a == k, bpf.BPF_JGT: a > k, bpf.BPF_JGE: a >= k,
                    bpf.BPF_JSET: bool(a & k)}[op]
            pc += jt if cond else jf
        elif cls == bpf.BPF_RET:
            return k
        else:
            raise AssertionError(f"class {cls}")


def v4(proto: int, payload: bytes, *, frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 0,
                       frag, 64, proto, 0, bytes(4), bytes(4)) + options + payload


def v6(next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                       bytes(16), bytes(16)) + payload


def udp(dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", 4500, dport, 8 + len(data), 0) + data


def esp(spi: int) -> bytes:
    return struct.pack("!II", spi, 1) + bytes(32)


def ah(spi: int, next_header: int = 6) -> bytes:
    """RFC 4302 §2: next header, payload length (in words, minus 2), reserved, SPI, seq, ICV."""
    return struct.pack("!BBHII", next_header, 4, 0, spi, 1) + bytes(16) + bytes(20)


def takers(packet: bytes, protocol: int, n: int, **kwargs: object) -> list[int]:
    return [k for k in range(n)
            if run(bpf.spi_steering(n, k, **kwargs), packet, protocol)]  # type: ignore[arg-type]


spis = st.integers(1, 0xFFFFFFFF)
workers_n = st.integers(1, 9)


@given(spis, workers_n, st.integers(0, 10))
def test_raw_esp_v4_goes_to_exactly_spi_mod_n(spi: int, n: int, option_words: int) -> None:
    packet = v4(ESP, esp(spi), options=b"\x01" * 4 * option_words)
    assert takers(packet, bpf.ETH_P_IP, n) == [spi % n]


@given(spis, workers_n)
def test_raw_esp_v6_and_esp_in_udp(spi: int, n: int) -> None:
    assert takers(v6(ESP, esp(spi)), bpf.ETH_P_IPV6, n) == [spi % n]
    assert takers(v4(UDP, udp(4500, esp(spi))), bpf.ETH_P_IP, n) == [spi % n]
    assert takers(v6(UDP, udp(4500, esp(spi))), bpf.ETH_P_IPV6, n) == [spi % n]


@given(spis, workers_n, st.integers(0, 10))
def test_ah_goes_to_exactly_spi_mod_n(spi: int, n: int, option_words: int) -> None:
    """AH steers by its own SPI (RFC 4302 §2.4, the second word), IPv4 and IPv6."""
    assert takers(v4(AH, ah(spi), options=b"\x01" * 4 * option_words), bpf.ETH_P_IP, n) == [
        spi % n]
    assert takers(v6(AH, ah(spi)), bpf.ETH_P_IPV6, n) == [spi % n]
    # The SPI alone, nothing after it: still steered (AH's decap counts it a runt).
    assert takers(v4(AH, ah(spi)[:8]), bpf.ETH_P_IP, n) == [spi % n]
    assert takers(v6(AH, ah(spi)[:8]), bpf.ETH_P_IPV6, n) == [spi % n]
    assert takers(v4(AH, ah(spi)), bpf.ETH_P_IP, n, ah=False) == []
    assert takers(v6(AH, ah(spi)), bpf.ETH_P_IPV6, n, ah=False) == []


@given(spis, st.integers(2, 6), st.integers(0, 5))
def test_ah_fragments_go_where_esp_fragments_go(spi: int, n: int, to: int) -> None:
    """A transport-mode peer fragments AH after AH processing (RFC 4302 §3.3.4): the
    fragments go to the fragment worker(s), the reassembled datagram's SPI decides."""
    to %= n
    for packet, proto in [
        (v4(AH, ah(spi), frag=0x2000), bpf.ETH_P_IP),
        (v4(AH, bytes(16), frag=0x0010), bpf.ETH_P_IP),
        (v6(FRAG, struct.pack("!BBHI", AH, 0, 1, 9) + ah(spi)), bpf.ETH_P_IPV6),
    ]:
        assert takers(packet, proto, n, fragments_to=to, runts_to=to) == [to], packet.hex()
        assert takers(packet, proto, n, fragments_to=to, ah=False) == [], packet.hex()
        assert [k for k in range(n) if run(bpf.spi_steering(
            n, k, fragments_to=k), packet, proto)] == list(range(n))


@given(spis, st.integers(2, 6), st.integers(0, 5))
def test_ah_behind_extension_headers_goes_nowhere(spi: int, n: int, to: int) -> None:
    to %= n
    packet = v6(0, bytes([AH, 0]) + bytes(6) + ah(spi))  # hop-by-hop first
    assert takers(packet, bpf.ETH_P_IPV6, n, fragments_to=to, runts_to=to) == [], packet.hex()


@given(workers_n, st.integers(0, 7), st.integers(0, 8))
def test_ah_without_room_for_an_spi_goes_to_the_designated_worker(
        n: int, length: int, to: int) -> None:
    to %= n
    for packet, proto in [(v4(AH, bytes(length)), bpf.ETH_P_IP),
                          (v4(AH, bytes(length), options=b"\x01" * 8), bpf.ETH_P_IP),
                          (v6(AH, bytes(length)), bpf.ETH_P_IPV6)]:
        assert takers(packet, proto, n, runts_to=to) == [to], packet.hex()
        assert takers(packet, proto, n, runts_to=None) == []
        assert [k for k in range(n) if run(bpf.spi_steering(
            n, k, fragments_to=k, runts_to=to), packet, proto)] == [to]
    # Without raw ESP the runt label still serves AH.
    assert takers(v4(AH, bytes(3)), bpf.ETH_P_IP, n, runts_to=to, raw_esp=False) == [to]


@given(workers_n)
def test_ike_keepalive_and_other_traffic_go_nowhere(n: int) -> None:
    for packet, proto in [
        (v4(UDP, udp(4500, bytes(4) + b"IKE header")), bpf.ETH_P_IP),  # RFC 3948 §2.2 marker
        (v4(UDP, udp(4500, b"\xff")), bpf.ETH_P_IP),  # §2.3 keepalive
        (v6(UDP, udp(4500, bytes(4) + b"IKE")), bpf.ETH_P_IPV6),
        (v6(UDP, udp(4500, b"\xff")), bpf.ETH_P_IPV6),
        (v4(UDP, udp(500, esp(7))), bpf.ETH_P_IP),  # IKE port, not NAT-T
        (v4(AH, ah(7)), 0x0806),  # AH, but not IP at all
        (v4(6, bytes(40)), bpf.ETH_P_IP),
        (v6(0, bytes([ESP, 0]) + bytes(6) + esp(7)), bpf.ETH_P_IPV6),  # hop-by-hop first
        (v4(ESP, esp(7)), 0x0806),  # not IP at all
        (b"\x60" + bytes(40), bpf.ETH_P_IP),  # version does not match the ethertype
    ]:
        assert takers(packet, proto, n) == [], packet.hex()


@given(workers_n, st.integers(0, 3), st.integers(0, 8))
def test_esp_without_room_for_an_spi_goes_to_the_designated_worker(
        n: int, length: int, to: int) -> None:
    """No SPI to steer by: one designated worker takes it, and counts it."""
    to %= n
    for packet, proto in [(v4(ESP, bytes(length)), bpf.ETH_P_IP),
                          (v4(ESP, bytes(length), options=b"\x01" * 8), bpf.ETH_P_IP),
                          (v6(ESP, bytes(length)), bpf.ETH_P_IPV6)]:
        assert takers(packet, proto, n, runts_to=to) == [to], packet.hex()
        assert takers(packet, proto, n, runts_to=None) == []
        # The workers' own set-up: every worker takes fragments, one takes runts.
        assert [k for k in range(n) if run(bpf.spi_steering(
            n, k, fragments_to=k, runts_to=to), packet, proto)] == [to]
    # Four bytes are an SPI: steered by it, as ever.
    assert takers(v4(ESP, b"\0\0\0\x07"), bpf.ETH_P_IP, n, runts_to=to) == [7 % n]


@given(spis, st.integers(2, 6), st.integers(0, 5))
def test_fragments_go_to_the_designated_worker(spi: int, n: int, to: int) -> None:
    to %= n
    mf, later = 0x2000, 0x0010  # MF set; offset 16*8 without MF
    for packet, proto in [
        (v4(ESP, esp(spi), frag=mf), bpf.ETH_P_IP),
        (v4(ESP, bytes(16), frag=later), bpf.ETH_P_IP),
        (v4(UDP, udp(4500, esp(spi)), frag=mf), bpf.ETH_P_IP),
        (v4(UDP, bytes(16), frag=later), bpf.ETH_P_IP),  # no port visible: may be ours
        (v6(FRAG, struct.pack("!BBHI", ESP, 0, 1, 9) + esp(spi)), bpf.ETH_P_IPV6),
        (v6(FRAG, struct.pack("!BBHI", ESP, 0, 0x100, 9) + bytes(16)), bpf.ETH_P_IPV6),
        (v6(FRAG, struct.pack("!BBHI", UDP, 0, 1, 9) + udp(4500, esp(spi))), bpf.ETH_P_IPV6),
        (v6(FRAG, struct.pack("!BBHI", UDP, 0, 0x100, 9) + bytes(16)), bpf.ETH_P_IPV6),
    ]:
        assert takers(packet, proto, n, fragments_to=to) == [to], packet.hex()
    # First fragments that are clearly not ours go nowhere.
    assert takers(v4(UDP, udp(53, bytes(8)), frag=mf), bpf.ETH_P_IP, n, fragments_to=to) == []
    assert takers(v6(FRAG, struct.pack("!BBHI", UDP, 0, 1, 9) + udp(53, bytes(8))),
                  bpf.ETH_P_IPV6, n, fragments_to=to) == []
    assert takers(v4(UDP, bytes(16), frag=later), bpf.ETH_P_IP, n, fragments_to=to,
                  udp_fragments=False) == []
    # fragments_to=None: fragments are nobody's
    assert takers(v4(ESP, esp(spi), frag=mf), bpf.ETH_P_IP, n, fragments_to=None) == []


def test_options_select_what_is_taken() -> None:
    assert takers(v4(UDP, udp(4500, esp(5))), bpf.ETH_P_IP, 1, nat_t_port=None) == []
    assert takers(v4(ESP, esp(5)), bpf.ETH_P_IP, 1, raw_esp=False) == []
    assert takers(v4(UDP, udp(4501, esp(5))), bpf.ETH_P_IP, 2, nat_t_port=4501) == [1]
    with pytest.raises(ValueError):
        bpf.spi_steering(2, 2)
    with pytest.raises(ValueError):
        bpf.spi_steering(1, 0, raw_esp=False, nat_t_port=None)


def test_assembler_labels_and_errors() -> None:
    prog: list[bpf.Insn | str] = [bpf.ld(bpf.BPF_B, 0), bpf.jmp(bpf.BPF_JEQ, 1, "yes", "no"),
            "yes", bpf.ret(1), "no", bpf.ret(0)]
    assert bpf.assemble(prog)[1] == (bpf.BPF_JMP | bpf.BPF_JEQ, 0, 1, 1)
    assert len(bpf.pack(prog)) == 4 * 8
    with pytest.raises(ValueError, match="undefined"):
        bpf.assemble([bpf.ja("nowhere")])
    with pytest.raises(ValueError, match="twice"):
        bpf.assemble(["x", "x", bpf.ret(0)])
    with pytest.raises(ValueError, match="out of range"):
        bpf.assemble(["back", bpf.ret(0), bpf.ja("back")])
    with pytest.raises(ValueError):
        bpf.assemble([])


# --- the kernel ------------------------------------------------------------------------


def _spis(packets: list[bytes]) -> set[object]:
    """SPI of each ESP packet, or ("frag", id) for fragments, as the worker would see it."""
    out: set[object] = set()
    for p in packets:
        if p[0] >> 4 == 4:
            ihl, proto = 4 * (p[0] & 0xF), p[9]
            if struct.unpack_from("!H", p, 6)[0] & 0x3FFF:
                out.add(("frag", struct.unpack_from("!H", p, 4)[0]))
            elif proto == ESP:
                out.add(struct.unpack_from("!I", p, ihl)[0])
            elif proto == AH:
                out.add(struct.unpack_from("!I", p, ihl + 4)[0])
            else:
                out.add(struct.unpack_from("!I", p, ihl + 8)[0])
        else:
            nh = p[6]
            if nh == FRAG:
                out.add(("frag6", struct.unpack_from("!I", p, 44)[0]))
            else:
                out.add(struct.unpack_from("!I", p, {ESP: 40, AH: 44}.get(nh, 48))[0])
    return out


@pytest.mark.netns
@needs_root()
def test_two_sockets_split_traffic_by_spi(lab: Lab) -> None:
    h = host_to_host(lab)
    small = RingConfig(block_size=1 << 16, block_count=4)
    with h.b.ns.enter():
        rings = [RxRing("eth0", config=small, filter=bpf.pack(bpf.spi_steering(2, k)))
                 for k in (0, 1)]
    tx = Injector(h.a.ns)
    try:
        a, b, a6, b6 = h.a.v4, h.b.v4, h.a.v6, h.b.v6
        for spi in range(0x1000, 0x1008):
            tx.ip4(a, b, ESP, esp(spi))
            tx.ip6(a6, b6, ESP, esp(spi + 0x100))
            tx.udp(b, 4500, esp(spi + 0x200))
            tx.udp(b6, 4500, esp(spi + 0x300))
        tx.ip4(a, b, ESP, esp(0x2001), options=b"\x01\x01\x01\x00")  # IHL 6
        tx.udp(b, 4500, bytes(4) + b"IKE_SA_INIT")
        tx.udp(b6, 4500, bytes(4) + b"IKE_SA_INIT")
        tx.udp(b, 4500, b"\xff")
        tx.udp(b6, 4500, b"\xff")
        tx.udp(b, 500, esp(0x3000))
        tx.udp(b, 9999, esp(0x3002))
        tx.ip4(a, b, AH, ah(0x3005))  # AH: steered by its SPI, like ESP
        tx.ip6(a6, b6, AH, ah(0x3006))
        tx.ip4(a, b, ESP, esp(0x4000), frag=0x2000, ident=77)  # first fragment: SPI even
        tx.ip4(a, b, ESP, esp(0x4001), frag=0x2000, ident=78)  # ... and odd: both to worker 0
        tx.ip4(a, b, ESP, bytes(24), frag=0x0004, ident=77)  # a later fragment
        tx.ip6(a6, b6, FRAG, struct.pack("!BBHI", ESP, 0, 1, 79) + esp(0x4003))
        got = [_spis(collect(r)) for r in rings]
    finally:
        tx.close()
        for r in rings:
            r.close()
    expected: list[set[object]] = [set(), set()]
    for base in (0x1000, 0x1100, 0x1200, 0x1300):
        for spi in range(base, base + 8):
            expected[spi % 2].add(spi)
    expected[1] |= {0x2001, 0x3005}
    expected[0].add(0x3006)
    expected[0] |= {("frag", 77), ("frag", 78), ("frag6", 79)}
    assert got == expected


@pytest.mark.netns
@needs_root()
def test_reattach_replaces_the_filter(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(block_size=1 << 16, block_count=4),
                      filter=bpf.pack(bpf.spi_steering(2, 1)))
    tx = Injector(h.a.ns)
    try:
        for spi in (3, 4, 5, 6):
            tx.ip4(h.a.v4, h.b.v4, ESP, esp(spi))
        assert _spis(collect(ring)) == {3, 5}
        ring.set_filter(bpf.pack(bpf.spi_steering(3, 0)))  # three workers now
        for spi in (3, 4, 5, 6):
            tx.ip4(h.a.v4, h.b.v4, ESP, esp(spi))
        assert _spis(collect(ring)) == {3, 6}
        ring.set_filter(bpf.pack(bpf.DROP_ALL))
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(9))
        assert collect(ring) == []
        with pytest.raises(OSError):  # the kernel refuses a modulus of 0
            ring.set_filter(bpf.pack([bpf.alu(bpf.BPF_MOD, 0), bpf.ret(0)]))
    finally:
        tx.close()
        ring.close()


def test_fprog_layout() -> None:
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    assert struct.calcsize("@HP") == 16 if struct.calcsize("P") == 8 else 8
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        bpf.attach(s, bpf.pack(bpf.DROP_ALL))  # unprivileged sockets may attach filters
        bpf.detach(s)
        with pytest.raises(ValueError):
            bpf.attach(s, b"\x00" * 7)
    finally:
        s.close()
