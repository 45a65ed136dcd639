"""How an API spells the messages of a conversation, for their identity (llmproxy/record/sessions.py).

A message's identity is its content in one canonical spelling: text blocks are ``text``, a
string is a list of one text block, and what is no turn of the conversation is left out. Each
API module declares its own spellings in a :class:`Spelling`; the session code applies them all
to every message (no API uses another's spelling for something else, so the union is safe, and
one canonical form lets the same turn match whichever module read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

TEXT = "text"  # the canonical type of a text block


@dataclass(frozen=True)
class Spelling:
    """What one API's messages carry besides the turn itself, and its other names for text."""

    annotations: frozenset[str] = frozenset()     # per-request markers clients move between turns
    context_roles: frozenset[str] = frozenset()   # roles of the client's regenerated instructions
    context_texts: tuple[str, ...] = ()           # prefixes of text blocks that are client context
    hidden: frozenset[str] = frozenset()          # block or item types of the model's hidden reasoning
    server_fields: frozenset[str] = frozenset()   # item fields the server assigns (a client may drop)
    text_types: frozenset[str] = frozenset()      # other names of a text block
    content_fields: dict[str, str] = field(default_factory=dict)  # item type → its content field
    message_type: str | None = None               # the type of an item that has a role but no type


def merged(spellings: Iterable[Spelling]) -> Spelling:
    """One spelling that reads every API's messages."""
    spellings = list(spellings)
    message_types = {s.message_type for s in spellings} - {None}
    assert len(message_types) <= 1, message_types
    return Spelling(
        annotations=frozenset().union(*(s.annotations for s in spellings)),
        context_roles=frozenset().union(*(s.context_roles for s in spellings)),
        context_texts=tuple(dict.fromkeys(p for s in spellings for p in s.context_texts)),
        hidden=frozenset().union(*(s.hidden for s in spellings)),
        server_fields=frozenset().union(*(s.server_fields for s in spellings)),
        text_types=frozenset().union(*(s.text_types for s in spellings)),
        content_fields={k: v for s in spellings for k, v in s.content_fields.items()},
        message_type=next(iter(message_types), None),
    )
