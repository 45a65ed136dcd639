"""Client session ids of today's clients, first match wins; only safe ids are accepted."""

import json

import pytest

from llmproxy.common.clientids import RESPONSE_KEY
from llmproxy.providers import agent_name, client_session_id

UUID = "3f1c2a9e-8b7d-4c6e-9a1b-2d3e4f5a6b7c"


@pytest.mark.parametrize("provider, path, headers, body, expected", [
    # Anthropic / Claude Code
    ("anthropic", "/v1/messages", [("X-Claude-Code-Session-Id", UUID)],
     {"metadata": {"user_id": json.dumps({"session_id": "other"})}}, UUID),
    ("anthropic", "/v1/messages", [],
     {"metadata": {"user_id": json.dumps({"device_id": "d1", "account_uuid": "a", "session_id": UUID})}}, UUID),
    ("anthropic", "/v1/messages", [],
     {"metadata": {"user_id": f"user_abc123_account_{UUID}_session_{UUID}"}}, UUID),
    ("anthropic", "/v1/messages", [], {"metadata": {"user_id": "plain-user"}}, None),
    ("anthropic", "/v1/messages", [("X-Claude-Code-Session-Id", "../../etc/passwd")], {}, None),
    ("anthropic", "/v1/messages", [], {"metadata": {"user_id": "{not json"}}, None),
    # OpenAI / Codex / ChatGPT, in order of precedence
    ("openai", "/v1/threads/thread_abc/runs", [("session_id", "s1")], {}, "thread_abc"),
    ("openai", "/v1/responses", [("session_id", "codex-1"), ("x-session-id", "x")], {"user": "u"}, "codex-1"),
    ("chatgpt", "/backend-api/codex/responses", [("Session-Id", "codex-2")], {}, "codex-2"),
    ("openai", "/v1/responses", [], {"conversation": "conv_1", "previous_response_id": "resp_9"}, "conv_1"),
    ("openai", "/v1/responses", [], {"conversation": {"id": "conv_2"}}, "conv_2"),
    ("openai", "/v1/responses", [], {"previous_response_id": "resp_9", "metadata": {"session_id": "m"}},
     RESPONSE_KEY + "resp_9"),
    ("openai", "/v1/chat/completions", [("X-Session-ID", "xs")], {"metadata": {"session_id": "meta-1"}}, "meta-1"),
    ("openai", "/v1/chat/completions", [("X-Session-ID", "xs"), ("X-Client-Request-Id", "cr")], {}, "xs"),
    ("openai", "/v1/chat/completions", [("X-Client-Request-Id", "cr")], {"user": "u"}, "cr"),
    ("openai", "/v1/chat/completions", [], {"user": "user-42"}, "user-42"),
    ("openai", "/v1/chat/completions", [], {"user": "a b"}, None),
    ("openai", "/v1/chat/completions", [], {"user": "x" * 256}, None),
    ("openai", "/v1/chat/completions", [], ["not", "a", "dict"], None),
])
def test_client_session_ids(provider, path, headers, body, expected):
    assert client_session_id(provider, path, headers, body) == expected


def test_agent_names_come_from_headers():
    assert agent_name([("x-claude-code-agent-id", "agent-7")]) == "agent-7"
    assert agent_name([("X-OpenAI-Subagent", "review")]) == "review"
    assert agent_name([("x-claude-code-agent-id", "bad name")]) is None
    assert agent_name([]) is None

