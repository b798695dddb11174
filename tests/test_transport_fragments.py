"""Transport mode and datagrams bigger than the path: encapsulated whole, fragmented after.

RFC 4303 §3.3.4 and RFC 4302 §3.3.4: transport-mode ESP and AH are applied
to whole datagrams, and fragmentation happens after IPsec processing.  The
worker (``Worker._send_whole``, ``_outbound_fragment``) encapsulates the
whole datagram, cuts the outer IPv4 packet with
:func:`workers.icmp.fragment_ipv4`, and first reassembles what the host cut
before the TUN.  Checked here without a network: the outer fragments fit
the path, keep the datagram's identification and clear DF, and come back -
through our reassembler and our decapsulation, and through scapy's
``defragment`` - as exactly the datagram sent.  The daemon tests
(``test_daemon_transport.py``, ``test_daemon_interop_scapy.py``) do the same
on the wire.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from conftest import BY_NAME, OUTER, key_bytes, make_sa
from scapy.layers.inet import IP, UDP, defragment, fragment

from ipsecd.ah import AhContext
from ipsecd.drops import Drop
from ipsecd.esp import EspContext
from ipsecd.iana import IntegId, IpProto
from ipsecd.sa import Mode, SecurityAssociation
from ipsecd.satable import SEQ_GONE
from workers.icmp import fragment_ipv4
from workers.reassembly import Reassembler
from workers.worker import HEADROOM, OUT_ESP, TAILROOM, Worker, _AhOut, _Out

SRC, DST = str(OUTER[4][0]), str(OUTER[4][1])
PATH_MTU = 1500


def _datagram(size: int, *, ident: int = 0x4242, df: bool = False) -> bytes:
    """A UDP datagram of ``size`` bytes in all, from the SA's source to its destination."""
    payload = os.urandom(size - 28)
    return bytes(IP(src=SRC, dst=DST, id=ident, flags="DF" if df else 0)
                 / UDP(sport=4000, dport=9000) / payload)


def _esp_pair(name: str, encap: bool = False) -> tuple[_Out, EspContext]:
    t = BY_NAME[name]
    out_sa = make_sa(t, mode=Mode.TRANSPORT, encap=encap)
    out = _Out(0, 1, EspContext(out_sa), out_sa)
    return out, EspContext(make_sa(t, mode=Mode.TRANSPORT, encap=encap))


def _ah_sa() -> SecurityAssociation:
    return SecurityAssociation(
        spi=0x3001, protocol=IpProto.AH, src=ipaddress.ip_address(SRC),
        dst=ipaddress.ip_address(DST), mode=Mode.TRANSPORT,
        auth=IntegId.AUTH_HMAC_SHA2_256_128, auth_key=key_bytes("ah", 32))


class _Table:
    """``SATable.alloc_seq`` as the worker sees it: numbers in order, or a scripted answer."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.next = 1
        self.answers = answers

    def alloc_seq(self, slot: int, count: int, limit: int, uid: int | None = None) -> int:
        if self.answers:
            return self.answers.pop(0)
        first, self.next = self.next, self.next + count
        return first


class _Tx:
    """A TxSender that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.flushes = 0

    def send(self, packet: Any) -> bool:
        self.sent.append(bytes(packet))
        return True

    def flush(self) -> int:
        self.flushes += 1
        return 0


def _worker(out: _Out, table: _Table | None = None) -> Worker:
    """A Worker with just what the transport-mode fragment paths touch (no TUN, no rings)."""
    w = Worker.__new__(Worker)
    w.k = 0
    w.outbound = {0: out}
    w.table = table or _Table()  # type: ignore[assignment]
    w.acc, w.sa_drops, w.wk_drops = {}, {}, {}
    w._log_last, w._log_count = {}, {}
    w._big = None
    w.tun_reassembler = None
    w.capacity = PATH_MTU + 1
    w.out_flows = {}
    return w


def _decision(out: _Out, tx: _Tx) -> tuple[Any, ...]:
    """What ``_outbound_decide`` returns for a transport-mode SA (see there)."""
    return (OUT_ESP, 0, out.encap, out.max_inner(PATH_MTU, 20), tx, 4, PATH_MTU)


def _flow_key(packet: bytes) -> tuple[bytes, int, int]:
    frag = int.from_bytes(packet[6:8], "big") & 0x1FFF
    ports = 0 if frag else int.from_bytes(packet[20:24], "big")
    return packet[12:20], packet[9], ports


def _reassemble(fragments: list[bytes]) -> bytes:
    r = Reassembler()  # the workers' reassembler, keeping every datagram
    wholes = [w for f in fragments if (w := r.push(f, 0.0)) is not None]
    assert len(wholes) == 1 and not r.discards and not r.pending
    return wholes[0].packet


def _decrypted(peer: EspContext, outer: bytes) -> bytes:
    drop, result = peer.decap(outer)
    assert drop is Drop.OK and result is not None
    return result.packet


def _check_outer_fragments(fragments: list[bytes], ident: int, proto: int) -> None:
    assert len(fragments) > 1
    for i, f in enumerate(fragments):
        assert len(f) <= PATH_MTU
        assert f[9] == proto and int.from_bytes(f[4:6], "big") == ident
        flags = int.from_bytes(f[6:8], "big")
        assert not flags & 0x4000  # DF clear
        assert bool(flags & 0x2000) == (i < len(fragments) - 1)


@pytest.mark.parametrize("name", ["aes128-gcm16", "aes256-cbc+sha384", "chacha20-poly1305",
                                  "null+sha1"])
@pytest.mark.parametrize("size", [1488, 3028, 8028, 65535 - 80])  # UDP payloads 1460, 3000, 8000
def test_esp_whole_datagram_in_outer_fragments(name: str, size: int) -> None:
    out, peer = _esp_pair(name)
    datagram = _datagram(size)
    tx = _Tx()
    w = _worker(out)
    d = _decision(out, tx)
    assert size > d[3]  # too big for the SA once encapsulated
    buf = w._big_buffer()
    buf[HEADROOM:HEADROOM + size] = datagram
    w._send_whole(d, buf, HEADROOM, size)
    assert not w.sa_drops and w.acc == {0: [1, size]} and tx.flushes == 1
    _check_outer_fragments(tx.sent, 0x4242, 50)
    outer = _reassemble(tx.sent)
    assert len(outer) == out.outer_length(size, 20)
    assert _decrypted(peer, outer) == datagram
    # scapy's reassembly gives the same outer packet.
    (whole,) = defragment([IP(f) for f in tx.sent])
    assert bytes(whole)[20:] == outer[20:]


def test_esp_in_udp_whole_datagram_in_outer_fragments() -> None:
    out, peer = _esp_pair("aes128-gcm16", encap=True)
    datagram = _datagram(3000)
    tx = _Tx()
    w = _worker(out)
    buf = w._big_buffer()
    buf[HEADROOM:HEADROOM + 3000] = datagram
    w._send_whole(_decision(out, tx), buf, HEADROOM, 3000)
    _check_outer_fragments(tx.sent, 0x4242, 17)
    assert _decrypted(peer, _reassemble(tx.sent)) == datagram


def test_ah_whole_datagram_in_outer_fragments() -> None:
    sa = _ah_sa()
    out = _AhOut(0, 1, AhContext(sa), sa)
    peer = AhContext(_ah_sa())
    datagram = _datagram(8000)
    tx = _Tx()
    w = _worker(out)
    buf = w._big_buffer()
    buf[HEADROOM:HEADROOM + 8000] = datagram
    w._send_whole(_decision(out, tx), buf, HEADROOM, 8000)
    _check_outer_fragments(tx.sent, 0x4242, 51)
    assert peer.decap(_reassemble(tx.sent)) == (Drop.OK, datagram)  # AH: the packet itself


def test_too_big_for_any_ipv4_packet_once_encapsulated() -> None:
    out, _ = _esp_pair("aes128-gcm16")
    tx = _Tx()
    w = _worker(out)
    buf = w._big_buffer()
    datagram = _datagram(65535)
    buf[HEADROOM:HEADROOM + 65535] = datagram
    w._send_whole(_decision(out, tx), buf, HEADROOM, 65535)
    assert tx.sent == [] and w.sa_drops == {(0, int(Drop.MTU)): 1}


@pytest.mark.parametrize(("answer", "reason"), [(0, Drop.SEQ_OVERFLOW), (SEQ_GONE, Drop.NO_SA)])
def test_no_sequence_number_no_packet(answer: int, reason: Drop) -> None:
    out, _ = _esp_pair("aes128-gcm16")
    tx = _Tx()
    w = _worker(out, _Table([answer]))
    buf = w._big_buffer()
    buf[HEADROOM:HEADROOM + 3000] = _datagram(3000)
    w._send_whole(_decision(out, tx), buf, HEADROOM, 3000)
    assert tx.sent == [] and w.sa_drops == {(0, int(reason)): 1} and not w.acc


@pytest.mark.parametrize("size", [3000, 8000])
def test_host_fragments_are_reassembled_then_sent_whole(size: int) -> None:
    """What the host cut at the TUN MTU goes out as one ESP datagram (in outer fragments)."""
    out, peer = _esp_pair("aes128-gcm16")
    datagram = _datagram(size, ident=0x777)
    host = [bytes(f) for f in fragment(IP(datagram), fragsize=PATH_MTU - 20)]
    assert len(host) > 1 and all(len(f) <= PATH_MTU for f in host)
    tx = _Tx()
    w = _worker(out)
    d = _decision(out, tx)
    for f in host:
        w.out_flows[_flow_key(f)] = d
    pending: list[Any] = []
    need: dict[int, int] = {}
    # Out of order: the last fragment first.
    for f in [host[-1], *host[:-1]]:
        buf = memoryview(bytearray(HEADROOM + len(f) + TAILROOM))
        buf[HEADROOM:HEADROOM + len(f)] = f
        assert w._outbound_fragment(buf, HEADROOM, len(f), f[12:20], f[9], _flow_key(f)[2],
                                    pending, need)
    assert not pending and not need and not w.wk_drops
    assert w.tun_reassembler is not None and not w.tun_reassembler.pending
    _check_outer_fragments(tx.sent, 0x777, 50)
    assert _decrypted(peer, _reassemble(tx.sent)) == datagram
    assert w.acc == {0: [1, size]}


def test_host_fragments_of_a_tunnel_sa_are_left_alone() -> None:
    t = BY_NAME["aes128-gcm16"]
    sa = make_sa(t, mode=Mode.TUNNEL)
    out = _Out(0, 1, EspContext(sa), sa)
    w = _worker(out)
    f = bytes(fragment(IP(_datagram(3000)), fragsize=PATH_MTU - 20)[0])
    w.out_flows[_flow_key(f)] = (OUT_ESP, 0, out.encap, out.max_inner(PATH_MTU, 0), _Tx(), 4,
                                 PATH_MTU)
    buf = memoryview(bytearray(HEADROOM + len(f) + TAILROOM))
    buf[HEADROOM:HEADROOM + len(f)] = f
    assert not w._outbound_fragment(buf, HEADROOM, len(f), f[12:20], f[9], _flow_key(f)[2], [], {})
    assert w.tun_reassembler is None


def test_host_fragments_that_never_complete_are_counted() -> None:
    out, _ = _esp_pair("aes128-gcm16")
    w = _worker(out)
    d = _decision(out, _Tx())
    host = [bytes(f) for f in fragment(IP(_datagram(3000)), fragsize=PATH_MTU - 20)]
    for f in host[:-1]:
        w.out_flows[_flow_key(f)] = d
        buf = memoryview(bytearray(HEADROOM + len(f) + TAILROOM))
        buf[HEADROOM:HEADROOM + len(f)] = f
        assert w._outbound_fragment(buf, HEADROOM, len(f), f[12:20], f[9], _flow_key(f)[2],
                                    [], {})
    r = w.tun_reassembler
    assert r is not None and r.pending == 1
    r.expire(1e12)
    w._tun_fragment_drops()
    assert w.wk_drops == {int(Drop.FRAGMENT_TIMEOUT): len(host) - 1}


def test_outer_fragments_of_our_own_helper() -> None:
    """fragment_ipv4 on an outer ESP packet: the ESP header stays in the first fragment."""
    out, _ = _esp_pair("aes128-gcm16")
    datagram = _datagram(3000)
    buf = memoryview(bytearray(HEADROOM + 3000 + TAILROOM))
    buf[HEADROOM:HEADROOM + 3000] = datagram
    drop, s, e = out.encap(buf, HEADROOM, HEADROOM + 3000, 7)
    assert drop is Drop.OK
    fragments = fragment_ipv4(buf[s:e], PATH_MTU)
    assert fragments is not None
    assert int.from_bytes(fragments[0][20:24], "big") == out.ctx.spi
    assert int.from_bytes(fragments[0][24:28], "big") == 7
