"""The ``ipsecd`` command line.

``ipsecd setkey`` takes setkey(8)'s options, so the HOWTO's invocations work
as written::

    ipsecd setkey -c < script        # read a script from standard input
    ipsecd setkey -f script          # read a script from a file
    ipsecd setkey -F                 # flush the SAD        (-FP: the SPD)
    ipsecd setkey -D                 # dump the SAD         (-DP: the SPD)
    ipsecd setkey -n -f script       # check only; no daemon needed

``-FP`` and ``-DP`` are setkey's combined flags; argparse reads them as
``-F -P`` / ``-D -P``.  ``-k``/``-r`` choose Linux kernel or RFC semantics
for ``in`` policies (see :mod:`ipsecd.setkey.ops`), ``--allow-legacy``
admits the HOWTO's legacy algorithms, ``--show-keys`` makes dumps print key
bytes (hidden by default).

A script is always parsed and checked here first: a mistake is reported as
``FILE:LINE:COL: message`` (``<stdin>`` for ``-c``) with exit status 1, and
nothing is sent.  The changes themselves go to the running daemon over its
control socket (issue #3); until ``ipsecd run`` exists every command that
needs the daemon exits with status 2 and says so.  ``-n`` needs no daemon.

Exit status: 0 success, 1 bad script or unreadable file, 2 usage error or
no daemon.  User mistakes never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ipsecd import __version__
from ipsecd.setkey import Script, SetkeyError, check, parse
from ipsecd.setkey.ops import Op

EXIT_OK = 0
EXIT_SCRIPT = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 2

NO_DAEMON = "no running daemon: ipsecd run is not available yet; use -n to check a script"


def _setkey_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "setkey",
        help="manage the SPD and SAD with setkey(8) scripts",
        description=(
            "Add, update, dump or flush SAD and SPD entries with the setkey(8) language "
            "of KAME / ipsec-tools.  A script is parsed and checked whole before anything "
            "is applied; a mistake is reported as FILE:LINE:COL: message."
        ),
        epilog=(
            "examples:  ipsecd setkey -n -f policies.conf   |   ipsecd setkey -c <<EOF ... EOF"
            "   |   ipsecd setkey -FP   |   ipsecd setkey -DP"
        ),
    )
    src = p.add_argument_group("what to do (one of)")
    src.add_argument(
        "-c", dest="stdin", action="store_true", help="read a script from standard input"
    )
    src.add_argument("-f", dest="file", metavar="FILE", help="read a script from FILE")
    src.add_argument(
        "-e", dest="inline", metavar="SCRIPT", help="take the script from the command line"
    )
    src.add_argument("-D", dest="dump", action="store_true", help="dump the SAD (with -P: the SPD)")
    src.add_argument(
        "-F", dest="flush", action="store_true", help="flush the SAD (with -P: the SPD)"
    )
    src.add_argument("files", nargs="*", metavar="FILE", help="script files (as -f)")
    p.add_argument("-P", dest="policy", action="store_true", help="with -D or -F: act on the SPD")
    p.add_argument(
        "-n",
        dest="no_act",
        action="store_true",
        help="no action: parse and check the script only (no daemon needed)",
    )
    p.add_argument("-v", dest="verbose", action="store_true", help="be verbose")
    sem = p.add_mutually_exclusive_group()
    sem.add_argument(
        "-k",
        dest="rfc_mode",
        action="store_false",
        help="Linux kernel semantics: no fwd twin for in policies",
    )
    sem.add_argument(
        "-r",
        dest="rfc_mode",
        action="store_true",
        default=True,
        help="RFC semantics (default): every in policy also gets a fwd twin",
    )
    p.add_argument(
        "-p",
        dest="ports",
        action="store_true",
        help="accepted for setkey compatibility (ports are always shown)",
    )
    p.add_argument(
        "-a", dest="all", action="store_true", help="accepted for setkey compatibility (dead SAs)"
    )
    p.add_argument(
        "--allow-legacy",
        action="store_true",
        help="admit legacy algorithms (3DES, DES, Blowfish, CAST, HMAC-MD5) for old peers",
    )
    p.add_argument(
        "--show-keys",
        action="store_true",
        help="print key bytes in dumps (they are hidden by default)",
    )
    p.set_defaults(handler=_setkey, subparser=p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsecd",
        description="ipsecd: a userspace IPsec gateway for Linux.",
    )
    parser.add_argument("--version", action="version", version=f"ipsecd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _setkey_parser(sub)
    return parser


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _read_sources(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """(name, text) of each script the arguments name; None after reporting an unreadable file."""
    sources: list[tuple[str, str]] = []
    if args.stdin:
        data = sys.stdin.buffer.read()
        sources.append(("<stdin>", data.decode("utf-8", "surrogateescape")))
    if args.inline is not None:
        sources.append(("<command line>", args.inline))
    for name in ([args.file] if args.file is not None else []) + list(args.files):
        try:
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            _err(f"ipsecd setkey: cannot read {name}: {exc.strerror or exc}")
            return None
        # Keys in quotes are bytes: surrogateescape keeps non-UTF-8 bytes as they are.
        sources.append((name, data.decode("utf-8", "surrogateescape")))
    return sources


def _setkey(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    modes = sum(
        (
            bool(args.stdin),
            args.file is not None or bool(args.files),
            args.inline is not None,
            bool(args.dump),
            bool(args.flush),
        )
    )
    if modes != 1:
        parser.error("give exactly one of -c, -f FILE, -e SCRIPT, -D or -F")
    if args.policy and not (args.dump or args.flush):
        parser.error("-P goes with -D (dump the SPD) or -F (flush the SPD)")

    if args.dump or args.flush:
        if args.no_act:
            parser.error("-n checks a script: use it with -c, -f or -e")
        _err(f"ipsecd setkey: {NO_DAEMON}")
        return EXIT_NO_DAEMON

    sources = _read_sources(args)
    if sources is None:
        return EXIT_SCRIPT
    ops: list[Op] = []
    scripts: list[Script] = []
    try:
        for name, text in sources:
            script = parse(text, name, allow_legacy=args.allow_legacy)
            scripts.append(script)
            for warning in script.warnings:
                _err(str(warning))
            ops.extend(script.ops)
        check(ops, rfc_mode=args.rfc_mode)
    except SetkeyError as exc:
        _err(str(exc))
        return EXIT_SCRIPT
    finally:
        for script in scripts:
            script.wipe()
    if args.verbose:
        names = ", ".join(name for name, _ in sources)
        print(f"{names}: {len(ops)} statement{'s' if len(ops) != 1 else ''} OK")
    if args.no_act:
        return EXIT_OK
    _err(f"ipsecd setkey: {NO_DAEMON}")
    return EXIT_NO_DAEMON


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ipsecd`` console script; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="ipsecd: warning: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args, args.subparser)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
