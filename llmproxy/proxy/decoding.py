"""Content-Encoding decoding for the log: gzip, deflate, br, zstd, stacked, bounded in size.

Only the log sees decoded bytes; the relay always sends what upstream sent. ``Content-Encoding:
gzip, br`` means gzip was applied first, so br is undone first. A decoder never holds more than
:data:`MAX_DECODED_BYTES` of output: a few KiB that would inflate to gigabytes (a decompression
bomb) cost the log that much at most, and the entry says it was cut.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import brotli
import zstandard

# Larger than any request a provider accepts (Anthropic's limit is 32 MB), small enough that a
# few threads decoding bombs at once cannot exhaust a worker.
MAX_DECODED_BYTES = 64 * 1024 * 1024

# The most a zstd frame can inflate one input byte (an RLE block: 4 bytes become 128 KiB), so
# input is fed in slices whose output cannot overshoot the budget left.
_ZSTD_RATIO = 1 << 15


class DecodeError(ValueError):
    """The body is not what its Content-Encoding says (or names a coding nobody knows)."""


@dataclass
class Decoded:
    """A body as the log shows it: decoded, or as it came with the reason in ``error``."""

    data: bytes
    error: str | None = None   # why ``data`` is the body as it came (undecoded)
    truncated: bool = False    # decoding stopped at MAX_DECODED_BYTES


def codings(content_encoding: str | None) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied."""
    names = [c.strip().lower() for c in (content_encoding or "").split(",")]
    return [n for n in names if n and n != "identity"]


class _Zlib:
    """gzip (members concatenated allowed), zlib-wrapped deflate, or raw deflate (what some
    servers send as ``deflate``), told apart by the zlib header."""

    def __init__(self, gzip: bool):
        self.gzip = gzip
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self.head = b""

    def feed(self, data: bytes, budget: int) -> tuple[bytes, bool]:
        if self.d is None:
            self.head += data
            if len(self.head) < 2:
                return b"", False
            wrapped = self.head[0] & 0x0F == 8 and int.from_bytes(self.head[:2], "big") % 31 == 0
            self.d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self.head = self.head, b""
        out = []
        while data and budget >= 0:
            piece = self.d.decompress(data, budget + 1)
            out.append(piece)
            budget -= len(piece)
            data = self.d.unconsumed_tail
            if self.d.eof and self.gzip and self.d.unused_data.strip(b"\0"):
                data = self.d.unused_data
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(out), budget < 0

    @property
    def finished(self) -> bool:
        return self.d is not None and self.d.eof


class _Brotli:
    def __init__(self):
        self.d = brotli.Decompressor()

    def feed(self, data: bytes, budget: int) -> tuple[bytes, bool]:
        out = [self.d.process(data, output_buffer_limit=budget + 1)]
        budget -= len(out[0])
        while budget >= 0 and not self.d.can_accept_more_data():
            piece = self.d.process(b"", output_buffer_limit=budget + 1)
            if not piece:
                break
            out.append(piece)
            budget -= len(piece)
        return b"".join(out), budget < 0

    @property
    def finished(self) -> bool:
        return self.d.is_finished()


class _Zstd:
    def __init__(self):
        self.d = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes, budget: int) -> tuple[bytes, bool]:
        out = []
        view = memoryview(data)
        while view and budget >= 0:
            step = max(64, budget // _ZSTD_RATIO)
            piece = self.d.decompress(view[:step])
            view = view[step:]
            if self.d.eof and self.d.unused_data:  # another frame follows
                view = memoryview(self.d.unused_data + bytes(view))
                self.d = zstandard.ZstdDecompressor().decompressobj()
            out.append(piece)
            budget -= len(piece)
        return b"".join(out), budget < 0

    @property
    def finished(self) -> bool:
        return self.d.eof


_CODINGS = {"gzip": lambda: _Zlib(True), "x-gzip": lambda: _Zlib(True), "deflate": lambda: _Zlib(False),
            "br": _Brotli, "zstd": _Zstd}


class StreamDecoder:
    """Undoes a stack of codings piece by piece, as the encoded body arrives."""

    def __init__(self, content_encoding: str | None, limit: int = MAX_DECODED_BYTES):
        names = codings(content_encoding)
        unknown = [n for n in names if n not in _CODINGS]
        if unknown:
            raise DecodeError(f"unsupported content-encoding {unknown[0]!r}")
        self.stages = [_CODINGS[n]() for n in reversed(names)]
        self.names = list(reversed(names))
        self.left = limit
        self.truncated = False

    def feed(self, data: bytes) -> bytes:
        """Decoded bytes for ``data``; nothing more once the limit is reached. Raises DecodeError."""
        if self.truncated:
            return b""
        for name, stage in zip(self.names, self.stages):
            try:
                data, over = stage.feed(data, self.left)
            except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
                raise DecodeError(f"{name}: {exc}") from None
            if over:
                data, self.truncated = data[:self.left], True
        self.left -= len(data)
        return data

    def unfinished(self) -> str | None:
        """The first coding whose stream has not ended (the body was cut, or is not that coding)."""
        return next((name for name, stage in zip(self.names, self.stages) if not stage.finished), None)


def decode(data: bytes, content_encoding: str | None, limit: int = MAX_DECODED_BYTES) -> Decoded:
    """The whole body decoded for the log; on any failure the body as it came, and why."""
    if not codings(content_encoding):
        return Decoded(data)
    try:
        decoder = StreamDecoder(content_encoding, limit)
        out = decoder.feed(data)
    except DecodeError as exc:
        return Decoded(data, error=str(exc))
    if decoder.truncated:
        return Decoded(out, truncated=True)
    unfinished = decoder.unfinished()
    if unfinished and not out:
        return Decoded(data, error=f"{unfinished}: not a complete {unfinished} stream")
    if unfinished:  # cut on the way (an upstream that broke off): as far as it decodes
        return Decoded(out, error=f"{unfinished}: the body ends mid-stream")
    return Decoded(out)
