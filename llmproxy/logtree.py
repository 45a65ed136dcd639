"""The JSONL tree on disk, as readers see it: plain and compressed session files alike.

``{log_dir}/{upstream}/{YYYY-MM-DD}/{session}.jsonl`` is what the proxy appends to. ``llm-proxy
prune`` compresses old ones in place to ``{session}.jsonl.zst``; a session resumed after that
(sessions.db still points at it) gets a fresh plain ``.jsonl`` beside it, which the next prune
appends to the ``.zst`` as one more zstd frame. So a session is its ``.zst`` (all frames, in
order) followed by its plain file; every reader goes through :func:`read_session`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PLAIN = ".jsonl"
COMPRESSED = ".jsonl.zst"
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
READ_SIZE = 1 << 16


@dataclass(frozen=True)
class SessionFiles:
    """The file(s) of one session: compressed part first, then the part still appended to."""

    upstream: str
    day: str
    session: str
    compressed: Path | None
    plain: Path | None

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.compressed, self.plain) if p is not None]


def _session_name(name: str) -> str | None:
    for suffix in (COMPRESSED, PLAIN):
        if name.endswith(suffix) and not name.startswith("."):
            return name[: -len(suffix)]
    return None


def day_dirs(log_dir: Path) -> Iterator[tuple[str, str, Path]]:
    """``(upstream, day, directory)`` for every day directory, sorted."""
    try:
        hosts = sorted(p for p in log_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return
    for host in hosts:
        for day in sorted(p for p in host.iterdir() if p.is_dir() and DAY.fullmatch(p.name)):
            yield host.name, day.name, day


def sessions_in(upstream: str, day: str, directory: Path) -> list[SessionFiles]:
    found: dict[str, dict[str, Path]] = {}
    for path in directory.iterdir():
        session = _session_name(path.name)
        if session is not None:
            found.setdefault(session, {})[COMPRESSED if path.name.endswith(COMPRESSED) else PLAIN] = path
    return [SessionFiles(upstream, day, s, f.get(COMPRESSED), f.get(PLAIN)) for s, f in sorted(found.items())]


def sessions(log_dir: Path) -> Iterator[SessionFiles]:
    """Every session of the tree, by upstream, day and session id."""
    for upstream, day, directory in day_dirs(log_dir):
        yield from sessions_in(upstream, day, directory)


def decompress(data: bytes) -> bytes:
    """All zstd frames of ``data``, concatenated."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    try:
        return reader.read()
    except zstandard.ZstdError as exc:
        raise ValueError(f"not readable as zstd: {exc}") from None


def read_session(files: SessionFiles) -> bytes:
    """The session's JSONL bytes, as if it had never been compressed."""
    data = b""
    if files.compressed is not None:
        data = decompress(files.compressed.read_bytes())
    if files.plain is not None:
        try:
            data += files.plain.read_bytes()
        except FileNotFoundError:  # compressed by prune since it was listed
            if files.compressed is None:
                raise
            data = decompress(files.compressed.read_bytes())
    return data


def first_line(files: SessionFiles) -> bytes:
    """The session's first line (its ``session_start``), decompressing no more than it takes."""
    import zstandard

    if files.compressed is not None:
        with open(files.compressed, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            head = bytearray()
            try:
                while b"\n" not in head and (chunk := reader.read(READ_SIZE)):
                    head += chunk
            except zstandard.ZstdError as exc:
                raise ValueError(f"{files.compressed}: not readable as zstd: {exc}") from None
            if head:
                return bytes(head.split(b"\n", 1)[0])
    if files.plain is not None:
        try:
            with open(files.plain, "rb") as f:
                return f.readline().rstrip(b"\n")
        except FileNotFoundError:  # compressed by prune since it was listed
            return first_line(SessionFiles(files.upstream, files.day, files.session,
                                           files.plain.with_name(files.session + COMPRESSED), None))
    return b""


def find_session(log_dir: Path, session: str) -> SessionFiles | None:
    """The files of one session id (its day is in the id: ``YYYYMMDD-…``)."""
    day = f"{session[0:4]}-{session[4:6]}-{session[6:8]}"
    for upstream, day_name, directory in day_dirs(log_dir):
        if day_name == day:
            for files in sessions_in(upstream, day_name, directory):
                if files.session == session:
                    return files
    return None
