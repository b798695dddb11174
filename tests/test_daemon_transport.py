"""Two ``ipsecd run`` daemons in host-to-host transport mode (the HOWTO's first example).

``A ── B`` (netns.host_to_host), each running the daemon with the HOWTO's
policies and AES-GCM-16 manual keys for IPv4 and IPv6 (the same SPIs for
both families).  The daemons are
started once for the module; each test leaves them as it found them.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, start, transport_script, wait_ready
from netns import (
    HostToHost,
    Injector,
    Lab,
    Netns,
    host_to_host,
    needs_root,
    ping,
    remove_stale,
    tcp_transfer,
    wait_until,
)

from ipsecd.packet import checksum

pytestmark = [pytest.mark.netns, needs_root()]

ESP, ICMP, ICMPV6 = 50, 1, 58
SO_MARK = 36
MARK = 1  # the daemons' default [datapath] mark


def injector(ns: Netns) -> Injector:
    """Raw sockets that skip the daemon's routing table (as its own ESP does)."""
    inj = Injector(ns)
    for sock in (inj.raw4, inj.raw6, inj.udp4, inj.udp6):
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    return inj


class Pair:
    def __init__(self, topo: HostToHost, a: Daemon, b: Daemon, workdir: Path) -> None:
        self.topo, self.a, self.b, self.workdir = topo, a, b, workdir


def _script(topo: HostToHost, local: str) -> str:
    a, b = topo.a, topo.b
    v4 = transport_script(a.v4, b.v4, local=a.v4 if local == "a" else b.v4)
    # The IPv6 SAs have the IPv4 ones' SPIs: the SAD key includes the destination
    # (RFC 4301 §4.1), so the workers tell them apart by it.
    v6 = transport_script(a.v6, b.v6, local=a.v6 if local == "a" else b.v6)
    return v4 + v6.replace("flush;\nspdflush;\n", "")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    remove_stale()
    workdir = tmp_path_factory.mktemp("transport")
    with Lab("tr") as lab:
        topo = host_to_host(lab)
        # Strict reverse-path filtering on B: the daemon makes it loose while it runs.
        topo.b.ns.sysctl("net.ipv4.conf.all.rp_filter", 1)
        t0 = time.monotonic()
        a = start(topo.a.ns, workdir, "tr-a", outside=["eth0"], script=_script(topo, "a"),
                  wait=False, metrics="127.0.0.1:0")
        b = start(topo.b.ns, workdir, "tr-b", outside=["eth0"], script=_script(topo, "b"),
                  wait=False)
        try:
            wait_ready(a, b)
            assert time.monotonic() - t0 < 4.0, "two daemons took too long to start"
            yield Pair(topo, a, b, workdir)
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()
        assert "eth0: rp_filter set to loose (2)" in b.log_text()
        assert topo.b.ns.run("sysctl", "-n", "net.ipv4.conf.eth0.rp_filter").stdout.strip() == b"0"


def _ip_protocols(frames: list[bytes]) -> list[int]:
    """The IP protocol (IPv6: first next header) of each captured Ethernet frame; -1 for others."""
    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0800:
            out.append(f[14 + 9])
        elif ethertype == 0x86DD:
            out.append(f[14 + 6])
        else:
            out.append(-1)
    return out


def _icmpv6_types(frames: list[bytes]) -> list[int]:
    return [f[14 + 40] for f in frames
            if struct.unpack_from("!H", f, 12)[0] == 0x86DD and f[14 + 6] == ICMPV6]


def test_ping_over_esp_both_ways_ipv4_and_ipv6(pair: Pair, tmp_path: Path) -> None:
    topo = pair.topo
    cap = topo.b.ns.capture("eth0", tmp_path / "wire.pcap")
    assert ping(topo.a.ns, topo.b.v4, count=3) == 3
    assert ping(topo.b.ns, topo.a.v4, count=3) == 3
    assert ping(topo.a.ns, topo.b.v6, count=3) == 3
    assert ping(topo.b.ns, topo.a.v6, count=3) == 3
    cap.stop()
    frames = cap.packets()
    protocols = _ip_protocols(frames)
    # 4 x 3 echo requests and replies, all in ESP; nothing in clear (no ICMP
    # echo, and no protocol-unreachable from a kernel without ESP).
    assert protocols.count(ESP) >= 24
    assert ICMP not in protocols
    assert all(t in (133, 134, 135, 136, 143) for t in _icmpv6_types(frames)), "only ND in clear"


def test_status_shows_the_counters_moving(pair: Pair) -> None:
    before = pair.a.status()
    assert ping(pair.topo.a.ns, pair.topo.b.v4, count=2) == 2
    after = pair.a.status()

    def sa(st: dict[str, object], spi: int) -> dict[str, int]:
        return next(s for s in st["sas"] if s["spi"] == spi)  # type: ignore[attr-defined,index]

    assert sa(after, 0x1001)["packets"] == sa(before, 0x1001)["packets"] + 2
    assert sa(after, 0x1001)["seq"] >= sa(before, 0x1001)["seq"] + 2
    assert sa(after, 0x1002)["packets"] == sa(before, 0x1002)["packets"] + 2
    assert sa(after, 0x1001)["direction"] == "out" and sa(after, 0x1002)["direction"] == "in"
    assert sum(w["packets_in"] for w in after["workers"]) > 0
    assert {p["direction"] for p in after["policies"]} == {"in", "out", "fwd"}
    assert "keys" in sa(after, 0x1001) and "0x6b1e" not in str(after), "no key bytes in status"
    table = pair.a.ipsecd("status")
    assert table.returncode == 0
    for word in ("workers: 2", "running", "SAs: 4", "0x00001001", "192.0.2.1 -> 192.0.2.2"):
        assert word in table.stdout


def test_tcp_transfer(pair: Pair) -> None:
    topo = pair.topo
    received = tcp_transfer(topo.a.ns, topo.b.ns, topo.b.v4, size=20 << 20).received
    assert received == 20 << 20
    # What the receiver counted all went through the SA (whose counter includes headers).
    assert pair.a.sa(0x1001)["bytes"] > received


def test_setkey_through_the_socket_is_atomic(pair: Pair) -> None:
    a = pair.a
    dump = a.ipsecd("setkey", "-D")
    assert dump.returncode == 0 and "spi=4097(0x00001001)" in dump.stdout
    assert "0x6b1e" not in dump.stdout and "<160-bit key>" in dump.stdout
    spd = a.ipsecd("setkey", "-DP")
    assert "192.0.2.1[any] 192.0.2.2[any] any\n\tout prio def ipsec" in spd.stdout
    before = a.query()
    # A script that fails in its third statement changes nothing.
    bad = ("add 192.0.2.1 192.0.2.9 esp 0x7001 -m transport -E aes-gcm-16 "
           "0x00112233445566778899aabbccddeeff00112233;\n"
           "spdadd 192.0.2.1/32 192.0.2.9/32 any -P out ipsec esp/transport//require;\n"
           "add 192.0.2.2 192.0.2.1 esp 0x1002 -m transport -E aes-gcm-16 "
           "0x00112233445566778899aabbccddeeff00112233;\n")
    r = a.setkey(bad)
    assert r.returncode == 1
    assert r.stderr.startswith("<stdin>:3:1: add: esp SA spi 0x1002 to 192.0.2.1 already exists")
    after = a.query()
    assert [s["spi"] for s in after["sas"]] == [s["spi"] for s in before["sas"]]
    assert len(after["policies"]) == len(before["policies"])
    # A good one goes in, and out again.
    good = bad.rsplit("add", 1)[0]
    assert a.setkey(good).returncode == 0
    st = a.query()
    assert any(s["spi"] == 0x7001 and s["direction"] == "out" for s in st["sas"])
    assert "192.0.2.9/32" in st["routes"]
    undo = ("delete 192.0.2.1 192.0.2.9 esp 0x7001;\n"
            "spddelete 192.0.2.1/32 192.0.2.9/32 any -P out;\n")
    assert a.setkey(undo).returncode == 0
    st = a.query()
    assert not any(s["spi"] == 0x7001 for s in st["sas"]) and "192.0.2.9/32" not in st["routes"]
    assert ping(pair.topo.a.ns, pair.topo.b.v4, count=1) == 1


def test_bad_input_is_counted(pair: Pair) -> None:
    """Wrong SPIs, replays and garbage are counted drops; the tunnel keeps working."""
    topo, b = pair.topo, pair.b
    before = b.query()["drops"]
    inj = injector(topo.a.ns)
    try:
        for i in range(20):  # unknown SPI
            inj.ip4(topo.a.v4, topo.b.v4, ESP, struct.pack("!II", 0xDEAD0000 + i, 1) + bytes(40))
        # A forged packet for the real inbound SA (B's 0x1001): fails its ICV.
        for i in range(5):
            seq = 0xFFFF0000 + i  # ahead of the window: checked, then the ICV fails
            inj.ip4(topo.a.v4, topo.b.v4, ESP, struct.pack("!II", 0x1001, seq) + bytes(60))
        # Truncated ESP.
        inj.ip4(topo.a.v4, topo.b.v4, ESP, struct.pack("!I", 0x1001))
    finally:
        inj.close()

    def counted() -> bool:
        now = b.query()["drops"]
        return (now.get("unknown_spi", 0) - before.get("unknown_spi", 0) >= 20
                and now.get("icv", 0) - before.get("icv", 0) >= 5)

    assert wait_until(counted, 3), (before, b.query()["drops"])
    assert ping(topo.a.ns, topo.b.v4, count=2) == 2
    # Rate-limited logging: not one line per packet.
    assert b.log_text().count("unknown_spi") < 5


def test_replayed_packets_are_dropped(pair: Pair, tmp_path: Path) -> None:
    topo, b = pair.topo, pair.b
    cap = topo.a.ns.capture("eth0", tmp_path / "esp.pcap", "ip proto 50 and dst host " + topo.b.v4)
    assert ping(topo.a.ns, topo.b.v4, count=2) == 2
    cap.stop()
    packets = [f[14:] for f in cap.packets()]
    assert packets
    before = b.query()["drops"].get("replay", 0)
    inj = injector(topo.a.ns)
    try:
        for p in packets:
            ihl = (p[0] & 15) * 4
            inj.ip4(topo.a.v4, topo.b.v4, ESP, p[ihl:])
    finally:
        inj.close()
    assert wait_until(lambda: b.query()["drops"].get("replay", 0) >= before + len(packets), 3)


def test_metrics(pair: Pair) -> None:
    import urllib.request

    assert ping(pair.topo.a.ns, pair.topo.b.v4, count=1) == 1
    address = pair.a.query()["metrics"]
    assert address is not None and address.startswith("127.0.0.1:")
    with pair.topo.a.ns.enter():
        sock_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = sock_opener.open(f"http://{address}/metrics", timeout=5).read().decode()
    assert 'ipsecd_build_info{version="0.1.0"} 1.0' in text
    line = next(x for x in text.splitlines() if x.startswith("ipsecd_child_packets_total{")
                and 'connection="192.0.2.1-192.0.2.2"' in x and 'direction="out"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert 'ipsecd_drops_total{reason="unknown_spi"}' in text
    assert 'ipsecd_worker_up{worker="0"} 1.0' in text
    assert "ipsecd_worker_restarts_total" in text and "ipsecd_policies 6.0" in text


def test_cleartext_the_policy_requires_protected_is_dropped(pair: Pair, tmp_path: Path) -> None:
    """An ``in ... require`` policy: a plaintext echo request from the peer gets no answer."""
    topo = pair.topo
    cap = topo.b.ns.capture("eth0", tmp_path / "clear.pcap", "icmp")
    inj = injector(topo.b.ns)  # marked: skips B's routing into its TUN
    try:
        for seq in range(3):
            echo = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x4242, seq) + bytes(32))
            struct.pack_into("!H", echo, 2, checksum(echo))
            inj.ip4(topo.b.v4, topo.a.v4, ICMP, bytes(echo))
        time.sleep(0.3)
    finally:
        inj.close()
    cap.stop()
    frames = cap.packets()
    assert len(frames) == 3  # our three requests, and no reply from A
    assert all(f[14 + 20] == 8 for f in frames)
    listing = topo.a.ns.run("nft", "list", "table", "inet", "ipsecd_tr_a_policy").stdout.decode()
    assert "ip saddr 192.0.2.2 ip daddr 192.0.2.1 counter packets 3" in listing
    assert ping(topo.b.ns, topo.a.v4, count=1) == 1  # through ESP it still works


IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_PROBE, IP_MTU = 10, 0, 3, 14
INNER_MTU_V4 = 1466  # 1500 less ESP (SPI, sequence number, IV: 16), trailer (2) and ICV (16)
CLEAR_MARK = b"transport-plaintext-"


def _ipv4_frames(frames: list[bytes]) -> list[bytes]:
    return [f[14:] for f in frames if struct.unpack_from("!H", f, 12)[0] == 0x0800]


def test_big_datagrams_without_df_arrive_whole(pair: Pair, tmp_path: Path) -> None:
    """RFC 4303 §3.3.4: encapsulated whole, then the outer ESP packet goes in fragments.

    1460 bytes of UDP payload fit the TUN but not the SA once encapsulated; 3000
    and 8000 do not fit the TUN either (A's kernel cuts them before the worker,
    which reassembles them first).  On the wire: ESP fragments only.
    """
    topo, a = pair.topo, pair.a
    before = a.query()["drops"]
    cap = topo.b.ns.capture("eth0", tmp_path / "frag.pcap", f"ip and src host {topo.a.v4}")
    with topo.b.ns.enter():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with topo.a.ns.enter():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sizes = (500, 1460, 3000, 8000, 1400)
    try:
        rx.bind((topo.b.v4, 9700))
        rx.settimeout(3)
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        for size in sizes:
            payload = (CLEAR_MARK + bytes(range(256))) * (size // 276 + 1)
            payload = payload[:size]
            tx.sendto(payload, (topo.b.v4, 9700))
            assert rx.recv(65535) == payload, size
    finally:
        rx.close()
        tx.close()
        time.sleep(0.2)
        cap.stop()
    packets = _ipv4_frames(cap.packets())
    assert packets and {p[9] for p in packets} == {ESP}, "nothing but ESP from A"
    assert not any(CLEAR_MARK in p for p in packets), "no payload in clear"
    assert all(len(p) <= 1500 for p in packets)
    fragments = [p for p in packets if struct.unpack_from("!H", p, 6)[0] & 0x3FFF]
    # 1460: 2 fragments, 3000: 3, 8000: 6; every one with DF clear.
    assert len(fragments) >= 11, len(fragments)
    assert all(not p[6] & 0x40 for p in fragments)
    assert len({struct.unpack_from("!H", p, 4)[0] for p in fragments}) == 3
    after = a.query()["drops"]
    for reason in ("malformed", "mtu", "fragment_timeout", "fragment_malformed"):
        assert after.get(reason, 0) == before.get(reason, 0), (reason, after)


def test_df_set_datagrams_still_get_fragmentation_needed(pair: Pair, tmp_path: Path) -> None:
    """DF set: no fragmentation, ICMP "fragmentation needed" with the SA's inner MTU."""
    topo = pair.topo
    before = pair.a.sa(0x1001)["drops"].get("mtu", 0)
    cap = topo.a.ns.capture("ipsec0", tmp_path / "icmp.pcap", "icmp")
    with topo.a.ns.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # PROBE: DF set, and sent at the interface's MTU even if an earlier test (TCP)
        # already taught the kernel the path MTU.
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        s.connect((topo.b.v4, 9701))
        s.send(bytes(1472))

        def mtu() -> int:
            return int(s.getsockopt(socket.IPPROTO_IP, IP_MTU))

        assert wait_until(lambda: mtu() < 1500, 3)
        assert mtu() == INNER_MTU_V4
        assert wait_until(lambda: pair.a.sa(0x1001)["drops"].get("mtu", 0) == before + 1, 3)
    finally:
        s.close()
        time.sleep(0.2)
        cap.stop()
    errors = [f for f in cap.packets() if f[:1] == b"\x45"]  # the TUN has no link header
    assert errors, "an ICMP error into the TUN"
    assert (errors[-1][20], errors[-1][21]) == (3, 4)
    assert struct.unpack_from("!H", errors[-1], 26)[0] == INNER_MTU_V4


IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0


def test_big_ipv6_datagrams_go_whole_into_esp_then_in_our_fragments(
        pair: Pair, tmp_path: Path) -> None:
    """IPv6: the host fragments (RFC 8200 §4.5), the worker reassembles, ESP takes the whole.

    3000 and 8000 bytes do not fit the TUN: A's kernel cuts them, the worker puts
    them together, encapsulates the datagram whole and, as the originating host
    in transport mode, fragments the outer packet itself (a Fragment header in
    front of ESP).  1440 bytes fit the TUN but not the SA: the first is answered
    with packet-too-big (the host learns the path MTU and cuts the next ones),
    so it is sent until one arrives.  On the wire: ESP, in fragments, only.
    """
    topo, a = pair.topo, pair.a
    before = a.query()["drops"]
    cap = topo.b.ns.capture("eth0", tmp_path / "frag6.pcap", f"ip6 and src host {topo.a.v6}")
    with topo.b.ns.enter():
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with topo.a.ns.enter():
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind((topo.b.v6, 9702))
        tx.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
        for size in (3000, 8000, 1440):
            payload = ((CLEAR_MARK + bytes(range(256))) * (size // 276 + 1))[:size]
            got = b""
            for _ in range(3):
                tx.sendto(payload, (topo.b.v6, 9702))
                rx.settimeout(1.5)
                try:
                    got = rx.recv(65535)
                    break
                except TimeoutError:
                    continue
            assert got == payload, size
    finally:
        rx.close()
        tx.close()
        time.sleep(0.2)
        cap.stop()
    packets = [f[14:] for f in cap.packets() if struct.unpack_from("!H", f, 12)[0] == 0x86DD]
    assert packets and all(len(p) <= 1500 for p in packets)
    assert not any(CLEAR_MARK in p for p in packets), "no payload in clear"
    fragments = [p for p in packets if p[6] == 44]  # a Fragment header after the IPv6 header
    assert {p[6] for p in packets} <= {ESP, 44, ICMPV6}
    assert {p[40] for p in fragments} == {ESP}  # what they are fragments of: ESP
    # 3000: 3 fragments, 8000: 6, 1440: 2 (once the host cut it, ESP makes it too big).
    assert len(fragments) >= 11, len(fragments)
    after = a.query()["drops"]
    for reason in ("malformed", "fragment_timeout", "fragment_malformed"):
        assert after.get(reason, 0) == before.get(reason, 0), (reason, after)
    assert after.get("mtu", 0) - before.get("mtu", 0) <= 1  # the first 1440 only
