"""NAT traversal (RFC 7296 §2.23, RFC 3948): ipsecd behind a masquerading NAT, strongSwan outside.

``netA ── gwA (ipsecd, 10.0.0.2) ── nat (nftables masquerade) ══ wan ══ gwB (charon) ── netB``

gwA's private address is rewritten to the NAT's 192.0.2.1; IKE must notice
(NAT_DETECTION_*), move to port 4500 and put ESP in UDP, and keep the NAT
mapping alive with keepalives.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import start, wait_ready
from ike_harness import PSK, established, ipsecd_children, one_sa
from netns import Host, Lab, lab_fixture, needs_root, ping, tcp_transfer, wait_until
from strongswan import Child, Connection, StrongSwan, swanctl_conf

pytestmark = [pytest.mark.netns, needs_root()]

SITE_A, SITE_B = "198.51.100.0/24", "203.0.113.0/24"


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def topology(lab: Lab) -> dict[str, Host]:
    na, ga, nat, gb, nb = (lab.netns(r) for r in ("neta", "gwa", "nat", "gwb", "netb"))
    lab.veth(na, "eth0", ga, "lan0")
    lab.veth(ga, "wan0", nat, "in0")
    lab.veth(nat, "out0", gb, "wan0")
    lab.veth(gb, "lan0", nb, "eth0")
    for ns in (ga, nat, gb):
        ns.sysctl("net.ipv4.ip_forward", 1)
    na.ip("addr add 198.51.100.10/24 dev eth0", "route add default via 198.51.100.1")
    ga.ip("addr add 198.51.100.1/24 dev lan0", "addr add 10.0.0.2/24 dev wan0",
          "route add default via 10.0.0.1")
    nat.ip("addr add 10.0.0.1/24 dev in0", "addr add 192.0.2.1/24 dev out0")
    gb.ip("addr add 192.0.2.2/24 dev wan0", "addr add 203.0.113.1/24 dev lan0")
    nb.ip("addr add 203.0.113.10/24 dev eth0", "route add default via 203.0.113.1")
    ruleset = ("table ip natbox {\n"
               " chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n"
               "  oifname \"out0\" ip saddr 10.0.0.0/24 counter masquerade\n }\n"
               " chain forwarding {\n  type filter hook forward priority filter; policy drop;\n"
               "  ct state established,related accept\n"
               "  iifname \"in0\" oifname \"out0\" accept\n }\n}\n")
    nat.run("nft", "-f", "-", input=ruleset.encode())
    return {"neta": Host(na, "eth0", "198.51.100.10", ""), "gwa": Host(ga, "wan0", "10.0.0.2", ""),
            "nat": Host(nat, "out0", "192.0.2.1", ""), "gwb": Host(gb, "wan0", "192.0.2.2", ""),
            "netb": Host(nb, "eth0", "203.0.113.10", "")}


@pytest.mark.timeout(90)
def test_ipsecd_behind_nat_against_strongswan(lab: Lab, tmp_path: Path) -> None:
    t = topology(lab)
    sw = StrongSwan(t["gwb"].ns, tmp_path / "charon").start()
    conn = Connection(name="s2s", local_addrs=["192.0.2.2"], remote_addrs=["%any"],
                      local_id="gwb", remote_id="gwa",
                      proposals=["aes128gcm16-prfsha256-x25519"],
                      children=[Child("net", [SITE_B], [SITE_A], esp_proposals=["aes128gcm16"])])
    sw.load(swanctl_conf([conn], {("gwa", "gwb"): PSK}))
    d = tmp_path / "nat-a"
    d.mkdir()
    (d / "psk.txt").write_text(f"gwb {PSK}\n")
    os.chmod(d / "psk.txt", 0o600)
    extra: dict[str, Any] = {
        "ike": {"psk_file": str(d / "psk.txt"), "retransmit_timeout": 0.5},
        "connections.s2s": {"local_addrs": ["10.0.0.2"], "remote_addrs": ["192.0.2.2"],
                            "proposals": ["aes128gcm16-prfsha256-x25519"]},
        "connections.s2s.local": {"auth": "psk", "id": "gwa"},
        "connections.s2s.remote": {"auth": "psk", "id": "gwb"},
        "connections.s2s.children.net": {"local_ts": [SITE_A], "remote_ts": [SITE_B],
                                         "esp_proposals": ["aes128gcm16"]},
    }
    a = start(t["gwa"].ns, tmp_path, "nat-a", outside=["wan0"], wait=False, extra=extra)
    try:
        wait_ready(a)
        r = a.ipsecd("initiate", "s2s")
        assert r.returncode == 0, r.stderr + a.log_text() + sw.log_tail()
        sw.wait_established("net")
        assert wait_until(lambda: established(a), 5)
        (ike,) = a.query("list-sas")["ike_sas"]
        assert ike["nat_local"] and ike["local"].endswith(":4500")
        (child,) = ipsecd_children(a)
        assert child["encap"]
        peer = one_sa(sw)
        assert peer.child("net").encap

        cap = t["nat"].ns.capture("out0", tmp_path / "wan.pcap")
        assert ping(t["neta"].ns, t["netb"].v4, count=4, interval=0.05) == 4, \
            a.log_text() + sw.log_tail()
        assert ping(t["netb"].ns, t["neta"].v4, count=2, interval=0.05) == 2
        try:
            moved = tcp_transfer(t["neta"].ns, t["netb"].ns, t["netb"].v4, size=2 << 20)
        finally:
            cap.stop()
        assert moved.received == 2 << 20
        # on the outside: only UDP between the NAT's address and gwB, ESP on 4500
        esp, other = 0, []
        for f in cap.packets():
            if f[12:14] != b"\x08\x00":
                continue
            ip = f[14:]
            src, dst = ip[12:16], ip[16:20]
            if ip[9] != 17 or {bytes(src), bytes(dst)} != {bytes([192, 0, 2, 1]),
                                                           bytes([192, 0, 2, 2])}:
                other.append((ip[9], src.hex(), dst.hex()))
                continue
            hl = (ip[0] & 0xF) * 4
            sport, dport = struct.unpack_from("!HH", ip, hl)
            if 4500 in (sport, dport) and ip[hl + 8:hl + 12] != bytes(4):
                esp += 1
        assert esp >= 12
        assert not other, f"not NAT-T traffic on the outside: {other[:5]}"
    finally:
        status = a.stop()
        sw.stop()
    assert status == 0, a.log_text()
