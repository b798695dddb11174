"""An IKE_SA_INIT flood against an ipsecd responder (RFC 7296 §2.6 cookies, half-open limits).

From gwA's namespace a bounded flood of well-formed IKE_SA_INIT requests
(real x25519 KE payloads, so each one would cost the responder a key
exchange) comes from 100 spoofed addresses of the WAN; meanwhile gwA's own
ipsecd initiates a real connection.  The responder must demand cookies,
keep its half-open state bounded, and still let the real peer in.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import wait_ready
from ike_harness import established, ipsecd_ike
from netns import Injector, Lab, lab_fixture, needs_root, site_to_site, wait_until

from ipsecd.ike import proposals as props
from ipsecd.ike.constants import DhGroup, ExchangeType
from ipsecd.ike.messages import KE, SA, Message, Nonce, encode

pytestmark = [pytest.mark.netns, needs_root()]

FLOOD_RATE = 400  # requests per second
FLOOD_SECONDS = 6.0
SOURCES = [f"192.0.2.{i}" for i in range(100, 200)]


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def init_request() -> bytes:
    offer = props.parse_ike("aes128gcm16-prfsha256-x25519")
    msg = Message(os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, initiator=True,
                  payloads=[SA(offer), KE(DhGroup.CURVE25519, os.urandom(32)),
                            Nonce(os.urandom(32))])
    return encode(msg)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: IPv4


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_flood_does_not_lock_out_a_real_peer(lab: Lab, tmp_path: Path) -> None:
    topo = site_to_site(lab, routed=False)
    b = ipsecd_ike(topo, tmp_path, side="b", name="dos-b",
                   conn_extra={"remote_addrs": ["%any"]},
                   ike_extra={"cookie_threshold": 10, "half_open_max": 100,
                              "half_open_per_peer": 5})
    a = ipsecd_ike(topo, tmp_path, side="a", name="dos-a",
                   ike_extra={"retransmit_timeout": 0.5, "retransmit_tries": 6})
    wait_ready(a, b)
    try:
        rss_before = rss_kb(b.proc.pid)
        injector = Injector(topo.gw_a_wan.ns)
        # the spoofed sources must exist on the link for the flood to be realistic: neighbours
        # that never answer are fine, the responder's replies just go nowhere
        sent = {"n": 0}
        stop = threading.Event()

        def flood() -> None:
            end = time.monotonic() + FLOOD_SECONDS
            period = 1.0 / FLOOD_RATE
            nxt = time.monotonic()
            i = 0
            while time.monotonic() < end and not stop.is_set():
                src = SOURCES[i % len(SOURCES)]
                sport = 500 + (i // len(SOURCES)) % 1000
                injector.ip4(src, topo.gw_b_wan.v4, socket.IPPROTO_UDP,
                             udp(src, topo.gw_b_wan.v4, sport, 500, init_request()))
                sent["n"] += 1
                i += 1
                nxt += period
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            time.sleep(1.0)  # the flood is on
            st = b.query()["ike"]
            assert st["half_open"] <= 10 + 5, st  # never far above the cookie threshold
            t0 = time.monotonic()
            r = a.ipsecd("initiate", "s2s", "--timeout", "20")
            assert r.returncode == 0, r.stderr + a.log_text()[-3000:] + b.log_text()[-3000:]
            took = time.monotonic() - t0
        finally:
            stop.set()
            flooder.join()
            injector.close()
        assert wait_until(lambda: established(b), 5)
        st = b.query()["ike"]
        assert sent["n"] >= FLOOD_RATE * 2
        assert st["cookies_sent"] >= sent["n"] // 2, (st, sent)
        assert st["states"].get("established", 0) == 1
        assert took < 15
        # state stays bounded: half-open SAs are capped, memory did not grow with the flood
        assert st["half_open"] <= 100
        growth = rss_kb(b.proc.pid) - rss_before
        assert growth < 16 * 1024, f"responder grew by {growth} KB under the flood"
        # the real peer's cookie round trip shows in its own log
        assert "asks for a cookie" in a.log_text()
    finally:
        status = [a.stop(), b.stop()]
    assert status == [0, 0]
