"""Sequence-number state of an SA: the outbound counter and the inbound anti-replay window.

Theory of operation
===================

Both objects keep their whole state in one small fixed-size buffer, so that the multi-process datapath can place that buffer in a
shared-memory slot (pass ``buffer=``) instead of the default private
``bytearray``.  Neither object locks: the datapath decides which process owns
an SA's counter or window (e.g. steering an inbound SPI to one worker).  The
codecs (:mod:`ipsecd.esp`, and AH) never own this state; they are handed the
sequence number (outbound) or the window (inbound) per packet.

Outbound (:class:`SequenceCounter`)
    RFC 4303 §3.3.3 / RFC 4302 §3.3.2: the first packet carries 1, each
    packet the next value, and the counter never cycles: the last usable value
    is 2^32 - 1, or 2^64 - 1 with extended sequence numbers (ESN, RFC 4304).
    :meth:`SequenceCounter.next` returns 0 once the space is exhausted; the
    codecs turn a 0 into :attr:`Drop.SEQ_OVERFLOW` and the SA must be rekeyed.

Inbound (:class:`ReplayWindow`)
    RFC 4303 §3.4.3: a packet is refused if its sequence number was already
    received or lies left of a sliding window of ``size`` packets that ends at
    the highest authenticated sequence number ``T``.  The check runs before the
    ICV is verified (it is cheap and rejects replays without crypto work); the
    window moves only after the ICV verified (:meth:`ReplayWindow.update`), so
    a forged packet can never advance it.

    The bitmap follows RFC 6479: ``n`` blocks used as a ring, with one block
    more than the window needs.  Blocks are bytes (RFC 6479 suggests machine
    words; in Python small-int byte operations are the cheapest): sequence
    number ``s`` lives in block ``(s >> 3) % n``, bit ``s & 7``.  When ``T``
    moves into a new block, only the blocks passed over are cleared - no
    shifting of the whole bitmap, so the cost of an in-order packet does not
    depend on the window size.

    The in-order run.  Most packets arrive in order: each is ``T + 1``.  For
    those only ``T`` is stored; the bitmap is brought up to date later.  A
    second word ``B`` (``bitmap_top``) says how far the bitmap is: it holds
    every accepted number up to ``B``, and *every* number in ``(B, T]`` has
    been accepted - the run is contiguous by construction, because any other
    update first writes the run into the bitmap (:meth:`ReplayWindow.flush`)
    and leaves ``B = T``.  So the state is exact at every moment, with no
    flush owed: :meth:`ReplayWindow.check` refuses a number in ``(B, T]``
    without looking at the bitmap.  That is what makes the shared-memory
    window safe across a worker restart (a new window object attached to the
    same state): ``T`` is stored before the codec accepts the packet (after
    its ICV verified), so a killed worker leaves at worst ``T`` set for a
    packet it never delivered - a drop of that one number later, never a
    replay accepted.  The in-order case costs one shared-memory read and one
    store per packet (the ESP fast path inlines it).

    With ESN only the low 32 bits are on the wire.  :meth:`ReplayWindow.check`
    infers the high 32 bits as RFC 4303 Appendix A2.1 describes (the value
    that puts the packet closest to the window) and returns the full 64-bit
    number, which the codec feeds into the ICV.  A packet from far outside the
    window gets the wrong high bits and then fails its ICV check.

Layout of the state buffer, native-endian unsigned 64-bit words: bytes 0-7 =
``T`` (for the counter: the last sequence number sent), then, for the window,
bytes 8-15 = ``B`` and the ``n`` bitmap blocks.  :meth:`ReplayWindow.state_bytes`
gives its size: 145 bytes for the default window of 1024.
"""

from __future__ import annotations

from ipsecd.drops import Drop
from ipsecd.sa import DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW

__all__ = ["MIN_REPLAY_WINDOW", "ReplayWindow", "SequenceCounter"]

#: Smallest enabled window: RFC 4303 §3.4.3 says 32 packets MUST be supported.
MIN_REPLAY_WINDOW = 32

_M32 = 0xFFFFFFFF
_SEQ_MAX_32 = _M32  # RFC 4303 §3.3.3: the counter must not cycle past 2^32 - 1
_SEQ_MAX_64 = (1 << 64) - 1  # with ESN (RFC 4304 §2)
# The high-order-bits inference needs a window width even when anti-replay
# is disabled: use half the 32-bit space, i.e. "the closest subspace".
_ESN_INFER_WIDTH_WHEN_DISABLED = 1 << 31

_OK = Drop.OK
_REPLAY = Drop.REPLAY


def _state_bytes(nbytes: int, buffer: object | None, initialize: bool) -> memoryview:
    """A byte view of ``nbytes`` over ``buffer`` (or over a new bytearray), zeroed if ``initialize``."""
    if buffer is None:
        return memoryview(bytearray(nbytes))
    view = memoryview(buffer)  # type: ignore[arg-type]
    if view.readonly or view.nbytes < nbytes:
        raise ValueError(f"state buffer must be writable and hold at least {nbytes} bytes")
    view = view.cast("B")[:nbytes]
    if initialize:
        view[:] = bytes(nbytes)
    return view


class SequenceCounter:
    """Outbound sequence numbers for one SA (RFC 4303 §3.3.3), for the single-process case.

    ``last`` is the last number already sent (the SAD's ``sa.seq``); the next
    packet gets ``last + 1``.  :meth:`next` returns 0 when the space is
    exhausted - the codecs drop such a packet as :attr:`Drop.SEQ_OVERFLOW`.
    With ``buffer`` the state (8 bytes) lives there; ``initialize=False``
    attaches to the state already in it (``last`` is then ignored).
    """

    __slots__ = ("esn", "limit", "words")

    WORDS = 1

    def __init__(
        self, *, esn: bool = False, last: int = 0, buffer: object | None = None, initialize: bool = True
    ) -> None:
        self.esn = esn
        self.limit = _SEQ_MAX_64 if esn else _SEQ_MAX_32
        if not 0 <= last <= self.limit:
            raise ValueError(f"sequence number {last} out of range")
        self.words = _state_bytes(8 * self.WORDS, buffer, initialize).cast("Q")
        if initialize:
            self.words[0] = last

    def next(self) -> int:
        """The next sequence number, or 0 once the counter would cycle."""
        state = self.words
        seq: int = state[0] + 1
        if seq > self.limit:
            return 0
        state[0] = seq
        return seq

    @property
    def last(self) -> int:
        """The last sequence number handed out (0 before the first packet)."""
        value: int = self.words[0]
        return value

    @property
    def exhausted(self) -> bool:
        return self.last >= self.limit


class ReplayWindow:
    """The inbound anti-replay window of one SA (RFC 4303 §3.4.3, RFC 6479 bitmap).

    ``size`` is the window in packets: 0 disables the check (sequence numbers
    are still tracked so ESN high bits can be inferred), otherwise
    ``MIN_REPLAY_WINDOW``..``MAX_REPLAY_WINDOW``.  Usage per packet::

        drop, seq = window.check(seq_low32)   # before decrypting / verifying
        ... verify the ICV with ``seq`` (its high 32 bits with ESN) ...
        window.update(seq)                     # only after the ICV verified

    With ``buffer`` the state (:meth:`state_bytes` bytes) lives there, e.g. in
    a shared-memory slot; ``initialize=False`` attaches to the state already
    in it (a restarted worker carrying on with its predecessor's window).

    ``words`` (a two-element ``Q`` view: ``T``, then ``B``), ``bitmap`` (the
    blocks, one byte = 8 sequence numbers) and ``blocks`` are public so the
    ESP codec can inline the in-order case of :meth:`update`: for ``seq ==
    T + 1`` it is exactly ``words[0] = seq``.
    """

    __slots__ = ("_infer_width", "bitmap", "blocks", "esn", "size", "state", "words")

    def __init__(
        self,
        size: int = DEFAULT_REPLAY_WINDOW,
        *,
        esn: bool = False,
        buffer: object | None = None,
        initialize: bool = True,
    ) -> None:
        if size != 0 and not MIN_REPLAY_WINDOW <= size <= MAX_REPLAY_WINDOW:
            raise ValueError(
                f"replay window {size} out of range: 0 (disabled) or "
                f"{MIN_REPLAY_WINDOW}..{MAX_REPLAY_WINDOW}"
            )
        #: Window size in packets (0: anti-replay disabled).
        self.size = size
        self.esn = esn
        self.blocks = self.blocks_for(size)
        self._infer_width = size or _ESN_INFER_WIDTH_WHEN_DISABLED
        #: The whole state (``T``, ``B``, bitmap), e.g. to compare two windows.
        self.state = _state_bytes(self.state_bytes(size), buffer, initialize)
        self.words = self.state[:16].cast("Q")
        self.bitmap = self.state[16:]

    @staticmethod
    def blocks_for(size: int) -> int:
        """Bitmap blocks (bytes) for a window of ``size``: one more than it spans (RFC 6479 §2)."""
        return -(-size // 8) + 1 if size else 0

    @classmethod
    def state_bytes(cls, size: int) -> int:
        """Bytes of state buffer a window of ``size`` packets needs: T, B, then the bitmap."""
        return 16 + cls.blocks_for(size)

    @property
    def top(self) -> int:
        """``T``: the highest sequence number whose ICV verified (0 before the first)."""
        value: int = self.words[0]
        return value

    @property
    def bitmap_top(self) -> int:
        """``B``: the bitmap holds the numbers accepted up to here; all of ``(B, T]`` were accepted."""
        value: int = self.words[1]
        return value

    def check(self, seq_low: int) -> tuple[Drop, int]:
        """Would a packet with wire sequence number ``seq_low`` be acceptable?

        Returns ``(Drop.OK, full_seq)`` or ``(Drop.REPLAY, full_seq)``; with ESN
        ``full_seq`` carries the inferred high 32 bits (RFC 4303 Appendix A2.1).
        Does not change the window.
        """
        words = self.words
        top: int = words[0]
        if self.esn:
            # RFC 4303 Appendix A2.1: pick the high half that puts seq_low
            # closest to the window [T - W + 1, T].
            top_low = top & _M32
            top_high = top >> 32
            bottom = top_low - self._infer_width + 1
            if bottom >= 0:  # case A: the window lies within one 2^32 subspace
                high = top_high if seq_low >= bottom else top_high + 1
            else:  # case B: the window spans two subspaces
                high = top_high - 1 if seq_low >= bottom + (1 << 32) else top_high
                if high < 0:  # there is no subspace before the first one
                    high = 0
            seq = (high << 32) | seq_low
        else:
            seq = seq_low
        if not seq:
            return (_REPLAY, seq)  # RFC 4303 §3.3.3: the first packet carries 1, never 0
        if seq > top:
            return (_OK, seq)
        size = self.size
        if not size:
            return (_OK, seq)
        if top - seq >= size:
            return (_REPLAY, seq)  # left of the window
        if seq > words[1]:
            return (_REPLAY, seq)  # in the in-order run (B, T]: all received
        if self.bitmap[(seq >> 3) % self.blocks] >> (seq & 7) & 1:
            return (_REPLAY, seq)  # already received
        return (_OK, seq)

    def update(self, seq: int) -> None:
        """Record ``seq`` (a full sequence number from :meth:`check`) after its ICV verified."""
        words = self.words
        top: int = words[0]
        if seq == top + 1:
            words[0] = seq  # the in-order run (B, T] grows by one
            return
        blocks = self.blocks
        if not blocks:  # anti-replay disabled: only T is kept, for ESN inference
            if seq > top:
                words[0] = seq
            return
        self.flush()
        bitmap = self.bitmap
        if seq > top:
            # RFC 6479: clear the blocks T moves over; they hold bits of
            # sequence numbers that have left the window.
            self._clear_blocks((top >> 3) + 1, (seq >> 3) + 1)
            bitmap[(seq >> 3) % blocks] |= 1 << (seq & 7)
            # T before B: killed in between, the restarted window takes
            # (top, seq] as received - a few drops, never a replay.
            words[0] = seq
            words[1] = seq
        elif top - seq < self.size:
            bitmap[(seq >> 3) % blocks] |= 1 << (seq & 7)
        # else: the window moved past seq meanwhile

    def flush(self) -> None:
        """Write the in-order run ``(B, T]`` into the bitmap, so that ``B == T``.

        :meth:`update` does it before anything that is not the next number in
        order; calling it at other times changes no verdict.
        """
        words = self.words
        top: int = words[0]
        done: int = words[1]
        if done >= top:
            return
        if self.blocks:
            self._clear_blocks((done >> 3) + 1, (top >> 3) + 1)
            # Only the numbers still inside the window need their bit.
            low = max(done + 1, top - self.size + 1)
            first, last = low >> 3, top >> 3
            head = 0xFF << (low & 7) & 0xFF
            tail = 0xFF >> (7 - (top & 7))
            blocks = self.blocks
            bitmap = self.bitmap
            if first == last:
                bitmap[first % blocks] |= head & tail
            else:
                bitmap[first % blocks] |= head
                self._fill_blocks(first + 1, last, 0xFF)
                bitmap[last % blocks] |= tail
        words[1] = top

    def _clear_blocks(self, first: int, end: int) -> None:
        # Blocks first..end-1 (absolute numbers, seq >> 3) become empty.
        if end - first >= self.blocks:
            self.bitmap[:] = bytes(self.blocks)
        elif end > first:
            self._fill_blocks(first, end, 0)

    def _fill_blocks(self, first: int, end: int, value: int) -> None:
        # Blocks first..end-1 (fewer than self.blocks) are set to ``value``: at most two slices of the ring.
        count = end - first
        if count <= 0:
            return
        blocks = self.blocks
        at = first % blocks
        part = min(count, blocks - at)
        self.bitmap[at : at + part] = bytes((value,)) * part
        if part < count:
            self.bitmap[: count - part] = bytes((value,)) * (count - part)

    def reset(self, top: int = 0) -> None:
        """Forget every received number; ``T`` becomes ``top`` (tests, SA re-install)."""
        self.bitmap[:] = bytes(self.blocks)
        self.words[0] = top
        self.words[1] = top
