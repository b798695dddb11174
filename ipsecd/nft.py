"""Keep the kernel away from the ESP and AH we handle: an nftables table of our own.

Without kernel ESP, the stack answers inbound ESP with ICMP protocol
unreachable (IPv6: parameter problem) and hands ESP-in-UDP on port 4500 to
whatever socket is bound there -- the IKE socket.  Our workers read ESP from
AF_PACKET rings, which tap the packets long before the IP input path, so the
table drops them *after* the taps (DESIGN.md, "Facts measured"):

* hook ``input`` of family ``inet``: only packets addressed to this host.
  ESP that a gateway forwards for others is untouched (``prerouting`` would
  drop it), and every packet socket, ETH_P_ALL or ETH_P_IP, has already seen
  the packet (a ``netdev`` ingress drop would hide it from ETH_P_IP sockets);
* priority -300: before any filter chain of the operator's (0) and of other
  software, so nothing else sees, logs or answers the ESP; the input hook
  comes after reassembly, so the rules see whole datagrams;
* ``meta l4proto esp``: raw ESP of both families (the transport protocol
  found after IPv6 extension headers);
* ``meta l4proto ah`` (``ah``): AH (RFC 4302) likewise.  Without kernel AH
  the stack answers it with protocol unreachable too; the workers take AH
  from their rings as they take ESP, fragments included (they reassemble
  AH as ESP, :func:`workers.bpf.spi_steering`), so the kernel's reassembled
  copy is dropped here;
* ``udp dport 4500 @th,64,32 != 0``: ESP in UDP (RFC 3948 §2.2: non-zero
  first 4 payload bytes).  IKE (zero marker) and NAT keepalives (one 0xFF
  byte: the 32-bit load fails, the rule does not match) still reach the IKE
  socket.

Each daemon instance owns ``table inet ipsecd_<instance>``, so several
daemons (or namespaces' worth of tests) coexist and removal is one
``delete table``.  Install replaces the table in a single nft transaction
(``add``, ``delete``, define): atomic and idempotent.  The rules can be
scoped to the interfaces and local addresses we serve.

Why the ``nft`` command and not pyroute2's nftables module: pyroute2 0.9
exposes raw netlink messages with hand-built expressions (no parser for the
``@th,64,32`` payload match, ``meta l4proto`` or sets), is marked
experimental, and would put a private encoding of rules in our code.  The
``nft`` script is the documented, stable interface, applies atomically, and
the rules read the same in ``nft list ruleset`` as in this file.  It runs in
the caller's network namespace: the daemon runs inside it; tests pass
``netns`` (``ip netns exec``) or call it from a thread that entered the
namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

NAT_T_PORT = 4500  # RFC 3948 §2
_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


class NftError(RuntimeError):
    """``nft`` refused the script or could not run."""


@dataclass(frozen=True)
class EspDropTable:
    """The table of one daemon instance; see the module docstring.

    ``interfaces`` and ``addresses`` (local addresses, both families) scope
    the rules; empty means any.  With addresses of one family only, ESP to
    the other family is left alone.
    """

    instance: str
    interfaces: Sequence[str] = ()
    addresses: Sequence[str] = ()
    nat_t_port: int | None = NAT_T_PORT
    raw_esp: bool = True
    ah: bool = True
    netns: str | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.instance):
            raise ValueError(f"instance name {self.instance!r}: letters, digits, _ only")
        for name in self.interfaces:
            if not _IFNAME.fullmatch(name):
                raise ValueError(f"interface name {name!r}")
        for address in self.addresses:
            ip_address(address)  # raises ValueError
        if self.nat_t_port is not None and not 0 < self.nat_t_port < 65536:
            raise ValueError(f"port {self.nat_t_port}")

    @property
    def table(self) -> str:
        return f"ipsecd_{self.instance}"

    def script(self) -> str:
        """The nft script that (re)creates the table in one transaction."""
        iif = ""
        if self.interfaces:
            iif = "iifname { " + ", ".join(f'"{n}"' for n in self.interfaces) + " } "
        v4 = [a for a in self.addresses if ip_address(a).version == 4]
        v6 = [a for a in self.addresses if ip_address(a).version == 6]
        scopes: list[tuple[str, str]] = []  # (address match, comment suffix)
        if not self.addresses:
            scopes.append(("", ""))
        if v4:
            scopes.append(("ip daddr { " + ", ".join(v4) + " } ", "4"))
        if v6:
            scopes.append(("ip6 daddr { " + ", ".join(v6) + " } ", "6"))
        rules = []
        for daddr, suffix in scopes:
            if self.raw_esp:
                rules.append(f'{iif}{daddr}meta l4proto esp counter drop comment "esp{suffix}"')
            if self.ah:
                rules.append(f'{iif}{daddr}meta l4proto ah counter drop comment "ah{suffix}"')
            if self.nat_t_port is not None:
                rules.append(f"{iif}{daddr}udp dport {self.nat_t_port} @th,64,32 != 0 "
                             f'counter drop comment "esp-in-udp{suffix}"')
        body = "\n".join("\t\t" + r for r in rules)
        return (f"add table inet {self.table}\n"
                f"delete table inet {self.table}\n"
                f"table inet {self.table} {{\n"
                f"\tchain input {{\n"
                f"\t\ttype filter hook input priority -300; policy accept;\n"
                f"{body}\n"
                f"\t}}\n"
                f"}}\n")

    def _nft(self, args: list[str], script: str | None = None) -> str:
        cmd = ["nft", *args]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        try:
            proc = subprocess.run(cmd, input=script, capture_output=True, text=True,
                                  timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"{' '.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            raise NftError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def install(self) -> None:
        """Create or replace the table (atomic, idempotent)."""
        self._nft(["-f", "-"], self.script())

    def remove(self) -> None:
        """Delete the table if it exists."""
        self._nft(["-f", "-"], f"add table inet {self.table}\ndelete table inet {self.table}\n")

    def installed(self) -> bool:
        """Whether the table exists."""
        try:
            self._nft(["list", "table", "inet", self.table])
        except NftError:
            return False
        return True

    def counters(self) -> dict[str, int]:
        """Packets dropped so far, by rule comment (``esp``, ``esp-in-udp4``, ...)."""
        out = json.loads(self._nft(["-j", "list", "table", "inet", self.table]))
        counts: dict[str, int] = {}
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            packets = next((e["counter"]["packets"] for e in rule.get("expr", [])
                            if isinstance(e, dict) and "counter" in e), 0)
            counts[rule.get("comment", str(rule.get("handle")))] = int(packets)
        return counts
