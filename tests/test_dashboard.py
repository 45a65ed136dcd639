"""The Grafana dashboard shipped in the package: every query is LogQL by Grafana's own grammar
(@grafana/lezer-logql, run with node), filters lines first, never parses a whole line, and
names only fields that entries the real proxy writes have."""

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
                  "Recent sessions"):
        assert words in titles
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
