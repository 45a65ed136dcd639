"""What the real Claude Code, Codex and Gemini CLIs sent (tests/corpus/, recorded by
tests/corpus/record.py) fed through the session logic: one session per client session, no fork
unless the history really diverged."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from llmproxy import providers
from llmproxy.proxy.capture import Exchange
from llmproxy.proxy.routing import resolve
from llmproxy.record.entries import EntryBuilder
from llmproxy.record.filelog import FileLogger
from llmproxy.record.multiwriter import MultiWriter
from llmproxy.record.sessionlog import SessionLog
from llmproxy.record.sessions import SessionStore

CORPUS = Path(os.environ.get("LLM_PROXY_CORPUS", Path(__file__).parent / "corpus"))
RECORDINGS = sorted(CORPUS.glob("*.jsonl"))
UPSTREAM = "127.0.0.1:9"
# The API of each recording, by its client (the file name's first word).
PROVIDERS = {"claude": "anthropic", "codex": "openai", "gemini": "gemini", "bedrock": "bedrock"}


def provider_of(path: Path) -> str:
    return PROVIDERS[path.stem.split("-", 1)[0]]


def recording(name: str) -> list[dict]:
    path = CORPUS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"no recording {path.name} in {CORPUS}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def client_session(provider: str, request: dict) -> str | None:
    """The session the client names (a header, a body field) or, for Gemini CLI, its first turn."""
    return providers.client_session_id(provider, request["path"].split("?")[0], list(request["headers"].items()),
                                       request["body"])


class Replay:
    """The proxy's session logic on a temp log dir, fed recorded requests."""

    def __init__(self, log_dir: Path, provider: str):
        self.log_dir = log_dir
        self.provider = provider
        self.log = SessionLog(SessionStore(log_dir / "sessions.db"), MultiWriter(FileLogger(log_dir), None, None),
                              EntryBuilder("test@corpus"))

    def send(self, request: dict) -> Exchange | None:
        route = resolve(f"/{self.provider}/{UPSTREAM}{request['path']}", None, ("127.0.0.1",))
        if not route.conversation:
            return None
        body = json.dumps(request["body"]).encode() if request["body"] is not None else b""
        exchange = Exchange(route=route, method=request["method"], path=request["path"],
                            request_headers=list(request["headers"].items()), request_body=body)
        self.log.log_request(exchange)
        exchange.got_headers(200, [("Content-Type", "application/json")], sse=False)
        exchange.got_data(b"{}")
        exchange.finish()
        self.log.log_response(exchange)
        return exchange

    def files(self) -> dict[str, list[dict]]:
        return {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
                for p in self.log_dir.glob("*/*/*.jsonl")}


@pytest.mark.skipif(not RECORDINGS, reason=f"no recordings in {CORPUS}")
@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_a_recorded_client_session_is_one_session_without_forks(tmp_path, path):
    requests_ = [json.loads(line) for line in path.read_text().splitlines()]
    provider = provider_of(path)
    replay = Replay(tmp_path, provider)
    sent = [r for r in requests_ if replay.send(r) is not None]
    assert sent, "the recording holds conversation calls"

    files = replay.files()
    named = {client_session(provider, r) for r in sent} - {None}
    assert named, "the client named its session"
    by_client = {}
    for session, entries in files.items():
        by_client.setdefault(entries[0].get("client_session_id"), []).append(session)
    for client in named:
        assert len(by_client.get(client, [])) == 1, f"client session {client} spread over {by_client.get(client)}"
        entries = files[by_client[client][0]]
        assert [e for e in entries if e["type"] == "fork"] == []
        assert all(e["_meta"]["client_session_id"] == client for e in entries)
        assert [e["seq"] for e in entries if e["type"] == "request"] == list(
            range(1, 1 + sum(client_session(provider, r) == client for r in sent)))


def _last_conversation_call(requests_: list[dict]) -> dict:
    return [r for r in requests_ if r["body"] and len(r["body"].get(_turns_key(r["body"])) or []) > 2][-1]


def _turns_key(body: dict) -> str:
    return next((key for key in ("messages", "contents") if key in body), "input")


# A new user message and an answer in each API's spelling.
USER = {"messages": lambda text: {"role": "user", "content": [{"type": "text", "text": text,
                                                                 "cache_control": {"type": "ephemeral"}}]},
        "input": lambda text: {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        "contents": lambda text: {"role": "user", "parts": [{"text": text}]}}
REPLY = {"messages": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
         "input": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
         "contents": {"role": "model", "parts": [{"text": "ok"}]}}


def _rewind(body: dict, keep: int, text: str) -> dict:
    body = copy.deepcopy(body)
    key = _turns_key(body)
    new = USER[key](text)
    body[key] = body[key][:keep] + [new]
    return body


def _edit(body: dict, index: int, text: str) -> dict:
    body = copy.deepcopy(body)
    turns = body[_turns_key(body)]
    turns[index]["content"] = text
    return body


@pytest.mark.parametrize("name, diverge, from_seq", [
    # claude-4-turns (Claude Code 2.1.332): seq 1 [q1 s], 2 [q1 s a1 q2], 3 [.. q3], 4 [.. q4]; its
    # system message s is no turn
    ("claude-4-turns", lambda b: _rewind(b, 3, "Something else entirely."), 1),   # after a1: shares q1 a1
    ("claude-4-turns", lambda b: _edit(b, 5, "Question 3, edited."), 2),          # q3 edited
    # codex-3-turns: seq 1 [.. q1], 2 [.. q1 a1 q2], 3 [.. q3]
    ("codex-3-turns", lambda b: _rewind(b, -3, "No, do this instead."), 1),       # keeps q1 a1, drops q2
    # gemini-3-turns: per turn a routing call and the answer, the same history: seq 2 [q1], 4 [q1 a1 q2], 6 [.. q3]
    ("gemini-3-turns", lambda b: _rewind(b, 2, "No, do this instead."), 2),       # after a1: shares q1 a1
], ids=["claude-rewind", "claude-edit", "codex-rewind", "gemini-rewind"])
def test_a_real_divergence_forks_inside_the_client_session(tmp_path, name, diverge, from_seq):
    requests_ = recording(name)
    replay = Replay(tmp_path, PROVIDERS[name.split("-", 1)[0]])
    for request in requests_:
        replay.send(request)
    last = _last_conversation_call(requests_)
    branch = {**last, "body": diverge(last["body"])}
    replay.send(branch)
    # The branch goes on: no second fork.
    key = _turns_key(branch["body"])
    more = copy.deepcopy(branch)
    more["body"][key] += [REPLY[key], USER[key]("and now?")]
    replay.send(more)

    (session, entries), = replay.files().items()
    forks = [e for e in entries if e["type"] == "fork"]
    assert len(forks) == 1
    fork = forks[0]
    assert fork["from_seq"] == from_seq and fork["parent_session"] == session
    assert fork["thread"] != fork["from_thread"]
    requests_logged = [e for e in entries if e["type"] == "request"]
    assert [e["_meta"]["thread"] for e in requests_logged[-2:]] == [fork["thread"]] * 2
    assert entries.index(fork) == entries.index(requests_logged[-2]) - 1
