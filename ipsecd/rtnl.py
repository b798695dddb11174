"""A minimal rtnetlink client for the two route operations IKE does per Child SA.

Theory of operation
-------------------
Every Child SA an IKE responder installs asks the kernel twice: the route
to the peer (path MTU and outside interface of the outbound SA,
``RTM_GETROUTE``) and a route of the peer's traffic selector into the TUN
(``RTM_NEWROUTE`` with ``NLM_F_REPLACE``).  pyroute2 spends about a
millisecond of Python per message building and parsing it, more than the
rest of a Child SA's installation; here a request is one ``struct.pack``
and an answer a walk over a few attributes.  Requests of a batch go out
together and their answers are matched by sequence number
(RFC 3549 §2.3.2: each request is acknowledged with an ``NLMSG_ERROR``,
error 0 for success, when it carries ``NLM_F_ACK``).

The routes made are the ones pyroute2's ``route("replace", ...)`` made
before (protocol static, scope universe, unicast), so routes of an older
daemon are replaced and removed alike.  Everything else (links, addresses,
rules) stays with pyroute2: it happens at start-up, not per SA.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
RTA_DST = 1
RTA_OIF = 4
RTA_PREFSRC = 7
RTA_METRICS = 8
RTA_TABLE = 15
RTA_MARK = 16
RTAX_MTU = 2
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RT_TABLE_COMPAT = 252  # the rtmsg's table byte when the table id needs RTA_TABLE

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")
BATCH = 256  # requests in flight at once (their answers must fit the receive buffer)
TIMEOUT = 5.0  # seconds to wait for the kernel's answers (socket.timeout after that)
_MASKS = {4: (1 << 32) - 1, 6: (1 << 128) - 1}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is set)."""


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What ``RTM_GETROUTE`` says about a destination."""

    oif: int  # outgoing interface index (0: none)
    mtu: int  # the route's MTU metric (0: none, the interface's applies)


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + bytes(-length % 4)


def _attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each attribute in ``data[start:end]``."""
    while start + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, start)
        if length < _RTA.size or start + length > end:
            return
        yield kind & 0x3FFF, start + _RTA.size, start + length  # without NLA_F_NESTED etc.
        start += (length + 3) & ~3


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _packed_address(text: str) -> bytes:
    """``ipaddress.ip_address(text).packed``, parsed by the C library (IKE adds a route per
    Child SA; ipaddress's parser costs several microseconds an address)."""
    try:
        return socket.inet_pton(_family(6 if ":" in text else 4), text)
    except OSError:
        return ipaddress.ip_address(text).packed  # what inet_pton does not take, or its error


def _prefix(text: str) -> tuple[int, int, bytes]:
    """(IP version, prefix length, network address packed) of ``ip_network(text,
    strict=False)``, host bits cleared as it does."""
    address, _, length = text.partition("/")
    version, bits = (6, 128) if ":" in address else (4, 32)
    packed = b""
    if length.isascii() and length.isdigit() and int(length) <= bits:
        with contextlib.suppress(OSError):
            packed = socket.inet_pton(_family(version), address)
    if not packed:  # a form this does not take (none of ours): ipaddress decides
        net = ipaddress.ip_network(text, strict=False)
        return net.version, net.prefixlen, net.network_address.packed
    prefixlen = int(length)
    value = int.from_bytes(packed, "big") & (_MASKS[version] ^ ((1 << (bits - prefixlen)) - 1))
    return version, prefixlen, value.to_bytes(bits // 8, "big")


class Rtnl:
    """One rtnetlink socket (not thread-safe: one per thread, or one per batch)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        # Left blocking, without settimeout: a socket with a timeout polls before every send
        # and receive, a second system call each.  The kernel answers a request while it is
        # sent (rtnetlink runs in the sender's context), so the answers are normally there
        # at once; _recv waits (TIMEOUT) only when they are not.
        try:
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self._seq = int.from_bytes(os.urandom(2), "big")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------

    def _message(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq, _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind,
                                         flags | NLM_F_REQUEST, self._seq, 0) + body

    def _exchange(self, messages: list[tuple[int, bytes]]) -> dict[int, tuple[int, bytes]]:
        """Send ``messages`` ((seq, bytes)) and collect each one's answer: {seq: (errno, the
        answer message's bytes)} - errno 0 with the message for data, or for an ACK."""
        out: dict[int, tuple[int, bytes]] = {}
        for i in range(0, len(messages), BATCH):
            chunk = messages[i:i + BATCH]
            # One datagram for the chunk: the kernel takes each message of it in turn and
            # answers each on its own, as when they are sent one by one (netlink_rcv_skb
            # goes on after a message that fails).
            self._send(b"".join(data for _, data in chunk))
            wanted = {seq for seq, _ in chunk}
            while wanted:
                buf = self._recv()
                at = 0
                while at + _NLMSGHDR.size <= len(buf):
                    length, kind, _, seq, _ = _NLMSGHDR.unpack_from(buf, at)
                    if length < _NLMSGHDR.size or at + length > len(buf):
                        break
                    if seq in wanted:
                        if kind == NLMSG_ERROR:
                            out[seq] = (-_ERRNO.unpack_from(buf, at + _NLMSGHDR.size)[0], b"")
                        elif kind != NLMSG_DONE:
                            out[seq] = (0, buf[at:at + length])
                        wanted.discard(seq)
                    at += (length + 3) & ~3
        return out

    def _send(self, data: bytes) -> None:
        while True:
            try:
                self.sock.send(data, socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                if not select.select([], [self.sock], [], TIMEOUT)[1]:
                    raise TimeoutError("timed out") from None

    def _recv(self) -> bytes:
        while True:
            try:
                return self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not select.select([self.sock], [], [], TIMEOUT)[0]:
                    raise TimeoutError("timed out") from None

    def _route_body(self, net: tuple[int, int, bytes], *, table: int, proto: int, scope: int, kind: int,
                    oif: int, src: str | None) -> bytes:
        version, prefixlen, packed = net
        body = _RTMSG.pack(_family(version), prefixlen, 0, 0,
                           table if table < 256 else RT_TABLE_COMPAT, proto, scope, kind, 0)
        body += _attr(RTA_TABLE, _U32.pack(table))
        body += _attr(RTA_DST, packed)
        if src is not None:
            body += _attr(RTA_PREFSRC, _packed_address(src))
        return body + _attr(RTA_OIF, _U32.pack(oif))

    def replace_routes(self, oif: int, table: int,
                       routes: Iterable[tuple[str, str | None]]) -> dict[str, NetlinkError]:
        """``ip route replace PREFIX dev OIF table TABLE [src SRC]`` for each (prefix, src);
        {prefix: error} of those the kernel refused."""
        messages, prefixes = [], {}
        for prefix, src in routes:
            net = _prefix(prefix)
            seq, data = self._message(
                RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                self._route_body(net, table=table, proto=RTPROT_STATIC, scope=RT_SCOPE_UNIVERSE,
                                 kind=RTN_UNICAST, oif=oif, src=src))
            messages.append((seq, data))
            prefixes[seq] = prefix
        answers = self._exchange(messages)
        return {prefixes[seq]: NetlinkError(code, f"{os.strerror(code)} (route {prefixes[seq]})")
                for seq, (code, _) in answers.items() if code}

    def delete_routes(self, oif: int, table: int, prefixes: Iterable[str]) -> dict[str, int]:
        """``ip route del PREFIX dev OIF table TABLE`` for each prefix; {prefix: errno} of
        those that failed (ESRCH: there was none)."""
        messages, names = [], {}
        for prefix in prefixes:
            net = _prefix(prefix)
            seq, data = self._message(
                RTM_DELROUTE, NLM_F_ACK,
                self._route_body(net, table=table, proto=0, scope=RT_SCOPE_NOWHERE, kind=0,
                                 oif=oif, src=None))
            messages.append((seq, data))
            names[seq] = prefix
        return {names[seq]: code for seq, (code, _) in self._exchange(messages).items() if code}

    def get_routes(self, destinations: Iterable[IPAddress],
                   mark: int = 0) -> dict[IPAddress, RouteInfo | None]:
        """``ip route get DST mark MARK`` for each destination (None: no route)."""
        messages, dsts = [], {}
        mark_attr = _attr(RTA_MARK, _U32.pack(mark)) if mark else b""
        for dst in destinations:
            body = _RTMSG.pack(_family(dst.version), dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
            body += _attr(RTA_DST, dst.packed) + mark_attr
            seq, data = self._message(RTM_GETROUTE, 0, body)
            messages.append((seq, data))
            dsts[seq] = dst
        out: dict[IPAddress, RouteInfo | None] = dict.fromkeys(dsts.values())
        for seq, (code, msg) in self._exchange(messages).items():
            if code or not msg:
                continue
            oif = mtu = 0
            # _attrs' walk, written out: an answer has eight or so attributes, and a
            # generator step per attribute cost more than the rest of the parse.
            at, end = _NLMSGHDR.size + _RTMSG.size, len(msg)
            while at + _RTA.size <= end:
                length, kind = _RTA.unpack_from(msg, at)
                if length < _RTA.size or at + length > end:
                    break
                kind &= 0x3FFF
                if kind == RTA_OIF and length >= _RTA.size + 4:
                    oif = _U32.unpack_from(msg, at + _RTA.size)[0]
                elif kind == RTA_METRICS:
                    for sub, s, e in _attrs(msg, at + _RTA.size, at + length):
                        if sub == RTAX_MTU and e - s >= 4:
                            mtu = _U32.unpack_from(msg, s)[0]
                at += (length + 3) & ~3
            out[dsts[seq]] = RouteInfo(oif, mtu)
        return out


__all__ = ["NetlinkError", "RouteInfo", "Rtnl"]
