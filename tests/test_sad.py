"""The SAD: keys, uniqueness, wiping, transactions, outbound selection (ipsecd.sad)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Mode, SAState, SecurityAssociation
from ipsecd.sad import SAD, SADError

ip = ipaddress.ip_address
A, B, C = ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")
ESP, AH, IPCOMP = IpProto.ESP, IpProto.AH, IpProto.IPCOMP


def sa(spi: int, src: object = A, dst: object = B, proto: IpProto = ESP, *,
       mode: Mode = Mode.ANY, reqid: int = 0) -> SecurityAssociation:
    assert isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert isinstance(dst, ipaddress.IPv4Address | ipaddress.IPv6Address)
    return SecurityAssociation(
        spi=spi, protocol=proto, src=src, dst=dst, mode=mode, reqid=reqid,
        enc=EncrId.ENCR_AES_GCM_16 if proto is ESP else None,
        enc_key=bytearray(range(1, 21)) if proto is ESP else bytearray(),
    )


def wiped(x: SecurityAssociation) -> bool:
    return x.state is SAState.DEAD and not any(x.enc_key) and not any(x.auth_key)


def test_add_get_and_key() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x, now=100.0)
    assert sad.get(0x1000, ESP, B) is x
    assert sad.get(0x1000, ESP, A) is None  # destination is part of the key
    assert sad.get(0x1000, AH, B) is None  # protocol too
    assert (0x1000, ESP, B) in sad
    assert sad.created(x) == 100.0
    assert len(sad) == 1


def test_spi_unique_per_protocol_and_destination() -> None:
    sad = SAD()
    sad.add(sa(0x1000))
    with pytest.raises(SADError, match=re.escape("esp SA spi 0x1000 to 192.0.2.2 already exists")):
        sad.add(sa(0x1000, src=C))  # another source does not make it another SA
    sad.add(sa(0x1000, proto=AH))  # same SPI, other protocol
    sad.add(sa(0x1000, dst=C))  # same SPI, other destination
    assert len(sad) == 3


def test_only_ipsec_protocols() -> None:
    with pytest.raises(SADError, match="esp, ah or ipcomp"):
        SAD().add(sa(0x1000, proto=IpProto.TCP))


def test_delete_wipes_and_checks_source() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x)
    with pytest.raises(SADError, match=re.escape("no esp SA spi 0x1000 to 192.0.2.2 from 192.0.2.3")):
        sad.delete(0x1000, ESP, B, src=C)
    assert not wiped(x)
    assert sad.delete(0x1000, ESP, B, src=A) is x
    assert wiped(x)
    with pytest.raises(SADError, match="no esp SA"):
        sad.delete(0x1000, ESP, B)


def test_deleteall_by_addresses_and_protocol() -> None:
    sad = SAD()
    victims = [sa(0x1000), sa(0x1001)]
    keep = [sa(0x1002, proto=AH), sa(0x1003, src=C), sa(0x1004, src=B, dst=A)]
    for x in victims + keep:
        sad.add(x)
    assert sad.deleteall(A, B, ESP) == 2
    assert all(wiped(x) for x in victims)
    assert not any(wiped(x) for x in keep)
    assert sad.deleteall(A, B, ESP) == 0
    assert len(sad) == 3


def test_flush_all_or_one_protocol() -> None:
    sad = SAD()
    e, h, c = sa(0x1000), sa(0x1001, proto=AH), sa(0x1002, proto=IPCOMP)
    for x in (e, h, c):
        sad.add(x)
    assert sad.flush(AH) == 1
    assert wiped(h) and not wiped(e)
    assert sad.flush() == 2
    assert wiped(e) and wiped(c)
    assert len(sad) == 0


def test_update_replaces_and_wipes_the_old_one() -> None:
    sad = SAD()
    old = sa(0x1000)
    sad.add(old, now=5.0)
    new = sa(0x1000, mode=Mode.TUNNEL)
    assert sad.update(new) is old
    assert wiped(old)
    assert sad.get(0x1000, ESP, B) is new
    assert sad.created(new) == 5.0  # an update completes the SA, it does not restart it
    with pytest.raises(SADError, match=re.escape("no esp SA spi 0x2000 to 192.0.2.2 to update")):
        sad.update(sa(0x2000))


def test_dump_order_and_filter() -> None:
    sad = SAD()
    xs = [sa(0x1003), sa(0x1001, proto=AH), sa(0x1002)]
    for x in xs:
        sad.add(x)
    assert sad.dump() == xs
    assert list(sad) == xs
    assert sad.dump(ESP) == [xs[0], xs[2]]


def test_created_of_an_unknown_sa() -> None:
    with pytest.raises(SADError, match="not in this SAD"):
        SAD().created(sa(0x1000))


def test_generation_grows_on_every_change() -> None:
    sad = SAD()
    seen = [sad.generation]
    sad.add(sa(0x1000))
    seen.append(sad.generation)
    sad.update(sa(0x1000))
    seen.append(sad.generation)
    sad.delete(0x1000, ESP, B)
    seen.append(sad.generation)
    sad.add(sa(0x1000))
    sad.flush()
    seen.append(sad.generation)
    assert seen == sorted(set(seen))


# -- transactions ----------------------------------------------------------------


def test_copy_defers_wiping_until_commit() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x)
    work = sad.copy()
    work.delete(0x1000, ESP, B)
    assert not wiped(x)  # the live SAD still has it
    assert sad.get(0x1000, ESP, B) is x
    sad.replace_with(work)
    assert wiped(x)
    assert sad.get(0x1000, ESP, B) is None


def test_abandoned_copy_wipes_nothing() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x)
    gen = sad.generation
    work = sad.copy()
    work.flush()
    del work
    assert not wiped(x)
    assert sad.get(0x1000, ESP, B) is x
    assert sad.generation == gen


def test_commit_does_not_wipe_an_sa_that_is_still_installed() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x)
    work = sad.copy()
    work.delete(0x1000, ESP, B)
    work.add(x)  # the same object back again
    sad.replace_with(work)
    assert not wiped(x)
    assert sad.get(0x1000, ESP, B) is x


def test_nested_transaction_defers_to_the_outer_one() -> None:
    sad = SAD()
    x = sa(0x1000)
    sad.add(x)
    outer = sad.copy()
    inner = outer.copy()
    inner.flush()
    outer.replace_with(inner)
    assert not wiped(x)
    sad.replace_with(outer)
    assert wiped(x)


# -- outbound selection ----------------------------------------------------------


def test_find_outbound_mode_reqid_and_state() -> None:
    sad = SAD()
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is None
    tunnel = sa(0x1000, mode=Mode.TUNNEL)
    sad.add(tunnel)
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is None
    assert sad.find_outbound(A, B, ESP, Mode.TUNNEL) is tunnel
    any_mode = sa(0x1001, mode=Mode.ANY, reqid=7)
    sad.add(any_mode)
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is any_mode  # -m any serves both
    assert sad.find_outbound(A, B, ESP, Mode.TUNNEL) is any_mode  # newest wins
    assert sad.find_outbound(A, B, ESP, Mode.TUNNEL, reqid=7) is any_mode
    assert sad.find_outbound(A, B, ESP, Mode.TUNNEL, reqid=8) is None
    assert sad.find_outbound(B, A, ESP, Mode.TUNNEL) is None  # direction matters
    assert sad.find_outbound(A, B, AH, Mode.TUNNEL) is None


def test_find_outbound_prefers_mature_then_newest_and_skips_dead() -> None:
    sad = SAD()
    old, new = sa(0x1000), sa(0x1001)
    sad.add(old)
    sad.add(new)
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is new
    new.state = SAState.DYING  # soft lifetime reached on the newer one
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is old
    old.state = SAState.LARVAL
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is new  # dying is still usable
    new.state = SAState.DEAD
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is None


def test_find_outbound_forgets_deleted_sas() -> None:
    sad = SAD()
    sad.add(sa(0x1000))
    sad.delete(0x1000, ESP, B)
    assert sad.find_outbound(A, B, ESP, Mode.TRANSPORT) is None


# --- the change journal ------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["add", "update", "delete", "take", "copy", "commit",
                                           "drop"]),
                          st.integers(1, 5), st.sampled_from([A, C])), max_size=40))
def test_journal_names_every_changed_key_and_copies_share_nothing(
        ops: list[tuple[str, int, ipaddress.IPv4Address]]) -> None:
    live = SAD()
    db = live
    seen: dict[object, SecurityAssociation] = {}  # key -> SA when the journal was last taken

    def state(d: SAD) -> dict[object, SecurityAssociation]:
        return {x.key: x for x in d.dump()}

    def check(d: SAD) -> None:
        changes = d.changes()
        assert changes is not None and len(set(changes)) == len(changes)
        now = state(d)
        for key in now.keys() | seen.keys():
            if key not in changes:
                assert now.get(key) is seen.get(key)
        present = [k for k in changes if k in now]
        assert present == [x.key for x in d.dump() if x.key in set(present)]  # SAD order first
        assert changes[:len(present)] == present
        for x in d.dump():  # outbound selection sees exactly this SAD's SAs
            assert d.find_outbound(x.src, x.dst, x.protocol, Mode.TRANSPORT) is not None
        pairs = {(x.src, x.dst, x.protocol) for x in now.values()}
        assert set(d._by_pair) == pairs
        for pair, lst in d._by_pair.items():
            assert sorted(id(x) for x in lst) == sorted(
                id(x) for x in now.values() if (x.src, x.dst, x.protocol) == pair)

    spi_next = 0x100
    for op, n, src in ops:
        spi_next += 1
        if op == "add" and (n, ESP, B) not in db:
            db.add(sa(n, src, B))
        elif op == "update" and (n, ESP, B) in db:
            db.update(sa(n, src, B))
        elif op == "delete" and (n, ESP, B) in db:
            db.delete(n, ESP, B)
        elif op == "take" and db is live:
            live.take_changes()
            seen = state(live)
        elif op == "copy" and db is live:
            db = live.copy()
        elif op == "commit" and db is not live:
            live.replace_with(db)
            db = live
        elif op == "drop":
            db = live
        check(db)
        check(live)


def _sad_state(d: SAD) -> object:
    """Everything a savepoint must restore: the slots, the pair lists (objects and
    contents), which lists the SAD may change in place, counters and the journal."""
    return ({k: (id(s.sa), s.created, s.order) for k, s in d._slots.items()},
            {p: (id(lst), [id(x) for x in lst]) for p, lst in d._by_pair.items()},
            {i for i in d._owned if any(id(lst) == i for lst in d._by_pair.values())},
            d.generation, d._next_order,
            None if d._changed is None else list(d._changed))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["add", "delete"]), st.integers(1, 6),
                          st.sampled_from([A, C])), max_size=12),
       st.lists(st.tuples(st.integers(1, 9), st.sampled_from([A, C])), max_size=8),
       st.booleans(), st.booleans())
def test_savepoint_rollback_restores_and_release_equals_a_copy(
        before: list[tuple[str, int, ipaddress.IPv4Address]],
        added: list[tuple[int, ipaddress.IPv4Address]], take: bool, copied: bool) -> None:
    """A savepoint (IKE's in-place transaction, additions only): rolled back, the SAD is
    exactly as it was, the SAs taken back not wiped; released, it equals the same additions
    made on a copy and committed."""
    live = SAD()
    for op, k, src in before:
        if op == "add" and live.get(k, ESP, B) is None:
            live.add(sa(k, src), now=float(k))
        elif op == "delete" and live.get(k, ESP, B) is not None:
            live.delete(k, ESP, B)
    if take:
        live.take_changes()
    if copied:  # the pair lists now shared with a copy: an addition must not change them
        other = live.copy()
        shared = {p: list(lst) for p, lst in other._by_pair.items()}
    state = _sad_state(live)
    live.savepoint()
    new = []
    for k, src in added:
        if live.get(0x100 + k, ESP, B) is None:
            x = sa(0x100 + k, src)
            live.add(x, now=5.0)
            new.append(x)
    with pytest.raises(SADError):
        live.delete(0x100 + added[0][0], ESP, B) if added else live.copy()
    live.rollback()
    assert _sad_state(live) == state
    assert not any(wiped(x) for x in new)
    if copied:
        assert {p: list(lst) for p, lst in other._by_pair.items()} == shared

    ref = live.copy()
    live.savepoint()
    for x in new:
        ref.add(x, now=5.0)
        live.add(x, now=5.0)
    live.release()
    assert [(x.key, live.created(x)) for x in live.dump()] == \
        [(x.key, ref.created(x)) for x in ref.dump()]
    assert {p: list(lst) for p, lst in live._by_pair.items()} == \
        {p: list(lst) for p, lst in ref._by_pair.items()}
    assert (live.generation, live._next_order, live.changes()) == \
        (ref.generation, ref._next_order, ref.changes())
