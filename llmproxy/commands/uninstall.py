"""``llm-proxy uninstall [--dry-run]``: take back what ``llm-proxy setup`` did; the logs stay."""

from __future__ import annotations

import argparse
import sys

from llmproxy.setup import installer, service
from llmproxy.setup.home import Home
from llmproxy.setup.status import log_tree

HELP = "stop and remove the user service, the shell blocks and the Codex keys setup added (logs stay)"
PROG = "llm-proxy uninstall"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print every change, make none")


def run(args: argparse.Namespace, extra: list[str], home: Home | None = None,
        runner: service.Runner = service.run) -> int:
    installation = installer.Installation(home or Home.current(), runner)
    plan = installation.uninstall_plan()
    log_dir = plan.settings.log_dir if plan.settings else None   # None: the settings file is bad
    if not plan.steps:
        print("nothing to remove: llm-proxy setup has not changed anything here")
    code = installer.carry_out(plan, args.dry_run, sys.stdout, sys.stderr, PROG)
    for note in plan.notes:
        print(note)
    if log_dir is not None and log_dir.is_dir():
        print(f"the session logs stay: {log_tree(log_dir)}")
    return code
