"""The setkey(8) language: statements → :mod:`ipsecd.setkey.ops` operations.

The grammar is KAME / ipsec-tools setkey's (``setkey(8)``; ``parse.y`` and
libipsec's ``policy_parse.y``), read from the manual and those grammars and
written here as a recursive-descent parser over the tokens of
:mod:`ipsecd.setkey.lexer`.  A whole script is parsed before anything is
applied; the first bad statement raises :class:`SetkeyError` with its
``FILE:LINE:COL``.  Statements end with ``;`` and may span lines::

    add [-46n] src dst protocol spi [extensions] algorithm... ;
    update [-46n] src dst protocol spi [extensions] algorithm... ;
    get [-46n] src dst protocol spi ;
    delete [-46n] src dst protocol spi ;
    deleteall [-46n] src dst protocol ;
    flush [protocol] ;
    dump [protocol] ;
    spdadd [-46n] src_range dst_range upperspec policy ;
    spdupdate [-46n] src_range dst_range upperspec policy ;
    spddelete [-46n] src_range dst_range upperspec -P direction [...] ;
    spdflush ;
    spddump ;
    exit ;  (also quit, bye: the rest of the script is ignored)

Protocols: ``esp``, ``esp-udp`` (ESP in UDP for NAT traversal, RFC 3948:
the SA gets ``encap = UdpEncap(sport, dport)`` from ``src[port]
dst[port]``, 4500 by default; an optional NAT original address may follow
``esp-udp``), ``ah`` and ``ipcomp``.  ``esp-old``/``ah-old`` (RFC 1827/1826)
and ``tcp`` (TCP-MD5) are refused by name.

SA extensions, as setkey(8) has them:

``-m transport|tunnel|any``
    mode (default ``any``: the SA serves either, see :mod:`ipsecd.sad`).
``-r size``
    replay window, **in bytes of bitmap as setkey(8) documents it and KAME
    implements it**: the window is ``8 * size`` packets (``-r 4`` = 32
    packets).  Without ``-r`` the SA gets
    :data:`ipsecd.sa.DEFAULT_REPLAY_WINDOW` packets - unlike setkey, where
    no ``-r`` means no replay check; an unprotected SA must be asked for.
    ``-r 0`` disables the check, with a warning.
``-u reqid``
    binds the SA to ``unique:reqid`` policy requests.
``-f zero-pad|random-pad|seq-pad|nocyclic-seq``
    kept in ``sa.extra`` (``pad``, ``nocyclic_seq``).
``-f esn``
    **ipsecd extension**: 64-bit extended sequence numbers (RFC 4303
    §2.2.1).  setkey has no ESN switch.
``-lh``/``-ls seconds``, ``-bh``/``-bs bytes``
    hard/soft lifetimes; ``-ph``/``-ps packets`` is an **ipsecd
    extension** (Linux has packet limits, setkey cannot set them).  A soft
    limit above the hard one is an error.

Algorithms: ``-E ealgo key [-A aalgo key]`` for ESP (an AEAD such as
``aes-gcm-16`` or ``chacha20-poly1305`` takes no ``-A``), ``-A aalgo key``
for AH, ``-C calgo [-R]`` for IPComp.  Names and key lengths come from
:mod:`ipsecd.transforms`; legacy algorithms (3DES, DES, Blowfish, CAST,
HMAC-MD5) need ``allow_legacy=True`` (``--allow-legacy``).  A key is
``0x`` and an even number of hex digits, or a ``"quoted string"`` whose
bytes are the key.

Addresses are numeric: we never resolve host names (setkey would, which
makes the SPD depend on DNS at load time).  A range is ``addr``,
``addr/prefixlen``, ``addr[port]`` or ``addr/prefixlen[port]``, with
``[any]`` for any port.  Two ipsecd conveniences: ``any`` as a whole range
means every address of the other range's family, and a short IPv4 prefix
such as ``10.10.10/24`` (as iproute2 and CIDR notation, RFC 4632 §3.1,
write them) means ``10.10.10.0/24`` - with a warning, since setkey passes
it to ``inet_aton()``, which reads ``10.10.10`` as ``10.10.0.10``.

Policies: ``-P in|out|fwd [prio N | prio low|def|high [+|- N]]
discard|none|ipsec request...`` with requests
``esp|ah|ipcomp/transport|tunnel/[src[port]-dst[port]]/[level]``, level
``default|use|require|unique|unique:N``.  ``bypass`` is taken as ``none``
(with a warning); ``entrust`` (per-socket policies only), ``me``/``any``
end points, ``-ctx`` security labels and ``spdadd tagged`` are refused
by name.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ipsecd.iana import IntegId, IpProto
from ipsecd.sa import (
    DEFAULT_REPLAY_WINDOW,
    MAX_REPLAY_WINDOW,
    IPAddress,
    Lifetime,
    Mode,
    SecurityAssociation,
    UdpEncap,
)
from ipsecd.setkey.errors import Location, ScriptWarning, SetkeyError
from ipsecd.setkey.lexer import Kind, Token, tokenize
from ipsecd.setkey.ops import (
    AddSA,
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
)
from ipsecd.spd import (
    MAX_MANUAL_REQID,
    PRIORITY_DEFAULT,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Action,
    Direction,
    IPNetwork,
    IpsecRequest,
    Level,
    Policy,
    Selector,
)
from ipsecd.transforms import (
    COMP_ALGOS,
    ENC_ALGOS,
    INTEG_ALGOS,
    EncAlgo,
    IntegAlgo,
    LegacyAlgorithmError,
    TransformError,
    check_enc_key,
    comp_algo,
    enc_algo,
    integ_algo,
)

_A = TypeVar("_A")

#: Upper-layer protocols by name (``upperspec``): /etc/protocols' common
#: names plus setkey's own ``icmp6`` and ``ip4``.  A built-in table, so a
#: script means the same on every host.
UPPER_PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "ip4": 4,
    "ipencap": 4,
    "ipip": 4,
    "tcp": 6,
    "udp": 17,
    "ipv6": 41,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmp6": 58,
    "ipv6-icmp": 58,
    "ospf": 89,
    "pim": 103,
    "ipcomp": 108,
    "sctp": 132,
    "udplite": 136,
}
_ICMP = (1, 58)
_ULPROTO_ANY = 255  # PF_KEY's IPSEC_ULPROTO_ANY

_SA_PROTOCOLS = {
    "esp": IpProto.ESP,
    "esp-udp": IpProto.ESP,
    "ah": IpProto.AH,
    "ipcomp": IpProto.IPCOMP,
}
_REFUSED_PROTOCOLS = {
    "esp-old": "esp-old (RFC 1827 ESP) is not supported; use esp",
    "ah-old": "ah-old (RFC 1826 AH) is not supported; use ah",
    "tcp": "tcp (TCP-MD5 signatures, RFC 2385) is not supported",
}
_MODES = {"transport": Mode.TRANSPORT, "tunnel": Mode.TUNNEL, "any": Mode.ANY}
_PADS = ("zero-pad", "random-pad", "seq-pad")
_DIRECTIONS = {"in": Direction.IN, "out": Direction.OUT, "fwd": Direction.FWD}
_ACTIONS = {"discard": Action.DISCARD, "none": Action.NONE, "ipsec": Action.IPSEC}
_LEVELS = {
    "default": Level.DEFAULT,
    "use": Level.USE,
    "require": Level.REQUIRE,
    "unique": Level.UNIQUE,
}
_PRIO_BASES = {"low": PRIORITY_LOW, "def": PRIORITY_DEFAULT, "high": PRIORITY_HIGH}
_REQUEST_PROTOCOLS = {"esp": IpProto.ESP, "ah": IpProto.AH, "ipcomp": IpProto.IPCOMP}
_OTHER_COMMANDS = ("exit", "quit", "bye", "getspi")
_ENC_NAMES = ", ".join(n for a in ENC_ALGOS for n in a.setkey_names)
_INTEG_NAMES = ", ".join(n for a in INTEG_ALGOS for n in a.setkey_names)
_COMP_NAMES = ", ".join(n for a in COMP_ALGOS for n in a.setkey_names)

_DEC = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+\Z")
_HOST_PORT = re.compile(r"(?P<addr>[^\[\]/]*)(?:\[(?P<port>[^\[\]]*)\])?\Z")
_RANGE = re.compile(r"(?P<addr>[^\[\]/]*)(?:/(?P<plen>[^\[\]/]*))?(?:\[(?P<port>[^\[\]]*)\])?\Z")
_SHORT_V4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}\Z")
_AIFLAGS = re.compile(r"-[46n]+\Z")
_MAX_DIGITS = 20  # beyond any u64; also keeps int() away from huge strings

# Lifetime options: flag -> (hard?, Lifetime field, unit for messages).
_LIFETIME_OPTIONS = {
    "-lh": (True, "add_seconds", "s"),
    "-ls": (False, "add_seconds", "s"),
    "-bh": (True, "bytes", "bytes"),
    "-bs": (False, "bytes", "bytes"),
    "-ph": (True, "packets", "packets"),
    "-ps": (False, "packets", "packets"),
}
_SA_OPTIONS = ("-m", "-r", "-u", "-f", "-E", "-A", "-C", "-R", *_LIFETIME_OPTIONS)


def parse(text: str, filename: str = "<string>", *, allow_legacy: bool = False) -> Script:
    """Parse a whole setkey script; :class:`SetkeyError` at the first mistake.

    ``allow_legacy`` admits the legacy algorithms (the ``--allow-legacy``
    switch).  Warnings (accepted but doubtful statements) are in
    :attr:`Script.warnings`.
    """
    parser = _Parser(tokenize(text, filename), filename, allow_legacy)
    return parser.script()


@dataclass(slots=True)
class _Address:
    """An address word taken apart: ``addr[port]`` or ``addr/plen[port]``."""

    tok: Token
    addr: IPAddress | None  # None for ``any`` (ranges only)
    plen: int | None
    port: int | None  # None when no [port] was written; 0 for [any]
    port_col: int  # offset of the port inside the word, for messages
    short: bool = False  # a short IPv4 prefix such as 10.10.10/24


@dataclass(slots=True)
class _SAOptions:
    """The extensions and algorithms of one add/update statement."""

    seen: dict[str, Token] = field(default_factory=dict)
    mode: Mode = Mode.ANY
    replay: int | None = None  # bytes, as written
    reqid: int = 0
    pad: str | None = None
    nocyclic_seq: bool = False
    esn: bool = False
    hard: Lifetime = field(default_factory=Lifetime)
    soft: Lifetime = field(default_factory=Lifetime)
    enc: EncAlgo | None = None
    enc_key: bytearray = field(default_factory=bytearray)
    integ: IntegAlgo | None = None
    auth_key: bytearray = field(default_factory=bytearray)
    comp_tok: Token | None = None
    rawcpi: bool = False


class _Parser:
    def __init__(self, tokens: list[Token], filename: str, allow_legacy: bool) -> None:
        self.toks = tokens
        self.pos = 0
        self.allow_legacy = allow_legacy
        self.script_ = Script(filename)
        self.commands: dict[str, Callable[[Token], Op | None]] = {
            "add": lambda t: self.add(t, update=False),
            "update": lambda t: self.add(t, update=True),
            "get": lambda t: self.get_or_delete(t, delete=False),
            "delete": lambda t: self.get_or_delete(t, delete=True),
            "deleteall": self.deleteall,
            "flush": lambda t: self.flush_or_dump(t, dump=False),
            "dump": lambda t: self.flush_or_dump(t, dump=True),
            "spdadd": lambda t: self.spdadd(t, update=False),
            "spdupdate": lambda t: self.spdadd(t, update=True),
            "spddelete": self.spddelete,
            "spdflush": self.spdflush,
            "spddump": self.spddump,
        }

    # -- token helpers ---------------------------------------------------------

    def peek(self) -> Token:
        return self.toks[self.pos]

    def next(self) -> Token:
        tok = self.toks[self.pos]
        if tok.kind is not Kind.EOF:
            self.pos += 1
        return tok

    def peek_word(self, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind is Kind.WORD and (not texts or tok.text in texts)

    def word(self, what: str) -> Token:
        tok = self.next()
        if tok.kind is not Kind.WORD:
            raise self.unexpected(tok, what)
        return tok

    def end(self, command: Token) -> None:
        tok = self.next()
        if tok.kind is not Kind.SEMI:
            raise self.unexpected(tok, f"';' to end the {command.text} statement")

    def unexpected(self, tok: Token, what: str) -> SetkeyError:
        if tok.kind is Kind.EOF:
            return SetkeyError(tok.loc, f"expected {what}, found end of input (missing ';'?)")
        if self.is_command(tok):
            return SetkeyError(
                tok.loc,
                f"expected {what}, found the command {_q(tok.text)} (missing ';' before it?)",
            )
        return SetkeyError(tok.loc, f"expected {what}, found {tok.describe()}")

    def is_command(self, tok: Token) -> bool:
        return tok.kind is Kind.WORD and (tok.text in self.commands or tok.text in _OTHER_COMMANDS)

    def warn(self, loc: Location, message: str) -> None:
        self.script_.warnings.append(ScriptWarning(loc, message))

    # -- script ----------------------------------------------------------------

    def script(self) -> Script:
        while True:
            tok = self.next()
            if tok.kind is Kind.EOF:
                break
            if tok.kind is Kind.SEMI:  # an empty statement
                continue
            if tok.kind is not Kind.WORD:
                raise SetkeyError(tok.loc, f"expected a command, found {tok.describe()}")
            if tok.text in ("exit", "quit", "bye"):
                self.end(tok)
                break
            if tok.text == "getspi":
                raise SetkeyError(
                    tok.loc, "getspi is not supported: ipsecd has no larval SAs; use add"
                )
            handler = self.commands.get(tok.text)
            if handler is None:
                raise SetkeyError(
                    tok.loc, f"unknown command {_q(tok.text)}{_hint(tok.text, self.commands)}"
                )
            op = handler(tok)
            if op is not None:
                self.script_.ops.append(op)
        return self.script_

    # -- numbers, keys ---------------------------------------------------------

    def number(
        self, text: str, loc: Location, what: str, maximum: int, *, hex_ok: bool = False
    ) -> int:
        """A decimal (or, with ``hex_ok``, 0x-hex) number in 0..maximum."""
        if _DEC.match(text) and len(text) <= _MAX_DIGITS:
            value = int(text, 10)
        elif hex_ok and _HEX.match(text) and len(text) <= _MAX_DIGITS:
            value = int(text, 16)
        else:
            kind = "a decimal or 0x-hex number" if hex_ok else "a decimal number"
            raise SetkeyError(loc, f"{what} must be {kind}, not {_q(text)}")
        if value > maximum:
            raise SetkeyError(loc, f"{what} {text} is too large (at most {maximum})")
        return value

    def key(self, algo_name: str) -> tuple[bytearray, Token]:
        tok = self.next()
        if tok.kind is Kind.STRING:
            try:
                return bytearray(tok.text.encode("utf-8", "surrogateescape")), tok
            except UnicodeEncodeError:
                raise SetkeyError(
                    tok.loc, "the quoted key holds characters that are not bytes"
                ) from None
        if tok.kind is Kind.WORD and tok.text[:2] in ("0x", "0X"):
            digits = tok.text[2:]
            for i, ch in enumerate(digits):
                if ch not in "0123456789abcdefABCDEF":
                    raise SetkeyError(
                        tok.loc.shifted(2 + i), f"{_q(ch)} is not a hex digit in the key"
                    )
            if not digits:
                raise SetkeyError(tok.loc, "the hex key has no digits after 0x")
            if len(digits) % 2:
                raise SetkeyError(
                    tok.loc, f"the hex key has an odd number of digits ({len(digits)})"
                )
            return bytearray.fromhex(digits), tok
        raise self.unexpected(
            tok, f'a key for {algo_name} (0x followed by hex digits, or a "quoted string")'
        )

    # -- addresses -------------------------------------------------------------

    def ip(self, text: str, loc: Location) -> IPAddress:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            pass
        if not text:
            raise SetkeyError(loc, "expected an address")
        labels = text.rstrip(".").split(".")
        if (
            re.fullmatch(r"[A-Za-z0-9.-]+", text)
            and re.search(r"[A-Za-z]", text)
            and not labels[0].isdigit()  # 192.0.2.x is a mistyped address, not a name
        ):
            raise SetkeyError(
                loc, f"{_q(text)} is not a numeric address (ipsecd does not resolve host names)"
            )
        raise SetkeyError(loc, f"{_q(text)} is not a valid IPv4 or IPv6 address")

    def port(self, text: str, loc: Location) -> int:
        if text == "any":
            return 0
        if not _DEC.match(text):
            raise SetkeyError(loc, f"a port must be a number or 'any', not {_q(text)}")
        return self.number(text, loc, "port", 0xFFFF)

    def host(self, what: str) -> _Address:
        """An SA end point: ``addr`` or ``addr[port]``."""
        tok = self.word(what)
        m = _HOST_PORT.match(tok.text)
        if m is None:
            raise SetkeyError(tok.loc, f"{_q(tok.text)} is not an address or address[port]")
        addr = self.ip(m["addr"], tok.loc)
        port_col = m.start("port") if m["port"] is not None else 0
        port = None if m["port"] is None else self.port(m["port"], tok.loc.shifted(port_col))
        return _Address(tok, addr, None, port, port_col)

    def range_(self, what: str) -> _Address:
        """A selector range: ``addr[/plen][[port]]`` or ``any``."""
        tok = self.word(what)
        m = _RANGE.match(tok.text)
        if m is None:
            raise SetkeyError(
                tok.loc, f"{_q(tok.text)} is not an address range (addr/prefixlen[port])"
            )
        text, plen_text = m["addr"], m["plen"]
        port_col = m.start("port") if m["port"] is not None else 0
        port = None if m["port"] is None else self.port(m["port"], tok.loc.shifted(port_col))
        plen: int | None = None
        if plen_text is not None:
            plen = self.number(plen_text, tok.loc.shifted(m.start("plen")), "prefix length", 128)
        if text == "any":
            if plen is not None:
                raise SetkeyError(tok.loc, "'any' takes no prefix length")
            return _Address(tok, None, None, port, port_col)
        short = False
        if plen is not None and _SHORT_V4.match(text) and text.count(".") < 3:
            # CIDR shorthand (10.10.10/24): only when the octets written
            # cover the prefix, so there is a single reading.
            parts = text.split(".")
            if plen > 8 * len(parts):
                raise SetkeyError(
                    tok.loc,
                    f"the short address {text} does not cover /{plen}: write all four octets",
                )
            if any(int(p) > 255 for p in parts):
                raise SetkeyError(tok.loc, f"{_q(text)} is not a valid IPv4 address")
            text = ".".join(parts + ["0"] * (4 - len(parts)))
            short = True
        addr = self.ip(text, tok.loc)
        full = 32 if addr.version == 4 else 128
        if plen is not None and plen > full:
            raise SetkeyError(
                tok.loc.shifted(m.start("plen")),
                f"prefix length /{plen} is longer than {full} bits",
            )
        return _Address(tok, addr, plen, port, port_col, short)

    def aiflags(self) -> int | None:
        """setkey's ``-4``/``-6``/``-n`` address flags: the family they demand, if any."""
        family: int | None = None
        while self.peek_word() and _AIFLAGS.match(self.peek().text):
            for ch in self.next().text[1:]:
                if ch == "4":
                    family = 4
                elif ch == "6":
                    family = 6
                # -n: numeric only, which is all we accept anyway.
        return family

    def check_family(self, a: _Address, family: int | None) -> None:
        if family is not None and a.addr is not None and a.addr.version != family:
            raise SetkeyError(
                a.tok.loc, f"{a.addr} is not an IPv{family} address (-{family} was given)"
            )

    def same_family(self, a: _Address, b: _Address) -> None:
        if a.addr is not None and b.addr is not None and a.addr.version != b.addr.version:
            raise SetkeyError(
                b.tok.loc,
                f"{b.addr} is IPv{b.addr.version} but {a.addr} is IPv{a.addr.version}: "
                "both addresses must be of one family",
            )

    # -- SA statements ---------------------------------------------------------

    def sa_protocol(self) -> tuple[Token, IpProto]:
        tok = self.word("a protocol (esp, esp-udp, ah or ipcomp)")
        if tok.text in _REFUSED_PROTOCOLS:
            raise SetkeyError(tok.loc, _REFUSED_PROTOCOLS[tok.text])
        proto = _SA_PROTOCOLS.get(tok.text)
        if proto is None:
            raise SetkeyError(
                tok.loc, f"unknown protocol {_q(tok.text)}: expected esp, esp-udp, ah or ipcomp"
            )
        return tok, proto

    def spi(self, proto: IpProto) -> tuple[Token, int]:
        tok = self.word("an SPI")
        if proto is IpProto.IPCOMP:
            value = self.number(tok.text, tok.loc, "CPI", 0xFFFF, hex_ok=True)
        else:
            value = self.number(tok.text, tok.loc, "SPI", 0xFFFFFFFF, hex_ok=True)
            if value < 256:
                # RFC 4303 §2.1 / RFC 4302 §2.4: 1..255 reserved by IANA, 0 local use.
                raise SetkeyError(
                    tok.loc, f"SPI {tok.text} is reserved: SPIs 0..255 cannot be used"
                )
        return tok, value

    def add(self, cmd: Token, *, update: bool) -> Op:
        family = self.aiflags()
        src = self.host("a source address")
        dst = self.host("a destination address")
        self.check_family(src, family)
        self.check_family(dst, family)
        self.same_family(src, dst)
        proto_tok, proto = self.sa_protocol()
        natt = proto_tok.text == "esp-udp"
        nat_oa: IPAddress | None = None
        if (
            natt
            and self.peek_word()
            and not _DEC.match(self.peek().text)
            and not _HEX.match(self.peek().text)
        ):
            oa_tok = self.next()
            nat_oa = self.ip(oa_tok.text, oa_tok.loc)
        spi_tok, spi = self.spi(proto)
        opts = self.sa_options(cmd, proto_tok)
        for a in (src, dst):
            if a.port is not None and not natt:
                raise SetkeyError(
                    a.tok.loc.shifted(a.port_col),
                    "a port is only given for esp-udp (the UDP ports of NAT traversal)",
                )
        assert src.addr is not None and dst.addr is not None
        return AddSA(
            cmd.loc,
            self.build_sa(cmd, proto_tok, proto, spi_tok, spi, src, dst, opts, nat_oa),
            update,
        )

    def sa_options(self, cmd: Token, proto_tok: Token) -> _SAOptions:
        opts = _SAOptions()
        while True:
            tok = self.next()
            if tok.kind is Kind.SEMI:
                return opts
            if tok.kind is not Kind.WORD or not tok.text.startswith("-"):
                raise self.unexpected(tok, f"an option or ';' to end the {cmd.text} statement")
            flag = tok.text
            if flag == "-ctx":
                raise SetkeyError(tok.loc, "security contexts (-ctx) are not supported")
            if flag not in _SA_OPTIONS:
                raise SetkeyError(
                    tok.loc, f"unknown option {_q(flag)} for {cmd.text}{_hint(flag, _SA_OPTIONS)}"
                )
            if flag != "-f" and flag in opts.seen:
                prev = opts.seen[flag].loc
                raise SetkeyError(
                    tok.loc, f"{flag} is given twice (first at line {prev.line}:{prev.col})"
                )
            opts.seen[flag] = tok
            self.sa_option(flag, tok, opts)

    def sa_option(self, flag: str, tok: Token, opts: _SAOptions) -> None:
        if flag == "-m":
            arg = self.word("a mode (transport, tunnel or any)")
            if arg.text not in _MODES:
                raise SetkeyError(
                    arg.loc, f"unknown mode {_q(arg.text)}: expected transport, tunnel or any"
                )
            opts.mode = _MODES[arg.text]
        elif flag == "-r":
            arg = self.word("a replay window size in bytes")
            limit = MAX_REPLAY_WINDOW // 8
            size = self.number(arg.text, arg.loc, "replay window size", 0xFFFFFFFF)
            if size > limit:
                raise SetkeyError(
                    arg.loc,
                    f"-r {size} asks for a window of {size * 8} packets (-r counts bytes of "
                    f"bitmap, 8 packets each); the most is -r {limit} ({MAX_REPLAY_WINDOW} packets)",
                )
            if size == 0:
                self.warn(
                    arg.loc, "-r 0 disables anti-replay protection for this SA (RFC 4303 §3.4.3)"
                )
            opts.replay = size
        elif flag == "-u":
            arg = self.word("a reqid")
            opts.reqid = self.number(arg.text, arg.loc, "reqid", 0xFFFFFFFF)
        elif flag == "-f":
            arg = self.word("a flag (zero-pad, random-pad, seq-pad, nocyclic-seq or esn)")
            if arg.text in _PADS:
                if opts.pad is not None and opts.pad != arg.text:
                    raise SetkeyError(arg.loc, f"-f {arg.text} conflicts with -f {opts.pad}")
                opts.pad = arg.text
            elif arg.text == "nocyclic-seq":
                opts.nocyclic_seq = True
            elif arg.text == "esn":
                opts.esn = True
            else:
                raise SetkeyError(
                    arg.loc,
                    f"unknown -f flag {_q(arg.text)}: expected zero-pad, random-pad, seq-pad, "
                    "nocyclic-seq or esn",
                )
        elif flag in _LIFETIME_OPTIONS:
            hard, attr, unit = _LIFETIME_OPTIONS[flag]
            arg = self.word(f"a lifetime in {unit}")
            value = self.number(arg.text, arg.loc, f"{flag} lifetime", 2**64 - 1)
            setattr(opts.hard if hard else opts.soft, attr, value)
        elif flag == "-E":
            opts.enc = self.algorithm(enc_algo, "encryption", _ENC_NAMES)
            if opts.enc.key_bits == (0,):
                # setkey's null takes no key; accept an empty one too.
                nxt = self.peek()
                if not (nxt.kind is Kind.STRING or (
                    nxt.kind is Kind.WORD and nxt.text[:2] in ("0x", "0X")
                )):
                    return
            opts.enc_key, key_tok = self.key(opts.enc.name)
            self.check_enc_key(opts.enc, opts.enc_key, key_tok)
        elif flag == "-A":
            opts.integ = self.algorithm(integ_algo, "authentication", _INTEG_NAMES)
            opts.auth_key, key_tok = self.key(opts.integ.name)
            if len(opts.auth_key) != opts.integ.key_bytes:
                raise SetkeyError(
                    key_tok.loc,
                    f"{opts.integ.name} needs a {opts.integ.key_bytes * 8}-bit key, "
                    f"got {len(opts.auth_key) * 8} bits",
                )
        elif flag == "-C":
            opts.comp_tok = self.word("a compression algorithm")
        elif flag == "-R":
            opts.rawcpi = True

    def algorithm(self, lookup: Callable[..., _A], kind: str, known: str) -> _A:
        """The next word as an algorithm name, looked up with ``lookup`` (enc_algo / integ_algo)."""
        name = self.word(f"an {kind} algorithm")
        try:
            return lookup(name.text, allow_legacy=self.allow_legacy)
        except LegacyAlgorithmError as exc:
            raise SetkeyError(name.loc, str(exc)) from None
        except TransformError:
            raise SetkeyError(
                name.loc, f"unknown {kind} algorithm {_q(name.text)}; ipsecd knows {known}",
            ) from None

    def check_enc_key(self, algo: EncAlgo, key: bytearray, key_tok: Token) -> None:
        try:
            check_enc_key(algo, key)
        except TransformError as exc:
            raise SetkeyError(key_tok.loc, str(exc)) from None

    def build_sa(
        self,
        cmd: Token,
        proto_tok: Token,
        proto: IpProto,
        spi_tok: Token,
        spi: int,
        src: _Address,
        dst: _Address,
        opts: _SAOptions,
        nat_oa: IPAddress | None,
    ) -> SecurityAssociation:
        seen = opts.seen
        name = proto_tok.text

        def refuse(flag: str, why: str) -> None:
            if flag in seen:
                raise SetkeyError(seen[flag].loc, why)

        if proto is IpProto.ESP:
            refuse("-C", f"{name} takes -E (and -A), not -C: -C is for ipcomp")
            refuse("-R", "-R (raw CPI) is for ipcomp")
            if opts.enc is None:
                raise SetkeyError(
                    proto_tok.loc, f"{name} needs an encryption algorithm: -E ealgo key"
                )
            if opts.enc.aead and opts.integ is not None:
                raise SetkeyError(
                    seen["-A"].loc,
                    f"{opts.enc.name} is a combined-mode (AEAD) algorithm and protects integrity "
                    "itself: give no -A",
                )
            if opts.integ is None and not opts.enc.aead:
                if opts.enc.key_bits == (0,):
                    # RFC 4303 §3.2: ESP MUST NOT be NULL encryption without integrity.
                    raise SetkeyError(
                        seen["-E"].loc, "null encryption needs -A: ESP would protect nothing"
                    )
                self.warn(
                    seen["-E"].loc,
                    f"{opts.enc.name} without -A: this ESP SA has no integrity protection of its "
                    "own (RFC 4303 §3.2); bundle it with AH or use an AEAD such as aes-gcm-16",
                )
        elif proto is IpProto.AH:
            refuse("-E", "ah takes -A only: -E is for esp")
            refuse("-C", "ah takes -A only: -C is for ipcomp")
            refuse("-R", "-R (raw CPI) is for ipcomp")
            if opts.integ is None:
                raise SetkeyError(
                    proto_tok.loc, "ah needs an authentication algorithm: -A aalgo key"
                )
        else:
            refuse("-E", "ipcomp takes -C only: -E is for esp")
            refuse("-A", "ipcomp takes -C only: -A is for esp and ah")
            if opts.comp_tok is None:
                raise SetkeyError(proto_tok.loc, "ipcomp needs a compression algorithm: -C calgo")
            if opts.esn:
                raise SetkeyError(seen["-f"].loc, "-f esn: ipcomp has no sequence numbers")
            if "-r" in seen:
                self.warn(seen["-r"].loc, "-r is ignored for ipcomp: it has no sequence numbers")
            if opts.rawcpi and spi < 256:
                # RFC 3173 §2.1: CPIs 0..63 are well-known, 64..255 reserved.
                raise SetkeyError(
                    spi_tok.loc,
                    f"CPI {spi_tok.text} is reserved: a raw CPI (-R) must be 256 or more",
                )
        for attr, unit, flag in (
            ("add_seconds", "s", "-ls"),
            ("bytes", "bytes", "-bs"),
            ("packets", "packets", "-ps"),
        ):
            hard_v, soft_v = getattr(opts.hard, attr), getattr(opts.soft, attr)
            if hard_v and soft_v > hard_v:
                raise SetkeyError(
                    seen[flag].loc,
                    f"the soft lifetime ({soft_v} {unit}) exceeds the hard one ({hard_v} {unit})",
                )

        if proto is IpProto.IPCOMP:
            window = 0
        elif opts.replay is None:
            window = DEFAULT_REPLAY_WINDOW
        else:
            window = opts.replay * 8
        extra: dict[str, object] = {}
        if opts.pad is not None:
            extra["pad"] = opts.pad
        if opts.nocyclic_seq:
            extra["nocyclic_seq"] = True
        if opts.rawcpi:
            extra["rawcpi"] = True
        if nat_oa is not None:
            extra["nat_oa"] = nat_oa
        comp = None
        if opts.comp_tok is not None:
            try:
                comp = comp_algo(opts.comp_tok.text).id
            except TransformError:
                raise SetkeyError(
                    opts.comp_tok.loc,
                    f"unknown compression algorithm {_q(opts.comp_tok.text)}; ipsecd knows {_COMP_NAMES}",
                ) from None
        encap = None
        if proto_tok.text == "esp-udp":
            # ipsec-tools parse.y get_port(): port 0 (not given) means 4500 (RFC 3948).
            encap = UdpEncap(src.port or 4500, dst.port or 4500)
        assert src.addr is not None and dst.addr is not None
        legacy = bool(
            (opts.enc is not None and opts.enc.legacy)
            or (opts.integ is not None and opts.integ.legacy)
        )
        try:
            return SecurityAssociation(
                spi=spi,
                protocol=proto,
                src=src.addr,
                dst=dst.addr,
                mode=opts.mode,
                reqid=opts.reqid,
                replay_window=window,
                enc=None if opts.enc is None else opts.enc.id,
                enc_key=opts.enc_key,
                auth=IntegId.NONE if opts.integ is None else opts.integ.id,
                auth_key=opts.auth_key,
                comp=comp,
                esn=opts.esn,
                encap=encap,
                hard=opts.hard,
                soft=opts.soft,
                legacy=legacy,
                extra=extra,
            )
        except ValueError as exc:
            raise SetkeyError(cmd.loc, f"{cmd.text}: {exc}") from None

    def get_or_delete(self, cmd: Token, *, delete: bool) -> Op:
        family = self.aiflags()
        src = self.host("a source address")
        dst = self.host("a destination address")
        self.check_family(src, family)
        self.check_family(dst, family)
        self.same_family(src, dst)
        _, proto = self.sa_protocol()
        _, spi = self.spi(proto)
        if self.peek_word("-m"):
            # parse.y accepts extensions here and warns that the mode is obsolete.
            flag = self.next()
            arg = self.word("a mode (transport, tunnel or any)")
            if arg.text not in _MODES:
                raise SetkeyError(
                    arg.loc, f"unknown mode {_q(arg.text)}: expected transport, tunnel or any"
                )
            self.warn(
                flag.loc,
                f"-m is ignored by {cmd.text}: an SA is found by SPI, protocol and addresses",
            )
        self.end(cmd)
        assert src.addr is not None and dst.addr is not None
        if delete:
            return DeleteSA(cmd.loc, src.addr, dst.addr, proto, spi)
        return GetSA(cmd.loc, src.addr, dst.addr, proto, spi)

    def deleteall(self, cmd: Token) -> Op:
        family = self.aiflags()
        src = self.host("a source address")
        dst = self.host("a destination address")
        for a in (src, dst):
            if a.port is not None:
                raise SetkeyError(
                    a.tok.loc.shifted(a.port_col), "deleteall takes addresses without ports"
                )
        self.check_family(src, family)
        self.check_family(dst, family)
        self.same_family(src, dst)
        _, proto = self.sa_protocol()
        self.end(cmd)
        assert src.addr is not None and dst.addr is not None
        return DeleteAllSA(cmd.loc, src.addr, dst.addr, proto)

    def flush_or_dump(self, cmd: Token, *, dump: bool) -> Op:
        proto: IpProto | None = None
        if self.peek().kind is Kind.WORD:
            _, proto = self.sa_protocol()
        self.end(cmd)
        return DumpSA(cmd.loc, proto) if dump else FlushSA(cmd.loc, proto)

    # -- SPD statements --------------------------------------------------------

    def selector(self, cmd: Token) -> Selector:
        """``[-46n] src_range dst_range upperspec [type,code]`` of spdadd/spdupdate/spddelete."""
        if self.peek_word("tagged"):
            raise SetkeyError(self.peek().loc, "spdadd tagged (PF tags) is not supported")
        family = self.aiflags()
        src = self.range_("a source range")
        dst = self.range_("a destination range")
        self.check_family(src, family)
        self.check_family(dst, family)
        self.same_family(src, dst)
        for a in (src, dst):
            if a.short:
                assert a.addr is not None
                short_text = a.tok.text.split("/", 1)[0]
                aton = ipaddress.IPv4Address(socket.inet_aton(short_text))
                if ipaddress.ip_network((aton, a.plen or 0), strict=False) == ipaddress.ip_network(
                    (a.addr, a.plen or 0), strict=False
                ):
                    continue  # both readings select the same addresses, as with 0/0
                self.warn(
                    a.tok.loc,
                    f"'{short_text}/{a.plen}' is read as {a.addr}/{a.plen}, but setkey's inet_aton() "
                    f"reads {short_text} as {aton}: write all four octets",
                )
        if src.addr is None and dst.addr is None:
            version = family
            if version is None:
                raise SetkeyError(
                    src.tok.loc,
                    "'any' on both sides: write 0.0.0.0/0 or ::/0 so the address family is known",
                )
        else:
            version = (src.addr or dst.addr).version  # type: ignore[union-attr]
        src_net = self.network(src, version)
        dst_net = self.network(dst, version)

        what = "an upper-layer protocol (any, tcp, udp, icmp, icmp6 or a number)"
        up = self.word(what)
        if up.text in ("-P", "-ctx"):
            raise self.unexpected(up, what)
        proto = self.upper(up)
        sport = src.port or 0
        dport = dst.port or 0
        if proto in _ICMP:
            if proto == 1 and version == 6:
                raise SetkeyError(up.loc, "icmp with IPv6 addresses: use icmp6")
            if proto == 58 and version == 4:
                raise SetkeyError(up.loc, "icmp6 with IPv4 addresses: use icmp")
            for a in (src, dst):
                if a.port:
                    raise SetkeyError(
                        a.tok.loc.shifted(a.port_col),
                        f"{up.text} has no ports: give 'type,code' after {up.text}",
                    )
        if self.peek().kind is Kind.WORD and self.peek().text not in ("-P", "-ctx"):
            misc = self.next()
            if proto not in _ICMP:
                raise SetkeyError(
                    misc.loc,
                    f"expected -P, found {_q(misc.text)} (a type,code is only given for icmp and icmp6)",
                )
            sport, dport = self.icmp_type_code(misc)
        if self.peek_word("-ctx"):
            raise SetkeyError(self.peek().loc, "security contexts (-ctx) are not supported")
        try:
            return Selector(src_net, dst_net, proto, sport, dport)
        except ValueError as exc:
            raise SetkeyError(cmd.loc, f"{cmd.text}: {exc}") from None

    def network(self, a: _Address, version: int | None) -> IPNetwork:
        if a.addr is None:
            return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
        full = 32 if a.addr.version == 4 else 128
        return ipaddress.ip_network((a.addr, full if a.plen is None else a.plen), strict=False)

    def upper(self, tok: Token) -> int | None:
        text = tok.text
        if text == "any":
            return None
        if _DEC.match(text):
            value = self.number(text, tok.loc, "upper-layer protocol", 255)
            return None if value == _ULPROTO_ANY else value
        if text in UPPER_PROTOCOLS:
            return UPPER_PROTOCOLS[text]
        raise SetkeyError(
            tok.loc,
            f"unknown upper-layer protocol {_q(text)}{_hint(text, UPPER_PROTOCOLS)}: expected any, "
            "a name such as tcp, udp, icmp, icmp6, or a number",
        )

    def icmp_type_code(self, tok: Token) -> tuple[int, int]:
        text = tok.text
        if "," not in text:
            raise SetkeyError(
                tok.loc, f"expected 'type,code' for ICMP, found {_q(text)} (the code must be given)"
            )
        type_text, code_text = text.split(",", 1)
        icmp_type = self.number(type_text, tok.loc, "ICMP type", 255)
        code = self.number(code_text, tok.loc.shifted(len(type_text) + 1), "ICMP code", 255)
        return icmp_type, code

    def policy_head(self, *, need_action: bool) -> tuple[Token, Direction, int, Action | None]:
        flag = self.next()
        if not (flag.kind is Kind.WORD and flag.text == "-P"):
            raise self.unexpected(flag, "-P and a policy")
        d = self.word("a direction (in, out or fwd)")
        if d.text not in _DIRECTIONS:
            raise SetkeyError(d.loc, f"unknown direction {_q(d.text)}: expected in, out or fwd")
        priority = PRIORITY_DEFAULT
        if self.peek_word("prio", "priority"):
            self.next()
            priority = self.priority()
        if not need_action and self.peek().kind is Kind.SEMI:
            return d, _DIRECTIONS[d.text], priority, None
        a = self.word("an action (ipsec, none or discard)")
        if a.text == "bypass":
            self.warn(a.loc, "bypass is taken as none: the traffic passes without IPsec")
            return d, _DIRECTIONS[d.text], priority, Action.NONE
        if a.text == "entrust":
            raise SetkeyError(
                a.loc,
                "entrust is only meaningful for per-socket policies: use none, discard or ipsec",
            )
        if a.text not in _ACTIONS:
            raise SetkeyError(
                a.loc, f"unknown action {_q(a.text)}: expected ipsec, none or discard"
            )
        return d, _DIRECTIONS[d.text], priority, _ACTIONS[a.text]

    def priority(self) -> int:
        """libipsec ``policy_parse.y``: ``prio N``, ``prio -N``, ``prio low|def|high [+|- N]``.

        The limits are setkey(8)'s: a bare offset in -2147483647..2147483648;
        after a base, up to 1073741824 added or 1073741823 subtracted.
        """
        tok = self.word("a priority (a number, or low, def or high)")
        sign = 1
        if tok.text in _PRIO_BASES:
            base = _PRIO_BASES[tok.text]
            if self.peek_word("+", "-"):
                sign = 1 if self.next().text == "+" else -1
                num = self.word("a priority offset")
                text, loc = num.text, num.loc
            elif self.peek_word() and re.match(r"[+-][0-9]+\Z", self.peek().text):
                num = self.next()
                sign = 1 if num.text[0] == "+" else -1
                text, loc = num.text[1:], num.loc.shifted(1)
            else:
                return base
            limit = 2**30 if sign > 0 else 2**30 - 1
            return base + sign * self.number(text, loc, f"prio {tok.text} offset", limit)
        if tok.text in ("+", "-"):
            sign = 1 if tok.text == "+" else -1
            num = self.word("a priority offset")
            text, loc = num.text, num.loc
        elif tok.text[:1] in ("+", "-"):
            sign = 1 if tok.text[0] == "+" else -1
            text, loc = tok.text[1:], tok.loc.shifted(1)
        else:
            text, loc = tok.text, tok.loc
        limit = PRIORITY_MAX if sign > 0 else -PRIORITY_MIN
        return sign * self.number(text, loc, "priority", limit)

    def request(self, tok: Token) -> IpsecRequest:
        """``protocol/mode/src-dst/level`` and its shortened forms (policy_parse.y ``rule``)."""
        parts = tok.text.split("/")
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + len(p) + 1)
        if len(parts) > 4:
            raise SetkeyError(
                tok.loc.shifted(offsets[4] - 1),
                "too many '/' in the request: protocol/mode/src-dst/level",
            )
        proto_text = parts[0]
        if proto_text not in _REQUEST_PROTOCOLS:
            raise SetkeyError(
                tok.loc,
                f"unknown protocol {_q(proto_text)} in the request: expected esp, ah or ipcomp",
            )
        if len(parts) < 2 or not parts[1]:
            raise SetkeyError(
                tok.loc, f"{_q(tok.text)} is too short: write protocol/mode/src-dst/level"
            )
        mode_loc = tok.loc.shifted(offsets[1])
        if parts[1] not in ("transport", "tunnel"):
            raise SetkeyError(
                mode_loc, f"unknown mode {_q(parts[1])}: expected transport or tunnel"
            )
        mode = Mode.TRANSPORT if parts[1] == "transport" else Mode.TUNNEL
        src: IPAddress | None = None
        dst: IPAddress | None = None
        sport = dport = 0
        if len(parts) > 2 and parts[2]:
            src, sport, dst, dport = self.endpoints(parts[2], tok.loc.shifted(offsets[2]))
        level, reqid = Level.DEFAULT, 0
        if len(parts) > 3 and parts[3]:
            level, reqid = self.level(parts[3], tok.loc.shifted(offsets[3]))
        if mode is Mode.TUNNEL and src is None:
            raise SetkeyError(
                mode_loc, "tunnel mode needs the SA end points: protocol/tunnel/src-dst/level"
            )
        try:
            return IpsecRequest(
                _REQUEST_PROTOCOLS[proto_text], mode, src, dst, level, reqid, sport, dport
            )
        except ValueError as exc:
            raise SetkeyError(tok.loc, str(exc)) from None

    def endpoints(self, text: str, loc: Location) -> tuple[IPAddress, int, IPAddress, int]:
        if text in ("me-any", "any-me"):
            raise SetkeyError(loc, f"{_q(text)} end points are not supported: give both addresses")
        if text.count("-") != 1:
            raise SetkeyError(
                loc, f"{_q(text)} is not src-dst: the SA end points are two addresses joined by '-'"
            )
        src_text, dst_text = text.split("-")
        dst_loc = loc.shifted(len(src_text) + 1)
        src, sport = self.endpoint(src_text, loc)
        dst, dport = self.endpoint(dst_text, dst_loc)
        if src.version != dst.version:
            raise SetkeyError(dst_loc, f"{dst} and {src} are of different address families")
        return src, sport, dst, dport

    def endpoint(self, text: str, loc: Location) -> tuple[IPAddress, int]:
        m = _HOST_PORT.match(text)
        if m is None:
            raise SetkeyError(loc, f"{_q(text)} is not an address or address[port]")
        addr = self.ip(m["addr"], loc)
        port = 0
        if m["port"] is not None:
            port_loc = loc.shifted(m.start("port"))
            if not _DEC.match(m["port"]):
                raise SetkeyError(
                    port_loc, f"a port of an SA end point must be a number, not {_q(m['port'])}"
                )
            port = self.number(m["port"], port_loc, "port", 0xFFFF)
        return addr, port

    def level(self, text: str, loc: Location) -> tuple[Level, int]:
        if text.startswith("unique:"):
            num = text[len("unique:") :]
            reqid = self.number(num, loc.shifted(7), "reqid", 2**32 - 1)
            if not 1 <= reqid <= MAX_MANUAL_REQID:
                raise SetkeyError(
                    loc.shifted(7), f"the reqid of unique:{num} must be 1..{MAX_MANUAL_REQID}"
                )
            return Level.UNIQUE, reqid
        if text not in _LEVELS:
            raise SetkeyError(
                loc, f"unknown level {_q(text)}: expected default, use, require, unique or unique:N"
            )
        return _LEVELS[text], 0

    def spdadd(self, cmd: Token, *, update: bool) -> Op:
        sel = self.selector(cmd)
        _, direction, priority, action = self.policy_head(need_action=True)
        assert action is not None
        requests: list[IpsecRequest] = []
        while True:
            tok = self.next()
            if tok.kind is Kind.SEMI:
                break
            if tok.kind is not Kind.WORD:
                raise self.unexpected(tok, f"a request or ';' to end {cmd.text}")
            if self.is_command(tok):
                raise self.unexpected(tok, f"a request or ';' to end {cmd.text}")
            if action is not Action.IPSEC:
                raise SetkeyError(
                    tok.loc, f"a {action.value} policy takes no requests (found {_q(tok.text)})"
                )
            requests.append(self.request(tok))
        if action is Action.IPSEC and not requests:
            raise SetkeyError(
                self.toks[self.pos - 1].loc,
                "an ipsec policy needs at least one request such as esp/transport//require",
            )
        try:
            policy = Policy(sel, direction, action, tuple(requests), priority)
        except ValueError as exc:
            raise SetkeyError(cmd.loc, f"{cmd.text}: {exc}") from None
        return SpdAdd(cmd.loc, policy, update)

    def spddelete(self, cmd: Token) -> Op:
        sel = self.selector(cmd)
        _, direction, _, action = self.policy_head(need_action=False)
        # The rest of the policy is accepted (and checked) but not used:
        # a policy is identified by its selector and direction.
        while True:
            tok = self.next()
            if tok.kind is Kind.SEMI:
                break
            if tok.kind is not Kind.WORD:
                raise self.unexpected(tok, f"';' to end {cmd.text}")
            if action is not Action.IPSEC:
                raise self.unexpected(tok, f"';' to end {cmd.text}")
            self.request(tok)
        return SpdDelete(cmd.loc, sel, direction)

    def spdflush(self, cmd: Token) -> Op:
        self.end(cmd)
        return SpdFlush(cmd.loc)

    def spddump(self, cmd: Token) -> Op:
        self.end(cmd)
        return SpdDump(cmd.loc)


def _q(text: str) -> str:
    """User text quoted for a message, shortened so a runaway word cannot flood the terminal."""
    return f"'{text}'" if len(text) <= 60 else f"'{text[:57]}...'"


def _hint(text: str, choices: Iterable[str]) -> str:
    # Lower-cased: setkey's keywords are lower case, and ADD should suggest add.
    close = difflib.get_close_matches(text.lower(), list(choices), n=1, cutoff=0.75)
    return f" (did you mean {_q(close[0])}?)" if close else ""


__all__ = ["UPPER_PROTOCOLS", "parse"]
