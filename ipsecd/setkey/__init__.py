"""The setkey(8) language of KAME / ipsec-tools, for ipsecd's SPD and SAD.

::

    script = parse(text, "policies.conf", allow_legacy=False)   # or SetkeyError
    result = apply(script, spd, sad)                             # all or nothing
    print(dump_sad(sad), dump_spd(spd))                          # setkey -D / -DP

* :mod:`~ipsecd.setkey.lexer` - tokens;
* :mod:`~ipsecd.setkey.parser` - the grammar, the options and what ipsecd
  does differently from setkey (documented there);
* :mod:`~ipsecd.setkey.ops` - operations, all-or-nothing :func:`apply`,
  :func:`check` for ``setkey -n``;
* :mod:`~ipsecd.setkey.dump` - ``setkey -D`` / ``-DP`` output, keys hidden.
"""

from ipsecd.setkey.dump import dump_sad, dump_spd, format_policy, format_sa
from ipsecd.setkey.errors import Location, ScriptWarning, SetkeyError
from ipsecd.setkey.ops import (
    AddSA,
    ApplyResult,
    DeleteAllSA,
    DeleteSA,
    DumpSA,
    FlushSA,
    GetSA,
    Op,
    Script,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    apply,
    check,
)
from ipsecd.setkey.parser import parse

__all__ = [
    "AddSA",
    "ApplyResult",
    "DeleteAllSA",
    "DeleteSA",
    "DumpSA",
    "FlushSA",
    "GetSA",
    "Location",
    "Op",
    "Script",
    "ScriptWarning",
    "SetkeyError",
    "SpdAdd",
    "SpdDelete",
    "SpdDump",
    "SpdFlush",
    "apply",
    "check",
    "dump_sad",
    "dump_spd",
    "format_policy",
    "format_sa",
    "parse",
]
