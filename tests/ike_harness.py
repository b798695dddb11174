"""IKE test plumbing shared by the interop and ipsecd-pair tests.

``ike_daemon`` starts an ``ipsecd run`` gateway with one IKEv2 connection
``s2s`` (child ``net``) on either gateway of :func:`netns.site_to_site`;
``charon`` starts strongSwan on gateway B with the matching swanctl config;
``Pki`` makes a throw-away CA and gateway certificates.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from daemon_harness import Daemon, start, wait_ready
from netns import SiteToSite, wait_until
from strongswan import Child, Connection, StrongSwan, swanctl_conf

PSK = "interop-psk-" + "q" * 24

#: (auth, IKE proposal, ESP proposal, strongSwan's (encr-alg, encr-keysize) for the child):
#: issue 4's interop matrix - PSK, ECDSA and RSA; AES-GCM, AES-CBC + SHA2, ChaCha20-Poly1305;
#: DH 31, 14, 19.
MATRIX = [
    ("psk", "aes128gcm16-prfsha256-x25519", "aes128gcm16", ("AES_GCM_16", 128)),
    ("psk", "aes256-sha256-modp2048", "aes256-sha256", ("AES_CBC", 256)),
    ("psk", "chacha20poly1305-prfsha256-ecp256", "chacha20poly1305", ("CHACHA20_POLY1305", 0)),
    ("ecdsa", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", ("AES_GCM_16", 128)),
    ("rsa", "aes256-sha256-modp2048", "aes256-sha256", ("AES_CBC", 256)),
]

NAT_T = 4500


class Pki:
    """A CA and one certificate per gateway (FQDN identities in subjectAltName)."""

    def __init__(self, kind: str) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        def key() -> Any:
            if kind.startswith("rsa"):
                bits = int(kind[3:] or 2048)
                return rsa.generate_private_key(public_exponent=65537, key_size=bits)
            return ec.generate_private_key(ec.SECP256R1())

        now = datetime.datetime.now(datetime.UTC)
        ca_key = key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ipsecd test CA {kind}")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                           False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        self.ids = {"gwa": "gwa.example", "gwb": "gwb.example"}
        self.files: dict[str, bytes] = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
        for gw, fqdn in self.ids.items():
            k = key()
            cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
                    .issuer_name(ca_name).public_key(k.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=30))
                    .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]),
                                   critical=False)
                    .sign(ca_key, hashes.SHA256()))
            self.files[f"{gw}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
            self.files[f"{gw}.key"] = k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())

    def pem(self, name: str) -> bytes:
        return self.files[name]

    def write(self, d: Path, name: str) -> Path:
        path = d / name
        path.write_bytes(self.files[name])
        os.chmod(path, 0o600)
        return path


def ipsecd_ike(topo: SiteToSite, workdir: Path, *, proposals: str = "aes128gcm16-prfsha256-x25519",
               esp: str = "aes128gcm16", side: str = "a", name: str = "ike-a",
               start_action: str = "none", families: tuple[int, ...] = (0,),
               conn_extra: dict[str, Any] | None = None,
               child_extra: dict[str, Any] | None = None,
               ike_extra: dict[str, Any] | None = None, pki: Pki | None = None,
               local_addr: str | None = None, remote_addr: str | None = None,
               metrics: str = "", log_level: str = "info") -> Daemon:
    me, peer = ("gwa", "gwb") if side == "a" else ("gwb", "gwa")
    my_wan, peer_wan = (topo.gw_a_wan, topo.gw_b_wan) if side == "a" else (topo.gw_b_wan, topo.gw_a_wan)
    my_site, peer_site = (topo.site_a, topo.site_b) if side == "a" else (topo.site_b, topo.site_a)
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    psk = d / "psk.txt"
    psk.write_text(f"{peer_wan.v4} {PSK}\n{peer} {PSK}\n")
    os.chmod(psk, 0o600)
    conn: dict[str, Any] = {
        "local_addrs": [local_addr or my_wan.v4],
        "remote_addrs": [remote_addr or peer_wan.v4],
        "proposals": [proposals]}
    conn.update(conn_extra or {})
    child: dict[str, Any] = {
        "local_ts": [my_site[i] for i in families], "remote_ts": [peer_site[i] for i in families],
        "esp_proposals": [esp], "start_action": start_action}
    child.update(child_extra or {})
    ike: dict[str, Any] = {"psk_file": str(psk), "retransmit_timeout": 0.5}
    ike.update(ike_extra or {})
    local: dict[str, Any] = {"auth": "psk", "id": me}
    remote: dict[str, Any] = {"auth": "psk", "id": peer}
    if pki is not None:
        local = {"auth": "pubkey", "id": pki.ids[me], "certs": [str(pki.write(d, f"{me}.pem"))],
                 "key": str(pki.write(d, f"{me}.key"))}
        remote = {"auth": "pubkey", "id": pki.ids[peer], "cacerts": [str(pki.write(d, "ca.pem"))]}
    return start(my_wan.ns, workdir, name, outside=["wan0"], wait=False, metrics=metrics,
                 log_level=log_level,
                 extra={"ike": ike, "connections.s2s": conn,
                        "connections.s2s.local": local,
                        "connections.s2s.remote": remote,
                        "connections.s2s.children.net": child})


def charon(topo: SiteToSite, workdir: Path, *, proposals: str = "aes128gcm16-prfsha256-x25519",
           esp: str = "aes128gcm16", debug_levels: dict[str, int] | None = None,
           families: tuple[int, ...] = (0,), extra: dict[str, Any] | None = None,
           child_extra: dict[str, Any] | None = None, pki: Pki | None = None,
           remote_addr: str | None = None) -> StrongSwan:
    sw = StrongSwan(topo.gw_b_wan.ns, workdir / "charon", debug_levels=debug_levels).start()
    ids = pki.ids if pki is not None else {"gwa": "gwa", "gwb": "gwb"}
    conn = Connection(
        name="s2s", local_addrs=[topo.gw_b_wan.v4],
        remote_addrs=[remote_addr or topo.gw_a_wan.v4],
        local_id=ids["gwb"], remote_id=ids["gwa"], proposals=[proposals],
        auth="pubkey" if pki is not None else "psk",
        local_certs=["gwb.pem"] if pki is not None else (),
        children=[Child("net", [topo.site_b[i] for i in families],
                        [topo.site_a[i] for i in families], esp_proposals=[esp],
                        extra=child_extra or {})],
        extra=extra or {})
    if pki is None:
        sw.load(swanctl_conf([conn], {("gwa", "gwb"): PSK}))
    else:
        sw.load(swanctl_conf([conn]), {"x509ca/ca.pem": pki.pem("ca.pem"),
                                       "x509/gwb.pem": pki.pem("gwb.pem"),
                                       "private/gwb.key": pki.pem("gwb.key")})
    return sw


def esp_in_udp_and_clear(frames: list[bytes], inner: set[str]) -> tuple[int, list[Any]]:
    esp, clear = 0, []
    for frame in frames:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        proto = ip[9]
        src, dst = (".".join(str(b) for b in ip[a:a + 4]) for a in (12, 16))
        if proto == 1 or {src, dst} & inner:
            clear.append((proto, src, dst))
        if proto == 17:
            hl = (ip[0] & 0xF) * 4
            sport, dport = struct.unpack_from("!HH", ip, hl)
            marker = ip[hl + 8:hl + 12]
            if NAT_T in (sport, dport) and len(marker) == 4 and marker != bytes(4):
                esp += 1
    return esp, clear


def ipsecd_children(d: Daemon) -> list[dict[str, Any]]:
    out = d.query("list-sas")
    return [c for ike in out["ike_sas"] if ike["state"] == "established" for c in ike["children"]]


def established(d: Daemon) -> bool:
    return bool(ipsecd_children(d))


def bring_up(a: Daemon, sw: StrongSwan, initiator: str) -> None:
    wait_ready(a)
    if initiator == "ipsecd":
        r = a.ipsecd("initiate", "s2s")
        assert r.returncode == 0, r.stderr + a.log_text() + sw.log_tail()
        sw.wait_established("net", timeout=15)
    else:
        sw.initiate("net", ike="s2s")
    assert wait_until(lambda: established(a), 10), a.log_text() + sw.log_tail()




# --- key material as charon logs it at "ike 4" / "chd 4" ------------------------------------

CHARON_SECRETS = ("shared Diffie Hellman secret", "SKEYSEED", "Sk_d secret", "Sk_ai secret",
                  "Sk_ar secret", "Sk_ei secret", "Sk_er secret", "Sk_pi secret", "Sk_pr secret")


def charon_dumps(log: str) -> list[tuple[str, bytes]]:
    """Every ``NAME => N bytes @ ADDR`` hex dump in a charon log, in order, as (NAME, bytes)."""
    import re

    out: list[tuple[str, bytes]] = []
    lines = log.splitlines()
    head = re.compile(r"\] (?:<[^>]*> )?(.+?) => (\d+) bytes @ 0x[0-9a-f]+$")
    row = re.compile(r"\] (?:<[^>]*> )?\s*\d+: ((?:[0-9A-F]{2} ?)+)")
    i = 0
    while i < len(lines):
        m = head.search(lines[i])
        if not m:
            i += 1
            continue
        name, size = m.group(1), int(m.group(2))
        data = bytearray()
        i += 1
        while len(data) < size and i < len(lines):
            r = row.search(lines[i])
            if not r:
                break
            data += bytes.fromhex(r.group(1)[:48].replace(" ", ""))
            i += 1
        out.append((name, bytes(data[:size])))
    return out


def ike_sa_init_pair(frames: list[bytes]) -> tuple[Any, Any]:
    """The first IKE_SA_INIT request and its response in captured Ethernet frames."""
    from ipsecd.ike.constants import ExchangeType
    from ipsecd.ike.messages import decode

    request = response = None
    for f in frames:
        if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17:
            continue
        ip = f[14:]
        hl = (ip[0] & 0xF) * 4
        sport, dport = struct.unpack_from("!HH", ip, hl)
        if 500 not in (sport, dport):
            continue
        try:
            msg = decode(ip[hl + 8:])
        except Exception:
            continue
        if msg.exchange_type != ExchangeType.IKE_SA_INIT or len(msg.payloads) < 3:
            continue
        if not msg.response:
            request = msg
        elif request is not None and msg.spi_i == request.spi_i:
            response = msg
    assert request is not None and response is not None, "no IKE_SA_INIT exchange captured"
    return request, response


def recorded_exchange(log: str, frames: list[bytes], source: str) -> dict[str, Any]:
    """One entry of tests/corpus/ike/recorded_exchanges.json from a charon log and a capture."""
    from ipsecd.ike.messages import SA, Nonce

    request, response = ike_sa_init_pair(frames)
    chosen = next(p for p in response.payloads if isinstance(p, SA)).proposals[0]
    ids = {t.type: (t.id, t.key_length) for t in chosen.transforms}
    dumps = dict(reversed([d for d in charon_dumps(log) if d[0] in CHARON_SECRETS]))
    entry: dict[str, Any] = {
        "source": source, "encr": ids[1][0], "key_bits": ids[1][1], "prf": ids[2][0],
        "Ni": next(p for p in request.payloads if isinstance(p, Nonce)).data.hex(),
        "Nr": next(p for p in response.payloads if isinstance(p, Nonce)).data.hex(),
        "SPIi": response.spi_i.hex(), "SPIr": response.spi_r.hex(),
        "g_ir": dumps["shared Diffie Hellman secret"].hex(), "SKEYSEED": dumps["SKEYSEED"].hex()}
    if 3 in ids:
        entry["integ"] = ids[3][0]
    for name in ("d", "ai", "ar", "ei", "er", "pi", "pr"):
        value = dumps.get(f"Sk_{name} secret")
        if value:
            entry[f"SK_{name}"] = value.hex()
    return entry


def one_sa(sw: StrongSwan, timeout: float = 5.0) -> Any:
    """charon's single IKE_SA.  list-sas with noblock skips an IKE_SA another charon thread
    holds at that moment (just after it came up, during a rekey): ask again until it shows."""
    found: list[Any] = []

    def got() -> bool:
        found[:] = sw.list_sas()
        return len(found) == 1

    assert wait_until(got, timeout), f"charon lists {len(found)} IKE_SAs\n{sw.log_tail()}"
    return found[0]
