"""The Prometheus exporter (basic): counters of the SA table, served over HTTP.

The control process starts :class:`Exporter` on ``[metrics] listen``; its
HTTP thread calls a *snapshot* function of the daemon on every scrape and
turns the result into metric families with a custom collector (nothing is
pre-registered, so no per-packet work happens for metrics: the workers'
counter rows in shared memory are only read, summed, at scrape time).

Metrics
-------
``ipsecd_build_info{version}``                 1
``ipsecd_sa_packets_total{src,dst,spi,direction}``  packets through each SA
``ipsecd_sa_bytes_total{src,dst,spi,direction}``    inner bytes through each SA
``ipsecd_drops_total{reason}``                  dropped packets, by :class:`ipsecd.drops.Drop`
``ipsecd_worker_up{worker}``                    1 while the worker process runs
``ipsecd_worker_restarts_total{worker}``        restarts by the control process
``ipsecd_worker_packets_in_total{worker}``      ESP packets read from the rings
``ipsecd_worker_packets_out_total{worker}``     plaintext packets read from the TUN
``ipsecd_worker_ring_drops_total{worker}``      frames the kernel dropped: ring full
``ipsecd_worker_busy_seconds_total{worker}``    time spent working (not waiting)
``ipsecd_sas{direction}``, ``ipsecd_policies``  sizes of the SAD and SPD

Label cardinality is bounded by the SAD: manual SAs have no connection name
yet, so an SA is named by its outer addresses and SPI (hex).  Counters of
an SA disappear with it; the drop totals keep what removed SAs counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from ipsecd import __version__


@dataclass(frozen=True, slots=True)
class SASample:
    src: str
    dst: str
    spi: int
    direction: str  # "in" or "out"
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class WorkerSample:
    index: int
    up: bool
    restarts: int
    packets_in: int
    packets_out: int
    ring_drops: int
    busy_seconds: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape shows; built by the daemon from the SA table."""

    sas: list[SASample] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    workers: list[WorkerSample] = field(default_factory=list)
    sa_count: dict[str, int] = field(default_factory=dict)
    policies: int = 0


class Collector:
    """A prometheus_client collector over a snapshot function."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        return []  # no fixed set of metrics to describe ahead of a scrape

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        info = GaugeMetricFamily("ipsecd_build_info", "ipsecd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        labels = ["src", "dst", "spi", "direction"]
        packets = CounterMetricFamily("ipsecd_sa_packets", "Packets through the SA", labels=labels)
        nbytes = CounterMetricFamily("ipsecd_sa_bytes", "Inner bytes through the SA",
                                     labels=labels)
        for sa in snap.sas:
            values = [sa.src, sa.dst, f"0x{sa.spi:08x}", sa.direction]
            packets.add_metric(values, sa.packets)
            nbytes.add_metric(values, sa.bytes)
        yield packets
        yield nbytes
        drops = CounterMetricFamily("ipsecd_drops", "Dropped packets by reason", labels=["reason"])
        for reason, count in sorted(snap.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        up = GaugeMetricFamily("ipsecd_worker_up", "Worker process running", labels=["worker"])
        restarts = CounterMetricFamily("ipsecd_worker_restarts", "Worker restarts",
                                       labels=["worker"])
        pin = CounterMetricFamily("ipsecd_worker_packets_in", "ESP packets read from the rings",
                                  labels=["worker"])
        pout = CounterMetricFamily("ipsecd_worker_packets_out",
                                   "Plaintext packets read from the TUN", labels=["worker"])
        ring = CounterMetricFamily("ipsecd_worker_ring_drops",
                                   "Frames dropped by the kernel: RX ring full", labels=["worker"])
        busy = CounterMetricFamily("ipsecd_worker_busy_seconds", "Time spent working",
                                   labels=["worker"])
        for w in snap.workers:
            label = [str(w.index)]
            up.add_metric(label, 1 if w.up else 0)
            restarts.add_metric(label, w.restarts)
            pin.add_metric(label, w.packets_in)
            pout.add_metric(label, w.packets_out)
            ring.add_metric(label, w.ring_drops)
            busy.add_metric(label, w.busy_seconds)
        yield from (up, restarts, pin, pout, ring, busy)
        sas = GaugeMetricFamily("ipsecd_sas", "SAs in the datapath", labels=["direction"])
        for direction, count in sorted(snap.sa_count.items()):
            sas.add_metric([direction], count)
        yield sas
        yield GaugeMetricFamily("ipsecd_policies", "Policies in the SPD", value=snap.policies)


class Exporter:
    """The HTTP endpoint (prometheus_client's threaded server) on its own registry."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Snapshot]) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(snapshot))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Start serving; returns the bound address (port 0 picks a free port)."""
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        address = self._server.server_address
        self.port = int(address[1])
        return self.host, self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None


__all__ = ["Collector", "Exporter", "SASample", "Snapshot", "WorkerSample"]
