"""How a streamed answer that is not SSE splits into events, for the log.

The proxy splits ``text/event-stream`` answers itself (llmproxy/proxy/capture.py). An API whose
streams come in another framing names a :class:`Framer` for them (a module's ``framer``): the
capture feeds it the answer's bytes as they arrived and logs each event it returns as one chunk,
with that arrival time. The relay never waits for it: the client gets the bytes untouched.
"""

from __future__ import annotations

import re
from typing import Protocol


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class FramingError(ValueError):
    """The stream is not in the framing it claims (a bad checksum, a broken frame)."""


class Framer(Protocol):
    def feed(self, data: bytes) -> list[bytes]:
        """The events ``data`` completes, each as JSON text. Raises :class:`FramingError`."""

    def rest(self) -> bytes:
        """What of an unfinished event is left when the stream ends (a stream cut short)."""


_OUTSIDE = re.compile(rb'[][{}"]')   # what changes the nesting outside a string
_INSIDE = re.compile(rb'["\\]')      # what ends a string, or escapes the next byte


class JsonArray:
    """The elements of one JSON array, each as soon as its last byte is in (a Gemini stream
    without ``alt=sse``: ``[{…}\\n,\\r\\n{…}\\n]``). A top-level object instead of an array (an
    error) is one event. Whitespace and commas between elements are dropped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0             # how far the buffer is scanned
        self._depth = 0           # nesting, the outer array included
        self._base: int | None = None  # the depth at which elements start: 1 in an array, 0 else
        self._start: int | None = None  # where the element being read starts
        self._in_string = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        buf, out = self._buf, []
        i = self._pos
        while True:
            match = (_INSIDE if self._in_string else _OUTSIDE).search(buf, i)
            if match is None:
                break
            i, char = match.end(), buf[match.start()]
            if self._in_string:
                if char == 0x5C:  # a backslash: the next byte is escaped
                    if i >= len(buf):
                        i -= 1  # look again when the escaped byte is in
                        break
                    i += 1
                else:
                    self._in_string = False
            elif char == 0x22:
                self._in_string = True
            elif char in b"[{":
                if self._base is None:
                    self._base = 1 if char == 0x5B else 0
                if self._depth == self._base:
                    self._start = match.start()
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth < 0:
                    raise FramingError("a JSON stream closes more than it opened")
                if self._depth == self._base and self._start is not None:
                    out.append(bytes(buf[self._start:i]))
                    self._start = None
        if self._start is None:  # nothing unfinished: forget what was read
            del buf[:i]
            i = 0
        elif self._start:
            del buf[:self._start]
            i -= self._start
            self._start = 0
        self._pos = i
        return out

    def rest(self) -> bytes:
        return bytes(self._buf[self._start:]) if self._start is not None else b""
