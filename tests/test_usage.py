"""``llm-proxy usage``: every report's totals are the sum of what the provider said each call used
(the fake provider's own records, for calls made through the real proxy by real clients), and
read well in an 80-column terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import gentree
import pytest
from genai_prices import extract_usage
from proxyproc import jsonl_lines, wait_until
from test_catalog import truth_cost, truth_tokens

from llmproxy.catalog import Catalog
from llmproxy.usage import KINDS, Filters, local, render

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))

SONNET_USAGE = {"input_tokens": 9, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 41000,
                "cache_creation": {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 512}
CHAT_USAGE = {"prompt_tokens": 2100, "completion_tokens": 33, "prompt_tokens_details": {"cached_tokens": 1024}}
CODEX_USAGE = {"input_tokens": 9000, "input_tokens_details": {"cached_tokens": 8192}, "output_tokens": 300,
               "output_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 9300}
LOCAL_USAGE = {"prompt_tokens": 77, "completion_tokens": 7}


def make_calls(proxy_url: str, upstream: str) -> None:
    """Real clients through the proxy: both SDKs (JSON and streams), and curl."""
    import anthropic
    import openai

    claude = anthropic.Anthropic(api_key="sk-ant-test", base_url=f"{proxy_url}/anthropic/{upstream}", max_retries=0)
    with claude.messages.stream(model="claude-sonnet-4-5-20250929", max_tokens=64,
                                messages=[{"role": "user", "content": "one"}],
                                extra_headers={"x-fake-usage": json.dumps(SONNET_USAGE)}) as stream:
        stream.until_done()
    claude.messages.create(model="claude-haiku-4-5-20251001", max_tokens=64,
                           messages=[{"role": "user", "content": "two"}])
    gpt = openai.OpenAI(api_key="sk-test", base_url=f"{proxy_url}/openai/{upstream}/v1", max_retries=0)
    gpt.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "three"}],
                                extra_headers={"x-fake-usage": json.dumps(CHAT_USAGE)})
    with gpt.responses.stream(model="gpt-5-codex", input="four",
                              extra_headers={"x-fake-usage": json.dumps(CODEX_USAGE)}) as stream:
        stream.until_done()
    with pytest.raises(openai.RateLimitError):
        gpt.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "five"}],
                                    extra_headers={"x-fake-status": "429"})
    subprocess.run(["curl", "-sS", "-o", "/dev/null", f"{proxy_url}/openai/{upstream}/v1/chat/completions",
                    "-H", "content-type: application/json", "-H", f"x-fake-usage: {json.dumps(LOCAL_USAGE)}",
                    "-d", json.dumps({"model": "local-model", "messages": [{"role": "user", "content": "six"}]})],
                   check=True, timeout=30)


CALLS = 6


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One proxy, the calls above, and the fake provider's record of what each call used."""
    from fakeprovider import FakeProvider
    from proxyproc import ProxyServer

    fake = FakeProvider().start()
    server = ProxyServer(tmp_path_factory.mktemp("usage"), env={"LLM_PROXY_MACHINE_ID": "usage-box"}).start()
    try:
        make_calls(server.url, fake.upstream)

        def answered():
            entries = [json.loads(line) for path in server.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(path)]
            return sum(e["type"] == "response" for e in entries) == CALLS

        wait_until(answered, 10, message=f"{CALLS} response entries")
        yield server.log_dir, list(fake.sent)
    finally:
        server.stop()
        fake.stop()


def usage_json(log_dir: Path, *args: str) -> dict:
    out = subprocess.run([LLM_PROXY, "usage", *args, "--json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent"})
    assert out.returncode == 0 and not out.stderr, out.stderr
    return json.loads(out.stdout)


def as_call(sent) -> gentree.Call:
    return gentree.Call("", 0, "", "", sent.model, "", 200, sent.usage, "/v1/messages" if sent.path.endswith(
        "/messages") else sent.path)


def sums_of(sents) -> dict:
    """What the totals must say: the fake's usage records converted by hand, priced by
    genai-prices' own extractor."""
    calls = [as_call(s) for s in sents]
    tokens = [truth_tokens(c) for c in calls]
    costs = [truth_cost(c) for c in calls]
    return {"input": sum(t[0] for t in tokens), "output": sum(t[1] for t in tokens),
            "cache_write": sum(t[2] for t in tokens), "cache_read": sum(t[3] for t in tokens),
            "cost": pytest.approx(sum(c for c in costs if c is not None), rel=1e-9),
            "unpriced_calls": sum(c is None for c in costs)}


def numbers(row: dict) -> dict:
    return {k: row[k] for k in ("input", "output", "cache_write", "cache_read", "cost", "unpriced_calls")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_report_totals_what_the_provider_said_each_call_used(recorded, kind):
    log_dir, sent = recorded
    assert len(sent) == CALLS - 1  # the 429 answer used nothing
    report = usage_json(log_dir, kind, "--breakdown")
    assert report["totals"]["calls"] == CALLS
    assert numbers(report["totals"]) == sums_of(sent)
    tokens = report["totals"]
    assert tokens["total_tokens"] == tokens["input"] + tokens["output"] + tokens["cache_write"] + tokens["cache_read"]
    for row in report["rows"]:  # the rows add up to the totals, and each row's models to the row
        assert sum(m["calls"] for m in row["breakdown"]) == row["calls"]
        assert sum(m["cost"] for m in row["breakdown"]) == pytest.approx(row["cost"])
    for name in ("calls", "input", "output", "cache_write", "cache_read", "unpriced_calls"):
        assert sum(row[name] for row in report["rows"]) == report["totals"][name], name


def test_each_row_is_what_its_calls_used(recorded):
    log_dir, sent = recorded
    by_model = {row["model"]: row for row in usage_json(log_dir, "model")["rows"]}
    for model in {s.model for s in sent}:
        assert numbers(by_model[model]) == sums_of([s for s in sent if s.model == model]), model
    assert by_model["local-model"]["unpriced_calls"] == 1 and by_model["local-model"]["cost"] == 0
    clients = {row["client"]: row["calls"] for row in usage_json(log_dir, "client")["rows"]}
    assert clients == {"anthropic-sdk-python": 2, "openai-sdk-python": 3, "curl": 1}
    assert [row["machine"] for row in usage_json(log_dir, "machine")["rows"]] == ["usage-box"]
    [today] = usage_json(log_dir)["rows"]  # the calls were made a moment ago (UTC), perhaps across midnight
    now = datetime.now(timezone.utc).date()
    assert today["day"] in (now.isoformat(), (now - timedelta(days=1)).isoformat())


def run_text(log_dir: Path, *args: str, columns: int = 80) -> str:
    out = subprocess.run([LLM_PROXY, "usage", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent",
                              "COLUMNS": str(columns)})
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


@pytest.mark.parametrize("args", [(), ("session", "--breakdown"), ("model",), ("client", "--breakdown")])
@pytest.mark.parametrize("columns", [80, 60])
def test_the_table_fits_the_terminal_with_totals_last(recorded, args, columns):
    log_dir, sent = recorded
    text = run_text(log_dir, *args, columns=columns)
    lines = text.splitlines()
    assert max(map(len, lines)) <= columns, "\n" + text
    table_end = max(i for i, line in enumerate(lines) if line.startswith("─"))
    assert lines[table_end + 1].startswith("Total") and lines[table_end + 1].endswith("*")
    notes = " ".join(lines[table_end + 2:])
    assert "* includes 1 call without a price" in notes and "local-model" in notes
    assert "Traceback" not in text


def test_corrupt_lines_are_skipped_and_counted_in_one_note(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=0, short=5, days=2, seed=9)
    path = next(tree.log_dir.glob("*/*/*.jsonl"))
    with open(path, "ab") as f:
        f.write(b'{"type":"response","seq":7,"usage":{"input_tok\n{not json}\n')  # a crash mid-line, then garbage
        f.write(b'{"type":"request","seq":8')  # being written: not yet a line
    text = run_text(tree.log_dir)
    notes = [line for line in text.splitlines() if "skipped" in line]
    assert notes == ["2 lines of the logs skipped: not entries (corrupt, or cut short by a crash)."]
    assert usage_json(tree.log_dir)["totals"]["calls"] == len(tree.calls)


def test_filters_pick_their_calls(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=1, calls=20, short=60, days=6, seed=12)
    catalog = Catalog(tree.log_dir, indexers=[])
    days = sorted({c.day for c in tree.calls})
    since, until = date.fromisoformat(days[1]), date.fromisoformat(days[-2])
    cases = [
        (Filters(since=since, until=until), lambda c: days[1] <= c.day <= days[-2]),
        (Filters(provider="chatgpt"), lambda c: c.client == "codex"),
        (Filters(model="HAIKU"), lambda c: "haiku" in c.model),
        (Filters(machine=gentree.MACHINE), lambda c: True),
        (Filters(machine="elsewhere"), lambda c: False),
    ]
    for filters, wanted in cases:
        report = local.report(tree.log_dir, KINDS["daily"], filters, catalog)
        chosen = [c for c in tree.calls if wanted(c)]
        assert report.total.calls == len(chosen), filters
        tokens = [truth_tokens(c) for c in chosen if c.usage is not None]
        assert (report.total.input, report.total.output, report.total.cache_read) == \
            (sum(t[0] for t in tokens), sum(t[1] for t in tokens), sum(t[3] for t in tokens)), filters
        assert [row.key for row in report.rows] == sorted({c.day for c in chosen})


def test_rows_run_by_day_and_by_cost_and_sessions_by_last_call(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=2, calls=10, short=20, days=4, seed=21)
    catalog = Catalog(tree.log_dir, indexers=[])
    daily = local.report(tree.log_dir, KINDS["daily"], Filters(), catalog)
    assert [r.key for r in daily.rows] == sorted(r.key for r in daily.rows)
    models = local.report(tree.log_dir, KINDS["model"], Filters(), catalog)
    assert [r.cost for r in models.rows] == sorted((r.cost for r in models.rows), reverse=True)
    sessions = local.report(tree.log_dir, KINDS["session"], Filters(), catalog)
    assert [r.last for r in sessions.rows] == sorted(r.last for r in sessions.rows)
    assert len(sessions.rows) == len(tree.sessions)
    monthly = render.as_json(local.report(tree.log_dir, KINDS["monthly"], Filters(), catalog))
    assert sum(r["calls"] for r in monthly["rows"]) == len(tree.calls)


def test_bad_input_gets_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(tmp_path / "none")}
    missing = subprocess.run([LLM_PROXY, "usage"], capture_output=True, text=True, env=env, timeout=30)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "none").exists()
    bad = subprocess.run([LLM_PROXY, "usage", "--since", "last tuesday"], capture_output=True, text=True, env=env,
                         timeout=30)
    assert bad.returncode == 2 and "is not a day" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "logs").mkdir()
    empty = subprocess.run([LLM_PROXY, "usage"], capture_output=True, text=True, timeout=30,
                           env={**env, "LLM_PROXY_LOG_DIR": str(tmp_path / "logs")})
    assert empty.returncode == 0 and "No calls in this range." in empty.stdout


def test_a_price_the_entry_already_has_is_kept(tmp_path):
    """The catalog reads ``cost`` from the entry: the prices of the day it was logged."""
    tree = gentree.generate(tmp_path / "logs", long=1, calls=2, short=3, days=1, seed=30)
    path = next(p for p in tree.log_dir.glob("api.anthropic.com/*/*.jsonl"))
    lines = path.read_bytes().splitlines()
    doc = json.loads(lines[-1])
    assert doc["type"] == "response" and doc["cost"]["source"].startswith("genai-prices")
    doc["cost"]["total"] = 123.0
    path.write_bytes(b"\n".join(lines[:-1] + [json.dumps(doc).encode()]) + b"\n")
    report = local.report(tree.log_dir, KINDS["daily"], Filters())
    expected = sum(truth_cost(c) or 0 for c in tree.calls) - (extract_usage(
        {"model": doc["model"], "usage": doc["usage"]}, provider_id="anthropic").calc_price().total_price.__float__())
    assert report.total.cost == pytest.approx(expected + 123.0)


def test_a_hostile_model_name_reaches_the_terminal_as_text(tmp_path):
    """A model name is the traffic's: no escape sequence or reordering character of it is
    printed to the terminal as such."""
    tree = gentree.generate(tmp_path / "logs", long=0, short=2, days=1, seed=31)
    path = next(tree.log_dir.glob("*/*/*.jsonl"))
    lines = path.read_bytes().splitlines()
    doc = json.loads(lines[-1])
    assert doc["type"] == "response"
    doc["model"] = "evil\x1b]0;owned\x07\x1b[2J\u202emodel"
    path.write_bytes(b"\n".join(lines[:-1] + [json.dumps(doc).encode()]) + b"\n")
    for args in (("model",), ("daily", "--breakdown")):
        text = run_text(tree.log_dir, *args)
        assert "evil␛]0;owned␇␛[2J" in text  # the breakdown cuts the name at its column's width
        assert not any(c in text for c in "\x1b\x07\u202e"), text


def test_log_dir_reads_a_copy_of_a_tree(tmp_path):
    """``--log-dir`` reads another tree than LLM_PROXY_LOG_DIR's, e.g. a copy from another machine."""
    tree = gentree.generate(tmp_path / "copy", long=0, short=4, days=2, seed=5)
    env = {**os.environ, "LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(tmp_path / "none")}
    out = subprocess.run([LLM_PROXY, "usage", "--log-dir", str(tree.log_dir), "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert json.loads(out.stdout)["totals"]["calls"] == len(tree.calls)
    missing = subprocess.run([LLM_PROXY, "usage", "--log-dir", str(tmp_path / "gone")], capture_output=True,
                             text=True, env=env, timeout=30)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "(--log-dir)" in missing.stderr


def test_a_long_title_wraps_between_words_never_inside_a_name(tmp_path):
    """A machine name such as ``team-1a2b3c4d-box-a`` is cut at no hyphen, whatever the width
    (the wrap point moved with the length of a random name: a flaky test found it)."""
    from dataclasses import replace

    tree = gentree.generate(tmp_path / "logs", long=0, short=2, days=1, seed=3)
    report = local.report(tree.log_dir, KINDS["session"], Filters(), Catalog(tree.log_dir, indexers=[]))
    machine = "usage-loki-1a2b3c4d-5e6f-7a8b-9c0d-box-a"
    report = replace(report, filters=replace(report.filters, machine=machine, model="claude-sonnet-4-5"))
    for width in range(len(machine) + 2, 81):   # narrower, a name longer than a line is cut
        lines = render.table(report, width).splitlines()
        title = lines[:lines.index("")]
        assert all(len(line) <= width for line in title), width
        assert machine in " ".join(line.strip() for line in title), (width, title)
