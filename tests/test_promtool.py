"""promtool on what deploy/prometheus ships, and on what the exporter serves.

``promtool check config`` and ``check rules`` validate the scrape
configuration and the alert rules; ``promtool test rules`` runs the rules'
unit tests (``deploy/prometheus/ipsecd-rules.test.yml``: every alert fires
on the series it is meant for and stays quiet on the others);
``promtool check metrics`` lints an exposition of the exporter (naming:
``_total`` counters, base units, help texts).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from metrics.accounting import Accounting
from metrics.exporter import Collector, IkeSample, Snapshot, WorkerSample

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: install Debian's prometheus package "
                    "(deploy/scripts/install-deps.sh)", pytrace=False)
    proc = subprocess.run([exe, *args], input=input, capture_output=True, timeout=60,
                          cwd=PROM, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def test_check_config() -> None:
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


def test_check_rules() -> None:
    r = promtool("check", "rules", "ipsecd-rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 13 rules found" in r.stdout + r.stderr


def test_rule_unit_tests() -> None:
    r = promtool("test", "rules", "ipsecd-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr
    # Every alert of the rules file has a test that makes it fire.
    tests = (PROM / "ipsecd-rules.test.yml").read_text()
    for line in (PROM / "ipsecd-rules.yml").read_text().splitlines():
        if line.strip().startswith("- alert:"):
            name = line.split(":", 1)[1].strip()
            assert f"alertname: {name}\n        exp_alerts:\n          - exp_labels" in tests, name


def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests do test something: a threshold changed makes them fail."""
    rules = (PROM / "ipsecd-rules.yml").read_text()
    assert '{reason="icv"}[5m])) > 10' in rules
    (tmp_path / "ipsecd-rules.yml").write_text(rules.replace('{reason="icv"}[5m])) > 10',
                                                             '{reason="icv"}[5m])) > 30'))
    shutil.copy(PROM / "ipsecd-rules.test.yml", tmp_path)
    exe = shutil.which("promtool")
    assert exe is not None
    r = subprocess.run([exe, "test", "rules", "ipsecd-rules.test.yml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0 and "IpsecdIcvFailures" in r.stdout + r.stderr


def test_check_metrics_on_the_exporter_output() -> None:
    import ipaddress

    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from ipsecd.iana import EncrId, IpProto
    from ipsecd.sa import Lifetime, Mode, SecurityAssociation

    class Table:
        def sum_sa_counters(self, slot: int) -> list[int]:
            row = [0] * 40
            row[0], row[1], row[3 + 3] = 10, 1000, 2
            return row

    acc = Accounting()
    sa = SecurityAssociation(0x1001, IpProto.ESP, ipaddress.ip_address("192.0.2.1"),
                             ipaddress.ip_address("192.0.2.2"), mode=Mode.TUNNEL,
                             enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(20),
                             hard=Lifetime(add_seconds=3600), soft=Lifetime(add_seconds=3000))
    acc.install(0, 1, sa, "out", 0.0)
    ike = IkeSample.from_manager({
        "time": 0.0, "states": {"established": 1}, "half_open": 0, "handshakes": {"success": 1},
        "handshake_seconds": {"buckets": [(0.01, 0), (0.1, 1)], "sum": 0.05, "count": 1},
        "rekeys": {"ike": 0, "child": 1}, "dpd": {"sent": 0, "timeout": 0},
        "retransmissions": 0, "cookies_sent": 0, "half_open_dropped": 0, "invalid_messages": 0,
        "connections": {"site-b": {"ike_sas": 1, "children": 1, "child_expiry": {"net": 60.0}}},
        "certificates": [{"connection": "site-b", "role": "ca", "subject": "CN=CA",
                          "not_after": 2e9}]}, autostart={"site-b"}, now=0.0)
    snap = Snapshot(acc.snapshot(Table(), per_sa=True), [0] * 32,
                    [WorkerSample(0, True, 0, 5, 6, 0, 0.5)], 4, ike)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(lambda: snap))
    text = generate_latest(registry)
    assert b"ipsecd_sa_bytes_total" in text and b"ipsecd_child_lifetime_remaining_seconds" in text
    for name in (b"ipsecd_ike_handshake_duration_seconds_bucket", b"ipsecd_ike_sas",
                 b"ipsecd_certificate_expiry_timestamp_seconds",
                 b"ipsecd_child_sa_lifetime_remaining_seconds", b"ipsecd_ike_dpd_total"):
        assert name in text, name
    r = promtool("check", "metrics", input=text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
