"""The control protocol: server and client over a temporary unix socket, and every failure."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsecd import control
from ipsecd.cli import main
from ipsecd.control import (
    ControlClient,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    NotOurSocket,
    RemoteError,
    RequestError,
    prepare_socket_path,
)

ROOT = Path(__file__).resolve().parent.parent


class Served:
    """A ControlServer running in its own event loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, {
            "echo": self.echo, "refuse": self.refuse, "crash": self.crash, "slow": self.slow})
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def echo(self, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(request)
        return {"args": request.get("args"), "thread": threading.current_thread().name}

    def refuse(self, request: dict[str, Any]) -> None:
        raise RequestError("c.setkey:3:1: add: esp SA spi 0x1002 already exists")

    def crash(self, request: dict[str, Any]) -> None:
        raise KeyError("oops")

    async def slow(self, request: dict[str, Any]) -> str:
        await asyncio.sleep(0.01)
        return "done"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "ipsecd.sock")
    yield s
    s.close()


def test_requests_and_answers(served: Served) -> None:
    assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o600
    with ControlClient(served.path) as client:
        result = client.request("echo", args=[1, "two", {"three": 3}])
        assert result["args"] == [1, "two", {"three": 3}]
        assert client.request("slow") == "done"  # a coroutine handler
        with pytest.raises(RemoteError, match=r"^c.setkey:3:1: add: esp SA spi 0x1002"):
            client.request("refuse")
        with pytest.raises(RemoteError, match=r"internal error: KeyError"):
            client.request("crash")
        with pytest.raises(RemoteError, match=r"unknown command 'nope'"):
            client.request("nope")
        assert client.request("echo", args=None)["args"] is None  # still usable after errors
    assert control.request(served.path, "echo", args="x")["args"] == "x"
    assert served.calls[0]["ipsecd"] == control.PROTOCOL


def _raw(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        out = b""
        while not out.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        return out


def test_bad_requests_get_errors_not_silence(served: Served) -> None:
    assert b'"ok":false' in _raw(served.path, b"not json\n")
    assert b"not an ipsecd control request" in _raw(served.path, b'{"cmd": "echo"}\n')
    assert b"protocol version 99 not supported; this daemon speaks version 1" in _raw(
        served.path, b'{"ipsecd": 99, "cmd": "echo"}\n')


def test_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=r"no running daemon: .*x.sock does not exist"):
        control.request(tmp_path / "x.sock", "status")
    # A socket file whose daemon is gone.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(DaemonNotRunning, match="stale"):
        control.request(stale, "status")
    prepare_socket_path(stale)  # a daemon starting there removes it
    assert not stale.exists()


def test_not_our_socket(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("hello")
    with pytest.raises(NotOurSocket, match="is not a socket"):
        control.request(regular, "status")
    with pytest.raises(ControlError, match="not a socket; not touching it"):
        prepare_socket_path(regular)
    assert regular.exists()

    # Something that answers with another protocol, or hangs up.
    for answer in (b"HTTP/1.0 400 Bad Request\r\n\r\n", b'{"hello": 1}\n', b""):
        path = tmp_path / f"other{len(answer)}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)

        def serve(srv: socket.socket = srv, answer: bytes = answer) -> None:
            conn, _ = srv.accept()
            conn.recv(4096)
            conn.sendall(answer)
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with pytest.raises(NotOurSocket):
            control.request(path, "status", timeout=5)
        t.join(5)
        srv.close()


def test_a_second_daemon_is_refused(served: Served) -> None:
    with pytest.raises(ControlError, match="another daemon is running"):
        prepare_socket_path(served.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_for_other_users(served: Served) -> None:
    os.chmod(served.path.parent, 0o755)
    code = (
        "import os\n"
        "from ipsecd import control\n"  # import first: the interpreter may be root's only
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    control.request({str(served.path)!r}, 'echo')\n"
        "except control.ControlError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, check=False)
    assert "permission denied" in proc.stdout, proc.stderr


def test_cli_messages_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        served: Served) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 2
    assert capsys.readouterr().err == (
        f"ipsecd status: no running daemon: {tmp_path / 'none.sock'} does not exist\n")
    regular = tmp_path / "file"
    regular.write_text("")
    assert main(["setkey", "-D", "--socket", str(regular)]) == 2
    assert capsys.readouterr().err == f"ipsecd setkey: {regular} is not a socket\n"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[datapath]\noutside = ["eth0"]\n[control]\nsocket = "{served.path}"\n')
    # The socket named in the configuration is found; this server has no status command.
    assert main(["status", "--config", str(conf)]) == 1
    assert "unknown command 'status'" in capsys.readouterr().err
