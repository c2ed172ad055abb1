"""A real gunicorn (gevent worker) on a loopback port, for protocol and
browser tests."""

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from .conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(url: str) -> bool:
    """Whether a Stepline web server answers /healthz at url."""
    try:
        return requests.get(url + "/healthz", timeout=5).ok
    except requests.RequestException:
        return False


class LiveServer:
    def __init__(self, db_path: str, workers: int = 1, env: dict | None = None,
                 port: int | None = None, graceful_timeout: int | None = 1):
        self.db_path = db_path
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        # 1 s keeps the tests' stops short; None keeps gunicorn_conf's (5 s)
        self.graceful = [] if graceful_timeout is None else ["--graceful-timeout",
                                                             str(graceful_timeout)]

    def start(self) -> "LiveServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:stepline.web.gunicorn_conf",
             "-b", f"127.0.0.1:{self.port}", "-w", str(self.workers), *self.graceful,
             "app:app"],
            env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if serving(self.url):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start: {self.proc.stderr.read().decode()[-2000:]}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if not self.proc or self.proc.poll() is not None:
            return  # stopped already: the port may be another server's by now
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # the port is free again before anyone restarts on it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids


def socket_count(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def ws_connect(port: int, path: str, rcvbuf: int | None = None,
               timeout: float = 10) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    # Peek, then take exactly the response head: frames the server sends
    # right after it stay in the socket for the caller.
    while b"\r\n\r\n" not in (peeked := sock.recv(65536, socket.MSG_PEEK)):
        assert peeked, "server closed during the handshake"
        time.sleep(0.01)
    head = sock.recv(peeked.index(b"\r\n\r\n") + 4)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head[:200]
    return sock


def read_frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every server frame until the connection ends: (opcode, payload)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    frames, pos = [], 0
    while pos < len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length in (126, 127):
            size = 2 if length == 126 else 8
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        frames.append((opcode, data[pos:pos + length]))
        pos += length
    return frames


def recv_until(sock: socket.socket, deadline: float) -> bytes | None:
    """What the socket has before `deadline` (monotonic): None if nothing came,
    b"" if the peer closed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None


class FrameReader:
    """A raw WebSocket's server frames one at a time as they arrive
    (read_frames waits for the connection to end)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def next(self, timeout: float) -> tuple[int, bytes] | None:
        """The next whole frame as (opcode, payload); None when none completes
        within `timeout`; (0x8, b"") when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while (frame := self._take()) is None:
            chunk = recv_until(self.sock, deadline)
            if chunk is None:
                return None
            if not chunk:
                return 0x8, b""
            self.buffer += chunk
        return frame

    def _take(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, length, pos = data[0] & 0x0F, data[1] & 0x7F, 2
        if length in (126, 127):
            size = 2 if length == 126 else 8
            if len(data) < pos + size:
                return None
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        if len(data) < pos + length:
            return None
        self.buffer = data[pos + length:]
        return opcode, data[pos:pos + length]


def sse_connect(port: int, path: str, timeout: float = 10) -> socket.socket:
    """A raw `text/event-stream` request. HTTP/1.0, so the body is not
    chunked: the bytes after the response head are the stream itself."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    while b"\r\n\r\n" not in (peeked := sock.recv(65536, socket.MSG_PEEK)):
        assert peeked, "server closed before the response head"
        time.sleep(0.01)
    head = sock.recv(peeked.index(b"\r\n\r\n") + 4)
    assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
    assert b"text/event-stream" in head, head[:400]
    return sock


class SseReader:
    """Server-Sent Events from a raw socket, one message at a time."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def next(self, timeout: float) -> tuple[int | None, str] | None:
        """The next message as (id, data); comments (keepalives) are skipped.
        None when none completes within `timeout`; raises EOFError when the
        server closed the stream."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                event_id, data = None, []
                for line in block.decode().split("\n"):
                    if line.startswith("id:"):
                        event_id = int(line[3:].strip())
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                if data or event_id is not None:
                    return event_id, "\n".join(data)
            chunk = recv_until(self.sock, deadline)
            if chunk is None:
                return None
            if not chunk:
                raise EOFError("the server closed the event stream")
            self.buffer += chunk
