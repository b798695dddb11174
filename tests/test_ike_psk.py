"""racoon's psk.txt: the HOWTO's lines, hex keys, comments, IPv6, and the mode/owner refusal."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from ipsecd.ike.messages import Identification
from ipsecd.ike.psk import PskFileError, PskTable, load_psk_file, parse_psk_text

# The FreeBSD IPsec mini-HOWTO: "peer_ip_address sharedkey", its example key
# 'thisisatest'; racoon.conf(5): blanks and/or tabs between the two, 0x for hex.
HOWTO = """\
# psk.txt as the HOWTO has it
192.0.2.2\tthisisatest

   # an indented comment
192.0.2.3        0x00112233445566778899aabbccddeeff
2001:DB8:0:0::2  v6 key with   spaces  inside
gw-b.example.net hoge
admin@example.net  a#b  # not a comment: part of the key, as in racoon
"""

SECRET = "s3cr3t-do-not-print"


def _key(table: PskTable, identity: str | ipaddress.IPv4Address | ipaddress.IPv6Address
         | Identification) -> bytes | None:
    key = table.lookup(identity)
    return None if key is None else bytes(key)


def test_howto_lines() -> None:
    table = parse_psk_text(HOWTO, "psk.txt")
    assert isinstance(table, PskTable) and len(table) == 5
    assert _key(table, "192.0.2.2") == b"thisisatest"
    assert _key(table, ipaddress.ip_address("192.0.2.2")) == b"thisisatest"
    assert isinstance(table.lookup("192.0.2.2"), bytearray)
    assert _key(table, "192.0.2.3") == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert _key(table, "gw-b.example.net") == b"hoge"
    assert _key(table, "admin@example.net") == b"a#b  # not a comment: part of the key, as in racoon"
    assert table.lookup("192.0.2.9") is None
    assert table.lookup("GW-B.example.net") is None  # exact match, as racoon's strcmp
    assert "192.0.2.2" in table and "192.0.2.9" not in table and 5 not in table


def test_ipv6_identifiers_compare_as_addresses() -> None:
    table = parse_psk_text(HOWTO)
    key = b"v6 key with   spaces  inside"
    assert _key(table, "2001:db8::2") == key
    assert _key(table, "2001:0db8:0000::0002") == key
    assert _key(table, ipaddress.IPv6Address("2001:db8::2")) == key
    assert "2001:db8::2" in table.identifiers()


def test_lookup_by_identification_payload() -> None:
    table = parse_psk_text(HOWTO)
    assert _key(table, Identification.from_address(ipaddress.ip_address("192.0.2.2"))) == b"thisisatest"
    assert table.lookup(Identification.from_address(ipaddress.ip_address("2001:db8::2"))) is not None
    assert _key(table, Identification.fqdn("gw-b.example.net")) == b"hoge"
    assert table.lookup(Identification.rfc822("admin@example.net")) is not None
    assert table.lookup(Identification.key_id(b"\xff\xfe")) is None


def test_key_edges() -> None:
    # Trailing blanks belong to a text key (racoon reads to the newline); CR of CRLF does not.
    table = parse_psk_text("a.example key  \r\nb.example\t \t0xABcd  \n")
    assert _key(table, "a.example") == b"key  "
    assert _key(table, "b.example") == b"\xab\xcd"
    # "0X" is not racoon's hex prefix: a text key.
    assert _key(parse_psk_text("d.example 0Xff\n"), "d.example") == b"0Xff"
    # UTF-8 keys are their UTF-8 bytes; a file without a final newline is fine.
    assert _key(parse_psk_text("e.example clé"), "e.example") == "clé".encode()
    assert len(parse_psk_text("")) == 0
    assert len(parse_psk_text("# nothing\n\n   \n")) == 0


BAD = [
    # (text, line, message)
    (f"192.0.2.2 key\n{SECRET}\n", 2, "an identifier without a key"),
    (f"192.0.2.2 {SECRET}\n192.0.2.2 other\n", 2, "192.0.2.2: listed twice (first on line 1)"),
    (f"2001:db8::2 {SECRET}\n2001:db8:0::2 other\n", 2, "2001:db8:0::2: listed twice (first on line 1)"),
    ("\n192.0.2.2 0x0011zz\n", 2, "192.0.2.2: the key after 0x must be an even number of hex digits"),
    ("192.0.2.2 0x001\n", 1, "even number of hex digits"),
    ("192.0.2.2 0x\n", 1, "even number of hex digits"),
    (f"192.0.2.2 {SECRET}\0x\n", 1, "contains a NUL byte"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_mistakes_name_the_line_and_never_the_key(text: str, line: int, message: str) -> None:
    with pytest.raises(PskFileError) as info:
        parse_psk_text(text, "psk.txt")
    assert str(info.value).startswith(f"psk.txt:{line}: ")
    assert message in str(info.value)
    assert info.value.line == line
    assert SECRET not in str(info.value) and "0011zz" not in str(info.value)


def test_wipe_and_repr() -> None:
    table = parse_psk_text(f"192.0.2.2 {SECRET}\nx.example 0xdeadbeef\n")
    key = table.lookup("192.0.2.2")
    hexkey = table.lookup("x.example")
    assert key is not None and hexkey is not None
    assert SECRET not in repr(table) and "deadbeef" not in repr(table).lower()
    assert repr(table) == "<PskTable: 2 keys>"
    table.wipe()
    assert key == bytes(len(SECRET)) and hexkey == bytes(4)  # zeroed in place
    assert len(table) == 0 and table.lookup("192.0.2.2") is None


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_a_root_owned_0600_file(tmp_path: Path) -> None:
    uid = os.getuid()
    path = _write(tmp_path / "psk.txt", HOWTO, 0o600)
    table = load_psk_file(path, owner_uid=uid)
    assert _key(table, "192.0.2.2") == b"thisisatest" and len(table) == 5
    _write(path, HOWTO, 0o400)  # read-only for the owner is fine too
    assert len(load_psk_file(str(path), owner_uid=uid)) == 5
    if uid == 0:
        assert len(load_psk_file(path)) == 5  # the default owner is root


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601, 0o610])
def test_group_or_other_permission_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "psk.txt", f"192.0.2.2 {SECRET}\n", mode)
    with pytest.raises(PskFileError) as info:
        load_psk_file(path, owner_uid=os.getuid())
    assert str(info.value) == (f"{path}: mode {mode:04o} lets group or others access the keys: "
                               "chmod 600 it (racoon refuses it too)")
    assert info.value.line is None


def test_wrong_owner_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "psk.txt", f"192.0.2.2 {SECRET}\n", 0o600)
    uid = os.getuid()
    with pytest.raises(PskFileError, match=f"owned by uid {uid}, must be owned by uid {uid + 1}"):
        load_psk_file(path, owner_uid=uid + 1)
    if uid == 0:
        os.chown(path, 1234, -1)
        with pytest.raises(PskFileError, match="owned by uid 1234, must be owned by uid 0"):
            load_psk_file(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PskFileError, match="cannot read: No such file or directory"):
        load_psk_file(tmp_path / "missing.txt")
    with pytest.raises(PskFileError, match="not a regular file"):
        load_psk_file(tmp_path, owner_uid=os.getuid())


def test_file_errors_carry_the_path_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "psk.txt", f"# keys\n192.0.2.2 {SECRET}\n192.0.2.2 again\n", 0o600)
    with pytest.raises(PskFileError) as info:
        load_psk_file(path, owner_uid=os.getuid())
    assert str(info.value) == f"{path}:3: 192.0.2.2: listed twice (first on line 2)"


def test_a_large_file_is_read_whole(tmp_path: Path) -> None:
    lines = "".join(f"h{i}.example key-{i}\n" for i in range(5000))
    path = _write(tmp_path / "psk.txt", lines, 0o600)
    table = load_psk_file(path, owner_uid=os.getuid())
    assert len(table) == 5000 and _key(table, "h4999.example") == b"key-4999"
