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
``ipsecd_tun_dropped_packets_total{direction}``                the kernel's drops at the TUN device:
                                                               ``outbound`` plaintext that found the
                                                               workers' queues full, ``inbound``
                                                               decrypted packets refused on receive
``ipsecd_sas{direction}``, ``ipsecd_policies``                 sizes of the SAD and SPD

IKE, only when ``[connections]`` are configured (and from the IKE loop's
first tick on): a daemon keyed by hand exports none of the ``ipsecd_ike_*``,
``ipsecd_connection_*``, ``ipsecd_child_sa_*`` and ``ipsecd_certificate_*``
series, rather than zeros that would make it look like a gateway whose IKE
tunnels are all down:

``ipsecd_ike_sas{state}``                                      IKE SAs by state (every state, from 0)
``ipsecd_ike_half_open_sas``                                   responder IKE SAs not yet authenticated
``ipsecd_ike_handshakes_total{result}``                        IKE_SA_INIT + IKE_AUTH outcomes:
                                                               ``success``, ``failed``, ``refused``
``ipsecd_ike_handshake_duration_seconds``                      histogram of successful handshakes
``ipsecd_ike_rekeys_total{kind}``                              ``ike`` / ``child`` rekeys completed
``ipsecd_ike_dpd_total{event}``                                liveness checks ``sent``, peers lost
                                                               (``timeout``)
``ipsecd_ike_retransmissions_total``                           requests sent again (RFC 7296 §2.1)
``ipsecd_ike_cookies_sent_total``                              COOKIE demands (§2.6)
``ipsecd_ike_half_open_dropped_total``                         IKE_SA_INIT ignored: half-open limits
``ipsecd_ike_invalid_messages_total``                          messages that could not be parsed or
                                                               matched no IKE SA
``ipsecd_connection_ike_sas{connection}``                      established IKE SAs (every configured
                                                               connection, 0 when down)
``ipsecd_connection_child_sas{connection}``                    Child SAs of those IKE SAs
``ipsecd_connection_autostart{connection}``                    1 when a child has ``start_action =
                                                               "start"``: the daemon keeps it up
``ipsecd_child_sa_lifetime_remaining_seconds{connection,child}``
                                                               seconds until the child's IKE
                                                               ``life_time`` ends (children with one)
``ipsecd_certificate_expiry_timestamp_seconds{connection,role,subject}``
                                                               notAfter of our certificate (``local``)
                                                               and the trust anchors (``ca``)

The IKE values come from :attr:`ipsecd.ike.manager.IkeManager.last_metrics`,
a finished dict the event loop rebuilds every tick; the exporter's thread
only reads it (one attribute read of an object nobody changes afterwards),
so a scrape never calls into the IKE state machines.

With ``[metrics] sa_labels = true`` also, per installed SA (series end with
the SA, so they are *not* continuous across rekeys):
``ipsecd_sa_packets_total{connection,child,direction,spi}`` and
``ipsecd_sa_bytes_total{...}``.

``direction`` is ``in`` (decapsulated) or ``out`` (encapsulated); see
:mod:`metrics.accounting` for what ``connection`` and ``child`` are with
manual keys and with IKE.  No label ever carries a per-packet value; the IKE
labels are connection and child names from the configuration, states and
results from fixed sets, and certificate subjects of configured files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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


#: Label values always exported (from 0), so that ``rate()`` and alerts see a series
#: before the first event; values the manager adds later are exported as they come.
HANDSHAKE_RESULTS = ("success", "failed", "refused")
REKEY_KINDS = ("ike", "child")
DPD_EVENTS = ("sent", "timeout")


@dataclass(frozen=True, slots=True)
class ConnectionSample:
    """One configured IKE connection."""

    name: str
    ike_sas: int  # established IKE SAs
    children: int  # their Child SAs
    autostart: bool  # a child has start_action = "start": the daemon keeps it up
    child_expiry: dict[str, float] = field(default_factory=dict)  # child -> seconds left


@dataclass(frozen=True, slots=True)
class CertificateSample:
    connection: str
    role: str  # "local" (our end-entity certificate) or "ca" (a trust anchor)
    subject: str  # RFC 4514
    not_after: float  # POSIX timestamp


@dataclass(frozen=True, slots=True)
class IkeSample:
    """The IKE part of a scrape, from :meth:`ipsecd.ike.manager.IkeManager.metrics`."""

    states: dict[str, int] = field(default_factory=dict)
    half_open: int = 0
    handshakes: dict[str, int] = field(default_factory=dict)
    handshake_buckets: list[tuple[float, int]] = field(default_factory=list)  # (le, cumulative)
    handshake_sum: float = 0.0
    handshake_count: int = 0
    rekeys: dict[str, int] = field(default_factory=dict)
    dpd: dict[str, int] = field(default_factory=dict)
    retransmissions: int = 0
    cookies_sent: int = 0
    half_open_dropped: int = 0
    invalid_messages: int = 0
    connections: list[ConnectionSample] = field(default_factory=list)
    certificates: list[CertificateSample] = field(default_factory=list)

    @classmethod
    def from_manager(cls, m: Mapping[str, Any], *, autostart: Collection[str] = (),
                     now: float | None = None) -> IkeSample:
        """Read the manager's finished metrics dict (never the manager itself).

        ``autostart``: names of the connections the daemon initiates at start.  The dict
        was built up to one tick before the scrape (its ``time``, wall clock): the child
        lifetimes are counted down to ``now``.
        """
        from ipsecd.ike.sa import State

        now = time.time() if now is None else now
        age = max(0.0, now - float(m.get("time", now)))
        states = {s.value: 0 for s in State}
        states.update({str(k): int(v) for k, v in m.get("states", {}).items()})

        def table(values: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, int]:
            out = dict.fromkeys(keys, 0)
            out.update({str(k): int(v) for k, v in (values or {}).items()})
            return out

        hs = m.get("handshake_seconds") or {}
        connections = [
            ConnectionSample(str(name), int(row.get("ike_sas", 0)), int(row.get("children", 0)),
                             name in autostart,
                             {str(c): max(0.0, float(left) - age)
                              for c, left in (row.get("child_expiry") or {}).items()})
            for name, row in sorted((m.get("connections") or {}).items())]
        certificates = [
            CertificateSample(str(c["connection"]), str(c["role"]), str(c["subject"]),
                              float(c["not_after"]))
            for c in m.get("certificates") or ()]
        return cls(
            states=states, half_open=int(m.get("half_open", 0)),
            handshakes=table(m.get("handshakes"), HANDSHAKE_RESULTS),
            handshake_buckets=[(float(le), int(n)) for le, n in hs.get("buckets", ())],
            handshake_sum=float(hs.get("sum", 0.0)), handshake_count=int(hs.get("count", 0)),
            rekeys=table(m.get("rekeys"), REKEY_KINDS), dpd=table(m.get("dpd"), DPD_EVENTS),
            retransmissions=int(m.get("retransmissions", 0)),
            cookies_sent=int(m.get("cookies_sent", 0)),
            half_open_dropped=int(m.get("half_open_dropped", 0)),
            invalid_messages=int(m.get("invalid_messages", 0)),
            connections=connections, certificates=certificates)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape shows; built by the daemon."""

    traffic: Traffic = field(default_factory=Traffic)
    worker_drops: list[int] = field(default_factory=list)  # per Drop value, not tied to an SA
    workers: list[WorkerSample] = field(default_factory=list)
    policies: int = 0
    ike: IkeSample | None = None  # None: no IKE configured (or not ticked yet): no IKE series
    tun_dropped: tuple[int, int] | None = None  # (outbound, inbound); None: not readable


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
        if snap.tun_dropped is not None:
            tun = CounterMetricFamily(
                "ipsecd_tun_dropped_packets",
                "Packets the kernel dropped at the TUN device: outbound, the workers' queues "
                "were full; inbound, a decrypted packet was refused", labels=["direction"])
            tun.add_metric(["outbound"], snap.tun_dropped[0])
            tun.add_metric(["inbound"], snap.tun_dropped[1])
            yield tun
        sas = GaugeMetricFamily("ipsecd_sas", "SAs in the datapath", labels=["direction"])
        for direction in ("in", "out"):
            sas.add_metric([direction], traffic.sa_count.get(direction, 0))
        yield sas
        yield GaugeMetricFamily("ipsecd_policies", "Policies in the SPD", value=snap.policies)
        if snap.ike is not None:
            yield from ike_families(snap.ike)


def ike_families(ike: IkeSample) -> Iterator[Any]:
    """The ``ipsecd_ike_*``, per-connection and certificate families of one scrape."""
    states = GaugeMetricFamily("ipsecd_ike_sas", "IKE SAs by state", labels=["state"])
    for state, n in sorted(ike.states.items()):
        states.add_metric([state], n)
    yield states
    yield GaugeMetricFamily("ipsecd_ike_half_open_sas",
                            "Responder IKE SAs not yet authenticated (half-open)",
                            value=ike.half_open)
    for name, doc, label, values in (
            ("ipsecd_ike_handshakes", "IKE SA handshakes by result", "result", ike.handshakes),
            ("ipsecd_ike_rekeys", "Rekeys completed, of IKE SAs and of Child SAs", "kind",
             ike.rekeys),
            ("ipsecd_ike_dpd", "Dead peer detection: liveness checks sent, peers lost", "event",
             ike.dpd)):
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, n in sorted(values.items()):
            family.add_metric([key], n)
        yield family
    hist = HistogramMetricFamily(
        "ipsecd_ike_handshake_duration_seconds",
        "Seconds from the first IKE_SA_INIT to the authenticated IKE SA (successful "
        "handshakes)", labels=[])
    # ``le`` as Python writes a float ("0.005", "1.0"): Prometheus reads it as a number.
    buckets = [(repr(le), float(n)) for le, n in ike.handshake_buckets if le != float("inf")]
    hist.add_metric([], [*buckets, ("+Inf", float(ike.handshake_count))], ike.handshake_sum)
    yield hist
    for name, doc, value in (
            ("ipsecd_ike_retransmissions", "IKE requests retransmitted", ike.retransmissions),
            ("ipsecd_ike_cookies_sent", "COOKIE notifications demanded of initiators",
             ike.cookies_sent),
            ("ipsecd_ike_half_open_dropped", "IKE_SA_INIT requests ignored: half-open limits",
             ike.half_open_dropped),
            ("ipsecd_ike_invalid_messages",
             "IKE messages that could not be parsed or matched no IKE SA", ike.invalid_messages)):
        yield CounterMetricFamily(name, doc, value=value)

    conn = ["connection"]
    ike_sas = GaugeMetricFamily("ipsecd_connection_ike_sas",
                                "Established IKE SAs of the connection", labels=conn)
    child_sas = GaugeMetricFamily("ipsecd_connection_child_sas",
                                  "Child SAs of the connection's established IKE SAs",
                                  labels=conn)
    autostart = GaugeMetricFamily(
        "ipsecd_connection_autostart",
        "1 when the daemon initiates the connection at start (a child with start_action "
        "start) and keeps it up", labels=conn)
    lifetime = GaugeMetricFamily(
        "ipsecd_child_sa_lifetime_remaining_seconds",
        "Seconds until the first Child SA of this name reaches its IKE life_time",
        labels=["connection", "child"])
    for c in ike.connections:
        ike_sas.add_metric([c.name], c.ike_sas)
        child_sas.add_metric([c.name], c.children)
        autostart.add_metric([c.name], 1 if c.autostart else 0)
        for child, left in sorted(c.child_expiry.items()):
            lifetime.add_metric([c.name, child], left)
    yield from (ike_sas, child_sas, autostart, lifetime)

    # One series per (connection, role, subject): a file listed twice is shown once, with
    # the earlier expiry (duplicate series would make Prometheus reject the scrape).
    expiry: dict[tuple[str, str, str], float] = {}
    for cert in ike.certificates:
        labels = (cert.connection, cert.role, cert.subject)
        expiry[labels] = min(expiry.get(labels, cert.not_after), cert.not_after)
    certs = GaugeMetricFamily(
        "ipsecd_certificate_expiry_timestamp_seconds",
        "End of validity (notAfter) of a configured certificate, POSIX time",
        labels=["connection", "role", "subject"])
    for (connection, role, subject), when in sorted(expiry.items()):
        certs.add_metric([connection, role, subject], when)
    yield certs


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


__all__ = ["DPD_EVENTS", "HANDSHAKE_RESULTS", "REKEY_KINDS", "CertificateSample", "Collector",
           "ConnectionSample", "Exporter", "IkeSample", "Snapshot", "WorkerSample", "drop_labels",
           "ike_families"]
