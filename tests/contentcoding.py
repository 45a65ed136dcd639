"""Content-Encoding for the fakes and tests: a stack like ``gzip, br``, applied in that order.

A stream is encoded piece by piece, each piece flushed, the way a provider compresses an event
stream so the client sees every event at once.
"""

from __future__ import annotations

import zlib

import brotli
import zstandard


class _Zlib:
    def __init__(self, wbits: int):
        self.c = zlib.compressobj(6, zlib.DEFLATED, wbits)

    def piece(self, data: bytes) -> bytes:
        return self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return self.c.flush()


class _Brotli:
    def __init__(self):
        self.c = brotli.Compressor(quality=5)

    def piece(self, data: bytes) -> bytes:
        return self.c.process(data) + self.c.flush()

    def end(self) -> bytes:
        return self.c.finish()


class _Zstd:
    def __init__(self):
        self.c = zstandard.ZstdCompressor().compressobj()

    def piece(self, data: bytes) -> bytes:
        return self.c.compress(data) + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def end(self) -> bytes:
        return self.c.flush()


CODERS = {"gzip": lambda: _Zlib(31), "deflate": lambda: _Zlib(15), "deflate-raw": lambda: _Zlib(-15),
          "br": _Brotli, "zstd": _Zstd}


def header_value(codings: str) -> str:
    """The Content-Encoding header for a stack (``deflate-raw`` is sent as ``deflate``)."""
    return codings.replace("deflate-raw", "deflate")


class StreamEncoder:
    def __init__(self, codings: str):
        self.stages = [CODERS[c.strip()]() for c in codings.split(",")]

    def piece(self, data: bytes) -> bytes:
        for stage in self.stages:
            data = stage.piece(data)
        return data

    def end(self) -> bytes:
        data = b""
        for stage in self.stages:
            data = stage.piece(data) + stage.end() if data else stage.end()
        return data


def encode(data: bytes, codings: str) -> bytes:
    encoder = StreamEncoder(codings)
    return encoder.piece(data) + encoder.end()
