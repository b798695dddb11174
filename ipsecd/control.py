"""The control socket: JSON lines over a unix socket, server (daemon) and client (CLI).

Protocol
--------
One JSON object per line (UTF-8, orjson), request then response, as many
as the client wants on one connection::

    -> {"ipsecd": 1, "cmd": "status"}
    <- {"ipsecd": 1, "ok": true, "result": {...}}
    <- {"ipsecd": 1, "ok": false, "error": "what went wrong"}

``"ipsecd"`` is the protocol version: a server answers a request of another
version with an error that names its own, and a client that gets back
anything but a JSON object carrying ``"ipsecd"`` knows the socket is not
ours (see :class:`NotOurSocket`).  Commands and their results belong to the
daemon (:mod:`ipsecd.daemon`); this module only frames and dispatches.

Security: the socket is created with mode 0600 (umask 0177 around bind, so
there is no window with looser permissions) in the daemon's state directory
(0700).  Only its owner (root) can connect; requests can carry key material
(setkey scripts).

The server is a thin asyncio adapter (aioquic's ``asyncio/protocol.py``
style): bytes in, one handler call per request, bytes out.  Handlers run in
the event loop's thread - the thread that owns the SPD and SAD - so a
request is applied between two other events, never concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

PROTOCOL = 1
MAX_LINE = 16 << 20  # a setkey script with thousands of SAs still fits

log = logging.getLogger("ipsecd.control")

Handler = Callable[[dict[str, Any]], Any]
"""A command handler: gets the request object, returns a JSON-able result or
raises :class:`RequestError`; may be a coroutine function."""


class ControlError(Exception):
    """The client could not get an answer; ``str()`` is a message for people."""


class DaemonNotRunning(ControlError):
    """Nothing listens on the socket (no file, or a stale one)."""


class NotOurSocket(ControlError):
    """The path is not a socket, or what answers does not speak our protocol."""


class RemoteError(ControlError):
    """The daemon answered, refusing the request; ``str()`` is its message."""


class RequestError(Exception):
    """Raised by a handler: the request cannot be done; the message goes to the client."""


# --- server ----------------------------------------------------------------------------


class ControlServer:
    """Serves ``handlers`` (command name -> handler) on a unix socket."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind (0600) and listen; :class:`ControlError` if another daemon answers there."""
        prepare_socket_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_encode({"ipsecd": PROTOCOL, "ok": False,
                                          "error": f"request longer than {MAX_LINE} bytes"}))
                    await writer.drain()
                    return
                response = await self.dispatch(line)
                writer.write(_encode(response))
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        """One request line -> the response object (never raises)."""
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            return _error("not a JSON object")
        if not isinstance(request, dict) or "ipsecd" not in request:
            return _error("not an ipsecd control request")
        if request["ipsecd"] != PROTOCOL:
            return _error(f"protocol version {request['ipsecd']!r} not supported; "
                          f"this daemon speaks version {PROTOCOL}")
        cmd = request.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return _error(f"unknown command {cmd!r}")
        try:
            result = handler(request)
            if isinstance(result, Awaitable):
                result = await result
        except RequestError as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug: keep serving, tell the client
            log.exception("control command %s failed", cmd)
            return _error(f"internal error: {exc.__class__.__name__}: {exc}")
        return {"ipsecd": PROTOCOL, "ok": True, "result": result}


def _error(message: str) -> dict[str, Any]:
    return {"ipsecd": PROTOCOL, "ok": False, "error": message}


def _encode(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def prepare_socket_path(path: Path) -> None:
    """Make room for a new socket at ``path``: refuse a live daemon, remove a stale socket.

    Raises :class:`ControlError` when another daemon answers there or the
    path holds something other than a socket (we never delete a file that
    is not ours).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its daemon is gone
        return
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ControlError(f"another daemon is running on {path}")


# --- client ----------------------------------------------------------------------------


class ControlClient:
    """A blocking client for one daemon; one connection, any number of requests."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DaemonNotRunning(f"no running daemon: {path} does not exist") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (the socket is the daemon "
                               "owner's only; run as root)") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise NotOurSocket(f"{path} is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            sock.close()
            raise DaemonNotRunning(f"no running daemon: nothing listens on {path} "
                                   "(a stale socket)") from None
        except PermissionError:
            sock.close()
            raise ControlError(f"{path}: permission denied (the socket is the daemon "
                               "owner's only; run as root)") from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
        self._sock = sock

    def request(self, cmd: str, **args: Any) -> Any:
        """Send one command and return its ``result``; raises a :class:`ControlError`."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        message = {"ipsecd": PROTOCOL, "cmd": cmd, **args}
        try:
            self._sock.sendall(_encode(message))
            line = self._readline()
        except TimeoutError:
            raise ControlError(f"{self.path}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise NotOurSocket(f"{self.path}: the peer closed the connection "
                                   "(not an ipsecd control socket?)") from None
            raise ControlError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            response = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise NotOurSocket(f"{self.path} does not speak the ipsecd control protocol") from None
        if not isinstance(response, dict) or "ipsecd" not in response:
            raise NotOurSocket(f"{self.path} does not speak the ipsecd control protocol")
        if response.get("ok") is True:
            return response.get("result")
        raise RemoteError(str(response.get("error", "request refused")))

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                if self._buffer:
                    break
                raise NotOurSocket(f"{self.path}: the peer closed the connection without "
                                   "an answer (not an ipsecd control socket?)")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise NotOurSocket(f"{self.path}: answer too long; not an ipsecd control socket?")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(path: str | os.PathLike[str], cmd: str, *, timeout: float = 30.0, **args: Any) -> Any:
    """One request on a fresh connection (what the CLI does)."""
    with ControlClient(path, timeout=timeout) as client:
        return client.request(cmd, **args)


__all__ = [
    "PROTOCOL",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "DaemonNotRunning",
    "NotOurSocket",
    "RemoteError",
    "RequestError",
    "prepare_socket_path",
    "request",
]
