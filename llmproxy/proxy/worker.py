"""The gunicorn worker: gthread, with a kept-alive connection's next request served at once.

In gunicorn's gthread worker a request thread hands a kept-alive connection back to the main
loop after every response (a pipe write, ``epoll_ctl`` to register it, ``epoll_wait`` until the
next request, ``epoll_ctl`` to unregister, a pool queue, a thread wake-up). Each of those steps
needs the GIL, which the main loop shares with every busy request thread: under 16 concurrent
clients that round trip took a median of 2.5 ms and a p99 of 25 ms per request, and the main
loop held the GIL more than any request thread. :class:`ProxyWorker` lets the thread that sent
a response wait briefly on its connection (``poll``, without the GIL) and serve the next request
itself; a connection that stays quiet, or any connection while requests wait for a thread, goes
back to the main loop as before.

gunicorn answers a request its parser refuses (a lowercase method, a request line or header
over its limit, a malformed header…) with an HTML page of its own; :class:`ProxyWorker` answers
it as JSON in the provider's error shape, as the proxy answers everything else.
"""

from __future__ import annotations

import select

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from llmproxy.common.errors import rejected
from llmproxy.common.masking import mask_text
from llmproxy.providers import error_body, error_headers

# How long a request thread waits on its kept-alive connection for the next request. A client
# that reuses its connection under load sends it within a few milliseconds of reading the
# answer; an idle one (a coding agent thinking) costs the thread no more than this.
LINGER = 0.01


class ProxyWorker(ThreadWorker):
    """gthread with the next request of a busy kept-alive connection served on the same thread."""

    def handle(self, conn):
        keepalive = super().handle(conn)
        while keepalive is True and self.alive and self._next_request_ready(conn):
            keepalive = super().handle(conn)
        return keepalive

    def _next_request_ready(self, conn) -> bool:
        if conn.parser is None or conn.is_http2:
            return False
        if conn.parser.unreader.buf.getvalue():  # read ahead while draining the last body
            return True
        if self._requests_waiting():  # this thread is wanted for a request already here
            return False
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        try:
            return bool(poller.poll(LINGER * 1000))
        except OSError:
            return False

    def _requests_waiting(self) -> bool:
        work_queue = getattr(self.tpool, "_work_queue", None)
        return bool(work_queue is not None and work_queue.qsize())

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it cannot parse, or to a failure before anything was
        sent, as JSON: gunicorn still picks the status, logs the warning and the access line
        (``super()``); only the HTML page it writes is replaced. The shape is the provider's
        when gunicorn parsed the request line (its path's first segment), else every
        provider's at once."""
        page = _Page(client)
        super().handle_error(req, page, addr, exc)
        status, reason = _status(page.written)
        # A failure of ours stays inside; a refusal may quote the client's header line, key and all.
        message = mask_text(f"{reason}: {exc}") if status < 500 else reason
        request = req or getattr(exc, "req", None)  # an invalid header names its request
        path = getattr(request, "path", None)
        provider = path.lstrip("/").split("/", 1)[0] if isinstance(path, str) else None
        error = rejected(status, message)
        body = error_body(provider, error)
        extra = "".join(f"{name}: {value}\r\n" for name, value in error_headers(provider, error))
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"{extra}Content-Length: {len(body)}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:  # as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")


class _Page:
    """The client socket as gunicorn's ``handle_error`` sees it: what it writes (its HTML
    page) is kept, not sent; everything else reaches the socket."""

    def __init__(self, sock):
        self._sock = sock
        self.written = b""

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self.written += data


def _status(answer: bytes) -> tuple[int, str]:
    """Status and reason of gunicorn's answer (``HTTP/1.1 414 URI Too Long``)."""
    parts = answer.split(b"\r\n", 1)[0].split(b" ", 2)
    try:
        return int(parts[1]), parts[2].decode("latin-1")
    except (IndexError, ValueError):
        return 500, "Internal Server Error"
