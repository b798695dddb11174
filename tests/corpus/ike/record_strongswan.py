"""Record IKE SA key derivations from strongSwan into recorded_exchanges.json.

Run from the repository root as root: ``python tests/corpus/ike/record_strongswan.py``.
For each suite an ipsecd gateway initiates to charon (kernel-libipsec) in
network namespaces made for the purpose; charon at "ike 4" logs the DH
secret, SKEYSEED and every SK_x, and a capture of the WAN gives the nonces
and SPIs.  The entries are charon's values, not ours: tests/test_ike_crypto.py
checks ipsecd's key schedule against them on every run, without strongSwan.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[1])]

from ike_harness import bring_up, charon, ipsecd_ike, recorded_exchange  # noqa: E402
from netns import Lab, site_to_site  # noqa: E402

SUITES = [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("chacha20poly1305-prfsha512-ecp256", "chacha20poly1305"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
]


def version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "strongswan-charon"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or "unknown"


def main() -> None:
    path = HERE / "recorded_exchanges.json"
    doc = json.loads(path.read_text())
    entries = []
    for proposals, esp in SUITES:
        with tempfile.TemporaryDirectory() as tmp, Lab("rec") as lab:
            topo = site_to_site(lab, routed=False)
            sw = charon(topo, Path(tmp), proposals=proposals, esp=esp, debug_levels={"ike": 4})
            a = ipsecd_ike(topo, Path(tmp), proposals=proposals, esp=esp)
            cap = topo.gw_a_wan.ns.capture("wan0", Path(tmp) / "ike.pcap")
            try:
                bring_up(a, sw, "ipsecd")
                cap.stop()
                entries.append(recorded_exchange(
                    sw.log_text(), cap.packets(),
                    f"strongSwan charon {version()} (Debian 12, kernel-libipsec) as responder, "
                    f"'ike 4' log; ipsecd initiator; proposal {proposals}"))
            finally:
                a.stop()
                sw.stop()
    doc["exchanges"] = entries
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(entries)} exchanges written to {path}")


if __name__ == "__main__":
    main()
