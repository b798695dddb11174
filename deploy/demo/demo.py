"""``make demo``: the FreeBSD IPsec mini-HOWTO's site-to-site tunnel with two ipsecd daemons.

::

    netA ── gwA ══ wan ══ gwB ── netB        (each box a network namespace)

Run as root: ``python deploy/demo/demo.py [--no-hold] [--iperf-seconds N]``
(``make demo`` runs it with the project's virtualenv).  It builds the four
namespaces and three veth links, writes each gateway's configuration and
HOWTO-style setkey script (manual keying, AES-GCM-16 keys made afresh with
:mod:`secrets` and never printed) from the templates beside this file into a
0700 temporary directory, starts one ``ipsecd run`` per gateway, and then
shows: pings between the internal nets, a bounded iperf3 TCP transfer, a
capture of the WAN link (only ESP on it), ``ipsecd status`` of both
gateways, and where the Prometheus metrics are (with a few lines fetched).

It then waits for Ctrl-C (``--no-hold`` or ``DEMO_HOLD=0``: it does not) and
removes everything it made - daemons, namespaces, the temporary directory -
on any way out: success, a failed step, Ctrl-C, SIGTERM or SIGHUP.  A demo
killed with SIGKILL takes its daemons with it (parent-death signal); its
namespaces are removed by the next run.  Nothing here leaves the
namespaces: all addresses are documentation or private prefixes on veth
links that are not connected to anything else.

The demo depends only on the product (``ipsecd``) and on iproute2, procps,
tcpdump and iperf3 (``deploy/scripts/install-deps.sh``), not on the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import secrets
import select
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PREFIX = "ipsecd-demo-"
NETNS_DIR = Path("/run/netns")
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
PR_SET_PDEATHSIG = 1

# The HOWTO's tunnel picture: internal nets 10.10.10/24 and 10.20.20/24, the
# gateways' external addresses on the (documentation) WAN 192.0.2.0/24.
NET_A, NET_B = "10.10.10.0/24", "10.20.20.0/24"
HOST_A, GW_A_LAN, GW_A_WAN = "10.10.10.10", "10.10.10.1", "192.0.2.1"
HOST_B, GW_B_LAN, GW_B_WAN = "10.20.20.10", "10.20.20.1", "192.0.2.2"
SPI_AB, SPI_BA = 0x2001, 0x2002
METRICS_PORT = {"gwa": 9766, "gwb": 9767}
CAPTURE_PACKETS = 12

TOPOLOGY = f"""\
  The FreeBSD IPsec mini-HOWTO's site-to-site tunnel, each box a network namespace:

     netA                 gwA                            gwB                 netB
  {HOST_A} ── lan0 {GW_A_LAN}         {GW_B_LAN} lan0 ── {HOST_B}
                         wan0 {GW_A_WAN} ══ ESP ══ {GW_B_WAN} wan0
                         ipsecd (tunnel mode)       ipsecd (tunnel mode)

  {NET_A} <-> {NET_B}: esp/tunnel/{GW_A_WAN}-{GW_B_WAN}/require, AES-GCM-16 (256-bit)
  SPIs {SPI_AB:#x} (A->B) and {SPI_BA:#x} (B->A), manual keys generated for this run"""


class Interrupted(BaseException):
    """A signal asked the demo to stop (not an Exception: no step may swallow it)."""


class StepFailed(Exception):
    """A step of the demo did not work; the message says which and why."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _still_cleaning(signum: int, frame: FrameType | None) -> None:
    print("  (cleaning up, a moment please)", flush=True)


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the demo dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def say(text: str = "") -> None:
    print(text, flush=True)


def sh(args: Sequence[str], *, timeout: float = 15.0, check: bool = True,
       input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise StepFailed(f"{' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale() -> list[str]:
    """Namespaces and temporary directories of earlier demos whose process is gone (one
    killed with SIGKILL: its daemons died with it, by their parent-death signal)."""
    removed = []
    places = [NETNS_DIR, Path(tempfile.gettempdir())]
    for place in places:
        if not place.is_dir():
            continue
        for entry in place.iterdir():
            pid = entry.name[len(PREFIX):].split("-", 1)[0]
            if entry.name.startswith(PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
                if place == NETNS_DIR:
                    delete_netns(entry.name)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry) if place != NETNS_DIR else entry.name)
    return removed


def delete_netns(name: str) -> None:
    if not (NETNS_DIR / name).exists():
        return
    for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh(["ip", "netns", "del", name], check=False)


def netns_list() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Gateway:
    key: str  # "gwa" / "gwb"
    label: str  # "gwA" / "gwB"
    ns: str
    config: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None


class Demo:
    def __init__(self, *, iperf_seconds: float, workers: int) -> None:
        self.tag = f"{PREFIX}{os.getpid()}-"
        self.iperf_seconds = iperf_seconds
        self.workers = workers
        self.workdir: Path | None = None
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateways: dict[str, Gateway] = {}
        self.daemon_pids: list[int] = []

    # -- building ------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return self.tag + role

    def popen(self, ns: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """A long-running command in ``ns``: its own session (the terminal's Ctrl-C is the
        demo's to handle), dies with the demo, stopped at cleanup."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], start_new_session=True,
                                preexec_fn=_die_with_parent, **kwargs)
        self.procs.append(proc)
        return proc

    def run_in(self, ns: str, args: Sequence[str], *, timeout: float = 15.0,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return sh(["ip", "netns", "exec", ns, *args], timeout=timeout, check=check)

    def build(self) -> None:
        for role in ("neta", "gwa", "gwb", "netb"):
            name = self.ns(role)
            sh(["ip", "netns", "add", name])
            self.namespaces.append(name)
            # IPv4 only, as the HOWTO: no IPv6 link-local chatter on the WAN capture.
            self.run_in(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                               "net.ipv6.conf.default.disable_ipv6=1"])
            sh(["ip", "-n", name, "link", "set", "lo", "up"])
        links = (("neta", "eth0", "gwa", "lan0"), ("gwa", "wan0", "gwb", "wan0"),
                 ("gwb", "lan0", "netb", "eth0"))
        for a, a_if, b, b_if in links:
            sh(["ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth",
                "peer", "name", b_if, "netns", self.ns(b)])
        batches = {
            "neta": [f"addr add {HOST_A}/24 dev eth0", "link set eth0 up",
                     f"route add default via {GW_A_LAN}"],
            "gwa": [f"addr add {GW_A_LAN}/24 dev lan0", f"addr add {GW_A_WAN}/24 dev wan0",
                    "link set lan0 up", "link set wan0 up"],
            "gwb": [f"addr add {GW_B_LAN}/24 dev lan0", f"addr add {GW_B_WAN}/24 dev wan0",
                    "link set lan0 up", "link set wan0 up"],
            "netb": [f"addr add {HOST_B}/24 dev eth0", "link set eth0 up",
                     f"route add default via {GW_B_LAN}"],
        }
        for role, lines in batches.items():
            sh(["ip", "-n", self.ns(role), "-batch", "-"], input="\n".join(lines).encode() + b"\n")
        for role in ("gwa", "gwb"):
            self.run_in(self.ns(role), ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def write_configs(self) -> None:
        assert self.workdir is not None
        # AES-GCM-16 with a 256-bit key: 32 key bytes + 4 salt bytes (RFC 4106 §8.1).
        keys = {"key_ab": "0x" + secrets.token_hex(36), "key_ba": "0x" + secrets.token_hex(36)}
        toml = string.Template((HERE / "gateway.toml.in").read_text())
        setkey = string.Template((HERE / "gateway.setkey.in").read_text())
        sides = {
            "gwa": ("gwA", NET_A, NET_B, GW_A_WAN, GW_B_WAN, "A"),
            "gwb": ("gwB", NET_B, NET_A, GW_B_WAN, GW_A_WAN, "B"),
        }
        old_umask = os.umask(0o077)
        try:
            for key, (label, local_net, remote_net, local_gw, remote_gw, site) in sides.items():
                d = self.workdir / key
                d.mkdir()
                (d / f"{key}.setkey").write_text(setkey.substitute(
                    gw=label, net_a=NET_A, net_b=NET_B, gw_a=GW_A_WAN, gw_b=GW_B_WAN,
                    spi_ab=f"{SPI_AB:#x}", spi_ba=f"{SPI_BA:#x}", local_net=local_net,
                    remote_net=remote_net, local_gw=local_gw, remote_gw=remote_gw, **keys))
                config = d / f"{key}.toml"
                config.write_text(toml.substitute(
                    gw=label, netns=self.ns(key), name=key, workers=self.workers,
                    state_dir=d / "run", wan_if="wan0", local_site=site,
                    metrics_port=METRICS_PORT[key]))
                self.gateways[key] = Gateway(key, label, self.ns(key), config,
                                             d / "run" / "ipsecd.sock", d / "daemon.log")
        finally:
            os.umask(old_umask)
            keys.clear()

    def start_daemons(self) -> None:
        for gw in self.gateways.values():
            gw.proc = self.popen(gw.ns, [sys.executable, "-m", "ipsecd", "run", "--config",
                                         str(gw.config)],
                                 env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=gw.log.open("wb"))
            self.daemon_pids.append(gw.proc.pid)
        sys.path.insert(0, str(ROOT))
        from ipsecd import control

        def ready(gw: Gateway) -> bool:
            assert gw.proc is not None
            if gw.proc.poll() is not None:
                raise StepFailed(f"the ipsecd of {gw.label} exited ({gw.proc.returncode}):\n"
                                 + self.log_tail(gw))
            try:
                st = control.request(gw.socket, "status", timeout=2)
            except control.ControlError:
                return False
            return all(w["running"] for w in st["workers"])

        deadline = time.monotonic() + 20
        while not all(ready(gw) for gw in self.gateways.values()):
            if time.monotonic() > deadline:
                raise StepFailed("the daemons did not come up within 20 s:\n"
                                 + "".join(self.log_tail(gw) for gw in self.gateways.values()))
            time.sleep(0.1)

    def log_tail(self, gw: Gateway, lines: int = 15) -> str:
        try:
            text = gw.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"    {gw.label}| {line}\n" for line in text)

    # -- the show ------------------------------------------------------------------------

    def helper(self, ns: str, *args: str, timeout: float = 20.0) -> str:
        """This file's own helper subcommands (``_ping``, ``_metrics``) run inside ``ns``."""
        r = self.run_in(ns, [sys.executable, str(Path(__file__).resolve()), *args],
                        timeout=timeout, check=False)
        if r.returncode != 0:
            raise StepFailed(r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace"))
        return r.stdout.decode()

    def ping(self, src_role: str, dst: str, count: int) -> None:
        out = self.helper(self.ns(src_role), "_ping", dst, str(count)).strip()
        say(f"  ping {out}")

    def capture(self) -> None:
        assert self.workdir is not None
        pcap = self.workdir / "wan.pcap"
        cap = self.popen(self.ns("gwa"), ["tcpdump", "-i", "wan0", "-n", "-U", "-c",
                                          str(CAPTURE_PACKETS), "-w", str(pcap)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert cap.stderr is not None
        seen, deadline = b"", time.monotonic() + 5
        while b"listening on" not in seen:
            if time.monotonic() > deadline or cap.poll() is not None:
                raise StepFailed(f"tcpdump did not start: {seen.decode(errors='replace')}")
            if select.select([cap.stderr], [], [], 0.2)[0]:
                seen += os.read(cap.stderr.fileno(), 4096)
        self.ping("neta", HOST_B, CAPTURE_PACKETS // 2)
        try:
            cap.wait(5)
        except subprocess.TimeoutExpired:
            cap.send_signal(signal.SIGINT)
            cap.wait(5)
        frames = _read_pcap(pcap)
        kinds = [_frame_kind(f) for f in frames]
        text = sh(["tcpdump", "-r", str(pcap), "-n", "-t"], check=False).stdout.decode()
        for line in text.splitlines()[:6]:
            say(f"    {line}")
        if len(frames) > 6:
            say(f"    ... ({len(frames) - 6} more)")
        esp, arp = kinds.count("esp"), kinds.count("arp")
        other = len(kinds) - esp - arp
        say(f"  wan capture: {len(frames)} packets on gwA wan0: {esp} ESP, {arp} ARP, "
            f"{other} other")
        if other or not esp:
            raise StepFailed("something other than ESP crossed the WAN")
        say("  only ESP on the WAN: nothing in clear")

    def iperf(self) -> None:
        server = self.popen(self.ns("netb"), ["iperf3", "-s", "-1", "-B", HOST_B],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while b":5201" not in self.run_in(self.ns("netb"), ["ss", "-ltnH"]).stdout:
            if time.monotonic() > deadline or server.poll() is not None:
                raise StepFailed("iperf3 server did not start")
            time.sleep(0.05)
        seconds = f"{self.iperf_seconds:g}"
        r = self.run_in(self.ns("neta"), ["iperf3", "-c", HOST_B, "-t", seconds, "-J"],
                        timeout=self.iperf_seconds + 20, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        try:
            end = json.loads(r.stdout)["end"]
            sent, received = end["sum_sent"], end["sum_received"]
        except (ValueError, KeyError) as exc:
            raise StepFailed(f"iperf3 failed: {r.stdout[-400:]!r} {r.stderr[-400:]!r}") from exc
        if r.returncode != 0 or not received["bytes"]:
            raise StepFailed(f"iperf3 failed ({r.returncode})")
        say(f"  iperf3 {HOST_A} -> {HOST_B}, TCP for {seconds} s: "
            f"{received['bits_per_second'] / 1e6:.0f} Mbit/s received "
            f"({received['bytes'] / 2**20:.1f} MiB, {sent.get('retransmits', 0)} retransmits)")

    def status(self) -> None:
        for gw in self.gateways.values():
            r = self.run_in(gw.ns, [sys.executable, "-m", "ipsecd", "status", "--socket",
                                    str(gw.socket)], check=False)
            if r.returncode != 0:
                raise StepFailed(f"ipsecd status on {gw.label} failed: {r.stderr.decode()}")
            say(f"  --- {gw.label}: ip netns exec {gw.ns} ipsecd status --socket {gw.socket}")
            for line in r.stdout.decode().splitlines():
                say(f"  {line}")
            say()

    def metrics(self) -> None:
        for gw in self.gateways.values():
            url = f"http://127.0.0.1:{METRICS_PORT[gw.key]}/metrics"
            say(f"  {gw.label}: {url}  (inside the namespace: "
                f"ip netns exec {gw.ns} curl -s {url})")
            for line in self.helper(gw.ns, "_metrics", url).splitlines():
                say(f"    {line}")

    def hold_commands(self) -> None:
        gwa, gwb = self.gateways["gwa"], self.gateways["gwb"]
        say("  While it runs, try (as root, in another terminal):")
        say(f"    ip netns exec {gwa.ns} {sys.executable} -m ipsecd status --socket {gwa.socket}")
        say(f"    ip netns exec {gwa.ns} {sys.executable} -m ipsecd setkey -DP "
            f"--socket {gwa.socket}")
        say(f"    ip netns exec {gwa.ns} tcpdump -n -i wan0")
        say(f"    ip netns exec {self.ns('neta')} iperf3 -c {HOST_B}   "
            f"(server: ip netns exec {self.ns('netb')} iperf3 -s)")
        say(f"    logs: {gwa.log}, {gwb.log}")

    # -- cleaning up ---------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove everything; return what is still left (nothing, normally)."""
        statuses = []
        for gw in self.gateways.values():
            if gw.proc is not None and gw.proc.poll() is None:
                gw.proc.send_signal(signal.SIGTERM)
        for gw in self.gateways.values():
            if gw.proc is None:
                continue
            try:
                gw.proc.wait(10)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait(5)
            statuses.append(f"{gw.label} {gw.proc.returncode}")
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2)
        for name in self.namespaces:
            delete_netns(name)
        for gw in self.gateways.values():
            if gw.proc is not None:  # what a killed daemon could not remove (not per netns)
                for path in glob.glob(f"/dev/shm/ipsecd-{gw.key}-{gw.proc.pid}-*"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        left = [n for n in netns_list() if n.startswith(self.tag)]
        left += [f"process {p.pid}" for p in self.procs if p.poll() is None]
        left += [f"pid {pid}" for pid in self.daemon_pids if _pid_alive(pid)]
        if self.workdir is not None and self.workdir.exists():
            left.append(str(self.workdir))
        if statuses:
            say(f"  daemons stopped (exit status: {', '.join(statuses)})")
        return left


def _read_pcap(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    if len(data) < 24:
        return []
    endian = "<" if struct.unpack_from("<I", data)[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, off + 8)[0]
        out.append(data[off + 16: off + 16 + caplen])
        off += 16 + caplen
    return out


def _frame_kind(frame: bytes) -> str:
    if len(frame) < 34:
        return "other"
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0806:
        return "arp"
    if ethertype == 0x0800 and frame[14 + 9] == 50:
        return "esp"
    return "other"


def step(title: str) -> None:
    say()
    say(f"== {title}")


def run_demo(hold: bool, iperf_seconds: float, workers: int) -> int:
    demo = Demo(iperf_seconds=iperf_seconds, workers=workers)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    status, holding = 0, False
    try:
        stale = remove_stale()
        if stale:
            say(f"removed what an earlier demo left: {', '.join(stale)}")
        demo.workdir = Path(tempfile.mkdtemp(prefix=demo.tag))  # mode 0700
        step("topology")
        say(TOPOLOGY)
        say(f"  namespaces: {demo.ns('neta')}, {demo.ns('gwa')}, {demo.ns('gwb')}, "
            f"{demo.ns('netb')}")
        say(f"  work dir: {demo.workdir}")
        demo.build()
        demo.write_configs()
        step("starting ipsecd on gwA and gwB")
        t0 = time.monotonic()
        demo.start_daemons()
        for gw in demo.gateways.values():
            assert gw.proc is not None
            say(f"  {gw.label}: ipsecd run --config {gw.config}  (pid {gw.proc.pid})")
        say(f"  daemons up: both ready in {time.monotonic() - t0:.1f} s")
        step("ping between the internal nets (through the tunnel)")
        demo.ping("neta", HOST_B, 5)
        demo.ping("netb", HOST_A, 3)
        step(f"the WAN link (tcpdump -c {CAPTURE_PACKETS} on gwA wan0, no filter) during a ping")
        demo.capture()
        step(f"TCP through the tunnel (iperf3, {iperf_seconds:g} s)")
        demo.iperf()
        step("ipsecd status")
        demo.status()
        step("metrics (Prometheus text format)")
        demo.metrics()
        say()
        say("demo OK: traffic crossed the tunnel, the WAN carried only ESP")
        if hold:
            say()
            demo.hold_commands()
            say()
            holding = True
            say("Press Ctrl-C to stop and remove everything.")
            while True:
                signal.pause()
    except Interrupted as exc:
        say()
        say(f"{exc}: stopping")
        status = 0 if holding else 130
    except (StepFailed, subprocess.TimeoutExpired, OSError) as exc:
        say()
        say(f"demo FAILED: {exc}")
        for gw in demo.gateways.values():
            tail = demo.log_tail(gw)
            if tail:
                say(f"  last lines of {gw.label}'s log:\n{tail}")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _still_cleaning)
        step("cleaning up")
        left = demo.cleanup()
        if left:
            say(f"  LEFT BEHIND: {', '.join(left)}")
            status = status or 1
        else:
            say(f"  removed: namespaces {demo.tag}*, daemons, {demo.workdir}; nothing left")
    return status


# -- helpers run inside a namespace (``demo.py _ping``, ``demo.py _metrics``) -------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def helper_ping(dst: str, count: int) -> int:
    """ICMP echo through a raw socket (ping(8) need not be installed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    deadline = time.monotonic() + count * 0.2 + 2.0
    next_send, seq = time.monotonic(), 0
    while len(rtts) < count and time.monotonic() < deadline:
        now = time.monotonic()
        if seq < count and now >= next_send:
            body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"ipsecd demo " * 4
            body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            sock.sendto(body, (dst, 0))
            sent_at[seq] = now
            seq += 1
            next_send = now + 0.2
        if select.select([sock], [], [], 0.02)[0]:
            data = sock.recv(2048)
            icmp = data[(data[0] & 15) * 4:]
            if len(icmp) >= 8:
                kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
                if kind == 0 and rid == ident and rseq in sent_at:
                    rtts.append((time.monotonic() - sent_at.pop(rseq)) * 1000)
    sock.close()
    line = f"-> {dst}: {len(rtts)}/{count} replies"
    if rtts:
        line += f", rtt min/avg/max {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/{max(rtts):.2f} ms"
    print(line)
    return 0 if len(rtts) == count else 1


def helper_metrics(url: str) -> int:
    """A few lines of the exporter's page, fetched with urllib (curl need not be installed)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(url, timeout=5).read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    # The series that moved (the names are the exporter's; README lists them).
    moving = [line for line in samples if line.rsplit(" ", 1)[-1] not in ("0", "0.0")]
    for line in moving[:10]:
        print(line)
    print(f"... {len(samples)} series in all")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_ping"]:
        return helper_ping(args[1], int(args[2]))
    if args[:1] == ["_metrics"]:
        return helper_metrics(args[1])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--no-hold", action="store_true",
                   help="exit (and clean up) right after the show instead of waiting for Ctrl-C "
                        "(also: DEMO_HOLD=0)")
    p.add_argument("--iperf-seconds", type=float, default=5.0, help="length of the TCP transfer")
    p.add_argument("--workers", type=int, default=2, help="worker processes per daemon")
    opts = p.parse_args(args)
    if os.geteuid() != 0:
        print("the demo builds network namespaces: run it as root", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "sysctl", "tcpdump", "iperf3", "ss") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (deploy/scripts/install-deps.sh installs "
              "them)", file=sys.stderr)
        return 2
    hold = not opts.no_hold and os.environ.get("DEMO_HOLD", "1") not in ("0", "no", "false")
    if not 0 < opts.iperf_seconds <= 60:
        p.error("--iperf-seconds: between 0 and 60")
    return run_demo(hold, opts.iperf_seconds, opts.workers)


if __name__ == "__main__":
    sys.exit(main())
