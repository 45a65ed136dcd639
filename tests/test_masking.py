"""Secrets are masked: a recognisable prefix and the last 4 characters, or nothing of short ones."""

import pytest

from llmproxy.common.masking import mask_headers, mask_query, mask_text, mask_value

KEY = "sk-ant-api03-" + "x" * 80 + "abcd"


@pytest.mark.parametrize("name, value, masked", [
    ("x-api-key", KEY, "sk-ant-...abcd"),
    ("Authorization", "Bearer sk-proj-" + "y" * 40 + "wxyz", "Bearer sk-proj-...wxyz"),
    ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlc2ln", "Bearer eyJ...c2ln"),
    ("api-key", "0123456789abcdef0123456789abcdef", "...cdef"),
    ("x-goog-api-key", "AIzaSyA-" + "k" * 30 + "9876", "AIza...9876"),
    ("x-api-key", "sk-ant-short", "sk-ant-..."),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz", "Basic ..."),
    ("cookie", "__cf_bm=SECRETVALUE123; session=abcdefg", "__cf_bm=...; session=..."),
    ("set-cookie", "__cf_bm=SECRETVALUE123; Path=/; HttpOnly; Secure", "__cf_bm=...; Path=/; HttpOnly; Secure"),
    ("content-type", "application/json", "application/json"),
    ("Sec-WebSocket-Protocol", "realtime, openai-insecure-api-key.sk-proj-" + "y" * 40 + "wxyz",
     "realtime, openai-insecure-api-key.sk-proj-...wxyz"),
    ("Sec-WebSocket-Protocol", "chat, superchat", "chat, superchat"),
])
def test_secret_headers_are_masked(name, value, masked):
    assert mask_value(name, value) == masked


def test_repeated_headers_become_lists_and_are_masked():
    headers = mask_headers([("Set-Cookie", "a=1secret; Path=/"), ("Set-Cookie", "b=2secret"), ("X", "y")])
    assert headers == {"Set-Cookie": ["a=...; Path=/", "b=..."], "X": "y"}


def test_keys_in_query_strings_are_masked():
    assert mask_query("/v1/models?key=AIzaSyA" + "z" * 30 + "&x=1") == "/v1/models?key=AIza...zzzz&x=1"
    assert mask_query("/v1/messages?beta=true") == "/v1/messages?beta=true"


@pytest.mark.parametrize("text, secret", [
    ("Invalid header: 'Authorization Bearer abcdefghijklmnopqrstuvwxyz0123'", "abcdefghijklmnopqrstuvwxyz0123"),
    ("cannot use sk-proj-abcdefghijklmnopqrstuvwxyz here", "sk-proj-abcdefghijklmnopqrstuvwxyz"),
    ("GET /v1/models?key=AIzaSyA1234567890abcdefghijkl&x=1", "AIzaSyA1234567890abcdefghijkl"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ", "c2lnbmF0dXJlLXNpZ25hdHVyZQ"),
])
def test_mask_text_hides_keys_in_free_text(text, secret):
    masked = mask_text(text)
    assert secret not in masked and "..." in masked


def test_mask_text_leaves_ordinary_text_alone():
    text = "Invalid request from ip=127.0.0.1: Invalid HTTP method: 'post'"
    assert mask_text(text) == text
