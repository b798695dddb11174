"""Network-namespace test harness: every test that sends real packets uses it.

Theory of operation
-------------------
A :class:`Lab` owns a set of network namespaces whose names carry a common
prefix, the pid and a random tag (``ipsecd-t<pid>-<hex>-<role>``), so parallel
runs and leftovers of a killed run never clash.  Everything a test starts in a
namespace (subprocesses, forked Python children, tcpdump) is registered with
the lab, and :meth:`Lab.close` -- called by the context manager and by the
``lab`` pytest fixture, also when the test fails -- stops those, then kills
whatever still runs in the namespaces (``ip netns pids``: only namespaces this
lab created) and deletes them.  :func:`remove_stale` removes namespaces left
by runs whose pid is gone (a SIGKILLed pytest cannot clean up after itself).

Three ways to act inside a namespace, cheapest first:

* :meth:`Netns.enter` switches *the calling thread* into the namespace with
  setns(2) and back.  Sockets, TUN fds and ``/proc/sys/net`` files opened
  inside stay bound to that namespace after leaving, so a single-threaded test
  can hold a sender socket in one namespace and a receiver in another.
* :meth:`Netns.run` / :meth:`Netns.popen`: a command under ``ip netns exec``.
* :meth:`Netns.call` / :meth:`Netns.spawn`: a Python function in a forked child
  process that entered the namespace (true parallelism: a sender on one core,
  a receiver on the other).

Network safety: packets only ever go to addresses of namespaces the lab made
(documentation prefixes, RFC 5737 / RFC 3849), and every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")

PREFIX = "ipsecd-t"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _sh(args: list[str], *, timeout: float = 10.0, check: bool = True,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


class Child:
    """A forked Python function running in a namespace; see :meth:`Netns.spawn`."""

    def __init__(self, proc: Any, conn: Any) -> None:
        self._proc = proc
        self._conn = conn

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def result(self, timeout: float = 20.0) -> Any:
        """Wait for the function's return value; re-raise its exception here."""
        if not self._conn.poll(timeout):
            self.stop()
            raise TimeoutError(f"child {self.pid} gave no result within {timeout} s")
        ok, value = self._conn.recv()
        self._proc.join(5)
        if not ok:
            raise RuntimeError(f"child {self.pid} failed:\n{value}")
        return value

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 2 s)."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2)


def _child_main(conn: Any, ns_path: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fd = os.open(ns_path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        conn.send((True, fn(*args)))
    except BaseException:
        conn.send((False, traceback.format_exc()))


@dataclass
class Capture:
    """A running tcpdump writing ``path``; stop it before reading."""

    proc: subprocess.Popen[bytes]
    path: Path
    summary: str = ""  # what tcpdump said when it stopped

    def stop(self) -> None:
        """Stop tcpdump (SIGINT flushes the file and prints its counts) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.summary += self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()

    @property
    def kernel_drops(self) -> int:
        """Packets the capture socket lost (tcpdump's "dropped by kernel"), after :meth:`stop`:
        on a loaded machine tcpdump may fall behind, which is the capture's loss, not ours."""
        found = re.search(r"(\d+) packets? dropped by kernel", self.summary)
        if found is None:
            raise RuntimeError(f"tcpdump did not report its drops: {self.summary!r}")
        return int(found.group(1))

    def packets(self) -> list[bytes]:
        """The captured frames (link-layer included), after :meth:`stop`."""
        return read_pcap(self.path)


def read_pcap(path: Path) -> list[bytes]:
    """The packets of a classic pcap file (tcpdump -w), without their headers."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        out.append(data[off + 16: off + 16 + caplen])
        off += 16 + caplen
    return out


@dataclass
class Netns:
    """One network namespace made by a :class:`Lab`."""

    name: str
    lab: Lab = field(repr=False)

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Run the body with the calling thread inside this namespace."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)

    def run(self, *args: str, timeout: float = 10.0, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the namespace and wait for it (bounded)."""
        return _sh(["ip", "netns", "exec", self.name, *args],
                   timeout=timeout, check=check, input=input)

    def ip(self, *lines: str) -> None:
        """Run ``ip`` commands (one per line, without the leading ``ip``) in one batch."""
        _sh(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines).encode() + b"\n")

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command in the namespace; the lab stops it at close."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)
        self.lab._procs.append(proc)
        return proc

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a (per-namespace) sysctl, ``net.ipv4.ip_forward`` style."""
        with self.enter(), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(f"{value}\n")

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Child:
        """Run ``fn(*args)`` in a forked child inside the namespace, in the background."""
        import multiprocess  # only the tests that fork pay for its import

        ctx = multiprocess.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(child, self.path, fn, args), daemon=True)
        proc.start()
        child.close()
        handle = Child(proc, parent)
        self.lab._children.append(handle)
        return handle

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 20.0) -> T:
        """Run ``fn(*args)`` in a forked child inside the namespace and return its result."""
        result: T = self.spawn(fn, *args).result(timeout)
        return result

    def capture(self, iface: str, path: Path, bpf: str = "") -> Capture:
        """Start tcpdump on ``iface`` and return once it is capturing."""
        args = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", str(path)]
        proc = self.popen(*args, *bpf.split(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        deadline = time.monotonic() + 5
        seen = b""
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            if select.select([proc.stderr], [], [], left)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                seen += chunk
        return Capture(proc, path)

    def ifindex(self, ifname: str) -> int:
        """The interface index of ``ifname`` in this namespace."""
        with self.enter():
            return socket.if_nametoindex(ifname)

    def mac(self, ifname: str) -> bytes:
        """The MAC address of ``ifname`` in this namespace."""
        out = _sh(["ip", "-n", self.name, "-br", "link", "show", "dev", ifname]).stdout.split()
        return bytes.fromhex(out[2].decode().replace(":", ""))


class Lab:
    """A set of namespaces and everything started in them, removed together."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}{tag}-"
        self.namespaces: list[Netns] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._children: list[Child] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> Netns:
        """A new namespace with loopback up, IPv6 DAD off and forwarding off."""
        ns = Netns(self.prefix + role, self)
        _sh(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link set lo up")
        # DAD off before any interface exists, so veths inherit it and their
        # addresses are usable at once (addresses are added nodad as well).
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad",
                    "net.ipv6.conf.default.router_solicitations"):
            ns.sysctl(key, 0)
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str, *, mtu: int = 1500) -> None:
        """A veth pair ``a:a_if -- b:b_if``, created directly in the two namespaces, up."""
        _sh(["ip", "link", "add", a_if, "netns", a.name, "mtu", str(mtu), "type", "veth",
             "peer", "name", b_if, "netns", b.name, "mtu", str(mtu)])
        a.ip(f"link set {a_if} up")
        b.ip(f"link set {b_if} up")

    def close(self) -> None:
        """Stop everything started in the lab and delete its namespaces."""
        for child in self._children:
            child.stop()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2)
        for ns in self.namespaces:
            _delete_netns(ns.name)
        self.namespaces.clear()


def _delete_netns(name: str) -> None:
    if not (NETNS_DIR / name).exists():
        return
    # Whatever still runs in a namespace of ours (a grandchild of a command we
    # started) would keep it alive after the bind mount is gone.
    pids = _sh(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _sh(["ip", "netns", "del", name], check=False)


def remove_stale() -> list[str]:
    """Delete namespaces of earlier runs whose pytest process no longer exists."""
    removed: list[str] = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        pid_text = entry.name[len(PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not Path(f"/proc/{pid_text}").exists():
            _delete_netns(entry.name)
            removed.append(entry.name)
    return removed


# --- topologies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One end of a link: namespace, interface and its addresses (without prefix length)."""

    ns: Netns
    ifname: str
    v4: str
    v6: str


@dataclass(frozen=True)
class HostToHost:
    """``A ── B`` on 192.0.2.0/24 and 2001:db8::/64 (transport-mode tests)."""

    a: Host
    b: Host


@dataclass(frozen=True)
class SiteToSite:
    """``netA ── gwA ══ wan ══ gwB ── netB`` (the HOWTO's tunnel picture).

    Site A is 198.51.100.0/24 and 2001:db8:a::/64, site B 203.0.113.0/24 and
    2001:db8:b::/64, the WAN 192.0.2.0/24 and 2001:db8:f::/64.  Hosts route
    everything via their gateway; the gateways forward and, with
    ``routed=True``, also route the remote site in clear over the WAN.
    """

    net_a: Host
    gw_a_lan: Host
    gw_a_wan: Host
    gw_b_wan: Host
    gw_b_lan: Host
    net_b: Host

    @property
    def site_a(self) -> tuple[str, str]:
        return ("198.51.100.0/24", "2001:db8:a::/64")

    @property
    def site_b(self) -> tuple[str, str]:
        return ("203.0.113.0/24", "2001:db8:b::/64")


def _addr(host: Host, plen4: int = 24, plen6: int = 64) -> list[str]:
    return [f"addr add {host.v4}/{plen4} dev {host.ifname}",
            f"addr add {host.v6}/{plen6} dev {host.ifname} nodad"]


def host_to_host(lab: Lab) -> HostToHost:
    """Two namespaces joined by one veth pair, both named ``eth0``."""
    a_ns, b_ns = lab.netns("a"), lab.netns("b")
    lab.veth(a_ns, "eth0", b_ns, "eth0")
    a = Host(a_ns, "eth0", "192.0.2.1", "2001:db8::1")
    b = Host(b_ns, "eth0", "192.0.2.2", "2001:db8::2")
    a_ns.ip(*_addr(a))
    b_ns.ip(*_addr(b))
    return HostToHost(a, b)


def site_to_site(lab: Lab, *, routed: bool = True) -> SiteToSite:
    """Four namespaces; see :class:`SiteToSite`."""
    na, ga, gb, nb = lab.netns("neta"), lab.netns("gwa"), lab.netns("gwb"), lab.netns("netb")
    lab.veth(na, "eth0", ga, "lan0")
    lab.veth(ga, "wan0", gb, "wan0")
    lab.veth(gb, "lan0", nb, "eth0")
    topo = SiteToSite(
        net_a=Host(na, "eth0", "198.51.100.10", "2001:db8:a::10"),
        gw_a_lan=Host(ga, "lan0", "198.51.100.1", "2001:db8:a::1"),
        gw_a_wan=Host(ga, "wan0", "192.0.2.1", "2001:db8:f::1"),
        gw_b_wan=Host(gb, "wan0", "192.0.2.2", "2001:db8:f::2"),
        gw_b_lan=Host(gb, "lan0", "203.0.113.1", "2001:db8:b::1"),
        net_b=Host(nb, "eth0", "203.0.113.10", "2001:db8:b::10"),
    )
    for gw in (ga, gb):
        gw.sysctl("net.ipv4.ip_forward", 1)
        gw.sysctl("net.ipv6.conf.all.forwarding", 1)
    na.ip(*_addr(topo.net_a), f"route add default via {topo.gw_a_lan.v4}",
          f"route add default via {topo.gw_a_lan.v6}")
    nb.ip(*_addr(topo.net_b), f"route add default via {topo.gw_b_lan.v4}",
          f"route add default via {topo.gw_b_lan.v6}")
    ga_cmds = _addr(topo.gw_a_lan) + _addr(topo.gw_a_wan)
    gb_cmds = _addr(topo.gw_b_lan) + _addr(topo.gw_b_wan)
    if routed:
        ga_cmds += [f"route add {topo.site_b[0]} via {topo.gw_b_wan.v4}",
                    f"route add {topo.site_b[1]} via {topo.gw_b_wan.v6}"]
        gb_cmds += [f"route add {topo.site_a[0]} via {topo.gw_a_wan.v4}",
                    f"route add {topo.site_a[1]} via {topo.gw_a_wan.v6}"]
    ga.ip(*ga_cmds)
    gb.ip(*gb_cmds)
    return topo


# --- pytest glue -----------------------------------------------------------------------


def needs_root() -> pytest.MarkDecorator:
    """Mark a test as needing namespaces: conftest.py fails it loudly (never skips) without root."""
    return pytest.mark.netns


def lab_fixture() -> Iterator[Lab]:
    """Body of a test module's ``lab`` fixture: a :class:`Lab` removed after the test.

    Each module declares ``@pytest.fixture def lab(): yield from lab_fixture()``
    (a conftest.py is shared ground; this keeps the harness self-contained).
    """
    remove_stale()
    with Lab() as the_lab:
        yield the_lab


class Batched(Protocol):
    def batch(self, timeout: float | None = ...) -> Iterator[memoryview]: ...


def collect(ring: Batched, *, settle: float = 0.15, limit: float = 5.0) -> list[bytes]:
    """Copy packets out of ``ring`` until none came for ``settle`` seconds (at most ``limit``)."""
    out: list[bytes] = []
    deadline = time.monotonic() + limit
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        before = len(out)
        out.extend(bytes(p) for p in ring.batch(0.02))
        now = time.monotonic()
        if len(out) != before:
            quiet_since = now
        elif now - quiet_since >= settle:
            break
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


class Injector:
    """Sockets in one namespace that send crafted IPv4/IPv6 packets and plain UDP.

    Raw sockets use IPPROTO_RAW (header included): the kernel fills in the
    IPv4 checksum and total length, and routes by the destination given.
    """

    def __init__(self, ns: Netns) -> None:
        with ns.enter():
            self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)

    def ip4(self, src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0,
            options: bytes = b"", ident: int = 0) -> None:
        """Send an IPv4 packet; ``frag`` is the flags/fragment-offset word (0x2000 = MF)."""
        ihl = 5 + len(options) // 4
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload),
                          ident, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
        self.raw4.sendto(hdr + options + payload, (dst, 0))

    def ip6(self, src: str, dst: str, next_header: int, payload: bytes) -> None:
        """Send an IPv6 packet (``payload`` includes any extension headers)."""
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                          socket.inet_pton(socket.AF_INET6, src),
                          socket.inet_pton(socket.AF_INET6, dst))
        self.raw6.sendto(hdr + payload, (dst, 0))

    def udp(self, dst: str, port: int, payload: bytes) -> None:
        """Send a UDP datagram from an ephemeral port (the kernel builds the headers)."""
        (self.udp6 if ":" in dst else self.udp4).sendto(payload, (dst, port))

    def close(self) -> None:
        for s in (self.raw4, self.raw6, self.udp4, self.udp6):
            s.close()


def ping(ns: Netns, dst: str, *, count: int = 3, interval: float = 0.2,
         timeout: float = 2.0, size: int = 56, payload: bytes | None = None) -> int:
    """Send ``count`` ICMP/ICMPv6 echo requests from ``ns`` to ``dst``; the replies received.

    A raw-socket ping (ping(8) need not be installed): one request every
    ``interval`` s, then wait up to ``timeout`` s for the rest of the replies.
    The echo data is ``size`` zero bytes, or ``payload`` when given.
    """
    v6 = ":" in dst
    with ns.enter():
        if v6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    request, reply = (128, 129) if v6 else (8, 0)
    seen: set[int] = set()
    try:
        sock.setblocking(False)
        deadline = time.monotonic() + count * interval + timeout
        next_send, sent = time.monotonic(), 0
        while len(seen) < count and time.monotonic() < deadline:
            now = time.monotonic()
            if sent < count and now >= next_send:
                data = bytes(size) if payload is None else payload
                body = struct.pack("!BBHHH", request, 0, 0, ident, sent) + data
                if not v6:  # the kernel fills in the ICMPv6 checksum, not ICMP's
                    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
                sock.sendto(body, (dst, 0))
                sent += 1
                next_send = now + interval
            if select.select([sock], [], [], 0.02)[0]:
                data = sock.recv(65535)
                icmp = data if v6 else data[(data[0] & 0xF) * 4:]
                if len(icmp) >= 8:
                    kind, _, _, rid, seq = struct.unpack_from("!BBHHH", icmp)
                    if kind == reply and rid == ident:
                        seen.add(seq)
    finally:
        sock.close()
    return len(seen)


#: What :func:`tcp_transfer` sends by default: iperf3's ``--repeating-payload``
#: (compressible, and easy to find in a capture of plaintext).
REPEATING_PAYLOAD = b"0123456789" * 6554  # 65540 bytes


@dataclass(frozen=True)
class Transfer:
    """What one :func:`tcp_transfer` moved."""

    sent: int
    """Bytes the sender wrote before it closed its side."""
    received: int
    """Bytes the receiver read before end of stream: equal to ``sent``, the helper checks."""
    seconds: float
    """From connect to the receiver's end of stream."""


def tcp_transfer(src: Netns, dst_ns: Netns, dst: str, *, size: int = 0, seconds: float = 0,
                 payload: bytes = REPEATING_PAYLOAD, timeout: float = 30.0) -> Transfer:
    """A bounded TCP transfer from ``src`` to ``dst`` (an address in ``dst_ns``), counted at
    both ends: ``size`` bytes, or as much as ``seconds`` allow.

    Not iperf3: in ``-n`` (and ``-t``) mode iperf3's receiver stops counting when
    the end of the test reaches it on the control connection, so data still in
    flight is never counted (esnet/iperf#382: 350 KB "received" of a 1 MB
    transfer; #705 made this deliberate), and ``sum_received`` - also as the
    server's own JSON or after ``--get-server-output`` - can be any part of
    what was sent.  Here the receiver (a thread; its socket lives in
    ``dst_ns``) reads until the sender's FIN, so a correct transfer always ends
    with ``received == sent``, asserted here; a stalled one raises
    ``TimeoutError`` after ``timeout`` s without progress.
    """
    assert size or seconds, "a transfer needs a size or a duration"
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with dst_ns.enter():
        listener = socket.socket(family, socket.SOCK_STREAM)
    with src.enter():
        sender = socket.socket(family, socket.SOCK_STREAM)
    counted: list[int] = []
    failed: list[BaseException] = []

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                buf = bytearray(1 << 18)
                total = 0
                while n := conn.recv_into(buf):
                    total += n
                counted.append(total)
        except BaseException as exc:  # reported by the caller's thread
            failed.append(exc)

    try:
        listener.settimeout(timeout)
        listener.bind((dst, 0))
        listener.listen(1)
        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        sender.settimeout(timeout)
        start = time.monotonic()
        sender.connect((dst, listener.getsockname()[1]))
        view = memoryview(payload)
        sent = 0
        while (sent < size) if size else (time.monotonic() - start < seconds):
            chunk = view[:size - sent] if size else view
            sender.sendall(chunk)
            sent += len(chunk)
        sender.shutdown(socket.SHUT_WR)
        receiver.join(timeout)
        elapsed = time.monotonic() - start
    finally:
        sender.close()
        listener.close()
    if failed:
        raise failed[0]
    assert counted, f"the receiver did not finish in {timeout} s"
    assert counted[0] == sent, f"sent {sent} bytes, received {counted[0]}"
    return Transfer(sent, counted[0], elapsed)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
