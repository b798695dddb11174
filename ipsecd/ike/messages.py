"""IKEv2 messages and payloads (RFC 7296 §3), sans-I/O.

Theory of operation
-------------------
A message is the fixed IKE header (§3.1) followed by a chain of payloads,
each starting with the generic payload header (§3.2): the *next* payload's
type, the critical bit, and the length of this payload including the
header.  :func:`decode` turns bytes into a :class:`Message` whose
``payloads`` are small dataclasses, one per payload type of §3.2-§3.16 plus
SKF (RFC 7383); :func:`encode` does the reverse and computes every
next-payload, length and count field itself, so a caller never sets one.

Reading follows aioquic's ``pull_x(buf)`` discipline: every length-prefixed
block is read inside :meth:`Reader.limit`, which refuses a length that runs
past the enclosing block and fails when the block is not consumed exactly.
SA -> proposal -> transform -> attribute nesting is four such blocks deep.
Any malformed input raises :class:`~ipsecd.ike.errors.IkeProtocolError`
(INVALID_SYNTAX, UNSUPPORTED_CRITICAL_PAYLOAD or INVALID_MAJOR_VERSION) and
nothing else; that is the fuzzing invariant.

Unknown payloads (§2.5): without the critical bit they are kept as
:class:`UnknownPayload` (and re-encoded unchanged); with it the message is
rejected with UNSUPPORTED_CRITICAL_PAYLOAD.  Unknown code points inside
known payloads (a private-use notify, a new transform id) are open enum
members and survive a round trip.  Reserved fields are sent as zero and
ignored on receipt (§3.2).

The Encrypted payload (SK, §3.14) and the Encrypted Fragment payload (SKF,
RFC 7383 §2.5) stay opaque here: their ``data`` is IV | ciphertext | ICV
and, as the RFC requires, they are the last payload of a message, so the
octets they protect are exactly ``raw[:len(raw) - len(sk.data)]``.
:mod:`ipsecd.ike.crypto` protects and unprotects them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeVar

from ipsecd.iana import IpcompId
from ipsecd.ike.constants import (
    IKE_HEADER_LENGTH,
    IKE_MAJOR_VERSION,
    AuthMethod,
    CertEncoding,
    CfgType,
    ConfigAttributeType,
    DhGroup,
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    SignatureHashAlgorithm,
    TransformAttributeType,
    TransformType,
    TsType,
    transform_id,
)
from ipsecd.ike.errors import (
    IkeLocalError,
    IkeProtocolError,
    InvalidMajorVersionError,
    UnsupportedCriticalPayloadError,
    invalid_syntax,
)

__all__ = [
    "AUTH",
    "CERT",
    "CERTREQ",
    "CP",
    "EAP",
    "KE",
    "SA",
    "SK",
    "SKF",
    "ConfigAttribute",
    "Delete",
    "Header",
    "IDi",
    "IDr",
    "Identification",
    "Message",
    "Nonce",
    "Notify",
    "Payload",
    "Proposal",
    "RawTrafficSelector",
    "Reader",
    "TSi",
    "TSr",
    "TrafficSelector",
    "TrafficSelectors",
    "Transform",
    "TransformAttribute",
    "UnknownPayload",
    "VendorID",
    "decode",
    "decode_header",
    "decode_payloads",
    "encode",
    "encode_payloads",
    "encode_protected_prefix",
    "identification_body",
    "nat_detection_hash",
]

_HEADER = struct.Struct("!8s8sBBBBII")  # SPIi, SPIr, next payload, version, exchange, flags, message ID, length
_GENERIC = struct.Struct("!BBH")  # next payload, C + RESERVED, payload length
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TRANSFORM = struct.Struct("!BBHBBH")  # last, reserved, length, type, reserved, id
_PROPOSAL = struct.Struct("!BBHBBBB")  # last, reserved, length, number, protocol, SPI size, count
_NOTIFY = struct.Struct("!BBH")  # protocol, SPI size, notify type
_ATTRIBUTE = struct.Struct("!HH")  # two 16-bit fields: type and value (or length)
_TS_HEADER = struct.Struct("!BBHHH")  # TS type, IP protocol, length, start port, end port
_CRITICAL = 0x80

NONCE_MIN = 16  # RFC 7296 §3.9: Nonce Data between 16 and 256 octets
NONCE_MAX = 256


# --------------------------------------------------------------------------- buffers


class Reader:
    """Big-endian reads from a byte string that can never pass the current limit.

    Every read past the limit raises INVALID_SYNTAX; :meth:`limit` narrows
    the readable window to one length-prefixed block (dnspython's
    ``restrict_to``, aioquic's ``pull_block``).
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)

    @property
    def remaining(self) -> int:
        """Octets left before the current limit."""
        return self._end - self._pos

    def _short(self, n: int, what: str) -> IkeProtocolError:
        return invalid_syntax(f"{what}: needs {n} octets, {self._end - self._pos} left")

    # The pulls are called a hundred times per message: each does its own bounds check
    # (no helper call), which is the whole of the guard.
    def pull_uint8(self, what: str = "field") -> int:
        """One octet."""
        pos = self._pos
        if pos >= self._end:
            raise self._short(1, what)
        self._pos = pos + 1
        return self._data[pos]

    def pull_uint16(self, what: str = "field") -> int:
        """Two octets, big-endian."""
        pos = self._pos
        if pos + 2 > self._end:
            raise self._short(2, what)
        self._pos = pos + 2
        data = self._data
        return data[pos] << 8 | data[pos + 1]

    def pull_uint32(self, what: str = "field") -> int:
        """Four octets, big-endian."""
        pos = self._pos
        if pos + 4 > self._end:
            raise self._short(4, what)
        self._pos = pos + 4
        return int(_U32.unpack_from(self._data, pos)[0])

    def pull_bytes(self, n: int, what: str = "field") -> bytes:
        """``n`` octets."""
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise self._short(n, what)
        self._pos = pos + n
        return self._data[pos:pos + n]

    def pull_rest(self) -> bytes:
        """Everything up to the current limit."""
        return self.pull_bytes(self.remaining)

    def limit(self, length: int, what: str) -> _Limit:
        """Read exactly ``length`` octets inside the block, no more, no fewer (a context
        manager: the check is made when the block ends without an exception)."""
        if length < 0 or length > self.remaining:
            raise invalid_syntax(f"{what}: length {length} runs past the {self.remaining} octets left")
        outer_end = self._end
        self._end = self._pos + length
        return _Limit(self, outer_end, what)


class _Limit:
    """:meth:`Reader.limit`'s block (a class, not a generator: it runs for every payload)."""

    __slots__ = ("outer_end", "reader", "what")

    def __init__(self, reader: Reader, outer_end: int, what: str) -> None:
        self.reader, self.outer_end, self.what = reader, outer_end, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            return  # the error goes on; the reader is not used after it
        reader = self.reader
        if reader._pos != reader._end:
            raise invalid_syntax(f"{self.what}: {reader._end - reader._pos} octets left over")
        reader._end = self.outer_end


def _check_uint(value: int, size: int, what: str) -> int:
    if not 0 <= value < 1 << (8 * size):
        raise IkeLocalError(f"{what} {value} does not fit in {size} octet(s)")
    return int(value)


def _push_uint(buf: bytearray, value: int, size: int, what: str) -> None:
    buf += _check_uint(value, size, what).to_bytes(size, "big")


def _pack(fields: struct.Struct, what: str, *values: int) -> bytes:
    """Several fixed-size fields at once; a value that does not fit is IkeLocalError, as
    with :func:`_push_uint`."""
    try:
        return fields.pack(*values)
    except struct.error as exc:
        raise IkeLocalError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------- payload base


@dataclass(slots=True)
class Payload:
    """A payload: the generic header (§3.2) around a type-specific body.

    ``critical`` is the C bit as received or to be sent.  RFC 7296 §2.5:
    every implementation understands the payloads of RFC 7296, so for them
    it is ignored on receipt (and should be sent as zero).
    """

    TYPE: ClassVar[PayloadType]
    critical: bool = field(default=False, kw_only=True)

    @property
    def payload_type(self) -> PayloadType:
        """The payload type carried in the previous payload's Next Payload field."""
        return self.TYPE

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        """Parse the body (after the generic header) from ``buf``, which is limited to it."""
        raise NotImplementedError

    def push_body(self, buf: bytearray) -> None:
        """Append the body (after the generic header) to ``buf``."""
        raise NotImplementedError


@dataclass(slots=True)
class UnknownPayload(Payload):
    """A payload type we do not implement, received without the critical bit (§2.5)."""

    unknown_type: PayloadType
    data: bytes = b""

    @property
    def payload_type(self) -> PayloadType:
        return self.unknown_type

    def push_body(self, buf: bytearray) -> None:
        buf += self.data


# --------------------------------------------------------------------------- SA (§3.3)


@dataclass(slots=True)
class TransformAttribute:
    """A transform attribute (§3.3.5): an int ``value`` is sent in TV format, bytes in TLV."""

    type: TransformAttributeType
    value: int | bytes

    def push(self, buf: bytearray) -> None:
        """Append the attribute."""
        if isinstance(self.value, int):
            buf += _pack(_ATTRIBUTE, "TV attribute", 0x8000 | _attribute_type(self.type), self.value)
        else:
            buf += _pack(_ATTRIBUTE, "TLV attribute", _attribute_type(self.type), len(self.value))
            buf += self.value

    @classmethod
    def pull(cls, buf: Reader) -> TransformAttribute:
        """Read one attribute."""
        word = buf.pull_uint16("attribute type")
        kind = TransformAttributeType(word & 0x7FFF)
        if word & 0x8000:  # AF = 1: TV, the value is the next two octets
            return cls(kind, buf.pull_uint16("TV attribute value"))
        length = buf.pull_uint16("TLV attribute length")
        return cls(kind, buf.pull_bytes(length, "TLV attribute value"))


def _attribute_type(value: int) -> int:
    if not 0 <= value <= 0x7FFF:
        raise IkeLocalError(f"attribute type {value} does not fit in 15 bits")
    return int(value)


@dataclass(slots=True)
class Transform:
    """A transform substructure (§3.3.2): type, id in that type's registry, attributes."""

    type: TransformType
    id: int
    attributes: list[TransformAttribute] = field(default_factory=list)

    def __post_init__(self) -> None:
        if type(self.type) is not TransformType:  # decoded and copied ones are already
            self.type = TransformType.of(self.type)
        self.id = transform_id(self.type, self.id)

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute in bits (§3.3.5), or None."""
        for attribute in self.attributes:
            if attribute.type == TransformAttributeType.KEY_LENGTH and isinstance(attribute.value, int):
                return attribute.value
        return None

    @classmethod
    def make(cls, type: TransformType, id: int, key_length: int | None = None) -> Transform:
        """A transform, with a Key Length attribute when ``key_length`` (bits) is given."""
        attributes = [] if key_length is None else [
            TransformAttribute(TransformAttributeType.KEY_LENGTH, key_length)]
        return cls(type, id, attributes)

    def push(self, buf: bytearray, last: bool) -> None:
        """Append the substructure; ``last`` is False when another transform follows."""
        start = len(buf)
        buf += _pack(_TRANSFORM, "transform", 0 if last else 3, 0, 0, self.type, 0, self.id)
        for attribute in self.attributes:
            attribute.push(buf)
        _backfill_length(buf, start + 2, len(buf) - start, "transform")

    @classmethod
    def pull(cls, buf: Reader) -> tuple[Transform, bool]:
        """Read one transform; also returns whether it says it is the last one."""
        pos = buf._pos
        if pos + 8 > buf._end:  # the fixed part, read at once (its fields checked below)
            raise buf._short(8, "transform")
        last, _, length, kind, _, ident = _TRANSFORM.unpack_from(buf._data, pos)
        if last not in (0, 3):  # §3.3.2: 0 (last) or 3 (more)
            raise invalid_syntax(f"transform 'last' field {last}")
        if length < 8:
            raise invalid_syntax(f"transform length {length} < 8")
        end = pos + length
        if end > buf._end:
            raise invalid_syntax(f"transform: length {length - 4} runs past the "
                                 f"{buf._end - pos - 4} octets left")
        buf._pos = pos + 8
        attributes = []
        if end > pos + 8:
            outer_end, buf._end = buf._end, end
            while buf._pos < end:
                attributes.append(TransformAttribute.pull(buf))
            if buf._pos != end:  # pragma: no cover - TransformAttribute.pull cannot overrun
                raise invalid_syntax("transform: octets left over")
            buf._end = outer_end
        return cls(TransformType.of(kind), ident, attributes), last == 0


@dataclass(slots=True)
class Proposal:
    """A proposal substructure (§3.3.1): number, protocol, SPI and its transforms."""

    number: int
    protocol: ProtocolId
    spi: bytes = b""
    transforms: list[Transform] = field(default_factory=list)

    def __post_init__(self) -> None:
        if type(self.protocol) is not ProtocolId:
            self.protocol = ProtocolId.of(self.protocol)

    def push(self, buf: bytearray, last: bool) -> None:
        """Append the substructure; ``last`` is False when another proposal follows."""
        start = len(buf)
        buf += _pack(_PROPOSAL, "proposal", 0 if last else 2, 0, 0, self.number, self.protocol,
                     len(self.spi), len(self.transforms))
        buf += self.spi
        final = len(self.transforms) - 1
        for i, transform in enumerate(self.transforms):
            transform.push(buf, last=i == final)
        _backfill_length(buf, start + 2, len(buf) - start, "proposal")

    @classmethod
    def pull(cls, buf: Reader) -> tuple[Proposal, bool]:
        """Read one proposal; also returns whether it says it is the last one."""
        pos = buf._pos
        if pos + 8 > buf._end:  # the fixed part, read at once (its fields checked below)
            raise buf._short(8, "proposal")
        last, _, length, number, protocol_id, spi_size, count = _PROPOSAL.unpack_from(buf._data, pos)
        if last not in (0, 2):  # §3.3.1: 0 (last) or 2 (more)
            raise invalid_syntax(f"proposal 'last' field {last}")
        if length < 8:
            raise invalid_syntax(f"proposal length {length} < 8")
        buf._pos = pos + 4
        with buf.limit(length - 4, "proposal"):
            buf._pos = pos + 8
            protocol = ProtocolId.of(protocol_id)
            spi = buf.pull_bytes(spi_size, "proposal SPI")
            transforms = []
            for i in range(count):
                transform, says_last = Transform.pull(buf)
                if says_last != (i == count - 1):
                    raise invalid_syntax("transform 'last' field disagrees with the count")
                transforms.append(transform)
        return cls(number, protocol, spi, transforms), last == 0


@dataclass(slots=True)
class SA(Payload):
    """Security Association payload (§3.3): SAi1, SAr1, SAi2, SAr2."""

    TYPE = PayloadType.SA
    proposals: list[Proposal] = field(default_factory=list)

    def push_body(self, buf: bytearray) -> None:
        for i, proposal in enumerate(self.proposals):
            proposal.push(buf, last=i == len(self.proposals) - 1)

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        proposals = []
        while buf.remaining:
            proposal, says_last = Proposal.pull(buf)
            if says_last != (buf.remaining == 0):
                raise invalid_syntax("proposal 'last' field disagrees with the payload length")
            proposals.append(proposal)
        return cls(proposals)


# --------------------------------------------------------------------------- simple payloads


@dataclass(slots=True)
class KE(Payload):
    """Key Exchange payload (§3.4): the group and this side's public value."""

    TYPE = PayloadType.KE
    group: DhGroup
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        buf += _pack(_ATTRIBUTE, "DH group", self.group, 0)  # group, reserved
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        group = DhGroup.of(buf.pull_uint16("DH group"))
        buf.pull_bytes(2, "KE reserved")
        return cls(group, buf.pull_rest())


@dataclass(slots=True)
class Identification(Payload):
    """Identification payload body (§3.5); use :class:`IDi` or :class:`IDr`."""

    id_type: IdType
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, self.id_type, 1, "ID type")
        buf += b"\x00\x00\x00"
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        pos, end = buf._pos, buf._end
        if end - pos >= 4:  # type and reserved at once (every IKE_AUTH has two IDs)
            buf._pos = end
            return cls(IdType.of(buf._data[pos]), buf._data[pos + 4:end])
        id_type = IdType.of(buf.pull_uint8("ID type"))
        buf.pull_bytes(3, "ID reserved")
        return cls(id_type, buf.pull_rest())

    @classmethod
    def from_address(cls, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Self:
        """ID_IPV4_ADDR or ID_IPV6_ADDR."""
        kind = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
        return cls(kind, address.packed)

    @classmethod
    def fqdn(cls, name: str) -> Self:
        """ID_FQDN (§3.5: no terminator, no padding)."""
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    @classmethod
    def rfc822(cls, address: str) -> Self:
        """ID_RFC822_ADDR, an e-mail address."""
        return cls(IdType.ID_RFC822_ADDR, address.encode("ascii"))

    @classmethod
    def key_id(cls, data: bytes) -> Self:
        """ID_KEY_ID, opaque octets."""
        return cls(IdType.ID_KEY_ID, data)


@dataclass(slots=True)
class IDi(Identification):
    """Identification - Initiator (§3.5)."""

    TYPE = PayloadType.IDi


@dataclass(slots=True)
class IDr(Identification):
    """Identification - Responder (§3.5)."""

    TYPE = PayloadType.IDr


def identification_body(payload: Identification) -> bytes:
    """IDi' / IDr': the ID payload without its generic header, the input of prf(SK_p, ...) (§2.15)."""
    buf = bytearray()
    payload.push_body(buf)
    return bytes(buf)


@dataclass(slots=True)
class CERT(Payload):
    """Certificate payload (§3.6)."""

    TYPE = PayloadType.CERT
    encoding: CertEncoding
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, self.encoding, 1, "certificate encoding")
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        return cls(CertEncoding(buf.pull_uint8("certificate encoding")), buf.pull_rest())


@dataclass(slots=True)
class CERTREQ(Payload):
    """Certificate Request payload (§3.7); for X509_SIGNATURE ``data`` is SHA-1 hashes of CA keys."""

    TYPE = PayloadType.CERTREQ
    encoding: CertEncoding
    data: bytes = b""

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, self.encoding, 1, "certificate encoding")
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        return cls(CertEncoding(buf.pull_uint8("certificate encoding")), buf.pull_rest())

    def authorities(self) -> list[bytes]:
        """The 20-octet SHA-1 hashes of the CA public keys (§3.7, X509_SIGNATURE encoding)."""
        if len(self.data) % 20:
            raise invalid_syntax(f"CERTREQ authority list of {len(self.data)} octets is not 20*n")
        return [self.data[i:i + 20] for i in range(0, len(self.data), 20)]


@dataclass(slots=True)
class AUTH(Payload):
    """Authentication payload (§3.8)."""

    TYPE = PayloadType.AUTH
    method: AuthMethod
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, self.method, 1, "auth method")
        buf += b"\x00\x00\x00"
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        pos, end = buf._pos, buf._end
        if end - pos >= 4:  # method and reserved at once
            buf._pos = end
            return cls(AuthMethod.of(buf._data[pos]), buf._data[pos + 4:end])
        method = AuthMethod.of(buf.pull_uint8("auth method"))
        buf.pull_bytes(3, "AUTH reserved")
        return cls(method, buf.pull_rest())


@dataclass(slots=True)
class Nonce(Payload):
    """Nonce payload (§3.9): Ni or Nr, 16 to 256 octets."""

    TYPE = PayloadType.NONCE
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        if not NONCE_MIN <= len(self.data) <= NONCE_MAX:
            raise IkeLocalError(f"nonce of {len(self.data)} octets; RFC 7296 §3.9 wants 16..256")
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        if not NONCE_MIN <= buf.remaining <= NONCE_MAX:
            raise invalid_syntax(f"nonce of {buf.remaining} octets; RFC 7296 §3.9 wants 16..256")
        return cls(buf.pull_rest())


# --------------------------------------------------------------------------- Notify (§3.10)


@dataclass(slots=True)
class Notify(Payload):
    """Notify payload (§3.10); the classmethods build the common ones, the methods read them."""

    TYPE = PayloadType.NOTIFY
    notify_type: NotifyType
    data: bytes = b""
    protocol: ProtocolId = ProtocolId.NONE
    spi: bytes = b""

    def push_body(self, buf: bytearray) -> None:
        buf += _pack(_NOTIFY, "notify", self.protocol, len(self.spi), self.notify_type)
        buf += self.spi
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        pos = buf._pos
        if pos + 4 > buf._end:
            raise buf._short(4, "notify")
        protocol, spi_size, notify_type = _NOTIFY.unpack_from(buf._data, pos)
        buf._pos = pos + 4
        spi = buf.pull_bytes(spi_size, "notify SPI")
        return cls(NotifyType.of(notify_type), buf.pull_rest(), ProtocolId.of(protocol), spi)

    @property
    def is_error(self) -> bool:
        """True for an error notification (type below 16384)."""
        return self.notify_type.is_error

    # -- builders
    @classmethod
    def status(cls, notify_type: NotifyType, data: bytes = b"") -> Notify:
        """A notify about the IKE SA (no SPI): INITIAL_CONTACT, MOBIKE_SUPPORTED, ..."""
        return cls(NotifyType.of(notify_type), data)

    @classmethod
    def error(cls, code: NotifyType, data: bytes = b"") -> Notify:
        """An error notify, e.g. from an IkeProtocolError's ``code`` and ``data``."""
        return cls(NotifyType.of(code), data)

    @classmethod
    def invalid_ke_payload(cls, group: DhGroup) -> Notify:
        """INVALID_KE_PAYLOAD carrying the group the responder wants (§1.2, §3.10.1)."""
        return cls(NotifyType.INVALID_KE_PAYLOAD, int(group).to_bytes(2, "big"))

    @classmethod
    def cookie(cls, cookie: bytes) -> Notify:
        """COOKIE (§2.6): 1 to 64 octets."""
        if not 1 <= len(cookie) <= 64:
            raise IkeLocalError(f"cookie of {len(cookie)} octets; RFC 7296 §2.6 wants 1..64")
        return cls(NotifyType.COOKIE, cookie)

    @classmethod
    def nat_detection(
        cls, notify_type: NotifyType, spi_i: bytes, spi_r: bytes,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
    ) -> Notify:
        """NAT_DETECTION_SOURCE_IP or NAT_DETECTION_DESTINATION_IP (§2.23)."""
        if notify_type not in (NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP):
            raise IkeLocalError(f"{notify_type!r} is not a NAT detection notify")
        return cls(NotifyType.of(notify_type), nat_detection_hash(spi_i, spi_r, address, port))

    @classmethod
    def rekey_sa(cls, protocol: ProtocolId, spi: bytes) -> Notify:
        """REKEY_SA (§1.3.3) naming the Child SA (or IKE SA) being rekeyed."""
        return cls(NotifyType.REKEY_SA, b"", ProtocolId.of(protocol), spi)

    @classmethod
    def ipcomp_supported(cls, cpi: int, transform: IpcompId) -> Notify:
        """IPCOMP_SUPPORTED (§2.22): two-octet CPI and one-octet transform id."""
        data = bytearray()
        _push_uint(data, cpi, 2, "CPI")
        _push_uint(data, transform, 1, "IPComp transform id")
        return cls(NotifyType.IPCOMP_SUPPORTED, bytes(data))

    @classmethod
    def signature_hash_algorithms(cls, algorithms: Sequence[SignatureHashAlgorithm]) -> Notify:
        """SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4): a list of two-octet hash ids."""
        data = bytearray()
        for algorithm in algorithms:
            _push_uint(data, algorithm, 2, "hash algorithm")
        return cls(NotifyType.SIGNATURE_HASH_ALGORITHMS, bytes(data))

    # -- readers (raise INVALID_SYNTAX on malformed data)
    def dh_group(self) -> DhGroup:
        """The group of an INVALID_KE_PAYLOAD notify."""
        self._expect(NotifyType.INVALID_KE_PAYLOAD)
        if len(self.data) != 2:
            raise invalid_syntax(f"INVALID_KE_PAYLOAD data of {len(self.data)} octets")
        return DhGroup(int.from_bytes(self.data, "big"))

    def hash_algorithms(self) -> list[SignatureHashAlgorithm]:
        """The hash algorithms of a SIGNATURE_HASH_ALGORITHMS notify."""
        self._expect(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if len(self.data) % 2:
            raise invalid_syntax("SIGNATURE_HASH_ALGORITHMS data of odd length")
        return [SignatureHashAlgorithm(int.from_bytes(self.data[i:i + 2], "big"))
                for i in range(0, len(self.data), 2)]

    def ipcomp(self) -> tuple[int, IpcompId]:
        """(CPI, transform id) of an IPCOMP_SUPPORTED notify."""
        self._expect(NotifyType.IPCOMP_SUPPORTED)
        if len(self.data) != 3:
            raise invalid_syntax(f"IPCOMP_SUPPORTED data of {len(self.data)} octets")
        return int.from_bytes(self.data[:2], "big"), IpcompId(self.data[2])

    def _expect(self, notify_type: NotifyType) -> None:
        if self.notify_type != notify_type:
            raise IkeLocalError(f"{self.notify_type.name} is not {notify_type.name}")


def nat_detection_hash(
    spi_i: bytes, spi_r: bytes, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) of the NAT_DETECTION_*_IP notifies (RFC 7296 §2.23)."""
    return hashlib.sha1(spi_i + spi_r + address.packed + port.to_bytes(2, "big")).digest()


# --------------------------------------------------------------------------- Delete, Vendor ID


@dataclass(slots=True)
class Delete(Payload):
    """Delete payload (§3.11): an IKE SA (no SPIs) or Child SAs by their inbound SPIs."""

    TYPE = PayloadType.DELETE
    protocol: ProtocolId
    spis: list[bytes] = field(default_factory=list)

    def push_body(self, buf: bytearray) -> None:
        size = len(self.spis[0]) if self.spis else (4 if self.protocol in (ProtocolId.AH, ProtocolId.ESP) else 0)
        if any(len(spi) != size for spi in self.spis):
            raise IkeLocalError("Delete payload SPIs of different sizes")
        _push_uint(buf, self.protocol, 1, "protocol id")
        _push_uint(buf, size, 1, "SPI size")
        _push_uint(buf, len(self.spis), 2, "number of SPIs")
        for spi in self.spis:
            buf += spi

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        protocol = ProtocolId.of(buf.pull_uint8("protocol id"))
        size = buf.pull_uint8("SPI size")
        count = buf.pull_uint16("number of SPIs")
        if size * count != buf.remaining:
            raise invalid_syntax(f"Delete: {count} SPIs of {size} octets in {buf.remaining} octets")
        if size == 0 and count:
            raise invalid_syntax("Delete: SPIs of size 0")
        return cls(protocol, [buf.pull_bytes(size, "SPI") for _ in range(count)])


@dataclass(slots=True)
class VendorID(Payload):
    """Vendor ID payload (§3.12)."""

    TYPE = PayloadType.VENDOR_ID
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        return cls(buf.pull_rest())


# --------------------------------------------------------------------------- Traffic selectors (§3.13)


@dataclass(slots=True)
class TrafficSelector:
    """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE (§3.13.1): protocol, port and address ranges.

    ``ip_protocol`` 0 means any protocol; ports 0..65535 mean any port.
    """

    start_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    end_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    @property
    def ts_type(self) -> TsType:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE, from the addresses."""
        return TsType.TS_IPV4_ADDR_RANGE if self.start_address.version == 4 else TsType.TS_IPV6_ADDR_RANGE

    @classmethod
    def from_network(
        cls, network: ipaddress.IPv4Network | ipaddress.IPv6Network, ip_protocol: int = 0,
        start_port: int = 0, end_port: int = 0xFFFF,
    ) -> TrafficSelector:
        """The selector covering a whole prefix."""
        return cls(network.network_address, network.broadcast_address, ip_protocol, start_port, end_port)

    def push(self, buf: bytearray) -> None:
        """Append the selector."""
        if self.start_address.version != self.end_address.version:
            raise IkeLocalError("traffic selector mixes IPv4 and IPv6")
        v4 = self.start_address.version == 4
        buf += _pack(_TS_HEADER, "traffic selector",
                     TsType.TS_IPV4_ADDR_RANGE if v4 else TsType.TS_IPV6_ADDR_RANGE,
                     self.ip_protocol, 16 if v4 else 40, self.start_port, self.end_port)
        buf += self.start_address.packed
        buf += self.end_address.packed


@dataclass(slots=True)
class RawTrafficSelector:
    """A selector of a type other than 7 and 8, kept as received (e.g. TS_SECLABEL)."""

    ts_type: TsType
    second_octet: int  # IP protocol for address ranges, reserved for TS_SECLABEL
    data: bytes  # everything after the Selector Length field

    def push(self, buf: bytearray) -> None:
        """Append the selector."""
        _push_uint(buf, self.ts_type, 1, "TS type")
        _push_uint(buf, self.second_octet, 1, "TS second octet")
        _push_uint(buf, 4 + len(self.data), 2, "selector length")
        buf += self.data


_TS_ADDRESS: dict[int, tuple[int, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]]] = {
    TsType.TS_IPV4_ADDR_RANGE: (4, ipaddress.IPv4Address),
    TsType.TS_IPV6_ADDR_RANGE: (16, ipaddress.IPv6Address),  # the class for the size, not
}  # ip_address's trial of IPv4 first


def _pull_traffic_selector(buf: Reader) -> TrafficSelector | RawTrafficSelector:
    pos, end, data = buf._pos, buf._end, buf._data
    if pos + 8 <= end:
        # The header and ports at once, the checks of the general path below in its order
        # (its errors, word for word): a Child SA's every selector comes through here.
        ts_type, second, length, start_port, end_port = _TS_HEADER.unpack_from(data, pos)
        if length < 4:
            raise invalid_syntax(f"selector length {length} < 4")
        if length - 4 > end - pos - 4:
            raise invalid_syntax(f"traffic selector: length {length - 4} runs past the "
                                 f"{end - pos - 4} octets left")
        shape = _TS_ADDRESS.get(ts_type)
        if shape is None:
            buf._pos = pos + length
            return RawTrafficSelector(TsType.of(ts_type), second, data[pos + 4:pos + length])
        size, address = shape
        if length != 8 + 2 * size:
            raise invalid_syntax(f"{TsType.of(ts_type).name} of length {length}")
        buf._pos = pos + length
        return TrafficSelector(address(data[pos + 8:pos + 8 + size]),
                               address(data[pos + 8 + size:pos + length]), second, start_port,
                               end_port)
    return _pull_traffic_selector_short(buf)


def _pull_traffic_selector_short(buf: Reader) -> TrafficSelector | RawTrafficSelector:
    """:func:`_pull_traffic_selector` when fewer than 8 octets are left: field by field, so
    the error names the field that is cut short."""
    ts_type = TsType.of(buf.pull_uint8("TS type"))
    second = buf.pull_uint8("TS second octet")
    length = buf.pull_uint16("selector length")
    if length < 4:
        raise invalid_syntax(f"selector length {length} < 4")
    with buf.limit(length - 4, "traffic selector"):
        if ts_type not in (TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE):
            return RawTrafficSelector(ts_type, second, buf.pull_rest())
        address: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
        if ts_type == TsType.TS_IPV4_ADDR_RANGE:
            size, address = 4, ipaddress.IPv4Address
        else:  # the class for the size, not ip_address's trial of IPv4 first
            size, address = 16, ipaddress.IPv6Address
        if length != 8 + 2 * size:
            raise invalid_syntax(f"{ts_type.name} of length {length}")
        start_port = buf.pull_uint16("start port")
        end_port = buf.pull_uint16("end port")
        start = address(buf.pull_bytes(size, "start address"))
        end = address(buf.pull_bytes(size, "end address"))
    return TrafficSelector(start, end, second, start_port, end_port)


@dataclass(slots=True)
class TrafficSelectors(Payload):
    """Traffic Selector payload body (§3.13); use :class:`TSi` or :class:`TSr`."""

    selectors: list[TrafficSelector | RawTrafficSelector] = field(default_factory=list)

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, len(self.selectors), 1, "number of TSs")
        buf += b"\x00\x00\x00"
        for selector in self.selectors:
            selector.push(buf)

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        count = buf.pull_uint8("number of TSs")
        buf.pull_bytes(3, "TS reserved")
        selectors = [_pull_traffic_selector(buf) for _ in range(count)]
        if buf.remaining:
            raise invalid_syntax(f"TS payload: {buf.remaining} octets after {count} selectors")
        return cls(selectors)


@dataclass(slots=True)
class TSi(TrafficSelectors):
    """Traffic Selector - Initiator (§3.13)."""

    TYPE = PayloadType.TSi


@dataclass(slots=True)
class TSr(TrafficSelectors):
    """Traffic Selector - Responder (§3.13)."""

    TYPE = PayloadType.TSr


# --------------------------------------------------------------------------- CP, EAP (§3.15, §3.16)


@dataclass(slots=True)
class ConfigAttribute:
    """A configuration attribute (§3.15.1): type and value (empty in a CFG_REQUEST)."""

    type: ConfigAttributeType
    value: bytes = b""

    def push(self, buf: bytearray) -> None:
        """Append the attribute (the R bit is sent as zero)."""
        if not 0 <= self.type <= 0x7FFF:
            raise IkeLocalError(f"configuration attribute type {int(self.type)} does not fit in 15 bits")
        _push_uint(buf, self.type, 2, "attribute type")
        _push_uint(buf, len(self.value), 2, "attribute length")
        buf += self.value


@dataclass(slots=True)
class CP(Payload):
    """Configuration payload (§3.15)."""

    TYPE = PayloadType.CP
    cfg_type: CfgType
    attributes: list[ConfigAttribute] = field(default_factory=list)

    def push_body(self, buf: bytearray) -> None:
        _push_uint(buf, self.cfg_type, 1, "CFG type")
        buf += b"\x00\x00\x00"
        for attribute in self.attributes:
            attribute.push(buf)

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        cfg_type = CfgType(buf.pull_uint8("CFG type"))
        buf.pull_bytes(3, "CP reserved")
        attributes = []
        while buf.remaining:
            kind = ConfigAttributeType(buf.pull_uint16("attribute type") & 0x7FFF)
            length = buf.pull_uint16("attribute length")
            attributes.append(ConfigAttribute(kind, buf.pull_bytes(length, "attribute value")))
        return cls(cfg_type, attributes)


@dataclass(slots=True)
class EAP(Payload):
    """Extensible Authentication payload (§3.16): one EAP message, opaque here."""

    TYPE = PayloadType.EAP
    data: bytes

    def push_body(self, buf: bytearray) -> None:
        buf += self.data

    @classmethod
    def pull_body(cls, buf: Reader) -> Self:
        return cls(buf.pull_rest())


# --------------------------------------------------------------------------- SK, SKF


@dataclass(slots=True)
class SK(Payload):
    """Encrypted and Authenticated payload (§3.14), opaque until decrypted.

    ``next_payload`` is the type of the first payload inside; ``data`` is
    IV | ciphertext | ICV.
    """

    TYPE = PayloadType.SK
    next_payload: PayloadType
    data: bytes = b""

    HEADER_LENGTH: ClassVar[int] = 4

    def push_body(self, buf: bytearray) -> None:
        buf += self.data

    def push_header_tail(self, buf: bytearray) -> None:
        """Fields after the generic header that are part of the associated data (none)."""


@dataclass(slots=True)
class SKF(Payload):
    """Encrypted and Authenticated Fragment payload (RFC 7383 §2.5), opaque until decrypted.

    ``next_payload`` is the first inner payload's type in fragment 1 and
    zero in the others.
    """

    TYPE = PayloadType.SKF
    next_payload: PayloadType
    fragment_number: int
    total_fragments: int
    data: bytes = b""

    HEADER_LENGTH: ClassVar[int] = 8

    def push_body(self, buf: bytearray) -> None:
        self.push_header_tail(buf)
        buf += self.data

    def push_header_tail(self, buf: bytearray) -> None:
        """Fragment Number and Total Fragments, which are part of the associated data."""
        if not 1 <= self.fragment_number <= self.total_fragments:
            raise IkeLocalError(f"fragment {self.fragment_number} of {self.total_fragments}")
        _push_uint(buf, self.fragment_number, 2, "fragment number")
        _push_uint(buf, self.total_fragments, 2, "total fragments")


_PAYLOADS: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (SA, KE, IDi, IDr, CERT, CERTREQ, AUTH, Nonce, Notify, Delete, VendorID, TSi, TSr, CP, EAP)
}


# --------------------------------------------------------------------------- payload chains


def _backfill_length(buf: bytearray, offset: int, length: int, what: str) -> None:
    if length > 0xFFFF:
        raise IkeLocalError(f"{what} of {length} octets does not fit its 16-bit length")
    _U16.pack_into(buf, offset, length)


_ENCRYPTED = (PayloadType.SK, PayloadType.SKF)


def _pull_chain(buf: Reader, first: int, *, inner: bool) -> list[Payload]:
    """Read payloads until Next Payload is zero; SK/SKF end the chain (they must be last)."""
    payloads: list[Payload] = []
    next_type = first
    of = PayloadType.of
    while next_type != PayloadType.NONE:
        kind = of(next_type)
        pos = buf._pos
        if pos + 4 > buf._end:  # the generic header (§3.2), read at once
            raise buf._short(4, "payload header")
        next_type, flags, length = _GENERIC.unpack_from(buf._data, pos)
        buf._pos = pos + 4
        critical = bool(flags & _CRITICAL)
        if length < _GENERIC.size:
            raise invalid_syntax(f"payload length {length} < 4")
        # Reader.limit's block, inline (it runs for every payload): the body is read
        # within it and must be consumed exactly.
        outer_end = buf._end
        body_end = pos + length
        if body_end > outer_end:
            raise invalid_syntax(f"{kind.name}: length {length - 4} runs past the "
                                 f"{outer_end - pos - 4} octets left")
        buf._end = body_end
        encrypted = kind in _ENCRYPTED
        if encrypted:
            if inner:
                raise invalid_syntax(f"{kind.name} inside an encrypted payload")
            payloads.append(_pull_encrypted(buf, kind, next_type, critical))
        elif (cls := _PAYLOADS.get(kind)) is not None:
            payload = cls.pull_body(buf)
            payload.critical = critical
            payloads.append(payload)
        elif critical:  # RFC 7296 §2.5
            raise UnsupportedCriticalPayloadError(kind)
        else:
            payloads.append(UnknownPayload(kind, buf.pull_rest(), critical=critical))
        if buf._pos != body_end:
            raise invalid_syntax(f"{kind.name}: {body_end - buf._pos} octets left over")
        buf._end = outer_end
        if encrypted:
            if buf.remaining:  # §3.14: the Encrypted payload MUST be the last payload
                raise invalid_syntax(f"{buf.remaining} octets after the {kind.name} payload")
            break
    if buf.remaining:
        raise invalid_syntax(f"{buf.remaining} octets after the last payload")
    return payloads


def _pull_encrypted(buf: Reader, kind: PayloadType, next_type: int, critical: bool) -> Payload:
    if kind == PayloadType.SK:
        return SK(PayloadType.of(next_type), buf.pull_rest(), critical=critical)
    number = buf.pull_uint16("fragment number")
    total = buf.pull_uint16("total fragments")
    if not 1 <= number <= total:  # RFC 7383 §2.5
        raise invalid_syntax(f"fragment {number} of {total}")
    return SKF(PayloadType.of(next_type), number, total, buf.pull_rest(), critical=critical)


def decode_payloads(first: int, data: bytes | bytearray | memoryview) -> list[Payload]:
    """The payloads of a decrypted SK payload, whose first type was in its header (§3.14)."""
    return _pull_chain(Reader(data), first, inner=True)


_ENCRYPTED_CLASSES = (SK, SKF)


def _push_chain(buf: bytearray, payloads: Sequence[Payload], *, inner: bool) -> None:
    final = len(payloads) - 1
    for i, payload in enumerate(payloads):
        last = i == final
        if isinstance(payload, _ENCRYPTED_CLASSES):
            if inner or not last:
                raise IkeLocalError(f"{payload.payload_type.name} must be the last outer payload")
            next_type = int(payload.next_payload)
        else:
            next_type = PayloadType.NONE if last else int(payloads[i + 1].payload_type)
        if not 0 <= next_type <= 0xFF:
            _pack(_GENERIC, "next payload", next_type, 0, 0)  # raises, with _pack's message
        start = len(buf)
        # The generic header (§3.2) is written once the body's length is known.
        buf += b"\x00\x00\x00\x00"
        payload.push_body(buf)
        length = len(buf) - start
        if length > 0xFFFF:
            raise IkeLocalError(f"{payload.payload_type.name} of {length} octets does not fit "
                                f"its 16-bit length")
        _GENERIC.pack_into(buf, start, next_type, _CRITICAL if payload.critical else 0, length)


def encode_payloads(payloads: Sequence[Payload]) -> tuple[PayloadType, bytes]:
    """(first payload type, chain) - the plaintext of an SK payload before padding (§3.14)."""
    buf = bytearray()
    _push_chain(buf, payloads, inner=True)
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    return first, bytes(buf)


# --------------------------------------------------------------------------- header and message


@dataclass(slots=True)
class Header:
    """The fixed IKE header (§3.1) as received: enough to find the SA before parsing payloads."""

    spi_i: bytes
    spi_r: bytes
    next_payload: PayloadType
    major_version: int
    minor_version: int
    exchange_type: ExchangeType
    flags: HeaderFlag
    message_id: int
    length: int

    @property
    def initiator(self) -> bool:
        """I flag: sent by the original initiator."""
        return bool(int(self.flags) & _I_FLAG)

    @property
    def response(self) -> bool:
        """R flag: this is a response."""
        return bool(int(self.flags) & _R_FLAG)


_I_FLAG, _V_FLAG, _R_FLAG = int(HeaderFlag.INITIATOR), int(HeaderFlag.VERSION), int(HeaderFlag.RESPONSE)
_FLAG_MASK = _I_FLAG | _V_FLAG | _R_FLAG
# The eight combinations of the three flags, built once (flag arithmetic on the enum costs
# an enum construction per operation).
_HEADER_FLAGS = {value: HeaderFlag(value) for value in range(_FLAG_MASK + 1)
                 if not value & ~_FLAG_MASK}


def decode_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check the fixed header (§3.1); the payloads are not looked at."""
    if len(data) < IKE_HEADER_LENGTH:
        raise invalid_syntax(f"{len(data)} octets is shorter than the IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != IKE_MAJOR_VERSION:  # §3.1: reject a major version we do not speak
        raise InvalidMajorVersionError(version >> 4)
    if length != len(data):
        raise invalid_syntax(f"header says {length} octets, message has {len(data)}")
    return Header(
        spi_i, spi_r, PayloadType.of(next_payload), version >> 4, version & 0x0F,
        ExchangeType.of(exchange), _HEADER_FLAGS[flags & _FLAG_MASK], message_id, length,
    )


_P = TypeVar("_P", bound=Payload)


@dataclass(slots=True)
class Message:
    """An IKE message: header fields and the payload chain as on the wire (SK opaque)."""

    spi_i: bytes
    spi_r: bytes
    exchange_type: ExchangeType
    message_id: int
    initiator: bool = False  # I flag
    response: bool = False  # R flag
    payloads: list[Payload] = field(default_factory=list)
    version_flag: bool = False  # V flag; we never set it (§3.1)
    minor_version: int = 0  # §3.1: sent as zero, ignored on receipt

    def __post_init__(self) -> None:
        if type(self.exchange_type) is not ExchangeType:
            self.exchange_type = ExchangeType.of(self.exchange_type)

    @property
    def flags(self) -> HeaderFlag:
        """The flags octet."""
        return _HEADER_FLAGS[(_I_FLAG if self.initiator else 0) | (_V_FLAG if self.version_flag else 0)
                             | (_R_FLAG if self.response else 0)]

    def find(self, payload_type: type[_P]) -> list[_P]:
        """The payloads of one class, in order."""
        return [p for p in self.payloads if isinstance(p, payload_type)]

    def notifies(self) -> list[Notify]:
        """The Notify payloads, in order."""
        return [p for p in self.payloads if isinstance(p, Notify)]


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse a whole IKE message (one UDP payload without the non-ESP marker).

    Raises :class:`~ipsecd.ike.errors.IkeProtocolError` for anything malformed,
    and nothing else.
    """
    header = decode_header(data)
    buf = Reader(data)
    buf.pull_bytes(IKE_HEADER_LENGTH)
    payloads = _pull_chain(buf, header.next_payload, inner=False)
    return Message(
        header.spi_i, header.spi_r, header.exchange_type, header.message_id,
        header.initiator, header.response, payloads,
        bool(int(header.flags) & _V_FLAG), header.minor_version,
    )


def _push_header(buf: bytearray, message: Message, next_payload: int, length: int) -> None:
    if len(message.spi_i) != 8 or len(message.spi_r) != 8:
        raise IkeLocalError("IKE SPIs are 8 octets (RFC 7296 §3.1)")
    if not 0 <= message.minor_version <= 0x0F:
        raise IkeLocalError(f"minor version {message.minor_version}")
    buf += _HEADER.pack(
        message.spi_i, message.spi_r, next_payload, IKE_MAJOR_VERSION << 4 | message.minor_version,
        _check_uint(message.exchange_type, 1, "exchange type"), int(message.flags),
        _check_uint(message.message_id, 4, "message ID"), _check_uint(length, 4, "message length"))


def encode(message: Message) -> bytes:
    """The octets of ``message``; every next-payload, length and count field is computed."""
    body = bytearray()
    _push_chain(body, message.payloads, inner=False)
    first = message.payloads[0].payload_type if message.payloads else PayloadType.NONE
    buf = bytearray()
    _push_header(buf, message, first, IKE_HEADER_LENGTH + len(body))
    return bytes(buf + body)


def encode_protected_prefix(message: Message, encrypted: SK | SKF, body_length: int) -> bytearray:
    """Header, ``message.payloads`` and the generic header of ``encrypted``, sized for its body.

    ``body_length`` is the length of IV | ciphertext | ICV that the caller
    will append.  The result is what RFC 5282 §5.1 calls the associated data
    (the IKE header through the SK payload header, RFC 7383 §2.5 for SKF);
    ``encrypted.data`` is ignored.
    """
    if any(isinstance(p, SK | SKF) for p in message.payloads):
        raise IkeLocalError("message.payloads must not contain the SK/SKF payload being built")
    outer = bytearray()
    _push_chain(outer, message.payloads, inner=False)
    if message.payloads:  # the last outer payload's Next Payload names SK/SKF
        last_start = _last_payload_offset(outer)
        outer[last_start] = encrypted.payload_type
    sk_length = encrypted.HEADER_LENGTH + body_length
    first = message.payloads[0].payload_type if message.payloads else encrypted.payload_type
    buf = bytearray()
    _push_header(buf, message, first, IKE_HEADER_LENGTH + len(outer) + sk_length)
    buf += outer
    _push_uint(buf, encrypted.next_payload, 1, "next payload")
    buf.append(_CRITICAL if encrypted.critical else 0)
    _push_uint(buf, sk_length, 2, f"{encrypted.payload_type.name} length")
    encrypted.push_header_tail(buf)
    return buf


def _last_payload_offset(chain: bytearray) -> int:
    offset = 0
    while True:
        length = int.from_bytes(chain[offset + 2:offset + 4], "big")
        if offset + length >= len(chain):
            return offset
        offset += length
