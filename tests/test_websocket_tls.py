"""The WebSocket relay over TLS, as it runs against api.openai.com and chatgpt.com.

The proxy only speaks TLS to hosts that are not loopback, so this drives the handshake and the
relay hub in-process: the fake provider behind a TLS listener with a self-signed certificate
for ``localhost``, the proxy's side trusting exactly that certificate.
"""

import base64
import os
import shutil
import socket
import ssl
import subprocess

import pytest
from fakeprovider import FakeProvider
from proxyproc import wait_until
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Message, TextMessage

from llmproxy.proxy import websocket
from llmproxy.proxy.routing import Route

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def tls_fake(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    fake = FakeProvider()
    fake.server.socket = server_side.wrap_socket(fake.server.socket, server_side=True)
    fake.start()
    trusted = ssl.create_default_context(cafile=str(cert))
    trusted.set_alpn_protocols(["http/1.1"])
    monkeypatch.setattr(websocket, "_tls_context", lambda: trusted)
    yield fake
    fake.stop()


def test_a_websocket_to_a_tls_upstream_relays_every_byte(tls_fake):
    port = tls_fake.port
    route = Route(provider="openai", upstream=f"localhost:{port}", host="localhost",
                  url=f"https://localhost:{port}/v1/responses", path="/v1/responses", conversation=True)
    headers = [("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
               ("Sec-WebSocket-Version", "13"), ("x-fake-echo", "1")]
    handshake = websocket.open_handshake(route, "/v1/responses", websocket.handshake_headers(
        {"HTTP_UPGRADE": "websocket"}, headers), 5, 5)
    assert handshake.status == 101 and isinstance(handshake.sock, ssl.SSLSocket)
    assert b"Sec-WebSocket-Accept:" in handshake.head
    assert tls_fake.received[-1].header("x-fake-echo") == "1"

    ours, theirs = socket.socketpair()
    hub = websocket.RelayHub()
    hub.add(ours, handshake.sock, None, handshake.early)
    client = Connection(ConnectionType.CLIENT)
    # Larger than a TLS record (16 KiB) and than one read: the hub must drain what TLS holds.
    messages = [b"\x00" * 10, os.urandom(300_000), "ü" * 50_000]
    try:
        sent = b"".join(client.send(Message(data=m)) for m in messages)
        theirs.sendall(sent)
        theirs.settimeout(5)
        got, parts = [], []
        while len(got) < len(messages):
            data = theirs.recv(65536)
            assert data, "relay closed early"
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        got.append(("" if isinstance(event, TextMessage) else b"").join(parts))
                        parts = []
        assert got == messages
        record = tls_fake.websockets[-1]
        assert bytes(record.received) == sent
        theirs.close()
        wait_until(lambda: record.ended, timeout=1.0, message="TLS upstream closed")
        wait_until(lambda: hub.open_count == 0, 1.0, message="relay gone")
    finally:
        hub.close()
