"""The anti-replay window (RFC 4303 §3.4.3, Appendix A; RFC 6479) and the outbound counter.

Properties (hypothesis) against a reference model written from the RFC's
words: a number is accepted iff it is above the highest authenticated one,
or inside the window and not accepted before; never twice; only
authenticated packets move the window; with ESN the high 32 bits inferred
for the low 32 on the wire are the sender's, across the 2^32 boundary.
"""

from __future__ import annotations

import mmap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.drops import Drop
from ipsecd.replay import MIN_REPLAY_WINDOW, ReplayWindow, SequenceCounter
from ipsecd.sa import DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
M32 = 0xFFFFFFFF


class Model:
    """RFC 4303 §3.4.3 in the plainest terms: a set of accepted numbers and T."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = 0
        self.accepted: set[int] = set()

    def acceptable(self, seq: int) -> bool:
        if seq == 0:
            return False
        if seq > self.top or not self.size:
            return True
        return self.top - seq < self.size and seq not in self.accepted

    def record(self, seq: int) -> None:
        self.accepted.add(seq)
        self.top = max(self.top, seq)


# -- construction and layout -----------------------------------------------------------------


def test_sizes() -> None:
    assert ReplayWindow().size == DEFAULT_REPLAY_WINDOW == 1024
    for size in (0, MIN_REPLAY_WINDOW, 4096, MAX_REPLAY_WINDOW):
        assert ReplayWindow(size).size == size
    for size in (1, 31, MAX_REPLAY_WINDOW + 1, -1):
        with pytest.raises(ValueError):
            ReplayWindow(size)
    assert ReplayWindow.state_bytes(1024) == 16 + 129  # T, B, then 1024/8 + 1 blocks (RFC 6479 §2)
    assert ReplayWindow.state_bytes(0) == 16


def test_state_lives_in_the_given_buffer() -> None:
    """Shared memory: a second window attached to the same buffer sees the state."""
    with mmap.mmap(-1, 4096) as shared:
        first = ReplayWindow(64, buffer=shared)
        assert first.check(5) == (Drop.OK, 5)
        first.update(5)
        first.update(3)
        second = ReplayWindow(64, buffer=shared, initialize=False)
        assert second.top == 5
        assert second.check(5)[0] is Drop.REPLAY and second.check(3)[0] is Drop.REPLAY
        assert second.check(4) == (Drop.OK, 4)
        assert int.from_bytes(shared[:8], "little") == 5  # T is the first native u64
        del first, second  # release the exported views before the mmap closes
    with pytest.raises(ValueError):
        ReplayWindow(1024, buffer=bytearray(10))
    with pytest.raises(ValueError):
        ReplayWindow(64, buffer=b"\0" * 100)  # read-only


def test_counter_state_in_buffer_and_limits() -> None:
    buf = bytearray(8)
    counter = SequenceCounter(last=41, buffer=buf)
    assert counter.next() == 42
    attached = SequenceCounter(buffer=buf, initialize=False)
    assert attached.next() == 43 and counter.last == 43
    assert SequenceCounter().next() == 1  # RFC 4303 §3.3.3: the first packet carries 1
    esn = SequenceCounter(esn=True, last=2**64 - 2)
    assert esn.next() == 2**64 - 1 and esn.next() == 0 and esn.exhausted
    with pytest.raises(ValueError):
        SequenceCounter(last=2**32)


# -- examples --------------------------------------------------------------------------------


def test_basic_window_behaviour() -> None:
    window = ReplayWindow(32)
    assert window.check(0)[0] is Drop.REPLAY  # never sent
    for seq in (1, 2, 40):
        assert window.check(seq) == (Drop.OK, seq)
        window.update(seq)
    assert window.check(40)[0] is Drop.REPLAY
    assert window.check(9) == (Drop.OK, 9)  # 40 - 9 = 31 < 32: inside
    assert window.check(8)[0] is Drop.REPLAY  # left of the window
    window.update(1000)  # a jump clears the whole bitmap
    assert window.check(999) == (Drop.OK, 999)
    assert window.check(1000)[0] is Drop.REPLAY


def test_disabled_window_accepts_everything_but_zero() -> None:
    window = ReplayWindow(0)
    window.update(10)
    assert window.check(10) == (Drop.OK, 10)
    assert window.check(1) == (Drop.OK, 1)
    assert window.check(0)[0] is Drop.REPLAY


def test_esn_inference_examples() -> None:
    """RFC 4303 Appendix A2.1, both cases."""
    window = ReplayWindow(64, esn=True)
    window.reset((3 << 32) | 100)  # case A: the window [37, 100] lies in subspace 3
    assert window.check(90) == (Drop.OK, (3 << 32) | 90)
    assert window.check(200) == (Drop.OK, (3 << 32) | 200)
    assert window.check(10)[1] == (4 << 32) | 10  # below the window: taken as the next subspace
    window.reset((3 << 32) | 10)  # case B: the window spans subspaces 2 and 3
    assert window.check(M32 - 5) == (Drop.OK, (2 << 32) | (M32 - 5))
    assert window.check(5) == (Drop.OK, (3 << 32) | 5)
    assert window.check(1000) == (Drop.OK, (3 << 32) | 1000)
    fresh = ReplayWindow(64, esn=True)
    assert fresh.check(M32)[1] == M32  # no subspace before the first
    assert fresh.check(0)[0] is Drop.REPLAY


# -- properties ------------------------------------------------------------------------------

window_sizes = st.sampled_from([32, 33, 64, 100, 1024, 4096, 65536]) | st.integers(32, 2048)


@PROPERTY
@given(size=window_sizes,
       events=st.lists(st.tuples(st.integers(0, 5000), st.booleans()), max_size=300))
def test_matches_the_model_and_never_accepts_twice(size: int, events: list[tuple[int, bool]]) -> None:
    """Arbitrary arrival orders; ``authentic`` False models a packet whose ICV fails."""
    window, model = ReplayWindow(size), Model(size)
    accepted: list[int] = []
    for seq, authentic in events:
        drop, full = window.check(seq)
        assert full == seq
        assert (drop is Drop.OK) == model.acceptable(seq), (seq, model.top)
        if drop is Drop.OK and authentic:
            window.update(seq)
            model.record(seq)
            accepted.append(seq)
        assert window.top == model.top
    assert len(accepted) == len(set(accepted))


@PROPERTY
@given(size=window_sizes, start=st.integers(1, 10_000), jumps=st.lists(st.integers(-40, 300), max_size=200))
def test_mostly_in_order_streams(size: int, start: int, jumps: list[int]) -> None:
    """Sliding: in-order runs, block crossings, small reorderings and big jumps."""
    window, model = ReplayWindow(size), Model(size)
    seq = start
    for jump in jumps:
        seq = max(1, seq + jump)
        drop = window.check(seq)[0]
        assert (drop is Drop.OK) == model.acceptable(seq)
        if drop is Drop.OK:
            window.update(seq)
            model.record(seq)


@PROPERTY
@given(
    size=st.sampled_from([32, 64, 1024, 4096]),
    below=st.integers(0, 3000),
    steps=st.lists(st.integers(-31, 60), min_size=1, max_size=300),
)
def test_esn_window_slides_across_the_2_32_boundary(size: int, below: int, steps: list[int]) -> None:
    """The sender counts past 2^32 - 1 (ESN); packets arrive reordered by less than
    the window.  The window infers every full number right and stays exact."""
    window, model = ReplayWindow(size, esn=True), Model(size)
    start = (1 << 32) - below
    window.reset(start)
    model.top = start
    seq = start
    for step in steps:
        seq = max(1, seq + step)
        if model.top - seq >= size:
            continue  # left of the window: inference cannot be exact there (A2.2), skip
        drop, full = window.check(seq & M32)
        assert full == seq
        assert (drop is Drop.OK) == model.acceptable(seq)
        if drop is Drop.OK:
            window.update(seq)
            model.record(seq)
    assert window.top == model.top


@PROPERTY
@given(seqs=st.lists(st.integers(1, 200), max_size=200), size=st.sampled_from([32, 64, 128]))
def test_shared_buffer_windows_agree(seqs: list[int], size: int) -> None:
    """A window attached to the same state buffer (another process's view) agrees."""
    buf = bytearray(ReplayWindow.state_bytes(size))
    owner = ReplayWindow(size, buffer=buf)
    viewer = ReplayWindow(size, buffer=buf, initialize=False)
    for seq in seqs:
        drop = owner.check(seq)[0]
        assert viewer.check(seq)[0] is drop
        if drop is Drop.OK:
            viewer.update(seq)  # either view may write
        assert owner.check(seq)[0] is Drop.REPLAY


# -- the in-order run and restarts (a new window over the same shared state) ------------------


def test_in_order_run_is_kept_as_t_and_written_into_the_bitmap_on_a_gap() -> None:
    window = ReplayWindow(64)
    for seq in range(1, 41):
        window.update(seq)
    assert (window.top, window.bitmap_top) == (40, 0)  # (B, T] = 1..40: only T was stored
    assert not any(window.bitmap)
    assert all(window.check(seq)[0] is Drop.REPLAY for seq in range(1, 41))
    window.update(45)  # a gap: the run goes into the bitmap first
    assert (window.top, window.bitmap_top) == (45, 45)
    assert [window.check(seq)[0] for seq in range(38, 47)] == [Drop.REPLAY] * 3 + [Drop.OK] * 4 + [
        Drop.REPLAY, Drop.OK]
    window.flush()  # nothing owed: no verdict changes
    assert window.check(44) == (Drop.OK, 44) and window.check(40)[0] is Drop.REPLAY


@PROPERTY
@given(size=window_sizes,
       events=st.lists(st.tuples(st.integers(0, 3000), st.booleans(), st.booleans()), max_size=300),
       start=st.integers(0, 5))
def test_restart_carries_on_exactly(size: int, events: list[tuple[int, bool, bool]], start: int) -> None:
    """A worker restart is a new ReplayWindow attached to the same (shared-memory) state, at any
    point of a stream: mostly in order (runs), with gaps and reordering.  The new window refuses
    every number accepted before the restart and otherwise behaves as if nothing happened."""
    buf = bytearray(ReplayWindow.state_bytes(size))
    window, model = ReplayWindow(size, buffer=buf), Model(size)
    accepted: set[int] = set()
    seq = start
    for jump, in_order, restart in events:
        if restart:
            window = ReplayWindow(size, buffer=buf, initialize=False)
            assert all(window.check(s)[0] is Drop.REPLAY for s in accepted)
        seq = seq + 1 if in_order else jump
        drop = window.check(seq)[0]
        assert (drop is Drop.OK) == model.acceptable(seq), (seq, model.top)
        if drop is Drop.OK:
            assert seq not in accepted
            window.update(seq)
            model.record(seq)
            accepted.add(seq)
        assert window.top == model.top


@PROPERTY
@given(size=window_sizes, events=st.lists(st.integers(1, 3000), max_size=200),
       run=st.integers(0, 200), raised=st.integers(0, 5000))
def test_a_torn_update_never_reopens_a_number(size: int, events: list[int], run: int, raised: int) -> None:
    """What a worker killed in the middle of an update can leave: T stored, B and the bitmap
    not (yet).  Taking T higher alone never makes an accepted number acceptable again."""
    buf = bytearray(ReplayWindow.state_bytes(size))
    window = ReplayWindow(size, buffer=buf)
    accepted = set()
    for seq in [*events, *range(max(events, default=0) + 1, max(events, default=0) + 1 + run)]:
        if window.check(seq)[0] is Drop.OK:
            window.update(seq)
            accepted.add(seq)
    window.words[0] = window.top + raised  # killed right after storing T
    restarted = ReplayWindow(size, buffer=buf, initialize=False)
    assert all(restarted.check(seq)[0] is Drop.REPLAY for seq in accepted)
