"""The disk spool: entries Loki has not taken yet, one batch per file, shared by all workers.

Files are written atomically (temp file, fsync, rename, fsync of the directory) and named
``{oldest entry ns}-{entries}-{pid}-{n}.jsonl`` so that a sorted listing is oldest first. A worker
claims a file by renaming it (``….claimed-{pid}``); a file claimed by a worker that died is
claimed again by the next. Only one worker replays at a time (an ``flock``), oldest file first:
Loki refuses an entry more than an hour older than the newest of its stream, and every worker of
a machine writes the same streams.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llmproxy.loki.batch import LokiEntry
from llmproxy.loki.stats import pid_alive

_NAME = re.compile(r"(\d{20})-(\d+)-(\d+)-(\d+)\.jsonl(?:\.claimed-(\d+))?")
_counter = itertools.count()


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    oldest_ns: int
    entries: int
    claimed_by: int | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def base(self) -> str:
        """The name without its claim: ``{oldest}-{entries}-{pid}-{n}.jsonl``."""
        return self.name.split(".claimed-")[0]

    @property
    def writer(self) -> int:
        """The pid of the worker that spooled it."""
        return int(self.base.split("-")[2])

    @property
    def holder(self) -> int:
        """The pid of the worker that has it in hand: its claimer, else the one that spooled it
        (a ``.tmp-`` file is written by its holder)."""
        return self.claimed_by if self.claimed_by is not None else self.writer


def _parse(path: Path) -> SpoolFile | None:
    match = _NAME.fullmatch(path.name)
    if not match:
        return None
    return SpoolFile(path, int(match.group(1)), int(match.group(2)),
                     int(match.group(5)) if match.group(5) else None)


def encode_entries(entries: list[LokiEntry]) -> bytes:
    """One JSON array a line: ``[ts, labels, line]``, plus ``metadata`` when the entry has some."""
    return b"".join(json.dumps([e.ts_ns, [list(p) for p in e.labels], e.line.decode("utf-8", "replace")]
                               + ([[list(p) for p in e.metadata]] if e.metadata else []),
                               ensure_ascii=False).encode() + b"\n" for e in entries)


def decode_entries(data: bytes) -> list[LokiEntry]:
    entries = []
    for raw in data.splitlines():
        if raw.strip():
            ts, labels, line, *metadata = json.loads(raw)
            entries.append(LokiEntry(ts, line.encode(), tuple(tuple(p) for p in labels),
                                     tuple(tuple(p) for p in metadata[0]) if metadata else ()))
    return entries


def _write_file(tmp: Path, data: bytes, target: Path) -> None:
    """``data`` into ``target`` atomically: a temporary file, fsync, rename. On failure (a full
    file system) no partial file is left taking room."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Spool:
    """A directory of spooled batches with a size bound."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock_fd: int | None = None

    def _ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def files(self) -> list[SpoolFile]:
        """All spool files, oldest first (claimed ones included)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = [f for f in (_parse(self.directory / n) for n in names) if f is not None]
        return sorted(found, key=lambda f: (f.oldest_ns, f.name))

    def pending(self) -> bool:
        """Whether anything is spooled: while it is, new batches queue up behind it."""
        return bool(self.files())

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) in the spool."""
        entries = size = 0
        for f in self.files():
            entries += f.entries
            try:
                size += f.path.stat().st_size
            except FileNotFoundError:
                continue
        return entries, size

    def write(self, entries: list[LokiEntry]) -> int:
        """Spool one batch; return how many older entries were dropped to stay under the bound."""
        if not entries:
            return 0
        self._ensure()
        data = encode_entries(entries)
        dropped = self._make_room(len(data))
        oldest = min(e.ts_ns for e in entries)
        name = f"{oldest:020d}-{len(entries)}-{os.getpid()}-{next(_counter)}.jsonl"
        tmp = self.directory / f".tmp-{name}"
        _write_file(tmp, data, self.directory / name)
        self._fsync_dir()
        return dropped

    def entries_of(self, pid: int) -> set[tuple[int, bytes]]:
        """``(ts_ns, line)`` of the entries in the files a worker spooled (replayed in time, so
        never to be pushed by anyone else), and remove the partial files it left."""
        found: set[tuple[int, bytes]] = set()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return found
        for name in names:
            if name.startswith(".tmp-") and (f := _parse(self.directory / name[5:])) and f.holder == pid:
                (self.directory / name).unlink(missing_ok=True)
        for f in self.files():
            if f.writer != pid:
                continue
            try:
                found.update((e.ts_ns, e.line) for e in decode_entries(f.path.read_bytes()))
            except (OSError, ValueError):
                continue
        return found

    def _make_room(self, incoming: int) -> int:
        files = [f for f in self.files() if f.claimed_by is None]
        total = 0
        sizes = {}
        for f in self.files():
            try:
                sizes[f.path] = f.path.stat().st_size
            except FileNotFoundError:
                sizes[f.path] = 0
            total += sizes[f.path]
        dropped = 0
        for f in files:  # oldest first
            if total + incoming <= self.max_bytes:
                break
            try:
                f.path.unlink()
            except FileNotFoundError:
                continue
            total -= sizes[f.path]
            dropped += f.entries
        return dropped

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- replay ---

    def try_lock(self) -> bool:
        """Become the one worker that replays (non-blocking)."""
        if self._lock_fd is not None:
            return True
        self._ensure()
        fd = os.open(self.directory / ".replay.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def claim_oldest(self) -> tuple[SpoolFile, list[LokiEntry], bool] | None:
        """Claim the oldest file not held by a live worker; None when there is none. The flag
        says the file was claimed by a worker that died: it may have pushed some of it."""
        me = os.getpid()
        for f in self.files():
            if f.claimed_by is not None and f.claimed_by != me and pid_alive(f.claimed_by):
                continue
            claimed = self.directory / f"{f.base}.claimed-{me}"
            try:
                os.replace(f.path, claimed)
            except FileNotFoundError:  # another worker was faster
                continue
            try:
                entries = decode_entries(claimed.read_bytes())
            except (OSError, ValueError):
                entries = None
            if entries is None:  # unreadable: keep it aside for a human, do not loop on it
                os.replace(claimed, self.directory / f"{f.base}.bad")
                continue
            return SpoolFile(claimed, f.oldest_ns, f.entries, me), entries, f.claimed_by is not None
        return None

    def release(self, f: SpoolFile) -> None:
        """Give a claimed file back (its push failed; it stays first in line)."""
        try:
            os.replace(f.path, self.directory / f.base)
        except FileNotFoundError:
            pass

    def keep(self, f: SpoolFile, entries: list[LokiEntry]) -> None:
        """Give a claimed file back with only ``entries`` in it (Loki took the others). The
        content is replaced atomically first, so a crash in between leaves no entry twice."""
        _write_file(self.directory / f".tmp-{f.name}", encode_entries(entries), f.path)
        _, _, pid, n = f.base.removesuffix(".jsonl").split("-")
        oldest = min(e.ts_ns for e in entries)
        try:
            os.replace(f.path, self.directory / f"{oldest:020d}-{len(entries)}-{pid}-{n}.jsonl")
        except FileNotFoundError:
            pass

    def done(self, f: SpoolFile) -> None:
        try:
            f.path.unlink()
        except FileNotFoundError:
            pass
