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

    With ESN only the low 32 bits are on the wire.  :meth:`ReplayWindow.check`
    infers the high 32 bits as RFC 4303 Appendix A2.1 describes (the value
    that puts the packet closest to the window) and returns the full 64-bit
    number, which the codec feeds into the ICV.  A packet from far outside the
    window gets the wrong high bits and then fails its ICV check.

Layout of the state buffer: bytes 0-7 = ``T`` as a native-endian unsigned
64-bit word (for the counter: the last sequence number sent), then, for the
window, the ``n`` bitmap blocks.  :meth:`ReplayWindow.state_bytes` gives its
size: 137 bytes for the default window of 1024.
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

    ``top_word`` (a one-element ``Q`` view holding ``T``), ``bitmap`` (the
    blocks, one byte = 8 sequence numbers) and ``blocks`` are public so the
    ESP codec can inline the in-order case of :meth:`update`.
    """

    __slots__ = ("_infer_width", "bitmap", "blocks", "esn", "size", "top_word")

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
        state = _state_bytes(self.state_bytes(size), buffer, initialize)
        self.top_word = state[:8].cast("Q")
        self.bitmap = state[8:]

    @staticmethod
    def blocks_for(size: int) -> int:
        """Bitmap blocks (bytes) for a window of ``size``: one more than it spans (RFC 6479 §2)."""
        return -(-size // 8) + 1 if size else 0

    @classmethod
    def state_bytes(cls, size: int) -> int:
        """Bytes of state buffer a window of ``size`` packets needs: T, then the bitmap."""
        return 8 + cls.blocks_for(size)

    @property
    def top(self) -> int:
        """``T``: the highest sequence number whose ICV verified (0 before the first)."""
        value: int = self.top_word[0]
        return value

    def check(self, seq_low: int) -> tuple[Drop, int]:
        """Would a packet with wire sequence number ``seq_low`` be acceptable?

        Returns ``(Drop.OK, full_seq)`` or ``(Drop.REPLAY, full_seq)``; with ESN
        ``full_seq`` carries the inferred high 32 bits (RFC 4303 Appendix A2.1).
        Does not change the window.
        """
        top: int = self.top_word[0]
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
        if self.bitmap[(seq >> 3) % self.blocks] >> (seq & 7) & 1:
            return (_REPLAY, seq)  # already received
        return (_OK, seq)

    def update(self, seq: int) -> None:
        """Record ``seq`` (a full sequence number from :meth:`check`) after its ICV verified."""
        top_word = self.top_word
        top: int = top_word[0]
        blocks = self.blocks
        if not blocks:  # anti-replay disabled: only T is kept, for ESN inference
            if seq > top:
                top_word[0] = seq
            return
        bitmap = self.bitmap
        if seq > top:
            # RFC 6479: clear the blocks T moves over; they hold bits of
            # sequence numbers that have left the window.
            old_block = top >> 3
            new_block = seq >> 3
            if new_block - old_block >= blocks:
                bitmap[:] = bytes(blocks)
            else:
                for block in range(old_block + 1, new_block + 1):
                    bitmap[block % blocks] = 0
            top_word[0] = seq
        elif top - seq >= self.size:
            return  # the window moved past seq meanwhile
        index = (seq >> 3) % blocks
        bitmap[index] |= 1 << (seq & 7)

    def reset(self, top: int = 0) -> None:
        """Forget every received number; ``T`` becomes ``top`` (tests, SA re-install)."""
        self.bitmap[:] = bytes(self.blocks)
        self.top_word[0] = top
