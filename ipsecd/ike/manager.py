"""The IKE daemon part of the control process: sockets, dispatch, timers, datapath glue.

:class:`IkeManager` owns the UDP sockets (IKE port 500 and the NAT-T port
4500, IPv4 and IPv6), turns datagrams into calls on the sans-I/O
:class:`~ipsecd.ike.sa.IkeSa` objects and their events into datagrams and
into changes of the SAD/SPD through a :class:`Datapath` (the daemon).

Sockets
-------
One socket per family and port, bound to the wildcard address, with
``IP_PKTINFO`` / ``IPV6_RECVPKTINFO`` so that an answer leaves from the
address the request came to.  They carry ``SO_MARK`` = ``datapath.mark``:
the policy routing that sends protected prefixes into the TUN device skips
marked packets, so IKE between two hosts whose whole traffic is protected
(the HOWTO's transport mode) is not itself swallowed by the tunnel.  On
port 4500 IKE messages start with the four-octet non-ESP marker (RFC 3948
§2.2); ESP in UDP never reaches this socket (the nft table drops it after
the workers' rings took it) and one-octet NAT keepalives are ignored.

Denial of service (RFC 7296 §2.6)
---------------------------------
Half-open IKE SAs (answered IKE_SA_INIT, no IKE_AUTH yet) are counted in
total and per peer address.  Above ``cookie_threshold`` an IKE_SA_INIT
without a valid COOKIE gets a COOKIE notify and no state at all; above
``half_open_max`` / ``half_open_per_peer`` requests are dropped.  The
cookie is ``version | HMAC-SHA-256(secret, Ni | IPi | SPIi)[:16]`` with a
secret replaced every five minutes (the previous one still accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.errors import IkeError, IkeLocalError, IkeProtocolError, InvalidMajorVersionError
from ipsecd.ike.messages import (
    SA,
    Identification,
    Message,
    Nonce,
    Notify,
    decode,
    decode_header,
    encode,
)
from ipsecd.ike.sa import (
    ChildActivate,
    ChildDown,
    ChildSa,
    ChildUp,
    Endpoint,
    IkeContext,
    IkeDown,
    IkeRekeyed,
    IkeSa,
    IkeUp,
    InitialContact,
    ReauthNeeded,
    Send,
    State,
)

log = logging.getLogger("ipsecd.ike")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IP_PKTINFO = 8  # <linux/in.h>; the socket module lacks the constant
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3
KEEPALIVE_INTERVAL = 20.0
COOKIE_ROTATE = 300.0
TICK = 0.1
TIMER_SCAN = 1.0  # every IKE SA's timer is read again this often (see _tick)
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
ACQUIRE_HOLD = 2.0  # an acquire for a reqid within this many seconds of the last is ignored
REPLACE_GRACE = 10.0  # unique = replace: seconds an older duplicate IKE SA may still live
#: upper bounds (seconds) of the handshake duration histogram's buckets (+Inf is implied)
HANDSHAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Datapath(Protocol):
    """What the manager needs from the daemon."""

    def ike_install_children(self, pairs: list[tuple[IkeSa, ChildSa]]) -> dict[int, str]: ...
    def ike_remove_child(self, child: ChildSa, linger: float) -> None: ...
    def ike_activate_outbound(self, child: ChildSa) -> None: ...
    def ike_install_trap(self, local: IPAddress, remote: IPAddress, cfg: Any,
                         reqid: int) -> None: ...
    def ike_remove_trap(self, reqid: int) -> None: ...
    def ike_spi_in_use(self, spi: int) -> bool: ...
    def ike_cpi_in_use(self, cpi: int) -> bool: ...
    def ike_reqid_in_use(self, reqid: int) -> bool: ...


@dataclass
class IkeStats:
    """Counters for the exporter (``ipsecd_ike_*``)."""

    handshakes: dict[str, int] = field(default_factory=dict)  # result -> count
    rekeys: dict[str, int] = field(default_factory=lambda: {"ike": 0, "child": 0})
    dpd: dict[str, int] = field(default_factory=lambda: {"sent": 0, "timeout": 0})
    retransmissions: int = 0
    cookies_sent: int = 0
    half_open_dropped: int = 0
    invalid_messages: int = 0

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def observe(self, seconds: float) -> None:
        """One handshake duration into the cumulative histogram."""
        self.duration_sum += seconds
        self.duration_count += 1
        for i, le in enumerate(HANDSHAKE_BUCKETS):
            if seconds <= le:
                self.duration_buckets[i] += 1

    duration_sum: float = 0.0
    duration_count: int = 0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(HANDSHAKE_BUCKETS))


class _Socket:
    def __init__(self, family: int, port: int, mark: int) -> None:
        self.family = family
        self.port = port
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.bind(("::", port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def recv(self) -> tuple[bytes, Endpoint, Endpoint] | None:
        try:
            data, anc, _flags, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(32))
        except (BlockingIOError, InterruptedError):
            return None
        local: IPAddress | None = None
        for level, kind, value in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                local = _address(value[8:12])  # ipi_addr: the header's destination
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= 16:
                local = _address(value[:16])
        remote_addr = _address(addr[0].split("%", 1)[0])
        if local is None:
            return None
        return data, Endpoint(local, self.port), Endpoint(remote_addr, int(addr[1]))

    def send(self, data: bytes, local: IPAddress, remote: Endpoint) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.sock.sendmsg([data], [_pktinfo(local)], 0, (_text(remote.address), remote.port))

    def close(self) -> None:
        self.sock.close()


# A peer's address is parsed, and ours and its written, for every datagram; its
# conversation is a few datagrams, each of its IKE SAs' a few more: they are remembered.
@functools.lru_cache(maxsize=4096)
def _address(raw: str | bytes) -> IPAddress:
    return ipaddress.ip_address(raw)


@functools.lru_cache(maxsize=4096)
def _text(address: IPAddress) -> str:
    return str(address)


@functools.lru_cache(maxsize=256)
def _pktinfo(local: IPAddress) -> tuple[int, int, bytes]:
    """The ancillary data that makes a datagram leave from ``local`` (IP_PKTINFO)."""
    if local.version == 6:
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", local.packed, 0))
    return (socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, local.packed, b"\0" * 4))

def _addr_matches(patterns: Iterable[str], address: IPAddress) -> bool:
    any_seen = False
    for p in patterns:
        if p in ("%any", "%any4", "%any6", "0.0.0.0/0", "::/0"):
            if p == "%any" or (p in ("%any4", "0.0.0.0/0")) == (address.version == 4):
                return True
            continue
        any_seen = True
        network = _network(p)
        if network is not None and address in network:
            return True
    return not any_seen and not list(patterns)


@functools.lru_cache(maxsize=1024)
def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A configured address or prefix, parsed once (None: not one)."""
    try:
        return ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return None


class IkeManager:
    """All IKE SAs of the daemon (module docstring)."""

    def __init__(self, settings: Any, datapath: Datapath, *, mark: int = 0,
                 allow_legacy: bool = False, psk_table: Any = None) -> None:
        self.settings = settings
        self.datapath = datapath
        self.mark = mark
        self.psk_table = psk_table
        self.stats = IkeStats()
        self.sas: dict[bytes, IkeSa] = {}  # our SPI -> SA
        self.half_open_init: dict[tuple[bytes, IPAddress, int], IkeSa] = {}  # (SPIi, peer) -> SA
        # (connection, peer identity) -> the SAs that came up with it (IkeUp, IkeRekeyed):
        # the candidates of _same_peer, so that a new IKE SA is not compared with every other
        self._by_peer: dict[tuple[int, int, bytes], list[IkeSa]] = {}
        self.sockets: dict[tuple[int, int], _Socket] = {}
        self._reserved_spis: set[int] = set()
        self._reserved_cpis: set[int] = set()
        self._reqid = 0x1000
        self._creds: dict[str, tuple[list[Any], Any]] = {}
        self._trust: dict[str, list[Any]] = {}
        self._restart: dict[str, tuple[float, int]] = {}  # conn -> (when, attempt)
        self._replace_at: dict[bytes, tuple[float, IkeSa]] = {}  # old SPI -> (when, new SA)
        # Timers: a heap of (due, n, SA) hints, and per SA (by id) its earliest entry's due.
        self._timers: list[tuple[float, int, IkeSa]] = []
        self._timer_at: dict[int, float] = {}
        self._timer_seq = itertools.count()
        self.traps: dict[int, tuple[str, Any]] = {}  # reqid -> (connection, child config)
        self._acquired: dict[int, float] = {}  # reqid -> when last acted on
        self._pending_acquires: set[int] = set()
        self._cookie_secrets = [os.urandom(32)]
        self._cookie_version = 0
        self._cookie_rotated = time.monotonic()
        self._keepalive_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.ctx = IkeContext(
            settings=settings, allocate_spi=self._allocate_spi, allocate_reqid=self._allocate_reqid,
            psk=self._psk, connections=self._connections, credentials=self._credentials,
            trust=self._trust_for, allow_legacy=allow_legacy, on_count=self._count,
            reqid_for=self._trap_reqid, allocate_cpi=self._allocate_cpi,
            release_cpi=self._reserved_cpis.discard)
        self.ctx.release_spi = self._release_spi  # type: ignore[attr-defined]
        self.connections = {c.name: c for c in settings.connections}
        self._load_credentials()

    # -- credentials ---------------------------------------------------------------------------------

    def _load_credentials(self, skip: set[str] | None = None) -> None:
        from ipsecd.ike import auth

        for conn in self.settings.connections:
            if skip and conn.name in skip:
                continue
            if conn.local.method == "pubkey":
                chain: list[Any] = []
                for path in conn.local.certs:
                    chain += auth.load_certificates(path)
                key = auth.load_private_key(conn.local.key)
                self._creds[conn.name] = (chain, key)
            if conn.remote.method == "pubkey":
                trust: list[Any] = []
                for path in conn.remote.cacerts:
                    trust += auth.load_certificates(path)
                self._trust[conn.name] = trust

    def _credentials(self, conn: Any) -> tuple[list[Any], Any] | None:
        return self._creds.get(conn.name)

    def _trust_for(self, conn: Any) -> list[Any]:
        return self._trust.get(conn.name, [])

    def _psk(self, conn: Any, remote_id: Identification | None,
             remote: IPAddress) -> bytes | bytearray | None:
        if self.psk_table is None:
            return None
        if remote_id is not None:
            from ipsecd.ike.auth import describe_identity

            found = self.psk_table.lookup(describe_identity(remote_id))
            if found is not None:
                return found  # type: ignore[no-any-return]
        return self.psk_table.lookup(remote)  # type: ignore[no-any-return]

    def _connections(self, local: IPAddress, remote: IPAddress) -> list[Any]:
        return [c for c in self.settings.connections
                if _addr_matches(c.local_addrs, local) and _addr_matches(c.remote_addrs, remote)]

    def _allocate_spi(self) -> int:
        while True:
            spi = int.from_bytes(os.urandom(4), "big")
            if spi < 0x100 or spi in self._reserved_spis or self.datapath.ike_spi_in_use(spi):
                continue
            self._reserved_spis.add(spi)
            return spi

    def _release_spi(self, spi: int) -> None:
        self._reserved_spis.discard(spi)

    def _allocate_cpi(self) -> int:
        """A CPI for an inbound IPComp SA (RFC 3173 §3.3: 256-61439 for negotiated ones),
        unique among the daemon's IPComp SAs and the CPIs offered in exchanges under way."""
        for _ in range(100000):
            cpi = 256 + int.from_bytes(os.urandom(2), "big") % (61440 - 256)
            if cpi in self._reserved_cpis or self.datapath.ike_cpi_in_use(cpi):
                continue
            self._reserved_cpis.add(cpi)
            return cpi
        raise IkeLocalError("no free IPComp CPI")

    def _trap_reqid(self, conn: Any, cfg: Any) -> int | None:
        for reqid, (name, child) in self.traps.items():
            if name == conn.name and child.name == cfg.name:
                return reqid
        return None

    def install_traps(self, conn: Any, *, force: bool = False) -> None:
        """Trap policies for the children with start_action trap (all with ``force``)."""
        local = next((a for a in conn.local_addrs if not a.startswith("%")), None)
        remote = next((a for a in conn.remote_addrs if not a.startswith("%")), None)
        if local is None or remote is None:
            return
        for cfg in conn.children:
            if (cfg.start_action != "trap" and not force) or self._trap_reqid(conn, cfg):
                continue
            reqid = self._allocate_reqid()
            try:
                self.datapath.ike_install_trap(ipaddress.ip_address(local),
                                               ipaddress.ip_address(remote), cfg, reqid)
            except Exception as exc:
                log.error("connection %s: trap for %s not installed: %s", conn.name, cfg.name, exc)
                continue
            self.traps[reqid] = (conn.name, cfg)
            log.info("connection %s: trap policies for %s installed (reqid %d)", conn.name,
                     cfg.name, reqid)

    def remove_traps(self, name: str) -> None:
        for reqid, (conn, _cfg) in list(self.traps.items()):
            if conn == name:
                del self.traps[reqid]
                self.datapath.ike_remove_trap(reqid)

    def acquire(self, reqid: int) -> None:
        """A packet hit a trap policy without an SA: negotiate its child (at most once per
        ACQUIRE_HOLD seconds per trap; a later acquire waits for that, it is not lost)."""
        if reqid in self.traps:
            self._pending_acquires.add(reqid)
            self._run_acquires(time.monotonic())

    def _run_acquires(self, now: float) -> None:
        for reqid in list(self._pending_acquires):
            if now - self._acquired.get(reqid, -1e9) >= ACQUIRE_HOLD:
                self._pending_acquires.discard(reqid)
                self._acquired[reqid] = now
                self._acquire(reqid, now)

    def _acquire(self, reqid: int, now: float) -> None:
        trap = self.traps.get(reqid)
        if trap is None:
            return
        name, cfg = trap
        mine = [s for s in self.sas.values() if s.conn is not None and s.conn.name == name
                and s.state is not State.DEAD]
        up = [s for s in mine if s.state is State.ESTABLISHED]
        if any(c.reqid == reqid for s in up for c in s.children):
            return
        log.info("connection %s: traffic for %s (acquire, reqid %d)", name, cfg.name, reqid)
        if up:
            up[0].add_child(now, cfg)
            self._process(up[0])
        elif not mine and name not in self._restart:
            self.initiate(name, now=now)

    def _allocate_reqid(self) -> int:
        while True:
            self._reqid = self._reqid + 1 if self._reqid < 0x3FFF_FFFF else 0x1000
            if not self.datapath.ike_reqid_in_use(self._reqid):
                return self._reqid

    # -- life ------------------------------------------------------------------------------------

    def open_sockets(self) -> None:
        """Bind the IKE sockets (raises OSError naming the port)."""
        for family in (socket.AF_INET, socket.AF_INET6):
            for port in (self.settings.port, self.settings.nat_t_port):
                try:
                    self.sockets[(family, port)] = _Socket(family, port, self.mark)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here
                        continue
                    self.close_sockets()
                    raise OSError(exc.errno, f"UDP port {port}: {exc.strerror}") from None

    def close_sockets(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if not self.sockets:
            self.open_sockets()
        for s in self.sockets.values():
            loop.add_reader(s.sock.fileno(), self._readable, s)
        self._task = asyncio.create_task(self._ticker())
        now = time.monotonic()
        for conn in self.settings.connections:
            self.install_traps(conn)
        for conn in self.settings.connections:
            if any(ch.start_action == "start" for ch in conn.children):
                self.initiate(conn.name, now=now)

    async def stop(self, timeout: float = 1.0) -> None:
        """DELETE every IKE SA (§1.4.1), wait a little for answers, then forget them all."""
        self._closing = True
        now = time.monotonic()
        for ike in list(self.sas.values()):
            if ike.state is State.ESTABLISHED:
                ike.delete(now, reason="shutdown")
            else:
                ike.close(now, "shutdown")
        self._process_all()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                s.state is State.DELETING for s in self.sas.values()):
            await asyncio.sleep(0.05)
        now = time.monotonic()
        for ike in list(self.sas.values()):
            ike.close(now, "shutdown")
        self._process_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._loop is not None:
            for s in self.sockets.values():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(s.sock.fileno())
        self.close_sockets()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("IKE timer work failed")

    def tick(self, now: float) -> None:
        self._tick(now)
        self._half_open = None
        if now >= self._metrics_at:  # O(SAs): once a second is plenty for a scrape
            self._metrics_at = now + 1.0
            self.last_metrics = self.metrics()

    _metrics_at = 0.0
    _half_open: tuple[int, dict[IPAddress, int]] | None = None
    _scan_at = 0.0  # next full scan of the SAs' timers (_tick)

    last_metrics: dict[str, Any] | None = None

    def _count(self, name: str) -> None:
        if name == "dpd_sent":
            self.stats.dpd["sent"] += 1

    def timer_moved(self, ike: IkeSa) -> None:
        """``ike``'s timer may have moved earlier other than through the manager (which
        reschedules after every call it makes on an SA, :meth:`_process`): take it into the
        heap now, so that it fires at the next tick and not at the next safety scan, up to
        :data:`TIMER_SCAN` later.  Whatever changes an SA's timers behind the manager's
        back calls this."""
        self._schedule(ike)

    def _schedule(self, ike: IkeSa) -> None:
        """Put ``ike``'s next timer into the heap, unless an entry at or before it is there.

        Entries are hints: one that comes due is checked against the SA's timer then (it
        may have moved later, or the SA be gone), so an SA only needs scheduling whenever
        its timer may have moved earlier - after each of its events (:meth:`_process`), or
        when told so (:meth:`timer_moved`)."""
        due = ike.next_timer()
        if due is not None and due < self._timer_at.get(id(ike), float("inf")):
            heapq.heappush(self._timers, (due, next(self._timer_seq), ike))
            self._timer_at[id(ike)] = due

    def _tick(self, now: float) -> None:
        self._replace_due(now)
        self._run_acquires(now)
        # The SAs whose timer is due, from the heap: a tick costs what is due, not a scan of
        # every SA.  Once every TIMER_SCAN seconds each SA is scheduled again anyway (a
        # safety net for a change of timer that no event followed).
        if now >= self._scan_at:
            self._scan_at = now + TIMER_SCAN
            for ike in self.sas.values():
                self._schedule(ike)
        due_now: dict[int, IkeSa] = {}
        heap = self._timers
        while heap and heap[0][0] <= now:
            due, _, ike = heapq.heappop(heap)
            if self._timer_at.get(id(ike)) == due:
                del self._timer_at[id(ike)]
            if self.sas.get(ike.local_spi) is ike:
                due_now[id(ike)] = ike
        for ike in due_now.values():  # once each per tick, as the timers are handled
            when = ike.next_timer()
            if when is not None and when <= now:
                ike.handle_timer(now)
                self._process(ike)
            else:
                self._schedule(ike)  # moved later since it was scheduled
        for key, ike in list(self.half_open_init.items()):
            if ike.state is State.DEAD or not ike.half_open:
                del self.half_open_init[key]
        for name, (when, attempt) in list(self._restart.items()):
            if now >= when and not self._closing:
                del self._restart[name]
                self.initiate(name, now=now, attempt=attempt)
        if now - self._cookie_rotated > COOKIE_ROTATE:
            self._cookie_secrets = [os.urandom(32), self._cookie_secrets[0]]
            self._cookie_version = (self._cookie_version + 1) & 0xFF
            self._cookie_rotated = now
        if now >= self._keepalive_at:
            self._keepalive_at = now + KEEPALIVE_INTERVAL
            for ike in self.sas.values():
                if ike.state is State.ESTABLISHED and ike.nat_local:
                    self._send_raw(NAT_KEEPALIVE, ike.local, ike.remote, marker=False)

    # -- operator commands ---------------------------------------------------------------------------

    def initiate(self, name: str, *, now: float | None = None, attempt: int = 0,
                 replaces: IkeSa | None = None) -> IkeSa:
        conn = self.connections.get(name)
        if conn is None:
            raise KeyError(name)
        now = time.monotonic() if now is None else now
        local_text = next((a for a in conn.local_addrs if not a.startswith("%")), None)
        remote_text = next((a for a in conn.remote_addrs if not a.startswith("%")), None)
        if local_text is None or remote_text is None:
            raise ValueError(f"connection {name}: initiating needs concrete local_addrs and "
                             f"remote_addrs")
        local = Endpoint(ipaddress.ip_address(local_text.split("/")[0]), conn.local_port)
        remote = Endpoint(ipaddress.ip_address(remote_text.split("/")[0]), conn.remote_port)
        ike = IkeSa(self.ctx, conn, initiator=True, local=local, remote=remote, now=now)
        ike.attempt = attempt  # type: ignore[attr-defined]
        if replaces is not None:  # reauthentication: make before break, no INITIAL_CONTACT
            ike.initial_contact = False
            ike.replaces = replaces
        self.sas[ike.local_spi] = ike
        log.info("%s: initiating IKE_SA to %s", ike.describe(), remote)
        try:
            ike.initiate(now)
        except IkeError as exc:
            log.error("connection %s: %s", name, exc)
            ike.close(now, str(exc))
        self._process(ike)
        return ike

    def terminate(self, name: str) -> int:
        now = time.monotonic()
        n = 0
        self._restart.pop(name, None)
        for ike in list(self.sas.values()):
            if ike.conn is not None and ike.conn.name == name and ike.state is not State.DEAD:
                ike.terminated = True  # type: ignore[attr-defined]
                ike.delete(now, reason="terminated by the operator")
                self._process(ike)
                n += 1
        return n

    def reload(self, settings: Any, psk_table: Any) -> dict[str, list[str]]:
        """Take a new configuration; connections that did not change are not touched.

        Removed and changed connections lose their IKE SAs (DELETE sent);
        added and changed ones start when a child says ``start_action = start``.
        """
        import dataclasses

        def same(a: Any, b: Any) -> bool:
            return bool(dataclasses.replace(a, line=0) == dataclasses.replace(b, line=0))

        old = self.connections
        new = {c.name: c for c in settings.connections}
        report: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
        merged = []
        for c in settings.connections:
            if c.name not in old:
                report["added"].append(c.name)
                merged.append(c)
            elif same(old[c.name], c):
                report["unchanged"].append(c.name)
                merged.append(old[c.name])  # the IKE SAs keep pointing at the same object
            else:
                report["changed"].append(c.name)
                merged.append(c)
        report["removed"] = [n for n in old if n not in new]
        for name in report["removed"] + report["changed"]:
            self.terminate(name)
            self.remove_traps(name)
        settings = dataclasses.replace(settings, connections=tuple(merged))
        if self.psk_table is not None and self.psk_table is not psk_table:
            self.psk_table.wipe()
        self.psk_table = psk_table
        self.settings = settings
        self.ctx.settings = settings
        self.connections = {c.name: c for c in merged}
        self._creds = {k: v for k, v in self._creds.items() if k in report["unchanged"]}
        self._trust = {k: v for k, v in self._trust.items() if k in report["unchanged"]}
        self._load_credentials(skip=set(report["unchanged"]))
        now = time.monotonic()
        for name in report["added"] + report["changed"]:
            conn = self.connections[name]
            self.install_traps(conn)
            if any(ch.start_action == "start" for ch in conn.children):
                self.initiate(name, now=now)
        log.info("IKE configuration reloaded: %s", ", ".join(
            f"{k} {' '.join(v)}" for k, v in report.items() if v and k != "unchanged") or
            "no connection changed")
        return report

    def rekey(self, name: str, *, ike_sa: bool = False) -> int:
        """Rekey the Child SAs (or, with ``ike_sa``, the IKE SAs) of a connection now."""
        now = time.monotonic()
        n = 0
        for ike in list(self.sas.values()):
            if ike.conn is None or ike.conn.name != name or ike.state is not State.ESTABLISHED:
                continue
            if ike_sa:
                ike.rekey(now)
                n += 1
            else:
                for child in list(ike.children):
                    ike.rekey_child(now, child)
                    n += 1
            self._process(ike)
        return n

    def list_sas(self) -> list[dict[str, Any]]:
        return [ike.summary() for ike in self.sas.values()
                if ike.state is not State.DEAD]

    def list_conns(self) -> list[dict[str, Any]]:
        from ipsecd.ike.auth import describe_identity
        from ipsecd.ike.proposals import describe

        out = []
        for c in self.settings.connections:
            out.append({
                "name": c.name, "version": c.version, "local_addrs": list(c.local_addrs),
                "remote_addrs": list(c.remote_addrs),
                "local_auth": c.local.method, "remote_auth": c.remote.method,
                "local_id": describe_identity(c.local.id) if c.local.id else "",
                "remote_id": describe_identity(c.remote.id) if c.remote.id else "%any",
                "proposals": [describe(p) for p in c.proposals],
                "children": [{
                    "name": ch.name, "mode": ch.mode.value, "start_action": ch.start_action,
                    "local_ts": [_ts_text(t) for t in ch.local_ts],
                    "remote_ts": [_ts_text(t) for t in ch.remote_ts],
                    "esp_proposals": [describe(p) for p in ch.esp_proposals],
                } for ch in c.children],
                "ike_sas": sum(1 for s in self.sas.values() if s.conn is c
                               and s.state is State.ESTABLISHED),
            })
        return out

    def metrics(self) -> dict[str, Any]:
        """A snapshot for the exporter, built in the event loop (the exporter's thread only
        reads the finished object: :attr:`last_metrics`)."""
        st = self.stats
        now = time.monotonic()
        wall = time.time()
        conns: dict[str, dict[str, Any]] = {
            c.name: {"ike_sas": 0, "children": 0, "child_expiry": {}} for c in self.settings.connections}
        for ike in self.sas.values():
            if ike.conn is None or ike.state is not State.ESTABLISHED:
                continue
            row = conns.setdefault(ike.conn.name, {"ike_sas": 0, "children": 0, "child_expiry": {}})
            row["ike_sas"] += 1
            for c in ike.children:
                row["children"] += 1
                if c.expire_at:
                    left = max(0.0, c.expire_at - now)
                    prev = row["child_expiry"].get(c.name)
                    row["child_expiry"][c.name] = left if prev is None else min(prev, left)
        certs = []
        from ipsecd.ike.auth import not_after

        for name, (chain, _key) in self._creds.items():
            for cert in chain[:1]:
                certs.append({"connection": name, "role": "local",
                              "subject": cert.subject.rfc4514_string(),
                              "not_after": not_after(cert)})
        for name, trust in self._trust.items():
            for cert in trust:
                certs.append({"connection": name, "role": "ca",
                              "subject": cert.subject.rfc4514_string(),
                              "not_after": not_after(cert)})
        return {
            "time": wall,
            "states": self.states(),
            "half_open": self.half_open_count(),
            "handshakes": dict(st.handshakes),
            "handshake_seconds": {"buckets": list(zip(HANDSHAKE_BUCKETS, st.duration_buckets,
                                                      strict=True)),
                                  "sum": st.duration_sum, "count": st.duration_count},
            "rekeys": dict(st.rekeys),
            "dpd": dict(st.dpd),
            "retransmissions": st.retransmissions,
            "cookies_sent": st.cookies_sent,
            "half_open_dropped": st.half_open_dropped,
            "invalid_messages": st.invalid_messages,
            "connections": conns,
            "certificates": certs,
        }

    def half_open_count(self) -> int:
        return sum(1 for s in self.sas.values() if not s.initiator and s.half_open)

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sas.values():
            out[s.state.value] = out.get(s.state.value, 0) + 1
        return out

    # -- datapath notifications -------------------------------------------------------------------

    def child_soft_expired(self, reqid: int, spi: int) -> None:
        """The datapath's byte/packet soft limit of an SA of ours was reached: rekey its child."""
        now = time.monotonic()
        for ike in self.sas.values():
            for child in ike.children:
                if child.reqid == reqid and spi in (child.spi_in, child.spi_out):
                    ike.rekey_child(now, child)
                    self._process(ike)
                    return

    def child_hard_expired(self, reqid: int, spi: int) -> None:
        now = time.monotonic()
        for ike in self.sas.values():
            for child in list(ike.children):
                if child.reqid == reqid and spi in (child.spi_in, child.spi_out):
                    child.expire_at = now
                    self.timer_moved(ike)  # should handle_timer not act on it now
                    ike.handle_timer(now)
                    self._process(ike)
                    return

    def traffic_seen(self, spis: set[int], now: float | None = None) -> None:
        """Inbound ESP arrived on these SPIs: the peer is alive (no DPD probe needed)."""
        now = time.monotonic() if now is None else now
        for ike in self.sas.values():
            if any(c.spi_in in spis for c in ike.children):
                ike.heard(now)

    # -- receiving ------------------------------------------------------------------------------

    def _readable(self, s: _Socket) -> None:
        # Events of the whole batch of datagrams are handled together at its end: the Child
        # SAs they negotiated are installed in one datapath transaction (the SA table, the
        # policy document and the workers are updated once, not once per child), and only
        # then do the answers leave - a peer never hears of an SA we have not installed.
        self._batch = []
        try:
            self._read_batch(s)
        finally:
            batch, self._batch = self._batch, None
            self._flush(batch)

    _batch: list[Any] | None = None

    def _flush(self, events: list[Any]) -> None:
        ups = [e for e in events if isinstance(e, ChildUp)]
        if ups:
            for e in ups:
                self._release_spi(e.child.spi_in)
                self._reserved_cpis.discard(e.child.ipcomp_cpi)  # the SAD has it now
            failed = self.datapath.ike_install_children([(e.ike, e.child) for e in ups])
            now = time.monotonic()
            for e in ups:
                error = failed.get(id(e.child))
                if error is not None:
                    log.error("%s: CHILD_SA %s could not be installed: %s", e.ike.describe(),
                              e.child.name, error)
                    e.ike.child_failed(now, e.child)  # DELETE it at the peer too
                    self._process(e.ike)
                elif e.replaces is not None:
                    self.stats.rekeys["child"] += 1
        for event in events:
            if isinstance(event, ChildUp):
                continue
            try:
                self._handle(event)
            except Exception:
                log.exception("handling %s failed", type(event).__name__)

    def _read_batch(self, s: _Socket) -> None:
        for _ in range(64):
            got = s.recv()
            if got is None:
                return
            data, local, remote = got
            if s.port == self.settings.nat_t_port:
                if len(data) < 4 or data[:4] != NON_ESP_MARKER:
                    continue  # a NAT keepalive (or ESP the nft table should have taken)
                data = data[4:]
            try:
                self.receive(data, local, remote, time.monotonic())
            except Exception:
                log.exception("IKE message from %s could not be handled", remote)

    def receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        try:
            header = decode_header(data)
        except InvalidMajorVersionError as exc:
            self.stats.invalid_messages += 1
            log.info("IKE message of major version %d from %s: IKEv1 is not supported yet",
                     exc.major_version, remote)
            return
        except IkeProtocolError:
            self.stats.invalid_messages += 1
            return
        if header.exchange_type is ExchangeType.IKE_SA_INIT and not header.response:
            if header.spi_r != b"\x00" * 8 or header.message_id != 0:
                return
            existing = self.half_open_init.get((header.spi_i, remote.address, remote.port))
            if existing is not None and existing.state is not State.DEAD:
                existing.receive(data, now, remote, local)
                self._process(existing)
                return
            self._new_responder(data, local, remote, now)
            return
        # §2.23: the original initiator's messages carry its I flag; our SPI is the other one.
        ours = header.spi_r if header.initiator else header.spi_i
        ike = self.sas.get(ours)
        if ike is None:
            self.stats.invalid_messages += 1
            return
        if ike.state is State.DEAD:
            return
        ike.receive(data, now, remote, local)
        self._process(ike)

    def _cookie(self, version: int, spi_i: bytes, ni: bytes, remote: IPAddress) -> bytes:
        secret = self._cookie_secrets[0 if version == self._cookie_version else 1]
        mac = hmac.new(secret, ni + remote.packed + spi_i, hashlib.sha256).digest()[:16]
        return bytes((version,)) + mac

    def _new_responder(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        try:
            message = decode(data)
        except IkeProtocolError:
            self.stats.invalid_messages += 1
            return
        if self._half_open is None:  # counted once per tick, then kept up to date here
            per_peer: dict[IPAddress, int] = {}
            for s in self.sas.values():
                if not s.initiator and s.half_open:
                    per_peer[s.remote.address] = per_peer.get(s.remote.address, 0) + 1
            self._half_open = (sum(per_peer.values()), per_peer)
        half_open, counts = self._half_open
        peer_half_open = counts.get(remote.address, 0)
        if half_open >= self.settings.half_open_max or \
                peer_half_open >= self.settings.half_open_per_peer:
            self.stats.half_open_dropped += 1
            return
        nonce = next((p for p in message.payloads if isinstance(p, Nonce)), None)
        if half_open >= self.settings.cookie_threshold and nonce is not None:
            got = next((p for p in message.payloads if isinstance(p, Notify)
                        and p.notify_type == NotifyType.COOKIE), None)
            valid = False
            if got is not None and len(got.data) == 17:
                valid = any(hmac.compare_digest(got.data, self._cookie(v, message.spi_i,
                                                                       nonce.data, remote.address))
                            for v in {got.data[0]} if v in (self._cookie_version,
                                                           (self._cookie_version - 1) & 0xFF))
            if not valid:
                cookie = self._cookie(self._cookie_version, message.spi_i, nonce.data,
                                      remote.address)
                demand = encode(Message(message.spi_i, b"\x00" * 8, ExchangeType.IKE_SA_INIT, 0,
                                        response=True, payloads=[Notify.cookie(cookie)]))
                self.stats.cookies_sent += 1
                self._send_raw(demand, local, remote)
                return
        if not any(isinstance(p, SA) for p in message.payloads):
            self.stats.invalid_messages += 1
        try:
            ike, reply = IkeSa.respond_init(self.ctx, data, message, local=local, remote=remote,
                                            now=now)
        except IkeError as exc:
            log.info("IKE_SA_INIT from %s refused: %s", remote, exc)
            self.stats.count(self.stats.handshakes, "failed")
            return
        if reply is not None:
            self._send_raw(reply, local, remote)
        if ike is None:
            self.stats.count(self.stats.handshakes, "refused")
            return
        self.sas[ike.local_spi] = ike
        self.half_open_init[(ike.spi_i, remote.address, remote.port)] = ike
        counts[remote.address] = peer_half_open + 1
        self._half_open = (half_open + 1, counts)
        self._process(ike)

    # -- events ---------------------------------------------------------------------------------

    def _process_all(self) -> None:
        for ike in list(self.sas.values()):
            self._process(ike)

    def _process(self, ike: IkeSa) -> None:
        if self._batch is not None:
            self._batch.extend(ike.events())
        else:
            for event in ike.events():
                try:
                    self._handle(event)
                except Exception:
                    log.exception("%s: handling %s failed", ike.describe(), type(event).__name__)
        self._schedule(ike)  # whatever happened to it may have brought its timer forward

    def _handle(self, event: Any) -> None:
        if isinstance(event, Send):
            if event.retransmit:
                self.stats.retransmissions += 1
            for d in event.datagrams:
                self._send_raw(d, event.local, event.remote)
        elif isinstance(event, ChildUp):
            self._flush([event])  # the batched install path, for one child
        elif isinstance(event, ChildDown):
            self.datapath.ike_remove_child(event.child, event.linger)
        elif isinstance(event, ChildActivate):
            self.datapath.ike_activate_outbound(event.child)
        elif isinstance(event, IkeUp):
            self._index_peer(event.ike)
            self.stats.count(self.stats.handshakes, "success")
            self.stats.observe(event.duration)
            self._restart.pop(event.ike.name, None)
            self._replace_duplicates(event.ike)
            old = event.ike.replaces
            if old is not None and old.state is State.ESTABLISHED:
                log.info("%s: reauthenticated as %s", old.describe(), event.ike.describe())
                old.delete(time.monotonic(), reason="reauthenticated")
                self._process(old)
        elif isinstance(event, ReauthNeeded):
            if not self._closing and event.ike.conn is not None:
                log.info("%s: reauthenticating", event.ike.describe())
                self.initiate(event.ike.conn.name, replaces=event.ike)
        elif isinstance(event, IkeRekeyed):
            self.stats.rekeys["ike"] += 1
            self.sas[event.new.local_spi] = event.new
            self._index_peer(event.new)
            self._process(event.new)
        elif isinstance(event, InitialContact):
            self._initial_contact(event.ike)
        elif isinstance(event, IkeDown):
            self._ike_down(event)

    def _ike_down(self, event: IkeDown) -> None:
        ike = event.ike
        self.sas.pop(ike.local_spi, None)
        self._unindex_peer(ike)
        self.half_open_init.pop((ike.spi_i, ike.remote.address, ike.remote.port), None)
        if event.failed:
            self.stats.count(self.stats.handshakes, "failed")
        if event.peer_lost and ike.dpd_failed:
            self.stats.dpd["timeout"] += 1
        log.log(25 if not event.failed else 30, "%s: IKE SA down: %s", ike.describe(),
                event.reason)
        conn = ike.conn
        if conn is None or self._closing or getattr(ike, "terminated", False):
            return
        if event.reason in ("rekeyed", "IKE rekey collision", "reauthenticated"):
            return
        if event.peer_lost and conn.dpd_action == "trap":
            self.install_traps(conn, force=True)
            return
        restart = (event.peer_lost and conn.dpd_action == "restart") or (
            event.failed and ike.initiator)
        if not restart:
            return
        if any(s.conn is conn and s.state is not State.DEAD and s is not ike
               for s in self.sas.values()):
            return
        attempt = getattr(ike, "attempt", 0) + 1
        if event.failed and not event.peer_lost and conn.keyingtries and attempt >= conn.keyingtries:
            log.warning("connection %s: giving up after %d attempt(s)", conn.name, attempt)
            return
        delay = RESTART_DELAYS[min(attempt - 1, len(RESTART_DELAYS) - 1)]
        self._restart[conn.name] = (time.monotonic() + delay, attempt)
        log.info("connection %s: initiating again in %.0f s", conn.name, delay)

    def _same_peer(self, a: IkeSa, b: IkeSa) -> bool:
        return (a is not b and a.conn is b.conn and a.peer_id is not None and b.peer_id is not None
                and a.peer_id.id_type == b.peer_id.id_type and a.peer_id.data == b.peer_id.data
                and b.state in (State.ESTABLISHED,))

    @staticmethod
    def _peer_key(ike: IkeSa) -> tuple[int, int, bytes] | None:
        if ike.peer_id is None:
            return None
        return (id(ike.conn), int(ike.peer_id.id_type), bytes(ike.peer_id.data))

    def _index_peer(self, ike: IkeSa) -> None:
        key = self._peer_key(ike)
        if key is not None:
            group = self._by_peer.setdefault(key, [])
            if ike not in group:
                group.append(ike)

    def _unindex_peer(self, ike: IkeSa) -> None:
        key = self._peer_key(ike)
        group = self._by_peer.get(key) if key is not None else None
        if group is not None:
            group[:] = [s for s in group if s is not ike and self.sas.get(s.local_spi) is s]
            if not group:
                del self._by_peer[key]  # type: ignore[arg-type]

    def _same_peer_sas(self, ike: IkeSa) -> list[IkeSa]:
        """The SAs of ``self.sas`` that :meth:`_same_peer` pairs with ``ike``, oldest first.

        Only an SA that came up (IkeUp, IkeRekeyed) is ESTABLISHED with a peer identity,
        so the index holds every candidate."""
        key = self._peer_key(ike)
        if key is None:
            return []
        return [s for s in self._by_peer.get(key, ())
                if self.sas.get(s.local_spi) is s and self._same_peer(ike, s)]

    def _initial_contact(self, ike: IkeSa) -> None:
        """§2.4: the peer restarted; its older IKE SAs (and their children) are gone."""
        now = time.monotonic()
        for other in self._same_peer_sas(ike):
            if other.remote.address == ike.remote.address:
                log.info("%s: INITIAL_CONTACT from the peer: closing %s", ike.describe(),
                         other.describe())
                other.close(now, "replaced after INITIAL_CONTACT")
                self._process(other)

    def _replace_duplicates(self, ike: IkeSa) -> None:
        """unique = replace: older IKE SAs of the same peer identity go - after a grace
        period, since a peer that reauthenticates (make-before-break) deletes the old one
        itself once the new one is up, and deleting it first would cut its traffic."""
        if ike.conn is None or ike.conn.unique != "replace" or ike.initiator:
            return
        due = time.monotonic() + REPLACE_GRACE
        for other in self._same_peer_sas(ike):
            self._replace_at[other.local_spi] = (due, ike)

    def _replace_due(self, now: float) -> None:
        for spi, (due, new) in list(self._replace_at.items()):
            if now < due:
                continue
            del self._replace_at[spi]
            other = self.sas.get(spi)
            if other is not None and other.state is State.ESTABLISHED and new.alive:
                log.info("%s: replaces %s (unique = replace)", new.describe(), other.describe())
                other.delete(now, reason="replaced by a new IKE SA")
                self._process(other)

    def _send_raw(self, data: bytes, local: Endpoint, remote: Endpoint, *,
                  marker: bool = True) -> None:
        family = socket.AF_INET if remote.address.version == 4 else socket.AF_INET6
        s = self.sockets.get((family, local.port))
        if s is None:
            log.debug("no socket for %s", local)
            return
        if local.port == self.settings.nat_t_port and marker:
            data = NON_ESP_MARKER + data
        s.send(data, local.address, remote)


def _ts_text(spec: Any) -> str:
    if getattr(spec, "network", None) is None:
        return "dynamic"
    text = str(spec.network)
    if spec.protocol:
        text += f"[{spec.protocol}"
        if (spec.start_port, spec.end_port) != (0, 0xFFFF):
            text += f"/{spec.start_port}" if spec.start_port == spec.end_port else \
                f"/{spec.start_port}-{spec.end_port}"
        text += "]"
    return text

