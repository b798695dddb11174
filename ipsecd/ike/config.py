"""IKE's part of the configuration: the ``[ike]`` table and the ``[connections.*]`` tables.

The shape follows swanctl.conf(5): a connection is an IKE SA between two
gateways (addresses, proposals, how each side authenticates) and has one or
more children, each a Child SA with its traffic selectors and ESP proposals.
:func:`from_tables` turns the parsed TOML into the frozen dataclasses below,
reporting every mistake as ``FILE:LINE: path: message`` through the
configuration file's checker (:mod:`ipsecd.config` documents the keys and
their defaults).  No ``[connections]`` table means IKE is off: manual keying
only, as before.

Proposals, traffic selectors and identities are validated here, once, with
the parsers the IKE state machines use (:func:`ipsecd.ike.proposals.parse_ike`
and ``parse_esp``, :func:`ipsecd.ike.ts.parse_ts`,
:func:`ipsecd.ike.auth.parse_identity`), imported when a connection is
checked so that a configuration without IKE does not load them.

The pre-shared key file is *not* read here: it holds secrets and is read at
start (and by ``ipsecd run --check``) with racoon's mode and owner check,
:func:`load_psks`.  Certificate and key files must exist when the
configuration is parsed; their contents are read by the authentication code.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipsecd.sa import Mode

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ipsecd.config import _Checker
    from ipsecd.ike.messages import Identification, Proposal
    from ipsecd.ike.psk import PskTable
    from ipsecd.ike.ts import TsSpec

#: Names of connections and children (they label metrics and logs).
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
AUTH_METHODS = ("psk", "pubkey")
START_ACTIONS = ("none", "trap", "start")
CLOSE_ACTIONS = ("none", "trap", "start")
DPD_ACTIONS = ("clear", "restart", "trap")
UNIQUE_POLICIES = ("no", "replace", "keep")
MODES = {"tunnel": Mode.TUNNEL, "transport": Mode.TRANSPORT}
ANY = "%any"

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h|d)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_U64 = (1 << 64) - 1

_IKE_KEYS = ("port", "psk_file", "cookie_threshold", "half_open_max", "half_open_per_peer",
             "retransmit_timeout", "retransmit_base", "retransmit_tries")
_CONNECTION_KEYS = ("version", "local_addrs", "remote_addrs", "local_port", "remote_port",
                    "proposals", "rekey_time", "reauth_time", "over_time", "dpd_delay",
                    "dpd_timeout", "dpd_action", "encap", "fragmentation", "keyingtries",
                    "unique", "local", "remote", "children")
_LOCAL_KEYS = ("auth", "id", "certs", "key")
_REMOTE_KEYS = ("auth", "id", "cacerts")
_CHILD_KEYS = ("local_ts", "remote_ts", "mode", "esp_proposals", "start_action", "close_action",
               "rekey_time", "life_time", "rekey_bytes", "life_bytes", "rekey_packets",
               "life_packets", "replay_window", "ipcomp")


def parse_duration(text: str | int | float) -> float:
    """Seconds from ``3600``, ``"30s"``, ``"5m"``, ``"4h"``, ``"1d"``, ``"500ms"`` or ``"90"``.

    ValueError for anything else (negative, not finite, unknown unit).
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration, not true/false")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _DURATION.fullmatch(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a duration: expected seconds or a number with "
                             "a unit, e.g. \"500ms\", \"30s\", \"5m\", \"4h\", \"1d\"")
        value = float(m.group("value")) * _UNITS[m.group("unit")]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a duration: must be a finite number >= 0")
    return value


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How one side of a connection authenticates (swanctl's ``local`` / ``remote``)."""

    method: str
    """``psk`` (the key from ``[ike] psk_file``) or ``pubkey`` (certificates)."""
    id: Identification | None
    """The IKE identity; None is ``%any`` (remote: accept any; local: the IKE SA's address)."""
    certs: tuple[Path, ...] = ()
    """Local, pubkey: our certificate chain, end entity first."""
    key: Path | None = None
    """Local, pubkey: the private key of the end-entity certificate."""
    cacerts: tuple[Path, ...] = ()
    """Remote, pubkey: trust anchors for the peer's chain."""


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """A Child SA of a connection: traffic selectors, ESP proposals, lifetimes."""

    name: str
    local_ts: tuple[TsSpec, ...]
    """Our side's traffic selectors (``dynamic``: the IKE SA's address)."""
    remote_ts: tuple[TsSpec, ...]
    mode: Mode
    """Mode.TUNNEL or Mode.TRANSPORT."""
    esp_proposals: tuple[Proposal, ...]
    start_action: str
    """After the configuration is loaded: ``none``, ``trap`` (install policies, negotiate
    on the first packet) or ``start`` (negotiate now)."""
    close_action: str
    """When the peer closes the Child SA: ``none``, ``trap`` or ``start``."""
    rekey_time: float
    """Seconds; 0 never rekeys on time."""
    life_time: float
    """Seconds (hard limit); 0 is unlimited."""
    rekey_bytes: int
    life_bytes: int
    rekey_packets: int
    life_packets: int
    replay_window: int
    """Packets; 0 disables anti-replay."""
    ipcomp: bool


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """One ``[connections.NAME]``: an IKE SA with a peer and its children."""

    name: str
    version: int
    """IKE major version: 2 (1 is reserved for IKEv1, not supported yet)."""
    local_addrs: tuple[str, ...]
    """Our addresses (compressed form), or ``("%any",)``."""
    remote_addrs: tuple[str, ...]
    """The peer's addresses, or ``("%any",)``: responder only."""
    local_port: int
    remote_port: int
    proposals: tuple[Proposal, ...]
    local: AuthConfig
    remote: AuthConfig
    rekey_time: float
    """IKE SA rekeying, seconds; 0 disables."""
    reauth_time: float
    """IKE SA reauthentication, seconds; 0 disables."""
    over_time: float
    """Hard limit after rekey_time / reauth_time, seconds."""
    dpd_delay: float
    """Seconds without traffic from the peer before a liveness check; 0 disables DPD."""
    dpd_timeout: float
    dpd_action: str
    """``clear``, ``restart`` or ``trap`` when the peer is found dead."""
    encap: bool
    """Force UDP encapsulation (RFC 3948) even without a NAT."""
    fragmentation: bool
    """Offer/accept IKE fragmentation (RFC 7383)."""
    keyingtries: int
    """Initiation attempts; 0 tries forever."""
    unique: str
    """A second IKE SA with the same remote identity: ``no``, ``replace`` or ``keep``."""
    children: tuple[ChildConfig, ...]
    line: int
    """Line of the ``[connections.NAME]`` table, for messages."""

    @property
    def responder_only(self) -> bool:
        """The peer's address is not known: we can only answer."""
        return ANY in self.remote_addrs


@dataclass(frozen=True, slots=True)
class IkeConfig:
    """The ``[ike]`` table and every connection."""

    port: int = 500
    """UDP port of IKE."""
    nat_t_port: int = 4500
    """UDP port of IKE and ESP behind a NAT (``[datapath] nat_t_port``)."""
    psk_file: Path | None = None
    """racoon's psk.txt, read at start (:func:`load_psks`)."""
    cookie_threshold: int = 50
    """Half-open IKE SAs before COOKIEs are demanded (RFC 7296 §2.6)."""
    half_open_max: int = 1000
    half_open_per_peer: int = 20
    retransmit_timeout: float = 1.0
    """Seconds before the first retransmission (RFC 7296 §2.1)."""
    retransmit_base: float = 1.8
    """Each retransmission waits this much longer than the previous one."""
    retransmit_tries: int = 5
    connections: tuple[ConnectionConfig, ...] = ()

    @property
    def enabled(self) -> bool:
        """IKE runs only when a connection is configured."""
        return bool(self.connections)

    @property
    def uses_psk(self) -> bool:
        """Some connection authenticates a side with the pre-shared key file."""
        return any(side.method == "psk" for conn in self.connections
                   for side in (conn.local, conn.remote))


def load_psks(ike: IkeConfig, *, owner_uid: int = 0) -> PskTable | None:
    """The psk.txt (racoon's mode and owner check), or None when no connection uses one.

    Raises :class:`ipsecd.ike.psk.PskFileError` (``FILE:LINE: message``); the
    caller wipes the table when it is done with it.
    """
    if not ike.uses_psk or ike.psk_file is None:
        return None
    from ipsecd.ike.psk import load_psk_file

    return load_psk_file(ike.psk_file, owner_uid=owner_uid)


# --- from TOML ---------------------------------------------------------------------------


def from_tables(c: _Checker, *, allow_legacy: bool, nat_t_port: int,
                replay_window_max: int) -> IkeConfig:
    """``[ike]`` and ``[connections.*]`` of the parsed file; ConfigError on a mistake."""
    t = c.table("ike", _IKE_KEYS)
    port = c.integer(t, "ike.port", 500, 1, 65535)
    if port == nat_t_port:
        raise c.fail("ike.port", f"{port} is also datapath.nat_t_port")
    half_open_max = c.integer(t, "ike.half_open_max", 1000, 1, 1 << 20)
    cookie_threshold = c.integer(t, "ike.cookie_threshold", min(50, half_open_max), 0, 1 << 20)
    if cookie_threshold > half_open_max:
        raise c.fail("ike.cookie_threshold",
                     f"{cookie_threshold} is more than ike.half_open_max ({half_open_max}): "
                     "cookies would never be demanded")
    half_open_per_peer = c.integer(t, "ike.half_open_per_peer", min(20, half_open_max), 1,
                                   1 << 20)
    if half_open_per_peer > half_open_max:
        raise c.fail("ike.half_open_per_peer",
                     f"{half_open_per_peer} is more than ike.half_open_max ({half_open_max})")
    retransmit_timeout = c.duration(t, "ike.retransmit_timeout", 1.0)
    if retransmit_timeout is None or not 0.01 <= retransmit_timeout <= 300:
        raise c.fail("ike.retransmit_timeout", "expected 10ms to 300s")
    ike = IkeConfig(
        port=port,
        nat_t_port=nat_t_port,
        psk_file=c.path(t, "ike.psk_file", None),
        cookie_threshold=cookie_threshold,
        half_open_max=half_open_max,
        half_open_per_peer=half_open_per_peer,
        retransmit_timeout=retransmit_timeout,
        retransmit_base=c.number(t, "ike.retransmit_base", 1.8, 1.0, 10.0),
        retransmit_tries=c.integer(t, "ike.retransmit_tries", 5, 0, 100),
    )

    raw = c.data.get("connections", {})
    if not isinstance(raw, dict):
        raise c.fail("connections", "expected tables [connections.NAME]")
    connections = []
    for name in raw:
        path = f"connections.{name}"
        if not NAME.fullmatch(name):
            raise c.fail(path, f"{name!r}: a connection name is 1 to 32 letters, digits, "
                               "'_', '.' or '-'")
        connections.append(_connection(c, raw, path, name, ike, allow_legacy, replay_window_max))
    return replace(ike, connections=tuple(connections))


def _validated(c: _Checker, path: str, parse: Callable[[], Any],
               errors: tuple[type[Exception], ...] = (ValueError,)) -> Any:
    """Run one of the IKE parsers; its ValueError becomes a ConfigError naming ``path``."""
    try:
        return parse()
    except errors as exc:
        raise c.fail(path, str(exc)) from None


def _addresses(c: _Checker, table: dict[str, Any], path: str) -> tuple[str, ...]:
    texts = c.strings(table, path, [ANY])
    out: list[str] = []
    for text in texts:
        if text == ANY:
            out.append(ANY)
            continue
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise c.fail(path, f"{text!r} is not an IP address or {ANY}") from None
    if ANY in out and len(out) > 1:
        raise c.fail(path, f"{ANY} cannot be listed with addresses")
    if len(set(out)) != len(out):
        raise c.fail(path, "an address is listed twice")
    return tuple(out)


def _families(addrs: Sequence[str]) -> set[int]:
    return {ipaddress.ip_address(a).version for a in addrs if a != ANY}


def _files(c: _Checker, table: dict[str, Any], path: str) -> tuple[Path, ...]:
    files = tuple(c.resolve(path, text) for text in c.strings(table, path, []))
    for f in files:
        if not f.is_file():
            raise c.fail(path, f"{f}: no such file")
    return files


def _auth(c: _Checker, conn: dict[str, Any], path: str, local: bool, ike: IkeConfig,
          default_id: Identification | None) -> AuthConfig:
    t = c.subtable(conn, path, _LOCAL_KEYS if local else _REMOTE_KEYS)
    method = c.choice(t, f"{path}.auth", "psk", AUTH_METHODS)
    ident = default_id
    if "id" in t:
        text = c.string(t, f"{path}.id", "")
        if text == ANY:
            if local:
                raise c.fail(f"{path}.id", f"our own identity cannot be {ANY}")
            ident = None
        else:
            from ipsecd.ike.auth import AuthError, parse_identity

            ident = _validated(c, f"{path}.id", partial(parse_identity, text),
                               (ValueError, AuthError))
    if method == "psk":
        if ike.psk_file is None:
            raise c.fail(f"{path}.auth", '"psk" needs [ike] psk_file (racoon\'s psk.txt)')
        for field in ("certs", "key", "cacerts"):
            if field in t:
                raise c.fail(f"{path}.{field}", 'only with auth = "pubkey"')
        return AuthConfig("psk", ident)
    if local:
        if "certs" not in t:
            raise c.fail(f"{path}.auth", '"pubkey" needs certs (our chain, end entity first)')
        if "key" not in t:
            raise c.fail(f"{path}.auth", '"pubkey" needs key (our private key)')
        certs = _files(c, t, f"{path}.certs")
        key = c.resolve(f"{path}.key", c.string(t, f"{path}.key", ""))
        if not key.is_file():
            raise c.fail(f"{path}.key", f"{key}: no such file")
        return AuthConfig("pubkey", ident, certs=certs, key=key)
    if "cacerts" not in t:
        raise c.fail(f"{path}.auth", '"pubkey" needs cacerts (the trust anchors)')
    return AuthConfig("pubkey", ident, cacerts=_files(c, t, f"{path}.cacerts"))


def _connection(c: _Checker, raw: dict[str, Any], path: str, name: str, ike: IkeConfig,
                allow_legacy: bool, replay_window_max: int) -> ConnectionConfig:
    t = c.subtable(raw, path, _CONNECTION_KEYS, name)
    if "version" in t:
        version = t["version"]
        if version == 1 and not isinstance(version, bool):
            raise c.fail(f"{path}.version", "IKEv1 is not supported yet: use version = 2")
        if version != 2 or isinstance(version, bool):
            raise c.fail(f"{path}.version", "expected 2 (IKEv2)")
    local_addrs = _addresses(c, t, f"{path}.local_addrs")
    remote_addrs = _addresses(c, t, f"{path}.remote_addrs")
    local_families, remote_families = _families(local_addrs), _families(remote_addrs)
    if local_families and remote_families and not local_families & remote_families:
        raise c.fail(f"{path}.remote_addrs", "no address of the same family as local_addrs")
    from ipsecd.ike.proposals import parse_ike

    texts = c.strings(t, f"{path}.proposals", ["default"])
    proposals = _validated(c, f"{path}.proposals",
                           partial(parse_ike, texts, allow_legacy=allow_legacy))

    rekey_time = _duration(c, t, f"{path}.rekey_time", "4h")
    reauth_time = _duration(c, t, f"{path}.reauth_time", 0)
    over_time = c.duration(t, f"{path}.over_time", "")
    if over_time is None:  # swanctl: 10% of the longer of rekey_time and reauth_time
        over_time = 0.1 * max(rekey_time, reauth_time)
    dpd_action = c.choice(t, f"{path}.dpd_action", "clear", DPD_ACTIONS)
    responder_only = ANY in remote_addrs
    if responder_only and dpd_action != "clear":
        raise c.fail(f"{path}.dpd_action",
                     f'"{dpd_action}" initiates, but remote_addrs is {ANY} (responder only)')

    default_id: Identification | None = None
    literal = [a for a in local_addrs if a != ANY]
    if literal:
        from ipsecd.ike.messages import Identification

        default_id = Identification.from_address(ipaddress.ip_address(literal[0]))
    local = _auth(c, t, f"{path}.local", True, ike, default_id)
    remote = _auth(c, t, f"{path}.remote", False, ike, None)

    children_path = f"{path}.children"
    children_raw = t.get("children", {})
    if not isinstance(children_raw, dict) or not children_raw:
        raise c.fail(children_path if "children" in t else path,
                     f"a connection needs at least one child: [{children_path}.NAME]")
    children = []
    for child in children_raw:
        if not NAME.fullmatch(child):
            raise c.fail(f"{children_path}.{child}",
                         f"{child!r}: a child name is 1 to 32 letters, digits, '_', '.' or '-'")
        children.append(_child(c, children_raw, f"{children_path}.{child}", child, allow_legacy,
                               replay_window_max, responder_only))

    return ConnectionConfig(
        name=name,
        version=2,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        local_port=c.integer(t, f"{path}.local_port", ike.port, 1, 65535),
        remote_port=c.integer(t, f"{path}.remote_port", 500, 1, 65535),
        proposals=tuple(proposals),
        local=local,
        remote=remote,
        rekey_time=rekey_time,
        reauth_time=reauth_time,
        over_time=over_time,
        dpd_delay=_duration(c, t, f"{path}.dpd_delay", "30s"),
        dpd_timeout=_duration(c, t, f"{path}.dpd_timeout", "150s"),
        dpd_action=dpd_action,
        encap=c.boolean(t, f"{path}.encap", False),
        fragmentation=c.boolean(t, f"{path}.fragmentation", True),
        keyingtries=c.integer(t, f"{path}.keyingtries", 1, 0, 1 << 31),
        unique=c.choice(t, f"{path}.unique", "replace", UNIQUE_POLICIES),
        children=tuple(children),
        line=c.line(path),
    )


def _duration(c: _Checker, table: dict[str, Any], path: str, default: str | float) -> float:
    value = c.duration(table, path, default)
    if value is None:
        raise c.fail(path, "must not be empty")
    return value


def _at_least(c: _Checker, path: str, life: float, rekey: float, rekey_key: str) -> None:
    # A hard limit below the soft one would delete the SA before it is rekeyed.
    if life and rekey and life < rekey:
        raise c.fail(path, f"{life:g} is less than {rekey_key} ({rekey:g})")


def _child(c: _Checker, raw: dict[str, Any], path: str, name: str, allow_legacy: bool,
           replay_window_max: int, responder_only: bool) -> ChildConfig:
    t = c.subtable(raw, path, _CHILD_KEYS, name)
    from ipsecd.ike.proposals import parse_esp
    from ipsecd.ike.ts import parse_ts

    selectors: dict[str, list[TsSpec]] = {}
    for side in ("local_ts", "remote_ts"):
        key_path = f"{path}.{side}"
        selectors[side] = []
        for text in c.strings(t, key_path, ["dynamic"]):
            selectors[side].append(_validated(c, key_path, partial(parse_ts, text)))
    texts = c.strings(t, f"{path}.esp_proposals", ["default"])
    esp = _validated(c, f"{path}.esp_proposals", partial(parse_esp, texts, allow_legacy=allow_legacy))
    actions = {}
    for key, choices in (("start_action", START_ACTIONS), ("close_action", CLOSE_ACTIONS)):
        action = c.choice(t, f"{path}.{key}", "none", choices)
        if responder_only and action != "none":
            raise c.fail(f"{path}.{key}",
                         f'"{action}" initiates, but remote_addrs is {ANY} (responder only)')
        actions[key] = action

    rekey_time = _duration(c, t, f"{path}.rekey_time", "1h")
    life_time = c.duration(t, f"{path}.life_time", "")
    if life_time is None:  # swanctl: 110% of rekey_time
        life_time = rekey_time * 1.1
    _at_least(c, f"{path}.life_time", life_time, rekey_time, "rekey_time")
    counts = {key: c.integer(t, f"{path}.{key}", 0, 0, _U64)
              for key in ("rekey_bytes", "life_bytes", "rekey_packets", "life_packets")}
    _at_least(c, f"{path}.life_bytes", counts["life_bytes"], counts["rekey_bytes"], "rekey_bytes")
    _at_least(c, f"{path}.life_packets", counts["life_packets"], counts["rekey_packets"],
              "rekey_packets")

    from ipsecd.replay import MIN_REPLAY_WINDOW
    from ipsecd.sa import DEFAULT_REPLAY_WINDOW

    window = c.integer(t, f"{path}.replay_window", min(DEFAULT_REPLAY_WINDOW, replay_window_max),
                       0, replay_window_max)
    if 0 < window < MIN_REPLAY_WINDOW:
        raise c.fail(f"{path}.replay_window",
                     f"{window}: expected 0 (no anti-replay) or {MIN_REPLAY_WINDOW}.."
                     f"{replay_window_max}")
    return ChildConfig(
        name=name,
        local_ts=tuple(selectors["local_ts"]),
        remote_ts=tuple(selectors["remote_ts"]),
        mode=MODES[c.choice(t, f"{path}.mode", "tunnel", MODES)],
        esp_proposals=tuple(esp),
        start_action=actions["start_action"],
        close_action=actions["close_action"],
        rekey_time=rekey_time,
        life_time=life_time,
        rekey_bytes=counts["rekey_bytes"],
        life_bytes=counts["life_bytes"],
        rekey_packets=counts["rekey_packets"],
        life_packets=counts["life_packets"],
        replay_window=window,
        ipcomp=_ipcomp(c, t, path),
    )


def _ipcomp(c: _Checker, t: dict[str, Any], path: str) -> bool:
    """``ipcomp``: offer (initiator) or accept (responder) IPComp with DEFLATE for the
    child (RFC 7296 §2.22, RFC 3173).  False (the default): no IPCOMP_SUPPORTED is
    sent, and a peer's offer is declined by not answering it, which the RFC allows."""
    return c.boolean(t, f"{path}.ipcomp", False)


__all__ = [
    "AuthConfig",
    "ChildConfig",
    "ConnectionConfig",
    "IkeConfig",
    "from_tables",
    "load_psks",
    "parse_duration",
]
