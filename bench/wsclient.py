"""A minimal asyncio WebSocket client for many connections at once: enough
of RFC 6455 to read a server's unmasked text frames and answer pings, with
no third-party code, so one bench process can hold 1,000 of them."""

import asyncio
import base64
import os
import re
import time
from collections.abc import Iterator

SEQ = re.compile(rb'"seq": (\d+)')


def frames(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(opcode, payload start, payload end) of each whole RFC 6455 frame in
    data (unmasked: from a server); a partial frame at the end is left for
    the caller, which keeps data[last end:]."""
    pos, end_of_data = 0, len(data)
    while pos + 2 <= end_of_data:
        opcode, length, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            if pos + head > end_of_data:
                return
            length = int.from_bytes(data[pos + 2:pos + head], "big")
        start = pos + head
        pos = start + length
        if pos > end_of_data:
            return
        yield opcode, start, pos


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients must mask), for a short payload (a pong)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Connection(asyncio.Protocol):
    """One WebSocket as an asyncio Protocol: bytes are parsed in the
    data_received callback, with no coroutine per read, so 1,000 of them in
    one process cost the machine less than the server they measure."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.received: list[tuple[int, float]] = []  # (seq, arrival time)
        self.closed = False
        self.record = True
        self._buffer = b""
        self._upgraded = loop.create_future()
        self._lost = loop.create_future()

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> "Connection":
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        conn.transport.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                              "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                              ).encode())
        await conn._upgraded
        return conn

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        data = self._buffer + data if self._buffer else data
        if not self._upgraded.done():
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = data
                return
            status = data[:end].split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self._upgraded.set_result(None)
            data = data[end + 4:]
        pos = self._parse(data, now)
        if pos < 0:
            self.transport.close()
            return
        self._buffer = data[pos:]

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self._lost.done():
            self._lost.set_result(None)

    # -- frames ----------------------------------------------------------------

    def _parse(self, data: bytes, now: float) -> int:
        """Handle each whole frame in data; return where the unparsed rest
        starts, or -1 at a close frame."""
        pos = 0
        for opcode, start, pos in frames(data):
            if opcode == 0x9:  # ping
                self.transport.write(masked_frame(0xA, data[start:pos]))
            elif opcode == 0x8:
                return -1
            elif self.record and (match := SEQ.search(data, start, min(start + 40, pos))):
                self.received.append((int(match.group(1)), now))
        return pos

    async def run(self, record: bool = True) -> None:
        """Wait until the connection ends, noting each message's seq."""
        self.record = record
        await self._lost

    def abort(self) -> None:
        self.transport.abort()

    def close(self) -> None:
        self.transport.close()
