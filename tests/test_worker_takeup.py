"""A worker's refresh takes up what changed in the SA table (workers.worker._reload_sas):
compared with a worker that reads the whole table afresh, and with a slot caught
half-written."""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Iterator

import pytest

from ipsecd.iana import EncrId, IpProto
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.satable import _GEN, Direction, SATable
from ipsecd.spd import SPD
from workers.bench_takeup import main as bench_main
from workers.policy import PolicyPublisher, PolicyTable
from workers.worker import Worker, WorkerSpec

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
SLOTS = 150


@pytest.fixture
def tables() -> Iterator[tuple[SATable, WorkerSpec]]:
    tag = f"ipsecd-test-takeup-{os.getpid()}"
    table = SATable.create(f"{tag}-sa", SLOTS, 2, max_replay_window=64)
    policy = PolicyTable(f"{tag}-policy", size=1 << 16)
    PolicyPublisher(policy).publish(SPD(), {}, [A], {})
    try:
        yield table, WorkerSpec(index=1, count=2, table=table.name, policy=policy.name, tun="",
                                outside=(), mark=0)
    finally:
        table.close()
        policy.close()


def _sa(spi: int, direction: Direction) -> SecurityAssociation:
    src, dst = (B, A) if direction is Direction.IN else (A, B)
    return SecurityAssociation(spi=spi, protocol=IpProto.ESP, src=src, dst=dst,
                               mode=Mode.TUNNEL, replay_window=64,
                               enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray(os.urandom(20)))


def _close(worker: Worker) -> None:
    worker.close()  # drops the SAs, whose replay windows are views of the segment
    worker.table.close()


def _view(worker: Worker) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """(outbound slot -> (uid, SPI), inbound SPI -> (slot, uid)) of a worker."""
    out = {slot: (o.uid, o.ctx.spi) for slot, o in worker.outbound.items()}
    inbound = {spi: (e.slot, e.uid) for spi, e in worker.inbound.items() if e is not None}
    return out, inbound


def test_refreshes_take_up_what_a_fresh_worker_reads(tables: tuple[SATable, WorkerSpec]) -> None:
    table, spec = tables
    worker = Worker.tables_only(spec)
    rnd = random.Random(5)
    used: set[int] = set()
    spi = 0x100
    for _ in range(12):
        for _ in range(rnd.randrange(0, 25)):  # installs, some into slots just freed
            if len(used) == SLOTS:
                break
            slot = table.free_slot(start=rnd.randrange(SLOTS))
            spi += 1
            direction = Direction.IN if spi % 3 else Direction.OUT
            table.install(slot, _sa(spi, direction), direction)
            used.add(slot)
        for slot in rnd.sample(sorted(used), min(len(used), rnd.randrange(0, 10))):
            table.remove(slot)
            used.discard(slot)
        worker._refresh()
        fresh = Worker.tables_only(spec)
        fresh._refresh()
        assert _view(worker) == _view(fresh)
        _close(fresh)
        # slot by slot: every outbound SA, and the inbound SAs whose SPI steers to this
        # worker (SPI % count == index)
        entries = [e for e in map(table.read, range(SLOTS)) if e is not None]
        assert _view(worker) == (
            {e.slot: (e.uid, e.sa.spi) for e in entries if e.direction is Direction.OUT},
            {e.sa.spi: (e.slot, e.uid) for e in entries
             if e.direction is Direction.IN and e.sa.spi % 2 == 1})
    assert worker.outbound and worker.inbound
    _close(worker)


def test_a_slot_caught_half_written_is_read_again(tables: tuple[SATable, WorkerSpec]) -> None:
    table, spec = tables
    worker = Worker.tables_only(spec)
    table.install(7, _sa(0x201, Direction.OUT), Direction.OUT)
    worker._refresh()
    assert 7 in worker.outbound
    table.remove(7)
    off = table._slot_off(7)
    gen = _GEN.unpack_from(table.buf, off)[0]
    _GEN.pack_into(table.buf, off, gen + 1)  # odd: a writer is at it
    table._bump_generation()
    worker._refresh()
    assert worker.sa_generation == -1  # looks again next turn
    assert 7 in worker.outbound  # nothing taken from a torn slot, not even its removal
    _GEN.pack_into(table.buf, off, gen)
    uid = table.install(7, _sa(0x203, Direction.OUT), Direction.OUT)  # the writer finishes
    worker._refresh()
    assert worker.outbound[7].uid == uid and worker.outbound[7].ctx.spi == 0x203
    _close(worker)


def test_the_takeup_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--children", "40", "--batch", "15", "--runs", "1"]) == 0
    assert "40 children" in capsys.readouterr().out
