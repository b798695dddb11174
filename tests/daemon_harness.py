"""Running real ``ipsecd run`` daemons inside the namespaces of :mod:`netns`.

Each daemon is a subprocess (``ip netns exec NS python -m ipsecd run``) with
its own configuration file, state directory and control socket under the
test's temporary directory, so any number can run side by side.  The lab
stops them at close like any process it started; :meth:`Daemon.stop` does it
earlier and checks the exit status, and removes shared memory a killed
daemon could not (``/dev/shm`` is not per namespace).

Also the hook of the datapath benchmark (``python -m ipsecd.bench_datapath
--ipsecd daemon_harness:bench_pair``, with ``tests`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns import HostToHost, Netns, SiteToSite, wait_until

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

# AES-GCM-16 keys (128-bit + salt) for the tests' SAs; not secret, deterministic.
KEY_AB = "0x6b1e0c0d6f9a1c2e3d4f5a6b7c8d9e0f10213243"
KEY_BA = "0x0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"


def transport_script(a: str, b: str, *, spi_ab: int = 0x1001, spi_ba: int = 0x1002,
                     local: str | None = None, extra: str = "", ipcomp: int = 0) -> str:
    """The HOWTO's host-to-host transport mode between ``a`` and ``b`` as seen from ``local``.

    ``ipcomp``: a CPI for IPComp SAs both ways (deflate, the HOWTO's "-C deflate"),
    and policies that compress before ESP (``ipcomp/transport//use esp/...``)."""
    local = a if local is None else local
    peer = b if local == a else a
    comp = ""
    request = "esp/transport//require"
    if ipcomp:
        comp = (f"add {a} {b} ipcomp {ipcomp:#x} -C deflate;\n"
                f"add {b} {a} ipcomp {ipcomp:#x} -C deflate;\n")
        request = "ipcomp/transport//use " + request
    return (
        "flush;\nspdflush;\n"
        f"add {a} {b} esp {spi_ab:#x} -m transport {extra}-E aes-gcm-16 {KEY_AB};\n"
        f"add {b} {a} esp {spi_ba:#x} -m transport {extra}-E aes-gcm-16 {KEY_BA};\n"
        f"{comp}"
        f"spdadd {local} {peer} any -P out ipsec {request};\n"
        f"spdadd {peer} {local} any -P in ipsec {request};\n"
    )


def tunnel_script(topo: SiteToSite, side: str, *, spi: int = 0x2001, extra: str = "",
                  ipcomp: int = 0, nested: bool = False) -> str:
    """Site-to-site tunnel mode for gateway ``side`` ("a" or "b"): the IPv4 sites over the
    IPv4 WAN (SPIs ``spi``, ``spi + 1``), the IPv6 sites over the IPv6 WAN (``spi + 0x600``,
    ``spi + 0x601``).  ``ipcomp``: a CPI for tunnel-mode IPComp SAs both ways (the same
    for both families: the destination tells them apart) and policies
    ``ipcomp/tunnel/A-B/use esp/tunnel/A-B/require``; with ``nested`` Linux's form
    instead, ``ipcomp/tunnel/A-B/use esp/transport//require`` with ESP SAs in transport
    mode (gateway a's script) or setkey's default mode any (gateway b's)."""
    lines = ["flush;", "spdflush;"]
    wans = ((topo.gw_a_wan.v4, topo.gw_b_wan.v4), (topo.gw_a_wan.v6, topo.gw_b_wan.v6))
    mode = "-m tunnel " if not nested else "-m transport " if side == "a" else ""
    for (ga, gb), site_a, site_b, base in zip(wans, topo.site_a, topo.site_b, (spi, spi + 0x600),
                                              strict=True):
        lines += [f"add {ga} {gb} esp {base:#x} {mode}{extra}-E aes-gcm-16 {KEY_AB};",
                  f"add {gb} {ga} esp {base + 1:#x} {mode}{extra}-E aes-gcm-16 {KEY_BA};"]
        if ipcomp:
            lines += [f"add {ga} {gb} ipcomp {ipcomp:#x} -m tunnel -C deflate;",
                      f"add {gb} {ga} ipcomp {ipcomp:#x} -m tunnel -C deflate;"]

        def req(x: str, y: str) -> str:
            esp = "esp/transport//require" if nested else f"esp/tunnel/{x}-{y}/require"
            return f"ipcomp/tunnel/{x}-{y}/use {esp}" if ipcomp else esp

        if side == "a":
            lines += [f"spdadd {site_a} {site_b} any -P out ipsec {req(ga, gb)};",
                      f"spdadd {site_b} {site_a} any -P in ipsec {req(gb, ga)};"]
        else:
            lines += [f"spdadd {site_b} {site_a} any -P out ipsec {req(gb, ga)};",
                      f"spdadd {site_a} {site_b} any -P in ipsec {req(ga, gb)};"]
    return "\n".join(lines) + "\n"


@dataclass
class Daemon:
    """One running daemon."""

    ns: Netns
    name: str
    config: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def ipsecd(self, *args: str, input: bytes | None = None,
               timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """``ipsecd ARGS --socket SOCK`` in the daemon's namespace."""
        cmd = ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "ipsecd", *args,
               "--socket", str(self.socket)]
        proc = subprocess.run(cmd, input=input, capture_output=True, env=ENV, cwd=ROOT,
                              timeout=timeout, check=False)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                           proc.stderr.decode())

    def status(self) -> dict[str, Any]:
        """``ipsecd status --json``, through the CLI; AssertionError if it fails."""
        r = self.ipsecd("status", "--json")
        assert r.returncode == 0, r.stderr
        result: dict[str, Any] = json.loads(r.stdout)
        return result

    def query(self, cmd: str = "status", **args: Any) -> Any:
        """A control request from this process (cheaper than the CLI); None if it fails."""
        from ipsecd import control

        try:
            return control.request(self.socket, cmd, timeout=5, **args)
        except control.ControlError:
            return None

    def setkey(self, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.ipsecd("setkey", *flags, "-c", input=script.encode())

    def ready(self) -> bool:
        st = self.query()
        return bool(st) and all(w["running"] for w in st["workers"])

    def worker_pids(self) -> list[int]:
        st = self.query()
        return [w["pid"] for w in st["workers"]] if st else []

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.worker_pids()]

    def sa(self, spi: int) -> dict[str, Any]:
        st = self.query()
        assert st is not None
        return next(sa for sa in st["sas"] if sa["spi"] == spi)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.cleanup()
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        for path in glob.glob(f"/dev/shm/ipsecd-{self.name}-{self.proc.pid}-*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def write_config(workdir: Path, name: str, *, outside: Sequence[str], script: str | None = None,
                 workers: int = 2, log_level: str = "info", mtu: int | str = "auto",
                 metrics: str = "", extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """A configuration file (and setkey script) for daemon ``name`` under ``workdir``."""
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "daemon": {"name": name.replace("-", "_"), "workers": workers, "state_dir": str(d / "run"),
                   "log_level": log_level},
        "datapath": {"outside": list(outside), "mtu": mtu},
        "metrics": {"listen": metrics},
    }
    if script is not None:
        (d / "ipsec.setkey").write_text(script)
        sections["setkey"] = {"script": "ipsec.setkey"}
    for table, values in (extra or {}).items():
        sections.setdefault(table, {}).update(values)
    lines = []
    for table, values in sections.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path = d / "ipsecd.toml"
    path.write_text("\n".join(lines))
    return path


def start(ns: Netns, workdir: Path, name: str, *, outside: Sequence[str], script: str | None = None,
          wait: bool = True, **kwargs: Any) -> Daemon:
    """Start a daemon in ``ns``; with ``wait``, return once every worker runs."""
    config = write_config(workdir, name, outside=outside, script=script, **kwargs)
    log = workdir / name / "daemon.log"
    proc = ns.popen(sys.executable, "-m", "ipsecd", "run", "--config", str(config),
                    env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    daemon = Daemon(ns, name.replace("-", "_"), config, workdir / name / "run" / "ipsecd.sock",
                    log, proc)
    if wait:
        wait_ready(daemon)
    return daemon


def wait_ready(*daemons: Daemon, timeout: float = 10.0) -> None:
    def ready() -> bool:
        for d in daemons:
            if d.proc.poll() is not None:
                raise AssertionError(f"daemon {d.name} exited ({d.proc.returncode}):\n"
                                     f"{d.log_text()}")
        return all(d.ready() for d in daemons)

    if not wait_until(ready, timeout, 0.05):
        raise AssertionError("daemons not ready:\n" + "\n".join(d.log_text() for d in daemons))


# --- the datapath benchmark's hook -------------------------------------------------------------


@dataclass
class _Pair:
    a: Daemon
    b: Daemon

    def cpu_pids(self) -> dict[str, list[int]]:
        return {"gwA": self.a.pids(), "gwB": self.b.pids()}


@contextlib.contextmanager
def bench_pair(topo: SiteToSite, workdir: Path, workers: int) -> Iterator[_Pair]:
    """``IpsecdStarter`` of :mod:`ipsecd.bench_datapath`: a tunnel-mode pair on ``topo``."""
    a = start(topo.gw_a_wan.ns, workdir, "bench-gwa", outside=["wan0"], workers=workers,
              script=tunnel_script(topo, "a"), wait=False)
    b = start(topo.gw_b_wan.ns, workdir, "bench-gwb", outside=["wan0"], workers=workers,
              script=tunnel_script(topo, "b"), wait=False)
    try:
        wait_ready(a, b)
        time.sleep(0.2)
        yield _Pair(a, b)
    finally:
        a.stop()
        b.stop()


@dataclass
class Gateways:
    """A site-to-site topology with an ipsecd daemon on each gateway."""

    topo: SiteToSite
    a: Daemon
    b: Daemon


@contextlib.contextmanager
def tunnel_pair(workdir: Path, tag: str,
                script: Callable[[SiteToSite, str], str] = tunnel_script) -> Iterator[Gateways]:
    """The HOWTO's site-to-site picture with both daemons up; both must exit cleanly.

    ``script(topo, side)`` is each gateway's setkey script (ESP tunnel mode by default).
    """
    from netns import Lab, remove_stale, site_to_site

    remove_stale()
    with Lab(tag) as lab:
        topo = site_to_site(lab, routed=False)
        a = start(topo.gw_a_wan.ns, workdir, f"{tag}-a", outside=["wan0"],
                  script=script(topo, "a"), wait=False)
        b = start(topo.gw_b_wan.ns, workdir, f"{tag}-b", outside=["wan0"],
                  script=script(topo, "b"), wait=False)
        try:
            wait_ready(a, b)
            yield Gateways(topo, a, b)
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()


@dataclass
class Hosts:
    """Two hosts on one link, an ipsecd daemon on each (transport mode)."""

    topo: HostToHost
    a: Daemon
    b: Daemon


@contextlib.contextmanager
def transport_pair(workdir: Path, tag: str,
                   script: Callable[[HostToHost, str], str]) -> Iterator[Hosts]:
    """Host-to-host with both daemons up (``script(topo, side)`` each one's setkey script);
    both must exit cleanly."""
    from netns import Lab, host_to_host, remove_stale

    remove_stale()
    with Lab(tag) as lab:
        topo = host_to_host(lab)
        a = start(topo.a.ns, workdir, f"{tag}-a", outside=["eth0"],
                  script=script(topo, "a"), wait=False)
        b = start(topo.b.ns, workdir, f"{tag}-b", outside=["eth0"],
                  script=script(topo, "b"), wait=False)
        try:
            wait_ready(a, b)
            yield Hosts(topo, a, b)
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()
