"""deploy/ipsecd.service: ``systemd-analyze verify`` passes, the sandbox is what we claim.

``verify`` wants the ExecStart binary to exist, so it checks a copy whose
``/usr/bin/ipsecd`` points at the entry point of the environment running the
tests; it must print nothing at all (it exits 0 even on unknown keys and
unparsable values, which it only warns about).  ``security --offline``
scores the sandbox; "OK" (exposure below 4.0 on systemd's 0-10 scale) is
required.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "ipsecd.service"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package "
                    "(deploy/scripts/install-deps.sh)", pytrace=False)
    return exe


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    entry = Path(sys.executable).parent / "ipsecd"
    assert entry.exists(), entry
    path = tmp_path / "ipsecd.service"
    path.write_text(UNIT.read_text().replace("/usr/bin/ipsecd", str(entry)))
    return path


def test_systemd_analyze_verify(unit_copy: Path) -> None:
    r = subprocess.run([_analyze(), "verify", str(unit_copy)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_verify_is_not_blind(unit_copy: Path) -> None:
    """A misspelt key is reported (so an empty output above means something)."""
    unit_copy.write_text(unit_copy.read_text().replace("RestrictNamespaces=", "RestrictNamspaces="))
    r = subprocess.run([_analyze(), "verify", str(unit_copy)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert "RestrictNamspaces" in r.stdout + r.stderr


def test_security_exposure_is_ok(unit_copy: Path) -> None:
    r = subprocess.run([_analyze(), "security", "--offline=true", "--no-pager", str(unit_copy)],
                       capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) < 4.0, m.group(0)


def test_sandbox_directives() -> None:
    d = _directives()
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_NETLINK", "AF_PACKET", "AF_UNIX", "AF_INET", "AF_INET6"}
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("Type", "notify"), ("RuntimeDirectory", "ipsecd"),
                       ("DeviceAllow", "/dev/net/tun rw")):
        assert d[key] == [value], key
    assert "/run/ipsecd" in d["ReadWritePaths"]  # the default [daemon] state_dir
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"] == ["/usr/bin/ipsecd run --config /etc/ipsecd/ipsecd.toml"]
