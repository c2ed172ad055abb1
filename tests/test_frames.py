"""Live messages are framed once and shared: the frames must be what any
WebSocket client (here wsproto, the library simple-websocket uses) decodes."""

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from stepline.web.frames import text_frame

pytestmark = pytest.mark.one_backend  # WebSocket framing only


def client_receiving() -> WSConnection:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/ws")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    return client


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 300_000])
def test_text_frame_decodes_at_every_length_encoding(size):
    text = ("é" + "x" * size)[:size] if size else ""
    client = client_receiving()
    client.receive_data(text_frame(text))
    events = list(client.events())
    assert [type(e) for e in events] == [TextMessage]
    assert events[0].data == text and events[0].message_finished
