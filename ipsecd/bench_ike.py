"""IKE SA setup-rate benchmark (issue 4); ``python -m ipsecd.bench_ike``.

    sudo PYTHONPATH=tests .venv/bin/python -m ipsecd.bench_ike [--count 1000]
         [--concurrency 64] [--responders ipsecd,strongswan] [--limits raised,default]
         [--timeout 60] [--profile none|inproc|daemon|sample] [--stacks FILE] [--json]
    .venv/bin/python -m ipsecd.bench_ike --profile inproc --only-profile   # no root needed

What is measured: IKEv2 SAs (PSK, ``aes128gcm16-prfsha256-x25519``, one
Child SA with ``aes128gcm16``) set up per second by a responder under
``--concurrency`` initiations in flight, each from its own initiator (own
source address, own identity ``iK.bench.test``): ipsecd and strongSwan's
charon (kernel-libipsec, the :mod:`strongswan` harness) as responders, one
after the other in the same run, each driven by the same generator.

Topology (fresh for every scenario, removed after it; all addresses in the
RFC 2544 benchmarking block 198.18.0.0/15, nothing leaves the namespaces)::

    gen ns: eth0 198.18.0.2/24 + 198.18.64.1.. /32 (IKE, one per initiator),
            lo 198.19.0.1.. /32 (each initiator's TSi)
        ══ veth ══
    resp ns: eth0 198.18.0.1/24 + 198.18.16.1/32, route 198.18.64.0/18 via 198.18.0.2

The initiators' addresses are routed, not on-link, so the responder needs
one neighbour entry, not thousands.  kernel-libipsec routes each Child SA's
remote TS with the local TS's address as source, which must exist: hence
the TS addresses on lo (generator) and 198.18.16.1 (responder).

The generator: charon in the ``gen`` namespace (kernel-libipsec, logging
off, no MOBIKE), one swanctl connection per initiator, initiated over vici
without waiting (``initiate`` with ``timeout = -1``) while fewer than
``--concurrency`` are in flight; a ``child-updown`` event marks one done
(the initiator has its Child SA, so the responder answered IKE_AUTH).
Debian's strongSwan has no ``load-tester`` plugin, and a generator in Python
(ipsecd's own ``IkeSa``) costs about as much CPU per handshake as the
responder under test (``--profile inproc`` prints both) on a machine with two
cores; charon in C costs less.  Its CPU is reported so that a generator-bound
run shows.

The responders, equivalent configurations: one connection, local
198.18.0.1 with id ``responder.bench.test``, any remote address and id, PSK,
TS ``198.18.16.0/20 <=> 198.19.0.0/16`` (each initiator proposes its own
/32), ``unique = replace``, no DPD.

* ipsecd: ``ipsecd run`` with 1 worker, ``daemon.max_sas`` raised to fit
  every Child SA, a psk.txt with every initiator's identity (racoon's format
  has no wildcard), default logging (info);
* charon: kernel-libipsec, ``ikesa_table_size = 1024`` (strongSwan's advice
  for many IKE SAs; the default is a single hash bucket), logging at level 1
  for ike/cfg/knl, default threads (16).

``--limits``: ``raised`` lifts the denial-of-service limits so that the
setup cost is what is measured (ipsecd: ``ike.half_open_max``,
``half_open_per_peer``, ``cookie_threshold``; charon: ``cookie_threshold``,
``block_threshold``); ``default`` keeps both daemons' defaults (ipsecd
demands cookies above 50 half-open SAs, charon above 30): with more
initiations in flight than that, every IKE_SA_INIT takes an extra round trip.

Per scenario: ``--warmup`` setups first (imports, caches), then the memory
and CPU baselines, then ``--count`` setups; the rate is successes over the
time from the first initiation to the last success (also per quarter of the
run, to show a rate that falls as SAs accumulate).  CPU: utime + stime of
the responder's processes (ipsecd: the control process including the
programs it waited for, e.g. ``nft``, plus its worker) from the start until
the responder is idle again, and of the generator (charon + this process's
vici threads) until its last initiation ended; "cores" is the machine's busy
time (/proc/stat) over that window - everything running on the machine, of 2
cores.  Memory:
the control process's VmRSS and RssAnon (/proc/PID/status) after the
count's setups minus before, divided by the IKE SAs the responder lists as
established with a child.

Goals (issue 4): ipsecd's rate at least strongSwan's (``raised`` limits);
ipsecd's control process at most 50 KB per established IKE SA with one child.

``--profile inproc`` (no root): ipsecd's responder path in this process -
the real :class:`~ipsecd.ike.manager.IkeManager` with a datapath that
installs nothing, fed by ``IkeSa`` initiators, ``--concurrency`` handshakes
in flight, all SAs kept - timed, then run again under cProfile (only the
responder's calls are profiled).  ``--profile daemon``: the ipsecd daemon
of the first ipsecd scenario runs under cProfile (a wrapper that switches
it on by SIGUSR1 after the warm-up and dumps at SIGUSR2 when the run is
over; that scenario's rate and memory are then not comparable and it is
marked).  ``--profile sample``: the same, with a stack sampler instead of
cProfile (the main thread's Python stack every 0.5 ms of the process's CPU
time, SIGPROF, each stack weighted by the CPU time since the previous one, as a
long C call delays the handler): no cost per call, so the shares of small
Python functions and of C work (DH, HMAC, system calls) are those of an
unprofiled run, and the rate stays within a few per cent.  It prints self and inclusive shares;
``--stacks FILE`` keeps the collapsed stacks for a flame graph.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import io
import ipaddress
import json
import os
import pstats
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"

RESPONDER = "198.18.0.1"
GENERATOR = "198.18.0.2"
INITIATORS = ipaddress.ip_network("198.18.64.0/18")  # IKE addresses, one per initiator
INNER = ipaddress.ip_network("198.19.0.0/16")  # each initiator's TSi: one /32 of this
PROTECTED = "198.18.16.0/20"  # the responder's TS
PROTECTED_HOST = "198.18.16.1"  # an address of the responder inside it (routes' source)
MAX_INITIATORS = INITIATORS.num_addresses - 2
RESPONDER_ID = "responder.bench.test"
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"
CONN, CHILD = "bench", "c"

# The issue's goals (IKE, issue 4).
GOAL_RATE_VS_STRONGSWAN = 1.0
GOAL_KB_PER_SA = 50.0

RESPONDERS = ("ipsecd", "strongswan")
LIMITS = ("raised", "default")


def _harness() -> tuple[Any, Any, Any]:
    """The namespace, strongSwan and daemon harnesses, which live with the tests."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return (importlib.import_module("netns"), importlib.import_module("strongswan"),
            importlib.import_module("daemon_harness"))


def initiator_address(k: int) -> str:
    return str(INITIATORS.network_address + 1 + k)


def initiator_ts(k: int) -> str:
    return f"{INNER.network_address + 1 + k}/32"


def initiator_id(k: int) -> str:
    return f"i{k}.bench.test"


# --- process accounting --------------------------------------------------------------------


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float:
    """utime + stime of a process (all threads), with ``waited_children`` also the CPU of
    the children it has waited for (cutime + cstime: ``nft`` runs, for instance)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17
    ticks = int(fields[11]) + int(fields[12])
    if waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (/proc/PID/status) and Pss (smaps_rollup), in KB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] = int(value.split()[0])
    return out


def machine_busy() -> float:
    """Busy seconds of all CPUs since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# --- a run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One scenario: a responder, a limits setting, ``count`` setups."""

    responder: str
    limits: str
    count: int
    concurrency: int
    ok: int = 0
    """Initiations the generator saw succeed (IKE SA and Child SA up)."""
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    listed: int | None = None
    """IKE SAs with an installed child that the responder lists afterwards (warm-up included)."""
    seconds: float = 0.0
    """First initiation to last success."""
    wall: float = 0.0
    """First initiation to the end of the generator's run (the CPU figures' window)."""
    quarters: list[float] = field(default_factory=list)
    """Setups per second in each quarter of the successes."""
    resp_cpu_s: float = 0.0
    resp_cpu_split: dict[str, float] = field(default_factory=dict)
    """``resp_cpu_s`` per process (:meth:`Responder.cpu_split`)."""
    gen_cpu_s: float = 0.0
    busy_cpu_s: float = 0.0
    mem_before: dict[str, int] = field(default_factory=dict)
    mem_after: dict[str, int] = field(default_factory=dict)
    warmup: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    """The responder's IKE counters over the run (ipsecd: cookies demanded, ...)."""
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.ok / self.seconds if self.ok and self.seconds > 0 else None

    @property
    def established(self) -> int:
        """Setups the responder completed: those it lists (less the warm-up's), else the
        generator's successes (initiations given up on may still have completed there)."""
        return self.ok if self.listed is None else max(self.listed - self.warmup, 0)

    @property
    def cpu_ms_per_setup(self) -> float | None:
        return 1e3 * self.resp_cpu_s / self.established if self.established else None

    @property
    def cores(self) -> float | None:
        """Machine-wide busy CPUs during the run (of 2)."""
        return self.busy_cpu_s / self.wall if self.wall > 0 else None

    def kb_per_sa(self, key: str = "VmRSS") -> float | None:
        if self.established <= 0 or key not in self.mem_before or key not in self.mem_after:
            return None
        return (self.mem_after[key] - self.mem_before[key]) / self.established

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(rate=self.rate, cpu_ms_per_setup=self.cpu_ms_per_setup,
                   kb_per_sa_rss=self.kb_per_sa(), kb_per_sa_anon=self.kb_per_sa("RssAnon"))
        return out


# --- the generator ---------------------------------------------------------------------------


class Generator:
    """charon in the generator namespace: one connection per initiator, initiated over vici."""

    def __init__(self, ns: Any, workdir: Path, total: int, psk: str) -> None:
        _, sw, _ = _harness()
        self.total = total
        conf = {"charon": {"ikesa_table_size": 1024, "ikesa_table_segments": 16}}
        self.charon = sw.StrongSwan(ns, workdir, debug_levels={"default": -1},
                                    conf_extra=conf, start_timeout=20.0)
        self.psk = psk

    def start(self) -> None:
        _, sw, _ = _harness()
        self.charon.start()
        conns = [sw.Connection(
            name=f"b{k}", local_addrs=[initiator_address(k)], remote_addrs=[RESPONDER],
            local_id=initiator_id(k), remote_id=RESPONDER_ID, proposals=[IKE_PROPOSAL],
            children=[sw.Child(CHILD, [initiator_ts(k)], [PROTECTED],
                               esp_proposals=[ESP_PROPOSAL])],
            # no MOBIKE: it would list every address of the namespace in each IKE_AUTH
            extra={"mobike": False})
            for k in range(self.total)]
        path = self.charon.swanctl_dir / "swanctl.conf"
        path.write_text(sw.swanctl_conf(conns, {(): self.psk}))
        self.charon.swanctl("--load-all", "--noprompt", "--file", str(path),
                            timeout=30.0 + self.total / 50)

    def stop(self) -> None:
        self.charon.stop(timeout=3.0)

    @property
    def pid(self) -> int:
        return int(self.charon.pid)

    def _connect(self, timeout: float) -> Any:
        # charon's vici socket has a short listen backlog: EAGAIN is tried again
        for _ in range(100):
            try:
                return self.charon.vici(timeout=timeout)
            except BlockingIOError:
                time.sleep(0.02)
        return self.charon.vici(timeout=timeout)

    def drive(self, first: int, n: int, concurrency: int, deadline: float, *,
              give_up: float = 60.0) -> tuple[list[float], dict[str, int]]:
        """Initiate connections ``first .. first + n - 1`` with ``concurrency`` in flight and
        none started after ``deadline``: (completion times of the successes, errors counted).

        Initiations are asynchronous (vici ``initiate`` with ``timeout = -1``); completions
        come as ``child-updown`` events on a second connection.  (A blocking ``initiate`` per
        thread would keep a log listener per initiation on charon's bus, whose locking then
        costs charon more than the handshakes.)  One not complete after ``give_up`` seconds
        counts as failed and frees its slot.
        """
        slots = threading.Semaphore(concurrency)
        lock = threading.Lock()
        pending: dict[str, float] = {}
        done: list[float] = []
        errors: dict[str, int] = {}
        stop = threading.Event()

        def error(text: str) -> None:
            errors[text] = errors.get(text, 0) + 1

        events = self._connect(10.0)
        control = self._connect(10.0)

        def listen() -> None:
            try:
                while not stop.is_set():
                    if not select.select([events.sock], [], [], 0.1)[0]:
                        continue
                    kind, name, body = events._recv()
                    if kind != events.EVENT or name != "child-updown" or body.get("up") != "yes":
                        continue
                    now = time.monotonic()
                    with lock:
                        for ike in body:
                            if pending.pop(ike, None) is not None:
                                done.append(now)
                                slots.release()
            except Exception as exc:
                with lock:
                    error(f"vici events: {type(exc).__name__}: {exc}")

        def reap() -> None:
            limit = time.monotonic() - give_up
            with lock:
                for ike, started in list(pending.items()):
                    if started < limit:
                        del pending[ike]
                        error(f"not up after {give_up:g} s")
                        slots.release()

        def acquire(listener: threading.Thread) -> bool:
            """A free slot before the deadline."""
            while not slots.acquire(timeout=0.1):
                reap()
                if time.monotonic() >= deadline or not listener.is_alive():
                    return False
            if time.monotonic() >= deadline:
                slots.release()
                return False
            return True

        with events, control:
            events._send(events.EVENT_REGISTER, "child-updown")
            if events._recv()[0] != events.EVENT_CONFIRM:
                raise RuntimeError("vici: cannot register for child-updown events")
            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
            try:
                for k in range(first, first + n):
                    if not acquire(listener):
                        break  # past the deadline (or the event stream broke)
                    ike = f"b{k}"
                    with lock:
                        pending[ike] = time.monotonic()
                    reply = control.request("initiate", {
                        "child": CHILD, "ike": ike, "timeout": -1, "loglevel": -1,
                        "init-limits": "no"})
                    if reply.get("success") != "yes":
                        with lock:
                            if pending.pop(ike, None) is not None:
                                slots.release()
                            error(str(reply.get("errmsg", "initiate failed")))
                end = min(deadline, time.monotonic()) + give_up
                while time.monotonic() < end and listener.is_alive():
                    with lock:
                        if not pending:
                            break
                    time.sleep(0.02)
                    reap()
            finally:
                stop.set()
                listener.join(5)
            with lock:
                for _ in pending:
                    error("still pending at the end")
                return sorted(done), dict(errors)


# --- the responders --------------------------------------------------------------------------


class Responder(Protocol):
    def cpu(self) -> float:
        """CPU seconds of the responder's processes so far."""
        ...

    def cpu_split(self) -> dict[str, float]:
        """The same, per process (ipsecd: control, the programs it ran, each worker)."""
        ...

    def memory(self) -> dict[str, int]:
        """The control process's memory figures (:func:`memory_kb`)."""
        ...

    def established(self) -> int | None:
        """IKE SAs it lists as established with an installed child (None: cannot tell)."""
        ...

    def counters(self) -> dict[str, int]:
        """IKE counters it keeps (cookies demanded, ...), where it has them."""
        ...


@dataclass
class IpsecdResponder:
    daemon: Any

    def pids(self) -> list[int]:
        return [int(self.daemon.proc.pid), *self.workers]

    workers: list[int] = field(default_factory=list)

    def cpu(self) -> float:
        return sum(self.cpu_split().values())

    def cpu_split(self) -> dict[str, float]:
        pid = int(self.daemon.proc.pid)
        main = cpu_seconds(pid)
        out = {"control": main, "programs": cpu_seconds(pid, waited_children=True) - main}
        for k, p in enumerate(self.workers):
            out[f"worker{k}"] = cpu_seconds(p)
        return out

    def memory(self) -> dict[str, int]:
        return memory_kb(int(self.daemon.proc.pid))

    def established(self) -> int | None:
        from ipsecd import control

        try:
            out = control.request(self.daemon.socket, "list-sas", timeout=30)
        except control.ControlError:
            return None
        return sum(1 for ike in out.get("ike_sas", [])
                   if ike.get("state") == "established" and ike.get("children"))

    def counters(self) -> dict[str, int]:
        from ipsecd import control

        try:
            ike = control.request(self.daemon.socket, "status", timeout=30).get("ike") or {}
        except control.ControlError:
            return {}
        handshakes = ike.get("handshakes", {})
        return {"cookies": int(ike.get("cookies_sent", 0)),
                "half-open dropped": int(ike.get("half_open_dropped", 0)),
                "retransmissions": int(ike.get("retransmissions", 0)),
                "failed": int(handshakes.get("failed", 0))}


@dataclass
class CharonResponder:
    charon: Any

    def cpu(self) -> float:
        return cpu_seconds(int(self.charon.pid))

    def cpu_split(self) -> dict[str, float]:
        return {"charon": self.cpu()}

    def memory(self) -> dict[str, int]:
        return memory_kb(int(self.charon.pid))

    def established(self) -> int | None:
        try:
            sas = self.charon.list_sas()
        except Exception:
            return None
        return sum(1 for sa in sas if sa.state == "ESTABLISHED"
                   and any(c.state == "INSTALLED" for c in sa.children))

    def counters(self) -> dict[str, int]:
        return {}  # charon's counters plugin is not loaded


def raised_limit(total: int, concurrency: int) -> int:
    return max(1000, 4 * concurrency, total)


_PROFILE_WRAPPER = """\
import cProfile, signal, sys, time
out = sys.argv.pop(1)
# CPU time, not wall time: waiting in poll and being preempted right after a sendmsg
# woke the peer would otherwise pass for the daemon's work.
prof = cProfile.Profile(time.process_time)
def _on(signum, frame):
    prof.enable()
def _off(signum, frame):
    prof.disable()
    prof.dump_stats(out)
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
from ipsecd.cli import main
sys.argv[0] = "ipsecd"
raise SystemExit(main(sys.argv[1:]))
"""

# A statistical profiler: every SAMPLE_INTERVAL of the process's CPU time (ITIMER_PROF),
# the main thread's Python stack is recorded.  Unlike cProfile it costs nothing per call,
# so code made of many small calls (the IKE codec) is not inflated relative to C work
# (DH, HMAC, system calls).  Python runs a signal handler only between bytecodes, so the
# SIGPROFs that arrive during one long C call (an X25519 exchange) are one handler call:
# each stack is therefore weighted by the CPU time (µs) since the previous sample, which
# that C call used, rather than counted once.  The stacks are written in the "collapsed"
# format (frame;frame;... weight) that flame-graph tools read.
SAMPLE_INTERVAL = 0.0005
_SAMPLE_WRAPPER = """\
import collections, os, signal, sys, time
out, interval = sys.argv.pop(1), float(sys.argv.pop(1))
stacks = collections.Counter()
last = 0.0
def _sample(signum, frame):
    global last
    now = time.process_time()
    weight = round((now - last) * 1e6) if last else round(interval * 1e6)
    last = now
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}:{code.co_firstlineno}")
        frame = frame.f_back
    stacks[";".join(reversed(names))] += weight
def _on(signum, frame):
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, interval, interval)
def _off(signum, frame):
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    with open(out + ".part", "w") as fh:
        fh.writelines(f"{k} {v}\\n" for k, v in stacks.items())
    os.rename(out + ".part", out)
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
from ipsecd.cli import main
sys.argv[0] = "ipsecd"
raise SystemExit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def ipsecd_responder(ns: Any, workdir: Path, *, total: int, concurrency: int, limits: str,
                     psk: str, profile_out: Path | None = None) -> Iterator[IpsecdResponder]:
    """``ipsecd run`` as the responder (module docstring), stopped at exit."""
    _, _, dh = _harness()
    d = workdir / "ipsecd"
    d.mkdir(parents=True, exist_ok=True)
    psk_file = d / "psk.txt"
    psk_file.write_text("".join(f"{initiator_id(k)} {psk}\n" for k in range(total)))
    os.chmod(psk_file, 0o600)
    ike: dict[str, Any] = {"psk_file": str(psk_file)}
    if limits == "raised":
        n = raised_limit(total, concurrency)
        ike.update(half_open_max=n, half_open_per_peer=n, cookie_threshold=n)
    extra: dict[str, dict[str, Any]] = {
        "daemon": {"max_sas": 2 * total + 64},
        "ike": ike,
        f"connections.{CONN}": {"local_addrs": [RESPONDER], "remote_addrs": ["%any"],
                                "proposals": [IKE_PROPOSAL], "dpd_delay": 0,
                                "unique": "replace"},
        f"connections.{CONN}.local": {"auth": "psk", "id": RESPONDER_ID},
        f"connections.{CONN}.remote": {"auth": "psk", "id": "%any"},
        f"connections.{CONN}.children.{CHILD}": {
            "local_ts": [PROTECTED], "remote_ts": [str(INNER)],
            "esp_proposals": [ESP_PROPOSAL], "start_action": "none"},
    }
    name = f"bike{os.getpid() % 100000}"
    if profile_out is None:
        daemon = dh.start(ns, workdir, name, outside=["eth0"], workers=1, wait=False,
                          extra=extra)
    else:
        config = dh.write_config(workdir, name, outside=["eth0"], workers=1, extra=extra)
        log = workdir / name / "daemon.log"
        wrapper = [_PROFILE_WRAPPER, str(profile_out)]
        if profile_out.suffix == ".stacks":
            wrapper = [_SAMPLE_WRAPPER, str(profile_out), str(SAMPLE_INTERVAL)]
        proc = ns.popen(sys.executable, "-c", *wrapper, "run",
                        "--config", str(config), env=dh.ENV, cwd=dh.ROOT,
                        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        daemon = dh.Daemon(ns, name, config, workdir / name / "run" / "ipsecd.sock", log, proc)
    try:
        dh.wait_ready(daemon, timeout=20)
        yield IpsecdResponder(daemon, workers=daemon.worker_pids())
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(5)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(5)
        daemon.cleanup()


@contextlib.contextmanager
def charon_responder(ns: Any, workdir: Path, *, total: int, concurrency: int, limits: str,
                     psk: str) -> Iterator[CharonResponder]:
    """charon (kernel-libipsec) as the responder (module docstring), stopped at exit."""
    _, sw, _ = _harness()
    charon_conf: dict[str, Any] = {"ikesa_table_size": 1024, "ikesa_table_segments": 16}
    if limits == "raised":
        n = raised_limit(total, concurrency)
        charon_conf.update(cookie_threshold=n, block_threshold=n)
    levels = {"ike": 1, "cfg": 1, "knl": 1, "esp": 0, "net": 0}
    charon = sw.StrongSwan(ns, workdir / "charon", debug_levels=levels,
                           conf_extra={"charon": charon_conf})
    conn = sw.Connection(
        name=CONN, local_addrs=[RESPONDER], remote_addrs=["%any"], local_id=RESPONDER_ID,
        remote_id="%any", proposals=[IKE_PROPOSAL],
        children=[sw.Child(CHILD, [PROTECTED], [str(INNER)], esp_proposals=[ESP_PROPOSAL])],
        extra={"unique": "replace"})
    with charon:
        charon.load(sw.swanctl_conf([conn], {(): psk}))
        yield CharonResponder(charon)


# --- measuring -------------------------------------------------------------------------------


def _quiesce(responder: Responder, limit: float = 30.0) -> None:
    """Wait until the responder uses less than 10 % of a core (it may still be installing
    the last children after its last answer)."""
    deadline = time.monotonic() + limit
    before = responder.cpu()
    while time.monotonic() < deadline:
        time.sleep(0.4)
        now = responder.cpu()
        if now - before < 0.04:
            return
        before = now


def _quarters(t0: float, done: Sequence[float]) -> list[float]:
    """Setups per second in each quarter of the successes."""
    n = len(done)
    if n < 8:
        return []
    out, start = [], t0
    for q in range(1, 5):
        end_index = q * n // 4 - 1
        begin_index = (q - 1) * n // 4
        end = done[end_index]
        span = end - start
        out.append((end_index - begin_index + 1) / span if span > 0 else 0.0)
        start = end
    return out


def measure(responder: str, limits: str, *, count: int, concurrency: int, warmup: int = 16,
            timeout: float = 60.0, profile_out: Path | None = None,
            log: Callable[[str], None] = print) -> Run:
    """One scenario on a fresh topology."""
    netns, _, _ = _harness()
    run = Run(responder, limits, count, concurrency, warmup=warmup)
    total = warmup + count
    if total > MAX_INITIATORS:
        raise ValueError(f"at most {MAX_INITIATORS} initiators")
    psk = "bench-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bike-") as tmp, netns.Lab("-bike") as lab:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        gen_ns, resp_ns = lab.netns("gen"), lab.netns("resp")
        lab.veth(gen_ns, "eth0", resp_ns, "eth0")
        resp_ns.ip(f"addr add {RESPONDER}/24 dev eth0", f"addr add {PROTECTED_HOST}/32 dev eth0",
                   f"route add {INITIATORS} via {GENERATOR}")
        # charon (kernel-libipsec) routes the responder's TS with the initiator's TS as
        # source: that address must exist, so the inner addresses are on lo
        gen_ns.ip(f"addr add {GENERATOR}/24 dev eth0",
                  *[f"addr add {initiator_address(k)}/32 dev eth0" for k in range(total)],
                  *[f"addr add {initiator_ts(k)} dev lo" for k in range(total)])
        if responder == "ipsecd":
            start: contextlib.AbstractContextManager[Any] = ipsecd_responder(
                resp_ns, workdir, total=total, concurrency=concurrency, limits=limits, psk=psk,
                profile_out=profile_out)
        else:
            start = charon_responder(resp_ns, workdir, total=total, concurrency=concurrency,
                                     limits=limits, psk=psk)
        gen = Generator(gen_ns, workdir / "gen", total, psk)
        with start as resp:
            try:
                t = time.monotonic()
                gen.start()
                log(f"  generator up, {total} connections loaded in {time.monotonic() - t:.1f} s")
                done, errors = gen.drive(0, warmup, concurrency, time.monotonic() + 30)
                if len(done) < warmup:
                    raise RuntimeError(f"warm-up: {len(done)}/{warmup} set up; errors {errors}")
                _quiesce(resp)
                if profile_out is not None:
                    os.kill(resp.daemon.proc.pid, signal.SIGUSR1)
                run.mem_before = resp.memory()
                counters0 = resp.counters()
                split0 = resp.cpu_split()
                cpu0, gen0, own0, busy0 = sum(split0.values()), cpu_seconds(gen.pid), \
                    own_cpu(), machine_busy()
                t0 = time.monotonic()
                done, errors = gen.drive(warmup, count, concurrency, t0 + timeout)
                gen1, own1, busy1 = cpu_seconds(gen.pid), own_cpu(), machine_busy()
                run.wall = time.monotonic() - t0
                _quiesce(resp)
                split1 = resp.cpu_split()
                run.resp_cpu_s = sum(split1.values()) - cpu0
                run.resp_cpu_split = {k: v - split0.get(k, 0.0) for k, v in split1.items()}
                if profile_out is not None:
                    os.kill(resp.daemon.proc.pid, signal.SIGUSR2)
                    netns.wait_until(profile_out.exists, 10, 0.1)
                    run.note = ("sampled" if profile_out.suffix == ".stacks"
                                else "profiled (cProfile slows it down)")
                run.mem_after = resp.memory()
                run.gen_cpu_s = (gen1 - gen0) + (own1 - own0)
                run.busy_cpu_s = busy1 - busy0
                run.ok, run.errors = len(done), errors
                run.failed = count - run.ok
                run.seconds = (done[-1] - t0) if done else time.monotonic() - t0
                run.quarters = _quarters(t0, done)
                run.listed = resp.established()
                counters1 = resp.counters()
                run.counters = {k: v - counters0.get(k, 0) for k, v in counters1.items()
                                if v - counters0.get(k, 0)}
            finally:
                gen.stop()
    return run


# --- the in-process profile of ipsecd's responder ------------------------------------------------


class _NoDatapath:
    """A datapath that installs nothing (the in-process profile measures IKE alone): every
    ``ike_*`` call of the manager's Datapath protocol is accepted and does nothing."""

    def ike_spi_in_use(self, spi: int) -> bool:
        return False

    def ike_cpi_in_use(self, cpi: int) -> bool:
        return False

    def ike_reqid_in_use(self, reqid: int) -> bool:
        return False

    def ike_install_children(self, pairs: list[tuple[Any, Any]]) -> dict[int, str]:
        return {}

    def ike_remove_child(self, child: Any, linger: float) -> None:
        pass

    def ike_activate_outbound(self, child: Any) -> None:
        pass

    def ike_install_trap(self, local: Any, remote: Any, cfg: Any, reqid: int) -> None:
        pass

    def ike_remove_trap(self, reqid: int) -> None:
        pass


class _Psks:
    def __init__(self, key: bytes) -> None:
        self.key = bytearray(key)

    def lookup(self, identity: Any) -> bytearray:
        return self.key


def inproc(count: int, concurrency: int, *, profile: bool = False,
           top: int = 30) -> dict[str, Any]:
    """ipsecd's responder path (IkeManager + IkeSa) in this process: timings and a profile.

    ``count`` handshakes, ``concurrency`` at a time (all IKE_SA_INITs of a batch, then
    all IKE_AUTHs), every established SA kept, so costs that grow with the number of SAs
    show.  Only the responder's calls are timed and profiled.
    """
    from ipsecd.ike import proposals as props
    from ipsecd.ike.auth import parse_identity
    from ipsecd.ike.config import AuthConfig, ChildConfig, ConnectionConfig, IkeConfig
    from ipsecd.ike.manager import IkeManager
    from ipsecd.ike.sa import Endpoint, IkeContext, IkeSa, Send, State
    from ipsecd.ike.ts import parse_ts
    from ipsecd.sa import Mode

    psk = b"bench-" + secrets.token_hex(16).encode()

    def child(local: str, remote: str) -> ChildConfig:
        return ChildConfig(
            name=CHILD, local_ts=(parse_ts(local),), remote_ts=(parse_ts(remote),),
            mode=Mode.TUNNEL, esp_proposals=tuple(props.parse_esp(ESP_PROPOSAL)),
            start_action="none", close_action="none", rekey_time=3600.0, life_time=3960.0,
            rekey_bytes=0, life_bytes=0, rekey_packets=0, life_packets=0,
            replay_window=1024, ipcomp=False)

    def connection(local: str, remote: str, local_id: str, remote_id: str | None,
                   ch: ChildConfig) -> ConnectionConfig:
        return ConnectionConfig(
            name=CONN, version=2, local_addrs=(local,), remote_addrs=(remote,),
            local_port=500, remote_port=500, proposals=tuple(props.parse_ike(IKE_PROPOSAL)),
            local=AuthConfig("psk", parse_identity(local_id)),
            remote=AuthConfig("psk", parse_identity(remote_id) if remote_id else None),
            rekey_time=14400.0, reauth_time=0.0, over_time=1440.0, dpd_delay=0.0,
            dpd_timeout=150.0, dpd_action="clear", encap=False, fragmentation=True,
            keyingtries=1, unique="replace", children=(ch,), line=1)

    resp_conn = connection(RESPONDER, "%any", RESPONDER_ID, None, child(PROTECTED, str(INNER)))
    limit = raised_limit(count, concurrency)
    settings = IkeConfig(connections=(resp_conn,), half_open_max=limit,
                         half_open_per_peer=limit, cookie_threshold=limit)

    class Manager(IkeManager):
        outbox: list[tuple[bytes, Endpoint]]

        def _send_raw(self, data: bytes, local: Endpoint, remote: Endpoint, *,
                      marker: bool = True) -> None:
            self.outbox.append((data, remote))

    mgr = Manager(settings, cast(Any, _NoDatapath()), psk_table=_Psks(psk))
    mgr.outbox = []
    spis = iter(range(0x1000_0000, 0x2000_0000))
    init_ctx = IkeContext(settings=IkeConfig(), allocate_spi=lambda: next(spis),
                          allocate_reqid=lambda: 1, psk=lambda conn, rid, addr: psk,
                          connections=lambda local, remote: [])
    resp_ep = Endpoint(ipaddress.ip_address(RESPONDER), 500)
    prof = cProfile.Profile()
    resp_time = init_time = 0.0
    now = 1000.0
    established = 0

    def to_responder(ike: IkeSa, src: Endpoint) -> None:
        nonlocal resp_time, init_time
        t = time.perf_counter()
        sends = [e for e in ike.events() if isinstance(e, Send)]
        init_time += time.perf_counter() - t
        for send in sends:
            for data in send.datagrams:
                if profile:
                    prof.enable()
                t = time.perf_counter()
                mgr.receive(data, resp_ep, src, now)
                resp_time += time.perf_counter() - t
                if profile:
                    prof.disable()

    def to_initiator(by_address: dict[Any, tuple[IkeSa, Endpoint]]) -> None:
        nonlocal init_time
        t = time.perf_counter()
        for data, remote in mgr.outbox:
            ike, _ = by_address[remote.address]
            ike.receive(data, now, resp_ep, remote)
        mgr.outbox.clear()
        init_time += time.perf_counter() - t

    k = 0
    while k < count:
        batch: dict[Any, tuple[IkeSa, Endpoint]] = {}
        for _ in range(min(concurrency, count - k)):
            src = Endpoint(ipaddress.ip_address(initiator_address(k)), 500)
            conn = connection(str(src.address), RESPONDER, initiator_id(k), RESPONDER_ID,
                              child(initiator_ts(k), PROTECTED))
            t = time.perf_counter()
            ike = IkeSa(init_ctx, conn, initiator=True, local=src, remote=resp_ep, now=now)
            ike.initiate(now)
            init_time += time.perf_counter() - t
            batch[src.address] = (ike, src)
            k += 1
        for ike, src in batch.values():  # IKE_SA_INIT requests
            to_responder(ike, src)
        to_initiator(batch)  # ... their answers; the initiators queue IKE_AUTH
        for ike, src in batch.values():  # IKE_AUTH requests
            to_responder(ike, src)
        to_initiator(batch)
        established += sum(1 for ike, _ in batch.values() if ike.state is State.ESTABLISHED)
        now += 0.01
    result: dict[str, Any] = {
        "count": count, "concurrency": concurrency, "established": established,
        "responder_ms": 1e3 * resp_time / count, "initiator_ms": 1e3 * init_time / count,
        "responder_sas": len(mgr.sas),
    }
    if profile:
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        result["profile"] = text.getvalue()
    return result


def sample_report(stacks: str, top: int = 30) -> str:
    """Self and inclusive shares of the sampled frames (collapsed stacks, one per line:
    ``frame;frame;... weight``, the weight in µs of CPU).  A frame counts once per stack
    however often it recurs."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.splitlines():
        path, _, n = line.rpartition(" ")
        if not path or not n.isdigit():
            continue
        frames = path.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    if not total:
        return "no samples"
    lines = [f"{total / 1e3:.1f} ms of CPU sampled every {SAMPLE_INTERVAL * 1e3:g} ms",
             "  self:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def daemon_profile(path: Path, top: int = 30) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


# --- report ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(runs: Sequence[Run], missing: Sequence[tuple[str, str]] = ()) -> str:
    """The table, the ratios and the goals, as text."""
    by = {(r.responder, r.limits): r for r in runs}
    lines = [
        f"{'responder':<10} {'limits':<7} {'ok/n':>9} {'resp':>5} {'seconds':>7} "
        f"{'setups/s':>8} {'vs sS':>6} {'per quarter /s':>19} {'resp CPU-s':>10} "
        f"{'ms/setup':>8} {'gen CPU-s':>9} {'cores':>5} {'KB/SA rss':>9} {'anon':>6}  note"]
    for r in runs:
        ss = by.get(("strongswan", r.limits))
        vs = "-"
        if r.responder != "strongswan" and ss is not None and ss.rate and r.rate:
            vs = f"{r.rate / ss.rate:.2f}x"
        quarters = "/".join(f"{q:.0f}" for q in r.quarters) or "-"
        note = r.note
        if r.counters:
            note = (note + "; " if note else "") + ", ".join(
                f"{k} {v}" for k, v in r.counters.items())
        if r.errors:
            worst = max(r.errors.items(), key=lambda kv: kv[1])
            note = (note + "; " if note else "") + f"{sum(r.errors.values())} errors, e.g. " \
                f"{worst[1]}x {worst[0][:60]!r}"
        lines.append(
            f"{r.responder:<10} {r.limits:<7} {f'{r.ok}/{r.count}':>9} "
            f"{r.established if r.listed is not None else '-':>5} {r.seconds:>7.2f} "
            f"{_fmt(r.rate, '.0f'):>8} {vs:>6} {quarters:>19} {r.resp_cpu_s:>10.2f} "
            f"{_fmt(r.cpu_ms_per_setup, '.2f'):>8} {r.gen_cpu_s:>9.2f} "
            f"{_fmt(r.cores, '.2f'):>5} {_fmt(r.kb_per_sa(), '.1f'):>9} "
            f"{_fmt(r.kb_per_sa('RssAnon'), '.1f'):>6}  {note}")
    for name, why in missing:
        lines.append(f"{name:<18} {why}")
    lines += ["", *goals(runs)]
    return "\n".join(lines)


def goals(runs: Sequence[Run]) -> list[str]:
    """The issue's goals judged, and warnings about runs the machine or generator bound."""
    by = {(r.responder, r.limits): r for r in runs}
    out = ["goals (IKE, issue 4):"]
    for limits in LIMITS:
        ours, theirs = by.get(("ipsecd", limits)), by.get(("strongswan", limits))
        if ours is None or theirs is None:
            continue
        label = "goal" if limits == "raised" else "for information"
        if ours.rate and theirs.rate:
            ratio = ours.rate / theirs.rate
            line = (f"  [{limits} limits] setup rate ipsecd {ours.rate:.0f}/s vs strongSwan "
                    f"{theirs.rate:.0f}/s = {ratio:.2f}x ({label} >= "
                    f"{GOAL_RATE_VS_STRONGSWAN:g}x)")
            if limits == "raised":
                line += f": {_verdict(ratio >= GOAL_RATE_VS_STRONGSWAN)}"
            out.append(line)
        else:
            out.append(f"  [{limits} limits] setup rate: no rate for "
                       f"{'ipsecd' if not ours.rate else 'strongSwan'}")
        a, b = ours.cpu_ms_per_setup, theirs.cpu_ms_per_setup
        if a and b:
            out.append(f"  [{limits} limits] responder CPU per setup: ipsecd {a:.2f} ms, "
                       f"strongSwan {b:.2f} ms ({a / b:.1f}x); one core of ipsecd's single "
                       f"control process sets up at most {1e3 / a:.0f}/s")
    for r in runs:
        if r.responder != "ipsecd":
            continue
        kb = r.kb_per_sa()
        if kb is not None:
            theirs = by.get(("strongswan", r.limits))
            ref = theirs.kb_per_sa() if theirs is not None else None
            out.append(f"  [{r.limits} limits] ipsecd control process {kb:.1f} KB RSS per "
                       f"IKE SA with one child over {r.established} SAs (goal <= "
                       f"{GOAL_KB_PER_SA:g} KB): {_verdict(kb <= GOAL_KB_PER_SA)}"
                       + (f"; charon {ref:.1f} KB" if ref is not None else ""))
    for r in runs:
        if r.ok < r.count:
            out.append(f"  note: {r.responder}/{r.limits}: {r.count - r.ok} of {r.count} "
                       "setups not done in time: the figures cover the ones that were")
        if r.wall and r.gen_cpu_s / r.wall > 0.9:
            out.append(f"  note: {r.responder}/{r.limits}: the generator used "
                       f"{r.gen_cpu_s / r.wall:.2f} cores - the rate may be generator-bound")
        if r.cores is not None and r.cores > 1.8:
            out.append(f"  note: {r.responder}/{r.limits}: the machine was {r.cores / 2:.0%} "
                       "busy - a CPU-bound run: compare CPU per setup")
    return out


# --- driver ------------------------------------------------------------------------------------


def run(*, count: int = 1000, concurrency: int = 64, warmup: int = 16, timeout: float = 60.0,
        responders: Sequence[str] = RESPONDERS, limits: Sequence[str] = LIMITS,
        profile_dir: Path | None = None, profile: str = "daemon",
        log: Callable[[str], None] = print) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every (limits, responder) scenario: (runs, [(scenario, why it has no row)]).

    ``profile_dir``: the first ipsecd scenario's control process runs under cProfile
    (``profile`` "daemon"; stats in ``profile_dir / "ipsecd.prof"``) or the stack sampler
    (``profile`` "sample"; collapsed stacks in ``profile_dir / "ipsecd.stacks"``).
    """
    runs: list[Run] = []
    missing: list[tuple[str, str]] = []
    profiled = False
    for lim in limits:
        for responder in responders:
            name = f"{responder}/{lim}"
            log(f"{name}: {count} setups, {concurrency} in flight")
            out = None
            if profile_dir is not None and responder == "ipsecd" and not profiled:
                out = profile_dir / ("ipsecd.stacks" if profile == "sample" else "ipsecd.prof")
                profiled = True
            try:
                r = measure(responder, lim, count=count, concurrency=concurrency,
                            warmup=warmup, timeout=timeout, profile_out=out, log=log)
            except Exception as exc:  # one broken scenario must not hide the others
                log(f"  {name} FAILED: {exc}")
                missing.append((name, "failed: " + (str(exc).splitlines()
                                                    or [type(exc).__name__])[0]))
                continue
            runs.append(r)
            log(f"  {r.ok}/{r.count} in {r.seconds:.2f} s = {_fmt(r.rate, '.0f')}/s, "
                f"responder CPU {r.resp_cpu_s:.2f} s, generator CPU {r.gen_cpu_s:.2f} s, "
                f"{_fmt(r.kb_per_sa(), '.1f')} KB/SA")
            if r.established and len(r.resp_cpu_split) > 1:
                log("  responder CPU per setup: " + ", ".join(
                    f"{k} {1e3 * v / r.established:.2f} ms"
                    for k, v in r.resp_cpu_split.items()))
    return runs, missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipsecd.bench_ike",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000,
                        help="IKE SAs to set up per scenario (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="initiations in flight (default 64)")
    parser.add_argument("--warmup", type=int, default=16,
                        help="setups before the baselines are taken (default 16)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds during which a scenario starts setups (default 60; "
                             "those in flight then get 60 s more)")
    parser.add_argument("--responders", default=",".join(RESPONDERS))
    parser.add_argument("--limits", default=",".join(LIMITS),
                        help="raised (DoS limits lifted) and/or default")
    parser.add_argument("--profile", choices=("none", "inproc", "daemon", "sample"),
                        default="none", help="also profile ipsecd's responder (module docstring)")
    parser.add_argument("--stacks", type=Path, default=None,
                        help="with --profile sample: also keep the collapsed stacks here")
    parser.add_argument("--only-profile", action="store_true",
                        help="with --profile inproc: only that, no namespaces")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON at the end")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= MAX_INITIATORS - args.warmup:
        parser.error(f"--count must be 1..{MAX_INITIATORS - args.warmup}")
    if not 1 <= args.concurrency <= 1024:
        parser.error("--concurrency must be 1..1024")
    if not 1 <= args.warmup <= 1000:
        parser.error("--warmup must be 1..1000")
    responders = [r for r in args.responders.split(",") if r]
    limits = [v for v in args.limits.split(",") if v]
    if set(responders) - set(RESPONDERS) or set(limits) - set(LIMITS):
        parser.error(f"responders: {RESPONDERS}, limits: {LIMITS}")
    timeout = min(max(args.timeout, 5.0), 600.0)
    started = time.monotonic()
    result: dict[str, Any] = {}
    if args.profile == "inproc":
        print(f"ipsecd responder in-process, {args.count} handshakes, {args.concurrency} "
              "in flight (no sockets, no datapath install):", flush=True)
        timed = inproc(args.count, args.concurrency)
        print(f"  responder {timed['responder_ms']:.3f} ms per handshake "
              f"({1e3 / timed['responder_ms']:.0f}/s on one core), initiator "
              f"{timed['initiator_ms']:.3f} ms; {timed['established']} established", flush=True)
        profiled = inproc(args.count, args.concurrency, profile=True)
        print(profiled["profile"])
        result["inproc"] = {k: v for k, v in timed.items()}
        if args.only_profile:
            return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"IKE setup-rate benchmark: {args.count} IKE SAs per scenario, {args.concurrency} "
          f"in flight, {IKE_PROPOSAL} / ESP {ESP_PROPOSAL}, PSK", flush=True)
    with tempfile.TemporaryDirectory(prefix="bike-prof-") as prof_tmp:
        prof_dir = Path(prof_tmp) if args.profile in ("daemon", "sample") else None
        runs, missing = run(count=args.count, concurrency=args.concurrency,
                            warmup=args.warmup, timeout=timeout, responders=responders,
                            limits=limits, profile_dir=prof_dir, profile=args.profile,
                            log=lambda s: print(s, flush=True))
        print()
        print(report(runs, missing))
        if prof_dir is not None and (prof_dir / "ipsecd.prof").exists():
            print("\nipsecd daemon profile (control process, main thread, the run only):")
            print(daemon_profile(prof_dir / "ipsecd.prof"))
        if prof_dir is not None and (prof_dir / "ipsecd.stacks").exists():
            stacks = (prof_dir / "ipsecd.stacks").read_text()
            print("\nipsecd daemon, sampled (control process, main thread, the run only):")
            print(sample_report(stacks))
            if args.stacks is not None:
                args.stacks.write_text(stacks)
    print(f"(total {time.monotonic() - started:.0f} s; 2 shared vCPUs: expect 10-20 % "
          "variance; 'quarters' = setups/s in each quarter of the run)")
    if args.json:
        result["runs"] = [r.as_dict() for r in runs]
        result["missing"] = dict(missing)
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
