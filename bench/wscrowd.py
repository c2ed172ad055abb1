"""Many WebSocket clients read by one epoll loop in one thread, for a bench
that needs thousands of them beside the servers it measures on 2 cores.

Per message this costs ~6 µs of the client process's CPU where the asyncio
Protocol of bench/wsclient.py costs ~35 µs (500 socketpairs x 200 frames of
1 KB, /tmp experiment, sender included in both): at 2 x 1,000 clients and 50
events/s, that is 0.6 of a core instead of 3.5 for the clients alone.
"""

import select
import socket
import time

from bench.wsclient import SEQ, frames, masked_frame
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
        pos = 0
        for opcode, start, pos in frames(data):
            if opcode == 0x9:  # ping: answer with a (masked) pong
                self.sock.setblocking(True)
                self.sock.sendall(masked_frame(0xA, data[start:pos]))
                self.sock.setblocking(False)
            elif opcode == 0x8:
                self.closed = True
            elif match := SEQ.search(data, start, min(start + 40, pos)):
                # the fields come before `content`: a snapshot says so early on
                if data.find(SNAPSHOT, start, min(start + 1000, pos)) >= 0:
                    self.snapshots.append(len(self.received))
                self.received.append((int(match.group(1)), now))
        self.buffer = data[pos:]


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
