"""IKEv2 interop: an ipsecd gateway against strongSwan's charon (kernel-libipsec).

``netA ── gwA (ipsecd) ══ wan ══ gwB (charon) ── netB`` without clear routes
between the sites: a ping that arrives went through both datapaths - ours
and strongSwan's userspace libipsec, which in Debian 12's 5.9.8 always puts
ESP in UDP 4500.  Both directions of initiation; PSK, ECDSA and RSA
certificates; AES-GCM, AES-CBC + SHA2, ChaCha20-Poly1305; DH 14, 19, 31.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ike_harness import (
    MATRIX,
    PSK,
    Pki,
    bring_up,
    charon,
    charon_dumps,
    esp_in_udp_and_clear,
    ipsecd_children,
    ipsecd_ike,
    one_sa,
    recorded_exchange,
)
from netns import Lab, lab_fixture, needs_root, ping, site_to_site, tcp_transfer, wait_until

pytestmark = [pytest.mark.netns, needs_root()]


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()




@pytest.mark.timeout(120)
@pytest.mark.parametrize("initiator", ["ipsecd", "strongswan"])
@pytest.mark.parametrize("auth,proposals,esp,alg", MATRIX,
                         ids=[f"{m[0]}-{m[1].split('-')[0]}-{m[1].split('-')[-1]}" for m in MATRIX])
def test_site_to_site_with_strongswan(lab: Lab, tmp_path: Path, initiator: str, auth: str,
                                      proposals: str, esp: str, alg: tuple[str, int]) -> None:
    topo = site_to_site(lab, routed=False)
    pki = Pki(auth) if auth != "psk" else None
    sw = charon(topo, tmp_path, proposals=proposals, esp=esp, pki=pki, families=(0, 1))
    a = ipsecd_ike(topo, tmp_path, proposals=proposals, esp=esp, pki=pki, families=(0, 1))
    try:
        bring_up(a, sw, initiator)
        sa = one_sa(sw)
        child = sa.child("net")
        assert child.encap
        assert (child.encr_alg, child.encr_keysize) == alg
        (ours,) = ipsecd_children(a)
        assert int(ours["spi_in"], 16) == child.spi_out
        assert int(ours["spi_out"], 16) == child.spi_in
        assert set(ours["local_ts"]) == set(topo.site_a)

        cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "wan.pcap")
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3, \
            a.log_text() + sw.log_tail()
        assert ping(topo.net_b.ns, topo.net_a.v4, count=3, interval=0.05) == 3
        assert ping(topo.net_a.ns, topo.net_b.v6, count=3, interval=0.05) == 3
        try:
            moved = tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4, size=3 << 20)
        finally:
            cap.stop()
        assert moved.received == 3 << 20
        esp_count, clear = esp_in_udp_and_clear(cap.packets(), {topo.net_a.v4, topo.net_b.v4})
        assert not clear, f"plaintext on the WAN: {clear[:5]}"
        assert esp_count >= 100
        counted = one_sa(sw).child("net")
        assert counted.packets_in >= 100 and counted.packets_out >= 9
    finally:
        status = a.stop()
        sw.stop()
    assert status == 0, a.log_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("initiator", ["ipsecd", "strongswan"])
def test_certificates_through_a_path_that_drops_ip_fragments(lab: Lab, tmp_path: Path,
                                                             initiator: str) -> None:
    """RSA-3072 chains do not fit 1280 bytes; IKE fragmentation (RFC 7383) must carry them."""
    topo = site_to_site(lab, routed=False)
    for host in (topo.gw_a_wan, topo.gw_b_wan):
        host.ns.ip(f"link set {host.ifname} mtu 1280")
        # like a middlebox that loses IP fragments: only IKE's own fragments get through
        host.ns.run("nft", "-f", "-", input=(
            "table netdev dropfrag {\n chain in {\n"
            f"  type filter hook ingress device \"{host.ifname}\" priority 0;\n"
            "  ip frag-off & 0x3fff != 0 counter drop\n }\n}\n").encode())
    pki = Pki("rsa3072")
    sw = charon(topo, tmp_path, pki=pki, extra={"fragmentation": "yes"})
    a = ipsecd_ike(topo, tmp_path, pki=pki)
    try:
        bring_up(a, sw, initiator)
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
        dropped = [h.ns.run("nft", "list", "table", "netdev", "dropfrag").stdout.decode()
                   for h in (topo.gw_a_wan, topo.gw_b_wan)]
        assert all("packets 0 " in d for d in dropped), dropped  # no IP fragment was needed
        assert "fragment" in sw.log_text().lower()  # charon saw (or sent) IKE fragments
    finally:
        status = a.stop()
        sw.stop()
    assert status == 0, a.log_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rekeyer", ["ipsecd", "strongswan"])
def test_rekeys_with_strongswan_under_traffic(lab: Lab, tmp_path: Path, rekeyer: str) -> None:
    """Child SAs and the IKE SA rekeyed by one side every few seconds while TCP runs."""
    topo = site_to_site(lab, routed=False)
    fast = rekeyer == "ipsecd"
    sw = charon(topo, tmp_path, esp="aes128gcm16-x25519",
                extra={} if fast else {"rekey_time": "5s", "over_time": "30s", "rand_time": "1s"},
                child_extra={} if fast else {"rekey_time": "3s", "life_time": "20s",
                                             "rand_time": "1s"})
    a = ipsecd_ike(topo, tmp_path, esp="aes128gcm16-x25519",
                   conn_extra={"rekey_time": "5s"} if fast else {},
                   child_extra={"rekey_time": "3s", "life_time": "20s"} if fast else {})
    try:
        bring_up(a, sw, "ipsecd")
        first_child = {c["spi_in"] for c in ipsecd_children(a)}
        first_ike = {s["spi_i"] for s in a.query("list-sas")["ike_sas"]}
        moved = tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4, seconds=12)
        assert moved.received > 1 << 20  # and all of it (tcp_transfer), across the rekeys
        children = ipsecd_children(a)
        assert children and {c["spi_in"] for c in children} != first_child
        assert {s["spi_i"] for s in a.query("list-sas")["ike_sas"]} != first_ike

        def agree() -> bool:  # a rekey may be under way at any moment: wait for a quiet one
            ours = ipsecd_children(a)
            theirs = [c for sa in sw.list_sas() if sa.state == "ESTABLISHED"
                      for c in sa.children if c.state == "INSTALLED"]
            return len(ours) == 1 and [int(ours[0]["spi_in"], 16)] == [c.spi_out for c in theirs]

        assert wait_until(agree, 10), (ipsecd_children(a), sw.list_sas())
        drops = a.query()["drops"]
        assert not {k: v for k, v in drops.items() if k in ("unknown_spi", "replay", "icv")}, drops
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
    finally:
        status = a.stop()
        sw.stop()
    assert status == 0, a.log_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("proposals,esp", [("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
                                           ("aes256-sha384-modp3072", "aes256-sha256")])
def test_key_schedule_matches_strongswan_and_no_key_leaks(lab: Lab, tmp_path: Path,
                                                          proposals: str, esp: str) -> None:
    """charon at "ike 4"/"chd 4" logs its secrets: ours must be derived the same, and none of
    them (nor the PSK) may appear in ipsecd's debug log, status or metrics."""
    import urllib.request

    from ipsecd.ike.constants import EncrId, IntegId, PrfId
    from ipsecd.ike.crypto import IkeSaSuite, ike_sa_keys_from_exchange

    topo = site_to_site(lab, routed=False)
    sw = charon(topo, tmp_path, proposals=proposals, esp=esp,
                debug_levels={"ike": 4, "chd": 4, "cfg": 1, "net": 1, "knl": 1})
    a = ipsecd_ike(topo, tmp_path, proposals=proposals, esp=esp, log_level="debug",
                   metrics="127.0.0.1:0")
    cap = topo.gw_a_wan.ns.capture("wan0", tmp_path / "ike.pcap")
    try:
        bring_up(a, sw, "ipsecd")
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
        a.query("rekey", name="s2s")  # child keys of a CREATE_CHILD_SA too
        assert wait_until(lambda: "rekeying" in a.log_text(), 5)
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05) == 3
        cap.stop()
        log = sw.log_text()
        entry = recorded_exchange(log, cap.packets(), "live")
        suite = IkeSaSuite(EncrId(entry["encr"]), PrfId(entry["prf"]),
                           IntegId(entry.get("integ", 0)), encr_key_bits=entry["key_bits"])
        seed, keys = ike_sa_keys_from_exchange(
            suite, *(bytes.fromhex(entry[k]) for k in ("Ni", "Nr", "g_ir", "SPIi", "SPIr")))
        assert seed.hex() == entry["SKEYSEED"]
        for name in ("SK_d", "SK_ei", "SK_er", "SK_pi", "SK_pr", "SK_ai", "SK_ar"):
            if name in entry:
                assert getattr(keys, name).hex() == entry[name], name
        # every secret charon printed (IKE and Child SA keys): not in what ipsecd shows
        secrets = [v for n, v in charon_dumps(log)
                   if len(v) >= 16 and ("secret" in n or "key" in n.lower() or n == "SKEYSEED")]
        assert len(secrets) >= 8, [n for n, _ in charon_dumps(log)]
        status = a.query()
        metrics_url = f"http://{status['metrics']}/metrics"
        with a.ns.enter():
            page = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        shown = (a.log_text() + str(status) + str(a.query("list-sas")) + page).lower()
        assert "debug" in a.log_text()  # it did log at debug level
        leaked = [v.hex()[:16] for v in secrets if v.hex() in shown or v.hex()[:16] in shown]
        assert not leaked, leaked
        assert PSK.lower() not in shown and PSK.encode().hex() not in shown
    finally:
        status_code = a.stop()
        sw.stop()
    assert status_code == 0, a.log_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("initiator", ["ipsecd", "strongswan"])
def test_ipcomp_with_charon_libipsec_comes_up_without_it(lab: Lab, tmp_path: Path,
                                                         initiator: str) -> None:
    """charon ``ipcomp = yes`` against ipsecd ``ipcomp = true``: no IPComp, traffic flows.

    kernel-libipsec cannot allocate a CPI (its ``get_cpi`` returns NOT_SUPPORTED),
    so charon neither offers IPCOMP_SUPPORTED nor accepts ours (RFC 7296 §2.22: an
    offer is declined by not answering it).  Both sides then run the child with
    ESP alone, and ipsecd installs no IPComp SA.
    """
    topo = site_to_site(lab, routed=False)
    sw = charon(topo, tmp_path, child_extra={"ipcomp": "yes"})
    a = ipsecd_ike(topo, tmp_path, child_extra={"ipcomp": True})
    try:
        bring_up(a, sw, initiator)
        (ours,) = ipsecd_children(a)
        assert ours["ipcomp"] is None
        assert not [sa for sa in a.query()["sas"] if sa["protocol"] == "ipcomp"]
        child = one_sa(sw).child("net")
        assert "cpi-in" not in child.raw and "cpi-out" not in child.raw  # no IPComp there either
        log = sw.log_text()
        assert "unable to allocate a CPI from kernel, IPComp disabled" in log
        if initiator == "ipsecd":
            assert "N(IPCOMP_SUP)" in log  # our offer reached charon, which did not answer it
        text = b"compressible " * 100
        assert ping(topo.net_a.ns, topo.net_b.v4, count=3, interval=0.05, payload=text) == 3, \
            a.log_text() + sw.log_tail()
        assert ping(topo.net_b.ns, topo.net_a.v4, count=3, interval=0.05, payload=text) == 3
        assert tcp_transfer(topo.net_a.ns, topo.net_b.ns, topo.net_b.v4,
                            size=1 << 20).received == 1 << 20
    finally:
        status = a.stop()
        sw.stop()
    assert status == 0, a.log_text()
