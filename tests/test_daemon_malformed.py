"""Hostile and broken ESP at a running gateway (the HOWTO's tunnel picture, gwB under test).

* No ICMP protocol-unreachable (IPv6: parameter problem, unrecognized next
  header) leaves the gateway while ESP arrives - valid, with an unknown
  SPI, or garbage - over IPv4 and IPv6, nor port-unreachable for ESP in
  UDP 4500.  A namespace without a daemon, sent the same, does answer:
  the capture would have seen it.
* A few hundred each of truncated, unknown-SPI, bit-flipped and replayed
  ESP are counted by ``ipsecd status --json`` under exactly their reason
  (``runt``, ``unknown_spi``, ``icv``, ``replay``; ESP too short for its own
  header, even for an SPI: ``malformed``), the workers are not restarted, and
  real traffic still goes through.

The bit-flipped packets are made by scapy (an implementation we did not
write) with the SA's real key and sequence numbers ahead of the window, so
only the ICV can reject them; the replays are ESP packets captured on the
wire and sent again.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import KEY_AB, Daemon, Gateways, tunnel_pair
from netns import (
    Injector,
    needs_root,
    ping,
    wait_until,
)
from scapy.layers.inet import ICMP, IP
from scapy.layers.ipsec import ESP as ScapyESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

pytestmark = [pytest.mark.netns, needs_root()]

ESP, ICMP_PROTO, ICMPV6 = 50, 1, 58
SPI_AB = 0x2001  # gwA -> gwB, IPv4 WAN (daemon_harness.tunnel_script)
N = 300  # packets of each kind


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("malformed"), "ml") as gateways:
        yield gateways


def _icmp_errors(frames: list[bytes], src4: str, src6: str) -> list[tuple[int, int, int]]:
    """(IP version, type, code) of the ICMP / ICMPv6 errors sent by ``src4`` / ``src6``."""
    import socket

    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0800 and f[14 + 9] == ICMP_PROTO:
            if socket.inet_ntoa(f[26:30]) == src4:
                at = 14 + (f[14] & 15) * 4
                if f[at] in (3, 11, 12):
                    out.append((4, f[at], f[at + 1]))
        elif (ethertype == 0x86DD and f[14 + 6] == ICMPV6 and f[54] < 128
              and socket.inet_ntop(socket.AF_INET6, f[22:38]) == src6):
            out.append((6, f[54], f[55]))
    return out


def _garbage(rng: random.Random, n: int) -> list[bytes]:
    """ESP payloads of every odd shape: random bytes of 0..120 bytes."""
    return [rng.randbytes(rng.randrange(0, 121)) for _ in range(n)]


def test_no_protocol_unreachable_leaves_the_gateway(gws: Gateways, tmp_path: Path) -> None:
    topo = gws.topo
    ga, gb = topo.gw_a_wan, topo.gw_b_wan
    rng = random.Random(4303)
    cap = gb.ns.capture("wan0", tmp_path / "gwb.pcap", "icmp or icmp6")
    inj = Injector(ga.ns)
    try:
        # Valid ESP: real traffic through the tunnel, both families.
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
        assert ping(topo.net_a.ns, topo.net_b.v6, count=3, interval=0.05) == 3
        for i in range(50):
            bad_spi = struct.pack("!II", 0x0BAD0000 + i, 1) + bytes(48)
            inj.ip4(ga.v4, gb.v4, ESP, bad_spi)
            inj.ip6(ga.v6, gb.v6, ESP, bad_spi)
        for junk in _garbage(rng, 100):
            inj.ip4(ga.v4, gb.v4, ESP, junk)
            inj.ip6(ga.v6, gb.v6, ESP, junk)
        for i in range(20):  # ESP in UDP (RFC 3948) with a non-zero SPI: not IKE, not ours
            inj.udp(gb.v4, 4500, struct.pack("!II", 0x0BAD1000 + i, 1) + bytes(40))
            inj.udp(gb.v6, 4500, struct.pack("!II", 0x0BAD1000 + i, 1) + bytes(40))
        assert ping(topo.net_a.ns, topo.net_b.v4, count=1) == 1
    finally:
        inj.close()
    cap.stop()
    errors = _icmp_errors(cap.packets(), gb.v4, gb.v6)
    assert (4, 3, 2) not in errors, errors  # protocol unreachable
    assert (4, 3, 3) not in errors, errors  # port unreachable (ESP in UDP)
    assert (6, 4, 1) not in errors, errors  # parameter problem: unrecognized next header
    assert (6, 1, 4) not in errors, errors  # port unreachable
    assert not errors, errors

    # The control: netA has no daemon; sent the same, it answers, and the capture sees it.
    cap = topo.gw_a_lan.ns.capture("lan0", tmp_path / "neta.pcap", "icmp or icmp6")
    inj = Injector(topo.gw_a_lan.ns)
    try:
        inj.ip4(topo.gw_a_lan.v4, topo.net_a.v4, ESP, struct.pack("!II", 0x0BAD0000, 1))
        inj.ip6(topo.gw_a_lan.v6, topo.net_a.v6, ESP, struct.pack("!II", 0x0BAD0000, 1))
        wait_until(lambda: len(cap.packets()) >= 2, 2)
    finally:
        inj.close()
    cap.stop()
    control = _icmp_errors(cap.packets(), topo.net_a.v4, topo.net_a.v6)
    assert (4, 3, 2) in control and (6, 4, 1) in control, control


def _drops(d: Daemon) -> dict[str, int]:
    st = d.status()  # ipsecd status --json, through the CLI
    drops: dict[str, int] = st["drops"]
    return drops


def test_malformed_esp_is_counted_by_reason(gws: Gateways, tmp_path: Path) -> None:
    topo, b = gws.topo, gws.b
    ga, gb = topo.gw_a_wan, topo.gw_b_wan
    rng = random.Random(2406)
    st = b.status()
    pids, before = [w["pid"] for w in st["workers"]], st["drops"]
    ring_before = sum(w["ring_drops"] for w in st["workers"])

    # Real ESP of SA 0x2001 on the wire, to replay later.
    cap = ga.ns.capture("wan0", tmp_path / "esp.pcap", f"ip proto 50 and dst host {gb.v4}")
    assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    cap.stop()
    captured = [f[14 + 20:] for f in cap.packets()]
    assert len(captured) == 3 and all(p[:4] == struct.pack("!I", SPI_AB) for p in captured)

    # Valid packets for SA 0x2001 from scapy, sequence numbers far ahead, one bit flipped
    # after the ESP header: only the ICV can tell.
    sa = ScapySA(ScapyESP, spi=SPI_AB, crypt_algo="AES-GCM",  # type: ignore[no-untyped-call]
                 crypt_key=bytes.fromhex(KEY_AB[2:]),
                 tunnel_header=IP(src=ga.v4, dst=gb.v4))
    sa.seq_num = 1 << 20
    flipped = []
    for i in range(N):
        inner = IP(src=topo.net_a.v4, dst=topo.net_b.v4) / ICMP(id=7, seq=i) / Raw(b"f" * 24)
        esp = bytearray(bytes(sa.encrypt(inner))[20:])  # type: ignore[no-untyped-call]
        bit = rng.randrange(8 * 8, 8 * len(esp))
        esp[bit // 8] ^= 1 << (bit % 8)
        flipped.append(bytes(esp))

    inj = Injector(ga.ns)
    try:
        for i in range(N):
            # Truncated: the SA's SPI, a sequence number, and less than IV + ICV.
            inj.ip4(ga.v4, gb.v4, ESP, struct.pack("!II", SPI_AB, (1 << 21) + i)
                    + rng.randbytes(rng.randrange(0, 20)))
            # Unknown SPI (never 0..255, reserved: RFC 4303 §2.1).
            inj.ip4(ga.v4, gb.v4, ESP, struct.pack("!II", rng.randrange(0x10000, 1 << 32), 1)
                    + rng.randbytes(rng.randrange(16, 100)))
            inj.ip4(ga.v4, gb.v4, ESP, flipped[i])
            inj.ip4(ga.v4, gb.v4, ESP, captured[i % len(captured)])
        for i in range(30):  # no room for SPI and sequence number (0-7 bytes)
            inj.ip4(ga.v4, gb.v4, ESP, (struct.pack("!I", SPI_AB) + bytes(4))[:i % 8])
    finally:
        inj.close()

    expected = {"runt": N, "unknown_spi": N, "icv": N, "replay": N, "malformed": 30}

    def delta() -> dict[str, int]:
        now = b.query()["drops"]
        return {k: now.get(k, 0) - before.get(k, 0) for k in expected}

    wait_until(lambda: all(delta()[k] >= v for k, v in expected.items()), 5)
    after = b.status()
    ring_drops = sum(w["ring_drops"] for w in after["workers"]) - ring_before
    got = {k: after["drops"].get(k, 0) - before.get(k, 0) for k in expected}
    assert ring_drops == 0
    assert got == expected
    # Nothing else was counted, and the SA kept its own count of what hit it.
    assert set(after["drops"]) - set(expected) == set(before) - set(expected)
    sa_drops = next(s for s in after["sas"] if s["spi"] == SPI_AB and s["direction"] == "in")
    assert {k: sa_drops["drops"].get(k, 0) for k in ("runt", "icv", "replay")} == {
        "runt": N, "icv": N, "replay": N}

    # The workers survived, and the tunnel still works (the flipped packets, far
    # ahead, did not move the replay window: they failed their ICV first).
    assert [w["pid"] for w in after["workers"]] == pids
    assert all(w["restarts"] == 0 and w["running"] for w in after["workers"])
    assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    assert b.log_text().count("Traceback") == 0
    assert os.path.exists(b.socket)
