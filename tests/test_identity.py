"""Conversation identity: every spelling a provider accepts of the same turn hashes the same."""

import pytest

from llmproxy.record.sessions import message_hashes

CC = {"type": "ephemeral"}
SIG = "EqQBCkgIARABGAIiQL" + "x" * 40


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


SAME = {
    "key order": ({"role": "user", "content": [{"type": "text", "text": "hi"}]},
                  {"content": [{"text": "hi", "type": "text"}], "role": "user"}),
    "string vs one text block (Anthropic, Chat API)": (user("and again"), user([{"type": "text", "text": "and again"}])),
    "cache_control on the newest message only": (user([{"type": "text", "text": "q", "cache_control": CC}]), user("q")),
    "cache_control on a tool_result": (
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "out", "cache_control": CC}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "out"}])),
    "tool_result is_error false is its default": (
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "KIWI", "is_error": False}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "KIWI"}])),
    "tool_result content string vs text blocks": (
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "1\tkiwi"}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_1",
               "content": [{"type": "text", "text": "1\tkiwi", "cache_control": CC}]}])),
    "thinking kept or dropped for an earlier turn": (
        assistant([{"type": "thinking", "thinking": "Let me see.", "signature": SIG},
                   {"type": "text", "text": "Done."}]),
        assistant([{"type": "text", "text": "Done."}])),
    "redacted thinking kept or dropped": (
        assistant([{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"}, {"type": "text", "text": "ok"}]),
        assistant("ok")),
    "Claude Code's reminder prepended to a user message": (
        user([{"type": "text", "text": "<system-reminder>\nToday's date is 2026-12-02.\n</system-reminder>\n\n"},
              {"type": "text", "text": "First question.", "cache_control": CC}]),
        user([{"type": "text", "text": "<system-reminder>\nToday's date is 2026-12-03.\n</system-reminder>\n\n"},
              {"type": "text", "text": "First question."}])),
    "Responses message item with or without type and id": (
        {"type": "message", "id": "msg_01", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "codex-answer-1", "annotations": []}]},
        {"role": "assistant", "content": "codex-answer-1"}),
    "Responses input_text vs a plain string": (
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Question 2."}]},
        {"role": "user", "content": "Question 2."}),
    "Responses function_call with or without its item id": (
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
         "arguments": "{\"cmd\": \"ls\"}", "status": "completed"},
        {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\": \"ls\"}"}),
    "Responses function_call_output string vs input_text list": (
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "app.py"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "app.py"}]}),
    "Chat API assistant echo with nulls and empty lists": (
        {"role": "assistant", "content": "Hi.", "refusal": None, "annotations": [], "tool_calls": []},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]}),
    "Chat API tool call with null content": (
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "assistant",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
}

DIFFERENT = {
    "other text": (user("hi"), user("hi ")),
    "other role": (user("hi"), assistant("hi")),
    "two blocks vs their concatenation": (user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
                                          user("ab")),
    "extra field": (user([{"type": "text", "text": "hi", "n": 1}]), user("hi")),
    "number vs boolean": (user([{"type": "text", "text": "hi", "n": 1}]),
                          user([{"type": "text", "text": "hi", "n": True}])),
    "other tool input": (assistant([{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]),
                         assistant([{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls -a"}}])),
    "an error result is not a result": (
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x", "is_error": True}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}])),
    "zero is not false": (user([{"type": "text", "text": "hi", "n": 0}]), user("hi")),
    "other tool result": (user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a"}]),
                          user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "b"}])),
    "other call id": ({"type": "function_call_output", "call_id": "call_1", "output": "x"},
                      {"type": "function_call_output", "call_id": "call_2", "output": "x"}),
    "an image is not its absence": (user([{"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                                          {"type": "text", "text": "what is this?"}]),
                                    user("what is this?")),
}


@pytest.mark.parametrize("a, b", SAME.values(), ids=SAME.keys())
def test_spellings_of_the_same_turn_hash_the_same(a, b):
    assert message_hashes([a]) == message_hashes([b]) != []


@pytest.mark.parametrize("a, b", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_different_turns_hash_differently(a, b):
    assert message_hashes([a]) != message_hashes([b])


@pytest.mark.parametrize("left_out", [
    {"role": "system", "content": "Available agent types for the Agent tool: claude, explore"},
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB" + "z" * 80},
    {"type": "additional_tools", "role": "developer", "tools": []},
], ids=["system message mid-conversation", "developer item", "reasoning item", "Codex tool list"])
def test_instructions_and_reasoning_are_no_turns_of_the_conversation(left_out):
    turns = [user("q1"), assistant("a1"), user("q2")]
    assert message_hashes(turns[:1] + [left_out] + turns[1:]) == message_hashes(turns)


def test_a_system_message_that_changes_between_turns_changes_nothing():
    first = [user("q1"), {"role": "system", "content": "agents: claude"}, assistant("a1"), user("q2")]
    later = [user("q1"), {"role": "system", "content": "agents: claude, explore"}, assistant("a1"), user("q2"),
             assistant("a2"), user("q3")]
    assert message_hashes(later)[:3] == message_hashes(first)


def test_anything_but_a_list_has_no_turns():
    assert message_hashes("not a list") == message_hashes(None) == []
