"""Where a request goes: ``/{provider}/{upstream}/{path…}`` → an upstream URL, or a refusal."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from llmproxy import providers
from llmproxy.common.errors import BadRoute, UnknownProvider, UpstreamNotAllowed
from llmproxy.common.hosts import host_matches

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
USAGE = ("use /{provider}/{upstream}/{path}, e.g. /anthropic/api.anthropic.com/v1/messages or "
         "/openai/api.openai.com/v1/chat/completions; providers: " + ", ".join(providers.PREFIXES))

_UPSTREAM = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?")


@dataclass(frozen=True)
class Route:
    """A resolved proxied request."""

    provider: str       # a provider label (llmproxy.providers): anthropic | openai | chatgpt
    upstream: str       # host[:port] as the client named it (after the ChatGPT rewrite)
    host: str           # host name without brackets or port
    url: str            # the full upstream URL, query string included
    path: str           # upstream path, without the query string
    conversation: bool  # whether the exchange is logged


def split_target(raw_uri: str) -> tuple[str, str, str, str]:
    """``/provider/upstream/rest?query`` → (provider, upstream, rest, query); raise BadRoute."""
    path, _, query = raw_uri.partition("?")
    parts = path.split("/", 3)
    if len(parts) < 3 or parts[0] != "" or not parts[1] or not parts[2]:
        raise BadRoute(f"malformed proxy path {path!r}: {USAGE}")
    rest = "/" + parts[3] if len(parts) == 4 else "/"
    return parts[1], unquote(parts[2]), rest, query


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower()
    return any(host_matches(entry, host) for entry in allowed)


def resolve(raw_uri: str, authorization: str | None, allowed: tuple[str, ...]) -> Route:
    """Route a request; raise :class:`BadRoute`, :class:`UnknownProvider`, :class:`UpstreamNotAllowed`."""
    provider, upstream, path, query = split_target(raw_uri)
    if provider not in providers.PREFIXES:
        raise UnknownProvider(f"unknown provider {provider!r}: {USAGE}")
    match = _UPSTREAM.fullmatch(upstream)
    if not match or (match.group("port") and not 0 < int(match.group("port")) < 65536):
        raise BadRoute(f"malformed upstream {upstream!r}: expected a host with an optional port; {USAGE}")
    host = match.group("host").strip("[]").lower()

    rewritten = providers.rewrite(provider, host, path, authorization)  # the ChatGPT backend
    if rewritten:
        provider, host, path = rewritten
        upstream = host

    if not host_allowed(host, allowed):
        raise UpstreamNotAllowed(
            f"upstream {host!r} is not allowed; allowed: {', '.join(allowed)} (LLM_PROXY_ALLOWED_UPSTREAMS)")

    scheme = "http" if host in LOOPBACK_HOSTS else "https"
    url = f"{scheme}://{upstream}{path}" + (f"?{query}" if query else "")
    return Route(provider=provider, upstream=upstream, host=host, url=url, path=path,
                 conversation=providers.logged(path))
