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
control socket (``--socket PATH``, or the one ``--config FILE`` names, else
``/run/ipsecd/ipsecd.sock``), which applies the whole script - all files
given - as one transaction.  ``-F``/``-FP``/``-D``/``-DP`` are sent as the
statements ``flush;``/``spdflush;``/``dump;``/``spddump;``.  ``-n`` needs no
daemon.

The other commands::

    ipsecd run --config FILE         # the daemon, in the foreground (systemd runs it so)
    ipsecd run --config FILE --check # validate the configuration and the setkey script
    ipsecd status [--json]           # workers, policies, SAs and counters

Exit status: 0 success, 1 bad script, unreadable file or refused request,
2 usage error or no daemon, 3 the daemon could not start.  User mistakes and
a missing or foreign control socket never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipsecd import __version__
from ipsecd.setkey import Script, SetkeyError, check, parse
from ipsecd.setkey.ops import Op

EXIT_OK = 0
EXIT_SCRIPT = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 2
EXIT_START = 3

#: Statements that setkey's dump and flush flags stand for.
_FLAG_SCRIPTS = {(True, False): "dump;", (True, True): "spddump;",
                 (False, False): "flush;", (False, True): "spdflush;"}


def _add_socket_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH",
                       help="the daemon's control socket (default /run/ipsecd/ipsecd.sock)")
    where.add_argument("--config", metavar="FILE",
                       help="find the control socket in the daemon's configuration file")


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
    _add_socket_options(p)
    p.set_defaults(handler=_setkey, subparser=p)
    return p


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the ipsecd daemon in the foreground until SIGTERM or SIGINT "
        "(SIGHUP re-applies the configured setkey script).",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and its setkey script, then exit")
    p.set_defaults(handler=_run, subparser=p)


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="show the running daemon's workers, policies, SAs and counters",
        description="Show the running daemon's workers, policies, SAs and counters.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    _add_socket_options(p)
    p.set_defaults(handler=_status, subparser=p)


def _ike_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("initiate", help="bring up an IKE connection",
                       description="Initiate the IKE SA and Child SAs of a configured "
                       "connection and wait until they are up (or --timeout passes).")
    p.add_argument("name", help="the connection, as named in [connections.NAME]")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for the IKE SA (0: do not wait; default 15)")
    _add_socket_options(p)
    p.set_defaults(handler=_initiate, subparser=p)
    p = sub.add_parser("terminate", help="close an IKE connection",
                       description="Delete the IKE SAs (and their Child SAs) of a connection.")
    p.add_argument("name")
    _add_socket_options(p)
    p.set_defaults(handler=_terminate, subparser=p)
    p = sub.add_parser("rekey", help="rekey a connection's Child SAs (or IKE SA) now",
                       description="Rekey the Child SAs of a connection now (with --ike: its "
                       "IKE SAs), as their lifetime would.")
    p.add_argument("name")
    p.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    _add_socket_options(p)
    p.set_defaults(handler=_rekey, subparser=p)
    p = sub.add_parser("reload", help="re-read the configuration (as SIGHUP does)",
                       description="Re-read the daemon's configuration file: IKE connections "
                       "that did not change are not disturbed; the setkey script is re-applied.")
    _add_socket_options(p)
    p.set_defaults(handler=_reload, subparser=p)
    for name, what in (("list-sas", "the IKE SAs and Child SAs, with counters"),
                       ("list-conns", "the configured IKE connections")):
        p = sub.add_parser(name, help=f"show {what}", description=f"Show {what}.")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _add_socket_options(p)
        p.set_defaults(handler=_listing, subparser=p, what=name)


def _ask(args: argparse.Namespace, command: str, **request: Any) -> tuple[int, Any]:
    from ipsecd import control

    path = _socket(args, command)
    if path is None:
        return EXIT_USAGE, None
    try:
        return EXIT_OK, control.request(path, command, **request)
    except control.RemoteError as exc:
        _err(f"ipsecd {command}: {exc}")
        return EXIT_SCRIPT, None
    except control.ControlError as exc:
        _err(f"ipsecd {command}: {exc}")
        return EXIT_NO_DAEMON, None


def _initiate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    status, result = _ask(args, "initiate", name=args.name)
    if status != EXIT_OK:
        return status
    spi = result["ike"]["spi_i"]
    deadline = time.monotonic() + args.timeout
    while args.timeout > 0:
        status, listing = _ask(args, "list-sas")
        if status != EXIT_OK:
            return status
        mine = [s for s in listing["ike_sas"] if s["spi_i"] == spi]
        if mine and mine[0]["state"] == "established":
            sa = mine[0]
            print(f"{args.name}: IKE SA established with {sa['remote']} ({sa['proposal']}), "
                  f"{len(sa['children'])} CHILD_SA(s)")
            return EXIT_OK
        if not mine:
            _err(f"ipsecd initiate: {args.name}: the IKE SA failed (see the daemon's log)")
            return EXIT_SCRIPT
        if time.monotonic() > deadline:
            _err(f"ipsecd initiate: {args.name}: not established within {args.timeout:g} s")
            return EXIT_SCRIPT
        time.sleep(0.1)
    print(f"{args.name}: initiating")
    return EXIT_OK


def _terminate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    status, result = _ask(args, "terminate", name=args.name)
    if status == EXIT_OK:
        print(f"{args.name}: {result['terminated']} IKE SA(s) closing")
    return status


def _reload(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    status, result = _ask(args, "reload")
    if status == EXIT_OK:
        ike = result.get("ike")
        if ike:
            for kind in ("added", "changed", "removed", "unchanged"):
                if ike[kind]:
                    print(f"{kind}: {', '.join(ike[kind])}")
        if result.get("setkey"):
            print(f"setkey: {result['setkey']['changes']} change(s)")
        print("reloaded")
    return status


def _rekey(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    status, result = _ask(args, "rekey", name=args.name, ike=args.ike)
    if status == EXIT_OK:
        print(f"{args.name}: {result['rekeying']} {'IKE' if args.ike else 'CHILD'}_SA(s) rekeying")
    return status


def _listing(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    status, result = _ask(args, args.what)
    if status != EXIT_OK:
        return status
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.what == "list-sas":
        sys.stdout.write(format_sas(result["ike_sas"]))
    else:
        sys.stdout.write(format_conns(result["connections"]))
    return EXIT_OK


def format_sas(sas: list[dict[str, Any]]) -> str:
    """``ipsecd list-sas`` for people, in the spirit of ``swanctl --list-sas``."""
    out = []
    for sa in sas:
        role = "initiator" if sa["initiator"] else "responder"
        out.append(f"{sa['name']}: {sa['state'].upper()}, {sa['local']}[{sa['local_id']}]"
                   f"...{sa['remote']}[{sa['remote_id']}]\n")
        out.append(f"  {role}, SPIs {sa['spi_i']}_i {sa['spi_r']}_r, {sa['proposal']}"
                   f"{', NAT ' + ('local' if sa['nat_local'] else 'remote') if sa['nat_local'] or sa['nat_remote'] else ''}\n")
        for c in sa["children"]:
            out.append(f"  {c['name']}{{{c['reqid']}}}: {c['state'].upper()}, "
                       f"{c['mode'].upper()}{', UDP-encap' if c['encap'] else ''}, "
                       f"SPIs {c['spi_in']}_i {c['spi_out']}_o, {c['proposal']}\n")
            out.append(f"    in  {c.get('bytes_in', 0)} bytes, {c.get('packets_in', 0)} packets\n")
            out.append(f"    out {c.get('bytes_out', 0)} bytes, {c.get('packets_out', 0)} packets\n")
            out.append(f"    local  {', '.join(c['local_ts'])}\n")
            out.append(f"    remote {', '.join(c['remote_ts'])}\n")
    return "".join(out) or "no IKE SAs\n"


def format_conns(conns: list[dict[str, Any]]) -> str:
    """``ipsecd list-conns`` for people."""
    out = []
    for c in conns:
        out.append(f"{c['name']}: IKEv{c['version']}, {', '.join(c['local_addrs'])}..."
                   f"{', '.join(c['remote_addrs'])}, {c['ike_sas']} IKE SA(s) up\n")
        out.append(f"  local  {c['local_auth']} {c['local_id'] or '(address)'}\n")
        out.append(f"  remote {c['remote_auth']} {c['remote_id']}\n")
        out.append(f"  proposals {', '.join(c['proposals'])}\n")
        for ch in c["children"]:
            out.append(f"  {ch['name']}: {ch['mode'].upper()}, start {ch['start_action']}, "
                       f"{', '.join(ch['local_ts'])} === {', '.join(ch['remote_ts'])}\n")
    return "".join(out) or "no connections\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsecd",
        description="ipsecd: a userspace IPsec gateway for Linux.",
    )
    parser.add_argument("--version", action="version", version=f"ipsecd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _setkey_parser(sub)
    _run_parser(sub)
    _status_parser(sub)
    _ike_parsers(sub)
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
        statement = _FLAG_SCRIPTS[(bool(args.dump), bool(args.policy))]
        return _send_setkey(args, [("<command line>", statement)])

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
    return _send_setkey(args, sources)


def _socket(args: argparse.Namespace, command: str) -> Path | None:
    from ipsecd.config import ConfigError, socket_path

    try:
        return socket_path(args.config, args.socket)
    except ConfigError as exc:
        _err(f"ipsecd {command}: {exc}")
        return None


def _send_setkey(args: argparse.Namespace, sources: list[tuple[str, str]]) -> int:
    from ipsecd import control

    path = _socket(args, "setkey")
    if path is None:
        return EXIT_USAGE
    try:
        result = control.request(path, "setkey", sources=[[n, t] for n, t in sources],
                                 rfc_mode=args.rfc_mode, show_keys=args.show_keys)
    except control.RemoteError as exc:
        _err(str(exc))
        return EXIT_SCRIPT
    except control.ControlError as exc:
        _err(f"ipsecd setkey: {exc}")
        return EXIT_NO_DAEMON
    for text in result.get("output", []):
        sys.stdout.write(text)
    if args.verbose:
        changes = int(result.get("changes", 0))
        print(f"applied: {changes} change{'s' if changes != 1 else ''}")
    return EXIT_OK


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipsecd import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        _err(str(exc))
        return EXIT_SCRIPT
    from ipsecd import log as log_setup

    log_setup.setup(cfg.daemon.log_level, cfg.log.format, cfg.log.levels)
    if args.check:
        if cfg.setkey.script is not None:
            try:
                text = cfg.setkey.script.read_bytes().decode("utf-8", "surrogateescape")
            except OSError as exc:
                _err(f"ipsecd run: setkey script {cfg.setkey.script}: {exc.strerror or exc}")
                return EXIT_SCRIPT
            try:
                script = parse(text, str(cfg.setkey.script), allow_legacy=cfg.daemon.allow_legacy)
                for warning in script.warnings:
                    _err(str(warning))
                check(script, rfc_mode=cfg.setkey.rfc_mode)
                script.wipe()
            except SetkeyError as exc:
                _err(str(exc))
                return EXIT_SCRIPT
        from ipsecd.ike.config import load_psks
        from ipsecd.ike.psk import PskFileError

        try:
            table = load_psks(cfg.ike)
        except PskFileError as exc:
            _err(str(exc))
            return EXIT_SCRIPT
        if table is not None:
            table.wipe()
        print(f"{args.config}: OK")
        return EXIT_OK
    from ipsecd.daemon import run

    status = run(cfg)
    return EXIT_START if status == 3 else status


def _status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipsecd import control

    path = _socket(args, "status")
    if path is None:
        return EXIT_USAGE
    try:
        result = control.request(path, "status")
    except control.RemoteError as exc:
        _err(f"ipsecd status: {exc}")
        return EXIT_SCRIPT
    except control.ControlError as exc:
        _err(f"ipsecd status: {exc}")
        return EXIT_NO_DAEMON
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_status(result))
    return EXIT_OK


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                   + "\n" for r in rows)


def _drops_text(drops: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "-"


def format_status(st: dict[str, Any]) -> str:
    """``ipsecd status`` for people: the JSON result as tables."""
    out = [f"ipsecd {st['version']}  instance {st['instance']}  pid {st['pid']}  "
           f"up {_duration(st['uptime'])}  config {st['config']}\n",
           f"datapath: outside {', '.join(st['outside'])}  TUN {st['tun']['name']} "
           f"(MTU {st['tun']['mtu']})  metrics {st['metrics'] or 'off'}\n"]
    workers = st["workers"]
    out.append(f"\nworkers: {len(workers)}\n")
    rows = [["#", "pid", "state", "restarts", "esp-in", "plain-in", "ring-drops", "drops"]]
    for w in workers:
        state = "running" if w["running"] else ("starting" if w["alive"] else "down")
        rows.append([str(w["index"]), str(w["pid"]), state, str(w["restarts"]),
                     str(w["packets_in"]), str(w["packets_out"]), str(w["ring_drops"]),
                     _drops_text(w["drops"])])
    out.append(_table(rows))
    policies = st["policies"]
    out.append(f"\npolicies: {len(policies)}\n")
    if policies:
        rows = [["dir", "selector", "action"]]
        for p in policies:
            proto = "any" if p["proto"] is None else str(p["proto"])
            sel = f"{p['src']} -> {p['dst']} {proto}"
            action = p["action"] + ("" if not p["requests"] else " " + " ".join(p["requests"]))
            rows.append([p["direction"] + ("*" if p["auto"] else ""), sel, action])
        out.append(_table(rows))
    sas = st["sas"]
    out.append(f"\nSAs: {len(sas)}\n")
    if sas:
        rows = [["dir", "spi", "src -> dst", "mode", "state", "packets", "bytes", "seq", "drops"]]
        for sa in sas:
            rows.append([sa["direction"] or "-", sa["spi_hex"], f"{sa['src']} -> {sa['dst']}",
                         sa["mode"], sa["state"], str(sa["packets"]), str(sa["bytes"]),
                         str(sa["seq"]), _drops_text(sa["drops"])])
        out.append(_table(rows))
    out.append(f"\ndrops: {_drops_text(st['drops'])}\n")
    return "".join(out)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return time.strftime("%H:%M", time.gmtime(s)) if s < 86400 else f"{s // 86400}d"


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
