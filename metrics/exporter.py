"""The Prometheus exporter: the daemon's counters, served over HTTP.

The control process starts :class:`Exporter` on ``[metrics] listen``
(default ``127.0.0.1:9765``); its HTTP thread calls a *snapshot* function of
the daemon on every scrape and turns the result into metric families with
a custom collector.  Nothing is pre-registered and nothing is counted for
the exporter's sake: the workers' counter rows in shared memory are only
read and summed at scrape time (:mod:`metrics.accounting` keeps the totals
of removed SAs so the per-child counters survive rekeys).

Metrics (Prometheus naming: base units, ``_total`` counters)
------------------------------------------------------------
``ipsecd_build_info{version}``                                 1
``ipsecd_child_packets_total{connection,child,direction}``     packets through the child's SAs
``ipsecd_child_bytes_total{connection,child,direction}``       inner (plaintext IP) bytes, same
``ipsecd_child_up{connection,child}``                          1 while the child has an SA each way
``ipsecd_child_lifetime_remaining_seconds{connection,child,direction,kind}``
                                                               seconds until the newest SA's soft
                                                               / hard time lifetime (SAs with one)
``ipsecd_drops_total{reason}``                                 dropped packets by :class:`ipsecd.drops.Drop`
``ipsecd_worker_up{worker}``                                   1 while the worker process runs
``ipsecd_worker_restarts_total{worker}``                       restarts by the control process
``ipsecd_worker_packets_in_total{worker}``                     ESP packets read from the rings
``ipsecd_worker_packets_out_total{worker}``                    plaintext packets read from the TUN
``ipsecd_worker_ring_drops_total{worker}``                     frames the kernel dropped: ring full
``ipsecd_worker_busy_seconds_total{worker}``                   time spent working (not waiting)
``ipsecd_sas{direction}``, ``ipsecd_policies``                 sizes of the SAD and SPD

With ``[metrics] sa_labels = true`` also, per installed SA (series end with
the SA, so they are *not* continuous across rekeys):
``ipsecd_sa_packets_total{connection,child,direction,spi}`` and
``ipsecd_sa_bytes_total{...}``.

``direction`` is ``in`` (decapsulated) or ``out`` (encapsulated); see
:mod:`metrics.accounting` for what ``connection`` and ``child`` are with
manual keys.  No label ever carries a per-packet value.
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
from ipsecd.drops import Drop
from metrics.accounting import Traffic


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
    """What one scrape shows; built by the daemon."""

    traffic: Traffic = field(default_factory=Traffic)
    worker_drops: list[int] = field(default_factory=list)  # per Drop value, not tied to an SA
    workers: list[WorkerSample] = field(default_factory=list)
    policies: int = 0


def drop_labels(values: list[int]) -> dict[str, int]:
    """Per-reason totals keyed by label; every known reason present (0 until it happens)."""
    out = {reason.label: 0 for reason in Drop if reason is not Drop.OK}
    for i, v in enumerate(values):
        if v and i:
            try:
                out[Drop(i).label] += int(v)
            except ValueError:
                out[f"reason_{i}"] = out.get(f"reason_{i}", 0) + int(v)
    return out


class Collector:
    """A prometheus_client collector over a snapshot function."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        return []  # no fixed set of metrics to describe ahead of a scrape

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        traffic = snap.traffic
        info = GaugeMetricFamily("ipsecd_build_info", "ipsecd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        child = ["connection", "child", "direction"]
        packets = CounterMetricFamily(
            "ipsecd_child_packets", "Packets through the child's SAs, across rekeys", labels=child)
        nbytes = CounterMetricFamily(
            "ipsecd_child_bytes", "Inner (plaintext IP) bytes through the child's SAs, across "
            "rekeys", labels=child)
        for c in traffic.children:
            values = [c.connection, c.child, c.direction]
            packets.add_metric(values, c.packets)
            nbytes.add_metric(values, c.bytes)
        yield packets
        yield nbytes
        up = GaugeMetricFamily("ipsecd_child_up", "1 while the child has an installed SA in "
                               "each direction", labels=["connection", "child"])
        for (connection, name), is_up in sorted(traffic.up.items()):
            up.add_metric([connection, name], 1 if is_up else 0)
        yield up
        life = GaugeMetricFamily(
            "ipsecd_child_lifetime_remaining_seconds",
            "Seconds until the newest SA of the child reaches its soft or hard time lifetime",
            labels=[*child, "kind"])
        for lt in traffic.lifetimes:
            life.add_metric([lt.connection, lt.child, lt.direction, lt.kind], lt.seconds)
        yield life
        if traffic.sas:
            sa_labels = [*child, "spi"]
            sa_packets = CounterMetricFamily("ipsecd_sa_packets", "Packets through the SA",
                                             labels=sa_labels)
            sa_bytes = CounterMetricFamily("ipsecd_sa_bytes", "Inner bytes through the SA",
                                           labels=sa_labels)
            for sa in traffic.sas:
                values = [sa.connection, sa.child, sa.direction, f"0x{sa.spi:08x}"]
                sa_packets.add_metric(values, sa.packets)
                sa_bytes.add_metric(values, sa.bytes)
            yield sa_packets
            yield sa_bytes

        totals = list(traffic.drops)
        for i, v in enumerate(snap.worker_drops):
            if i < len(totals):
                totals[i] += v
        drops = CounterMetricFamily("ipsecd_drops", "Dropped packets by reason", labels=["reason"])
        for reason, count in sorted(drop_labels(totals).items()):
            drops.add_metric([reason], count)
        yield drops

        wup = GaugeMetricFamily("ipsecd_worker_up", "Worker process running", labels=["worker"])
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
            wup.add_metric(label, 1 if w.up else 0)
            restarts.add_metric(label, w.restarts)
            pin.add_metric(label, w.packets_in)
            pout.add_metric(label, w.packets_out)
            ring.add_metric(label, w.ring_drops)
            busy.add_metric(label, w.busy_seconds)
        yield from (wup, restarts, pin, pout, ring, busy)
        sas = GaugeMetricFamily("ipsecd_sas", "SAs in the datapath", labels=["direction"])
        for direction in ("in", "out"):
            sas.add_metric([direction], traffic.sa_count.get(direction, 0))
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


__all__ = ["Collector", "Exporter", "Snapshot", "WorkerSample", "drop_labels"]
