"""WebSocket frames written by hand, for the live fan-out.

Each live message is framed once and the same bytes go to every socket
(server frames are unmasked and sent uncompressed, which permessage-deflate
allows), so 1,000 watchers cost 1,000 sends, not 1,000 encodings. Writing
those bytes ourselves means going around simple-websocket: `WholeFrames`
wraps the socket it owns (hence the pinned version in pyproject.toml).
"""

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any


def text_frame(text: str) -> bytes:
    """RFC 6455 section 5.2: FIN + text opcode, then the payload length."""
    data = text.encode()
    n = len(data)
    if n < 126:
        header = bytes([0x81, n])
    elif n < 1 << 16:
        header = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return header + data


class WholeFrames:
    """The WebSocket's socket, written one whole frame at a time.

    simple-websocket 1.1.0 writes each frame with one sock.send() and ignores
    a partial write (its issue #45), which cuts the frame whenever the send
    buffer is fuller than the frame is long. Every write here goes through
    one lock and finishes what an earlier write began, so frames from the
    tailer, the connection's greenlet and simple-websocket's reader (pongs,
    pings, the close frame) never interleave."""

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()
        self._rest = b""  # the unsent tail of a frame already begun
        if type(sock).__module__.startswith("gevent"):
            self._send_now = lambda data: sock.send(data, 0, timeout=0.0)
        else:
            self._send_now = lambda data: sock.send(data, socket.MSG_DONTWAIT)

    def send(self, data: bytes) -> int:
        """Blocking (cooperatively, under gevent): the rest of any frame begun,
        then `data`."""
        with self._lock:
            if self._rest:
                self._sock.sendall(self._rest)
                self._rest = b""
            self._sock.sendall(data)
        return len(data)

    def try_send(self, frame: bytes) -> bool:
        """Without waiting: True when the frame is taken -- written whole, or
        begun with its tail kept for `send` to finish first. False when
        nothing was written (socket full, or another write in progress)."""
        if self._rest or not self._lock.acquire(blocking=False):
            return False
        try:
            self._rest = frame[self._send_now(frame):]
            return True
        except BlockingIOError:
            return False
        finally:
            self._lock.release()

    @property
    def unfinished(self) -> bool:
        return bool(self._rest)

    def __getattr__(self, name):
        return getattr(self._sock, name)


@dataclass
class Message:
    """One live message, encoded once for every subscriber of a view."""

    seq: int
    fields: dict[str, Any]
    content: str

    def __post_init__(self):
        self.json_html = json.dumps({**self.fields, "content": self.content})
        self.json_bare = json.dumps(self.fields)
        self._frames: dict[bool, bytes] = {}

    def encoded(self, with_content: bool) -> str:
        return self.json_html if with_content else self.json_bare

    def frame(self, with_content: bool) -> bytes:
        """The whole WebSocket frame, built once for every subscriber: server
        frames are unmasked, and sent uncompressed (RSV1 clear, which
        permessage-deflate allows), so the bytes are the same for everyone."""
        if with_content not in self._frames:
            self._frames[with_content] = text_frame(self.encoded(with_content))
        return self._frames[with_content]
