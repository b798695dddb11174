"""metrics/: per-child counters across rekeys, the exporter's output, the dashboard's shape."""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Lifetime, Mode, SecurityAssociation
from ipsecd.satable import SA_COUNTER_COLUMNS, SACounter
from metrics.accounting import Accounting, connection_of
from metrics.exporter import Exporter, Snapshot, WorkerSample

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "ipsecd-dashboard.json"
A, B = "192.0.2.1", "192.0.2.2"


class FakeTable:
    """Counter rows as the workers write them: one per slot, cleared on install."""

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}
        self.lock = threading.Lock()  # only to make the fake's own updates atomic

    def clear(self, slot: int) -> None:
        with self.lock:
            self.rows[slot] = [0] * SA_COUNTER_COLUMNS

    def count(self, slot: int, packets: int, nbytes: int) -> None:
        with self.lock:
            self.rows[slot][SACounter.PACKETS] += packets
            self.rows[slot][SACounter.BYTES] += nbytes

    def sum_sa_counters(self, slot: int) -> list[int]:
        with self.lock:
            return list(self.rows.get(slot, [0] * SA_COUNTER_COLUMNS))


def sa(spi: int, src: str = A, dst: str = B, reqid: int = 0, hard: int = 0,
       soft: int = 0) -> SecurityAssociation:
    return SecurityAssociation(spi, IpProto.ESP, ipaddress.ip_address(src),
                               ipaddress.ip_address(dst), mode=Mode.TUNNEL, reqid=reqid,
                               enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(20),
                               hard=Lifetime(add_seconds=hard), soft=Lifetime(add_seconds=soft))


def out_bytes(acc: Accounting, table: FakeTable) -> int:
    snap = acc.snapshot(table)
    return next(c.bytes for c in snap.children if c.direction == "out")


def test_connection_labels() -> None:
    assert connection_of(sa(1, A, B), "out") == (f"{A}-{B}", "reqid:0")
    assert connection_of(sa(2, B, A, reqid=7), "in") == (f"{A}-{B}", "reqid:7")


def test_counters_carry_over_a_rekey_in_the_same_slot() -> None:
    acc, table = Accounting(), FakeTable()
    table.clear(0)
    acc.install(0, 1, sa(0x1001), "out", 0.0)
    table.count(0, 10, 1000)
    assert out_bytes(acc, table) == 1000
    acc.retire(0, table)
    snap = acc.snapshot(table)
    assert out_bytes(acc, table) == 1000 and snap.up == {(f"{A}-{B}", "reqid:0"): False}
    table.clear(0)  # the next SA takes the slot: its counters start at 0
    acc.install(0, 2, sa(0x2001), "out", 0.0)
    table.count(0, 1, 50)
    assert out_bytes(acc, table) == 1050
    # The other direction appears (at 0) as soon as the child is known; up needs both.
    table.clear(1)
    acc.install(1, 3, sa(0x2002, B, A), "in", 0.0)
    snap = acc.snapshot(table)
    assert {(c.direction, c.packets) for c in snap.children} == {("out", 11), ("in", 0)}
    assert snap.up == {(f"{A}-{B}", "reqid:0"): True}
    assert snap.sas == []  # per-SA series only on request
    assert [s.spi for s in acc.snapshot(table, per_sa=True).sas] == [0x2001, 0x2002]


def test_drops_of_removed_sas_are_kept() -> None:
    acc, table = Accounting(), FakeTable()
    table.clear(0)
    acc.install(0, 1, sa(0x1001), "in", 0.0)
    table.rows[0][SACounter.DROPS + 4] = 3  # icv
    acc.retire(0, table)
    table.clear(0)
    assert acc.drop_totals(table)[4] == 3 and acc.snapshot(table).drops[4] == 3


def test_lifetime_remaining_of_the_newest_sa() -> None:
    acc, table = Accounting(), FakeTable()
    for slot in (0, 1):
        table.clear(slot)
    acc.install(0, 1, sa(0x1001, hard=100, soft=80), "out", 1000.0)
    acc.install(1, 2, sa(0x2001, hard=100), "out", 1050.0)
    snap = acc.snapshot(table, now=1060.0)
    assert [(lt.kind, lt.seconds) for lt in snap.lifetimes] == [("hard", 90.0)]


def test_a_scrape_never_sees_a_counter_go_down_during_rekeys() -> None:
    """Scrapes race with retire/install from another thread: never a decrease."""
    acc, table = Accounting(), FakeTable()
    table.clear(0)
    acc.install(0, 1, sa(0x1000), "out", 0.0)
    stop = threading.Event()
    seen: list[int] = []

    def scraper() -> None:
        while not stop.is_set():
            seen.append(out_bytes(acc, table))

    t = threading.Thread(target=scraper)
    t.start()
    try:
        slot = 0
        for i in range(1, 400):
            table.count(slot, 1, 100)
            new = 1 - slot
            table.clear(new)
            acc.install(new, i + 1, sa(0x1000 + i), "out", 0.0)  # make before break
            acc.retire(slot, table)
            slot = new
    finally:
        stop.set()
        t.join()
    assert out_bytes(acc, table) == 399 * 100
    assert len(seen) > 10
    assert all(x <= y for x, y in itertools.pairwise(seen))


def test_exporter_serves_the_metrics_over_http() -> None:
    acc, table = Accounting(), FakeTable()
    table.clear(0)
    acc.install(0, 1, sa(0x1001), "out", 0.0)
    table.count(0, 2, 200)

    def snapshot() -> Snapshot:
        return Snapshot(acc.snapshot(table), [0, 0, 5], [WorkerSample(0, True, 1, 3, 4, 0, 0.25)],
                        2)

    exporter = Exporter("127.0.0.1", 0, snapshot)
    host, port = exporter.start()
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = opener.open(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    finally:
        exporter.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    key = (("child", "reqid:0"), ("connection", f"{A}-{B}"), ("direction", "out"))
    assert samples[("ipsecd_child_bytes_total", key)] == 200
    assert samples[("ipsecd_child_packets_total", key)] == 2
    assert samples[("ipsecd_drops_total", (("reason", "unknown_spi"),))] == 5
    assert samples[("ipsecd_drops_total", (("reason", "icv"),))] == 0  # every reason, from 0
    assert samples[("ipsecd_worker_busy_seconds_total", (("worker", "0"),))] == 0.25
    assert samples[("ipsecd_worker_restarts_total", (("worker", "0"),))] == 1
    assert ("ipsecd_build_info", (("version", "0.1.0"),)) in samples
    assert not any("spi" in dict(labels) for _, labels in samples)


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    for want in ("Tunnels up", "Tunnels down", "Throughput per connection",
                 "Packets per connection", "Drops by reason", "Worker load (busy fraction)"):
        assert want in titles
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'instance=~"$instance"' in t["expr"], t["expr"]
