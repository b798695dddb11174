"""A real Prometheus scrapes two real ``ipsecd run`` gateways carrying known traffic.

``netA ── gwA ══ wan ══ gwB ── netB`` (netns.site_to_site), the HOWTO's tunnel
mode for IPv4 and IPv6 sites.  ``/usr/bin/prometheus`` runs inside gwA's
namespace (temporary TSDB, a free port, scrape and evaluation interval 1 s)
with the shipped alert rules (``deploy/prometheus/ipsecd-rules.yml``) and
scrapes gwA's exporter on its loopback and gwB's on its WAN address.

* every PromQL expression of the Grafana dashboard and of the alert rules
  is evaluated through ``/api/v1/query`` and must succeed, and the traffic
  panels must show the traffic sent: the totals exactly, the rate panels
  (``rate(...[$__rate_interval])`` with the interval set to a window
  covering the whole run, times that window, evaluated at the instant of
  the target's last scrape so that Prometheus extrapolates nothing) within
  1 %;
* a connection's counter keeps rising, never resets, across two manual
  rekeys (``ipsecd setkey``: delete the old SAs, add new SPIs) while UDP
  flows, seen both by polling the exporter and by Prometheus (``resets()``
  is 0) - and the per-SA series (``[metrics] sa_labels``) show that three
  different SPIs carried the traffic.

A second pair of gateways negotiates with IKEv2 (certificates from a
throw-away CA; gwA starts the connection, ``start_action = start``) under a
second Prometheus:

* the IKE series are what the two daemons did: one established IKE SA and
  one successful handshake each, none failed, a handshake duration in the
  histogram, the connection's IKE and Child SA gauges, the certificates'
  expiry and the child's IKE lifetime; the dashboard's IKE panels and the
  alert rules evaluate on them, and no alert fires;
* the child's traffic counters carry the configuration's names
  (``connection="s2s", child="net"``) and keep counting across a Child SA
  rekey (``ipsecd rekey``), which ``ipsecd_ike_rekeys_total{kind="child"}``
  counts;
* once the operator terminates the connection, Prometheus has
  ``IpsecdIkeTunnelDown`` pending for it and not the manual-key
  ``IpsecdTunnelDown`` (whose child series went to 0 too).

If Prometheus cannot start the test fails with its log; everything (the
server, its TSDB, the daemons, the namespaces) goes with the module.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import KEY_AB, KEY_BA, ROOT, Daemon, start, tunnel_script, wait_ready
from ike_harness import Pki, established, ipsecd_children, ipsecd_ike
from netns import Lab, Netns, SiteToSite, needs_root, remove_stale, site_to_site, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.netns, needs_root()]

PROMETHEUS = "/usr/bin/prometheus"
RULES = ROOT / "deploy" / "prometheus" / "ipsecd-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ipsecd-dashboard.json"
EXPORTER_PORT = 9765  # the documented default; each gateway has its own namespace
UDP_PORT = 7000
WINDOW = "5m"  # stands in for Grafana's $__rate_interval and $__range: longer than the run
WINDOW_SECONDS = 300


@dataclass
class Setup:
    topo: SiteToSite
    a: Daemon
    b: Daemon
    prom: str  # base URL, reachable from gwA's namespace
    ns: Netns  # where Prometheus runs

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prom}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self.ns.enter():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=10) as resp:
                body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("/api/v1/query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def metrics_page(self, d: Daemon, host: str) -> str:
        with d.ns.enter():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{host}:{EXPORTER_PORT}/metrics", timeout=5) as resp:
                return str(resp.read().decode())


def _free_port(ns: Netns) -> int:
    with ns.enter(), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_prometheus(ns: Netns, workdir: Path, targets: list[str]) -> str:
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: ipsecd\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n")
    port = _free_port(ns)
    log = workdir / "prometheus.log"
    proc = ns.popen(PROMETHEUS, f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                    stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited ({proc.returncode}):\n{log.read_text()}",
                        pytrace=False)
        try:
            with ns.enter():
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(f"{url}/-/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
        except OSError:
            return False

    if not wait_until(ready, 20, 0.1):
        pytest.fail(f"prometheus did not become ready in 20 s:\n{log.read_text()}", pytrace=False)
    return url


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: install Debian's prometheus package "
                    "(deploy/scripts/install-deps.sh)", pytrace=False)
    remove_stale()
    workdir = tmp_path_factory.mktemp("prometheus")
    with Lab("pm") as lab:
        topo = site_to_site(lab)
        a = start(topo.gw_a_wan.ns, workdir, "pm-gwa", outside=["wan0"], workers=2,
                  script=tunnel_script(topo, "a"), wait=False,
                  metrics=f"127.0.0.1:{EXPORTER_PORT}", extra={"metrics": {"sa_labels": True}})
        b = start(topo.gw_b_wan.ns, workdir, "pm-gwb", outside=["wan0"], workers=2,
                  script=tunnel_script(topo, "b"), wait=False,
                  metrics=f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}")
        try:
            wait_ready(a, b)
            prom = _start_prometheus(
                topo.gw_a_wan.ns, workdir,
                [f"127.0.0.1:{EXPORTER_PORT}", f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}"])
            s = Setup(topo, a, b, prom, topo.gw_a_wan.ns)
            # Both targets scraped, with the (zero) counters of both tunnels, before traffic.
            assert wait_until(
                lambda: len(s.query('up{job="ipsecd"} == 1')) == 2
                and len(s.query('ipsecd_child_packets_total')) == 8, 15, 0.2), \
                s.query("up")
            yield s
        finally:
            status = [a.stop(), b.stop()]
        assert status == [0, 0], a.log_text() + b.log_text()


# --- traffic -------------------------------------------------------------------------------


def _send_udp(dst: str, count: int, size: int, interval: float) -> int:
    """In netA: ``count`` datagrams of ``size`` payload bytes, one every ``interval`` s."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        payload = bytes(size)
        nxt = time.monotonic()
        for _ in range(count):
            s.sendto(payload, (dst, UDP_PORT))
            sent += 1
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return sent


def _receive_udp(count: int, limit: float) -> int:
    """In netB: datagrams received on UDP_PORT (both families) until ``count`` or ``limit`` s."""
    import select

    socks = []
    for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_addr, UDP_PORT))
        socks.append(s)
    got = 0
    deadline = time.monotonic() + limit
    try:
        while got < count and time.monotonic() < deadline:
            for s in select.select(socks, [], [], 0.1)[0]:
                s.recv(65535)
                got += 1
    finally:
        for s in socks:
            s.close()
    return got


def _panel_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana variables substituted."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            expr = expr.replace("$__rate_interval", WINDOW).replace("$__range", WINDOW)
            expr = re.sub(r"\$\{?instance\}?", ".*", expr)
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    """(alert name, expr) of the shipped rules (read as the text promtool also checks)."""
    out = []
    name = None
    for line in RULES.read_text().splitlines():
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            name = m.group(1)
        m = re.match(r"\s*expr: (.+)$", line)
        if m:
            assert name is not None
            out.append((name, m.group(1).strip()))
    return out


def _by(result: list[dict[str, Any]], **labels: str) -> float:
    rows = [r for r in result if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(rows) == 1, (labels, result)
    return float(rows[0]["value"][1])


def test_every_dashboard_and_alert_expression_against_real_prometheus(setup: Setup) -> None:
    topo = setup.topo
    n4, size4 = 300, 1000  # IPv4: 300 x (20 + 8 + 1000) inner bytes
    n6, size6 = 100, 500  # IPv6: 100 x (40 + 8 + 500)
    receiver = topo.net_b.ns.spawn(_receive_udp, n4 + n6, 20.0)
    time.sleep(0.2)
    assert topo.net_a.ns.call(_send_udp, topo.net_b.v4, n4, size4, 0.002) == n4
    assert topo.net_a.ns.call(_send_udp, topo.net_b.v6, n6, size6, 0.002) == n6
    assert receiver.result(25) == n4 + n6  # the tunnel carried all of it
    bytes4, bytes6 = n4 * (28 + size4), n6 * (48 + size6)
    ga4, gb4 = topo.gw_a_wan.v4, topo.gw_b_wan.v4
    ga6, gb6 = topo.gw_a_wan.v6, topo.gw_b_wan.v6
    # (instance, connection, direction) -> (packets, bytes) the counters must show.
    expected = {
        (f"127.0.0.1:{EXPORTER_PORT}", f"{ga4}-{gb4}", "out"): (n4, bytes4),
        (f"127.0.0.1:{EXPORTER_PORT}", f"{ga6}-{gb6}", "out"): (n6, bytes6),
        (f"{gb4}:{EXPORTER_PORT}", f"{gb4}-{ga4}", "in"): (n4, bytes4),
        (f"{gb4}:{EXPORTER_PORT}", f"{gb6}-{ga6}", "in"): (n6, bytes6),
    }
    # Wait until Prometheus has scraped the final values from both gateways.
    def scraped() -> bool:
        result = setup.query("sum by (instance, connection, direction) "
                             "(ipsecd_child_packets_total)")
        got = {(r["metric"]["instance"], r["metric"]["connection"], r["metric"]["direction"]):
               float(r["value"][1]) for r in result}
        return all(got.get(k) == v[0] for k, v in expected.items())

    assert wait_until(scraped, 10, 0.2), setup.query("ipsecd_child_packets_total")
    time.sleep(1.5)  # one more scrape and rule evaluation with the final values

    panels = _panel_exprs()
    assert len(panels) >= 15
    results = {}
    for _title, expr in panels:
        results[expr] = setup.query(expr)  # must parse and execute
    for _alert, expr in _rule_exprs():
        setup.query(expr)
    assert len(_rule_exprs()) >= 6

    # The dashboard's instance variable: label_values(ipsecd_build_info, instance).
    instances = {r["metric"]["instance"] for r in setup.query("ipsecd_build_info")}
    assert instances == {f"127.0.0.1:{EXPORTER_PORT}", f"{gb4}:{EXPORTER_PORT}"}

    def panel(title: str) -> list[dict[str, Any]]:
        exprs = [e for t, e in panels if t == title]
        assert len(exprs) == 1, title
        return results[exprs[0]]

    totals_b = panel("Traffic since start (bytes, across rekeys)")
    totals_p = panel("Traffic since start (packets, across rekeys)")
    assert panel("Throughput per connection") and panel("Packets per connection")
    for (instance, connection, direction), (packets, nbytes) in expected.items():
        key = {"instance": instance, "connection": connection, "direction": direction}
        assert _by(totals_p, **key) == packets, key
        assert _by(totals_b, **key) == nbytes, key
        # The rate panels at the instant of the target's last scrape, where Prometheus
        # extrapolates nothing (the series started at 0 before the traffic).
        last = setup.value(f'timestamp(ipsecd_build_info{{instance="{instance}"}})')
        for title, want in (("Throughput per connection", nbytes),
                            ("Packets per connection", packets)):
            expr = next(e for t, e in panels if t == title)
            got = _by(setup.query(expr, at=last), **key) * WINDOW_SECONDS
            assert abs(got - want) <= want * 0.01, (key, title, got, want)
    # Nothing went the other way on gwA, nothing else was dropped or down.
    assert _by(totals_p, instance=f"127.0.0.1:{EXPORTER_PORT}", connection=f"{ga4}-{gb4}",
               direction="in") == 0
    assert setup.value("sum(ipsecd_child_up == bool 0) or vector(0)") == 0
    assert panel("Tunnels up")[0]["value"][1] == "4"
    assert panel("Exporters up")[0]["value"][1] == "2"
    # Worker load: gwA's workers read at least every datagram from the TUN (and the
    # kernel's own multicast, which they let pass), gwB's at least every ESP packet.
    load = [e for t, e in panels if t == "Worker packets"]
    for expr, instance in zip(load, (f"{gb4}:{EXPORTER_PORT}", f"127.0.0.1:{EXPORTER_PORT}"),
                              strict=True):
        rows = [r for r in results[expr] if r["metric"]["instance"] == instance]
        assert len(rows) == 2 and sum(float(r["value"][1]) for r in rows) * WINDOW_SECONDS \
            >= (n4 + n6) * 0.99, (expr, rows)
    assert all(float(r["value"][1]) > 0 for r in panel("Worker load (busy fraction)"))

    # Prometheus itself loaded and evaluated every rule without error; none fires.
    groups = setup.api("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {name for name, _ in _rule_exprs()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                     for r in rules]
    assert setup.api("/api/v1/alerts")["alerts"] == []


def _rekey(topo: SiteToSite, spi_ab: int, spi_ba: int, old_ab: int, old_ba: int) -> str:
    ga, gb = topo.gw_a_wan.v4, topo.gw_b_wan.v4
    return (f"delete {ga} {gb} esp {old_ab:#x};\ndelete {gb} {ga} esp {old_ba:#x};\n"
            f"add {ga} {gb} esp {spi_ab:#x} -m tunnel -E aes-gcm-16 {KEY_AB};\n"
            f"add {gb} {ga} esp {spi_ba:#x} -m tunnel -E aes-gcm-16 {KEY_BA};\n")


def test_connection_counter_survives_two_rekeys(setup: Setup) -> None:
    topo, a, b = setup.topo, setup.a, setup.b
    conn = f"{topo.gw_a_wan.v4}-{topo.gw_b_wan.v4}"
    want_labels = {"connection": conn, "child": "reqid:0", "direction": "out"}

    def counters() -> tuple[float, float]:
        found = {}
        for family in text_string_to_metric_families(setup.metrics_page(a, "127.0.0.1")):
            for sample in family.samples:
                if sample.name in ("ipsecd_child_bytes_total", "ipsecd_child_packets_total") \
                        and sample.labels == want_labels:
                    found[sample.name] = sample.value
        return found["ipsecd_child_bytes_total"], found["ipsecd_child_packets_total"]

    def drops() -> int:
        return sum(int(v) for v in a.query()["drops"].values())

    bytes0, packets0 = counters()
    drops0 = drops()
    n, size, interval = 1200, 200, 0.004  # about 5 s of traffic
    sender = topo.net_a.ns.spawn(_send_udp, topo.net_b.v4, n, size, interval)
    samples = [bytes0]
    spis = [(0x2001, 0x2002), (0x3001, 0x3002), (0x4001, 0x4002)]
    t0 = time.monotonic()
    for step in range(2):
        while time.monotonic() < t0 + 1.2 * (step + 1):  # traffic on the old SAs first
            samples.append(counters()[0])
            time.sleep(0.05)
        (old_ab, old_ba), (new_ab, new_ba) = spis[step], spis[step + 1]
        for d in (b, a):  # the receiver first: fewer unknown_spi drops
            r = d.setkey(_rekey(topo, new_ab, new_ba, old_ab, old_ba))
            assert r.returncode == 0, r.stderr
            samples.append(counters()[0])
    installed = {sa["spi"] for sa in a.query()["sas"]}
    assert {0x4001, 0x4002} <= installed
    assert not installed & {0x2001, 0x2002, 0x3001, 0x3002}
    while sender.pid and time.monotonic() < t0 + 15:
        samples.append(counters()[0])
        time.sleep(0.05)
        if samples[-1] - bytes0 >= n * (28 + size) * 0.99:
            break
    assert sender.result(20) == n
    time.sleep(0.3)  # the workers flush their counters every batch / heartbeat
    final_bytes, final_packets = counters()
    samples.append(final_bytes)
    # Never down: monotonic through both rekeys.
    assert all(x <= y for x, y in itertools.pairwise(samples)), samples
    # Every datagram is accounted for: encrypted on one of the three SA pairs and
    # counted in the connection's counter, or dropped with a reason (a packet caught
    # between two SA table generations); the counter holds nearly all of them.
    counted = final_packets - packets0
    assert counted + (drops() - drops0) == n, (counted, drops() - drops0)
    assert counted >= n * 0.98
    assert final_bytes - bytes0 == counted * (28 + size)
    # The traffic did flow on the newest SAs: their own per-SA series is non-zero.
    newest = [sample for family in text_string_to_metric_families(
        setup.metrics_page(a, "127.0.0.1")) for sample in family.samples
        if sample.name == "ipsecd_sa_bytes_total" and sample.labels.get("spi") == "0x00004001"
        and sample.labels["direction"] == "out"]
    assert len(newest) == 1 and newest[0].value > 0, newest

    # Prometheus saw it the same way: no counter reset, and three SPIs over the run.
    time.sleep(1.5)
    sel = f'{{instance="127.0.0.1:{EXPORTER_PORT}",connection="{conn}",direction="out"}}'
    assert setup.value(f"resets(ipsecd_child_bytes_total{sel}[{WINDOW}])") == 0
    assert setup.value(f"resets(ipsecd_child_packets_total{sel}[{WINDOW}])") == 0
    assert setup.value(f"ipsecd_child_bytes_total{sel}") == final_bytes
    seen = setup.query(f"count by (spi) (count_over_time(ipsecd_sa_bytes_total{sel}[{WINDOW}]))")
    assert {r["metric"]["spi"] for r in seen} >= {"0x00002001", "0x00003001", "0x00004001"}
    assert setup.value(f'ipsecd_child_up{{instance="127.0.0.1:{EXPORTER_PORT}",'
                       f'connection="{conn}"}}') == 1


# --- IKEv2 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ike_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: install Debian's prometheus package "
                    "(deploy/scripts/install-deps.sh)", pytrace=False)
    remove_stale()
    workdir = tmp_path_factory.mktemp("prometheus-ike")
    pki = Pki("ecdsa")
    with Lab("pk") as lab:
        topo = site_to_site(lab, routed=False)
        # The responder first, so that gwA's first IKE_SA_INIT is answered (an unanswered
        # one would be counted as a failed handshake).
        b = ipsecd_ike(topo, workdir, side="b", name="pk-gwb", families=(0, 1), pki=pki,
                       metrics=f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}")
        a: Daemon | None = None
        try:
            wait_ready(b)
            a = ipsecd_ike(topo, workdir, side="a", name="pk-gwa", families=(0, 1), pki=pki,
                           start_action="start", metrics=f"127.0.0.1:{EXPORTER_PORT}")
            wait_ready(a)
            assert wait_until(lambda: established(a) and established(b), 15), \
                a.log_text() + b.log_text()
            prom = _start_prometheus(
                topo.gw_a_wan.ns, workdir,
                [f"127.0.0.1:{EXPORTER_PORT}", f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}"])
            yield Setup(topo, a, b, prom, topo.gw_a_wan.ns)
        finally:
            status = [d.stop() for d in (a, b) if d is not None]
        assert status == [0, 0], (a.log_text() if a else "") + b.log_text()


def _exporter_samples(setup: Setup, d: Daemon, host: str) -> dict[tuple[str, str], float]:
    """(name, sorted labels as text) -> value of the samples one exporter serves now."""
    return {(s.name, json.dumps(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(setup.metrics_page(d, host))
            for s in f.samples}


@pytest.mark.timeout(120)
def test_ike_metrics_against_real_prometheus(ike_setup: Setup) -> None:
    setup, topo, a, b = ike_setup, ike_setup.topo, ike_setup.a, ike_setup.b
    inst_a, inst_b = f"127.0.0.1:{EXPORTER_PORT}", f"{topo.gw_b_wan.v4}:{EXPORTER_PORT}"
    both = {inst_a, inst_b}

    def by_instance(expr: str) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in setup.query(expr)}

    # Both gateways scraped with their established IKE SA.
    assert wait_until(lambda: by_instance('ipsecd_ike_sas{state="established"}')
                      == dict.fromkeys(both, 1.0), 15, 0.2), setup.query("ipsecd_ike_sas")
    assert by_instance('ipsecd_ike_handshakes_total{result="success"}') == dict.fromkeys(both, 1)
    assert by_instance('ipsecd_ike_handshakes_total{result="failed"}') == dict.fromkeys(both, 0)
    assert by_instance("ipsecd_ike_handshake_duration_seconds_count") == dict.fromkeys(both, 1)
    for instance, seconds in by_instance("ipsecd_ike_handshake_duration_seconds_sum").items():
        assert 0 < seconds < 5, (instance, seconds)
    assert by_instance('ipsecd_ike_handshake_duration_seconds_bucket{le="+Inf"}') == \
        dict.fromkeys(both, 1)
    assert by_instance('ipsecd_connection_ike_sas{connection="s2s"}') == dict.fromkeys(both, 1)
    assert by_instance('ipsecd_connection_child_sas{connection="s2s"}') == dict.fromkeys(both, 1)
    assert by_instance('ipsecd_connection_autostart{connection="s2s"}') == {inst_a: 1, inst_b: 0}
    # The child's IKE lifetime: 110 % of the default rekey_time (1 h), counting down.
    for instance, left in by_instance('ipsecd_child_sa_lifetime_remaining_seconds'
                                      '{connection="s2s", child="net"}').items():
        assert 3600 < left <= 3960, (instance, left)
    # Certificates: each gateway's own (30 days, Pki) and the CA.
    certs = setup.query("ipsecd_certificate_expiry_timestamp_seconds - time()")
    seen = {(r["metric"]["instance"], r["metric"]["role"], r["metric"]["subject"]):
            float(r["value"][1]) for r in certs}
    assert set(seen) == {(inst_a, "local", "CN=gwa.example"), (inst_b, "local", "CN=gwb.example"),
                         (inst_a, "ca", "CN=ipsecd test CA ecdsa"),
                         (inst_b, "ca", "CN=ipsecd test CA ecdsa")}, seen
    assert all(29 * 86400 < left < 31 * 86400 for left in seen.values()), seen

    # Traffic on the child, labelled with the configuration's names; a rekey in between.
    sel_a = f'{{instance="{inst_a}", connection="s2s", child="net", direction="out"}}'
    sel_b = f'{{instance="{inst_b}", connection="s2s", child="net", direction="in"}}'
    n1, n2, size = 150, 100, 300
    receiver = topo.net_b.ns.spawn(_receive_udp, n1 + n2, 30.0)
    time.sleep(0.2)
    assert topo.net_a.ns.call(_send_udp, topo.net_b.v4, n1, size, 0.002) == n1
    spis_before = {c["spi_in"] for c in ipsecd_children(a)}
    r = a.ipsecd("rekey", "s2s")
    assert r.returncode == 0, r.stderr

    def rekeyed() -> bool:
        children = ipsecd_children(a)
        return len(children) == 1 and not {c["spi_in"] for c in children} & spis_before \
            and len(ipsecd_children(b)) == 1

    assert wait_until(rekeyed, 15, 0.1), a.log_text() + b.log_text()
    assert topo.net_a.ns.call(_send_udp, topo.net_b.v4, n2, size, 0.002) == n2
    assert receiver.result(35) == n1 + n2
    total = n1 + n2

    def scraped() -> bool:
        return (by_instance(f"ipsecd_child_packets_total{sel_a}") == {inst_a: total}
                and by_instance(f"ipsecd_child_packets_total{sel_b}") == {inst_b: total}
                and by_instance('ipsecd_ike_rekeys_total{kind="child"}')
                == dict.fromkeys(both, 1)
                and by_instance('ipsecd_connection_child_sas{connection="s2s"}')
                == dict.fromkeys(both, 1))

    assert wait_until(scraped, 15, 0.2), (setup.query("ipsecd_child_packets_total"),
                                          setup.query("ipsecd_ike_rekeys_total"))
    assert setup.value(f"ipsecd_child_bytes_total{sel_a}") == total * (28 + size)
    assert setup.value(f"resets(ipsecd_child_packets_total{sel_a}[{WINDOW}])") == 0
    assert setup.value(f"resets(ipsecd_child_bytes_total{sel_b}[{WINDOW}])") == 0
    assert by_instance('ipsecd_ike_rekeys_total{kind="ike"}') == dict.fromkeys(both, 0)
    assert by_instance('ipsecd_ike_dpd_total{event="timeout"}') == dict.fromkeys(both, 0)
    assert by_instance('ipsecd_child_up{connection="s2s", child="net"}') == dict.fromkeys(both, 1)
    # No per-connection label other than the configured names (no LOCAL-REMOTE, no reqid).
    assert {r["metric"]["connection"] for r in setup.query("ipsecd_child_packets_total")} == \
        {"s2s"}
    time.sleep(1.5)  # one more scrape and rule evaluation with the final values

    # Every dashboard and rule expression runs; the IKE panels show the two gateways.
    panels = _panel_exprs()
    results = {title: setup.query(expr) for title, expr in panels}
    for _alert, expr in _rule_exprs():
        setup.query(expr)
    ike_panels = ("IKE SAs by state", "IKE handshakes by result", "IKE handshake latency",
                  "IKE rekeys", "Dead peer detection", "Half-open IKE SAs and cookies",
                  "IKE retransmissions and invalid messages", "Certificate expiry",
                  "Child SA lifetime remaining (IKE)", "IKE connections")
    for title in ike_panels:
        assert {r["metric"]["instance"] for r in results[title]} == both, (title, results[title])
    assert results["IKE connections up"][0]["value"][1] == "2"
    assert results["IKE connections down"][0]["value"][1] == "0"
    assert results["Certificates expiring within 14 days"][0]["value"][1] == "0"
    assert results["Failed handshakes (range)"][0]["value"][1] == "0"
    # The latency panel's rate() is 0 here (each gateway's one handshake happened before
    # Prometheus started); the buckets themselves make a histogram Prometheus can read:
    # the quantile of the one handshake lies in the bucket that holds its duration.
    p95 = by_instance("histogram_quantile(0.95, sum by (instance, le) "
                      "(ipsecd_ike_handshake_duration_seconds_bucket))")
    durations = by_instance("ipsecd_ike_handshake_duration_seconds_sum")
    for instance in both:
        buckets = {float(r["metric"]["le"]): float(r["value"][1]) for r in setup.query(
            f'ipsecd_ike_handshake_duration_seconds_bucket{{instance="{instance}"}}')}
        upper = min(le for le, n in buckets.items() if n == 1)
        lower = max([0.0, *(le for le, n in buckets.items() if n == 0)])
        assert lower < durations[instance] <= upper, (instance, buckets, durations)
        assert lower <= p95[instance] <= upper, (instance, buckets, p95)
    groups = setup.api("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                     for r in rules]
    assert setup.api("/api/v1/alerts")["alerts"] == []

    # The operator closes the connection gwA keeps up: the IKE tunnel-down alert becomes
    # pending for it (it fires after 2 minutes); the manual-key one stays quiet.
    r = a.ipsecd("terminate", "s2s")
    assert r.returncode == 0, r.stderr

    def alerts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = setup.api("/api/v1/alerts")["alerts"]
        return found

    assert wait_until(lambda: any(x["labels"]["alertname"] == "IpsecdIkeTunnelDown"
                                  for x in alerts()), 15, 0.2), alerts()
    time.sleep(1.5)  # child_up went to 0 as well by now: still nothing else
    pending = alerts()
    assert [(x["labels"]["alertname"], x["labels"]["instance"], x["labels"]["connection"],
             x["state"]) for x in pending] == [("IpsecdIkeTunnelDown", inst_a, "s2s", "pending")], \
        pending
    assert setup.value(f'ipsecd_child_up{{instance="{inst_a}", connection="s2s"}}') == 0
