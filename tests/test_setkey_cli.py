"""``ipsecd setkey`` as a command (ipsecd.cli): exit codes and messages, run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipsecd.cli import main

CORPUS = Path(__file__).parent / "corpus" / "setkey"
ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "/nonexistent/ipsecd.sock"  # no daemon listens here
NO_DAEMON = f"no running daemon: {NOWHERE} does not exist"
HOWTO = (
    "spdadd 192.0.2.1/32 192.0.2.2/32 any -P out ipsec esp/transport//require;\n"
    "spdadd 192.0.2.2/32 192.0.2.1/32 any -P in ipsec esp/transport//require;\n"
)


def ipsecd(*args: str, stdin: str | bytes = b"") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "ipsecd", *args],
        input=data, capture_output=True, env=env, cwd=ROOT, timeout=60, check=False,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_check_a_file() -> None:
    r = ipsecd("setkey", "-n", "-f", str(CORPUS / "valid" / "howto-host-to-host-a.conf"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_check_stdin_heredoc_style() -> None:
    r = ipsecd("setkey", "-n", "-c", stdin=HOWTO)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_verbose_summary() -> None:
    r = ipsecd("setkey", "-nv", "-c", stdin=HOWTO)
    assert r.returncode == 0 and r.stdout == "<stdin>: 2 statements OK\n"


def test_error_in_a_file_names_the_place() -> None:
    path = CORPUS / "invalid" / "wrong-key-length.conf"
    r = ipsecd("setkey", "-n", "-f", str(path))
    assert r.returncode == 1
    assert r.stderr == f"{path}:2:50: aes-gcm-16 takes a key of 160, 224, 288 bits, got 128\n"
    assert "Traceback" not in r.stderr


def test_error_on_stdin_is_located_in_stdin() -> None:
    r = ipsecd("setkey", "-n", "-c", stdin="flush;\nspdflush\nflush;\n")
    assert r.returncode == 1
    assert r.stderr.startswith("<stdin>:3:1: expected ';' to end the spdflush statement")


def test_apply_time_error_is_reported_too() -> None:
    r = ipsecd("setkey", "-n", "-f", str(CORPUS / "invalid" / "duplicate-spi.conf"))
    assert r.returncode == 1 and "duplicate-spi.conf:4:1: add: esp SA spi 0x1000" in r.stderr


def test_legacy_needs_the_switch() -> None:
    path = str(CORPUS / "valid" / "handbook-manual-keys-legacy.conf")
    r = ipsecd("setkey", "-n", "-f", path)
    assert r.returncode == 1 and "3des-cbc is a legacy algorithm" in r.stderr
    r = ipsecd("setkey", "-n", "--allow-legacy", "-f", path)
    assert r.returncode == 0
    # The "legacy algorithm ... in use" warning is logged once per SA when its
    # codec context is built (by the daemon); a dry run builds none.
    assert "in use" not in r.stderr


def test_warnings_go_to_stderr_and_do_not_fail() -> None:
    r = ipsecd("setkey", "-n", "-f", str(CORPUS / "valid" / "howto-tunnel-gw-b-short-prefix.conf"))
    assert r.returncode == 0
    assert "howto-tunnel-gw-b-short-prefix.conf:7:8: warning: '10.20.20/24' is read as 10.20.20.0/24" in r.stderr


def test_without_n_a_daemon_is_needed() -> None:
    r = ipsecd("setkey", "-c", "--socket", NOWHERE, stdin=HOWTO)
    assert (r.returncode, r.stderr) == (2, f"ipsecd setkey: {NO_DAEMON}\n")
    r = ipsecd("setkey", "--socket", NOWHERE, "-f", str(CORPUS / "valid" / "howto-host-to-host-a.conf"))
    assert r.returncode == 2 and NO_DAEMON in r.stderr


@pytest.mark.parametrize("flags", [["-F"], ["-FP"], ["-D"], ["-DP"], ["-PD"], ["-D", "-P"], ["-DPp"]])
def test_flush_and_dump_need_the_daemon(flags: list[str]) -> None:
    r = ipsecd("setkey", *flags, "--socket", NOWHERE)
    assert (r.returncode, r.stderr) == (2, f"ipsecd setkey: {NO_DAEMON}\n")


def test_a_bad_script_is_reported_before_the_missing_daemon() -> None:
    r = ipsecd("setkey", "-c", stdin="bogus;")
    assert r.returncode == 1 and r.stderr.startswith("<stdin>:1:1: unknown command 'bogus'")


def test_usage_errors() -> None:
    r = ipsecd("setkey")
    assert r.returncode == 2 and "give exactly one of -c, -f FILE, -e SCRIPT, -D or -F" in r.stderr
    r = ipsecd("setkey", "-c", "-D")
    assert r.returncode == 2 and "give exactly one of" in r.stderr
    r = ipsecd("setkey", "-P")
    assert r.returncode == 2 and "give exactly one of" in r.stderr
    r = ipsecd("setkey", "-c", "-P")
    assert r.returncode == 2 and "-P goes with -D" in r.stderr
    r = ipsecd("setkey", "-n", "-F")
    assert r.returncode == 2 and "-n checks a script" in r.stderr
    r = ipsecd("setkey", "-k", "-r", "-c")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    r = ipsecd()
    assert r.returncode == 2 and "COMMAND" in r.stderr
    for r in (ipsecd("setkey", "-c", "-D"), ipsecd()):
        assert "Traceback" not in r.stderr


def test_unreadable_file() -> None:
    r = ipsecd("setkey", "-n", "-f", "/nonexistent/x.conf")
    assert (r.returncode, r.stderr) == (1, "ipsecd setkey: cannot read /nonexistent/x.conf: No such file or directory\n")


def test_help() -> None:
    r = ipsecd("--help")
    assert r.returncode == 0 and "setkey" in r.stdout
    r = ipsecd("setkey", "--help")
    assert r.returncode == 0
    for flag in ("-c", "-f FILE", "-D", "-F", "-P", "-n", "--allow-legacy", "--show-keys"):
        assert flag in r.stdout
    r = ipsecd("--version")
    assert r.returncode == 0 and r.stdout.startswith("ipsecd ")


# In-process runs of main(): the same paths, cheaper, and they count for coverage.


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "a.conf"
    script.write_text(HOWTO)
    other = tmp_path / "b.conf"
    other.write_text("spdadd 192.0.2.1/32 192.0.2.2/32 any -P out none;\n")
    assert main(["setkey", "-n", str(tmp_path / "a.conf")]) == 0  # positional files as with setkey
    assert main(["setkey", "-n", "-f", str(script)]) == 0
    assert main(["setkey", "-n", "-e", "spdflush; flush;"]) == 0
    assert main(["setkey", "-nk", "-f", str(script)]) == 0
    # two files are one transaction: the second contradicts the first
    assert main(["setkey", "-n", str(script), str(script)]) == 1
    err = capsys.readouterr().err
    assert f"{script}:1:1: spdadd: an out policy for 192.0.2.1/32[any] 192.0.2.2/32[any] any already exists" in err
    assert main(["setkey", "-n", "-e", "bogus;"]) == 1
    assert capsys.readouterr().err.startswith("<command line>:1:1: unknown command 'bogus'")
    assert main(["setkey", "-n", str(other)]) == 0
    assert main(["setkey", "-D", "--socket", NOWHERE]) == 2


def test_non_utf8_bytes_in_a_quoted_key(tmp_path: Path) -> None:
    path = tmp_path / "k.conf"
    path.write_bytes(b'add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha1 "\xff\xfe345678901234567890";\n')
    assert main(["setkey", "-n", "-f", str(path)]) == 0
