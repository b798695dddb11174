"""``make demo`` (deploy/demo/demo.py): it runs, shows what it promises, and leaves nothing.

The demo is run as the Makefile runs it (this interpreter, the script's
path), with ``--no-hold`` and a short iperf3 transfer; a second run is
interrupted with SIGINT (what Ctrl-C sends) while traffic flows.  Either
way no namespace, process, temporary directory or shared-memory segment
of it may be left, and no key material may appear in what it prints.
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
    # Keys are never printed: no long hex string anywhere.
    assert not re.search(r"0x[0-9a-fA-F]{32,}", out)


def test_demo_runs_and_removes_everything() -> None:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(DEMO), "--no-hold", "--iperf-seconds", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=_env(), start_new_session=True)
    try:
        raw, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    out = raw.decode(errors="replace")
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 60
    for expected in (
        "netA", "gwA", "wan0 192.0.2.1 ══ ESP ══ 192.0.2.2 wan0",
        "daemons up: both ready",
        "ping -> 10.20.20.10: 5/5 replies",
        "ping -> 10.10.10.10: 3/3 replies",
        "only ESP on the WAN: nothing in clear",
        "ESP(spi=0x00002001",
        "instance gwa", "instance gwb", "SAs: 2", "0x00002002",
        "gwA: http://127.0.0.1:9766/metrics", "gwB: http://127.0.0.1:9767/metrics",
        'ipsecd_build_info{version="', "ipsecd_worker_up",
        "demo OK",
        "daemons stopped (exit status: gwA 0, gwB 0)",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # tcpdump -c 12 on the WAN during a ping: ESP (an ARP refresh would be allowed), nothing else.
    capture = re.search(r"wan capture: 12 packets on gwA wan0: (\d+) ESP, (\d+) ARP, 0 other", out)
    assert capture is not None and int(capture[1]) >= 10, out
    mbits = re.search(r"TCP for 1 s: (\d+) Mbit/s received", out)
    assert mbits is not None and int(mbits[1]) > 0, out
    assert "Press Ctrl-C" not in out
    _assert_nothing_left(out, proc.pid)


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
