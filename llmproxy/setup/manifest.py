"""The record of what ``setup`` changed, kept for ``uninstall``: ``~/.config/llm-proxy/installed.json``.

It is written after every single change, so that a ``setup`` that stopped half-way still left a
record of what it did. One record per thing, by ``kind``:

- ``file``: a file setup created and owns (``digest`` of what it wrote; ``line``, for the
  settings file, the setting it holds);
- ``dir``: a directory setup created (removed again only when empty);
- ``block``: the marked block in an rc file (``created``: the file did not exist before);
- ``line``: a setting added to a settings file the user already had;
- ``toml``: keys set in Codex's config.toml, with the text before and the digest after;
- ``service``: a service enabled and started (``manager``, ``name``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

VERSION = 1


class Manifest:
    def __init__(self, path: Path, records: list[dict] | None = None):
        self.path = Path(path)
        self.records: list[dict] = records or []

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """The record on disk; an empty one when there is none or it cannot be read."""
        try:
            doc = json.loads(Path(path).read_text())
            records = doc["records"] if isinstance(doc, dict) and doc.get("version") == VERSION else []
        except (OSError, ValueError, KeyError):
            records = []
        return cls(path, [r for r in records if isinstance(r, dict) and "kind" in r])

    def find(self, kind: str, path: Path | str | None = None) -> dict | None:
        for record in self.records:
            if record["kind"] == kind and (path is None or record.get("path") == str(path)):
                return record
        return None

    def all(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind]

    def put(self, record: dict) -> None:
        """Add a record, or replace the one of the same kind and path (or name), and save."""
        key = (record["kind"], record.get("path"), record.get("name"))
        self.records = [r for r in self.records if (r["kind"], r.get("path"), r.get("name")) != key]
        self.records.append(record)
        self.save()

    def drop(self, record: dict) -> None:
        self.records = [r for r in self.records if r is not record]
        self.save()

    def save(self) -> None:
        if not self.records:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        # It holds config.toml as it was, which may name a token: this user's eyes only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": VERSION, "records": self.records}, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.path)
