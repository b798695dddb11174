"""The IKE setup-rate benchmark's frame: its report and goals, the in-process profile, and one
tiny real run against both responders."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecd.bench_ike import Run, inproc, report, run, sample_report


def _runs(ipsecd_ms: float, kb: float) -> list[Run]:
    out = []
    for responder, rate, cpu_ms, per_sa in (("strongswan", 300.0, 1.5, 21.0),
                                            ("ipsecd", 300.0 * 1.5 / ipsecd_ms, ipsecd_ms, kb)):
        r = Run(responder, "raised", count=1000, concurrency=64, ok=1000, listed=1016,
                warmup=16, seconds=1000 / rate, wall=1000 / rate)
        r.resp_cpu_s = cpu_ms
        r.gen_cpu_s = 0.5 * r.wall
        r.busy_cpu_s = 1.5 * r.wall
        r.mem_before = {"VmRSS": 50_000, "RssAnon": 40_000}
        r.mem_after = {"VmRSS": 50_000 + int(per_sa * 1000), "RssAnon": 40_000 + int(per_sa * 900)}
        r.quarters = [rate] * 4
        out.append(r)
    return out


def test_report_judges_rate_and_memory() -> None:
    text = report(_runs(ipsecd_ms=3.0, kb=60.0))
    assert "setup rate ipsecd 150/s vs strongSwan 300/s = 0.50x (goal >= 1x): MISSED" in text
    assert "ipsecd 3.00 ms, strongSwan 1.50 ms (2.0x)" in text
    assert "60.0 KB RSS per IKE SA with one child over 1000 SAs (goal <= 50 KB): MISSED" in text
    assert "charon 21.0 KB" in text
    text = report(_runs(ipsecd_ms=1.0, kb=30.0))
    assert "= 1.50x (goal >= 1x): MET" in text
    assert "(goal <= 50 KB): MET" in text


def test_report_names_missing_scenarios_and_shortfalls() -> None:
    runs = _runs(1.0, 30.0)
    runs[1].ok = 400
    text = report(runs[1:], [("strongswan/raised", "failed: charon did not start")])
    assert "strongswan/raised  failed: charon did not start" in text
    assert "600 of 1000 setups not done in time" in text


def test_inproc_responder_sets_up_every_sa() -> None:
    result = inproc(12, 5, profile=True, top=5)
    assert result["established"] == 12
    assert result["responder_sas"] == 12
    assert result["responder_ms"] > 0 and result["initiator_ms"] > 0
    assert "manager.py" in result["profile"]


def test_sample_report_shares() -> None:
    stacks = ("run;receive;decode 6000\n"  # µs of CPU
              "run;receive;derive;hmac 3000\n"
              "run;flush 1000\n"
              "run;walk;walk;walk 10000\n"  # recursion: a frame counts once per stack
              "garbage line\n")
    text = sample_report(stacks, top=10)
    assert text.startswith("20.0 ms of CPU sampled")
    self_part, incl_part = text.split("inclusive:")
    assert "  50.0%  walk" in self_part and "  30.0%  decode" in self_part
    assert " 15.0%  hmac" in self_part and "  5.0%  flush" in self_part
    assert "100.0%  run" in incl_part and " 45.0%  receive" in incl_part
    assert " 50.0%  walk" in incl_part
    assert sample_report("") == "no samples"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_sampled_daemon_run(tmp_path: Path) -> None:
    log: list[str] = []
    runs, missing = run(count=30, concurrency=8, warmup=2, timeout=20.0, limits=["raised"],
                        responders=["ipsecd"], profile_dir=tmp_path, profile="sample",
                        log=log.append)
    assert missing == [] and runs[0].ok == 30, log
    assert runs[0].note == "sampled"
    stacks = (tmp_path / "ipsecd.stacks").read_text()
    text = sample_report(stacks)
    assert float(text.split()[0]) > 0
    # the IKE manager's receive path did the work of the run
    assert "manager.py:receive:" in text, text


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_tiny_run_against_both_responders() -> None:
    log: list[str] = []
    runs, missing = run(count=6, concurrency=3, warmup=2, timeout=15.0, limits=["raised"],
                        log=log.append)
    assert missing == [], log
    by = {r.responder: r for r in runs}
    assert set(by) == {"ipsecd", "strongswan"}
    for r in runs:
        assert r.ok == 6 and r.failed == 0, (r, log)
        assert r.established == 6  # the responder lists them, warm-up excluded
        assert r.rate is not None and r.resp_cpu_s >= 0  # charon: maybe under one tick
        assert r.mem_after.get("VmRSS", 0) > 0
    text = report(runs)
    assert "[raised limits] setup rate ipsecd" in text
    assert "KB RSS per IKE SA with one child over 6 SAs" in text
