"""``llm-proxy loki-session SESSION_ID``: one session from Loki or from the log files.

It parses its own options (and answers its own ``--help``)."""

from __future__ import annotations

from llmproxy.loki import session

HELP = "print one session from Loki or the log files (see: llm-proxy loki-session --help)"
OWN_OPTIONS = True


def run(argv: list[str]) -> int:
    return session.main(argv, prog="llm-proxy loki-session")
