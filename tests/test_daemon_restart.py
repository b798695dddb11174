"""Restarting a daemon with manual keys never repeats an outbound sequence number.

With AES-GCM a repeated sequence number under the same key repeats the nonce
(RFC 4106 §3.1): keys set by hand come back unchanged after a restart, so
the daemon keeps the last sequence number of each such SA in its
``seq_file`` and continues above it - after a clean stop and after SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import KEY_AB, KEY_BA, Daemon, start, transport_script, wait_ready
from netns import HostToHost, Lab, host_to_host, lab_fixture, needs_root, ping

from ipsecd.daemon import SEQ_RESTART_MARGIN

pytestmark = [pytest.mark.netns, needs_root()]
SPI_AB = 0x1001  # a -> b


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def gateway(topo: HostToHost, tmp: Path, side: str) -> Daemon:
    host = topo.a if side == "a" else topo.b
    return start(host.ns, tmp, f"rs-{side}", outside=["eth0"], wait=False,
                 script=transport_script(topo.a.v4, topo.b.v4,
                                         local=host.v4))


def out_seq(d: Daemon) -> int:
    sa = d.sa(SPI_AB)
    return int(sa["seq"])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_sequence_numbers_continue_after_a_restart(lab: Lab, tmp_path: Path, how: str) -> None:
    topo = host_to_host(lab)
    a, b = gateway(topo, tmp_path, "a"), gateway(topo, tmp_path, "b")
    try:
        wait_ready(a, b)
        assert ping(topo.a.ns, topo.b.v4, count=20, interval=0.02) == 20
        before = out_seq(a)
        assert before >= 20
        seq_file = a.config.parent / "run" / "rs_a.seq"
        if how == "sigterm":
            assert a.stop() == 0
        else:
            time.sleep(0.7)  # at least one tick wrote the file
            for pid in a.pids():
                os.kill(pid, signal.SIGKILL)
            a.proc.wait(5)
            a.cleanup()
        assert seq_file.exists() and (seq_file.stat().st_mode & 0o777) == 0o600
        text = seq_file.read_text()
        assert KEY_AB[2:] not in text and KEY_BA[2:] not in text  # keyed hashes, no key
        a = gateway(topo, tmp_path, "a")
        wait_ready(a)
        after = out_seq(a)
        assert after >= before + SEQ_RESTART_MARGIN - 1
        # the peer's anti-replay window moves up with it: traffic flows on
        assert ping(topo.a.ns, topo.b.v4, count=5, interval=0.02) == 5, a.log_text()
        assert out_seq(a) > after
        assert b.query()["drops"].get("replay", 0) == 0
    finally:
        status = [a.stop(), b.stop()]
    assert status == [0, 0]
