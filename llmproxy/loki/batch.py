"""A Loki push in the making: entries grouped into streams by label set, encoded as they come.

Each value is JSON-encoded when it is added (in the pusher thread), one short call at a time, so
building a large push never holds the GIL for long against the request threads.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field, replace

Labels = tuple[tuple[str, str], ...]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LokiEntry:
    """One line for Loki. Timestamp and line are fixed when the entry is made, so a resend is an
    exact duplicate that Loki can drop. ``metadata`` is Loki 3's structured metadata: sent as the
    value's third element, queryable without parsing the line, never a label."""

    ts_ns: int
    line: bytes
    labels: Labels
    metadata: Metadata = ()
    # The worker's ledger ticket (llmproxy/loki/ledger.py): settled once Loki or the spool has it.
    ticket: int | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.line)

    def without_metadata(self) -> "LokiEntry":
        return replace(self, metadata=()) if self.metadata else self


# A raw control character needs a JSON escape sequence; JSON text (our lines) never has one.
_CONTROL = bytes(range(0x20))


def encode_value(entry: LokiEntry) -> bytes:
    """``["<unix ns>","<line>"]``, or ``["<unix ns>","<line>",{metadata}]``: Loki wants the
    timestamp as a string.

    Lines are JSON text already (valid UTF-8, control characters escaped), so quoting them only
    needs ``\\`` and ``"`` escaped: several times faster than ``json.dumps`` on a 10 KB line,
    and this is the pusher's main cost."""
    line = entry.line
    try:
        line.decode("utf-8")
        plain = len(line.translate(None, _CONTROL)) == len(line)  # C speed, unlike a regex
    except UnicodeDecodeError:
        plain = False
    if plain:
        quoted = b'"' + line.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    else:
        quoted = json.dumps(line.decode("utf-8", "replace"), ensure_ascii=False).encode()
    if entry.metadata:
        metadata = json.dumps(dict(entry.metadata), ensure_ascii=False, separators=(",", ":")).encode()
        return b'["%d",%s,%s]' % (entry.ts_ns, quoted, metadata)
    return b'["%d",%s]' % (entry.ts_ns, quoted)


def _ts(value: tuple[int, bytes]) -> int:
    return value[0]


@dataclass
class Batch:
    """Entries waiting to be pushed together."""

    entries: list[LokiEntry] = field(default_factory=list)
    values: dict[Labels, list[tuple[int, bytes]]] = field(default_factory=dict)
    bytes: int = 0
    created: float = 0.0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: LokiEntry) -> None:
        if not self.entries:
            self.created = time.monotonic()
        self.entries.append(entry)
        self.values.setdefault(entry.labels, []).append((entry.ts_ns, encode_value(entry)))
        self.bytes += entry.size

    @property
    def has_metadata(self) -> bool:
        return any(e.metadata for e in self.entries)

    def age(self, now: float | None = None) -> float:
        return ((now or time.monotonic()) - self.created) if self.entries else 0.0

    def encode(self) -> bytes:
        """The JSON push body; values sorted by timestamp within each stream."""
        parts = [b'{"streams":[']
        for i, (labels, values) in enumerate(self.values.items()):
            values.sort(key=_ts)
            parts.append(b'%s{"stream":%s,"values":[' % (b"," if i else b"", json.dumps(
                dict(labels), ensure_ascii=False, separators=(",", ":")).encode()))
            parts.append(b",".join([v for _, v in values]))
            parts.append(b"]}")
        parts.append(b"]}")
        return b"".join(parts)

    def split(self) -> tuple["Batch", "Batch"]:
        """Two halves, for a push too large for Loki or a gateway in front of it."""
        half = len(self.entries) // 2
        return batch_of(self.entries[:half]), batch_of(self.entries[half:])


def batch_of(entries: list[LokiEntry]) -> Batch:
    batch = Batch()
    for entry in entries:
        batch.add(entry)
    return batch


def compress(body: bytes) -> bytes:
    # Level 1: most of gzip's saving on JSON at a fraction of the CPU (zlib releases the GIL).
    return gzip.compress(body, compresslevel=1, mtime=0)
