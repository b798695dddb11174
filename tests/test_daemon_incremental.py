"""The control process's incremental bookkeeping (ipsecd.daemon): after any sequence of SAD
and SPD changes, what a sync leaves - SA table slots, the workers' policy table, the routes
it wants - equals what a recomputation from the whole SAD and SPD gives."""

from __future__ import annotations

import ipaddress
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.config import parse
from ipsecd.daemon import Daemon
from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Lifetime, Mode, SecurityAssociation
from ipsecd.satable import Direction as SlotDirection
from ipsecd.satable import SATable
from ipsecd.spd import Action, Direction, IpsecRequest, Level, Policy, Selector
from workers.policy import (
    InstalledSA,
    PolicyPublisher,
    PolicyReader,
    PolicySet,
    PolicyTable,
    SlotInfo,
    build_document,
)

ip = ipaddress.ip_address
LOCAL = [ip("192.0.2.1"), ip("192.0.2.9")]
PEERS = [ip("192.0.2.2"), ip("192.0.2.3")]
PREFIXES = ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/24"]
SOURCES = ["192.0.2.0/24", "10.9.0.0/16"]


def _daemon(tmp: Path) -> Daemon:
    cfg = parse(f'[daemon]\nstate_dir = "{tmp}"\n[datapath]\noutside = ["eth0"]\n', "c.toml", tmp)
    d = Daemon(cfg)
    tag = uuid.uuid4().hex[:8]
    d.table = SATable.create(f"ipsecd-test-{tag}-sa", n_slots=64, n_workers=1,
                             max_replay_window=4096)
    d.policy_table = PolicyTable(f"ipsecd-test-{tag}-policy", size=1 << 20)
    d.policy_publisher = PolicyPublisher(d.policy_table)
    d.local = {LOCAL[0]}
    d._route_infos = lambda dsts: [SlotInfo(1400, "eth0")] * len(dsts)  # type: ignore[method-assign]
    return d


def _sa(spi: int, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address) -> SecurityAssociation:
    return SecurityAssociation(spi=spi, protocol=IpProto.ESP, src=src, dst=dst,
                               mode=Mode.TUNNEL, reqid=spi % 3,
                               enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(range(20)),
                               soft=Lifetime(add_seconds=5 if spi % 2 else 0))


ops = st.lists(st.tuples(
    st.sampled_from(["add_sa", "del_sa", "update_sa", "policy", "del_policy", "local", "dying",
                     "commit", "sync"]),
    st.integers(0, 7), st.integers(0, 5)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_sync_equals_a_full_recomputation(tmp_path_factory: object, plan: list[tuple[str, int,
                                                                                     int]]) -> None:
    tmp = Path(str(tmp_path_factory.mktemp("d")))  # type: ignore[attr-defined]
    d = _daemon(tmp)
    assert d.table is not None and d.policy_table is not None
    reader = PolicyReader(d.policy_table.name)
    try:
        d._sync()
        for op, a, b in plan:
            spi = 0x100 + a
            dst = (LOCAL + PEERS)[b % 4]
            src = (PEERS + LOCAL)[b % 4]
            sel = Selector.make(SOURCES[b % 2], PREFIXES[a % 3])
            direction = list(Direction)[b % 3]
            if op == "add_sa" and d.sad.get(spi, IpProto.ESP, dst) is None:
                d.sad.add(_sa(spi, src, dst))
            elif op == "update_sa" and d.sad.get(spi, IpProto.ESP, dst) is not None:
                d.sad.update(_sa(spi, src, dst))
            elif op == "del_sa" and d.sad.get(spi, IpProto.ESP, dst) is not None:
                d.sad.delete(spi, IpProto.ESP, dst)
            elif op == "policy":
                action = [Action.IPSEC, Action.IPSEC, Action.NONE][a % 3]
                reqs = (IpsecRequest(IpProto.ESP, Mode.TUNNEL, PEERS[0], LOCAL[0], Level.UNIQUE,
                                     1 + b),) if action is Action.IPSEC else ()
                d.spd.update(Policy(sel, direction, action, reqs, priority=[0, 3][a % 2]))
            elif op == "del_policy" and d.spd.get(sel, direction) is not None:
                d.spd.delete(sel, direction)
            elif op == "local":
                d.local = {LOCAL[0]} if len(d.local) == 2 else set(LOCAL)
            elif op == "dying":  # the soft lifetime of the SAs added with a small one
                d._lifetimes(time.time() + 10)
            elif op == "commit":  # a transaction, as setkey and IKE make them
                spd2, sad2 = d.spd.copy(), d.sad.copy()
                if sad2.get(spi, IpProto.ESP, dst) is None:
                    sad2.add(_sa(spi, src, dst))
                spd2.update(Policy(sel, Direction.OUT, Action.DISCARD))
                d._check_plan(spd2, sad2)
                d.sad.replace_with(sad2)
                d.spd.replace_with(spd2)
            d._sync()
            slots = {key: s.sa for key, s in d.slots.items()}
            assert slots == d._desired(d.sad)
            outbound = [InstalledSA(s.sa, s.slot, s.order) for s in d.slots.values()
                        if s.direction is SlotDirection.OUT]
            assert {i.slot: i.sa for i in outbound} == {k: v.sa for k, v in d._outbound.items()}
            info = {i.slot: SlotInfo(1400, "eth0") for i in outbound}
            assert d._slot_info == info
            got = reader.read()
            assert got is not None
            want = PolicySet.from_document(got[0], build_document(d.spd, outbound, d.local, info))
            ps = PolicySet.from_document(*got)
            assert ({k: v for k, v in ps.rules.items() if v}
                    == {k: v for k, v in want.rules.items() if v})
            assert ps.sas == want.sas and ps.slots == want.slots and ps.local == want.local
            d._take_spd_changes()
            d._update_route_want()
            assert d._route_want == d._wanted_routes()
            live = {id(s.sa) for s in d.slots.values()}
            assert set(d.usage) <= live
    finally:
        reader.close()
        d.policy_table.close()
        d.table.close()
        d._netlink.shutdown(wait=True)


def test_an_sa_that_becomes_dying_drops_behind_a_mature_one(tmp_path: Path) -> None:
    """Soft lifetime: the dying SA's outbound slot is published again (a mature SA is then
    preferred to it, though older), also when a sync for other changes comes first."""
    d = _daemon(tmp_path)
    assert d.table is not None and d.policy_table is not None
    reader = PolicyReader(d.policy_table.name)
    try:
        old = _sa(0x200, LOCAL[0], PEERS[0])  # even SPI: no soft lifetime
        new = _sa(0x201, LOCAL[0], PEERS[0])  # odd: soft lifetime 5 s
        d.sad.add(old)
        d.sad.add(new)
        d._sync()

        def candidates() -> list[int]:
            got = reader.read()
            assert got is not None
            sas = PolicySet.from_document(*got).sas
            return [c[0] for c in sas[(int(IpProto.ESP), LOCAL[0].packed, PEERS[0].packed)]]

        slot_old = d.slots[(old.key, SlotDirection.OUT)].slot
        slot_new = d.slots[(new.key, SlotDirection.OUT)].slot
        assert candidates() == [slot_new, slot_old]  # the newest first
        d.sad.add(_sa(0x202, LOCAL[0], PEERS[1]))  # another change, synced first
        d._lifetimes(time.time() + 10)
        d._sync()
        assert candidates() == [slot_old, slot_new]  # mature before dying
    finally:
        reader.close()
        d.policy_table.close()
        d.table.close()
        d._netlink.shutdown(wait=True)


def test_a_batch_of_children_that_does_not_fit_changes_nothing_it_refuses(
        tmp_path: Path) -> None:
    """IKE's install is a transaction in place (SPD/SAD savepoints): a batch that does not
    fit is taken back whole, then each child is tried alone; the refused ones leave no
    SA, policy or journal entry behind, and their SAs are not wiped."""
    import asyncio
    import types

    from ipsecd.ike.messages import TrafficSelector
    from ipsecd.sad import JOURNAL_LIMIT

    d = _daemon(tmp_path)
    assert d.table is not None and d.policy_table is not None
    d._local_at = float("inf")  # no netlink: d.local stays as set
    local_ts = [TrafficSelector(ip("10.1.0.0"), ip("10.1.255.255"))]

    def child(i: int) -> tuple[Any, Any]:
        peer = ip(0xC6120000 + i)
        inner = ip(0x0A090000 + i)

        def esp(spi: int, src: Any, dst: Any) -> SecurityAssociation:
            return SecurityAssociation(spi=spi, protocol=IpProto.ESP, src=src, dst=dst,
                                       mode=Mode.TUNNEL, reqid=0x1000 + i,
                                       enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(range(20)))
        c = types.SimpleNamespace(
            inbound=esp(0xC000 + i, peer, LOCAL[0]), outbound=esp(0x1000 + i, LOCAL[0], peer),
            ipcomp_in=None, ipcomp_out=None, name="c", reqid=0x1000 + i, mode=Mode.TUNNEL,
            local_ts=local_ts, remote_ts=[TrafficSelector(inner, inner)])
        ike = types.SimpleNamespace(name=f"peer[{i}]", local=types.SimpleNamespace(address=LOCAL[0]),
                                    remote=types.SimpleNamespace(address=peer))
        return ike, c

    async def run() -> None:
        pairs = [child(i) for i in range(34)]  # 2 slots each: 32 fit in 64
        assert d.ike_install_children(pairs[:30]) == {}
        spd_before = [(e.policy, e.spid) for e in d.spd.entries()]
        failed = d.ike_install_children(pairs[30:])
        assert set(failed) == {id(pairs[32][1]), id(pairs[33][1])}
        assert all("the SA table is full" in why for why in failed.values())
        for _, c in pairs[32:]:
            assert d.sad.get(c.inbound.spi, IpProto.ESP, LOCAL[0]) is None
            assert any(c.inbound.enc_key)  # not wiped: IKE still owns them
        installed = {e.policy.key for e in d.spd.entries()}
        assert len(installed) == 32 * 3 and len(d.sad) == 64
        # the first 30 as they were; the rolled-back batch used up no policy ids
        assert set(spd_before) <= {(e.policy, e.spid) for e in d.spd.entries()}
        assert sorted(e.spid for e in d.spd.entries()) == list(range(1, 32 * 3 + 1))
        assert {key: s.sa for key, s in d.slots.items()} == d._desired(d.sad)
        changes = d.spd.changes()
        assert changes is not None and len(changes) < JOURNAL_LIMIT
        assert all(d.spd.get(*k) is not None or v is not None for k, v in changes.items())

    try:
        d._sync()
        asyncio.run(run())
    finally:
        d.policy_table.close()
        d.table.close()
        d._netlink.shutdown(wait=True)
