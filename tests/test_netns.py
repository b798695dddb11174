"""The namespace harness itself: it must clean up whatever happens."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from netns import NETNS_DIR, PREFIX, Lab, host_to_host, remove_stale, site_to_site, tcp_transfer

pytestmark = [pytest.mark.netns]


def _ours() -> set[str]:
    return {p.name for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()


def test_failure_still_removes_namespaces_and_processes() -> None:
    before = _ours()
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        h = host_to_host(lab)
        procs.append(h.a.ns.popen("sleep", "60"))
        child = h.b.ns.spawn(lambda: __import__("time").sleep(60))
        assert {ns.name for ns in lab.namespaces} <= _ours()
        raise RuntimeError("boom")
    assert _ours() == before
    assert procs[0].poll() is not None
    assert not Path(f"/proc/{child.pid}").exists() or \
        Path(f"/proc/{child.pid}/stat").read_text().split()[2] == "Z"


def test_call_runs_inside_and_reports_errors() -> None:
    with Lab() as lab:
        ns = lab.netns("x")
        ns.ip("link add v7a type veth peer name v7b")
        assert ns.call(socket.if_nametoindex, "v7b") > 0
        with pytest.raises(OSError):
            socket.if_nametoindex("v7b")  # not in ours
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            ns.call(lambda: 1 // 0)


def test_site_to_site_routes_both_families() -> None:
    with Lab() as lab:
        t = site_to_site(lab)
        for dst in (t.net_b.v4, t.net_b.v6):
            out = t.net_a.ns.run("ip", "route", "get", dst).stdout.decode()
            assert "via" in out
        route = t.gw_a_wan.ns.run("ip", "route", "get", t.net_b.v4).stdout.decode()
        assert t.gw_b_wan.v4 in route


def test_stale_namespaces_of_dead_runs_are_removed() -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    name = f"{PREFIX}{dead}-abcdef-x"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        assert name in remove_stale()
        assert name not in _ours()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_transfer_counts_every_byte_at_the_receiver(family: int) -> None:
    with Lab() as lab:
        h = host_to_host(lab)
        size = (3 << 20) + 7  # not a multiple of the payload's length
        moved = tcp_transfer(h.a.ns, h.b.ns, h.b.v4 if family == 4 else h.b.v6, size=size)
        assert moved.sent == moved.received == size


def test_tcp_transfer_fails_when_the_data_does_not_arrive() -> None:
    """A path that takes the handshake but loses the data: no count, an error."""
    with Lab() as lab:
        h = host_to_host(lab)
        h.b.ns.run("nft", "-f", "-", input=b"table inet t { chain input { type filter hook "
                   b"input priority 0; tcp flags & (syn | fin | rst) == 0 meta length > 200 "
                   b"drop; }; }\n")
        with pytest.raises((OSError, AssertionError)):
            tcp_transfer(h.a.ns, h.b.ns, h.b.v4, size=1 << 20, timeout=2)
