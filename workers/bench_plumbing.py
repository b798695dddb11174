"""Microbenchmark of the datapath's Linux plumbing, in network namespaces.

    sudo .venv/bin/python -m workers.bench_plumbing [--seconds 1.5]

Measures, with 1400-byte packets between two namespaces joined by a veth:

* RX: a TPACKET_V3 ring draining frames that a sender in the other namespace
  pushes as fast as it can (its TX ring), alone and with an AES-GCM-128
  decrypt of every frame: the "minimal Python loop" the datapath benchmark
  compares itself against;
* TX: the three ways out of :mod:`workers.rings` -- TPACKET_V2 TX ring
  (``ring``), one sendmsg per packet (``packet``), raw IP sockets (``raw``);
* TUN: readinto a reused buffer (packets the kernel forwards into the TUN)
  and write (packets the kernel forwards out of the veth).

The sender and the receiver run as separate processes (one per core on a
2-vCPU machine); the veth's receive work is done in the sender's softirq, so
a receive figure is bounded by the sender's rate and the table says so.
Everything runs in namespaces made for the run and removed after it, with a
bound of about ``12 * seconds + 10`` s.  Figures vary by 10-20 % from run to
run on a shared 2-core VM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from workers.rings import ETH_P_IP, RingConfig, RingTx, RxRing, TxSender
from workers.tun import TunQueue, add_route, configure

PACKET = 1400
SPI = 0x1000
KEY = bytes(range(16))
SALT = b"salt"


def _esp_frame(src: str, dst: str, seq: int) -> bytes:
    """An IPv4 ESP packet with a valid AES-GCM-128 payload (RFC 4106 layout)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = seq.to_bytes(8, "big")
    header = struct.pack("!II", SPI, seq)
    body = AESGCM(KEY).encrypt(SALT + iv, bytes(PACKET - 20 - 8 - 8 - 16), header)
    payload = header + iv + body
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 50, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def _udp_packet(src: str, dst: str) -> bytes:
    data = bytes(PACKET - 28)
    udp = struct.pack("!HHHH", 1234, 9, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    total = sum(struct.unpack("!10H", ip))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:] + udp


# --- the pieces that run in the namespaces (forked children) --------------------------


def blast_ring(ifname: str, header: bytes, packet: bytes, seconds: float) -> float:
    """Send ``packet`` behind ``header`` from a TX ring for ``seconds``; packets/s."""
    tx = RingTx(ifname)
    sent, batch = 0, 64
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(batch):
            sent += tx.send(header, packet)
        tx.flush()
    rate = sent / (time.perf_counter() - t0)
    tx.close()
    return rate


def drain_ring(ifname: str, seconds: float) -> tuple[float, int, int]:
    """Receive for up to ``seconds`` after the first packet; (packets/s, received, drops)."""
    ring = RxRing(ifname, protocol=ETH_P_IP, config=RingConfig())
    count = 0
    first = last = 0.0
    deadline = time.perf_counter() + seconds + 5
    try:
        while time.perf_counter() < deadline:
            got = 0
            if ring.wait(0.3):
                got = _drain_once(ring, None, bytearray())
            now = time.perf_counter()
            if got:
                if not count:
                    first = now
                count += got
                last = now
            elif count:
                break  # the sender has stopped
        stats = ring.read_stats()
    finally:
        ring.close()
    return (count / (last - first) if last > first else 0.0), count, stats.drops


def drain_cycles(sender_ns: Any, receiver_ns: Any, header: bytes, packet: bytes,
                 seconds: float, mode: str, per_fill: int = 8000) -> float:
    """Receiver-bound rate: fill the ring (or TUN queue) while nobody reads, then time the drain.

    ``mode``: "ring", "ring+gcm" (RX ring, optionally decrypting), "tun" or
    "tun-read" (TUN ``bench0`` in the receiver namespace, readinto or os.read).
    The sender lives in the same process (its socket made in the sender's
    namespace), so filling and draining never overlap.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(KEY)
    out = bytearray(PACKET - 20 - 8 - 8 - 16)  # decrypt_into wants the exact plaintext size
    with sender_ns.enter():
        tx = RingTx("eth0", frame_count=512)
    with receiver_ns.enter():
        ring = RxRing("eth0", protocol=ETH_P_IP) if mode.startswith("ring") else None
        q = TunQueue.open("bench0") if mode.startswith("tun") else None
    # per_fill stays below both the ring's (~11,500 frames) and the TUN queue's capacity
    buf = memoryview(bytearray(2048))[64:]
    drained, busy = 0, 0.0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            for _ in range(per_fill):
                tx.send(header, packet)
            tx.flush(wait=True)
            time.sleep(0.01)  # let the retire timer close the last block
            t0 = time.perf_counter()
            n = 0
            if ring is not None:
                n = _drain_once(ring, aead if mode == "ring+gcm" else None, out)
            elif q is not None and mode == "tun":
                read = q.readinto
                while read(buf) is not None:
                    n += 1
            elif q is not None:
                fd = q.fd
                try:
                    while True:
                        os.read(fd, 2048)
                        n += 1
                except BlockingIOError:
                    pass
            busy += time.perf_counter() - t0
            drained += n
    finally:
        tx.close()
        if ring is not None:
            ring.close()
        if q is not None:
            q.close()
    return drained / busy if busy else 0.0


def _drain_once(ring: RxRing, aead: Any, out: bytearray) -> int:
    """Everything ready in the ring; the packet views die with this frame."""
    n = 0
    if aead is not None:
        for p in ring.batch(0):
            # ESP: SPI, seq (the AAD, RFC 4106 §5), IV, ciphertext || tag
            aead.decrypt_into(SALT + p[28:36], p[36:], p[20:28], out)
            n += 1
    else:
        for _ in ring.batch(0):
            n += 1
    return n


def send_method(ifname: str, method: str, packet: bytes, seconds: float) -> tuple[float, int]:
    """TxSender throughput for ``seconds``; (packets/s, fallbacks)."""
    sender = TxSender(ifname, method=method)  # type: ignore[arg-type]
    sender.send(packet)  # resolves the neighbour through the kernel
    sender.flush()
    time.sleep(0.2)
    if sender.next_hops is not None:  # look the neighbour up again, now resolved
        sender.next_hops.expire(time.monotonic() + 10)
    sent, batch = 0, 64
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(batch):
            sent += sender.send(packet)
        sender.flush()
    rate = sent / (time.perf_counter() - t0)
    fallback = sender.stats.fallback
    sender.close()
    return rate, fallback


def tun_read(name: str, seconds: float, use_readinto: bool) -> float:
    """Read the TUN queue for ``seconds`` after the first packet; packets/s."""
    import select

    q = TunQueue.open(name)
    buf = memoryview(bytearray(2048))[64:]
    poller = select.poll()
    poller.register(q.fd, select.POLLIN)
    count = 0
    first = last = 0.0
    deadline = time.perf_counter() + seconds + 5
    read = q.readinto if use_readinto else None
    try:
        while time.perf_counter() < deadline:
            if not poller.poll(300):
                if count:
                    break
                continue
            got = 0
            if read is not None:
                while read(buf) is not None:
                    got += 1
            else:
                try:
                    while True:
                        os.read(q.fd, 2048)
                        got += 1
                except BlockingIOError:
                    pass
            now = time.perf_counter()
            if not count:
                first = now
            count += got
            last = now
    finally:
        q.close()
    return count / (last - first) if last > first else 0.0


def tun_write(name: str, packet: bytes, seconds: float) -> float:
    """Write ``packet`` into the TUN for ``seconds``; packets/s."""
    q = TunQueue.open(name, nonblocking=False)
    sent = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    write = q.write
    while time.perf_counter() < end:
        for _ in range(64):
            write(packet)
        sent += 64
    rate = sent / (time.perf_counter() - t0)
    q.close()
    return rate


def _bare_decrypt_rate(seconds: float) -> float:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(KEY)
    nonce, aad = SALT + bytes(8), bytes(8)
    data = aead.encrypt(nonce, bytes(PACKET - 52), aad)
    out = bytearray(PACKET - 52)
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            aead.decrypt_into(nonce, data, aad, out)
        n += 1000
    return n / (time.perf_counter() - t0)


# --- driver ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each run")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 0.2), 3.0)  # keeps the whole run under a minute
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    # The test harness (namespaces with guaranteed removal) lives with the tests.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    netns: Any = importlib.import_module("netns")
    Lab, host_to_host = netns.Lab, netns.host_to_host

    from ipsecd.nft import EspDropTable

    rows: list[tuple[str, str, str]] = []

    def row(what: str, rate: float, note: str = "") -> None:
        rows.append((what, f"{rate / 1e6:6.3f}", note))
        print(f"  {what:<44} {rate / 1e6:6.3f} M/s  {note}", flush=True)

    started = time.monotonic()
    with Lab("-bench") as lab:
        h = host_to_host(lab)
        a, b = h.a.ns, h.b.ns
        EspDropTable("bench", netns=b.name).install()  # ESP at B: no ICMP back
        header = b.mac("eth0") + a.mac("eth0") + b"\x08\x00"
        frame = _esp_frame(h.a.v4, h.b.v4, 1)

        print(f"packets of {PACKET} bytes, {seconds} s per run", flush=True)
        rx = b.spawn(drain_ring, "eth0", seconds)
        time.sleep(0.3)
        sent = a.call(blast_ring, "eth0", header, frame, seconds, timeout=seconds + 10)
        rate, count, drops = rx.result(seconds + 10)
        row("RX ring live (sender-bound)", rate,
            f"sender {sent / 1e6:.3f} M/s, {drops} ring drops of {count + drops}")
        row("bare AES-GCM-128 decrypt_into (hot buffer)", _bare_decrypt_rate(seconds / 2),
            "the AEAD alone: the ceiling of one worker")
        for mode, what in (("ring", "RX ring drain (receiver-bound)"),
                           ("ring+gcm", "RX ring drain + AES-GCM-128 decrypt_into")):
            row(what, a.call(drain_cycles, a, b, header, frame, seconds, mode,
                             timeout=seconds + 20), "64 x 256 KiB blocks, 8000 per fill")

        call: Callable[..., Any] = a.call
        for method, label in (("ring", "(c) TX ring (TPACKET_V2) + flush per 64"),
                              ("packet", "(a) AF_PACKET send per packet"),
                              ("raw", "(b) raw IP socket (kernel routes)")):
            rate, fallback = call(send_method, "eth0", method, frame, seconds,
                                  timeout=seconds + 10)
            row(f"TX {label}", rate, f"{fallback} via the kernel path")

        # TUN in B: A's frames to 203.0.113.0/24 are forwarded into it; what is
        # written to it goes to 198.51.100.0/24, routed back out of the veth.
        with b.enter():
            control = TunQueue.open("bench0")
            control.detach()
            configure("bench0", addresses=["10.255.0.1/30"])
            add_route("bench0", "203.0.113.0/24")
        b.sysctl("net.ipv4.ip_forward", 1)
        b.ip(f"route add 198.51.100.0/24 via {h.a.v4}")
        b.ip("link set bench0 txqueuelen 10000")  # room for a whole fill
        to_tun = _udp_packet(h.a.v4, "203.0.113.9")
        reader = b.spawn(tun_read, "bench0", seconds, True)
        time.sleep(0.3)
        sent = a.call(blast_ring, "eth0", header, to_tun, seconds, timeout=seconds + 10)
        row("TUN readinto live (sender-bound)", reader.result(seconds + 10),
            f"sender {sent / 1e6:.3f} M/s")
        for mode, what in (("tun", "TUN drain, readinto a reused buffer"),
                           ("tun-read", "TUN drain, os.read")):
            row(what, a.call(drain_cycles, a, b, header, to_tun, seconds, mode,
                             timeout=seconds + 20), "receiver-bound")
        rate = b.call(tun_write, "bench0", _udp_packet("203.0.113.9", "198.51.100.7"),
                      seconds, timeout=seconds + 10)
        row("TUN write (forwarded out of the veth)", rate)
        control.close()

    print(f"\n{'measurement':<48} {'M pkt/s':>8}  note")
    for what, rate_text, note in rows:
        print(f"{what:<48} {rate_text:>8}  {note}")
    print(f"(total {time.monotonic() - started:.1f} s; 2 shared vCPUs: expect 10-20 % variance)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
