"""The IKE manager's timer heap (ipsecd.ike.manager): a tick handles exactly the SAs whose
timer is due - what a scan of every SA would handle - whatever their timers did since."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.ike.config import IkeConfig
from ipsecd.ike.manager import IkeManager


class FakeSa:
    """next_timer / handle_timer / events, as IkeSa has them; handling a timer moves it."""

    def __init__(self, spi: int, due: float | None) -> None:
        self.local_spi = spi.to_bytes(8, "big")
        self.due = due
        self.handled: list[float] = []
        self.state = None  # not established: no keepalives
        self.nat_local = False

    def next_timer(self) -> float | None:
        return self.due

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)
        self.due = now + 0.35  # e.g. a retransmission, later

    def events(self) -> list[object]:
        return []


class NoDatapath:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the manager called the datapath: {name}")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_a_tick_handles_what_a_scan_would(seed: int) -> None:
    rnd = random.Random(seed)
    manager = IkeManager(IkeConfig(), NoDatapath(), mark=0)  # type: ignore[arg-type]
    manager._scan_at = float("inf")  # no safety-net scan: the heap alone
    sas = [FakeSa(k, rnd.choice([None, rnd.uniform(0, 3)])) for k in range(12)]
    for sa in sas:
        manager.sas[sa.local_spi] = sa  # type: ignore[assignment]
        manager._process(sa)  # type: ignore[arg-type]
    now = 0.0
    for _ in range(40):
        now += 0.1
        for sa in rnd.sample(sas, 2):  # timers move (an event: _process follows)
            sa.due = rnd.choice([None, now + rnd.uniform(-0.05, 2)])
            manager._process(sa)  # type: ignore[arg-type]
        if rnd.random() < 0.1:  # an SA goes away
            gone = rnd.choice(sas)
            manager.sas.pop(gone.local_spi, None)
        want = {id(sa) for sa in sas if manager.sas.get(sa.local_spi) is sa
                and sa.due is not None and sa.due <= now}
        before = {id(sa): len(sa.handled) for sa in sas}
        manager._tick(now)
        got = {id(sa) for sa in sas if len(sa.handled) > before[id(sa)]}
        assert got == want
        assert all(len(sa.handled) - before[id(sa)] <= 1 for sa in sas)  # once per tick


def test_a_timer_moved_without_an_event_is_found_by_the_scan() -> None:
    manager = IkeManager(IkeConfig(), NoDatapath(), mark=0)  # type: ignore[arg-type]
    sa = FakeSa(1, 5.0)
    manager.sas[sa.local_spi] = sa  # type: ignore[assignment]
    manager._process(sa)  # type: ignore[arg-type]
    manager._tick(0.1)  # the first tick scans every SA
    sa.due = 0.15  # earlier, and no event follows
    manager._tick(0.2)
    assert not sa.handled  # the heap alone does not know (its entry says 5.0) ...
    manager._tick(1.2)  # ... the scan a second later does
    assert sa.handled == [1.2]


def test_a_moved_timer_that_is_announced_fires_at_the_next_tick() -> None:
    """A timer moved earlier behind the manager's back, announced with timer_moved, fires at
    the next tick - not up to TIMER_SCAN later, at the safety scan."""
    manager = IkeManager(IkeConfig(), NoDatapath(), mark=0)  # type: ignore[arg-type]
    sa = FakeSa(1, 5.0)
    manager.sas[sa.local_spi] = sa  # type: ignore[assignment]
    manager._process(sa)  # type: ignore[arg-type]
    manager._tick(0.1)  # the first tick scans every SA
    sa.due = 0.15  # earlier, and no event follows ...
    manager.timer_moved(sa)  # type: ignore[arg-type]  # ... but it is announced
    manager._tick(0.11)
    assert not sa.handled  # not due yet
    manager._tick(0.2)
    assert sa.handled == [0.2]
    manager._tick(0.3)  # handled once; its next timer (0.2 + 0.35) is not due
    assert sa.handled == [0.2]
    manager._tick(0.6)
    assert sa.handled == [0.2, 0.6]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_announced_moves_fire_on_time_without_the_scan(seed: int) -> None:
    """Timers moved behind the manager's back (earlier or later) and announced: every tick
    handles exactly the SAs a scan of all of them would, with the safety scan off."""
    rnd = random.Random(seed)
    manager = IkeManager(IkeConfig(), NoDatapath(), mark=0)  # type: ignore[arg-type]
    manager._scan_at = float("inf")
    sas = [FakeSa(k, rnd.choice([None, rnd.uniform(0, 3)])) for k in range(10)]
    for sa in sas:
        manager.sas[sa.local_spi] = sa  # type: ignore[assignment]
        manager.timer_moved(sa)  # type: ignore[arg-type]
    now = 0.0
    for _ in range(40):
        now += 0.1
        for sa in rnd.sample(sas, 3):
            sa.due = rnd.choice([None, now + rnd.uniform(-0.05, 2)])
            manager.timer_moved(sa)  # type: ignore[arg-type]
        want = {id(sa) for sa in sas if sa.due is not None and sa.due <= now}
        before = {id(sa): len(sa.handled) for sa in sas}
        manager._tick(now)
        got = {id(sa) for sa in sas if len(sa.handled) > before[id(sa)]}
        assert got == want
