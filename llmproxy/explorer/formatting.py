"""How numbers, times and hostile text look on the pages: the templates' filters.

Text from the logs is escaped by Jinja (autoescape, never undone); ``visible``
(:mod:`llmproxy.common.visible`) also makes what would hide or reorder text seen.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from llmproxy.common.visible import visible


def count(value: Any) -> str:
    """``12,345``; ``1.2M`` past ten million."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if abs(value) >= 10_000_000:
        return f"{value / 1_000_000:.1f}M"
    return f"{value:,.0f}"


def compact(value: Any) -> str:
    """``950``, ``12.3k``, ``4.5M``: token counts in narrow columns."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            shown = value / size
            return f"{shown:.1f}{unit}" if shown < 100 else f"{shown:.0f}{unit}"
    return f"{value:.0f}"


def money(value: Any) -> str:
    """``$12.34``, ``$0.0123`` (two significant digits below a cent), ``–`` when unknown."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:.3f}"
    return f"${value:.2g}" if abs(value) >= 0.0001 else "<$0.0001"


def duration_ms(value: Any) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 05 s``, ``2 h 10 min``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def parse_ts(value: Any) -> datetime | None:
    """An RFC 3339 time (``_meta.ts``, nanoseconds and all), a Unix time, or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1e9 if value > 1e12 else value, tz=timezone.utc)
    if not isinstance(value, str) or len(value) < 19:
        return None
    try:
        return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def clock(value: Any) -> str:
    """``10:15:03``."""
    moment = parse_ts(value)
    return moment.strftime("%H:%M:%S") if moment else "–"


def when(value: Any) -> str:
    """``2026-11-28 10:15``."""
    moment = parse_ts(value)
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "–"


def arguments(text: str) -> list[tuple[str, str]] | None:
    """A tool call's JSON object arguments as (name, value) rows: strings as they are (a
    command, a file's new text), other values as JSON. None when they are no JSON object."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(doc, dict) or not doc:
        return None
    return [(str(k), v if isinstance(v, str) else json.dumps(v, indent=2, ensure_ascii=False)) for k, v in doc.items()]


def lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def first_line(text: str, width: int = 100) -> str:
    head = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    return head if len(head) <= width else head[:width - 1] + "…"


FILTERS = {"visible": visible, "count": count, "compact": compact, "money": money, "duration": duration_ms,
           "size": size, "clock": clock, "when": when, "arguments": arguments,
           "lines": lines, "first_line": first_line}
