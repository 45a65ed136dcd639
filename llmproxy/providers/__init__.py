"""What differs between LLM APIs, one module per API; the rest of the proxy asks here.

Each module answers every question the proxy has about its API:

- routing: ``PREFIX`` (the ``/{provider}/…`` path segment that reaches it), ``NAMES`` (the
  provider labels its exchanges get), ``HOSTS`` (its default upstreams and their label),
  ``LOGGED`` (the paths whose exchanges are logged), and optionally ``rewrite`` (a call that goes
  elsewhere: the ChatGPT backend, a Bedrock region's endpoint);
- the upstream call, optionally: ``signer`` (an API whose calls the proxy signs with credentials
  of its own, Bedrock's SigV4: a per-worker :class:`Signer` built from the settings) and
  ``framer`` (a streamed answer that is not SSE: how it splits into events for the log, see
  :mod:`~llmproxy.providers.framing`);
- sessions: ``client_session_id`` (where its clients name their session), ``AGENT_HEADERS``
  (sub-agents), ``conversation`` (the message history a request carries), ``SPELLING`` (how its
  messages canonicalise for their identity), and optionally ``response_id`` (an answer a later
  request may continue);
- errors: ``error_document`` (the proxy's own errors in the provider's shape) and optionally
  ``error_headers`` (headers its clients read the error from);
- summaries: ``request_summary``, ``response_summary`` (a JSON answer) and ``add_event`` with
  ``WANTED`` (the events of a stream or WebSocket session worth parsing); optionally
  ``path_summary`` (an API whose path names the model and whether the answer streams);
- usage and cost: ``token_counts`` (an answer's usage as :class:`Counts`, under names every API
  shares) and ``PRICED_AS`` (the price list of its calls when the upstream is not one the price
  data knows: a genai-prices provider id);
- transcripts (``loki-session --transcript``, the explorer): ``turn`` (what a request adds to the
  conversation), ``system`` (the instructions it carries), ``said`` (a JSON answer's text,
  thinking and tool calls, in order) and ``said_events`` (a stream's);
- clients: optionally ``CLIENT_ENV`` (the environment variables that point its clients at the
  proxy, and the path under the proxy each names).

:mod:`~llmproxy.providers.clients` names the client program of a request (its User-Agent).

Adding an API is adding a module here and to :data:`APIS`, with a test table. No module outside
this package names a provider (tests/test_providers.py).

May import: common.
Must not be imported by: common.
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from llmproxy.common.clientids import valid
from llmproxy.common.hosts import host_matches
from llmproxy.providers import anthropic, bedrock, gemini, openai_chat, openai_responses
from llmproxy.providers.framing import Framer
from llmproxy.providers.spelling import Spelling, merged
from llmproxy.providers.summary import Counts, Summary
from llmproxy.providers.transcribe import Part, Said

if TYPE_CHECKING:
    from llmproxy.common.errors import ProxyError

# First match wins: Responses before Chat, whose module also takes the rest of OpenAI's paths.
APIS: tuple[ModuleType, ...] = (anthropic, openai_responses, openai_chat, gemini, bedrock)
PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(api.PREFIX for api in APIS))
# Every API's message spellings at once: what a conversation's identity reads messages with.
SPELLING: Spelling = merged(api.SPELLING for api in APIS)

__all__ = ["APIS", "PREFIXES", "SPELLING", "Counts", "Framer", "Part", "Said", "Signer", "Summary", "agent_name",
           "api_for", "api_of_entry", "client_environment", "client_session_id", "codex_base_url", "conversation",
           "credential_problems", "error_body", "error_headers", "framer", "logged", "provider_for_host",
           "request_summary", "response_id", "response_summary", "rewrite", "said", "signers", "stream_summary",
           "system", "token_counts", "tokens", "turn"]


class Signer(Protocol):
    """Signs the calls of one API with credentials the proxy holds (a module's ``signer``)."""

    def sign(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
        """The headers to send upstream instead of ``headers``. Raises a :class:`ProxyError`
        (``UpstreamCredentialsMissing``) when it has no credentials."""

    def problem(self) -> str | None:
        """Why calls cannot be signed, when the API is configured and cannot; else None."""


def rewrite(prefix: str, host: str, path: str, authorization: str | None) -> tuple[str, str, str] | None:
    """(provider, host, path) when an API of ``prefix`` sends this call elsewhere, else None."""
    for api in APIS:
        if api.PREFIX == prefix and hasattr(api, "rewrite"):
            changed = api.rewrite(host, path, authorization)
            if changed:
                return changed
    return None


def signers(settings: Any) -> dict[str, Signer]:
    """The signers of the APIs whose calls the proxy signs, by provider label; built once per
    worker (each module reads its own settings; nothing is looked up before a call needs it)."""
    return {name: signer for api in APIS if hasattr(api, "signer")
            for signer in [api.signer(settings)] for name in api.NAMES}


def credential_problems(settings: Any) -> list[str]:
    """Start-up: why an API that is configured cannot sign its calls (no credentials found)."""
    problems = (api.signer(settings).problem() for api in APIS if hasattr(api, "signer"))
    return [problem for problem in problems if problem]


def framer(provider: str, path: str, status: int, content_type: str) -> Framer | None:
    """How a streamed answer that is not SSE splits into events, or None (a body as it is)."""
    api = api_for(provider, path)
    return api.framer(path, status, content_type) if api is not None and hasattr(api, "framer") else None


def client_environment(base_url: str) -> dict[str, str]:
    """The variables that point today's clients at the proxy at ``base_url`` (``llm-proxy env``,
    the shell integration)."""
    return {name: base_url + path for api in APIS for name, path in getattr(api, "CLIENT_ENV", {}).items()}


def codex_base_url(base_url: str) -> str:
    """Where the Codex CLI's provider block points: the OpenAI SDK's base URL (Codex reads it
    from config.toml, not from the environment)."""
    return base_url + openai_chat.CLIENT_ENV["OPENAI_BASE_URL"]


def logged(path: str) -> bool:
    """Whether an exchange on this upstream path is a conversation call worth a session log."""
    return any(api.LOGGED.fullmatch(path) for api in APIS)


def provider_for_host(host: str) -> str | None:
    """The provider label of a default upstream host (for log trees that do not say)."""
    return next((label for api in APIS for pattern, label in api.HOSTS.items() if host_matches(pattern, host)), None)


def _lowered(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def client_session_id(provider: str, path: str, headers: list[tuple[str, str]], body: Any) -> str | None:
    """The client's own session id for this request, or None (then it is a session of its own)."""
    api = api_for(provider, path)
    if api is None:
        return None
    return api.client_session_id(path, _lowered(headers), body if isinstance(body, dict) else {})


def agent_name(headers: list[tuple[str, str]]) -> str | None:
    """The sub-agent a client names in a header, if any."""
    lowered = _lowered(headers)
    for name in dict.fromkeys(h for api in APIS for h in api.AGENT_HEADERS):
        value = valid(lowered.get(name))
        if value:
            return value
    return None


def conversation(provider: str, path: str, body: Any) -> list:
    """The message history a request carries (what session threads are matched on)."""
    api = api_for(provider, path)
    return api.conversation(body) if api is not None and isinstance(body, dict) else []


def _merged(first: dict, second: dict) -> dict:
    out = dict(second)
    for key, value in first.items():
        out[key] = _merged(value, second[key]) if isinstance(value, dict) and isinstance(second.get(key), dict) \
            else value
    return out


def error_body(name: str | None, error: "ProxyError") -> bytes:
    """The proxy's own error as JSON in the shape of the provider ``name`` (a path prefix or a
    provider label). For a name no API knows, one body in every API's shape at once."""
    shapes = [api for api in APIS if name in (api.PREFIX, *api.NAMES)][:1] or list(APIS)
    doc: dict = {}
    for api in reversed(shapes):  # the first API's fields win where shapes overlap
        doc = _merged(api.error_document(error.status, error.message, error.code), doc)
    return json.dumps(doc).encode()


def error_headers(name: str | None, error: "ProxyError") -> list[tuple[str, str]]:
    """Headers the proxy's own error carries for the API of ``name`` (Bedrock's error type)."""
    api = next((api for api in APIS if name in (api.PREFIX, *api.NAMES)), None)
    return api.error_headers(error.status, error.code) if api is not None and hasattr(api, "error_headers") else []


def api_for(provider: str, path: str) -> ModuleType | None:
    """The module of the API an exchange speaks, or None for a provider no module knows."""
    for api in APIS:
        if api.handles(provider, path):
            return api
    return None


def _json(data: bytes | str) -> Any:
    if not data or data[:1] not in ("{", b"{"):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def request_summary(api: ModuleType | None, body: Any, path: str = "") -> dict:
    """``model``, ``stream``, ``tools_count``, ``messages_count`` of a parsed request body (what is
    there, and what its path says); empty when the body is not a JSON object. Never raises."""
    if api is None or not isinstance(body, dict):
        return {}
    try:
        summary = api.request_summary(body)
        if hasattr(api, "path_summary"):  # the path's word wins, and its model comes first
            said = api.path_summary(path)
            summary = {**said, **{k: v for k, v in summary.items() if k not in said}}
        return summary
    except Exception:  # a body of an unexpected shape is logged without a summary
        return {}


def response_summary(api: ModuleType | None, body: bytes | str) -> dict:
    """The summary fields of a JSON answer (``model``, ``stop_reason``, ``usage``, ``tool_calls``,
    what is there). Never raises."""
    if api is None:
        return {}
    doc = _json(body.lstrip() if isinstance(body, (bytes, str)) else b"")
    if not isinstance(doc, dict):
        return {}
    summary = Summary()
    try:
        api.response_summary(doc, summary)
    except Exception:
        pass  # whatever was read before the surprise is kept
    return summary.fields()


def events(raws: Iterable[bytes], wanted) -> Iterable[dict]:
    """The JSON events of SSE chunks (``data:`` lines) or WebSocket messages (one JSON text each):
    the first, and those whose raw text ``wanted`` (a compiled regex) finds. The many text deltas
    of a long answer are never parsed."""
    for i, raw in enumerate(raws):
        if i and not wanted.search(raw):
            continue
        start = raw.lstrip()[:1]
        if start == b"{":  # a WebSocket message
            doc = _json(raw.strip())
        else:
            data = b"\n".join(line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:"))
            doc = _json(data)
        if isinstance(doc, dict):
            yield doc


_ANY = re.compile(rb"")


def response_id(provider: str, path: str, raws: Iterable[bytes] | None, body: bytes | None) -> str | None:
    """The id of an answer that a later request may name to continue it (Responses API
    ``previous_response_id``), from the first events of a stream or a JSON body; else None."""
    api = api_for(provider, path)
    if api is None or not hasattr(api, "response_id"):
        return None
    try:
        return api.response_id(events(raws, _ANY) if raws is not None else iter(()), body)
    except Exception:
        return None


def stream_summary(api: ModuleType | None, raws: Iterable[bytes]) -> dict:
    """The summary fields of a stream, from its events in order. A stream cut short keeps what its
    events carried so far (usage from ``message_start`` is billed). Never raises."""
    if api is None:
        return {}
    summary = Summary()
    try:
        for event in events(raws, api.WANTED):
            api.add_event(event, summary)
    except Exception:
        pass
    return summary.fields()


def api_of_entry(provider: str | None, path: str) -> ModuleType | None:
    """The API of a logged exchange: by its provider and path, or (the provider unknown: a
    session read from its middle) the API whose logged paths include this one."""
    api = api_for(provider, path) if provider else None
    return api or next((api for api in APIS if api.LOGGED.fullmatch(path)), None)


def turn(api: ModuleType | None, body: Any) -> list[tuple[str, list[Part]]]:
    """(role, parts) of what a request adds to the conversation: the messages after the model's
    last one. Empty when unknown. Never raises."""
    if api is None or not isinstance(body, dict):
        return []
    try:
        return api.turn(body)
    except Exception:
        return []


def system(api: ModuleType | None, body: Any) -> str:
    """The instructions a request carries (a system prompt, developer messages); empty when
    unknown. Never raises."""
    if api is None or not isinstance(body, dict):
        return ""
    try:
        return api.system(body)
    except Exception:
        return ""


def said(api: ModuleType | None, response: dict) -> Said:
    """The text, thinking and tool calls of a logged answer (a response entry): from its chunks (SSE
    events or WebSocket messages) or its JSON body. Never raises."""
    if api is None:
        return Said()
    try:
        chunks = response.get("chunks")
        if chunks is not None:
            raws = (c["raw"].encode() for c in chunks if isinstance(c, dict) and isinstance(c.get("raw"), str)
                    and not c.get("encoding"))
            return api.said_events(events(raws, _ANY))
        doc = _json((response.get("body") or "").lstrip())
        return api.said(doc) if isinstance(doc, dict) else Said()
    except Exception:
        return Said()


def token_counts(api: ModuleType | None, usage: Any) -> Counts | None:
    """An answer's usage (in the provider's names) as :class:`Counts`; None when it has no
    token counts. Never raises."""
    if api is None or not isinstance(usage, dict):
        return None
    try:
        return api.token_counts(usage)
    except Exception:
        return None


def tokens(api: ModuleType | None, usage: Any) -> tuple[int | None, int | None]:
    """Tokens in (cached ones included) and out of an answer's usage."""
    counts = token_counts(api, usage)
    return (None, None) if counts is None else (counts.prompt, counts.output)
