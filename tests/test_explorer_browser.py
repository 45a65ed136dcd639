"""The explorer in a real headless Chromium, over sessions the real Claude Code and Codex CLIs
recorded through the real proxy (tests/realclients.py), served by ``llm-proxy explore``.

A person's way through it: the sessions page, a session, a tool call and its result, the raw
JSON, a search for a word of a tool result and the hit followed, a live session growing, and the
hostile corpus (tests/hostile.py) shown as text with no script run. No console error anywhere.
Screenshots of every page go to ``browser.SHOTS`` (the path is printed): look at them.
"""

from __future__ import annotations

import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import browser
import hostile
import pytest
import realclients
from fakeprovider import FakeProvider
from proxyproc import wait_until


def _require_browser() -> None:
    reason = browser.unavailable()
    if reason and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser tests must run under CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def recorded(proxy, tmp_path_factory):
    """The real CLIs' tool loops, recorded by the proxy: (claude's client, its fake, codex's)."""
    realclients.require()
    _require_browser()
    fakes = [FakeProvider().start() for _ in range(2)]
    claude = realclients.Client(tmp_path_factory.mktemp("claude"), proxy.url, fakes[0].upstream)
    codex = realclients.Client(tmp_path_factory.mktemp("codex"), proxy.url, fakes[1].upstream)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(realclients.claude_tools, claude), pool.submit(realclients.codex_tools, codex)]
        for run in runs:
            run.result(timeout=realclients.CLIENT_TIMEOUT * 3)
    yield claude, fakes[0], codex
    for fake in fakes:
        fake.stop()


@pytest.fixture(scope="module")
def explorer(recorded, proxy, tmp_path_factory):
    hostile.write(proxy.log_dir)
    server = browser.Explorer(tmp_path_factory.mktemp("explorer"), proxy.log_dir).start()
    server.wait_catalogued(3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium(explorer, request):
    opened = browser.Browser()
    yield opened
    opened.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"explorer screenshots: {browser.SHOTS}")


@pytest.fixture
def clean(chromium):
    """Every test ends with no console error, no page error and no dialog."""
    chromium.problems.clear()
    yield chromium
    assert chromium.problems == [] and chromium.dialogs == []


def _session_of(explorer, client: str) -> dict:
    status, doc = explorer.get_json(f"/sessions.json?client={client}")
    assert status == 200 and doc["sessions"], doc
    return doc["sessions"][0]


def test_from_the_sessions_page_to_a_tool_call_its_result_and_the_raw_json(explorer, clean):
    page = clean.page()
    page.goto(explorer.url + "/sessions")
    assert page.locator("h1").inner_text() == "Sessions"
    clean.shot(page, "sessions-wide")
    claude = _session_of(explorer, "claude-code")
    page.click(f"a[href='/session/{claude['session']}']")
    page.wait_for_selector("#totals")
    tool = page.locator(".tool", has=page.locator(".tool-name strong", has_text="Bash")).first
    assert "tr a-z A-Z < notes.txt" in tool.inner_text()
    assert realclients.MARKER.upper() in tool.locator(".result").inner_text()  # its result, under it
    call = page.locator("article.call", has=tool)
    call.locator("details.raw > summary").click()
    raw = call.locator(".raw-json")
    wait_until(lambda: '"type": "request"' in raw.inner_text(), 10, message="the raw JSON loaded")
    assert '"messages": [' in raw.inner_text()  # the body shown as JSON, not as one string
    clean.shot(page, "session-wide")
    narrow = clean.page(browser.NARROW)
    narrow.goto(page.url)
    narrow.wait_for_selector("#totals")
    clean.shot(narrow, "session-narrow")
    narrow.goto(explorer.url + "/sessions")
    clean.shot(narrow, "sessions-narrow")


def test_a_codex_session_shows_its_tool_call_and_result(explorer, clean):
    codex = _session_of(explorer, "codex")
    page = clean.page()
    page.goto(f"{explorer.url}/session/{codex['session']}")
    tool = page.locator(".tool", has=page.locator(".tool-name strong", has_text="exec_command")).first
    assert "cat notes.txt" in tool.inner_text() and realclients.MARKER in tool.locator(".result").inner_text()
    clean.shot(page, "session-codex")


def test_a_search_for_a_word_of_a_tool_result_leads_to_the_call(explorer, clean):
    page = clean.page()
    page.goto(explorer.url + "/sessions")
    page.fill("header.top input[name=q]", realclients.MARKER)
    page.press("header.top input[name=q]", "Enter")
    page.wait_for_selector(".hit")
    clean.shot(page, "search")
    hit = page.locator(".hit", has=page.locator(".where span", has_text="Tool result")).first
    assert realclients.MARKER in hit.locator("mark").first.inner_text().lower()
    hit.locator(".where a").click()
    target = page.locator("article.call:target")
    target.wait_for()
    assert realclients.MARKER in target.inner_text().lower()
    assert page.evaluate("document.querySelector('article.call:target').getBoundingClientRect().top") < 900


def test_a_live_session_grows_without_a_reload(explorer, recorded, proxy, clean):
    claude, fake, _ = recorded
    session = _session_of(explorer, "claude-code")
    page = clean.page()
    page.goto(f"{explorer.url}/session/{session['session']}")
    page.wait_for_selector("#totals")
    calls = page.locator("article.call").count()
    page.evaluate("window.__same_page = true")
    # One more call of the same Claude Code session, through the proxy.
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "fake-reply: live-answer-7"}]}
    request = urllib.request.Request(
        f"{proxy.url}/anthropic/{fake.upstream}/v1/messages", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "x-api-key": realclients.ANTHROPIC_KEY,
                 "anthropic-version": "2023-06-01", "X-Claude-Code-Session-Id": claude.claude_session_ids()[0]})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
    page.locator(f"#call-{calls + 1} .answer").get_by_text("live-answer-7").wait_for(timeout=15_000)
    assert page.evaluate("window.__same_page") is True  # no reload: the page grew in place
    clean.shot(page, "session-live")


def test_hostile_content_renders_as_text_and_runs_nothing(explorer, clean):
    page = clean.page()
    page.goto(f"{explorer.url}/session/{hostile.SESSION}")
    page.wait_for_selector("#totals")
    page.locator("details.thinking > summary").first.click()
    page.locator("details.system > summary").first.click()
    clean.shot(page, "hostile")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 1 and page.locator("img, svg, iframe").count() == 0
    text = page.locator("main").inner_text()
    for shown in (hostile.SCRIPT, "{{ 7*7 }}", "{% for x in range(3) %}", "javascript:window.__pwned=3",
                  "␛[31mred", "⟨U+202E⟩exe.txt"):
        assert shown in text, shown
    # The 10 MB line: its head, then the whole of it on demand, as text.
    result = page.locator(".result", has=page.locator("summary", has_text="Result")).first
    result.locator("summary").click()
    result.locator("a[data-more]").click()
    wait_until(lambda: page.evaluate("Math.max(...Array.from(document.querySelectorAll('.result pre'))"
                                     ".map(p => p.textContent.length))") > hostile.HUGE_BYTES - 100, 30,
               message="the whole 10 MB result shown")
    assert page.evaluate("window.__pwned") is None


def test_the_usage_page_charts_and_leads_to_the_sessions(explorer, clean):
    page = clean.page()
    page.goto(explorer.url + "/usage")
    assert page.locator("figure.chart svg[role=img]").count() == 2
    assert page.locator("figure.chart rect").count() > 2
    clean.shot(page, "usage-wide")
    narrow = clean.page(browser.NARROW)
    narrow.goto(explorer.url + "/usage?report=model&breakdown=1")
    clean.shot(narrow, "usage-narrow")
    page.select_option("select[name=report]", "client")  # the filters apply as they change
    page.wait_for_url("**/usage?report=client")
    page.locator("table.usage tbody a", has_text="claude-code").click()
    page.wait_for_url("**/sessions?client=claude-code")
    assert page.locator("td.session a").count() >= 1


def test_every_page_answers_in_the_browser_without_a_console_error(explorer, clean):
    page = clean.page()
    for path, name in (("/search", "search-empty"), ("/sessions?errors=1", "sessions-errors")):
        page.goto(explorer.url + path)
        clean.shot(page, name)
    page.goto(explorer.url + "/session/20990101-000000-00000000")
    clean.shot(page, "not-found")
    # The browser notes the not-found page's own status as a console error; that is all it says.
    assert [p for p in clean.problems if "404" not in p] == []
    clean.problems.clear()
