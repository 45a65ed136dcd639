"""README.rst is a short first page that opens with the two commands and lists docs/; it and every
docs/*.rst render, and docs/configuration.rst documents every variable."""

import re
from pathlib import Path

import docutils.core
import pytest

from llmproxy.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()
DOCS = sorted((ROOT / "docs").glob("*.rst"))
MAX_README_LINES = 300


def warnings_of(text: str) -> list[str]:
    messages = []
    doctree = docutils.core.publish_doctree(text, settings_overrides={"report_level": 5})
    for node in doctree.findall():
        if node.tagname == "system_message" and int(node["level"]) >= 2:
            messages.append(node.astext())
    return messages


def test_readme_renders_without_warnings():
    assert warnings_of(README) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_docs_file_renders_without_warnings(doc):
    assert warnings_of(doc.read_text()) == []


def test_readme_opens_with_the_two_commands():
    opening = README[:README.index("Configuration\n")]
    assert "./scripts/serve" in opening and "./scripts/test" in opening


def test_readme_is_a_short_first_page():
    assert len(README.splitlines()) <= MAX_README_LINES


def test_readme_contents_link_every_docs_file_and_only_existing_ones():
    contents = README[README.index("\nDocumentation\n"):]
    linked = set(re.findall(r"<(docs/[^>#]+\.rst)(?:#[^>]*)?>`__?", contents))
    assert linked, "README's Documentation section links no docs file"
    missing = sorted(p for p in linked if not (ROOT / p).is_file())
    assert missing == [], f"README links docs files that do not exist: {missing}"
    unlisted = sorted(str(p.relative_to(ROOT)) for p in DOCS if str(p.relative_to(ROOT)) not in linked)
    assert unlisted == [], f"docs files README's contents do not list: {unlisted}"


def section_ids(path: Path) -> set[str]:
    doctree = docutils.core.publish_doctree(path.read_text(), settings_overrides={"report_level": 5})
    return {i for node in doctree.findall() if node.tagname == "section" for i in node["ids"]}


def test_links_between_docs_files_name_files_and_sections_that_exist():
    """A link to ``loki.rst#reading-a-session`` breaks when the file or the heading is renamed."""
    broken = []
    for doc in [ROOT / "README.rst", *DOCS]:
        for target, anchor in re.findall(r"<([\w./-]+\.rst)(?:#([^>]*))?>`__?", doc.read_text()):
            path = doc.parent / target
            if not path.is_file() or (anchor and anchor not in section_ids(path)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}{'#' + anchor if anchor else ''}")
    assert broken == []


def test_configuration_documents_every_variable():
    configuration = (ROOT / "docs" / "configuration.rst").read_text()
    missing = [v.name for v in VARIABLES if f"``{v.name}``" not in configuration]
    assert missing == []
