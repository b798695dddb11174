"""The setkey(8) grammar: every command and option, and every error with its place.

Errors are checked as ``LINE:COL`` plus a phrase of the message; the full
text of many of them is pinned by the invalid corpus (tests/corpus/setkey).
"""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.iana import EncrId, IntegId, IpcompId, IpProto
from ipsecd.sa import DEFAULT_REPLAY_WINDOW, Lifetime, Mode, UdpEncap
from ipsecd.setkey import (
    AddSA,
    DeleteAllSA,
    DeleteSA,
    DumpSA,
    FlushSA,
    GetSA,
    Op,
    Script,
    SetkeyError,
    SpdAdd,
    SpdDelete,
    SpdDump,
    SpdFlush,
    parse,
)
from ipsecd.spd import PRIORITY_HIGH, PRIORITY_LOW, Action, Direction, IpsecRequest, Level, Selector

ip = ipaddress.ip_address
GCM_KEY = "0x" + "11" * 20  # AES-128-GCM key + salt
GCM = f"-E aes-gcm-16 {GCM_KEY}"
SHA256_KEY = "0x" + "22" * 32
AES_KEY = "0x" + "33" * 16


def ops(text: str, *, legacy: bool = False) -> list[Op]:
    return parse(text, "t.conf", allow_legacy=legacy).ops


def one(text: str, *, legacy: bool = False) -> Op:
    result = ops(text, legacy=legacy)
    assert len(result) == 1, result
    return result[0]


def add(text: str, *, legacy: bool = False) -> AddSA:
    op = one(text, legacy=legacy)
    assert isinstance(op, AddSA)
    return op


def spd(text: str) -> SpdAdd:
    op = one(text)
    assert isinstance(op, SpdAdd)
    return op


def warnings(text: str) -> list[str]:
    return [f"{w.loc.line}:{w.loc.col}: {w.message}" for w in parse(text, "t.conf").warnings]


def error(text: str, *, legacy: bool = False) -> str:
    with pytest.raises(SetkeyError) as info:
        parse(text, "t.conf", allow_legacy=legacy)
    assert info.value.file == "t.conf"
    return f"{info.value.line}:{info.value.col}: {info.value.message}"


# -- SA commands -------------------------------------------------------------------


def test_add_esp_aead() -> None:
    op = add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m tunnel {GCM};")
    sa = op.sa
    assert not op.update and op.command == "add"
    assert (sa.spi, sa.protocol, sa.src, sa.dst) == (0x1000, IpProto.ESP, ip("192.0.2.1"), ip("192.0.2.2"))
    assert sa.mode is Mode.TUNNEL
    assert sa.enc is EncrId.ENCR_AES_GCM_16 and sa.enc_key == bytearray(b"\x11" * 20)
    assert sa.auth is IntegId.NONE and sa.auth_key == bytearray()
    assert sa.replay_window == DEFAULT_REPLAY_WINDOW
    assert sa.reqid == 0 and not sa.esn and sa.encap is None and not sa.legacy
    assert sa.extra == {}
    assert op.loc.line == 1 and op.loc.col == 1


def test_add_esp_cbc_with_hmac_and_decimal_spi() -> None:
    sa = add(f"add 192.0.2.1 192.0.2.2 esp 4096 -E rijndael-cbc {AES_KEY} -A hmac-sha256 {SHA256_KEY};").sa
    assert sa.spi == 4096
    assert sa.enc is EncrId.ENCR_AES_CBC and sa.auth is IntegId.AUTH_HMAC_SHA2_256_128
    assert sa.auth_key == bytearray(b"\x22" * 32)
    assert sa.mode is Mode.ANY  # setkey's default


def test_add_ah_with_quoted_key() -> None:
    sa = add('add 192.0.2.1 192.0.2.2 ah 0x200 -A hmac-sha1 "20 bytes of key!....";').sa
    assert sa.protocol is IpProto.AH and sa.enc is None
    assert sa.auth_key == bytearray(b"20 bytes of key!....")


def test_add_ipcomp() -> None:
    sa = add("add 192.0.2.1 192.0.2.2 ipcomp 0x4002 -m tunnel -C deflate -R;").sa
    assert sa.protocol is IpProto.IPCOMP and sa.comp is IpcompId.IPCOMP_DEFLATE
    assert sa.extra == {"rawcpi": True}
    assert sa.replay_window == 0  # IPComp has no sequence numbers
    sa = add("add 192.0.2.1 192.0.2.2 ipcomp 7 -C deflate;").sa  # without -R: an index
    assert sa.spi == 7 and "rawcpi" not in sa.extra


def test_add_ipv6() -> None:
    sa = add(f"add -6n 2001:db8::1 2001:db8::2 esp 0x1000 {GCM};").sa
    assert sa.src == ip("2001:db8::1")


def test_esp_udp_ports_and_defaults() -> None:
    sa = add(f"add 192.0.2.1[4501] 192.0.2.2[4502] esp-udp 0x1000 {GCM};").sa
    assert sa.protocol is IpProto.ESP and sa.encap == UdpEncap(4501, 4502)
    sa = add(f"add 192.0.2.1 192.0.2.2[any] esp-udp 0x1000 {GCM};").sa
    assert sa.encap == UdpEncap(4500, 4500)  # RFC 3948 port when not given


def test_esp_udp_nat_original_address() -> None:
    sa = add(f"add 192.0.2.1 192.0.2.2 esp-udp 10.0.0.5 0x1000 {GCM};").sa
    assert sa.extra["nat_oa"] == ip("10.0.0.5")


def test_update() -> None:
    op = add(f"update 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};")
    assert op.update and op.command == "update"


def test_get_delete_deleteall() -> None:
    g = one("get 192.0.2.1 192.0.2.2 ah 0x200;")
    assert g == GetSA(g.loc, ip("192.0.2.1"), ip("192.0.2.2"), IpProto.AH, 0x200)
    d = one("delete 192.0.2.1 192.0.2.2 esp 4096;")
    assert d == DeleteSA(d.loc, ip("192.0.2.1"), ip("192.0.2.2"), IpProto.ESP, 4096)
    d = one("delete 192.0.2.1[4500] 192.0.2.2[4500] esp-udp 4096;")
    assert isinstance(d, DeleteSA) and d.protocol is IpProto.ESP
    da = one("deleteall 192.0.2.1 192.0.2.2 ipcomp;")
    assert da == DeleteAllSA(da.loc, ip("192.0.2.1"), ip("192.0.2.2"), IpProto.IPCOMP)


def test_get_and_delete_accept_and_ignore_a_mode() -> None:
    text = "delete 192.0.2.1 192.0.2.2 esp 4096 -m transport;"
    assert isinstance(one(text), DeleteSA)
    assert warnings(text) == ["1:37: -m is ignored by delete: an SA is found by SPI, protocol and addresses"]


def test_flush_and_dump() -> None:
    result = ops("flush; flush esp; flush ah; dump; dump ipcomp; dump esp-udp;")
    assert [(type(o), getattr(o, "protocol", None)) for o in result] == [
        (FlushSA, None), (FlushSA, IpProto.ESP), (FlushSA, IpProto.AH),
        (DumpSA, None), (DumpSA, IpProto.IPCOMP), (DumpSA, IpProto.ESP),
    ]


def test_exit_stops_the_script() -> None:
    for word in ("exit", "quit", "bye"):
        assert [type(o) for o in ops(f"flush; {word}; spdflush; not a statement;")] == [FlushSA]


def test_empty_statements_and_empty_script() -> None:
    assert ops(";;\n# only comments\n") == []
    assert [type(o) for o in ops("flush;;spdflush;")] == [FlushSA, SpdFlush]


def test_multi_line_statement_and_locations() -> None:
    result = ops(
        "# header\n"
        "flush;\n"
        "add 192.0.2.1 192.0.2.2 esp 0x1000\n"
        "\t-m transport\n"
        f"\t{GCM} ;\n"
        "   spdflush;\n"
    )
    assert [(o.loc.line, o.loc.col) for o in result] == [(2, 1), (3, 1), (6, 4)]


def test_script_object() -> None:
    script = parse(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM}; spdflush;", "x")
    assert isinstance(script, Script) and script.filename == "x"
    assert len(script) == 2 and list(script) == script.ops
    sa = script.ops[0]
    assert isinstance(sa, AddSA)
    script.wipe()
    assert not any(sa.sa.enc_key)


# -- SA options ------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "mode"), [("transport", Mode.TRANSPORT), ("tunnel", Mode.TUNNEL), ("any", Mode.ANY)])
def test_mode(flag: str, mode: Mode) -> None:
    assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m {flag} {GCM};").sa.mode is mode


def test_replay_window_is_setkey_bytes() -> None:
    assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r 4 {GCM};").sa.replay_window == 32
    assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r 8192 {GCM};").sa.replay_window == 65536
    text = f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r 0 {GCM};"
    assert add(text).sa.replay_window == 0
    assert warnings(text) == ["1:39: -r 0 disables anti-replay protection for this SA (RFC 4303 §3.4.3)"]


def test_reqid() -> None:
    assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -u 4294967295 {GCM};").sa.reqid == 0xFFFFFFFF


def test_f_flags() -> None:
    sa = add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -f random-pad -f nocyclic-seq -f esn {GCM};").sa
    assert sa.extra == {"pad": "random-pad", "nocyclic_seq": True}
    assert sa.esn
    for pad in ("zero-pad", "seq-pad"):
        assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -f {pad} -f {pad} {GCM};").sa.extra == {"pad": pad}


def test_lifetimes() -> None:
    sa = add(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -lh 3600 -ls 3000 -bh 1000000 -bs 900000 -ph 1000 -ps 900;"
    ).sa
    assert sa.hard == Lifetime(add_seconds=3600, bytes=1000000, packets=1000)
    assert sa.soft == Lifetime(add_seconds=3000, bytes=900000, packets=900)
    # a soft limit without a hard one is fine
    assert add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -ls 10;").sa.soft.add_seconds == 10


def test_options_in_any_order() -> None:
    sa = add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -m transport -u 3;").sa
    assert sa.mode is Mode.TRANSPORT and sa.reqid == 3


def test_null_encryption() -> None:
    sa = add(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E null -A hmac-sha256 {SHA256_KEY};").sa
    assert sa.enc is EncrId.ENCR_NULL and sa.enc_key == bytearray()
    sa = add(f'add 192.0.2.1 192.0.2.2 esp 0x1000 -E null "" -A hmac-sha256 {SHA256_KEY};').sa
    assert sa.enc is EncrId.ENCR_NULL


def test_aes_gmac_needs_no_a() -> None:
    sa = add("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gmac 0X" + "AB" * 20 + ";").sa
    assert sa.enc is EncrId.ENCR_NULL_AUTH_AES_GMAC and sa.enc_key == bytearray(b"\xab" * 20)


def test_cbc_without_integrity_warns() -> None:
    text = f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-cbc {AES_KEY};"
    assert add(text).sa.auth is IntegId.NONE
    (w,) = warnings(text)
    assert w.startswith("1:36: aes-cbc without -A: this ESP SA has no integrity protection")


def test_legacy_algorithms_with_the_switch() -> None:
    sa = add(
        'add 192.0.2.1 192.0.2.2 esp 0x10001 -m transport -E 3des-cbc "kamekame12341234kame1234" '
        '-A hmac-md5 "this is the test";',
        legacy=True,
    ).sa
    assert sa.legacy
    assert sa.enc is EncrId.ENCR_3DES and sa.auth is IntegId.AUTH_HMAC_MD5_96
    assert sa.enc_key == bytearray(b"kamekame12341234kame1234")


def test_ipcomp_replay_is_ignored_with_a_warning() -> None:
    assert warnings("add 192.0.2.1 192.0.2.2 ipcomp 300 -r 4 -C deflate;") == [
        "1:36: -r is ignored for ipcomp: it has no sequence numbers"
    ]


# -- SA errors -------------------------------------------------------------------

SA_ERRORS = [
    # protocols and SPIs
    ("add 192.0.2.1 192.0.2.2 esp-old 0x1000 -E des-cbc 0x0011223344556677;", "1:25: esp-old (RFC 1827 ESP) is not supported"),
    ("add 192.0.2.1 192.0.2.2 ah-old 0x1000;", "1:25: ah-old (RFC 1826 AH) is not supported"),
    ('add 192.0.2.1 192.0.2.2 tcp 0x1000 -A tcp-md5 "x";', "1:25: tcp (TCP-MD5 signatures, RFC 2385) is not supported"),
    ("add 192.0.2.1 192.0.2.2 gre 0x1000;", "1:25: unknown protocol 'gre': expected esp, esp-udp, ah or ipcomp"),
    ('add 192.0.2.1 192.0.2.2 "esp" 0x1000;', "1:25: expected a protocol (esp, esp-udp, ah or ipcomp), found a quoted string"),
    (f"add 192.0.2.1 192.0.2.2 esp 255 {GCM};", "1:29: SPI 255 is reserved"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x100000000 {GCM};", "1:29: SPI 0x100000000 is too large (at most 4294967295)"),
    (f"add 192.0.2.1 192.0.2.2 esp spi {GCM};", "1:29: SPI must be a decimal or 0x-hex number, not 'spi'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000000000000000000000 {GCM};", "1:29: SPI must be a decimal or 0x-hex number"),
    ("add 192.0.2.1 192.0.2.2 ipcomp 0x10000 -C deflate;", "1:32: CPI 0x10000 is too large (at most 65535)"),
    ("add 192.0.2.1 192.0.2.2 ipcomp 255 -C deflate -R;", "1:32: CPI 255 is reserved: a raw CPI (-R) must be 256 or more"),
    # addresses
    (f"add 192.0.2.256 192.0.2.2 esp 0x1000 {GCM};", "1:5: '192.0.2.256' is not a valid IPv4 or IPv6 address"),
    (f"add gw.example.net 192.0.2.2 esp 0x1000 {GCM};", "1:5: 'gw.example.net' is not a numeric address"),
    (f"add 192.0.2.1 2001:db8::2 esp 0x1000 {GCM};", "1:15: 2001:db8::2 is IPv6 but 192.0.2.1 is IPv4"),
    (f"add -6 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};", "1:8: 192.0.2.1 is not an IPv6 address (-6 was given)"),
    (f"add -4 2001:db8::1 2001:db8::2 esp 0x1000 {GCM};", "1:8: 2001:db8::1 is not an IPv4 address (-4 was given)"),
    (f"add 192.0.2.1[500] 192.0.2.2 esp 0x1000 {GCM};", "1:15: a port is only given for esp-udp"),
    (f"add 192.0.2.1 192.0.2.2[x] esp-udp 0x1000 {GCM};", "1:25: a port must be a number or 'any', not 'x'"),
    (f"add 192.0.2.1 192.0.2.2[65536] esp-udp 0x1000 {GCM};", "1:25: port 65536 is too large"),
    (f"add 192.0.2.1/32 192.0.2.2 esp 0x1000 {GCM};", "1:5: '192.0.2.1/32' is not an address or address[port]"),
    (f"add 192.0.2.1 192.0.2.2 esp-udp 300.1.1.1 0x1000 {GCM};", "1:33: '300.1.1.1' is not a valid IPv4 or IPv6 address"),
    ("add 192.0.2.1;", "1:14: expected a destination address, found ';'"),
    ("add", "1:4: expected a source address, found end of input (missing ';'?)"),
    # options
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -x {GCM};", "1:36: unknown option '-x' for add"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -lhh 5 {GCM};", "1:36: unknown option '-lhh' for add (did you mean '-lh'?)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} tunnel;", "1:93: expected an option or ';' to end the add statement, found 'tunnel'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM}\nspdflush;", "2:1: expected an option or ';' to end the add statement, found the command 'spdflush' (missing ';' before it?)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m tunnel -m tunnel {GCM};", "1:46: -m is given twice (first at line 1:36)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m both {GCM};", "1:39: unknown mode 'both': expected transport, tunnel or any"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -m ;", "1:39: expected a mode (transport, tunnel or any), found ';'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r 8193 {GCM};", "1:39: -r 8193 asks for a window of 65544 packets"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r -1 {GCM};", "1:39: replay window size must be a decimal number, not '-1'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -r 0x10 {GCM};", "1:39: replay window size must be a decimal number, not '0x10'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -u 4294967296 {GCM};", "1:39: reqid 4294967296 is too large"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -f fast {GCM};", "1:39: unknown -f flag 'fast'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -f zero-pad -f random-pad {GCM};", "1:51: -f random-pad conflicts with -f zero-pad"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -lh 60 -ls 61 {GCM};", "1:43: the soft lifetime (61 s) exceeds the hard one (60 s)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -bh 60 -bs 61 {GCM};", "1:43: the soft lifetime (61 bytes) exceeds the hard one (60 bytes)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -ph 60 -ps 61 {GCM};", "1:43: the soft lifetime (61 packets) exceeds the hard one (60 packets)"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -lh 18446744073709551616 {GCM};", "1:40: -lh lifetime 18446744073709551616 is too large"),
    (f'add 192.0.2.1 192.0.2.2 esp 0x1000 -ctx 1 1 "label" {GCM};', "1:36: security contexts (-ctx) are not supported"),
    # algorithms and keys
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-ctr 0x00;", "1:39: unknown encryption algorithm 'aes-ctr'; ipsecd knows aes-gcm-16"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-cbc {AES_KEY} -A hmac-ripemd160 0x00;", "1:85: unknown authentication algorithm 'hmac-ripemd160'"),
    ("add 192.0.2.1 192.0.2.2 ipcomp 0x1000 -C lzs;", "1:42: unknown compression algorithm 'lzs'; ipsecd knows deflate"),
    ('add 192.0.2.1 192.0.2.2 esp 0x1000 -E 3des-cbc "kamekame12341234kame1234";', "1:39: 3des-cbc is a legacy algorithm; enable the legacy switch (--allow-legacy"),
    ('add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-md5 "this is the test";', "1:38: hmac-md5 is a legacy algorithm"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E des-cbc 0x0011223344556677;", "1:39: des-cbc is a legacy algorithm"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x00112233;", "1:50: aes-gcm-16 takes a key of 160, 224, 288 bits, got 32"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-cbc 0x0011;", "1:47: aes-cbc takes a key of 128, 192, 256 bits, got 16"),
    ('add 192.0.2.1 192.0.2.2 esp 0x1000 -E null "x" -A hmac-sha1 0x00;', "1:44: null takes a key of 0 bits, got 8"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-cbc {AES_KEY} -A hmac-sha256 0x0011;", "1:97: hmac-sha256 needs a 256-bit key, got 16 bits"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x001;", "1:50: the hex key has an odd number of digits (3)"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x;", "1:50: the hex key has no digits after 0x"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x00g1;", "1:54: 'g' is not a hex digit in the key"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 key;", "1:50: expected a key for aes-gcm-16 (0x followed by hex digits, or a \"quoted string\"), found 'key'"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E;", "1:38: expected an encryption algorithm, found ';'"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -A hmac-sha256 {SHA256_KEY};", "1:93: aes-gcm-16 is a combined-mode (AEAD) algorithm"),
    ("add 192.0.2.1 192.0.2.2 esp 0x1000 -E null;", "1:36: null encryption needs -A: ESP would protect nothing"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 -A hmac-sha256 {SHA256_KEY};", "1:25: esp needs an encryption algorithm: -E ealgo key"),
    (f"add 192.0.2.1 192.0.2.2 esp-udp 0x1000 -A hmac-sha256 {SHA256_KEY};", "1:25: esp-udp needs an encryption algorithm"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -C deflate;", "1:93: esp takes -E (and -A), not -C"),
    (f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM} -R;", "1:93: -R (raw CPI) is for ipcomp"),
    ("add 192.0.2.1 192.0.2.2 ah 0x1000;", "1:25: ah needs an authentication algorithm: -A aalgo key"),
    (f"add 192.0.2.1 192.0.2.2 ah 0x1000 {GCM};", "1:35: ah takes -A only: -E is for esp"),
    (f"add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha256 {SHA256_KEY} -C deflate;", "1:117: ah takes -A only: -C is for ipcomp"),
    (f"add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha256 {SHA256_KEY} -R;", "1:117: -R (raw CPI) is for ipcomp"),
    ("add 192.0.2.1 192.0.2.2 ipcomp 300;", "1:25: ipcomp needs a compression algorithm: -C calgo"),
    (f"add 192.0.2.1 192.0.2.2 ipcomp 300 -C deflate {GCM};", "1:47: ipcomp takes -C only: -E is for esp"),
    (f"add 192.0.2.1 192.0.2.2 ipcomp 300 -C deflate -A hmac-sha256 {SHA256_KEY};", "1:47: ipcomp takes -C only: -A is for esp and ah"),
    ("add 192.0.2.1 192.0.2.2 ipcomp 300 -C deflate -f esn;", "1:47: -f esn: ipcomp has no sequence numbers"),
    # get / delete / deleteall / flush / dump
    ("get 192.0.2.1 192.0.2.2 esp 0x1000 -m x;", "1:39: unknown mode 'x'"),
    ("get 192.0.2.1 192.0.2.2 esp 0x1000 -u 5;", "1:36: expected ';' to end the get statement, found '-u'"),
    ("delete 192.0.2.1 192.0.2.2 esp;", "1:31: expected an SPI, found ';'"),
    ("deleteall 192.0.2.1[500] 192.0.2.2 esp;", "1:21: deleteall takes addresses without ports"),
    ("deleteall 192.0.2.1 192.0.2.2 esp 0x1000;", "1:35: expected ';' to end the deleteall statement, found '0x1000'"),
    ("flush tcp;", "1:7: tcp (TCP-MD5 signatures, RFC 2385) is not supported"),
    ("dump esp ah;", "1:10: expected ';' to end the dump statement, found 'ah'"),
]


@pytest.mark.parametrize(("text", "expected"), SA_ERRORS)
def test_sa_errors(text: str, expected: str) -> None:
    got = error(text)
    assert got.startswith(expected), got


# -- SPD commands --------------------------------------------------------------


def test_spdadd_host_to_host() -> None:
    op = spd("spdadd 192.0.2.1/32 192.0.2.2/32 any -P out ipsec esp/transport//require;")
    p = op.policy
    assert p.selector == Selector.make("192.0.2.1/32", "192.0.2.2/32")
    assert (p.direction, p.action, p.priority) == (Direction.OUT, Action.IPSEC, 0)
    assert p.requests == (IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.REQUIRE),)
    assert not op.update and op.command == "spdadd"


def test_spdadd_tunnel_and_address_without_prefix() -> None:
    p = spd("spdadd 10.10.10.0/24 10.20.20.0/24 any -P in ipsec esp/tunnel/203.0.113.1-198.51.100.1/require;").policy
    assert p.requests == (IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip("203.0.113.1"), ip("198.51.100.1"), Level.REQUIRE),)
    p = spd("spdadd 192.0.2.1 2001:db8::/32 any -P out none;" .replace("2001:db8::/32", "192.0.2.7")).policy
    assert str(p.selector.src) == "192.0.2.1/32" and str(p.selector.dst) == "192.0.2.7/32"


def test_spdupdate() -> None:
    op = spd("spdupdate 192.0.2.1 192.0.2.2 any -P out discard;")
    assert op.update and op.command == "spdupdate" and op.policy.action is Action.DISCARD


def test_spddelete_spdflush_spddump() -> None:
    d = one("spddelete 192.0.2.1/32 192.0.2.2/32 any -P out;")
    assert d == SpdDelete(d.loc, Selector.make("192.0.2.1/32", "192.0.2.2/32"), Direction.OUT)
    d2 = one("spddelete 192.0.2.1/32 192.0.2.2/32 any -P out ipsec esp/transport//require;")
    assert isinstance(d2, SpdDelete) and d2.selector == d.selector
    d3 = one("spddelete 192.0.2.1/32 192.0.2.2/32 any -P in prio 5 none;")
    assert isinstance(d3, SpdDelete) and d3.direction is Direction.IN
    assert [type(o) for o in ops("spdflush; spddump;")] == [SpdFlush, SpdDump]


def test_short_ipv4_prefixes_read_as_cidr_with_a_warning() -> None:
    text = "spdadd 10.10.10/24 10/8 any -P out none;"
    p = spd(text).policy
    assert str(p.selector.src) == "10.10.10.0/24" and str(p.selector.dst) == "10.0.0.0/8"
    assert warnings(text) == [
        "1:8: '10.10.10/24' is read as 10.10.10.0/24, but setkey's inet_aton() reads 10.10.10 as 10.10.0.10: write all four octets",
        "1:20: '10/8' is read as 10.0.0.0/8, but setkey's inet_aton() reads 10 as 0.0.0.10: write all four octets",
    ]


def test_host_bits_are_cleared() -> None:
    p = spd("spdadd 192.0.2.77/24 0.0.0.0/0 any -P out none;").policy
    assert str(p.selector.src) == "192.0.2.0/24"


def test_any_as_a_range() -> None:
    p = spd("spdadd any 192.0.2.0/24 any -P in discard;").policy
    assert str(p.selector.src) == "0.0.0.0/0"
    p = spd("spdadd 2001:db8::/32 any any -P in discard;").policy
    assert str(p.selector.dst) == "::/0"
    p = spd("spdadd -6 any any any -P in discard;").policy
    assert str(p.selector.src) == "::/0"


def test_ports() -> None:
    p = spd("spdadd 10.0.11.41/32[21] 10.0.11.33/32[any] tcp -P out none;").policy
    assert (p.selector.proto, p.selector.sport, p.selector.dport) == (6, 21, 0)


@pytest.mark.parametrize(
    ("word", "proto"),
    [("any", None), ("tcp", 6), ("udp", 17), ("icmp", 1), ("gre", 47), ("ipencap", 4), ("ip4", 4),
     ("50", 50), ("0", 0), ("255", None), ("sctp", 132)],
)
def test_upperspec(word: str, proto: int | None) -> None:
    assert spd(f"spdadd 192.0.2.1 192.0.2.2 {word} -P out none;").policy.selector.proto == proto


@pytest.mark.parametrize("word", ["icmp6", "ipv6-icmp", "58"])
def test_upperspec_icmp6(word: str) -> None:
    assert spd(f"spdadd ::/0 ::/0 {word} -P out none;").policy.selector.proto == 58


def test_icmp_type_and_code() -> None:
    sel = spd("spdadd ::/0 ::/0 icmp6 135,0 -P in none;").policy.selector
    assert (sel.proto, sel.sport, sel.dport) == (58, 135, 0)
    sel = spd("spdadd 0.0.0.0/0 0.0.0.0/0 icmp 8,0 -P out none;").policy.selector
    assert (sel.proto, sel.sport, sel.dport) == (1, 8, 0)


@pytest.mark.parametrize("direction", ["in", "out", "fwd"])
def test_directions(direction: str) -> None:
    assert spd(f"spdadd 192.0.2.1 192.0.2.2 any -P {direction} none;").policy.direction is Direction(direction)


@pytest.mark.parametrize(
    ("prio", "value"),
    [
        ("prio 10", 10),
        ("priority 10", 10),
        ("prio -10", -10),
        ("prio - 10", -10),
        ("prio +3", 3),
        ("prio def", 0),
        ("prio def + 7", 7),
        ("prio high", PRIORITY_HIGH),
        ("prio high + 5", PRIORITY_HIGH + 5),
        ("prio high +5", PRIORITY_HIGH + 5),
        ("prio high - 5", PRIORITY_HIGH - 5),
        ("prio low", PRIORITY_LOW),
        ("prio low -3", PRIORITY_LOW - 3),
        ("prio high + 1073741824", 2**31),
        ("prio low - 1073741823", -(2**31) + 1),
        ("prio 2147483648", 2**31),
        ("prio -2147483647", -(2**31) + 1),
    ],
)
def test_priority(prio: str, value: int) -> None:
    assert spd(f"spdadd 192.0.2.1 192.0.2.2 any -P out {prio} none;").policy.priority == value


@pytest.mark.parametrize(("word", "action"), [("discard", Action.DISCARD), ("none", Action.NONE)])
def test_actions(word: str, action: Action) -> None:
    assert spd(f"spdadd 192.0.2.1 192.0.2.2 any -P out {word};").policy.action is action


def test_bypass_is_none_with_a_warning() -> None:
    text = "spdadd 192.0.2.1 192.0.2.2 any -P out bypass;"
    assert spd(text).policy.action is Action.NONE
    assert warnings(text) == ["1:39: bypass is taken as none: the traffic passes without IPsec"]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("esp/transport", IpsecRequest(IpProto.ESP, Mode.TRANSPORT)),
        ("esp/transport/", IpsecRequest(IpProto.ESP, Mode.TRANSPORT)),
        ("ah/transport//", IpsecRequest(IpProto.AH, Mode.TRANSPORT)),
        ("esp/transport//use", IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.USE)),
        ("esp/transport//default", IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.DEFAULT)),
        ("esp/transport//unique", IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.UNIQUE)),
        ("esp/transport//unique:32767", IpsecRequest(IpProto.ESP, Mode.TRANSPORT, level=Level.UNIQUE, reqid=32767)),
        ("ipcomp/tunnel/192.0.2.1-192.0.2.2", IpsecRequest(IpProto.IPCOMP, Mode.TUNNEL, ip("192.0.2.1"), ip("192.0.2.2"))),
        ("esp/tunnel/192.0.2.1-192.0.2.2/", IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip("192.0.2.1"), ip("192.0.2.2"))),
        ("esp/transport/192.0.2.1-192.0.2.2/require",
         IpsecRequest(IpProto.ESP, Mode.TRANSPORT, ip("192.0.2.1"), ip("192.0.2.2"), Level.REQUIRE)),
        ("esp/tunnel/192.0.2.1[4500]-192.0.2.2[30000]/require",
         IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip("192.0.2.1"), ip("192.0.2.2"), Level.REQUIRE, 0, 4500, 30000)),
        ("esp/tunnel/2001:db8::1-2001:db8::2/unique:3",
         IpsecRequest(IpProto.ESP, Mode.TUNNEL, ip("2001:db8::1"), ip("2001:db8::2"), Level.UNIQUE, 3)),
    ],
)
def test_request_forms(request_: str, expected: IpsecRequest) -> None:
    assert spd(f"spdadd 192.0.2.1 192.0.2.2 any -P out ipsec {request_};").policy.requests == (expected,)


def test_request_bundle_keeps_order() -> None:
    p = spd("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec\n  esp/transport//require\n  ah/transport//require;").policy
    assert [r.protocol for r in p.requests] == [IpProto.ESP, IpProto.AH]


SPD_ERRORS = [
    ("spdadd tagged \"x\" -P out none;", "1:8: spdadd tagged (PF tags) is not supported"),
    ("spdadd 192.0.2.300/32 192.0.2.2 any -P out none;", "1:8: '192.0.2.300' is not a valid IPv4 or IPv6 address"),
    ("spdadd 192.0.2.0/33 192.0.2.2 any -P out none;", "1:18: prefix length /33 is longer than 32 bits"),
    ("spdadd 2001:db8::/129 ::/0 any -P out none;", "1:19: prefix length 129 is too large (at most 128)"),
    ("spdadd 192.0.2.0/ 192.0.2.2 any -P out none;", "1:18: prefix length must be a decimal number, not ''"),
    ("spdadd 192.0.2.0/x24 192.0.2.2 any -P out none;", "1:18: prefix length must be a decimal number, not 'x24'"),
    ("spdadd 192.0.2.0/24[http] 192.0.2.2 tcp -P out none;", "1:21: a port must be a number or 'any', not 'http'"),
    ("spdadd 192.0.2.0/24[1]x 192.0.2.2 tcp -P out none;", "1:8: '192.0.2.0/24[1]x' is not an address range"),
    ("spdadd 10.10.10 192.0.2.2 any -P out none;", "1:8: '10.10.10' is not a valid IPv4 or IPv6 address"),
    ("spdadd 10.10/24 192.0.2.2 any -P out none;", "1:8: the short address 10.10 does not cover /24"),
    ("spdadd 10.300/16 192.0.2.2 any -P out none;", "1:8: '10.300' is not a valid IPv4 address"),
    ("spdadd any/8 192.0.2.2 any -P out none;", "1:8: 'any' takes no prefix length"),
    ("spdadd any any any -P out none;", "1:8: 'any' on both sides: write 0.0.0.0/0 or ::/0"),
    ("spdadd 192.0.2.0/24 2001:db8::/32 any -P out none;", "1:21: 2001:db8:: is IPv6 but 192.0.2.0 is IPv4"),
    ("spdadd -6 192.0.2.0/24 192.0.2.0/24 any -P out none;", "1:11: 192.0.2.0 is not an IPv6 address (-6 was given)"),
    ("spdadd host.example 192.0.2.2 any -P out none;", "1:8: 'host.example' is not a numeric address"),
    ("spdadd 192.0.2.1 192.0.2.2 bogus -P out none;", "1:28: unknown upper-layer protocol 'bogus'"),
    ("spdadd 192.0.2.1 192.0.2.2 icmp7 -P out none;", "1:28: unknown upper-layer protocol 'icmp7' (did you mean 'icmp'?)"),
    ("spdadd 192.0.2.1 192.0.2.2 256 -P out none;", "1:28: upper-layer protocol 256 is too large (at most 255)"),
    ("spdadd 192.0.2.1 192.0.2.2 -P out none;", "1:28: expected an upper-layer protocol (any, tcp, udp, icmp, icmp6 or a number), found '-P'"),
    ("spdadd 192.0.2.1 192.0.2.2 tcp 80 -P out none;", "1:32: expected -P, found '80' (a type,code is only given for icmp and icmp6)"),
    ("spdadd ::/0 ::/0 icmp6 135 -P in none;", "1:24: expected 'type,code' for ICMP, found '135' (the code must be given)"),
    ("spdadd ::/0 ::/0 icmp6 135,x -P in none;", "1:28: ICMP code must be a decimal number, not 'x'"),
    ("spdadd ::/0 ::/0 icmp6 256,0 -P in none;", "1:24: ICMP type 256 is too large (at most 255)"),
    ("spdadd ::/0 ::/0 icmp -P in none;", "1:18: icmp with IPv6 addresses: use icmp6"),
    ("spdadd 0.0.0.0/0 0.0.0.0/0 icmp6 -P in none;", "1:28: icmp6 with IPv4 addresses: use icmp"),
    ("spdadd 0.0.0.0/0[7] 0.0.0.0/0 icmp -P in none;", "1:18: icmp has no ports: give 'type,code' after icmp"),
    ('spdadd 192.0.2.1 192.0.2.2 any -ctx 1 1 "x" -P out none;', "1:32: security contexts (-ctx) are not supported"),
    ("spdadd 192.0.2.1 192.0.2.2 any out none;", "1:32: expected -P, found 'out' (a type,code is only given for icmp and icmp6)"),
    ("spdadd 192.0.2.1 192.0.2.2 any;", "1:31: expected -P and a policy, found ';'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P;", "1:34: expected a direction (in, out or fwd), found ';'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P inbound none;", "1:35: unknown direction 'inbound': expected in, out or fwd"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out;", "1:38: expected an action (ipsec, none or discard), found ';'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out allow;", "1:39: unknown action 'allow': expected ipsec, none or discard"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out entrust;", "1:39: entrust is only meaningful for per-socket policies"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio;", "1:43: expected a priority (a number, or low, def or high), found ';'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio middle none;", "1:44: priority must be a decimal number, not 'middle'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio 2147483649 none;", "1:44: priority 2147483649 is too large (at most 2147483648)"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio -2147483648 none;", "1:45: priority 2147483648 is too large (at most 2147483647)"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio high + 1073741825 none;", "1:51: prio high offset 1073741825 is too large (at most 1073741824)"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio low - 1073741824 none;", "1:50: prio low offset 1073741824 is too large (at most 1073741823)"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out prio def + x none;", "1:50: prio def offset must be a decimal number, not 'x'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec;", "1:44: an ipsec policy needs at least one request"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out discard esp/transport//require;", "1:47: a discard policy takes no requests"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp;", "1:45: 'esp' is too short: write protocol/mode/src-dst/level"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/;", "1:45: 'esp/' is too short"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec tcp/transport//require;", "1:45: unknown protocol 'tcp' in the request: expected esp, ah or ipcomp"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/any//require;", "1:49: unknown mode 'any': expected transport or tunnel"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel//require;", "1:49: tunnel mode needs the SA end points"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel;", "1:49: tunnel mode needs the SA end points"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require/x;", "1:67: too many '/' in the request"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//must;", "1:60: unknown level 'must'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//unique:0;", "1:67: the reqid of unique:0 must be 1..32767"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//unique:x;", "1:67: reqid must be a decimal number, not 'x'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/me-any/require;", "1:56: 'me-any' end points are not supported"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1/require;", "1:56: '192.0.2.1' is not src-dst"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2-192.0.2.3/require;", "1:56: '192.0.2.1-192.0.2.2-192.0.2.3' is not src-dst"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.x/require;", "1:66: '192.0.2.x' is not a valid IPv4 or IPv6 address"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1-2001:db8::1/require;", "1:66: 2001:db8::1 and 192.0.2.1 are of different address families"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1[any]-192.0.2.2/require;", "1:66: a port of an SA end point must be a number, not 'any'"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/tunnel/192.0.2.1[4500-192.0.2.2/require;", "1:56: '192.0.2.1[4500' is not an address or address[port]"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require \"x\";", "1:68: expected a request or ';' to end spdadd, found a quoted string"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require\nflush;", "2:1: expected a request or ';' to end spdadd, found the command 'flush' (missing ';' before it?)"),
    ("spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require", "1:67: expected a request or ';' to end spdadd, found end of input (missing ';'?)"),
    ("spddelete 192.0.2.1 192.0.2.2 any -P out none esp/transport//require;", "1:47: expected ';' to end spddelete, found 'esp/transport//require'"),
    ("spddelete 192.0.2.1 192.0.2.2 any -P out ipsec esp/bogus//require;", "1:52: unknown mode 'bogus'"),
    ("spddelete 192.0.2.1 192.0.2.2 any;", "1:34: expected -P and a policy, found ';'"),
    ("spdflush all;", "1:10: expected ';' to end the spdflush statement, found 'all'"),
    ("spddump", "1:8: expected ';' to end the spddump statement, found end of input (missing ';'?)"),
]


@pytest.mark.parametrize(("text", "expected"), SPD_ERRORS)
def test_spd_errors(text: str, expected: str) -> None:
    got = error(text)
    assert got.startswith(expected), got


# -- script level ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spdad 1 2 any -P out none;", "1:1: unknown command 'spdad' (did you mean 'spdadd'?)"),
        ("frobnicate;", "1:1: unknown command 'frobnicate'"),
        ("ADD 192.0.2.1 192.0.2.2 esp 0x1000;", "1:1: unknown command 'ADD' (did you mean 'add'?)"),
        ('"add";', "1:1: expected a command, found a quoted string"),
        ("getspi 192.0.2.1 192.0.2.2 esp 0x1000;", "1:1: getspi is not supported"),
        ("flush;\n\nexit", "3:5: expected ';' to end the exit statement, found end of input"),
        ("flush;\nspdflush\nflush;", "3:1: expected ';' to end the spdflush statement, found the command 'flush' (missing ';' before it?)"),
    ],
)
def test_script_errors(text: str, expected: str) -> None:
    got = error(text)
    assert got.startswith(expected), got


def test_first_error_wins_and_nothing_is_returned() -> None:
    text = "flush;\nspdflush;\nadd 192.0.2.1 192.0.2.2 esp 1 -E null;\nbogus;\n"
    assert error(text).startswith("3:29: SPI 1 is reserved")


def test_error_locations_count_tabs_as_one_column() -> None:
    assert error("\t\tadd\t192.0.2.1\t192.0.2.x esp 0x1000;").startswith("1:17: '192.0.2.x'")


def test_quoted_keys_keep_bytes_that_are_not_utf8() -> None:
    # The CLI decodes files with surrogateescape; raw bytes in a key survive.
    text = b'add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha1 "\xff\xfe345678901234567890";'.decode("utf-8", "surrogateescape")
    sa = add(text).sa
    assert sa.auth_key[:2] == bytearray(b"\xff\xfe") and len(sa.auth_key) == 20


def test_quoted_key_with_characters_that_are_not_bytes() -> None:
    assert error('add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha1 "\ud800";').startswith(
        "1:48: the quoted key holds characters that are not bytes"
    )
