"""racoon's pre-shared key file (``psk.txt``), for IKE authentication with a shared secret.

The format (racoon.conf(5), "Pre-shared key File"; the FreeBSD IPsec
mini-HOWTO's ``peer_ip_address sharedkey``)::

    # comment
    192.0.2.2                   thisisatest
    2001:db8::2                 0x8c3a5e01f7d4c2b9
    gw-b.example.net            a key with spaces in it
    admin@example.net           another key

One entry a line: the identifier is the first field (an IPv4 or IPv6
address, an FQDN, a user@FQDN - any run of non-blank characters), the key
is everything after the blanks and tabs that follow it, to the end of the
line, spaces included - as racoon reads it.  A key that starts with ``0x``
is hexadecimal.  Blank lines and lines whose first non-blank character is
``#`` are ignored; ``#`` later on a line is part of the key, again as in
racoon.

Identifiers match exactly; addresses are compared as addresses, so
``2001:db8:0::2`` in the file serves a peer at ``2001:db8::2``.

Where we are stricter than racoon, so that a mistake is reported instead of
silently ignored: an identifier without a key, an identifier listed twice,
bad hex after ``0x`` and NUL bytes are errors (``FILE:LINE: message``);
leading blanks are skipped (racoon reads such a line as an empty
identifier that never matches); one ``\\r`` before the newline is dropped
(files edited on Windows).

The file is refused unless it is owned by the user the daemon runs as
(root) and gives no permission to group or others - racoon refuses to read
it otherwise, and so do we (:func:`load_psk_file`).

Keys are ``bytearray``s: :meth:`PskTable.wipe` zeroes them in place.  No
error message and no ``repr`` contains key bytes.
"""

from __future__ import annotations

import ipaddress
import os
import stat

from ipsecd.ike.constants import IdType
from ipsecd.ike.messages import Identification

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLANKS = b" \t\v\f"
_HEX_VALUE = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


class PskFileError(Exception):
    """A pre-shared key file that cannot be used; ``str()`` is ``FILE:LINE: message``
    (or ``FILE: message`` for the file as a whole).  Never contains key bytes."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line
        self.message = message


class PskTable:
    """Identifier -> pre-shared key, as read from a psk.txt."""

    __slots__ = ("_by_address", "_by_name")

    def __init__(self) -> None:
        self._by_address: dict[IPAddress, bytearray] = {}
        self._by_name: dict[str, bytearray] = {}

    def _add(self, name: IPAddress | str, key: bytearray) -> None:
        if isinstance(name, str):
            self._by_name[name] = key
        else:
            self._by_address[name] = key

    def lookup(self, identity: str | IPAddress | Identification) -> bytearray | None:
        """The key for ``identity``, or None.

        ``identity`` is an identifier as written in the file, an address, or
        an Identification payload (ID_IPV4_ADDR, ID_IPV6_ADDR, ID_FQDN,
        ID_RFC822_ADDR; ID_KEY_ID as its octets decoded as UTF-8).  The
        returned buffer is the table's own: :meth:`wipe` zeroes it.
        """
        name: IPAddress | str | None
        if isinstance(identity, Identification):
            name = _identification_name(identity)
        elif isinstance(identity, str):
            name = _normalise(identity)
        else:
            name = identity
        if name is None:
            return None
        if isinstance(name, str):
            return self._by_name.get(name)
        return self._by_address.get(name)

    def identifiers(self) -> list[str]:
        """The identifiers that have a key (addresses in their compressed form)."""
        return [str(a) for a in self._by_address] + list(self._by_name)

    def __contains__(self, identity: object) -> bool:
        if not isinstance(identity, str | ipaddress.IPv4Address | ipaddress.IPv6Address
                          | Identification):
            return False
        return self.lookup(identity) is not None

    def __len__(self) -> int:
        return len(self._by_address) + len(self._by_name)

    def wipe(self) -> None:
        """Zero every key in place and forget them all."""
        for table in (self._by_address, self._by_name):
            for key in table.values():
                _zero(key)
        self._by_address.clear()
        self._by_name.clear()

    def __repr__(self) -> str:
        return f"<PskTable: {len(self)} key{'' if len(self) == 1 else 's'}>"


def _identification_name(ident: Identification) -> IPAddress | str | None:
    try:
        if ident.id_type == IdType.ID_IPV4_ADDR and len(ident.data) == 4:
            return ipaddress.IPv4Address(bytes(ident.data))
        if ident.id_type == IdType.ID_IPV6_ADDR and len(ident.data) == 16:
            return ipaddress.IPv6Address(bytes(ident.data))
        if ident.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR, IdType.ID_KEY_ID):
            return _normalise(bytes(ident.data).decode("utf-8"))
    except UnicodeDecodeError:
        return None
    return None


def _normalise(identifier: str) -> IPAddress | str:
    try:
        return ipaddress.ip_address(identifier)
    except ValueError:
        return identifier


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _hex_key(text: memoryview) -> bytearray | None:
    """Decode hex digits into a fresh bytearray without an immutable copy; None if not hex."""
    if len(text) == 0 or len(text) % 2:
        return None
    out = bytearray(len(text) // 2)
    for i in range(len(out)):
        hi = _HEX_VALUE.get(text[2 * i])
        lo = _HEX_VALUE.get(text[2 * i + 1])
        if hi is None or lo is None:
            _zero(out)
            return None
        out[i] = hi << 4 | lo
    return out


def _parse(data: bytearray, size: int, file: str) -> PskTable:
    """Parse ``data[:size]``."""
    table = PskTable()
    seen: dict[IPAddress | str, int] = {}
    view = memoryview(data)
    try:
        pos, number = 0, 0
        while pos < size:
            number += 1
            end = data.find(b"\n", pos, size)
            if end < 0:
                end = size
            start, stop = pos, end
            pos = end + 1
            if stop > start and data[stop - 1] == 0x0D:
                stop -= 1
            while start < stop and data[start] in _BLANKS:
                start += 1
            if start == stop or data[start] == 0x23:  # blank line or "#" comment
                continue
            if data.find(b"\0", start, stop) >= 0:
                raise PskFileError(file, number, "contains a NUL byte")
            split = start
            while split < stop and data[split] not in _BLANKS:
                split += 1
            key_start = split
            while key_start < stop and data[key_start] in _BLANKS:
                key_start += 1
            if key_start == stop:
                # Do not echo the field: it may be a key that lost its identifier.
                raise PskFileError(file, number,
                                   "an identifier without a key (expected: IDENTIFIER KEY)")
            try:
                identifier = bytes(view[start:split]).decode("utf-8")
            except UnicodeDecodeError:
                raise PskFileError(file, number, "the identifier is not UTF-8 text") from None
            name = _normalise(identifier)
            if name in seen:
                raise PskFileError(file, number,
                                   f"{identifier}: listed twice (first on line {seen[name]})")
            if data.startswith(b"0x", key_start, stop):
                # racoon: "A key can be in hex by leading 0x"; trailing blanks are not digits.
                hex_stop = stop
                while data[hex_stop - 1] in _BLANKS:
                    hex_stop -= 1
                key = _hex_key(view[key_start + 2:hex_stop])
                if key is None:
                    raise PskFileError(
                        file, number,
                        f"{identifier}: the key after 0x must be an even number of hex digits")
            else:
                key = bytearray(view[key_start:stop])
            seen[name] = number
            table._add(name, key)
    except BaseException:
        table.wipe()
        raise
    finally:
        view.release()
    return table


def parse_psk_text(text: str, file: str = "<psk>") -> PskTable:
    """Parse the text of a psk.txt (no permission check: see :func:`load_psk_file`)."""
    data = bytearray(text.encode("utf-8", "surrogateescape"))
    try:
        return _parse(data, len(data), file)
    finally:
        _zero(data)


def load_psk_file(path: str | os.PathLike[str], *, owner_uid: int = 0) -> PskTable:
    """Read the psk.txt at ``path``; :class:`PskFileError` if it cannot be used.

    As racoon, the file must be a regular file owned by ``owner_uid`` (the
    daemon runs as root: 0) with no permission bits for group or others
    (``chmod 600``).  The check is made on the opened file, so a file
    swapped between the check and the read cannot slip through.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise PskFileError(name, None, f"cannot read: {exc.strerror or exc}") from None
    data = bytearray()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PskFileError(name, None, "not a regular file")
        if st.st_uid != owner_uid:
            raise PskFileError(name, None,
                               f"owned by uid {st.st_uid}, must be owned by uid {owner_uid} "
                               "(racoon refuses it too)")
        if st.st_mode & 0o077:
            raise PskFileError(name, None,
                               f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                               "access the keys: chmod 600 it (racoon refuses it too)")
        # Read into one preallocated buffer, grown in place: no immutable copies of the keys.
        data = bytearray(max(st.st_size, 0) + 1)
        used = 0
        while True:
            if used == len(data):
                grown = bytearray(len(data) * 2)
                grown[:used] = data
                _zero(data)
                data = grown
            with memoryview(data) as view:
                n = os.readv(fd, [view[used:]])
            if n == 0:
                break
            used += n
        return _parse(data, used, name)
    except OSError as exc:
        raise PskFileError(name, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        _zero(data)
        os.close(fd)


__all__ = ["PskFileError", "PskTable", "load_psk_file", "parse_psk_text"]
