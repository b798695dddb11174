"""The traffic matrix of issue #3: {transport, tunnel} x {AES-GCM, AES-CBC + HMAC-SHA256} x
{IPv4, IPv6}, between two ``ipsecd run`` daemons configured with the HOWTO's setkey scripts.

Each cell: a ping and a bounded TCP transfer (netns.tcp_transfer, every
byte counted at the receiver) succeed, the WAN capture holds only ESP (plus
ARP and IPv6 neighbour discovery), and no payload byte crosses it in clear:
the pings carry a recognisable canary and the transfer sends iperf3's
repeating ``0123456789`` pattern; neither appears anywhere
in the WAN capture, while both appear in a capture on the plaintext side
(which proves the search can find them).

Already covered elsewhere, with AES-GCM only: ping in both modes and both
families, TCP in tunnel mode (IPv4, IPv6) and transport mode (IPv4)
(test_daemon_transport.py, test_daemon_tunnel.py).  New here: every AES-CBC
+ HMAC-SHA256 cell, TCP over IPv6 in transport mode, and the no-cleartext
check in every cell (the AES-GCM cells run again for that one).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_harness import Daemon, start, wait_ready
from netns import (
    Lab,
    Netns,
    host_to_host,
    needs_root,
    ping,
    remove_stale,
    site_to_site,
    tcp_transfer,
    wait_until,
)

pytestmark = [pytest.mark.netns, needs_root()]

ESP, ICMPV6, HOPOPT = 50, 58, 0
ND = {130, 131, 132, 133, 134, 135, 136, 143}
CANARY = b"IPSECD-CLEARTEXT-CANARY-7f3a9c"
IPERF_PATTERN = b"0123456789" * 3  # tcp_transfer's payload, iperf3's --repeating-payload

# Manual keys per algorithm (setkey's -E / -A arguments), one set per direction.
ALGORITHMS = {
    "aes-gcm": ("-E aes-gcm-16 0x6b1e0c0d6f9a1c2e3d4f5a6b7c8d9e0f10213243",
                "-E aes-gcm-16 0x0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"),
    "aes-cbc-sha256": (
        "-E aes-cbc 0x8e73b0f7da0e6452c810f32b809079e5 "
        "-A hmac-sha256 0x603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        "-E aes-cbc 0x2b7e151628aed2a6abf7158809cf4f3c "
        "-A hmac-sha256 0xf8ae7a3c9bd1e08f2d0c63b4a5e1970f4b2d8c6e1a3f5709b8d2e4c6a1f3b5d7"),
}
CELLS = [(mode, alg) for mode in ("transport", "tunnel") for alg in ALGORITHMS]


@dataclass
class Cell:
    mode: str
    alg: str
    a: Daemon
    b: Daemon
    # (namespace, interface) of the WAN capture and of the plaintext-side capture,
    # and (source namespace, destination address) per family.
    wan: tuple[Netns, str]
    clear: tuple[Netns, str]
    paths: dict[int, tuple[Netns, Netns, str]]


def howto_script(mode: str, alg: str, side: str, wans: list[tuple[str, str]],
                 sites: list[tuple[str, str]]) -> str:
    """The HOWTO's setkey script for ``side`` ("a"/"b"): per family, an SA pair between the
    WAN addresses and the two policies (transport: the hosts themselves; tunnel: the sites)."""
    ab, ba = ALGORITHMS[alg]
    lines = ["flush;", "spdflush;"]
    for n, ((ga, gb), (sa, sb)) in enumerate(zip(wans, sites, strict=True)):
        spi = 0x4001 + 0x100 * n
        lines += [f"add {ga} {gb} esp {spi:#x} -m {mode} {ab};",
                  f"add {gb} {ga} esp {spi + 1:#x} -m {mode} {ba};"]
        local, peer, lg, pg = (sa, sb, ga, gb) if side == "a" else (sb, sa, gb, ga)
        req = "esp/transport//require" if mode == "transport" else None
        lines += [f"spdadd {local} {peer} any -P out ipsec "
                  f"{req or f'esp/tunnel/{lg}-{pg}/require'};",
                  f"spdadd {peer} {local} any -P in ipsec "
                  f"{req or f'esp/tunnel/{pg}-{lg}/require'};"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=CELLS, ids=[f"{m}-{a}" for m, a in CELLS])
def cell(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    mode, alg = request.param
    remove_stale()
    workdir = tmp_path_factory.mktemp(f"matrix-{mode}-{alg}")
    with Lab("mx") as lab:
        if mode == "transport":
            h = host_to_host(lab)
            wans = [(h.a.v4, h.b.v4), (h.a.v6, h.b.v6)]
            sites = [(f"{h.a.v4}/32", f"{h.b.v4}/32"), (f"{h.a.v6}/128", f"{h.b.v6}/128")]
            a_ns, b_ns, outside = h.a.ns, h.b.ns, "eth0"
            wan, clear = (h.a.ns, "eth0"), (h.a.ns, "ipsec0")
            paths = {4: (h.a.ns, h.b.ns, h.b.v4), 6: (h.a.ns, h.b.ns, h.b.v6)}
        else:
            t = site_to_site(lab, routed=False)
            wans = [(t.gw_a_wan.v4, t.gw_b_wan.v4), (t.gw_a_wan.v6, t.gw_b_wan.v6)]
            sites = list(zip(t.site_a, t.site_b, strict=True))
            a_ns, b_ns, outside = t.gw_a_wan.ns, t.gw_b_wan.ns, "wan0"
            wan, clear = (t.gw_a_wan.ns, "wan0"), (t.net_a.ns, "eth0")
            paths = {4: (t.net_a.ns, t.net_b.ns, t.net_b.v4),
                     6: (t.net_a.ns, t.net_b.ns, t.net_b.v6)}
        name = f"mx-{mode[:2]}-{'gcm' if alg == 'aes-gcm' else 'cbc'}"
        a = start(a_ns, workdir, name + "-a", outside=[outside], wait=False,
                  script=howto_script(mode, alg, "a", wans, sites))
        b = start(b_ns, workdir, name + "-b", outside=[outside], wait=False,
                  script=howto_script(mode, alg, "b", wans, sites))
        try:
            wait_ready(a, b)
            yield Cell(mode, alg, a, b, wan, clear, paths)
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()


def _not_esp(frames: list[bytes]) -> list[bytes]:
    """The frames that are neither ESP, ARP nor IPv6 neighbour discovery / MLD."""
    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0806:
            continue
        if ethertype == 0x0800 and f[14 + 9] == ESP:
            continue
        if ethertype == 0x86DD:
            nh = f[14 + 6]
            if nh == ESP or (nh == ICMPV6 and f[54] in ND):
                continue
            if nh == HOPOPT and f[54] == ICMPV6 and f[54 + (f[55] + 1) * 8] in ND:
                continue
        out.append(f)
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_ping_and_tcp_with_nothing_in_clear(cell: Cell, family: int, tmp_path: Path) -> None:
    src, dst_ns, dst = cell.paths[family]
    wan_cap = cell.wan[0].capture(cell.wan[1], tmp_path / "wan.pcap")
    clear_cap = cell.clear[0].capture(cell.clear[1], tmp_path / "clear.pcap")
    try:
        assert ping(src, dst, count=3, interval=0.1, payload=CANARY * 2) == 3
        moved = tcp_transfer(src, dst_ns, dst, size=3 << 20)
    finally:
        wan_cap.stop()
        clear_cap.stop()
    received = moved.received
    assert received == 3 << 20

    wan_bytes = (tmp_path / "wan.pcap").read_bytes()
    clear_bytes = (tmp_path / "clear.pcap").read_bytes()
    # The patterns are there to be found in plaintext ...
    assert CANARY in clear_bytes and IPERF_PATTERN in clear_bytes
    # ... and not one of them crossed the WAN in clear.
    assert CANARY not in wan_bytes
    assert IPERF_PATTERN not in wan_bytes
    frames = wan_cap.packets()
    esp = [f for f in frames if (f[23] if f[12:14] == b"\x08\x00" else f[20]) == ESP]
    assert len(esp) >= 100, len(esp)  # the transfer went over ESP (captures may miss some)
    assert not _not_esp(frames), [f[:60].hex() for f in _not_esp(frames)[:3]]

    # The SA pair of this family carried it, with this cell's algorithms and mode.
    spi = 0x4001 if family == 4 else 0x4101
    sa = cell.a.sa(spi)
    assert sa["direction"] == "out" and sa["mode"] == cell.mode
    # What the receiver counted went through this SA pair (its byte counts include headers).
    assert wait_until(lambda: cell.b.sa(spi)["bytes"] > received, 3)
    assert cell.a.sa(spi)["bytes"] > received
    expected = ("aes_gcm_16",) if cell.alg == "aes-gcm" else ("aes_cbc", "hmac_sha2_256_128")
    assert all(word in sa["algorithms"] for word in expected), sa["algorithms"]
    assert not cell.b.sa(spi)["drops"], cell.b.sa(spi)["drops"]
