"""The nftables table that takes ESP away from the kernel, proved with captures."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import HostToHost, Injector, Lab, collect, host_to_host, lab_fixture, needs_root

from ipsecd.nft import EspDropTable, NftError
from workers.rings import ETH_P_IP, RingConfig, RxRing

ESP = 50
SMALL = RingConfig(block_size=1 << 16, block_count=4)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def esp(spi: int) -> bytes:
    return struct.pack("!II", spi, 1) + bytes(40)


def test_script_is_scoped_and_validated() -> None:
    t = EspDropTable("gw1", interfaces=["eth0", "wan0"], addresses=["192.0.2.1", "2001:db8::1"])
    text = t.script()
    assert text.startswith("add table inet ipsecd_gw1\ndelete table inet ipsecd_gw1\n")
    assert "hook input priority -300" in text
    assert 'iifname { "eth0", "wan0" } ip daddr { 192.0.2.1 } meta l4proto esp' in text
    assert "ip6 daddr { 2001:db8::1 } udp dport 4500 @th,64,32 != 0" in text
    only_v4 = EspDropTable("x", addresses=["192.0.2.1"], nat_t_port=None).script()
    assert "ip6" not in only_v4 and "udp" not in only_v4
    anywhere = EspDropTable("x").script()
    assert "\t\tmeta l4proto esp counter drop" in anywhere
    assert '\t\tmeta l4proto ah counter drop comment "ah"' in anywhere  # RFC 4302 AH too
    assert 'ip daddr { 192.0.2.1 } meta l4proto ah counter drop comment "ah4"' in text
    assert "l4proto ah" not in EspDropTable("x", ah=False).script()
    for bad in [dict(instance="a b"), dict(instance="x", interfaces=['eth0"; flush ruleset']),
                dict(instance="x", addresses=["192.0.2.300"]), dict(instance="x", nat_t_port=0)]:
        with pytest.raises(ValueError):
            EspDropTable(**bad)  # type: ignore[arg-type]


def _icmp_errors(frames: list[bytes]) -> list[tuple[int, int, int]]:
    """(IP version, type, code) of the ICMP/ICMPv6 errors among Ethernet frames."""
    out = []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        ip = f[14:]
        if ethertype == 0x0800 and ip[9] == 1:
            icmp = ip[4 * (ip[0] & 0xF):]
            if icmp[0] in (3, 11, 12):
                out.append((4, icmp[0], icmp[1]))
        elif ethertype == 0x86DD and ip[6] == 58 and ip[40] < 128:
            out.append((6, ip[40], ip[41]))
    return out


def _send_esp(tx: Injector, h: HostToHost, count: int = 3) -> None:
    for spi in range(0x500, 0x500 + count):
        tx.ip4(h.a.v4, h.b.v4, ESP, esp(spi))
        tx.ip6(h.a.v6, h.b.v6, ESP, esp(spi))


@pytest.mark.netns
@needs_root()
def test_no_icmp_for_esp_with_the_table_and_taps_still_see_it(lab: Lab, tmp_path: Path) -> None:
    h = host_to_host(lab)
    table = EspDropTable("t", interfaces=["eth0"], addresses=[h.b.v4, h.b.v6],
                         netns=h.b.ns.name)
    table.install()
    table.install()  # idempotent: still one table, same rules
    assert h.b.ns.run("nft", "list", "tables").stdout.decode().count("ipsecd_t") == 1
    with h.b.ns.enter():
        ring_all = RxRing("eth0", config=SMALL)
        ring_ip = RxRing("eth0", protocol=ETH_P_IP, config=SMALL)
    tx = Injector(h.a.ns)
    try:
        # With the table first: no ICMP has been sent yet, so the ICMP rate
        # limit cannot be what keeps the capture empty.
        cap = h.a.ns.capture("eth0", tmp_path / "with.pcap", "icmp or icmp6")
        _send_esp(tx, h)
        time.sleep(0.3)
        cap.stop()
        assert _icmp_errors(cap.packets()) == []
        assert table.counters()["esp4"] == 3 and table.counters()["esp6"] == 3
        # ... and every packet socket saw the ESP before it was dropped.
        for ring, families in ((ring_all, {4, 6}), (ring_ip, {4})):
            seen = [p for p in collect(ring) if (p[0] >> 4 == 4 and p[9] == ESP)
                    or (p[0] >> 4 == 6 and p[6] == ESP)]
            assert len(seen) == 3 * len(families)

        table.remove()
        table.remove()  # removing twice is fine
        assert not table.installed()
        cap = h.a.ns.capture("eth0", tmp_path / "without.pcap", "icmp or icmp6")
        _send_esp(tx, h)
        time.sleep(0.3)
        cap.stop()
        errors = set(_icmp_errors(cap.packets()))
        assert (4, 3, 2) in errors  # protocol unreachable (RFC 792)
        assert (6, 4, 1) in errors  # parameter problem: unrecognized next header (RFC 4443)
    finally:
        tx.close()
        ring_all.close()
        ring_ip.close()


@pytest.mark.netns
@needs_root()
def test_ike_and_keepalives_reach_the_socket_esp_in_udp_does_not(lab: Lab) -> None:
    h = host_to_host(lab)
    with h.b.ns.enter():
        ike4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ike4.bind((h.b.v4, 4500))
        ike6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        ike6.bind((h.b.v6, 4500))
        ring = RxRing("eth0", config=SMALL)
        table = EspDropTable("natt", interfaces=["eth0"])
        table.install()
    tx = Injector(h.a.ns)

    def exchange() -> tuple[list[bytes], list[bytes]]:
        for dst in (h.b.v4, h.b.v6):
            tx.udp(dst, 4500, bytes(4) + b"IKE_SA_INIT")
            tx.udp(dst, 4500, b"\xff")
            tx.udp(dst, 4500, esp(0x600))
        time.sleep(0.1)
        got = []
        for s in (ike4, ike6):
            s.setblocking(False)
            try:
                while True:
                    got.append(s.recv(2048))
            except BlockingIOError:
                pass
        tapped = [p for p in collect(ring) if (p[0] >> 4 == 4 and p[9] == 17)
                  or (p[0] >> 4 == 6 and p[6] == 17)]
        return got, tapped

    try:
        got, tapped = exchange()
        ike = bytes(4) + b"IKE_SA_INIT"
        assert sorted(got) == sorted([ike, b"\xff"] * 2)
        assert len(tapped) == 6  # the ring saw all six datagrams
        with h.b.ns.enter():
            counts = table.counters()
            table.remove()
        assert counts["esp-in-udp"] == 2 and counts["esp"] == 0
        got, _ = exchange()
        assert esp(0x600) in got  # without the table the kernel hands ESP to the socket
    finally:
        tx.close()
        ike4.close()
        ike6.close()
        ring.close()


@pytest.mark.netns
@needs_root()
def test_instances_coexist_and_errors_are_reported(lab: Lab) -> None:
    ns = lab.netns("n")
    one = EspDropTable("one", netns=ns.name)
    two = EspDropTable("two", netns=ns.name, interfaces=["eth9"])
    one.install()
    two.install()
    one.remove()
    assert two.installed() and not one.installed()
    assert ns.run("nft", "list", "tables").stdout.decode().split() == [
        "table", "inet", "ipsecd_two"]
    two.remove()
    with pytest.raises(NftError):
        EspDropTable("gone", netns=ns.name + "-missing").install()


def test_cleartext_filter_changes_chunk_by_chunk_and_equals_a_rewrite(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleartext filter applied change by change (only the chunks a change touches are
    written again) evaluates the same rules, in the same order, as the table written whole
    from the SPD."""
    import random
    import re

    from ipsecd import daemon
    from ipsecd.daemon import CleartextFilter
    from ipsecd.iana import IpProto
    from ipsecd.sa import Mode
    from ipsecd.spd import SPD, Action, Direction, IpsecRequest, Policy, Selector

    ns = lab.netns("f")
    scripts: list[str] = []

    def nft(script: str) -> None:
        scripts.append(script)
        ns.run("nft", "-f", "-", input=script.encode())

    monkeypatch.setattr(CleartextFilter, "_nft", staticmethod(nft))
    monkeypatch.setattr(daemon, "CHUNK", 4)  # many chunks from few policies

    def flat(table: str) -> dict[str, list[str]]:
        """Per hook chain: its rules with every jump replaced by the chain's rules."""
        out = ns.run("nft", "list", "table", "inet", table).stdout.decode()
        chains: dict[str, list[str]] = {}
        current: list[str] = []
        for line in out.splitlines():
            line = line.strip()
            m = re.match(r"chain (\S+) \{", line)
            if m:
                current = chains.setdefault(m.group(1), [])
            elif line and not line.startswith(("type ", "}", "table ")):
                current.append(re.sub(r"counter packets \d+ bytes \d+ ", "", line))

        def expand(name: str) -> list[str]:
            rules = []
            for rule in chains[name]:
                m = re.fullmatch(r"jump (\S+)", rule)
                rules += expand(m.group(1)) if m else [rule]
            return rules

        return {hook: expand(hook) for hook in ("input", "forward")}

    rnd = random.Random(4)
    spd = SPD()
    step = CleartextFilter("inc", "tun9")
    req = (IpsecRequest(IpProto.ESP, Mode.TRANSPORT),)
    step.apply(spd)
    spd.take_changes()
    for n in range(80):
        for _ in range(rnd.randint(1, 4)):
            sel = Selector.make(f"10.{rnd.randint(0, 7)}.0.0/16", f"10.9.{rnd.randint(0, 3)}.0/24",
                                rnd.choice([None, 6, 17]))
            direction = rnd.choice([Direction.IN, Direction.FWD, Direction.OUT])
            if spd.get(sel, direction) is not None and rnd.random() < 0.4:
                spd.delete(sel, direction)
            else:
                action = rnd.choice([Action.IPSEC, Action.IPSEC, Action.NONE, Action.DISCARD])
                spd.update(Policy(sel, direction, action, req if action is Action.IPSEC else (),
                                  priority=rnd.choice([0, 0, 0, 0, 7, -3])))
        scripts.clear()
        step.apply(spd, spd.take_changes())
        if n % 8 == 7:
            whole = CleartextFilter("whole", "tun9")
            whole.apply(spd)
            got, want = flat(step.table), flat(whole.table)
            assert got == want
            assert len(want["input"]) > 3
            whole.remove()
    assert step.batches >= 40  # mostly chunk by chunk, not rewritten
    step.remove()
