"""The datapath benchmark's frame: its report and goals, and one short real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipsecd.bench_datapath import NOT_YET, Row, ScrapeRun, _abba, report, run, scrape_report

ROOT = Path(__file__).resolve().parent.parent


def _rows(ipsecd: bool) -> list[Row]:
    rows = [
        Row("strongswan", "tcp", seconds=4, gbit_s=0.5, gw_cpu_s={"gwA": 3.0, "gwB": 3.0}),
        Row("strongswan", "udp1400", payload=1372, seconds=4, rx_pps=20e3, tx_pps=80e3,
            loss_pct=75, gw_cpu_s={"gwA": 4.0, "gwB": 2.0}),
        Row("baseline", "ring+gcm", payload=1400, seconds=4, rx_pps=500e3, workers=1),
    ]
    if ipsecd:
        for n, cpu in ((1, 1.0), (2, 1.1)):
            rows += [Row(f"ipsecd-{n}w", "tcp", seconds=4, gbit_s=2.0, workers=n,
                         gw_cpu_s={"gwA": 2.0, "gwB": 2.0}),
                     Row(f"ipsecd-{n}w", "udp1400", payload=1400, seconds=4, rx_pps=150e3,
                         tx_pps=150e3, loss_pct=0.0, workers=n,
                         gw_cpu_s={"gwA": 2 * cpu, "gwB": 2 * cpu})]
    return rows


def test_report_without_ipsecd_names_the_missing_rows_and_the_thresholds() -> None:
    text = report(_rows(False), [("ipsecd-1w", NOT_YET), ("ipsecd-2w", NOT_YET)])
    assert text.count(NOT_YET) >= 5  # two rows and three goals
    assert "1.50 Gbit/s" in text  # 3 x strongSwan's 0.5
    assert "200 kpkt/s" in text  # 40 % of the baseline's 500 k
    assert "20.0/40.0 kpkt" in text  # per CPU-second of gwA and gwB


def test_report_judges_the_goals() -> None:
    text = report(_rows(True))
    assert "ipsecd-1w: TCP 4.00 x strongSwan (goal 3): met" in text
    assert "ipsecd-1w: UDP 1400 B 0.300 of the baseline per worker (goal 0.4): NOT met" in text
    assert "sender-bound" in text
    assert "2 vs 1 worker 0.909 (goal 0.85): met" in text
    row = _rows(True)[-1]
    assert row.per_cpu_s() == pytest.approx(150e3 * 4 / 4.4)
    assert row.as_dict()["per_cpu_s"]["gwB"] == pytest.approx(150e3 * 4 / 2.2)


def test_failing_scenario_is_reported_not_fatal() -> None:
    rows, missing = run(scenarios=("ipsecd",), workers=(1,), log=lambda _: None)
    assert rows == [] and missing == [("ipsecd-1w", NOT_YET)]


def test_scrape_report_judges_the_ratio_and_shows_what_prometheus_did() -> None:
    assert _abba(2) == [False, True, True, False]
    runs = []
    for i, (on, gbit) in enumerate(zip(_abba(2), (1.00, 0.99, 0.97, 1.02), strict=True)):
        run = ScrapeRun(on, Row("ipsecd-1w", "tcp", seconds=4, gbit_s=gbit,
                                gw_cpu_s={"gwA": 2.0, "gwB": 2.0}), 10.0 * i, 10.0 * i + 6,
                        prom_cpu_s=0.03 if on else 0.0)
        n = 6 if on else 0
        run.scrapes = {"gwA": n, "gwB": n}
        run.scrape_s = {"gwA": [0.004] * n, "gwB": [0.005] * n}
        run.scrape_at = {gw: [10.0 * i + k for k in range(n)] for gw in ("gwA", "gwB")}
        run.series = {"gwA": 37.0 if on else 0.0, "gwB": 37.0 if on else 0.0}
        run.up = {"gwA": 1.0, "gwB": 1.0} if on else {}
        runs.append(run)
    text = scrape_report(runs)
    # medians: off (1.00, 1.02) -> 1.01, on (0.99, 0.97) -> 0.98
    assert "scraped / unscraped 0.970 (goal 0.98): NOT met" in text
    assert "on / off within each round (the noise): 0.990 0.951" in text
    assert "gwA exporter loopback: 12 scrapes in 12.0 s" in text
    assert "median interval 1.000 s" in text and "median 5.0 ms" in text
    assert "scrapes stored during the 'off' runs: 0" in text
    runs[1].row.gbit_s = 1.01
    assert "(goal 0.98): met" in scrape_report(runs)


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.netns
def test_plain_routing_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ipsecd.bench_datapath", "--seconds", "1", "--only", "plain",
         "--payloads", "1400", "--json"],
        cwd=ROOT, capture_output=True, timeout=50, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "plain        udp1400" in proc.stdout
    assert "Gbit/s" in proc.stdout and "kpkt/s" in proc.stdout
