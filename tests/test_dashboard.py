"""The Grafana dashboard shipped in the package: every query is LogQL by Grafana's own grammar
(@grafana/lezer-logql, run with node), filters lines first, never parses a whole line, names
only fields that entries the real proxy writes have, and answers, in a real Loki holding what
the real proxy shipped, what those entries add up to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
import requests
from proxyproc import jsonl_lines, wait_until
from realclients import NPM, require

from llmproxy.record.entries import METADATA_KEYS

ANSWERS = Path(__file__).parent / "answers"
NODE_MODULES = NPM / "node_modules"   # tests/npm/package.json, installed by scripts/test
GRAMMAR = NODE_MODULES / "@grafana" / "lezer-logql"
# What Grafana puts in before a query reaches Loki (a value of each kind).
VARIABLES = {"${__value.raw}": "20261128-101500-a1b2c3d4", "$__interval": "1m", "$__range": "24h",
             "$environment": ".*", "$machine": ".*", "$provider": ".*", "$model": ".*"}


def dashboard() -> dict:
    return json.loads((resources.files("llmproxy") / "grafana" / "llm-proxy.json").read_text())


def queries() -> list[tuple[str, str]]:
    """(where, LogQL) of every panel target and of the session link."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} / {target['refId']}", target["expr"]))
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in override["properties"]:
                for link in prop["value"] if prop["id"] == "links" else []:
                    panes = urllib.parse.parse_qs(urllib.parse.urlsplit(link["url"]).query)["panes"][0]
                    for query in json.loads(panes)["a"]["queries"]:
                        found.append((f"{panel['title']} link", query["expr"]))
    return found


def doc_queries() -> list[tuple[str, str]]:
    """The queries the docs show a user, one a line: docs/loki.rst's Grafana dashboard section, and
    README.rst's (its Loki section)."""
    root = Path(__file__).parents[1]
    loki = root.joinpath("docs", "loki.rst").read_text()
    section = loki.split("\nGrafana dashboard\n", 1)[1].split("\nReading a session\n", 1)[0]
    return [(f"{name}: {line.strip()[:60]}", line.strip())
            for name, text in (("docs/loki.rst", section), ("README.rst", root.joinpath("README.rst").read_text()))
            for line in text.splitlines() if line.startswith("    ") and '{app="llm-proxy"' in line]


def from_docs(where: str) -> bool:
    return where.startswith(("docs/", "README"))


def grafana_interpolated(query: str) -> str:
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    assert "$" not in query, query
    return query


def parse(texts: list[str]) -> list[dict]:
    # Under CI a missing parser fails the test: the dashboard's queries must be checked there.
    if not shutil.which("node"):
        require("node is not installed", "the LogQL grammar check")
    if not GRAMMAR.is_dir():
        require(f"@grafana/lezer-logql is not installed in {NODE_MODULES} (tests/npm/package.json; "
                "./scripts/test installs it)", "the LogQL grammar check")
    done = subprocess.run(["node", str(Path(__file__).with_name("logql_parse.cjs"))], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def nodes(tree: dict, name: str) -> list[dict]:
    out = [tree] if tree["name"] == name else []
    for child in tree["children"]:
        out += nodes(child, name)
    return out


def leaves(tree: dict) -> list[str]:
    return [tree["text"]] if "text" in tree else [t for c in tree["children"] for t in leaves(c)]


def unquote(token: str) -> str:
    return token[1:-1] if token.startswith("`") else json.loads(token)


def pipelines(tree: dict) -> list[tuple[str, list[dict]]]:
    """(log_type of the selector, stages in order) of every log query inside ``tree``."""
    out = []
    for expr in nodes(tree, "LogRangeExpr") + nodes(tree, "LogExpr"):
        selector = next(c for c in expr["children"] if c["name"] == "Selector")
        matchers = {}
        for matcher in nodes(selector, "Matcher"):
            name, op, value = leaves(matcher)
            matchers[name] = (op, unquote(value))
        stages = nodes(expr, "PipelineStage")
        stages.sort(key=lambda s: s["from"])
        out.append((matchers.get("log_type", ("=", ""))[1], stages))
    return out


def json_fields(stage: dict) -> list[tuple[str, str]]:
    """(label, path) pairs of a ``| json label="path", …`` stage; [] for other stages."""
    pairs = []
    for expression in nodes(stage, "LabelExtractionExpression"):
        name, _, path = leaves(expression)
        pairs.append((name, unquote(path)))
    return pairs


def test_the_dashboard_ships_in_the_package_with_its_variables():
    doc = dashboard()
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"datasource", "environment", "machine", "provider", "model"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "loki"
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    titles = " | ".join(p["title"] for p in doc["panels"])
    for words in ("Calls per minute by provider and model", "Error rate by status class", "p50 / p95",
                  "Input tokens per hour", "Output tokens per hour", "Cache tokens per hour", "Active sessions",
                  "Recent sessions", "Cost per day by model", "Cost by machine", "Unpriced calls",
                  "Most expensive sessions"):
        assert words in titles
    # the most expensive sessions link to their logs as the recent ones do
    links = {p["title"]: p["fieldConfig"]["overrides"][0] for p in doc["panels"] if p["type"] == "table"}
    assert links["Most expensive sessions"] == links["Recent sessions"]
    # installed with the package (a wheel holds what package_data names)
    from setuptools.config.setupcfg import read_configuration
    package = Path(resources.files("llmproxy"))
    globs = read_configuration(package.parent / "setup.cfg")["options"]["package_data"]["llmproxy"]
    assert any(package.glob(g) for g in globs) and (package / "grafana" / "llm-proxy.json") in {
        p for g in globs for p in package.glob(g)}


def test_every_query_is_logql_that_filters_lines_first_and_extracts_only_what_it_needs():
    found = queries() + doc_queries()
    assert len([q for q in doc_queries() if q[0].startswith("docs/loki.rst")]) >= 8
    trees = parse([grafana_interpolated(q) for _, q in found])
    for (where, query), tree in zip(found, trees):
        assert not nodes(tree, "⚠"), f"{where}: not LogQL by Grafana's grammar: {query}"
        for log_type, stages in pipelines(tree):
            # The docs' structured-metadata queries parse no line and need no line filter.
            if not from_docs(where) or any(nodes(s, "JsonExpressionParser") for s in stages):
                assert stages and stages[0]["children"][0]["name"] == "LineFilters", f"{where}: no line filter first"
            for stage in stages:
                assert not nodes(stage, "LabelParser") and not nodes(stage, "LogfmtParser"), where
                if nodes(stage, "JsonExpressionParser"):
                    # a bare | json turns every field of a multi-MB line into a label
                    assert json_fields(stage), f"{where}: bare | json"
                    # Loki renames a parsed label that collides with structured metadata (…_extracted)
                    assert not {n for n, _ in json_fields(stage)} & set(METADATA_KEYS), where


class _Replay(BaseHTTPRequestHandler):
    """An upstream that answers with a recorded answer from tests/answers (``x-answer``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        name = self.headers["x-answer"]
        data = (ANSWERS / name).read_bytes()
        self.send_response(int(self.headers.get("x-answer-status", "200")))
        self.send_header("Content-Type", "text/event-stream" if name.endswith(".sse") else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


CALLS = [  # (provider, path, request model, stream, answer, status)
    ("anthropic", "/v1/messages", "claude-sonnet-4-5", False, "anthropic-tool-use.json", 200),
    ("anthropic", "/v1/messages", "claude-opus-4-1", True, "anthropic-tool-use.sse", 200),
    ("anthropic", "/v1/messages", "claude-opus-4-1", False, "anthropic-error.json", 429),
    ("openai", "/v1/chat/completions", "gpt-4o-mini", False, "chat-tool-calls.json", 200),
    ("openai", "/v1/chat/completions", "gpt-4.1", True, "chat-tool-calls-usage.sse", 200),
    ("openai", "/v1/responses", "gpt-5-codex", True, "responses-codex-tools.sse", 200),
    ("openai", "/v1/responses", "gpt-5-codex", False, "openai-error.json", 500),
]


def flat_paths(doc, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in doc.items() if isinstance(doc, dict) else ():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= flat_paths(value, path + ".")
    return paths


def loki_path(path: str) -> str:
    """``headers["User-Agent"]`` → ``headers.User-Agent``."""
    return path.replace('["', ".").replace('"]', "")


def test_every_field_a_query_names_is_in_entries_the_proxy_writes(proxy):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"127.0.0.1:{server.server_address[1]}"
    try:
        for provider, path, model, stream, answer, status in CALLS:
            body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            resp = requests.post(f"{proxy.url}/{provider}/{upstream}{path}", json=body,
                                 headers={"x-answer": answer, "x-answer-status": str(status),
                                          "User-Agent": "claude-cli/2.1.197 (external, cli)"})
            assert resp.status_code == status

        def written():
            docs = [json.loads(line) for p in proxy.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
            ours = [d for d in docs if d.get("_meta", {}).get("host") == upstream]
            return ours if sum(d["type"] == "response" for d in ours) == len(CALLS) else None

        entries = wait_until(written, timeout=10, message="responses logged")
    finally:
        server.shutdown()
        server.server_close()
    fields = {kind: set().union(*(flat_paths(e) for e in entries if e["type"] == kind))
              for kind in ("request", "response")}

    found = queries() + doc_queries()
    for (where, query), tree in zip(found, parse([grafana_interpolated(q) for _, q in found])):
        for log_type, stages in pipelines(tree):
            have = fields.get(log_type) or fields["request"] | fields["response"]
            for stage in stages:
                for _, path in json_fields(stage):
                    assert loki_path(path) in have, f"{where}: no {log_type or 'entry'} has {path}"


# --- every panel's query against a real Loki, with data the real proxy shipped ---

def _labels(**labels) -> frozenset:
    """A series' labels as Loki answers them (``| json`` gives a field that is not there as "")."""
    return frozenset((k, str(v)) for k, v in labels.items())


def _group(docs, key, value=lambda d: 1.0, aggregate=sum) -> dict[frozenset, float]:
    """``aggregate`` of ``value`` over the entries ``key`` keeps, by the labels it gives."""
    groups: dict[frozenset, list[float]] = {}
    for doc in docs:
        labels = key(doc)
        number = value(doc) if labels is not None else None
        if number is not None:
            groups.setdefault(labels, []).append(float(number))
    return {labels: aggregate(values) for labels, values in groups.items()}


def _first(doc: dict, *paths: str):
    """What Loki's ``label_format x=`{{ or .a .b }}``` makes of fields ``a``, ``b``: the first
    present one, if it is a number (else ``unwrap`` fails and ``__error__=""`` drops the line)."""
    for path in paths:
        value = doc
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, ""):
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def _quantile(q: float, values: list[float]) -> float:
    """Prometheus's (and Loki's) quantile: linear between the two nearest ranks."""
    values = sorted(values)
    rank = q * (len(values) - 1)
    low = max(0, int(rank))
    high = min(len(values) - 1, low + 1)
    return values[low] * (1 - (rank - low)) + values[high] * (rank - low)


def _client(doc: dict) -> str:
    import re
    return re.sub(r"[ /(].*", "", doc["headers"]["User-Agent"], flags=re.S)


def expected_answers(docs: list[dict]) -> dict[str, dict[frozenset, float]]:
    """What each panel query must answer for these entries (all within the last minute), worked
    out from the entries themselves, field by field."""
    provider = {d["_meta"]["session"]: d["provider"] for d in docs if d["type"] == "session_start"}
    responses = [d for d in docs if d["type"] == "response"]
    requests_ = [d for d in docs if d["type"] == "request"]
    costed = [d for d in responses if "cost" in d]
    unpriced = [d for d in responses if "tokens" in d and "cost" not in d]

    def by_provider(d):
        return _labels(provider=provider[d["_meta"]["session"]])

    def by_session(d):
        return _labels(session=d["_meta"]["session"], machine=d["_meta"]["machine"], model_name=d.get("model", ""))

    def by_top_session(d):
        return _labels(session=d["_meta"]["session"], machine=d["_meta"]["machine"])

    calls = _group(responses, lambda d: _labels())
    errors = _group([d for d in responses if d["status"] >= 400], lambda d: _labels(**{"class": f"{d['status'] // 100}xx"}))
    top = _group(costed, by_top_session, lambda d: d["cost"]["total"])
    assert len(top) <= 20  # topk(20, …) keeps all of them here
    tokens = ("tokens.input", "tokens.output", "tokens.cache_write", "tokens.cache_read")
    answers = {
        "Calls per minute by provider and model / A":
            _group(responses, lambda d: by_provider(d) | _labels(model_name=d.get("model", ""))),
        "Error rate by status class / A":
            {labels: count / calls[_labels()] for labels, count in errors.items()},
        "Input tokens per hour by model / A":
            _group(responses, lambda d: _labels(model_name=d.get("model", "")),
                   lambda d: _first(d, "usage.input_tokens", "usage.prompt_tokens")),
        "Output tokens per hour by model / A":
            _group(responses, lambda d: _labels(model_name=d.get("model", "")),
                   lambda d: _first(d, "usage.output_tokens", "usage.completion_tokens")),
        "Cache tokens per hour by model / A":
            _group(responses, lambda d: _labels(model_name=d.get("model", "")),
                   lambda d: _first(d, "usage.cache_read_input_tokens", "usage.prompt_tokens_details.cached_tokens",
                                    "usage.input_tokens_details.cached_tokens")),
        "Cache tokens per hour by model / B":
            _group(responses, lambda d: _labels(model_name=d.get("model", "")),
                   lambda d: _first(d, "usage.cache_creation_input_tokens")),
        "Active sessions (last 5 minutes) / A": {_labels(): float(len({d["_meta"]["session"] for d in requests_}))},
        "Recent sessions / A": _group(responses, by_session),
        "Recent sessions / B": _group(responses, by_session, lambda d: _first(d, "usage.input_tokens",
                                                                              "usage.prompt_tokens")),
        "Recent sessions / C": _group(responses, by_session, lambda d: _first(d, "usage.output_tokens",
                                                                              "usage.completion_tokens")),
        "Recent sessions / D": _group(requests_, by_session, lambda d: _unix(d) * 1000, min),
        "Recent sessions / E": _group(requests_, by_session, lambda d: _unix(d) * 1000, max),
        "Recent sessions / F": _group([d for d in requests_ if "User-Agent" in d["headers"]],
                                      lambda d: by_session(d) | _labels(client=_client(d))),
        "Cost per day by model (USD) / A": _group(costed, lambda d: _labels(model_name=d.get("model", "")),
                                                  lambda d: d["cost"]["total"]),
        "Cost by machine (USD) / A": _group(costed, lambda d: _labels(machine=d["_meta"]["machine"]),
                                            lambda d: d["cost"]["total"]),
        "Unpriced calls / A": {_labels(): float(len(unpriced))} if unpriced else {},
        "Most expensive sessions / A": top,
        "Most expensive sessions / B": {k: v for k, v in _group(responses, by_top_session).items() if k in top},
        "Most expensive sessions / C": {k: v for k, v in _group(
            [d for d in responses if "tokens" in d], by_top_session,
            lambda d: sum(_first(d, path) or 0 for path in tokens)).items() if k in top},
        "Most expensive sessions / D": {k: v for k, v in _group(unpriced, by_top_session).items() if k in top},
    }
    for quantile, ref, field in ((0.5, "A", "total_ms"), (0.95, "B", "total_ms"), (0.5, "C", "ttfb_ms"),
                                 (0.95, "D", "ttfb_ms")):
        answers[f"Latency p50 / p95: whole call and time to first byte / {ref}"] = _group(
            responses, by_provider, lambda d, f=field: _first(d, f"timing.{f}"), lambda v, q=quantile: _quantile(q, v))
    return answers


def _unix(doc: dict) -> int:
    """``_meta.ts`` in whole seconds, as Loki's ``unixEpoch`` of the entry's timestamp."""
    from datetime import datetime, timezone
    return int(datetime.strptime(doc["_meta"]["ts"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


def test_every_panel_query_answers_what_the_entries_add_up_to_in_a_real_loki(start_proxy, fake_provider, real_loki):
    """Two machines ship real traffic (recorded answers of each API, priced and unpriced models,
    several sessions) to a real Loki; each panel query, as Grafana sends it for this dashboard
    narrowed to these machines, answers what the entries add up to."""
    import uuid

    from realloki import loki_entries

    machines = f"dash-{uuid.uuid4().hex[:8]}"
    servers = [start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": real_loki.url,
                            "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_MACHINE_ID": f"{machines}-{name}"},
                           name=name) for name in ("a", "b")]
    replay = ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    threading.Thread(target=replay.serve_forever, daemon=True).start()
    upstream = f"127.0.0.1:{replay.server_address[1]}"
    try:
        for i, (provider, path, model, stream, answer, status) in enumerate(CALLS):
            body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            resp = requests.post(f"{servers[0].url}/{provider}/{upstream}{path}", json=body, timeout=10,
                                 headers={"x-answer": answer, "x-answer-status": str(status),
                                          "X-Claude-Code-Session-Id": f"{machines}-cc-{i % 2}",
                                          "User-Agent": "claude-cli/2.1.197 (external, cli)"})
            assert resp.status_code == status
    finally:
        replay.shutdown()
        replay.server_close()
    usage = {"input_tokens": 1200, "output_tokens": 340, "cache_creation_input_tokens": 5000,
             "cache_read_input_tokens": 42000}
    for session, model, stream in (("s1", "claude-sonnet-4-5", False), ("s1", "claude-sonnet-4-5", True),
                                   ("s2", "claude-haiku-4-5", False), ("s2", "no-such-model-anywhere", False),
                                   ("s3", "no-such-model-anywhere", True)):
        resp = requests.post(f"{servers[1].url}/anthropic/{fake_provider.upstream}/v1/messages", timeout=10,
                             json={"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
                             headers={"X-Claude-Code-Session-Id": f"{machines}-{session}",
                                      "x-fake-usage": json.dumps(usage)})
        resp.content
        assert resp.status_code == 200

    def written():
        found = [json.loads(line) for s in servers for p in s.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(p)]
        return found if sum(d["type"] == "response" for d in found) == len(CALLS) + 5 else None

    docs = wait_until(written, timeout=10, message="every response logged")
    lines = [json.dumps(d) for d in docs]  # sizes only: none of these is long enough to go in parts
    real_loki.wait_for_count(f'{{app="llm-proxy", machine=~"{machines}-.*"}}', loki_entries(lines), timeout=15)
    assert {"cost" in d for d in docs if d["type"] == "response" and "tokens" in d} == {True, False}
    first, last = min(_ns(d) for d in docs), max(_ns(d) for d in docs)
    assert last - first < 50 * 10**9, "the calls must fit in the 1-minute windows of the panels"
    at = last + 10**9

    expected = expected_answers(docs)
    variables = {**VARIABLES, "$machine": f"{machines}-.*", "$__interval": "5m", "$__range": "1h"}
    session = next(d["_meta"]["session"] for d in docs if d["type"] == "response" and "cost" in d)
    variables["${__value.raw}"] = session
    metric_queries = [(where, query) for where, query in queries() if not where.endswith(" link")]
    assert {where for where, _ in metric_queries} == set(expected)
    for where, query in metric_queries:
        for name, value in variables.items():
            query = query.replace(name, value)
        answer = {frozenset(labels.items()): value for labels, value in real_loki.metric(query, at)}
        assert answer == pytest.approx(expected[where], rel=1e-9), f"{where}: {query}\n{sorted((sorted(k), v) for k, v in answer.items())}\n{sorted((sorted(k), v) for k, v in expected[where].items())}"
        assert answer, f"{where}: the data must give this query something to answer"
    # The links to a session's logs: every line of that session, none other.
    for where, query in queries():
        if where.endswith(" link"):
            for name, value in variables.items():
                query = query.replace(name, value)
            found = sorted(line for _, line in real_loki.lines(query))
            ours = sorted(p.read_text().splitlines() for s in servers for p in s.log_dir.glob(f"*/*/{session}.jsonl"))
            assert found == sorted(line for group in ours for line in group), where


def _ns(doc: dict) -> int:
    from llmproxy.loki.backfill import parse_ts
    return parse_ts(doc["_meta"]["ts"])
