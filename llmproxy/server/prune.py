"""``llm-proxy prune``: compress old session files in place, delete expired ones.

Claude Code re-sends the whole conversation on every call, so consecutive lines of a session
file repeat each other by hundreds of kilobytes. zstd with a long window (128 MiB, long-distance
matching) finds those repeats; gzip's 32 KiB window cannot, which is why files become
``.jsonl.zst`` (docs/operations.rst, "Log retention", has the ratios). The window is within what
every zstd decoder accepts by default (``zstd -d``, ``zstdcat``, python-zstandard).

What is never touched:

- a file written within ``LLM_PROXY_LOG_COMPRESS_AFTER`` (or, for deletion, within
  ``LLM_PROXY_LOG_RETENTION``): a session can last past midnight, and a resumed one is appended
  to the file of the day it started;
- with Loki enabled, a file whose entries may still wait in the spool (a spooled entry as old as
  the file's last write, or an unreadable ``.bad`` spool file): deleting it would lose the only
  copy that ``loki-backfill`` could push again.

How a file is compressed without losing or doubling a line (llmproxy/record/logtree.py, filelog.py):
the plain file is renamed aside (``.{session}.jsonl.{N}.pruning``, N the ``.zst``'s size), so a
new line starts a fresh plain file; prune then takes the file's exclusive ``flock`` once, which
waits for any writer that opened it before the rename (each writes one line under a shared lock,
and checks the path still names its file). The aside file is final from then on: streamed
through zstd into a temp file after the old ``.zst``'s bytes, fsync'ed, decompressed and compared
with the old ``.zst`` plus the aside file, renamed over the ``.zst``, and only then removed.
Readers count the aside file in until the ``.zst`` has grown past N. A run interrupted anywhere
is finished by the next one.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from llmproxy.loki.spool import Spool
from llmproxy.record.logtree import (
    COMPRESSED,
    READ_SIZE,
    SessionFiles,
    aside_name,
    chunks,
    day_dirs,
    sessions_in,
    stream,
)
from llmproxy.settings import Settings

DAY_SECONDS = 86400
ZSTD_LEVEL = 9
ZSTD_WINDOW_LOG = 27  # 128 MiB: zstd's default decoder limit


def compressor():
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True)
    return zstandard.ZstdCompressor(compression_params=params)


@dataclass
class Report:
    compressed: int = 0
    deleted: int = 0
    kept: int = 0
    freed: int = 0
    errors: int = 0


def day_age(day: str, now: float) -> float:
    """Seconds since the end of a ``YYYY-MM-DD`` day (UTC)."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    return now - (start + DAY_SECONDS)


class Pruner:
    def __init__(self, settings: Settings, dry_run: bool, out: TextIO, now: float | None = None):
        self.log_dir = settings.log_dir
        self.compress_after = settings.log_compress_after
        self.retention = settings.log_retention
        self.spool = Spool(settings.loki.spool_dir, 0) if settings.loki.enabled and settings.loki.spool_dir else None
        self.dry_run = dry_run
        self.out = out
        self.now = time.time() if now is None else now
        self.report = Report()

    def say(self, files: SessionFiles, what: str) -> None:
        verb = f"would {what}" if self.dry_run else what
        print(f"{files.upstream}/{files.day}/{files.session}: {verb}", file=self.out)

    def run(self) -> Report:
        oldest_spooled = self._oldest_spooled_ns()
        for upstream, day, directory in day_dirs(self.log_dir):
            age = day_age(day, self.now)
            expired = self.retention is not None and age >= self.retention
            if not expired and age < self.compress_after:
                continue
            for files in sessions_in(upstream, day, directory):
                try:
                    if expired:
                        self._delete(files, oldest_spooled)
                    elif files.plain is not None or files.aside is not None:
                        self._compress(files)
                except (OSError, ValueError) as exc:  # ValueError: an unreadable .zst, left alone
                    self.report.errors += 1
                    print(f"{files.upstream}/{files.day}/{files.session}: failed, left as it was: {exc}",
                          file=self.out)
            if expired and not self.dry_run:
                try:
                    directory.rmdir()
                except OSError:  # something was kept
                    pass
        return self.report

    def _last_write(self, files: SessionFiles) -> tuple[float, int]:
        stats = [p.stat() for p in files.paths]
        return max(s.st_mtime for s in stats), max(s.st_mtime_ns for s in stats)

    def _oldest_spooled_ns(self) -> int | None:
        """The oldest entry waiting in the Loki spool; 0 when an unreadable spool file is kept."""
        if self.spool is None:
            return None
        if any(self.spool.directory.glob("*.bad")):
            return 0
        files = self.spool.files()
        return files[0].oldest_ns if files else None

    def _delete(self, files: SessionFiles, oldest_spooled: int | None) -> None:
        mtime, mtime_ns = self._last_write(files)
        if self.now - mtime < self.retention:
            self.report.kept += 1
            self.say(files, f"keep: written {_ago(self.now - mtime)} ago")
            return
        if oldest_spooled is not None and oldest_spooled <= mtime_ns:
            self.report.kept += 1
            self.say(files, "keep: its entries may still wait in the Loki spool")
            return
        size = sum(p.stat().st_size for p in files.paths)
        self.say(files, f"delete ({_size(size)})")
        if not self.dry_run:
            for path in files.paths:
                path.unlink()
        self.report.deleted += 1
        self.report.freed += size

    def _compress(self, files: SessionFiles) -> None:
        target = files.paths[0].with_name(files.session + COMPRESSED)
        if files.aside is not None:  # an earlier run was interrupted: finish it first
            self.say(files, "finish the compression an earlier run began")
            if not self.dry_run:
                size, compressed = self._absorb(files.aside, files.aside_base, target)
                self.report.compressed += 1
                self.report.freed += size - compressed
        plain = files.plain
        if plain is None:
            return
        before = plain.stat()
        if self.now - before.st_mtime < self.compress_after:
            self.report.kept += 1
            self.say(files, f"keep uncompressed: written {_ago(self.now - before.st_mtime)} ago")
            return
        base = target.stat().st_size if target.exists() else 0
        if base:  # an unreadable .zst is reported and left as it is, the plain file beside it
            with open(target, "rb") as old:
                for _ in chunks(stream(old)):
                    pass
        if self.dry_run:
            with open(plain, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                compressed = _Count()
                _compress_into(f, size, compressed)
                compressed = compressed.n
            self.say(files, f"compress {_size(size)} → {_size(compressed)}"
                     + (" (appended to the .zst)" if base else ""))
            self.report.compressed += 1
            self.report.freed += size - compressed
            return
        aside = plain.with_name(aside_name(files.session, base))
        os.rename(plain, aside)
        self._fsync_dir(plain.parent)
        size, compressed = self._absorb(aside, base, target)
        self.say(files, f"compress {_size(size)} → {_size(compressed)}"
                 + (" (appended to the .zst)" if base else ""))
        self.report.compressed += 1
        self.report.freed += size - compressed

    def _absorb(self, aside: Path, base: int, target: Path) -> tuple[int, int]:
        """Append the aside file to ``target`` as one more zstd frame, then remove it; its size
        and the frame's."""
        current = target.stat().st_size if target.exists() else 0
        if current != base:  # renamed into place before an interruption: only the removal is left
            size = aside.stat().st_size
            aside.unlink()
            self._fsync_dir(aside.parent)
            return size, current - base
        with open(aside, "rb") as source:
            # Wait for the writers that opened the file before it was renamed (one line each);
            # any later one finds the path names another file and writes there.
            fcntl.flock(source.fileno(), fcntl.LOCK_EX)
            fcntl.flock(source.fileno(), fcntl.LOCK_UN)
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
                    if base:
                        with open(target, "rb") as old:
                            for chunk in iter(lambda: old.read(READ_SIZE), b""):
                                out.write(chunk)
                    size = os.fstat(source.fileno()).st_size
                    _compress_into(source, size, out)
                    out.flush()
                    os.fsync(out.fileno())
                    frame = out.tell() - base
                source.seek(0)
                with open(tmp, "rb") as written, open(target, "rb") if base else nullcontext() as old:
                    expected = itertools.chain(chunks(stream(old)) if old else (), chunks(source))
                    if not _same(chunks(stream(written)), expected):
                        raise OSError(f"{target}: compressed copy does not read back identically; original kept")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, target)
        self._fsync_dir(target.parent)
        aside.unlink()
        self._fsync_dir(target.parent)
        return size, frame

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _compress_into(source: BinaryIO, size: int, out) -> None:
    """``source`` (``size`` bytes) as one zstd frame written to ``out``, streamed. The size goes
    in the frame header, so a decoder needs a window no larger than the file."""
    with compressor().stream_writer(out, size=size, closefd=False) as writer:
        for chunk in iter(lambda: source.read(READ_SIZE), b""):
            writer.write(chunk)


class _Count:
    """A writer that only counts."""

    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)


def _same(a: Iterator[bytes], b: Iterator[bytes]) -> bool:
    """Whether two streams of chunks hold the same bytes."""
    left = right = b""
    while True:
        if not left:
            left = next(a, b"")
        if not right:
            right = next(b, b"")
        if not left or not right:
            return not left and not right
        n = min(len(left), len(right))
        if left[:n] != right[:n]:
            return False
        left, right = left[n:], right[n:]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_SECONDS:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_SECONDS:.1f} days"


def run(settings: Settings, dry_run: bool = False, out: TextIO = sys.stdout) -> int:
    """Exit status 0, or 1 when a file could not be handled (it is left as it was)."""
    if not settings.log_dir.is_dir():
        print(f"prune: {settings.log_dir} does not exist: nothing to do", file=out)
        return 0
    report = Pruner(settings, dry_run, out).run()
    verb = "would free" if dry_run else "freed"
    print(f"prune: {report.compressed} compressed, {report.deleted} deleted, {report.kept} kept, "
          f"{report.errors} failed; {verb} {report.freed} bytes ({_size(report.freed)})", file=out)
    return 1 if report.errors else 0

