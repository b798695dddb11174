"""No key byte of any SA reaches the logs (at debug level), the metrics page or ``status``.

Two daemons in transport mode (netns.host_to_host), both at ``log_level =
"debug"``, A with text lines, B with JSON lines, both exporting per-SA
series (``sa_labels``).  Every SA gets fresh random keys: AES-GCM for IPv4,
AES-CBC + HMAC-SHA-256 for IPv6 (so integrity keys are covered too).
The test sends traffic, rekeys twice through ``ipsecd setkey`` (new SPIs,
new keys), sends a script the daemon refuses that holds a key, reloads
with SIGHUP and stops the daemons; then it looks for every key, whole and
as any 8-byte piece, in the forms a leak could take: raw bytes, hex (both
cases), Python's escaped ``bytes`` repr, base64.
"""

from __future__ import annotations

import base64
import secrets
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from daemon_harness import Daemon, start, wait_ready
from netns import HostToHost, Lab, host_to_host, needs_root, ping, remove_stale, wait_until

pytestmark = [pytest.mark.netns, needs_root()]

WINDOW = 8  # bytes: a piece of a key this long found anywhere is a leak


def _forms(key: bytes) -> set[bytes]:
    out = {key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)}
    for i in range(len(key) - WINDOW + 1):
        piece = key[i:i + WINDOW]
        out |= {piece, piece.hex().encode(), piece.hex().upper().encode(),
                repr(piece)[2:-1].encode()}
    return out


class Keys:
    """Random keys for every SA the test installs, remembered for the search."""

    def __init__(self) -> None:
        self.all: list[bytes] = []

    def new(self, n: int) -> str:
        key = secrets.token_bytes(n)
        self.all.append(key)
        return "0x" + key.hex()

    def script(self, topo: HostToHost, local: str, base: int, flush: bool = True) -> str:
        a, b = topo.a, topo.b
        me = a if local == "a" else b
        peer = b if local == "a" else a
        lines = ["flush;", "spdflush;"] if flush else []
        gcm_ab, gcm_ba = self.new(20), self.new(20)
        cbc_ab, cbc_ba, mac_ab, mac_ba = self.new(16), self.new(16), self.new(32), self.new(32)
        lines += [
            f"add {a.v4} {b.v4} esp {base:#x} -m transport -E aes-gcm-16 {gcm_ab};",
            f"add {b.v4} {a.v4} esp {base + 1:#x} -m transport -E aes-gcm-16 {gcm_ba};",
            f"add {a.v6} {b.v6} esp {base:#x} -m transport -E aes-cbc {cbc_ab} "
            f"-A hmac-sha256 {mac_ab};",
            f"add {b.v6} {a.v6} esp {base + 1:#x} -m transport -E aes-cbc {cbc_ba} "
            f"-A hmac-sha256 {mac_ba};",
        ]
        if flush:
            for fam in ("v4", "v6"):
                lines += [f"spdadd {getattr(me, fam)} {getattr(peer, fam)} any -P out ipsec "
                          "esp/transport//require;",
                          f"spdadd {getattr(peer, fam)} {getattr(me, fam)} any -P in ipsec "
                          "esp/transport//require;"]
        return "\n".join(lines) + "\n"


def _metrics(d: Daemon) -> bytes:
    address = d.query()["metrics"]
    with d.ns.enter():
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{address}/metrics", timeout=5) as resp:
            return bytes(resp.read())


def test_no_key_bytes_in_debug_logs_metrics_or_status(tmp_path: Path) -> None:
    remove_stale()
    keys = Keys()
    with Lab("kl") as lab:
        topo = host_to_host(lab)
        first = keys.script(topo, "a", 0x1001)
        # B's script: the same SAs (same keys), its own policies.
        sa_lines = [line for line in first.splitlines() if line.startswith("add ")]
        keys_b = Keys()
        pol_b = [line for line in keys_b.script(topo, "b", 0x1001).splitlines()
                 if line.startswith("spdadd")]
        script_b = "\n".join(["flush;", "spdflush;", *sa_lines, *pol_b]) + "\n"
        a = start(topo.a.ns, tmp_path, "kl-a", outside=["eth0"], script=first, wait=False,
                  log_level="debug", metrics="127.0.0.1:0",
                  extra={"metrics": {"sa_labels": True}})
        b = start(topo.b.ns, tmp_path, "kl-b", outside=["eth0"], script=script_b, wait=False,
                  log_level="debug", metrics="127.0.0.1:0",
                  extra={"metrics": {"sa_labels": True}, "log": {"format": "json"}})
        pages: list[bytes] = []
        try:
            wait_ready(a, b)
            assert ping(topo.a.ns, topo.b.v4, count=2, interval=0.05) == 2
            assert ping(topo.a.ns, topo.b.v6, count=2, interval=0.05) == 2
            for base in (0x2001, 0x3001):  # two rekeys: old SAs out, new SPIs and keys in
                old = base - 0x1000
                rekey = "".join(
                    f"delete {s} {d} esp {spi:#x};\n"
                    for s, d, spi in ((topo.a.v4, topo.b.v4, old), (topo.b.v4, topo.a.v4, old + 1),
                                      (topo.a.v6, topo.b.v6, old), (topo.b.v6, topo.a.v6, old + 1)))
                rekey += keys.script(topo, "a", base, flush=False)
                for d in (b, a):
                    r = d.setkey(rekey)
                    assert r.returncode == 0, r.stderr
                assert ping(topo.a.ns, topo.b.v4, count=2, interval=0.05) == 2
                assert ping(topo.b.ns, topo.a.v6, count=2, interval=0.05) == 2
                pages += [_metrics(a), _metrics(b)]
            # A script the daemon refuses (the SA table cannot take a replay window this
            # big) holding a key: the error goes to the client and the log.
            bad = (f"add {topo.a.v4} {topo.b.v4} esp 0x9999 -m transport -r 65536 "
                   f"-E aes-gcm-16 {keys.new(20)};\n")
            r = a.setkey(bad)
            assert r.returncode != 0
            refused = r.stdout + r.stderr
            a.proc.send_signal(signal.SIGHUP)  # re-applies the first script (its keys)
            assert wait_until(lambda: a.sa(0x1001) is not None, 3)
            status = (a.status(), b.status())
            assert status[0]["sas"] and all("keys" in sa for sa in status[0]["sas"])
            pages += [_metrics(a), _metrics(b)]
            time.sleep(0.2)
        finally:
            codes = [a.stop(), b.stop()]
        assert codes == [0, 0], a.log_text() + b.log_text()
        logs = [a.log.read_bytes(), b.log.read_bytes()]

    # The logs are real debug output, in both formats, with the events we caused.
    assert b"debug control[" in logs[0] and b'"level":"debug"' in logs[1]
    assert b"installed in slot" in logs[0] and b"SIGHUP" in logs[0]
    assert b"ipsecd_sa_bytes_total" in pages[0] and b'spi="0x00003001"' in pages[2]
    haystacks = {"log A": logs[0], "log B": logs[1], "refusal": refused.encode(),
                 "status": repr(status).encode()}
    haystacks.update({f"metrics page {i}": page for i, page in enumerate(pages)})
    assert len(keys.all) == 19
    for n, key in enumerate(keys.all):
        for form in _forms(key):
            for where, text in haystacks.items():
                assert form not in text, f"key {n} found in {where} as {form!r}"
