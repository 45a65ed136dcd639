"""What a session's files gained since a reader last looked: the new whole lines, and a
:class:`Mark` of how far it has now read, for readers that keep up with the tree (the catalog).

A session is its ``.zst`` (frames), then its plain part(s) (record/logtree.py has the protocol
prune follows). The mark remembers the ``.zst``'s size, which always ends a frame, and how much
of each plain file after it was read, by file identity. When prune moves a plain file into the
``.zst``, it appends exactly that file as one new frame: the first new frames are the files the
mark lists, in order, so a frame already read whole is stepped over by its header (never
decompressed) and one read in part is decompressed once, its known beginning dropped. Old
frames are never read again.

A mark that does not fit the files any more (the ``.zst`` shrank, a file the mark lists is gone
though no frame took it: a session edited by hand) raises :class:`Reread`; the reader then
forgets the session and reads it from the start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from llmproxy.record.logtree import SessionFiles, _consistent, _Opened

CHUNK = 1 << 20
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE = range(0x184D2A50, 0x184D2A60)


class Reread(Exception):
    """The mark does not fit the session's files: read the session again from its start."""


@dataclass(frozen=True)
class Part:
    """A plain file read after the ``.zst``: its identity (``dev:inode``) and the bytes read."""

    identity: str
    read: int


@dataclass(frozen=True)
class Mark:
    """How far a session was read: the ``.zst`` through ``compressed`` bytes, then ``parts``."""

    compressed: int = 0
    parts: tuple[Part, ...] = ()

    def dumps(self) -> str:
        return json.dumps([self.compressed, [[p.identity, p.read] for p in self.parts]])

    @classmethod
    def loads(cls, text: str | None) -> "Mark":
        if not text:
            return cls()
        compressed, parts = json.loads(text)
        return cls(compressed, tuple(Part(identity, read) for identity, read in parts))


def seen(files: SessionFiles) -> str:
    """The session's files as ``stat`` sees them (sizes and identities): equal to an earlier
    answer, nothing can be new. Raises OSError when a file went away meanwhile."""
    out = []
    for path in (files.compressed, files.aside, files.plain):
        if path is None:
            out.append("-")
        else:
            st = os.stat(path)
            out.append(f"{st.st_dev}:{st.st_ino}:{st.st_size}")
    return " ".join(out)


@dataclass(frozen=True)
class Frame:
    offset: int
    length: int
    content_size: int | None  # None: the frame header does not say


def frames(f: BinaryIO, start: int, end: int) -> Iterator[Frame]:
    """The zstd frames between ``start`` and ``end`` (RFC 8878), found from their headers and
    block headers, without decompressing. Skippable frames are left out."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(18)
        magic = int.from_bytes(head[:4], "little")
        if magic in SKIPPABLE:
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != ZSTD_MAGIC or len(head) < 6:
            raise ValueError(f"no zstd frame at byte {pos}")
        descriptor = head[4]
        single, checksum = descriptor >> 5 & 1, descriptor >> 2 & 1
        at = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
        size_bytes = (single, 2, 4, 8)[descriptor >> 6]
        content = int.from_bytes(head[at:at + size_bytes], "little") + (256 if size_bytes == 2 else 0) \
            if size_bytes else None
        block = pos + at + size_bytes
        while True:
            f.seek(block)
            header = int.from_bytes(f.read(3), "little")
            block += 3 + (1 if header >> 1 & 3 == 1 else header >> 3)  # an RLE block holds one byte
            if header & 1 or block >= end:
                break
        block += 4 * checksum
        yield Frame(pos, block - pos, content)
        pos = block


def _identity(f: BinaryIO) -> str:
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


class _Lines:
    """Whole lines out of chunks, to ``on_line``; counts the bytes of the lines handed on."""

    def __init__(self, on_line: Callable[[bytes], None]):
        self.on_line = on_line
        self.pending: list[bytes] = []
        self.done = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if self.pending:
                self.pending.append(chunk[start:newline])
                line = b"".join(self.pending)
                self.pending = []
            else:
                line = chunk[start:newline]
            self.done += len(line) + 1
            self.on_line(line)
            start = newline + 1
        if start < len(chunk):
            self.pending.append(chunk[start:])


def _feed(read: Callable[[int], bytes], skip: int, on_line: Callable[[bytes], None]) -> int:
    """Lines from ``read`` after its first ``skip`` bytes; the bytes consumed, ``skip``
    included, up to the last newline (a last line without one is still being written)."""
    while skip:
        dropped = read(min(skip, CHUNK))
        if not dropped:
            raise Reread("a frame holds less than was read of its file")
        skip -= len(dropped)
    lines = _Lines(on_line)
    while chunk := read(CHUNK):
        lines.feed(chunk)
    return lines.done


def read_new(files: SessionFiles, mark: Mark, on_line: Callable[[bytes], None]) -> Mark:
    """Hand every whole line of the session after ``mark`` to ``on_line``, in order, and return
    the mark after them. Reads one consistent view of the files (opened again while prune moves
    them). Raises :class:`Reread`, or ValueError for a ``.zst`` that is not readable; lines
    handed on before that count for nothing."""
    def read(opened: _Opened) -> Mark:
        compressed = opened.compressed
        size = os.fstat(compressed.fileno()).st_size if compressed is not None else 0
        if size < mark.compressed:
            raise Reread("the .zst is smaller than when it was read")
        listed = list(mark.parts)
        if size > mark.compressed:
            new = list(frames(compressed, mark.compressed, size))
            for i, frame in enumerate(new):
                done = listed[i].read if i < len(listed) else 0
                if frame.content_size is not None and done == frame.content_size:
                    continue  # read whole while it was a plain file
                compressed.seek(frame.offset)
                _feed(stream_frame(compressed).read, done, on_line)
            listed = listed[len(new):]
        parts = []
        for i, f in enumerate(opened.parts):
            identity = _identity(f)
            done = 0
            if i < len(listed):
                done = listed[i].read
                if listed[i].identity != identity or os.fstat(f.fileno()).st_size < done:
                    raise Reread("a plain file it read is gone (not into the .zst) or shorter")
            f.seek(done)
            parts.append(Part(identity, done + _feed(f.read, 0, on_line)))
        if len(listed) > len(opened.parts):
            raise Reread("a plain file it read is gone, and not into the .zst")
        return Mark(size, tuple(parts))

    import zstandard

    try:
        return _consistent(files, read)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not readable as zstd: {exc}") from None


def stream_frame(f: BinaryIO):
    """A reader of the one zstd frame that starts where ``f`` is."""
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=False, closefd=False)


__all__ = ["Mark", "Part", "Reread", "frames", "read_new", "seen"]
