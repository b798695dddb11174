"""The daemon's log: racoon's level names, per-subsystem levels, text or JSON lines.

Levels are racoon's (racoon.conf(5) ``log``): ``error``, ``warning``,
``notify`` (25, between warning and info: SA state changes an operator
wants without the chatter of ``info``), ``info`` and ``debug``.
``daemon.log_level`` sets the level of every subsystem; ``[log] levels``
overrides it per subsystem (:data:`SUBSYSTEMS`), e.g.
``levels = { worker = "debug" }``.

Two formats (``[log] format``), both on stderr (systemd's journal takes it):

* ``text``: ``LEVEL SUBSYSTEM[PID]: message``, preceded by an ISO 8601
  timestamp unless stderr is the journal (``JOURNAL_STREAM``), which
  stamps lines itself;
* ``json``: one object a line (orjson): ``ts``, ``level``, ``subsystem``,
  ``logger``, ``pid``, ``msg`` and ``exc`` when there is a traceback.

Key material is never logged: SAs print key *lengths* only
(:meth:`ipsecd.sa.SecurityAssociation.describe_keys`), the setkey parser
never quotes a key token in an error.  As a second line of defence a
filter replaces any ``0x`` hex run of 16 digits or more (a key of 64 bits
or longer; SPIs have 8 at most) by ``0x<redacted>`` before a line is
formatted.  Messages about unauthenticated traffic (bad ICV, replay,
unknown SPI...) are rate-limited where they arise: the workers log one
line per kind per ``LOG_INTERVAL`` seconds with the count since the last
(:meth:`workers.worker.Worker._note`); the control process sees no packets.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson

NOTIFY = 25
#: racoon's level names and the ``logging`` levels they map to.
LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "notify": NOTIFY,
          "info": logging.INFO, "debug": logging.DEBUG}
FORMATS = ("text", "json")

#: Subsystems (the keys of ``[log] levels``) and the loggers each one covers.
SUBSYSTEMS: dict[str, tuple[str, ...]] = {
    "control": ("ipsecd", "ipsecd.control"),  # the control process: SAD/SPD, setkey, workers
    "worker": ("ipsecd.worker",),  # the datapath processes
    "codec": ("ipsecd.esp", "ipsecd.ah", "ipsecd.ipcomp", "ipsecd.transforms"),
    "ike": ("ipsecd.ike",),
    "metrics": ("metrics",),
}
_SUBSYSTEM_OF = {name: sub for sub, names in SUBSYSTEMS.items() for name in names}

_HEX_KEY = re.compile(r"0[xX][0-9a-fA-F]{16,}")
#: Third-party loggers whose debug output is not ours to show.
_NOISY = ("pyroute2", "asyncio")


def level_name(levelno: int) -> str:
    """racoon's name for a ``logging`` level (CRITICAL counts as error)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= NOTIFY:
        return "notify"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


@functools.lru_cache(maxsize=256)  # a handful of logger names, asked for every line
def subsystem_of(logger: str) -> str:
    """The subsystem of a logger name (the nearest configured ancestor), else the name."""
    name = logger
    while name:
        sub = _SUBSYSTEM_OF.get(name)
        if sub is not None:
            return sub
        name = name.rpartition(".")[0]
    return logger


class RedactKeys(logging.Filter):
    """Replace hex runs long enough to be keys, in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _HEX_KEY.search(message):
            message = _HEX_KEY.sub("0x<redacted>", message)
        # The formatted message replaces msg and args: the formatter's getMessage() does
        # not format it a second time.
        record.msg = message
        record.args = None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{level_name(record.levelno)} {subsystem_of(record.name)}[{record.process}]: "
                f"{record.getMessage()}")
        if self.timestamps:
            line = f"{_iso(record.created)} {line}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": level_name(record.levelno),
            "subsystem": subsystem_of(record.name),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


_iso_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _iso(created: float) -> str:
    global _iso_second
    second = int(created)
    last = _iso_second  # one read: threads (the exporter's) may log too
    if second != last[0]:  # strftime once a second, not once a line
        last = _iso_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{last[1]}.{int(created % 1 * 1000):03d}Z"


def setup(level: str = "info", fmt: str = "text",
          levels: Iterable[tuple[str, str]] = (), stream: IO[str] | None = None) -> None:
    """Configure the root logger for the daemon (workers inherit it when forked)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    logging.addLevelName(NOTIFY, "NOTIFY")
    # The formats use neither the caller's file and line nor thread or process names:
    # not gathering them makes a record cheaper (the logging HOWTO's "Optimization"), and
    # the daemon logs a few lines per IKE SA set up.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    default = LEVELS[level]
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else TextFormatter(timestamps=not os.environ.get("JOURNAL_STREAM")))
    handler.addFilter(RedactKeys())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    overrides = dict(levels)
    # Every subsystem's loggers get an explicit level, so that "control" (the
    # "ipsecd" logger, parent of all the others) at debug does not pull the
    # workers' chatter along.
    for sub, names in SUBSYSTEMS.items():
        value = LEVELS[overrides.get(sub, level)]
        for name in names:
            logging.getLogger(name).setLevel(value)
    root.setLevel(default)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(default, logging.WARNING))


__all__ = ["FORMATS", "LEVELS", "NOTIFY", "SUBSYSTEMS", "JsonFormatter", "RedactKeys",
           "TextFormatter", "level_name", "setup", "subsystem_of"]
