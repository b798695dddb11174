"""``setkey -D`` / ``-DP`` output (ipsecd.setkey.dump): golden strings, keys hidden."""

from __future__ import annotations

import time

import pytest

from ipsecd.sad import SAD
from ipsecd.setkey import apply, dump_sad, dump_spd, parse
from ipsecd.setkey.dump import format_priority, format_sa
from ipsecd.spd import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_MAX, SPD

T0 = 1700000000.0  # Tue Nov 14 22:13:20 2023 UTC
GCM_KEY = "0x" + "00112233" * 5


def load(text: str, *, legacy: bool = False) -> tuple[SPD, SAD]:
    spd, sad = SPD(), SAD()
    apply(parse(text, "t", allow_legacy=legacy), spd, sad, now=T0)
    return spd, sad


def sad_text(sad: SAD, **kw: object) -> str:
    return dump_sad(sad, now=T0 + 60, pid=4242, localtime=time.gmtime, **kw)  # type: ignore[arg-type]


def spd_text(spd: SPD) -> str:
    return dump_spd(spd, pid=4242, localtime=time.gmtime)


SA_GOLDEN = """\
192.0.2.1 192.0.2.2
\tesp mode=transport spi=4096(0x00001000) reqid=0(0x00000000)
\tE: aes-gcm-16  <160-bit key>
\tseq=0x00000000 replay=128 flags=0x00000000 state=mature
\tcreated: Nov 14 22:13:20 2023\tcurrent: Nov 14 22:14:20 2023
\tdiff: 60(s)\thard: 0(s)\tsoft: 0(s)
\tlast:                     \thard: 0(s)\tsoft: 0(s)
\tcurrent: 0(bytes)\thard: 0(bytes)\tsoft: 0(bytes)
\tallocated: 0\thard: 0\tsoft: 0
\tsadb_seq=1 pid=4242 refcnt=0
192.0.2.2 192.0.2.1
\tah mode=any spi=513(0x00000201) reqid=5(0x00000005)
\tA: hmac-sha256  <256-bit key>
\tseq=0x00000000 replay=4 flags=0x00000000 state=mature
\tcreated: Nov 14 22:13:20 2023\tcurrent: Nov 14 22:14:20 2023
\tdiff: 60(s)\thard: 3600(s)\tsoft: 3000(s)
\tlast:                     \thard: 0(s)\tsoft: 0(s)
\tcurrent: 0(bytes)\thard: 1000000(bytes)\tsoft: 0(bytes)
\tallocated: 0\thard: 500\tsoft: 400
\tsadb_seq=0 pid=4242 refcnt=0
"""


def test_sad_dump_golden_keys_hidden() -> None:
    _, sad = load(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m transport -E aes-gcm-16 {GCM_KEY};\n"
        "add 192.0.2.2 192.0.2.1 ah 0x201 -u 5 -r 4 -lh 3600 -ls 3000 -bh 1000000 -ph 500 -ps 400\n"
        "    -A hmac-sha256 0x" + "ab" * 32 + ";\n"
    )
    text = sad_text(sad)
    assert text == SA_GOLDEN
    assert "00112233" not in text and "abab" not in text


def test_sad_dump_show_keys() -> None:
    _, sad = load(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -m transport -E aes-gcm-16 {GCM_KEY};")
    text = sad_text(sad, show_keys=True)
    assert "\tE: aes-gcm-16  00112233 00112233 00112233 00112233 00112233\n" in text


def test_sad_dump_cbc_legacy_natt_ipcomp_and_extensions() -> None:
    _, sad = load(
        'add 192.0.2.1 192.0.2.2 esp 0x10001 -E 3des-cbc "kamekame12341234kame1234" -A hmac-md5 "this is the test";\n'
        f"add 198.51.100.1[4500] 203.0.113.1[4501] esp-udp 10.0.0.9 0x3001 -m tunnel -f esn -f zero-pad "
        f"-f nocyclic-seq -E aes-gcm-16 {GCM_KEY};\n"
        "add 192.0.2.1 192.0.2.2 ipcomp 0x4002 -m tunnel -C deflate -R;\n"
        "add 192.0.2.1 192.0.2.2 esp 0x5000 -r 0 -E null -A hmac-sha1 0x" + "01" * 20 + ";\n",
        legacy=True,
    )
    blocks = sad_text(sad).split("\tsadb_seq=")
    assert blocks[0].startswith(
        "192.0.2.1 192.0.2.2\n"
        "\tesp mode=any spi=65537(0x00010001) reqid=0(0x00000000)\n"
        "\tE: 3des-cbc  <192-bit key>\n"
        "\tA: hmac-md5  <128-bit key>\n"
        "\tseq=0x00000000 replay=128 flags=0x00000000 state=mature\n"
    )
    assert blocks[1].split("\n", 1)[1].startswith(
        "198.51.100.1[4500] 203.0.113.1[4501]\n"
        "\tesp-udp mode=tunnel spi=12289(0x00003001) reqid=0(0x00000000)\n"
        "\tNAT OA=10.0.0.9\n"
        "\tE: aes-gcm-16  <160-bit key>\n"
        "\tseq=0x00000000 replay=128 flags=0x00000200 state=mature\n"
        "\textensions: esn zero-pad nocyclic-seq\n"
    )
    assert blocks[2].split("\n", 1)[1].startswith(
        "192.0.2.1 192.0.2.2\n"
        "\tipcomp mode=tunnel spi=16386(0x00004002) reqid=0(0x00000000)\n"
        "\tC: deflate\n"
        "\tseq=0x00000000 replay=0 flags=0x00000080 state=mature\n"
    )
    assert blocks[3].split("\n", 1)[1].startswith(
        "192.0.2.1 192.0.2.2\n"
        "\tesp mode=any spi=20480(0x00005000) reqid=0(0x00000000)\n"
        "\tE: null\n"
        "\tA: hmac-sha1  <160-bit key>\n"
        "\tseq=0x00000000 replay=0 flags=0x00000000 state=mature\n"
    )


def test_sad_dump_by_protocol_and_empty() -> None:
    _, sad = load(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 {GCM_KEY};")
    assert dump_sad(sad, pid=1) != "No SAD entries.\n"
    from ipsecd.iana import IpProto

    assert dump_sad(sad, IpProto.AH, pid=1) == "No SAD entries.\n"
    assert dump_sad(SAD()) == "No SAD entries.\n"


def test_format_sa_defaults_use_the_clock_and_pid() -> None:
    _, sad = load(f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 {GCM_KEY};")
    (sa,) = sad.dump()
    text = format_sa(sa, created=sad.created(sa))
    assert "\tsadb_seq=0 pid=" in text and "refcnt=0\n" in text


SPD_GOLDEN = """\
10.20.20.0/24[any] 10.10.10.0/24[any] any
\tin prio def ipsec
\tesp/tunnel/203.0.113.1-198.51.100.1/require
\tcreated: Nov 14 22:13:20 2023  lastused: {BLANK20}
\tlifetime: 0(s) validtime: 0(s)
\tspid=2 seq=2 pid=4242
\trefcnt=1
10.10.10.0/24[any] 10.20.20.0/24[any] any
\tout prio def ipsec
\tesp/tunnel/198.51.100.1-203.0.113.1/require
\tcreated: Nov 14 22:13:20 2023  lastused: {BLANK20}
\tlifetime: 0(s) validtime: 0(s)
\tspid=1 seq=1 pid=4242
\trefcnt=1
10.20.20.0/24[any] 10.10.10.0/24[any] any
\tfwd prio def ipsec
\tesp/tunnel/203.0.113.1-198.51.100.1/require
\tcreated: Nov 14 22:13:20 2023  lastused: {BLANK20}
\tlifetime: 0(s) validtime: 0(s)
\tspid=3 seq=0 pid=4242
\trefcnt=1
""".replace("{BLANK20}", " " * 20)  # setkey prints 20 blanks for "never used"


def test_spd_dump_golden_howto_tunnel() -> None:
    spd, _ = load(
        "spdadd 10.10.10.0/24 10.20.20.0/24 any -P out ipsec esp/tunnel/198.51.100.1-203.0.113.1/require;\n"
        "spdadd 10.20.20.0/24 10.10.10.0/24 any -P in ipsec esp/tunnel/203.0.113.1-198.51.100.1/require;\n"
    )
    assert spd_text(spd) == SPD_GOLDEN


def test_spd_dump_selectors_priorities_and_requests() -> None:
    spd, _ = load(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require ah/transport//use;\n"
        "spdadd 10.0.11.41/32[21] 10.0.11.33/32[any] tcp -P out prio high + 5 discard;\n"
        "spdadd ::/0 ::/0 icmp6 135,0 -P out prio low - 3 none;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0 icmp -P out prio -2 none;\n"
        "spdadd 2001:db8::/32 2001:db8:1::/48 250 -P out prio 2147483648 none;\n"
        "spdadd 10.0.0.0/8 10.0.0.0/8 udp -P out ipsec esp/tunnel/192.0.2.1[4500]-192.0.2.2[4500]/unique:3;\n"
    )
    heads = [block.split("\tcreated")[0] for block in spd_text(spd).split("\trefcnt=1\n") if block]
    assert heads == [
        "2001:db8::/32[any] 2001:db8:1::/48[any] 250\n\tout none\n",
        "10.0.11.41[21] 10.0.11.33[any] tcp\n\tout prio high + 5 discard\n",
        "192.0.2.1[any] 192.0.2.2[any] any\n\tout prio def ipsec\n\tesp/transport//require\n\tah/transport//use\n",
        "10.0.0.0/8[any] 10.0.0.0/8[any] udp\n\tout prio def ipsec\n"
        "\tesp/tunnel/192.0.2.1[4500]-192.0.2.2[4500]/unique:3\n",
        "0.0.0.0/0 0.0.0.0/0 icmp\n\tout prio def - 2 none\n",
        "::/0 ::/0 ipv6-icmp 135,0\n\tout prio low - 3 none\n",
    ]


def test_spd_dump_empty() -> None:
    assert dump_spd(SPD()) == "No SPD entries.\n"


@pytest.mark.parametrize(
    ("priority", "text"),
    [
        (0, "prio def"),
        (7, "prio def + 7"),
        (-7, "prio def - 7"),
        (PRIORITY_HIGH, "prio high"),
        (PRIORITY_HIGH + 5, "prio high + 5"),
        (PRIORITY_HIGH - 5, "prio high - 5"),
        (PRIORITY_LOW, "prio low"),
        (PRIORITY_LOW - 3, "prio low - 3"),
        ((1 << 29) + 1, "prio high - 536870911"),  # nearest base, as libipsec picks it
        (1 << 29, "prio def + 536870912"),
        (PRIORITY_MAX, ""),
    ],
)
def test_priority_text(priority: int, text: str) -> None:
    assert format_priority(priority) == text


@pytest.mark.parametrize("prio", ["prio def + 7", "prio high - 5", "prio low - 3", "prio low + 9", "prio -2"])
def test_priority_round_trips_through_the_parser(prio: str) -> None:
    spd, _ = load(f"spdadd 192.0.2.1 192.0.2.2 any -P out {prio} none;")
    shown = format_priority(spd.entries()[0].policy.priority)
    spd2, _ = load(f"spdadd 192.0.2.1 192.0.2.2 any -P out {shown} none;")
    assert spd2.entries()[0].policy.priority == spd.entries()[0].policy.priority
