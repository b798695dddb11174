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
from ipsecd.satable import SA_COUNTER_COLUMNS, Direction, SACounter, SATable
from metrics.accounting import Accounting, connection_of
from metrics.exporter import Collector, Exporter, IkeSample, Snapshot, WorkerSample
from workers.worker import Worker

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


def test_ike_children_are_labelled_with_their_configured_names() -> None:
    ike = sa(0x3001, B, A, reqid=5)
    ike.extra.update({"ike": "site-b", "child": "net"})
    assert connection_of(ike, "in") == ("site-b", "net")
    nameless = sa(0x3002, A, B, reqid=5)
    nameless.extra["ike"] = "site-b"  # an SA without the child's name: its reqid
    assert connection_of(nameless, "out") == ("site-b", "reqid:5")


def test_ike_child_counters_carry_on_across_rekeys() -> None:
    """A rekeyed child (new SPIs, same name and reqid) and one negotiated again after its
    IKE SA was re-established (a new reqid) continue the same series."""
    acc, table = Accounting(), FakeTable()
    for slot, (spi, reqid) in enumerate(((0x1001, 1), (0x2001, 1), (0x3001, 2))):
        new = sa(spi, reqid=reqid)
        new.extra.update({"ike": "site-b", "child": "net"})
        table.clear(slot)
        acc.install(slot, slot + 1, new, "out", 0.0)
        if slot:
            acc.retire(slot - 1, table)
        table.count(slot, 1, 100)
    snap = acc.snapshot(table)
    assert [(c.connection, c.child, c.direction, c.bytes) for c in snap.children] == [
        ("site-b", "net", "in", 0), ("site-b", "net", "out", 300)]
    assert snap.up == {("site-b", "net"): False}  # nothing inbound installed in this test


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


def test_ipcomp_sas_add_their_drops_not_their_packets_to_the_child() -> None:
    """An IPComp SA counts the packets its ESP SA carries once more, uncompressed: the
    child's counters take the ESP SA's only; the IPComp SA's drops count, live or retired."""
    acc, table = Accounting(), FakeTable()
    comp = SecurityAssociation(0x1001, IpProto.IPCOMP, ipaddress.ip_address(A),
                               ipaddress.ip_address(B), mode=Mode.TUNNEL)
    for slot, s in enumerate((sa(0x1001), comp)):  # the same number as SPI and as CPI
        table.clear(slot)
        acc.install(slot, slot + 1, s, "out", 0.0)
        table.count(slot, 10, 1000 * (slot + 1))
    table.rows[1][SACounter.DROPS + 9] = 2  # decompress
    snap = acc.snapshot(table, per_sa=True)
    assert [(c.direction, c.packets, c.bytes) for c in snap.children] == [
        ("in", 0, 0), ("out", 10, 1000)]
    assert [s.spi for s in snap.sas] == [0x1001] and snap.sa_count == {"out": 1}
    assert snap.drops[9] == 2 and acc.drop_totals(table)[9] == 2
    acc.retire(1, table)
    assert out_bytes(acc, table) == 1000 and acc.drop_totals(table)[9] == 2


def _worker_rows(table: SATable, index: int) -> Worker:
    """A worker reduced to its counters over ``table`` (no TUN, rings or sockets)."""
    w = object.__new__(Worker)
    w.table = table
    w.sa_ctr = table.sa_counters(index)
    w.wk_ctr = table.worker_counters(index)
    w.acc, w.sa_drops, w.wk_drops = {}, {}, {}
    w.packets_in = w.packets_out = 0
    w.sa_generation = table.generation
    return w


def test_counts_a_worker_adds_after_the_rekey_removed_its_sa_still_count() -> None:
    """A worker encrypted a packet on the old SA and adds the count at the end of its loop
    turn, after the control process removed the SA (a setkey rekey): the slot drains - not
    reused, still summed - until the worker's flushed generation passes the removal, and
    only then are its counters taken as final.  (Read at the removal, as before, the packet
    was neither counted nor dropped: a flaky hole in test_prometheus's rekey test.)"""
    table = SATable.create(None, n_slots=4, n_workers=1)
    worker = _worker_rows(table, 0)
    try:
        acc = Accounting()
        old = sa(0x2001)
        slot = table.free_slot()
        acc.install(slot, table.install(slot, old, Direction.OUT), old, "out", 0.0)
        worker.sa_generation = table.generation  # the turn's view: the old SA in its slot
        worker.acc[slot] = [1, 228]  # one packet encrypted on it, not yet added
        table.remove(slot)  # the rekey
        acc.drain(slot)
        removed_at = table.generation
        new_slot = table.free_slot(exclude={slot})
        new = sa(0x3001)
        acc.install(new_slot, table.install(new_slot, new, Direction.OUT), new, "out", 0.0)
        assert new_slot != slot and table.flushed_generation([0]) < removed_at
        worker._flush_counters()  # the end of the turn: into the draining slot
        assert table.flushed_generation([0]) < removed_at  # that view predates the removal
        snap = acc.snapshot(table, per_sa=True)
        assert [(c.direction, c.packets) for c in snap.children if c.direction == "out"] == \
            [("out", 1)]
        assert [s.spi for s in snap.sas] == [0x3001]  # the removed SA is no series of its own
        worker.sa_generation = table.generation  # the next turn read the table after it
        worker._flush_counters()
        assert table.flushed_generation([0]) >= removed_at  # nothing more can come: final
        assert acc.retire(slot, table)[SACounter.PACKETS] == 1
        table.install(slot, sa(0x4001), Direction.OUT)  # reused: its counters start at 0
        assert out_bytes(acc, table) == 228
        assert table.flushed_generation([]) == table.generation  # no worker: nothing pending
    finally:
        worker.sa_ctr.release()
        worker.wk_ctr.release()
        table.close()


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
                 "Packets per connection", "Drops by reason", "Worker load (busy fraction)",
                 "IKE SAs by state", "IKE handshakes by result", "IKE handshake latency",
                 "IKE rekeys", "Dead peer detection", "Half-open IKE SAs and cookies",
                 "IKE retransmissions and invalid messages", "Certificate expiry",
                 "Child SA lifetime remaining (IKE)", "IKE connections down"):
        assert want in titles
    # Panels do not overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells and g["x"] + g["w"] <= 24, p["title"]
        cells |= mine
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'instance=~"$instance"' in t["expr"], t["expr"]


# --- IKE series -------------------------------------------------------------------------------

NOW = 1_700_000_000.0


def manager_metrics() -> dict[str, object]:
    """A dict shaped like :meth:`ipsecd.ike.manager.IkeManager.metrics`."""
    return {
        "time": NOW - 0.5,
        "states": {"established": 2, "init-sent": 1},
        "half_open": 3,
        "handshakes": {"success": 7, "failed": 2},  # no "refused" yet: exported at 0
        "handshake_seconds": {"buckets": [(0.01, 1), (0.1, 5), (1.0, 6)], "sum": 2.5, "count": 7},
        "rekeys": {"ike": 1, "child": 4},
        "dpd": {"sent": 9, "timeout": 1},
        "retransmissions": 11, "cookies_sent": 12, "half_open_dropped": 13,
        "invalid_messages": 14,
        "connections": {
            "site-b": {"ike_sas": 2, "children": 3, "child_expiry": {"net": 100.0, "voip": 0.2}},
            "rw": {"ike_sas": 0, "children": 0, "child_expiry": {}}},
        "certificates": [
            {"connection": "site-b", "role": "local", "subject": "CN=gw-a.example",
             "not_after": NOW + 86400},
            {"connection": "site-b", "role": "ca", "subject": "CN=Test CA",
             "not_after": NOW + 10 * 86400},
            {"connection": "site-b", "role": "ca", "subject": "CN=Test CA",  # listed twice
             "not_after": NOW + 20 * 86400}],
    }


def scrape(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(lambda: snap))
    text = generate_latest(registry).decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key  # Prometheus rejects a scrape with duplicates
            samples[key] = s.value
    return samples


def test_ike_series_from_the_managers_dict() -> None:
    ike = IkeSample.from_manager(manager_metrics(), autostart={"site-b"}, now=NOW)
    got = scrape(Snapshot(ike=ike))

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    # Every state, from 0.
    assert one("ipsecd_ike_sas", state="established") == 2
    assert one("ipsecd_ike_sas", state="init-sent") == 1
    assert one("ipsecd_ike_sas", state="auth-sent") == 0
    assert {dict(k)["state"] for n, k in got if n == "ipsecd_ike_sas"} >= {
        "created", "init-sent", "init-done", "auth-sent", "established", "rekeyed", "deleting",
        "dead"}
    assert one("ipsecd_ike_half_open_sas") == 3
    assert one("ipsecd_ike_handshakes_total", result="success") == 7
    assert one("ipsecd_ike_handshakes_total", result="failed") == 2
    assert one("ipsecd_ike_handshakes_total", result="refused") == 0
    # The histogram: the manager's cumulative buckets, +Inf = count, _sum and _count.
    h = "ipsecd_ike_handshake_duration_seconds"
    assert [(le, one(f"{h}_bucket", le=le)) for le in ("0.01", "0.1", "1.0", "+Inf")] == [
        ("0.01", 1), ("0.1", 5), ("1.0", 6), ("+Inf", 7)]
    assert one(f"{h}_sum") == 2.5 and one(f"{h}_count") == 7
    assert one("ipsecd_ike_rekeys_total", kind="ike") == 1
    assert one("ipsecd_ike_rekeys_total", kind="child") == 4
    assert one("ipsecd_ike_dpd_total", event="sent") == 9
    assert one("ipsecd_ike_dpd_total", event="timeout") == 1
    assert one("ipsecd_ike_retransmissions_total") == 11
    assert one("ipsecd_ike_cookies_sent_total") == 12
    assert one("ipsecd_ike_half_open_dropped_total") == 13
    assert one("ipsecd_ike_invalid_messages_total") == 14
    # Per connection: every configured one, 0 when down.
    assert one("ipsecd_connection_ike_sas", connection="site-b") == 2
    assert one("ipsecd_connection_ike_sas", connection="rw") == 0
    assert one("ipsecd_connection_child_sas", connection="site-b") == 3
    assert one("ipsecd_connection_autostart", connection="site-b") == 1
    assert one("ipsecd_connection_autostart", connection="rw") == 0
    # Lifetimes counted down to the scrape (the dict is 0.5 s old), never below 0.
    life = "ipsecd_child_sa_lifetime_remaining_seconds"
    assert one(life, connection="site-b", child="net") == 99.5
    assert one(life, connection="site-b", child="voip") == 0
    assert not [k for n, k in got if n == life and dict(k)["connection"] == "rw"]
    cert = "ipsecd_certificate_expiry_timestamp_seconds"
    assert one(cert, connection="site-b", role="local", subject="CN=gw-a.example") == NOW + 86400
    assert one(cert, connection="site-b", role="ca", subject="CN=Test CA") == NOW + 10 * 86400


def test_no_ike_series_without_ike() -> None:
    """A daemon with manual keys only exports no IKE series (not zeros)."""
    got = scrape(Snapshot())
    prefixes = ("ipsecd_ike_", "ipsecd_connection_", "ipsecd_child_sa_", "ipsecd_certificate_")
    assert not [name for name, _ in got if name.startswith(prefixes)]
    # A fresh manager (nothing happened yet) exports every series, at 0.
    empty = {"time": NOW, "states": {}, "half_open": 0, "handshakes": {},
             "handshake_seconds": {"buckets": [(0.1, 0), (1.0, 0)], "sum": 0.0, "count": 0},
             "rekeys": {"ike": 0, "child": 0}, "dpd": {"sent": 0, "timeout": 0},
             "retransmissions": 0, "cookies_sent": 0, "half_open_dropped": 0,
             "invalid_messages": 0, "connections": {"site-b": {"ike_sas": 0, "children": 0,
                                                                "child_expiry": {}}},
             "certificates": []}
    got = scrape(Snapshot(ike=IkeSample.from_manager(empty, now=NOW)))
    assert got[("ipsecd_ike_handshakes_total", (("result", "refused"),))] == 0
    assert got[("ipsecd_ike_handshake_duration_seconds_bucket", (("le", "+Inf"),))] == 0
    assert got[("ipsecd_connection_ike_sas", (("connection", "site-b"),))] == 0
    assert got[("ipsecd_ike_sas", (("state", "established"),))] == 0


def test_ike_dict_of_the_real_manager_is_read() -> None:
    """The manager's own ``metrics()`` (no sockets, no peers) goes through ``from_manager``."""
    from ike_pair import child, connection

    from ipsecd.ike.config import IkeConfig
    from ipsecd.ike.manager import IkeManager

    settings = IkeConfig(connections=(connection("site-b", A, B, [child()]),))

    class NoDatapath:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the manager called the datapath: {name}")

    manager = IkeManager(settings, NoDatapath(), mark=0x1234)  # type: ignore[arg-type]
    manager.tick(0.0)
    assert manager.last_metrics is not None
    got = scrape(Snapshot(ike=IkeSample.from_manager(manager.last_metrics,
                                                     autostart={"site-b"})))
    assert got[("ipsecd_connection_ike_sas", (("connection", "site-b"),))] == 0
    assert got[("ipsecd_connection_autostart", (("connection", "site-b"),))] == 1
    assert got[("ipsecd_ike_handshake_duration_seconds_count", ())] == 0


def test_tun_drops_are_exported_when_readable(tmp_path: Path) -> None:
    from workers.tun import dropped

    # /proc/net/dev as the kernel writes it: rx bytes packets errs drop ... | tx ... drop ...
    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "    lo:     100       1    0    0    0     0          0         0      100       1"
        "    0    0    0     0       0          0\n"
        "ipsec0:  900000     600    0    7    0     0          0         0  1500000    1000"
        "    0  412    0     0       0          0\n")
    assert dropped("ipsec0", str(dev)) == (412, 7)
    assert dropped("ipsec1", str(dev)) is None
    assert dropped("ipsec0", str(tmp_path / "missing")) is None
    samples = scrape(Snapshot(tun_dropped=(412, 7)))
    assert samples[("ipsecd_tun_dropped_packets_total", (("direction", "outbound"),))] == 412
    assert samples[("ipsecd_tun_dropped_packets_total", (("direction", "inbound"),))] == 7
    assert not any(name.startswith("ipsecd_tun_") for name, _ in scrape(Snapshot()))
