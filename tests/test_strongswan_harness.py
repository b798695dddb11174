"""The strongSwan harness: two charon + kernel-libipsec gateways in the HOWTO's topology.

These tests do not skip when strongSwan is missing or broken: the interop
tests built on the harness would then silently prove nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ike_harness import esp_in_udp_and_clear
from netns import Lab, SiteToSite, lab_fixture, ping, site_to_site, wait_until
from strongswan import (
    Child,
    Connection,
    StrongSwan,
    StrongSwanError,
    Vici,
    parse_sas,
    site_to_site_pair,
    swanctl_conf,
)

root_only = pytest.mark.netns  # conftest.py fails these without root rather than skipping
PSK = "harness-test-" + "k" * 24


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


# --- pure parts -----------------------------------------------------------------------------


def test_swanctl_conf_is_data_driven() -> None:
    conn = Connection(
        name="c", local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"],
        local_id="a", remote_id="b",
        children=[Child("net", ["198.51.100.0/24"], ["203.0.113.0/24"], replay_window=64,
                        start_action="trap", extra={"rekey_time": "1h"})],
        extra={"remote": {"auth": "pubkey"}})
    text = swanctl_conf([conn], {("a", "b"): "s3cret"})
    assert "replay_window = 64" in text
    assert "start_action = trap" in text
    assert "rekey_time = 1h" in text
    assert "auth = pubkey" in text  # the extra section is merged, not replaced
    assert "id = b" in text
    assert "id-1 = a\n" in text and "secret = s3cret" in text
    with pytest.raises(ValueError):
        swanctl_conf([conn], {("a", "b"): 'quote " breaks the syntax'})


def test_vici_messages_round_trip() -> None:
    msg = {"child": "net", "timeout": "1000", "list": ["a", "b"],
           "section": {"inner": {"k": "v"}, "empty": []}}
    data = Vici.encode(msg)
    assert data[0] == Vici.KEY_VALUE and data[1] == len("child")
    assert Vici.decode(data) == msg


def test_list_sas_events_parse() -> None:
    event = {"s2s": {"state": "ESTABLISHED", "version": "2", "initiator": "yes",
                     "child-sas": {"net-1": {"name": "net", "state": "INSTALLED",
                                             "encap": "yes", "spi-in": "c0ffee01",
                                             "packets-in": "7", "local-ts": ["10.0.0.0/8"]}}}}
    (sa,) = parse_sas([event])
    assert sa.initiator and sa.version == 2
    child = sa.child("net")
    assert child.encap and child.spi_in == 0xC0FFEE01 and child.packets_in == 7
    assert child.local_ts == ("10.0.0.0/8",)


# --- charon in namespaces ----------------------------------------------------------------------


def _gateways(topo: SiteToSite, tmp: Path) -> tuple[StrongSwan, StrongSwan]:
    left, right = site_to_site_pair(
        left=(topo.gw_a_wan.v4, "gwa", list(topo.site_a)),
        right=(topo.gw_b_wan.v4, "gwb", list(topo.site_b)),
        psk=PSK, proposals=["aes256gcm16-prfsha256-x25519"],
        esp_proposals=["aes256gcm16-x25519"])
    gw_a = StrongSwan(topo.gw_a_wan.ns, tmp / "gwa").start()
    gw_b = StrongSwan(topo.gw_b_wan.ns, tmp / "gwb").start()
    gw_a.load(left)
    gw_b.load(right)
    return gw_a, gw_b


@root_only
@pytest.mark.netns
@pytest.mark.timeout(60)
def test_two_strongswan_gateways_carry_site_traffic_in_udp_4500(lab: Lab, tmp_path: Path) -> None:
    topo = site_to_site(lab, routed=False)
    # no clear route between the sites: whatever gets through went through the tunnel
    assert ping(topo.net_a.ns, topo.net_b.v4, count=1, timeout=0.3) == 0

    gw_a, gw_b = _gateways(topo, tmp_path)
    gw_a.initiate("net")
    gw_b.wait_established("net")

    (sa,) = gw_a.list_sas()
    assert sa.state == "ESTABLISHED" and sa.initiator and sa.version == 2
    child = sa.child("net")
    assert (child.state, child.mode, child.protocol) == ("INSTALLED", "TUNNEL", "ESP")
    assert child.encap  # kernel-libipsec in 5.9.8 always uses UDP encapsulation
    assert (child.encr_alg, child.encr_keysize) == ("AES_GCM_16", 256)
    assert set(child.local_ts) == set(topo.site_a) and set(child.remote_ts) == set(topo.site_b)
    (peer,) = gw_b.list_sas()
    assert peer.child("net").spi_out == child.spi_in and peer.child("net").spi_in == child.spi_out

    capture = topo.gw_a_wan.ns.capture(topo.gw_a_wan.ifname, tmp_path / "wan.pcap")
    assert ping(topo.net_a.ns, topo.net_b.v4, count=5, interval=0.05) == 5
    assert ping(topo.net_a.ns, topo.net_b.v6, count=3, interval=0.05) == 3
    capture.stop()

    # RFC 3948 §2.2: in UDP 4500 a non-zero first word is an ESP SPI (zero: IKE)
    esp_in_udp, clear = esp_in_udp_and_clear(capture.packets(), {topo.net_a.v4, topo.net_b.v4})
    assert not clear, f"plaintext on the WAN: {clear[:5]}"
    assert esp_in_udp >= 16, f"only {esp_in_udp} ESP-in-UDP packets on the WAN"

    counted = gw_a.list_sas()[0].child("net")
    assert counted.packets_out >= 8 and counted.packets_in >= 8
    assert "CHILD_SA net{1} established" in gw_a.log_text()

    # closing the IKE_SA closes the tunnel and removes its routes
    gw_a.terminate(ike="s2s")
    assert wait_until(lambda: not gw_b.list_sas(), 5)
    assert ping(topo.net_a.ns, topo.net_b.v4, count=1, timeout=0.3) == 0

    pids = [gw_a.pid, gw_b.pid]
    gw_a.stop()
    gw_b.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@root_only
@pytest.mark.netns
@pytest.mark.timeout(30)
def test_charon_that_cannot_start_fails_loudly(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("gw")
    with pytest.raises(StrongSwanError, match="missing"):
        StrongSwan(ns, tmp_path / "none", charon=Path("/nonexistent/charon")).start()
    # a critical plugin ("!") that does not exist: charon exits at once
    broken = StrongSwan(ns, tmp_path / "broken",
                        conf_extra={"charon": {"load": "random nonce no-such-plugin!"}})
    with pytest.raises(StrongSwanError, match="exited"):
        broken.start()


@root_only
@pytest.mark.netns
@pytest.mark.timeout(30)
def test_charon_and_its_mounts_go_when_the_test_fails(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        a, b = lab.netns("a"), lab.netns("b")
        for ns in (a, b):  # two instances side by side: private /run, own pid file
            pids.append(StrongSwan(ns, tmp_path / ns.name[-1]).start().pid)
        mounts = Path(f"/proc/{pids[0]}/mountinfo").read_text()
        assert " /run " in mounts and " /etc/swanctl " in mounts
        raise RuntimeError("boom")
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in host_mounts  # nothing leaked into our mount namespace
