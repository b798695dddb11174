"""The daemon's configuration file: TOML, validated once at start.

``ipsecd run --config FILE`` reads one TOML file (stdlib :mod:`tomllib`)
into a :class:`Config`.  Every mistake is reported as ``FILE:LINE: what is
wrong`` - the line of the offending key (or of its table, or line 1 when a
required table is missing) - and nothing starts.  tomllib's own syntax
errors carry "(at line L, column C)"; they are re-formatted the same way.

The tables and keys, with their defaults (README.md, "Configuration",
documents them for operators; ``deploy/examples/`` has complete files)::

    [daemon]
    name = "main"            # instance name: nft table ipsecd_<name>, shm names
    workers = 0              # 0: one per CPU (os.cpu_count())
    state_dir = "/run/ipsecd"
    log_level = "info"       # racoon's names: error, warning, notify, info, debug
    allow_legacy = false     # admit 3DES, DES, Blowfish, CAST, HMAC-MD5
    max_sas = 1024           # slots of the shared SA table
    seq_file = "<state_dir>/<name>.seq"  # outbound sequence numbers of manual SAs, kept
                             # across restarts (AES-GCM must never reuse one); put it on
                             # persistent storage (e.g. /var/lib/ipsecd) to survive reboots

    [datapath]
    outside = ["eth0"]       # required: where ESP arrives and leaves
    tun = "ipsec0"
    mtu = "auto"             # TUN MTU: "auto" (smallest outside MTU) or a number
    tun_addresses = []       # optional "addr/len" on the TUN device
    mark = 1                 # SO_MARK of our ESP (policy routing skips the TUN)
    route_table = 220        # our routing table
    rule_priority = 10000    # priority of our "not fwmark" rules
    tx = "ring"              # ring | packet | raw
    nat_t_port = 4500        # RFC 3948 port for ESP in UDP
    replay_window_max = 4096 # largest anti-replay window an SA may ask for

    [control]
    socket = "<state_dir>/ipsecd.sock"

    [metrics]
    listen = "127.0.0.1:9765"   # "" turns the exporter off; port 0 picks one
    sa_labels = false           # also per-SA series labelled with the SPI

    [log]
    format = "text"          # text: human lines; json: one JSON object a line
    levels = {}              # per subsystem, e.g. { worker = "debug" } (default daemon.log_level)

    [setkey]
    script = ""              # loaded at start (manual keying), relative to this file
    rfc_mode = true          # in policies get fwd twins (setkey -r; false is -k)

    [ike]                    # IKEv2 (ipsecd.ike.config); off without [connections]
    port = 500               # IKE's UDP port; NAT-T uses datapath.nat_t_port
    psk_file = ""            # racoon's psk.txt; read at start: must be root's, mode 0600
    cookie_threshold = 50    # half-open IKE SAs before COOKIEs are demanded (RFC 7296 §2.6)
    half_open_max = 1000     # half-open IKE SAs in all
    half_open_per_peer = 20  # ... from one peer address
    retransmit_timeout = 1.0 # seconds (or a duration) before the first retransmission
    retransmit_base = 1.8    # each retransmission waits this much longer
    retransmit_tries = 5     # retransmissions before giving up

    [connections.NAME]       # NAME: 1-32 of A-Z a-z 0-9 _ . -; one per peer
    version = 2              # IKEv2 only (1: IKEv1, not supported yet)
    local_addrs = ["%any"]   # IP addresses, or "%any"
    remote_addrs = ["%any"]  # "%any": responder only (no start/trap/restart)
    local_port = 500         # default: ike.port
    remote_port = 500
    proposals = ["default"]  # IKE proposals, strongSwan syntax (ipsecd.ike.proposals)
    rekey_time = "4h"        # durations: seconds, or "500ms", "30s", "5m", "4h", "1d"; 0: never
    reauth_time = 0
    over_time = ""           # "": 10% of the longer of rekey_time and reauth_time
    dpd_delay = "30s"        # 0 disables dead peer detection
    dpd_timeout = "150s"
    dpd_action = "clear"     # clear | restart | trap
    encap = false            # force UDP encapsulation (NAT-T) without a NAT
    fragmentation = true     # RFC 7383
    keyingtries = 1          # 0: forever
    unique = "replace"       # no | replace | keep: a second IKE SA with the same remote id

    [connections.NAME.local]
    auth = "psk"             # psk (needs ike.psk_file) | pubkey
    id = ""                  # default: the first of local_addrs (or the IKE SA's address)
    certs = []               # pubkey: our chain, end entity first (files must exist)
    key = ""                 # pubkey: our private key

    [connections.NAME.remote]
    auth = "psk"             # psk | pubkey
    id = "%any"              # the peer's identity (ipsecd.ike.auth.parse_identity)
    cacerts = []             # pubkey: trust anchors

    [connections.NAME.children.CHILD]    # at least one per connection
    local_ts = ["dynamic"]   # traffic selectors (ipsecd.ike.ts.parse_ts)
    remote_ts = ["dynamic"]
    mode = "tunnel"          # tunnel | transport
    esp_proposals = ["default"]
    start_action = "none"    # none | trap | start
    close_action = "none"    # none | trap | start
    rekey_time = "1h"
    life_time = ""           # "": 110% of rekey_time; never less than rekey_time
    rekey_bytes = 0          # 0: no limit; life_* >= rekey_* when both are set
    life_bytes = 0
    rekey_packets = 0
    life_packets = 0
    replay_window = 1024     # 0 (off) or 32..datapath.replay_window_max
    ipcomp = false

A string stands for a list of one where a list is expected.  A missing
``[connections]`` table means no IKE: manual keying (``[setkey]``) only.

Relative paths are taken relative to the directory of the configuration
file, so an example directory can be moved as a whole.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecd.ike import config as ike_config
from ipsecd.ike.config import IkeConfig

#: racoon's log level names (racoon.conf(5), ``log``) and the ``logging`` levels they map to.
LOG_LEVELS = {"error": 40, "warning": 30, "notify": 25, "info": 20, "debug": 10}
TX_METHODS = ("ring", "packet", "raw")
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
_NAME = re.compile(r"[A-Za-z0-9_]{1,24}")
_TOMLLIB_AT = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOMLLIB_END = re.compile(r"^(?P<msg>.*?)\s*\(at end of document\)$")


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    name: str = "main"
    """Instance name; several daemons on one machine need different names only
    when they share a network namespace (the nft table and shm names carry it)."""
    workers: int = 0
    """Worker processes; 0 means one per CPU."""
    state_dir: Path = Path("/run/ipsecd")
    """Directory (mode 0700) for the control socket and the daemon's state files."""
    log_level: str = "info"
    """racoon's names: error, warning, notify, info, debug."""
    allow_legacy: bool = False
    """Admit the HOWTO's legacy algorithms (each use logs a warning)."""
    max_sas: int = 1024
    """Slots of the shared-memory SA table (an SA used both ways takes two)."""
    seq_file: Path | None = None
    """Where the outbound sequence numbers of manually keyed SAs are kept across restarts
    (default ``<state_dir>/<name>.seq``; put it on persistent storage to survive reboots)."""

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def level(self) -> int:
        return LOG_LEVELS[self.log_level]


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    outside: tuple[str, ...] = ()
    """Interfaces ESP arrives on and leaves from."""
    tun: str = "ipsec0"
    """Name of the multi-queue TUN device carrying the plaintext."""
    mtu: int | None = None
    """TUN MTU; None ("auto") is the smallest MTU of the outside interfaces."""
    tun_addresses: tuple[str, ...] = ()
    """Addresses ("192.0.2.1/24") to put on the TUN device; usually none."""
    mark: int = 1
    """SO_MARK on our ESP sockets: the policy-routing rule skips our table for it."""
    route_table: int = 220
    """Routing table that sends traffic to protected destinations into the TUN."""
    rule_priority: int = 10000
    """Priority of the ``not fwmark MARK lookup TABLE`` rules (below main's 32766)."""
    tx: str = "ring"
    """How ESP leaves (:class:`workers.rings.TxSender`): ring, packet or raw."""
    gro: bool = True
    """Coalesce decrypted TCP segments / UDP datagrams into GSO writes to the TUN (workers/offload.py)."""
    nat_t_port: int = 4500
    """UDP port of RFC 3948 ESP-in-UDP."""
    replay_window_max: int = 4096
    """Largest anti-replay window an SA may have (sizes the SA table)."""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = Path("/run/ipsecd/ipsecd.sock")
    """The control socket (mode 0600)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 9765)
    """Address and port of the Prometheus exporter; None turns it off."""
    sa_labels: bool = False
    """Also export per-SA series with an ``spi`` label (one series per SA: new at every rekey)."""

    @property
    def text(self) -> str:
        if self.listen is None:
            return ""
        host, port = self.listen
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"
    """``text`` (human lines) or ``json`` (one JSON object a line)."""
    levels: tuple[tuple[str, str], ...] = ()
    """(subsystem, racoon level name) pairs overriding ``daemon.log_level``."""


@dataclass(frozen=True, slots=True)
class SetkeyConfig:
    script: Path | None = None
    """setkey(8) script loaded at start (manual keying, the HOWTO's way)."""
    rfc_mode: bool = True
    """setkey's -r (true, default) or -k (false): fwd twins of in policies."""


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration (one file)."""

    path: Path
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    datapath: DatapathConfig = field(default_factory=DatapathConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    setkey: SetkeyConfig = field(default_factory=SetkeyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ike: IkeConfig = field(default_factory=IkeConfig)
    """IKE; ``ike.enabled`` is False (manual keying only) without ``[connections]``."""


# --- locating keys in the text --------------------------------------------------------

_TABLE_LINE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_LINE = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\")(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"))*)\s*=")


def _split_key(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def key_lines(text: str) -> dict[str, int]:
    """``"table.key"`` (and ``"table"``) -> the 1-based line where it is defined.

    A light scan, good enough for error messages: table headers and
    ``key =`` lines (dotted keys too); multi-line values are skipped by
    tracking open brackets and triple-quoted strings.
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        m = _TABLE_LINE.match(line)
        if m:
            table = _split_key(m.group(1))
            lines.setdefault(".".join(table), number)
            continue
        m = _KEY_LINE.match(line)
        if m:
            path = [*table, *_split_key(m.group(1))]
            for i in range(1, len(path) + 1):
                lines.setdefault(".".join(path[:i]), number)
            rest = line[m.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
            depth = max(0, _bracket_balance(rest))
    return lines


def _bracket_balance(line: str) -> int:
    code = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'", '""', line).split("#", 1)[0]
    return code.count("[") + code.count("{") - code.count("]") - code.count("}")


# --- validation ------------------------------------------------------------------------


class _Checker:
    """Turns the parsed TOML into dataclasses, naming the line of every mistake."""

    def __init__(self, file: str, text: str, data: dict[str, Any], base: Path) -> None:
        self.file = file
        self.lines = key_lines(text)
        self.data = data
        self.base = base

    def line(self, path: str) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return 1

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.line(path), f"{path}: {message}")

    def table(self, name: str, keys: Collection[str]) -> dict[str, Any]:
        return self.subtable(self.data, name, keys)

    def subtable(self, parent: Mapping[str, Any], path: str, keys: Collection[str],
                 name: str | None = None) -> dict[str, Any]:
        """``parent``'s table ``name`` (default: the last part of ``path``; ``{}`` if absent),
        with no key outside ``keys``."""
        value = parent.get(path.rpartition(".")[2] if name is None else name, {})
        if not isinstance(value, dict):
            raise self.fail(path, "expected a table ([" + path + "])")
        for key in value:
            if key not in keys:
                known = ", ".join(sorted(keys))
                raise self.fail(f"{path}.{key}", f"unknown key (known: {known})")
        return value

    # typed getters

    def boolean(self, table: dict[str, Any], path: str, default: bool) -> bool:
        value = table.get(path.rpartition(".")[2], default)
        if not isinstance(value, bool):
            raise self.fail(path, "expected true or false")
        return value

    def integer(self, table: dict[str, Any], path: str, default: int, lo: int, hi: int) -> int:
        value = table.get(path.rpartition(".")[2], default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, "expected an integer")
        if not lo <= value <= hi:
            raise self.fail(path, f"{value} is out of range {lo}..{hi}")
        return value

    def string(self, table: dict[str, Any], path: str, default: str) -> str:
        value = table.get(path.rpartition(".")[2], default)
        if not isinstance(value, str):
            raise self.fail(path, "expected a string")
        return value

    def number(self, table: dict[str, Any], path: str, default: float, lo: float,
               hi: float) -> float:
        value = table.get(path.rpartition(".")[2], default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, "expected a number")
        if not lo <= value <= hi:
            raise self.fail(path, f"{value} is out of range {lo:g}..{hi:g}")
        return float(value)

    def choice(self, table: dict[str, Any], path: str, default: str,
               choices: Collection[str]) -> str:
        value = self.string(table, path, default)
        if value not in choices:
            raise self.fail(path, f"{value!r}: expected one of {', '.join(choices)}")
        return value

    def strings(self, table: dict[str, Any], path: str, default: Sequence[str]) -> list[str]:
        """A non-empty list of strings; a single string stands for a list of one."""
        value = table.get(path.rpartition(".")[2], list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(path, "expected a string or a list of strings")
        if not value:
            raise self.fail(path, "must not be empty")
        return value

    def duration(self, table: dict[str, Any], path: str, default: str | float) -> float | None:
        """Seconds (:func:`ipsecd.ike.config.parse_duration`); None for ``""`` (derived later)."""
        value = table.get(path.rpartition(".")[2], default)
        if value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(path, 'expected a duration: seconds or e.g. "500ms", "30s", "5m", '
                                  '"4h", "1d"')
        try:
            return ike_config.parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def resolve(self, path: str, value: str) -> Path:
        """``value`` as a path, relative to the configuration file's directory."""
        if not value:
            raise self.fail(path, "must not be empty")
        if "\0" in value:
            raise self.fail(path, "a path cannot contain NUL")
        p = Path(value)
        return p if p.is_absolute() else (self.base / p)

    def path(self, table: dict[str, Any], path: str, default: Path | None) -> Path | None:
        key = path.rpartition(".")[2]
        if key not in table:
            return default
        value = self.string(table, path, "")
        if not value:
            return None
        return self.resolve(path, value)


def _parse_listen(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError("expected HOST:PORT or [IPV6]:PORT, or \"\" to turn the exporter off")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    if m.group(1):
        ipaddress.IPv6Address(host)
    return host, port


def parse(text: str, file: str = "<config>", base: Path | None = None) -> Config:
    """Validate configuration ``text``; :class:`ConfigError` names the line of a mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOMLLIB_AT.match(message)
        if m:
            raise ConfigError(file, int(m.group("line")),
                              f"{m.group('msg')} (column {m.group('col')})") from None
        m = _TOMLLIB_END.match(message)
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        raise ConfigError(file, max(line, 1), m.group("msg") if m else message) from None
    base = base if base is not None else Path.cwd()
    c = _Checker(file, text, data, base)
    for name in data:
        if name not in ("daemon", "datapath", "control", "metrics", "setkey", "log", "ike",
                        "connections"):
            raise c.fail(name, "unknown table (known: connections, control, daemon, datapath, "
                               "ike, log, metrics, setkey)")

    # [daemon]
    d = c.table("daemon", {k: "" for k in (
        "name", "workers", "state_dir", "log_level", "allow_legacy", "max_sas", "seq_file")})
    name = c.string(d, "daemon.name", "main")
    if not _NAME.fullmatch(name):
        raise c.fail("daemon.name", f"{name!r}: 1 to 24 letters, digits or _")
    log_level = c.string(d, "daemon.log_level", "info")
    if log_level not in LOG_LEVELS:
        raise c.fail("daemon.log_level", f"{log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    state_dir = c.path(d, "daemon.state_dir", Path("/run/ipsecd"))
    if state_dir is None:
        raise c.fail("daemon.state_dir", "must not be empty")
    daemon = DaemonConfig(
        name=name,
        workers=c.integer(d, "daemon.workers", 0, 0, 256),
        state_dir=state_dir,
        log_level=log_level,
        allow_legacy=c.boolean(d, "daemon.allow_legacy", False),
        max_sas=c.integer(d, "daemon.max_sas", 1024, 2, 1 << 20),
        seq_file=c.path(d, "daemon.seq_file", state_dir / f"{name}.seq"),
    )

    # [datapath]
    p = c.table("datapath", {k: "" for k in (
        "outside", "tun", "mtu", "tun_addresses", "mark", "route_table", "rule_priority", "tx",
        "gro", "nat_t_port", "replay_window_max")})
    if "datapath" not in data or "outside" not in p:
        raise c.fail("datapath.outside" if "datapath" in data else "datapath",
                     "required: the list of interfaces ESP arrives on, e.g. outside = [\"eth0\"]")
    outside = p["outside"]
    if (not isinstance(outside, list) or not outside
            or not all(isinstance(x, str) and _IFNAME.fullmatch(x) for x in outside)):
        raise c.fail("datapath.outside", "expected a list of interface names")
    if len(set(outside)) != len(outside):
        raise c.fail("datapath.outside", "an interface is listed twice")
    tun_name = c.string(p, "datapath.tun", "ipsec0")
    if not _IFNAME.fullmatch(tun_name):
        raise c.fail("datapath.tun", f"{tun_name!r} is not an interface name (1-15 characters)")
    if tun_name in outside:
        raise c.fail("datapath.tun", "the TUN device cannot be an outside interface")
    mtu_value = p.get("mtu", "auto")
    mtu: int | None
    if mtu_value == "auto":
        mtu = None
    elif isinstance(mtu_value, int) and not isinstance(mtu_value, bool):
        mtu = c.integer(p, "datapath.mtu", 0, 576, 65535)
    else:
        raise c.fail("datapath.mtu", "expected \"auto\" or a number of bytes")
    addresses = p.get("tun_addresses", [])
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise c.fail("datapath.tun_addresses", "expected a list of \"address/prefix\" strings")
    for a in addresses:
        try:
            ipaddress.ip_interface(a)
        except ValueError:
            raise c.fail("datapath.tun_addresses", f"{a!r} is not an address/prefix") from None
    tx = c.string(p, "datapath.tx", "ring")
    if tx not in TX_METHODS:
        raise c.fail("datapath.tx", f"{tx!r}: expected one of {', '.join(TX_METHODS)}")
    datapath = DatapathConfig(
        outside=tuple(outside),
        tun=tun_name,
        mtu=mtu,
        tun_addresses=tuple(addresses),
        mark=c.integer(p, "datapath.mark", 1, 1, 0xFFFFFFFF),
        route_table=c.integer(p, "datapath.route_table", 220, 1, 0xFFFFFFFF - 1),
        rule_priority=c.integer(p, "datapath.rule_priority", 10000, 1, 32765),
        tx=tx,
        gro=c.boolean(p, "datapath.gro", True),
        nat_t_port=c.integer(p, "datapath.nat_t_port", 4500, 1, 65535),
        replay_window_max=c.integer(p, "datapath.replay_window_max", 4096, 64, 65536),
    )
    if datapath.route_table in (253, 254, 255):
        raise c.fail("datapath.route_table", "253-255 are the kernel's default, main and local tables")

    # [control]
    ct = c.table("control", {"socket": ""})
    sock = c.path(ct, "control.socket", daemon.state_dir / "ipsecd.sock")
    if sock is None:
        raise c.fail("control.socket", "must not be empty")
    if len(os.fsencode(str(sock))) > 107:
        raise c.fail("control.socket", "path too long for a unix socket (107 bytes at most)")
    control = ControlConfig(socket=sock)

    # [metrics]
    mt = c.table("metrics", {"listen": "", "sa_labels": ""})
    try:
        listen = _parse_listen(c.string(mt, "metrics.listen", "127.0.0.1:9765"))
    except ValueError as exc:
        raise c.fail("metrics.listen", str(exc)) from None
    metrics = MetricsConfig(listen=listen, sa_labels=c.boolean(mt, "metrics.sa_labels", False))

    # [log]
    from ipsecd.log import FORMATS, SUBSYSTEMS

    lg = c.table("log", {"format": "", "levels": ""})
    log_format = c.string(lg, "log.format", "text")
    if log_format not in FORMATS:
        raise c.fail("log.format", f"{log_format!r}: expected one of {', '.join(FORMATS)}")
    levels = lg.get("levels", {})
    if not isinstance(levels, dict):
        raise c.fail("log.levels", 'expected a table, e.g. { worker = "debug" }')
    for subsystem, value in levels.items():
        if subsystem not in SUBSYSTEMS:
            raise c.fail(f"log.levels.{subsystem}",
                         f"unknown subsystem (known: {', '.join(SUBSYSTEMS)})")
        if value not in LOG_LEVELS:
            raise c.fail(f"log.levels.{subsystem}",
                         f"{value!r}: expected one of {', '.join(LOG_LEVELS)}")
    log = LogConfig(format=log_format, levels=tuple(sorted(levels.items())))

    # [setkey]
    s = c.table("setkey", {"script": "", "rfc_mode": ""})
    setkey = SetkeyConfig(
        script=c.path(s, "setkey.script", None),
        rfc_mode=c.boolean(s, "setkey.rfc_mode", True),
    )

    # [ike] and [connections.*] (ipsecd.ike.config)
    ike = ike_config.from_tables(c, allow_legacy=daemon.allow_legacy,
                                 nat_t_port=datapath.nat_t_port,
                                 replay_window_max=datapath.replay_window_max)
    return Config(Path(file), daemon, datapath, control, metrics, setkey, log, ike)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the file at ``path``; :class:`ConfigError` if it cannot be used."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(name, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(name, line, "not UTF-8 text") from None
    return parse(text, name, Path(name).resolve().parent)


def socket_path(config_path: str | os.PathLike[str] | None, socket: str | None) -> Path:
    """The control socket a client should use: ``--socket``, else the one ``--config`` names,
    else the default."""
    if socket:
        return Path(socket)
    if config_path:
        return load(config_path).control.socket
    return ControlConfig().socket


__all__ = [
    "LOG_LEVELS",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DaemonConfig",
    "DatapathConfig",
    "MetricsConfig",
    "SetkeyConfig",
    "key_lines",
    "load",
    "parse",
    "socket_path",
]
