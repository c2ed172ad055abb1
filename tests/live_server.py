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
                 port: int | None = None):
        self.db_path = db_path
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LiveServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:stepline.web.gunicorn_conf",
             "-b", f"127.0.0.1:{self.port}", "-w", str(self.workers), "--graceful-timeout",
             "1", "app:app"],
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
        if self.proc and self.proc.poll() is None:
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


def ws_connect(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
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
