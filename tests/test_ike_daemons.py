"""Two ipsecd gateways negotiating with IKEv2 (the interop proof is test_ike_strongswan.py).

Rekeying under a running TCP transfer, simultaneous rekeys (collisions,
RFC 7296 §2.8.1), dead-peer detection with restart, and the operator
commands (initiate, terminate, rekey, list-sas, list-conns).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, wait_ready
from ike_harness import MATRIX, Pki, established, ipsecd_children, ipsecd_ike
from netns import (
    Lab,
    SiteToSite,
    lab_fixture,
    needs_root,
    ping,
    site_to_site,
    tcp_transfer,
    wait_until,
)

pytestmark = [pytest.mark.netns, needs_root()]


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def pair(topo: SiteToSite, tmp: Path, *, a_conn: dict[str, Any] | None = None,
         b_conn: dict[str, Any] | None = None, a_child: dict[str, Any] | None = None,
         b_child: dict[str, Any] | None = None, pki: Pki | None = None,
         proposals: str = "aes128gcm16-prfsha256-x25519",
         esp: str = "aes128gcm16") -> tuple[Daemon, Daemon]:
    a = ipsecd_ike(topo, tmp, side="a", name="ike-a", proposals=proposals, esp=esp,
                   families=(0, 1), conn_extra=a_conn, child_extra=a_child, pki=pki)
    b = ipsecd_ike(topo, tmp, side="b", name="ike-b", proposals=proposals, esp=esp,
                   families=(0, 1), conn_extra=b_conn, child_extra=b_child, pki=pki)
    wait_ready(a, b)
    return a, b


def up(a: Daemon, b: Daemon) -> None:
    r = a.ipsecd("initiate", "s2s")
    assert r.returncode == 0, r.stderr + a.log_text() + b.log_text()
    assert wait_until(lambda: established(a) and established(b), 10), a.log_text() + b.log_text()


def stop(*daemons: Daemon) -> None:
    status = [d.stop() for d in daemons]
    assert status == [0] * len(daemons), "\n".join(d.log_text() for d in daemons)


def spis(d: Daemon) -> set[str]:
    return {c["spi_in"] for c in ipsecd_children(d)}


def lost_packets(d: Daemon) -> dict[str, int]:
    drops = d.query()["drops"]
    return {k: v for k, v in drops.items() if k in ("unknown_spi", "replay", "icv")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("auth,proposals,esp,alg", MATRIX,
                         ids=[f"{m[0]}-{m[1].split('-')[0]}-{m[1].split('-')[-1]}" for m in MATRIX])
def test_two_ipsecd_gateways_negotiate_and_carry_traffic(lab: Lab, tmp_path: Path, auth: str,
                                                         proposals: str, esp: str,
                                                         alg: tuple[str, int]) -> None:
    """The interop matrix of test_ike_strongswan.py, between two ipsecd gateways."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, pki=Pki(auth) if auth != "psk" else None,
                proposals=proposals, esp=esp)
    try:
        up(a, b)
        (ca,), (cb,) = ipsecd_children(a), ipsecd_children(b)
        assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"]
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
        assert ping(topo.net_b.ns, topo.net_a.v6, count=3, interval=0.05) == 3
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=3 << 20).received == 3 << 20
        # list-sas and list-conns, for people and for programs
        text = a.ipsecd("list-sas")
        assert text.returncode == 0 and "ESTABLISHED" in text.stdout and "INSTALLED" in text.stdout
        assert "UDP-encap" not in text.stdout  # no NAT between the two
        conns = json.loads(a.ipsecd("list-conns", "--json").stdout)["connections"]
        assert conns[0]["name"] == "s2s" and conns[0]["ike_sas"] == 1
        sas = json.loads(a.ipsecd("list-sas", "--json").stdout)["ike_sas"]
        assert sas[0]["children"][0]["packets_out"] >= 3
        # terminate: both sides drop the SAs, the sites are cut off again
        r = a.ipsecd("terminate", "s2s")
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: not ipsecd_children(a) and not ipsecd_children(b), 5)
        assert ping(topo.net_a.ns, topo.net_b.v4, count=1, timeout=0.5) == 0
        assert not [s for s in a.query()["sas"]] and not [s for s in b.query()["sas"]]
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_rekeying_under_a_long_tcp_transfer(lab: Lab, tmp_path: Path) -> None:
    """Child SAs rekey every ~3 s and the IKE SA every ~5 s while TCP runs for 14 s."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_conn={"rekey_time": "5s"}, b_conn={"rekey_time": "30s"},
                a_child={"rekey_time": "3s", "life_time": "20s"},
                b_child={"rekey_time": "4s", "life_time": "20s"})
    try:
        up(a, b)
        seen_child: set[str] = set()
        seen_ike: set[str] = set()
        stop_polling = threading.Event()

        def poll() -> None:
            while not stop_polling.is_set():
                listing = a.query("list-sas")
                if listing:
                    for ike in listing["ike_sas"]:
                        seen_ike.add(ike["spi_i"])
                        for c in ike["children"]:
                            seen_child.add(c["spi_in"])
                time.sleep(0.2)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            moved = tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4, seconds=14)
        finally:
            stop_polling.set()
            poller.join()
        assert moved.received > 1 << 20  # and all of it (tcp_transfer), across the rekeys
        assert len(seen_child) >= 4, seen_child  # the first child and at least 3 rekeys
        assert len(seen_ike) >= 3, seen_ike  # the IKE SA was rekeyed at least twice
        # after all that, exactly one child on each side, and they agree
        assert wait_until(lambda: len(ipsecd_children(a)) == 1 and len(ipsecd_children(b)) == 1, 8)
        (ca,), (cb,) = ipsecd_children(a), ipsecd_children(b)
        assert ca["spi_in"] == cb["spi_out"]
        assert lost_packets(a) == {} and lost_packets(b) == {}, (lost_packets(a), lost_packets(b))
        assert ping(topo.net_a.ns, topo.net_b.v4, count=2, interval=0.05) == 2
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_simultaneous_rekeys_collide_and_resolve(lab: Lab, tmp_path: Path) -> None:
    """Both gateways rekey the same child at once (§2.8.1).  To make the collision certain,
    gwB's WAN drops everything from gwA for a moment: gwA's request is lost (it is
    retransmitted 0.5 s later), gwB's request reaches gwA while gwA's own is outstanding
    (gwA's answer is lost too), and gwA's retransmission reaches gwB while gwB's is."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path)
    gwb = topo.gw_b_wan.ns
    try:
        up(a, b)
        gwb.run("nft", "-f", "-", input=(
            "table netdev hold {\n chain in {\n"
            "  type filter hook ingress device \"wan0\" priority 0;\n"
            f"  ip saddr {topo.gw_a_wan.v4} udp dport {{ 500, 4500 }} drop\n }}\n}}\n").encode())
        try:
            assert a.query("rekey", name="s2s")["rekeying"] == 1
            # gwB's request 0.2 s later: gwA's retransmission (0.5 s after its request,
            # on a 0.1 s tick) then reaches gwB well before gwB's own retransmission
            # (0.7 s) could complete gwB's exchange and retire the old child.
            time.sleep(0.2)
            assert b.query("rekey", name="s2s")["rekeying"] == 1
            time.sleep(0.15)
        finally:
            gwb.run("nft", "delete", "table", "netdev", "hold")
        assert wait_until(lambda: len(ipsecd_children(a)) == 1 and len(ipsecd_children(b)) == 1,
                          10), (ipsecd_children(a), ipsecd_children(b))
        logs = a.log_text() + b.log_text()
        assert "rekey collision" in logs, logs[-3000:]  # seen and settled by the §2.8.1 rule
        (ca,), (cb,) = ipsecd_children(a), ipsecd_children(b)
        assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"]
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    finally:
        stop(a, b)


@pytest.mark.timeout(150)
def test_dead_peer_detection_clears_then_restarts(lab: Lab, tmp_path: Path) -> None:
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path,
                a_conn={"dpd_delay": "2s", "dpd_timeout": "5s", "dpd_action": "restart"})
    try:
        up(a, b)
        assert ping(topo.net_a.ns, topo.net_b.v4, count=2, interval=0.05) == 2
        gwb = topo.gw_b_wan.ns
        gwb.run("ip", "link", "set", "wan0", "down")
        t0 = time.monotonic()
        # dpd_delay + dpd_timeout (+ one tick of slack): the SAs are cleared
        assert wait_until(lambda: not ipsecd_children(a), 12), a.log_text()
        cleared = time.monotonic() - t0
        assert cleared <= 2 + 5 + 2, cleared
        assert not a.query()["sas"]
        gwb.run("ip", "link", "set", "wan0", "up")
        gwb.ip(f"addr replace {topo.gw_b_wan.v4}/24 dev wan0",
               f"addr replace {topo.gw_b_wan.v6}/64 dev wan0 nodad")
        # restarted by itself once the peer is back
        assert wait_until(lambda: established(a), 45), a.log_text()
        assert wait_until(lambda: ping(topo.net_a.ns, topo.net_b.v4, count=1, timeout=0.5) == 1,
                          10)
        assert len(ipsecd_children(b)) == 1  # the peer replaced its stale IKE SA
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_reauthentication_replaces_the_ike_sa_without_a_gap(lab: Lab, tmp_path: Path) -> None:
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_conn={"reauth_time": "4s"})
    try:
        up(a, b)
        first = a.query("list-sas")["ike_sas"][0]["spi_i"]
        # 7 s of pings at 10/s across the reauthentication (due after 3.6-4 s)
        received = ping(topo.net_a.ns, topo.net_b.v4, count=70, interval=0.1, timeout=2)
        sas = a.query("list-sas")["ike_sas"]
        assert [s["spi_i"] for s in sas] != [first]
        assert len([s for s in sas if s["state"] == "established"]) == 1, sas
        assert "reauthenticated" in a.log_text()
        assert len([s for s in b.query("list-sas")["ike_sas"] if s["state"] == "established"]) == 1
        assert received == 70, received
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_reload_leaves_unchanged_connections_alone(lab: Lab, tmp_path: Path) -> None:
    topo = site_to_site(lab, routed=False)
    spare = {"connections.spare": {"local_addrs": [topo.gw_a_wan.v4],
                                   "remote_addrs": ["192.0.2.99"]},
             "connections.spare.children.c": {"local_ts": ["10.1.0.0/16"],
                                              "remote_ts": ["10.2.0.0/16"]}}
    a, b = pair(topo, tmp_path)
    try:
        up(a, b)
        before = a.query("list-sas")["ike_sas"][0]
        config = a.config.read_text()
        # add a connection: the running one must not notice
        a.config.write_text(config + "\n" + toml_tables(spare))
        r = a.ipsecd("reload")
        assert r.returncode == 0, r.stderr
        assert "added: spare" in r.stdout and "unchanged: s2s" in r.stdout
        after = a.query("list-sas")["ike_sas"][0]
        assert (after["spi_i"], after["children"][0]["spi_in"]) == \
            (before["spi_i"], before["children"][0]["spi_in"])
        names = [c["name"] for c in a.query("list-conns")["connections"]]
        assert names == ["s2s", "spare"]
        # a broken file is refused whole
        a.config.write_text(config + "\n[connections.bad]\nlocal_addrs = 5\n")
        r = a.ipsecd("reload")
        assert r.returncode != 0 and "ipsecd.toml" in r.stderr
        assert a.query("list-sas")["ike_sas"][0]["spi_i"] == before["spi_i"]
        # SIGHUP with s2s gone: its IKE SA is deleted, on both sides
        a.config.write_text(config.split("[connections.s2s]")[0] + toml_tables(spare))
        a.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: not ipsecd_children(a) and not ipsecd_children(b), 8), \
            a.log_text()
        assert [c["name"] for c in a.query("list-conns")["connections"]] == ["spare"]
    finally:
        stop(a, b)


def toml_tables(tables: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


@pytest.mark.timeout(120)
def test_child_rekeyed_by_volume(lab: Lab, tmp_path: Path) -> None:
    """rekey_bytes: the datapath's byte counter (soft lifetime) triggers CREATE_CHILD_SA."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_child={"rekey_bytes": 1 << 20, "life_bytes": 64 << 20})
    try:
        up(a, b)
        first = spis(a)
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=6 << 20).received == 6 << 20
        assert wait_until(lambda: spis(a) and spis(a) != first, 5), a.log_text()
        assert "rekeying CHILD_SA" in a.log_text()
        assert lost_packets(a) == {} and lost_packets(b) == {}
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_trap_negotiates_on_the_first_packet(lab: Lab, tmp_path: Path) -> None:
    """start_action = trap: policies without SAs; the first packet makes IKE negotiate."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_child={"start_action": "trap"})
    try:
        assert not ipsecd_children(a)
        policies = a.query()["policies"]
        assert any(p["direction"] == "out" and p["dst"] == topo.site_b[0] for p in policies)
        # the first pings hit the trap (dropped, no SA yet); the tunnel comes up by itself
        assert wait_until(lambda: ping(topo.net_a.ns, topo.net_b.v4, count=1,
                                       timeout=0.5) == 1, 10), a.log_text()
        assert established(a) and established(b)
        assert "acquire" in a.log_text()
        assert a.query()["drops"].get("no_sa", 0) >= 1
        # the trap survives the SA: terminate, and the next packet brings it back
        r = a.ipsecd("terminate", "s2s")
        assert r.returncode == 0
        assert wait_until(lambda: not ipsecd_children(a), 5)
        assert wait_until(lambda: ping(topo.net_a.ns, topo.net_b.v4, count=1,
                                       timeout=0.5) == 1, 10), a.log_text()
        assert established(a)
    finally:
        stop(a, b)


def _ipcomp_sas(d: Daemon) -> list[dict[str, Any]]:
    return [sa for sa in d.query()["sas"] if sa["protocol"] == "ipcomp"]


@pytest.mark.timeout(120)
def test_ipcomp_negotiated_and_compressing(lab: Lab, tmp_path: Path) -> None:
    """``ipcomp = true`` on both children (RFC 7296 §2.22): CPIs exchanged, the IPComp SAs
    installed next to the ESP SAs and used, then gone with the child."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_child={"ipcomp": True}, b_child={"ipcomp": True})
    try:
        up(a, b)
        (ca,), (cb,) = ipsecd_children(a), ipsecd_children(b)
        assert ca["ipcomp"] == {"cpi_in": cb["ipcomp"]["cpi_out"],
                                "cpi_out": cb["ipcomp"]["cpi_in"], "transform": "deflate"}
        text = b"compressible " * 100
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05, payload=text) == 3
        assert ping(topo.net_b.ns, topo.net_a.v6, count=3, interval=0.05, payload=text) == 3
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=2 << 20).received == 2 << 20  # repeating digits: compressible
        # the IPComp SAs: our CPI inbound, the peer's outbound, both carried traffic
        comp = {sa["direction"]: sa for sa in _ipcomp_sas(a)}
        assert comp["in"]["spi"] == int(ca["ipcomp"]["cpi_in"], 16)
        assert comp["out"]["spi"] == int(ca["ipcomp"]["cpi_out"], 16)
        assert comp["in"]["mode"] == comp["out"]["mode"] == "tunnel"
        assert comp["out"]["packets"] >= 100 and comp["in"]["packets"] >= 3  # A sends the data
        assert not comp["in"]["drops"] and not comp["out"]["drops"]
        # B: ESP carried far fewer bytes than IPComp gave back (the repeating payload)
        comp_b = next(sa for sa in _ipcomp_sas(b) if sa["direction"] == "in")
        esp_b = next(sa for sa in b.query()["sas"]
                     if sa["protocol"] == "esp" and sa["direction"] == "in")
        assert comp_b["packets"] >= 100 and esp_b["bytes"] < comp_b["bytes"] // 2
        # a rekey (B asks, A answers) makes new CPIs; nothing is lost on the way
        r = b.ipsecd("rekey", "s2s")
        assert r.returncode == 0, r.stderr

        def rekeyed() -> bool:
            children = ipsecd_children(a)
            return (len(children) == 1 and children[0]["ipcomp"] is not None
                    and children[0]["ipcomp"]["cpi_in"] != ca["ipcomp"]["cpi_in"]
                    and len(_ipcomp_sas(a)) == 2)

        assert wait_until(rekeyed, 10), a.log_text() + b.log_text()
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05, payload=text) == 3
        assert ping(topo.net_b.ns, topo.net_a.v4, count=3, interval=0.05, payload=text) == 3
        assert lost_packets(a) == {} and lost_packets(b) == {}
        assert all(not sa["drops"] for sa in _ipcomp_sas(a) + _ipcomp_sas(b))
        r = a.ipsecd("terminate", "s2s")
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: not _ipcomp_sas(a) and not _ipcomp_sas(b), 5)
    finally:
        stop(a, b)


@pytest.mark.timeout(120)
def test_ipcomp_declined_by_the_responder(lab: Lab, tmp_path: Path) -> None:
    """The responder's child has ipcomp = false: the offer is ignored, ESP alone flows."""
    topo = site_to_site(lab, routed=False)
    a, b = pair(topo, tmp_path, a_child={"ipcomp": True})
    try:
        up(a, b)
        (ca,), (cb,) = ipsecd_children(a), ipsecd_children(b)
        assert ca["ipcomp"] is None and cb["ipcomp"] is None
        assert not _ipcomp_sas(a) and not _ipcomp_sas(b)
        text = b"compressible " * 100
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05, payload=text) == 3
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=1 << 20).received == 1 << 20
    finally:
        stop(a, b)
