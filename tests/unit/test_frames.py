"""Frames made once per message: what websockets itself would send, and the batch frame's JSON."""

from __future__ import annotations

import orjson
import pytest
from websockets.frames import Frame, Opcode

from bridge.frames import Message, batch_body, text_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70_000])
def test_text_frame_is_what_websockets_would_send(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_batch_holds_the_payloads_as_published_in_order() -> None:
    payloads = [b'{"type":"book","seq":2}', b'{"type":"trade","seq":3}']
    assert orjson.loads(batch_body(payloads)) == {"type": "batch", "messages": [orjson.loads(p) for p in payloads]}


def test_the_asgi_event_is_made_once() -> None:
    msg = Message.of(b'{"seq":1}', 1)
    assert msg.event() is msg.event()
    assert msg.event() == {"type": "websocket.send", "text": '{"seq":1}'}
