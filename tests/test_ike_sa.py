"""The IKEv2 state machine, two instances back to back in memory (no sockets, no clock).

Interop with an implementation we did not write is in
``test_ike_strongswan.py``; these tests pin down the exchanges' logic:
who retransmits, what a duplicate request gets, rekeying, collisions,
deletion, DPD, INVALID_KE_PAYLOAD and cookies.
"""

from __future__ import annotations

import logging

import pytest
from ike_pair import A, B, Pair, Side, child, connection

from ipsecd.esp import EspContext
from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.messages import decode_header
from ipsecd.ike.sa import ChildActivate, ChildState, IkeDown, IkeRekeyed, IkeUp, State
from ipsecd.replay import ReplayWindow
from ipsecd.sa import Mode


def pair(*, a_kw: dict | None = None, b_kw: dict | None = None,
         a_child: dict | None = None, b_child: dict | None = None) -> Pair:
    a = Side(A, [connection("to-b", A, B, [child(**(a_child or {}))], **(a_kw or {}))])
    b = Side(B, [connection("to-a", B, A, [child("net", ("203.0.113.0/24",),
                                                  ("198.51.100.0/24",), **(b_child or {}))],
                            **(b_kw or {}))])
    return Pair(a, b)


def esp_roundtrip(out_sa, in_sa) -> None:
    """Keys negotiated on each side agree: what one encrypts, the other decrypts."""
    import ipaddress

    from ipsecd.drops import Drop

    sender = EspContext(out_sa)
    receiver = EspContext(in_sa)
    inner = bytes.fromhex("4500001c000000004001f7bdc6336401cb007101") + b"\x08\x00\xf7\xff\x00\x00\x00\x00"
    buf = bytearray(256)
    start = 128
    buf[start:start + len(inner)] = inner
    drop, s, e = sender.encap_into(buf, start, start + len(inner), 1)
    assert drop is Drop.OK
    window = ReplayWindow(64, esn=in_sa.esn)
    drop, i0, i1, _nh = receiver.decap_into(buf, s, e, window)
    assert drop is Drop.OK
    assert bytes(buf[i0:i1]) == inner
    del ipaddress


def test_psk_tunnel_established_both_sides() -> None:
    p = pair()
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED
    (resp,) = p.b.sas
    assert resp.state is State.ESTABLISHED
    assert [type(e) for e in p.a.events].count(IkeUp) == 1
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    assert ca.spi_in == cb.spi_out and ca.spi_out == cb.spi_in
    assert ca.mode is Mode.TUNNEL
    assert [str(t.start_address) for t in ca.local_ts] == ["198.51.100.0"]
    assert [str(t.start_address) for t in cb.local_ts] == ["203.0.113.0"]
    esp_roundtrip(ca.outbound, cb.inbound)
    esp_roundtrip(cb.outbound, ca.inbound)
    # exactly four messages: IKE_SA_INIT and IKE_AUTH, request and response
    assert len(p.delivered) == 4


def test_wrong_psk_fails_and_no_child() -> None:
    p = pair()
    p.b.psk = b"another key entirely, not the same"
    ike = p.initiate()
    p.run()
    assert ike.state is State.DEAD
    assert not p.a.children_up() and not p.b.children_up()
    downs = [e for e in p.a.events if isinstance(e, IkeDown)]
    assert downs and downs[0].failed and "AUTHENTICATION_FAILED" in downs[0].reason


def test_narrowing_to_the_responders_selectors() -> None:
    p = pair(a_child={"local_ts": ("198.51.100.0/23",), "remote_ts": ("0.0.0.0/0",)})
    p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    assert [f"{t.start_address}-{t.end_address}" for t in ca.local_ts] == \
        ["198.51.100.0-198.51.100.255"]
    assert [f"{t.start_address}-{t.end_address}" for t in ca.remote_ts] == \
        ["203.0.113.0-203.0.113.255"]


def test_disjoint_selectors_refused_but_ike_stays() -> None:
    p = pair(a_child={"remote_ts": ("10.9.0.0/16",)})
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED
    assert not p.a.children_up() and not p.b.children_up()


def test_transport_mode() -> None:
    p = pair(a_child={"mode": Mode.TRANSPORT, "local_ts": ("dynamic",), "remote_ts": ("dynamic",)},
             b_child={"mode": Mode.TRANSPORT})
    p.b.conns[0] = connection("to-a", B, A, [child("host", ("dynamic",), ("dynamic",),
                                                   mode=Mode.TRANSPORT)])
    p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    assert ca.mode is Mode.TRANSPORT and ca.outbound.mode is Mode.TRANSPORT
    assert str(ca.local_ts[0].start_address) == str(A)


def test_invalid_ke_payload_retry() -> None:
    p = pair(a_kw={"proposals": "aes128gcm16-prfsha256-x25519-ecp256"},
             b_kw={"proposals": "aes128gcm16-prfsha256-ecp256"})
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED
    kinds = [decode_header(d).exchange_type for d in p.delivered]
    assert kinds.count(ExchangeType.IKE_SA_INIT) == 4  # request, INVALID_KE, request, response


def test_no_proposal_chosen() -> None:
    p = pair(a_kw={"proposals": "aes128gcm16-prfsha256-x25519"},
             b_kw={"proposals": "aes256-sha384-ecp384"})
    ike = p.initiate()
    p.run()
    assert ike.state is State.DEAD
    assert not p.b.sas  # the responder kept no state


def test_only_the_initiator_retransmits_and_duplicates_get_the_cached_answer() -> None:
    p = pair()
    lost = {"n": 0}

    def drop(data: bytes) -> bool:
        h = decode_header(data)
        # lose the first IKE_AUTH response
        if h.exchange_type is ExchangeType.IKE_AUTH and h.response and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    p.drop = drop
    ike = p.initiate()
    p.run()
    assert ike.state is State.AUTH_SENT
    (resp,) = p.b.sas
    assert resp.state is State.ESTABLISHED
    children_b = len(p.b.children_up())
    p.advance(1.5)
    assert ike.state is State.ESTABLISHED
    # the retransmitted request was answered from the cache, not processed again
    assert len(p.b.children_up()) == children_b == 1
    assert ike.retransmissions == 1 and resp.retransmissions == 0


def test_peer_gone_after_retransmissions() -> None:
    p = pair()
    ike = p.initiate()
    p.drop = lambda d: True
    p.run()
    p.advance(60)
    assert ike.state is State.DEAD
    down = next(e for e in p.a.events if isinstance(e, IkeDown))
    assert down.peer_lost and down.failed
    assert ike.retransmissions == p.a.settings.retransmit_tries


def test_child_rekey_and_old_child_deleted() -> None:
    p = pair(a_child={"rekey_time": 60.0, "life_time": 90.0})
    ike = p.initiate()
    p.run()
    (old_a,) = p.a.children_up()
    p.advance(61)
    ups = p.a.children_up()
    assert len(ups) == 2
    new_a = ups[1]
    assert new_a.reqid == old_a.reqid
    assert old_a in p.a.children_down()
    assert old_a.state is ChildState.DELETED
    new_b = p.b.children_up()[1]
    assert p.b.children_up()[0] in p.b.children_down()
    # the rekey responder sent on the old SA until the initiator deleted it (§2.8)
    kinds = [type(e).__name__ for e in p.b.events]
    assert kinds[-3:] == ["ChildUp", "ChildActivate", "ChildDown"]  # activated as the old goes
    assert [e.child for e in p.b.events if isinstance(e, ChildActivate)] == [new_b]
    assert not [e for e in p.a.events if isinstance(e, ChildActivate)]  # the initiator needs none
    esp_roundtrip(new_a.outbound, new_b.inbound)
    esp_roundtrip(new_b.outbound, new_a.inbound)
    assert ike.children == [new_a] and p.b.sas[0].children == [new_b]
    # linger: the old inbound SA stays a moment for packets in flight
    down = [e for e in p.a.events if getattr(e, "child", None) is old_a and hasattr(e, "linger")]
    assert down[0].linger > 0


def test_child_rekey_with_pfs() -> None:
    p = pair(a_child={"esp": "aes128gcm16-x25519", "rekey_time": 30.0},
             b_child={"esp": "aes128gcm16-x25519"})
    p.initiate()
    p.run()
    p.advance(31)
    assert len(p.a.children_up()) == 2 and len(p.b.children_up()) == 2
    esp_roundtrip(p.a.children_up()[1].outbound, p.b.children_up()[1].inbound)


def test_simultaneous_child_rekey_collision_resolved() -> None:
    p = pair()
    ike = p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    resp = p.b.sas[0]
    # both sides start a rekey of the same child before either request arrives
    ike.rekey_child(p.now, ca)
    resp.rekey_child(p.now, cb)
    p.collect(p.a)
    p.collect(p.b)
    p.run()
    p.advance(5)
    live_a = [c for c in ike.children if c.state is not ChildState.DELETED]
    live_b = [c for c in resp.children if c.state is not ChildState.DELETED]
    assert len(live_a) == 1 and len(live_b) == 1, (ike.children, resp.children)
    assert live_a[0].spi_in == live_b[0].spi_out and live_a[0].spi_out == live_b[0].spi_in
    assert live_a[0] is not ca
    esp_roundtrip(live_a[0].outbound, live_b[0].inbound)


def test_ike_rekey_moves_children() -> None:
    p = pair(a_kw={"rekey_time": 100.0})
    ike = p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    p.advance(101)
    rekeyed = [e for e in p.a.events if isinstance(e, IkeRekeyed)]
    assert rekeyed
    new = rekeyed[0].new
    assert new.state is State.ESTABLISHED and ike.state is State.DEAD
    assert new.children == [ca]
    assert new.spi_i != ike.spi_i
    assert not p.a.children_down()  # the child survived the IKE rekey
    new_b = [s for s in p.b.sas if s.state is State.ESTABLISHED]
    assert len(new_b) == 1 and new_b[0].spi_r == new.spi_r
    # the new IKE SA works: a child rekey over it
    new.rekey_child(p.now, ca)
    p.collect(p.a)
    p.run()
    assert len(p.a.children_up()) == 2


def test_delete_removes_children_on_both_sides() -> None:
    p = pair()
    ike = p.initiate()
    p.run()
    ike.delete(p.now)
    p.collect(p.a)
    p.run()
    assert ike.state is State.DEAD and p.b.sas[0].state is State.DEAD
    assert len(p.a.children_down()) == 1 and len(p.b.children_down()) == 1


def test_dpd_detects_dead_peer() -> None:
    p = pair(a_kw={"dpd_delay": 10.0, "dpd_timeout": 20.0})
    ike = p.initiate()
    p.run()
    p.advance(9)
    assert ike.state is State.ESTABLISHED
    p.advance(3)  # a probe goes out and is answered
    assert ike.state is State.ESTABLISHED
    p.drop = lambda d: True  # the peer's link goes down
    p.advance(40)
    assert ike.state is State.DEAD
    down = next(e for e in p.a.events if isinstance(e, IkeDown))
    assert down.peer_lost
    assert p.a.children_down()


@pytest.mark.parametrize("ike_prop,esp_prop", [
    ("aes128gcm16-prfsha256-modp2048", "aes128gcm16"),
    ("aes256-sha256-ecp256", "aes256-sha256"),
    ("chacha20poly1305-prfsha512-x25519", "chacha20poly1305"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-esn"),
])
def test_algorithm_matrix(ike_prop: str, esp_prop: str) -> None:
    p = pair(a_kw={"proposals": ike_prop}, b_kw={"proposals": ike_prop},
             a_child={"esp": esp_prop}, b_child={"esp": esp_prop})
    p.initiate()
    p.run()
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    esp_roundtrip(ca.outbound, cb.inbound)
    esp_roundtrip(cb.outbound, ca.inbound)
    if "esn" in esp_prop:
        assert ca.outbound.esn and cb.inbound.esn


def test_forced_encap_switches_to_nat_t_port() -> None:
    p = pair(a_kw={"encap": True})
    ike = p.initiate()
    p.run()
    assert ike.state is State.ESTABLISHED
    assert ike.local.port == 4500 and ike.remote.port == 4500
    (ca,) = p.a.children_up()
    (cb,) = p.b.children_up()
    assert ca.outbound.encap is not None and cb.outbound.encap is not None
    assert (ca.outbound.encap.sport, ca.outbound.encap.dport) == (4500, 4500)


def test_nat_seen_in_ike_sa_init_is_told_by_the_established_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # A's forced encapsulation sends a wrong NAT_DETECTION_SOURCE_IP: B sees the peer
    # "behind a NAT".  One line per setup less: B says so in its "established" line.
    p = pair(a_kw={"encap": True})
    with caplog.at_level(logging.INFO, logger="ipsecd.ike"):
        p.initiate()
        p.run()
    (resp,) = p.b.sas
    assert resp.state is State.ESTABLISHED and resp.nat_remote
    lines = [r.getMessage() for r in caplog.records if resp.describe() in r.getMessage()]
    assert [line for line in lines if "NAT detected" in line] == [
        f"{resp.describe()}: IKE SA established with {resp.remote} ({resp.suite_text}); "
        "NAT detected (remote): ESP goes in UDP"]


def test_nat_seen_in_ike_sa_init_is_told_when_the_setup_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    p = pair(a_kw={"encap": True})
    p.b.psk = b"another key entirely, not the same"
    with caplog.at_level(logging.INFO, logger="ipsecd.ike"):
        p.initiate()
        p.run()
    (resp,) = p.b.sas
    assert resp.state is State.DEAD
    assert f"{resp.describe()}: NAT detected (remote): ESP goes in UDP" in [
        r.getMessage() for r in caplog.records]


def test_several_children_on_one_ike_sa() -> None:
    """The first child comes with IKE_AUTH, the next ones with CREATE_CHILD_SA (§1.3.1)."""
    kids_a = [child("v4", ("198.51.100.0/24",), ("203.0.113.0/24",)),
              child("v6", ("2001:db8:a::/64",), ("2001:db8:b::/64",))]
    kids_b = [child("v4", ("203.0.113.0/24",), ("198.51.100.0/24",)),
              child("v6", ("2001:db8:b::/64",), ("2001:db8:a::/64",))]
    a = Side(A, [connection("to-b", A, B, kids_a)])
    b = Side(B, [connection("to-a", B, A, kids_b)])
    p = Pair(a, b)
    ike = p.initiate()
    p.run()
    assert [c.name for c in p.a.children_up()] == ["v4", "v6"]
    assert sorted(c.name for c in p.b.children_up()) == ["v4", "v6"]
    v6 = p.a.children_up()[1]
    assert v6.local_ts[0].start_address.version == 6
    assert len({c.reqid for c in ike.children}) == 2
    kinds = [decode_header(d).exchange_type for d in p.delivered]
    assert kinds.count(ExchangeType.CREATE_CHILD_SA) == 2  # request and response
    for ca in p.a.children_up():
        cb = next(c for c in p.b.children_up() if c.spi_in == ca.spi_out)
        assert cb.name == ca.name
