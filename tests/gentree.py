"""A generated log tree of realistic sessions, written by the proxy's own entry builder, for the
benchmarks and tests of the readers (catalog, usage, explorer).

What it makes, over ``days`` days:

- long Claude Code sessions (``long`` of them, ``calls`` calls each): every request re-sends the
  whole conversation (a system prompt and tool definitions of ~40 KB, then each turn's tool
  call and its result of a few KB), so late requests are megabytes; answers are SSE streams
  with cache writes and reads as Claude Code gets them;
- short sessions (``short`` of them): Codex (Responses API streams with cached input and
  reasoning tokens), the Python SDKs (JSON answers) and curl, one to eight calls;
- some calls a price list does not know (``local-model``), some errors (HTTP 429, no usage).

Every call's usage is kept in :attr:`Tree.calls` (the truth a reader's sums are checked
against). ``legacy=True`` writes entries as the proxy did before they had ``tokens``, ``cost``
and ``client``. Deterministic for a seed.

    python tests/gentree.py DIR [--long 2] [--calls 200] [--short 100] [--days 7] [--legacy] [--copies-to N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fakeprovider import anthropic_events, chat_completion, response_events  # noqa: E402

from llmproxy import providers  # noqa: E402
from llmproxy.proxy.capture import Chunk, Exchange  # noqa: E402
from llmproxy.proxy.decoding import decode  # noqa: E402
from llmproxy.proxy.routing import Route  # noqa: E402
from llmproxy.record.entries import EntryBuilder  # noqa: E402
from llmproxy.record.sessions import Assignment  # noqa: E402

MACHINE = "gen-host"
WORDS = ("the", "file", "function", "returns", "error", "test", "value", "config", "proxy", "session", "call",
         "because", "when", "fixed", "line", "import", "module", "check", "path", "data")


@dataclass
class Call:
    """One generated call: where it is and the usage its answer reported (None: no usage)."""

    session: str
    seq: int
    day: str
    upstream: str
    model: str
    client: str
    status: int
    usage: dict | None
    path: str


@dataclass
class Tree:
    log_dir: Path
    calls: list[Call] = field(default_factory=list)
    bytes: int = 0
    largest: int = 0  # the longest line: a late request of a long session

    @property
    def sessions(self) -> set[str]:
        return {c.session for c in self.calls}


def _text(rng: random.Random, n: int) -> str:
    """About ``n`` characters of prose-like text."""
    out, size = [], 0
    while size < n:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


class _Writer:
    def __init__(self, tree: Tree, legacy: bool):
        self.tree = tree
        self.builder = EntryBuilder(MACHINE)
        self.legacy = legacy
        self.files: dict[str, object] = {}

    def write(self, entry) -> None:
        line = entry.line
        if self.legacy and entry.type == "response":
            doc = json.loads(line)
            for name in ("tokens", "cost", "client"):
                doc.pop(name, None)
            line = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        path = self.tree.log_dir / entry.path
        f = self.files.get(entry.path)
        if f is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self.files[entry.path] = open(path, "ab")
        f.write(line + b"\n")
        self.tree.bytes += len(line) + 1
        self.tree.largest = max(self.tree.largest, len(line))

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def exchange(self, route: Route, headers: list[tuple[str, str]], body: bytes, started_ns: int,
                 assignment: Assignment, answer: list[bytes] | bytes, status: int = 200) -> None:
        exchange = Exchange(route, "POST", route.path, headers, body, started_ns=started_ns)
        exchange.request_summary = providers.request_summary(providers.api_for(route.provider, route.path),
                                                             json.loads(body))
        fields = self.builder.request_fields(exchange, decode(body, None))
        for entry in self.builder.request_entries(exchange, assignment, fields):
            self.write(entry)
        exchange.status = status
        at = started_ns + 400_000_000
        if isinstance(answer, list):
            exchange.response_headers = [("content-type", "text/event-stream")]
            exchange.chunks = [Chunk(at + i * 20_000_000, 20.0, raw) for i, raw in enumerate(answer)]
            exchange.size = sum(len(raw) for raw in answer)
        else:
            exchange.response_headers = [("content-type", "application/json")]
            exchange.body = bytearray(answer)
            exchange.size = len(answer)
        exchange.ttfb_ms, exchange.total_ms = 400.0, 400.0 + 20.0 * (len(answer) if isinstance(answer, list) else 1)
        self.write(self.builder.response_entry(exchange, assignment, at + int(exchange.total_ms * 1e6)))


def _route(provider: str, upstream: str, path: str) -> Route:
    return Route(provider, upstream, upstream.split(":")[0], f"https://{upstream}{path}", path, True)


def _session_id(rng: random.Random, when: datetime) -> str:
    return f"{when:%Y%m%d-%H%M%S}-{rng.getrandbits(32):08x}"


def _claude_code(writer: _Writer, rng: random.Random, when: datetime, calls: int, upstream: str) -> None:
    """A long Claude Code session: the conversation grows by a tool call and its result each turn."""
    session = _session_id(rng, when)
    model = rng.choice(("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805"))
    system = [{"type": "text", "text": _text(rng, 15_000)}]
    tools = [{"name": f"Tool{i}", "description": _text(rng, 800),
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}} for i in range(30)]
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": _text(rng, 400)}]}]
    headers = [("user-agent", "claude-cli/2.1.197 (external, cli)"), ("content-type", "application/json"),
               ("x-api-key", "sk-ant-api03-generated-key-xxxx"), ("x-claude-code-session-id", session[-8:] + "-cc")]
    route = _route("anthropic", upstream, "/v1/messages")
    cached = 0
    for seq in range(1, calls + 1):
        body = json.dumps({"model": model, "max_tokens": 32000, "stream": True, "system": system, "tools": tools,
                           "messages": messages}).encode()
        prompt = len(body) // 4
        usage = {"input_tokens": rng.randint(1, 12), "cache_creation_input_tokens": max(prompt - cached, 0),
                 "cache_read_input_tokens": min(cached, prompt), "output_tokens": rng.randint(40, 900),
                 "cache_creation": {"ephemeral_5m_input_tokens": max(prompt - cached, 0),
                                    "ephemeral_1h_input_tokens": 0}}
        cached = prompt
        tool = ("Bash", {"command": f"grep -rn {rng.choice(WORDS)} ."})
        words = [" " + w for w in _text(rng, 300).split()]
        started = when + timedelta(seconds=20 * seq)
        assignment = Assignment(session, seq, upstream, started_session=seq == 1, client_id=session[-8:] + "-cc")
        writer.exchange(route, headers, body, int(started.timestamp() * 1e9), assignment,
                        anthropic_events(words, model, tool, f"g{seq:04d}", usage))
        writer.tree.calls.append(Call(session, seq, f"{started:%Y-%m-%d}", upstream, model, "claude-code", 200,
                                      usage, route.path))
        # The ids the answer's stream gave its tool call (fakeprovider: toolu_{ident}): each result
        # names its call, as with a real client.
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "".join(words)},
            {"type": "tool_use", "id": f"toolu_g{seq:04d}", "name": tool[0], "input": tool[1]}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_g{seq:04d}", "content": _text(rng, rng.randint(1000, 6000))}]})


def _short(writer: _Writer, rng: random.Random, when: datetime, upstreams: dict[str, str]) -> None:
    """A short session of Codex, an SDK or curl."""
    session = _session_id(rng, when)
    kind = rng.choice(("codex", "codex", "openai-sdk", "anthropic-sdk", "curl", "local"))
    calls = rng.randint(1, 8)
    for seq in range(1, calls + 1):
        started = when + timedelta(seconds=7 * seq)
        assignment = Assignment(session, seq, "", started_session=seq == 1)
        prompt = _text(rng, rng.randint(200, 4000))
        status, usage = 200, None
        if kind == "codex":
            upstream, model = upstreams["chatgpt"], "gpt-5-codex"
            route = _route("chatgpt", upstream, "/backend-api/codex/responses")
            headers = [("user-agent", "codex_cli_rs/0.171.0 (Debian 12.0.0; x86_64) xterm")]
            body = json.dumps({"model": model, "stream": True, "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}]}).encode()
            total = len(body) // 4 + 3000
            usage = {"input_tokens": total, "input_tokens_details": {"cached_tokens": total // 2 // 64 * 64},
                     "output_tokens": rng.randint(20, 800), "output_tokens_details": {"reasoning_tokens": 64},
                     "total_tokens": 0}
            answer = response_events(["Done", "."], model, f"resp_{session}_{seq}", usage=usage)
        elif kind in ("openai-sdk", "local"):
            upstream = upstreams["openai" if kind == "openai-sdk" else "local"]
            model = "gpt-4o-mini" if kind == "openai-sdk" else "local-model"
            route = _route("openai", upstream, "/v1/chat/completions")
            headers = [("user-agent", "OpenAI/Python 2.8.1")]
            body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()
            usage = {"prompt_tokens": len(body) // 4, "completion_tokens": rng.randint(5, 300),
                     "prompt_tokens_details": {"cached_tokens": 0}}
            if rng.random() < 0.1:
                status, usage = 429, None
                answer = json.dumps({"error": {"message": "rate limited", "type": "rate_limit_exceeded"}}).encode()
            else:
                answer = json.dumps(chat_completion("ok", model, usage)).encode()
        else:
            upstream, model = upstreams["anthropic"], "claude-haiku-4-5-20251001"
            route = _route("anthropic", upstream, "/v1/messages")
            headers = [("user-agent", "Anthropic/Python 0.75.0" if kind == "anthropic-sdk" else "curl/8.14.1")]
            body = json.dumps({"model": model, "max_tokens": 512, "messages": [
                {"role": "user", "content": prompt}]}).encode()
            usage = {"input_tokens": len(body) // 4, "output_tokens": rng.randint(5, 300)}
            answer = json.dumps({"id": "msg_gen", "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                 "usage": usage}).encode()
        assignment.upstream = upstream
        writer.exchange(route, headers, body, int(started.timestamp() * 1e9), assignment, answer, status)
        client = {"codex": "codex", "openai-sdk": "openai-sdk-python", "local": "openai-sdk-python",
                  "anthropic-sdk": "anthropic-sdk-python", "curl": "curl"}[kind]
        writer.tree.calls.append(Call(session, seq, f"{started:%Y-%m-%d}", upstream, model, client, status, usage,
                                      route.path))


def generate(log_dir: Path, long: int = 2, calls: int = 200, short: int = 100, days: int = 7, seed: int = 1,
             legacy: bool = False, end: datetime | None = None) -> Tree:
    """Write the sessions under ``log_dir`` (added to what is there) and say what they hold."""
    rng = random.Random(seed)
    end = end or datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=days)
    upstreams = {"anthropic": "api.anthropic.com", "openai": "api.openai.com", "chatgpt": "chatgpt.com",
                 "local": "127.0.0.1:8000"}
    tree = Tree(Path(log_dir))
    writer = _Writer(tree, legacy)
    try:
        for i in range(long):
            when = start + timedelta(seconds=rng.randint(0, days * 86400 - 20 * calls - 60))
            _claude_code(writer, rng, when, calls, upstreams["anthropic"])
        for _ in range(short):
            _short(writer, rng, start + timedelta(seconds=rng.randint(0, days * 86400 - 120)), upstreams)
    finally:
        writer.close()
    return tree


def clone(log_dir: Path, count: int, seed: int = 1) -> int:
    """Copies of the tree's session files under new session ids (same day), until it holds
    ``count`` sessions: for figures that depend on how many files there are, not on what they
    hold (the lines keep their first session's ids). The number of sessions made."""
    import shutil

    rng = random.Random(seed)
    originals = sorted(Path(log_dir).glob("*/*/*.jsonl"))
    made = 0
    while originals and len(originals) + made < count:
        source = originals[made % len(originals)]
        name = f"{source.name[:16]}{rng.getrandbits(32):08x}.jsonl"
        shutil.copyfile(source, source.with_name(name))
        made += 1
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--long", type=int, default=2, help="long Claude Code sessions (default 2)")
    parser.add_argument("--calls", type=int, default=200, help="calls per long session (default 200)")
    parser.add_argument("--short", type=int, default=100, help="short sessions (default 100)")
    parser.add_argument("--days", type=int, default=7, help="days the sessions spread over (default 7)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--legacy", action="store_true", help="entries without tokens, cost and client")
    parser.add_argument("--copies-to", type=int, metavar="N", help="then copy session files until there are N")
    args = parser.parse_args(argv)
    tree = generate(args.log_dir, args.long, args.calls, args.short, args.days, args.seed, args.legacy)
    print(f"{len(tree.sessions)} sessions, {len(tree.calls)} calls, {tree.bytes / 2**20:.1f} MiB in {args.log_dir}")
    if args.copies_to:
        print(f"{clone(args.log_dir, args.copies_to, args.seed)} copies of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
