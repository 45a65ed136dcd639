"""Entry lines as the catalog reads them: what a call's row needs, without parsing the megabytes
of history each request of a long session carries.

A request line is ``{"type":"request","seq":N,"method",…,"model",…,"headers":{…},"body":…,
"size":N,…,"_meta":{…}}`` (record/entries.py writes it in that order): its head (up to the
headers), its headers and its tail (from ``size``) are parsed, its body is not. A JSON string
escapes every quote, so ``,"headers":`` and ``,"size":`` cannot occur inside the body. A line of
another shape (an older writer) is parsed whole.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

from llmproxy import pricing

_HEAD = re.compile(rb'\{"type":"([a-z_]+)"(?:,"seq":(\d+))?[,}]')
_HEADERS = b',"headers":'
_SIZE = b',"size":'
HEADERS_READ = 1 << 16  # a request's headers are a few KB; beyond this the line is parsed whole
_decoder = json.JSONDecoder()


@dataclass
class Entry:
    """One entry of a session file, as indexers get it. ``doc`` parses ``line`` on first use."""

    session: str
    upstream: str
    day: str
    kind: str
    seq: int | None
    line: bytes
    _doc: Any = field(default=None, repr=False)

    @property
    def doc(self) -> dict:
        if self._doc is None:
            self._doc = parse(self.line) or {}
        return self._doc


def parse(line: bytes) -> dict | None:
    """The line as a JSON object, or None."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def kind_of(data: bytes, start: int = 0, end: int | None = None) -> tuple[str, int | None, dict | None] | None:
    """(type, seq, the parsed line if it had to be parsed) of the entry line ``data[start:end]``
    (read in place: a request line is megabytes); None for a line that is not an entry. A
    request or response whose ``seq`` is not right after its ``type`` (another writer's order)
    is parsed whole to find it."""
    end = len(data) if end is None else end
    head = _HEAD.match(data, start, end)
    if head and data.endswith(b"}", start, end) and (head[2] or head[1] not in (b"request", b"response")):
        return head[1].decode(), int(head[2]) if head[2] else None, None
    doc = parse(data[start:end])
    if doc is None or not isinstance(doc.get("type"), str):
        return None
    seq = doc.get("seq")
    return doc["type"], seq if isinstance(seq, int) else None, doc


def request_parts(line: bytes) -> dict | None:
    """A request line's fields but its body: the head fields, ``headers``, ``size`` and the
    rest that follows it (``_meta``). None when the line is not a JSON object."""
    at = line.find(_HEADERS)
    end = line.rfind(_SIZE)
    if 0 < at < end:
        try:
            head = json.loads(line[:at] + b"}")
            headers, _ = _decoder.raw_decode(line[at + len(_HEADERS):at + len(_HEADERS) + HEADERS_READ]
                                             .decode("utf-8", "ignore"))
            tail = json.loads(b"{" + line[end + 1:])
            if isinstance(head, dict) and isinstance(headers, dict) and isinstance(tail, dict):
                return {**head, "headers": headers, **tail}
        except ValueError:
            pass
    return parse(line)


@lru_cache(maxsize=4096)
def _second(stamp: str) -> int:
    return calendar.timegm((int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]), int(stamp[11:13]),
                            int(stamp[14:16]), int(stamp[17:19]), 0, 0, 0))


def unix(ts: Any) -> float | None:
    """``2026-11-28T10:15:00.123456789Z`` as Unix seconds; None when it is not such a time."""
    if not isinstance(ts, str) or len(ts) < 20 or ts[10] != "T":
        return None
    try:
        fraction = ts[20:].rstrip("Z")
        return _second(ts[:19]) + (float("0." + fraction) if ts[19] == "." and fraction.isdigit() else 0.0)
    except ValueError:
        return None


def meta(doc: dict) -> dict:
    value = doc.get("_meta")
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tokens_and_cost(doc: dict, api: ModuleType | None, model: str | None, upstream: str,
                    when: float) -> tuple[dict, dict]:
    """A response entry's ``tokens`` and ``cost`` (empty where unknown): its own, else worked
    out from its ``usage`` as the proxy does (``when`` the request's time): an entry written
    before they were recorded, or when the price data lacked the model."""
    counts, cost = _recorded(doc, "tokens", "input", integer), _recorded(doc, "cost", "total", number)
    if (counts is None or cost is None) and isinstance(doc.get("usage"), dict):
        fresh_counts, fresh_cost = pricing.priced(api, doc["usage"], model, upstream, when)
        counts = counts or (fresh_counts.fields() if fresh_counts else None)
        cost = cost or (fresh_cost.fields() if fresh_cost else None)
    return counts or {}, cost or {}


def _recorded(doc: dict, name: str, part: str, kind) -> dict | None:
    value = doc.get(name)
    return value if isinstance(value, dict) and kind(value.get(part)) is not None else None
