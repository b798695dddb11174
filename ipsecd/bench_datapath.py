"""End-to-end datapath benchmark through the site-to-site tunnel; ``python -m ipsecd.bench_datapath``.

    sudo .venv/bin/python -m ipsecd.bench_datapath [--seconds 4] [--json]
                          [--ipsecd MODULE:CALLABLE] [--workers 1,2]

On the HOWTO's topology ``netA -- gwA == wan == gwB -- netB`` (namespaces of
:func:`netns.site_to_site`, made afresh for every scenario and removed after
it) iperf3 in netA sends to an iperf3 server in netB:

* ``tcp``: one TCP stream for ``--seconds`` (the first second of slow start
  omitted, ``-O 1``), goodput at the receiver;
* ``udpN`` (64 and 1400-byte payloads by default): one UDP stream offered
  *without a rate limit* (``-b 0``) -- the iperf3 sender is a C loop, so the
  offered rate is as high as this machine's sender gets (about 150 k packets/s
  here, whatever the size: the sender also pays the veth hops' softirq work);
  reported are the packets/s that reached the server, the offered rate and the
  loss.  A saturating offer rather than a search for the loss-free maximum:
  one run per point keeps the whole benchmark bounded, and received packets/s
  at saturation is what the datapath sustains.  Where the path MTU (the
  device gwA routes netB through, e.g. strongSwan's ``ipsec0`` with MTU
  1400) cannot carry the payload in one packet, the payload is reduced to fit
  and the row says so, so no scenario is measured on fragments.

Scenarios, each on its own fresh topology:

* (a) ``plain``: the gateways just route (no IPsec);
* (b) ``strongswan``: charon with its userspace ``kernel-libipsec`` datapath on
  both gateways (:mod:`strongswan` harness, PSK IKEv2, AES-GCM-128 ESP in
  UDP 4500 -- the Debian 12 build always encapsulates);
* (c) ``baseline``: the minimal Python loop of the datapath issue -- frames
  from a TPACKET_V3 ring, AES-GCM-128-decrypted, 1400-byte packets, timed
  while it drains (receiver-bound); measured by
  :func:`workers.bench_plumbing.drain_cycles` on a host-to-host pair;
* (d) ``ipsecd`` with N workers per gateway: a hook.  A callable
  ``start(topology, workdir, workers)`` returning a context manager that
  yields a :class:`Gateways` (``--ipsecd MODULE:CALLABLE`` or
  :func:`run`'s ``ipsecd=``).  Without one the rows say "ipsecd: not
  available yet".

(e) ``--scrape`` (issue #5), instead of the above: does a Prometheus scraping
both gateways every second cost the datapath?  One fresh topology and ipsecd
pair from the ``--ipsecd`` hook with each gateway's exporter on (gwA on its
loopback, gwB on its WAN address, port 9765), and a real
``/usr/bin/prometheus`` in gwA's namespace, as in ``tests/test_prometheus.py``
(its own config, TSDB and log in a temporary directory, a free loopback port,
``scrape_interval`` and ``scrape_timeout`` 1 s).  After an unmeasured warm-up,
``2 * --rounds`` TCP runs like the ``tcp`` test above, scraping off and on in
ABBA order (off on on off off on ...: a linear drift cancels); scraping is
switched by rewriting the config and ``POST /-/reload``, so the "off" runs have
the same server, idle, with no target (checked: no scrape stored in their
windows).  Reported: every run, the median goodput of each condition and their
ratio against the goal (>= 0.98), the on/off ratio within each round (the
noise), and from Prometheus's own TSDB the scrapes it stored during each run
(``scrape_duration_seconds`` samples: count, interval, duration), the samples
per scrape, ``up``, and Prometheus's own CPU time.  About ``2 * rounds *
(seconds + 3) + 15`` s (one minute with the defaults).

    sudo PYTHONPATH=tests .venv/bin/python -m ipsecd.bench_datapath \\
         --ipsecd daemon_harness:bench_pair --scrape [--workers 1] [--rounds 4]

The hook is called with ``metrics=`` (gateway -> ``HOST:PORT``) if it takes
it; else its module's ``start``/``tunnel_script``/``wait_ready`` (those of
:mod:`daemon_harness`) start the pair with the exporters on.

CPU: this VM's two cores are shared by both gateways and the traffic
generator, so raw totals say little about efficiency.  Each run samples the
utime + stime (``/proc/PID/stat``) of the gateway processes (charon; the
ipsecd processes the hook names) and the machine's busy and softirq time
(``/proc/stat``); "per gw CPU-s" is what the run carried divided by the
gateway processes' CPU seconds (both gateways together), i.e. the rate one
fully busy core of gateway work would reach.  Plain routing has no process:
its forwarding runs in softirq, shown machine-wide.  The scaling goal
compares packets per gateway CPU-second with 2 workers to that with 1.

Total time is about ``3 * (seconds + 2) + 3`` s per scenario plus ``seconds
+ 5`` for the baseline: under a minute with the default ``--seconds 4``
without ipsecd, under two with it.  Figures vary by 10-20 % on a shared VM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
IPERF_PORT = 5201
UDP_OVERHEAD = 28  # IPv4 + UDP headers around an iperf3 UDP payload

# The issue's goals (datapath, issue #3).
GOAL_TCP_VS_STRONGSWAN = 3.0
GOAL_PPS_PER_WORKER_VS_BASELINE = 0.40
GOAL_SCALING_2_VS_1 = 0.85

NOT_YET = "ipsecd: not available yet"


def _harness() -> tuple[Any, Any]:
    """The namespace and strongSwan harnesses, which live with the tests."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module("netns"), importlib.import_module("strongswan")


# --- the ipsecd hook ---------------------------------------------------------------------


GATEWAYS = ("gwA", "gwB")  # gwA encrypts the netA -> netB traffic, gwB decrypts it


class Gateways(Protocol):
    """A running gateway pair on the site-to-site topology, as the benchmark sees it."""

    def cpu_pids(self) -> Mapping[str, Sequence[int]]:
        """Per gateway (``"gwA"``, ``"gwB"``), the processes whose CPU time is the
        datapath's cost: the workers, and the control process if it touches packets."""
        ...


GatewayStarter = Callable[[Any, Path], AbstractContextManager[Gateways]]
"""``start(topology, workdir)``: brings a pair up on a :class:`netns.SiteToSite`."""

IpsecdStarter = Callable[[Any, Path, int], AbstractContextManager[Gateways]]
"""``start(topology, workdir, workers)``: an ipsecd pair with ``workers`` workers per gateway.

The topology is made with ``routed=False`` (no clear route between the
sites): until the pair is up, netA cannot reach netB.  The context manager
must stop everything it started when it exits (the lab also kills whatever
is left in the namespaces).
"""


@dataclass
class _Pids:
    pids: Mapping[str, Sequence[int]]

    def cpu_pids(self) -> Mapping[str, Sequence[int]]:
        return self.pids


@contextlib.contextmanager
def plain_routing(topo: Any, workdir: Path) -> Iterator[Gateways]:
    """Scenario (a): nothing to start; the topology routes the sites in clear."""
    yield _Pids({})


@contextlib.contextmanager
def strongswan_pair(topo: Any, workdir: Path) -> Iterator[Gateways]:
    """Scenario (b): charon + kernel-libipsec on gwA and gwB, PSK IKEv2, AES-GCM-128."""
    _, sw = _harness()
    left, right = sw.site_to_site_pair(
        left=(topo.gw_a_wan.v4, "gwa", [topo.site_a[0]]),
        right=(topo.gw_b_wan.v4, "gwb", [topo.site_b[0]]),
        psk="bench-" + os.urandom(12).hex(),
        proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16"])
    levels = {"ike": 1, "cfg": 1, "knl": 1, "esp": 0, "net": 0}  # quiet: logging costs CPU
    gw_a = sw.StrongSwan(topo.gw_a_wan.ns, workdir / "gwa", debug_levels=levels)
    gw_b = sw.StrongSwan(topo.gw_b_wan.ns, workdir / "gwb", debug_levels=levels)
    with gw_a, gw_b:
        gw_a.load(left)
        gw_b.load(right)
        gw_a.initiate("net")
        gw_b.wait_established("net")
        yield _Pids({"gwA": [gw_a.pid], "gwB": [gw_b.pid]})


def _with_workers(starter: IpsecdStarter, workers: int, topo: Any,
                  workdir: Path) -> AbstractContextManager[Gateways]:
    return starter(topo, workdir, workers)


def load_starter(spec: str) -> IpsecdStarter:
    """``MODULE:CALLABLE`` as given to ``--ipsecd``."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--ipsecd wants MODULE:CALLABLE, not {spec!r}")
    starter: IpsecdStarter = getattr(importlib.import_module(module), name)
    return starter


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement; ``None`` where it does not apply."""

    scenario: str
    test: str
    payload: int | None = None
    seconds: float = 0.0
    gbit_s: float | None = None
    rx_pps: float | None = None
    tx_pps: float | None = None
    loss_pct: float | None = None
    gw_cpu_s: dict[str, float] | None = None
    """CPU seconds of each gateway's processes during the run."""
    busy_cpu_s: float | None = None
    softirq_s: float | None = None
    workers: int | None = None
    note: str = ""

    def carried(self) -> float | None:
        """Packets (UDP) or bits (TCP) that reached netB during the run."""
        if self.rx_pps is not None:
            return self.rx_pps * self.seconds
        if self.gbit_s is not None:
            return self.gbit_s * 1e9 * self.seconds
        return None

    def per_cpu_s(self, gateway: str | None = None) -> float | None:
        """Packets (UDP) or bits (TCP) per CPU-second of one gateway's processes,
        or of both gateways' together (``None``)."""
        carried = self.carried()
        if not self.gw_cpu_s or carried is None:
            return None
        cpu = sum(self.gw_cpu_s.values()) if gateway is None else self.gw_cpu_s.get(gateway)
        return carried / cpu if cpu else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_cpu_s"] = {g: self.per_cpu_s(g) for g in GATEWAYS} | {"both": self.per_cpu_s()}
        return out


def _machine_cpu() -> tuple[float, float]:
    """(busy, softirq) seconds of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / tick, fields[6] / tick


class CpuMeter:
    """CPU seconds used by each gateway's processes and by the machine, start to stop."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        _, sw = _harness()
        self._cpu_of: Callable[[int], float] = sw.process_cpu_seconds
        self.pids = {gw: list(p) for gw, p in pids.items() if p}
        self._procs0 = self._procs()
        self._machine0 = _machine_cpu()

    def _procs(self) -> dict[str, float]:
        return {gw: sum(self._cpu_of(pid) for pid in p) for gw, p in self.pids.items()}

    def stop(self, row: Row) -> None:
        procs = self._procs()
        busy, softirq = _machine_cpu()
        row.busy_cpu_s = busy - self._machine0[0]
        row.softirq_s = softirq - self._machine0[1]
        if self.pids:
            row.gw_cpu_s = {gw: procs[gw] - self._procs0[gw] for gw in self.pids}


def path_mtu(topo: Any) -> int:
    """The MTU of the device gwA routes netB's host through (the tunnel's, once it is up)."""
    route = topo.gw_a_wan.ns.run("ip", "-o", "route", "get", topo.net_b.v4,
                                 "from", topo.net_a.v4, "iif", topo.gw_a_lan.ifname)
    words = route.stdout.decode().split()
    dev = words[words.index("dev") + 1]
    link = topo.gw_a_wan.ns.run("ip", "-o", "link", "show", "dev", dev).stdout.decode().split()
    return int(link[link.index("mtu") + 1])


def iperf3(topo: Any, seconds: float, *args: str) -> dict[str, Any]:
    """One bounded iperf3 client run from netA to netB's server; its JSON result."""
    proc = topo.net_a.ns.run(
        "iperf3", "-c", topo.net_b.v4, "-p", str(IPERF_PORT), "-J",
        "-t", f"{seconds:g}", "--connect-timeout", "3000", *args,
        timeout=seconds + 20, check=False)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3 {' '.join(args)}: no JSON "
                           f"({proc.stderr.decode(errors='replace').strip()})") from None
    if "error" in result:
        raise RuntimeError(f"iperf3 {' '.join(args)}: {result['error']}")
    return result


def measure_tcp(topo: Any, scenario: str, seconds: float,
                pids: Mapping[str, Sequence[int]]) -> Row:
    row = Row(scenario, "tcp")
    meter = CpuMeter(pids)
    result = iperf3(topo, seconds + 1, "-O", "1")
    meter.stop(row)
    received = result["end"]["sum_received"]
    row.seconds = float(received["seconds"])
    row.gbit_s = float(received["bits_per_second"]) / 1e9
    # the CPU meter also saw the omitted second: scale to the measured part
    _scale_cpu(row, row.seconds / (row.seconds + 1))
    retransmits = result["end"]["sum_sent"].get("retransmits")
    if retransmits is not None:
        row.note = f"{retransmits} retransmits"
    return row


def _scale_cpu(row: Row, factor: float) -> None:
    if row.gw_cpu_s is not None:
        row.gw_cpu_s = {gw: cpu * factor for gw, cpu in row.gw_cpu_s.items()}
    if row.busy_cpu_s is not None:
        row.busy_cpu_s *= factor
    if row.softirq_s is not None:
        row.softirq_s *= factor


def measure_udp(topo: Any, scenario: str, seconds: float, payload: int,
                pids: Mapping[str, Sequence[int]], mtu: int) -> Row:
    size = min(payload, mtu - UDP_OVERHEAD)
    row = Row(scenario, f"udp{payload}", payload=size)
    if size != payload:
        row.note = f"payload {size} B to fit the path MTU {mtu}"
    meter = CpuMeter(pids)
    result = iperf3(topo, seconds, "-u", "-b", "0", "-l", str(size))
    meter.stop(row)
    end = result["end"]
    received, sent = end.get("sum_received", end["sum"]), end.get("sum_sent", end["sum"])
    row.seconds = float(received["seconds"])
    packets, lost = int(received["packets"]), int(received["lost_packets"])
    row.rx_pps = (packets - lost) / row.seconds
    row.tx_pps = int(sent["packets"]) / float(sent["seconds"])
    row.loss_pct = 100.0 * lost / packets if packets else 0.0
    return row


def run_scenario(scenario: str, start: GatewayStarter, *, routed: bool, seconds: float,
                 payloads: Sequence[int], workers: int | None = None,
                 log: Callable[[str], None] = print) -> list[Row]:
    """Fresh topology, start the pair, then TCP and one UDP run per payload size."""
    netns, _ = _harness()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bdp-") as tmp, netns.Lab("-bdp") as lab:
        topo = netns.site_to_site(lab, routed=routed)
        server = topo.net_b.ns.popen("iperf3", "-s", "-B", topo.net_b.v4, "-p", str(IPERF_PORT),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        with start(topo, Path(tmp)) as gateways:
            log(f"  {scenario}: up in {time.monotonic() - t0:.1f} s")
            if not netns.wait_until(lambda: _listening(topo), 5):
                raise RuntimeError("iperf3 server did not start")
            if netns.ping(topo.net_a.ns, topo.net_b.v4, count=2, timeout=3) == 0:
                raise RuntimeError(f"{scenario}: netA cannot reach netB")
            pids = gateways.cpu_pids()
            mtu = path_mtu(topo)
            runs: list[Callable[[], Row]] = [
                functools.partial(measure_tcp, topo, scenario, seconds, pids)]
            runs += [functools.partial(measure_udp, topo, scenario, seconds, p, pids, mtu)
                     for p in payloads]
            for measure in runs:
                row = measure()
                row.workers = workers
                rows.append(row)
                log("  " + _brief(row))
        server.terminate()
    return rows


def _listening(topo: Any) -> bool:
    out: bytes = topo.net_b.ns.run("ss", "-ltnH").stdout
    return f":{IPERF_PORT} ".encode() in out


def measure_baseline(seconds: float) -> Row:
    """(c): TPACKET_V3 ring + AES-GCM-128 decrypt of 1400-byte packets, one process."""
    netns, _ = _harness()
    from ipsecd.nft import EspDropTable
    from workers.bench_plumbing import PACKET, _esp_frame, drain_cycles

    row = Row("baseline", "ring+gcm", payload=PACKET, workers=1)
    with netns.Lab("-bdpc") as lab:
        h = netns.host_to_host(lab)
        a, b = h.a.ns, h.b.ns
        EspDropTable("benchdp", netns=b.name).install()  # ESP at B: no ICMP back
        header = b.mac("eth0") + a.mac("eth0") + b"\x08\x00"
        frame = _esp_frame(h.a.v4, h.b.v4, 1)
        rate: float = a.call(drain_cycles, a, b, header, frame, seconds, "ring+gcm",
                             timeout=seconds + 30)
    row.rx_pps = rate
    row.seconds = seconds
    row.note = "receiver-bound drain: packets per CPU-second of one loop"
    return row


# --- (e) the same pair under a Prometheus scraping it every second (issue #5) ------------

PROMETHEUS = "/usr/bin/prometheus"
EXPORTER_PORT = 9765  # the documented default; each gateway has its own namespace
GOAL_SCRAPED_VS_UNSCRAPED = 0.98


def _exporters(topo: Any) -> dict[str, str]:
    """Where each gateway's exporter listens: gwA on its loopback (Prometheus runs in
    gwA's namespace, as in ``tests/test_prometheus.py``), gwB on its WAN address."""
    return {"gwA": f"127.0.0.1:{EXPORTER_PORT}", "gwB": f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}"}


@dataclass
class _Daemons:
    daemons: Mapping[str, Any]  # gateway -> daemon_harness.Daemon

    def cpu_pids(self) -> Mapping[str, Sequence[int]]:
        return {gw: d.pids() for gw, d in self.daemons.items()}


@contextlib.contextmanager
def exporter_pair(starter: IpsecdStarter, topo: Any, workdir: Path, workers: int,
                  listen: Mapping[str, str]) -> Iterator[Gateways]:
    """The ``--ipsecd`` pair with each gateway's exporter on ``listen[gateway]``.

    A hook that takes ``metrics=`` (gateway -> ``HOST:PORT``) is called with it.
    Otherwise the hook's module must offer the :mod:`daemon_harness` functions
    its ``bench_pair`` is made of (``start``, ``tunnel_script``, ``wait_ready``),
    and the pair is started the same way with ``metrics=`` given to ``start``.
    """
    if "metrics" in inspect.signature(starter).parameters:
        with starter(topo, workdir, workers, metrics=listen) as gateways:  # type: ignore[call-arg]
            yield gateways
        return
    module = sys.modules.get(getattr(starter, "__module__", ""))
    start, script, wait_ready = (getattr(module, n, None)
                                 for n in ("start", "tunnel_script", "wait_ready"))
    if start is None or script is None or wait_ready is None:
        raise RuntimeError(f"{starter!r} cannot turn the exporters on: it takes no metrics= "
                           "and its module has no daemon_harness-like start/tunnel_script")
    daemons: dict[str, Any] = {}
    try:
        for gw, side, ns in (("gwA", "a", topo.gw_a_wan.ns), ("gwB", "b", topo.gw_b_wan.ns)):
            daemons[gw] = start(ns, workdir, f"bench-{gw.lower()}", outside=["wan0"],
                                workers=workers, script=script(topo, side), wait=False,
                                metrics=listen[gw])
        wait_ready(*daemons.values())
        time.sleep(0.2)
        yield _Daemons(daemons)
    finally:
        for d in daemons.values():
            d.stop()


class Prometheus:
    """``/usr/bin/prometheus`` in namespace ``ns`` with a config, TSDB and log under
    ``workdir``, listening on a free loopback port; scraping switched on and off by
    rewriting its config and ``POST /-/reload`` (``--web.enable-lifecycle``), so the
    "off" runs see the same, idle, server."""

    def __init__(self, ns: Any, workdir: Path, targets: Mapping[str, str]) -> None:
        self.ns, self.dir, self.targets = ns, workdir, dict(targets)
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self._write(scrape=False)
        with ns.enter(), socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self.proc = ns.popen(PROMETHEUS, f"--config.file={self.config}",
                             f"--storage.tsdb.path={workdir / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                             "--log.level=warn",
                             stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        try:
            self._wait(lambda: self._get("/-/ready", raw=True) is not None, 20, "become ready")
        except BaseException:
            self.stop()
            raise

    def _write(self, *, scrape: bool) -> None:
        text = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        if scrape:
            text += ("scrape_configs:\n  - job_name: ipsecd\n    static_configs:\n"
                     + "".join(f"      - targets: [{json.dumps(t)}]\n"
                               f"        labels: {{gateway: {gw}}}\n"
                               for gw, t in self.targets.items()))
        self.config.write_text(text)

    def _open(self, path: str, *, post: bool = False) -> bytes:
        req = urllib.request.Request(self.url + path, method="POST" if post else "GET")
        with self.ns.enter():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(req, timeout=10) as resp:
                body: bytes = resp.read()
                return body

    def _get(self, path: str, *, raw: bool = False, **params: str) -> Any:
        """The ``data`` of an API answer (or the body with ``raw``); None if unreachable."""
        if params:
            path += "?" + urllib.parse.urlencode(params)
        try:
            body = self._open(path)
        except OSError:
            return None
        if raw:
            return body
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {answer}")
        return answer["data"]

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not {what} in {timeout:g} s: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def scrape(self, on: bool) -> None:
        """Switch scraping on (returns once every target was scraped and is up) or off
        (returns once no target is left)."""
        self._write(scrape=on)
        self._open("/-/reload", post=True)

        def settled() -> bool:
            data = self._get("/api/v1/targets", state="active")
            active = data.get("activeTargets", []) if data else None
            if active is None:
                return False
            if not on:
                return not active
            return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

        self._wait(settled, 10, "scrape every exporter" if on else "stop scraping")

    def samples(self, metric: str, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        """Per gateway, the raw samples (time, value) of ``metric`` in ``(start, end]``."""
        span = max(1, round((end - start) * 1000))
        data = self._get("/api/v1/query", query=f'{metric}{{job="ipsecd"}}[{span}ms]',
                         time=f"{end:.3f}")
        out: dict[str, list[tuple[float, float]]] = {gw: [] for gw in self.targets}
        for series in (data or {}).get("result", []):
            gw = series["metric"].get("gateway", "?")
            out[gw] = [(float(t), float(v)) for t, v in series.get("values", [])]
        return out

    def cpu_seconds(self) -> float:
        _, sw = _harness()
        cpu: float = sw.process_cpu_seconds(self.proc.pid)
        return cpu

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class ScrapeRun:
    """One TCP run of the scraping comparison."""

    scraping: bool
    row: Row
    start: float  # wall clock (Prometheus's timestamps) around the whole iperf3 run
    end: float
    prom_cpu_s: float = 0.0
    retransmits: int | None = None
    scrapes: dict[str, int] | None = None
    """Per gateway: scrapes Prometheus stored in [start, end] (``scrape_duration_seconds``
    samples); for the "off" runs too, where it must be 0."""
    scrape_s: dict[str, list[float]] | None = None  # the scrapes' durations
    scrape_at: dict[str, list[float]] | None = None  # their timestamps
    series: dict[str, float] | None = None  # samples per scrape (scrape_samples_scraped)
    up: dict[str, float] | None = None  # lowest ``up`` in the window

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["row"] = self.row.as_dict()
        return out


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _abba(rounds: int) -> list[bool]:
    """off on on off off on on off ...: a linear drift cancels out of each pair of rounds."""
    out: list[bool] = []
    for i in range(rounds):
        out += [False, True] if i % 2 == 0 else [True, False]
    return out


def run_scrape(starter: IpsecdStarter, *, seconds: float = 4.0, rounds: int = 4,
               workers: int = 1, log: Callable[[str], None] = print) -> list[ScrapeRun]:
    """(e): one fresh topology and ipsecd pair with exporters, a Prometheus in gwA's
    namespace, and ``2 * rounds`` TCP runs of ``seconds`` (+1 s slow start omitted),
    scraping off and on in ABBA order, after one unmeasured warm-up run."""
    if not Path(PROMETHEUS).exists():
        raise RuntimeError(f"{PROMETHEUS} is missing: install Debian's prometheus package")
    netns, _ = _harness()
    scenario = f"ipsecd-{workers}w"
    runs: list[ScrapeRun] = []
    with tempfile.TemporaryDirectory(prefix="bdp-scrape-") as tmp, netns.Lab("-bdps") as lab:
        topo = netns.site_to_site(lab, routed=False)
        server = topo.net_b.ns.popen("iperf3", "-s", "-B", topo.net_b.v4, "-p", str(IPERF_PORT),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listen = _exporters(topo)
        t0 = time.monotonic()
        with exporter_pair(starter, topo, Path(tmp), workers, listen) as gateways:
            log(f"  {scenario} with exporters on {', '.join(listen.values())}: "
                f"up in {time.monotonic() - t0:.1f} s")
            if not netns.wait_until(lambda: _listening(topo), 5):
                raise RuntimeError("iperf3 server did not start")
            if netns.ping(topo.net_a.ns, topo.net_b.v4, count=2, timeout=3) == 0:
                raise RuntimeError(f"{scenario}: netA cannot reach netB")
            pids = gateways.cpu_pids()
            (Path(tmp) / "prometheus").mkdir()
            prom = Prometheus(topo.gw_a_wan.ns, Path(tmp) / "prometheus", listen)
            try:
                log(f"  prometheus {prom.url} in gwA's namespace (pid {prom.proc.pid})")
                iperf3(topo, 2, "-O", "1")  # warm-up, not counted
                scraping: bool | None = None
                for on in _abba(rounds):
                    if on != scraping:
                        prom.scrape(on)
                        scraping = on
                        time.sleep(0.3)
                    cpu0, wall0 = prom.cpu_seconds(), time.time()
                    row = measure_tcp(topo, scenario, seconds, pids)
                    run = ScrapeRun(on, row, wall0, time.time(), prom.cpu_seconds() - cpu0)
                    row.workers = workers
                    retr = re.match(r"(\d+) retransmits", row.note)
                    run.retransmits = int(retr.group(1)) if retr else None
                    runs.append(run)
                    log(f"  {len(runs):>2} scraping {'on ' if on else 'off'} {_brief(row)}, "
                        f"prometheus {run.prom_cpu_s:.2f} CPU-s")
                time.sleep(1.2)  # the last scrapes stored
                for run in runs:
                    _scrape_figures(prom, run)
            finally:
                prom.stop()
        server.terminate()
    return runs


def _scrape_figures(prom: Prometheus, run: ScrapeRun) -> None:
    durations = prom.samples("scrape_duration_seconds", run.start, run.end)
    run.scrapes = {gw: len(s) for gw, s in durations.items()}
    run.scrape_s = {gw: [v for _, v in s] for gw, s in durations.items()}
    run.scrape_at = {gw: [t for t, _ in s] for gw, s in durations.items()}
    series = prom.samples("scrape_samples_scraped", run.start, run.end)
    run.series = {gw: max((v for _, v in s), default=0.0) for gw, s in series.items()}
    up = prom.samples("up", run.start, run.end)
    run.up = {gw: min((v for _, v in s), default=0.0) for gw, s in up.items() if s}


def scrape_report(runs: Sequence[ScrapeRun]) -> str:
    """The runs, the medians, the ratio and the goal; what Prometheus really did."""
    lines = [f"{'run':>3} {'scraping':<8} {'Gbit/s':>7} {'retr':>5} {'CPU-s gwA/gwB':>13} "
             f"{'prom CPU-s':>10} {'scrapes gwA/gwB':>15} {'window s':>8}"]
    for i, r in enumerate(runs, 1):
        scrapes = ("/".join(str(r.scrapes.get(gw, 0)) for gw in GATEWAYS)
                   if r.scrapes is not None else "-")
        retr = _fmt(r.retransmits, "d")
        lines.append(f"{i:>3} {'on' if r.scraping else 'off':<8} {_fmt(r.row.gbit_s, '.3f'):>7} "
                     f"{retr:>5} {_cpu_pair(r.row):>13} {r.prom_cpu_s:>10.2f} {scrapes:>15} "
                     f"{r.end - r.start:>8.1f}")
    on = [r for r in runs if r.scraping]
    off = [r for r in runs if not r.scraping]
    m_on = _median([r.row.gbit_s for r in on if r.row.gbit_s is not None])
    m_off = _median([r.row.gbit_s for r in off if r.row.gbit_s is not None])
    lines.append("")
    if m_on is None or m_off is None or not m_off:
        lines.append("goal (issue #5): no result (runs missing)")
        return "\n".join(lines)
    ratio = m_on / m_off

    def spread(rs: Sequence[ScrapeRun]) -> str:
        vals = [r.row.gbit_s for r in rs if r.row.gbit_s is not None]
        return f"{min(vals):.3f}-{max(vals):.3f}"

    per_cpu_on = _median([p for r in on if (p := r.row.per_cpu_s()) is not None])
    per_cpu_off = _median([p for r in off if (p := r.row.per_cpu_s()) is not None])
    lines += [
        f"median TCP: scraping off {m_off:.3f} Gbit/s ({len(off)} runs, {spread(off)}), "
        f"on {m_on:.3f} Gbit/s ({len(on)} runs, {spread(on)})",
        f"goal (issue #5): scraped / unscraped {ratio:.3f} (goal {GOAL_SCRAPED_VS_UNSCRAPED:g}): "
        f"{_verdict(ratio >= GOAL_SCRAPED_VS_UNSCRAPED)}"]
    pairs = [a.row.gbit_s / b.row.gbit_s if a.scraping else b.row.gbit_s / a.row.gbit_s
             for a, b in zip(runs[::2], runs[1::2], strict=False)
             if a.scraping != b.scraping and a.row.gbit_s and b.row.gbit_s]
    if pairs:
        lines.append("  on / off within each round (the noise): "
                     + " ".join(f"{p:.3f}" for p in pairs)
                     + f", median {statistics.median(pairs):.3f}")
        margin = 1 - GOAL_SCRAPED_VS_UNSCRAPED
        if len(pairs) > 1 and max(pairs) - min(pairs) > 2 * margin:
            lines.append(f"  (the rounds disagree by {max(pairs) - min(pairs):.1%}, more than "
                         f"twice the {margin:.0%} margin: the verdict is within this run's "
                         "noise; more --rounds or --seconds narrow it)")
    if per_cpu_on and per_cpu_off:
        lines.append(f"  bits per gateway CPU-second, on / off: {per_cpu_on / per_cpu_off:.3f}")
    # what Prometheus did: honest figures, from its own TSDB
    for gw in GATEWAYS:
        got = sum((r.scrapes or {}).get(gw, 0) for r in on)
        window = sum(r.end - r.start for r in on)
        durations = [d for r in on for d in (r.scrape_s or {}).get(gw, [])]
        gaps = [b - a for r in on for a, b in itertools.pairwise((r.scrape_at or {}).get(gw, []))]
        ups = [(r.up or {}).get(gw, 0.0) for r in on]
        samples = max(((r.series or {}).get(gw, 0.0) for r in on), default=0.0)
        line = (f"  {gw} exporter {_exporter_label(gw)}: {got} scrapes in {window:.1f} s of "
                f"scraped traffic ({got / window if window else 0:.2f}/s")
        gap = _median(gaps)
        line += f", median interval {gap:.3f} s)" if gap is not None else ")"
        med = _median(durations)
        if med is not None:
            line += (f"; scrape_duration_seconds median {med * 1e3:.1f} ms, "
                     f"max {max(durations) * 1e3:.1f} ms; {samples:.0f} samples per scrape")
        lines.append(line)
        if ups and min(ups) < 1:
            lines.append(f"  {gw} was DOWN or unscraped during an 'on' run (up = 0)")
    stray = sum(sum((r.scrapes or {}).values()) for r in off)
    lines.append(f"  scrapes stored during the 'off' runs: {stray}"
                 + (" (expected 0)" if stray else ""))
    prom_on = _median([r.prom_cpu_s / (r.end - r.start) for r in on])
    prom_off = _median([r.prom_cpu_s / (r.end - r.start) for r in off])
    lines.append(f"  prometheus itself (same VM, gwA's namespace): {_fmt(prom_on, '.3f')} CPU-s/s "
                 f"scraping, {_fmt(prom_off, '.3f')} idle")
    return "\n".join(lines)


def _exporter_label(gw: str) -> str:
    return "loopback" if gw == "gwA" else "WAN address"


# --- report ------------------------------------------------------------------------------


def _rate(row: Row) -> str:
    if row.rx_pps is not None:
        return f"{row.rx_pps / 1e3:.1f} kpkt/s"
    if row.gbit_s is not None:
        return f"{row.gbit_s:.2f} Gbit/s"
    return "-"


def _per_cpu(row: Row, gateway: str | None) -> str:
    value = row.per_cpu_s(gateway)
    if value is None:
        return "-"
    return f"{value / 1e3:.1f}" if row.rx_pps is not None else f"{value / 1e9:.2f}"


def _cpu_pair(row: Row) -> str:
    if not row.gw_cpu_s:
        return "n/a"
    return "/".join(_fmt(row.gw_cpu_s.get(gw), ".2f") for gw in GATEWAYS)


def _per_cpu_pair(row: Row) -> str:
    if not row.gw_cpu_s:
        return "n/a"
    unit = "kpkt" if row.rx_pps is not None else "Gbit"
    return "/".join(_per_cpu(row, gw) for gw in GATEWAYS) + " " + unit


def _brief(row: Row) -> str:
    extra = ""
    if row.loss_pct is not None and row.tx_pps is not None:
        extra = f" (offered {row.tx_pps / 1e3:.1f} k/s, loss {row.loss_pct:.1f} %)"
    if row.gw_cpu_s:
        extra += f", CPU-s gwA/gwB {_cpu_pair(row)}"
    return f"{row.scenario:<12} {row.test:<8} {_rate(row)}{extra}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _main_value(row: Row) -> float | None:
    return row.gbit_s if row.test == "tcp" else row.rx_pps


def _large(rows: Sequence[Row], scenario: str) -> Row | None:
    """The scenario's UDP row with the largest payload (>= 1000 bytes)."""
    big = [r for r in rows if r.scenario == scenario and r.test.startswith("udp")
           and (r.payload or 0) >= 1000 and r.rx_pps is not None]
    return max(big, key=lambda r: r.payload or 0) if big else None


def report(rows: Sequence[Row], missing: Sequence[tuple[str, str]] = ()) -> str:
    """The table, the ratios and the goals, as text."""
    by = {(r.scenario, r.test): r for r in rows}
    baseline = by.get(("baseline", "ring+gcm"))
    lines = [
        f"{'scenario':<12} {'test':<8} {'bytes':>5} {'rate':>14} {'offered':>8} {'loss%':>5} "
        f"{'CPU-s gwA/gwB':>13} {'busy/sirq':>9} {'per CPU-s gwA/gwB':>17} {'vs sS':>6} "
        f"{'vs base':>7}  note"]
    for r in rows:
        ss = by.get(("strongswan", r.test))
        vs_ss = "-"
        if ss is not None and r.scenario not in ("strongswan", "plain"):
            mine, theirs = _main_value(r), _main_value(ss)
            if mine is not None and theirs:
                vs_ss = f"{mine / theirs:.2f}x"
        vs_base = "-"
        if (baseline is not None and baseline.rx_pps and r.rx_pps is not None
                and r.scenario not in ("plain", "baseline") and (r.payload or 0) >= 1000):
            vs_base = f"{r.rx_pps / (r.workers or 1) / baseline.rx_pps:.3f}"
        cpu, per = _cpu_pair(r), _per_cpu_pair(r)
        busy = (f"{r.busy_cpu_s:.1f}/{r.softirq_s:.1f}"
                if r.busy_cpu_s is not None and r.softirq_s is not None else "-")
        offered = "-" if r.tx_pps is None else f"{r.tx_pps / 1e3:.1f}k"
        lines.append(
            f"{r.scenario:<12} {r.test:<8} {_fmt(r.payload, 'd'):>5} {_rate(r):>14} "
            f"{offered:>8} {_fmt(r.loss_pct, '.1f'):>5} {cpu:>13} {busy:>9} {per:>17} "
            f"{vs_ss:>6} {vs_base:>7}  {r.note}")
    for name, why in missing:
        lines.append(f"{name:<12} {why}")
    lines += ["", *_goals(rows, by, baseline)]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _goals(rows: Sequence[Row], by: dict[tuple[str, str], Row],
           baseline: Row | None) -> list[str]:
    out = ["goals (datapath issue):"]
    ss_tcp = by.get(("strongswan", "tcp"))
    base = baseline.rx_pps if baseline is not None else None
    need_tcp = (f"{GOAL_TCP_VS_STRONGSWAN * ss_tcp.gbit_s:.2f} Gbit/s"
                if ss_tcp is not None and ss_tcp.gbit_s else "n/a (no strongSwan row)")
    need_pps = (f"{GOAL_PPS_PER_WORKER_VS_BASELINE * base / 1e3:.0f} kpkt/s"
                if base else "n/a (no baseline)")
    ipsecd = sorted({r.scenario for r in rows if r.scenario.startswith("ipsecd")})
    if not ipsecd:
        out += [f"  TCP >= {GOAL_TCP_VS_STRONGSWAN:g} x strongSwan = {need_tcp}: "
                f"{NOT_YET}",
                f"  UDP 1400 B per worker >= {GOAL_PPS_PER_WORKER_VS_BASELINE:.0%} of the "
                f"baseline = {need_pps}: {NOT_YET}",
                f"  packets per worker CPU-s, 2 vs 1 worker >= {GOAL_SCALING_2_VS_1:g}: "
                f"{NOT_YET}"]
        ss = _large(rows, "strongswan")
        if ss is not None and ss.rx_pps is not None and base:
            per_b = ss.per_cpu_s("gwB")
            out.append(f"  (strongSwan for scale: {ss.rx_pps / base:.3f} of the baseline "
                       f"per gateway, {_fmt(None if per_b is None else per_b / base, '.3f')} "
                       "per gwB CPU-second)")
        return out
    for s in ipsecd:
        tcp = by.get((s, "tcp"))
        if tcp is not None and tcp.gbit_s is not None and ss_tcp is not None and ss_tcp.gbit_s:
            ratio = tcp.gbit_s / ss_tcp.gbit_s
            out.append(f"  {s}: TCP {ratio:.2f} x strongSwan (goal {GOAL_TCP_VS_STRONGSWAN:g}): "
                       f"{_verdict(ratio >= GOAL_TCP_VS_STRONGSWAN)}")
        big = _large(rows, s)
        if big is not None and big.rx_pps is not None and base:
            ratio = big.rx_pps / (big.workers or 1) / base
            line = (f"  {s}: UDP {big.payload} B {ratio:.3f} of the baseline per worker "
                    f"(goal {GOAL_PPS_PER_WORKER_VS_BASELINE:g}): "
                    f"{_verdict(ratio >= GOAL_PPS_PER_WORKER_VS_BASELINE)}")
            if (big.loss_pct or 0) < 1.0:
                line += " -- sender-bound (no loss): see the per CPU-second figure"
            per_b = big.per_cpu_s("gwB")
            if per_b is not None:
                line += f"; decrypting gwB: {per_b / base:.3f} of the baseline per CPU-second"
            out.append(line)
    one = [r for r in rows if r.scenario.startswith("ipsecd") and r.workers == 1]
    two = [r for r in rows if r.scenario.startswith("ipsecd") and r.workers == 2]
    for r1 in one:
        r2 = next((r for r in two if r.test == r1.test), None)
        p1, p2 = r1.per_cpu_s(), (r2.per_cpu_s() if r2 is not None else None)
        if r1.test.startswith("udp") and p1 and p2:
            ratio = p2 / p1
            out.append(f"  {r1.test}: packets per worker CPU-s, 2 vs 1 worker {ratio:.3f} "
                       f"(goal {GOAL_SCALING_2_VS_1:g}): {_verdict(ratio >= GOAL_SCALING_2_VS_1)}")
    return out


# --- driver ------------------------------------------------------------------------------


def run(*, seconds: float = 4.0, payloads: Sequence[int] = (64, 1400),
        workers: Sequence[int] = (1, 2), ipsecd: IpsecdStarter | None = None,
        scenarios: Sequence[str] = ("plain", "strongswan", "baseline", "ipsecd"),
        log: Callable[[str], None] = print) -> tuple[list[Row], list[tuple[str, str]]]:
    """All scenarios: (rows, [(scenario, why it has no rows)]).

    A scenario that fails (charon does not start, no connectivity) is logged
    with its error and listed as missing; the others still run.
    """
    rows: list[Row] = []
    missing: list[tuple[str, str]] = []

    def attempt(name: str, measure: Callable[[], list[Row]]) -> None:
        try:
            rows.extend(measure())
        except Exception as exc:  # one broken scenario must not hide the others
            log(f"  {name} FAILED: {exc}")
            missing.append((name, "failed: " + (str(exc).splitlines() or [type(exc).__name__])[0]))

    if "plain" in scenarios:
        log("(a) plain routing")
        attempt("plain", functools.partial(run_scenario, "plain", plain_routing, routed=True,
                                           seconds=seconds, payloads=payloads, log=log))
    if "strongswan" in scenarios:
        log("(b) strongSwan kernel-libipsec pair")
        attempt("strongswan", functools.partial(
            run_scenario, "strongswan", strongswan_pair, routed=False, seconds=seconds,
            payloads=payloads, log=log))
    if "baseline" in scenarios:
        log("(c) baseline: TPACKET_V3 ring + AES-GCM-128 decrypt, one process")
        attempt("baseline", lambda: [measure_baseline(seconds)])
        if rows and rows[-1].scenario == "baseline":
            log("  " + _brief(rows[-1]))
    if "ipsecd" in scenarios:
        for n in workers:
            name = f"ipsecd-{n}w"
            if ipsecd is None:
                log(f"(d) {name}: {NOT_YET}")
                missing.append((name, NOT_YET))
                continue
            log(f"(d) ipsecd gateways, {n} worker(s) each")
            start: GatewayStarter = functools.partial(_with_workers, ipsecd, n)
            attempt(name, functools.partial(run_scenario, name, start, routed=False,
                                            seconds=seconds, payloads=payloads, workers=n,
                                            log=log))
    return rows, missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipsecd.bench_datapath",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="length of each measurement (1-15, default 4)")
    parser.add_argument("--payloads", default="64,1400",
                        help="UDP payload sizes, comma-separated (default 64,1400)")
    parser.add_argument("--workers", default="1,2",
                        help="ipsecd worker counts per gateway (default 1,2)")
    parser.add_argument("--ipsecd", metavar="MODULE:CALLABLE",
                        help="starter of an ipsecd gateway pair (see IpsecdStarter)")
    parser.add_argument("--only", default="plain,strongswan,baseline,ipsecd",
                        help="scenarios to run, comma-separated")
    parser.add_argument("--scrape", action="store_true",
                        help="instead of the scenarios: TCP through the --ipsecd pair with and "
                             "without a Prometheus scraping both exporters every second "
                             "(first of --workers; --seconds per run)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="with --scrape: off/on pairs, in ABBA order (2-10, default 4)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = min(max(args.seconds, 1.0), 15.0)
    if args.scrape:
        if not args.ipsecd:
            parser.error("--scrape needs --ipsecd MODULE:CALLABLE")
        return _main_scrape(load_starter(args.ipsecd), seconds=seconds,
                            rounds=min(max(args.rounds, 2), 10),
                            workers=int(args.workers.split(",")[0]), as_json=args.json)
    payloads = [int(p) for p in args.payloads.split(",") if p]
    if any(not 16 <= p <= 1472 for p in payloads):
        parser.error("payloads must be 16..1472 bytes")
    starter = load_starter(args.ipsecd) if args.ipsecd else None
    started = time.monotonic()
    print(f"datapath benchmark: {seconds:g} s per measurement, UDP payloads {payloads}",
          flush=True)
    rows, missing = run(seconds=seconds, payloads=payloads,
                        workers=[int(w) for w in args.workers.split(",") if w],
                        ipsecd=starter, scenarios=args.only.split(","),
                        log=lambda s: print(s, flush=True))
    print()
    print(report(rows, missing))
    print(f"(total {time.monotonic() - started:.0f} s; 2 shared vCPUs: expect 10-20 % variance; "
          "rates are received at netB; 'per CPU-s' = carried / CPU-s of that gateway's processes)")
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows],
                          "missing": dict(missing)}, indent=1))
    return 0


def _main_scrape(starter: IpsecdStarter, *, seconds: float, rounds: int, workers: int,
                 as_json: bool) -> int:
    started = time.monotonic()
    print(f"datapath under scraping: {2 * rounds} TCP runs of {seconds:g} s (+1 s omitted), "
          f"Prometheus scrape_interval 1 s off/on in ABBA order, {workers} worker(s) per "
          "gateway", flush=True)
    try:
        runs = run_scrape(starter, seconds=seconds, rounds=rounds, workers=workers,
                          log=lambda s: print(s, flush=True))
    except Exception as exc:
        print(f"  scrape scenario FAILED: {exc}", flush=True)
        return 1
    print()
    print(scrape_report(runs))
    print(f"(total {time.monotonic() - started:.0f} s; TCP goodput at netB; both gateways, "
          "iperf3 and Prometheus share this VM's CPUs)")
    if as_json:
        print(json.dumps({"scrape_runs": [r.as_dict() for r in runs]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
