"""The plaintext side: a multi-queue TUN device, its addresses, routes and policy routing.

Queues
------
The device is ``IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE``: every open of
/dev/net/tun followed by TUNSETIFF with the same name and flags attaches one
more queue (another process may do it: it needs CAP_NET_ADMIN, or to be the
device's owner/group when one is set).  The kernel picks a queue per flow
(rx hash), so one flow is never split across workers.  A queue can be taken
out of the rotation and put back with TUNSETQUEUE (IFF_DETACH_QUEUE /
IFF_ATTACH_QUEUE) without closing it.

Ownership (recommendation): the control process creates the device and keeps
one queue open but *detached*.  A detached queue never receives packets, yet
it keeps the device, its addresses and its routes alive while workers come
and go (a non-persistent TUN disappears with its last open queue, and with
it every route through it).  When the control process exits, for whatever
reason, the device goes away by itself: no leftover interface to clean up, as
there would be with TUNSETPERSIST.  :func:`create` does this; workers call
:meth:`TunQueue.open` with the same name.

No PI header.  One packet per read(2)/write(2); reads go into a buffer the
caller reuses, at an offset the caller chooses, so the ESP encoder can build
the outer headers in front of the plaintext without a copy.

Offloads: opened with ``vnet_hdr=True`` (``IFF_VNET_HDR``), every packet read
or written starts with a 10-byte ``struct virtio_net_hdr``
(:mod:`workers.offload`), which lets a worker write one coalesced TCP packet
for many segments (GSO).  The flag belongs to the device, and the last
TUNSETIFF sets it for every queue: all queues of one device must agree, so
the daemon passes one setting to its own queue and to every worker's.

Routing
-------
:func:`configure` sets MTU, state and addresses, :func:`add_route` routes
remote subnets into the TUN (tunnel mode).  Transport mode sends plaintext to
the peer's own address, which the main table routes out of the real
interface.  :class:`PolicyRouting` puts routes to such peers into a table of
our own and one rule per family, ``not fwmark MARK/MARK lookup TABLE``: traffic
of ordinary sockets to the peer enters the TUN, while our ESP and IKE sockets,
which set SO_MARK to MARK, skip the table and leave through the main table's
route (no loop of ESP into the TUN).  With strict reverse-path filtering
(``rp_filter=1``) on the outside interface, unmarked packets *from* such a
peer fail the check (the reverse route points into the TUN): use loose mode
(``rp_filter=2``), which Debian's systemd default already is.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_interface, ip_network
from typing import Any

Buffer = bytes | bytearray | memoryview

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
TUNSETQUEUE = 0x400454D9
IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_FLAGS = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE
VNET_HDR_LEN = 10
_ZERO_HDR = bytes(VNET_HDR_LEN)
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, rest of the union
FIB_RULE_INVERT = 0x00000002
IFA_F_NODAD = 0x02


class TunQueue:
    """One queue (file descriptor) of a multi-queue TUN device."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        # FileIO.readinto is the cheapest read into a caller's buffer (no list
        # per call as os.readv needs); it returns None when nothing is pending.
        self._file = io.FileIO(fd, "r+b", closefd=False)

    @classmethod
    def open(cls, name: str, *, nonblocking: bool = True, vnet_hdr: bool = False) -> TunQueue:
        """Attach a new queue to device ``name``, creating the device if it does not exist.

        ``vnet_hdr``: packets carry a virtio-net header (module doc); it
        switches the whole device.
        """
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name too long: {name!r}")
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        fd = os.open("/dev/net/tun", flags)
        tun_flags = TUN_FLAGS | (IFF_VNET_HDR if vnet_hdr else 0)
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), tun_flags))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode(), vnet_hdr)

    def fileno(self) -> int:
        return self.fd

    def readinto(self, buf: Buffer) -> int | None:
        """Read one packet into ``buf`` (a writable view, e.g. ``view[headroom:]``).

        Returns its length, or None when the queue is empty (non-blocking).
        A packet longer than ``buf`` is truncated to it by the kernel.  With
        ``vnet_hdr`` the packet is preceded by its virtio-net header, which
        the length includes.
        """
        return self._file.readinto(buf)

    def write(self, packet: Buffer) -> int:
        """Hand one IPv4/IPv6 packet to the kernel as if it arrived on the device.

        With ``vnet_hdr`` an all-zero header (no offload) is put in front;
        the length returned is the packet's.
        """
        if self.vnet_hdr:
            return os.writev(self.fd, (_ZERO_HDR, packet)) - VNET_HDR_LEN
        return os.write(self.fd, packet)

    def detach(self) -> None:
        """Take this queue out of the rotation (it keeps the device alive)."""
        fcntl.ioctl(self.fd, TUNSETQUEUE, _IFREQ.pack(b"", IFF_DETACH_QUEUE))

    def attach(self) -> None:
        """Put a detached queue back into the rotation."""
        fcntl.ioctl(self.fd, TUNSETQUEUE, _IFREQ.pack(b"", IFF_ATTACH_QUEUE))

    def set_persist(self, persist: bool) -> None:
        """Keep the device when its last queue closes (delete it with ``ip link del``)."""
        fcntl.ioctl(self.fd, TUNSETPERSIST, int(persist))

    def flags(self) -> int:
        """The device's IFF_* flags as TUNGETIFF reports them."""
        ifr = fcntl.ioctl(self.fd, TUNGETIFF, _IFREQ.pack(b"", 0))
        return int(_IFREQ.unpack(ifr)[1])

    def close(self) -> None:
        if self.fd >= 0:
            self._file.close()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(name: str, *, vnet_hdr: bool = False) -> TunQueue:
    """The control process's handle: create ``name`` and keep a detached queue on it.

    Fails with EBUSY-like errors if a *non*-multi-queue device of that name
    exists; an existing multi-queue device is reused.
    """
    queue = TunQueue.open(name, vnet_hdr=vnet_hdr)
    queue.detach()
    return queue


def dropped(name: str, path: str = "/proc/net/dev") -> tuple[int, int] | None:
    """The kernel's drop counters of device ``name``: (outbound, inbound), or None.

    outbound: plaintext the kernel routed into the TUN but dropped because
    the workers' queues were full (the device's tx_dropped); inbound:
    decrypted packets the workers wrote that the kernel dropped on receive
    (rx_dropped).  Read from this network namespace's /proc/net/dev: cheap
    enough for every scrape.
    """
    try:
        with open(path) as f:
            for line in f:
                dev, sep, counters = line.partition(":")
                if sep and dev.strip() == name:
                    fields = counters.split()
                    return int(fields[11]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- addresses, routes, rules (pyroute2) ---------------------------------------------


def _ipr() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise OSError(errno.ENODEV, f"no interface {name}")
    return int(found[0])


def configure(name: str, *, mtu: int | None = None, up: bool = True,
              addresses: Iterable[str] = ()) -> None:
    """Set MTU and state of ``name`` and add ``addresses`` ("192.0.2.1/24"); idempotent.

    Returns once the IPv6 addresses can receive packets.
    """
    addresses = list(addresses)
    with _ipr() as ipr:
        index = _index(ipr, name)
        settings: dict[str, Any] = {"state": "up" if up else "down"}
        if mtu is not None:
            settings["mtu"] = mtu
        ipr.link("set", index=index, **settings)
        for address in addresses:
            iface = ip_interface(address)
            try:
                # NODAD: a TUN has no link layer to find a duplicate on, and a
                # tentative IPv6 address cannot be bound to.
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen, family=_family(iface.version),
                         flags=IFA_F_NODAD if iface.version == 6 else 0)
            except Exception as exc:
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise
        _wait_usable(ipr, [str(ip_interface(a).ip) for a in addresses
                           if ip_interface(a).version == 6])


RTN_LOCAL = 2


def _wait_usable(ipr: Any, addresses: list[str], timeout: float = 2.0) -> None:
    """Wait until each IPv6 address has its local route.

    Even with NODAD the kernel finishes setting up an IPv6 address (its
    ``local`` route) from a work queue after the link comes up; until then a
    packet to the address counts as Ip6InAddrErrors and is dropped (seen as a
    flaky first packet in the tests).
    """
    deadline = time.monotonic() + timeout
    for address in addresses:
        while time.monotonic() < deadline:
            try:
                routes = ipr.route("get", dst=address, family=socket.AF_INET6)
            except Exception:
                routes = []
            if routes and routes[0]["type"] == RTN_LOCAL:
                break
            time.sleep(0.005)


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def add_route(name: str, prefix: str, *, table: int | None = None, src: str | None = None,
              metric: int | None = None) -> None:
    """Route ``prefix`` into device ``name`` (replacing an equal route); optional preferred source."""
    net = ip_network(prefix, strict=False)
    args: dict[str, Any] = {"dst": str(net), "family": _family(net.version)}
    if table is not None:
        args["table"] = table
    if src is not None:
        args["prefsrc"] = src
    if metric is not None:
        args["priority"] = metric
    with _ipr() as ipr:
        ipr.route("replace", oif=_index(ipr, name), **args)


def del_route(name: str, prefix: str, *, table: int | None = None) -> None:
    """Remove a route made by :func:`add_route`; a missing route is not an error."""
    net = ip_network(prefix, strict=False)
    args: dict[str, Any] = {"dst": str(net), "family": _family(net.version)}
    if table is not None:
        args["table"] = table
    with _ipr() as ipr:
        try:
            ipr.route("del", oif=_index(ipr, name), **args)
        except Exception as exc:
            if getattr(exc, "code", None) not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise


@dataclass(frozen=True)
class PolicyRouting:
    """A routing table of ours plus ``not fwmark mark/mark lookup table`` rules (both families).

    ``priority`` must be below the main table's rule (32766).  Peers added
    with :meth:`add_peer` reach the TUN only for unmarked traffic.
    """

    device: str
    table: int = 220
    mark: int = 0x1
    priority: int = 10000

    def install(self) -> None:
        """Add the two rules (once: an identical rule is not added twice)."""
        with _ipr() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                if self._rules(ipr, family):
                    continue
                ipr.rule("add", family=family, table=self.table, priority=self.priority,
                         fwmark=self.mark, fwmask=self.mark, flags=FIB_RULE_INVERT)

    def _rules(self, ipr: Any, family: int) -> list[Any]:
        return [r for r in ipr.get_rules(family=family)
                if r.get_attr("FRA_PRIORITY") == self.priority
                and r.get_attr("FRA_TABLE") == self.table]

    def add_peer(self, address: str, *, src: str | None = None) -> None:
        """Send unmarked traffic to ``address`` (a host or prefix) into the TUN."""
        add_route(self.device, address, table=self.table, src=src)

    def del_peer(self, address: str) -> None:
        del_route(self.device, address, table=self.table)

    def set_peers(self, add: Iterable[tuple[str, str | None]],
                  remove: Iterable[str] = ()) -> dict[str, Exception]:
        """:meth:`del_peer` for every prefix of ``remove``, then :meth:`add_peer` for every
        (prefix, preferred source) of ``add``, over one netlink socket and one interface
        lookup (IKE adds a route per Child SA); returns {prefix: error} of the adds that
        failed.  A removal that fails is ignored (the route is gone or was never there).
        Raises when the device is gone."""
        from ipsecd.rtnl import Rtnl

        oif = socket.if_nametoindex(self.device)  # OSError when the device is gone
        with Rtnl() as rtnl:
            rtnl.delete_routes(oif, self.table, remove)
            return dict(rtnl.replace_routes(oif, self.table, add))

    def remove(self) -> None:
        """Delete the rules and flush the table."""
        with _ipr() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for _ in self._rules(ipr, family):
                    ipr.rule("del", family=family, table=self.table, priority=self.priority,
                             fwmark=self.mark, fwmask=self.mark, flags=FIB_RULE_INVERT)
                try:
                    ipr.flush_routes(table=self.table, family=family)
                except Exception as exc:
                    if getattr(exc, "code", None) not in (errno.ESRCH, errno.ENOENT):
                        raise
