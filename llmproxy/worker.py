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
"""

from __future__ import annotations

import select

from gunicorn.workers.gthread import ThreadWorker

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
