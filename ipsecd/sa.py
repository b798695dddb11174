"""Security associations as the SAD stores them (RFC 4301 §4.4.2).

A :class:`SecurityAssociation` is configuration: who, which SPI, which
algorithms and keys, which lifetimes.  The per-packet state (sequence
counter, replay window, cipher contexts) is built from it by the codecs
(:mod:`ipsecd.esp`, :mod:`ipsecd.ah`, :mod:`ipsecd.ipcomp`).

Keys are held in ``bytearray`` so that :meth:`SecurityAssociation.wipe` can
zero them when the SA is deleted.  Their ``repr`` never shows key bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field

from ipsecd.iana import EncrId, IntegId, IpcompId, IpProto

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Default anti-replay window in packets (issue #2: configurable 32..4096+).
DEFAULT_REPLAY_WINDOW = 1024
MAX_REPLAY_WINDOW = 65536


class Mode(enum.Enum):
    """IPsec mode of an SA; ``ANY`` is setkey's default (``-m any``)."""

    TRANSPORT = "transport"
    TUNNEL = "tunnel"
    ANY = "any"


class SAState(enum.Enum):
    """SA states as setkey's dump names them (``state=mature``)."""

    LARVAL = "larval"
    MATURE = "mature"
    DYING = "dying"  # soft lifetime reached
    DEAD = "dead"  # hard lifetime reached


@dataclass(slots=True)
class Lifetime:
    """One lifetime limit (RFC 4301 §4.4.2.1); 0 means unlimited.

    ``add_seconds`` counts from creation, ``use_seconds`` from first use,
    as PF_KEY's ``sadb_lifetime_addtime`` / ``usetime`` do.
    """

    add_seconds: int = 0
    use_seconds: int = 0
    bytes: int = 0
    packets: int = 0

    def is_unlimited(self) -> bool:
        return not (self.add_seconds or self.use_seconds or self.bytes or self.packets)


@dataclass(slots=True)
class UdpEncap:
    """RFC 3948 UDP encapsulation of ESP (NAT traversal): outer UDP ports."""

    sport: int = 4500
    dport: int = 4500


def _key_repr(key: bytearray) -> str:
    return f"<{len(key) * 8}-bit key>" if key else "<none>"


@dataclass(slots=True, eq=False)
class SecurityAssociation:
    """One SAD entry. ``src``/``dst`` are the outer addresses of the SA."""

    spi: int
    protocol: IpProto  # ESP, AH or IPCOMP
    src: IPAddress
    dst: IPAddress
    mode: Mode = Mode.ANY
    reqid: int = 0
    replay_window: int = DEFAULT_REPLAY_WINDOW  # packets; 0 disables the check
    enc: EncrId | None = None
    enc_key: bytearray = field(default_factory=bytearray, repr=False)
    auth: IntegId = IntegId.NONE
    auth_key: bytearray = field(default_factory=bytearray, repr=False)
    comp: IpcompId | None = None
    esn: bool = False
    encap: UdpEncap | None = None
    seq: int = 0  # last sequence number sent (outbound) - the next one is seq + 1
    hard: Lifetime = field(default_factory=Lifetime)
    soft: Lifetime = field(default_factory=Lifetime)
    state: SAState = SAState.MATURE
    legacy: bool = False  # True when the SA uses an algorithm that needs the legacy switch
    extra: dict[str, object] = field(default_factory=dict)  # -f options and flags setkey keeps

    def __post_init__(self) -> None:
        if not 0 <= self.spi <= 0xFFFFFFFF:
            raise ValueError(f"SPI {self.spi} out of range")
        if self.src.version != self.dst.version:
            raise ValueError("source and destination address families differ")
        if not 0 <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay window {self.replay_window} out of range 0..{MAX_REPLAY_WINDOW}")

    @property
    def key(self) -> tuple[int, IpProto, IPAddress]:
        """The SAD lookup key (RFC 4301 §4.1: SPI, protocol, destination)."""
        return (self.spi, self.protocol, self.dst)

    def describe_keys(self) -> str:
        """Key lengths only - safe for logs."""
        return f"enc={_key_repr(self.enc_key)} auth={_key_repr(self.auth_key)}"

    def wipe(self) -> None:
        """Zero the key material in place. The SA must not be used afterwards."""
        for key in (self.enc_key, self.auth_key):
            key[:] = bytes(len(key))  # in place: the same buffer, its length kept
        self.state = SAState.DEAD

    def replace(self, **changes: object) -> SecurityAssociation:
        """A copy with some fields changed; keys are copied, not shared."""
        copy = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        if "enc_key" not in changes:
            copy.enc_key = bytearray(self.enc_key)
        if "auth_key" not in changes:
            copy.auth_key = bytearray(self.auth_key)
        return copy
