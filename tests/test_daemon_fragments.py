"""Fragmented ESP at a running gateway: the workers reassemble before they decrypt.

``A ── B`` (netns.host_to_host) with an ``ipsecd`` daemon on each side in
the HOWTO's transport mode (daemon_harness.transport_script, IPv4 and
IPv6, AES-GCM-16), and on B one more SA, ESP in UDP (RFC 3948) from A.
A's side of the link has an MTU of 1280, the path whose MTU is smaller
than the peer's ESP packets.  Our own datapath fragments its outer
packets in transport mode only (test_daemon_transport.py), for datagrams
without DF, so the fragmented ESP is made here: scapy (an ESP implementation we did not write) encrypts with the
SA's real key, scapy's ``fragment()`` (IPv4) or the small splitter below
(IPv6) cuts the ESP packet into fragments that fit A's MTU, and a raw
socket in A's namespace, with the daemons' routing mark so it skips A's
daemon, sends them to B.

* Whole datagrams come out: a UDP socket listening in B receives every
  inner datagram, fragments sent in order, reversed or shuffled, over IPv4
  and IPv6 and in UDP 4500, for SAs of both of B's two workers (SPI 0x1001
  is worker 1's, 0x1004 worker 0's: every worker receives every fragment,
  the other one must stay silent), and B counts no drop at all.
* Overlapping fragments (RFC 5722) deliver nothing and are counted as
  ``fragment_overlap``, every fragment of the datagram once.
* A datagram whose last fragment never comes is counted as
  ``fragment_timeout`` after the reassembly timeout, without any other
  fragment having to arrive.
"""

from __future__ import annotations

import random
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from daemon_harness import KEY_AB, Daemon, start, transport_script, wait_ready
from netns import HostToHost, Injector, Lab, host_to_host, needs_root, remove_stale, wait_until
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Packet, Raw

from workers.reassembly import DEFAULT_TIMEOUT

pytestmark = [pytest.mark.netns, needs_root()]

SO_MARK, MARK = 36, 1  # the daemons' default [datapath] mark: skip A's routing into its TUN
SPI_AB, SPI_UDP = 0x1001, 0x1004  # 0x1001 % 2 == 1, 0x1004 % 2 == 0 (two workers)
PORT = 6345  # B listens here for the inner UDP datagrams
SMALL_MTU = 1280


@dataclass
class Setup:
    topo: HostToHost
    a: Daemon
    b: Daemon
    inj: Injector
    sas: dict[str, ScapySA]  # "v4", "v6", "udp": scapy's side of B's inbound SAs
    rx: dict[int, socket.socket]  # B's listening UDP sockets by family


def _script(topo: HostToHost, local: str) -> str:
    a, b = topo.a, topo.b
    v4 = transport_script(a.v4, b.v4, local=a.v4 if local == "a" else b.v4)
    # The IPv6 SAs have the IPv4 ones' SPIs (the SAD key includes the destination).
    v6 = transport_script(a.v6, b.v6, local=a.v6 if local == "a" else b.v6)
    script = v4 + v6.replace("flush;\nspdflush;\n", "")
    if local == "b":  # ESP in UDP from A (RFC 3948), transport mode too
        script += (f"add {a.v4}[4500] {b.v4}[4500] esp-udp {SPI_UDP:#x} -m transport "
                   f"-E aes-gcm-16 {KEY_AB};\n")
    return script


def _scapy_sa(spi: int, nat_t: bool = False) -> ScapySA:
    sa = ScapySA(ESP, spi=spi, crypt_algo="AES-GCM",  # type: ignore[no-untyped-call]
                 crypt_key=bytes.fromhex(KEY_AB[2:]),
                 nat_t_header=UDP(sport=4500, dport=4500) if nat_t else None)
    sa.seq_num = 1 << 16  # ahead of anything A's daemon may have sent on the SA
    return sa


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    remove_stale()
    workdir = tmp_path_factory.mktemp("fragments")
    with Lab("fr") as lab:
        topo = host_to_host(lab)
        topo.a.ns.ip(f"link set eth0 mtu {SMALL_MTU}")
        a = start(topo.a.ns, workdir, "fr-a", outside=["eth0"], script=_script(topo, "a"),
                  wait=False)
        b = start(topo.b.ns, workdir, "fr-b", outside=["eth0"], script=_script(topo, "b"),
                  wait=False)
        inj = Injector(topo.a.ns)
        for sock in (inj.raw4, inj.raw6):
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
        rx: dict[int, socket.socket] = {}
        with topo.b.ns.enter():
            rx[4] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx[4].bind((topo.b.v4, PORT))
            rx[6] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            rx[6].bind((topo.b.v6, PORT))
        try:
            wait_ready(a, b)
            assert b.status()["workers"][1]["running"]
            sas = {"v4": _scapy_sa(SPI_AB), "v6": _scapy_sa(SPI_AB),
                   "udp": _scapy_sa(SPI_UDP, nat_t=True)}
            yield Setup(topo, a, b, inj, sas, rx)
        finally:
            inj.close()
            for s in rx.values():
                s.close()
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()
        assert "Traceback" not in b.log_text()


# --- making fragmented ESP ------------------------------------------------------------------


def _inner(setup: Setup, family: int, payload: bytes) -> Packet:
    t = setup.topo
    if family == 4:
        return IP(src=t.a.v4, dst=t.b.v4) / UDP(sport=40000, dport=PORT) / Raw(payload)
    return IPv6(src=t.a.v6, dst=t.b.v6) / UDP(sport=40000, dport=PORT) / Raw(payload)


def _esp(setup: Setup, kind: str, payload: bytes) -> bytes:
    """A whole ESP packet (IPv4 / IPv6 / IPv4 UDP 4500) carrying a UDP datagram to B."""
    family = 6 if kind == "v6" else 4
    return bytes(setup.sas[kind].encrypt(_inner(setup, family, payload)))  # type: ignore[no-untyped-call]


def _fragments4(packet: bytes, ident: int, size: int = SMALL_MTU - 20) -> list[bytes]:
    """scapy's RFC 791 fragmentation of an IPv4 packet, data ``size`` bytes per fragment."""
    p = IP(packet)
    p.id = ident
    del p.chksum
    return [bytes(f) for f in fragment(p, fragsize=size - size % 8)]


def _fragments6(packet: bytes, ident: int, size: int = SMALL_MTU - 48) -> list[bytes]:
    """RFC 8200 §4.5 fragments of an IPv6 packet without extension headers."""
    header, body = bytearray(packet[:40]), packet[40:]
    next_header = header[6]
    header[6] = 44
    out = []
    for off in range(0, len(body), size):
        data = body[off:off + size]
        more = off + size < len(body)
        struct.pack_into("!H", header, 4, 8 + len(data))
        out.append(bytes(header) + struct.pack("!BBHI", next_header, 0, off | more, ident) + data)
    return out


def _is_first(fragment: bytes) -> bool:
    if fragment[0] >> 4 == 4:
        return not struct.unpack_from("!H", fragment, 6)[0] & 0x1FFF
    return not struct.unpack_from("!H", fragment, 42)[0] & 0xFFF8


def _send(setup: Setup, packets: list[bytes]) -> None:
    t = setup.topo
    for p in packets:
        if p[0] >> 4 == 4:
            setup.inj.raw4.sendto(p, (t.b.v4, 0))
        else:
            setup.inj.raw6.sendto(p, (t.b.v6, 0))


def _received(sock: socket.socket, count: int, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count and select.select([sock], [], [], timeout)[0]:
        got.append(sock.recv(65535))
    return got


def _drops(d: Daemon) -> dict[str, int]:
    drops: dict[str, int] = d.status()["drops"]
    return drops


def _in_packets(d: Daemon, spi: int) -> int:
    st = d.query()
    assert st is not None
    return sum(sa["packets"] for sa in st["sas"] if sa["spi"] == spi and sa["direction"] == "in")


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["v4", "v6", "udp"])
def test_fragmented_esp_is_reassembled_and_delivered(setup: Setup, kind: str) -> None:
    family = 6 if kind == "v6" else 4
    spi = SPI_UDP if kind == "udp" else SPI_AB
    rng = random.Random(f"fragments-{kind}")
    before, packets_before = _drops(setup.b), _in_packets(setup.b, spi)
    sent = []
    # 1400 bytes: the ESP packet exceeds A's MTU (two fragments); 3000 bytes: three
    # fragments, and an inner packet larger than B's MTU as well.
    for i, (size, order) in enumerate([(1400, "in order"), (1400, "reversed"),
                                       (3000, "shuffled"), (3000, "reversed")]):
        payload = f"{kind} {order} {i} ".encode() + rng.randbytes(size)
        esp = _esp(setup, kind, payload)
        assert len(esp) > SMALL_MTU
        frags = (_fragments6(esp, 0x51000 + i) if family == 6
                 else _fragments4(esp, 0x5100 + i + (0x10 if kind == "udp" else 0)))
        assert len(frags) >= 2 and all(len(f) <= SMALL_MTU for f in frags)
        if order == "reversed":
            frags.reverse()
        elif order == "shuffled":
            rng.shuffle(frags)
            if _is_first(frags[0]):  # the SPI must not come first here
                frags.append(frags.pop(0))
        _send(setup, frags)
        sent.append(payload)
    got = _received(setup.rx[family], len(sent))
    assert sorted(got) == sorted(sent), (len(got), _drops(setup.b))
    assert wait_until(lambda: _in_packets(setup.b, spi) == packets_before + len(sent), 2)
    assert _drops(setup.b) == before  # nothing dropped: no unknown SPI from the other worker


@pytest.mark.parametrize("family", [4, 6])
def test_overlapping_fragments_are_dropped_and_counted(setup: Setup, family: int) -> None:
    kind = "v4" if family == 4 else "v6"
    before, packets_before = _drops(setup.b), _in_packets(setup.b, SPI_AB)
    payload = b"overlap " * 300
    esp = _esp(setup, kind, payload)
    frags = _fragments6(esp, 0x52000) if family == 6 else _fragments4(esp, 0x5200, 800)
    assert len(frags) >= 2
    # A copy of the second fragment moved 8 bytes back, over the first one's end (RFC 5722).
    rogue = bytearray(frags[1])
    if family == 4:
        flags = struct.unpack_from("!H", rogue, 6)[0]
        struct.pack_into("!H", rogue, 6, flags - 1)
        rogue[10:12] = b"\0\0"  # the kernel fills in the checksum (IP_HDRINCL)
    else:
        field = struct.unpack_from("!H", rogue, 42)[0]
        struct.pack_into("!H", rogue, 42, field - 8)
    sequence = [frags[0], bytes(rogue), *frags[1:]]
    _send(setup, sequence)
    assert _received(setup.rx[family], 1, timeout=1.0) == []

    def delta() -> dict[str, int]:
        now = _drops(setup.b)
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}

    wait_until(lambda: bool(delta()), 2)
    assert delta() == {"fragment_overlap": len(sequence)}
    assert _in_packets(setup.b, SPI_AB) == packets_before


def test_incomplete_datagram_times_out(setup: Setup) -> None:
    before = _drops(setup.b)
    frags = _fragments4(_esp(setup, "v4", b"never whole " * 200), 0x5300)
    _send(setup, frags[:-1])

    def timed_out() -> int:
        return _drops(setup.b).get("fragment_timeout", 0) - before.get("fragment_timeout", 0)

    # Counted by the worker's once-a-second check, no further fragment needed.
    assert wait_until(lambda: timed_out() > 0, DEFAULT_TIMEOUT + 3, 0.2)
    assert timed_out() == len(frags) - 1
    assert _received(setup.rx[4], 1, timeout=0.1) == []
    after = _drops(setup.b)
    assert {k for k in after if after[k] != before.get(k, 0)} == {"fragment_timeout"}
