"""What a call cost: token counts under shared names, priced with genai-prices (llmproxy/pricing/),
and written into the response entry with the client that asked.

The judge is genai-prices itself: its own usage extractor and ``calc_price`` on the usage the
fake provider sent must give what the proxy logged.
"""

from __future__ import annotations

import json
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

import genai_prices
import pytest
from genai_prices import calc_price, extract_usage
from genai_prices.data import providers as price_lists
from proxyproc import jsonl_lines, wait_until

from llmproxy import providers
from llmproxy.pricing import prices
from llmproxy.providers.clients import client_name
from llmproxy.providers.summary import Counts

ANTHROPIC = ("anthropic", "/v1/messages")
CHAT = ("openai", "/v1/chat/completions")
RESPONSES = ("openai", "/v1/responses")
GEMINI = ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent")
BEDROCK = ("bedrock", "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke")
CONVERSE = ("bedrock", "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse")

ANTHROPIC_USAGE = {"input_tokens": 7, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 48000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
                   "output_tokens": 321, "server_tool_use": {"web_search_requests": 2}, "service_tier": "standard"}
CHAT_USAGE = {"prompt_tokens": 5000, "completion_tokens": 40, "total_tokens": 5040,
              "prompt_tokens_details": {"cached_tokens": 4096, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
RESPONSES_USAGE = {"input_tokens": 10472, "input_tokens_details": {"cached_tokens": 9984}, "output_tokens": 213,
                   "output_tokens_details": {"reasoning_tokens": 128}, "total_tokens": 10685}


@pytest.mark.parametrize("route, usage, expected", [
    (ANTHROPIC, ANTHROPIC_USAGE, Counts(input=7, output=321, cache_write=2000, cache_read=48000, cache_write_1h=500,
                                        web_searches=2)),
    (ANTHROPIC, {"input_tokens": 12, "output_tokens": 6}, Counts(input=12, output=6)),
    (ANTHROPIC, {"output_tokens": 6}, None),  # the input side never came: nothing to count
    (CHAT, CHAT_USAGE, Counts(input=904, output=40, cache_read=4096)),
    (CHAT, {"prompt_tokens": 9, "completion_tokens": 6}, Counts(input=9, output=6)),
    (CHAT, {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 3}},
     Counts(input=2, cache_write=3, cache_read=4)),  # a gateway that reports cache writes
    (RESPONSES, RESPONSES_USAGE, Counts(input=488, output=213, cache_read=9984)),  # reasoning is output
    (RESPONSES, {"input_tokens": None}, None),
    (RESPONSES, {"input_tokens": 3, "input_tokens_details": "odd"}, Counts(input=3)),
    # Gemini: promptTokenCount counts the cached part too; a tool's prompt is input, thinking output
    (GEMINI, {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "toolUsePromptTokenCount": 10,
              "candidatesTokenCount": 40, "thoughtsTokenCount": 100}, Counts(input=914, output=140, cache_read=4096)),
    (GEMINI, {"promptTokenCount": 9}, Counts(input=9)),
    (GEMINI, {"totalTokenCount": 9}, None),
    (BEDROCK, ANTHROPIC_USAGE, Counts(input=7, output=321, cache_write=2000, cache_read=48000, cache_write_1h=500,
                                      web_searches=2)),  # invoke: Anthropic's usage
    (CONVERSE, {"inputTokens": 10, "outputTokens": 3, "cacheReadInputTokens": 4, "cacheWriteInputTokens": 1},
     Counts(input=10, output=3, cache_write=1, cache_read=4)),  # Converse's input is the uncached part
])
def test_token_counts_share_names_across_apis(route, usage, expected):
    counts = providers.token_counts(providers.api_for(*route), usage)
    assert counts == expected
    if counts is not None:
        assert counts.fields() == {"input": expected.input, "output": expected.output,
                                   "cache_write": expected.cache_write, "cache_read": expected.cache_read}


def test_token_counts_never_raise():
    api = providers.api_for(*ANTHROPIC)
    assert providers.token_counts(api, {"input_tokens": 1, "cache_creation": [], "server_tool_use": 7}) == Counts(1)
    assert providers.token_counts(api, "usage") is None
    assert providers.token_counts(None, {"input_tokens": 1}) is None


USAGES = [Counts(input=10, output=5), Counts(input=3, output=700, cache_write=2000, cache_read=150000),
          Counts(input=250000, output=10, cache_write=5000, cache_read=10, cache_write_1h=3000, web_searches=2),
          Counts(input=0, output=0), Counts(input=1, output=1, cache_write=10, cache_write_1h=20)]


def test_every_anthropic_and_openai_model_costs_what_genai_prices_says():
    """The fast way (prices looked up once per model, units priced here) against genai-prices'
    ``calc_price`` for every model of both lists, now and at the start of 2025 (prices change)."""
    price_list = prices.PriceList()
    compared = fast = 0
    wrong = []
    for when in (datetime.now(timezone.utc), datetime(2025, 1, 15, tzinfo=timezone.utc)):
        for provider in (p for p in price_lists if p.id in ("anthropic", "openai")):
            for model in provider.models:
                for counts in USAGES:
                    ours = price_list.cost(counts, model.id, "gateway.example", provider.id, when)
                    try:
                        theirs = calc_price(prices.usage(counts), model.id, provider_id=provider.id,
                                            genai_request_timestamp=when)
                    except (LookupError, ValueError):
                        theirs = None
                    compared += 1
                    if (ours is None) != (theirs is None) or \
                            ours is not None and ours.total != pytest.approx(float(theirs.total_price), abs=1e-15):
                        wrong.append((model.id, counts, ours, theirs and theirs.total_price))
                    fast += any(rates.fast for rates in price_list._rates.values())
    assert wrong == []
    assert compared > 800 and fast  # the fast way was taken


def test_parts_add_up_to_the_total():
    cost = prices.PriceList().cost(USAGES[2], "claude-opus-4-1", "api.anthropic.com", "anthropic",
                                   datetime.now(timezone.utc))
    searches = 2 * 10 / 1000  # $10 per 1,000 web searches: in the total only
    assert cost.input + cost.output + cost.cache_write + cost.cache_read + searches == pytest.approx(cost.total)


def test_a_part_the_model_has_no_price_for_is_left_out():
    """OpenAI prices no cache writes: the entry has no ``cache_write`` part."""
    cost = prices.cost(Counts(input=100, output=10, cache_read=50), "gpt-4o-mini", "api.openai.com", "openai", 0.0)
    assert cost.cache_write is None and "cache_write" not in cost.fields()
    assert set(cost.fields()) == {"total", "input", "output", "cache_read", "source"}


@pytest.mark.parametrize("model, upstream, priced_as", [
    ("fake-model", "127.0.0.1:9", "openai"),
    ("claude-sonnet-4-5", "127.0.0.1:9", None),  # an API without a price list
    (None, "api.anthropic.com", "anthropic"),
])
def test_no_price_no_cost(model, upstream, priced_as):
    assert prices.cost(Counts(input=1, output=1), model, upstream, priced_as, 0.0) is None


def test_the_upstream_host_picks_the_price_list_before_the_api_does():
    """A call to a host genai-prices knows is priced by that host's list; any other host (a
    local gateway, the ChatGPT backend) by the list its API names."""
    price_list = prices.PriceList()
    assert price_list.model("claude-sonnet-4-5", "api.anthropic.com", "openai")[0].id == "anthropic"
    assert price_list.model("gpt-5-codex", "chatgpt.com", "openai")[0].id == "openai"
    assert price_list.model("gpt-5-codex", "127.0.0.1:8080", "openai")[0].id == "openai"



def test_the_lookups_remembered_are_bounded():
    """Model names come from the traffic: a client naming ever new ones does not grow a worker."""
    price_list = prices.PriceList()
    for n in range(prices.MODELS_KEPT + 10):
        assert price_list.cost(Counts(input=10), f"no-such-model-{n}", "api.anthropic.com", "anthropic",
                               datetime(2026, 11, 1, tzinfo=timezone.utc)) is None
    assert len(price_list._models) <= prices.MODELS_KEPT
    assert price_list.cost(Counts(input=1000), "claude-haiku-4-5", "api.anthropic.com", "anthropic",
                           datetime(2026, 11, 1, tzinfo=timezone.utc)).total > 0


def test_pricing_never_reaches_the_network(monkeypatch):
    """Only the bundled data: no connection is tried, genai-prices' updater never starts."""
    def refuse(*args):
        raise AssertionError(f"pricing tried the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cost = prices.PriceList().cost(Counts(input=1000, output=10), "claude-haiku-4-5", "api.anthropic.com",
                                   "anthropic", datetime.now(timezone.utc))
    assert cost.total > 0
    from genai_prices import data_snapshot, update_prices
    assert update_prices._shared_updater.thread is None and data_snapshot._custom_snapshot is None


@pytest.mark.parametrize("user_agent, name", [
    ("claude-cli/2.1.197 (external, sdk-cli)", "claude-code"),
    ("codex_exec/0.171.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.171.0)", "codex"),
    ("codex_cli_rs/0.46.0 (Ubuntu 22.4.0; x86_64) xterm-256color", "codex"),
    ("GeminiCLI/0.1.5 (linux; x64)", "gemini-cli"),
    ("GeminiCLI-tui/0.61.0/gemini-3.1-pro-preview (linux; x64; terminal)", "gemini-cli"),  # tests/corpus/gemini-*
    ("google-genai-sdk/3.6.1 gl-python/3.11.7", "google-genai-python"),
    ("Boto3/1.44.18 md/Botocore#1.44.18 ua/2.1 os/linux#6.18 lang/python#3.11.7 Botocore/1.44.18", "boto3"),
    ("Anthropic/Python 0.75.0", "anthropic-sdk-python"),
    ("AsyncOpenAI/Python 2.8.1", "openai-sdk-python"),
    ("OpenAI/JS 5.1.0", "openai-sdk-js"),
    ("curl/8.14.1", "curl"),
    ("Bun/1.4.0", "bun"),
    ("python-requests/2.32.5", "python-requests"),
    ("", "unknown"),
    (None, "unknown"),
    ("  ()", "unknown"),
])
def test_the_client_is_named_from_its_user_agent(user_agent, name):
    assert client_name(user_agent) == name


# --- through the real proxy ---

def logged_answer(log_dir: Path, model: str) -> dict:
    """The response entry of the one call made with ``model``, once it is written (after the
    client has its answer)."""
    def done():
        entries = [json.loads(line) for path in sorted(log_dir.glob("*/*/*.jsonl")) for line in jsonl_lines(path)]
        return [e for e in entries if e["type"] == "response" and e.get("model") == model]

    [entry] = wait_until(done, 10, message=f"the response entry of {model}")
    return entry


def anthropic_call(base: str, upstream: str, model: str, usage: dict):
    import anthropic

    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=f"{base}/anthropic/{upstream}", max_retries=0,
                                 default_headers={"x-fake-usage": json.dumps(usage)})
    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": f"hello {uuid.uuid4()}"}]) as stream:
        stream.until_done()


def chat_call(base: str, upstream: str, model: str, usage: dict):
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=f"{base}/openai/{upstream}/v1", max_retries=0,
                           default_headers={"x-fake-usage": json.dumps(usage)})
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])


def responses_call(base: str, upstream: str, model: str, usage: dict):
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=f"{base}/openai/{upstream}/v1", max_retries=0,
                           default_headers={"x-fake-usage": json.dumps(usage)})
    with client.responses.stream(model=model, input="hello") as stream:
        stream.until_done()


@pytest.mark.parametrize("call, model, usage, price_list, flavor, client", [
    (anthropic_call, "claude-sonnet-4-5-20250929", ANTHROPIC_USAGE, "anthropic", "default", "anthropic-sdk-python"),
    (chat_call, "gpt-4o-mini-2024-07-18", CHAT_USAGE, "openai", "chat", "openai-sdk-python"),
    (responses_call, "gpt-5-codex", RESPONSES_USAGE, "openai", "responses", "openai-sdk-python"),
], ids=["anthropic-cache-write-and-read", "chat-cached-prompt", "responses-cached-and-reasoning"])
def test_the_logged_cost_is_genai_prices_own_result(proxy, fake_provider, call, model, usage, price_list, flavor,
                                                     client):
    """The SDK calls through the real proxy; genai-prices reads the usage the fake sent with its
    own extractor for that API and prices it: the entry says the same, parts included."""
    call(proxy.url, fake_provider.upstream, model, usage)
    entry = logged_answer(proxy.log_dir, model)
    sent = fake_provider.sent[-1]
    assert sent.usage == usage

    theirs = extract_usage({"model": sent.model, "usage": sent.usage}, provider_id=price_list,
                           api_flavor=flavor).calc_price()
    cost = entry["cost"]
    assert cost["total"] == pytest.approx(float(theirs.total_price), rel=1e-12)
    assert cost["input"] + cost.get("cache_write", 0) + cost["cache_read"] == \
        pytest.approx(float(theirs.input_price), rel=1e-12)
    assert cost["output"] == pytest.approx(float(theirs.output_price), rel=1e-12)
    assert cost["source"] == f"genai-prices {genai_prices.__version__}"
    tokens = entry["tokens"]
    assert tokens["input"] + tokens["cache_write"] + tokens["cache_read"] == theirs_prompt(sent.usage, flavor)
    assert entry["client"] == client


def theirs_prompt(usage: dict, flavor: str) -> int:
    """Every prompt token as the API counts them."""
    if flavor == "default":
        return usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]
    return usage["prompt_tokens"] if flavor == "chat" else usage["input_tokens"]


def test_a_model_without_a_price_gets_tokens_and_no_cost(proxy, fake_provider):
    chat_call(proxy.url, fake_provider.upstream, "no-such-model-7", CHAT_USAGE)
    entry = logged_answer(proxy.log_dir, "no-such-model-7")
    assert "cost" not in entry
    assert entry["tokens"] == {"input": 904, "output": 40, "cache_write": 0, "cache_read": 4096}
