"""IPComp negotiation in IKEv2 (RFC 7296 §2.22), two state machines back to back in memory.

The initiator of a child with ``ipcomp = true`` sends IPCOMP_SUPPORTED with
its CPI and DEFLATE; a responder whose child wants IPComp answers with its
own CPI, one that does not ignores the offer.  Both then carry an IPComp SA
pair (inbound: own CPI, outbound: the peer's) in the child's mode, and the
pair compresses and decompresses for real (:class:`ipsecd.ipcomp.IpcompContext`).
"""

from __future__ import annotations

import pytest
from ike_pair import A, B, Pair, Side, child, connection

from ipsecd.drops import Drop
from ipsecd.iana import IpcompId, IpProto
from ipsecd.ike.constants import NotifyType
from ipsecd.ike.messages import Notify
from ipsecd.ike.sa import ChildActivate, ChildSa, State, _peer_cpi
from ipsecd.ipcomp import IpcompContext
from ipsecd.packet import ipv4_header
from ipsecd.sa import Mode, SAState, SecurityAssociation

TEXT = b"negotiated IPComp, RFC 7296 section 2.22. " * 30


def pair(a_ipcomp: bool, b_ipcomp: bool, *, mode: Mode = Mode.TUNNEL, **a_child: object) -> Pair:
    if mode is Mode.TRANSPORT:
        a_cfg = child(mode=mode, local_ts=("dynamic",), remote_ts=("dynamic",), ipcomp=a_ipcomp,
                      **a_child)  # type: ignore[arg-type]
        b_cfg = child("net", ("dynamic",), ("dynamic",), mode=mode, ipcomp=b_ipcomp)
    else:
        a_cfg = child(ipcomp=a_ipcomp, **a_child)  # type: ignore[arg-type]
        b_cfg = child("net", ("203.0.113.0/24",), ("198.51.100.0/24",), ipcomp=b_ipcomp)
    return Pair(Side(A, [connection("to-b", A, B, [a_cfg])]),
                Side(B, [connection("to-a", B, A, [b_cfg])]))


def compresses(out_sa: SecurityAssociation, in_sa: SecurityAssociation) -> None:
    """What one side's outbound IPComp SA compresses, the other's inbound SA restores."""
    assert out_sa.spi == in_sa.spi and out_sa.mode is in_sa.mode
    packet = bytes(ipv4_header(A.packed, B.packed, IpProto.UDP, len(TEXT))) + TEXT
    drop, compressed = IpcompContext(out_sa).encap(packet)
    assert drop is Drop.OK and compressed[9] == IpProto.IPCOMP
    assert len(compressed) < len(packet) + (20 if out_sa.mode is Mode.TUNNEL else 0)
    drop, restored = IpcompContext(in_sa).decap(compressed)
    assert (drop, restored) == (Drop.OK, packet)


def assert_ipcomp(ca: ChildSa, cb: ChildSa, mode: Mode) -> None:
    assert ca.ipcomp_in is not None and ca.ipcomp_out is not None
    assert cb.ipcomp_in is not None and cb.ipcomp_out is not None
    for c in (ca, cb):
        for sa in (c.ipcomp_in, c.ipcomp_out):
            assert sa.protocol is IpProto.IPCOMP and sa.comp is IpcompId.IPCOMP_DEFLATE
            assert sa.mode is mode and sa.reqid == c.reqid and 256 <= sa.spi <= 61439
        assert c.ipcomp_cpi == c.ipcomp_in.spi
        assert (c.ipcomp_in.dst, c.ipcomp_out.src) == (c.inbound.dst, c.outbound.src)
    assert ca.ipcomp_out.spi == cb.ipcomp_in.spi and cb.ipcomp_out.spi == ca.ipcomp_in.spi
    assert ca.summary()["ipcomp"]["cpi_in"] == f"{ca.ipcomp_in.spi:04x}"
    compresses(ca.ipcomp_out, cb.ipcomp_in)
    compresses(cb.ipcomp_out, ca.ipcomp_in)


@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
def test_both_want_ipcomp_in_ike_auth(mode: Mode) -> None:
    p = pair(True, True, mode=mode)
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    assert_ipcomp(ca, cb, mode)
    assert ca.ipcomp_cpi == p.a.cpis[0] and cb.ipcomp_cpi == p.b.cpis[0]
    assert not p.a.released_cpis and not p.b.released_cpis  # the manager releases on install


def test_responder_without_ipcomp_ignores_the_offer() -> None:
    p = pair(True, False)
    p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    assert ca.ipcomp_in is ca.ipcomp_out is cb.ipcomp_in is cb.ipcomp_out is None
    assert ca.ipcomp_cpi == cb.ipcomp_cpi == 0 and ca.summary()["ipcomp"] is None
    assert p.b.cpis == []  # the responder allocated nothing (and sent no notify back)
    assert p.a.released_cpis == p.a.cpis  # the initiator's offered CPI is free again


def test_initiator_without_ipcomp_offers_nothing() -> None:
    p = pair(False, True)
    p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    assert ca.ipcomp_in is None and cb.ipcomp_in is None
    assert p.a.cpis == [] and p.b.cpis == []


def test_create_child_sa_and_rekey_make_new_cpis() -> None:
    p = pair(True, True, rekey_time=60.0)
    ike = p.initiate()
    p.run()
    (old_a,) = p.a.children_up()
    (old_b,) = p.b.children_up()
    p.advance(61)  # CREATE_CHILD_SA rekey
    new_a, new_b = p.a.children_up()[1], p.b.children_up()[1]
    assert new_a.reqid == old_a.reqid
    assert_ipcomp(new_a, new_b, Mode.TUNNEL)
    assert new_a.ipcomp_cpi != old_a.ipcomp_cpi and new_b.ipcomp_cpi != old_b.ipcomp_cpi
    assert old_a in p.a.children_down() and old_b in p.b.children_down()
    # The rekey responder's new outbound SAs wait together (§2.8): the peer's new CPI is
    # not used before the peer has its new inbound IPComp SA; activation frees both.
    assert new_b.outbound.state is new_b.ipcomp_out.state is SAState.LARVAL
    assert [e.child for e in p.b.events if isinstance(e, ChildActivate)] == [new_b]
    # another child on the same IKE SA, CREATE_CHILD_SA without a rekey
    ike.add_child(p.now, child("more", ipcomp=True))
    p.collect(p.a)
    p.run()
    more_a, more_b = p.a.children_up()[2], p.b.children_up()[2]
    assert more_a.name == "more"
    assert_ipcomp(more_a, more_b, Mode.TUNNEL)
    assert len({c.ipcomp_cpi for c in (old_a, new_a, more_a)}) == 3


def test_refused_child_releases_the_offered_cpi() -> None:
    p = pair(True, True, remote_ts=("10.9.0.0/16",))  # the responder refuses the selectors
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED and not p.a.children_up()
    assert p.a.cpis and p.a.released_cpis == p.a.cpis and p.b.cpis == []


def _notify(cpi: int, transform: int) -> Notify:
    return Notify(NotifyType.IPCOMP_SUPPORTED, cpi.to_bytes(2, "big") + bytes((transform,)))


def test_only_deflate_is_taken_from_an_offer() -> None:
    lzs, unknown, deflate = _notify(0x300, 3), _notify(0x301, 200), _notify(0x302, 2)
    assert _peer_cpi([lzs, unknown, deflate]) == 0x302
    assert _peer_cpi([lzs, unknown]) is None  # no transform we implement: no IPComp
    assert _peer_cpi([]) is None
    # malformed notifies and unusable CPIs are no offer (logged), never an exception
    assert _peer_cpi([Notify(NotifyType.IPCOMP_SUPPORTED, b"\x03")]) is None
    assert _peer_cpi([_notify(100, 2)]) is None  # reserved CPI (RFC 3173 §3.3)
    assert _peer_cpi([_notify(0, 2), deflate]) == 0x302
