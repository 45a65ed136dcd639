"""``llm-proxy prune``: compress old session files in place, delete expired ones.

Claude Code re-sends the whole conversation on every call, so consecutive lines of a session
file repeat each other by hundreds of kilobytes. zstd with a long window (128 MiB, long-distance
matching) finds those repeats; gzip's 32 KiB window cannot, which is why files become
``.jsonl.zst`` (README.rst has the ratios). The window is within what every zstd decoder accepts
by default (``zstd -d``, ``zstdcat``, python-zstandard).

What is never touched:

- a file written within ``LLM_PROXY_LOG_COMPRESS_AFTER`` (or, for deletion, within
  ``LLM_PROXY_LOG_RETENTION``): a session can last past midnight, and a resumed one is appended
  to the file of the day it started;
- with Loki enabled, a file whose entries may still wait in the spool (a spooled entry as old as
  the file's last write, or an unreadable ``.bad`` spool file): deleting it would lose the only
  copy that ``loki-backfill`` could push again.

A compressed file is written beside the original (temp file, fsync), decompressed and compared
with what was read; only if the original has not changed meanwhile is the temp file renamed into
place and the original removed (the proxy writes a line in one ``writev``; after the quiet period
above a write landing in the microseconds between that check and the removal is not a practical
concern, and a write before the check leaves the file uncompressed until the next run).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from llmproxy.logtree import COMPRESSED, SessionFiles, day_dirs, decompress, sessions_in
from llmproxy.loki.spool import Spool
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
                    elif files.plain is not None:
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
        plain = files.plain
        fd = os.open(plain, os.O_RDONLY)
        try:
            before = os.fstat(fd)
            if self.now - before.st_mtime < self.compress_after:
                self.report.kept += 1
                self.say(files, f"keep uncompressed: written {_ago(self.now - before.st_mtime)} ago")
                return
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            if len(data) != before.st_size:
                raise OSError(f"{plain} changed while it was read")
            old = files.compressed.read_bytes() if files.compressed is not None else b""
            frame = compressor().compress(data)
            target = plain.with_name(files.session + COMPRESSED)
            freed = len(data) - len(frame)
            self.say(files, f"compress {_size(len(data))} → {_size(len(frame))}"
                     + (" (appended to the .zst)" if old else ""))
            if self.dry_run:
                self.report.compressed += 1
                self.report.freed += freed
                return
            expected = (decompress(old) if old else b"") + data
            tmp = self._write_verified(target, old + frame, expected)
            after = os.stat(plain)
            if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size,
                                                                    before.st_mtime_ns):
                tmp.unlink()
                self.report.kept += 1
                self.say(files, "keep uncompressed: written to during compression")
                return
            os.replace(tmp, target)
            plain.unlink()
            self._fsync_dir(plain.parent)
            self.report.compressed += 1
            self.report.freed += freed
        finally:
            os.close(fd)

    def _write_verified(self, target: Path, data: bytes, expected: bytes) -> Path:
        """A temp file beside ``target`` holding ``data``, on disk and known to decompress to
        ``expected``."""
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o600)
        if decompress(tmp.read_bytes()) != expected:
            tmp.unlink()
            raise OSError(f"{target}: compressed copy does not read back identically; original kept")
        return tmp

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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

