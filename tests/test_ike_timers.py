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
