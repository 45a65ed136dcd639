"""Recorded-looking Claude Code request bodies: system prompt, tools, tool_use / tool_result turns.

Like Claude Code, each request carries the whole history and moves the ``cache_control`` marker
to the newest message, so earlier messages change shape while meaning the same.
"""

from __future__ import annotations

import copy
import json
import uuid

MODEL = "claude-sonnet-4-5-20250929"
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
     "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering "
                             "tasks. Use the instructions below and the tools available to you.\n" * 20,
     "cache_control": {"type": "ephemeral"}},
]
TOOLS = [
    {"name": "Bash", "description": "Executes a given bash command in a persistent shell session.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                       "timeout": {"type": "number"}},
                      "required": ["command"], "additionalProperties": False}},
    {"name": "Read", "description": "Reads a file from the local filesystem.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                      "required": ["file_path"]}},
    {"name": "Edit", "description": "Performs exact string replacements in files.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                       "old_string": {"type": "string"},
                                                       "new_string": {"type": "string"}},
                      "required": ["file_path", "old_string", "new_string"]}},
]


def user_text(text: str) -> dict:
    return {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use "
                                 "the following context: the repository is a Flask app.\n</system-reminder>"},
        {"type": "text", "text": text}]}


def assistant_tool_use(n: int, command: str) -> dict:
    return {"role": "assistant", "content": [
        {"type": "text", "text": f"Let me check that (step {n})."},
        {"type": "tool_use", "id": f"toolu_01{n:04d}", "name": "Bash", "input": {"command": command}}]}


def tool_result(n: int, output: str) -> dict:
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": f"toolu_01{n:04d}", "content": output}]}


def conversation(turns: int, prompt: str = "Fix the failing test in tests/test_app.py") -> list[dict]:
    """``turns`` exchanges' worth of history: the prompt, then tool_use / tool_result pairs."""
    messages = [user_text(prompt)]
    for n in range(1, turns):
        messages.append(assistant_tool_use(n, f"pytest -x tests/ -k case_{n}"))
        messages.append(tool_result(n, f"collected {n} items\n{'.' * n}F\nFAILED tests/test_app.py::test_case_{n}"))
    return messages


def with_cache_marker(messages: list[dict]) -> list[dict]:
    """Claude Code puts one cache_control marker on the last block of the newest message."""
    messages = copy.deepcopy(messages)
    messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return messages


def request_body(session_id: str, messages: list[dict], stream: bool = True) -> dict:
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": str(uuid.UUID(int=7)), "session_id": session_id})
    return {"model": MODEL, "max_tokens": 32000, "system": SYSTEM, "tools": TOOLS,
            "messages": with_cache_marker(messages), "metadata": {"user_id": user_id}, "stream": stream}


def title_request(session_id: str, text: str) -> dict:
    """The side call Claude Code makes to name a conversation: a different first message."""
    body = request_body(session_id, [{"role": "user", "content": [
        {"type": "text", "text": f"Please write a 5-10 word title for the following conversation:\n{text}"}]}],
        stream=False)
    body["system"] = [{"type": "text", "text": "Summarize this coding conversation in under 50 characters."}]
    body.pop("tools")
    return body
