"""The IKEv2 SA state machine (RFC 7296), sans-I/O.

One :class:`IkeSa` is one IKE SA, from the first IKE_SA_INIT to its
deletion, with its Child SAs.  It does no I/O and keeps no clock: the
caller (:mod:`ipsecd.ike.manager`) feeds it datagrams and the time, and
drains what it produced:

* :meth:`IkeSa.receive` - one IKE message (without the non-ESP marker);
* :meth:`IkeSa.handle_timer` - when :meth:`IkeSa.next_timer` is due;
* :meth:`IkeSa.initiate` / :meth:`IkeSa.add_child` / :meth:`IkeSa.rekey_child`
  / :meth:`IkeSa.delete` / :meth:`IkeSa.dpd` - what the operator or the
  datapath asks for;
* :meth:`IkeSa.events` - what happened: :class:`Send` (datagrams for the
  peer), :class:`ChildUp`, :class:`ChildDown`, :class:`IkeUp`,
  :class:`IkeDown`, :class:`IkeRekeyed`, :class:`InitialContact`.

Exchanges are strictly one request at a time in each direction (window
size 1, §2.3): the requests this side wants to make wait in a queue of
*tasks*.  Only the side that sent a request retransmits it (§2.1); a
duplicate request is answered from the cache of the last response without
being processed again.

Key material lives in this object (SK_* and the Child SA keys until the
manager installs them) and is never logged: log lines name SPIs and
algorithms only.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import logging
import os
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsecd.iana import IpcompId, IpProto
from ipsecd.ike import crypto, dh
from ipsecd.ike import proposals as props
from ipsecd.ike import ts as tsmod
from ipsecd.ike.constants import (
    AuthMethod,
    DhGroup,
    ExchangeType,
    NotifyType,
    ProtocolId,
    SignatureHashAlgorithm,
    TransformType,
)
from ipsecd.ike.errors import (
    IkeDecryptError,
    IkeError,
    IkeLocalError,
    IkeProtocolError,
    invalid_syntax,
)
from ipsecd.ike.messages import (
    AUTH,
    CERT,
    KE,
    SA,
    SKF,
    Delete,
    Identification,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    TSi,
    TSr,
    decode,
    decode_header,
    encode,
    nat_detection_hash,
)
from ipsecd.ipcomp import check_cpi
from ipsecd.sa import Lifetime, Mode, SAState, SecurityAssociation, UdpEncap

log = logging.getLogger("ipsecd.ike")
_ESP = IpProto.ESP

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NONCE_BYTES = 32  # §2.10: at least half the PRF key size, 16..256
FRAGMENT_BYTES = 1280  # RFC 7383 §2.5.1: a size that passes any IPv6 path
REKEY_ACTIVATE = 5.0  # at most this long a rekey responder keeps sending on the old SA
CHILD_LINGER = 2.0  # seconds an old inbound SA stays after its rekey: late packets still decrypt
HALF_OPEN_TIMEOUT = 30.0  # a responder IKE SA not authenticated by then is dropped (§2.4)
JITTER = 0.1  # rekey times are drawn from [90 %, 100 %] so both sides do not rekey at once


class State(enum.Enum):
    """Where an IKE SA is in its life."""

    CREATED = "created"
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    INIT_DONE = "init-done"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA; only its deletion is left
    DELETING = "deleting"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of the IKE conversation: address and UDP port."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


# --- events ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    """Datagrams for the peer (several when fragmented), from ``local`` to ``remote``."""

    datagrams: list[bytes]
    local: Endpoint
    remote: Endpoint
    retransmit: bool = False


@dataclass(slots=True)
class ChildUp:
    """A Child SA pair is negotiated: install it.  ``replaces`` is the child it rekeys."""

    ike: IkeSa
    child: ChildSa
    replaces: ChildSa | None = None


@dataclass(slots=True)
class ChildDown:
    """A Child SA pair is gone: remove the outbound SA now and the inbound after ``linger`` s."""

    ike: IkeSa
    child: ChildSa
    reason: str
    linger: float = 0.0


@dataclass(slots=True)
class ChildActivate:
    """A rekeyed child's outbound SA may now carry traffic (the responder waits, §2.8)."""

    ike: IkeSa
    child: ChildSa


@dataclass(slots=True)
class IkeUp:
    """The IKE SA is authenticated (``duration``: seconds since the first IKE_SA_INIT)."""

    ike: IkeSa
    duration: float


@dataclass(slots=True)
class IkeDown:
    """The IKE SA is gone; ``failed`` when it never came up or the peer stopped answering."""

    ike: IkeSa
    reason: str
    failed: bool = False
    peer_lost: bool = False  # retransmissions (or DPD) went unanswered


@dataclass(slots=True)
class IkeRekeyed:
    """``new`` replaces ``ike``: the Child SAs moved over; index the new SPIs."""

    ike: IkeSa
    new: IkeSa


@dataclass(slots=True)
class InitialContact:
    """The peer said INITIAL_CONTACT: other IKE SAs with this identity are stale (§2.4)."""

    ike: IkeSa


@dataclass(slots=True)
class ReauthNeeded:
    """``reauth_time`` passed: the manager makes a new IKE SA, then deletes this one."""

    ike: IkeSa


Event = (Send | ChildUp | ChildDown | ChildActivate | IkeUp | IkeDown | IkeRekeyed | InitialContact
         | ReauthNeeded)


# --- what the state machine needs from its environment ---------------------------------------


@dataclass
class IkeContext:
    """Services of the daemon the state machine calls (all synchronous, none blocks).

    ``psk(conn, remote_id, remote_address)`` returns the shared secret for a
    peer or None; ``credentials(conn)`` our certificate chain and private
    key for ``pubkey`` auth; ``trust(conn)`` the CA certificates to check
    the peer's chain against; ``connections(local, remote)`` the configured
    connections that may serve a peer at these addresses, best first.
    """

    settings: Any  # ipsecd.ike.config.IkeConfig
    allocate_spi: Callable[[], int]
    allocate_reqid: Callable[[], int]
    psk: Callable[[Any, Identification | None, IPAddress], bytes | bytearray | None]
    connections: Callable[[IPAddress, IPAddress], list[Any]]
    credentials: Callable[[Any], tuple[list[Any], Any] | None] = lambda conn: None
    trust: Callable[[Any], list[Any]] = lambda conn: []
    allow_legacy: bool = False
    random: Callable[[int], bytes] = os.urandom
    # Spreads rekey times; needs no secrecy, so no system call (os.urandom) for it.
    jitter: Callable[[], float] = _random.random
    on_count: Callable[[str], None] = lambda name: None  # "dpd_sent", for the metrics
    # the reqid of a child's trap policy (start_action = trap), which its SAs must carry
    reqid_for: Callable[[Any, Any], int | None] = lambda conn, child: None
    # IPComp (§2.22): a CPI for a new inbound IPComp SA, unique among ours (RFC 3173 §3.3:
    # 256-61439), reserved until released (installed, or the exchange failed)
    allocate_cpi: Callable[[], int] = lambda: _random_cpi()
    release_cpi: Callable[[int], None] = lambda cpi: None


def _random_cpi() -> int:
    return 256 + int.from_bytes(os.urandom(2), "big") % (61440 - 256)


# --- Child SAs -----------------------------------------------------------------------------


class ChildState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # we asked to rekey it
    REKEYED = "rekeyed"  # a new child replaces it; only its deletion is left
    DELETING = "deleting"
    DELETED = "deleted"


@dataclass(eq=False)
class ChildSa:
    """One negotiated Child SA pair and what the manager needs to install it."""

    name: str
    config: Any  # ipsecd.ike.config.ChildConfig
    reqid: int
    mode: Mode
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    inbound: SecurityAssociation
    outbound: SecurityAssociation
    proposal: str  # describe() of the chosen proposal
    created: float
    rekey_at: float  # time-based rekey (0: never)
    expire_at: float  # hard time limit (0: never)
    state: ChildState = ChildState.INSTALLED
    nonces: tuple[bytes, bytes] = (b"", b"")  # (Ni, Nr) of the exchange that made it (§2.8.1)
    initiated_by_us: bool = True  # we sent the exchange that created it
    replaced_by: ChildSa | None = None
    ipcomp_cpi: int = 0  # our CPI (inbound IPComp SA), 0: no IPComp (§2.22)
    activate_at: float = 0.0  # a rekey responder's new outbound SA waits until then at most
    # The IPComp SA pair (RFC 3173, DEFLATE) next to the ESP SAs, when negotiated.
    ipcomp_in: SecurityAssociation | None = None
    ipcomp_out: SecurityAssociation | None = None

    @property
    def spi_in(self) -> int:
        return self.inbound.spi

    @property
    def spi_out(self) -> int:
        return self.outbound.spi

    def summary(self) -> dict[str, Any]:
        """What ``ipsecd list-sas`` shows (no key material)."""
        return {
            "name": self.name, "reqid": self.reqid, "mode": self.mode.value,
            "state": self.state.value, "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}", "proposal": self.proposal,
            "local_ts": [tsmod.describe(t) for t in self.local_ts],
            "remote_ts": [tsmod.describe(t) for t in self.remote_ts],
            "encap": self.outbound.encap is not None, "created": self.created,
            "rekey_at": self.rekey_at, "expire_at": self.expire_at,
            "ipcomp": None if self.ipcomp_in is None or self.ipcomp_out is None else {
                "cpi_in": f"{self.ipcomp_in.spi:04x}", "cpi_out": f"{self.ipcomp_out.spi:04x}",
                "transform": "deflate"},
        }

    def wipe(self) -> None:
        self.inbound.wipe()
        self.outbound.wipe()


# --- tasks: requests this side wants to make ----------------------------------------------------


@dataclass(slots=True)
class _Task:
    kind: str  # "child" | "rekey-child" | "delete-child" | "rekey-ike" | "dpd" | "delete"
    child_config: Any = None
    child: ChildSa | None = None
    reason: str = ""


@dataclass(slots=True)
class _Outstanding:
    """Our request in flight: what to retransmit and how to handle its answer."""

    message_id: int
    datagrams: list[bytes]
    sent_at: float
    deadline: float
    tries: int
    task: _Task | None
    handler: Callable[[Message, list[Payload], float], None]
    # state of the exchange (nonces, keys, SPIs) for the handler
    state: dict[str, Any] = field(default_factory=dict)


def _payload(payloads: Sequence[Payload], kind: type[Any]) -> Any:
    for p in payloads:
        if isinstance(p, kind):
            return p
    return None


def _notify(payloads: Sequence[Payload], notify_type: NotifyType) -> Notify | None:
    for p in payloads:
        if isinstance(p, Notify) and p.notify_type == notify_type:
            return p
    return None


def _error_notify(payloads: Sequence[Payload]) -> Notify | None:
    for p in payloads:
        if isinstance(p, Notify) and p.is_error:
            return p
    return None


def _without_dh(proposals: Sequence[Proposal]) -> list[Proposal]:
    """Copies without key exchange transforms: what a child created in IKE_AUTH proposes."""
    return [Proposal(p.number, p.protocol, p.spi,
                     [t for t in p.transforms if t.type != TransformType.DH])
            for p in proposals]


def _peer_cpi(payloads: Sequence[Payload]) -> int | None:
    """The CPI of the first IPCOMP_SUPPORTED notify offering DEFLATE (§2.22), or None.

    Other transforms (LZS, LZJH, OUI, unknown ids) are passed over: DEFLATE is
    the one we implement.  A malformed notify or an unusable CPI counts as no
    offer (logged): IPComp is optional, the child is not.
    """
    for p in payloads:
        if not isinstance(p, Notify) or p.notify_type != NotifyType.IPCOMP_SUPPORTED:
            continue
        try:
            cpi, transform = p.ipcomp()
            if transform == IpcompId.IPCOMP_DEFLATE:
                return check_cpi(cpi, IpcompId.IPCOMP_DEFLATE)
        except (IkeError, ValueError) as exc:
            log.warning("IPCOMP_SUPPORTED ignored: %s", exc)
    return None


def _spi32(spi: bytes) -> int:
    if len(spi) != 4:
        raise invalid_syntax(f"ESP SPI of {len(spi)} octets")
    return int.from_bytes(spi, "big")


class IkeSa:
    """One IKE SA and its Child SAs (module docstring)."""

    def __init__(self, ctx: IkeContext, conn: Any, *, initiator: bool, local: Endpoint,
                 remote: Endpoint, now: float, spi_i: bytes | None = None) -> None:
        self.ctx = ctx
        self.conn = conn
        self.initiator = initiator
        self.local = local
        self.remote = remote
        self.state = State.CREATED
        self.created = now
        self.established_at = 0.0
        self.spi_i = spi_i if spi_i is not None else ctx.random(8)
        self.spi_r = b"\x00" * 8
        if not initiator:
            self.spi_r = ctx.random(8)
        self.children: list[ChildSa] = []
        self.keys: crypto.IkeSaKeys | None = None
        self._prf: crypto.IkePrf | None = None
        self._send_cipher: crypto.SkCipher | None = None
        self._recv_cipher: crypto.SkCipher | None = None
        self.suite_text = ""
        self.peer_id: Identification | None = None
        self.local_id: Identification | None = None
        self.nat_local = False  # we are behind a NAT
        self.nat_remote = False  # the peer is behind a NAT
        # "local" or "remote" when IKE_SA_INIT saw a NAT that no log line has told yet
        # (_nat_detect): the line that ends the setup carries it.
        self._nat_unlogged = ""
        self.peer_fragmentation = False
        self.peer_hashes: list[SignatureHashAlgorithm] = []
        self._events: list[Event] = []
        self._tasks: list[_Task] = []
        self._out: _Outstanding | None = None
        self._my_next_id = 0  # message id of our next request
        self._peer_next_id = 0  # message id we expect in the peer's next request
        self._last_response: tuple[int, list[bytes]] | None = None
        self._fragments: dict[int, dict[int, tuple[SKF, bytes]]] = {}
        self._last_heard = now
        self.rekey_at = 0.0
        self.expire_at = 0.0
        self.reauth_at = 0.0
        self.initial_contact = True  # False when this SA reauthenticates an existing one
        self.replaces: IkeSa | None = None
        self.half_open_deadline = now + HALF_OPEN_TIMEOUT if not initiator else 0.0
        self.retransmissions = 0
        self.dpd_failed = False
        self.down_reason = ""
        # exchange state of IKE_SA_INIT / IKE_AUTH
        self._dh_key: dh.PrivateKey | None = None
        self._group: DhGroup = DhGroup.NONE
        self._ni = b""
        self._nr = b""
        self._message1 = b""  # our (initiator) or the peer's (responder) IKE_SA_INIT request
        self._message2 = b""  # the IKE_SA_INIT response
        self._cookie = b""
        self._proposals: list[Proposal] = list(conn.proposals) if conn is not None else []
        self._init_tries = 0

    # -- identity ------------------------------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.conn.name if self.conn is not None else "?"

    def __repr__(self) -> str:
        return (f"<IkeSa {self.name} {self.spi_i.hex()}_i {self.spi_r.hex()}_r "
                f"{self.state.value} {self.local} - {self.remote}>")

    def describe(self) -> str:
        return f"{self.name}[{self.spi_i.hex()}_i {self.spi_r.hex()}_r]"

    @property
    def alive(self) -> bool:
        return self.state is not State.DEAD

    @property
    def half_open(self) -> bool:
        return self.state in (State.CREATED, State.INIT_SENT, State.INIT_DONE, State.AUTH_SENT)

    @property
    def encap(self) -> bool:
        return self.nat_local or self.nat_remote or bool(getattr(self.conn, "encap", False))

    def summary(self) -> dict[str, Any]:
        from ipsecd.ike.auth import describe_identity

        return {
            "name": self.name, "state": self.state.value,
            "initiator": self.initiator, "spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(),
            "local": str(self.local), "remote": str(self.remote),
            "local_id": describe_identity(self.local_id) if self.local_id else "",
            "remote_id": describe_identity(self.peer_id) if self.peer_id else "",
            "proposal": self.suite_text, "nat_local": self.nat_local,
            "nat_remote": self.nat_remote, "established": self.established_at,
            "rekey_at": self.rekey_at, "expire_at": self.expire_at,
            "children": [c.summary() for c in self.children],
        }

    # -- the caller's interface ----------------------------------------------------------------------

    def events(self) -> list[Event]:
        """What happened since the last call (and clears it)."""
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to run next (monotonic seconds), or None."""
        times: list[float] = []
        if self.state is State.DEAD:
            return None
        if self._out is not None:
            times.append(self._out.deadline)
            dpd_timeout = float(getattr(self.conn, "dpd_timeout", 0.0) or 0.0)
            if self._out.task is not None and self._out.task.kind == "dpd" and dpd_timeout:
                times.append(self._out.sent_at + dpd_timeout)
        if self.half_open_deadline:
            times.append(self.half_open_deadline)
        if self.state is State.ESTABLISHED:
            for t in (self.rekey_at, self.expire_at, self.reauth_at):
                if t:
                    times.append(t)
            for c in self.children:
                if c.state in (ChildState.INSTALLED,) and c.rekey_at:
                    times.append(c.rekey_at)
                if c.activate_at:
                    times.append(c.activate_at)
                if c.expire_at and c.state is not ChildState.DELETED:
                    times.append(c.expire_at)
            if self.conn.dpd_delay and self._out is None:
                times.append(self._last_heard + self.conn.dpd_delay)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state is State.DEAD:
            return
        if self.half_open_deadline and now >= self.half_open_deadline and self.half_open:
            self._die("not authenticated in time", failed=True, now=now)
            return
        out = self._out
        dpd_timeout = float(getattr(self.conn, "dpd_timeout", 0.0) or 0.0)
        if (out is not None and out.task is not None and out.task.kind == "dpd" and dpd_timeout
                and now >= out.sent_at + dpd_timeout):
            self._peer_lost(now)
            return
        if out is not None and now >= out.deadline:
            settings = self.ctx.settings
            if out.tries >= settings.retransmit_tries:
                self._peer_lost(now)
                return
            out.tries += 1
            self.retransmissions += 1
            out.deadline = now + settings.retransmit_timeout * settings.retransmit_base ** out.tries
            self._emit_send(out.datagrams, retransmit=True)
            log.debug("%s: retransmit %d of message %d", self.describe(), out.tries, out.message_id)
        if self.state is not State.ESTABLISHED:
            return
        if self.expire_at and now >= self.expire_at:
            self.delete(now, reason="IKE SA lifetime expired")
            return
        if self.reauth_at and now >= self.reauth_at:
            self.reauth_at = 0.0
            if self.initiator:
                self._events.append(ReauthNeeded(self))
        if self.rekey_at and now >= self.rekey_at:
            self.rekey_at = 0.0
            self._queue(_Task("rekey-ike"), now)
        for c in list(self.children):
            if c.activate_at and now >= c.activate_at:
                self._activate(c)
            if c.expire_at and now >= c.expire_at and c.state is not ChildState.DELETED:
                self._child_gone(c, "hard lifetime expired", now, linger=0.0)
                self._queue(_Task("delete-child", child=c), now)
            elif c.state is ChildState.INSTALLED and c.rekey_at and now >= c.rekey_at:
                c.rekey_at = 0.0
                self._queue(_Task("rekey-child", child=c), now)
        if (self.conn.dpd_delay and self._out is None and not self._tasks
                and now >= self._last_heard + self.conn.dpd_delay):
            self._queue(_Task("dpd"), now)

    def heard(self, now: float) -> None:
        """Traffic from the peer was seen (e.g. inbound ESP): no need for a DPD probe."""
        self._last_heard = max(self._last_heard, now)

    # -- initiator entry points --------------------------------------------------------------------

    def initiate(self, now: float, children: Sequence[Any] | None = None) -> None:
        """Start IKE_SA_INIT; ``children`` (configs) are created in IKE_AUTH and after it."""
        assert self.initiator and self.state is State.CREATED
        child_configs = list(children if children is not None else self.conn.children)
        for cfg in child_configs[1:]:
            self._tasks.append(_Task("child", child_config=cfg))
        self._first_child = child_configs[0] if child_configs else None
        groups = props.dh_groups(self._proposals)
        if not groups:
            raise IkeLocalError(f"connection {self.name}: no DH group in its proposals")
        self._group = groups[0]
        self._send_init(now)

    def add_child(self, now: float, config: Any) -> None:
        """Create another Child SA on this IKE SA (CREATE_CHILD_SA)."""
        self._queue(_Task("child", child_config=config), now)

    def rekey_child(self, now: float, child: ChildSa) -> None:
        if child.state is ChildState.INSTALLED:
            child.rekey_at = 0.0
            self._queue(_Task("rekey-child", child=child), now)

    def child_failed(self, now: float, child: ChildSa) -> None:
        """The datapath could not install a negotiated child: tell the peer it is gone."""
        if child.state is not ChildState.DELETED:
            self._child_gone(child, "not installed", now)
            self._queue(_Task("delete-child", child=child), now)

    def rekey(self, now: float) -> None:
        """Rekey the IKE SA itself (§2.18)."""
        self._queue(_Task("rekey-ike"), now)

    def dpd(self, now: float) -> None:
        self._queue(_Task("dpd"), now)

    def delete(self, now: float, reason: str = "deleted") -> None:
        """Delete the IKE SA and its children (INFORMATIONAL with Delete, §1.4.1)."""
        if self.state in (State.DEAD, State.DELETING):
            return
        if self.state is not State.ESTABLISHED and self.state is not State.REKEYED:
            self._die(reason, now=now)
            return
        self.state = State.DELETING
        self._tasks = [_Task("delete", reason=reason)]
        if self._out is None:
            self._run_tasks(now)
        # else: sent when the outstanding exchange ends (or is given up)

    def close(self, now: float, reason: str = "closed") -> None:
        """Forget the SA without telling the peer (shutdown after delete timed out, errors)."""
        self._die(reason, now=now)

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, data: bytes, now: float, remote: Endpoint | None = None,
                local: Endpoint | None = None) -> None:
        """One IKE message from the peer (the non-ESP marker already stripped)."""
        if self.state is State.DEAD:
            return
        try:
            header = decode_header(data)
        except IkeProtocolError as exc:
            log.debug("%s: malformed message dropped: %s", self.describe(), exc)
            return
        if header.exchange_type is ExchangeType.IKE_SA_INIT:
            if header.response:
                self.receive_init_response(data, now)
            elif (not self.initiator and header.message_id == 0
                  and self._last_response is not None and self._last_response[0] == 0
                  and data == self._message1):
                self._emit_send(self._last_response[1], retransmit=True)  # §2.1
            return
        if header.response:
            out = self._out
            if out is None or header.message_id != out.message_id:
                return  # a stray or late response: drop (§2.3)
            try:
                message, inner = self._open(data, header.exchange_type)
            except _Dropped:
                return
            except IkeProtocolError as exc:
                log.info("%s: malformed response: %s", self.describe(), exc)
                self._die(f"malformed response: {exc}", failed=self.half_open, now=now)
                return
            if message is None:
                return  # waiting for more fragments
            self._heard_from(remote, local, now)
            self._out = None
            self._handling = out
            try:
                out.handler(message, inner, now)
            except IkeProtocolError as exc:
                log.info("%s: %s response refused: %s", self.describe(),
                         header.exchange_type.name, exc)
                if self.half_open:
                    self._die(str(exc), failed=True, now=now)
                else:
                    self._abandon_task(out, now)
            except IkeError as exc:
                log.warning("%s: %s", self.describe(), exc)
                self._die(str(exc), failed=self.half_open, now=now)
            finally:
                self._handling = None
            if self.alive and self._out is None:
                self._run_tasks(now)
            return
        # a request
        if header.message_id == self._peer_next_id - 1 and self._last_response is not None \
                and self._last_response[0] == header.message_id:
            self._emit_send(self._last_response[1], retransmit=True)  # §2.1: cached answer
            return
        if header.message_id != self._peer_next_id:
            return
        try:
            message, inner = self._open(data, header.exchange_type)
        except _Dropped:
            return
        except IkeProtocolError as exc:
            if self.keys is not None:  # authenticated, only the inner payloads are wrong
                self._respond(header.exchange_type, header.message_id,
                              [Notify.error(exc.code, exc.data)], now)
            return
        if message is None:
            return
        self._heard_from(remote, local, now)
        handler = {
            ExchangeType.IKE_AUTH: self._on_auth_request,
            ExchangeType.CREATE_CHILD_SA: self._on_create_child_request,
            ExchangeType.INFORMATIONAL: self._on_informational_request,
        }.get(message.exchange_type)
        if handler is None or (message.exchange_type is not ExchangeType.IKE_AUTH
                               and self.state not in (State.ESTABLISHED, State.REKEYED,
                                                      State.DELETING)):
            if self.keys is not None:
                self._respond(message.exchange_type, message.message_id, [], now)
            return
        try:
            handler(message, inner, now)
        except IkeProtocolError as exc:
            log.info("%s: %s request refused: %s", self.describe(),
                     message.exchange_type.name, exc)
            self._respond(message.exchange_type, message.message_id,
                          [Notify.error(exc.code, exc.data)], now)
            if message.exchange_type is ExchangeType.IKE_AUTH:
                self._die(f"IKE_AUTH refused: {exc}", failed=True, now=now)
        except IkeError as exc:
            log.warning("%s: %s", self.describe(), exc)
            self._respond(message.exchange_type, message.message_id,
                          [Notify.error(NotifyType.INVALID_SYNTAX)], now)
        if self.alive and self._out is None:
            self._run_tasks(now)

    def _heard_from(self, remote: Endpoint | None, local: Endpoint | None, now: float) -> None:
        self._last_heard = now
        if self.keys is None:
            return
        changed = False
        if local is not None and local != self.local:
            self.local = local  # the conversation moved to the NAT-T port (§2.23)
            changed = True
        # §2.23: a peer behind a NAT may change its address/port; follow authenticated messages.
        if remote is not None and remote != self.remote and (
                self.nat_remote or remote.address == self.remote.address):
            if remote.address != self.remote.address:
                log.info("%s: peer moved from %s to %s", self.describe(), self.remote, remote)
            self.remote = remote
            changed = True
        if changed:
            for c in self.children:
                self._update_encap(c)

    def _open(self, data: bytes, exchange: ExchangeType) -> tuple[Message | None, list[Payload]]:
        """Decode and decrypt; (None, []) while fragments are missing; _Dropped to drop."""
        if exchange is ExchangeType.IKE_SA_INIT:
            raise _Dropped()  # handled by responder_init / the initiator's handler only
        if self._recv_cipher is None:
            raise _Dropped()
        try:
            message = decode(data)
        except IkeProtocolError:
            raise _Dropped() from None
        if message.payloads and isinstance(message.payloads[-1], SKF):
            try:
                _, skf, chunk = crypto.unprotect_fragment(data, self._recv_cipher, message)
            except IkeDecryptError:
                raise _Dropped() from None
            frags = self._fragments.setdefault(message.message_id, {})
            if skf.total_fragments > 64 or skf.fragment_number > skf.total_fragments:
                raise _Dropped()
            frags[skf.fragment_number] = (skf, chunk)
            if len(frags) < skf.total_fragments:
                return None, []
            del self._fragments[message.message_id]
            try:
                inner = crypto.reassemble_fragments(list(frags.values()))
            except IkeProtocolError:
                raise _Dropped() from None
            return message, inner
        try:
            message, inner = crypto.unprotect(data, self._recv_cipher, message)
        except IkeDecryptError:
            raise _Dropped() from None
        return message, inner

    # -- sending ---------------------------------------------------------------------------------

    def _emit_send(self, datagrams: list[bytes], *, retransmit: bool = False) -> None:
        self._events.append(Send(list(datagrams), self.local, self.remote, retransmit))

    def _protect(self, message: Message, inner: list[Payload]) -> list[bytes]:
        assert self._send_cipher is not None
        single = crypto.protect(message, inner, self._send_cipher)
        # RFC 7383 §2.5.1: the whole IP datagram should fit 1280 octets; take off the IP and
        # UDP headers and the non-ESP marker so no IP fragment is ever needed.
        room = FRAGMENT_BYTES - (20 if self.remote.address.version == 4 else 40) - 8 - 4
        if (len(single) > room and self.peer_fragmentation
                and getattr(self.conn, "fragmentation", True)
                and message.exchange_type is not ExchangeType.IKE_SA_INIT):
            return crypto.protect_fragments(message, inner, self._send_cipher, room)
        return [single]

    def _request(self, exchange: ExchangeType, inner: list[Payload], now: float,
                 handler: Callable[[Message, list[Payload], float], None],
                 task: _Task | None, state: dict[str, Any] | None = None) -> None:
        message = Message(self.spi_i, self.spi_r, exchange, self._my_next_id,
                          initiator=self.initiator, response=False)
        datagrams = self._protect(message, inner)
        self._out = _Outstanding(self._my_next_id, datagrams, now,
                                 now + self.ctx.settings.retransmit_timeout, 0, task, handler,
                                 state or {})
        self._my_next_id += 1
        self._emit_send(datagrams)

    def _respond(self, exchange: ExchangeType, message_id: int, inner: list[Payload],
                 now: float) -> None:
        message = Message(self.spi_i, self.spi_r, exchange, message_id,
                          initiator=self.initiator, response=True)
        datagrams = self._protect(message, inner)
        self._last_response = (message_id, datagrams)
        self._peer_next_id = message_id + 1
        self._emit_send(datagrams)

    # -- tasks -------------------------------------------------------------------------------------

    def _queue(self, task: _Task, now: float) -> None:
        if self.state is State.DELETING and task.kind != "delete":
            return
        if task.kind in ("dpd", "rekey-ike") and any(t.kind == task.kind for t in self._tasks):
            return
        self._tasks.append(task)
        if self._out is None and self.state is State.ESTABLISHED:
            self._run_tasks(now)

    def _run_tasks(self, now: float) -> None:
        while self._out is None and self._tasks and self.state in (
                State.ESTABLISHED, State.DELETING, State.REKEYED):
            task = self._tasks.pop(0)
            if self.state is State.REKEYED and task.kind != "delete":
                continue
            kind = task.kind
            if kind == "child":
                self._start_create_child(task, now)
            elif kind == "rekey-child":
                if task.child is not None and task.child.state is ChildState.INSTALLED:
                    self._start_rekey_child(task, now)
            elif kind == "delete-child":
                self._start_delete_child(task, now)
            elif kind == "rekey-ike":
                self._start_rekey_ike(task, now)
            elif kind == "dpd":
                self.ctx.on_count("dpd_sent")
                self._request(ExchangeType.INFORMATIONAL, [], now, self._on_dpd_response, task)
            elif kind == "delete":
                self._request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)], now,
                              self._on_delete_response, task)

    def _abandon_task(self, out: _Outstanding, now: float) -> None:
        task = out.task
        if (task is not None and task.kind == "rekey-child" and task.child is not None
                and task.child.state is ChildState.REKEYING):
            task.child.state = ChildState.INSTALLED
            task.child.rekey_at = now + 10.0  # try again later
        if task is not None and task.kind == "rekey-ike":
            self.rekey_at = now + 10.0
        if task is not None and task.kind == "delete":
            self._die(task.reason or "deleted", now=now)

    def _peer_lost(self, now: float) -> None:
        out = self._out
        what = f"message {out.message_id}" if out else "request"
        if out is not None and out.task is not None and out.task.kind == "delete":
            self._die(out.task.reason or "deleted", now=now)
            return
        if out is not None and out.task is not None and out.task.kind == "dpd":
            self.dpd_failed = True
        log.warning("%s: peer %s did not answer %s after %d retransmissions", self.describe(),
                    self.remote, what, self.ctx.settings.retransmit_tries)
        self._die("peer not responding", failed=self.half_open, now=now, peer_lost=True)

    def _die(self, reason: str, *, failed: bool = False, now: float = 0.0,
             peer_lost: bool = False) -> None:
        if self.state is State.DEAD:
            return
        was_rekeyed = self.state is State.REKEYED
        self._log_nat()
        self.state = State.DEAD
        self.down_reason = reason
        self._out = None
        self._tasks = []
        if not was_rekeyed:
            for c in list(self.children):
                if c.state is not ChildState.DELETED:
                    self._child_gone(c, reason, now)
        self._events.append(IkeDown(self, reason, failed=failed, peer_lost=peer_lost))
        self._wipe()

    def _wipe(self) -> None:
        self.keys = None
        self._send_cipher = self._recv_cipher = None
        self._dh_key = None

    # -- IKE_SA_INIT: initiator --------------------------------------------------------------------

    def _nat_notifies(self, spi_r: bytes) -> list[Payload]:
        src_hash = nat_detection_hash(self.spi_i, spi_r, self.local.address, self.local.port)
        if getattr(self.conn, "encap", False):
            src_hash = self.ctx.random(20)  # §2.23: a wrong hash makes the peer see a NAT
        return [Notify(NotifyType.NAT_DETECTION_SOURCE_IP, src_hash),
                Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                       nat_detection_hash(self.spi_i, spi_r, self.remote.address,
                                          self.remote.port))]

    def _init_extras(self) -> list[Payload]:
        extra: list[Payload] = []
        if getattr(self.conn, "fragmentation", True):
            extra.append(Notify.status(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if self.conn is not None and "pubkey" in (self.conn.local.method, self.conn.remote.method):
            from ipsecd.ike.auth import SUPPORTED_HASHES

            extra.append(Notify.signature_hash_algorithms(SUPPORTED_HASHES))  # RFC 7427 §4
        return extra

    def _send_init(self, now: float) -> None:
        self._init_tries += 1
        if self._init_tries > 5:
            self._die("IKE_SA_INIT: too many retries (cookies / groups)", failed=True, now=now)
            return
        group = dh.group(self._group, allow_legacy=self.ctx.allow_legacy)
        self._dh_key = group.generate()
        if not self._ni:
            self._ni = self.ctx.random(NONCE_BYTES)
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(Notify.cookie(self._cookie))
        payloads += [SA(props.restrict_dh(self._proposals, self._group)),
                     KE(self._group, self._dh_key.public_bytes()), Nonce(self._ni)]
        payloads += self._nat_notifies(b"\x00" * 8)
        payloads += self._init_extras()
        message = Message(self.spi_i, b"\x00" * 8, ExchangeType.IKE_SA_INIT, 0, initiator=True,
                          payloads=payloads)
        data = encode(message)
        self._message1 = data
        self.state = State.INIT_SENT
        self._my_next_id = 1
        self._out = _Outstanding(0, [data], now, now + self.ctx.settings.retransmit_timeout, 0,
                                 None, self._on_init_response)
        self._emit_send([data])
        if self.created == 0.0:
            self.created = now

    def receive_init_response(self, data: bytes, now: float) -> None:
        """An IKE_SA_INIT response (unencrypted) for our request."""
        out = self._out
        if self.state is not State.INIT_SENT or out is None or out.message_id != 0:
            return
        try:
            message = decode(data)
        except IkeProtocolError as exc:
            log.debug("%s: malformed IKE_SA_INIT response dropped: %s", self.describe(), exc)
            return
        if not message.response or message.exchange_type is not ExchangeType.IKE_SA_INIT:
            return
        self._out = None
        try:
            self._handle_init_response(message, data, now)
        except IkeProtocolError as exc:
            log.info("%s: IKE_SA_INIT response refused: %s", self.describe(), exc)
            self._die(f"IKE_SA_INIT: {exc}", failed=True, now=now)
        except IkeError as exc:
            log.warning("%s: IKE_SA_INIT: %s", self.describe(), exc)
            self._die(f"IKE_SA_INIT: {exc}", failed=True, now=now)

    def _on_init_response(self, message: Message, inner: list[Payload], now: float) -> None:
        raise IkeLocalError("IKE_SA_INIT responses go through receive_init_response")

    def _handle_init_response(self, message: Message, data: bytes, now: float) -> None:
        payloads = message.payloads
        cookie = _notify(payloads, NotifyType.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64:
                raise invalid_syntax("bad COOKIE")
            self._cookie = cookie.data
            log.info("%s: responder asks for a cookie", self.describe())
            self._send_init(now)
            return
        ke_error = _notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if ke_error is not None:
            wanted = ke_error.dh_group()
            if wanted not in props.dh_groups(self._proposals) or wanted == self._group:
                raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN,
                                       f"responder wants DH group {int(wanted)}, not offered")
            log.info("%s: responder wants DH group %s", self.describe(), wanted.name)
            self._group = wanted
            self._send_init(now)
            return
        error = _error_notify(payloads)
        if error is not None:
            raise IkeProtocolError(error.notify_type, f"responder said {error.notify_type.name}")
        sa = _payload(payloads, SA)
        ke = _payload(payloads, KE)
        nonce = _payload(payloads, Nonce)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            raise invalid_syntax("IKE_SA_INIT response lacks SA, KE or Nonce")
        chosen = sa.proposals[0]
        props.check_chosen(chosen, self._proposals)
        if props.chosen_dh(chosen) != self._group or ke.group != self._group:
            raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "responder chose another DH group")
        if not 16 <= len(nonce.data) <= 256:
            raise invalid_syntax("nonce length")
        self.spi_r = message.spi_r
        if self.spi_r == b"\x00" * 8:
            raise invalid_syntax("responder SPI is zero")
        self._nr = nonce.data
        self._message2 = bytes(data)
        assert self._dh_key is not None
        g_ir = self._dh_key.exchange(ke.data)
        self._derive(chosen, g_ir)
        self._nat_detect(payloads, self.spi_i, self.spi_r)
        self.peer_fragmentation = _notify(payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        hashes = _notify(payloads, NotifyType.SIGNATURE_HASH_ALGORITHMS)
        self.peer_hashes = hashes.hash_algorithms() if hashes is not None else []
        if self.encap and self.local.port != self.ctx.settings.nat_t_port:
            # §2.23: once a NAT is seen, the rest of the conversation moves to port 4500.
            self.local = Endpoint(self.local.address, self.ctx.settings.nat_t_port)
            self.remote = Endpoint(self.remote.address, self.ctx.settings.nat_t_port)
        self._send_auth(now)

    def _derive(self, chosen: Proposal, g_ir: bytes) -> None:
        suite = crypto.IkeSaSuite.from_proposal(chosen)
        self.suite_text = props.describe(chosen)
        prf_ = crypto.prf(suite.prf, allow_legacy=self.ctx.allow_legacy)
        seed = crypto.skeyseed(prf_, self._ni, self._nr, g_ir)
        self._set_keys(crypto.derive_ike_sa_keys(suite, seed, self._ni, self._nr, self.spi_i,
                                                 self.spi_r, allow_legacy=self.ctx.allow_legacy))

    def _set_keys(self, keys: crypto.IkeSaKeys) -> None:
        self.keys = keys
        self._prf = crypto.prf(keys.suite.prf, allow_legacy=self.ctx.allow_legacy)
        self._send_cipher = keys.cipher(initiator=self.initiator, sending=True,
                                        allow_legacy=self.ctx.allow_legacy)
        self._recv_cipher = keys.cipher(initiator=self.initiator, sending=False,
                                        allow_legacy=self.ctx.allow_legacy)

    def _nat_detect(self, payloads: Sequence[Payload], spi_i: bytes, spi_r: bytes) -> None:
        src = [p for p in payloads if isinstance(p, Notify)
               and p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
        dst = _notify(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
        if not src or dst is None:
            return  # the peer does not do NAT-T: no encapsulation
        expect_src = nat_detection_hash(spi_i, spi_r, self.remote.address, self.remote.port)
        self.nat_remote = not any(hmac.compare_digest(p.data, expect_src) for p in src)
        expect_dst = nat_detection_hash(spi_i, spi_r, self.local.address, self.local.port)
        self.nat_local = not hmac.compare_digest(dst.data, expect_dst)
        if self.nat_local or self.nat_remote:
            # Told by the "established" line (one log line less per IKE SA set up), or by
            # _log_nat if the setup fails first.
            self._nat_unlogged = "local" if self.nat_local else "remote"

    def _log_nat(self) -> None:
        """The NAT that IKE_SA_INIT saw, on a line of its own (the setup did not complete)."""
        if self._nat_unlogged:
            log.info("%s: NAT detected (%s): ESP goes in UDP", self.describe(),
                     self._nat_unlogged)
            self._nat_unlogged = ""

    # -- IKE_AUTH: initiator ---------------------------------------------------------------------

    def _own_id(self) -> Identification:
        conf = self.conn.local
        if conf.id is not None:
            return Identification(conf.id.id_type, conf.id.data)
        return Identification.from_address(self.local.address)

    def _psk_key_pad(self, identity: Identification | None) -> bytes | None:
        """prf(Shared Secret, "Key Pad for IKEv2") for the peer's key (§2.15), or None."""
        secret = self.ctx.psk(self.conn, identity, self.remote.address)
        return None if secret is None else crypto.psk_key_pad(self._prf_(), secret)

    def _auth_payload(self, octets: bytes, key_pad: bytes | None = None,
                      ) -> tuple[AUTH, list[Payload]]:
        """Our AUTH payload (and CERT payloads for pubkey).  ``key_pad``: the peer's PSK
        through :func:`crypto.psk_key_pad`, when the caller has it; else it is looked up."""
        assert self._prf is not None
        if self.conn.local.method == "psk":
            if key_pad is None:
                # the initiator does not know the peer's ID yet: the configured one names the key
                key_pad = self._psk_key_pad(self.peer_id or self.conn.remote.id)
            if key_pad is None:
                raise IkeLocalError(f"connection {self.name}: no pre-shared key for peer "
                                    f"{self.remote.address}")
            return AUTH(AuthMethod.SHARED_KEY_MIC,
                        crypto.psk_auth_with_pad(self._prf, key_pad, octets)), []
        from ipsecd.ike import auth

        creds = self.ctx.credentials(self.conn)
        if creds is None:
            raise IkeLocalError(f"connection {self.name}: no certificate and key")
        chain, key = creds
        return auth.sign(key, octets, peer_hashes=self.peer_hashes), list(auth.cert_payloads(chain))

    def _verify_peer(self, auth_payload: AUTH, octets: bytes, certs: list[CERT],
                     peer_id: Identification, key_pad: bytes | None = None) -> None:
        """Raise AUTHENTICATION_FAILED unless the peer proved ``peer_id``.  ``key_pad``:
        ``peer_id``'s PSK through :func:`crypto.psk_key_pad`, when the caller has it."""
        assert self._prf is not None
        conf = self.conn.remote
        if conf.id is not None and (conf.id.id_type != peer_id.id_type or conf.id.data != peer_id.data):
            raise IkeProtocolError(NotifyType.AUTHENTICATION_FAILED, "peer identity does not match")
        if conf.method == "psk":
            if auth_payload.method != AuthMethod.SHARED_KEY_MIC:
                raise IkeProtocolError(NotifyType.AUTHENTICATION_FAILED,
                                       f"peer used auth method {int(auth_payload.method)}, expected PSK")
            if key_pad is None:
                key_pad = self._psk_key_pad(peer_id)
            if key_pad is None or not hmac.compare_digest(
                    crypto.psk_auth_with_pad(self._prf, key_pad, octets), auth_payload.data):
                raise IkeProtocolError(NotifyType.AUTHENTICATION_FAILED, "PSK AUTH does not verify")
            return
        from ipsecd.ike import auth

        try:
            chain = auth.certificates_from_payloads(certs)
            if not chain:
                raise auth.AuthError("the peer sent no certificate")
            auth.validate_chain(chain[0], chain[1:], self.ctx.trust(self.conn))
            if not auth.identity_matches(peer_id, chain[0]):
                raise auth.AuthError("the peer's identity is not in its certificate")
            auth.verify(auth_payload, octets, chain[0])
        except auth.AuthError as exc:
            raise IkeProtocolError(NotifyType.AUTHENTICATION_FAILED, str(exc)) from None
        self.peer_cert = chain[0]

    def _send_auth(self, now: float) -> None:
        assert self.keys is not None
        self.local_id = self._own_id()
        idi = IDi(self.local_id.id_type, self.local_id.data)
        octets = crypto.signed_octets(self._prf_(), self._message1, self._nr, self.keys.SK_pi, idi)
        auth_payload, certs = self._auth_payload(octets)
        inner: list[Payload] = [idi, *certs]
        if self.conn.remote.method != "psk":
            from ipsecd.ike import auth

            trust = self.ctx.trust(self.conn)
            if trust:
                inner.append(auth.certreq(trust))
        if self.conn.remote.id is not None:
            inner.append(IDr(self.conn.remote.id.id_type, self.conn.remote.id.data))
        inner.append(auth_payload)
        if self.initial_contact:
            inner.append(Notify.status(NotifyType.INITIAL_CONTACT))
        state: dict[str, Any] = {}
        cfg = getattr(self, "_first_child", None)
        if cfg is not None:
            inner += self._child_request(cfg, state, pfs=False)
        self.state = State.AUTH_SENT
        self._request(ExchangeType.IKE_AUTH, inner, now, self._on_auth_response, None, state)

    def _prf_(self) -> crypto.IkePrf:
        assert self._prf is not None
        return self._prf

    def _on_auth_response(self, message: Message, inner: list[Payload], now: float) -> None:
        assert self.keys is not None
        error = _error_notify(inner)
        auth_payload = _payload(inner, AUTH)
        idr = _payload(inner, IDr)
        if auth_payload is None or idr is None:
            if error is not None:
                raise IkeProtocolError(error.notify_type, f"responder said {error.notify_type.name}")
            raise invalid_syntax("IKE_AUTH response lacks IDr or AUTH")
        peer_id = Identification(idr.id_type, idr.data)
        octets = crypto.signed_octets(self._prf_(), self._message2, self._ni, self.keys.SK_pr, idr)
        self._verify_peer(auth_payload, octets, [p for p in inner if isinstance(p, CERT)], peer_id)
        self.peer_id = peer_id
        self._established(now)
        out_state = self._out_state_for_handler
        cfg = getattr(self, "_first_child", None)
        if cfg is not None:
            try:
                child = self._child_response(cfg, out_state, inner, now, self._ni, self._nr,
                                             None, replaces=None)
            except IkeProtocolError as exc:
                log.warning("%s: child %s not created: %s", self.describe(), cfg.name, exc)
            else:
                if child is None:
                    log.warning("%s: child %s not created: %s", self.describe(), cfg.name,
                                error.notify_type.name if error else "no SA")

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.established_at = now
        self.half_open_deadline = 0.0
        self._dh_key = None
        self._schedule_ike_rekey(now)
        if self._nat_unlogged:
            log.log(25, "%s: IKE SA established with %s (%s); NAT detected (%s): ESP goes in UDP",
                    self.describe(), self.remote, self.suite_text, self._nat_unlogged)
            self._nat_unlogged = ""
        else:
            log.log(25, "%s: IKE SA established with %s (%s)", self.describe(), self.remote,
                    self.suite_text)
        self._events.append(IkeUp(self, now - self.created))

    def _schedule_ike_rekey(self, now: float) -> None:
        rekey = float(getattr(self.conn, "rekey_time", 0.0) or 0.0)
        reauth = float(getattr(self.conn, "reauth_time", 0.0) or 0.0)
        over = float(getattr(self.conn, "over_time", 0.0) or 0.0)
        self.rekey_at = now + rekey * (1 - JITTER * self.ctx.jitter()) if rekey else 0.0
        self.reauth_at = now + reauth * (1 - JITTER * self.ctx.jitter()) if reauth else 0.0
        limit = max(rekey, reauth)
        self.expire_at = now + limit + (over or limit * 0.1) if limit else 0.0

    # -- Child SA negotiation (shared by IKE_AUTH and CREATE_CHILD_SA) --------------------------------

    def _child_request(self, cfg: Any, state: dict[str, Any], *, pfs: bool,
                       rekey: ChildSa | None = None) -> list[Payload]:
        """SA, TSi, TSr (and notifies) proposing a Child SA for ``cfg``; fills ``state``."""
        spi = self.ctx.allocate_spi()
        proposals = props.with_spi(list(cfg.esp_proposals), spi.to_bytes(4, "big"))
        if not pfs:
            proposals = _without_dh(proposals)  # §1.2: IKE_AUTH creates its child without a KE
        state.update(cfg=cfg, spi=spi, proposals=proposals, rekey=rekey)
        local_ts = tsmod.to_selectors(cfg.local_ts, self.local.address)
        remote_ts = tsmod.to_selectors(cfg.remote_ts, self.remote.address)
        if rekey is not None:  # §2.8: a rekey proposes the traffic selectors in use
            local_ts, remote_ts = list(rekey.local_ts), list(rekey.remote_ts)
        state.update(local_ts=local_ts, remote_ts=remote_ts)
        out: list[Payload] = []
        if cfg.mode is Mode.TRANSPORT:
            out.append(Notify.status(NotifyType.USE_TRANSPORT_MODE))
        if cfg.ipcomp:  # §2.22: our CPI, the transform we implement
            state["cpi"] = self.ctx.allocate_cpi()
            out.append(Notify.ipcomp_supported(state["cpi"], IpcompId.IPCOMP_DEFLATE))
        out += [SA(proposals), TSi(list(local_ts)), TSr(list(remote_ts))]
        return out

    def _release_offer(self, state: dict[str, Any]) -> None:
        """The SPI and CPI a child request reserved, when no child came of it."""
        self.ctx_release_spi(state["spi"])
        if state.get("cpi"):
            self.ctx.release_cpi(state["cpi"])

    def _ipcomp_answer(self, cfg: Any, inner: list[Payload]) -> tuple[int, int] | None:
        """Responder (§2.22): (our CPI, the peer's) if ``cfg`` wants IPComp and the peer
        offered DEFLATE; else None, and no notify goes back."""
        if not cfg.ipcomp:
            return None
        peer = _peer_cpi(inner)
        return None if peer is None else (self.ctx.allocate_cpi(), peer)

    def _child_keys(self, chosen: Proposal, ni: bytes, nr: bytes,
                    g_ir: bytes | None) -> tuple[props.ChildSuite, crypto.ChildSaKeys]:
        assert self.keys is not None
        suite = props.child_suite(chosen)
        keys = crypto.child_sa_keymat(self._prf_(), self.keys.SK_d, ni, nr, suite.enc_key_bytes,
                                      suite.integ_key_bytes, g_ir)
        return suite, keys

    def _make_child(self, cfg: Any, chosen: Proposal, spi_in: int, spi_out: int,
                    local_ts: list[TrafficSelector], remote_ts: list[TrafficSelector],
                    mode: Mode, ni: bytes, nr: bytes, g_ir: bytes | None, *,
                    we_initiated: bool, now: float, reqid: int | None = None,
                    ipcomp: tuple[int, int] | None = None) -> ChildSa:
        suite, keys = self._child_keys(chosen, ni, nr, g_ir)
        # §2.17: the first keys protect initiator-to-responder traffic (of this exchange).
        if we_initiated:
            out_e, out_a, in_e, in_a = keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r
        else:
            out_e, out_a, in_e, in_a = keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i
        if reqid is None:
            reqid = self.ctx.reqid_for(self.conn, cfg) or self.ctx.allocate_reqid()
        soft = Lifetime(bytes=int(cfg.rekey_bytes), packets=int(cfg.rekey_packets))
        hard = Lifetime(bytes=int(cfg.life_bytes), packets=int(cfg.life_packets))
        common: dict[str, Any] = dict(
            mode=mode, reqid=reqid, replay_window=int(cfg.replay_window), enc=suite.enc,
            auth=suite.integ, esn=suite.esn, soft=soft, hard=hard)
        encap = self.encap
        inbound = SecurityAssociation(
            spi=spi_in, protocol=_ESP, src=self.remote.address, dst=self.local.address,
            enc_key=bytearray(in_e), auth_key=bytearray(in_a),
            encap=UdpEncap(self.remote.port, self.local.port) if encap else None, **common)
        outbound = SecurityAssociation(
            spi=spi_out, protocol=_ESP, src=self.local.address, dst=self.remote.address,
            enc_key=bytearray(out_e), auth_key=bytearray(out_a),
            encap=UdpEncap(self.local.port, self.remote.port) if encap else None, **common)
        rekey = float(cfg.rekey_time or 0.0)
        life = float(cfg.life_time or 0.0)
        child = ChildSa(
            name=cfg.name, config=cfg, reqid=reqid, mode=mode, local_ts=list(local_ts),
            remote_ts=list(remote_ts), inbound=inbound, outbound=outbound,
            proposal=props.describe(chosen), created=now,
            rekey_at=now + rekey * (1 - JITTER * self.ctx.jitter()) if rekey else 0.0,
            expire_at=now + life if life else 0.0, nonces=(ni, nr), initiated_by_us=we_initiated)
        if ipcomp is not None:
            # RFC 3173: inbound by our CPI, outbound by the peer's, the child's mode; no
            # keys, no sequence numbers (hence no replay window), inside ESP (no UDP).
            own, peer = ipcomp
            comp: dict[str, Any] = dict(protocol=IpProto.IPCOMP, mode=mode, reqid=reqid,
                                        replay_window=0, comp=IpcompId.IPCOMP_DEFLATE)
            child.ipcomp_cpi = own
            child.ipcomp_in = SecurityAssociation(
                spi=own, src=self.remote.address, dst=self.local.address, **comp)
            child.ipcomp_out = SecurityAssociation(
                spi=peer, src=self.local.address, dst=self.remote.address, **comp)
        return child

    def _child_response(self, cfg: Any, state: dict[str, Any], inner: list[Payload], now: float,
                        ni: bytes, nr: bytes, g_ir: bytes | None,
                        replaces: ChildSa | None, reqid: int | None = None) -> ChildSa | None:
        """The initiator's side: install the child the responder accepted, or None."""
        own_cpi: int = state.get("cpi", 0)
        child: ChildSa | None = None
        try:
            child = self._accepted_child(cfg, state, inner, now, ni, nr, g_ir, replaces, reqid)
        finally:
            if own_cpi and (child is None or child.ipcomp_cpi != own_cpi):
                self.ctx.release_cpi(own_cpi)  # no IPComp SA will hold it
        return child

    def _accepted_child(self, cfg: Any, state: dict[str, Any], inner: list[Payload], now: float,
                        ni: bytes, nr: bytes, g_ir: bytes | None,
                        replaces: ChildSa | None, reqid: int | None) -> ChildSa | None:
        sa = _payload(inner, SA)
        if sa is None:
            return None
        if len(sa.proposals) != 1:
            raise invalid_syntax("SAr2 must hold exactly one proposal")
        chosen = sa.proposals[0]
        props.check_chosen(chosen, state["proposals"])
        tsi = _payload(inner, TSi)
        tsr = _payload(inner, TSr)
        if tsi is None or tsr is None:
            raise invalid_syntax("child response lacks TSi or TSr")
        local_ts = [t for t in tsi.selectors if isinstance(t, TrafficSelector)]
        remote_ts = [t for t in tsr.selectors if isinstance(t, TrafficSelector)]
        if not local_ts or not remote_ts or not tsmod.within(local_ts, state["local_ts"]) \
                or not tsmod.within(remote_ts, state["remote_ts"]):
            raise IkeProtocolError(NotifyType.TS_UNACCEPTABLE, "responder widened the selectors")
        transport = _notify(inner, NotifyType.USE_TRANSPORT_MODE) is not None
        mode = Mode.TRANSPORT if transport and cfg.mode is Mode.TRANSPORT else Mode.TUNNEL
        if cfg.mode is Mode.TRANSPORT and not transport:
            raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "responder refused transport mode")
        if props.chosen_dh(chosen) not in (DhGroup.NONE,) and g_ir is None:
            raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "unexpected DH transform")
        # §2.22: IPComp is on when the responder answered our offer with its own CPI
        # (and a transform we offered: DEFLATE); no answer means no IPComp.
        ipcomp = None
        answered = _notify(inner, NotifyType.IPCOMP_SUPPORTED) is not None
        if state.get("cpi"):
            peer_cpi = _peer_cpi(inner)
            if peer_cpi is not None:
                ipcomp = (int(state["cpi"]), peer_cpi)
            elif answered:
                log.warning("%s: IPComp refused: the peer chose a transform we did not offer",
                            self.describe())
        elif answered:
            log.warning("%s: IPCOMP_SUPPORTED in a response to no offer: ignored",
                        self.describe())
        child = self._make_child(cfg, chosen, state["spi"], _spi32(chosen.spi), local_ts,
                                 remote_ts, mode, ni, nr, g_ir, we_initiated=True, now=now,
                                 reqid=replaces.reqid if replaces is not None else reqid,
                                 ipcomp=ipcomp)
        self._child_up(child, replaces, now)
        return child

    def _child_up(self, child: ChildSa, replaces: ChildSa | None, now: float) -> None:
        self.children.append(child)
        if replaces is not None:
            replaces.replaced_by = child
        log.log(25, "%s: CHILD_SA %s{%d} established: SPIs %08x_i %08x_o, %s === %s (%s)%s",
                self.describe(), child.name, child.reqid, child.spi_in, child.spi_out,
                ", ".join(tsmod.describe(t) for t in child.local_ts),
                ", ".join(tsmod.describe(t) for t in child.remote_ts), child.proposal,
                " rekeying" if replaces is not None else "")
        self._events.append(ChildUp(self, child, replaces))

    def _activate(self, child: ChildSa) -> None:
        if child.activate_at and child.state is not ChildState.DELETED:
            child.activate_at = 0.0
            self._events.append(ChildActivate(self, child))

    def _child_gone(self, child: ChildSa, reason: str, now: float, linger: float = 0.0) -> None:
        if child.state is ChildState.DELETED:
            return
        if child.replaced_by is not None:
            self._activate(child.replaced_by)  # the old one is gone: send on its successor
        child.state = ChildState.DELETED
        if child in self.children:
            self.children.remove(child)
        log.info("%s: CHILD_SA %s{%d} %08x_i %08x_o removed: %s", self.describe(), child.name,
                 child.reqid, child.spi_in, child.spi_out, reason)
        self._events.append(ChildDown(self, child, reason, linger))

    def _update_encap(self, child: ChildSa) -> None:
        if child.outbound.encap is not None:
            child.outbound.encap = UdpEncap(self.local.port, self.remote.port)
            child.outbound.dst = self.remote.address

    def _select_child(self, inner: list[Payload], candidates: Sequence[Any],
                      rekey: ChildSa | None) -> tuple[Any, Proposal, list[TrafficSelector],
                                                     list[TrafficSelector], Mode]:
        """The responder's choice of child config, proposal and narrowed selectors."""
        sa = _payload(inner, SA)
        tsi = _payload(inner, TSi)
        tsr = _payload(inner, TSr)
        if sa is None or tsi is None or tsr is None:
            raise invalid_syntax("child request lacks SA, TSi or TSr")
        transport = _notify(inner, NotifyType.USE_TRANSPORT_MODE) is not None
        want_tsi = [t for t in tsi.selectors if isinstance(t, TrafficSelector)]
        want_tsr = [t for t in tsr.selectors if isinstance(t, TrafficSelector)]
        if rekey is not None:
            candidates = [rekey.config]
        no_proposal = False
        for cfg in candidates:
            remote_conf = tsmod.to_selectors(cfg.remote_ts, self.remote.address)
            local_conf = tsmod.to_selectors(cfg.local_ts, self.local.address)
            if rekey is not None:
                remote_conf, local_conf = rekey.remote_ts, rekey.local_ts
            # TSi are the initiator's (the peer's) side, TSr ours (§2.9).
            remote_ts = tsmod.narrow(want_tsi, remote_conf)
            local_ts = tsmod.narrow(want_tsr, local_conf)
            if not remote_ts or not local_ts:
                continue
            ours = list(cfg.esp_proposals)
            if self.state is not State.ESTABLISHED:  # IKE_AUTH: no KE, so no DH (§1.2)
                ours = _without_dh(ours)
            chosen = props.select(_without_dh(sa.proposals) if self.state is not State.ESTABLISHED
                                  else sa.proposals, ours)
            if chosen is None:
                no_proposal = True
                continue
            mode = Mode.TRANSPORT if transport and cfg.mode is Mode.TRANSPORT else Mode.TUNNEL
            if cfg.mode is Mode.TRANSPORT and not transport:
                continue
            return cfg, chosen, local_ts, remote_ts, mode
        if no_proposal:
            raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")
        raise IkeProtocolError(NotifyType.TS_UNACCEPTABLE, "traffic selectors not acceptable")

    def _child_answer(self, child: ChildSa, chosen: Proposal) -> list[Payload]:
        answer = Proposal(chosen.number, chosen.protocol, child.spi_in.to_bytes(4, "big"),
                          list(chosen.transforms))
        out: list[Payload] = []
        if child.mode is Mode.TRANSPORT:
            out.append(Notify.status(NotifyType.USE_TRANSPORT_MODE))
        if child.ipcomp_in is not None:  # §2.22: accepted, with our CPI
            out.append(Notify.ipcomp_supported(child.ipcomp_cpi, IpcompId.IPCOMP_DEFLATE))
        # TSi is the initiator's side: the peer's (remote) selectors.
        out += [SA([answer]), TSi(list(child.remote_ts)), TSr(list(child.local_ts))]
        return out

    # -- IKE_SA_INIT / IKE_AUTH: responder ----------------------------------------------------------

    @classmethod
    def respond_init(cls, ctx: IkeContext, data: bytes, message: Message, *, local: Endpoint,
                     remote: Endpoint, now: float) -> tuple[IkeSa | None, bytes | None]:
        """Answer an IKE_SA_INIT request: (new SA or None, response datagram or None).

        Without an acceptable proposal (or with the wrong KE group) the
        answer is an error notify and no state is kept (§1.2, §2.6).
        """
        def error(notify: Notify) -> bytes:
            return encode(Message(message.spi_i, b"\x00" * 8, ExchangeType.IKE_SA_INIT, 0,
                                  response=True, payloads=[notify]))

        payloads = message.payloads
        sa = _payload(payloads, SA)
        ke = _payload(payloads, KE)
        nonce = _payload(payloads, Nonce)
        if sa is None or ke is None or nonce is None:
            return None, error(Notify.error(NotifyType.INVALID_SYNTAX))
        if not 16 <= len(nonce.data) <= 256:
            return None, error(Notify.error(NotifyType.INVALID_SYNTAX))
        candidates = ctx.connections(local.address, remote.address)
        chosen: Proposal | None = None
        conn: Any = None
        for c in candidates:
            chosen = props.select(sa.proposals, list(c.proposals))
            if chosen is not None:
                conn = c
                break
        if chosen is None or conn is None:
            log.info("IKE_SA_INIT from %s: no acceptable proposal%s", remote,
                     "" if candidates else " (no connection for this peer)")
            return None, error(Notify.error(NotifyType.NO_PROPOSAL_CHOSEN))
        group = props.chosen_dh(chosen)
        if ke.group != group:
            log.info("IKE_SA_INIT from %s: KE for group %d, asking for %s", remote,
                     int(ke.group), group.name)
            return None, error(Notify.invalid_ke_payload(group))
        ike = cls(ctx, conn, initiator=False, local=local, remote=remote, now=now,
                  spi_i=message.spi_i)
        try:
            key = dh.group(group, allow_legacy=ctx.allow_legacy).generate()
            g_ir = key.exchange(ke.data)
        except IkeProtocolError as exc:
            return None, error(Notify.error(exc.code, exc.data))
        ike._group = group
        ike._ni = nonce.data
        ike._nr = ctx.random(NONCE_BYTES)
        ike._message1 = bytes(data)
        ike._nat_detect(payloads, message.spi_i, b"\x00" * 8)
        if getattr(conn, "encap", False):
            ike.nat_local = True
        try:
            ike.peer_fragmentation = _notify(payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
            hashes = _notify(payloads, NotifyType.SIGNATURE_HASH_ALGORITHMS)
            ike.peer_hashes = hashes.hash_algorithms() if hashes is not None else []
            answer = Proposal(chosen.number, chosen.protocol, b"", list(chosen.transforms))
            out: list[Payload] = [SA([answer]), KE(group, key.public_bytes()), Nonce(ike._nr)]
            out += [Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                           ctx.random(20) if getattr(conn, "encap", False) else
                           nat_detection_hash(ike.spi_i, ike.spi_r, local.address, local.port)),
                    Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                           nat_detection_hash(ike.spi_i, ike.spi_r, remote.address, remote.port))]
            if conn.remote.method != "psk":
                from ipsecd.ike import auth

                trust = ctx.trust(conn)
                if trust:
                    out.append(auth.certreq(trust))
            out += ike._init_extras()
            response = encode(Message(ike.spi_i, ike.spi_r, ExchangeType.IKE_SA_INIT, 0,
                                      response=True, payloads=out))
            ike._message2 = response
            ike._derive(chosen, g_ir)
            ike.state = State.INIT_DONE
            ike._peer_next_id = 1
            ike._last_response = (0, [response])
            return ike, response
        except IkeError:
            ike._log_nat()  # the request is refused: the NAT seen is told now
            raise

    def _on_auth_request(self, message: Message, inner: list[Payload], now: float) -> None:
        if self.initiator or self.state is not State.INIT_DONE:
            raise invalid_syntax("unexpected IKE_AUTH request")
        assert self.keys is not None
        idi = _payload(inner, IDi)
        auth_payload = _payload(inner, AUTH)
        if idi is None or auth_payload is None:
            raise invalid_syntax("IKE_AUTH request lacks IDi or AUTH")
        peer_id = Identification(idi.id_type, idi.data)
        wanted_idr = _payload(inner, IDr)
        conn = self._pick_connection(peer_id, wanted_idr)
        if conn is None:
            raise IkeProtocolError(NotifyType.AUTHENTICATION_FAILED,
                                   "no connection matches the peer's identity")
        self.conn = conn
        # Both AUTH payloads use the key of the peer's identity (§2.15): with PSK on both
        # sides it is looked up and padded once, not once for each.
        key_pad = (self._psk_key_pad(peer_id)
                   if conn.remote.method == "psk" and conn.local.method == "psk" else None)
        octets = crypto.signed_octets(self._prf_(), self._message1, self._nr, self.keys.SK_pi, idi)
        self._verify_peer(auth_payload, octets, [p for p in inner if isinstance(p, CERT)], peer_id,
                          key_pad)
        self.peer_id = peer_id
        self.local_id = self._own_id()
        idr = IDr(self.local_id.id_type, self.local_id.data)
        octets_r = crypto.signed_octets(self._prf_(), self._message2, self._ni, self.keys.SK_pr, idr)
        my_auth, certs = self._auth_payload(octets_r, key_pad)
        out: list[Payload] = [idr, *certs, my_auth]
        child_payloads: list[Payload] = []
        child: ChildSa | None = None
        chosen: Proposal | None = None
        if _payload(inner, SA) is not None:
            try:
                cfg, chosen, local_ts, remote_ts, mode = self._select_child(
                    inner, list(conn.children), None)
                sa = _payload(inner, SA)
                offered = next(p for p in sa.proposals if p.number == chosen.number
                               and p.protocol == chosen.protocol)
                child = self._make_child(cfg, chosen, self.ctx.allocate_spi(),
                                         _spi32(offered.spi), local_ts, remote_ts, mode,
                                         self._ni, self._nr, None, we_initiated=False, now=now,
                                         ipcomp=self._ipcomp_answer(cfg, inner))
                child_payloads = self._child_answer(child, chosen)
            except IkeProtocolError as exc:
                log.warning("%s: no CHILD_SA in IKE_AUTH: %s", self.describe(), exc)
                child_payloads = [Notify.error(exc.code, exc.data)]
        self._established(now)
        if _notify(inner, NotifyType.INITIAL_CONTACT) is not None:
            self._events.append(InitialContact(self))
        if child is not None:  # installed before the answer leaves (see CREATE_CHILD_SA)
            self._child_up(child, None, now)
        self._respond(ExchangeType.IKE_AUTH, message.message_id, out + child_payloads, now)

    def _pick_connection(self, peer_id: Identification, wanted: IDr | None) -> Any:
        for conn in [self.conn] + [c for c in self.ctx.connections(self.local.address,
                                                                    self.remote.address)
                                   if c is not self.conn]:
            rid = conn.remote.id
            if rid is not None and (rid.id_type != peer_id.id_type or rid.data != peer_id.data):
                continue
            if wanted is not None and conn.local.id is not None and (
                    conn.local.id.id_type != wanted.id_type or conn.local.id.data != wanted.data):
                continue
            return conn
        return None

    # -- CREATE_CHILD_SA -------------------------------------------------------------------------

    def _start_create_child(self, task: _Task, now: float, rekey: ChildSa | None = None) -> None:
        cfg = task.child_config if rekey is None else rekey.config
        state: dict[str, Any] = {}
        inner: list[Payload] = []
        if rekey is not None:
            inner.append(Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP,
                                rekey.spi_in.to_bytes(4, "big")))
        inner += self._child_request(cfg, state, pfs=True, rekey=rekey)
        ni = self.ctx.random(NONCE_BYTES)
        state["ni"] = ni
        inner.insert(len(inner) - 2, Nonce(ni))  # SA, Ni, [KE], TSi, TSr (§1.3.1)
        groups = props.dh_groups(state["proposals"])
        if groups:
            key = dh.group(groups[0], allow_legacy=self.ctx.allow_legacy).generate()
            state["dh"] = key
            inner.insert(len(inner) - 2, KE(groups[0], key.public_bytes()))
        self._request(ExchangeType.CREATE_CHILD_SA, inner, now, self._on_create_child_response,
                      task, state)

    def _start_rekey_child(self, task: _Task, now: float) -> None:
        child = task.child
        assert child is not None
        child.state = ChildState.REKEYING
        log.info("%s: rekeying CHILD_SA %s{%d} %08x_i", self.describe(), child.name,
                 child.reqid, child.spi_in)
        self._start_create_child(task, now, rekey=child)

    def _on_create_child_response(self, message: Message, inner: list[Payload],
                                  now: float) -> None:
        out_state = self._out_state_for_handler
        task = self._out_task_for_handler
        error = _error_notify(inner)
        rekey: ChildSa | None = out_state.get("rekey")
        if error is not None or _payload(inner, SA) is None:
            code = error.notify_type if error is not None else NotifyType.NO_PROPOSAL_CHOSEN
            if code == NotifyType.INVALID_KE_PAYLOAD and error is not None and not out_state.get("ke_retry"):
                # retry the same exchange with the group the peer asked for (§1.3)
                wanted = error.dh_group()
                if wanted in props.dh_groups(out_state["proposals"]):
                    self._release_offer(out_state)
                    self._retry_child_with_group(task, rekey, wanted, now)
                    return
            self._release_offer(out_state)
            if rekey is not None and rekey.state is ChildState.REKEYING:
                rekey.state = ChildState.INSTALLED
                rekey.rekey_at = now + 10.0
            log.warning("%s: CREATE_CHILD_SA refused: %s", self.describe(), NotifyType(code).name)
            return
        nonce = _payload(inner, Nonce)
        if nonce is None:
            raise invalid_syntax("CREATE_CHILD_SA response lacks Nr")
        g_ir = None
        key = out_state.get("dh")
        sa = _payload(inner, SA)
        if key is not None and sa is not None and sa.proposals and \
                props.chosen_dh(sa.proposals[0]) != DhGroup.NONE:
            ke = _payload(inner, KE)
            if ke is None or ke.group != key.group.id:
                raise IkeProtocolError(NotifyType.INVALID_SYNTAX, "KE missing or of another group")
            g_ir = key.exchange(ke.data)
        cfg = out_state["cfg"]
        # §2.8.1: if the peer rekeyed the same child meanwhile, the SA made with the lowest of
        # the four nonces is redundant; its creator deletes it.  The old child may even be gone
        # already (the peer's rekey won and deleted it): the new one still keeps its reqid
        # (its policies) and still obeys the nonce rule.
        orig = rekey
        rival = orig.replaced_by if orig is not None else None
        if rekey is not None and rekey.state is ChildState.DELETED:
            rekey = None
        child = self._child_response(cfg, out_state, inner, now, out_state["ni"], nonce.data, g_ir,
                                     replaces=rekey,
                                     reqid=orig.reqid if orig is not None else None)
        if child is None or orig is None:
            return
        if rival is not None and rival is not child and rival.state is not ChildState.DELETED:
            ours = min(child.nonces)
            theirs = min(rival.nonces)
            if ours < theirs:
                log.info("%s: rekey collision on %s{%d}: ours is redundant", self.describe(),
                         child.name, child.reqid)
                orig.replaced_by = rival
                self._child_gone(child, "rekey collision (redundant)", now, linger=CHILD_LINGER)
                self._queue_front(_Task("delete-child", child=child))
                return
            log.info("%s: rekey collision on %s{%d}: ours survives", self.describe(),
                     child.name, child.reqid)
        if rekey is None:
            return  # the old child is gone already
        rekey.state = ChildState.REKEYED
        self._queue_front(_Task("delete-child", child=rekey))

    def _queue_front(self, task: _Task) -> None:
        self._tasks.insert(0, task)

    def ctx_release_spi(self, spi: int) -> None:
        release = getattr(self.ctx, "release_spi", None)
        if release is not None:
            release(spi)

    def _retry_child_with_group(self, task: _Task | None, rekey: ChildSa | None,
                                group: DhGroup, now: float) -> None:
        cfg = (task.child_config if task is not None and task.child_config is not None
               else rekey.config if rekey is not None else None)
        if cfg is None:
            return
        state: dict[str, Any] = {"ke_retry": True}
        inner: list[Payload] = []
        if rekey is not None:
            inner.append(Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP,
                                rekey.spi_in.to_bytes(4, "big")))
        inner += self._child_request(cfg, state, pfs=True, rekey=rekey)
        state["proposals"] = props.restrict_dh(state["proposals"], group)
        inner[-3] = SA(state["proposals"])
        ni = self.ctx.random(NONCE_BYTES)
        state["ni"] = ni
        key = dh.group(group, allow_legacy=self.ctx.allow_legacy).generate()
        state["dh"] = key
        inner.insert(len(inner) - 2, Nonce(ni))
        inner.insert(len(inner) - 2, KE(group, key.public_bytes()))
        self._request(ExchangeType.CREATE_CHILD_SA, inner, now, self._on_create_child_response,
                      task, state)

    def _on_create_child_request(self, message: Message, inner: list[Payload], now: float) -> None:
        sa = _payload(inner, SA)
        if sa is not None and sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            self._on_rekey_ike_request(message, inner, now)
            return
        nonce = _payload(inner, Nonce)
        if sa is None or nonce is None:
            raise invalid_syntax("CREATE_CHILD_SA request lacks SA or Ni")
        if self.state is not State.ESTABLISHED:
            raise IkeProtocolError(NotifyType.TEMPORARY_FAILURE, "IKE SA is going away")
        rekey: ChildSa | None = None
        notify = _notify(inner, NotifyType.REKEY_SA)
        if notify is not None:
            spi = _spi32(notify.spi)
            rekey = next((c for c in self.children if c.spi_out == spi
                          and c.state is not ChildState.DELETED), None)
            if rekey is None:
                raise IkeProtocolError(NotifyType.CHILD_SA_NOT_FOUND, f"no child SA {spi:08x}",
                                       )
        cfg, chosen, local_ts, remote_ts, mode = self._select_child(inner, list(self.conn.children),
                                                                    rekey)
        g_ir = None
        extra: list[Payload] = []
        group = props.chosen_dh(chosen)
        if group != DhGroup.NONE:
            ke = _payload(inner, KE)
            if ke is None or ke.group != group:
                raise IkeProtocolError(NotifyType.INVALID_KE_PAYLOAD, "KE for another group",
                                       int(group).to_bytes(2, "big"))
            key = dh.group(group, allow_legacy=self.ctx.allow_legacy).generate()
            g_ir = key.exchange(ke.data)
            extra.append(KE(group, key.public_bytes()))
        offered = next(p for p in sa.proposals if p.number == chosen.number
                       and p.protocol == chosen.protocol)
        nr = self.ctx.random(NONCE_BYTES)
        child = self._make_child(cfg, chosen, self.ctx.allocate_spi(), _spi32(offered.spi),
                                 local_ts, remote_ts, mode, nonce.data, nr, g_ir,
                                 we_initiated=False, now=now,
                                 reqid=rekey.reqid if rekey is not None else None,
                                 ipcomp=self._ipcomp_answer(cfg, inner))
        answer = self._child_answer(child, chosen)
        # SA, Nr, [KEr], TSi, TSr
        payloads = [*answer[:-2], Nonce(nr), *extra, *answer[-2:]]
        if rekey is not None:
            # §2.8: the peer starts sending on the new SA once it has our answer, but it may
            # take a moment to install it: keep sending on the old SA until the peer deletes it
            # (or a few seconds passed), so none of our packets reach an SPI it lacks yet.
            child.outbound.state = SAState.LARVAL
            if child.ipcomp_out is not None:  # the peer's new CPI: not before its new SA
                child.ipcomp_out.state = SAState.LARVAL
            child.activate_at = now + REKEY_ACTIVATE
            if rekey.replaced_by is None:
                rekey.replaced_by = child
            if rekey.state is ChildState.INSTALLED:
                rekey.state = ChildState.REKEYED  # the peer will delete it
        # Installed before the answer leaves: the peer sends on the new SA as soon as it has it.
        self._child_up(child, rekey, now)
        self._respond(ExchangeType.CREATE_CHILD_SA, message.message_id, payloads, now)

    # -- IKE SA rekey (§2.18) ----------------------------------------------------------------

    def _start_rekey_ike(self, task: _Task, now: float) -> None:
        new_spi = self.ctx.random(8)
        proposals = props.with_spi(list(self.conn.proposals), new_spi)
        group = props.dh_groups(proposals)[0]
        key = dh.group(group, allow_legacy=self.ctx.allow_legacy).generate()
        ni = self.ctx.random(NONCE_BYTES)
        state = {"spi": new_spi, "proposals": proposals, "dh": key, "ni": ni}
        log.info("%s: rekeying the IKE SA", self.describe())
        self._request(ExchangeType.CREATE_CHILD_SA,
                      [SA(proposals), Nonce(ni), KE(group, key.public_bytes())], now,
                      self._on_rekey_ike_response, task, state)

    def _on_rekey_ike_response(self, message: Message, inner: list[Payload], now: float) -> None:
        st = self._out_state_for_handler
        error = _error_notify(inner)
        if error is not None:
            if error.notify_type == NotifyType.INVALID_KE_PAYLOAD:
                wanted = error.dh_group()
                if wanted in props.dh_groups(st["proposals"]) and not st.get("retry"):
                    key = dh.group(wanted, allow_legacy=self.ctx.allow_legacy).generate()
                    st2 = {**st, "dh": key, "retry": True, "ni": self.ctx.random(NONCE_BYTES)}
                    self._request(ExchangeType.CREATE_CHILD_SA,
                                  [SA(props.restrict_dh(st["proposals"], wanted)), Nonce(st2["ni"]),
                                   KE(wanted, key.public_bytes())], now,
                                  self._on_rekey_ike_response, self._out_task_for_handler, st2)
                    return
            log.warning("%s: IKE rekey refused (%s); trying again later", self.describe(),
                        error.notify_type.name)
            self.rekey_at = now + 10.0
            return
        sa = _payload(inner, SA)
        nonce = _payload(inner, Nonce)
        ke = _payload(inner, KE)
        if sa is None or nonce is None or ke is None or len(sa.proposals) != 1:
            raise invalid_syntax("IKE rekey response lacks SA, Nr or KE")
        chosen = sa.proposals[0]
        props.check_chosen(chosen, st["proposals"])
        if len(chosen.spi) != 8:
            raise invalid_syntax("IKE SPI of the wrong size")
        if ke.group != st["dh"].group.id:
            raise IkeProtocolError(NotifyType.INVALID_SYNTAX, "KE of another group")
        g_ir = st["dh"].exchange(ke.data)
        new = self._successor(chosen, st["spi"], chosen.spi, st["ni"], nonce.data, g_ir,
                              initiator=True, now=now)
        # §2.8.2: with a collision, the IKE SA made with the lowest nonce is redundant.
        rival: IkeSa | None = getattr(self, "_rekeyed_to", None)
        if rival is not None and rival is not new and \
                min(st["ni"], nonce.data) < min(rival._ni, rival._nr):
            log.info("%s: IKE rekey collision: ours is redundant", self.describe())
            new.children = []
            new.state = State.REKEYED
            self._events.append(IkeRekeyed(self, new))
            new._tasks = [_Task("delete", reason="IKE rekey collision")]
            new._run_tasks(now)
            return
        self._hand_over(new, now)
        self._queue_front(_Task("delete", reason="rekeyed"))
        self.state = State.DELETING

    def _on_rekey_ike_request(self, message: Message, inner: list[Payload], now: float) -> None:
        if self.state is not State.ESTABLISHED:
            raise IkeProtocolError(NotifyType.TEMPORARY_FAILURE, "IKE SA is going away")
        if self._out is not None and self._out.task is not None \
                and self._out.task.kind in ("child", "rekey-child"):
            raise IkeProtocolError(NotifyType.TEMPORARY_FAILURE, "a child exchange is in progress")
        sa = _payload(inner, SA)
        nonce = _payload(inner, Nonce)
        ke = _payload(inner, KE)
        if sa is None or nonce is None or ke is None:
            raise invalid_syntax("IKE rekey request lacks SA, Ni or KE")
        chosen = props.select(sa.proposals, list(self.conn.proposals))
        if chosen is None:
            raise IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal")
        group = props.chosen_dh(chosen)
        if ke.group != group:
            raise IkeProtocolError(NotifyType.INVALID_KE_PAYLOAD, "KE for another group",
                                   int(group).to_bytes(2, "big"))
        if len(chosen.spi) != 8:
            raise invalid_syntax("IKE SPI of the wrong size")
        key = dh.group(group, allow_legacy=self.ctx.allow_legacy).generate()
        g_ir = key.exchange(ke.data)
        nr = self.ctx.random(NONCE_BYTES)
        new_spi = self.ctx.random(8)
        answer = Proposal(chosen.number, ProtocolId.IKE, new_spi, list(chosen.transforms))
        self._respond(ExchangeType.CREATE_CHILD_SA, message.message_id,
                      [SA([answer]), Nonce(nr), KE(group, key.public_bytes())], now)
        new = self._successor(chosen, chosen.spi, new_spi, nonce.data, nr, g_ir,
                              initiator=False, now=now)
        self._rekeyed_to = new
        if self._out is not None and self._out.task is not None and self._out.task.kind == "rekey-ike":
            return  # collision: settled when our own rekey's answer arrives
        self._hand_over(new, now)
        self.state = State.REKEYED  # the peer deletes this one

    def _successor(self, chosen: Proposal, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes,
                   g_ir: bytes, *, initiator: bool, now: float) -> IkeSa:
        """The IKE SA that replaces this one (§2.18): keys from the old SK_d."""
        assert self.keys is not None
        suite = crypto.IkeSaSuite.from_proposal(chosen)
        old_prf = self._prf_()
        seed = crypto.rekey_skeyseed(old_prf, self.keys.SK_d, g_ir, ni, nr)
        keys = crypto.derive_ike_sa_keys(suite, seed, ni, nr, spi_i, spi_r,
                                         allow_legacy=self.ctx.allow_legacy)
        new = IkeSa(self.ctx, self.conn, initiator=initiator, local=self.local,
                    remote=self.remote, now=now, spi_i=spi_i)
        new.spi_r = spi_r
        new._ni, new._nr = ni, nr
        new._set_keys(keys)
        new.suite_text = props.describe(chosen)
        new.peer_id, new.local_id = self.peer_id, self.local_id
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.peer_fragmentation, new.peer_hashes = self.peer_fragmentation, self.peer_hashes
        new.state = State.ESTABLISHED
        new.established_at = now
        new.half_open_deadline = 0.0
        new._schedule_ike_rekey(now)
        new.reauth_at = self.reauth_at  # counted from the authentication, not from rekeys
        return new

    def _hand_over(self, new: IkeSa, now: float) -> None:
        new.children = [c for c in self.children if c.state is not ChildState.DELETED]
        self.children = []
        # requests we had not sent yet belong to the new SA
        new._tasks = [t for t in self._tasks if t.kind in ("child", "rekey-child", "delete-child")]
        self._tasks = [t for t in self._tasks if t.kind == "delete"]
        log.log(25, "%s: IKE SA rekeyed, now %s", self.describe(), new.describe())
        self._events.append(IkeRekeyed(self, new))

    # -- INFORMATIONAL ----------------------------------------------------------------------------------

    def _start_delete_child(self, task: _Task, now: float) -> None:
        child = task.child
        assert child is not None
        self._request(ExchangeType.INFORMATIONAL,
                      [Delete(ProtocolId.ESP, [child.spi_in.to_bytes(4, "big")])], now,
                      self._on_delete_child_response, task)
        if child.state is not ChildState.DELETED:
            child.state = ChildState.DELETING

    def _on_delete_child_response(self, message: Message, inner: list[Payload], now: float) -> None:
        task = self._out_task_for_handler
        if task is not None and task.child is not None:
            self._child_gone(task.child, "deleted" if task.child.replaced_by is None else "rekeyed",
                             now, linger=CHILD_LINGER)

    def _on_dpd_response(self, message: Message, inner: list[Payload], now: float) -> None:
        pass  # hearing it is all DPD wants

    def _on_delete_response(self, message: Message, inner: list[Payload], now: float) -> None:
        task = self._out_task_for_handler
        reason = task.reason if task is not None and task.reason else "deleted"
        self._die(reason, now=now)

    def _on_informational_request(self, message: Message, inner: list[Payload], now: float) -> None:
        deletes = [p for p in inner if isinstance(p, Delete)]
        answer: list[Payload] = []
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._respond(ExchangeType.INFORMATIONAL, message.message_id, [], now)
            log.log(25, "%s: the peer deleted the IKE SA", self.describe())
            self._die("deleted by the peer", now=now)
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for raw in d.spis:
                if len(raw) != 4:
                    continue
                spi = int.from_bytes(raw, "big")
                child = next((c for c in self.children if c.spi_out == spi), None)
                if child is None:
                    continue
                if child.state is not ChildState.DELETING:
                    ours.append(child.spi_in.to_bytes(4, "big"))  # §1.4.1: delete both ends
                reason = "rekeyed" if child.replaced_by is not None else "deleted by the peer"
                self._child_gone(child, reason, now, linger=CHILD_LINGER)
        if ours:
            answer.append(Delete(ProtocolId.ESP, ours))
        self._respond(ExchangeType.INFORMATIONAL, message.message_id, answer, now)

    # The handler of the response being processed reads its exchange's state from here.
    @property
    def _out_state_for_handler(self) -> dict[str, Any]:
        return self._handling.state if self._handling is not None else {}

    @property
    def _out_task_for_handler(self) -> _Task | None:
        return self._handling.task if self._handling is not None else None

    _handling: _Outstanding | None = None
    _first_child: Any = None
    _rekeyed_to: IkeSa | None = None
    peer_cert: Any = None


class _Dropped(Exception):
    """A message to drop silently (undecryptable, not ours)."""

__all__ = [
    "ChildActivate",
    "ChildDown",
    "ChildSa",
    "ChildState",
    "ChildUp",
    "Endpoint",
    "Event",
    "IkeContext",
    "IkeDown",
    "IkeRekeyed",
    "IkeSa",
    "IkeUp",
    "InitialContact",
    "ReauthNeeded",
    "Send",
    "State",
]
