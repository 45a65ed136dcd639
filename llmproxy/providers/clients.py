"""Which program made a request, from its ``User-Agent``: what usage reports and the explorer
group calls by (``client`` in a response entry).

Each known client names itself in the first product of its User-Agent; anything else is named
by that product, lower case (``Bun/1.4.0`` → ``bun``), and a request without one is ``unknown``.
"""

from __future__ import annotations

import re

# (pattern on the User-Agent, client name); first match wins.
KNOWN: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(pattern, re.I), name) for pattern, name in (
    (r"claude-cli/", "claude-code"),              # claude-cli/2.1.197 (external, cli)
    (r"codex_(?:cli_rs|exec|vscode)/", "codex"),  # codex_exec/0.171.0 (Debian 12.0.0; x86_64) …
    (r"GeminiCLI(?:-\w+)?/", "gemini-cli"),       # GeminiCLI-tui/0.61.0/<model> (linux; x64; terminal)
    (r"google-genai-sdk/\S+ gl-python/", "google-genai-python"),  # google-genai-sdk/3.6.1 gl-python/3.11.7
    (r"Boto3/", "boto3"),                         # Boto3/1.44.18 md/Botocore#1.44.18 …
    (r"\w*Anthropic\w*/Python ", "anthropic-sdk-python"),  # the client class: Anthropic, AsyncAnthropic…
    (r"\w*OpenAI\w*/Python ", "openai-sdk-python"),        # OpenAI, AsyncOpenAI, AzureOpenAI…
    (r"\w*Anthropic\w*/JS ", "anthropic-sdk-js"),
    (r"\w*OpenAI\w*/JS ", "openai-sdk-js"),
    (r"curl/", "curl"),
))
_PRODUCT = re.compile(r"[A-Za-z][A-Za-z0-9._+-]{0,39}")
UNKNOWN = "unknown"


def client_name(user_agent: str | None) -> str:
    """``claude-code``, ``codex``, ``openai-sdk-python``, ``curl``…; the User-Agent's first
    product, lower case, for a program not listed; ``unknown`` without one."""
    if not user_agent:
        return UNKNOWN
    for pattern, name in KNOWN:
        if pattern.match(user_agent):
            return name
    product = _PRODUCT.match(user_agent.strip())
    return product.group(0).lower() if product else UNKNOWN


def client_of(headers: list[tuple[str, str]] | dict[str, str]) -> str:
    """The client of a request, from its headers (pairs as captured, or a logged entry's dict)."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    value = next((value for name, value in pairs if isinstance(name, str) and name.lower() == "user-agent"), None)
    if isinstance(value, list):  # a repeated header, as an entry keeps it
        value = value[0] if value else None
    return client_name(value if isinstance(value, str) else None)
