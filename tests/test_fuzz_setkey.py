"""Fuzzing the setkey parser: any text parses to operations or raises SetkeyError.

The invariant (as h11's fuzz targets have it): for every input the parser
returns a :class:`~ipsecd.setkey.Script` or raises its own
:class:`~ipsecd.setkey.SetkeyError`, never another exception.  A script
that parses must also check and apply (or fail with ``SetkeyError``) and its
result must dump.

Three generators: arbitrary text, sequences of setkey-ish tokens (which get
much deeper into the grammar than random characters), and mutations of
the corpus in ``tests/corpus/setkey``.  The run is bounded so it takes a few
seconds; set ``IPSECD_FUZZ_EXAMPLES`` for a longer one, or run this file as
a script (``python tests/test_fuzz_setkey.py``) for a long campaign.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.sad import SAD
from ipsecd.setkey import SetkeyError, apply, check, dump_sad, dump_spd, parse
from ipsecd.spd import SPD

pytestmark = pytest.mark.fuzz

CORPUS = sorted((Path(__file__).parent / "corpus" / "setkey").glob("*/*.conf"))
SEEDS = [p.read_bytes().decode("utf-8", "surrogateescape") for p in CORPUS]
EXAMPLES = int(os.environ.get("IPSECD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)

TOKENS = [
    # commands
    "add", "update", "get", "delete", "deleteall", "flush", "dump", "spdadd", "spdupdate",
    "spddelete", "spdflush", "spddump", "exit", "getspi", "tagged",
    # protocols, modes, levels, actions, directions
    "esp", "esp-udp", "ah", "ipcomp", "esp-old", "tcp", "udp", "icmp", "icmp6", "any",
    "transport", "tunnel", "in", "out", "fwd", "prio", "priority", "def", "high", "low", "+", "-",
    "ipsec", "none", "discard", "bypass", "entrust",
    # options and algorithms
    "-m", "-r", "-u", "-f", "-E", "-A", "-C", "-R", "-lh", "-ls", "-bh", "-bs", "-ph", "-ps",
    "-P", "-4", "-6", "-n", "-46n", "-ctx", "esn", "random-pad", "nocyclic-seq",
    "aes-gcm-16", "rijndael-cbc", "aes-cbc", "chacha20-poly1305", "aes-gmac", "null", "3des-cbc",
    "hmac-sha256", "hmac-sha1", "hmac-md5", "hmac-sha512", "deflate",
    # addresses, ranges, numbers, keys, requests
    "192.0.2.1", "192.0.2.2", "192.0.2.1[4500]", "10.0.0.0/8", "10.10.10/24", "10/8", "::/0",
    "2001:db8::1", "2001:db8::/32[any]", "0.0.0.0/0[500]", "192.0.2.0/33", "fe80::1%eth0",
    "0x1000", "4096", "0", "255", "65536", "4294967296", "99999999999999999999999", "135,0",
    "0x" + "11" * 16, "0x" + "11" * 20, "0x" + "22" * 32, "0x1", "0x", '"kamekame12341234kame1234"',
    '"this is the test"', '""', '"unterminated',
    "esp/transport//require", "esp/tunnel/192.0.2.1-192.0.2.2/require", "ah/transport//use",
    "esp/tunnel/192.0.2.1[4500]-192.0.2.2[4500]/unique:5", "esp/transport", "esp/", "ipcomp/tunnel//",
    "esp/transport//unique:0", "me-any",
    # punctuation and oddities
    ";", ";", ";", "#", "# comment\n", "/", "[", "]", ",", "\n", "\t", "\x00", "\u00e9", "\ud800",
]


def check_invariant(text: str, *, legacy: bool = False) -> None:
    try:
        script = parse(text, "fuzz", allow_legacy=legacy)
    except SetkeyError as exc:
        assert exc.line >= 1 and exc.col >= 1 and exc.message
        assert str(exc).startswith(f"fuzz:{exc.line}:{exc.col}: ")
        return
    try:
        check(script)
    except SetkeyError:
        pass
    spd, sad = SPD(), SAD()
    try:
        apply(script, spd, sad, show_keys=True)
    except SetkeyError:
        return
    dump_sad(sad, show_keys=True)
    dump_spd(spd)


@st.composite
def token_scripts(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from(TOKENS), max_size=40))
    seps = draw(st.lists(st.sampled_from([" ", " ", "\n", "\t", ""]), min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@st.composite
def mutated_corpus(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 40)))
        kind = draw(st.sampled_from(["delete", "insert", "token", "duplicate", "replace"]))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.text(max_size=8)) + text[i:]
        elif kind == "token":
            text = text[:i] + " " + draw(st.sampled_from(TOKENS)) + " " + text[i:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(st.characters()) + text[i + 1 :]
    return text


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check_invariant(text)


@FUZZ
@given(token_scripts(), st.booleans())
def test_token_sequences(text: str, legacy: bool) -> None:
    check_invariant(text, legacy=legacy)


@FUZZ
@given(mutated_corpus(), st.booleans())
def test_mutated_corpus(text: str, legacy: bool) -> None:
    check_invariant(text, legacy=legacy)


@pytest.mark.parametrize("seed", SEEDS, ids=[p.name for p in CORPUS])
def test_corpus_seeds_hold_the_invariant(seed: str) -> None:
    check_invariant(seed)
    check_invariant(seed, legacy=True)


def test_token_sequences_reach_deep_into_the_grammar() -> None:
    # A sanity check on the generator: well-formed token runs do parse.
    check_invariant("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x" + "11" * 20 + " ;")
    script = parse("spdadd 10.0.0.0/8 ::/0 any -P out none ;".replace("::/0", "10.0.0.0/8"), "x")
    assert len(script.ops) == 1


if __name__ == "__main__":  # a long campaign: python tests/test_fuzz_setkey.py [examples]
    import sys

    os.environ["IPSECD_FUZZ_EXAMPLES"] = sys.argv[1] if len(sys.argv) > 1 else "20000"
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
