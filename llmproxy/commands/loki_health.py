"""``llm-proxy loki-health``: one line on the Loki export, Nagios exit codes.

It parses its own options (and answers its own ``--help``): Nagios wants exit status 3, not
argparse's 2, for a check that cannot run.
"""

from __future__ import annotations

from llmproxy.loki import check

HELP = "one line on the Loki export, Nagios exit codes (see: llm-proxy loki-health --help)"
OWN_OPTIONS = True


def run(argv: list[str]) -> int:
    return check.main(argv, prog="llm-proxy loki-health")
