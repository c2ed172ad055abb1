"""Many WebSocket clients read by one epoll loop in one thread, for a bench
that needs thousands of them beside the servers it measures on 2 cores.

Per message this costs ~6 µs of the client process's CPU where the asyncio
Protocol of bench/wsclient.py costs ~35 µs (500 socketpairs x 200 frames of
1 KB, /tmp experiment, sender included in both): at 2 x 1,000 clients and 50
events/s, that is 0.6 of a core instead of 3.5 for the clients alone.
"""

import os
import select
import socket
import time

from bench.wsclient import SEQ
from tests.live_server import ws_connect

SNAPSHOT = b'"snapshot": true'


class Client:
    """One connection's record: `received` (seq, arrival time) of every
    message, `snapshots` the indexes in it of snapshot messages, `closed`
    when the server closed it."""

    def __init__(self, sock: socket.socket, path: str):
        self.sock = sock
        self.path = path
        self.buffer = b""
        self.received: list[tuple[int, float]] = []
        self.snapshots: list[int] = []
        self.closed = False

    def read(self, now: float) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        data = self.buffer + data if self.buffer else data
        pos, end_of_data = 0, len(data)
        while pos + 2 <= end_of_data:  # RFC 6455 frames: unmasked, from the server
            opcode, length, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
            if length >= 126:
                head = 4 if length == 126 else 10
                if pos + head > end_of_data:
                    break
                length = int.from_bytes(data[pos + 2:pos + head], "big")
            start = pos + head
            end = start + length
            if end > end_of_data:
                break
            if opcode == 0x9:  # ping: answer with a (masked) pong
                self.send_frame(0xA, data[start:end])
            elif opcode == 0x8:
                self.closed = True
            elif match := SEQ.search(data, start, min(start + 40, end)):
                # the fields come before `content`: a snapshot says so early on
                if data.find(SNAPSHOT, start, min(start + 1000, end)) >= 0:
                    self.snapshots.append(len(self.received))
                self.received.append((int(match.group(1)), now))
            pos = end
        self.buffer = data[pos:]

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.setblocking(True)
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)
        self.sock.setblocking(False)


class Crowd:
    """The clients of one process, all read by `poll`."""

    def __init__(self):
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}

    def open(self, port: int, path: str) -> Client:
        """Connect and upgrade (blocking, ~1 ms); what the server sends
        after its 101 waits in the socket for `poll`."""
        sock = ws_connect(port, path, timeout=30)
        sock.setblocking(False)
        client = self.clients[sock.fileno()] = Client(sock, path)
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        return client

    def poll(self, timeout: float) -> None:
        """Read every socket that has data, once; waits up to `timeout`."""
        events = self.epoll.poll(timeout)
        now = time.time()
        for fd, _ in events:
            client = self.clients[fd]
            client.read(now)
            if client.closed:
                self.epoll.unregister(fd)

    def close_all(self) -> None:
        for fd, client in self.clients.items():
            if not client.closed:
                self.epoll.unregister(fd)
            client.sock.close()
        self.epoll.close()
