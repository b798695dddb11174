"""Faults and bad input on a running tunnel: killed workers, lifetimes, a flood of garbage.

The gateways of the HOWTO's tunnel picture (as in test_daemon_tunnel.py),
started once for the module.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import (
    KEY_AB,
    KEY_BA,
    Gateways,
    start,
    transport_script,
    tunnel_pair,
)
from netns import (
    Injector,
    needs_root,
    ping,
    wait_until,
)

pytestmark = [pytest.mark.netns, needs_root()]

ESP = 50
PORT = 7000
FLOWS = 8
RATE = 1500  # datagrams per second, all flows together


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with tunnel_pair(tmp_path_factory.mktemp("faults"), "fa") as gateways:
        yield gateways


def _send(dst: str, seconds: float) -> int:
    """Datagrams from FLOWS source ports at RATE per second: (flow, number) in each."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(FLOWS)]
    sent = 0
    start_t = time.monotonic()
    while (now := time.monotonic()) - start_t < seconds:
        due = int((now - start_t) * RATE)
        while sent < due:
            flow = sent % FLOWS
            socks[flow].sendto(struct.pack("!II", flow, sent), (dst, PORT))
            sent += 1
        time.sleep(0.001)
    for s in socks:
        s.close()
    return sent


def _receive(bind: str, seconds: float) -> list[tuple[float, int, int]]:
    """(arrival time, flow, number) of each datagram received within ``seconds``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, PORT))
    s.settimeout(0.1)
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = s.recv(64)
        except TimeoutError:
            continue
        flow, n = struct.unpack("!II", data[:8])
        out.append((time.monotonic(), flow, n))
    s.close()
    return out


def _esp_seqs(frames: list[bytes]) -> list[tuple[int, int]]:
    out = []
    for f in frames:
        if struct.unpack_from("!H", f, 12)[0] == 0x0800 and f[23] == ESP:
            ihl = (f[14] & 15) * 4
            out.append(struct.unpack_from("!II", f, 14 + ihl))
    return out


def test_killed_workers_are_restarted_without_reusing_sequence_numbers(
        gws: Gateways, tmp_path: Path) -> None:
    topo, a, b = gws.topo, gws.a, gws.b
    sas_before = sorted(s["spi"] for s in a.query()["sas"])
    sent_on_sa_before = a.sa(0x2001)["packets"]
    replays_before = b.query()["drops"].get("replay", 0)
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap", "ip proto 50")
    receiver = topo.net_b.ns.spawn(_receive, topo.net_b.v4, 4.5)
    time.sleep(0.2)
    sender = topo.net_a.ns.spawn(_send, topo.net_b.v4, 4.0)
    time.sleep(1.0)
    # Both of gwA's workers really encrypt on the one outbound SA (the TUN
    # spreads the flows over its queues), so the sequence numbers are shared.
    out_by_worker = [w["packets_out"] for w in a.query()["workers"]]
    assert all(n > 0 for n in out_by_worker), out_by_worker
    # Kill both of gwA's workers (both encrypt on SA 0x2001) one after the
    # other, and the gwB worker that owns the inbound SA (0x2001 % 2 == 1).
    killed_at = time.monotonic()
    pids_a = a.worker_pids()
    pid_b = b.worker_pids()[0x2001 % 2]
    os.kill(pids_a[0], signal.SIGKILL)
    os.kill(pid_b, signal.SIGKILL)
    time.sleep(1.0)
    os.kill(pids_a[1], signal.SIGKILL)
    sent = sender.result(10)
    got = receiver.result(10)
    cap.stop()

    # Restarted, counted, and every SA still there.
    st_a, st_b = a.query(), b.query()
    assert [w["restarts"] for w in st_a["workers"]] == [1, 1]
    assert sum(w["restarts"] for w in st_b["workers"]) == 1
    assert all(w["running"] for w in st_a["workers"] + st_b["workers"])
    assert sorted(s["spi"] for s in st_a["sas"]) == sas_before
    assert set(a.worker_pids()).isdisjoint(pids_a)

    # Traffic resumed within a second of each kill: no flow was silent longer.
    assert len(got) > sent * 0.8, (len(got), sent)
    for flow in range(FLOWS):
        times = [t for t, f, _ in got if f == flow]
        assert times and times[-1] > killed_at + 1.5, f"flow {flow} did not resume"
        gaps = [b2 - b1 for b1, b2 in itertools.pairwise(times)]
        assert max(gaps) < 1.0, f"flow {flow} silent for {max(gaps):.2f} s"

    # No sequence number was used twice on the SA, whatever worker sent it.
    seqs = [seq for spi, seq in _esp_seqs(cap.packets()) if spi == 0x2001]
    assert len(seqs) > sent * 0.8
    assert len(set(seqs)) == len(seqs), "a sequence number was reused"
    # The capture saw (nearly) every packet the SA sent, so it could not have
    # missed a duplicate wholesale; and the receiver's window dropped none of
    # the interleaved numbers from two workers as a replay.
    # (tcpdump itself may lose packets on a loaded machine: those it reports are
    # the capture's, not the SA's.)
    sent_on_sa = a.sa(0x2001)["packets"] - sent_on_sa_before
    assert len(seqs) + cap.kernel_drops >= 0.98 * sent_on_sa, (
        len(seqs), cap.kernel_drops, sent_on_sa)
    assert b.query()["drops"].get("replay", 0) == replays_before


def test_sighup_reapplies_the_script_and_sequence_numbers_go_on(gws: Gateways) -> None:
    """The script starts with ``flush;``: the same SAs come back in new slots, and the
    outbound one continues its sequence numbers instead of starting again at 1."""
    a, topo = gws.a, gws.topo
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2) == 2
    before = a.sa(0x2001)
    assert before["seq"] >= 2
    a.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: a.sa(0x2001)["created"] != before["created"], 3)
    after = a.sa(0x2001)
    assert after["seq"] >= before["seq"] and after["packets"] == 0
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2) == 2
    assert a.sa(0x2001)["seq"] >= before["seq"] + 2
    assert "SIGHUP: reloading" in a.log_text()


def test_lifetimes_soft_then_hard(gws: Gateways) -> None:
    topo, a, b = gws.topo, gws.a, gws.b
    ga, gb = topo.gw_a_wan.v4, topo.gw_b_wan.v4
    expired = a.query()["expired"]

    def state(spi: int) -> str | None:
        sa = next((s for s in a.query()["sas"] if s["spi"] == spi), None)
        return None if sa is None else str(sa["state"])

    # Time: an unused SA, dying after 1 s, removed after 2 s.
    r = a.setkey(f"add {ga} 192.0.2.77 esp 0x7777 -m tunnel -ls 1 -lh 2 "
                 f"-E aes-gcm-16 {KEY_BA};\n")
    assert r.returncode == 0, r.stderr
    assert state(0x7777) == "mature"
    assert wait_until(lambda: state(0x7777) == "dying", 3)
    assert wait_until(lambda: state(0x7777) is None, 4)
    # Packets: a newer SA pair for the IPv4 sites, gone after 4 packets; the
    # gateways then fall back to the older one.
    for d in (a, b):
        r = d.setkey(f"add {ga} {gb} esp 0x2101 -m tunnel -ph 4 -E aes-gcm-16 {KEY_AB};\n")
        assert r.returncode == 0, r.stderr
    ping(topo.net_a.ns, topo.net_b.v4, count=8, interval=0.1)
    assert wait_until(lambda: state(0x2101) is None, 3)
    assert a.query()["expired"] >= expired + 2
    assert "reached its soft lifetime" in a.log_text()
    assert "reached its hard lifetime" in a.log_text()
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2) == 2  # back on SA 0x2001


def test_a_flood_of_garbage_is_counted_not_logged(gws: Gateways) -> None:
    topo, b = gws.topo, gws.b
    before = b.query()
    inj = Injector(topo.gw_a_wan.ns)
    n = 20000
    try:
        packet = bytes(40)
        for i in range(n):
            inj.ip4(topo.gw_a_wan.v4, topo.gw_b_wan.v4, ESP, struct.pack("!II", 0xBAD00000 | i, 1)
                    + packet)
    finally:
        inj.close()

    def seen() -> int:
        st = b.query()
        ring = sum(w["ring_drops"] for w in st["workers"]) - sum(
            w["ring_drops"] for w in before["workers"])
        return int(st["drops"].get("unknown_spi", 0) - before["drops"].get("unknown_spi", 0)
                   + ring)

    assert wait_until(lambda: seen() >= n, 5), seen()
    assert b.log_text().count("unknown_spi") <= 4  # one line per worker per 10 s
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2) == 2


def test_start_errors_leave_nothing_behind(gws: Gateways, tmp_path: Path) -> None:
    """A daemon that cannot start says why (exit 3, no traceback) and undoes what it did."""
    ns = gws.topo.net_a.ns  # a namespace without a daemon

    def attempt(name: str, **kwargs: object) -> str:
        d = start(ns, tmp_path, name, wait=False, **kwargs)  # type: ignore[arg-type]
        try:
            assert d.proc.wait(15) == 3
        finally:
            d.cleanup()
        text = d.log_text()
        assert "Traceback" not in text
        return text

    assert "datapath.outside: no interface named 'nope0'" in attempt("e1", outside=["nope0"])
    text = attempt("e2", outside=["eth0"], script="flush;\nspdadd 10.0.0.0/8 any -P out;\n")
    assert "ipsec.setkey:2:" in text
    # The same control socket as a running daemon: refused, and that daemon is unharmed.
    text = attempt("e3", outside=["eth0"],
                   extra={"control": {"socket": str(gws.a.socket)}})
    assert "another daemon is running" in text
    assert gws.a.query() is not None
    # A script the datapath cannot take (the SA table is too small) is refused whole.
    me = gws.topo.net_a
    script = (transport_script(me.v4, "198.51.100.99")
              + transport_script(me.v6, "2001:db8:a::99", spi_ab=0x1601, spi_ba=0x1602)
              .replace("flush;\nspdflush;\n", ""))
    text = attempt("e4", outside=["eth0"], extra={"daemon": {"max_sas": 2}}, script=script)
    assert "the SA table is full" in text
    for cmd in (["nft", "list", "tables"], ["ip", "link", "show", "ipsec0"],
                ["ip", "rule", "list", "priority", "10000"]):
        out = ns.run(*cmd, check=False).stdout.decode()
        assert "ipsecd" not in out and "ipsec0" not in out and "lookup 220" not in out, cmd
    assert not list(Path("/dev/shm").glob("ipsecd-e?_*")) and not list(
        Path("/dev/shm").glob("ipsecd-e?-*"))


def _burst(dst: str, count: int, rate: float) -> int:
    """In netA: ``count`` datagrams of one flow, paced at ``rate`` per second."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        for i in range(count):
            s.sendto(struct.pack("!I", i), (dst, PORT + 1))
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return count


def test_plaintext_the_workers_cannot_take_is_counted_at_the_tun(gws: Gateways) -> None:
    """Workers stopped for a moment: the TUN queue (500 packets) fills, the kernel drops the
    rest, and ``ipsecd status`` (and ``ipsecd_tun_dropped_packets_total``) says how many."""
    topo, a = gws.topo, gws.a
    before = a.status()["tun"]["dropped"]["outbound"]
    pids = a.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        sent = topo.net_a.ns.call(_burst, topo.net_b.v4, 1500, 6000.0, timeout=20)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert sent == 1500
    # One flow uses one queue: it holds about 500 (the kernel's ring frees its slots in
    # batches, so a few less), and about 1000 others were dropped there.
    assert wait_until(lambda: a.status()["tun"]["dropped"]["outbound"] - before >= 900, 5)
    assert a.status()["tun"]["dropped"]["outbound"] - before <= 1100
    assert a.worker_pids() == pids  # stopped for well under the heartbeat limit: not restarted
    assert ping(topo.net_a.ns, topo.net_b.v4, count=2, interval=0.05) == 2
