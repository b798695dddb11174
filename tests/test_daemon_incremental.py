"""The control process's incremental bookkeeping (ipsecd.daemon): after any sequence of SAD
and SPD changes, what a sync leaves - SA table slots, the workers' policy table, the routes
it wants - equals what a recomputation from the whole SAD and SPD gives."""

from __future__ import annotations

import ipaddress
import time
import uuid
from pathlib import Path

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
