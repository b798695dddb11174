"""Lifetimes (ipsecd.daemon.Daemon._lifetimes) look only at the SAs that are new, whose
counters moved or whose time limit is due; the outcome equals a scan of every installed SA
every tick (the straightforward computation, kept here as the reference)."""

from __future__ import annotations

import contextlib
import ipaddress
import operator
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipsecd.config import parse
from ipsecd.daemon import Daemon, _reached, _Usage
from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Lifetime, Mode, SAState, SecurityAssociation
from ipsecd.satable import SA_COUNTER_COLUMNS, SACounter, SATable
from ipsecd.satable import Direction as SlotDirection
from workers.policy import PolicyPublisher, PolicyTable, SlotInfo

ip = ipaddress.ip_address
LOCAL = ip("192.0.2.1")
PEER = ip("192.0.2.2")
T0 = 1_000_000.0


def _daemon(tmp: Path) -> Daemon:
    cfg = parse(f'[daemon]\nstate_dir = "{tmp}"\n[datapath]\noutside = ["eth0"]\n', "c.toml", tmp)
    d = Daemon(cfg)
    tag = uuid.uuid4().hex[:8]
    d.table = SATable.create(f"ipsecd-test-{tag}-sa", n_slots=32, n_workers=2,
                             max_replay_window=4096)
    d.policy_table = PolicyTable(f"ipsecd-test-{tag}-policy", size=1 << 20)
    d.policy_publisher = PolicyPublisher(d.policy_table)
    d.local = {LOCAL}
    d._route_infos = lambda dsts: [SlotInfo(1400, "eth0")] * len(dsts)  # type: ignore[method-assign]
    d.events = []  # type: ignore[attr-defined]
    d._ike_lifetime_event = (  # type: ignore[method-assign]
        lambda sa, hard: d.events.append((sa.spi, hard)))  # type: ignore[attr-defined]
    return d


def _scan(d: Daemon, now: float) -> None:
    """The reference: every installed SA looked at (the code before the heap)."""
    assert d.table is not None
    table = d.table
    slot_packets = [0] * table.n_slots
    slot_bytes = [0] * table.n_slots
    for w in range(table.n_workers):
        with table.sa_counters(w) as view:
            slot_packets = list(map(operator.add, slot_packets,
                                    view[SACounter.PACKETS::SA_COUNTER_COLUMNS].tolist()))
            slot_bytes = list(map(operator.add, slot_bytes,
                                  view[SACounter.BYTES::SA_COUNTER_COLUMNS].tolist()))
    per_sa: dict[int, tuple[SecurityAssociation, int, int]] = {}
    for s in d.slots.values():
        sa, packets, nbytes = per_sa.get(id(s.sa), (s.sa, 0, 0))
        per_sa[id(s.sa)] = (sa, packets + slot_packets[s.slot], nbytes + slot_bytes[s.slot])
    expired: list[SecurityAssociation] = []
    changed = False
    for key, (sa, packets, nbytes) in per_sa.items():
        usage = d.usage.setdefault(key, _Usage())
        if packets and usage.first_used is None:
            usage.first_used = now
            d.accounting.first_used([s.uid for s in d.slots.values() if s.sa is sa], now)
        try:
            age = now - d.sad.created(sa)
        except Exception:
            continue
        used = now - usage.first_used if usage.first_used is not None else 0.0
        if _reached(sa.hard, age, used, nbytes, packets, usage.first_used is not None):
            expired.append(sa)
        elif (not usage.soft_fired
              and _reached(sa.soft, age, used, nbytes, packets, usage.first_used is not None)):
            usage.soft_fired = True
            sa.state = SAState.DYING
            out = d.slots.get((sa.key, SlotDirection.OUT))
            if out is not None and out.sa is sa:
                d._mark_dirty(out.slot)
            changed = True
            d._ike_lifetime_event(sa, hard=False)
    for sa in expired:
        with contextlib.suppress(Exception):
            d.sad.delete(sa.spi, sa.protocol, sa.dst)
        d.expired += 1
        changed = True
    if expired:
        d._refresh_seq()
        d._sync()
        for sa in expired:
            d._ike_lifetime_event(sa, hard=True)
    elif changed:
        d._publish()


limits = st.builds(Lifetime, add_seconds=st.sampled_from([0, 2, 5, 9]),
                   use_seconds=st.sampled_from([0, 1, 4]),
                   bytes=st.sampled_from([0, 1000, 5000]),
                   packets=st.sampled_from([0, 3, 20]))
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 11), st.booleans(), limits, limits),
    st.tuples(st.just("del"), st.integers(0, 11)),
    st.tuples(st.just("count"), st.integers(0, 11), st.integers(0, 1), st.integers(1, 6)),
    st.tuples(st.just("time"), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
    st.tuples(st.just("tick")),
), min_size=1, max_size=50)


def _state(d: Daemon) -> Any:
    sas = sorted((sa.spi, sa.dst, sa.state) for sa in d.sad.dump())
    usage = sorted((s.sa.spi, s.sa.dst, d.usage[id(s.sa)].first_used,
                    d.usage[id(s.sa)].soft_fired)
                   for s in d.slots.values() if id(s.sa) in d.usage)
    return sas, usage, d.expired, d.events, sorted((k[0], k[1].name) for k in d.slots)  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
@example([("add", 0, False, Lifetime(add_seconds=2), Lifetime(add_seconds=5)),  # on time
          ("add", 1, True, Lifetime(use_seconds=1), Lifetime(packets=3)), ("time", 1.0),
          ("count", 1, 0, 1), ("time", 1.0), ("time", 0.5), ("count", 1, 1, 2), ("time", 1.0),
          ("time", 3.0), ("del", 1), ("time", 0.5)])
def test_lifetimes_equal_a_scan_of_every_sa(tmp_path_factory: Any, plan: list[Any]) -> None:
    tmp = Path(str(tmp_path_factory.mktemp("d")))
    fast, ref = _daemon(tmp / "a"), _daemon(tmp / "b")
    now = T0
    try:
        for op in plan:
            for d, tick in ((fast, fast._lifetimes), (ref, lambda t, d=ref: _scan(d, t))):
                assert d.table is not None
                if op[0] == "add":
                    _, n, inbound, soft, hard = op
                    src, dst = (PEER, LOCAL) if inbound else (LOCAL, PEER)
                    spi = 0x100 + n
                    if d.sad.get(spi, IpProto.ESP, dst) is None:
                        d.sad.add(SecurityAssociation(
                            spi=spi, protocol=IpProto.ESP, src=src, dst=dst, mode=Mode.TUNNEL,
                            enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(range(20)),
                            soft=soft, hard=hard), now=now)
                        d._sync()
                elif op[0] == "del":
                    for dst in (LOCAL, PEER):
                        if d.sad.get(0x100 + op[1], IpProto.ESP, dst) is not None:
                            d.sad.delete(0x100 + op[1], IpProto.ESP, dst)
                    d._sync()
                elif op[0] == "count":
                    _, n, worker, packets = op
                    slots = sorted(d.slots.values(), key=lambda s: s.slot)
                    if slots:
                        s = slots[n % len(slots)]
                        with d.table.sa_counters(worker) as view:
                            base = s.slot * SA_COUNTER_COLUMNS
                            view[base + SACounter.PACKETS] += packets
                            view[base + SACounter.BYTES] += 300 * packets
                elif op[0] == "tick":
                    tick(now)
            if op[0] == "time":  # and a tick at the new time
                now += op[1]
                fast._lifetimes(now)
                _scan(ref, now)
            assert _state(fast) == _state(ref)
    finally:
        for d in (fast, ref):
            assert d.table is not None and d.policy_table is not None
            d.policy_table.close()
            d.table.close()
            d._netlink.shutdown(wait=True)
