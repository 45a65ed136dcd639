"""AWS Bedrock (``bedrock-runtime.{region}.amazonaws.com``): Claude Code's Bedrock mode, boto3.

Routed as ``/bedrock/{region}/…`` (or ``/bedrock/{host}/…``): Claude Code with
``CLAUDE_CODE_USE_BEDROCK=1``, ``CLAUDE_CODE_SKIP_BEDROCK_AUTH=1`` and
``ANTHROPIC_BEDROCK_BASE_URL=http://127.0.0.1:8080/bedrock/us-east-1`` sends its calls unsigned:
the runtime's ``/model/{modelId}/invoke``, ``/invoke-with-response-stream``, ``/converse`` and
``/converse-stream`` go to ``bedrock-runtime.{region}.amazonaws.com``, the rest (its
``GET /inference-profiles`` each turn) to the control plane, ``bedrock.{region}.amazonaws.com``.
The proxy signs each with SigV4 (:class:`Signer`: botocore's signer and credential chain); a
call that carries its own ``Authorization`` (signed by the client, or a Bedrock API key as
``Bearer``) is forwarded as it is.

``invoke`` takes and answers the Anthropic Messages API's bodies (``anthropic_version:
"bedrock-2023-05-31"``, the model in the path, no ``stream``), so sessions, summaries and
transcripts read them as :mod:`~llmproxy.providers.anthropic` does. A stream answers in AWS's
binary event stream (``application/vnd.amazon.eventstream``), relayed untouched; the log gets
its events (:class:`EventStream`): a ``chunk`` frame's ``bytes`` is one Anthropic stream event,
logged as that event's JSON. The Converse API has its own shapes (``output.message``,
``stopReason``, ``usage.inputTokens``; stream events ``messageStart``, ``contentBlockDelta``,
``metadata``…), each logged as ``{event type: payload}``, as boto3 shows them.

Errors are ``{"message": …}`` with the type in the ``x-amzn-errortype`` header.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from llmproxy.common.errors import UpstreamCredentialsMissing
from llmproxy.providers import anthropic
from llmproxy.providers.framing import Framer, FramingError
from llmproxy.providers.summary import Counts, Summary, count
from llmproxy.providers.transcribe import Part, Said, Stream, after_last, number

PREFIX = "bedrock"
NAMES = ("bedrock",)
# The runtime (conversations) and the control plane (model and inference profile lists) of any
# region; ``*`` is one label of the host name.
HOSTS = {"bedrock-runtime.*.amazonaws.com": "bedrock", "bedrock.*.amazonaws.com": "bedrock"}
PRICED_AS = "aws"  # genai-prices' list (AWS Bedrock) for a host it does not know
# No CLIENT_ENV: Claude Code's Bedrock mode signs its calls unless told not to, and a call signed
# for the proxy's address is refused by AWS; pointing it here is a choice made with
# CLAUDE_CODE_SKIP_BEDROCK_AUTH (docs/clients.rst), never a shell's default.
_OPERATION = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|converse-stream)")
LOGGED = _OPERATION
_STREAMS = ("invoke-with-response-stream", "converse-stream")
_RUNTIME_PATHS = ("/model/", "/async-invoke", "/guardrail/")
AGENT_HEADERS = anthropic.AGENT_HEADERS
SPELLING = anthropic.SPELLING

_REGION = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-\d{1,2}")
_ENDPOINT = "{}.{}.amazonaws.com"  # plane, region
_HOST_REGION = re.compile(r"bedrock(?:-runtime)?(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
SERVICE = "bedrock"  # what both planes sign as
_SIGNATURE_HEADERS = re.compile(r"authorization|x-amz-(?:date|security-token|content-sha256)")  # the signer's own

EVENT_STREAM = "application/vnd.amazon.eventstream"
WANTED = re.compile(anthropic.WANTED.pattern + rb'|"(?:contentBlockStart|messageStop|metadata)"')

# The error types of AWS's answers that match the proxy's own, by status.
_ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                429: "ThrottlingException"}


def handles(provider: str, path: str) -> bool:
    return provider in NAMES


def rewrite(host: str, path: str, authorization: str | None) -> tuple[str, str, str] | None:
    """A region instead of a host: the runtime's endpoint in it, or for the control plane's paths
    (``/inference-profiles``, ``/foundation-models``…) the control plane's."""
    if not _REGION.fullmatch(host):
        return None
    plane = "bedrock-runtime" if path.startswith(_RUNTIME_PATHS) else "bedrock"
    return NAMES[0], _ENDPOINT.format(plane, host), path


def path_summary(path: str) -> dict:
    match = _OPERATION.fullmatch(path)
    if not match:
        return {}
    return {"model": unquote(match.group(1)), "stream": match.group(2) in _STREAMS}


def client_session_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    return anthropic.client_session_id(path, headers, body)


def conversation(body: dict) -> list:
    return anthropic.conversation(body)


def error_document(status: int, message: str, code: str) -> dict[str, Any]:
    return {"message": message}


def error_headers(status: int, code: str) -> list[tuple[str, str]]:
    kind = _ERROR_TYPES.get(status, "ValidationException" if status < 500 else "ServiceUnavailableException")
    return [("x-amzn-errortype", kind)]


# --- signing ---

class Signer:
    """SigV4 for a worker's Bedrock calls, with botocore's credential chain (environment,
    ``~/.aws`` profiles, SSO, container and instance roles) or one profile. botocore is loaded
    and the credentials looked up on the first call (or the start-up check), once: temporary ones
    are refreshed by botocore as they expire; none found stays none until a restart (the chain
    may wait on an instance's metadata service: not once per call)."""

    def __init__(self, region: str | None, profile: str | None):
        self.region = region
        self.profile = profile
        self._lock = threading.Lock()
        self._session: Any = None
        self._credentials: Any = None

    @property
    def configured(self) -> bool:
        return bool(self.region or self.profile)

    def _load(self) -> Any:
        """botocore's credentials (None when none are found). Raises UpstreamCredentialsMissing
        for a profile that does not exist."""
        with self._lock:
            if self._session is None:
                import botocore.exceptions
                import botocore.session

                session = botocore.session.Session(profile=self.profile)
                try:
                    self._credentials = session.get_credentials()
                except botocore.exceptions.ProfileNotFound as exc:
                    name = self.profile or exc.kwargs.get("profile")  # AWS_PROFILE's
                    raise UpstreamCredentialsMissing(f"the AWS profile {name!r} is not in ~/.aws/config "
                                                     "or ~/.aws/credentials") from None
                except botocore.exceptions.BotoCoreError as exc:
                    raise UpstreamCredentialsMissing(f"AWS credentials could not be loaded: {exc}") from None
                self._session = session
            return self._credentials

    def _missing(self) -> str:
        where = f"the AWS profile {self.profile!r}" if self.profile else (
            "the AWS credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials and config, SSO, a container or instance role)")
        return f"the proxy has no AWS credentials to sign Bedrock calls with: none found in {where}"

    def problem(self) -> str | None:
        """Why calls cannot be signed, checked at start-up when Bedrock is configured."""
        if not self.configured:
            return None
        try:
            credentials = self._load()
        except UpstreamCredentialsMissing as exc:
            return exc.message
        return None if credentials is not None else self._missing()

    def _region_of(self, host: str) -> str:
        match = _HOST_REGION.fullmatch(host)
        if match:
            return match.group(1)
        region = self.region or (self._session.get_config_variable("region") if self._session else None)
        if not region:
            raise UpstreamCredentialsMissing(f"no AWS region to sign the call to {host} for: the path names a "
                                             "host, not a region; set LLM_PROXY_BEDROCK_REGION "
                                             "(or AWS_DEFAULT_REGION)")
        return region

    def sign(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
        """The headers with SigV4's (``Authorization``, ``X-Amz-Date``, ``X-Amz-Security-Token``)
        over the URL as it goes on the wire; a request that carries its own ``Authorization`` (the
        client signed it, or sends a Bedrock API key as ``Bearer``: Claude Code with
        ``AWS_BEARER_TOKEN_BEDROCK``), as it is: the client holds the credentials."""
        if any(n.lower() == "authorization" and v.strip() for n, v in headers):
            return headers
        credentials = self._load()
        if credentials is None:
            raise UpstreamCredentialsMissing(self._missing())
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        request = AWSRequest(method=method, url=url, data=body,
                             headers={n: v for n, v in headers if not _SIGNATURE_HEADERS.fullmatch(n.lower())})
        region = self._region_of(urlsplit(url).hostname or "")
        try:
            frozen = credentials.get_frozen_credentials()  # refreshes temporary ones that expire
        except BotoCoreError as exc:  # an expired SSO login, a role that can no longer be assumed
            raise UpstreamCredentialsMissing(f"the AWS credentials could not be refreshed: {exc}") from None
        SigV4Auth(frozen, SERVICE, region).add_auth(request)
        return list(request.headers.items())


def signer(settings: Any) -> Signer:
    return Signer(settings.bedrock_region, settings.bedrock_profile)


# --- the event stream ---

class EventStream:
    """The events of an ``application/vnd.amazon.eventstream`` answer, parsed by botocore: a
    ``chunk``'s payload ``{"bytes": base64}`` gives the Anthropic event inside; another event
    or an exception is ``{type: payload}``."""

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[bytes]:
        from botocore.eventstream import ParserError

        self._buffer.add_data(data)
        try:
            return [_event(message.headers, message.payload) for message in self._buffer]
        except (ParserError, ValueError) as exc:  # a bad frame, or a chunk whose bytes are not base64
            raise FramingError(f"event stream: {exc}") from None

    def rest(self) -> bytes:
        return b""


def _event(headers: dict, payload: bytes) -> bytes:
    kind = headers.get(":event-type") or headers.get(":exception-type") or headers.get(":error-code") or "event"
    try:
        doc = json.loads(payload) if payload else {}
    except ValueError:
        doc = payload.decode(errors="replace")
    if kind == "chunk" and isinstance(doc, dict) and isinstance(doc.get("bytes"), str):
        return base64.b64decode(doc["bytes"])
    if isinstance(doc, dict):
        doc.pop("p", None)  # padding that hides the length of what an event says
    return json.dumps({kind: doc}, ensure_ascii=False).encode()


def framer(path: str, status: int, content_type: str) -> Framer | None:
    return EventStream() if content_type.startswith(EVENT_STREAM) else None


# --- summaries: invoke speaks Anthropic's Messages API, Converse its own ---

def _converse(body: dict) -> bool:
    return "anthropic_version" not in body and ("output" in body or "toolConfig" in body or "inferenceConfig" in body
                                                 or not _typed(body.get("messages")))


def _typed(messages: Any) -> bool:
    """Whether messages' content blocks carry a ``type`` (Anthropic's) rather than a key per kind."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return True
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict):
                return "type" in block
    return True


def request_summary(body: dict) -> dict:
    if not _converse(body):
        return anthropic.request_summary(body)
    tools = (body.get("toolConfig") or {}).get("tools")
    return {"stream": False, "tools_count": count(tools) or 0, "messages_count": count(body.get("messages"))}


def _converse_blocks(content: Any, summary: Summary) -> None:
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and isinstance(block.get("toolUse"), dict):
            summary.add_tool(block["toolUse"].get("name"))


# The model of a Bedrock call is the model id of its path (an inference profile such as
# ``us.anthropic.claude-opus-5-5``: what AWS bills, regional and global profiles at their own
# prices), not the name inside Anthropic's answer: the answer's is left out, the request's stands.

def response_summary(doc: dict, summary: Summary) -> None:
    if not isinstance(doc.get("output"), dict):
        anthropic.response_summary(doc, summary)
        summary.model = None
        return
    summary.set_stop_reason(doc.get("stopReason"))
    summary.merge_usage(doc.get("usage"))
    _converse_blocks((doc["output"].get("message") or {}).get("content"), summary)


def add_event(event: dict, summary: Summary) -> None:
    if "type" in event:
        anthropic.add_event(event, summary)
        summary.model = None
        return
    if isinstance(event.get("contentBlockStart"), dict):
        start = event["contentBlockStart"].get("start") or {}
        if isinstance(start.get("toolUse"), dict):
            summary.add_tool(start["toolUse"].get("name"))
    elif isinstance(event.get("messageStop"), dict):
        summary.set_stop_reason(event["messageStop"].get("stopReason"))
    elif isinstance(event.get("metadata"), dict):
        summary.merge_usage(event["metadata"].get("usage"))


# --- the transcript ---

def _converse_part(block: dict) -> Part | None:
    if isinstance(block.get("text"), str):
        return Part("text", block["text"])
    if isinstance(block.get("reasoningContent"), dict):
        reasoning = block["reasoningContent"]
        shown = (reasoning.get("reasoningText") or {}).get("text")
        return Part("thinking", shown if isinstance(shown, str) else "",
                    name="" if isinstance(shown, str) else "redacted")
    if isinstance(block.get("toolUse"), dict):
        call = block["toolUse"]
        return Part("call", json.dumps(call.get("input"), ensure_ascii=False), name=str(call.get("name", "")),
                    ref=str(call.get("toolUseId", "")))
    if isinstance(block.get("toolResult"), dict):
        result = block["toolResult"]
        ref = str(result.get("toolUseId", ""))
        inner = [p for p in (_converse_part(b) if "text" in b else Part("text", json.dumps(b.get("json")))
                             for b in result.get("content") or () if isinstance(b, dict)) if p]
        return Part("result", name=ref, ref=ref, parts=inner, failed=result.get("status") == "error")
    return Part("block", name=next(iter(block), "")) if block else None


def turn(body: dict) -> list[tuple[str, list[Part]]]:
    if not _converse(body):
        return anthropic.turn(body)
    out = []
    for message in after_last(conversation(body), lambda m: m.get("role") == "assistant"):
        content = message.get("content")
        parts = [p for p in (_converse_part(b) for b in content if isinstance(b, dict)) if p] \
            if isinstance(content, list) else []
        out.append((message.get("role", "user"), parts))
    return out


def system(body: dict) -> str:
    """invoke: Anthropic's ``system``; Converse: its list of ``{"text": …}`` blocks."""
    if not _converse(body):
        return anthropic.system(body)
    blocks = body.get("system")
    return "\n\n".join(b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)) \
        if isinstance(blocks, list) else ""


def said(doc: dict) -> Said:
    if not isinstance(doc.get("output"), dict):
        return anthropic.said(doc)
    content = (doc["output"].get("message") or {}).get("content") or ()
    return Said([p for p in (_converse_part(b) for b in content if isinstance(b, dict)) if p and p.kind != "block"])


def _stream_error(events: list[dict]) -> str:
    """The message of an error frame in a stream (``{"throttlingException": {"message": …}}``)."""
    for event in events:
        if len(event) == 1:
            kind, body = next(iter(event.items()))
            if kind.endswith("Exception"):
                return (body.get("message") if isinstance(body, dict) else None) or kind
    return ""


def said_events(events: Iterable[dict]) -> Said:
    events = list(events)
    if any("type" in e for e in events):
        said_ = anthropic.said_events(events)
    else:
        stream = Stream()
        for event in events:
            start, delta = event.get("contentBlockStart"), event.get("contentBlockDelta")
            if isinstance(start, dict) and isinstance((start.get("start") or {}).get("toolUse"), dict):
                call = start["start"]["toolUse"]
                stream.call(start.get("contentBlockIndex"), call.get("name"), call.get("toolUseId"))
            elif isinstance(delta, dict):
                inner, index = delta.get("delta") or {}, delta.get("contentBlockIndex")
                if "text" in inner:
                    stream.delta(inner.get("text"), index)
                elif isinstance(inner.get("reasoningContent"), dict):
                    stream.thinking(index, inner["reasoningContent"].get("text", ""))
                elif isinstance(inner.get("toolUse"), dict):
                    stream.arguments(index, inner["toolUse"].get("input"))
        said_ = stream.said()
    said_.error = said_.error or _stream_error(events)
    return said_


def token_counts(usage: dict) -> Counts | None:
    """Anthropic's names (invoke), or the Converse API's, whose ``inputTokens`` is the uncached
    input already, cache reads and writes apart."""
    if "inputTokens" not in usage and "outputTokens" not in usage:
        return anthropic.token_counts(usage)
    given = number(usage.get("inputTokens"))
    if given is None:
        return None
    return Counts(input=given, output=number(usage.get("outputTokens")) or 0,
                  cache_write=number(usage.get("cacheWriteInputTokens")) or 0,
                  cache_read=number(usage.get("cacheReadInputTokens")) or 0)
