"""``make demo`` (deploy/demo/demo.py): it runs, shows what it promises, and leaves nothing.

The demo is run as ``DEMO_HOLD=0 make demo`` runs it (this interpreter, the
script's path, DEMO_HOLD=0) with a short iperf3 transfer: IKEv2 negotiates
the tunnel between the two ipsecd daemons (both gateways list the IKE SA and
its Child SA, the SPIs they agreed are the ones on the WAN), and IPv4, IPv6
and TCP traffic crosses it.  A second run is interrupted with SIGINT (what
Ctrl-C sends) while traffic flows; a third runs the manual-keys variant
(``DEMO_KEYING=manual``).  Every time, no namespace, process, temporary
directory, shared-memory segment or nft table of it may be left, and no key
material may appear in what it prints.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import needs_root

pytestmark = [pytest.mark.netns, needs_root()]

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "deploy" / "demo" / "demo.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEMO_HOLD"}
    env.update(extra)
    return env


def _run(*args: str, **env: str) -> str:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(DEMO), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=_env(**env), start_new_session=True)
    try:
        raw, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    out = raw.decode(errors="replace")
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 60
    assert "Press Ctrl-C" not in out
    _assert_nothing_left(out, proc.pid)
    return out


def _section(out: str, title: str) -> str:
    """The lines of the demo's ``== title`` step."""
    start = out.index(f"\n== {title}")
    end = out.find("\n== ", start + 1)
    return out[start:end if end >= 0 else len(out)]


def _assert_common(out: str) -> None:
    """What both keyings show: the picture, traffic both ways and families, the status,
    the metrics, an orderly stop."""
    for expected in (
        "netA", "gwA", "wan0 192.0.2.1 ══", "192.0.2.2 wan0",
        "daemons up: both ready",
        "ping -> 10.20.20.10: 5/5 replies",
        "ping -> 10.10.10.10: 3/3 replies",
        "ping -> 2001:db8:20::10: 3/3 replies",
        "ping -> 2001:db8:10::10: 3/3 replies",
        "only ESP on the WAN: nothing in clear",
        "instance gwa", "instance gwb", "SAs: 2",
        "gwA: http://127.0.0.1:9766/metrics", "gwB: http://127.0.0.1:9767/metrics",
        "demo OK",
        "daemons stopped (exit status: gwA 0, gwB 0)",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # tcpdump -c 12 on the WAN during a ping: ESP (an ARP refresh would be allowed), nothing else.
    capture = re.search(r"wan capture: 12 packets on gwA wan0: (\d+) ESP, (\d+) ARP, "
                        r"(?:\d+ IKE, )?0 other", out)
    assert capture is not None and int(capture[1]) >= 10, out
    mbits = re.search(r"TCP for 1 s: (\d+) Mbit/s received", out)
    assert mbits is not None and int(mbits[1]) > 0, out
    # Each exporter answered with ipsecd_ series (which ones is the exporter's business).
    metrics = _section(out, "metrics")
    for url in ("http://127.0.0.1:9766/metrics", "http://127.0.0.1:9767/metrics"):
        block = metrics[metrics.index(url):].split("series in all", 1)[0]
        assert re.search(r"^ {4}ipsecd_\w+(\{[^}]*\})? \S+$", block, re.M), metrics


def _assert_nothing_left(out: str, pid: int) -> None:
    assert re.search(r"removed: namespaces ipsecd-demo-\d+-\*, daemons, .*; nothing left", out), out
    assert "LEFT BEHIND" not in out
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=True).stdout
    assert f"ipsecd-demo-{pid}-" not in listing
    workdir = re.search(r"work dir: (\S+)", out)
    assert workdir is not None
    assert not Path(workdir[1]).exists()
    # No process still runs with the demo's configuration (daemons, workers, iperf3, tcpdump).
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert workdir[1].encode() not in cmdline, f"pid {entry.name} still runs"
    for daemon_pid in re.findall(r"\(pid (\d+)\)", out):
        assert not Path(f"/proc/{daemon_pid}").exists()
        assert not list(Path("/dev/shm").glob(f"ipsecd-gw?-{daemon_pid}-*"))
    # The daemons ran in the demo's namespaces: their nft tables went with them.
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=False).stdout
    assert "ipsecd_gwa" not in tables and "ipsecd_gwb" not in tables, tables
    # Keys are never printed: no long hex string anywhere (SPIs have 8 or 16 digits).
    assert not re.search(r"0x[0-9a-fA-F]{32,}", out)
    assert not re.search(r"[0-9a-fA-F]{32,}", out)


def test_demo_negotiates_with_ikev2_and_removes_everything() -> None:
    """``DEMO_HOLD=0 make demo``: the default keying is IKEv2 with a pre-shared key."""
    out = _run("--iperf-seconds", "1", DEMO_HOLD="0")
    _assert_common(out)
    assert "keyed by IKEv2 with a pre-shared key" in out
    assert "aes128gcm16-prfsha256-x25519" in out
    # psk.txt as the daemon demands it (it would refuse to start otherwise).
    psk = re.findall(r"gw[AB]: \S+/psk\.txt  \(mode (\d+), owner (\w+)\)", out)
    assert psk == [("0600", "root"), ("0600", "root")], out
    # The negotiation on the WAN: IKE_SA_INIT and IKE_AUTH, gwA the initiator.
    exchange = _section(out, "IKEv2")
    for message in ("ikev2_init[I]", "ikev2_init[R]", "ikev2_auth[I]", "ikev2_auth[R]"):
        assert message in exchange, exchange
    assert "IKE SA and Child SA up on both gateways" in exchange
    # ipsecd list-sas on both sides: one IKE SA, its tunnel Child SA for both families,
    # with the same IKE SPIs and crossed ESP SPIs.
    listing = _section(out, "IKE SA and Child SAs")
    a_part, b_part = listing.split("--- gwB:")
    assert re.search(r"site-b: ESTABLISHED, 192\.0\.2\.1:500\[192\.0\.2\.1\]"
                     r"\.\.\.192\.0\.2\.2:500\[192\.0\.2\.2\]", a_part), listing
    assert re.search(r"site-a: ESTABLISHED, 192\.0\.2\.2:500", b_part), listing
    assert "initiator" in a_part and "responder" in b_part
    ike_spis = [re.search(r"SPIs (\w+)_i (\w+)_r, AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
                          part) for part in (a_part, b_part)]
    assert ike_spis[0] and ike_spis[1] and ike_spis[0].groups() == ike_spis[1].groups(), listing
    child = [re.search(r"net\{\d+\}: INSTALLED, TUNNEL, SPIs (\w+)_i (\w+)_o, AES_GCM_16_128",
                       part) for part in (a_part, b_part)]
    assert child[0] and child[1], listing
    a_in, a_out = child[0].groups()
    assert child[1].groups() == (a_out, a_in), listing
    assert "local  10.10.10.0/24, 2001:db8:10::/64" in a_part
    assert "remote 10.20.20.0/24, 2001:db8:20::/64" in a_part
    # The ESP on the WAN is that Child SA's (gwA sends with gwB's inbound SPI).
    wan = _section(out, "the WAN link")
    assert f"192.0.2.1 > 192.0.2.2: ESP(spi=0x{a_out}" in wan, wan
    assert f"192.0.2.2 > 192.0.2.1: ESP(spi=0x{a_in}" in wan, wan
    # ipsecd status shows the SAs the IKE SA installed, with the traffic on them.
    status = _section(out, "ipsecd status")
    assert f"0x{a_out}" in status and f"0x{a_in}" in status, status
    assert "demo OK: IKEv2 negotiated the tunnel" in out


def test_manual_keying_variant() -> None:
    """``DEMO_KEYING=manual``: the HOWTO's setkey script, no IKE at all."""
    out = _run("--no-hold", "--iperf-seconds", "1", DEMO_KEYING="manual")
    _assert_common(out)
    assert "manual keys (setkey script" in out
    assert "ESP(spi=0x00002001" in out and "0x00002002" in out
    assert "psk.txt" not in out and "IKE SA" not in out and "isakmp" not in out


def test_ctrl_c_while_traffic_flows_removes_everything() -> None:
    """SIGINT (Ctrl-C) in the middle of the show: the demo stops, cleans up, exits 130."""
    proc = subprocess.Popen([sys.executable, str(DEMO), "--iperf-seconds", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=_env(DEMO_HOLD="1"), start_new_session=True)
    assert proc.stdout is not None
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"TCP through the tunnel" not in out and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        assert b"TCP through the tunnel" in out, out.decode(errors="replace")
        time.sleep(1.0)  # iperf3 is running now
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=40)
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.decode(errors="replace")
    assert proc.returncode == 130, text
    assert "SIGINT: stopping" in text and "demo OK" not in text
    assert "daemons stopped (exit status: gwA 0, gwB 0)" in text
    _assert_nothing_left(text, proc.pid)
