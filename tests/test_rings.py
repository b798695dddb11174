"""AF_PACKET RX ring and the TX methods, with real packets between two namespaces."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from netns import Injector, Lab, collect, host_to_host, lab_fixture, needs_root, wait_until

from workers import bpf
from workers.rings import ETH_P_IP, NextHops, RingConfig, RingTx, RxRing, TxSender

pytestmark = [pytest.mark.netns, needs_root()]
ESP = 50
SMALL = RingConfig(block_size=1 << 16, block_count=4)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def esp(spi: int, seq: int, size: int = 64) -> bytes:
    return struct.pack("!II", spi, seq) + bytes(size - 8)


def seqs(packets: list[bytes]) -> list[int]:
    out = []
    for p in packets:
        off = 4 * (p[0] & 0xF) if p[0] >> 4 == 4 else 40
        out.append(struct.unpack_from("!I", p, off + 4)[0])
    return out


def only_esp() -> bytes:
    return bpf.pack(bpf.spi_steering(1, 0))


def test_receives_in_order_from_the_network_header(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(block_size=1 << 16, block_count=32),
                      filter=only_esp())
    tx = Injector(h.a.ns)
    try:
        for seq in range(1, 301):
            tx.ip4(h.a.v4, h.b.v4, ESP, esp(0x100, seq, 1000))
        for seq in range(301, 311):
            tx.ip6(h.a.v6, h.b.v6, ESP, esp(0x100, seq, 1000))
        got = collect(ring)
        assert seqs(got) == list(range(1, 311))  # 300 x 1 KB spans several 64 KiB blocks
        assert got[0][:2] == b"\x45\x00" and len(got[0]) == 1020
        assert got[-1][0] >> 4 == 6 and len(got[-1]) == 1040
        stats = ring.read_stats()
        assert (stats.packets, stats.drops, stats.truncated) == (310, 0, 0)
    finally:
        tx.close()
        ring.close()


def test_stopping_early_resumes_at_the_next_packet(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=SMALL, filter=only_esp())
    tx = Injector(h.a.ns)
    try:
        for seq in range(1, 11):
            tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, seq))
        assert ring.wait(1.0)
        first = []
        for packet in ring.batch():
            first.append(seqs([bytes(packet)])[0])
            if len(first) == 3:
                break
        del packet  # the loop variable is a view into the ring: drop it (lifetime rule)
        rest = seqs(collect(ring))
        assert first + rest == list(range(1, 11))
    finally:
        tx.close()
        ring.close()


def test_wait_times_out_and_a_lone_packet_comes_within_the_retire_timeout(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(retire_ms=2), filter=only_esp())
    tx = Injector(h.a.ns)
    try:
        t0 = time.monotonic()
        assert not ring.wait(0.05)
        assert 0.04 < time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 1))
        assert ring.wait(1.0)
        assert time.monotonic() - t0 < 0.1  # a partly filled block is retired by the timer
        assert len(list(ring.batch())) == 1
    finally:
        tx.close()
        ring.close()


def test_ring_full_is_counted_and_outgoing_is_ignored(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(block_size=4096, block_count=2, frame_size=2048))
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = Injector(h.a.ns)
    try:
        for _ in range(20):  # B's own packets: PACKET_IGNORE_OUTGOING keeps them out
            own.sendto(b"x", (h.a.v4, 9))
        for seq in range(1, 101):  # 100 x 1 KB into 2 x 4 KiB blocks, nobody reading
            tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, seq, 1000))
        time.sleep(0.05)
        got = collect(ring)
        own_address = socket.inet_aton(h.b.v4)
        assert not [p for p in got if p[0] >> 4 == 4 and p[12:16] == own_address], "own TX seen"
        stats = ring.read_stats()
        assert stats.drops > 0
        assert stats.packets == stats.drops + len(got)
        assert stats.freezes > 0
    finally:
        tx.close()
        own.close()
        ring.close()


def test_oversized_frames_are_skipped_and_counted(lab: Lab) -> None:
    h = host_to_host(lab)
    for host in (h.a, h.b):
        host.ns.ip("link set eth0 mtu 9000")
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(block_size=4096, block_count=4, frame_size=2048))
    tx = Injector(h.a.ns)
    try:
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 1, 1400))
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 2, 4050))  # does not fit a 4 KiB block
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 3, 1400))
        assert 2 not in seqs([p for p in collect(ring) if p[0] == 0x45 and p[9] == ESP])
        assert ring.stats.truncated == 1
    finally:
        tx.close()
        ring.close()


def test_eth_p_ip_socket_sees_only_ipv4(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", protocol=ETH_P_IP, config=SMALL, filter=only_esp())
    tx = Injector(h.a.ns)
    try:
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 1))
        tx.ip6(h.a.v6, h.b.v6, ESP, esp(1, 2))
        assert seqs(collect(ring)) == [1]
    finally:
        tx.close()
        ring.close()


def test_close_while_a_packet_view_is_held_keeps_the_mapping(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=SMALL, filter=only_esp())
    tx = Injector(h.a.ns)
    try:
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(1, 1))
        assert ring.wait(1.0)
        kept = next(iter(ring.batch()))
        ring.close()
        assert ring.sock.fileno() < 0
        assert seqs([bytes(kept)]) == [1]  # still mapped, not freed under the view
        kept.release()
    finally:
        tx.close()
        ring.close()


# --- TX ----------------------------------------------------------------------------


def ip4_esp(h: object, seq: int, size: int = 200) -> bytes:
    from netns import HostToHost

    assert isinstance(h, HostToHost)
    payload = esp(0x77, seq, size)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, ESP, 0,
                       socket.inet_aton(h.a.v4), socket.inet_aton(h.b.v4)) + payload


def ip6_esp(h: object, seq: int, size: int = 200) -> bytes:
    from netns import HostToHost

    assert isinstance(h, HostToHost)
    payload = esp(0x77, seq, size)
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), ESP, 64,
                       socket.inet_pton(socket.AF_INET6, h.a.v6),
                       socket.inet_pton(socket.AF_INET6, h.b.v6)) + payload


@pytest.mark.parametrize("method", ["ring", "packet", "raw"])
def test_tx_methods_deliver_ipv4_and_ipv6(lab: Lab, method: str) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=SMALL, filter=only_esp())
    with h.a.ns.enter():
        sender = TxSender("eth0", method=method, ttl=0.0)  # type: ignore[arg-type]
    try:
        # The first packets find no neighbour entry: they go the kernel's
        # way, which resolves it; after that the fast path takes over.
        assert sender.send(ip4_esp(h, 1)) and sender.send(ip6_esp(h, 2))
        sender.flush()
        assert sender.stats.fallback == 2
        got = collect(ring)
        assert wait_until(lambda: sender.next_hops is None
                          or sender.next_hops.resolve(bytes(ip4_esp(h, 0)[16:20])) is not None)
        assert wait_until(lambda: sender.next_hops is None
                          or sender.next_hops.resolve(bytes(ip6_esp(h, 0)[24:40])) is not None)
        for seq in range(3, 103):
            assert sender.send(ip4_esp(h, seq) if seq % 2 else ip6_esp(h, seq))
        sender.flush()
        got += collect(ring)
        assert sorted(seqs(got)) == list(range(1, 103))
        assert sender.stats.sent == 102 and sender.stats.dropped == 0
        assert sender.stats.fallback == (102 if method == "raw" else 2)
    finally:
        sender.close()
        ring.close()


def test_ring_tx_flushes_by_itself_when_full(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ring = RxRing("eth0", config=RingConfig(block_size=1 << 16, block_count=16),
                      filter=only_esp())
    with h.a.ns.enter():
        tx = RingTx("eth0", frame_count=8)
        mac = h.b.ns.mac("eth0")
        header = mac + h.a.ns.mac("eth0") + b"\x08\x00"
    try:
        for seq in range(1, 101):  # 100 frames through 8 slots, one flush at the end
            assert tx.send(header, ip4_esp(h, seq))
        tx.flush()
        assert not tx.send(header, bytes(3000))  # larger than a frame
        assert seqs(collect(ring)) == list(range(1, 101))
    finally:
        tx.close()
        ring.close()


def test_an_unusable_next_hop_is_asked_again_after_50_ms_not_after_the_ttl(lab: Lab) -> None:
    """The raw path is half as fast: the ring takes over soon after the kernel resolved."""
    h = host_to_host(lab)
    dst = socket.inet_aton(h.b.v4)
    with h.a.ns.enter():
        hops = NextHops("eth0", ttl=60.0)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert hops.header(dst) is None  # no neighbour entry yet
        udp.sendto(b"x", (h.b.v4, 9))  # the kernel's way: it resolves the neighbour
        assert wait_until(lambda: hops.resolve(dst) is not None, 2)
        t0 = time.monotonic()
        assert wait_until(lambda: hops.header(dst) is not None, 2)
        assert time.monotonic() - t0 < 0.5  # 50 ms, well before the 60 s of a usable header
        header = hops.header(dst)
        assert header is not None and header[6:12] == hops.mac and header[12:] == b"\x08\x00"
    finally:
        udp.close()
        hops.close()
