"""``make demo``: the FreeBSD IPsec mini-HOWTO's site-to-site tunnel with two ipsecd daemons.

::

    netA ── gwA ══ wan ══ gwB ── netB        (each box a network namespace)

Run as root: ``python deploy/demo/demo.py [--no-hold] [--iperf-seconds N]
[--keying ike|manual]`` (``make demo`` runs it with the project's
virtualenv).  It builds the four namespaces and three veth links (the sites
have IPv4 and IPv6 nets, the WAN is IPv4 only), writes each gateway's
configuration from the templates beside this file into a 0700 temporary
directory, starts one ``ipsecd run`` per gateway, and shows it working.

Keying is IKEv2 by default: each gateway gets an ``[ike]`` table with a
racoon-format ``psk.txt`` (a key made afresh with :mod:`secrets`, never
printed; root's, mode 0600) and a ``[connections.site-X]`` with one tunnel
child for both families.  gwA's child has ``start_action = "start"``: its
daemon initiates at once and keeps the connection up; gwB answers.  The demo
shows the IKE exchange on the WAN, ``ipsecd list-sas`` of both gateways,
pings (IPv4 and IPv6) between the internal nets, a bounded iperf3 TCP
transfer, a capture of the WAN link (only ESP on it), ``ipsecd status`` of
both gateways, and where the Prometheus metrics are (with their ``ipsecd_``
lines fetched, IKE ones first).  ``--keying manual`` (``DEMO_KEYING=manual``)
runs the HOWTO's manual keying instead: a setkey script with AES-GCM-16 keys
made afresh and never printed.

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
# gateways' external addresses on the (documentation) WAN 192.0.2.0/24; the sites
# also have IPv6 nets (documentation prefix, RFC 3849) carried by the IPv4 tunnel.
NET_A, NET_B = "10.10.10.0/24", "10.20.20.0/24"
HOST_A, GW_A_LAN, GW_A_WAN = "10.10.10.10", "10.10.10.1", "192.0.2.1"
HOST_B, GW_B_LAN, GW_B_WAN = "10.20.20.10", "10.20.20.1", "192.0.2.2"
NET_A6, HOST_A6, GW_A_LAN6 = "2001:db8:10::/64", "2001:db8:10::10", "2001:db8:10::1"
NET_B6, HOST_B6, GW_B_LAN6 = "2001:db8:20::/64", "2001:db8:20::10", "2001:db8:20::1"
SPI_AB, SPI_BA = 0x2001, 0x2002
METRICS_PORT = {"gwa": 9766, "gwb": 9767}
CONNECTION = {"gwa": "site-b", "gwb": "site-a"}  # [connections.NAME]: named after the peer
IKE_PROPOSAL, ESP_PROPOSAL = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
IKE_TIMEOUT = 15.0
CAPTURE_PACKETS = 12
KEYINGS = ("ike", "manual")


def topology(keying: str) -> str:
    wire = " IKE, ESP " if keying == "ike" else "   ESP    "
    if keying == "ike":
        keys = (f"  keyed by IKEv2 with a pre-shared key (racoon's psk.txt, made for this run):\n"
                f"  IKE {IKE_PROPOSAL}, ESP {ESP_PROPOSAL}; gwA initiates "
                f"(start_action = \"start\"), gwB answers")
    else:
        keys = (f"  manual keys (setkey script, made for this run): AES-GCM-16 (256-bit), "
                f"SPIs {SPI_AB:#x} (A->B) and {SPI_BA:#x} (B->A)")
    return f"""\
  The FreeBSD IPsec mini-HOWTO's site-to-site tunnel, each box a network namespace:

  {"netA":<16}    {"gwA":<20}{"":4}{"gwB":>20}    {"netB":>16}
  {HOST_A:<16} ── {"lan0 " + GW_A_LAN:<20}{"":4}{GW_B_LAN + " lan0":>20} ── {HOST_B:>16}
  {HOST_A6:<16}    {"     " + GW_A_LAN6:<20}{"":4}{GW_B_LAN6 + "     ":>20}    {HOST_B6:>16}
  {"":16}    wan0 {GW_A_WAN} ══{wire}══ {GW_B_WAN} wan0
  {"":16}    {"ipsecd (tunnel mode)":<20}{"":4}{"ipsecd (tunnel mode)":>20}

  {NET_A}, {NET_A6} <-> {NET_B}, {NET_B6}
  through esp/tunnel/{GW_A_WAN}-{GW_B_WAN} (the WAN is IPv4 only)
{keys}"""


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
    def __init__(self, *, iperf_seconds: float, workers: int, keying: str = "ike") -> None:
        self.tag = f"{PREFIX}{os.getpid()}-"
        self.keying = keying
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
            sh(["ip", "-n", name, "link", "set", "lo", "up"])
        links = (("neta", "eth0", "gwa", "lan0"), ("gwa", "wan0", "gwb", "wan0"),
                 ("gwb", "lan0", "netb", "eth0"))
        for a, a_if, b, b_if in links:
            sh(["ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth",
                "peer", "name", b_if, "netns", self.ns(b)])
        for role in ("gwa", "gwb"):
            # The WAN is IPv4 only, as the HOWTO's: no IPv6 link-local chatter on its
            # capture.  The sites (and the TUN) keep IPv6; their v6 nets ride the v4 tunnel.
            self.run_in(self.ns(role), ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                                        "net.ipv6.conf.all.forwarding=1",
                                        "net.ipv6.conf.wan0.disable_ipv6=1"])
        batches = {
            "neta": [f"addr add {HOST_A}/24 dev eth0", f"addr add {HOST_A6}/64 dev eth0 nodad",
                     "link set eth0 up", f"route add default via {GW_A_LAN}",
                     f"route add ::/0 via {GW_A_LAN6}"],
            "gwa": [f"addr add {GW_A_LAN}/24 dev lan0", f"addr add {GW_A_LAN6}/64 dev lan0 nodad",
                    f"addr add {GW_A_WAN}/24 dev wan0", "link set lan0 up", "link set wan0 up"],
            "gwb": [f"addr add {GW_B_LAN}/24 dev lan0", f"addr add {GW_B_LAN6}/64 dev lan0 nodad",
                    f"addr add {GW_B_WAN}/24 dev wan0", "link set lan0 up", "link set wan0 up"],
            "netb": [f"addr add {HOST_B}/24 dev eth0", f"addr add {HOST_B6}/64 dev eth0 nodad",
                     "link set eth0 up", f"route add default via {GW_B_LAN}",
                     f"route add ::/0 via {GW_B_LAN6}"],
        }
        for role, lines in batches.items():
            sh(["ip", "-n", self.ns(role), "-batch", "-"], input="\n".join(lines).encode() + b"\n")

    def write_configs(self) -> None:
        assert self.workdir is not None
        if self.keying == "ike":
            # One pre-shared key for both gateways (each looks up the other's identity):
            # 32 random bytes, in hex as racoon's psk.txt allows.
            keys = {"psk": "0x" + secrets.token_hex(32)}
        else:
            # AES-GCM-16 with a 256-bit key: 32 key bytes + 4 salt bytes (RFC 4106 §8.1).
            keys = {"key_ab": "0x" + secrets.token_hex(36),
                    "key_ba": "0x" + secrets.token_hex(36)}
        toml = string.Template((HERE / "gateway.toml.in").read_text())
        keying = string.Template((HERE / f"keying-{self.keying}.toml.in").read_text())
        sides = {
            "gwa": ("gwA", "gwB", (NET_A, NET_A6), (NET_B, NET_B6), GW_A_WAN, GW_B_WAN, "A"),
            "gwb": ("gwB", "gwA", (NET_B, NET_B6), (NET_A, NET_A6), GW_B_WAN, GW_A_WAN, "B"),
        }
        old_umask = os.umask(0o077)  # every file below: mode 0600, the demo's (root's)
        try:
            for key, (label, peer, local_nets, remote_nets, local_gw, remote_gw,
                      site) in sides.items():
                d = self.workdir / key
                d.mkdir()
                if self.keying == "ike":
                    (d / "psk.txt").write_text(string.Template(
                        (HERE / "psk.txt.in").read_text()).substitute(
                            gw=label, peer_id=remote_gw, **keys))
                    start = "start" if key == "gwa" else "none"
                    fragment = keying.substitute(
                        conn=CONNECTION[key], peer=peer, local_gw=local_gw, remote_gw=remote_gw,
                        local_ts=", ".join(f'"{n}"' for n in local_nets),
                        remote_ts=", ".join(f'"{n}"' for n in remote_nets),
                        start_action=start,
                        start_comment=("   # initiate at start, keep it up" if start == "start"
                                       else "    # answer only: gwA initiates"))
                else:
                    (d / f"{key}.setkey").write_text(string.Template(
                        (HERE / "gateway.setkey.in").read_text()).substitute(
                            gw=label, net_a=NET_A, net_b=NET_B, net_a6=NET_A6, net_b6=NET_B6,
                            gw_a=GW_A_WAN, gw_b=GW_B_WAN, spi_ab=f"{SPI_AB:#x}",
                            spi_ba=f"{SPI_BA:#x}", local_net=local_nets[0],
                            remote_net=remote_nets[0], local_net6=local_nets[1],
                            remote_net6=remote_nets[1], local_gw=local_gw,
                            remote_gw=remote_gw, **keys))
                    fragment = keying.substitute(name=key)
                config = d / f"{key}.toml"
                config.write_text(toml.substitute(
                    gw=label, netns=self.ns(key), name=key, workers=self.workers,
                    state_dir=d / "run", wan_if="wan0", local_site=site,
                    metrics_port=METRICS_PORT[key], keying="\n" + fragment.rstrip("\n")))
                self.gateways[key] = Gateway(key, label, self.ns(key), config,
                                             d / "run" / "ipsecd.sock", d / "daemon.log")
        finally:
            os.umask(old_umask)
            keys.clear()

    def psk_files(self) -> None:
        """Where each psk.txt is and that it is as the daemon demands (never its content)."""
        for gw in self.gateways.values():
            psk = gw.config.parent / "psk.txt"
            st = psk.stat()
            owner = "root" if st.st_uid == 0 else f"uid {st.st_uid}"
            say(f"  {gw.label}: {psk}  (mode {st.st_mode & 0o7777:04o}, owner {owner})")

    def start_daemons(self) -> None:
        # gwB first: it only answers, and should listen by the time gwA initiates (if not,
        # gwA's IKE retransmission covers it).
        for gw in sorted(self.gateways.values(), key=lambda g: g.key != "gwb"):
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

    def tcpdump(self, pcap: Path, *args: str) -> subprocess.Popen[bytes]:
        """tcpdump on gwA's wan0 writing ``pcap``, returned once it listens."""
        # --immediate-mode: each packet as it comes, not when a kernel buffer block is full
        # or times out (which a SIGINT would cut short)
        cap = self.popen(self.ns("gwa"), ["tcpdump", "-i", "wan0", "-n", "-U", "--immediate-mode",
                                          "-w", str(pcap), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert cap.stderr is not None
        seen, deadline = b"", time.monotonic() + 5
        while b"listening on" not in seen:
            if time.monotonic() > deadline or cap.poll() is not None:
                raise StepFailed(f"tcpdump did not start: {seen.decode(errors='replace')}")
            if select.select([cap.stderr], [], [], 0.2)[0]:
                seen += os.read(cap.stderr.fileno(), 4096)
        return cap

    def wait_ike(self, cap: subprocess.Popen[bytes] | None, pcap: Path) -> None:
        """Until both gateways have the IKE SA established and its Child SA installed;
        then the IKE messages seen on the WAN meanwhile."""
        from ipsecd import control

        def up(gw: Gateway) -> bool:
            assert gw.proc is not None
            if gw.proc.poll() is not None:
                raise StepFailed(f"the ipsecd of {gw.label} exited ({gw.proc.returncode}):\n"
                                 + self.log_tail(gw))
            try:
                sas = control.request(gw.socket, "list-sas", timeout=2)["ike_sas"]
            except control.ControlError:
                return False
            return any(sa["state"] == "established" and sa["children"]
                       and all(c["state"] == "installed" for c in sa["children"])
                       for sa in sas)

        t0 = time.monotonic()
        deadline = t0 + IKE_TIMEOUT
        while not all(up(gw) for gw in self.gateways.values()):
            if time.monotonic() > deadline:
                raise StepFailed(f"no IKE SA within {IKE_TIMEOUT:g} s:\n"
                                 + "".join(self.log_tail(gw) for gw in self.gateways.values()))
            time.sleep(0.05)
        if cap is not None:
            # IKE_SA_INIT and IKE_AUTH, a request and a response each: wait for the last
            # to be written (briefly: with a retransmission there are more)
            settle = time.monotonic() + 1.0
            while len(_read_pcap(pcap)) < 4 and time.monotonic() < settle:
                time.sleep(0.02)
            cap.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                cap.wait(5)
            text = sh(["tcpdump", "-r", str(pcap), "-n", "-t"], check=False).stdout.decode()
            lines = text.splitlines()
            for line in lines[:10]:
                say(f"    {line}")
            if len(lines) > 10:
                say(f"    ... ({len(lines) - 10} more)")
            say(f"  {len(lines)} IKE messages on the WAN (udp/500: IKE_SA_INIT, IKE_AUTH)")
        say(f"  IKE SA and Child SA up on both gateways ({time.monotonic() - t0:.1f} s after "
            f"the daemons were ready)")

    def list_sas(self) -> None:
        for gw in self.gateways.values():
            r = self.run_in(gw.ns, [sys.executable, "-m", "ipsecd", "list-sas", "--socket",
                                    str(gw.socket)], check=False)
            if r.returncode != 0:
                raise StepFailed(f"ipsecd list-sas on {gw.label} failed: {r.stderr.decode()}")
            say(f"  --- {gw.label}: ip netns exec {gw.ns} ipsecd list-sas --socket {gw.socket}")
            for line in r.stdout.decode().splitlines():
                say(f"  {line}")

    def capture(self) -> None:
        assert self.workdir is not None
        pcap = self.workdir / "wan.pcap"
        cap = self.tcpdump(pcap, "-c", str(CAPTURE_PACKETS))
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
        ike = kinds.count("ike") if self.keying == "ike" else 0  # manual keying: no IKE at all
        other = len(kinds) - esp - arp - ike
        say(f"  wan capture: {len(frames)} packets on gwA wan0: {esp} ESP, {arp} ARP, "
            + (f"{ike} IKE, " if self.keying == "ike" else "") + f"{other} other")
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
                f"ip netns exec {gw.ns} curl -s {url} | grep ipsecd_)")
            for line in self.helper(gw.ns, "_metrics", url).splitlines():
                say(f"    {line}")

    def hold_commands(self) -> None:
        gwa, gwb = self.gateways["gwa"], self.gateways["gwb"]
        ipsecd = f"ip netns exec {gwa.ns} {sys.executable} -m ipsecd"
        say("  While it runs, try (as root, in another terminal):")
        say(f"    {ipsecd} status --socket {gwa.socket}")
        if self.keying == "ike":
            conn = CONNECTION["gwa"]
            say(f"    {ipsecd} list-sas --socket {gwa.socket}   (list-conns: the configuration)")
            say(f"    {ipsecd} rekey {conn} --socket {gwa.socket}   (--ike: the IKE SA)")
            say(f"    {ipsecd} terminate {conn} --socket {gwa.socket}   "
                f"(then: initiate {conn})")
        else:
            say(f"    {ipsecd} setkey -DP --socket {gwa.socket}")
        say(f"    ip netns exec {gwa.ns} tcpdump -n -i wan0")
        if shutil.which("ping"):
            ping = f"ping -c 3 {HOST_B6}"
        else:  # ping(8) need not be installed: this file's own
            ping = f"{sys.executable} {Path(__file__).resolve()} _ping {HOST_B6} 3"
        say(f"    ip netns exec {self.ns('neta')} {ping}")
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
    if ethertype != 0x0800:
        return "other"
    ihl = (frame[14] & 15) * 4
    proto = frame[14 + 9]
    if proto == 50:
        return "esp"
    if proto == 17 and len(frame) >= 14 + ihl + 4:
        # IKE (a liveness check, say) may cross too: it is encrypted as well
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
        if {sport, dport} & {500, 4500}:
            return "ike"
    return "other"


def step(title: str) -> None:
    say()
    say(f"== {title}")


def run_demo(hold: bool, iperf_seconds: float, workers: int, keying: str = "ike") -> int:
    demo = Demo(iperf_seconds=iperf_seconds, workers=workers, keying=keying)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    status, holding = 0, False
    try:
        stale = remove_stale()
        if stale:
            say(f"removed what an earlier demo left: {', '.join(stale)}")
        demo.workdir = Path(tempfile.mkdtemp(prefix=demo.tag))  # mode 0700
        step("topology")
        say(topology(keying))
        say(f"  namespaces: {demo.ns('neta')}, {demo.ns('gwa')}, {demo.ns('gwb')}, "
            f"{demo.ns('netb')}")
        say(f"  work dir: {demo.workdir}")
        demo.build()
        demo.write_configs()
        ike_cap, ike_pcap = None, demo.workdir / "ike.pcap"
        if keying == "ike":
            step("pre-shared key files (racoon's psk.txt; the key is never printed)")
            demo.psk_files()
            # the negotiation on the WAN, from the first message on
            ike_cap = demo.tcpdump(ike_pcap, "udp port 500 or udp port 4500")
        step("starting ipsecd on gwA and gwB")
        t0 = time.monotonic()
        demo.start_daemons()
        for gw in demo.gateways.values():
            assert gw.proc is not None
            say(f"  {gw.label}: ipsecd run --config {gw.config}  (pid {gw.proc.pid})")
        say(f"  daemons up: both ready in {time.monotonic() - t0:.1f} s")
        if keying == "ike":
            step("IKEv2: gwA initiates, gwB answers (tcpdump on gwA wan0, udp port 500/4500)")
            demo.wait_ike(ike_cap, ike_pcap)
            step("IKE SA and Child SAs (ipsecd list-sas)")
            demo.list_sas()
        step("ping between the internal nets (through the tunnel)")
        demo.ping("neta", HOST_B, 5)
        demo.ping("netb", HOST_A, 3)
        demo.ping("neta", HOST_B6, 3)
        demo.ping("netb", HOST_A6, 3)
        step(f"the WAN link (tcpdump -c {CAPTURE_PACKETS} on gwA wan0, no filter) during a ping")
        demo.capture()
        step(f"TCP through the tunnel (iperf3, {iperf_seconds:g} s)")
        demo.iperf()
        step("ipsecd status")
        demo.status()
        step("metrics (Prometheus text format)")
        demo.metrics()
        say()
        say("demo OK: " + ("IKEv2 negotiated the tunnel, traffic crossed it"
                           if keying == "ike" else "traffic crossed the tunnel")
            + ", the WAN carried only ESP")
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
    """ICMP (or ICMPv6) echo through a raw socket (ping(8) need not be installed)."""
    v6 = ":" in dst
    if v6:  # the kernel fills in ICMPv6 checksums and hands over no IPv6 header
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request, reply = 128, 129
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request, reply = 8, 0
    ident = os.getpid() & 0xFFFF
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    deadline = time.monotonic() + count * 0.2 + 2.0
    next_send, seq = time.monotonic(), 0
    while len(rtts) < count and time.monotonic() < deadline:
        now = time.monotonic()
        if seq < count and now >= next_send:
            body = struct.pack("!BBHHH", request, 0, 0, ident, seq) + b"ipsecd demo " * 4
            if not v6:
                body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            sock.sendto(body, (dst, 0))
            sent_at[seq] = now
            seq += 1
            next_send = now + 0.2
        if select.select([sock], [], [], 0.02)[0]:
            data = sock.recv(2048)
            icmp = data if v6 else data[(data[0] & 15) * 4:]
            if len(icmp) >= 8:
                kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
                if kind == reply and rid == ident and rseq in sent_at:
                    rtts.append((time.monotonic() - sent_at.pop(rseq)) * 1000)
    sock.close()
    line = f"-> {dst}: {len(rtts)}/{count} replies"
    if rtts:
        line += f", rtt min/avg/max {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/{max(rtts):.2f} ms"
    print(line)
    return 0 if len(rtts) == count else 1


def helper_metrics(url: str) -> int:
    """Some ``ipsecd_`` lines of the exporter's page (``curl -s URL | grep ipsecd_``),
    fetched with urllib (curl need not be installed)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(url, timeout=5).read().decode()
    samples = [line for line in text.splitlines() if line.startswith("ipsecd_")]
    # The series that moved (the names are the exporter's; README lists them), those of
    # IKE and of the connections first when the exporter has them.
    moving = [line for line in samples if line.rsplit(" ", 1)[-1] not in ("0", "0.0")]
    ike = [line for line in moving if line.startswith(("ipsecd_ike", "ipsecd_connection"))]
    shown = ike[:6] + [line for line in moving if line not in ike][:10 - min(len(ike), 6)]
    for line in shown:
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
    p.add_argument("--keying", choices=KEYINGS, default=os.environ.get("DEMO_KEYING") or "ike",
                   help="ike: IKEv2 with a pre-shared key (the default); manual: the HOWTO's "
                        "setkey script with manual keys (also: DEMO_KEYING=manual)")
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
    if opts.keying not in KEYINGS:  # from DEMO_KEYING: argparse checks only what is given
        p.error(f"DEMO_KEYING: one of {', '.join(KEYINGS)}, not {opts.keying!r}")
    return run_demo(hold, opts.iperf_seconds, opts.workers, opts.keying)


if __name__ == "__main__":
    sys.exit(main())
