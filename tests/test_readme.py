"""README.rst renders, opens with the two commands, and documents every variable."""

from pathlib import Path

import docutils.core

from llmproxy.settings import VARIABLES

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text()


def test_readme_renders_without_warnings():
    messages = []
    doctree = docutils.core.publish_doctree(README, settings_overrides={"report_level": 5})
    for node in doctree.findall():
        if node.tagname == "system_message" and int(node["level"]) >= 2:
            messages.append(node.astext())
    assert messages == []


def test_readme_opens_with_the_two_commands():
    opening = README[:README.index("Configuration\n")]
    assert "./scripts/serve" in opening and "./scripts/test" in opening


def test_readme_documents_every_variable():
    missing = [v.name for v in VARIABLES if f"``{v.name}``" not in README]
    assert missing == []
