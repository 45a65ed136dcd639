"""``llm-proxy usage --loki``: the same reports as ``llm-proxy usage``, asked of a real Grafana
Loki that two proxies (two machines) shipped their calls to. For one machine's data the two
ways give the same rows, numbers and totals; across machines, Loki adds them up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from proxyproc import ProxyServer, free_port, jsonl_lines, wait_until
from realloki import loki_entries
from test_usage import CALLS, make_calls

from llmproxy.catalog import Catalog
from llmproxy.loki.client import LokiClient
from llmproxy.settings import LokiSettings
from llmproxy.usage import KINDS, Filters, local, loki, render

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))
LONG_STREAM = 3000  # text deltas: the answer's entry is over Loki's line limit and goes in parts


def today() -> date:
    return datetime.now(timezone.utc).date()


@pytest.fixture(scope="module")
def shipped(real_loki, tmp_path_factory):
    """Two machines' calls through the real proxy, in their files and in Loki (an environment of
    this module's own): the SDK and curl calls of test_usage on one, and a long streamed answer
    (shipped in parts) with a second session on the other."""
    from fakeprovider import FakeProvider

    environment = f"usage-{uuid.uuid4().hex[:8]}"
    fake = FakeProvider().start()
    servers = {}
    try:
        for name in ("box-a", "box-b"):
            servers[name] = ProxyServer(tmp_path_factory.mktemp(name), env={
                "LLM_PROXY_MACHINE_ID": f"{environment}-{name}", "LLM_PROXY_LOKI_ENABLED": "true",
                "LLM_PROXY_LOKI_URL": real_loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": environment,
                "LLM_PROXY_LOKI_BATCH_WAIT": "100ms"}).start()
        make_calls(servers["box-a"].url, fake.upstream)
        usage = {"input_tokens": 20, "output_tokens": LONG_STREAM, "cache_read_input_tokens": 90000,
                 "cache_creation_input_tokens": 1500}
        for session, model, events in (("one", "claude-sonnet-4-5", LONG_STREAM), ("two", "claude-opus-4-1", 5),
                                       ("two", "claude-sonnet-4-5", 5)):
            resp = requests.post(f"{servers['box-b'].url}/anthropic/{fake.upstream}/v1/messages", timeout=30,
                                 json={"model": model, "stream": True, "max_tokens": 10,
                                       "messages": [{"role": "user", "content": "hi"}]},
                                 headers={"X-Claude-Code-Session-Id": f"{environment}-{session}",
                                          "x-fake-events": str(events), "x-fake-usage": json.dumps(usage),
                                          "User-Agent": "claude-cli/2.1.197 (external, cli)"})
            resp.content
            assert resp.status_code == 200

        def lines(server, responses):
            found = [line for p in server.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
            return found if sum(json.loads(line)["type"] == "response" for line in found) == responses else None

        written = [wait_until(lambda s=servers[name], n=n: lines(s, n), 10, message=f"{name}'s responses")
                   for name, n in (("box-a", CALLS), ("box-b", 3))]
        assert loki_entries(written[1]) > len(written[1])  # the long answer went in parts
        real_loki.wait_for_count(f'{{environment="{environment}"}}', sum(map(loki_entries, written)), timeout=20)
        yield {"environment": environment, "loki": real_loki, "log_dirs": {n: s.log_dir for n, s in servers.items()},
               "machines": {n: f"{environment}-{n}" for n in servers}}
    finally:
        for server in servers.values():
            server.stop()
        fake.stop()


def from_loki(shipped, kind: str, filters: Filters):
    client = LokiClient(LokiSettings(url=shipped["loki"].url))
    try:
        return loki.report(client, shipped["environment"], KINDS[kind], filters)
    finally:
        client.close()


def from_files(shipped, name: str, kind: str, filters: Filters):
    log_dir = shipped["log_dirs"][name]
    return local.report(log_dir, KINDS[kind], filters, Catalog(log_dir, indexers=[]))


def comparable(report, breakdown: bool) -> dict:
    """The report as JSON, but for its notes (where it was read from). Both ways date a call by
    its answer (docs/usage.rst), so days and the newest call's time agree. Costs are sums of
    floats, added in another order by Loki: equal to the last few bits."""
    doc = render.as_json(report, breakdown)
    doc.pop("notes")
    for row in doc["rows"] + [doc["totals"]] + [m for row in doc["rows"] for m in row.get("breakdown", [])]:
        row["cost"] = pytest.approx(row["cost"], rel=1e-12, abs=1e-15)
    return doc


def span() -> Filters:
    """Yesterday and today: the calls were made a moment ago (UTC), perhaps across midnight."""
    return Filters(since=today() - timedelta(days=1), until=today())


@pytest.mark.parametrize("kind", list(KINDS))
def test_loki_gives_one_machines_report_exactly_as_its_files(shipped, kind):
    """Rows, each row's models (the breakdown), their numbers and the totals."""
    for name, machine in shipped["machines"].items():
        filters = Filters(since=span().since, until=span().until, machine=machine)
        ours = comparable(from_files(shipped, name, kind, Filters(since=filters.since, until=filters.until)), True)
        ours["filters"]["machine"] = machine
        assert comparable(from_loki(shipped, kind, filters), True) == ours, name


@pytest.mark.parametrize("filters", [Filters(provider="openai"), Filters(model="SONNET"), Filters(model="4o-mini"),
                                     Filters(provider="anthropic", model="haiku")])
def test_filters_pick_the_same_calls(shipped, filters):
    filters = Filters(span().since, span().until, filters.provider, filters.model,
                      shipped["machines"]["box-a"])
    for kind in ("session", "model"):
        ours = comparable(from_files(shipped, "box-a", kind, Filters(filters.since, filters.until, filters.provider,
                                                                      filters.model)), True)
        ours["filters"]["machine"] = filters.machine
        assert comparable(from_loki(shipped, kind, filters), True) == ours


def test_the_newest_call_is_the_newest_answer(shipped):
    """Both ways time a call by its answer's entry (its timestamp in Loki), not by its request."""
    from llmproxy.catalog.lines import unix

    for name, log_dir in shipped["log_dirs"].items():
        docs = [json.loads(line) for p in log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
        report = from_loki(shipped, "session", Filters(span().since, machine=shipped["machines"][name]))
        for row in report.rows:
            answers = [unix(d["_meta"]["ts"]) for d in docs if d["type"] == "response" and d["_meta"]["session"] == row.key]
            assert row.last == max(answers)
        local_rows = from_files(shipped, name, "session", span()).rows
        assert [(r.key, r.last) for r in report.rows] == [(r.key, r.last) for r in local_rows]


def test_across_machines_loki_adds_them_up(shipped):
    loki_report = from_loki(shipped, "machine", span())
    assert [row.key for row in loki_report.rows] == sorted(shipped["machines"].values(), key=lambda m: -next(
        r.cost for r in loki_report.rows if r.key == m))
    totals = [from_files(shipped, name, "daily", span()).total for name in shipped["log_dirs"]]
    for field in ("calls", "input", "output", "cache_write", "cache_read", "unpriced"):
        assert getattr(loki_report.total, field) == sum(getattr(t, field) for t in totals), field
    assert loki_report.total.cost == pytest.approx(sum(t.cost for t in totals), rel=1e-12)
    for row in loki_report.rows:
        name = next(n for n, m in shipped["machines"].items() if m == row.key)
        mine = from_files(shipped, name, "daily", span()).total
        assert (row.calls, row.tokens, row.unpriced) == (mine.calls, mine.tokens, mine.unpriced)


def run(shipped, *args, **env):
    return subprocess.run([LLM_PROXY, "usage", *args], capture_output=True, text=True, timeout=60, env={
        **os.environ, "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOKI_URL": shipped["loki"].url,
        "LLM_PROXY_LOKI_ENVIRONMENT": shipped["environment"], "COLUMNS": "80",
        "LLM_PROXY_LOG_DIR": str(shipped["log_dirs"]["box-a"]), **env})


def test_the_command_prints_loki_s_report_as_the_local_one(shipped):
    machine = shipped["machines"]["box-a"]
    since = (today() - timedelta(days=1)).isoformat()
    ours = run(shipped, "session", "--breakdown", "--since", since)
    theirs = run(shipped, "session", "--breakdown", "--since", since, "--loki", "--machine", machine)
    assert ours.returncode == theirs.returncode == 0, theirs.stderr
    def title_and_rest(text: str) -> tuple[str, list[str]]:
        """The title (wrapped at the terminal's width when long) joined up, and the lines after it."""
        lines = text.splitlines()
        end = lines.index("")
        return " ".join(line.strip() for line in lines[:end]), lines[end:]

    (mine_title, mine_lines), (loki_title, loki_lines) = title_and_rest(ours.stdout), title_and_rest(theirs.stdout)
    assert loki_title == mine_title + f", machine {machine}"
    assert loki_lines[:len(mine_lines)] == mine_lines
    note = " ".join(loki_lines[len(mine_lines):])
    assert note == f"Every machine in Loki at {shipped['loki'].url}, environment {shipped['environment']}."
    assert max(map(len, theirs.stdout.splitlines())) <= 80  # the title too, however many filters it names
    data = json.loads(run(shipped, "model", "--json", "--loki").stdout)
    assert data["filters"]["since"] == (today() - timedelta(days=30)).isoformat()  # Loki's default range
    assert data["totals"]["calls"] == CALLS + 3


def test_no_loki_url_or_no_loki_is_one_line(shipped):
    missing = run(shipped, "--loki", LLM_PROXY_LOKI_URL="")
    assert missing.returncode == 2 and missing.stderr == "llm-proxy usage: --loki needs LLM_PROXY_LOKI_URL\n"
    down = run(shipped, "--loki", LLM_PROXY_LOKI_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and down.stderr.count("\n") == 1 and "cannot query" in down.stderr
    assert "Traceback" not in down.stderr


@pytest.fixture(scope="module")
def strict_loki(real_loki, tmp_path_factory):
    """A real Loki with limits a busy team's Loki reaches (answers of 8 series at most, queries
    of 100 hours at most) and without structured metadata, as before schema v13 (needs what
    ``real_loki`` needs)."""
    from realloki import RealLoki

    strict = RealLoki(tmp_path_factory.mktemp("strict-loki"), allow_structured_metadata=False, limits={
        "max_query_series": 8, "max_query_length": "100h"}).start()
    yield strict
    strict.stop()


def test_a_generated_week_backfilled_into_a_strict_loki_reports_as_its_catalog(strict_loki, tmp_path):
    """Days of sessions of every client (long Claude Code ones, Codex, the SDKs, an unpriced
    model, errors), pushed by loki-backfill: each report of the week equals the catalog's, though
    Loki answers every question in small pieces."""
    import gentree

    from llmproxy.loki.backfill import main as backfill_main

    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    # Fixed against midnight, so that the same calls are made whenever the test runs.
    tree = gentree.generate(tmp_path / "logs", long=1, calls=25, short=45, days=3, seed=5,
                            end=midnight - timedelta(hours=2))
    docs = [json.loads(line) for p in tree.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
    import io
    printed = io.StringIO()
    environment = "week"
    assert backfill_main(["--log-dir", str(tree.log_dir)], out=printed, environ={
        "LLM_PROXY_LOKI_URL": strict_loki.url, "LLM_PROXY_LOKI_ENVIRONMENT": environment,
        "LLM_PROXY_ENV_FILE": "/nonexistent"}) == 0, printed.getvalue()
    strict_loki.flush()  # entries older than 3 hours are asked of the store only

    client = LokiClient(LokiSettings(url=strict_loki.url))
    catalog = Catalog(tree.log_dir, indexers=[])
    filters = Filters(since=(midnight - timedelta(days=4)).date(), until=midnight.date())
    per_day = {}
    for doc in docs:
        per_day.setdefault(doc["_meta"]["ts"][:10], set()).add(doc["_meta"]["session"])
    assert max(map(len, per_day.values())) > 8  # a day's sessions are more than one answer may hold
    try:
        for kind in KINDS:
            ours = comparable(local.report(tree.log_dir, KINDS[kind], filters, catalog), True)
            theirs = wait_until(lambda: (r := comparable(loki.report(client, environment, KINDS[kind], filters), True))
                                and r["totals"]["calls"] == ours["totals"]["calls"] and r, 20,
                                message=f"the {kind} report's calls in Loki")
            assert theirs == ours, kind
        assert len(ours["rows"]) > 1 and ours["totals"]["unpriced_calls"] > 0
    finally:
        client.close()


def test_a_loki_that_does_not_answer_fails_the_report_after_one_timeout():
    """Loki takes the connection and says nothing: the report fails once the queries in flight
    time out; the days not asked yet are not asked (each would wait its timeout too)."""
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    client = LokiClient(LokiSettings(url=f"http://127.0.0.1:{server.getsockname()[1]}", push_timeout=0.2))
    failed: list[Exception] = []

    def ask():
        try:
            loki.report(client, "silent", KINDS["daily"], Filters(date(2026, 11, 1), date(2026, 11, 30)),
                        today=date(2026, 12, 1))
        except RuntimeError as exc:
            failed.append(exc)

    started = time.monotonic()
    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout=20)
    try:
        assert not asking.is_alive() and len(failed) == 1 and "cannot query" in str(failed[0])
        # those in flight, and those the pool's threads took up as they failed
        assert len(accepted) <= 2 * loki.PARALLEL and time.monotonic() - started < 10
    finally:
        client.close()
        server.close()
        for conn in accepted:
            conn.close()


def test_a_loki_that_answers_504_to_everything_is_given_up_soon():
    """A gateway before a hung Loki answers 504 at once: halving the day for it goes down to a few
    hours, not to a minute (2,047 queries per number per day), then the report fails."""
    import http.server
    import threading

    asked = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = b"upstream request timeout"
            self.send_response(504)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = LokiClient(LokiSettings(url=f"http://127.0.0.1:{server.server_address[1]}"))
    try:
        with pytest.raises(RuntimeError, match="504"):
            loki.report(client, "gated", KINDS["daily"], Filters(date(2026, 11, 30), date(2026, 11, 30)),
                        today=date(2026, 12, 1))
        ranges = [int(r) for path in asked for r in re.findall(r"\[(\d+)s\]", urllib.parse.unquote_plus(path))]
        # one day: asked for 24 h, then 12, 6 and 3 h, and given up (not down to a minute)
        assert min(ranges) == 3 * 3600 and max(ranges) == 24 * 3600, sorted(set(ranges))
    finally:
        client.close()
        server.shutdown()
        server.server_close()
