"""Client traffic for the crash test and the soak: conversations shaped like real clients'.

A :class:`Conversation` is one client session of a few turns, each turn resending the history
(as Claude Code and the SDKs do) under a session id of the client's own (Claude Code's
``X-Claude-Code-Session-Id``, Codex's ``session_id``). Every message carries the conversation's
``marker``, so a check can find which session files hold its lines. A turn that fails because
the worker serving it died is tried again, the way the clients retry a reset connection.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

import requests

KINDS = ("anthropic-json", "anthropic-sse", "chat-sse", "responses-sse")
RETRIES = 20


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    calls: int = 0
    failed: int = 0          # attempts that got no whole answer (a dead worker, mostly)
    abandoned: int = 0       # streams the client left on purpose
    conversations: int = 0
    markers: dict[str, str] = field(default_factory=dict)  # marker → kind
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


@dataclass
class Conversation:
    kind: str
    marker: str
    turns: int
    padding: int = 0            # bytes of context in the first message (1 MB: a long session)
    abandon_turn: int | None = None  # this turn's stream is read a little, then dropped
    events: int = 8
    delay_ms: int = 5

    def path(self, upstream: str) -> str:
        if self.kind.startswith("anthropic"):
            return f"/anthropic/{upstream}/v1/messages"
        if self.kind == "chat-sse":
            return f"/openai/{upstream}/v1/chat/completions"
        return f"/openai/{upstream}/v1/responses"

    def headers(self) -> dict[str, str]:
        own = {"x-fake-events": str(self.events), "x-fake-delay-ms": str(self.delay_ms),
               "Content-Type": "application/json"}
        if self.kind.startswith("anthropic"):
            return {**own, "X-Claude-Code-Session-Id": self.marker, "anthropic-version": "2023-06-01"}
        return {**own, "session_id": self.marker}

    def body(self, history: list[dict], turn: int) -> bytes:
        text = f"{self.marker} turn {turn}: say something"
        if turn == 0 and self.padding:
            text += " " + "x" * self.padding
        messages = history + [{"role": "user", "content": text}]
        stream = self.kind != "anthropic-json"
        if self.kind == "responses-sse":
            return json.dumps({"model": "gpt-fake", "input": messages, "stream": True}).encode()
        doc = {"model": "claude-fake" if self.kind.startswith("anthropic") else "gpt-fake",
               "messages": messages, "stream": stream}
        if self.kind.startswith("anthropic"):
            doc["max_tokens"] = 64
        return json.dumps(doc).encode()

    def run(self, session: requests.Session, base_url: str, upstream: str, tally: Tally,
            stop: threading.Event | None = None, think: float = 0.0, rng: random.Random | None = None) -> None:
        with tally.lock:
            tally.markers[self.marker] = self.kind
        tally.add(conversations=1)
        history: list[dict] = []
        for turn in range(self.turns):
            if stop is not None and stop.is_set():
                return
            body = self.body(history, turn)
            for _ in range(RETRIES):
                tally.add(calls=1)
                if self._call(session, base_url + self.path(upstream), body, turn == self.abandon_turn, tally):
                    break
                tally.add(failed=1)
                time.sleep(0.05)
            history = json.loads(body).get("messages") or json.loads(body)["input"]
            history = history + [{"role": "assistant", "content": "Hello from the fake provider."}]
            if think:
                time.sleep(think * (0.5 + (rng or random).random()))

    def _call(self, session: requests.Session, url: str, body: bytes, abandon: bool, tally: Tally) -> bool:
        try:
            with session.post(url, data=body, headers=self.headers(), stream=True, timeout=60) as resp:
                if abandon:
                    next(resp.iter_content(64), None)
                    tally.add(abandoned=1)
                    resp.raw.close()  # the client goes away mid-stream
                    return True
                data = resp.content
                return resp.status_code == 200 and bool(data)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.Timeout):
            session.close()  # a fresh connection for the retry, as clients do after a reset
            return False


def random_conversation(rng: random.Random, marker: str, big_share: float = 0.1,
                        abandon_share: float = 0.1) -> Conversation:
    """A conversation of the soak's mix: 3 to 8 turns of one kind, some with 1 MB of context,
    some streams left half-read."""
    kind = rng.choice(KINDS)
    turns = rng.randint(3, 8)
    padding = 1024 * 1024 if rng.random() < big_share else 0
    abandon = rng.randrange(turns) if kind != "anthropic-json" and rng.random() < abandon_share else None
    return Conversation(kind, marker, turns, padding, abandon, events=rng.randint(5, 30), delay_ms=rng.randint(2, 15))
