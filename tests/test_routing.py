"""Routing: /{provider}/{upstream}/{path…} to an upstream URL, the allow-list, ChatGPT sign-in."""

import pytest

from llmproxy.common.errors import BadRoute, UnknownProvider, UpstreamNotAllowed
from llmproxy.proxy.routing import host_allowed, resolve
from llmproxy.settings import DEFAULT_ALLOWED_UPSTREAMS as ALLOWED

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize("raw_uri, provider, url, conversation", [
    ("/anthropic/api.anthropic.com/v1/messages", "anthropic", "https://api.anthropic.com/v1/messages", True),
    ("/anthropic/api.anthropic.com/v1/messages?beta=true", "anthropic",
     "https://api.anthropic.com/v1/messages?beta=true", True),
    ("/anthropic/api.anthropic.com/v1/messages/count_tokens", "anthropic",
     "https://api.anthropic.com/v1/messages/count_tokens", False),
    ("/openai/api.openai.com/v1/chat/completions", "openai", "https://api.openai.com/v1/chat/completions", True),
    ("/openai/api.openai.com/v1/completions", "openai", "https://api.openai.com/v1/completions", True),
    ("/openai/api.openai.com/v1/responses", "openai", "https://api.openai.com/v1/responses", True),
    ("/openai/api.openai.com/v1/models", "openai", "https://api.openai.com/v1/models", False),
    ("/openai/api.openai.com/v1/threads/thread_abc/messages", "openai",
     "https://api.openai.com/v1/threads/thread_abc/messages", True),
    ("/openai/api.openai.com/v1/threads/thread_abc/runs/run_1/steps", "openai",
     "https://api.openai.com/v1/threads/thread_abc/runs/run_1/steps", True),
    ("/openai/chatgpt.com/backend-api/codex/responses", "openai", "https://chatgpt.com/backend-api/codex/responses", True),
    ("/anthropic/127.0.0.1:9000/v1/messages", "anthropic", "http://127.0.0.1:9000/v1/messages", True),
    ("/anthropic/localhost:9000/v1/messages", "anthropic", "http://localhost:9000/v1/messages", True),
    ("/openai/[::1]:9000/v1/chat/completions", "openai", "http://[::1]:9000/v1/chat/completions", True),
    ("/openai/%5B::1%5D:9000/v1/models", "openai", "http://[::1]:9000/v1/models", False),
    ("/anthropic/api.anthropic.com", "anthropic", "https://api.anthropic.com/", False),
    ("/anthropic/api.anthropic.com/v1/files/a%2Fb?x=%20y", "anthropic",
     "https://api.anthropic.com/v1/files/a%2Fb?x=%20y", False),
])
def test_routes(raw_uri, provider, url, conversation):
    route = resolve(raw_uri, None, ALLOWED)
    assert (route.provider, route.url, route.conversation) == (provider, url, conversation)


@pytest.mark.parametrize("authorization, provider, url", [
    (f"Bearer {JWT}", "chatgpt", "https://chatgpt.com/backend-api/codex/responses"),
    ("Bearer sk-proj-abc.def.ghi", "openai", "https://api.openai.com/v1/responses"),
    ("Bearer sk-abcdef", "openai", "https://api.openai.com/v1/responses"),
    (None, "openai", "https://api.openai.com/v1/responses"),
    (f"Basic {JWT}", "openai", "https://api.openai.com/v1/responses"),
])
def test_chatgpt_sign_in_goes_to_chatgpt_backend(authorization, provider, url):
    route = resolve("/openai/api.openai.com/v1/responses", authorization, ALLOWED)
    assert (route.provider, route.url) == (provider, url)
    assert route.conversation


def test_chatgpt_rewrite_keeps_the_query_and_other_paths():
    route = resolve("/openai/api.openai.com/models?client_version=1", f"Bearer {JWT}", ALLOWED)
    assert route.url == "https://chatgpt.com/backend-api/codex/models?client_version=1"
    assert route.upstream == "chatgpt.com"


@pytest.mark.parametrize("raw_uri, error, text", [
    ("/", BadRoute, "malformed proxy path"),
    ("/anthropic", BadRoute, "malformed proxy path"),
    ("/anthropic/", BadRoute, "malformed proxy path"),
    ("/mistral/api.mistral.ai/v1/x", UnknownProvider, "providers: anthropic, openai, gemini, bedrock"),
    ("/anthropic/bad_host!/v1/messages", BadRoute, "malformed upstream"),
    ("/anthropic/host:99999/v1/messages", BadRoute, "malformed upstream"),
    ("/anthropic/169.254.169.254/latest/meta-data", UpstreamNotAllowed, "not allowed"),
    ("/openai/internal.corp/v1/chat/completions", UpstreamNotAllowed, "LLM_PROXY_ALLOWED_UPSTREAMS"),
])
def test_bad_routes_are_refused(raw_uri, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(")) as info:
        resolve(raw_uri, None, ALLOWED)
    assert info.value.status == {BadRoute: 400, UnknownProvider: 400, UpstreamNotAllowed: 403}[error]


@pytest.mark.parametrize("host, allowed, ok", [
    ("api.example.com", ("*.example.com",), True),
    ("a.b.example.com", ("*.example.com",), True),
    ("example.com", ("*.example.com",), False),
    ("badexample.com", ("*.example.com",), False),
    ("anything.at.all", ("*",), True),
    ("API.ANTHROPIC.COM", ("api.anthropic.com",), True),
    # a "*" label: any one label there (Bedrock in every region), never more, never none
    ("bedrock-runtime.eu-west-3.amazonaws.com", ("bedrock-runtime.*.amazonaws.com",), True),
    ("bedrock-runtime.a.b.amazonaws.com", ("bedrock-runtime.*.amazonaws.com",), False),
    ("bedrock-runtime..amazonaws.com", ("bedrock-runtime.*.amazonaws.com",), False),
    ("bedrock-runtime.us-east-1.amazonaws.com.evil.com", ("bedrock-runtime.*.amazonaws.com",), False),
    ("s3.us-east-1.amazonaws.com", ("bedrock-runtime.*.amazonaws.com", "bedrock.*.amazonaws.com"), False),
])
def test_allow_list_matching(host, allowed, ok):
    assert host_allowed(host, allowed) is ok
