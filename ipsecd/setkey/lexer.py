"""Split a setkey(8) script into tokens.

The KAME lexer (``setkey/token.l``) switches between several start
conditions and hands the policy part of ``spdadd`` to a second lexer.  We
tokenise much more simply and leave the structure of words to the parser:

* whitespace (blank, tab, newline, CR, FF, VT) separates tokens;
* ``#`` starts a comment that runs to the end of the line (also right
  after a word, as in KAME, where ``#`` can never be part of a token);
* ``;`` ends a statement;
* ``"..."`` is a quoted string (a key); it may span lines and holds any
  character but ``"`` - there are no escapes, as in setkey;
* anything else is a *word*: a run of printable ASCII other than the
  characters above.  ``192.0.2.1[4500]``, ``10.0.0.0/8[any]``,
  ``esp/tunnel/192.0.2.1-192.0.2.2/require`` and ``0x1000`` are single
  words; the parser takes them apart and reports positions inside them.

Any other character (a control character, non-ASCII outside quotes) is an
error at its position, so the parser never sees it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ipsecd.setkey.errors import Location, SetkeyError

_SPACE = frozenset(" \t\n\r\f\v")
_WORD_STOP = _SPACE | frozenset(';"#')


class Kind(enum.Enum):
    WORD = "word"
    STRING = "quoted string"
    SEMI = "';'"
    EOF = "end of input"


@dataclass(frozen=True, slots=True)
class Token:
    """One token; for :attr:`Kind.STRING` ``text`` is the content without the quotes."""

    kind: Kind
    text: str
    loc: Location

    def describe(self) -> str:
        """The token as an error message quotes it."""
        if self.kind is Kind.WORD:
            return f"'{self.text}'" if len(self.text) <= 60 else f"'{self.text[:57]}...'"
        if self.kind is Kind.STRING:
            return "a quoted string"
        return str(self.kind.value)


def _is_word_char(ch: str) -> bool:
    return "!" <= ch <= "~" and ch not in _WORD_STOP


def tokenize(text: str, filename: str = "<string>") -> list[Token]:
    """The tokens of ``text``, ending with one :attr:`Kind.EOF` token."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    line = 1
    line_start = 0  # index of the first character of the current line
    while i < n:
        ch = text[i]
        if ch == "\n":
            i += 1
            line += 1
            line_start = i
            continue
        if ch in _SPACE:
            i += 1
            continue
        loc = Location(filename, line, i - line_start + 1)
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == ";":
            tokens.append(Token(Kind.SEMI, ";", loc))
            i += 1
            continue
        if ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise SetkeyError(loc, 'unterminated quoted string (no closing ")')
            content = text[i + 1 : end]
            tokens.append(Token(Kind.STRING, content, loc))
            newlines = content.count("\n")
            if newlines:
                line += newlines
                line_start = i + 1 + content.rfind("\n") + 1
            i = end + 1
            continue
        if not _is_word_char(ch):
            shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
            raise SetkeyError(loc, f"unexpected character {shown}")
        start = i
        while i < n and _is_word_char(text[i]):
            i += 1
        tokens.append(Token(Kind.WORD, text[start:i], loc))
    tokens.append(Token(Kind.EOF, "", Location(filename, line, n - line_start + 1)))
    return tokens


__all__ = ["Kind", "Token", "tokenize"]
