"""Encoded bodies through the real proxy: relayed as sent, readable in the file and in Loki."""

import base64
import gzip
import json
import uuid
import zlib

import brotli
import pytest
import requests
import zstandard
from contentcoding import encode, header_value
from fakeloki import FakeLoki
from fakeprovider import FakeProvider
from proxyproc import ProxyServer, jsonl_lines, wait_until

STACKS = ["gzip", "deflate", "deflate-raw", "br", "zstd", "gzip, br", "br, zstd"]

# Independent of the proxy's decoder: the client's view of what came over the wire.
_UNDO = {"gzip": gzip.decompress, "deflate": zlib.decompress,
         "deflate-raw": lambda d: zlib.decompress(d, -15), "br": brotli.decompress,
         "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d)}


def undo(data: bytes, stack: str) -> bytes:
    for coding in reversed(stack.split(", ")):
        data = _UNDO[coding](data)
    return data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    loki, fake = FakeLoki().start(), FakeProvider().start()
    server = ProxyServer(tmp_path_factory.mktemp("encoded"), env={
        "LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
        "LLM_PROXY_LOKI_BATCH_WAIT": "100ms"}).start()
    yield server, fake, loki
    server.stop()
    fake.stop()
    loki.down()


def logged(server, loki, marker: str, count: int = 2) -> tuple[list[dict], list[dict]]:
    """The entries holding ``marker``, from the session files and from Loki, in file order."""
    def in_files():
        found = [json.loads(line) for path in server.log_dir.glob("*/*/*.jsonl")
                 for line in jsonl_lines(path) if marker in line]
        return found if len(found) >= count else None

    def in_loki():
        found = [json.loads(line) for line in loki.lines() if marker in line]
        return found if len(found) >= count else None

    return (wait_until(in_files, timeout=10, message="file entries"),
            wait_until(in_loki, timeout=10, message="Loki lines"))


def session_entries(server, session: str) -> list[dict]:
    path, = server.log_dir.glob(f"*/*/{session}.jsonl")
    return [json.loads(line) for line in jsonl_lines(path)]


@pytest.mark.parametrize("stack", STACKS)
def test_an_encoded_json_answer_is_relayed_as_sent_and_logged_decoded(setup, stack):
    server, fake, loki = setup
    marker = f"model-{uuid.uuid4()}"
    with requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages", json={"model": marker},
                       headers={"x-fake-encoding": stack}, stream=True) as resp:
        wire = resp.raw.read(decode_content=False)
    assert resp.headers["Content-Encoding"] == header_value(stack)
    assert json.loads(undo(wire, stack))["model"] == marker

    files, lines = logged(server, loki, marker)
    for entries in (files, lines):
        response = next(e for e in entries if e["type"] == "response")
        assert json.loads(response["body"])["model"] == marker
        assert response["size"] == len(wire) and "body_decode_error" not in response


@pytest.mark.parametrize("stack", STACKS)
def test_an_encoded_event_stream_is_logged_event_by_event_with_arrival_times(setup, stack):
    server, fake, loki = setup
    marker = f"model-{uuid.uuid4()}"
    with requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages",
                       json={"model": marker, "stream": True},
                       headers={"x-fake-encoding": stack, "x-fake-delay-ms": "20"}, stream=True) as resp:
        wire = resp.raw.read(decode_content=False)
    events = undo(wire, stack)
    assert events.startswith(b"event: message_start")

    files, lines = logged(server, loki, marker)
    for entries in (files, lines):
        response = next(e for e in entries if e["type"] == "response")
        chunks = response["chunks"]
        assert "".join(c["raw"] for c in chunks).encode() == events
        assert [c["raw"].split("\n")[0] for c in chunks][:3] == [
            "event: message_start", "event: content_block_start", "event: ping"]
        # Each event was sent 20 ms after the one before: its time is its own, not the stream's end.
        # On a loaded machine two events can come in one read (one delta large, the next 0), so
        # the check is on the spread: the stream's end stamped on every event would spread none.
        assert sum(c["delta_ms"] for c in chunks[1:]) >= 10 * (len(chunks) - 1)
        assert "body" not in response


def test_a_zstd_request_body_from_codex_is_relayed_as_sent_and_finds_its_session(setup):
    server, fake, loki = setup
    codex_session = str(uuid.uuid4())
    sessions = set()
    for turn in (1, 2):
        body = json.dumps({"model": "gpt-5-codex", "prompt_cache_key": codex_session, "stream": False,
                           "input": [{"type": "message", "role": "user",
                                      "content": [{"type": "input_text", "text": f"turn {t}"}]}
                                     for t in range(1, turn + 1)]}).encode()
        wire = encode(body, "zstd")
        resp = requests.post(f"{server.url}/openai/{fake.upstream}/v1/responses", data=wire,
                             headers={"Content-Encoding": "zstd", "Content-Type": "application/json",
                                      "Session-Id": codex_session})
        assert resp.status_code == 200
        assert fake.last().body == wire
        files, lines = logged(server, loki, f"turn {turn}", count=1)
        for entries in (files, lines):
            request = [e for e in entries if e["type"] == "request"][-1]
            assert json.loads(request["body"])["prompt_cache_key"] == codex_session
            assert request["size"] == len(wire)
            sessions.add(request["_meta"]["session"])
    session, = sessions
    entries = session_entries(server, session)
    assert entries[0]["client_session_id"] == codex_session
    assert [e["type"] for e in entries].count("fork") == 0
    # docs/loki.rst's one line for everything of a client session, by the id the client shows.
    query = (f'{{app="llm-proxy"}} |= "{codex_session}" | json client="_meta.client_session_id"'
             f' | client="{codex_session}"')

    def found():
        doc = requests.get(f"{loki.url}/loki/api/v1/query_range", params={"query": query, "limit": 100}).json()
        lines = sorted(line for s in doc["data"]["result"] for _, line in s["values"])
        return lines if len(lines) == len(entries) else None

    lines = wait_until(found, timeout=10, message="the client session in Loki")
    path, = server.log_dir.glob(f"*/*/{session}.jsonl")
    assert lines == sorted(jsonl_lines(path))


def test_a_body_that_does_not_decode_is_logged_raw_with_the_reason(setup):
    server, fake, loki = setup
    marker = uuid.uuid4().bytes
    wire = b"\xff\x00 not brotli " + marker
    requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages", data=wire,
                  headers={"Content-Encoding": "br"})
    files, lines = logged(server, loki, base64.b64encode(wire)[:16].decode(), count=1)
    for entries in (files, lines):
        request = entries[0]
        assert request["body_encoding"] == "base64" and base64.b64decode(request["body"]) == wire
        assert request["body_decode_error"].startswith("br: ")
