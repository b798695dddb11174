"""Two sans-I/O IKE SA state machines wired back to back, for tests (no sockets, no clock).

``Pair`` plays the network between an initiator and a responder: it moves
every :class:`~ipsecd.ike.sa.Send` of one side to the other (optionally
dropping, duplicating or delaying datagrams) and keeps the other events
for the test to look at.  Time is a number the test advances.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsecd.ike import proposals as props
from ipsecd.ike.config import AuthConfig, ChildConfig, ConnectionConfig, IkeConfig
from ipsecd.ike.messages import decode, decode_header
from ipsecd.ike.sa import ChildDown, ChildUp, Endpoint, IkeContext, IkeSa, Send
from ipsecd.ike.ts import parse_ts
from ipsecd.sa import Mode

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
PSK = b"a pre-shared key that is long enough"


def child(name: str = "net", local_ts: Sequence[str] = ("198.51.100.0/24",),
          remote_ts: Sequence[str] = ("203.0.113.0/24",), *, mode: Mode = Mode.TUNNEL,
          esp: str | Sequence[str] = "default", rekey_time: float = 0.0,
          life_time: float = 0.0, start_action: str = "start", ipcomp: bool = False) -> ChildConfig:
    return ChildConfig(
        name=name, local_ts=tuple(parse_ts(t) for t in local_ts),
        remote_ts=tuple(parse_ts(t) for t in remote_ts), mode=mode,
        esp_proposals=tuple(props.parse_esp(esp)), start_action=start_action,
        close_action="none", rekey_time=rekey_time, life_time=life_time, rekey_bytes=0,
        life_bytes=0, rekey_packets=0, life_packets=0, replay_window=1024, ipcomp=ipcomp)


def connection(name: str, local: Any, remote: Any, children: Sequence[ChildConfig], *,
               proposals: str | Sequence[str] = "default", local_id: str | None = None,
               remote_id: str | None = None, rekey_time: float = 0.0, dpd_delay: float = 0.0,
               dpd_timeout: float = 0.0, dpd_action: str = "clear", encap: bool = False,
               local_auth: str = "psk", remote_auth: str = "psk", certs: Sequence[Any] = (),
               key: Any = None, cacerts: Sequence[Any] = ()) -> ConnectionConfig:
    def parse_identity(text: str) -> Any:
        from ipsecd.ike.auth import parse_identity as parse

        return parse(text)

    return ConnectionConfig(
        name=name, version=2, local_addrs=(str(local),), remote_addrs=(str(remote),),
        local_port=500, remote_port=500, proposals=tuple(props.parse_ike(proposals)),
        local=AuthConfig(local_auth, parse_identity(local_id) if local_id else None,
                         tuple(certs), key),
        remote=AuthConfig(remote_auth, parse_identity(remote_id) if remote_id else None,
                          cacerts=tuple(cacerts)),
        rekey_time=rekey_time, reauth_time=0.0, over_time=0.0, dpd_delay=dpd_delay,
        dpd_timeout=dpd_timeout, dpd_action=dpd_action, encap=encap, fragmentation=True,
        keyingtries=1, unique="replace", children=tuple(children), line=1)


@dataclass
class Side:
    """One peer: its context, its connection(s), its IKE SAs and what happened to it."""

    address: Any
    conns: list[ConnectionConfig]
    psk: bytes = PSK
    settings: IkeConfig = field(default_factory=lambda: IkeConfig(retransmit_timeout=1.0,
                                                                  retransmit_tries=3))
    credentials: Callable[[Any], Any] = lambda conn: None
    trust: Callable[[Any], list[Any]] = lambda conn: []
    sas: list[IkeSa] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    spis: set[int] = field(default_factory=set)
    next_spi: int = 0
    reqid: int = 0
    cpis: list[int] = field(default_factory=list)  # IPComp CPIs allocated, in order
    released_cpis: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = 0x1000_0000 if self.address == A else 0x2000_0000

        def spi() -> int:
            self.next_spi += 1
            return base + self.next_spi

        def reqid() -> int:
            self.reqid += 1
            return self.reqid

        def cpi() -> int:
            self.cpis.append((0x1100 if self.address == A else 0x2200) + len(self.cpis))
            return self.cpis[-1]

        self.ctx = IkeContext(
            settings=self.settings, allocate_spi=spi, allocate_reqid=reqid,
            psk=lambda conn, rid, addr: self.psk,
            connections=lambda local, remote: list(self.conns),
            credentials=self.credentials, trust=self.trust,
            allocate_cpi=cpi, release_cpi=self.released_cpis.append)

    def children_up(self) -> list[Any]:
        return [e.child for e in self.events if isinstance(e, ChildUp)]

    def children_down(self) -> list[Any]:
        return [e.child for e in self.events if isinstance(e, ChildDown)]

    def live(self) -> list[IkeSa]:
        from ipsecd.ike.sa import State

        return [s for s in self.sas if s.state is not State.DEAD]


class Pair:
    """The network between two sides: queues of datagrams, a clock, loss on request."""

    def __init__(self, a: Side, b: Side) -> None:
        self.a, self.b = a, b
        self.now = 1000.0
        self.wire: list[tuple[Side, Send, bytes]] = []  # (destination side, send, datagram)
        self.delivered: list[bytes] = []
        self.drop: Callable[[bytes], bool] = lambda d: False

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def initiate(self, conn: ConnectionConfig | None = None) -> IkeSa:
        conn = conn or self.a.conns[0]
        ike = IkeSa(self.a.ctx, conn, initiator=True, local=Endpoint(self.a.address, 500),
                    remote=Endpoint(self.b.address, 500), now=self.now)
        self.a.sas.append(ike)
        ike.initiate(self.now)
        self.collect(self.a)
        return ike

    def collect(self, side: Side) -> None:
        for ike in list(side.sas):
            for event in ike.events():
                if isinstance(event, Send):
                    for d in event.datagrams:
                        self.wire.append((self.other(side), event, d))
                else:
                    side.events.append(event)
                    from ipsecd.ike.sa import IkeRekeyed

                    if isinstance(event, IkeRekeyed):
                        side.sas.append(event.new)
                        self.collect(side)

    def deliver_one(self) -> bool:
        if not self.wire:
            return False
        dest, send, data = self.wire.pop(0)
        self.delivered.append(data)
        if self.drop(data):
            return True
        header = decode_header(data)
        from ipsecd.ike.constants import ExchangeType

        src = Endpoint(send.local.address, send.local.port)
        dst = Endpoint(send.remote.address, send.remote.port)
        if header.exchange_type is ExchangeType.IKE_SA_INIT and not header.response \
                and header.spi_r == b"\x00" * 8:
            existing = [s for s in dest.sas if s.spi_i == header.spi_i and not s.initiator]
            if existing:
                existing[0].receive(data, self.now, src, dst)
            else:
                ike, reply = IkeSa.respond_init(dest.ctx, data, decode(data), local=dst,
                                                remote=src, now=self.now)
                if ike is not None:
                    dest.sas.append(ike)
                if reply is not None:
                    self.wire.append((self.other(dest), Send([reply], dst, src), reply))
        else:
            ours = header.spi_r if header.initiator else header.spi_i
            for ike in dest.sas:
                if ike.local_spi == ours:
                    ike.receive(data, self.now, src, dst)
                    break
        self.collect(dest)
        return True

    def run(self, limit: int = 200) -> int:
        n = 0
        while self.deliver_one():
            n += 1
            if n > limit:
                raise AssertionError("message loop: the exchange does not settle")
        return n

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move the clock, firing timers on both sides and delivering what they send."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for side in (self.a, self.b):
                for ike in list(side.sas):
                    due = ike.next_timer()
                    if due is not None and due <= self.now:
                        ike.handle_timer(self.now)
                self.collect(side)
            self.run()
