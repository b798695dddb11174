"""Where a setkey script went wrong: locations, the error class, warnings.

Every message about a script names its place as ``FILE:LINE:COL`` (both
1-based; a tab counts as one column), the form compilers use, so editors
can jump to it.  :class:`SetkeyError` is the only exception the parser
raises for a bad script; the applier raises it too, with the location of
the statement that could not be applied.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a script."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def shifted(self, columns: int) -> Location:
        """The place ``columns`` characters further on the same line (inside a word)."""
        return Location(self.file, self.line, self.col + columns)


class SetkeyError(Exception):
    """A script that cannot be parsed or applied; ``str()`` is ``FILE:LINE:COL: message``."""

    def __init__(self, loc: Location, message: str) -> None:
        super().__init__(f"{loc}: {message}")
        self.loc = loc
        self.message = message

    @property
    def file(self) -> str:
        return self.loc.file

    @property
    def line(self) -> int:
        return self.loc.line

    @property
    def col(self) -> int:
        return self.loc.col


@dataclass(frozen=True, slots=True)
class ScriptWarning:
    """Something accepted but worth telling the operator; ``str()`` is ``FILE:LINE:COL: warning: ...``."""

    loc: Location
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: warning: {self.message}"


__all__ = ["Location", "ScriptWarning", "SetkeyError"]
