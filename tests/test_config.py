"""The daemon's TOML configuration: the examples parse, every mistake names its line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipsecd.cli import main
from ipsecd.config import ConfigError, key_lines, load, parse, socket_path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "deploy" / "examples"
MINIMAL = '[datapath]\noutside = ["eth0"]\n'


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_the_examples_parse_and_their_scripts_check(path: Path) -> None:
    cfg = load(path)
    assert cfg.datapath.outside
    assert cfg.setkey.script is not None and cfg.setkey.script.is_file()
    assert cfg.setkey.script.parent == EXAMPLES  # relative to the configuration file
    assert main(["run", "--check", "--config", str(path)]) == 0


def test_defaults() -> None:
    cfg = parse(MINIMAL, "c.toml", Path("/etc/ipsecd"))
    assert cfg.datapath.outside == ("eth0",)
    assert cfg.datapath.tun == "ipsec0" and cfg.datapath.mtu is None
    assert cfg.daemon.workers == 0 and cfg.daemon.worker_count >= 1
    assert str(cfg.daemon.state_dir) == "/run/ipsecd"
    assert str(cfg.control.socket) == "/run/ipsecd/ipsecd.sock"
    assert cfg.metrics.listen == ("127.0.0.1", 9765)
    assert cfg.setkey.script is None and cfg.setkey.rfc_mode
    assert cfg.daemon.level == 20


def test_everything_set() -> None:
    cfg = parse(
        '[daemon]\nname = "gw_1"\nworkers = 3\nstate_dir = "/run/x"\nlog_level = "notify"\n'
        "allow_legacy = true\nmax_sas = 64\n"
        '[datapath]\noutside = ["wan0", "wan1"]\ntun = "ips1"\nmtu = 1400\n'
        'tun_addresses = ["10.0.0.1/30", "fd00::1/64"]\nmark = 0x10\nroute_table = 100\n'
        'rule_priority = 900\ntx = "raw"\nnat_t_port = 4501\nreplay_window_max = 1024\n'
        '[control]\nsocket = "ctl.sock"\n[metrics]\nlisten = "[::1]:0"\n'
        '[setkey]\nscript = "/etc/ipsecd/x.setkey"\nrfc_mode = false\n',
        "c.toml", Path("/srv/conf"))
    assert cfg.daemon.name == "gw_1" and cfg.daemon.worker_count == 3 and cfg.daemon.level == 25
    assert cfg.datapath.mtu == 1400 and cfg.datapath.mark == 16 and cfg.datapath.tx == "raw"
    assert str(cfg.control.socket) == "/srv/conf/ctl.sock"
    assert cfg.metrics.listen == ("::1", 0) and cfg.metrics.text == "[::1]:0"
    assert str(cfg.setkey.script) == "/etc/ipsecd/x.setkey" and not cfg.setkey.rfc_mode
    # The control socket follows the state directory unless it is set.
    cfg = parse('[daemon]\nstate_dir = "/run/gw2"\n' + MINIMAL, "c.toml")
    assert str(cfg.control.socket) == "/run/gw2/ipsecd.sock"
    assert parse('[metrics]\nlisten = ""\n' + MINIMAL).metrics.listen is None


BAD = [
    # (text, line, message)
    ("[daemon]\nworkers = 2\n", 1, "datapath: required"),
    ('[datapath]\ntun = "x"\n', 1, "datapath.outside: required"),
    ('[daemon]\nworkers = 2\n\n[datapath]\noutside = "eth0"\n', 5,
     "datapath.outside: expected a list of interface names"),
    ('[datapath]\noutside = []\n', 2, "datapath.outside: expected a list of interface names"),
    ('[datapath]\noutside = ["eth0", "eth0"]\n', 2, "datapath.outside: an interface is listed twice"),
    ('[datapath]\noutside = ["this-name-is-far-too-long"]\n', 2, "datapath.outside"),
    (MINIMAL + "[daemon]\nworkerz = 2\n", 4, "daemon.workerz: unknown key (known: allow_legacy,"),
    (MINIMAL + "[deamon]\nworkers = 2\n", 3, "deamon: unknown table"),
    (MINIMAL + "[daemon]\nworkers = -1\n", 4, "daemon.workers: -1 is out of range 0..256"),
    (MINIMAL + '[daemon]\nworkers = "2"\n', 4, "daemon.workers: expected an integer"),
    (MINIMAL + '[daemon]\nlog_level = "verbose"\n', 4,
     "daemon.log_level: 'verbose': expected one of error, warning, notify, info, debug"),
    (MINIMAL + '[daemon]\nallow_legacy = "yes"\n', 4, "daemon.allow_legacy: expected true or false"),
    (MINIMAL + '[daemon]\nname = "my gw"\n', 4, "daemon.name: 'my gw'"),
    ('[datapath]\noutside = ["eth0"]\nmtu = "big"\n', 3,
     'datapath.mtu: expected "auto" or a number of bytes'),
    ('[datapath]\noutside = ["eth0"]\nmtu = 100\n', 3, "datapath.mtu: 100 is out of range 576..65535"),
    ('[datapath]\noutside = ["eth0"]\ntx = "fast"\n', 3,
     "datapath.tx: 'fast': expected one of ring, packet, raw"),
    ('[datapath]\noutside = ["eth0"]\nroute_table = 254\n', 3, "datapath.route_table: 253-255"),
    ('[datapath]\noutside = ["eth0"]\ntun = "eth0"\n', 3, "datapath.tun: the TUN device cannot"),
    ('[datapath]\noutside = ["eth0"]\ntun_addresses = ["10.0.0.300/24"]\n', 3,
     "datapath.tun_addresses: '10.0.0.300/24' is not an address/prefix"),
    (MINIMAL + '[metrics]\nlisten = "9765"\n', 4, "metrics.listen: expected HOST:PORT"),
    (MINIMAL + '[metrics]\nlisten = "localhost:99999"\n', 4, "metrics.listen: port 99999"),
    (MINIMAL + '[control]\nsocket = ""\n', 4, "control.socket: must not be empty"),
    (MINIMAL + "[control]\nsocket = \"/" + "x" * 120 + "\"\n", 4, "control.socket: path too long"),
    (MINIMAL + "[setkey]\nrfc_mode = 1\n", 4, "setkey.rfc_mode: expected true or false"),
    # Dotted keys and multi-line arrays keep the line count right.
    ('datapath.outside = 5\n', 1, "datapath.outside: expected a list of interface names"),
    ('[datapath]\noutside = [\n  "eth0",\n  "eth1",\n]\ntx = 3\n', 6,
     "datapath.tx: expected a string"),
    ('# comment [not a table]\n[datapath]\noutside = ["eth0"]  # [x\nmark = 0\n', 4,
     "datapath.mark: 0 is out of range"),
    # tomllib's own syntax errors, re-formatted.
    ('[datapath]\noutside = ["eth0"\n', 2, "Unclosed array"),  # at the end: the last line
    ('[datapath]\noutside = ["eth0"]\nmtu = = 3\n', 3, "Invalid value (column 7)"),
    ('[datapath]\n[datapath]\n', 2, "Cannot declare"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_mistakes_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "conf.toml")
    assert str(info.value).startswith(f"conf.toml:{line}: {message}"), str(info.value)
    assert info.value.line == line


def test_key_lines() -> None:
    lines = key_lines('a = 1\n[t]\nx = """\n[u]\n"""\ny = 2\n[t.sub]\n"q" = 3\n')
    assert lines == {"a": 1, "t": 2, "t.x": 3, "t.y": 6, "t.sub": 7, "t.sub.q": 8}


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/c.toml: cannot read: No such file"):
        load("/nonexistent/c.toml")
    path = tmp_path / "c.toml"
    path.write_bytes(b'[datapath]\noutside = ["eth0"]\n# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"c.toml:3: not UTF-8 text"):
        load(path)


def test_socket_path_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(MINIMAL + '[control]\nsocket = "/run/other/s.sock"\n')
    assert str(socket_path(None, "/x.sock")) == "/x.sock"
    assert str(socket_path(conf, None)) == "/run/other/s.sock"
    assert str(socket_path(None, None)) == "/run/ipsecd/ipsecd.sock"


def test_run_reports_a_bad_configuration_without_a_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[daemon]\nworkers = 2\n\n[datapath]\noutside = "eth0"\n')
    proc = subprocess.run([sys.executable, "-m", "ipsecd", "run", "--config", str(conf)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"{conf}:5: datapath.outside: expected a list of interface names\n"
    script = tmp_path / "bad.setkey"
    script.write_text("flush;\nspdflush\n")
    conf.write_text(MINIMAL + f'[setkey]\nscript = "{script}"\n')
    assert main(["run", "--check", "--config", str(conf)]) == 1
