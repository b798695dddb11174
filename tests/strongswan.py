"""strongSwan as a test peer: charon with its userspace ``kernel-libipsec`` datapath.

Theory of operation
-------------------
This kernel has no ESP, so strongSwan runs with ``kernel-libipsec``: charon
creates a TUN device (``ipsec0``, through ``/dev/net/tun``), and the
``kernel-netlink`` plugin -- still needed as the *network* backend for
addresses and routes, not for XFRM -- installs a route per CHILD_SA to the
remote traffic selector via that TUN in routing table 220.  Cleartext the
kernel routes into the TUN is encrypted in charon and sent from charon's
IKE socket: the Debian 12 build (strongSwan 5.9.8) always encapsulates ESP
in UDP 4500 (raw ESP came with 5.9.11), supports tunnel mode only and no ESN.

Each :class:`StrongSwan` is one charon inside a :class:`netns.Netns` *and* in
a private mount namespace (``ip netns exec NS unshare --mount --propagation
private sh -c '...; exec charon'``), so several instances coexist and none
sees or changes the host's ``/etc`` or ``/run``:

* a tmpfs on ``/run``: charon's pid file is compiled in as
  ``/var/run/charon.pid`` and a second charon refuses to start beside it;
* ``<workdir>/strongswan.conf`` bind-mounted on ``/etc/strongswan.conf``
  (our own plugin list, logging and vici socket; nothing from the host's
  ``/etc/strongswan.d`` is included);
* ``<workdir>/swanctl`` bind-mounted on ``/etc/swanctl``.

The vici socket lives in the work directory, outside the private ``/run``,
so this process talks to charon directly: a small vici client
(:class:`Vici`) for ``list-sas``, ``initiate`` and ``terminate``, and
``swanctl --load-all`` (with ``STRONGSWAN_CONF`` and ``SWANCTL_DIR`` pointing
into the work directory) for loading a swanctl.conf.  The charon process is
registered with the namespace's :class:`netns.Lab`, so it is stopped when the
lab closes, also when a test fails; its mounts vanish with its mount
namespace.  Every wait is bounded.

Needs the Debian packages strongswan-charon, strongswan-swanctl,
libcharon-extra-plugins (kernel-libipsec) and libstrongswan-standard-plugins
(openssl and gcm: AES-GCM).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from netns import Netns

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = "swanctl"

# The plugins charon loads (strongswan.conf ``charon.load``; no modular
# loading).  kernel-libipsec comes before kernel-netlink: the first IPsec
# backend registered is the one charon uses, and kernel-netlink would
# otherwise offer XFRM, which cannot carry ESP here.
PLUGINS = (
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "hmac", "kdf", "gcm", "chapoly",
    "curve25519", "pem", "pkcs1", "pkcs8", "x509", "revocation", "constraints", "pubkey",
    "kernel-libipsec", "kernel-netlink", "socket-default", "vici", "updown",
)

# swanctl is a vici client: it needs parsers for credentials, not crypto.
SWANCTL_PLUGINS = ("pem", "pkcs1", "pkcs8", "x509", "revocation", "constraints", "pubkey",
                   "openssl", "random")

# swanctl --load-all reads (and complains about missing) all of these.
SWANCTL_DIRS = ("conf.d", "x509", "x509ca", "x509aa", "x509ac", "x509crl", "x509ocsp",
                "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "pubkey")

# charon's log subsystems (strongswan.conf ``filelog``), levels -1..4.
DEFAULT_LEVELS: Mapping[str, int] = {"ike": 2, "cfg": 2, "knl": 2, "esp": 2, "net": 2}


class StrongSwanError(RuntimeError):
    """charon could not be started, or refused a command."""


# --- swanctl.conf and strongswan.conf as data --------------------------------------------

# A swanctl.conf / strongswan.conf section: values are strings, numbers,
# booleans (yes/no), lists (comma-separated) or nested sections.
Value = Union[str, int, bool, Sequence[str], "Mapping[str, Value]"]


def render(section: Mapping[str, Value], indent: int = 0) -> str:
    """The strongSwan settings syntax (swanctl.conf, strongswan.conf) for nested mappings."""
    pad = "    " * indent
    lines: list[str] = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.append(render(value, indent + 1))
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    if any(c in text for c in "{}#\n\"") or text != text.strip():
        raise ValueError(f"value not representable in strongSwan settings: {text!r}")
    return text


def _merge(base: dict[str, Value], extra: Mapping[str, Value]) -> dict[str, Value]:
    """``base`` with ``extra`` laid over it, sections merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _merge(dict(old), value)
        else:
            out[key] = value
    return out


@dataclass
class Child:
    """A CHILD_SA config (swanctl.conf ``connections.<conn>.children.<name>``)."""

    name: str
    local_ts: Sequence[str]
    remote_ts: Sequence[str]
    esp_proposals: Sequence[str] = ("aes256gcm16-x25519",)
    mode: str = "tunnel"  # kernel-libipsec in 5.9.8: tunnel only
    start_action: str = "none"  # none | trap | start
    replay_window: int | None = None
    extra: Mapping[str, Value] = field(default_factory=dict)
    """Further swanctl.conf keys of the child, laid over the ones above."""

    def section(self) -> dict[str, Value]:
        out: dict[str, Value] = {
            "local_ts": list(self.local_ts),
            "remote_ts": list(self.remote_ts),
            "esp_proposals": list(self.esp_proposals),
            "mode": self.mode,
            "start_action": self.start_action,
        }
        if self.replay_window is not None:
            out["replay_window"] = self.replay_window
        return _merge(out, self.extra)


@dataclass
class Connection:
    """An IKE connection (swanctl.conf ``connections.<name>``), PSK or certificate auth.

    ``auth`` is a swanctl auth round (``psk``, ``pubkey``); with ``pubkey``
    put the certificate file names (relative to ``x509/``) in ``local_certs``
    and pass the files, keys and CA to :meth:`StrongSwan.load`.
    """

    name: str
    local_addrs: Sequence[str]
    remote_addrs: Sequence[str]
    local_id: str
    remote_id: str
    children: Sequence[Child]
    version: int = 2
    proposals: Sequence[str] = ("aes256gcm16-prfsha256-x25519",)
    auth: str = "psk"
    local_certs: Sequence[str] = ()
    extra: Mapping[str, Value] = field(default_factory=dict)
    """Further swanctl.conf keys of the connection (``rekey_time``, ``dpd_delay``, ...)."""

    def section(self) -> dict[str, Value]:
        local: dict[str, Value] = {"auth": self.auth, "id": self.local_id}
        if self.local_certs:
            local["certs"] = list(self.local_certs)
        out: dict[str, Value] = {
            "version": self.version,
            "local_addrs": list(self.local_addrs),
            "remote_addrs": list(self.remote_addrs),
            "proposals": list(self.proposals),
            "local": local,
            "remote": {"auth": self.auth, "id": self.remote_id},
            "children": {c.name: c.section() for c in self.children},
        }
        return _merge(out, self.extra)


def swanctl_conf(connections: Iterable[Connection],
                 psks: Mapping[tuple[str, ...], str] | None = None,
                 extra: Mapping[str, Value] | None = None) -> str:
    """A swanctl.conf: the connections and one ``ike-N`` secret per tuple of ids in ``psks``."""
    conf: dict[str, Value] = {"connections": {c.name: c.section() for c in connections}}
    secrets: dict[str, Value] = {}
    for n, (ids, secret) in enumerate((psks or {}).items(), 1):
        entry: dict[str, Value] = {f"id-{k}": i for k, i in enumerate(ids, 1)}
        entry["secret"] = secret
        secrets[f"ike-{n}"] = entry
    if secrets:
        conf["secrets"] = secrets
    return render(_merge(conf, extra or {})) + "\n"


Site = tuple[str, str, Sequence[str]]
"""One end of a site-to-site tunnel: (wan address, IKE id, protected subnets)."""


def site_to_site_pair(*, left: Site, right: Site,
                      psk: str, name: str = "s2s", child: str = "net",
                      proposals: Sequence[str] = ("aes256gcm16-prfsha256-x25519",),
                      esp_proposals: Sequence[str] = ("aes256gcm16-x25519",),
                      replay_window: int | None = None) -> tuple[str, str]:
    """swanctl.conf for both ends of a PSK site-to-site tunnel: ``(left, right)``.

    ``left`` and ``right`` are :data:`Site` tuples.  Both ends use
    ``start_action = none``: the caller initiates explicitly.
    """
    def one(me: Site, peer: Site) -> str:
        conn = Connection(
            name=name, local_addrs=[me[0]], remote_addrs=[peer[0]],
            local_id=me[1], remote_id=peer[1], proposals=proposals,
            children=[Child(child, me[2], peer[2], esp_proposals=esp_proposals,
                            replay_window=replay_window)])
        return swanctl_conf([conn], {(me[1], peer[1]): psk})

    return one(left, right), one(right, left)


def strongswan_conf(workdir: Path, levels: Mapping[str, int], *,
                    plugins: Sequence[str] = PLUGINS,
                    extra: Mapping[str, Value] | None = None) -> str:
    """strongswan.conf for one instance: plugins, logging into ``workdir``, its vici socket."""
    log: dict[str, Value] = {
        "path": str(workdir / "charon.log"),
        "time_format": "%H:%M:%S",
        "time_add_ms": True,
        "ike_name": True,
        "append": False,
        "flush_line": True,
        "default": 1,
    }
    log.update(levels)
    conf: dict[str, Value] = {
        "charon": {
            "load_modular": False,
            "load": " ".join(plugins),
            "install_virtual_ip": False,
            "plugins": {
                "kernel-libipsec": {"allow_peer_ts": True},
                "vici": {"socket": f"unix://{workdir / 'charon.vici'}"},
            },
            "filelog": {"charon": log},
            "syslog": {"daemon": {"default": -1}},  # nothing into the host's journal
        },
        "swanctl": {"load": " ".join(SWANCTL_PLUGINS)},
    }
    return render(_merge(conf, extra or {})) + "\n"


# --- a minimal vici client (the protocol of swanctl and charon's vici plugin) -------------


class Vici:
    """A blocking vici client: ``request`` for commands, ``streamed`` for event-streamed ones.

    Wire format (src/libcharon/plugins/vici/README.md): each packet is a
    32-bit big-endian length, a type byte, a name for named types, and a
    message of typed elements (sections, key/values, lists).
    """

    CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN = 0, 1, 2
    EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN, EVENT = 3, 4, 5, 6, 7
    SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = 1, 2, 3, 4, 5, 6

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Vici:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # encoding

    @classmethod
    def encode(cls, msg: Mapping[str, Any]) -> bytes:
        out = bytearray()
        for key, value in msg.items():
            name = key.encode()
            if isinstance(value, Mapping):
                out += bytes([cls.SECTION_START, len(name)]) + name
                out += cls.encode(value)
                out.append(cls.SECTION_END)
            elif isinstance(value, list | tuple):
                out += bytes([cls.LIST_START, len(name)]) + name
                for item in value:
                    data = _vici_bytes(item)
                    out += bytes([cls.LIST_ITEM]) + struct.pack("!H", len(data)) + data
                out.append(cls.LIST_END)
            else:
                data = _vici_bytes(value)
                out += bytes([cls.KEY_VALUE, len(name)]) + name
                out += struct.pack("!H", len(data)) + data
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> dict[str, Any]:
        root: dict[str, Any] = {}
        stack = [root]
        current_list: list[str] | None = None
        off = 0

        def name() -> str:
            nonlocal off
            n = data[off]
            text = data[off + 1: off + 1 + n].decode(errors="replace")
            off += 1 + n
            return text

        def value() -> str:
            nonlocal off
            (n,) = struct.unpack_from("!H", data, off)
            text = data[off + 2: off + 2 + n].decode(errors="replace")
            off += 2 + n
            return text

        while off < len(data):
            kind = data[off]
            off += 1
            if kind == cls.SECTION_START:
                section: dict[str, Any] = {}
                stack[-1][name()] = section
                stack.append(section)
            elif kind == cls.SECTION_END:
                stack.pop()
            elif kind == cls.KEY_VALUE:
                key = name()
                stack[-1][key] = value()
            elif kind == cls.LIST_START:
                current_list = []
                stack[-1][name()] = current_list
            elif kind == cls.LIST_ITEM and current_list is not None:
                current_list.append(value())
            elif kind == cls.LIST_END:
                current_list = None
            else:
                raise StrongSwanError(f"vici: bad element type {kind} at {off - 1}")
        return root

    # transport

    def _send(self, kind: int, name: str | None, msg: Mapping[str, Any] | None = None) -> None:
        body = bytes([kind])
        if name is not None:
            body += bytes([len(name)]) + name.encode()
        body += self.encode(msg or {})
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise StrongSwanError("vici: charon closed the connection")
            buf += chunk
        return bytes(buf)

    def _recv(self) -> tuple[int, str | None, dict[str, Any]]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        body = self._recv_exact(length)
        kind, off, name = body[0], 1, None
        if kind in (self.EVENT,):
            n = body[1]
            name = body[2: 2 + n].decode()
            off = 2 + n
        return kind, name, self.decode(body[off:])

    def request(self, command: str, msg: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send a command and return its response message."""
        self._send(self.CMD_REQUEST, command, msg)
        while True:
            kind, _, reply = self._recv()
            if kind == self.CMD_RESPONSE:
                return reply
            if kind == self.CMD_UNKNOWN:
                raise StrongSwanError(f"vici: unknown command {command!r}")
            # events of an earlier registration: not ours to keep

    def streamed(self, command: str, event: str,
                 msg: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A command that answers with ``event`` packets before its response."""
        self._send(self.EVENT_REGISTER, event)
        kind, _, _ = self._recv()
        if kind != self.EVENT_CONFIRM:
            raise StrongSwanError(f"vici: cannot register for {event!r}")
        events: list[dict[str, Any]] = []
        self._send(self.CMD_REQUEST, command, msg)
        while True:
            kind, name, body = self._recv()
            if kind == self.EVENT and name == event:
                events.append(body)
            elif kind == self.CMD_RESPONSE:
                reply = body
                break
            elif kind == self.CMD_UNKNOWN:
                raise StrongSwanError(f"vici: unknown command {command!r}")
        self._send(self.EVENT_UNREGISTER, event)
        while self._recv()[0] != self.EVENT_CONFIRM:
            pass
        return events, reply


def _vici_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"yes" if value else b"no"
    return str(value).encode()


# --- SAs as charon reports them ------------------------------------------------------------


@dataclass(frozen=True)
class ChildSa:
    """One CHILD_SA from ``list-sas`` (the fields interop tests look at; all in ``raw``)."""

    name: str
    state: str
    mode: str
    protocol: str
    encap: bool
    spi_in: int
    spi_out: int
    encr_alg: str
    encr_keysize: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class IkeSa:
    """One IKE_SA from ``list-sas`` with its CHILD_SAs."""

    name: str
    state: str
    version: int
    local_host: str
    remote_host: str
    initiator: bool
    encr_alg: str
    children: tuple[ChildSa, ...]
    raw: Mapping[str, Any] = field(repr=False)

    def child(self, name: str) -> ChildSa:
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(name)


def _int(text: Any, base: int = 10) -> int:
    return int(text, base) if isinstance(text, str) and text else 0


def parse_sas(events: Iterable[Mapping[str, Any]]) -> list[IkeSa]:
    """``list-sa`` event messages ({ike name: {...}}) as :class:`IkeSa` objects."""
    out: list[IkeSa] = []
    for event in events:
        for ike_name, ike in event.items():
            children = tuple(
                ChildSa(
                    name=c.get("name", key), state=c.get("state", ""), mode=c.get("mode", ""),
                    protocol=c.get("protocol", ""), encap=c.get("encap") == "yes",
                    spi_in=_int(c.get("spi-in"), 16), spi_out=_int(c.get("spi-out"), 16),
                    encr_alg=c.get("encr-alg", ""), encr_keysize=_int(c.get("encr-keysize")),
                    local_ts=tuple(c.get("local-ts", ())), remote_ts=tuple(c.get("remote-ts", ())),
                    bytes_in=_int(c.get("bytes-in")), packets_in=_int(c.get("packets-in")),
                    bytes_out=_int(c.get("bytes-out")), packets_out=_int(c.get("packets-out")),
                    raw=c)
                for key, c in ike.get("child-sas", {}).items())
            out.append(IkeSa(
                name=ike_name, state=ike.get("state", ""), version=_int(ike.get("version")),
                local_host=ike.get("local-host", ""), remote_host=ike.get("remote-host", ""),
                initiator=ike.get("initiator") == "yes", encr_alg=ike.get("encr-alg", ""),
                children=children, raw=ike))
    return out


# --- one charon ----------------------------------------------------------------------------


class StrongSwan:
    """One charon (kernel-libipsec) in ``ns`` with its own mount namespace and ``workdir``.

    ``debug_levels`` are charon's log levels per subsystem (``{"ike": 4}``
    logs the IKE key material; the default level of the others is 1).
    ``conf_extra`` is laid over the generated strongswan.conf.
    """

    def __init__(self, ns: Netns, workdir: Path, *,
                 debug_levels: Mapping[str, int] | None = None,
                 conf_extra: Mapping[str, Value] | None = None,
                 charon: Path = CHARON, start_timeout: float = 15.0) -> None:
        self.ns = ns
        self.workdir = Path(workdir).absolute()
        self.levels = dict(DEFAULT_LEVELS if debug_levels is None else debug_levels)
        self.conf_extra = conf_extra or {}
        self.charon = charon
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    # paths

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def swanctl_dir(self) -> Path:
        return self.workdir / "swanctl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise StrongSwanError("charon is not running")
        return self.proc.pid

    # life cycle

    def __enter__(self) -> StrongSwan:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StrongSwan:
        """Start charon and return once its vici socket answers; raise if it cannot."""
        if self.proc is not None:
            raise StrongSwanError("already started")
        if not os.access(self.charon, os.X_OK):
            raise StrongSwanError(f"{self.charon} is missing: install strongswan-charon")
        if len(str(self.vici_path)) > 100:  # sockaddr_un.sun_path is 108 bytes
            raise StrongSwanError(f"work directory path too long for a unix socket: {self.workdir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in SWANCTL_DIRS:
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        conf = self.swanctl_dir / "swanctl.conf"
        if not conf.exists():
            conf.write_text("")
        self.conf_path.write_text(strongswan_conf(self.workdir, self.levels,
                                                  extra=self.conf_extra))
        self.vici_path.unlink(missing_ok=True)
        script = " && ".join([
            # nothing we mount here propagates back (ip netns exec already
            # made / a slave; --propagation private cuts it off entirely)
            "mount -t tmpfs -o mode=0755,size=4m tmpfs /run",
            f"mount --bind {shlex.quote(str(self.conf_path))} /etc/strongswan.conf",
            f"mount --bind {shlex.quote(str(self.swanctl_dir))} /etc/swanctl",
            f"exec {shlex.quote(str(self.charon))}",
        ])
        with open(self.workdir / "charon.stderr", "wb") as err:
            self.proc = self.ns.popen("unshare", "--mount", "--propagation", "private",
                                      "sh", "-c", script,
                                      stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise StrongSwanError(f"charon in {self.ns.name} exited with "
                                      f"{code}:\n{self._diagnostics()}")
            with contextlib.suppress(OSError, StrongSwanError), Vici(str(self.vici_path), timeout=2) as v:
                v.request("version")
                break
            if time.monotonic() > deadline:
                self.stop()
                raise StrongSwanError(f"charon in {self.ns.name} did not answer on vici "
                                      f"within {self.start_timeout} s:\n{self._diagnostics()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (charon closes its SAs and removes its TUN and routes), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # commands

    def vici(self, timeout: float = 30.0) -> Vici:
        """A new vici connection to this charon (close it, or use ``with``)."""
        return Vici(str(self.vici_path), timeout)

    def swanctl(self, *args: str, timeout: float = 20.0) -> str:
        """Run swanctl against this charon; its output, or raise with it."""
        if shutil.which(SWANCTL) is None:
            raise StrongSwanError("swanctl is missing: install strongswan-swanctl")
        env = {**os.environ, "STRONGSWAN_CONF": str(self.conf_path),
               "SWANCTL_DIR": str(self.swanctl_dir)}
        proc = subprocess.run([SWANCTL, *args, "--uri", f"unix://{self.vici_path}"],
                              capture_output=True, timeout=timeout, env=env)
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0:
            raise StrongSwanError(f"swanctl {' '.join(args)} failed ({proc.returncode}):\n{out}")
        return out

    def load(self, swanctl_conf: str, files: Mapping[str, bytes | str] | None = None) -> str:
        """Write swanctl.conf (and credential files, paths relative to the swanctl
        directory such as ``x509ca/ca.pem`` or ``private/gw.key``) and load them all."""
        for rel, data in (files or {}).items():
            path = self.swanctl_dir / rel
            if self.swanctl_dir.resolve() not in path.resolve().parents:
                raise ValueError(f"credential path outside the swanctl directory: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                data = data.encode()
            path.write_bytes(data)
            if rel.startswith(("private/", "rsa/", "ecdsa/", "pkcs8/")):
                path.chmod(0o600)
        conf = self.swanctl_dir / "swanctl.conf"
        conf.write_text(swanctl_conf)
        return self.swanctl("--load-all", "--noprompt", "--file", str(conf))

    def initiate(self, child: str, *, ike: str | None = None, timeout: float = 15.0) -> None:
        """Bring up ``child`` (and its IKE_SA); raise with charon's log if it fails."""
        msg: dict[str, Any] = {"child": child, "timeout": int(timeout * 1000)}
        if ike is not None:
            msg["ike"] = ike
        with self.vici(timeout + 5) as v:
            logs, reply = v.streamed("initiate", "control-log", msg)
        if reply.get("success") != "yes":
            text = "\n".join(e.get("msg", "") for e in logs)
            raise StrongSwanError(f"initiating {child!r} failed: {reply.get('errmsg', '')}\n"
                                  f"{text}\n--- charon log tail ---\n{self.log_tail()}")

    def terminate(self, *, ike: str | None = None, child: str | None = None,
                  timeout: float = 10.0) -> None:
        """Close an IKE_SA (with its children) or one CHILD_SA, by config name."""
        msg: dict[str, Any] = {"timeout": int(timeout * 1000)}
        if ike is not None:
            msg["ike"] = ike
        if child is not None:
            msg["child"] = child
        with self.vici(timeout + 5) as v:
            _, reply = v.streamed("terminate", "control-log", msg)
        if reply.get("success") != "yes":
            raise StrongSwanError(f"terminate failed: {reply.get('errmsg', '')}")

    def list_sas(self) -> list[IkeSa]:
        """The IKE_SAs and CHILD_SAs charon holds now."""
        with self.vici() as v:
            events, _ = v.streamed("list-sas", "list-sa", {"noblock": "yes"})
        return parse_sas(events)

    def wait_established(self, child: str, timeout: float = 15.0) -> IkeSa:
        """Wait until a CHILD_SA named ``child`` is INSTALLED (e.g. on the responder)."""
        deadline = time.monotonic() + timeout
        while True:
            for sa in self.list_sas():
                if any(c.name == child and c.state == "INSTALLED" for c in sa.children):
                    return sa
            if time.monotonic() > deadline:
                raise StrongSwanError(f"no INSTALLED CHILD_SA {child!r} within {timeout} s\n"
                                      f"{self.log_tail()}")
            time.sleep(0.05)

    # logs

    def log_text(self) -> str:
        """charon's whole log so far (the levels given at construction)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _diagnostics(self) -> str:
        try:
            err = (self.workdir / "charon.stderr").read_text(errors="replace")
        except FileNotFoundError:
            err = ""
        return f"--- stderr ---\n{err}\n--- charon.log ---\n{self.log_tail()}"

    # accounting (benchmarks)

    def cpu_seconds(self) -> float:
        """User + system CPU time of charon (all its threads) so far."""
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


__all__ = [
    "CHARON", "DEFAULT_LEVELS", "PLUGINS", "Child", "ChildSa", "Connection", "IkeSa",
    "Site", "StrongSwan", "StrongSwanError", "Vici", "parse_sas", "process_cpu_seconds", "render",
    "site_to_site_pair", "strongswan_conf", "swanctl_conf",
]
