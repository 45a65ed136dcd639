"""Parsing relayed WebSocket bytes into log exchanges, without sockets: bytes in, exchanges out."""

import json
import logging
import socket
import threading

import pytest
from proxyproc import wait_until
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Message
from wsproto.extensions import PerMessageDeflate

from llmproxy.proxy.routing import Route
from llmproxy.proxy.websocket import READ_SIZE, RelayHub
from llmproxy.record.websocket_log import BACKLOG_LIMIT, MessageLog

ROUTE = Route(provider="openai", upstream="api.openai.com", host="api.openai.com",
              url="https://api.openai.com/v1/responses", path="/v1/responses", conversation=True)


class Recorder:
    def __init__(self):
        self.calls = []

    def log_request(self, exchange):
        self.calls.append(("request", exchange.request_body, exchange.request_binary))
        exchange.state = "session"

    def log_response(self, exchange):
        self.calls.append(("response", [c.raw for c in exchange.chunks], exchange.error))


def conversation(extensions: str = ""):
    recorder = Recorder()
    owner = MessageLog(recorder)
    headers = [("Sec-WebSocket-Extensions", extensions)] if extensions else []
    return recorder, owner, owner.conversation(ROUTE, "/v1/responses", [], 101, headers)


def frames(role: ConnectionType, messages, extensions=()) -> bytes:
    """What a peer of ``role`` puts on the wire for ``messages`` (each a list of fragments)."""
    sender = Connection(role, list(extensions))
    out = b""
    for fragments in messages:
        for i, fragment in enumerate(fragments):
            out += sender.send(Message(data=fragment, message_finished=i == len(fragments) - 1))
    return out


def final(response_id="resp_1") -> str:
    return json.dumps({"type": "response.completed", "response": {"id": response_id}})


def test_a_message_split_anywhere_and_fragmented_is_one_request():
    recorder, owner, conv = conversation()
    wire = frames(ConnectionType.CLIENT, [['{"type": "response.', 'create", "input": []}']])
    for i in range(len(wire)):
        conv.data("client", wire[i:i + 1], i, float(i))
    conv.data("upstream", frames(ConnectionType.SERVER, [[final()]]), 100, 100.0)
    owner.close()
    assert recorder.calls == [("request", b'{"type": "response.create", "input": []}', False),
                              ("response", [final().encode()], None)]


def test_bytes_the_log_cannot_parse_stop_only_that_direction(caplog):
    recorder, owner, conv = conversation()
    with caplog.at_level(logging.WARNING, logger="llmproxy.websocket"):
        conv.data("client", frames(ConnectionType.CLIENT, [["hello"]]), 1, 1.0)
        conv.data("client", b"\x8f\x80garbage", 2, 2.0)   # opcode 0xF: reserved
        conv.data("client", frames(ConnectionType.CLIENT, [["lost"]]), 3, 3.0)
        conv.data("upstream", frames(ConnectionType.SERVER, [["still logged"]]), 4, 4.0)
        conv.closed("client closed the connection", 5.0)
        owner.close()
    assert "cannot parse client frames" in caplog.text
    assert recorder.calls[0] == ("request", b"hello", False)
    kind, chunks, error = recorder.calls[1]
    assert kind == "response" and chunks == [b"still logged"] and "cannot parse client frames" in error


@pytest.mark.parametrize("negotiated", ["permessage-deflate", "permessage-deflate; server_no_context_takeover; "
                                                              "client_no_context_takeover"])
def test_deflated_messages_are_logged_as_sent_before_compression(negotiated):
    recorder, owner, conv = conversation(negotiated)
    client_side, server_side = PerMessageDeflate(), PerMessageDeflate()
    client_side.finalize(negotiated)
    server_side.finalize(negotiated)
    texts = [json.dumps({"type": "response.create", "n": n, "pad": "x" * 2000}) for n in range(3)]
    conv.data("client", frames(ConnectionType.CLIENT, [[t] for t in texts], [client_side]), 1, 1.0)
    conv.data("upstream", frames(ConnectionType.SERVER, [[final(f"r{n}")] for n in range(3)], [server_side]),
              2, 2.0)
    owner.close()
    assert [c[1] for c in recorder.calls if c[0] == "request"] == [t.encode() for t in texts]
    assert [c[1] for c in recorder.calls if c[0] == "response"] == [[final(f"r{n}").encode()] for n in range(3)]


def test_an_answer_cut_after_follow_ups_is_incomplete_however_memory_is_reused():
    """Follow-ups (server messages after an answer ended) cut nothing when the socket closes, but
    an answer to a later request still does. Each follow-up is freed once logged, and CPython
    soon gives a later request's entry its address: a log that knew follow-ups by ``id()``
    took such a request for one of them (here in about a third of the conversations)."""
    followed = [json.dumps({"type": "error", "error": {"message": "late"}}) for _ in range(20)]
    for _ in range(50):
        recorder, owner, conv = conversation()
        conv.data("client", frames(ConnectionType.CLIENT, [["first"]]), 1, 1.0)
        conv.data("upstream", frames(ConnectionType.SERVER, [[final()], *[[f] for f in followed]]), 2, 2.0)
        conv.data("client", frames(ConnectionType.CLIENT, [["second"]]), 3, 3.0)
        conv.data("upstream", frames(ConnectionType.SERVER, [['{"type": "response.output_text.delta"}']]), 4, 4.0)
        conv.closed("client closed the connection", 5.0)
        owner.close()
        errors = [error for kind, _, error in recorder.calls if kind == "response"]
        assert errors[:-1] == [None] * 21
        assert errors[-1] == "WebSocket closed before the answer ended: client closed the connection"


class SlowDisk(Recorder):
    """A logger whose first write hangs until released, as on a stalled disk."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def log_request(self, exchange):
        self.entered.set()
        self.release.wait(30)
        super().log_request(exchange)


def test_a_log_that_falls_behind_holds_its_relay_back_and_loses_nothing():
    """With the logging thread stuck, the relay stops reading that WebSocket once BACKLOG_LIMIT
    bytes wait for the log (memory stays bounded, as for a slow reader); once the log moves
    again every byte is relayed and every message logged."""
    recorder = SlowDisk()
    owner = MessageLog(recorder)
    conv = owner.conversation(ROUTE, "/v1/responses", [], 101, [])
    client_ours, client = socket.socketpair()
    upstream_ours, upstream = socket.socketpair()
    hub = RelayHub()
    hub.add(client_ours, upstream_ours, conv)
    messages = [bytes([i]) * (1024 * 1024) for i in range(8)]
    wire = frames(ConnectionType.CLIENT, [[m] for m in messages])
    received = bytearray()

    def read_upstream():
        upstream.settimeout(30)
        while len(received) < len(wire) and (data := upstream.recv(1 << 16)):
            received.extend(data)

    sender = threading.Thread(target=client.sendall, args=(wire,), daemon=True)
    reader = threading.Thread(target=read_upstream, daemon=True)
    sender.start()
    reader.start()
    try:
        assert recorder.entered.wait(10)
        wait_until(conv.behind, timeout=10, message="the log is behind")
        # What the relay read before it stopped may still be on its way through the socket buffers:
        # the bound is on all it ever passes (the message the log holds, the backlog, two reads).
        bound = 1024 * 1024 + BACKLOG_LIMIT + 2 * READ_SIZE
        assert bound < len(wire)
        with pytest.raises(TimeoutError):  # a relay that read on would pass all 8 MiB at once
            wait_until(lambda: len(received) > bound, timeout=0.5)
        recorder.release.set()
        reader.join(30)
        assert bytes(received) == wire
        sender.join(5)
    finally:
        recorder.release.set()
        client.close()
        upstream.close()
        hub.close()
        owner.close()
    assert [body for kind, body, _ in recorder.calls if kind == "request"] == messages

