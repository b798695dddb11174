"""The SPD: selectors, policy validation, lookup order (ipsecd.spd)."""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from ipsecd.iana import IpProto
from ipsecd.sa import Mode
from ipsecd.spd import (
    PRIORITY_HIGH,
    SPD,
    Action,
    Direction,
    IpsecRequest,
    Level,
    Policy,
    Selector,
    SPDError,
)

ip = ipaddress.ip_address
OUT, IN, FWD = Direction.OUT, Direction.IN, Direction.FWD
TCP, UDP = int(IpProto.TCP), int(IpProto.UDP)
ESP_TRANSPORT = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.REQUIRE),)


def tunnel(src: str, dst: str) -> tuple[IpsecRequest, ...]:
    return (IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip(src), ip(dst), Level.REQUIRE),)


def pol(src: str, dst: str, direction: Direction = OUT, action: Action = Action.NONE,
        proto: int | None = None, sport: int = 0, dport: int = 0, priority: int = 0,
        requests: tuple[IpsecRequest, ...] = ()) -> Policy:
    if action is Action.IPSEC and not requests:
        requests = ESP_TRANSPORT
    return Policy(Selector.make(src, dst, proto, sport, dport), direction, action, requests, priority)


# -- values --------------------------------------------------------------------


def test_selector_clears_host_bits_and_matches() -> None:
    sel = Selector.make("192.0.2.7/24", "10.0.0.0/8", TCP, 0, 22)
    assert str(sel.src) == "192.0.2.0/24"
    assert sel.matches(ip("192.0.2.200"), ip("10.1.2.3"), TCP, 40000, 22)
    assert not sel.matches(ip("192.0.2.200"), ip("10.1.2.3"), TCP, 40000, 23)
    assert not sel.matches(ip("192.0.2.200"), ip("10.1.2.3"), UDP, 40000, 22)
    assert not sel.matches(ip("2001:db8::1"), ip("2001:db8::2"), TCP, 1, 22)


def test_selector_rejects_mixed_families_and_bad_values() -> None:
    with pytest.raises(ValueError, match="different address families"):
        Selector.make("192.0.2.0/24", "2001:db8::/32")
    with pytest.raises(ValueError, match="upper-layer protocol"):
        Selector.make("0.0.0.0/0", "0.0.0.0/0", 256)
    with pytest.raises(ValueError, match="port"):
        Selector.make("0.0.0.0/0", "0.0.0.0/0", TCP, 70000)


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="tunnel mode needs"):
        IpsecRequest(IpProto.ESP, Mode.TUNNEL)
    with pytest.raises(ValueError, match="both end points"):
        IpsecRequest(IpProto.ESP, Mode.TRANSPORT, ip("192.0.2.1"), None)
    with pytest.raises(ValueError, match="different address families"):
        IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip("192.0.2.1"), ip("2001:db8::1"))
    with pytest.raises(ValueError, match="esp, ah or ipcomp"):
        IpsecRequest(IpProto.TCP, Mode.TRANSPORT)
    with pytest.raises(ValueError, match="transport or tunnel"):
        IpsecRequest(IpProto.ESP, Mode.ANY)
    with pytest.raises(ValueError, match="only given with level unique"):
        IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.REQUIRE, reqid=5)
    assert not IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.USE).required
    assert IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.DEFAULT).required


def test_policy_validation() -> None:
    sel = Selector.make("0.0.0.0/0", "0.0.0.0/0")
    with pytest.raises(ValueError, match="at least one"):
        Policy(sel, OUT, Action.IPSEC)
    with pytest.raises(ValueError, match="takes no requests"):
        Policy(sel, OUT, Action.DISCARD, ESP_TRANSPORT)
    with pytest.raises(ValueError, match="priority"):
        Policy(sel, OUT, Action.NONE, priority=2**31 + 1)


# -- changes -------------------------------------------------------------------


def test_add_refuses_same_selector_and_direction() -> None:
    spd = SPD()
    spd.add(pol("10.0.0.0/8", "0.0.0.0/0"))
    with pytest.raises(SPDError, match=re.escape("an out policy for 10.0.0.0/8")):
        spd.add(pol("10.0.0.0/8", "0.0.0.0/0", action=Action.DISCARD))
    spd.add(pol("10.0.0.0/8", "0.0.0.0/0", IN))  # other direction: fine
    spd.add(pol("10.0.0.0/8", "0.0.0.0/0", proto=TCP))  # other selector: fine
    assert len(spd) == 3


def test_delete_and_flush() -> None:
    spd = SPD()
    p = pol("10.0.0.0/8", "0.0.0.0/0")
    spd.add(p)
    with pytest.raises(SPDError, match="no in policy"):
        spd.delete(p.selector, IN)
    assert spd.delete(p.selector, OUT) == p
    assert spd.lookup(OUT, ip("10.1.1.1"), ip("192.0.2.1"), TCP) is None
    spd.add(p)
    spd.add(pol("::/0", "::/0"))
    assert spd.flush() == 2
    assert len(spd) == 0
    assert spd.lookup(OUT, ip("10.1.1.1"), ip("192.0.2.1"), TCP) is None


def test_generation_grows_on_every_change() -> None:
    spd = SPD()
    g = [spd.generation]
    p = pol("10.0.0.0/8", "0.0.0.0/0")
    spd.add(p)
    g.append(spd.generation)
    spd.update(pol("10.0.0.0/8", "0.0.0.0/0", action=Action.DISCARD))
    g.append(spd.generation)
    spd.delete(p.selector, OUT)
    g.append(spd.generation)
    spd.flush()
    g.append(spd.generation)
    assert g == sorted(set(g))


# -- lookup order --------------------------------------------------------------


def test_first_installed_wins_at_equal_priority() -> None:
    # Linux order, not longest prefix: the broad policy installed first wins.
    spd = SPD()
    broad = pol("0.0.0.0/0", "0.0.0.0/0", action=Action.DISCARD)
    narrow = pol("192.0.2.1/32", "192.0.2.2/32", action=Action.IPSEC)
    spd.add(broad)
    spd.add(narrow)
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), TCP) is broad


def test_ike_bypass_installed_first_is_not_overridden_by_a_host_policy() -> None:
    # The reason for not sorting by prefix length (see the module docs).
    spd = SPD()
    ike = pol("0.0.0.0/0", "0.0.0.0/0", proto=UDP, sport=500, dport=500)
    host = pol("192.0.2.1/32", "192.0.2.2/32", action=Action.IPSEC)
    spd.add(ike)
    spd.add(host)
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), UDP, 500, 500) is ike
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), UDP, 500, 4500) is host
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), TCP, 1, 80) is host


def test_higher_priority_first_whatever_the_order() -> None:
    spd = SPD()
    broad = pol("0.0.0.0/0", "0.0.0.0/0", action=Action.DISCARD)
    low = pol("192.0.2.0/24", "0.0.0.0/0", priority=-10)
    exception = pol("192.0.2.1/32", "192.0.2.2/32", action=Action.IPSEC, priority=5)
    spd.add(low)
    spd.add(broad)
    spd.add(exception)
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), TCP) is exception
    assert spd.lookup(OUT, ip("192.0.2.9"), ip("192.0.2.2"), TCP) is broad  # prio 0 > -10
    assert [e.policy for e in spd.entries(OUT)] == [exception, broad, low]


def test_update_keeps_position_and_id() -> None:
    spd = SPD()
    a = pol("10.0.0.0/8", "0.0.0.0/0", action=Action.DISCARD)
    b = pol("10.1.0.0/16", "0.0.0.0/0")
    e_a = spd.add(a)
    spd.add(b)
    a2 = pol("10.0.0.0/8", "0.0.0.0/0", action=Action.IPSEC)
    e_a2 = spd.update(a2)
    assert e_a2.spid == e_a.spid
    assert spd.lookup(OUT, ip("10.1.2.3"), ip("192.0.2.1"), TCP) is a2  # still ahead of b
    # update of a missing policy adds it
    c = pol("172.16.0.0/12", "0.0.0.0/0")
    spd.update(c)
    assert spd.get(c.selector, OUT) is not None


def test_update_with_new_priority_moves_it() -> None:
    spd = SPD()
    a = pol("10.0.0.0/8", "0.0.0.0/0", action=Action.DISCARD)
    b = pol("10.1.0.0/16", "0.0.0.0/0")
    spd.add(a)
    spd.add(b)
    b2 = pol("10.1.0.0/16", "0.0.0.0/0", priority=PRIORITY_HIGH)
    spd.update(b2)
    assert spd.lookup(OUT, ip("10.1.2.3"), ip("192.0.2.1"), TCP) is b2


def test_directions_and_families_are_separate() -> None:
    spd = SPD()
    out4 = pol("0.0.0.0/0", "0.0.0.0/0", OUT)
    in4 = pol("0.0.0.0/0", "0.0.0.0/0", IN, Action.DISCARD)
    out6 = pol("::/0", "::/0", OUT, Action.DISCARD)
    for p in (out4, in4, out6):
        spd.add(p)
    assert spd.lookup(OUT, ip("192.0.2.1"), ip("192.0.2.2"), TCP) is out4
    assert spd.lookup(IN, ip("192.0.2.1"), ip("192.0.2.2"), TCP) is in4
    assert spd.lookup(FWD, ip("192.0.2.1"), ip("192.0.2.2"), TCP) is None
    assert spd.lookup(OUT, ip("2001:db8::1"), ip("2001:db8::2"), TCP) is out6
    assert spd.lookup(IN, ip("2001:db8::1"), ip("2001:db8::2"), TCP) is None


@pytest.mark.parametrize(
    ("src", "dst", "proto", "sport", "dport", "hit"),
    [
        ("192.0.2.1", "198.51.100.7", TCP, 1234, 22, True),
        ("192.0.2.1", "198.51.100.7", TCP, 1234, 23, False),  # port
        ("192.0.2.1", "198.51.100.7", UDP, 1234, 22, False),  # protocol
        ("192.0.3.1", "198.51.100.7", TCP, 1234, 22, False),  # source prefix
        ("192.0.2.1", "198.51.101.7", TCP, 1234, 22, False),  # destination prefix
        ("192.0.2.255", "198.51.100.0", TCP, 9, 22, True),  # prefix edges
    ],
)
def test_selector_fields(src: str, dst: str, proto: int, sport: int, dport: int, hit: bool) -> None:
    spd = SPD()
    p = pol("192.0.2.0/24", "198.51.100.0/24", proto=TCP, dport=22)
    spd.add(p)
    assert (spd.lookup(OUT, ip(src), ip(dst), proto, sport, dport) is p) is hit
    assert p.selector.matches(ip(src), ip(dst), proto, sport, dport) is hit


def test_icmp_type_and_code_with_zero_as_wildcard() -> None:
    spd = SPD()
    ns = pol("::/0", "::/0", IN, proto=58, sport=135, dport=0)  # icmp6 135,0
    spd.add(ns)
    assert spd.lookup(IN, ip("fe80::1"), ip("fe80::2"), 58, 135, 0) is ns
    assert spd.lookup(IN, ip("fe80::1"), ip("fe80::2"), 58, 135, 7) is ns  # code 0: any
    assert spd.lookup(IN, ip("fe80::1"), ip("fe80::2"), 58, 136, 0) is None


def test_copy_is_independent_and_replace_with_commits() -> None:
    spd = SPD()
    a = pol("10.0.0.0/8", "0.0.0.0/0")
    spd.add(a)
    gen = spd.generation
    work = spd.copy()
    b = pol("10.1.0.0/16", "0.0.0.0/0", action=Action.DISCARD, priority=1)
    entry = work.add(b)
    work.delete(a.selector, OUT)
    assert spd.lookup(OUT, ip("10.1.1.1"), ip("192.0.2.1"), TCP) is a  # untouched
    assert spd.generation == gen
    spd.replace_with(work)
    assert spd.lookup(OUT, ip("10.1.1.1"), ip("192.0.2.1"), TCP) is b
    assert spd.lookup(OUT, ip("10.2.1.1"), ip("192.0.2.1"), TCP) is None
    assert spd.generation > gen
    assert spd.add(a).spid > entry.spid  # ids keep growing after a commit


def test_replace_with_an_unchanged_copy_keeps_generation() -> None:
    spd = SPD()
    spd.add(pol("10.0.0.0/8", "0.0.0.0/0"))
    gen = spd.generation
    spd.replace_with(spd.copy())
    assert spd.generation == gen


def test_entries_dump_order() -> None:
    spd = SPD()
    o = pol("10.0.0.0/8", "0.0.0.0/0", OUT)
    i = pol("0.0.0.0/0", "10.0.0.0/8", IN)
    f = pol("0.0.0.0/0", "10.0.0.0/8", FWD)
    for p in (f, o, i):
        spd.add(p)
    assert [e.policy for e in spd.entries()] == [i, o, f]
    assert list(spd) == [i, o, f]


def test_lookup_is_linear_and_quick_with_many_policies() -> None:
    spd = SPD()
    for n in range(2000):
        spd.add(pol(f"10.{n // 256}.{n % 256}.0/24", "0.0.0.0/0", action=Action.DISCARD))
    last = pol("0.0.0.0/0", "0.0.0.0/0")
    spd.add(last)
    t0 = time.perf_counter()
    for _ in range(100):
        assert spd.lookup(OUT, ip("192.0.2.1"), ip("198.51.100.1"), TCP, 1, 2) is last  # full scan
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, elapsed  # ~2000 integer compares per lookup


# --- the change journal: what changed since take_changes(), through copies and commits ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JOURNAL_SELECTORS = [Selector.make(f"10.0.{k}.0/24", "10.9.0.0/16") for k in range(5)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["update", "delete", "flush", "take", "copy",
                                           "commit", "drop"]),
                          st.integers(0, 4), st.sampled_from(list(Direction)),
                          st.sampled_from([0, 5])), max_size=40))
def test_journal_names_every_change_with_the_entry_before(ops: list[tuple[str, int, Direction,
                                                                          int]]) -> None:
    live = SPD()
    spd = live  # the one changed: live, or a copy of it (a transaction)
    seen = {}  # key -> entry when the journal was last taken (of the live SPD)

    def check(db: SPD) -> None:
        changes = db.changes()
        assert changes is not None
        for e in db.entries():
            key = e.policy.key
            if key not in changes:
                assert seen.get(key) is e
        for key, e in seen.items():
            if key not in changes:
                assert db.get(*key) is e
        for key, old in changes.items():
            assert seen.get(key) is old

    for op, k, direction, prio in ops:
        sel = _JOURNAL_SELECTORS[k]
        if op == "update":
            spd.update(Policy(sel, direction, Action.DISCARD, priority=prio))
        elif op == "delete" and spd.get(sel, direction) is not None:
            spd.delete(sel, direction)
        elif op == "flush":
            spd.flush()
        elif op == "take" and spd is live:
            live.take_changes()
            seen = {e.policy.key: e for e in live.entries()}
        elif op == "copy" and spd is live:
            spd = live.copy()
        elif op == "commit" and spd is not live:
            live.replace_with(spd)
            spd = live
        elif op == "drop":
            spd = live  # the transaction is thrown away: the live journal is as it was
        check(spd)
        check(live)


def _spd_state(db: SPD) -> object:
    """Everything a savepoint must restore: entries (by identity), the lookup lists (keys and
    item objects), counters and the journal."""
    return ({k: id(e) for k, e in db._entries.items()},
            {k: (list(b.keys), [id(i) for i in b.items]) for k, b in db._index.items()},
            db.generation, db._next_spid, db._next_order,
            None if db._changed is None else [(k, id(v)) for k, v in db._changed.items()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["update", "delete"]), st.integers(0, 4),
                          st.sampled_from(list(Direction)), st.sampled_from([0, 5])),
                max_size=12),
       st.lists(st.tuples(st.sampled_from(["update", "delete"]), st.integers(0, 4),
                          st.sampled_from(list(Direction)), st.sampled_from([0, 5])),
                max_size=12),
       st.booleans())
def test_savepoint_rollback_restores_and_release_equals_a_copy(
        before: list[tuple[str, int, Direction, int]],
        during: list[tuple[str, int, Direction, int]], keep: bool) -> None:
    """A savepoint (IKE's in-place transaction): rolled back, the SPD is exactly as it was
    (same entry and item objects, counters, journal); released, it equals the same changes
    made on a copy and committed (the transaction it replaces)."""
    def run(db: SPD, ops: list[tuple[str, int, Direction, int]]) -> None:
        for op, k, direction, prio in ops:
            sel = _JOURNAL_SELECTORS[k]
            if op == "update":
                db.update(Policy(sel, direction, Action.DISCARD, priority=prio), now=1.0)
            elif db.get(sel, direction) is not None:
                db.delete(sel, direction)

    live = SPD()
    run(live, before)
    if keep:
        live.take_changes()
    state = _spd_state(live)
    live.savepoint()
    run(live, during)
    with pytest.raises(SPDError):
        live.copy()  # nothing may share what a rollback restores
    live.rollback()
    assert _spd_state(live) == state
    assert [p for p in live] == [p for p in live.copy()]

    ref = live.copy()
    run(ref, during)
    live.savepoint()
    run(live, during)
    live.release()
    assert [(e.policy, e.spid, e.order) for e in live.entries()] == \
        [(e.policy, e.spid, e.order) for e in ref.entries()]
    assert {k: [c.policy for c in b.items] for k, b in live._index.items() if b.keys} == \
        {k: [c.policy for c in b.items] for k, b in ref._index.items() if b.keys}
    assert (live.generation, live._next_spid, live._next_order) == \
        (ref.generation, ref._next_spid, ref._next_order)
    assert (None if live._changed is None else list(live._changed.items())) == \
        (None if ref._changed is None else list(ref._changed.items()))
