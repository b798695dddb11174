"""The ESP fast paths' compiled-code cache (ipsecd.esp ``_compiled``): SAs of one shape
share one compilation, patched per SA, which must be the code a compilation of their own
would give."""

from __future__ import annotations

import dis
import itertools
import struct
from typing import Any

import pytest
from conftest import AEAD_TUNNEL, Transform, make_sa, udp4
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd import esp
from ipsecd.drops import Drop
from ipsecd.esp import EspContext
from ipsecd.replay import ReplayWindow


def _builds(monkeypatch: pytest.MonkeyPatch, transform: Transform, *, iv_mask: int = 0,
            fast_paths: str = "both", **kwargs: Any) -> list[tuple[str, dict[str, Any], object]]:
    """(template, constants, code) of every fast path an EspContext of these settings compiles."""
    seen: list[tuple[str, dict[str, Any], object]] = []
    real = esp._compiled

    def spy(template: str, constants: dict[str, Any]) -> object:
        code = real(template, constants)
        seen.append((template, dict(constants), code))
        return code

    monkeypatch.setattr(esp, "_compiled", spy)
    EspContext(make_sa(transform, **kwargs), iv_mask=iv_mask,
               fast_paths=fast_paths)  # type: ignore[arg-type]
    monkeypatch.setattr(esp, "_compiled", real)
    return seen


@pytest.mark.parametrize("transform", AEAD_TUNNEL, ids=lambda t: t.name)
@pytest.mark.parametrize(("esn", "encap", "family", "iv_mask"),
                         list(itertools.product((False, True), (False, True), (4, 6),
                                                (0, 0x0123456789ABCDEF))))
def test_patched_code_is_a_direct_compilation(monkeypatch: pytest.MonkeyPatch,
                                              transform: Transform, esn: bool, encap: bool,
                                              family: int, iv_mask: int) -> None:
    esp._CODE_CACHE.clear()
    for spi in (0x100, 0xFFFFFFFF, 0x0A0B0C0D):  # the first compiles, the others are patched
        builds = _builds(monkeypatch, transform, spi=spi, esn=esn, encap=encap, family=family,
                         iv_mask=iv_mask)
        if family == 4:
            assert len(builds) == 2  # encap and decap have fast paths
        for template, constants, code in builds:
            filename = f"<ipsecd.esp fast path, SPI {spi:#x}>"
            direct = compile(esp._render(template, constants), filename, "exec")
            assert _program(code) == _program(direct)
            assert _filenames(code) == _filenames(direct) == {filename}
    assert all(hit is not None for hit in esp._CODE_CACHE.values())


def _program(code: Any) -> list[Any]:
    """What ``code`` does: every instruction with the value it uses (a constant's value and
    type, not its index: a patched placeholder may duplicate a constant that a direct
    compilation shares) and its line, the nested code objects likewise.  Columns are left
    out: a placeholder's literal is longer than the value's."""
    out: list[Any] = [code.co_name, code.co_names, code.co_varnames, code.co_argcount]
    for ins in dis.get_instructions(code):
        value = ins.argval
        if hasattr(value, "co_code"):
            value = _program(value)
        elif ins.opname == "LOAD_CONST":
            value = (type(value), value)
        out.append((ins.opname, value, ins.positions.lineno if ins.positions else None))
    return out


def _filenames(code: Any) -> set[str]:
    out = {code.co_filename}
    for c in code.co_consts:
        if hasattr(c, "co_consts"):
            out |= _filenames(c)
    return out


def test_sas_of_one_shape_keep_their_own_spi() -> None:
    transform = AEAD_TUNNEL[0]
    esp._CODE_CACHE.clear()
    a = EspContext(make_sa(transform, spi=0x1111))
    b = EspContext(make_sa(transform, spi=0x2222))
    assert len(esp._CODE_CACHE) == 2  # one encap and one decap compilation for both
    packet = udp4(b"x" * 40)
    for ctx, spi in ((a, 0x1111), (b, 0x2222)):
        buf = memoryview(bytearray(ctx.headroom + len(packet) + ctx.tailroom))
        for seq in (1, 2):  # the second call takes the cached path
            buf[ctx.headroom:ctx.headroom + len(packet)] = packet
            drop, start, end = ctx.encap_into(buf, ctx.headroom, ctx.headroom + len(packet), seq)
            assert drop is Drop.OK
            assert int.from_bytes(buf[start + 20:start + 24], "big") == spi
        sent = bytes(buf[start:end])
        window = ReplayWindow(64)
        other = b if ctx is a else a
        assert other.decap(sent, ReplayWindow(64))[0] is Drop.UNKNOWN_SPI
        assert ctx.decap(sent, window)[0] is Drop.OK


def test_a_folded_placeholder_is_not_cached() -> None:
    esp._CODE_CACHE.clear()
    folded = "def f(x):\n    return $SPI & 0xFF, x + ($SPI >> 8)\n"
    plain = "def f(x):\n    return x != $SPI, x ^ $SPI, ($SPI, 1)\n"
    for spi in (0x1234, 0x5678):
        for template, want in ((folded, (spi & 0xFF, 1 + (spi >> 8))),
                               (plain, (True, 1 ^ spi, (spi, 1)))):
            namespace: dict[str, Any] = {}
            exec(esp._compiled(template, {"SPI": spi, "OTHER": 1}), namespace)
            assert namespace["f"](1) == want
    assert esp._CODE_CACHE[(folded, (("OTHER", int, 1),))] is None
    assert esp._CODE_CACHE[(plain, (("OTHER", int, 1),))] is not None


@settings(max_examples=60, deadline=None)
@given(spi=st.integers(0x100, 0xFFFFFFFF), iv_mask=st.integers(0, (1 << 64) - 1),
       esn=st.booleans(), encap=st.booleans())
def test_the_patch_plan_patches_what_a_walk_does(spi: int, iv_mask: int, esn: bool,
                                                 encap: bool) -> None:
    """``_apply`` of a cached ``_plan`` (the per-SA patch) against ``_patch``, the walk of
    every constant that it replaces: the same code objects."""
    esp._CODE_CACHE.clear()
    EspContext(make_sa(AEAD_TUNNEL[0], spi=0x100, esn=esn, encap=encap), iv_mask=1)
    for hit in esp._CODE_CACHE.values():
        assert hit is not None
        plan, placeholders = hit
        code = plan[0]
        values = {placeholders["SPI"]: spi, placeholders.get("IV_MASK", -1): iv_mask}
        filename = f"<ipsecd.esp fast path, SPI {spi:#x}>"
        planned = esp._apply(plan, values, filename)
        walked = esp._patch(code, values, filename)
        assert planned == walked
        assert _program(planned) == _program(walked)
        assert _filenames(planned) == {filename}


@pytest.mark.parametrize("transform", AEAD_TUNNEL, ids=lambda t: t.name)
@pytest.mark.parametrize("fast", ["encap", "decap"])
def test_a_one_way_context_compiles_one_fast_path_and_does_both(
        monkeypatch: pytest.MonkeyPatch, transform: Transform, fast: str) -> None:
    """The workers' contexts (fast_paths "encap" / "decap"): one compilation, and the other
    direction, through the general path, gives what a context with both fast paths gives."""
    esp._CODE_CACHE.clear()
    builds = _builds(monkeypatch, transform, fast_paths=fast)
    assert len(builds) == 1
    assert ("def encap_into" in builds[0][0]) == (fast == "encap")
    one = EspContext(make_sa(transform), fast_paths=fast)  # type: ignore[arg-type]
    both = EspContext(make_sa(transform))
    packet = udp4(b"y" * 57)
    for seq in (1, 2, 3):
        sent = []
        for ctx in (one, both):
            buf = memoryview(bytearray(ctx.headroom + len(packet) + ctx.tailroom))
            buf[ctx.headroom:ctx.headroom + len(packet)] = packet
            drop, start, end = ctx.encap_into(buf, ctx.headroom, ctx.headroom + len(packet),
                                              seq)
            assert drop is Drop.OK
            sent.append(bytes(buf[start:end]))
        assert sent[0] == sent[1]
        for ctx in (one, both):
            window = ReplayWindow(64)
            work = bytearray(sent[0])
            drop, start, end, _ = ctx.decap_into(memoryview(work), 0, len(work), window)
            assert drop is Drop.OK
            assert bytes(work[start:end]) == packet


@pytest.mark.parametrize("align", [4, 8, 16])
@pytest.mark.parametrize("esn", [False, True])
def test_the_shared_trailers_are_the_ones_an_sa_would_make(align: int, esn: bool) -> None:
    """The per-shape tuples the fast paths share (``_encap_tails``, ``_decap_trailers``)
    against the straightforward computation for one SA: trailer (RFC 4303 §2.4: pad 1, 2,
    ..., pad length, next header 4), the ICV's place, then the salt, and the pack_into of
    exactly those bytes, IV, SPI [, high 32 bits], sequence number."""
    salt = bytes((1, 2, 3, 4))
    heads, pack_tails = esp._encap_tails(align, esn)
    assert esp._encap_tails(align, esn) is esp._encap_tails(align, esn)
    for pad in range(align):
        tail = bytes(range(1, pad + 1)) + bytes((pad, 4)) + bytes(16) + salt
        assert heads[pad] + salt == tail
        fmt = f"!{len(tail)}sQ{'III' if esn else 'II'}"
        want, got = bytearray(64), bytearray(64)
        args = (0x0102030405060708, 0xA1B2C3D4, *((7,) if esn else ()), 0x99)
        struct.Struct(fmt).pack_into(want, 3, tail, *args)
        pack_tails[pad](got, 3, tail, *args)
        assert got == want
    trailers = esp._decap_trailers(align)
    assert trailers[:2] == (b"", b"")
    assert trailers[2:] == tuple(bytes(range(1, n + 1)) + bytes((n, 4)) for n in range(align))
