"""The shared-memory SA table: torn reads, sequence blocks across processes, key wiping."""

from __future__ import annotations

import ipaddress
import os
import signal
import stat
import time

import multiprocess
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.sa import Mode, SecurityAssociation, UdpEncap
from ipsecd.satable import (
    SA_COUNTER_COLUMNS,
    SEQ_GONE,
    Direction,
    SACounter,
    SATable,
    TableFull,
    changed_slots,
    pack_generation,
)

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")


def make_sa(spi: int, fill: int, **kw: object) -> SecurityAssociation:
    """An SA whose keys are ``fill`` repeated, so a torn read shows as a key/SPI mismatch."""
    return SecurityAssociation(
        spi=spi, protocol=IpProto.ESP, src=A, dst=B, mode=Mode.TUNNEL,
        enc=EncrId.ENCR_AES_GCM_16, enc_key=bytearray([fill]) * 36, **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def table() -> SATable:
    t = SATable.create(None, n_slots=8, n_workers=2, max_replay_window=1024)
    yield t
    t.close()


def test_roundtrip_of_every_field(table: SATable) -> None:
    sa = SecurityAssociation(
        spi=0xDEADBEEF, protocol=IpProto.ESP, src=ipaddress.ip_address("2001:db8::1"),
        dst=ipaddress.ip_address("2001:db8::2"), mode=Mode.TRANSPORT, reqid=7,
        replay_window=512, enc=EncrId.ENCR_AES_CBC, enc_key=bytearray(range(16)),
        auth=IntegId.AUTH_HMAC_SHA2_256_128, auth_key=bytearray(range(32)), esn=True,
        encap=UdpEncap(4500, 4501), seq=41,
    )
    slot = table.free_slot()
    uid = table.install(slot, sa, Direction.OUT)
    entry = table.read(slot)
    assert entry is not None and entry.uid == uid and entry.direction is Direction.OUT
    got = entry.sa
    assert (got.spi, got.src, got.dst, got.mode, got.reqid, got.replay_window) == (
        sa.spi, sa.src, sa.dst, sa.mode, sa.reqid, sa.replay_window)
    assert (got.enc, got.enc_key, got.auth, got.auth_key, got.esn) == (
        sa.enc, sa.enc_key, sa.auth, sa.auth_key, True)
    assert got.encap == UdpEncap(4500, 4501)
    assert table.alloc_seq(slot, 1, 2**64 - 1) == 42  # continues after sa.seq


def test_segment_is_private_and_keys_are_wiped(table: SATable) -> None:
    path = f"/dev/shm/{table.name.lstrip('/')}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = bytes(range(100, 136))
    sa = make_sa(1, 0)
    sa.enc_key = bytearray(key)
    slot = table.free_slot()
    table.install(slot, sa, Direction.IN)
    with open(path, "rb") as f:
        assert key in f.read()
    table.remove(slot)
    with open(path, "rb") as f:
        assert key not in f.read()
    assert table.read(slot) is None


def test_table_full(table: SATable) -> None:
    for i in range(table.n_slots):
        table.install(table.free_slot(), make_sa(100 + i, i), Direction.IN)
    with pytest.raises(TableFull):
        table.free_slot()


def test_generation_moves_on_every_change(table: SATable) -> None:
    g0 = table.generation
    table.install(0, make_sa(5, 5), Direction.IN)
    g1 = table.generation
    table.remove(0)
    assert g0 < g1 < table.generation


def _writer(name: str, seconds: float) -> None:
    t = SATable.attach(name)
    # Only the creator normally writes; the test drives the writer side from a child
    # process so the reader can run concurrently in the parent.
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        fill = i % 250 + 1
        t.install(0, make_sa(fill, fill), Direction.IN)
        i += 1
    t.buf.release()


def test_reader_never_sees_a_torn_slot(table: SATable) -> None:
    table.install(0, make_sa(1, 1), Direction.IN)
    proc = multiprocess.Process(target=_writer, args=(table.name, 1.5))
    proc.start()
    reads = changes = 0
    last = -1
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        entry = table.read(0)
        if entry is None:
            continue
        reads += 1
        spi = entry.sa.spi
        # Every byte of the key must belong to the same SA as the SPI.
        assert entry.sa.enc_key == bytearray([spi]) * 36, "torn read"
        if spi != last:
            changes += 1
            last = spi
    proc.join(5)
    assert proc.exitcode == 0
    assert reads > 1000 and changes > 10  # the race was really exercised


def _take_seqs(name: str, slot: int, count: int, batch: int, out: object) -> None:
    t = SATable.attach(name)
    got = []
    for _ in range(count // batch):
        first = t.alloc_seq(slot, batch, 2**32 - 1)
        got.extend(range(first, first + batch))
    out.put(got)  # type: ignore[attr-defined]
    t.buf.release()


def test_sequence_numbers_unique_across_processes(table: SATable) -> None:
    table.install(0, make_sa(9, 9), Direction.OUT)
    queue = multiprocess.Queue()
    procs = [multiprocess.Process(target=_take_seqs, args=(table.name, 0, 20000, 7, queue))
             for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(5)
    seen = [s for r in results for s in r]
    assert len(seen) == len(set(seen)) == 3 * (20000 // 7) * 7
    assert min(seen) == 1 and table.last_seq(0) == len(seen)


def _hold_lock_forever(name: str, ready: object) -> None:
    import fcntl
    t = SATable.attach(name)
    fcntl.lockf(t._shm._fd, fcntl.LOCK_EX, 1, 0)
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)


def test_killed_holder_releases_the_sequence_lock(table: SATable) -> None:
    table.install(0, make_sa(9, 9), Direction.OUT)
    ready = multiprocess.Event()
    proc = multiprocess.Process(target=_hold_lock_forever, args=(table.name, ready))
    proc.start()
    assert ready.wait(10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(5)
    start = time.monotonic()
    assert table.alloc_seq(0, 1, 2**32 - 1) == 1
    assert time.monotonic() - start < 1


def test_sequence_space_is_never_cycled(table: SATable) -> None:
    sa = make_sa(3, 3)
    sa.seq = 2**32 - 3
    table.install(0, sa, Direction.OUT)
    assert table.alloc_seq(0, 2, 2**32 - 1) == 2**32 - 2
    assert table.alloc_seq(0, 1, 2**32 - 1) == 0  # exhausted: rekey, never wrap
    assert table.alloc_seq(0, 1, 2**64 - 1) == 2**32  # with ESN the space goes on


def test_a_removed_sa_gives_no_more_sequence_numbers(table: SATable) -> None:
    """A worker that has not yet seen a removal cannot take numbers for the old key.

    Otherwise a key that comes straight back (a script re-applied with the same SA)
    would start from a number read before the worker took its last batch: AES-GCM
    nonces used twice.
    """
    sa = make_sa(5, 5)
    sa.seq = 100
    old = table.install(0, sa, Direction.OUT)
    assert table.alloc_seq(0, 10, 2**32 - 1, old) == 101
    assert table.remove(0) == 110  # final: everything handed out so far
    assert table.alloc_seq(0, 1, 2**32 - 1, old) == SEQ_GONE
    assert table.last_seq(0) == 110
    # The slot reused, even for the same key: the old uid stays refused, and the
    # new SA's numbers are its own.
    again = make_sa(5, 5)
    again.seq = 110
    new = table.install(0, again, Direction.OUT)
    assert new != old
    assert table.alloc_seq(0, 1, 2**32 - 1, old) == SEQ_GONE
    assert table.alloc_seq(0, 1, 2**32 - 1, new) == 111


def test_counters_are_per_worker_and_summed(table: SATable) -> None:
    table.install(3, make_sa(4, 4), Direction.IN)
    c0, c1 = table.sa_counters(0), table.sa_counters(1)
    base = 3 * SA_COUNTER_COLUMNS
    c0[base + SACounter.PACKETS] += 5
    c1[base + SACounter.PACKETS] += 7
    c0[base + SACounter.BYTES] += 500
    c1[base + SACounter.LAST_USED_NS] = 99
    totals = table.sum_sa_counters(3)
    assert totals[SACounter.PACKETS] == 12 and totals[SACounter.BYTES] == 500
    assert totals[SACounter.LAST_USED_NS] == 99
    c0.release()
    c1.release()
    table.install(3, make_sa(4, 4), Direction.IN)  # a new SA in the slot starts from zero
    assert table.sum_sa_counters(3)[SACounter.PACKETS] == 0


def test_free_slot_searches_from_start_then_wraps_around() -> None:
    """free_slot(start=k): the lowest free slot from k on, else the lowest below k; across the
    blocks it reads the state bytes in (600 slots), and never one in ``exclude``."""
    import random

    t = SATable.create(None, n_slots=600, n_workers=1, max_replay_window=64)
    try:
        rnd = random.Random(7)
        used: set[int] = set()
        for i in range(560):
            start = rnd.randrange(0, 700)  # past the end: from 0
            exclude = set(rnd.sample(range(600), 5))
            free = [s for s in range(600) if s not in used and s not in exclude]
            s0 = start if start < 600 else 0
            want = next((s for s in free if s >= s0), free[0] if free else None)
            slot = t.free_slot(exclude=exclude, start=start)
            assert slot == want
            t.install(slot, make_sa(0x1000 + i, i % 256, replay_window=0), Direction.IN)
            used.add(slot)
            if rnd.random() < 0.2:
                gone = rnd.choice(sorted(used))
                t.remove(gone)
                used.discard(gone)
    finally:
        t.close()


def test_slot_generations_are_every_slots_generation() -> None:
    """slot_generations (one strided copy) against slot_generation slot by slot, as the
    slots are written and freed; changed_slots names exactly the slots that moved."""
    t = SATable.create(None, n_slots=300, n_workers=1, max_replay_window=64)
    try:
        before = t.slot_generations()
        assert before == bytes(4 * 300)  # a slot never written: generation 0
        for i, slot in enumerate((0, 5, 64, 299, 5)):
            t.install(slot, make_sa(0x2000 + i, i, replay_window=0), Direction.OUT)
        t.remove(64)
        after = t.slot_generations()
        assert after == b"".join(pack_generation(t.slot_generation(s)) for s in range(300))
        assert changed_slots(after, before) == [0, 5, 64, 299]
        assert changed_slots(after, bytearray(after)) == []
    finally:
        t.close()


@settings(max_examples=200)
@given(st.integers(1, 9000), st.lists(st.tuples(st.integers(0, 8999), st.integers(1, (1 << 32) - 1)),
                                     max_size=40))
def test_changed_slots_is_a_slot_by_slot_comparison(n: int, writes: list[tuple[int, int]]) -> None:
    old = bytearray(4 * n)
    for i in range(0, n, 7):
        old[4 * i:4 * i + 4] = pack_generation(2 * i)
    new = bytearray(old)
    for slot, gen in writes:
        if slot < n:
            new[4 * slot:4 * slot + 4] = pack_generation(gen)
    want = [s for s in range(n) if new[4 * s:4 * s + 4] != old[4 * s:4 * s + 4]]
    assert changed_slots(bytes(new), old) == want


def _reference_decode(raw: bytearray) -> tuple[object, ...]:
    """What a slot decodes to, by the enum classes and ipaddress.ip_address themselves."""
    from ipsecd.satable import _SLOT

    (_, _, direction, proto, mode, spi, reqid, window, enc_id, auth_id, _, _, _, _, family,
     _, _, _, src, dst, _) = _SLOT.unpack_from(raw)
    alen = 4 if family == 4 else 16
    return (Direction(direction), IpProto(proto), EncrId(enc_id), IntegId(auth_id),
            ipaddress.ip_address(src[:alen]), ipaddress.ip_address(dst[:alen]),
            (Mode.ANY, Mode.TRANSPORT, Mode.TUNNEL)[mode], spi, reqid, window)


@settings(max_examples=200)
@given(direction=st.sampled_from([1, 2, 3]), proto=st.integers(0, 255),
       enc=st.integers(0, 40), auth=st.integers(0, 20), family=st.sampled_from([4, 6]),
       src=st.binary(min_size=16, max_size=16), dst=st.binary(min_size=16, max_size=16))
def test_decoding_a_slot_is_what_the_enum_classes_make(direction: int, proto: int, enc: int,
                                                       auth: int, family: int, src: bytes,
                                                       dst: bytes) -> None:
    """_decode_slot's look-up tables of code points against the enum classes: the same
    members, the same ValueError for a value that is none; addresses as ip_address makes
    them."""
    from ipsecd.satable import _SLOT, _decode_slot

    raw = bytearray(256)
    _SLOT.pack_into(raw, 0, 2, 1, direction, proto, 2, 0x1234, 7, 64, enc, auth, 0xFFFF, 0, 0,
                    0, family, 0, 0, 0, src, dst, 9)
    try:
        want = _reference_decode(raw)
    except ValueError:
        with pytest.raises(ValueError):
            _decode_slot(0, raw)
        return
    entry = _decode_slot(0, raw)
    assert entry is not None
    sa = entry.sa
    got = (entry.direction, sa.protocol, sa.enc, sa.auth, sa.src, sa.dst, sa.mode, sa.spi,
           sa.reqid, sa.replay_window)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]


def test_read_head_is_what_read_decodes(table: SATable) -> None:
    """read_head (the fields that steer an inbound SA, undecoded) against read; None for a
    free slot and for one being written (odd generation)."""
    from ipsecd.satable import _GEN

    table.install(2, make_sa(0x3001, 1), Direction.IN)
    table.install(5, make_sa(0x3002, 2, replay_window=0).replace(protocol=IpProto.AH),
                  Direction.OUT)
    table.install(6, make_sa(0x3003, 3), Direction.OUT)
    table.remove(6)
    for slot in range(8):
        entry = table.read(slot)
        want = None if entry is None else (entry.generation, entry.direction,
                                           entry.sa.protocol, entry.sa.spi)
        assert table.read_head(slot) == want
    off = table._slot_off(2)
    gen = _GEN.unpack_from(table.buf, off)[0]
    _GEN.pack_into(table.buf, off, gen + 1)
    assert table.read_head(2) is None
    _GEN.pack_into(table.buf, off, gen)
    assert table.read_head(2) is not None
