"""Text from the logs made safe to look at, in a page or a terminal: control characters become
their Control Pictures symbol (``␛``: no escape sequence reaches a terminal), and bidirectional
and zero-width format characters a ``⟨U+202E⟩`` mark, so a prompt cannot make one thing look
like another. Line feeds and tabs stay."""

from __future__ import annotations

from typing import Any

_PICTURES = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)} | {0x7F: 0x2421}
_MARKED = [*range(0x80, 0xA0), 0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F),
           *range(0x2060, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFC)]
VISIBLE = str.maketrans({**{c: chr(p) for c, p in _PICTURES.items()}, **{c: f"⟨U+{c:04X}⟩" for c in _MARKED}})


def visible(text: Any) -> str:
    return ("" if text is None else str(text)).translate(VISIBLE)
