"""ipsecd/log.py: racoon's level names per subsystem, text or JSON lines, keys redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from ipsecd import log as ipsecd_log
from ipsecd.config import ConfigError, parse


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for names in ipsecd_log.SUBSYSTEMS.values()
              for n in names}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


def _emit(fmt: str, level: str = "info", levels: tuple[tuple[str, str], ...] = ()) -> str:
    stream = io.StringIO()
    ipsecd_log.setup(level, fmt, levels, stream=stream)
    logging.getLogger("ipsecd").debug("control debug")
    logging.getLogger("ipsecd").log(ipsecd_log.NOTIFY, "SA spi %#x dying", 0x1001)
    logging.getLogger("ipsecd.worker").debug("worker debug")
    logging.getLogger("ipsecd.worker").warning("worker %d: icv: %d packet(s)", 1, 3)
    logging.getLogger("ipsecd.esp").info("codec info")
    return stream.getvalue()


def test_text_lines_with_racoon_level_names() -> None:
    lines = _emit("text").splitlines()
    bodies = [line.split("Z ", 1)[-1] for line in lines]  # drop the timestamp
    pid = logging.LogRecord("x", 0, "", 0, "", None, None).process
    assert bodies == [f"notify control[{pid}]: SA spi 0x1001 dying",
                      f"warning worker[{pid}]: worker 1: icv: 3 packet(s)",
                      f"info codec[{pid}]: codec info"]


def test_per_subsystem_levels() -> None:
    """worker at debug does not make control chatty, and control at error hides notify,
    although "ipsecd" (control) is the parent logger of "ipsecd.worker"."""
    out = _emit("text", "error", (("worker", "debug"),))
    assert "worker debug" in out and "worker 1: icv" in out
    assert "control debug" not in out and "dying" not in out and "codec info" not in out
    out = _emit("text", "info", (("control", "debug"),))
    assert "control debug" in out and "worker debug" not in out


def test_json_lines() -> None:
    docs = [orjson.loads(line) for line in _emit("json").splitlines()]
    assert [(d["level"], d["subsystem"], d["msg"]) for d in docs] == [
        ("notify", "control", "SA spi 0x1001 dying"),
        ("warning", "worker", "worker 1: icv: 3 packet(s)"),
        ("info", "codec", "codec info")]
    assert docs[0]["logger"] == "ipsecd" and docs[0]["ts"].endswith("Z")
    assert isinstance(docs[0]["pid"], int)


def test_hex_runs_long_enough_to_be_keys_are_redacted() -> None:
    stream = io.StringIO()
    ipsecd_log.setup("debug", "text", stream=stream)
    key = "0x6b1e0c0d6f9a1c2e3d4f5a6b7c8d9e0f10213243"
    logging.getLogger("ipsecd").error("bad line: add esp 0x1001 -E aes-gcm-16 %s;", key)
    out = stream.getvalue()
    assert key[2:] not in out and "0x<redacted>" in out
    assert "0x1001" in out  # SPIs (8 hex digits at most) stay


def test_config_keys() -> None:
    cfg = parse('[datapath]\noutside = ["eth0"]\n[log]\nformat = "json"\n'
                'levels = { worker = "debug", control = "notify" }\n')
    assert cfg.log.format == "json"
    assert dict(cfg.log.levels) == {"worker": "debug", "control": "notify"}
    with pytest.raises(ConfigError, match=r"<config>:4: log.levels.wrker: unknown subsystem"):
        parse('[datapath]\noutside = ["eth0"]\n[log]\nlevels = { wrker = "debug" }\n')
    with pytest.raises(ConfigError, match=r"log\.levels\.worker: 'verbose': expected one of"):
        parse('[datapath]\noutside = ["eth0"]\n[log]\nlevels = { worker = "verbose" }\n')
    with pytest.raises(ConfigError, match=r"log\.format: 'xml'"):
        parse('[datapath]\noutside = ["eth0"]\n[log]\nformat = "xml"\n')
    assert parse('[datapath]\noutside = ["eth0"]\n[metrics]\nsa_labels = true\n').metrics.sa_labels
