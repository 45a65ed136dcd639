"""The package layout shows the data's way, and imports run one way along it.

Each package of ``llmproxy`` is one stage; a module may import from its own stage and from
earlier ones, never from a later one (the way ``tests/test_providers.py`` keeps provider
knowledge in ``providers/``). Type-only imports count too: a lower stage that needs a later
stage's object takes it as an argument typed by a protocol of its own.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import llmproxy

PACKAGE = Path(llmproxy.__file__).parent

# The stages in the order of the data's way; each may import only the ones above it.
# (name, what it is). Top-level modules are stages of their own.
STAGES: list[tuple[str, str]] = [
    ("llmproxy", "the package root: its version"),
    ("common", "shared by every stage: the proxy's own errors, masking, client id rules"),
    ("providers", "what differs between LLM APIs"),
    ("pricing", "what a call cost, from its usage (issue: usage and cost)"),
    ("settings", "the configuration"),
    ("proxy", "the request path"),
    ("record", "the record: session log, files, tree readers"),
    ("loki", "the export to Loki and the tools that read or check Loki"),
    ("server", "the server's furniture: gunicorn settings and hooks, runtime, metrics"),
    ("catalog", "the catalog of calls, built from the JSONL tree (issue: usage and cost)"),
    ("usage", "usage and cost reports, from the catalog or from Loki (issue: usage and cost)"),
    ("explorer", "the log explorer web app (issue: log explorer)"),
    ("setup", "install once on a workstation: user service, shell integration (issue: install once)"),
    ("commands", "one module per llm-proxy subcommand"),
    ("wsgi", "gunicorn's entry point"),
    ("gunicorn_config", "the documented old path of the gunicorn settings"),
    ("__main__", "python -m llmproxy"),
]
RANK = {name: i for i, (name, _) in enumerate(STAGES)}


def stage_of(module: str) -> str:
    """``llmproxy.record.sessions`` → ``record``; ``llmproxy`` → ``llmproxy``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``llmproxy`` import in a file, wherever it is (inside functions
    and ``if TYPE_CHECKING:`` too); ``from llmproxy import x`` names ``llmproxy.x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == root.name:
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                          if alias.name != "__version__"]
                found += [(node.lineno, node.module) for alias in node.names if alias.name == "__version__"]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == root.name]


def upward_imports(root: Path, stages: list[tuple[str, str]]) -> list[str]:
    """Every import of a later stage by an earlier one, as a sentence naming both."""
    rank = {name: i for i, (name, _) in enumerate(stages)}
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = stage_of(module_name(path, root))
        for line, name in imports_of(path, root):
            there = stage_of(name)
            if there not in rank:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports {name}, "
                                f"whose stage {there!r} is not in the STAGES table")
            elif rank[there] > rank[here]:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports {name}: "
                                f"{here!r} (stage {rank[here]}) must not import the later stage "
                                f"{there!r} (stage {rank[there]})")
    return problems


def test_every_package_and_module_is_a_stage():
    found = {stage_of(module_name(p, PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert sorted(found - set(RANK)) == []


def test_imports_run_from_later_stages_to_earlier_ones():
    problems = upward_imports(PACKAGE, STAGES)
    assert not problems, "imports against the data's way:\n" + "\n".join(problems)


def test_an_upward_import_is_caught_and_named(tmp_path):
    """The check above can fail: a record module importing the Loki exporter is reported."""
    root = tmp_path / "llmproxy"
    for package in ("record", "loki"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "loki" / "exporter.py").write_text("from llmproxy.record import sessions\n")
    (root / "record" / "sessions.py").write_text(
        "def later():\n    from llmproxy.loki.exporter import LokiExporter\n")
    problems = upward_imports(root, [("llmproxy", ""), ("record", ""), ("loki", "")])
    assert problems == ["llmproxy/record/sessions.py:2 imports llmproxy.loki.exporter: 'record' "
                        "(stage 1) must not import the later stage 'loki' (stage 2)"]


PACKAGES = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


@pytest.mark.parametrize("init", [p / "__init__.py" for p in PACKAGES], ids=lambda p: p.parent.name)
def test_each_package_says_what_it_holds_and_what_it_may_import(init):
    """The docstring's "May import:" line names exactly the earlier stages' packages it uses at
    most; a reader learns the rule where the code is."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    match = re.search(r"^May import: (.*?)\.?$", doc, re.M)
    assert match, f"{init.relative_to(PACKAGE.parent)}: docstring lacks a 'May import: …' line"
    stated = {name.strip(" `") for name in match.group(1).split(",") if name.strip()} - {"nothing else"}
    earlier = {name for name, _ in STAGES[1:RANK[init.parent.name]]}
    assert stated <= earlier, f"names a stage that is not earlier: {sorted(stated - earlier)}"
    assert "Must not be imported by:" in doc or RANK[init.parent.name] == len(STAGES) - 1
