"""The [ike] and [connections.*] tables: defaults, every mistake with its line, the examples."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest

from ipsecd.cli import main
from ipsecd.config import ConfigError, load, parse
from ipsecd.ike.config import (
    AuthConfig,
    ChildConfig,
    ConnectionConfig,
    IkeConfig,
    load_psks,
    parse_duration,
)
from ipsecd.ike.constants import IdType, ProtocolId
from ipsecd.ike.psk import PskFileError
from ipsecd.ike.ts import TsSpec
from ipsecd.sa import Mode

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "deploy" / "examples" / "ikev2-psk"

# Line numbers below count from these: BASE is lines 1-4, CONN 5-6, CHILD 7.
BASE = '[datapath]\noutside = ["eth0"]\n[ike]\npsk_file = "psk.txt"\n'
CONN = '[connections.gw]\nremote_addrs = ["192.0.2.2"]\n'
CHILD = "[connections.gw.children.net]\n"
ONE = BASE + CONN + CHILD


def _parse(text: str, base: Path = Path("/etc/ipsecd")) -> IkeConfig:
    return parse(text, "c.toml", base).ike


def _only(ike: IkeConfig) -> tuple[ConnectionConfig, ChildConfig]:
    (conn,) = ike.connections
    (child,) = conn.children
    return conn, child


# --- no IKE ------------------------------------------------------------------------------


def test_without_connections_ike_is_off() -> None:
    cfg = parse('[datapath]\noutside = ["eth0"]\n', "c.toml")
    assert cfg.ike == IkeConfig() and not cfg.ike.enabled and not cfg.ike.uses_psk
    ike = _parse(BASE + "port = 501\n")
    assert not ike.enabled and ike.port == 501 and ike.psk_file == Path("/etc/ipsecd/psk.txt")
    assert not _parse(BASE + "[connections]\n").enabled


# --- defaults ----------------------------------------------------------------------------


def test_ike_defaults() -> None:
    ike = _parse(ONE)
    assert ike.enabled and ike.uses_psk
    assert (ike.port, ike.nat_t_port) == (500, 4500)
    assert ike.psk_file == Path("/etc/ipsecd/psk.txt")  # relative to the configuration file
    assert (ike.cookie_threshold, ike.half_open_max, ike.half_open_per_peer) == (50, 1000, 20)
    assert (ike.retransmit_timeout, ike.retransmit_base, ike.retransmit_tries) == (1.0, 1.8, 5)
    ike = _parse(ONE.replace('outside = ["eth0"]\n', 'outside = ["eth0"]\nnat_t_port = 4501\n'))
    assert ike.nat_t_port == 4501  # from [datapath]


def test_connection_defaults() -> None:
    conn, child = _only(_parse(ONE))
    assert conn.name == "gw" and conn.version == 2 and conn.line == 5
    assert conn.local_addrs == ("%any",) and conn.remote_addrs == ("192.0.2.2",)
    assert (conn.local_port, conn.remote_port) == (500, 500)
    assert conn.proposals and all(p.protocol == ProtocolId.IKE for p in conn.proposals)
    assert (conn.rekey_time, conn.reauth_time, conn.over_time) == (4 * 3600, 0, 1440)
    assert (conn.dpd_delay, conn.dpd_timeout, conn.dpd_action) == (30, 150, "clear")
    assert not conn.encap and conn.fragmentation and conn.keyingtries == 1
    assert conn.unique == "replace" and not conn.responder_only
    # local_addrs %any: our identity is the address the IKE SA ends up on (None).
    assert conn.local == AuthConfig("psk", None) and conn.remote == AuthConfig("psk", None)

    assert child.name == "net"
    assert child.local_ts == (TsSpec(None),) and child.remote_ts == (TsSpec(None),)  # dynamic
    assert child.mode is Mode.TUNNEL
    assert child.esp_proposals and all(p.protocol == ProtocolId.ESP for p in child.esp_proposals)
    assert (child.start_action, child.close_action) == ("none", "none")
    assert child.rekey_time == 3600 and child.life_time == pytest.approx(3960)
    assert (child.rekey_bytes, child.life_bytes, child.rekey_packets, child.life_packets) == (
        0, 0, 0, 0)
    assert child.replay_window == 1024 and not child.ipcomp


def test_local_id_defaults_to_the_first_local_address() -> None:
    conn, _ = _only(_parse(BASE + CONN + 'local_addrs = ["2001:db8::1", "192.0.2.1"]\n' + CHILD))
    assert conn.local_addrs == ("2001:db8::1", "192.0.2.1")
    assert conn.local.id is not None and conn.local.id.id_type == IdType.ID_IPV6_ADDR
    assert conn.local.id.data == ipaddress.ip_address("2001:db8::1").packed
    assert conn.remote.id is None  # %any


def test_default_replay_window_follows_a_small_maximum() -> None:
    text = ONE.replace('outside = ["eth0"]\n', 'outside = ["eth0"]\nreplay_window_max = 256\n')
    _, child = _only(_parse(text))
    assert child.replay_window == 256


def test_life_time_follows_rekey_time_and_over_time_the_longer_timer() -> None:
    conn, child = _only(_parse(BASE + CONN + 'rekey_time = "1h"\nreauth_time = "2h"\n' + CHILD
                               + 'rekey_time = "10m"\n'))
    assert conn.over_time == pytest.approx(720)
    assert child.rekey_time == 600 and child.life_time == pytest.approx(660)
    _, child = _only(_parse(ONE + "rekey_time = 0\n"))
    assert child.rekey_time == 0 and child.life_time == 0


# --- everything set ----------------------------------------------------------------------


def test_everything_set(tmp_path: Path) -> None:
    for name in ("a.pem", "ca.pem", "inter.pem", "a.key"):
        (tmp_path / name).write_text("x")
    text = f"""\
[daemon]
allow_legacy = true
[datapath]
outside = ["eth0"]
nat_t_port = 4500
[ike]
port = 1500
psk_file = "/etc/secret/psk.txt"
cookie_threshold = 0
half_open_max = 10
half_open_per_peer = 10
retransmit_timeout = "500ms"
retransmit_base = 2
retransmit_tries = 0
[connections."a.b_c-1"]
version = 2
local_addrs = "192.0.2.1"
remote_addrs = ["192.0.2.2", "192.0.2.3"]
local_port = 1501
remote_port = 4500
proposals = "aes128-sha256-modp2048, 3des-sha1-modp1024"
rekey_time = 7200
reauth_time = "1d"
over_time = "5m"
dpd_delay = 0
dpd_timeout = "1m"
dpd_action = "restart"
encap = true
fragmentation = false
keyingtries = 0
unique = "keep"
[connections."a.b_c-1".local]
auth = "pubkey"
id = "gw-a.example.net"
certs = ["a.pem", "{tmp_path}/inter.pem"]
key = "a.key"
[connections."a.b_c-1".remote]
auth = "psk"
id = "192.0.2.2"
[connections."a.b_c-1".children.one]
local_ts = ["198.51.100.0/24", "2001:db8:a::/64"]
remote_ts = "203.0.113.0/24[tcp/443]"
mode = "transport"
esp_proposals = ["aes256gcm16-x25519", "3des-md5"]
start_action = "start"
close_action = "trap"
rekey_time = "30m"
life_time = "40m"
rekey_bytes = 1000
life_bytes = 1000
rekey_packets = 10
life_packets = 20
replay_window = 0
ipcomp = false
[connections."a.b_c-1".children.two]
ipcomp = true
start_action = "trap"
[connections.second]
remote_addrs = "%any"
[connections.second.remote]
auth = "pubkey"
cacerts = "ca.pem"
[connections.second.children.x]
"""
    ike = parse(text, "c.toml", tmp_path).ike
    assert ike.port == 1500 and ike.psk_file == Path("/etc/secret/psk.txt")
    assert (ike.cookie_threshold, ike.half_open_max, ike.half_open_per_peer) == (0, 10, 10)
    assert (ike.retransmit_timeout, ike.retransmit_base, ike.retransmit_tries) == (0.5, 2.0, 0)
    conn, second = ike.connections
    assert conn.name == "a.b_c-1" and conn.line == 15
    assert second.line == text.splitlines().index("[connections.second]") + 1 == 58
    assert conn.local_addrs == ("192.0.2.1",) and conn.remote_addrs == ("192.0.2.2", "192.0.2.3")
    assert (conn.local_port, conn.remote_port) == (1501, 4500)
    assert len(conn.proposals) == 2
    assert (conn.rekey_time, conn.reauth_time, conn.over_time) == (7200, 86400, 300)
    assert (conn.dpd_delay, conn.dpd_timeout, conn.dpd_action) == (0, 60, "restart")
    assert conn.encap and not conn.fragmentation and conn.keyingtries == 0
    assert conn.unique == "keep"
    assert conn.local.method == "pubkey" and conn.local.id is not None
    assert conn.local.id.id_type == IdType.ID_FQDN and conn.local.id.data == b"gw-a.example.net"
    assert conn.local.certs == (tmp_path / "a.pem", tmp_path / "inter.pem")
    assert conn.local.key == tmp_path / "a.key"
    assert conn.remote.method == "psk" and conn.remote.id is not None
    assert conn.remote.id.id_type == IdType.ID_IPV4_ADDR
    one, two = conn.children
    assert one.local_ts == (TsSpec(ipaddress.ip_network("198.51.100.0/24")),
                            TsSpec(ipaddress.ip_network("2001:db8:a::/64")))
    assert one.remote_ts == (TsSpec(ipaddress.ip_network("203.0.113.0/24"), 6, 443, 443),)
    assert one.mode is Mode.TRANSPORT and len(one.esp_proposals) == 2
    assert (one.start_action, one.close_action) == ("start", "trap")
    assert (one.rekey_time, one.life_time) == (1800, 2400)
    assert (one.rekey_bytes, one.life_bytes, one.rekey_packets, one.life_packets) == (
        1000, 1000, 10, 20)
    assert one.replay_window == 0 and not one.ipcomp
    assert two.name == "two" and two.start_action == "trap" and two.ipcomp
    assert second.responder_only and second.remote_addrs == ("%any",)
    assert second.remote == AuthConfig("pubkey", None, cacerts=(tmp_path / "ca.pem",))


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    (0, 0.0), (3600, 3600.0), (1.5, 1.5), ("0", 0.0), ("90", 90.0), ("30s", 30.0),
    ("5m", 300.0), ("4h", 14400.0), ("1d", 86400.0), ("500ms", 0.5), (" 2 h ", 7200.0),
    ("1.5h", 5400.0), (".5s", 0.5),
])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "4 hours", "-1", -1, "1w", "1e3", "nan",
                                  float("inf"), "4h30m", True])
def test_parse_duration_refuses(text: str | int | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- mistakes ----------------------------------------------------------------------------

BAD = [
    # [ike]
    (BASE + "prot = 1\n", 5, "ike.prot: unknown key (known: cookie_threshold, half_open_max,"),
    (BASE + "port = 0\n", 5, "ike.port: 0 is out of range 1..65535"),
    (BASE + 'port = "500"\n', 5, "ike.port: expected an integer"),
    (BASE + "port = 4500\n", 5, "ike.port: 4500 is also datapath.nat_t_port"),
    (BASE.replace('"psk.txt"', "1"), 4, "ike.psk_file: expected a string"),
    (BASE + "cookie_threshold = -1\n", 5, "ike.cookie_threshold: -1 is out of range"),
    (BASE + "half_open_max = 10\ncookie_threshold = 11\n", 6,
     "ike.cookie_threshold: 11 is more than ike.half_open_max (10)"),
    (BASE + "half_open_max = 0\n", 5, "ike.half_open_max: 0 is out of range 1..1048576"),
    (BASE + "half_open_max = 10\n\nhalf_open_per_peer = 11\n", 7,
     "ike.half_open_per_peer: 11 is more than ike.half_open_max (10)"),
    (BASE + "half_open_per_peer = 0\n", 5, "ike.half_open_per_peer: 0 is out of range"),
    (BASE + 'retransmit_timeout = "soon"\n', 5, "ike.retransmit_timeout: 'soon' is not a duration"),
    (BASE + "retransmit_timeout = 0\n", 5, "ike.retransmit_timeout: expected 10ms to 300s"),
    (BASE + "retransmit_base = 0.5\n", 5, "ike.retransmit_base: 0.5 is out of range 1..10"),
    (BASE + 'retransmit_base = "x"\n', 5, "ike.retransmit_base: expected a number"),
    (BASE + "retransmit_tries = 101\n", 5, "ike.retransmit_tries: 101 is out of range 0..100"),
    ('[datapath]\noutside = ["eth0"]\n[ike]\npsk_file = "psk.txt"\n\nike = 1\n', 6,
     "ike.ike: unknown key"),
    ('[datapath]\noutside = ["eth0"]\nike = 1\n', 3, "datapath.ike: unknown key"),
    ('ike = 3\n[datapath]\noutside = ["eth0"]\n', 1, "ike: expected a table ([ike])"),
    # [connections]
    ('connections = 1\n' + BASE, 1, "connections: expected tables [connections.NAME]"),
    (BASE + "[connections]\ngw = 1\n", 6, "connections.gw: expected a table ([connections.gw])"),
    (BASE + '[connections."a b"]\n', 5, "connections.a b: 'a b': a connection name is 1 to 32"),
    (BASE + f"[connections.{'x' * 33}]\n", 5, f"connections.{'x' * 33}: '{'x' * 33}': a connection"),
    (BASE + CONN, 5, "connections.gw: a connection needs at least one child: "
                     "[connections.gw.children.NAME]"),
    (BASE + CONN + "[connections.gw.children]\n", 7, "connections.gw.children: a connection needs"),
    (BASE + CONN + "children = 3\n", 7, "connections.gw.children: a connection needs"),
    (ONE + "[connections.gw.children.'x/y']\n", 8, "connections.gw.children.x/y: 'x/y': a child name"),
    (BASE + CONN + "rekey = 1\n" + CHILD, 7, "connections.gw.rekey: unknown key (known: children,"),
    # version
    (BASE + CONN + "version = 1\n" + CHILD, 7,
     "connections.gw.version: IKEv1 is not supported yet: use version = 2"),
    (BASE + CONN + "version = 3\n" + CHILD, 7, "connections.gw.version: expected 2 (IKEv2)"),
    (BASE + CONN + 'version = "2"\n' + CHILD, 7, "connections.gw.version: expected 2 (IKEv2)"),
    (BASE + CONN + "version = true\n" + CHILD, 7, "connections.gw.version: expected 2"),
    # addresses, ports
    (BASE + CONN + 'local_addrs = ["gw.example.net"]\n' + CHILD, 7,
     "connections.gw.local_addrs: 'gw.example.net' is not an IP address or %any"),
    (BASE + CONN + "local_addrs = []\n" + CHILD, 7, "connections.gw.local_addrs: must not be empty"),
    (BASE + CONN + "local_addrs = [1]\n" + CHILD, 7,
     "connections.gw.local_addrs: expected a string or a list of strings"),
    (BASE + CONN + 'local_addrs = ["%any", "192.0.2.1"]\n' + CHILD, 7,
     "connections.gw.local_addrs: %any cannot be listed with addresses"),
    (BASE + CONN + 'local_addrs = ["2001:db8::1", "2001:db8:0::1"]\n' + CHILD, 7,
     "connections.gw.local_addrs: an address is listed twice"),
    (BASE + CONN + 'local_addrs = "2001:db8::1"\n' + CHILD, 6,
     "connections.gw.remote_addrs: no address of the same family as local_addrs"),
    (BASE + CONN + "local_port = 65536\n" + CHILD, 7,
     "connections.gw.local_port: 65536 is out of range 1..65535"),
    (BASE + CONN + "remote_port = 0\n" + CHILD, 7, "connections.gw.remote_port: 0 is out of range"),
    # proposals
    (BASE + CONN + 'proposals = ["aes999-sha256-modp2048"]\n' + CHILD, 7,
     "connections.gw.proposals: unknown algorithm 'aes999'"),
    (BASE + CONN + 'proposals = ["3des-sha1-modp2048"]\n' + CHILD, 7,
     "connections.gw.proposals: algorithm '3des' in proposal '3des-sha1-modp2048' is legacy"),
    (BASE + CONN + "proposals = []\n" + CHILD, 7, "connections.gw.proposals: must not be empty"),
    # timers
    (BASE + CONN + 'rekey_time = "4 hours"\n' + CHILD, 7,
     "connections.gw.rekey_time: '4 hours' is not a duration"),
    (BASE + CONN + 'rekey_time = ""\n' + CHILD, 7, "connections.gw.rekey_time: must not be empty"),
    (BASE + CONN + "rekey_time = -5\n" + CHILD, 7, "connections.gw.rekey_time: -5 is not a duration"),
    (BASE + CONN + "reauth_time = true\n" + CHILD, 7,
     "connections.gw.reauth_time: expected a duration"),
    (BASE + CONN + 'over_time = "x"\n' + CHILD, 7, "connections.gw.over_time: 'x' is not a duration"),
    (BASE + CONN + 'dpd_delay = "1y"\n' + CHILD, 7, "connections.gw.dpd_delay: '1y' is not"),
    (BASE + CONN + "dpd_timeout = [1]\n" + CHILD, 7, "connections.gw.dpd_timeout: expected a duration"),
    (BASE + CONN + 'dpd_action = "hold"\n' + CHILD, 7,
     "connections.gw.dpd_action: 'hold': expected one of clear, restart, trap"),
    (BASE + CONN + 'encap = "yes"\n' + CHILD, 7, "connections.gw.encap: expected true or false"),
    (BASE + CONN + "fragmentation = 1\n" + CHILD, 7,
     "connections.gw.fragmentation: expected true or false"),
    (BASE + CONN + "keyingtries = -1\n" + CHILD, 7, "connections.gw.keyingtries: -1 is out of range"),
    (BASE + CONN + 'unique = "never"\n' + CHILD, 7,
     "connections.gw.unique: 'never': expected one of no, replace, keep"),
    # responder only
    (BASE + CONN.replace('"192.0.2.2"', '"%any"') + 'dpd_action = "restart"\n' + CHILD, 7,
     'connections.gw.dpd_action: "restart" initiates, but remote_addrs is %any (responder only)'),
    (BASE + CONN.replace('"192.0.2.2"', '"%any"') + CHILD + 'start_action = "trap"\n', 8,
     'connections.gw.children.net.start_action: "trap" initiates, but remote_addrs is %any'),
    (BASE + CONN.replace('"192.0.2.2"', '"%any"') + CHILD + 'close_action = "start"\n', 8,
     'connections.gw.children.net.close_action: "start" initiates'),
    # local / remote
    (BASE + CONN + "[connections.gw.local]\nauth = \"eap\"\n" + CHILD, 8,
     "connections.gw.local.auth: 'eap': expected one of psk, pubkey"),
    (BASE + CONN + "local = 1\n" + CHILD, 7,
     "connections.gw.local: expected a table ([connections.gw.local])"),
    (BASE + CONN + "[connections.gw.local]\ncacerts = []\n" + CHILD, 8,
     "connections.gw.local.cacerts: unknown key (known: auth, certs, id, key)"),
    (BASE + CONN + "[connections.gw.remote]\nkey = \"k\"\n" + CHILD, 8,
     "connections.gw.remote.key: unknown key (known: auth, cacerts, id)"),
    (BASE + CONN + "[connections.gw.local]\nid = \"%any\"\n" + CHILD, 8,
     "connections.gw.local.id: our own identity cannot be %any"),
    (BASE + CONN + "[connections.gw.local]\nid = 5\n" + CHILD, 8,
     "connections.gw.local.id: expected a string"),
    ('[datapath]\noutside = ["eth0"]\n' + CONN + CHILD, 3,
     'connections.gw.local.auth: "psk" needs [ike] psk_file (racoon\'s psk.txt)'),
    ('[datapath]\noutside = ["eth0"]\n' + CONN + "[connections.gw.local]\nauth = \"psk\"\n" + CHILD,
     6, 'connections.gw.local.auth: "psk" needs [ike] psk_file'),
    (BASE + CONN + "[connections.gw.local]\ncerts = [\"a.pem\"]\n" + CHILD, 8,
     'connections.gw.local.certs: only with auth = "pubkey"'),
    (BASE + CONN + "[connections.gw.remote]\ncacerts = [\"a.pem\"]\n" + CHILD, 8,
     'connections.gw.remote.cacerts: only with auth = "pubkey"'),
    (BASE + CONN + "[connections.gw.local]\nauth = \"pubkey\"\nkey = \"k\"\n" + CHILD, 8,
     'connections.gw.local.auth: "pubkey" needs certs (our chain, end entity first)'),
    (BASE + CONN + "[connections.gw.local]\nauth = \"pubkey\"\ncerts = \"c\"\n" + CHILD, 8,
     'connections.gw.local.auth: "pubkey" needs key (our private key)'),
    (BASE + CONN + "[connections.gw.local]\nauth = \"pubkey\"\ncerts = [\"nope.pem\"]\nkey = \"k\"\n"
     + CHILD, 9, "connections.gw.local.certs: /nonexistent/nope.pem: no such file"),
    (BASE + CONN + "[connections.gw.local]\nauth = \"pubkey\"\ncerts = []\nkey = \"k\"\n" + CHILD,
     9, "connections.gw.local.certs: must not be empty"),
    (BASE + CONN + "[connections.gw.remote]\nauth = \"pubkey\"\n" + CHILD, 8,
     'connections.gw.remote.auth: "pubkey" needs cacerts (the trust anchors)'),
    (BASE + CONN + "[connections.gw.remote]\nauth = \"pubkey\"\ncacerts = \"ca.pem\"\n" + CHILD, 9,
     "connections.gw.remote.cacerts: /nonexistent/ca.pem: no such file"),
    # children
    (ONE + "local_tss = []\n", 8, "connections.gw.children.net.local_tss: unknown key (known: close_"),
    (ONE + 'local_ts = ["10.0.0.0/33"]\n', 8,
     "connections.gw.children.net.local_ts: traffic selector '10.0.0.0/33': '10.0.0.0/33' is not"),
    (ONE + 'remote_ts = ["dynamic", "10.0.0.0/8[tcp/http]"]\n', 8,
     "connections.gw.children.net.remote_ts: port 'http'"),
    (ONE + "remote_ts = []\n", 8, "connections.gw.children.net.remote_ts: must not be empty"),
    (ONE + 'mode = "beet"\n', 8, "connections.gw.children.net.mode: 'beet': expected one of tunnel, "
                                 "transport"),
    (ONE + 'esp_proposals = ["aes128-prfsha256"]\n', 8,
     "connections.gw.children.net.esp_proposals: algorithm 'prfsha256'"),
    (ONE + 'esp_proposals = "3des-md5"\n', 8, "connections.gw.children.net.esp_proposals: algorithm "
                                              "'3des' in proposal '3des-md5' is legacy"),
    (ONE + 'start_action = "route"\n', 8,
     "connections.gw.children.net.start_action: 'route': expected one of none, trap, start"),
    (ONE + 'close_action = "clear"\n', 8, "connections.gw.children.net.close_action: 'clear'"),
    (ONE + 'rekey_time = "1 h 5 m"\n', 8, "connections.gw.children.net.rekey_time: '1 h 5 m' is not"),
    (ONE + 'life_time = "30m"\n', 8,
     "connections.gw.children.net.life_time: 1800 is less than rekey_time (3600)"),
    (ONE + "rekey_bytes = 100\nlife_bytes = 99\n", 9,
     "connections.gw.children.net.life_bytes: 99 is less than rekey_bytes (100)"),
    (ONE + "rekey_packets = 100\n\nlife_packets = 1\n", 10,
     "connections.gw.children.net.life_packets: 1 is less than rekey_packets (100)"),
    (ONE + "rekey_bytes = -1\n", 8, "connections.gw.children.net.rekey_bytes: -1 is out of range"),
    (ONE + "life_packets = 1.5\n", 8, "connections.gw.children.net.life_packets: expected an integer"),
    (ONE + "replay_window = 16\n", 8,
     "connections.gw.children.net.replay_window: 16: expected 0 (no anti-replay) or 32..4096"),
    (ONE + "replay_window = 8192\n", 8,
     "connections.gw.children.net.replay_window: 8192 is out of range 0..4096"),
    (ONE + 'ipcomp = "no"\n', 8, "connections.gw.children.net.ipcomp: expected true or false"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD, ids=[b[2][:60] for b in BAD])
def test_mistakes_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "conf.toml", Path("/nonexistent"))
    assert str(info.value).startswith(f"conf.toml:{line}: {message}"), str(info.value)
    assert info.value.line == line


def test_identity_mistakes_are_reported_at_the_id_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse(BASE + CONN + "[connections.gw.remote]\nauth = \"psk\"\nid = \"\"\n" + CHILD, "c.toml")
    assert str(info.value).startswith("c.toml:9: connections.gw.remote.id: ")


def test_inline_tables_report_their_line() -> None:
    text = BASE + CONN + 'local = { auth = "pubkey" }\n' + CHILD
    with pytest.raises(ConfigError, match=r'^c.toml:7: connections.gw.local.auth: "pubkey" needs'):
        parse(text, "c.toml")


def test_legacy_proposals_with_the_switch() -> None:
    text = ("[daemon]\nallow_legacy = true\n" + ONE
            + 'esp_proposals = "3des-md5"\n').replace(CONN, CONN + 'proposals = "3des-sha1-modp1024"\n')
    conn, child = _only(_parse(text))
    assert len(conn.proposals) == 1 and len(child.esp_proposals) == 1


# --- the pre-shared key file -------------------------------------------------------------


def _secret_dir(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    psk = tmp_path / "psk.txt"
    psk.write_text(text)
    os.chmod(psk, mode)
    return tmp_path


def test_load_psks(tmp_path: Path) -> None:
    uid = os.getuid()
    _secret_dir(tmp_path, "192.0.2.2 thisisatest\n")
    table = load_psks(_parse(ONE, tmp_path), owner_uid=uid)
    assert table is not None and bytes(table.lookup("192.0.2.2") or b"") == b"thisisatest"
    table.wipe()
    # No connection uses a PSK (or there is no IKE): nothing to read.
    assert load_psks(_parse(BASE, tmp_path), owner_uid=uid) is None
    (tmp_path / "ca.pem").write_text("x")
    pubkey = (BASE + CONN + '[connections.gw.local]\nauth = "pubkey"\ncerts = "ca.pem"\n'
              'key = "ca.pem"\n[connections.gw.remote]\nauth = "pubkey"\ncacerts = "ca.pem"\n'
              + CHILD)
    ike = _parse(pubkey, tmp_path)
    assert not ike.uses_psk and load_psks(ike, owner_uid=uid) is None


def test_load_psks_refuses_as_racoon(tmp_path: Path) -> None:
    _secret_dir(tmp_path, "192.0.2.2 thisisatest\n", 0o644)
    with pytest.raises(PskFileError, match="mode 0644 lets group or others") as info:
        load_psks(_parse(ONE, tmp_path), owner_uid=os.getuid())
    assert "thisisatest" not in str(info.value)
    os.chmod(tmp_path / "psk.txt", 0o600)
    with pytest.raises(PskFileError, match="must be owned by uid"):
        load_psks(_parse(ONE, tmp_path), owner_uid=os.getuid() + 1)
    os.unlink(tmp_path / "psk.txt")
    with pytest.raises(PskFileError, match="cannot read"):
        load_psks(_parse(ONE, tmp_path))


# --- the example ---------------------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """deploy/examples/ikev2-psk copied with its psk.txt as racoon wants it (0600, root's)."""
    target = tmp_path / "ikev2-psk"
    shutil.copytree(EXAMPLES, target)
    os.chmod(target / "psk.txt", 0o600)
    if os.getuid() == 0:
        os.chown(target / "psk.txt", 0, 0)
    return target


@pytest.mark.parametrize(("name", "me", "peer", "here", "there"), [
    ("gateway-a.toml", "192.0.2.1", "192.0.2.2", "198.51.100.0/24", "203.0.113.0/24"),
    ("gateway-b.toml", "192.0.2.2", "192.0.2.1", "203.0.113.0/24", "198.51.100.0/24"),
])
def test_the_examples_parse(example: Path, name: str, me: str, peer: str, here: str,
                            there: str) -> None:
    cfg = load(example / name)
    ike = cfg.ike
    assert ike.enabled and ike.uses_psk and ike.psk_file == example / "psk.txt"
    assert cfg.setkey.script is None  # keys come from IKE
    conn, child = _only(ike)
    assert conn.local_addrs == (me,) and conn.remote_addrs == (peer,)
    assert conn.local.method == conn.remote.method == "psk"
    assert conn.local.id is not None and conn.local.id.data == ipaddress.ip_address(me).packed
    assert conn.remote.id is not None and conn.remote.id.data == ipaddress.ip_address(peer).packed
    assert child.local_ts == (TsSpec(ipaddress.ip_network(here)),)
    assert child.remote_ts == (TsSpec(ipaddress.ip_network(there)),)
    assert child.mode is Mode.TUNNEL and child.start_action == "trap"
    table = load_psks(ike, owner_uid=os.getuid())
    assert table is not None
    # The file serves both sides: each finds the other's key, and it is the same key.
    mine, theirs = table.lookup(peer), table.lookup(me)
    assert mine is not None and mine == theirs and len(mine) == 32
    table.wipe()
    assert main(["run", "--check", "--config", str(example / name)]) == 0


def test_run_check_refuses_a_readable_psk_file(tmp_path: Path) -> None:
    """``ipsecd run --check`` loads psk.txt as the daemon would: mode 0644 is refused."""
    import subprocess
    import sys

    d = tmp_path / "ex"
    shutil.copytree(ROOT / "deploy" / "examples" / "ikev2-psk", d)
    (d / "psk.txt").chmod(0o644)
    cmd = [sys.executable, "-m", "ipsecd", "run", "--config", str(d / "gateway-a.toml"), "--check"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "psk.txt: mode 0644" in r.stderr and "chmod 600" in r.stderr
    (d / "psk.txt").chmod(0o600)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stderr
