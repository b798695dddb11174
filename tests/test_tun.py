"""Multi-queue TUN: queues across processes, device lifetime, read/write, policy routing."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from netns import Lab, host_to_host, lab_fixture, needs_root, wait_until

from workers import tun
from workers.rings import NextHops

pytestmark = [pytest.mark.netns, needs_root()]
SO_MARK = 36


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def _exists(lab: Lab, name: str) -> bool:
    return lab.namespaces[0].run("ip", "link", "show", name, check=False).returncode == 0


def _drain(q: tun.TunQueue) -> list[bytes]:
    buf = memoryview(bytearray(2048))
    out = []
    while (n := q.readinto(buf)) is not None:
        out.append(bytes(buf[:n]))
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_queues_from_another_process_and_device_lifetime(lab: Lab) -> None:
    ns = lab.netns("t")
    with ns.enter():
        control = tun.create("ipsec0")
    assert control.flags() & tun.IFF_DETACH_QUEUE  # kept, but out of the rotation

    def worker() -> int:  # a separate process attaches its own queue by name
        q = tun.TunQueue.open("ipsec0")
        try:
            return q.flags()
        finally:
            q.close()

    flags = ns.call(worker, timeout=10)
    assert flags & tun.TUN_FLAGS == tun.TUN_FLAGS
    assert _exists(lab, "ipsec0")  # the worker left; the control queue keeps the device
    control.close()
    assert wait_until(lambda: not _exists(lab, "ipsec0"), 2)  # and it goes with the control

    with ns.enter():
        q = tun.TunQueue.open("ipsec1")
        q.set_persist(True)
    q.close()
    assert _exists(lab, "ipsec1")  # persistent: outlives every queue
    ns.ip("link del ipsec1")


def test_flows_spread_over_queues_and_stay_on_one(lab: Lab) -> None:
    ns = lab.netns("t")
    with ns.enter():
        control = tun.create("ipsec0")
        queues = [tun.TunQueue.open("ipsec0") for _ in range(2)]
        tun.configure("ipsec0", mtu=1400, addresses=["10.99.0.1/24"])
        tun.add_route("ipsec0", "203.0.113.0/24")
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        for _ in range(3):
            for s in senders:
                s.sendto(b"data", ("203.0.113.9", 7))
        per_queue = [_drain(q) for q in queues]
        assert _drain(control) == []
        ports = [{struct.unpack_from("!H", p, 20)[0] for p in packets} for packets in per_queue]
        assert sum(len(p) for p in per_queue) == 48
        assert all(ports), "both queues get flows"
        assert not ports[0] & ports[1], "no flow is split"
        assert "mtu 1400" in ns.run("ip", "link", "show", "ipsec0").stdout.decode()
        # Detach a queue: its flows move to the other.
        queues[0].detach()
        for s in senders:
            s.sendto(b"data", ("203.0.113.9", 7))
        assert _drain(queues[0]) == [] and len(_drain(queues[1])) == 16
        queues[0].attach()
    finally:
        for s in senders:
            s.close()
        for q in [*queues, control]:
            q.close()


def test_readinto_at_an_offset_and_write(lab: Lab) -> None:
    ns = lab.netns("t")
    with ns.enter():
        q = tun.TunQueue.open("ipsec0")
        tun.configure("ipsec0", addresses=["10.99.0.1/24", "fd00:99::1/64"])
        rx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx4.bind(("10.99.0.1", 5000))
        rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rx6.bind(("fd00:99::1", 5000))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx4.settimeout(2)
        rx6.settimeout(2)
        # Read: a packet routed into the TUN lands behind 64 bytes of headroom.
        buf = bytearray(2048)
        view = memoryview(buf)[64:]
        tx.sendto(b"to the tunnel", ("10.99.0.2", 5000))

        def read_udp4() -> bool:  # skip the MLD reports IPv6 sends on the device
            n = q.readinto(view)
            return n is not None and buf[64] == 0x45 and buf[64 + 9] == 17
        assert wait_until(read_udp4, 2)
        n = len(b"to the tunnel") + 28
        assert bytes(buf[64 + 28:64 + n]) == b"to the tunnel"
        assert buf[:64] == bytes(64)
        # Write: a decrypted packet handed to the kernel reaches a local socket.
        data = b"from the tunnel"
        udp = struct.pack("!HHHH", 4000, 5000, 8 + len(data), 0) + data
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton("10.99.0.2"), socket.inet_aton("10.99.0.1"))
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        assert q.write(ip + udp) == 20 + len(udp)
        assert rx4.recvfrom(100) == (data, ("10.99.0.2", 4000))
        src6 = socket.inet_pton(socket.AF_INET6, "fd00:99::2")
        dst6 = socket.inet_pton(socket.AF_INET6, "fd00:99::1")
        udp6 = struct.pack("!HHHH", 4000, 5000, 8 + len(data), 0) + data
        pseudo = src6 + dst6 + struct.pack("!IxxxB", len(udp6), 17)
        udp6 = udp6[:6] + struct.pack("!H", _checksum(pseudo + udp6)) + udp6[8:]
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp6), 17, 64, src6, dst6)
        q.write(ip6 + udp6)
        assert rx6.recvfrom(100)[0] == data
    finally:
        for s in (rx4, rx6, tx):
            s.close()
        q.close()


def test_transport_mode_policy_routing(lab: Lab) -> None:
    """Plaintext to the peer enters the TUN; our marked ESP/IKE sockets leave by eth0."""
    h = host_to_host(lab)
    policy = tun.PolicyRouting("ipsec0", table=220, mark=0x10)
    with h.a.ns.enter():
        control = tun.create("ipsec0")
        q = tun.TunQueue.open("ipsec0")
        tun.configure("ipsec0")
        policy.install()
        policy.install()  # idempotent
        policy.add_peer(h.b.v4, src=h.a.v4)
        policy.add_peer(h.b.v6, src=h.a.v6)
        plain = [socket.socket(f, socket.SOCK_DGRAM) for f in (socket.AF_INET, socket.AF_INET6)]
        marked = [socket.socket(f, socket.SOCK_DGRAM) for f in (socket.AF_INET, socket.AF_INET6)]
        for s in marked:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x10)
    with h.b.ns.enter():
        rx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx4.bind(("", 9000))
        rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rx6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        rx6.bind(("", 9000))
    try:
        for s in (rx4, rx6):
            s.settimeout(2)
        plain[0].sendto(b"plain4", (h.b.v4, 9000))
        plain[1].sendto(b"plain6", (h.b.v6, 9000))
        got: list[bytes] = []

        def both_arrived() -> bool:
            got.extend(p for p in _drain(q) if (p[0] == 0x45 and p[9] == 17)
                       or (p[0] >> 4 == 6 and p[6] == 17))  # not the MLD reports
            return len(got) >= 2
        assert wait_until(both_arrived, 2)
        assert sorted(p[-6:] for p in got) == [b"plain4", b"plain6"]
        assert got[0][12:16] == socket.inet_aton(h.a.v4) or got[1][12:16] == socket.inet_aton(
            h.a.v4)  # the route's preferred source, not a TUN address
        marked[0].sendto(b"marked4", (h.b.v4, 9000))
        marked[1].sendto(b"marked6", (h.b.v6, 9000))
        assert rx4.recvfrom(100)[0] == b"marked4"
        assert rx6.recvfrom(100)[0] == b"marked6"
        assert _drain(q) == []
        # The TX path's next-hop lookup carries the mark: it finds eth0 and
        # B's MAC (resolved by the marked sends above), not the TUN.
        with h.a.ns.enter():
            marked_hops = NextHops("eth0", mark=0x10)
            plain_hops = NextHops("eth0")
        try:
            header = marked_hops.resolve(socket.inet_aton(h.b.v4))
            assert header is not None and header[:6] == h.b.ns.mac("eth0")
            assert plain_hops.resolve(socket.inet_aton(h.b.v4)) is None  # routes into the TUN
        finally:
            marked_hops.close()
            plain_hops.close()
        rules = h.a.ns.run("ip", "rule").stdout.decode()
        assert rules.count("not from all fwmark 0x10/0x10 lookup 220") == 1
        with h.a.ns.enter():
            policy.remove()
        assert "lookup 220" not in h.a.ns.run("ip", "rule").stdout.decode()
        assert "lookup 220" not in h.a.ns.run("ip", "-6", "rule").stdout.decode()
        assert h.a.ns.run("ip", "route", "show", "table", "220").stdout.strip() == b""
    finally:
        for s in (*plain, *marked, rx4, rx6):
            s.close()
        q.close()
        control.close()
