"""The setkey corpus (tests/corpus/setkey): HOWTO scripts parse unchanged, bad ones fail exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipsecd.sad import SAD
from ipsecd.setkey import SetkeyError, apply, check, parse
from ipsecd.spd import SPD, Action, Direction

CORPUS = Path(__file__).parent / "corpus" / "setkey"
VALID = sorted((CORPUS / "valid").glob("*.conf"))
INVALID = sorted((CORPUS / "invalid").glob("*.conf"))
_EXPECT = re.compile(r"# expect: (\d+):(\d+): (.*)")


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def needs_legacy(text: str) -> bool:
    return "# ipsecd-test: allow-legacy" in text


def test_corpus_is_there() -> None:
    assert len(VALID) >= 10 and len(INVALID) >= 30


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_scripts_parse_check_and_apply(path: Path) -> None:
    text = read(path)
    script = parse(text, path.name, allow_legacy=needs_legacy(text))
    assert script.ops
    check(script)
    apply(script, SPD(), SAD())


@pytest.mark.parametrize("path", [p for p in VALID if needs_legacy(read(p))], ids=lambda p: p.name)
def test_legacy_scripts_are_refused_without_the_switch(path: Path) -> None:
    with pytest.raises(SetkeyError, match="is a legacy algorithm; enable the legacy switch"):
        parse(read(path), path.name)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_scripts_fail_with_the_expected_error(path: Path) -> None:
    text = read(path)
    m = _EXPECT.match(text.splitlines()[0])
    assert m, f"{path.name}: first line must be '# expect: LINE:COL: message'"
    with pytest.raises(SetkeyError) as info:
        apply(parse(text, path.name), SPD(), SAD())
    err = info.value
    assert (err.file, err.line, err.col, err.message) == (path.name, int(m[1]), int(m[2]), m[3])


def test_howto_host_to_host_policies() -> None:
    text = read(CORPUS / "valid" / "howto-host-to-host-a.conf")
    spd = SPD()
    apply(parse(text, "a.conf"), spd, SAD())
    import ipaddress

    a, b = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    out = spd.lookup(Direction.OUT, a, b, 6, 1000, 22)
    inb = spd.lookup(Direction.IN, b, a, 17, 53, 1000)
    assert out is not None and out.action is Action.IPSEC
    assert inb is not None and inb.action is Action.IPSEC
    assert spd.lookup(Direction.OUT, b, a, 6) is None


def test_howto_tunnel_short_prefix_means_the_same_as_the_long_form() -> None:
    long_spd, short_spd = SPD(), SPD()
    long_text = read(CORPUS / "valid" / "howto-tunnel-gw-a.conf")
    short_text = read(CORPUS / "valid" / "howto-tunnel-gw-b-short-prefix.conf")
    apply(parse(long_text, "a"), long_spd, SAD())
    apply(parse(short_text, "b"), short_spd, SAD())
    # gateway B's out policy is gateway A's in policy, with the same selector
    sel = {(e.policy.selector, e.policy.direction) for e in long_spd.entries()}
    swapped = {
        (e.policy.selector, {Direction.IN: Direction.OUT, Direction.OUT: Direction.IN}.get(
            e.policy.direction, e.policy.direction))
        for e in short_spd.entries() if e.policy.direction is not Direction.FWD
    }
    assert swapped <= sel
