"""IKEv2 proposals: the configuration language, the responder's choice, the initiator's check.

Theory of operation
-------------------
An SA payload (RFC 7296 §3.3) carries proposals; each proposal is a set of
transforms, at least one per transform type it uses, and the responder picks
exactly one transform of each type from one proposal (§2.7, §3.3.6).  This
module is that negotiation, sans-I/O and pure:

* :func:`parse_ike` / :func:`parse_esp` turn strongSwan's proposal syntax
  (swanctl.conf ``proposals`` / ``esp_proposals``, e.g.
  ``"aes128gcm16-prfsha256-x25519"``) into :class:`~ipsecd.ike.messages.Proposal`
  objects for an SAi1/SAi2 payload and for the responder's configuration.
* :func:`select` is the responder's choice, :func:`check_chosen` the
  initiator's check of the answer (SAr1/SAr2).
* :func:`dh_groups`, :func:`chosen_dh`, :func:`restrict_dh` and
  :func:`with_spi` are the small helpers a state machine needs around them
  (KE payloads, INVALID_KE_PAYLOAD retries, SPIs).
* :func:`child_suite` turns a chosen ESP proposal into the key sizes that
  split KEYMAT (§2.17) and fit :class:`ipsecd.sa.SecurityAssociation`.

The syntax
----------
A proposal is tokens joined by ``-``; several proposals are a list or a
comma-separated string; ``default`` stands for our defaults (below).  Tokens
name one algorithm each; several of one type in one proposal are all
offered.  Every token maps to one transform, so only what the IKE code
(:mod:`ipsecd.ike.crypto`, :mod:`ipsecd.ike.dh`) or the ESP datapath
(:mod:`ipsecd.transforms`) can run is accepted:

ENCR
    ``aes128`` ``aes192`` ``aes256`` (``aes`` = 128) - IKE, ESP;
    ``aes128gcm16`` ... ``aes256gcm16`` (also ``gcm128``, ``gcm``) - IKE, ESP;
    ``aes128gcm8``/``gcm12`` (also ``gcm64``/``gcm96``), ``aes128ccm8``/``12``/``16``
    (also ``64``/``96``/``128``) - IKE only (the datapath has neither);
    ``chacha20poly1305`` - IKE, ESP;
    ``aes128gmac`` ... (NULL encryption with AES-GMAC), ``null`` - ESP only;
    ``3des`` (legacy) - IKE, ESP; ``des`` ``blowfish``/``128``/``192``/``256``
    ``cast128`` (legacy) - ESP only.
INTEG
    ``sha256`` ``sha384`` ``sha512`` (also ``sha2_256`` ...), ``sha1``/``sha``
    and ``md5`` (legacy) - IKE, ESP; ``aesxcbc`` - IKE only.
PRF (IKE only)
    ``prfsha256`` ``prfsha384`` ``prfsha512`` ``prfaesxcbc``, ``prfsha1`` and
    ``prfmd5`` (legacy).
DH
    ``modp2048`` ... ``modp8192``, ``ecp256`` ``ecp384`` ``ecp521``,
    ``x25519``/``curve25519``, ``x448``/``curve448``, ``modp768`` ``modp1024``
    ``modp1536`` (legacy) - IKE, ESP; ``modpnone`` (PFS optional) - ESP only.
ESN (ESP only)
    ``esn`` ``noesn``.

Rules, as strongSwan applies them:

* In IKE, without a ``prf`` token each integrity token implies the PRF of
  the same hash (``aes256-sha256-modp2048`` offers PRF_HMAC_SHA2_256).
* An AEAD takes no integrity transform (RFC 7296 §3.3, RFC 5282 §8): a
  proposal naming both AEAD and classic ciphers is split in two, the AEAD
  half without the integrity algorithms.  An AEAD-only proposal with
  integrity tokens is refused, except in IKE where the tokens only stand
  for their PRFs (no ``prf`` token given).
* A classic cipher needs an integrity algorithm (RFC 7296 §3.3.3 for IKE; in
  ESP we refuse encryption without integrity, RFC 8221 §4), IKE needs a PRF
  and at least one DH group (§3.3.3).
* ESP without ``esn``/``noesn`` offers NO_ESN only; with both tokens both,
  in the given order.  ESP without DH tokens offers no PFS.
* Legacy algorithms (RFC 8247 §2-§2.4, RFC 8221 §5: 3DES, DES, Blowfish,
  CAST, MD5, SHA-1 and the MODP groups below 2048 bits) are refused without
  ``allow_legacy=True``.

Transforms are emitted by type (ENCR, PRF, INTEG, DH, ESN) and, within a
type, in the order given; duplicates are dropped.  AES and its AEADs carry
the Key Length attribute (RFC 7296 §3.3.5); ChaCha20-Poly1305 and 3DES have
a fixed key and carry none (RFC 7634 §4, RFC 7296 §3.3.5).

Defaults (``default``): AES-GCM-16 128/256 and ChaCha20-Poly1305 in one
proposal, AES-CBC 128/256 with HMAC-SHA2-256/384/512 in another; for IKE
PRF HMAC-SHA2-256/384/512 and the groups Curve25519, ECP-256, ECP-384,
MODP-3072, MODP-2048, Curve448, ECP-521 (RFC 8247 §2.1-§2.4); for ESP
NO_ESN and no PFS (RFC 8221 §5-§6).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    EsnId,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformAttributeType,
    TransformType,
)
from ipsecd.ike.errors import IkeProtocolError
from ipsecd.ike.messages import Proposal, Transform, TransformAttribute
from ipsecd.transforms import ENC_ALGOS, INTEG_ALGOS, EncAlgo, IntegAlgo, TransformError

__all__ = [
    "AEAD_IDS",
    "ChildSuite",
    "check_chosen",
    "child_suite",
    "chosen_dh",
    "describe",
    "dh_groups",
    "parse_esp",
    "parse_ike",
    "restrict_dh",
    "select",
    "with_spi",
]

#: Combined-mode ciphers (RFC 7296 §3.3, RFC 5282, RFC 4106, RFC 4309, RFC 7634,
#: RFC 4543): they take no integrity transform, or one of NONE.
AEAD_IDS: frozenset[EncrId] = frozenset({
    EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_16,
    EncrId.ENCR_AES_CCM_8, EncrId.ENCR_AES_CCM_12, EncrId.ENCR_AES_CCM_16,
    EncrId.ENCR_CHACHA20_POLY1305, EncrId.ENCR_NULL_AUTH_AES_GMAC,
})

_ADDKE_TYPES = frozenset(range(TransformType.ADDKE1, TransformType.ADDKE7 + 1))
_KNOWN_TYPES = frozenset({
    TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH, TransformType.ESN,
}) | _ADDKE_TYPES


# --------------------------------------------------------------------------- the token table


@dataclass(frozen=True, slots=True)
class _Algo:
    """What one token stands for."""

    type: TransformType
    id: int
    key_length: int | None = None  # Key Length attribute in bits (RFC 7296 §3.3.5)
    ike: bool = True  # usable in an IKE proposal
    esp: bool = True  # usable in an ESP proposal (the datapath runs it)
    legacy: bool = False
    implies_prf: PrfId | None = None  # the PRF an integrity token stands for in IKE

    @property
    def aead(self) -> bool:
        return self.type == TransformType.ENCR and self.id in AEAD_IDS


def _token_table() -> dict[str, _Algo]:
    table: dict[str, _Algo] = {}
    enc, integ, prf, dh = TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.DH
    for bits in (128, 192, 256):
        table[f"aes{bits}"] = _Algo(enc, EncrId.ENCR_AES_CBC, bits)
        # The ICV length in octets (8/12/16) or bits (64/96/128), as strongSwan spells it.
        for icv, ident in ((8, EncrId.ENCR_AES_GCM_8), (12, EncrId.ENCR_AES_GCM_12),
                           (16, EncrId.ENCR_AES_GCM_16)):
            algo = _Algo(enc, ident, bits, esp=ident == EncrId.ENCR_AES_GCM_16)
            table[f"aes{bits}gcm{icv}"] = table[f"aes{bits}gcm{icv * 8}"] = algo
        table[f"aes{bits}gcm"] = table[f"aes{bits}gcm16"]
        for icv, ident in ((8, EncrId.ENCR_AES_CCM_8), (12, EncrId.ENCR_AES_CCM_12),
                           (16, EncrId.ENCR_AES_CCM_16)):
            algo = _Algo(enc, ident, bits, esp=False)  # the datapath has no CCM
            table[f"aes{bits}ccm{icv}"] = table[f"aes{bits}ccm{icv * 8}"] = algo
        table[f"aes{bits}gmac"] = _Algo(enc, EncrId.ENCR_NULL_AUTH_AES_GMAC, bits, ike=False)
    table["aes"] = table["aes128"]
    table["chacha20poly1305"] = _Algo(enc, EncrId.ENCR_CHACHA20_POLY1305)  # RFC 7634 §4: no key length
    table["null"] = _Algo(enc, EncrId.ENCR_NULL, ike=False)  # RFC 7296 §3.3.2: not for IKE
    table["3des"] = _Algo(enc, EncrId.ENCR_3DES, legacy=True)
    table["des"] = _Algo(enc, EncrId.ENCR_DES, ike=False, legacy=True)
    for bits in (128, 192, 256):
        table[f"blowfish{bits}"] = _Algo(enc, EncrId.ENCR_BLOWFISH, bits, ike=False, legacy=True)
    table["blowfish"] = table["blowfish128"]
    table["cast128"] = _Algo(enc, EncrId.ENCR_CAST, 128, ike=False, legacy=True)

    for names, integ_id, prf_id, legacy in (
        (("sha256", "sha2_256"), IntegId.AUTH_HMAC_SHA2_256_128, PrfId.PRF_HMAC_SHA2_256, False),
        (("sha384", "sha2_384"), IntegId.AUTH_HMAC_SHA2_384_192, PrfId.PRF_HMAC_SHA2_384, False),
        (("sha512", "sha2_512"), IntegId.AUTH_HMAC_SHA2_512_256, PrfId.PRF_HMAC_SHA2_512, False),
        (("sha1", "sha"), IntegId.AUTH_HMAC_SHA1_96, PrfId.PRF_HMAC_SHA1, True),
        (("md5",), IntegId.AUTH_HMAC_MD5_96, PrfId.PRF_HMAC_MD5, True),
    ):
        for name in names:
            table[name] = _Algo(integ, integ_id, legacy=legacy, implies_prf=prf_id)
            table[f"prf{name}"] = _Algo(prf, prf_id, esp=False, legacy=legacy)
    table["aesxcbc"] = _Algo(integ, IntegId.AUTH_AES_XCBC_96, esp=False, implies_prf=PrfId.PRF_AES128_XCBC)
    table["prfaesxcbc"] = _Algo(prf, PrfId.PRF_AES128_XCBC, esp=False)

    # RFC 8247 §2.4: groups 1, 2 and 5 are below 2048 bits (dh.py calls them legacy too).
    for name, group, legacy in (
        ("modp768", DhGroup.MODP_768, True), ("modp1024", DhGroup.MODP_1024, True),
        ("modp1536", DhGroup.MODP_1536, True), ("modp2048", DhGroup.MODP_2048, False),
        ("modp3072", DhGroup.MODP_3072, False), ("modp4096", DhGroup.MODP_4096, False),
        ("modp6144", DhGroup.MODP_6144, False), ("modp8192", DhGroup.MODP_8192, False),
        ("ecp256", DhGroup.ECP_256, False), ("ecp384", DhGroup.ECP_384, False),
        ("ecp521", DhGroup.ECP_521, False),
        ("x25519", DhGroup.CURVE25519, False), ("curve25519", DhGroup.CURVE25519, False),
        ("x448", DhGroup.CURVE448, False), ("curve448", DhGroup.CURVE448, False),
    ):
        table[name] = _Algo(dh, group, legacy=legacy)
    # A DH transform of NONE in SAi2 makes PFS optional (RFC 7296 §3.3.3); IKE needs a real group.
    table["modpnone"] = _Algo(dh, DhGroup.NONE, ike=False)
    table["esn"] = _Algo(TransformType.ESN, EsnId.ESN, ike=False)
    table["noesn"] = _Algo(TransformType.ESN, EsnId.NO_ESN, ike=False)
    return table


_TOKENS = _token_table()

_DH_DEFAULT = "x25519-ecp256-ecp384-modp3072-modp2048-x448-ecp521"
_IKE_DEFAULT = (
    f"aes128gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512-{_DH_DEFAULT}",
    f"aes128-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-{_DH_DEFAULT}",
)
_ESP_DEFAULT = (
    "aes128gcm16-aes256gcm16-chacha20poly1305-noesn",
    "aes128-aes256-sha256-sha384-sha512-noesn",
)


# --------------------------------------------------------------------------- parsing


def _proposal_texts(text: str | Sequence[str]) -> list[str]:
    parts = [text] if isinstance(text, str) else list(text)
    out = [p.strip() for part in parts for p in part.split(",")]
    if not out or any(not p for p in out):
        raise ValueError(f"empty proposal in {text!r}")
    return out


def _unique(items: Iterable[_Algo]) -> list[_Algo]:
    out: list[_Algo] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _transforms(kind: TransformType, algos: Iterable[_Algo]) -> list[Transform]:
    return [Transform.make(kind, a.id, a.key_length) for a in algos]


def _parse_one(text: str, protocol: ProtocolId, allow_legacy: bool) -> list[list[Transform]]:
    """The transform lists of one proposal string (two when AEADs and classic ciphers mix)."""
    ike = protocol == ProtocolId.IKE
    where = "IKE" if ike else "ESP"
    algos: list[_Algo] = []
    for token in text.split("-"):
        algo = _TOKENS.get(token.strip().lower())
        if algo is None:
            raise ValueError(f"unknown algorithm {token!r} in proposal {text!r}")
        if not (algo.ike if ike else algo.esp):
            raise ValueError(f"algorithm {token!r} in proposal {text!r} is not supported for {where}")
        if algo.legacy and not allow_legacy:
            raise ValueError(
                f"algorithm {token!r} in proposal {text!r} is legacy (RFC 8247/8221); "
                f"it needs the legacy switch (allow_legacy)")
        algos.append(algo)

    def of(kind: TransformType) -> list[_Algo]:
        return _unique(a for a in algos if a.type == kind)

    ciphers, integs, prfs, groups, esns = (
        of(TransformType.ENCR), of(TransformType.INTEG), of(TransformType.PRF),
        of(TransformType.DH), of(TransformType.ESN))
    aeads = [c for c in ciphers if c.aead]
    classic = [c for c in ciphers if not c.aead]
    if not ciphers:
        raise ValueError(f"proposal {text!r} names no encryption algorithm")
    if classic and not integs:
        # RFC 7296 §3.3.3 (IKE); RFC 8221 §4 (ESP: encryption without integrity is not offered).
        raise ValueError(f"proposal {text!r}: {where} with a non-AEAD cipher needs an integrity algorithm")
    if ike and not prfs:
        # strongSwan's shorthand: an integrity algorithm implies the PRF of the same hash.
        prfs = _unique(_Algo(TransformType.PRF, i.implies_prf, esp=False, legacy=i.legacy)
                       for i in integs if i.implies_prf is not None)
    elif aeads and not classic and integs:
        # RFC 7296 §3.3, RFC 5282 §8: no integrity transform with a combined-mode cipher.
        raise ValueError(f"proposal {text!r}: an AEAD cipher takes no integrity algorithm")
    if ike and not prfs:
        raise ValueError(f"proposal {text!r} needs a PRF (a prf... token)")
    if ike and not groups:
        raise ValueError(f"proposal {text!r} needs a key exchange (DH) group")  # RFC 7296 §3.3.3
    if not ike and not esns:
        esns = [_TOKENS["noesn"]]  # RFC 7296 §3.3.2: ESN must be negotiated; default off

    def build(encr: list[_Algo], integ: list[_Algo]) -> list[Transform]:
        return (_transforms(TransformType.ENCR, encr) + _transforms(TransformType.PRF, prfs)
                + _transforms(TransformType.INTEG, integ) + _transforms(TransformType.DH, groups)
                + _transforms(TransformType.ESN, esns))

    halves: list[tuple[int, list[Transform]]] = []
    if aeads:
        halves.append((ciphers.index(aeads[0]), build(aeads, [])))
    if classic:
        halves.append((ciphers.index(classic[0]), build(classic, integs)))
    return [transforms for _, transforms in sorted(halves, key=lambda h: h[0])]


def _parse(text: str | Sequence[str], protocol: ProtocolId, default: Sequence[str],
           allow_legacy: bool) -> list[Proposal]:
    transform_lists: list[list[Transform]] = []
    for one in _proposal_texts(text):
        for expanded in (default if one.lower() == "default" else (one,)):
            transform_lists.extend(_parse_one(expanded, protocol, allow_legacy))
    if len(transform_lists) > 255:  # RFC 7296 §3.3.1: the proposal number is one octet
        raise ValueError("more than 255 proposals")
    return [Proposal(n, protocol, b"", transforms) for n, transforms in enumerate(transform_lists, 1)]


def parse_ike(text: str | Sequence[str], *, allow_legacy: bool = False) -> list[Proposal]:
    """IKE SA proposals (SAi1) from strongSwan syntax; see the module docstring.

    Proposals are numbered from 1 (RFC 7296 §3.3.1) with an empty SPI (the
    IKE SPIs are in the header during IKE_SA_INIT).  Raises ValueError for
    an unknown or unusable token, a legacy token without ``allow_legacy``,
    or a proposal that lacks a mandatory transform type.
    """
    return _parse(text, ProtocolId.IKE, _IKE_DEFAULT, allow_legacy)


def parse_esp(text: str | Sequence[str], *, allow_legacy: bool = False) -> list[Proposal]:
    """ESP proposals (SAi2 / CREATE_CHILD_SA) from strongSwan syntax; see the module docstring.

    Proposals are numbered from 1 with ``spi=b""``: the caller puts its
    inbound SPI in with :func:`with_spi`.  Only what the datapath
    (:mod:`ipsecd.transforms`) runs is accepted.
    """
    return _parse(text, ProtocolId.ESP, _ESP_DEFAULT, allow_legacy)


# --------------------------------------------------------------------------- matching


def _by_type(proposal: Proposal) -> dict[int, list[Transform]]:
    out: dict[int, list[Transform]] = {}
    for transform in proposal.transforms:
        out.setdefault(int(transform.type), []).append(transform)
    return out


def _well_formed(transform: Transform) -> bool:
    """Only attributes we understand (RFC 7296 §3.3.6): at most one TV Key Length."""
    lengths = [a for a in transform.attributes if a.type == TransformAttributeType.KEY_LENGTH]
    return (len(lengths) == len(transform.attributes) <= 1
            and all(isinstance(a.value, int) for a in lengths))


def _same(a: Transform, b: Transform) -> bool:
    """Same type, id and key length, and nothing else attached (RFC 7296 §3.3.6)."""
    # type and id first: the cheap tests that rule out most pairs
    return (a.type == b.type and a.id == b.id and _well_formed(a) and _well_formed(b)
            and a.key_length == b.key_length)


def _in(transform: Transform, candidates: Sequence[Transform]) -> bool:
    return any(_same(transform, c) for c in candidates)


def _copy(transform: Transform) -> Transform:
    return Transform(transform.type, transform.id,
                     [TransformAttribute(a.type, a.value) for a in transform.attributes])


def _none_of(kind: TransformType) -> Transform:
    return Transform(kind, 0)  # DhGroup.NONE, EsnId.NO_ESN and the ADDKE NONE are all 0


def _implicit(protocol: ProtocolId, kind: int) -> list[Transform]:
    """What an absent transform type means.

    RFC 7296 §3.3.2: no ESN transform means no extended sequence numbers
    (we read it as NO_ESN); an ESP proposal without DH does no PFS (as NONE,
    §3.3.3); RFC 9370 §2.2.2: an absent ADDKE type is NONE.  Anything else
    absent is just absent.
    """
    if kind == TransformType.ESN:
        return [_none_of(TransformType.ESN)]
    if kind == TransformType.DH and protocol == ProtocolId.ESP:
        return [_none_of(TransformType.DH)]
    if kind in _ADDKE_TYPES:
        return [_none_of(TransformType(kind))]
    return []


def _required(protocol: ProtocolId) -> tuple[TransformType, ...]:
    """Mandatory types (RFC 7296 §3.3.3); INTEG is checked with ENCR (it depends on the cipher)."""
    if protocol == ProtocolId.IKE:
        return (TransformType.ENCR, TransformType.PRF, TransformType.DH)
    if protocol == ProtocolId.ESP:
        return (TransformType.ENCR,)
    return (TransformType.INTEG,)  # AH


def _match(offered: Proposal, ours: Proposal) -> Proposal | None:
    """One transform of each offered type, each acceptable to ``ours``, or None."""
    protocol = offered.protocol
    if protocol != ours.protocol or protocol not in (ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH):
        return None
    theirs, mine = _by_type(offered), _by_type(ours)
    if any(kind not in _KNOWN_TYPES for kind in theirs):
        return None  # RFC 7296 §3.3.6: a type we do not understand makes the proposal unacceptable
    chosen: dict[int, Transform] = {}

    # ENCR and INTEG together: an AEAD wants no INTEG (or NONE), any other cipher a real one.
    if protocol == ProtocolId.AH:
        if TransformType.ENCR in theirs:
            return None  # AH has no encryption (RFC 7296 §3.3.3)
        integ = _first(theirs.get(TransformType.INTEG, []), mine.get(TransformType.INTEG, []), real=True)
        if integ is None:
            return None
        chosen[TransformType.INTEG] = integ
    else:
        for encr in theirs.get(TransformType.ENCR, []):
            if not _in(encr, mine.get(TransformType.ENCR, [])):
                continue
            offered_integ = theirs.get(TransformType.INTEG)
            if encr.id in AEAD_IDS:
                # RFC 7296 §3.3: with a combined-mode cipher INTEG is absent or NONE.
                none = [t for t in offered_integ or [] if t.id == IntegId.NONE and _well_formed(t)]
                if offered_integ is not None and not none:
                    continue
                integ = none[0] if none else None
            else:
                integ = _first(offered_integ or [], mine.get(TransformType.INTEG, []), real=True)
                if integ is None:
                    continue
            chosen[TransformType.ENCR] = encr
            if integ is not None:
                chosen[TransformType.INTEG] = integ
            break
        else:
            return None

    for kind, transforms in theirs.items():
        if kind in (TransformType.ENCR, TransformType.INTEG):
            continue
        pick = _first(transforms, mine.get(kind) or _implicit(protocol, kind), real=False)
        if pick is None:
            return None
        chosen[kind] = pick
    # Types we require that the peer left out: only those whose absence means NONE.
    for kind, transforms in mine.items():
        if kind in theirs or kind in (TransformType.ENCR, TransformType.INTEG):
            continue
        implicit = _implicit(protocol, kind)
        if not implicit or not _in(implicit[0], transforms):
            return None
    if any(kind not in chosen for kind in _required(protocol)):
        return None
    if protocol == ProtocolId.IKE and chosen[TransformType.DH].id == DhGroup.NONE:
        return None  # IKE_SA_INIT needs a real key exchange (RFC 7296 §1.2)
    return Proposal(offered.number, protocol, bytes(offered.spi),
                    [_copy(chosen[kind]) for kind in sorted(chosen)])


def _first(offered: Sequence[Transform], ours: Sequence[Transform], *, real: bool) -> Transform | None:
    """The first offered transform (the peer's order) that ``ours`` accepts.

    ``real`` excludes the id 0 (INTEG NONE), which only an AEAD may take.
    The peer's order is kept within a proposal: its KE payload is usually
    for its first group (RFC 7296 §1.2), and :func:`restrict_dh` moves the
    group we asked for first, so this avoids INVALID_KE_PAYLOAD round trips.
    """
    for transform in offered:
        if real and transform.id == 0:
            continue
        if _in(transform, ours):
            return transform
    return None


def select(offered: Sequence[Proposal], configured: Sequence[Proposal]) -> Proposal | None:
    """The responder's choice (RFC 7296 §2.7, §3.3.6), or None for NO_PROPOSAL_CHOSEN.

    Our configured proposals are tried in our order and, for each, the
    offered ones in the peer's order; the first offered proposal of the same
    protocol for which every offered transform type has an acceptable
    transform (same type, id and key length as one of ours; a transform with
    an attribute other than Key Length is never acceptable, §3.3.6) wins.
    Within it, each type takes the peer's first acceptable transform.

    The result carries the offered proposal's number, protocol and SPI (the
    caller puts its own SPI in with :func:`with_spi`) and exactly one
    transform of each offered type, each a copy of an offered transform.

    Absent types: a type we have that the peer left out matches only when
    absence means NONE and we accept NONE - ESN (absent = NO_ESN), ESP's DH
    (absent = no PFS; so if we configured groups without ``modpnone`` and
    the peer offers none, no match; if we configured no group, an offered
    group other than NONE does not match) and RFC 9370's ADDKE types.  IKE
    needs ENCR, PRF and a DH group other than NONE; a classic cipher needs
    an integrity transform other than NONE, an AEAD none (or NONE).
    Unknown transform ids and types are not matched, never an error.
    """
    # Peers offer the same proposals again and again (every initiator of a connection, each
    # IKE_SA_INIT and IKE_AUTH): the choice is remembered by what decides it - the offered
    # and configured proposals' numbers, protocols and transforms, not the SPIs - as the
    # index of the offered proposal and the transforms taken from it.
    key = (tuple(map(_shape, offered)), tuple(map(_shape, configured)))
    if key not in _SELECTED:
        found = _select(offered, configured)
        if len(_SELECTED) >= _SELECTED_MAX:
            _SELECTED.clear()  # a peer sending ever new proposals cannot grow it
        if found is None:
            _SELECTED[key] = None
            return None
        index, chosen = found
        _SELECTED[key] = (index, tuple(map(_transform_shape, chosen.transforms)))
        return chosen
    hit = _SELECTED[key]
    if hit is None:
        return None
    index, transforms = hit
    proposal = offered[index]
    return Proposal(proposal.number, proposal.protocol, bytes(proposal.spi),
                    [Transform(kind, ident, [TransformAttribute(a, v) for a, v in attributes])
                     for kind, ident, attributes in transforms])


def _select(offered: Sequence[Proposal],
            configured: Sequence[Proposal]) -> tuple[int, Proposal] | None:
    """:func:`select` computed (no memory), with the index of the offered proposal."""
    for ours in configured:
        for index, proposal in enumerate(offered):
            chosen = _match(proposal, ours)
            if chosen is not None:
                return index, chosen
    return None


_TransformShape = tuple[TransformType, int,
                        tuple[tuple[TransformAttributeType, int | bytes], ...]]
_SELECTED: dict[object, tuple[int, tuple[_TransformShape, ...]] | None] = {}
_SELECTED_MAX = 1024


def _transform_shape(t: Transform) -> _TransformShape:
    return (t.type, t.id, tuple([(a.type, a.value) for a in t.attributes]))


def _shape(p: Proposal) -> tuple[int, ProtocolId, tuple[_TransformShape, ...]]:
    """What of a proposal decides a choice (its SPI does not)."""
    return (p.number, p.protocol, tuple(map(_transform_shape, p.transforms)))


def _no_proposal(reason: str) -> IkeProtocolError:
    return IkeProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, reason)


def check_chosen(chosen: Proposal | Sequence[Proposal], sent: Sequence[Proposal]) -> None:
    """The initiator's check of the responder's SA payload (RFC 7296 §2.7, §3.3.6).

    ``chosen`` is the proposal of SAr1/SAr2, or the SA payload's whole list
    of proposals (which must then hold exactly one).  It must carry the
    number and protocol of one we ``sent``, an SPI of the protocol's size
    (§3.3.1: 4 octets, not zero, for ESP and AH - RFC 4303 §2.1; none or 8
    for IKE), exactly one transform per type, each one we offered in that
    proposal, and every type we offered - except that an absent ESN means
    NO_ESN, an absent ESP DH means no PFS, an absent ADDKE means NONE (each
    allowed only if we offered that NONE) and an AEAD takes no INTEG.
    Raises :class:`~ipsecd.ike.errors.IkeProtocolError` with
    NO_PROPOSAL_CHOSEN otherwise.
    """
    if not isinstance(chosen, Proposal):
        if len(chosen) != 1:
            raise _no_proposal(f"the answer holds {len(chosen)} proposals, not one")
        chosen = chosen[0]
    ours = next((p for p in sent if p.number == chosen.number and p.protocol == chosen.protocol), None)
    if ours is None:
        raise _no_proposal(f"proposal {chosen.number} ({chosen.protocol.name}) is not one we sent")
    spi_sizes = (0, 8) if chosen.protocol == ProtocolId.IKE else (4,)
    if len(chosen.spi) not in spi_sizes or (len(chosen.spi) == 4 and not any(chosen.spi)):
        raise _no_proposal(f"SPI of {len(chosen.spi)} octets for {chosen.protocol.name}")
    theirs, mine = _by_type(chosen), _by_type(ours)
    for kind, transforms in theirs.items():
        if len(transforms) != 1:
            raise _no_proposal(f"{len(transforms)} transforms of type {TransformType(kind).name}")
        if not _in(transforms[0], mine.get(kind, [])):
            raise _no_proposal(f"{_name(transforms[0])} was not offered")
    encr = theirs.get(TransformType.ENCR, [None])[0]
    aead = encr is not None and encr.id in AEAD_IDS
    integ = theirs.get(TransformType.INTEG, [None])[0]
    if aead and integ is not None and integ.id != IntegId.NONE:
        raise _no_proposal("an integrity transform with a combined-mode cipher")  # RFC 7296 §3.3
    if encr is not None and not aead and (integ is None or integ.id == IntegId.NONE):
        raise _no_proposal(f"{_name(encr)} without an integrity transform")
    for kind, transforms in mine.items():
        if kind in theirs or (kind == TransformType.INTEG and aead):
            continue
        implicit = _implicit(chosen.protocol, kind)
        if not implicit or not _in(implicit[0], transforms):
            raise _no_proposal(f"no {TransformType(kind).name} transform in the answer")
    missing = [TransformType(k).name for k in _required(chosen.protocol) if k not in theirs]
    if missing:
        raise _no_proposal(f"no {'/'.join(missing)} transform in the answer")
    if chosen.protocol == ProtocolId.IKE and theirs[TransformType.DH][0].id == DhGroup.NONE:
        raise _no_proposal("IKE SA without a key exchange")


# --------------------------------------------------------------------------- DH and SPI helpers


def dh_groups(proposals: Sequence[Proposal]) -> list[DhGroup]:
    """The distinct DH groups (NONE excluded) in first-seen order: the KE candidates."""
    out: list[DhGroup] = []
    for proposal in proposals:
        for transform in proposal.transforms:
            if transform.type == TransformType.DH and transform.id != DhGroup.NONE:
                group = DhGroup(transform.id)
                if group not in out:
                    out.append(group)
    return out


def chosen_dh(proposal: Proposal) -> DhGroup:
    """The DH group of a chosen proposal, DhGroup.NONE when it has no DH transform."""
    for transform in proposal.transforms:
        if transform.type == TransformType.DH:
            return DhGroup(transform.id)
    return DhGroup.NONE


def _copy_proposal(proposal: Proposal, spi: bytes | None = None,
                   transforms: list[Transform] | None = None) -> Proposal:
    return Proposal(proposal.number, proposal.protocol,
                    bytes(proposal.spi if spi is None else spi),
                    [_copy(t) for t in (proposal.transforms if transforms is None else transforms)])


def restrict_dh(proposals: Sequence[Proposal], group: DhGroup) -> list[Proposal]:
    """Copies with ``group`` moved first among each proposal's DH transforms.

    For the retry after INVALID_KE_PAYLOAD (RFC 7296 §1.2, §2.7): the
    initiator sends the same proposals again with a KE payload for
    ``group``; putting it first makes a responder that keeps the
    initiator's order within a proposal pick it.  Proposals that do not
    offer ``group`` are copied unchanged.
    """
    out = []
    for proposal in proposals:
        slots = [i for i, t in enumerate(proposal.transforms) if t.type == TransformType.DH]
        groups = [proposal.transforms[i] for i in slots]
        wanted = [t for t in groups if t.id == group]
        if not wanted:
            out.append(_copy_proposal(proposal))
            continue
        reordered = wanted + [t for t in groups if t.id != group]
        transforms = list(proposal.transforms)
        for slot, transform in zip(slots, reordered, strict=True):
            transforms[slot] = transform
        out.append(_copy_proposal(proposal, transforms=transforms))
    return out


def with_spi(proposals: Sequence[Proposal], spi: bytes) -> list[Proposal]:
    """Copies with the SPI set (RFC 7296 §3.3.1: our inbound SPI for ESP, 8 octets in an IKE rekey)."""
    return [_copy_proposal(p, spi=spi) for p in proposals]


# --------------------------------------------------------------------------- the Child SA suite


_ENC_BY_ID: dict[int, EncAlgo] = {a.id: a for a in ENC_ALGOS}
_INTEG_BY_ID: dict[int, IntegAlgo] = {a.id: a for a in INTEG_ALGOS}


@dataclass(frozen=True, slots=True)
class ChildSuite:
    """The algorithms of an ESP Child SA and the KEYMAT sizes they take (RFC 7296 §2.17)."""

    enc: EncrId
    enc_key_bytes: int
    """Octets of KEYMAT for encryption, *including* an AEAD's salt at the end
    (AES-GCM: 16/24/32 + 4, RFC 4106 §8.1; ChaCha20-Poly1305: 32 + 4, RFC 7634
    §2, §4; AES-GMAC: 16/24/32 + 4, RFC 4543 §5)."""
    integ: IntegId
    integ_key_bytes: int
    """Octets of KEYMAT for integrity; 0 (with IntegId.NONE) for an AEAD."""
    esn: bool
    dh: DhGroup
    """The PFS group, DhGroup.NONE without PFS."""
    legacy: bool = False
    """True when an algorithm needs the legacy switch (SecurityAssociation.legacy)."""


def child_suite(chosen: Proposal) -> ChildSuite:
    """The suite of a chosen ESP proposal (one transform per type, as :func:`select` returns).

    The sizes are what the datapath takes, so a KEYMAT split by them
    (:func:`ipsecd.ike.crypto.child_sa_keymat`: encryption key, then
    integrity key, per direction) goes straight into
    :class:`ipsecd.sa.SecurityAssociation`: ``enc_key`` is the whole
    encryption part - for AES-GCM, ChaCha20-Poly1305 and AES-GMAC the key
    followed by the 4-octet salt, exactly as setkey's 160/224/288-bit
    ``aes-gcm-16`` keys and as :class:`ipsecd.esp.EspContext` splits it
    (``key[:-4]``, ``key[-4:]``) - and ``auth_key`` the integrity part
    (empty for an AEAD).  Raises :class:`~ipsecd.transforms.TransformError`
    (a ValueError) for anything the datapath cannot run.
    """
    if chosen.protocol != ProtocolId.ESP:
        raise TransformError(f"child_suite takes an ESP proposal, not {chosen.protocol.name}")
    by_type = _by_type(chosen)
    if any(len(ts) != 1 for ts in by_type.values()):
        raise TransformError("a chosen proposal has exactly one transform of each type")
    encr = by_type.get(TransformType.ENCR, [None])[0]
    if encr is None:
        raise TransformError("ESP proposal without an encryption transform")
    enc = _ENC_BY_ID.get(encr.id)
    if enc is None:
        raise TransformError(f"{_name(encr)} is not supported by the ESP datapath")
    if len(enc.key_bits) == 1 and encr.key_length is None:  # fixed key: no attribute (§3.3.5)
        enc_bytes = enc.key_bits[0] // 8
    elif encr.key_length is None or (encr.key_length + 8 * enc.salt_bytes) not in enc.key_bits:
        raise TransformError(f"{_name(encr)}: key length {encr.key_length} not supported")
    else:
        enc_bytes = encr.key_length // 8 + enc.salt_bytes
    integ_transform = by_type.get(TransformType.INTEG, [None])[0]
    integ_id = IntegId(integ_transform.id) if integ_transform is not None else IntegId.NONE
    integ: IntegAlgo | None = None
    if enc.aead:
        if integ_id != IntegId.NONE:
            raise TransformError(f"{enc.name} takes no integrity transform")  # RFC 7296 §3.3
    else:
        integ = _INTEG_BY_ID.get(integ_id)
        if integ is None:
            raise TransformError(f"integrity {integ_id.name} is not supported by the ESP datapath")
        if integ_transform is not None and integ_transform.key_length is not None:
            raise TransformError(f"{integ.name} takes no key length attribute")
    esn = by_type.get(TransformType.ESN, [None])[0]
    return ChildSuite(
        enc=EncrId(enc.id), enc_key_bytes=enc_bytes,
        integ=integ_id, integ_key_bytes=integ.key_bytes if integ is not None else 0,
        esn=esn is not None and esn.id == EsnId.ESN, dh=chosen_dh(chosen),
        legacy=enc.legacy or (integ is not None and integ.legacy),
    )


# --------------------------------------------------------------------------- logs


_ENCR_NAMES: dict[int, str] = {
    EncrId.ENCR_3DES: "3DES_CBC", EncrId.ENCR_DES: "DES_CBC", EncrId.ENCR_BLOWFISH: "BLOWFISH_CBC",
    EncrId.ENCR_CAST: "CAST_CBC", EncrId.ENCR_NULL_AUTH_AES_GMAC: "NULL_AES_GMAC",
}
_DH_NAMES: dict[int, str] = {
    DhGroup.NONE: "MODP_NONE", DhGroup.CURVE25519: "CURVE_25519", DhGroup.CURVE448: "CURVE_448",
}
_ESN_NAMES: dict[int, str] = {EsnId.NO_ESN: "NO_EXT_SEQ", EsnId.ESN: "EXT_SEQ"}


@functools.cache
def _enum_name(enum: type[EncrId] | type[IntegId] | type[PrfId] | type[DhGroup], ident: int) -> str | None:
    """The registry name of ``ident``, None for a value without one (an open enum's pseudo member).
    Cached: a scan of the registry, asked for every SA set up (its suite is logged)."""
    return next((m.name for m in enum if m.value == ident), None)


def _name(transform: Transform) -> str:
    """strongSwan's spelling of one transform (``AES_GCM_16_128``, ``HMAC_SHA2_256_128``)."""
    ident, kind = int(transform.id), transform.type
    if kind == TransformType.ENCR:
        known = _enum_name(EncrId, ident)
        name = _ENCR_NAMES.get(ident) or (known.removeprefix("ENCR_") if known else f"ENCR_{ident}")
        return f"{name}_{transform.key_length}" if transform.key_length is not None else name
    if kind == TransformType.INTEG:
        known = _enum_name(IntegId, ident)
        return known.removeprefix("AUTH_") if known else f"INTEG_{ident}"
    if kind == TransformType.PRF:
        return _enum_name(PrfId, ident) or f"PRF_{ident}"
    if kind == TransformType.DH or kind in _ADDKE_TYPES:
        prefix = "" if kind == TransformType.DH else f"{TransformType(kind).name}:"
        return prefix + (_DH_NAMES.get(ident) or _enum_name(DhGroup, ident) or f"KE_{ident}")
    if kind == TransformType.ESN:
        return _ESN_NAMES.get(ident, f"ESN_{ident}")
    return f"{TransformType(kind).name}_{ident}"


def describe(proposal: Proposal) -> str:
    """The transforms as strongSwan logs them: ``AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519``."""
    # Every IKE SA set up logs its suites: remembered by the transforms' shape.
    key = tuple(map(_transform_shape, proposal.transforms))
    text = _DESCRIBED.get(key)
    if text is None:
        if len(_DESCRIBED) >= _SELECTED_MAX:
            _DESCRIBED.clear()
        text = _DESCRIBED[key] = "/".join(_name(t) for t in proposal.transforms)
    return text


_DESCRIBED: dict[tuple[_TransformShape, ...], str] = {}

