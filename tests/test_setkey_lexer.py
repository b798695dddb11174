"""Tokens and their positions (ipsecd.setkey.lexer)."""

from __future__ import annotations

import pytest

from ipsecd.setkey.errors import Location, SetkeyError
from ipsecd.setkey.lexer import Kind, tokenize


def kinds_texts(text: str) -> list[tuple[Kind, str, int, int]]:
    return [(t.kind, t.text, t.loc.line, t.loc.col) for t in tokenize(text, "f")]


def test_words_strings_semicolons_and_positions() -> None:
    toks = kinds_texts('add 192.0.2.1[4500]\t-A "a key;#" ;\n  spdflush;')
    assert toks == [
        (Kind.WORD, "add", 1, 1),
        (Kind.WORD, "192.0.2.1[4500]", 1, 5),
        (Kind.WORD, "-A", 1, 21),  # a tab is one column
        (Kind.STRING, "a key;#", 1, 24),
        (Kind.SEMI, ";", 1, 34),
        (Kind.WORD, "spdflush", 2, 3),
        (Kind.SEMI, ";", 2, 11),
        (Kind.EOF, "", 2, 12),
    ]


def test_comments_anywhere_outside_quotes() -> None:
    toks = kinds_texts("#!/usr/sbin/setkey -f\nflush;# trailing\nspd#dump\n")
    assert toks == [
        (Kind.WORD, "flush", 2, 1),
        (Kind.SEMI, ";", 2, 6),
        (Kind.WORD, "spd", 3, 1),  # as in KAME, '#' cannot be part of a word
        (Kind.EOF, "", 4, 1),
    ]


def test_quoted_string_spanning_lines_keeps_line_count() -> None:
    toks = kinds_texts('"ab\ncd" x\ny')
    assert toks[0][:2] == (Kind.STRING, "ab\ncd")
    assert toks[1] == (Kind.WORD, "x", 2, 5)
    assert toks[2] == (Kind.WORD, "y", 3, 1)


def test_crlf_line_endings() -> None:
    toks = kinds_texts("flush;\r\nspdflush;\r\n")
    assert toks[2] == (Kind.WORD, "spdflush", 2, 1)


def test_empty_input() -> None:
    assert kinds_texts("") == [(Kind.EOF, "", 1, 1)]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('add "unterminated', (1, 5), "unterminated quoted string"),
        ("flush; \x00", (1, 8), "unexpected character U+0000"),
        ("flush;\n  caf\u00e9;", (2, 6), "unexpected character '\u00e9'"),
        ("\u200b", (1, 1), "unexpected character U+200B"),
    ],
)
def test_errors(text: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(SetkeyError) as info:
        tokenize(text, "f")
    assert (info.value.line, info.value.col) == where
    assert message in info.value.message
    assert str(info.value).startswith(f"f:{where[0]}:{where[1]}: ")


def test_location_helpers() -> None:
    loc = Location("x.conf", 3, 7)
    assert str(loc) == "x.conf:3:7"
    assert loc.shifted(4) == Location("x.conf", 3, 11)
    err = SetkeyError(loc, "bad")
    assert (err.file, err.line, err.col, err.message, str(err)) == ("x.conf", 3, 7, "bad", "x.conf:3:7: bad")
