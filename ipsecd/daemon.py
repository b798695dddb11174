"""The control process: ``ipsecd run --config FILE``.

Theory of operation
-------------------
The control process owns everything that is not a packet:

* the **SPD and SAD** (:mod:`ipsecd.spd`, :mod:`ipsecd.sad`), changed only by
  setkey scripts - the one named in the configuration at start, and those
  ``ipsecd setkey`` sends over the control socket - each applied all or
  nothing (:func:`ipsecd.setkey.apply` on copies, committed only when the
  datapath can take the result too: free SA slots, a policy document that
  fits its segment, codec contexts that build);
* the **SA table** in shared memory (:mod:`ipsecd.satable`): after every
  change the SAD is *synced* into it.  An SA goes into a slot as IN when
  its destination is one of this machine's addresses, as OUT when its
  source is (both, in two slots, when both are).  An SA that is replaced
  or removed and comes back with the same keys continues its outbound
  sequence numbers from where the old slot stopped (a per-daemon memory
  keyed by a salted hash of SPI, destination and keys), so re-applying a
  script that starts with ``flush;`` never reuses a number;
* the **policy table** for the workers (:mod:`workers.policy`), published
  after every sync: the SPD in lookup order, which slot serves which
  ``ipsec`` request, each outbound SA's path MTU and interface, and the
  local addresses;
* the **plaintext side**: the multi-queue TUN device (created here, kept
  alive by a detached queue), and routes to the destinations of ``out``
  ``ipsec`` policies in a routing table of our own, consulted before
  ``main`` by a ``not fwmark MARK lookup TABLE`` rule
  (:class:`workers.tun.PolicyRouting`).  Tunnel and transport mode are the
  same here: the selector's destination prefix goes into the TUN, with the
  local address inside the selector's source prefix as preferred source.
  Our own ESP carries the mark (``TxSender(mark=...)``) and so leaves by
  the main table, never into the TUN.  Using our own table rather than
  ``main`` mirrors kernel IPsec, where a policy wins over routing, and
  leaves the operator's routes untouched (removal is one flush);
* the **nft tables**: one keeps the kernel away from our ESP and AH
  (:class:`ipsecd.nft.EspDropTable`), the other drops plaintext that an
  ``in``/``fwd`` policy requires protected (:class:`CleartextFilter`);
* the **workers** (:mod:`workers.worker`), forked with ``multiprocess``
  and supervised: the death of a worker is noticed at once (its process
  sentinel is in the event loop) and it is restarted with the same index,
  so its socket filter, its inbound SAs' replay windows (in shared memory)
  and the shared sequence counters carry on; a worker whose heartbeat
  stops for :data:`HEARTBEAT_TIMEOUT` is killed and restarted the same way;
* **lifetimes**: every :data:`TICK` seconds the workers' counters of each
  SA are summed; a soft limit marks the SA ``dying`` (logged; a mature SA
  is then preferred for outbound traffic), a hard limit removes it;
* the **control socket** (:mod:`ipsecd.control`) and the **metrics
  exporter** (:mod:`metrics.exporter`).

The event loop is asyncio, kept thin: signal handlers, the control server,
one ticker task and one reader per worker sentinel.  Everything that
changes state runs in the loop's thread, one event at a time.

Shutdown (SIGTERM or SIGINT) undoes the start in reverse: workers stopped,
routes and rules removed, nft table deleted, TUN closed (the device goes
with its last queue), shared memory wiped and unlinked, SAD keys wiped.
SIGHUP re-applies the configured setkey script as one transaction.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import heapq
import ipaddress
import itertools
import logging
import math
import operator
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from ipsecd import __version__
from ipsecd.ah import AhContext
from ipsecd.config import Config
from ipsecd.control import ControlError, ControlServer, RequestError, prepare_socket_path
from ipsecd.drops import Drop
from ipsecd.esp import EspContext
from ipsecd.iana import IpProto
from ipsecd.ipcomp import IpcompContext
from ipsecd.sa import IPAddress, Mode, SAState, SecurityAssociation
from ipsecd.sad import SAD, SAKey
from ipsecd.satable import (
    DROP_COLUMNS,
    SA_COUNTER_COLUMNS,
    Direction,
    SACounter,
    SATable,
    TableFull,
    WorkerCounter,
)
from ipsecd.setkey import Script, SetkeyError, apply, dump, parse
from ipsecd.spd import SPD, Action, IpsecRequest, Level, Policy, Selector
from ipsecd.spd import Direction as PolicyDirection
from ipsecd.transforms import TransformError
from metrics.accounting import Accounting
from metrics.exporter import Exporter, IkeSample, Snapshot, WorkerSample
from workers.policy import (
    InstalledSA,
    PolicyPublisher,
    PolicyTable,
    PolicyTableFull,
    SlotInfo,
)
from workers.tun import dropped as tun_dropped

log = logging.getLogger("ipsecd")
T = TypeVar("T")

TICK = 0.5  # lifetimes, heartbeats
HEARTBEAT_TIMEOUT = 5.0
FILTER_DELAY = 0.2  # IKE changes: the cleartext filter follows at most this much later
ROUTE_CACHE_SECONDS = 10.0
SEQ_RESTART_MARGIN = 1 << 22  # sequence numbers skipped after a restart (see _load_seq_file)  # how long the path (interface, MTU) towards a peer is reused
RESTART_WINDOW = 10.0  # more than RESTART_BURST restarts in this window: slow down
RESTART_BURST = 5
RESTART_DELAY = 1.0
STOP_GRACE = 2.0


class StartError(Exception):
    """The daemon cannot start; ``str()`` says why (no traceback for the operator)."""


@dataclass(slots=True)
class _Slot:
    """An SA as installed in the SA table."""

    sa: SecurityAssociation
    slot: int
    uid: int
    direction: Direction
    order: int
    fingerprint: bytes  # _fingerprint of an outbound SA (b"" where unused: see _sync)


@dataclass(slots=True)
class _Usage:
    """Per-SA (not per-slot) bookkeeping for lifetimes."""

    first_used: float | None = None
    soft_fired: bool = False


@dataclass(slots=True)
class _WorkerState:
    index: int
    process: Any = None
    pid: int = 0
    started: float = 0.0
    restarts: int = 0
    recent: list[float] = field(default_factory=list)
    exit_code: int | None = None
    pending_restart: asyncio.TimerHandle | None = None


_Changes = dict[Any, Any] | None  # an SPD journal (SPD.take_changes); None: anything changed


def _merge(acc: _Changes, new: _Changes) -> _Changes:
    """Two SPD journals, one after the other, as one (the first "before" entry wins)."""
    if acc is None or new is None:
        return None
    if not acc:
        return dict(new)
    for key, old in new.items():
        acc.setdefault(key, old)
    return acc


def _fingerprint(salt: bytes, sa: SecurityAssociation) -> bytes:
    h = hashlib.blake2b(key=salt, digest_size=16)
    h.update(sa.spi.to_bytes(4, "big") + int(sa.protocol).to_bytes(1, "big") + sa.dst.packed)
    h.update(len(sa.enc_key).to_bytes(2, "big") + bytes(sa.enc_key))
    h.update(bytes(sa.auth_key))
    return h.digest()


class CleartextFilter:
    """nftables rules that enforce ``in``/``fwd`` policies on packets that did *not* come
    through IPsec.

    Kernel IPsec drops a cleartext packet that an ``ipsec ... require``
    policy says must arrive protected.  Without kernel IPsec the stack would
    accept it, so the daemon mirrors its inbound SPD into a table of its own
    (``inet ipsecd_<name>_policy``): in SPD order, first match wins, every
    packet not arriving on the TUN device is matched against the ``in``
    policies (hook input) or the ``fwd`` ones (hook forward): ``ipsec`` with
    a required request drops, ``discard`` drops, ``none`` and ``ipsec`` with
    only ``use`` requests accept.  Packets from the TUN were decapsulated by
    a worker, which checked them already.  IKE (UDP 500 and 4500) and IPv6
    neighbour discovery pass before any policy, as racoon's socket bypass
    and ND would on a KAME host.

    The policies' rules are kept in *chunks*: regular chains of about
    :data:`CHUNK` rules each, consecutive in SPD order, that the hook's chain
    jumps to in turn (a verdict in a chunk ends the hook's evaluation, no
    match returns to the next jump: the same first-match order as one flat
    list).  A chunk covers a range of SPD sort keys.  A change rewrites only
    the chunks it touches (``flush chain`` and their rules again; a chunk that
    only grew at its end gets just the new rules, appended), and a policy
    after all others opens a new chunk once the last is full, all in one
    atomic ``nft`` batch - no rule handles, and nft need not read the table
    back.  The table is written whole at the first change, after a
    batch failed (a failed batch changes nothing), and when a chunk has
    grown past four times its size.
    """

    CHAINS = {PolicyDirection.IN: "input", PolicyDirection.FWD: "forward"}

    def __init__(self, name: str, tun: str) -> None:
        self.table = f"ipsecd_{name}_policy"
        self.tun = tun
        self.installed = False
        # Per direction, in SPD order: the chunks and the lowest sort key each covers (the
        # first one's is ignored: it covers everything below the second's).  None: not known
        # (the next apply writes the table whole).
        self._chunks: dict[PolicyDirection, list[_Chunk]] | None = None
        self._lows: dict[PolicyDirection, list[tuple[int, int]]] = {}
        self._next_chunk = 0
        self.batches = 0  # changes applied chunk by chunk (tests)

    def _fixed_rules(self, hook: str) -> list[str]:
        rules = [f'iifname "{self.tun}" accept']
        if hook == "input":
            rules.append("udp dport { 500, 4500 } accept")
        rules.append("icmpv6 type { nd-router-solicit, nd-router-advert, "
                     "nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept")
        return rules

    def _new_chunk(self, hook: str) -> _Chunk:
        self._next_chunk += 1
        return _Chunk(f"{hook}_{self._next_chunk}", [], [], [])

    def script(self, spd: SPD) -> str:
        """The whole table for ``spd`` (and the chunks it makes, kept by :meth:`apply`)."""
        return self._whole(spd)[0]

    def _whole(self, spd: SPD) -> tuple[str, dict[PolicyDirection, list[_Chunk]],
                                        dict[PolicyDirection, list[tuple[int, int]]]]:
        chunks: dict[PolicyDirection, list[_Chunk]] = {}
        lows: dict[PolicyDirection, list[tuple[int, int]]] = {}
        parts = []
        bases = []
        for direction, hook in self.CHAINS.items():
            entries = spd.entries(direction)
            chunks[direction], lows[direction] = [], []
            for i in range(0, len(entries), CHUNK):
                chunk = self._new_chunk(hook)
                for entry in entries[i:i + CHUNK]:
                    chunk.append(entry)
                chunks[direction].append(chunk)
                lows[direction].append(chunk.keys[0])
                body = "".join(f"\t\t{r}\n" for r in chunk.rules)
                parts.append(f"\tchain {chunk.name} {{\n{body}\t}}\n")
            rules = self._fixed_rules(hook) + [f"jump {c.name}" for c in chunks[direction]]
            body = "".join(f"\t\t{r}\n" for r in rules)
            bases.append(f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority -290; "
                         f"policy accept;\n{body}\t}}\n")
        text = (f"add table inet {self.table}\ndelete table inet {self.table}\n"
                f"table inet {self.table} {{\n{''.join(parts)}{''.join(bases)}}}\n")
        return text, chunks, lows

    def apply(self, spd: SPD, changes: _Changes = None) -> None:
        """Make the table enforce ``spd``; ``changes``: the SPD's journal since the last
        apply (None: unknown - the table is written whole)."""
        if self.installed and self._chunks is not None and changes is not None:
            self._apply_changes(spd, changes)
            return
        self._chunks = None
        text, chunks, lows = self._whole(spd)
        self._nft(text)
        self.installed = True
        self._chunks, self._lows = chunks, lows

    def _apply_changes(self, spd: SPD, changes: dict[Any, Any]) -> None:
        state, self._chunks = self._chunks, None  # unknown until nft has answered
        assert state is not None
        touched: set[str] = set()  # chunks written again whole (flush chain, every rule)
        # Chunks that only grew at their end: name -> how many rules they had (the ones
        # after are appended with "add rule", no flush).  IKE's policies come after every
        # other of their priority, so most changes are appends to the last chunk, and the
        # kernel's cost is per rule written (about 30 us each): rewriting that chunk's
        # earlier rules at every batch cost as much again as the new rules.
        grown: dict[str, int] = {}
        created: list[tuple[str, _Chunk]] = []
        for key, old in changes.items():
            direction = key[1]
            hook = self.CHAINS.get(direction)
            if hook is None:
                continue
            entry = spd.get(*key)
            if entry is old:
                continue
            chunks, lows = state[direction], self._lows[direction]
            if old is not None:
                k = _entry_key(old)
                chunk = chunks[max(0, bisect.bisect_right(lows, k) - 1)] if chunks else None
                if chunk is None or not chunk.remove(k):
                    self.apply(spd)  # out of step: write it whole
                    return
                touched.add(chunk.name)
            if entry is not None:
                k = _entry_key(entry)
                i = max(0, bisect.bisect_right(lows, k) - 1)
                if not chunks or (i == len(chunks) - 1 and len(chunks[i].keys) >= CHUNK
                                  and (not chunks[i].keys or k > chunks[i].keys[-1])):
                    chunk = self._new_chunk(hook)  # after every other policy: a new chunk
                    chunks.append(chunk)
                    lows.append(k)
                    created.append((hook, chunk))
                    i = len(chunks) - 1
                chunk = chunks[i]
                if chunk.name not in touched and (not chunk.keys or k > chunk.keys[-1]):
                    grown.setdefault(chunk.name, len(chunk.keys))
                else:
                    touched.add(chunk.name)
                chunk.insert(entry)
                if len(chunk.keys) > 4 * CHUNK:
                    self.apply(spd)  # grown in the middle: cut it up again
                    return
        new_names = {chunk.name for _, chunk in created}
        lines: list[str] = []
        for _, chunk in created:
            lines.append(f"add chain inet {self.table} {chunk.name}")
        for chunks in state.values():
            for chunk in chunks:
                if chunk.name in new_names:
                    first = 0
                elif chunk.name in touched:
                    lines.append(f"flush chain inet {self.table} {chunk.name}")
                    first = 0
                elif chunk.name in grown:
                    first = grown[chunk.name]  # the chain holds the rules before
                else:
                    continue
                lines += [f"add rule inet {self.table} {chunk.name} {r}"
                          for r in chunk.rules[first:]]
        for hook, chunk in created:  # appended: after every chunk there is
            lines.append(f"add rule inet {self.table} {hook} jump {chunk.name}")
        if lines:
            self._nft("\n".join(lines) + "\n")
            self.batches += 1
        self._chunks = state

    def remove(self) -> None:
        if self.installed:
            self._nft(f"add table inet {self.table}\ndelete table inet {self.table}\n")
            self.installed = False
            self._chunks = None

    @staticmethod
    def _nft(script: str) -> None:
        import subprocess

        proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                              timeout=10, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nft: {proc.stderr.strip()}")


CHUNK = 64  # policy rules per chain of the cleartext filter (CleartextFilter)


@dataclass(slots=True)
class _Chunk:
    """One chain of the cleartext filter: consecutive policies' rules in SPD order."""

    name: str
    keys: list[tuple[int, int]]  # SPD sort keys, ascending
    entries: list[Any]
    rules: list[str]

    def append(self, entry: Any) -> None:
        self.keys.append(_entry_key(entry))
        self.entries.append(entry)
        self.rules.append(_cleartext_rule(entry.policy, entry.spid))

    def insert(self, entry: Any) -> None:
        k = _entry_key(entry)
        i = bisect.bisect_right(self.keys, k)
        self.keys.insert(i, k)
        self.entries.insert(i, entry)
        self.rules.insert(i, _cleartext_rule(entry.policy, entry.spid))

    def remove(self, k: tuple[int, int]) -> bool:
        i = bisect.bisect_left(self.keys, k)
        if i == len(self.keys) or self.keys[i] != k:
            return False
        del self.keys[i], self.entries[i], self.rules[i]
        return True


def _entry_key(entry: Any) -> tuple[int, int]:
    """An SPD entry's place in lookup order (unique within a direction)."""
    return (-entry.policy.priority, entry.order)


def _cleartext_rule(policy: Any, spid: int) -> str:
    sel = policy.selector
    ip = "ip" if sel.version == 4 else "ip6"
    match = [f"{ip} saddr {sel.src}", f"{ip} daddr {sel.dst}"]
    if sel.proto is not None:
        if sel.proto in (1, 58) and (sel.sport or sel.dport):
            icmp = "icmp" if sel.proto == 1 else "icmpv6"
            match.append(f"meta l4proto {sel.proto}")
            if sel.sport:
                match.append(f"{icmp} type {sel.sport}")
            if sel.dport:
                match.append(f"{icmp} code {sel.dport}")
        else:
            match.append(f"meta l4proto {sel.proto}")
            if sel.sport:
                match.append(f"th sport {sel.sport}")
            if sel.dport:
                match.append(f"th dport {sel.dport}")
    if policy.action is Action.IPSEC:
        verdict = "drop" if any(r.required for r in policy.requests) else "accept"
    else:
        verdict = "drop" if policy.action is Action.DISCARD else "accept"
    return " ".join(match) + f' counter {verdict} comment "spid {spid}"'


class Daemon:
    """One ipsecd instance; :meth:`run` is ``ipsecd run``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spd = SPD()
        self.sad = SAD()
        self.started = time.time()
        self.table: SATable | None = None
        self.policy_table: PolicyTable | None = None
        self.policy_publisher: PolicyPublisher | None = None  # deltas into policy_table
        self.tun_queue: Any = None
        self.routing: Any = None
        self.nft: Any = None
        self.cleartext: CleartextFilter | None = None
        self.server: ControlServer | None = None
        self.exporter: Exporter | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.workers: list[_WorkerState] = []
        self.slots: dict[tuple[SAKey, Direction], _Slot] = {}
        self.usage: dict[int, _Usage] = {}  # id(sa) -> usage
        # Lifetimes (_lifetimes): the installed slots by number, each slot's packet and byte
        # sums when last looked at, the SAs installed since, and per SA (by id) when a
        # time limit of it is next due, in a heap of (due, n, SA) hints.
        self._by_slot: dict[int, _Slot] = {}
        self._seen_counts: tuple[list[int], list[int]] = ([], [])
        self._life_new: dict[int, SecurityAssociation] = {}
        self._life_heap: list[tuple[float, int, SecurityAssociation]] = []
        self._life_due: dict[int, float] = {}
        self._life_seq = itertools.count()
        self.routes: dict[str, str | None] = {}  # prefix -> preferred source
        self.accounting = Accounting()  # per-child counters across rekeys, for the exporter
        self.tun_mtu = 1500
        self.local: set[IPAddress] = set()
        self._salt = secrets.token_bytes(32)
        self._seq_memory: dict[bytes, int] = {}
        self._seq_saved: dict[bytes, int] = {}
        self._order = 0
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._shm_names: list[str] = []
        self._rp_restore: dict[str, int] = {}
        self.expired = 0
        self._state_file = config.daemon.state_dir / f"{config.daemon.name}.state"
        self.ike: Any = None  # ipsecd.ike.manager.IkeManager when connections are configured
        self._trap_policies: dict[int, list[Any]] = {}  # reqid -> trap policy keys
        self._filters_pending: asyncio.TimerHandle | None = None
        self._route_cache: dict[IPAddress, tuple[float, SlotInfo]] = {}
        self._link_cache: dict[int, tuple[float, str, int]] = {}  # oif -> (until, name, MTU)
        self._ipr = threading.local()  # .handle: a pyroute2 IPRoute per thread
        self._ipr_handles: list[Any] = []
        self._rtnl: Any = None  # ipsecd.rtnl.Rtnl of _route_infos, in the loop's thread
        self._manual_reqids: set[int] = set()  # reqids of setkey's SAs and policies
        self._good_kinds: set[tuple[Any, ...]] = set()  # SA shapes whose context builds
        self._local_at = 0.0  # when self.local was last read from the kernel
        self._acquire_seen: dict[int, int] = {}  # worker -> ACQUIRES last read
        # Slots whose SA was removed, with the table generation of the removal: not reused
        # until the workers have added what they still counted for it (_settle).
        self._draining: dict[int, tuple[_Slot, int]] = {}
        self._ike_children: dict[int, list[Any]] = {}  # reqid -> live ChildSa objects
        self._ike_policies: dict[int, list[Any]] = {}  # reqid -> policy keys installed for it
        # Incremental state: what the last _sync made of the SAD's and SPD's journals.
        self._synced_local: frozenset[IPAddress] | None = None  # None: no sync yet
        self._outbound: dict[int, InstalledSA] = {}  # slot -> outbound SA, for the publisher
        self._slot_info: dict[int, SlotInfo] = {}  # outbound slot -> path MTU, interface
        self._dirty_slots: set[int] | None = set()  # not yet published (None: any)
        self._pub_changes: _Changes = None  # SPD journal not yet published (None: any)
        self._route_changes: _Changes = None  # ... not yet in _route_want
        self._filter_changes: _Changes = None  # ... not yet in the nft cleartext filter
        self._route_entries: dict[str, dict[Any, Any]] = {}  # prefix -> its out ipsec entries
        self._route_want: dict[str, str | None] = {}  # prefix -> preferred source
        self._route_local: frozenset[IPAddress] | None = None  # self.local _route_want is for
        # (version, source prefix) -> _route_source's answer for _route_local (emptied with it)
        self._route_sources: dict[tuple[int, Any], str | None] = {}
        self._route_retry: set[str] = set()  # prefixes whose route could not be set
        self._route_refresh_at = 0.0  # when the outbound slots' paths are asked again
        self._slot_cursor = 0  # where the search for a free SA slot starts
        # pyroute2's synchronous API runs an asyncio loop of its own, which it cannot
        # do in a thread where ours runs: netlink work goes to this thread instead.
        self._netlink = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink")

    def _nl(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (pyroute2 work) where pyroute2 can run, and wait for it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args)
        return self._netlink.submit(fn, *args).result()

    # -- start ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the event loop: state dir, shm, TUN, routes, nft, the script."""
        cfg = self.config
        self._prepare_state_dir()
        self._check_interfaces()
        self._load_seq_file()
        psk_table = self._load_psks()  # refused before anything is created
        script = self._load_script()
        name = f"ipsecd-{cfg.daemon.name}-{os.getpid()}"
        n_workers = cfg.daemon.worker_count
        self.table = SATable.create(f"{name}-sa", cfg.daemon.max_sas, n_workers,
                                    cfg.datapath.replay_window_max)
        self._shm_names.append(self.table.name)
        self.policy_table = PolicyTable(f"{name}-policy")
        self.policy_publisher = PolicyPublisher(self.policy_table)
        self._shm_names.append(self.policy_table.name)
        self._write_state()
        self._setup_tun()
        from ipsecd.nft import EspDropTable

        self.nft = EspDropTable(cfg.daemon.name, interfaces=cfg.datapath.outside,
                                nat_t_port=cfg.datapath.nat_t_port)
        try:
            self.nft.install()
        except Exception as exc:
            raise StartError(f"cannot install the nft table: {exc}") from None
        self.cleartext = CleartextFilter(cfg.daemon.name, cfg.datapath.tun)
        self._loosen_rp_filter()
        self.workers = [_WorkerState(k) for k in range(n_workers)]
        self.local = self._local_addresses()
        self._setup_ike(psk_table)
        if script is not None:
            try:
                self.apply_script(script, rfc_mode=cfg.setkey.rfc_mode)
            except RequestError as exc:
                raise StartError(str(exc)) from None
            finally:
                script.wipe()
        else:
            self._sync()

    def _load_psks(self) -> Any:
        if not self.config.ike.enabled:
            return None
        from ipsecd.ike.config import load_psks
        from ipsecd.ike.psk import PskFileError

        try:
            return load_psks(self.config.ike)
        except PskFileError as exc:
            raise StartError(str(exc)) from None

    def _setup_ike(self, psk_table: Any) -> None:
        ike_cfg = self.config.ike
        if not ike_cfg.enabled:
            return
        from ipsecd.ike.manager import IkeManager

        try:
            self.ike = IkeManager(ike_cfg, self, mark=self.config.datapath.mark,
                                  allow_legacy=self.config.daemon.allow_legacy,
                                  psk_table=psk_table)
            self.ike.open_sockets()
        except OSError as exc:
            raise StartError(f"IKE: {exc.strerror or exc}") from None
        except Exception as exc:
            raise StartError(f"IKE: {exc}") from None

    # -- IKE: the manager installs and removes Child SAs through these ----------------------

    def ike_spi_in_use(self, spi: int) -> bool:
        # SPIs are chosen by the receiver: unique among the SAs to our own addresses
        return any(self.sad.get(spi, IpProto.ESP, addr) is not None for addr in self.local)

    def ike_cpi_in_use(self, cpi: int) -> bool:
        # CPIs too are the receiver's choice (RFC 3173 §3.3), and setkey may have used one
        return any(self.sad.get(cpi, IpProto.IPCOMP, addr) is not None for addr in self.local)

    def ike_reqid_in_use(self, reqid: int) -> bool:
        return (reqid in self._ike_children or reqid in self._trap_policies
                or reqid in self._manual_reqids)

    def _child_policies(self, ike: Any, child: Any) -> list[Any]:
        return self._ts_policies(ike.local.address, ike.remote.address, child.mode, child.reqid,
                                 child.local_ts, child.remote_ts,
                                 ipcomp=child.ipcomp_in is not None)

    def _ts_policies(self, local: IPAddress, remote: IPAddress, mode: Any, reqid: int,
                     local_ts: Any, remote_ts: Any, *, ipcomp: bool = False) -> list[Any]:
        """out, in (and for tunnels fwd) policies for traffic selectors, bound to ``reqid``.

        With ``ipcomp`` the requests are ``ipcomp/MODE/.../unique esp/MODE/.../unique``
        (KAME order: compress first, then ESP).  The IPComp request is unique only to bind
        it to the child's reqid (the SPD gives a reqid to unique requests alone): the
        workers treat every IPComp request as optional (RFC 3173 §2.2), as Linux's
        templates for IPComp are.
        """
        from ipsecd.ike.ts import to_prefixes

        tunnel = mode is Mode.TUNNEL
        req_out = IpsecRequest(IpProto.ESP, mode, local if tunnel else None,
                               remote if tunnel else None, Level.UNIQUE, reqid)
        req_in = IpsecRequest(IpProto.ESP, mode, remote if tunnel else None,
                              local if tunnel else None, Level.UNIQUE, reqid)
        reqs_out: tuple[IpsecRequest, ...] = (req_out,)
        reqs_in: tuple[IpsecRequest, ...] = (req_in,)
        if ipcomp:
            reqs_out = (IpsecRequest(IpProto.IPCOMP, mode, req_out.src, req_out.dst,
                                     Level.UNIQUE, reqid), req_out)
            reqs_in = (IpsecRequest(IpProto.IPCOMP, mode, req_in.src, req_in.dst,
                                    Level.UNIQUE, reqid), req_in)
        out: list[Any] = []
        ipsec, d_out, d_in, d_fwd = (Action.IPSEC, PolicyDirection.OUT, PolicyDirection.IN,
                                     PolicyDirection.FWD)
        for lts in local_ts:
            lprefixes = None  # worked out for the first remote selector of its family
            for rts in remote_ts:
                if lts.start_address.version != rts.start_address.version:
                    continue
                proto = lts.ip_protocol or rts.ip_protocol or None
                lport = lts.start_port if lts.start_port == lts.end_port else 0
                rport = rts.start_port if rts.start_port == rts.end_port else 0
                if lprefixes is None:
                    lprefixes = to_prefixes(lts)
                for lp in lprefixes:
                    for rp in to_prefixes(rts):
                        out.append(Policy(Selector(lp, rp, proto, lport, rport),
                                          d_out, ipsec, reqs_out))
                        inbound = Selector(rp, lp, proto, rport, lport)
                        out.append(Policy(inbound, d_in, ipsec, reqs_in))
                        if tunnel:
                            out.append(Policy(inbound, d_fwd, ipsec, reqs_in))
        return out

    def ike_install_trap(self, local: IPAddress, remote: IPAddress, cfg: Any, reqid: int) -> None:
        """start_action = trap: the child's policies without SAs; the first packet that
        needs them makes the workers report an acquire (WorkerCounter.ACQUIRES)."""
        from ipsecd.ike.ts import to_selectors

        policies = self._ts_policies(local, remote, cfg.mode, reqid,
                                     to_selectors(cfg.local_ts, local),
                                     to_selectors(cfg.remote_ts, remote))
        spd2 = self.spd.copy()
        try:
            for policy in policies:
                spd2.update(policy)
            self._check_plan(spd2, self.sad)
        except Exception as exc:
            raise RequestError(str(exc)) from None
        self.spd.replace_with(spd2)
        self._trap_policies[reqid] = [p.key for p in policies]
        self._sync()

    def ike_remove_trap(self, reqid: int) -> None:
        for key in self._trap_policies.pop(reqid, []):
            entry = self.spd.get(*key)
            if entry is not None and any(r.reqid == reqid for r in entry.policy.requests) \
                    and reqid not in self._ike_children:
                with contextlib.suppress(Exception):
                    self.spd.delete(*key)
        self._sync()

    def _acquires(self) -> None:
        """Hand the workers' acquire reports (trap policies hit) to IKE."""
        if self.ike is None or self.table is None:
            return
        for w in self.workers:
            row = self.table.worker_counters(w.index)
            count = int(row[WorkerCounter.ACQUIRES])
            seen = self._acquire_seen.get(w.index, 0)  # the rows start at zero with the table
            self._acquire_seen[w.index] = count
            if count != seen:
                self.ike.acquire(int(row[WorkerCounter.ACQUIRE_REQID]))

    def ike_install_children(self, pairs: list[tuple[Any, Any]]) -> dict[int, str]:
        """Install Child SA pairs in one transaction; {id(child): why} for those refused.

        When the whole batch does not fit, each child is tried on its own, so one that
        cannot be installed does not take the others with it.
        """
        now = time.monotonic()
        if now - self._local_at > 1.0:  # a netlink round trip: not once per install under load
            self.local = self._nl(self._local_addresses)
            self._local_at = now
        # A transaction in place (savepoints), not on copies: a copy of the SPD and SAD
        # costs their size, thousands of entries, for the few this adds.
        spd, sad = self.spd, self.sad
        planned: list[tuple[Any, list[Any]]] = []
        failed: dict[int, str] = {}
        spd.savepoint()
        sad.savepoint()
        try:
            for ike, child in pairs:
                sas = [child.inbound, child.outbound]
                if child.ipcomp_in is not None and child.ipcomp_out is not None:
                    sas += [child.ipcomp_in, child.ipcomp_out]  # next to the ESP SAs
                for sa in sas:
                    sa.extra["ike"] = ike.name
                    sa.extra["child"] = child.name
                policies = self._child_policies(ike, child)
                for sa in sas:
                    sad.add(sa)
                for policy in policies:
                    spd.update(policy)
                planned.append((child, policies))
            self._check_plan(spd, sad)
        except Exception as exc:
            spd.rollback()
            sad.rollback()
            if len(pairs) == 1:
                return {id(pairs[0][1]): str(exc)}
            for pair in pairs:
                failed.update(self.ike_install_children([pair]))
            return failed
        spd.release()
        sad.release()
        for child, policies in planned:
            self._ike_children.setdefault(child.reqid, []).append(child)
            self._ike_policies[child.reqid] = [p.key for p in policies]
        self._sync(filters_now=False)
        return failed

    def ike_activate_outbound(self, child: Any) -> None:
        """A rekey responder's new outbound SA (installed larval) starts carrying traffic."""
        slots: list[int] = []
        changed = False
        for sa in (child.outbound, child.ipcomp_out):  # ESP, and IPComp with it
            if sa is not None and sa.state is SAState.LARVAL:
                sa.state = SAState.MATURE
                changed = True
                s = self.slots.get((sa.key, Direction.OUT))
                if s is not None and s.sa is sa:
                    slots.append(s.slot)
        if changed:
            self._publish(slots)

    def ike_remove_child(self, child: Any, linger: float) -> None:
        """Remove a Child SA pair: the outbound SA now, the inbound one after ``linger`` s."""
        with contextlib.suppress(Exception):
            self.sad.delete(child.outbound.spi, IpProto.ESP, child.outbound.dst)
        self._sad_discard(child.ipcomp_out)
        live = [c for c in self._ike_children.get(child.reqid, []) if c is not child]
        if live:
            self._ike_children[child.reqid] = live
        elif child.reqid in self._trap_policies:
            self._ike_children.pop(child.reqid, None)  # the trap stays: the next packet re-keys
            self._ike_policies.pop(child.reqid, None)
        else:
            self._ike_children.pop(child.reqid, None)
            for key in self._ike_policies.pop(child.reqid, []):
                entry = self.spd.get(*key)
                # another child (a reauthentication's, another connection's) may own it now
                if entry is not None and any(r.reqid == child.reqid for r in entry.policy.requests):
                    with contextlib.suppress(Exception):
                        self.spd.delete(*key)
        if linger > 0 and not self._stopping:
            try:
                asyncio.get_running_loop().call_later(linger, self._remove_inbound, child)
            except RuntimeError:
                self._remove_inbound(child, sync=False)
        else:
            self._remove_inbound(child, sync=False)
        self._sync(filters_now=False)

    def _remove_inbound(self, child: Any, sync: bool = True) -> None:
        if self.table is None:
            return
        removed = [self._sad_discard(sa) for sa in (child.inbound, child.ipcomp_in)]
        if any(removed) and sync:
            self._sync(filters_now=False)

    def _sad_discard(self, sa: SecurityAssociation | None) -> bool:
        """Delete ``sa`` from the SAD if it is still there (not a successor with its key)."""
        if sa is None or self.sad.get(sa.spi, sa.protocol, sa.dst) is not sa:
            return False
        self.sad.delete(sa.spi, sa.protocol, sa.dst)
        return True

    def _ike_lifetime_event(self, sa: SecurityAssociation, hard: bool) -> None:
        if self.ike is None or "ike" not in sa.extra:
            return
        try:
            if hard:
                self.ike.child_hard_expired(sa.reqid, sa.spi)
            else:
                self.ike.child_soft_expired(sa.reqid, sa.spi)
        except Exception:
            log.exception("IKE lifetime event")

    def _connection_name(self, request: dict[str, Any]) -> str:
        """The configured IKE connection a control request names (RequestError if none)."""
        name = request.get("name")
        if self.ike is None:
            raise RequestError("no IKE connections are configured")
        if not isinstance(name, str) or name not in self.ike.connections:
            raise RequestError(f"no connection named {name!r}")
        return name

    def cmd_initiate(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._connection_name(request)
        try:
            ike = self.ike.initiate(name)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return {"ike": ike.summary()}

    def cmd_terminate(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._connection_name(request)
        return {"terminated": self.ike.terminate(name)}

    def cmd_rekey(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._connection_name(request)
        return {"rekeying": self.ike.rekey(name, ike_sa=bool(request.get("ike", False)))}

    def cmd_list_sas(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.ike is None:
            return {"ike_sas": []}
        sas = self.ike.list_sas()
        # by protocol too: an IPComp SA's CPI may equal an ESP SPI
        by_spi = {(s.direction, s.sa.protocol, s.sa.spi): s for s in self.slots.values()}
        assert self.table is not None
        for ike in sas:
            for child in ike["children"]:
                for direction, key in ((Direction.IN, "spi_in"), (Direction.OUT, "spi_out")):
                    s = by_spi.get((direction, IpProto.ESP, int(child[key], 16)))
                    row = self.table.sum_sa_counters(s.slot) if s is not None else None
                    suffix = direction.name.lower()
                    child[f"packets_{suffix}"] = int(row[SACounter.PACKETS]) if row else 0
                    child[f"bytes_{suffix}"] = int(row[SACounter.BYTES]) if row else 0
        return {"ike_sas": sas}

    def cmd_list_conns(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"connections": self.ike.list_conns() if self.ike is not None else []}

    def _prepare_state_dir(self) -> None:
        state = self.config.daemon.state_dir
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = state.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                os.chmod(state, 0o700)
        except OSError as exc:
            raise StartError(f"state directory {state}: {exc.strerror or exc}") from None
        sock = self.config.control.socket
        try:
            sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            prepare_socket_path(sock)
        except ControlError as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"control socket {sock}: {exc.strerror or exc}") from None
        # Shared memory a crashed predecessor left behind.
        try:
            old = orjson.loads(self._state_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            for shm in old.get("shm", []):
                if isinstance(shm, str) and shm.startswith("ipsecd-"):
                    if shm.endswith("-sa"):
                        SATable.unlink_stale(shm)
                    else:
                        PolicyTable.unlink_stale(shm)

    # -- outbound sequence numbers of manual SAs across restarts ---------------------------
    #
    # An SA keyed by hand (setkey) comes back with the same keys after a restart; starting
    # its sequence numbers at 1 again would repeat AES-GCM/ChaCha20 nonces.  The control
    # process writes, every tick, the last sequence number of every such outbound SA under
    # a keyed hash of SPI, destination and keys (the salt lives in the same 0600 file), and
    # a restart continues SEQ_RESTART_MARGIN above it: far more than the workers can send
    # between two ticks, so numbers used after the last write are skipped, never repeated.

    def _load_seq_file(self) -> None:
        path = self.config.daemon.seq_file
        if path is None:
            return
        try:
            data = orjson.loads(path.read_bytes())
            salt = bytes.fromhex(data["salt"])
            seqs = {bytes.fromhex(k): int(v) for k, v in data["seq"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError,
                orjson.JSONDecodeError) as exc:
            raise StartError(f"{path}: unreadable sequence-number file ({exc}); remove it only "
                             "if every manually keyed SA gets new keys") from None
        if len(salt) != 32:
            raise StartError(f"{path}: bad salt in the sequence-number file")
        self._salt = salt
        self._seq_memory = {fp: seq + SEQ_RESTART_MARGIN for fp, seq in seqs.items()}
        self._seq_saved = {}
        log.info("sequence numbers of %d manually keyed SA(s) restored from %s", len(seqs), path)

    def _save_seq_file(self) -> None:
        path = self.config.daemon.seq_file
        if path is None or self.table is None:
            return
        seqs = dict(self._seq_memory)
        for s in self.slots.values():
            if s.direction is Direction.OUT and "ike" not in s.sa.extra:
                seqs[s.fingerprint] = max(seqs.get(s.fingerprint, 0), self.table.last_seq(s.slot))
        if seqs == self._seq_saved:
            return
        data = orjson.dumps({"salt": self._salt.hex(),
                             "seq": {fp.hex(): seq for fp, seq in seqs.items()}})
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot save sequence numbers to %s: %s", path, exc.strerror or exc)
            return
        self._seq_saved = seqs

    def _write_state(self) -> None:
        data = orjson.dumps({"pid": os.getpid(), "shm": self._shm_names})
        tmp = self._state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self._state_file)

    def _check_interfaces(self) -> None:
        for name in self.config.datapath.outside:
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise StartError(f"{self.config.path}: datapath.outside: no interface named "
                                 f"{name!r} in this network namespace") from None

    def _load_script(self) -> Script | None:
        path = self.config.setkey.script
        if path is None:
            return None
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise StartError(f"setkey script {path}: {exc.strerror or exc}") from None
        try:
            script = parse(text, str(path), allow_legacy=self.config.daemon.allow_legacy)
        except SetkeyError as exc:
            raise StartError(str(exc)) from None
        for warning in script.warnings:
            log.warning("%s", warning)
        return script

    def _loosen_rp_filter(self) -> None:
        """Strict reverse-path filtering on an outside interface breaks transport mode.

        Packets from a peer whose address we route into the TUN arrive on the
        outside interface (its ARP requests, anything it sends in clear), and
        the strict check wants the route back to point there.  Loose mode
        (2) still checks that the source is routable at all.  The effective
        value is the larger of ``all`` and the interface's, so raising the
        interface's to 2 is enough; it is put back at shutdown.
        """
        base = "/proc/sys/net/ipv4/conf"
        try:
            with open(f"{base}/all/rp_filter") as fh:
                all_value = int(fh.read())
        except (OSError, ValueError):
            return
        for name in self.config.datapath.outside:
            path = f"{base}/{name}/rp_filter"
            try:
                with open(path) as fh:
                    value = int(fh.read())
                if max(all_value, value) != 1:
                    continue
                with open(path, "w") as fh:
                    fh.write("2\n")
            except (OSError, ValueError) as exc:
                log.warning("%s: cannot make rp_filter loose: %s", name, exc)
                continue
            self._rp_restore[path] = value
            log.log(25, "%s: rp_filter set to loose (2) while ipsecd runs (was strict)", name)

    def _setup_tun(self) -> None:
        from workers import tun

        cfg = self.config.datapath
        mtu = cfg.mtu
        if mtu is None:
            mtu = min(_link_mtu(name) for name in cfg.outside)
        self.tun_mtu = mtu
        try:
            self.tun_queue = tun.create(cfg.tun, vnet_hdr=cfg.gro)
            tun.configure(cfg.tun, mtu=mtu, addresses=cfg.tun_addresses)
        except OSError as exc:
            raise StartError(f"TUN device {cfg.tun}: {exc.strerror or exc}") from None
        self.routing = tun.PolicyRouting(cfg.tun, table=cfg.route_table, mark=cfg.mark,
                                         priority=cfg.rule_priority)
        self.routing.remove()  # leftovers of a crashed predecessor
        self.routing.install()

    # -- the SAD -> SA table -> policy table --------------------------------------------------

    def _local_addresses(self) -> set[IPAddress]:
        from pyroute2 import IPRoute

        out: set[IPAddress] = set()
        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr:
                    with contextlib.suppress(ValueError):
                        out.add(ipaddress.ip_address(addr.split("%")[0]))
        return out

    def _desired(self, sad: SAD) -> dict[tuple[SAKey, Direction], SecurityAssociation]:
        want: dict[tuple[SAKey, Direction], SecurityAssociation] = {}
        for sa in sad.dump():
            if sa.state is SAState.DEAD:
                continue
            if sa.dst in self.local:
                want[(sa.key, Direction.IN)] = sa
            if sa.src in self.local:
                want[(sa.key, Direction.OUT)] = sa
        return want

    def _plan(self, sad: SAD, changes: list[SAKey] | None,
              ) -> list[tuple[tuple[SAKey, Direction], SecurityAssociation | None]]:
        """(slot key, the SA it should hold or None) for every slot key that may differ from
        self.slots: from the SAD's journal ``changes`` when the slots matched the SAD before
        them (an earlier sync, same local addresses), else for all.  SAD order."""
        if changes is None or self._synced_local != frozenset(self.local):
            want = self._desired(sad)
            plan: list[tuple[tuple[SAKey, Direction], SecurityAssociation | None]] = list(
                want.items())
            plan += [(key, None) for key in self.slots if key not in want]
            return plan
        plan = []
        local = self.local
        for key in changes:
            sa = sad.get(*key)
            if sa is None or sa.state is SAState.DEAD:
                plan += [((key, Direction.IN), None), ((key, Direction.OUT), None)]
                continue
            plan.append(((key, Direction.IN), sa if sa.dst in local else None))
            plan.append(((key, Direction.OUT), sa if sa.src in local else None))
        return plan

    def _check_plan(self, spd: SPD, sad: SAD) -> None:
        """Refuse (RequestError) a result the datapath could not take; nothing is changed."""
        assert self.table is not None and self.policy_table is not None
        staying = len(self.slots)
        n_out = len(self._outbound)
        new: list[SecurityAssociation] = []
        for key, sa in self._plan(sad, sad.changes()):
            s = self.slots.get(key)
            if s is not None and s.sa is not sa:
                staying -= 1
                n_out -= key[1] is Direction.OUT
            if sa is not None and (s is None or s.sa is not sa):
                new.append(sa)
                n_out += key[1] is Direction.OUT
        if staying + len(new) > self.table.n_slots:
            raise RequestError(f"the SA table is full: {staying + len(new)} slots needed, "
                               f"{self.table.n_slots} configured (daemon.max_sas)")
        for sa in {id(sa): sa for sa in new}.values():
            if sa.replay_window > self.table.replay_bytes * 8:
                raise RequestError(f"SA {sa.spi:#x}: replay window {sa.replay_window} is larger "
                                   f"than datapath.replay_window_max")
            # What decides whether a context builds: algorithms, key sizes, mode, ESN, UDP.
            # IKE installs the same kinds of SA one after another; check each kind once.
            kind = (sa.protocol, sa.enc, len(sa.enc_key), sa.auth, len(sa.auth_key), sa.esn,
                    sa.mode, sa.encap is not None, sa.src.version, sa.legacy, sa.comp,
                    sa.spi if sa.protocol == IpProto.IPCOMP else 0)
            if kind in self._good_kinds:
                continue
            try:
                if sa.protocol == IpProto.AH:
                    AhContext(sa, allow_legacy=self.config.daemon.allow_legacy)
                elif sa.protocol == IpProto.IPCOMP:
                    IpcompContext(sa)  # the algorithm, and the CPI (RFC 3173 §3.3)
                else:
                    EspContext(sa, allow_legacy=self.config.daemon.allow_legacy)
            except (TransformError, ValueError) as exc:
                raise RequestError(f"SA {sa.spi:#x} to {sa.dst}: {exc}") from None
            if not sa.legacy:  # a legacy SA is checked (and warned about) every time
                self._good_kinds.add(kind)
        assert self.policy_publisher is not None
        changes = self._pub_changes
        if changes is not None:  # copied: the merge must not change what _publish will use
            changes = _merge(dict(changes), spd.changes())
        try:
            self.policy_publisher.check(spd, n_out, self.local, changes)
        except PolicyTableFull as exc:
            raise RequestError(str(exc)) from None

    def _sync(self, *, filters_now: bool = True) -> None:
        """Bring the SA table, the policy table and the routes in line with the SAD and SPD.

        ``filters_now=False`` (IKE installs, which come one after another under load)
        coalesces the nft update of the cleartext filter into one a moment later.
        """
        assert self.table is not None and self.policy_table is not None
        table = self.table
        plan = self._plan(self.sad, self.sad.take_changes())
        self._synced_local = frozenset(self.local)
        self._settle()
        # Remove first: slots freed here may be reused below (once drained).
        retired: list[SecurityAssociation] = []
        for key, want in plan:
            s = self.slots.get(key)
            if s is None or s.sa is want:
                continue
            self._retire(s)
            del self.slots[key]
            self._by_slot.pop(s.slot, None)
            retired.append(s.sa)
        for key, sa in plan:
            if sa is None or key in self.slots:
                continue
            direction = key[1]
            # The fingerprint serves outbound SAs only: to continue a remembered sequence
            # number and, for manual keys, to be remembered (_remember_seq, _save_seq_file).
            # IKE's are never remembered: with no memory at all there is nothing to look up
            # (a keyed hash costs microseconds, and IKE installs thousands).
            fp = b""
            if direction is Direction.OUT and (self._seq_memory or "ike" not in sa.extra):
                fp = _fingerprint(self._salt, sa)
                sa.seq = max(sa.seq, self._seq_memory.get(fp, 0))
            slot = self._free_slot()
            uid = table.install(slot, sa, direction)
            self._order += 1
            self.slots[key] = self._by_slot[slot] = _Slot(sa, slot, uid, direction,
                                                          self._order, fp)
            self._life_new[id(sa)] = sa  # looked at by the next _lifetimes
            if direction is Direction.OUT:
                self._outbound[slot] = InstalledSA(sa, slot, self._order)
                self._mark_dirty(slot)
            self.accounting.install(slot, uid, sa, direction.name.lower(), self.sad.created(sa))
            # IKE's SAs: its "CHILD_SA ... established" line names them already (and the
            # arguments are only worked out for a line that is written: enum names are
            # properties in Python)
            level = logging.DEBUG if "ike" in sa.extra else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "SA %s spi %#x %s -> %s installed in slot %d (%s)",
                        sa.protocol.name.lower(), sa.spi, sa.src, sa.dst, slot,
                        direction.name.lower())
        for sa in retired:  # lifetime bookkeeping is per SA: gone with its last slot
            if all(getattr(self.slots.get((sa.key, d)), "sa", None) is not sa
                   for d in Direction):
                self.usage.pop(id(sa), None)
        self._publish()
        self._sync_routes()
        if not filters_now:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if self._filters_pending is None:
                    self._filters_pending = loop.call_later(FILTER_DELAY, self._apply_filters)
                return
        self._apply_filters()

    def _apply_filters(self) -> None:
        if self._filters_pending is not None:
            self._filters_pending.cancel()
            self._filters_pending = None
        if self.cleartext is not None and not self._stopping:
            self._take_spd_changes()
            changes, self._filter_changes = self._filter_changes, {}
            try:
                self.cleartext.apply(self.spd, changes)
            except Exception as exc:
                log.error("inbound policy filter (nft): %s", exc)
                self._filter_changes = None  # written whole next time

    def _retire(self, s: _Slot) -> None:
        assert self.table is not None
        # The last number is final once remove() returns: a worker that has not seen the
        # removal yet can no longer take numbers for this SA (SATable.alloc_seq checks uid).
        self._remember_seq(s, self.table.remove(s.slot))
        # A worker may still hold packets it counted on the SA before it saw the removal
        # (it adds its counts once per loop turn): the slot drains - its counters still
        # count for the child, it is not reused - until _settle sees them final.
        self.accounting.drain(s.slot)
        self._draining[s.slot] = (s, self.table.generation)
        if s.direction is Direction.OUT:
            self._outbound.pop(s.slot, None)
            self._slot_info.pop(s.slot, None)
            self._mark_dirty(s.slot)
        log.log(logging.DEBUG if "ike" in s.sa.extra else logging.INFO,
                "SA spi %#x %s -> %s removed from slot %d", s.sa.spi, s.sa.src, s.sa.dst, s.slot)

    def _remember_seq(self, s: _Slot, last: int) -> None:
        if s.direction is Direction.OUT and "ike" not in s.sa.extra:  # IKE keys never return
            self._seq_memory[s.fingerprint] = max(self._seq_memory.get(s.fingerprint, 0), last)

    def _settle(self) -> None:
        """Free the draining slots that every running worker has flushed its counts for."""
        if not self._draining or self.table is None:
            return
        done = self.table.flushed_generation(
            w.index for w in self.workers if w.process is not None)
        for slot, (_, removed_at) in list(self._draining.items()):
            if removed_at <= done:
                self._settled(slot)

    def _settled(self, slot: int) -> None:
        assert self.table is not None
        self._draining.pop(slot)
        self.accounting.retire(slot, self.table)  # final counters into the child's totals

    def _free_slot(self) -> int:
        """A free slot for a new SA; one still draining only when the table has no other."""
        assert self.table is not None
        try:
            # from the last one taken on: the slots below it are most likely in use
            slot = self._slot_cursor = self.table.free_slot(exclude=self._draining,
                                                            start=self._slot_cursor)
            return slot
        except TableFull:
            if not self._draining:
                raise
        # A full table: the oldest removal is taken before the workers said they are done
        # with it (they most likely are; a count still in flight would be lost).
        slot = min(self._draining, key=lambda k: self._draining[k][1])
        self._settled(slot)
        return slot

    def _mark_dirty(self, slot: int) -> None:
        if self._dirty_slots is not None:
            self._dirty_slots.add(slot)

    def _take_spd_changes(self) -> None:
        """Hand the SPD's journal to the publisher and the routes (each takes its share when
        it runs)."""
        changes = self.spd.take_changes()
        if changes is None or changes:
            self._pub_changes = _merge(self._pub_changes, changes)
            self._route_changes = _merge(self._route_changes, changes)
            self._filter_changes = _merge(self._filter_changes, changes)

    def _publish(self, dirty: Iterable[int] | None = ()) -> None:
        """Publish the policy table: the SPD's changes and those of the ``dirty`` slots (and
        of slots installed or removed since the last publication); ``None``: every slot."""
        assert self.policy_table is not None and self.policy_publisher is not None
        self._take_spd_changes()
        if dirty is None or self._dirty_slots is None:
            self._dirty_slots = None
        else:
            self._dirty_slots.update(dirty)
        outbound = self._outbound
        if self._dirty_slots is None:
            missing = list(outbound)
        else:
            missing = [slot for slot in self._dirty_slots
                       if slot in outbound and slot not in self._slot_info]
        if missing:
            now = time.monotonic()
            stale = list({outbound[slot].sa.dst for slot in missing
                          if self._route_cache.get(outbound[slot].sa.dst, (0.0,))[0] < now})
            if stale:  # one netlink exchange for all of them
                found = self._route_infos(stale)
                for dst, got in zip(stale, found, strict=True):
                    self._route_cache[dst] = (now + ROUTE_CACHE_SECONDS, got)
            for slot in missing:
                self._slot_info[slot] = self._route_cache[outbound[slot].sa.dst][1]
            if len(self._route_cache) > 4 * len(outbound) + 64:
                self._route_cache = {k: v for k, v in self._route_cache.items() if v[0] >= now}
        try:
            self.policy_publisher.publish(self.spd, outbound, self.local, self._slot_info,
                                          policy_changes=self._pub_changes,
                                          dirty_slots=self._dirty_slots)
        except BaseException:
            self._pub_changes = self._dirty_slots = None  # the next one diffs everything
            raise
        self._pub_changes, self._dirty_slots = {}, set()

    def _refresh_paths(self) -> None:
        """Every ROUTE_CACHE_SECONDS: the path (MTU, interface) of every outbound slot asked
        again, and published where it changed."""
        now = time.monotonic()
        if now < self._route_refresh_at or self.policy_publisher is None:
            return
        self._route_refresh_at = now + ROUTE_CACHE_SECONDS
        if not self._outbound:
            return
        self._slot_info.clear()  # _publish asks for each again (the expired ones by netlink)
        self._publish(list(self._outbound))

    def _route_infos(self, dsts: list[IPAddress]) -> list[SlotInfo]:
        """Path MTU and outside interface of the routes to ``dsts`` (our own rtnetlink client,
        plain sockets: in the calling thread; the interfaces not cached, through pyroute2
        in the netlink thread)."""
        from ipsecd.rtnl import Rtnl

        try:
            # One socket kept for the daemon's life (IKE asks at every install batch; making,
            # binding and closing one each time cost about as much as the requests), made
            # again after any error.  The control process never changes network namespace.
            if self._rtnl is None:
                self._rtnl = Rtnl()
            routes = self._rtnl.get_routes(dsts, self.config.datapath.mark)  # sent together
        except OSError:
            if self._rtnl is not None:
                self._rtnl.close()
                self._rtnl = None
            return [SlotInfo(self.tun_mtu, "")] * len(dsts)
        now = time.monotonic()
        oifs = {route.oif for route in routes.values() if route is not None and route.oif}
        unknown = [oif for oif in oifs if self._link_cache.get(oif, (0.0,))[0] < now]
        if unknown:
            self._nl(lambda: [self._link_info(oif) for oif in unknown])
        out = []
        for dst in dsts:
            route = routes.get(dst)
            cached = self._link_cache.get(route.oif) if route is not None and route.oif else None
            link = (cached[1], cached[2]) if cached is not None else None
            if route is None or link is None:
                out.append(SlotInfo(self.tun_mtu, ""))
                continue
            ifname, mtu = link
            out.append(SlotInfo(min(mtu, route.mtu) if route.mtu else mtu, ifname))
        return out

    def _link_info(self, oif: int) -> tuple[str, int] | None:
        """Name and MTU of interface ``oif``, asked again after ROUTE_CACHE_SECONDS (peers
        share a few interfaces)."""
        now = time.monotonic()
        cached = self._link_cache.get(oif)
        if cached is not None and cached[0] >= now:
            return cached[1], cached[2]
        ipr = getattr(self._ipr, "handle", None)
        try:
            if ipr is None:  # one netlink socket per thread (pyroute2 is not thread-safe)
                from pyroute2 import IPRoute

                ipr = self._ipr.handle = IPRoute()
                self._ipr_handles.append(ipr)
            link = ipr.get_links(oif)[0]
            cached = (now + ROUTE_CACHE_SECONDS, str(link.get_attr("IFLA_IFNAME")),
                      int(link.get_attr("IFLA_MTU")))
        except Exception:
            return None
        self._link_cache[oif] = cached
        return cached[1], cached[2]

    def _sync_routes(self) -> None:
        if self.routing is None:
            return
        self._take_spd_changes()
        changed = self._update_route_want()
        want = self._route_want
        prefixes: Iterable[str] = (want.keys() | self.routes.keys() if changed is None
                                   else changed | self._route_retry)
        gone = [p for p in prefixes if p not in want and p in self.routes]
        add = [(p, want[p]) for p in prefixes if p in want and self.routes.get(p, "-") != want[p]]
        if gone or add:  # else (the common case under IKE load) no netlink round trip at all
            self._apply_routes(add, gone)  # our own rtnetlink client: plain sockets

    def _update_route_want(self) -> set[str] | None:
        """Bring ``_route_want`` (what :meth:`_wanted_routes` gives) up to date from the
        SPD's journal; the prefixes whose route changed, None when all were recomputed."""
        changes, self._route_changes = self._route_changes, {}
        local = frozenset(self.local)
        if changes is None or local != self._route_local:
            self._route_local = local
            self._route_sources = {}
            self._route_entries = {}
            for entry in self.spd.entries(PolicyDirection.OUT):
                if entry.policy.action is Action.IPSEC:
                    self._route_entries.setdefault(str(entry.policy.selector.dst), {})[
                        entry.policy.key] = entry
            self._route_want = self._wanted_routes()
            return None
        touched: set[str] = set()
        for key, old in changes.items():
            if key[1] is not PolicyDirection.OUT:
                continue
            new = self.spd.get(*key)
            if new is old:
                continue
            prefix = str(key[0].dst)
            if old is not None and old.policy.action is Action.IPSEC:
                group = self._route_entries.get(prefix)
                if group is not None and group.get(key) is old:
                    del group[key]
                touched.add(prefix)
            if new is not None and new.policy.action is Action.IPSEC:
                self._route_entries.setdefault(prefix, {})[key] = new
                touched.add(prefix)
        for prefix in touched:
            group = self._route_entries.get(prefix)
            if group:
                first = min(group.values(), key=lambda e: (-e.policy.priority, e.order))
                self._route_want[prefix] = self._route_source(first.policy)
            else:
                self._route_entries.pop(prefix, None)
                self._route_want.pop(prefix, None)
        return touched

    def _route_source(self, policy: Any) -> str | None:
        """The preferred source of the route for an out policy: a local address of its
        selector's source prefix (the lowest, as text).  Remembered per prefix for the
        local addresses of ``_route_local`` (IKE's children share a few source prefixes,
        and each answer formats every local address)."""
        selector = policy.selector
        key = (selector.version, selector.src)
        try:
            return self._route_sources[key]
        except KeyError:
            pass
        source = min((str(a) for a in self.local if a.version == selector.version
                      and a in selector.src), default=None)
        if len(self._route_sources) >= 4096:
            self._route_sources.clear()
        self._route_sources[key] = source
        return source

    def _wanted_routes(self) -> dict[str, str | None]:
        """Prefix -> preferred source of the routes into the TUN, from the whole SPD."""
        want: dict[str, str | None] = {}
        local = sorted(self.local, key=str)
        for entry in self.spd.entries(PolicyDirection.OUT):
            policy = entry.policy
            if policy.action is not Action.IPSEC:
                continue
            prefix = str(policy.selector.dst)
            if prefix in want:
                continue
            want[prefix] = next((str(a) for a in local if a.version == policy.selector.version
                                 and a in policy.selector.src), None)
        return want

    def _apply_routes(self, add: list[tuple[str, str | None]], gone: list[str]) -> None:
        assert self.routing is not None
        for prefix in gone:
            del self.routes[prefix]
            self._route_retry.discard(prefix)
        # One netlink socket for the whole change (IKE adds a route per Child SA).
        failed: dict[str, Exception]
        try:
            failed = self.routing.set_peers(add, gone)
        except Exception as exc:
            failed = {prefix: exc for prefix, _ in add}
        for prefix, src in add:
            if prefix in failed:
                log.error("route %s into %s: %s", prefix, self.config.datapath.tun,
                          failed[prefix])
                self._route_retry.add(prefix)  # tried again at the next change
            else:
                self.routes[prefix] = src
                self._route_retry.discard(prefix)

    # -- setkey ----------------------------------------------------------------------------

    def apply_script(self, script: Script, *, rfc_mode: bool = True,
                     show_keys: bool = False) -> dict[str, Any]:
        """Apply a parsed script atomically (SAD, SPD and datapath); RequestError if refused."""
        self._refresh_seq()
        self.local = self._nl(self._local_addresses)
        spd2, sad2 = self.spd.copy(), self.sad.copy()
        live = {id(sa) for sa in self.sad.dump()}
        try:
            result = apply(script, spd2, sad2, rfc_mode=rfc_mode, show_keys=show_keys,
                           pid=os.getpid())
            self._check_plan(spd2, sad2)
        except (SetkeyError, RequestError) as exc:
            for sa in sad2.dump():
                if id(sa) not in live:
                    sa.wipe()
            raise RequestError(str(exc)) from None
        self.sad.replace_with(sad2)
        self.spd.replace_with(spd2)
        self._manual_reqids = ({sa.reqid for sa in self.sad.dump() if "ike" not in sa.extra}
                               | {r.reqid for p in self.spd for r in p.requests})
        self._sync()
        return {"changes": result.changes, "output": result.output,
                "warnings": [str(w) for w in script.warnings]}

    def _refresh_seq(self) -> None:
        """Copy the shared outbound counters into the SAD's SAs (dumps show ``seq=``)."""
        if self.table is None:
            return
        for s in self.slots.values():
            if s.direction is Direction.OUT:
                s.sa.seq = max(s.sa.seq, self.table.last_seq(s.slot))

    # -- control commands ---------------------------------------------------------------------

    def cmd_setkey(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply one or more scripts (``sources``: [[name, text], ...]) as one transaction."""
        sources = request.get("sources")
        if sources is None and "script" in request:
            sources = [[request.get("name", "<control>"), request["script"]]]
        if (not isinstance(sources, list) or not sources
                or not all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                           and isinstance(x[1], str) for x in sources)):
            raise RequestError("setkey: expected sources: [[name, script text], ...]")
        rfc_mode = request.get("rfc_mode", self.config.setkey.rfc_mode)
        scripts: list[Script] = []
        try:
            for name, text in sources:
                scripts.append(parse(text, name, allow_legacy=self.config.daemon.allow_legacy))
            combined = Script(sources[0][0], [op for sc in scripts for op in sc.ops],
                              [w for sc in scripts for w in sc.warnings])
            return self.apply_script(combined, rfc_mode=bool(rfc_mode),
                                     show_keys=bool(request.get("show_keys", False)))
        except SetkeyError as exc:
            raise RequestError(str(exc)) from None
        finally:
            for sc in scripts:
                sc.wipe()

    def cmd_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def cmd_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        assert self.table is not None
        table = self.table
        self._refresh_seq()
        now_mono = time.monotonic_ns()
        workers = []
        for w in self.workers:
            wrow = table.worker_counters(w.index)
            hb = int(wrow[WorkerCounter.HEARTBEAT_NS])
            alive = w.process is not None and w.process.is_alive()
            workers.append({
                "index": w.index,
                "pid": w.pid,
                "alive": alive,
                "running": alive and hb != 0 and now_mono - hb < HEARTBEAT_TIMEOUT * 1e9
                           and hb >= int(w.started * 1e9),
                "restarts": w.restarts,
                "heartbeat_age": round((now_mono - hb) / 1e9, 3) if hb else None,
                "packets_in": int(wrow[WorkerCounter.PACKETS_IN]),
                "packets_out": int(wrow[WorkerCounter.PACKETS_OUT]),
                "ring_drops": int(wrow[WorkerCounter.RING_DROPS]),
                "busy_seconds": round(int(wrow[WorkerCounter.BUSY_NS]) / 1e9, 3),
                "drops": _drops(wrow[WorkerCounter.DROPS + i] for i in range(DROP_COLUMNS)),
            })
        policies = []
        for entry in self.spd.entries():
            p = entry.policy
            policies.append({
                "direction": p.direction.value,
                "src": str(p.selector.src),
                "dst": str(p.selector.dst),
                "proto": p.selector.proto,
                "sport": p.selector.sport,
                "dport": p.selector.dport,
                "action": p.action.value,
                "requests": [dump.format_request(r) for r in p.requests],
                "priority": p.priority,
                "auto": entry.auto,
                "text": " ".join(line.strip() for line in dump.format_policy_lines(p)),
            })
        sas = []
        by_sa: dict[int, list[_Slot]] = {}
        for s in self.slots.values():
            by_sa.setdefault(id(s.sa), []).append(s)
        for sa in self.sad.dump():
            slots = by_sa.get(id(sa), [])
            totals = [0] * SA_COUNTER_COLUMNS
            for s in slots:
                row = table.sum_sa_counters(s.slot)
                for i, v in enumerate(row):
                    totals[i] = max(totals[i], v) if i == SACounter.LAST_USED_NS else totals[i] + v
            sas.append({
                "spi": sa.spi,
                "spi_hex": f"0x{sa.spi:08x}",
                "protocol": sa.protocol.name.lower(),
                "src": str(sa.src),
                "dst": str(sa.dst),
                "mode": sa.mode.value,
                "state": sa.state.value,
                "direction": ",".join(s.direction.name.lower() for s in slots) or None,
                "slots": [s.slot for s in slots],
                "algorithms": _algorithms(sa),
                "keys": sa.describe_keys(),
                "seq": sa.seq,
                "packets": totals[SACounter.PACKETS],
                "bytes": totals[SACounter.BYTES],
                "last_used": totals[SACounter.LAST_USED_NS] / 1e9 or None,
                "created": self.sad.created(sa),
                "drops": _drops(totals[SACounter.DROPS + i] for i in range(DROP_COLUMNS)),
            })
        return {
            "version": __version__,
            "pid": os.getpid(),
            "instance": self.config.daemon.name,
            "config": str(self.config.path),
            "uptime": round(time.time() - self.started, 3),
            "tun": self._tun_status(),
            "outside": list(self.config.datapath.outside),
            "metrics": None if self.metrics_address is None else
            f"{self.metrics_address[0]}:{self.metrics_address[1]}",
            "workers": workers,
            "policies": policies,
            "sas": sas,
            "drops": self._drop_totals(),
            "expired": self.expired,
            "routes": sorted(self.routes),
            "ike": self.ike.metrics() if self.ike is not None else None,
        }

    def _drop_totals(self) -> dict[str, int]:
        assert self.table is not None
        totals = self.accounting.drop_totals(self.table)
        for w in range(self.table.n_workers):
            wrow = self.table.worker_counters(w)
            for i in range(DROP_COLUMNS):
                totals[i] += int(wrow[WorkerCounter.DROPS + i])
        return _drops(totals)

    def _tun_status(self) -> dict[str, Any]:
        out, inb = tun_dropped(self.config.datapath.tun) or (0, 0)
        return {"name": self.config.datapath.tun, "mtu": self.tun_mtu,
                "dropped": {"outbound": out, "inbound": inb}}

    def metrics_snapshot(self) -> Snapshot:
        """Called from the exporter's thread: shared counters and the accounting only."""
        table = self.table
        if table is None:
            return Snapshot()
        traffic = self.accounting.snapshot(table, per_sa=self.config.metrics.sa_labels)
        worker_drops = [0] * DROP_COLUMNS
        workers = []
        for w in list(self.workers):
            wrow = table.worker_counters(w.index)
            for i in range(DROP_COLUMNS):
                worker_drops[i] += int(wrow[WorkerCounter.DROPS + i])
            proc = w.process
            workers.append(WorkerSample(
                w.index, proc is not None and proc.is_alive(), w.restarts,
                int(wrow[WorkerCounter.PACKETS_IN]), int(wrow[WorkerCounter.PACKETS_OUT]),
                int(wrow[WorkerCounter.RING_DROPS]), int(wrow[WorkerCounter.BUSY_NS]) / 1e9))
        ike_sample = None
        ike = self.ike
        finished = ike.last_metrics if ike is not None else None
        if finished is not None:
            # Only the finished dict the event loop built (and never changes afterwards) and
            # the frozen configuration are read here: nothing calls into the IKE manager.
            autostart = {c.name for c in self.config.ike.connections
                         if any(ch.start_action == "start" for ch in c.children)}
            ike_sample = IkeSample.from_manager(finished, autostart=autostart)
        return Snapshot(traffic=traffic, worker_drops=worker_drops, workers=workers,
                        policies=len(self.spd), ike=ike_sample,
                        tun_dropped=tun_dropped(self.config.datapath.tun))

    # -- workers ---------------------------------------------------------------------------

    def _spec(self, index: int) -> Any:
        from workers.worker import WorkerSpec

        assert self.table is not None and self.policy_table is not None
        cfg = self.config
        return WorkerSpec(
            index=index, count=len(self.workers), table=self.table.name,
            policy=self.policy_table.name, tun=cfg.datapath.tun, outside=cfg.datapath.outside,
            mark=cfg.datapath.mark, tx=cfg.datapath.tx, nat_t_port=cfg.datapath.nat_t_port,
            allow_legacy=cfg.daemon.allow_legacy, log_level=cfg.daemon.level,
            tun_mtu=self.tun_mtu, gro=cfg.datapath.gro)

    def _start_worker(self, w: _WorkerState) -> None:
        import multiprocess

        from workers.worker import main as worker_main

        w.pending_restart = None
        if self._stopping:
            return
        ctx = multiprocess.get_context("fork")
        proc = ctx.Process(target=worker_main, args=(self._spec(w.index),),
                           name=f"ipsecd-worker-{w.index}", daemon=False)
        w.started = time.monotonic()
        proc.start()
        w.process = proc
        w.pid = int(proc.pid)
        w.exit_code = None
        loop = asyncio.get_running_loop()
        loop.add_reader(proc.sentinel, self._worker_exited, w)
        log.debug("worker %d started (pid %d)", w.index, w.pid)

    def _worker_exited(self, w: _WorkerState) -> None:
        loop = asyncio.get_running_loop()
        proc = w.process
        if proc is None:
            return
        loop.remove_reader(proc.sentinel)
        proc.join(1)
        w.exit_code = proc.exitcode
        w.process = None
        if self._stopping:
            return
        how = (f"killed by signal {-w.exit_code}" if w.exit_code is not None and w.exit_code < 0
               else f"exit status {w.exit_code}")
        now = time.monotonic()
        w.recent = [t for t in w.recent if now - t < RESTART_WINDOW] + [now]
        w.restarts += 1
        delay = RESTART_DELAY if len(w.recent) > RESTART_BURST else 0.0
        log.error("worker %d (pid %d) died (%s); restarting%s", w.index, w.pid, how,
                  f" in {delay:g} s" if delay else "")
        w.pending_restart = loop.call_later(delay, self._start_worker, w)

    def _stop_workers(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            if w.pending_restart is not None:
                w.pending_restart.cancel()
            if w.process is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(w.process.sentinel)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for w in self.workers:
            if w.process is None:
                continue
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                w.process.join(1)
            w.process = None

    # -- periodic work --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._tick()
            except Exception:
                log.exception("periodic work failed")

    def _tick(self) -> None:
        assert self.table is not None
        now = time.time()
        mono = time.monotonic_ns()
        for w in self.workers:
            if w.process is None:
                continue
            hb = int(self.table.worker_counters(w.index)[WorkerCounter.HEARTBEAT_NS])
            started_ns = int(w.started * 1e9)
            last = max(hb, started_ns)
            if mono - last > HEARTBEAT_TIMEOUT * 1e9:
                log.error("worker %d (pid %d): no heartbeat for %.1f s; killing it", w.index,
                          w.pid, (mono - last) / 1e9)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
        self._settle()
        self._lifetimes(now)
        try:
            self._refresh_paths()
        except Exception:
            log.exception("refreshing the outbound paths")
        self._acquires()
        self._save_seq_file()

    def _lifetimes(self, now: float) -> None:
        """Soft and hard lifetimes, in proportion to what is due, not to the SAs installed.

        An SA's outcome can only change when its counters move or a time limit of it
        passes, so each tick looks at: the SAs installed since the last (their first look),
        those of the slots whose packet or byte sums changed (found in C), and those whose
        next time limit (creation + add_seconds, first use + use_seconds) is due, from a
        heap.  After a look an SA is scheduled again at its next time limit.  The same
        outcome as looking at every installed SA every tick (tests/test_daemon_lifetimes.py
        checks it against that full scan).
        """
        assert self.table is not None
        table = self.table
        # Two columns of every worker's counters, each in one strided copy (in C).
        slot_packets = [0] * table.n_slots
        slot_bytes = [0] * table.n_slots
        for w in range(table.n_workers):
            with table.sa_counters(w) as view:  # released: the segment must stay closable
                slot_packets = list(map(operator.add, slot_packets,
                                        view[SACounter.PACKETS::SA_COUNTER_COLUMNS].tolist()))
                slot_bytes = list(map(operator.add, slot_bytes,
                                      view[SACounter.BYTES::SA_COUNTER_COLUMNS].tolist()))
        seen_packets, seen_bytes = self._seen_counts
        self._seen_counts = (slot_packets, slot_bytes)
        todo, self._life_new = self._life_new, {}
        moved: Iterable[int]
        if len(seen_packets) == len(slot_packets):
            moved = itertools.compress(range(table.n_slots), map(
                operator.or_, map(operator.ne, slot_packets, seen_packets),
                map(operator.ne, slot_bytes, seen_bytes)))
        else:  # the first tick
            moved = list(self._by_slot)
        by_slot = self._by_slot
        for slot in moved:
            s = by_slot.get(slot)
            if s is not None:
                todo[id(s.sa)] = s.sa
        heap, due = self._life_heap, self._life_due
        while heap and heap[0][0] <= now:
            at, _, sa = heapq.heappop(heap)
            if due.get(id(sa)) == at:
                del due[id(sa)]
                todo[id(sa)] = sa
        expired: list[SecurityAssociation] = []
        changed = False
        slots = self.slots
        looks: list[tuple[int, int, SecurityAssociation, list[_Slot]]] = []
        for key, sa in todo.items():
            mine = [s for s in (slots.get((sa.key, d)) for d in Direction)
                    if s is not None and s.sa is sa]
            if mine:
                looks.append((min(s.order for s in mine), key, sa, mine))
            else:
                due.pop(key, None)  # no longer installed
        looks.sort(key=operator.itemgetter(0))  # in install order, as a scan of the slots
        for _, key, sa, mine in looks:
            packets = sum(slot_packets[s.slot] for s in mine)
            nbytes = sum(slot_bytes[s.slot] for s in mine)
            usage = self.usage.setdefault(key, _Usage())
            if packets and usage.first_used is None:
                usage.first_used = now
                self.accounting.first_used([s.uid for s in mine], now)
            try:
                created = self.sad.created(sa)
            except Exception:
                self._life_schedule(sa, now)  # looked at again next tick, as a scan would
                continue
            age = now - created
            used = now - usage.first_used if usage.first_used is not None else 0.0
            if _reached(sa.hard, age, used, nbytes, packets, usage.first_used is not None):
                expired.append(sa)
                self._life_schedule(sa, now)  # if it is still installed next tick
                continue
            if (not usage.soft_fired
                    and _reached(sa.soft, age, used, nbytes, packets,
                                 usage.first_used is not None)):
                usage.soft_fired = True
                sa.state = SAState.DYING
                out = slots.get((sa.key, Direction.OUT))
                if out is not None and out.sa is sa:
                    self._mark_dirty(out.slot)  # its rank among the candidates changes
                changed = True
                self._ike_lifetime_event(sa, hard=False)
                log.log(25, "SA %s spi %#x %s -> %s reached its soft lifetime: dying",
                        sa.protocol.name.lower(), sa.spi, sa.src, sa.dst)
            nxt = _next_time_limit(sa.hard, created, usage.first_used)
            if not usage.soft_fired:
                nxt = min(nxt, _next_time_limit(sa.soft, created, usage.first_used))
            if nxt != math.inf:
                self._life_schedule(sa, nxt)
        for sa in expired:
            log.log(25, "SA %s spi %#x %s -> %s reached its hard lifetime: removed",
                    sa.protocol.name.lower(), sa.spi, sa.src, sa.dst)
            with contextlib.suppress(Exception):
                self.sad.delete(sa.spi, sa.protocol, sa.dst)
            self.expired += 1
            changed = True
        if expired:
            self._refresh_seq()
            self._sync()
            for sa in expired:
                self._ike_lifetime_event(sa, hard=True)
        elif changed:
            self._publish()  # SAs became dying (their slots are marked): candidate lists change
        if len(heap) > 2 * len(due) + 64:  # hints of SAs gone or moved: not kept forever
            self._life_heap = [e for e in heap if due.get(id(e[2])) == e[0]]
            heapq.heapify(self._life_heap)

    def _life_schedule(self, sa: SecurityAssociation, at: float) -> None:
        """Look at ``sa`` at the first tick from ``at`` on (unless already due sooner)."""
        if self._life_due.get(id(sa), math.inf) <= at:
            return
        self._life_due[id(sa)] = at
        heapq.heappush(self._life_heap, (at, next(self._life_seq), sa))

    # -- run --------------------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        listen = self.config.metrics.listen
        if listen is not None:
            self.exporter = Exporter(listen[0], listen[1], self.metrics_snapshot)
            try:
                self.metrics_address = self.exporter.start()
            except OSError as exc:
                raise StartError(f"metrics.listen {self.config.metrics.text}: "
                                 f"{exc.strerror or exc}") from None
        server = ControlServer(self.config.control.socket, {
            "setkey": self.cmd_setkey, "status": self.cmd_status, "ping": self.cmd_ping,
            "initiate": self.cmd_initiate, "terminate": self.cmd_terminate,
            "rekey": self.cmd_rekey, "reload": self.cmd_reload,
            "list-sas": self.cmd_list_sas, "list-conns": self.cmd_list_conns})
        try:
            await server.start()
        except (ControlError, OSError) as exc:
            raise StartError(f"control socket {self.config.control.socket}: {exc}") from None
        self.server = server
        ticker: asyncio.Task[None] | None = None
        try:
            for w in self.workers:
                self._start_worker(w)
            ticker = asyncio.create_task(self._ticker())
            if self.ike is not None:
                await self.ike.start()
            log.info("ipsecd %s running: %d worker(s), TUN %s (MTU %d), control %s%s",
                     __version__, len(self.workers), self.config.datapath.tun, self.tun_mtu,
                     self.config.control.socket,
                     f", metrics {self.metrics_address[0]}:{self.metrics_address[1]}"
                     if self.metrics_address else "")
            _sd_notify("READY=1")
            await self._stop.wait()
        finally:
            _sd_notify("STOPPING=1")
            if self.ike is not None:
                with contextlib.suppress(Exception):
                    await self.ike.stop()
            self._stopping = True
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            await server.close()
            self._stop_workers()

    def _reload(self) -> None:
        log.info("SIGHUP: reloading %s", self.config.path)
        try:
            self.reload()
        except RequestError as exc:
            log.error("reload: %s", exc)

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration: IKE connections (unchanged ones are not touched) and
        the setkey script.  The rest of the file needs a restart; a change there is logged."""
        from ipsecd import config as config_mod

        try:
            new = config_mod.load(self.config.path)
        except config_mod.ConfigError as exc:
            raise RequestError(f"reload refused, nothing changed: {exc}") from None
        for section in ("daemon", "datapath", "control", "metrics"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("reload: [%s] changed; that takes a restart of the daemon", section)
        result: dict[str, Any] = {"ike": None, "setkey": None}
        psk_table = None
        if new.ike.enabled:
            from ipsecd.ike.config import load_psks
            from ipsecd.ike.psk import PskFileError

            try:
                psk_table = load_psks(new.ike)
            except PskFileError as exc:
                raise RequestError(f"reload refused, nothing changed: {exc}") from None
        old_script_cfg = self.config.setkey
        self.config = dataclasses.replace(new, daemon=self.config.daemon,
                                          datapath=self.config.datapath,
                                          control=self.config.control,
                                          metrics=self.config.metrics)
        if self.ike is not None:
            result["ike"] = self.ike.reload(new.ike, psk_table)
        elif new.ike.enabled:
            log.warning("reload: IKE connections appeared; starting IKE takes a restart")
            if psk_table is not None:
                psk_table.wipe()
        if new.setkey.script is not None or old_script_cfg.script is not None:
            try:
                script = self._load_script()
            except StartError as exc:
                raise RequestError(str(exc)) from None
            if script is not None:
                try:
                    result["setkey"] = self.apply_script(script, rfc_mode=new.setkey.rfc_mode)
                finally:
                    script.wipe()
        return result

    def cmd_reload(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.reload()

    def close(self) -> None:
        """Undo :meth:`setup` (idempotent, and safe after a partial start)."""
        with contextlib.suppress(Exception):
            self._save_seq_file()
        if self.ike is not None:
            with contextlib.suppress(Exception):
                self.ike.close_sockets()
            if self.ike.psk_table is not None:
                with contextlib.suppress(Exception):
                    self.ike.psk_table.wipe()
            self.ike = None
        if self.exporter is not None:
            with contextlib.suppress(Exception):
                self.exporter.close()
            self.exporter = None
        self._netlink.shutdown(wait=True)
        for ipr in self._ipr_handles:
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr_handles.clear()
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        if self.routing is not None:
            try:
                self.routing.remove()
            except Exception as exc:
                log.error("removing routing rules: %s", exc)
            self.routing = None
        if self.cleartext is not None:
            try:
                self.cleartext.remove()
            except Exception as exc:
                log.error("removing the inbound policy filter: %s", exc)
            self.cleartext = None
        if self.nft is not None:
            try:
                self.nft.remove()
            except Exception as exc:
                log.error("removing the nft table: %s", exc)
            self.nft = None
        if self.tun_queue is not None:
            with contextlib.suppress(Exception):
                self.tun_queue.close()
            self.tun_queue = None
        if self.table is not None:
            self.table.close()
            self.table = None
        if self.policy_table is not None:
            self.policy_table.close()
            self.policy_table = None
        self.sad.flush()
        self.spd.flush()
        for path, value in self._rp_restore.items():
            with contextlib.suppress(OSError), open(path, "w") as fh:
                fh.write(f"{value}\n")
        self._rp_restore.clear()
        with contextlib.suppress(OSError):
            self._state_file.unlink()


def _next_time_limit(limit: Any, created: float, first_used: float | None) -> float:
    """When ``limit``'s time conditions (of :func:`_reached`) are next met; inf: never."""
    out = math.inf
    if limit.add_seconds:
        out = created + limit.add_seconds
    if limit.use_seconds and first_used is not None:
        out = min(out, first_used + limit.use_seconds)
    return out


def _reached(limit: Any, age: float, used: float, nbytes: int, packets: int,
             ever_used: bool) -> bool:
    return bool(
        (limit.add_seconds and age >= limit.add_seconds)
        or (limit.use_seconds and ever_used and used >= limit.use_seconds)
        or (limit.bytes and nbytes >= limit.bytes)
        or (limit.packets and packets >= limit.packets))


def _drops(values: Iterable[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, v in enumerate(values):
        if v and i:
            try:
                out[Drop(i).label] = int(v)
            except ValueError:
                out[f"reason_{i}"] = int(v)
    return out


def _algorithms(sa: SecurityAssociation) -> str:
    parts = []
    if sa.enc is not None:
        parts.append(sa.enc.name.lower().removeprefix("encr_"))
    if sa.auth and int(sa.auth):
        parts.append(sa.auth.name.lower().removeprefix("auth_"))
    if sa.comp is not None:
        parts.append(sa.comp.name.lower())
    if sa.esn:
        parts.append("esn")
    if sa.encap is not None:
        parts.append(f"udp-encap {sa.encap.sport}/{sa.encap.dport}")
    return " ".join(parts)


def _link_mtu(name: str) -> int:
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            return int(ipr.get_links(ifname=name)[0].get_attr("IFLA_MTU"))
    except Exception:
        return 1500


def _sd_notify(message: str) -> None:
    """systemd's readiness protocol (sd_notify(3)), when started as a Type=notify service."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


CONTROL_GC_THRESHOLD = 10_000


def run(config: Config) -> int:
    """``ipsecd run``: start, serve until SIGTERM/SIGINT, clean up; the exit status."""
    daemon = Daemon(config)
    # Until the event loop takes over, SIGTERM/SIGINT abort the start-up through
    # the same clean-up as everything else (no half-installed tables or rules).
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.setup()
        # What start-up made (modules, configuration, tables) lives as long as the daemon:
        # out of the cyclic collector's sight, its full collections walk only what came
        # after - the SAs (bench_ike: a third less collector time per IKE SA set up).
        gc.freeze()
        # A youngest generation of 10000 rather than 700 objects: an IKE SA's half-open
        # state lives for a round trip, during which dozens of other handshakes allocate;
        # at 700 it was walked several times before it died or settled.  Collector time per
        # 1000 IKE setups 72 -> 42-53 ms (bench_ike); a young collection now pauses the
        # control process (never the datapath: workers keep CPython's defaults) for about
        # 0.1 ms (timed: a generation-0 collection over 10000 tracked objects).
        gc.set_threshold(CONTROL_GC_THRESHOLD, 10, 10)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        asyncio.run(daemon.serve())
    except StartError as exc:
        log.error("%s", exc)
        return 3
    except _Interrupted as exc:
        log.info("%s during start-up: stopping", exc)
        return 0
    finally:
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)  # clean-up is not to be interrupted
        daemon.close()
    log.info("ipsecd stopped")
    return 0


__all__ = ["Daemon", "StartError", "run"]
