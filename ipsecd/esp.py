"""ESP (RFC 4303): encapsulation and decapsulation of IP packets, in place.

Theory of operation
===================

Three kinds of state, kept apart so the multi-process datapath can place each
where it must live (see :mod:`ipsecd.replay`):

* :class:`EspContext` - built once per SA from a :class:`SecurityAssociation`:
  the cipher and integrity objects, salt, SPI, outer header template, mode
  and UDP encapsulation.  It holds no sequence state.  (The one mutable thing
  inside is the CBC chaining state, per process, see "IVs" below.)
* the outbound sequence number - passed *in* to every encapsulation
  (:class:`ipsecd.replay.SequenceCounter` allocates them in a single process);
* the inbound anti-replay window - a :class:`ipsecd.replay.ReplayWindow`
  passed *in* to every decapsulation.

Buffers, headroom and tailroom
------------------------------
The fast path works in one buffer without copying the payload::

    ctx.encap_into(buf, start, end, seq) -> (drop, new_start, new_end)
    ctx.decap_into(buf, start, end, window) -> (drop, inner_start, inner_end, next_header)

``buf`` is a writable ``memoryview`` of bytes (over a ``bytearray``, an mmap'ed
ring, a shared-memory block); a ``bytearray`` is accepted too and wrapped per
call, which costs a little (and gets none of the fast paths' per-buffer
caching, see "Speed").  Offsets are absolute indexes into ``buf``.

For :meth:`EspContext.encap_into` the plaintext IP packet is ``buf[start:end]``
and the caller must leave ``ctx.headroom`` bytes free before ``start`` (outer
IP header in tunnel mode, UDP header with RFC 3948 encapsulation, ESP header,
IV) and ``ctx.tailroom`` bytes after ``end`` (padding, pad length, next header,
ICV, and scratch room: what the CBC call needs, an AEAD's nonce and AAD; bytes
after the ESP packet are left undefined).  The ESP packet is written to
``buf[new_start:new_end]`` with ``new_start == start - ctx.headroom`` always.
The payload is encrypted where it lies; in transport mode only the IP header
(with IPv6 extension headers) moves, ``headroom`` bytes towards the front.

:meth:`EspContext.decap_into` takes the received IP packet in ``buf[start:end]``
(bytes past the IP total length, e.g. Ethernet padding, are ignored) and
decrypts it in place; the inner packet is ``buf[inner_start:inner_end]``: in
tunnel mode the inner IP packet as sent (any TFC padding, RFC 4303 §2.7,
trimmed off), in transport mode the IP header moved up against the payload
with the protocol restored and the lengths and IPv4 checksum fixed.  After a
drop the buffer contents are undefined.  A CBC SA decrypts fastest when the
buffer extends ``ctx.block_bytes - 1`` bytes past the end of the ciphertext;
otherwise one extra copy is made.

Drops, not exceptions
---------------------
Every per-packet failure is returned as a :class:`ipsecd.drops.Drop` reason
(never raised): a packet too short for what it claims is ``RUNT``, a bad IP or
UDP header (the outer IPv4 header checksum is verified here: the datapath
receives below the kernel's IP layer, RFC 1122 §3.2.1.2; an RFC 3948 packet
must be addressed to the SA's UDP port), an IP fragment or a wrong protocol
``MALFORMED``, an SPI that is not
this SA's ``UNKNOWN_SPI``, the replay window's verdict ``REPLAY``, a failed tag
or HMAC ``ICV``, pad bytes that are not 1, 2, 3, ... or a pad length longer
than the payload ``PADDING`` (RFC 4303 §2.4: the receiver SHOULD inspect the
padding, and we always build it that way), next header 59 ``DUMMY`` (RFC 4303
§2.6, after the ICV verified and the window moved: it is a genuine packet),
a tunnel-mode next header other than 4/41 ``BAD_NEXT_HEADER`` (for next header
108, IPComp inside tunnel-mode ESP as Linux and strongSwan send it, RFC 3173,
the result still locates the payload: ``(BAD_NEXT_HEADER, payload_start,
payload_end, 108)``, so a caller that does IPComp can continue where the
codec cannot - it has no inner IP packet to return).  Outbound, a
sequence number 0 or beyond the SA's space is ``SEQ_OVERFLOW``.  Only
configuration errors raise (:class:`ipsecd.transforms.TransformError`, when the
context is built).  Outer IP fragments must be reassembled before
decapsulation (RFC 4303 §3.4.1); a fragment is ``MALFORMED`` here.

Order of inbound checks (RFC 4303 §3.4): headers and lengths, SPI, replay
window check, ICV (an AEAD verifies while decrypting; HMAC is compared with
:func:`hmac.compare_digest` before anything is decrypted), window update,
decryption (CBC), padding, next header.

Transforms
----------
* Combined mode (RFC 4106 AES-GCM-16, RFC 7634 ChaCha20-Poly1305): nonce =
  4-byte salt (the last 4 bytes of the key material) + 8-byte IV; AAD = SPI +
  sequence number, or SPI + high 32 bits + low 32 bits with ESN (RFC 4106 §5,
  RFC 7634 §2.1).  ``AESGCM.encrypt_into``/``decrypt_into`` run in place.
* AES-GMAC (RFC 4543): integrity only.  The payload travels in clear and the
  16-byte tag is GCM over an empty plaintext with AAD = SPI, sequence number
  (ESN: both halves), IV and the payload with its trailer (RFC 4543 §3.2).
* CBC (RFC 3602 AES; legacy 3DES, DES, Blowfish, CAST-128) and NULL (RFC
  2410) with HMAC (RFC 4868 SHA-2, RFC 2404 SHA1-96, RFC 2403 MD5-96): the
  ICV is the truncated HMAC over ESP header + IV + ciphertext, with ESN the
  high 32 bits appended for the ICV only (RFC 4303 §2.2.1, RFC 4304 §2) -
  they are written into the ICV's own space, MACed in one contiguous run, then
  overwritten by the ICV.  An SA may also have CBC without integrity (for
  ESP-under-AH bundles of old setkey configurations); it logs a warning.

IVs
---
* AEAD and GMAC: the IV is the 64-bit sequence number (XOR an optional
  per-SA constant ``iv_mask``), unique per SA and key as RFC 4106 §3.1 and
  RFC 7634 §2 require, because a sequence number is never used twice.
* CBC: RFC 3602 §2 wants unpredictable IVs.  Each context keeps *one* CBC
  encryptor for the SA's life; for every packet the caller's sequence number
  is written into the IV slot and the slot is encrypted together with the
  payload.  The first output block, ``E_K(C_prev XOR seq)`` - with ``C_prev``
  the last ciphertext block this context produced - becomes the IV on the
  wire, and CBC then chains the payload from it exactly as if it had been
  chosen beforehand.  Nobody without the key can predict that block (it is a
  block-cipher output on an input never encrypted before, with overwhelming
  probability), so this is the "encrypt a counter" construction without a
  cipher object or ``os.urandom`` call per packet.  Decryption likewise keeps
  one CBC decryptor: it is fed IV + ciphertext and the first output block is
  discarded.  Each process has its own chain; nothing needs sharing.

Speed
-----
Per-packet cost is dominated by the number of Python operations, not by
the crypto (see ``python -m ipsecd.bench codec``).  So the most common
configuration - AEAD in tunnel mode over IPv4 - gets straight-line fast paths
generated per SA from the source templates ``_FAST_ENCAP_TEMPLATE`` /
``_FAST_DECAP_TEMPLATE``: the SA's constants (SPI, limits, offsets, masks) are
compiled in as literals and the branches of other configurations (ESN, UDP)
disappear; the SA's objects are globals of the fast path's own namespace
(cheaper per call than closure variables).  Encapsulation: one ``struct``
call reads the inner header's first 8 bytes; per such key a cached layout
supplies padding, offsets and the outer header (with DF set the IPv4 ID is 0,
so outer header + SPI is prebuilt and one ``pack_into`` adds sequence number
and IV); a second ``pack_into`` writes what follows the payload in one go:
trailer, the ICV's place, and nonce and AAD, which live in the tailroom behind
the ICV.  Decapsulation: one ``struct`` call reads outer header + SPI as bytes,
sequence number and IV, the header checked (version, options, ECN, fragment,
protocol, header checksum, SPI, length, alignment) once per distinct value;
the AAD is the packet's own SPI and sequence number, the nonce salt + IV; the
in-order case of the replay window (check, then one store of ``T``, see
:mod:`ipsecd.replay`) is inline; one more ``struct`` call reads the inner
header's first word and the trailer, compared with what the last packet of
that outer header had.  Both paths also keep, for the buffer and offset they
were last called with twice in a row (the datapath reads every packet into
the same place), the memoryview slices the AEAD call needs and the result
tuple - which keeps that buffer exported until
:meth:`EspContext.forget_buffers` or a call with another buffer - and check
the last packet's key first.  Every packet the fast paths do not cover
(another inner version, options, ECN marks, a runt, ...) takes the general
path, which produces identical bytes and verdicts; the tests check both
against each other, also for streams through one buffer.  What remains is
the interpreter: some 50 bytecodes per packet outside the AEAD call, which
also make the AEAD call itself slower than in a tight loop of its own.

Tunnel and transport mode
-------------------------
Tunnel mode adds an outer IPv4 or IPv6 header from the SA's addresses (either
family over either): TTL/hop limit 64, DSCP copied from the inner packet, ECN
copied as RFC 6040 §4.1 normal mode says; IPv4 DF copied from an inner IPv4
packet and set for an inner IPv6 packet (``df="copy"``, or "set"/"clear"),
identification 0 when DF is set (an atomic datagram, RFC 6864 §4.1, as Linux
does) and the low 16 bits of the sequence number otherwise.  On decapsulation the
outer ECN is merged into the inner header by RFC 6040 §4.2 (CE over a Not-ECT
inner packet is dropped as ``Drop.ECN``).  Transport mode inserts ESP after
the IPv4 header (options kept) or after IPv6 hop-by-hop/routing/fragment
headers (:func:`ipsecd.packet.ipv6_ipsec_offset`).  Mode ``any`` (setkey's
default) is treated as transport, as Linux does.

UDP encapsulation (RFC 3948): a UDP header with the SA's ports precedes ESP,
its checksum 0 over IPv4 (RFC 3948 §2.1) and computed over IPv6.  Inbound the
UDP checksum is not verified (the ICV protects the payload).  A context with
encapsulation accepts only UDP-encapsulated packets, one without only bare
ESP.  The incremental fix of inner TCP/UDP checksums for transport mode
behind NAT (RFC 3948 §3.1.2) is not done here.
"""
from __future__ import annotations

import enum
import functools
import hmac
import logging
import string
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType
from typing import Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecd.drops import Drop
from ipsecd.iana import EncrId, IntegId, IpProto
from ipsecd.packet import (
    IPV4_DF,
    PacketError,
    checksum,
    decapsulated_ecn,
    ecn_of,
    ipv6_ipsec_offset,
    set_ecn,
)
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode, SecurityAssociation, UdpEncap
from ipsecd.transforms import (
    EncAlgo,
    IntegAlgo,
    TransformError,
    check_enc_key,
    enc_algo,
    integ_algo,
    warn_legacy,
)

__all__ = [
    "Buffer",
    "Decapsulated",
    "EspContext",
    "EspPeek",
    "Inbound",
    "peek",
]

log = logging.getLogger("ipsecd.esp")

#: Tests set this to re-raise unexpected exceptions instead of counting them
#: as ``MALFORMED``: the codec must never raise, and the fuzzers prove it.
RAISE_UNEXPECTED = False

Buffer = memoryview | bytearray
EncapResult = tuple[Drop, int, int]
DecapResult = tuple[Drop, int, int, int]
EncapFn = Callable[[Buffer, int, int, int], EncapResult]
DecapFn = Callable[[Buffer, int, int, ReplayWindow], DecapResult]
DfPolicy = Literal["copy", "set", "clear"]

_M32 = 0xFFFFFFFF
_ESP = IpProto.ESP.value
_UDP = IpProto.UDP.value
_NONXT = IpProto.IPV6_NONXT.value
_IPCOMP = IpProto.IPCOMP.value

_ESP_HDR = struct.Struct("!II")  # SPI, sequence number (low 32 bits)
_ESP_HDR_IV64 = struct.Struct("!IIQ")  # SPI, sequence number, 8-byte counter IV
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U64X2 = struct.Struct("!QQ")
_NONCE_AAD = struct.Struct("!QII")  # IV into the nonce, then SPI + seq as AAD
_NONCE_AAD_ESN = struct.Struct("!QIII")  # IV, then SPI + seq high + seq low
_AAD_ESN = struct.Struct("!III")  # SPI, seq high, seq low (RFC 4106 §5)
_NONCE_AAD_ESN_IV = struct.Struct("!8sIII")  # the same, with the IV as it is on the wire
_UDP_HDR = struct.Struct("!HHHH")
_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HDR = struct.Struct("!IHBB16s16s")
# Fast paths: the start of an outer IPv4 header (version/IHL, TOS, total length).
_IPV4_START = struct.Struct("!BBH")
# ... and checking one: the outer IPv4 header as two 64-bit words and the
# destination address (their sum gives the header checksum), then the SPI, or
# the UDP destination port and length.
_IN_V4_SPI = struct.Struct("!QQII")
_IN_V4_UDP = struct.Struct("!QQI2xHH")
# What the encapsulation fast path knows per inner first word: inner length,
# the pack_into and bytes that write what follows the payload (trailer, ICV
# place, nonce, AAD), ciphertext length, outer header (+ SPI) prebuilt or in
# two parts, and the checksum (-1: in the header) or its partial sum.
_EncapShape = tuple[int, Callable[..., None], bytes, int, "bytes | tuple[bytes, bytes]", int]
# The encapsulation fast path assembles nonce (salt + IV) and AAD (SPI, [high
# 32 bits,] sequence number) in the tailroom, after the ICV.
_FAST_NONCE_AAD = 12 + 8
_FAST_NONCE_AAD_ESN = 12 + 12

# RFC 4303 §2.4: pad bytes are 1, 2, 3, ...; index = pad length.
_PADS = tuple(bytes(range(1, n + 1)) for n in range(256))
# Pad bytes followed by the pad length byte, for one slice assignment.
_PADS_AND_LENGTH = tuple(_PADS[n] + bytes((n,)) for n in range(256))

_BITS = (1, 2, 4, 8, 16, 32, 64, 128)
_IPV6_EXT = frozenset((IpProto.HOPOPT.value, IpProto.IPV6_ROUTE.value, IpProto.IPV6_OPTS.value))
_LAYOUT_CACHE_MAX = 4096


class _Kind(enum.Enum):
    AEAD = "aead"  # AES-GCM, ChaCha20-Poly1305
    GMAC = "gmac"  # AES-GMAC, integrity only
    CBC = "cbc"  # block cipher in CBC mode (+ HMAC or nothing)
    NULL = "null"  # NULL encryption + HMAC


_AEAD = _Kind.AEAD
_GMAC = _Kind.GMAC
_CBC = _Kind.CBC

# Pre-built results: tuples are immutable, so the drop paths allocate nothing.
_E_RUNT = (Drop.RUNT, 0, 0)
_E_MALFORMED = (Drop.MALFORMED, 0, 0)
_E_SEQ_OVERFLOW = (Drop.SEQ_OVERFLOW, 0, 0)
_D_RUNT = (Drop.RUNT, 0, 0, 0)
_D_MALFORMED = (Drop.MALFORMED, 0, 0, 0)
_D_UNKNOWN_SPI = (Drop.UNKNOWN_SPI, 0, 0, 0)
_D_REPLAY = (Drop.REPLAY, 0, 0, 0)
_D_ICV = (Drop.ICV, 0, 0, 0)
_D_PADDING = (Drop.PADDING, 0, 0, 0)
_D_DUMMY = (Drop.DUMMY, 0, 0, 0)
_D_BAD_NEXT_HEADER = (Drop.BAD_NEXT_HEADER, 0, 0, 0)
_D_ECN = (Drop.ECN, 0, 0, 0)
_OK = Drop.OK


# -- fast-path templates -------------------------------------------------------
#
# The fast paths are generated per SA: each template below is filled in with
# the SA's constants (``$NAME``: SPI, sequence limit, headroom, offsets, masks,
# ESN and UDP switches) by :func:`_render` and compiled once, when the
# context is built.  The constants then are literals in the bytecode
# (LOAD_CONST rather than a closure or global lookup) and the branches of the
# other configurations (``if False:``) are removed by the compiler.  Only ints,
# bools and bytes from the SA's configuration are ever substituted: nothing
# derived from packet bytes is compiled.  The code runs in a namespace of its
# own per SA (:meth:`EspContext._build`), filled with the objects it needs
# (functions, buffers, Drop results); its state (the caches below) is that
# namespace's globals.  It defines the fast function and ``forget()``.
#
# Both paths keep, for the last buffer and offset they were called with (as
# the datapath does: every packet read into the same place), the memoryview
# slices the AEAD call needs and the result tuple, keyed by what determines
# them (the inner header's first word, the outer total length); a different
# buffer or offset takes the computing path, and the cache is filled from the
# second call at the same place.  :meth:`EspContext.forget_buffers` drops it.

# The cache of one place (buffer and offset) that both fast paths keep; the
# fast function itself tests ``key == last_key and buf is view_buf and start
# == view_start`` first.
_PLACE_CACHE_TEMPLATE = '''\
views = {}  # key -> entry, valid for buffer view_buf at offset view_start
view_buf = None
view_start = -1
last_key = None  # the key of the last packet at view_buf/view_start, and views[last_key]
last_entry = None

def forget():
    global view_buf, view_start, last_key, last_entry
    views.clear()
    view_buf = None
    view_start = -1
    last_key = last_entry = None

def cached(buf, start, key):
    # The entry kept for ``key`` if buf[start:] is the place, else None.
    global last_key, last_entry
    if buf is view_buf and start == view_start:
        entry = views.get(key)
        if entry is not None:
            last_key, last_entry = key, entry
        return entry
    return None

def remember(buf, start, key, entry):
    # Keep ``entry`` for ``key`` if buf[start:] is the place; a memoryview at another
    # place becomes the place (kept from its second call on).
    global view_buf, view_start, last_key, last_entry
    if buf is view_buf and start == view_start:
        if len(views) >= $CACHE_MAX:
            views.clear()
        views[key] = entry
        last_key, last_entry = key, entry
    elif buf.__class__ is memoryview:
        views.clear()
        view_buf = buf
        view_start = start
        last_key = last_entry = None
'''

_FAST_ENCAP_TEMPLATE = _PLACE_CACHE_TEMPLATE + '''\

def prepare(buf, start, end, key):
    # The entry for an inner packet whose first 8 bytes, masked, are ``key`` (None: general path).
    shape = shapes.get(key) or shape_of(key)
    if shape is None or end - start != shape[0]:
        return None
    _, pack_tail, tail, ct_len, header, csum = shape
    view = buf if buf.__class__ is memoryview else memoryview(buf)
    sealed_end = start + ct_len + 16
    # Behind the ICV, in the tailroom: the nonce (salt + IV) and the AAD.
    entry = (end, pack_tail, tail, header, csum, view[start : start + ct_len], view[start:sealed_end],
             view[sealed_end : sealed_end + 12], view[sealed_end + 12 : sealed_end + $NONCE_AAD],
             (OK, start - $HEADROOM, sealed_end))
    remember(buf, start, key, entry)
    return entry

def encap_into(buf, start, end, seq):
    if not 0 < seq <= $LIMIT:
        return E_SEQ_OVERFLOW
    try:
        # Inner version/IHL, TOS, total length [and DF]: all the layout depends on.
        key = unpack_key(buf, start)[0] & $KEY_MASK
    except Exception:
        return general(buf, start, end, seq)
    try:
        if key == last_key and buf is view_buf and start == view_start:
            entry_end, pack_tail, tail, header, csum, plaintext, sealed, nonce, aad, result = last_entry
        else:
            entry = cached(buf, start, key) or prepare(buf, start, end, key)
            if entry is None:
                return general(buf, start, end, seq)
            entry_end, pack_tail, tail, header, csum, plaintext, sealed, nonce, aad, result = entry
        if end != entry_end:
            return general(buf, start, end, seq)
        if $PLAIN:
            seq_low = iv = seq
        else:
            seq_low = seq & 0xFFFFFFFF
            iv = seq ^ $IV_MASK
        if csum < 0:  # outer IPv4 header (DF, ID 0) [+ UDP] + SPI prebuilt
            pack_atomic(buf, start - $HEADROOM, header, seq_low, iv)
        else:  # ID = low bits of the sequence number, checksum completed here
            ident = seq & 0xFFFF
            csum += ident
            csum = (csum & 0xFFFF) + (csum >> 16)
            csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
            pack_ident(buf, start - $HEADROOM, header[0], ident, $MIDDLE, csum, header[1], seq_low, iv)
        # One write after the payload: the trailer (RFC 4303 §2.4: pad 1, 2, ..., pad length,
        # next header 4), the ICV's place (zeros, overwritten), the salt, IV, SPI and
        # sequence number: nonce and AAD (RFC 4106 §4, §5).
        if $ESN:
            pack_tail(buf, end, tail, iv, $SPI, seq >> 32, seq_low)
        else:
            pack_tail(buf, end, tail, iv, $SPI, seq_low)
        encrypt_into(nonce, plaintext, aad, sealed)
        return result
    except Exception:
        if esp_module.RAISE_UNEXPECTED:
            raise
        log.exception("unexpected error in ESP encapsulation (SPI %#x)", $SPI)
        return E_MALFORMED
'''

_FAST_DECAP_TEMPLATE = _PLACE_CACHE_TEMPLATE + '''\
# Here the key is the outer header [+ UDP header] + SPI, as bytes.
headers = {}  # outer header bytes -> outer total length, for headers that passed check_header
checks = {}  # (inner length, trailer length) -> unpack_from reading what the entry expects

def check_header(header):
    # The outer total length if ``header`` is the common case, else 0: the
    # general path decides.  Not the common case: IP options or ECN marks,
    # a fragment, another protocol, a bad header checksum (the sum of the
    # words, RFC 1071: 2^16 = 1 mod 0xFFFF), another SPI or UDP port, too
    # short, misaligned (RFC 4303 §2.4).
    if $UDP:
        head, tail, dst, port, udp_length = unpack_fields(header)
    else:
        head, tail, dst, spi = unpack_fields(header)
    total = head >> 32 & 0xFFFF
    if (
        head & $HEAD_MASK != $HEAD_EXPECT or tail & 0xFF000000000000 != $PROTO_EXPECT
        or (head + tail + dst) % 0xFFFF or total < $MIN_TOTAL
    ):
        return 0
    if $UDP:
        if port != $LOCAL_PORT or udp_length != total - 20:
            return 0
    elif spi != $SPI:
        return 0
    if len(headers) >= $CACHE_MAX:
        headers.clear()
    headers[header] = total
    return total

def prepare(buf, start, header):
    # The entry for a packet with this outer header at buf[start:] (None: the general path):
    # (end, ciphertext + tag, plaintext, AAD, inner check, its expected value, result).
    total = headers.get(header) or check_header(header)
    if not total:
        return None
    view = buf if buf.__class__ is memoryview else memoryview(buf)
    end = start + total
    # Without ESN the AAD is the SPI and sequence number as they are in the packet (RFC 4106 §5).
    entry = (end, view[start + $CT : end], view[start + $CT : end - 16],
             aad if $ESN else view[start + $CT - 16 : start + $CT - 8], unpack_word, None, None)
    remember(buf, start, header, entry)
    return entry

def finish(buf, start, end, header):
    # Trailer and inner header when the cached expectation is not met.
    ct = start + $CT
    icv_at = end - 16
    word = unpack_word(buf, ct)[0]
    inner_len = word & 0xFFFF
    trailer_len = icv_at - ct - inner_len
    # The usual trailer: pad bytes 1, 2, ..., pad length, next header 4,
    # right after the inner IPv4 packet.
    if (
        word >> 28 == 4 and 2 <= trailer_len <= $MAX_TRAILER and inner_len >= 20
        and buf[icv_at - trailer_len : icv_at] == trailers[trailer_len]
    ):
        result = (OK, ct, ct + inner_len, 4)
        entry = cached(buf, start, header)
        if entry is not None:
            # Next time one unpack_from checks all of it: the inner header's
            # first word (version, IHL, TOS, length) and the trailer must be
            # what this packet has.
            key = (inner_len, trailer_len)
            check = checks.get(key)
            if check is None:
                if len(checks) >= $CACHE_MAX:
                    checks.clear()
                check = checks[key] = inner_check(inner_len, trailer_len)
            remember(buf, start, header, (*entry[:4], check, check(buf, ct), result))
        return result
    # Anything else (IPv6 inside, TFC padding, errors), as the general path.
    pad = buf[icv_at - 2]
    next_header = buf[icv_at - 1]
    payload_end = icv_at - 2 - pad
    if payload_end < ct or (pad and buf[payload_end : icv_at - 2] != pads[pad]):
        return D_PADDING
    if next_header == 4:
        if word >> 28 != 4 or inner_len < 20 or inner_len > payload_end - ct:
            return D_MALFORMED
    elif next_header == 41:
        inner_len = 40 + (buf[ct + 4] << 8 | buf[ct + 5])
        if buf[ct] >> 4 != 6 or inner_len > payload_end - ct:
            return D_MALFORMED
    elif next_header == $NONXT:
        return D_DUMMY
    elif next_header == $IPCOMP:
        return (D_BAD_NEXT_HEADER[0], ct, payload_end, next_header)
    else:
        return D_BAD_NEXT_HEADER
    return (OK, ct, ct + inner_len, next_header)

def decap_into(buf, start, end, window):
    try:
        if $UDP:  # the UDP checksum is not checked (RFC 3948 §2.1), nor part of the key
            header, spi, seq_low, iv = unpack_header(buf, start)
        else:
            header, seq_low, iv = unpack_header(buf, start)
    except Exception:
        return general(buf, start, end, window)
    try:
        # Outer IPv4 header [+ UDP header] [+ SPI]: checked once per distinct value.
        if header == last_key and buf is view_buf and start == view_start:
            packet_end, data, out, packet_aad, check, expect, result = last_entry
        else:
            entry = cached(buf, start, header) or prepare(buf, start, header)
            if entry is None:
                return general(buf, start, end, window)
            packet_end, data, out, packet_aad, check, expect, result = entry
        if end < packet_end:
            return general(buf, start, end, window)
        if $UDP:
            if spi != $SPI:
                return general(buf, start, end, window)
        # RFC 4303 §3.4.3: the window is checked before the ICV and moves
        # only after it verified.  In order (the usual case) a number above
        # T is always fine, and recording it is storing T (ReplayWindow:
        # the in-order run); everything else asks the window.
        words = window.words
        top = words[0]
        if $ESN:
            drop, seq = window.check(seq_low)
            if drop:
                return D_REPLAY
            pack_esn(scratch, 4, iv, $SPI, seq >> 32, seq_low)
            try:
                decrypt_into(nonce, data, packet_aad, out)
            except InvalidTag:
                return D_ICV
            if seq == top + 1:
                words[0] = seq
            else:
                window.update(seq)
        else:
            if seq_low <= top and window.check(seq_low)[0]:
                return D_REPLAY
            try:
                decrypt_into(salt + iv, data, packet_aad, out)  # nonce: salt + IV (RFC 4106 §4)
            except InvalidTag:
                return D_ICV
            if seq_low == top + 1:
                words[0] = seq_low  # before the packet is accepted: a restart never takes it again
            else:
                window.update(seq_low)
        if check(buf, start + $CT) == expect:
            return result  # inner IPv4 of the length and trailer seen before
        return finish(buf, start, packet_end, header)
    except Exception:
        if esp_module.RAISE_UNEXPECTED:
            raise
        log.exception("unexpected error in ESP decapsulation (SPI %#x)", $SPI)
        return D_MALFORMED
'''


def _inner_check(inner_len: int, trailer_len: int) -> Callable[[Buffer, int], tuple[int, int | bytes]]:
    """Reads, at the start of a decrypted tunnel-mode payload, what identifies an inner IPv4
    packet of ``inner_len`` bytes followed by a trailer of ``trailer_len`` bytes: the inner
    header's first word (version, IHL, TOS, total length) and the trailer (pad bytes, pad
    length, next header), as an int where it fits one (cheaper to compare)."""
    trailer = {2: "H", 4: "I"}.get(trailer_len, f"{trailer_len}s")
    return struct.Struct(f"!I{inner_len - 4}x{trailer}").unpack_from


FastPaths = Literal["both", "encap", "decap"]


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    """One Struct per format (they are immutable): SAs of one shape share theirs."""
    return struct.Struct(fmt)


# The fast paths' helpers that depend on the SA's shape only, made once and shared by the
# SAs' namespaces: every SA a worker takes up would otherwise make its own bound methods
# and tuples, which the cyclic collector then walks for as long as the SA lives.  (Bounded:
# the arguments are an alignment of 4, 8 or 16 and a few switches.)
_UNPACK_KEY = _U64.unpack_from
_UNPACK_WORD = _U32.unpack_from
_UNPACK_FIELDS = _IN_V4_SPI.unpack
_UNPACK_FIELDS_UDP = _IN_V4_UDP.unpack
_UNPACK_HEADER = struct.Struct("!24sI8s").unpack_from  # outer header + SPI, seq, IV
_UNPACK_HEADER_UDP = struct.Struct("!26s2xII8s").unpack_from  # ... + UDP header
_PACK_ESN = _NONCE_AAD_ESN_IV.pack_into


@functools.lru_cache(maxsize=64)
def _pack_into(fmt: str) -> Callable[..., None]:
    return _struct(fmt).pack_into


@functools.lru_cache(maxsize=64)
def _encap_tails(align: int, esn: bool) -> tuple[tuple[bytes, ...], tuple[Callable[..., None], ...]]:
    """Per pad length: the trailer and the ICV's place (the salt follows), and the pack_into
    that writes them with the salt, IV, SPI and sequence number (encapsulation fast path)."""
    heads = tuple(_PADS_AND_LENGTH[n] + b"\x04" + bytes(16) for n in range(align))
    aad = "III" if esn else "II"
    return heads, tuple(_pack_into(f"!{len(head) + 4}sQ{aad}") for head in heads)


@functools.lru_cache(maxsize=64)
def _decap_trailers(align: int) -> tuple[bytes, ...]:
    """Index = pad length + 2: pad bytes, pad length, next header 4."""
    return (b"", b"", *(_PADS_AND_LENGTH[n] + b"\x04" for n in range(align)))


def _render(template: str, constants: dict[str, int | bytes | bool]) -> str:
    """``template`` with each ``$NAME`` replaced by the literal of an SA constant."""
    for name, value in constants.items():
        if not isinstance(value, (int, bytes)):  # bool is an int
            raise TypeError(f"{name}: only int, bool and bytes constants are compiled")
    return string.Template(template).substitute({name: repr(value) for name, value in constants.items()})


# -- compiled fast paths, shared by the SAs of one shape -------------------------
#
# Compiling a template costs about 1 ms, and IKE installs SAs of the same
# shape one after another (the Child SAs of a connection differ only in SPI).
# So the code is compiled once per template and set of constants *other than*
# the ones in ``_PER_SA``, which differ per SA: they are compiled as
# placeholder literals (ints above 64 bits, which no SA constant is), and the
# placeholders are then swapped for the SA's values in the code objects'
# constants (``code.replace``): the same instructions loading the same values
# as a compilation with the SA's values.  That holds while the templates use
# these constants as plain operands (passed, compared, XORed with a variable),
# not in an expression the compiler folds; so the template is compiled with
# two sets of placeholders, and cached only if swapping the first set for
# the second gives the second compilation exactly - otherwise every SA is
# compiled on its own, as before.  tests/test_esp_fastpath.py checks that
# patched code does what a direct compilation does.
_PER_SA = ("SPI", "IV_MASK")
_PLACEHOLDERS = tuple({name: (1 << 80) + base + k for k, name in enumerate(_PER_SA)}
                      for base in (0x5555_5555_5555_5555, 0xAAAA_AAAA_AAAA_AAAA))
_FILENAME = "<ipsecd.esp fast path, SPI {:#x}>"
_CODE_CACHE: dict[tuple[object, ...], tuple[_Plan, dict[str, int]] | None] = {}
_CODE_CACHE_MAX = 256


def _patch(value: object, values: dict[int, int], filename: str) -> object:
    """``value`` (a code object, or one of its constants) with the ints of ``values``
    replaced, in nested code objects and constant tuples too."""
    if isinstance(value, CodeType):
        return value.replace(co_filename=filename, co_consts=tuple(
            _patch(c, values, filename) for c in value.co_consts))
    if type(value) is int:
        return values.get(value, value)
    if type(value) is tuple:
        return tuple(_patch(c, values, filename) for c in value)
    if type(value) is frozenset:
        return frozenset(_patch(c, values, filename) for c in value)
    return value


# How to patch one cached code object (_plan): the code object and, per constant that
# changes, its index and what goes there - a placeholder (an int), the plan of a nested code
# object, or a constant tuple / frozenset holding placeholders (patched by _patch).  Constants
# that hold no placeholder and no code object are shared as they are; only the filename of
# every code object changes.  This does per SA what _patch does, without walking every
# constant of every code object again.
_Plan = tuple[CodeType, tuple[tuple[int, object], ...]]


def _plan(code: CodeType, placeholders: frozenset[int]) -> _Plan:
    subs: list[tuple[int, object]] = []
    for i, c in enumerate(code.co_consts):
        if isinstance(c, CodeType):
            subs.append((i, _plan(c, placeholders)))
        elif type(c) is int:
            if c in placeholders:
                subs.append((i, c))
        elif type(c) in (tuple, frozenset) and _holds(c, placeholders):
            subs.append((i, _Nested(c)))
    return code, tuple(subs)


class _Nested:
    """A constant tuple or frozenset with a placeholder inside (patched whole by _patch)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def _holds(value: object, placeholders: frozenset[int]) -> bool:
    if isinstance(value, CodeType):
        return True
    if type(value) is int:
        return value in placeholders
    if type(value) in (tuple, frozenset):
        return any(_holds(c, placeholders) for c in value)  # type: ignore[attr-defined]
    return False


def _apply(plan: _Plan, values: dict[int, int], filename: str) -> CodeType:
    """The code of ``plan`` with the placeholders of ``values`` replaced and ``filename``
    (what ``_patch(code, values, filename)`` gives)."""
    code, subs = plan
    if not subs:
        return code.replace(co_filename=filename)
    consts = list(code.co_consts)
    for i, sub in subs:
        if type(sub) is int:
            consts[i] = values.get(sub, sub)
        elif type(sub) is _Nested:
            consts[i] = _patch(sub.value, values, filename)
        else:
            consts[i] = _apply(sub, values, filename)  # type: ignore[arg-type]
    return code.replace(co_filename=filename, co_consts=tuple(consts))


def _compiled(template: str, constants: dict[str, int | bytes | bool]) -> CodeType:
    """The code of ``template`` filled with ``constants`` (see above)."""
    filename = _FILENAME.format(constants.get("SPI", 0))
    per_sa = [k for k in _PER_SA if k in constants]
    key = (template, tuple(sorted((k, type(v), v) for k, v in constants.items()
                                  if k not in _PER_SA)))
    if key not in _CODE_CACHE:
        first, second = (compile(_render(template, {**constants, **{k: p[k] for k in per_sa}}),
                                 _FILENAME.format(0), "exec") for p in _PLACEHOLDERS)
        swap = {_PLACEHOLDERS[0][k]: _PLACEHOLDERS[1][k] for k in per_sa}
        if len(_CODE_CACHE) >= _CODE_CACHE_MAX:
            _CODE_CACHE.clear()
        _CODE_CACHE[key] = ((_plan(first, frozenset(_PLACEHOLDERS[0].values())), _PLACEHOLDERS[0])
                            if _patch(first, swap, _FILENAME.format(0)) == second else None)
    hit = _CODE_CACHE[key]
    if hit is None:
        return compile(_render(template, constants), filename, "exec")
    plan, placeholders = hit
    return _apply(plan, {placeholders[k]: int(constants[k]) for k in per_sa}, filename)


@dataclass(frozen=True, slots=True)
class Decapsulated:
    """What :meth:`EspContext.decap` returns for a packet that was accepted."""

    packet: bytes
    """The inner IP packet (tunnel mode) or the restored IP packet (transport mode)."""
    next_header: int
    """The ESP trailer's next header: 4 / 41 in tunnel mode, the transport protocol otherwise."""
    seq: int
    """The full sequence number (with ESN: the inferred high 32 bits included)."""


def _cbc_algorithm(algo: EncAlgo, key: bytes) -> CipherAlgorithm:
    if algo.id == EncrId.ENCR_AES_CBC:
        return algorithms.AES(key)
    if algo.id == EncrId.ENCR_3DES:
        return decrepit.TripleDES(key)
    if algo.id == EncrId.ENCR_DES:
        # Single DES is 3DES with K1 = K2 = K3 (EDE collapses to one DES);
        # a 24-byte key avoids cryptography's deprecation of 8-byte keys.
        return decrepit.TripleDES(key * 3)
    if algo.id == EncrId.ENCR_BLOWFISH:
        return decrepit.Blowfish(key)
    if algo.id == EncrId.ENCR_CAST:
        return decrepit.CAST5(key)
    raise TransformError(f"{algo.name} is not supported by the ESP codec")


def _view(buf: Buffer) -> memoryview:
    return buf if isinstance(buf, memoryview) else memoryview(buf)


class EspContext:
    """The per-SA ESP crypto context: build once from an SA, use for every packet.

    ``allow_legacy`` is the operator's switch for DES/3DES/Blowfish/CAST/MD5;
    building a context with one logs a warning, unless ``legacy_warning`` is
    False (the workers: the control process warned when it checked the SA).
    ``iv_mask`` is XORed into the counter IV of AEAD/GMAC transforms; every
    process using one SA must use the same value (the default 0 makes the IV
    the sequence number).  ``df`` is the outer IPv4 DF policy in tunnel mode;
    ``ttl`` the outer TTL / hop limit.  ``fast_paths``: which directions get a compiled
    fast path (``"encap"`` or ``"decap"`` for an SA used one way only, as the workers'
    are: compiling costs more than the rest of a context); the other works too, through
    the general path, which produces the same bytes.

    The per-packet calls (attributes holding functions built for this SA):

    ``encap_into(buf, start, end, seq) -> (drop, new_start, new_end)``
        Encapsulate the IP packet ``buf[start:end]`` in place with the full
        sequence number ``seq`` (64 bits with ESN).  The ESP packet is
        ``buf[new_start:new_end]``, ``new_start == start - headroom``.  Needs
        ``headroom`` free bytes before ``start`` and ``tailroom`` after
        ``end``.  ``seq`` 0 or beyond the SA's space: ``SEQ_OVERFLOW``.

    ``decap_into(buf, start, end, window) -> (drop, inner_start, inner_end, next_header)``
        Decapsulate the ESP packet ``buf[start:end]`` in place; ``window`` is
        the SA's :class:`ReplayWindow`, checked before the ICV and updated
        after it verified.  On a drop the other fields are 0, except for an
        IPComp payload in tunnel mode (next header 108, see "Drops, not
        exceptions"): ``(BAD_NEXT_HEADER, payload_start, payload_end, 108)``.

    A context is not thread-safe (the nonce is assembled in a per-context
    scratch buffer): use one per thread or process, as the workers do.

    Public attributes: ``spi``, ``esn``, ``mode``, ``udp_encap``, ``enc``,
    ``integ``, ``iv_bytes``, ``icv_bytes``, ``block_bytes`` (cipher block),
    ``align`` (padding alignment), ``headroom``, ``tailroom``, ``ttl``.
    """

    __slots__ = (
        "_aead",
        "_cbc_dec",
        "_cbc_enc",
        "_df_policy",
        "_dst",
        "_encap_layout",
        "_esp_iv",
        "_forget",
        "_iv_mask",
        "_kind",
        "_mac_new",
        "_nonce",
        "_nonce_aad",
        "_outer6",
        "_scratch",
        "_seq_limit",
        "_src",
        "_tunnel",
        "_udp_ports",
        "_v4_base",
        "align",
        "block_bytes",
        "decap_into",
        "enc",
        "encap_into",
        "esn",
        "headroom",
        "icv_bytes",
        "integ",
        "iv_bytes",
        "mode",
        "spi",
        "tailroom",
        "ttl",
        "udp_encap",
    )

    encap_into: EncapFn
    decap_into: DecapFn

    def __init__(
        self,
        sa: SecurityAssociation,
        *,
        allow_legacy: bool = False,
        iv_mask: int = 0,
        df: DfPolicy = "copy",
        ttl: int = 64,
        legacy_warning: bool = True,
        fast_paths: FastPaths = "both",
    ) -> None:
        if sa.protocol != IpProto.ESP:
            raise TransformError(f"not an ESP SA (protocol {sa.protocol.name})")
        if sa.enc is None:
            raise TransformError("an ESP SA needs an encryption transform (ENCR_NULL for none)")
        if not 0 <= iv_mask < 1 << 64:
            raise TransformError("iv_mask must fit in 64 bits")
        if df not in ("copy", "set", "clear"):
            raise TransformError(f"unknown DF policy {df!r}")
        if not 1 <= ttl <= 255:
            raise TransformError(f"TTL {ttl} out of range")
        enc = enc_algo(sa.enc, allow_legacy=allow_legacy)
        check_enc_key(enc, sa.enc_key)
        integ: IntegAlgo | None = None
        if sa.auth != IntegId.NONE:
            if enc.aead:
                raise TransformError(
                    f"{enc.name} is a combined-mode transform: no integrity transform allowed"
                )
            integ = integ_algo(sa.auth, allow_legacy=allow_legacy)
        elif enc.id == EncrId.ENCR_NULL:
            # RFC 4303 §3.2: encryption and integrity must not both be NULL.
            raise TransformError("ESP with NULL encryption needs an integrity transform")
        elif not enc.aead:
            log.warning("ESP SA %#x without integrity protection: use it only under AH", sa.spi)

        self.spi = sa.spi
        self.esn = sa.esn
        self.mode = Mode.TUNNEL if sa.mode == Mode.TUNNEL else Mode.TRANSPORT
        self.udp_encap: UdpEncap | None = sa.encap
        self.enc = enc
        self.integ = integ
        self.iv_bytes = enc.iv_bytes
        self.block_bytes = enc.block_bytes
        self.align = max(enc.block_bytes, 4)  # RFC 4303 §2.4: at least 4-byte alignment
        self.icv_bytes = enc.icv_bytes if enc.aead else (integ.icv_bytes if integ else 0)
        self.ttl = ttl
        self._seq_limit = (1 << 64) - 1 if sa.esn else _M32
        self._iv_mask = iv_mask
        self._esp_iv = 8 + enc.iv_bytes
        self._tunnel = self.mode == Mode.TUNNEL
        self._udp_ports = (sa.encap.sport, sa.encap.dport) if sa.encap else None
        self._df_policy = df
        self._outer6 = sa.dst.version == 6
        self._src = sa.src.packed
        self._dst = sa.dst.packed
        # Sum of the outer IPv4 header words that never change (TTL/protocol,
        # addresses), so the checksum per packet is a few additions.
        proto_out = _UDP if sa.encap else _ESP
        self._v4_base = (ttl << 8 | proto_out) + int.from_bytes(self._src + self._dst, "big") % 0xFFFF

        key = bytes(sa.enc_key)
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._cbc_enc = None
        self._cbc_dec = None
        self._mac_new: Callable[[], object] | None = None
        # Nonce (salt + IV) and AAD live side by side in one scratch buffer,
        # filled by a single pack_into per packet.
        self._scratch = bytearray(24)
        scratch = memoryview(self._scratch)  # one export for both views
        self._nonce = scratch[:12]
        self._nonce_aad = scratch[12 : 24 if sa.esn else 20]
        if enc.aead:
            cipher_key, salt = key[: -enc.salt_bytes], key[-enc.salt_bytes :]
            self._scratch[:4] = salt
            if enc.id == EncrId.ENCR_CHACHA20_POLY1305:
                self._aead = ChaCha20Poly1305(cipher_key)
            else:
                self._aead = AESGCM(cipher_key)
            self._kind = _GMAC if enc.auth_only else _AEAD
        elif enc.id == EncrId.ENCR_NULL:
            self._kind = _Kind.NULL
        else:
            algorithm = _cbc_algorithm(enc, key)
            zero_iv = bytes(enc.block_bytes)
            self._cbc_enc = Cipher(algorithm, modes.CBC(zero_iv)).encryptor()
            self._cbc_dec = Cipher(algorithm, modes.CBC(zero_iv)).decryptor()
            self._kind = _CBC
        if integ is not None:
            self._mac_new = integ.new(sa.auth_key).new_mac

        udp = 8 if sa.encap else 0
        outer = (40 if self._outer6 else 20) if self._tunnel else 0
        self.headroom = outer + udp + self._esp_iv
        # Trailer: up to align-1 pad bytes, pad length, next header; then the
        # ICV.  HMAC with ESN writes the 4 high bits where the ICV goes; the
        # CBC call wants block-1 bytes of room past the ciphertext.
        room_after = max(self.icv_bytes, 4 if integ and sa.esn else 0)
        if self._kind == _CBC:
            room_after = max(room_after, enc.block_bytes - 1)
        elif self._kind == _AEAD:
            # The encapsulation fast path writes nonce and AAD behind the ICV.
            room_after += _FAST_NONCE_AAD_ESN if sa.esn else _FAST_NONCE_AAD
        self.tailroom = self.align - 1 + 2 + room_after

        self._forget: tuple[Callable[[], None], ...] = ()
        self.encap_into = (fast_paths != "decap" and self._fast_encap()) or self._general_encap
        self.decap_into = (fast_paths != "encap" and self._fast_decap()) or self._general_decap
        if legacy_warning:
            warn_legacy(enc, integ)  # once per SA, now that its context is built

    # -- sizes -----------------------------------------------------------

    def encapsulated_length(self, inner_length: int, header_length: int = 0) -> int:
        """The length ``encap_into`` makes of an inner packet (for MTU checks).

        In transport mode pass the length of the IP header (with IPv6
        extension headers) that stays in front of ESP.
        """
        payload = inner_length if self._tunnel else inner_length - header_length
        padded = payload + 2 + (-(payload + 2)) % self.align
        return self.headroom + (0 if self._tunnel else header_length) + padded + self.icv_bytes

    # -- outbound, general path --------------------------------------------

    def _general_encap(self, buf: Buffer, start: int, end: int, seq: int) -> EncapResult:
        """Every configuration and packet; the fast paths fall back to this."""
        try:
            if seq <= 0 or seq > self._seq_limit:
                return _E_SEQ_OVERFLOW
            buf = _view(buf)
            length = end - start
            if length < 20:
                return _E_RUNT
            first = buf[start]
            version = first >> 4
            new_start = start - self.headroom
            if self._tunnel:
                if version == 4:
                    if (buf[start + 2] << 8 | buf[start + 3]) != length or first & 15 < 5:
                        return _E_MALFORMED
                    next_header = 4
                    tos = buf[start + 1]
                    inner_df = buf[start + 6] & 0x40
                elif version == 6:
                    if length < 40 or (buf[start + 4] << 8 | buf[start + 5]) + 40 != length:
                        return _E_MALFORMED
                    next_header = 41
                    tos = (first & 15) << 4 | buf[start + 1] >> 4
                    inner_df = 0x40  # IPv6 is never fragmented on the path: keep that over IPv4
                else:
                    return _E_MALFORMED
                payload = start
                header_len = 0
                nh_field = 0
            elif version == 4:
                header_len = (first & 15) << 2
                if header_len < 20 or length < header_len or (buf[start + 2] << 8 | buf[start + 3]) != length:
                    return _E_MALFORMED
                if buf[start + 6] & 0x3F or buf[start + 7]:
                    return _E_MALFORMED  # a fragment: transport mode needs whole packets
                next_header = buf[start + 9]
                nh_field = 9
                payload = start + header_len
                tos = inner_df = 0
                # Transport mode: the IP header moves to the front of the
                # headroom (before anything overwrites its old place).
                buf[new_start : new_start + header_len] = buf[start:payload]
            elif version == 6:
                if length < 40 or (buf[start + 4] << 8 | buf[start + 5]) + 40 != length:
                    return _E_MALFORMED
                try:
                    header_len, next_header, nh_field = ipv6_ipsec_offset(buf[start:end])
                except PacketError:
                    return _E_MALFORMED
                payload = start + header_len
                tos = inner_df = 0
                buf[new_start : new_start + header_len] = buf[start:payload]
            else:
                return _E_MALFORMED

            # RFC 4303 §2.4: pad payload + pad length + next header to the
            # alignment, pad bytes 1, 2, 3, ...
            pad = -(end - payload + 2) % self.align
            trailer = end + pad
            buf[end : trailer + 1] = _PADS_AND_LENGTH[pad]
            buf[trailer + 1] = next_header
            ct_end = trailer + 2
            esp = payload - self._esp_iv
            spi = self.spi
            seq_low = seq & _M32
            kind = self._kind
            if kind is _AEAD:
                iv = seq ^ self._iv_mask
                _ESP_HDR_IV64.pack_into(buf, esp, spi, seq_low, iv)
                if self.esn:
                    _NONCE_AAD_ESN.pack_into(self._scratch, 4, iv, spi, seq >> 32, seq_low)
                else:
                    _NONCE_AAD.pack_into(self._scratch, 4, iv, spi, seq_low)
                self._aead.encrypt_into(  # type: ignore[union-attr]
                    self._nonce, buf[payload:ct_end], self._nonce_aad, buf[payload : ct_end + 16]
                )
                new_end = ct_end + 16
            elif kind is _GMAC:
                iv = seq ^ self._iv_mask
                _ESP_HDR_IV64.pack_into(buf, esp, spi, seq_low, iv)
                _U64.pack_into(self._scratch, 4, iv)
                # RFC 4543 §3.2: AAD = SPI, sequence number (both halves with
                # ESN), IV, payload with trailer; the plaintext is empty.
                if self.esn:
                    aad: bytes | memoryview = b"".join((_ESP_HDR.pack(spi, seq >> 32), buf[esp + 4 : ct_end]))
                else:
                    aad = buf[esp:ct_end]
                buf[ct_end : ct_end + 16] = self._aead.encrypt(self._nonce, b"", aad)  # type: ignore[union-attr]
                new_end = ct_end + 16
            else:
                _ESP_HDR.pack_into(buf, esp, spi, seq_low)
                if kind is _CBC:
                    # The IV slot gets the sequence number; encrypting it with
                    # the chained encryptor turns it into the unpredictable IV.
                    iv_slot = esp + 8
                    if self.block_bytes == 16:
                        _U64X2.pack_into(buf, iv_slot, 0, seq)
                    else:
                        _U64.pack_into(buf, iv_slot, seq)
                    self._cbc_enc.update_into(  # type: ignore[union-attr]
                        buf[iv_slot:ct_end], buf[iv_slot : ct_end + self.block_bytes - 1]
                    )
                new_end = ct_end
                mac_new = self._mac_new
                if mac_new is not None:
                    mac = mac_new()
                    if self.esn:
                        # RFC 4303 §2.2.1: the high 32 bits enter the ICV, not the wire.
                        _U32.pack_into(buf, ct_end, seq >> 32)
                        mac.update(buf[esp : ct_end + 4])  # type: ignore[attr-defined]
                    else:
                        mac.update(buf[esp:ct_end])  # type: ignore[attr-defined]
                    icv = self.icv_bytes
                    buf[ct_end : ct_end + icv] = mac.finalize()[:icv]  # type: ignore[attr-defined]
                    new_end = ct_end + icv

            # Headers in front of ESP.
            udp = self._udp_ports
            if self._tunnel:
                if self._outer6:
                    # RFC 6040 §4.1 normal mode: ECN copied along with the DSCP.
                    _IPV6_HDR.pack_into(
                        buf, new_start, 0x60000000 | tos << 20, new_end - new_start - 40,
                        _ESP if udp is None else _UDP, self.ttl, self._src, self._dst,
                    )
                    if udp is not None:
                        self._udp6(buf, new_start, new_start + 40, new_end)
                else:
                    flags = self._df(inner_df)
                    total = new_end - new_start
                    # RFC 6864 §4.1: an atomic datagram's ID may be anything.
                    ident = 0 if flags else seq & 0xFFFF
                    csum = self._v4_base + (0x4500 | tos) + total + ident + flags
                    csum = (csum & 0xFFFF) + (csum >> 16)
                    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
                    if udp is None:
                        _IPV4_HDR.pack_into(
                            buf, new_start, 0x45, tos, total, ident, flags, self.ttl, _ESP, csum,
                            self._src, self._dst,
                        )
                    else:
                        _IPV4_UDP.pack_into(
                            buf, new_start, 0x45, tos, total, ident, flags, self.ttl, _UDP, csum,
                            self._src, self._dst, udp[0], udp[1], total - 20, 0,
                        )
            else:
                # Transport mode: the IP header (moved above) gets the new
                # protocol and length.
                proto_out = _ESP if udp is None else _UDP
                if version == 4:
                    buf[new_start + 9] = proto_out
                    _U16.pack_into(buf, new_start + 2, new_end - new_start)
                    _U16.pack_into(buf, new_start + 10, 0)
                    _U16.pack_into(buf, new_start + 10, checksum(buf[new_start : new_start + header_len]))
                    if udp is not None:
                        udp_at = new_start + header_len
                        _UDP_HDR.pack_into(buf, udp_at, udp[0], udp[1], new_end - udp_at, 0)
                else:
                    buf[new_start + nh_field] = proto_out
                    _U16.pack_into(buf, new_start + 4, new_end - new_start - 40)
                    if udp is not None:
                        self._udp6(buf, new_start, new_start + header_len, new_end)
            return (_OK, new_start, new_end)
        except Exception:
            if RAISE_UNEXPECTED:
                raise
            log.exception("unexpected error in ESP encapsulation (SPI %#x)", self.spi)
            return _E_MALFORMED

    def _df(self, inner_df: int) -> int:
        policy = self._df_policy
        if policy == "copy":
            return IPV4_DF if inner_df else 0
        return IPV4_DF if policy == "set" else 0

    def _udp6(self, buf: memoryview, ip_at: int, udp_at: int, end: int) -> None:
        # RFC 768 / RFC 8200 §8.1: over IPv6 the UDP checksum is mandatory;
        # pseudo-header = source, destination, UDP length, next header 17.
        udp = self._udp_ports
        assert udp is not None
        length = end - udp_at
        _UDP_HDR.pack_into(buf, udp_at, udp[0], udp[1], length, 0)
        pseudo = int.from_bytes(buf[ip_at + 8 : ip_at + 40], "big") % 0xFFFF + length + _UDP
        csum = checksum(buf[udp_at:end], pseudo)
        _U16.pack_into(buf, udp_at + 6, csum or 0xFFFF)

    # -- inbound, general path -----------------------------------------------

    def _general_decap(self, buf: Buffer, start: int, end: int, window: ReplayWindow) -> DecapResult:
        """Every configuration and packet; the fast path falls back to this."""
        try:
            buf = _view(buf)
            available = end - start
            if available < 20:
                return _D_RUNT
            first = buf[start]
            version = first >> 4
            if version == 4:
                ihl = (first & 15) << 2
                total = buf[start + 2] << 8 | buf[start + 3]
                if ihl < 20 or total < ihl:
                    return _D_MALFORMED
                if total > available:
                    return _D_RUNT
                end = start + total
                if buf[start + 6] & 0x3F or buf[start + 7]:
                    return _D_MALFORMED  # an outer fragment: reassemble first (RFC 4303 §3.4.1)
                # We receive below the kernel's IP layer, so we are the one
                # that must check the header checksum (RFC 1122 §3.2.1.2).
                if int.from_bytes(buf[start : start + ihl], "big") % 0xFFFF:
                    return _D_MALFORMED
                proto = buf[start + 9]
                header_end = start + ihl
                nh_field = start + 9
            elif version == 6:
                if available < 40:
                    return _D_RUNT
                total = 40 + (buf[start + 4] << 8 | buf[start + 5])
                if total > available:
                    return _D_RUNT
                end = start + total
                nh_field = start + 6
                proto = buf[nh_field]
                header_end = start + 40
                while proto in _IPV6_EXT:  # a fragment header (44) falls through to MALFORMED
                    if header_end + 8 > end:
                        return _D_MALFORMED
                    nh_field = header_end
                    proto = buf[header_end]
                    header_end += (buf[header_end + 1] + 1) << 3
                if header_end > end:
                    return _D_MALFORMED
            else:
                return _D_MALFORMED
            if proto == _ESP:
                if self._udp_ports is not None:
                    return _D_MALFORMED
                esp = header_end
            elif proto == _UDP:
                if self._udp_ports is None:
                    return _D_MALFORMED
                esp = header_end + 8
                if esp > end:
                    return _D_RUNT
                if (buf[header_end + 4] << 8 | buf[header_end + 5]) != end - header_end:
                    return _D_MALFORMED
                # The destination port must be ours; the source port may be
                # anything a NAT chose.  The UDP checksum is not checked (RFC
                # 3948 §2.1 senders put 0 over IPv4; the ICV covers the payload).
                if (buf[header_end + 2] << 8 | buf[header_end + 3]) != self._udp_ports[1]:
                    return _D_MALFORMED
            else:
                return _D_MALFORMED

            ct = esp + self._esp_iv  # first byte after the IV
            icv_at = end - self.icv_bytes
            ct_len = icv_at - ct
            if ct_len < self.align:
                return _D_RUNT
            if ct_len % self.align:
                return _D_MALFORMED  # RFC 4303 §2.4: the ciphertext ends on the alignment
            spi, seq_low = _ESP_HDR.unpack_from(buf, esp)
            if spi != self.spi:
                return _D_UNKNOWN_SPI
            # RFC 4303 §3.4.3: the window check comes before the ICV.
            drop, seq = window.check(seq_low)
            if drop:
                return _D_REPLAY
            kind = self._kind
            if kind is _AEAD:
                scratch = self._scratch
                self._nonce[4:12] = buf[esp + 8 : ct]
                if self.esn:
                    _AAD_ESN.pack_into(scratch, 12, spi, seq >> 32, seq_low)
                    aad: bytes | memoryview = self._nonce_aad
                else:
                    aad = buf[esp : esp + 8]
                try:
                    self._aead.decrypt_into(self._nonce, buf[ct:end], aad, buf[ct:icv_at])  # type: ignore[union-attr]
                except InvalidTag:
                    return _D_ICV
            elif kind is _GMAC:
                self._nonce[4:12] = buf[esp + 8 : ct]
                if self.esn:
                    aad = b"".join((_ESP_HDR.pack(spi, seq >> 32), buf[esp + 4 : icv_at]))
                else:
                    aad = buf[esp:icv_at]
                try:
                    self._aead.decrypt(self._nonce, buf[icv_at:end], aad)  # type: ignore[union-attr]
                except InvalidTag:
                    return _D_ICV
            else:
                mac_new = self._mac_new
                if mac_new is not None:
                    mac = mac_new()
                    if self.esn:
                        received: bytes | memoryview = bytes(buf[icv_at:end])
                        _U32.pack_into(buf, icv_at, seq >> 32)  # RFC 4303 §2.2.1
                        mac.update(buf[esp : icv_at + 4])  # type: ignore[attr-defined]
                    else:
                        received = buf[icv_at:end]
                        mac.update(buf[esp:icv_at])  # type: ignore[attr-defined]
                    # Constant-time comparison of the truncated ICV.
                    if not hmac.compare_digest(mac.finalize()[: self.icv_bytes], received):  # type: ignore[attr-defined]
                        return _D_ICV
            window.update(seq)
            if kind is _CBC:
                # The chained decryptor: feed IV + ciphertext, the first
                # output block (where the IV was) is garbage and ignored.
                iv_at = esp + 8
                room = icv_at + self.block_bytes - 1
                if room <= len(buf):
                    self._cbc_dec.update_into(buf[iv_at:icv_at], buf[iv_at:room])  # type: ignore[union-attr]
                else:
                    buf[iv_at:icv_at] = self._cbc_dec.update(buf[iv_at:icv_at])  # type: ignore[union-attr]

            # RFC 4303 §2.4-2.6: trailer.
            pad = buf[icv_at - 2]
            next_header = buf[icv_at - 1]
            payload_end = icv_at - 2 - pad
            if payload_end < ct:
                return _D_PADDING
            if pad and buf[payload_end : icv_at - 2] != _PADS[pad]:
                return _D_PADDING
            if next_header == _NONXT:
                return _D_DUMMY

            if self._tunnel:
                room = payload_end - ct
                if next_header == 4:
                    if room < 20 or buf[ct] >> 4 != 4:
                        return _D_MALFORMED
                    inner_len = buf[ct + 2] << 8 | buf[ct + 3]
                    if inner_len < 20 or inner_len > room:
                        return _D_MALFORMED
                elif next_header == 41:
                    if room < 40 or buf[ct] >> 4 != 6:
                        return _D_MALFORMED
                    inner_len = 40 + (buf[ct + 4] << 8 | buf[ct + 5])
                    if inner_len > room:
                        return _D_MALFORMED
                elif next_header == _IPCOMP:
                    # Not an IP packet: the caller that does IPComp takes it from here.
                    return (Drop.BAD_NEXT_HEADER, ct, payload_end, next_header)
                else:
                    return _D_BAD_NEXT_HEADER
                outer_ecn = buf[start + 1] & 3 if version == 4 else buf[start + 1] >> 4 & 3
                if outer_ecn:  # RFC 6040 §4.2: a Not-ECT outer header leaves the inner one as it is
                    inner_ecn = ecn_of(buf, ct)
                    ecn = decapsulated_ecn(outer_ecn, inner_ecn)
                    if ecn is None:
                        return _D_ECN  # CE over Not-ECT must be dropped
                    if ecn != inner_ecn:
                        set_ecn(buf, ct, ecn)
                return (_OK, ct, ct + inner_len, next_header)

            # Transport mode: move the IP header (and IPv6 extension headers)
            # up against the payload, restore the protocol, fix the lengths.
            header_len = header_end - start
            new_start = ct - header_len
            buf[new_start:ct] = buf[start:header_end]
            buf[new_start + (nh_field - start)] = next_header
            if version == 4:
                _U16.pack_into(buf, new_start + 2, payload_end - new_start)
                _U16.pack_into(buf, new_start + 10, 0)
                _U16.pack_into(buf, new_start + 10, checksum(buf[new_start:ct]))
            else:
                _U16.pack_into(buf, new_start + 4, payload_end - new_start - 40)
            return (_OK, new_start, payload_end, next_header)
        except Exception:
            if RAISE_UNEXPECTED:
                raise
            log.exception("unexpected error in ESP decapsulation (SPI %#x)", self.spi)
            return _D_MALFORMED

    # -- fast paths (generated code) -----------------------------------------

    def _build(self, template: str, function: str, names: dict[str, object],
               **constants: int | bytes | bool) -> tuple[Callable[..., object], Callable[[], None]]:
        """Compile one of the fast-path templates for this SA; returns (``function``, forget).

        The code runs in a namespace of its own, which ``names`` fill: the
        functions find the SA's objects and their own state as globals of
        that namespace, which is cheaper per call than closure variables.
        """
        namespace: dict[str, object] = {**names, "esp_module": sys.modules[__name__]}
        exec(_compiled(template, constants), namespace)
        return namespace[function], namespace["forget"]  # type: ignore[return-value]

    def forget_buffers(self) -> None:
        """Drop the views the fast paths keep of the last buffer they saw.

        ``encap_into``/``decap_into`` cache memoryview slices of the buffer
        they were last called with (while it is called again at the same
        offset), which keeps that buffer exported: a ``bytearray`` under it
        cannot be resized nor an ``mmap`` closed until the next call with
        another buffer, this call, or the context's end.
        """
        for forget in self._forget:
            forget()

    def _fast_encap(self) -> EncapFn | None:
        """AEAD, tunnel mode, IPv4 outer header: the straight-line encapsulation.

        Covers inner IPv4 packets with a 20-byte header; everything else goes
        to :meth:`_general_encap`, which produces the same bytes.
        """
        if not (self._kind is _AEAD and self._tunnel and not self._outer6):
            return None
        headroom = self.headroom
        align = self.align
        udp = self._udp_ports
        proto = _UDP if udp else _ESP
        copy_df = self._df_policy == "copy"
        # Per pad length: the bytes written after the payload up to the nonce's IV (trailer, the
        # ICV's place, salt), and the pack_into that adds IV, SPI and sequence number.
        salt = bytes(self._scratch[:4])
        heads, pack_tails = _encap_tails(align, self.esn)
        tails = tuple(head + salt for head in heads)
        shapes: dict[int, _EncapShape] = {}
        # shape_of is a bound method, not a closure: a closure holds a cell per variable,
        # objects the cyclic collector walks for the SA's life.
        self._encap_layout = (shapes, tails, pack_tails)

        fixed = 8 + (8 if udp else 0) + 4  # addresses [+ UDP header] + SPI
        encap_into, forget = self._build(
            _FAST_ENCAP_TEMPLATE, "encap_into",
            {
                "general": self._general_encap, "shapes": shapes, "shape_of": self._encap_shape,
                "encrypt_into": self._aead.encrypt_into,  # type: ignore[union-attr]
                "unpack_key": _UNPACK_KEY,
                "pack_atomic": _pack_into(f"!{12 + fixed}sIQ"),
                "pack_ident": _pack_into(f"!4sH4sH{fixed}sIQ"),
                "log": log, "memoryview": memoryview,
                "E_SEQ_OVERFLOW": _E_SEQ_OVERFLOW, "E_MALFORMED": _E_MALFORMED, "OK": _OK,
            },
            LIMIT=self._seq_limit,
            KEY_MASK=0xFFFFFFFF00000000 | (IPV4_DF if copy_df else 0),
            PLAIN=not self.esn and not self._iv_mask,
            IV_MASK=self._iv_mask,
            ESN=self.esn,
            SPI=self.spi,
            HEADROOM=headroom,
            MIDDLE=bytes((0, 0, self.ttl, proto)),  # flags/fragment 0, TTL, protocol
            NONCE_AAD=_FAST_NONCE_AAD_ESN if self.esn else _FAST_NONCE_AAD,
            CACHE_MAX=_LAYOUT_CACHE_MAX,
        )
        self._forget = (*self._forget, forget)
        return encap_into  # type: ignore[return-value]

    def _encap_shape(self, key: int) -> _EncapShape | None:
        """The layout of an encapsulated inner packet, from its first 8 bytes (masked): the
        encapsulation fast path's ``shape_of``, kept in its ``shapes``."""
        if key >> 56 != 0x45:
            return None  # IPv6 or IPv4 options: the general path
        length = key >> 32 & 0xFFFF
        if length < 20:
            return None
        shapes, tails, pack_tails = self._encap_layout
        udp = self._udp_ports
        proto = _UDP if udp else _ESP
        spi_bytes = _U32.pack(self.spi)
        tos = key >> 48 & 0xFF
        df_policy = self._df_policy
        flags = (key & IPV4_DF if df_policy == "copy" else IPV4_DF if df_policy == "set" else 0) \
            and IPV4_DF
        pad = -(length + 2) % self.align
        ct_len = length + pad + 2
        total = self.headroom + ct_len + 16
        udp_header = _UDP_HDR.pack(udp[0], udp[1], total - 20, 0) if udp else b""
        csum = self._v4_base + (0x4500 | tos) + total + flags
        header: bytes | tuple[bytes, bytes]
        if flags:
            # RFC 6864 §4.1: an atomic datagram has ID 0, so header, checksum and SPI are fixed.
            csum = (csum & 0xFFFF) + (csum >> 16)
            csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
            header = _IPV4_HDR.pack(0x45, tos, total, 0, flags, self.ttl, proto, csum, self._src, self._dst)
            header += udp_header + spi_bytes
            csum = -1
        else:
            # The ID is the low 16 bits of the sequence number: the checksum is completed per packet.
            header = (_IPV4_START.pack(0x45, tos, total), self._src + self._dst + udp_header + spi_bytes)
        if len(shapes) >= _LAYOUT_CACHE_MAX:
            shapes.clear()
        shape = shapes[key] = (length, pack_tails[pad], tails[pad], ct_len, header, csum)
        return shape

    def _fast_decap(self) -> DecapFn | None:
        """AEAD, tunnel mode, IPv4 outer header (20 bytes): the straight-line decapsulation.

        Packets with IP options, ECN marks on the outer header, or anything
        unusual go to :meth:`_general_decap` before any state is touched.
        """
        if not (self._kind is _AEAD and self._tunnel):
            return None
        udp = self._udp_ports is not None
        ct_offset = (28 if udp else 20) + self._esp_iv  # outer header [+ UDP] + ESP header + IV
        align = self.align
        trailers = _decap_trailers(align)
        decap_into, forget = self._build(
            _FAST_DECAP_TEMPLATE, "decap_into",
            {
                "general": self._general_decap,
                "decrypt_into": self._aead.decrypt_into,  # type: ignore[union-attr]
                "salt": bytes(self._scratch[:4]),
                "nonce": self._nonce, "aad": self._nonce_aad, "scratch": self._scratch,
                "unpack_header": _UNPACK_HEADER_UDP if udp else _UNPACK_HEADER,
                "unpack_fields": _UNPACK_FIELDS_UDP if udp else _UNPACK_FIELDS,
                "unpack_word": _UNPACK_WORD,
                "inner_check": _inner_check,
                "pack_esn": _PACK_ESN,
                "trailers": trailers, "pads": _PADS, "log": log, "memoryview": memoryview,
                "InvalidTag": InvalidTag, "OK": _OK, "D_REPLAY": _D_REPLAY, "D_ICV": _D_ICV,
                "D_PADDING": _D_PADDING, "D_MALFORMED": _D_MALFORMED, "D_DUMMY": _D_DUMMY,
                "D_BAD_NEXT_HEADER": _D_BAD_NEXT_HEADER,
            },
            UDP=udp,
            LOCAL_PORT=self._udp_ports[1] if self._udp_ports else 0,
            ESN=self.esn,
            SPI=self.spi,
            CT=ct_offset,
            # First 8 bytes of the outer header: version 4 and IHL 5, ECN 0 (the
            # DSCP is free), total length aligned (RFC 4303 §2.4), no fragment
            # (DF is free).  Bytes 8-15: the protocol.
            HEAD_MASK=0xFF03_0000_0000_BFFF | (align - 1) << 32,
            HEAD_EXPECT=0x45 << 56 | ((ct_offset + 16) % align) << 32,
            PROTO_EXPECT=(_UDP if udp else _ESP) << 48,
            MIN_TOTAL=ct_offset + align + 16,
            MAX_TRAILER=len(trailers) - 1,
            NONXT=_NONXT,
            IPCOMP=_IPCOMP,
            CACHE_MAX=_LAYOUT_CACHE_MAX,
        )
        self._forget = (*self._forget, forget)
        return decap_into  # type: ignore[return-value]

    # -- conveniences for tests and the control plane --------------------

    def encap(self, packet: bytes | bytearray | memoryview, seq: int) -> tuple[Drop, bytes]:
        """Encapsulate a copy of ``packet``; returns ``(Drop.OK, esp_packet)`` or ``(reason, b"")``."""
        headroom = self.headroom
        buf = memoryview(bytearray(headroom + len(packet) + self.tailroom))
        buf[headroom : headroom + len(packet)] = packet
        drop, start, end = self.encap_into(buf, headroom, headroom + len(packet), seq)
        if drop:
            return drop, b""
        return drop, bytes(buf[start:end])

    def decap(
        self, packet: bytes | bytearray | memoryview, window: ReplayWindow | None = None
    ) -> tuple[Drop, Decapsulated | None]:
        """Decapsulate a copy of ``packet``.

        Without ``window`` no anti-replay check is made (a fresh disabled
        window: with ESN the high bits are then inferred as 0).
        """
        if window is None:
            window = ReplayWindow(0, esn=self.esn)
        buf = memoryview(bytearray(len(packet) + 32))
        buf[: len(packet)] = packet
        # check() does not change the window, so this is the full sequence
        # number decap_into will compute.
        seq = window.check(peek(buf, 0, len(packet), udp_port=None).seq)[1]
        drop, start, end, next_header = self.decap_into(buf, 0, len(packet), window)
        if drop:
            return drop, None
        return drop, Decapsulated(bytes(buf[start:end]), next_header, seq)


# -- inbound demultiplexing helper --------------------------------------------


class Inbound(enum.IntEnum):
    """What an inbound IP packet is, as far as ESP demultiplexing is concerned."""

    ESP = 0  # an ESP packet (bare, or in UDP)
    IKE = 1  # UDP with the 4-byte zero non-ESP marker (RFC 3948 §2.2)
    NAT_KEEPALIVE = 2  # UDP with the single byte 0xFF (RFC 3948 §2.3)
    OTHER = 3  # neither ESP nor UDP to the encapsulation port
    MALFORMED = 4  # truncated or inconsistent IP / UDP / ESP header, or a fragment


class EspPeek(NamedTuple):
    """The result of :func:`peek`."""

    kind: Inbound
    spi: int  # 0 unless kind is ESP
    seq: int  # the low 32 bits on the wire
    offset: int  # where the ESP header starts
    udp: bool  # True when UDP-encapsulated (RFC 3948)


_PEEK_OTHER = EspPeek(Inbound.OTHER, 0, 0, 0, False)
_PEEK_MALFORMED = EspPeek(Inbound.MALFORMED, 0, 0, 0, False)


def peek(
    buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, *, udp_port: int | None = 4500
) -> EspPeek:
    """Classify an inbound IP packet and read its SPI and sequence number, for the SAD lookup.

    IPv4 or IPv6 (extension headers skipped) outer header; ESP directly or in
    UDP (RFC 3948) to ``udp_port`` (``None``: any port).  In UDP, a zero
    4-byte non-ESP marker means IKE and a lone 0xFF byte a NAT keepalive
    (RFC 3948 §2.2, §2.3).  Never raises for packet content.
    """
    if end is None:
        end = len(buf)
    try:
        if end - start < 20:
            return _PEEK_MALFORMED
        version = buf[start] >> 4
        if version == 4:
            ihl = (buf[start] & 15) << 2
            total = buf[start + 2] << 8 | buf[start + 3]
            if ihl < 20 or total < ihl or total > end - start:
                return _PEEK_MALFORMED
            if buf[start + 6] & 0x3F or buf[start + 7]:
                return _PEEK_MALFORMED  # fragment
            end = start + total
            proto = buf[start + 9]
            at = start + ihl
        elif version == 6:
            if end - start < 40:
                return _PEEK_MALFORMED
            total = 40 + (buf[start + 4] << 8 | buf[start + 5])
            if total > end - start:
                return _PEEK_MALFORMED
            end = start + total
            proto = buf[start + 6]
            at = start + 40
            while proto in _IPV6_EXT:
                if at + 8 > end:
                    return _PEEK_MALFORMED
                proto = buf[at]
                at += (buf[at + 1] + 1) << 3
            if proto == IpProto.IPV6_FRAG or at > end:
                return _PEEK_MALFORMED
        else:
            return _PEEK_MALFORMED
        udp = False
        if proto == _UDP:
            if at + 8 > end:
                return _PEEK_MALFORMED
            if udp_port is not None and (buf[at + 2] << 8 | buf[at + 3]) != udp_port:
                return _PEEK_OTHER
            if (buf[at + 4] << 8 | buf[at + 5]) != end - at:
                return _PEEK_MALFORMED
            at += 8
            if end - at == 1 and buf[at] == 0xFF:
                return EspPeek(Inbound.NAT_KEEPALIVE, 0, 0, at, True)
            if end - at >= 4 and not any(buf[at : at + 4]):
                return EspPeek(Inbound.IKE, 0, 0, at, True)
            udp = True
        elif proto != _ESP:
            return _PEEK_OTHER
        if end - at < 8:
            return _PEEK_MALFORMED
        spi, seq = _ESP_HDR.unpack_from(buf, at)
        if spi == 0:
            return _PEEK_MALFORMED  # RFC 4303 §2.1: SPI 0 is reserved
        return EspPeek(Inbound.ESP, spi, seq, at, udp)
    except (IndexError, struct.error):
        return _PEEK_MALFORMED
