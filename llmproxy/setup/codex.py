"""The Codex CLI through the proxy: its ``config.toml`` (Codex ignores ``OPENAI_BASE_URL``).

``setup --codex`` adds a ``[model_providers.llm-proxy]`` table and chooses it with
``model_provider``, editing with tomlkit so the user's comments and order stay; a key the user
set is never changed (it is kept, and said so). ``uninstall`` puts back the file as it was
before when nobody touched it since, else it removes exactly the keys that still hold what
``setup`` put there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from llmproxy.providers import codex_base_url

PROVIDER = "llm-proxy"
KeyPath = tuple[str, ...]
_MISSING = object()
NOTE = "added by llm-proxy setup"


class ConfigError(ValueError):
    """config.toml cannot be read or edited; ``str()`` is the one line to show."""


def provider_table(base_url: str) -> dict[str, str]:
    """Codex's custom provider for this proxy: plain HTTP and SSE, the key from $OPENAI_API_KEY."""
    return {"name": "OpenAI through llm-proxy", "base_url": codex_base_url(base_url),
            "env_key": "OPENAI_API_KEY", "wire_api": "responses"}


def wanted(base_url: str) -> dict[KeyPath, str]:
    return {("model_provider",): PROVIDER,
            **{("model_providers", PROVIDER, key): value for key, value in provider_table(base_url).items()}}


def snippet(base_url: str) -> str:
    """The Codex CLI's two ways through the proxy, for ``llm-proxy env --codex`` (checked against Codex 0.171.0)."""
    table = "".join(f'{key} = "{value}"\n' for key, value in provider_table(base_url).items())
    return f"""\
# Codex CLI through llm-proxy: put this at the top of $CODEX_HOME/config.toml
# (~/.codex/config.toml), before any [table]; `llm-proxy setup --codex` does it for you.

# ChatGPT sign-in, or a key saved with `codex login --with-api-key`: the built-in
# provider (it tries a WebSocket first and ignores OPENAI_BASE_URL and OPENAI_API_KEY).
openai_base_url = "{codex_base_url(base_url)}"

# A key in $OPENAI_API_KEY: choose this provider here, or per run with
# `codex -c model_provider={PROVIDER}` (plain HTTP and SSE).
# model_provider = "{PROVIDER}"

[model_providers.{PROVIDER}]
{table}"""


def digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def parse(path: Path, text: str | None) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text or "")
    except (TOMLKitError, ValueError) as exc:
        raise ConfigError(f"{path} does not parse ({exc})") from None


def _get(doc: Any, keys: KeyPath) -> Any:
    for key in keys:
        if not hasattr(doc, "get"):
            return _MISSING
        doc = doc.get(key, _MISSING)
        if doc is _MISSING:
            return _MISSING
    return doc.unwrap() if hasattr(doc, "unwrap") else doc


@dataclass
class Edit:
    """What ``setup --codex`` does to config.toml: the text after, the keys it sets (with their
    values) and the user's keys it leaves alone."""

    before: str | None
    after: str
    keys: dict[KeyPath, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.after != self.before


def plan(path: Path, text: str | None, base_url: str, ours: dict[KeyPath, str]) -> Edit:
    """The edit for a file whose text is ``text`` (None: no file). ``ours`` are the keys an
    earlier ``setup`` set, with the values it gave them: those it may update (a new port)."""
    doc = parse(path, text)
    edit = Edit(text, text or "")
    for keys, value in wanted(base_url).items():
        current = _get(doc, keys)
        if current == value:
            continue
        if current is not _MISSING and ours.get(keys) != current:
            edit.kept.append(f"{'.'.join(keys)} = {current!r}")
            continue
        edit.keys[keys] = value
    if not edit.keys:
        return edit
    try:
        edit.after = _with(doc, edit.keys)
        check = tomlkit.parse(edit.after)
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot add the {PROVIDER} provider ({exc})") from None
    if any(_get(check, keys) != value for keys, value in edit.keys.items()):
        raise ConfigError(f"{path}: cannot add the {PROVIDER} provider (model_providers is not a table)")
    return edit


def _with(doc: tomlkit.TOMLDocument, keys: dict[KeyPath, str]) -> str:
    """The document's text with the keys set. ``model_provider`` goes after the last top-level
    key (tomlkit's place for it); a new provider table goes at the very end, so that no comment
    of the user's is parted from the table below it."""
    if ("model_provider",) in keys:
        if "model_provider" in doc:
            doc["model_provider"] = keys[("model_provider",)]
        else:
            item = tomlkit.item(keys[("model_provider",)])
            item.comment(NOTE)
            doc.add("model_provider", item)
    table_keys = {path[2]: value for path, value in keys.items() if path[:2] == ("model_providers", PROVIDER)}
    table = _get(doc, ("model_providers", PROVIDER))
    if table_keys and table is not _MISSING:
        for key, value in table_keys.items():
            doc["model_providers"][PROVIDER][key] = value
        table_keys = {}
    text = tomlkit.dumps(doc)
    if not table_keys:
        return text
    body = tomlkit.dumps(table_keys)
    return (text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text.strip() else "")
            + f"[model_providers.{PROVIDER}] # {NOTE}\n{body}")


def undo(path: Path, text: str | None, keys: dict[KeyPath, str], before: str | None, after_digest: str | None,
         created: bool) -> tuple[str | None, str]:
    """``(text, how)`` for uninstall: the text to write (None: remove the file) and ``created``,
    ``restored`` or the keys removed. Untouched since setup: the text from before it (no file if
    setup made it). Else the keys that still hold setup's values go, everything else stays."""
    if text is None:
        return None, "created"
    if digest(text) == after_digest:
        return (None, "created") if created else (before, "restored")
    try:
        doc = tomlkit.parse(text)
    except (TOMLKitError, ValueError) as exc:
        raise ConfigError(f"{path} does not parse any more ({exc}): remove the llm-proxy keys by hand") from None
    removed = []
    for path_keys, value in keys.items():
        if _get(doc, path_keys) == value:
            parent = doc
            for key in path_keys[:-1]:
                parent = parent[key]
            del parent[path_keys[-1]]
            removed.append(".".join(path_keys))
    providers = doc.get("model_providers")
    if providers is not None and isinstance(providers, dict):
        if PROVIDER in providers and not providers[PROVIDER]:
            del providers[PROVIDER]
        if not providers:
            del doc["model_providers"]
    new = tomlkit.dumps(doc)
    if new.endswith("\n\n"):  # the blank line that parted setup's table (at the end) from the rest
        new = new.rstrip("\n") + "\n"
    if created and not new.strip():
        return None, "created"
    return new, ", ".join(removed)
