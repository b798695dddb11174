"""The policy table shared with the workers: publication, generations, lookup = SPD.lookup."""

from __future__ import annotations

import ipaddress
import os
import stat
import uuid
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Mode, SAState, SecurityAssociation
from ipsecd.spd import SPD, Action, Direction, IpsecRequest, Level, Policy, Selector
from workers import policy as policy_module
from workers.policy import (
    ACTION_DISCARD,
    ACTION_IPSEC,
    ACTION_NONE,
    HEADER_SIZE,
    MODE_TRANSPORT,
    MODE_TUNNEL,
    InstalledSA,
    PolicyReader,
    PolicySet,
    PolicyTable,
    PolicyTableFull,
    Rule,
    SlotInfo,
    build_document,
)

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")


@pytest.fixture
def table() -> Iterator[PolicyTable]:
    t = PolicyTable(f"ipsecd-test-{uuid.uuid4().hex[:8]}-policy", size=64 << 10)
    yield t
    t.close()


def test_publish_and_read_generations(table: PolicyTable) -> None:
    path = f"/dev/shm/{table.name}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    reader = PolicyReader(table.name)
    try:
        assert reader.generation == 0 and reader.read() is None
        assert table.publish({"policies": {}, "n": 1}) == 1
        assert reader.generation == 1
        assert reader.read() == (1, {"policies": {}, "n": 1})
        table.publish({"n": 2, "local": ["c0000201"]})
        gen, doc = reader.read() or (0, {})
        assert (gen, doc["n"]) == (2, 2)
        # A writer caught half way (odd sequence): the reader does not take the copy.
        table._mm[0] = table._mm[0] | 1
        assert reader.read(retries=3) is None
        table._mm[0] = table._mm[0] & ~1
        assert reader.read() is not None
    finally:
        reader.close()
    with pytest.raises(PolicyTableFull):
        table.publish({"x": "y" * (64 << 10)})
    table.close()
    assert not os.path.exists(path)


def test_a_second_table_of_one_name_is_refused(table: PolicyTable) -> None:
    with pytest.raises(FileExistsError):
        PolicyTable(table.name)
    assert HEADER_SIZE == 64


def _sa(spi: int, src: str = "192.0.2.1", dst: str = "192.0.2.2", **kw: object) -> SecurityAssociation:
    return SecurityAssociation(
        spi=spi, protocol=IpProto.ESP, src=ipaddress.ip_address(src),
        dst=ipaddress.ip_address(dst), enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(20),
        **kw)  # type: ignore[arg-type]


def test_document_answers_the_outbound_sa_questions() -> None:
    spd = SPD()
    transport = IpsecRequest(IpProto.ESP, Mode.TRANSPORT)
    tunnel = IpsecRequest(IpProto.ESP, Mode.TUNNEL, A, B)
    unique = IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.UNIQUE, reqid=7)
    optional = IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.USE)
    spd.add(Policy(Selector.make("192.0.2.1/32", "192.0.2.2/32"), Direction.OUT, Action.IPSEC,
                   (transport,)))
    spd.add(Policy(Selector.make("10.1.0.0/16", "10.2.0.0/16", 6, 0, 443), Direction.OUT,
                   Action.IPSEC, (tunnel,)))
    spd.add(Policy(Selector.make("10.1.0.0/16", "10.2.0.0/16"), Direction.OUT, Action.DISCARD))
    spd.add(Policy(Selector.make("2001:db8::/32", "2001:db8::/32"), Direction.IN, Action.NONE))
    installed = [
        InstalledSA(_sa(0x10, mode=Mode.ANY), slot=3, order=1),
        InstalledSA(_sa(0x11, mode=Mode.TUNNEL), slot=4, order=2),
        InstalledSA(_sa(0x12, mode=Mode.TRANSPORT, state=SAState.DYING), slot=5, order=3),
        InstalledSA(_sa(0x13, mode=Mode.TRANSPORT, reqid=7), slot=6, order=0),
    ]
    doc = build_document(spd, installed, [A], {3: SlotInfo(1500, "eth0"), 4: SlotInfo(1400, "")})
    ps = PolicySet.from_document(9, doc)
    assert ps.generation == 9 and ps.count() == 4
    assert ps.local == frozenset({A.packed})
    assert ps.slots[4] == SlotInfo(1400, "")
    a, b = A.packed, B.packed
    # Mature before dying, then the newest: 0x10 (mature, order 1) wins over 0x13
    # (mature, order 0) and 0x12 (newest, but dying); 0x11 is tunnel mode only.
    assert ps.outbound_slot(ps.rules[("out", 4)][0].requests[0], a, b) == 3
    assert ps.outbound_slot(tunnel_req(ps), b"\0" * 4, b"\0" * 4) == 4  # the request's end points
    assert ps.outbound_slot(req_of(unique), a, b) == 6  # unique:7 takes only reqid 7
    assert ps.outbound_slot(req_of(optional), a, b"\1\2\3\4") is None
    rule = ps.lookup("out", 4, int(ipaddress.ip_address("10.1.2.3")),
                     int(ipaddress.ip_address("10.2.0.9")), 6, 5555, 443)
    assert rule is not None and rule.action == ACTION_IPSEC and rule.requests[0].mode == MODE_TUNNEL
    rule = ps.lookup("out", 4, int(ipaddress.ip_address("10.1.2.3")),
                     int(ipaddress.ip_address("10.2.0.9")), 17, 5555, 443)
    assert rule is not None and rule.action == ACTION_DISCARD
    rule = ps.lookup("in", 6, int(ipaddress.ip_address("2001:db8::1")),
                     int(ipaddress.ip_address("2001:db8::2")), 58, 128, 0)
    assert rule is not None and rule.action == ACTION_NONE
    assert ps.lookup("fwd", 4, 1, 2, 6) is None
    assert MODE_TRANSPORT != MODE_TUNNEL


def req_of(request: IpsecRequest) -> object:
    from workers.policy import Request

    return Request(int(request.protocol), MODE_TRANSPORT if request.mode is Mode.TRANSPORT
                   else MODE_TUNNEL, None, None, request.required,
                   request.reqid if request.level is Level.UNIQUE else 0)


def tunnel_req(ps: PolicySet) -> object:
    return ps.rules[("out", 4)][1].requests[0]


# --- lookup agrees with the SPD, whatever the policies ------------------------------------------

V4_PREFIXES = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32",
               "192.0.2.0/24", "192.0.2.1/32"]
V6_PREFIXES = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128"]
V4_ADDRS = ["10.1.2.3", "10.1.2.4", "10.9.9.9", "192.0.2.1", "192.0.2.7", "198.51.100.1"]
V6_ADDRS = ["2001:db8:1::5", "2001:db8:1::6", "2001:db8:2::1", "2001:db9::1"]
PROTOS = [None, 1, 6, 17, 58]
PORTS = [0, 0, 53, 443]


@st.composite
def policies(draw: st.DrawFn) -> list[Policy]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        v6 = draw(st.booleans())
        prefixes = V6_PREFIXES if v6 else V4_PREFIXES
        sel = Selector.make(draw(st.sampled_from(prefixes)), draw(st.sampled_from(prefixes)),
                            draw(st.sampled_from(PROTOS)), draw(st.sampled_from(PORTS)),
                            draw(st.sampled_from(PORTS)))
        action = draw(st.sampled_from(list(Action)))
        requests = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT),) if action is Action.IPSEC else ()
        out.append(Policy(sel, draw(st.sampled_from(list(Direction))), action, requests,
                          draw(st.sampled_from([0, 0, 5, -5]))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 5),
                                      st.sampled_from([1, 6, 17, 58, 50]),
                                      st.sampled_from(PORTS), st.sampled_from(PORTS)),
                            min_size=1, max_size=30))
def test_lookup_matches_the_spd(pols: list[Policy], packets: list[tuple[int, ...]]) -> None:
    """Both ways of deciding: the in-order scan (few rules) and the shape index (forced on
    for any number of rules, as it is for an IKE gateway's thousands)."""
    for index_min in (policy_module.INDEX_MIN_RULES, 0):
        _lookup_matches_the_spd(pols, packets, index_min)


def _lookup_matches_the_spd(pols: list[Policy], packets: list[tuple[int, ...]],
                            index_min: int) -> None:
    spd = SPD()
    for p in pols:
        spd.update(p)
    ps = PolicySet.from_document(1, build_document(spd, [], [], {}))
    actions = {Action.IPSEC: ACTION_IPSEC, Action.NONE: ACTION_NONE,
               Action.DISCARD: ACTION_DISCARD}
    with mock.patch.object(policy_module, "INDEX_MIN_RULES", index_min):
        for v6, si, di, proto, sport, dport in packets:
            addrs = V6_ADDRS if v6 else V4_ADDRS
            src = ipaddress.ip_address(addrs[si % len(addrs)])
            dst = ipaddress.ip_address(addrs[di % len(addrs)])
            for direction in Direction:
                want = spd.lookup(direction, src, dst, proto, sport, dport)
                got = ps.lookup(direction.value, src.version, int(src), int(dst), proto, sport,
                                dport)
                if want is None:
                    assert got is None
                else:
                    assert got is not None
                    assert got.action == actions[want.action]
                    assert (got.snet, got.dnet, got.proto) == (
                        int(want.selector.src.network_address),
                        int(want.selector.dst.network_address),
                        -1 if want.selector.proto is None else want.selector.proto)


def _scan(ps: PolicySet, direction: str, version: int, s: int, d: int, proto: int,
          sport: int, dport: int) -> Rule | None:
    """The first matching rule, by walking them all in order (what lookup must equal)."""
    for rule in ps.rules.get((direction, version), ()):
        if rule.matches(s, d, proto, sport, dport):
            return rule
    return None


def _lookups_agree_with_scan(ps: PolicySet) -> None:
    with mock.patch.object(policy_module, "INDEX_MIN_RULES", 0):
        for v6 in (False, True):
            addrs = V6_ADDRS if v6 else V4_ADDRS
            for a in addrs:
                for b in addrs:
                    s, d = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
                    for direction in ("out", "in", "fwd"):
                        for proto, sport, dport in ((6, 443, 53), (17, 53, 0), (58, 0, 0)):
                            version = 6 if v6 else 4
                            assert ps.lookup(direction, version, s, d, proto, sport, dport) is \
                                _scan(ps, direction, version, s, d, proto, sport, dport)


def test_shape_index_with_thousands_of_children() -> None:
    """An IKE gateway's SPD: a /32 per child on one side, a shared prefix on the other, a
    bypass and a catch-all discard; the index answers as the scan does."""
    spd = SPD()
    spd.update(Policy(Selector.make("10.0.0.0/8", "10.0.0.0/8", None, 0, 0), Direction.OUT,
                      Action.NONE, (), 10))
    for k in range(600):
        remote = f"198.19.{k // 256}.{k % 256}/32"
        for direction, src, dst in ((Direction.OUT, "198.18.16.0/20", remote),
                                    (Direction.IN, remote, "198.18.16.0/20")):
            spd.update(Policy(Selector.make(src, dst, None, 0, 0), direction, Action.IPSEC,
                              (IpsecRequest(IpProto.ESP, Mode.TRANSPORT),)))
    spd.update(Policy(Selector.make("0.0.0.0/0", "0.0.0.0/0", None, 0, 0), Direction.OUT,
                      Action.DISCARD, (), -10))
    ps = PolicySet.from_document(1, build_document(spd, [], [], {}))
    assert len(ps.rules[("out", 4)]) > policy_module.INDEX_MIN_RULES

    def check(s: str, d: str) -> None:
        si, di = int(ipaddress.ip_address(s)), int(ipaddress.ip_address(d))
        for direction in ("out", "in"):
            assert ps.lookup(direction, 4, si, di, 6, 1, 2) is \
                _scan(ps, direction, 4, si, di, 6, 1, 2)

    for k in (0, 1, 255, 256, 599):
        check("198.18.16.9", f"198.19.{k // 256}.{k % 256}")
        check(f"198.19.{k // 256}.{k % 256}", "198.18.16.9")
    check("10.1.2.3", "10.4.5.6")  # the bypass, above every child
    check("192.0.2.1", "198.51.100.1")  # the catch-all
    got = ps.lookup("out", 4, int(ipaddress.ip_address("198.18.16.9")),
                    int(ipaddress.ip_address("198.19.1.7")), 6, 1, 2)
    assert got is not None and got.action == ACTION_IPSEC


def test_reload_on_generation_change(table: PolicyTable) -> None:
    """What a worker does per batch: compare generations, re-read on change."""
    reader = PolicyReader(table.name)
    sel = Selector.make("192.0.2.1/32", "192.0.2.2/32")
    current = PolicySet()

    def refresh() -> None:
        nonlocal current
        if reader.generation != current.generation:
            got = reader.read()
            assert got is not None
            current = PolicySet.from_document(*got)

    def action() -> int:
        rule = current.lookup("out", 4, int(A), int(B), 6)
        assert rule is not None
        return rule.action

    try:
        spd = SPD()
        spd.add(Policy(sel, Direction.OUT, Action.DISCARD))
        table.publish(build_document(spd, [], [], {}))
        refresh()
        assert (current.generation, action()) == (1, ACTION_DISCARD)
        spd.update(Policy(sel, Direction.OUT, Action.NONE))
        table.publish(build_document(spd, [], [], {}))
        assert action() == ACTION_DISCARD  # stale until the next refresh
        refresh()
        assert (current.generation, action()) == (2, ACTION_NONE)
        refresh()  # no change, no re-read
        assert current.generation == 2
    finally:
        reader.close()


# --- incremental publication: deltas give the worker what a full re-parse gives --------------


def _same(a: PolicySet, b: PolicySet) -> None:
    assert a.generation == b.generation
    assert {k: v for k, v in a.rules.items() if v} == {k: v for k, v in b.rules.items() if v}
    assert {k: v for k, v in a.keys.items() if v} == {k: v for k, v in b.keys.items() if v}
    assert a.sas == b.sas and a.local == b.local and a.slots == b.slots


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[list[Policy], list[int], list[tuple[int, int, bool]], bool]]:
    """Per publication: policies to add or update, indexes of policies to delete, outbound
    SAs (spi, order, dying), whether the local addresses change."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        out.append((draw(policies()), draw(st.lists(st.integers(0, 40), max_size=4)),
                    draw(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 9), st.booleans()),
                                  max_size=6)),
                    draw(st.booleans())))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps(), st.sampled_from([2 << 10, 64 << 10]))
def test_incremental_updates_equal_a_full_reparse(
        plan: list[tuple[list[Policy], list[int], list[tuple[int, int, bool]], bool]],
        size: int) -> None:
    from workers.policy import PolicyPublisher

    table = PolicyTable(f"ipsecd-test-{uuid.uuid4().hex[:8]}-policy", size=size)
    reader = PolicyReader(table.name)
    publisher = PolicyPublisher(table)
    worker = PolicySet()
    late = PolicySet()  # a worker that refreshes only every third publication
    spd = SPD()
    sas = {spi: _sa(spi, dst=f"192.0.2.{spi % 3 + 2}", mode=Mode.TRANSPORT, reqid=spi % 2)
           for spi in range(1, 7)}
    local = [A]
    try:
        for n, (changes, deletes, outbound, new_local) in enumerate(plan):
            for p in changes:
                spd.update(p)
            entries = spd.entries()
            for i in deletes:
                if entries and entries[i % len(entries)].policy.key in \
                        {e.policy.key for e in spd.entries()}:
                    spd.delete(*entries[i % len(entries)].policy.key)
            installed = []
            for spi, order, dying in {spi: (spi, o, d) for spi, o, d in outbound}.values():
                sas[spi].state = SAState.DYING if dying else SAState.MATURE
                installed.append(InstalledSA(sas[spi], slot=spi, order=order))
            if new_local:
                local = [A] if local != [A] else [A, B]
            info = {inst.slot: SlotInfo(1400 + inst.order, "eth0") for inst in installed}
            try:
                gen = publisher.publish(spd, installed, local, info)
            except PolicyTableFull:
                continue  # too big for the small segment: nothing published
            want = PolicySet.from_document(gen, build_document(spd, installed, local, info))
            assert reader.refresh(worker)
            _same(worker, want)
            _lookups_agree_with_scan(worker)  # its shape index follows the deltas
            if n % 3 == 2:
                reader_late = PolicyReader(table.name)
                try:
                    reader_late.refresh(late)
                    _same(late, want)
                finally:
                    reader_late.close()
            got = reader.read()
            assert got is not None
            _same(PolicySet.from_document(*got), want)
            assert not reader.refresh(worker)  # nothing new
    finally:
        reader.close()
        table.close()


def test_deltas_follow_a_snapshot_and_the_log_starts_over() -> None:
    from workers.policy import PolicyPublisher

    table = PolicyTable(f"ipsecd-test-{uuid.uuid4().hex[:8]}-policy", size=12 << 10)
    publisher = PolicyPublisher(table)
    reader = PolicyReader(table.name)
    worker = PolicySet()
    spd = SPD()
    try:
        for k in range(150):  # a 12 KB segment: the log starts over a few times
            sel = Selector.make(f"10.0.{k // 256}.{k % 256}/32", "10.9.0.0/16")
            spd.add(Policy(sel, Direction.OUT, Action.DISCARD))
            publisher.publish(spd, [], [A], {})
            if k % 7 == 3:
                assert reader.refresh(worker)
        assert reader.refresh(worker)
        assert worker.generation == table.generation == 150 and worker.count() == 150
        assert 1 < publisher.snapshots < 40
        _same(worker, PolicySet.from_document(table.generation,
                                              build_document(spd, [], [A], {})))
        rule = worker.lookup("out", 4, int(ipaddress.ip_address("10.0.0.144")),
                             int(ipaddress.ip_address("10.9.3.3")), 6)
        assert rule is not None and rule.action == ACTION_DISCARD
    finally:
        reader.close()
        table.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps(), st.sampled_from([2 << 10, 64 << 10]), st.lists(st.booleans(), min_size=12,
                                                                max_size=12))
def test_journal_publication_equals_a_full_one(
        plan: list[tuple[list[Policy], list[int], list[tuple[int, int, bool]], bool]],
        size: int, told: list[bool]) -> None:
    """Told what changed (the SPD's journal, the dirty slots) - or, now and then, not told -
    the publisher gives the workers what a snapshot of the whole state gives."""
    from workers.policy import PolicyPublisher

    table = PolicyTable(f"ipsecd-test-{uuid.uuid4().hex[:8]}-policy", size=size)
    reader = PolicyReader(table.name)
    publisher = PolicyPublisher(table)
    worker = PolicySet()
    spd = SPD()
    sas = {spi: _sa(spi, dst=f"192.0.2.{spi % 3 + 2}", mode=Mode.TRANSPORT, reqid=spi % 2)
           for spi in range(1, 7)}
    local = [A]
    before: dict[int, tuple[int, SAState]] = {}  # slot -> (order, state) last published
    journal: dict[object, object] | None = {}
    try:
        for n, (changes, deletes, outbound, new_local) in enumerate(plan):
            for p in changes:
                spd.update(p)
            entries = spd.entries()
            for i in deletes:
                if entries and entries[i % len(entries)].policy.key in \
                        {e.policy.key for e in spd.entries()}:
                    spd.delete(*entries[i % len(entries)].policy.key)
            installed: dict[int, InstalledSA] = {}
            for spi, order, dying in {spi: (spi, o, d) for spi, o, d in outbound}.values():
                sas[spi].state = SAState.DYING if dying else SAState.MATURE
                installed[spi] = InstalledSA(sas[spi], slot=spi, order=order)
            if new_local:
                local = [A] if local != [A] else [A, B]
            info = {inst.slot: SlotInfo(1400 + inst.order, "eth0") for inst in installed.values()}
            now = {slot: (inst.order, inst.sa.state) for slot, inst in installed.items()}
            dirty = {slot for slot in now.keys() | before.keys() if now.get(slot) != before.get(slot)}
            taken = spd.take_changes()
            if journal is not None and taken is not None:
                for key, old in taken.items():
                    journal.setdefault(key, old)
            else:
                journal = None
            try:
                if told[n]:
                    gen = publisher.publish(spd, installed, local, info, policy_changes=journal,
                                            dirty_slots=dirty)
                else:
                    gen = publisher.publish(spd, list(installed.values()), local, info)
            except PolicyTableFull:
                journal = None  # not published: the next one is told nothing
                before = {}
                continue
            journal, before = {}, now
            want = PolicySet.from_document(
                gen, build_document(spd, installed.values(), local, info))
            assert reader.refresh(worker)
            _same(worker, want)
            got = reader.read()
            assert got is not None
            _same(PolicySet.from_document(*got), want)
    finally:
        reader.close()
        table.close()


def test_lookup_benchmark_runs() -> None:
    """``python -m ipsecd.bench lookup`` times both ways for each child it names (figures
    only: no speed is asserted here)."""
    from ipsecd.bench import run_lookup

    rows = run_lookup((40,), number=20)
    assert [r["child"] for r in rows] == ["first", "middle", "last", "index build"]
    assert all(r["children"] == 40 and r["index_us"] > 0 for r in rows)
    assert all(r["walk_us"] > 0 for r in rows[:3])
