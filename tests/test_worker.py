"""The gunicorn worker: a busy kept-alive connection's next request is served on the same thread."""

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmproxy.proxy import worker as worker_module
from llmproxy.proxy.worker import ProxyWorker


class _Unreader:
    def __init__(self, data: bytes = b""):
        self.data = data

    class _Buf:
        def __init__(self, data):
            self.data = data

        def getvalue(self):
            return self.data

    @property
    def buf(self):
        return self._Buf(self.data)


class _Parser:
    def __init__(self, buffered: bytes = b""):
        self.unreader = _Unreader(buffered)


class _Conn:
    def __init__(self, sock, buffered: bytes = b"", http2: bool = False):
        self.sock = sock
        self.parser = _Parser(buffered)
        self.is_http2 = http2


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def worker():
    w = ProxyWorker.__new__(ProxyWorker)  # the decision alone: no arbiter, no sockets
    w.tpool = ThreadPoolExecutor(1)
    yield w
    w.tpool.shutdown(wait=False)


def test_a_request_already_sent_is_served_on_the_same_thread(worker, pair):
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert worker._next_request_ready(_Conn(server))


def test_a_quiet_connection_goes_back_to_the_main_loop_after_the_linger(worker, pair, monkeypatch):
    monkeypatch.setattr(worker_module, "LINGER", 0.05)
    assert not worker._next_request_ready(_Conn(pair[0]))


def test_bytes_read_ahead_while_draining_a_body_count_as_ready(worker, pair):
    assert worker._next_request_ready(_Conn(pair[0], buffered=b"GET / HTTP/1.1\r\n"))


def test_no_lingering_while_requests_wait_for_a_thread(worker, pair):
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    release = threading.Event()
    worker.tpool.submit(release.wait, 10)
    worker.tpool.submit(lambda: None)  # queued: the only thread is taken
    try:
        assert not worker._next_request_ready(_Conn(server))
    finally:
        release.set()


def test_http2_connections_are_left_to_gunicorn(worker, pair):
    server, client = pair
    client.sendall(b"x")
    assert not worker._next_request_ready(_Conn(server, http2=True))


def test_pipelined_and_back_to_back_requests_through_the_real_server(start_proxy):
    proxy = start_proxy({"LLM_PROXY_WORKERS": "1", "LLM_PROXY_THREADS": "2"})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3)  # pipelined
        for _ in range(20):  # then one after another on the same connection
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 23:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {data.count(b'HTTP/1.1 200')} answers"
            data += chunk


def test_the_status_of_gunicorns_error_page_is_read_from_its_status_line():
    assert worker_module._status(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close") == \
        (431, "Request Header Fields Too Large")
    assert worker_module._status(b"") == (500, "Internal Server Error")  # a page that says nothing
