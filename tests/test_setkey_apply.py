"""Applying scripts: all or nothing, RFC-mode fwd twins, -n checks (ipsecd.setkey.ops)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from ipsecd.iana import IpProto
from ipsecd.sa import SAState, SecurityAssociation
from ipsecd.sad import SAD
from ipsecd.setkey import AddSA, SetkeyError, apply, check, parse
from ipsecd.spd import SPD, Action, Direction, Level

ip = ipaddress.ip_address
GCM = "-E aes-gcm-16 0x" + "11" * 20
A, B = ip("192.0.2.1"), ip("192.0.2.2")


def run(text: str, spd: SPD | None = None, sad: SAD | None = None, **kw: object) -> tuple[SPD, SAD]:
    spd = SPD() if spd is None else spd
    sad = SAD() if sad is None else sad
    apply(parse(text, "t.conf"), spd, sad, now=1000.0, **kw)  # type: ignore[arg-type]
    return spd, sad


def failure(text: str, spd: SPD | None = None, sad: SAD | None = None, **kw: object) -> str:
    with pytest.raises(SetkeyError) as info:
        run(text, spd, sad, **kw)
    return f"{info.value.line}:{info.value.col}: {info.value.message}"


def test_sas_and_policies_are_installed() -> None:
    spd, sad = run(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\n"
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
    )
    sa = sad.get(0x1000, IpProto.ESP, B)
    assert sa is not None and sad.created(sa) == 1000.0
    pol = spd.lookup(Direction.OUT, A, B, 6)
    assert pol is not None and pol.action is Action.IPSEC


def test_installed_sa_is_a_copy_so_the_script_can_be_wiped() -> None:
    script = parse(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};", "t")
    spd, sad = SPD(), SAD()
    apply(script, spd, sad)
    op = script.ops[0]
    assert isinstance(op, AddSA)
    installed = sad.get(0x1000, IpProto.ESP, B)
    assert installed is not None and installed is not op.sa
    script.wipe()
    assert installed.enc_key == bytearray(b"\x11" * 20)
    assert installed.extra is not op.sa.extra and installed.hard is not op.sa.hard


def test_a_failing_statement_applies_nothing() -> None:
    spd, sad = run(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\n"
        "spdadd 10.0.0.0/8 0.0.0.0/0 any -P out discard;\n"
    )
    before_sa = sad.get(0x1000, IpProto.ESP, B)
    assert before_sa is not None
    spd_gen, sad_gen = spd.generation, sad.generation
    err = failure(
        "flush;\n"  # would wipe the existing SA...
        "spdflush;\n"
        f"add 192.0.2.1 192.0.2.2 esp 0x2000 {GCM};\n"
        f"add 192.0.2.1 192.0.2.2 esp 0x2000 {GCM};\n"  # ...but this fails
        "spdadd 192.0.2.1 192.0.2.2 any -P out none;\n",
        spd, sad,
    )
    assert err == "4:1: add: esp SA spi 0x2000 to 192.0.2.2 already exists"
    assert sad.get(0x1000, IpProto.ESP, B) is before_sa
    assert before_sa.state is SAState.MATURE and any(before_sa.enc_key)  # not wiped
    assert sad.get(0x2000, IpProto.ESP, B) is None
    assert spd.lookup(Direction.OUT, ip("10.1.1.1"), B, 6) is not None
    assert (spd.generation, sad.generation) == (spd_gen, sad_gen)


def test_sas_of_a_failed_script_are_wiped(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[SecurityAssociation] = []
    original = SecurityAssociation.replace

    def spy(self: SecurityAssociation, **changes: object) -> SecurityAssociation:
        copy = original(self, **changes)
        made.append(copy)
        return copy

    monkeypatch.setattr(SecurityAssociation, "replace", spy)
    failure(f"add 192.0.2.1 192.0.2.2 esp 0x2000 {GCM};\ndelete 192.0.2.1 192.0.2.2 esp 0x3000;")
    assert made and all(m.state is SAState.DEAD and not any(m.enc_key) for m in made)


def test_successful_script_wipes_what_it_removed() -> None:
    spd, sad = run(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};")
    old = sad.get(0x1000, IpProto.ESP, B)
    assert old is not None
    run("flush esp;", spd, sad)
    assert old.state is SAState.DEAD and not any(old.enc_key)


def test_delete_update_get_of_missing_sa_fail() -> None:
    assert failure("delete 192.0.2.1 192.0.2.2 esp 0x1000;") == (
        "1:1: delete: no esp SA spi 0x1000 to 192.0.2.2 from 192.0.2.1"
    )
    assert failure(f"update 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};") == (
        "1:1: update: no esp SA spi 0x1000 to 192.0.2.2 to update"
    )
    assert failure("get 192.0.2.1 192.0.2.2 esp 0x1000;") == (
        "1:1: get: no esp SA spi 0x1000 to 192.0.2.2 from 192.0.2.1"
    )
    assert failure("spddelete 192.0.2.1 192.0.2.2 any -P out;").startswith(
        "1:1: spddelete: no out policy for 192.0.2.1/32[any] 192.0.2.2/32[any] any"
    )


def test_delete_checks_the_source_address() -> None:
    spd, sad = run(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};")
    assert failure("delete 192.0.2.9 192.0.2.2 esp 0x1000;", spd, sad).startswith("1:1: delete: no esp SA")


def test_update_replaces() -> None:
    spd, sad = run(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};")
    old = sad.get(0x1000, IpProto.ESP, B)
    run(f"update 192.0.2.1 192.0.2.2 esp 0x1000 -m tunnel {GCM};", spd, sad)
    new = sad.get(0x1000, IpProto.ESP, B)
    assert new is not None and new is not old and new.mode.value == "tunnel"
    assert old is not None and old.state is SAState.DEAD


def test_deleteall_and_flush_by_protocol() -> None:
    spd, sad = run(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\n"
        f"add 192.0.2.1 192.0.2.2 esp 0x1001 {GCM};\n"
        f"add 192.0.2.2 192.0.2.1 esp 0x1002 {GCM};\n"
        "add 192.0.2.1 192.0.2.2 ipcomp 0x1003 -C deflate;\n"
    )
    run("deleteall 192.0.2.1 192.0.2.2 esp;", spd, sad)
    assert [sa.spi for sa in sad.dump()] == [0x1002, 0x1003]
    run("flush ipcomp; deleteall 192.0.2.1 192.0.2.2 esp;", spd, sad)  # none left: not an error
    assert [sa.spi for sa in sad.dump()] == [0x1002]


def test_spdadd_duplicate_and_spdupdate() -> None:
    spd, sad = run("spdadd 192.0.2.1 192.0.2.2 any -P out discard;")
    assert failure("spdadd 192.0.2.1 192.0.2.2 any -P out none;", spd, sad).startswith(
        "1:1: spdadd: an out policy for 192.0.2.1/32[any] 192.0.2.2/32[any] any already exists"
    )
    run("spdupdate 192.0.2.1 192.0.2.2 any -P out none;", spd, sad)
    pol = spd.lookup(Direction.OUT, A, B, 6)
    assert pol is not None and pol.action is Action.NONE


def test_rfc_mode_adds_and_removes_fwd_twins() -> None:
    spd, sad = run("spdadd 10.2.0.0/16 10.1.0.0/16 any -P in ipsec esp/tunnel/192.0.2.2-192.0.2.1/unique:7;")
    twin = spd.get(spd.entries(Direction.IN)[0].policy.selector, Direction.FWD)
    assert twin is not None and twin.auto
    (req,) = twin.policy.requests
    assert (req.level, req.reqid) == (Level.REQUIRE, 0)  # as ipsec-tools makes it
    assert spd.lookup(Direction.FWD, ip("10.2.0.1"), ip("10.1.0.1"), 6) is twin.policy
    run("spddelete 10.2.0.0/16 10.1.0.0/16 any -P in;", spd, sad)
    assert len(spd) == 0


def test_kernel_mode_makes_no_twins() -> None:
    spd, _ = run("spdadd 10.2.0.0/16 10.1.0.0/16 any -P in discard;", rfc_mode=False)
    assert [e.policy.direction for e in spd.entries()] == [Direction.IN]


def test_explicit_fwd_policy_wins_over_the_twin() -> None:
    # Before: the twin is not made over an explicit fwd policy.
    spd, _ = run(
        "spdadd 10.2.0.0/16 10.1.0.0/16 any -P fwd none;\n"
        "spdadd 10.2.0.0/16 10.1.0.0/16 any -P in discard;\n"
    )
    fwd = spd.entries(Direction.FWD)
    assert len(fwd) == 1 and fwd[0].policy.action is Action.NONE and not fwd[0].auto
    # After: an explicit fwd policy replaces the twin without an error.
    spd, sad = run(
        "spdadd 10.2.0.0/16 10.1.0.0/16 any -P in discard;\n"
        "spdadd 10.2.0.0/16 10.1.0.0/16 any -P fwd none;\n"
    )
    fwd = spd.entries(Direction.FWD)
    assert len(fwd) == 1 and fwd[0].policy.action is Action.NONE and not fwd[0].auto
    # Deleting the in policy leaves an explicit fwd policy alone.
    run("spddelete 10.2.0.0/16 10.1.0.0/16 any -P in;", spd, sad)
    assert [e.policy.direction for e in spd.entries()] == [Direction.FWD]


def test_spdupdate_of_in_updates_the_twin() -> None:
    spd, sad = run("spdadd 10.2.0.0/16 10.1.0.0/16 any -P in discard;")
    run("spdupdate 10.2.0.0/16 10.1.0.0/16 any -P in none;", spd, sad)
    assert [e.policy.action for e in spd.entries()] == [Action.NONE, Action.NONE]


def test_get_dump_and_spddump_produce_output() -> None:
    spd, sad = SPD(), SAD()
    result = apply(
        parse(
            f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\n"
            "get 192.0.2.1 192.0.2.2 esp 0x1000; dump ah; spdadd 192.0.2.1 192.0.2.2 any -P out none;\n"
            "spddump; dump;", "t"),
        spd, sad, now=1000.0, pid=7,
    )
    assert result.changes == 2
    get, dump_ah, spddump, dump_all = result.output
    assert get.startswith("192.0.2.1 192.0.2.2\n\tesp mode=any spi=4096(0x00001000)")
    assert "<160-bit key>" in get and "11111111" not in get
    assert dump_ah == "No SAD entries.\n"
    assert spddump.startswith("192.0.2.1[any] 192.0.2.2[any] any\n\tout prio def none\n")
    assert dump_all == get


def test_show_keys_in_script_output() -> None:
    result = apply(
        parse(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM}; dump;", "t"), SPD(), SAD(), show_keys=True
    )
    assert "E: aes-gcm-16  11111111 11111111" in result.output[0]


def test_check_is_setkey_n() -> None:
    # Unknown daemon state: deleting what the script did not add is fine...
    ok = check(parse(
        "delete 192.0.2.1 192.0.2.2 esp 0x1000;\n"
        "get 192.0.2.1 192.0.2.2 esp 0x1000;\n"
        "spddelete 192.0.2.1 192.0.2.2 any -P out;\n"
        f"update 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\n", "t"))
    assert ok.output == []
    # ...but a script that contradicts itself is not.
    with pytest.raises(SetkeyError, match=re.escape("t:2:1: add: esp SA spi 0x1000 to 192.0.2.2 already exists")):
        check(parse(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\nadd 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};", "t"))
    # and it can be applied in sequence with deletes in between
    check(parse(f"add 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};\nflush;\nadd 192.0.2.1 192.0.2.2 esp 0x1000 {GCM};", "t"))


def test_ops_can_be_a_plain_list() -> None:
    script = parse("spdadd 192.0.2.1 192.0.2.2 any -P out none;", "t")
    spd, sad = SPD(), SAD()
    assert apply(list(script.ops), spd, sad).changes == 1
    assert len(spd) == 1


def test_not_an_operation() -> None:
    with pytest.raises(TypeError):
        apply([object()], SPD(), SAD())  # type: ignore[list-item]
