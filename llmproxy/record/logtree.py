"""The JSONL tree on disk, as readers see it: plain and compressed session files alike.

``{log_dir}/{upstream}/{YYYY-MM-DD}/{session}.jsonl`` is what the proxy appends to. ``llm-proxy
prune`` compresses old ones in place to ``{session}.jsonl.zst``; a session resumed after that
(sessions.db still points at it) gets a fresh plain ``.jsonl`` beside it, which the next prune
appends to the ``.zst`` as one more zstd frame. So a session is its ``.zst`` (all frames, in
order) followed by its plain file; every reader goes through :func:`read_session`.

While prune works, the plain file is set aside as ``.{session}.jsonl.{N}.pruning``, where N is
the size of the ``.zst`` before (0: none); a new line then starts a fresh plain file. The aside
file belongs to the session until a ``.zst`` larger than N holds it: prune replaces the ``.zst``
(one atomic rename) and only then removes the aside file, so a reader that finds both skips it.
A reader opens every file it listed and lists again; if a file changed place meanwhile it
starts over, so it never sees a line twice or misses one.
"""

from __future__ import annotations

import io
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

PLAIN = ".jsonl"
COMPRESSED = ".jsonl.zst"
ASIDE = re.compile(r"\.(?P<session>.+)\.jsonl\.(?P<base>\d+)\.pruning")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
READ_SIZE = 1 << 16
ATTEMPTS = 100  # a prune moves each file a few times, microseconds apart


@dataclass(frozen=True)
class SessionFiles:
    """The file(s) of one session: compressed part first, then the part still appended to."""

    upstream: str
    day: str
    session: str
    compressed: Path | None
    plain: Path | None
    aside: Path | None = None  # the plain file while prune compresses it

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.compressed, self.aside, self.plain) if p is not None]

    @property
    def aside_base(self) -> int:
        """The ``.zst`` size the aside file was set aside at."""
        return int(ASIDE.fullmatch(self.aside.name)["base"])


def aside_name(session: str, base: int) -> str:
    return f".{session}{PLAIN}.{base}.pruning"


def _session_name(name: str) -> tuple[str, str] | None:
    """``(session, kind)``, kind being ``compressed``, ``plain`` or ``aside``."""
    if name.startswith("."):
        match = ASIDE.fullmatch(name)
        return (match["session"], "aside") if match else None
    if name.endswith(COMPRESSED):
        return name[: -len(COMPRESSED)], "compressed"
    if name.endswith(PLAIN):
        return name[: -len(PLAIN)], "plain"
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
        named = _session_name(path.name)
        if named is not None:
            found.setdefault(named[0], {})[named[1]] = path
    return [SessionFiles(upstream, day, s, f.get("compressed"), f.get("plain"), f.get("aside"))
            for s, f in sorted(found.items())]


def sessions(log_dir: Path) -> Iterator[SessionFiles]:
    """Every session of the tree, by upstream, day and session id."""
    for upstream, day, directory in day_dirs(log_dir):
        yield from sessions_in(upstream, day, directory)


def _relisted(files: SessionFiles, directory: Path) -> SessionFiles:
    for again in sessions_in(files.upstream, files.day, directory):
        if again.session == files.session:
            return again
    return SessionFiles(files.upstream, files.day, files.session, None, None)


def _identity(f: BinaryIO | None) -> tuple[int, int] | None:
    if f is None:
        return None
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino


def _identity_of(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    st = os.stat(path)
    return st.st_dev, st.st_ino


class _Opened:
    """The files of a session as they were at one moment: ``compressed``, then ``parts`` (the
    aside file unless the ``.zst`` already holds it, then the plain file)."""

    def __init__(self, files: SessionFiles, stack: ExitStack):
        self.files = files
        self.compressed, aside, plain = (stack.enter_context(open(p, "rb")) if p is not None else None
                                         for p in (files.compressed, files.aside, files.plain))
        self._identities = [_identity(f) for f in (self.compressed, aside, plain)]
        if aside is not None and self.compressed is not None and \
                os.fstat(self.compressed.fileno()).st_size > files.aside_base:
            aside = None  # already in the .zst; prune removes it next
        self.parts = [f for f in (aside, plain) if f is not None]

    def unchanged(self, directory: Path) -> bool:
        """Whether the files opened are still the session's files, each where it was."""
        try:
            again = _relisted(self.files, directory)
            return again == self.files and self._identities == [
                _identity_of(p) for p in (again.compressed, again.aside, again.plain)]
        except FileNotFoundError:
            return False


def _consistent(files: SessionFiles, read):
    """``read(opened)`` on one moment's view of the session's files, tried again while prune
    moves them."""
    directory = files.paths[0].parent
    for _ in range(ATTEMPTS):
        with ExitStack() as stack:
            try:
                opened = _Opened(files, stack)
            except FileNotFoundError:
                opened = None
            if opened is not None and opened.unchanged(directory):
                return read(opened)
        files = _relisted(files, directory)
    raise OSError(f"{files.session}: its files kept changing while read")


def stream(f: BinaryIO) -> BinaryIO:
    """A reader of all zstd frames in ``f``, decompressed."""
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)


def chunks(f: BinaryIO) -> Iterator[bytes]:
    import zstandard

    try:
        while chunk := f.read(READ_SIZE):
            yield chunk
    except zstandard.ZstdError as exc:
        raise ValueError(f"not readable as zstd: {exc}") from None


def decompress(data: bytes) -> bytes:
    """All zstd frames of ``data``, concatenated."""
    return b"".join(chunks(stream(io.BytesIO(data))))


def read_session(files: SessionFiles) -> bytes:
    """The session's JSONL bytes, as if it had never been compressed."""
    def read(opened: _Opened) -> bytes:
        data = b"".join(chunks(stream(opened.compressed))) if opened.compressed else b""
        return data + b"".join(_whole_lines(f.read()) for f in opened.parts)

    return _consistent(files, read)


def _whole_lines(data: bytes) -> bytes:
    """A plain file up to its last newline: a line without one is still being written (one
    ``write`` per line, which a reader may catch half-way)."""
    return data[:data.rfind(b"\n") + 1]


def first_line(files: SessionFiles) -> bytes:
    """The session's first line (its ``session_start``), decompressing no more than it takes."""
    def read(opened: _Opened) -> bytes:
        if opened.compressed is not None:
            head = bytearray()
            for chunk in chunks(stream(opened.compressed)):
                head += chunk
                if b"\n" in chunk:
                    break
            if head:
                return bytes(head.split(b"\n", 1)[0])
        for f in opened.parts:
            if line := f.readline():
                return line.rstrip(b"\n")
        return b""

    return _consistent(files, read)


def find_session(log_dir: Path, session: str) -> SessionFiles | None:
    """The files of one session id (its day is in the id: ``YYYYMMDD-…``)."""
    day = f"{session[0:4]}-{session[4:6]}-{session[6:8]}"
    if not DAY.fullmatch(day):
        return None
    try:
        hosts = sorted(p for p in log_dir.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return None
    for host in hosts:  # that day's directory of each upstream, not every day of the tree
        if (host / day).is_dir():
            for files in sessions_in(host.name, day, host / day):
                if files.session == session:
                    return files
    return None
