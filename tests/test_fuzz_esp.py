"""Bounded fuzzing of ESP decapsulation: any bytes give a Drop or a packet, never an exception.

The invariant (as h11's ``fuzz/``): ``decap_into`` returns ``(Drop.OK, start,
end, next_header)`` with ``start <= end`` inside the buffer, or ``(reason, 0,
0, 0)``; ``encap`` and :func:`ipsecd.esp.peek` never raise either.  The
codec's ``RAISE_UNEXPECTED`` is set (``conftest.py``), so an exception it
would otherwise log and count as MALFORMED fails the test.

Inputs: random bytes; random bytes behind a plausible IPv4/IPv6 header that
names ESP or UDP 4500 (to get past the first checks); and mutations (bit
flips, byte overwrites, cuts, insertions, deletions, length-field rewrites)
of the corpus in ``tests/corpus/esp/`` - valid packets from scapy and ipsecd
for every transform family.

In the suite the runs are short (a few hundred examples each).  For a longer
run outside pytest::

    python tests/test_fuzz_esp.py --seconds 60

which mutates the corpus with ``random`` until the time is up and prints how
many packets ended in each drop reason.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import struct
import sys
import time
from collections import Counter
from pathlib import Path

if __name__ == "__main__":  # a standalone run: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.drops import Drop
from ipsecd.esp import EspContext, peek
from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.packet import ipv4_header, ipv6_header
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode, SecurityAssociation, UdpEncap

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS_FILE = Path(__file__).parent / "corpus" / "esp" / "vectors.json"
CORPUS = json.loads(CORPUS_FILE.read_text())


def context_of(vector: dict[str, object]) -> EspContext:
    outer = str(vector["outer"])
    src, dst = (ipaddress.ip_address(a) for a in CORPUS["outer"][outer])
    sa = SecurityAssociation(
        spi=int(CORPUS["spi"]),
        protocol=IpProto.ESP,
        src=src,
        dst=dst,
        mode=Mode(str(vector["mode"])),
        enc=EncrId(int(vector["enc"])),  # type: ignore[call-overload]
        enc_key=bytearray.fromhex(str(vector["enc_key"])),
        auth=IntegId(int(vector["auth"])),  # type: ignore[call-overload]
        auth_key=bytearray.fromhex(str(vector["auth_key"])),
        esn=bool(vector["esn"]),
        encap=UdpEncap() if vector["udp"] else None,
    )
    return EspContext(sa, allow_legacy=True)


def window_of(vector: dict[str, object]) -> ReplayWindow:
    window = ReplayWindow(64, esn=bool(vector["esn"]))
    window.reset(int(vector["seq"]) - 5)  # type: ignore[call-overload]
    return window


VECTORS = [(context_of(v), v, bytes.fromhex(str(v["esp"]))) for v in CORPUS["vectors"]]


def run(ctx: EspContext, data: bytes, window: ReplayWindow | None = None) -> Drop:
    """Decapsulate ``data`` in a fresh buffer and check the contract; returns the verdict."""
    window = window if window is not None else ReplayWindow(64, esn=ctx.esn)
    buf = memoryview(bytearray(data) + bytearray(16))
    result = ctx.decap_into(buf, 0, len(data), window)
    assert isinstance(result, tuple) and len(result) == 4
    drop, start, end, next_header = result
    assert isinstance(drop, Drop)
    if drop is Drop.OK:
        assert 0 <= start <= end <= len(data) and 0 <= next_header <= 255
    else:
        assert (start, end, next_header) == (0, 0, 0)
    peek(data)  # never raises either
    peek(data, udp_port=None)
    return drop


# -- the corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ctx", "vector", "esp"), VECTORS,
                         ids=[f"{v['source']}-{v['transform']}-{v['mode']}" for v in CORPUS["vectors"]])
def test_corpus_decapsulates(ctx: EspContext, vector: dict[str, object], esp: bytes) -> None:
    drop, result = ctx.decap(esp, window_of(vector))
    assert drop is Drop.OK and result is not None
    assert result.packet == bytes.fromhex(str(vector["plain"]))
    assert result.seq == vector["seq"]


# -- mutations -------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """A few random edits of the kinds that break parsers."""
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        if not out:
            out = bytearray(rng.randbytes(rng.randint(0, 64)))
            continue
        op = rng.choice(("flip", "byte", "cut", "insert", "delete", "length", "proto"))
        pos = rng.randrange(len(out))
        if op == "flip":
            out[pos] ^= 1 << rng.randrange(8)
        elif op == "byte":
            out[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == "cut":
            out = out[:pos]
        elif op == "insert":
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del out[pos : pos + rng.randint(1, 16)]
        elif op == "length" and len(out) >= 6:
            # The IPv4 total length (bytes 2-3) or IPv6 payload length (bytes 4-5).
            at = 2 if out[0] >> 4 == 4 else 4
            struct.pack_into("!H", out, at, rng.choice((0, 1, 20, 40, len(out), len(out) + 1, 0xFFFF,
                                                       rng.randrange(0x10000))))
        elif op == "proto" and len(out) >= 10:
            out[9 if out[0] >> 4 == 4 else 6] = rng.choice((IpProto.ESP, IpProto.UDP, IpProto.AH, 0, 44, 60))
    return bytes(out)


@FUZZ
@given(index=st.integers(0, len(VECTORS) - 1), seed=st.integers(0, 2**32))
def test_mutated_corpus(index: int, seed: int) -> None:
    ctx, vector, esp = VECTORS[index]
    run(ctx, mutate(esp, random.Random(seed)), window_of(vector))


@FUZZ
@given(index=st.integers(0, len(VECTORS) - 1), data=st.binary(max_size=400))
def test_random_bytes(index: int, data: bytes) -> None:
    run(VECTORS[index][0], data)


@FUZZ
@given(index=st.integers(0, len(VECTORS) - 1), family=st.sampled_from([4, 6]), udp=st.booleans(),
       body=st.binary(max_size=300))
def test_random_bytes_behind_a_plausible_header(index: int, family: int, udp: bool, body: bytes) -> None:
    ctx = VECTORS[index][0]
    if udp:
        body = struct.pack("!HHHH", 4500, 4500, 8 + len(body), 0) + body
    proto = IpProto.UDP if udp else IpProto.ESP
    if family == 4:
        packet = bytes(ipv4_header(bytes(4), bytes(4), proto, len(body))) + body
    else:
        packet = bytes(ipv6_header(bytes(16), bytes(16), proto, len(body))) + body
    run(ctx, packet)


@FUZZ
@given(index=st.integers(0, len(VECTORS) - 1), data=st.binary(max_size=300), seq=st.integers(0, 2**64))
def test_encap_never_raises(index: int, data: bytes, seq: int) -> None:
    ctx = VECTORS[index][0]
    drop, out = ctx.encap(data, seq)
    assert isinstance(drop, Drop) and (out == b"") == (drop is not Drop.OK)
    if drop is Drop.OK:
        assert ctx.decap(out, ReplayWindow(0, esn=ctx.esn))[0] in (Drop.OK, Drop.MALFORMED)


def test_header_length_fields_exhaustive() -> None:
    """Every IHL and a spread of total lengths around a valid IPv4 packet."""
    for ctx, vector, esp in VECTORS:
        if esp[0] >> 4 != 4:
            continue
        for ihl in range(16):
            for total in (0, 1, 19, 20, 21, 36, len(esp) - 1, len(esp), len(esp) + 1, 0xFFFF):
                data = bytearray(esp)
                data[0] = 0x40 | ihl
                struct.pack_into("!H", data, 2, total)
                run(ctx, bytes(data), window_of(vector))


# -- standalone ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz ipsecd ESP decapsulation with corpus mutations.")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    import ipsecd.esp

    ipsecd.esp.RAISE_UNEXPECTED = True
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    verdicts: Counter[str] = Counter()
    deadline = time.monotonic() + args.seconds
    runs = 0
    while time.monotonic() < deadline:
        ctx, vector, esp = rng.choice(VECTORS)
        data = mutate(esp, rng, rounds=rng.choice((1, 1, 2, 5))) if rng.random() < 0.9 else rng.randbytes(
            rng.randint(0, 200))
        verdicts[run(ctx, data, window_of(vector)).name] += 1
        runs += 1
    print(f"seed {seed}: {runs} packets in {args.seconds:.0f} s, no exception")
    for name, count in verdicts.most_common():
        print(f"  {name:<16} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
