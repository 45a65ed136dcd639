"""The explorer's session page and its guard, through Flask's test client: each address, each
status, and the conversation as people read it (tests/sessionfiles.py writes the sessions)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import hostile
import pytest
import zstandard
from sessionfiles import T0, SessionFile, anthropic_body, anthropic_stream, claude_tool_loop, codex_session, sse

from llmproxy.explorer.app import create_app
from llmproxy.settings import load_settings

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))
TOKEN = "t0ken-" + "x" * 20


def settings_for(log_dir: Path, **env):
    return load_settings({"LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": str(log_dir / "no.env"), **env},
                         create_dirs=False)


@pytest.fixture
def log_dir(tmp_path):
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def client(log_dir):
    return create_app(settings_for(log_dir)).test_client()


class Page(HTMLParser):
    """A page's elements and text, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.texts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def page(client, url: str) -> Page:
    answer = client.get(url)
    assert answer.status_code == 200, answer.data[:500]
    return Page(answer.get_data(as_text=True))


def call_html(html: str, seq: int) -> str:
    match = re.search(rf'<article class="call[^"]*" id="call-{seq}".*?</article>', html, re.S)
    assert match, f"no call {seq}"
    return match.group(0)


# --- the session page ---

def test_a_session_reads_as_its_conversation(client, log_dir):
    claude_tool_loop(log_dir)
    html = client.get("/session/20261128-101500-abcd1234").get_data(as_text=True)
    first, title, second, agent, third = (call_html(html, n) for n in range(1, 6))
    # Each call shows the user's new words only, never the history it re-sends.
    assert "What do the notes say?" in first and "What do the notes say?" not in second + third
    assert "Thanks. And louder?" in third and "Let me read the notes." not in third
    # The client's reminders are context, folded away; the system prompt too, once per thread.
    assert '<details class="context">' in first and "As you answer" in first
    assert '<details class="system">' in first and '<details class="system">' not in second + third
    assert '<details class="system">' in title and '<details class="system">' in agent
    # Thinking is folded; the tool call shows its input and, under it, its result.
    assert re.search(r'<details class="thinking">\s*<summary>', first) and "The user wants the notes read." in first
    tool = first[first.index('class="tool"'):]
    assert "Read" in tool and "/home/dev/project/notes.txt" in tool and "kiwi-5150" in tool
    assert tool.index("notes.txt") < tool.index("kiwi-5150")
    assert "shown under <a href=\"#call-1\">call #1</a>" in second and "kiwi-5150" not in second.split("Assistant")[0]
    # Per call: model, stop reason, tokens, cost, TTFB and total, status.
    head = first[:first.index("</header>")]
    for shown in ("claude-sonnet-4-5", "tool_use", "in 12", "out 40", "cache w 100", "r 3.0k", "$0.012", "850 ms",
                  "4.2 s", ">200<", "t1"):
        assert shown in head, shown
    # Threads and sub-agents are visible as such.
    assert ">t2<" in title and "agent explore-1" in agent and 'class="call agent"' in agent
    assert "sub-agent explore-1" in html


def test_the_session_header_and_totals(client, log_dir):
    claude_tool_loop(log_dir)
    text = page(client, "/session/20261128-101500-abcd1234").text
    for shown in ("anthropic", "api.anthropic.com", "dev@workstation", "2026-11-28 10:15 UTC",
                  "5d4b0fc7-2ca0-4c21-903a-5c9035509e81", "Download JSONL"):
        assert shown in text, shown
    totals = text[text.index("Totals"):]
    assert re.search(r"Calls\s*5\b", totals) and re.search(r"Cost\s*\$0\.020", totals)  # 0.0123+0.0001+0.0042+0.0002+0.0031


def test_a_fork_says_from_which_call_it_branched(client, log_dir):
    f = SessionFile(log_dir).start()
    question = {"role": "user", "content": "Plan the change."}
    seq = f.request(anthropic_body([question]))
    f.response(seq, sse(anthropic_stream("Plan A.")))
    f.fork(from_seq=1, from_thread="t1", thread="t1+")
    seq = f.request(anthropic_body([{"role": "user", "content": "Plan it differently."}]), thread="t1+")
    f.response(seq, sse(anthropic_stream("Plan B.")), thread="t1+")
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    assert 'Branched from <a href="#call-1">call #1</a> of thread t1' in call_html(html, 2)
    assert "branched from <a href=\"#call-1\">call #1</a>" in html  # in the threads list


def test_errors_and_cut_streams_are_marked(client, log_dir):
    f = SessionFile(log_dir).start()
    seq = f.request(anthropic_body([{"role": "user", "content": "one"}]))
    f.response(seq, body=json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}),
               status=429, model=None)
    seq = f.request(anthropic_body([{"role": "user", "content": "two"}]))
    f.response(seq, sse(anthropic_stream("Let me", error="Overloaded")))
    seq = f.request(anthropic_body([{"role": "user", "content": "three"}]))
    f.response(seq, sse(anthropic_stream("Half")[:3]), error="upstream closed the stream early", incomplete=True)
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    limited, overloaded, cut = (call_html(html, n) for n in (1, 2, 3))
    assert 'class="call failed"' in limited and 'status bad" title="HTTP status">429' in limited and "Slow down" in limited
    assert 'class="error">Overloaded' in overloaded and "Let me" in overloaded
    assert "cut off before its end" in cut and "upstream closed the stream early" in cut
    data = client.get(f"/session/{f.session}.json").json
    assert data["totals"]["errors"] == 3


@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "sse"])
def test_a_codex_session_reads_the_same_over_websocket_and_sse(client, log_dir, websocket):
    f = codex_session(log_dir, websocket=websocket)
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    first = call_html(html, 1)
    assert "What do the notes say?" in first and "You are Codex" in first and "&lt;permissions&gt;" in first
    assert "exec_command" in first and "cat notes.txt" in first and "kiwi-5150" in first  # the result, under the call
    assert "Look at the file first." in first  # the reasoning summary, folded
    assert "The notes say kiwi-5150." in call_html(html, 2)


def test_websocket_and_sse_give_the_same_calls(tmp_path):
    def calls(websocket: bool):
        log_dir = tmp_path / str(websocket)
        f = codex_session(log_dir, websocket=websocket)
        data = create_app(settings_for(log_dir)).test_client().get(f"/session/{f.session}.json").json
        return [{k: v for k, v in c.items() if k not in ("transport", "size_in", "size_out")} for c in data["calls"]]

    assert calls(True) == calls(False)


def test_the_json_view_has_the_same_calls_as_the_page(client, log_dir):
    claude_tool_loop(log_dir)
    data = client.get("/session/20261128-101500-abcd1234.json").json
    assert [c["seq"] for c in data["calls"]] == [1, 2, 3, 4, 5]
    first = data["calls"][0]
    assert [p["kind"] for p in first["answer"]] == ["thinking", "text", "call"]
    assert first["answer"][2]["result"]["text"].strip().startswith("1\tkiwi-5150")
    assert first["tokens"] == {"input": 12, "output": 40, "cache_write": 100, "cache_read": 3000}
    assert data["machine"] == "dev@workstation" and data["provider"] == "anthropic"


def test_raw_entries_and_whole_texts_are_served_on_demand(client, log_dir):
    f = claude_tool_loop(log_dir)
    raw = client.get(f"/session/{f.session}/call/3/raw.json").json
    assert raw["request"] == f.written[5] and raw["response"] == f.written[6]
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    assert json.dumps(f.written[5]["body"])[1:40] not in html  # the raw body is not in the page
    assert client.get(f"/session/{f.session}/call/99/raw.json").status_code == 404
    text = client.get(f"/session/{f.session}/call/1/piece/0.txt")
    assert text.status_code == 200 and text.content_type == "text/plain; charset=utf-8"
    assert text.get_data(as_text=True) == "You are Claude Code, Anthropic's CLI."
    assert client.get(f"/session/{f.session}/call/1/piece/99.txt").status_code == 404


def test_a_long_text_shows_its_head_and_a_link_to_the_whole(client, log_dir):
    f = SessionFile(log_dir).start()
    long = "\n".join(f"line {n}" for n in range(5000))
    seq = f.request(anthropic_body([{"role": "user", "content": long}]))
    f.response(seq, sse(anthropic_stream("ok")))
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    link = re.search(r'href="(/session/[^"]+/piece/(\d+)\.txt)" data-more>Show all ([\d,]+) characters', html)
    assert link and int(link.group(3).replace(",", "")) == len(long)
    assert "line 4999" not in html and client.get(link.group(1)).get_data(as_text=True) == long


def test_the_download_is_the_session_file(client, log_dir):
    f = claude_tool_loop(log_dir)
    answer = client.get(f"/session/{f.session}.jsonl")
    assert answer.status_code == 200 and answer.data == f.file.read_bytes()
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{f.session}.jsonl"'


def test_a_compressed_session_reads_like_a_plain_one(client, log_dir):
    f = claude_tool_loop(log_dir)
    plain = client.get(f"/session/{f.session}.json").json["calls"]
    f.file.with_name(f.file.name + ".zst").write_bytes(zstandard.ZstdCompressor().compress(f.file.read_bytes()))
    f.file.unlink()
    fresh = create_app(settings_for(log_dir)).test_client()
    assert fresh.get(f"/session/{f.session}.json").json["calls"] == plain
    assert fresh.get(f"/session/{f.session}.jsonl").data.count(b"\n") == len(f.written)


# --- live ---

def test_a_live_page_gets_new_calls_and_the_results_of_earlier_ones(client, log_dir):
    now = datetime.now(timezone.utc)
    f = SessionFile(log_dir, session=f"{now:%Y%m%d-%H%M%S}-0000a11e", clock=now).start()
    tool = ("toolu_9", "Bash", {"command": "ls"})
    first = {"role": "user", "content": "List the files."}
    seq = f.request(anthropic_body([first]))
    f.response(seq, sse(anthropic_stream("Listing.", tools=[tool])))
    html = client.get(f"/session/{f.session}").get_data(as_text=True)
    assert 'class="live"' in html  # written to a moment ago
    live = re.search(r'data-since="(\d+)" data-gen="(\d+)"', html)
    since, gen = live.groups()
    assert "Waiting for its result" in call_html(html, 1)
    nothing = client.get(f"/session/{f.session}/changes.json?since={since}&gen={gen}").json
    assert nothing["calls"] == [] and nothing["since"] == int(since)

    from sessionfiles import anthropic_assistant, anthropic_results
    seq = f.request(anthropic_body([first, anthropic_assistant("Listing.", [tool]),
                                    anthropic_results([("toolu_9", "README.md\nsetup.cfg")])]))
    changes = client.get(f"/session/{f.session}/changes.json?since={since}&gen={gen}").json
    assert [c["seq"] for c in changes["calls"]] == [1, 2]
    assert "README.md" in changes["calls"][0]["html"] and "Waiting for the answer" in changes["calls"][1]["html"]
    assert changes["active"] is True and changes["since"] == f.file.stat().st_size

    f.response(seq, sse(anthropic_stream("Two files.")))
    later = client.get(f"/session/{f.session}/changes.json?since={changes['since']}&gen={gen}").json
    assert [c["seq"] for c in later["calls"]] == [2] and "Two files." in later["calls"][0]["html"]


def test_a_half_written_line_waits_for_its_end(client, log_dir):
    f = SessionFile(log_dir).start()
    seq = f.request(anthropic_body([{"role": "user", "content": "hi"}]))
    data = client.get(f"/session/{f.session}.json").json
    with open(f.file, "ab") as out:
        out.write(b'{"type":"response","seq":1,"status":200,"hea')
    assert client.get(f"/session/{f.session}/changes.json?since={data['since']}&gen={data['generation']}").json[
        "calls"] == []
    with open(f.file, "ab") as out:
        out.write(b'ders":{},"timing":{"ttfb_ms":1,"total_ms":2},"size":0,"body":"{}","_meta":{}}\n')
    changed = client.get(f"/session/{f.session}/changes.json?since={data['since']}&gen={data['generation']}").json
    assert [c["seq"] for c in changed["calls"]] == [seq]


def test_a_live_page_reloads_when_prune_compressed_the_file_under_it(client, log_dir):
    f = claude_tool_loop(log_dir)
    data = client.get(f"/session/{f.session}.json").json
    f.file.with_name(f.file.name + ".zst").write_bytes(zstandard.ZstdCompressor().compress(f.file.read_bytes()))
    f.file.unlink()
    changes = client.get(f"/session/{f.session}/changes.json?since={data['since']}&gen={data['generation']}").json
    assert changes == {"reload": True}


# --- hostile content ---

def test_hostile_content_is_text(client, log_dir):
    hostile.write(log_dir)
    answer = client.get(f"/session/{hostile.SESSION}")
    html = answer.get_data(as_text=True)
    parsed = Page(html)
    scripts = parsed.find("script")
    assert [s.get("src", "").split("?")[0] for s in scripts] == ["/static/explorer.js"]
    assert not [(t, a) for t, a in parsed.tags if any(k.startswith("on") for k in a)]
    assert not [a for t, a in parsed.tags if any("javascript:" in (v or "") for v in a.values())]
    assert not parsed.find("img") + parsed.find("svg") + parsed.find("iframe")
    text = parsed.text
    assert "<script>window.__pwned = 1;" in text and "{{ 7*7 }}" in text and "{% for x in range(3) %}" in text
    # Control and bidi characters are shown, not obeyed.
    assert "\x1b" not in html and "\u202e" not in html and "␛[31mred" in text and "⟨U+202E⟩exe.txt" in text
    assert "nul␀" in text and "⟨U+200B⟩" in text
    # The 10 MB line is not sent whole: the page stays small and links to it.
    assert len(answer.data) < 200_000
    assert '<b>dev</b>@box' not in html and "&lt;b&gt;dev&lt;/b&gt;@box" in html
    assert "&lt;i&gt;model&lt;/i&gt;" in html


def test_the_whole_hostile_text_is_plain_text(client, log_dir):
    hostile.write(log_dir)
    html = client.get(f"/session/{hostile.SESSION}").get_data(as_text=True)
    url = re.findall(r'href="(/session/[^"]+\.txt)" data-more>Show all 10,', html)[0]
    answer = client.get(url)
    assert answer.content_type == "text/plain; charset=utf-8" and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert len(answer.data) == hostile.HUGE_BYTES - 40 + len(hostile.SCRIPT)


# --- the guard ---

def test_every_answer_forbids_inline_script_framing_and_sniffing(client, log_dir):
    claude_tool_loop(log_dir)
    for url in ("/session/20261128-101500-abcd1234", "/session/20261128-101500-abcd1234.json",
                "/session/nosuch", "/static/explorer.css", "/health"):
        headers = client.get(url).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("url", [
    "/session/nosuch", "/session/20261128-101500-abcd1239", "/session/..%2F..%2Fetc%2Fpasswd",
    "/session/20261128-101500-abcd1234%2F..%2F..", "/session/20261128-101500-ABCD1234",
    "/session/20261128-101500-abcd1234.jsonl%00", "/static/../settings.py", "/nosuch",
])
def test_unknown_sessions_and_paths_out_of_the_log_dir_are_not_found(client, log_dir, url):
    claude_tool_loop(log_dir)
    assert client.get(url).status_code == 404


def test_a_json_address_answers_errors_as_json(client):
    answer = client.get("/session/20261128-101500-abcd1239.json")
    assert answer.status_code == 404 and answer.json["error"]["status"] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_explorer_only_reads(client, log_dir, method):
    claude_tool_loop(log_dir)
    assert client.open("/session/20261128-101500-abcd1234", method=method).status_code == 405


@pytest.mark.parametrize("host, status", [("127.0.0.1:8081", 200), ("localhost:8081", 200), ("[::1]:8081", 200),
                                          ("evil.example.com", 403), ("192.168.1.20:8081", 403)])
def test_without_a_token_only_loopback_names_are_answered(client, log_dir, host, status):
    claude_tool_loop(log_dir)
    assert client.get("/session/20261128-101500-abcd1234.json", headers={"Host": host}).status_code == status


def test_with_a_token_every_request_carries_it(log_dir):
    claude_tool_loop(log_dir)
    app = create_app(settings_for(log_dir, LLM_PROXY_EXPLORER_TOKEN=TOKEN, LLM_PROXY_EXPLORER_HOST="0.0.0.0"))
    url = "/session/20261128-101500-abcd1234.json"
    client = app.test_client()
    assert client.get(url, headers={"Host": "explorer.example.com"}).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong-" + TOKEN}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}", "Host": "explorer.example.com"}).status_code == 200
    # The link with ?token= sets a cookie and moves on without the token in the address.
    first = client.get(f"/session/20261128-101500-abcd1234?token={TOKEN}&x=1")
    assert first.status_code == 303 and first.headers["Location"] == "/session/20261128-101500-abcd1234?x=1"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get(url).status_code == 200  # the cookie, from now on
    assert app.test_client().get(url + "?token=nope").status_code == 401


def test_settings_of_the_explorer_are_validated(tmp_path):
    def start(*args, **env):
        return subprocess.run([LLM_PROXY, "explore", *args], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "LLM_PROXY_LOG_DIR": str(tmp_path),
                                   "LLM_PROXY_ENV_FILE": str(tmp_path / "no.env"), **env})

    exposed = start("--host", "0.0.0.0")
    assert exposed.returncode == 2 and exposed.stderr == (
        "llm-proxy: LLM_PROXY_EXPLORER_HOST='0.0.0.0' is not valid: a loopback address (127.0.0.1, ::1, localhost) "
        "unless LLM_PROXY_EXPLORER_TOKEN is set\n")
    for env, variable in ((dict(LLM_PROXY_EXPLORER_PORT="80000"), "LLM_PROXY_EXPLORER_PORT"),
                          (dict(LLM_PROXY_EXPLORER_TOKEN="short"), "LLM_PROXY_EXPLORER_TOKEN")):
        bad = start(**env)
        assert bad.returncode == 2 and bad.stderr.startswith(f"llm-proxy: {variable}=") and bad.stderr.count("\n") == 1
    missing = start("--log-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_a_call_logged_before_costs_were_recorded_is_priced_as_the_catalog_prices_it(client, log_dir):
    f = SessionFile(log_dir).start()
    seq = f.request(anthropic_body([{"role": "user", "content": "hi"}]))
    usage = {"input_tokens": 1000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 500}
    f.response(seq, body=json.dumps({"content": [{"type": "text", "text": "Hello"}], "usage": usage}))
    entry = f.written[-1]
    entry["usage"] = usage
    f.file.write_text("\n".join(json.dumps(e) for e in f.written) + "\n")
    call, = client.get(f"/session/{f.session}.json").json["calls"]
    from llmproxy import pricing, providers
    counts, cost = pricing.priced(providers.api_of_entry("anthropic", "/v1/messages"), usage, "claude-sonnet-4-5",
                                  "api.anthropic.com", 1795688100.0)
    assert call["tokens"] == counts.fields() and call["cost"] == pytest.approx(cost.total) and cost.total > 0
    assert call["client"] == "claude-code"



def test_a_call_logged_with_tokens_and_no_price_is_priced_as_the_catalog_prices_it(client, log_dir):
    """The price data lacked the model when the call was logged: the session page prices its
    usage now, as the catalog (the sessions list, the usage page) does."""
    from llmproxy.catalog import Catalog

    f = SessionFile(log_dir).start()
    seq = f.request(anthropic_body([{"role": "user", "content": "hi"}]))
    usage = {"input_tokens": 1000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 500}
    f.response(seq, body=json.dumps({"content": [{"type": "text", "text": "Hello"}], "usage": usage}),
               tokens={"input": 1000, "output": 500, "cache_write": 0, "cache_read": 0})
    f.written[-1]["usage"] = usage
    f.file.write_text("\n".join(json.dumps(e) for e in f.written) + "\n")
    call, = client.get(f"/session/{f.session}.json").json["calls"]
    catalog = Catalog(log_dir, indexers=[])
    catalog.update()
    catalogued, = catalog.db.execute("SELECT cost FROM calls WHERE session = ?", (f.session,)).fetchone()
    catalog.close()
    assert catalogued > 0 and call["cost"] == pytest.approx(catalogued)



def test_a_response_line_cut_short_answers_no_call(client, log_dir):
    """A line with a response's head but no end is no entry, to the session page as to the
    catalog: the call still waits for its answer."""
    f = SessionFile(log_dir).start()
    f.request(anthropic_body([{"role": "user", "content": "hi"}]))
    with open(f.file, "ab") as out:
        out.write(b'{"type":"response","seq":1,"status":200\n')
    call, = client.get(f"/session/{f.session}.json").json["calls"]
    assert call["answered"] is False and call["status"] is None


# --- the pages over the catalog ---

def catalogue(log_dir):
    from llmproxy.catalog import Catalog
    from llmproxy.explorer.search import SearchIndexer

    catalog = Catalog(log_dir, indexers=[SearchIndexer()])
    stats = catalog.update()
    catalog.close()
    return stats


@pytest.fixture
def tree(log_dir):
    """Claude Code, Codex, an error session and the hostile one, catalogued."""
    claude_tool_loop(log_dir)
    codex_session(log_dir)
    f = SessionFile(log_dir, session="20261127-090000-0000e404", machine="ci@runner", client_session_id=None,
                    user_agent="curl/8.14.1", clock=T0 - timedelta(hours=25)).start()
    seq = f.request(anthropic_body([{"role": "user", "content": "ping"}]))
    f.response(seq, body=json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
               status=529, model=None)
    hostile.write(log_dir)
    catalogue(log_dir)
    return log_dir


def test_the_sessions_page_lists_newest_first_grouped_by_day(client, tree):
    html = client.get("/sessions").get_data(as_text=True)
    order = re.findall(r'<a href="/session/([\d-]+-[0-9a-f]{8})">', html)
    assert order == ["20261128-121500-0bad0bad", "20261128-111500-00c0de01", "20261128-101500-abcd1234",
                     "20261127-090000-0000e404"]
    assert [d for d in re.findall(r'<h2 class="day">(\d{4}-\d{2}-\d{2})', html)] == ["2026-11-28", "2026-11-27"]
    claude = html[html.index('href="/session/20261128-101500-abcd1234"'):].split("</tr>")[0]
    for shown in ("5d4b0fc7-2ca0-4c21-903a-5c9035509e81", "claude-code", "dev@workstation", "api.anthropic.com",
                  "claude-haiku-4-5", "claude-sonnet-4-5", ">5<", "$0.020", "10:15:01–10:15:21", "20.8 s"):
        assert shown in claude, shown
    data = client.get("/sessions.json").json
    assert data["total"] == 4 and data["sessions"][2]["calls"] == 5 and data["sessions"][2]["clients"] == ["claude-code"]


@pytest.mark.parametrize("query, expected", [
    ("provider=chatgpt", ["20261128-111500-00c0de01"]),
    ("model=claude-haiku-4-5", ["20261128-101500-abcd1234"]),
    ("machine=ci%40runner", ["20261127-090000-0000e404"]),
    ("client=codex", ["20261128-111500-00c0de01"]),
    ("errors=1", ["20261128-121500-0bad0bad", "20261127-090000-0000e404"]),
    ("q=apples", ["20261128-101500-abcd1234"]),
    ("q=kiwi-5150", ["20261128-111500-00c0de01", "20261128-101500-abcd1234"]),
    ("q=20261127-090000-0000e404", ["20261127-090000-0000e404"]),
    ("q=nothing+like+it", []),
    ("days=1", []),
])
def test_the_sessions_filters(client, tree, query, expected):
    data = client.get(f"/sessions.json?{query}").json
    assert [s["session"] for s in data["sessions"]] == expected
    html = client.get(f"/sessions?{query}").get_data(as_text=True)
    assert html.count('<tr>\n    <td class="session">') == len(expected)


def test_the_address_holds_the_filters_and_the_page(client, log_dir):
    for n in range(60):
        f = SessionFile(log_dir, session=f"20261128-{n // 60:02d}{n % 60:02d}00-{n:08x}", client_session_id=None)
        f.clock = f.clock.replace(hour=0, minute=n % 60)
        f.start()
        seq = f.request(anthropic_body([{"role": "user", "content": f"question {n}"}]))
        f.response(seq, sse(anthropic_stream("answer")), tokens={"input": 1, "output": 1}, cost=0.01)
    catalogue(log_dir)
    first = page(client, "/sessions?client=claude-code&provider=anthropic")
    nxt, = first.find("a", rel="next")
    assert nxt["href"] == "/sessions?provider=anthropic&client=claude-code&page=2"
    second = client.get(nxt["href"]).get_data(as_text=True)
    assert second.count('<td class="session">') == 10 and "Page 2 of 2" in second
    assert 'rel="prev"' in second and 'value="claude-code" selected' in second


def test_before_the_first_catalog_the_pages_say_it_is_being_built(client, log_dir):
    claude_tool_loop(log_dir)
    answer = client.get("/sessions")
    assert answer.status_code == 503 and b'http-equiv="refresh"' in answer.data and b"Building the catalog" in answer.data
    assert client.get("/sessions.json").status_code == 503 and client.get("/search?q=x").status_code == 503
    assert client.get("/session/20261128-101500-abcd1234").status_code == 200  # a session reads its file


def test_search_finds_what_was_new_in_each_call_and_links_to_where_it_is_shown(client, tree):
    hits = client.get("/search.json?q=kiwi-5150").json["hits"]
    claude = [(h["kind"], h["seq"], h["shown_at"]) for h in hits if h["session"] == "20261128-101500-abcd1234"]
    # The tool result came with call 3 and is shown under call 1 (its call); the answer is call 3's.
    assert sorted(claude) == [("result", 3, 1), ("text", 3, 3)]
    html = client.get("/search?q=kiwi-5150").get_data(as_text=True)
    assert 'href="/session/20261128-101500-abcd1234#call-1"' in html and "<mark>kiwi-5150</mark>" in html
    # The history each request re-sends is indexed once: the first question has a hit in call 1
    # (and the title request quoting it, call 2), not in calls 3 and 5 that re-send it.
    asked = client.get('/search.json?q="What do the notes say"').json["hits"]
    assert sorted((h["session"], h["seq"], h["kind"]) for h in asked) == [
        ("20261128-101500-abcd1234", 1, "words"), ("20261128-101500-abcd1234", 2, "words"),
        ("20261128-111500-00c0de01", 1, "words")]
    # Tool calls by name and input, thinking, a sub-agent's words.
    assert {h["kind"] for h in client.get("/search.json?q=notes.txt").json["hits"]} >= {"call"}
    assert client.get("/search.json?q=wants+the+notes").json["hits"][0]["kind"] == "thinking"
    assert client.get("/search.json?q=TODO").json["hits"][0]["seq"] == 4


@pytest.mark.parametrize("text", ['AND OR NOT', '"unbalanced', "NEAR(a b)", "col:value", "*", "a*b", "'; DROP TABLE x; --",
                                  "<script>alert(1)</script>"])
def test_what_a_person_types_is_searched_as_text(client, tree, text):
    answer = client.get("/search", query_string={"q": text})
    assert answer.status_code == 200
    assert "<script>alert(1)</script>" not in answer.get_data(as_text=True)


def test_search_finds_hostile_text_and_shows_it_escaped(client, tree):
    html = client.get("/search?q=pwned").get_data(as_text=True)
    hits = Page(html)
    assert [s.get("src", "").split("?")[0] for s in hits.find("script")] == ["/static/explorer.js"]
    assert "window.__<mark>pwned</mark>" in html and "&lt;script&gt;" in html


def test_a_session_that_left_the_tree_leaves_the_search(client, tree):
    assert client.get("/search.json?q=TODO").json["hits"]
    for path in (tree / "api.anthropic.com").rglob("20261128-101500-abcd1234.jsonl"):
        path.unlink()
    catalogue(tree)
    assert client.get("/search.json?q=TODO").json["hits"] == []


def test_an_answer_logged_after_the_next_request_still_gets_its_tool_results(client, log_dir):
    """The proxy writes an answer's line after its last byte: the client's next request, with the
    tool's result, can be in the file first."""
    from sessionfiles import anthropic_assistant, anthropic_results

    f = SessionFile(log_dir).start()
    tool = ("toolu_7", "Read", {"file_path": "a.txt"})
    first = {"role": "user", "content": "Read a.txt"}
    one = f.request(anthropic_body([first]))
    two = f.request(anthropic_body([first, anthropic_assistant("", [tool]), anthropic_results([("toolu_7", "alpha")])]))
    data = client.get(f"/session/{f.session}.json").json
    assert data["calls"][1]["turn"][0]["parts"][0].get("answers") is None  # not yet known whose result
    f.response(one, sse(anthropic_stream("", tools=[tool])))
    changes = client.get(f"/session/{f.session}/changes.json?since={data['since']}&gen={data['generation']}").json
    assert [c["seq"] for c in changes["calls"]] == [one, two]
    assert "alpha" in changes["calls"][0]["html"] and "shown under" in changes["calls"][1]["html"]
    f.response(two, sse(anthropic_stream("Alpha it is.")))
    html = create_app(settings_for(log_dir)).test_client().get(f"/session/{f.session}").get_data(as_text=True)
    assert "alpha" in call_html(html, one) and "Waiting" not in html


# --- usage ---

@pytest.mark.parametrize("report, query", [("daily", ""), ("model", "&breakdown=1"), ("session", "&provider=anthropic"),
                                           ("client", "&since=2026-11-28&until=2026-11-28"), ("monthly", "&model=sonnet")])
def test_the_usage_page_is_the_usage_command(client, tree, report, query):
    data = client.get(f"/usage.json?report={report}{query}").json
    args = ["usage", report, "--json"] + [f"--{k}" if v == "1" else f"--{k}={v}" for k, v in
                                          (pair.split("=") for pair in query.split("&") if pair)]
    command = subprocess.run([LLM_PROXY, *args], capture_output=True, text=True, timeout=60, check=True,
                             env={"PATH": "/usr/bin:/bin", "LLM_PROXY_LOG_DIR": str(tree),
                                  "LLM_PROXY_ENV_FILE": str(tree / "no.env")})
    assert data == json.loads(command.stdout)
    assert client.get(f"/usage?report={report}{query}").status_code == 200


def test_the_usage_page_charts_cost_and_tokens_per_day_by_model(client, tree):
    html = client.get("/usage").get_data(as_text=True)
    parsed = Page(html)
    assert len(parsed.find("svg", role="img")) == 2
    titles = re.findall(r"<title>([^<]*)</title>", html)
    assert "2026-11-28 · claude-sonnet-4-5: $0.020" in titles  # 0.0123 + 0.0042 + 0.0031 + 0.0002 (the sub-agent)
    assert "2026-11-28 · gpt-5-codex: $0.0083" in titles and "2026-11-28 · gpt-5-codex: 4.1k" in titles
    assert "&lt;i&gt;model&lt;/i&gt;" in html and "<i>model</i>" not in html  # a hostile model name, in the legend


@pytest.mark.parametrize("report, row, link", [
    ("daily", "2026-11-28", "/sessions?day=2026-11-28"),
    ("monthly", "2026-11", "/sessions?month=2026-11"),
    ("model", "gpt-5-codex", "/sessions?model=gpt-5-codex"),
    ("machine", "ci@runner", "/sessions?machine=ci%40runner"),
    ("client", "codex", "/sessions?client=codex"),
    ("session", "20261128-111500-00c0de01", "/session/20261128-111500-00c0de01"),
])
def test_each_usage_row_leads_to_its_sessions(client, tree, report, row, link):
    html = client.get(f"/usage?report={report}").get_data(as_text=True)
    assert f'<a href="{link}"' in html.replace("&amp;", "&")
    if link.startswith("/sessions"):
        sessions = client.get(link.replace("/sessions", "/sessions.json")).json["sessions"]
        assert sessions and all(row in json.dumps(s) or report in ("daily", "monthly") for s in sessions)



def test_a_call_answered_after_midnight_is_under_the_day_its_usage_row_says(client, log_dir):
    """Asked at 23:59:50, answered at 00:00:20: the usage page counts it on the second day (as
    Loki does), and that row's link lists its session."""
    f = SessionFile(log_dir, session="20261129-235950-0000dada", clock=datetime(2026, 11, 29, 23, 59, 49,
                                                                             tzinfo=timezone.utc)).start()
    f.response(f.request(anthropic_body([{"role": "user", "content": "late"}])), sse(anthropic_stream("Night.")),
               tokens={"input": 10, "output": 2}, total_ms=30_000)
    catalogue(log_dir)
    html = client.get("/usage").get_data(as_text=True)
    assert '<a href="/sessions?day=2026-11-30"' in html and "/sessions?day=2026-11-29" not in html
    sessions = client.get("/sessions.json?day=2026-11-30").json["sessions"]
    assert [s["session"] for s in sessions] == [f.session]



def test_a_usage_row_under_a_model_filter_leads_to_sessions(client, tree):
    """The usage page's model filter is a part of a name ("sonnet"); the sessions page's is a
    whole one: a row's link does not carry it, so that it leads to the row's sessions."""
    html = client.get("/usage?report=daily&model=sonnet").get_data(as_text=True)
    assert '<a href="/sessions?day=2026-11-28"' in html
    assert client.get("/sessions.json?day=2026-11-28").json["sessions"]


def test_sessions_of_one_day(client, tree):
    data = client.get("/sessions.json?day=2026-11-27").json
    assert [s["session"] for s in data["sessions"]] == ["20261127-090000-0000e404"]
    assert client.get("/sessions.json?day=not-a-day").json["total"] == 4  # a bad value is no filter


# --- llm-proxy explore, the server ---

def test_llm_proxy_explore_serves_the_pages_and_its_indexer_follows_the_tree(tmp_path, log_dir):
    from browser import Explorer

    claude_tool_loop(log_dir)
    server = Explorer(tmp_path / "explorer", log_dir).start()
    try:
        assert server.wait_catalogued(1)["sessions"][0]["session"] == "20261128-101500-abcd1234"
        status, data = server.get_json("/session/20261128-101500-abcd1234.json")
        assert status == 200 and len(data["calls"]) == 5
        # A new session is catalogued and searchable within a few seconds, by the indexer process.
        codex_session(log_dir)
        server.wait_catalogued(2, timeout=30)
        assert server.get_json("/search.json?q=exec_command")[1]["hits"][0]["session"] == "20261128-111500-00c0de01"
        assert server.output().splitlines()[0] == "llm-proxy explorer: " + server.url + "/sessions"
        children = [int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]
        assert len(children) == 2  # the pages' worker and the indexer
    finally:
        assert server.stop() == 0
    gone = [p for p in children if Path(f"/proc/{p}").exists()]
    assert gone == []


def test_open_hands_the_browser_the_address_with_its_token_and_prints_no_token(tmp_path, log_dir):
    from browser import Explorer
    from proxyproc import wait_until

    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"  # a browser for webbrowser ($BROWSER): notes what it was given
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    server = Explorer(tmp_path / "explorer", log_dir, env={"LLM_PROXY_EXPLORER_TOKEN": TOKEN, "BROWSER": str(browser)})
    server.command.append("--open")
    server.start()
    try:
        assert server.get_json("/sessions.json")[0] == 401
        address = wait_until(lambda: opened.exists() and opened.read_text().strip(), 10, message="the browser opened")
        assert address == f"{server.url}/sessions?token={TOKEN}"
    finally:
        server.stop()
    assert TOKEN not in server.output() and "?token=$LLM_PROXY_EXPLORER_TOKEN" in server.output()
