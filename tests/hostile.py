"""A session whose every logged text is hostile input: markup, script, ``javascript:`` links,
template syntax, control and bidirectional characters, and one 10 MB line. The explorer must
show all of it as text (tests/test_explorer.py, tests/test_explorer_browser.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sessionfiles import T0, SessionFile, anthropic_assistant, anthropic_body, anthropic_results, anthropic_stream, sse

SESSION = "20261128-121500-0bad0bad"
SCRIPT = "<script>window.__pwned = 1; alert('pwned')</script>"
MARKUP = ('<img src=x onerror="window.__pwned=2"> <a href="javascript:window.__pwned=3">click me</a> '
          '<svg onload="window.__pwned=4"></svg> <iframe src="javascript:alert(5)"></iframe> </pre></details></article>')
TEMPLATE = "{{ 7*7 }} {% for x in range(3) %}{{ x }}{% endfor %} ${7*7} #{7*7} {{ config }}"
CONTROL = "bell\x07 escape\x1b[31mred\x1b[0m nul\x00 del\x7f c1\x85 end"
BIDI = "invoice_\u202eexe.txt \u2066isolate\u2069 zero\u200bwidth \ufeffbom"
TOOL_NAME = '"><svg onload=alert(6)>'
HUGE_BYTES = 10 * 1024 * 1024
EVERYTHING = [SCRIPT, MARKUP, TEMPLATE, CONTROL, BIDI]


def write(log_dir: Path) -> SessionFile:
    f = SessionFile(log_dir, session=SESSION, machine="<b>dev</b>@box", clock=T0 + timedelta(hours=2)).start()
    words = "\n".join(EVERYTHING)
    first = {"role": "user", "content": [{"type": "text", "text": words}]}
    tool = ("toolu_evil", TOOL_NAME, {"command": SCRIPT, "url": "javascript:alert(7)"})
    seq = f.request(anthropic_body([first], system=MARKUP + "\n" + TEMPLATE))
    f.response(seq, sse(anthropic_stream(SCRIPT + " " + TEMPLATE + " " + BIDI, thinking=MARKUP, tools=[tool])),
               model="<i>model</i>", stop_reason="<b>tool_use</b>", tokens={"input": 1, "output": 2})
    huge = "A" * (HUGE_BYTES - 40) + SCRIPT  # one line, no newline: 10 MB
    history = [first, anthropic_assistant("", [tool]), anthropic_results([("toolu_evil", huge)], words=CONTROL)]
    seq = f.request(anthropic_body(history))
    f.response(seq, body=json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": SCRIPT}}),
               status=400, model=None, tokens=None)
    return f
