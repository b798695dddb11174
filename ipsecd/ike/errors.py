"""The exceptions of the IKEv2 codecs and crypto.

Theory of operation
-------------------
There are three kinds of failure, and a caller treats each differently:

* :class:`IkeProtocolError` - the peer sent something IKEv2 does not allow.
  It carries the notify error code (``code``) and, where RFC 7296 defines
  one, the notification data (``data``) - as aioquic's
  ``QuicConnectionError`` carries its wire code.  One place in the state
  machine turns it into a Notify payload, or, where RFC 7296 §2.21 says an
  unprotected message must not be answered, into a counted drop.  The
  message decoder raises nothing else, whatever bytes it is given.
* :class:`IkeDecryptError` - an SK/SKF payload that does not decrypt or whose
  ICV does not verify.  RFC 7296 §2.21.1: such a message is dropped silently
  and must not change any state; it is deliberately not an
  :class:`IkeProtocolError`, so a handler that answers protocol errors cannot
  answer it by accident.  ``reason`` is a stable label for the drop counter.
* :class:`IkeLocalError` - we misused the API (a value that does not fit its
  field, an algorithm we do not implement, a key of the wrong size).  As
  h11's ``LocalProtocolError``: a bug or a configuration error, never the
  peer's fault.

Messages never contain key material.
"""

from __future__ import annotations

from ipsecd.ike.constants import DhGroup, NotifyType, PayloadType

__all__ = [
    "IkeDecryptError",
    "IkeError",
    "IkeLocalError",
    "IkeProtocolError",
    "InvalidKePayloadError",
    "InvalidMajorVersionError",
    "InvalidPublicValueError",
    "UnsupportedCriticalPayloadError",
    "invalid_syntax",
]


class IkeError(Exception):
    """Base class of every IKE codec and crypto error."""


class IkeProtocolError(IkeError):
    """The peer violated RFC 7296; ``code`` is the notify error type to report.

    ``data`` is the Notification Data that goes with ``code`` (empty for
    most errors).  ``reason`` is for logs only and is never sent.
    """

    def __init__(self, code: NotifyType, reason: str = "", data: bytes = b"") -> None:
        self.code = NotifyType(code)
        self.reason = reason
        self.data = bytes(data)
        super().__init__(f"{self.code.name}: {reason}" if reason else self.code.name)


class UnsupportedCriticalPayloadError(IkeProtocolError):
    """An unknown payload with the critical bit set (RFC 7296 §2.5).

    The notification data is the one-octet type of that payload (§3.10.1).
    """

    def __init__(self, payload_type: int) -> None:
        self.payload_type = PayloadType(payload_type)
        super().__init__(
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            f"unknown payload type {int(payload_type)} marked critical",
            bytes([int(payload_type) & 0xFF]),
        )


class InvalidMajorVersionError(IkeProtocolError):
    """A message whose major version is not 2 (RFC 7296 §3.1, §2.5).

    ``major_version`` lets a dispatcher hand IKEv1 (major version 1) to the
    IKEv1 code instead of answering.
    """

    def __init__(self, major_version: int) -> None:
        self.major_version = major_version
        super().__init__(NotifyType.INVALID_MAJOR_VERSION, f"major version {major_version}")


class InvalidKePayloadError(IkeProtocolError):
    """The KE payload is for a group other than the one we selected (RFC 7296 §1.2, §3.10.1).

    The notification data is the two-octet number of the group we want.
    """

    def __init__(self, wanted: DhGroup, received: int) -> None:
        self.wanted = DhGroup(wanted)
        self.received = DhGroup(received)
        super().__init__(
            NotifyType.INVALID_KE_PAYLOAD,
            f"KE payload for group {int(received)}, selected group {int(wanted)}",
            int(wanted).to_bytes(2, "big"),
        )


class InvalidPublicValueError(IkeProtocolError):
    """A key exchange public value that fails the RFC 6989 checks (or has the wrong length).

    The value itself is malformed, so the code is INVALID_SYNTAX.
    """

    def __init__(self, group: int, reason: str) -> None:
        self.group = DhGroup(group)
        super().__init__(NotifyType.INVALID_SYNTAX, f"group {int(group)}: {reason}")


def invalid_syntax(reason: str) -> IkeProtocolError:
    """An INVALID_SYNTAX error (RFC 7296 §3.10.1): the message is malformed."""
    return IkeProtocolError(NotifyType.INVALID_SYNTAX, reason)


class IkeDecryptError(IkeError):
    """An SK/SKF payload that fails integrity or decryption: drop silently (RFC 7296 §2.21.1).

    ``reason`` is one of ``"short"`` (too short for IV and ICV),
    ``"alignment"`` (ciphertext not a whole number of blocks), ``"icv"``
    (integrity check or AEAD tag failed), ``"padding"`` (pad length larger
    than the plaintext) or ``"not-encrypted"`` (no SK/SKF payload where one
    was required).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class IkeLocalError(IkeError, ValueError):
    """We asked for something impossible: a bug or a configuration error, not the peer's fault."""
