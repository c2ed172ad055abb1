"""A minimal asyncio WebSocket client for many connections at once: enough
of RFC 6455 to read a server's unmasked text frames and answer pings, with
no third-party code, so one bench process can hold 1,000 of them."""

import asyncio
import base64
import os
import re
import time

SEQ = re.compile(rb'"seq": (\d+)')


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.received: list[tuple[int, float]] = []  # (seq, arrival time)
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port, limit=2**22)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        status = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(status.decode(errors="replace"))
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return opcode, await self.reader.readexactly(length)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def run(self, record: bool = True, until: float | None = None) -> None:
        """Read frames until closed (or `until`), noting each message's seq."""
        try:
            while until is None or time.time() < until:
                opcode, payload = await self.read_frame()
                if opcode == 0x9:  # ping
                    self.send_frame(0xA, payload)
                elif opcode == 0x8:
                    break
                elif record and (match := SEQ.search(payload, 0, 40)):
                    self.received.append((int(match.group(1)), time.time()))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True

    def close(self) -> None:
        self.writer.close()
