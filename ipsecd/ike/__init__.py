"""IKEv2 (RFC 7296), sans-I/O: the codecs and crypto the state machines build on.

Layout
------
* :mod:`ipsecd.ike.constants` - the IANA registries as open IntEnums
  (unknown and private-use code points survive a round trip).
* :mod:`ipsecd.ike.errors` - the exception classes: ``IkeProtocolError``
  carries the notify error code for the peer, ``IkeDecryptError`` is a
  silent, counted drop (§2.21.1), ``IkeLocalError`` is our own misuse.
* :mod:`ipsecd.ike.messages` - the IKE header and every payload of §3.2-§3.16
  (and SKF, RFC 7383) as dataclasses; ``decode(bytes) -> Message`` and
  ``encode(Message) -> bytes``.
* :mod:`ipsecd.ike.dh` - key exchange groups (MODP, ECP, Curve25519/448)
  with the RFC 6989 checks: ``group(id).generate().exchange(peer) -> g^ir``.
* :mod:`ipsecd.ike.crypto` - PRFs, prf+, the IKE SA and Child SA key
  schedules (§2.13-§2.18), PSK AUTH (§2.15) and SK/SKF protection (§3.14).

What a state machine calls
--------------------------
IKE_SA_INIT::

    key = dh.group(DhGroup.CURVE25519).generate()      # KE payload: key.public_bytes()
    request = messages.encode(Message(..., payloads=[SA(...), KE(...), Nonce(...)]))
    reply = messages.decode(datagram)                   # IkeProtocolError -> notify or drop
    suite = crypto.IkeSaSuite.from_proposal(sa.proposals[0])
    SKEYSEED, keys = crypto.ike_sa_keys_from_exchange(suite, Ni, Nr, key.exchange(KEr.data), SPIi, SPIr)

IKE_AUTH and later exchanges::

    out = keys.cipher(initiator=True, sending=True)
    datagram = crypto.protect(Message(...), [IDi(...), AUTH(...), SA(...), TSi(...), TSr(...)], out)
    message, inner = crypto.unprotect(datagram, keys.cipher(initiator=True, sending=False))
    octets = crypto.signed_octets(prf, RealMessage1, Nr, keys.SK_pi, idi)
    AUTH(AuthMethod.SHARED_KEY_MIC, crypto.psk_auth(prf, psk, octets))
    child = crypto.child_sa_keymat(prf, keys.SK_d, Ni, Nr, encr_bytes, integ_bytes)

Nothing in this package does I/O, keeps time, or logs key material.
"""
