"""workers.worker._SpiIndex: the inbound SA lookup, checked against a plain model."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.worker import _SpiIndex


@dataclass(frozen=True)
class Sa:
    slot: int
    spi: int
    dst: bytes


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(1, 3),
                         st.sampled_from([b"\x01", b"\x02", b"\x03"])), max_size=60)


@settings(max_examples=300)
@given(ops)
def test_lookups_match_a_model(steps: list[tuple[bool, int, int, bytes]]) -> None:
    index: _SpiIndex[Sa] = _SpiIndex()  # type: ignore[type-var]
    model: dict[int, Sa] = {}  # slot -> SA, as the worker's table view holds them
    for add, slot, spi, dst in steps:
        # The worker forgets a slot before it loads the slot's new SA; the SAD never
        # holds two SAs with one (SPI, destination).
        index.forget(slot)
        model.pop(slot, None)
        if add and not any((s.spi, s.dst) == (spi, dst) for s in model.values()):
            sa = Sa(slot, spi, dst)
            index.add(sa)
            model[slot] = sa
        by_dst = {(s.spi, s.dst): s for s in model.values()}
        assert index.by_dst == by_dst
        expect: dict[int, Sa | None] = {}
        for s in model.values():
            expect[s.spi] = None if s.spi in expect else s
        assert index.by_spi == expect
    index.clear()
    assert not index.by_spi and not index.by_dst
